//! Shutdown: after it, every submission fails with kind Closed (never a panic, and a
//! submission racing it is either refused or settles); the tasks left are cancelled and their
//! cleanup runs (shared tasks and tasks pinned to the host loop); a task that refuses to finish
//! makes `shutdown` return a Timeout error naming it; a `Task` joined from a foreign thread
//! settles instead of hanging; `workers(0)`, too many workers and a thread name with a NUL
//! byte are refused; dropping a busy runtime is prompt, even inside another runtime's loop.
//! (asyncio's counterparts: `asyncio.run` cancelling the tasks left in
//! `runners._cancel_all_tasks`, and a closed loop refusing `call_soon_threadsafe` with
//! `RuntimeError`.)

use braid::{ErrorKind, LoopState, Promise, Runtime, Task};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{runtime, WAIT};

const LONG: Duration = Duration::from_secs(3600);

/// Joins `task` from a plain thread with `futures::executor::block_on`; the result, or
/// `None` if it did not settle within `limit`.
fn join_from_foreign_thread<T: Send + 'static>(
    task: Task<T>,
    limit: Duration,
) -> Option<braid::Result<T>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(futures::executor::block_on(task));
    });
    rx.recv_timeout(limit).ok()
}

/// Names of this process's threads (Linux: /proc/self/task/*/comm).
fn thread_names() -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for entry in dir.flatten() {
            if let Ok(name) = std::fs::read_to_string(entry.path().join("comm")) {
                names.push(name.trim().to_owned());
            }
        }
    }
    names
}

/// After `shutdown`, `EventLoop::spawn` and `call_soon_threadsafe` on every loop (worker
/// and host) return kind Closed, never panic and never run the callback; the loops report
/// Closed.
#[test]
fn submissions_after_shutdown_are_closed() {
    let rt = runtime(2);
    let host = rt
        .run_until_complete(async { Ok(braid::get_running_loop()) })
        .unwrap();
    let mut loops = rt.event_loops();
    loops.push(host);
    rt.shutdown(WAIT).unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    for lp in &loops {
        let r = ran.clone();
        let cb = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            lp.call_soon_threadsafe(move || r.store(true, Ordering::SeqCst))
        }))
        .expect("call_soon_threadsafe panicked after shutdown");
        assert_eq!(
            cb.unwrap_err().kind(),
            ErrorKind::Closed,
            "loop {}",
            lp.id()
        );
        let spawned =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| lp.spawn(async { Ok(1) })))
                .expect("spawn panicked after shutdown");
        assert_eq!(
            spawned.unwrap_err().kind(),
            ErrorKind::Closed,
            "loop {}",
            lp.id()
        );
        assert!(lp.is_closed(), "loop {}", lp.id());
        assert!(!lp.is_running(), "loop {}", lp.id());
    }
    for lp in &loops[..2] {
        assert_eq!(lp.state(), LoopState::Closed);
    }
    assert!(!ran.load(Ordering::SeqCst), "a refused callback ran");
}

/// The same after dropping the runtime (Drop = shutdown with a default timeout).
#[test]
fn submissions_after_drop_are_closed() {
    let rt = runtime(2);
    let loops = rt.event_loops();
    drop(rt);
    for lp in &loops {
        assert_eq!(
            lp.call_soon_threadsafe(|| ()).unwrap_err().kind(),
            ErrorKind::Closed
        );
        assert_eq!(
            lp.spawn(async { Ok(()) }).unwrap_err().kind(),
            ErrorKind::Closed
        );
        assert_eq!(lp.state(), LoopState::Closed);
    }
}

/// Spawns racing `shutdown` from another thread: each is either refused with Closed, or
/// accepted and then settles (value or Cancelled) — none is accepted and left to hang.
#[test]
fn spawns_racing_shutdown_are_refused_or_settle() {
    let rt = runtime(2);
    let lp = rt.event_loops()[1].clone();
    let (go_tx, go_rx) = mpsc::channel();
    let spawner = thread::spawn(move || {
        let mut accepted = Vec::new();
        let mut refused = 0usize;
        let mut announced = false;
        loop {
            match lp.spawn(async {
                braid::yield_now().await?;
                Ok(1u8)
            }) {
                Ok(t) => accepted.push(t),
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::Closed);
                    refused += 1;
                    if refused > 100 {
                        break;
                    }
                }
            }
            if !announced && accepted.len() >= 1000 {
                go_tx.send(()).unwrap();
                announced = true;
            }
        }
        (accepted, refused)
    });
    go_rx.recv_timeout(WAIT).unwrap();
    rt.shutdown(WAIT).unwrap();
    let (accepted, refused) = spawner.join().unwrap();
    assert!(refused > 100);
    let n = accepted.len();
    let mut settled = 0;
    for t in accepted {
        match join_from_foreign_thread(t, WAIT) {
            Some(Ok(1)) => settled += 1,
            Some(Err(e)) if e.is_cancelled() || e.kind() == ErrorKind::Closed => settled += 1,
            other => panic!("an accepted task did not settle properly: {other:?}"),
        }
    }
    assert_eq!(settled, n);
}

/// Callbacks racing `shutdown`: each accepted callback either runs or is reported to the
/// loop's exception handler as never run — none disappears silently.
#[test]
fn callbacks_racing_shutdown_run_or_are_reported() {
    let rt = runtime(2);
    let lp = rt.event_loops()[0].clone();
    let reports = Arc::new(Mutex::new(Vec::new()));
    let rp = reports.clone();
    lp.set_exception_handler(move |ctx| rp.lock().unwrap().push(ctx.message.clone()));
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let (go_tx, go_rx) = mpsc::channel();
    let submitter = thread::spawn(move || {
        let mut accepted = 0usize;
        loop {
            let r = r.clone();
            match lp.call_soon_threadsafe(move || {
                r.fetch_add(1, Ordering::SeqCst);
            }) {
                Ok(_) => accepted += 1,
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::Closed);
                    break;
                }
            }
            if accepted == 1000 {
                go_tx.send(()).unwrap();
            }
        }
        accepted
    });
    go_rx.recv_timeout(WAIT).unwrap();
    rt.shutdown(WAIT).unwrap();
    let accepted = submitter.join().unwrap();
    assert_eq!(
        Arc::strong_count(&ran),
        1,
        "every closure, run, never run or refused, was dropped"
    );
    let ran = ran.load(Ordering::SeqCst);
    assert!(ran <= accepted);
    if ran < accepted {
        let reports = reports.lock().unwrap();
        assert!(
            reports.iter().any(|m| m.contains("never ran")),
            "{} accepted callbacks never ran and nothing was reported (reports: {reports:?})",
            accepted - ran
        );
    }
}

/// Shutdown cancels the tasks left, and their cleanup (which may await) runs before
/// `shutdown` returns Ok: for a task on the worker loops and a `spawn_local` task pinned to
/// the host loop.
#[test]
fn shutdown_cancels_tasks_left_and_their_cleanup_runs() {
    let rt = runtime(2);
    let shared_cleanup = Arc::new(AtomicBool::new(false));
    let local_cleanup = Arc::new(AtomicBool::new(false));
    let (sc, lc) = (shared_cleanup.clone(), local_cleanup.clone());
    let shared = rt
        .run_until_complete(async move {
            let started: Promise<()> = braid::create_future();
            let s = started.clone();
            let shared = braid::create_task(async move {
                s.set_result(())?;
                match braid::sleep(LONG).await {
                    Err(e) => {
                        braid::sleep(Duration::from_millis(5)).await?;
                        sc.store(true, Ordering::SeqCst);
                        Err(e)
                    }
                    Ok(()) => Ok(()),
                }
            });
            let local_started: Promise<()> = braid::create_future();
            let ls = local_started.clone();
            let _local = braid::spawn_local(async move {
                ls.set_result(())?;
                let r = braid::sleep(LONG).await;
                if r.as_ref().is_err_and(|e| e.is_cancelled()) {
                    braid::yield_now().await?;
                    lc.store(true, Ordering::SeqCst);
                }
                r
            });
            started.await?;
            local_started.await?;
            Ok(shared)
        })
        .unwrap();
    rt.shutdown(WAIT).unwrap();
    assert!(
        shared_cleanup.load(Ordering::SeqCst),
        "the shared task's cleanup did not run"
    );
    assert!(
        local_cleanup.load(Ordering::SeqCst),
        "the host-pinned task's cleanup did not run"
    );
    let err = join_from_foreign_thread(shared, WAIT)
        .expect("settled")
        .unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");
}

/// A task that refuses to finish (it catches every cancellation and sleeps again) makes
/// `shutdown` return a Timeout error naming it, after about the timeout; its handle then
/// settles as Cancelled.
#[test]
fn shutdown_with_a_refusing_task_times_out_naming_it() {
    let rt = runtime(2);
    let (tx, rx) = mpsc::channel();
    let stubborn = rt
        .event_loop()
        .spawn(async move {
            tx.send(()).unwrap();
            loop {
                let _ = braid::sleep(Duration::from_millis(10)).await;
            }
            #[allow(unreachable_code)]
            Ok(())
        })
        .unwrap();
    stubborn.set_name("stubborn-sleeper");
    rx.recv_timeout(WAIT).unwrap();
    let timeout = Duration::from_millis(300);
    let start = Instant::now();
    let err = rt.shutdown(timeout).unwrap_err();
    let took = start.elapsed();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.to_string().contains("stubborn-sleeper"), "{err}");
    assert!(took >= timeout, "shutdown gave up after {took:?}");
    assert!(
        took < timeout + Duration::from_secs(3),
        "shutdown took {took:?}"
    );
    let joined =
        join_from_foreign_thread(stubborn, WAIT).expect("the stubborn task's handle settled");
    assert!(joined.unwrap_err().is_cancelled());
}

/// A task stuck on a future foreign to braid (which cannot see the cancel request) also makes
/// `shutdown` time out naming it, and its foreign joiner still settles.
#[test]
fn shutdown_with_a_task_on_a_foreign_future_times_out_and_its_joiner_settles() {
    let rt = runtime(2);
    let (tx, rx) = mpsc::channel();
    let deaf = rt
        .event_loop()
        .spawn(async move {
            tx.send(()).unwrap();
            std::future::pending::<()>().await;
            Ok(())
        })
        .unwrap();
    deaf.set_name("deaf-task");
    rx.recv_timeout(WAIT).unwrap();
    let (jtx, jrx) = mpsc::channel();
    let joiner = thread::spawn(move || jtx.send(futures::executor::block_on(deaf)).unwrap());
    let err = rt.shutdown(Duration::from_millis(200)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(err.to_string().contains("deaf-task"), "{err}");
    let joined = jrx.recv_timeout(WAIT).expect("the foreign joiner settled");
    assert!(joined.unwrap_err().is_cancelled());
    joiner.join().unwrap();
}

/// A timed-out shutdown still stops and joins loop threads that are not blocked: none of
/// them is reported busy, and none is left running (checked over a few runtimes, as the
/// failure depends on how fast the loops exit).
#[test]

fn timed_out_shutdown_still_joins_idle_loop_threads() {
    for round in 0..4 {
        let prefix = format!("sdjoin{round}");
        let rt = Runtime::builder()
            .workers(2)
            .thread_name(prefix.clone())
            .build()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        rt.event_loop()
            .spawn(async move {
                tx.send(()).unwrap();
                loop {
                    let _ = braid::sleep(Duration::from_millis(10)).await;
                }
                #[allow(unreachable_code)]
                Ok(())
            })
            .unwrap();
        rx.recv_timeout(WAIT).unwrap();
        let err = rt.shutdown(Duration::from_millis(100)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        let left: Vec<_> = thread_names()
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect();
        assert!(
            !err.to_string().contains("loop threads still busy"),
            "round {round}: {err}"
        );
        assert!(
            left.is_empty(),
            "round {round}: loop threads left running after shutdown returned: {left:?}"
        );
    }
}

/// A `Task` awaited from a foreign thread with `futures::executor::block_on` settles as
/// Cancelled when the runtime shuts down, instead of hanging.
#[test]
fn foreign_block_on_join_settles_after_shutdown() {
    let rt = runtime(2);
    let (tx, rx) = mpsc::channel();
    let t = rt
        .event_loop()
        .spawn(async move {
            tx.send(()).unwrap();
            braid::sleep(LONG).await?;
            Ok("woke")
        })
        .unwrap();
    rx.recv_timeout(WAIT).unwrap();
    let (jtx, jrx) = mpsc::channel();
    let joiner = thread::spawn(move || jtx.send(futures::executor::block_on(t)).unwrap());
    rt.shutdown(WAIT).unwrap();
    let joined = jrx.recv_timeout(WAIT).expect("the foreign join settled");
    assert!(joined.unwrap_err().is_cancelled());
    joiner.join().unwrap();
}

/// `Builder::workers(0)` is an error (InvalidInput), not a runtime without loops.
#[test]
fn zero_workers_is_an_error() {
    let err = Runtime::builder().workers(0).build().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

/// Dropping a runtime with many pending tasks (sleeping, awaiting a promise never set,
/// queued and never started, pinned to the host loop) returns promptly, and the tasks'
/// handles all settle as Cancelled.
#[test]
fn dropping_a_runtime_with_pending_tasks_is_prompt() {
    let rt = runtime(2);
    let lp = rt.event_loop();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let t = if i % 2 == 0 {
            lp.spawn(async { braid::sleep(LONG).await.map(|()| 0) })
                .unwrap()
        } else {
            let never: Promise<u32> = Promise::new();
            lp.spawn(async move { never.await }).unwrap()
        };
        tasks.push(t);
    }
    rt.run_until_complete(async {
        let never: Promise<u32> = braid::create_future();
        let _local = braid::spawn_local(async move { never.await });
        braid::yield_now().await
    })
    .unwrap();
    let start = Instant::now();
    drop(rt);
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "dropping the runtime took {took:?}"
    );
    for t in tasks {
        let r = join_from_foreign_thread(t, WAIT).expect("settled");
        assert!(r.unwrap_err().is_cancelled());
    }
}

/// A task created while the runtime shuts down (here by a cancelled task's cleanup) comes
/// back already finished with a Closed error instead of being accepted and lost.
#[test]
fn create_task_during_shutdown_returns_a_closed_task() {
    let rt = runtime(2);
    let (tx, rx) = mpsc::channel();
    let (started_tx, started_rx) = mpsc::channel();
    rt.event_loop()
        .spawn(async move {
            started_tx.send(()).unwrap();
            let r = braid::sleep(LONG).await;
            let late = braid::create_task(async { Ok(1) });
            tx.send(late).unwrap();
            r
        })
        .unwrap();
    started_rx.recv_timeout(WAIT).unwrap();
    rt.shutdown(WAIT).unwrap();
    let late = rx.recv_timeout(WAIT).expect("the cleanup ran");
    assert!(late.done(), "a task created during shutdown is pending");
    let err = join_from_foreign_thread(late, WAIT)
        .expect("settled")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed);
}

/// A task pinned to another thread's host loop that the thread is not running is not waited
/// for: only that thread could run its cleanup, and it cannot run the loop once the runtime is
/// shut down. The shutdown returns at once, reports the task to that loop's exception handler,
/// and the task finishes, Cancelled, when the thread exits, where a foreign thread joining it
/// settles. (The shutdown used to wait out its whole timeout and then fail, naming the task.)
#[test]
fn a_task_pinned_to_another_threads_idle_host_loop_is_left_to_that_thread() {
    let rt = Arc::new(runtime(1));
    let (pinned_tx, pinned_rx) = mpsc::channel();
    let (exit_tx, exit_rx) = mpsc::channel::<()>();
    let in_thread = rt.clone();
    let host_thread = thread::spawn(move || {
        let pinned = in_thread.run_until_complete(async {
            let pinned = braid::spawn_local(async {
                braid::sleep(LONG).await?;
                Ok(())
            });
            Ok((braid::get_running_loop(), pinned))
        });
        drop(in_thread);
        pinned_tx.send(pinned.unwrap()).unwrap();
        exit_rx.recv().unwrap();
    });
    let (host, pinned) = pinned_rx.recv().unwrap();
    let reports = Arc::new(Mutex::new(Vec::new()));
    let seen = reports.clone();
    host.set_exception_handler(move |ctx| seen.lock().unwrap().push(ctx.message.clone()));
    let rt = Arc::try_unwrap(rt).expect("the host's thread let go of the runtime");

    let timeout = Duration::from_secs(60);
    let started = Instant::now();
    rt.shutdown(timeout).unwrap();
    assert!(started.elapsed() < timeout / 2, "{:?}", started.elapsed());
    let name = pinned.name();
    let reports = reports.lock().unwrap().clone();
    assert!(
        reports.iter().any(|m| m
            .contains("finish when that thread next enters a host loop or exits")
            && m.contains(&name)),
        "{reports:?}"
    );
    assert!(!pinned.done());

    let (joined_tx, joined_rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = joined_tx.send(futures::executor::block_on(pinned));
    });
    exit_tx.send(()).unwrap();
    host_thread.join().unwrap();
    let joined = joined_rx.recv_timeout(WAIT).unwrap().unwrap_err();
    assert!(joined.is_cancelled(), "{joined:?}");
    assert_eq!(joined.message(), Some("the event loop closed"));
}

/// A shutdown that times out on a stuck loop finishes the tasks left in that loop's queue
/// itself. If the loop comes unstuck while the shutdown is dropping one of them, the loop
/// must leave that task alone, and go on to exit and close as a loop does. (It used to take up
/// the task the shutdown was finishing, from another thread; a debug build's assertion caught
/// it in the loop thread, which died there, unwinding instead of closing.)
#[test]
fn a_loop_coming_unstuck_skips_the_queued_task_a_shutdown_is_finishing() {
    /// Says on drop whether its thread was unwinding from a panic.
    struct TellOnDrop(mpsc::Sender<bool>);
    impl Drop for TellOnDrop {
        fn drop(&mut self) {
            let _ = self.0.send(thread::panicking());
        }
    }
    /// Dropped with the queued task's future, on the shutdown's thread: it lets the stuck
    /// callback go on, then waits until the loop drops its timer (as it closes, or as its
    /// thread unwinds).
    struct UnstickOnDrop {
        unstick: mpsc::Sender<()>,
        timer_dropped: mpsc::Receiver<bool>,
        timer_dropped_unwinding: Arc<Mutex<Option<bool>>>,
    }
    impl Drop for UnstickOnDrop {
        fn drop(&mut self) {
            let _ = self.unstick.send(());
            *self.timer_dropped_unwinding.lock().unwrap() =
                self.timer_dropped.recv_timeout(WAIT).ok();
        }
    }

    let rt = runtime(1);
    let (unstick_tx, unstick_rx) = mpsc::channel::<()>();
    let (timer_dropped_tx, timer_dropped_rx) = mpsc::channel();
    let timer_dropped_unwinding = Arc::new(Mutex::new(None));
    let (queued_tx, queued_rx) = mpsc::channel();
    let guard = UnstickOnDrop {
        unstick: unstick_tx,
        timer_dropped: timer_dropped_rx,
        timer_dropped_unwinding: timer_dropped_unwinding.clone(),
    };
    let timer_guard = TellOnDrop(timer_dropped_tx);
    // A stuck callback, not a stuck task: after a task the loop looks for messages (the
    // shutdown's ring) before it takes up the next, but after its callbacks it goes straight
    // on to its queued tasks.
    rt.event_loop()
        .call_soon_threadsafe(move || {
            // A task queued on the only loop, and a timer that never fires.
            let finishing = braid::create_task(async move {
                let _guard = guard;
                Ok(())
            });
            braid::call_later(LONG, move || drop(timer_guard));
            queued_tx.send(finishing).unwrap();
            // Stuck until the shutdown drops the task's future.
            let _ = unstick_rx.recv_timeout(WAIT);
        })
        .unwrap();
    let finishing = queued_rx.recv_timeout(WAIT).unwrap();

    let err = rt.shutdown(Duration::from_millis(100)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert_eq!(
        *timer_dropped_unwinding.lock().unwrap(),
        Some(false),
        "the unstuck loop closed (dropping its timer), not unwinding from a panic"
    );
    let joined = join_from_foreign_thread(finishing, WAIT).expect("the finished task settled");
    assert!(joined.unwrap_err().is_cancelled());
}

/// A long-lived thread does not keep the host loop of a runtime shut down from elsewhere
/// until it exits: the next time it enters a host loop (of any runtime) it closes that one,
/// and the task pinned there, left to it by the shutdown, finishes Cancelled then, while the
/// thread lives on. (It used to wait for the thread's exit, with the runtime kept alive.)
#[test]
fn a_shut_down_runtimes_host_loop_closes_when_its_thread_next_enters_a_loop() {
    let rt = Arc::new(runtime(1));
    let (pinned_tx, pinned_rx) = mpsc::channel();
    let (go_on_tx, go_on_rx) = mpsc::channel::<()>();
    let (next_tx, next_rx) = mpsc::channel();
    let (exit_tx, exit_rx) = mpsc::channel::<()>();
    let in_thread = rt.clone();
    let long_lived = thread::spawn(move || {
        let pinned = in_thread.run_until_complete(async {
            Ok(braid::spawn_local(async {
                braid::sleep(LONG).await?;
                Ok(())
            }))
        });
        drop(in_thread);
        pinned_tx.send(pinned.unwrap()).unwrap();
        go_on_rx.recv().unwrap();
        // A new runtime, driven from this thread.
        let other = runtime(1);
        next_tx
            .send(other.run_until_complete(async { Ok(7) }))
            .unwrap();
        other.shutdown(WAIT).unwrap();
        exit_rx.recv().unwrap();
    });
    let pinned = pinned_rx.recv().unwrap();
    Arc::try_unwrap(rt)
        .expect("the thread let go of the runtime")
        .shutdown(WAIT)
        .unwrap();
    assert!(!pinned.done(), "left to its thread by the shutdown");
    let (joined_tx, joined_rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = joined_tx.send(futures::executor::block_on(pinned));
    });

    go_on_tx.send(()).unwrap();
    assert_eq!(next_rx.recv_timeout(WAIT).unwrap().unwrap(), 7);
    let joined = joined_rx
        .recv_timeout(WAIT)
        .expect("the pinned task settled while its thread lives")
        .unwrap_err();
    assert!(joined.is_cancelled(), "{joined:?}");
    assert_eq!(joined.message(), Some("the event loop closed"));
    exit_tx.send(()).unwrap();
    long_lived.join().unwrap();
}

/// `shutdown(Duration::MAX)` has no limit for the default thread pool either: a `to_thread`
/// job running longer than a second finishes and the shutdown is Ok. The pool used to get
/// one second, then a Timeout naming it, its thread never joined.
#[test]
fn shutdown_without_a_limit_waits_for_a_running_default_pool_job() {
    let rt = runtime(1);
    let (started_tx, started) = mpsc::channel();
    let finished = Arc::new(AtomicBool::new(false));
    let _job = {
        let finished = finished.clone();
        rt.event_loop()
            .spawn(async move {
                braid::to_thread(move || {
                    started_tx.send(()).unwrap();
                    // The job's own blocking work, longer than the old one-second allowance.
                    thread::sleep(Duration::from_millis(1_500));
                    finished.store(true, Ordering::SeqCst);
                })
                .await
            })
            .unwrap()
    };
    started.recv_timeout(WAIT).expect("the job started");
    let outcome = rt.shutdown(Duration::MAX);
    assert!(outcome.is_ok(), "{outcome:?}");
    assert!(finished.load(Ordering::SeqCst));
}

/// `shutdown(Duration::ZERO)` with the default pool started but idle is Ok: the idle pool
/// threads get the loops' grace to leave, instead of a false "a job still running".
#[test]
fn shutdown_zero_with_an_idle_default_pool_is_ok() {
    let rt = runtime(1);
    rt.run_until_complete(async { braid::to_thread(|| 1).await })
        .unwrap();
    let outcome = rt.shutdown(Duration::ZERO);
    assert!(outcome.is_ok(), "{outcome:?}");
}

/// A `call_soon_threadsafe` callback accepted before `shutdown` began runs, as in asyncio,
/// whose `run` drives its loop through the teardown before closing it; it used to be
/// reported as never run (in most of twenty rounds).
#[test]
fn a_callback_accepted_before_shutdown_runs() {
    for round in 0..20 {
        let rt = runtime(1);
        let lp = rt.event_loop();
        let reports = Arc::new(AtomicUsize::new(0));
        {
            let reports = reports.clone();
            lp.set_exception_handler(move |_| {
                reports.fetch_add(1, Ordering::SeqCst);
            });
        }
        let ran = Arc::new(AtomicBool::new(false));
        {
            let ran = ran.clone();
            lp.call_soon_threadsafe(move || ran.store(true, Ordering::SeqCst))
                .unwrap();
        }
        rt.shutdown(WAIT).unwrap();
        assert!(
            ran.load(Ordering::SeqCst),
            "round {round}: the callback never ran"
        );
        assert_eq!(reports.load(Ordering::SeqCst), 0, "round {round}");
    }
}

/// A `run_coroutine_threadsafe` future whose coroutine is stuck in a step on its loop when a
/// shutdown times out settles Cancelled at that shutdown, not whenever the loop comes unstuck
/// (API.md: every `ConcurrentFuture` still pending at shutdown settles); what the coroutine
/// returns after all is dropped. It stayed pending until the loop came unstuck, so a waiter
/// without a timeout could wait for good.
#[test]
fn a_coroutine_stuck_on_its_loop_has_its_future_settled_by_a_timed_out_shutdown() {
    /// Tells the test when it is dropped.
    struct LateOutput(mpsc::Sender<()>);
    impl Drop for LateOutput {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }
    let rt = runtime(1);
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (dropped_tx, dropped_rx) = mpsc::channel();
    let stuck = rt
        .event_loop()
        .run_coroutine_threadsafe(async move {
            started_tx.send(()).unwrap();
            // Blocks the loop thread: no await point where the shutdown's cancel could land.
            let _ = release_rx.recv_timeout(WAIT);
            Ok(LateOutput(dropped_tx))
        })
        .unwrap();
    started_rx.recv_timeout(WAIT).unwrap();
    let err = rt.shutdown(Duration::from_millis(200)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(stuck.done(), "the future still waits for the stuck loop");
    assert!(stuck.cancelled());
    // As `concurrent.futures`: `exception()` of a cancelled future raises the cancel.
    let error = stuck.exception(Some(Duration::ZERO)).unwrap_err();
    assert!(error.is_cancelled(), "{error}");
    release_tx.send(()).unwrap();
    dropped_rx
        .recv_timeout(WAIT)
        .expect("the output the coroutine returned after the shutdown is dropped");
    assert!(
        stuck.cancelled(),
        "the late output did not replace the cancel"
    );
}

/// A `run_coroutine_threadsafe` future cancelled before its coroutine started, whose task a
/// shutdown then finishes unrun, stays cancelled for `cancel_and_wait`: the cancel stopped
/// it, not the shutdown. It gave `Completed(Err(Closed))`, as for work the shutdown refused.
#[test]
fn a_coroutine_cancelled_before_it_started_stays_cancelled_through_a_shutdown() {
    let rt = runtime(1);
    let (blocked_tx, blocked_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    // Holds the only loop, so that the coroutine below stays queued.
    let _blocker = rt
        .event_loop()
        .spawn(async move {
            blocked_tx.send(()).unwrap();
            let _ = release_rx.recv_timeout(WAIT);
            Ok(())
        })
        .unwrap();
    blocked_rx.recv_timeout(WAIT).unwrap();
    let fut = rt
        .event_loop()
        .run_coroutine_threadsafe(async { Ok(1u8) })
        .unwrap();
    assert!(fut.cancel());
    let err = rt.shutdown(Duration::from_millis(100)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    release_tx.send(()).unwrap();
    let outcome = fut.cancel_and_wait(Some(WAIT));
    assert!(
        matches!(outcome, braid::bridge::CancelOutcome::Cancelled),
        "{outcome:?}"
    );
}

/// Counts its wakes: a joiner's waker seen from outside.
struct CountingWaker(AtomicUsize);

impl std::task::Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A `Task` handle awaited outside the runtime, whose task is stuck in a step on its loop when
/// a shutdown times out, stops waiting at that shutdown with Cancelled, as a
/// `run_coroutine_threadsafe` future does: one joiner that was already waiting is woken, one
/// that looks afterwards is answered at once. Both waited for as long as the loop stayed
/// stuck. What the task returns after all is dropped with its handle.
#[test]
fn a_task_stuck_on_its_loop_releases_its_joiners_at_a_timed_out_shutdown() {
    use std::future::Future;
    /// Tells the test when it is dropped.
    struct LateOutput(mpsc::Sender<()>);
    impl Drop for LateOutput {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }
    let rt = runtime(2);
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Arc::new(Mutex::new(release_rx));
    let (dropped_tx, dropped_rx) = mpsc::channel();
    // Two tasks, each blocking one loop thread: no await point where the cancel could land.
    let mut stuck: Vec<Task<LateOutput>> = (0..2)
        .map(|_| {
            let (started_tx, release_rx, dropped_tx) =
                (started_tx.clone(), release_rx.clone(), dropped_tx.clone());
            rt.event_loop()
                .spawn(async move {
                    started_tx.send(()).unwrap();
                    let _ = release_rx.lock().unwrap().recv_timeout(WAIT);
                    Ok(LateOutput(dropped_tx))
                })
                .unwrap()
        })
        .collect();
    for _ in 0..2 {
        started_rx.recv_timeout(WAIT).unwrap();
    }
    let mut looks_later = stuck.pop().unwrap();
    let mut waiting = stuck.pop().unwrap();
    let wakes = Arc::new(CountingWaker(AtomicUsize::new(0)));
    let waker = std::task::Waker::from(wakes.clone());
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(std::pin::Pin::new(&mut waiting).poll(&mut cx).is_pending());

    let err = rt.shutdown(Duration::from_millis(200)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert_eq!(
        wakes.0.load(Ordering::SeqCst),
        1,
        "the waiting joiner was not woken by the shutdown"
    );
    for (joiner, task) in [("waiting", &mut waiting), ("later", &mut looks_later)] {
        match std::pin::Pin::new(task).poll(&mut cx) {
            std::task::Poll::Ready(Err(e)) => assert!(e.is_cancelled(), "{joiner}: {e}"),
            std::task::Poll::Ready(Ok(_)) => panic!("{joiner}: a value from a stuck task"),
            std::task::Poll::Pending => panic!("the {joiner} joiner still waits"),
        }
    }
    for _ in 0..2 {
        release_tx.send(()).unwrap();
    }
    drop((waiting, looks_later));
    for _ in 0..2 {
        dropped_rx
            .recv_timeout(WAIT)
            .expect("the output a task returned after the shutdown is dropped");
    }
}

/// A spawn refused after shutdown is the caller's error (`EventLoop::spawn` returns Closed)
/// and nothing more: no "Task exception was never retrieved" report of the task it never
/// ran. Each refusal printed one, and a hyper server's executor, which spawns a background
/// future per connection, printed one per future refused while it shut down.
#[test]
fn a_refused_spawn_is_not_reported_as_an_unretrieved_exception() {
    let rt = runtime(1);
    let lp = rt.event_loop();
    let reports = Arc::new(Mutex::new(Vec::new()));
    let seen = reports.clone();
    lp.set_exception_handler(move |ctx| seen.lock().unwrap().push(ctx.message.clone()));
    // The handler works: a failed detached task is reported to it.
    drop(
        lp.spawn(async { Err::<(), _>(braid::Error::new(ErrorKind::Io, "boom")) })
            .unwrap(),
    );
    assert!(
        common::eventually(WAIT, || !reports.lock().unwrap().is_empty()),
        "the failed task was not reported"
    );
    reports.lock().unwrap().clear();
    rt.shutdown(WAIT).unwrap();
    for _ in 0..3 {
        let refused = lp.spawn(async { Ok(()) }).unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::Closed);
    }
    assert_eq!(*reports.lock().unwrap(), Vec::<String>::new());
}

// --- A runtime shut down or dropped inside another runtime's loop ---

/// Counts its drops: the future of a task that holds it has been dropped once it counts 1.
struct CountDrop(Arc<AtomicUsize>);

impl Drop for CountDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A runtime `a` with a task left asleep on this thread's host loop of it: the drops of the
/// task's future, whether its code after the await ran, what that host loop reported to its
/// exception handler, and where a foreign thread waiting for the task sends its result.
struct LeftOnTheHost {
    a: Runtime,
    dropped: Arc<AtomicUsize>,
    resumed: Arc<AtomicBool>,
    reports: Arc<Mutex<Vec<String>>>,
    waiter: mpsc::Receiver<braid::Result<()>>,
}

/// Runtime `a`, after a task pinned to this thread's host loop of it was left asleep there,
/// with a foreign thread already waiting for that task.
fn a_runtime_with_a_task_left_on_the_host() -> LeftOnTheHost {
    let a = runtime(1);
    let dropped = Arc::new(AtomicUsize::new(0));
    let resumed = Arc::new(AtomicBool::new(false));
    let reports = Arc::new(Mutex::new(Vec::new()));
    let pinned = a
        .run_until_complete({
            let (guard, resumed, seen) =
                (CountDrop(dropped.clone()), resumed.clone(), reports.clone());
            async move {
                braid::get_running_loop().set_exception_handler(move |ctx| {
                    seen.lock().unwrap().push(ctx.message.clone())
                });
                let asleep = Arc::new(AtomicBool::new(false));
                let task = braid::spawn_local({
                    let asleep = asleep.clone();
                    async move {
                        let _guard = guard;
                        let sleep = braid::sleep(LONG);
                        asleep.store(true, Ordering::SeqCst);
                        let slept = sleep.await;
                        resumed.store(true, Ordering::SeqCst);
                        slept
                    }
                });
                // Left in its sleep, not merely queued.
                while !asleep.load(Ordering::SeqCst) {
                    braid::yield_now().await?;
                }
                Ok(task)
            }
        })
        .unwrap();
    let (tx, waiter) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(futures::executor::block_on(pinned));
    });
    LeftOnTheHost {
        a,
        dropped,
        resumed,
        reports,
        waiter,
    }
}

/// A runtime shut down inside another runtime's `run_until_complete`, on the thread whose
/// host loop of it holds a `spawn_local` task, cannot run that host loop there (loops do not
/// nest): the task finishes Cancelled at once, its future dropped without resuming, its
/// waiter released, and the shutdown returns Ok well before its timeout, the other runtime
/// unharmed. It used to wait the whole timeout for the task and fail with a false Timeout
/// naming it (found by helper-51).
#[test]
fn shutdown_inside_another_runtimes_loop_settles_its_host_tasks_at_once() {
    let left = a_runtime_with_a_task_left_on_the_host();
    let b = runtime(1);
    let a = left.a;
    let (shut, took) = b
        .run_until_complete(async move {
            let begun = Instant::now();
            let shut = a.shutdown(Duration::from_secs(10));
            Ok((shut, begun.elapsed()))
        })
        .unwrap();
    assert!(shut.is_ok(), "{shut:?} after {took:?}");
    assert!(took < Duration::from_secs(5), "the shutdown took {took:?}");
    assert_eq!(left.dropped.load(Ordering::SeqCst), 1);
    assert!(!left.resumed.load(Ordering::SeqCst));
    let joined = left.waiter.recv_timeout(WAIT).expect("the waiter settled");
    assert!(joined.unwrap_err().is_cancelled());
    assert_eq!(*left.reports.lock().unwrap(), Vec::<String>::new());
    assert_eq!(b.run_until_complete(async { Ok(7) }).unwrap(), 7);
    b.shutdown(WAIT).unwrap();
}

/// Dropping a runtime inside another runtime's `run_until_complete`, on the thread whose
/// host loop of it holds a `spawn_local` task, is prompt as any drop is: the task finishes
/// Cancelled, its future dropped. It used to block the other runtime's loop for the drop's
/// whole timeout (5 s), then print a timeout report (found by helper-51).
#[test]
fn dropping_a_runtime_inside_another_runtimes_loop_is_prompt() {
    let left = a_runtime_with_a_task_left_on_the_host();
    let b = runtime(1);
    let a = left.a;
    let took = b
        .run_until_complete(async move {
            let begun = Instant::now();
            drop(a);
            Ok(begun.elapsed())
        })
        .unwrap();
    assert!(took < Duration::from_secs(2), "the drop took {took:?}");
    assert_eq!(left.dropped.load(Ordering::SeqCst), 1);
    assert!(!left.resumed.load(Ordering::SeqCst));
    let joined = left.waiter.recv_timeout(WAIT).expect("the waiter settled");
    assert!(joined.unwrap_err().is_cancelled());
    assert_eq!(*left.reports.lock().unwrap(), Vec::<String>::new());
    b.shutdown(WAIT).unwrap();
}

// --- Settings out of range ---

/// More workers than `Runtime::MAX_WORKERS` is an InvalidInput error naming the bound, as
/// zero is. `usize::MAX` used to panic ("capacity overflow") in `build` (found by
/// helper-51).
#[test]
fn workers_beyond_max_workers_is_invalid_input() {
    for n in [usize::MAX, Runtime::MAX_WORKERS + 1] {
        let err = Runtime::builder().workers(n).build().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{n}: {err}");
        assert!(err.to_string().contains("MAX_WORKERS"), "{n}: {err}");
    }
}

/// Set: this process is the child that builds a runtime of 2^40 workers.
const HUGE_WORKERS_SCENARIO: &str = "BRAID_TEST_HUGE_WORKERS";

/// A worker count too large to allocate a slot per loop for is an InvalidInput error, not
/// an abort of the process ("memory allocation of 8796093022208 bytes failed", found by
/// helper-51). Run again in a process of its own, so that an abort fails this test alone.
#[test]
fn a_workers_count_too_large_to_allocate_is_invalid_input_not_an_abort() {
    if std::env::var_os(HUGE_WORKERS_SCENARIO).is_some() {
        let err = Runtime::builder().workers(1 << 40).build().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
        println!("REFUSED");
        return;
    }
    let (ok, text) = common::rerun_in_child(
        "a_workers_count_too_large_to_allocate_is_invalid_input_not_an_abort",
        &[(HUGE_WORKERS_SCENARIO, "1")],
    );
    assert!(ok && text.contains("REFUSED"), "{text}");
}

/// A thread name with a NUL byte is an InvalidInput error from `build`. It used to panic
/// there ("thread name may not contain interior null bytes", from std; found by helper-51).
#[test]
fn a_thread_name_with_a_nul_byte_is_invalid_input() {
    let err = Runtime::builder()
        .workers(1)
        .thread_name("a\0b")
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("NUL"), "{err}");
}

/// `wait` on a task that a timed-out shutdown gave up while it was stuck in a step goes on
/// waiting for it, as documented, and is woken when the step completes after all: the
/// give-up took the waker `wait` had registered, and a later look did not register one, so
/// `wait` slept through the completion until its own timeout (found by helper-54).
#[test]
fn wait_on_a_task_given_up_by_a_shutdown_wakes_when_its_step_completes() {
    use std::future::Future;
    let rt = runtime(1);
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let stuck = rt
        .event_loop()
        .spawn(async move {
            started_tx.send(()).unwrap();
            // Blocks the loop thread: no await point where the cancel could land.
            let _ = release_rx.recv_timeout(WAIT);
            Ok(5u32)
        })
        .unwrap();
    started_rx.recv_timeout(WAIT).unwrap();
    let wakes = Arc::new(CountingWaker(AtomicUsize::new(0)));
    let waker = std::task::Waker::from(wakes.clone());
    let mut cx = std::task::Context::from_waker(&waker);
    let mut waiting = Box::pin(braid::wait(
        vec![stuck],
        None,
        braid::ReturnWhen::AllCompleted,
    ));
    assert!(waiting.as_mut().poll(&mut cx).is_pending());

    let err = rt.shutdown(Duration::from_millis(200)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    // Whether or not the give-up woke it, the task is not done: `wait` goes on waiting.
    assert!(waiting.as_mut().poll(&mut cx).is_pending());
    let before = wakes.0.load(Ordering::SeqCst);
    release_tx.send(()).unwrap();
    assert!(
        common::eventually(WAIT, || wakes.0.load(Ordering::SeqCst) > before),
        "wait was not woken when the step completed"
    );
    match waiting.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(Ok((done, pending))) => {
            assert_eq!((done.len(), pending.len()), (1, 0));
        }
        other => panic!("wait gave {other:?}"),
    }
}

/// After a shutdown that timed out on a loop stuck in a step, `call_soon_threadsafe` on that
/// loop fails with Closed, as every submission does after shutdown (API.md); it used to be
/// accepted, the callback running whenever the step ended. A callback the loop had accepted
/// before is not lost: the shutdown reports it to the loop's exception handler as never run,
/// and the loop, once unstuck, still exits and closes (without reporting it again).
#[test]
fn a_loop_stuck_past_a_timed_out_shutdown_refuses_callbacks_and_reports_those_it_held() {
    let rt = runtime(1);
    let lp = rt.event_loop();
    let (report_tx, reports) = mpsc::channel();
    lp.set_exception_handler(move |ctx| {
        let _ = report_tx.send(ctx.message.clone());
    });
    let (started_tx, started) = mpsc::channel();
    let (release_tx, release) = mpsc::channel::<()>();
    let _stuck = lp
        .run_coroutine_threadsafe(async move {
            started_tx.send(()).unwrap();
            // Blocks the only loop thread: no await point where the shutdown's cancel lands.
            let _ = release.recv_timeout(WAIT);
            Ok(())
        })
        .unwrap();
    started.recv_timeout(WAIT).unwrap();
    let (ran_tx, ran) = mpsc::channel();
    let held_ran = ran_tx.clone();
    lp.call_soon_threadsafe(move || held_ran.send("held").unwrap())
        .expect("accepted before the shutdown");

    let err = rt.shutdown(Duration::from_millis(200)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    let refused = lp.call_soon_threadsafe(move || ran_tx.send("late").unwrap());
    assert_eq!(
        refused.map(drop).map_err(|e| e.kind()),
        Err(ErrorKind::Closed),
        "a callback was accepted after the shutdown returned"
    );
    let report = reports
        .recv_timeout(WAIT)
        .expect("the held callback was reported");
    assert!(report.contains("1 callback(s) that never ran"), "{report}");

    release_tx.send(()).unwrap();
    // Nothing tells when the loop thread has closed its loop: its state does.
    assert!(
        common::eventually(WAIT, || lp.state() == LoopState::Closed),
        "the unstuck loop did not close"
    );
    assert_eq!(ran.try_recv(), Err(mpsc::TryRecvError::Disconnected));
    assert_eq!(
        reports.try_recv(),
        Err(mpsc::TryRecvError::Empty),
        "reported twice"
    );
}
