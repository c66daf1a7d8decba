//! `braid::Condition` with asyncio's semantics (Python 3.13) on a runtime of many loops
//! (API.md "Synchronisation", issue 6): `wait` releases the lock, waits for a notify and
//! re-acquires the lock before returning, even when cancelled; `wait_for(predicate)`;
//! `notify(n)` wakes the first `n` waiters and `notify_all` every one; a condition can share a
//! `Lock`; a waiter notified and then cancelled passes the notification on, so that no wake-up
//! is lost; the Cancelled error comes out unchanged. Scenarios are ported from CPython 3.13's
//! `Lib/test/test_asyncio/test_locks.py` (`ConditionTests`); each test names the one it
//! follows. CPython's checks that `wait` and `notify` need the lock held
//! (`test_wait_unacquired`, `test_notify_unacquired`) are mostly the compiler's here: they are
//! methods of the guard. Only a guard whose wait was dropped half-way holds nothing; `wait` on
//! it fails (`wait_on_a_guard_that_holds_nothing_fails_and_leaves_the_lock_alone`).
//!
//! Every scenario runs on a 1-loop and on a 3-loop runtime. CPython's tests step one loop with
//! `asyncio.sleep(0)`; here a waiter counts as queued once its first poll has returned Pending
//! (see [`queued`]), which holds on any number of loops. Tasks that must stay asleep while the
//! main future acts (to be notified and cancelled "at the same time") are pinned to the main
//! future's own loop with `spawn_local`: they cannot run before the main future next awaits.

use braid::{Condition, Lock, Result};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

mod common;
use common::*;

/// A task body that takes the condition's lock, waits once, records `id` in `order` and
/// releases the lock by dropping its guard (CPython's `c1`, `c2`, `c3`).
fn wait_then_record(
    cond: &Arc<Condition>,
    order: &Arc<Mutex<Vec<usize>>>,
    id: usize,
) -> impl Future<Output = Result<()>> + Send + 'static {
    let (cond, order) = (cond.clone(), order.clone());
    async move {
        let mut guard = cond.acquire().await?;
        guard.wait().await?;
        order.lock().unwrap().push(id);
        Ok(())
    }
}

/// Takes the lock and notifies `n` waiters.
async fn notify(cond: &Condition, n: usize) -> Result<()> {
    cond.acquire().await?.notify(n);
    Ok(())
}

/// The public types are `Send + Sync + Debug`, as API.md requires of every primitive.
#[test]
fn condition_types_are_send_sync_and_debug() {
    fn check<T: Send + Sync + std::fmt::Debug>() {}
    check::<Condition>();
    check::<braid::ConditionGuard<'static>>();
}

/// CPython `test_wait`: a notified waiter runs only once the notifier releases the lock;
/// `notify(2)` wakes the next two, which re-take the lock one after the other, in order.
#[test]
fn notified_waiters_resume_in_order_once_the_lock_is_free() {
    on_each_runtime(|| async {
        let cond = Arc::new(Condition::new());
        let order = Arc::new(Mutex::new(Vec::new()));
        let t1 = queued_local(wait_then_record(&cond, &order, 1)).await?;
        let t2 = queued_local(wait_then_record(&cond, &order, 2)).await?;
        let t3 = queued_local(wait_then_record(&cond, &order, 3)).await?;
        assert!(!cond.locked(), "wait did not release the lock");

        let guard = cond.acquire().await?;
        guard.notify(1);
        let_local_tasks_run().await?;
        assert!(
            order.lock().unwrap().is_empty(),
            "a waiter ran without the lock"
        );
        assert!(cond.locked());
        drop(guard);
        settle(t1).await?;
        assert_eq!(*order.lock().unwrap(), [1]);

        let guard = cond.acquire().await?;
        guard.notify(2);
        let_local_tasks_run().await?;
        assert_eq!(*order.lock().unwrap(), [1]);
        drop(guard);
        settle(t2).await?;
        settle(t3).await?;
        assert_eq!(*order.lock().unwrap(), [1, 2, 3]);
        assert!(!cond.locked());
        Ok(())
    });
}

/// `notify(1)` wakes the longest-waiting task, whichever loops the waiters run on.
#[test]
fn notify_wakes_waiters_in_arrival_order_across_loops() {
    on_each_runtime(|| async {
        let cond = Arc::new(Condition::new());
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for id in 0..5 {
            waiters.push(queued(wait_then_record(&cond, &order, id)).await?);
        }
        for w in waiters {
            notify(&cond, 1).await?;
            settle(w).await?;
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4]);
        Ok(())
    });
}

/// CPython `test_notify` and `test_notify_all`: `notify(1)` wakes one waiter, `notify(n)`
/// with `n` beyond the number of waiters wakes them all, `notify_all` wakes every one.
#[test]
fn notify_n_and_notify_all() {
    on_each_runtime(|| async {
        let cond = Arc::new(Condition::new());
        let order = Arc::new(Mutex::new(Vec::new()));
        let t1 = queued_local(wait_then_record(&cond, &order, 1)).await?;
        let t2 = queued_local(wait_then_record(&cond, &order, 2)).await?;
        let t3 = queued_local(wait_then_record(&cond, &order, 3)).await?;
        notify(&cond, 1).await?;
        settle(t1).await?;
        let_local_tasks_run().await?;
        assert_eq!(*order.lock().unwrap(), [1]);
        assert!(
            !t2.done() && !t3.done(),
            "notify(1) woke more than one waiter"
        );
        {
            let guard = cond.acquire().await?;
            guard.notify(1);
            guard.notify(2048);
        }
        settle(t2).await?;
        settle(t3).await?;
        assert_eq!(*order.lock().unwrap(), [1, 2, 3]);

        let mut waiters = Vec::new();
        for id in 4..10 {
            waiters.push(queued(wait_then_record(&cond, &order, id)).await?);
        }
        cond.acquire().await?.notify_all();
        for w in waiters {
            settle(w).await?;
        }
        assert_eq!(order.lock().unwrap().len(), 9);
        Ok(())
    });
}

/// CPython `test_wait_cancel`: a cancelled `wait` returns a Cancelled error with the lock
/// held again, and leaves no trace: a later `notify(1)` wakes the next waiter, not a ghost.
#[test]
fn cancelled_wait_reacquires_the_lock_and_leaves_no_trace() {
    on_each_runtime(|| async {
        let cond = Arc::new(Condition::new());
        let c = cond.clone();
        let w = queued(async move {
            let mut guard = c.acquire().await?;
            let outcome = guard.wait().await;
            Ok((outcome, c.locked()))
        })
        .await?;
        assert!(w.cancel());
        let (outcome, locked_on_return) = settle(w).await?;
        assert_cancelled(&outcome);
        assert!(locked_on_return, "wait returned without the lock");
        assert!(!cond.locked());

        let order = Arc::new(Mutex::new(Vec::new()));
        let next = queued(wait_then_record(&cond, &order, 1)).await?;
        notify(&cond, 1).await?;
        settle(next).await?;
        Ok(())
    });
}

/// `Condition::acquire` is a cancellation point: a task cancelled while it waits for the
/// lock ends cancelled without taking it.
#[test]
fn cancelled_acquire_leaves_no_trace() {
    on_each_runtime(|| async {
        let cond = Arc::new(Condition::new());
        let held = cond.acquire().await?;
        let c = cond.clone();
        let w = queued(async move {
            drop(c.acquire().await?);
            Ok(())
        })
        .await?;
        assert!(w.cancel());
        assert_cancelled(&settle(w).await);
        drop(held);
        assert!(!cond.locked(), "the lock went to the cancelled task");
        drop(braid::wait_for(cond.acquire(), Some(WAIT)).await?);
        Ok(())
    });
}

/// CPython `test_wait_cancel_contested`: notified, then cancelled while the notifier still
/// holds the lock, the waiter's `wait` returns (normally or cancelled) only once it holds the
/// lock again, never while the notifier is inside.
#[test]
fn wait_cancelled_while_the_lock_is_contested_returns_with_the_lock() {
    on_each_runtime(|| async {
        let cond = Arc::new(Condition::new());
        let notifier_inside = Arc::new(AtomicBool::new(false));
        let (c, inside) = (cond.clone(), notifier_inside.clone());
        let w = queued_local(async move {
            let mut guard = c.acquire().await?;
            let outcome = guard.wait().await;
            Ok((outcome, c.locked(), inside.load(Ordering::SeqCst)))
        })
        .await?;
        assert!(!cond.locked());
        let guard = cond.acquire().await?;
        notifier_inside.store(true, Ordering::SeqCst);
        guard.notify(1);
        assert!(w.cancel());
        notifier_inside.store(false, Ordering::SeqCst);
        drop(guard);
        let (outcome, locked, overlapped) = settle(w).await?;
        // asyncio lets this end either way ("should not happen, since no cancellation
        // points"); what matters is the lock.
        assert!(
            outcome.as_ref().err().is_none_or(|e| e.is_cancelled()),
            "{outcome:?}"
        );
        assert!(locked, "wait returned without the lock");
        assert!(
            !overlapped,
            "wait returned while the notifier held the lock"
        );
        assert!(!cond.locked());
        Ok(())
    });
}

/// CPython `test_wait_cancel_after_notify` (bpo-32841): a waiter notified, then cancelled
/// while it waits to re-take the lock, ends cancelled once it has the lock.
#[test]
fn wait_cancelled_after_notify_ends_cancelled() {
    on_each_runtime(|| async {
        let cond = Arc::new(Condition::new());
        let waited = Arc::new(AtomicBool::new(false));
        let (c, w8) = (cond.clone(), waited.clone());
        let waiter = queued_local(async move {
            let mut guard = c.acquire().await?;
            w8.store(true, Ordering::SeqCst);
            guard.wait().await
        })
        .await?;
        let guard = cond.acquire().await?;
        guard.notify(1);
        let_local_tasks_run().await?; // the waiter now waits for the lock
        assert!(waiter.cancel());
        let_local_tasks_run().await?;
        drop(guard);
        assert_cancelled(&settle(waiter).await);
        assert!(waited.load(Ordering::SeqCst));
        assert!(!cond.locked());
        Ok(())
    });
}

/// CPython `test_wait_for` and the first half of `test_wait_for_unacquired`: `wait_for`
/// returns only once a notify finds the predicate true, and at once if it already is.
#[test]
fn wait_for_rechecks_the_predicate_on_every_notify() {
    on_each_runtime(|| async {
        let cond = Arc::new(Condition::new());
        let ready = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let (c, r, d) = (cond.clone(), ready.clone(), done.clone());
        let w = queued_local(async move {
            let mut guard = c.acquire().await?;
            guard.wait_for(|| r.load(Ordering::SeqCst)).await?;
            d.store(true, Ordering::SeqCst);
            Ok(())
        })
        .await?;
        notify(&cond, 1).await?;
        let_local_tasks_run().await?;
        assert!(
            !done.load(Ordering::SeqCst),
            "wait_for returned with a false predicate"
        );
        assert!(!w.done());

        ready.store(true, Ordering::SeqCst);
        notify(&cond, 1).await?;
        settle(w).await?;
        assert!(done.load(Ordering::SeqCst));

        let mut guard = cond.acquire().await?;
        let mut wait_for = pin!(guard.wait_for(|| true));
        let first = poll_fn(|cx| Poll::Ready(wait_for.as_mut().poll(cx))).await;
        assert!(matches!(first, Poll::Ready(Ok(()))), "{first:?}");
        Ok(())
    });
}

/// CPython `test_explicit_lock` and `test_context_manager`: a condition built on a shared
/// `Lock` is locked exactly when the lock is, whoever took it; two conditions on one lock
/// exclude each other, and each notifies only its own waiters.
#[test]
fn conditions_share_an_explicit_lock() {
    on_each_runtime(|| async {
        let lock = Arc::new(Lock::new());
        let cond = Arc::new(Condition::with_lock(lock.clone()));
        assert!(!lock.locked() && !cond.locked());
        {
            let _guard = cond.acquire().await?;
            assert!(lock.locked() && cond.locked());
        }
        assert!(!lock.locked() && !cond.locked());
        {
            let _guard = lock.acquire().await?;
            assert!(lock.locked() && cond.locked());
        }
        assert!(!lock.locked() && !cond.locked());

        let other = Arc::new(Condition::with_lock(lock.clone()));
        let held = cond.acquire().await?;
        let o = other.clone();
        let blocked = queued(async move {
            drop(o.acquire().await?);
            Ok(())
        })
        .await?;
        drop(held);
        settle(blocked).await?;

        let order = Arc::new(Mutex::new(Vec::new()));
        let w = queued_local(wait_then_record(&cond, &order, 1)).await?;
        other.acquire().await?.notify_all();
        let_local_tasks_run().await?;
        assert!(
            !w.done(),
            "notify_all on another condition woke this one's waiter"
        );
        notify(&cond, 1).await?;
        settle(w).await?;
        assert!(!lock.locked());
        Ok(())
    });
}

/// CPython `test_cancelled_error_wakeup` and `test_cancelled_error_re_aquire`: the Cancelled
/// error that comes out of `wait_for` is the one the cancel request made (its message
/// intact), whether the cancel came while waiting for a notify or while re-taking the lock.
#[test]
fn cancelled_error_comes_out_unchanged() {
    on_each_runtime(|| async {
        let cond = Arc::new(Condition::new());
        let wake = Arc::new(AtomicBool::new(false));
        let waiter = |cond: &Arc<Condition>, wake: &Arc<AtomicBool>| {
            let (c, wake) = (cond.clone(), wake.clone());
            async move {
                let mut guard = c.acquire().await?;
                guard.wait_for(|| wake.load(Ordering::SeqCst)).await
            }
        };

        let w = queued(waiter(&cond, &wake)).await?;
        assert!(w.cancel_with("foo"));
        let err = settle(w).await.unwrap_err();
        assert!(err.is_cancelled(), "{err:?}");
        assert_eq!(err.message(), Some("foo"));

        let w = queued_local(waiter(&cond, &wake)).await?;
        let guard = cond.acquire().await?;
        wake.store(true, Ordering::SeqCst);
        guard.notify(1);
        let_local_tasks_run().await?; // the waiter now waits for the lock
        assert!(w.cancel_with("foo"));
        drop(guard);
        let err = settle(w).await.unwrap_err();
        assert!(err.is_cancelled(), "{err:?}");
        assert_eq!(err.message(), Some("foo"));
        Ok(())
    });
}

/// The scenario of CPython's `test_cancelled_wakeup` (`relock` false) and
/// `test_cancelled_wakeup_relock` (`relock` true): one item, one `notify(1)`, and the notified
/// consumer is cancelled before it runs (or, with `relock`, once it waits to re-take the
/// lock): the notification passes to the other consumer, which takes the item. The consumers
/// notify after consuming, so that the producer can wait for that instead of CPython's 10 ms
/// timeout.
async fn cancelled_wakeup(relock: bool) -> Result<()> {
    let cond = Arc::new(Condition::new());
    let state = Arc::new(Mutex::new(0i64));
    let consumer = |cond: &Arc<Condition>, state: &Arc<Mutex<i64>>| {
        let (c, state) = (cond.clone(), state.clone());
        async move {
            let mut guard = c.acquire().await?;
            loop {
                guard.wait_for(|| *state.lock().unwrap() != 0).await?;
                let mut s = state.lock().unwrap();
                if *s < 0 {
                    return Ok(());
                }
                *s -= 1;
                drop(s);
                guard.notify_all();
            }
        }
    };
    let c0 = queued_local(consumer(&cond, &state)).await?;
    let c1 = queued(consumer(&cond, &state)).await?;

    let mut guard = cond.acquire().await?;
    *state.lock().unwrap() += 1;
    guard.notify(1);
    if relock {
        let_local_tasks_run().await?; // c0 now waits for the lock
    }
    assert!(c0.cancel());
    let consumed = guard.wait_for(|| *state.lock().unwrap() == 0);
    braid::wait_for(consumed, Some(WAIT)).await?;
    assert_eq!(*state.lock().unwrap(), 0);

    *state.lock().unwrap() = -1;
    guard.notify_all();
    drop(guard);
    settle(c1).await?;
    assert_cancelled(&settle(c0).await);
    Ok(())
}

/// CPython `test_cancelled_wakeup`: a consumer notified and cancelled before it runs passes
/// the notification to the other consumer, so the item is taken.
#[test]
fn notified_then_cancelled_waiter_passes_the_wakeup_on() {
    on_each_runtime(|| cancelled_wakeup(false));
}

/// CPython `test_cancelled_wakeup_relock`: a consumer notified, then cancelled while it waits
/// to re-take the lock, passes the notification on too (Python 3.13 notifies another waiter
/// whenever `wait` ends in an error).
#[test]
fn waiter_cancelled_while_retaking_the_lock_passes_the_wakeup_on() {
    on_each_runtime(|| cancelled_wakeup(true));
}

/// A wait whose future is dropped while it takes the lock back (after a notify reached it)
/// passes the notification on, as a cancel at the same point does: the other waiter wakes.
/// The drop used to swallow it, and the other waiter waited for good.
#[test]
fn waiter_dropped_while_retaking_the_lock_passes_the_wakeup_on() {
    on_each_runtime(|| async {
        let cond = Arc::new(Condition::new());
        let stop = braid::Promise::<()>::new();
        let (c, s) = (cond.clone(), stop.clone());
        let dropping = queued_local(async move {
            let mut guard = c.acquire().await?;
            let mut wait = pin!(guard.wait());
            let mut stop = pin!(std::future::IntoFuture::into_future(s));
            // Whichever is first; the wait is then dropped where it stands.
            poll_fn(|cx| {
                if stop.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ok(()));
                }
                wait.as_mut().poll(cx)
            })
            .await
        })
        .await?;
        let c = cond.clone();
        let other = queued_local(async move { c.acquire().await?.wait().await }).await?;

        let guard = cond.acquire().await?;
        guard.notify(1); // reaches the first waiter only
        let_local_tasks_run().await?; // it now waits to take the lock back
        stop.set_result(())?;
        settle(dropping).await?;
        drop(guard);
        settle(other).await
    });
}

/// A guard whose wait was dropped half-way holds nothing. A later `wait` on it fails with
/// InvalidState and leaves the lock alone (CPython's `test_wait_unacquired` raises
/// RuntimeError). It used to release the lock for whichever task held it by then.
#[test]
fn wait_on_a_guard_that_holds_nothing_fails_and_leaves_the_lock_alone() {
    on_each_runtime(|| async {
        let cond = Arc::new(Condition::new());
        let mut guard = cond.acquire().await?;
        {
            let mut wait = pin!(guard.wait());
            let parked = poll_fn(|cx| Poll::Ready(wait.as_mut().poll(cx).is_pending())).await;
            assert!(parked, "the wait released the lock and queued");
        }
        assert!(!cond.locked(), "the dropped wait left the lock released");

        let holding = braid::Promise::<()>::new();
        let let_go = braid::Promise::<()>::new();
        let (c, h, l) = (cond.clone(), holding.clone(), let_go.clone());
        let holder = braid::create_task(async move {
            let _held = c.acquire().await?;
            h.set_result(())?;
            std::future::IntoFuture::into_future(l).await
        });
        braid::wait_for(std::future::IntoFuture::into_future(holding), Some(WAIT)).await?;

        // Polled once: it must fail at once, not release the lock and wait.
        let first_poll = {
            let mut wait = pin!(guard.wait());
            poll_fn(|cx| Poll::Ready(wait.as_mut().poll(cx))).await
        };
        assert!(cond.locked(), "the other task's lock is still held");
        let Poll::Ready(Err(err)) = first_poll else {
            panic!("the wait did not fail at once: {first_poll:?}");
        };
        assert_eq!(err.kind(), braid::ErrorKind::InvalidState, "{err:?}");
        let_go.set_result(())?;
        settle(holder).await
    });
}

/// No lost wake-ups between loops: two producers push 500 items each under the condition and
/// `notify(1)`; three consumers on any loop `wait_for` an item and take it; at the end a
/// `notify_all` with a done flag releases them. Every item is taken exactly once.
#[test]
fn producers_and_consumers_lose_no_wakeup_across_loops() {
    on_each_runtime(|| async {
        let cond = Arc::new(Condition::new());
        let items = Arc::new(Mutex::new((VecDeque::new(), false)));
        let producers: Vec<_> = (0..2u32)
            .map(|p| {
                let (c, items) = (cond.clone(), items.clone());
                braid::create_task(async move {
                    for i in 0..500 {
                        let guard = c.acquire().await?;
                        items.lock().unwrap().0.push_back(p * 1_000 + i);
                        guard.notify(1);
                        drop(guard);
                        braid::yield_now().await?;
                    }
                    Ok(())
                })
            })
            .collect();
        let consumers: Vec<_> = (0..3)
            .map(|_| {
                let (c, items) = (cond.clone(), items.clone());
                braid::create_task(async move {
                    let mut got = Vec::new();
                    let mut guard = c.acquire().await?;
                    loop {
                        guard
                            .wait_for(|| {
                                let s = items.lock().unwrap();
                                !s.0.is_empty() || s.1
                            })
                            .await?;
                        let mut s = items.lock().unwrap();
                        match s.0.pop_front() {
                            Some(item) => got.push(item),
                            None => return Ok(got),
                        }
                    }
                })
            })
            .collect();
        for p in producers {
            braid::wait_for(p, Some(WAIT * 4)).await?;
        }
        {
            let guard = cond.acquire().await?;
            items.lock().unwrap().1 = true;
            guard.notify_all();
        }
        let mut all = Vec::new();
        for c in consumers {
            all.extend(settle(c).await?);
        }
        all.sort_unstable();
        let expected: Vec<u32> = (0..500).chain(1_000..1_500).collect();
        assert_eq!(all, expected);
        Ok(())
    });
}
