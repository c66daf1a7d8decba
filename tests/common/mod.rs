//! Helpers shared by the integration tests (each test file includes this with `mod common;`
//! and uses what it needs).
#![allow(dead_code)]

use braid::{Promise, Runtime, Task};
use std::future::{poll_fn, Future, IntoFuture};
use std::pin::pin;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// How long a test waits for something that should happen at once; only a hang reaches it.
pub(crate) const WAIT: Duration = Duration::from_secs(5);

/// A runtime with `workers` loops.
pub(crate) fn runtime(workers: usize) -> Runtime {
    Runtime::builder()
        .workers(workers)
        .build()
        .expect("runtime")
}

/// Serialises the tests of one file that measure time or share the machine's cores.
pub(crate) fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The names of this process's threads that start with `prefix` (from `/proc/self/task`,
/// where names are cut to 15 bytes).
pub(crate) fn threads_named(prefix: &str) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for entry in dir.flatten() {
            if let Ok(name) = std::fs::read_to_string(entry.path().join("comm")) {
                let name = name.trim();
                if name.starts_with(prefix) {
                    names.push(name.to_owned());
                }
            }
        }
    }
    names
}

/// Runs `scenario` as the main future of a fresh runtime of each size in `loops`, then shuts
/// the runtime down; an error names the runtime size it happened on.
pub(crate) fn on_loops<S, Fut>(loops: &[usize], scenario: S)
where
    S: Fn() -> Fut,
    Fut: Future<Output = braid::Result<()>>,
{
    for &n in loops {
        let rt = runtime(n);
        if let Err(e) = rt.run_until_complete(scenario()) {
            panic!("on a runtime of {n} loop(s): {e:?}");
        }
        rt.shutdown(WAIT).unwrap();
    }
}

/// The runtime sizes every synchronisation-primitive scenario runs on.
pub(crate) const SYNC_LOOPS: [usize; 2] = [1, 3];

/// Runs `scenario` on a 1-loop and on a 3-loop runtime ([`SYNC_LOOPS`]).
pub(crate) fn on_each_runtime<S, Fut>(scenario: S)
where
    S: Fn() -> Fut,
    Fut: Future<Output = braid::Result<()>>,
{
    on_loops(&SYNC_LOOPS, scenario);
}

/// Asserts that `outcome` is a Cancelled error.
pub(crate) fn assert_cancelled<T: std::fmt::Debug>(outcome: &braid::Result<T>) {
    match outcome {
        Err(e) if e.is_cancelled() => {}
        other => panic!("expected a Cancelled error, got {other:?}"),
    }
}

/// Awaits `op`, completing `parked` after its first poll with whether that poll left it
/// waiting. A braid primitive returns Pending only once its waiter is queued.
pub(crate) async fn report_parked<F: Future>(op: F, parked: Promise<bool>) -> F::Output {
    let mut op = pin!(op);
    let mut parked = Some(parked);
    poll_fn(|cx| {
        let poll = op.as_mut().poll(cx);
        if let Some(parked) = parked.take() {
            let _ = parked.set_result(poll.is_pending());
        }
        poll
    })
    .await
}

/// Waits (at most [`WAIT`]) for `report_parked` and fails if the operation did not wait.
pub(crate) async fn expect_parked(parked: Promise<bool>) -> braid::Result<()> {
    let waited = braid::wait_for(parked.into_future(), Some(WAIT)).await?;
    assert!(waited, "the operation completed at once instead of waiting");
    Ok(())
}

/// Starts `op` as a task on the shared pool (it may run on any loop) and returns the task
/// once `op` is parked in its first await, which must be the primitive's. This is how the
/// tests know a waiter is queued on any number of loops, where CPython's tests step their one
/// loop with `asyncio.sleep(0)`.
pub(crate) async fn queued<T: Send + 'static>(
    op: impl Future<Output = braid::Result<T>> + Send + 'static,
) -> braid::Result<Task<T>> {
    let parked = Promise::new();
    let task = braid::create_task(report_parked(op, parked.clone()));
    expect_parked(parked).await?;
    Ok(task)
}

/// As [`queued`], with the task pinned to the calling loop: it cannot run again before the
/// caller next awaits, so "woken, then cancelled before it runs" is deterministic.
pub(crate) async fn queued_local<T: 'static>(
    op: impl Future<Output = braid::Result<T>> + 'static,
) -> braid::Result<Task<T>> {
    let parked = Promise::new();
    let task = braid::spawn_local(report_parked(op, parked.clone()));
    expect_parked(parked).await?;
    Ok(task)
}

/// Awaits `task` for at most [`WAIT`]: only a lost wake-up reaches the bound.
pub(crate) async fn settle<T: 'static>(task: Task<T>) -> braid::Result<T> {
    braid::wait_for(task, Some(WAIT)).await
}

/// Lets every task pinned to this loop that is ready run (at least) once.
pub(crate) async fn let_local_tasks_run() -> braid::Result<()> {
    braid::yield_now().await?;
    braid::yield_now().await
}

/// A promise set once `task` is done: how a test waits for a child without sleeping.
pub(crate) fn done_signal<T: 'static>(task: &Task<T>) -> Promise<()> {
    let done = braid::create_future();
    let setter = done.clone();
    task.add_done_callback(move |_| {
        let _ = setter.set_result(());
    });
    done
}

/// Polls `cond` (every millisecond) until it holds or `limit` passes; returns whether it held.
/// For state another thread settles without telling anyone (thread counts, registries).
pub(crate) fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + limit;
    while std::time::Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    cond()
}

/// Schedules its action on the running loop when dropped.
pub(crate) struct SchedulesWhenDropped(Option<Box<dyn FnOnce() + Send>>);

impl SchedulesWhenDropped {
    pub(crate) fn new(action: impl FnOnce() + Send + 'static) -> SchedulesWhenDropped {
        SchedulesWhenDropped(Some(Box::new(action)))
    }
}

impl Drop for SchedulesWhenDropped {
    fn drop(&mut self) {
        if let Some(action) = self.0.take() {
            braid::call_soon(action);
        }
    }
}

/// On a one-loop runtime, inside a task: lets a task that returns 7 run to its end, cancels
/// the current task, and gives what `await_it` made of the done task's handle with that
/// request pending, and then what the next await point (a `yield_now`) gave.
pub(crate) fn await_a_done_task_with_a_cancel_pending<A, Fut, T>(
    await_it: A,
) -> (braid::Result<T>, braid::Result<()>)
where
    A: FnOnce(braid::Task<u32>) -> Fut + Send + 'static,
    Fut: Future<Output = braid::Result<T>> + Send,
    T: Send + 'static,
{
    let rt = runtime(1);
    let outcomes = rt
        .run_until_complete(async {
            braid::create_task(async {
                let done = braid::create_task(async { Ok(7) });
                // One loop: the task queued ahead of us runs to its end before we resume.
                braid::yield_now().await?;
                assert!(done.done());
                braid::current_task().unwrap().cancel();
                let outcome = await_it(done).await;
                Ok((outcome, braid::yield_now().await))
            })
            .await
        })
        .unwrap();
    rt.shutdown(WAIT).unwrap();
    outcomes
}

/// Runs test `name` of this test binary again, alone, in a child process with `env` set (a
/// scenario that needs a process of its own: an environment variable read once, a signal's
/// disposition, an abort to survive); whether it exited successfully, and its stdout and
/// stderr together. A child still running after two minutes is killed and counts as failed,
/// so that a scenario that hangs fails its test instead of hanging it.
pub(crate) fn rerun_in_child(name: &str, env: &[(&str, &str)]) -> (bool, String) {
    let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}.log", std::process::id()));
    let out = std::fs::File::create(&log).expect("create the child's log");
    let err = out.try_clone().expect("share the child's log");
    let mut child = std::process::Command::new(std::env::current_exe().expect("this test binary"))
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .envs(env.iter().copied())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("run the test again in a child process");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    // Polled: std has no wait with a timeout.
    let status = loop {
        if let Some(status) = child.try_wait().expect("look at the child") {
            break Some(status);
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    match status {
        Some(status) => (status.success(), format!("status {status:?}\n{text}")),
        None => (false, format!("killed after two minutes\n{text}")),
    }
}
