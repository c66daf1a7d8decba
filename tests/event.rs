//! `braid::Event` with asyncio's semantics on a runtime of many loops (API.md
//! "Synchronisation", issue 6): `set` wakes every waiter, on whichever loop it waits, even if
//! the event is cleared again before they run; `wait` on a set event returns at once; `clear`
//! makes later waits block; a cancelled waiter ends with a Cancelled error and leaves no trace.
//! Scenarios are ported from CPython 3.13's `Lib/test/test_asyncio/test_locks.py`
//! (`EventTests`); each test names the one it follows.
//!
//! Every scenario runs on a 1-loop and on a 3-loop runtime. CPython's tests step one loop with
//! `asyncio.sleep(0)`; here a waiter counts as queued once its first poll has returned Pending
//! (see [`queued`]), which holds on any number of loops. Tasks that must stay asleep while the
//! main future acts are pinned to the main future's own loop with `spawn_local`: they cannot
//! run before the main future next awaits.

use braid::{Event, Result, Task};
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

mod common;
use common::*;

/// Starts a task on the shared pool that waits for `ev` (its first await).
async fn waiter(ev: &Arc<Event>) -> Result<Task<()>> {
    let ev = ev.clone();
    queued(async move { ev.wait().await }).await
}

/// The public type is `Send + Sync + Debug`, as API.md requires of every primitive.
#[test]
fn event_is_send_sync_and_debug() {
    fn check<T: Send + Sync + std::fmt::Debug>() {}
    check::<Event>();
}

/// CPython `test_wait`: `set` wakes every waiter (here five, on any loop); a task that waits
/// after the event is set returns at once.
#[test]
fn set_wakes_every_waiter() {
    on_each_runtime(|| async {
        let ev = Arc::new(Event::new());
        assert!(!ev.is_set());
        let mut waiters = Vec::new();
        for _ in 0..5 {
            waiters.push(waiter(&ev).await?);
        }
        ev.set();
        for w in waiters {
            settle(w).await?;
        }
        let ev2 = ev.clone();
        settle(braid::create_task(async move { ev2.wait().await })).await?;
        Ok(())
    });
}

/// CPython `test_wait_on_set`: waiting on a set event completes at its first poll.
#[test]
fn wait_on_a_set_event_returns_at_once() {
    on_each_runtime(|| async {
        let ev = Event::new();
        ev.set();
        let mut wait = pin!(ev.wait());
        let first = poll_fn(|cx| Poll::Ready(wait.as_mut().poll(cx))).await;
        assert!(matches!(first, Poll::Ready(Ok(()))), "{first:?}");
        assert!(ev.is_set(), "wait consumed the flag");
        Ok(())
    });
}

/// CPython `test_wait_cancel`: a cancelled waiter ends with a Cancelled error and leaves no
/// trace: a later waiter is still woken by `set`.
#[test]
fn cancelled_waiter_leaves_no_trace() {
    on_each_runtime(|| async {
        let ev = Arc::new(Event::new());
        let cancelled = waiter(&ev).await?;
        let kept = waiter(&ev).await?;
        assert!(cancelled.cancel());
        assert_cancelled(&settle(cancelled).await);
        ev.set();
        settle(kept).await?;

        // A wait future dropped while it waits leaves no trace either.
        ev.clear();
        {
            let mut wait = pin!(ev.wait());
            let waited = poll_fn(|cx| Poll::Ready(wait.as_mut().poll(cx).is_pending())).await;
            assert!(waited);
        }
        let kept = waiter(&ev).await?;
        ev.set();
        settle(kept).await?;
        Ok(())
    });
}

/// CPython `test_clear`: `set` and `clear` flip `is_set`; after `clear` a wait blocks again
/// until the next `set`.
#[test]
fn clear_makes_later_waits_block() {
    on_each_runtime(|| async {
        let ev = Arc::new(Event::new());
        assert!(!ev.is_set());
        ev.set();
        assert!(ev.is_set());
        ev.clear();
        assert!(!ev.is_set());
        let w = waiter(&ev).await?; // fails here if the wait did not block
        ev.set();
        settle(w).await?;
        Ok(())
    });
}

/// CPython `test_clear_with_waiters`: a waiter woken by `set` returns even if the event is
/// cleared before it runs; setting twice is harmless. Checked for a waiter pinned to this
/// loop (which cannot run between `set` and `clear`) and for waiters on any loop.
#[test]
fn set_then_clear_still_wakes_the_waiters() {
    on_each_runtime(|| async {
        let ev = Arc::new(Event::new());
        let ev2 = ev.clone();
        let local = queued_local(async move { ev2.wait().await }).await?;
        let mut shared = Vec::new();
        for _ in 0..3 {
            shared.push(waiter(&ev).await?);
        }
        ev.set();
        ev.clear();
        assert!(!ev.is_set());
        settle(local).await?;
        for w in shared {
            settle(w).await?;
        }

        let ev2 = ev.clone();
        let local = queued_local(async move { ev2.wait().await }).await?;
        ev.set();
        ev.set();
        let_local_tasks_run().await?;
        assert!(local.done());
        settle(local).await?;
        Ok(())
    });
}

/// A waiter woken by `set` and cancelled before it runs ends with a Cancelled error, as in
/// asyncio (the cancel is delivered at the task's await point), and the event stays set.
#[test]
fn waiter_woken_then_cancelled_ends_cancelled() {
    on_each_runtime(|| async {
        let ev = Arc::new(Event::new());
        let ev2 = ev.clone();
        let w = queued_local(async move { ev2.wait().await }).await?;
        ev.set();
        assert!(w.cancel());
        assert_cancelled(&settle(w).await);
        assert!(ev.is_set());
        Ok(())
    });
}

/// Many waiters on every loop, set by a task on the shared pool: all of them wake.
#[test]
fn set_from_another_loop_wakes_waiters_on_every_loop() {
    on_each_runtime(|| async {
        let ev = Arc::new(Event::new());
        let mut waiters = Vec::new();
        for _ in 0..20 {
            waiters.push(waiter(&ev).await?);
        }
        let ev2 = ev.clone();
        settle(braid::create_task(async move {
            ev2.set();
            Ok(())
        }))
        .await?;
        for w in waiters {
            settle(w).await?;
        }
        Ok(())
    });
}
