//! `braid::Lock` with asyncio's semantics on a runtime of many loops (API.md
//! "Synchronisation"): FIFO acquisition, a cancelled waiter that leaves no trace, a waiter
//! woken then cancelled before it runs that passes the lock on, releasing an unlocked lock as
//! an `InvalidState` error, guards that release on drop, and mutual exclusion between tasks on
//! different loops. Scenarios are ported from CPython 3.13's
//! `Lib/test/test_asyncio/test_locks.py` (`LockTests`); each test names the one it follows.
//!
//! Every scenario runs on a 1-loop and on a 3-loop runtime. CPython's tests step one loop with
//! `asyncio.sleep(0)`; here a waiter counts as queued once its first poll has returned Pending
//! (see [`queued`]), which holds on any number of loops. Tasks that must stay asleep while the
//! main future acts (to be woken and cancelled "at the same time") are pinned to the main
//! future's own loop with `spawn_local`: they cannot run before the main future next awaits.

use braid::{ErrorKind, Lock, Result};
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

mod common;
use common::*;

/// A task body that acquires `lock`, records `id` in `order` and keeps the lock without a
/// guard, as the coroutines of CPython's tests do (they never release).
fn acquire_and_keep(
    lock: &Arc<Lock>,
    order: &Arc<Mutex<Vec<usize>>>,
    id: usize,
) -> impl Future<Output = Result<()>> + Send + 'static {
    let (lock, order) = (lock.clone(), order.clone());
    async move {
        lock.acquire().await?.detach();
        order.lock().unwrap().push(id);
        Ok(())
    }
}

/// The public types are `Send + Sync + Debug`, as API.md requires of every primitive.
#[test]
fn lock_types_are_send_sync_and_debug() {
    fn check<T: Send + Sync + std::fmt::Debug>() {}
    check::<Lock>();
    check::<braid::LockGuard<'static>>();
}

/// CPython `test_acquire`: three waiters acquire in the order they queued, each getting the
/// lock only when the holder releases it.
#[test]
fn acquire_is_fifo() {
    on_each_runtime(|| async {
        let lock = Arc::new(Lock::new());
        let order = Arc::new(Mutex::new(Vec::new()));
        lock.acquire().await?.detach();
        assert!(lock.locked());

        let t1 = queued(acquire_and_keep(&lock, &order, 1)).await?;
        let t2 = queued(acquire_and_keep(&lock, &order, 2)).await?;
        assert!(order.lock().unwrap().is_empty());

        lock.release()?;
        settle(t1).await?;
        assert_eq!(*order.lock().unwrap(), [1]);

        let t3 = queued(acquire_and_keep(&lock, &order, 3)).await?;
        lock.release()?;
        settle(t2).await?;
        assert_eq!(*order.lock().unwrap(), [1, 2]);

        lock.release()?;
        settle(t3).await?;
        assert_eq!(*order.lock().unwrap(), [1, 2, 3]);
        assert!(lock.locked(), "t3 keeps the lock");
        lock.release()?;
        assert!(!lock.locked());
        Ok(())
    });
}

/// FIFO hand-off along a chain: eight waiters queue one after another (on any loop); each
/// takes the lock, records itself and drops its guard, which hands the lock to the next.
/// CPython `test_acquire` at a larger size and across loops.
#[test]
fn guard_drop_hands_the_lock_on_in_arrival_order() {
    on_each_runtime(|| async {
        let lock = Arc::new(Lock::new());
        let order = Arc::new(Mutex::new(Vec::new()));
        let held = lock.acquire().await?;
        let mut waiters = Vec::new();
        for id in 0..8 {
            let (lock, order) = (lock.clone(), order.clone());
            waiters.push(
                queued(async move {
                    let _guard = lock.acquire().await?;
                    order.lock().unwrap().push(id);
                    Ok(())
                })
                .await?,
            );
        }
        drop(held);
        for t in waiters {
            settle(t).await?;
        }
        assert_eq!(*order.lock().unwrap(), (0..8).collect::<Vec<_>>());
        assert!(!lock.locked());
        Ok(())
    });
}

/// CPython `test_acquire_cancel`: a cancelled waiter returns a Cancelled error and leaves no
/// trace: the lock, released afterwards, is free (not handed to the dead waiter), and a waiter
/// queued behind a cancelled one gets it.
#[test]
fn cancelled_waiter_leaves_no_trace() {
    on_each_runtime(|| async {
        let lock = Arc::new(Lock::new());
        let order = Arc::new(Mutex::new(Vec::new()));

        let held = lock.acquire().await?;
        let t = queued(acquire_and_keep(&lock, &order, 1)).await?;
        assert!(t.cancel());
        assert_cancelled(&settle(t).await);
        drop(held);
        assert!(!lock.locked(), "the lock went to the cancelled waiter");
        assert!(lock.try_acquire().is_some());

        // Cancelled in the middle of the queue: the ones around it are served in order.
        let held = lock.acquire().await?;
        let t1 = queued(acquire_and_keep(&lock, &order, 1)).await?;
        let t2 = queued(acquire_and_keep(&lock, &order, 2)).await?;
        let t3 = queued(acquire_and_keep(&lock, &order, 3)).await?;
        assert!(t2.cancel());
        assert_cancelled(&settle(t2).await);
        drop(held);
        settle(t1).await?;
        lock.release()?;
        settle(t3).await?;
        assert_eq!(*order.lock().unwrap(), [1, 3]);
        lock.release()?;
        assert!(!lock.locked());
        Ok(())
    });
}

/// CPython `test_cancel_race`: A holds the lock, B and C wait. A releases, which wakes B, and B
/// is cancelled before it runs: B ends cancelled and passes the lock on to C.
#[test]
fn waiter_woken_then_cancelled_passes_the_lock_on() {
    on_each_runtime(|| async {
        let lock = Arc::new(Lock::new());
        let order = Arc::new(Mutex::new(Vec::new()));
        let held = lock.acquire().await?;
        let b = queued_local(acquire_and_keep(&lock, &order, 2)).await?;
        let c = queued(acquire_and_keep(&lock, &order, 3)).await?;

        drop(held); // wakes B, which cannot run before this future awaits
        assert!(b.cancel());
        assert_cancelled(&settle(b).await);
        settle(c).await?;
        assert_eq!(*order.lock().unwrap(), [3]);
        assert!(lock.locked(), "C keeps the lock");
        lock.release()?;
        assert!(!lock.locked());
        Ok(())
    });
}

/// CPython `test_cancel_release_race` (issue 32734): with three waiters, cancelling the first
/// and releasing at once gives the lock to exactly one task, the second.
#[test]
fn cancel_then_release_takes_the_lock_once() {
    on_each_runtime(|| async {
        let lock = Arc::new(Lock::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let locks = Arc::new(AtomicUsize::new(0));
        let lockit = || {
            let (lock, calls, locks) = (lock.clone(), calls.clone(), locks.clone());
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                lock.acquire().await?.detach();
                locks.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        };
        lock.acquire().await?.detach();
        let t1 = queued_local(lockit()).await?;
        let t2 = queued_local(lockit()).await?;
        let t3 = queued_local(lockit()).await?;

        assert!(t1.cancel());
        lock.release()?;
        assert_cancelled(&settle(t1).await);
        settle(t2).await?;
        // t3 shares this loop: two turns let it run if it was (wrongly) woken too.
        braid::yield_now().await?;
        braid::yield_now().await?;
        assert_eq!(locks.load(Ordering::SeqCst), 1, "the lock was taken twice");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert!(!t3.done());

        assert!(t3.cancel());
        assert_cancelled(&settle(t3).await);
        assert!(lock.locked(), "t2 keeps the lock");
        lock.release()?;
        assert!(!lock.locked());
        Ok(())
    });
}

/// CPython `test_finished_waiter_cancelled`: B waits, C is created but has not run yet; B is
/// cancelled and the lock released at once. B ends cancelled and C gets the lock.
#[test]
fn cancelled_waiter_does_not_strand_a_late_arrival() {
    on_each_runtime(|| async {
        let lock = Arc::new(Lock::new());
        let order = Arc::new(Mutex::new(Vec::new()));
        lock.acquire().await?.detach();
        let b = queued_local(acquire_and_keep(&lock, &order, 2)).await?;
        let c = braid::spawn_local(acquire_and_keep(&lock, &order, 3));
        assert!(b.cancel());
        lock.release()?;
        assert_cancelled(&settle(b).await);
        settle(c).await?;
        assert_eq!(*order.lock().unwrap(), [3]);
        assert!(lock.locked());
        lock.release()?;
        Ok(())
    });
}

/// CPython `test_release_not_acquired` and `test_release_no_waiters`: releasing an unlocked
/// lock is an `InvalidState` error (asyncio's RuntimeError), both outside a loop and in a task
/// on a loop thread, whose loop goes on running; a lock acquired and released is unlocked.
#[test]
fn release_of_an_unlocked_lock_is_invalid_state() {
    let lock = Lock::new();
    assert_eq!(lock.release().unwrap_err().kind(), ErrorKind::InvalidState);
    lock.try_acquire().expect("a new lock is free").detach();
    assert!(lock.locked());
    lock.release().unwrap();
    assert!(!lock.locked());
    assert_eq!(lock.release().unwrap_err().kind(), ErrorKind::InvalidState);

    on_each_runtime(|| async {
        let lock = Arc::new(Lock::new());
        let l = lock.clone();
        let kind = settle(braid::create_task(async move {
            Ok(l.release().unwrap_err().kind())
        }))
        .await?;
        assert_eq!(kind, ErrorKind::InvalidState);
        drop(lock.acquire().await?);
        assert_eq!(lock.release().unwrap_err().kind(), ErrorKind::InvalidState);
        // The loops still run tasks.
        assert_eq!(settle(braid::create_task(async { Ok(7) })).await?, 7);
        Ok(())
    });
}

/// CPython `test_context_manager` and `test_lock`: a guard holds the lock until dropped;
/// `try_acquire` fails while it is held; `detach` keeps the lock held without a guard until
/// `Lock::release`.
#[test]
fn guard_releases_on_drop_and_detach_keeps_the_lock() {
    on_each_runtime(|| async {
        let lock = Lock::new();
        assert!(!lock.locked());
        {
            let _guard = lock.acquire().await?;
            assert!(lock.locked());
            assert!(lock.try_acquire().is_none());
        }
        assert!(!lock.locked());
        let guard = lock.try_acquire().expect("free after the guard dropped");
        guard.detach();
        assert!(lock.locked());
        assert!(lock.try_acquire().is_none());
        lock.release()?;
        assert!(!lock.locked());
        Ok(())
    });
}

/// Rust's own way to cancel: an `acquire` future dropped while it waits leaves no trace, and
/// a waiting task aborted after the lock was handed to it (before it ran) passes it on.
#[test]
fn dropped_acquire_leaves_no_trace() {
    on_each_runtime(|| async {
        let lock = Arc::new(Lock::new());
        let order = Arc::new(Mutex::new(Vec::new()));
        let held = lock.acquire().await?;
        {
            let mut acquire = pin!(lock.acquire());
            let first = poll_fn(|cx| Poll::Ready(acquire.as_mut().poll(cx).is_pending())).await;
            assert!(first, "acquire of a held lock completed");
        }
        drop(held);
        assert!(!lock.locked(), "the lock went to a dropped acquire");

        let held = lock.acquire().await?;
        let w = queued_local(acquire_and_keep(&lock, &order, 1)).await?;
        let x = queued(acquire_and_keep(&lock, &order, 2)).await?;
        drop(held); // hands the lock to W, which has not run yet
        w.abort();
        settle(x).await?;
        assert_eq!(*order.lock().unwrap(), [2]);
        assert!(w.done());
        lock.release()?;
        assert!(!lock.locked());
        Ok(())
    });
}

/// Mutual exclusion across loops: six tasks on the shared pool take the lock 300 times each
/// and yield inside the critical section; no two are ever inside at once, and every
/// acquisition happens.
#[test]
fn excludes_tasks_on_different_loops() {
    const TASKS: usize = 6;
    const ROUNDS: usize = 300;
    on_each_runtime(|| async {
        let lock = Arc::new(Lock::new());
        let inside = Arc::new(AtomicBool::new(false));
        let entries = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let (lock, inside, entries) = (lock.clone(), inside.clone(), entries.clone());
                braid::create_task(async move {
                    for _ in 0..ROUNDS {
                        let _guard = lock.acquire().await?;
                        assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                        entries.fetch_add(1, Ordering::SeqCst);
                        braid::yield_now().await?;
                        inside.store(false, Ordering::SeqCst);
                    }
                    Ok(())
                })
            })
            .collect();
        for t in tasks {
            braid::wait_for(t, Some(WAIT * 6)).await?;
        }
        assert_eq!(entries.load(Ordering::SeqCst), TASKS * ROUNDS);
        assert!(!lock.locked());
        Ok(())
    });
}

/// The cancel race with real threads: W and X wait on the shared pool; the holder releases
/// and cancels W at once, 200 times. W either got the lock in time (and released it) or ends
/// cancelled; either way X gets the lock and afterwards nobody holds it.
#[test]
fn cancel_racing_release_across_loops_never_loses_the_lock() {
    on_each_runtime(|| async {
        let lock = Arc::new(Lock::new());
        let (mut acquired, mut cancelled) = (0, 0);
        for _ in 0..200 {
            let held = lock.acquire().await?;
            let l = lock.clone();
            let w = queued(async move {
                let _guard = l.acquire().await?;
                Ok(())
            })
            .await?;
            let l = lock.clone();
            let x = queued(async move {
                let _guard = l.acquire().await?;
                Ok(())
            })
            .await?;
            drop(held);
            w.cancel();
            match settle(w).await {
                Ok(()) => acquired += 1,
                Err(e) if e.is_cancelled() => cancelled += 1,
                Err(e) => return Err(e),
            }
            settle(x).await?;
            assert!(!lock.locked(), "the lock is held by nobody alive");
        }
        assert_eq!(acquired + cancelled, 200);
        Ok(())
    });
}
