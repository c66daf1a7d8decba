//! `braid::Barrier` with asyncio's semantics on a runtime of many loops (API.md
//! "Synchronisation", issue 6): `wait` blocks until `parties` tasks wait and returns each its
//! arrival index; the barrier is reusable, and newcomers wait while the last round drains;
//! `reset` sends the waiters away with `BrokenBarrier` and makes it usable again; `abort`
//! breaks it (every `wait` fails with `BrokenBarrier`, kind `Other`) until `reset`; a cancelled
//! waiter leaves the barrier; a barrier of 0 parties fails every `wait` with `InvalidState`.
//! Scenarios are ported from CPython 3.13's `Lib/test/test_asyncio/test_locks.py`
//! (`BarrierTests`); each test names the one it follows. The CPython scenarios that read
//! private state (`_count`, the `repr`) have no port.
//!
//! Every scenario runs on a 1-loop and on a 3-loop runtime. CPython's tests step one loop with
//! `asyncio.sleep(0)`; here a waiter counts as queued once its first poll has returned Pending
//! (see [`queued`]), which holds on any number of loops; `n_waiting` is checked after each.

use braid::{Barrier, BrokenBarrier, ErrorKind, Promise, Result};
use std::future::{poll_fn, Future, IntoFuture};
use std::pin::pin;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

mod common;
use common::*;

/// The parties of CPython's `BarrierTests` (its `self.N`).
const N: usize = 5;

/// Asserts that `outcome` is the error of a broken barrier: `BrokenBarrier`, kind `Other`.
fn assert_broken<T: std::fmt::Debug>(outcome: Result<T>) {
    match outcome {
        Err(e) if e.downcast_ref::<BrokenBarrier>().is_some() => {
            assert_eq!(e.kind(), ErrorKind::Other, "{e:?}");
        }
        other => panic!("expected BrokenBarrier, got {other:?}"),
    }
}

/// Starts `n` tasks on the shared pool running `body(i)`, and waits for them all.
async fn run_all<T, F, Fut>(n: usize, body: F) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    let tasks: Vec<_> = (0..n).map(|i| braid::create_task(body(i))).collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(settle(t).await?);
    }
    Ok(out)
}

/// The public types are `Send + Sync + Debug`, as API.md requires of every primitive.
#[test]
fn barrier_types_are_send_sync_and_debug() {
    fn check<T: Send + Sync + std::fmt::Debug>() {}
    check::<Barrier>();
    check::<BrokenBarrier>();
}

/// CPython `test_barrier_parties`, where asyncio refuses `Barrier(0)`: braid's barrier of 0
/// parties fails every `wait` with `InvalidState`, at once and without breaking a loop.
#[test]
fn zero_parties_fail_every_wait_with_invalid_state() {
    on_each_runtime(|| async {
        let barrier = Arc::new(Barrier::new(0));
        assert_eq!(barrier.parties(), 0);
        assert_eq!(
            barrier.wait().await.unwrap_err().kind(),
            ErrorKind::InvalidState
        );
        let b = barrier.clone();
        let kind = settle(braid::create_task(async move {
            Ok(b.wait().await.unwrap_err().kind())
        }))
        .await?;
        assert_eq!(kind, ErrorKind::InvalidState);
        assert_eq!(barrier.n_waiting(), 0);
        Ok(())
    });
}

/// CPython `test_filling_one_task` and `test_filling_one_task_twice`: a barrier of one party
/// lets every `wait` through at once with index 0.
#[test]
fn one_party_passes_at_once() {
    on_each_runtime(|| async {
        let barrier = Arc::new(Barrier::new(1));
        assert_eq!(barrier.wait().await?, 0);
        assert_eq!(barrier.wait().await?, 0);
        let indices = run_all(2, |_| {
            let b = barrier.clone();
            async move { b.wait().await }
        })
        .await?;
        assert_eq!(indices, [0, 0]);
        assert_eq!(barrier.n_waiting(), 0);
        assert!(!barrier.broken());
        Ok(())
    });
}

/// CPython `test_filling_task_by_task`: `n_waiting` counts the tasks as they arrive; the
/// third of three releases them all, each with its arrival index.
#[test]
fn fills_task_by_task() {
    on_each_runtime(|| async {
        let barrier = Arc::new(Barrier::new(3));
        let b = barrier.clone();
        let t1 = queued(async move { b.wait().await }).await?;
        assert_eq!(barrier.n_waiting(), 1);
        let b = barrier.clone();
        let t2 = queued(async move { b.wait().await }).await?;
        assert_eq!(barrier.n_waiting(), 2);
        let b = barrier.clone();
        let t3 = braid::create_task(async move { b.wait().await });
        assert_eq!(settle(t3).await?, 2);
        assert_eq!(settle(t1).await?, 0);
        assert_eq!(settle(t2).await?, 1);
        assert_eq!(barrier.n_waiting(), 0);
        assert!(!barrier.broken());
        Ok(())
    });
}

/// CPython `test_filling_tasks_wait_twice`, `test_filling_tasks_check_return_value` and
/// `test_context_manager`, over 50 rounds: five tasks on any loop pass the barrier together
/// round after round; each round hands out the indices 0..5 once each, so nobody slipped into
/// the next round while the last one drained.
#[test]
fn tasks_pass_together_round_after_round() {
    const ROUNDS: usize = 50;
    on_each_runtime(|| async {
        let barrier = Arc::new(Barrier::new(N));
        let seen = Arc::new(Mutex::new(vec![Vec::new(); ROUNDS]));
        run_all(N, |_| {
            let (b, seen) = (barrier.clone(), seen.clone());
            async move {
                for round in 0..ROUNDS {
                    let index = b.wait().await?;
                    seen.lock().unwrap()[round].push(index);
                }
                Ok(())
            }
        })
        .await?;
        for (round, indices) in seen.lock().unwrap().iter_mut().enumerate() {
            indices.sort_unstable();
            assert_eq!(*indices, (0..N).collect::<Vec<_>>(), "round {round}");
        }
        assert_eq!(barrier.n_waiting(), 0);
        assert!(!barrier.broken());
        Ok(())
    });
}

/// CPython `test_blocking_tasks_while_draining`: two tasks wait again at once, while the
/// others are still leaving; they are held until the barrier has drained and then pass with
/// the others, who first meet on a second barrier of three.
#[test]
fn newcomers_wait_while_the_barrier_drains() {
    on_each_runtime(|| async {
        let barrier = Arc::new(Barrier::new(N));
        let no_waiting = Arc::new(Barrier::new(N - 2));
        let rewait = Arc::new(AtomicIsize::new(2));
        run_all(N, |_| {
            let (b, nw, rewait) = (barrier.clone(), no_waiting.clone(), rewait.clone());
            async move {
                b.wait().await?;
                if rewait.fetch_sub(1, Ordering::SeqCst) > 0 {
                    b.wait().await?;
                } else {
                    nw.wait().await?;
                    b.wait().await?;
                }
                Ok(())
            }
        })
        .await?;
        assert_eq!(barrier.n_waiting(), 0);
        assert!(!barrier.broken());
        Ok(())
    });
}

/// CPython `test_filling_tasks_cancel_one`: a cancelled waiter leaves the barrier
/// (`n_waiting` drops back), and the barrier fills with the next arrivals.
#[test]
fn cancelled_waiter_leaves_the_barrier() {
    on_each_runtime(|| async {
        let barrier = Arc::new(Barrier::new(3));
        let passed = Arc::new(AtomicUsize::new(0));
        let waiter = || {
            let (b, passed) = (barrier.clone(), passed.clone());
            async move {
                b.wait().await?;
                passed.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        };
        let t1 = queued(waiter()).await?;
        assert_eq!(barrier.n_waiting(), 1);
        let t2 = queued(waiter()).await?;
        assert_eq!(barrier.n_waiting(), 2);
        assert!(t1.cancel());
        assert_cancelled(&settle(t1).await);
        assert_eq!(barrier.n_waiting(), 1);
        let t3 = queued(waiter()).await?;
        assert_eq!(barrier.n_waiting(), 2);
        let t4 = braid::create_task(waiter());
        settle(t2).await?;
        settle(t3).await?;
        settle(t4).await?;
        assert_eq!(passed.load(Ordering::SeqCst), 3);
        assert_eq!(barrier.n_waiting(), 0);
        assert!(!barrier.broken());

        // A dropped wait future leaves it too.
        {
            let mut wait = pin!(barrier.wait());
            let waited =
                poll_fn(|cx| std::task::Poll::Ready(wait.as_mut().poll(cx).is_pending())).await;
            assert!(waited);
            assert_eq!(barrier.n_waiting(), 1);
        }
        assert_eq!(barrier.n_waiting(), 0);
        Ok(())
    });
}

/// CPython `test_reset_barrier`: resetting a barrier nobody waits on leaves it usable.
#[test]
fn reset_of_an_idle_barrier() {
    on_each_runtime(|| async {
        let barrier = Barrier::new(1);
        barrier.reset();
        assert_eq!(barrier.n_waiting(), 0);
        assert!(!barrier.broken());
        assert_eq!(barrier.wait().await?, 0);
        Ok(())
    });
}

/// CPython `test_reset_barrier_while_tasks_waiting`: `reset` sends every waiter away with
/// `BrokenBarrier`, without breaking the barrier, which then serves a full round.
#[test]
fn reset_sends_the_waiters_away() {
    on_each_runtime(|| async {
        let barrier = Arc::new(Barrier::new(N));
        let mut waiters = Vec::new();
        for _ in 0..N - 1 {
            let b = barrier.clone();
            waiters.push(queued(async move { b.wait().await }).await?);
        }
        assert_eq!(barrier.n_waiting(), N - 1);
        barrier.reset();
        for w in waiters {
            assert_broken(settle(w).await);
        }
        assert_eq!(barrier.n_waiting(), 0);
        assert!(!barrier.broken());
        let mut indices = run_all(N, |_| {
            let b = barrier.clone();
            async move { b.wait().await }
        })
        .await?;
        indices.sort_unstable();
        assert_eq!(indices, (0..N).collect::<Vec<_>>());
        Ok(())
    });
}

/// CPython `test_reset_barrier_while_tasks_waiting_and_waiting_again`: the waiters sent away
/// by `reset` wait again, and pass with one more task.
#[test]
fn waiters_sent_away_by_reset_can_wait_again() {
    on_each_runtime(|| async {
        let barrier = Arc::new(Barrier::new(N));
        let mut waiters = Vec::new();
        for _ in 0..N - 1 {
            let b = barrier.clone();
            waiters.push(
                queued(async move {
                    let first = b.wait().await;
                    let second = b.wait().await;
                    Ok((first, second))
                })
                .await?,
            );
        }
        barrier.reset();
        let b = barrier.clone();
        let last = braid::create_task(async move { b.wait().await });
        let mut indices = vec![settle(last).await?];
        for w in waiters {
            let (first, second) = settle(w).await?;
            assert_broken(first);
            indices.push(second?);
        }
        indices.sort_unstable();
        assert_eq!(indices, (0..N).collect::<Vec<_>>());
        assert!(!barrier.broken());
        assert_eq!(barrier.n_waiting(), 0);
        Ok(())
    });
}

/// CPython `test_abort_barrier`: `abort` breaks the barrier: waiters and every later `wait`
/// fail with `BrokenBarrier` until `reset`.
#[test]
fn abort_breaks_the_barrier_until_reset() {
    on_each_runtime(|| async {
        let barrier = Arc::new(Barrier::new(3));
        let mut waiters = Vec::new();
        for _ in 0..2 {
            let b = barrier.clone();
            waiters.push(queued(async move { b.wait().await }).await?);
        }
        barrier.abort();
        assert!(barrier.broken());
        assert_eq!(barrier.n_waiting(), 0);
        for w in waiters {
            assert_broken(settle(w).await);
        }
        assert_broken(barrier.wait().await);

        barrier.reset();
        assert!(!barrier.broken());
        let one = Barrier::new(1);
        one.abort();
        assert!(one.broken());
        assert_broken(one.wait().await);
        one.reset();
        assert_eq!(one.wait().await?, 0);
        Ok(())
    });
}

/// CPython `test_abort_barrier_when_exception`: the task that draws the middle index fails
/// and aborts the barrier; every other task fails with `BrokenBarrier`, in its next `wait` or
/// (if it had not left the first round yet, as in asyncio) in its first.
#[test]
fn abort_by_a_failing_party_breaks_the_others() {
    on_each_runtime(|| async {
        let barrier = Arc::new(Barrier::new(N));
        let outcomes = run_all(N, |_| {
            let b = barrier.clone();
            async move {
                let outcome = async {
                    if b.wait().await? == N / 2 {
                        b.abort();
                        return Ok::<_, braid::Error>("aborted");
                    }
                    b.wait().await?;
                    Ok("passed")
                };
                match outcome.await {
                    Err(e) if e.downcast_ref::<BrokenBarrier>().is_some() => Ok("broken"),
                    other => other,
                }
            }
        })
        .await?;
        assert_eq!(outcomes.iter().filter(|o| **o == "aborted").count(), 1);
        assert_eq!(outcomes.iter().filter(|o| **o == "broken").count(), N - 1);
        assert!(barrier.broken());
        assert_eq!(barrier.n_waiting(), 0);
        Ok(())
    });
}

/// CPython `test_abort_barrier_when_exception_then_resetting`: after an abort, the tasks meet
/// on a second barrier, one of them resets the first, and they all pass it again.
#[test]
fn reset_after_abort_makes_the_barrier_usable() {
    on_each_runtime(|| async {
        let barrier1 = Arc::new(Barrier::new(N));
        let barrier2 = Arc::new(Barrier::new(N));
        let outcomes = run_all(N, |_| {
            let (b1, b2) = (barrier1.clone(), barrier2.clone());
            async move {
                let first = async {
                    if b1.wait().await? == N / 2 {
                        b1.abort();
                        return Ok::<_, braid::Error>("aborted");
                    }
                    b1.wait().await?;
                    Ok("passed")
                };
                let outcome = match first.await {
                    Err(e) if e.downcast_ref::<BrokenBarrier>().is_some() => "broken",
                    other => other?,
                };
                // Everyone has left barrier1 before the reset, and nobody enters it again
                // before the reset is done.
                if b2.wait().await? == N / 2 {
                    b1.reset();
                }
                b2.wait().await?;
                b1.wait().await?;
                Ok(outcome)
            }
        })
        .await?;
        assert_eq!(outcomes.iter().filter(|o| **o == "passed").count(), 0);
        assert_eq!(outcomes.iter().filter(|o| **o == "broken").count(), N - 1);
        assert!(!barrier1.broken());
        assert_eq!(barrier1.n_waiting(), 0);
        Ok(())
    });
}

/// CPython `test_reset_barrier_while_tasks_draining`, with the tasks pinned to one loop as in
/// asyncio: the last task to leave a round resets the barrier while the others already wait
/// for the next round, blocked because the barrier still drains; none of them is sent away,
/// and all pass two more rounds.
#[test]
fn reset_while_draining_sends_nobody_away() {
    on_each_runtime(|| async {
        let barrier = Arc::new(Barrier::new(N));
        let left = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..N)
            .map(|_| {
                let (b, left) = (barrier.clone(), left.clone());
                braid::spawn_local(async move {
                    b.wait().await?;
                    if left.fetch_add(1, Ordering::SeqCst) + 1 == N {
                        b.reset();
                    }
                    b.wait().await?;
                    b.wait().await?;
                    Ok(())
                })
            })
            .collect();
        for t in tasks {
            settle(t).await?;
        }
        assert!(!barrier.broken());
        assert_eq!(barrier.n_waiting(), 0);
        Ok(())
    });
}

/// The cancel race with real threads, 200 times: of three waiters on `Barrier(3)`, one is
/// cancelled as the last party arrives. If the last party's arrival completed the round, the
/// other two pass (the cancelled one may still report Cancelled, as in asyncio); if the
/// cancelled one had left first, the last party waits and a replacement completes the round.
/// Either way nobody hangs and `n_waiting` never counts a ghost.
#[test]
fn cancel_racing_the_last_arrival_leaves_no_ghost() {
    on_each_runtime(|| async {
        let barrier = Arc::new(Barrier::new(3));
        for _ in 0..200 {
            let b = barrier.clone();
            let victim = queued(async move { b.wait().await }).await?;
            let b = barrier.clone();
            let other = queued(async move { b.wait().await }).await?;
            let b = barrier.clone();
            let last_parked = Promise::new();
            let last = braid::create_task(report_parked(
                async move { b.wait().await },
                last_parked.clone(),
            ));
            victim.cancel();
            let victim = settle(victim).await;
            let last_waited = braid::wait_for(last_parked.into_future(), Some(WAIT)).await?;
            match victim {
                Ok(_) => assert!(
                    !last_waited,
                    "the victim passed a round that never completed"
                ),
                Err(e) if e.is_cancelled() => {}
                Err(e) => return Err(e),
            }
            if last_waited {
                // The victim left before the last party arrived: one more completes the round.
                let b = barrier.clone();
                settle(braid::create_task(async move { b.wait().await })).await?;
            }
            settle(other).await?;
            settle(last).await?;
            assert_eq!(barrier.n_waiting(), 0);
        }
        assert!(!barrier.broken());
        Ok(())
    });
}
