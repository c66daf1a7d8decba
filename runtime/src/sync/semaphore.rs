//! `Semaphore` and `BoundedSemaphore`: asyncio's, FIFO, with permits handed to waiters.

use super::{pass_on_enabled, wake_all, WaitQueue};
use crate::context;
use braid_bridge::sync::Mutex;
use braid_bridge::{Error, ErrorKind, Result};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// A counter of permits for tasks (asyncio's `Semaphore`), usable from tasks on any loop.
///
/// `acquire` takes a permit or waits for one, first come first served: while anyone waits,
/// newcomers queue even if a permit is free. `release` hands the permit straight to the first
/// waiter. A waiter cancelled after a permit was handed to it gives it back to the next.
///
/// # Examples
///
/// ```
/// braid_runtime::run(async {
///     let sem = braid_runtime::Semaphore::new(2);
///     let a = sem.acquire().await?;
///     let _b = sem.acquire().await?;
///     assert!(sem.locked());
///     drop(a);
///     assert_eq!(sem.value(), 1);
///     Ok(())
/// }).unwrap();
/// ```
pub struct Semaphore {
    state: Mutex<SemState>,
}

struct SemState {
    /// Free permits (not counting those handed to a waiter that has not run yet).
    value: usize,
    waiters: WaitQueue,
}

impl Semaphore {
    /// A semaphore with `permits` free permits.
    ///
    /// ```
    /// assert_eq!(braid_runtime::Semaphore::new(3).value(), 3);
    /// ```
    pub fn new(permits: usize) -> Semaphore {
        Semaphore {
            state: Mutex::new(SemState {
                value: permits,
                waiters: WaitQueue::default(),
            }),
        }
    }

    /// asyncio's `Semaphore(value)`, where a negative value is an error.
    ///
    /// ```
    /// assert_eq!(braid_runtime::Semaphore::with_value(1).unwrap().value(), 1);
    /// assert!(braid_runtime::Semaphore::with_value(-1).is_err());
    /// ```
    ///
    /// # Errors
    ///
    /// `InvalidState` if `value` is negative.
    pub fn with_value(value: isize) -> Result<Semaphore> {
        usize::try_from(value).map(Semaphore::new).map_err(|_| {
            Error::new(
                ErrorKind::InvalidState,
                format!("a Semaphore's initial value must be >= 0, not {value}"),
            )
        })
    }

    /// Takes a permit, waiting for one if none is free; the permit goes back on drop. A
    /// cancellation point.
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let sem = braid_runtime::Semaphore::new(1);
    ///     let permit = sem.acquire().await?;
    ///     assert_eq!(sem.value(), 0);
    ///     drop(permit);
    ///     Ok(())
    /// }).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// The task's Cancelled error if it is cancelled while waiting (it then holds nothing).
    pub fn acquire(&self) -> SemaphoreAcquire<'_> {
        SemaphoreAcquire {
            sem: self,
            waiter: None,
            done: false,
        }
    }

    /// Takes a permit if one is free and nobody waits.
    ///
    /// ```
    /// let sem = braid_runtime::Semaphore::new(1);
    /// let p = sem.try_acquire().unwrap();
    /// assert!(sem.try_acquire().is_none());
    /// drop(p);
    /// ```
    pub fn try_acquire(&self) -> Option<SemaphorePermit<'_>> {
        let mut state = self.state.lock();
        if state.value == 0 || !state.waiters.is_empty() {
            return None;
        }
        state.value -= 1;
        Some(SemaphorePermit { sem: self })
    }

    /// Adds one permit (asyncio's `release`), handing it to the first waiter if any.
    ///
    /// ```
    /// let sem = braid_runtime::Semaphore::new(0);
    /// sem.release();
    /// assert_eq!(sem.value(), 1);
    /// ```
    pub fn release(&self) {
        let waker = {
            let mut state = self.state.lock();
            state.value += 1;
            state.hand_over()
        };
        wake_all(waker);
    }

    /// True if an `acquire` now would wait.
    ///
    /// ```
    /// assert!(braid_runtime::Semaphore::new(0).locked());
    /// ```
    pub fn locked(&self) -> bool {
        let state = self.state.lock();
        state.value == 0 || !state.waiters.is_empty()
    }

    /// The free permits.
    ///
    /// ```
    /// assert_eq!(braid_runtime::Semaphore::new(2).value(), 2);
    /// ```
    pub fn value(&self) -> usize {
        self.state.lock().value
    }

    /// The acquire step: `Ready(true)` with a permit, `Ready(false)` if `cancelled` made us
    /// leave the line (giving back a permit handed to us).
    pub(crate) fn poll_acquire(
        &self,
        waiter: &mut Option<u64>,
        waker: &Waker,
        cancelled: bool,
    ) -> Poll<bool> {
        let mut state = self.state.lock();
        let Some(id) = *waiter else {
            if cancelled {
                return Poll::Ready(false);
            }
            if state.value > 0 && state.waiters.is_empty() {
                state.value -= 1;
                return Poll::Ready(true);
            }
            *waiter = Some(state.waiters.push(waker));
            return Poll::Pending;
        };
        if cancelled {
            *waiter = None;
            let wake = state.leave(id);
            drop(state);
            wake_all(wake);
            return Poll::Ready(false);
        }
        if state.waiters.check(id, waker) {
            *waiter = None;
            state.waiters.remove(id);
            // Newcomers that queued behind us while permits were free may go now.
            let wake = state.hand_over_all();
            drop(state);
            wake_all(wake);
            return Poll::Ready(true);
        }
        Poll::Pending
    }

    pub(crate) fn abandon(&self, waiter: &mut Option<u64>) {
        if let Some(id) = waiter.take() {
            let wake = self.state.lock().leave(id);
            wake_all(wake);
        }
    }
}

impl SemState {
    /// Hands a free permit to the first waiter not yet served.
    fn hand_over(&mut self) -> Option<Waker> {
        if self.value == 0 {
            return None;
        }
        let waker = self.waiters.notify_one()?;
        self.value -= 1;
        Some(waker)
    }

    fn hand_over_all(&mut self) -> Vec<Waker> {
        let mut wake = Vec::new();
        while let Some(waker) = self.hand_over() {
            wake.push(waker);
        }
        wake
    }

    /// Waiter `id` leaves; a permit handed to it goes to the next.
    fn leave(&mut self, id: u64) -> Vec<Waker> {
        if self.waiters.remove(id) && pass_on_enabled() {
            self.value += 1;
        }
        self.hand_over_all()
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        f.debug_struct("Semaphore")
            .field("value", &state.value)
            .field("waiters", &state.waiters.len())
            .finish()
    }
}

/// The future of [`Semaphore::acquire`] and [`BoundedSemaphore::acquire`].
///
/// # Cancel safety
///
/// Dropping it leaves the line without a trace (a permit handed to us goes to the next).
#[must_use = "futures do nothing unless you `.await` them"]
pub struct SemaphoreAcquire<'a> {
    sem: &'a Semaphore,
    waiter: Option<u64>,
    done: bool,
}

impl<'a> Future for SemaphoreAcquire<'a> {
    type Output = Result<SemaphorePermit<'a>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(Err(crate::combinators::polled_after_completion(
                "Semaphore::acquire",
            )));
        }
        let cancel = context::take_cancel();
        context::clear_awaiting(None);
        match this
            .sem
            .poll_acquire(&mut this.waiter, cx.waker(), cancel.is_some())
        {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => {
                this.done = true;
                Poll::Ready(match cancel {
                    Some(cancel) => Err(cancel),
                    None => Ok(SemaphorePermit { sem: this.sem }),
                })
            }
        }
    }
}

impl Drop for SemaphoreAcquire<'_> {
    fn drop(&mut self) {
        self.sem.abandon(&mut self.waiter);
    }
}

impl fmt::Debug for SemaphoreAcquire<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemaphoreAcquire")
            .field("waiting", &self.waiter.is_some())
            .finish()
    }
}

/// One permit of a [`Semaphore`] or [`BoundedSemaphore`]; released on drop.
///
/// ```
/// let sem = braid_runtime::Semaphore::new(1);
/// {
///     let _permit = sem.try_acquire().unwrap();
///     assert_eq!(sem.value(), 0);
/// }
/// assert_eq!(sem.value(), 1);
/// ```
#[must_use = "the permit is released as soon as it is dropped"]
pub struct SemaphorePermit<'a> {
    sem: &'a Semaphore,
}

impl SemaphorePermit<'_> {
    /// Consumes the permit without giving it back.
    ///
    /// ```
    /// let sem = braid_runtime::Semaphore::new(1);
    /// sem.try_acquire().unwrap().forget();
    /// assert_eq!(sem.value(), 0);
    /// ```
    pub fn forget(self) {
        std::mem::forget(self);
    }
}

impl Drop for SemaphorePermit<'_> {
    fn drop(&mut self) {
        self.sem.release();
    }
}

impl fmt::Debug for SemaphorePermit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemaphorePermit").finish_non_exhaustive()
    }
}

/// A [`Semaphore`] that refuses to be released past its initial value (asyncio's
/// `BoundedSemaphore`).
///
/// # Examples
///
/// ```
/// let sem = braid_runtime::BoundedSemaphore::new(1);
/// assert!(sem.release().is_err()); // nothing was acquired
/// sem.try_acquire().unwrap().forget();
/// assert!(sem.release().is_ok());
/// ```
pub struct BoundedSemaphore {
    sem: Semaphore,
    bound: usize,
}

impl BoundedSemaphore {
    /// A bounded semaphore with `permits` permits, which is also its bound.
    ///
    /// ```
    /// assert_eq!(braid_runtime::BoundedSemaphore::new(2).value(), 2);
    /// ```
    pub fn new(permits: usize) -> BoundedSemaphore {
        BoundedSemaphore {
            sem: Semaphore::new(permits),
            bound: permits,
        }
    }

    /// As [`Semaphore::with_value`].
    ///
    /// ```
    /// assert!(braid_runtime::BoundedSemaphore::with_value(-2).is_err());
    /// ```
    ///
    /// # Errors
    ///
    /// `InvalidState` if `value` is negative.
    pub fn with_value(value: isize) -> Result<BoundedSemaphore> {
        let sem = Semaphore::with_value(value)?;
        let bound = sem.value();
        Ok(BoundedSemaphore { sem, bound })
    }

    /// As [`Semaphore::acquire`].
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let sem = braid_runtime::BoundedSemaphore::new(1);
    ///     let _permit = sem.acquire().await?;
    ///     assert!(sem.locked());
    ///     Ok(())
    /// }).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Semaphore::acquire`].
    pub fn acquire(&self) -> SemaphoreAcquire<'_> {
        self.sem.acquire()
    }

    /// As [`Semaphore::try_acquire`].
    ///
    /// ```
    /// let sem = braid_runtime::BoundedSemaphore::new(1);
    /// assert!(sem.try_acquire().is_some());
    /// ```
    pub fn try_acquire(&self) -> Option<SemaphorePermit<'_>> {
        self.sem.try_acquire()
    }

    /// Adds one permit, unless that would exceed the initial value.
    ///
    /// ```
    /// let sem = braid_runtime::BoundedSemaphore::new(0);
    /// assert!(sem.release().is_err());
    /// ```
    ///
    /// # Errors
    ///
    /// `InvalidState` ("released too many times") past the initial value.
    pub fn release(&self) -> Result<()> {
        let waker = {
            let mut state = self.sem.state.lock();
            if state.value >= self.bound {
                return Err(Error::new(
                    ErrorKind::InvalidState,
                    "BoundedSemaphore released too many times",
                ));
            }
            state.value += 1;
            state.hand_over()
        };
        wake_all(waker);
        Ok(())
    }

    /// As [`Semaphore::locked`].
    ///
    /// ```
    /// assert!(!braid_runtime::BoundedSemaphore::new(1).locked());
    /// ```
    pub fn locked(&self) -> bool {
        self.sem.locked()
    }

    /// As [`Semaphore::value`].
    ///
    /// ```
    /// assert_eq!(braid_runtime::BoundedSemaphore::new(4).value(), 4);
    /// ```
    pub fn value(&self) -> usize {
        self.sem.value()
    }
}

impl fmt::Debug for BoundedSemaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedSemaphore")
            .field("semaphore", &self.sem)
            .field("bound", &self.bound)
            .finish()
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::loom_support::{model, Flag};
    use loom::sync::Arc;
    use loom::thread;

    /// A release hands the permit to the first waiter while that waiter is cancelled: the
    /// permit is never lost, it reaches the second waiter.
    fn release_races_cancel_of_the_first_waiter() {
        let sem = Arc::new(Semaphore::new(0));
        let (_, b_waker) = Flag::new();
        let (c_flag, c_waker) = Flag::new();
        let mut b = None;
        let mut c = None;
        assert!(sem.poll_acquire(&mut b, &b_waker, false).is_pending());
        assert!(sem.poll_acquire(&mut c, &c_waker, false).is_pending());

        let releaser = {
            let sem = sem.clone();
            thread::spawn(move || sem.release())
        };
        let canceller = {
            let sem = sem.clone();
            thread::spawn(move || {
                assert_eq!(sem.poll_acquire(&mut b, &b_waker, true), Poll::Ready(false));
            })
        };
        releaser.join().unwrap();
        canceller.join().unwrap();
        assert!(c_flag.woken(), "the permit must reach the next waiter");
        assert_eq!(sem.poll_acquire(&mut c, &c_waker, false), Poll::Ready(true));
        assert_eq!(sem.value(), 0, "exactly one permit was released");
    }

    #[test]
    fn loom_semaphore_release_races_cancel() {
        model(false, release_races_cancel_of_the_first_waiter);
    }

    #[test]
    #[should_panic(expected = "must reach the next waiter")]
    fn loom_semaphore_release_races_cancel_without_pass_on() {
        model(true, release_races_cancel_of_the_first_waiter);
    }
}
