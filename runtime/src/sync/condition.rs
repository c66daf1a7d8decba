//! `Condition`: asyncio.Condition over a braid [`Lock`].

use super::{wake_all, Lock, LockAcquire, WaitQueue};
use crate::context;
use braid_bridge::sync::Mutex;
use braid_bridge::Result;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// A condition variable for tasks (asyncio's `Condition`): waiters release the lock, wait for
/// a notify, and hold the lock again when `wait` returns, even when it returns an error.
///
/// # Examples
///
/// ```
/// use std::sync::{Arc, atomic::{AtomicBool, Ordering}};
/// braid_runtime::run(async {
///     let cond = Arc::new(braid_runtime::Condition::new());
///     let ready = Arc::new(AtomicBool::new(false));
///     let waiter = {
///         let (cond, ready) = (cond.clone(), ready.clone());
///         braid_runtime::create_task(async move {
///             let mut guard = cond.acquire().await?;
///             guard.wait_for(|| ready.load(Ordering::SeqCst)).await?;
///             Ok(())
///         })
///     };
///     braid_runtime::sleep(std::time::Duration::from_millis(5)).await?;
///     let guard = cond.acquire().await?;
///     ready.store(true, Ordering::SeqCst);
///     guard.notify_all();
///     drop(guard);
///     waiter.await?;
///     Ok(())
/// }).unwrap();
/// ```
pub struct Condition {
    lock: Arc<Lock>,
    waiters: Mutex<WaitQueue>,
}

impl Condition {
    /// A condition with its own lock.
    ///
    /// ```
    /// assert!(!braid_runtime::Condition::new().locked());
    /// ```
    pub fn new() -> Condition {
        Condition::with_lock(Arc::new(Lock::new()))
    }

    /// A condition over a lock shared with others (asyncio's `Condition(lock)`).
    ///
    /// ```
    /// use std::sync::Arc;
    /// let lock = Arc::new(braid_runtime::Lock::new());
    /// let cond = braid_runtime::Condition::with_lock(lock.clone());
    /// let _g = lock.try_acquire().unwrap();
    /// assert!(cond.locked());
    /// ```
    pub fn with_lock(lock: Arc<Lock>) -> Condition {
        Condition {
            lock,
            waiters: Mutex::new(WaitQueue::default()),
        }
    }

    /// Acquires the underlying lock. A cancellation point.
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let cond = braid_runtime::Condition::new();
    ///     let _guard = cond.acquire().await?;
    ///     assert!(cond.locked());
    ///     Ok(())
    /// }).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// The task's Cancelled error if it is cancelled while waiting for the lock.
    pub fn acquire(&self) -> ConditionAcquire<'_> {
        ConditionAcquire {
            cond: self,
            acquire: self.lock.acquire(),
        }
    }

    /// True while the underlying lock is held.
    ///
    /// ```
    /// assert!(!braid_runtime::Condition::new().locked());
    /// ```
    pub fn locked(&self) -> bool {
        self.lock.locked()
    }
}

impl Default for Condition {
    fn default() -> Self {
        Condition::new()
    }
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condition")
            .field("lock", &self.lock)
            .field("waiters", &self.waiters.lock().len())
            .finish()
    }
}

/// The lock of a [`Condition`], held; released on drop.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ConditionGuard<'a> {
    cond: &'a Condition,
    /// False only after a `wait` future was dropped half-way (the lock released and not yet
    /// taken back): then there is nothing to release.
    held: bool,
}

impl<'a> ConditionGuard<'a> {
    /// Releases the lock, waits for a notify, and takes the lock back (asyncio's
    /// `Condition.wait`). The lock is held again when this returns, whatever it returns.
    ///
    /// ```
    /// use std::sync::{Arc, atomic::{AtomicBool, Ordering}};
    /// braid_runtime::run(async {
    ///     let cond = Arc::new(braid_runtime::Condition::new());
    ///     let ready = Arc::new(AtomicBool::new(false));
    ///     let (c, r) = (cond.clone(), ready.clone());
    ///     let notifier = braid_runtime::create_task(async move {
    ///         let g = c.acquire().await?;
    ///         r.store(true, Ordering::Relaxed);
    ///         g.notify(1);
    ///         Ok(())
    ///     });
    ///     let mut guard = cond.acquire().await?;
    ///     // A notify reaches only a task already waiting, and the notifier may have run on
    ///     // another loop first: check the state under the lock before each wait.
    ///     while !ready.load(Ordering::Relaxed) {
    ///         guard.wait().await?; // releases the lock: the notifier can run
    ///     }
    ///     assert!(cond.locked());
    ///     notifier.await
    /// }).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// The task's Cancelled error if it is cancelled while waiting (the lock is held again
    /// all the same). A notify that reached a waiter cancelled before it ran goes to the next.
    ///
    /// An InvalidState error, at once and without touching the lock, if the guard holds
    /// nothing (see below).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future half-way leaves the lock released (the guard then holds nothing,
    /// and a later `wait` on it fails). A notify it may have consumed goes to the next waiter.
    pub fn wait(&mut self) -> ConditionWait<'_, 'a> {
        ConditionWait {
            guard: self,
            step: WaitStep::Start,
            error: None,
        }
    }

    /// Waits until `predicate` is true, checking it first and after every notify (asyncio's
    /// `wait_for`).
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let cond = braid_runtime::Condition::new();
    ///     let mut guard = cond.acquire().await?;
    ///     guard.wait_for(|| true).await?; // already true: no wait
    ///     Ok(())
    /// }).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// As [`wait`](ConditionGuard::wait).
    pub fn wait_for<P: FnMut() -> bool>(&mut self, predicate: P) -> ConditionWaitFor<'_, 'a, P> {
        ConditionWaitFor {
            wait: ConditionWait {
                guard: self,
                step: WaitStep::Done,
                error: None,
            },
            predicate,
        }
    }

    /// Wakes up to `n` waiters, in the order they started waiting.
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let cond = braid_runtime::Condition::new();
    ///     cond.acquire().await?.notify(1); // nobody waits: nothing happens
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn notify(&self, n: usize) {
        let mut wake = Vec::new();
        self.cond.waiters.lock().notify(n, &mut wake);
        wake_all(wake);
    }

    /// Wakes every waiter.
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let cond = braid_runtime::Condition::new();
    ///     cond.acquire().await?.notify_all();
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn notify_all(&self) {
        self.notify(usize::MAX);
    }
}

impl Drop for ConditionGuard<'_> {
    fn drop(&mut self) {
        if self.held {
            self.cond.lock.release_held();
        }
    }
}

impl fmt::Debug for ConditionGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConditionGuard")
            .field("held", &self.held)
            .finish()
    }
}

impl Condition {
    /// Notifies one more waiter in place of a wait that may have consumed a notify and will
    /// not act on it (it ends in an error, or is dropped): a spurious wake-up is allowed, a
    /// lost one is not.
    fn pass_notify_on(&self) {
        let pass_on = self.waiters.lock().notify_one();
        wake_all(pass_on);
    }
}

/// `wait` or `wait_for` on a guard that holds nothing (an earlier wait of it was dropped
/// half-way).
fn not_held_error() -> braid_bridge::Error {
    braid_bridge::Error::new(
        braid_bridge::ErrorKind::InvalidState,
        "Condition::wait on a guard that does not hold the lock: an earlier wait of it was \
         dropped before it took the lock back",
    )
}

/// The future of [`ConditionGuard::wait`].
#[must_use = "futures do nothing unless you `.await` them"]
pub struct ConditionWait<'g, 'a> {
    guard: &'g mut ConditionGuard<'a>,
    step: WaitStep,
    /// The Cancelled error to return once the lock is ours again.
    error: Option<braid_bridge::Error>,
}

enum WaitStep {
    Start,
    /// In the condition's line.
    Waiting(u64),
    /// Taking the lock back (cancels are kept for later, as asyncio does).
    Reacquiring(Option<u64>),
    Done,
}

impl Future for ConditionWait<'_, '_> {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        if matches!(this.step, WaitStep::Done) {
            return Poll::Ready(Err(crate::combinators::polled_after_completion(
                "Condition::wait",
            )));
        }
        this.poll_wait(cx)
    }
}

impl ConditionWait<'_, '_> {
    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self;
        let cond = this.guard.cond;
        loop {
            match &mut this.step {
                WaitStep::Start => {
                    if !this.guard.held {
                        // Releasing here would release the lock for whoever holds it now.
                        this.step = WaitStep::Done;
                        return Poll::Ready(Err(not_held_error()));
                    }
                    if let Some(cancel) = context::cancel_point() {
                        this.step = WaitStep::Done;
                        return Poll::Ready(Err(cancel));
                    }
                    // Join the line before releasing the lock: a notify made by whoever
                    // takes the lock next must find us.
                    let id = cond.waiters.lock().push(cx.waker());
                    this.guard.held = false;
                    cond.lock.release_held();
                    this.step = WaitStep::Waiting(id);
                    return Poll::Pending;
                }
                WaitStep::Waiting(id) => {
                    let id = *id;
                    let cancel = context::take_cancel();
                    context::clear_awaiting(None);
                    let mut waiters = cond.waiters.lock();
                    if let Some(cancel) = cancel {
                        waiters.remove(id);
                        drop(waiters);
                        this.error = Some(cancel);
                        this.step = WaitStep::Reacquiring(None);
                        continue;
                    }
                    if !waiters.check(id, cx.waker()) {
                        return Poll::Pending;
                    }
                    waiters.remove(id);
                    drop(waiters);
                    this.step = WaitStep::Reacquiring(None);
                }
                WaitStep::Reacquiring(waiter) => {
                    if cond
                        .lock
                        .poll_acquire(waiter, cx.waker(), false)
                        .is_pending()
                    {
                        return Poll::Pending;
                    }
                    this.guard.held = true;
                    this.step = WaitStep::Done;
                    // A cancel that came while we took the lock back is the latest error.
                    if let Some(cancel) = context::cancel_point() {
                        this.error = Some(cancel);
                    }
                    return Poll::Ready(match this.error.take() {
                        Some(error) => {
                            // As Python 3.13: a wait that ends in an error may have consumed a
                            // notify meant to wake someone; notify another waiter instead.
                            cond.pass_notify_on();
                            Err(error)
                        }
                        None => Ok(()),
                    });
                }
                WaitStep::Done => unreachable!("checked by the callers"),
            }
        }
    }
}

impl Drop for ConditionWait<'_, '_> {
    fn drop(&mut self) {
        let cond = self.guard.cond;
        match &mut self.step {
            WaitStep::Waiting(id) => {
                let pass_on = {
                    let mut waiters = cond.waiters.lock();
                    if waiters.remove(*id) {
                        waiters.notify_one()
                    } else {
                        None
                    }
                };
                wake_all(pass_on);
            }
            WaitStep::Reacquiring(waiter) => {
                cond.lock.abandon(waiter);
                // This wait may have consumed a notify (as a wait ending in an error may):
                // pass one on, or a waiter behind it could wait for good.
                cond.pass_notify_on();
            }
            WaitStep::Start | WaitStep::Done => {}
        }
    }
}

/// The future of [`Condition::acquire`].
#[must_use = "futures do nothing unless you `.await` them"]
pub struct ConditionAcquire<'a> {
    cond: &'a Condition,
    acquire: LockAcquire<'a>,
}

impl<'a> Future for ConditionAcquire<'a> {
    type Output = Result<ConditionGuard<'a>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        Pin::new(&mut this.acquire).poll(cx).map_ok(|guard| {
            guard.detach();
            ConditionGuard {
                cond: this.cond,
                held: true,
            }
        })
    }
}

impl fmt::Debug for ConditionAcquire<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConditionAcquire")
            .field("acquire", &self.acquire)
            .finish()
    }
}

/// The future of [`ConditionGuard::wait_for`].
#[must_use = "futures do nothing unless you `.await` them"]
pub struct ConditionWaitFor<'g, 'a, P> {
    /// Between waits its step is `Done`; each round restarts it.
    wait: ConditionWait<'g, 'a>,
    predicate: P,
}

impl<P: FnMut() -> bool + Unpin> Future for ConditionWaitFor<'_, '_, P> {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        loop {
            if matches!(this.wait.step, WaitStep::Done) {
                if !this.wait.guard.held {
                    return Poll::Ready(Err(not_held_error()));
                }
                if (this.predicate)() {
                    return Poll::Ready(Ok(()));
                }
                this.wait.step = WaitStep::Start;
            }
            match this.wait.poll_wait(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Ready(Ok(())) => {}
            }
        }
    }
}

impl<P> fmt::Debug for ConditionWaitFor<'_, '_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConditionWaitFor")
            .field("wait", &self.wait)
            .finish()
    }
}

impl fmt::Debug for ConditionWait<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let step = match self.step {
            WaitStep::Start => "start",
            WaitStep::Waiting(_) => "waiting",
            WaitStep::Reacquiring(_) => "reacquiring",
            WaitStep::Done => "done",
        };
        f.debug_struct("ConditionWait")
            .field("step", &step)
            .finish()
    }
}
