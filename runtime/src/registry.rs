//! The registry of a runtime's unfinished tasks, for `all_tasks()` and shutdown.
//!
//! Each task registers in the shard of the loop that spawned it, where only that loop
//! inserts: an uncontended lock on a line already in its cache. Tasks spawned off the loops
//! (from a foreign thread, or a host loop inside `run_until_complete`) register in one
//! *shared* shard.
//!
//! A task that finishes on the thread that owns its shard leaves at once. One that finishes
//! elsewhere leaves its slot in the shard's *graveyard*, and the slot (with the registry's
//! reference to the task) is freed later, in one batch. A worker loop does not even take
//! the graveyard's lock per task: it collects such slots in its own [`Outbox`] (a plain
//! list per shard, no lock) and hands them over with [`Registry::flush`] once per loop
//! iteration, before it sleeps and when it exits, one lock per shard. Both loops pushing
//! every finished foreign-spawned task into the shared graveyard, whose length the spawner
//! reads at every insert, was 15% of `spawn_many_remote`'s samples, in cache misses
//! (`benchmarks/NOTES.md`).
//!
//! Graveyards are freed:
//!
//! - by whoever next inserts into the shard, once [`SWEEP_BATCH`] slots wait;
//! - a loop's own shard by that loop once per iteration, and the shared shard by a loop
//!   before it goes to sleep.
//!
//! Sweeping from the inserting side matters for speed. A thread that spawns many tasks
//! allocates them all; its siblings (or, for the shared shard, the loops) finish many of them.
//! With glibc's allocator every free beyond the freeing thread's small cache takes the
//! allocating thread's arena lock, which the spawner holds for its own allocations: 0.7 futex
//! calls per task in `spawn_many_remote`; and in `spawn_many_local` a fifth of the samples in
//! that lock's futex calls, the sibling loop sweeping the spawning loop's full graveyard
//! while the spawner (one task, one long step) never came round to its own
//! once-per-iteration sweep. Freed in batches by the spawner, the memory goes back to the
//! thread that allocates next, uncontended (see `benchmarks/NOTES.md`); since task cells have
//! their own per-thread free lists (`task::raw`), most of it goes straight to the spawner's
//! list and its next spawns, without the allocator.
//!
//! Any shard's graveyard that reaches [`GRAVEYARD_MAX`] is swept by whoever fills it, so a
//! loop asleep for long, or a spawner that stopped, cannot pile up finished tasks' memory.
//! A finished task may so stay in a slab a little while: readers skip finished tasks.

use braid_bridge::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use braid_bridge::sync::Mutex;
use crossbeam_utils::CachePadded;

/// What the registry needs of a task: where it keeps its slot, and whether it finished.
pub(crate) trait Registrant: Clone {
    /// The task's packed shard and slot, [`UNREGISTERED`] while unregistered. Its address also
    /// identifies the task.
    fn registry_slot(&self) -> &AtomicUsize;
    /// True once the task has finished.
    fn finished(&self) -> bool;
    /// The order `snapshot` lists tasks in (creation order).
    fn order(&self) -> u64;
}

/// A graveyard this long is swept by whoever adds to it.
const GRAVEYARD_MAX: usize = 1024;

/// An outbox this long is flushed at once (a backstop: loops flush every iteration, but one
/// iteration's callbacks, timers and tasks can finish any number of tasks).
const OUTBOX_MAX: usize = 256;

/// Slots waiting in a shard's graveyard before an insert into that shard sweeps them. One
/// under loom, so that the model reaches the sweep.
const SWEEP_BATCH: usize = if cfg!(loom) { 1 } else { 64 };

/// `registry_slot` packs the shard above the slot.
const SLOT_BITS: u32 = 48;

/// The slot word of a task that is not registered.
pub(crate) const UNREGISTERED: usize = usize::MAX;

/// Slots of other shards' tasks that a worker loop finished, waiting for
/// [`Registry::flush`] (see the module docs). One list per shard, so that a flush hands each
/// shard its slots as they are: the single list this replaced was sorted by shard and copied
/// into a new vector at every flush, the sort alone 3% of a loop's samples in
/// `spawn_many_remote` (`benchmarks/NOTES.md`).
pub(crate) struct Outbox {
    /// Indexed by shard; grown to cover a shard's index when a slot of it first arrives.
    /// Each list keeps its capacity across flushes, so a loop's outbox may hold up to
    /// [`OUTBOX_MAX`] words per shard it has finished tasks of.
    by_shard: Vec<Vec<usize>>,
    /// Slots held, over all shards.
    len: usize,
}

impl Outbox {
    /// An empty outbox; it allocates when the first slot arrives.
    pub(crate) const fn new() -> Outbox {
        Outbox {
            by_shard: Vec::new(),
            len: 0,
        }
    }

    /// Slots held, over all shards.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// True if no slot waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn push(&mut self, shard_id: usize, slot: usize) {
        if shard_id >= self.by_shard.len() {
            self.by_shard.resize_with(shard_id + 1, Vec::new);
        }
        self.by_shard[shard_id].push(slot);
        self.len += 1;
    }
}

/// One shard's tasks.
struct Slab<P> {
    slots: Vec<Option<P>>,
    free: Vec<usize>,
}

impl<P> Slab<P> {
    fn take(&mut self, slot: usize) -> Option<P> {
        let task = self.slots.get_mut(slot)?.take()?;
        self.free.push(slot);
        Some(task)
    }
}

/// One loop's share of the registry, or the shared shard.
struct Shard<P> {
    slab: Mutex<Slab<P>>,
    /// Slots of this shard's tasks that finished on another thread, freed in one batch: a
    /// cross-core completion costs a push here, not a contended slab lock. On a line of its
    /// own (with its length): other threads write it while the owner inserts.
    graveyard: CachePadded<Graveyard>,
}

struct Graveyard {
    slots: Mutex<Vec<usize>>,
    /// The number of slots, read without the lock to decide whether to sweep.
    len: AtomicUsize,
}

/// Every unfinished task of a runtime (see the module docs).
pub(crate) struct Registry<P> {
    /// One shard per loop, then the shared shard.
    shards: Box<[CachePadded<Shard<P>>]>,
    closed: AtomicBool,
}

impl<P: Registrant> Registry<P> {
    /// A registry for `loops` worker loops.
    pub(crate) fn new(loops: usize) -> Registry<P> {
        Registry {
            shards: (0..=loops)
                .map(|_| {
                    CachePadded::new(Shard {
                        slab: Mutex::new(Slab {
                            slots: Vec::new(),
                            free: Vec::new(),
                        }),
                        graveyard: CachePadded::new(Graveyard {
                            slots: Mutex::new(Vec::new()),
                            len: AtomicUsize::new(0),
                        }),
                    })
                })
                .collect(),
            closed: AtomicBool::new(false),
        }
    }

    /// The shard of tasks spawned off the worker loops.
    pub(crate) fn shared_shard(&self) -> usize {
        self.shards.len() - 1
    }

    /// Adds a task, in the shard of `here` (the current worker loop of this runtime, if
    /// any, else the shared shard); fails once the runtime is closed.
    pub(crate) fn insert(&self, task: P, here: Option<usize>) -> Result<(), P> {
        let shard_id = here.unwrap_or_else(|| self.shared_shard());
        let shard = &self.shards[shard_id];
        if shard.graveyard.len.load(Ordering::Relaxed) >= SWEEP_BATCH {
            // The tasks we spawned and others finished: free them here (module docs).
            self.sweep(shard_id);
        }
        let mut slab = shard.slab.lock();
        // Checked under the shard lock: `close` takes every lock after setting the flag, so a
        // task is either in the registry before shutdown snapshots it, or refused.
        if self.closed.load(Ordering::Acquire) {
            return Err(task);
        }
        let slot = match slab.free.pop() {
            Some(slot) => slot,
            None => {
                slab.slots.push(None);
                slab.slots.len() - 1
            }
        };
        // Read back only by `remove`, after the insert happened-before the task ran.
        task.registry_slot()
            .store((shard_id << SLOT_BITS) | slot, Ordering::Relaxed);
        slab.slots[slot] = Some(task);
        Ok(())
    }

    /// Removes the finishing task whose slot word is `slot_word` (see the module docs for
    /// when), called on the thread that finishes it; `here` is that thread's worker loop, and
    /// `outbox` that loop's outbox, where a slot of another shard waits for [`Registry::flush`]
    /// (`None`: straight to the graveyard).
    pub(crate) fn remove(
        &self,
        slot_word: &AtomicUsize,
        here: Option<usize>,
        outbox: Option<&mut Outbox>,
    ) {
        let packed = slot_word.load(Ordering::Relaxed);
        if packed == UNREGISTERED {
            return; // never registered (refused at shutdown)
        }
        let (shard_id, slot) = (packed >> SLOT_BITS, packed & ((1 << SLOT_BITS) - 1));
        let shard = &self.shards[shard_id];
        // The shared shard belongs to the threads off the loops, as a loop's shard to it.
        let owner = here == Some(shard_id) || (here.is_none() && shard_id == self.shared_shard());
        if owner {
            let removed = {
                let mut slab = shard.slab.lock();
                let ours = slab
                    .slots
                    .get(slot)
                    .and_then(Option::as_ref)
                    .is_some_and(|t| std::ptr::eq(t.registry_slot(), slot_word));
                if ours {
                    slab.take(slot)
                } else {
                    None
                }
            };
            // Dropped outside the lock: it may be the last reference.
            drop(removed);
            return;
        }
        match outbox {
            Some(outbox) => {
                outbox.push(shard_id, slot);
                if outbox.len() >= OUTBOX_MAX {
                    self.flush(outbox);
                }
            }
            None => {
                if self.add_to_graveyard(shard_id, &[slot]) {
                    self.sweep(shard_id);
                }
            }
        }
    }

    /// Hands the slots a loop collected in its `outbox` (see [`Registry::remove`]) to their
    /// shards' graveyards, one lock per shard, and empties it.
    pub(crate) fn flush(&self, outbox: &mut Outbox) {
        if outbox.is_empty() {
            return;
        }
        for (shard_id, slots) in outbox.by_shard.iter_mut().enumerate() {
            if slots.is_empty() {
                continue;
            }
            let full = self.add_to_graveyard(shard_id, slots);
            // Out of the outbox before any sweep: a destructor the sweep runs may panic, and
            // the loop's exit flushes the outbox again, which must not hand a slot over twice.
            // Cleared, not dropped: the list's capacity serves the next iteration.
            outbox.len -= slots.len();
            slots.clear();
            if full {
                self.sweep(shard_id);
            }
        }
    }

    /// Adds `slots` to `shard_id`'s graveyard; true if that filled it (the caller sweeps).
    fn add_to_graveyard(&self, shard_id: usize, slots: &[usize]) -> bool {
        let shard = &self.shards[shard_id];
        let mut graveyard = shard.graveyard.slots.lock();
        graveyard.extend_from_slice(slots);
        shard
            .graveyard
            .len
            .store(graveyard.len(), Ordering::Relaxed);
        graveyard.len() >= GRAVEYARD_MAX
    }

    /// A sweep of `shard_id` if its graveyard holds anything: one relaxed load otherwise.
    #[inline]
    pub(crate) fn sweep_if_needed(&self, shard_id: usize) {
        if self.shards[shard_id].graveyard.len.load(Ordering::Relaxed) > 0 {
            self.sweep(shard_id);
        }
    }

    /// Frees the slots in `shard_id`'s graveyard.
    #[cold]
    fn sweep(&self, shard_id: usize) {
        let shard = &self.shards[shard_id];
        let slots = {
            let mut graveyard = shard.graveyard.slots.lock();
            shard.graveyard.len.store(0, Ordering::Relaxed);
            std::mem::take(&mut *graveyard)
        };
        if slots.is_empty() {
            return;
        }
        let freed: Vec<P> = {
            let mut slab = shard.slab.lock();
            slots
                .into_iter()
                .filter_map(|slot| slab.take(slot))
                .collect()
        };
        // Dropped outside the lock: these may be the last references.
        drop(freed);
    }

    /// Refuses every later insert.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for shard in self.shards.iter() {
            drop(shard.slab.lock());
        }
    }

    /// True once `close` has run, read under a shard lock, which `close` takes after setting
    /// the flag. So when this returns false, whoever called `close` sees afterwards what the
    /// caller wrote before (a host loop's `running`, which a shutdown reads): see the model
    /// `a_host_starting_to_run_is_refused_or_waited_for`.
    pub(crate) fn is_closed_synced(&self) -> bool {
        let _shard = self.shards[self.shared_shard()].slab.lock();
        self.closed.load(Ordering::Acquire)
    }

    /// True once `close` has run.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Every registered task that has not finished, in creation order.
    pub(crate) fn snapshot(&self) -> Vec<P> {
        let mut all = Vec::new();
        for (i, shard) in self.shards.iter().enumerate() {
            self.sweep(i);
            let slab = shard.slab.lock();
            all.extend(
                slab.slots
                    .iter()
                    .flatten()
                    .filter(|t| !t.finished())
                    .cloned(),
            );
        }
        all.sort_by_key(Registrant::order);
        all
    }
}

/// A stand-in task for the registry's tests and loom models (the shim's types: std's
/// normally, loom's under `--cfg loom`).
#[cfg(test)]
mod fake {
    use super::{Registrant, UNREGISTERED};
    use braid_bridge::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use braid_bridge::sync::Arc;

    pub(super) struct FakeTask {
        pub(super) id: u64,
        pub(super) slot: AtomicUsize,
        pub(super) done: AtomicBool,
    }

    #[derive(Clone)]
    pub(super) struct Ptr(pub(super) Arc<FakeTask>);

    impl Registrant for Ptr {
        fn registry_slot(&self) -> &AtomicUsize {
            &self.0.slot
        }
        fn finished(&self) -> bool {
            self.0.done.load(Ordering::Acquire)
        }
        fn order(&self) -> u64 {
            self.0.id
        }
    }

    /// An unregistered, unfinished task that sorts by `id`.
    pub(super) fn task(id: u64) -> Ptr {
        Ptr(Arc::new(FakeTask {
            id,
            slot: AtomicUsize::new(UNREGISTERED),
            done: AtomicBool::new(false),
        }))
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    //! Deferred frees: a loop finishing a foreign-spawned task (or a sibling's) leaves its
    //! slot in the shard's graveyard, and the next insert into that shard (the foreign
    //! thread's, or the owning loop's) or the owner's sweep frees it. Checked: every
    //! finished task is freed exactly once, no live task is ever removed (a reused slot is
    //! never swept by a stale graveyard entry), and the registry ends holding exactly the
    //! unfinished tasks.
    use super::fake::{task, Ptr};
    use super::{Outbox, Registry};
    use braid_bridge::sync::atomic::Ordering;
    use braid_bridge::sync::Arc;

    fn register(registry: &Registry<Ptr>, t: &Ptr, here: Option<usize>) {
        assert!(
            registry.insert(t.clone(), here).is_ok(),
            "the registry is open"
        );
    }

    /// As a task's completion does it: leave the registry (a worker loop through its outbox,
    /// which it flushes at the end of its iteration), then mark done.
    fn finish(registry: &Registry<Ptr>, t: &Ptr, here: Option<usize>) {
        let mut outbox = Outbox::new();
        registry.remove(&t.0.slot, here, here.map(|_| &mut outbox));
        t.0.done.store(true, Ordering::Release);
        registry.flush(&mut outbox);
    }

    #[test]
    fn loom_a_foreign_spawner_frees_what_the_loops_finished() {
        loom::model(|| {
            // One worker loop: shard 0; the shared shard is 1.
            let registry = Arc::new(Registry::<Ptr>::new(1));
            let (a, b) = (task(1), task(2));
            register(&registry, &a, None);
            register(&registry, &b, None);

            // The loop and a second thread off the loops (a host loop) finish one each.
            let lp = {
                let (registry, a) = (registry.clone(), a.clone());
                loom::thread::spawn(move || finish(&registry, &a, Some(0)))
            };
            let host = {
                let (registry, b) = (registry.clone(), b.clone());
                loom::thread::spawn(move || finish(&registry, &b, None))
            };
            // Meanwhile the spawner inserts more, sweeping whatever has been left.
            let c = task(3);
            register(&registry, &c, None);
            let d = task(4);
            register(&registry, &d, None);
            lp.join().unwrap();
            host.join().unwrap();

            let live: Vec<u64> = registry.snapshot().iter().map(|t| t.0.id).collect();
            assert_eq!(live, vec![3, 4], "exactly the unfinished tasks");
            // The snapshot swept every graveyard: the registry keeps no finished task.
            assert_eq!(Arc::strong_count(&a.0), 1, "a freed exactly once");
            assert_eq!(Arc::strong_count(&b.0), 1, "b freed exactly once");
            assert_eq!(Arc::strong_count(&c.0), 2, "c still registered");
            assert_eq!(Arc::strong_count(&d.0), 2, "d still registered");
        });
    }

    #[test]
    fn loom_a_loop_sweeps_its_own_shard() {
        loom::model(|| {
            let registry = Arc::new(Registry::<Ptr>::new(2));
            let (a, b) = (task(1), task(2));
            register(&registry, &a, Some(0));
            register(&registry, &b, Some(0));
            // Loop 1 finishes a task of loop 0 (graveyard) while loop 0 finishes its other
            // one (at once), spawns another (whose insert sweeps what waits) and sweeps.
            let sibling = {
                let (registry, a) = (registry.clone(), a.clone());
                loom::thread::spawn(move || finish(&registry, &a, Some(1)))
            };
            finish(&registry, &b, Some(0));
            let e = task(5);
            register(&registry, &e, Some(0));
            registry.sweep_if_needed(0);
            sibling.join().unwrap();
            registry.sweep_if_needed(0);
            assert_eq!(Arc::strong_count(&a.0), 1);
            assert_eq!(Arc::strong_count(&b.0), 1);
            let live: Vec<u64> = registry.snapshot().iter().map(|t| t.0.id).collect();
            assert_eq!(live, vec![5]);
        });
    }

    /// A host loop starting to run as the runtime shuts down (`Runtime::run_until_complete`
    /// against `Runtime::shutdown`): the host marks itself running, then reads the flag
    /// under a shard lock; the shutdown closes the registry (which takes every shard lock),
    /// then reads whether the host runs. One of them sees the other: the host refuses to
    /// run, or the shutdown waits for the tasks pinned to it.
    #[test]
    fn a_host_starting_to_run_is_refused_or_waited_for() {
        loom::model(|| {
            let registry = Arc::new(Registry::<Ptr>::new(1));
            let running = Arc::new(braid_bridge::sync::atomic::AtomicBool::new(false));
            let (r2, running2) = (registry.clone(), running.clone());
            let host = loom::thread::spawn(move || {
                running2.store(true, Ordering::Relaxed);
                r2.is_closed_synced()
            });
            registry.close();
            let waited_for = running.load(Ordering::Relaxed);
            let refused = host.join().unwrap();
            assert!(refused || waited_for, "the host ran unseen by the shutdown");
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::fake::{task, Ptr};
    use super::{Outbox, Registrant, Registry};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn registered(registry: &Registry<Ptr>, here: Option<usize>) -> Ptr {
        let t = task(0);
        assert!(registry.insert(t.clone(), here).is_ok());
        t
    }

    /// Finishes `tasks` on worker loop `here`, through its `outbox`, as a completion does.
    fn finish_on(registry: &Registry<Ptr>, tasks: &[Ptr], here: usize, outbox: &mut Outbox) {
        for t in tasks {
            registry.remove(&t.0.slot, Some(here), Some(&mut *outbox));
            t.0.done.store(true, Ordering::Release);
        }
    }

    /// Loop 1 finishes tasks of loop 0's shard and of the shared shard: they wait in its
    /// outbox (the registry keeps them) until it flushes, and are freed by the owners'
    /// sweeps after that, each exactly once.
    #[test]
    fn a_loops_outbox_holds_other_shards_slots_until_flushed() {
        let registry = Registry::<Ptr>::new(2);
        let of_loop_0: Vec<Ptr> = (0..3).map(|_| registered(&registry, Some(0))).collect();
        let of_foreign: Vec<Ptr> = (0..2).map(|_| registered(&registry, None)).collect();
        let mut outbox = Outbox::new();
        finish_on(&registry, &of_loop_0, 1, &mut outbox);
        finish_on(&registry, &of_foreign, 1, &mut outbox);
        assert_eq!(outbox.len(), 5);
        // The owners sweep; then each finished task is held by `expected` references.
        let swept_and_held = |expected: usize, why: &str| {
            registry.sweep_if_needed(0);
            registry.sweep_if_needed(registry.shared_shard());
            for t in of_loop_0.iter().chain(&of_foreign) {
                assert_eq!(Arc::strong_count(&t.0), expected, "{why}");
            }
        };
        swept_and_held(2, "held until the outbox is flushed");
        registry.flush(&mut outbox);
        assert!(outbox.is_empty());
        swept_and_held(1, "freed exactly once after the flush");
        // The freed slots are reused, so nothing was left behind in the slabs.
        let again = registered(&registry, Some(0));
        assert!(again.0.slot.load(Ordering::Relaxed) & ((1 << super::SLOT_BITS) - 1) < 3);
        assert!(registry.snapshot().len() == 1);
    }

    /// What a sibling finished of a loop's tasks is freed by that loop's next insert once a
    /// batch waits, even if the loop never comes round to its once-per-iteration sweep (one
    /// task spawning many in one long step): the memory goes back to the allocating thread.
    #[test]
    fn an_insert_into_a_loops_shard_frees_a_batch_its_sibling_finished() {
        let registry = Registry::<Ptr>::new(2);
        let finished: Vec<Ptr> = (0..super::SWEEP_BATCH)
            .map(|_| registered(&registry, Some(0)))
            .collect();
        let mut outbox = Outbox::new();
        finish_on(&registry, &finished, 1, &mut outbox);
        registry.flush(&mut outbox);
        assert!(finished.iter().all(|t| Arc::strong_count(&t.0) == 2));
        let _next = registered(&registry, Some(0));
        assert!(
            finished.iter().all(|t| Arc::strong_count(&t.0) == 1),
            "the insert swept the graveyard"
        );
    }

    /// An outbox that reaches `OUTBOX_MAX` hands its slots over at once (the backstop for one
    /// iteration that finishes many tasks), and serves again, from its kept lists, after a
    /// flush.
    #[test]
    fn a_full_outbox_hands_its_slots_over_at_once_and_serves_again() {
        let registry = Registry::<Ptr>::new(2);
        let first: Vec<Ptr> = (0..=super::OUTBOX_MAX)
            .map(|_| registered(&registry, Some(0)))
            .collect();
        let mut outbox = Outbox::new();
        finish_on(&registry, &first, 1, &mut outbox);
        assert_eq!(
            outbox.len(),
            1,
            "the first OUTBOX_MAX slots were handed over"
        );
        registry.sweep_if_needed(0);
        let freed = |tasks: &[Ptr]| {
            tasks
                .iter()
                .filter(|t| Arc::strong_count(&t.0) == 1)
                .count()
        };
        assert_eq!(freed(&first), super::OUTBOX_MAX);
        registry.flush(&mut outbox);
        assert!(outbox.is_empty());
        registry.sweep_if_needed(0);
        assert_eq!(freed(&first), first.len());
        // A second round, of another shard, through the same outbox.
        let second: Vec<Ptr> = (0..3).map(|_| registered(&registry, None)).collect();
        finish_on(&registry, &second, 1, &mut outbox);
        assert_eq!(outbox.len(), 3);
        registry.flush(&mut outbox);
        registry.sweep_if_needed(registry.shared_shard());
        assert_eq!(freed(&second), second.len());
        assert!(registry.snapshot().is_empty());
    }

    /// A task whose destructor panics once `armed`: what a stored output whose `Drop`
    /// panics does to a real task's last count.
    #[derive(Clone)]
    struct Panicky(Ptr, Arc<AtomicBool>);

    impl Drop for Panicky {
        fn drop(&mut self) {
            if self.1.load(Ordering::Relaxed) && !std::thread::panicking() {
                panic!("a task's destructor panicked");
            }
        }
    }

    impl Registrant for Panicky {
        fn registry_slot(&self) -> &braid_bridge::sync::atomic::AtomicUsize {
            self.0.registry_slot()
        }
        fn finished(&self) -> bool {
            self.0.finished()
        }
        fn order(&self) -> u64 {
            self.0.order()
        }
    }

    /// A flush that fills a graveyard sweeps it, and the sweep may drop a task whose
    /// destructor panics. The slots it handed over must be out of the outbox by then: the
    /// loop's exit flushes the outbox again, and a slot handed over twice would later free
    /// whatever task then holds it.
    #[test]
    fn a_panic_in_the_sweep_a_flush_starts_leaves_nothing_in_the_outbox() {
        let registry = Registry::<Panicky>::new(2);
        let armed = Arc::new(AtomicBool::new(false));
        let finish = |t: &Panicky, outbox: Option<&mut Outbox>| {
            registry.remove(t.registry_slot(), Some(1), outbox);
            t.0 .0.done.store(true, Ordering::Release);
        };
        // All inserted first (an insert sweeps a graveyard that holds a batch), then one
        // slot short of a full graveyard handed over directly.
        let others: Vec<Panicky> = (1..super::GRAVEYARD_MAX)
            .map(|_| Panicky(task(0), Arc::new(AtomicBool::new(false))))
            .collect();
        let last = Panicky(task(0), armed.clone());
        for t in others.iter().chain([&last]) {
            assert!(registry.insert(t.clone(), Some(0)).is_ok());
        }
        for t in &others {
            finish(t, None);
        }
        drop(others);
        let mut outbox = Outbox::new();
        finish(&last, Some(&mut outbox));
        drop(last);
        armed.store(true, Ordering::Relaxed);
        let flushed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            registry.flush(&mut outbox);
        }));
        assert!(flushed.is_err(), "the sweep dropped the armed task");
        armed.store(false, Ordering::Relaxed);
        assert!(
            outbox.is_empty(),
            "the handed-over slot left the outbox before the sweep"
        );
        assert!(outbox.by_shard.iter().all(Vec::is_empty));
    }

    /// A task finished by its own loop leaves at once, never through the outbox.
    #[test]
    fn a_loop_finishing_its_own_task_frees_it_at_once() {
        let registry = Registry::<Ptr>::new(1);
        let t = registered(&registry, Some(0));
        let mut outbox = Outbox::new();
        registry.remove(&t.0.slot, Some(0), Some(&mut outbox));
        assert!(outbox.is_empty());
        assert_eq!(Arc::strong_count(&t.0), 1);
    }
}
