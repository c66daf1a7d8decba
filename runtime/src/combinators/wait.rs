//! `wait` and `as_completed`: watch tasks without taking them over.

use super::{polled_after_completion, timeout_error, ReadySet};
use crate::context;
use crate::task::Task;
use crate::timer::{sleep, Sleep};
use braid_bridge::{Error, ErrorKind, Result, ReturnWhen};
use futures_core::Stream;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// Waits until `when` is met or `timeout` passes, then hands every task back split into
/// `(done, pending)`, each in input order (asyncio's `wait`).
///
/// * `FirstCompleted`: as soon as any task is done. `FirstException`: as soon as any task
///   fails (a cancelled task is not a failure), else when all are done. `AllCompleted`: when
///   all are done.
/// * A timeout is not an error: it returns the split as it stands, and cancels nothing.
/// * Cancelling the waiting task returns its Cancelled error and leaves the tasks running.
///
/// # Errors
///
/// `InvalidState` for an empty list (asyncio raises ValueError); the Cancelled error of the
/// waiting task.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use braid_runtime::{create_task, sleep, wait, ReturnWhen};
/// braid_runtime::run(async {
///     let fast = create_task(async { sleep(Duration::from_millis(5)).await?; Ok(1) });
///     let slow = create_task(async { sleep(Duration::from_secs(60)).await?; Ok(2) });
///     let (done, pending) = wait(vec![fast, slow], None, ReturnWhen::FirstCompleted).await?;
///     assert_eq!((done.len(), pending.len()), (1, 1));
///     pending[0].cancel();
///     Ok(())
/// }).unwrap();
/// ```
pub fn wait<T: 'static>(
    tasks: Vec<Task<T>>,
    timeout: Option<Duration>,
    when: ReturnWhen,
) -> Wait<T> {
    let (ready, wakers) = ReadySet::new(tasks.len());
    Wait {
        done: vec![false; tasks.len()],
        tasks,
        when,
        timer: timeout.map(sleep),
        ready,
        wakers,
        n_done: 0,
        failed: false,
        finished: false,
    }
}

/// The future of [`wait`]: `Result<(done, pending)>`.
///
/// # Cancel safety
///
/// Dropping it drops the task handles, which detaches the tasks: they keep running.
#[must_use = "futures do nothing unless you `.await` them"]
pub struct Wait<T> {
    tasks: Vec<Task<T>>,
    done: Vec<bool>,
    when: ReturnWhen,
    timer: Option<Sleep>,
    ready: Arc<ReadySet>,
    wakers: Vec<Waker>,
    n_done: usize,
    failed: bool,
    finished: bool,
}

impl<T: 'static> Wait<T> {
    fn satisfied(&self) -> bool {
        match self.when {
            ReturnWhen::FirstCompleted => self.n_done > 0,
            ReturnWhen::FirstException => self.failed || self.n_done == self.tasks.len(),
            ReturnWhen::AllCompleted => self.n_done == self.tasks.len(),
        }
    }

    #[allow(clippy::type_complexity)]
    fn split(&mut self) -> Poll<Result<(Vec<Task<T>>, Vec<Task<T>>)>> {
        self.finished = true;
        self.ready.clear_parent();
        let (done, pending) = std::mem::take(&mut self.tasks)
            .into_iter()
            .partition(|task| task.done());
        Poll::Ready(Ok((done, pending)))
    }
}

impl<T: 'static> Future for Wait<T> {
    type Output = Result<(Vec<Task<T>>, Vec<Task<T>>)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(Err(polled_after_completion("wait()")));
        }
        if this.tasks.is_empty() {
            this.finished = true;
            return Poll::Ready(Err(Error::new(
                ErrorKind::InvalidState,
                "wait() needs at least one task",
            )));
        }
        if let Some(cancel) = context::take_cancel() {
            this.finished = true;
            this.ready.clear_parent();
            return Poll::Ready(Err(cancel));
        }
        // We register nothing as awaited: cancelling our task never cancels the children.
        context::clear_awaiting(None);
        this.ready.set_parent(cx.waker());
        while let Some(index) = this.ready.pop() {
            if this.done[index] || !this.tasks[index].watch(&this.wakers[index]) {
                continue;
            }
            this.done[index] = true;
            this.n_done += 1;
            this.failed |= this.tasks[index].header().failed();
        }
        if this.satisfied() {
            return this.split();
        }
        if let Some(timer) = &mut this.timer {
            match timer.poll_timer(cx) {
                Poll::Ready(Ok(())) => return this.split(),
                Poll::Ready(Err(error)) => {
                    this.finished = true;
                    return Poll::Ready(Err(error));
                }
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }
}

impl<T> Drop for Wait<T> {
    fn drop(&mut self) {
        self.ready.clear_parent();
    }
}

impl<T: 'static> fmt::Debug for Wait<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wait")
            .field("tasks", &self.tasks.len())
            .field("done", &self.n_done)
            .field("when", &self.when)
            .finish()
    }
}

/// Yields the tasks' outcomes in the order they complete (asyncio's `as_completed`). After
/// `timeout`, yields one Timeout error and ends; nothing is cancelled, and
/// [`AsCompleted::remaining`] hands back the tasks not yet yielded.
///
/// A cancel of the consuming task is yielded as a Cancelled error (the tasks are untouched).
///
/// # Examples
///
/// ```
/// use futures::StreamExt;
/// use braid_runtime::{as_completed, create_future, create_task, Promise};
/// braid_runtime::run(async {
///     // Task i finishes when gate i opens (not after a sleep: tasks on other loops can run
///     // late, so sleeps would not fix the order).
///     let gates: Vec<Promise<()>> = (0..3).map(|_| create_future()).collect();
///     let tasks = gates
///         .iter()
///         .enumerate()
///         .map(|(i, gate)| {
///             let gate = gate.clone();
///             create_task(async move { gate.await?; Ok(i) })
///         })
///         .collect();
///     let mut stream = as_completed(tasks, None);
///     for i in [2, 0, 1] {
///         gates[i].set_result(())?;
///         assert_eq!(stream.next().await.unwrap()?, i); // completion order, not input order
///     }
///     assert!(stream.next().await.is_none());
///     Ok(())
/// }).unwrap();
/// ```
pub fn as_completed<T: 'static>(tasks: Vec<Task<T>>, timeout: Option<Duration>) -> AsCompleted<T> {
    let (ready, wakers) = ReadySet::new(tasks.len());
    AsCompleted {
        remaining: tasks.len(),
        tasks: tasks.into_iter().map(Some).collect(),
        timer: timeout.map(sleep),
        ready,
        wakers,
        ended: false,
    }
}

/// The stream of [`as_completed`]: `Stream<Item = Result<T>>`.
///
/// # Cancel safety
///
/// Dropping it detaches the tasks not yet yielded: they keep running.
#[must_use = "streams do nothing unless polled"]
pub struct AsCompleted<T> {
    tasks: Vec<Option<Task<T>>>,
    remaining: usize,
    timer: Option<Sleep>,
    ready: Arc<ReadySet>,
    wakers: Vec<Waker>,
    ended: bool,
}

impl<T: 'static> AsCompleted<T> {
    /// Takes the tasks not yet yielded (after a timeout, say), in input order; the stream
    /// then ends.
    ///
    /// ```
    /// use futures::StreamExt;
    /// use std::time::Duration;
    /// use braid_runtime::{as_completed, create_task, sleep};
    /// braid_runtime::run(async {
    ///     let slow = create_task(async { sleep(Duration::from_secs(60)).await?; Ok(()) });
    ///     let mut stream = as_completed(vec![slow], Some(Duration::from_millis(5)));
    ///     assert!(stream.next().await.unwrap().unwrap_err().is_timeout());
    ///     let left = stream.remaining();
    ///     assert!(!left[0].done()); // nothing was cancelled
    ///     left[0].cancel();
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn remaining(&mut self) -> Vec<Task<T>> {
        self.ended = true;
        self.remaining = 0;
        self.ready.clear_parent();
        self.tasks.iter_mut().filter_map(Option::take).collect()
    }
}

impl<T: 'static> Stream for AsCompleted<T> {
    type Item = Result<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<T>>> {
        let this = self.get_mut();
        if this.ended || this.remaining == 0 {
            this.ready.clear_parent();
            return Poll::Ready(None);
        }
        if let Some(cancel) = context::take_cancel() {
            return Poll::Ready(Some(Err(cancel)));
        }
        context::clear_awaiting(None);
        this.ready.set_parent(cx.waker());
        while let Some(index) = this.ready.pop() {
            let Some(task) = this.tasks[index].as_mut() else {
                continue;
            };
            let mut child_cx = Context::from_waker(&this.wakers[index]);
            if let Poll::Ready(outcome) = task.poll_output(&mut child_cx) {
                this.tasks[index] = None;
                this.remaining -= 1;
                return Poll::Ready(Some(outcome));
            }
        }
        if let Some(timer) = &mut this.timer {
            match timer.poll_timer(cx) {
                Poll::Ready(Ok(())) => {
                    this.ended = true;
                    this.ready.clear_parent();
                    return Poll::Ready(Some(Err(timeout_error())));
                }
                Poll::Ready(Err(error)) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining + usize::from(self.timer.is_some())))
    }
}

impl<T> Drop for AsCompleted<T> {
    fn drop(&mut self) {
        self.ready.clear_parent();
    }
}

impl<T: 'static> fmt::Debug for AsCompleted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsCompleted")
            .field("remaining", &self.remaining)
            .field("ended", &self.ended)
            .finish()
    }
}
