//! `ProcessPool` faults that once took down more than their own job: a worker that dies while
//! idle, a panic in a type's serde impl, an argument or result over the frame limit, an
//! unbounded startup timeout, the worker marker leaking into what a job starts, SIGPIPE at
//! its default disposition, a time limit or a cancel while an argument is being written, an
//! absurd worker count, and a child process started before `build()`.
//!
//! As in `process_pool.rs`, every test builds its one pool first thing, on its own thread:
//! the workers run this test binary again as `<test name> --exact` and serve at that same
//! `build()`. The job functions below therefore run in the workers.

mod common;

use braid::bridge::{CancelOutcome, ErrorKind, ProcessPool};
use common::WAIT;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

fn square(x: u64) -> u64 {
    x * x
}

fn pid(_: ()) -> u32 {
    std::process::id()
}

fn sigkill(pid: u32) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a real pid");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("kill the worker");
}

/// The state letter of process `pid` ('Z' for a zombie), or None once it is reaped.
fn state_of(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ...": comm may hold spaces, so parse after its last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().next()?.chars().next()
}

/// Kills the worker `pid` and waits until it is dead: reaped, or reapable. Its pipes are
/// closed from then on. A zombie state letter is not enough: the leader of a process with
/// other threads shows 'Z' while those are still exiting and holding its pipes open, and a
/// job written then lands in the pipe and dies with the worker (this test's process is the
/// workers' parent, so it can ask `waitid` without reaping).
fn kill_and_wait_dead(pid: u32) {
    use rustix::process::{waitid, Pid, WaitId, WaitIdOptions};
    sigkill(pid);
    let child = Pid::from_raw(pid as i32).expect("a real pid");
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    eventually("the worker is dead", || {
        // An error: the pool reaped it already.
        !matches!(waitid(WaitId::Pid(child), options), Ok(None))
    });
}

/// Waits (at most `WAIT`) until `cond` holds.
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Runs `f` on a thread of its own: None if it did not return within `limit` (a hang).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok()
}

// --- A worker that dies while idle ---

#[test]
fn an_idle_worker_that_dies_does_not_fail_the_next_job() {
    let pool = ProcessPool::builder()
        .workers(1)
        .register(square)
        .register(pid)
        .build()
        .expect("pool");
    let victim = pool.submit(pid, ()).unwrap().result(Some(WAIT)).unwrap();
    kill_and_wait_dead(victim);
    // Whether or not the slot has noticed yet, the job never reached the dead worker.
    let result = pool.submit(square, 3).unwrap().result(Some(WAIT));
    assert_eq!(result.map_err(|e| (e.kind(), e.to_string())), Ok(9));
    let worker = pool.submit(pid, ()).unwrap().result(Some(WAIT)).unwrap();
    assert_ne!(worker, victim, "a replacement ran the job");
}

#[test]
fn a_dead_idle_worker_is_reaped_and_replaced_without_a_job() {
    let pool = ProcessPool::builder()
        .workers(1)
        .register(pid)
        .build()
        .expect("pool");
    let victim = pool.submit(pid, ()).unwrap().result(Some(WAIT)).unwrap();
    kill_and_wait_dead(victim);
    eventually("the dead idle worker is reaped and replaced", || {
        let pids = pool.worker_pids();
        state_of(victim).is_none() && pids.len() == 1 && !pids.contains(&victim)
    });
    assert!(!pool.is_broken());
}

// --- Panics in serde impls ---

/// A value whose `Deserialize` panics on 13 (an `unwrap` in a hand-written impl).
#[derive(Serialize, Debug, Clone, PartialEq)]
struct Unlucky(u32);

impl<'de> Deserialize<'de> for Unlucky {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u32::deserialize(d)?;
        assert_ne!(v, 13, "13 is unlucky");
        Ok(Unlucky(v))
    }
}

/// A value whose `Serialize` panics.
#[derive(Deserialize, Debug)]
struct Shy;

impl Serialize for Shy {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        panic!("too shy to be seen")
    }
}

fn make_unlucky(v: u32) -> Unlucky {
    Unlucky(v)
}

fn take_unlucky(u: Unlucky) -> u32 {
    u.0
}

fn make_shy(_: ()) -> Shy {
    Shy
}

#[test]
fn a_panic_decoding_the_argument_in_the_worker_is_panicked_and_the_worker_lives_on() {
    let pool = ProcessPool::builder()
        .workers(1)
        .max_crashes(1)
        .register(take_unlucky)
        .register(pid)
        .build()
        .expect("pool");
    let before = pool.submit(pid, ()).unwrap().result(Some(WAIT)).unwrap();
    let err = pool
        .submit(take_unlucky, Unlucky(13))
        .unwrap()
        .result(Some(WAIT))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked, "{err}");
    assert!(err.to_string().contains("13 is unlucky"), "{err}");
    let after = pool.submit(pid, ()).unwrap().result(Some(WAIT)).unwrap();
    assert_eq!(before, after, "the worker was lost");
    assert!(!pool.is_broken());
}

#[test]
fn a_panic_encoding_the_result_in_the_worker_is_panicked_and_the_worker_lives_on() {
    let pool = ProcessPool::builder()
        .workers(1)
        .max_crashes(1)
        .register(make_shy)
        .register(pid)
        .build()
        .expect("pool");
    let before = pool.submit(pid, ()).unwrap().result(Some(WAIT)).unwrap();
    let err = pool
        .submit(make_shy, ())
        .unwrap()
        .into_result(Some(WAIT))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked, "{err}");
    assert!(err.to_string().contains("too shy"), "{err}");
    let after = pool.submit(pid, ()).unwrap().result(Some(WAIT)).unwrap();
    assert_eq!(before, after, "the worker was lost");
    assert!(!pool.is_broken());
}

#[test]
fn a_panic_decoding_a_result_is_panicked_and_the_pool_lives_on() {
    let pool = Arc::new(
        ProcessPool::builder()
            .workers(1)
            .register(make_unlucky)
            .build()
            .expect("pool"),
    );
    let err = pool
        .submit(make_unlucky, 13)
        .unwrap()
        .result(Some(WAIT))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked, "{err}");
    assert!(err.to_string().contains("13 is unlucky"), "{err}");
    let next = pool.submit(make_unlucky, 1).unwrap().result(Some(WAIT));
    assert_eq!(next.map_err(|e| (e.kind(), e.to_string())), Ok(Unlucky(1)));
    let p = pool.clone();
    assert!(
        within(WAIT, move || p.shutdown(true, false)).is_some(),
        "shutdown(wait) hung"
    );
    assert!(pool.worker_pids().is_empty());
}

/// A result whose `Drop` panics in the pool's process (not in the worker, where it was made
/// disarmed): dropped on the pool's thread when nobody holds its future any more.
#[derive(Debug)]
struct Bomb {
    armed: bool,
}

impl Serialize for Bomb {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}

impl<'de> Deserialize<'de> for Bomb {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <()>::deserialize(d)?;
        Ok(Bomb { armed: true })
    }
}

impl Drop for Bomb {
    fn drop(&mut self) {
        if self.armed && !std::thread::panicking() {
            panic!("a result's drop panicked");
        }
    }
}

/// Waits until `path` exists, then returns a (disarmed) bomb.
fn bomb_when(path: PathBuf) -> Bomb {
    while !path.exists() {
        std::thread::sleep(Duration::from_millis(2));
    }
    Bomb { armed: false }
}

#[test]
fn a_panic_on_a_pools_thread_replaces_its_worker_instead_of_hanging_the_pool() {
    let pool = Arc::new(
        ProcessPool::builder()
            .workers(1)
            .register(bomb_when)
            .register(square)
            .build()
            .expect("pool"),
    );
    let go = std::env::temp_dir().join(format!("braid-ppf-{}-bomb", std::process::id()));
    let _ = std::fs::remove_file(&go);
    // Nobody holds the future when the result arrives: the pool's thread drops the bomb.
    drop(pool.submit(bomb_when, go.clone()).unwrap());
    std::fs::write(&go, b"go").unwrap();
    let next = pool.submit(square, 5).unwrap().result(Some(WAIT));
    let _ = std::fs::remove_file(&go);
    assert_eq!(next.map_err(|e| (e.kind(), e.to_string())), Ok(25));
    let p = pool.clone();
    assert!(
        within(WAIT, move || p.shutdown(true, false)).is_some(),
        "shutdown(wait) hung"
    );
    assert!(pool.worker_pids().is_empty());
}

// --- Limits ---

#[test]
fn an_unbounded_startup_timeout_does_not_kill_every_worker() {
    let pool = ProcessPool::builder()
        .workers(1)
        .startup_timeout(Duration::MAX)
        .register(square)
        .build()
        .expect("pool");
    let result = pool.submit(square, 9).unwrap().result(Some(WAIT));
    assert_eq!(result.map_err(|e| (e.kind(), e.to_string())), Ok(81));
    assert!(!pool.is_broken());
}

/// Just over the 1 GiB frame limit.
const OVER: usize = (1 << 30) + 16;

/// Bytes that encode as one postcard byte string (a copy, not a byte at a time), made of
/// zeroed pages the kernel maps only when touched.
#[derive(Debug)]
struct Blob(Vec<u8>);

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<u8>::deserialize(d).map(Blob)
    }
}

fn blob_len(b: Blob) -> usize {
    b.0.len()
}

fn blob_of(n: u64) -> Blob {
    Blob(vec![0; n as usize])
}

#[test]
fn an_argument_over_the_frame_limit_is_refused_at_submit() {
    let pool = ProcessPool::builder()
        .workers(1)
        .max_crashes(1)
        .register(blob_len)
        .register(square)
        .build()
        .expect("pool");
    let err = pool
        .submit(blob_len, Blob(vec![0; OVER]))
        .map(drop)
        .expect_err("an argument over the frame limit cannot be sent");
    assert_eq!(err.kind(), ErrorKind::Other, "{err}");
    assert!(err.to_string().contains("too large"), "{err}");
    assert!(!pool.is_broken(), "no worker was blamed");
    assert_eq!(
        pool.submit(square, 2).unwrap().result(Some(WAIT)).unwrap(),
        4
    );
}

#[test]
fn a_result_over_the_frame_limit_fails_only_its_job() {
    let pool = ProcessPool::builder()
        .workers(1)
        .max_crashes(1)
        .register(blob_of)
        .register(pid)
        .build()
        .expect("pool");
    let before = pool.submit(pid, ()).unwrap().result(Some(WAIT)).unwrap();
    let err = pool
        .submit(blob_of, OVER as u64)
        .unwrap()
        .into_result(Some(WAIT * 2))
        .expect_err("a result over the frame limit cannot be sent");
    assert_eq!(err.kind(), ErrorKind::Other, "{err}");
    assert!(err.to_string().contains("too large"), "{err}");
    assert!(!pool.is_broken());
    let after = pool.submit(pid, ()).unwrap().result(Some(WAIT)).unwrap();
    assert_eq!(before, after, "the worker was lost");
}

// --- SIGPIPE at its default disposition ---

/// Set in the copy of this test binary that runs the scenario below in a process of its
/// own: it sets SIGPIPE to its default disposition, which would kill the test harness too.
const SIGPIPE_SCENARIO: &str = "BRAID_TEST_SIGPIPE_SCENARIO";

/// A program with SIGPIPE at its default (as many CLIs set it, so that `prog | head` ends
/// quietly) survives a pool writing to a dead worker's pipe (a job, or the frame that tells
/// it to leave). Run again in a process of its own, which sets the disposition.
#[test]
fn shutdown_after_an_idle_worker_died_survives_a_default_sigpipe() {
    if std::env::var_os(SIGPIPE_SCENARIO).is_some() {
        // SAFETY: sets a signal's disposition to SIG_DFL, installing no handler; this process
        // runs this scenario only.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        let pool = ProcessPool::builder()
            .workers(1)
            .register(pid)
            .build()
            .unwrap();
        // The pool writes to a dead worker's pipe unless its thread noticed the death first.
        let victim = pool.submit(pid, ()).unwrap().result(Some(WAIT)).unwrap();
        kill_and_wait_dead(victim);
        let next = pool.submit(pid, ()).unwrap().result(Some(WAIT)).unwrap();
        kill_and_wait_dead(next);
        pool.shutdown(true, false);
        println!("SURVIVED");
        return;
    }
    let (_, text) = common::rerun_in_child(
        "shutdown_after_an_idle_worker_died_survives_a_default_sigpipe",
        &[(SIGPIPE_SCENARIO, "1")],
    );
    assert!(text.contains("SURVIVED"), "{text}");
}

// --- A time limit or a cancel while the argument is still being written ---

/// Writing this much to a worker takes many milliseconds.
const LARGE: usize = 64 << 20;

/// Takes its blob, then naps for a minute: a job that ends only by being stopped.
fn blob_then_nap(b: Blob) -> usize {
    std::thread::sleep(Duration::from_secs(60));
    b.0.len()
}

#[test]
fn a_time_limit_that_expires_while_the_argument_is_written_fails_the_job_once() {
    let pool = ProcessPool::builder()
        .workers(1)
        .register(blob_then_nap)
        .register(pid)
        .build()
        .expect("pool");
    // The worker is ready: the limit starts as the write does, and ends long before it.
    let first = pool.submit(pid, ()).unwrap().result(Some(WAIT)).unwrap();
    let err = pool
        .submit_with_timeout(
            blob_then_nap,
            Blob(vec![7; LARGE]),
            Duration::from_millis(1),
        )
        .unwrap()
        .result(Some(WAIT))
        .expect_err("the job was stopped");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(
        err.to_string()
            .contains("blob_then_nap` ran past its time limit of 1ms"),
        "the job never settled: {err}"
    );
    let next = pool.submit(pid, ()).unwrap().result(Some(WAIT)).unwrap();
    assert_ne!(next, first, "the stopped worker was replaced");
    assert!(!pool.is_broken(), "a time limit is not a crash");
}

/// While this file exists, a new worker waits in its initializer: it never becomes ready.
fn hold_path(pool_process: u32) -> PathBuf {
    std::env::temp_dir().join(format!("braid-ppf-{pool_process}-hold"))
}

#[test]
fn cancelling_a_job_while_its_argument_is_written_settles_it_without_a_new_worker() {
    let pool = ProcessPool::builder()
        .workers(1)
        // Runs in the workers, whose parent is this test's process.
        .initializer(|| {
            let hold = hold_path(std::os::unix::process::parent_id());
            while hold.exists() {
                std::thread::sleep(Duration::from_millis(2));
            }
        })
        .register(blob_then_nap)
        .register(pid)
        .build()
        .expect("pool");
    let hold = hold_path(std::process::id());
    pool.submit(pid, ()).unwrap().result(Some(WAIT)).unwrap();
    std::fs::write(&hold, b"").unwrap();
    let fut = pool.submit(blob_then_nap, Blob(vec![7; LARGE])).unwrap();
    // Running from its dispatch on: the argument's write has just begun. Spinning, not
    // sleeping, so that the cancel lands while it goes on.
    let deadline = Instant::now() + WAIT;
    while !fut.running() {
        assert!(Instant::now() < deadline, "the job was never dispatched");
        std::hint::spin_loop();
    }
    let outcome = fut.cancel_and_wait(Some(WAIT));
    std::fs::remove_file(&hold).unwrap();
    assert!(
        matches!(outcome, CancelOutcome::Cancelled),
        "expected Cancelled at once, without waiting for a new worker; got {outcome:?}"
    );
    assert!(!pool.is_broken(), "a cancel is not a crash");
}

// --- Absurd worker counts ---

#[test]
fn usize_max_workers_are_refused_at_build_instead_of_panicking() {
    let err = ProcessPool::builder()
        .workers(usize::MAX)
        .build()
        .expect_err("too many workers");
    assert_eq!(err.kind(), ErrorKind::InvalidState, "{err}");
    assert!(err.to_string().contains("at most 1024"), "{err}");
}

#[test]
fn a_worker_count_too_large_to_allocate_is_refused_at_build_instead_of_aborting() {
    let err = ProcessPool::builder()
        .workers(1 << 40)
        .build()
        .expect_err("too many workers");
    assert_eq!(err.kind(), ErrorKind::InvalidState, "{err}");
    assert!(err.to_string().contains("at most 1024"), "{err}");
    let err = ProcessPool::builder()
        .workers(ProcessPool::MAX_WORKERS + 1)
        .build()
        .expect_err("one worker too many");
    assert_eq!(err.kind(), ErrorKind::InvalidState, "{err}");
}

// --- A child process started before build() ---

fn exit_with(code: i32) -> u32 {
    std::process::exit(code)
}

#[test]
fn a_child_started_before_build_does_not_keep_a_dead_workers_job_waiting() {
    // Before build() on purpose: a worker runs this test again up to build(), so it starts a
    // `sleep` of its own before it serves, which inherits the worker's stdin and stdout and
    // outlives it (longer than the wait below). Not its stderr, the test harness's: the
    // harness's reader would wait for that `sleep` too.
    let mut helper = Command::new("sleep")
        .arg((WAIT * 3).as_secs().to_string())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start sleep");
    let pool = ProcessPool::builder()
        .workers(1)
        // No replacement worker: it would start one more `sleep`.
        .max_crashes(1)
        .register(exit_with)
        .build()
        .expect("pool");
    let result = pool.submit(exit_with, 3).unwrap().result(Some(WAIT));
    let dropped = within(WAIT, move || drop(pool)).is_some();
    let _ = helper.kill();
    let _ = helper.wait();
    let err = result.expect_err("the worker exited");
    assert_eq!(err.kind(), ErrorKind::BrokenExecutor, "{err}");
    assert!(err.to_string().contains("exited with status 3"), "{err}");
    assert!(dropped, "dropping the pool waited for the worker's child");
}

// --- A temp directory whose path is too long for a socket's address ---

const LONG_TMPDIR_SCENARIO: &str = "BRAID_TEST_LONG_TMPDIR_SCENARIO";

/// A pool builds and runs jobs when `TMPDIR` names a directory whose path is too long for a
/// Unix socket's address (about a hundred bytes): its workers' sockets go to `/tmp` instead.
/// Every worker's start failed, so every job failed. Run again in a process of its own, with
/// that `TMPDIR`.
#[test]
fn a_pool_runs_jobs_when_the_temp_directorys_path_is_too_long_for_a_socket() {
    if std::env::var_os(LONG_TMPDIR_SCENARIO).is_some() {
        let pool = ProcessPool::builder()
            .workers(2)
            .register(pid)
            .build()
            .unwrap();
        let worker = pool.submit(pid, ()).unwrap().result(Some(WAIT)).unwrap();
        assert_ne!(worker, std::process::id());
        pool.shutdown(true, false);
        println!("RAN IN A WORKER");
        return;
    }
    let long = std::env::temp_dir()
        .join(format!("braid-long-tmpdir-{}", std::process::id()))
        .join("a-directory-name-of-forty-bytes-or-so-xx")
        .join("a-directory-name-of-forty-bytes-or-so-yy")
        .join("a-directory-name-of-forty-bytes-or-so-zz");
    assert!(long.as_os_str().len() > 110, "{}", long.display());
    std::fs::create_dir_all(&long).unwrap();
    let (_, text) = common::rerun_in_child(
        "a_pool_runs_jobs_when_the_temp_directorys_path_is_too_long_for_a_socket",
        &[
            (LONG_TMPDIR_SCENARIO, "1"),
            ("TMPDIR", long.to_str().expect("a UTF-8 path")),
        ],
    );
    let left_in_long: Vec<_> = std::fs::read_dir(&long).unwrap().flatten().collect();
    let _ = std::fs::remove_dir_all(long.ancestors().nth(3).unwrap());
    assert!(text.contains("RAN IN A WORKER"), "{text}");
    assert!(left_in_long.is_empty(), "{left_in_long:?}");
}
