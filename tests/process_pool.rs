//! `ProcessPool` (issue 7): jobs in supervised worker processes.
//!
//! Every test builds its one pool first thing, on its own thread: the workers run this test
//! binary again as `<test name> --exact` and serve at that same `build()` (see
//! `ProcessPool`'s docs). The job functions below therefore run in the workers.

mod common;

use braid::bridge::{CancelOutcome, ConcurrentFuture, ErrorKind, ProcessPool};
use common::WAIT;
use serde::{Serialize, Serializer};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn square(x: u64) -> u64 {
    x * x
}

fn checked_div((a, b): (i64, i64)) -> Result<i64, String> {
    if b == 0 {
        Err(format!("{a} / 0"))
    } else {
        Ok(a / b)
    }
}

fn echo(s: String) -> String {
    s
}

fn boom(n: u32) -> u32 {
    panic!("boom {n}")
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn pid(_: ()) -> u32 {
    std::process::id()
}

fn exit_with(code: i32) {
    std::process::exit(code)
}

fn abort(_: ()) {
    std::process::abort()
}

fn touch(path: PathBuf) {
    std::fs::write(path, b"ran").expect("write the marker file");
}

fn add((a, b): (u64, u64)) -> u64 {
    a + b
}

fn never_registered(x: u64) -> u64 {
    x
}

/// A unique path for a marker file that a job creates when it runs.
fn marker(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("braid-pp-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// Waits (at most `WAIT`) until `cond` holds.
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// True while `pid` is a child of this process (running or a zombie) or a worker of ours
/// that outlived us being its parent (an orphan).
fn still_ours(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) state ppid ...": comm may hold spaces, so parse after its last ')'.
    let after = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
    let ppid: u32 = after
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    if ppid == std::process::id() {
        return true;
    }
    let marker = format!("BRAID_PROCESS_POOL_WORKER={}/", std::process::id());
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| {
            env.split(|&b| b == 0)
                .any(|var| var.starts_with(marker.as_bytes()))
        })
        .unwrap_or(false)
}

fn sigkill(pid: u32) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a real pid");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("kill the worker");
}

#[test]
fn results_and_job_errors_round_trip() {
    let pool = ProcessPool::builder()
        .workers(2)
        .register(square)
        .register(checked_div)
        .register(echo)
        .build()
        .expect("pool");
    assert_eq!(
        pool.submit(square, 12).unwrap().result(Some(WAIT)).unwrap(),
        144
    );
    assert_eq!(
        pool.submit(checked_div, (7, 2))
            .unwrap()
            .result(Some(WAIT))
            .unwrap(),
        Ok(3)
    );
    // A job's own error is its value: the pool's Result holds the job's Result.
    assert_eq!(
        pool.submit(checked_div, (7, 0))
            .unwrap()
            .result(Some(WAIT))
            .unwrap(),
        Err("7 / 0".to_owned())
    );
    let text: String = "ünïcödé ✓ ".repeat(20_000); // ~300 KB: larger than a pipe's buffer
    assert_eq!(
        pool.submit(echo, text.clone())
            .unwrap()
            .into_result(Some(WAIT))
            .unwrap(),
        text
    );
}

#[test]
fn a_panic_in_a_job_is_panicked_with_its_message_and_the_worker_lives_on() {
    let pool = ProcessPool::builder()
        .workers(1)
        .register(boom)
        .register(pid)
        .build()
        .expect("pool");
    let before = pool.submit(pid, ()).unwrap().result(Some(WAIT)).unwrap();
    let err = pool
        .submit(boom, 7)
        .unwrap()
        .result(Some(WAIT))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked);
    assert_eq!(err.message(), Some("boom 7"));
    let after = pool.submit(pid, ()).unwrap().result(Some(WAIT)).unwrap();
    assert_eq!(before, after, "a panic must not cost the worker its life");
}

/// Decodes fine, but refuses to be encoded.
#[derive(serde::Deserialize)]
struct Unserialisable;

impl Serialize for Unserialisable {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("not today"))
    }
}

fn takes_unserialisable(_: Unserialisable) {}

#[test]
fn an_unregistered_function_or_an_unserialisable_argument_fails_at_submit() {
    let pool = ProcessPool::builder()
        .workers(1)
        .register(square)
        .register(takes_unserialisable)
        .build()
        .expect("pool");
    let err = pool.submit(never_registered, 1).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidState);
    assert!(
        err.to_string().contains("never_registered") && err.to_string().contains("register"),
        "the error names the function and the fix: {err}"
    );
    let err = pool
        .submit(takes_unserialisable, Unserialisable)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Other);
    assert!(
        err.to_string()
            .contains("could not serialise the argument of")
            && err.to_string().contains("takes_unserialisable"),
        "{err}"
    );
    assert_eq!(pool.queued(), 0, "nothing was queued");
    assert_eq!(
        pool.submit(square, 3).unwrap().result(Some(WAIT)).unwrap(),
        9
    );
}

#[test]
fn a_closure_that_captures_state_cannot_be_registered() {
    let k = 3u64;
    let err = ProcessPool::builder()
        .register(move |x: u64| x + k)
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidState);
    assert!(err.to_string().contains("captures state"), "{err}");
}

#[test]
fn sigkill_of_a_worker_mid_job_fails_only_that_job() {
    let pool = ProcessPool::builder()
        .workers(1)
        .register(nap)
        .register(square)
        .build()
        .expect("pool");
    let doomed = pool.submit(nap, 60_000).unwrap();
    let queued = pool.submit(square, 9).unwrap();
    eventually("the long job runs", || doomed.running());
    let victim = pool.worker_pids()[0];
    sigkill(victim);
    let err = doomed.result(Some(WAIT)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BrokenExecutor);
    let text = err.to_string();
    assert!(
        text.contains(&victim.to_string()) && text.contains("SIGKILL") && text.contains("nap"),
        "the error names the pid, the signal and the job: {text}"
    );
    assert_eq!(
        queued.result(Some(WAIT)).unwrap(),
        81,
        "the queued job went on"
    );
    assert!(!pool.is_broken());
    eventually("the dead worker is reaped", || !still_ours(victim));
    assert!(!pool.worker_pids().contains(&victim));
}

#[test]
fn aborting_and_exiting_workers_are_named_by_signal_and_status() {
    let pool = ProcessPool::builder()
        .workers(1)
        .register(abort)
        .register(exit_with)
        .register(square)
        .build()
        .expect("pool");
    let err = pool
        .submit(abort, ())
        .unwrap()
        .result(Some(WAIT))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BrokenExecutor);
    assert!(err.to_string().contains("SIGABRT"), "{err}");
    let err = pool
        .submit(exit_with, 3)
        .unwrap()
        .result(Some(WAIT))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BrokenExecutor);
    assert!(err.to_string().contains("exited with status 3"), "{err}");
    // Two crashes are below the default limit: the pool goes on with fresh workers.
    assert!(!pool.is_broken());
    assert_eq!(
        pool.submit(square, 5).unwrap().result(Some(WAIT)).unwrap(),
        25
    );
}

#[test]
fn the_crash_limit_breaks_the_pool_and_fails_pending_and_later_jobs() {
    let pool = ProcessPool::builder()
        .workers(1)
        .max_crashes(2)
        .crash_window(Duration::from_secs(600))
        .register(exit_with)
        .register(square)
        .build()
        .expect("pool");
    let first = pool.submit(exit_with, 3).unwrap();
    let second = pool.submit(exit_with, 4).unwrap();
    let pending = pool.submit(square, 2).unwrap();
    let err = first.result(Some(WAIT)).unwrap_err();
    assert!(err.to_string().contains("status 3"), "{err}");
    let err = second.result(Some(WAIT)).unwrap_err();
    assert!(err.to_string().contains("status 4"), "{err}");
    let err = pending.result(Some(WAIT)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BrokenExecutor);
    assert!(
        err.to_string().contains("broken after 2 worker crashes"),
        "{err}"
    );
    assert!(pool.is_broken());
    let err = pool.submit(square, 3).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BrokenExecutor);
    pool.shutdown(true, false);
    assert!(pool.worker_pids().is_empty());
}

#[test]
fn max_tasks_per_child_replaces_workers_without_losing_a_job() {
    let pool = ProcessPool::builder()
        .workers(2)
        .max_tasks_per_child(3)
        .register(pid)
        .build()
        .expect("pool");
    let futures: Vec<ConcurrentFuture<u32>> =
        (0..30).map(|_| pool.submit(pid, ()).unwrap()).collect();
    let mut per_worker = std::collections::HashMap::<u32, usize>::new();
    for fut in futures {
        *per_worker
            .entry(fut.result(Some(WAIT)).unwrap())
            .or_default() += 1;
    }
    assert_eq!(per_worker.values().sum::<usize>(), 30, "every job ran");
    assert!(
        per_worker.values().all(|&n| n <= 3),
        "no worker ran more than 3 jobs: {per_worker:?}"
    );
    assert!(per_worker.len() >= 10, "{per_worker:?}");
}

#[test]
fn a_cancelled_queued_job_never_runs() {
    let pool = ProcessPool::builder()
        .workers(1)
        .register(nap)
        .register(touch)
        .register(square)
        .build()
        .expect("pool");
    let path = marker("cancelled-queued");
    let running = pool.submit(nap, 300).unwrap();
    let queued = pool.submit(touch, path.clone()).unwrap();
    let after = pool.submit(square, 4).unwrap();
    assert!(queued.cancel());
    assert!(queued.cancelled());
    assert_eq!(
        queued.result(Some(WAIT)).unwrap_err().kind(),
        ErrorKind::Cancelled
    );
    // One worker runs jobs in order: once `after` is done, `queued` would have run.
    assert_eq!(after.result(Some(WAIT)).unwrap(), 16);
    assert_eq!(
        running.result(Some(WAIT)).unwrap(),
        300,
        "the running job was not disturbed"
    );
    assert!(!path.exists(), "the cancelled job ran");
}

#[test]
fn cancelling_a_running_job_stops_its_worker_and_a_new_one_takes_over() {
    let pool = ProcessPool::builder()
        .workers(1)
        .register(nap)
        .register(pid)
        .build()
        .expect("pool");
    let fut = pool.submit(nap, 60_000).unwrap();
    eventually("the job runs", || fut.running());
    let old = pool.worker_pids()[0];
    let started = Instant::now();
    match fut.cancel_and_wait(Some(WAIT)) {
        CancelOutcome::Cancelled => {}
        other => panic!("expected the job to be cancelled, got {other:?}"),
    }
    assert!(started.elapsed() < WAIT, "the worker was not stopped");
    assert!(fut.cancelled());
    let new = pool.submit(pid, ()).unwrap().result(Some(WAIT)).unwrap();
    assert_ne!(new, old, "a replacement runs the next job");
    eventually("the stopped worker is reaped", || !still_ours(old));
}

#[test]
fn a_job_past_its_time_limit_fails_with_timeout() {
    let pool = ProcessPool::builder()
        .workers(1)
        .job_timeout(Duration::from_millis(300))
        .register(nap)
        .register(pid)
        .build()
        .expect("pool");
    let old = pool.submit(pid, ()).unwrap().result(Some(WAIT)).unwrap();
    let started = Instant::now();
    let err = pool
        .submit(nap, 60_000)
        .unwrap()
        .result(Some(WAIT))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(
        err.to_string().contains("300ms") && err.to_string().contains("nap"),
        "{err}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    // A per-job limit overrides the pool's.
    let ok = pool
        .submit_with_timeout(nap, 400, Duration::from_secs(30))
        .unwrap()
        .result(Some(WAIT))
        .unwrap();
    assert_eq!(ok, 400);
    let new = pool.submit(pid, ()).unwrap().result(Some(WAIT)).unwrap();
    assert_ne!(new, old, "the timed-out worker was replaced");
    assert!(!pool.is_broken(), "a time limit is not a crash");
}

#[test]
fn shutdown_waits_for_the_jobs_in_flight_and_leaves_no_process() {
    let pool = ProcessPool::builder()
        .workers(2)
        .register(nap)
        .build()
        .expect("pool");
    let futures: Vec<_> = (0..6).map(|_| pool.submit(nap, 100).unwrap()).collect();
    eventually("both workers are up", || pool.worker_pids().len() == 2);
    let pids = pool.worker_pids();
    pool.shutdown(true, false);
    for fut in &futures {
        assert_eq!(
            fut.try_result()
                .expect("done after shutdown(wait)")
                .unwrap(),
            100
        );
    }
    assert!(pool.worker_pids().is_empty());
    for pid in pids {
        assert!(!still_ours(pid), "worker {pid} is left (zombie or orphan)");
    }
    assert_eq!(pool.submit(nap, 1).unwrap_err().kind(), ErrorKind::Closed);
}

#[test]
fn shutdown_with_cancel_futures_cancels_the_queue_and_lets_the_running_job_finish() {
    let pool = ProcessPool::builder()
        .workers(1)
        .register(nap)
        .register(touch)
        .build()
        .expect("pool");
    let running = pool.submit(nap, 300).unwrap();
    let paths: Vec<PathBuf> = (0..5).map(|i| marker(&format!("shutdown-{i}"))).collect();
    let queued: Vec<_> = paths
        .iter()
        .map(|p| pool.submit(touch, p.clone()).unwrap())
        .collect();
    eventually("the first job runs", || running.running());
    pool.shutdown(true, true);
    assert_eq!(running.try_result().expect("done").unwrap(), 300);
    for (fut, path) in queued.iter().zip(&paths) {
        assert!(fut.cancelled());
        assert!(!path.exists(), "a cancelled job ran");
    }
}

#[test]
fn a_thousand_jobs_from_eight_threads() {
    let pool = Arc::new(
        ProcessPool::builder()
            .workers(2)
            .register(add)
            .build()
            .expect("pool"),
    );
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                let futures: Vec<_> = (0..125u64)
                    .map(|i| (i, pool.submit(add, (t * 1000, i)).unwrap()))
                    .collect();
                for (i, fut) in futures {
                    assert_eq!(fut.result(Some(WAIT * 4)).unwrap(), t * 1000 + i);
                }
                125
            })
        })
        .collect();
    let done: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(done, 1000);
}

#[test]
fn a_task_awaits_a_job_inside_braid_run() {
    let pool = ProcessPool::builder()
        .workers(2)
        .register(square)
        .register(nap)
        .build()
        .expect("pool");
    let total = braid::run(async {
        let slow = pool.submit(nap, 50)?;
        let fast = pool.submit(square, 11)?;
        // A ConcurrentFuture is a future like any other: a task can be made of it.
        let task = braid::create_task(fast);
        Ok(slow.await? + task.await?)
    })
    .unwrap();
    assert_eq!(total, 50 + 121);
}

#[test]
fn a_worker_that_never_reaches_build_breaks_the_pool_instead_of_hanging() {
    // These arguments make the worker run no test at all: it exits without serving.
    let pool = ProcessPool::builder()
        .workers(1)
        .max_crashes(2)
        .worker_args(["no_such_test_anywhere", "--exact"])
        .register(square)
        .build()
        .expect("pool");
    let err = pool
        .submit(square, 2)
        .unwrap()
        .result(Some(WAIT * 2))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BrokenExecutor);
    assert!(err.to_string().contains("before it was ready"), "{err}");
    assert!(pool.is_broken());
}

static INITIALIZED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn initialized(_: ()) -> bool {
    INITIALIZED.load(std::sync::atomic::Ordering::SeqCst)
}

#[test]
fn the_initializer_runs_in_every_worker_and_not_here() {
    let pool = ProcessPool::builder()
        .workers(2)
        .max_tasks_per_child(1)
        .initializer(|| INITIALIZED.store(true, std::sync::atomic::Ordering::SeqCst))
        .register(initialized)
        .build()
        .expect("pool");
    for _ in 0..4 {
        assert!(pool
            .submit(initialized, ())
            .unwrap()
            .result(Some(WAIT))
            .unwrap());
    }
    assert!(!INITIALIZED.load(std::sync::atomic::Ordering::SeqCst));
}

#[test]
fn the_pool_and_its_futures_are_send_sync_unpin_and_debug() {
    fn shareable<T: Send + Sync + Unpin + std::fmt::Debug>() {}
    shareable::<ProcessPool>();
    shareable::<ConcurrentFuture<Vec<String>>>();
    // The builder holds the functions as a worker calls them (not Send): Debug only.
    fn debug<T: std::fmt::Debug>() {}
    debug::<braid::bridge::ProcessPoolBuilder>();
}
