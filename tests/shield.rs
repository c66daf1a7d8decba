//! `shield` with asyncio's semantics (API.md "Combinators", issue 4): the inner task's value,
//! error or cancellation passes through; when the awaiting task is cancelled, the await
//! returns `Cancelled` at once and the inner task keeps running to completion, its result
//! still readable through `Shield::task`/`Shield::into_inner`.
//!
//! Scenarios are ported from CPython's `Lib/test/test_asyncio/test_tasks.py`
//! (`test_shield_result`, `test_shield_exception`, `test_shield_cancel_inner`,
//! `test_shield_cancel_outer`, `test_shield_shortcut`, `test_shield_effect`,
//! `test_gather_shield`, `test_shield_gather`); each test names the one it follows. Steps are
//! sequenced with promises; the key scenarios run on runtimes of 1, 2 and 4 loops.

use braid::{Error, Promise, Task};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

mod common;
use common::*;

/// Longer than any test: a child sleeping this long only ends by being cancelled.
const LONG: Duration = Duration::from_secs(60);

/// A task that sleeps and yields a few times (so that it moves between loops), then waits
/// for `gate` and returns `value`.
fn inner_after(gate: &Promise<()>, value: i32) -> Task<i32> {
    let gate = gate.clone();
    braid::create_task(async move {
        for _ in 0..3 {
            braid::yield_now().await?;
            braid::sleep(Duration::from_millis(1)).await?;
        }
        gate.await?;
        Ok(value)
    })
}

/// The inner task's value passes through (CPython `test_shield_result`).
#[test]
fn value_passes_through() {
    on_loops(&[1, 2, 4], || async {
        let gate = braid::create_future::<()>();
        let inner = inner_after(&gate, 42);
        let outer = braid::create_task(braid::shield(inner));
        gate.set_result(())?;
        assert_eq!(outer.await?, 42);
        Ok(())
    });
}

/// The inner task's error passes through (CPython `test_shield_exception`).
#[test]
fn error_passes_through() {
    on_loops(&[1, 2], || async {
        let inner = braid::create_task(async {
            braid::yield_now().await?;
            Err::<i32, _>(Error::msg("expected"))
        });
        let err = braid::shield(inner).await.unwrap_err();
        assert_eq!(err.message(), Some("expected"));
        Ok(())
    });
}

/// The inner task's own cancellation passes through: the shielded await ends `Cancelled`
/// (CPython `test_shield_cancel_inner`).
#[test]
fn inner_cancellation_passes_through() {
    on_loops(&[1, 2], || async {
        let started = braid::create_future::<()>();
        let s = started.clone();
        let inner = braid::create_task(async move {
            s.set_result(())?;
            braid::sleep(LONG).await?;
            Ok(1)
        });
        let r = inner.as_ref();
        let shielded = braid::shield(inner);
        started.await?;
        assert!(r.cancel());
        let err = shielded.await.unwrap_err();
        assert!(err.is_cancelled(), "{err:?}");
        assert!(r.cancelled());
        Ok(())
    });
}

/// A task already done gives its value at once (CPython `test_shield_shortcut`).
#[test]
fn done_inner_gives_its_value() {
    on_loops(&[1, 2], || async {
        let inner = braid::create_task(async { Ok(42) });
        let done = braid::create_future::<()>();
        let d = done.clone();
        inner.add_done_callback(move |_| {
            let _ = d.set_result(());
        });
        done.await?;
        let shielded = braid::shield(inner);
        assert!(shielded.task().done());
        assert_eq!(shielded.await?, 42);
        Ok(())
    });
}

/// Cancelling the awaiting task makes the shielded await return `Cancelled` at once, while
/// the inner task keeps running to completion, untouched (no cancel request reaches it); the
/// awaiter, holding the shield, can still read the inner result (CPython
/// `test_shield_effect` and `test_shield_cancel_outer`).
#[test]
fn cancelling_the_awaiter_returns_at_once_and_the_inner_keeps_running() {
    on_loops(&[1, 2, 4], || async {
        let gate = braid::create_future::<()>();
        let inner = inner_after(&gate, 42);
        let inner_ref = inner.as_ref();
        let awaiting = braid::create_future::<()>();
        let a = awaiting.clone();
        let (tx, rx) = mpsc::channel();
        let outer = braid::create_task(async move {
            let mut shielded = braid::shield(inner);
            a.set_result(())?;
            let first = (&mut shielded).await;
            let cancelled = matches!(&first, Err(e) if e.is_cancelled());
            // Hand the inner task back before ending cancelled.
            tx.send(shielded.into_inner()).unwrap();
            if cancelled {
                first
            } else {
                Err(Error::msg(format!("the shielded await gave {first:?}")))
            }
        });
        awaiting.await?;
        assert!(outer.cancel());
        let err = outer.await.unwrap_err();
        assert!(err.is_cancelled(), "{err:?}");
        // The awaiter returned while the inner task is still waiting for its gate.
        assert!(!inner_ref.done(), "the shield waited for the inner task");
        assert_eq!(
            inner_ref.cancelling(),
            0,
            "the cancel reached the inner task"
        );

        let inner = rx
            .try_recv()
            .expect("the awaiter handed back the inner task");
        gate.set_result(())?;
        assert_eq!(inner.await?, 42);
        assert!(!inner_ref.cancelled());
        Ok(())
    });
}

/// The awaiter may also catch the `Cancelled` error and then await the inner task through
/// the same shield (awaited by `&mut`): it gets the inner value (CPython
/// `test_shield_effect`, the "proof" that inner ran to the end).
#[test]
fn awaiter_reads_the_inner_result_after_being_cancelled() {
    on_loops(&[1, 2, 4], || async {
        let gate = braid::create_future::<()>();
        let inner = inner_after(&gate, 7);
        let awaiting = braid::create_future::<()>();
        let a = awaiting.clone();
        let g = gate.clone();
        let outer = braid::create_task(async move {
            let mut shielded = braid::shield(inner);
            a.set_result(())?;
            let first = (&mut shielded).await;
            assert!(matches!(&first, Err(e) if e.is_cancelled()), "{first:?}");
            assert!(!shielded.task().done());
            g.set_result(())?;
            // The one cancel request was delivered: this await is not cancelled.
            let value = (&mut shielded).await?;
            Ok((value, shielded.task().done()))
        });
        awaiting.await?;
        assert!(outer.cancel());
        assert_eq!(outer.await?, (7, true));
        Ok(())
    });
}

/// A gather of shielded tasks: cancelling the gather cancels the shields' wrapper tasks
/// but not the shielded children, which complete (CPython `test_gather_shield`).
#[test]
fn gather_of_shields_cancels_the_shields_not_the_children() {
    on_loops(&[1, 2, 4], || async {
        let gate = braid::create_future::<()>();
        let children: Vec<Task<i32>> = (1..=2).map(|v| inner_after(&gate, v)).collect();
        let refs: Vec<_> = children.iter().map(Task::as_ref).collect();
        let done_count = Arc::new(AtomicUsize::new(0));
        let all_done = braid::create_future::<()>();
        for child in &children {
            let (count, all_done) = (done_count.clone(), all_done.clone());
            child.add_done_callback(move |_| {
                if count.fetch_add(1, Ordering::SeqCst) == 1 {
                    let _ = all_done.set_result(());
                }
            });
        }
        let parent = braid::gather(children.into_iter().map(braid::shield));
        assert!(parent.cancel());
        let err = parent.await.unwrap_err();
        assert!(err.is_cancelled(), "{err:?}");
        for r in &refs {
            assert_eq!(r.cancelling(), 0, "the cancel reached a shielded child");
        }
        gate.set_result(())?;
        all_done.await?;
        for r in &refs {
            assert!(r.done() && !r.cancelled());
        }
        Ok(())
    });
}

/// A shielded gather: cancelling the task awaiting the shield leaves the gather and its
/// children running, and the gather completes with every value (CPython
/// `test_shield_gather`).
#[test]
fn shielded_gather_survives_the_awaiter_cancel() {
    on_loops(&[1, 2, 4], || async {
        let gate = braid::create_future::<()>();
        let children: Vec<Task<i32>> = (1..=2).map(|v| inner_after(&gate, v)).collect();
        let parent = braid::create_task(braid::gather(children));
        let (tx, rx) = mpsc::channel();
        let awaiting = braid::create_future::<()>();
        let a = awaiting.clone();
        let outer = braid::create_task(async move {
            let mut shielded = braid::shield(parent);
            a.set_result(())?;
            let res = (&mut shielded).await;
            tx.send(shielded.into_inner()).unwrap();
            res
        });
        awaiting.await?;
        outer.cancel();
        let err = outer.await.unwrap_err();
        assert!(err.is_cancelled(), "{err:?}");
        let parent = rx
            .try_recv()
            .expect("the awaiter handed back the gather task");
        assert!(!parent.done());
        gate.set_result(())?;
        assert_eq!(parent.await?, vec![1, 2]);
        Ok(())
    });
}

/// Awaiting the shield of a task already done gives its value though a cancel of the
/// awaiting task is pending (asyncio's `shield` of a done task is that task, whose await
/// does not suspend); the request is delivered at the next await point.
#[test]
fn a_shield_of_a_done_task_gives_its_value_though_a_cancel_is_pending() {
    let (value, next) = await_a_done_task_with_a_cancel_pending(braid::shield);
    assert_eq!(value.unwrap(), 7);
    assert_cancelled(&next);
}

/// Installs on every loop of `rt` a handler that sends each report (message and error) to
/// the returned receiver; the returned function installs it on one more loop (the host loop,
/// called from the main future).
fn collect_reports(rt: &braid::Runtime) -> (mpsc::Receiver<String>, impl Fn(&braid::EventLoop)) {
    let (tx, rx) = mpsc::channel();
    let install = move |lp: &braid::EventLoop| {
        let tx = tx.clone();
        lp.set_exception_handler(move |ctx| {
            let _ = tx.send(ctx.to_string());
        });
    };
    for lp in rt.event_loops() {
        install(&lp);
    }
    (rx, install)
}

/// A task (made on the running loop) that fails with "inner failed" once its gate is set,
/// and the gate.
fn inner_failing_once_opened() -> (braid::Promise<()>, braid::Task<i32>) {
    let gate = braid::create_future::<()>();
    let g = gate.clone();
    let inner = braid::create_task(async move {
        g.await?;
        Err::<i32, _>(Error::msg("inner failed"))
    });
    (gate, inner)
}

/// An inner task that fails after the awaiting task was cancelled, with nobody left holding
/// it, is reported as "Task exception was never retrieved", as asyncio reports it: its
/// `shield` removes the inner's done callback once the outer await is cancelled, so nothing
/// retrieves the error (CPython 3.11 to 3.13, `tasks.shield`'s `_outer_done_callback`).
/// Before, the shield quieted the inner task when the await was cancelled: the error was
/// lost without a word.
#[test]
fn an_inner_error_after_the_awaiter_was_cancelled_is_reported_when_nobody_holds_the_inner() {
    for n in [1, 2] {
        let rt = runtime(n);
        let (reports, install) = collect_reports(&rt);
        let outcome = rt.run_until_complete(async {
            install(&braid::get_running_loop());
            let (gate, inner) = inner_failing_once_opened();
            let started = braid::create_future::<()>();
            let s = started.clone();
            let outer = braid::create_task(async move {
                s.set_result(())?;
                braid::shield(inner).await
            });
            started.await?;
            assert!(outer.cancel());
            // The outer task finished: its shield, and the only handle to the inner, are gone.
            assert_cancelled(&outer.await);
            gate.set_result(())?;
            Ok(())
        });
        assert!(outcome.is_ok(), "on {n} loop(s): {outcome:?}");
        let report = reports.recv_timeout(WAIT);
        rt.shutdown(WAIT).unwrap();
        let report = report.unwrap_or_else(|e| panic!("on {n} loop(s): no report ({e})"));
        assert!(
            report.contains("Task exception was never retrieved")
                && report.contains("inner failed"),
            "on {n} loop(s): {report}"
        );
    }
}

/// The inner task taken back after the awaiting task was cancelled, and awaited, is not
/// reported: its error was retrieved (CPython: the caller still holds `inner` and awaits it).
#[test]
fn an_inner_task_taken_back_and_awaited_after_the_cancel_is_not_reported() {
    for n in [1, 2] {
        let rt = runtime(n);
        let (reports, install) = collect_reports(&rt);
        let outcome = rt.run_until_complete(async {
            install(&braid::get_running_loop());
            let (gate, inner) = inner_failing_once_opened();
            let started = braid::create_future::<()>();
            let s = started.clone();
            let outer = braid::create_task(async move {
                let mut shielded = braid::shield(inner);
                s.set_result(())?;
                let first = (&mut shielded).await;
                assert_cancelled(&first);
                Ok(shielded.into_inner())
            });
            started.await?;
            assert!(outer.cancel());
            let inner = outer.await?;
            gate.set_result(())?;
            let err = inner.await.unwrap_err();
            assert_eq!(err.message(), Some("inner failed"));
            Ok(())
        });
        assert!(outcome.is_ok(), "on {n} loop(s): {outcome:?}");
        rt.shutdown(WAIT).unwrap();
        let reports: Vec<String> = reports.try_iter().collect();
        assert!(reports.is_empty(), "on {n} loop(s): {reports:?}");
    }
}

/// A cancel that reaches the awaiting task after it was parked at the shield wins over the
/// inner task's value, even when the inner task finished before the awaiting task ran again,
/// as in asyncio (the outer future's cancel). Only an await that finds the inner task already
/// done when it begins gives the value with a request pending. All on the host loop, so the
/// order is fixed: the inner task finishes, then the cancel comes, then the awaiter runs.
#[test]
fn a_cancel_after_the_awaiter_parked_wins_over_an_inner_task_finished_since() {
    let rt = runtime(1);
    let outcome = rt.run_until_complete(async {
        let gate = braid::create_future::<()>();
        let finished = braid::create_future::<()>();
        let (g, f) = (gate.clone(), finished.clone());
        let inner = braid::spawn_local(async move {
            g.await?;
            f.set_result(())?;
            Ok("kept")
        });
        let parked = braid::create_future::<()>();
        let p = parked.clone();
        let outer = braid::spawn_local(async move {
            let mut shielded = braid::shield(inner);
            p.set_result(())?;
            let first = (&mut shielded).await;
            Ok((
                first.map_err(|e| e.is_cancelled()),
                shielded.into_inner().await?,
            ))
        });
        parked.await?;
        // The canceller is a task of the host loop too (the main future is polled apart from
        // the loop's queue): it opens the gate and yields, the inner task finishes in the step
        // that sets `finished` and wakes the awaiter, queued behind the canceller, which then
        // cancels it before it runs.
        let awaiter = outer.as_ref();
        let canceller = braid::spawn_local(async move {
            gate.set_result(())?;
            while !finished.done() {
                braid::yield_now().await?;
            }
            Ok(awaiter.cancel())
        });
        assert!(canceller.await?, "the awaiter was done before the cancel");
        outer.await
    });
    assert_eq!(outcome.unwrap(), (Err(true), "kept"));
    rt.shutdown(WAIT).unwrap();
}
