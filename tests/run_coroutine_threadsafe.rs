//! `EventLoop::run_coroutine_threadsafe` seen from threads the runtime does not own (API.md
//! "Event loops" and "Executors"): the coroutine's value, error and panic reach the foreign
//! side; a cancel from the foreign side is delivered at the coroutine's await point and
//! `cancel_and_wait` returns after its cleanup; a task cancelled on the loop side shows as
//! cancelled on the foreign side; a shut-down runtime refuses with Closed at once; blocking on
//! the future from one of the runtime's loop threads is InvalidState at once; and every
//! future still pending at shutdown settles. Scenarios follow CPython's
//! `test_asyncio/test_tasks.py` `RunCoroutineThreadsafeTests` (`test_run_coroutine_threadsafe`,
//! `..._with_exception`, `..._task_cancelled`, `..._task_factory_exception`); each test names
//! the one it follows where one applies.

use braid::bridge::{CancelOutcome, ConcurrentFuture, Error, ErrorKind};
use braid::TaskRef;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{runtime, WAIT};

/// Generous bound for anything that should happen "soon".
/// Long enough never to end during a test.
const HOUR: Duration = Duration::from_secs(3600);

/// Coroutines submitted from several plain threads deliver their values there (CPython
/// `RunCoroutineThreadsafeTests.test_run_coroutine_threadsafe`).
#[test]
fn result_reaches_foreign_threads() {
    let rt = runtime(2);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let lp = rt.event_loop();
            thread::spawn(move || {
                let futs: Vec<ConcurrentFuture<u64>> = (0..10u64)
                    .map(|i| {
                        lp.run_coroutine_threadsafe(async move {
                            braid::sleep(Duration::from_millis(1)).await?;
                            braid::yield_now().await?;
                            Ok(t * 100 + i)
                        })
                        .unwrap()
                    })
                    .collect();
                futs.into_iter()
                    .map(|f| f.result(Some(WAIT)).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for (t, h) in threads.into_iter().enumerate() {
        let t = t as u64;
        assert_eq!(
            h.join().unwrap(),
            (0..10).map(|i| t * 100 + i).collect::<Vec<_>>()
        );
    }
    // into_result and awaiting from a foreign executor work too.
    let lp = rt.event_loop();
    let f = lp
        .run_coroutine_threadsafe(async { Ok(String::from("moved")) })
        .unwrap();
    assert_eq!(f.into_result(Some(WAIT)).unwrap(), "moved");
    let f = lp.run_coroutine_threadsafe(async { Ok(5u8) }).unwrap();
    assert_eq!(futures::executor::block_on(f).unwrap(), 5);
    rt.shutdown(WAIT).unwrap();
}

/// The coroutine's error reaches the foreign side unchanged (CPython
/// `RunCoroutineThreadsafeTests.test_run_coroutine_threadsafe_with_exception`).
#[test]
fn error_reaches_foreign_thread() {
    let rt = runtime(2);
    let lp = rt.event_loop();
    let f = thread::spawn(move || {
        lp.run_coroutine_threadsafe(async {
            braid::yield_now().await?;
            Err::<u8, _>(Error::new(ErrorKind::Io, "the disk said no"))
        })
        .unwrap()
        .result(Some(WAIT))
    })
    .join()
    .unwrap();
    let err = f.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert_eq!(err.message(), Some("the disk said no"));
    rt.shutdown(WAIT).unwrap();
}

/// A panic in the coroutine becomes a Panicked error on the foreign side, and the loop
/// thread survives to run the next coroutine.
#[test]
fn panic_reaches_foreign_thread_as_panicked() {
    let rt = runtime(1);
    let lp = rt.event_loop();
    let (first, second) = thread::spawn(move || {
        let f = lp
            .run_coroutine_threadsafe(async {
                braid::yield_now().await?;
                if true {
                    panic!("coroutine blew up (expected by the test)");
                }
                Ok(0u8)
            })
            .unwrap();
        let first = f.result(Some(WAIT));
        let second = lp
            .run_coroutine_threadsafe(async { Ok(1u8) })
            .unwrap()
            .result(Some(WAIT));
        (first, second)
    })
    .join()
    .unwrap();
    let err = first.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked);
    assert!(
        err.message()
            .is_some_and(|m| m.contains("coroutine blew up")),
        "{err}"
    );
    assert_eq!(second.unwrap(), 1);
    rt.shutdown(WAIT).unwrap();
}

/// `cancel_and_wait` from the foreign side cancels the task at its await point; the task's
/// cleanup (which itself awaits) has run when it returns `Cancelled` (CPython
/// `RunCoroutineThreadsafeTests.test_run_coroutine_threadsafe_task_cancelled`, plus the
/// wait for the cleanup that `cancel_and_wait` adds).
#[test]
fn foreign_cancel_runs_cleanup_before_cancel_and_wait_returns() {
    let rt = runtime(2);
    let lp = rt.event_loop();
    let (started_tx, started_rx) = mpsc::channel();
    let (cleanup_tx, cleanup_rx) = mpsc::channel();
    let cleaned = Arc::new(AtomicBool::new(false));
    let (c, seen) = (cleaned.clone(), cleaned.clone());
    let foreign = thread::spawn(move || {
        let f = lp
            .run_coroutine_threadsafe(async move {
                started_tx.send(()).unwrap();
                match braid::sleep(HOUR).await {
                    Ok(()) => Ok("slept an hour"),
                    Err(e) => {
                        // Cleanup that awaits, then records that it ran.
                        braid::sleep(Duration::from_millis(20)).await?;
                        c.store(true, Ordering::SeqCst);
                        cleanup_tx.send(e.is_cancelled()).unwrap();
                        Err(e)
                    }
                }
            })
            .unwrap();
        started_rx
            .recv_timeout(WAIT)
            .expect("the coroutine started");
        let outcome = f.cancel_and_wait(Some(WAIT));
        let cleaned_when_returned = seen.load(Ordering::SeqCst);
        (outcome, cleaned_when_returned, f.cancelled())
    });
    let (outcome, cleaned_when_returned, cancelled) = foreign.join().unwrap();
    assert!(
        cleaned_when_returned,
        "cancel_and_wait returned before the cleanup ran"
    );
    assert!(matches!(outcome, CancelOutcome::Cancelled), "{outcome:?}");
    assert!(cancelled);
    assert!(
        cleanup_rx.try_recv().expect("cleanup reported"),
        "the coroutine saw something other than a cancellation"
    );
    rt.shutdown(WAIT).unwrap();
}

/// `cancel()` alone from the foreign side marks the future cancelled at once and the task
/// is cancelled on the loop (its cleanup runs).
#[test]
fn foreign_cancel_marks_future_cancelled_at_once() {
    let rt = runtime(2);
    let (started_tx, started_rx) = mpsc::channel();
    let (cleanup_tx, cleanup_rx) = mpsc::channel();
    let f = rt
        .event_loop()
        .run_coroutine_threadsafe(async move {
            started_tx.send(()).unwrap();
            let r = braid::sleep(HOUR).await;
            cleanup_tx.send(r.is_err()).unwrap();
            r
        })
        .unwrap();
    started_rx.recv_timeout(WAIT).unwrap();
    assert!(f.cancel());
    assert!(f.cancelled());
    assert!(f.done());
    assert!(f.result(Some(WAIT)).unwrap_err().is_cancelled());
    assert!(cleanup_rx
        .recv_timeout(WAIT)
        .expect("the task was woken by the cancel"));
    rt.shutdown(WAIT).unwrap();
}

/// A coroutine cancelled from the foreign side before it started never runs its body, and
/// `cancel_and_wait` then reports `Cancelled` (asyncio: a task cancelled before its first
/// step finishes cancelled without running).
#[test]
fn foreign_cancel_before_start_never_runs_the_body() {
    let rt = runtime(1);
    let lp = rt.event_loop();
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    // Occupies the only loop thread until released.
    let blocker = lp
        .run_coroutine_threadsafe(async move {
            started_tx.send(()).unwrap();
            release_rx.recv_timeout(WAIT).unwrap();
            Ok(())
        })
        .unwrap();
    started_rx.recv_timeout(WAIT).unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let f = lp
        .run_coroutine_threadsafe(async move {
            r.store(true, Ordering::SeqCst);
            Ok(1u8)
        })
        .unwrap();
    assert!(f.cancel());
    assert!(f.cancelled());
    release_tx.send(()).unwrap();
    assert!(matches!(
        f.cancel_and_wait(Some(WAIT)),
        CancelOutcome::Cancelled
    ));
    blocker.result(Some(WAIT)).unwrap();
    assert!(!ran.load(Ordering::SeqCst), "a cancelled coroutine ran");
    rt.shutdown(WAIT).unwrap();
}

/// A coroutine that catches the cancellation and returns a value anyway: the foreign side's
/// `cancel_and_wait` reports `Completed(Ok(value))` (the future itself stays cancelled, as
/// `cancel()` said), and a cleanup slower than the deadline gives `TimedOut`.
#[test]
fn foreign_cancel_refused_or_slow() {
    let rt = runtime(2);
    let lp = rt.event_loop();

    let (started_tx, started_rx) = mpsc::channel();
    let refuses = lp
        .run_coroutine_threadsafe(async move {
            started_tx.send(()).unwrap();
            match braid::sleep(HOUR).await {
                Ok(()) => Ok(1u8),
                Err(_) => Ok(2u8), // swallows the cancellation
            }
        })
        .unwrap();
    started_rx.recv_timeout(WAIT).unwrap();
    match refuses.cancel_and_wait(Some(WAIT)) {
        CancelOutcome::Completed(Ok(2)) => {}
        other => panic!("expected Completed(Ok(2)), got {other:?}"),
    }
    assert!(refuses.cancelled());

    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let slow = lp
        .run_coroutine_threadsafe(async move {
            started_tx.send(()).unwrap();
            let r = braid::sleep(HOUR).await;
            // A cleanup that takes until released (bounded so the test cannot hang).
            braid::to_thread(move || release_rx.recv_timeout(WAIT))
                .await?
                .ok();
            r.map(|()| 0u8)
        })
        .unwrap();
    started_rx.recv_timeout(WAIT).unwrap();
    let start = Instant::now();
    assert!(matches!(
        slow.cancel_and_wait(Some(Duration::from_millis(50))),
        CancelOutcome::TimedOut
    ));
    assert!(start.elapsed() >= Duration::from_millis(50));
    assert!(slow.cancelled());
    release_tx.send(()).unwrap();
    assert!(matches!(
        slow.cancel_and_wait(Some(WAIT)),
        CancelOutcome::Cancelled
    ));
    rt.shutdown(WAIT).unwrap();
}

/// A task cancelled on the loop side (by a loop callback holding its `TaskRef`) shows as
/// cancelled on the foreign side.
#[test]
fn loop_side_cancel_shows_as_cancelled_on_foreign_side() {
    let rt = runtime(2);
    let lp = rt.event_loop();
    let (task_tx, task_rx) = mpsc::channel::<TaskRef>();
    let f = lp
        .run_coroutine_threadsafe(async move {
            task_tx.send(braid::current_task().unwrap()).unwrap();
            braid::sleep(HOUR).await?;
            Ok(0u8)
        })
        .unwrap();
    let task = task_rx.recv_timeout(WAIT).unwrap();
    lp.call_soon_threadsafe(move || {
        task.cancel_with("cancelled by the loop");
    })
    .unwrap();
    let err = f.result(Some(WAIT)).unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    assert!(f.cancelled());
    assert_eq!(err.message(), Some("cancelled by the loop"));
    rt.shutdown(WAIT).unwrap();
}

/// A coroutine that ends by returning a Cancelled error of its own shows as cancelled too.
#[test]
fn coroutine_returning_cancelled_shows_as_cancelled() {
    let rt = runtime(1);
    let f = rt
        .event_loop()
        .run_coroutine_threadsafe(async { Err::<u8, _>(Error::cancelled(None)) })
        .unwrap();
    assert!(f.result(Some(WAIT)).unwrap_err().is_cancelled());
    assert!(f.cancelled());
    rt.shutdown(WAIT).unwrap();
}

/// Submitting to a runtime that was shut down fails at once with Closed, and the coroutine
/// never runs (CPython `test_run_coroutine_threadsafe` on a closed loop raises).
#[test]
fn submit_after_shutdown_fails_with_closed() {
    let rt = runtime(2);
    let loops = rt.event_loops();
    rt.shutdown(WAIT).unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    for lp in loops {
        let r = ran.clone();
        let err = thread::spawn(move || {
            lp.run_coroutine_threadsafe(async move {
                r.store(true, Ordering::SeqCst);
                Ok(())
            })
            .unwrap_err()
        })
        .join()
        .unwrap();
        assert_eq!(err.kind(), ErrorKind::Closed);
    }
    assert!(!ran.load(Ordering::SeqCst));
}

/// `result()` and `into_result()` called on a worker loop thread of the runtime that must
/// complete the future return InvalidState at once instead of deadlocking (inside a
/// `call_soon_threadsafe` callback and inside a task).
#[test]
fn blocking_on_a_loop_thread_is_invalid_state() {
    let rt = runtime(2);
    let lp = rt.event_loop();
    let pending = lp
        .run_coroutine_threadsafe(async {
            braid::sleep(HOUR).await?;
            Ok(0u8)
        })
        .unwrap();

    let (tx, rx) = mpsc::channel();
    let f = pending.clone();
    lp.call_soon_threadsafe(move || {
        let start = Instant::now();
        let r = f.result(Some(WAIT));
        tx.send((r.map_err(|e| e.kind()), start.elapsed())).unwrap();
    })
    .unwrap();
    let (r, took) = rx.recv_timeout(WAIT * 2).unwrap();
    assert_eq!(r, Err(ErrorKind::InvalidState));
    assert!(took < Duration::from_secs(1), "took {took:?}");

    for other in rt.event_loops() {
        let f = pending.clone();
        let task = other
            .spawn(async move {
                let start = Instant::now();
                let r = f.into_result(Some(WAIT));
                Ok((r.map_err(|e| e.kind()), start.elapsed()))
            })
            .unwrap();
        let (r, took) = rt.run_until_complete(task).unwrap();
        assert_eq!(r, Err(ErrorKind::InvalidState));
        assert!(took < Duration::from_secs(1), "took {took:?}");
    }

    // Awaiting it on the loop is the right way, and a foreign thread may block on it.
    assert!(!pending.done());
    let f = pending.clone();
    let waiter = thread::spawn(move || f.result(Some(WAIT)));
    assert!(pending.cancel());
    assert!(waiter.join().unwrap().unwrap_err().is_cancelled());
    rt.shutdown(WAIT).unwrap();
}

/// A done callback runs on the loop thread that completed the future, and `result()` there
/// gives the value: the future is done, so nothing would block (CPython's done callbacks
/// routinely call `fut.result()`). Likewise `result()` on a loop thread once `done()`.
#[test]

fn result_of_a_done_future_on_a_loop_thread_is_the_value() {
    let rt = runtime(1);
    let lp = rt.event_loop();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let fut = lp
        .run_coroutine_threadsafe(async move {
            braid::to_thread(move || release_rx.recv_timeout(WAIT))
                .await?
                .ok();
            Ok(17u8)
        })
        .unwrap();
    let (tx, rx) = mpsc::channel();
    fut.add_done_callback(move |f| {
        let on = thread::current().name().map(str::to_owned);
        tx.send((on, f.result(None).map_err(|e| e.kind()))).unwrap();
    });
    release_tx.send(()).unwrap();
    let (on, r) = rx.recv_timeout(WAIT).unwrap();
    assert!(
        on.is_some_and(|n| n.starts_with("braid-loop")),
        "callback ran elsewhere"
    );
    assert_eq!(
        r,
        Ok(17),
        "result() of a done future refused on a loop thread"
    );

    let f = fut.clone();
    let task = lp
        .spawn(async move {
            assert!(f.done());
            Ok(f.result(Some(WAIT)).map_err(|e| e.kind()))
        })
        .unwrap();
    assert_eq!(rt.run_until_complete(task).unwrap(), Ok(17));
    rt.shutdown(WAIT).unwrap();
}

/// At shutdown every pending future settles, by the time `shutdown` returns, with a
/// Cancelled error (not a Timeout): a coroutine sleeping for an hour.
#[test]
fn pending_future_settles_cancelled_at_shutdown() {
    let rt = runtime(2);
    let (started_tx, started_rx) = mpsc::channel();
    let sleeper = rt
        .event_loop()
        .run_coroutine_threadsafe(async move {
            started_tx.send(()).unwrap();
            braid::sleep(HOUR).await?;
            Ok(2u8)
        })
        .unwrap();
    started_rx.recv_timeout(WAIT).unwrap();
    rt.shutdown(WAIT).unwrap();
    assert!(sleeper.done(), "still pending after shutdown returned");
    let start = Instant::now();
    let err = sleeper.result(Some(WAIT)).unwrap_err();
    assert!(start.elapsed() < WAIT);
    assert!(!err.is_timeout(), "{err}");
    assert!(err.is_cancelled(), "{err}");
    assert!(sleeper.cancelled());
}

/// At shutdown a coroutine that never got to start (its only loop was busy) settles with
/// Closed (or Cancelled), never a Timeout, while the one occupying the loop is cancelled.
#[test]
fn unstarted_futures_settle_at_shutdown() {
    let rt = runtime(1);
    let lp = rt.event_loop();
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let blocker = lp
        .run_coroutine_threadsafe(async move {
            started_tx.send(()).unwrap();
            // Blocks the only loop thread (deliberately) until shutdown has begun; if the
            // pause is too short the coroutines below may run, which the checks allow.
            let _ = release_rx.recv_timeout(Duration::from_millis(300));
            braid::sleep(HOUR).await?;
            Ok(0u8)
        })
        .unwrap();
    started_rx.recv_timeout(WAIT).unwrap();
    let quick = lp.run_coroutine_threadsafe(async { Ok(1u8) }).unwrap();
    let sleeper = lp
        .run_coroutine_threadsafe(async {
            braid::sleep(HOUR).await?;
            Ok(2u8)
        })
        .unwrap();
    rt.shutdown(WAIT).unwrap();
    drop(release_tx);
    for (name, f) in [
        ("blocker", &blocker),
        ("quick", &quick),
        ("sleeper", &sleeper),
    ] {
        assert!(f.done(), "{name}: still pending after shutdown returned");
        match f.result(Some(WAIT)) {
            Ok(v) => assert_eq!((name, v), ("quick", 1)),
            Err(e) => assert!(
                e.is_cancelled() || e.kind() == ErrorKind::Closed,
                "{name}: {e}"
            ),
        }
    }
    assert!(blocker.result(None).unwrap_err().is_cancelled());
}

/// Submissions from foreign threads racing shutdown are either refused with Closed or
/// accepted and settled: none is left pending (API.md: "no window in which a submission is
/// accepted and then silently dropped").
#[test]
fn submissions_racing_shutdown_all_settle() {
    for _round in 0..5 {
        let rt = runtime(2);
        let go = Arc::new(std::sync::Barrier::new(5));
        let submitters: Vec<_> = (0..4)
            .map(|_| {
                let lp = rt.event_loop();
                let go = go.clone();
                thread::spawn(move || {
                    go.wait();
                    let mut accepted = Vec::new();
                    for i in 0..2_000u32 {
                        match lp.run_coroutine_threadsafe(async move {
                            braid::yield_now().await?;
                            Ok(i)
                        }) {
                            Ok(f) => accepted.push((i, f)),
                            Err(e) => {
                                assert_eq!(e.kind(), ErrorKind::Closed);
                                break;
                            }
                        }
                    }
                    accepted
                })
            })
            .collect();
        go.wait();
        thread::sleep(Duration::from_millis(2)); // let some submissions in first
        rt.shutdown(WAIT).unwrap();
        for s in submitters {
            for (i, f) in s.join().unwrap() {
                match f.result(Some(WAIT)) {
                    Ok(v) => assert_eq!(v, i),
                    Err(e) => assert!(
                        e.is_cancelled() || e.kind() == ErrorKind::Closed,
                        "submission {i}: {e}"
                    ),
                }
            }
        }
    }
}
