//! No `ProcessPool` worker outlives its pool: after `shutdown(wait)` and after `Drop`, the
//! test process has no child left, neither running nor a zombie, and none of the workers it
//! ever had is alive elsewhere (an orphan). These tests read the process's whole list of
//! children, so they live alone in this binary and run one at a time.

mod common;

use braid::bridge::{ErrorKind, ProcessPool};
use common::{serial, WAIT};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn exit_with(code: i32) {
    std::process::exit(code)
}

fn pid(_: ()) -> u32 {
    std::process::id()
}

/// The pids of every child of this process: running or zombie, whichever thread started it.
fn children() -> BTreeSet<u32> {
    let mut pids = BTreeSet::new();
    for task in std::fs::read_dir("/proc/self/task")
        .expect("/proc")
        .flatten()
    {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            pids.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    pids
}

/// True if `pid` runs with our worker marker in its environment: a worker of ours alive
/// outside our list of children would be an orphan.
fn is_our_worker(pid: u32) -> bool {
    let marker = format!("BRAID_PROCESS_POOL_WORKER={}/", std::process::id());
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| {
            env.split(|&b| b == 0)
                .any(|var| var.starts_with(marker.as_bytes()))
        })
        .unwrap_or(false)
}

fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn shutdown_leaves_no_child_after_crashes_cancels_time_limits_and_retirements() {
    let _serial = serial();
    let pool = ProcessPool::builder()
        .workers(3)
        .max_tasks_per_child(2)
        .register(nap)
        .register(exit_with)
        .register(pid)
        .build()
        .expect("pool");
    let mut seen = BTreeSet::new();
    let crash = pool.submit(exit_with, 1).unwrap();
    let late = pool
        .submit_with_timeout(nap, 60_000, Duration::from_millis(100))
        .unwrap();
    let cancelled = pool.submit(nap, 60_000).unwrap();
    eventually("the job to cancel runs", || cancelled.running());
    seen.extend(pool.worker_pids());
    assert!(cancelled.cancel());
    let pids: Vec<_> = (0..10).map(|_| pool.submit(pid, ()).unwrap()).collect();
    for fut in pids {
        seen.insert(fut.result(Some(WAIT)).unwrap());
    }
    assert_eq!(
        crash.result(Some(WAIT)).unwrap_err().kind(),
        ErrorKind::BrokenExecutor
    );
    assert_eq!(
        late.result(Some(WAIT)).unwrap_err().kind(),
        ErrorKind::Timeout
    );
    // Jobs still in flight when shutdown starts.
    let in_flight: Vec<_> = (0..4).map(|_| pool.submit(nap, 100).unwrap()).collect();
    seen.extend(pool.worker_pids());
    pool.shutdown(true, false);
    for fut in in_flight {
        assert_eq!(fut.try_result().expect("done").unwrap(), 100);
    }
    assert!(
        seen.len() >= 6,
        "workers were replaced along the way: {seen:?}"
    );
    assert_eq!(children(), BTreeSet::new(), "children left after shutdown");
    for pid in seen {
        assert!(!is_our_worker(pid), "worker {pid} outlived its pool");
    }
}

#[test]
fn dropping_a_pool_with_jobs_in_flight_stops_and_reaps_every_worker() {
    let _serial = serial();
    let pool = ProcessPool::builder()
        .workers(2)
        .drop_timeout(Duration::from_millis(300))
        .kill_grace(Duration::from_millis(500))
        .register(nap)
        .build()
        .expect("pool");
    let running: Vec<_> = (0..2).map(|_| pool.submit(nap, 60_000).unwrap()).collect();
    let queued: Vec<_> = (0..3).map(|_| pool.submit(nap, 60_000).unwrap()).collect();
    eventually("both jobs run", || running.iter().all(|f| f.running()));
    let workers = pool.worker_pids();
    assert_eq!(workers.len(), 2);
    let started = Instant::now();
    drop(pool);
    assert!(
        started.elapsed() < WAIT,
        "drop waited {:?}",
        started.elapsed()
    );
    for fut in running.iter().chain(&queued) {
        let err = fut.try_result().expect("settled by drop").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    }
    assert_eq!(children(), BTreeSet::new(), "children left after drop");
    for pid in workers {
        assert!(!is_our_worker(pid), "worker {pid} outlived its pool");
    }
}
