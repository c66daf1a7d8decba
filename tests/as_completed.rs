//! `as_completed` with asyncio's semantics (API.md "Combinators", issue 4): outcomes are
//! yielded in completion order (errors in their place); on timeout the stream yields one
//! `Timeout` error and ends, cancelling nothing; `AsCompleted::remaining` hands back the
//! tasks not yet yielded, still running.
//!
//! Scenarios are ported from CPython's `Lib/test/test_asyncio/test_tasks.py`
//! (`test_as_completed`, `test_as_completed_with_timeout`,
//! `test_as_completed_with_unused_timeout`, `test_as_completed_concurrent`); each test names
//! the one it follows. Steps are sequenced with promises; the key scenarios run on runtimes
//! of 1, 2 and 4 loops.

use braid::{Error, Promise, Task};
use futures::StreamExt;
use std::time::{Duration, Instant};

mod common;
use common::*;

/// A task that yields and sleeps a little (so that it moves between loops), waits for
/// `gate`, and returns `value`.
fn gated(gate: &Promise<()>, value: &'static str) -> Task<&'static str> {
    let gate = gate.clone();
    braid::create_task(async move {
        braid::yield_now().await?;
        braid::sleep(Duration::from_millis(1)).await?;
        gate.await?;
        Ok(value)
    })
}

/// Outcomes come in completion order, not input order: the test releases b, then c, then
/// a, and reads each outcome before releasing the next (CPython `test_as_completed`).
#[test]
fn yields_in_completion_order() {
    on_loops(&[1, 2, 4], || async {
        let gates: Vec<Promise<()>> = (0..3).map(|_| braid::create_future()).collect();
        let tasks = vec![
            gated(&gates[0], "a"),
            gated(&gates[1], "b"),
            gated(&gates[2], "c"),
        ];
        let mut stream = braid::as_completed(tasks, None);
        let mut order = Vec::new();
        for i in [1, 2, 0] {
            gates[i].set_result(())?;
            order.push(stream.next().await.expect("an outcome")?);
        }
        assert_eq!(order, ["b", "c", "a"]);
        assert!(stream.next().await.is_none(), "the stream did not end");
        Ok(())
    });
}

/// An error is yielded in its place, and the stream goes on with the others.
#[test]
fn errors_are_yielded_in_place() {
    on_loops(&[1, 2], || async {
        let gate = braid::create_future::<()>();
        let ok = gated(&gate, "ok");
        let failing = braid::create_task(async {
            braid::yield_now().await?;
            Err::<&'static str, _>(Error::msg("boom"))
        });
        let mut stream = braid::as_completed(vec![ok, failing], None);
        let first = stream.next().await.expect("an outcome");
        assert_eq!(first.unwrap_err().message(), Some("boom"));
        gate.set_result(())?;
        assert_eq!(stream.next().await.expect("an outcome")?, "ok");
        assert!(stream.next().await.is_none());
        Ok(())
    });
}

/// On timeout the stream yields one `Timeout` error and ends; nothing is cancelled, and
/// `remaining` hands back the task not yet yielded, still running, to be awaited later
/// (CPython `test_as_completed_with_timeout`).
#[test]
fn timeout_yields_timeout_then_ends_and_cancels_nothing() {
    on_loops(&[1, 2, 4], || async {
        let gate_b = braid::create_future::<()>();
        let a = braid::create_task(async {
            braid::sleep(Duration::from_millis(1)).await?;
            Ok("a")
        });
        let b = gated(&gate_b, "b");
        // `a` is done before the clock starts: under load a task can start later than the
        // timeout, and `a`'s value must come first.
        done_signal(&a).await?;
        let (ib, rb) = (b.id(), b.as_ref());
        let start = Instant::now();
        let mut stream = braid::as_completed(vec![a, b], Some(Duration::from_millis(40)));
        assert_eq!(stream.next().await.expect("a's value")?, "a");
        let err = stream.next().await.expect("the timeout").unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(35) && elapsed < WAIT,
            "timed out after {elapsed:?}"
        );
        assert!(
            stream.next().await.is_none(),
            "the stream went on after the timeout"
        );
        assert!(
            !rb.done() && rb.cancelling() == 0,
            "the timeout cancelled b"
        );

        let left = stream.remaining();
        assert_eq!(left.iter().map(Task::id).collect::<Vec<_>>(), vec![ib]);
        gate_b.set_result(())?;
        let b = left.into_iter().next().unwrap();
        assert_eq!(b.await?, "b");
        Ok(())
    });
}

/// A timeout that is not reached changes nothing: every outcome, then the end, well before
/// the deadline (CPython `test_as_completed_with_unused_timeout`).
#[test]
fn unused_timeout() {
    on_loops(&[1, 2], || async {
        let a = braid::create_task(async {
            braid::sleep(Duration::from_millis(5)).await?;
            Ok("a")
        });
        let start = Instant::now();
        let mut stream = braid::as_completed(vec![a], Some(Duration::from_secs(30)));
        assert_eq!(stream.next().await.expect("a's value")?, "a");
        assert!(stream.next().await.is_none());
        assert!(start.elapsed() < WAIT);
        Ok(())
    });
}

/// `remaining` mid-stream hands back the tasks not yet yielded, in input order, still
/// running (nothing is cancelled), and the stream ends.
#[test]
fn remaining_hands_back_the_tasks_not_yet_yielded() {
    on_loops(&[1, 2, 4], || async {
        let gates: Vec<Promise<()>> = (0..3).map(|_| braid::create_future()).collect();
        let tasks = vec![
            gated(&gates[0], "a"),
            gated(&gates[1], "b"),
            gated(&gates[2], "c"),
        ];
        let (ia, ic) = (tasks[0].id(), tasks[2].id());
        let mut stream = braid::as_completed(tasks, None);
        gates[1].set_result(())?;
        assert_eq!(stream.next().await.expect("b's value")?, "b");
        let left = stream.remaining();
        assert_eq!(left.iter().map(Task::id).collect::<Vec<_>>(), vec![ia, ic]);
        assert!(left.iter().all(|t| !t.done() && t.cancelling() == 0));
        assert!(stream.next().await.is_none());
        gates[0].set_result(())?;
        gates[2].set_result(())?;
        let mut values = Vec::new();
        for t in left {
            values.push(t.await?);
        }
        assert_eq!(values, ["a", "c"]);
        Ok(())
    });
}

/// Many tasks that sleep and yield so that they migrate between loops and finish
/// concurrently: every outcome is yielded exactly once (CPython
/// `test_as_completed_concurrent`).
#[test]
fn many_concurrent_tasks_each_yielded_once() {
    on_loops(&[2, 4], || async {
        let tasks: Vec<Task<u32>> = (0..50u32)
            .map(|i| {
                braid::create_task(async move {
                    for step in 0..3 {
                        if (i + step) % 2 == 0 {
                            braid::yield_now().await?;
                        } else {
                            braid::sleep(Duration::from_millis(u64::from(i % 3))).await?;
                        }
                    }
                    Ok(i)
                })
            })
            .collect();
        let mut stream = braid::as_completed(tasks, Some(WAIT));
        let mut seen = Vec::new();
        while let Some(v) = stream.next().await {
            seen.push(v?);
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
        Ok(())
    });
}
