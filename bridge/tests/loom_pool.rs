//! loom models of the thread pool: the hand-off racing shutdown, and `shutdown_timeout` called
//! from two of its own jobs at once; each with a `#[should_panic]` twin.
//! Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release -p braid-bridge --test loom_pool`.
#![cfg(loom)]

use braid_bridge::fault::{self, Fault};
use braid_bridge::{ErrorKind, ThreadPool};
use loom::sync::Arc;
use loom::thread;
use std::time::Duration;

/// A submission racing `shutdown(wait = true)`: once both are over, the job's future has
/// settled: it ran, or it was refused with Closed. Never accepted and then lost.
fn handoff_model() {
    let pool = Arc::new(ThreadPool::new(1));
    let submitter = {
        let pool = pool.clone();
        thread::spawn(move || pool.submit(|| 7u32))
    };
    pool.shutdown(true, false);
    let fut = submitter.join().unwrap();
    assert!(
        fut.done(),
        "a submission accepted before shutdown never settled"
    );
    match fut.try_result().unwrap() {
        Ok(v) => assert_eq!(v, 7),
        Err(e) => assert_eq!(e.kind(), ErrorKind::Closed),
    }
}

#[test]
fn handoff_races_shutdown() {
    fault::model(Fault::None, handoff_model);
}

#[test]
#[should_panic(expected = "never settled")]
fn broken_worker_leaves_queued_jobs_at_shutdown() {
    fault::model(Fault::PoolExitsWithQueuedJobs, handoff_model);
}

/// Two jobs of a two-thread pool each call `shutdown_timeout` without a time limit while the
/// other may be doing the same: each waits only for threads whose jobs are not in that call
/// themselves (`jobs_in_shutdown`), so both return, true (every other thread left), however
/// their calls interleave with each other and with the workers' exits. (The second job may
/// also be refused, Closed, when the first job's call comes before its submission.)
fn shutdown_from_two_jobs_model() {
    let pool = Arc::new(ThreadPool::builder().max_workers(2).build().expect("pool"));
    let jobs: Vec<_> = (0..2)
        .map(|_| {
            let inner = pool.clone();
            pool.submit(move || inner.shutdown_timeout(false, Duration::MAX))
        })
        .collect();
    for (i, job) in jobs.into_iter().enumerate() {
        match job.result(None) {
            Ok(all_left) => assert!(all_left, "a thread was left"),
            // The first job's shutdown came before the second's submission.
            Err(e) => assert!(i == 1 && e.kind() == ErrorKind::Closed, "job {i}: {e}"),
        }
    }
}

#[test]
fn shutdown_timeout_from_two_jobs_returns_in_both() {
    fault::model(Fault::None, shutdown_from_two_jobs_model);
}

/// Twin: jobs not counted apart, each call waits for the other's thread for good, and loom
/// reports the deadlock. It does so by panicking, and the unwinding of its blocked threads
/// then aborts the process, which `#[should_panic]` cannot catch: so the model runs in a
/// child process of this test binary, and the twin reads the child's report.
#[test]
fn broken_shutdown_timeout_from_jobs_waits_for_each_other() {
    const CHILD: &str = "BRAID_LOOM_POOL_TWIN_CHILD";
    const NAME: &str = "broken_shutdown_timeout_from_jobs_waits_for_each_other";
    if std::env::var_os(CHILD).is_some() {
        fault::model(
            Fault::PoolJobsInShutdownUncounted,
            shutdown_from_two_jobs_model,
        );
        return;
    }
    let child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .expect("the twin's child process ran");
    let report = String::from_utf8_lossy(&child.stderr);
    assert!(!child.status.success(), "the broken pool passed: {report}");
    assert!(report.contains("deadlock"), "not a deadlock: {report}");
}
