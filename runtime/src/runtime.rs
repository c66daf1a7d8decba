//! `Runtime` and `Builder`: starting loop threads, driving a future on the calling thread,
//! and shutting down so that every task settles.

use crate::context;
use crate::event_loop::{closed_error, EventLoop, LoopCtx, LoopShared, LoopState};
use crate::scheduler::{monitor_main, next_task_id, Config, RuntimeShared, TaskPtr};
use crate::task::raw::{new_main_task, MainWaker};
use crate::task::{Header, TaskId};
use braid_bridge::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use braid_bridge::sync::Mutex;
use braid_bridge::{Error, ErrorKind, Result};
use crossbeam_deque::Worker;
use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long `Drop` lets tasks finish their cancellation before giving up on them.
const DROP_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown waits for loop threads to exit even after its timeout has passed: an
/// idle loop exits within microseconds; only one stuck in a callback takes longer.
const LOOP_EXIT_GRACE: Duration = Duration::from_millis(200);

/// Configures and starts a [`Runtime`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// let rt = braid_runtime::Runtime::builder()
///     .workers(2)
///     .thread_name("app-loop")
///     .slow_callback_duration(Duration::from_millis(50))
///     .build()
///     .unwrap();
/// assert_eq!(rt.event_loops().len(), 2);
/// ```
#[derive(Clone, Debug)]
pub struct Builder {
    workers: Option<usize>,
    thread_name: String,
    debug: bool,
    slow_callback_duration: Duration,
    default_executor_threads: Option<usize>,
}

impl Builder {
    fn new() -> Builder {
        Builder {
            workers: None,
            thread_name: "braid-loop".to_owned(),
            debug: false,
            slow_callback_duration: Duration::from_millis(100),
            default_executor_threads: None,
        }
    }

    /// The number of loop threads: at least 1 and at most [`Runtime::MAX_WORKERS`] (`build`
    /// refuses others); default: one per available core, at most `MAX_WORKERS`.
    ///
    /// ```
    /// use braid_runtime::Runtime;
    /// let rt = Runtime::builder().workers(3).build().unwrap();
    /// assert_eq!(rt.event_loops().len(), 3);
    /// assert!(Runtime::builder().workers(0).build().is_err());
    /// assert!(Runtime::builder().workers(usize::MAX).build().is_err());
    /// ```
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// The loop threads' name prefix (threads are named `<name>-<index>`). A name with a NUL
    /// byte makes `build` fail (threads' names are C strings).
    ///
    /// ```
    /// let rt = braid_runtime::Runtime::builder().workers(1).thread_name("svc").build().unwrap();
    /// let name = rt.run_until_complete(async {
    ///     let t = braid_runtime::get_running_loop().spawn(async {
    ///         Ok(std::thread::current().name().unwrap().to_owned())
    ///     })?;
    ///     t.await
    /// }).unwrap();
    /// assert_eq!(name, "svc-0");
    /// ```
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.thread_name = name.into();
        self
    }

    /// asyncio's debug mode: callbacks and task polls slower than
    /// [`slow_callback_duration`](Builder::slow_callback_duration) are reported to the
    /// loop's exception handler with the task's name.
    ///
    /// ```
    /// let rt = braid_runtime::Runtime::builder().workers(1).debug(true).build().unwrap();
    /// # drop(rt);
    /// ```
    pub fn debug(mut self, on: bool) -> Self {
        self.debug = on;
        self
    }

    /// The threshold for slow-callback reports in debug mode (default 100 ms).
    ///
    /// ```
    /// use std::time::Duration;
    /// let rt = braid_runtime::Runtime::builder()
    ///     .workers(1).debug(true).slow_callback_duration(Duration::from_millis(10))
    ///     .build().unwrap();
    /// # drop(rt);
    /// ```
    pub fn slow_callback_duration(mut self, d: Duration) -> Self {
        self.slow_callback_duration = d;
        self
    }

    /// The most threads of the default pool behind [`to_thread`](crate::to_thread) (default:
    /// cores + 4, at most 32). The pool starts on first use.
    ///
    /// ```
    /// let rt = braid_runtime::Runtime::builder().workers(1).default_executor_threads(4).build().unwrap();
    /// # drop(rt);
    /// ```
    pub fn default_executor_threads(mut self, n: usize) -> Self {
        self.default_executor_threads = Some(n);
        self
    }

    /// Starts the loop threads.
    ///
    /// ```
    /// let rt = braid_runtime::Runtime::builder().workers(1).build().unwrap();
    /// assert_eq!(rt.run_until_complete(async { Ok(1) }).unwrap(), 1);
    /// ```
    ///
    /// # Errors
    ///
    /// `InvalidInput`, before anything is started, for zero workers or more than
    /// [`Runtime::MAX_WORKERS`], zero executor threads, or a thread name with a NUL byte; the
    /// OS error if a poller or a thread cannot be created. That error comes at once: the
    /// threads already started are stopped and joined first, and nothing is left behind.
    pub fn build(self) -> std::io::Result<Runtime> {
        self.build_with(|name, body| std::thread::Builder::new().name(name).spawn(body))
    }

    /// The settings' checks, before anything is allocated or started: each of these would
    /// otherwise panic in `build` or abort the process (an allocation of `workers` slots).
    fn check(&self) -> std::io::Result<usize> {
        let invalid = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, msg);
        let workers = match self.workers {
            Some(0) => {
                return Err(invalid(
                    "Builder::workers: a runtime needs at least 1 worker".to_owned(),
                ))
            }
            Some(n) if n > Runtime::MAX_WORKERS => {
                return Err(invalid(format!(
                    "Builder::workers: a runtime has at most {} workers \
                     (Runtime::MAX_WORKERS), not {n}",
                    Runtime::MAX_WORKERS
                )))
            }
            Some(n) => n,
            None => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(Runtime::MAX_WORKERS),
        };
        if self.default_executor_threads == Some(0) {
            return Err(invalid(
                "Builder::default_executor_threads: the pool needs at least 1 thread".to_owned(),
            ));
        }
        // std panics when it spawns a thread so named (it needs a C string).
        if self.thread_name.contains('\0') {
            return Err(invalid(format!(
                "Builder::thread_name: a thread name cannot contain a NUL byte: {:?}",
                self.thread_name
            )));
        }
        Ok(workers)
    }

    /// [`build`](Builder::build), starting each thread with `spawn`: std's, except in the test
    /// that makes one fail.
    fn build_with(
        self,
        mut spawn: impl FnMut(String, ThreadBody) -> std::io::Result<JoinHandle<()>>,
    ) -> std::io::Result<Runtime> {
        let workers = self.check()?;
        let mut loops = Vec::with_capacity(workers);
        let mut queues = Vec::with_capacity(workers);
        let mut stealers = Vec::with_capacity(workers);
        for id in 0..workers {
            loops.push(Arc::new(LoopShared::new(id, false)?));
            let queue = Worker::new_fifo();
            stealers.push(queue.stealer());
            queues.push(queue);
        }
        let config = Config {
            workers,
            thread_name: self.thread_name.clone(),
            default_executor_threads: self.default_executor_threads,
            debug: self.debug,
            slow_callback_duration: self.slow_callback_duration,
        };
        let shared = Arc::new(RuntimeShared::new(config, loops, stealers));
        let rt = Runtime {
            shared: shared.clone(),
            threads: Mutex::new(Vec::new()),
            shut: AtomicBool::new(false),
        };
        for (id, queue) in queues.into_iter().enumerate() {
            let body: ThreadBody = {
                let shared = shared.clone();
                Box::new(move || worker_main(shared, id, queue))
            };
            match spawn(format!("{}-{id}", self.thread_name), body) {
                Ok(handle) => rt.threads.lock().push(handle),
                Err(e) => {
                    // No thread will count these loops out as it exits: without this, the
                    // shutdown of the drop below would wait its whole timeout for them. It
                    // stops the loop threads that did start and joins them.
                    shared.exited.fetch_add(workers - id, Ordering::AcqRel);
                    drop(rt);
                    return Err(e);
                }
            }
        }
        let monitor = {
            let shared = shared.clone();
            // If this fails, `?` drops `rt`: every loop thread started, and the drop's
            // shutdown stops and joins them all.
            spawn(
                format!("{}-monitor", self.thread_name),
                Box::new(move || monitor_main(shared)),
            )?
        };
        *shared.monitor.lock() = Some(monitor.thread().clone());
        rt.threads.lock().push(monitor);
        Ok(rt)
    }
}

/// A runtime thread's body, as [`Builder::build_with`] hands it to its spawner.
type ThreadBody = Box<dyn FnOnce() + Send>;

fn worker_main(rt: Arc<RuntimeShared>, id: usize, queue: Worker<TaskPtr>) {
    // Counted even if the thread dies of a panic: a shutdown then need not wait out its
    // timeout for it, and learns from the join how it ended.
    let _exit = CountExit(&rt);
    #[cfg(all(test, not(loom)))]
    tests::die_if_told();
    let lp = rt.loops[id].clone();
    let ctx = Rc::new(LoopCtx::new(rt.clone(), lp.clone(), Some(queue)));
    {
        // Also marks this thread as the runtime's loop thread for the bridge crate: blocking
        // on a future this runtime must complete, from here, would deadlock.
        let _guard = context::enter_loop(ctx.clone());
        lp.set_state(LoopState::Running);
        while !rt.stopping.load(Ordering::Acquire) {
            if !ctx.run_once() {
                ctx.park_worker();
            }
        }
        // The callbacks accepted before the stop still run, once, as asyncio's `run` runs
        // its loop through its teardown before it closes: `close` reports only what they
        // schedule in turn and what arrives later.
        ctx.run_accepted_callbacks();
        ctx.close();
    }
    drop(ctx);
}

/// Counts a loop thread out when it ends, however it ends, and wakes a shutdown waiting for it.
struct CountExit<'a>(&'a RuntimeShared);

impl Drop for CountExit<'_> {
    fn drop(&mut self) {
        self.0.exited.fetch_add(1, Ordering::AcqRel);
        if let Some(waiter) = &*self.0.shutdown_waiter.lock() {
            waiter.unpark();
        }
        // The last loop to exit may be one the shutdown stopped waiting for (stuck).
        self.0.abandon_timers_if_nobody_fires();
    }
}

/// A multi-threaded asyncio: N loop threads sharing one work-stealing pool of tasks.
///
/// `run_until_complete` and `run_forever` drive a future on the calling thread, which acts as
/// one more loop while they run (so the future need not be `Send` or `'static`). Tasks it
/// creates go to the shared pool; callbacks and `spawn_local` tasks created on it stay pinned
/// to it and wait, as in asyncio, until the runtime is run again from that thread, or until
/// the thread exits, which closes that loop.
///
/// Dropping a runtime shuts it down with a default timeout of 5 s (see
/// [`shutdown`](Runtime::shutdown)).
///
/// # Examples
///
/// ```
/// use braid_runtime::Runtime;
/// use std::time::Duration;
///
/// let rt = Runtime::builder().workers(2).build()?;
/// let total = rt.run_until_complete(async {
///     let tasks: Vec<_> = (1..=4u64)
///         .map(|i| braid_runtime::create_task(async move { Ok(i * i) }))
///         .collect();
///     let mut sum = 0;
///     for t in tasks {
///         sum += t.await?;
///     }
///     Ok(sum)
/// })?;
/// assert_eq!(total, 30);
/// rt.shutdown(Duration::from_secs(1))?;
/// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
/// ```
pub struct Runtime {
    shared: Arc<RuntimeShared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    shut: AtomicBool,
}

thread_local! {
    /// This thread's host loops, one per runtime it has driven; closed when it exits.
    static HOSTS: HostLoops = const { HostLoops(RefCell::new(Vec::new())) };
}

/// A thread's host loops. Once their thread is gone nothing can run them, so its exit closes
/// each, as `shutdown` closes its caller's: the tasks pinned there finish Cancelled (whoever
/// awaits them is not left waiting), the callbacks and timers left are dropped and counted,
/// and a callback sent to the loop later fails with Closed instead of being queued for nobody.
/// They used to go with the thread-local itself, where a destructor's panic aborts the
/// process.
///
/// A host loop whose runtime was shut down from another thread cannot run again either. The
/// thread closes it the same way the next time it enters a host loop
/// ([`HostLoops::close_shut_down`]), so that a long-lived thread (a pool's worker, say) does
/// not keep each finished runtime, its host loop's poller and the tasks pinned there until it
/// exits.
struct HostLoops(RefCell<Vec<Rc<LoopCtx>>>);

impl HostLoops {
    /// Closes, on this thread, the host loops of runtimes that have been shut down. Called
    /// with no loop running on this thread.
    fn close_shut_down(&self) {
        let shut_down: Vec<Rc<LoopCtx>> = {
            let mut hosts = self.0.borrow_mut();
            if hosts.iter().all(|h| !h.rt.registry.is_closed()) {
                return;
            }
            let (shut_down, live) = hosts.drain(..).partition(|h| h.rt.registry.is_closed());
            *hosts = live;
            shut_down
        };
        // Out of the borrow: closing runs the user's destructors.
        for host in shut_down {
            host.close_left_behind("after its runtime shut down");
        }
    }
}

impl Drop for HostLoops {
    fn drop(&mut self) {
        for host in self.0.get_mut().drain(..) {
            host.close_left_behind("as its thread exits");
        }
    }
}

/// Reports, to each host loop's exception handler, the tasks pinned to it that a shutdown
/// could not finish: their loop's thread is not running it, and they finish when it next
/// enters a host loop or exits (see [`HostLoops`]).
fn report_left_to_their_threads(tasks: &[TaskPtr]) {
    let mut by_loop: Vec<(&Arc<LoopShared>, Vec<String>)> = Vec::new();
    for task in tasks {
        let Some(home) = &task.header().home else {
            continue;
        };
        match by_loop.iter_mut().find(|(lp, _)| Arc::ptr_eq(lp, home)) {
            Some((_, names)) => names.push(task.header().name()),
            None => by_loop.push((home, vec![task.header().name()])),
        }
    }
    for (lp, names) in by_loop {
        lp.report(&crate::ExceptionContext::new(format!(
            "shutdown: {} task(s) pinned to host loop {}, whose thread is not running it, finish \
             when that thread next enters a host loop or exits: {}",
            names.len(),
            lp.id,
            names.join(", ")
        )));
    }
}

/// Marks the task that dressed `run_until_complete`'s future finished with `out`, as a
/// runner finishes a task: a `TaskRef` to it taken inside (`current_task()`) then reads it
/// done, and cancelled or failed as it ended, and its done callbacks are scheduled. Its error
/// is returned to the caller, so it is never reported as unretrieved.
fn finish_main_task<T>(main: &TaskPtr, out: Result<T>) -> Result<T> {
    let header = main.header();
    let cancelled = out.as_ref().is_err_and(Error::is_cancelled);
    header.complete(cancelled, out.is_err() && !cancelled);
    header.after_complete(&|| crate::task::TaskRef::from_raw(main.clone()), None);
    out
}

/// `run_until_complete` ended by a `stop()` before its future completed (asyncio's
/// RuntimeError "Event loop stopped before Future completed."). The future is dropped with the
/// call, so the task dressing it can never complete: it is finished Cancelled, as a task
/// destroyed while pending is, so that a `TaskRef` to it or a done callback does not wait.
fn stopped_before_completion(main: &TaskPtr) -> Error {
    let gone = Error::cancelled(Some(
        "run_until_complete was stopped before its future completed".to_owned(),
    ));
    let _ = finish_main_task::<()>(main, Err(gone));
    Error::new(
        ErrorKind::InvalidState,
        "the event loop stopped before the future completed",
    )
}

/// `run_until_complete` or `run_forever` from a thread-local's destructor, once the thread's
/// host loops (or its loop context) are gone.
fn thread_exiting_error() -> Error {
    Error::new(
        ErrorKind::InvalidState,
        "run_until_complete/run_forever called as the thread exits: its host loops are closed",
    )
}

impl Runtime {
    /// The most loop threads a runtime may have (4096): more than the cores of any machine
    /// braid is meant for, a loop per core being the design. [`Builder::build`] refuses more
    /// with an `InvalidInput` error at once, before it allocates a slot per loop or starts a
    /// thread; the default (a loop per core) is capped at it.
    ///
    /// ```
    /// use braid_runtime::Runtime;
    /// let err = Runtime::builder().workers(Runtime::MAX_WORKERS + 1).build().unwrap_err();
    /// assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    /// ```
    pub const MAX_WORKERS: usize = 4096;

    /// A runtime with one loop per available core (at most [`MAX_WORKERS`](Self::MAX_WORKERS)).
    ///
    /// ```
    /// let rt = braid_runtime::Runtime::new().unwrap();
    /// assert!(!rt.event_loops().is_empty());
    /// ```
    ///
    /// # Errors
    ///
    /// The OS error if a poller or a thread cannot be created.
    pub fn new() -> std::io::Result<Runtime> {
        Builder::new().build()
    }

    /// A [`Builder`] to configure a runtime.
    ///
    /// ```
    /// let rt = braid_runtime::Runtime::builder().workers(1).build().unwrap();
    /// # drop(rt);
    /// ```
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// Drives `fut` to completion on the calling thread (asyncio's `run_until_complete`).
    ///
    /// ```
    /// let rt = braid_runtime::Runtime::builder().workers(1).build().unwrap();
    /// let local = std::rc::Rc::new(5); // not Send: fine, it stays on this thread
    /// let v = rt.run_until_complete(async move { Ok(*local + 1) }).unwrap();
    /// assert_eq!(v, 6);
    /// ```
    ///
    /// The calling thread's *host loop* for this runtime runs `fut`, the tasks it pins there
    /// with `spawn_local` and its callbacks, while this call lasts; what is left runs in the
    /// thread's next call. When the thread exits, its host loops close: their pinned tasks
    /// finish Cancelled, their callbacks are dropped, and a callback sent to them with
    /// [`EventLoop::call_soon_threadsafe`] fails with Closed. (Not the process's main thread:
    /// its thread-locals are not destroyed when the process exits.) A host loop whose runtime
    /// was shut down from another thread closes the same way, sooner: the next time its
    /// thread calls `run_until_complete` or `run_forever`, on any runtime.
    ///
    /// While the call lasts the thread is one of this runtime's loop threads, as a worker's
    /// is: blocking there on a `ConcurrentFuture` this runtime must complete (`result`,
    /// `into_result`, `exception`, `cancel_and_wait`, `bridge::wait`) is an `InvalidState`
    /// error at once, since the loop it would block may be the one to complete it (a
    /// `spawn_local` task it awaits, say). Await the future instead.
    ///
    /// The order is asyncio's, where the future's first step is queued behind what is ready
    /// on the loop and its completion stops the loop from behind what is ready then. What is
    /// ready on the host loop when the call starts (callbacks and `spawn_local` steps left
    /// from an earlier run, callbacks sent with `call_soon_threadsafe`) runs once before the
    /// future's first poll; what is ready when the future completes (the callbacks it
    /// scheduled in its last step, its done callbacks) runs once before the call returns.
    /// What those schedule in turn waits for the thread's next run.
    ///
    /// A [`stop`](EventLoop::stop) made while the call runs (or before it, not yet taken by
    /// a run) ends it after the iteration in progress, as asyncio's does: with an
    /// `InvalidState` error if the future had not completed by then (the future is dropped,
    /// and the task dressing it, as `current_task()` inside saw it, finishes Cancelled), with
    /// its outcome if it had, skipping the last pass over the ready callbacks. Either way the
    /// stop is spent with the call: the next `run_forever` does not return on it.
    ///
    /// # Errors
    ///
    /// Whatever `fut` returns; `InvalidState` at once if called on a loop thread (it would
    /// deadlock), or when a `stop()` ended the call before `fut` completed; Closed after
    /// shutdown; Panicked if `fut` panics.
    pub fn run_until_complete<F, T>(&self, fut: F) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        let driving = self.drive_host()?;
        let host = &driving.host;

        let main_task = new_main_task(
            TaskId(next_task_id()),
            self.shared.clone(),
            host.lp.clone(),
            MainTask {
                woken: MainWake::new_woken(),
                lp: host.lp.clone(),
            },
        );
        let woken = &main_task.waker_state().woken;
        let main = main_task.task();
        let waker = main.waker();
        let mut cx = Context::from_waker(&waker);
        let mut fut = pin!(fut);
        let stop = &self.shared.stop_requested;
        // asyncio queues main's first step behind what is ready on the loop (callbacks and
        // pinned tasks left from an earlier run, callbacks sent here since): those go first.
        host.run_ready_once();
        let mut first = true;
        loop {
            if let Some(woken_at) = woken.take() {
                if let Some(at) = self.shared.instant_of(woken_at).filter(|_| !first) {
                    host.run_timers_due_by(at);
                }
                // Marked as in a step, as a queued task's poll is: a cancel request made
                // meanwhile waits for the next await point (`task::cancel`).
                main.header().state.enter_host_step();
                let step = main.header().cancel.begin_step(first);
                first = false;
                let guard = context::enter_task(main.as_non_null());
                let polled = catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx)));
                drop(guard);
                main.header().state.leave_host_step();
                let out = match polled {
                    // As for tasks: only a return is turned into a cancellation.
                    Ok(Poll::Ready(out)) => Some(main.header().cancel.step_outcome(&step, out)),
                    Ok(Poll::Pending) => None,
                    Err(payload) => Some(Err(Error::from_panic(payload))),
                };
                if let Some(out) = out {
                    let out = finish_main_task(main, out);
                    // In asyncio main's done callback stops the loop from behind the
                    // callbacks ready when main completed (those main scheduled in its last
                    // step, its own done callbacks): they run before the call returns, unless
                    // a stop made meanwhile ended the run first. A stop they make is spent
                    // with the run, as asyncio's `run_forever` clears its flag on return.
                    if !stop.swap(false, Ordering::AcqRel) {
                        host.run_ready_once();
                        stop.store(false, Ordering::Release);
                    }
                    return out;
                }
            }
            // asyncio's `run_forever` checks its stop flag after each iteration.
            if stop.swap(false, Ordering::AcqRel) {
                return Err(stopped_before_completion(main));
            }
            if !host.run_once() && !woken.is_woken() {
                host.park_host(&|| woken.is_woken() || stop.load(Ordering::Acquire), None);
            }
        }
    }

    /// Runs the calling thread's loop until [`EventLoop::stop`] is called on any loop of
    /// this runtime (asyncio's `run_forever`). The worker loops run all the while, as they
    /// always do.
    ///
    /// As in asyncio, the stop is looked at after each iteration of the loop, so the call
    /// always runs one: after a `stop()` made before it, the callbacks scheduled by then run,
    /// once, and then it returns; a callback that calls `stop()` ends the run after the
    /// callbacks of its own iteration. The stop is spent when the call returns. A stop is
    /// the runtime's, not one thread's: with several threads driving the runtime at once,
    /// the first run to look at it takes it.
    ///
    /// ```
    /// let rt = braid_runtime::Runtime::builder().workers(1).build().unwrap();
    /// let lp = rt.event_loop();
    /// rt.event_loop().spawn(async move {
    ///     braid_runtime::sleep(std::time::Duration::from_millis(5)).await?;
    ///     lp.stop();
    ///     Ok(())
    /// }).unwrap();
    /// rt.run_forever().unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// As [`run_until_complete`](Runtime::run_until_complete), without the future's.
    pub fn run_forever(&self) -> Result<()> {
        let driving = self.drive_host()?;
        let host = &driving.host;
        let stop = &self.shared.stop_requested;
        loop {
            let did = host.run_once();
            // Checked after the iteration, as asyncio does: a stop made before the call
            // still lets the callbacks scheduled by then run, once. Taking it clears it.
            if stop.swap(false, Ordering::AcqRel) {
                return Ok(());
            }
            if !did {
                host.park_host(&|| stop.load(Ordering::Acquire), None);
            }
        }
    }

    /// Enters this thread's host loop and marks it running, until the result drops.
    fn drive_host(&self) -> Result<DrivingHost> {
        let host = self.enter_host()?;
        let entered = context::try_enter_loop(host.clone()).ok_or_else(thread_exiting_error)?;
        host.lp.running.store(true, Ordering::Release);
        host.lp.change_state(LoopState::Idle, LoopState::Running);
        let driving = DrivingHost {
            host,
            _entered: entered,
        };
        // Read after `running` is set: a shutdown either sees this loop running, and waits
        // for the tasks pinned to it, or this sees it closed (see `is_closed_synced`).
        if self.shared.registry.is_closed_synced() {
            return Err(closed_error());
        }
        Ok(driving)
    }

    /// This thread's host loop for this runtime, created on first use.
    fn enter_host(&self) -> Result<Rc<LoopCtx>> {
        if let Some(ctx) = context::current_loop() {
            let what = if ctx.rt.id == self.shared.id {
                "a loop thread of this runtime"
            } else {
                "a running event loop"
            };
            return Err(Error::new(
                ErrorKind::InvalidState,
                format!("run_until_complete/run_forever called on {what}: it would deadlock"),
            ));
        }
        // No loop runs on this thread (checked above), so none of its host loops does.
        let _ = HOSTS.try_with(HostLoops::close_shut_down);
        if self.shared.registry.is_closed() {
            return Err(closed_error());
        }
        // Refused before a host is made: one made now could never run, nor be closed.
        if context::loop_context_gone() {
            return Err(thread_exiting_error());
        }
        let entered = HOSTS.try_with(|hosts| {
            let mut hosts = hosts.0.borrow_mut();
            if let Some(ctx) = hosts.iter().find(|c| c.rt.id == self.shared.id) {
                return Ok(ctx.clone());
            }
            let id = self.shared.next_host_id.fetch_add(1, Ordering::Relaxed);
            let lp = Arc::new(LoopShared::new(id, true)?);
            let mut all_hosts = self.shared.hosts.lock();
            if all_hosts.len() == all_hosts.capacity() {
                // Forget the host loops that are gone (their threads exited) before the list
                // grows: a pass only when it is full, so a runtime driven from many
                // short-lived threads keeps a list about as long as the threads alive, not
                // every thread it met.
                all_hosts.retain(|h| h.strong_count() > 0);
            }
            all_hosts.push(Arc::downgrade(&lp));
            drop(all_hosts);
            let ctx = Rc::new(LoopCtx::new(self.shared.clone(), lp, None));
            hosts.push(ctx.clone());
            Ok(ctx)
        });
        // Gone: this runs in a thread-local's destructor as the thread exits.
        entered.unwrap_or_else(|_| Err(thread_exiting_error()))
    }

    /// The first worker loop.
    ///
    /// ```
    /// let rt = braid_runtime::Runtime::builder().workers(2).build().unwrap();
    /// assert_eq!(rt.event_loop().id(), 0);
    /// ```
    pub fn event_loop(&self) -> EventLoop {
        EventLoop {
            rt: self.shared.clone(),
            lp: self.shared.loops[0].clone(),
        }
    }

    /// Every worker loop, in id order.
    ///
    /// ```
    /// let rt = braid_runtime::Runtime::builder().workers(2).build().unwrap();
    /// assert_eq!(rt.event_loops().len(), 2);
    /// ```
    pub fn event_loops(&self) -> Vec<EventLoop> {
        self.shared
            .loops
            .iter()
            .map(|lp| EventLoop {
                rt: self.shared.clone(),
                lp: lp.clone(),
            })
            .collect()
    }

    /// Shuts down: refuses new work, cancels every task left (so its cleanup runs), waits up
    /// to `timeout` for them, stops and joins the loop threads, and finishes whatever is left
    /// so that no waiter hangs.
    ///
    /// A task still running a step when the timeout expires (its loop thread blocked in it)
    /// cannot be finished from outside: its `run_coroutine_threadsafe` future settles
    /// Cancelled, and an await of its `Task` handle gives Cancelled ("the runtime shut
    /// down"), now or later, unless the task completed first. What the step returns after
    /// all is dropped. A done callback or `wait` on such a task still waits for the step.
    /// Its loop is closed to callbacks at once, as every other loop is by then:
    /// [`EventLoop::call_soon_threadsafe`] fails with Closed, and the callbacks it had
    /// accepted and not run yet are dropped and reported to its exception handler as never
    /// run, as its own close reports those that come too late.
    ///
    /// Tasks pinned to another thread's host loop (its `spawn_local` tasks) run only on that
    /// thread, which cannot run the loop again once the runtime shuts down. The shutdown
    /// waits for them only while that thread is running the loop; the others are reported to
    /// the loop's exception handler and finish, Cancelled, when the thread exits (see
    /// [`run_until_complete`](Runtime::run_until_complete); not the process's main thread,
    /// whose thread-locals are not destroyed when the process exits).
    ///
    /// Tasks pinned to the calling thread's own host loop are run by the shutdown itself, so
    /// their cleanup runs, except when it is called (or the runtime dropped) inside another
    /// runtime's loop on this thread: in that runtime's `run_until_complete` or one of its
    /// tasks. Loops do not nest (as in asyncio), so this runtime's host loop cannot run there:
    /// those tasks finish Cancelled at once, their futures dropped on this thread without
    /// running what follows their await (their destructors do run), and nobody waits for
    /// them, neither the shutdown nor whoever awaits them.
    ///
    /// ```
    /// use std::time::Duration;
    /// let rt = braid_runtime::Runtime::builder().workers(2).build().unwrap();
    /// let lp = rt.event_loop();
    /// lp.spawn(async { braid_runtime::sleep(Duration::from_secs(3600)).await }).unwrap();
    /// rt.shutdown(Duration::from_secs(1)).unwrap(); // the sleeper is cancelled
    /// assert!(lp.spawn(async { Ok(()) }).is_err());
    /// ```
    ///
    /// # Errors
    ///
    /// A Timeout error naming the tasks that had not finished by then; InvalidState if called
    /// on one of the runtime's own loop threads (which cannot join itself); Panicked, naming
    /// the thread and its panic, if one of the runtime's threads died (a bug of braid's): that
    /// comes first, with the tasks not finished and the threads still busy after it.
    pub fn shutdown(self, timeout: Duration) -> Result<()> {
        self.shutdown_inner(timeout)
    }

    fn shutdown_inner(&self, timeout: Duration) -> Result<()> {
        if self.shut.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let rt = &self.shared;
        let deadline = Instant::now().checked_add(timeout);
        let on_own_loop =
            context::current_loop().is_some_and(|c| c.rt.id == rt.id && !c.lp.is_host);
        rt.registry.close();
        let cancel_message = || Some("the runtime is shutting down".to_owned());
        for task in rt.registry.snapshot() {
            crate::task::TaskRef::from_raw(task).cancel_with(cancel_message().unwrap_or_default());
        }
        // (None as the thread exits: its host loops close themselves.)
        let host = HOSTS
            .try_with(|h| h.0.borrow().iter().find(|c| c.rt.id == rt.id).cloned())
            .ok()
            .flatten();
        // Our own host loop can be driven only with no loop running on this thread. Inside
        // another runtime's loop (this runtime dropped in its `run_until_complete` or its
        // task) it cannot run: loops do not nest, as in asyncio. Its tasks then cannot finish
        // by themselves; the settle pass below finishes them, Cancelled, at once.
        let drivable_host = host.as_ref().filter(|_| context::current_loop().is_none());
        let pinned_here = |task: &TaskPtr, to: Option<&Rc<LoopCtx>>| {
            let home = task.header().home.as_ref();
            to.is_some_and(|h| home.is_some_and(|home| Arc::ptr_eq(&h.lp, home)))
        };
        // Wait for the cancelled tasks, driving our own host loop (tasks pinned to it only
        // run here). Not for those pinned to another thread's host loop that is not running:
        // only that thread could run their cleanup, and it cannot run the loop again now.
        let may_finish = |task: &TaskPtr| match &task.header().home {
            Some(home) if home.is_host => {
                home.running.load(Ordering::Acquire) || pinned_here(task, drivable_host)
            }
            _ => true,
        };
        while !on_own_loop && rt.registry.snapshot().iter().any(may_finish) {
            let remaining = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_millis(10),
            };
            if remaining.is_zero() {
                break;
            }
            let slice = remaining.min(Duration::from_millis(5));
            let entered = match &host {
                Some(host) if context::current_loop().is_none() => {
                    context::try_enter_loop(host.clone()).map(|guard| (host, guard))
                }
                _ => None,
            };
            match entered {
                Some((host, _entered)) => {
                    if !host.run_once() {
                        host.park_host(&|| false, Some(slice));
                    }
                }
                None => std::thread::park_timeout(slice),
            }
        }
        let (unfinished, mut left_to_their_threads): (Vec<TaskPtr>, Vec<TaskPtr>) =
            rt.registry.snapshot().into_iter().partition(may_finish);
        let unfinished: Vec<String> = unfinished.iter().map(|t| t.header().name()).collect();
        // Those pinned to our own host loop, which we could not drive, are settled below.
        left_to_their_threads.retain(|t| !pinned_here(t, host.as_ref()));
        report_left_to_their_threads(&left_to_their_threads);

        // Stop the loop threads.
        *rt.shutdown_waiter.lock() = Some(std::thread::current());
        rt.stopping.store(true, Ordering::Release);
        for lp in rt.loops.iter() {
            lp.bell.ring();
            // A ring only reaches a sleeping loop; a loop between its last check and its
            // sleep sees `stopping` in its re-check.
        }
        rt.unpark_monitor();
        let workers = rt.loops.len();
        let mut stuck = Vec::new();
        let mut died = Vec::new();
        if !on_own_loop {
            // A loop that is not stuck exits within microseconds of `stopping`; give them that
            // much even when the tasks used up the whole timeout, so idle threads are joined.
            let exit_deadline = deadline.map(|d| d.max(Instant::now() + LOOP_EXIT_GRACE));
            loop {
                if rt.exited.load(Ordering::Acquire) >= workers {
                    break;
                }
                let remaining = exit_deadline.map(|d| d.saturating_duration_since(Instant::now()));
                if remaining.is_some_and(|r| r.is_zero()) {
                    break;
                }
                std::thread::park_timeout(
                    remaining
                        .unwrap_or(Duration::from_millis(50))
                        .min(Duration::from_millis(50)),
                );
            }
            let all_exited = rt.exited.load(Ordering::Acquire) >= workers;
            // The loop threads in the order of their loops, then the monitor (`build`).
            for (index, handle) in self.threads.lock().drain(..).enumerate() {
                let name = handle.thread().name().unwrap_or("?").to_owned();
                let its_loop = rt.loops.get(index); // None: the monitor
                if all_exited || handle.is_finished() || its_loop.is_none() {
                    if let Err(payload) = handle.join() {
                        let panic = Error::from_panic(payload);
                        died.push(format!("{name} ({})", panic.message().unwrap_or("?")));
                        // A dead loop never closed: close it here, so that what is sent to
                        // it fails with Closed instead of waiting for nothing.
                        if let Some(lp) = its_loop {
                            lp.close_inbox_elsewhere();
                            lp.set_state(LoopState::Closed);
                            lp.io.wake_after_close();
                        }
                    }
                } else {
                    stuck.push(name);
                    // Given up on, stuck in a step: its own close comes only when the step
                    // ends, and until then a callback sent to it would be accepted after the
                    // shutdown returned. Closed here, as a dead loop is: sends fail with
                    // Closed, and what it had accepted is reported as never run (it would
                    // run after the shutdown, if ever). Its later close finds the inbox
                    // empty and closes the rest as usual.
                    if let Some(lp) = its_loop {
                        lp.close_inbox_elsewhere();
                    }
                }
            }
        }
        *rt.shutdown_waiter.lock() = None;
        // Settle what is left: every waiter sees Cancelled, none hangs.
        for task in rt.registry.snapshot() {
            let pinned_elsewhere = task
                .header()
                .home
                .as_ref()
                .is_some_and(|home| host.as_ref().is_none_or(|h| !Arc::ptr_eq(&h.lp, home)));
            if !pinned_elsewhere {
                let name = task.header().name();
                let me = crate::task::TaskRef::from_raw(task.clone());
                let shut_down = || Error::cancelled(Some("the runtime shut down".to_owned()));
                let finished = task.clone().force_finish(shut_down());
                if !finished && !on_own_loop {
                    // Running on a loop still stuck after the timeout (or done): a
                    // `ConcurrentFuture` or a joiner of the handle waiting on it settles
                    // now, not whenever the loop comes unstuck. (Called on a loop thread,
                    // the shutdown did not wait: the others' running tasks are about to
                    // finish, and deliver.)
                    task.give_up(shut_down());
                }
                if finished && rt.config.debug {
                    rt.loops[0].report(
                        &crate::ExceptionContext::new(format!(
                            "Task was destroyed but it is pending: {name}"
                        ))
                        .with_task(me),
                    );
                }
            }
        }
        // The runtime's own sleeps were dropped just above: one still in the heap is another
        // runtime's task's, or a foreign thread's.
        rt.abandon_timers_if_nobody_fires();
        // After the tasks are settled: a pool job blocked on one of them is released first.
        if let Some(pool) = rt.started_default_pool() {
            // No deadline: wait as long as the jobs run, as for the tasks. Otherwise at least
            // the loops' grace, so that idle pool threads have the moment they need to leave
            // even when the tasks used up the whole timeout (`shutdown(Duration::ZERO)`).
            let remaining = deadline.map_or(Duration::MAX, |d| {
                d.saturating_duration_since(Instant::now())
                    .max(LOOP_EXIT_GRACE)
            });
            if !pool.shutdown_timeout(true, remaining) {
                stuck.push("the default thread pool (a job still running)".to_owned());
            }
        }
        if let Some(host) = host {
            let _g = (context::current_loop().is_none())
                .then(|| context::try_enter_loop(host.clone()))
                .flatten();
            host.close();
            let _ = HOSTS.try_with(|h| h.0.borrow_mut().retain(|c| c.rt.id != rt.id));
        }
        // Out of the hosts' lock before their callbacks drop: the destructors are the user's.
        let others: Vec<_> = rt.hosts.lock().iter().filter_map(|h| h.upgrade()).collect();
        for other in others {
            other.close_inbox_elsewhere();
        }
        if on_own_loop {
            return Err(Error::new(
                ErrorKind::InvalidState,
                "shutdown called on one of the runtime's own loop threads: it cannot join itself; the loops were told to stop",
            ));
        }
        let mut details = Vec::new();
        if !unfinished.is_empty() {
            details.push(format!("tasks still running: {}", unfinished.join(", ")));
        }
        if !stuck.is_empty() {
            details.push(format!("loop threads still busy: {}", stuck.join(", ")));
        }
        if !died.is_empty() {
            // The runtime's own fault, whatever else went wrong: it leads, and sets the kind.
            details.insert(0, format!("runtime threads died: {}", died.join(", ")));
            return Err(Error::new(ErrorKind::Panicked, details.join("; ")));
        }
        if !details.is_empty() {
            let message = format!("shutdown timed out; {}", details.join("; "));
            return Err(Error::new(ErrorKind::Timeout, message));
        }
        Ok(())
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown_inner(DROP_SHUTDOWN_TIMEOUT) {
            braid_bridge::report_to_stderr(format_args!("braid: dropping the runtime: {e}"));
        }
    }
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("workers", &self.shared.config.workers)
            .field("shut_down", &self.shut.load(Ordering::Relaxed))
            .finish()
    }
}

/// A host loop that `run_until_complete` or `run_forever` drives: this thread's loop, marked
/// running, until it drops.
struct DrivingHost {
    host: Rc<LoopCtx>,
    _entered: context::LoopGuard,
}

impl Drop for DrivingHost {
    fn drop(&mut self) {
        // Before the guard (a field) leaves the loop.
        self.host.lp.running.store(false, Ordering::Release);
        self.host
            .lp
            .change_state(LoopState::Running, LoopState::Idle);
    }
}

/// What the task that dresses the future driven by `run_until_complete` (so that
/// `current_task()`, cancellation and awaiting work inside it exactly as inside any task)
/// does when woken: it records the wake for `run_until_complete` and rings its loop.
struct MainTask {
    woken: MainWake,
    lp: Arc<LoopShared>,
}

/// Whether the main future of `run_until_complete` was woken, and when: 0 if it was not,
/// else 1 + the runtime-clock nanosecond of its first wake since it was last polled. One
/// word, changed by single read-modify-writes, so a wake and its time are never seen apart.
struct MainWake(AtomicU64);

impl MainWake {
    /// Woken (at the runtime clock's start, a time `run_until_complete` ignores for the
    /// first poll): the first poll is due at once.
    fn new_woken() -> MainWake {
        MainWake(AtomicU64::new(1))
    }

    /// Records a wake at `now_ns`, unless an earlier one is still unseen.
    fn wake(&self, now_ns: u64) {
        let _ = self.0.compare_exchange(
            0,
            now_ns.saturating_add(1),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    fn is_woken(&self) -> bool {
        self.0.load(Ordering::Acquire) != 0
    }

    /// The time of the first wake since the last `take`, consuming it.
    fn take(&self) -> Option<u64> {
        match self.0.swap(0, Ordering::AcqRel) {
            0 => None,
            at => Some(at - 1),
        }
    }
}

impl MainWaker for MainTask {
    fn wake(&self, header: &Header) {
        self.woken.wake(header.rt.ns(Instant::now()));
        self.lp.bell.ring();
    }
}

/// Runs `main` on a new runtime with one loop per core, then shuts it down
/// (asyncio's `run`).
///
/// `main` is driven by [`Runtime::run_until_complete`], so the callbacks that are ready when
/// it completes (those it scheduled in its last step, say) run before the shutdown, as
/// `asyncio.run` runs them. What those schedule in turn runs only while the shutdown drives
/// the loop for tasks still finishing their cleanup; otherwise it is dropped and reported to
/// the loop's exception handler as never run. (asyncio.run's teardown happens to give such
/// callbacks a few more iterations, as many as its own teardown steps take.)
///
/// # Examples
///
/// ```
/// let answer = braid_runtime::run(async {
///     braid_runtime::sleep(std::time::Duration::from_millis(1)).await?;
///     Ok(42)
/// }).unwrap();
/// assert_eq!(answer, 42);
/// ```
///
/// # Errors
///
/// Whatever `main` returns, or the error of starting the runtime.
pub fn run<F, T>(main: F) -> Result<T>
where
    F: Future<Output = Result<T>>,
{
    let rt = Runtime::new()?;
    let out = rt.run_until_complete(main);
    let shut = rt.shutdown(DROP_SHUTDOWN_TIMEOUT);
    match (out, shut) {
        (Ok(v), Ok(())) => Ok(v),
        (Ok(_), Err(e)) => Err(e),
        (Err(e), _) => Err(e),
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    //! The main future's wake word: a wake from another thread is never lost, and the host
    //! that sees it sees its time.
    use super::MainWake;
    use braid_bridge::sync::atomic::AtomicU64;
    use std::sync::Arc;

    #[test]
    fn loom_main_wake_is_seen_once_with_its_time() {
        loom::model(|| {
            let wake = Arc::new(MainWake(AtomicU64::new(0)));
            let w = wake.clone();
            let waker = loom::thread::spawn(move || w.wake(7));
            // The host's look at the top of its loop, racing the wake.
            let early = wake.take();
            waker.join().unwrap();
            let late = wake.take();
            let seen: Vec<u64> = [early, late].into_iter().flatten().collect();
            assert_eq!(
                seen,
                [7],
                "the wake was lost, seen twice or seen without its time"
            );
        });
    }

    #[test]
    fn loom_main_wake_keeps_the_first_of_two_wakes() {
        loom::model(|| {
            let wake = Arc::new(MainWake(AtomicU64::new(0)));
            let w = wake.clone();
            let waker = loom::thread::spawn(move || {
                w.wake(5);
                w.wake(9);
            });
            let early = wake.take();
            waker.join().unwrap();
            let late = wake.take();
            // The first look took the 5 (and perhaps the 9 had not come yet), or nothing.
            match (early, late) {
                (None, Some(5)) | (Some(5), None) | (Some(5), Some(9)) => {}
                other => panic!("unexpected wakes {other:?}"),
            }
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// Loop threads named so die as they start (`worker_main`): no path of the runtime's own
    /// is known to kill one, but a shutdown must still tell when one died.
    const DOOMED: &str = "braid-test-doomed";

    pub(super) fn die_if_told() {
        if std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with(DOOMED))
        {
            panic!("a loop thread died");
        }
    }

    /// A loop thread that died is counted out at once, so the shutdown does not wait out
    /// its timeout for it; the shutdown fails with a Panicked error naming the thread.
    #[test]
    fn shutdown_reports_a_loop_thread_that_died_without_waiting_for_it() {
        let rt = Runtime::builder()
            .workers(2)
            .thread_name(DOOMED)
            .build()
            .expect("runtime");
        let started = Instant::now();
        let lp = rt.event_loop();
        let err = rt.shutdown(Duration::from_secs(30)).unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "waited {:?}",
            started.elapsed()
        );
        assert_eq!(err.kind(), ErrorKind::Panicked, "{err}");
        let message = err.message().unwrap_or_default();
        assert!(
            message.contains(&format!("runtime threads died: {DOOMED}-0 (")),
            "{message}"
        );
        assert!(message.contains(&format!("{DOOMED}-1 (")), "{message}");
        assert!(message.contains("(a loop thread died)"), "{message}");
        // Closed by the shutdown: a submission fails instead of waiting for nothing.
        assert_eq!(lp.state(), LoopState::Closed);
        let refused = lp.call_soon_threadsafe(|| {}).unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::Closed);
    }

    /// `build` whose `fail_at`-th thread cannot start (of 3 loops' and, 4th, the monitor's):
    /// the result, how long it took, how many threads it started, and how many of those had
    /// ended by the time it returned.
    fn build_failing_at(fail_at: usize) -> (std::io::Result<Runtime>, Duration, usize, usize) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let ended = Arc::new(AtomicUsize::new(0));
        let mut spawned = 0;
        let begun = Instant::now();
        let result = Runtime::builder()
            .workers(3)
            .thread_name("braid-test-nostart")
            .build_with(|name, body| {
                if spawned + 1 == fail_at {
                    return Err(std::io::Error::other("no thread for you"));
                }
                spawned += 1;
                let ended = ended.clone();
                std::thread::Builder::new().name(name).spawn(move || {
                    body();
                    ended.fetch_add(1, Ordering::SeqCst);
                })
            });
        let took = begun.elapsed();
        (result, took, spawned, ended.load(Ordering::SeqCst))
    }

    /// A thread that cannot start fails `build` at once with its error, after the threads
    /// that did start were stopped and joined. A loop's used to leave the drop of the half
    /// built runtime waiting 5 s for the loops that never started to count out (found by
    /// helper-51).
    #[test]
    fn a_runtime_thread_that_cannot_start_fails_build_at_once_leaving_no_thread() {
        // The first loop's thread, a later one, and the monitor's (after the three loops').
        for fail_at in [1, 2, 4] {
            let (result, took, spawned, ended) = build_failing_at(fail_at);
            let err = result.expect_err("a thread could not start");
            assert!(
                took < Duration::from_secs(2),
                "thread {fail_at} failed: build took {took:?}"
            );
            assert_eq!(err.kind(), std::io::ErrorKind::Other, "{err}");
            assert!(err.to_string().contains("no thread for you"), "{err}");
            assert_eq!(spawned, fail_at - 1);
            assert_eq!(
                ended, spawned,
                "thread {fail_at} failed: a started thread was left"
            );
        }
    }

    /// The runtime's list of host loops (for `stop()` and the monitor) forgets those whose
    /// threads have exited: driven from many short-lived threads one after another, it stays
    /// as short as the threads alive. It used to keep an entry (and the loop's memory) for
    /// every thread it had met.
    #[test]
    fn host_loops_of_exited_threads_are_forgotten() {
        let rt = Arc::new(Runtime::builder().workers(1).build().expect("runtime"));
        for i in 0..50 {
            let rt = rt.clone();
            let got = std::thread::spawn(move || rt.run_until_complete(async move { Ok(i) }))
                .join()
                .expect("the thread ran");
            assert_eq!(got.unwrap(), i);
        }
        let listed = rt.shared.hosts.lock().len();
        assert!(
            listed <= 4,
            "{listed} host loops listed, with no thread alive"
        );
        Arc::try_unwrap(rt)
            .expect("the threads let go")
            .shutdown(Duration::from_secs(10))
            .unwrap();
    }
}
