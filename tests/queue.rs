//! `braid::Queue`, `LifoQueue` and `PriorityQueue` with asyncio's semantics (Python 3.13) on a
//! runtime of many loops (API.md "Synchronisation", issue 6): `put` waits at maxsize and `get`
//! when empty; the `_nowait` forms fail with `QueueFull` / `QueueEmpty`; `qsize`, `empty`,
//! `full`; `task_done` and `join` (join counts `task_done` calls, not gets; one `task_done` too
//! many is an `InvalidState` error); `shutdown(immediate)`; waiting getters and putters served
//! in arrival order; items that leave in the queue's order whoever takes them; gets after
//! `shutdown(false)` that fail only once the queue is empty; and cancelled (or dropped) getters
//! and putters that leave no trace and never lose or duplicate an item, including when the
//! cancel races the hand-off.
//!
//! Scenarios are ported from CPython 3.13's `Lib/test/test_asyncio/test_queues.py`; each test
//! names the one it follows. The join and shutdown scenarios (`_QueueJoinTestMixin`,
//! `_QueueShutdownTestMixin`) run for each of the three kinds, as in CPython. Every scenario
//! runs on a 1-loop and on a 3-loop runtime. CPython's tests step one loop with
//! `asyncio.sleep(0)`; here a waiter counts as queued once its first poll has returned Pending
//! (see [`queued`]), which holds on any number of loops. Tasks that must stay asleep while the
//! main future acts (to be woken and cancelled "at the same time") are pinned to the main
//! future's own loop with `spawn_local`: they cannot run before the main future next awaits.

use braid::{ErrorKind, LifoQueue, PriorityQueue, Queue, Result};
use braid::{QueueEmpty, QueueFull, QueueShutDown};
use std::collections::HashSet;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

mod common;
use common::*;

/// Asserts that `outcome` is the error of a shut-down queue: `QueueShutDown`, kind `Closed`.
fn assert_shut_down<T: std::fmt::Debug>(outcome: Result<T>) {
    match outcome {
        Err(e) if e.downcast_ref::<QueueShutDown>().is_some() => {
            assert_eq!(e.kind(), ErrorKind::Closed, "{e:?}");
        }
        other => panic!("expected QueueShutDown, got {other:?}"),
    }
}

/// The public types are `Send + Sync + Debug`, as API.md requires of every primitive.
#[test]
fn queue_types_are_send_sync_and_debug() {
    fn check<T: Send + Sync + std::fmt::Debug>() {}
    check::<Queue<String>>();
    check::<LifoQueue<String>>();
    check::<PriorityQueue<String>>();
    check::<QueueFull>();
    check::<QueueEmpty>();
    check::<QueueShutDown>();
}

/// CPython `test_empty`, `test_full` and the size checks of `test_maxsize`.
#[test]
fn empty_full_qsize_and_maxsize() {
    on_each_runtime(|| async {
        let q = Queue::new(0);
        assert_eq!(q.maxsize(), 0);
        assert!(q.empty() && !q.full());
        q.put(1).await?;
        assert!(!q.empty() && !q.full(), "an unbounded queue is never full");
        assert_eq!(q.qsize(), 1);
        assert_eq!(q.get().await?, 1);
        assert!(q.empty());

        let q = Queue::new(1);
        assert_eq!(q.maxsize(), 1);
        q.put(1).await?;
        assert!(q.full());
        assert_eq!(q.qsize(), 1);
        Ok(())
    });
}

/// CPython `QueueBasicTests.test_order`, `LifoQueueTests.test_order` and
/// `PriorityQueueTests.test_order`: FIFO, LIFO, and smallest first.
#[test]
fn each_kind_returns_items_in_its_order() {
    on_each_runtime(|| async {
        let fifo = Queue::new(0);
        let lifo = LifoQueue::new(0);
        let prio = PriorityQueue::new(0);
        for i in [1, 3, 2] {
            fifo.put(i).await?;
            lifo.put(i).await?;
            prio.put(i).await?;
        }
        let mut got = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..3 {
            got.0.push(fifo.get().await?);
            got.1.push(lifo.get().await?);
            got.2.push(prio.get().await?);
        }
        assert_eq!(got.0, [1, 3, 2]);
        assert_eq!(got.1, [2, 3, 1]);
        assert_eq!(got.2, [1, 2, 3]);
        Ok(())
    });
}

/// CPython `test_maxsize` and `test_blocking_put_wait`: a putter blocks after filling a
/// `Queue(2)` and resumes once a get makes room.
#[test]
fn put_waits_at_maxsize() {
    on_each_runtime(|| async {
        let q = Arc::new(Queue::new(2));
        let have_been_put = Arc::new(Mutex::new(Vec::new()));
        let (q2, put) = (q.clone(), have_been_put.clone());
        let putter = queued(async move {
            for i in 0..3 {
                q2.put(i).await?;
                put.lock().unwrap().push(i);
            }
            Ok(())
        })
        .await?;
        assert_eq!(*have_been_put.lock().unwrap(), [0, 1]);
        assert!(q.full());
        assert_eq!(q.get().await?, 0);
        settle(putter).await?;
        assert_eq!(*have_been_put.lock().unwrap(), [0, 1, 2]);
        assert_eq!(q.get().await?, 1);
        assert_eq!(q.get().await?, 2);
        assert!(q.empty());
        Ok(())
    });
}

/// CPython `test_blocking_get_wait` and `test_put_with_waiting_getters`: a getter blocks on
/// an empty queue until a put, from this loop or from a task on another.
#[test]
fn get_waits_until_an_item_arrives() {
    on_each_runtime(|| async {
        let q = Arc::new(Queue::new(0));
        let q2 = q.clone();
        let getter = queued(async move { q2.get().await }).await?;
        q.put("a").await?;
        assert_eq!(settle(getter).await?, "a");

        let q2 = q.clone();
        let getter = queued_local(async move { q2.get().await }).await?;
        let q2 = q.clone();
        settle(braid::create_task(async move { q2.put("b").await })).await?;
        assert_eq!(settle(getter).await?, "b");
        assert!(q.empty());
        Ok(())
    });
}

/// CPython `test_nonblocking_get`, `test_nonblocking_put`, `test_nonblocking_get_exception`
/// and `test_nonblocking_put_exception`: the `_nowait` forms work without waiting and fail
/// with errors that downcast to `QueueEmpty` and `QueueFull` (kind `Other`).
#[test]
fn nowait_forms_fail_with_queue_empty_and_queue_full() {
    on_each_runtime(|| async {
        let q = Queue::new(1);
        let empty = q.get_nowait().unwrap_err();
        assert!(empty.downcast_ref::<QueueEmpty>().is_some(), "{empty:?}");
        assert_eq!(empty.kind(), ErrorKind::Other);
        q.put_nowait(1)?;
        let full = q.put_nowait(2).unwrap_err();
        assert!(full.downcast_ref::<QueueFull>().is_some(), "{full:?}");
        assert_eq!(full.kind(), ErrorKind::Other);
        assert_eq!(q.qsize(), 1);
        assert_eq!(q.get_nowait()?, 1);

        let unbounded = Queue::new(0);
        for i in 0..1_000 {
            unbounded.put_nowait(i)?;
        }
        assert_eq!(unbounded.qsize(), 1_000);
        assert_eq!(unbounded.get_nowait()?, 0);
        Ok(())
    });
}

/// CPython `test_get_with_waiting_putters` and `test_why_are_putters_waiting`: putters blocked
/// on a full queue are served in the order they arrived, whichever loops they run on.
#[test]
fn waiting_putters_are_served_in_arrival_order() {
    on_each_runtime(|| async {
        let q = Arc::new(Queue::new(1));
        q.put_nowait(0)?;
        let mut putters = Vec::new();
        for i in 1..=5 {
            let q2 = q.clone();
            putters.push(queued(async move { q2.put(i).await }).await?);
        }
        let mut got = Vec::new();
        for _ in 0..=5 {
            got.push(braid::wait_for(q.get(), Some(WAIT)).await?);
        }
        assert_eq!(got, [0, 1, 2, 3, 4, 5]);
        for p in putters {
            settle(p).await?;
        }
        assert!(q.empty());
        Ok(())
    });
}

/// Getters blocked on an empty queue are served in the order they arrived: each item put
/// wakes the first getter still waiting, whichever loops they run on (CPython
/// `test_why_are_getters_waiting`, with the order made observable). Items put together wake
/// as many getters, which then run in any order on several loops, each taking the next item
/// in the queue's order when it runs; so the items are put one at a time here.
#[test]
fn waiting_getters_are_served_in_arrival_order() {
    on_each_runtime(|| async {
        let q = Arc::new(Queue::new(0));
        let mut getters = Vec::new();
        for _ in 0..5 {
            let q2 = q.clone();
            getters.push(queued(async move { q2.get().await }).await?);
        }
        let mut got = Vec::new();
        for (i, g) in (0..5).zip(getters) {
            q.put_nowait(i * 10)?;
            // Waits for getter `i` only: had the item woken another, this one would wait on.
            got.push(braid::wait_for(g, Some(WAIT)).await?);
        }
        assert_eq!(got, [0, 10, 20, 30, 40]);
        assert!(q.empty());
        Ok(())
    });
}

/// CPython `test_get_cancelled_race` and `test_cancelled_getters_not_being_held_in_self_getters`:
/// a cancelled getter (by `cancel`, or by a `wait_for` timeout) leaves no trace: the next item
/// goes to the getter behind it, or stays in the queue.
#[test]
fn cancelled_getter_leaves_no_trace() {
    on_each_runtime(|| async {
        let q = Arc::new(Queue::new(5));
        let q2 = q.clone();
        let t1 = queued(async move { q2.get().await }).await?;
        let q2 = q.clone();
        let t2 = queued(async move { q2.get().await }).await?;
        assert!(t1.cancel());
        assert_cancelled(&settle(t1).await);
        q.put("a").await?;
        assert_eq!(settle(t2).await?, "a");

        let q2 = q.clone();
        let t = queued(async move { q2.get().await }).await?;
        assert!(t.cancel());
        assert_cancelled(&settle(t).await);
        q.put_nowait("b")?;
        assert_eq!(q.qsize(), 1, "the item went to the cancelled getter");

        assert_eq!(q.get_nowait()?, "b");
        let timed_out = braid::wait_for(q.get(), Some(Duration::from_millis(20))).await;
        assert!(
            matches!(&timed_out, Err(e) if e.is_timeout()),
            "{timed_out:?}"
        );
        q.put_nowait("c")?;
        assert_eq!(q.qsize(), 1, "the item went to the timed-out getter");
        assert_eq!(q.get_nowait()?, "c");
        Ok(())
    });
}

/// CPython `test_put_cancelled_race` and `test_cancelled_puts_not_being_held_in_self_putters`:
/// a cancelled putter leaves no trace: its item never enters the queue, and the putter
/// behind it is served.
#[test]
fn cancelled_putter_leaves_no_trace() {
    on_each_runtime(|| async {
        let q = Arc::new(Queue::new(1));
        q.put_nowait("a")?;
        let q2 = q.clone();
        let put_b = queued(async move { q2.put("b").await }).await?;
        let q2 = q.clone();
        let put_x = queued(async move { q2.put("X").await }).await?;
        assert!(put_x.cancel());
        assert_cancelled(&settle(put_x).await);
        assert_eq!(q.get_nowait()?, "a");
        settle(put_b).await?;
        assert_eq!(q.get_nowait()?, "b");
        assert!(q.empty(), "the cancelled put's item entered the queue");

        q.put_nowait("c")?;
        let q2 = q.clone();
        let put = queued(async move { q2.put("X").await }).await?;
        assert!(put.cancel());
        assert_cancelled(&settle(put).await);
        assert_eq!(q.get_nowait()?, "c");
        assert!(q.empty());
        q.put_nowait("d")?;
        assert_eq!(q.get_nowait()?, "d");
        Ok(())
    });
}

/// CPython `test_get_cancel_drop_one_pending_reader`: a reader woken by a put and cancelled
/// before it runs ends cancelled and drops nothing: both items are still there, in order.
#[test]
fn getter_woken_then_cancelled_leaves_the_item() {
    on_each_runtime(|| async {
        let q = Arc::new(Queue::new(0));
        let q2 = q.clone();
        let reader = queued_local(async move { q2.get().await }).await?;
        q.put_nowait(1)?;
        q.put_nowait(2)?;
        assert!(reader.cancel());
        assert_cancelled(&settle(reader).await);
        assert_eq!(q.get().await?, 1, "item 1 was dropped");
        assert_eq!(q.get().await?, 2);
        assert!(q.empty());
        Ok(())
    });
}

/// CPython `test_get_cancel_drop_many_pending_readers`: of three readers, the first is woken
/// and cancelled before it runs; the other two (on any loop) get both items between them.
#[test]
fn getter_woken_then_cancelled_passes_the_item_on() {
    on_each_runtime(|| async {
        let q = Arc::new(Queue::new(0));
        let q2 = q.clone();
        let r1 = queued_local(async move { q2.get().await }).await?;
        let q2 = q.clone();
        let r2 = queued(async move { q2.get().await }).await?;
        let q2 = q.clone();
        let r3 = queued(async move { q2.get().await }).await?;
        q.put_nowait(1)?;
        q.put_nowait(2)?;
        assert!(r1.cancel());
        assert_cancelled(&settle(r1).await);
        let got: HashSet<i32> = [settle(r2).await?, settle(r3).await?].into();
        assert_eq!(got, HashSet::from([1, 2]));
        assert!(q.empty());
        Ok(())
    });
}

/// Getters woken by puts but not yet run get what asyncio's one loop, running them in line
/// order after the puts, would give them: a `PriorityQueue`'s smallest items and a
/// `LifoQueue`'s newest, not the items in the order they were put.
#[test]
fn woken_getters_take_items_in_the_queues_order_not_the_order_put() {
    on_each_runtime(|| async {
        let prio = Arc::new(PriorityQueue::new(0));
        let p = prio.clone();
        let first = queued_local(async move { p.get().await }).await?;
        let p = prio.clone();
        let second = queued_local(async move { p.get().await }).await?;
        for item in [5, 1, 3] {
            prio.put_nowait(item)?;
        }
        assert_eq!(
            settle(first).await?,
            1,
            "the first getter gets the smallest"
        );
        assert_eq!(
            settle(second).await?,
            3,
            "the second gets the next smallest"
        );
        assert_eq!(prio.get_nowait()?, 5);

        let lifo = Arc::new(LifoQueue::new(0));
        let l = lifo.clone();
        let getter = queued_local(async move { l.get().await }).await?;
        for item in [1, 2, 3] {
            lifo.put_nowait(item)?;
        }
        assert_eq!(settle(getter).await?, 3, "the getter gets the newest item");
        assert_eq!(lifo.get_nowait()?, 2);
        assert_eq!(lifo.get_nowait()?, 1);
        Ok(())
    });
}

/// asyncio's draining idiom, `while not q.empty(): q.get_nowait()`, never fails, though a
/// getter was woken for one of the items and has not run yet (`empty` and `get_nowait` agree).
/// The woken getter whose item was taken waits again in its place: the next item is its,
/// not that of a getter that came after it.
#[test]
fn get_nowait_drains_a_queue_a_woken_getter_has_not_served_yet() {
    on_each_runtime(|| async {
        let q = Arc::new(Queue::new(0));
        let q2 = q.clone();
        let early = queued_local(async move { q2.get().await }).await?;
        q.put_nowait(1)?;
        q.put_nowait(2)?;
        let mut drained = Vec::new();
        while !q.empty() {
            drained.push(q.get_nowait()?);
        }
        assert_eq!(drained, [1, 2]);
        assert_eq!(q.qsize(), 0);
        // `early` runs now, finds nothing, and waits again.
        let q2 = q.clone();
        let late = queued(async move { q2.get().await }).await?;
        let_local_tasks_run().await?;
        assert!(!early.done(), "the woken getter returned with no item");
        q.put_nowait(3)?;
        assert_eq!(
            settle(early).await?,
            3,
            "the getter that came later took its item"
        );
        q.put_nowait(4)?;
        assert_eq!(settle(late).await?, 4);
        assert!(q.empty());
        Ok(())
    });
}

/// CPython `test_put_cancel_drop` and `test_cancelled_put_silence_value_error_exception`: a
/// putter woken by a get and cancelled before it runs ends cancelled without inserting its
/// item; a retried put then goes through.
#[test]
fn putter_woken_then_cancelled_inserts_nothing() {
    on_each_runtime(|| async {
        let q = Arc::new(Queue::new(1));
        q.put_nowait(1)?;
        let q2 = q.clone();
        let writer = queued_local(async move { q2.put(2).await }).await?;
        assert_eq!(q.get_nowait()?, 1);
        assert!(writer.cancel());
        assert_cancelled(&settle(writer).await);
        assert_eq!(q.qsize(), 0, "the cancelled put inserted its item");
        q.put(2).await?;
        assert_eq!(q.get_nowait()?, 2);
        assert_eq!(q.qsize(), 0);
        Ok(())
    });
}

/// A putter woken by a get and cancelled before it runs passes the free slot on to the
/// putter behind it, which runs on any loop.
#[test]
fn putter_woken_then_cancelled_passes_the_slot_on() {
    on_each_runtime(|| async {
        let q = Arc::new(Queue::new(1));
        q.put_nowait("a")?;
        let q2 = q.clone();
        let p1 = queued_local(async move { q2.put("b").await }).await?;
        let q2 = q.clone();
        let p2 = queued(async move { q2.put("c").await }).await?;
        assert_eq!(q.get_nowait()?, "a");
        assert!(p1.cancel());
        assert_cancelled(&settle(p1).await);
        settle(p2).await?;
        assert_eq!(q.get_nowait()?, "c");
        assert!(q.empty());
        Ok(())
    });
}

/// Rust's own way to cancel: a `get` or `put` future dropped while it waits leaves no trace,
/// and a task aborted after an item (or a slot) was handed to it, before it ran, loses
/// nothing.
#[test]
fn dropped_get_and_put_leave_no_trace() {
    on_each_runtime(|| async {
        let q = Arc::new(Queue::new(1));
        {
            let mut get = pin!(q.get());
            let waited = poll_fn(|cx| Poll::Ready(get.as_mut().poll(cx).is_pending())).await;
            assert!(waited);
        }
        q.put_nowait(1)?;
        assert_eq!(q.qsize(), 1, "the item went to a dropped get");
        {
            let mut put = pin!(q.put(2));
            let waited = poll_fn(|cx| Poll::Ready(put.as_mut().poll(cx).is_pending())).await;
            assert!(waited);
        }
        assert_eq!(q.get_nowait()?, 1);
        assert!(q.empty(), "a dropped put inserted its item");

        let q2 = q.clone();
        let reader = queued_local(async move { q2.get().await }).await?;
        q.put_nowait(3)?;
        reader.abort();
        assert!(settle(reader).await.is_err());
        assert_eq!(
            q.get_nowait()?,
            3,
            "the item handed to an aborted getter was lost"
        );

        q.put_nowait(4)?;
        let q2 = q.clone();
        let writer = queued_local(async move { q2.put(5).await }).await?;
        assert_eq!(q.get_nowait()?, 4);
        writer.abort();
        assert!(settle(writer).await.is_err());
        assert!(q.empty(), "an aborted put inserted its item");
        q.put_nowait(6)?;
        assert_eq!(q.get_nowait()?, 6);
        Ok(())
    });
}

/// `join` is a cancellation point too: a cancelled joiner ends cancelled and leaves no
/// trace; the joiner behind it returns once the items are done.
#[test]
fn cancelled_join_leaves_no_trace() {
    on_each_runtime(|| async {
        let q = Arc::new(Queue::new(0));
        q.put_nowait(1)?;
        let q2 = q.clone();
        let cancelled = queued(async move { q2.join().await }).await?;
        let q2 = q.clone();
        let kept = queued(async move { q2.join().await }).await?;
        assert!(cancelled.cancel());
        assert_cancelled(&settle(cancelled).await);
        q.get().await?;
        q.task_done()?;
        settle(kept).await?;
        Ok(())
    });
}

/// A joiner woken by the last `task_done` returns even if an item is put before it runs
/// (asyncio's `join` waits on an event, which released it when set). It used to look at the
/// count again, find the new item unfinished and wait on.
#[test]
fn a_join_woken_by_the_last_task_done_returns_though_an_item_follows() {
    on_each_runtime(|| async {
        let q = Arc::new(Queue::new(0));
        q.put_nowait(1)?;
        let q2 = q.clone();
        let joiner = queued_local(async move { q2.join().await }).await?;
        q.get_nowait()?;
        q.task_done()?; // the count reaches zero: the joiner is woken
        q.put_nowait(2)?; // before it runs
        settle(joiner).await
    });
}

/// The cancel races the hand-off with real threads, 200 times each way: a getter on the
/// shared pool is cancelled right after a put, and a putter right after a get made room.
/// Each item ends up exactly once either with the getter or in the queue, and a cancelled
/// put never inserts.
#[test]
fn cancel_racing_the_handoff_never_loses_or_duplicates() {
    on_each_runtime(|| async {
        let q = Arc::new(Queue::new(1));
        for k in 0..200 {
            let q2 = q.clone();
            let getter = queued(async move { q2.get().await }).await?;
            q.put_nowait(k)?;
            getter.cancel();
            match settle(getter).await {
                Ok(item) => {
                    assert_eq!(item, k);
                    assert!(q.empty(), "item {k} delivered twice");
                }
                Err(e) if e.is_cancelled() => {
                    assert_eq!(q.get_nowait()?, k, "item {k} lost by a cancelled getter")
                }
                Err(e) => return Err(e),
            }
        }
        for k in 0..200 {
            q.put_nowait(-1)?;
            let q2 = q.clone();
            let putter = queued(async move { q2.put(k).await }).await?;
            assert_eq!(q.get_nowait()?, -1);
            putter.cancel();
            match settle(putter).await {
                Ok(()) => assert_eq!(q.get_nowait()?, k),
                Err(e) if e.is_cancelled() => {
                    assert!(q.empty(), "a cancelled put of {k} inserted it")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
}

/// CPython `test_why_are_getters_waiting` at a larger size: three producers and three
/// consumers on the shared pool pass 3 000 items through a `Queue(1)`; each consumer sees
/// each producer's items in order, and every item arrives exactly once.
#[test]
fn producers_and_consumers_on_many_loops() {
    const PRODUCERS: u64 = 3;
    const PER_PRODUCER: u64 = 1_000;
    on_each_runtime(|| async {
        let q = Arc::new(Queue::new(1));
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let q = q.clone();
                braid::create_task(async move {
                    for i in 0..PER_PRODUCER {
                        q.put(Some((p, i))).await?;
                    }
                    Ok(())
                })
            })
            .collect();
        let consumers: Vec<_> = (0..PRODUCERS)
            .map(|_| {
                let q = q.clone();
                braid::create_task(async move {
                    let mut got = Vec::new();
                    while let Some(item) = q.get().await? {
                        got.push(item);
                    }
                    Ok(got)
                })
            })
            .collect();
        for p in producers {
            braid::wait_for(p, Some(WAIT * 6)).await?;
        }
        for _ in 0..PRODUCERS {
            q.put(None).await?;
        }
        let mut all = HashSet::new();
        for c in consumers {
            let got = settle(c).await?;
            for p in 0..PRODUCERS {
                let from_p: Vec<u64> = got.iter().filter(|x| x.0 == p).map(|x| x.1).collect();
                assert!(
                    from_p.windows(2).all(|w| w[0] < w[1]),
                    "out of order: {from_p:?}"
                );
            }
            for item in got {
                assert!(all.insert(item), "{item:?} delivered twice");
            }
        }
        assert_eq!(all.len() as u64, PRODUCERS * PER_PRODUCER);
        Ok(())
    });
}

/// A worker of [`shutdown_never_strands_an_item_when_a_woken_worker_is_cancelled`]: gets and
/// marks done until its get fails.
async fn drain_until_shut_down(q: Arc<Queue<i32>>, taken: Arc<AtomicUsize>) -> Result<()> {
    loop {
        q.get().await?;
        taken.fetch_add(1, Ordering::SeqCst);
        q.task_done()?;
    }
}

/// Two workers wait on a queue; an item wakes the first; the queue is shut down, and a
/// foreign thread cancels the first worker after a random spin (seeded, so each run tries the
/// same spread of moments): before it ran, while it runs, or after it took the item. In every
/// case the item is taken exactly once (by the other worker if the first leaves without it),
/// `join` returns, and both workers end with `QueueShutDown` or Cancelled, as in asyncio.
/// It used to strand the item in about one round in ten on 3 loops: the second worker, woken
/// by the shutdown, failed while the item was claimed by the first, which then left it.
/// Found by helper-50.
#[test]
fn shutdown_never_strands_an_item_when_a_woken_worker_is_cancelled() {
    const ROUNDS: usize = 300;
    on_each_runtime(|| async {
        let (jobs, spins) = std::sync::mpsc::channel::<(u64, braid::TaskRef)>();
        let canceller = std::thread::spawn(move || {
            for (spin, task) in spins {
                for i in 0..spin {
                    std::hint::black_box(i);
                }
                task.cancel();
            }
        });
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for round in 0..ROUNDS {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let q = Arc::new(Queue::new(0));
            let taken = Arc::new(AtomicUsize::new(0));
            let mut workers = Vec::new();
            for _ in 0..2 {
                let worker = drain_until_shut_down(q.clone(), taken.clone());
                workers.push(queued(worker).await?);
            }
            q.put_nowait(7)?; // wakes the first worker
            q.shutdown(false);
            jobs.send((seed % 3_000, workers[0].as_ref())).unwrap();
            if let Err(e) = braid::wait_for(q.join(), Some(WAIT)).await {
                panic!("round {round}: join: {e:?}; qsize {}", q.qsize());
            }
            for worker in workers {
                match settle(worker).await {
                    Err(e) if e.is_cancelled() => {}
                    outcome => assert_shut_down(outcome),
                }
            }
            assert_eq!(taken.load(Ordering::SeqCst), 1, "round {round}");
            assert!(q.empty(), "round {round}");
        }
        drop(jobs);
        canceller.join().unwrap();
        Ok(())
    });
}

/// The join and shutdown scenarios of CPython's `_QueueJoinTestMixin` and
/// `_QueueShutdownTestMixin`, and the order and shutdown regressions, for one kind of queue
/// (`Q`).
macro_rules! join_and_shutdown_tests {
    ($kind:ident, $Q:ident) => {
        mod $kind {
            use super::*;

            type Q<T> = braid::$Q<T>;

            /// CPython `test_task_done`: two workers get and `task_done` 100 items; `join`
            /// returns once all are done.
            #[test]
            fn join_returns_once_every_item_is_done() {
                on_each_runtime(|| async {
                    let q = Arc::new(Q::new(0));
                    for i in 0..100 {
                        q.put_nowait(i)?;
                    }
                    let total = Arc::new(AtomicI64::new(0));
                    let running = Arc::new(AtomicBool::new(true));
                    let workers: Vec<_> = (0..2)
                        .map(|_| {
                            let (q, total, running) = (q.clone(), total.clone(), running.clone());
                            braid::create_task(async move {
                                while running.load(Ordering::SeqCst) {
                                    let item = q.get().await?;
                                    total.fetch_add(item, Ordering::SeqCst);
                                    q.task_done()?;
                                }
                                Ok(())
                            })
                        })
                        .collect();
                    braid::wait_for(q.join(), Some(WAIT)).await?;
                    assert_eq!(total.load(Ordering::SeqCst), (0..100).sum::<i64>());
                    running.store(false, Ordering::SeqCst);
                    for _ in 0..workers.len() {
                        q.put_nowait(0)?;
                    }
                    for w in workers {
                        settle(w).await?;
                    }
                    Ok(())
                });
            }

            /// `join` counts `task_done` calls, not gets: after both items are taken it
            /// still waits, and returns after the second `task_done`.
            #[test]
            fn join_counts_task_done_not_gets() {
                on_each_runtime(|| async {
                    let q = Arc::new(Q::new(0));
                    q.put_nowait(1)?;
                    q.put_nowait(2)?;
                    q.get().await?;
                    q.get().await?;
                    let q2 = q.clone();
                    let join = queued_local(async move { q2.join().await }).await?;
                    q.task_done()?;
                    let_local_tasks_run().await?;
                    assert!(!join.done(), "join returned with one item not done");
                    q.task_done()?;
                    settle(join).await?;
                    Ok(())
                });
            }

            /// CPython `test_join_empty_queue`: joining a queue that never had an item
            /// returns at once, twice.
            #[test]
            fn join_of_an_empty_queue_returns_at_once() {
                on_each_runtime(|| async {
                    let q: Q<i32> = Q::new(0);
                    braid::wait_for(q.join(), Some(WAIT)).await?;
                    braid::wait_for(q.join(), Some(WAIT)).await?;
                    Ok(())
                });
            }

            /// CPython `test_task_done_underflow`: one `task_done` too many is an
            /// `InvalidState` error (asyncio's ValueError).
            #[test]
            fn task_done_too_often_is_invalid_state() {
                on_each_runtime(|| async {
                    let q = Q::new(0);
                    assert_eq!(q.task_done().unwrap_err().kind(), ErrorKind::InvalidState);
                    q.put_nowait(1)?;
                    q.get().await?;
                    q.task_done()?;
                    assert_eq!(q.task_done().unwrap_err().kind(), ErrorKind::InvalidState);
                    Ok(())
                });
            }

            /// CPython `test_shutdown_empty`: shutting down an empty queue fails its blocked
            /// getter with `QueueShutDown`, lets `join` return, and fails every later put
            /// and get.
            #[test]
            fn shutdown_of_an_empty_queue() {
                on_each_runtime(|| async {
                    let q = Arc::new(Q::new(0));
                    let q2 = q.clone();
                    let getter = queued(async move { q2.get().await }).await?;
                    q.shutdown(false);
                    assert_eq!(q.qsize(), 0);
                    braid::wait_for(q.join(), Some(WAIT)).await?;
                    assert_shut_down(settle(getter).await);
                    assert_shut_down(q.put("data").await);
                    assert_shut_down(q.put_nowait("data"));
                    assert_shut_down(q.get().await);
                    assert_shut_down(q.get_nowait());
                    Ok(())
                });
            }

            /// CPython `test_shutdown_nonempty`: a blocked putter fails; what is in the
            /// queue can still be got; `join` waits for its `task_done`.
            #[test]
            fn shutdown_keeps_the_items_for_get() {
                on_each_runtime(|| async {
                    let q = Arc::new(Q::new(1));
                    q.put_nowait("data")?;
                    let q2 = q.clone();
                    let join = queued_local(async move { q2.join().await }).await?;
                    let q2 = q.clone();
                    let putter = queued(async move { q2.put("data2").await }).await?;
                    q.shutdown(false); // unfinished tasks: 1 -> 1
                    assert_eq!(q.qsize(), 1);
                    assert_shut_down(settle(putter).await);
                    assert_eq!(q.get().await?, "data");
                    let_local_tasks_run().await?;
                    assert!(!join.done());
                    assert_shut_down(q.put("data").await);
                    assert_shut_down(q.put_nowait("data"));
                    assert_shut_down(q.get().await);
                    assert_shut_down(q.get_nowait());
                    q.task_done()?;
                    settle(join).await?;
                    assert_eq!(q.task_done().unwrap_err().kind(), ErrorKind::InvalidState);
                    Ok(())
                });
            }

            /// CPython `test_shutdown_immediate`: an immediate shutdown drops what is in the
            /// queue, counts it done (so `join` returns), and fails every later put and get.
            #[test]
            fn immediate_shutdown_drains_and_releases_join() {
                on_each_runtime(|| async {
                    let q = Arc::new(Q::new(0));
                    q.put_nowait("data")?;
                    let q2 = q.clone();
                    let join = queued_local(async move { q2.join().await }).await?;
                    q.shutdown(true); // unfinished tasks: 1 -> 0
                    assert_eq!(q.qsize(), 0);
                    settle(join).await?;
                    assert_shut_down(q.put("data").await);
                    assert_shut_down(q.put_nowait("data"));
                    assert_shut_down(q.get().await);
                    assert_shut_down(q.get_nowait());
                    assert_eq!(q.task_done().unwrap_err().kind(), ErrorKind::InvalidState);
                    Ok(())
                });
            }

            /// CPython `test_shutdown_immediate_with_unfinished`: an item already got still
            /// needs its `task_done` before `join` returns.
            #[test]
            fn immediate_shutdown_keeps_the_unfinished_count_of_got_items() {
                on_each_runtime(|| async {
                    let q = Arc::new(Q::new(0));
                    q.put_nowait("data")?;
                    q.put_nowait("data")?;
                    let q2 = q.clone();
                    let join = queued_local(async move { q2.join().await }).await?;
                    assert_eq!(q.get().await?, "data");
                    q.shutdown(true); // unfinished tasks: 2 -> 1
                    assert_eq!(q.qsize(), 0);
                    let_local_tasks_run().await?;
                    assert!(!join.done());
                    assert_shut_down(q.put("data").await);
                    assert_shut_down(q.put_nowait("data"));
                    assert_shut_down(q.get().await);
                    assert_shut_down(q.get_nowait());
                    q.task_done()?;
                    assert_eq!(q.task_done().unwrap_err().kind(), ErrorKind::InvalidState);
                    settle(join).await?;
                    Ok(())
                });
            }

            /// Both kinds of shutdown fail every blocked putter and every blocked getter
            /// with `QueueShutDown`, on whichever loop they wait; after a plain shutdown
            /// the item already queued can still be got, after an immediate one it is gone.
            #[test]
            fn shutdown_fails_every_blocked_putter_and_getter() {
                on_each_runtime(|| async {
                    for immediate in [false, true] {
                        let q = Arc::new(Q::new(1));
                        q.put_nowait("a")?;
                        let mut putters = Vec::new();
                        for item in ["b", "c", "d"] {
                            let q2 = q.clone();
                            putters.push(queued(async move { q2.put(item).await }).await?);
                        }
                        q.shutdown(immediate);
                        for p in putters {
                            assert_shut_down(settle(p).await);
                        }
                        if immediate {
                            assert_shut_down(q.get_nowait());
                        } else {
                            assert_eq!(q.get_nowait()?, "a");
                            assert_shut_down(q.get_nowait());
                        }

                        let q = Arc::new(Q::<&str>::new(0));
                        let mut getters = Vec::new();
                        for _ in 0..3 {
                            let q2 = q.clone();
                            getters.push(queued(async move { q2.get().await }).await?);
                        }
                        q.shutdown(immediate);
                        for g in getters {
                            assert_shut_down(settle(g).await);
                        }
                    }
                    Ok(())
                });
            }

            /// The order `get_nowait` gives 1 then 2 in, on this kind of queue.
            fn order_of_1_and_2() -> Result<[u32; 2]> {
                let reference = Q::new(0);
                reference.put_nowait(1)?;
                reference.put_nowait(2)?;
                Ok([reference.get_nowait()?, reference.get_nowait()?])
            }

            /// A `get` future polled once, so that it waits, and never run by a task.
            async fn parked_get(q: &Q<u32>) -> braid::QueueGet<'_, u32> {
                let mut get = q.get();
                let waited = poll_fn(|cx| Poll::Ready(Pin::new(&mut get).poll(cx).is_pending()));
                assert!(waited.await, "the get did not wait");
                get
            }

            /// Items leave in the queue's order, whoever takes them. A getter `ahead` and a
            /// consumer wait; two items wake both; the consumer runs first and takes the
            /// first item, then waits again; `ahead` leaves without running (dropped), and
            /// its item passes to the consumer. The consumer used to take the item its place
            /// among the woken gave it (the second), then the first: one producer's items in
            /// reverse order. Found by helper-50.
            #[test]
            fn items_leave_in_order_when_a_woken_getter_ahead_leaves() {
                on_each_runtime(|| async {
                    let q = Arc::new(Q::new(0));
                    let ahead = parked_get(&q).await;
                    let seen = Arc::new(Mutex::new(Vec::new()));
                    let (q2, seen2) = (q.clone(), seen.clone());
                    let consumer = queued_local(async move {
                        for _ in 0..2 {
                            let item = q2.get().await?;
                            seen2.lock().unwrap().push(item);
                        }
                        Ok(())
                    })
                    .await?;
                    q.put_nowait(1)?; // wakes `ahead`
                    q.put_nowait(2)?; // wakes the consumer
                    let_local_tasks_run().await?;
                    assert_eq!(seen.lock().unwrap().len(), 1, "the consumer did not run");
                    drop(ahead);
                    settle(consumer).await?;
                    assert_eq!(*seen.lock().unwrap(), order_of_1_and_2()?);
                    assert!(q.empty());
                    Ok(())
                });
            }

            /// As above, with the consumer's second take a `get_nowait`: it gets the item
            /// after its first, though a getter woken for that one has not run; that getter
            /// then waits again and gets the next item put. Found by helper-50.
            #[test]
            fn items_leave_in_order_when_get_nowait_overtakes_a_woken_getter() {
                on_each_runtime(|| async {
                    let q = Arc::new(Q::new(0));
                    let mut ahead = parked_get(&q).await;
                    let q2 = q.clone();
                    let consumer = queued_local(async move {
                        let first = q2.get().await?;
                        Ok([first, q2.get_nowait()?])
                    })
                    .await?;
                    q.put_nowait(1)?; // wakes `ahead`
                    q.put_nowait(2)?; // wakes the consumer
                    assert_eq!(settle(consumer).await?, order_of_1_and_2()?);
                    let again = poll_fn(|cx| Poll::Ready(Pin::new(&mut ahead).poll(cx))).await;
                    assert!(again.is_pending(), "the woken getter got {again:?}");
                    q.put_nowait(3)?;
                    let got = poll_fn(|cx| Poll::Ready(Pin::new(&mut ahead).poll(cx))).await;
                    assert!(matches!(got, Poll::Ready(Ok(3))), "{got:?}");
                    assert!(q.empty());
                    Ok(())
                });
            }

            /// After `shutdown(false)`, a `get` fails only once the queue is empty, as
            /// asyncio's: a new get takes the item a woken getter (that has not run) was
            /// woken for, and that getter then fails. The new get used to fail with
            /// `QueueShutDown` while `qsize()` was 1. Found by helper-50.
            #[test]
            fn a_get_on_a_shut_down_queue_takes_an_item_left_for_a_woken_getter() {
                on_each_runtime(|| async {
                    let q = Q::new(0);
                    let mut woken = parked_get(&q).await;
                    q.put_nowait(7)?; // wakes `woken`, which does not run
                    q.shutdown(false);
                    assert_eq!(braid::wait_for(q.get(), Some(WAIT)).await?, 7);
                    match poll_fn(|cx| Poll::Ready(Pin::new(&mut woken).poll(cx))).await {
                        Poll::Ready(outcome) => assert_shut_down(outcome),
                        Poll::Pending => panic!("a getter waits on an empty shut-down queue"),
                    }
                    assert_shut_down(q.get_nowait());
                    Ok(())
                });
            }

            /// A getter woken for the last item before a `shutdown(false)` leaves without
            /// it: the item passes to a getter still waiting, which was not failed while
            /// the item was left. It used to be failed by the shutdown, stranding the item
            /// (and `join`). Found by helper-50.
            #[test]
            fn shutdown_hands_an_item_a_woken_getter_leaves_to_a_waiting_getter() {
                on_each_runtime(|| async {
                    let q = Arc::new(Q::new(0));
                    let woken = parked_get(&q).await;
                    let q2 = q.clone();
                    let waiting = queued_local(async move { q2.get().await }).await?;
                    q.put_nowait(7)?; // wakes `woken`, which does not run
                    q.shutdown(false);
                    let_local_tasks_run().await?;
                    assert!(!waiting.done(), "a getter failed while an item was left");
                    drop(woken);
                    assert_eq!(settle(waiting).await?, 7);
                    q.task_done()?;
                    braid::wait_for(q.join(), Some(WAIT)).await?;
                    assert_shut_down(q.get().await);
                    Ok(())
                });
            }
        }
    };
}

join_and_shutdown_tests!(fifo, Queue);
join_and_shutdown_tests!(lifo, LifoQueue);
join_and_shutdown_tests!(priority, PriorityQueue);
