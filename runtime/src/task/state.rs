//! The task state word: who may poll a task, whether it is queued, whether it is finished.
//!
//! One `AtomicUsize` per task. Transitions:
//!
//! ```text
//!  wake:     idle ──► SCHEDULED            (the waker that sets SCHEDULED pushes the task)
//!            RUNNING ──► RUNNING|SCHEDULED (the runner re-queues it after the poll)
//!  run:      SCHEDULED ──► RUNNING          (only from a queue pop; skipped if COMPLETE or
//!                                          CLAIMED)
//!  claim:    not RUNNING ──► |RUNNING|CLAIMED (a closing loop or a shutdown finishing an
//!                                          idle or queued task from outside a poll)
//!  poll end: RUNNING ──► idle, or RUNNING|SCHEDULED ──► SCHEDULED and re-queued by the runner
//!  complete: RUNNING ──► COMPLETE           (the future is dropped before this is published)
//!  host:     |RUNNING around each poll of `run_until_complete`'s stand-in task, whose word
//!            no queue drives: only so that a cancel sees it in a step; its wakes set
//!            SCHEDULED and its steps clear it, so that a cancel tells it woken from parked
//!  abort:    any ──► |ABORT, then a wake    (the runner drops the future on its own thread)
//! ```
//!
//! The invariant that matters: a task is in at most one run queue at a time, and a wake that
//! happens at any moment before completion is never lost (the loom model `wake_races_poll_end`
//! in this file checks both).

use braid_bridge::sync::atomic::{AtomicUsize, Ordering};

/// Queued, or woken while running (then the runner re-queues it). Set by the waker that wins.
pub(crate) const SCHEDULED: usize = 1 << 0;
/// Being polled by one loop thread; only that thread touches the future. Also: a task is in
/// a step, so a cancel request waits for its next await point (`task::cancel`).
pub(crate) const RUNNING: usize = 1 << 1;
/// Finished: the output is stored and the future is dropped. Never cleared.
pub(crate) const COMPLETE: usize = 1 << 2;
/// `abort()` was called: the next run drops the future instead of polling it.
pub(crate) const ABORT: usize = 1 << 3;
/// Set with RUNNING by a finisher that claimed the task from outside a poll
/// ([`State::try_claim_idle`]): a queue entry popped meanwhile is stale.
pub(crate) const CLAIMED: usize = 1 << 4;

/// What a wake asks of the caller.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WakeAction {
    /// The caller won the SCHEDULED bit on an idle task: it must push the task to a queue.
    Schedule,
    /// Nothing to do: already queued, running (the runner re-queues), or complete.
    Nothing,
}

/// What the runner should do after popping a task.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RunAction {
    /// Poll it.
    Poll,
    /// Drop the future and finish the task as cancelled.
    Abort,
    /// It completed already, or a finisher claimed it (a stale queue entry): drop the
    /// reference.
    Skip,
}

/// After a poll returned `Pending`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum IdleAction {
    /// Nobody woke it during the poll: it waits for a wake.
    Idle,
    /// Woken during the poll (or aborted): the runner must re-queue it.
    Reschedule,
}

#[derive(Debug)]
pub(crate) struct State(AtomicUsize);

/// The state word as a cancel request reads it ([`State::seen_by_cancel`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SeenByCancel {
    /// The task has finished.
    pub(crate) complete: bool,
    /// A step of the task is running: it awaits nothing right now (asyncio's `_fut_waiter`
    /// is `None` during a step), whatever it registered earlier.
    pub(crate) in_step: bool,
    /// The task is queued (woken, or not yet started): its await point, if any, has its
    /// outcome already, and a request waits for the step (asyncio's `_must_cancel`).
    pub(crate) queued: bool,
}

impl SeenByCancel {
    fn of(word: usize) -> SeenByCancel {
        SeenByCancel {
            complete: word & COMPLETE != 0,
            in_step: word & RUNNING != 0,
            queued: word & SCHEDULED != 0,
        }
    }
}

impl State {
    /// A new task is created scheduled: its spawner pushes it.
    pub(crate) fn new_scheduled() -> State {
        State(AtomicUsize::new(SCHEDULED))
    }

    #[inline]
    pub(crate) fn load(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }

    #[inline]
    pub(crate) fn is_complete(&self) -> bool {
        self.load() & COMPLETE != 0
    }

    /// What a cancel request needs to know, read with a read-modify-write that changes
    /// nothing: it sees the latest state, and if it comes before the completion, the
    /// completion's swap reads from it, so everything the caller wrote before happens-before
    /// the completion (and whatever follows it on other threads). A plain load gives no such
    /// order. For the cancel path only.
    pub(crate) fn seen_by_cancel(&self) -> SeenByCancel {
        SeenByCancel::of(self.0.fetch_or(0, Ordering::AcqRel))
    }

    /// [`seen_by_cancel`](Self::seen_by_cancel) with a plain load: a loom twin's fault.
    #[cfg(loom)]
    pub(crate) fn seen_by_cancel_plain(&self) -> SeenByCancel {
        SeenByCancel::of(self.load())
    }

    /// The host's mark that it is polling the stand-in task of `run_until_complete`'s
    /// future, whose state word no queue drives: as RUNNING marks a task's poll, so that a
    /// cancel request made meanwhile waits for the next await point (see `task::cancel`).
    /// Clears SCHEDULED, as `start_run` does, which [`host_woken`](Self::host_woken) set:
    /// between steps, a cancel tells a parked main future from a woken one by it.
    pub(crate) fn enter_host_step(&self) {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                Some((cur & !SCHEDULED) | RUNNING)
            })
            .ok();
    }

    /// The stand-in task of `run_until_complete` was woken (its wakes go to the host, not
    /// to a queue): marked SCHEDULED until its next step, so that a cancel request made
    /// meanwhile sees it queued, not parked (see `task::cancel`). A wake between the host's
    /// taking of the wake and its step's start is cleared with the step's start: a request
    /// then takes the task for parked, and `uncancel` keeps it, as the harmless side.
    pub(crate) fn host_woken(&self) {
        self.0.fetch_or(SCHEDULED, Ordering::AcqRel);
    }

    /// The end of the host's poll begun with [`enter_host_step`](Self::enter_host_step).
    pub(crate) fn leave_host_step(&self) {
        self.0.fetch_and(!RUNNING, Ordering::AcqRel);
    }

    /// A waker's transition.
    #[inline]
    pub(crate) fn wake(&self) -> WakeAction {
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            if cur & (SCHEDULED | COMPLETE) != 0 {
                return WakeAction::Nothing;
            }
            // AcqRel: what the waker published before waking (a message, a cancel request)
            // happens-before the poll that the Acquire in `start_run` begins.
            match self.0.compare_exchange_weak(
                cur,
                cur | SCHEDULED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) if cur & RUNNING != 0 => return WakeAction::Nothing,
                Ok(_) => return WakeAction::Schedule,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Sets ABORT, then behaves as a wake so the task gets run (and dropped) promptly.
    pub(crate) fn abort(&self) -> WakeAction {
        let prev = self.0.fetch_or(ABORT, Ordering::AcqRel);
        if prev & COMPLETE != 0 {
            return WakeAction::Nothing;
        }
        self.wake()
    }

    /// The runner's transition after popping a task from a queue.
    #[inline]
    pub(crate) fn start_run(&self) -> RunAction {
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            // CLAIMED: a closing loop or a shutdown holds RUNNING to finish the task from
            // outside a poll (`try_claim_idle`) and will complete it; this entry is stale.
            if cur & (COMPLETE | CLAIMED) != 0 {
                return RunAction::Skip;
            }
            debug_assert!(cur & SCHEDULED != 0, "a queued task must be SCHEDULED");
            debug_assert!(
                cur & RUNNING == 0,
                "a task must not be polled twice at once"
            );
            let next = (cur & !SCHEDULED) | RUNNING;
            match self
                .0
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) if cur & ABORT != 0 => return RunAction::Abort,
                Ok(_) => return RunAction::Poll,
                Err(actual) => cur = actual,
            }
        }
    }

    /// The runner's transition after a poll returned `Pending`.
    #[inline]
    pub(crate) fn end_poll_pending(&self) -> IdleAction {
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            debug_assert!(cur & RUNNING != 0);
            let next = cur & !RUNNING;
            match self
                .0
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) if cur & SCHEDULED != 0 => return IdleAction::Reschedule,
                Ok(_) if cur & ABORT != 0 => {
                    // An abort whose wake saw RUNNING: nobody queued it, so we must.
                    return match self.wake() {
                        WakeAction::Schedule => IdleAction::Reschedule,
                        WakeAction::Nothing => IdleAction::Idle,
                    };
                }
                Ok(_) => return IdleAction::Idle,
                Err(actual) => cur = actual,
            }
        }
    }

    /// The runner's transition after the future finished (output stored, future dropped).
    pub(crate) fn complete(&self) {
        // Release: the stored output and the dropped future happen-before any Acquire load
        // that sees COMPLETE (the join handle's). Acquire: if a canceller's
        // `seen_by_cancel` came first, this swap reads from it, so what the canceller
        // wrote before happens-before our completion (see `task::cancel`).
        // One swap: every other transition checks COMPLETE first, so a waker racing us
        // fails its CAS and then sees COMPLETE, and an ABORT we overwrite was moot.
        let prev = self.0.swap(COMPLETE, Ordering::AcqRel);
        debug_assert!(prev & COMPLETE == 0, "completed twice");
    }

    /// Takes the RUNNING bit of a task that is neither running nor complete, so that a
    /// closing loop or a shutdown can drop its future from outside a poll, and marks it
    /// CLAIMED. Returns false if it is running or complete. A SCHEDULED task is claimed too:
    /// a loop that pops its queue entry meanwhile (one stuck through a shutdown, then
    /// unstuck) skips it (`runner_skips_a_task_a_finisher_claimed`), and one that pops it
    /// later finds it complete. A wake that changes the word meanwhile does not make the claim
    /// give up (`claim_races_wake`).
    pub(crate) fn try_claim_idle(&self) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (cur & (RUNNING | COMPLETE) == 0).then_some(cur | RUNNING | CLAIMED)
            })
            .is_ok()
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use braid_bridge::sync::atomic::AtomicUsize as Counter;
    use braid_bridge::sync::Arc;
    use loom::thread;

    /// A wake from another thread racing the end of a poll: the task is re-queued exactly
    /// once, never lost, never queued twice.
    #[test]
    fn wake_races_poll_end() {
        loom::model(|| {
            let state = Arc::new(State::new_scheduled());
            let queued = Arc::new(Counter::new(0));
            assert_eq!(state.start_run(), RunAction::Poll);

            let (s2, q2) = (state.clone(), queued.clone());
            let waker = thread::spawn(move || {
                if s2.wake() == WakeAction::Schedule {
                    q2.fetch_add(1, Ordering::SeqCst);
                }
            });
            if state.end_poll_pending() == IdleAction::Reschedule {
                queued.fetch_add(1, Ordering::SeqCst);
            }
            waker.join().unwrap();
            assert_eq!(
                queued.load(Ordering::SeqCst),
                1,
                "the wake must queue the task exactly once"
            );
        });
    }

    /// Two wakers at once queue an idle task once.
    #[test]
    fn concurrent_wakes_queue_once() {
        loom::model(|| {
            let state = Arc::new(State::new_scheduled());
            assert_eq!(state.start_run(), RunAction::Poll);
            assert_eq!(state.end_poll_pending(), IdleAction::Idle);
            let queued = Arc::new(Counter::new(0));
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let (s, q) = (state.clone(), queued.clone());
                    thread::spawn(move || {
                        if s.wake() == WakeAction::Schedule {
                            q.fetch_add(1, Ordering::SeqCst);
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            assert_eq!(queued.load(Ordering::SeqCst), 1);
        });
    }

    /// An abort racing a poll: the task ends up queued (so its runner drops it) exactly once.
    #[test]
    fn abort_races_poll_end() {
        loom::model(|| {
            let state = Arc::new(State::new_scheduled());
            assert_eq!(state.start_run(), RunAction::Poll);
            let queued = Arc::new(Counter::new(0));
            let (s2, q2) = (state.clone(), queued.clone());
            let aborter = thread::spawn(move || {
                if s2.abort() == WakeAction::Schedule {
                    q2.fetch_add(1, Ordering::SeqCst);
                }
            });
            if state.end_poll_pending() == IdleAction::Reschedule {
                queued.fetch_add(1, Ordering::SeqCst);
            }
            aborter.join().unwrap();
            assert_eq!(queued.load(Ordering::SeqCst), 1);
            assert_eq!(state.start_run(), RunAction::Abort);
        });
    }

    /// A wake racing the claim of an idle task (a closing loop or a shutdown finishing it
    /// from outside): the claim succeeds whether the wake came first, last or between its
    /// read and its write. A claim that gave up there left the task unfinished for good: the
    /// wake went to a loop that had closed (`LoopCtx::close`).
    #[test]
    fn claim_races_wake() {
        loom::model(|| {
            let state = Arc::new(State::new_scheduled());
            assert_eq!(state.start_run(), RunAction::Poll);
            assert_eq!(state.end_poll_pending(), IdleAction::Idle);
            let s2 = state.clone();
            let waker = thread::spawn(move || {
                let _ = s2.wake();
            });
            assert!(
                state.try_claim_idle(),
                "an idle task is claimed, woken or not"
            );
            waker.join().unwrap();
        });
    }

    /// A queued task claimed by a finisher (a shutdown finishing the tasks a stuck loop left
    /// queued) while the loop pops it: exactly one of them takes the future, never both at
    /// once, and the task ends complete. The runner used to poll a task whose RUNNING bit a
    /// claimer held.
    #[test]
    fn runner_skips_a_task_a_finisher_claimed() {
        loom::model(|| {
            let state = Arc::new(State::new_scheduled());
            // Who is touching the future now, and who touched it at all.
            let holders = Arc::new(Counter::new(0));
            let touched = Arc::new(Counter::new(0));
            let take_future = |holders: &Counter, touched: &Counter| {
                assert_eq!(
                    holders.fetch_add(1, Ordering::SeqCst),
                    0,
                    "the future is touched by one thread at a time"
                );
                touched.fetch_add(1, Ordering::SeqCst);
                holders.fetch_sub(1, Ordering::SeqCst);
            };
            let (s2, h2, t2) = (state.clone(), holders.clone(), touched.clone());
            let runner = thread::spawn(move || {
                if s2.start_run() == RunAction::Poll {
                    take_future(&h2, &t2);
                    s2.complete();
                }
            });
            if state.try_claim_idle() {
                take_future(&holders, &touched);
                state.complete();
            }
            runner.join().unwrap();
            assert!(state.is_complete());
            assert_eq!(
                touched.load(Ordering::SeqCst),
                1,
                "one of them took the future"
            );
        });
    }

    /// The model catches a broken protocol: a poll end that forgets the SCHEDULED bit loses
    /// the wake in some interleaving.
    #[test]
    #[should_panic(expected = "exactly once")]
    fn broken_poll_end_loses_a_wake() {
        loom::model(|| {
            let state = Arc::new(State::new_scheduled());
            let queued = Arc::new(Counter::new(0));
            assert_eq!(state.start_run(), RunAction::Poll);
            let (s2, q2) = (state.clone(), queued.clone());
            let waker = thread::spawn(move || {
                if s2.wake() == WakeAction::Schedule {
                    q2.fetch_add(1, Ordering::SeqCst);
                }
            });
            // Broken on purpose: clear RUNNING and SCHEDULED blindly instead of looking at
            // what a concurrent waker set.
            state.0.fetch_and(!(RUNNING | SCHEDULED), Ordering::AcqRel);
            waker.join().unwrap();
            assert_eq!(
                queued.load(Ordering::SeqCst),
                1,
                "the wake must queue the task exactly once"
            );
        });
    }
}
