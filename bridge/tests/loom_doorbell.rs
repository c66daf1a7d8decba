//! loom models of the loop doorbell (`braid_bridge::doorbell`): a producer pushing a message
//! or ringing for published work while the loop goes to sleep; and of the fence handshake the
//! runtime's idle protocol relies on. Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release -p braid-bridge --test loom_doorbell`.
#![cfg(loom)]

use braid_bridge::doorbell::{Doorbell, Unpark};
use braid_bridge::fault::{self, Fault};
use braid_bridge::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use loom::sync::{Arc, Notify};
use loom::thread;
use std::collections::VecDeque;

/// Stands in for `polling::Poller`: loom's `Notify` is sticky, as `Poller::notify` is (a
/// notify before the wait makes the wait return at once).
struct ThreadUnpark {
    notify: Notify,
    unparks: AtomicUsize,
}

impl Unpark for ThreadUnpark {
    fn unpark(&self) {
        self.unparks.fetch_add(1, Ordering::SeqCst);
        self.notify.notify();
    }
}

fn bell() -> Arc<Doorbell<u32, ThreadUnpark>> {
    Arc::new(Doorbell::new(ThreadUnpark {
        notify: Notify::new(),
        unparks: AtomicUsize::new(0),
    }))
}

fn sleep_on(bell: &Doorbell<u32, ThreadUnpark>) {
    bell.unparker().notify.wait();
}

/// The loop's side: drain, and sleep when there is nothing, until `want` messages arrived.
/// A lost wake-up leaves this thread waiting forever, which loom reports as a deadlock.
fn owner_receives(bell: &Doorbell<u32, ThreadUnpark>, want: usize) -> Vec<u32> {
    let mut got = VecDeque::new();
    while got.len() < want {
        if bell.drain_into(&mut got) > 0 {
            continue;
        }
        if bell.prepare_sleep() {
            sleep_on(bell);
        }
        bell.finish_sleep();
    }
    got.into_iter().collect()
}

/// A producer thread that pushes `messages` in order.
fn producer_pushing(
    bell: &Arc<Doorbell<u32, ThreadUnpark>>,
    messages: &'static [u32],
) -> thread::JoinHandle<()> {
    let bell = bell.clone();
    thread::spawn(move || {
        for &message in messages {
            bell.push(message).unwrap();
        }
    })
}

/// After the producer is done: the owner holds every message, or it went to sleep and was
/// unparked (its one sleep in these models, so the unpark came after it announced it).
fn assert_received_or_unparked(
    bell: &Doorbell<u32, ThreadUnpark>,
    got: &VecDeque<u32>,
    slept: bool,
    want: &[u32],
) {
    let unparked = bell.unparker().unparks.load(Ordering::SeqCst) > 0;
    assert!(
        got.iter().eq(want) || (slept && unparked),
        "lost wake-up: the owner sleeps short of a message ({got:?})"
    );
}

/// A push racing the owner's sleep is never lost: after the owner's last look, either it saw
/// the message, or it announced its sleep and the producer unparked it. (Stated without
/// blocking, so that the broken twin fails an assertion instead of deadlocking loom.)
fn push_races_sleep_model() {
    let bell = bell();
    let producer = producer_pushing(&bell, &[7]);
    let mut got = VecDeque::new();
    let mut slept = false;
    if bell.drain_into(&mut got) == 0 {
        if bell.prepare_sleep() {
            slept = true;
        } else {
            bell.drain_into(&mut got);
        }
    }
    producer.join().unwrap();
    assert_received_or_unparked(&bell, &got, slept, &[7]);
}

#[test]
fn push_races_sleep() {
    fault::model(Fault::None, push_races_sleep_model);
}

/// The model catches a doorbell whose `prepare_sleep` ignores what arrived: the owner sleeps
/// through the message.
#[test]
#[should_panic(expected = "lost wake-up")]
fn broken_prepare_sleep_sleeps_through_a_push() {
    fault::model(Fault::DoorbellIgnoresPending, push_races_sleep_model);
}

/// Pushes landing while the owner drains: a push behind a waiting message skips its ring
/// (module docs, "One ring per batch"), so it must be taken with the message whose push rang,
/// and a push onto the inbox a drain just emptied must ring where the owner will see it.
/// The owner drains until it holds both messages or decides to sleep; stated without
/// blocking, as above: if it sleeps short of a message, it was unparked.
fn pushes_race_drains_model() {
    let bell = bell();
    let producer = producer_pushing(&bell, &[1, 2]);
    let mut got = VecDeque::new();
    let mut slept = false;
    while got.len() < 2 {
        bell.drain_into(&mut got);
        if got.len() == 2 {
            break;
        }
        if bell.prepare_sleep() {
            slept = true;
            break;
        }
        thread::yield_now();
    }
    producer.join().unwrap();
    assert_received_or_unparked(&bell, &got, slept, &[1, 2]);
}

#[test]
fn pushes_race_drains() {
    fault::model(Fault::None, pushes_race_drains_model);
}

/// The model catches a drain that takes the messages before it clears `PENDING`: the push
/// onto the emptied inbox rings first, and the clear then hides it.
#[test]
#[should_panic(expected = "lost wake-up")]
fn broken_drain_clearing_after_the_take_sleeps_through_a_push() {
    fault::model(Fault::DoorbellClearsAfterTake, pushes_race_drains_model);
}

/// Two producers at once: both messages arrive, in a push order, none lost.
#[test]
fn two_producers_race_sleep() {
    loom::model(|| {
        let bell = bell();
        for i in 1..=2 {
            let bell = bell.clone();
            thread::spawn(move || bell.push(i).unwrap());
        }
        let mut got = owner_receives(&bell, 2);
        got.sort();
        assert_eq!(got, [1, 2]);
    });
}

/// Work published elsewhere (a shared queue, modelled by a flag) followed by `ring` reaches
/// a loop whose sleep re-check looks at that work.
#[test]
fn ring_races_sleep() {
    loom::model(|| {
        let bell = bell();
        let work = Arc::new(AtomicBool::new(false));
        {
            let (bell, work) = (bell.clone(), work.clone());
            thread::spawn(move || {
                work.store(true, Ordering::Relaxed);
                bell.ring();
            });
        }
        loop {
            if work.load(Ordering::Relaxed) {
                break;
            }
            if bell.prepare_sleep() {
                // The re-check of the other work source, after `prepare_sleep`'s fence.
                if work.load(Ordering::Relaxed) {
                    bell.finish_sleep();
                    break;
                }
                sleep_on(&bell);
            }
            bell.finish_sleep();
        }
    });
}

/// A busy owner (one that never announced a sleep) is never unparked.
fn no_wakeup_while_awake_model() {
    let bell = bell();
    let producer = producer_pushing(&bell, &[1, 2]);
    producer.join().unwrap();
    assert_eq!(bell.unparker().unparks.load(Ordering::SeqCst), 0);
    let mut got = VecDeque::new();
    bell.drain_into(&mut got);
    assert_eq!(got, [1, 2]);
}

#[test]
fn no_wakeup_while_awake() {
    fault::model(Fault::None, no_wakeup_while_awake_model);
}

/// The model catches a doorbell that rings a busy owner.
#[test]
#[should_panic]
fn broken_ring_wakes_a_busy_owner() {
    fault::model(Fault::DoorbellAlwaysUnparks, no_wakeup_while_awake_model);
}

/// After `close`, a push fails and hands the message back: nothing is accepted and dropped.
fn push_races_close_model() {
    let bell = bell();
    let producer = {
        let bell = bell.clone();
        thread::spawn(move || bell.push(5).is_ok())
    };
    let mut left = bell.close();
    let accepted = producer.join().unwrap();
    // Either the message made it in before the close (and close returned it), or the
    // push was refused. Never both, never neither.
    let mut late = VecDeque::new();
    bell.drain_into(&mut late);
    assert!(late.is_empty());
    assert_eq!(accepted, left.pop_front() == Some(5));
}

#[test]
fn push_races_close() {
    fault::model(Fault::None, push_races_close_model);
}

/// The model catches a doorbell that accepts a push after `close`: the message is neither
/// returned by `close` nor refused.
#[test]
#[should_panic]
fn broken_push_after_close_is_lost() {
    fault::model(Fault::DoorbellIgnoresClose, push_races_close_model);
}

/// The scheduler's idle handshake in its bare form (the store-buffering litmus test): a loop
/// registers as idle then looks at the shared run queue; a spawner pushes to the queue then
/// looks at the idle count (`RuntimeShared::notify_work`). Both put a `fence(SeqCst)` between
/// their store and their load. A lost wake-up is the outcome where neither sees the other.
/// (The doorbell itself needs no fence: its two bits share one word changed only by RMWs.)
fn handshake(owner_fence: bool) {
    loom::model(move || {
        let asleep = Arc::new(AtomicBool::new(false));
        let work = Arc::new(AtomicBool::new(false));
        let producer = {
            let (asleep, work) = (asleep.clone(), work.clone());
            thread::spawn(move || {
                work.store(true, Ordering::Relaxed);
                fence(Ordering::SeqCst);
                asleep.load(Ordering::Relaxed)
            })
        };
        asleep.store(true, Ordering::Relaxed);
        if owner_fence {
            fence(Ordering::SeqCst);
        }
        let owner_saw_work = work.load(Ordering::Relaxed);
        let producer_saw_sleeper = producer.join().unwrap();
        assert!(
            owner_saw_work || producer_saw_sleeper,
            "lost wake-up: neither side saw the other"
        );
    });
}

/// With both fences (as the scheduler has them) no interleaving loses the wake-up.
#[test]
fn handshake_with_both_fences_never_loses_a_wakeup() {
    handshake(true);
}

/// The model catches the bug it exists for: with the owner's fence left out, loom finds the
/// interleaving in which both sides miss each other.
#[test]
#[should_panic(expected = "lost wake-up")]
fn broken_handshake_without_owner_fence_loses_a_wakeup() {
    handshake(false);
}

/// `has_queued` (what a waking loop uses to tell work sent to it from a sibling's bare ring,
/// see the runtime's `linger`): a ring racing the owner's look never reads as queued; a push
/// does once it happened-before the look, and no longer once drained.
fn has_queued_model() {
    let bell = bell();
    let ringer = {
        let bell = bell.clone();
        thread::spawn(move || bell.ring())
    };
    assert!(!bell.has_queued(), "a bare ring read as a queued message");
    ringer.join().unwrap();
    assert!(
        bell.has_messages(),
        "a ring that happened-before is not seen"
    );
    assert!(!bell.has_queued(), "a bare ring read as a queued message");
    let pusher = {
        let bell = bell.clone();
        thread::spawn(move || bell.push(7).unwrap())
    };
    pusher.join().unwrap();
    assert!(
        bell.has_queued(),
        "a pushed message does not read as queued"
    );
    let mut got = VecDeque::new();
    bell.drain_into(&mut got);
    assert_eq!(got, [7]);
    assert!(!bell.has_queued(), "a drained inbox still reads as queued");
}

#[test]
fn loom_has_queued_tells_a_message_from_a_bare_ring() {
    fault::model(Fault::None, has_queued_model);
}

/// The model catches a `has_queued` that reads the ring's flag instead of the inbox.
#[test]
#[should_panic(expected = "a bare ring read as a queued message")]
fn broken_has_queued_counts_a_bare_ring() {
    fault::model(Fault::DoorbellQueuedCountsRings, has_queued_model);
}
