//! Task cancellation with asyncio's semantics (API.md "Tasks and cancellation",
//! runtime/src/task/mod.rs): cancel before start, a cancel caught and denied, swallowed then
//! continued, self-cancel, cancelling a task that awaits another task, `uncancel`, cancel
//! messages, when `cancelled()` becomes true, `abort()`, cancelling a finished task, and
//! cleanup that awaits. Scenarios are ported from CPython's `test_asyncio/test_tasks.py`
//! (`test_cancel_task_catching`, `test_cancel_task_ignoring`, `test_cancel_current_task`,
//! `test_cancel_at_end`, `test_cancel_awaited_task`, `test_cancel_inner_future`,
//! `test_uncancel_basic`, `test_cancel_with_message_then_future_result`); each test names
//! the one it follows, where there is one.

use braid::{Promise, Task, TaskRef};
use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

mod common;
use common::{assert_cancelled, runtime, WAIT};

const LONG: Duration = Duration::from_secs(60);

/// Sets a flag when dropped: observes that a future was dropped.
struct DropGuard(Arc<AtomicBool>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A task cancelled before its first poll finishes cancelled without running its body
/// (CPython `test_cancel` on a task that never started). The task is created and cancelled
/// inside a callback of the only worker loop, so nothing can poll it in between.
#[test]
fn cancel_before_start_never_runs_the_body() {
    let rt = runtime(1);
    let ran = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let r = ran.clone();
    rt.event_loop()
        .call_soon_threadsafe(move || {
            let t = braid::create_task(async move {
                r.store(true, Ordering::SeqCst);
                Ok(1)
            });
            let requested = t.cancel_with("before start");
            tx.send((t, requested)).unwrap();
        })
        .unwrap();
    let (t, requested): (Task<i32>, bool) = rx.recv_timeout(WAIT).unwrap();
    assert!(requested);
    let r = t.as_ref();
    let err = rt.run_until_complete(t).unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");
    assert_eq!(err.message(), Some("before start"));
    assert!(r.done() && r.cancelled());
    assert!(
        !ran.load(Ordering::SeqCst),
        "the body of a task cancelled before start ran"
    );
    rt.shutdown(WAIT).unwrap();
}

/// The same for a `spawn_local` task on the host loop: cancelled before the loop polls it,
/// its body never runs.
#[test]
fn cancel_before_start_of_a_local_task_never_runs_the_body() {
    let rt = runtime(2);
    let (ran, err, cancelled) = rt
        .run_until_complete(async {
            let ran = Rc::new(RefCell::new(false));
            let r = ran.clone();
            let mut t = braid::spawn_local(async move {
                *r.borrow_mut() = true;
                Ok(())
            });
            assert!(t.cancel());
            let err = (&mut t).await.unwrap_err();
            let ran = *ran.borrow();
            Ok((ran, err, t.cancelled()))
        })
        .unwrap();
    assert!(err.is_cancelled());
    assert!(cancelled);
    assert!(!ran);
    rt.shutdown(WAIT).unwrap();
}

/// A coroutine that catches the Cancelled error from `sleep` and returns `Ok` finishes
/// normally: its value is kept, `cancelled()` is false and `cancelling()` stays 1
/// (CPython `test_cancel_task_catching`, with a sleep as the awaited future).
#[test]
fn cancel_caught_and_denied_keeps_the_value() {
    let rt = runtime(2);
    let (value, cancelled, cancelling, done) = rt
        .run_until_complete(async {
            let started: Promise<()> = braid::create_future();
            let s = started.clone();
            let mut t = braid::create_task(async move {
                s.set_result(())?;
                match braid::sleep(LONG).await {
                    Err(e) if e.is_cancelled() => Ok(42),
                    Err(e) => Err(e),
                    Ok(()) => Ok(0),
                }
            });
            started.await?;
            assert!(t.cancel());
            let value = (&mut t).await?;
            Ok((value, t.cancelled(), t.cancelling(), t.done()))
        })
        .unwrap();
    assert_eq!(value, 42);
    assert!(done);
    assert!(
        !cancelled,
        "a task that denied the cancellation counts as cancelled"
    );
    assert_eq!(cancelling, 1);
    rt.shutdown(WAIT).unwrap();
}

/// CPython `test_cancel_task_catching`, ported: the task awaits fut1 then fut2; cancelling
/// it cancels fut2, the coroutine catches that and returns 42, and the task is not cancelled.
#[test]
fn cancel_task_catching_promise() {
    let rt = runtime(2);
    let (value, fut2_cancelled, t_cancelled) = rt
        .run_until_complete(async {
            let fut1: Promise<()> = braid::create_future();
            let fut2: Promise<()> = braid::create_future();
            let at_fut2: Promise<()> = braid::create_future();
            let (f1, f2, at) = (fut1.clone(), fut2.clone(), at_fut2.clone());
            let mut t = braid::create_task(async move {
                f1.await?;
                at.set_result(())?;
                match f2.await {
                    Err(e) if e.is_cancelled() => Ok(42),
                    other => other.map(|()| 0),
                }
            });
            fut1.set_result(())?;
            at_fut2.await?;
            assert!(t.cancel());
            let value = (&mut t).await?;
            Ok((value, fut2.cancelled(), t.cancelled()))
        })
        .unwrap();
    assert_eq!(value, 42);
    assert!(
        fut2_cancelled,
        "cancelling the task did not cancel the promise it awaited"
    );
    assert!(!t_cancelled);
    rt.shutdown(WAIT).unwrap();
}

/// A coroutine that swallows the cancellation, then awaits more and returns, finishes
/// normally with its value (CPython `test_cancel_task_ignoring`): fut3 is awaited after the
/// cancellation and is not cancelled.
#[test]
fn cancel_swallowed_then_continued() {
    let rt = runtime(2);
    let (value, fut3_cancelled, t_cancelled) = rt
        .run_until_complete(async {
            let started: Promise<()> = braid::create_future();
            let at_fut3: Promise<()> = braid::create_future();
            let fut3: Promise<u32> = braid::create_future();
            let (s, at, f3) = (started.clone(), at_fut3.clone(), fut3.clone());
            let mut t = braid::create_task(async move {
                s.set_result(())?;
                if let Err(e) = braid::sleep(LONG).await {
                    assert!(e.is_cancelled());
                }
                // Continue after swallowing: more awaits, none of them cancelled.
                braid::yield_now().await?;
                braid::sleep(Duration::from_millis(5)).await?;
                at.set_result(())?;
                let v = f3.await?;
                Ok(v)
            });
            started.await?;
            assert!(t.cancel());
            at_fut3.await?;
            fut3.set_result(42)?;
            let value = (&mut t).await?;
            Ok((value, fut3.cancelled(), t.cancelled()))
        })
        .unwrap();
    assert_eq!(value, 42);
    assert!(!fut3_cancelled);
    assert!(!t_cancelled);
    rt.shutdown(WAIT).unwrap();
}

/// A task that cancels itself and returns `Ok` without awaiting ends cancelled, its value
/// discarded; `cancel()` afterwards returns false (CPython `test_cancel_at_end`).
#[test]
fn self_cancel_then_return_ends_cancelled() {
    let rt = runtime(2);
    let (err, cancelled, done, cancel_again) = rt
        .run_until_complete(async {
            let mut t = braid::create_task(async {
                let me = braid::current_task().expect("inside a task");
                assert!(me.cancel());
                Ok(12)
            });
            let err = (&mut t).await.unwrap_err();
            Ok((err, t.cancelled(), t.done(), t.cancel()))
        })
        .unwrap();
    assert!(err.is_cancelled(), "{err:?}");
    assert!(done && cancelled);
    assert!(!cancel_again);
    rt.shutdown(WAIT).unwrap();
}

/// A task that cancels itself and then sleeps gets the Cancelled error at once from the
/// sleep (CPython `test_cancel_current_task`).
#[test]
fn self_cancel_then_sleep_is_cancelled_at_once() {
    let rt = runtime(2);
    let (err, elapsed, cancelled) = rt
        .run_until_complete(async {
            let mut t = braid::create_task(async {
                braid::current_task().unwrap().cancel();
                braid::sleep(Duration::from_secs(100)).await?;
                Ok(12)
            });
            let start = Instant::now();
            let err = (&mut t).await.unwrap_err();
            Ok((err, start.elapsed(), t.cancelled()))
        })
        .unwrap();
    assert!(err.is_cancelled());
    assert!(cancelled);
    assert!(
        elapsed < Duration::from_secs(5),
        "the cancelled sleep took {elapsed:?}"
    );
    rt.shutdown(WAIT).unwrap();
}

/// The shared shape of the "outer awaits inner" tests.
struct OuterAwaitingInner {
    /// A `spawn_local` task of the host loop that awaits `inner`.
    outer: Task<i32>,
    /// The inner task, once the outer task has created it.
    inner: Rc<RefCell<Option<TaskRef>>>,
    /// Resolved by the inner task when it starts sleeping: the outer task is then certainly
    /// awaiting it (the outer task runs on the host loop, in the step that created it).
    inner_started: Promise<()>,
    /// Resolved by the inner task's done callback, which runs once it has finished.
    inner_finished: Promise<()>,
}

/// Spawns an outer task awaiting an inner task whose cleanup (on cancellation) takes
/// `cleanup_for` and then sets `cleaned`.
fn spawn_outer_awaiting_inner(
    cleaned: Arc<AtomicBool>,
    cleanup_for: Duration,
) -> OuterAwaitingInner {
    let inner_started: Promise<()> = braid::create_future();
    let inner_finished: Promise<()> = braid::create_future();
    let slot: Rc<RefCell<Option<TaskRef>>> = Rc::new(RefCell::new(None));
    let (is, inf, sl) = (inner_started.clone(), inner_finished.clone(), slot.clone());
    let outer = braid::spawn_local(async move {
        let inner = braid::create_task(async move {
            is.set_result(())?;
            match braid::sleep(LONG).await {
                Err(e) => {
                    braid::sleep(cleanup_for).await?;
                    cleaned.store(true, Ordering::SeqCst);
                    Err(e)
                }
                Ok(()) => Ok(1),
            }
        });
        inner.add_done_callback(move |_| inf.set_result(()).unwrap());
        *sl.borrow_mut() = Some(inner.as_ref());
        inner.await
    });
    OuterAwaitingInner {
        outer,
        inner: slot,
        inner_started,
        inner_finished,
    }
}

/// Cancelling a task that awaits another task cancels the inner task too: the inner task's
/// cleanup runs and it ends cancelled (CPython `test_cancel_inner_future`, with a task as the
/// inner future).
#[test]
fn cancel_while_awaiting_a_task_cancels_the_inner_task() {
    let rt = runtime(2);
    let cleaned = Arc::new(AtomicBool::new(false));
    let c = cleaned.clone();
    let (outer_err, outer_cancelled, inner_cancelled) = rt
        .run_until_complete(async move {
            let mut s = spawn_outer_awaiting_inner(c, Duration::ZERO);
            s.inner_started.await?;
            assert!(s.outer.cancel());
            let outer_err = (&mut s.outer).await.unwrap_err();
            s.inner_finished.await?;
            let inner = s.inner.borrow().clone().expect("inner created");
            Ok((outer_err, s.outer.cancelled(), inner.cancelled()))
        })
        .unwrap();
    assert!(outer_err.is_cancelled());
    assert!(outer_cancelled);
    assert!(inner_cancelled, "the inner task did not end cancelled");
    assert!(
        cleaned.load(Ordering::SeqCst),
        "the inner task's cleanup did not run"
    );
    rt.shutdown(WAIT).unwrap();
}

/// asyncio's order: a task cancelled while awaiting another task passes the cancellation on
/// and keeps waiting, so it finishes only after the inner task has finished cancelling
/// (its Cancelled error comes from the inner task). Checked right when the outer join
/// returns, with an inner cleanup that takes 30 ms.
#[test]

fn outer_cancelled_while_awaiting_a_task_finishes_after_the_inner_task() {
    let rt = runtime(2);
    let cleaned = Arc::new(AtomicBool::new(false));
    let c = cleaned.clone();
    let (inner_done_when_outer_done, cleaned_when_outer_done) = rt
        .run_until_complete(async move {
            let mut s = spawn_outer_awaiting_inner(c.clone(), Duration::from_millis(30));
            s.inner_started.await?;
            s.outer.cancel();
            let _ = (&mut s.outer).await;
            let inner = s.inner.borrow().clone().expect("inner created");
            let snapshot = (inner.done(), c.load(Ordering::SeqCst));
            s.inner_finished.await?;
            Ok(snapshot)
        })
        .unwrap();
    assert!(
        cleaned_when_outer_done,
        "the outer task finished before the inner task's cleanup ran"
    );
    assert!(
        inner_done_when_outer_done,
        "the outer task finished before the inner task did"
    );
    assert!(cleaned.load(Ordering::SeqCst));
    rt.shutdown(WAIT).unwrap();
}

/// A task that cancels itself while not blocked, then awaits a nested task: the nested task
/// (and the promise it awaits) gets cancelled, and so does the task (CPython
/// `test_cancel_awaited_task`, bpo-34872).
#[test]

fn self_cancel_then_await_nested_task_cancels_the_nested_task() {
    let rt = runtime(2);
    let (task_err, task_cancelled, nested_cancelled, fut_cancelled) = rt
        .run_until_complete(async {
            let fut: Promise<()> = braid::create_future();
            let f = fut.clone();
            let nested_ref: Arc<std::sync::Mutex<Option<TaskRef>>> = Arc::default();
            let nr = nested_ref.clone();
            let mut task = braid::create_task(async move {
                let nested = braid::create_task(async move { f.await });
                *nr.lock().unwrap() = Some(nested.as_ref());
                braid::sleep(Duration::ZERO).await?;
                braid::current_task().unwrap().cancel();
                nested.await
            });
            let task_err = (&mut task).await.unwrap_err();
            let nested = nested_ref.lock().unwrap().clone().expect("nested created");
            // Give a correctly cancelled nested task time to finish before looking.
            let end = Instant::now() + Duration::from_secs(2);
            while !nested.done() && Instant::now() < end {
                braid::sleep(Duration::from_millis(2)).await?;
            }
            Ok((
                task_err,
                task.cancelled(),
                nested.cancelled(),
                fut.cancelled(),
            ))
        })
        .unwrap();
    assert!(task_err.is_cancelled());
    assert!(task_cancelled);
    assert!(
        nested_cancelled,
        "the nested task the cancelled task awaited was not cancelled"
    );
    assert!(
        fut_cancelled,
        "the promise the nested task awaited was not cancelled"
    );
    rt.shutdown(WAIT).unwrap();
}

/// Two cancel requests before delivery count 2 in `cancelling()` and deliver one Cancelled
/// error, as asyncio does (its `Task.cancel` sets `_must_cancel` once): a coroutine that catches it can await
/// again without a second error. The task is local to the host loop, so both requests are
/// made before it can run again.
#[test]
fn two_requests_before_delivery_count_twice_and_deliver_once() {
    let rt = runtime(2);
    let (value, cancelling, errors) = rt
        .run_until_complete(async {
            let started: Promise<()> = braid::create_future();
            let s = started.clone();
            let mut t = braid::spawn_local(async move {
                s.set_result(())?;
                let mut errors = 0;
                if braid::sleep(LONG).await.is_err() {
                    errors += 1;
                }
                if braid::sleep(Duration::from_millis(5)).await.is_err() {
                    errors += 1;
                }
                if braid::yield_now().await.is_err() {
                    errors += 1;
                }
                Ok(errors)
            });
            started.await?;
            assert!(t.cancel());
            assert!(t.cancel());
            assert_eq!(t.cancelling(), 2);
            let errors = (&mut t).await?;
            Ok(("done", t.cancelling(), errors))
        })
        .unwrap();
    assert_eq!(value, "done");
    assert_eq!(cancelling, 2);
    assert_eq!(errors, 1);
    rt.shutdown(WAIT).unwrap();
}

/// After catching a cancellation, `uncancel()` brings `cancelling()` back to 0 and the task
/// goes on; a second cancel then ends it cancelled with `cancelling() == 1` (CPython
/// `test_uncancel_basic`).
#[test]
fn uncancel_after_catching_then_cancel_again() {
    let rt = runtime(2);
    let (left, between, err, cancelled, cancelling) = rt
        .run_until_complete(async {
            let started: Promise<()> = braid::create_future();
            let uncancelled: Promise<usize> = braid::create_future();
            let (s, u) = (started.clone(), uncancelled.clone());
            let mut t = braid::create_task(async move {
                s.set_result(())?;
                if let Err(e) = braid::sleep(LONG).await {
                    assert!(e.is_cancelled());
                    let left = braid::current_task().unwrap().uncancel();
                    u.set_result(left)?;
                    braid::sleep(LONG).await?;
                }
                Ok(())
            });
            started.await?;
            assert!(t.cancel());
            let left = uncancelled.await?;
            let between = t.cancelling();
            assert!(t.cancel());
            let err = (&mut t).await.unwrap_err();
            Ok((left, between, err, t.cancelled(), t.cancelling()))
        })
        .unwrap();
    assert_eq!(left, 0);
    assert_eq!(between, 0);
    assert!(err.is_cancelled());
    assert!(cancelled);
    assert_eq!(cancelling, 1);
    rt.shutdown(WAIT).unwrap();
}

/// What a coroutine saw at the await point `wait`: the cancel ("got cancel") or its end.
async fn outcome_at(wait: impl Future<Output = braid::Result<()>>) -> braid::Result<&'static str> {
    match wait.await {
        Ok(()) => Ok("normal"),
        Err(e) if e.is_cancelled() => Ok("got cancel"),
        Err(e) => Err(e),
    }
}

/// A request made while the task is parked at an await point has been handed to it (asyncio
/// cancels the awaited future, `_fut_waiter.cancel()`): `uncancel()` brings `cancelling()`
/// back to 0 but cannot take the request back, and the await point still gets it, whatever
/// it is (CPython 3.11 and 3.13 alike). The tasks are local to the host loop, so each is
/// parked, not queued, when the main future cancels and uncancels it.
#[test]
fn uncancel_after_cancel_reached_a_parked_await_point_still_delivers_it() {
    let rt = runtime(2);
    let seen = rt
        .run_until_complete(async {
            let event = Arc::new(braid::Event::new());
            let lock = Arc::new(braid::Lock::new());
            let queue = Arc::new(braid::Queue::<u8>::new(0));
            let promise: Promise<()> = braid::create_future();
            let held = lock.try_acquire().expect("free");
            let (e, l, q, p) = (event.clone(), lock.clone(), queue.clone(), promise.clone());
            // The sleep ends well after the cancel if nothing delivers it.
            let short = Duration::from_millis(300);
            let tasks: Vec<(&str, Task<&'static str>)> = vec![
                ("sleep", braid::spawn_local(outcome_at(braid::sleep(short)))),
                (
                    "event",
                    braid::spawn_local(async move { outcome_at(e.wait()).await }),
                ),
                (
                    "lock",
                    braid::spawn_local(async move {
                        outcome_at(async { l.acquire().await.map(drop) }).await
                    }),
                ),
                (
                    "queue",
                    braid::spawn_local(async move {
                        outcome_at(async { q.get().await.map(drop) }).await
                    }),
                ),
                (
                    "promise",
                    braid::spawn_local(outcome_at(std::future::IntoFuture::into_future(p))),
                ),
            ];
            braid::yield_now().await?; // each starts and parks at its await point
            let mut seen = Vec::new();
            for (name, task) in &tasks {
                assert!(task.cancel());
                assert_eq!(task.uncancel(), 0, "{name}");
            }
            // Had the requests been withdrawn, these would end the awaits normally.
            event.set();
            drop(held);
            queue.put_nowait(1)?;
            let _ = promise.set_result(());
            for (name, task) in tasks {
                seen.push((name, task.await?));
            }
            Ok(seen)
        })
        .unwrap();
    let expected: Vec<_> = ["sleep", "event", "lock", "queue", "promise"]
        .into_iter()
        .map(|name| (name, "got cancel"))
        .collect();
    assert_eq!(seen, expected);
    rt.shutdown(WAIT).unwrap();
}

/// The same for the main future of `run_until_complete`, parked in a sleep when a task
/// cancels and uncancels it; while a request made once its await point has ended (the
/// event it waits on is set, so it is woken) is withdrawn, as for a queued task.
#[test]
fn uncancel_after_cancel_reached_the_parked_main_future_still_delivers_it() {
    let rt = runtime(1);
    let (parked, woken, cancelling) = rt
        .run_until_complete(async {
            let me = braid::current_task().unwrap();
            let m = me.clone();
            // Local to the host loop: it runs once the main future has parked in its sleep.
            let _canceller = braid::spawn_local(async move {
                assert!(m.cancel());
                assert_eq!(m.uncancel(), 0);
                Ok(())
            });
            let parked = outcome_at(braid::sleep(Duration::from_millis(300))).await?;
            let (event, m) = (Arc::new(braid::Event::new()), me.clone());
            let e = event.clone();
            let _waker = braid::spawn_local(async move {
                e.set();
                assert!(m.cancel());
                assert_eq!(m.uncancel(), 0);
                Ok(())
            });
            let woken = outcome_at(event.wait()).await?;
            Ok((parked, woken, me.cancelling()))
        })
        .unwrap();
    assert_eq!((parked, woken), ("got cancel", "normal"));
    assert_eq!(cancelling, 0);
    rt.shutdown(WAIT).unwrap();
}

/// `uncancel()` of the only request withdraws it while nothing has received it yet: the task
/// was queued (woken, or not yet started) when it was made, which is asyncio's
/// `_must_cancel` case, cleared by the last `uncancel()` as Python 3.13 does (3.11 never
/// clears it). The task finishes normally. A task cancelled and uncancelled before its first
/// step runs its body (3.13; 3.11 ends it cancelled). Local to the host loop, so nothing runs
/// either task between the calls. `uncancel()` with no request pending stays at 0.
#[test]
fn uncancel_before_delivery_to_a_queued_task_withdraws_the_request() {
    let rt = runtime(2);
    let (woken, unstarted, cancelled, cancelling, extra) = rt
        .run_until_complete(async {
            let event = Arc::new(braid::Event::new());
            let e = event.clone();
            let mut woken = braid::spawn_local(async move { outcome_at(e.wait()).await });
            braid::yield_now().await?; // let it start and park in its wait
            event.set(); // queues it: its await point has its outcome
            assert!(woken.cancel());
            assert_eq!(woken.uncancel(), 0);
            let unstarted = braid::spawn_local(async { Ok("ran") });
            assert!(unstarted.cancel());
            assert_eq!(unstarted.uncancel(), 0);
            let value = (&mut woken).await?;
            Ok((
                value,
                unstarted.await?,
                woken.cancelled(),
                woken.cancelling(),
                woken.uncancel(),
            ))
        })
        .unwrap();
    assert_eq!(woken, "normal");
    assert_eq!(unstarted, "ran");
    assert!(!cancelled);
    assert_eq!(cancelling, 0);
    assert_eq!(extra, 0);
    rt.shutdown(WAIT).unwrap();
}

/// `cancel_with(msg)` carries the message to the coroutine's Cancelled error and to the
/// join's error (CPython `test_cancel_with_message_then_future_result`), also when the task
/// is cancelled before it starts.
#[test]
fn cancel_message_round_trips() {
    let rt = runtime(2);
    let (inside, outside, never_started) = rt
        .run_until_complete(async {
            let started: Promise<()> = braid::create_future();
            let s = started.clone();
            let seen: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
            let sn = seen.clone();
            let t = braid::create_task(async move {
                s.set_result(())?;
                let r = braid::sleep(LONG).await;
                if let Err(e) = &r {
                    *sn.lock().unwrap() = e.message().map(str::to_owned);
                }
                r
            });
            started.await?;
            assert!(t.cancel_with("my message"));
            let outside = t.await.unwrap_err();
            let inside = seen.lock().unwrap().clone();
            let local = braid::spawn_local(async { Ok(()) });
            local.cancel_with("too early");
            let never_started = local.await.unwrap_err();
            Ok((inside, outside, never_started))
        })
        .unwrap();
    assert_eq!(inside.as_deref(), Some("my message"));
    assert!(outside.is_cancelled());
    assert_eq!(outside.message(), Some("my message"));
    assert!(never_started.is_cancelled());
    assert_eq!(never_started.message(), Some("too early"));
    rt.shutdown(WAIT).unwrap();
}

/// `cancelled()` is false right after `cancel()`, stays false while the coroutine runs its
/// cleanup, and is true only once the coroutine has ended with the Cancelled error.
#[test]
fn cancelled_is_true_only_after_the_coroutine_ends_cancelled() {
    let rt = runtime(2);
    let (right_after, during_cleanup, at_end) = rt
        .run_until_complete(async {
            let started: Promise<()> = braid::create_future();
            let in_cleanup: Promise<()> = braid::create_future();
            let release: Promise<()> = braid::create_future();
            let (s, ic, rl) = (started.clone(), in_cleanup.clone(), release.clone());
            let mut t = braid::create_task(async move {
                s.set_result(())?;
                match braid::sleep(LONG).await {
                    Err(e) => {
                        ic.set_result(())?;
                        rl.await?;
                        Err(e)
                    }
                    Ok(()) => Ok(()),
                }
            });
            started.await?;
            t.cancel();
            let right_after = (t.cancelled(), t.done());
            in_cleanup.await?;
            let during_cleanup = (t.cancelled(), t.done());
            release.set_result(())?;
            let _ = (&mut t).await;
            Ok((right_after, during_cleanup, (t.cancelled(), t.done())))
        })
        .unwrap();
    assert_eq!(right_after, (false, false));
    assert_eq!(during_cleanup, (false, false));
    assert_eq!(at_end, (true, true));
    rt.shutdown(WAIT).unwrap();
}

/// `abort()` drops the task's future without running any more of it (even while it awaits a
/// future foreign to braid, which cannot see a cancel request) and the join gives a
/// Cancelled error.
#[test]
fn abort_drops_the_future_and_the_join_is_cancelled() {
    let rt = runtime(2);
    let dropped = Arc::new(AtomicBool::new(false));
    let resumed = Arc::new(AtomicBool::new(false));
    let (d, r) = (dropped.clone(), resumed.clone());
    let (err, dropped_at_join, cancelled) = rt
        .run_until_complete(async move {
            let started: Promise<()> = braid::create_future();
            let s = started.clone();
            let d2 = d.clone();
            let mut t = braid::create_task(async move {
                let _guard = DropGuard(d2);
                s.set_result(())?;
                std::future::pending::<()>().await;
                r.store(true, Ordering::SeqCst);
                Ok(())
            });
            started.await?;
            assert!(!d.load(Ordering::SeqCst));
            t.abort();
            let err = (&mut t).await.unwrap_err();
            Ok((err, d.load(Ordering::SeqCst), t.cancelled()))
        })
        .unwrap();
    assert!(err.is_cancelled(), "{err:?}");
    assert!(
        dropped_at_join,
        "the aborted task's future was not dropped by the time its join returned"
    );
    assert!(cancelled);
    assert!(!resumed.load(Ordering::SeqCst));
    assert!(dropped.load(Ordering::SeqCst));
    rt.shutdown(WAIT).unwrap();
}

/// Pending for good; records the address it was polled at and the one it is dropped at.
struct PinProbe {
    polled_at: Arc<AtomicUsize>,
    dropped_at: Arc<AtomicUsize>,
    _pinned: std::marker::PhantomPinned,
}

impl PinProbe {
    fn new() -> (PinProbe, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let (polled_at, dropped_at) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let probe = PinProbe {
            polled_at: polled_at.clone(),
            dropped_at: dropped_at.clone(),
            _pinned: std::marker::PhantomPinned,
        };
        (probe, polled_at, dropped_at)
    }
}

impl Future for PinProbe {
    type Output = braid::Result<()>;
    fn poll(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.polled_at
            .store(&*self as *const Self as usize, Ordering::SeqCst);
        std::task::Poll::Pending
    }
}

impl Drop for PinProbe {
    fn drop(&mut self) {
        self.dropped_at
            .store(self as *const Self as usize, Ordering::SeqCst);
    }
}

/// An aborted task's future is dropped where its first poll pinned it, as `Pin` promises: a
/// future holding a borrow of its own locals across an await (a condition's `wait` borrowing
/// its guard) runs its destructors through that borrow. The abort used to move the future
/// out of the task before dropping it: such a destructor then followed a dangling pointer
/// (a segfault when aborting a task in a condition's `wait`).
#[test]
fn abort_drops_the_future_where_it_was_pinned() {
    let rt = runtime(1);
    let (probe, polled_at, dropped_at) = PinProbe::new();
    rt.run_until_complete(async move {
        let task = braid::spawn_local(probe);
        while polled_at.load(Ordering::SeqCst) == 0 {
            braid::yield_now().await?;
        }
        task.abort();
        let err = braid::wait_for(task, Some(WAIT)).await.unwrap_err();
        assert!(err.is_cancelled(), "{err:?}");
        assert_eq!(
            dropped_at.load(Ordering::SeqCst),
            polled_at.load(Ordering::SeqCst),
            "dropped where it was pinned"
        );
        Ok(())
    })
    .unwrap();
    rt.shutdown(WAIT).unwrap();
}

/// The same for a task a shutdown finishes (it drops the future from outside a poll).
#[test]
fn shutdown_drops_a_left_tasks_future_where_it_was_pinned() {
    let rt = runtime(1);
    let (probe, polled_at, dropped_at) = PinProbe::new();
    let task = rt.event_loop().spawn(probe).unwrap();
    let started = Instant::now();
    while polled_at.load(Ordering::SeqCst) == 0 {
        assert!(started.elapsed() < WAIT, "the task was never polled");
        std::thread::yield_now();
    }
    // The probe ignores the cancel request, so the shutdown times out and drops it itself.
    let err = rt.shutdown(Duration::from_millis(100)).unwrap_err();
    assert_eq!(err.kind(), braid::ErrorKind::Timeout, "{err}");
    assert!(task.done());
    assert_eq!(
        dropped_at.load(Ordering::SeqCst),
        polled_at.load(Ordering::SeqCst),
        "dropped where it was pinned"
    );
}

/// `cancel()` / `cancel_with()` of a finished task return false and change nothing, on the
/// `Task` and on a `TaskRef` (CPython `test_cancel_done_future` / `test_cancel_at_end`'s
/// final check).
#[test]
fn cancel_of_a_done_task_returns_false() {
    let rt = runtime(2);
    let checks = rt
        .run_until_complete(async {
            let mut t = braid::create_task(async { Ok(1) });
            let r = t.as_ref();
            assert_eq!((&mut t).await?, 1);
            let ok_task = (
                t.cancel(),
                t.cancel_with("late"),
                r.cancel(),
                r.cancel_with("late"),
            );
            let ok_state = (t.cancelled(), t.cancelling(), t.done());

            let mut c = braid::create_task(async { braid::sleep(LONG).await });
            c.cancel();
            let _ = (&mut c).await;
            let cancelled_task = (
                c.cancel(),
                c.as_ref().cancel(),
                c.cancelled(),
                c.cancelling(),
            );
            Ok((ok_task, ok_state, cancelled_task))
        })
        .unwrap();
    assert_eq!(checks.0, (false, false, false, false));
    assert_eq!(checks.1, (false, 0, true));
    assert_eq!(checks.2, (false, false, true, 1));
    rt.shutdown(WAIT).unwrap();
}

/// A cancelled task's cleanup can await (a 20 ms sleep and a yield) before finishing; the
/// join waits for it and the task ends cancelled.
#[test]
fn cancelled_task_cleanup_can_await_before_finishing() {
    let rt = runtime(2);
    let cleanup_steps = Arc::new(AtomicUsize::new(0));
    let cs = cleanup_steps.clone();
    let (err, cancelled, elapsed) = rt
        .run_until_complete(async move {
            let started: Promise<()> = braid::create_future();
            let s = started.clone();
            let mut t = braid::create_task(async move {
                s.set_result(())?;
                match braid::sleep(LONG).await {
                    Err(e) => {
                        braid::sleep(Duration::from_millis(20)).await?;
                        cs.fetch_add(1, Ordering::SeqCst);
                        braid::yield_now().await?;
                        cs.fetch_add(1, Ordering::SeqCst);
                        Err(e)
                    }
                    Ok(()) => Ok(()),
                }
            });
            started.await?;
            let cancelled_at = Instant::now();
            t.cancel();
            let err = (&mut t).await.unwrap_err();
            Ok((err, t.cancelled(), cancelled_at.elapsed()))
        })
        .unwrap();
    assert!(err.is_cancelled());
    assert!(cancelled);
    assert_eq!(cleanup_steps.load(Ordering::SeqCst), 2);
    assert!(
        elapsed >= Duration::from_millis(20),
        "the join returned after {elapsed:?}"
    );
    rt.shutdown(WAIT).unwrap();
}

/// `abort()` of a task in the middle of a poll (blocked on another thread) takes effect
/// when that poll ends: the future is dropped and no code after its next await runs.
#[test]
fn abort_of_a_running_task_drops_it_after_the_current_poll() {
    let rt = runtime(2);
    let dropped = Arc::new(AtomicBool::new(false));
    let resumed = Arc::new(AtomicBool::new(false));
    let (in_poll_tx, in_poll_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (d, r) = (dropped.clone(), resumed.clone());
    let mut t = rt
        .event_loop()
        .spawn(async move {
            let _guard = DropGuard(d);
            in_poll_tx.send(()).unwrap();
            let _ = release_rx.recv_timeout(WAIT); // still inside the first poll
            braid::yield_now().await?;
            r.store(true, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
    in_poll_rx.recv_timeout(WAIT).unwrap();
    t.abort();
    assert!(
        !dropped.load(Ordering::SeqCst),
        "dropped while its poll was running"
    );
    release_tx.send(()).unwrap();
    let err = rt.run_until_complete(&mut t).unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");
    assert!(t.cancelled());
    assert!(dropped.load(Ordering::SeqCst));
    assert!(
        !resumed.load(Ordering::SeqCst),
        "code after the next await ran after abort()"
    );
    rt.shutdown(WAIT).unwrap();
}

/// `abort()` before a task's first poll: its body never runs, its future is dropped, and
/// the join is Cancelled.
#[test]
fn abort_before_start_never_runs_the_body() {
    let rt = runtime(1);
    let ran = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let (r, d) = (ran.clone(), dropped.clone());
    rt.event_loop()
        .call_soon_threadsafe(move || {
            let guard = DropGuard(d);
            let t = braid::create_task(async move {
                let _guard = guard;
                r.store(true, Ordering::SeqCst);
                Ok(())
            });
            t.abort();
            tx.send(t).unwrap();
        })
        .unwrap();
    let t = rx.recv_timeout(WAIT).unwrap();
    let err = rt.run_until_complete(t).unwrap_err();
    assert!(err.is_cancelled());
    assert!(!ran.load(Ordering::SeqCst));
    assert!(dropped.load(Ordering::SeqCst));
    rt.shutdown(WAIT).unwrap();
}

/// A cancel request made while the task waits on a future foreign to braid (so nothing can
/// deliver it) and still undelivered when the coroutine returns `Ok` ends the task cancelled,
/// its value discarded (API.md: a request made before the task's last step began).
#[test]
fn undelivered_request_made_before_the_last_step_discards_the_value() {
    let rt = runtime(2);
    let (go_tx, go_rx) = futures::channel::oneshot::channel::<()>();
    let (waiting_tx, waiting_rx) = mpsc::channel();
    let mut t = rt
        .event_loop()
        .spawn(async move {
            // Foreign to braid, so not a cancellation point. Report "waiting" only once it has
            // been polled and found not ready, so the request below lands on a parked task.
            let mut go_rx = go_rx;
            let mut reported = false;
            let _ = std::future::poll_fn(|cx| {
                let r = std::pin::Pin::new(&mut go_rx).poll(cx);
                if r.is_pending() && !reported {
                    reported = true;
                    waiting_tx.send(()).unwrap();
                }
                r
            })
            .await;
            Ok(5)
        })
        .unwrap();
    waiting_rx.recv_timeout(WAIT).unwrap();
    assert!(t.cancel());
    go_tx.send(()).unwrap();
    let r = rt.run_until_complete(&mut t);
    assert!(r.as_ref().is_err_and(|e| e.is_cancelled()), "{r:?}");
    assert!(t.cancelled());
    rt.shutdown(WAIT).unwrap();
}

/// A cancel request from another thread that lands while the task's final step is already
/// running is too late: the task keeps its value and is not cancelled (API.md: "a value
/// already taken ... is never thrown away").
#[test]
fn request_landing_during_the_final_step_is_too_late() {
    let rt = runtime(2);
    let (in_step_tx, in_step_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let mut t = rt
        .event_loop()
        .spawn(async move {
            braid::yield_now().await?;
            // The final step: no braid await point from here on.
            in_step_tx.send(()).unwrap();
            let _ = release_rx.recv_timeout(WAIT);
            Ok(5)
        })
        .unwrap();
    in_step_rx.recv_timeout(WAIT).unwrap();
    assert!(t.cancel());
    release_tx.send(()).unwrap();
    assert_eq!(rt.run_until_complete(&mut t).unwrap(), 5);
    assert!(!t.cancelled());
    rt.shutdown(WAIT).unwrap();
}

/// braid's own race (no CPython equivalent, where a cancel cannot land during another task's
/// step): the outer task's cancel goes to the inner task it awaits, but arrives while the
/// inner task's final step is already running on another loop, so the inner task keeps its
/// value. The cancel is not lost: it comes back to the outer task, at its next await.
#[test]
fn cancel_absorbed_too_late_by_the_awaited_task_comes_back_to_the_awaiter() {
    let rt = runtime(2);
    let (in_final_step_tx, in_final_step_rx) = mpsc::channel::<()>();
    let (go_on_tx, go_on_rx) = mpsc::channel::<()>();
    let go_on_rx = std::sync::Mutex::new(go_on_rx);
    let (outer_tx, outer_rx) = mpsc::channel::<TaskRef>();
    let lp = rt.event_loop();
    let outcome = lp
        .run_coroutine_threadsafe(async move {
            let inner = braid::create_task(async move {
                braid::yield_now().await?;
                // The final step: tell the canceller, then wait (blocking this loop) for it.
                in_final_step_tx.send(()).unwrap();
                go_on_rx.lock().unwrap().recv_timeout(WAIT).unwrap();
                Ok("inner value")
            });
            outer_tx.send(braid::current_task().unwrap()).unwrap();
            let value = inner.await?;
            // The cancel that reached the inner task too late is delivered here.
            let after = braid::sleep(Duration::from_secs(60)).await;
            Ok((value, after.map_err(|e| e.is_cancelled())))
        })
        .unwrap();
    let outer = outer_rx.recv_timeout(WAIT).unwrap();
    in_final_step_rx.recv_timeout(WAIT).unwrap();
    assert!(outer.cancel(), "the outer task is still running");
    go_on_tx.send(()).unwrap();
    let (value, after) = outcome.result(Some(WAIT)).unwrap();
    assert_eq!(value, "inner value", "the inner task keeps its value");
    assert_eq!(
        after,
        Err(true),
        "the cancel reaches the outer task's next await"
    );
}

/// Holds the only loop of `rt` busy in a callback while it cancels `outer` and opens the
/// gate `opener`, so that when `outer` runs again both have happened.
fn cancel_and_open_while_the_loop_is_held(
    rt: &braid::Runtime,
    outer: &TaskRef,
    opener: &Promise<()>,
) {
    let (holding_tx, holding_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    rt.event_loop()
        .call_soon_threadsafe(move || {
            holding_tx.send(()).unwrap();
            let _ = release_rx.recv_timeout(WAIT);
        })
        .unwrap();
    holding_rx.recv_timeout(WAIT).unwrap();
    assert!(outer.cancel(), "the outer task is still running");
    opener.set_result(()).unwrap();
    release_tx.send(()).unwrap();
}

/// What the outer task of `cancel_then_stop_awaiting` saw.
#[derive(Clone, Debug, PartialEq)]
struct StoppedAwait {
    /// The select's winner, and whether its outcome was `Ok`.
    winner: (&'static str, bool),
    /// The outer task's next await after the select (`Err(true)`: cancelled).
    next_await: Result<(), bool>,
    /// The await after that (`Ok`: the request was delivered only once).
    await_after: Result<(), bool>,
    /// The outer task's `cancelling()` at its end.
    cancelling: usize,
    /// The awaited target received the request (it went on to it, as the test means).
    target_got_it: bool,
}

/// The outer task after its select dropped the awaited future: two more awaits, and what it
/// saw.
async fn after_stopping(
    winner: (&'static str, bool),
    me: TaskRef,
    target_got_it: Probe,
) -> braid::Result<StoppedAwait> {
    let next_await = braid::sleep(Duration::ZERO).await;
    let await_after = braid::sleep(Duration::ZERO).await;
    Ok(StoppedAwait {
        winner,
        next_await: next_await.map_err(|e| e.is_cancelled()),
        await_after: await_after.map_err(|e| e.is_cancelled()),
        cancelling: me.cancelling(),
        target_got_it: target_got_it(),
    })
}

/// Runs the outer task of the tests below: it awaits the future `awaited()` makes (what its
/// cancel goes on to) in a select biased to a gate. The test thread holds the only loop busy
/// in a callback while it cancels the outer task and opens the gate, so that when the outer
/// task runs again the gate has won: it stops awaiting before it reads the awaited outcome.
/// `awaited()` also returns a probe: did the awaited target receive a cancel request?
fn cancel_then_stop_awaiting<F>(
    awaited: impl FnOnce() -> (F, Probe) + Send + 'static,
) -> StoppedAwait
where
    F: Future<Output = braid::Result<()>> + Send + 'static,
{
    use std::task::Poll;
    let rt = runtime(1);
    let gate: Promise<()> = Promise::new();
    let opener = gate.clone();
    let (outer_tx, outer_rx) = mpsc::channel::<TaskRef>();
    let (waiting_tx, waiting_rx) = mpsc::channel::<()>();
    let outcome = rt
        .event_loop()
        .run_coroutine_threadsafe(async move {
            let (awaited, target_got_it) = awaited();
            let mut awaited = Box::pin(awaited);
            let me = braid::current_task().unwrap();
            outer_tx.send(me.clone()).unwrap();
            let mut gate = Box::pin(std::future::IntoFuture::into_future(gate));
            let mut told = false;
            let winner = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = gate.as_mut().poll(cx) {
                    return Poll::Ready(("gate", r.is_ok()));
                }
                if let Poll::Ready(r) = awaited.as_mut().poll(cx) {
                    return Poll::Ready(("awaited", r.is_ok()));
                }
                if !told {
                    // Registered as what the outer task awaits: a cancel now goes on to it.
                    told = true;
                    waiting_tx.send(()).unwrap();
                }
                Poll::Pending
            })
            .await;
            drop(awaited);
            after_stopping(winner, me, target_got_it).await
        })
        .unwrap();
    let outer = outer_rx.recv_timeout(WAIT).unwrap();
    waiting_rx.recv_timeout(WAIT).unwrap();
    cancel_and_open_while_the_loop_is_held(&rt, &outer, &opener);
    let result = outcome.result(Some(WAIT)).unwrap();
    rt.shutdown(WAIT).unwrap();
    result
}

/// A probe of an awaited target: did it receive a cancel request?
type Probe = Box<dyn Fn() -> bool + Send>;

/// A task that sleeps long, as an awaited target.
fn a_sleeping_task() -> (Task<()>, Probe) {
    let task = braid::create_task(async {
        braid::sleep(LONG).await?;
        Ok(())
    });
    let probe = task.as_ref();
    (task, Box::new(move || probe.cancelling() == 1))
}

/// A gather of one task that sleeps long, as an awaited target.
fn a_gather_of_a_sleeping_task() -> (impl Future<Output = braid::Result<()>> + Send, Probe) {
    let (child, probe) = a_sleeping_task();
    let gathered = braid::gather([child]);
    (async move { gathered.await.map(drop) }, probe)
}

/// What each test below expects: the gate won, the request went on to the target, and the
/// outer task receives it exactly once, at its next await point.
const CANCELLED_ONCE_AFTER_THE_GATE: StoppedAwait = StoppedAwait {
    winner: ("gate", true),
    next_await: Err(true),
    await_after: Ok(()),
    cancelling: 1,
    target_got_it: true,
};

/// The outer task's cancel goes on to the inner task it awaits, and then the outer task stops
/// awaiting it before its outcome arrives: a select whose other branch won drops the inner
/// task's future. That outcome was the only way the request would have reached the outer
/// task, so the request is the outer task's again, at its next await point: its `cancel()`
/// returned true and must not be lost. (asyncio's nearest form, a task awaiting
/// `asyncio.wait(..., return_when=FIRST_COMPLETED)`, is cancelled too.)
#[test]
fn cancel_passed_on_comes_back_when_the_awaiter_stops_awaiting_the_task() {
    let seen = cancel_then_stop_awaiting(a_sleeping_task);
    assert_eq!(seen, CANCELLED_ONCE_AFTER_THE_GATE);
}

/// As above, with a Promise as what the outer task awaits and stops awaiting.
#[test]
fn cancel_passed_on_comes_back_when_the_awaiter_stops_awaiting_the_promise() {
    let seen = cancel_then_stop_awaiting(|| {
        let promise = Promise::<()>::new();
        let probe = promise.clone();
        (
            std::future::IntoFuture::into_future(promise),
            Box::new(move || probe.cancelled()),
        )
    });
    assert_eq!(seen, CANCELLED_ONCE_AFTER_THE_GATE);
}

/// As above, with a gather (of one task) as what the outer task awaits and stops awaiting.
#[test]
fn cancel_passed_on_comes_back_when_the_awaiter_stops_awaiting_a_gather() {
    let seen = cancel_then_stop_awaiting(a_gather_of_a_sleeping_task);
    assert_eq!(seen, CANCELLED_ONCE_AFTER_THE_GATE);
}

/// The other way a request goes on: one already pending at the outer task (it cancelled
/// itself) when it begins to await is passed on by that await to its target. The select's
/// gate is ready on its second poll, so the outer task then stops awaiting, unread; the
/// request must come back to it as in the tests above.
fn pending_cancel_passed_on_then_stop_awaiting<F>(
    awaited: impl FnOnce() -> (F, Probe) + Send + 'static,
) -> StoppedAwait
where
    F: Future<Output = braid::Result<()>> + Send + 'static,
{
    use std::task::Poll;
    let rt = runtime(1);
    let outcome = rt
        .event_loop()
        .run_coroutine_threadsafe(async move {
            let (awaited, target_got_it) = awaited();
            let mut awaited = Box::pin(awaited);
            let me = braid::current_task().unwrap();
            assert!(
                me.cancel(),
                "pending at the outer task: it awaits nothing yet"
            );
            let mut polls = 0;
            let winner = std::future::poll_fn(|cx| {
                polls += 1;
                if polls > 1 {
                    return Poll::Ready(("gate", true));
                }
                cx.waker().wake_by_ref();
                match awaited.as_mut().poll(cx) {
                    Poll::Ready(r) => Poll::Ready(("awaited", r.is_ok())),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            drop(awaited);
            after_stopping(winner, me, target_got_it).await
        })
        .unwrap();
    let result = outcome.result(Some(WAIT)).unwrap();
    rt.shutdown(WAIT).unwrap();
    result
}

/// A pending request passed on by the await of a task (`Task::poll`) comes back when that
/// await is dropped unread.
#[test]
fn pending_cancel_passed_on_by_awaiting_a_task_comes_back_when_it_stops_awaiting() {
    let seen = pending_cancel_passed_on_then_stop_awaiting(a_sleeping_task);
    assert_eq!(seen, CANCELLED_ONCE_AFTER_THE_GATE);
}

/// As above, passed on by the await of a gather.
#[test]
fn pending_cancel_passed_on_by_awaiting_a_gather_comes_back_when_it_stops_awaiting() {
    let seen = pending_cancel_passed_on_then_stop_awaiting(a_gather_of_a_sleeping_task);
    assert_eq!(seen, CANCELLED_ONCE_AFTER_THE_GATE);
}

/// A request that comes back to a task when an await is dropped also wakes it. Here the
/// select drops its Promise await after polling its other branch, a long sleep, and goes back
/// to waiting on that sleep: without a wake the task would sleep on it with the request
/// undelivered. With it, the sleep is polled again and delivers the request.
#[test]
fn request_coming_back_wakes_the_task_waiting_on_its_other_futures() {
    use std::task::Poll;
    let rt = runtime(1);
    let gate: Promise<()> = Promise::new();
    let opener = gate.clone();
    let (outer_tx, outer_rx) = mpsc::channel::<TaskRef>();
    let (waiting_tx, waiting_rx) = mpsc::channel::<()>();
    let outcome = rt
        .event_loop()
        .run_coroutine_threadsafe(async move {
            let promise = Promise::<()>::new();
            let mut awaited = Some(Box::pin(std::future::IntoFuture::into_future(promise)));
            outer_tx.send(braid::current_task().unwrap()).unwrap();
            let mut gate = Box::pin(std::future::IntoFuture::into_future(gate));
            let mut long_sleep = Box::pin(braid::sleep(LONG));
            let mut told = false;
            let slept = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = long_sleep.as_mut().poll(cx) {
                    return Poll::Ready(r.map_err(|e| e.is_cancelled()));
                }
                if awaited.is_some() && gate.as_mut().poll(cx).is_ready() {
                    // Dropped unread: the request that went on to the promise comes back.
                    awaited = None;
                }
                if let Some(awaited) = awaited.as_mut() {
                    // Registers the promise as what the task awaits.
                    let _ = awaited.as_mut().poll(cx);
                }
                if !told {
                    told = true;
                    waiting_tx.send(()).unwrap();
                }
                Poll::Pending
            })
            .await;
            Ok(slept)
        })
        .unwrap();
    let outer = outer_rx.recv_timeout(WAIT).unwrap();
    waiting_rx.recv_timeout(WAIT).unwrap();
    cancel_and_open_while_the_loop_is_held(&rt, &outer, &opener);
    let slept = outcome
        .result(Some(WAIT))
        .expect("the task was woken to deliver the request");
    assert_eq!(slept, Err(true), "the long sleep delivers the request");
    rt.shutdown(WAIT).unwrap();
}

/// A task that awaits a task already done, with a cancel pending, gets that task's value: the
/// await does not suspend (asyncio's await of a done task returns at once), so the request
/// waits for the next await point, where it is delivered. It used to be delivered at this
/// await instead, in place of the value.
#[test]
fn awaiting_a_task_already_done_gives_its_value_and_the_next_await_the_cancel() {
    let (value, next) = common::await_a_done_task_with_a_cancel_pending(|done| done);
    assert_eq!(value.unwrap(), 7);
    assert_cancelled(&next);
}
