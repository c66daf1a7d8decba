//! `ConcurrentFuture<T>`: Python's `concurrent.futures.Future`, the one-shot cell through
//! which work crosses threads.
//!
//! ## States
//!
//! ```text
//!   PENDING ──set_running──► RUNNING ──complete──► FINISHED
//!      │                        │
//!      └──────cancel()──────────┴─(only if the producer accepts cancellation)─► CANCELLED
//! ```
//!
//! The *visible* state moves once: the first of completion and cancellation wins, under one
//! mutex, and whoever wins takes the wakers and done callbacks; so each callback runs exactly
//! once and every blocked waiter is woken. Independently, the producer side ([`Completer`])
//! always *settles* exactly once (when it completes, or when it is dropped), which is what
//! [`ConcurrentFuture::cancel_and_wait`] waits for: a cancelled task is not over until it
//! has unwound.
//!
//! Blocking waits refuse to run on a thread that is itself responsible for completing the
//! future (a loop thread of the runtime that owns it): that would deadlock, so it is an
//! `InvalidState` error at once.

use crate::sync::{Arc, Condvar, Mutex, MutexGuard};
use crate::{Error, ErrorKind, Result};
use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

crate::sync::thread::thread_local! {
    /// The id of the runtime whose loop this thread runs (0: none). Set by the runtime.
    // Not `const`: the same line must compile as loom's `thread_local!`, which has no const form.
    #[allow(clippy::missing_const_for_thread_local)]
    static LOOP_OF_RUNTIME: Cell<u64> = Cell::new(0);
    /// The cancellation point of the tasks this thread polls, while it runs an event loop
    /// (see [`enter_task_cancel_point`]). Set by the runtime.
    #[allow(clippy::missing_const_for_thread_local)]
    static TASK_CANCEL_POINT: Cell<Option<TaskCancelPoint>> = Cell::new(None);
}

/// Marks this thread as a loop thread of runtime `runtime_id` until the guard drops, so that
/// blocking on a future that runtime must complete fails fast instead of deadlocking.
/// Used by braid's runtime; not needed by applications.
///
/// ```
/// use braid_bridge::{enter_loop_thread, ConcurrentFuture, ErrorKind};
/// let (fut, _completer) = ConcurrentFuture::<u8>::pair_owned_by(7);
/// let marked = enter_loop_thread(7);
/// assert_eq!(fut.result(None).unwrap_err().kind(), ErrorKind::InvalidState);
/// drop(marked);
/// ```
#[doc(hidden)]
pub fn enter_loop_thread(runtime_id: u64) -> LoopThreadGuard {
    // `try_with`: a host loop may be entered in a thread-local's destructor as its thread
    // exits (to close it); nothing can block there on a loop of ours any more.
    let previous = LOOP_OF_RUNTIME
        .try_with(|c| c.replace(runtime_id))
        .unwrap_or(0);
    LoopThreadGuard { previous }
}

/// Restores the previous marking on drop; see [`enter_loop_thread`].
#[doc(hidden)]
#[derive(Debug)]
pub struct LoopThreadGuard {
    previous: u64,
}

impl Drop for LoopThreadGuard {
    fn drop(&mut self) {
        let _ = LOOP_OF_RUNTIME.try_with(|c| c.set(self.previous));
    }
}

/// The runtime's cancellation point for an await of a [`ConcurrentFuture`] in the task it
/// polls on this thread (this crate knows nothing of tasks): it takes the running task's
/// pending cancel request, if there is one, and calls `pass_on`, which cancels the future.
/// If `pass_on` accepts (returns true), the request is delivered: the point returns its
/// Cancelled error. If not (the future turned out to be finished, its outcome being the
/// await's), the request is put back for the task's next await point, and it returns `None`;
/// as it does with no request pending, or outside a task. Used by braid's runtime; not
/// needed by applications.
#[doc(hidden)]
pub type TaskCancelPoint = fn(pass_on: &mut dyn FnMut() -> bool) -> Option<Error>;

/// Makes `point` the cancellation point of awaits of a [`ConcurrentFuture`] on this thread
/// until the guard drops: the runtime sets it while the thread runs one of its loops, so
/// that awaiting a concurrent future in a task is a cancellation point, as `wrap_future`'s
/// promise is (asyncio). Used by braid's runtime; not needed by applications.
///
/// ```
/// use braid_bridge::{enter_task_cancel_point, ConcurrentFuture, Error};
/// use std::future::Future;
/// use std::task::{Context, Poll, Waker};
/// // A "task" that always has a cancel request pending.
/// fn always(pass_on: &mut dyn FnMut() -> bool) -> Option<Error> {
///     pass_on().then(|| Error::cancelled(None))
/// }
/// let (mut fut, completer) = ConcurrentFuture::<u8>::pair();
/// let _point = enter_task_cancel_point(always);
/// let polled = std::pin::Pin::new(&mut fut).poll(&mut Context::from_waker(Waker::noop()));
/// assert!(matches!(polled, Poll::Ready(Err(e)) if e.is_cancelled()));
/// assert!(completer.is_cancelled(), "the request went on to the future");
/// ```
#[doc(hidden)]
pub fn enter_task_cancel_point(point: TaskCancelPoint) -> TaskCancelPointGuard {
    let previous = TASK_CANCEL_POINT
        .try_with(|c| c.replace(Some(point)))
        .ok()
        .flatten();
    TaskCancelPointGuard { previous }
}

/// Restores the previous cancellation point on drop; see [`enter_task_cancel_point`].
#[doc(hidden)]
#[derive(Debug)]
pub struct TaskCancelPointGuard {
    previous: Option<TaskCancelPoint>,
}

impl Drop for TaskCancelPointGuard {
    fn drop(&mut self) {
        let _ = TASK_CANCEL_POINT.try_with(|c| c.set(self.previous));
    }
}

/// This thread's [`TaskCancelPoint`], called with `pass_on`; `None` off the runtime's loops.
fn task_cancel_point(pass_on: &mut dyn FnMut() -> bool) -> Option<Error> {
    let point = TASK_CANCEL_POINT.try_with(Cell::get).ok().flatten()?;
    point(pass_on)
}

/// How [`wait`] decides it is done (Python's `FIRST_COMPLETED`, `FIRST_EXCEPTION`,
/// `ALL_COMPLETED`).
///
/// # Examples
///
/// ```
/// use braid_bridge::ReturnWhen;
/// assert_ne!(ReturnWhen::FirstCompleted, ReturnWhen::AllCompleted);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ReturnWhen {
    /// As soon as any future is done.
    FirstCompleted,
    /// As soon as any future fails (a cancellation is not a failure); else when all are done.
    FirstException,
    /// When every future is done.
    AllCompleted,
}

/// What [`ConcurrentFuture::cancel_and_wait`] found once the producer had unwound.
///
/// # Examples
///
/// ```
/// use braid_bridge::{CancelOutcome, ConcurrentFuture};
/// let (fut, completer) = ConcurrentFuture::<u8>::pair();
/// drop(completer.set_running_or_notify_cancel());
/// // The producer finishes before it notices the cancel:
/// std::thread::spawn(move || completer.set_result(5));
/// match fut.cancel_and_wait(None) {
///     CancelOutcome::Cancelled | CancelOutcome::Completed(_) => {}
///     CancelOutcome::TimedOut => unreachable!("no timeout was given"),
/// }
/// ```
#[derive(Debug)]
pub enum CancelOutcome<T> {
    /// The work was cancelled: it never ran, or it unwound with a cancellation.
    Cancelled,
    /// The work finished anyway (or had already finished): its result.
    Completed(Result<T>),
    /// The producer had not unwound by the deadline.
    TimedOut,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Status {
    Pending,
    Running,
    Cancelled,
    Finished,
}

type DoneCallback<T> = Box<dyn FnOnce(&ConcurrentFuture<T>) + Send>;

struct State<T> {
    status: Status,
    /// The visible outcome once FINISHED or CANCELLED; `None` after `into_result` took it.
    outcome: Option<Result<T>>,
    taken: bool,
    /// The producer has completed or gone away.
    settled: bool,
    /// The producer's own outcome when it settled after the future was cancelled.
    late_outcome: Option<Result<T>>,
    /// `cancel_and_wait` moved `late_outcome` out.
    late_taken: bool,
    /// The wakers of the awaits waiting, each under the id its handle keeps, so that a handle
    /// that stops waiting takes back its own (ids from `next_callback_id`).
    wakers: Vec<(u64, Waker)>,
    /// Done callbacks with the ids that let internal waiters (`wait`, `as_completed`)
    /// remove theirs again.
    callbacks: Vec<(u64, DoneCallback<T>)>,
    next_callback_id: u64,
    /// How a cancel reaches the producer (a task's cancel, a job's removal from a queue).
    cancel_hook: Option<Box<dyn FnOnce() + Send>>,
    /// Whether the producer can be cancelled after it started running (a task can, a thread
    /// pool job cannot).
    cancellable_while_running: bool,
    blocked: usize,
}

struct Inner<T> {
    state: Mutex<State<T>>,
    cond: Condvar,
    /// The runtime that must complete this future (0: none): blocking on it from one of its
    /// loop threads would deadlock.
    owner: u64,
}

/// A thread-safe, one-shot future (Python's `concurrent.futures.Future`): wait on it from
/// any thread with a timeout, await it from any executor, cancel it, attach callbacks.
///
/// # Examples
///
/// ```
/// use braid_bridge::ConcurrentFuture;
/// use std::time::Duration;
///
/// let (fut, completer) = ConcurrentFuture::pair();
/// std::thread::spawn(move || completer.set_result(6 * 7));
/// assert_eq!(fut.result(Some(Duration::from_secs(5))).unwrap(), 42);
/// ```
pub struct ConcurrentFuture<T> {
    inner: Arc<Inner<T>>,
    /// The id of this handle's waker among the waiting ones, while it has one there.
    waiting: Option<u64>,
}

impl<T> Clone for ConcurrentFuture<T> {
    fn clone(&self) -> Self {
        ConcurrentFuture::from_inner(self.inner.clone())
    }
}

impl<T> ConcurrentFuture<T> {
    fn from_inner(inner: Arc<Inner<T>>) -> Self {
        ConcurrentFuture {
            inner,
            waiting: None,
        }
    }
}

impl<T> Drop for ConcurrentFuture<T> {
    /// A handle dropped while its await waits takes its waker back: a long-lived future
    /// raced by many short-lived tasks would otherwise keep every one of them alive.
    fn drop(&mut self) {
        self.stop_waiting();
    }
}

impl<T> ConcurrentFuture<T> {
    /// Takes back this handle's waker, if it is still among the waiting ones.
    fn stop_waiting(&mut self) {
        let Some(id) = self.waiting.take() else {
            return;
        };
        let waker = {
            let mut st = self.inner.state.lock();
            let at = st.wakers.iter().position(|(at, _)| *at == id);
            at.map(|at| st.wakers.remove(at))
        };
        // Dropped outside the lock: the last reference to a task may free it.
        drop(waker);
    }
}

/// The producing side of a [`ConcurrentFuture`]: completes it exactly once. Dropping it
/// without completing settles the future with a `BrokenExecutor` error, so no waiter is ever
/// left hanging by a producer that went away.
///
/// # Examples
///
/// ```
/// use braid_bridge::{ConcurrentFuture, ErrorKind};
/// let (fut, completer) = ConcurrentFuture::<u8>::pair();
/// drop(completer);
/// assert_eq!(fut.result(None).unwrap_err().kind(), ErrorKind::BrokenExecutor);
/// ```
pub struct Completer<T> {
    inner: Option<Arc<Inner<T>>>,
}

impl<T: Send + 'static> ConcurrentFuture<T> {
    /// A pending future and the completer that settles it.
    ///
    /// ```
    /// let (fut, completer) = braid_bridge::ConcurrentFuture::pair();
    /// completer.set_result("done");
    /// assert!(fut.done());
    /// ```
    pub fn pair() -> (ConcurrentFuture<T>, Completer<T>) {
        Self::pair_owned_by(0)
    }

    /// A pair whose blocking waits are refused on the loop threads of runtime `owner`.
    #[doc(hidden)]
    pub fn pair_owned_by(owner: u64) -> (ConcurrentFuture<T>, Completer<T>) {
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                status: Status::Pending,
                outcome: None,
                taken: false,
                settled: false,
                late_outcome: None,
                late_taken: false,
                wakers: Vec::new(),
                callbacks: Vec::new(),
                next_callback_id: 0,
                cancel_hook: None,
                cancellable_while_running: false,
                blocked: 0,
            }),
            cond: Condvar::new(),
            owner,
        });
        (
            ConcurrentFuture::from_inner(inner.clone()),
            Completer { inner: Some(inner) },
        )
    }

    /// A future that is already finished with `result` (e.g. a submission refused at once).
    ///
    /// ```
    /// use braid_bridge::{ConcurrentFuture, Error};
    /// let f = ConcurrentFuture::<u8>::ready(Err(Error::msg("refused")));
    /// assert!(f.done());
    /// ```
    pub fn ready(result: Result<T>) -> ConcurrentFuture<T> {
        let (fut, completer) = Self::pair();
        completer.complete(result);
        fut
    }

    fn check_blocking(&self) -> Result<()> {
        let here = LOOP_OF_RUNTIME.with(Cell::get);
        if self.inner.owner != 0 && here == self.inner.owner {
            return Err(Error::new(
                ErrorKind::InvalidState,
                "blocking on this future from a loop thread of the runtime that must complete it would deadlock; await it instead",
            ));
        }
        Ok(())
    }

    /// Blocks until `ready(state)` or the deadline; returns the guard, or a Timeout error.
    fn block_until(
        &self,
        timeout: Option<Duration>,
        ready: impl Fn(&State<T>) -> bool,
    ) -> Result<MutexGuard<'_, State<T>>> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut st = self.inner.state.lock();
        if !ready(&st) {
            // Only a call that would really wait can deadlock: a done future's result is
            // readable anywhere (done callbacks on a loop thread read it all the time).
            self.check_blocking()?;
            // Look a little before sleeping (see `tuning::linger`): an answer due in a few
            // microseconds is then seen without the cost of waking a halted vCPU. Only the
            // sleep is skipped, so the loom models (which check the waits below) lose nothing.
            #[cfg(not(loom))]
            crate::tuning::linger_until(deadline, || {
                MutexGuard::unlocked(&mut st, std::thread::yield_now);
                ready(&st)
            });
        }
        while !ready(&st) {
            st.blocked += 1;
            let timed_out = match deadline {
                Some(d) => self.inner.cond.wait_until(&mut st, d),
                None => {
                    self.inner.cond.wait(&mut st);
                    false
                }
            };
            st.blocked -= 1;
            if timed_out && !ready(&st) {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    "the future did not finish in time",
                ));
            }
        }
        Ok(st)
    }

    /// Waits (at most `timeout`, or forever for `None`) and returns a clone of the result.
    ///
    /// ```
    /// use std::time::Duration;
    /// let (fut, _completer) = braid_bridge::ConcurrentFuture::<u8>::pair();
    /// let err = fut.result(Some(Duration::from_millis(10))).unwrap_err();
    /// assert!(err.is_timeout());
    /// ```
    ///
    /// # Errors
    ///
    /// The work's error; Cancelled; Timeout; `InvalidState` if the value was moved out by
    /// [`into_result`](Self::into_result) or an await, or if called on a loop thread of the
    /// runtime that must complete this future (it would deadlock).
    pub fn result(&self, timeout: Option<Duration>) -> Result<T>
    where
        T: Clone,
    {
        let st = self.block_until(timeout, done)?;
        match &st.outcome {
            Some(outcome) => outcome.clone(),
            None => Err(taken_error()),
        }
    }

    /// The result if the future is done, without blocking (and so without the deadlock
    /// check): `None` while it is pending.
    ///
    /// ```
    /// let (fut, c) = braid_bridge::ConcurrentFuture::pair();
    /// assert!(fut.try_result().is_none());
    /// c.set_result(4);
    /// assert_eq!(fut.try_result().unwrap().unwrap(), 4);
    /// ```
    pub fn try_result(&self) -> Option<Result<T>>
    where
        T: Clone,
    {
        let st = self.inner.state.lock();
        if !done(&st) {
            return None;
        }
        Some(match &st.outcome {
            Some(outcome) => outcome.clone(),
            None => Err(taken_error()),
        })
    }

    /// As [`result`](Self::result), but moves the value out: no `Clone` needed. Clones of this
    /// future then get `InvalidState` from `result`.
    ///
    /// ```
    /// let (fut, completer) = braid_bridge::ConcurrentFuture::pair();
    /// completer.set_result(vec![1, 2, 3]);
    /// assert_eq!(fut.into_result(None).unwrap(), [1, 2, 3]);
    /// ```
    ///
    /// # Errors
    ///
    /// As [`result`](Self::result).
    pub fn into_result(self, timeout: Option<Duration>) -> Result<T> {
        let mut st = self.block_until(timeout, done)?;
        take_outcome(&mut st)
    }

    /// Waits and returns the error the work failed with, or `None` if it succeeded.
    ///
    /// ```
    /// let (fut, completer) = braid_bridge::ConcurrentFuture::<u8>::pair();
    /// completer.set_exception(braid_bridge::Error::msg("bad"));
    /// assert_eq!(fut.exception(None).unwrap().unwrap().to_string(), "bad");
    /// ```
    ///
    /// # Errors
    ///
    /// Cancelled if the future was cancelled (as Python raises `CancelledError`); Timeout;
    /// `InvalidState` as for [`result`](Self::result).
    pub fn exception(&self, timeout: Option<Duration>) -> Result<Option<Error>> {
        let st = self.block_until(timeout, done)?;
        match (&st.status, &st.outcome) {
            (Status::Cancelled, Some(Err(e))) => Err(e.clone()),
            (_, Some(Err(e))) => Ok(Some(e.clone())),
            (_, Some(Ok(_))) => Ok(None),
            (_, None) => Err(taken_error()),
        }
    }

    /// Cancels: marks the future cancelled at once (waiters see a Cancelled error) and asks
    /// the producer to stop (a task receives a cancellation at its await point; a queued job
    /// never runs). Returns false if it already finished, or if it is running and cannot be
    /// interrupted (a thread-pool job that has started).
    ///
    /// ```
    /// let (fut, completer) = braid_bridge::ConcurrentFuture::<u8>::pair();
    /// assert!(fut.cancel());
    /// assert!(fut.cancelled());
    /// assert!(!completer.set_running_or_notify_cancel()); // the producer learns of it
    /// ```
    pub fn cancel(&self) -> bool {
        let (wakers, callbacks, hook) = {
            let mut st = self.inner.state.lock();
            match st.status {
                Status::Cancelled => return true,
                Status::Finished if !fault!(CancelOverridesFinished) => return false,
                Status::Finished => {}
                Status::Running if !st.cancellable_while_running => return false,
                Status::Pending | Status::Running => {}
            }
            if st.status == Status::Pending && st.cancel_hook.is_none() {
                // Nobody runs it now: `set_running_or_notify_cancel` will refuse it. It is
                // as unwound as it will ever be.
                st.settled = true;
            }
            st.status = Status::Cancelled;
            st.outcome = Some(Err(Error::cancelled(None)));
            self.inner.notify_blocked(&st);
            (
                std::mem::take(&mut st.wakers),
                std::mem::take(&mut st.callbacks),
                st.cancel_hook.take(),
            )
        };
        if let Some(hook) = hook {
            hook();
        }
        self.after_done(wakers, callbacks);
        true
    }

    /// Cancels (as [`cancel`](Self::cancel)) and then waits, at most `timeout`, until the
    /// producer has unwound: a task's cleanup has run, a job has returned.
    ///
    /// `Completed` carries the result moved out of the future, as
    /// [`into_result`](Self::into_result) does (`T` need not be `Clone`): for a future that
    /// had finished, the clones' `result()` then fails with InvalidState (one cancelled
    /// before its producer finished keeps reporting Cancelled), and a second
    /// `cancel_and_wait` gives `Completed(Err(..))` with InvalidState. Call it where the
    /// result is to be read, not beside other readers of the same future.
    ///
    /// ```
    /// use braid_bridge::{CancelOutcome, ConcurrentFuture};
    /// let (fut, completer) = ConcurrentFuture::<u8>::pair();
    /// completer.on_cancel(|| {}); // a producer that can be cancelled
    /// let waiter = std::thread::spawn(move || fut.cancel_and_wait(None));
    /// // The producer sees the request and unwinds:
    /// while !completer.is_cancelled() { std::thread::yield_now(); }
    /// completer.set_exception(braid_bridge::Error::cancelled(None));
    /// assert!(matches!(waiter.join().unwrap(), CancelOutcome::Cancelled));
    /// ```
    pub fn cancel_and_wait(&self, timeout: Option<Duration>) -> CancelOutcome<T> {
        self.cancel();
        let skip_settle = fault!(CancelAndWaitSkipsSettle);
        let mut st = match self.block_until(timeout, |st| st.settled || skip_settle) {
            Ok(st) => st,
            Err(e) if e.kind() == ErrorKind::InvalidState => {
                return CancelOutcome::Completed(Err(e))
            }
            Err(_) => return CancelOutcome::TimedOut,
        };
        match st.status {
            Status::Finished => CancelOutcome::Completed(take_outcome(&mut st)),
            _ => match &st.late_outcome {
                Some(Err(e)) if e.is_cancelled() => CancelOutcome::Cancelled,
                Some(_) => {
                    st.late_taken = true;
                    CancelOutcome::Completed(st.late_outcome.take().expect("matched"))
                }
                // An earlier call moved the late result out: it is not the cancellation.
                None if st.late_taken => CancelOutcome::Completed(Err(taken_error())),
                None => CancelOutcome::Cancelled,
            },
        }
    }

    /// True if the future was cancelled.
    ///
    /// ```
    /// let (fut, _c) = braid_bridge::ConcurrentFuture::<u8>::pair();
    /// assert!(!fut.cancelled());
    /// ```
    pub fn cancelled(&self) -> bool {
        self.inner.state.lock().status == Status::Cancelled
    }

    /// True once the future finished or was cancelled.
    ///
    /// ```
    /// let (fut, c) = braid_bridge::ConcurrentFuture::pair();
    /// c.set_result(());
    /// assert!(fut.done());
    /// ```
    pub fn done(&self) -> bool {
        done(&self.inner.state.lock())
    }

    /// True while the producer is running the work.
    ///
    /// ```
    /// let (fut, c) = braid_bridge::ConcurrentFuture::<u8>::pair();
    /// assert!(c.set_running_or_notify_cancel());
    /// assert!(fut.running());
    /// ```
    pub fn running(&self) -> bool {
        self.inner.state.lock().status == Status::Running
    }

    /// Calls `f` once the future is done: in the thread that completes or cancels it, or
    /// right now in this thread if it is done already. Each callback runs exactly once; a
    /// panicking callback is reported on stderr and does not stop the others.
    ///
    /// ```
    /// use std::sync::mpsc;
    /// let (fut, c) = braid_bridge::ConcurrentFuture::<u8>::pair();
    /// let (tx, rx) = mpsc::channel();
    /// fut.add_done_callback(move |f| tx.send(f.done()).unwrap());
    /// c.set_result(1);
    /// assert_eq!(rx.recv().unwrap(), true);
    /// ```
    pub fn add_done_callback<F>(&self, f: F)
    where
        F: FnOnce(&ConcurrentFuture<T>) + Send + 'static,
    {
        if let Err(f) = self.add_waiter(Box::new(f)) {
            run_callback(f, self);
        }
    }

    /// Registers a done callback and returns its id, or gives it back if the future is done.
    fn add_waiter(&self, f: DoneCallback<T>) -> std::result::Result<u64, DoneCallback<T>> {
        let mut st = self.inner.state.lock();
        if done(&st) && !fault!(CallbackSkipsDoneCheck) {
            return Err(f);
        }
        st.next_callback_id += 1;
        let id = st.next_callback_id;
        st.callbacks.push((id, f));
        Ok(id)
    }

    /// Removes a done callback that has not run (internal waiters that stopped waiting).
    fn remove_waiter(&self, id: u64) {
        let removed = {
            let mut st = self.inner.state.lock();
            let pos = st.callbacks.iter().position(|(cid, _)| *cid == id);
            pos.map(|pos| st.callbacks.remove(pos))
        };
        // Dropped outside the lock: a callback's captures may do anything when dropped.
        drop(removed);
    }

    fn after_done(&self, wakers: Vec<(u64, Waker)>, callbacks: Vec<(u64, DoneCallback<T>)>) {
        if !fault!(SkipWakers) {
            for (_, w) in wakers {
                w.wake();
            }
        }
        for (_, cb) in callbacks {
            run_callback(cb, self);
        }
    }
}

fn run_callback<T>(cb: DoneCallback<T>, fut: &ConcurrentFuture<T>) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| cb(fut))) {
        crate::report_to_stderr(format_args!(
            "braid: a ConcurrentFuture done callback panicked: {}",
            Error::from_panic(payload)
        ));
    }
}

fn done<T>(st: &State<T>) -> bool {
    matches!(st.status, Status::Finished | Status::Cancelled)
}

fn taken_error() -> Error {
    Error::new(
        ErrorKind::InvalidState,
        "the future's value was already moved out",
    )
}

fn take_outcome<T>(st: &mut State<T>) -> Result<T> {
    if st.status == Status::Cancelled {
        return match &st.outcome {
            Some(Err(e)) => Err(e.clone()),
            _ => Err(Error::cancelled(None)),
        };
    }
    match st.outcome.take() {
        Some(outcome) => {
            st.taken = true;
            outcome
        }
        None => Err(taken_error()),
    }
}

impl<T> Inner<T> {
    fn notify_blocked(&self, st: &State<T>) {
        if st.blocked > 0 && !fault!(SkipWaiterNotify) {
            self.cond.notify_all();
        }
    }
}

impl<T: Send + 'static> Completer<T> {
    fn inner(&self) -> &Arc<Inner<T>> {
        self.inner
            .as_ref()
            .expect("a completer is live until it completes")
    }

    /// Marks the work as started, unless the future was cancelled first: then returns false
    /// and the producer must not run the work (Python's `set_running_or_notify_cancel`).
    ///
    /// ```
    /// let (fut, c) = braid_bridge::ConcurrentFuture::<u8>::pair();
    /// assert!(c.set_running_or_notify_cancel());
    /// assert!(!fut.cancel()); // a running job that cannot be interrupted
    /// ```
    pub fn set_running_or_notify_cancel(&self) -> bool {
        let mut st = self.inner().state.lock();
        match st.status {
            Status::Pending => {
                st.status = Status::Running;
                true
            }
            Status::Running => true,
            Status::Cancelled | Status::Finished => false,
        }
    }

    /// Lets the future be cancelled while running, calling `hook` (once) when it is; the
    /// hook asks the producer to stop (a task's `cancel`).
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::Arc;
    /// let asked = Arc::new(AtomicBool::new(false));
    /// let (fut, c) = braid_bridge::ConcurrentFuture::<u8>::pair();
    /// let a = asked.clone();
    /// c.on_cancel(move || a.store(true, Ordering::SeqCst));
    /// c.set_running_or_notify_cancel();
    /// assert!(fut.cancel());
    /// assert!(asked.load(Ordering::SeqCst));
    /// ```
    pub fn on_cancel(&self, hook: impl FnOnce() + Send + 'static) {
        let run_now = {
            let mut st = self.inner().state.lock();
            st.cancellable_while_running = true;
            if st.status == Status::Cancelled {
                true
            } else {
                st.cancel_hook = Some(Box::new(hook));
                return;
            }
        };
        if run_now {
            hook();
        }
    }

    /// True if the future was cancelled (the producer may stop early).
    ///
    /// ```
    /// let (fut, c) = braid_bridge::ConcurrentFuture::<u8>::pair();
    /// fut.cancel();
    /// assert!(c.is_cancelled());
    /// ```
    pub fn is_cancelled(&self) -> bool {
        self.inner().state.lock().status == Status::Cancelled
    }

    /// Completes with `value`.
    ///
    /// ```
    /// let (fut, c) = braid_bridge::ConcurrentFuture::pair();
    /// c.set_result(1);
    /// assert_eq!(fut.result(None).unwrap(), 1);
    /// ```
    pub fn set_result(self, value: T) {
        self.complete(Ok(value));
    }

    /// Completes with an error.
    ///
    /// ```
    /// let (fut, c) = braid_bridge::ConcurrentFuture::<u8>::pair();
    /// c.set_exception(braid_bridge::Error::msg("no"));
    /// assert!(fut.result(None).is_err());
    /// ```
    pub fn set_exception(self, error: Error) {
        self.complete(Err(error));
    }

    /// Completes with `result`. If the future was cancelled meanwhile, the result is kept
    /// only for [`ConcurrentFuture::cancel_and_wait`].
    ///
    /// ```
    /// let (fut, c) = braid_bridge::ConcurrentFuture::<u8>::pair();
    /// c.complete(Ok(3));
    /// assert_eq!(fut.result(None).unwrap(), 3);
    /// ```
    pub fn complete(mut self, result: Result<T>) {
        if let Some(inner) = self.inner.take() {
            settle(&inner, result);
        }
    }
}

fn settle<T: Send + 'static>(inner: &Arc<Inner<T>>, result: Result<T>) {
    let (wakers, callbacks) = {
        let mut st = inner.state.lock();
        st.settled = true;
        st.cancel_hook = None;
        let out = if st.status == Status::Cancelled {
            st.late_outcome = Some(result);
            (Vec::new(), Vec::new())
        } else {
            // Work that ended cancelled (a task cancelled on its loop) shows as cancelled.
            let cancelled = matches!(&result, Err(e) if e.is_cancelled());
            st.status = if cancelled {
                Status::Cancelled
            } else {
                Status::Finished
            };
            st.outcome = Some(result);
            (
                std::mem::take(&mut st.wakers),
                std::mem::take(&mut st.callbacks),
            )
        };
        inner.notify_blocked(&st);
        out
    };
    let fut = ConcurrentFuture::from_inner(inner.clone());
    fut.after_done(wakers, callbacks);
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            // A producer that went away without an answer: settle, so no waiter hangs.
            let (wakers, callbacks) = {
                let mut st = inner.state.lock();
                st.settled = true;
                st.cancel_hook = None;
                let out = if st.status == Status::Cancelled {
                    (Vec::new(), Vec::new())
                } else {
                    st.status = Status::Finished;
                    st.outcome = Some(Err(Error::new(
                        ErrorKind::BrokenExecutor,
                        "the work was dropped before it produced a result",
                    )));
                    (
                        std::mem::take(&mut st.wakers),
                        std::mem::take(&mut st.callbacks),
                    )
                };
                inner.notify_blocked(&st);
                out
            };
            for (_, w) in wakers {
                w.wake();
            }
            let fut = ConcurrentFuture::from_inner(inner);
            for (_, cb) in callbacks {
                run_callback(cb, &fut);
            }
        }
    }
}

impl<T: Send + 'static> Future for ConcurrentFuture<T> {
    type Output = Result<T>;

    /// Awaiting moves the value out (as [`ConcurrentFuture::into_result`]).
    ///
    /// In a braid task it is a cancellation point, as asyncio's `wrap_future` makes it: a
    /// cancel request of the task cancels this future (as [`cancel`](Self::cancel)) and the
    /// await ends with the request's Cancelled error, even when the work cannot be stopped
    /// (a thread-pool job already running). A future already finished gives its outcome
    /// instead, and the request waits for the task's next await point, as braid's await of
    /// a finished `Task` does. Elsewhere (another executor) it only waits.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let this = self.get_mut();
        // Accepted unless the future is done (before or despite this cancel): then its
        // outcome is the await's. Done already, it is not cancelled again: a cancel that
        // found it cancelled would answer true, and deliver the request in its stead.
        let cancelled = task_cancel_point(&mut || !this.done() && (this.cancel() || !this.done()));
        if let Some(cancel) = cancelled {
            // A cancel that won took every waker; one that lost to a running job left ours.
            this.stop_waiting();
            return Poll::Ready(Err(cancel));
        }
        let mut st = this.inner.state.lock();
        if done(&st) {
            // Settling took every waker.
            this.waiting = None;
            return Poll::Ready(take_outcome(&mut st));
        }
        let waker = cx.waker();
        let known = this
            .waiting
            .and_then(|id| st.wakers.iter_mut().find(|(at, _)| *at == id));
        let mut replaced = None;
        match known {
            Some((_, known)) => {
                if !known.will_wake(waker) {
                    replaced = Some(std::mem::replace(known, waker.clone()));
                }
            }
            None => {
                let id = st.next_callback_id;
                st.next_callback_id += 1;
                st.wakers.push((id, waker.clone()));
                this.waiting = Some(id);
            }
        }
        // After the lock: the last reference to a task may free it, and with it a clone of
        // this future.
        drop(st);
        drop(replaced);
        Poll::Pending
    }
}

impl<T> fmt::Debug for ConcurrentFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.inner.state.lock();
        f.debug_struct("ConcurrentFuture")
            .field("state", &st.status)
            .field("taken", &st.taken)
            .finish()
    }
}

impl<T> fmt::Debug for Completer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completer")
            .field("live", &self.inner.is_some())
            .finish()
    }
}

/// Waits until `fs` satisfy `when`, or `timeout` passes; returns `(done, pending)`
/// (Python's `concurrent.futures.wait`). A timeout is not an error.
///
/// Called on a loop thread of the runtime that must complete one of the futures still
/// pending, it does not wait (that could deadlock, as `result` reports): it returns at once,
/// with those futures in `pending`.
///
/// # Examples
///
/// ```
/// use braid_bridge::{wait, ConcurrentFuture, ReturnWhen};
/// use std::time::Duration;
/// let (a, ca) = ConcurrentFuture::<u8>::pair();
/// let (b, _cb) = ConcurrentFuture::<u8>::pair();
/// ca.set_result(1);
/// let (done, pending) = wait(&[a, b], Some(Duration::from_millis(20)), ReturnWhen::FirstCompleted);
/// assert_eq!((done.len(), pending.len()), (1, 1));
/// ```
pub fn wait<T: Send + 'static>(
    fs: &[ConcurrentFuture<T>],
    timeout: Option<Duration>,
    when: ReturnWhen,
) -> (Vec<ConcurrentFuture<T>>, Vec<ConcurrentFuture<T>>) {
    let waiter = Arc::new(Waiter {
        state: Mutex::new(0usize),
        cond: Condvar::new(),
    });
    let satisfied = |fs: &[ConcurrentFuture<T>]| {
        let mut n_done = 0;
        for f in fs {
            let st = f.inner.state.lock();
            if done(&st) {
                n_done += 1;
                let failed = st.status == Status::Finished && matches!(st.outcome, Some(Err(_)));
                if when == ReturnWhen::FirstCompleted
                    || (when == ReturnWhen::FirstException && failed)
                {
                    return true;
                }
            }
        }
        n_done == fs.len()
    };
    let mut registered = Vec::with_capacity(fs.len());
    for f in fs {
        let waiter = waiter.clone();
        let notify: DoneCallback<T> = Box::new(move |_| {
            *waiter.state.lock() += 1;
            waiter.cond.notify_all();
        });
        if let Ok(id) = f.add_waiter(notify) {
            registered.push((f, id));
        }
    }
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let would_deadlock = fs.iter().any(|f| !f.done() && f.check_blocking().is_err());
    let mut seen = waiter.state.lock();
    while !would_deadlock && !satisfied(fs) {
        let timed_out = match deadline {
            Some(d) => waiter.cond.wait_until(&mut seen, d),
            None => {
                waiter.cond.wait(&mut seen);
                false
            }
        };
        if timed_out {
            break;
        }
    }
    drop(seen);
    // Python removes its waiter when wait returns; so do we, or polling `wait` on a future
    // that stays pending would pile up callbacks on it.
    for (f, id) in registered {
        f.remove_waiter(id);
    }
    fs.iter().cloned().partition(ConcurrentFuture::done)
}

struct Waiter {
    state: Mutex<usize>,
    cond: Condvar,
}

/// Yields the futures of `fs` as they finish (Python's `concurrent.futures.as_completed`);
/// if `timeout` passes first, yields one Timeout error and stops. On a loop thread of the
/// runtime that must complete one of the futures still pending, where waiting could
/// deadlock, it yields one `InvalidState` error instead of waiting, and stops.
///
/// # Examples
///
/// ```
/// use braid_bridge::{as_completed, ConcurrentFuture};
/// let (a, ca) = ConcurrentFuture::pair();
/// let (b, cb) = ConcurrentFuture::pair();
/// cb.set_result("b");
/// ca.set_result("a");
/// let order: Vec<_> = as_completed(vec![a, b], None)
///     .map(|f| f.unwrap().result(None).unwrap())
///     .collect();
/// assert_eq!(order.len(), 2);
/// ```
pub fn as_completed<T: Send + 'static>(
    fs: Vec<ConcurrentFuture<T>>,
    timeout: Option<Duration>,
) -> AsCompleted<T> {
    // As Python's (which takes a set): a future given twice is yielded once.
    let mut fs = fs;
    let mut seen = std::collections::HashSet::new();
    fs.retain(|f| seen.insert(Arc::as_ptr(&f.inner) as *const () as usize));
    let shared = Arc::new(Finished {
        queue: Mutex::new(std::collections::VecDeque::new()),
        cond: Condvar::new(),
    });
    let total = fs.len();
    let mut registered = Vec::with_capacity(total);
    for f in fs {
        let notify = {
            let shared = shared.clone();
            move |f: &ConcurrentFuture<T>| {
                shared.queue.lock().push_back(f.clone());
                shared.cond.notify_all();
            }
        };
        match f.add_waiter(Box::new(notify)) {
            Ok(id) => registered.push((f, id)),
            Err(notify) => notify(&f),
        }
    }
    AsCompleted {
        shared,
        registered,
        remaining: total,
        deadline: timeout.and_then(|t| Instant::now().checked_add(t)),
        timed_out: false,
    }
}

struct Finished<T> {
    queue: Mutex<std::collections::VecDeque<ConcurrentFuture<T>>>,
    cond: Condvar,
}

/// The iterator of [`as_completed`]: yields each future once it is done.
///
/// # Examples
///
/// ```
/// use braid_bridge::{as_completed, ConcurrentFuture};
/// let (f, c) = ConcurrentFuture::pair();
/// c.set_result(1);
/// let mut done = as_completed(vec![f], None);
/// assert_eq!(done.next().unwrap().unwrap().result(None).unwrap(), 1);
/// assert!(done.next().is_none());
/// ```
pub struct AsCompleted<T: Send + 'static> {
    shared: Arc<Finished<T>>,
    /// Our callbacks on the futures, removed if the iterator is dropped early.
    registered: Vec<(ConcurrentFuture<T>, u64)>,
    remaining: usize,
    deadline: Option<Instant>,
    timed_out: bool,
}

impl<T: Send + 'static> Iterator for AsCompleted<T> {
    type Item = Result<ConcurrentFuture<T>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 || self.timed_out {
            return None;
        }
        let mut queue = self.shared.queue.lock();
        loop {
            if let Some(f) = queue.pop_front() {
                self.remaining -= 1;
                return Some(Ok(f));
            }
            let blocking = self
                .registered
                .iter()
                .find_map(|(f, _)| f.check_blocking().err().filter(|_| !f.done()));
            if let Some(error) = blocking {
                self.timed_out = true;
                return Some(Err(error));
            }
            let timed_out = match self.deadline {
                Some(d) => self.shared.cond.wait_until(&mut queue, d),
                None => {
                    self.shared.cond.wait(&mut queue);
                    false
                }
            };
            if timed_out && queue.is_empty() {
                self.timed_out = true;
                return Some(Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "{} future(s) unfinished when the timeout passed",
                        self.remaining
                    ),
                )));
            }
        }
    }
}

impl<T: Send + 'static> Drop for AsCompleted<T> {
    fn drop(&mut self) {
        for (f, id) in self.registered.drain(..) {
            f.remove_waiter(id);
        }
    }
}

impl<T: Send + 'static> fmt::Debug for AsCompleted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsCompleted")
            .field("remaining", &self.remaining)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn registered_callbacks<T>(f: &ConcurrentFuture<T>) -> usize {
        f.inner.state.lock().callbacks.len()
    }

    /// `wait` used as a polling loop on a future that stays pending leaves nothing registered
    /// on it: each call removes its waiter when it returns (CPython's `wait` removes its
    /// waiter in a `finally`). Counted directly, so the check does not depend on what other
    /// tests in the process allocate.
    #[test]
    fn a_timed_out_wait_removes_its_waiter() {
        let (fut, c) = ConcurrentFuture::<u8>::pair();
        let fs = [fut];
        for _ in 0..1_000 {
            let (done, pending) = wait(&fs, Some(Duration::ZERO), ReturnWhen::FirstCompleted);
            assert_eq!((done.len(), pending.len()), (0, 1));
            assert_eq!(registered_callbacks(&fs[0]), 0);
        }
        fs[0].add_done_callback(|_| {});
        assert_eq!(registered_callbacks(&fs[0]), 1, "the count sees a callback");
        c.set_result(1);
    }

    /// An `as_completed` iterator dropped before its futures finish removes its waiters.
    #[test]
    fn a_dropped_as_completed_removes_its_waiters() {
        let (a, _ca) = ConcurrentFuture::<u8>::pair();
        let (b, cb) = ConcurrentFuture::<u8>::pair();
        cb.set_result(2);
        let mut it = as_completed(vec![a.clone(), b], None);
        assert_eq!(it.next().unwrap().unwrap().result(None).unwrap(), 2);
        assert_eq!(registered_callbacks(&a), 1);
        drop(it);
        assert_eq!(registered_callbacks(&a), 0);
    }
}
