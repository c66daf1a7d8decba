//! `braid::bridge::ThreadPool` (API.md "Executors", bridge/src/pool.rs): growth up to
//! `max_workers`, idle threads leaving after the keep-alive, `submit` / `map` / `shutdown(wait,
//! cancel_futures)`, cancelling queued and running jobs, panicking jobs, thread names, submission
//! after shutdown, the bounded queue (`try_submit` -> `PoolFull`, blocking `submit`,
//! `submit_async`), a thread that cannot be spawned, `Executor::execute`, panics dropping a job's
//! value or captures, and `shutdown_timeout` from jobs. Scenarios follow CPython's
//! `Lib/test/test_concurrent_futures` (`test_thread_pool.py`, `executor.py`,
//! `test_shutdown.py`); each test names the one it follows where one applies.

use braid::bridge::{CancelOutcome, ConcurrentFuture, ErrorKind, Executor, PoolFull, ThreadPool};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{eventually, WAIT};

/// A pool of one worker and a queue of one slot: a job blocked on the worker and one queued
/// fill it.
fn one_worker_one_slot_pool() -> Arc<ThreadPool> {
    Arc::new(
        ThreadPool::builder()
            .max_workers(1)
            .queue_capacity(1)
            .build()
            .unwrap(),
    )
}

/// Occupies one pool thread until the returned sender is used (or dropped); returns once the
/// job is running.
fn block_one(pool: &ThreadPool) -> (ConcurrentFuture<()>, mpsc::Sender<()>) {
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let fut = pool.submit(move || {
        started_tx.send(()).unwrap();
        let _ = release_rx.recv();
    });
    started_rx
        .recv_timeout(WAIT)
        .expect("the blocker job started");
    (fut, release_tx)
}

/// The pool grows to exactly `max_workers` threads under blocking jobs that must run
/// together, and no further (CPython `ThreadPoolExecutorTest.test_max_workers` style).
#[test]
fn grows_up_to_max_workers() {
    const MAX: usize = 3;
    let pool = ThreadPool::builder().max_workers(MAX).build().unwrap();
    assert_eq!(pool.worker_count(), 0, "threads start on demand");
    // Every round of MAX jobs only finishes if MAX threads run them at once.
    let barrier = Arc::new(Barrier::new(MAX));
    let threads = Arc::new(Mutex::new(HashSet::new()));
    let futs: Vec<_> = (0..MAX * 3)
        .map(|_| {
            let (b, t) = (barrier.clone(), threads.clone());
            pool.submit(move || {
                t.lock().unwrap().insert(thread::current().id());
                b.wait();
            })
        })
        .collect();
    for f in &futs {
        f.result(Some(WAIT))
            .expect("jobs held by a barrier of max_workers all ran together");
    }
    assert_eq!(threads.lock().unwrap().len(), MAX);
    assert_eq!(pool.worker_count(), MAX);
    pool.shutdown(true, false);
}

/// Idle threads leave after the keep-alive; the pool starts new ones for later work.
#[test]
fn idle_threads_leave_after_keep_alive() {
    let pool = Arc::new(
        ThreadPool::builder()
            .max_workers(2)
            .keep_alive(Duration::from_millis(50))
            .build()
            .unwrap(),
    );
    let barrier = Arc::new(Barrier::new(2));
    let futs: Vec<_> = (0..2)
        .map(|_| {
            let (b, p) = (barrier.clone(), pool.clone());
            pool.submit(move || {
                b.wait();
                // Read while both jobs run: once they end, a 50 ms pause of the reader lets
                // both threads leave before it looks.
                let workers = p.worker_count();
                b.wait();
                workers
            })
        })
        .collect();
    for f in &futs {
        assert_eq!(f.result(Some(WAIT)).unwrap(), 2);
    }
    assert!(
        eventually(WAIT, || pool.worker_count() == 0),
        "idle threads still there: {pool:?}"
    );
    // Work after the threads left still runs.
    assert_eq!(pool.submit(|| 5).result(Some(WAIT)).unwrap(), 5);
    pool.shutdown(true, false);
    assert_eq!(pool.worker_count(), 0);
}

/// `submit` returns each job's value, and `map` yields results in input order even when
/// later items finish first (CPython `ExecutorTest.test_submit`, `test_map`).
#[test]
fn submit_and_map_return_values_in_order() {
    let pool = ThreadPool::new(4);
    let f = pool.submit(|| "hello".len());
    assert_eq!(f.result(Some(WAIT)).unwrap(), 5);
    let out: Vec<u64> = pool
        .map(
            |x: u64| {
                // Earlier items work longer, so they finish last.
                thread::sleep(Duration::from_millis(5 * (8 - x)));
                x * x
            },
            0..8,
        )
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(out, (0..8).map(|x| x * x).collect::<Vec<_>>());
    pool.shutdown(true, false);
}

/// `map` reports a panicking item as that item's Panicked error, in its place.
#[test]
fn map_reports_a_panicking_item_in_place() {
    let pool = ThreadPool::new(2);
    let out: Vec<_> = pool
        .map(
            |x: u32| {
                if x == 2 {
                    panic!("item two (expected by the test)");
                }
                x
            },
            0..4,
        )
        .collect();
    assert_eq!(out.len(), 4);
    assert_eq!(*out[1].as_ref().unwrap(), 1);
    assert_eq!(out[2].as_ref().unwrap_err().kind(), ErrorKind::Panicked);
    assert_eq!(*out[3].as_ref().unwrap(), 3);
}

/// `shutdown(wait=true, cancel_futures=false)` lets queued jobs run and returns only once
/// every thread finished (CPython `ThreadPoolShutdownTest.test_shutdown_wait` style).
#[test]
fn shutdown_wait_runs_queued_jobs_then_returns() {
    let pool = Arc::new(ThreadPool::new(1));
    let (blocker, release) = block_one(&pool);
    let ran = Arc::new(AtomicUsize::new(0));
    let queued: Vec<_> = (0..3)
        .map(|i| {
            let ran = ran.clone();
            pool.submit(move || {
                ran.fetch_add(1, Ordering::SeqCst);
                i
            })
        })
        .collect();
    assert_eq!(pool.queued(), 3);
    let (done_tx, done_rx) = mpsc::channel();
    let (p, r) = (pool.clone(), ran.clone());
    let shutter = thread::spawn(move || {
        p.shutdown(true, false);
        done_tx.send(r.load(Ordering::SeqCst)).unwrap();
    });
    // shutdown(wait) cannot return while the blocker runs (a bounded look, not a sync point).
    assert!(done_rx.recv_timeout(Duration::from_millis(100)).is_err());
    release.send(()).unwrap();
    let ran_when_returned = done_rx.recv_timeout(WAIT).expect("shutdown returned");
    assert_eq!(
        ran_when_returned, 3,
        "shutdown(wait) returned before the queued jobs ran"
    );
    shutter.join().unwrap();
    blocker.result(Some(WAIT)).unwrap();
    for (i, f) in queued.iter().enumerate() {
        assert_eq!(f.result(Some(WAIT)).unwrap(), i);
    }
    assert_eq!(pool.worker_count(), 0);
}

/// `shutdown(cancel_futures=true)` cancels queued jobs: they never run and their futures are
/// cancelled; the running job finishes (CPython `ThreadPoolShutdownTest.test_cancel_futures`).
#[test]
fn shutdown_cancel_futures_cancels_queued_jobs() {
    let pool = ThreadPool::new(1);
    let (blocker, release) = block_one(&pool);
    let ran = Arc::new(AtomicUsize::new(0));
    let queued: Vec<_> = (0..3)
        .map(|_| {
            let ran = ran.clone();
            pool.submit(move || {
                ran.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    pool.shutdown(false, true);
    for f in &queued {
        assert!(
            f.done(),
            "a queued job was not settled by shutdown(cancel_futures)"
        );
        assert!(f.cancelled());
        assert!(f.result(None).unwrap_err().is_cancelled());
    }
    release.send(()).unwrap();
    blocker.result(Some(WAIT)).unwrap();
    pool.shutdown(true, false);
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert_eq!(pool.worker_count(), 0);
}

/// A queued job that is cancelled never runs (CPython `FutureTests.test_cancel` through an
/// executor: `set_running_or_notify_cancel` refuses it).
#[test]
fn cancelled_queued_job_never_runs() {
    let pool = ThreadPool::new(1);
    let (blocker, release) = block_one(&pool);
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let f = pool.submit(move || r.store(true, Ordering::SeqCst));
    assert!(!f.running());
    assert!(f.cancel());
    assert!(f.cancelled());
    let after = pool.submit(|| 1);
    release.send(()).unwrap();
    blocker.result(Some(WAIT)).unwrap();
    // The job after it ran, so the pool went past the cancelled one.
    assert_eq!(after.result(Some(WAIT)).unwrap(), 1);
    pool.shutdown(true, false);
    assert!(!ran.load(Ordering::SeqCst));
    assert!(f.result(None).unwrap_err().is_cancelled());
}

/// A running job cannot be cancelled: `cancel()` is false, and `cancel_and_wait` waits for it
/// and gives its value.
#[test]
fn running_job_cannot_be_cancelled() {
    let pool = ThreadPool::new(1);
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let f = pool.submit(move || {
        started_tx.send(()).unwrap();
        release_rx.recv().unwrap();
        11
    });
    started_rx.recv_timeout(WAIT).unwrap();
    assert!(f.running());
    assert!(!f.cancel());
    assert!(!f.cancelled());
    let waiter = {
        let f = f.clone();
        thread::spawn(move || f.cancel_and_wait(Some(WAIT)))
    };
    release_tx.send(()).unwrap();
    match waiter.join().unwrap() {
        CancelOutcome::Completed(Ok(11)) => {}
        other => panic!("expected Completed(Ok(11)), got {other:?}"),
    }
    assert!(f.done() && !f.cancelled());
}

/// A panicking job gives a Panicked error carrying the message, and the pool keeps working
/// (CPython `ExecutorTest.test_map_exception` analogue for a panic).
#[test]
fn panicking_job_gives_panicked_with_message() {
    let pool = ThreadPool::new(1);
    let f = pool.submit(|| -> u8 { panic!("job exploded: {}", 42) });
    let err = f.result(Some(WAIT)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked);
    assert!(
        err.message()
            .is_some_and(|m| m.contains("job exploded: 42")),
        "message: {:?}",
        err.message()
    );
    assert_eq!(pool.submit(|| 3).result(Some(WAIT)).unwrap(), 3);
}

/// Pool threads are named `<name>-<n>` (CPython `ThreadPoolExecutorTest.test_thread_names_assigned`).
#[test]
fn thread_names_carry_the_pool_name() {
    let pool = ThreadPool::builder()
        .max_workers(2)
        .thread_name("tp-names")
        .build()
        .unwrap();
    let barrier = Arc::new(Barrier::new(2));
    let names: Vec<_> = (0..2)
        .map(|_| {
            let b = barrier.clone();
            pool.submit(move || {
                b.wait();
                thread::current().name().unwrap_or("").to_owned()
            })
        })
        .collect();
    let names: HashSet<String> = names
        .iter()
        .map(|f| f.result(Some(WAIT)).unwrap())
        .collect();
    assert_eq!(names.len(), 2);
    for n in &names {
        let suffix = n
            .strip_prefix("tp-names-")
            .unwrap_or_else(|| panic!("name {n:?}"));
        assert!(suffix.parse::<usize>().is_ok(), "name {n:?}");
    }
    // The default prefix.
    let default = ThreadPool::new(1);
    let n = default
        .submit(|| thread::current().name().unwrap_or("").to_owned())
        .result(Some(WAIT))
        .unwrap();
    assert!(n.starts_with("braid-pool-"), "{n}");
}

/// After shutdown, `submit` gives a future already failed with Closed, and `try_submit`,
/// `execute` and `submit_async` refuse with Closed (CPython
/// `ExecutorShutdownTest.test_run_after_shutdown`).
#[test]
fn submit_after_shutdown_is_closed() {
    let pool = ThreadPool::new(2);
    pool.shutdown(true, false);
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let f = pool.submit(move || r.store(true, Ordering::SeqCst));
    assert!(f.done(), "the future of a refused job must already be done");
    assert_eq!(f.result(None).unwrap_err().kind(), ErrorKind::Closed);
    assert_eq!(
        pool.try_submit(|| ()).unwrap_err().kind(),
        ErrorKind::Closed
    );
    assert_eq!(
        pool.execute(Box::new(|| ())).unwrap_err().kind(),
        ErrorKind::Closed
    );
    let err = futures::executor::block_on(pool.submit_async(|| ())).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed);
    assert!(!ran.load(Ordering::SeqCst));
    assert_eq!(pool.worker_count(), 0);
}

/// `try_submit` on a full bounded queue fails with `PoolFull` (downcast) without running the
/// job; after room is made it is accepted again.
#[test]
fn try_submit_on_full_queue_fails_with_pool_full() {
    let pool = ThreadPool::builder()
        .max_workers(1)
        .queue_capacity(2)
        .build()
        .unwrap();
    let (blocker, release) = block_one(&pool);
    let a = pool.try_submit(|| 1).unwrap();
    let b = pool.try_submit(|| 2).unwrap();
    assert_eq!(pool.queued(), 2);
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let err = pool
        .try_submit(move || r.store(true, Ordering::SeqCst))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Other);
    assert_eq!(
        err.downcast_ref::<PoolFull>(),
        Some(&PoolFull { capacity: 2 })
    );
    release.send(()).unwrap();
    blocker.result(Some(WAIT)).unwrap();
    assert_eq!(a.result(Some(WAIT)).unwrap(), 1);
    assert_eq!(b.result(Some(WAIT)).unwrap(), 2);
    assert_eq!(
        pool.try_submit(|| 3).unwrap().result(Some(WAIT)).unwrap(),
        3
    );
    pool.shutdown(true, false);
    assert!(!ran.load(Ordering::SeqCst), "a refused job ran");
}

/// On a full bounded queue `submit_async` (driven by `futures::executor::block_on`) waits
/// for room without failing, then queues the job, which runs.
#[test]
fn submit_async_waits_for_room() {
    let pool = one_worker_one_slot_pool();
    let (blocker, release) = block_one(&pool);
    let filler = pool.try_submit(|| "filler").unwrap();
    let (queued_tx, queued_rx) = mpsc::channel();
    let p = pool.clone();
    let submitter = thread::spawn(move || {
        let fut = futures::executor::block_on(p.submit_async(|| "waited")).unwrap();
        queued_tx.send(()).unwrap();
        fut.result(Some(WAIT))
    });
    // It cannot be queued while the queue is full (a bounded look, not a sync point).
    assert!(queued_rx.recv_timeout(Duration::from_millis(100)).is_err());
    assert_eq!(pool.queued(), 1);
    release.send(()).unwrap();
    queued_rx.recv_timeout(WAIT).expect("submit_async got room");
    assert_eq!(submitter.join().unwrap().unwrap(), "waited");
    assert_eq!(filler.result(Some(WAIT)).unwrap(), "filler");
    blocker.result(Some(WAIT)).unwrap();
}

/// On a full bounded queue the blocking `submit` waits for room, then the job runs.
#[test]
fn blocking_submit_waits_for_room() {
    let pool = one_worker_one_slot_pool();
    let (_blocker, release) = block_one(&pool);
    let _filler = pool.try_submit(|| ()).unwrap();
    let (queued_tx, queued_rx) = mpsc::channel();
    let p = pool.clone();
    let submitter = thread::spawn(move || {
        let fut = p.submit(|| 8);
        queued_tx.send(()).unwrap();
        fut.result(Some(WAIT))
    });
    assert!(queued_rx.recv_timeout(Duration::from_millis(100)).is_err());
    release.send(()).unwrap();
    queued_rx.recv_timeout(WAIT).expect("submit got room");
    assert_eq!(submitter.join().unwrap().unwrap(), 8);
}

/// A blocking `submit` waiting for room on a full queue is released by shutdown with a
/// Closed future instead of waiting forever.
#[test]
fn blocked_submit_is_released_by_shutdown() {
    let pool = one_worker_one_slot_pool();
    let (_blocker, release) = block_one(&pool);
    let _filler = pool.try_submit(|| ()).unwrap();
    let p = pool.clone();
    let (about_tx, about_rx) = mpsc::channel();
    let submitter = thread::spawn(move || {
        about_tx.send(()).unwrap();
        p.submit(|| 8).result(Some(WAIT))
    });
    about_rx.recv_timeout(WAIT).unwrap();
    // Either order must give Closed; this pause only makes "blocked in submit" the likely one.
    thread::sleep(Duration::from_millis(50));
    pool.shutdown(false, false);
    let out = submitter.join().unwrap();
    release.send(()).unwrap();
    assert_eq!(out.unwrap_err().kind(), ErrorKind::Closed);
}

/// When the OS refuses to start a thread, the submitted job fails with an error instead of
/// hanging its waiters (a pool whose stack size no thread can have).
#[test]
fn thread_spawn_failure_fails_the_job() {
    let pool = ThreadPool::builder()
        .max_workers(2)
        .stack_size(usize::MAX)
        .build()
        .unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let f = pool.submit(move || r.store(true, Ordering::SeqCst));
    let start = Instant::now();
    let err = f.result(Some(WAIT)).unwrap_err();
    assert!(!err.is_timeout(), "the job hung: {err}");
    assert!(start.elapsed() < WAIT);
    assert_eq!(err.kind(), ErrorKind::BrokenExecutor, "{err}");
    assert!(!ran.load(Ordering::SeqCst));
    assert!(pool.try_submit(|| ()).is_err());
    assert!(pool.execute(Box::new(|| ())).is_err());
    assert_eq!(pool.worker_count(), 0);
    assert_eq!(pool.queued(), 0);
}

/// `Executor::execute` runs a job (through the trait object `run_in_executor` takes), and a
/// panicking job does not kill the thread.
#[test]
fn executor_execute_runs_a_job() {
    let pool = ThreadPool::builder()
        .max_workers(1)
        .thread_name("tp-exec")
        .build()
        .unwrap();
    let exec: &dyn Executor = &pool;
    exec.execute(Box::new(|| panic!("execute job (expected by the test)")))
        .unwrap();
    let (tx, rx) = mpsc::channel();
    exec.execute(Box::new(move || {
        tx.send(thread::current().name().unwrap_or("").to_owned())
            .unwrap();
    }))
    .unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "tp-exec-1");
    pool.shutdown(true, false);
}

/// Dropping the pool does not cancel queued jobs: they still run, then the threads leave.
#[test]
fn dropping_the_pool_runs_queued_jobs() {
    let pool = ThreadPool::new(1);
    let (blocker, release) = block_one(&pool);
    let queued = pool.submit(|| 4);
    drop(pool);
    release.send(()).unwrap();
    blocker.result(Some(WAIT)).unwrap();
    assert_eq!(queued.result(Some(WAIT)).unwrap(), 4);
}

/// `shutdown(wait=true)` called from inside one of the pool's own jobs returns instead of
/// joining its own thread, and later submissions are refused.
#[test]
fn shutdown_from_inside_a_job_returns() {
    let pool = Arc::new(ThreadPool::new(2));
    let p = pool.clone();
    let f = pool.submit(move || {
        p.shutdown(true, false);
        p.submit(|| ()).result(None).map_err(|e| e.kind())
    });
    assert_eq!(f.result(Some(WAIT)).unwrap(), Err(ErrorKind::Closed));
    pool.shutdown(true, false);
    assert_eq!(pool.worker_count(), 0);
}

/// Two jobs of one pool that both shut it down with `wait` both return: a caller that is a
/// job of the pool does not wait for its sibling threads, which may be doing the same.
#[test]
fn two_jobs_shutting_down_their_pool_at_once_both_return() {
    let pool = Arc::new(ThreadPool::new(2));
    let both_running = Arc::new(Barrier::new(2));
    let jobs: Vec<_> = (0..2)
        .map(|_| {
            let (pool2, both_running) = (pool.clone(), both_running.clone());
            pool.submit(move || {
                both_running.wait();
                pool2.shutdown(true, false);
            })
        })
        .collect();
    for job in jobs {
        job.result(Some(WAIT)).expect("the job's shutdown returned");
    }
    pool.shutdown(true, false);
    assert_eq!(pool.worker_count(), 0);
}

/// `shutdown(wait = true)` returns only once the running jobs are done, whichever caller it
/// is: a second shutdown, made while a first one already took the threads to join, waits
/// too (concurrent.futures: "will not return until all the pending futures are done").
#[test]
fn a_second_concurrent_shutdown_with_wait_waits_too() {
    let pool = Arc::new(ThreadPool::new(1));
    let (blocker, release) = block_one(&pool);
    let first = {
        let pool = pool.clone();
        thread::spawn(move || pool.shutdown(true, false))
    };
    // The first shutdown has begun once the pool refuses new work (a refused submission's
    // future is done at once; an accepted one queues behind the blocker).
    assert!(eventually(WAIT, || pool.submit(|| ()).done()));
    let (returned_tx, returned_rx) = mpsc::channel();
    let second = {
        let pool = pool.clone();
        thread::spawn(move || {
            pool.shutdown(true, false);
            returned_tx.send(()).unwrap();
        })
    };
    assert!(
        returned_rx
            .recv_timeout(Duration::from_millis(200))
            .is_err(),
        "the second shutdown returned while the job still ran"
    );
    assert!(!blocker.done());
    release.send(()).unwrap();
    returned_rx
        .recv_timeout(WAIT)
        .expect("the second shutdown returned once the job was done");
    assert!(blocker.done());
    assert_eq!(pool.worker_count(), 0);
    first.join().unwrap();
    second.join().unwrap();
}

/// Panics when dropped (unless already unwinding): a job's value or capture whose drop runs
/// user code after the job's own catch.
struct PanicsOnDrop;

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        if !thread::panicking() {
            panic!("PanicsOnDrop dropped (expected by the test)");
        }
    }
}

/// A value whose drop panics, dropped on the worker because every handle of its future is
/// gone, is caught (and reported): the thread lives on, still counted, and runs later jobs,
/// and shutdown returns. The panic ended the pool's only thread, which stayed counted, so
/// no later job ever ran and `shutdown(true, _)` hung.
#[test]
fn a_panic_dropping_an_unwanted_value_leaves_the_thread_running_later_jobs() {
    let pool = ThreadPool::new(1);
    let worker = pool.submit(|| thread::current().id());
    let worker = worker.result(Some(WAIT)).unwrap();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    // The job returns only once its future is dropped, so its value is dropped on the worker.
    drop(pool.submit(move || {
        go_rx.recv().unwrap();
        PanicsOnDrop
    }));
    go_tx.send(()).unwrap();
    let later = pool.submit(|| thread::current().id());
    assert_eq!(later.result(Some(WAIT)).unwrap(), worker);
    assert_eq!(pool.worker_count(), 1);
    pool.shutdown(true, false);
    assert_eq!(pool.worker_count(), 0);
}

/// A cancelled queued job's captures are dropped on the worker that skips it; a panic in
/// their drop is caught (and reported), and that thread runs the jobs after it.
#[test]
fn a_panic_dropping_a_cancelled_jobs_captures_leaves_the_thread_running_later_jobs() {
    let pool = ThreadPool::new(1);
    let worker = pool.submit(|| thread::current().id());
    let worker = worker.result(Some(WAIT)).unwrap();
    let (blocker, release) = block_one(&pool);
    let guard = PanicsOnDrop;
    let cancelled = pool.submit(move || {
        let _guard = &guard;
    });
    let later = pool.submit(|| thread::current().id());
    assert!(cancelled.cancel());
    release.send(()).unwrap();
    blocker.result(Some(WAIT)).unwrap();
    assert_eq!(later.result(Some(WAIT)).unwrap(), worker);
    assert!(cancelled.cancelled());
    assert_eq!(pool.worker_count(), 1);
    pool.shutdown(true, false);
    assert_eq!(pool.worker_count(), 0);
}

/// `shutdown(cancel_futures)` cancels every queued job even when dropping one's captures
/// panics: the panic is caught (and reported), not unwound out of `shutdown`, and the jobs
/// queued after it are cancelled too.
#[test]
fn shutdown_cancel_futures_cancels_every_queued_job_when_a_capture_panics_on_drop() {
    let pool = ThreadPool::new(1);
    let (blocker, release) = block_one(&pool);
    let guard = PanicsOnDrop;
    let first = pool.submit(move || {
        let _guard = &guard;
    });
    let second = pool.submit(|| ());
    pool.shutdown(false, true);
    assert!(first.cancelled());
    assert!(second.cancelled());
    release.send(()).unwrap();
    blocker.result(Some(WAIT)).unwrap();
    pool.shutdown(true, false);
    assert_eq!(pool.worker_count(), 0);
}

/// `SubmitAsync` is `Send + Sync` when its value is `Send` (API.md: every future braid
/// returns is), whatever its job captures: checked at compile time, then awaited. It held
/// its job as a bare `Box<dyn FnOnce + Send>`, so it was not `Sync`.
#[test]
fn submit_async_is_send_and_sync_when_its_value_is_send() {
    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    let pool = ThreadPool::builder().queue_capacity(1).build().unwrap();
    // Send, not Sync: as the job's capture and as its value.
    let not_sync = std::cell::Cell::new(2u8);
    let queued = pool.submit_async(move || std::cell::Cell::new(not_sync.get() + 1));
    assert_send_sync(&queued);
    let job = futures::executor::block_on(queued).unwrap();
    assert_eq!(job.result(Some(WAIT)).unwrap().get(), 3);
    pool.shutdown(true, false);
}

/// Two jobs of one pool that both call `shutdown_timeout(_, Duration::MAX)` both return
/// true: a job's call does not wait for the threads of jobs waiting in it too. Each waited
/// for the other's thread, for good.
#[test]
fn two_jobs_calling_shutdown_timeout_without_a_limit_both_return() {
    let pool = Arc::new(ThreadPool::new(2));
    let both_running = Arc::new(Barrier::new(2));
    let jobs: Vec<_> = (0..2)
        .map(|_| {
            let (pool2, both_running) = (pool.clone(), both_running.clone());
            pool.submit(move || {
                both_running.wait();
                pool2.shutdown_timeout(false, Duration::MAX)
            })
        })
        .collect();
    for job in jobs {
        let all_left = job
            .result(Some(WAIT))
            .expect("the job's shutdown_timeout returned");
        assert!(
            all_left,
            "shutdown_timeout returned false with no time limit"
        );
    }
    pool.shutdown(true, false);
    assert_eq!(pool.worker_count(), 0);
}

/// From jobs, `shutdown_timeout` waits for every sibling thread except those of jobs waiting
/// in it too: two jobs in it time out while a third, busy job's thread is there, and, with no
/// limit, both return true once that thread has left.
#[test]
fn jobs_in_shutdown_timeout_wait_for_a_busy_sibling_but_not_for_each_other() {
    let pool = Arc::new(ThreadPool::new(3));
    let (blocker, release) = block_one(&pool);
    let both_running = Arc::new(Barrier::new(2));
    let (limited_tx, limited_rx) = mpsc::channel();
    let jobs: Vec<_> = (0..2)
        .map(|_| {
            let (pool2, both_running) = (pool.clone(), both_running.clone());
            let limited_tx = limited_tx.clone();
            pool.submit(move || {
                both_running.wait();
                // The blocker runs until both of these have been reported.
                let all_left = pool2.shutdown_timeout(false, Duration::from_millis(50));
                limited_tx.send(all_left).unwrap();
                pool2.shutdown_timeout(false, Duration::MAX)
            })
        })
        .collect();
    for _ in 0..2 {
        let all_left = limited_rx
            .recv_timeout(WAIT)
            .expect("a limited wait returned");
        assert!(!all_left, "true while the busy sibling's thread was there");
    }
    release.send(()).unwrap();
    for job in jobs {
        let all_left = job
            .result(Some(WAIT))
            .expect("the job's shutdown_timeout returned");
        assert!(
            all_left,
            "shutdown_timeout returned false with no time limit"
        );
    }
    blocker.result(Some(WAIT)).unwrap();
    pool.shutdown(true, false);
    assert_eq!(pool.worker_count(), 0);
}

/// A waker that panics when woken (a bug of the executor that gave it, not of the pool).
struct PanickingWaker;

impl std::task::Wake for PanickingWaker {
    fn wake(self: Arc<Self>) {
        panic!("a waker that panics");
    }
}

/// A `submit_async` caller's waker that panics when the pool wakes it for room costs the pool
/// nothing: the job whose dequeue made the room runs, and the pool goes on running jobs and
/// shuts down. The panic unwound out of the worker thread's loop, so that job was dropped
/// unrun and the dead thread stayed counted: with one worker allowed, no job ran again.
#[test]
fn a_panicking_room_waker_does_not_kill_a_worker() {
    use std::future::Future;
    let pool = one_worker_one_slot_pool();
    let (blocker, release) = block_one(&pool);
    let filler = pool.try_submit(|| "filler").unwrap();
    let mut waiting = Box::pin(pool.submit_async(|| "waited for room"));
    let waker = std::task::Waker::from(Arc::new(PanickingWaker));
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(
        waiting.as_mut().poll(&mut cx).is_pending(),
        "the queue is full"
    );
    release.send(()).unwrap();
    blocker.result(Some(WAIT)).unwrap();
    assert_eq!(filler.result(Some(WAIT)).unwrap(), "filler");
    let queued = match waiting.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(queued) => queued.unwrap(),
        std::task::Poll::Pending => panic!("no room after the filler ran"),
    };
    assert_eq!(queued.result(Some(WAIT)).unwrap(), "waited for room");
    assert_eq!(pool.submit(|| 7).result(Some(WAIT)).unwrap(), 7);
    pool.shutdown(true, false);
    assert_eq!(pool.worker_count(), 0);
}
