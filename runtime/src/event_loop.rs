//! Event loops: one per thread. A loop owns a FIFO of ready callbacks, a heap of callback
//! timers, a queue of its `spawn_local` tasks and (on worker threads) a crossbeam-deque
//! `Worker` of shared tasks; it sleeps in a `polling::Poller` woken through its doorbell.
//!
//! `LoopShared` is the part other threads see (doorbell, state, tick counter, exception
//! handler); `LoopCtx` is the thread-local part, reached through `context::current_loop`.

use crate::context;
use crate::linger::{LingerScore, WakeSource};
use crate::local_timers::{LocalTimers, TimerKey};
use crate::scheduler::{RuntimeShared, TaskPtr};
use crate::task::raw::{new_threadsafe_callback, CallbackState, QueuedCallback, TaskCell};
use crate::task::{Task, TaskId, TaskRef};
use braid_bridge::doorbell::{Doorbell, Unpark};
use braid_bridge::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicU8, Ordering};
use braid_bridge::sync::Mutex;
use braid_bridge::tuning::linger_until;
use braid_bridge::{Error, ErrorKind, Result};
use crossbeam_deque::{Steal, Worker};
use crossbeam_utils::CachePadded;
use polling::Poller;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long after a shared timer's deadline a host loop fires it itself, if no worker has.
const HOST_TIMER_GRACE: Duration = Duration::from_millis(2);
/// `LoopShared::sleep_deadline` while the loop is awake.
pub(crate) const AWAKE: u64 = 0;
/// `LoopShared::sleep_deadline` while the loop sleeps with no deadline (or is about to sleep).
pub(crate) const ASLEEP_FOREVER: u64 = u64::MAX;
/// Tasks polled per loop iteration before callbacks, timers and the inbox get a turn.
const TASK_BUDGET: usize = 64;
/// Every this many iterations a running loop polls its sockets without blocking.
const IO_POLL_INTERVAL: u64 = 4;
/// Every this many iterations a loop takes from the injector before its own queue, so that
/// a loop busy with its own tasks cannot starve the shared ones.
const INJECTOR_FAIRNESS: u64 = 31;

/// What other threads send a loop through its doorbell.
pub(crate) enum Remote {
    /// `call_soon_threadsafe`, and done callbacks routed to this loop.
    Callback(RemoteCallback),
    /// A wake of a `spawn_local` task from another thread.
    Wake(TaskPtr),
    /// A `call_later`/`call_at` timer of this loop cancelled on another thread: the loop
    /// drops its callback (which is `!Send`, so no other thread may).
    CancelTimer(TimerKey),
}

/// Wakes a loop sleeping in its poller.
pub(crate) struct PollerUnpark(pub(crate) Poller);

impl Unpark for PollerUnpark {
    fn unpark(&self) {
        // A failed notify means the poller is gone; the loop is exiting anyway.
        let _ = self.0.notify();
    }
}

/// The state of a loop, as [`EventLoop::state`] reports it.
///
/// # Examples
///
/// ```
/// use braid_runtime::{LoopState, Runtime};
/// let rt = Runtime::builder().workers(1).build().unwrap();
/// assert_ne!(rt.event_loop().state(), LoopState::Closed);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum LoopState {
    /// Executing callbacks or tasks.
    Running,
    /// Asleep in its poller, waiting for work.
    Idle,
    /// Shutting down.
    Closing,
    /// Finished: every submission fails with a Closed error.
    Closed,
}

impl LoopState {
    fn from_u8(v: u8) -> LoopState {
        match v {
            0 => LoopState::Running,
            1 => LoopState::Idle,
            2 => LoopState::Closing,
            _ => LoopState::Closed,
        }
    }

    fn code(self) -> u8 {
        match self {
            LoopState::Running => 0,
            LoopState::Idle => 1,
            LoopState::Closing => 2,
            LoopState::Closed => 3,
        }
    }
}

/// A loop's [`LoopState`], read by any thread, written by the loop's own thread (and, for a
/// worker loop that died, by the shutdown). A host loop's running/idle flips only ever
/// *change* it from the state they expect, so that the end of a drive does not undo a close
/// made during it (a shutdown called from inside `run_until_complete` closes the host loop);
/// see the model `loom_a_host_flip_never_undoes_a_close`.
struct StateWord(AtomicU8);

impl StateWord {
    fn new(state: LoopState) -> StateWord {
        StateWord(AtomicU8::new(state.code()))
    }

    fn get(&self) -> LoopState {
        LoopState::from_u8(self.0.load(Ordering::Acquire))
    }

    fn set(&self, state: LoopState) {
        self.0.store(state.code(), Ordering::Release);
    }

    /// Moves the state from `from` to `to` if it still is `from`; true if it did.
    fn change(&self, from: LoopState, to: LoopState) -> bool {
        self.0
            .compare_exchange(from.code(), to.code(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

type Handler = dyn Fn(&ExceptionContext) + Send + Sync;

/// What other threads see of a loop.
pub(crate) struct LoopShared {
    pub(crate) id: usize,
    pub(crate) is_host: bool,
    pub(crate) bell: Doorbell<Remote, PollerUnpark>,
    state: StateWord,
    /// Bumped every iteration; the monitor reads it to spot a stuck loop.
    pub(crate) tick: CachePadded<AtomicU64>,
    /// `AWAKE`, `ASLEEP_FOREVER`, or the runtime-ns deadline the loop sleeps until.
    pub(crate) sleep_deadline: AtomicU64,
    /// Host loops: a `run_until_complete`/`run_forever` is driving this loop now.
    pub(crate) running: AtomicBool,
    /// The sockets registered with this loop's poller.
    pub(crate) io: crate::io::driver::IoDriver,
    /// Set by the monitor when this loop is stuck with tasks queued; cleared by the loop at
    /// its next iteration. Siblings leave a loop the one task it will run next, unless this
    /// is set (see `scheduler::RuntimeShared::can_steal_from`).
    pub(crate) stuck: AtomicBool,
    handler: Mutex<Option<Arc<Handler>>>,
}

impl LoopShared {
    pub(crate) fn new(id: usize, is_host: bool) -> std::io::Result<LoopShared> {
        Ok(LoopShared {
            id,
            is_host,
            bell: Doorbell::new(PollerUnpark(Poller::new()?)),
            // A host loop is idle until a thread drives it; a worker loop runs from the start.
            state: StateWord::new(if is_host {
                LoopState::Idle
            } else {
                LoopState::Running
            }),
            tick: CachePadded::new(AtomicU64::new(0)),
            sleep_deadline: AtomicU64::new(AWAKE),
            running: AtomicBool::new(false),
            io: crate::io::driver::IoDriver::new(),
            stuck: AtomicBool::new(false),
            handler: Mutex::new(None),
        })
    }

    pub(crate) fn poller(&self) -> &Poller {
        &self.bell.unparker().0
    }

    pub(crate) fn state(&self) -> LoopState {
        self.state.get()
    }

    pub(crate) fn set_state(&self, state: LoopState) {
        self.state.set(state);
    }

    /// Moves the state from `from` to `to` if it still is `from` (a host loop's
    /// running/idle flips must not undo a close made meanwhile); true if it did.
    pub(crate) fn change_state(&self, from: LoopState, to: LoopState) -> bool {
        self.state.change(from, to)
    }

    /// Drops a callback that will never run (it was cancelled, or its loop is closing). Its
    /// closure holds the user's values: a destructor of theirs that panics is reported, as a
    /// panic in a callback is, instead of unwinding through the loop thread (or, for a host
    /// loop that the shutdown closes from another thread, through `shutdown`).
    fn discard(&self, cb: ReadyCallback) {
        let name = cb.name;
        if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(cb))) {
            self.report(
                &ExceptionContext::new(format!(
                    "Exception ignored in a destructor of callback {name}"
                ))
                .with_error(Error::from_panic(payload))
                .with_callback(name),
            );
        }
    }

    /// Reports the callbacks (not cancelled) that this loop's close dropped unrun.
    fn report_never_ran(&self, never_ran: usize) {
        if never_ran > 0 {
            self.report(&ExceptionContext::new(format!(
                "loop {} closed with {never_ran} callback(s) that never ran",
                self.id
            )));
        }
    }

    /// Closes the inbox of a loop from the thread that shuts the runtime down: another
    /// thread's host loop, or a worker loop whose thread died. The callbacks sent to it are
    /// dropped and reported as its own `close` would. What a host loop's thread still holds
    /// (its ready queue, timers and pinned tasks) goes only with that thread's context, since
    /// a runtime that is shut down refuses to run there again.
    pub(crate) fn close_inbox_elsewhere(&self) {
        let mut never_ran = 0;
        for message in self.bell.close() {
            match message {
                Remote::Callback(cb) => {
                    let cb = ReadyCallback::from(cb);
                    never_ran += usize::from(!cb.is_cancelled());
                    self.discard(cb);
                }
                other => drop(other),
            }
        }
        self.report_never_ran(never_ran);
    }

    /// Calls the loop's exception handler, or the default one (a line on stderr).
    pub(crate) fn report(&self, ctx: &ExceptionContext) {
        let handler = self.handler.lock().clone();
        match handler {
            Some(h) => {
                // A panicking handler must not take the loop down either.
                if catch_unwind(AssertUnwindSafe(|| h(ctx))).is_err() {
                    braid_bridge::report_to_stderr(format_args!(
                        "braid: the exception handler panicked while handling: {ctx}"
                    ));
                }
            }
            None => braid_bridge::report_to_stderr(format_args!("braid: {ctx}")),
        }
    }
}

/// The state behind a [`CallbackHandle`] or [`TimerHandle`].
#[derive(Debug)]
pub(crate) struct HandleState {
    cancelled: AtomicBool,
    when: Option<Instant>,
}

impl HandleState {
    /// Not cancelled; `when` for a timer's.
    pub(crate) fn new(when: Option<Instant>) -> HandleState {
        HandleState {
            cancelled: AtomicBool::new(false),
            when,
        }
    }

    /// True once the handle was cancelled.
    pub(crate) fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Cancels the handle: a callback not yet run never will be.
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    /// As [`cancel`](Self::cancel); true if this call is the one that cancelled it.
    fn cancel_first(&self) -> bool {
        !self.cancelled.swap(true, Ordering::AcqRel)
    }
}

/// What a queued callback runs: a boxed closure (`B`), or a `call_soon_threadsafe` cell.
pub(crate) enum CallbackFn<B> {
    Boxed(B),
    /// The closure and its handle's state in one allocation (a callback from another thread
    /// used to cost two, and the allocator was a third of that path's time: see
    /// `benchmarks/NOTES.md`).
    Threadsafe(QueuedCallback),
}

/// A callback waiting in a loop's ready queue.
pub(crate) struct ReadyCallback {
    f: CallbackFn<Box<dyn FnOnce()>>,
    handle: Option<Arc<HandleState>>,
    name: &'static str,
}

/// A callback on its way from another thread: the same, with a `Send` closure.
pub(crate) struct RemoteCallback {
    f: CallbackFn<Box<dyn FnOnce() + Send>>,
    handle: Option<Arc<HandleState>>,
    name: &'static str,
}

/// Whether a queued callback's handle was cancelled.
fn cancelled<B>(f: &CallbackFn<B>, handle: Option<&Arc<HandleState>>) -> bool {
    let state = match f {
        CallbackFn::Threadsafe(cell) => Some(cell.state()),
        CallbackFn::Boxed(_) => handle.map(|h| &**h),
    };
    state.is_some_and(HandleState::cancelled)
}

impl RemoteCallback {
    /// Runs it here and now (its loop has closed).
    fn run_here(self) {
        match self.f {
            CallbackFn::Boxed(f) => f(),
            CallbackFn::Threadsafe(cell) => cell.run(),
        }
    }
}

impl From<RemoteCallback> for ReadyCallback {
    fn from(cb: RemoteCallback) -> ReadyCallback {
        let f: CallbackFn<Box<dyn FnOnce()>> = match cb.f {
            CallbackFn::Boxed(f) => CallbackFn::Boxed(f),
            CallbackFn::Threadsafe(cell) => CallbackFn::Threadsafe(cell),
        };
        ReadyCallback {
            f,
            handle: cb.handle,
            name: cb.name,
        }
    }
}

impl ReadyCallback {
    fn is_cancelled(&self) -> bool {
        cancelled(&self.f, self.handle.as_ref())
    }
}

/// A handle to a callback scheduled with `call_soon` or `call_soon_threadsafe`
/// (asyncio's `Handle`).
///
/// # Examples
///
/// ```
/// braid_runtime::run(async {
///     let handle = braid_runtime::call_soon(|| unreachable!("cancelled before it ran"));
///     handle.cancel();
///     assert!(handle.cancelled());
///     braid_runtime::yield_now().await?;
///     Ok(())
/// }).unwrap();
/// ```
#[derive(Clone)]
pub struct CallbackHandle {
    state: HandleStateRef,
}

/// Where a [`CallbackHandle`]'s state lives: its own allocation (`call_soon`), or the cell of
/// a `call_soon_threadsafe` callback.
#[derive(Clone)]
enum HandleStateRef {
    Own(Arc<HandleState>),
    Threadsafe(CallbackState),
}

impl HandleStateRef {
    fn get(&self) -> &HandleState {
        match self {
            HandleStateRef::Own(state) => state,
            HandleStateRef::Threadsafe(state) => state.get(),
        }
    }
}

impl fmt::Debug for CallbackHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallbackHandle")
            .field("cancelled", &self.cancelled())
            .finish()
    }
}

impl CallbackHandle {
    /// Cancels the callback if it has not run yet; it will then never run.
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     braid_runtime::call_soon(|| panic!("never")).cancel();
    ///     braid_runtime::yield_now().await
    /// }).unwrap();
    /// ```
    pub fn cancel(&self) {
        self.state.get().cancel();
    }

    /// True once [`cancel`](CallbackHandle::cancel) was called.
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let h = braid_runtime::call_soon(|| ());
    ///     assert!(!h.cancelled());
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn cancelled(&self) -> bool {
        self.state.get().cancelled()
    }
}

/// A handle to a callback scheduled with `call_later` or `call_at` (asyncio's `TimerHandle`).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// braid_runtime::run(async {
///     let t = braid_runtime::call_later(Duration::from_secs(60), || unreachable!());
///     assert!(t.when() > braid_runtime::time());
///     t.cancel();
///     Ok(())
/// }).unwrap();
/// ```
#[derive(Clone)]
pub struct TimerHandle {
    state: Arc<HandleState>,
    key: TimerKey,
    /// The timer's loop, which a cancel on another thread asks to drop the callback.
    home: Arc<LoopShared>,
}

impl fmt::Debug for TimerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerHandle")
            .field("when", &self.state.when)
            .field("cancelled", &self.cancelled())
            .field("loop", &self.home.id)
            .finish()
    }
}

impl TimerHandle {
    /// Cancels the timer if it has not fired yet. What the callback captured is dropped
    /// right away on the timer's own loop, as asyncio drops it, or soon after by that loop
    /// when the cancel comes from another thread (the callback is not `Send`); either way,
    /// not at the deadline.
    ///
    /// ```
    /// use std::time::Duration;
    /// braid_runtime::run(async {
    ///     braid_runtime::call_later(Duration::from_millis(1), || panic!("never")).cancel();
    ///     braid_runtime::sleep(Duration::from_millis(5)).await
    /// }).unwrap();
    /// ```
    pub fn cancel(&self) {
        if !self.state.cancel_first() {
            return;
        }
        // The flag alone already keeps the callback from running; taking it out of the
        // timers is for what it holds. A timer that fired already is not there: its key
        // then names nothing, or a later timer's slot under another sequence number.
        match context::current_loop() {
            Some(ctx) if Arc::ptr_eq(&ctx.lp, &self.home) => ctx.drop_cancelled_timer(self.key),
            // A closed loop dropped its timers already, so a refused message loses nothing.
            _ => drop(self.home.bell.push(Remote::CancelTimer(self.key))),
        }
    }

    /// True once [`cancel`](TimerHandle::cancel) was called.
    ///
    /// ```
    /// use std::time::Duration;
    /// braid_runtime::run(async {
    ///     let t = braid_runtime::call_later(Duration::from_secs(1), || ());
    ///     t.cancel();
    ///     assert!(t.cancelled());
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn cancelled(&self) -> bool {
        self.state.cancelled.load(Ordering::Acquire)
    }

    /// When the callback is due, on the loop's clock.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// braid_runtime::run(async {
    ///     let at = Instant::now() + Duration::from_secs(5);
    ///     let t = braid_runtime::call_at(at, || ());
    ///     assert_eq!(t.when(), at);
    ///     t.cancel();
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn when(&self) -> Instant {
        self.state.when.expect("a timer handle has a deadline")
    }
}

/// The thread-local half of a loop.
pub(crate) struct LoopCtx {
    pub(crate) rt: Arc<RuntimeShared>,
    pub(crate) lp: Arc<LoopShared>,
    /// This loop's share of the runtime's tasks; `None` on host loops, which run only what
    /// is pinned to them.
    pub(crate) worker: Option<Worker<TaskPtr>>,
    ready: RefCell<VecDeque<ReadyCallback>>,
    /// `call_later`/`call_at` timers.
    timers: RefCell<LocalTimers<ReadyCallback>>,
    pub(crate) local_ready: RefCell<VecDeque<TaskPtr>>,
    inbox_buf: RefCell<VecDeque<Remote>>,
    tick: Cell<u64>,
    searching: Cell<bool>,
    rng: Cell<u64>,
    events: RefCell<crate::io::driver::Edges>,
    /// Registry slots of tasks this worker loop finished that belong to other shards,
    /// handed over once per iteration (see `registry`).
    pub(crate) registry_outbox: RefCell<crate::registry::Outbox>,
    /// What woke this loop lately: whether it lingers before it sleeps (see `linger`).
    linger: LingerScore,
}

impl LoopCtx {
    pub(crate) fn new(
        rt: Arc<RuntimeShared>,
        lp: Arc<LoopShared>,
        worker: Option<Worker<TaskPtr>>,
    ) -> LoopCtx {
        let seed = 0x9E37_79B9_7F4A_7C15u64 ^ ((lp.id as u64 + 1) << 17);
        LoopCtx {
            rt,
            lp,
            worker,
            ready: RefCell::new(VecDeque::new()),
            timers: RefCell::new(LocalTimers::new()),
            local_ready: RefCell::new(VecDeque::new()),
            inbox_buf: RefCell::new(VecDeque::new()),
            tick: Cell::new(0),
            searching: Cell::new(false),
            rng: Cell::new(seed),
            events: RefCell::new(Vec::new()),
            registry_outbox: RefCell::new(crate::registry::Outbox::new()),
            linger: LingerScore::new(),
        }
    }

    /// Hands this loop's registry outbox over (see `registry`).
    fn flush_registry_outbox(&self) {
        if let Ok(mut outbox) = self.registry_outbox.try_borrow_mut() {
            self.rt.registry.flush(&mut outbox);
        }
    }

    /// `call_soon`: appends to this loop's ready queue. Callbacks already sent with
    /// `call_soon_threadsafe` are moved in first, so FIFO order follows happens-before.
    pub(crate) fn call_soon(&self, f: Box<dyn FnOnce()>, name: &'static str) -> CallbackHandle {
        self.drain_inbox();
        let state = Arc::new(HandleState::new(None));
        self.ready.borrow_mut().push_back(ReadyCallback {
            f: CallbackFn::Boxed(f),
            handle: Some(state.clone()),
            name,
        });
        CallbackHandle {
            state: HandleStateRef::Own(state),
        }
    }

    /// Schedules an internal callback (a done callback); on a loop that is closing, whose
    /// ready queue will never run again, runs it right away instead of losing it.
    fn call_soon_or_run(&self, f: Box<dyn FnOnce() + Send>) {
        let cb = ReadyCallback {
            f: CallbackFn::Boxed(f),
            handle: None,
            name: "done callback",
        };
        if matches!(self.lp.state(), LoopState::Closing | LoopState::Closed) {
            // As any callback runs: a panic goes to the exception handler, not up the loop.
            self.invoke(cb);
            return;
        }
        self.drain_inbox();
        self.ready.borrow_mut().push_back(cb);
    }

    pub(crate) fn call_at(
        &self,
        when: Instant,
        f: Box<dyn FnOnce()>,
        name: &'static str,
    ) -> TimerHandle {
        let state = Arc::new(HandleState::new(Some(when)));
        let callback = ReadyCallback {
            f: CallbackFn::Boxed(f),
            handle: Some(state.clone()),
            name,
        };
        let key = self.timers.borrow_mut().insert(when, callback);
        TimerHandle {
            state,
            key,
            home: self.lp.clone(),
        }
    }

    /// Drops the callback of a cancelled timer of this loop, if it has not fired yet.
    fn drop_cancelled_timer(&self, key: TimerKey) {
        let Ok(mut timers) = self.timers.try_borrow_mut() else {
            // Cancelled from a destructor running inside a borrow of the timers (none does
            // today): leave it to the next iteration, as from another thread.
            let _ = self.lp.bell.push(Remote::CancelTimer(key));
            return;
        };
        let callback = timers.remove(key);
        // Out of the borrow: the destructors are the user's, and may schedule timers.
        drop(timers);
        if let Some(callback) = callback {
            self.lp.discard(callback);
        }
    }

    /// Moves what other threads sent into the local queues. Returns true if anything moved.
    fn drain_inbox(&self) -> bool {
        if !self.lp.bell.has_messages() {
            return false;
        }
        let mut cancelled_timers = Vec::new();
        let moved = {
            let mut buf = self.inbox_buf.borrow_mut();
            self.lp.bell.drain_into(&mut buf);
            let moved = !buf.is_empty();
            for message in buf.drain(..) {
                match message {
                    Remote::Callback(cb) => self.ready.borrow_mut().push_back(cb.into()),
                    Remote::Wake(task) => self.local_ready.borrow_mut().push_back(task),
                    Remote::CancelTimer(key) => cancelled_timers.push(key),
                }
            }
            moved
        };
        // After the buffer's borrow, and after every callback sent is queued: the callbacks'
        // destructors are the user's, and may schedule more (which re-enters here, and must
        // queue behind what was sent before).
        for key in cancelled_timers {
            self.drop_cancelled_timer(key);
        }
        moved
    }

    /// Moves due callback timers to the ready queue and fires due task timers.
    fn fire_timers(&self) -> bool {
        self.timers.borrow_mut().purge_if_stale();
        let has_local = !self.timers.borrow().is_empty();
        // Host loops fire shared timers too: with every worker stuck, the main future's sleep
        // must still end.
        let shared = self.rt.timers.earliest();
        if !has_local && shared.is_none() {
            return false;
        }
        let now = Instant::now();
        let mut fired = has_local && self.queue_local_timers_due_by(now);
        if let Some(earliest) = shared {
            let now_ns = self.rt.ns(now);
            if earliest <= now_ns {
                fired |= self.rt.timers.fire(now_ns) > 0;
            }
        }
        fired
    }

    /// Host loops, before the main future of `run_until_complete` resumes: runs this loop's
    /// timers due by `woken_at`, the moment main was woken, with the callbacks queued ahead of
    /// them. In asyncio main's wake-up is one of the loop's own entries, taken in deadline
    /// order; here it comes from another thread, so a host kept busy past both (a long
    /// callback) would otherwise resume main ahead of a timer that fell due before it.
    pub(crate) fn run_timers_due_by(&self, woken_at: Instant) {
        if self.queue_local_timers_due_by(woken_at) {
            self.run_ready();
        }
    }

    /// Moves this loop's timers due by `until` into the ready queue, dropping cancelled ones.
    /// Returns true if any was queued.
    fn queue_local_timers_due_by(&self, until: Instant) -> bool {
        let mut queued = false;
        while let Some(callback) = self.pop_timer_if(|when, _| when <= until) {
            if callback.is_cancelled() {
                self.lp.discard(callback);
            } else {
                self.ready.borrow_mut().push_back(callback);
                queued = true;
            }
        }
        queued
    }

    /// Pops the earliest timer if `pred` holds for it. The heap's borrow ends on return: what
    /// the caller does with the timer (drop it, with the user's destructors) may schedule more.
    fn pop_timer_if(
        &self,
        pred: impl FnOnce(Instant, &ReadyCallback) -> bool,
    ) -> Option<ReadyCallback> {
        self.timers.borrow_mut().pop_if(pred)
    }

    /// Runs the callbacks that are ready now (not those they schedule: asyncio's rule).
    fn run_ready(&self) -> bool {
        let n = self.ready.borrow().len();
        for _ in 0..n {
            let next = self.ready.borrow_mut().pop_front();
            let Some(cb) = next else { break };
            if cb.is_cancelled() {
                self.lp.discard(cb);
                continue;
            }
            self.invoke(cb);
        }
        n > 0
    }

    /// Runs the callbacks already queued here or in the inbox, once; not those they queue.
    pub(crate) fn run_accepted_callbacks(&self) {
        self.drain_inbox();
        self.run_ready();
    }

    /// Host loops: runs once what is ready here now, the callbacks queued or sent, then the
    /// pinned tasks woken, and not what they schedule. asyncio's `run_until_complete` queues
    /// the main future's first step behind what is ready (`ensure_future`), and its done
    /// callback, which stops the loop, behind what is ready when it completes: this is the
    /// iteration that runs those, each once, in FIFO order within callbacks and within tasks.
    pub(crate) fn run_ready_once(&self) {
        self.drain_inbox();
        // Counted before the callbacks run: a task they wake waits, as its step would be
        // queued behind the done callback in asyncio.
        let tasks = self.local_ready.borrow().len();
        self.run_ready();
        for _ in 0..tasks {
            let next = self.local_ready.borrow_mut().pop_front();
            let Some(task) = next else { break };
            self.run_task(task);
        }
    }

    fn invoke(&self, cb: ReadyCallback) {
        let started = self.rt.config.debug.then(Instant::now);
        let name = cb.name;
        let run = || match cb.f {
            CallbackFn::Boxed(f) => f(),
            CallbackFn::Threadsafe(cell) => cell.run(),
        };
        if let Err(payload) = catch_unwind(AssertUnwindSafe(run)) {
            let error = Error::from_panic(payload);
            self.lp.report(
                &ExceptionContext::new(format!("Exception in callback {name}"))
                    .with_error(error)
                    .with_callback(name),
            );
        }
        if let Some(started) = started {
            let took = started.elapsed();
            if took >= self.rt.config.slow_callback_duration {
                self.lp.report(
                    &ExceptionContext::new(format!(
                        "Executing callback {name} took {:.3} seconds",
                        took.as_secs_f64()
                    ))
                    .with_callback(name),
                );
            }
        }
    }

    fn next_task(&self, tick: u64) -> Option<TaskPtr> {
        if let Some(task) = self.local_ready.borrow_mut().pop_front() {
            return Some(task);
        }
        let worker = self.worker.as_ref()?;
        if tick % INJECTOR_FAIRNESS == 0 {
            if let Some(task) = self.steal_injector(worker) {
                return Some(task);
            }
        }
        worker
            .pop()
            .or_else(|| self.steal_injector(worker))
            .or_else(|| self.steal_siblings(worker))
    }

    fn steal_injector(&self, worker: &Worker<TaskPtr>) -> Option<TaskPtr> {
        loop {
            match self.rt.injector.steal_batch_and_pop(worker) {
                Steal::Success(task) => return Some(task),
                Steal::Empty => return None,
                Steal::Retry => continue,
            }
        }
    }

    fn steal_siblings(&self, worker: &Worker<TaskPtr>) -> Option<TaskPtr> {
        let n = self.rt.stealers.len();
        if n <= 1 {
            return None;
        }
        // xorshift: a cheap random start so siblings do not all raid the same victim.
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        let start = (x as usize) % n;
        for i in 0..n {
            let victim = (start + i) % n;
            if victim == self.lp.id || !self.rt.can_steal_from(victim) {
                continue;
            }
            loop {
                match self.rt.stealers[victim].steal_batch_and_pop(worker) {
                    Steal::Success(task) => return Some(task),
                    Steal::Empty => break,
                    Steal::Retry => continue,
                }
            }
        }
        None
    }

    fn run_tasks(&self, tick: u64) -> bool {
        let mut ran = 0;
        while ran < TASK_BUDGET {
            let Some(task) = self.next_task(tick) else {
                break;
            };
            if self.searching.replace(false) {
                let more = !self.rt.injector.is_empty()
                    || self.worker.as_ref().is_some_and(|w| !w.is_empty());
                self.rt.end_searching(true, more);
            }
            self.run_task(task);
            ran += 1;
            if !self.ready.borrow().is_empty() || self.lp.bell.has_messages() {
                break; // callbacks are waiting: give them their turn
            }
        }
        ran > 0
    }

    /// One step of `task`, timed in debug mode.
    #[inline]
    fn run_task(&self, task: TaskPtr) {
        if self.rt.config.debug {
            self.run_task_timed(task);
        } else {
            task.run();
        }
    }

    #[cold]
    fn run_task_timed(&self, task: TaskPtr) {
        let name = task.header().name();
        let id = task.header().id;
        let started = Instant::now();
        task.run();
        let took = started.elapsed();
        if took >= self.rt.config.slow_callback_duration {
            self.lp.report(&ExceptionContext::new(format!(
                "Executing task {name} (id {id}) took {:.3} seconds",
                took.as_secs_f64()
            )));
        }
    }

    /// One iteration: inbox, timers, ready callbacks, a budget of tasks. Returns true if it
    /// did anything.
    pub(crate) fn run_once(&self) -> bool {
        let tick = self.tick.get().wrapping_add(1);
        self.tick.set(tick);
        self.lp.tick.store(tick, Ordering::Relaxed);
        if self.lp.stuck.load(Ordering::Relaxed) {
            self.lp.stuck.store(false, Ordering::Relaxed);
        }
        if self.worker.is_some() {
            self.flush_registry_outbox();
            self.rt.registry.sweep_if_needed(self.lp.id);
        }
        let mut did = self.drain_inbox();
        // A busy loop still looks at its sockets every few iterations (tokio polls its driver
        // every 61 tasks; an iteration here runs up to TASK_BUDGET).
        if tick % IO_POLL_INTERVAL == 0 {
            did |= self.poll_io_now() > 0;
        }
        did |= self.fire_timers();
        did |= self.run_ready();
        did |= self.run_tasks(tick);
        did
    }

    /// Work that only this loop can see.
    pub(crate) fn has_local_work(&self) -> bool {
        !self.ready.borrow().is_empty()
            || !self.local_ready.borrow().is_empty()
            || self.lp.bell.has_messages()
            || self.worker.as_ref().is_some_and(|w| !w.is_empty())
    }

    /// Drops the cancelled timers at the top of the heap, so that they do not wake us for
    /// nothing. A cancel on this loop takes its timer out at once; what is left here is a
    /// cancel from another thread whose message is still on its way (it wakes us too), so
    /// this is a backstop. Called before a park announces its sleep: the destructors are the
    /// user's and may schedule callbacks, which the park's re-check then sees. Dropped after
    /// the announcement, the callback waited for the next wake, perhaps forever.
    fn drop_cancelled_first_timers(&self) {
        while let Some(cancelled) = self.pop_timer_if(|_, cb| cb.is_cancelled()) {
            self.lp.discard(cancelled);
        }
    }

    /// When this loop's earliest timer falls due. One cancelled from another thread since
    /// [`drop_cancelled_first_timers`](Self::drop_cancelled_first_timers), its message not
    /// yet drained, wakes us early, once: the wake drops it.
    fn next_local_deadline(&self) -> Option<Instant> {
        self.timers.borrow_mut().next_deadline()
    }

    /// When the runtime's earliest shared timer falls due.
    fn next_shared_deadline(&self) -> Option<Instant> {
        self.rt
            .timers
            .earliest()
            .and_then(|ns| self.rt.instant_of(ns))
    }

    /// When the earliest timer this loop could fire falls due: its own, or the runtime's
    /// shared ones.
    fn next_timer_deadline(&self) -> Option<Instant> {
        earlier(self.next_local_deadline(), self.next_shared_deadline())
    }

    /// Worker loops: sleep until there is work (see `scheduler` for the protocol).
    pub(crate) fn park_worker(&self) {
        let rt = &self.rt;
        let lp = &self.lp;
        // Linger first (see `braid_bridge::tuning::linger`): waking a halted vCPU costs tens
        // of microseconds, so looking a little longer is cheaper when work is about to arrive
        // (a request/response ping-pong with another thread). It watches work handed to this
        // loop or to the runtime, not a sibling's queue: a loop that lingers for a reply must
        // not raid a busy sibling (see `benchmarks/NOTES.md`, queue_mpsc); that work reaches
        // us through `notify_work`, or through the re-check below if we go to sleep. Only
        // while lingering pays: a loop whose work comes from its sockets sleeps at once (see
        // `linger`).
        if self.linger.lingers() {
            let mut io = false;
            // Never past the next timer: a lingering loop fires none, and while every loop
            // lingers nobody does.
            if linger_until(self.next_timer_deadline(), || {
                std::thread::yield_now();
                // A sibling's bare ring ends the linger too (it asks us to steal), but
                // `count_wake` counts it as neither kind.
                if self.has_local_work() || !rt.injector.is_empty() {
                    return true;
                }
                io = self.poll_io_now() > 0;
                io
            }) {
                self.count_wake(io);
                return;
            }
        }
        // Going idle: hand over what we finished of other shards' tasks, and free what the
        // loops finished of the tasks spawned off them (see `registry`), or it would wait
        // for the spawner's next insert.
        self.flush_registry_outbox();
        rt.registry.sweep_if_needed(rt.registry.shared_shard());
        if self.searching.replace(false) {
            rt.end_searching(false, false);
        }
        // After giving up searching: a slow destructor must not stop siblings being woken.
        self.drop_cancelled_first_timers();
        // Before announcing sleep: from here on nobody else waits on our poller, so nobody
        // else can consume the doorbell's notification (see `io::driver`).
        let _drive = lp.io.lock_drive();
        if !lp.bell.prepare_sleep() {
            // Work that arrives while a loop that does not linger prepares to sleep counts
            // too: it is what a linger would have caught.
            self.count_wake(false);
            return;
        }
        lp.sleep_deadline.store(ASLEEP_FOREVER, Ordering::Relaxed);
        rt.idle.register(lp.id);
        let driver = rt.try_take_timer_driver(lp.id);
        // Pairs with `notify_work` and `on_new_earliest_timer`: our idle registration and
        // driver token are visible to them, or their work is visible to the re-check below.
        fence(Ordering::SeqCst);
        let now = Instant::now();
        let timers_due = rt.timers.earliest().is_some_and(|e| e <= rt.ns(now));
        if rt.stopping.load(Ordering::Acquire)
            || rt.idle.is_notified(lp.id)
            || timers_due
            || self.has_local_work()
            || rt.has_shared_work(lp.id)
        {
            self.wake_up(driver);
            self.count_wake(false);
            return;
        }
        let deadline = if driver {
            self.next_timer_deadline()
        } else {
            self.next_local_deadline()
        };
        lp.sleep_deadline.store(
            deadline.map_or(ASLEEP_FOREVER, |d| rt.ns(d).max(1)),
            Ordering::Relaxed,
        );
        lp.set_state(LoopState::Idle);
        let io_events = self.wait(deadline.map(|d| d.saturating_duration_since(now)));
        self.wake_up(driver);
        self.count_wake(io_events);
        // Only now, awake and out of the idle set: the tasks these wake are ours to run (a
        // wake from inside the sleep would have offered them to this very loop as "idle").
        if io_events {
            self.dispatch_io_events();
        }
    }

    /// Whether this loop would linger before its next sleep (for the tests of `linger`).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn lingers(&self) -> bool {
        self.linger.lingers()
    }

    /// Counts what ended this loop's wait (see `linger`); `io`: its sockets brought events.
    /// Handed-over work (a doorbell message or a task in the injector: what lingering waits
    /// for) counts first, so a loop serving another thread's round trips keeps lingering even
    /// when its sockets woke it in the same breath. A sibling's bare ring (come and steal) is
    /// not handed-over work: in a server, that is surplus socket work.
    fn count_wake(&self, io: bool) {
        self.linger.record(
            if self.lp.bell.has_queued() || !self.rt.injector.is_empty() {
                WakeSource::Handoff
            } else if io {
                WakeSource::Io
            } else {
                WakeSource::Other
            },
        );
    }

    fn wake_up(&self, driver: bool) {
        let rt = &self.rt;
        let lp = &self.lp;
        lp.bell.finish_sleep();
        lp.sleep_deadline.store(AWAKE, Ordering::Relaxed);
        lp.set_state(LoopState::Running);
        if driver {
            rt.release_timer_driver(lp.id);
        }
        if rt.idle.unregister(lp.id) {
            self.searching.set(true);
        }
    }

    /// Host loops: sleep until something pinned here, or `ready()`, needs us.
    pub(crate) fn park_host(&self, ready: &dyn Fn() -> bool, max: Option<Duration>) {
        let lp = &self.lp;
        // As a worker lingers: the answer a `run_until_complete` waits for is often
        // microseconds away, and seeing it now saves waking this thread's vCPU.
        let most = max.and_then(|max| Instant::now().checked_add(max));
        // Never past this loop's next timer, which only this thread fires.
        let most = earlier(most, self.next_local_deadline());
        if linger_until(most, || {
            std::thread::yield_now();
            ready() || self.has_local_work() || self.poll_io_now() > 0
        }) {
            return;
        }
        self.drop_cancelled_first_timers();
        let _drive = lp.io.lock_drive();
        if !lp.bell.prepare_sleep() {
            return;
        }
        lp.sleep_deadline.store(ASLEEP_FOREVER, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if ready() || self.has_local_work() {
            lp.bell.finish_sleep();
            lp.sleep_deadline.store(AWAKE, Ordering::Relaxed);
            return;
        }
        let now = Instant::now();
        let mut timeout = self
            .next_local_deadline()
            .map(|d| d.saturating_duration_since(now));
        // Shared timers are the workers' to fire; wake a little after the earliest one in case
        // they are all stuck (a spurious wake-up costs less than a sleep that never ends).
        if let Some(shared) = self
            .rt
            .timers
            .earliest()
            .and_then(|ns| self.rt.instant_of(ns))
        {
            let backstop = (shared + HOST_TIMER_GRACE).saturating_duration_since(now);
            timeout = Some(timeout.map_or(backstop, |t| t.min(backstop)));
        }
        if let Some(max) = max {
            timeout = Some(timeout.map_or(max, |t| t.min(max)));
        }
        // Idle while asleep, if it was running: a host loop nothing drives already is.
        let was_running = lp.change_state(LoopState::Running, LoopState::Idle);
        let io_events = self.wait(timeout);
        if was_running {
            lp.change_state(LoopState::Idle, LoopState::Running);
        }
        lp.bell.finish_sleep();
        lp.sleep_deadline.store(AWAKE, Ordering::Relaxed);
        if io_events {
            self.dispatch_io_events();
        }
    }

    /// Sleeps in the poller (the caller holds the drive lock). Returns true if it brought I/O
    /// events, left in `events` for `dispatch_io_events`.
    fn wait(&self, timeout: Option<Duration>) -> bool {
        let mut events = self.events.borrow_mut();
        match crate::io::driver::wait(&self.lp, timeout, &mut events) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                self.lp.report(
                    &ExceptionContext::new("the loop's poller failed").with_error(e.into()),
                );
            }
        }
        // Even after an error: edges taken from the poller are dispatched, never dropped.
        !events.is_empty()
    }

    /// Hands the events of the last `wait` to their sockets.
    fn dispatch_io_events(&self) {
        // Out of the cell while wakers run: one may run a host loop's main future here.
        let mut edges = std::mem::take(&mut *self.events.borrow_mut());
        crate::io::driver::dispatch_edges(&mut edges);
        *self.events.borrow_mut() = edges;
    }

    /// Dispatches the I/O events ready now, without blocking. Returns how many sockets woke.
    fn poll_io_now(&self) -> usize {
        if self.lp.io.registered() == 0 {
            return 0;
        }
        crate::io::driver::poll_now(&self.lp)
    }

    /// The loop is closing: refuse new messages, report callbacks that will never run, drop
    /// the futures of tasks pinned here (on this thread, where they belong).
    pub(crate) fn close(&self) {
        self.lp.set_state(LoopState::Closing);
        let mut unrun = Vec::new();
        for message in self.lp.bell.close() {
            match message {
                Remote::Callback(cb) => unrun.push(cb.into()),
                other => drop(other),
            }
        }
        let mut never_ran = self.discard_unrun(unrun);
        let closed = || Error::cancelled(Some("the event loop closed".to_owned()));
        for task in self.rt.registry.snapshot() {
            if task
                .header()
                .home
                .as_ref()
                .is_some_and(|h| Arc::ptr_eq(h, &self.lp))
            {
                task.force_finish(closed());
            }
        }
        self.local_ready.borrow_mut().clear();
        if let Some(worker) = &self.worker {
            while worker.pop().is_some() {}
        }
        // What the destructors and the finished tasks' callbacks scheduled meanwhile.
        never_ran += self.discard_unrun(Vec::new());
        self.lp.report_never_ran(never_ran);
        self.lp.set_state(LoopState::Closed);
        self.lp.io.wake_after_close();
    }

    /// Closes this host loop on its own thread when nothing will drive it again: as its
    /// thread exits, or once its runtime has shut down (see `runtime::HostLoops`). The first
    /// runs in a thread-local's destructor, where a panic aborts the process: `close` catches
    /// the user's destructors' panics itself, and anything else is caught here and written to
    /// stderr, naming `when`.
    pub(crate) fn close_left_behind(self: &Rc<Self>, when: &str) {
        let closing = catch_unwind(AssertUnwindSafe(|| {
            // What the destructors schedule lands in this loop's queues, which `close` then
            // empties; without a context left, they fail as off any loop.
            let _entered = context::try_enter_loop(self.clone());
            self.close();
        }));
        if let Err(payload) = closing {
            let error = Error::from_panic(payload);
            braid_bridge::report_to_stderr(format_args!(
                "braid: closing host loop {} {when}: {error}",
                self.lp.id
            ));
        }
    }

    /// Closing: discards `unrun` and every callback in the ready queue and the timers, until
    /// both stay empty (a destructor may schedule more). Returns how many were not cancelled.
    fn discard_unrun(&self, mut unrun: Vec<ReadyCallback>) -> usize {
        let mut never_ran = 0;
        loop {
            // Taken out of the queues first: dropping them runs the user's destructors.
            unrun.extend(self.ready.borrow_mut().drain(..));
            unrun.extend(self.timers.borrow_mut().drain());
            if unrun.is_empty() {
                return never_ran;
            }
            for cb in unrun.drain(..) {
                if !cb.is_cancelled() {
                    never_ran += 1;
                }
                self.lp.discard(cb);
            }
        }
    }
}

impl Drop for LoopCtx {
    fn drop(&mut self) {
        // Whatever finished since the last iteration: the slots go to their graveyards, to
        // be freed by their owners' sweeps or by the next snapshot (shutdown's final one).
        self.rt.registry.flush(self.registry_outbox.get_mut());
    }
}

/// Runs a boxed callback on a loop of `rt`: this thread's loop if it is one of them, else
/// the first worker loop; if the runtime has closed, right here (never silently dropped).
pub(crate) fn dispatch_callback(rt: &Arc<RuntimeShared>, f: Box<dyn FnOnce() + Send>) {
    match context::current_loop() {
        Some(ctx) if ctx.rt.id == rt.id => ctx.call_soon_or_run(f),
        _ => dispatch_to(&rt.loops[0], f),
    }
}

/// The earlier of two deadlines, either of which may be absent (no deadline).
fn earlier(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Spawns `future` as a task of `rt` (shared when `home` is `None`, else pinned there).
/// On a closed runtime the task is created already finished with a Closed error.
pub(crate) fn spawn_task<F, T>(
    rt: &Arc<RuntimeShared>,
    home: Option<Arc<LoopShared>>,
    future: F,
) -> (Task<T>, bool)
where
    F: Future<Output = Result<T>> + 'static,
    T: 'static,
{
    spawn_task_delivering(rt, home, future, None)
}

/// As `spawn_task`, with the output handed to `deliver` instead of the join handle.
pub(crate) fn spawn_task_delivering<F, T>(
    rt: &Arc<RuntimeShared>,
    home: Option<Arc<LoopShared>>,
    future: F,
    deliver: Option<crate::task::raw::Deliver<T>>,
) -> (Task<T>, bool)
where
    F: Future<Output = Result<T>> + 'static,
    T: 'static,
{
    spawn_placed(rt, home, future, deliver, false)
}

/// A shared task that starts in the runtime's injector rather than this loop's queue, so that
/// the first idle loop takes it: a server spreads its connections over the loops this way.
/// Its one caller (a server's connection) drops the handle: a task refused because the
/// runtime is shutting down is not reported as "never retrieved" (the connection closes with
/// the dropped future).
pub(crate) fn spawn_task_spread<F, T>(rt: &Arc<RuntimeShared>, future: F) -> Task<T>
where
    F: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let (task, accepted) = spawn_placed(rt, None, future, None, true);
    if !accepted {
        task.mark_quiet();
    }
    task
}

fn spawn_placed<F, T>(
    rt: &Arc<RuntimeShared>,
    home: Option<Arc<LoopShared>>,
    future: F,
    deliver: Option<crate::task::raw::Deliver<T>>,
    spread: bool,
) -> (Task<T>, bool)
where
    F: Future<Output = Result<T>> + 'static,
    T: 'static,
{
    let id = TaskId(crate::scheduler::next_task_id());
    let spread = spread && home.is_none();
    // Three owners from the start: the handle, the registry and the run queue.
    let (join, [registered, raw]) = TaskCell::allocate::<2>(id, rt.clone(), home, future, deliver);
    match rt
        .registry
        .insert(registered, crate::scheduler::current_worker(rt))
    {
        Ok(()) => {
            if spread {
                rt.injector.push(raw);
                rt.notify_work();
            } else {
                crate::scheduler::schedule_in(rt, raw);
            }
            (Task::from_raw(join), true)
        }
        Err(registered) => {
            drop(raw);
            registered.force_finish(closed_error());
            (Task::from_raw(join), false)
        }
    }
}

/// A task of `rt` that is already finished with `error` (a refused `create_task`): it has no
/// coroutine to run, and nobody else ever sees it unfinished.
pub(crate) fn spawn_failed<T: Send + 'static>(rt: &Arc<RuntimeShared>, error: Error) -> Task<T> {
    let id = TaskId(crate::scheduler::next_task_id());
    let never = std::future::pending::<Result<T>>();
    let (join, [raw]) = TaskCell::allocate::<1>(id, rt.clone(), None, never, None);
    let claimed = raw.force_finish(error);
    debug_assert!(claimed, "a task nobody else has seen is idle");
    Task::from_raw(join)
}

pub(crate) fn closed_error() -> Error {
    Error::new(ErrorKind::Closed, "the runtime is shut down")
}

/// A cheap, `Clone + Send + Sync` handle to one event loop of a runtime.
///
/// Tasks created through any loop go to the runtime's shared pool and may run on any loop;
/// callbacks stay on the loop they are given to and run there in FIFO order.
///
/// # Examples
///
/// ```
/// use braid_runtime::Runtime;
/// use std::sync::mpsc;
///
/// let rt = Runtime::builder().workers(2).build().unwrap();
/// let lp = rt.event_loop();
/// let (tx, rx) = mpsc::channel();
/// // From a plain thread that knows nothing of async:
/// std::thread::spawn(move || {
///     lp.call_soon_threadsafe(move || tx.send("ran on the loop").unwrap()).unwrap();
/// });
/// assert_eq!(rx.recv().unwrap(), "ran on the loop");
/// ```
#[derive(Clone)]
pub struct EventLoop {
    pub(crate) rt: Arc<RuntimeShared>,
    pub(crate) lp: Arc<LoopShared>,
}

impl EventLoop {
    /// Schedules `f` to run on this loop, from any thread (asyncio's
    /// `call_soon_threadsafe`). Callbacks run in FIFO order; a panic in one goes to the
    /// loop's exception handler.
    ///
    /// ```
    /// use std::sync::mpsc;
    /// let rt = braid_runtime::Runtime::builder().workers(1).build().unwrap();
    /// let (tx, rx) = mpsc::channel();
    /// rt.event_loop().call_soon_threadsafe(move || tx.send(1).unwrap()).unwrap();
    /// assert_eq!(rx.recv().unwrap(), 1);
    /// ```
    ///
    /// # Errors
    ///
    /// A Closed error once the loop has closed; the callback is then dropped unrun.
    pub fn call_soon_threadsafe<F>(&self, f: F) -> Result<CallbackHandle>
    where
        F: FnOnce() + Send + 'static,
    {
        let (queued, state) = new_threadsafe_callback(HandleState::new(None), f);
        let cb = RemoteCallback {
            f: CallbackFn::Threadsafe(queued),
            handle: None,
            name: std::any::type_name::<F>(),
        };
        match self.lp.bell.push(Remote::Callback(cb)) {
            Ok(()) => Ok(CallbackHandle {
                state: HandleStateRef::Threadsafe(state),
            }),
            Err(_) => Err(Error::new(ErrorKind::Closed, "the event loop is closed")),
        }
    }

    /// Submits a coroutine from any thread, including threads that know nothing of async
    /// (asyncio's `run_coroutine_threadsafe`): it runs as a task of the runtime, and the
    /// returned future settles with its result, error, panic or cancellation.
    /// [`ConcurrentFuture::cancel`](braid_bridge::ConcurrentFuture::cancel) from the foreign
    /// side cancels the task (delivered at its await point, so its cleanup runs), and
    /// [`cancel_and_wait`](braid_bridge::ConcurrentFuture::cancel_and_wait) returns once that
    /// cleanup is over. Blocking on the future from one of this runtime's loop threads (or
    /// inside its `run_until_complete`) is an `InvalidState` error (it would deadlock): await
    /// it there instead. The await is a cancellation point, as asyncio's `wrap_future`'s is:
    /// cancelling the awaiting task cancels the future, and with it the coroutine.
    ///
    /// ```
    /// use std::time::Duration;
    /// let rt = braid_runtime::Runtime::builder().workers(2).build().unwrap();
    /// let lp = rt.event_loop();
    /// let fut = std::thread::spawn(move || {
    ///     lp.run_coroutine_threadsafe(async {
    ///         braid_runtime::sleep(Duration::from_millis(5)).await?;
    ///         Ok("from a plain thread")
    ///     })
    /// }).join().unwrap().unwrap();
    /// assert_eq!(fut.result(Some(Duration::from_secs(5))).unwrap(), "from a plain thread");
    /// ```
    ///
    /// # Errors
    ///
    /// A Closed error at once if the runtime is shut down.
    pub fn run_coroutine_threadsafe<F, T>(
        &self,
        fut: F,
    ) -> Result<braid_bridge::ConcurrentFuture<T>>
    where
        F: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let (future, completer) = braid_bridge::ConcurrentFuture::pair_owned_by(self.rt.id);
        let started = Arc::new(AtomicBool::new(false));
        let started_in_task = started.clone();
        let body = async move {
            started_in_task.store(true, Ordering::Relaxed);
            fut.await
        };
        let rt = self.rt.clone();
        let completer = Arc::new(Mutex::new(Some(completer)));
        let deliver_to = completer.clone();
        let deliver: crate::task::raw::Deliver<T> = Box::new(move |outcome: Result<T>| {
            let Some(completer) = deliver_to.lock().take() else {
                return;
            };
            let never_ran = !started.load(Ordering::Relaxed) && rt.registry.is_closed();
            let outcome = match outcome {
                // Shut down before it ever ran: the work was refused, not cancelled. Unless
                // its future was cancelled first: then that is what stopped it.
                Err(e) if e.is_cancelled() && never_ran && !completer.is_cancelled() => {
                    Err(Error::new(
                        ErrorKind::Closed,
                        "the runtime shut down before the coroutine started",
                    ))
                }
                other => other,
            };
            completer.complete(outcome);
        });
        let (task, accepted) = spawn_task_delivering(&self.rt, None, body, Some(deliver));
        if !accepted {
            return Err(closed_error());
        }
        let task = task.as_ref();
        if let Some(completer) = &*completer.lock() {
            completer.on_cancel(move || {
                task.cancel();
            });
        }
        Ok(future)
    }

    /// Spawns a task on the runtime's shared pool from any thread (it may run on any loop).
    ///
    /// ```
    /// let rt = braid_runtime::Runtime::builder().workers(2).build().unwrap();
    /// let task = rt.event_loop().spawn(async { Ok(2 + 2) }).unwrap();
    /// assert_eq!(rt.run_until_complete(task).unwrap(), 4);
    /// ```
    ///
    /// # Errors
    ///
    /// A Closed error once the runtime is shut down.
    pub fn spawn<F, T>(&self, fut: F) -> Result<Task<T>>
    where
        F: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        match spawn_task(&self.rt, None, fut) {
            (task, true) => Ok(task),
            (refused, false) => {
                // The refusal is this call's error; the task it never ran, finished Closed,
                // is nobody's to report as "never retrieved".
                refused.mark_quiet();
                Err(closed_error())
            }
        }
    }

    /// The loop's monotonic clock.
    ///
    /// ```
    /// let rt = braid_runtime::Runtime::builder().workers(1).build().unwrap();
    /// let t = rt.event_loop().time();
    /// assert!(t <= std::time::Instant::now());
    /// ```
    pub fn time(&self) -> Instant {
        Instant::now()
    }

    /// True while the loop runs: a worker loop until shutdown, a host loop while a
    /// `run_until_complete` or `run_forever` drives it.
    ///
    /// ```
    /// let rt = braid_runtime::Runtime::builder().workers(1).build().unwrap();
    /// assert!(rt.event_loop().is_running());
    /// ```
    pub fn is_running(&self) -> bool {
        if self.lp.is_host {
            self.lp.running.load(Ordering::Acquire)
        } else {
            !matches!(self.lp.state(), LoopState::Closing | LoopState::Closed)
        }
    }

    /// True once the loop has closed.
    ///
    /// ```
    /// let rt = braid_runtime::Runtime::builder().workers(1).build().unwrap();
    /// let lp = rt.event_loop();
    /// rt.shutdown(std::time::Duration::from_secs(1)).unwrap();
    /// assert!(lp.is_closed());
    /// ```
    pub fn is_closed(&self) -> bool {
        self.lp.state() == LoopState::Closed
    }

    /// Makes the runtime's current (or next) `run_forever` return, after the iteration in
    /// progress (or one iteration), as asyncio's `stop` does; made while `run_until_complete`
    /// runs, it ends that call, with an `InvalidState` error if its future has not completed.
    /// The stop is the runtime's, whichever loop it is called on; the run that takes it
    /// spends it.
    ///
    /// ```
    /// let rt = braid_runtime::Runtime::builder().workers(1).build().unwrap();
    /// let lp = rt.event_loop();
    /// lp.call_soon_threadsafe({ let lp = lp.clone(); move || lp.stop() }).unwrap();
    /// rt.run_forever().unwrap();
    /// ```
    pub fn stop(&self) {
        self.rt.stop_requested.store(true, Ordering::Release);
        for host in self.rt.hosts.lock().iter().filter_map(|h| h.upgrade()) {
            host.bell.ring();
        }
    }

    /// The loop's index within its runtime: worker loops are `0..workers`, loops of threads
    /// driving `run_until_complete` come after.
    ///
    /// ```
    /// let rt = braid_runtime::Runtime::builder().workers(2).build().unwrap();
    /// let ids: Vec<usize> = rt.event_loops().iter().map(|l| l.id()).collect();
    /// assert_eq!(ids, [0, 1]);
    /// ```
    pub fn id(&self) -> usize {
        self.lp.id
    }

    /// Running, Idle (asleep in its poller), Closing or Closed.
    ///
    /// ```
    /// use braid_runtime::LoopState;
    /// let rt = braid_runtime::Runtime::builder().workers(1).build().unwrap();
    /// assert!(matches!(rt.event_loop().state(), LoopState::Running | LoopState::Idle));
    /// ```
    pub fn state(&self) -> LoopState {
        self.lp.state()
    }

    /// Sets the handler for errors no one else can receive: panics in callbacks, slow
    /// callbacks in debug mode, callbacks lost at close (asyncio's
    /// `set_exception_handler`).
    ///
    /// ```
    /// use std::sync::mpsc;
    /// use std::sync::Mutex;
    /// let rt = braid_runtime::Runtime::builder().workers(1).build().unwrap();
    /// let lp = rt.event_loop();
    /// let (tx, rx) = mpsc::channel();
    /// let tx = Mutex::new(tx);
    /// lp.set_exception_handler(move |ctx| tx.lock().unwrap().send(ctx.message.clone()).unwrap());
    /// lp.call_soon_threadsafe(|| panic!("boom")).unwrap();
    /// assert!(rx.recv().unwrap().starts_with("Exception in callback"));
    /// ```
    pub fn set_exception_handler<H>(&self, h: H)
    where
        H: Fn(&ExceptionContext) + Send + Sync + 'static,
    {
        let old = self.lp.handler.lock().replace(Arc::new(h));
        // Dropped after the lock: the old handler may hold the last handle of a failed task
        // or promise of this loop, whose report takes this lock to find the new handler.
        drop(old);
    }

    /// Calls the loop's exception handler (or the default one, which prints to stderr).
    ///
    /// ```
    /// let rt = braid_runtime::Runtime::builder().workers(1).build().unwrap();
    /// rt.event_loop().call_exception_handler(braid_runtime::ExceptionContext::new("hello"));
    /// ```
    pub fn call_exception_handler(&self, ctx: ExceptionContext) {
        self.lp.report(&ctx);
    }
}

impl fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventLoop")
            .field("id", &self.lp.id)
            .field("host", &self.lp.is_host)
            .field("state", &self.lp.state())
            .finish()
    }
}

/// What an exception handler receives (asyncio's exception-handler context dict).
///
/// # Examples
///
/// ```
/// use braid_runtime::{Error, ExceptionContext};
/// let ctx = ExceptionContext::new("something broke").with_error(Error::msg("why"));
/// assert_eq!(ctx.message, "something broke");
/// assert!(ctx.error.is_some());
/// ```
#[derive(Clone)]
pub struct ExceptionContext {
    /// What happened.
    pub message: String,
    /// The error, if there is one.
    pub error: Option<Error>,
    /// The task involved, if any.
    pub task: Option<TaskRef>,
    /// The callback involved (its type name), if any.
    callback: Option<&'static str>,
}

impl ExceptionContext {
    /// A context with just a message.
    ///
    /// ```
    /// let ctx = braid_runtime::ExceptionContext::new("hello");
    /// assert!(ctx.error.is_none() && ctx.task.is_none());
    /// ```
    pub fn new(message: impl Into<String>) -> Self {
        ExceptionContext {
            message: message.into(),
            error: None,
            task: None,
            callback: None,
        }
    }

    /// Adds the error.
    ///
    /// ```
    /// let ctx = braid_runtime::ExceptionContext::new("x").with_error(braid_runtime::Error::msg("y"));
    /// assert_eq!(ctx.error.unwrap().to_string(), "y");
    /// ```
    pub fn with_error(mut self, e: Error) -> Self {
        self.error = Some(e);
        self
    }

    /// Adds the task.
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let me = braid_runtime::current_task().unwrap();
    ///     let ctx = braid_runtime::ExceptionContext::new("x").with_task(me.clone());
    ///     assert_eq!(ctx.task.unwrap().id(), me.id());
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn with_task(mut self, t: TaskRef) -> Self {
        self.task = Some(t);
        self
    }

    fn with_callback(mut self, name: &'static str) -> Self {
        self.callback = Some(name);
        self
    }

    /// The callback involved (its type name), if any.
    ///
    /// ```
    /// assert!(braid_runtime::ExceptionContext::new("x").callback().is_none());
    /// ```
    pub fn callback(&self) -> Option<&str> {
        self.callback
    }
}

impl fmt::Display for ExceptionContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(e) = &self.error {
            write!(f, ": {e}")?;
        }
        if let Some(t) = &self.task {
            write!(f, " (task {})", t.name())?;
        }
        Ok(())
    }
}

impl fmt::Debug for ExceptionContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExceptionContext")
            .field("message", &self.message)
            .field("error", &self.error)
            .field("task", &self.task)
            .field("callback", &self.callback)
            .finish()
    }
}

/// Runs a boxed callback on loop `lp`: directly into its ready queue when called on
/// that loop, else through its doorbell; if it has closed, right here.
pub(crate) fn dispatch_to(lp: &Arc<LoopShared>, f: Box<dyn FnOnce() + Send>) {
    if let Some(ctx) = context::current_loop() {
        if Arc::ptr_eq(&ctx.lp, lp) {
            ctx.call_soon_or_run(f);
            return;
        }
    }
    let cb = RemoteCallback {
        f: CallbackFn::Boxed(f),
        handle: None,
        name: "done callback",
    };
    if let Err(Remote::Callback(cb)) = lp.bell.push(Remote::Callback(cb)) {
        cb.run_here();
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    use super::{LoopState, StateWord};
    use braid_bridge::sync::Arc;

    /// A host loop's thread drives it (idle -> running), sleeps and wakes (running -> idle ->
    /// running), and a task it runs shuts the runtime down, closing the loop (closing, then
    /// closed) on that same thread before the drive ends (running -> idle). Another thread
    /// reads the state meanwhile, as `EventLoop::state` and the submissions do. Checked: the
    /// drive's last flip never undoes the close, and a reader that has seen the loop closed
    /// never sees it open again.
    #[test]
    fn loom_a_host_flip_never_undoes_a_close() {
        loom::model(|| {
            let word = Arc::new(StateWord::new(LoopState::Idle));
            let reader = {
                let word = word.clone();
                loom::thread::spawn(move || {
                    let mut closed_seen = false;
                    for _ in 0..3 {
                        let state = word.get();
                        assert!(
                            !closed_seen || state == LoopState::Closed,
                            "seen {state:?} after Closed"
                        );
                        closed_seen |= state == LoopState::Closed;
                    }
                })
            };
            assert!(word.change(LoopState::Idle, LoopState::Running));
            let was_running = word.change(LoopState::Running, LoopState::Idle);
            if was_running {
                word.change(LoopState::Idle, LoopState::Running);
            }
            word.set(LoopState::Closing);
            word.set(LoopState::Closed);
            assert!(
                !word.change(LoopState::Running, LoopState::Idle),
                "the drive's end flipped a closed loop"
            );
            reader.join().unwrap();
            assert_eq!(word.get(), LoopState::Closed);
        });
    }
}
