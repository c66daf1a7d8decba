//! A task's cancel bookkeeping, apart from the rest of its header so that the loom models
//! below drive the very code the runtime runs. It also keeps whether the task's first step
//! has begun, how the task ended and, in the box only a cancelled or named task allocates,
//! its name.
//!
//! The protocol (asyncio's, made safe across threads):
//!
//! - A request on a task suspended on a Task, a Promise or a gather goes to that target
//!   instead (`record_cancel` returns it); the awaiter receives the target's outcome. If the
//!   target was already done, the request comes back and is delivered at the awaiter's next
//!   await point. A task in a step awaits nothing (asyncio's `_fut_waiter` is `None` then),
//!   whatever it registered earlier in the step: the request waits for its next await point.
//! - Until it is settled, such a request is remembered by the awaiter as passed on
//!   ([`PassedOn`]), and settled by two facts: the target's answer (the passer's), and how
//!   the awaiter's future stopped awaiting the target (the awaiter's, [`AwaitEnd`]). Whoever
//!   brings the second fact settles it. It is the awaiter's to deliver if the target refused
//!   it, if the awaiter stopped awaiting without reading the target's outcome (a select
//!   whose other branch won: the outcome was its only way to reach the awaiter), or if the
//!   target finished without receiving it (too late, its final step running on another
//!   loop). Otherwise the target has it, and the awaiter reads its outcome. So a request
//!   reaches the awaiter exactly once, directly or through the target's outcome, with one
//!   exception by design: once the awaiter's whole future is dropped ([`AwaitEnd::Dropped`],
//!   by `abort` or at shutdown) there is no await point left to deliver at. An awaiter that
//!   completed before a request passed on came back to it reports the request refused, so
//!   that whoever passed it on (its own awaiter) takes it back.
//!
//! - A request made while the task is parked (neither in a step nor queued) is handed to the
//!   await point it is parked at, as asyncio's `cancel()` cancels the awaited future at once
//!   (`_fut_waiter.cancel()`): `uncancel` no longer takes it back, whatever that await point
//!   is (a sleep, a lock, a socket, or a target the request went on to). Only a request made
//!   while the task runs or is queued (asyncio's `_must_cancel`: it awaits nothing, or what
//!   it awaited is done) is withdrawn by the last `uncancel`, as Python 3.13 does.
//!
//! A request racing the target's completion: the canceller reads the target's `done` (its
//! state word's COMPLETE bit) with a read-modify-write, under the target's cancel lock, after
//! it recorded the request as passed on (and set `propagated`); the awaiter reads
//! `propagated`, and then the target's `must_cancel` under that lock, only after it saw the
//! target complete. Either the canceller's read comes first, and the completion (a swap)
//! reads from it, so the awaiter sees `propagated` and then the request; or it sees COMPLETE
//! and the request comes back. A plain load there is not enough: under the memory model the
//! canceller and the awaiter could each miss the other's write (`loom_models` finds that
//! interleaving; its twin with a plain load loses the request).

use super::state::State;
use super::AwaitTarget;
use braid_bridge::sync::atomic::{AtomicBool, Ordering};
use braid_bridge::sync::Mutex;
use braid_bridge::{Error, Result};
use std::num::NonZeroUsize;

/// The fault switches of this module's loom twins (beside those in `sync::loom_support`).
#[cfg(loom)]
mod loom_faults {
    use std::sync::atomic::AtomicBool;

    /// Set by a twin for the length of its model: `put_back` drops a request handed to an
    /// await point once `uncancel` brought the count to 0, as it does a withdrawable one.
    pub(super) static PUT_BACK_IGNORES_HANDED: AtomicBool = AtomicBool::new(false);
}

/// The locked part of the cancel state. Only what an await writes is kept inline; the rest
/// waits in a box that a task which is never cancelled (nor named) never allocates, so that
/// every task cell stays small: the bytes of a cell are most of what a spawn costs once the
/// cells outgrow the cache (`benchmarks/NOTES.md`).
#[derive(Default)]
struct Requests {
    /// What the task awaits right now (its registration key and the target), if anything.
    /// The key is non-zero (an address) so that the `Option` needs no word of its own.
    awaiting: Option<(NonZeroUsize, AwaitTarget)>,
    rare: Option<Box<Rare>>,
}

/// The cancel requests' details, and the task's name: what most tasks never set.
struct Rare {
    /// asyncio's `cancelling()`: requests made and not withdrawn by `uncancel`.
    count: usize,
    /// A request waits to be delivered at the next await point.
    must_cancel: bool,
    /// The pending request (`must_cancel`) was handed to the await point the task was parked
    /// at (see the module docs): `uncancel` cannot take it back. False while only requests
    /// made to a running or queued task are pending.
    handed: bool,
    /// Bumped each time `must_cancel` turns true: tells the request pending when a step
    /// began apart from one that landed during the step after that one was delivered.
    undelivered: u64,
    /// Set when the running task cancels itself; such a request is never "too late".
    self_requested: bool,
    message: Option<String>,
    /// Requests of ours that went on to an awaited target and are not settled yet.
    passed: PassedOnList,
    /// The name given (`Task::set_name`), if any. Kept here, behind the cancel lock, because
    /// it is as rare as a cancel and the box is already there.
    name: Option<String>,
}

impl Rare {
    /// What a task that was never cancelled nor named reads.
    const NONE: Rare = Rare {
        count: 0,
        must_cancel: false,
        handed: false,
        undelivered: 0,
        self_requested: false,
        message: None,
        passed: PassedOnList {
            entries: Vec::new(),
            next_id: 0,
        },
        name: None,
    };
}

/// Read through [`Requests::rare`] while no box was allocated.
static NO_RARE: Rare = Rare::NONE;

/// The requests a task passed on and has not settled.
struct PassedOnList {
    entries: Vec<PassedOn>,
    /// The id of the next request passed on.
    next_id: u64,
}

/// A request of ours that went on to the target we await, until it is settled (see the
/// module docs): at the target, or back with us.
struct PassedOn {
    /// Tells the passer's answer apart from other requests passed on meanwhile.
    id: u64,
    /// The registration key of the future that awaits the target.
    key: usize,
    message: Option<String>,
    /// The target's answer came back, and it accepted the request (a refusal settles the
    /// request at once).
    accepted: bool,
    /// How that future stopped awaiting, if it stopped before the answer came.
    end: Option<AwaitEnd>,
}

/// A request an await took to pass on to its target (`take_cancel_to_pass_on`), kept
/// until the target answers: if the target was done, `put_back` returns it as it was.
pub(crate) struct TakenCancel {
    error: Error,
    by_self: bool,
    /// It had been handed to the await point the task was parked at (`Rare::handed`).
    handed: bool,
    /// Its stamp (`Rare::undelivered`).
    undelivered: u64,
}

impl TakenCancel {
    /// The Cancelled error the request stands for.
    pub(crate) fn error(&self) -> &Error {
        &self.error
    }
}

/// How a future stopped awaiting its target (a Task, a Promise, a gather).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AwaitEnd {
    /// It read the target's outcome: a request the target received reaches us through it.
    Read,
    /// It stopped without reading the outcome (dropped, say by a select whose other branch
    /// won): a request it passed on is ours to deliver.
    Abandoned,
    /// The awaiting task itself is ending (its whole future is dropped, by `abort` or at
    /// shutdown): there is no next await point to deliver a request at.
    Dropped,
}

/// A request to pass on to the awaited `target`, remembered as passed on under `id`.
struct PassOn {
    target: AwaitTarget,
    id: u64,
}

/// Where a passed-on request ended, as the passer learns it.
#[derive(Debug, PartialEq, Eq)]
enum Settled {
    /// The target has it (or will settle it with the awaiter later).
    AtTarget,
    /// It is ours, pending at our next await point: wake us.
    Ours,
    /// It is ours, but we completed meanwhile: it reached nobody.
    AwaiterDone,
}

impl Requests {
    /// The details, as a task that never allocated them reads them.
    fn rare(&self) -> &Rare {
        self.rare.as_deref().unwrap_or(&NO_RARE)
    }

    /// The details, allocated on first use.
    fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(|| Box::new(Rare::NONE))
    }

    /// Remembers a request passed on through the registration `key`; returns its id.
    fn push_passed(&mut self, key: usize, message: Option<String>, accepted: bool) -> u64 {
        let list = &mut self.rare_mut().passed;
        let id = list.next_id;
        list.next_id += 1;
        list.entries.push(PassedOn {
            id,
            key,
            message,
            accepted,
            end: None,
        });
        id
    }

    /// The requests passed on and not settled (empty if none ever was).
    fn passed_mut(&mut self) -> &mut [PassedOn] {
        match &mut self.rare {
            Some(rare) => &mut rare.passed.entries,
            None => &mut [],
        }
    }

    /// Removes the passed-on request at `index`, returns it and whether any is left.
    fn settle_passed(&mut self, index: usize) -> (PassedOn, bool) {
        let list = &mut self
            .rare
            .as_deref_mut()
            .expect("a request at that index")
            .passed;
        let passed = list.entries.swap_remove(index);
        (passed, !list.entries.is_empty())
    }

    /// True if a passed-on request is unsettled.
    #[cfg(all(test, loom))]
    fn any_passed(&self) -> bool {
        !self.rare().passed.entries.is_empty()
    }
}

/// What the runner learnt at the start of a step.
pub(crate) struct Step {
    pub(crate) cancel_before_start: bool,
    /// The undelivered request pending as the step began (its `Rare::undelivered` number),
    /// if any.
    pending_at_start: Option<u64>,
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
    /// Fast check for `passed` being non-empty: a request of ours went on to an awaited target
    /// and is not settled. An atomic so that the common case (no cancel) costs the end of an
    /// await one load, not a lock; stored under the lock.
    propagated: AtomicBool,
    /// The task finished with a Cancelled error (read once its state is COMPLETE).
    ended_cancelled: AtomicBool,
    /// The task finished with another error (read once its state is COMPLETE). Here rather
    /// than in the header beside it: a lone flag there would take a word of its own.
    ended_failed: AtomicBool,
    /// The task's first step has begun ([`first_step`](Self::first_step)). Read and written
    /// only by the task's runner, whose steps the state word orders: relaxed. Here for the
    /// same reason as `ended_failed`.
    started: AtomicBool,
    requests: Mutex<Requests>,
}

impl CancelState {
    pub(crate) fn new() -> CancelState {
        CancelState {
            pending: AtomicBool::new(false),
            has_awaiting: AtomicBool::new(false),
            propagated: AtomicBool::new(false),
            ended_cancelled: AtomicBool::new(false),
            ended_failed: AtomicBool::new(false),
            started: AtomicBool::new(false),
            requests: Mutex::new(Requests::default()),
        }
    }

    /// The name given, if any.
    pub(crate) fn name(&self) -> Option<String> {
        self.requests.lock().rare().name.clone()
    }

    pub(crate) fn set_name(&self, name: String) {
        self.requests.lock().rare_mut().name = Some(name);
    }

    /// True once the task (whose state word `state` is) has finished with an error other
    /// than Cancelled.
    pub(crate) fn failed(&self, state: &State) -> bool {
        state.is_complete() && self.ended_failed.load(Ordering::Acquire)
    }

    /// True once the task (whose state word `state` is) has finished cancelled.
    pub(crate) fn cancelled(&self, state: &State) -> bool {
        state.is_complete() && self.ended_cancelled.load(Ordering::Acquire)
    }

    /// asyncio's `cancelling()`.
    pub(crate) fn cancelling(&self) -> usize {
        self.requests.lock().rare().count
    }

    /// True if the task may have an await registration a dropped future must settle: it
    /// awaits a target, or a request of its own went on to one. Stable while the task is in
    /// a step: nothing passes a request on through a task in a step (`record_cancel`).
    #[inline]
    pub(crate) fn may_hold_registrations(&self) -> bool {
        self.has_awaiting.load(Ordering::Relaxed) || self.propagated.load(Ordering::Acquire)
    }

    /// `cancelling()` less a request still waiting for an await point: the requests that
    /// have reached the task already (or gone on to what it awaits).
    #[cfg(feature = "hyper")]
    pub(crate) fn cancelling_delivered(&self) -> usize {
        let requests = self.requests.lock();
        let rare = requests.rare();
        rare.count.saturating_sub(usize::from(rare.must_cancel))
    }

    /// braid's Cancelled error with the latest request's message, if a request is
    /// outstanding (`cancelling()` is not 0): what a connection's failure, or its clean
    /// close, stands for once a request reached it (hyper takes a failed read for either).
    #[cfg(feature = "hyper")]
    pub(crate) fn outstanding_cancel(&self) -> Option<Error> {
        let requests = self.requests.lock();
        let rare = requests.rare();
        (rare.count > 0).then(|| Error::cancelled(rare.message.clone()))
    }

    /// asyncio's `uncancel()`: withdraws one request; returns how many are left. `by_self`:
    /// the task itself calls it, in a step.
    pub(crate) fn uncancel(&self, by_self: bool) -> usize {
        let mut requests = self.requests.lock();
        let Some(rare) = requests.rare.as_deref_mut() else {
            return 0; // never cancelled
        };
        if rare.count > 0 {
            rare.count -= 1;
            // As Python 3.13: the last uncancel also withdraws an undelivered request, but
            // only asyncio's `_must_cancel` one. A request handed to the await point the task
            // was parked at is on its way there (asyncio cancelled that awaited future), and
            // stays; unless the task itself takes it back: asyncio resumes a task at that
            // await point with the cancel, so its code never runs with such a request
            // pending, while a braid step may resume elsewhere (a `task_group` exit that
            // finds no child left, say) and withdraw it there as asyncio's group does.
            if rare.count == 0 && (!rare.handed || by_self) {
                rare.must_cancel = false;
                rare.self_requested = false;
                self.pending.store(false, Ordering::Release);
            }
        }
        rare.count
    }

    /// Records a cancel request. If the task is awaiting a Task or Promise, returns it: the
    /// caller cancels that instead (asyncio's `_fut_waiter.cancel()`), and the task receives
    /// its outcome; otherwise marks the request for delivery at the next await point.
    /// `Err(())` if the task is already done. A task in a step (its state RUNNING) awaits
    /// nothing right now (asyncio's `_fut_waiter` is `None` during a step): the request waits
    /// for its next await point, which passes it on if that awaits a target. `by_self`: the
    /// task is cancelling itself (so it is in a step; such a request is never too late).
    /// `pass_on`: false to mark the request here whatever the task awaits (see `request`).
    fn record_cancel(
        &self,
        state: &State,
        message: Option<String>,
        by_self: bool,
        pass_on: bool,
    ) -> std::result::Result<Option<PassOn>, ()> {
        if state.is_complete() {
            return Err(());
        }
        let mut requests = self.requests.lock();
        // Ordered, not a plain load: if we are before the completion, what we wrote before
        // (the awaiter's `propagated`, when the request travels from it) is seen by whoever
        // sees the completion (that awaiter's `end_await`). Else both could miss
        // each other (see the module docs).
        #[cfg(loom)]
        let seen = if crate::sync::loom_support::PLAIN_DONE_READ
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            state.seen_by_cancel_plain()
        } else {
            state.seen_by_cancel()
        };
        #[cfg(not(loom))]
        let seen = state.seen_by_cancel();
        if seen.complete {
            return Err(());
        }
        requests.rare_mut().count += 1;
        // A task in a step awaits nothing yet: what it registered may be a target it stopped
        // awaiting in this very step (a handle polled once and kept), and the step is not
        // over. The request waits for its next await point, which passes it on if that
        // awaits a target. Read under our lock, as the registration is written: a step that
        // registered before our lock was taken is seen running, or over.
        #[cfg(loom)]
        let in_step = seen.in_step
            && !crate::sync::loom_support::PASS_ON_DURING_A_STEP
                .load(std::sync::atomic::Ordering::SeqCst);
        #[cfg(not(loom))]
        let in_step = seen.in_step;
        let suspended = !by_self && !in_step;
        // Parked: suspended and not queued, so its await point has not ended (asyncio's
        // `_fut_waiter` is pending). The canceller's own wake comes after this read. A queued
        // task's await point has its outcome already, as asyncio's done `_fut_waiter` refuses
        // the cancel and leaves `_must_cancel`.
        let parked = suspended && !seen.queued;
        if let Some((key, target)) = requests.awaiting.as_ref().filter(|_| pass_on && suspended) {
            let (key, target) = (key.get(), target.clone());
            let id = requests.push_passed(key, message.clone(), false);
            self.propagated.store(true, Ordering::Release);
            requests.rare_mut().message = message;
            return Ok(Some(PassOn { target, id }));
        }
        self.mark_must_cancel(&mut requests, message, by_self, parked);
        Ok(None)
    }

    /// Marks a request pending; `handed`: it was handed to the await point the task is
    /// parked at, so `uncancel` keeps it (one such request pending is enough: the await
    /// point gets the cancel, once).
    fn mark_must_cancel(
        &self,
        requests: &mut Requests,
        message: Option<String>,
        by_self: bool,
        handed: bool,
    ) {
        let rare = requests.rare_mut();
        if !rare.must_cancel {
            rare.undelivered += 1;
            rare.handed = false;
        }
        rare.must_cancel = true;
        rare.handed |= handed;
        rare.self_requested |= by_self;
        rare.message = message;
        self.pending.store(true, Ordering::Release);
    }

    /// A request passed on came back to us (see `settle_answer`): deliver it at the await
    /// point. False if the task has completed meanwhile: then the request can no longer reach
    /// it, and whoever made it must take it back (see `request`). `handed`: the target had
    /// accepted it (so `uncancel` keeps it); a target that refused it was done, and asyncio
    /// leaves such a request as `_must_cancel`.
    fn deliver_instead(
        &self,
        state: &State,
        message: Option<String>,
        by_self: bool,
        handed: bool,
    ) -> bool {
        let mut requests = self.requests.lock();
        // A plain load suffices here: the `must_cancel` we write is read under this lock,
        // and an outer awaiter's `propagated` was published by `record_cancel`'s RMW.
        if state.is_complete() {
            return false;
        }
        self.mark_must_cancel(&mut requests, message, by_self, handed);
        true
    }

    /// The passer's side: the target answered (`accepted`) the request `id` passed on to it
    /// (from `record_cancel`). Settles the request, unless the awaiting future has not
    /// stopped awaiting yet and the target accepted it: then that future's end settles it.
    /// `missed`: the target finished without receiving a request that reached it; asked only
    /// once the awaiter has read the target's outcome, so with the target done.
    fn settle_answer(
        &self,
        state: &State,
        id: u64,
        accepted: bool,
        missed: impl FnOnce() -> bool,
        by_self: bool,
    ) -> Settled {
        let mut requests = self.requests.lock();
        let Some(index) = requests.passed_mut().iter().position(|p| p.id == id) else {
            // Only the passer removes a request that has no answer yet.
            debug_assert!(false, "passed-on request {id} settled before its answer");
            return Settled::AtTarget;
        };
        let end = requests.passed_mut()[index].end;
        if accepted && end.is_none() {
            requests.passed_mut()[index].accepted = true;
            return Settled::AtTarget;
        }
        let (passed, any_left) = requests.settle_passed(index);
        self.propagated.store(any_left, Ordering::Release);
        drop(requests);
        // Asked without our lock held: it takes the target's, and no thread holds two.
        let ours = match end {
            _ if !accepted => true,
            Some(AwaitEnd::Abandoned) => true,
            Some(AwaitEnd::Read) => missed(),
            Some(AwaitEnd::Dropped) | None => false,
        };
        if !ours {
            return Settled::AtTarget;
        }
        #[cfg(loom)]
        if accepted
            && crate::sync::loom_support::ACCEPTED_COUNTS_WHEN_AWAITER_DONE
                .load(std::sync::atomic::Ordering::SeqCst)
            && state.is_complete()
        {
            return Settled::AtTarget;
        }
        if self.deliver_instead(state, passed.message, by_self, accepted) {
            Settled::Ours
        } else {
            // We completed before it came back: it reached nobody (if the target took it,
            // that no longer reaches us). Our own awaiter, if it passed it on, takes it back.
            Settled::AwaiterDone
        }
    }

    /// The awaiter's side: the future registered under `key` stopped awaiting its target
    /// (`end`). Forgets the registration, and settles each request passed on through it
    /// whose answer has come; the passer settles the others when their answer comes.
    /// `missed` is as in `settle_answer`, asked only after a [`AwaitEnd::Read`]. Called by
    /// the running task, or by whoever drops its future. True if a request is now ours to
    /// deliver: the caller wakes the task, which may have polled its other futures already.
    #[must_use = "a request delivered needs a wake"]
    pub(crate) fn end_await(
        &self,
        key: usize,
        end: AwaitEnd,
        missed: impl FnOnce() -> bool,
    ) -> bool {
        let passed = self.propagated.load(Ordering::Acquire);
        if !passed && !self.has_awaiting.load(Ordering::Relaxed) {
            return false;
        }
        self.end_await_locked(key, end, passed, missed)
    }

    /// [`end_await`](Self::end_await) for a future that moved to another task since it
    /// registered, called from that task's thread while the task that registered may be
    /// running elsewhere: no lock-free look first, since a canceller may be passing a
    /// request on through this very registration under our lock, and the flag it sets there
    /// need not be visible yet without the lock. The lock orders the two: either the
    /// canceller finds the registration gone, or we find its request and take it back.
    #[must_use = "a request delivered needs a wake"]
    pub(crate) fn end_await_moved(&self, key: usize) -> bool {
        #[cfg(loom)]
        if crate::sync::loom_support::MOVED_WITH_FAST_PATH.load(std::sync::atomic::Ordering::SeqCst)
        {
            return self.end_await(key, AwaitEnd::Abandoned, || false);
        }
        self.end_await_locked(key, AwaitEnd::Abandoned, false, || false)
    }

    /// The body of [`end_await`](Self::end_await); `passed` is what its first look read.
    fn end_await_locked(
        &self,
        key: usize,
        end: AwaitEnd,
        passed: bool,
        missed: impl FnOnce() -> bool,
    ) -> bool {
        #[cfg(loom)]
        let end = if crate::sync::loom_support::ABANDON_AS_READ
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            AwaitEnd::Read
        } else {
            end
        };
        #[cfg(loom)]
        let skip_reclaim =
            crate::sync::loom_support::SKIP_RECLAIM.load(std::sync::atomic::Ordering::SeqCst);
        #[cfg(not(loom))]
        let skip_reclaim = false;
        // Read after the target was seen done (see the module docs), and before our lock:
        // it takes the target's.
        let missed = passed && end == AwaitEnd::Read && !skip_reclaim && missed();
        let mut requests = self.requests.lock();
        let forgotten = self.forget_awaiting(&mut requests, Some(key));
        let Some(list) = requests.rare.as_deref_mut().map(|rare| &mut rare.passed) else {
            drop(requests);
            drop(forgotten);
            return false;
        };
        let deliver = end == AwaitEnd::Abandoned || missed;
        let mut ours = None;
        list.entries.retain_mut(|p| {
            if p.key != key || p.end.is_some() {
                return true;
            }
            if !p.accepted {
                p.end = Some(end);
                return true;
            }
            if deliver {
                ours = Some(p.message.take());
            }
            false
        });
        self.propagated
            .store(!list.entries.is_empty(), Ordering::Release);
        let delivered = ours.is_some();
        if let Some(message) = ours {
            // Counted as the task's own, never too late: it was mostly made in an earlier
            // step (it waited at the target since), and one made during this step cannot
            // be told apart. Handed: the target accepted it, so `uncancel` keeps it.
            self.mark_must_cancel(&mut requests, message, true, true);
        }
        drop(requests);
        drop(forgotten);
        delivered
    }

    /// True if no request of ours is passed on and unsettled (the models' check).
    #[cfg(all(test, loom))]
    fn nothing_passed_on(&self) -> bool {
        let empty = !self.requests.lock().any_passed();
        debug_assert_eq!(empty, !self.propagated.load(Ordering::Acquire));
        empty
    }

    /// A pending request of ours, taken at an await of a target (registration `key`), was
    /// passed on to that target, which accepted it (`Task::poll`). It is settled like one a
    /// canceller passed on, when the await ends.
    pub(crate) fn note_passed_on(&self, key: usize, message: Option<String>) {
        let mut requests = self.requests.lock();
        requests.push_passed(key, message, true);
        self.propagated.store(true, Ordering::Release);
    }

    /// True if the task (whose state word `state` is) has finished, not cancelled, with a
    /// request still undelivered: one that reached it during its final step.
    pub(crate) fn missed_request(&self, state: &State) -> bool {
        state.is_complete()
            && !self.ended_cancelled.load(Ordering::Acquire)
            && self.requests.lock().rare().must_cancel
    }

    /// The leaf-future check: delivers a pending cancel request once.
    #[inline]
    pub(crate) fn take_cancel(&self) -> Option<Error> {
        self.take_cancel_to_pass_on().map(|taken| taken.error)
    }

    /// As [`take_cancel`](Self::take_cancel), for an await that passes the request on to
    /// the target it awaits: also keeps what [`put_back`](Self::put_back) needs, should the
    /// target turn out to be done already.
    pub(crate) fn take_cancel_to_pass_on(&self) -> Option<TakenCancel> {
        if !self.pending.load(Ordering::Acquire) {
            return None;
        }
        let mut requests = self.requests.lock();
        self.pending.store(false, Ordering::Relaxed);
        if !requests.rare().must_cancel {
            return None;
        }
        let rare = requests.rare_mut();
        rare.must_cancel = false;
        Some(TakenCancel {
            error: Error::cancelled(rare.message.clone()),
            by_self: std::mem::take(&mut rare.self_requested),
            handed: std::mem::take(&mut rare.handed),
            undelivered: rare.undelivered,
        })
    }

    /// Undoes [`take_cancel_to_pass_on`](Self::take_cancel_to_pass_on): the target was
    /// done, so the request reached nobody, and it waits for the task's next await point as
    /// it was. Its stamp stays (a request that predates the step still turns a return into
    /// a cancellation, and one that landed during the final step is still too late), as
    /// do whether the task made it and whether it was handed to an await point. Nothing is
    /// put back once `uncancel` withdrew every request meanwhile, unless it was handed (an
    /// `uncancel` while it was pending would have kept it); with a request marked meanwhile,
    /// the pending pair keeps the newer message and takes the older stamp.
    pub(crate) fn put_back(&self, taken: TakenCancel) {
        let mut requests = self.requests.lock();
        let Some(rare) = requests.rare.as_deref_mut() else {
            return; // a request was taken, so the box exists; nothing to do otherwise
        };
        #[cfg(loom)]
        let handed = taken.handed
            && !loom_faults::PUT_BACK_IGNORES_HANDED.load(std::sync::atomic::Ordering::SeqCst);
        #[cfg(not(loom))]
        let handed = taken.handed;
        if rare.count == 0 && !handed {
            return;
        }
        // A request marked since the take bumped the stamp; the one put back is older, and
        // the pending pair is as old as its oldest: a return in a step it predates is still
        // turned into a cancellation (loom model `loom_cancel_put_back_*`).
        rare.undelivered = taken.undelivered;
        rare.must_cancel = true;
        rare.handed |= handed;
        rare.self_requested |= taken.by_self;
        self.pending.store(true, Ordering::Release);
    }

    /// True at the first call only: the runner's, as its task's first step begins. The
    /// argument [`begin_step`](Self::begin_step) takes.
    #[inline]
    pub(crate) fn first_step(&self) -> bool {
        if self.started.load(Ordering::Relaxed) {
            return false;
        }
        self.started.store(true, Ordering::Relaxed);
        true
    }

    pub(crate) fn begin_step(&self, first_poll: bool) -> Step {
        if !self.pending.load(Ordering::Acquire) {
            return Step {
                cancel_before_start: false,
                pending_at_start: None,
                message: None,
            };
        }
        let requests = self.requests.lock();
        let rare = requests.rare();
        Step {
            cancel_before_start: first_poll && rare.must_cancel,
            pending_at_start: rare.must_cancel.then_some(rare.undelivered),
            message: rare.message.clone(),
        }
    }

    /// The outcome of a step whose coroutine returned `output`. As asyncio: a request still
    /// undelivered that predates the step or was made by the task itself turns a *return*
    /// into a cancellation; an error the coroutine raised stays its outcome, and a request
    /// from elsewhere that landed during this final step is too late, even when one that
    /// predated the step was delivered (and caught) in it.
    pub(crate) fn step_outcome<T>(&self, step: &Step, output: Result<T>) -> Result<T> {
        if output.is_err() || !self.pending.load(Ordering::Acquire) {
            return output;
        }
        let requests = self.requests.lock();
        let rare = requests.rare();
        let predates_step = step.pending_at_start == Some(rare.undelivered);
        if rare.must_cancel && (predates_step || rare.self_requested) {
            return Err(Error::cancelled(rare.message.clone()));
        }
        output
    }

    pub(crate) fn set_awaiting(&self, key: NonZeroUsize, target: AwaitTarget) {
        let replaced = self.requests.lock().awaiting.replace((key, target));
        self.has_awaiting.store(true, Ordering::Relaxed);
        // Dropped without our lock held (it may be that target's last reference).
        drop(replaced);
    }

    /// Forgets the awaited target (only `key`'s, or any when `key` is `None`).
    pub(crate) fn clear_awaiting(&self, key: Option<usize>) {
        if !self.has_awaiting.load(Ordering::Relaxed) {
            return;
        }
        let mut requests = self.requests.lock();
        // Requests passed on through it stay remembered: the future that registered it
        // settles them when it stops awaiting.
        let forgotten = self.forget_awaiting(&mut requests, key);
        drop(requests);
        drop(forgotten);
    }

    /// Takes the awaited target out of `requests` if it is `key`'s (any, for `None`). The
    /// caller drops it after our lock: it may be the target's last reference, and its
    /// contents must not drop under our lock.
    fn forget_awaiting(
        &self,
        requests: &mut Requests,
        key: Option<usize>,
    ) -> Option<(NonZeroUsize, AwaitTarget)> {
        let matches = match (&requests.awaiting, key) {
            (Some((k, _)), Some(key)) => k.get() == key,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if !matches {
            return None;
        }
        self.has_awaiting.store(false, Ordering::Relaxed);
        requests.awaiting.take()
    }

    /// The runner's last word on a task: records whether it ended cancelled or failed
    /// otherwise, forgets what it awaited, then sets COMPLETE on `state` (after which
    /// `record_cancel` refuses).
    pub(crate) fn complete(&self, state: &State, cancelled: bool, failed: bool) {
        self.ended_cancelled.store(cancelled, Ordering::Release);
        self.ended_failed.store(failed, Ordering::Release);
        // Only the runner sets `has_awaiting` (during a poll), and we are the runner.
        self.clear_awaiting(None);
        state.complete();
    }
}

/// asyncio's `Task.cancel` on the task whose state word and cancel state these are; `wake`
/// queues it. False if the request cannot reach the task (it is done, or completed while the
/// request travelled through the target it awaited).
///
/// `pass_on`: false to keep the request here even if the task awaits a target (it is then
/// passed on from the task's next await point, in a later poll): the caller bounds how far
/// one call carries a request down a chain of awaits (see `task::request_cancel`).
pub(crate) fn request(
    state: &State,
    cancel: &CancelState,
    message: Option<String>,
    by_self: bool,
    pass_on: bool,
    wake: impl FnOnce(),
) -> bool {
    match cancel.record_cancel(state, message.clone(), by_self, pass_on) {
        Err(()) => false,
        Ok(None) => {
            wake();
            true
        }
        Ok(Some(PassOn { target, id })) => {
            // The awaited target settles (now, or once its cleanup has run) and wakes us with
            // its outcome; if it was already done, or our await of it ended without reading
            // that outcome, the request is ours to deliver.
            let accepted = target.clone().cancel_from_awaiter(message);
            let missed = || target.missed_request();
            match cancel.settle_answer(state, id, accepted, missed, by_self) {
                Settled::AtTarget => true,
                Settled::Ours => {
                    wake();
                    true
                }
                // It completed while the request travelled: it never saw it. Report a
                // refusal, so that an awaiter passing its own cancel on takes it back.
                Settled::AwaiterDone => false,
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::task::state::{IdleAction, RunAction};
    use std::sync::Arc;

    fn has_details(cancel: &CancelState) -> bool {
        cancel.requests.lock().rare.is_some()
    }

    #[test]
    fn a_task_never_cancelled_nor_named_allocates_no_details() {
        let state = State::new_scheduled();
        let cancel = CancelState::new();
        let step = cancel.begin_step(true);
        assert!(!step.cancel_before_start);
        assert_eq!(cancel.step_outcome(&step, Ok(1)).ok(), Some(1));
        assert!(cancel.take_cancel().is_none());
        assert_eq!(cancel.cancelling(), 0);
        assert_eq!(cancel.uncancel(false), 0);
        assert_eq!(cancel.name(), None);
        assert!(!cancel.missed_request(&state));
        // An await of a target, read to its end, and another, forgotten at completion.
        let key = NonZeroUsize::new(16).unwrap();
        cancel.set_awaiting(key, AwaitTarget::Other(Arc::new(Settled)));
        assert!(!cancel.end_await(key.get(), AwaitEnd::Read, || false));
        cancel.set_awaiting(key, AwaitTarget::Other(Arc::new(Settled)));
        cancel.complete(&state, false, false);
        assert!(!has_details(&cancel), "nothing above needs the box");
    }

    /// A target that is already done.
    struct Settled;

    impl crate::task::CancelTarget for Settled {
        fn cancel_from_awaiter(self: Arc<Self>, _message: Option<String>) -> bool {
            false
        }
    }

    #[test]
    fn a_request_and_a_name_are_kept_in_the_details() {
        let state = State::new_scheduled();
        let cancel = CancelState::new();
        assert!(request(
            &state,
            &cancel,
            Some("stop".to_owned()),
            false,
            true,
            || ()
        ));
        assert!(has_details(&cancel));
        assert_eq!(cancel.cancelling(), 1);
        cancel.set_name("worker".to_owned());
        assert_eq!(cancel.name().as_deref(), Some("worker"));
        let error = cancel.take_cancel().expect("the request is delivered");
        assert!(error.is_cancelled());
        assert_eq!(error.message(), Some("stop"));
        assert!(cancel.take_cancel().is_none(), "delivered once");
        assert_eq!(cancel.uncancel(false), 0);
        assert_eq!(cancel.name().as_deref(), Some("worker"), "the name stays");
    }

    /// A request made while the task is parked is handed to its await point: another task's
    /// `uncancel` leaves it to be delivered there, and one on the task's own behalf (its code
    /// in a step, or a task group taking back its own cancel of it) withdraws it.
    #[test]
    fn a_handed_request_is_withdrawn_only_on_the_tasks_own_behalf() {
        for own in [false, true] {
            let state = State::new_scheduled();
            let cancel = CancelState::new();
            assert_eq!(state.start_run(), RunAction::Poll);
            assert_eq!(state.end_poll_pending(), IdleAction::Idle);
            assert!(request(&state, &cancel, None, false, true, || ()));
            assert_eq!(cancel.uncancel(own), 0);
            assert_eq!(
                cancel.take_cancel().is_some(),
                !own,
                "own behalf {own}: the handed request was kept (true) or withdrawn (false)"
            );
        }
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    //! Task A awaits task B, which runs on another loop, and a cancel request of A's goes on
    //! to B: a third thread cancels A while A awaits B, or A passes on a request of its own
    //! that was pending when it began to await (`note_passed_on`). The request races B's
    //! last step. Whatever the interleaving, it reaches A exactly once: through B's outcome
    //! (B ends cancelled) or directly, to be delivered at A's next await point. If A stops
    //! awaiting B without reading its outcome, the request reaches A directly.
    use super::*;
    use crate::task::state::{IdleAction, RunAction, WakeAction};
    use crate::task::CancelTarget;
    use loom::thread;
    use std::sync::Arc;

    /// The registration key of A's await of B.
    const KEY: usize = 7;
    /// The same, as `set_awaiting` keeps it.
    const AWAITING_KEY: NonZeroUsize = NonZeroUsize::new(KEY).unwrap();

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
            request(&self.state, &self.cancel, message, false, true, || {})
        }

        fn missed_request(&self) -> bool {
            self.cancel.missed_request(&self.state)
        }
    }

    /// Two tasks, both running (polled by their loops).
    fn both_running() -> (Arc<ModelTask>, Arc<ModelTask>) {
        let (a, b) = (ModelTask::new(), ModelTask::new());
        assert_eq!(a.state.start_run(), RunAction::Poll);
        assert_eq!(b.state.start_run(), RunAction::Poll);
        (a, b)
    }

    /// A suspended on B: its step registered B as awaited and ended; B is running.
    fn a_suspended_on_b() -> (Arc<ModelTask>, Arc<ModelTask>) {
        let (a, b) = both_running();
        a.cancel
            .set_awaiting(AWAITING_KEY, AwaitTarget::Other(b.clone()));
        assert_eq!(a.state.end_poll_pending(), IdleAction::Idle);
        (a, b)
    }

    /// A's next step begins (B's completion woke it).
    fn a_runs_again(a: &ModelTask) {
        assert_eq!(a.state.wake(), WakeAction::Schedule);
        assert_eq!(a.state.start_run(), RunAction::Poll);
    }

    /// `b`'s last step on another loop: it returns a value, unless a request it saw turns
    /// that into a cancellation.
    fn spawn_last_step(b: &Arc<ModelTask>) -> thread::JoinHandle<()> {
        let b = b.clone();
        thread::spawn(move || {
            let step = b.cancel.begin_step(false);
            let outcome = b.cancel.step_outcome(&step, Ok(()));
            b.cancel.complete(&b.state, outcome.is_err(), false);
        })
    }

    /// A's await of B reads B's outcome, as the ready path of `Task::poll` does.
    fn read_outcome(a: &ModelTask, b: &ModelTask) {
        // The wake it may ask for is the state word's protocol, not modelled here.
        let _ = a
            .cancel
            .end_await(KEY, AwaitEnd::Read, || b.missed_request());
    }

    /// Once B has finished and A read its outcome: the request reached A through B (B ended
    /// cancelled) or directly (A had it already, `a_had_it`, or has it to deliver now),
    /// never both, never neither.
    fn assert_reached_exactly_one(a: &ModelTask, b: &ModelTask, a_had_it: bool) {
        let b_cancelled = b.cancel.cancelled(&b.state);
        let a_has_it = a_had_it || a.cancel.take_cancel().is_some();
        assert!(
            b_cancelled != a_has_it,
            "the request must reach exactly one of the two \
             (B cancelled: {b_cancelled}, A has it: {a_has_it})"
        );
        assert!(a.cancel.nothing_passed_on(), "the request is settled");
    }

    /// Runs the race with the fault switch `fault` on (a twin) or off.
    fn awaiter_cancelled_while_the_awaited_task_finishes(
        fault: &'static std::sync::atomic::AtomicBool,
        on: bool,
    ) {
        crate::sync::loom_support::model_with_fault(fault, on, || {
            // A is suspended on B; B is running its last step (it will return a value).
            let (a, b) = a_suspended_on_b();

            let canceller = {
                let a = a.clone();
                thread::spawn(move || request(&a.state, &a.cancel, None, false, true, || {}))
            };
            let b_runner = spawn_last_step(&b);
            // A sees B complete (its join wakes A), then its `Task` future's ready path runs.
            b_runner.join().unwrap();
            a_runs_again(&a);
            let taken_at_poll = a.cancel.take_cancel().is_some();
            read_outcome(&a, &b);
            let reached_a = canceller.join().unwrap();
            assert!(
                reached_a,
                "A never completes, so the request must be accepted"
            );

            assert_reached_exactly_one(&a, &b, taken_at_poll);
            assert_eq!(a.cancel.cancelling(), 1);
        });
    }

    /// What a model of `Task::poll`'s pass-on leaves out (a twin), if anything.
    #[derive(Clone, Copy, PartialEq)]
    enum PassOnFault {
        None,
        /// The note that the target accepted the request (`note_passed_on`).
        NoNote,
        /// Putting a request the target refused back (`put_back`).
        NoPutBack,
    }

    /// A has a request of its own pending when it awaits B (`Task::poll`): it takes the
    /// request and passes it on to B, noting that it did (`note_passed_on`), or, if B was
    /// done and refused it, puts it back for A's next await point (`put_back`), while B runs
    /// its last step on another loop.
    fn awaiter_passes_its_pending_cancel_on_while_the_awaited_task_finishes(fault: PassOnFault) {
        loom::model(move || {
            let (a, b) = both_running();
            // Requested before A's await (A awaited nothing then): pending at A.
            assert!(request(&a.state, &a.cancel, None, false, true, || {}));

            let b_runner = spawn_last_step(&b);
            // `Task::poll` of B's handle, in A.
            let taken = a.cancel.take_cancel_to_pass_on();
            let taken = taken.expect("A's own request is pending");
            if request(&b.state, &b.cancel, None, false, true, || {}) {
                if fault != PassOnFault::NoNote {
                    a.cancel.note_passed_on(KEY, None);
                }
            } else if fault != PassOnFault::NoPutBack {
                a.cancel.put_back(taken);
            }
            // A waits for B's completion (B's join wakes it), then the ready path.
            b_runner.join().unwrap();
            read_outcome(&a, &b);

            assert_reached_exactly_one(&a, &b, false);
            assert_eq!(a.cancel.cancelling(), 1, "passing it on is no new request");
        });
    }

    #[test]
    fn loom_cancel_passed_on_by_the_awaiter_races_the_awaited_task_finishing() {
        awaiter_passes_its_pending_cancel_on_while_the_awaited_task_finishes(PassOnFault::None);
    }

    /// Without the note, a request passed on to a task that finishes without seeing it is
    /// lost: the awaiter never takes it back.
    #[test]
    #[should_panic(expected = "exactly one")]
    fn loom_cancel_twin_passed_on_without_the_note_loses_the_request() {
        awaiter_passes_its_pending_cancel_on_while_the_awaited_task_finishes(PassOnFault::NoNote);
    }

    /// Without putting it back, a request that B refused, being done, is lost: the awaiter
    /// took it to pass it on, and reads B's value.
    #[test]
    #[should_panic(expected = "exactly one")]
    fn loom_cancel_twin_refused_and_not_put_back_loses_the_request() {
        awaiter_passes_its_pending_cancel_on_while_the_awaited_task_finishes(
            PassOnFault::NoPutBack,
        );
    }

    /// A request pending before A's step is taken at A's await of a done target and put
    /// back, while another thread makes a second request: A's return in that step is still
    /// turned into a cancellation, whether the second request landed before the take,
    /// between the take and the put-back (it then bumped the stamp: the put-back restores
    /// the older one), or after.
    #[test]
    fn loom_cancel_put_back_keeps_the_stamp_of_a_request_that_predates_the_step() {
        loom::model(|| {
            let a = ModelTask::new();
            assert!(request(&a.state, &a.cancel, None, false, true, || {}));
            assert_eq!(a.state.start_run(), RunAction::Poll);
            let step = a.cancel.begin_step(false);
            let second = {
                let a = a.clone();
                thread::spawn(move || request(&a.state, &a.cancel, None, false, true, || {}))
            };
            if let Some(taken) = a.cancel.take_cancel_to_pass_on() {
                a.cancel.put_back(taken);
            }
            let outcome = a.cancel.step_outcome(&step, Ok(()));
            assert!(second.join().unwrap());
            assert!(
                outcome.is_err_and(|e| e.is_cancelled()),
                "a request that predates the step was undelivered at its return"
            );
            assert_eq!(a.cancel.cancelling(), 2);
        });
    }

    /// A's step takes its pending request, to pass it on to a target that turns out done,
    /// and puts it back, while `uncancel` on another thread brings the count to 0.
    fn uncancel_during_a_take_and_put_back(a: &Arc<ModelTask>) {
        let uncanceller = {
            let a = a.clone();
            thread::spawn(move || a.cancel.uncancel(false))
        };
        if let Some(taken) = a.cancel.take_cancel_to_pass_on() {
            a.cancel.put_back(taken);
        }
        assert_eq!(uncanceller.join().unwrap(), 0);
    }

    /// `uncancel` on another thread withdraws A's only request while A's await has it taken
    /// (to pass on to a target that turns out done): the put-back must not bring it back.
    #[test]
    fn loom_cancel_put_back_never_revives_a_withdrawn_request() {
        loom::model(|| {
            let a = ModelTask::new();
            assert!(request(&a.state, &a.cancel, None, false, true, || {}));
            assert_eq!(a.state.start_run(), RunAction::Poll);
            uncancel_during_a_take_and_put_back(&a);
            assert!(
                a.cancel.take_cancel().is_none(),
                "a withdrawn request came back"
            );
            assert_eq!(a.cancel.cancelling(), 0);
        });
    }

    /// A request made while A is parked is handed to its await point; A then runs, and its
    /// await of a target that turns out done takes the request and puts it back, while
    /// `uncancel` on another thread brings the count to 0. The request is still A's to
    /// receive, whether the `uncancel` came before the take, between the take and the
    /// put-back, or after: `uncancel` never takes back a handed request.
    fn uncancel_races_the_put_back_of_a_handed_request(put_back_ignores_handed: bool) {
        crate::sync::loom_support::model_with_fault(
            &loom_faults::PUT_BACK_IGNORES_HANDED,
            put_back_ignores_handed,
            || {
                let a = ModelTask::new();
                assert_eq!(a.state.start_run(), RunAction::Poll);
                assert_eq!(a.state.end_poll_pending(), IdleAction::Idle);
                // Made while A is parked; its wake queues A.
                assert!(request(&a.state, &a.cancel, None, false, true, || {
                    assert_eq!(a.state.wake(), WakeAction::Schedule);
                }));
                assert_eq!(a.state.start_run(), RunAction::Poll);
                uncancel_during_a_take_and_put_back(&a);
                assert!(
                    a.cancel.take_cancel().is_some(),
                    "a request handed to A's await point was withdrawn"
                );
                assert_eq!(a.cancel.cancelling(), 0);
            },
        );
    }

    #[test]
    fn loom_cancel_uncancel_never_withdraws_a_handed_request_taken_and_put_back() {
        uncancel_races_the_put_back_of_a_handed_request(false);
    }

    /// A put-back that drops the request once the count is 0, as it rightly does for a
    /// withdrawable one, loses a handed request whose `uncancel` came while it was taken.
    #[test]
    #[should_panic(expected = "was withdrawn")]
    fn loom_cancel_twin_put_back_ignoring_handed_loses_the_request() {
        uncancel_races_the_put_back_of_a_handed_request(true);
    }

    use crate::sync::loom_support::{ABANDON_AS_READ, PLAIN_DONE_READ, SKIP_RECLAIM};

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

    /// A is suspended on B; a third thread cancels A (its `request`'s result is the first
    /// handle's) while B runs its last step (the second) and A's next step begins, whose
    /// select drops its `Task` future, unread. `in_step` runs in that step first.
    fn cancel_while_a_stops_awaiting(
        a: &Arc<ModelTask>,
        b: &Arc<ModelTask>,
        in_step: impl FnOnce(),
    ) -> (thread::JoinHandle<bool>, thread::JoinHandle<()>) {
        let canceller = {
            let a = a.clone();
            thread::spawn(move || request(&a.state, &a.cancel, None, false, true, || {}))
        };
        let b_runner = spawn_last_step(b);
        a_runs_again(a);
        in_step();
        let _ = a
            .cancel
            .end_await(KEY, AwaitEnd::Abandoned, || b.missed_request());
        (canceller, b_runner)
    }

    /// A third thread cancels A while A awaits B; A then stops awaiting B without reading its
    /// outcome (a select's other branch won), racing the request on its way to B and B's
    /// last step. A must have the request exactly once, whatever B did with it: counted over
    /// A's await point right after it stopped awaiting and one after everything settled.
    fn awaiter_stops_awaiting_while_its_cancel_travels(abandon_as_read: bool) {
        crate::sync::loom_support::model_with_fault(&ABANDON_AS_READ, abandon_as_read, || {
            let (a, b) = a_suspended_on_b();
            let (canceller, b_runner) = cancel_while_a_stops_awaiting(&a, &b, || {});
            // Then A reaches an await point.
            let mut delivered = usize::from(a.cancel.take_cancel().is_some());
            assert!(canceller.join().unwrap(), "A never completes");
            b_runner.join().unwrap();
            delivered += usize::from(a.cancel.take_cancel().is_some());

            assert_eq!(delivered, 1, "A must have the request exactly once");
            assert_eq!(a.cancel.cancelling(), 1);
            assert!(a.cancel.nothing_passed_on(), "the request is settled");
        });
    }

    /// A third thread cancels A while A awaits B; A stops awaiting B and then returns a
    /// value in the same step, racing the request on its way to B and back, and B's last
    /// step. For whoever made the request (in the runtime, A's own awaiter passing it on),
    /// `request` returns true only if A has it: A ended cancelled, or finished with it
    /// undelivered, which that awaiter takes back as missed. False: it reached nobody.
    fn awaiter_stops_awaiting_and_completes_while_its_cancel_travels(fault: bool) {
        use crate::sync::loom_support::ACCEPTED_COUNTS_WHEN_AWAITER_DONE as FAULT;
        crate::sync::loom_support::model_with_fault(&FAULT, fault, || {
            let (a, b) = a_suspended_on_b();
            let mut step = None;
            let (canceller, b_runner) =
                cancel_while_a_stops_awaiting(&a, &b, || step = Some(a.cancel.begin_step(false)));
            let step = step.expect("the step began");
            // Then A returns, in the same step.
            let outcome = a.cancel.step_outcome(&step, Ok(()));
            a.cancel.complete(&a.state, outcome.is_err(), false);
            let accepted = canceller.join().unwrap();
            b_runner.join().unwrap();

            let a_has_it = a.cancel.cancelled(&a.state) || a.cancel.missed_request(&a.state);
            assert_eq!(
                accepted, a_has_it,
                "the request is reported as accepted exactly when A has it"
            );
        });
    }

    #[test]
    fn loom_cancel_awaiter_that_completes_reports_a_request_it_never_had() {
        awaiter_stops_awaiting_and_completes_while_its_cancel_travels(false);
    }

    /// Counting a request the target took as delivered, when it came back to an awaiter
    /// already complete, reports true for a request that reaches neither A nor A's awaiter.
    #[test]
    #[should_panic(expected = "exactly when A has it")]
    fn loom_cancel_twin_accepted_counts_when_the_awaiter_is_done() {
        awaiter_stops_awaiting_and_completes_while_its_cancel_travels(true);
    }

    /// A's step polls B's handle once (registering B as awaited) and keeps it, then waits
    /// on a leaf (a read: `cancel_point` forgets B), while a third thread cancels A. The
    /// request must reach A at that leaf or at its next step's, never B: A stopped awaiting
    /// B; and a request left for the next step must have queued that step (the canceller's
    /// wake, during the step or after it). `pass_on_in_step` is the twin's fault.
    fn cancel_during_a_step_that_polled_a_kept_handle(pass_on_in_step: bool) {
        use crate::sync::loom_support::PASS_ON_DURING_A_STEP as FAULT;
        crate::sync::loom_support::model_with_fault(&FAULT, pass_on_in_step, || {
            let (a, b) = both_running();
            let canceller = {
                let a = a.clone();
                thread::spawn(move || {
                    let mut scheduled = false;
                    let accepted = request(&a.state, &a.cancel, None, false, true, || {
                        scheduled = a.state.wake() == WakeAction::Schedule;
                    });
                    (accepted, scheduled)
                })
            };
            // A polls B's handle once; a select's other branch wins; A reads.
            a.cancel
                .set_awaiting(AWAITING_KEY, AwaitTarget::Other(b.clone()));
            let taken_at_the_leaf = a.cancel.take_cancel().is_some();
            a.cancel.clear_awaiting(None);
            // The read is pending; the step ends. A wake during it re-queues A.
            let rescheduled = a.state.end_poll_pending() == IdleAction::Reschedule;
            let (accepted, scheduled) = canceller.join().unwrap();
            assert!(accepted, "A never completes");
            let taken_next = a.cancel.take_cancel().is_some();

            assert_eq!(b.cancel.cancelling(), 0, "the request went to B");
            assert_eq!(
                usize::from(taken_at_the_leaf) + usize::from(taken_next),
                1,
                "A must have the request exactly once"
            );
            assert!(
                !taken_next || rescheduled || scheduled,
                "a request left for A's next step must queue that step"
            );
        });
    }

    #[test]
    fn loom_cancel_during_a_step_waits_for_its_next_await_point() {
        cancel_during_a_step_that_polled_a_kept_handle(false);
    }

    /// Passed on during the step to what A registered in it, the request goes to a handle A
    /// only polled once and kept.
    #[test]
    #[should_panic(expected = "the request went to B")]
    fn loom_cancel_twin_passed_on_during_a_step_reaches_a_kept_handle() {
        cancel_during_a_step_that_polled_a_kept_handle(true);
    }

    /// A is suspended on B through a `Task` handle, which has moved to task Y. A third
    /// thread cancels A while A's next step begins and waits on a leaf (`cancel_point`:
    /// takes a request, forgets B), and while Y polls the handle (`follow_the_future`: A's
    /// await of B ends, abandoned). A must have the request exactly once. `fast_path` is the
    /// twin's fault: Y looks lock-free first, and can miss a request passed on through the
    /// registration after A forgot it.
    fn cancel_while_a_moved_handle_changes_hands(fast_path: bool) {
        use crate::sync::loom_support::MOVED_WITH_FAST_PATH as FAULT;
        crate::sync::loom_support::model_with_fault(&FAULT, fast_path, || {
            let (a, _b) = a_suspended_on_b();
            let canceller = {
                let a = a.clone();
                thread::spawn(move || request(&a.state, &a.cancel, None, false, true, || {}))
            };
            let y = {
                let a = a.clone();
                thread::spawn(move || {
                    // Whether the request came back is what `take_cancel` reads below.
                    let _ = a.cancel.end_await_moved(KEY);
                })
            };
            a_runs_again(&a);
            let mut delivered = usize::from(a.cancel.take_cancel().is_some());
            a.cancel.clear_awaiting(None);
            assert!(canceller.join().unwrap(), "A never completes");
            y.join().unwrap();
            delivered += usize::from(a.cancel.take_cancel().is_some());

            assert_eq!(delivered, 1, "A must have the request exactly once");
            assert!(a.cancel.nothing_passed_on(), "the request is settled");
        });
    }

    #[test]
    fn loom_cancel_moved_handle_gives_back_a_request_passed_on_through_it() {
        cancel_while_a_moved_handle_changes_hands(false);
    }

    #[test]
    #[should_panic(expected = "exactly once")]
    fn loom_cancel_twin_moved_handle_with_a_lock_free_look_loses_the_request() {
        cancel_while_a_moved_handle_changes_hands(true);
    }

    #[test]
    fn loom_cancel_awaiter_that_stops_awaiting_gets_its_request_back() {
        awaiter_stops_awaiting_while_its_cancel_travels(false);
    }

    /// Taken as a read outcome, a stopped await loses every request the target accepted:
    /// the awaiter never sees the target's outcome that carried it.
    #[test]
    #[should_panic(expected = "exactly once")]
    fn loom_cancel_twin_stopped_await_taken_as_read_loses_the_request() {
        awaiter_stops_awaiting_while_its_cancel_travels(true);
    }
}
