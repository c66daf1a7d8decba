//! Timers: `call_later` / `call_at` ordering (deadline order; scheduling order for equal
//! deadlines, each exactly once), never firing early, deadlines in the past, cancelled
//! `TimerHandle`s, huge delays, `delay_from_secs` (asyncio's float delays), and `sleep(0)`
//! yielding to other ready tasks. Scenarios follow CPython's `test_asyncio/test_base_events.py`
//! (`test_call_later`, `test_call_later_negative_delays`, `test__run_once` timer ordering,
//! `test_time_and_call_at` "never early") and `test_tasks.py` (`test_sleep`,
//! `test_sleep_when_delay_is_nan`, `asyncio.sleep(0)` yielding).

use braid::{ErrorKind, Promise, TimerHandle};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{runtime, SchedulesWhenDropped, WAIT};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Callbacks with different delays fire in deadline order, whatever the order they were
/// scheduled in (CPython `test_call_later` / `test__run_once` ordering).
#[test]
fn call_later_fires_in_deadline_order() {
    let rt = runtime(2);
    let (order, by_deadline) = rt
        .run_until_complete(async {
            let order = Rc::new(RefCell::new(Vec::new()));
            let all: Promise<()> = braid::create_future();
            let delays = [40u64, 10, 30, 0, 20, 50, 5];
            let mut deadlines = Vec::new();
            for (i, d) in delays.into_iter().enumerate() {
                let (order, all) = (order.clone(), all.clone());
                let handle = braid::call_later(ms(d), move || {
                    order.borrow_mut().push(d);
                    if order.borrow().len() == delays.len() {
                        all.set_result(()).unwrap();
                    }
                });
                deadlines.push((handle.when(), i, d));
            }
            // Each deadline is the time of its call plus the delay, so a pause of this thread
            // between two calls can swap close ones: expect the order of the deadlines
            // themselves (ties in scheduling order), which is the delays' order unless paused.
            deadlines.sort();
            let by_deadline: Vec<u64> = deadlines.into_iter().map(|(_, _, d)| d).collect();
            all.await?;
            let v = order.borrow().clone();
            Ok((v, by_deadline))
        })
        .unwrap();
    assert_eq!(order, by_deadline);
    rt.shutdown(WAIT).unwrap();
}

/// `call_at` with mixed deadlines fires in deadline order too, on a worker loop.
#[test]
fn call_at_fires_in_deadline_order_on_a_worker_loop() {
    let rt = runtime(2);
    let (tx, rx) = std::sync::mpsc::channel();
    rt.event_loops()[1]
        .call_soon_threadsafe(move || {
            let base = braid::time();
            let order = Rc::new(RefCell::new(Vec::new()));
            let offsets = [30u64, 3, 25, 12, 1];
            for off in offsets {
                let (order, tx) = (order.clone(), tx.clone());
                braid::call_at(base + ms(off), move || {
                    order.borrow_mut().push(off);
                    if order.borrow().len() == offsets.len() {
                        tx.send(order.borrow().clone()).unwrap();
                    }
                });
            }
        })
        .unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), [1, 3, 12, 25, 30]);
    rt.shutdown(WAIT).unwrap();
}

/// Callbacks due at the same instant fire in the order they were scheduled, each exactly
/// once.
#[test]
fn equal_deadlines_fire_in_scheduling_order_exactly_once() {
    let rt = runtime(2);
    let fired = rt
        .run_until_complete(async {
            let fired = Rc::new(RefCell::new(Vec::new()));
            let when = braid::time() + ms(15);
            for i in 0..40 {
                let fired = fired.clone();
                braid::call_at(when, move || fired.borrow_mut().push(i));
            }
            // A later timer marks the end; give any duplicate a chance to show up before it.
            let end: Promise<()> = braid::create_future();
            let e = end.clone();
            braid::call_at(when + ms(30), move || e.set_result(()).unwrap());
            end.await?;
            let v = fired.borrow().clone();
            Ok(v)
        })
        .unwrap();
    assert_eq!(fired, (0..40).collect::<Vec<_>>());
    rt.shutdown(WAIT).unwrap();
}

/// A timer never fires before its deadline: the loop time at firing is >= `when()`
/// (CPython `test_call_later` checks `loop.time()` after the callback). Sleeps are not early
/// either.
#[test]
fn timers_and_sleeps_never_fire_early() {
    let rt = runtime(2);
    let (late_timers, sleeps) = rt
        .run_until_complete(async {
            let results: Rc<RefCell<Vec<(Instant, Instant)>>> = Rc::new(RefCell::new(Vec::new()));
            let all: Promise<()> = braid::create_future();
            let delays = [1u64, 2, 5, 7, 10, 15, 20];
            let n = delays.len() * 2;
            for d in delays {
                for use_call_at in [false, true] {
                    let (results, all) = (results.clone(), all.clone());
                    let handle: Rc<RefCell<Option<TimerHandle>>> = Rc::new(RefCell::new(None));
                    let h = handle.clone();
                    let cb = move || {
                        let now = braid::time();
                        let when = h.borrow().as_ref().expect("handle stored").when();
                        results.borrow_mut().push((when, now));
                        if results.borrow().len() == n {
                            all.set_result(()).unwrap();
                        }
                    };
                    let t = if use_call_at {
                        braid::call_at(braid::time() + ms(d), cb)
                    } else {
                        braid::call_later(ms(d), cb)
                    };
                    *handle.borrow_mut() = Some(t);
                }
            }
            all.await?;
            let mut sleeps = Vec::new();
            for d in [1u64, 3, 10] {
                let start = Instant::now();
                braid::sleep(ms(d)).await?;
                sleeps.push((d, start.elapsed()));
            }
            let task = braid::create_task(async {
                let deadline = Instant::now() + ms(8);
                braid::sleep_until(deadline).await?;
                Ok((deadline, Instant::now()))
            });
            let (deadline, woke) = task.await?;
            sleeps.push((8, woke.duration_since(deadline) + ms(8)));
            let v = results.borrow().clone();
            Ok((v, sleeps))
        })
        .unwrap();
    assert_eq!(late_timers.len(), 14);
    for (when, fired_at) in late_timers {
        assert!(
            fired_at >= when,
            "fired {:?} early",
            when.duration_since(fired_at)
        );
    }
    for (d, took) in sleeps {
        assert!(took >= ms(d), "sleep({d} ms) returned after {took:?}");
    }
    rt.shutdown(WAIT).unwrap();
}

/// `call_at` with an instant in the past (and `call_later(0)`) runs as soon as possible:
/// before a short timer scheduled earlier, and within 50 ms.
#[test]
fn past_deadlines_run_as_soon_as_possible() {
    let rt = runtime(2);
    let (order, latency) = rt
        .run_until_complete(async {
            let order = Rc::new(RefCell::new(Vec::new()));
            let all: Promise<()> = braid::create_future();
            let o = order.clone();
            let a = all.clone();
            braid::call_later(ms(20), move || {
                o.borrow_mut().push("20ms");
                a.set_result(()).unwrap();
            });
            let scheduled = Instant::now();
            let past = Instant::now()
                .checked_sub(Duration::from_secs(1))
                .unwrap_or_else(Instant::now);
            let ran_at = Rc::new(RefCell::new(None));
            let (o, r) = (order.clone(), ran_at.clone());
            let h = braid::call_at(past, move || {
                o.borrow_mut().push("past");
                *r.borrow_mut() = Some(Instant::now());
            });
            assert_eq!(h.when(), past);
            let o = order.clone();
            braid::call_later(Duration::ZERO, move || o.borrow_mut().push("zero"));
            all.await?;
            let latency = ran_at
                .borrow()
                .expect("the past timer ran")
                .duration_since(scheduled);
            let v = order.borrow().clone();
            Ok((v, latency))
        })
        .unwrap();
    assert_eq!(order, ["past", "zero", "20ms"]);
    assert!(latency < ms(50), "a past deadline ran after {latency:?}");
    rt.shutdown(WAIT).unwrap();
}

/// A cancelled `TimerHandle` never fires; the timers around it do (CPython
/// `test_timer_handle_cancel` / `test__run_once` cancelled timers).
#[test]
fn cancelled_timer_handle_never_runs() {
    let rt = runtime(2);
    let (cancelled_ran, flags) = rt
        .run_until_complete(async {
            let cancelled_ran = Rc::new(RefCell::new(false));
            let c = cancelled_ran.clone();
            let h = braid::call_later(ms(5), move || *c.borrow_mut() = true);
            let c = cancelled_ran.clone();
            let h2 = braid::call_at(braid::time() + ms(10), move || *c.borrow_mut() = true);
            assert!(!h.cancelled());
            h.cancel();
            h2.cancel();
            let end: Promise<()> = braid::create_future();
            let e = end.clone();
            braid::call_later(ms(30), move || e.set_result(()).unwrap());
            end.await?;
            let ran = *cancelled_ran.borrow();
            Ok((ran, (h.cancelled(), h2.cancelled())))
        })
        .unwrap();
    assert!(!cancelled_ran, "a cancelled timer fired");
    assert_eq!(flags, (true, true));
    rt.shutdown(WAIT).unwrap();
}

/// `call_later(Duration::MAX)` and `sleep(Duration::MAX)` do not panic and do not fire
/// within the test; the sleeping task can still be cancelled.
#[test]
fn huge_delays_do_not_panic_and_never_fire() {
    let rt = runtime(2);
    let fired = Arc::new(AtomicBool::new(false));
    let f = fired.clone();
    let sleeper_result = rt
        .run_until_complete(async move {
            let now = braid::time();
            let f2 = f.clone();
            let h = braid::call_later(Duration::MAX, move || f2.store(true, Ordering::SeqCst));
            assert!(
                h.when() > now + Duration::from_secs(3600),
                "when() = now + {:?}",
                h.when() - now
            );
            let sleeper = braid::create_task(async move {
                braid::sleep(Duration::MAX).await?;
                f.store(true, Ordering::SeqCst);
                Ok(())
            });
            // A near timer must still fire normally while the huge ones are pending.
            let start = Instant::now();
            braid::sleep(ms(30)).await?;
            let slept = start.elapsed();
            assert!(
                slept < Duration::from_secs(2),
                "a 30 ms sleep took {slept:?}"
            );
            assert!(!sleeper.done());
            sleeper.cancel();
            h.cancel();
            Ok(sleeper.await)
        })
        .unwrap();
    assert!(sleeper_result.unwrap_err().is_cancelled());
    assert!(!fired.load(Ordering::SeqCst), "a Duration::MAX timer fired");
    rt.shutdown(WAIT).unwrap();
}

/// `delay_from_secs` follows asyncio: negative means now, NaN is an error, infinity is
/// `Duration::MAX` (never), ordinary values convert exactly.
#[test]
fn delay_from_secs_maps_python_float_delays() {
    assert_eq!(braid::delay_from_secs(-1.0).unwrap(), Duration::ZERO);
    assert_eq!(braid::delay_from_secs(-0.0).unwrap(), Duration::ZERO);
    assert_eq!(
        braid::delay_from_secs(f64::NEG_INFINITY).unwrap(),
        Duration::ZERO
    );
    assert_eq!(braid::delay_from_secs(0.0).unwrap(), Duration::ZERO);
    assert_eq!(braid::delay_from_secs(0.25).unwrap(), ms(250));
    assert_eq!(braid::delay_from_secs(2.0).unwrap(), Duration::from_secs(2));
    assert_eq!(
        braid::delay_from_secs(f64::INFINITY).unwrap(),
        Duration::MAX
    );
    assert_eq!(braid::delay_from_secs(1e300).unwrap(), Duration::MAX);
    assert!(braid::delay_from_secs(f64::NAN).is_err());
    assert!(braid::delay_from_secs(-f64::NAN).is_err());
}

/// `sleep(Duration::ZERO)` yields: a task made ready before it runs before the sleeper
/// resumes (asyncio's `sleep(0)`), on a worker loop.
#[test]
fn sleep_zero_yields_to_another_ready_task_on_a_worker_loop() {
    // One worker, so "another ready task" can only run by this loop giving up its turn.
    let rt = runtime(1);
    let t = rt
        .event_loop()
        .spawn(async {
            let ran = Arc::new(AtomicBool::new(false));
            let r = ran.clone();
            let other = braid::create_task(async move {
                r.store(true, Ordering::SeqCst);
                Ok(())
            });
            let before = ran.load(Ordering::SeqCst);
            braid::sleep(Duration::ZERO).await?;
            let after = ran.load(Ordering::SeqCst);
            other.await?;
            Ok((before, after))
        })
        .unwrap();
    assert_eq!(rt.run_until_complete(t).unwrap(), (false, true));
    rt.shutdown(WAIT).unwrap();
}

/// `sleep(Duration::ZERO)` in the future driven by `run_until_complete` lets a ready
/// `spawn_local` task and a ready callback run before it resumes.
#[test]
fn sleep_zero_yields_to_ready_work_on_the_host_loop() {
    let rt = runtime(2);
    let (before, after) = rt
        .run_until_complete(async {
            let seen = Rc::new(RefCell::new(Vec::new()));
            let s = seen.clone();
            let _local = braid::spawn_local(async move {
                s.borrow_mut().push("task");
                Ok(())
            });
            let s = seen.clone();
            braid::call_soon(move || s.borrow_mut().push("callback"));
            let before = seen.borrow().len();
            braid::sleep(Duration::ZERO).await?;
            let mut after = seen.borrow().clone();
            after.sort();
            Ok((before, after))
        })
        .unwrap();
    assert_eq!(before, 0);
    assert_eq!(after, ["callback", "task"]);
    rt.shutdown(WAIT).unwrap();
}

/// A `sleep` polled outside any braid loop is an InvalidState error, not a panic or a hang.
#[test]
fn sleep_outside_a_loop_is_invalid_state() {
    let err = futures::executor::block_on(braid::sleep(ms(1))).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidState);
}

/// A timer cancelled by another timer's callback due at the same instant is skipped
/// (CPython `test__run_once` with a handle cancelled after it became ready).
#[test]
fn timer_cancelled_by_an_earlier_timer_with_the_same_deadline_is_skipped() {
    let rt = runtime(2);
    let order = rt
        .run_until_complete(async {
            let order = Rc::new(RefCell::new(Vec::new()));
            let when = braid::time() + ms(10);
            let victim: Rc<RefCell<Option<TimerHandle>>> = Rc::new(RefCell::new(None));
            let (o, v) = (order.clone(), victim.clone());
            braid::call_at(when, move || {
                o.borrow_mut().push("first");
                v.borrow().as_ref().expect("victim scheduled").cancel();
            });
            let o = order.clone();
            *victim.borrow_mut() =
                Some(braid::call_at(when, move || o.borrow_mut().push("victim")));
            let end: Promise<()> = braid::create_future();
            let (o, e) = (order.clone(), end.clone());
            braid::call_at(when + ms(20), move || {
                o.borrow_mut().push("end");
                e.set_result(()).unwrap();
            });
            end.await?;
            let v = order.borrow().clone();
            Ok(v)
        })
        .unwrap();
    assert_eq!(order, ["first", "end"]);
    rt.shutdown(WAIT).unwrap();
}

/// `sleep_until` a deadline in the past returns Ok at once, after yielding once: a task made
/// ready before it runs first (one worker, so only the yield can let it run).
#[test]
fn sleep_until_a_past_deadline_yields_once() {
    let rt = runtime(1);
    let t = rt
        .event_loop()
        .spawn(async {
            let ran = Arc::new(AtomicBool::new(false));
            let r = ran.clone();
            let other = braid::create_task(async move {
                r.store(true, Ordering::SeqCst);
                Ok(())
            });
            let past = Instant::now()
                .checked_sub(Duration::from_secs(1))
                .unwrap_or_else(Instant::now);
            let start = Instant::now();
            braid::sleep_until(past).await?;
            let took = start.elapsed();
            let after = ran.load(Ordering::SeqCst);
            other.await?;
            Ok((after, took))
        })
        .unwrap();
    let (after, took) = rt.run_until_complete(t).unwrap();
    assert!(after, "sleep_until(past) did not yield to the ready task");
    assert!(
        took < Duration::from_secs(1),
        "sleep_until(past) took {took:?}"
    );
    rt.shutdown(WAIT).unwrap();
}

/// Hundreds of sleeps cancelled while pending (which leave dead entries in the shared timer
/// heap) do not delay or lose the live ones: 20 sleeps of 10-48 ms all end on time
/// (within 100 ms of their deadline).
#[test]
fn many_cancelled_sleeps_do_not_delay_live_ones() {
    let rt = runtime(2);
    let lateness = rt
        .run_until_complete(async {
            let doomed: Vec<_> = (0..600)
                .map(|i| {
                    braid::create_task(
                        async move { braid::sleep(Duration::from_secs(60 + i)).await },
                    )
                })
                .collect();
            let live: Vec<_> = (0..20u64)
                .map(|i| {
                    braid::create_task(async move {
                        let due = Instant::now() + ms(10 + 2 * i);
                        braid::sleep_until(due).await?;
                        Ok(Instant::now().duration_since(due))
                    })
                })
                .collect();
            braid::yield_now().await?;
            for t in &doomed {
                t.cancel();
            }
            for t in doomed {
                assert!(t.await.unwrap_err().is_cancelled());
            }
            let mut lateness = Vec::new();
            for t in live {
                lateness.push(t.await?);
            }
            Ok(lateness)
        })
        .unwrap();
    for (i, late) in lateness.iter().enumerate() {
        assert!(
            *late < ms(100),
            "live sleep {i} ended {late:?} late (all: {lateness:?})"
        );
    }
    rt.shutdown(WAIT).unwrap();
}

/// On a worker loop too, no `call_later` / `call_at` timer fires before its `when()`.
#[test]
fn timers_never_fire_early_on_a_worker_loop() {
    let rt = runtime(2);
    let (tx, rx) = std::sync::mpsc::channel();
    rt.event_loops()[1]
        .call_soon_threadsafe(move || {
            let results: Rc<RefCell<Vec<(u64, Instant, Instant)>>> =
                Rc::new(RefCell::new(Vec::new()));
            let delays = [1u64, 2, 3, 5, 8, 13, 21];
            let n = delays.len() * 2;
            for d in delays {
                for use_call_at in [false, true] {
                    let (results, tx) = (results.clone(), tx.clone());
                    let handle: Rc<RefCell<Option<TimerHandle>>> = Rc::new(RefCell::new(None));
                    let h = handle.clone();
                    let cb = move || {
                        let now = braid::time();
                        let when = h.borrow().as_ref().expect("handle stored").when();
                        results.borrow_mut().push((d, when, now));
                        if results.borrow().len() == n {
                            tx.send(results.borrow().clone()).unwrap();
                        }
                    };
                    let t = if use_call_at {
                        braid::call_at(braid::time() + ms(d), cb)
                    } else {
                        braid::call_later(ms(d), cb)
                    };
                    *handle.borrow_mut() = Some(t);
                }
            }
        })
        .unwrap();
    let results = rx.recv_timeout(WAIT).expect("all timers fired");
    assert_eq!(results.len(), 14);
    for (d, when, fired_at) in results {
        assert!(
            fired_at >= when,
            "a {d} ms timer fired {:?} early",
            when.duration_since(fired_at)
        );
    }
    rt.shutdown(WAIT).unwrap();
}

/// A timer cancelled on its loop is dropped there and then (before, it was dropped when the
/// loop was about to sleep). A callback that the timer's destructor schedules then runs at
/// once, on a worker loop and on a host loop alike: nothing else wakes the loop, and it has
/// no timer left to wake it.
#[test]
fn a_callback_scheduled_by_a_cancelled_timers_destructor_runs_without_another_wake() {
    let rt = runtime(1);
    // A worker loop.
    let (tx, rx) = std::sync::mpsc::channel();
    let owner = SchedulesWhenDropped::new(move || {
        let _ = tx.send(());
    });
    rt.event_loop()
        .run_coroutine_threadsafe(async move {
            braid::call_later(Duration::from_secs(3600), move || drop(owner)).cancel();
            Ok(())
        })
        .unwrap()
        .result(Some(WAIT))
        .unwrap();
    rx.recv_timeout(WAIT)
        .expect("the worker loop ran the callback the destructor scheduled");

    // The host loop, inside `run_until_complete`, whose future waits for that callback: a
    // watchdog thread answers false instead if it has not run within `WAIT`.
    let done: Promise<bool> = Promise::new();
    let (stop_watchdog, watchdog_stopped) = std::sync::mpsc::channel::<()>();
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            if watchdog_stopped.recv_timeout(WAIT).is_err() {
                let _ = done.set_result(false);
            }
        })
    };
    let owner = SchedulesWhenDropped::new({
        let done = done.clone();
        move || {
            let _ = done.set_result(true);
        }
    });
    let ran = rt.run_until_complete(async move {
        braid::call_later(Duration::from_secs(3600), move || drop(owner)).cancel();
        done.await
    });
    let _ = stop_watchdog.send(());
    watchdog.join().unwrap();
    assert!(
        ran.unwrap(),
        "the host loop ran the callback the destructor scheduled"
    );
    rt.shutdown(WAIT).unwrap();
}

/// Cancelled `call_later` timers free what their callbacks hold well before their deadlines,
/// though a live timer due earlier keeps them from the top of the heap (asyncio drops a
/// cancelled handle's callback at once; the heap's stale entries are purged by its rule).
#[test]
fn many_cancelled_timers_free_their_callbacks_before_their_deadlines() {
    braid::run(async {
        let held = Arc::new(());
        let keep_alive = braid::call_later(Duration::from_secs(3600), || ());
        let cancelled: Vec<TimerHandle> = (0..1_000)
            .map(|_| {
                let held = held.clone();
                braid::call_later(Duration::from_secs(7200), move || drop(held))
            })
            .collect();
        assert_eq!(Arc::strong_count(&held), 1_001);
        cancelled.iter().for_each(TimerHandle::cancel);
        braid::sleep(Duration::from_millis(1)).await?;
        assert_eq!(
            Arc::strong_count(&held),
            1,
            "the cancelled callbacks were kept"
        );
        assert!(!keep_alive.cancelled());
        keep_alive.cancel();
        Ok(())
    })
    .unwrap();
}

/// One cancelled `call_later` timer gives up what its callback holds at the cancel, though a
/// live timer due earlier keeps it from the top of the heap and it is far from being purged
/// (asyncio's `TimerHandle.cancel()` drops the callback and its arguments at once).
#[test]
fn a_cancelled_timer_drops_its_callback_at_the_cancel() {
    braid::run(async {
        let held = Rc::new(());
        let earlier = braid::call_later(Duration::from_secs(3600), || ());
        let timer = braid::call_later(Duration::from_secs(7200), {
            let held = held.clone();
            move || drop(held)
        });
        assert_eq!(Rc::strong_count(&held), 2);
        timer.cancel();
        assert_eq!(
            Rc::strong_count(&held),
            1,
            "the callback outlived its cancel"
        );
        timer.cancel();
        assert!(timer.cancelled());
        earlier.cancel();
        Ok(())
    })
    .unwrap();
}

/// A timer cancelled from another thread has its callback dropped soon after by its own loop
/// (the callback is not `Send`, so only that loop may drop it), on a host loop and on a
/// worker loop, long before its deadline and with a live timer due earlier. Before, the
/// callback stayed until a purge or its deadline, an hour away here, and `wait_for` times out.
#[test]
fn a_timer_cancelled_from_another_thread_drops_its_callback_on_its_loop() {
    /// Schedules a timer holding a probe of where it is dropped behind a live one, cancels it from a new
    /// thread, and returns the thread that dropped its callback and this loop's thread.
    async fn cancel_from_another_thread(
    ) -> braid::Result<(std::thread::ThreadId, std::thread::ThreadId)> {
        let dropped_on: Promise<std::thread::ThreadId> = Promise::new();
        let earlier = braid::call_later(Duration::from_secs(3600), || ());
        let probe = {
            let dropped_on = dropped_on.clone();
            OnDrop(Some(move || {
                let _ = dropped_on.set_result(std::thread::current().id());
            }))
        };
        let timer = braid::call_later(Duration::from_secs(7200), move || drop(probe));
        std::thread::spawn(move || timer.cancel()).join().unwrap();
        let dropped_on = braid::wait_for(async { dropped_on.await }, Some(WAIT)).await?;
        assert!(!earlier.cancelled(), "the live timer stays scheduled");
        earlier.cancel();
        Ok((dropped_on, std::thread::current().id()))
    }

    let rt = runtime(1);
    let (dropped_on, loop_thread) = rt.run_until_complete(cancel_from_another_thread()).unwrap();
    assert_eq!(
        dropped_on, loop_thread,
        "a host loop's callback dropped elsewhere"
    );
    let (dropped_on, loop_thread) = rt
        .event_loop()
        .run_coroutine_threadsafe(cancel_from_another_thread())
        .unwrap()
        .result(Some(WAIT))
        .unwrap();
    assert_eq!(
        dropped_on, loop_thread,
        "a worker loop's callback dropped elsewhere"
    );
    rt.shutdown(WAIT).unwrap();
}

/// Runs `action` when dropped.
struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(action) = self.0.take() {
            action();
        }
    }
}

/// The callback of a timer cancelled from another thread is dropped by its loop as it drains
/// its inbox; a destructor that then sends a callback with `call_soon_threadsafe` and queues
/// one with `call_soon` (which drains the inbox again) has both run, in that order. The drop
/// ran inside the inbox buffer's borrow: the second drain panicked on it, and the `call_soon`
/// was lost.
#[test]
fn a_timer_cancelled_from_another_thread_may_schedule_callbacks_from_its_destructor() {
    let rt = runtime(1);
    let order = rt
        .run_until_complete(async {
            let order = Arc::new(std::sync::Mutex::new(Vec::new()));
            let both_ran: Promise<()> = Promise::new();
            let destructor = OnDrop(Some({
                let (order, both_ran) = (order.clone(), both_ran.clone());
                move || {
                    let sent = order.clone();
                    braid::get_running_loop()
                        .call_soon_threadsafe(move || sent.lock().unwrap().push("threadsafe"))
                        .unwrap();
                    braid::call_soon(move || {
                        order.lock().unwrap().push("call_soon");
                        let _ = both_ran.set_result(());
                    });
                }
            }));
            let earlier = braid::call_later(Duration::from_secs(3600), || ());
            let timer = braid::call_later(Duration::from_secs(7200), move || drop(destructor));
            std::thread::spawn(move || timer.cancel()).join().unwrap();
            braid::wait_for(async { both_ran.await }, Some(WAIT)).await?;
            earlier.cancel();
            let order = order.lock().unwrap().clone();
            Ok(order)
        })
        .unwrap();
    assert_eq!(order, ["threadsafe", "call_soon"]);
    rt.shutdown(WAIT).unwrap();
}

/// Polls `fut` once (registering what it waits on) and hands it back.
async fn polled_once<F: std::future::Future + Unpin>(mut fut: F) -> F {
    std::future::poll_fn(|cx| {
        let _ = std::pin::Pin::new(&mut fut).poll(cx);
        std::task::Poll::Ready(())
    })
    .await;
    fut
}

/// A sleep whose timer went into a runtime that has since shut down, awaited in another
/// runtime, fires at its deadline there; awaited off the loops, it fails as a sleep outside
/// a loop does. It waited in the dead runtime's timer heap, which no loop fires any more,
/// for good.
#[test]
fn a_sleep_outliving_the_runtime_it_first_waited_in_moves_or_fails() {
    let sleep_in = |delay| {
        braid::run(async move { Ok(polled_once(Box::pin(braid::sleep(delay))).await) }).unwrap()
    };
    let moved = sleep_in(ms(200));
    let started = Instant::now();
    braid::run(async move { braid::wait_for(moved, Some(WAIT)).await }).unwrap();
    assert!(started.elapsed() < WAIT, "took {:?}", started.elapsed());

    let stranded = sleep_in(ms(50));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(futures::executor::block_on(stranded)));
    let outcome = rx.recv_timeout(WAIT).expect("it settled");
    assert_eq!(outcome.unwrap_err().kind(), ErrorKind::InvalidState);
}

/// A task of another runtime already waiting on a sleep whose timer is in a runtime that
/// then shuts down is woken at that shutdown, moves the timer to its own runtime and wakes at
/// the deadline. It went on waiting in the dead runtime's heap, for good.
#[test]
fn a_sleep_waiting_when_its_runtime_shuts_down_moves_with_its_task() {
    let first = runtime(1);
    let delay = ms(500);
    let sleep = first
        .run_until_complete(async move { Ok(polled_once(Box::pin(braid::sleep(delay))).await) })
        .unwrap();
    let started = Instant::now();
    let second = runtime(1);
    second
        .run_until_complete(async move {
            let waiting = Arc::new(braid::Event::new());
            let sleeper = braid::create_task({
                let waiting = waiting.clone();
                async move {
                    waiting.set();
                    braid::wait_for(sleep, Some(WAIT)).await
                }
            });
            // The sleeper runs on this host loop: once this wakes, its step is over and it
            // waits in the first runtime's heap.
            waiting.wait().await?;
            braid::to_thread(move || first.shutdown(WAIT)).await??;
            sleeper.await
        })
        .unwrap();
    assert!(
        started.elapsed() >= delay,
        "woke early, at {:?}",
        started.elapsed()
    );
    second.shutdown(WAIT).unwrap();
}

const HUGE_LINGER_SCENARIO: &str = "BRAID_TEST_HUGE_LINGER_SCENARIO";

/// A sleep awaited through `run_coroutine_threadsafe` takes about its delay whatever
/// `BRAID_LINGER_US` says: the loops' linger before sleeping is capped (at 1 ms) and ends at
/// the next timer's deadline. With 3 000 000 the 10 ms sleep took 3 s, every time (no loop
/// fired timers while all of them lingered), and with `u64::MAX` it never ended. Run again in
/// a process of its own, where the variable is read.
#[test]
fn a_huge_linger_setting_delays_no_timer() {
    if let Some(linger) = std::env::var_os(HUGE_LINGER_SCENARIO) {
        assert_eq!(std::env::var_os("BRAID_LINGER_US"), Some(linger));
        let rt = runtime(2);
        let lp = rt.event_loop();
        for _ in 0..3 {
            let start = Instant::now();
            let slept = lp
                .run_coroutine_threadsafe(async {
                    braid::sleep(Duration::from_millis(10)).await?;
                    Ok(())
                })
                .unwrap();
            slept.result(Some(WAIT)).unwrap();
            let took = start.elapsed();
            // Generous: a loaded machine is slow, but not by seconds.
            assert!(
                took < Duration::from_millis(1500),
                "the sleep took {took:?}"
            );
        }
        rt.shutdown(WAIT).unwrap();
        println!("SLEPT ON TIME");
        return;
    }
    for linger in ["3000000", &u64::MAX.to_string()] {
        let (_, text) = common::rerun_in_child(
            "a_huge_linger_setting_delays_no_timer",
            &[(HUGE_LINGER_SCENARIO, linger), ("BRAID_LINGER_US", linger)],
        );
        assert!(
            text.contains("SLEPT ON TIME"),
            "BRAID_LINGER_US={linger}: {text}"
        );
    }
}
