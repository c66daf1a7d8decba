//! Running futures: `braid::run` (asyncio.run) returns main's value or error;
//! `run_until_complete` drives a `!Send`, non-`'static` future on the calling thread;
//! `spawn_local` keeps `!Send` futures on the host loop; `run_forever` returns after
//! `stop()`; a task spawned on the runtime can be awaited through `run_until_complete`; and
//! the README's quick start and `examples/hello.rs` behave as described. (CPython
//! `test_runners.py::test_asyncio_run_return`, `test_asyncio_run_raises`;
//! `test_base_events.py::test_run_forever_*`, `test_run_until_complete`.)

use braid::ErrorKind;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{runtime, WAIT};

/// `braid::run` returns the value of its main coroutine (CPython
/// `test_asyncio_run_return`).
#[test]
fn run_returns_mains_value() {
    let v = braid::run(async {
        braid::sleep(Duration::from_millis(1)).await?;
        Ok(vec!["a", "b"])
    })
    .unwrap();
    assert_eq!(v, ["a", "b"]);
}

/// `braid::run` returns main's error unchanged (CPython `test_asyncio_run_raises`).
#[test]
fn run_returns_mains_error() {
    let err = braid::run(async {
        braid::yield_now().await?;
        Err::<(), _>(braid::Error::new(ErrorKind::Io, "no such file"))
    })
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert_eq!(err.message(), Some("no such file"));
}

/// `run_until_complete` accepts a `!Send` future that borrows a local (non-`'static`) and
/// awaits across it; the local is usable again afterwards.
#[test]
fn run_until_complete_accepts_a_non_send_borrowing_future() {
    let rt = runtime(2);
    let mut local = vec![1, 2, 3];
    let rc = Rc::new(Cell::new(10)); // !Send
    let n = rt
        .run_until_complete(async {
            local.push(4);
            braid::sleep(Duration::from_millis(1)).await?;
            rc.set(rc.get() + 1);
            braid::yield_now().await?;
            Ok(local.len() + rc.get())
        })
        .unwrap();
    assert_eq!(n, 4 + 11);
    local.push(5);
    assert_eq!(local, [1, 2, 3, 4, 5]);
    rt.shutdown(WAIT).unwrap();
}

/// `spawn_local` runs a `!Send` future on the host loop (the thread calling
/// `run_until_complete`), staying there across awaits.
#[test]
fn spawn_local_runs_non_send_futures_on_the_host_loop() {
    let rt = runtime(2);
    let me = thread::current().id();
    let (threads, host_loop, seen_loops, value) = rt
        .run_until_complete(async {
            let host_loop = braid::get_running_loop().id();
            let shared = Rc::new(RefCell::new(Vec::new())); // !Send, held across awaits
            let s = shared.clone();
            let t = braid::spawn_local(async move {
                let mut threads = Vec::new();
                let mut loops = Vec::new();
                for _ in 0..5 {
                    threads.push(thread::current().id());
                    loops.push(braid::get_running_loop().id());
                    s.borrow_mut().push(1);
                    braid::sleep(Duration::from_millis(1)).await?;
                    braid::yield_now().await?;
                }
                Ok((threads, loops))
            });
            let (threads, loops) = t.await?;
            let value = shared.borrow().len();
            Ok((threads, host_loop, loops, value))
        })
        .unwrap();
    assert!(
        threads.iter().all(|t| *t == me),
        "a spawn_local task left the host thread"
    );
    assert!(seen_loops.iter().all(|l| *l == host_loop));
    assert!(
        host_loop >= 2,
        "the host loop's id {host_loop} clashes with a worker loop's"
    );
    assert_eq!(value, 5);
    rt.shutdown(WAIT).unwrap();
}

/// `run_forever` returns after `EventLoop::stop()` (here from a task on a worker loop), with
/// the work before the stop done; then again with `stop()` from a callback pinned to the
/// host loop, sent to it between the runs.
#[test]
fn run_forever_returns_after_stop() {
    let rt = runtime(2);
    let did_work = Arc::new(AtomicBool::new(false));
    let d = did_work.clone();
    let lp = rt.event_loop();
    // Before the spawn: the task can sleep and stop the loop before this thread goes on.
    let start = Instant::now();
    rt.event_loops()[1]
        .spawn(async move {
            braid::sleep(Duration::from_millis(10)).await?;
            d.store(true, Ordering::SeqCst);
            lp.stop();
            Ok(())
        })
        .unwrap();
    rt.run_forever().unwrap();
    assert!(
        did_work.load(Ordering::SeqCst),
        "run_forever returned before stop()"
    );
    assert!(start.elapsed() >= Duration::from_millis(10));

    // Stopped from a callback pinned to the host loop itself, on a second run. (Sent from
    // here: one that main scheduled in its last step would run, and stop, inside
    // `run_until_complete`, as in asyncio.)
    let me = rt
        .run_until_complete(async { Ok(braid::get_running_loop()) })
        .unwrap();
    let host = me.clone();
    me.call_soon_threadsafe(move || host.stop()).unwrap();
    rt.run_forever().unwrap();
    rt.shutdown(WAIT).unwrap();
}

/// A callback pinned to the host loop that did not run before `run_until_complete`
/// returned runs when the runtime is driven again from that thread (as in asyncio).
#[test]
fn callbacks_pinned_to_the_host_run_on_the_next_run() {
    let rt = runtime(2);
    let ran = Rc::new(Cell::new(false));
    let r = ran.clone();
    rt.run_until_complete(async move {
        braid::call_later(Duration::from_millis(5), move || r.set(true));
        Ok(())
    })
    .unwrap();
    rt.run_until_complete(async {
        braid::sleep(Duration::from_millis(20)).await?;
        Ok(())
    })
    .unwrap();
    assert!(ran.get(), "the pinned callback never ran on the next run");
    rt.shutdown(WAIT).unwrap();
}

/// A `call_later` on the host loop that fell due before the main future was woken runs
/// before main resumes, even when a long callback kept the host thread busy past both (as
/// in asyncio, where both are the loop's timers, run in deadline order). Main's sleep is
/// fired by a worker at 20 ms while the host is still in its 60 ms callback.
#[test]
fn a_host_timer_due_before_mains_wake_up_runs_before_main_resumes() {
    let rt = runtime(2);
    rt.run_until_complete(async {
        let ran = Rc::new(Cell::new(false));
        let r = ran.clone();
        braid::call_later(Duration::from_millis(5), move || r.set(true));
        braid::call_soon(|| std::thread::sleep(Duration::from_millis(60)));
        braid::sleep(Duration::from_millis(20)).await?;
        assert!(
            ran.get(),
            "main resumed before the call_later due earlier had run"
        );
        Ok(())
    })
    .unwrap();
    rt.shutdown(WAIT).unwrap();
}

/// A `call_later` on the host loop due only after the main future was woken runs after main
/// resumes, however late the host gets to both: the order is by deadline, not by when the
/// host thread got free. (The margins are wide: the 300 ms timer would only be due first if
/// the worker fired main's 20 ms sleep more than 280 ms late.)
#[test]
fn a_host_timer_due_after_mains_wake_up_runs_after_main_resumes() {
    let rt = runtime(2);
    rt.run_until_complete(async {
        let ran = Rc::new(Cell::new(false));
        let r = ran.clone();
        braid::call_later(Duration::from_millis(300), move || r.set(true));
        braid::call_soon(|| std::thread::sleep(Duration::from_millis(400)));
        braid::sleep(Duration::from_millis(20)).await?;
        assert!(
            !ran.get(),
            "a call_later due after main's wake-up ran before main resumed"
        );
        Ok(())
    })
    .unwrap();
    rt.shutdown(WAIT).unwrap();
}

/// A task spawned on the runtime through `EventLoop::spawn` (from any loop handle) is
/// awaited with `run_until_complete`.
#[test]
fn a_spawned_task_is_awaited_with_run_until_complete() {
    let rt = runtime(2);
    for lp in rt.event_loops() {
        let t = lp
            .spawn(async {
                braid::sleep(Duration::from_millis(2)).await?;
                Ok(6 * 7)
            })
            .unwrap();
        assert_eq!(rt.run_until_complete(t).unwrap(), 42);
    }
    rt.shutdown(WAIT).unwrap();
}

/// The README's quick start: the fast task's value comes first, the slow one after its
/// 200 ms sleep, and `run` returns Ok.
#[test]
fn readme_quick_start_behaves() {
    let start = Instant::now();
    let (fast, slow) = braid::run(async {
        let slow = braid::create_task(async {
            braid::sleep(Duration::from_millis(200)).await?;
            Ok("slow")
        });
        let fast = braid::create_task(async { Ok("fast") });
        Ok((fast.await?, slow.await?))
    })
    .unwrap();
    assert_eq!((fast, slow), ("fast", "slow"));
    assert!(start.elapsed() >= Duration::from_millis(200));
}

/// `examples/hello.rs`: `braid::run(main_coroutine())` with a 200 ms sleep between the two
/// halves returns Ok after at least 200 ms.
#[test]
fn hello_example_behaves() {
    async fn main_coroutine() -> braid::Result<()> {
        println!("Hello ...");
        braid::sleep(Duration::from_millis(200)).await?;
        println!("... World!");
        Ok(())
    }
    let start = Instant::now();
    braid::run(main_coroutine()).unwrap();
    assert!(start.elapsed() >= Duration::from_millis(200));
}

/// `examples/chores.rs` (scaled): chores started together with `create_task` take about the
/// longest one, not the sum, because sleeping occupies no thread.
#[test]
fn chores_run_concurrently() {
    let chores = [(30u64, "laundry"), (50, "rice"), (20, "sweeping")];
    let scale = 3; // 90, 150, 60 ms: longest 150 ms, sum 300 ms
    let start = Instant::now();
    let done = braid::run(async move {
        let tasks: Vec<_> = chores
            .iter()
            .map(|&(ms, name)| {
                braid::create_task(async move {
                    braid::sleep(Duration::from_millis(ms * scale)).await?;
                    Ok(name)
                })
            })
            .collect();
        let mut done = Vec::new();
        for t in tasks {
            done.push(t.await?);
        }
        Ok(done)
    })
    .unwrap();
    let took = start.elapsed();
    assert_eq!(done, ["laundry", "rice", "sweeping"]);
    assert!(took >= Duration::from_millis(150), "took {took:?}");
    assert!(
        took < Duration::from_millis(270),
        "concurrent chores took {took:?} (sequential: 300 ms)"
    );
}

/// `stop()` called before `run_forever` makes the next `run_forever` return (asyncio: "If
/// stop() is called before run_forever() is called, ... run_forever() returns" after one
/// iteration).
#[test]
fn stop_before_run_forever_makes_it_return() {
    let rt = runtime(2);
    rt.event_loop().stop();
    let (tx, rx) = std::sync::mpsc::channel();
    let rt = Arc::new(rt);
    let r = rt.clone();
    let runner = thread::spawn(move || {
        let out = r.run_forever();
        drop(r);
        tx.send(out.is_ok()).unwrap();
    });
    let returned = rx.recv_timeout(WAIT);
    if returned.is_err() {
        rt.event_loop().stop(); // unblock the runner before failing
    }
    runner.join().unwrap();
    assert_eq!(returned, Ok(true), "run_forever ignored an earlier stop()");
    Arc::try_unwrap(rt)
        .expect("the only reference left")
        .shutdown(WAIT)
        .unwrap();
}

/// `spawn_local` from a callback on a worker loop pins the task to that loop: woken from a
/// foreign thread, it still resumes on that loop's thread.
#[test]
fn spawn_local_on_a_worker_loop_stays_on_that_loop() {
    let rt = runtime(2);
    let (tx, rx) = std::sync::mpsc::channel();
    rt.event_loops()[1]
        .call_soon_threadsafe(move || {
            let home = thread::current().id();
            let p: braid::Promise<u8> = braid::create_future();
            let setter = p.clone();
            let rc = Rc::new(Cell::new(0u8)); // !Send, held across the await
            let t = braid::spawn_local(async move {
                let before = thread::current().id();
                rc.set(p.await?);
                Ok((before, thread::current().id(), rc.get()))
            });
            // Wake it from a foreign thread.
            thread::spawn(move || setter.set_result(9).unwrap());
            tx.send((home, t)).unwrap();
        })
        .unwrap();
    let (home, t) = rx.recv_timeout(WAIT).unwrap();
    let (before, after, v) = rt.run_until_complete(t).unwrap();
    assert_eq!((before, after, v), (home, home, 9));
    rt.shutdown(WAIT).unwrap();
}

/// A host loop closes when its thread exits, since nothing can run it after that: the task
/// pinned there finishes Cancelled, so whoever awaits it is not left waiting, and a callback
/// sent to the loop afterwards fails with Closed instead of waiting for a thread that is gone.
/// The runtime runs on.
#[test]
fn a_host_loop_closes_when_its_thread_exits() {
    let rt = runtime(1);
    let (host, pinned) = thread::scope(|s| {
        s.spawn(|| {
            rt.run_until_complete(async {
                let pinned = braid::spawn_local(async {
                    braid::sleep(Duration::from_secs(3600)).await?;
                    Ok(1)
                });
                Ok((braid::get_running_loop(), pinned))
            })
        })
        .join()
        .unwrap()
    })
    .unwrap();
    assert_eq!(host.state(), braid::LoopState::Closed);
    let refused = host.call_soon_threadsafe(|| {}).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Closed, "{refused:?}");
    let lp = rt.event_loop();
    let joined = lp
        .run_coroutine_threadsafe(pinned)
        .unwrap()
        .result(Some(WAIT))
        .unwrap_err();
    assert!(joined.is_cancelled(), "{joined:?}");
    assert_eq!(joined.message(), Some("the event loop closed"));
    let after = lp.run_coroutine_threadsafe(async { Ok(2) }).unwrap();
    assert_eq!(after.result(Some(WAIT)).unwrap(), 2);
    rt.shutdown(WAIT).unwrap();
}

/// A runtime used from a thread-local's destructor, once the thread's braid state is gone:
/// `run_until_complete` is an InvalidState error, and `shutdown` works. Two ways in: the
/// thread ran a loop before (its host loops have closed), or only spawned from outside one
/// (its loop context is gone, its host loops never existed). Each looked the thread's loop up
/// in a thread-local that was gone, which panicked, and a panic there aborts the process.
#[test]
fn a_runtime_used_in_a_thread_local_destructor_as_the_thread_exits() {
    type Outcomes = (braid::Result<i32>, braid::Result<()>);
    struct AtExit(Option<braid::Runtime>, std::sync::mpsc::Sender<Outcomes>);
    impl Drop for AtExit {
        fn drop(&mut self) {
            let rt = self.0.take().unwrap();
            let run = rt.run_until_complete(async { Ok(1) });
            let _ = self.1.send((run, rt.shutdown(WAIT)));
        }
    }
    thread_local! {
        static AT_EXIT: RefCell<Option<AtExit>> = const { RefCell::new(None) };
    }
    let ran_a_loop = |rt: &braid::Runtime| {
        assert_eq!(rt.run_until_complete(async { Ok(2) }).unwrap(), 2);
    };
    let spawned_only = |rt: &braid::Runtime| {
        let task = rt.event_loop().spawn(async { Ok(()) }).unwrap();
        drop(task);
    };
    for first_use in [ran_a_loop, spawned_only] {
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            // Used before braid's own thread-locals, so destroyed after them: thread-locals
            // are destroyed in the reverse order of their first use.
            AT_EXIT.with(|d| assert!(d.borrow().is_none()));
            let rt = runtime(1);
            first_use(&rt);
            AT_EXIT.with(|d| *d.borrow_mut() = Some(AtExit(Some(rt), tx)));
        })
        .join()
        .unwrap();
        let (run, shutdown) = rx.recv_timeout(WAIT).unwrap();
        assert_eq!(run.unwrap_err().kind(), ErrorKind::InvalidState);
        shutdown.unwrap();
    }
}

/// The host loop reports `is_running()` while `run_until_complete` drives it, and not
/// after it returns (asyncio's `loop.is_running()`).
#[test]
fn host_loop_is_running_only_while_driven() {
    let rt = runtime(2);
    let (host, during) = rt
        .run_until_complete(async {
            let host = braid::get_running_loop();
            let during = host.is_running();
            Ok((host, during))
        })
        .unwrap();
    assert!(during);
    assert!(!host.is_running());
    rt.shutdown(WAIT).unwrap();
}

/// The future driven by `run_until_complete` counts as a task: cancelling it (here, itself)
/// makes `run_until_complete` return a Cancelled error, whether the request is delivered at
/// an await or still pending when it returns.
#[test]
fn cancelling_the_run_until_complete_future_returns_cancelled() {
    let rt = runtime(2);
    let at_await = rt
        .run_until_complete(async {
            braid::current_task().unwrap().cancel_with("stop main");
            braid::sleep(Duration::from_secs(60)).await?;
            Ok(())
        })
        .unwrap_err();
    assert!(at_await.is_cancelled());
    assert_eq!(at_await.message(), Some("stop main"));
    let at_return = rt
        .run_until_complete(async {
            braid::current_task().unwrap().cancel();
            Ok(1)
        })
        .unwrap_err();
    assert!(at_return.is_cancelled());
    rt.shutdown(WAIT).unwrap();
}

/// Two threads can drive the same runtime with `run_until_complete` at once: each gets its
/// own host loop (distinct ids), runs its `spawn_local` tasks on its own thread, and both
/// complete.
#[test]
fn run_until_complete_from_two_threads_at_once() {
    let rt = Arc::new(runtime(2));
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let drivers: Vec<_> = (0..2)
        .map(|k| {
            let (rt, barrier) = (rt.clone(), barrier.clone());
            thread::spawn(move || {
                let me = thread::current().id();
                let out = rt.run_until_complete(async {
                    barrier.wait(); // both threads are inside run_until_complete now
                    let host = braid::get_running_loop().id();
                    let t = braid::spawn_local(async move {
                        braid::sleep(Duration::from_millis(5)).await?;
                        Ok(thread::current().id())
                    });
                    let ran_on = t.await?;
                    Ok((host, ran_on, k))
                });
                drop(rt);
                (me, out)
            })
        })
        .collect();
    let mut hosts = Vec::new();
    for d in drivers {
        let (me, out) = d.join().unwrap();
        let (host, ran_on, _k) = out.unwrap();
        assert_eq!(ran_on, me, "a spawn_local task ran off its driving thread");
        hosts.push(host);
    }
    assert_ne!(hosts[0], hosts[1], "two driving threads share a host loop");
    Arc::try_unwrap(rt)
        .expect("the only reference left")
        .shutdown(WAIT)
        .unwrap();
}

/// A host loop reports `Running` only while a thread drives it (`run_until_complete`), and
/// `Idle` before and after, in step with `is_running`.
#[test]
fn a_host_loop_nothing_drives_is_idle() {
    let rt = runtime(1);
    let host = rt
        .run_until_complete(async {
            let host = braid::get_running_loop();
            assert_eq!(host.state(), braid::LoopState::Running);
            Ok(host)
        })
        .unwrap();
    assert!(!host.is_running());
    assert_eq!(host.state(), braid::LoopState::Idle);
    rt.shutdown(WAIT).unwrap();
}

/// Inside `run_until_complete` the calling thread is a loop of the runtime (API.md), so
/// blocking on a future that runtime must complete is refused at once with InvalidState, as
/// on a worker loop: `result`, `into_result`, `exception`, `cancel_and_wait`, `bridge::wait`
/// and `bridge::as_completed`. Here it would deadlock for good: the coroutine awaits a task
/// pinned to this host loop, which cannot run while the thread blocks (`result` used to wait
/// out its whole timeout). Awaiting works; a future of another runtime may still be blocked
/// on; and the mark ends with the call, also when the future panicked.
#[test]
fn blocking_on_its_runtimes_future_inside_run_until_complete_is_refused_at_once() {
    use braid::bridge::{as_completed, wait, CancelOutcome, ReturnWhen};
    let rt = runtime(2);
    let other = runtime(1);
    let lp = rt.event_loop();
    let other_lp = other.event_loop();
    let checks = rt.run_until_complete(async move {
        let pinned = braid::spawn_local(async {
            braid::sleep(Duration::from_millis(10)).await?;
            Ok(5u32)
        });
        let cf = lp.run_coroutine_threadsafe(pinned)?;
        let doomed = lp.run_coroutine_threadsafe(async {
            braid::sleep(Duration::from_secs(3600)).await?;
            Ok(0u32)
        })?;
        let began = Instant::now();
        let kinds = [
            cf.result(Some(WAIT)).map(drop).map_err(|e| e.kind()),
            cf.clone()
                .into_result(Some(WAIT))
                .map(drop)
                .map_err(|e| e.kind()),
            cf.exception(Some(WAIT)).map(drop).map_err(|e| e.kind()),
            match doomed.cancel_and_wait(Some(WAIT)) {
                CancelOutcome::Completed(Err(e)) => Err(e.kind()),
                _ => Ok(()),
            },
        ];
        let (done, pending) = wait(
            std::slice::from_ref(&cf),
            Some(WAIT),
            ReturnWhen::AllCompleted,
        );
        let waited = (done.len(), pending.len());
        let yielded = as_completed(vec![cf.clone()], Some(WAIT))
            .next()
            .map(|f| f.map(drop).map_err(|e| e.kind()));
        let took = began.elapsed();
        // Another runtime's future: this thread is not one of its loops.
        let elsewhere = other_lp.run_coroutine_threadsafe(async { Ok(2u32) })?;
        let theirs = elsewhere.result(Some(WAIT))?;
        let value = cf.await?;
        Ok((kinds, waited, yielded, took, theirs, value))
    });
    let (kinds, waited, yielded, took, theirs, value) = checks.unwrap();
    let refused = Err(ErrorKind::InvalidState);
    assert_eq!(
        kinds, [refused; 4],
        "result, into_result, exception, cancel_and_wait"
    );
    assert_eq!(waited, (0, 1), "wait returns at once, the future pending");
    assert_eq!(yielded, Some(refused), "as_completed");
    assert!(took < WAIT, "took {took:?}: a call waited out its timeout");
    assert_eq!((theirs, value), (2, 5));

    // The mark ends with the call, however the future ended.
    let panicked = rt.run_until_complete(async {
        if true {
            panic!("main panicked");
        }
        Ok(())
    });
    assert_eq!(panicked.unwrap_err().kind(), ErrorKind::Panicked);
    let after = rt
        .event_loop()
        .run_coroutine_threadsafe(async { Ok(3u32) })
        .unwrap();
    assert_eq!(after.result(Some(WAIT)).unwrap(), 3);
    rt.shutdown(WAIT).unwrap();
    other.shutdown(WAIT).unwrap();
}

/// A log of what ran, shared by the callbacks, the tasks and the main future of one thread.
type Log = Rc<RefCell<Vec<&'static str>>>;

/// A callback that writes `what` to `log`.
fn logs(log: &Log, what: &'static str) -> impl FnOnce() + 'static {
    let log = log.clone();
    move || log.borrow_mut().push(what)
}

/// The host loop of the calling thread for `rt` (a run that only hands it back).
fn host_loop(rt: &braid::Runtime) -> braid::EventLoop {
    rt.run_until_complete(async { Ok(braid::get_running_loop()) })
        .unwrap()
}

/// Callbacks already queued on the host loop when `run_until_complete` starts run before the
/// main future's first step, in FIFO order, as in asyncio, where `run_until_complete` queues
/// main's first step behind them (`ensure_future`, then `run_forever`). Main was polled
/// first, so a callback sent before the call ran after main's first step (found by
/// helper-62).
#[test]
fn callbacks_queued_before_run_until_complete_run_before_mains_first_step() {
    let rt = runtime(1);
    let host = host_loop(&rt);
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    for what in ["sent 1", "sent 2"] {
        let log = log.clone();
        host.call_soon_threadsafe(move || log.lock().unwrap().push(what))
            .unwrap();
    }
    let l = log.clone();
    rt.run_until_complete(async move {
        l.lock().unwrap().push("first step");
        braid::yield_now().await?;
        l.lock().unwrap().push("second step");
        Ok(())
    })
    .unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        ["sent 1", "sent 2", "first step", "second step"]
    );
    rt.shutdown(WAIT).unwrap();
}

/// The callbacks main scheduled in its last step run before `run_until_complete` returns,
/// once: asyncio's loop runs them in the iteration that runs main's done callback, which
/// stops it. What they schedule in turn waits for the thread's next run, and runs there
/// before the next main's first step (found by helper-62: they waited, and ran after it).
#[test]
fn run_until_complete_runs_the_callbacks_main_scheduled_in_its_last_step() {
    let rt = runtime(1);
    let log: Log = Rc::default();
    let l = log.clone();
    rt.run_until_complete(async move {
        let later = logs(&l, "scheduled by it");
        let first = logs(&l, "scheduled in the last step");
        braid::call_soon(move || {
            first();
            braid::call_soon(later);
        });
        Ok(())
    })
    .unwrap();
    assert_eq!(*log.borrow(), ["scheduled in the last step"]);
    let l = log.clone();
    rt.run_until_complete(async move {
        l.borrow_mut().push("next main");
        Ok(())
    })
    .unwrap();
    assert_eq!(
        *log.borrow(),
        ["scheduled in the last step", "scheduled by it", "next main"]
    );
    rt.shutdown(WAIT).unwrap();
}

/// `braid::run` runs the callbacks that are ready when main returns before it shuts the
/// runtime down, as `asyncio.run` does: none is dropped and reported as never run. It used to
/// drop the callback of `run(async { call_soon(..); Ok(()) })` (found by helper-62).
#[test]
fn run_runs_the_callbacks_ready_when_main_returns() {
    let ran = Arc::new(AtomicBool::new(false));
    let reports = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (r, reported) = (ran.clone(), reports.clone());
    braid::run(async move {
        braid::get_running_loop().set_exception_handler(move |ctx| {
            reported.lock().unwrap().push(ctx.message.clone());
        });
        braid::call_soon(move || r.store(true, Ordering::SeqCst));
        Ok(())
    })
    .unwrap();
    assert!(ran.load(Ordering::SeqCst), "the callback never ran");
    assert!(reports.lock().unwrap().is_empty(), "{reports:?}");
}

/// `run_forever` after `stop()` runs one iteration before it returns, as asyncio's does: the
/// callbacks scheduled by then run, not those they schedule, which wait for the next run.
/// A `stop()` made by a callback ends the run after the iteration it ran in. It used to
/// return before running anything (found by helper-62).
#[test]
fn run_forever_after_stop_runs_the_callbacks_already_scheduled() {
    let rt = runtime(1);
    let host = host_loop(&rt);
    let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
    let push = |what: &'static str| {
        let sent = sent.clone();
        move || sent.lock().unwrap().push(what)
    };
    host.call_soon_threadsafe(push("before the stop")).unwrap();
    host.stop();
    rt.run_forever().unwrap();
    assert_eq!(*sent.lock().unwrap(), ["before the stop"]);

    sent.lock().unwrap().clear();
    host.call_soon_threadsafe(push("A")).unwrap();
    let h = host.clone();
    host.call_soon_threadsafe(move || h.stop()).unwrap();
    let (b, c) = (push("B"), push("C, the next iteration's"));
    host.call_soon_threadsafe(move || {
        b();
        braid::call_soon(c);
    })
    .unwrap();
    rt.run_forever().unwrap();
    assert_eq!(*sent.lock().unwrap(), ["A", "B"]);
    rt.run_until_complete(async { Ok(()) }).unwrap();
    assert_eq!(*sent.lock().unwrap(), ["A", "B", "C, the next iteration's"]);
    rt.shutdown(WAIT).unwrap();
}

/// A `stop()` made while `run_until_complete` runs ends it after that iteration with an
/// InvalidState error when main has not completed (asyncio's RuntimeError "Event loop stopped
/// before Future completed."), and with main's value when it has; either way the stop is
/// spent with the run, so the next `run_forever` runs until its own stop. It used to be
/// ignored by `run_until_complete` and make the next `run_forever` return at once (found by
/// helper-62).
#[test]
fn a_stop_during_run_until_complete_ends_it_and_is_spent_with_it() {
    let rt = runtime(1);
    let err = rt
        .run_until_complete(async {
            braid::get_running_loop().stop();
            braid::sleep(Duration::from_millis(10)).await?;
            Ok(1)
        })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidState, "{err:?}");
    assert!(err.to_string().contains("stopped before"), "{err}");
    let completed = rt.run_until_complete(async {
        braid::get_running_loop().stop();
        Ok(2)
    });
    assert_eq!(completed.unwrap(), 2);

    // Nothing left over: this run_forever returns only after the task's own stop.
    let stopped_by_the_task = Arc::new(AtomicBool::new(false));
    let s = stopped_by_the_task.clone();
    let lp = rt.event_loop();
    rt.event_loop()
        .spawn(async move {
            braid::sleep(Duration::from_millis(50)).await?;
            s.store(true, Ordering::SeqCst);
            lp.stop();
            Ok(())
        })
        .unwrap();
    rt.run_forever().unwrap();
    assert!(
        stopped_by_the_task.load(Ordering::SeqCst),
        "run_forever returned on the stop made during run_until_complete"
    );
    rt.shutdown(WAIT).unwrap();
}
