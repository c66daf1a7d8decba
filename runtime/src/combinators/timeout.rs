//! `timeout` (asyncio.timeout around one awaitable) and `wait_for` (Python 3.12's, which is
//! built on it).
//!
//! Both run the awaitable inline, in the awaiting task, as Python 3.12 does. At the deadline
//! they cancel *the awaiting task*: the Cancelled error is delivered at the awaitable's own
//! await point, so its cleanup runs (and may await) before it returns; the error is then
//! turned into Timeout, unless the cancel was not (only) ours: asyncio's rule is that the
//! timeout converts it only if `uncancel()` brings the task's cancel count back to where it
//! was on entry. That makes nested timeouts with one deadline raise Timeout at the outermost
//! only, and keeps a real cancel a Cancelled error.

use super::{polled_after_completion, timeout_error};
use crate::context;
use crate::task::raw::{downcast_task_mut, Exclusive};
use crate::task::TaskRef;
use crate::timer::{sleep, Sleep};
use braid_bridge::Result;
use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Runs `aw` with a time limit (asyncio's `async with timeout(delay): await aw`).
///
/// At the deadline the awaiting task is cancelled; `aw` receives the Cancelled error at its
/// await point, may clean up, and when it returns that error the result is a Timeout error.
/// An outcome `aw` has ready when the timeout is first polled after its deadline (a value
/// that arrived while the loop was busy) is returned instead, with no cancel made. If `aw`
/// swallows the cancel and returns a value, the value is returned. A cancel from
/// elsewhere stays a Cancelled error, and nested timeouts with the same deadline raise
/// Timeout only at the outermost. A zero delay still starts `aw` (it is cancelled at its
/// first await that waits; one that finishes at once gives its value), as asyncio's does.
///
/// Polled outside a braid task (there is no task to cancel), `aw` is dropped at the deadline
/// instead, and the result is Timeout.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// braid_runtime::run(async {
///     let slow = braid_runtime::sleep(Duration::from_secs(60));
///     let err = braid_runtime::timeout(Duration::from_millis(10), slow).await.unwrap_err();
///     assert!(err.is_timeout());
///     Ok(())
/// }).unwrap();
/// ```
pub fn timeout<F, T>(delay: Duration, aw: F) -> Timeout<F>
where
    F: Future<Output = Result<T>>,
{
    Timeout::new(Some(delay), aw)
}

/// The future of [`timeout`]; also what [`wait_for`] runs.
///
/// # Cancel safety
///
/// Dropping it drops `aw`. Dropped after its deadline, before `aw` finished (a select whose
/// other branch won), it first drops `aw`, then takes back the cancel it made of its task, as
/// asyncio's `Timeout.__aexit__` uncancels on every exit: what the task awaits next does not
/// receive it, and `cancelling()` comes back down.
#[must_use = "futures do nothing unless you `.await` them"]
pub struct Timeout<F> {
    /// `None` only in `drop`, which drops it before withdrawing the cancel.
    aw: Option<Exclusive<Pin<Box<F>>>>,
    timer: Option<Sleep>,
    state: Expiry,
    /// The awaiting task and its `cancelling()` count when first polled.
    entered: Option<(Option<TaskRef>, usize)>,
    finished: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expiry {
    Pending,
    Expired,
}

impl<F, T> Timeout<F>
where
    F: Future<Output = Result<T>>,
{
    fn new(delay: Option<Duration>, aw: F) -> Timeout<F> {
        Timeout {
            aw: Some(Exclusive::new(Box::pin(aw))),
            timer: delay.map(sleep),
            state: Expiry::Pending,
            entered: None,
            finished: false,
        }
    }

    /// The deadline, if any.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// let t = braid_runtime::timeout(Duration::from_secs(1), async { Ok(()) });
    /// assert!(t.deadline().unwrap() > Instant::now());
    /// ```
    pub fn deadline(&self) -> Option<Instant> {
        self.timer.as_ref().map(Sleep::deadline)
    }

    /// True once the deadline passed and the cancel was sent (asyncio's `expired()`).
    ///
    /// ```
    /// let t = braid_runtime::timeout(std::time::Duration::from_secs(1), async { Ok(()) });
    /// assert!(!t.expired());
    /// ```
    pub fn expired(&self) -> bool {
        self.state == Expiry::Expired
    }
}

impl<F, T> Future for Timeout<F>
where
    F: Future<Output = Result<T>>,
{
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(Err(polled_after_completion("timeout")));
        }
        let (task, entry_cancelling) = this.entered.get_or_insert_with(|| {
            let task = crate::current_task();
            let cancelling = task.as_ref().map_or(0, TaskRef::cancelling);
            (task, cancelling)
        });
        if this.state == Expiry::Pending && !Probe::running() {
            if let Some(timer) = &mut this.timer {
                let due = timer.deadline() <= Instant::now()
                    || match timer.poll_timer(cx) {
                        Poll::Ready(Ok(())) => true,
                        Poll::Ready(Err(no_loop)) => {
                            this.finished = true;
                            return Poll::Ready(Err(no_loop));
                        }
                        Poll::Pending => false,
                    };
                if due {
                    // An outcome ready by now wins over the deadline, as in asyncio, where the
                    // task's wake-up queued before the timer's callback runs first. Cancelling
                    // first turned a value that had arrived into Timeout (the awaitable sees
                    // a pending cancel before its value), and left the request pending when
                    // the task was already being cancelled (`uncancel` withdraws it only at
                    // a count of zero). Timeouts nested in `aw` do not expire during this
                    // look: with the same deadline, the outermost must cancel first.
                    let probed = {
                        let _probe = Probe::enter();
                        awaitable(&mut this.aw).poll(cx)
                    };
                    if let Poll::Ready(outcome) = probed {
                        this.finished = true;
                        this.timer = None;
                        return Poll::Ready(outcome);
                    }
                    this.state = Expiry::Expired;
                    this.timer = None;
                    match task {
                        Some(task) => {
                            task.cancel();
                        }
                        None => {
                            this.finished = true;
                            return Poll::Ready(Err(timeout_error()));
                        }
                    }
                }
            }
        }
        let outcome = match awaitable(&mut this.aw).poll(cx) {
            Poll::Ready(outcome) => outcome,
            Poll::Pending => return Poll::Pending,
        };
        this.finished = true;
        this.timer = None;
        if this.state == Expiry::Expired {
            if let Some(task) = task {
                let left = task.uncancel();
                if left <= *entry_cancelling && matches!(&outcome, Err(e) if e.is_cancelled()) {
                    return Poll::Ready(Err(timeout_error()));
                }
            }
        }
        Poll::Ready(outcome)
    }
}

/// A timeout's awaitable (its `aw`), there until the timeout's `drop`.
fn awaitable<F>(aw: &mut Option<Exclusive<Pin<Box<F>>>>) -> Pin<&mut F> {
    match aw {
        Some(aw) => aw.get_mut().as_mut(),
        None => unreachable!("taken only by drop"),
    }
}

impl<F> Drop for Timeout<F> {
    fn drop(&mut self) {
        if self.state != Expiry::Expired || self.finished {
            return;
        }
        // First `aw`: an await it abandons hands a request it passed on back to the task
        // (`task::cancel`), which the withdrawal below then takes back too.
        drop(self.aw.take());
        if let Some((Some(task), _)) = &self.entered {
            // On the task's behalf: the request may have been handed to an await the task is
            // parked at (it is dropped where it was polled, mostly in a step of the task).
            task.withdraw_own_cancel();
        }
    }
}

/// A due timeout's look at its awaitable before it expires (see `Timeout::poll`), on this
/// thread: while one runs, timeouts polled inside it do not expire.
struct Probe;

thread_local! {
    static PROBES: Cell<usize> = const { Cell::new(0) };
}

impl Probe {
    fn enter() -> Probe {
        PROBES.with(|p| p.set(p.get() + 1));
        Probe
    }

    fn running() -> bool {
        PROBES.with(|p| p.get() > 0)
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        PROBES.with(|p| p.set(p.get() - 1));
    }
}

impl<F> fmt::Debug for Timeout<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timeout")
            .field("deadline", &self.timer.as_ref().map(Sleep::deadline))
            .field("state", &self.state)
            .finish()
    }
}

/// Awaits `aw` for at most `timeout` (Python 3.12's `asyncio.wait_for`; `None` means no
/// limit).
///
/// `aw` runs inline, in the awaiting task. On timeout it is cancelled, and `wait_for` waits
/// until it has finished cancelling (its cleanup awaits run) before returning Timeout; if it
/// swallows the cancel and returns a value, that value is returned; an error raised during its
/// cleanup replaces the Timeout. Cancelling the awaiting task cancels `aw`, and that cancel is
/// never lost.
///
/// With a zero timeout nothing is started: a [`Task`](crate::Task) already done gives its
/// outcome, a task still running is cancelled and awaited (Timeout once it has unwound, or its
/// value if it refused), and any other future is never polled (Timeout).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// braid_runtime::run(async {
///     let quick = braid_runtime::wait_for(async { Ok(5) }, Some(Duration::from_secs(1))).await?;
///     assert_eq!(quick, 5);
///     let eternity = braid_runtime::sleep(Duration::from_secs(3600));
///     let late = braid_runtime::wait_for(eternity, Some(Duration::from_millis(10))).await;
///     assert!(late.unwrap_err().is_timeout());
///     Ok(())
/// }).unwrap();
/// ```
pub fn wait_for<F, T>(aw: F, timeout: Option<Duration>) -> WaitFor<F>
where
    F: Future<Output = Result<T>>,
{
    let mode = match timeout {
        Some(Duration::ZERO) => WaitForMode::Zero {
            aw: Exclusive::new(Box::new(aw)),
            cancelled: false,
        },
        _ => WaitForMode::Inline(Timeout::new(timeout, aw)),
    };
    WaitFor { mode }
}

/// The future of [`wait_for`].
///
/// # Cancel safety
///
/// Dropping it drops `aw` (a [`Task`](crate::Task) handle dropped this way detaches the task).
#[must_use = "futures do nothing unless you `.await` them"]
pub struct WaitFor<F> {
    mode: WaitForMode<F>,
}

enum WaitForMode<F> {
    Inline(Timeout<F>),
    /// A zero timeout: Python's special case. Boxed so that `WaitFor` is `Unpin`; it is
    /// never pinned: it is polled only if it is a `Task`, which is `Unpin`.
    Zero {
        aw: Exclusive<Box<F>>,
        cancelled: bool,
    },
    Finished,
}

impl<F, T> Future for WaitFor<F>
where
    F: Future<Output = Result<T>>,
{
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let this = self.get_mut();
        match &mut this.mode {
            WaitForMode::Inline(timeout) => Pin::new(timeout).poll(cx),
            WaitForMode::Finished => Poll::Ready(Err(polled_after_completion("wait_for"))),
            WaitForMode::Zero { aw, cancelled } => {
                let Some(task) = downcast_task_mut::<F, T>(&mut **aw.get_mut()) else {
                    // A coroutine (or any non-task future) never starts.
                    this.mode = WaitForMode::Finished;
                    return Poll::Ready(Err(timeout_error()));
                };
                // A task already done gives its outcome, as asyncio's `wait_for(fut, 0)`
                // returns `fut.result()` without awaiting: a request pending then waits for
                // the next await point (the handle is ours, so the value would be lost).
                if !task.done() {
                    if let Some(cancel) = context::take_cancel() {
                        this.mode = WaitForMode::Finished;
                        return Poll::Ready(Err(cancel));
                    }
                }
                context::clear_awaiting(None);
                if !task.done() && !*cancelled {
                    *cancelled = true;
                    task.cancel();
                }
                let outcome = match task.poll_output(cx) {
                    Poll::Ready(outcome) => outcome,
                    Poll::Pending => return Poll::Pending,
                };
                let was_cancelled = *cancelled;
                this.mode = WaitForMode::Finished;
                match outcome {
                    Err(e) if e.is_cancelled() && was_cancelled => {
                        Poll::Ready(Err(timeout_error()))
                    }
                    outcome => Poll::Ready(outcome),
                }
            }
        }
    }
}

impl<F> fmt::Debug for WaitFor<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.mode {
            WaitForMode::Inline(timeout) => f.debug_tuple("WaitFor").field(timeout).finish(),
            WaitForMode::Zero { .. } => f.write_str("WaitFor(zero timeout)"),
            WaitForMode::Finished => f.write_str("WaitFor(finished)"),
        }
    }
}
