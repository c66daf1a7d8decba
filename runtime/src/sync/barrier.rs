//! `Barrier`: asyncio.Barrier (filling, draining, resetting, broken).

use super::{wake_all, WaitQueue};
use crate::context;
use braid_bridge::sync::Mutex;
use braid_bridge::{Error, ErrorKind, Result};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Lets `parties` tasks wait for each other (asyncio's `Barrier`): each `wait` blocks until
/// `parties` tasks are waiting, then all are released together, each with its arrival index
/// (0 for the first to arrive). The barrier can be used again once they have all left.
///
/// `abort` breaks the barrier (every waiter and later `wait` fails with [`BrokenBarrier`]
/// until `reset`); `reset` sends the current waiters away with `BrokenBarrier` and makes the
/// barrier usable again. A waiter that is cancelled simply leaves.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// braid_runtime::run(async {
///     let barrier = Arc::new(braid_runtime::Barrier::new(3));
///     let tasks: Vec<_> = (0..3)
///         .map(|_| {
///             let b = barrier.clone();
///             braid_runtime::create_task(async move { b.wait().await })
///         })
///         .collect();
///     let mut indices = braid_runtime::gather(tasks).await?;
///     indices.sort();
///     assert_eq!(indices, [0, 1, 2]);
///     Ok(())
/// }).unwrap();
/// ```
pub struct Barrier {
    parties: usize,
    state: Mutex<BarrierState>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Collecting waiters.
    Filling,
    /// Released: the waiters are leaving; newcomers wait until all have left.
    Draining,
    /// `reset` while waiters were inside: they leave with BrokenBarrier.
    Resetting,
    /// `abort`: everyone fails until `reset`.
    Broken,
}

struct BarrierState {
    phase: Phase,
    /// Waiters inside the barrier (arrived and not yet left).
    count: usize,
    waiters: WaitQueue,
}

/// The error of a `wait` on an aborted or reset barrier (asyncio's `BrokenBarrierError`);
/// reach it with `Error::downcast_ref`. Its kind is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokenBarrier;

impl fmt::Display for BrokenBarrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the barrier is broken (aborted or reset)")
    }
}

impl std::error::Error for BrokenBarrier {}

fn broken() -> Error {
    Error::with_source(ErrorKind::Other, BrokenBarrier)
}

impl Barrier {
    /// A barrier for `parties` tasks. A barrier of 0 parties fails every `wait` with
    /// `InvalidState` (asyncio refuses to create one).
    ///
    /// ```
    /// assert_eq!(braid_runtime::Barrier::new(2).parties(), 2);
    /// ```
    pub fn new(parties: usize) -> Barrier {
        Barrier {
            parties,
            state: Mutex::new(BarrierState {
                phase: Phase::Filling,
                count: 0,
                waiters: WaitQueue::default(),
            }),
        }
    }

    /// Waits until `parties` tasks wait; returns this task's arrival index. A cancellation
    /// point.
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let b = braid_runtime::Barrier::new(1);
    ///     assert_eq!(b.wait().await?, 0); // one party: released at once
    ///     Ok(())
    /// }).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// [`BrokenBarrier`] if the barrier is or becomes aborted or reset while waiting;
    /// `InvalidState` for a barrier of 0 parties; the task's Cancelled error.
    pub fn wait(&self) -> BarrierWait<'_> {
        BarrierWait {
            barrier: self,
            step: Step::Blocking,
            waiter: None,
        }
    }

    /// Makes the barrier usable again: waiters inside leave with [`BrokenBarrier`].
    ///
    /// ```
    /// let b = braid_runtime::Barrier::new(2);
    /// b.abort();
    /// b.reset();
    /// assert!(!b.broken());
    /// ```
    pub fn reset(&self) {
        let mut wake = Vec::new();
        {
            let mut state = self.state.lock();
            state.phase = if state.count > 0 {
                Phase::Resetting
            } else {
                Phase::Filling
            };
            state.waiters.wake_all(&mut wake);
        }
        wake_all(wake);
    }

    /// Breaks the barrier: every waiter and later `wait` fails with [`BrokenBarrier`] until
    /// `reset`.
    ///
    /// ```
    /// let b = braid_runtime::Barrier::new(2);
    /// b.abort();
    /// assert!(b.broken());
    /// ```
    pub fn abort(&self) {
        let mut wake = Vec::new();
        {
            let mut state = self.state.lock();
            state.phase = Phase::Broken;
            state.waiters.wake_all(&mut wake);
        }
        wake_all(wake);
    }

    /// True once aborted (until reset).
    ///
    /// ```
    /// assert!(!braid_runtime::Barrier::new(2).broken());
    /// ```
    pub fn broken(&self) -> bool {
        self.state.lock().phase == Phase::Broken
    }

    /// The number of tasks it waits for.
    ///
    /// ```
    /// assert_eq!(braid_runtime::Barrier::new(5).parties(), 5);
    /// ```
    pub fn parties(&self) -> usize {
        self.parties
    }

    /// The number of tasks waiting in the barrier now (while it fills).
    ///
    /// ```
    /// assert_eq!(braid_runtime::Barrier::new(5).n_waiting(), 0);
    /// ```
    pub fn n_waiting(&self) -> usize {
        let state = self.state.lock();
        if state.phase == Phase::Filling {
            state.count
        } else {
            0
        }
    }
}

impl BarrierState {
    /// A waiter leaves the barrier (asyncio's `_exit`): the last one out ends draining or
    /// resetting and lets the blocked newcomers in.
    fn exit(&mut self, wake: &mut Vec<Waker>) {
        self.count -= 1;
        if self.count == 0 {
            if matches!(self.phase, Phase::Draining | Phase::Resetting) {
                self.phase = Phase::Filling;
            }
            self.waiters.wake_all(wake);
        }
    }
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        f.debug_struct("Barrier")
            .field("parties", &self.parties)
            .field("phase", &state.phase)
            .field("count", &state.count)
            .finish()
    }
}

/// The future of [`Barrier::wait`].
///
/// # Cancel safety
///
/// Dropping it leaves the barrier as a cancel does.
#[must_use = "futures do nothing unless you `.await` them"]
pub struct BarrierWait<'a> {
    barrier: &'a Barrier,
    step: Step,
    waiter: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Step {
    /// Waiting for a draining or resetting barrier to empty.
    Blocking,
    /// Inside, with this arrival index, waiting for the release.
    Inside(usize),
    Done,
}

impl Future for BarrierWait<'_> {
    type Output = Result<usize>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<usize>> {
        let this = self.get_mut();
        if this.step == Step::Done {
            return Poll::Ready(Err(crate::combinators::polled_after_completion(
                "Barrier::wait",
            )));
        }
        if this.barrier.parties == 0 {
            this.step = Step::Done;
            return Poll::Ready(Err(Error::new(
                ErrorKind::InvalidState,
                "a Barrier needs at least one party",
            )));
        }
        let cancel = context::take_cancel();
        context::clear_awaiting(None);
        let mut wake = Vec::new();
        let outcome = {
            let mut state = this.barrier.state.lock();
            if let Some(id) = this.waiter.take() {
                state.waiters.remove(id);
            }
            this.step_locked(&mut state, cancel, cx.waker(), &mut wake)
        };
        wake_all(wake);
        if outcome.is_ready() {
            this.step = Step::Done;
        }
        outcome
    }
}

impl BarrierWait<'_> {
    /// One step of asyncio's `wait`, under the barrier's mutex.
    fn step_locked(
        &mut self,
        state: &mut BarrierState,
        cancel: Option<Error>,
        waker: &Waker,
        wake: &mut Vec<Waker>,
    ) -> Poll<Result<usize>> {
        if self.step == Step::Blocking {
            if let Some(cancel) = cancel {
                return Poll::Ready(Err(cancel));
            }
            match state.phase {
                Phase::Draining | Phase::Resetting => {
                    self.waiter = Some(state.waiters.push(waker));
                    return Poll::Pending;
                }
                Phase::Broken => return Poll::Ready(Err(broken())),
                Phase::Filling => {}
            }
            let index = state.count;
            state.count += 1;
            if index + 1 == self.barrier.parties {
                // The last to arrive releases everyone, and leaves at once.
                state.phase = Phase::Draining;
                state.waiters.wake_all(wake);
                state.exit(wake);
                return Poll::Ready(Ok(index));
            }
            self.step = Step::Inside(index);
            self.waiter = Some(state.waiters.push(waker));
            return Poll::Pending;
        }
        let Step::Inside(index) = self.step else {
            unreachable!("Done is checked by poll");
        };
        if let Some(cancel) = cancel {
            state.exit(wake);
            return Poll::Ready(Err(cancel));
        }
        match state.phase {
            Phase::Filling => {
                self.waiter = Some(state.waiters.push(waker));
                Poll::Pending
            }
            Phase::Draining => {
                state.exit(wake);
                Poll::Ready(Ok(index))
            }
            Phase::Broken | Phase::Resetting => {
                state.exit(wake);
                Poll::Ready(Err(broken()))
            }
        }
    }
}

impl Drop for BarrierWait<'_> {
    fn drop(&mut self) {
        let mut wake = Vec::new();
        {
            let mut state = self.barrier.state.lock();
            if let Some(id) = self.waiter.take() {
                state.waiters.remove(id);
            }
            if let Step::Inside(_) = self.step {
                state.exit(&mut wake);
            }
        }
        wake_all(wake);
    }
}

impl fmt::Debug for BarrierWait<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BarrierWait")
            .field("step", &self.step)
            .finish()
    }
}
