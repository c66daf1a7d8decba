//! `Promise<T>`, asyncio's `Future`: its state machine (result, exception, cancel,
//! InvalidState on misuse), done callbacks (scheduled on the creating loop, never run
//! synchronously, in registration order, removable), awaiting from tasks, cancellation
//! passed from an awaiting task to the promise, and promises settled from foreign threads.
//! Scenarios follow CPython's `test_asyncio/test_futures.py` (`test_result`,
//! `test_exception`, `test_cancel` and their `InvalidStateError` checks,
//! `test_callbacks_invoked_on_set_result`, `test_remove_done_callback`) and
//! `test_tasks.py` (`test_cancel_inner_future`).

use braid::{Error, ErrorKind, Promise};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

mod common;
use common::{runtime, WAIT};

/// `set_result` on a done promise is an InvalidState error and keeps the first value; so
/// are `set_exception` after a result and `set_result` after cancel (CPython `test_result`'s
/// `InvalidStateError` checks).
#[test]
fn settling_a_done_promise_is_invalid_state() {
    let p: Promise<u32> = Promise::new();
    assert!(!p.done());
    p.set_result(1).unwrap();
    assert!(p.done());
    assert_eq!(p.set_result(2).unwrap_err().kind(), ErrorKind::InvalidState);
    assert_eq!(
        p.set_exception(Error::msg("late")).unwrap_err().kind(),
        ErrorKind::InvalidState
    );
    assert_eq!(p.result().unwrap(), 1);

    let c: Promise<u32> = Promise::new();
    assert!(c.cancel());
    assert_eq!(c.set_result(3).unwrap_err().kind(), ErrorKind::InvalidState);
    assert!(c.cancelled());
}

/// `set_exception` settles the promise with that error: `result()` and awaiting both give it,
/// and it is not "cancelled" (CPython `test_exception`).
#[test]
fn set_exception_settles_with_the_error() {
    let p: Promise<u32> = Promise::new();
    p.set_exception(Error::new(ErrorKind::Io, "disk on fire"))
        .unwrap();
    assert!(p.done());
    assert!(!p.cancelled());
    let err = p.result().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert_eq!(err.message(), Some("disk on fire"));
    let rt = runtime(1);
    let awaited = rt.run_until_complete(async move { p.await }).unwrap_err();
    assert_eq!(awaited.kind(), ErrorKind::Io);
    assert_eq!(awaited.message(), Some("disk on fire"));
    rt.shutdown(WAIT).unwrap();
}

/// `set_exception` with a Cancelled error fails the promise with that error; it does not
/// cancel it: `cancelled()` stays false and `cancel()` returns false, while `result()` and
/// awaiting give the Cancelled error with its message, as CPython 3.11's
/// `f.set_exception(CancelledError("m"))` gives `cancelled()` False, and `result()` and
/// `await` raise `CancelledError('m')`.
#[test]
fn set_exception_of_a_cancelled_error_fails_the_promise_without_cancelling_it() {
    let p: Promise<u32> = Promise::new();
    p.set_exception(Error::cancelled(Some("m".to_owned())))
        .unwrap();
    assert!(p.done());
    assert!(!p.cancelled(), "set_exception cancelled the promise");
    assert!(!p.cancel(), "cancel of a done promise");
    assert!(format!("{p:?}").contains("failed"), "{p:?}");
    let err = p.result().unwrap_err();
    assert!(err.is_cancelled());
    assert_eq!(err.message(), Some("m"));
    let rt = runtime(1);
    let awaited = rt.run_until_complete(async move { p.await }).unwrap_err();
    assert!(awaited.is_cancelled());
    assert_eq!(awaited.message(), Some("m"));
    rt.shutdown(WAIT).unwrap();
}

/// `cancel()` of a pending promise returns true and makes it cancelled; of a done promise
/// (result, error or already cancelled) it returns false and changes nothing (CPython
/// `test_cancel`).
#[test]
fn cancel_of_a_done_promise_returns_false() {
    let pending: Promise<u8> = Promise::new();
    assert!(!pending.cancelled());
    assert!(pending.cancel());
    assert!(pending.cancelled() && pending.done());
    assert!(pending.result().unwrap_err().is_cancelled());
    assert!(!pending.cancel(), "cancel of a cancelled promise");

    let with_value: Promise<u8> = Promise::new();
    with_value.set_result(5).unwrap();
    assert!(!with_value.cancel());
    assert!(!with_value.cancelled());
    assert_eq!(with_value.result().unwrap(), 5);

    let with_error: Promise<u8> = Promise::new();
    with_error.set_exception(Error::msg("no")).unwrap();
    assert!(!with_error.cancel());
    assert!(!with_error.cancelled());
    assert_eq!(with_error.result().unwrap_err().kind(), ErrorKind::Other);
}

/// `result()` before the promise is done is an InvalidState error (CPython `test_result`'s
/// `InvalidStateError` before set_result).
#[test]
fn result_before_done_is_invalid_state() {
    let p: Promise<String> = Promise::new();
    assert_eq!(p.result().unwrap_err().kind(), ErrorKind::InvalidState);
    p.set_result("x".to_owned()).unwrap();
    assert_eq!(p.result().unwrap(), "x");
}

/// Done callbacks are scheduled (not run inside `set_result`), run in the order they were
/// added, on the loop that created the promise; one added after completion is scheduled too
/// (CPython `test_callbacks_invoked_on_set_result`, `test_callbacks_remove_first_callback`).
#[test]
fn done_callbacks_are_scheduled_in_registration_order() {
    let rt = runtime(2);
    let (ran_sync, order, late_sync, main_thread) = rt
        .run_until_complete(async {
            let main_thread = thread::current().id();
            let order = Arc::new(Mutex::new(Vec::new()));
            let p: Promise<u32> = braid::create_future();
            let all: Promise<()> = braid::create_future();
            for i in 0..5 {
                let (order, all) = (order.clone(), all.clone());
                p.add_done_callback(move |p| {
                    order
                        .lock()
                        .unwrap()
                        .push((i, p.result().unwrap(), thread::current().id()));
                    if i == 4 {
                        all.set_result(()).unwrap();
                    }
                });
            }
            p.set_result(7)?;
            let ran_sync = order.lock().unwrap().len();
            all.await?;
            // A callback added once the promise is done is scheduled as well.
            let late: Promise<()> = braid::create_future();
            let l = late.clone();
            let late_ran = Arc::new(Mutex::new(false));
            let lr = late_ran.clone();
            p.add_done_callback(move |_| {
                *lr.lock().unwrap() = true;
                l.set_result(()).unwrap();
            });
            let late_sync = *late_ran.lock().unwrap();
            late.await?;
            let order = order.lock().unwrap().clone();
            Ok((ran_sync, order, late_sync, main_thread))
        })
        .unwrap();
    assert_eq!(
        ran_sync, 0,
        "done callbacks ran synchronously inside set_result"
    );
    assert!(
        !late_sync,
        "a done callback added to a done promise ran synchronously"
    );
    let expected: Vec<_> = (0..5).map(|i| (i, 7, main_thread)).collect();
    assert_eq!(order, expected);
    rt.shutdown(WAIT).unwrap();
}

/// A promise created on a worker loop and completed from a foreign thread runs its done
/// callbacks on that worker loop, in order.
#[test]
fn done_callbacks_run_on_the_creating_loop_when_set_from_another_thread() {
    let rt = runtime(2);
    let (tx, rx) = mpsc::channel();
    let lp = rt.event_loops()[1].clone();
    lp.call_soon_threadsafe(move || {
        let loop_thread = thread::current().id();
        let p: Promise<&'static str> = braid::create_future();
        let order = Arc::new(Mutex::new(Vec::new()));
        for i in 0..3 {
            let order = order.clone();
            let tx = tx.clone();
            p.add_done_callback(move |p| {
                order.lock().unwrap().push((i, thread::current().id()));
                if i == 2 {
                    tx.send((
                        loop_thread,
                        p.result().unwrap(),
                        order.lock().unwrap().clone(),
                    ))
                    .unwrap();
                }
            });
        }
        thread::spawn(move || p.set_result("from a thread").unwrap());
    })
    .unwrap();
    let (loop_thread, value, order) = rx.recv_timeout(WAIT).expect("done callbacks ran");
    assert_eq!(value, "from a thread");
    assert_eq!(order, (0..3).map(|i| (i, loop_thread)).collect::<Vec<_>>());
    rt.shutdown(WAIT).unwrap();
}

/// `remove_done_callback` removes a callback not yet scheduled and returns how many it
/// removed (1, then 0 for the same id); only the callbacks left run (CPython
/// `test_remove_done_callback`).
#[test]
fn remove_done_callback_returns_how_many_it_removed() {
    let rt = runtime(2);
    let (removed, removed_again, ran) = rt
        .run_until_complete(async {
            let ran = Arc::new(Mutex::new(Vec::new()));
            let p: Promise<()> = braid::create_future();
            let all: Promise<()> = braid::create_future();
            let ids: Vec<_> = (0..4)
                .map(|i| {
                    let (ran, all) = (ran.clone(), all.clone());
                    p.add_done_callback(move |_| {
                        ran.lock().unwrap().push(i);
                        if i == 3 {
                            all.set_result(()).unwrap();
                        }
                    })
                })
                .collect();
            let removed = p.remove_done_callback(ids[1]) + p.remove_done_callback(ids[2]);
            let removed_again = p.remove_done_callback(ids[1]);
            p.set_result(())?;
            all.await?;
            braid::yield_now().await?;
            let ran = ran.lock().unwrap().clone();
            Ok((removed, removed_again, ran))
        })
        .unwrap();
    assert_eq!(removed, 2);
    assert_eq!(removed_again, 0);
    assert_eq!(ran, [0, 3]);
    rt.shutdown(WAIT).unwrap();
}

/// A task awaiting a promise gets its value once another task sets it.
#[test]
fn a_task_awaits_a_promise() {
    let rt = runtime(2);
    let value = rt
        .run_until_complete(async {
            let p: Promise<Vec<u8>> = braid::create_future();
            let waiter = {
                let p = p.clone();
                braid::create_task(async move { Ok(p.await?.len()) })
            };
            let setter = {
                let p = p.clone();
                braid::create_task(async move {
                    braid::sleep(Duration::from_millis(5)).await?;
                    p.set_result(vec![1, 2, 3])
                })
            };
            setter.await?;
            waiter.await
        })
        .unwrap();
    assert_eq!(value, 3);
    rt.shutdown(WAIT).unwrap();
}

/// Cancelling a task that awaits a promise cancels the promise too, with the cancel
/// message (CPython `test_cancel_inner_future`).
#[test]
fn cancelling_a_task_awaiting_a_promise_cancels_the_promise() {
    let rt = runtime(2);
    let (task_err, promise_cancelled, promise_err) = rt
        .run_until_complete(async {
            let p: Promise<u32> = braid::create_future();
            let awaiting: Promise<()> = braid::create_future();
            let (pc, a) = (p.clone(), awaiting.clone());
            let t = braid::create_task(async move {
                a.set_result(())?;
                pc.await
            });
            awaiting.await?;
            assert!(t.cancel_with("stop waiting"));
            let task_err = t.await.unwrap_err();
            Ok((task_err, p.cancelled(), p.result().unwrap_err()))
        })
        .unwrap();
    assert!(task_err.is_cancelled());
    assert!(promise_cancelled, "the awaited promise was not cancelled");
    assert!(promise_err.is_cancelled());
    assert_eq!(promise_err.message(), Some("stop waiting"));
    rt.shutdown(WAIT).unwrap();
}

/// A promise set from a foreign `std::thread` wakes the task (and the `run_until_complete`
/// future) awaiting it.
#[test]
fn a_promise_set_from_a_foreign_thread_wakes_the_waiter() {
    let rt = runtime(2);
    let (from_task, from_main) = rt
        .run_until_complete(async {
            let for_task: Promise<u64> = braid::create_future();
            let for_main: Promise<u64> = braid::create_future();
            let waiting: Promise<()> = braid::create_future();
            let (p, w) = (for_task.clone(), waiting.clone());
            let t = braid::create_task(async move {
                w.set_result(())?;
                p.await
            });
            waiting.await?;
            let (a, b) = (for_task.clone(), for_main.clone());
            let setter = thread::spawn(move || {
                a.set_result(11).unwrap();
                b.set_result(22).unwrap();
            });
            let from_main = for_main.await?;
            let from_task = t.await?;
            setter.join().unwrap();
            Ok((from_task, from_main))
        })
        .unwrap();
    assert_eq!((from_task, from_main), (11, 22));
    rt.shutdown(WAIT).unwrap();
}

/// Clones of a promise share one state: a result set through one is seen by all.
#[test]
fn promise_clones_share_state() {
    let a: Promise<u8> = Promise::new();
    let b = a.clone();
    b.set_result(9).unwrap();
    assert!(a.done());
    assert_eq!(a.result().unwrap(), 9);
    assert_eq!(a.set_result(1).unwrap_err().kind(), ErrorKind::InvalidState);
}

/// Several tasks awaiting one promise all get its value (a Promise may be awaited many
/// times, as an asyncio Future may).
#[test]
fn many_waiters_all_get_the_value() {
    let rt = runtime(2);
    let values = rt
        .run_until_complete(async {
            let p: Promise<u32> = braid::create_future();
            let waiters: Vec<_> = (0..6)
                .map(|_| {
                    let p = p.clone();
                    braid::create_task(async move { p.await })
                })
                .collect();
            braid::yield_now().await?;
            p.set_result(5)?;
            let mut values = Vec::new();
            for w in waiters {
                values.push(w.await?);
            }
            values.push(p.clone().await?);
            Ok(values)
        })
        .unwrap();
    assert_eq!(values, [5; 7]);
    rt.shutdown(WAIT).unwrap();
}

/// A task that stopped awaiting a promise (its `PromiseFuture` polled once, then dropped)
/// no longer passes its cancellation on to that promise.
#[test]
fn a_dropped_promise_await_does_not_receive_the_tasks_cancellation() {
    use std::future::{poll_fn, Future, IntoFuture};
    use std::pin::Pin;
    use std::task::Poll;
    let rt = runtime(2);
    let (task_err, promise_cancelled) = rt
        .run_until_complete(async {
            let p: Promise<u32> = braid::create_future();
            let sleeping: Promise<()> = braid::create_future();
            let (pc, s) = (p.clone(), sleeping.clone());
            let t = braid::create_task(async move {
                let mut fut = pc.into_future();
                let first =
                    poll_fn(|cx| Poll::Ready(Pin::new(&mut fut).poll(cx).is_pending())).await;
                assert!(first, "the promise is not set yet");
                drop(fut);
                s.set_result(())?;
                braid::sleep(Duration::from_secs(60)).await
            });
            sleeping.await?;
            t.cancel();
            let task_err = t.await.unwrap_err();
            Ok((task_err, p.cancelled()))
        })
        .unwrap();
    assert!(task_err.is_cancelled());
    assert!(
        !promise_cancelled,
        "a promise no longer awaited was cancelled with the task"
    );
    rt.shutdown(WAIT).unwrap();
}

/// Ping-pong between a task and a foreign thread through promises: 2000 rounds of "the
/// thread sets a promise the task awaits" never lose a wake-up (each round bounded by 2 s).
#[test]
fn promises_set_from_a_foreign_thread_never_lose_a_wakeup() {
    const ROUNDS: usize = 2000;
    let rt = runtime(2);
    let (ptx, prx) = mpsc::channel::<Promise<usize>>();
    let (done_tx, done_rx) = mpsc::channel();
    let setter = thread::spawn(move || {
        for (i, p) in prx.iter().enumerate() {
            p.set_result(i).unwrap();
        }
    });
    let t = rt
        .event_loop()
        .spawn(async move {
            for i in 0..ROUNDS {
                let p: Promise<usize> = braid::create_future();
                ptx.send(p.clone()).unwrap();
                assert_eq!(p.await?, i);
                done_tx.send(i).unwrap();
            }
            Ok(())
        })
        .unwrap();
    for i in 0..ROUNDS {
        match done_rx.recv_timeout(Duration::from_secs(2)) {
            Ok(r) => assert_eq!(r, i),
            Err(_) => panic!("round {i}: the awaiting task was never woken (lost wake-up)"),
        }
    }
    rt.run_until_complete(t).unwrap();
    setter.join().unwrap();
    rt.shutdown(WAIT).unwrap();
}

/// Counts the wakes it receives; its `Arc`'s strong count tells how many wakers of it live.
#[derive(Default)]
struct WakeProbe(std::sync::atomic::AtomicUsize);

impl std::task::Wake for WakeProbe {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl WakeProbe {
    fn wakes(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Polls `fut` once with a waker of `probe`; true if it is still pending.
fn poll_once_with<F: std::future::Future + Unpin>(fut: &mut F, probe: &Arc<WakeProbe>) -> bool {
    let waker = std::task::Waker::from(probe.clone());
    let mut cx = std::task::Context::from_waker(&waker);
    std::pin::Pin::new(fut).poll(&mut cx).is_pending()
}

/// An await of a promise that stops waiting without cancelling it (the losing arm of a
/// select) gives back the waker it left with the promise, as asyncio removes the done
/// callback of an abandoned `await`: a long-lived promise (a shutdown signal, say) that
/// thousands of short-lived tasks race against their work must not keep them all alive.
#[test]
fn a_dropped_await_gives_back_its_waker() {
    braid::run(async {
        let p: Promise<u8> = Promise::new();
        let probes: Vec<Arc<WakeProbe>> = (0..3).map(|_| Arc::default()).collect();
        for probe in &probes {
            let mut fut = std::future::IntoFuture::into_future(p.clone());
            assert!(poll_once_with(&mut fut, probe));
            assert_eq!(Arc::strong_count(probe), 2, "the promise holds the waker");
        }
        for probe in &probes {
            assert_eq!(
                Arc::strong_count(probe),
                1,
                "a dropped await left its waker"
            );
        }
        // The pattern it serves: tasks racing the promise against their own work.
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let p = p.clone();
                braid::create_task(async move {
                    let signal = std::pin::pin!(std::future::IntoFuture::into_future(p));
                    let work = std::pin::pin!(braid::sleep(Duration::from_millis(1)));
                    match futures::future::select(signal, work).await {
                        futures::future::Either::Right((slept, _)) => slept,
                        futures::future::Either::Left((signalled, _)) => {
                            panic!("the promise was never set: {signalled:?}")
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await?;
        }
        assert!(!p.done());
        let probe = Arc::<WakeProbe>::default();
        let mut fut = std::future::IntoFuture::into_future(p.clone());
        assert!(poll_once_with(&mut fut, &probe));
        p.set_result(1)?;
        assert_eq!(probe.wakes(), 1, "the one live await was not woken");
        Ok(())
    })
    .unwrap();
}

/// Two awaits of one promise in the same task hold equal wakers in entries of their own;
/// dropping one leaves the other registered, and it is woken when the promise is set.
#[test]
fn dropping_one_of_two_awaits_in_a_task_leaves_the_other_woken() {
    braid::run(async {
        let p: Promise<u8> = Promise::new();
        let probe = Arc::<WakeProbe>::default();
        let mut first = std::future::IntoFuture::into_future(p.clone());
        let mut second = std::future::IntoFuture::into_future(p.clone());
        assert!(poll_once_with(&mut first, &probe));
        assert!(poll_once_with(&mut second, &probe));
        drop(first);
        p.set_result(4)?;
        assert!(probe.wakes() >= 1, "the remaining await was not woken");
        assert!(!poll_once_with(&mut second, &probe));
        drop(second);
        assert_eq!(Arc::strong_count(&probe), 1);
        Ok(())
    })
    .unwrap();
}

/// A promise made outside any loop and settled from a plain thread runs its done callbacks
/// right there. One that panics is reported, as a loop reports a panicking callback; it
/// must neither unwind into `set_result` nor keep the callbacks after it from running.
#[test]
fn a_panicking_done_callback_of_a_loopless_promise_does_not_skip_the_others() {
    let promise = braid::Promise::<u8>::new();
    let ran = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    promise.add_done_callback(|_| panic!("the first callback panics"));
    let counter = ran.clone();
    promise.add_done_callback(move |_| {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    let set = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| promise.set_result(1)));
    assert!(
        set.is_ok_and(|r| r.is_ok()),
        "the panic unwound out of set_result"
    );
    assert_eq!(
        ran.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the second callback ran"
    );
}

/// One exception handler report: its message, and its error's kind and message.
type Report = (String, Option<(ErrorKind, Option<String>)>);

/// A one-loop runtime whose loop sends every exception handler report to the receiver.
fn reporting_runtime() -> (braid::Runtime, braid::EventLoop, mpsc::Receiver<Report>) {
    let rt = runtime(1);
    let lp = rt.event_loop();
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    lp.set_exception_handler(move |ctx| {
        let error = ctx
            .error
            .as_ref()
            .map(|e| (e.kind(), e.message().map(str::to_owned)));
        // The receiver may be gone by the runtime's shutdown.
        let _ = tx.lock().unwrap().send((ctx.message.clone(), error));
    });
    (rt, lp, rx)
}

/// A promise created in a callback on `lp`, so that `lp` is its home loop.
fn promise_on(lp: &braid::EventLoop) -> Promise<u32> {
    let (tx, rx) = mpsc::channel();
    lp.call_soon_threadsafe(move || tx.send(Promise::new()).unwrap())
        .unwrap();
    rx.recv_timeout(WAIT).unwrap()
}

/// What the report of a promise failed with `Io` error `message` and dropped unretrieved is.
fn never_retrieved(message: &str) -> Report {
    (
        "Future exception was never retrieved".to_owned(),
        Some((ErrorKind::Io, Some(message.to_owned()))),
    )
}

/// A promise of `lp`, failed with an `Io` error saying `message`.
fn failed_promise_on(lp: &braid::EventLoop, message: &str) -> Promise<u32> {
    let p = promise_on(lp);
    p.set_exception(Error::new(ErrorKind::Io, message)).unwrap();
    p
}

/// The control that ends the report tests: a failed promise dropped unretrieved now is
/// reported, and it alone (what the test dropped before it was not); then shuts down.
fn end_with_a_reported_control(
    rt: braid::Runtime,
    lp: &braid::EventLoop,
    reports: &mpsc::Receiver<Report>,
) {
    drop(failed_promise_on(lp, "control"));
    assert_eq!(reports.try_recv().ok(), Some(never_retrieved("control")));
    assert_no_more_reports(lp, reports);
    rt.shutdown(WAIT).unwrap();
}

/// Asserts that nothing more was reported: a round trip through `lp` first, so that a report
/// from a callback or task that ran there before has arrived.
fn assert_no_more_reports(lp: &braid::EventLoop, reports: &mpsc::Receiver<Report>) {
    let (tx, rx) = mpsc::channel();
    lp.call_soon_threadsafe(move || tx.send(()).unwrap())
        .unwrap();
    rx.recv_timeout(WAIT).unwrap();
    assert_eq!(reports.try_recv().ok(), None, "one report too many");
}

/// A failed promise whose last reference goes with nobody having taken the error is reported
/// once, with its error, to its home loop's exception handler, whichever thread drops it; a
/// done callback that does not call `result()` does not take the error (CPython
/// `test_tb_logger_exception_unretrieved`; asyncio's `Future.__del__`).
#[test]
fn a_failed_promise_dropped_unretrieved_is_reported_once_with_its_error() {
    let (rt, lp, reports) = reporting_runtime();

    // Failed and dropped on this thread, which runs no loop.
    let p = promise_on(&lp);
    p.set_exception(Error::new(ErrorKind::Io, "lost here"))
        .unwrap();
    drop(p);
    assert_eq!(reports.try_recv().ok(), Some(never_retrieved("lost here")));
    assert_no_more_reports(&lp, &reports);

    // A done callback that ignores the promise: its clone goes last, on the loop.
    let p = promise_on(&lp);
    p.add_done_callback(|_| ());
    p.set_exception(Error::new(ErrorKind::Io, "lost in a callback"))
        .unwrap();
    drop(p);
    let report = reports.recv_timeout(WAIT).expect("no report");
    assert_eq!(report, never_retrieved("lost in a callback"));
    assert_no_more_reports(&lp, &reports);

    // Succeeded, or never settled: nothing to report (`test_tb_logger_result_unretrieved`,
    // `test_tb_logger_abandoned`).
    let p = promise_on(&lp);
    p.set_result(1).unwrap();
    drop(p);
    drop(promise_on(&lp));
    assert_no_more_reports(&lp, &reports);
    rt.shutdown(WAIT).unwrap();
}

/// A promise whose error `result()` or an await returned is not reported when dropped
/// (CPython `test_tb_logger_exception_result_retrieved`); a failed one dropped after them,
/// unretrieved, is, alone.
#[test]
fn a_promise_whose_error_was_taken_by_result_or_an_await_is_not_reported() {
    let (rt, lp, reports) = reporting_runtime();

    let by_result = failed_promise_on(&lp, "taken by result");
    assert_eq!(by_result.result().unwrap_err().kind(), ErrorKind::Io);
    drop(by_result);

    // Awaited by a task on the loop, parked before the promise fails: the callback that
    // fails it is queued by the task's step, so it runs once that step has parked.
    let by_await = promise_on(&lp);
    let (tx, awaited) = mpsc::channel();
    let waiter = {
        let p = by_await.clone();
        lp.spawn(async move {
            let failer = p.clone();
            braid::call_soon(move || {
                failer
                    .set_exception(Error::new(ErrorKind::Io, "taken by an await"))
                    .unwrap();
            });
            tx.send(p.await.map_err(|e| e.kind())).unwrap();
            Ok(())
        })
        .unwrap()
    };
    drop(by_await);
    assert_eq!(awaited.recv_timeout(WAIT).unwrap(), Err(ErrorKind::Io));
    drop(waiter);

    // Awaited when already failed.
    let done_before = failed_promise_on(&lp, "taken by a later await");
    let awaited = rt.run_until_complete({
        let p = done_before.clone();
        async move { Ok(p.await.unwrap_err().kind()) }
    });
    assert_eq!(awaited.unwrap(), ErrorKind::Io);
    drop(done_before);

    end_with_a_reported_control(rt, &lp, &reports);
}

/// A cancelled promise is never reported, nor one failed with a Cancelled error (braid's
/// Tasks never report a cancellation either), nor a failed one that `cancel()` was called on
/// afterwards (CPython `test_tb_logger_not_called_after_cancel`); a failed one dropped after
/// them, unretrieved, is, alone.
#[test]
fn a_cancelled_promise_is_not_reported() {
    let (rt, lp, reports) = reporting_runtime();

    let cancelled = promise_on(&lp);
    assert!(cancelled.cancel());
    drop(cancelled);

    let failed_cancelled = promise_on(&lp);
    failed_cancelled
        .set_exception(Error::cancelled(Some("m".to_owned())))
        .unwrap();
    drop(failed_cancelled);

    let cancel_after_failure = failed_promise_on(&lp, "cancel takes it back");
    assert!(!cancel_after_failure.cancel());
    drop(cancel_after_failure);

    end_with_a_reported_control(rt, &lp, &reports);
}

/// A clone keeps the promise, and so its unretrieved error, alive: the report comes when the
/// last clone goes, from whichever thread drops it, and only once.
#[test]
fn a_clone_keeps_an_unretrieved_error_until_the_last_reference_goes() {
    let (rt, lp, reports) = reporting_runtime();
    let p = promise_on(&lp);
    let clones: Vec<Promise<u32>> = (0..3).map(|_| p.clone()).collect();
    p.set_exception(Error::new(ErrorKind::Io, "shared"))
        .unwrap();
    drop(p);
    let last = thread::spawn(move || {
        let mut clones = clones;
        let last = clones.pop().unwrap();
        drop(clones);
        last
    })
    .join()
    .unwrap();
    assert_no_more_reports(&lp, &reports);
    thread::spawn(move || drop(last)).join().unwrap();
    assert_eq!(reports.try_recv().ok(), Some(never_retrieved("shared")));
    assert_no_more_reports(&lp, &reports);
    rt.shutdown(WAIT).unwrap();
}

/// Replacing a loop's exception handler drops the old one, which may hold the last clone of a
/// failed, unretrieved promise of that loop: its report goes to the new handler. The old
/// handler used to be dropped under the handler's lock, which the report then took again:
/// `set_exception_handler` never returned.
#[test]
fn replacing_a_handler_that_holds_an_unretrieved_failed_promise_reports_it_to_the_new_one() {
    let (rt, lp, reports) = reporting_runtime();
    let p = promise_on(&lp);
    p.set_exception(Error::new(ErrorKind::Io, "held by the old handler"))
        .unwrap();
    lp.set_exception_handler(move |_| {
        let _ = &p;
    });
    let (replaced_tx, replaced) = mpsc::channel();
    let (new_tx, new_reports) = mpsc::channel();
    let replacer = {
        let lp = lp.clone();
        thread::spawn(move || {
            let new_tx = Mutex::new(new_tx);
            lp.set_exception_handler(move |ctx| {
                let _ = new_tx.lock().unwrap().send(ctx.message.clone());
            });
            replaced_tx.send(()).unwrap();
        })
    };
    assert!(
        replaced.recv_timeout(WAIT).is_ok(),
        "set_exception_handler never returned"
    );
    replacer.join().unwrap();
    assert_eq!(
        new_reports.recv_timeout(WAIT).ok().as_deref(),
        Some("Future exception was never retrieved")
    );
    drop(reports);
    rt.shutdown(WAIT).unwrap();
}

/// Removing a done callback drops its closure after the promise's lock: a closure holding the
/// last clone of a failed, unretrieved promise has it reported there, to a handler that may
/// look at the promise the callback was removed from. Dropped under that promise's lock, the
/// handler's look deadlocked (found by helper-65).
#[test]
fn a_removed_callback_holding_a_failed_promise_is_dropped_after_the_lock() {
    let rt = runtime(1);
    let lp = rt.event_loop();
    let watched = promise_on(&lp);
    let looked_at = watched.clone();
    let (tx, reports) = mpsc::channel();
    let tx = Mutex::new(tx);
    lp.set_exception_handler(move |ctx| {
        let _ = tx
            .lock()
            .unwrap()
            .send((ctx.message.clone(), looked_at.done()));
    });
    let held = failed_promise_on(&lp, "held by a removed callback");
    let id = watched.add_done_callback(move |_| {
        let _ = &held;
    });
    let (removed_tx, removed) = mpsc::channel();
    let remover = thread::spawn(move || {
        removed_tx.send(watched.remove_done_callback(id)).unwrap();
    });
    assert_eq!(
        removed.recv_timeout(WAIT).ok(),
        Some(1),
        "remove_done_callback never returned"
    );
    remover.join().unwrap();
    assert_eq!(
        reports.recv_timeout(WAIT).ok(),
        Some(("Future exception was never retrieved".to_owned(), false))
    );
    rt.shutdown(WAIT).unwrap();
}
