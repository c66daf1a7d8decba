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

pub(crate) use crate::task::raw::TaskPtr;

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
    /// Which loops sleep, and how many are searching.
    pub(crate) idle: IdleLoops,
    timer_driver: AtomicUsize,
    pub(crate) timers: TimerQueue,
    pub(crate) registry: Registry<TaskPtr>,
    /// Loops exit their run loop once this is set.
    pub(crate) stopping: AtomicBool,
    /// Set by `stop()`; the next (or current) `run_forever` or `run_until_complete` to look
    /// at it takes it and returns.
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
            idle: IdleLoops::new(n),
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
        if let Some(id) = self.idle.loop_to_wake() {
            self.loops[id].bell.ring();
        }
    }

    /// Pops one idle loop, counts it as searching, and rings it, even if some loop is
    /// searching already (the monitor's rescue of a stuck loop's queue).
    #[cold]
    fn force_wake_one_idle(&self) {
        if let Some(id) = self.idle.pop(true) {
            self.loops[id].bell.ring();
        }
    }

    /// A searching loop found a task (or gave up searching: `found == false`).
    pub(crate) fn end_searching(&self, found: bool, more_work: bool) {
        if self.idle.end_searching(found, more_work) {
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

    /// After a shutdown, once every worker loop has exited and no host loop runs, nobody
    /// fires the timer heap any more: a sleep still waiting in it (a task's of another
    /// runtime, or a foreign thread's) is woken, to move to where it is polled or fail
    /// (`Sleep::outlived_its_runtime`). Called by the shutdown and by each exiting loop (the
    /// last one may exit after a shutdown gave up on it); `abandon_all` is idempotent. A host
    /// loop still running when the last worker exits fires the heap itself while it runs.
    pub(crate) fn abandon_timers_if_nobody_fires(&self) {
        if !self.stopping.load(Ordering::Acquire)
            || self.exited.load(Ordering::Acquire) < self.loops.len()
        {
            return;
        }
        let host_running = self
            .hosts
            .lock()
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .any(|h| h.running.load(Ordering::Acquire));
        if !host_running {
            self.timers.abandon_all();
        }
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
        if self.idle.num_idle() == 0 {
            return; // every loop is awake and checks the timers at each tick
        }
        let candidate = self.idle.last();
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

/// The idle set and the searching count of the module docs' wake-up protocol, on their own
/// so that the loom models below drive this very code. Indexed by worker loop id.
pub(crate) struct IdleLoops {
    idle: Mutex<Vec<usize>>,
    num_idle: CachePadded<AtomicUsize>,
    num_searching: CachePadded<AtomicUsize>,
    /// Per loop: set by a notifier that popped it from the idle set and counted it
    /// searching, taken by the loop when it wakes ([`IdleLoops::unregister`]).
    notified: Box<[AtomicBool]>,
}

impl IdleLoops {
    pub(crate) fn new(loops: usize) -> IdleLoops {
        IdleLoops {
            idle: Mutex::new(Vec::with_capacity(loops)),
            num_idle: CachePadded::new(AtomicUsize::new(0)),
            num_searching: CachePadded::new(AtomicUsize::new(0)),
            notified: (0..loops).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// After publishing shared work: the idle loop to ring, popped and counted searching,
    /// unless a loop is searching already or none is idle.
    #[inline]
    pub(crate) fn loop_to_wake(&self) -> Option<usize> {
        // Pairs with the fence in the sleeper's re-check (see the module docs).
        fence(Ordering::SeqCst);
        if self.num_searching.load(Ordering::Relaxed) != 0
            || self.num_idle.load(Ordering::Relaxed) == 0
        {
            return None;
        }
        self.pop(false)
    }

    /// Pops one idle loop and counts it searching (with `force`, even if some loop is
    /// searching already). The caller rings it.
    #[cold]
    pub(crate) fn pop(&self, force: bool) -> Option<usize> {
        let mut idle = self.idle.lock();
        if !force && self.num_searching.load(Ordering::Relaxed) != 0 {
            return None;
        }
        let id = idle.pop()?;
        self.num_idle.fetch_sub(1, Ordering::Relaxed);
        self.num_searching.fetch_add(1, Ordering::SeqCst);
        // Under the lock: the loop's `unregister`, which takes it too, sees either itself in
        // the set or this flag.
        self.notified[id].store(true, Ordering::Release);
        Some(id)
    }

    /// Loop `id` announces it is about to sleep. It must then issue `fence(SeqCst)` and
    /// re-check for work before it sleeps (see the module docs).
    pub(crate) fn register(&self, id: usize) {
        let mut idle = self.idle.lock();
        idle.push(id);
        self.num_idle.fetch_add(1, Ordering::SeqCst);
    }

    /// Loop `id`, registered as idle, is awake again: it leaves the idle set. Returns true if
    /// a notifier had popped it first and counted it searching: the loop is now searching
    /// and must end that with [`end_searching`](Self::end_searching).
    pub(crate) fn unregister(&self, id: usize) -> bool {
        {
            let mut idle = self.idle.lock();
            if let Some(pos) = idle.iter().position(|&i| i == id) {
                idle.swap_remove(pos);
                self.num_idle.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.notified[id].swap(false, Ordering::AcqRel)
    }

    /// Whether a notifier has popped loop `id` since it registered (its re-check before
    /// sleeping: then it must not sleep).
    pub(crate) fn is_notified(&self, id: usize) -> bool {
        self.notified[id].load(Ordering::Acquire)
    }

    /// A searching loop found a task (or gave up searching: `found == false`). Returns true
    /// if the caller should notify once more: it was the last searcher, it found a task and
    /// there is more than it can take (the ramp-up of the module docs).
    pub(crate) fn end_searching(&self, found: bool, more_work: bool) -> bool {
        let was_last = self.num_searching.fetch_sub(1, Ordering::SeqCst) == 1;
        found && was_last && more_work
    }

    pub(crate) fn num_idle(&self) -> usize {
        self.num_idle.load(Ordering::Relaxed)
    }

    /// The loop that registered last, if any is idle.
    pub(crate) fn last(&self) -> Option<usize> {
        self.idle.lock().last().copied()
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

/// This thread's loop, if it is one of `rt`'s worker loops.
#[inline]
fn current_worker_ctx(rt: &RuntimeShared) -> Option<std::rc::Rc<crate::event_loop::LoopCtx>> {
    crate::context::current_loop().filter(|ctx| ctx.rt.id == rt.id && ctx.worker.is_some())
}

/// This thread's worker loop index in `rt`, if it is one of `rt`'s worker threads.
#[inline]
pub(crate) fn current_worker(rt: &RuntimeShared) -> Option<usize> {
    current_worker_ctx(rt).map(|ctx| ctx.lp.id)
}

/// Takes a finishing task (its registry slot word) out of `rt`'s registry: on one of `rt`'s
/// worker loops through that loop's outbox (see `registry`), elsewhere directly.
pub(crate) fn leave_registry(rt: &RuntimeShared, slot_word: &AtomicUsize) {
    match current_worker_ctx(rt) {
        Some(ctx) => {
            // Busy only if a destructor run by a flush finished a task: then straight on.
            let mut outbox = ctx.registry_outbox.try_borrow_mut().ok();
            rt.registry
                .remove(slot_word, Some(ctx.lp.id), outbox.as_deref_mut());
        }
        None => rt.registry.remove(slot_word, None, None),
    }
}

/// The schedule step shared by every task: to its owner loop (spawn_local), to this loop's
/// queue when called on one of the runtime's worker loops, or to the injector.
pub(crate) fn schedule(task: TaskPtr) {
    schedule_inner(task, None);
}

/// [`schedule`] by a caller that holds a reference to the task's runtime (a spawn): a task
/// bound for the injector needs no count of the runtime of its own then.
#[inline]
pub(crate) fn schedule_in(rt: &RuntimeShared, task: TaskPtr) {
    debug_assert!(std::ptr::eq(rt, &*task.header().rt));
    schedule_inner(task, Some(rt));
}

#[inline]
fn schedule_inner(task: TaskPtr, held_rt: Option<&RuntimeShared>) {
    let header = task.header();
    let ctx = crate::context::current_loop();
    if let Some(home) = &header.home {
        if let Some(ctx) = &ctx {
            if Arc::ptr_eq(&ctx.lp, home) {
                ctx.local_ready.borrow_mut().push_back(task);
                return;
            }
        }
        // A wake from another thread: the owner runs it. If the owner has closed, the task
        // was already finished by the owner's exit (see `LoopCtx::close`). The count of the
        // loop is taken before the task moves, when its header may no longer be ours to read.
        let home = home.clone();
        let _ = home.bell.push(crate::event_loop::Remote::Wake(task));
        return;
    }
    if let Some(ctx) = &ctx {
        if ctx.rt.id == header.rt.id {
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
    drop(ctx);
    // Once pushed, the task may run and be freed on another thread, with what may be the last
    // count of the runtime: without the caller's reference, notify through a count of our own.
    let owned;
    let rt = match held_rt {
        Some(rt) => rt,
        None => {
            owned = header.rt.clone();
            &*owned
        }
    };
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
                rt.force_wake_one_idle();
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
                let candidate = rt.idle.last();
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

#[cfg(all(test, loom))]
mod loom_idle_models {
    //! The wake-up protocol of the module docs, on the real [`IdleLoops`]: a publisher puts two
    //! tasks in the shared queue, each followed by `notify_work`'s step, while one worker loop
    //! runs what it finds and goes to sleep as `park_worker` does (register as idle, fence,
    //! re-check, sleep until rung; awake, leave the idle set and search if popped). The queue
    //! is a counter and the doorbell a flag under a lock (both have their own models; a lock
    //! rather than an atomic `swap` because of loom issue #389, where a load after a `swap`
    //! may read a value older than the one the `swap` read). Whatever the
    //! interleaving, the loop never sleeps for good with a task queued, and no loop is left
    //! counted searching (which would silence every later `notify_work`).
    use super::IdleLoops;
    use braid_bridge::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
    use braid_bridge::sync::{Arc, Mutex};

    /// What the broken twins leave out.
    #[derive(Clone, Copy, PartialEq)]
    enum Fault {
        None,
        /// The sleeper's fence between registering and re-checking.
        SleeperFence,
        /// The woken loop ignores that a notifier popped it (never ends the search).
        Notified,
    }

    struct World {
        idle: IdleLoops,
        queued: AtomicUsize,
        rung: Mutex<bool>,
        published: AtomicBool,
    }

    fn take_task(w: &World) -> bool {
        w.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }

    fn notify_work(w: &World) {
        if w.idle.loop_to_wake().is_some() {
            *w.rung.lock() = true;
        }
    }

    /// The worker loop; returns when it sleeps and nobody will ring it any more.
    fn worker(w: &World, fault: Fault) {
        let mut searching = false;
        loop {
            while take_task(w) {
                if std::mem::take(&mut searching) {
                    let more = w.queued.load(Ordering::Acquire) > 0;
                    if w.idle.end_searching(true, more) {
                        notify_work(w);
                    }
                }
            }
            if std::mem::take(&mut searching) {
                let _ = w.idle.end_searching(false, false);
            }
            w.idle.register(0);
            if fault != Fault::SleeperFence {
                fence(Ordering::SeqCst);
            }
            let stay_awake = w.queued.load(Ordering::Relaxed) > 0 || w.idle.is_notified(0);
            if !stay_awake {
                loop {
                    if std::mem::take(&mut *w.rung.lock()) {
                        break;
                    }
                    if w.published.load(Ordering::Acquire) && !*w.rung.lock() {
                        return; // asleep for good: the publisher is done and did not ring
                    }
                    loom::thread::yield_now();
                }
            }
            let popped = w.idle.unregister(0);
            searching = popped && fault != Fault::Notified;
        }
    }

    fn model(fault: Fault) {
        loom::model(move || {
            let world = Arc::new(World {
                idle: IdleLoops::new(1),
                queued: AtomicUsize::new(0),
                rung: Mutex::new(false),
                published: AtomicBool::new(false),
            });
            let w = world.clone();
            let publisher = loom::thread::spawn(move || {
                for _ in 0..2 {
                    w.queued.fetch_add(1, Ordering::Release);
                    notify_work(&w);
                }
                w.published.store(true, Ordering::Release);
            });
            worker(&world, fault);
            publisher.join().unwrap();
            assert_eq!(
                world.queued.load(Ordering::Acquire),
                0,
                "lost wake-up: the loop sleeps with a task queued"
            );
            assert_eq!(
                world.idle.num_searching.load(Ordering::Acquire),
                0,
                "lost wake-up to come: a loop is still counted searching"
            );
        });
    }

    #[test]
    fn loom_idle_protocol_never_sleeps_on_queued_work() {
        model(Fault::None);
    }

    #[test]
    #[should_panic(expected = "the loop sleeps with a task queued")]
    fn loom_idle_protocol_without_the_sleepers_fence_loses_a_wake_up() {
        model(Fault::SleeperFence);
    }

    #[test]
    #[should_panic(expected = "lost wake-up")]
    fn loom_idle_protocol_ignoring_a_pop_leaves_a_searcher_counted() {
        model(Fault::Notified);
    }
}
