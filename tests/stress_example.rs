//! The stress harness of `examples/stress.rs`: it refuses bad flags with a clear message, a few
//! hundred milliseconds of every operation (with cancels) end with every invariant holding and
//! exit status 0, and its invariants fail when something is wrong (operations that fail, panic
//! or are cancelled without being asked, a thread that stays) and only then.
//!
//! The example's source is compiled into this test as a module, so the test needs no built
//! example binary and runs the same code `cargo run --example stress` does. The harness counts
//! this process's threads before and after a run, which the other tests' threads (and the test
//! runner's, starting and ending beside it) would change: every test that runs the harness or
//! counts threads runs in a child process of this test binary with only that test selected
//! ([`isolated`]).

#[allow(dead_code)]
#[path = "../examples/stress.rs"]
mod stress;

use clap::Parser;
use std::fs::File;
use std::process::Command;
use std::time::{Duration, Instant};

/// Set, in a child process of this test binary, to the name of the test the child runs.
const CHILD: &str = "BRAID_STRESS_EXAMPLE_CHILD";

/// How long a child process may take before it is killed and its test fails.
const CHILD_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `body` in a child process of this test binary that runs nothing but the test `name`
/// (the caller): in the child, runs `body`; in the parent, starts the child, waits for it (up to
/// [`CHILD_TIMEOUT`]) and fails with its output if it failed.
fn isolated(name: &str, body: impl FnOnce()) {
    if std::env::var(CHILD).is_ok_and(|child| child == name) {
        return body();
    }
    let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("stress_example-{name}-{}.log", std::process::id()));
    let out = File::create(&log).expect("create the child's log");
    let err = out.try_clone().expect("share the child's log");
    let mut child = Command::new(std::env::current_exe().expect("this test binary"))
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, name)
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("start the child process");
    let deadline = Instant::now() + CHILD_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll the child") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    // The harness's own lines, not the runtime's notes about unretrieved task errors (an
    // injected failure makes thousands).
    let output: Vec<&str> = output
        .lines()
        .filter(|l| !l.contains("Task exception was never retrieved"))
        .collect();
    match status {
        Some(status) if status.success() => {
            assert!(
                output
                    .iter()
                    .any(|l| l.contains("test result: ok. 1 passed")),
                "the child ran no test {name}:\n{}",
                output.join("\n")
            );
        }
        Some(status) => panic!(
            "{name} failed in its child ({status}):\n{}",
            output.join("\n")
        ),
        None => panic!(
            "{name}: the child ran longer than {CHILD_TIMEOUT:?}:\n{}",
            output.join("\n")
        ),
    }
}

fn config(args: &[&str]) -> stress::Config {
    stress::Config::try_parse_from(std::iter::once("stress").chain(args.iter().copied()))
        .expect("good flags parse")
}

fn invariant<'r>(report: &'r stress::Report, name: &str) -> &'r stress::Invariant {
    report
        .invariants
        .iter()
        .find(|i| i.name == name)
        .unwrap_or_else(|| panic!("no invariant {name:?}:\n{report}"))
}

#[test]
fn stress_harness_refuses_bad_flags() {
    for (bad, says) in [
        (["--mix", "bogus=1"], "unknown operation `bogus`"),
        (["--mix", "spawn=0"], "at least one operation"),
        (["--cancel-ratio", "1.5"], "fraction from 0 to 1"),
        (["--duration", "3 weeks"], "unknown unit"),
        (["--threads", "0"], "at least 1"),
    ] {
        let err = stress::Config::try_parse_from(std::iter::once("stress").chain(bad))
            .expect_err("a bad flag is refused");
        assert!(
            err.to_string().contains(says),
            "{bad:?}: expected an error saying {says:?}, got: {err}"
        );
    }
    let help = stress::Config::try_parse_from(["stress", "--help"]).expect_err("help exits");
    assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
    assert!(help.to_string().contains("--cancel-ratio"));
    assert!(
        !help.to_string().contains("--inject-failure"),
        "the checker's test flag is hidden:\n{help}"
    );
}

/// A duration that overflows `Instant::now() + duration` used to be taken, and the run panicked
/// with "overflow when adding duration to instant".
#[test]
fn stress_harness_refuses_a_duration_too_long_to_add_to_now() {
    for flag in ["--duration", "--settle-timeout", "--max-sleep"] {
        for huge in ["10000000000000000000s", "1000000000000000000", "525601m"] {
            let err = stress::Config::try_parse_from(["stress", flag, huge])
                .expect_err("a huge duration is refused");
            assert!(
                err.to_string().contains("too long; at most 365 days"),
                "{flag} {huge}: {err}"
            );
        }
        // The longest taken: 365 days.
        config(&[flag, "525600m"]);
    }
}

/// `--duration 0s` used to run, submit nothing, and fail with a misleading
/// "[FAIL] submitted = completed + cancelled: 0 = 0 + 0".
#[test]
fn stress_harness_refuses_a_zero_duration() {
    for zero in ["0s", "0", "0ms", "0.0m"] {
        let err = stress::Config::try_parse_from(["stress", "--duration", zero])
            .expect_err("a zero duration is refused");
        assert!(
            err.to_string().contains("the run needs a duration above 0"),
            "--duration {zero}: {err}"
        );
    }
    // A zero sleep or settle timeout is no run length: taken.
    assert_eq!(config(&["--max-sleep", "0s"]).max_sleep, Duration::ZERO);
    assert_eq!(
        config(&["--settle-timeout", "0s"]).settle_timeout,
        Duration::ZERO
    );
}

#[test]
fn stress_harness_runs_briefly_with_every_invariant_holding() {
    isolated(
        "stress_harness_runs_briefly_with_every_invariant_holding",
        || {
            let report = stress::run(&config(&[
                "--duration",
                "400ms",
                "--threads",
                "3",
                "--loops",
                "2",
                "--cancel-ratio",
                "0.3",
                "--no-progress",
            ]));
            println!("{report}");
            assert!(report.passed(), "an invariant failed:\n{report}");
            assert_eq!(report.exit_status(), 0, "{report}");
            assert_eq!(report.ops.len(), 5, "every operation is in the default mix");
            for op in &report.ops {
                assert!(op.submitted > 0, "{:?} never ran:\n{report}", op.op);
                assert_eq!(op.failed, 0, "{report}");
            }
            let cancelled: u64 = report.ops.iter().map(|o| o.cancelled).sum();
            assert!(
                cancelled > 0,
                "a cancel ratio of 0.3 cancelled nothing:\n{report}"
            );

            // One failed invariant is enough for a non-zero exit status, and the report says
            // which.
            let mut broken = report.clone();
            broken.invariants[0].holds = false;
            assert_eq!(broken.exit_status(), 1);
            assert!(broken.to_string().contains("[FAIL]"), "{broken}");
        },
    );
}

/// Operations that end with an error, a panic or a cancel nobody asked for used to be counted
/// as completed (spawn, sleep) or as cancelled (every coroutine), and the report said "all
/// invariants hold".
#[test]
fn stress_harness_fails_when_operations_fail_panic_or_are_cancelled_unasked() {
    isolated(
        "stress_harness_fails_when_operations_fail_panic_or_are_cancelled_unasked",
        || {
            for inject in ["error", "panic", "cancel"] {
                let report = stress::run(&config(&[
                    "--duration",
                    "50ms",
                    "--threads",
                    "2",
                    "--mix",
                    "spawn=1,sleep=1,run_coroutine_threadsafe=1,to_thread=1",
                    "--cancel-ratio",
                    "0",
                    "--no-progress",
                    "--inject-failure",
                    inject,
                ]));
                println!("{report}");
                assert!(
                    !report.passed(),
                    "{inject}: every invariant held:\n{report}"
                );
                assert_eq!(report.exit_status(), 1, "{report}");
                assert!(
                    !invariant(&report, "nothing failed, lost or refused").holds,
                    "{inject}:\n{report}"
                );
                assert_eq!(report.ops.len(), 4, "{report}");
                for op in &report.ops {
                    assert!(
                        op.submitted > 0,
                        "{inject}: {:?} never ran:\n{report}",
                        op.op
                    );
                    assert_eq!(
                        (op.completed, op.cancelled, op.failed),
                        (0, 0, op.submitted),
                        "{inject}: {:?}: every one failed, none completed or was cancelled \
                         as asked:\n{report}",
                        op.op
                    );
                }
                // Failed operations are still accounted for; what fails is what went wrong.
                assert!(
                    invariant(&report, "submitted = completed + cancelled + failed").holds,
                    "{report}"
                );
                assert!(report.to_string().contains("SOME INVARIANTS FAILED"));
            }
        },
    );
}

/// The threads a run started may still be listed in /proc/self/task for a moment after they
/// have finished (the scope used to return before they had exited, and the kernel may list a
/// joined thread until it has reaped it): the check used to look once and fail now and then.
/// It waits for a thread on its way out, and still fails on a thread that stays.
#[test]
fn stress_harness_thread_check_waits_for_exiting_threads_and_fails_on_staying_ones() {
    isolated(
        "stress_harness_thread_check_waits_for_exiting_threads_and_fails_on_staying_ones",
        || {
            let before = stress::thread_count();
            if before.is_none() {
                println!("no /proc/self/task: threads are not counted here");
                return;
            }
            // A thread on its way out: it exits 50 ms after the check starts looking.
            let (started, is_started) = std::sync::mpsc::channel();
            let exiting = std::thread::spawn(move || {
                started.send(()).expect("the test waits");
                std::thread::sleep(Duration::from_millis(50));
            });
            is_started
                .recv_timeout(Duration::from_secs(10))
                .expect("the thread starts");
            assert_eq!(
                stress::wait_for_thread_count(before, stress::THREAD_EXIT_TIMEOUT),
                before,
                "the check did not wait for a thread on its way out"
            );
            exiting.join().expect("the exiting thread");

            // A thread that stays (until released): the check gives up and says so.
            let (release, released) = std::sync::mpsc::channel::<()>();
            let staying = std::thread::spawn(move || {
                let _ = released.recv_timeout(Duration::from_secs(10));
            });
            let seen = stress::wait_for_thread_count(before, Duration::from_millis(50));
            release.send(()).expect("the staying thread waits");
            staying.join().expect("the staying thread");
            assert_eq!(seen, before.map(|n| n + 1), "a staying thread went unseen");
        },
    );
}

/// Short runs heavy on to_thread, as in the bug hunter's reproduction: each must pass, the "no
/// thread left" check included (it failed in a few percent of such runs).
#[test]
fn stress_harness_short_runs_leave_no_thread() {
    isolated("stress_harness_short_runs_leave_no_thread", || {
        for seed in 1..=20 {
            let report = stress::run(&config(&[
                "--duration",
                "50ms",
                "--threads",
                "2",
                "--loops",
                "4",
                "--mix",
                "to_thread=3,spawn=1",
                "--seed",
                &seed.to_string(),
                "--no-progress",
            ]));
            assert!(report.passed(), "seed {seed}:\n{report}");
        }
    });
}

/// A run too short to submit anything says so, instead of failing an equation that holds.
#[test]
fn stress_harness_says_when_nothing_was_submitted() {
    isolated("stress_harness_says_when_nothing_was_submitted", || {
        // 1 ns: over before the first foreign thread has started.
        let report = stress::run(&config(&["--duration", "0.000001ms", "--no-progress"]));
        println!("{report}");
        let submitted: u64 = report.ops.iter().map(|o| o.submitted).sum();
        if submitted > 0 {
            println!("a thread started within 1 ns: nothing to check");
            return;
        }
        assert_eq!(report.exit_status(), 1, "{report}");
        let nothing = invariant(&report, "something was submitted");
        assert!(!nothing.holds, "{report}");
        assert!(nothing.detail.contains("nothing was submitted"), "{report}");
        assert!(
            invariant(&report, "submitted = completed + cancelled + failed").holds,
            "{report}"
        );
    });
}
