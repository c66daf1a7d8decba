//! asyncio's synchronisation primitives for tasks on any loop of a runtime: `Lock`, `Event`,
//! `Condition`, `Semaphore`, `BoundedSemaphore`, `Barrier`, and the queues.
//!
//! Every primitive keeps its state and its waiters under one mutex, and follows asyncio's
//! protocol: a releaser *notifies* the first waiter in line (or, for a semaphore, hands it
//! the permit), and the waiter completes when its task next polls it. A waiter that is
//! cancelled (or dropped) after being notified but before it ran passes the notification on
//! to the next in line, so nothing (a lock, a permit, an item's wake-up) is ever lost; one
//! cancelled before it was notified simply leaves the line.
//!
//! The parts that decide "who is notified, who passes on" are written against [`WaitQueue`]
//! with explicit inputs (a waker, "was I cancelled"), so that the loom models at the bottom
//! of this module can drive them from several threads without a runtime.

mod barrier;
mod condition;
mod event;
mod lock;
mod queue;
mod semaphore;

pub use barrier::{Barrier, BarrierWait, BrokenBarrier};
pub use condition::{Condition, ConditionAcquire, ConditionGuard, ConditionWait, ConditionWaitFor};
pub use event::{Event, EventWait};
pub use lock::{Lock, LockAcquire, LockGuard};
pub use queue::{
    LifoQueue, PriorityQueue, Queue, QueueEmpty, QueueFull, QueueGet, QueueJoin, QueuePut,
    QueueShutDown,
};
pub use semaphore::{BoundedSemaphore, Semaphore, SemaphoreAcquire, SemaphorePermit};

use std::collections::VecDeque;
use std::task::Waker;

/// A FIFO line of waiters. Lives inside a primitive's mutex; every method is called with it
/// held, and the wakers it returns are woken after the mutex is released.
#[derive(Default)]
pub(crate) struct WaitQueue {
    /// In line order, which is also id order: ids only grow, and entries leave from anywhere
    /// without reordering the rest, so an id is found by binary search.
    entries: VecDeque<Entry>,
    next_id: u64,
    /// How many entries are notified, kept so that `notified_count` need not walk the line.
    notified: usize,
    /// Every entry before this index is notified. Notified waiters gather at the front of
    /// the line (a waiter is notified in line order and leaves once it has run), so a search
    /// for the first one not notified, or for a waiter's rank, starts here instead of at the
    /// front: a burst of wake-ups does not walk the ones it has already made.
    notified_prefix: usize,
}

struct Entry {
    id: u64,
    notified: bool,
    waker: Waker,
}

impl WaitQueue {
    /// Joins the line at the back; the returned id names this waiter from now on.
    pub(crate) fn push(&mut self, waker: &Waker) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.entries.push_back(Entry {
            id,
            notified: false,
            waker: waker.clone(),
        });
        id
    }

    fn position(&self, id: u64) -> Option<usize> {
        self.entries.binary_search_by_key(&id, |e| e.id).ok()
    }

    fn find(&mut self, id: u64) -> Option<&mut Entry> {
        let at = self.position(id)?;
        self.entries.get_mut(at)
    }

    /// True if waiter `id` was notified; else refreshes its waker.
    pub(crate) fn check(&mut self, id: u64, waker: &Waker) -> bool {
        match self.find(id) {
            Some(entry) if entry.notified => true,
            Some(entry) => {
                if !entry.waker.will_wake(waker) {
                    entry.waker = waker.clone();
                }
                false
            }
            // Not in line any more: only `remove` takes entries out, and the owner calls it.
            None => true,
        }
    }

    /// Leaves the line; true if the waiter had been notified.
    pub(crate) fn remove(&mut self, id: u64) -> bool {
        let Some(at) = self.position(id) else {
            return false;
        };
        let notified = self.entries.remove(at).is_some_and(|e| e.notified);
        if at < self.notified_prefix {
            self.notified_prefix -= 1;
        }
        if notified {
            self.notified -= 1;
        }
        self.check_counts();
        notified
    }

    /// Notifies the first waiter not yet notified; its waker, to wake after unlocking.
    pub(crate) fn notify_one(&mut self) -> Option<Waker> {
        let at = (self.notified_prefix..self.entries.len()).find(|&i| !self.entries[i].notified)?;
        let entry = &mut self.entries[at];
        entry.notified = true;
        let waker = entry.waker.clone();
        self.notified += 1;
        // The search saw every entry before `at` notified.
        self.notified_prefix = at + 1;
        while self
            .entries
            .get(self.notified_prefix)
            .is_some_and(|e| e.notified)
        {
            self.notified_prefix += 1;
        }
        self.check_counts();
        Some(waker)
    }

    /// Notifies up to `n` waiters in line order, pushing their wakers to `wake`.
    pub(crate) fn notify(&mut self, n: usize, wake: &mut Vec<Waker>) {
        for _ in 0..n {
            match self.notify_one() {
                Some(waker) => wake.push(waker),
                None => break,
            }
        }
    }

    /// Wakes every waiter (notified or not) so that each re-checks its condition.
    pub(crate) fn wake_all(&mut self, wake: &mut Vec<Waker>) {
        for entry in &mut self.entries {
            entry.notified = true;
            wake.push(entry.waker.clone());
        }
        self.notified = self.entries.len();
        self.notified_prefix = self.entries.len();
    }

    /// How many waiters were notified and have not left the line yet.
    pub(crate) fn notified_count(&self) -> usize {
        self.notified
    }

    /// Debug builds only, and short lines only (a walk per step would make long ones
    /// quadratic): the kept counts agree with the line.
    fn check_counts(&self) {
        if !cfg!(debug_assertions) || self.entries.len() > 1_024 {
            return;
        }
        debug_assert_eq!(
            self.notified,
            self.entries.iter().filter(|e| e.notified).count(),
            "the count of notified waiters drifted"
        );
        debug_assert!(
            self.entries
                .range(..self.notified_prefix)
                .all(|e| e.notified),
            "a waiter in the notified prefix is not notified"
        );
    }

    /// How many notified waiters stand before waiter `id` in line, if `id` is in line and
    /// notified itself.
    pub(crate) fn notified_rank(&self, id: u64) -> Option<usize> {
        let at = self.position(id)?;
        if !self.entries[at].notified {
            return None;
        }
        let prefix = self.notified_prefix.min(at);
        let beyond = self.entries.range(prefix..at).filter(|e| e.notified);
        Some(prefix + beyond.count())
    }

    /// Takes back the notification of waiter `id` (it stays in line, in its place).
    pub(crate) fn unnotify(&mut self, id: u64) {
        let Some(at) = self.position(id) else {
            return;
        };
        let entry = &mut self.entries[at];
        if entry.notified {
            entry.notified = false;
            self.notified -= 1;
            self.notified_prefix = self.notified_prefix.min(at);
        }
        self.check_counts();
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// False only in the loom twins that break the pass-on of a notified waiter that leaves, to
/// show the models catch the lost wake-up that follows.
#[inline]
pub(crate) fn pass_on_enabled() -> bool {
    #[cfg(loom)]
    {
        !loom_support::SKIP_PASS_ON.load(std::sync::atomic::Ordering::SeqCst)
    }
    #[cfg(not(loom))]
    {
        true
    }
}

/// Wakes what a state change collected, after its mutex was released.
pub(crate) fn wake_all(wakers: impl IntoIterator<Item = Waker>) {
    for waker in wakers {
        waker.wake();
    }
}

/// What the primitives' loom models share: a waker that counts its wakes, and the fault
/// switch of their `#[should_panic]` twins.
#[cfg(loom)]
pub(crate) mod loom_support {
    use std::sync::atomic::AtomicBool;
    #[cfg(test)]
    use std::sync::atomic::Ordering;
    #[cfg(test)]
    use std::sync::Arc;
    #[cfg(test)]
    use std::task::{Wake, Waker};

    /// Set by a twin for the length of its model: notified waiters that leave pass nothing on.
    pub(crate) static SKIP_PASS_ON: AtomicBool = AtomicBool::new(false);

    /// Set by a twin for the length of its model: an awaiter never takes back a cancel that
    /// reached its awaited task too late (`task::cancel`).
    pub(crate) static SKIP_RECLAIM: AtomicBool = AtomicBool::new(false);

    /// Set by a twin for the length of its model: a future that stops awaiting without
    /// reading its target's outcome is taken as having read it, so a request passed on
    /// through it does not come back (`task::cancel`).
    pub(crate) static ABANDON_AS_READ: AtomicBool = AtomicBool::new(false);

    /// Set by a twin for the length of its model: a request passed on that the target
    /// accepted but that came back to an awaiter already complete counts as delivered
    /// (`task::cancel`).
    pub(crate) static ACCEPTED_COUNTS_WHEN_AWAITER_DONE: AtomicBool = AtomicBool::new(false);

    /// Set by a twin for the length of its model: a cancel request reads the target's
    /// `done` with a plain load, not the ordering RMW (`task::cancel`).
    pub(crate) static PLAIN_DONE_READ: AtomicBool = AtomicBool::new(false);

    /// Set by a twin for the length of its model: a cancel request on a task in a step is
    /// passed on to what the task registered earlier, as if it were suspended there
    /// (`task::cancel`).
    pub(crate) static PASS_ON_DURING_A_STEP: AtomicBool = AtomicBool::new(false);

    /// Set by a twin for the length of its model: a `Task` handle moved to another task ends
    /// the first task's await with the lock-free look first (`task::cancel`).
    pub(crate) static MOVED_WITH_FAST_PATH: AtomicBool = AtomicBool::new(false);

    /// Set by a twin for the length of its model: a dropped `task_group` future withdraws
    /// its cancel of the parent even while a child is still making it (`combinators::group`).
    pub(crate) static GROUP_WITHDRAWS_IN_FLIGHT: AtomicBool = AtomicBool::new(false);

    /// A waker that remembers it was woken (a loom atomic: the wake is part of the protocol).
    /// Only the models use it; the switch above is also read by the code under test.
    #[cfg(test)]
    pub(crate) struct Flag(loom::sync::atomic::AtomicUsize);

    #[cfg(test)]
    impl Flag {
        pub(crate) fn new() -> (Arc<Flag>, Waker) {
            let flag = Arc::new(Flag(loom::sync::atomic::AtomicUsize::new(0)));
            let waker = Waker::from(flag.clone());
            (flag, waker)
        }

        pub(crate) fn woken(&self) -> bool {
            self.woken_count() > 0
        }

        pub(crate) fn woken_count(&self) -> usize {
            self.0.load(loom::sync::atomic::Ordering::SeqCst)
        }
    }

    #[cfg(test)]
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, loom::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Runs `f` as a loom model, with the pass-on broken if `break_pass_on`. Models that use
    /// a switch run one at a time.
    #[cfg(test)]
    pub(crate) fn model<F>(break_pass_on: bool, f: F)
    where
        F: Fn() + Sync + Send + 'static,
    {
        model_with_fault(&SKIP_PASS_ON, break_pass_on, f);
    }

    /// Runs `f` as a loom model with the fault switch `switch` set to `on` for its length
    /// (and cleared after, even if the model panics). One such model runs at a time.
    #[cfg(test)]
    pub(crate) fn model_with_fault<F>(switch: &'static AtomicBool, on: bool, f: F)
    where
        F: Fn() + Sync + Send + 'static,
    {
        static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        struct Reset(&'static AtomicBool);
        impl Drop for Reset {
            fn drop(&mut self) {
                self.0.store(false, Ordering::SeqCst);
            }
        }
        switch.store(on, Ordering::SeqCst);
        let _reset = Reset(switch);
        loom::model(f);
    }
}

#[cfg(all(test, not(loom)))]
mod wait_queue_tests {
    use super::WaitQueue;
    use std::task::Waker;

    /// Random pushes, notifies, departures, take-backs and wake-alls, checked after each step
    /// against a plain list: the kept count, the notified prefix (the debug checks inside)
    /// and every waiter's rank among the notified agree with a walk of the line.
    #[test]
    fn kept_counts_and_ranks_match_a_walk_of_the_line() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |bound: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % bound as u64) as usize
        };
        let waker = Waker::noop();
        let mut line = WaitQueue::default();
        // (id, notified) in line order: the model.
        let mut model: Vec<(u64, bool)> = Vec::new();
        for step in 0..6_000 {
            match next(10) {
                0..=2 => model.push((line.push(waker), false)),
                3..=4 => {
                    if line.notify_one().is_some() {
                        let first = model.iter_mut().find(|(_, n)| !n).expect("one to notify");
                        first.1 = true;
                    } else {
                        assert!(model.iter().all(|(_, n)| *n));
                    }
                }
                5..=7 if !model.is_empty() => {
                    let (id, notified) = model.remove(next(model.len()));
                    assert_eq!(line.remove(id), notified);
                }
                8 if !model.is_empty() => {
                    let at = next(model.len());
                    line.unnotify(model[at].0);
                    model[at].1 = false;
                }
                9 if next(20) == 0 => {
                    let mut woken = Vec::new();
                    line.wake_all(&mut woken);
                    assert_eq!(woken.len(), model.len());
                    model.iter_mut().for_each(|entry| entry.1 = true);
                }
                _ => {}
            }
            assert_eq!(
                line.notified_count(),
                model.iter().filter(|(_, n)| *n).count()
            );
            if step % 16 != 0 {
                continue;
            }
            let mut rank = 0;
            for &(id, notified) in &model {
                if notified {
                    assert_eq!(line.notified_rank(id), Some(rank));
                    rank += 1;
                } else {
                    assert_eq!(line.notified_rank(id), None);
                }
            }
        }
    }
}
