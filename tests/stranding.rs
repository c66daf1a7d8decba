//! Work never strands behind a busy loop (spec: "with 2 loops, while one loop is stuck
//! 500 ms in a blocking callback, tasks queued behind it still run on the other loop, and a
//! sleep(10 ms) started on the stuck loop still completes within 50 ms. Test both."):
//! (a) tasks pushed to a loop's own queue right before that loop blocks in a callback run on
//! the other loop long before the block ends; (b) a task's sleep registered on a loop that
//! then blocks still wakes on time, on the other loop. The blocking `std::thread::sleep` inside
//! a callback is the scenario itself. Tests here share the machine's two cores, so they run
//! one at a time (a static mutex).

use braid::{Runtime, Task};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::mpsc;
use std::task::Poll;
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

mod common;
use common::{serial, WAIT};

const BLOCK: Duration = Duration::from_millis(500);

fn runtime() -> Runtime {
    Runtime::builder().workers(2).build().expect("runtime")
}

/// Blocks loop 0 for 500 ms in a callback that first queues `n` tasks on loop 0's own queue
/// (`create_task` from code running on loop 0); returns, per task, the thread it ran on and
/// when it finished relative to the start of the block, plus loop 0's thread.
fn tasks_queued_behind_a_blocked_loop(n: usize) -> (ThreadId, Vec<(ThreadId, Duration)>) {
    let rt = runtime();
    let (tx, rx) = mpsc::channel();
    rt.event_loops()[0]
        .call_soon_threadsafe(move || {
            let start = Instant::now();
            let tasks: Vec<Task<(ThreadId, Duration)>> = (0..n)
                .map(|_| {
                    braid::create_task(async move {
                        braid::yield_now().await?;
                        Ok((thread::current().id(), start.elapsed()))
                    })
                })
                .collect();
            tx.send((thread::current().id(), tasks)).unwrap();
            thread::sleep(BLOCK); // the stuck loop: the scenario under test
        })
        .unwrap();
    let (blocked_thread, tasks) = rx.recv_timeout(WAIT).unwrap();
    let mut results = Vec::new();
    for t in tasks {
        results.push(rt.run_until_complete(t).unwrap());
    }
    rt.shutdown(WAIT).unwrap();
    (blocked_thread, results)
}

fn check_ran_elsewhere_in_time(blocked: ThreadId, results: &[(ThreadId, Duration)]) {
    for (i, (thread, done_after)) in results.iter().enumerate() {
        assert_ne!(*thread, blocked, "task {i} ran on the blocked loop");
        assert!(
            *done_after < Duration::from_millis(250),
            "task {i} finished {done_after:?} into the 500 ms block (all: {results:?})"
        );
    }
}

/// (a) Eight tasks queued on loop 0 just before it blocks for 500 ms all run on loop 1 and
/// finish within 250 ms of the block starting.
#[test]
fn tasks_queued_behind_a_blocked_loop_run_on_the_other_loop() {
    let _serial = serial();
    let (blocked, results) = tasks_queued_behind_a_blocked_loop(8);
    assert_eq!(results.len(), 8);
    check_ran_elsewhere_in_time(blocked, &results);
}

/// (a) The same with a single queued task (no second task to prompt a sibling wake-up: only
/// the stuck-loop detection can rescue it).
#[test]
fn a_single_task_queued_behind_a_blocked_loop_runs_on_the_other_loop() {
    let _serial = serial();
    let (blocked, results) = tasks_queued_behind_a_blocked_loop(1);
    assert_eq!(results.len(), 1);
    check_ran_elsewhere_in_time(blocked, &results);
}

/// (a) The same when the loop is stuck in a task's poll rather than a callback: tasks the
/// stuck task spawned (onto its own loop's queue) just before blocking run on the other loop.
#[test]
fn tasks_queued_behind_a_task_blocking_its_loop_run_on_the_other_loop() {
    let _serial = serial();
    let rt = runtime();
    let (tx, rx) = mpsc::channel();
    let blocker = rt
        .event_loop()
        .spawn(async move {
            let start = Instant::now();
            let tasks: Vec<Task<(ThreadId, Duration)>> = (0..4)
                .map(|_| {
                    braid::create_task(async move { Ok((thread::current().id(), start.elapsed())) })
                })
                .collect();
            tx.send((thread::current().id(), tasks)).unwrap();
            thread::sleep(BLOCK); // a poll that blocks its loop: the scenario under test
            Ok(())
        })
        .unwrap();
    let (blocked, tasks) = rx.recv_timeout(WAIT).unwrap();
    let mut results = Vec::new();
    for t in tasks {
        results.push(rt.run_until_complete(t).unwrap());
    }
    rt.run_until_complete(blocker).unwrap();
    check_ran_elsewhere_in_time(blocked, &results);
    rt.shutdown(WAIT).unwrap();
}

/// (a) A task *woken* (not spawned) on a loop that then blocks: the wake queues it as the one
/// task that loop runs next, which siblings normally leave to it (see
/// `RuntimeShared::can_steal_from`); the stuck-loop detection still hands it to the other loop,
/// where it finishes long before the block ends.
#[test]
fn a_task_woken_on_a_loop_that_then_blocks_runs_on_the_other_loop() {
    let _serial = serial();
    let rt = runtime();
    let task = rt
        .event_loop()
        .spawn(async {
            let blocked_thread = thread::current().id();
            let promise = braid::Promise::<Instant>::new();
            let setter = promise.clone();
            // Pinned to this task's loop, so it runs once this poll has returned and the task
            // waits on the promise: the wake happens on this loop, which then blocks.
            braid::call_soon(move || {
                setter.set_result(Instant::now()).unwrap();
                thread::sleep(BLOCK);
            });
            let woken_at = promise.await?;
            Ok((blocked_thread, thread::current().id(), woken_at.elapsed()))
        })
        .unwrap();
    let (blocked, resumed, after) = rt.run_until_complete(task).unwrap();
    check_ran_elsewhere_in_time(blocked, &[(resumed, after)]);
    rt.shutdown(WAIT).unwrap();
}

/// (b) A task started on loop 0 begins a 10 ms sleep (polled once, so it is registered),
/// then pins a 500 ms blocking callback to the loop it runs on with `call_soon`; the sleep
/// still completes within 50 ms of its start, the task resuming on the other loop.
#[test]
fn a_sleep_started_on_a_loop_that_then_blocks_completes_on_time() {
    let _serial = serial();
    let rt = runtime();
    let (tx, rx) = mpsc::channel();
    rt.event_loops()[0]
        .call_soon_threadsafe(move || {
            let task = braid::create_task(async {
                let started = Instant::now();
                let mut sleep = braid::sleep(Duration::from_millis(10));
                let pending =
                    poll_fn(|cx| Poll::Ready(Pin::new(&mut sleep).poll(cx).is_pending())).await;
                assert!(pending, "a 10 ms sleep completed at once");
                let blocked_loop = braid::get_running_loop().id();
                let blocked_thread = thread::current().id();
                // Pinned to the loop this task is on: it runs right after this poll returns.
                braid::call_soon(|| thread::sleep(BLOCK));
                sleep.await?;
                let slept = started.elapsed();
                Ok((
                    slept,
                    blocked_loop,
                    blocked_thread,
                    braid::get_running_loop().id(),
                    thread::current().id(),
                ))
            });
            tx.send(task).unwrap();
        })
        .unwrap();
    let task = rx.recv_timeout(WAIT).unwrap();
    let (slept, blocked_loop, blocked_thread, resumed_loop, resumed_thread) =
        rt.run_until_complete(task).unwrap();
    assert!(
        slept >= Duration::from_millis(10),
        "the sleep ended early: {slept:?}"
    );
    assert!(
        slept < Duration::from_millis(50),
        "a 10 ms sleep started on stuck loop {blocked_loop} took {slept:?}"
    );
    assert_ne!(resumed_thread, blocked_thread);
    assert_ne!(resumed_loop, blocked_loop);
    rt.shutdown(WAIT).unwrap();
}

/// (b) The same when the loop is blocked through `call_soon_threadsafe` (the way another
/// thread would block it) once the task's sleep is registered: the sleep completes within
/// 50 ms anyway.
#[test]
fn a_sleep_on_a_loop_blocked_from_outside_completes_on_time() {
    let _serial = serial();
    let rt = runtime();
    let (tx, rx) = mpsc::channel();
    rt.event_loops()[0]
        .call_soon_threadsafe(move || {
            let task = braid::create_task(async move {
                let here = braid::get_running_loop();
                let started = Instant::now();
                let mut sleep = braid::sleep(Duration::from_millis(10));
                let pending =
                    poll_fn(|cx| Poll::Ready(Pin::new(&mut sleep).poll(cx).is_pending())).await;
                assert!(pending);
                // Block the loop we are on (loop 0 unless a sibling stole us before our first
                // poll), through the public threadsafe door, as another thread would.
                here.call_soon_threadsafe(|| thread::sleep(BLOCK))?;
                let blocked_thread = thread::current().id();
                sleep.await?;
                Ok((
                    started.elapsed(),
                    here.id(),
                    blocked_thread,
                    thread::current().id(),
                ))
            });
            tx.send(task).unwrap();
        })
        .unwrap();
    let task = rx.recv_timeout(WAIT).unwrap();
    let (slept, blocked_loop, blocked_thread, resumed_thread) =
        rt.run_until_complete(task).unwrap();
    assert!(
        slept >= Duration::from_millis(10),
        "the sleep ended early: {slept:?}"
    );
    assert!(
        slept < Duration::from_millis(50),
        "a 10 ms sleep on stuck loop {blocked_loop} took {slept:?}"
    );
    assert_ne!(resumed_thread, blocked_thread);
    rt.shutdown(WAIT).unwrap();
}

/// The thread inside `run_until_complete` "acts as one more loop": a 10 ms sleep in the
/// future it drives completes within 50 ms even while the runtime's only worker loop is
/// stuck for 500 ms in a blocking callback.
#[test]

fn a_sleep_in_run_until_complete_completes_while_the_only_worker_is_stuck() {
    let _serial = serial();
    let rt = Runtime::builder().workers(1).build().expect("runtime");
    let (tx, rx) = mpsc::channel();
    rt.event_loop()
        .call_soon_threadsafe(move || {
            tx.send(()).unwrap();
            thread::sleep(BLOCK); // the stuck loop: the scenario under test
        })
        .unwrap();
    rx.recv_timeout(WAIT).unwrap();
    let slept = rt
        .run_until_complete(async {
            let start = Instant::now();
            braid::sleep(Duration::from_millis(10)).await?;
            Ok(start.elapsed())
        })
        .unwrap();
    assert!(slept >= Duration::from_millis(10));
    assert!(
        slept < Duration::from_millis(50),
        "a 10 ms sleep in run_until_complete took {slept:?} while the worker was stuck"
    );
    rt.shutdown(WAIT).unwrap();
}

/// DESIGN.md: "I/O registered on a stuck loop must still fire within a bounded delay". A task
/// waits for data on a socket registered with loop A's poller (it first waited there: with no
/// socket on any loop yet, the tie keeps it on the loop it runs on); loop A
/// then blocks for 500 ms in a callback; the peer sends. The monitor thread polls the stuck
/// loop's poller, so the task is woken and finishes on the other loop long before A is free.
#[test]
fn a_socket_registered_on_a_loop_that_then_blocks_still_wakes_its_task() {
    let _serial = serial();
    let rt = runtime();
    let (registered_tx, registered_rx) = mpsc::channel();
    let (peer, reader) = std::os::unix::net::UnixStream::pair().unwrap();
    let reader = braid::UnixStream::from_std(reader).unwrap();
    let waiting = rt
        .event_loop()
        .spawn(async move {
            let mut byte = [0u8; 1];
            // The first read finds nothing: the socket is registered with this loop's poller
            // (every loop holds none, and a tie keeps it here; see `io::driver`).
            let n = {
                let mut read = reader.read(&mut byte);
                let mut told = false;
                poll_fn(|cx| {
                    let polled = Pin::new(&mut read).poll(cx);
                    if polled.is_pending() && !told {
                        told = true;
                        let lp = braid::get_running_loop();
                        registered_tx.send((lp, thread::current().id())).unwrap();
                    }
                    polled
                })
                .await?
            };
            Ok((n, byte[0], thread::current().id(), Instant::now()))
        })
        .unwrap();
    let (home, home_thread) = registered_rx.recv_timeout(WAIT).unwrap();
    let (blocked_tx, blocked_rx) = mpsc::channel();
    home.call_soon_threadsafe(move || {
        blocked_tx.send(Instant::now()).unwrap();
        thread::sleep(BLOCK); // the stuck loop: the scenario under test
    })
    .unwrap();
    let blocked_at = blocked_rx.recv_timeout(WAIT).unwrap();
    std::io::Write::write_all(&mut &peer, b"x").unwrap();
    let sent_at = Instant::now();
    let (n, byte, ran_on, finished_at) = rt.run_until_complete(waiting).unwrap();
    assert_eq!((n, byte), (1, b'x'));
    assert_ne!(ran_on, home_thread, "the task waited for its stuck loop");
    let delay = finished_at.duration_since(sent_at);
    eprintln!("woken {delay:?} after the data arrived (the loop was stuck for {BLOCK:?})");
    assert!(
        finished_at.duration_since(blocked_at) < BLOCK - Duration::from_millis(200),
        "the read finished {delay:?} after the data arrived: it waited for the stuck loop"
    );
    rt.shutdown(WAIT).unwrap();
}
