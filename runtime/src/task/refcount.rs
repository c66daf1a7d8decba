//! A task allocation's reference count (see `raw::TaskPtr`).
//!
//! `Arc` starts every allocation at one owner, so a spawn that hands the new task to its join
//! handle, the registry and a run queue paid two increments before anyone else could see it.
//! This count starts at the number of owners the spawner hands out, so those are free.
//!
//! The orderings are `Arc`'s: an increment needs none (whoever increments already owns a count,
//! so the allocation cannot go away under it); a decrement releases the owner's writes, and the
//! last one acquires them all before the allocation is torn down.

use braid_bridge::sync::atomic::{fence, AtomicUsize, Ordering};

/// Counts beyond this abort the process rather than risk wrapping round to a free while
/// owners remain (as `Arc` does: only a leak of `mem::forget`ed owners gets there).
const MAX_REFS: usize = isize::MAX as usize;

/// The number of owners of one task allocation.
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

#[cfg(all(test, loom))]
mod loom_tests {
    use super::RefCount;
    use braid_bridge::sync::atomic::{AtomicUsize, Ordering};
    use braid_bridge::sync::Arc;
    use loom::thread;

    /// A task allocation reduced to what the count protects: each owner writes its own field
    /// (as a runner writes the stage) before it lets go, and the last owner, which tears the
    /// allocation down, reads them all. The writes are relaxed, so only the count's
    /// release-decrement and acquire-fence can make them visible: loom shows the last owner a
    /// stale zero in some interleaving if either ordering is weakened.
    struct Shared {
        count: RefCount,
        written: [AtomicUsize; 3],
    }

    /// Three owners preset at creation (the spawner's hand-outs); one of them clones a fourth
    /// on its thread and drops it again. Exactly one owner is told it was last, and it sees
    /// every owner's write.
    #[test]
    fn loom_the_last_owner_sees_every_owners_writes() {
        loom::model(|| {
            let shared = Arc::new(Shared {
                count: RefCount::new(3),
                written: [
                    AtomicUsize::new(0),
                    AtomicUsize::new(0),
                    AtomicUsize::new(0),
                ],
            });
            let last_sees_all = |shared: &Shared| {
                for field in &shared.written {
                    assert_eq!(
                        field.load(Ordering::Relaxed),
                        1,
                        "a write the last owner missed"
                    );
                }
            };
            let owner = |index: usize, clones: bool| {
                let shared = shared.clone();
                move || -> bool {
                    if clones {
                        shared.count.increment();
                        assert!(!shared.count.decrement(), "the cloner still holds its own");
                    }
                    shared.written[index].store(1, Ordering::Relaxed);
                    let last = shared.count.decrement();
                    if last {
                        last_sees_all(&shared);
                    }
                    last
                }
            };
            let a = thread::spawn(owner(0, true));
            let b = thread::spawn(owner(1, false));
            let here = owner(2, false)();
            let lasts = [a.join().unwrap(), b.join().unwrap(), here];
            assert_eq!(lasts.iter().filter(|&&last| last).count(), 1);
        });
    }
}
