//! loom models of the process pool's supervisor state machine (`braid_bridge::process_core`:
//! the job queue, the in-flight table, cancellation and crash counting, without the pipes),
//! each with a `#[should_panic]` twin that switches on a deliberate bug. Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release -p braid-bridge --test loom_process_pool`.
#![cfg(loom)]

use braid_bridge::fault::{self, Fault};
use braid_bridge::process_core::{Config, Core, Exit, Job, JobHandle, Next};
use braid_bridge::sync::atomic::{AtomicBool, Ordering};
use braid_bridge::{Completer, ConcurrentFuture, ErrorKind, Result};
use loom::sync::Arc;
use loom::thread;
use std::time::{Duration, Instant};

const PID: u32 = 4242;

fn config(max_crashes: usize) -> Config {
    Config {
        workers: 1,
        max_tasks_per_child: None,
        max_crashes,
        crash_window: Duration::from_secs(3600),
        kill_grace: Duration::from_secs(1),
        startup_timeout: Duration::from_secs(30),
        names: vec!["job".to_owned()],
    }
}

/// A job's producing side, as the pool's is, that also records whether the future let it
/// start.
struct Handle {
    completer: Completer<Vec<u8>>,
    started: Arc<AtomicBool>,
}

impl JobHandle for Handle {
    fn start(&self) -> bool {
        let ok = self.completer.set_running_or_notify_cancel();
        if ok {
            self.started.store(true, Ordering::SeqCst);
        }
        ok
    }

    fn finish(self: Box<Self>, outcome: Result<Vec<u8>>) {
        self.completer.complete(outcome);
    }
}

struct Submitted {
    fut: ConcurrentFuture<Vec<u8>>,
    started: Arc<AtomicBool>,
}

/// Submits a job the way `ProcessPool::submit` does: cancelling its future cancels it in
/// the core.
fn submit(core: &Arc<Core>) -> Result<Submitted> {
    let (fut, completer) = ConcurrentFuture::pair();
    let id = core.next_id();
    {
        let core = core.clone();
        completer.on_cancel(move || core.cancel(id, Instant::now()));
    }
    let started = Arc::new(AtomicBool::new(false));
    let handle = Handle {
        completer,
        started: started.clone(),
    };
    core.submit(Job {
        id,
        func: 0,
        payload: vec![1],
        timeout: None,
        handle: Box::new(handle),
    })?;
    Ok(Submitted { fut, started })
}

fn ready_worker(core: &Core) -> bool {
    if !core.spawning(0) {
        return false;
    }
    core.spawned(0, PID);
    core.ready(0)
}

fn reap(core: &Core, status: &str) {
    core.release(0);
    let exit = Exit {
        pid: PID,
        status: status.to_owned(),
        failure: None,
    };
    core.reaped(0, &exit, Instant::now());
}

/// A cancel racing the dispatch of a queued job: a job runs only if its future let it start
/// (so a job cancelled while queued never runs); the future settles either way, and
/// `cancel()`'s answer is the future's final state.
fn cancel_races_dispatch_model() {
    let core = Arc::new(Core::new(config(3), |_, _| {}));
    assert!(ready_worker(&core));
    let job = submit(&core).expect("accepted");
    let worker = {
        let core = core.clone();
        thread::spawn(move || match core.next_job(0) {
            Next::Run(dispatch) => {
                assert!(core.job_done(0, dispatch.id, Ok(vec![7])));
                true
            }
            Next::Retire | Next::Exit => false,
        })
    };
    let cancelled = job.fut.cancel();
    // Ends the worker's wait if the job left the queue before it got there.
    core.shutdown(false);
    let ran = worker.join().unwrap();
    if ran {
        assert!(
            job.started.load(Ordering::SeqCst),
            "a job cancelled while queued was dispatched to a worker"
        );
    }
    assert!(job.fut.done(), "the job's future never settled");
    assert_eq!(cancelled, job.fut.cancelled());
    if !cancelled {
        assert_eq!(job.fut.try_result().unwrap().unwrap(), [7]);
    }
}

#[test]
fn cancel_races_dispatch() {
    fault::model(Fault::None, cancel_races_dispatch_model);
}

#[test]
#[should_panic(expected = "cancelled while queued was dispatched")]
fn broken_dispatch_runs_a_cancelled_job() {
    fault::model(
        Fault::ProcessPoolRunsCancelledJob,
        cancel_races_dispatch_model,
    );
}

/// A worker that crashes on every job, replaced each time, while another thread submits: the
/// first crash fails only its own job (the next one still reaches a worker); the second
/// (`max_crashes` = 2) breaks the pool. Every job accepted is settled with `BrokenExecutor`,
/// never left queued with no worker to run it; a job refused at submit is refused with
/// `BrokenExecutor`.
fn crash_limit_races_submit_model() {
    let core = Arc::new(Core::new(config(2), |_, _| {}));
    assert!(ready_worker(&core));
    let first = submit(&core).expect("accepted");
    let second = submit(&core).expect("accepted");
    let worker = {
        let core = core.clone();
        thread::spawn(move || loop {
            match core.next_job(0) {
                Next::Run(_) => reap(&core, "was killed by signal 9 (SIGKILL)"),
                Next::Retire | Next::Exit => reap(&core, "exited with status 0"),
            }
            if !ready_worker(&core) {
                break;
            }
        })
    };
    let late = submit(&core);
    worker.join().unwrap();
    for (job, name) in [(&first, "first"), (&second, "second")] {
        let err = job.fut.try_result().expect("settled").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BrokenExecutor);
        assert!(
            err.to_string().contains("while running"),
            "the {name} job was failed by the break, not by its own crash: {err}"
        );
    }
    match late {
        Ok(job) => {
            assert!(
                job.fut.done(),
                "a job accepted before the break never settled"
            );
            let err = job.fut.try_result().unwrap().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::BrokenExecutor);
        }
        Err(e) => assert_eq!(e.kind(), ErrorKind::BrokenExecutor),
    }
    assert!(core.broken().is_some());
}

#[test]
fn crash_limit_races_submit() {
    fault::model(Fault::None, crash_limit_races_submit_model);
}

#[test]
#[should_panic(expected = "never settled")]
fn broken_pool_leaves_queued_jobs_unsettled() {
    fault::model(
        Fault::ProcessPoolBrokenKeepsQueue,
        crash_limit_races_submit_model,
    );
}
