//! `braid::bridge::ConcurrentFuture` and its `Completer` (API.md "Executors: run_in_executor
//! and the bridge crate", bridge/src/future.rs): blocking waits with and without a timeout,
//! `into_result`, `exception`, `try_result`; cancel semantics for pending, finished and
//! running futures, with and without a cancel hook; `cancel_and_wait` and its three outcomes;
//! done callbacks (exactly once, in the completing thread, at once when already done, a
//! panicking one does not stop the others); awaiting from `futures::executor::block_on` and
//! from a braid task; a dropped `Completer`; and the free functions `wait` and
//! `as_completed`. Scenarios follow CPython's `Lib/test/test_concurrent_futures`
//! (`test_future.py`, `test_wait.py`, `test_as_completed.py`); each test names the one it
//! follows where one applies.

use braid::bridge::{
    as_completed, wait, CancelOutcome, Completer, ConcurrentFuture, Error, ErrorKind, ReturnWhen,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::task::Poll;
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::WAIT;

/// Generous bound for anything that should happen "at once".
/// A short timeout that is expected to pass.
const SHORT: Duration = Duration::from_millis(50);

fn pair<T: Send + 'static>() -> (ConcurrentFuture<T>, Completer<T>) {
    ConcurrentFuture::pair()
}

// ---------------------------------------------------------------------------------------
// result / into_result / exception / try_result
// ---------------------------------------------------------------------------------------

/// `result` blocks until another thread sets the value, with and without a timeout
/// (CPython `FutureTests.test_result_with_success`).
#[test]
fn result_waits_for_a_value_set_on_another_thread() {
    for timeout in [None, Some(WAIT)] {
        let (fut, completer) = pair();
        let gate = Arc::new(Barrier::new(2));
        let g = gate.clone();
        let producer = thread::spawn(move || {
            g.wait();
            completer.set_result(42u32);
        });
        assert!(!fut.done());
        gate.wait();
        assert_eq!(fut.result(timeout).unwrap(), 42);
        assert!(fut.done());
        assert!(!fut.cancelled());
        assert!(!fut.running());
        // A clone sees the same value, and asking again gives it again.
        assert_eq!(fut.clone().result(None).unwrap(), 42);
        producer.join().unwrap();
    }
}

/// `result`, `into_result` and `exception` on a future that stays pending give a Timeout
/// error after the timeout, not before (CPython `FutureTests.test_result_with_timeout`,
/// `test_exception_with_timeout`).
#[test]
fn blocking_waits_time_out_with_kind_timeout() {
    let (fut, _completer) = pair::<u8>();

    let start = Instant::now();
    let err = fut.result(Some(SHORT)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(err.is_timeout());
    assert!(
        start.elapsed() >= SHORT,
        "returned early: {:?}",
        start.elapsed()
    );

    let start = Instant::now();
    let err = fut.exception(Some(SHORT)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(start.elapsed() >= SHORT);

    let start = Instant::now();
    let err = fut.clone().into_result(Some(SHORT)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(start.elapsed() >= SHORT);

    // A zero timeout is a poll: Timeout at once.
    assert!(fut.result(Some(Duration::ZERO)).unwrap_err().is_timeout());
    assert!(!fut.done());
}

/// `into_result` moves the value out without `Clone`; clones then get InvalidState from
/// `result` and `try_result`.
#[test]
fn into_result_moves_the_value_out() {
    /// Not `Clone`: `into_result` must not need it.
    #[derive(Debug, PartialEq)]
    struct Token(u32);

    let (fut, completer) = pair();
    let other = fut.clone();
    let producer = thread::spawn(move || completer.set_result(Token(7)));
    assert_eq!(fut.into_result(Some(WAIT)).unwrap(), Token(7));
    producer.join().unwrap();
    assert!(other.done());
    // Another into_result on a clone: the value is gone.
    assert_eq!(
        other.clone().into_result(Some(WAIT)).unwrap_err().kind(),
        ErrorKind::InvalidState
    );

    let (fut, completer) = pair::<Vec<u8>>();
    completer.set_result(vec![1, 2, 3]);
    let clone = fut.clone();
    assert_eq!(fut.into_result(None).unwrap(), [1, 2, 3]);
    assert_eq!(
        clone.result(None).unwrap_err().kind(),
        ErrorKind::InvalidState
    );
    assert_eq!(
        clone.try_result().unwrap().unwrap_err().kind(),
        ErrorKind::InvalidState
    );
}

/// `exception` gives `None` on success, the error on failure, and a Cancelled error for a
/// cancelled future (CPython `FutureTests.test_exception_with_success`,
/// `test_cancelled_exception` style).
#[test]
fn exception_reports_failure_success_and_cancellation() {
    let (ok, c) = pair::<u8>();
    c.set_result(1);
    assert!(ok.exception(Some(WAIT)).unwrap().is_none());

    let (failed, c) = pair::<u8>();
    let producer = thread::spawn(move || c.set_exception(Error::msg("disk on fire")));
    let err = failed.exception(None).unwrap().expect("an error");
    assert_eq!(err.kind(), ErrorKind::Other);
    assert_eq!(err.to_string(), "disk on fire");
    producer.join().unwrap();
    // result() gives the same error.
    assert_eq!(failed.result(None).unwrap_err().to_string(), "disk on fire");

    let (cancelled, _c) = pair::<u8>();
    assert!(cancelled.cancel());
    assert!(cancelled.exception(Some(WAIT)).unwrap_err().is_cancelled());
}

/// `try_result` never blocks: `None` while pending, then the value or the error.
#[test]
fn try_result_does_not_block() {
    let (fut, c) = pair::<u8>();
    assert!(fut.try_result().is_none());
    c.set_result(3);
    assert_eq!(fut.try_result().unwrap().unwrap(), 3);

    let (fut, c) = pair::<u8>();
    c.set_exception(Error::new(ErrorKind::Io, "eof"));
    assert_eq!(fut.try_result().unwrap().unwrap_err().kind(), ErrorKind::Io);

    let (fut, _c) = pair::<u8>();
    fut.cancel();
    assert!(fut.try_result().unwrap().unwrap_err().is_cancelled());
}

/// `running()` is true only between `set_running_or_notify_cancel` and completion
/// (CPython `FutureTests.test_running`).
#[test]
fn running_is_true_only_while_running() {
    let (fut, c) = pair::<u8>();
    assert!(!fut.running());
    assert!(c.set_running_or_notify_cancel());
    assert!(fut.running());
    assert!(!fut.done());
    c.set_result(0);
    assert!(!fut.running());
    assert!(fut.done());
}

// ---------------------------------------------------------------------------------------
// cancel
// ---------------------------------------------------------------------------------------

/// Cancelling a pending future succeeds, is visible at once, and the producer learns of it
/// and must not run; a later completion does not change the outcome (CPython
/// `FutureTests.test_cancel`, `test_set_running_or_notify_cancel`).
#[test]
fn cancel_pending_future_returns_true() {
    let (fut, c) = pair::<u8>();
    assert!(fut.cancel());
    assert!(fut.cancelled());
    assert!(fut.done());
    assert!(c.is_cancelled());
    assert!(!c.set_running_or_notify_cancel());
    let err = fut.result(Some(WAIT)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled);
    // Cancelling again reports true (as Python's cancel() on a cancelled future).
    assert!(fut.cancel());
    // The producer completing anyway changes nothing that waiters see.
    c.set_result(9);
    assert!(fut.cancelled());
    assert!(fut.result(None).unwrap_err().is_cancelled());
}

/// Cancelling a finished future fails and leaves its result alone (CPython
/// `FutureTests.test_cancel` on a FINISHED future).
#[test]
fn cancel_finished_future_returns_false() {
    let (fut, c) = pair::<u8>();
    c.set_result(5);
    assert!(!fut.cancel());
    assert!(!fut.cancelled());
    assert_eq!(fut.result(None).unwrap(), 5);

    let (failed, c) = pair::<u8>();
    c.set_exception(Error::msg("x"));
    assert!(!failed.cancel());
    assert!(!failed.cancelled());
}

/// A running future whose producer cannot be interrupted (a thread-pool job: no `on_cancel`)
/// refuses cancellation and completes normally (CPython `FutureTests.test_cancel` on a
/// RUNNING future).
#[test]
fn cancel_running_future_without_hook_returns_false() {
    let (fut, c) = pair::<u8>();
    assert!(c.set_running_or_notify_cancel());
    assert!(!fut.cancel());
    assert!(!fut.cancelled());
    assert!(fut.running());
    assert!(!c.is_cancelled());
    c.set_result(4);
    assert_eq!(fut.result(Some(WAIT)).unwrap(), 4);
}

/// A running future whose producer accepts cancellation (`on_cancel`) is cancelled and the
/// hook runs exactly once, however often `cancel` is called.
#[test]
fn cancel_running_future_with_hook_runs_hook_once() {
    let (fut, c) = pair::<u8>();
    let hooks = Arc::new(AtomicUsize::new(0));
    let h = hooks.clone();
    c.on_cancel(move || {
        h.fetch_add(1, Ordering::SeqCst);
    });
    assert!(c.set_running_or_notify_cancel());
    assert!(fut.cancel());
    assert!(fut.cancelled());
    assert!(fut.cancel());
    assert!(fut.clone().cancel());
    assert_eq!(hooks.load(Ordering::SeqCst), 1);
    assert!(c.is_cancelled());
    // The producer unwinds with a cancellation: the hook still ran only once.
    c.set_exception(Error::cancelled(None));
    assert_eq!(hooks.load(Ordering::SeqCst), 1);
    assert!(fut.result(None).unwrap_err().is_cancelled());
}

/// A hook registered after the future was already cancelled runs at once.
#[test]
fn on_cancel_after_cancel_runs_hook_at_once() {
    let (fut, c) = pair::<u8>();
    assert!(fut.cancel());
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    c.on_cancel(move || r.store(true, Ordering::SeqCst));
    assert!(ran.load(Ordering::SeqCst));
}

/// A future completed with a Cancelled error (a task cancelled on its own side) reports
/// `cancelled()`, and `cancel()` then reports true as for any cancelled future.
#[test]
fn completing_with_cancelled_error_reports_cancelled() {
    let (fut, c) = pair::<u8>();
    c.set_running_or_notify_cancel();
    c.set_exception(Error::cancelled(Some("stopped on the loop".into())));
    assert!(fut.cancelled());
    assert!(fut.done());
    let err = fut.result(Some(WAIT)).unwrap_err();
    assert!(err.is_cancelled());
    assert_eq!(err.message(), Some("stopped on the loop"));
    assert!(fut.exception(None).unwrap_err().is_cancelled());
}

// ---------------------------------------------------------------------------------------
// cancel_and_wait
// ---------------------------------------------------------------------------------------

/// A producer that sees the cancel, cleans up (slowly) and unwinds with a cancellation
/// gives `Cancelled`, and `cancel_and_wait` returns only after the cleanup finished.
#[test]
fn cancel_and_wait_returns_cancelled_after_the_producer_unwound() {
    let (fut, c) = pair::<u8>();
    let (asked_tx, asked_rx) = mpsc::channel();
    c.on_cancel(move || asked_tx.send(()).unwrap());
    assert!(c.set_running_or_notify_cancel());
    let cleaned = Arc::new(AtomicBool::new(false));
    let cl = cleaned.clone();
    let producer = thread::spawn(move || {
        asked_rx.recv().unwrap();
        thread::sleep(Duration::from_millis(100)); // the cleanup's work
        cl.store(true, Ordering::SeqCst);
        c.set_exception(Error::cancelled(None));
    });
    let outcome = fut.cancel_and_wait(Some(WAIT));
    assert!(
        cleaned.load(Ordering::SeqCst),
        "cancel_and_wait returned before the producer unwound"
    );
    assert!(matches!(outcome, CancelOutcome::Cancelled), "{outcome:?}");
    assert!(fut.cancelled());
    producer.join().unwrap();
}

/// A producer that sees the cancel but finishes anyway gives `Completed(Ok(value))`, while
/// waiters of the future still see it cancelled.
#[test]
fn cancel_and_wait_reports_a_result_produced_anyway() {
    let (fut, c) = pair::<u32>();
    let (asked_tx, asked_rx) = mpsc::channel();
    c.on_cancel(move || asked_tx.send(()).unwrap());
    assert!(c.set_running_or_notify_cancel());
    let producer = thread::spawn(move || {
        asked_rx.recv().unwrap();
        c.set_result(77);
    });
    match fut.cancel_and_wait(Some(WAIT)) {
        CancelOutcome::Completed(Ok(v)) => assert_eq!(v, 77),
        other => panic!("expected Completed(Ok(77)), got {other:?}"),
    }
    assert!(fut.cancelled());
    producer.join().unwrap();
}

/// `cancel_and_wait` on a finished future gives its result; on a pending future with no
/// producer running it gives `Cancelled` at once.
#[test]
fn cancel_and_wait_on_finished_and_unstarted_futures() {
    let (fut, c) = pair::<u8>();
    c.set_result(3);
    match fut.cancel_and_wait(Some(WAIT)) {
        CancelOutcome::Completed(Ok(3)) => {}
        other => panic!("expected Completed(Ok(3)), got {other:?}"),
    }

    let (fut, c) = pair::<u8>();
    let start = Instant::now();
    assert!(matches!(
        fut.cancel_and_wait(Some(WAIT)),
        CancelOutcome::Cancelled
    ));
    assert!(start.elapsed() < WAIT);
    assert!(!c.set_running_or_notify_cancel());
}

/// A producer that does not settle before the deadline gives `TimedOut`; the future is
/// cancelled all the same, and a second `cancel_and_wait` after it settles gives
/// `Cancelled`.
#[test]
fn cancel_and_wait_times_out_when_the_producer_does_not_settle() {
    let (fut, c) = pair::<u8>();
    c.on_cancel(|| {});
    assert!(c.set_running_or_notify_cancel());
    let start = Instant::now();
    assert!(matches!(
        fut.cancel_and_wait(Some(SHORT)),
        CancelOutcome::TimedOut
    ));
    assert!(start.elapsed() >= SHORT);
    assert!(fut.cancelled());
    assert!(c.is_cancelled());
    c.set_exception(Error::cancelled(None));
    assert!(matches!(
        fut.cancel_and_wait(Some(WAIT)),
        CancelOutcome::Cancelled
    ));
}

/// A producer that goes away (its `Completer` dropped) after a cancel counts as unwound.
#[test]
fn cancel_and_wait_returns_when_the_completer_is_dropped() {
    let (fut, c) = pair::<u8>();
    let (asked_tx, asked_rx) = mpsc::channel();
    c.on_cancel(move || asked_tx.send(()).unwrap());
    c.set_running_or_notify_cancel();
    let producer = thread::spawn(move || {
        asked_rx.recv().unwrap();
        drop(c);
    });
    assert!(matches!(
        fut.cancel_and_wait(Some(WAIT)),
        CancelOutcome::Cancelled
    ));
    producer.join().unwrap();
}

// ---------------------------------------------------------------------------------------
// done callbacks
// ---------------------------------------------------------------------------------------

/// Done callbacks run exactly once each, in the order added, in the thread that completes
/// the future (CPython `FutureTests.test_done_callback_with_result`).
#[test]
fn done_callbacks_run_once_in_the_completing_thread() {
    let (fut, c) = pair::<u8>();
    let log = Arc::new(Mutex::new(Vec::new()));
    for i in 0..3 {
        let log = log.clone();
        fut.add_done_callback(move |f| {
            let name = thread::current().name().map(str::to_owned);
            log.lock()
                .unwrap()
                .push((i, name, f.try_result().map(|r| r.unwrap())));
        });
    }
    assert!(log.lock().unwrap().is_empty());
    thread::Builder::new()
        .name("producer".into())
        .spawn(move || c.set_result(8))
        .unwrap()
        .join()
        .unwrap();
    let log = log.lock().unwrap();
    let want: Vec<_> = (0..3)
        .map(|i| (i, Some("producer".to_owned()), Some(8)))
        .collect();
    assert_eq!(*log, want);
}

/// A callback added to a finished future runs at once, in the caller's thread (CPython
/// `FutureTests.test_done_callback_already_successful`).
#[test]
fn done_callback_on_finished_future_runs_immediately() {
    let (fut, c) = pair::<u8>();
    c.set_result(1);
    let here = thread::current().id();
    let ran_on = Arc::new(Mutex::new(None));
    let r = ran_on.clone();
    fut.add_done_callback(move |f| {
        *r.lock().unwrap() = Some((thread::current().id(), f.result(None).unwrap()));
    });
    assert_eq!(*ran_on.lock().unwrap(), Some((here, 1)));
}

/// Done callbacks run on cancellation, and only once when the producer then completes
/// anyway (CPython `FutureTests.test_done_callback_with_cancel`).
#[test]
fn done_callbacks_run_once_on_cancel_then_complete() {
    let (fut, c) = pair::<u8>();
    c.on_cancel(|| {});
    c.set_running_or_notify_cancel();
    let calls = Arc::new(AtomicUsize::new(0));
    let saw_cancelled = Arc::new(AtomicBool::new(false));
    let (n, s) = (calls.clone(), saw_cancelled.clone());
    fut.add_done_callback(move |f| {
        n.fetch_add(1, Ordering::SeqCst);
        s.store(f.cancelled(), Ordering::SeqCst);
    });
    assert!(fut.cancel());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(saw_cancelled.load(Ordering::SeqCst));
    c.set_result(2);
    assert!(fut.cancel());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A panicking done callback does not stop the ones after it, nor the completion
/// (CPython `FutureTests.test_done_callback_raises`).
#[test]
fn panicking_done_callback_does_not_stop_the_others() {
    let (fut, c) = pair::<u8>();
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    fut.add_done_callback(move |_| {
        r.fetch_add(1, Ordering::SeqCst);
    });
    fut.add_done_callback(|_| panic!("callback boom (expected by the test)"));
    let r = ran.clone();
    fut.add_done_callback(move |_| {
        r.fetch_add(10, Ordering::SeqCst);
    });
    c.set_result(1);
    assert_eq!(ran.load(Ordering::SeqCst), 11);
    assert_eq!(fut.result(None).unwrap(), 1);
    // The same on an already-finished future: the panic does not reach the caller.
    fut.add_done_callback(|_| panic!("late callback boom (expected by the test)"));
    let r = ran.clone();
    fut.add_done_callback(move |_| {
        r.fetch_add(100, Ordering::SeqCst);
    });
    assert_eq!(ran.load(Ordering::SeqCst), 111);
}

// ---------------------------------------------------------------------------------------
// awaiting
// ---------------------------------------------------------------------------------------

/// Awaiting from `futures::executor::block_on` is woken by a completion on another thread.
#[test]
fn await_from_futures_block_on() {
    let (fut, c) = pair::<String>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let producer = thread::spawn(move || {
        go_rx.recv().unwrap();
        c.set_result("woken".to_owned());
    });
    let out = futures::executor::block_on(async move {
        // Register the waker first (the future is pending), then let the producer go.
        let mut fut = fut;
        let pending =
            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut fut).poll(cx).is_pending())).await;
        go_tx.send(()).unwrap();
        (pending, fut.await)
    });
    assert!(out.0, "the future was ready before the producer ran");
    assert_eq!(out.1.unwrap(), "woken");
    producer.join().unwrap();

    // An error and a cancellation come through the await too.
    let (fut, c) = pair::<u8>();
    c.set_exception(Error::msg("bad"));
    assert_eq!(
        futures::executor::block_on(fut).unwrap_err().to_string(),
        "bad"
    );
    let (fut, _c) = pair::<u8>();
    fut.cancel();
    assert!(futures::executor::block_on(fut).unwrap_err().is_cancelled());
}

/// Awaiting from a braid task is woken by a completion on a foreign thread.
#[test]
fn await_from_a_braid_task() {
    let rt = braid::Runtime::builder().workers(2).build().unwrap();
    let (fut, c) = pair::<u64>();
    let (started_tx, started_rx) = mpsc::channel();
    let task = rt
        .event_loop()
        .spawn(async move {
            started_tx.send(()).unwrap();
            fut.await
        })
        .unwrap();
    started_rx.recv_timeout(WAIT).unwrap();
    let producer = thread::spawn(move || c.set_result(1234));
    assert_eq!(rt.run_until_complete(task).unwrap(), 1234);
    producer.join().unwrap();
    rt.shutdown(WAIT).unwrap();
}

// ---------------------------------------------------------------------------------------
// a producer that goes away
// ---------------------------------------------------------------------------------------

/// Dropping the `Completer` settles the future with BrokenExecutor, waking blocked waiters,
/// awaiting ones and done callbacks.
#[test]
fn dropping_the_completer_settles_with_broken_executor() {
    // A blocked waiter and a done callback.
    let (fut, c) = pair::<u8>();
    let called = Arc::new(AtomicUsize::new(0));
    let n = called.clone();
    fut.add_done_callback(move |_| {
        n.fetch_add(1, Ordering::SeqCst);
    });
    let blocked = {
        let fut = fut.clone();
        thread::spawn(move || fut.result(Some(WAIT)))
    };
    drop(c);
    assert_eq!(
        blocked.join().unwrap().unwrap_err().kind(),
        ErrorKind::BrokenExecutor
    );
    assert_eq!(called.load(Ordering::SeqCst), 1);
    assert!(fut.done());
    assert!(!fut.cancelled());

    // An awaiting one (awaiting moves the outcome out, so it gets a future of its own).
    let (fut, c) = pair::<u8>();
    let awaited = thread::spawn(move || futures::executor::block_on(fut));
    drop(c);
    assert_eq!(
        awaited.join().unwrap().unwrap_err().kind(),
        ErrorKind::BrokenExecutor
    );
}

// ---------------------------------------------------------------------------------------
// wait
// ---------------------------------------------------------------------------------------

/// `wait(FirstCompleted)` returns as soon as one future is done (CPython
/// `WaitTests.test_first_completed`).
#[test]
fn wait_first_completed() {
    let (a, ca) = pair::<u8>();
    let (b, _cb) = pair::<u8>();
    let (c, _cc) = pair::<u8>();
    let producer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(20)); // work before the answer
        ca.set_result(1);
    });
    let start = Instant::now();
    let (done, pending) = wait(&[a, b, c], Some(WAIT), ReturnWhen::FirstCompleted);
    assert!(
        start.elapsed() < WAIT,
        "wait timed out instead of returning on the first"
    );
    assert_eq!((done.len(), pending.len()), (1, 2));
    assert_eq!(done[0].result(None).unwrap(), 1);
    assert!(pending.iter().all(|f| !f.done()));
    producer.join().unwrap();
}

/// `wait(FirstException)` does not count a cancellation as a failure: with only a
/// cancelled and a successful future done it waits for the timeout (CPython
/// `WaitTests.test_first_exception` / `test_first_exception_some_already_complete`).
#[test]
fn wait_first_exception_ignores_cancellation() {
    let (cancelled, _c1) = pair::<u8>();
    assert!(cancelled.cancel());
    let (ok, c2) = pair::<u8>();
    c2.set_result(2);
    let (pending_fut, _c3) = pair::<u8>();
    let start = Instant::now();
    let (done, pending) = wait(
        &[cancelled, ok, pending_fut],
        Some(Duration::from_millis(100)),
        ReturnWhen::FirstException,
    );
    assert!(
        start.elapsed() >= Duration::from_millis(90),
        "returned early ({:?}): a cancellation was taken for an exception",
        start.elapsed()
    );
    assert_eq!((done.len(), pending.len()), (2, 1));
}

/// `wait(FirstException)` returns once one future fails, leaving the others pending
/// (CPython `WaitTests.test_first_exception`).
#[test]
fn wait_first_exception_returns_on_failure() {
    let (cancelled, _c1) = pair::<u8>();
    assert!(cancelled.cancel());
    let (ok, c2) = pair::<u8>();
    c2.set_result(2);
    let (failing, c3) = pair::<u8>();
    let (slow, _c4) = pair::<u8>();
    let producer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(20)); // work before the failure
        c3.set_exception(Error::msg("failed"));
    });
    let start = Instant::now();
    let (done, pending) = wait(
        &[cancelled, ok, failing, slow],
        Some(WAIT),
        ReturnWhen::FirstException,
    );
    assert!(
        start.elapsed() < WAIT,
        "wait timed out instead of returning on the failure"
    );
    assert_eq!((done.len(), pending.len()), (3, 1));
    assert!(done.iter().any(|f| f
        .exception(None)
        .ok()
        .flatten()
        .is_some_and(|e| e.to_string() == "failed")));
    producer.join().unwrap();

    // With no failure at all it returns once everything is done.
    let (a, ca) = pair::<u8>();
    let (b, cb) = pair::<u8>();
    let producer = thread::spawn(move || {
        ca.set_result(1);
        cb.set_result(2);
    });
    let (done, pending) = wait(&[a, b], Some(WAIT), ReturnWhen::FirstException);
    assert_eq!((done.len(), pending.len()), (2, 0));
    producer.join().unwrap();
}

/// `wait(AllCompleted)` returns when all are done; with a timeout it returns the split so
/// far, not an error (CPython `WaitTests.test_all_completed`, `test_timeout`).
#[test]
fn wait_all_completed_and_timeout() {
    let futs: Vec<_> = (0..4).map(|_| pair::<u8>()).collect();
    let (fs, cs): (Vec<_>, Vec<_>) = futs.into_iter().unzip();
    let producer = thread::spawn(move || {
        for (i, c) in cs.into_iter().enumerate() {
            thread::sleep(Duration::from_millis(5)); // work
            c.set_result(i as u8);
        }
    });
    let (done, pending) = wait(&fs, Some(WAIT), ReturnWhen::AllCompleted);
    assert_eq!((done.len(), pending.len()), (4, 0));
    producer.join().unwrap();

    let (a, ca) = pair::<u8>();
    ca.set_result(1);
    let (b, _cb) = pair::<u8>();
    let start = Instant::now();
    let (done, pending) = wait(&[a, b], Some(SHORT), ReturnWhen::AllCompleted);
    assert!(start.elapsed() >= SHORT);
    assert_eq!((done.len(), pending.len()), (1, 1));
    assert!(done[0].done());
    assert!(!pending[0].done());

    // An empty set is trivially complete.
    let (done, pending) = wait::<u8>(&[], None, ReturnWhen::AllCompleted);
    assert!(done.is_empty() && pending.is_empty());
}

// ---------------------------------------------------------------------------------------
// as_completed
// ---------------------------------------------------------------------------------------

/// `as_completed` yields futures in the order they finish, not the order given (CPython
/// `AsCompletedTests.test_no_timeout`).
#[test]
fn as_completed_yields_in_completion_order() {
    let (a, ca) = pair::<&'static str>();
    let (b, cb) = pair::<&'static str>();
    let (c, cc) = pair::<&'static str>();
    let iter = as_completed(vec![a, b, c], Some(WAIT));
    // Completions happen one after another on one thread: c, a, b.
    let producer = thread::spawn(move || {
        cc.set_result("c");
        ca.set_result("a");
        cb.set_result("b");
    });
    let order: Vec<_> = iter.map(|f| f.unwrap().result(None).unwrap()).collect();
    assert_eq!(order, ["c", "a", "b"]);
    producer.join().unwrap();
}

/// `as_completed` with a timeout yields what finished, then one Timeout error, then stops
/// (CPython `AsCompletedTests.test_zero_timeout`).
#[test]
fn as_completed_timeout_yields_one_error_then_stops() {
    let (a, ca) = pair::<u8>();
    ca.set_result(1);
    let (b, _cb) = pair::<u8>();
    let (c, _cc) = pair::<u8>();
    let start = Instant::now();
    let mut iter = as_completed(vec![a, b, c], Some(SHORT));
    assert_eq!(iter.next().unwrap().unwrap().result(None).unwrap(), 1);
    let err = iter.next().unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(start.elapsed() >= SHORT);
    assert!(iter.next().is_none());
    assert!(iter.next().is_none());
}

/// A future given twice to `as_completed` is yielded once (CPython
/// `AsCompletedTests.test_duplicate_futures`, bpo-20367).
#[test]
fn as_completed_yields_a_duplicated_future_once() {
    let (a, ca) = pair::<u8>();
    let (b, cb) = pair::<u8>();
    ca.set_result(1);
    cb.set_result(2);
    let mut got: Vec<u8> = as_completed(vec![a.clone(), a, b], Some(WAIT))
        .map(|f| f.unwrap().result(None).unwrap())
        .collect();
    got.sort_unstable();
    assert_eq!(got, [1, 2]);
}

/// Once `into_result` moved a failed future's outcome out, `exception()` on a clone does not
/// report success: it gives InvalidState (as `result()` does) or the error itself.
#[test]
fn exception_after_outcome_moved_out_does_not_report_success() {
    let (fut, c) = pair::<u8>();
    c.set_exception(Error::msg("bad"));
    let clone = fut.clone();
    assert_eq!(fut.into_result(None).unwrap_err().to_string(), "bad");
    assert_eq!(
        clone.result(None).unwrap_err().kind(),
        ErrorKind::InvalidState
    );
    match clone.exception(Some(WAIT)) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::InvalidState, "{e}"),
        Ok(Some(e)) => assert_eq!(e.to_string(), "bad"),
        Ok(None) => panic!("exception() reports success for a future that failed"),
    }
}

/// Counts the wakes it receives; its `Arc`'s strong count tells how many wakers of it live.
#[derive(Default)]
struct WakeProbe(AtomicUsize);

impl std::task::Wake for WakeProbe {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Polls `fut` once with a waker of `probe`; true if it is still pending.
fn pending_after_poll_with<T: Send + 'static>(
    fut: &mut ConcurrentFuture<T>,
    probe: &Arc<WakeProbe>,
) -> bool {
    let waker = std::task::Waker::from(probe.clone());
    let mut cx = std::task::Context::from_waker(&waker);
    Pin::new(fut).poll(&mut cx).is_pending()
}

/// A handle dropped while its await waits (the losing arm of a select) takes its waker
/// back, so a long-lived future raced by many tasks does not keep them all alive; a handle
/// polled again keeps one entry, and the handles still waiting are woken when it completes.
#[test]
fn a_dropped_waiting_handle_gives_back_its_waker() {
    let (fut, completer) = pair::<u8>();
    let gone = Arc::<WakeProbe>::default();
    for _ in 0..3 {
        let mut clone = fut.clone();
        assert!(pending_after_poll_with(&mut clone, &gone));
        assert!(pending_after_poll_with(&mut clone, &gone));
        assert_eq!(Arc::strong_count(&gone), 2, "one waker per waiting handle");
    }
    assert_eq!(
        Arc::strong_count(&gone),
        1,
        "a dropped handle left its waker"
    );

    let stays = Arc::<WakeProbe>::default();
    let mut waiting = fut.clone();
    assert!(pending_after_poll_with(&mut waiting, &stays));
    completer.set_result(5);
    assert_eq!(
        stays.0.load(Ordering::SeqCst),
        1,
        "the waiting handle was not woken"
    );
    assert!(!pending_after_poll_with(&mut waiting, &stays));
    assert_eq!(gone.0.load(Ordering::SeqCst), 0);
}

/// On a loop thread of the runtime that must complete a future, `wait` and `as_completed`
/// do not block for it (with one loop that is a deadlock for good), as `result` refuses to:
/// `wait` returns at once with it pending, `as_completed` yields one `InvalidState` error and
/// stops. A future that is already done is still reported done.
#[test]
fn wait_and_as_completed_on_a_loop_thread_do_not_block_for_its_own_future() {
    let rt = common::runtime(1);
    let lp = rt.event_loop();
    let (report_tx, report) = mpsc::channel();
    let checks = lp.clone().spawn(async move {
        let gate = braid::Promise::<()>::new();
        let opened = gate.clone();
        let own = lp.run_coroutine_threadsafe(async move { opened.await })?;
        let (ready, completer) = pair::<()>();
        completer.set_result(());
        assert_eq!(
            own.result(None).unwrap_err().kind(),
            ErrorKind::InvalidState
        );
        report_tx.send("result refused").unwrap();

        let (done, pending) = wait(
            &[own.clone(), ready.clone()],
            None,
            ReturnWhen::AllCompleted,
        );
        assert_eq!((done.len(), pending.len()), (1, 1));
        assert!(!pending[0].done());
        report_tx.send("wait returned").unwrap();

        let mut each = as_completed(vec![ready, own.clone()], None);
        assert!(each.next().expect("the done one").is_ok());
        let refused = each.next().expect("an error instead of a wait");
        assert_eq!(refused.unwrap_err().kind(), ErrorKind::InvalidState);
        assert!(each.next().is_none());
        report_tx.send("as_completed returned").unwrap();

        gate.set_result(())?;
        own.await
    });
    let checks = checks.expect("an open loop");
    for step in ["result refused", "wait returned", "as_completed returned"] {
        match report.recv_timeout(WAIT) {
            Ok(got) => assert_eq!(got, step),
            Err(_) => {
                // The only loop thread is blocked for good: leak the runtime, fail the test.
                std::mem::forget(rt);
                panic!("blocked before: {step}");
            }
        }
    }
    let outcome = rt.run_until_complete(checks);
    outcome.expect("the checks passed");
}

/// `Completed` moves the result out, as `into_result` does: the clones' `result()` then
/// fail with InvalidState, and so does a second `cancel_and_wait`, for a future that had
/// finished and for one whose producer finished after the cancel. The second call on the
/// latter said `Cancelled`, as if the work had been cancelled.
#[test]
fn cancel_and_wait_moves_the_result_out_and_a_second_call_says_so() {
    fn moved_out(outcome: CancelOutcome<u32>) -> bool {
        matches!(
            outcome,
            CancelOutcome::Completed(Err(e)) if e.kind() == ErrorKind::InvalidState
        )
    }

    let (fut, c) = pair::<u32>();
    let other = fut.clone();
    c.set_result(5);
    assert!(matches!(
        fut.cancel_and_wait(Some(WAIT)),
        CancelOutcome::Completed(Ok(5))
    ));
    assert_eq!(
        other.result(Some(WAIT)).unwrap_err().kind(),
        ErrorKind::InvalidState
    );
    assert!(moved_out(other.cancel_and_wait(Some(WAIT))));

    let (fut, c) = pair::<u32>();
    c.on_cancel(|| {});
    assert!(c.set_running_or_notify_cancel());
    assert!(fut.cancel());
    c.set_result(9);
    assert!(matches!(
        fut.cancel_and_wait(Some(WAIT)),
        CancelOutcome::Completed(Ok(9))
    ));
    assert!(moved_out(fut.clone().cancel_and_wait(Some(WAIT))));
    // The future's own outcome stays the cancellation.
    assert!(fut.cancelled());
    assert!(fut.result(Some(WAIT)).unwrap_err().is_cancelled());
}

// ---------------------------------------------------------------------------------------
// awaited in a braid task: a cancellation point (asyncio's `wrap_future`)
// ---------------------------------------------------------------------------------------

/// Runs `body` as a task of `rt` and returns its outcome; panics, naming `what`, if it has
/// not finished within `WAIT` (the await ignored a cancel and hangs).
fn outcome_of<T, F>(rt: &braid::Runtime, what: &str, body: F) -> braid::Result<T>
where
    F: Future<Output = braid::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let outcome = rt.event_loop().run_coroutine_threadsafe(body).unwrap();
    match outcome.into_result(Some(WAIT)) {
        Err(e) if e.is_timeout() => panic!("{what}: still waiting after {WAIT:?}"),
        other => other,
    }
}

/// Spawns a task on `rt` that awaits `awaited`, cancels it once it runs, and checks that it
/// ended Cancelled at once, without waiting for the future to complete. Returns the task.
fn cancel_a_task_awaiting(rt: &braid::Runtime, awaited: ConcurrentFuture<u32>) -> braid::Task<u32> {
    let (started_tx, started) = mpsc::channel();
    let task = rt
        .event_loop()
        .spawn(async move {
            started_tx.send(()).unwrap();
            awaited.await
        })
        .unwrap();
    let (ended_tx, ended) = mpsc::channel();
    task.add_done_callback(move |t| {
        let _ = ended_tx.send(t.cancelled());
    });
    started.recv_timeout(WAIT).unwrap();
    assert!(task.cancel());
    assert_eq!(
        ended.recv_timeout(WAIT),
        Ok(true),
        "the task did not end cancelled at once"
    );
    task
}

/// Cancelling a task that awaits a `ConcurrentFuture` cancels the future (its completer
/// sees it) and ends the task Cancelled at once, with the completer still alive: the await
/// used to wait for the future to complete, whatever the task was told.
#[test]
fn cancelling_a_task_awaiting_a_concurrent_future_cancels_both_at_once() {
    let rt = common::runtime(2);
    let (fut, completer) = pair::<u32>();
    let task = cancel_a_task_awaiting(&rt, fut);
    assert!(completer.is_cancelled(), "the future was not cancelled");
    let err = rt.run_until_complete(task).unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");
    drop(completer);
    rt.shutdown(WAIT).unwrap();
}

/// `timeout` and `wait_for` around an awaited `ConcurrentFuture` end with Timeout at their
/// deadline and cancel the future: one from `pair()` that nobody completes, and one from
/// `run_coroutine_threadsafe`, whose task is then cancelled and unwinds. Both used to wait
/// for the future to complete (for ever, and 3 s in the hunter's repro).
#[test]
fn timeout_and_wait_for_on_a_concurrent_future_end_at_their_deadline() {
    let rt = common::runtime(2);
    let (never, never_completer) = pair::<u32>();
    let (also_never, also_never_completer) = pair::<u32>();
    let slow = rt
        .event_loop()
        .run_coroutine_threadsafe(async {
            braid::sleep(Duration::from_secs(3600)).await?;
            Ok(1u32)
        })
        .unwrap();
    let slow_watch = slow.clone();
    let deadline = Duration::from_millis(20);
    let (timed, waited, slow_waited) = outcome_of(&rt, "timeout/wait_for", async move {
        let timed = braid::timeout(deadline, never).await;
        let waited = braid::wait_for(also_never, Some(deadline)).await;
        let slow_waited = braid::wait_for(slow, Some(deadline)).await;
        Ok((timed, waited, slow_waited))
    })
    .unwrap();
    for (what, outcome) in [
        ("timeout", timed),
        ("wait_for", waited),
        ("wait_for(run_coroutine_threadsafe)", slow_waited),
    ] {
        let err = outcome.expect_err(what);
        assert!(err.is_timeout(), "{what}: {err:?}");
    }
    assert!(never_completer.is_cancelled());
    assert!(also_never_completer.is_cancelled());
    assert!(slow_watch.cancelled());
    // The coroutine behind it was cancelled too, and unwinds.
    assert!(matches!(
        slow_watch.cancel_and_wait(Some(WAIT)),
        CancelOutcome::Cancelled
    ));
    rt.shutdown(WAIT).unwrap();
}

/// The outcome of a `ConcurrentFuture` that is done already is the await's, even with a
/// cancel request pending (as for an awaited `Task` that is done): the request is delivered
/// at the next await point instead. Pending, the future takes the request: it is cancelled,
/// and the await ends with the request's error, message included.
#[test]
fn an_awaited_concurrent_future_gives_its_outcome_if_done_and_takes_a_cancel_if_not() {
    let rt = common::runtime(2);
    let (done, done_completer) = pair::<u32>();
    done_completer.set_result(7);
    let (pending, completer) = pair::<u32>();
    let (value, next, cancelled) = outcome_of(&rt, "self-cancelled awaits", async move {
        let me = braid::current_task().expect("a task");
        me.cancel();
        let value = done.await;
        let next = braid::yield_now().await;
        me.cancel_with("stop now");
        let cancelled = pending.await;
        Ok((value, next, cancelled))
    })
    .unwrap();
    assert_eq!(value.unwrap(), 7);
    assert!(next.unwrap_err().is_cancelled());
    let err = cancelled.unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");
    assert_eq!(err.message(), Some("stop now"));
    assert!(completer.is_cancelled());
    rt.shutdown(WAIT).unwrap();
}

/// A task awaiting a thread-pool job that is already running (and so cannot be cancelled)
/// still ends Cancelled at once when it is cancelled, as with `wrap_future`; the job runs to
/// its end, and its future keeps its value.
#[test]
fn cancelling_a_task_awaiting_a_running_pool_job_ends_the_task_and_not_the_job() {
    let rt = common::runtime(2);
    let pool = braid::bridge::ThreadPool::new(1);
    let (job_started_tx, job_started) = mpsc::channel();
    let (release_tx, release) = mpsc::channel::<()>();
    let job = pool.submit(move || {
        job_started_tx.send(()).unwrap();
        let _ = release.recv_timeout(WAIT);
        11u32
    });
    job_started.recv_timeout(WAIT).unwrap();
    cancel_a_task_awaiting(&rt, job.clone());
    assert!(
        !job.done() && !job.cancelled(),
        "the running job was stopped"
    );
    release_tx.send(()).unwrap();
    assert_eq!(job.result(Some(WAIT)).unwrap(), 11);
    rt.shutdown(WAIT).unwrap();
}

/// A runtime shut down with a task awaiting a `ConcurrentFuture` nobody completes finishes
/// in time (the task's cancel reaches it), and `cancel_and_wait` on the
/// `run_coroutine_threadsafe` future of such a task returns Cancelled: both used to wait for
/// the inner future (the shutdown timed out, `cancel_and_wait` returned `TimedOut`).
#[test]
fn shutdown_and_cancel_and_wait_finish_a_task_awaiting_a_concurrent_future() {
    let rt = common::runtime(2);
    let (first, first_completer) = pair::<u32>();
    let (started_tx, started) = mpsc::channel();
    let started_again = started_tx.clone();
    let outer = rt
        .event_loop()
        .run_coroutine_threadsafe(async move {
            started_tx.send(()).unwrap();
            first.await
        })
        .unwrap();
    started.recv_timeout(WAIT).unwrap();
    let unwound = outer.cancel_and_wait(Some(WAIT));
    assert!(
        matches!(unwound, CancelOutcome::Cancelled),
        "cancel_and_wait: {unwound:?}"
    );
    assert!(first_completer.is_cancelled());

    let (second, second_completer) = pair::<u32>();
    let left = rt
        .event_loop()
        .spawn(async move {
            started_again.send(()).unwrap();
            second.await
        })
        .unwrap();
    started.recv_timeout(WAIT).unwrap();
    rt.shutdown(WAIT)
        .expect("the shutdown finished the task in time");
    assert!(left.cancelled());
    assert!(second_completer.is_cancelled());
}
