//! The loop side of the bridge (API.md "Executors", runtime/src/executor.rs):
//! `run_in_executor` on a `ThreadPool`, `to_thread` on the runtime's default pool (its size
//! and thread names), cancelling the awaiting task cancels a job that has not started, a
//! panicking job gives Panicked, `wrap_future` follows a `ConcurrentFuture` both ways, and
//! after `Runtime::shutdown` no default-pool thread is left. Scenarios follow CPython's
//! `test_asyncio/test_base_events.py` (`test_run_in_executor`, `test_run_in_executor_cancel`),
//! `test_asyncio/test_threads.py` (`test_to_thread`, `test_to_thread_exception`) and
//! `test_asyncio/test_futures.py` (`test_wrap_future`, `test_wrap_future_cancel`).

use braid::bridge::{ConcurrentFuture, ErrorKind, ThreadPool};
use braid::Runtime;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{runtime, threads_named, WAIT};

/// `run_in_executor` runs the job on the given pool and its value comes back to the task
/// (CPython `BaseEventLoopTests.test_run_in_executor`).
#[test]
fn run_in_executor_on_a_thread_pool() {
    let rt = runtime(2);
    let pool = Arc::new(
        ThreadPool::builder()
            .max_workers(2)
            .thread_name("rie")
            .build()
            .unwrap(),
    );
    let p = pool.clone();
    let task = rt
        .event_loop()
        .spawn(async move {
            let loop_thread = thread::current().id();
            let (name, job_thread) = braid::run_in_executor(&*p, || {
                let t = thread::current();
                (t.name().unwrap_or("").to_owned(), t.id())
            })
            .await?;
            // The executor is a trait object too.
            let dyn_exec: &dyn braid::bridge::Executor = &*p;
            let doubled = braid::run_in_executor(dyn_exec, || 21 * 2).await?;
            Ok((name, job_thread != loop_thread, doubled))
        })
        .unwrap();
    let (name, other_thread, doubled) = rt.run_until_complete(task).unwrap();
    assert!(name.starts_with("rie-"), "{name}");
    assert!(other_thread);
    assert_eq!(doubled, 42);
    // On the host loop (run_until_complete) too.
    let v = rt
        .run_until_complete(braid::run_in_executor(&*pool, || "host"))
        .unwrap();
    assert_eq!(v, "host");
    rt.shutdown(WAIT).unwrap();
    pool.shutdown(true, false);
}

/// `run_in_executor` on a shut-down pool gives its Closed error when awaited.
#[test]
fn run_in_executor_on_a_shut_down_pool_is_closed() {
    let rt = runtime(1);
    let pool = ThreadPool::new(1);
    pool.shutdown(true, false);
    let err = rt
        .run_until_complete(braid::run_in_executor(&pool, || 1))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed);
    rt.shutdown(WAIT).unwrap();
}

/// `to_thread` runs on the default pool, sized by `default_executor_threads` and named
/// `<thread_name>-blocking-<n>`: with one thread, two overlapping jobs run on that same
/// thread (CPython `ToThreadTests.test_to_thread`).
#[test]
fn to_thread_uses_the_default_pool() {
    let rt = Runtime::builder()
        .workers(2)
        .thread_name("xt")
        .default_executor_threads(1)
        .build()
        .unwrap();
    let lp = rt.event_loop();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let seen = seen.clone();
            lp.spawn(async move {
                braid::to_thread(move || {
                    thread::sleep(Duration::from_millis(30)); // the job's work
                    let t = thread::current();
                    seen.lock()
                        .unwrap()
                        .push((t.id(), t.name().unwrap_or("").to_owned()));
                })
                .await
            })
            .unwrap()
        })
        .collect();
    for t in tasks {
        rt.run_until_complete(t).unwrap();
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].0, seen[1].0,
        "two threads in a one-thread pool: {seen:?}"
    );
    assert_eq!(seen[0].1, "xt-blocking-1");
    rt.shutdown(WAIT).unwrap();
}

/// `to_thread` outside a braid event loop is an InvalidState error, not a panic.
#[test]
fn to_thread_outside_a_loop_is_invalid_state() {
    let err = futures::executor::block_on(braid::to_thread(|| 1)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidState);
}

/// Cancelling the task awaiting `run_in_executor` cancels a job that has not started: it
/// never runs (CPython `BaseEventLoopTests.test_run_in_executor_cancel`).
#[test]
fn cancelling_the_awaiting_task_cancels_an_unstarted_job() {
    let rt = runtime(2);
    let pool = Arc::new(ThreadPool::new(1));
    // The first job occupies the only pool thread until released.
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let first = pool.submit(move || {
        started_tx.send(()).unwrap();
        release_rx.recv().unwrap();
    });
    started_rx.recv_timeout(WAIT).unwrap();

    let ran = Arc::new(AtomicBool::new(false));
    let (submitted_tx, submitted_rx) = mpsc::channel();
    let (p, r) = (pool.clone(), ran.clone());
    let task = rt
        .event_loop()
        .spawn(async move {
            let job = braid::run_in_executor(&*p, move || r.store(true, Ordering::SeqCst));
            submitted_tx.send(()).unwrap();
            job.await
        })
        .unwrap();
    submitted_rx.recv_timeout(WAIT).unwrap();
    assert_eq!(pool.queued(), 1);
    assert!(task.cancel());
    let tref = task.as_ref();
    let err = rt.run_until_complete(task).unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    assert!(tref.cancelled());

    release_tx.send(()).unwrap();
    first.result(Some(WAIT)).unwrap();
    pool.shutdown(true, false); // every queued job has been taken off the queue by now
    assert!(!ran.load(Ordering::SeqCst), "the cancelled job ran");
    rt.shutdown(WAIT).unwrap();
}

/// Cancelling the task awaiting a job that is already running ends the task cancelled at
/// once; the job cannot be interrupted and runs to its end (asyncio: the concurrent future's
/// `cancel()` is refused, the task still gets `CancelledError`).
#[test]
fn cancelling_the_awaiting_task_leaves_a_running_job_running() {
    let rt = runtime(2);
    let pool = Arc::new(ThreadPool::new(1));
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (finished_tx, finished_rx) = mpsc::channel();
    let p = pool.clone();
    let task = rt
        .event_loop()
        .spawn(async move {
            braid::run_in_executor(&*p, move || {
                started_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                finished_tx.send(()).unwrap();
            })
            .await
        })
        .unwrap();
    started_rx.recv_timeout(WAIT).unwrap();
    assert!(task.cancel());
    let err = rt.run_until_complete(task).unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    assert!(
        finished_rx.try_recv().is_err(),
        "the job was not still running"
    );
    release_tx.send(()).unwrap();
    finished_rx
        .recv_timeout(WAIT)
        .expect("the running job ran to its end");
    pool.shutdown(true, false);
    rt.shutdown(WAIT).unwrap();
}

/// A panicking job gives a Panicked error with its message, through `run_in_executor` and
/// `to_thread` (CPython `ToThreadTests.test_to_thread_exception`).
#[test]
fn panicking_job_gives_panicked() {
    let rt = runtime(1);
    let pool = ThreadPool::new(1);
    let err = rt
        .run_until_complete(braid::run_in_executor(&pool, || -> u8 {
            panic!("pool job failed (expected by the test)")
        }))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked);
    assert!(
        err.message().is_some_and(|m| m.contains("pool job failed")),
        "{err}"
    );

    let err = rt
        .run_until_complete(async {
            braid::to_thread(|| -> u8 { panic!("thread job failed (expected by the test)") }).await
        })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked);
    assert!(
        err.message()
            .is_some_and(|m| m.contains("thread job failed")),
        "{err}"
    );
    // The loop and the pools carry on.
    assert_eq!(
        rt.run_until_complete(async { braid::to_thread(|| 3).await })
            .unwrap(),
        3
    );
    rt.shutdown(WAIT).unwrap();
}

/// `wrap_future` gives a Promise that settles as the ConcurrentFuture does: a value, an
/// error, a cancellation (CPython `BaseFutureTests.test_wrap_future`).
#[test]
fn wrap_future_follows_the_concurrent_future() {
    let rt = runtime(2);
    let pool = ThreadPool::new(1);
    let job = pool.submit(|| 9);
    let v = rt
        .run_until_complete(async move { braid::wrap_future(job).await })
        .unwrap();
    assert_eq!(v, 9);

    let (cf, completer) = ConcurrentFuture::<u8>::pair();
    let producer = thread::spawn(move || completer.set_exception(braid::Error::msg("bad")));
    let err = rt
        .run_until_complete(async move { braid::wrap_future(cf).await })
        .unwrap_err();
    assert_eq!(err.to_string(), "bad");
    producer.join().unwrap();

    let (cf, _completer) = ConcurrentFuture::<u8>::pair();
    let source = cf.clone();
    let (cancelled, err) = rt
        .run_until_complete(async move {
            let promise = braid::wrap_future(cf);
            let p = promise.clone();
            assert!(source.cancel());
            let r = promise.await;
            Ok((p.cancelled(), r))
        })
        .unwrap();
    assert!(cancelled, "the promise was not cancelled with its source");
    assert!(err.unwrap_err().is_cancelled());
    rt.shutdown(WAIT).unwrap();
}

/// Cancelling the Promise from `wrap_future` cancels the ConcurrentFuture behind it
/// (CPython `BaseFutureTests.test_wrap_future_cancel`).
#[test]
fn cancelling_the_promise_cancels_the_concurrent_future() {
    let rt = runtime(2);
    let (cf, completer) = ConcurrentFuture::<u8>::pair();
    let source = cf.clone();
    let task = rt
        .event_loop()
        .spawn(async move {
            let promise = braid::wrap_future(cf);
            Ok(promise.cancel())
        })
        .unwrap();
    assert!(rt.run_until_complete(task).unwrap());
    // The promise's done callback runs on its loop; block here until it reached the source.
    let err = source.result(Some(WAIT)).unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    assert!(source.cancelled());
    assert!(completer.is_cancelled());
    assert!(!completer.set_running_or_notify_cancel());
    rt.shutdown(WAIT).unwrap();
}

/// After `Runtime::shutdown` no default-pool thread is left.
#[test]
fn shutdown_leaves_no_default_pool_thread() {
    let rt = Runtime::builder()
        .workers(2)
        .thread_name("xb")
        .default_executor_threads(3)
        .build()
        .unwrap();
    let lp = rt.event_loop();
    let barrier = Arc::new(std::sync::Barrier::new(3));
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let b = barrier.clone();
            lp.spawn(async move {
                braid::to_thread(move || {
                    b.wait();
                })
                .await
            })
            .unwrap()
        })
        .collect();
    for t in tasks {
        rt.run_until_complete(t).unwrap();
    }
    // The pool's threads idle (keep-alive) until shutdown.
    assert_eq!(threads_named("xb-blocking").len(), 3);
    rt.shutdown(WAIT).unwrap();
    // A joined thread can linger in /proc for a moment after its join returned.
    let deadline = Instant::now() + WAIT;
    while !threads_named("xb-").is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(threads_named("xb-"), Vec::<String>::new());
}

/// `Runtime::shutdown` waits (within its timeout) for a default-pool job that is still
/// running, and leaves no pool thread behind; the task awaiting the job is cancelled.
#[test]
fn shutdown_waits_for_a_running_default_pool_job() {
    let rt = Runtime::builder()
        .workers(2)
        .thread_name("xw")
        .default_executor_threads(1)
        .build()
        .unwrap();
    let (started_tx, started_rx) = mpsc::channel();
    let finished = Arc::new(AtomicBool::new(false));
    let f = finished.clone();
    let fut = rt
        .event_loop()
        .run_coroutine_threadsafe(async move {
            braid::to_thread(move || {
                started_tx.send(()).unwrap();
                thread::sleep(Duration::from_millis(200)); // the job's work
                f.store(true, Ordering::SeqCst);
            })
            .await
        })
        .unwrap();
    started_rx.recv_timeout(WAIT).unwrap();
    rt.shutdown(WAIT).unwrap();
    assert!(
        finished.load(Ordering::SeqCst),
        "shutdown returned while the job ran"
    );
    assert!(fut.result(Some(WAIT)).unwrap_err().is_cancelled());
    let deadline = Instant::now() + WAIT;
    while !threads_named("xw-").is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(threads_named("xw-"), Vec::<String>::new());
}

/// A `run_in_executor` job still queued when its pool's `shutdown` cancels the queued jobs
/// ends Cancelled, as the pool's own `submit` futures do and as asyncio's await of it raises
/// `CancelledError`; it used to end `BrokenExecutor` (the job was dropped unrun).
#[test]
fn a_queued_job_cancelled_by_its_pools_shutdown_is_cancelled() {
    let rt = runtime(1);
    let pool = Arc::new(ThreadPool::new(1));
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let blocker = pool.submit(move || {
        started_tx.send(()).unwrap();
        let _ = release_rx.recv();
    });
    started_rx.recv_timeout(WAIT).expect("the blocker started");
    let ran = Arc::new(AtomicBool::new(false));
    let (queued_tx, queued_rx) = mpsc::channel();
    let task = {
        let (pool, ran) = (pool.clone(), ran.clone());
        rt.event_loop()
            .spawn(async move {
                let job = braid::run_in_executor(&*pool, move || ran.store(true, Ordering::SeqCst));
                queued_tx.send(()).unwrap();
                job.await
            })
            .unwrap()
    };
    queued_rx.recv_timeout(WAIT).expect("the job was submitted");
    assert_eq!(pool.queued(), 1);
    pool.shutdown(false, true);
    release_tx.send(()).unwrap();
    blocker.result(Some(WAIT)).unwrap();
    let outcome = rt.run_until_complete(task);
    assert!(
        matches!(&outcome, Err(e) if e.is_cancelled()),
        "expected Cancelled, got {outcome:?}"
    );
    assert!(!ran.load(Ordering::SeqCst), "a cancelled job ran");
}
