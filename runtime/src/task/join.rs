//! Who watches a task (its join handle, a waker, done callbacks) and whether it completed:
//! one word of bits, apart from the rest of the header so that the loom models below drive
//! its methods (the completer's side in `Header::after_complete`'s order).
//!
//! Watchers set their bit after registering (a waker, a callback) and the completer sets
//! COMPLETED; all with `fetch_or` on one word, so whichever comes second sees the other and
//! does the waking (or the running, or the reporting), and a task nobody watches completes
//! without taking a lock. Two bits are no watcher's: DELIVERS, which says where the output
//! goes, is set before the task is shared and never changes; GIVEN_UP, set by a shutdown that
//! timed out on the task's step, works as COMPLETED does for a joiner (whichever of the
//! joiner's registration and the give-up comes second sees the other) but takes nothing
//! away: the task may still complete, and wake the same watchers.

use braid_bridge::sync::atomic::{AtomicU8, Ordering};
use braid_bridge::sync::Mutex;
use std::task::Waker;

/// The join handle was dropped.
const HANDLE_DROPPED: u8 = 1 << 0;
/// The task completed (output stored, state COMPLETE).
const COMPLETED: u8 = 1 << 1;
/// A join waker is registered.
const WAKER: u8 = 1 << 2;
/// Done callbacks are registered.
const CALLBACKS: u8 = 1 << 3;
/// A combinator (gather, shield, a task group) has taken charge of the task's error: it is
/// never reported as "never retrieved", as asyncio's combinators mark child errors retrieved.
const QUIET: u8 = 1 << 4;
/// The output goes to a function given at spawn (`run_coroutine_threadsafe`), not to the
/// handle. Set before the task is shared, never cleared.
const DELIVERS: u8 = 1 << 5;
/// A shutdown that timed out gave the task up while it was stuck in a step on its loop: the
/// joiner stops waiting (with Cancelled) unless the task completed first.
const GIVEN_UP: u8 = 1 << 6;

/// A task's watchers and its completion. `C` is a done callback.
pub(crate) struct JoinState<C> {
    bits: AtomicU8,
    /// One lock for both: each is taken alone and briefly, and a second lock would cost
    /// every task cell a word.
    watchers: Mutex<Registered<C>>,
}

/// The joiner's waker and the done callbacks.
struct Registered<C> {
    waker: Option<Waker>,
    callbacks: CallbackList<C>,
}

/// Done callbacks, newest first: one pointer while empty, where a `Vec` took three words of
/// every task's cell (every byte of which a spawn writes: `benchmarks/NOTES.md`). Most tasks
/// have none; a task group's child has one.
struct CallbackList<C> {
    newest: Option<Box<CallbackNode<C>>>,
}

struct CallbackNode<C> {
    callback: C,
    /// The node added before this one (after [`CallbackList::oldest_first`]: the one added
    /// after).
    link: Option<Box<CallbackNode<C>>>,
}

impl<C> CallbackList<C> {
    fn push(&mut self, callback: C) {
        let link = self.newest.take();
        self.newest = Some(Box::new(CallbackNode { callback, link }));
    }

    /// The chain from `newest` (taken out of a list), reversed: oldest first.
    fn oldest_first(newest: Option<Box<CallbackNode<C>>>) -> TakenCallbacks<C> {
        let mut rest = newest;
        let mut oldest = None;
        while let Some(mut node) = rest {
            rest = node.link.take();
            node.link = oldest;
            oldest = Some(node);
        }
        TakenCallbacks { oldest }
    }
}

/// Drops a chain one node at a time: a recursive drop of a long chain could overflow the
/// stack.
fn drop_chain<C>(mut rest: Option<Box<CallbackNode<C>>>) {
    while let Some(mut node) = rest {
        rest = node.link.take();
    }
}

impl<C> Drop for CallbackList<C> {
    fn drop(&mut self) {
        drop_chain(self.newest.take());
    }
}

/// Done callbacks taken from a task, in the order they were added.
pub(crate) struct TakenCallbacks<C> {
    oldest: Option<Box<CallbackNode<C>>>,
}

impl<C> Iterator for TakenCallbacks<C> {
    type Item = C;

    fn next(&mut self) -> Option<C> {
        let node = self.oldest.take()?;
        let CallbackNode { callback, link } = *node;
        self.oldest = link;
        Some(callback)
    }
}

impl<C> Drop for TakenCallbacks<C> {
    fn drop(&mut self) {
        drop_chain(self.oldest.take());
    }
}

/// What a joiner's look at the task found.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Watch {
    /// Not completed: the joiner's waker is registered and will be woken.
    Pending,
    /// Completed: no wake will come; the joiner reads the output now.
    Completed,
    /// Given up by a shutdown before it completed: no wake will come, and no output.
    GivenUp,
}

/// What the completer found registered when it published completion.
#[derive(Clone, Copy)]
pub(crate) struct Watchers(u8);

impl Watchers {
    /// Done callbacks were registered: the completer runs `take_callbacks()`.
    pub(crate) fn callbacks(self) -> bool {
        self.0 & CALLBACKS != 0
    }

    /// The handle was already gone: nobody else can report an error (if `!is_quiet()`).
    pub(crate) fn handle_dropped(self) -> bool {
        self.0 & HANDLE_DROPPED != 0
    }

    /// A joiner registered a waker: the completer wakes `take_waker()`.
    pub(crate) fn waker(self) -> bool {
        self.0 & WAKER != 0
    }
}

impl<C> JoinState<C> {
    pub(crate) fn new() -> JoinState<C> {
        JoinState {
            bits: AtomicU8::new(0),
            watchers: Mutex::new(Registered {
                waker: None,
                callbacks: CallbackList { newest: None },
            }),
        }
    }

    fn bit(&self, bit: u8) -> bool {
        self.bits.load(Ordering::Acquire) & bit != 0
    }

    /// True once the join handle is dropped: nobody can take the output any more.
    pub(crate) fn handle_dropped(&self) -> bool {
        self.bit(HANDLE_DROPPED)
    }

    /// Marks a task whose output goes to a function given at spawn. Takes `&mut`: only
    /// before the task is shared, so a plain store loses no other thread's bit.
    pub(crate) fn mark_delivering(&mut self) {
        let bits = self.bits.load(Ordering::Relaxed);
        self.bits.store(bits | DELIVERS, Ordering::Relaxed);
    }

    /// True for a task marked by [`mark_delivering`](Self::mark_delivering).
    pub(crate) fn delivers(&self) -> bool {
        // Set before the task was shared: whoever runs it is ordered after that.
        self.bits.load(Ordering::Relaxed) & DELIVERS != 0
    }

    /// True once the output is stored and completion published (the completer may still be
    /// serving the watchers it found: callbacks, the report, the waker).
    pub(crate) fn completed(&self) -> bool {
        self.bit(COMPLETED)
    }

    /// A combinator took charge of the task's error: never report it as unretrieved.
    pub(crate) fn mark_quiet(&self) {
        self.bits.fetch_or(QUIET, Ordering::AcqRel);
    }

    pub(crate) fn is_quiet(&self) -> bool {
        self.bit(QUIET)
    }

    /// Registers the joiner's `waker` unless the task completed or was given up; which of
    /// the three it found. Completion wins over a give-up: a value the task returned is
    /// never thrown away.
    pub(crate) fn watch(&self, waker: &Waker) -> Watch {
        fn seen(bits: u8) -> Option<Watch> {
            if bits & COMPLETED != 0 {
                Some(Watch::Completed)
            } else if bits & GIVEN_UP != 0 {
                Some(Watch::GivenUp)
            } else {
                None
            }
        }
        // Only completion is answered without registering: a task given up may still
        // complete, and `wait`, which watches for that, must then be woken.
        if self.completed() {
            return Watch::Completed;
        }
        let replaced = {
            let mut watchers = self.watchers.lock();
            match &watchers.waker {
                Some(old) if old.will_wake(waker) => None,
                _ => watchers.waker.replace(waker.clone()),
            }
        };
        // Dropped after the lock: a waker's drop may run anything.
        drop(replaced);
        // One read-modify-write after the registration: a completer or a give-up that came
        // first is seen here, one that comes later sees WAKER and takes the waker.
        seen(self.bits.fetch_or(WAKER, Ordering::AcqRel)).unwrap_or(Watch::Pending)
    }

    /// A timed-out shutdown's, for a task stuck in a step: tells joiners to stop waiting,
    /// and returns a copy of the waker of one already waiting, for the caller to wake
    /// (outside any lock). The waker stays registered: a watcher that goes on waiting for
    /// the task (`wait`) is woken again if the step completes after all. Nothing if the task
    /// completed: its joiner gets the output.
    pub(crate) fn give_up(&self) -> Option<Waker> {
        let prev = self.bits.fetch_or(GIVEN_UP, Ordering::AcqRel);
        if prev & COMPLETED != 0 || prev & WAKER == 0 {
            return None;
        }
        self.watchers.lock().waker.clone()
    }

    /// Registers a done callback (the caller has seen the task not completed). True if the
    /// task completed meanwhile and its completer saw no callbacks: the caller runs
    /// `take_callbacks()` itself.
    pub(crate) fn add_callback(&self, callback: C) -> bool {
        self.watchers.lock().callbacks.push(callback);
        self.bits.fetch_or(CALLBACKS, Ordering::AcqRel) & COMPLETED != 0
    }

    /// The callbacks registered so far, taken (under the lock, so each runs once), oldest
    /// first.
    pub(crate) fn take_callbacks(&self) -> TakenCallbacks<C> {
        // Reversed after the lock: it is as long as the list.
        let newest = self.watchers.lock().callbacks.newest.take();
        CallbackList::oldest_first(newest)
    }

    /// The joiner's waker, taken.
    pub(crate) fn take_waker(&self) -> Option<Waker> {
        self.watchers.lock().waker.take()
    }

    /// The completer's: publishes completion (the output is stored) and returns who was
    /// watching, for the completer to serve.
    pub(crate) fn complete(&self) -> Watchers {
        Watchers(self.bits.fetch_or(COMPLETED, Ordering::AcqRel))
    }

    /// The handle's drop: true if the task had completed unquieted, so that reporting an
    /// error nobody retrieved falls to the dropper.
    pub(crate) fn drop_handle(&self) -> bool {
        let prev = self.bits.fetch_or(HANDLE_DROPPED, Ordering::AcqRel);
        prev & COMPLETED != 0 && prev & QUIET == 0
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn callbacks_are_taken_oldest_first_and_once() {
        let join = JoinState::<u32>::new();
        for i in 0..4 {
            assert!(
                !join.add_callback(i),
                "not completed: the completer runs them"
            );
        }
        assert_eq!(join.take_callbacks().collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(join.take_callbacks().count(), 0);
        join.add_callback(9);
        assert_eq!(join.take_callbacks().collect::<Vec<_>>(), [9]);
    }

    /// A hundred thousand nodes dropped recursively take a hundred thousand stack frames:
    /// more than a test thread's stack.
    #[test]
    fn a_long_list_of_callbacks_drops_without_overflowing_the_stack() {
        let kept = JoinState::<u32>::new();
        let taken = JoinState::<u32>::new();
        for i in 0..100_000 {
            kept.add_callback(i);
            taken.add_callback(i);
        }
        let mut callbacks = taken.take_callbacks();
        assert_eq!(callbacks.next(), Some(0));
        drop(callbacks);
        drop(kept);
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use crate::sync::loom_support::Flag;
    use braid_bridge::sync::atomic::AtomicUsize;
    use braid_bridge::sync::Arc;
    use loom::thread;

    type Counted = Arc<AtomicUsize>;

    fn join_state() -> Arc<JoinState<Counted>> {
        Arc::new(JoinState::new())
    }

    /// The completer's side, as `Header::after_complete` runs it: callbacks, then the
    /// report of a failure nobody retrieved, then the joiner's wake. Returns whether it
    /// reported.
    fn complete(join: &JoinState<Counted>, failed: bool) -> bool {
        let watchers = join.complete();
        if watchers.callbacks() {
            for ran in join.take_callbacks() {
                ran.fetch_add(1, Ordering::SeqCst);
            }
        }
        let reported = failed && watchers.handle_dropped() && !join.is_quiet();
        if watchers.waker() {
            if let Some(waker) = join.take_waker() {
                waker.wake();
            }
        }
        reported
    }

    /// The task's runner completing it on another thread.
    fn spawn_completer(join: &Arc<JoinState<Counted>>, failed: bool) -> thread::JoinHandle<bool> {
        let join = join.clone();
        thread::spawn(move || complete(&join, failed))
    }

    /// A joiner polling while the task completes: it sees the completion or it is woken.
    #[test]
    fn loom_join_waker_registered_while_the_task_completes() {
        loom::model(|| {
            let join = join_state();
            let (flag, waker) = Flag::new();
            let completer = spawn_completer(&join, false);
            let ready = join.watch(&waker) == Watch::Completed;
            completer.join().unwrap();
            assert!(
                ready || flag.woken(),
                "the joiner was neither ready nor woken"
            );
        });
    }

    /// A second poll with another waker while the task completes: the one registered last
    /// is the one woken, or the poll sees the completion.
    #[test]
    fn loom_join_waker_replaced_while_the_task_completes() {
        loom::model(|| {
            let join = join_state();
            let (_first, first_waker) = Flag::new();
            assert_eq!(join.watch(&first_waker), Watch::Pending);
            let (second, second_waker) = Flag::new();
            let completer = spawn_completer(&join, false);
            let ready = join.watch(&second_waker) == Watch::Completed;
            completer.join().unwrap();
            assert!(ready || second.woken(), "the joiner's new waker was lost");
        });
    }

    /// The handle dropped while the task fails: exactly one of the two reports the error.
    #[test]
    fn loom_handle_dropped_while_a_failed_task_completes() {
        loom::model(|| {
            let join = join_state();
            let completer = spawn_completer(&join, true);
            let dropper_reports = join.drop_handle();
            let completer_reports = completer.join().unwrap();
            assert!(
                dropper_reports != completer_reports,
                "the unretrieved error must be reported exactly once"
            );
        });
    }

    /// The handle's owner drops it while `completer` runs: neither side may report.
    fn drop_handle_and_assert_nobody_reports(
        join: &JoinState<Counted>,
        completer: thread::JoinHandle<bool>,
    ) {
        let dropper_reports = join.drop_handle();
        let completer_reports = completer.join().unwrap();
        assert!(
            !completer_reports && !dropper_reports,
            "a quieted task's error was reported"
        );
    }

    /// A combinator that takes charge of a task's errors quiets it from the handle's side
    /// before the handle is dropped (`gather` and `shield` hold the handle; a `TaskGroup`
    /// quiets its child before `create_task` hands the handle out), while the task fails on
    /// another thread: nobody reports, whether the quieting comes before the completion or
    /// after it.
    #[test]
    fn loom_quiet_before_the_handle_is_handed_out_is_never_reported() {
        loom::model(|| {
            let join = join_state();
            let completer = spawn_completer(&join, true);
            // The creator, then (same thread, later) the handle's owner.
            join.mark_quiet();
            drop_handle_and_assert_nobody_reports(&join, completer);
        });
    }

    /// Twin of the model above with the quieting done where it once was, by the combinator's
    /// completion hook after the task completed: a handle dropped in between reports.
    #[test]
    #[should_panic(expected = "a quieted task's error was reported")]
    fn broken_quiet_marked_by_the_completion_hook_is_reported() {
        loom::model(|| {
            let join = join_state();
            let completer = {
                let join = join.clone();
                thread::spawn(move || {
                    // `Header::after_complete`: completion published, then the hook, then
                    // the completer's own check.
                    let watchers = join.complete();
                    join.mark_quiet();
                    watchers.handle_dropped() && !join.is_quiet()
                })
            };
            drop_handle_and_assert_nobody_reports(&join, completer);
        });
    }

    /// A done callback added while the task completes runs exactly once, by one side or the
    /// other (`Header::add_done_callback` runs it at once if it saw the task completed).
    #[test]
    fn loom_done_callback_added_while_the_task_completes() {
        loom::model(|| {
            let join = join_state();
            let ran: Counted = Arc::new(AtomicUsize::new(0));
            let completer = spawn_completer(&join, false);
            if join.completed() {
                ran.fetch_add(1, Ordering::SeqCst);
            } else if join.add_callback(ran.clone()) {
                for ran in join.take_callbacks() {
                    ran.fetch_add(1, Ordering::SeqCst);
                }
            }
            completer.join().unwrap();
            assert_eq!(ran.load(Ordering::SeqCst), 1, "the callback must run once");
        });
    }

    /// A timed-out shutdown's give-up (`TaskPtr::give_up`) on another thread.
    fn spawn_giver(join: &Arc<JoinState<Counted>>) -> thread::JoinHandle<()> {
        let join = join.clone();
        thread::spawn(move || {
            if let Some(waker) = join.give_up() {
                waker.wake();
            }
        })
    }

    /// A joiner's first look (`first`) either answered it or, if it waits, its waker
    /// (`flag`) was woken: it is never left waiting.
    fn assert_answered_or_woken(first: Watch, flag: &Flag) {
        assert!(
            first != Watch::Pending || flag.woken(),
            "the joiner was neither answered nor woken"
        );
    }

    /// A joiner polling while a shutdown gives the task up: the joiner sees the give-up or
    /// is woken by it, never left waiting for the stuck loop.
    #[test]
    fn loom_join_waker_registered_while_a_shutdown_gives_the_task_up() {
        loom::model(|| {
            let join = join_state();
            let (flag, waker) = Flag::new();
            let giver = spawn_giver(&join);
            let first = join.watch(&waker);
            giver.join().unwrap();
            assert_answered_or_woken(first, &flag);
            assert_eq!(join.watch(&waker), Watch::GivenUp);
        });
    }

    /// The same while the stuck step completes after all, as the shutdown gives the task
    /// up: the joiner is answered or woken (by either), and once the task has completed a
    /// look finds the output, never the give-up.
    #[test]
    fn loom_join_give_up_racing_the_completion_never_hides_the_output() {
        loom::model(|| {
            let join = join_state();
            let (flag, waker) = Flag::new();
            let giver = spawn_giver(&join);
            let completer = spawn_completer(&join, false);
            let first = join.watch(&waker);
            giver.join().unwrap();
            completer.join().unwrap();
            assert_answered_or_woken(first, &flag);
            assert_eq!(join.watch(&waker), Watch::Completed);
        });
    }

    /// A watcher that goes on waiting for a task a shutdown gave up (`wait`) is woken when
    /// the stuck step completes after all, whether it registered before the give-up or
    /// after: the give-up takes no waker away. (It once answered a look after the give-up
    /// without registering, and took the waker of one before: `wait` then slept through
    /// the completion.)
    #[test]
    fn loom_a_watcher_of_a_given_up_task_is_woken_when_it_completes() {
        loom::model(|| {
            let join = join_state();
            let (flag, waker) = Flag::new();
            let giver = spawn_giver(&join);
            let first = join.watch(&waker);
            giver.join().unwrap();
            if first == Watch::Pending {
                // Woken by the give-up: looks again, as `wait` does.
                assert_ne!(join.watch(&waker), Watch::Pending);
            }
            let woken_before = flag.woken_count();
            let completer = spawn_completer(&join, false);
            completer.join().unwrap();
            assert!(
                flag.woken_count() > woken_before,
                "the watcher slept through the completion"
            );
            assert_eq!(join.watch(&waker), Watch::Completed);
        });
    }

    /// Twin of the model above whose giver takes the waker before it marks the task given
    /// up: a joiner that registers in between is never woken, and waits for good.
    #[test]
    #[should_panic(expected = "the joiner was neither answered nor woken")]
    fn broken_give_up_taking_the_waker_first_loses_the_joiner() {
        loom::model(|| {
            let join = join_state();
            let (flag, waker) = Flag::new();
            let giver = {
                let join = join.clone();
                thread::spawn(move || {
                    let waker = join.take_waker();
                    join.bits.fetch_or(GIVEN_UP, Ordering::AcqRel);
                    if let Some(waker) = waker {
                        waker.wake();
                    }
                })
            };
            let first = join.watch(&waker);
            giver.join().unwrap();
            assert_answered_or_woken(first, &flag);
        });
    }
}
