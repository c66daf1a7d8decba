//! `gather`: asyncio.gather, with and without `return_exceptions` (`settled`).

use super::{polled_after_completion, ReadySet};
use crate::context::{self, AwaitRegistration};
use crate::task::raw::Exclusive;
use crate::task::{AwaitTarget, CancelTarget, Task, TaskRef};
use braid_bridge::sync::Mutex;
use braid_bridge::{Error, Result};
use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// Runs every awaitable concurrently, each in its own task, and completes with their values
/// in argument order (asyncio's `gather`). A `Task` passed in is watched as it is, not wrapped.
///
/// * The first error (a cancelled child counts, as a Cancelled error) fails the gather at
///   once; the other children keep running, untouched. [`Gather::settled`] instead collects
///   every outcome (asyncio's `return_exceptions=True`).
/// * Cancelling the task that awaits the gather, or [`Gather::cancel`], cancels every child
///   not yet done, and the gather then ends with a Cancelled error.
/// * An empty gather completes at once with `[]`.
///
/// # Panics
///
/// With "no running event loop" when called outside a braid loop (the children are spawned
/// right away, as `create_task` does).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// braid_runtime::run(async {
///     let slow_first = |n: u64| async move {
///         braid_runtime::sleep(Duration::from_millis(30 - 10 * n)).await?;
///         Ok(n)
///     };
///     let values = braid_runtime::gather((0..3).map(slow_first)).await?;
///     assert_eq!(values, [0, 1, 2]); // argument order, not completion order
///     Ok(())
/// }).unwrap();
/// ```
#[track_caller]
pub fn gather<I, F, T>(aws: I) -> Gather<T>
where
    I: IntoIterator<Item = F>,
    F: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let children: Vec<Task<T>> = aws.into_iter().map(into_task).collect();
    Gather {
        core: GatherCore::new(children),
    }
}

/// A `Task` is gathered as it is; anything else gets its own task.
#[track_caller]
fn into_task<F, T>(fut: F) -> Task<T>
where
    F: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let mut slot = Some(fut);
    if let Some(task) = (&mut slot as &mut dyn Any).downcast_mut::<Option<Task<T>>>() {
        return task.take().expect("just filled");
    }
    crate::create_task(slot.take().expect("not taken"))
}

/// The future of [`gather`]: `Result<Vec<T>>`.
///
/// # Cancel safety
///
/// Dropping it leaves the children running (as dropping a [`Task`] does); cancelling the
/// task that awaits it cancels them.
#[must_use = "futures do nothing unless you `.await` them"]
pub struct Gather<T> {
    core: GatherCore<T>,
}

/// The future of [`Gather::settled`]: every child's outcome, in argument order
/// (`Result<Vec<Result<T>>>`, asyncio's `return_exceptions=True`). It fails only if the
/// gather itself was cancelled.
#[must_use = "futures do nothing unless you `.await` them"]
pub struct GatherSettled<T> {
    core: GatherCore<T>,
}

impl<T: Send + 'static> Gather<T> {
    /// Collects every outcome instead of failing at the first error (asyncio's
    /// `return_exceptions=True`): a failed child shows up as its `Err`, a cancelled one as a
    /// Cancelled `Err`.
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let boom = braid_runtime::create_task(async { Err::<i32, _>(braid_runtime::Error::msg("boom")) });
    ///     let fine = braid_runtime::create_task(async { Ok(1) });
    ///     let out = braid_runtime::gather([boom, fine]).settled().await?;
    ///     assert_eq!(out[0].as_ref().unwrap_err().to_string(), "boom");
    ///     assert_eq!(*out[1].as_ref().unwrap(), 1);
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn settled(self) -> GatherSettled<T> {
        GatherSettled { core: self.core }
    }

    /// Cancels every child not yet done; true if any of them accepted. Awaiting the gather
    /// then ends with a Cancelled error. False once every child is done.
    ///
    /// ```
    /// use std::time::Duration;
    /// braid_runtime::run(async {
    ///     let g = braid_runtime::gather([braid_runtime::sleep(Duration::from_secs(60))]);
    ///     assert!(g.cancel());
    ///     assert!(g.await.unwrap_err().is_cancelled());
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn cancel(&self) -> bool {
        self.core.shared.cancel(None)
    }
}

impl<T: Send + 'static> GatherSettled<T> {
    /// As [`Gather::cancel`].
    ///
    /// ```
    /// use std::time::Duration;
    /// braid_runtime::run(async {
    ///     let g = braid_runtime::gather([braid_runtime::sleep(Duration::from_secs(60))]).settled();
    ///     assert!(g.cancel());
    ///     assert!(g.await.unwrap_err().is_cancelled());
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn cancel(&self) -> bool {
        self.core.shared.cancel(None)
    }
}

impl<T: Send + 'static> Future for Gather<T> {
    type Output = Result<Vec<T>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Vec<T>>> {
        self.get_mut().core.poll_gather(cx, false).map(|outcome| {
            outcome.map(|results| {
                results
                    .into_iter()
                    .map(|r| r.expect("without settled(), every child succeeded"))
                    .collect()
            })
        })
    }
}

impl<T: Send + 'static> Future for GatherSettled<T> {
    type Output = Result<Vec<Result<T>>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Vec<Result<T>>>> {
        self.get_mut().core.poll_gather(cx, true)
    }
}

/// What a cancel from elsewhere (the awaiting task's) reaches: the children and the flag
/// "the gather was cancelled", under one lock with "finished", so that a cancel that reports
/// success is never overtaken by the gather completing with values.
struct GatherShared {
    children: Vec<TaskRef>,
    state: Mutex<CancelState>,
}

#[derive(Default)]
struct CancelState {
    requested: bool,
    message: Option<String>,
    finished: bool,
}

impl GatherShared {
    fn cancel(&self, message: Option<String>) -> bool {
        let mut state = self.state.lock();
        if state.finished {
            return false;
        }
        let mut any = false;
        for child in &self.children {
            any |= child.cancel_from_awaiter(message.clone());
        }
        if any {
            state.requested = true;
            state.message = message;
        }
        any
    }

    /// Marks the gather finished; the cancel error if it was cancelled.
    fn finish(&self) -> Option<Error> {
        let mut state = self.state.lock();
        state.finished = true;
        state
            .requested
            .then(|| Error::cancelled(state.message.clone()))
    }
}

impl CancelTarget for GatherShared {
    fn cancel_from_awaiter(self: Arc<Self>, message: Option<String>) -> bool {
        self.cancel(message)
    }
}

struct GatherCore<T> {
    /// The children not yet collected.
    children: Vec<Option<Task<T>>>,
    results: Exclusive<Vec<Option<Result<T>>>>,
    remaining: usize,
    ready: Arc<ReadySet>,
    wakers: Vec<Waker>,
    shared: Arc<GatherShared>,
    registration: AwaitRegistration,
    finished: bool,
}

impl<T: Send + 'static> GatherCore<T> {
    fn new(children: Vec<Task<T>>) -> GatherCore<T> {
        let n = children.len();
        let shared = Arc::new(GatherShared {
            children: children.iter().map(Task::as_ref).collect(),
            state: Mutex::new(CancelState::default()),
        });
        let (ready, wakers) = ReadySet::new(n);
        let registration = AwaitRegistration::new(std::ptr::NonNull::from(&*shared));
        GatherCore {
            children: children.into_iter().map(Some).collect(),
            results: Exclusive::new((0..n).map(|_| None).collect()),
            remaining: n,
            ready,
            wakers,
            shared,
            registration,
            finished: false,
        }
    }

    fn poll_gather(&mut self, cx: &mut Context<'_>, settled: bool) -> Poll<Result<Vec<Result<T>>>> {
        if self.finished {
            return Poll::Ready(Err(polled_after_completion("gather")));
        }
        if let Some(taken) = context::take_cancel_to_pass_on() {
            // A request that reached us directly (made before we registered, or refused by
            // every child because all are done): asyncio cancels the gather.
            let message = taken.error().message().map(str::to_owned);
            let accepted =
                crate::task::passing_on_from_current(|| self.shared.cancel(message.clone()));
            if accepted {
                // Passed on: it reaches us through the gather's outcome, or comes back if
                // this future is dropped before that outcome is read.
                self.registration.note_passed_on(message);
            } else {
                // Every child is done: their outcomes are ours, and the request waits for
                // our next await point (as `Task`'s await does: the values are not thrown
                // away).
                context::put_back_cancel(taken);
            }
        }
        self.ready.set_parent(cx.waker());
        while let Some(index) = self.ready.pop() {
            let Some(child) = self.children[index].as_mut() else {
                continue;
            };
            let mut child_cx = Context::from_waker(&self.wakers[index]);
            let Poll::Ready(outcome) = child.poll_output(&mut child_cx) else {
                continue;
            };
            self.children[index] = None;
            self.remaining -= 1;
            if !settled {
                if let Err(error) = &outcome {
                    let error = error.clone();
                    self.finish();
                    return Poll::Ready(Err(error));
                }
            }
            self.results.get_mut()[index] = Some(outcome);
        }
        if self.remaining == 0 {
            let cancelled = self.finish();
            if let Some(cancel) = cancelled {
                return Poll::Ready(Err(cancel));
            }
            let results = std::mem::take(self.results.get_mut())
                .into_iter()
                .map(|r| r.expect("every child collected"))
                .collect();
            return Poll::Ready(Ok(results));
        }
        let shared = self.shared.clone();
        self.registration
            .register(move || AwaitTarget::Other(shared));
        Poll::Pending
    }

    /// Ends the gather: children still running are left alone, their errors theirs alone
    /// (asyncio marks them retrieved once the gather is done).
    fn finish(&mut self) -> Option<Error> {
        self.finished = true;
        self.registration.end_read(|| false);
        self.ready.clear_parent();
        for child in self.children.iter().flatten() {
            child.mark_quiet();
        }
        self.shared.finish()
    }
}

impl<T> Drop for GatherCore<T> {
    fn drop(&mut self) {
        self.ready.clear_parent();
    }
}

impl<T: 'static> fmt::Debug for Gather<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gather")
            .field("children", &self.core.shared.children.len())
            .field("remaining", &self.core.remaining)
            .finish()
    }
}

impl<T: 'static> fmt::Debug for GatherSettled<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatherSettled")
            .field("children", &self.core.shared.children.len())
            .field("remaining", &self.core.remaining)
            .finish()
    }
}
