//! `Lock`: asyncio.Lock, FIFO and cancel-safe.

use super::{pass_on_enabled, wake_all, WaitQueue};
use crate::context;
use braid_bridge::sync::Mutex;
use braid_bridge::{Error, ErrorKind, Result};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// A mutual-exclusion lock for tasks (asyncio's `Lock`), usable from tasks on any loop.
///
/// Acquisition is first come, first served: once a task waits, later callers queue behind it
/// even while the lock is momentarily free. A waiter that is cancelled leaves no trace; one
/// that was already chosen to take the lock when the cancel arrived passes it on to the next.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// braid_runtime::run(async {
///     let lock = Arc::new(braid_runtime::Lock::new());
///     let guard = lock.acquire().await?;
///     assert!(lock.locked());
///     drop(guard); // releases
///     assert!(!lock.locked());
///     Ok(())
/// }).unwrap();
/// ```
pub struct Lock {
    state: Mutex<LockState>,
}

struct LockState {
    locked: bool,
    waiters: WaitQueue,
}

impl Lock {
    /// An unlocked lock.
    ///
    /// ```
    /// assert!(!braid_runtime::Lock::new().locked());
    /// ```
    pub fn new() -> Lock {
        Lock {
            state: Mutex::new(LockState {
                locked: false,
                waiters: WaitQueue::default(),
            }),
        }
    }

    /// Waits for the lock; the guard releases it on drop. A cancellation point.
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let lock = braid_runtime::Lock::new();
    ///     let _guard = lock.acquire().await?;
    ///     assert!(lock.try_acquire().is_none());
    ///     Ok(())
    /// }).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// The task's Cancelled error if it is cancelled while waiting (it then holds nothing).
    pub fn acquire(&self) -> LockAcquire<'_> {
        LockAcquire {
            lock: self,
            waiter: None,
            done: false,
        }
    }

    /// Takes the lock if it is free and nobody is waiting for it.
    ///
    /// ```
    /// let lock = braid_runtime::Lock::new();
    /// let guard = lock.try_acquire().expect("free");
    /// assert!(lock.try_acquire().is_none());
    /// drop(guard);
    /// ```
    pub fn try_acquire(&self) -> Option<LockGuard<'_>> {
        let mut state = self.state.lock();
        if state.locked || !state.waiters.is_empty() {
            return None;
        }
        state.locked = true;
        Some(LockGuard { lock: self })
    }

    /// True while someone holds the lock.
    ///
    /// ```
    /// let lock = braid_runtime::Lock::new();
    /// let _g = lock.try_acquire();
    /// assert!(lock.locked());
    /// ```
    pub fn locked(&self) -> bool {
        self.state.lock().locked
    }

    /// Releases the lock held without a guard (see [`LockGuard::detach`]), asyncio style.
    ///
    /// ```
    /// let lock = braid_runtime::Lock::new();
    /// lock.try_acquire().unwrap().detach();
    /// assert!(lock.locked());
    /// lock.release().unwrap();
    /// assert!(lock.release().is_err()); // not locked any more
    /// ```
    ///
    /// # Errors
    ///
    /// `InvalidState` if the lock is not locked.
    pub fn release(&self) -> Result<()> {
        let waker = {
            let mut state = self.state.lock();
            if !state.locked {
                return Err(Error::new(
                    ErrorKind::InvalidState,
                    "release of an unlocked Lock",
                ));
            }
            state.locked = false;
            state.waiters.notify_one()
        };
        wake_all(waker);
        Ok(())
    }

    /// The acquire step: `Ready(true)` once the lock is ours, `Ready(false)` if `cancelled`
    /// made us leave the line (passing the lock on if it had been meant for us).
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
            if !state.locked && state.waiters.is_empty() {
                state.locked = true;
                return Poll::Ready(true);
            }
            *waiter = Some(state.waiters.push(waker));
            return Poll::Pending;
        };
        if cancelled {
            *waiter = None;
            let pass_on = state.leave(id);
            drop(state);
            wake_all(pass_on);
            return Poll::Ready(false);
        }
        if state.waiters.check(id, waker) {
            // Notified: the lock was released for us, and nobody may barge in meanwhile.
            *waiter = None;
            state.waiters.remove(id);
            debug_assert!(!state.locked, "a notified waiter finds the lock free");
            state.locked = true;
            return Poll::Ready(true);
        }
        Poll::Pending
    }

    /// A waiter that will never take the lock leaves the line.
    pub(crate) fn abandon(&self, waiter: &mut Option<u64>) {
        if let Some(id) = waiter.take() {
            let pass_on = self.state.lock().leave(id);
            wake_all(pass_on);
        }
    }

    pub(crate) fn release_held(&self) {
        let _ = self.release();
    }
}

impl LockState {
    /// Waiter `id` leaves; if the lock had been released for it, the next one is notified.
    fn leave(&mut self, id: u64) -> Option<Waker> {
        if self.waiters.remove(id) && !self.locked && pass_on_enabled() {
            self.waiters.notify_one()
        } else {
            None
        }
    }
}

impl Default for Lock {
    fn default() -> Self {
        Lock::new()
    }
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        f.debug_struct("Lock")
            .field("locked", &state.locked)
            .field("waiters", &state.waiters.len())
            .finish()
    }
}

/// The future of [`Lock::acquire`].
///
/// # Cancel safety
///
/// Dropping it leaves the line without a trace (passing the lock on if it was meant for us).
#[must_use = "futures do nothing unless you `.await` them"]
pub struct LockAcquire<'a> {
    lock: &'a Lock,
    waiter: Option<u64>,
    done: bool,
}

impl<'a> Future for LockAcquire<'a> {
    type Output = Result<LockGuard<'a>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<LockGuard<'a>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(Err(crate::combinators::polled_after_completion(
                "Lock::acquire",
            )));
        }
        let cancel = context::take_cancel();
        context::clear_awaiting(None);
        match this
            .lock
            .poll_acquire(&mut this.waiter, cx.waker(), cancel.is_some())
        {
            Poll::Pending => Poll::Pending,
            Poll::Ready(acquired) => {
                this.done = true;
                match cancel {
                    Some(cancel) => Poll::Ready(Err(cancel)),
                    None => {
                        debug_assert!(acquired);
                        Poll::Ready(Ok(LockGuard { lock: this.lock }))
                    }
                }
            }
        }
    }
}

impl Drop for LockAcquire<'_> {
    fn drop(&mut self) {
        self.lock.abandon(&mut self.waiter);
    }
}

impl fmt::Debug for LockAcquire<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockAcquire")
            .field("waiting", &self.waiter.is_some())
            .finish()
    }
}

/// Holds a [`Lock`]; releases it on drop.
///
/// ```
/// let lock = braid_runtime::Lock::new();
/// {
///     let _guard = lock.try_acquire().unwrap();
///     assert!(lock.locked());
/// }
/// assert!(!lock.locked());
/// ```
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard<'a> {
    lock: &'a Lock,
}

impl LockGuard<'_> {
    /// Keeps the lock held without a guard; release it with [`Lock::release`].
    ///
    /// ```
    /// let lock = braid_runtime::Lock::new();
    /// lock.try_acquire().unwrap().detach();
    /// assert!(lock.locked());
    /// lock.release().unwrap();
    /// ```
    pub fn detach(self) {
        std::mem::forget(self);
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        self.lock.release_held();
    }
}

impl fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard").finish_non_exhaustive()
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::loom_support::{model, Flag};
    use loom::sync::Arc;
    use loom::thread;

    /// The holder releases while the first waiter (the one the release picks) is cancelled:
    /// in every interleaving the lock reaches the second waiter, woken and able to take it.
    fn release_races_cancel_of_the_first_waiter() {
        let lock = Arc::new(Lock::new());
        lock.try_acquire().expect("free").detach();
        let (_, b_waker) = Flag::new();
        let (c_flag, c_waker) = Flag::new();
        let mut b = None;
        let mut c = None;
        assert!(lock.poll_acquire(&mut b, &b_waker, false).is_pending());
        assert!(lock.poll_acquire(&mut c, &c_waker, false).is_pending());

        let releaser = {
            let lock = lock.clone();
            thread::spawn(move || lock.release().expect("held"))
        };
        let canceller = {
            let lock = lock.clone();
            thread::spawn(move || {
                assert_eq!(
                    lock.poll_acquire(&mut b, &b_waker, true),
                    Poll::Ready(false)
                );
            })
        };
        releaser.join().unwrap();
        canceller.join().unwrap();
        assert!(c_flag.woken(), "the lock's next waiter must be woken");
        assert_eq!(
            lock.poll_acquire(&mut c, &c_waker, false),
            Poll::Ready(true)
        );
    }

    #[test]
    fn loom_lock_release_races_cancel() {
        model(false, release_races_cancel_of_the_first_waiter);
    }

    #[test]
    #[should_panic(expected = "next waiter must be woken")]
    fn loom_lock_release_races_cancel_without_pass_on() {
        model(true, release_races_cancel_of_the_first_waiter);
    }
}
