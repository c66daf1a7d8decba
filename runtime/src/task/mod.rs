//! Tasks: asyncio's `Task` on a work-stealing runtime.
//!
//! A task is one allocation (`raw::TaskCell`): a [`Header`] (reference count, state word, id, the
//! cancellation state with the name, the join waker, done callbacks), the future, and the output,
//! reached through `raw::TaskPtr`, a counted pointer of braid's own. Tasks are `Send` and may move
//! between loops at every poll; `spawn_local` tasks carry a `home` loop and only ever run there.
//!
//! ## Cancellation, as asyncio does it
//!
//! `cancel()` records a request (`requests += 1`, `must_cancel = true`), cancels whatever Task
//! or Promise the task is awaiting right now, and wakes the task. The next braid leaf future
//! the task polls (sleep, a Task, a Promise, yield_now, …) calls [`crate::context::take_cancel`]
//! and returns `Err(cancelled)` once; an await of a Task, a gather or a shield that is already
//! done gives its outcome instead and leaves the request for the next one (the awaiter owns the
//! handle, and the value would be lost with it). If the coroutine returns while a request is still
//! undelivered, the task ends cancelled when the request predates the step that returned or
//! was made by the task itself; a request from elsewhere that lands during that final step is
//! too late (the value is kept, as asyncio keeps a value that raced a cancel).

pub(crate) mod cancel;
pub(crate) mod join;
pub(crate) mod raw;
pub(crate) mod refcount;
pub(crate) mod state;

use crate::event_loop::{dispatch_callback, LoopShared};
use crate::scheduler::RuntimeShared;
use braid_bridge::sync::atomic::AtomicUsize;
use braid_bridge::{Error, ErrorKind, Result};
use cancel::CancelState;
use join::JoinState;
use raw::{JoinPtr, SendIfT, TaskPtr, TaskVtable};
use refcount::RefCount;
use state::State;
use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// A task's id: unique within the process, in creation order.
///
/// # Examples
///
/// ```
/// braid_runtime::run(async {
///     let a = braid_runtime::create_task(async { Ok(()) });
///     let b = braid_runtime::create_task(async { Ok(()) });
///     assert!(a.id() < b.id());
///     Ok(())
/// }).unwrap();
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct TaskId(pub(crate) u64);

impl TaskId {
    /// The id as a number.
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let t = braid_runtime::create_task(async { Ok(()) });
    ///     assert!(t.id().as_u64() > 0);
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What runs when a task completes.
enum DoneCallback {
    /// A user's callback: scheduled on a loop (asyncio's `call_soon`), never run in place.
    Scheduled(Box<dyn FnOnce(&TaskRef) + Send>),
    /// braid's own bookkeeping (task groups): run at once, on the thread that completed the
    /// task, with the task's failure if it failed. Must be short and never block.
    Inline(CompletionHook),
}

/// An inline completion hook: the finished task and its error, if it failed (not cancelled).
pub(crate) type CompletionHook = Box<dyn FnOnce(&TaskRef, Option<&Error>) + Send>;

/// A cancellable thing other than a task that a task can be awaiting (a Promise or a
/// gather; a task is [`AwaitTarget::Task`]): cancelling the awaiter cancels it too, as
/// asyncio's `Task.cancel` cancels `_fut_waiter`.
pub(crate) trait CancelTarget: Send + Sync {
    /// Cancels the target; false if it was already done (then the awaiter itself must be
    /// cancelled at its await point, as asyncio does when `_fut_waiter.cancel()` fails).
    /// Takes the `Arc` so that a promise or gather can register itself as the target with a
    /// reference count, not an allocation, on every await that waits.
    fn cancel_from_awaiter(self: Arc<Self>, message: Option<String>) -> bool;

    /// True if the target finished without receiving a request that reached it (one that
    /// landed during a task's final step, on another loop). A promise or a gather settles
    /// once, so a request reaches it or is refused: never missed.
    fn missed_request(&self) -> bool {
        false
    }
}

/// What a task can be awaiting that cancelling it cancels too (asyncio's `_fut_waiter`).
#[derive(Clone)]
pub(crate) enum AwaitTarget {
    /// A task (its join handle is awaited).
    Task(TaskPtr),
    /// A promise or a gather.
    Other(Arc<dyn CancelTarget>),
}

impl AwaitTarget {
    /// Cancels the target; false if it was already done (see
    /// [`CancelTarget::cancel_from_awaiter`]).
    pub(crate) fn cancel_from_awaiter(self, message: Option<String>) -> bool {
        match self {
            AwaitTarget::Task(task) => request_cancel(&task, message),
            AwaitTarget::Other(target) => target.cancel_from_awaiter(message),
        }
    }

    /// See [`CancelTarget::missed_request`].
    pub(crate) fn missed_request(&self) -> bool {
        match self {
            AwaitTarget::Task(task) => task.header().missed_cancel(),
            AwaitTarget::Other(target) => target.missed_request(),
        }
    }
}

/// The untyped part of every task.
pub(crate) struct Header {
    /// Owners of the task's allocation (see `raw::TaskPtr`).
    refs: RefCount,
    /// What depends on the allocation's type (see `raw`).
    vtable: &'static TaskVtable,
    pub(crate) state: State,
    pub(crate) id: TaskId,
    pub(crate) rt: Arc<RuntimeShared>,
    /// The loop a `spawn_local` task is pinned to; `None` for shared tasks.
    pub(crate) home: Option<Arc<LoopShared>>,
    /// Cancel requests, the awaited target, whether the first step began, whether the task
    /// ended cancelled or failed, and its name. The cancel and join states are kept inline:
    /// an allocation per task cost more than the bytes. Their rarely used parts are not
    /// (`cancel`'s box, `join`'s one lock): every byte here is written at each spawn
    /// (`benchmarks/NOTES.md`).
    pub(crate) cancel: CancelState,
    /// Who watches the task (handle, joiner's waker, done callbacks) and its completion.
    join: JoinState<DoneCallback>,
    /// This task's registry shard and slot (see `registry`), `UNREGISTERED` if unregistered.
    pub(crate) registry_slot: AtomicUsize,
}

impl Header {
    /// A header for an allocation of `vtable`'s type, with `owners` counts, unnamed.
    fn new(
        vtable: &'static TaskVtable,
        owners: usize,
        id: TaskId,
        rt: Arc<RuntimeShared>,
        home: Option<Arc<LoopShared>>,
    ) -> Header {
        Header {
            refs: RefCount::new(owners),
            vtable,
            state: State::new_scheduled(),
            id,
            rt,
            home,
            cancel: CancelState::new(),
            join: JoinState::new(),
            registry_slot: AtomicUsize::new(crate::registry::UNREGISTERED),
        }
    }

    pub(crate) fn name(&self) -> String {
        match self.cancel.name() {
            Some(name) => name,
            None => format!("Task-{}", self.id.0),
        }
    }

    pub(crate) fn set_name(&self, name: String) {
        self.cancel.set_name(name);
    }

    pub(crate) fn done(&self) -> bool {
        self.state.is_complete()
    }

    pub(crate) fn cancelled(&self) -> bool {
        self.cancel.cancelled(&self.state)
    }

    /// True once the task has finished with an error other than Cancelled.
    pub(crate) fn failed(&self) -> bool {
        self.cancel.failed(&self.state)
    }

    /// A combinator took charge of this task's error: never report it as unretrieved.
    pub(crate) fn mark_quiet(&self) {
        self.join.mark_quiet();
    }

    /// True once [`mark_quiet`](Header::mark_quiet) ran.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn is_quiet(&self) -> bool {
        self.join.is_quiet()
    }

    /// True if the task finished without receiving a cancel request that reached it (see
    /// [`CancelTarget::missed_request`]).
    pub(crate) fn missed_cancel(&self) -> bool {
        self.cancel.missed_request(&self.state)
    }

    /// True once the join handle is dropped: nobody can take the output any more.
    pub(crate) fn handle_dropped(&self) -> bool {
        self.join.handle_dropped()
    }

    /// Registers the joiner's waker unless the task completed or a timed-out shutdown gave
    /// it up (then no wake will come).
    pub(crate) fn watch(&self, waker: &Waker) -> join::Watch {
        self.join.watch(waker)
    }

    /// Publishes completion (the output is already stored).
    pub(crate) fn complete(&self, cancelled: bool, failed: bool) {
        // Leave the registry (on another shard's loop the slot may wait in an outbox: a
        // snapshot skips finished tasks, so `all_tasks()` never lists a task that is done).
        crate::scheduler::leave_registry(&self.rt, &self.registry_slot);
        self.cancel.complete(&self.state, cancelled, failed);
    }

    /// After completion: wake the joiner, schedule the done callbacks.
    /// `error` is the task's error if it failed (not cancelled): reported if no handle is
    /// left to read it.
    /// `me` makes a handle to this task; called only if a callback or a report needs one.
    pub(crate) fn after_complete(&self, me: &dyn Fn() -> TaskRef, error: Option<Error>) {
        let watchers = self.join.complete();
        if watchers.callbacks() {
            // Before the joiner's wake, so that a task group has counted the child out by the
            // time whoever awaits it runs on.
            self.run_done_callbacks(&me(), error.as_ref());
        }
        if watchers.handle_dropped() && !self.join.is_quiet() {
            if let Some(error) = error {
                self.report_unretrieved(&me(), error);
            }
        }
        if watchers.waker() {
            if let Some(waker) = self.join.take_waker() {
                waker.wake();
            }
        }
    }

    /// Runs the inline hooks and schedules the done callbacks registered so far (once: they
    /// are taken under the lock). `failure` is the task's error if it failed.
    fn run_done_callbacks(&self, me: &TaskRef, failure: Option<&Error>) {
        for callback in self.join.take_callbacks() {
            match callback {
                DoneCallback::Inline(hook) => hook(me, failure),
                DoneCallback::Scheduled(callback) => {
                    let me = me.clone();
                    dispatch_callback(&self.rt, Box::new(move || callback(&me)));
                }
            }
        }
    }

    /// asyncio's "Task exception was never retrieved".
    fn report_unretrieved(&self, me: &TaskRef, error: Error) {
        let ctx = crate::ExceptionContext::new("Task exception was never retrieved")
            .with_error(error)
            .with_task(me.clone());
        self.report(&ctx);
    }

    /// Runs `drop`, which drops the task's output or its future (the user's values), with a
    /// panic in it caught and reported instead of unwinding into whoever dropped it.
    #[inline]
    pub(crate) fn drop_reporting_panics(&self, drop: impl FnOnce()) {
        if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(drop)) {
            self.report_destructor_panic(payload);
        }
    }

    /// A destructor of the task's output or future panicked (asyncio's "Exception ignored in"
    /// a `__del__`). No `TaskRef` in the report: the task is finished, or gone.
    #[cold]
    #[inline(never)]
    fn report_destructor_panic(&self, payload: Box<dyn std::any::Any + Send>) {
        let ctx = crate::ExceptionContext::new(format!(
            "Exception ignored in a destructor of task {}'s output or future",
            self.name()
        ))
        .with_error(Error::from_panic(payload));
        self.report(&ctx);
    }

    /// To the exception handler of this thread's loop if it is one of the task's runtime's,
    /// else of the runtime's first loop.
    fn report(&self, ctx: &crate::ExceptionContext) {
        match crate::context::current_loop() {
            Some(lp) if lp.rt.id == self.rt.id => lp.lp.report(ctx),
            _ => self.rt.loops[0].report(ctx),
        }
    }

    fn add_done_callback(&self, me: TaskRef, callback: DoneCallback) {
        // The error of a task already complete: its stored output's. A hook is registered
        // before anyone can take that output (see `TaskGroup`), so it is still there.
        let failure = || me.raw.stored_failure();
        if self.join.completed() {
            match callback {
                DoneCallback::Inline(hook) => hook(&me, failure().as_ref()),
                // Already done: scheduled, never run synchronously (asyncio's rule).
                DoneCallback::Scheduled(callback) => {
                    dispatch_callback(&self.rt, Box::new(move || callback(&me)));
                }
            }
            return;
        }
        if self.join.add_callback(callback) {
            // The completer went first and saw no callbacks: run them ourselves.
            self.run_done_callbacks(&me, failure().as_ref());
        }
    }
}

/// An untyped handle to a task: what [`current_task`](crate::current_task) and
/// [`all_tasks`](crate::all_tasks) return.
///
/// # Examples
///
/// ```
/// braid_runtime::run(async {
///     let me = braid_runtime::current_task().expect("inside a task");
///     assert!(!me.done());
///     assert_eq!(me.cancelling(), 0);
///     Ok(())
/// }).unwrap();
/// ```
#[derive(Clone)]
pub struct TaskRef {
    raw: TaskPtr,
}

impl TaskRef {
    pub(crate) fn from_raw(raw: TaskPtr) -> TaskRef {
        TaskRef { raw }
    }

    pub(crate) fn header(&self) -> &Header {
        self.raw.header()
    }

    /// The task's id.
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let t = braid_runtime::create_task(async { Ok(()) });
    ///     assert_eq!(t.as_ref().id(), t.id());
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn id(&self) -> TaskId {
        self.raw.header().id
    }

    /// The task's name (`Task-<id>` unless set).
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let t = braid_runtime::create_task(async { Ok(()) });
    ///     assert_eq!(t.as_ref().name(), format!("Task-{}", t.id()));
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn name(&self) -> String {
        self.raw.header().name()
    }

    /// Renames the task.
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let me = braid_runtime::current_task().unwrap();
    ///     me.set_name("main");
    ///     assert_eq!(me.name(), "main");
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn set_name(&self, name: impl Into<String>) {
        self.raw.header().set_name(name.into());
    }

    /// Requests cancellation; see [`Task::cancel`].
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let t = braid_runtime::create_task(async {
    ///         braid_runtime::sleep(std::time::Duration::from_secs(60)).await
    ///     });
    ///     assert!(t.as_ref().cancel());
    ///     assert!(t.await.unwrap_err().is_cancelled());
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn cancel(&self) -> bool {
        request_cancel(&self.raw, None)
    }

    /// Requests cancellation with a message carried by the Cancelled error.
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let t = braid_runtime::create_task(async {
    ///         braid_runtime::sleep(std::time::Duration::from_secs(60)).await
    ///     });
    ///     t.as_ref().cancel_with("enough");
    ///     assert_eq!(t.await.unwrap_err().message(), Some("enough"));
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn cancel_with(&self, message: impl Into<String>) -> bool {
        request_cancel(&self.raw, Some(message.into()))
    }

    /// True once the task has finished with a Cancelled error.
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let t = braid_runtime::create_task(async { Ok(1) });
    ///     let r = t.as_ref();
    ///     t.await?;
    ///     assert!(r.done() && !r.cancelled());
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn cancelled(&self) -> bool {
        self.raw.header().cancelled()
    }

    /// True once the task has finished (value, error or cancellation).
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let t = braid_runtime::create_task(async { Ok(()) });
    ///     let r = t.as_ref();
    ///     t.await?;
    ///     assert!(r.done());
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn done(&self) -> bool {
        self.raw.header().done()
    }

    /// The number of pending cancel requests.
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let me = braid_runtime::current_task().unwrap();
    ///     assert_eq!(me.cancelling(), 0);
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn cancelling(&self) -> usize {
        self.raw.header().cancel.cancelling()
    }

    /// Withdraws one cancel request; returns how many remain.
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let me = braid_runtime::current_task().unwrap();
    ///     me.cancel();
    ///     assert_eq!(me.uncancel(), 0); // withdrawn before delivery: nothing happens
    ///     braid_runtime::yield_now().await?;
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn uncancel(&self) -> usize {
        let header = self.raw.header();
        header
            .cancel
            .uncancel(crate::context::current_task_is(header))
    }
}

impl PartialEq for TaskRef {
    fn eq(&self, other: &TaskRef) -> bool {
        self.id() == other.id()
    }
}

impl Eq for TaskRef {}

impl std::hash::Hash for TaskRef {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id().hash(state);
    }
}

impl fmt::Debug for TaskRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = self.raw.header();
        f.debug_struct("TaskRef")
            .field("id", &h.id)
            .field("name", &h.name())
            .field("done", &h.done())
            .finish()
    }
}

impl TaskRef {
    /// Wakes the task through its state machine (a wake while it runs polls it once more).
    pub(crate) fn wake(&self) {
        self.raw.wake_by_ref();
    }

    /// `uncancel` on the task's own behalf, wherever it runs: withdraws even a request handed
    /// to the await point the task is parked at, as the task's own `uncancel` in a step does
    /// (see `task::cancel`). For a task group taking back the cancel it made of its parent
    /// from another task (the abort step of a group the parent dropped meanwhile), which an
    /// `uncancel` from there could not take back once handed.
    pub(crate) fn withdraw_own_cancel(&self) -> usize {
        self.raw.header().cancel.uncancel(true)
    }

    /// Cancels the task on behalf of an awaiter (see [`AwaitTarget`]).
    pub(crate) fn cancel_from_awaiter(&self, message: Option<String>) -> bool {
        request_cancel(&self.raw, message)
    }
}

/// How many tasks one call carries a cancel request through, down a chain of tasks each
/// awaiting the next, before the rest of the way is left to the next poll of the last one
/// reached (its await passes the request on from there): each step of the way is a few
/// stack frames, and a chain of thousands would overflow the canceller's stack.
const MAX_PASS_ON_DEPTH: usize = 32;

thread_local! {
    /// The tasks whose cancel requests this thread is passing on right now, outermost first
    /// (addresses of their headers): a chain of awaits that closes on itself (a task awaiting
    /// a task that awaits it) must not pass a request round for ever.
    static PASSING_ON: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// Takes a task off [`PASSING_ON`] when dropped (also if a waker's `wake` panics).
struct PassingOn {
    /// False if the thread's chain is gone (a cancel made by a thread-local's destructor as
    /// the thread exits): nothing was put on it.
    on_chain: bool,
}

impl PassingOn {
    /// Puts `header` on the chain: the guard and the chain's length, `None` if `header` is on
    /// it already (a cycle). As the thread exits, once the chain is gone, the length is one
    /// past [`MAX_PASS_ON_DEPTH`]: the request then stays with the task it is made of, so
    /// nothing can go round (a destructor's cancel, such as a task group's dropped with its
    /// host loop, must not panic in a thread-local's destructor: that aborts the process).
    fn enter(header: &Header) -> Option<(PassingOn, usize)> {
        let addr = std::ptr::from_ref(header).addr();
        PASSING_ON
            .try_with(|chain| {
                let mut chain = chain.borrow_mut();
                if chain.contains(&addr) {
                    return None;
                }
                chain.push(addr);
                Some((PassingOn { on_chain: true }, chain.len()))
            })
            .unwrap_or(Some((PassingOn { on_chain: false }, MAX_PASS_ON_DEPTH + 1)))
    }
}

impl Drop for PassingOn {
    fn drop(&mut self) {
        if self.on_chain {
            let _ = PASSING_ON.try_with(|chain| chain.borrow_mut().pop());
        }
    }
}

/// Runs `pass_on` (which cancels what the running task awaits, with a request the task took
/// at its await) with the running task on the chain of tasks passing requests on, so that a
/// target awaiting it (a cycle) does not send the request back round.
pub(crate) fn passing_on_from_current<R>(pass_on: impl FnOnce() -> R) -> R {
    let _on_chain = crate::context::with_current_header(PassingOn::enter).flatten();
    pass_on()
}

/// asyncio's `Task.cancel` on `raw`'s task (see `cancel::request`). A request that comes
/// back round a cycle of awaits to a task already passing it on stops there: that task has
/// it already (true), and the tasks of the cycle, which wait for each other, stay as they
/// were.
pub(crate) fn request_cancel(raw: &TaskPtr, message: Option<String>) -> bool {
    let header = raw.header();
    let Some((_on_chain, depth)) = PassingOn::enter(header) else {
        return true;
    };
    let by_self = crate::context::current_task_is(header);
    let pass_on = depth <= MAX_PASS_ON_DEPTH;
    cancel::request(
        &header.state,
        &header.cancel,
        message,
        by_self,
        pass_on,
        || raw.wake_by_ref(),
    )
}

/// A handle to a spawned task: asyncio's `Task`. Awaiting it gives the task's result;
/// dropping it detaches the task (it keeps running), as tokio's `JoinHandle` does.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// braid_runtime::run(async {
///     let task = braid_runtime::create_task(async {
///         braid_runtime::sleep(Duration::from_millis(5)).await?;
///         Ok(6 * 7)
///     });
///     assert_eq!(task.await?, 42);
///     Ok(())
/// }).unwrap();
/// ```
///
/// # Cancel safety
///
/// Dropping the `Task` future never cancels the task; cancelling the task that awaits it does
/// (as asyncio cancels the awaited task). Awaiting a task that is already done gives its
/// outcome even while a cancel of the awaiting task is pending: that request is delivered
/// at the next await point instead, so a value the task returned is never traded for the
/// request. For a request made before the await, that is asyncio's behaviour (its await of
/// a done task does not suspend). For one that arrives while the awaiter is suspended on a
/// task that then finishes, asyncio raises the cancel at that await and leaves the value in
/// the task; braid differs on purpose: the awaiter often owns the only handle (`wait_for`,
/// `gather`), and with it the value would be lost.
pub struct Task<T> {
    raw: JoinPtr<T>,
    /// This handle as what the awaiting task awaits (for cancel propagation).
    registration: crate::context::AwaitRegistration,
    _send: SendIfT<T>,
}

// A handle: pinning it pins nothing of `T` (which lives in the task cell).
impl<T> Unpin for Task<T> {}

impl<T> Task<T> {
    pub(crate) fn from_raw(raw: JoinPtr<T>) -> Task<T> {
        let registration = crate::context::AwaitRegistration::new(raw.task().as_non_null());
        Task {
            raw,
            registration,
            _send: SendIfT::NEW,
        }
    }

    fn untyped(&self) -> TaskPtr {
        self.raw.task().clone()
    }

    /// Requests cancellation (asyncio's `Task.cancel`): the task receives a Cancelled error at
    /// its current braid await point, once. Returns false if the task is already done.
    ///
    /// ```
    /// use std::time::Duration;
    /// braid_runtime::run(async {
    ///     let t = braid_runtime::create_task(async {
    ///         braid_runtime::sleep(Duration::from_secs(60)).await
    ///     });
    ///     assert!(t.cancel());
    ///     assert!(t.await.unwrap_err().is_cancelled());
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn cancel(&self) -> bool {
        request_cancel(self.raw.task(), None)
    }

    /// [`cancel`](Task::cancel) with a message, carried by the Cancelled error.
    ///
    /// ```
    /// use std::time::Duration;
    /// braid_runtime::run(async {
    ///     let t = braid_runtime::create_task(async {
    ///         braid_runtime::sleep(Duration::from_secs(60)).await
    ///     });
    ///     t.cancel_with("stop");
    ///     assert_eq!(t.await.unwrap_err().message(), Some("stop"));
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn cancel_with(&self, message: impl Into<String>) -> bool {
        request_cancel(self.raw.task(), Some(message.into()))
    }

    /// True once the task has finished with a Cancelled error (not merely been asked to).
    ///
    /// ```
    /// use std::time::Duration;
    /// braid_runtime::run(async {
    ///     // Pinned to this loop, so the request cannot be delivered before the check below.
    ///     let t = braid_runtime::spawn_local(async {
    ///         braid_runtime::sleep(Duration::from_secs(60)).await
    ///     });
    ///     let r = t.as_ref();
    ///     t.cancel();
    ///     assert!(!r.cancelled()); // requested, not yet delivered
    ///     let _ = t.await;
    ///     assert!(r.cancelled());
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn cancelled(&self) -> bool {
        self.raw.task().header().cancelled()
    }

    /// True once the task has finished.
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let t = braid_runtime::create_task(async { Ok(()) });
    ///     let r = t.as_ref();
    ///     t.await?;
    ///     assert!(r.done());
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn done(&self) -> bool {
        self.raw.task().header().done()
    }

    /// The number of pending cancel requests (asyncio's `Task.cancelling`).
    ///
    /// ```
    /// use std::time::Duration;
    /// braid_runtime::run(async {
    ///     // Pinned to this loop, so it cannot end cancelled between the two requests.
    ///     let t = braid_runtime::spawn_local(async {
    ///         braid_runtime::sleep(Duration::from_secs(60)).await
    ///     });
    ///     t.cancel();
    ///     t.cancel();
    ///     assert_eq!(t.cancelling(), 2);
    ///     let _ = t.await;
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn cancelling(&self) -> usize {
        self.raw.task().header().cancel.cancelling()
    }

    /// Withdraws one cancel request (asyncio's `Task.uncancel`); returns how many remain.
    ///
    /// ```
    /// use std::time::Duration;
    /// braid_runtime::run(async {
    ///     // Pinned to this loop, so it cannot start before the request is withdrawn.
    ///     let t = braid_runtime::spawn_local(async {
    ///         braid_runtime::sleep(Duration::from_millis(5)).await?;
    ///         Ok("finished")
    ///     });
    ///     t.cancel();
    ///     assert_eq!(t.uncancel(), 0);
    ///     assert_eq!(t.await?, "finished");
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn uncancel(&self) -> usize {
        let header = self.raw.task().header();
        header
            .cancel
            .uncancel(crate::context::current_task_is(header))
    }

    /// Rust-style hard stop: the future is dropped at once on its loop, without running any
    /// more of it; awaiting the task gives a Cancelled error.
    ///
    /// ```
    /// use std::time::Duration;
    /// braid_runtime::run(async {
    ///     let t = braid_runtime::create_task(async {
    ///         braid_runtime::sleep(Duration::from_secs(60)).await
    ///     });
    ///     t.abort();
    ///     assert!(t.await.unwrap_err().is_cancelled());
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn abort(&self) {
        if self.header().state.abort() == state::WakeAction::Schedule {
            self.untyped().schedule();
        }
    }

    /// The task's id.
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let t = braid_runtime::create_task(async { Ok(()) });
    ///     assert_eq!(t.id(), t.as_ref().id());
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn id(&self) -> TaskId {
        self.raw.task().header().id
    }

    /// The task's name (`Task-<id>` unless set).
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let t = braid_runtime::create_task(async { Ok(()) });
    ///     t.set_name("worker");
    ///     assert_eq!(t.name(), "worker");
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn name(&self) -> String {
        self.raw.task().header().name()
    }

    /// Renames the task.
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let t = braid_runtime::create_task(async { Ok(()) });
    ///     t.set_name("worker");
    ///     assert_eq!(t.as_ref().name(), "worker");
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn set_name(&self, name: impl Into<String>) {
        self.raw.task().header().set_name(name.into());
    }

    /// Calls `f` once the task is done, scheduled on a loop (never synchronously, as asyncio
    /// schedules done callbacks with `call_soon`).
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let seen = braid_runtime::create_future::<bool>();
    ///     let t = braid_runtime::create_task(async { Ok(5) });
    ///     let s = seen.clone();
    ///     t.add_done_callback(move |task| {
    ///         let _ = s.set_result(task.done());
    ///     });
    ///     t.await?;
    ///     // The callback runs on the loop that finished the task, maybe not yet: wait for it.
    ///     assert!(seen.await?);
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn add_done_callback<F>(&self, f: F)
    where
        F: FnOnce(&TaskRef) + Send + 'static,
    {
        self.raw
            .task()
            .header()
            .add_done_callback(self.as_ref(), DoneCallback::Scheduled(Box::new(f)));
    }

    /// Registers braid's own completion hook: run at once on the completing thread.
    pub(crate) fn add_completion_hook(&self, hook: CompletionHook) {
        self.raw
            .task()
            .header()
            .add_done_callback(self.as_ref(), DoneCallback::Inline(hook));
    }

    /// This task's errors are a combinator's business: never report them as unretrieved.
    pub(crate) fn mark_quiet(&self) {
        self.raw.task().header().mark_quiet();
    }

    /// Polls for the output without registering this handle as what the current task
    /// awaits (so cancelling the awaiter does not cancel this task).
    pub(crate) fn poll_output(&mut self, cx: &mut Context<'_>) -> Poll<Result<T>> {
        self.raw.poll_join(cx)
    }

    /// Registers `waker` for this task's completion without taking its output; true if the
    /// task has completed (then no wake will come). A task a timed-out shutdown gave up
    /// while it was stuck is not completed: `wait` goes on waiting for it, to its timeout.
    pub(crate) fn watch(&self, waker: &Waker) -> bool {
        self.raw.task().header().watch(waker) == join::Watch::Completed
    }

    /// The task's header.
    pub(crate) fn header(&self) -> &Header {
        self.raw.task().header()
    }

    /// An untyped handle to the same task.
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let t = braid_runtime::create_task(async { Ok(()) });
    ///     let r: braid_runtime::TaskRef = t.as_ref();
    ///     assert_eq!(r.id(), t.id());
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn as_ref(&self) -> TaskRef {
        TaskRef::from_raw(self.untyped())
    }
}

impl<T: 'static> Future for Task<T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let this = self.get_mut();
        let target = this.raw.task().header();
        // One look at the running task, as the cancel check alone took: is it the target,
        // and else its pending request, if any.
        let mut awaits_itself = false;
        let pending = crate::context::with_current_header(|me| {
            awaits_itself = std::ptr::eq(me, target);
            (!awaits_itself)
                .then(|| me.cancel.take_cancel_to_pass_on())
                .flatten()
        })
        .flatten();
        if awaits_itself {
            // It would wait for itself for ever, and a cancel of it would go round and
            // round (asyncio refuses it too: "Task cannot await on itself"). A request
            // pending stays for its next await point.
            return Poll::Ready(Err(Error::new(
                ErrorKind::InvalidState,
                format!("{} cannot await itself", target.name()),
            )));
        }
        if let Some(taken) = pending {
            // A request pending as we await: asyncio cancels the awaited task and waits for
            // it to finish (its outcome becomes ours). We are on the chain of tasks passing
            // it on, so that a target awaiting us (a cycle) does not send it back round.
            let message = taken.error().message().map(str::to_owned);
            let accepted =
                passing_on_from_current(|| request_cancel(this.raw.task(), message.clone()));
            if accepted {
                this.registration.note_passed_on(message);
            } else {
                // The awaited task is done (or finished as the request travelled), so the
                // request reached nobody. Its outcome is still ours, and the request waits
                // for our next await point: as when it refuses a request made while we await
                // it, and as asyncio's await of a done task, which does not suspend. Handing
                // the request over instead threw away a value the task had returned (a
                // `wait_for` whose deadline came as the task finished on another loop).
                crate::context::put_back_cancel(taken);
            }
        }
        match this.raw.poll_join(cx) {
            Poll::Ready(output) => {
                let target = this.raw.task().header();
                this.registration.end_read(|| target.missed_cancel());
                Poll::Ready(output)
            }
            Poll::Pending => {
                let raw = &this.raw;
                this.registration
                    .register(|| AwaitTarget::Task(raw.task().clone()));
                Poll::Pending
            }
        }
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.registration.abandon();
        let header = self.raw.task().header();
        if header.join.drop_handle() {
            if let Some(error) = self.raw.unretrieved_error() {
                header.report_unretrieved(&TaskRef::from_raw(self.untyped()), error);
            }
        }
    }
}

impl<T: 'static> fmt::Debug for Task<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = self.raw.task().header();
        f.debug_struct("Task")
            .field("id", &h.id)
            .field("name", &h.name())
            .field("done", &h.done())
            .field("cancelling", &h.cancel.cancelling())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use crate::{create_task, Runtime};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::task::{Poll, Waker};

    /// One worker, so that the awaiting task runs only after the awaited one's runner has
    /// returned and dropped its reference.
    fn one_loop() -> Runtime {
        Runtime::builder().workers(1).build().expect("runtime")
    }

    /// Every byte of a task's cell is written at each spawn, and the cells of many tasks
    /// alive at once outgrow the cache: 128 bytes more took a driver of `spawn_many_local`
    /// from 2.45 to 3.0 ms (`benchmarks/NOTES.md`). With a tiny future and its output the
    /// cell fits three cache lines.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_task_header_takes_at_most_144_bytes_and_a_tiny_cell_192() {
        assert!(
            std::mem::size_of::<super::Header>() <= 144,
            "{} bytes",
            std::mem::size_of::<super::Header>()
        );
        // A task whose future holds one pointer, with a unit output.
        let shared = std::sync::Arc::new(());
        let tiny = async move {
            drop(shared);
            Ok(())
        };
        assert!(
            super::raw::cell_size_of(&tiny) <= 192,
            "{} bytes",
            super::raw::cell_size_of(&tiny)
        );
    }

    /// asyncio's order: a task's done callbacks run in the order they were added.
    #[test]
    fn done_callbacks_run_in_the_order_they_were_added() {
        let rt = one_loop();
        let order = rt
            .run_until_complete(async {
                let gate = crate::Promise::<()>::new();
                let task = create_task({
                    let gate = gate.clone();
                    async move { gate.await }
                });
                let ran = Arc::new(Mutex::new(Vec::new()));
                let last = crate::Promise::<()>::new();
                for i in 0..5 {
                    let (ran, last) = (ran.clone(), last.clone());
                    task.add_done_callback(move |_| {
                        ran.lock().unwrap().push(i);
                        if i == 4 {
                            last.set_result(()).unwrap();
                        }
                    });
                }
                gate.set_result(())?;
                task.await?;
                last.await?;
                let order = ran.lock().unwrap().clone();
                Ok(order)
            })
            .unwrap();
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_waker_kept_after_the_task_finished_holds_its_cell_and_wakes_nothing() {
        let rt = one_loop();
        let kept: Arc<Mutex<Option<Waker>>> = Arc::new(Mutex::new(None));
        let counts = rt
            .run_until_complete({
                let kept = kept.clone();
                async move {
                    let outer = create_task(async move {
                        let mut inner = create_task(std::future::poll_fn(move |cx| {
                            *kept.lock().unwrap() = Some(cx.waker().clone());
                            Poll::Ready(Ok(7))
                        }));
                        let value = (&mut inner).await?;
                        // The handle and the kept waker; the runner, the queue and the
                        // registry have let go.
                        let with_waker = inner.raw.task().ref_count();
                        Ok((value, with_waker, inner))
                    });
                    outer.await
                }
            })
            .expect("the tasks ran");
        let (value, with_waker, inner) = counts;
        assert_eq!(value, 7);
        assert_eq!(with_waker, 2, "the handle and the kept waker");
        let waker = kept
            .lock()
            .unwrap()
            .take()
            .expect("the task kept its waker");
        waker.wake_by_ref();
        let second = waker.clone();
        second.wake();
        assert!(inner.done(), "waking a finished task leaves it finished");
        assert_eq!(
            inner.raw.task().ref_count(),
            2,
            "wakes consume their own counts"
        );
        drop(waker);
        assert_eq!(
            inner.raw.task().ref_count(),
            1,
            "the last waker gave its count back"
        );
    }

    #[test]
    fn a_new_task_starts_with_one_count_per_owner_and_keeps_only_its_handles_once_done() {
        let rt = one_loop();
        let (at_spawn, after_join) = rt
            .run_until_complete(async {
                create_task(async {
                    let mut child = create_task(async { Ok(3) });
                    // Not run yet (one loop, and we have not yielded): the handle, the
                    // registry and the run queue.
                    let at_spawn = child.raw.task().ref_count();
                    assert_eq!((&mut child).await?, 3);
                    // The runner and the registry have let go; the handle is all that is left.
                    Ok((at_spawn, child.raw.task().ref_count()))
                })
                .await
            })
            .expect("the tasks ran");
        assert_eq!(at_spawn, 3);
        assert_eq!(after_join, 1);
    }

    #[test]
    fn a_task_spawned_after_one_of_its_kind_was_freed_on_this_loop_reuses_its_cell() {
        let rt = one_loop();
        let (first, second) = rt
            .run_until_complete(async {
                create_task(async {
                    let spawn = || create_task(async { Ok(1) });
                    let mut child = spawn();
                    let first = child.raw.task().as_non_null().as_ptr() as usize;
                    (&mut child).await?;
                    // The last count: the cell goes back to this loop thread's free list.
                    drop(child);
                    // Had it gone back to the allocator, one of these (a block of every
                    // size up to 1 KiB) would now hold it.
                    let decoys: Vec<Vec<u8>> =
                        (16..=1024).step_by(16).map(Vec::with_capacity).collect();
                    let second = spawn();
                    drop(decoys);
                    Ok((first, second.raw.task().as_non_null().as_ptr() as usize))
                })
                .await
            })
            .expect("the tasks ran");
        assert_eq!(first, second);
    }

    #[test]
    fn a_detached_task_drops_its_result_when_it_finishes_though_a_waker_keeps_it() {
        struct SetOnDrop(Arc<AtomicBool>);
        impl Drop for SetOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let rt = one_loop();
        let dropped = Arc::new(AtomicBool::new(false));
        let kept: Arc<Mutex<Option<Waker>>> = Arc::new(Mutex::new(None));
        let dropped_when_seen = rt
            .run_until_complete({
                let (dropped, kept) = (dropped.clone(), kept.clone());
                async move {
                    create_task(async move {
                        let finished = crate::Promise::<()>::new();
                        let signal = finished.clone();
                        let result = SetOnDrop(dropped.clone());
                        let mut result = Some(result);
                        // Dropping the handle detaches the task before it first runs.
                        drop(create_task(std::future::poll_fn(move |cx| {
                            *kept.lock().unwrap() = Some(cx.waker().clone());
                            // Wakes the awaiter, which runs on this one loop only after
                            // this task's runner has returned.
                            signal.set_result(()).expect("set once");
                            Poll::Ready(Ok(result.take().expect("polled once")))
                        })));
                        finished.await?;
                        Ok(dropped.load(Ordering::SeqCst))
                    })
                    .await
                }
            })
            .expect("the tasks ran");
        assert!(
            kept.lock().unwrap().is_some(),
            "a waker still holds the task"
        );
        assert!(
            dropped_when_seen,
            "nobody can take the result, so it is not kept"
        );
    }

    #[test]
    fn every_poll_of_a_task_lends_a_waker_that_will_wake_the_ones_kept_before() {
        let rt = one_loop();
        let same = rt
            .run_until_complete(async {
                let mut first: Option<Waker> = None;
                create_task(std::future::poll_fn(move |cx| match &first {
                    None => {
                        first = Some(cx.waker().clone());
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                    Some(kept) => Poll::Ready(Ok(kept.will_wake(cx.waker()))),
                }))
                .await
            })
            .expect("the task ran");
        // Socket waiters and join wakers dedupe by `will_wake`; a fresh waker per poll would
        // grow their lists.
        assert!(same);
    }
}
