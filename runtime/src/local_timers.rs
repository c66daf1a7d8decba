//! A loop's `call_later`/`call_at` timers: a min-heap of deadlines over a slab of callbacks.
//!
//! The callbacks live in the slab, not in the heap, so that a cancel can take one out (and
//! drop what it captured) at once, as asyncio's `TimerHandle.cancel()` drops its callback. A
//! binary heap cannot remove from its middle; what the cancel leaves in it is a small stale
//! entry (deadline, sequence number, slot), skipped when it surfaces and purged when stale
//! entries are many. The store is the loop thread's alone (the callbacks are `!Send`): a
//! cancel from another thread is posted to the loop, which calls [`LocalTimers::remove`].

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Stale entries a heap keeps before it purges them (when they are also more than half of
/// it: asyncio's rule, which keeps a purge's cost proportional to what it frees).
const PURGE_MIN: usize = 64;

/// Names one scheduled timer: its slot and its sequence number. The number tells a slot's
/// occupants apart, so a late cancel of a timer that already fired cannot hit the timer that
/// took its slot since.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimerKey {
    slot: u32,
    seq: u64,
}

/// A deadline in the heap; its callback waits in `slots[slot]` while that holds `seq`.
struct Entry {
    when: Instant,
    key: TimerKey,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.when, self.key.seq) == (other.when, other.key.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    // Reversed for a min-heap; equal deadlines fire in the order they were scheduled.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.when, other.key.seq).cmp(&(self.when, self.key.seq))
    }
}

/// A slot of the slab: a scheduled timer's callback, or free.
enum Slot<T> {
    /// The callback of the timer scheduled as number `seq`.
    Occupied { seq: u64, callback: T },
    /// Free; the next free slot, if any (the free list threads through the vacant slots).
    Vacant { next_free: Option<u32> },
}

/// The timers of one loop. `T` is the callback (a `ReadyCallback` in the loop).
///
/// Every method returns the callbacks it takes out instead of dropping them: their
/// destructors are the user's code, which may schedule more timers, so the caller drops
/// them once this store is no longer borrowed.
pub(crate) struct LocalTimers<T> {
    heap: BinaryHeap<Entry>,
    slots: Vec<Slot<T>>,
    first_free: Option<u32>,
    /// Heap entries whose callback a cancel took out.
    stale: usize,
    /// Callbacks in the slab.
    len: usize,
    next_seq: u64,
}

impl<T> LocalTimers<T> {
    /// No timers.
    pub(crate) fn new() -> LocalTimers<T> {
        LocalTimers {
            heap: BinaryHeap::new(),
            slots: Vec::new(),
            first_free: None,
            stale: 0,
            len: 0,
            next_seq: 0,
        }
    }

    /// Schedules `callback` at `when`.
    pub(crate) fn insert(&mut self, when: Instant, callback: T) -> TimerKey {
        self.next_seq += 1;
        let seq = self.next_seq;
        let occupied = Slot::Occupied { seq, callback };
        let slot = match self.first_free {
            Some(slot) => {
                let old = std::mem::replace(&mut self.slots[slot as usize], occupied);
                let Slot::Vacant { next_free } = old else {
                    unreachable!("the free list holds vacant slots only")
                };
                self.first_free = next_free;
                slot
            }
            None => {
                let slot = u32::try_from(self.slots.len())
                    .expect("fewer than 2^32 timers are pending on one loop");
                self.slots.push(occupied);
                slot
            }
        };
        let key = TimerKey { slot, seq };
        self.heap.push(Entry { when, key });
        self.len += 1;
        key
    }

    /// Takes out the callback of the timer `key` if it is still scheduled (a cancel). Its
    /// heap entry stays, stale, until it surfaces or a purge.
    pub(crate) fn remove(&mut self, key: TimerKey) -> Option<T> {
        let callback = self.take(key)?;
        self.stale += 1;
        Some(callback)
    }

    /// Takes the callback out of slot `key.slot` if it is `key`'s.
    fn take(&mut self, key: TimerKey) -> Option<T> {
        let slot = self.slots.get_mut(key.slot as usize)?;
        if !matches!(slot, Slot::Occupied { seq, .. } if *seq == key.seq) {
            return None;
        }
        let vacant = Slot::Vacant {
            next_free: self.first_free,
        };
        let Slot::Occupied { callback, .. } = std::mem::replace(slot, vacant) else {
            unreachable!("checked above")
        };
        self.first_free = Some(key.slot);
        self.len -= 1;
        Some(callback)
    }

    /// Whether the entry's callback is still in the slab.
    fn is_live(&self, entry: &Entry) -> bool {
        matches!(
            self.slots.get(entry.key.slot as usize),
            Some(Slot::Occupied { seq, .. }) if *seq == entry.key.seq
        )
    }

    /// Drops stale entries from the top of the heap.
    fn skip_stale(&mut self) {
        while let Some(top) = self.heap.peek() {
            if self.is_live(top) {
                return;
            }
            self.heap.pop();
            self.stale -= 1;
        }
    }

    /// The earliest scheduled timer's deadline and callback.
    fn peek_live(&mut self) -> Option<(Instant, &T)> {
        self.skip_stale();
        let top = self.heap.peek()?;
        match &self.slots[top.key.slot as usize] {
            Slot::Occupied { callback, .. } => Some((top.when, callback)),
            Slot::Vacant { .. } => unreachable!("skip_stale leaves a live entry on top"),
        }
    }

    /// Takes out the earliest timer if `pred` holds for its deadline and callback.
    pub(crate) fn pop_if(&mut self, pred: impl FnOnce(Instant, &T) -> bool) -> Option<T> {
        let (when, callback) = self.peek_live()?;
        if !pred(when, callback) {
            return None;
        }
        let entry = self.heap.pop().expect("peek_live saw it");
        Some(self.take(entry.key).expect("peek_live saw it live"))
    }

    /// When the earliest scheduled timer falls due.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        self.peek_live().map(|(when, _)| when)
    }

    /// How many timers are scheduled (cancelled ones taken out by [`remove`](Self::remove)
    /// are not).
    #[cfg(all(test, not(loom)))]
    fn len(&self) -> usize {
        self.len
    }

    /// True when no timer is scheduled.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops the stale entries once they are many and more than half of the heap, so that a
    /// loop that schedules and cancels far-off timers in a cycle keeps a heap of the size of
    /// what is really scheduled.
    pub(crate) fn purge_if_stale(&mut self) {
        if self.stale < PURGE_MIN || self.stale * 2 <= self.heap.len() {
            return;
        }
        let mut heap = std::mem::take(&mut self.heap).into_vec();
        heap.retain(|entry| self.is_live(entry));
        self.heap = BinaryHeap::from(heap);
        self.stale = 0;
    }

    /// Takes every callback out, in no particular order (a loop that closes).
    pub(crate) fn drain(&mut self) -> Vec<T> {
        self.heap.clear();
        self.stale = 0;
        self.first_free = None;
        self.len = 0;
        std::mem::take(&mut self.slots)
            .into_iter()
            .filter_map(|slot| match slot {
                Slot::Occupied { callback, .. } => Some(callback),
                Slot::Vacant { .. } => None,
            })
            .collect()
    }

    /// Heap entries, stale ones included (tests of the purge).
    #[cfg(all(test, not(loom)))]
    fn heap_len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::LocalTimers;
    use std::rc::Rc;
    use std::time::{Duration, Instant};

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn timers_come_out_by_deadline_then_by_scheduling_order() {
        let base = Instant::now();
        let mut timers = LocalTimers::new();
        timers.insert(at(base, 30), "c");
        timers.insert(at(base, 10), "a1");
        timers.insert(at(base, 20), "b");
        timers.insert(at(base, 10), "a2");
        let mut out = Vec::new();
        while let Some(cb) = timers.pop_if(|_, _| true) {
            out.push(cb);
        }
        assert_eq!(out, ["a1", "a2", "b", "c"]);
        assert!(timers.is_empty());
    }

    #[test]
    fn pop_if_leaves_a_timer_that_is_not_due() {
        let base = Instant::now();
        let mut timers = LocalTimers::new();
        timers.insert(at(base, 10), 1);
        timers.insert(at(base, 20), 2);
        let due_by = at(base, 15);
        assert_eq!(timers.pop_if(|when, _| when <= due_by), Some(1));
        assert_eq!(timers.pop_if(|when, _| when <= due_by), None);
        assert_eq!(timers.next_deadline(), Some(at(base, 20)));
    }

    #[test]
    fn a_removed_timer_gives_up_its_callback_at_once_and_never_fires() {
        let base = Instant::now();
        let mut timers = LocalTimers::new();
        let captured = Rc::new(());
        let key = timers.insert(at(base, 10), captured.clone());
        timers.insert(at(base, 20), Rc::new(()));
        drop(timers.remove(key).expect("scheduled"));
        assert_eq!(
            Rc::strong_count(&captured),
            1,
            "the callback was dropped at the remove"
        );
        assert_eq!(timers.len(), 1);
        assert_eq!(timers.next_deadline(), Some(at(base, 20)));
        assert!(timers.pop_if(|_, _| true).is_some());
        assert!(timers.pop_if(|_, _| true).is_none());
    }

    #[test]
    fn a_late_remove_cannot_take_the_timer_that_reused_the_slot() {
        let base = Instant::now();
        let mut timers = LocalTimers::new();
        let fired = timers.insert(at(base, 10), "fired");
        assert_eq!(timers.pop_if(|_, _| true), Some("fired"));
        let next = timers.insert(at(base, 20), "next");
        assert_eq!(
            timers.remove(fired),
            None,
            "the first timer's cancel came too late"
        );
        assert_eq!(timers.remove(next), Some("next"));
        assert_eq!(timers.remove(next), None, "a second cancel takes nothing");
    }

    #[test]
    fn stale_entries_are_purged_once_they_are_most_of_the_heap() {
        let base = Instant::now();
        let mut timers = LocalTimers::new();
        let keep: Vec<_> = (0..10)
            .map(|i| timers.insert(at(base, 1000 + i), i))
            .collect();
        let cancel: Vec<_> = (0..100)
            .map(|i| timers.insert(at(base, 2000 + i), i))
            .collect();
        for key in cancel {
            assert!(timers.remove(key).is_some());
        }
        assert_eq!(timers.heap_len(), 110, "removing leaves the entries");
        timers.purge_if_stale();
        assert_eq!(timers.heap_len(), 10);
        assert_eq!(timers.len(), 10);
        for key in keep {
            assert!(
                timers.remove(key).is_some(),
                "the purge kept the live timers"
            );
        }
    }

    #[test]
    fn few_stale_entries_wait_for_the_top_of_the_heap() {
        let base = Instant::now();
        let mut timers = LocalTimers::new();
        let first = timers.insert(at(base, 10), 1);
        timers.insert(at(base, 20), 2);
        timers.remove(first);
        timers.purge_if_stale();
        assert_eq!(timers.heap_len(), 2, "one stale entry is not worth a purge");
        assert_eq!(timers.next_deadline(), Some(at(base, 20)));
        assert_eq!(timers.heap_len(), 1, "surfacing, it was dropped");
    }

    #[test]
    fn drain_takes_every_scheduled_callback() {
        let base = Instant::now();
        let mut timers = LocalTimers::new();
        let a = timers.insert(at(base, 10), 1);
        timers.insert(at(base, 20), 2);
        timers.insert(at(base, 5), 3);
        timers.remove(a);
        let mut drained = timers.drain();
        drained.sort();
        assert_eq!(drained, [2, 3]);
        assert!(timers.is_empty());
        assert_eq!(timers.next_deadline(), None);
        timers.insert(at(base, 1), 4);
        assert_eq!(timers.pop_if(|_, _| true), Some(4), "usable after a drain");
    }
}
