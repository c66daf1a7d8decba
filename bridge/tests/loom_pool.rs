//! loom model of the thread pool's hand-off racing shutdown, with a `#[should_panic]` twin.
//! Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release -p braid-bridge --test loom_pool`.
#![cfg(loom)]

use braid_bridge::fault::{self, Fault};
use braid_bridge::{ErrorKind, ThreadPool};
use loom::sync::Arc;
use loom::thread;

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
