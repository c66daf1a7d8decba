//! Thread-local context: which loop this thread is running (if any) and which task it is
//! polling right now.
//!
//! The running task is kept as a raw pointer set for exactly one poll (see `task::raw`), so
//! that entering a task costs no reference-count traffic; `current_task()` turns it into a
//! counted handle only when asked.

use crate::event_loop::LoopCtx;
use crate::task::cancel::AwaitEnd;
use crate::task::raw;
use crate::task::{AwaitTarget, Header, TaskRef};
use braid_bridge::Error;
use std::cell::{Cell, RefCell};
use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::rc::Rc;

thread_local! {
    static LOOP: RefCell<Option<Rc<LoopCtx>>> = const { RefCell::new(None) };
    static TASK: Cell<Option<NonNull<Header>>> = const { Cell::new(None) };
    /// The task whose whole future this thread is dropping (`TaskCell::finish`), if any.
    static DROPPING: Cell<Option<NonNull<Header>>> = const { Cell::new(None) };
}

/// The loop this thread is running, if any (none once the thread's context is gone, in a
/// thread-local's destructor as the thread exits).
#[inline]
pub(crate) fn current_loop() -> Option<Rc<LoopCtx>> {
    LOOP.try_with(|l| l.borrow().clone()).ok().flatten()
}

/// True once this thread's loop context is gone (in a thread-local's destructor as the
/// thread exits): no loop can run on it any more.
pub(crate) fn loop_context_gone() -> bool {
    LOOP.try_with(|_| ()).is_err()
}

/// Makes `ctx` this thread's loop until the guard drops.
pub(crate) fn enter_loop(ctx: Rc<LoopCtx>) -> LoopGuard {
    let bridge = BridgeGuards::enter(&ctx);
    let previous = LOOP.with(|l| l.borrow_mut().replace(ctx));
    LoopGuard {
        previous,
        _bridge: bridge,
    }
}

/// As [`enter_loop`], or `None` once this thread's context is gone (in a thread-local's
/// destructor as the thread exits, after the context's own).
pub(crate) fn try_enter_loop(ctx: Rc<LoopCtx>) -> Option<LoopGuard> {
    let bridge = BridgeGuards::enter(&ctx);
    let previous = LOOP.try_with(|l| l.borrow_mut().replace(ctx)).ok()?;
    Some(LoopGuard {
        previous,
        _bridge: bridge,
    })
}

pub(crate) struct LoopGuard {
    previous: Option<Rc<LoopCtx>>,
    /// Dropped after `drop` below has restored the loop (fields drop after it).
    _bridge: BridgeGuards,
}

impl Drop for LoopGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        // `try_with`: a guard from `try_enter_loop` may drop as the thread exits.
        let _ = LOOP.try_with(|l| *l.borrow_mut() = previous);
    }
}

/// What the bridge crate, which knows nothing of loops and tasks, must know of a thread
/// while it runs a loop of a runtime: a worker's, a host loop that `run_until_complete` or
/// `run_forever` drives (API.md: that thread "acts as one more loop"), or the one a shutdown
/// drives to finish the tasks pinned to it.
struct BridgeGuards {
    /// The thread is a loop thread of the runtime: blocking on a future it must complete
    /// (`ConcurrentFuture::result`, `bridge::wait`) is refused at once instead of hanging.
    _loop_thread: braid_bridge::LoopThreadGuard,
    /// Awaiting a `ConcurrentFuture` in a task polled here is a cancellation point.
    _cancel_point: braid_bridge::TaskCancelPointGuard,
}

impl BridgeGuards {
    fn enter(ctx: &LoopCtx) -> BridgeGuards {
        BridgeGuards {
            _loop_thread: braid_bridge::enter_loop_thread(ctx.rt.id),
            _cancel_point: braid_bridge::enter_task_cancel_point(concurrent_future_cancel_point),
        }
    }
}

/// The cancellation point of an await of a `ConcurrentFuture` (see
/// `braid_bridge::TaskCancelPoint`): the running task's pending request, if any, goes to
/// `pass_on`, which cancels the future; if it refuses (the future is done: its outcome is the
/// await's), the request is put back for the task's next await point, as `Task`'s await does.
/// A leaf, as [`cancel_point`] is: the task awaits nothing a canceller could pass a request
/// to (the future's own cancel is how a request reaches it, at this point), so any target it
/// registered earlier is forgotten.
fn concurrent_future_cancel_point(pass_on: &mut dyn FnMut() -> bool) -> Option<Error> {
    with_current_header(|h| {
        let taken = h.cancel.take_cancel_to_pass_on();
        h.cancel.clear_awaiting(None);
        let taken = taken?;
        // No lock is held here: `pass_on` runs the future's cancel hook (another task's
        // cancel) and its done callbacks.
        if pass_on() {
            Some(taken.error().clone())
        } else {
            h.cancel.put_back(taken);
            None
        }
    })
    .flatten()
}

/// Marks `task` as this thread's running task until the guard drops. The caller keeps the
/// task alive (it holds a `TaskPtr`) for the guard's whole life.
#[inline]
pub(crate) fn enter_task(task: NonNull<Header>) -> TaskGuard {
    let previous = TASK.with(|t| t.replace(Some(task)));
    TaskGuard { previous }
}

pub(crate) struct TaskGuard {
    previous: Option<NonNull<Header>>,
}

impl Drop for TaskGuard {
    #[inline]
    fn drop(&mut self) {
        TASK.with(|t| t.set(self.previous));
    }
}

/// Marks `task`'s whole future as being dropped on this thread until the guard drops: an
/// await registration of that task dropped meanwhile is its future ending, not a future moved
/// away from it (see [`AwaitRegistration::abandon`]).
pub(crate) fn dropping_future_of(task: NonNull<Header>) -> DroppingGuard {
    let previous = DROPPING.try_with(|d| d.replace(Some(task))).ok().flatten();
    DroppingGuard { previous }
}

pub(crate) struct DroppingGuard {
    previous: Option<NonNull<Header>>,
}

impl Drop for DroppingGuard {
    fn drop(&mut self) {
        let _ = DROPPING.try_with(|d| d.set(self.previous));
    }
}

/// True if this thread is dropping the whole future of `header`'s task.
fn dropping_future_is(header: &Header) -> bool {
    DROPPING
        .try_with(|d| d.get())
        .ok()
        .flatten()
        .is_some_and(|ptr| std::ptr::eq(ptr.as_ptr(), header))
}

/// Runs `f` with the running task's header, if a task is running on this thread.
#[inline]
pub(crate) fn with_current_header<R>(f: impl FnOnce(&Header) -> R) -> Option<R> {
    TASK.with(|t| t.get()).map(|ptr| raw::with_header(ptr, f))
}

/// The running task, as a counted handle.
pub(crate) fn current_task() -> Option<TaskRef> {
    TASK.with(|t| t.get()).map(raw::current_task_ref)
}

/// True if `header` is the running task's.
pub(crate) fn current_task_is(header: &Header) -> bool {
    with_current_header(|h| std::ptr::eq(h, header)).unwrap_or(false)
}

/// Delivers the running task's pending cancel request, once: the check of the futures that
/// register an awaited target themselves (a `Task`, a `Promise`, a gather). Leaf futures use
/// [`cancel_point`], which also forgets a stale target.
#[inline]
pub(crate) fn take_cancel() -> Option<Error> {
    with_current_header(|h| h.cancel.take_cancel()).flatten()
}

/// [`take_cancel`] for an await that passes the request on to its target, which may turn
/// out to be done: [`put_back_cancel`] then returns the request as it was.
#[inline]
pub(crate) fn take_cancel_to_pass_on() -> Option<crate::task::cancel::TakenCancel> {
    with_current_header(|h| h.cancel.take_cancel_to_pass_on()).flatten()
}

/// Returns a request [`take_cancel_to_pass_on`] took, which no target received.
pub(crate) fn put_back_cancel(taken: crate::task::cancel::TakenCancel) {
    with_current_header(|h| h.cancel.put_back(taken));
}

/// The cancellation point of a leaf future that waits on nothing a cancel could be passed
/// on to (a socket, a timer, a lock): [`take_cancel`], and forgets any target the task
/// registered earlier, in this poll or before. That is what it awaits now, so a later
/// request must come here, not go to a `Task` handle it once polled and kept.
#[inline]
pub(crate) fn cancel_point() -> Option<Error> {
    with_current_header(|h| {
        let cancel = h.cancel.take_cancel();
        h.cancel.clear_awaiting(None);
        cancel
    })
    .flatten()
}

/// Forgets what the running task awaits (`key`'s registration only, or any).
pub(crate) fn clear_awaiting(key: Option<usize>) {
    with_current_header(|h| h.cancel.clear_awaiting(key));
}

/// A leaf future's registration as what its task awaits (a Task, a Promise or a gather), so that
/// cancelling the task cancels it too. It remembers the task that registered, so that dropping
/// the future clears that task's registration from whatever thread drops it (a stale
/// registration would swallow a later cancel) and hands back to the task a request passed on
/// through it (the target's outcome, its way to the task, will never be read).
pub(crate) struct AwaitRegistration {
    key: NonZeroUsize,
    registrar: Option<TaskRef>,
}

impl AwaitRegistration {
    /// A registration keyed by the address of the awaited target's shared state.
    pub(crate) fn new<T: ?Sized>(target: NonNull<T>) -> AwaitRegistration {
        AwaitRegistration {
            key: target.cast::<()>().addr(),
            registrar: None,
        }
    }

    /// Registers `target` for the running task, once (no-op outside a task).
    pub(crate) fn register(&mut self, target: impl FnOnce() -> AwaitTarget) {
        self.follow_the_future();
        if self.registrar.is_some() {
            return;
        }
        if let Some(task) = current_task() {
            task.header().cancel.set_awaiting(self.key, target());
            self.registrar = Some(task);
        }
    }

    /// A pending request of the task, taken at this await, was passed on to the target,
    /// which accepted it: it is remembered by the task that registered (or, not registered
    /// yet, the running task), and settled when this await ends.
    pub(crate) fn note_passed_on(&mut self, message: Option<String>) {
        self.follow_the_future();
        let key = self.key.get();
        match &self.registrar {
            Some(task) => task.header().cancel.note_passed_on(key, message),
            None => {
                with_current_header(|h| h.cancel.note_passed_on(key, message));
            }
        }
    }

    /// The future read its target's outcome (it is ready): withdraws the registration and
    /// settles the requests passed on through it (see `task::cancel`). `missed`: the target
    /// finished without receiving a request that reached it. Called by the running task.
    pub(crate) fn end_read(&mut self, missed: impl FnOnce() -> bool) {
        self.follow_the_future();
        let key = self.key.get();
        let delivered = match self.registrar.take() {
            Some(task) => {
                let delivered = task.header().cancel.end_await(key, AwaitEnd::Read, missed);
                delivered.then_some(task)
            }
            // Never registered (it was ready at once), but a request of ours may have been
            // passed on through it in this very poll (`Task::poll`). No counted handle
            // unless it is needed: this is every ready await's path.
            None => with_current_header(|h| h.cancel.end_await(key, AwaitEnd::Read, missed))
                .unwrap_or(false)
                .then(current_task)
                .flatten(),
        };
        if let Some(task) = delivered {
            // Its other futures may have been polled already in this poll.
            task.wake();
        }
    }

    /// The future moved to another task since it registered (a `Task` handle polled by one
    /// task, then sent to another that awaits it): the task that registered stopped
    /// awaiting the target without reading its outcome, as if the future were dropped in a
    /// select, and a request it passed on through it comes back to it. The running task
    /// then registers afresh; else its cancels would be kept, and settled, by the first.
    fn follow_the_future(&mut self) {
        let moved = self
            .registrar
            .as_ref()
            .is_some_and(|task| !current_task_is(task.header()));
        if moved {
            // A poll of another task, not the drop of the registrar's future: `abandon`
            // ends it as a moved future's await.
            self.abandon();
        }
    }

    /// The future stops awaiting without reading its target's outcome (it is dropped):
    /// withdraws the registration, and a request passed on through it comes back to the
    /// task, since that outcome was its only way to reach it. Unless the task's whole future
    /// is being dropped (`dropping_future_of`): then it has no await point left. Dropped
    /// anywhere else (moved to another task or thread first), it is a moved future's end.
    pub(crate) fn abandon(&mut self) {
        if let Some(task) = self.registrar.take() {
            let header = task.header();
            let key = self.key.get();
            let delivered = if current_task_is(header) {
                header.cancel.end_await(key, AwaitEnd::Abandoned, || false)
            } else if dropping_future_is(header) {
                header.cancel.end_await(key, AwaitEnd::Dropped, || false)
            } else {
                header.cancel.end_await_moved(key)
            };
            if delivered {
                // A select drops this after polling its other branches: without a wake,
                // the task could sleep on them with the request undelivered.
                task.wake();
            }
        }
    }
}

impl Drop for AwaitRegistration {
    fn drop(&mut self) {
        self.abandon();
    }
}
