//! `braid::Semaphore` and `braid::BoundedSemaphore` with asyncio's semantics (Python 3.13) on
//! a runtime of many loops (API.md "Synchronisation", issue 6): permits counted by `value`,
//! FIFO service of waiters with no barging by newcomers, a negative initial value as an
//! `InvalidState` error (asyncio's ValueError), a bounded semaphore that refuses to be
//! released past its initial value, permits that release on drop (or are consumed by
//! `forget`), and cancelled waiters that leave no trace: one woken then cancelled before it
//! runs passes its permit on. Scenarios are ported from CPython 3.13's
//! `Lib/test/test_asyncio/test_locks.py` (`SemaphoreTests`); each test names the one it
//! follows.
//!
//! Every scenario runs on a 1-loop and on a 3-loop runtime. CPython's tests step one loop with
//! `asyncio.sleep(0)`; here a waiter counts as queued once its first poll has returned Pending
//! (see [`queued`]), which holds on any number of loops. Tasks that must stay asleep while the
//! main future acts (to be woken and cancelled "at the same time") are pinned to the main
//! future's own loop with `spawn_local`: they cannot run before the main future next awaits.

use braid::{BoundedSemaphore, ErrorKind, Result, Semaphore};
use std::future::poll_fn;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

mod common;
use common::*;

/// A task body that takes a permit of `sem`, keeps it (`forget`, as CPython's coroutines
/// never release) and records `id` in `order`.
fn acquire_and_keep(
    sem: &Arc<Semaphore>,
    order: &Arc<Mutex<Vec<usize>>>,
    id: usize,
) -> impl Future<Output = Result<()>> + Send + 'static {
    let (sem, order) = (sem.clone(), order.clone());
    async move {
        sem.acquire().await?.forget();
        order.lock().unwrap().push(id);
        Ok(())
    }
}

/// The public types are `Send + Sync + Debug`, as API.md requires of every primitive.
#[test]
fn semaphore_types_are_send_sync_and_debug() {
    fn check<T: Send + Sync + std::fmt::Debug>() {}
    check::<Semaphore>();
    check::<BoundedSemaphore>();
    check::<braid::SemaphorePermit<'static>>();
}

/// CPython `test_initial_value_zero`: a semaphore of 0 permits is locked.
#[test]
fn zero_permits_is_locked() {
    let sem = Semaphore::new(0);
    assert!(sem.locked());
    assert_eq!(sem.value(), 0);
    assert!(sem.try_acquire().is_none());
}

/// CPython `test_semaphore_value`: a negative initial value is an `InvalidState` error
/// (asyncio's ValueError); zero and positive ones are accepted.
#[test]
fn negative_initial_value_is_an_error() {
    let err = Semaphore::with_value(-1).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidState, "{err:?}");
    assert_eq!(Semaphore::with_value(0).unwrap().value(), 0);
    assert_eq!(Semaphore::with_value(2).unwrap().value(), 2);
}

/// CPython `test_acquire`: permits are counted; once they run out, waiters queue and each
/// `release` hands a permit straight to the next waiter in arrival order (the value stays 0).
#[test]
fn acquire_counts_permits_and_serves_waiters_in_order() {
    on_each_runtime(|| async {
        let sem = Arc::new(Semaphore::new(3));
        let order = Arc::new(Mutex::new(Vec::new()));
        sem.acquire().await?.forget();
        sem.acquire().await?.forget();
        assert!(!sem.locked());
        assert_eq!(sem.value(), 1);

        settle(braid::create_task(acquire_and_keep(&sem, &order, 1))).await?;
        assert!(sem.locked());
        assert_eq!(sem.value(), 0);
        let t2 = queued(acquire_and_keep(&sem, &order, 2)).await?;
        let t3 = queued(acquire_and_keep(&sem, &order, 3)).await?;
        let t4 = queued_local(acquire_and_keep(&sem, &order, 4)).await?;

        sem.release();
        sem.release();
        assert_eq!(sem.value(), 0, "a released permit did not go to a waiter");
        settle(t2).await?;
        settle(t3).await?;
        let_local_tasks_run().await?;
        assert!(
            !t4.done(),
            "the last waiter was served before the first two"
        );
        assert!(sem.locked());
        // t2 and t3 hold their permits at once and may record in either order.
        let mut served = order.lock().unwrap().clone();
        served.sort_unstable();
        assert_eq!(served, [1, 2, 3]);

        sem.release();
        settle(t4).await?;
        assert_eq!(order.lock().unwrap().last(), Some(&4));
        assert_eq!(sem.value(), 0);
        Ok(())
    });
}

/// CPython `test_acquire_cancel`: a cancelled waiter leaves no trace: the permit released
/// afterwards is free again.
#[test]
fn cancelled_acquire_leaves_no_trace() {
    on_each_runtime(|| async {
        let sem = Arc::new(Semaphore::new(1));
        let order = Arc::new(Mutex::new(Vec::new()));
        let permit = sem.acquire().await?;
        let t = queued(acquire_and_keep(&sem, &order, 1)).await?;
        assert!(t.cancel());
        assert_cancelled(&settle(t).await);
        drop(permit);
        assert_eq!(sem.value(), 1, "the permit went to the cancelled waiter");
        assert!(!sem.locked());
        assert!(sem.try_acquire().is_some());

        // Dropping a waiting acquire future leaves no trace either.
        let permit = sem.acquire().await?;
        {
            let mut acquire = pin!(sem.acquire());
            let waited =
                poll_fn(|cx| std::task::Poll::Ready(acquire.as_mut().poll(cx).is_pending())).await;
            assert!(waited);
        }
        drop(permit);
        assert_eq!(sem.value(), 1, "the permit went to a dropped acquire");
        Ok(())
    });
}

/// CPython `test_acquire_cancel_before_awoken`: of four waiters on a semaphore of 0, the first
/// two are cancelled and one permit released at once: the third gets it, the fourth still
/// waits.
#[test]
fn waiters_cancelled_before_the_release_are_skipped() {
    on_each_runtime(|| async {
        let sem = Arc::new(Semaphore::new(0));
        let order = Arc::new(Mutex::new(Vec::new()));
        let t1 = queued_local(acquire_and_keep(&sem, &order, 1)).await?;
        let t2 = queued_local(acquire_and_keep(&sem, &order, 2)).await?;
        let t3 = queued_local(acquire_and_keep(&sem, &order, 3)).await?;
        let t4 = queued_local(acquire_and_keep(&sem, &order, 4)).await?;
        assert!(t1.cancel());
        assert!(t2.cancel());
        sem.release();
        assert_cancelled(&settle(t1).await);
        assert_cancelled(&settle(t2).await);
        settle(t3).await?;
        let_local_tasks_run().await?;
        assert!(!t4.done(), "one release let two waiters through");
        assert_eq!(*order.lock().unwrap(), [3]);
        assert!(t4.cancel());
        assert_cancelled(&settle(t4).await);
        assert_eq!(sem.value(), 0);
        Ok(())
    });
}

/// CPython `test_acquire_hang`: the first of two waiters is cancelled and a permit released
/// at once; the second gets it rather than hang.
#[test]
fn cancelled_waiter_does_not_hang_the_next() {
    on_each_runtime(|| async {
        let sem = Arc::new(Semaphore::new(0));
        let order = Arc::new(Mutex::new(Vec::new()));
        let t1 = queued_local(acquire_and_keep(&sem, &order, 1)).await?;
        let t2 = queued(acquire_and_keep(&sem, &order, 2)).await?;
        assert!(t1.cancel());
        sem.release();
        assert_cancelled(&settle(t1).await);
        settle(t2).await?;
        assert!(sem.locked());
        Ok(())
    });
}

/// CPython `test_acquire_no_hang`: a waiter woken by a release and cancelled before it runs
/// passes the permit on: to the waiter behind it, or back to the semaphore.
#[test]
fn waiter_woken_then_cancelled_passes_the_permit_on() {
    on_each_runtime(|| async {
        let sem = Arc::new(Semaphore::new(1));
        let order = Arc::new(Mutex::new(Vec::new()));
        let permit = sem.acquire().await?;
        let t2 = queued_local(acquire_and_keep(&sem, &order, 2)).await?;
        drop(permit); // hands the permit to t2, which has not run yet
        assert!(t2.cancel());
        assert_cancelled(&settle(t2).await);
        braid::wait_for(sem.acquire(), Some(WAIT)).await?.forget();

        let w1 = queued_local(acquire_and_keep(&sem, &order, 1)).await?;
        let w2 = queued(acquire_and_keep(&sem, &order, 2)).await?;
        sem.release();
        assert!(w1.cancel());
        assert_cancelled(&settle(w1).await);
        settle(w2).await?;
        assert_eq!(*order.lock().unwrap(), [2]);
        assert_eq!(sem.value(), 0);
        Ok(())
    });
}

/// CPython `test_release_not_acquired` (bounded): releasing a `BoundedSemaphore` past its
/// initial value is an `InvalidState` error (asyncio's ValueError) and changes nothing; its
/// permits release on drop like any.
#[test]
fn bounded_semaphore_refuses_a_release_past_the_initial_value() {
    on_each_runtime(|| async {
        let sem = Arc::new(BoundedSemaphore::new(2));
        let err = sem.release().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidState, "{err:?}");
        assert_eq!(sem.value(), 2);

        sem.acquire().await?.forget();
        let permit = sem.try_acquire().expect("one permit left");
        assert!(sem.locked());
        let s = sem.clone();
        let waiter = queued(async move {
            drop(s.acquire().await?);
            Ok(())
        })
        .await?;
        drop(permit);
        settle(waiter).await?;
        assert_eq!(sem.value(), 1);
        sem.release()?;
        assert_eq!(sem.value(), 2);
        assert_eq!(sem.release().unwrap_err().kind(), ErrorKind::InvalidState);
        assert_eq!(sem.value(), 2);
        Ok(())
    });
}

/// CPython `test_release_no_waiters`, and the permit guard: a dropped permit returns to the
/// semaphore, a forgotten one does not, and a plain `Semaphore` may be released past its
/// initial value.
#[test]
fn permits_release_on_drop_and_forget_consumes_them() {
    on_each_runtime(|| async {
        let sem = Semaphore::new(1);
        sem.acquire().await?.forget();
        assert!(sem.locked());
        sem.release();
        assert!(!sem.locked());

        let sem = Semaphore::new(2);
        let permit = sem.acquire().await?;
        assert_eq!(sem.value(), 1);
        drop(permit);
        assert_eq!(sem.value(), 2);
        sem.acquire().await?.forget();
        assert_eq!(sem.value(), 1);
        drop(sem.try_acquire().expect("a permit is left"));
        assert_eq!(sem.value(), 1);
        sem.release();
        sem.release();
        assert_eq!(sem.value(), 3);
        Ok(())
    });
}

/// CPython `test_acquire_fifo_order`: three tasks take a `Semaphore(1)` twice each, yielding
/// while they hold it; a task that releases and re-acquires queues behind the others (no
/// barging), so the order is c1, c2, c3, c1, c2, c3 whichever loops they run on.
#[test]
fn acquire_is_fifo_without_barging() {
    on_each_runtime(|| async {
        let sem = Arc::new(Semaphore::new(1));
        let order = Arc::new(Mutex::new(Vec::new()));
        let held = sem.acquire().await?;
        let mut tasks = Vec::new();
        for tag in ["c1", "c2", "c3"] {
            let (sem, order) = (sem.clone(), order.clone());
            tasks.push(
                queued(async move {
                    for round in 1..=2 {
                        let permit = sem.acquire().await?;
                        order.lock().unwrap().push(format!("{tag}_{round}"));
                        braid::yield_now().await?;
                        drop(permit);
                    }
                    Ok(())
                })
                .await?,
            );
        }
        drop(held);
        for t in tasks {
            settle(t).await?;
        }
        assert_eq!(
            *order.lock().unwrap(),
            ["c1_1", "c2_1", "c3_1", "c1_2", "c2_2", "c3_2"]
        );
        assert_eq!(sem.value(), 1);
        Ok(())
    });
}

/// CPython `test_acquire_fifo_order_3`: the first of three waiters on a semaphore of 0 is
/// cancelled; two releases serve the other two, in order.
#[test]
fn cancelled_first_waiter_is_skipped_in_order() {
    on_each_runtime(|| async {
        let sem = Arc::new(Semaphore::new(0));
        let order = Arc::new(Mutex::new(Vec::new()));
        let t1 = queued_local(acquire_and_keep(&sem, &order, 1)).await?;
        let t2 = queued_local(acquire_and_keep(&sem, &order, 2)).await?;
        let t3 = queued_local(acquire_and_keep(&sem, &order, 3)).await?;
        assert!(t1.cancel());
        assert_cancelled(&settle(t1).await);
        sem.release();
        sem.release();
        settle(t2).await?;
        settle(t3).await?;
        assert_eq!(*order.lock().unwrap(), [2, 3]);
        Ok(())
    });
}

/// A `Semaphore(3)` bounds the concurrency of twelve tasks on every loop: never more than
/// three inside at once, and all permits back at the end.
#[test]
fn limits_concurrency_across_loops() {
    on_each_runtime(|| async {
        let sem = Arc::new(Semaphore::new(3));
        let inside = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..12)
            .map(|_| {
                let (sem, inside) = (sem.clone(), inside.clone());
                braid::create_task(async move {
                    for _ in 0..50 {
                        let _permit = sem.acquire().await?;
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        assert!(now <= 3, "{now} tasks inside a Semaphore(3)");
                        braid::yield_now().await?;
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                    Ok(())
                })
            })
            .collect();
        for t in tasks {
            braid::wait_for(t, Some(WAIT * 4)).await?;
        }
        assert_eq!(sem.value(), 3);
        Ok(())
    });
}

/// The cancel race with real threads, 200 times: the holder releases and cancels a waiter
/// on the shared pool at once. The waiter either got the permit in time (and returned it) or
/// ends cancelled; either way the waiter behind it is served and no permit is lost.
#[test]
fn cancel_racing_release_across_loops_never_loses_a_permit() {
    on_each_runtime(|| async {
        let sem = Arc::new(Semaphore::new(1));
        for _ in 0..200 {
            let held = sem.acquire().await?;
            let s = sem.clone();
            let w = queued(async move {
                drop(s.acquire().await?);
                Ok(())
            })
            .await?;
            let s = sem.clone();
            let x = queued(async move {
                drop(s.acquire().await?);
                Ok(())
            })
            .await?;
            drop(held);
            w.cancel();
            match settle(w).await {
                Ok(()) => {}
                Err(e) if e.is_cancelled() => {}
                Err(e) => return Err(e),
            }
            settle(x).await?;
            assert_eq!(sem.value(), 1, "a permit was lost");
        }
        Ok(())
    });
}
