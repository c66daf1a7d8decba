//! The stress harness of `examples/stress.rs`, run briefly: it refuses bad flags with a clear
//! message, a few hundred milliseconds of every operation (with cancels) end with every
//! invariant holding and exit status 0, and a failed invariant makes the status non-zero.
//!
//! The example's source is compiled into this test as a module, so the test needs no built
//! example binary and runs the same code `cargo run --example stress` does. One test only: the
//! harness counts this process's threads before and after, and a second test running beside it
//! would change that count.

#[allow(dead_code)]
#[path = "../examples/stress.rs"]
mod stress;

use clap::Parser;

#[test]
fn stress_harness_refuses_bad_flags_then_runs_briefly_with_every_invariant_holding() {
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

    let config = stress::Config::try_parse_from([
        "stress",
        "--duration",
        "400ms",
        "--threads",
        "3",
        "--loops",
        "2",
        "--cancel-ratio",
        "0.3",
        "--no-progress",
    ])
    .expect("good flags parse");
    let report = stress::run(&config);
    assert!(report.passed(), "an invariant failed:\n{report}");
    assert_eq!(report.exit_status(), 0, "{report}");
    assert_eq!(report.ops.len(), 5, "every operation is in the default mix");
    for op in &report.ops {
        assert!(op.submitted > 0, "{:?} never ran:\n{report}", op.op);
    }
    let cancelled: u64 = report.ops.iter().map(|o| o.cancelled).sum();
    assert!(
        cancelled > 0,
        "a cancel ratio of 0.3 cancelled nothing:\n{report}"
    );

    // One failed invariant is enough for a non-zero exit status, and the report says which.
    let mut broken = report.clone();
    broken.invariants[0].holds = false;
    assert_eq!(broken.exit_status(), 1);
    assert!(broken.to_string().contains("[FAIL]"), "{broken}");
}
