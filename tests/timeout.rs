//! `timeout(delay, aw)`, asyncio's `async with timeout(delay): await aw` (API.md
//! "Combinators", issue 4): at the deadline the awaiting task is cancelled and the awaitable's
//! Cancelled error becomes `Timeout`; nested timeouts with the same deadline raise `Timeout`
//! only at the outermost; a real cancel inside an unexpired timeout stays `Cancelled`; an
//! error inside (or raised while cleaning up) passes through; the task's cancel count is
//! restored.
//!
//! Scenarios are ported from CPython's `Lib/test/test_asyncio/test_timeouts.py`; each test
//! names the one it follows. Steps are sequenced with promises; the key scenarios run on
//! runtimes of 1, 2 and 4 loops, with awaitables that await tasks running on other loops.

use braid::{Error, Task};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::*;

/// Longer than any test: a sleep this long only ends by being cancelled.
const LONG: Duration = Duration::from_secs(60);

/// Runs `scenario` on a fresh runtime of each size in `loops`, naming the size on failure.
/// The scenario runs in a task (timeouts cancel the task that awaits them).
fn on_loops<S, Fut>(loops: &[usize], scenario: S)
where
    S: Fn() -> Fut,
    Fut: Future<Output = braid::Result<()>> + Send + 'static,
{
    for &n in loops {
        let rt = runtime(n);
        let fut = scenario();
        if let Err(e) = rt.run_until_complete(async move { braid::create_task(fut).await }) {
            panic!("on a runtime of {n} loop(s): {e:?}");
        }
        rt.shutdown(WAIT).unwrap();
    }
}

fn assert_timeout<T: std::fmt::Debug>(r: &braid::Result<T>) {
    match r {
        Err(e) if e.is_timeout() => {}
        other => panic!("expected a Timeout error, got {other:?}"),
    }
}

/// The running task's pending cancel requests.
fn cancelling() -> usize {
    braid::current_task().expect("a task").cancelling()
}

/// At the deadline the awaitable is cancelled (it sees `Cancelled` at its await point) and
/// the result is `Timeout`; the task's cancel count is back to 0 (CPython
/// `test_timeout_basic`, `test_waiter_cancelled`).
#[test]
fn expires_with_timeout() {
    on_loops(&[1, 2, 4], || async {
        let saw_cancel = Arc::new(AtomicBool::new(false));
        let s = saw_cancel.clone();
        let t0 = Instant::now();
        let res = braid::timeout(Duration::from_millis(20), async move {
            let r = braid::sleep(LONG).await;
            s.store(matches!(&r, Err(e) if e.is_cancelled()), Ordering::SeqCst);
            r
        })
        .await;
        let elapsed = t0.elapsed();
        assert_timeout(&res);
        assert!(
            saw_cancel.load(Ordering::SeqCst),
            "the awaitable was not cancelled"
        );
        assert!(
            elapsed >= Duration::from_millis(20) && elapsed < WAIT,
            "{elapsed:?}"
        );
        assert_eq!(cancelling(), 0);
        Ok(())
    });
}

/// A value that comes before the deadline is returned, and nothing is cancelled later
/// (CPython `test_timeout_not_called`).
#[test]
fn value_before_the_deadline() {
    on_loops(&[1, 2], || async {
        let v = braid::timeout(Duration::from_secs(30), async {
            braid::sleep(Duration::from_millis(5)).await?;
            Ok(7)
        })
        .await?;
        assert_eq!(v, 7);
        assert_eq!(cancelling(), 0);
        braid::sleep(Duration::from_millis(5)).await?;
        Ok(())
    });
}

/// A zero delay times out at the awaitable's first await, be it a long sleep or a bare yield
/// (CPython `test_timeout_zero`, `test_timeout_zero_sleep_zero`).
#[test]
fn zero_delay_times_out_at_the_first_await() {
    on_loops(&[1, 2], || async {
        let t0 = Instant::now();
        assert_timeout(&braid::timeout(Duration::ZERO, braid::sleep(LONG)).await);
        assert_timeout(&braid::timeout(Duration::ZERO, braid::yield_now()).await);
        assert!(t0.elapsed() < WAIT);
        assert_eq!(cancelling(), 0);
        Ok(())
    });
}

/// Nested timeouts with the same delay, entered at once: only the outermost raises
/// `Timeout`; the inner one lets the Cancelled error through (CPython
/// `test_nested_timeouts`).
#[test]
fn nested_timeouts_with_the_same_deadline_time_out_only_at_the_outermost() {
    on_loops(&[1, 2, 4], || async {
        let delay = Duration::from_millis(20);
        let res = braid::timeout(delay, async move {
            let inner = braid::timeout(delay, braid::sleep(LONG)).await;
            assert_cancelled(&inner);
            inner
        })
        .await;
        assert_timeout(&res);
        assert_eq!(cancelling(), 0);
        Ok(())
    });
}

/// An inner timeout that expires first raises `Timeout` inside, is handled there, and the
/// outer one still expires later (CPython `test_nested_timeouts_loop_busy`,
/// `test_nested_timeouts_concurrent`).
#[test]
fn inner_timeout_expires_first_then_the_outer_one() {
    on_loops(&[1, 2, 4], || async {
        let t0 = Instant::now();
        let res = braid::timeout(Duration::from_millis(60), async {
            let inner = braid::timeout(Duration::from_millis(10), braid::sleep(LONG)).await;
            assert_timeout(&inner);
            braid::sleep(LONG).await
        })
        .await;
        let elapsed = t0.elapsed();
        assert_timeout(&res);
        assert!(
            elapsed >= Duration::from_millis(60) && elapsed < WAIT,
            "{elapsed:?}"
        );
        assert_eq!(cancelling(), 0);
        Ok(())
    });
}

/// A real cancel inside an unexpired timeout stays `Cancelled`: the task cancelling itself
/// (CPython `test_foreign_cancel_doesnt_timeout_if_not_expired`), and another task
/// cancelling it (the end of CPython `test_reschedule`).
#[test]
fn a_real_cancel_inside_an_unexpired_timeout_stays_cancelled() {
    on_loops(&[1, 2, 4], || async {
        let res = braid::timeout(LONG, async {
            braid::current_task().expect("a task").cancel();
            braid::sleep(LONG).await
        })
        .await;
        assert_cancelled(&res);

        let started = braid::create_future::<()>();
        let s = started.clone();
        let victim = braid::create_task(async move {
            braid::timeout(LONG, async move {
                s.set_result(())?;
                braid::sleep(LONG).await
            })
            .await
        });
        started.await?;
        assert!(victim.cancel());
        assert_cancelled(&victim.await);
        Ok(())
    });
}

/// An error inside the timeout passes through unchanged (CPython
/// `test_foreign_exception_passed`).
#[test]
fn an_error_inside_passes_through() {
    on_loops(&[1, 2], || async {
        // A deadline far away: a 50 ms one could pass while the body waits for its loop
        // after the yield, and the Timeout would replace the error.
        let err = braid::timeout(LONG, async {
            braid::yield_now().await?;
            Err::<(), _>(Error::msg("key error"))
        })
        .await
        .unwrap_err();
        assert_eq!(err.message(), Some("key error"), "{err:?}");
        Ok(())
    });
}

/// An error raised while cleaning up after the timeout's cancel replaces the `Timeout`
/// (CPython `test_foreign_exception_on_timeout`).
#[test]
fn an_error_during_cleanup_replaces_the_timeout() {
    on_loops(&[1, 2, 4], || async {
        let err = braid::timeout(Duration::from_millis(10), async {
            let _ = braid::sleep(LONG).await;
            braid::sleep(Duration::from_millis(1)).await?;
            Err::<(), _>(Error::msg("zero division"))
        })
        .await
        .unwrap_err();
        assert_eq!(err.message(), Some("zero division"), "{err:?}");
        assert_eq!(cancelling(), 0);
        Ok(())
    });
}

/// A task that catches the `Timeout` finishes normally, not cancelled (CPython
/// `test_outer_task_is_not_cancelled`).
#[test]
fn a_task_that_catches_the_timeout_is_not_cancelled() {
    on_loops(&[1, 2, 4], || async {
        let task = braid::create_task(async {
            let res = braid::timeout(Duration::from_millis(1), braid::sleep(LONG)).await;
            assert_timeout(&res);
            Ok(cancelling())
        });
        let r = task.as_ref();
        assert_eq!(task.await?, 0);
        assert!(r.done() && !r.cancelled());
        Ok(())
    });
}

/// A timeout works in the cleanup after a caught cancellation (the task's cancel count is
/// then 1), and a real cancel inside it stays `Cancelled` (CPython
/// `test_timeout_after_cancellation`, `test_cancel_in_timeout_after_cancellation`).
#[test]
fn a_timeout_in_cleanup_after_a_caught_cancellation() {
    on_loops(&[1, 2, 4], || async {
        let task = braid::create_task(async {
            braid::current_task().expect("a task").cancel();
            let first = braid::sleep(LONG).await;
            assert_cancelled(&first);
            assert_eq!(cancelling(), 1);
            let cleanup = braid::timeout(Duration::ZERO, braid::sleep(LONG)).await;
            assert_timeout(&cleanup);
            assert_eq!(cancelling(), 1);

            let cleanup = braid::timeout(Duration::from_secs(30), async {
                braid::current_task().expect("a task").cancel();
                braid::sleep(LONG).await
            })
            .await;
            assert_cancelled(&cleanup);
            Ok(())
        });
        task.await?;
        Ok(())
    });
}

/// Blocks this thread until `deadline` has passed: a loop too busy to poll a timeout before
/// its deadline (a slow callback or step), which is the scenario, not a wait for a race.
fn hold_the_loop_past(deadline: Instant) {
    while Instant::now() <= deadline {
        std::thread::sleep(
            deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(1),
        );
    }
}

/// An outcome ready before the deadline wins, even if the loop polls the timeout only after
/// the deadline (asyncio: the awaiting task's wake-up was queued before the timer's callback,
/// so it runs first). The timeout used to cancel first, and the awaitable, seeing the cancel
/// before its value, turned a value that had arrived into `Timeout`; `wait_for` so lost a
/// finished task's result.
#[test]
fn a_value_ready_before_the_deadline_wins_over_a_late_poll() {
    on_loops(&[1, 2], || async {
        let value = braid::create_future::<u32>();
        let late = braid::timeout(
            Duration::from_millis(20),
            std::future::IntoFuture::into_future(value.clone()),
        );
        value.set_result(7)?;
        hold_the_loop_past(late.deadline().expect("a deadline"));
        assert_eq!(late.await?, 7);
        assert_eq!(cancelling(), 0);

        let finished = braid::create_task(async { Ok(8) });
        let finished_signal = done_signal(&finished);
        finished_signal.await?;
        let late = braid::wait_for(finished, Some(Duration::from_millis(20)));
        // Taken after the timer is made, so that it is no earlier than the timer's deadline.
        let deadline = Instant::now() + Duration::from_millis(20);
        hold_the_loop_past(deadline);
        assert_eq!(late.await?, 8);
        assert_eq!(cancelling(), 0);
        // Nothing was left to cancel the task later.
        braid::sleep(Duration::from_millis(1)).await?;
        Ok(())
    });
}

/// A due timeout whose awaitable finishes without waiting gives its value and leaves no
/// cancel behind, also in a task already being cancelled (asyncio: `__aexit__` cancels the
/// timeout's callback before it runs). It used to cancel first, and in a task whose cancel
/// count was 1 its `uncancel` left that request pending: the next await failed Cancelled.
#[test]
fn a_zero_timeout_around_an_awaitable_that_needs_no_wait_leaves_no_cancel_behind() {
    on_loops(&[1, 2], || async {
        let task = braid::create_task(async {
            braid::current_task().expect("a task").cancel();
            assert_cancelled(&braid::sleep(LONG).await);
            assert_eq!(cancelling(), 1);
            assert_eq!(braid::timeout(Duration::ZERO, async { Ok(5) }).await?, 5);
            assert_eq!(cancelling(), 1);
            braid::yield_now().await
        });
        task.await
    });
}

/// The awaitable awaits a task that runs on other loops (and spawns one more): at the
/// deadline the awaited task is cancelled too, its cleanup runs to the end first, and the
/// result is `Timeout`.
#[test]
fn timeout_around_a_task_on_other_loops() {
    on_loops(&[1, 2, 4], || async {
        let started = braid::create_future::<()>();
        let cleaned = Arc::new(AtomicBool::new(false));
        let (s, c) = (started.clone(), cleaned.clone());
        let child: Task<()> = braid::create_task(async move {
            let grandchild = braid::create_task(async {
                for _ in 0..5 {
                    braid::yield_now().await?;
                }
                Ok(())
            });
            grandchild.await?;
            s.set_result(())?;
            let r = braid::sleep(LONG).await;
            braid::sleep(Duration::from_millis(5)).await?;
            c.store(true, Ordering::SeqCst);
            r
        });
        let r = child.as_ref();
        started.await?;
        let res = braid::timeout(Duration::from_millis(10), child).await;
        assert_timeout(&res);
        assert!(
            cleaned.load(Ordering::SeqCst),
            "the child's cleanup did not finish first"
        );
        assert!(r.cancelled());
        assert_eq!(cancelling(), 0);
        Ok(())
    });
}

/// A timeout (or a `wait_for`) dropped after its deadline, before its awaitable finished (a
/// select whose other branch won while the awaited task was still unwinding), takes back the
/// cancel it made of its task, as asyncio's `Timeout.__aexit__` uncancels on every exit:
/// `cancelling()` is back to 0 and the task's next await is not cancelled. Before, the cancel
/// stayed: the count at 1 for good and a stray Cancelled at the next await (found by
/// helper-66).
#[test]
fn a_timeout_dropped_after_its_deadline_takes_back_its_cancel() {
    for through_wait_for in [false, true] {
        on_loops(&[1, 2], move || async move {
            let release = braid::create_future::<()>();
            let r = release.clone();
            // Cancelled at the deadline, it unwinds only once released: after the select.
            let inner = braid::create_task(async move {
                let slept = braid::sleep(LONG).await;
                r.await?;
                slept
            });
            let limited: std::pin::Pin<Box<dyn Future<Output = braid::Result<()>> + Send>> =
                if through_wait_for {
                    Box::pin(braid::wait_for(inner, Some(Duration::from_millis(1))))
                } else {
                    Box::pin(braid::timeout(Duration::from_millis(1), inner))
                };
            let other = Box::pin(braid::sleep(Duration::from_millis(20)));
            match futures::future::select(limited, other).await {
                futures::future::Either::Right((slept, _dropped_timeout)) => slept?,
                futures::future::Either::Left((outcome, _)) => {
                    panic!("the timeout ended first: {outcome:?}")
                }
            }
            assert_eq!(cancelling(), 0, "wait_for: {through_wait_for}");
            braid::sleep(Duration::from_millis(1)).await?;
            release.set_result(())?;
            Ok(())
        });
    }
}
