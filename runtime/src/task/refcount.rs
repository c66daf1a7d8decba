//! The reference count of a task allocation (see `raw::TaskPtr`) or of a
//! `call_soon_threadsafe` callback's cell (`raw::QueuedCallback`).
//!
//! `Arc` starts every allocation at one owner, so a spawn that hands the new task to its join
//! handle, the registry and a run queue paid two increments before anyone else could see it.
//! This count starts at the number of owners the spawner hands out, so those are free.
//!
//! The orderings are `Arc`'s: an increment needs none (whoever increments already owns a count,
//! so the allocation cannot go away under it); a decrement releases the owner's writes, and the
//! last one acquires them all before the allocation is torn down. The loom model is in `raw`
//! (`loom_the_last_owner_alone_tears_down_after_every_owners_accesses`), where the `unsafe`
//! its cells need may live.

use braid_bridge::sync::atomic::{fence, AtomicUsize, Ordering};

/// Counts beyond this abort the process rather than risk wrapping round to a free while
/// owners remain (as `Arc` does: only a leak of `mem::forget`ed owners gets there).
const MAX_REFS: usize = isize::MAX as usize;

/// The number of owners of one task allocation or callback cell.
pub(crate) struct RefCount(AtomicUsize);

impl RefCount {
    /// A count of `owners`, all held by the creating thread.
    pub(crate) fn new(owners: usize) -> RefCount {
        debug_assert!(owners > 0, "an allocation without an owner would leak");
        RefCount(AtomicUsize::new(owners))
    }

    /// One more owner. The caller is an owner already.
    #[inline]
    pub(crate) fn increment(&self) {
        let old = self.0.fetch_add(1, Ordering::Relaxed);
        if old > MAX_REFS {
            std::process::abort();
        }
    }

    /// One owner less; true if it was the last, when the caller tears the allocation down
    /// (every other owner's accesses happen-before it returns).
    #[inline]
    #[must_use = "the last owner frees the allocation"]
    pub(crate) fn decrement(&self) -> bool {
        if self.0.fetch_sub(1, Ordering::Release) != 1 {
            return false;
        }
        fence(Ordering::Acquire);
        true
    }

    /// The current count (for tests).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::RefCount;

    #[test]
    fn the_last_of_the_preset_owners_is_told_it_was_last() {
        let count = RefCount::new(3);
        count.increment();
        assert_eq!(count.get(), 4);
        assert!(!count.decrement());
        assert!(!count.decrement());
        assert!(!count.decrement());
        assert!(count.decrement(), "the fourth owner of four is the last");
    }
}
