//! `wait_for` with Python 3.12's semantics (API.md "Combinators", issue 4): on timeout the
//! awaitable is cancelled and `wait_for` waits until it has finished cancelling (its cleanup
//! awaits run) before returning `Timeout`; a value returned by an awaitable that swallows the
//! cancellation is returned; an error raised during its cleanup replaces the timeout; with a
//! zero timeout a task already done gives its value, a task still running is cancelled and
//! awaited, and a coroutine never starts; `None` is a plain await; cancelling the task inside
//! `wait_for` cancels the awaitable, and that cancel is never lost, even when the awaitable
//! finishes in the same moment.
//!
//! Scenarios are ported from CPython's `Lib/test/test_asyncio/test_waitfor.py`; each test
//! names the one it follows. (A `Duration` cannot be negative, so CPython's "timeout less
//! than 0 or 0" cases are the zero case here.) Steps are sequenced with promises; the key
//! scenarios run on runtimes of 1, 2 and 4 loops.

use braid::{Error, Promise, Task};
use std::future::{Future, IntoFuture};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::*;

/// Longer than any test: a child sleeping this long only ends by being cancelled.
const LONG: Duration = Duration::from_secs(60);

fn assert_timeout<T: std::fmt::Debug>(r: &braid::Result<T>) {
    match r {
        Err(e) if e.is_timeout() => {}
        other => panic!("expected a Timeout error, got {other:?}"),
    }
}

/// A task that tells `started`, sleeps until cancelled, then cleans up with an await
/// (a short sleep, a yield) before setting `cleaned` and ending cancelled.
fn with_slow_cleanup(started: &Promise<()>, cleaned: &Arc<AtomicBool>) -> Task<&'static str> {
    let (started, cleaned) = (started.clone(), cleaned.clone());
    braid::create_task(async move {
        started.set_result(())?;
        match braid::sleep(LONG).await {
            Err(e) if e.is_cancelled() => {
                braid::sleep(Duration::from_millis(10)).await?;
                braid::yield_now().await?;
                cleaned.store(true, Ordering::SeqCst);
                Err(e)
            }
            other => other.map(|()| "slept"),
        }
    })
}

/// On timeout the task is cancelled and `wait_for` returns `Timeout` only once the task has
/// finished its cleanup, whose awaits ran (CPython `test_wait_for`,
/// `test_wait_for_waits_for_task_cancellation`).
#[test]
fn timeout_cancels_and_waits_for_the_cleanup() {
    on_loops(&[1, 2, 4], || async {
        let started = braid::create_future::<()>();
        let cleaned = Arc::new(AtomicBool::new(false));
        let inner = with_slow_cleanup(&started, &cleaned);
        let r = inner.as_ref();
        started.await?;
        let t0 = Instant::now();
        let res = braid::wait_for(inner, Some(Duration::from_millis(20))).await;
        let elapsed = t0.elapsed();
        assert_timeout(&res);
        assert!(
            cleaned.load(Ordering::SeqCst),
            "wait_for returned before the cleanup ended"
        );
        assert!(r.done() && r.cancelled());
        assert!(
            elapsed >= Duration::from_millis(20) && elapsed < WAIT,
            "returned after {elapsed:?}"
        );
        Ok(())
    });
}

/// The same for an awaitable that is not a task: it runs inline, gets the cancellation at
/// its await point, and its cleanup runs to the end before `Timeout` (CPython
/// `test_asyncio_wait_for_timeout`, with a coroutine that cleans up instead of SlowTask's
/// refusal).
#[test]
fn timeout_of_a_coroutine_runs_its_cleanup_first() {
    on_loops(&[1, 2, 4], || async {
        let cleaned = Arc::new(AtomicBool::new(false));
        let c = cleaned.clone();
        let coro = async move {
            match braid::sleep(LONG).await {
                Err(e) if e.is_cancelled() => {
                    braid::sleep(Duration::from_millis(10)).await?;
                    c.store(true, Ordering::SeqCst);
                    Err(e)
                }
                other => other.map(|()| 0),
            }
        };
        let res = braid::wait_for(coro, Some(Duration::from_millis(10))).await;
        assert_timeout(&res);
        assert!(cleaned.load(Ordering::SeqCst));
        // The timeout's own cancel was withdrawn: the next await is not cancelled.
        let me = braid::current_task().expect("a task");
        assert_eq!(me.cancelling(), 0);
        braid::sleep(Duration::from_millis(1)).await?;
        Ok(())
    });
}

/// An awaitable that swallows the cancellation and returns a value gives that value, not a
/// Timeout (CPython `test_wait_for_cancel_suppressed`,
/// `test_wait_for_cancellation_race_condition`, and `test_asyncio_wait_for_timeout`'s
/// SlowTask, which refuses cancels until it is done).
#[test]
fn swallowed_cancellation_returns_the_value() {
    on_loops(&[1, 2, 4], || async {
        // A coroutine that returns 42 when cancelled.
        let res = braid::wait_for(
            async {
                match braid::sleep(LONG).await {
                    Err(e) if e.is_cancelled() => Ok(42),
                    other => other.map(|()| 0),
                }
            },
            Some(Duration::from_millis(10)),
        )
        .await;
        assert_eq!(res?, 42);

        // A task that refuses every cancel until its own deadline, then returns.
        let exited = Arc::new(AtomicBool::new(false));
        let started = braid::create_future::<()>();
        let (e, s) = (exited.clone(), started.clone());
        let slow = braid::create_task(async move {
            s.set_result(())?;
            let exit_at = Instant::now() + Duration::from_millis(40);
            while Instant::now() < exit_at {
                let _ = braid::sleep_until(exit_at).await;
            }
            e.store(true, Ordering::SeqCst);
            Ok("exited")
        });
        started.await?;
        let res = braid::wait_for(slow, Some(Duration::from_millis(10))).await;
        assert!(
            exited.load(Ordering::SeqCst),
            "wait_for did not wait for the task"
        );
        assert_eq!(res?, "exited");
        Ok(())
    });
}

/// An error raised during the cleanup replaces the Timeout (CPython
/// `test_wait_for_reraises_exception_during_cancellation`).
#[test]
fn error_during_cleanup_replaces_the_timeout() {
    on_loops(&[1, 2, 4], || async {
        let started = braid::create_future::<()>();
        let s = started.clone();
        let inner = braid::create_task(async move {
            s.set_result(())?;
            let _ = braid::sleep(LONG).await;
            braid::yield_now().await?;
            Err::<(), _>(Error::msg("foo exception"))
        });
        // Running, so that the cancel reaches its cleanup (a task cancelled before it
        // starts never runs).
        started.await?;
        let err = braid::wait_for(inner, Some(Duration::from_millis(10)))
            .await
            .unwrap_err();
        assert_eq!(err.message(), Some("foo exception"), "{err:?}");

        // Inline too.
        let err = braid::wait_for(
            async {
                let _ = braid::sleep(LONG).await;
                Err::<(), _>(Error::msg("inline foo"))
            },
            Some(Duration::from_millis(10)),
        )
        .await
        .unwrap_err();
        assert_eq!(err.message(), Some("inline foo"), "{err:?}");
        Ok(())
    });
}

/// With a zero timeout a task already done gives its value at once (CPython
/// `test_wait_for_timeout_less_then_0_or_0_future_done`).
#[test]
fn zero_timeout_on_a_done_task_gives_its_value() {
    on_loops(&[1, 2], || async {
        let t = braid::create_task(async { Ok("done") });
        done_signal(&t).await?;
        let t0 = Instant::now();
        assert_eq!(braid::wait_for(t, Some(Duration::ZERO)).await?, "done");
        assert!(t0.elapsed() < WAIT);
        Ok(())
    });
}

/// With a zero timeout a coroutine never starts: `Timeout` at once (CPython
/// `test_wait_for_timeout_less_then_0_or_0_coroutine_do_not_started`).
#[test]
fn zero_timeout_never_starts_a_coroutine() {
    on_loops(&[1, 2], || async {
        let started = Arc::new(AtomicBool::new(false));
        let s = started.clone();
        let res = braid::wait_for(
            async move {
                s.store(true, Ordering::SeqCst);
                Ok(())
            },
            Some(Duration::ZERO),
        )
        .await;
        assert_timeout(&res);
        assert!(!started.load(Ordering::SeqCst), "the coroutine ran");
        // A Promise's future is a future like any other: never polled.
        let p = braid::create_future::<u8>();
        p.set_result(1)?;
        assert_timeout(&braid::wait_for(p.into_future(), Some(Duration::ZERO)).await);
        Ok(())
    });
}

/// With a zero timeout a running task is cancelled and awaited: `Timeout` once its cleanup
/// has run (CPython `test_wait_for_timeout_less_then_0_or_0`,
/// `test_wait_for_waits_for_task_cancellation_w_timeout_0`).
#[test]
fn zero_timeout_cancels_a_running_task_and_waits_for_it() {
    on_loops(&[1, 2, 4], || async {
        let started = braid::create_future::<()>();
        let cleaned = Arc::new(AtomicBool::new(false));
        let inner = with_slow_cleanup(&started, &cleaned);
        let r = inner.as_ref();
        started.await?;
        let res = braid::wait_for(inner, Some(Duration::ZERO)).await;
        assert_timeout(&res);
        assert!(
            cleaned.load(Ordering::SeqCst),
            "returned before the cleanup ended"
        );
        assert!(r.done() && r.cancelled());
        Ok(())
    });
}

/// With a zero timeout a running task that refuses the cancellation gives its value.
#[test]
fn zero_timeout_on_a_refusing_task_gives_its_value() {
    on_loops(&[1, 2, 4], || async {
        let started = braid::create_future::<()>();
        let s = started.clone();
        let inner = braid::create_task(async move {
            s.set_result(())?;
            match braid::sleep(LONG).await {
                Err(e) if e.is_cancelled() => {
                    braid::sleep(Duration::from_millis(5)).await?;
                    Ok("refused")
                }
                other => other.map(|()| "slept"),
            }
        });
        started.await?;
        assert_eq!(
            braid::wait_for(inner, Some(Duration::ZERO)).await?,
            "refused"
        );
        Ok(())
    });
}

/// `None` is a plain await: no deadline, the value comes back (CPython
/// `test_wait_for_blocking`).
#[test]
fn none_is_a_plain_await() {
    on_loops(&[1, 2], || async {
        let v = braid::wait_for(
            async {
                braid::sleep(Duration::from_millis(20)).await?;
                Ok("done")
            },
            None,
        )
        .await?;
        assert_eq!(v, "done");
        Ok(())
    });
}

/// A value that comes before the deadline is returned (CPython
/// `test_wait_for_race_condition`: the future is set by a `call_later` callback).
#[test]
fn value_before_the_deadline_is_returned() {
    on_loops(&[1, 2], || async {
        let p = braid::create_future::<&'static str>();
        let setter = p.clone();
        braid::call_later(Duration::from_millis(10), move || {
            setter.set_result("ok").unwrap();
        });
        let v = braid::wait_for(p.into_future(), Some(Duration::from_secs(30))).await?;
        assert_eq!(v, "ok");
        Ok(())
    });
}

/// Cancelling the task inside `wait_for` cancels the awaited task, with and without a
/// timeout (CPython `test_cancel_wait_for` and `test_cancel_blocking_wait_for`, Python issue
/// #23219: "cancelling the wait must also cancel the task").
#[test]
fn cancelling_the_waiting_task_cancels_the_awaitable() {
    for timeout in [Some(Duration::from_secs(60)), None] {
        on_loops(&[1, 2, 4], move || async move {
            let blocker = braid::create_future::<()>();
            let b = blocker.clone();
            let inner = braid::create_task(async move { b.await });
            let r = inner.as_ref();
            let waiting = braid::create_future::<()>();
            let w = waiting.clone();
            let outer = braid::create_task(async move {
                let waited = braid::wait_for(inner, timeout);
                w.set_result(())?;
                waited.await
            });
            waiting.await?;
            assert!(outer.cancel());
            assert_cancelled(&outer.await);
            assert!(
                r.done() && r.cancelled(),
                "timeout {timeout:?}: the task was not cancelled"
            );
            Ok(())
        });
    }
}

/// `wait_for` itself is cancellable even when the awaited task holds up cancellation: the
/// waiting task is cancelled before it starts, and the awaited task, never cancelled, runs
/// on and returns its value (CPython `test_wait_for_self_cancellation`). The waiting task is
/// a `spawn_local` task of this loop, so that nothing can start it between its creation and
/// its cancel.
#[test]
fn wait_for_cancelled_before_it_starts() {
    on_loops(&[1, 2, 4], || async {
        let returned = Arc::new(AtomicU32::new(0));
        let ret = returned.clone();
        let inner = braid::create_task(async move {
            // Holds up cancellation: refuses two cancels.
            for _ in 0..2 {
                let _ = braid::sleep(Duration::from_millis(10)).await;
            }
            ret.store(42, Ordering::SeqCst);
            Ok(42)
        });
        let (r, inner_done) = (inner.as_ref(), done_signal(&inner));
        let outer = braid::spawn_local(async move {
            braid::wait_for(inner, Some(Duration::from_millis(5))).await
        });
        assert!(outer.cancel());
        assert_cancelled(&outer.await);
        inner_done.await?;
        assert_eq!(r.cancelling(), 0, "the awaited task was cancelled");
        assert!(!r.cancelled());
        assert_eq!(returned.load(Ordering::SeqCst), 42);
        Ok(())
    });
}

/// One round of the race: the task inside `wait_for` is cancelled right after the awaited
/// promise is set, from this thread, while the awaitable (inline, or a task) completes on
/// another loop. The cancel must surface: the task ends cancelled and never gets past the
/// await after `wait_for` (a lost cancel fails the round after `WAIT`, not after hanging).
async fn cancel_racing_completion(round: u32, as_task: bool) -> braid::Result<()> {
    let ready = braid::create_future::<u32>();
    let reached_end = Arc::new(AtomicBool::new(false));
    let waiting = braid::create_future::<()>();
    let (r, w, end) = (ready.clone(), waiting.clone(), reached_end.clone());
    let outer = braid::create_task(async move {
        let value = if as_task {
            let inner = braid::create_task(async move { r.await });
            let waited = braid::wait_for(inner, Some(LONG));
            w.set_result(())?;
            waited.await?
        } else {
            let waited = braid::wait_for(r.into_future(), Some(LONG));
            w.set_result(())?;
            waited.await?
        };
        braid::sleep(WAIT).await?;
        end.store(true, Ordering::SeqCst);
        Ok(value)
    });
    waiting.await?;
    ready.set_result(round)?;
    outer.cancel();
    let res = outer.await;
    assert!(
        matches!(&res, Err(e) if e.is_cancelled()),
        "round {round}: the cancel was lost: {res:?}"
    );
    assert!(!reached_end.load(Ordering::SeqCst));
    Ok(())
}

/// Cancelling the task inside `wait_for` at the very moment the inline awaitable completes
/// is never lost (CPython `test_wait_for_issue86296`, gh-86296: "wait_for can swallow a
/// cancellation"). Repeated on 2 and 4 loops.
#[test]
fn cancel_racing_an_inline_completion_is_never_lost() {
    on_loops(&[2, 4], || async {
        for round in 0..60 {
            cancel_racing_completion(round, false).await?;
        }
        Ok(())
    });
}

/// The same with a task as the awaitable, finishing on another loop at the moment of the
/// cancel (CPython `test_wait_for_issue86296`).
#[test]
fn cancel_racing_a_task_completion_is_never_lost() {
    on_loops(&[2, 4], || async {
        for round in 0..60 {
            cancel_racing_completion(round, true).await?;
        }
        Ok(())
    });
}

/// A task that finishes on another loop just as `wait_for`'s deadline passes, after the
/// timeout looked at it and found it running: its value is returned, not `Timeout`. The
/// timeout's cancel reaches the task too late (it is done), so the task keeps its value, and
/// `wait_for`, which owns the task's handle, returns it: nothing else could. Before, the
/// handle's await took the refused request as its outcome and the value was dropped.
#[test]
fn a_task_finishing_as_the_deadline_passes_gives_its_value_not_a_timeout() {
    let rt = runtime(2);
    let outcome = rt
        .run_until_complete(async {
            braid::create_task(async {
                let gate = braid::create_future::<()>();
                let open = gate.clone();
                let mut inner = braid::create_task(async move {
                    gate.await?;
                    Ok(7u32)
                });
                let inner_ref = inner.as_ref();
                let delay = Duration::from_millis(20);
                let deadline = Instant::now() + delay;
                // At the timeout's look past the deadline, the inner task is let go and finishes
                // on the other loop before the look returns Pending: the race, made certain.
                let awaitable = std::future::poll_fn(move |cx| {
                    let poll = std::pin::Pin::new(&mut inner).poll(cx);
                    if poll.is_pending() && Instant::now() >= deadline && !open.done() {
                        open.set_result(()).unwrap();
                        let given_up = Instant::now() + WAIT;
                        while !inner_ref.done() && Instant::now() < given_up {
                            std::thread::yield_now();
                        }
                        assert!(
                            inner_ref.done(),
                            "the inner task did not finish on the other loop"
                        );
                    }
                    poll
                });
                Ok(braid::wait_for(awaitable, Some(delay)).await)
            })
            .await
        })
        .unwrap();
    assert_eq!(outcome.unwrap(), 7);
    rt.shutdown(WAIT).unwrap();
}

/// `wait_for` with a zero timeout on a task already done gives its value though a cancel of
/// the awaiting task is pending (asyncio's `wait_for(fut, 0)` returns `fut.result()` without
/// awaiting); the request is delivered at the next await point. It was delivered in place of
/// the value, which went with the task's handle.
#[test]
fn a_zero_timeout_gives_a_done_tasks_value_though_a_cancel_is_pending() {
    let (value, next) =
        await_a_done_task_with_a_cancel_pending(|done| braid::wait_for(done, Some(Duration::ZERO)));
    assert_eq!(value.unwrap(), 7);
    assert_cancelled(&next);
}
