//! The loop side of the bridge: `run_in_executor`, `to_thread` and `wrap_future`.

use crate::context;
use crate::promise::Promise;
use braid_bridge::{ConcurrentFuture, Error, ErrorKind, Executor, Result};
use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

/// The future of [`run_in_executor`] and [`to_thread`]: the job's result, or a Cancelled
/// error when the awaiting task is cancelled (which also cancels the job if it has not
/// started: it then never runs).
///
/// # Examples
///
/// ```
/// braid_runtime::run(async {
///     let n = braid_runtime::to_thread(|| 40 + 2).await?;
///     assert_eq!(n, 42);
///     Ok(())
/// }).unwrap();
/// ```
#[must_use = "futures do nothing unless you `.await` them"]
pub struct ExecutorFuture<T> {
    fut: Option<ConcurrentFuture<T>>,
    error: Option<Error>,
}

/// Runs the blocking `f` on `executor` and awaits its result without blocking the loop
/// (asyncio's `loop.run_in_executor`). The job is submitted at once, when this is called.
/// A panic in `f` gives a `Panicked` error. Cancelling the awaiting task cancels a job that
/// has not started yet; a running job cannot be interrupted.
///
/// # Examples
///
/// ```
/// use braid_runtime::bridge::ThreadPool;
/// let pool = ThreadPool::new(2);
/// braid_runtime::run(async {
///     let text = braid_runtime::run_in_executor(&pool, || "blocking".to_uppercase()).await?;
///     assert_eq!(text, "BLOCKING");
///     Ok(())
/// }).unwrap();
/// ```
///
/// # Errors
///
/// The executor's refusal (Closed after its shutdown, a full queue); `Panicked`; Cancelled.
pub fn run_in_executor<E, F, T>(executor: &E, f: F) -> ExecutorFuture<T>
where
    E: Executor + ?Sized,
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (fut, completer) = ConcurrentFuture::pair();
    let job = Box::new(move |refused: Option<Error>| {
        if let Some(error) = refused {
            // The executor gave up on the queued job (a shutdown cancelling it).
            return completer.set_exception(error);
        }
        if !completer.set_running_or_notify_cancel() {
            return; // the awaiting task was cancelled before the job started
        }
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(value) => completer.set_result(value),
            Err(payload) => completer.set_exception(Error::from_panic(payload)),
        }
    });
    match executor.execute_or_cancel(job) {
        Ok(()) => ExecutorFuture {
            fut: Some(fut),
            error: None,
        },
        Err(e) => ExecutorFuture {
            fut: None,
            error: Some(e),
        },
    }
}

/// Runs the blocking `f` on the running runtime's default thread pool (asyncio's
/// `to_thread`). The pool starts on first use and is sized by
/// `Builder::default_executor_threads` (default: cores + 4, at most 32).
///
/// # Examples
///
/// ```
/// braid_runtime::run(async {
///     let bytes = braid_runtime::to_thread(|| std::fs::read("Cargo.toml")).await??;
///     assert!(!bytes.is_empty());
///     Ok(())
/// }).unwrap();
/// ```
///
/// # Errors
///
/// As [`run_in_executor`]; `InvalidState` when awaited outside a braid event loop.
pub fn to_thread<F, T>(f: F) -> ExecutorFuture<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match context::current_loop() {
        Some(ctx) => run_in_executor(ctx.rt.default_pool(), f),
        None => ExecutorFuture {
            fut: None,
            error: Some(Error::new(
                ErrorKind::InvalidState,
                "to_thread() needs a running braid event loop",
            )),
        },
    }
}

impl<T: Send + 'static> Future for ExecutorFuture<T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        if let Some(error) = self.error.take() {
            return Poll::Ready(Err(error));
        }
        let Some(fut) = self.fut.as_mut() else {
            return Poll::Ready(Err(Error::new(
                ErrorKind::InvalidState,
                "polled after completion",
            )));
        };
        if let Some(cancel) = context::take_cancel() {
            fut.cancel();
            self.fut = None;
            return Poll::Ready(Err(cancel));
        }
        context::clear_awaiting(None);
        match Pin::new(fut).poll(cx) {
            Poll::Ready(out) => {
                self.fut = None;
                Poll::Ready(out)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T> fmt::Debug for ExecutorFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecutorFuture")
            .field("fut", &self.fut)
            .field("error", &self.error)
            .finish()
    }
}

/// A [`Promise`] that follows `f` (asyncio's `wrap_future`): it settles as `f` does, and
/// cancelling the promise cancels `f`.
///
/// # Examples
///
/// ```
/// use braid_runtime::bridge::ThreadPool;
/// let pool = ThreadPool::new(1);
/// braid_runtime::run(async move {
///     let promise = braid_runtime::wrap_future(pool.submit(|| 9));
///     assert_eq!(promise.await?, 9);
///     Ok(())
/// }).unwrap();
/// ```
pub fn wrap_future<T: Clone + Send + 'static>(f: ConcurrentFuture<T>) -> Promise<T> {
    let promise = Promise::new();
    let follower = promise.clone();
    f.add_done_callback(move |f| {
        // The promise may have been cancelled (and so done) first; then there is nothing to do.
        match f.try_result() {
            Some(Ok(value)) => {
                let _ = follower.set_result(value);
            }
            Some(Err(e)) if e.is_cancelled() => {
                follower.cancel();
            }
            Some(Err(e)) => {
                let _ = follower.set_exception(e);
            }
            None => {}
        }
    });
    let source = f.clone();
    promise.add_done_callback(move |p| {
        if p.cancelled() {
            source.cancel();
        }
    });
    promise
}
