//! `shield`: await a task without passing cancellation on to it.

use crate::context;
use crate::task::Task;
use braid_bridge::Result;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Awaits `task` without passing cancellation on to it (asyncio's `shield`): when the
/// awaiting task is cancelled, the await returns a Cancelled error at once and the inner task
/// keeps running to completion. Its value, error or cancellation passes through otherwise.
/// An error of the inner task that nobody retrieves after such a cancel (the shield dropped,
/// the task not taken back with [`into_inner`](Shield::into_inner) and awaited) is reported
/// as "Task exception was never retrieved", as asyncio reports it.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// braid_runtime::run(async {
///     let gate = Arc::new(braid_runtime::Event::new());
///     let inner = {
///         let gate = gate.clone();
///         braid_runtime::create_task(async move {
///             gate.wait().await?;
///             Ok("kept")
///         })
///     };
///     let awaiting = Arc::new(braid_runtime::Event::new());
///     let outer = {
///         let awaiting = awaiting.clone();
///         braid_runtime::create_task(async move {
///             let mut shielded = braid_runtime::shield(inner);
///             awaiting.set();
///             let cancelled = (&mut shielded).await.unwrap_err().is_cancelled();
///             // The inner task was not cancelled: its result is still there.
///             Ok((cancelled, shielded.into_inner().await?))
///         })
///     };
///     // Cancel only once `outer` has started: a task cancelled before it first runs never runs.
///     awaiting.wait().await?;
///     outer.cancel();
///     gate.set();
///     assert_eq!(outer.await?, (true, "kept"));
///     Ok(())
/// }).unwrap();
/// ```
pub fn shield<T: 'static>(task: Task<T>) -> Shield<T> {
    Shield {
        task,
        suspended: false,
    }
}

/// The future of [`shield`].
///
/// # Cancel safety
///
/// Dropping it drops the inner [`Task`] handle, which detaches the task: it keeps running,
/// and an error it ends with is reported as never retrieved.
#[must_use = "futures do nothing unless you `.await` them"]
pub struct Shield<T> {
    task: Task<T>,
    /// The await has returned Pending: the awaiting task was parked here.
    suspended: bool,
}

impl<T: 'static> Shield<T> {
    /// The inner task.
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let t = braid_runtime::create_task(async { Ok(1) });
    ///     let id = t.id();
    ///     assert_eq!(braid_runtime::shield(t).task().id(), id);
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn task(&self) -> &Task<T> {
        &self.task
    }

    /// Gives the inner task back, to await it (or cancel it) after the shielded await
    /// returned Cancelled.
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let t = braid_runtime::create_task(async { Ok(1) });
    ///     assert_eq!(braid_runtime::shield(t).into_inner().await?, 1);
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn into_inner(self) -> Task<T> {
        self.task
    }
}

impl<T: 'static> Future for Shield<T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let this = self.get_mut();
        // An inner task already done when the await begins gives its outcome (asyncio's
        // `shield` of a done task is that task, whose await does not suspend): a request
        // pending waits for the next await point. Once the awaiting task was parked here, a
        // request wins even if the inner task finished since, as asyncio cancels the outer
        // future at once (the inner task's end and the cancel can race to the re-poll).
        let outcome_first = this.task.done() && !this.suspended;
        if let Some(cancel) = (!outcome_first).then(context::take_cancel).flatten() {
            // The inner task is not quieted: as in asyncio, whose `shield` removes the inner's
            // done callback once the outer await is cancelled, an error nobody retrieves is
            // reported as "never retrieved" (when the last handle, ours or the one
            // `into_inner` gives back, is dropped unawaited).
            return Poll::Ready(Err(cancel));
        }
        // Registers nothing as awaited, so a cancel of our task stays ours (the check above)
        // and never reaches the inner task.
        context::clear_awaiting(None);
        let polled = this.task.poll_output(cx);
        this.suspended |= polled.is_pending();
        polled
    }
}

impl<T: 'static> fmt::Debug for Shield<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shield").field("task", &self.task).finish()
    }
}
