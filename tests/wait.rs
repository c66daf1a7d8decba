//! `wait` with asyncio's semantics (API.md "Combinators", issue 4): `FirstCompleted`,
//! `FirstException` (a cancelled task is not an exception; with no exception it waits for
//! all) and `AllCompleted`; `(done, pending)` in input order; a timeout returns the split,
//! never an error, and cancels nothing; cancelling the waiting task leaves the tasks running;
//! an empty list is an `InvalidState` error, not a hang.
//!
//! Scenarios are ported from CPython's `Lib/test/test_asyncio/test_tasks.py` (`test_wait`,
//! `test_wait_first_completed`, `test_wait_really_done`, `test_wait_first_exception`,
//! `test_wait_first_exception_in_wait`, `test_wait_with_exception`,
//! `test_wait_with_timeout`, `test_wait_concurrent_complete`,
//! `test_yield_wait_does_not_shield_cancel`, `test_wait_errors`); each test names the one it
//! follows. Steps are sequenced with promises; the key scenarios run on runtimes of 1, 2 and
//! 4 loops.

use braid::{Error, ErrorKind, Promise, ReturnWhen, Task, TaskId};
use std::time::{Duration, Instant};

mod common;
use common::*;

/// Longer than any test: a child sleeping this long only ends by being cancelled.
const LONG: Duration = Duration::from_secs(60);

/// A task that yields and sleeps a little (so that it moves between loops), waits for
/// `gate`, and returns `value`.
fn gated(gate: &Promise<()>, value: i32) -> Task<i32> {
    let gate = gate.clone();
    braid::create_task(async move {
        braid::yield_now().await?;
        braid::sleep(Duration::from_millis(1)).await?;
        gate.await?;
        Ok(value)
    })
}

/// A task that sleeps `ms` milliseconds and returns `value`.
fn after(ms: u64, value: i32) -> Task<i32> {
    braid::create_task(async move {
        braid::sleep(Duration::from_millis(ms)).await?;
        Ok(value)
    })
}

/// A task that sleeps until cancelled.
fn sleeper() -> Task<i32> {
    after(LONG.as_millis() as u64, 0)
}

fn ids(tasks: &[Task<i32>]) -> Vec<TaskId> {
    tasks.iter().map(Task::id).collect()
}

/// `AllCompleted` waits for every task and gives `done` in input order, whatever the order of
/// completion; each done task still holds its value or error (CPython `test_wait`,
/// `test_wait_with_exception`).
#[test]
fn all_completed_waits_for_every_task_in_input_order() {
    on_loops(&[1, 2, 4], || async {
        let gates: Vec<Promise<()>> = (0..3).map(|_| braid::create_future()).collect();
        let tasks: Vec<Task<i32>> = (0..3).map(|i| gated(&gates[i], i as i32)).collect();
        let signals: Vec<Promise<()>> = tasks.iter().map(done_signal).collect();
        let failing = braid::create_task(async {
            braid::yield_now().await?;
            Err::<i32, _>(Error::msg("really"))
        });
        let mut input = tasks;
        input.insert(1, failing);
        let order = ids(&input);
        let waiter = braid::create_task(braid::wait(input, None, ReturnWhen::AllCompleted));
        // Complete in reverse order, each after the previous one is done.
        for i in (0..3).rev() {
            gates[i].set_result(())?;
            signals[i].clone().await?;
        }
        let (done, pending) = waiter.await?;
        assert!(pending.is_empty());
        assert_eq!(ids(&done), order, "done is not in input order");
        let mut outcomes = Vec::new();
        for t in done {
            outcomes.push(t.await.map_err(|e| e.message().map(str::to_owned)));
        }
        assert_eq!(
            outcomes,
            vec![Ok(0), Err(Some("really".to_owned())), Ok(1), Ok(2)]
        );
        Ok(())
    });
}

/// `FirstCompleted` returns as soon as one task is done; the others are pending and keep
/// running (CPython `test_wait_first_completed`).
#[test]
fn first_completed_returns_when_one_task_is_done() {
    on_loops(&[1, 2, 4], || async {
        let gate = braid::create_future::<()>();
        let a = gated(&gate, 1);
        let b = after(10, 2);
        let (ia, ib) = (a.id(), b.id());
        let start = Instant::now();
        let (done, pending) = braid::wait(vec![b, a], None, ReturnWhen::FirstCompleted).await?;
        assert!(start.elapsed() < WAIT);
        assert_eq!(ids(&done), vec![ib]);
        assert_eq!(ids(&pending), vec![ia]);
        assert!(!pending[0].done() && pending[0].cancelling() == 0);
        gate.set_result(())?;
        let a = pending.into_iter().next().unwrap();
        assert_eq!(a.await?, 1);
        Ok(())
    });
}

/// Every task already done when `wait` looks is in `done`, in input order (CPython
/// `test_wait_really_done`).
#[test]
fn first_completed_reports_every_task_already_done() {
    on_loops(&[1, 2, 4], || async {
        let a = after(1, 1);
        let b = after(2, 2);
        done_signal(&a).await?;
        done_signal(&b).await?;
        let (ib, ia) = (b.id(), a.id());
        let (done, pending) = braid::wait(vec![b, a], None, ReturnWhen::FirstCompleted).await?;
        assert!(pending.is_empty());
        assert_eq!(ids(&done), vec![ib, ia]);
        Ok(())
    });
}

/// `FirstException` returns at once for a task that already failed, and as soon as one
/// fails while waiting; the others are pending (CPython `test_wait_first_exception`,
/// `test_wait_first_exception_in_wait`).
#[test]
fn first_exception_returns_when_one_task_fails() {
    on_loops(&[1, 2, 4], || async {
        // Already failed.
        let a = sleeper();
        let b = braid::create_task(async { Err::<i32, _>(Error::msg("err")) });
        done_signal(&b).await?;
        let (ia, ib) = (a.id(), b.id());
        let (done, pending) = braid::wait(vec![b, a], None, ReturnWhen::FirstException).await?;
        assert_eq!((ids(&done), ids(&pending)), (vec![ib], vec![ia]));
        pending[0].cancel();

        // Fails while waiting; a task that completes normally first does not end the wait.
        let a = sleeper();
        let ok = after(1, 5);
        // `b` fails once `ok` is done (a 10 ms sleep did not ensure that: a task can start
        // late under load).
        let ok_done = done_signal(&ok);
        let b = braid::create_task(async move {
            ok_done.await?;
            Err::<i32, _>(Error::msg("err"))
        });
        let (ia, iok, ib) = (a.id(), ok.id(), b.id());
        let (done, pending) = braid::wait(vec![a, ok, b], None, ReturnWhen::FirstException).await?;
        assert_eq!(ids(&done), vec![iok, ib]);
        assert_eq!(ids(&pending), vec![ia]);
        assert!(!pending[0].done());
        pending[0].cancel();
        Ok(())
    });
}

/// For `FirstException` a cancelled task is not an exception, and with no exception it waits
/// for all (asyncio's `wait` checks `not f.cancelled() and f.exception() is not None`;
/// CPython `test_wait_first_exception` with a cancelled task instead of a failed one).
#[test]
fn first_exception_ignores_cancelled_tasks_and_waits_for_all() {
    on_loops(&[1, 2, 4], || async {
        let gate = braid::create_future::<()>();
        let cancelled = sleeper();
        let ok = gated(&gate, 3);
        let cancelled_done = done_signal(&cancelled);
        let (ic, iok) = (cancelled.id(), ok.id());
        let rc = cancelled.as_ref();
        let waiter = braid::create_task(braid::wait(
            vec![cancelled, ok],
            None,
            ReturnWhen::FirstException,
        ));
        assert!(rc.cancel());
        cancelled_done.await?;
        // A wait() that took the cancellation for an exception would return now: give it
        // the time to do so (this sleep only widens the window in which a bug shows).
        braid::sleep(Duration::from_millis(30)).await?;
        assert!(
            !waiter.done(),
            "FirstException returned on a cancelled task"
        );
        gate.set_result(())?;
        let (done, pending) = waiter.await?;
        assert!(pending.is_empty());
        assert_eq!(ids(&done), vec![ic, iok]);
        assert!(done[0].cancelled());
        Ok(())
    });
}

/// A timeout returns the split as it stands, never an error, and cancels nothing: the
/// pending task keeps running and completes later (CPython `test_wait_with_timeout`,
/// `test_wait_concurrent_complete`).
#[test]
fn timeout_returns_the_split_and_cancels_nothing() {
    on_loops(&[1, 2, 4], || async {
        let gate = braid::create_future::<()>();
        let a = after(1, 1);
        let b = gated(&gate, 2);
        // `a` is done before the clock starts: under load a task can start later than the
        // timeout, and `a` must be in `done`.
        done_signal(&a).await?;
        let (ia, ib) = (a.id(), b.id());
        let start = Instant::now();
        let (done, pending) = braid::wait(
            vec![b, a],
            Some(Duration::from_millis(30)),
            ReturnWhen::AllCompleted,
        )
        .await?;
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(25),
            "returned after {elapsed:?}"
        );
        assert!(elapsed < WAIT);
        assert_eq!((ids(&done), ids(&pending)), (vec![ia], vec![ib]));
        let b = pending.into_iter().next().unwrap();
        assert!(!b.done());
        assert_eq!(b.cancelling(), 0, "the timeout cancelled a pending task");
        gate.set_result(())?;
        assert_eq!(b.await?, 2);
        Ok(())
    });
}

/// Cancelling the task that waits makes `wait` end with `Cancelled` and leaves the tasks
/// running (CPython `test_yield_wait_does_not_shield_cancel`: "cancelling outer() makes
/// wait() return early, leaves inner() running").
#[test]
fn cancelling_the_waiting_task_leaves_the_tasks_running() {
    on_loops(&[1, 2, 4], || async {
        let gate = braid::create_future::<()>();
        let inner = gated(&gate, 1);
        let r = inner.as_ref();
        let inner_done = done_signal(&inner);
        let waiting = braid::create_future::<()>();
        let w = waiting.clone();
        let outer = braid::create_task(async move {
            let wait = braid::wait(vec![inner], None, ReturnWhen::AllCompleted);
            w.set_result(())?;
            let (done, _) = wait.await?;
            Ok(done.len())
        });
        waiting.await?;
        assert!(outer.cancel());
        let err = outer.await.unwrap_err();
        assert!(err.is_cancelled(), "{err:?}");
        assert_eq!(r.cancelling(), 0, "the cancel reached the waited task");
        gate.set_result(())?;
        inner_done.await?;
        assert!(r.done() && !r.cancelled());
        Ok(())
    });
}

/// An empty list is an `InvalidState` error at once, not a hang (CPython `test_wait_errors`:
/// asyncio raises ValueError).
#[test]
fn empty_list_is_an_error() {
    on_loops(&[1], || async {
        for when in [
            ReturnWhen::FirstCompleted,
            ReturnWhen::FirstException,
            ReturnWhen::AllCompleted,
        ] {
            let none: Vec<Task<i32>> = Vec::new();
            let err = braid::wait(none, Some(LONG), when).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidState, "{err:?}");
        }
        Ok(())
    });
}

/// Many tasks that sleep and yield, so that they migrate between loops: `FirstCompleted`
/// returns the early one, `AllCompleted` then returns them all in input order.
#[test]
fn many_migrating_tasks() {
    on_loops(&[2, 4], || async {
        let gate = braid::create_future::<()>();
        let tasks: Vec<Task<i32>> = (0..24)
            .map(|i| {
                let gate = gate.clone();
                braid::create_task(async move {
                    for _ in 0..3 {
                        braid::yield_now().await?;
                        braid::sleep(Duration::from_millis(1)).await?;
                    }
                    if i != 7 {
                        gate.await?;
                    }
                    Ok(i)
                })
            })
            .collect();
        let order = ids(&tasks);
        let (done, pending) = braid::wait(tasks, None, ReturnWhen::FirstCompleted).await?;
        assert_eq!(ids(&done), vec![order[7]]);
        assert_eq!(pending.len(), 23);
        assert!(pending.iter().all(|t| !t.done()));
        gate.set_result(())?;
        let mut all: Vec<Task<i32>> = done.into_iter().chain(pending).collect();
        all.sort_by_key(|t| order.iter().position(|id| *id == t.id()));
        let (done, pending) = braid::wait(all, None, ReturnWhen::AllCompleted).await?;
        assert!(pending.is_empty());
        assert_eq!(ids(&done), order);
        let mut values = Vec::new();
        for t in done {
            values.push(t.await?);
        }
        assert_eq!(values, (0..24).collect::<Vec<_>>());
        Ok(())
    });
}
