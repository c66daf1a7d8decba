//! The bridge between plain threads and the runtime: braid beside tokio's multi-thread runtime
//! with the same number of workers (`BRAID_BENCH_WORKERS`, default 2), in one run. The same
//! workloads in CPython asyncio (and uvloop) are in `benches/python/bridge.py`;
//! `cargo run --release -p braid-benchmarks` runs all three and writes `BENCHMARKS.md`.
//!
//! - `call_soon_threadsafe`: 4 foreign threads hand 100 000 callbacks (25 000 each) to one
//!   loop; the time until the last has run. tokio has no loop callbacks: its counterpart is
//!   `Handle::spawn` of a trivial future from the same threads.
//! - `run_coroutine_threadsafe`: the bench thread, foreign to both runtimes, submits a trivial
//!   coroutine and blocks on its result: `EventLoop::run_coroutine_threadsafe` +
//!   `ConcurrentFuture::into_result` against `Handle::spawn` + a blocking wait on the
//!   `JoinHandle`. Criterion's median per round trip, then p50 and p99 over 20 000 round trips
//!   recorded in an HDR histogram (`hdrhistogram`), printed and, when the report generator
//!   asks (`BRAID_BENCH_SUMMARY_DIR`), written to `run_coroutine_threadsafe_latency.json`.
//! - `to_thread`: a task runs 10 000 blocking jobs on the default thread pool and awaits them
//!   all: `braid::to_thread` against `tokio::task::spawn_blocking`.
//!
//! Each runtime is built once per group, outside the measured closure. The binary ends by
//! printing the braid/tokio ratio of the medians (above 1: braid is slower).
//! `BRAID_BENCH_QUICK=1` takes fewer, shorter samples and 5 000 round trips for the
//! percentiles.
//!
//! ```text
//! cargo bench --bench bridge
//! ```

mod common;

use common::{braid_runtime, compare, quick, tokio_runtime, Latch};
use criterion::Criterion;
use hdrhistogram::Histogram;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Callbacks per iteration of `call_soon_threadsafe`, all threads together.
const CALLBACKS: usize = 100_000;
/// Foreign threads submitting them.
const SUBMITTERS: usize = 4;
/// Blocking jobs per iteration of `to_thread`.
const BLOCKING_JOBS: u64 = 10_000;

/// The groups this binary defines, in order.
const GROUPS: [&str; 3] = [
    "call_soon_threadsafe",
    "run_coroutine_threadsafe",
    "to_thread",
];

// ---- call_soon_threadsafe ------------------------------------------------------------------

fn braid_callbacks(rt: &braid::Runtime) {
    let lp = rt.event_loop();
    let latch = Arc::new(Latch::new(CALLBACKS));
    std::thread::scope(|s| {
        for _ in 0..SUBMITTERS {
            let (lp, latch) = (lp.clone(), latch.clone());
            s.spawn(move || {
                for _ in 0..CALLBACKS / SUBMITTERS {
                    let latch = latch.clone();
                    lp.call_soon_threadsafe(move || latch.count_down())
                        .expect("open loop");
                }
            });
        }
    });
    latch.wait();
}

fn tokio_callbacks(rt: &tokio::runtime::Runtime) {
    let handle = rt.handle();
    let latch = Arc::new(Latch::new(CALLBACKS));
    std::thread::scope(|s| {
        for _ in 0..SUBMITTERS {
            let (handle, latch) = (handle.clone(), latch.clone());
            s.spawn(move || {
                for _ in 0..CALLBACKS / SUBMITTERS {
                    let latch = latch.clone();
                    drop(handle.spawn(async move { latch.count_down() }));
                }
            });
        }
    });
    latch.wait();
}

// ---- run_coroutine_threadsafe --------------------------------------------------------------

fn braid_round_trip(lp: &braid::EventLoop) {
    let fut = lp
        .run_coroutine_threadsafe(async { Ok(1u64) })
        .expect("open runtime");
    assert_eq!(fut.into_result(None).expect("result"), 1);
}

fn tokio_round_trip(handle: &tokio::runtime::Handle) {
    let join = handle.spawn(async { 1u64 });
    assert_eq!(futures::executor::block_on(join).expect("join"), 1);
}

/// Round trips recorded for the percentiles.
fn latency_round_trips() -> usize {
    if quick() {
        5_000
    } else {
        20_000
    }
}

/// `n` timed calls of `round_trip` (after `n / 10` untimed ones to warm up) in a histogram
/// of nanoseconds.
fn latencies(n: usize, mut round_trip: impl FnMut()) -> Histogram<u64> {
    for _ in 0..n / 10 {
        round_trip();
    }
    // 1 ns to 60 s at 3 significant digits.
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
    for _ in 0..n {
        let start = Instant::now();
        round_trip();
        hist.saturating_record(start.elapsed().as_nanos() as u64);
    }
    hist
}

/// p50 and p99 of both runtimes' round trips: printed, and written for the report generator.
fn round_trip_percentiles(workers: usize) {
    let n = latency_round_trips();
    let braid = {
        let rt = braid_runtime(workers);
        let lp = rt.event_loop();
        let hist = latencies(n, || braid_round_trip(&lp));
        rt.shutdown(Duration::from_secs(5)).expect("braid shutdown");
        hist
    };
    let tokio = {
        let rt = tokio_runtime(workers);
        let handle = rt.handle().clone();
        let hist = latencies(n, || tokio_round_trip(&handle));
        rt.shutdown_timeout(Duration::from_secs(5));
        hist
    };
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e3;
    println!(
        "\nrun_coroutine_threadsafe round trip over {n} calls, {workers} worker thread(s) each:\n  \
         p50 braid {:>8.1} µs  tokio {:>8.1} µs  braid/tokio {:>5.2}\n  \
         p99 braid {:>8.1} µs  tokio {:>8.1} µs  braid/tokio {:>5.2}",
        us(&braid, 0.5),
        us(&tokio, 0.5),
        us(&braid, 0.5) / us(&tokio, 0.5),
        us(&braid, 0.99),
        us(&tokio, 0.99),
        us(&braid, 0.99) / us(&tokio, 0.99),
    );
    let json = format!(
        "{{\"round_trips\": {n}, \"workers\": {workers}, \
         \"braid\": {{\"p50_s\": {:e}, \"p99_s\": {:e}}}, \
         \"tokio\": {{\"p50_s\": {:e}, \"p99_s\": {:e}}}}}\n",
        us(&braid, 0.5) / 1e6,
        us(&braid, 0.99) / 1e6,
        us(&tokio, 0.5) / 1e6,
        us(&tokio, 0.99) / 1e6,
    );
    common::write_summary("run_coroutine_threadsafe_latency", &json);
}

// ---- to_thread -----------------------------------------------------------------------------

fn braid_to_thread(rt: &braid::Runtime) {
    let sum = rt
        .run_until_complete(async {
            let jobs: Vec<_> = (0..BLOCKING_JOBS)
                .map(|i| braid::to_thread(move || i))
                .collect();
            let mut sum = 0;
            for job in jobs {
                sum += job.await?;
            }
            Ok(sum)
        })
        .expect("to_thread");
    assert_eq!(sum, BLOCKING_JOBS * (BLOCKING_JOBS - 1) / 2);
}

fn tokio_spawn_blocking(rt: &tokio::runtime::Runtime) {
    let sum = rt.block_on(async {
        let jobs: Vec<_> = (0..BLOCKING_JOBS)
            .map(|i| tokio::task::spawn_blocking(move || i))
            .collect();
        let mut sum = 0;
        for job in jobs {
            sum += job.await.expect("join");
        }
        sum
    });
    assert_eq!(sum, BLOCKING_JOBS * (BLOCKING_JOBS - 1) / 2);
}

/// Whether criterion's command line names a filter that excludes `group` (so that the
/// percentile run, which is not a criterion benchmark, obeys the same filter).
fn filtered_out(group: &str) -> bool {
    // Criterion's options that take a separate value, which is not a filter.
    const TAKES_VALUE: [&str; 14] = [
        "--color",
        "--save-baseline",
        "--baseline",
        "--load-baseline",
        "--profile-time",
        "--sample-size",
        "--warm-up-time",
        "--measurement-time",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--format",
        "--plotting-backend",
    ];
    let mut filters = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if TAKES_VALUE.contains(&arg.as_str()) {
            args.next();
        } else if !arg.starts_with('-') {
            filters.push(arg);
        }
    }
    !filters.is_empty() && !filters.iter().any(|f| group.contains(f.as_str()))
}

fn main() {
    let workers = common::workers();
    let mut c = Criterion::default().configure_from_args();
    compare(
        &mut c,
        workers,
        "call_soon_threadsafe",
        braid_callbacks,
        tokio_callbacks,
    );
    compare(
        &mut c,
        workers,
        "run_coroutine_threadsafe",
        |rt| braid_round_trip(&rt.event_loop()),
        |rt| tokio_round_trip(rt.handle()),
    );
    compare(
        &mut c,
        workers,
        "to_thread",
        braid_to_thread,
        tokio_spawn_blocking,
    );
    c.final_summary();
    common::print_ratios(&GROUPS);
    // `cargo test --benches` runs each bench once as a smoke test: skip the long percentile run.
    let test_mode = std::env::args().any(|a| a == "--test");
    if !test_mode && !filtered_out("run_coroutine_threadsafe") {
        round_trip_percentiles(workers);
    }
}
