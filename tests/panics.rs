//! Panics never take a loop down: a panicking task becomes an `Err` of kind Panicked with
//! the panic text and the same loop goes on running tasks; a panicking callback reaches the
//! loop's exception handler with the callback named; the free functions panic with "no
//! running event loop" outside a loop; and `run_until_complete` / `run_forever` called on a
//! loop thread return InvalidState at once instead of deadlocking (asyncio raises
//! `RuntimeError: This event loop is already running`; CPython `test_events.py`
//! `test_run_until_complete_nesting`).

use braid::{ErrorKind, LoopState};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{runtime, SchedulesWhenDropped, WAIT};

/// The text of a caught panic payload.
fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "<non-string panic>".to_owned()
    }
}

/// A panic in a task becomes `Err` with kind Panicked and the panic text as its message,
/// and the same (only) loop thread keeps running tasks afterwards.
#[test]
fn panic_in_a_task_becomes_a_panicked_error_and_the_loop_keeps_working() {
    let rt = runtime(1);
    let lp = rt.event_loop();
    let boom = lp
        .spawn(async {
            if true {
                panic!("task exploded: {}", 42);
            }
            Ok(())
        })
        .unwrap();
    let err = rt.run_until_complete(boom).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked);
    assert_eq!(err.message(), Some("task exploded: 42"));

    let str_boom = lp
        .spawn(async {
            if true {
                panic!("static text")
            }
            Ok(())
        })
        .unwrap();
    let err = rt.run_until_complete(str_boom).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked);
    assert_eq!(err.message(), Some("static text"));

    // The same loop thread goes on: more tasks, with awaits, after the panics.
    let mut threads = Vec::new();
    for i in 0..10u32 {
        let t = lp
            .spawn(async move {
                braid::sleep(Duration::from_millis(1)).await?;
                braid::yield_now().await?;
                Ok((i * 2, thread::current().id()))
            })
            .unwrap();
        let (v, th) = rt.run_until_complete(t).unwrap();
        assert_eq!(v, i * 2);
        threads.push(th);
    }
    threads.dedup();
    assert_eq!(
        threads.len(),
        1,
        "a single-loop runtime ran tasks on several threads"
    );
    rt.shutdown(WAIT).unwrap();
}

/// A panic in a task awaited by another task reaches the awaiter as a Panicked error it
/// can handle, and the awaiter's own task finishes normally.
#[test]
fn panic_in_an_awaited_task_is_an_error_for_the_awaiter() {
    let rt = runtime(2);
    let out = rt
        .run_until_complete(async {
            let child = braid::create_task(async {
                braid::yield_now().await?;
                if true {
                    panic!("child broke");
                }
                Ok(1)
            });
            match child.await {
                Err(e) if e.kind() == ErrorKind::Panicked => Ok(e.message().map(str::to_owned)),
                other => Err(braid::Error::msg(format!("unexpected {other:?}"))),
            }
        })
        .unwrap();
    assert_eq!(out.as_deref(), Some("child broke"));
    rt.shutdown(WAIT).unwrap();
}

/// A panic in the future driven by `run_until_complete` comes back as a Panicked error, and
/// the runtime can be driven again afterwards.
#[test]
fn panic_in_the_run_until_complete_future_is_a_panicked_error() {
    let rt = runtime(1);
    let err = rt
        .run_until_complete(async {
            braid::yield_now().await?;
            if true {
                panic!("main broke");
            }
            Ok(())
        })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked);
    assert_eq!(err.message(), Some("main broke"));
    assert_eq!(rt.run_until_complete(async { Ok(5) }).unwrap(), 5);
    rt.shutdown(WAIT).unwrap();
}

fn explode_on_purpose() {
    panic!("callback exploded");
}

/// A panic in a callback reaches the loop's exception handler with the callback named (in
/// `callback()` and in the message) and the error of kind Panicked carrying the text.
#[test]
fn panic_in_a_callback_reaches_the_handler_with_the_callback_named() {
    let rt = runtime(2);
    let lp = rt.event_loops()[0].clone();
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    lp.set_exception_handler(move |ctx| {
        tx.lock()
            .unwrap()
            .send((
                ctx.message.clone(),
                ctx.callback().map(str::to_owned),
                ctx.error
                    .as_ref()
                    .map(|e| (e.kind(), e.message().map(str::to_owned))),
            ))
            .unwrap();
    });
    lp.call_soon_threadsafe(explode_on_purpose).unwrap();
    let (message, callback, error) = rx.recv_timeout(WAIT).expect("the handler was called");
    let callback = callback.expect("the context names the callback");
    assert!(
        callback.contains("explode_on_purpose"),
        "callback named {callback:?}"
    );
    assert!(
        message.contains("explode_on_purpose"),
        "message {message:?}"
    );
    assert_eq!(
        error,
        Some((ErrorKind::Panicked, Some("callback exploded".to_owned())))
    );
    // The loop is still alive.
    let (tx2, rx2) = mpsc::channel();
    lp.call_soon_threadsafe(move || tx2.send(()).unwrap())
        .unwrap();
    rx2.recv_timeout(WAIT)
        .expect("the loop still runs callbacks");
    rt.shutdown(WAIT).unwrap();
}

/// A panic inside the exception handler itself does not take the loop down either.
#[test]
fn panicking_exception_handler_does_not_kill_the_loop() {
    let rt = runtime(1);
    let lp = rt.event_loop();
    lp.set_exception_handler(|_| panic!("the handler broke too"));
    lp.call_soon_threadsafe(|| panic!("first")).unwrap();
    let (tx, rx) = mpsc::channel();
    lp.call_soon_threadsafe(move || tx.send(()).unwrap())
        .unwrap();
    rx.recv_timeout(WAIT)
        .expect("the loop survived a panicking handler");
    assert_eq!(
        rt.run_until_complete(lp.spawn(async { Ok(3) }).unwrap())
            .unwrap(),
        3
    );
    rt.shutdown(WAIT).unwrap();
}

/// `create_task`, `call_soon`, `spawn_local`, `call_later`, `call_at`, `get_running_loop`,
/// `time` and `all_tasks` outside a loop panic with "no running event loop";
/// `try_get_running_loop` returns None.
#[test]
fn free_functions_outside_a_loop_panic_with_no_running_event_loop() {
    type Case = (&'static str, Box<dyn Fn()>);
    let cases: Vec<Case> = vec![
        (
            "create_task",
            Box::new(|| drop(braid::create_task(async { Ok(()) }))),
        ),
        ("call_soon", Box::new(|| drop(braid::call_soon(|| ())))),
        (
            "spawn_local",
            Box::new(|| drop(braid::spawn_local(async { Ok(()) }))),
        ),
        (
            "call_later",
            Box::new(|| drop(braid::call_later(Duration::from_millis(1), || ()))),
        ),
        (
            "call_at",
            Box::new(|| drop(braid::call_at(std::time::Instant::now(), || ()))),
        ),
        (
            "get_running_loop",
            Box::new(|| drop(braid::get_running_loop())),
        ),
        (
            "time",
            Box::new(|| {
                let _ = braid::time();
            }),
        ),
        ("all_tasks", Box::new(|| drop(braid::all_tasks()))),
    ];
    for (name, f) in cases {
        let payload = catch_unwind(AssertUnwindSafe(f)).expect_err(name);
        let text = panic_text(payload);
        assert!(
            text.contains("no running event loop"),
            "{name} panicked with {text:?}"
        );
    }
    assert!(braid::try_get_running_loop().is_none());
}

/// `run_until_complete` (and `run_forever`) called from a callback on one of the runtime's
/// loop threads returns InvalidState at once instead of deadlocking.
#[test]
fn run_until_complete_in_a_loop_callback_is_invalid_state() {
    let rt = Arc::new(runtime(2));
    let (tx, rx) = mpsc::channel();
    let inner = rt.clone();
    rt.event_loops()[1]
        .call_soon_threadsafe(move || {
            let a = inner
                .run_until_complete(async { Ok(1) })
                .map_err(|e| e.kind());
            let b = inner.run_forever().map_err(|e| e.kind());
            drop(inner); // before reporting, so the test thread holds the last reference
            tx.send((a, b)).unwrap();
        })
        .unwrap();
    let (a, b) = rx
        .recv_timeout(WAIT)
        .expect("returned instead of deadlocking");
    assert_eq!(a, Err(ErrorKind::InvalidState));
    assert_eq!(b, Err(ErrorKind::InvalidState));
    let rt = Arc::try_unwrap(rt).expect("the only reference left");
    rt.shutdown(WAIT).unwrap();
}

/// `run_until_complete` called from inside a task on a worker loop returns InvalidState at
/// once; so does a nested call inside the future `run_until_complete` is driving.
#[test]
fn run_until_complete_in_a_task_or_nested_is_invalid_state() {
    let rt = Arc::new(runtime(2));
    let inner = rt.clone();
    let t = rt
        .event_loop()
        .spawn(async move {
            let r = inner
                .run_until_complete(async { Ok(1) })
                .map_err(|e| e.kind());
            drop(inner);
            Ok(r)
        })
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let r2 = rt.clone();
    let waiter = thread::spawn(move || {
        let from_task = r2.run_until_complete(t);
        drop(r2);
        tx.send(from_task).unwrap();
    });
    let from_task = rx
        .recv_timeout(WAIT)
        .expect("returned instead of deadlocking")
        .unwrap();
    waiter.join().unwrap();
    assert_eq!(from_task, Err(ErrorKind::InvalidState));

    let nested = rt
        .run_until_complete(async {
            Ok(rt.run_until_complete(async { Ok(1) }).map_err(|e| e.kind()))
        })
        .unwrap();
    assert_eq!(nested, Err(ErrorKind::InvalidState));
    let rt = Arc::try_unwrap(rt).expect("the only reference left");
    rt.shutdown(WAIT).unwrap();
}

/// A value whose destructor panics.
struct PanicsWhenDropped;

impl Drop for PanicsWhenDropped {
    fn drop(&mut self) {
        panic!("destructor broke");
    }
}

/// What a loop's exception handler was given: the message, the callback named, the error's
/// kind and text.
#[derive(Debug, PartialEq)]
struct Report {
    message: String,
    callback: Option<String>,
    error: Option<(ErrorKind, Option<String>)>,
}

/// The panic of [`PanicsWhenDropped`], as a report carries it.
fn destructor_broke() -> Option<(ErrorKind, Option<String>)> {
    Some((ErrorKind::Panicked, Some("destructor broke".to_owned())))
}

/// Sets `lp`'s exception handler to one that collects what it is given.
fn collect_reports(lp: &braid::EventLoop) -> Arc<Mutex<Vec<Report>>> {
    let reports = Arc::new(Mutex::new(Vec::new()));
    let seen = reports.clone();
    lp.set_exception_handler(move |ctx| {
        seen.lock().unwrap().push(Report {
            message: ctx.message.clone(),
            callback: ctx.callback().map(str::to_owned),
            error: ctx
                .error
                .as_ref()
                .map(|e| (e.kind(), e.message().map(str::to_owned))),
        })
    });
    reports
}

/// Waits until `reports` holds `n`; a test fails rather than hangs if it never does.
fn wait_for_reports(reports: &Mutex<Vec<Report>>, n: usize) {
    let deadline = Instant::now() + WAIT;
    while reports.lock().unwrap().len() < n {
        assert!(
            Instant::now() < deadline,
            "only {:?}",
            reports.lock().unwrap()
        );
        thread::yield_now();
    }
}

/// A task's output stored for its handle is dropped with the task's last count, wherever
/// that goes: with the handle, or with the registry's count, which a loop's sweep of finished
/// tasks or a later spawn's may drop. A panic in its destructor reaches the exception handler
/// once per task and takes no thread down: neither the thread that spawned the tasks and
/// dropped their handles, nor the loop, nor the task on it that dropped the last handle.
#[test]
fn a_panicking_destructor_of_a_stored_output_is_reported_and_takes_no_thread_down() {
    const TASKS: usize = 200;
    let rt = runtime(1);
    let lp = rt.event_loop();
    let reports = collect_reports(&lp);
    for _ in 0..TASKS {
        let task = lp.spawn(async { Ok(PanicsWhenDropped) }).unwrap();
        let deadline = Instant::now() + WAIT;
        while !task.done() {
            assert!(Instant::now() < deadline, "the task never finished");
            thread::yield_now();
        }
        // Finished with its handle alive: the output was stored.
        drop(task);
    }
    // On the loop thread: a task drops its finished child's handle, the last count (the
    // child left its own loop's registry as it finished). The dropping task goes on.
    let on_the_loop = lp
        .run_coroutine_threadsafe(async {
            for _ in 0..TASKS {
                let child = braid::create_task(async { Ok(PanicsWhenDropped) });
                while !child.done() {
                    braid::yield_now().await?;
                }
                drop(child);
            }
            Ok(7)
        })
        .unwrap();
    assert_eq!(on_the_loop.result(Some(WAIT)).unwrap(), 7);
    rt.shutdown(WAIT).unwrap();
    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 2 * TASKS, "one report per output");
    for report in reports.iter() {
        assert!(report.message.contains("destructor"), "{report:?}");
        assert_eq!(report.error, destructor_broke());
    }
}

/// Captures a value whose destructor panics (by value: the closure owns it).
fn owning(value: PanicsWhenDropped) -> impl FnOnce() + Send + 'static {
    move || {
        std::hint::black_box(&value);
    }
}

/// A cancelled callback is dropped by its loop without running: `call_soon`'s and
/// `call_soon_threadsafe`'s from the ready queue, `call_later`'s from the timers. A panic in a
/// destructor of what its closure owns reaches the exception handler, with the callback
/// named, and the loop goes on.
#[test]
fn a_panicking_destructor_of_a_cancelled_callback_is_reported_and_the_loop_goes_on() {
    let rt = runtime(1);
    let lp = rt.event_loop();
    let reports = collect_reports(&lp);
    let loop_handle = lp.clone();
    let cancelled_all = lp
        .run_coroutine_threadsafe(async move {
            // Cancelled within this step, before the loop can reach any of them.
            braid::call_soon(owning(PanicsWhenDropped)).cancel();
            let due = Instant::now() + Duration::from_millis(1);
            braid::call_later(Duration::from_millis(1), owning(PanicsWhenDropped)).cancel();
            loop_handle
                .call_soon_threadsafe(owning(PanicsWhenDropped))?
                .cancel();
            // The step ends with the timer due: the loop meets it among the timers it fires,
            // not as the next deadline to sleep to.
            while Instant::now() < due {
                std::hint::spin_loop();
            }
            Ok(())
        })
        .unwrap();
    cancelled_all.result(Some(WAIT)).unwrap();
    // All three dropped by the running loop, not by its close.
    wait_for_reports(&reports, 3);
    // The loop goes on (a future with a timeout: a dead loop fails the test instead of
    // hanging it).
    let seven = lp.run_coroutine_threadsafe(async { Ok(7) }).unwrap();
    assert_eq!(seven.result(Some(WAIT)).unwrap(), 7);
    rt.shutdown(WAIT).unwrap();
    assert_eq!(lp.state(), LoopState::Closed);
    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 3, "one report per callback: {reports:?}");
    for report in reports.iter() {
        assert!(report.message.contains("destructor"), "{report:?}");
        assert!(
            report.callback.is_some(),
            "the report names the callback: {report:?}"
        );
        assert_eq!(report.error, destructor_broke());
    }
}

/// A task's future and a detached task's success are dropped as the task finishes: a panic
/// in a destructor there is reported too, and the task's outcome stays what it was.
#[test]
fn a_panicking_destructor_dropped_as_a_task_finishes_is_reported() {
    let rt = runtime(1);
    let lp = rt.event_loop();
    let reports = collect_reports(&lp);
    let outcome = lp
        .run_coroutine_threadsafe(async {
            // Cancelled before its first step: its future, which owns the value, is dropped
            // unpolled.
            let owned = PanicsWhenDropped;
            let unstarted = braid::create_task(async move {
                std::hint::black_box(&owned);
                Ok(())
            });
            unstarted.cancel();
            let cancelled = matches!(unstarted.await, Err(e) if e.is_cancelled());
            // Detached: its success is dropped as it finishes.
            let detached = braid::create_task(async { Ok(PanicsWhenDropped) });
            drop(detached);
            Ok(cancelled)
        })
        .unwrap();
    assert!(
        outcome.result(Some(WAIT)).unwrap(),
        "the task ended cancelled"
    );
    wait_for_reports(&reports, 2);
    rt.shutdown(WAIT).unwrap();
    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 2, "one report per destructor: {reports:?}");
    for report in reports.iter() {
        assert!(report.message.contains("destructor"), "{report:?}");
        assert_eq!(report.error, destructor_broke());
    }
}

/// Callbacks still queued when their loop closes are dropped unrun, and so are those their
/// destructors schedule meanwhile; a destructor that panics then is reported too, and the
/// loop closes.
#[test]
fn a_panicking_destructor_of_a_callback_left_at_close_is_reported_and_the_loop_closes() {
    let rt = runtime(1);
    let lp = rt.event_loop();
    let reports = collect_reports(&lp);
    let queued = lp
        .run_coroutine_threadsafe(async {
            // Far off: still waiting when the loop closes.
            braid::call_later(Duration::from_secs(3600), owning(PanicsWhenDropped));
            // Its destructor schedules a callback owning a `PanicsWhenDropped`.
            let later = SchedulesWhenDropped::new(owning(PanicsWhenDropped));
            braid::call_later(Duration::from_secs(3600), move || drop(later));
            Ok(())
        })
        .unwrap();
    queued.result(Some(WAIT)).unwrap();
    rt.shutdown(WAIT).unwrap();
    // A loop thread that died in `close` would have left it Closing.
    assert_eq!(lp.state(), LoopState::Closed);
    let reports = reports.lock().unwrap();
    assert_eq!(
        reports
            .iter()
            .filter(|r| r.message.contains("destructor"))
            .count(),
        2,
        "both destructors' panics were reported: {reports:?}"
    );
    assert!(
        reports
            .iter()
            .any(|r| r.message.contains("3 callback(s) that never ran")),
        "the unrun callbacks were counted: {reports:?}"
    );
}

/// A done callback of a task that the closing loop finishes (a task pinned to it that never
/// took the shutdown's cancel) runs at once, there: a panic in it reaches the exception
/// handler, with the callback named, and the loop closes.
#[test]
fn a_panicking_done_callback_run_by_a_closing_loop_is_reported_and_the_loop_closes() {
    let rt = runtime(1);
    let lp = rt.event_loop();
    let reports = collect_reports(&lp);
    let pending = lp
        .run_coroutine_threadsafe(async {
            // Pinned to the loop, and deaf to the shutdown's cancel (no braid future takes
            // it): only its loop's close finishes it. Started before the shutdown: a task
            // cancelled before its first step ends at once, within the shutdown's timeout.
            let started = braid::Promise::<()>::new();
            let starting = started.clone();
            let stuck = braid::spawn_local(async move {
                starting.set_result(())?;
                std::future::pending::<braid::Result<()>>().await
            });
            stuck.add_done_callback(|_| panic!("done callback broke"));
            started.await
        })
        .unwrap();
    pending.result(Some(WAIT)).unwrap();
    // The shutdown gives up on the task after its timeout, then stops the loop.
    let refused = rt.shutdown(Duration::from_millis(50)).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Timeout);
    assert_eq!(lp.state(), LoopState::Closed);
    let reports = reports.lock().unwrap();
    assert!(
        reports
            .iter()
            .any(|r| r.callback.as_deref() == Some("done callback")
                && r.error == Some((ErrorKind::Panicked, Some("done callback broke".to_owned())))),
        "the done callback's panic was reported: {reports:?}"
    );
}

/// Calls `stop` on its loop when dropped.
struct StopsWhenDropped(braid::EventLoop);

impl Drop for StopsWhenDropped {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Callbacks sent to a host loop on another thread, which never ran it again, are dropped by
/// the shutdown, on the thread that calls it: a destructor's panic there is reported to that
/// host loop's exception handler, with the unrun callbacks counted, and the shutdown returns.
#[test]
fn a_panicking_destructor_of_a_callback_left_for_another_host_loop_is_reported_at_shutdown() {
    let rt = Arc::new(runtime(1));
    let (host_tx, host_rx) = mpsc::channel();
    let (shut_tx, shut_rx) = mpsc::channel::<()>();
    let host_rt = rt.clone();
    // The host's thread outlives the shutdown: its exit would close the loop itself.
    let host_thread = thread::spawn(move || {
        let host = host_rt.run_until_complete(async { Ok(braid::get_running_loop()) });
        drop(host_rt);
        host_tx.send(host.unwrap()).unwrap();
        shut_rx.recv().unwrap();
    });
    let host = host_rx.recv().unwrap();
    let rt = Arc::try_unwrap(rt).expect("the host's thread let go of the runtime");
    let reports = collect_reports(&host);
    host.call_soon_threadsafe(owning(PanicsWhenDropped))
        .unwrap();
    // `stop` takes the runtime's list of hosts: the shutdown drops this outside its lock.
    let stops = StopsWhenDropped(host.clone());
    host.call_soon_threadsafe(move || drop(stops)).unwrap();
    let shutdown = catch_unwind(AssertUnwindSafe(|| rt.shutdown(WAIT)));
    assert!(matches!(shutdown, Ok(Ok(()))), "{shutdown:?}");
    assert_destructor_panic_and_two_unrun_reported(&reports.lock().unwrap());
    shut_tx.send(()).unwrap();
    host_thread.join().unwrap();
}

/// A host loop's thread that exits closes the loop (nothing can run it again): the timers
/// it still held are dropped there, a destructor's panic is reported to the loop's exception
/// handler, and they are counted as never run. (They were dropped with the thread's
/// thread-locals, where a panic aborts the process.)
#[test]
fn a_panicking_destructor_left_on_a_host_loop_is_reported_when_its_thread_exits() {
    let rt = runtime(1);
    let reports = thread::scope(|s| {
        s.spawn(|| {
            rt.run_until_complete(async {
                let reports = collect_reports(&braid::get_running_loop());
                braid::call_later(Duration::from_secs(3600), owning(PanicsWhenDropped));
                braid::call_later(Duration::from_secs(3600), || {});
                Ok(reports)
            })
        })
        .join()
        .unwrap()
    })
    .unwrap();
    assert_destructor_panic_and_two_unrun_reported(&reports.lock().unwrap());
    rt.shutdown(WAIT).unwrap();
}

/// A closing loop's reports: a destructor's panic (of [`PanicsWhenDropped`]) and two
/// callbacks counted as never run.
fn assert_destructor_panic_and_two_unrun_reported(reports: &[Report]) {
    assert!(
        reports
            .iter()
            .any(|r| r.message.contains("destructor") && r.error == destructor_broke()),
        "the destructor's panic was reported: {reports:?}"
    );
    assert!(
        reports
            .iter()
            .any(|r| r.message.contains("2 callback(s) that never ran")),
        "the unrun callbacks were counted: {reports:?}"
    );
}

/// Set in the child process of
/// [`a_report_that_cannot_be_written_to_stderr_is_lost_and_the_loop_goes_on`].
const STDERR_CLOSED_CHILD: &str = "BRAID_TEST_STDERR_CLOSED_CHILD";

/// With stderr a pipe that nobody reads, the default exception handler's line cannot be
/// written: the report is lost, and the loop goes on. (`eprintln!` panics when its write
/// fails; on the loop thread, that panic killed the loop.) The scenario runs in a child
/// process, this test binary again, whose stderr's read end is closed at once.
#[test]
fn a_report_that_cannot_be_written_to_stderr_is_lost_and_the_loop_goes_on() {
    if std::env::var_os(STDERR_CLOSED_CHILD).is_some() {
        return report_with_stderr_closed();
    }
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_report_that_cannot_be_written_to_stderr_is_lost_and_the_loop_goes_on",
            // Not captured: the loop thread writes to the process's real stderr.
            "--nocapture",
        ])
        .env(STDERR_CLOSED_CHILD, "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Every write to the child's stderr now fails (EPIPE: Rust ignores SIGPIPE).
    drop(child.stderr.take());
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("after the report: Ok(7); shutdown: Ok(()); loop: Closed"),
        "the child's output: {stdout}"
    );
    assert!(output.status.success(), "the child's output: {stdout}");
}

/// The child's part: a callback panics on a loop with no exception handler, so the loop
/// reports it on stderr; then the loop must still run a coroutine, and shut down cleanly.
fn report_with_stderr_closed() {
    // Wait until the parent has closed the pipe's read end: a write before that succeeds.
    let deadline = Instant::now() + WAIT;
    while std::io::Write::write_all(&mut std::io::stderr(), b".").is_ok() {
        if Instant::now() > deadline {
            println!("stderr was never closed");
            return;
        }
        thread::yield_now();
    }
    let rt = runtime(1);
    let lp = rt.event_loop();
    lp.call_soon_threadsafe(|| panic!("reported to a closed stderr"))
        .unwrap();
    let after = lp
        .run_coroutine_threadsafe(async { Ok(7) })
        .unwrap()
        .result(Some(WAIT));
    let shutdown = rt.shutdown(WAIT);
    println!(
        "after the report: {after:?}; shutdown: {shutdown:?}; loop: {:?}",
        lp.state()
    );
}
