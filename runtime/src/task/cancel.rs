//! A task's cancel bookkeeping, apart from the rest of its header so that the loom models
//! below drive the very code the runtime runs.
//!
//! The protocol (asyncio's, made safe across threads):
//!
//! - A request on a task that awaits a Task or a Promise goes to that target instead
//!   (`record_cancel` returns it and sets `propagated`); the awaiter receives the target's
//!   outcome. If the target was already done, the request comes back and is delivered at the
//!   awaiter's next await point (`deliver_instead`).
//! - A request that reached an awaited task too late (it finished without seeing it, on
//!   another loop) is taken back by the awaiter when it sees the target finish
//!   (`reclaim_propagated`). So a request is delivered exactly once: to the target, or to
//!   the awaiter.
//!
//! A request racing the target's completion: the canceller reads the target's `done` (its
//! state word's COMPLETE bit) with a read-modify-write, under the target's cancel lock, after
//! it set the awaiter's `propagated`; the awaiter reads `propagated`, and then the target's
//! `must_cancel` under that lock, only after it saw the target complete. Either the
//! canceller's read comes first, and the completion (a swap) reads from it, so the awaiter
//! sees `propagated` and then the request; or it sees COMPLETE and the request comes back.
//! A plain load there is not enough: under the memory model the canceller and the awaiter
//! could each miss the other's write (`loom_models` finds that interleaving; its twin with a
//! plain load loses the request).

use super::state::State;
use super::CancelTarget;
use braid_bridge::sync::atomic::{AtomicBool, Ordering};
use braid_bridge::sync::Mutex;
use braid_bridge::{Error, Result};
use std::sync::Arc;

/// The locked part of the cancel state.
#[derive(Default)]
struct Requests {
    /// asyncio's `cancelling()`: requests made and not withdrawn by `uncancel`.
    count: usize,
    /// A request waits to be delivered at the next await point.
    must_cancel: bool,
    /// Set when the running task cancels itself; such a request is never "too late".
    self_requested: bool,
    message: Option<String>,
    /// What the task awaits right now (its registration key and the target), if anything.
    awaiting: Option<(usize, Arc<dyn CancelTarget>)>,
}

/// What the runner learnt at the start of a step.
pub(crate) struct Step {
    pub(crate) cancel_before_start: bool,
    pending_at_start: bool,
    message: Option<String>,
}

impl Step {
    pub(crate) fn error_if_cancelled(&self) -> Error {
        Error::cancelled(self.message.clone())
    }
}

/// One task's cancel state: requests, the awaited target, and how the task ended.
pub(crate) struct CancelState {
    /// Fast check for `must_cancel`, so leaf futures take no lock when nothing is pending.
    pending: AtomicBool,
    /// Fast check for `awaiting.is_some()`.
    has_awaiting: AtomicBool,
    /// A request of ours went to the awaited target instead of us; if that target then ends
    /// without ever seeing it (it finished too late), it comes back to us. An atomic so that
    /// the common case (no cancel) costs an await one load, not a lock.
    propagated: AtomicBool,
    /// The task finished with a Cancelled error (read once its state is COMPLETE).
    ended_cancelled: AtomicBool,
    requests: Mutex<Requests>,
}

impl CancelState {
    pub(crate) fn new() -> CancelState {
        CancelState {
            pending: AtomicBool::new(false),
            has_awaiting: AtomicBool::new(false),
            propagated: AtomicBool::new(false),
            ended_cancelled: AtomicBool::new(false),
            requests: Mutex::new(Requests::default()),
        }
    }

    /// True once the task (whose state word `state` is) has finished cancelled.
    pub(crate) fn cancelled(&self, state: &State) -> bool {
        state.is_complete() && self.ended_cancelled.load(Ordering::Acquire)
    }

    /// asyncio's `cancelling()`.
    pub(crate) fn cancelling(&self) -> usize {
        self.requests.lock().count
    }

    /// asyncio's `uncancel()`: withdraws one request; returns how many are left.
    pub(crate) fn uncancel(&self) -> usize {
        let mut requests = self.requests.lock();
        if requests.count > 0 {
            requests.count -= 1;
            if requests.count == 0 {
                // As Python 3.13: the last uncancel also withdraws an undelivered request.
                requests.must_cancel = false;
                requests.self_requested = false;
                self.pending.store(false, Ordering::Release);
            }
        }
        requests.count
    }

    /// Records a cancel request. If the task is awaiting a Task or Promise, returns it: the
    /// caller cancels that instead (asyncio's `_fut_waiter.cancel()`), and the task receives
    /// its outcome; otherwise marks the request for delivery at the next await point.
    /// `Err(())` if the task is already done. `by_self`: the task is cancelling itself.
    fn record_cancel(
        &self,
        state: &State,
        message: Option<String>,
        by_self: bool,
    ) -> std::result::Result<Option<Arc<dyn CancelTarget>>, ()> {
        if state.is_complete() {
            return Err(());
        }
        let mut requests = self.requests.lock();
        // Ordered, not a plain load: if we are before the completion, what we wrote before
        // (the awaiter's `propagated`, when the request travels from it) is seen by whoever
        // sees the completion (that awaiter's `reclaim_propagated`). Else both could miss
        // each other (see the module docs).
        #[cfg(loom)]
        let done = if crate::sync::loom_support::PLAIN_DONE_READ
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            state.is_complete()
        } else {
            state.is_complete_ordered()
        };
        #[cfg(not(loom))]
        let done = state.is_complete_ordered();
        if done {
            return Err(());
        }
        requests.count += 1;
        if let Some((_, target)) = &requests.awaiting {
            let target = target.clone();
            self.propagated.store(true, Ordering::Release);
            requests.message = message;
            return Ok(Some(target));
        }
        self.mark_must_cancel(&mut requests, message, by_self);
        Ok(None)
    }

    fn mark_must_cancel(&self, requests: &mut Requests, message: Option<String>, by_self: bool) {
        requests.must_cancel = true;
        requests.self_requested |= by_self;
        requests.message = message;
        self.pending.store(true, Ordering::Release);
    }

    /// The awaited target refused the cancel (it was done): deliver it at the await point.
    /// False if the task has completed meanwhile: then the request can no longer reach it,
    /// and whoever made it must take it back (see `request`). `done` is read under the lock
    /// that `reclaim_propagated` also takes, so of the two, one sees the other.
    pub(crate) fn deliver_instead(
        &self,
        state: &State,
        message: Option<String>,
        by_self: bool,
    ) -> bool {
        let mut requests = self.requests.lock();
        // A plain load suffices here: the `must_cancel` we write is read under this lock,
        // and an outer awaiter's `propagated` was published by `record_cancel`'s RMW.
        if state.is_complete() {
            return false;
        }
        self.mark_must_cancel(&mut requests, message, by_self);
        true
    }

    /// After an awaited task (`target`, its state word `target_state`) finished: if a
    /// cancel of ours went to it and it finished without ever receiving it (too late, on
    /// another loop), the cancel is ours again, delivered at our next await point: a cancel
    /// is never lost in the race. Called by the running task, which is never done.
    pub(crate) fn reclaim_propagated(
        &self,
        state: &State,
        target: &CancelState,
        target_state: &State,
        by_self: bool,
    ) {
        if !self.propagated.load(Ordering::Acquire)
            || !self.propagated.swap(false, Ordering::AcqRel)
        {
            return;
        }
        #[cfg(loom)]
        if crate::sync::loom_support::SKIP_RECLAIM.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let message = self.requests.lock().message.clone();
        if target.cancelled(target_state) {
            return;
        }
        let never_received = target.requests.lock().must_cancel;
        if never_received {
            let _ = self.deliver_instead(state, message, by_self);
        }
    }

    /// A pending request of ours was handed to the task we await (see `Task::poll`).
    pub(crate) fn note_propagated(&self) {
        self.propagated.store(true, Ordering::Release);
    }

    /// The leaf-future check: delivers a pending cancel request once.
    pub(crate) fn take_cancel(&self) -> Option<Error> {
        if !self.pending.load(Ordering::Acquire) {
            return None;
        }
        let mut requests = self.requests.lock();
        self.pending.store(false, Ordering::Relaxed);
        if !requests.must_cancel {
            return None;
        }
        requests.must_cancel = false;
        requests.self_requested = false;
        Some(Error::cancelled(requests.message.clone()))
    }

    pub(crate) fn begin_step(&self, first_poll: bool) -> Step {
        if !self.pending.load(Ordering::Acquire) {
            return Step {
                cancel_before_start: false,
                pending_at_start: false,
                message: None,
            };
        }
        let requests = self.requests.lock();
        Step {
            cancel_before_start: first_poll && requests.must_cancel,
            pending_at_start: requests.must_cancel,
            message: requests.message.clone(),
        }
    }

    /// The outcome of a step whose coroutine returned `output`. As asyncio: a request still
    /// undelivered that predates the step or was made by the task itself turns a *return*
    /// into a cancellation; an error the coroutine raised stays its outcome, and a request
    /// from elsewhere that landed during this final step is too late.
    pub(crate) fn step_outcome<T>(&self, step: &Step, output: Result<T>) -> Result<T> {
        if output.is_err() || !self.pending.load(Ordering::Acquire) {
            return output;
        }
        let requests = self.requests.lock();
        if requests.must_cancel && (step.pending_at_start || requests.self_requested) {
            return Err(Error::cancelled(requests.message.clone()));
        }
        output
    }

    pub(crate) fn set_awaiting(&self, key: usize, target: Arc<dyn CancelTarget>) {
        self.requests.lock().awaiting = Some((key, target));
        self.has_awaiting.store(true, Ordering::Relaxed);
    }

    /// Forgets the awaited target (only `key`'s, or any when `key` is `None`).
    pub(crate) fn clear_awaiting(&self, key: Option<usize>) {
        if !self.has_awaiting.load(Ordering::Relaxed) {
            return;
        }
        let mut requests = self.requests.lock();
        let matches = match (&requests.awaiting, key) {
            (Some((k, _)), Some(key)) => *k == key,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if matches {
            requests.awaiting = None;
            self.propagated.store(false, Ordering::Release);
            self.has_awaiting.store(false, Ordering::Relaxed);
        }
    }

    /// The runner's last word on a task: records whether it ended cancelled, forgets what it
    /// awaited, then sets COMPLETE on `state` (after which `record_cancel` refuses).
    pub(crate) fn complete(&self, state: &State, cancelled: bool) {
        self.ended_cancelled.store(cancelled, Ordering::Release);
        // Only the runner sets `has_awaiting` (during a poll), and we are the runner.
        self.clear_awaiting(None);
        state.complete();
    }
}

/// asyncio's `Task.cancel` on the task whose state word and cancel state these are; `wake`
/// queues it. False if the request cannot reach the task (it is done, or completed while the
/// request travelled through the target it awaited).
pub(crate) fn request(
    state: &State,
    cancel: &CancelState,
    message: Option<String>,
    by_self: bool,
    wake: impl FnOnce(),
) -> bool {
    match cancel.record_cancel(state, message.clone(), by_self) {
        Err(()) => false,
        Ok(None) => {
            wake();
            true
        }
        Ok(Some(target)) => {
            // The awaited target settles (now, or once its cleanup has run) and wakes us with
            // its outcome; only if it was already done is the request ours to deliver.
            if !target.cancel_from_awaiter(message.clone()) {
                if !cancel.deliver_instead(state, message, by_self) {
                    // It completed while the request travelled: it never saw it. Report a
                    // refusal, so that an awaiter passing its own cancel on takes it back.
                    return false;
                }
                wake();
            }
            true
        }
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    //! Task A awaits task B, which runs on another loop, and a cancel request of A's goes on
    //! to B: a third thread cancels A while A awaits B, or A passes on a request of its own
    //! that was pending when it began to await (`note_propagated`). The request races B's
    //! last step. Whatever the interleaving, it reaches exactly one of them: B ends
    //! cancelled, or A has it to deliver.
    use super::*;
    use crate::task::state::RunAction;
    use loom::thread;

    /// A task as far as cancellation goes.
    struct ModelTask {
        state: State,
        cancel: CancelState,
    }

    impl ModelTask {
        fn new() -> Arc<ModelTask> {
            Arc::new(ModelTask {
                state: State::new_scheduled(),
                cancel: CancelState::new(),
            })
        }
    }

    impl CancelTarget for ModelTask {
        fn cancel_from_awaiter(self: Arc<Self>, message: Option<String>) -> bool {
            // Waking is the state word's protocol (modelled in `state`); not needed here.
            request(&self.state, &self.cancel, message, false, || {})
        }
    }

    /// Two tasks, both running (polled by their loops).
    fn both_running() -> (Arc<ModelTask>, Arc<ModelTask>) {
        let (a, b) = (ModelTask::new(), ModelTask::new());
        assert_eq!(a.state.start_run(), RunAction::Poll);
        assert_eq!(b.state.start_run(), RunAction::Poll);
        (a, b)
    }

    /// `b`'s last step on another loop: it returns a value, unless a request it saw turns
    /// that into a cancellation.
    fn spawn_last_step(b: &Arc<ModelTask>) -> thread::JoinHandle<()> {
        let b = b.clone();
        thread::spawn(move || {
            let step = b.cancel.begin_step(false);
            let outcome = b.cancel.step_outcome(&step, Ok(()));
            b.cancel.complete(&b.state, outcome.is_err());
        })
    }

    /// Once B has finished: the request reached B (it ended cancelled) or A (it had it
    /// already, `a_had_it`, or has it to deliver now), never both, never neither.
    fn assert_reached_exactly_one(a: &ModelTask, b: &ModelTask, a_had_it: bool) {
        let b_cancelled = b.cancel.cancelled(&b.state);
        let a_has_it = a_had_it || a.cancel.take_cancel().is_some();
        assert!(
            b_cancelled != a_has_it,
            "the request must reach exactly one of the two \
             (B cancelled: {b_cancelled}, A has it: {a_has_it})"
        );
    }

    /// Runs the race with the fault switch `fault` on (a twin) or off.
    fn awaiter_cancelled_while_the_awaited_task_finishes(
        fault: &'static std::sync::atomic::AtomicBool,
        on: bool,
    ) {
        crate::sync::loom_support::model_with_fault(fault, on, || {
            // A is running and awaits B; B is running its last step (it will return a value).
            let (a, b) = both_running();
            a.cancel.set_awaiting(7, b.clone());

            let canceller = {
                let a = a.clone();
                thread::spawn(move || request(&a.state, &a.cancel, None, false, || {}))
            };
            let b_runner = spawn_last_step(&b);
            // A sees B complete (its join wakes A), then its `Task` future's ready path runs.
            b_runner.join().unwrap();
            let taken_at_poll = a.cancel.take_cancel().is_some();
            if !taken_at_poll {
                a.cancel
                    .reclaim_propagated(&a.state, &b.cancel, &b.state, true);
            }
            a.cancel.clear_awaiting(Some(7));
            let reached_a = canceller.join().unwrap();
            assert!(
                reached_a,
                "A never completes, so the request must be accepted"
            );

            assert_reached_exactly_one(&a, &b, taken_at_poll);
            assert_eq!(a.cancel.cancelling(), 1);
        });
    }

    /// A has a request of its own pending when it awaits B (`Task::poll`): it takes the
    /// request and passes it on to B, noting that it did (`note_propagated`), while B runs
    /// its last step on another loop. `note` false leaves the note out (the twin).
    fn awaiter_passes_its_pending_cancel_on_while_the_awaited_task_finishes(note: bool) {
        loom::model(move || {
            let (a, b) = both_running();
            // Requested before A's await (A awaited nothing then): pending at A.
            assert!(request(&a.state, &a.cancel, None, false, || {}));

            let b_runner = spawn_last_step(&b);
            // `Task::poll` of B's handle, in A.
            let pending = a.cancel.take_cancel();
            assert!(pending.is_some(), "A's own request is pending");
            let delivered_at_poll = !request(&b.state, &b.cancel, None, false, || {});
            if !delivered_at_poll && note {
                a.cancel.note_propagated();
            }
            // A waits for B's completion (B's join wakes it), then the ready path.
            b_runner.join().unwrap();
            if !delivered_at_poll {
                // Within A's own poll, as `Header::reclaim_propagated_cancel` runs it.
                a.cancel
                    .reclaim_propagated(&a.state, &b.cancel, &b.state, true);
            }

            assert_reached_exactly_one(&a, &b, delivered_at_poll);
            assert_eq!(a.cancel.cancelling(), 1, "passing it on is no new request");
        });
    }

    #[test]
    fn loom_cancel_passed_on_by_the_awaiter_races_the_awaited_task_finishing() {
        awaiter_passes_its_pending_cancel_on_while_the_awaited_task_finishes(true);
    }

    /// Without the note, a request passed on to a task that finishes without seeing it is
    /// lost: the awaiter never takes it back.
    #[test]
    #[should_panic(expected = "exactly one")]
    fn loom_cancel_twin_passed_on_without_the_note_loses_the_request() {
        awaiter_passes_its_pending_cancel_on_while_the_awaited_task_finishes(false);
    }

    use crate::sync::loom_support::{PLAIN_DONE_READ, SKIP_RECLAIM};

    #[test]
    fn loom_cancel_of_an_awaiter_races_the_awaited_task_finishing() {
        awaiter_cancelled_while_the_awaited_task_finishes(&SKIP_RECLAIM, false);
    }

    /// The model catches a lost cancel: an awaiter that never takes back a request that
    /// reached its target too late loses it in some interleaving.
    #[test]
    #[should_panic(expected = "exactly one")]
    fn loom_cancel_twin_without_reclaim_loses_the_request() {
        awaiter_cancelled_while_the_awaited_task_finishes(&SKIP_RECLAIM, true);
    }

    /// The ordering fix: with a plain load of the target's `done` in `record_cancel`, the
    /// canceller and the awaiter can each miss the other's write, and the request is lost.
    #[test]
    #[should_panic(expected = "exactly one")]
    fn loom_cancel_twin_with_a_plain_done_read_loses_the_request() {
        awaiter_cancelled_while_the_awaited_task_finishes(&PLAIN_DONE_READ, true);
    }
}
