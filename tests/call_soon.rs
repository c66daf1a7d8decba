//! `call_soon` and `call_soon_threadsafe`: FIFO order on one loop (also across the two entry
//! points, following happens-before), cancelled `CallbackHandle`s, how fast a cross-thread
//! submission wakes an idle loop, and panics in callbacks reaching the loop's exception
//! handler while the loop keeps running. Scenarios follow CPython's `test_asyncio`:
//! `test_base_events.py` (`test_call_soon`, `test__run_once` skipping cancelled handles,
//! `test_default_exc_handler_callback`, `test_set_exc_handler_custom`) and `test_events.py`
//! (`test_call_soon_threadsafe`, `test_call_soon_threadsafe_same_thread`).

use braid::{ErrorKind, EventLoop, LoopState, Promise};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::{eventually, runtime, serial, WAIT};

/// call_soon callbacks run in the order they were scheduled, on the host loop of
/// `run_until_complete` (CPython `test_call_soon`).
#[test]
fn call_soon_runs_callbacks_in_fifo_order_on_the_host_loop() {
    let rt = runtime(2);
    let order = rt
        .run_until_complete(async {
            let order = Rc::new(RefCell::new(Vec::new()));
            let all_ran: Promise<()> = braid::create_future();
            for i in 0..50 {
                let order = order.clone();
                let all_ran = all_ran.clone();
                braid::call_soon(move || {
                    order.borrow_mut().push(i);
                    if i == 49 {
                        all_ran.set_result(()).unwrap();
                    }
                });
            }
            all_ran.await?;
            let v = order.borrow().clone();
            Ok(v)
        })
        .unwrap();
    assert_eq!(order, (0..50).collect::<Vec<_>>());
    rt.shutdown(WAIT).unwrap();
}

/// call_soon callbacks scheduled from a callback on a worker loop run there, in FIFO order.
#[test]
fn call_soon_runs_callbacks_in_fifo_order_on_a_worker_loop() {
    let rt = runtime(2);
    let (tx, rx) = mpsc::channel();
    let lp = rt.event_loops()[1].clone();
    lp.call_soon_threadsafe(move || {
        let loop_thread = std::thread::current().id();
        let order = Rc::new(RefCell::new(Vec::new()));
        for i in 0..50 {
            let order = order.clone();
            let tx = tx.clone();
            braid::call_soon(move || {
                order.borrow_mut().push((i, std::thread::current().id()));
                if i == 49 {
                    tx.send((loop_thread, order.borrow().clone())).unwrap();
                }
            });
        }
    })
    .unwrap();
    let (loop_thread, order) = rx.recv_timeout(WAIT).expect("the callbacks ran");
    let expected: Vec<_> = (0..50).map(|i| (i, loop_thread)).collect();
    assert_eq!(order, expected);
    rt.shutdown(WAIT).unwrap();
}

/// A callback handed to this loop with `call_soon_threadsafe` from a thread we then joined
/// runs before a `call_soon` made afterwards: FIFO follows happens-before.
#[test]
fn call_soon_threadsafe_that_happened_before_call_soon_runs_first() {
    let rt = runtime(2);
    let rounds = rt
        .run_until_complete(async {
            let mut rounds = Vec::new();
            for round in 0..100 {
                let order = Arc::new(Mutex::new(Vec::new()));
                let here = braid::get_running_loop();
                let o = order.clone();
                std::thread::spawn(move || {
                    here.call_soon_threadsafe(move || o.lock().unwrap().push("threadsafe"))
                        .unwrap();
                })
                .join()
                .unwrap();
                let done: Promise<()> = braid::create_future();
                let (o, d) = (order.clone(), done.clone());
                braid::call_soon(move || {
                    o.lock().unwrap().push("soon");
                    d.set_result(()).unwrap();
                });
                done.await?;
                let seen = order.lock().unwrap().clone();
                rounds.push((round, seen));
            }
            Ok(rounds)
        })
        .unwrap();
    for (round, seen) in rounds {
        assert_eq!(seen, ["threadsafe", "soon"], "round {round}");
    }
    rt.shutdown(WAIT).unwrap();
}

/// The same happens-before rule on a worker loop: a threadsafe submission made (and joined)
/// from inside a callback of that loop runs before a later `call_soon` there.
#[test]
fn call_soon_threadsafe_before_call_soon_on_a_worker_loop() {
    let rt = runtime(2);
    let (tx, rx) = mpsc::channel();
    rt.event_loops()[0]
        .call_soon_threadsafe(move || {
            let order = Arc::new(Mutex::new(Vec::new()));
            let here = braid::get_running_loop();
            let o = order.clone();
            std::thread::spawn(move || {
                here.call_soon_threadsafe(move || o.lock().unwrap().push("threadsafe"))
                    .unwrap();
            })
            .join()
            .unwrap();
            let o = order.clone();
            braid::call_soon(move || {
                o.lock().unwrap().push("soon");
                tx.send(o.lock().unwrap().clone()).unwrap();
            });
        })
        .unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), ["threadsafe", "soon"]);
    rt.shutdown(WAIT).unwrap();
}

/// A `call_soon` callback cancelled through its handle never runs; the ones around it do
/// (CPython `test__run_once` skips cancelled handles).
#[test]
fn cancelled_call_soon_handle_never_runs() {
    let rt = runtime(2);
    let (ran, handle_cancelled, order) = rt
        .run_until_complete(async {
            let ran = Rc::new(RefCell::new(false));
            let order = Rc::new(RefCell::new(Vec::new()));
            let o = order.clone();
            braid::call_soon(move || o.borrow_mut().push("before"));
            let r = ran.clone();
            let handle = braid::call_soon(move || *r.borrow_mut() = true);
            assert!(!handle.cancelled());
            handle.cancel();
            let done: Promise<()> = braid::create_future();
            let (o, d) = (order.clone(), done.clone());
            braid::call_soon(move || {
                o.borrow_mut().push("after");
                d.set_result(()).unwrap();
            });
            done.await?;
            // One more full loop iteration, so a wrongly kept callback would have had its turn.
            braid::yield_now().await?;
            let order = order.borrow().clone();
            let ran = *ran.borrow();
            Ok((ran, handle.cancelled(), order))
        })
        .unwrap();
    assert!(!ran, "a cancelled callback ran");
    assert!(handle_cancelled);
    assert_eq!(order, ["before", "after"]);
    rt.shutdown(WAIT).unwrap();
}

/// A `call_soon_threadsafe` callback cancelled while its loop is busy never runs; the one
/// submitted after it does.
#[test]
fn cancelled_call_soon_threadsafe_handle_never_runs() {
    let rt = runtime(2);
    let lp = rt.event_loops()[0].clone();
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    let (busy_tx, busy_rx) = mpsc::channel();
    // Keep the loop busy so the next submission cannot run before we cancel it.
    lp.call_soon_threadsafe(move || {
        busy_tx.send(()).unwrap();
        gate_rx.recv_timeout(WAIT).unwrap();
    })
    .unwrap();
    busy_rx.recv_timeout(WAIT).unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let handle = lp
        .call_soon_threadsafe(move || r.store(true, Ordering::SeqCst))
        .unwrap();
    handle.cancel();
    assert!(handle.cancelled());
    let (done_tx, done_rx) = mpsc::channel();
    lp.call_soon_threadsafe(move || done_tx.send(()).unwrap())
        .unwrap();
    gate_tx.send(()).unwrap();
    done_rx
        .recv_timeout(WAIT)
        .expect("the callback after the cancelled one ran");
    assert!(!ran.load(Ordering::SeqCst), "a cancelled callback ran");
    assert_eq!(
        Arc::strong_count(&ran),
        1,
        "the skipped closure was dropped, though its handle lives"
    );
    drop(handle);
    rt.shutdown(WAIT).unwrap();
}

/// Waits until `lp` reports `Idle`, then lets it stay idle a while (the scenario needs a loop
/// that has been asleep, not one that just finished work).
fn let_idle(lp: &EventLoop) {
    assert!(
        eventually(WAIT, || lp.state() == LoopState::Idle),
        "loop {} never went idle",
        lp.id()
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        lp.state(),
        LoopState::Idle,
        "loop {} woke up by itself",
        lp.id()
    );
}

/// `call_soon_threadsafe` on a loop that has been idle runs the callback within 50 ms of
/// the submission (spec bound), on every loop, several times over.
#[test]
fn call_soon_threadsafe_wakes_an_idle_loop_within_50ms() {
    // Not beside the tests below that load both cores: this one measures a latency.
    let _serial = serial();
    let rt = runtime(2);
    let mut latencies = Vec::new();
    for round in 0..3 {
        for lp in rt.event_loops() {
            let_idle(&lp);
            let (tx, rx) = mpsc::channel();
            let submitted = Instant::now();
            lp.call_soon_threadsafe(move || tx.send(Instant::now()).unwrap())
                .unwrap();
            let ran_at = rx.recv_timeout(WAIT).expect("the callback ran");
            latencies.push((round, lp.id(), ran_at.duration_since(submitted)));
        }
    }
    for (round, id, latency) in &latencies {
        assert!(
            *latency < Duration::from_millis(50),
            "round {round}: loop {id} took {latency:?} to run a threadsafe callback (all: {latencies:?})"
        );
    }
    rt.shutdown(WAIT).unwrap();
}

/// A panic in a callback goes to the loop's exception handler (as a Panicked error carrying
/// the panic text) and the loop keeps running the callbacks queued after it
/// (CPython `test_default_exc_handler_callback` / `test_set_exc_handler_custom`).
#[test]
fn panic_in_callback_reaches_exception_handler_and_loop_keeps_running() {
    let rt = runtime(2);
    let lp = rt.event_loops()[0].clone();
    let (report_tx, report_rx) = mpsc::channel();
    let report_tx = Mutex::new(report_tx);
    lp.set_exception_handler(move |ctx| {
        let err = ctx
            .error
            .as_ref()
            .map(|e| (e.kind(), e.message().map(str::to_owned)));
        report_tx
            .lock()
            .unwrap()
            .send((ctx.message.clone(), err))
            .unwrap();
    });
    let (after_tx, after_rx) = mpsc::channel();
    let after_tx2 = after_tx.clone();
    lp.call_soon_threadsafe(|| panic!("boom from a threadsafe callback"))
        .unwrap();
    lp.call_soon_threadsafe(move || after_tx.send("threadsafe after").unwrap())
        .unwrap();
    // Also from call_soon on the loop itself.
    lp.call_soon_threadsafe(move || {
        braid::call_soon(|| panic!("boom from call_soon"));
        braid::call_soon(move || after_tx2.send("call_soon after").unwrap());
    })
    .unwrap();

    let (message, err) = report_rx.recv_timeout(WAIT).expect("handler called");
    assert!(message.starts_with("Exception in callback"), "{message}");
    assert_eq!(
        err,
        Some((
            ErrorKind::Panicked,
            Some("boom from a threadsafe callback".to_owned())
        ))
    );
    assert_eq!(after_rx.recv_timeout(WAIT).unwrap(), "threadsafe after");

    let (message, err) = report_rx.recv_timeout(WAIT).expect("handler called again");
    assert!(message.starts_with("Exception in callback"), "{message}");
    assert_eq!(
        err,
        Some((ErrorKind::Panicked, Some("boom from call_soon".to_owned())))
    );
    assert_eq!(after_rx.recv_timeout(WAIT).unwrap(), "call_soon after");

    // And the loop still runs tasks.
    let t = lp.spawn(async { Ok(7) }).unwrap();
    assert_eq!(rt.run_until_complete(t).unwrap(), 7);
    rt.shutdown(WAIT).unwrap();
}

/// A callback cancelled by an earlier callback of the same batch is skipped (CPython
/// `test__run_once` skips handles cancelled after they were queued).
#[test]
fn callback_cancelled_by_an_earlier_callback_is_skipped() {
    let rt = runtime(2);
    let order = rt
        .run_until_complete(async {
            let order = Rc::new(RefCell::new(Vec::new()));
            let victim: Rc<RefCell<Option<braid::CallbackHandle>>> = Rc::new(RefCell::new(None));
            let (o, v) = (order.clone(), victim.clone());
            braid::call_soon(move || {
                o.borrow_mut().push("first");
                v.borrow().as_ref().expect("victim scheduled").cancel();
            });
            let o = order.clone();
            *victim.borrow_mut() = Some(braid::call_soon(move || o.borrow_mut().push("victim")));
            let done: Promise<()> = braid::create_future();
            let (o, d) = (order.clone(), done.clone());
            braid::call_soon(move || {
                o.borrow_mut().push("last");
                d.set_result(()).unwrap();
            });
            done.await?;
            let v = order.borrow().clone();
            Ok(v)
        })
        .unwrap();
    assert_eq!(order, ["first", "last"]);
    rt.shutdown(WAIT).unwrap();
}

/// Two producer threads submitting 2000 callbacks each to one loop: every callback runs
/// once, and each producer's callbacks run in the order it submitted them.
#[test]
fn call_soon_threadsafe_keeps_each_producers_order() {
    // Not beside the latency test: this loads both cores.
    let _serial = serial();
    const N: usize = 2000;
    let rt = runtime(2);
    let lp = rt.event_loops()[0].clone();
    let seen = Arc::new(Mutex::new(Vec::with_capacity(2 * N)));
    let producers: Vec<_> = (0..2)
        .map(|p| {
            let (lp, seen) = (lp.clone(), seen.clone());
            std::thread::spawn(move || {
                for i in 0..N {
                    let seen = seen.clone();
                    lp.call_soon_threadsafe(move || seen.lock().unwrap().push((p, i)))
                        .unwrap();
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    let (tx, rx) = mpsc::channel();
    lp.call_soon_threadsafe(move || tx.send(()).unwrap())
        .unwrap();
    rx.recv_timeout(WAIT).unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2 * N);
    for p in 0..2 {
        let mine: Vec<usize> = seen
            .iter()
            .filter(|(q, _)| *q == p)
            .map(|(_, i)| *i)
            .collect();
        assert_eq!(mine, (0..N).collect::<Vec<_>>(), "producer {p}'s order");
    }
    rt.shutdown(WAIT).unwrap();
}

/// Ping-pong with a loop that goes back to sleep between rounds: 2000 rounds of "submit one
/// callback, wait for it" never lose a wake-up (each round bounded by 2 s).
#[test]
fn call_soon_threadsafe_never_loses_a_wakeup() {
    // Not beside the latency test: this loads both cores.
    let _serial = serial();
    let rt = runtime(2);
    let loops = rt.event_loops();
    let (tx, rx) = mpsc::channel();
    for round in 0..2000usize {
        let lp = &loops[round % 2];
        let tx = tx.clone();
        lp.call_soon_threadsafe(move || tx.send(round).unwrap())
            .unwrap();
        match rx.recv_timeout(Duration::from_secs(2)) {
            Ok(r) => assert_eq!(r, round),
            Err(_) => panic!(
                "round {round}: loop {} never ran the callback (lost wake-up)",
                lp.id()
            ),
        }
    }
    rt.shutdown(WAIT).unwrap();
}
