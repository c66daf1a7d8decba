//! loom models of `ConcurrentFuture`'s cross-thread protocol, each with a `#[should_panic]`
//! twin that switches on a deliberate bug (`braid_bridge::fault`) to prove the model catches
//! it. Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release -p braid-bridge --test loom_future`.
#![cfg(loom)]

use braid_bridge::fault::{self, Fault};
use braid_bridge::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use braid_bridge::{enter_task_cancel_point, CancelOutcome, ConcurrentFuture, Error};
use loom::sync::Arc;
use loom::thread;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Wake, Waker};

/// Completion racing cancel: exactly one wins; the done callback runs once and sees the
/// state every later reader sees; `cancel()`'s answer matches `cancelled()`.
fn completion_races_cancel_model() {
    let (fut, completer) = ConcurrentFuture::<u32>::pair();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen_cancelled = Arc::new(AtomicBool::new(false));
    {
        let (calls, seen) = (calls.clone(), seen_cancelled.clone());
        fut.add_done_callback(move |f| {
            calls.fetch_add(1, Ordering::SeqCst);
            seen.store(f.cancelled(), Ordering::SeqCst);
        });
    }
    let producer = thread::spawn(move || completer.set_result(1));
    let cancel_won = fut.cancel();
    producer.join().unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the done callback must run exactly once"
    );
    assert_eq!(cancel_won, fut.cancelled());
    assert_eq!(
        seen_cancelled.load(Ordering::SeqCst),
        fut.cancelled(),
        "the state seen by the callback must be the final state"
    );
    if !cancel_won {
        assert_eq!(fut.try_result().unwrap().unwrap(), 1);
    }
}

#[test]
fn completion_races_cancel() {
    fault::model(Fault::None, completion_races_cancel_model);
}

#[test]
#[should_panic(expected = "final state")]
fn broken_cancel_overrides_a_finished_future() {
    fault::model(
        Fault::CancelOverridesFinished,
        completion_races_cancel_model,
    );
}

/// A thread blocked in `result` (with or without a timeout) racing completion always wakes
/// with the value.
fn blocked_waiter_model(timeout: Option<std::time::Duration>) {
    let (fut, completer) = ConcurrentFuture::<u32>::pair();
    let waiter = thread::spawn(move || fut.result(timeout));
    completer.set_result(7);
    assert_eq!(waiter.join().unwrap().unwrap(), 7);
}

#[test]
fn blocked_waiter_races_completion() {
    fault::model(Fault::None, || blocked_waiter_model(None));
}

#[test]
fn timed_waiter_races_completion() {
    fault::model(Fault::None, || {
        blocked_waiter_model(Some(std::time::Duration::from_secs(3600)))
    });
}

#[test]
#[should_panic]
fn broken_completion_without_notify_strands_a_waiter() {
    fault::model(Fault::SkipWaiterNotify, || blocked_waiter_model(None));
}

struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A poll (waker registration) racing completion: a Pending poll is always followed by a wake.
fn waker_model() {
    let (mut fut, completer) = ConcurrentFuture::<u32>::pair();
    let counter = std::sync::Arc::new(CountingWaker(AtomicUsize::new(0)));
    let waker = Waker::from(counter.clone());
    let producer = thread::spawn(move || completer.set_result(3));
    let mut cx = Context::from_waker(&waker);
    let first = Pin::new(&mut fut).poll(&mut cx);
    producer.join().unwrap();
    match first {
        Poll::Ready(v) => assert_eq!(v.unwrap(), 3),
        Poll::Pending => {
            assert!(
                counter.0.load(Ordering::SeqCst) >= 1,
                "a pending poll was never woken"
            );
            assert_eq!(
                Pin::new(&mut fut).poll(&mut cx).map(|r| r.unwrap()),
                Poll::Ready(3)
            );
        }
    }
}

#[test]
fn waker_registration_races_completion() {
    fault::model(Fault::None, waker_model);
}

#[test]
#[should_panic(expected = "never woken")]
fn broken_completion_without_wakes_loses_a_poll() {
    fault::model(Fault::SkipWakers, waker_model);
}

/// A handle dropped while its await waits, racing the completion on another thread: the
/// drop takes back its own waker only, so the handle still waiting is woken; and the dropped
/// handle's waker is not kept, whichever comes first.
fn dropped_waiter_model() {
    let (fut, completer) = ConcurrentFuture::<u32>::pair();
    let staying = std::sync::Arc::new(CountingWaker(AtomicUsize::new(0)));
    let leaving = std::sync::Arc::new(CountingWaker(AtomicUsize::new(0)));
    let poll_with = |handle: &mut ConcurrentFuture<u32>,
                     counter: &std::sync::Arc<CountingWaker>| {
        let waker = Waker::from(counter.clone());
        Pin::new(handle).poll(&mut Context::from_waker(&waker))
    };
    let mut stays = fut.clone();
    let mut leaves = fut;
    assert!(poll_with(&mut leaves, &leaving).is_pending());
    assert!(poll_with(&mut stays, &staying).is_pending());
    let dropper = thread::spawn(move || drop(leaves));
    let producer = thread::spawn(move || completer.set_result(3));
    dropper.join().unwrap();
    producer.join().unwrap();
    assert!(
        staying.0.load(Ordering::SeqCst) >= 1,
        "the handle still waiting was never woken"
    );
    assert_eq!(
        std::sync::Arc::strong_count(&leaving),
        1,
        "the dropped handle's waker was kept"
    );
    assert_eq!(
        poll_with(&mut stays, &staying).map(|r| r.unwrap()),
        Poll::Ready(3)
    );
}

#[test]
fn dropped_waiter_races_completion() {
    fault::model(Fault::None, dropped_waiter_model);
}

/// A done-callback registration racing completion: it runs exactly once.
fn callback_model() {
    let (fut, completer) = ConcurrentFuture::<u32>::pair();
    let calls = Arc::new(AtomicUsize::new(0));
    let producer = thread::spawn(move || completer.set_result(1));
    let c = calls.clone();
    fut.add_done_callback(move |_| {
        c.fetch_add(1, Ordering::SeqCst);
    });
    producer.join().unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the callback must run exactly once"
    );
}

#[test]
fn callback_registration_races_completion() {
    fault::model(Fault::None, callback_model);
}

#[test]
#[should_panic(expected = "exactly once")]
fn broken_registration_loses_a_callback() {
    fault::model(Fault::CallbackSkipsDoneCheck, callback_model);
}

/// `cancel_and_wait` racing the producer's completion returns only after the producer has
/// unwound, and reports what actually happened.
fn cancel_and_wait_model() {
    let (fut, completer) = ConcurrentFuture::<u32>::pair();
    let asked = Arc::new(AtomicBool::new(false));
    let unwound = Arc::new(AtomicBool::new(false));
    {
        let asked = asked.clone();
        completer.on_cancel(move || asked.store(true, Ordering::SeqCst));
    }
    assert!(completer.set_running_or_notify_cancel());
    let producer = {
        let (asked, unwound) = (asked.clone(), unwound.clone());
        thread::spawn(move || {
            // A task: it either notices the request (cleanup, then cancelled) or finishes.
            let outcome = if asked.load(Ordering::SeqCst) {
                Err(Error::cancelled(None))
            } else {
                Ok(5)
            };
            unwound.store(true, Ordering::SeqCst);
            completer.complete(outcome);
        })
    };
    let outcome = fut.cancel_and_wait(None);
    let unwound_when_returned = unwound.load(Ordering::SeqCst);
    // Every assertion after the join: a panic while a model thread is alive aborts loom.
    producer.join().unwrap();
    assert!(
        unwound_when_returned,
        "cancel_and_wait returned before the producer unwound"
    );
    match outcome {
        CancelOutcome::Cancelled => {}
        CancelOutcome::Completed(r) => assert_eq!(r.unwrap(), 5),
        CancelOutcome::TimedOut => panic!("no timeout was given"),
    }
}

#[test]
fn cancel_and_wait_races_completion() {
    fault::model(Fault::None, cancel_and_wait_model);
}

#[test]
#[should_panic(expected = "before the producer unwound")]
fn broken_cancel_and_wait_returns_early() {
    fault::model(Fault::CancelAndWaitSkipsSettle, cancel_and_wait_model);
}

loom::thread_local! {
    /// Whether the model's cancel point put its request back (the future was done).
    static PUT_BACK: std::cell::Cell<bool> = std::cell::Cell::new(false);
}

/// The cancel point of a task with a request always pending: delivered if the await
/// accepts it, else put back (recorded in `PUT_BACK`).
fn a_request_pending(pass_on: &mut dyn FnMut() -> bool) -> Option<Error> {
    if pass_on() {
        Some(Error::cancelled(None))
    } else {
        PUT_BACK.with(|p| p.set(true));
        None
    }
}

/// An await in a task with a cancel request pending (the runtime's cancel point), racing the
/// completion: either the await reads the value and the request is put back for the next
/// await point, or the request is delivered and the future is cancelled, the producer's
/// value then kept for `cancel_and_wait`. Never both, never neither: no value is thrown away
/// and no request is lost.
fn await_cancel_model() {
    let (mut fut, completer) = ConcurrentFuture::<u32>::pair();
    let producer = thread::spawn(move || completer.set_result(1));
    let _point = enter_task_cancel_point(a_request_pending);
    let polled = Pin::new(&mut fut).poll(&mut Context::from_waker(Waker::noop()));
    let put_back = PUT_BACK.with(|p| p.get());
    producer.join().unwrap();
    match polled {
        Poll::Ready(Ok(value)) => {
            assert_eq!(value, 1);
            assert!(put_back, "the value was read and the request lost");
        }
        Poll::Ready(Err(e)) => {
            assert!(e.is_cancelled() && !put_back, "{e:?}, put back: {put_back}");
            assert!(fut.cancelled());
            match fut.cancel_and_wait(None) {
                CancelOutcome::Completed(Ok(1)) => {}
                other => panic!("the producer's value was lost: {other:?}"),
            }
        }
        Poll::Pending => panic!("an await with a request pending waited"),
    }
}

#[test]
fn await_with_a_cancel_pending_races_completion() {
    fault::model(Fault::None, await_cancel_model);
}

#[test]
#[should_panic(expected = "value was lost")]
fn broken_cancel_of_a_finished_future_loses_the_value_an_await_cancelled() {
    fault::model(Fault::CancelOverridesFinished, await_cancel_model);
}
