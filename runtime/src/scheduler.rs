//! The runtime's shared scheduling state: the injector, the stealers, the idle set, the task
//! registry (kept in `registry`), the shared timers, and the monitor that keeps work from
//! stranding.
//!
//! ## Waking sleeping loops (after tokio's idle protocol, PR #4383)
//!
//! A loop that runs out of work registers itself in the idle set and sleeps in its poller.
//! Whoever publishes shared work calls [`RuntimeShared::notify_work`]: if no loop is
//! *searching* (woken for work and not yet found it) it pops one idle loop, counts it as
//! searching and rings its doorbell. A searching loop that finds a task stops searching and,
//! if it was the last searcher and more work is visible, wakes the next one. So a burst of
//! spawns wakes siblings one at a time, never a herd, and a busy runtime rings nobody.
//!
//! No lost wake-up: the sleeper registers as idle, issues `fence(SeqCst)`, and re-checks the
//! injector and every stealer; the publisher pushes, issues `fence(SeqCst)`, and reads the
//! idle count. One of the two sees the other.
//!
//! ## Work never strands behind a busy loop
//!
//! A loop stuck in a long callback or poll cannot run what sits in its local queue. The
//! monitor thread (after Go's `sysmon`) samples every awake loop's tick counter every
//! [`MONITOR_INTERVAL`]; a loop whose counter has not moved while its queue holds tasks is
//! marked stuck and gets a sibling woken to steal them (siblings otherwise leave a loop the
//! one task it runs next: see [`RuntimeShared::can_steal_from`]). Task timers live in one
//! shared heap, so any idle loop can fire them; one idle loop at a time holds the *timer
//! driver* token and sleeps until the earliest deadline, and a new earliest deadline rings the
//! driver (or, with none, an idle loop).

use crate::event_loop::{LoopShared, AWAKE};
use crate::registry::{Registrant, Registry};
use crate::task::raw::RawTask;
use crate::timer::TimerQueue;
use braid_bridge::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use braid_bridge::sync::Mutex;
use crossbeam_deque::{Injector, Stealer};
use crossbeam_utils::CachePadded;
use std::sync::Arc;
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How often the monitor samples the loops while any of them is awake.
pub(crate) const MONITOR_INTERVAL: Duration = Duration::from_millis(2);
/// How long the monitor sleeps while every loop sleeps.
const MONITOR_IDLE_INTERVAL: Duration = Duration::from_millis(50);
/// No loop holds the timer-driver token.
const NO_DRIVER: usize = usize::MAX;

pub(crate) type TaskPtr = Arc<dyn RawTask>;

impl Registrant for TaskPtr {
    fn registry_slot(&self) -> &AtomicUsize {
        &self.header().registry_slot
    }
    fn finished(&self) -> bool {
        self.header().done()
    }
    fn order(&self) -> u64 {
        self.header().id.0
    }
}

// Id counters hand out unique numbers and synchronise nothing, so they use std's atomics
// directly (loom atomics cannot live in statics).
static NEXT_RUNTIME_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
static NEXT_TASK_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub(crate) fn next_task_id() -> u64 {
    NEXT_TASK_ID.fetch_add(1, Ordering::Relaxed)
}

/// Settings fixed at build time.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) workers: usize,
    pub(crate) thread_name: String,
    pub(crate) default_executor_threads: Option<usize>,
    pub(crate) debug: bool,
    pub(crate) slow_callback_duration: Duration,
}

pub(crate) struct RuntimeShared {
    pub(crate) id: u64,
    pub(crate) config: Config,
    /// The zero of the runtime's nanosecond clock (timer deadlines are stored as u64 ns).
    pub(crate) epoch: Instant,
    pub(crate) injector: Injector<TaskPtr>,
    pub(crate) loops: Box<[Arc<LoopShared>]>,
    pub(crate) stealers: Box<[Stealer<TaskPtr>]>,
    idle: Mutex<Vec<usize>>,
    num_idle: CachePadded<AtomicUsize>,
    num_searching: CachePadded<AtomicUsize>,
    timer_driver: AtomicUsize,
    pub(crate) timers: TimerQueue,
    pub(crate) registry: Registry<TaskPtr>,
    /// Loops exit their run loop once this is set.
    pub(crate) stopping: AtomicBool,
    /// Makes the next (or current) `run_forever` return.
    pub(crate) stop_requested: AtomicBool,
    /// Host loops (threads inside `run_until_complete`/`run_forever`), for `stop()`.
    pub(crate) hosts: Mutex<Vec<std::sync::Weak<LoopShared>>>,
    pub(crate) next_host_id: AtomicUsize,
    /// Loop threads that have finished, and who to tell.
    pub(crate) exited: AtomicUsize,
    pub(crate) shutdown_waiter: Mutex<Option<Thread>>,
    pub(crate) monitor: Mutex<Option<Thread>>,
    /// The pool behind `to_thread`, started on first use.
    default_pool: std::sync::OnceLock<braid_bridge::ThreadPool>,
}

impl RuntimeShared {
    pub(crate) fn new(
        config: Config,
        loops: Vec<Arc<LoopShared>>,
        stealers: Vec<Stealer<TaskPtr>>,
    ) -> RuntimeShared {
        let n = loops.len();
        RuntimeShared {
            id: NEXT_RUNTIME_ID.fetch_add(1, Ordering::Relaxed),
            config,
            epoch: Instant::now(),
            injector: Injector::new(),
            loops: loops.into_boxed_slice(),
            stealers: stealers.into_boxed_slice(),
            idle: Mutex::new(Vec::with_capacity(n)),
            num_idle: CachePadded::new(AtomicUsize::new(0)),
            num_searching: CachePadded::new(AtomicUsize::new(0)),
            timer_driver: AtomicUsize::new(NO_DRIVER),
            timers: TimerQueue::new(),
            registry: Registry::new(n),
            stopping: AtomicBool::new(false),
            stop_requested: AtomicBool::new(false),
            hosts: Mutex::new(Vec::new()),
            next_host_id: AtomicUsize::new(n),
            exited: AtomicUsize::new(0),
            shutdown_waiter: Mutex::new(None),
            monitor: Mutex::new(None),
            default_pool: std::sync::OnceLock::new(),
        }
    }

    /// The default thread pool (`to_thread`), started on first use.
    pub(crate) fn default_pool(&self) -> &braid_bridge::ThreadPool {
        self.default_pool.get_or_init(|| {
            let mut builder = braid_bridge::ThreadPool::builder()
                .thread_name(format!("{}-blocking", self.config.thread_name));
            if let Some(n) = self.config.default_executor_threads {
                builder = builder.max_workers(n);
            }
            builder.build().expect("validated by Builder::build")
        })
    }

    /// The default pool, if it was ever started.
    pub(crate) fn started_default_pool(&self) -> Option<&braid_bridge::ThreadPool> {
        self.default_pool.get()
    }

    /// `instant` on the runtime's nanosecond clock (saturating; u64::MAX - 1 means "never").
    #[inline]
    pub(crate) fn ns(&self, instant: Instant) -> u64 {
        let ns = instant.saturating_duration_since(self.epoch).as_nanos();
        ns.min(u128::from(u64::MAX - 1)) as u64
    }

    /// The instant of `ns` on the runtime's clock (for poller timeouts).
    pub(crate) fn instant_of(&self, ns: u64) -> Option<Instant> {
        self.epoch.checked_add(Duration::from_nanos(ns))
    }

    /// Tasks are waiting in a shared place: the injector, or a sibling's queue that
    /// [`can_steal_from`](Self::can_steal_from) allows.
    pub(crate) fn has_shared_work(&self, except: usize) -> bool {
        !self.injector.is_empty()
            || (0..self.stealers.len()).any(|i| i != except && self.can_steal_from(i))
    }

    /// Whether siblings may steal from loop `victim`'s queue: when it holds more than the one
    /// task the loop runs next, or when the monitor found the loop stuck.
    ///
    /// Why leave the next task: a chain of tasks that hand work to each other (a spawn of the
    /// next link, a one-shot answer) keeps one task queued at a time. Stolen, the chain moves
    /// between cores at every link, each move a cold cache and a cross-core hand-off
    /// (`chained_spawn` ran at 1.9x tokio's time with two loops, 1.0x with one). tokio keeps
    /// that task in a "LIFO slot" siblings cannot reach; here it stays in the ordinary FIFO
    /// queue, so the order of a loop's tasks is unchanged and taking it costs nothing extra.
    /// A loop stuck in a long step would strand it: the monitor sets `stuck`, and siblings
    /// then take it too. `len` races with the owner's pushes and pops and `stuck` may be
    /// stale: a wrong read makes a sibling skip a task or take one early, never loses one,
    /// because the owner runs whatever stays and the monitor rescues it if the owner cannot.
    #[inline]
    pub(crate) fn can_steal_from(&self, victim: usize) -> bool {
        may_steal(self.stealers[victim].len(), &self.loops[victim].stuck)
    }

    /// Publishers of shared work call this after publishing: wakes one idle loop unless a
    /// loop is already searching.
    #[inline]
    pub(crate) fn notify_work(&self) {
        // Pairs with the fence in the sleeper's re-check (see the module docs).
        fence(Ordering::SeqCst);
        if self.num_searching.load(Ordering::Relaxed) != 0
            || self.num_idle.load(Ordering::Relaxed) == 0
        {
            return;
        }
        self.wake_one_idle(false);
    }

    /// Pops one idle loop, counts it as searching, and rings it. With `force`, even if some
    /// loop is searching already (the monitor's rescue of a stuck loop's queue).
    #[cold]
    fn wake_one_idle(&self, force: bool) -> bool {
        let id = {
            let mut idle = self.idle.lock();
            if !force && self.num_searching.load(Ordering::Relaxed) != 0 {
                return false;
            }
            let Some(id) = idle.pop() else { return false };
            self.num_idle.fetch_sub(1, Ordering::Relaxed);
            self.num_searching.fetch_add(1, Ordering::SeqCst);
            self.loops[id].notified.store(true, Ordering::Release);
            id
        };
        self.loops[id].bell.ring();
        true
    }

    /// A loop announces it is about to sleep.
    pub(crate) fn register_idle(&self, id: usize) {
        let mut idle = self.idle.lock();
        idle.push(id);
        self.num_idle.fetch_add(1, Ordering::SeqCst);
    }

    /// A loop that registered as idle and woke up leaves the idle set. Returns false if a
    /// notifier had already popped it (and counted it as searching).
    pub(crate) fn unregister_idle(&self, id: usize) -> bool {
        let mut idle = self.idle.lock();
        match idle.iter().position(|&i| i == id) {
            Some(pos) => {
                idle.swap_remove(pos);
                self.num_idle.fetch_sub(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// A searching loop found a task (or gave up searching: `found == false`).
    pub(crate) fn end_searching(&self, found: bool, more_work: bool) {
        let was_last = self.num_searching.fetch_sub(1, Ordering::SeqCst) == 1;
        if found && was_last && more_work {
            // Ramp up: there is more than we can take; wake the next sibling.
            self.notify_work();
        }
    }

    pub(crate) fn try_take_timer_driver(&self, id: usize) -> bool {
        self.timer_driver
            .compare_exchange(NO_DRIVER, id, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    pub(crate) fn release_timer_driver(&self, id: usize) {
        let _ =
            self.timer_driver
                .compare_exchange(id, NO_DRIVER, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// A timer became the earliest: make sure some sleeping loop wakes by `deadline`.
    pub(crate) fn on_new_earliest_timer(&self, deadline: u64) {
        // Pairs with the fence a sleeping loop issues after taking the driver token and
        // before reading the earliest deadline.
        fence(Ordering::SeqCst);
        let driver = self.timer_driver.load(Ordering::Relaxed);
        if driver != NO_DRIVER {
            let lp = &self.loops[driver];
            if lp.sleep_deadline.load(Ordering::Relaxed) > deadline {
                lp.bell.ring();
            }
            return;
        }
        if self.num_idle.load(Ordering::Relaxed) == 0 {
            return; // every loop is awake and checks the timers at each tick
        }
        let candidate = self.idle.lock().last().copied();
        if let Some(id) = candidate {
            let lp = &self.loops[id];
            if lp.sleep_deadline.load(Ordering::Relaxed) > deadline {
                lp.bell.ring();
            }
        }
    }

    /// Wakes the monitor (at shutdown).
    pub(crate) fn unpark_monitor(&self) {
        if let Some(t) = &*self.monitor.lock() {
            t.unpark();
        }
    }
}

/// The rule of [`RuntimeShared::can_steal_from`], for a victim with `queued` tasks.
#[inline]
fn may_steal(queued: usize, victim_stuck: &AtomicBool) -> bool {
    match queued {
        0 => false,
        // Pairs with the monitor's release store, made before it rings a sibling.
        1 => victim_stuck.load(Ordering::Acquire),
        _ => true,
    }
}

/// This thread's worker loop index in `rt`, if it is one of `rt`'s worker threads.
#[inline]
pub(crate) fn current_worker(rt: &RuntimeShared) -> Option<usize> {
    let ctx = crate::context::current_loop()?;
    (ctx.rt.id == rt.id && ctx.worker.is_some()).then_some(ctx.lp.id)
}

/// The schedule step shared by every task: to its owner loop (spawn_local), to this loop's
/// queue when called on one of the runtime's worker loops, or to the injector.
pub(crate) fn schedule(task: TaskPtr) {
    let header = task.header();
    let ctx = crate::context::current_loop();
    if let Some(home) = header.home.clone() {
        if let Some(ctx) = &ctx {
            if Arc::ptr_eq(&ctx.lp, &home) {
                ctx.local_ready.borrow_mut().push_back(task);
                return;
            }
        }
        // A wake from another thread: the owner runs it. If the owner has closed, the task
        // was already finished by the owner's exit (see `LoopCtx::close`).
        let _ = home.bell.push(crate::event_loop::Remote::Wake(task));
        return;
    }
    if let Some(ctx) = &ctx {
        if ctx.rt.id == task.header().rt.id {
            if let Some(worker) = &ctx.worker {
                worker.push(task);
                // One queued task is the loop's own next poll; more can be shared.
                if worker.len() > 1 {
                    ctx.rt.notify_work();
                }
                return;
            }
        }
    }
    let rt = header.rt.clone();
    drop(ctx);
    rt.injector.push(task);
    rt.notify_work();
}

/// The monitor thread's body: see the module docs.
pub(crate) fn monitor_main(rt: Arc<RuntimeShared>) {
    let n = rt.loops.len();
    let mut last_ticks = vec![u64::MAX; n];
    while !rt.stopping.load(Ordering::Acquire) {
        let any_awake = rt
            .loops
            .iter()
            .any(|lp| lp.sleep_deadline.load(Ordering::Relaxed) == AWAKE);
        let interval = if any_awake {
            MONITOR_INTERVAL
        } else {
            MONITOR_IDLE_INTERVAL
        };
        std::thread::park_timeout(interval);
        if rt.stopping.load(Ordering::Acquire) {
            break;
        }
        for (i, lp) in rt.loops.iter().enumerate() {
            let tick = lp.tick.load(Ordering::Relaxed);
            let awake = lp.sleep_deadline.load(Ordering::Relaxed) == AWAKE;
            if awake && tick == last_ticks[i] && !rt.stealers[i].is_empty() {
                // Stuck in one callback or poll with tasks queued behind it: siblings may
                // now take even the task it would run next. Marked before the wake-up, which
                // carries it to the rescuer (see `may_steal` and its loom model).
                lp.stuck.store(true, Ordering::Release);
                rt.wake_one_idle(true);
            }
            if awake && tick == last_ticks[i] {
                // Stuck with sockets registered: their readiness still wakes their tasks,
                // which then run on the other loops.
                crate::io::driver::poll_now(lp);
            }
            last_ticks[i] = tick;
        }
        if let Some(earliest) = rt.timers.earliest() {
            let overdue = rt.ns(Instant::now()).saturating_sub(earliest);
            if overdue > 2 * MONITOR_INTERVAL.as_nanos() as u64 {
                // Due timers nobody fired (their loops are stuck): have an idle loop do it.
                let candidate = rt.idle.lock().last().copied();
                match candidate {
                    Some(id) => rt.loops[id].bell.ring(),
                    // Every worker is busy: the threads inside run_until_complete fire them.
                    None => {
                        for host in rt.hosts.lock().iter().filter_map(|h| h.upgrade()) {
                            host.bell.ring();
                        }
                    }
                }
            }
        }
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    //! No stranding behind a stuck loop: siblings leave a loop the one task it runs next, but
    //! once the monitor has marked the loop stuck and rung a sibling, that sibling takes it.
    //! The queue is modelled as a counter under a lock and the doorbell as a release/acquire
    //! flag (the real ones have their own models); the rule is the real `may_steal`.
    use super::may_steal;
    use braid_bridge::sync::atomic::{AtomicBool, Ordering};
    use braid_bridge::sync::{Arc, Mutex};

    /// `ring_first`: the monitor rings before it marks the loop stuck (the bug).
    fn model(ring_first: bool) {
        loom::model(move || {
            // The stuck owner's queue holds its next task; the owner never runs again.
            let queue = Arc::new(Mutex::new(1usize));
            let stuck = Arc::new(AtomicBool::new(false));
            let rung = Arc::new(AtomicBool::new(false));
            let monitor = {
                let (stuck, rung) = (stuck.clone(), rung.clone());
                loom::thread::spawn(move || {
                    if ring_first {
                        rung.store(true, Ordering::Release);
                        stuck.store(true, Ordering::Release);
                    } else {
                        stuck.store(true, Ordering::Release);
                        rung.store(true, Ordering::Release);
                    }
                })
            };
            // The sibling: asleep until rung, then one search of the stuck loop's queue.
            while !rung.load(Ordering::Acquire) {
                loom::thread::yield_now();
            }
            let stolen = {
                let mut queued = queue.lock();
                if may_steal(*queued, &stuck) {
                    *queued -= 1;
                    true
                } else {
                    false
                }
            };
            monitor.join().unwrap();
            assert!(stolen, "the task stranded behind the stuck loop");
        });
    }

    #[test]
    fn loom_stuck_loop_next_task_is_stolen_once_rung() {
        model(false);
    }

    #[test]
    #[should_panic(expected = "the task stranded behind the stuck loop")]
    fn loom_stuck_loop_ringing_before_marking_strands_the_task() {
        model(true);
    }

    /// A loop that is not stuck keeps its next task; a second one is fair game.
    #[test]
    fn loom_next_task_is_left_to_a_running_loop() {
        loom::model(|| {
            let stuck = AtomicBool::new(false);
            assert!(!may_steal(0, &stuck));
            assert!(!may_steal(1, &stuck));
            assert!(may_steal(2, &stuck));
        });
    }
}
