//! `TaskGroup`: asyncio's structured concurrency (Python 3.12/3.13 `asyncio.TaskGroup`).

use crate::context;
use crate::event_loop::{spawn_failed, spawn_task, spawn_task_spread};
use crate::scheduler::RuntimeShared;
use crate::task::raw::Exclusive;
use crate::task::{Task, TaskId, TaskRef};
use braid_bridge::sync::Mutex;
use braid_bridge::{Error, ErrorKind, Result};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// A handle for creating tasks in a group run by [`task_group`] (asyncio's `TaskGroup`).
/// Cheap to clone and `Send + Sync`: children may hold one to create more children.
///
/// # Examples
///
/// ```
/// braid_runtime::run(async {
///     let total = braid_runtime::task_group(|group| async move {
///         let a = group.create_task(async { Ok(1) });
///         let b = group.create_task(async { Ok(2) });
///         Ok(a.await? + b.await?)
///     }).await?;
///     assert_eq!(total, 3);
///     Ok(())
/// }).unwrap();
/// ```
#[derive(Clone)]
pub struct TaskGroup {
    shared: Arc<GroupShared>,
}

struct GroupShared {
    rt: Arc<RuntimeShared>,
    /// The task running the group's body: cancelled when a child fails.
    parent: Option<TaskRef>,
    state: Mutex<GroupState>,
}

#[derive(Default)]
struct GroupState {
    /// The body returned: the group only waits for its children now.
    exiting: bool,
    /// A child failed, the body failed, or the group was cancelled: the children are being
    /// cancelled and no new one may start. After a child's failure, set only once the abort
    /// it queued runs (see `GroupShared::defer_abort`).
    aborting: bool,
    /// A child's failure queued the abort of the group: the failures that follow it only
    /// add their error.
    abort_queued: bool,
    /// The group's own cancel of its parent task, and who withdraws it.
    parent_cancel: ParentCancel,
    live: HashMap<TaskId, TaskRef>,
    /// Every child error, in the order the children failed.
    errors: Vec<Error>,
    /// The exit, waiting for `live` to empty.
    waker: Option<Waker>,
}

impl TaskGroup {
    /// Creates a child task of the group. On a group that is finished or shutting down
    /// (aborting after a failure or a cancel), the task is returned already failed with an
    /// `InvalidState` error and its coroutine never runs; see
    /// [`try_create_task`](TaskGroup::try_create_task) to get that error directly. That
    /// refusal is the caller's (asyncio's `create_task` raises it): awaiting the task gives
    /// it, and dropping the task unawaited does not report it as never retrieved.
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let v = braid_runtime::task_group(|group| async move {
    ///         let child = group.create_task(async { Ok("child") });
    ///         child.await
    ///     }).await?;
    ///     assert_eq!(v, "child");
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn create_task<F, T>(&self, fut: F) -> Task<T>
    where
        F: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        match self.try_create_task(fut) {
            Ok(task) => task,
            Err(error) => {
                let task = spawn_failed(&self.shared.rt, error);
                // The caller's to see, as an error returned to it: not the loop's to report.
                task.mark_quiet();
                task
            }
        }
    }

    /// As [`create_task`](TaskGroup::create_task), with the refusal as an error.
    ///
    /// # Errors
    ///
    /// `InvalidState` if the group is finished or shutting down.
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let mut kept = None;
    ///     braid_runtime::task_group(|group| {
    ///         kept = Some(group.clone());
    ///         async { Ok(()) }
    ///     }).await?;
    ///     let late = kept.unwrap().try_create_task(async { Ok(()) });
    ///     assert_eq!(late.unwrap_err().kind(), braid_runtime::ErrorKind::InvalidState);
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn try_create_task<F, T>(&self, fut: F) -> Result<Task<T>>
    where
        F: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let task = {
            let mut state = self.shared.state.lock();
            if state.exiting && state.live.is_empty() {
                return Err(Error::new(
                    ErrorKind::InvalidState,
                    "the TaskGroup is finished",
                ));
            }
            if state.aborting {
                return Err(Error::new(
                    ErrorKind::InvalidState,
                    "the TaskGroup is shutting down",
                ));
            }
            // Spawned and counted under the lock, so that the group cannot finish in between.
            let task = spawn_task(&self.shared.rt, None, fut).0;
            // The group takes charge of every failure of its children, so none is ever
            // "never retrieved". Marked here, before the handle leaves us: marked by the
            // group's hook, as it once was, a handle dropped between the child's completion
            // and that hook found the error unquieted and reported it (loom model
            // `loom_quiet_before_the_handle_is_handed_out_is_never_reported` and its twin).
            task.mark_quiet();
            state.live.insert(task.id(), task.as_ref());
            task
        };
        // Outside the lock: a child already complete runs the hook right here.
        let shared = self.shared.clone();
        task.add_completion_hook(Box::new(move |child, failure| {
            shared.on_child_done(child, failure);
        }));
        Ok(task)
    }
}

impl GroupShared {
    /// asyncio's `_on_task_done`, run on the thread that completed the child. A failure is
    /// counted here, and the first one queues the group's abort (see
    /// [`defer_abort`](Self::defer_abort)); the child leaves the group once that is made.
    fn on_child_done(self: &Arc<Self>, child: &TaskRef, failure: Option<&Error>) {
        let mut state = self.state.lock();
        let mut defer = false;
        if let Some(error) = failure.filter(|_| !child.cancelled()) {
            // The group reports it (the child was quieted at creation).
            state.errors.push(error.clone());
            defer = !state.aborting && !state.parent_cancel.requested && !state.abort_queued;
            state.abort_queued |= defer;
        }
        if !defer {
            let waker = state.leave(child);
            drop(state);
            if let Some(waker) = waker {
                waker.wake();
            }
            return;
        }
        drop(state);
        self.defer_abort(child.clone());
    }

    /// Queues the abort that `child`'s failure makes behind the task steps already queued
    /// where it failed, as asyncio runs `_on_task_done` as a done callback queued with
    /// `call_soon`: siblings woken in the same iteration (three children failing in their
    /// first step, two woken by one timer deadline) take their step, and fail, before the
    /// abort cancels them; inline, it cancelled them before that step.
    ///
    /// The abort is a task step, not a callback: a loop runs its ready callbacks before its
    /// task steps, and leaves its steps for any callback queued meanwhile (`run_once`,
    /// `run_tasks`), so a callback would still run ahead of the queued siblings. A task
    /// spawned here goes to the back of this loop's run queue (FIFO, served after its pinned
    /// tasks; a thief takes from the front, so it takes the steps ahead of it too). Tasks
    /// woken off the loops wait in the shared injector, served after the local queue: the
    /// step, once reached, moves behind them too (see [`AbortStep`]). With one loop that is
    /// asyncio's order; with several, a sibling mid-step on another loop finishes its step
    /// and receives the cancel at its next await.
    fn defer_abort(self: &Arc<Self>, child: TaskRef) {
        let step = AbortStep {
            abort: DeferredAbort {
                group: Some(self.clone()),
                child,
            },
            moved: false,
        };
        let (task, accepted) = spawn_task(&self.rt, None, step);
        if accepted {
            task.set_name("TaskGroup abort");
        } else {
            // A closing runtime refused the step: dropping it made the abort at once, and
            // its Closed error is nobody's to report.
            task.mark_quiet();
        }
    }

    /// The abort a child's failure queued, now made (the rest of asyncio's `_on_task_done`):
    /// unless the group is aborting already (the body failed, the group was cancelled or
    /// dropped meanwhile), it aborts the group and cancels the body where it awaits, to be
    /// uncancelled on exit. Then the failed child leaves the group.
    fn abort_after_failure(&self, child: &TaskRef) {
        let (cancel_children, cancel_parent) = {
            let mut state = self.state.lock();
            if state.aborting || state.parent_cancel.requested {
                (Vec::new(), None)
            } else {
                let children = state.abort();
                if self.parent.is_some() {
                    state.parent_cancel.request();
                }
                (children, self.parent.clone())
            }
        };
        // The child stays live until the cancels are made. Else the other children could
        // finish on other loops meanwhile and the group return, its `uncancel` finding
        // nothing yet to withdraw; the parent's cancel then landed after the group, a stray
        // Cancelled in the code that follows it. It leaves even if a cancel panics (a
        // waker's `wake`): the body must not wait for good for a child that is done.
        let _leave = LeaveOnDrop {
            group: self,
            child,
            made_parent_cancel: cancel_parent.is_some(),
        };
        for child in cancel_children {
            child.cancel();
        }
        if let Some(parent) = cancel_parent {
            parent.cancel();
        }
    }

    /// Takes back the cancel of the parent that a child's failure made, for a group dropped
    /// before its exit could (see `TaskGroupRun`'s `Drop`). The group's own request, taken
    /// back on the parent's behalf: the abort step that made it may withdraw it from another
    /// loop while the parent is parked at an await past the group, where a plain `uncancel`
    /// would leave it handed to that await (found by helper-65).
    fn withdraw_parent_cancel(&self) {
        if let Some(parent) = &self.parent {
            parent.withdraw_own_cancel();
        }
    }

    /// Marks the group aborting and cancels its live children.
    fn abort(&self) {
        let children = self.state.lock().abort();
        for child in children {
            child.cancel();
        }
    }
}

/// Takes a done child out of the group's live set when dropped, and wakes the body if it
/// was the last (see `GroupShared::abort_after_failure`).
struct LeaveOnDrop<'a> {
    group: &'a GroupShared,
    child: &'a TaskRef,
    /// This child cancelled the parent: if the group was dropped meanwhile, it withdraws it.
    made_parent_cancel: bool,
}

impl Drop for LeaveOnDrop<'_> {
    fn drop(&mut self) {
        let (waker, withdraw) = {
            let mut state = self.group.state.lock();
            let waker = state.leave(self.child);
            let withdraw = self.made_parent_cancel && state.parent_cancel.made();
            (waker, withdraw)
        };
        if withdraw {
            self.group.withdraw_parent_cancel();
        }
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// A failed child's abort of its group, made once: by the [`AbortStep`] that carries it, or,
/// if that step never runs (refused by a closing runtime, cancelled before it started,
/// dropped by a shutdown), when it is dropped. The failed child stays in the group until
/// then.
struct DeferredAbort {
    /// `None` once made (or moved to another step).
    group: Option<Arc<GroupShared>>,
    child: TaskRef,
}

impl DeferredAbort {
    fn make(&mut self) {
        if let Some(group) = self.group.take() {
            group.abort_after_failure(&self.child);
        }
    }

    /// This abort, to be made by another step; `self` is left with nothing to make.
    fn take(&mut self) -> DeferredAbort {
        DeferredAbort {
            group: self.group.take(),
            child: self.child.clone(),
        }
    }
}

impl Drop for DeferredAbort {
    fn drop(&mut self) {
        self.make();
    }
}

/// The task step that makes a [`DeferredAbort`] (see `GroupShared::defer_abort`).
struct AbortStep {
    abort: DeferredAbort,
    /// The step has moved behind the shared injector's tasks.
    moved: bool,
}

impl Future for AbortStep {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        let Some(group) = &this.abort.group else {
            return Poll::Ready(Ok(()));
        };
        if !this.moved && !group.rt.injector.is_empty() {
            // Tasks wait in the injector, maybe since before the failure (woken off the
            // loops: the host loop fires timers too), and asyncio's one loop would run them
            // before the abort. A spread task goes behind them. This loop's steps queued
            // before the failure have run by now: what else it may overtake came later.
            let rt = group.rt.clone();
            let moved = AbortStep {
                abort: this.abort.take(),
                moved: true,
            };
            // Refused by a closing runtime, it is dropped, which makes the abort at once.
            let task = spawn_task_spread(&rt, moved);
            task.set_name("TaskGroup abort");
            return Poll::Ready(Ok(()));
        }
        this.abort.make();
        Poll::Ready(Ok(()))
    }
}

/// The group's own cancel of its parent (asyncio's `_parent_cancel_requested`), made by the
/// abort the first failing child queued, and withdrawn (`uncancel`) by the group's exit, or,
/// for a group future dropped before its exit, by that drop or, if the cancel is still being
/// made then, by the abort making it, once made. Kept under the group's lock; loom model
/// `loom_group_dropped_while_a_child_cancels_the_parent_*` (its "child" is that abort).
#[derive(Default)]
struct ParentCancel {
    /// The group cancelled (or is cancelling) its parent and has not withdrawn it.
    requested: bool,
    /// The abort that requested it has not made the cancel yet.
    in_flight: bool,
    /// The group's future was dropped before its exit.
    run_dropped: bool,
}

impl ParentCancel {
    /// A failed child's abort is about to cancel the parent (it calls [`made`](Self::made)
    /// after).
    fn request(&mut self) {
        self.requested = true;
        self.in_flight = true;
    }

    /// The abort made the cancel: true if it must withdraw it now (the group's future was
    /// dropped meanwhile, leaving that to it).
    fn made(&mut self) -> bool {
        self.in_flight = false;
        self.run_dropped && std::mem::take(&mut self.requested)
    }

    /// The group's future is dropped before its exit: true if the dropper must withdraw the
    /// cancel now. Not while it is being made: withdrawn before it is made, it would land
    /// after, for good.
    fn run_dropped(&mut self) -> bool {
        self.run_dropped = true;
        #[cfg(loom)]
        if crate::sync::loom_support::GROUP_WITHDRAWS_IN_FLIGHT
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return std::mem::take(&mut self.requested);
        }
        !self.in_flight && std::mem::take(&mut self.requested)
    }
}

impl GroupState {
    /// `child` is done: out of the live set; the body's waker if it was the last.
    fn leave(&mut self, child: &TaskRef) -> Option<Waker> {
        self.live.remove(&child.id());
        if self.live.is_empty() {
            self.waker.take()
        } else {
            None
        }
    }

    /// Marks the group aborting; the children to cancel (outside the lock).
    fn abort(&mut self) -> Vec<TaskRef> {
        self.aborting = true;
        self.live.values().filter(|t| !t.done()).cloned().collect()
    }
}

/// Runs `body` with a new [`TaskGroup`], then waits for every child, including ones created
/// late by the body or by other children (asyncio's `async with TaskGroup() as group:`).
///
/// * The first child failure (or a body failure) cancels the other children and the body
///   (at its current await); the result is then an error of kind `Group` whose
///   [`group_errors`](crate::Error::group_errors) lists every child error, the body's last.
/// * A cancel of the task running the group cancels the children and gives a plain
///   Cancelled error, unless a child raised an error while cancelling: errors win over the
///   cancel. The task's `cancelling()` count is as it was once the group has handled a cancel
///   of its own making.
/// * A panic in the body is its error (kind `Panicked`).
/// * Nested groups nest their errors.
/// * The abort after a child's failure runs behind the task steps already queued where the
///   child failed, as asyncio's done callback does: children failing in the same iteration
///   all run, and all their errors are kept.
/// * Dropped before its end (a select whose other branch won), the group cancels its
///   children and takes back its cancel of the running task; a Cancelled that cancel already
///   delivered to another await of the task (the select's other branch) stays delivered.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use braid_runtime::{sleep, task_group, Error, ErrorKind};
/// braid_runtime::run(async {
///     let err = task_group(|group| async move {
///         group.create_task(async { sleep(Duration::from_secs(60)).await });
///         group.create_task(async { Err::<(), _>(Error::msg("boom")) });
///         Ok(())
///     }).await.unwrap_err();
///     assert_eq!(err.kind(), ErrorKind::Group);
///     assert_eq!(err.group_errors().len(), 1); // the sleeper was cancelled, not failed
///     Ok(())
/// }).unwrap();
/// ```
pub fn task_group<B, Fut, T>(body: B) -> TaskGroupRun<B, Fut, T>
where
    B: FnOnce(TaskGroup) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    TaskGroupRun {
        step: Step::Start(Some(Exclusive::new(Box::new(body)))),
        group: None,
        outcome: None,
        propagate_cancel: None,
    }
}

/// The future of [`task_group`].
///
/// # Cancel safety
///
/// Dropping it before it finishes cancels the children still running (nobody is left to
/// wait for them).
#[must_use = "futures do nothing unless you `.await` them"]
pub struct TaskGroupRun<B, Fut, T> {
    step: Step<B, Fut>,
    group: Option<TaskGroup>,
    /// The body's outcome, once it returned (boxed, like the closure and the body's
    /// future, so that the group future is `Unpin` whatever they are).
    outcome: Option<Exclusive<Box<Result<T>>>>,
    /// The Cancelled error to re-raise, if the group was cancelled from outside.
    propagate_cancel: Option<Error>,
}

enum Step<B, Fut> {
    Start(Option<Exclusive<Box<B>>>),
    Body(Exclusive<Pin<Box<Fut>>>),
    Exiting,
    Done,
}

impl<B, Fut, T> Future for TaskGroupRun<B, Fut, T>
where
    B: FnOnce(TaskGroup) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let this = self.get_mut();
        loop {
            match &mut this.step {
                Step::Start(body) => {
                    let Some(ctx) = context::current_loop() else {
                        this.step = Step::Done;
                        return Poll::Ready(Err(Error::new(
                            ErrorKind::InvalidState,
                            "task_group() needs a running braid event loop",
                        )));
                    };
                    let group = TaskGroup {
                        shared: Arc::new(GroupShared {
                            rt: ctx.rt.clone(),
                            parent: crate::current_task(),
                            state: Mutex::new(GroupState::default()),
                        }),
                    };
                    let body = body.take().expect("started once").into_inner();
                    let fut = body(group.clone());
                    this.group = Some(group);
                    this.step = Step::Body(Exclusive::new(Box::pin(fut)));
                }
                Step::Body(fut) => {
                    let fut = fut.get_mut().as_mut();
                    let outcome = match catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
                        Ok(Poll::Pending) => return Poll::Pending,
                        Ok(Poll::Ready(outcome)) => outcome,
                        Err(panic) => Err(Error::from_panic(panic)),
                    };
                    this.begin_exit(&outcome);
                    this.outcome = Some(Exclusive::new(Box::new(outcome)));
                    this.step = Step::Exiting;
                }
                Step::Exiting => {
                    if !this.poll_children_done(cx) {
                        return Poll::Pending;
                    }
                    this.step = Step::Done;
                    return Poll::Ready(this.finish());
                }
                Step::Done => {
                    return Poll::Ready(Err(super::polled_after_completion("task_group")));
                }
            }
        }
    }
}

impl<B, Fut, T> TaskGroupRun<B, Fut, T> {
    fn shared(&self) -> &Arc<GroupShared> {
        &self
            .group
            .as_ref()
            .expect("the group exists once started")
            .shared
    }

    /// asyncio's `__aexit__`, first part: the body returned `outcome`.
    fn begin_exit(&mut self, outcome: &Result<T>) {
        if let Err(error) = outcome {
            if error.is_cancelled() {
                self.propagate_cancel = Some(error.clone());
            }
        }
        let shared = self.shared().clone();
        let abort = {
            let mut state = shared.state.lock();
            state.exiting = true;
            outcome.is_err() && !state.aborting
        };
        if abort {
            shared.abort();
        }
    }

    /// Waits for the children; a cancel of our task meanwhile aborts the group.
    fn poll_children_done(&mut self, cx: &mut Context<'_>) -> bool {
        let shared = self.shared().clone();
        if shared.state.lock().live.is_empty() {
            // asyncio's `__aexit__` awaits only while children are live: with none, a
            // request pending now is not delivered here but at the task's next await point,
            // and the body's value stands. Taking it turned that value into Cancelled.
            context::clear_awaiting(None);
            return true;
        }
        if let Some(cancel) = context::take_cancel() {
            let aborting = shared.state.lock().aborting;
            if !aborting {
                self.propagate_cancel = Some(cancel);
                shared.abort();
            }
        }
        context::clear_awaiting(None);
        let mut state = shared.state.lock();
        if state.live.is_empty() {
            state.waker = None;
            return true;
        }
        match &state.waker {
            Some(old) if old.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        false
    }

    /// asyncio's `__aexit__`, last part: every child is done.
    fn finish(&mut self) -> Result<T> {
        let shared = self.shared().clone();
        let outcome = self.outcome.take().expect("the body returned").into_inner();
        let outcome = *outcome;
        let (parent_cancel_requested, mut errors) = {
            let mut state = shared.state.lock();
            (
                state.parent_cancel.requested,
                std::mem::take(&mut state.errors),
            )
        };
        let mut propagate_cancel = self.propagate_cancel.take();
        if parent_cancel_requested {
            if let Some(parent) = &shared.parent {
                if parent.uncancel() == 0 {
                    // The only cancel was ours: it is not to be propagated.
                    propagate_cancel = None;
                }
            }
        }
        if let Some(cancel) = propagate_cancel {
            if errors.is_empty() {
                return Err(cancel);
            }
        }
        let value = match outcome {
            Ok(value) => value,
            Err(error) => {
                if !error.is_cancelled() {
                    errors.push(error.clone());
                }
                if errors.is_empty() {
                    return Err(error);
                }
                // Only reached with errors: the value is never needed.
                return Err(self.group_error(errors));
            }
        };
        if errors.is_empty() {
            Ok(value)
        } else {
            Err(self.group_error(errors))
        }
    }

    fn group_error(&self, errors: Vec<Error>) -> Error {
        // A cancel from outside is kept pending (asyncio uncancels and re-cancels the parent),
        // so that the task still sees it at its next await.
        if let Some(parent) = &self.shared().parent {
            if parent.cancelling() > 0 {
                parent.uncancel();
                parent.cancel();
            }
        }
        Error::group("unhandled errors in a TaskGroup", errors)
    }
}

impl<B, Fut, T> Drop for TaskGroupRun<B, Fut, T> {
    fn drop(&mut self) {
        if matches!(self.step, Step::Done) {
            return;
        }
        let Some(group) = &self.group else { return };
        group.shared.abort();
        // A child's failure cancelled our task, and only `finish` takes that back: dropped
        // before it (a select whose other branch won), the group withdraws it here, so that
        // it does not cancel what the task does next and `cancelling()` comes back down; or
        // the abort making it withdraws it once made, if it is still being made (an abort
        // still queued finds the group aborting and makes none). A request already
        // delivered to another await of the task cannot be taken back.
        let withdraw = group.shared.state.lock().parent_cancel.run_dropped();
        if withdraw {
            group.shared.withdraw_parent_cancel();
        }
    }
}

impl fmt::Debug for TaskGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.state.lock();
        f.debug_struct("TaskGroup")
            .field("live", &state.live.len())
            .field("errors", &state.errors.len())
            .field("aborting", &state.aborting)
            .field("exiting", &state.exiting)
            .finish()
    }
}

impl<B, Fut, T> fmt::Debug for TaskGroupRun<B, Fut, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let step = match self.step {
            Step::Start(_) => "start",
            Step::Body(_) => "body",
            Step::Exiting => "exiting",
            Step::Done => "done",
        };
        f.debug_struct("TaskGroupRun")
            .field("step", &step)
            .field("group", &self.group)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use crate::Runtime;

    /// The group quiets a child before `create_task` returns its handle, not when the child
    /// fails (see `try_create_task`).
    #[test]
    fn a_child_is_quiet_before_its_handle_is_returned() {
        let rt = Runtime::builder().workers(1).build().unwrap();
        rt.run_until_complete(crate::task_group(|group| async move {
            let gate = crate::Promise::<()>::new();
            let wait = gate.clone();
            let child = group.create_task(async move { wait.await });
            assert!(child.header().is_quiet(), "the child is not quiet yet");
            assert!(
                !child.done(),
                "the check must come before the child finishes"
            );
            gate.set_result(())?;
            child.await
        }))
        .unwrap();
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    use super::ParentCancel;
    use braid_bridge::sync::atomic::{AtomicUsize, Ordering};
    use braid_bridge::sync::{Arc, Mutex};
    use loom::thread;

    /// The parent's `cancelling()`: a cancel adds one, an `uncancel` takes one off if any.
    fn uncancel(count: &AtomicUsize) {
        let _ = count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// A child fails and its abort cancels the parent (`abort_after_failure`: request under
    /// the lock, the cancel outside it, then `made` under it) while the group's future is
    /// dropped (its `Drop`: abort under the lock, then `run_dropped` under it). Whatever the
    /// interleaving, the parent is left with no request of the group's.
    fn group_dropped_while_a_child_cancels_the_parent(fault: bool) {
        crate::sync::loom_support::model_with_fault(
            &crate::sync::loom_support::GROUP_WITHDRAWS_IN_FLIGHT,
            fault,
            || {
                // (aborting, the parent-cancel bookkeeping): the group's locked state.
                let state = Arc::new(Mutex::new((false, ParentCancel::default())));
                let cancelling = Arc::new(AtomicUsize::new(0));
                let child = {
                    let (state, cancelling) = (state.clone(), cancelling.clone());
                    thread::spawn(move || {
                        let cancels = {
                            let mut state = state.lock();
                            let cancels = !state.0 && !state.1.requested;
                            if cancels {
                                state.1.request();
                            }
                            cancels
                        };
                        if cancels {
                            cancelling.fetch_add(1, Ordering::AcqRel);
                            if state.lock().1.made() {
                                uncancel(&cancelling);
                            }
                        }
                    })
                };
                state.lock().0 = true;
                if state.lock().1.run_dropped() {
                    uncancel(&cancelling);
                }
                child.join().unwrap();
                assert_eq!(
                    cancelling.load(Ordering::Acquire),
                    0,
                    "the group's cancel of its parent outlived the group"
                );
            },
        );
    }

    #[test]
    fn loom_group_dropped_while_a_child_cancels_the_parent_withdraws_it() {
        group_dropped_while_a_child_cancels_the_parent(false);
    }

    /// The twin: a drop that withdraws a cancel still being made withdraws nothing (the
    /// count is 0), and the cancel lands after, for good.
    #[test]
    #[should_panic(expected = "outlived the group")]
    fn loom_group_twin_dropped_while_a_child_cancels_the_parent_withdrawing_in_flight() {
        group_dropped_while_a_child_cancels_the_parent(true);
    }
}
