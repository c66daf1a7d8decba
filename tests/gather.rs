//! `gather` and `Gather::settled` with asyncio's semantics (API.md "Combinators", issue 4):
//! results in argument order, the first error fails the gather while the siblings keep
//! running, `settled()` collects values, errors and cancellations in order, a cancelled child
//! fails the gather with `Cancelled` (or shows up as a `Cancelled` error with `settled()`)
//! without touching its siblings, cancelling the awaiting task or calling `Gather::cancel`
//! cancels the children not yet done, `cancel` once every child is done returns false, and
//! an empty gather completes at once.
//!
//! Scenarios are ported from CPython's `Lib/test/test_asyncio/test_tasks.py`
//! (`GatherTestsBase`, `FutureGatherTests`, `CoroutineGatherTests`, `test_cancel_gather_1`,
//! `test_cancel_gather_2`); each test names the one it follows. Steps are sequenced with
//! promises and done callbacks, never with sleeps; the key scenarios run on runtimes of 1, 2
//! and 4 loops, with children that yield and sleep so that they move between loops.

use braid::{Error, Promise, Task, TaskRef};
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

mod common;
use common::*;

/// Longer than any test: a child sleeping this long only ends by being cancelled.
const LONG: Duration = Duration::from_secs(60);

/// A child that waits for `gate`, counts itself in `finished`, and returns `value`.
fn gated(gate: &Promise<()>, finished: &Arc<AtomicUsize>, value: i32) -> Task<i32> {
    let (gate, finished) = (gate.clone(), finished.clone());
    braid::create_task(async move {
        gate.await?;
        finished.fetch_add(1, Ordering::SeqCst);
        Ok(value)
    })
}

/// A child that sleeps until cancelled.
fn sleeper() -> Task<i32> {
    braid::create_task(async {
        braid::sleep(LONG).await?;
        Ok(0)
    })
}

/// The results come back in argument order, not in completion order (CPython
/// `GatherTestsBase.test_success`: b completes, then a, then c; the result is [a, b, c]).
/// The children complete in the order 1, 0, 2, each released only once the previous one has
/// finished.
#[test]
fn results_in_argument_order_not_completion_order() {
    on_loops(&[1, 2, 4], || async {
        let gates: Vec<Promise<()>> = (0..3).map(|_| braid::create_future()).collect();
        let finished: Vec<Promise<()>> = (0..3).map(|_| braid::create_future()).collect();
        let order = Arc::new(Mutex::new(Vec::new()));
        let children = (0..3).map(|i| {
            let (gate, fin, order) = (gates[i].clone(), finished[i].clone(), order.clone());
            async move {
                gate.await?;
                order.lock().unwrap().push(i);
                fin.set_result(())?;
                Ok(i * 10)
            }
        });
        let all = braid::gather(children);
        for i in [1, 0, 2] {
            gates[i].set_result(())?;
            finished[i].clone().await?;
        }
        assert_eq!(all.await?, vec![0, 10, 20]);
        assert_eq!(*order.lock().unwrap(), vec![1, 0, 2]);
        Ok(())
    });
}

/// The same with many children that yield and sleep between steps, so that they migrate
/// between the loops of a multi-loop runtime: the results still come back in argument order.
#[test]
fn many_migrating_children_keep_argument_order() {
    let threads = Arc::new(Mutex::new(HashSet::new()));
    on_loops(&[2, 4], || {
        let threads = threads.clone();
        async move {
            let children = (0..40u64).map(|i| {
                let threads = threads.clone();
                async move {
                    for step in 0..4u64 {
                        threads.lock().unwrap().insert(std::thread::current().id());
                        if (i + step) % 2 == 0 {
                            braid::yield_now().await?;
                        } else {
                            braid::sleep(Duration::from_millis((i + step) % 4)).await?;
                        }
                    }
                    Ok(i * i)
                }
            });
            let out = braid::gather(children).await?;
            assert_eq!(out, (0..40u64).map(|i| i * i).collect::<Vec<_>>());
            Ok(())
        }
    });
    assert!(
        threads.lock().unwrap().len() >= 2,
        "the children never ran on more than one thread"
    );
}

/// The first error fails the gather at once, and the siblings keep running to completion:
/// nothing is cancelled (CPython `FutureGatherTests.test_one_exception`,
/// `CoroutineGatherTests.test_exception_marking`).
#[test]
fn first_error_propagates_while_siblings_keep_running() {
    on_loops(&[1, 2, 4], || async {
        let gate = braid::create_future::<()>();
        let finished = Arc::new(AtomicUsize::new(0));
        let a = gated(&gate, &finished, 1);
        let b = braid::create_task(async {
            braid::yield_now().await?;
            Err::<i32, _>(Error::msg("boom"))
        });
        let c = gated(&gate, &finished, 3);
        let (ra, rc) = (a.as_ref(), c.as_ref());
        let (da, dc) = (done_signal(&a), done_signal(&c));

        let err = braid::gather(vec![a, b, c]).await.unwrap_err();
        assert_eq!(err.message(), Some("boom"), "{err:?}");
        assert!(
            !ra.done() && !rc.done(),
            "the gather waited for the siblings"
        );
        assert_eq!(
            ra.cancelling() + rc.cancelling(),
            0,
            "a sibling was cancelled"
        );

        gate.set_result(())?;
        da.await?;
        dc.await?;
        assert_eq!(finished.load(Ordering::SeqCst), 2);
        assert!(!ra.cancelled() && !rc.cancelled());
        Ok(())
    });
}

/// `settled()` (return_exceptions=True) collects values, errors and cancellations in
/// argument order and waits for every child (CPython
/// `FutureGatherTests.test_result_exception_one_cancellation`: a=1, b fails, c cancelled,
/// d=3, e cancelled, f fails).
#[test]
fn settled_collects_values_errors_and_cancellations_in_order() {
    on_loops(&[1, 2, 4], || async {
        let gate = braid::create_future::<()>();
        let finished = Arc::new(AtomicUsize::new(0));
        let a = braid::create_task(async { Ok(1) });
        let b = braid::create_task(async { Err(Error::msg("zero division")) });
        let c = sleeper();
        let d = gated(&gate, &finished, 3);
        let e = sleeper();
        let f = braid::create_task(async {
            braid::sleep(Duration::from_millis(5)).await?;
            Err(Error::msg("runtime error"))
        });
        c.cancel();
        let (rd, re) = (d.as_ref(), e.as_ref());
        let early: Vec<Promise<()>> = [&a, &b, &c, &f].into_iter().map(done_signal).collect();
        let mut all = braid::gather(vec![a, b, c, d, e, f]).settled();
        for s in early {
            s.await?;
        }

        // a, b, c and f are done; d and e are not: the gather must still be pending.
        let pending =
            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut all).poll(cx).is_pending())).await;
        assert!(pending, "settled() returned before every child was done");
        assert!(!rd.done() && !re.done());
        gate.set_result(())?;
        re.cancel();

        let res = all.await?;
        assert_eq!(res.len(), 6);
        assert_eq!(*res[0].as_ref().unwrap(), 1);
        assert_eq!(
            res[1].as_ref().unwrap_err().message(),
            Some("zero division")
        );
        assert_cancelled(&res[2]);
        assert_eq!(*res[3].as_ref().unwrap(), 3);
        assert_cancelled(&res[4]);
        assert_eq!(
            res[5].as_ref().unwrap_err().message(),
            Some("runtime error")
        );
        Ok(())
    });
}

/// Without `settled()`, a child that ends cancelled fails the gather with `Cancelled` at
/// once; the gather itself was not cancelled and the siblings are not touched (CPython
/// `FutureGatherTests.test_one_cancellation`).
#[test]
fn cancelled_child_fails_the_gather_without_touching_siblings() {
    on_loops(&[1, 2, 4], || async {
        let gate = braid::create_future::<()>();
        let finished = Arc::new(AtomicUsize::new(0));
        let a = gated(&gate, &finished, 1);
        let b = sleeper();
        let c = gated(&gate, &finished, 3);
        let (ra, rb, rc) = (a.as_ref(), b.as_ref(), c.as_ref());
        let (da, dc) = (done_signal(&a), done_signal(&c));
        let all = braid::gather(vec![a, b, c]);
        assert!(rb.cancel());

        let res = all.await;
        assert_cancelled(&res);
        assert!(rb.cancelled());
        assert!(
            !ra.done() && !rc.done(),
            "the gather waited for the siblings"
        );
        assert_eq!(
            ra.cancelling() + rc.cancelling(),
            0,
            "a sibling was cancelled"
        );

        gate.set_result(())?;
        da.await?;
        dc.await?;
        assert!(!ra.cancelled() && !rc.cancelled());
        assert_eq!(finished.load(Ordering::SeqCst), 2);
        Ok(())
    });
}

/// Cancelling the task that awaits a gather cancels every child not yet done, and the
/// awaiter ends cancelled (CPython `CoroutineGatherTests.test_cancellation_broadcast`).
#[test]
fn cancelling_the_awaiting_task_cancels_every_child() {
    on_loops(&[1, 2, 4], || async {
        let proof = Arc::new(AtomicUsize::new(0));
        let children: Vec<Task<i32>> = (0..2)
            .map(|_| {
                let proof = proof.clone();
                braid::create_task(async move {
                    braid::sleep(LONG).await?;
                    proof.fetch_add(1, Ordering::SeqCst);
                    Ok(1)
                })
            })
            .collect();
        let refs: Vec<TaskRef> = children.iter().map(Task::as_ref).collect();
        let signals: Vec<Promise<()>> = children.iter().map(done_signal).collect();
        let (p, started) = (proof.clone(), braid::create_future::<()>());
        let s = started.clone();
        let outer = braid::create_task(async move {
            let all = braid::gather(children);
            s.set_result(())?;
            all.await?;
            p.fetch_add(100, Ordering::SeqCst);
            Ok(())
        });
        started.await?;
        assert!(outer.cancel());
        assert_cancelled(&outer.await);
        // The awaiter ends with the first child that ends cancelled (as asyncio's
        // `_GatheringFuture` does); by then every child has been asked to cancel.
        for r in &refs {
            assert!(
                r.done() || r.cancelling() > 0,
                "a child was not cancelled: {r:?}"
            );
        }
        for s in signals {
            s.await?;
        }
        for r in &refs {
            assert!(r.cancelled(), "a child was not cancelled: {r:?}");
        }
        assert_eq!(proof.load(Ordering::SeqCst), 0);
        Ok(())
    });
}

/// Cancelling (with a message) the task that awaits `gather(..).settled()` cancels the
/// children, and the awaiter ends with a `Cancelled` error carrying the message, not with a
/// vector of cancelled results (CPython `test_cancel_gather_2`).
#[test]
fn cancelling_the_task_awaiting_settled_gather_ends_cancelled() {
    on_loops(&[1, 2, 4], || async {
        let started = braid::create_future::<()>();
        let s = started.clone();
        let refs = Arc::new(Mutex::new(Vec::new()));
        let r2 = refs.clone();
        let outer = braid::create_task(async move {
            let children: Vec<Task<i32>> = (0..3).map(|_| sleeper()).collect();
            r2.lock().unwrap().extend(children.iter().map(Task::as_ref));
            let all = braid::gather(children).settled();
            s.set_result(())?;
            let results = all.await?;
            Ok(results.len())
        });
        started.await?;
        assert!(outer.cancel_with("my message"));
        let err = outer.await.unwrap_err();
        assert!(err.is_cancelled(), "{err:?}");
        assert_eq!(err.message(), Some("my message"));
        for r in refs.lock().unwrap().iter() {
            assert!(r.cancelled(), "a child was not cancelled: {r:?}");
        }
        Ok(())
    });
}

/// `Gather::cancel` cancels the children not yet done (a child already done keeps its value)
/// and awaiting the gather then ends with `Cancelled` (CPython `test_cancel_gather_2`,
/// asyncio's `_GatheringFuture.cancel`).
#[test]
fn gather_cancel_cancels_the_children_not_yet_done() {
    on_loops(&[1, 2, 4], || async {
        let a = braid::create_task(async { Ok(1) });
        let b = sleeper();
        let c = sleeper();
        let (ra, rb, rc) = (a.as_ref(), b.as_ref(), c.as_ref());
        let (db, dc) = (done_signal(&b), done_signal(&c));
        done_signal(&a).await?;
        let mut all = braid::gather(vec![a, b, c]);
        assert!(all.cancel());
        assert!(rb.cancelling() > 0 && rc.cancelling() > 0);
        assert_eq!(ra.cancelling(), 0, "the done child was asked to cancel");
        assert_cancelled(&(&mut all).await);
        db.await?;
        dc.await?;
        assert!(!ra.cancelled());
        assert!(rb.cancelled() && rc.cancelled());
        Ok(())
    });
}

/// With `settled()`, a cancelled gather still waits for every child (one of them refuses
/// the cancellation and finishes its cleanup) and then ends with `Cancelled`
/// (`GatherSettled::cancel`; asyncio's `_GatheringFuture` with return_exceptions=True).
#[test]
fn settled_gather_cancel_waits_for_every_child() {
    on_loops(&[1, 2, 4], || async {
        let refusing_started = braid::create_future::<()>();
        let s = refusing_started.clone();
        let refusing = braid::create_task(async move {
            s.set_result(())?;
            if let Err(e) = braid::sleep(LONG).await {
                assert!(e.is_cancelled());
            }
            braid::sleep(Duration::from_millis(20)).await?;
            Ok(7)
        });
        let other = sleeper();
        let (rr, ro) = (refusing.as_ref(), other.as_ref());
        let all = braid::gather(vec![refusing, other]).settled();
        refusing_started.await?;
        assert!(all.cancel());
        let res = all.await;
        assert_cancelled(&res);
        assert!(
            rr.done(),
            "the settled gather returned before every child was done"
        );
        assert!(!rr.cancelled(), "the refusing child counts as cancelled");
        assert!(ro.cancelled());
        Ok(())
    });
}

/// `cancel` once every child is done returns false, and the gather keeps its results
/// (CPython `test_cancel_gather_1`: "a gathering future refuses to be cancelled once all
/// children are done").
#[test]
fn cancel_after_every_child_is_done_returns_false() {
    on_loops(&[1, 2, 4], || async {
        let children: Vec<Task<i32>> = (0..3)
            .map(|i| {
                braid::create_task(async move {
                    braid::yield_now().await?;
                    Ok(i)
                })
            })
            .collect();
        let signals: Vec<Promise<()>> = children.iter().map(done_signal).collect();
        let mut all = braid::gather(children);
        for s in signals {
            s.await?;
        }
        assert!(
            !all.cancel(),
            "cancel succeeded although every child was done"
        );
        assert_eq!((&mut all).await?, vec![0, 1, 2]);
        assert!(!all.cancel());

        let settled = braid::gather(vec![braid::create_task(async { Ok(5) })]).settled();
        let mut settled = settled;
        let res = (&mut settled).await?;
        assert_eq!(*res[0].as_ref().unwrap(), 5);
        assert!(!settled.cancel());
        Ok(())
    });
}

/// An empty gather completes at once with `[]` (CPython
/// `GatherTestsBase.test_constructor_empty_sequence`).
#[test]
fn empty_gather_completes_at_once() {
    on_loops(&[1, 2], || async {
        let start = Instant::now();
        let none: Vec<i32> = braid::gather(Vec::<Task<i32>>::new()).await?;
        assert!(none.is_empty());
        let none = braid::gather(Vec::<Task<i32>>::new()).settled().await?;
        assert!(none.is_empty());
        let mut empty = braid::gather(std::iter::empty::<std::future::Ready<braid::Result<u8>>>());
        assert!(!empty.cancel(), "an empty gather accepted a cancel");
        assert!((&mut empty).await?.is_empty());
        assert!(start.elapsed() < WAIT);
        Ok(())
    });
}

/// A `Task` given to `gather` is used as is, not wrapped in another task: the gather's
/// cancel reaches that very task, and its value is the gather's (asyncio's `ensure_future`
/// returns a task unchanged).
#[test]
fn a_task_given_to_gather_is_used_as_is() {
    on_loops(&[1, 2], || async {
        let t = sleeper();
        let r = t.as_ref();
        let all = braid::gather(vec![t]);
        assert!(all.cancel());
        assert_cancelled(&all.await);
        assert!(r.cancelled(), "the given task was not the one cancelled");

        // No task is added for a task given in; one is for a coroutine.
        let t = sleeper();
        let before = braid::all_tasks().len();
        let given = braid::gather(vec![t]);
        assert_eq!(
            braid::all_tasks().len(),
            before,
            "the given task was wrapped"
        );
        let wrapped = braid::gather(vec![async {
            braid::sleep(LONG).await?;
            Ok(0)
        }]);
        assert_eq!(braid::all_tasks().len(), before + 1);
        given.cancel();
        wrapped.cancel();
        assert_cancelled(&given.await);
        assert_cancelled(&wrapped.await);

        let t = braid::create_task(async { Ok(9) });
        assert_eq!(braid::gather(vec![t]).await?, vec![9]);
        Ok(())
    });
}

/// `gather` spawns tasks, so like `create_task` it needs a running loop.
#[test]
#[should_panic(expected = "no running event loop")]
fn gather_outside_a_loop_panics() {
    let _never_built = braid::gather(vec![async { Ok::<i32, Error>(1) }]);
}

/// A task that awaits a gather whose children are all done, with a cancel pending, gets
/// their values, and the request is delivered at its next await point (as for a `Task`: the
/// values were thrown away before).
#[test]
fn awaiting_a_gather_whose_children_are_done_gives_their_values_and_the_next_await_the_cancel() {
    let rt = runtime(1);
    let (values, next) = rt
        .run_until_complete(async {
            braid::create_task(async {
                let gathered = braid::gather([1, 2].map(|n| async move { Ok(n) }));
                // One loop: the children queued ahead of us run to their end before we resume.
                braid::yield_now().await?;
                braid::current_task().unwrap().cancel();
                let values = gathered.await;
                let next = braid::yield_now().await;
                Ok((values, next))
            })
            .await
        })
        .unwrap();
    assert_eq!(values.unwrap(), [1, 2]);
    assert_cancelled(&next);
    rt.shutdown(WAIT).unwrap();
}
