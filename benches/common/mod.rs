//! Helpers shared by the comparison benches (each bench file includes this with `mod common;`
//! and uses what it needs): the worker count and quick mode from the environment, the two
//! runtimes built the same way, criterion settings, a latch for foreign threads, the seeded
//! random numbers the Python twins reproduce, and the summary files the report generator reads.
#![allow(dead_code)]

use criterion::{BenchmarkGroup, SamplingMode};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Worker threads on each side: `BRAID_BENCH_WORKERS`, default 2 (this machine's cores).
///
/// # Panics
///
/// If the variable is set to anything but a positive integer.
pub(crate) fn workers() -> usize {
    match std::env::var("BRAID_BENCH_WORKERS") {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n >= 1 => n,
            _ => panic!("BRAID_BENCH_WORKERS must be a positive integer, got {v:?}"),
        },
        Err(_) => 2,
    }
}

/// Whether `BRAID_BENCH_QUICK` is set (to anything but empty or `0`): fewer and shorter
/// samples, for the report generator's `--quick` run.
pub(crate) fn quick() -> bool {
    std::env::var("BRAID_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// A braid runtime with `workers` loop threads.
pub(crate) fn braid_runtime(workers: usize) -> braid::Runtime {
    braid::Runtime::builder()
        .workers(workers)
        .thread_name("bench-braid")
        .build()
        .expect("build braid runtime")
}

/// A tokio multi-thread runtime with `workers` worker threads, timers and I/O enabled.
pub(crate) fn tokio_runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("bench-tokio")
        .enable_all()
        .build()
        .expect("build tokio runtime")
}

/// Samples per benchmark function (quick mode: fewer).
pub(crate) fn sample_size() -> usize {
    if quick() {
        10
    } else {
        20
    }
}

/// Flat sampling (every iteration is milliseconds long, so criterion's linear sampling would
/// overrun its budget) with the sample count and times of the current mode.
pub(crate) fn configure(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let (warm_up, measurement) = if quick() {
        (Duration::from_millis(300), Duration::from_millis(1_000))
    } else {
        (Duration::from_millis(1_000), Duration::from_millis(3_000))
    };
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(sample_size())
        .warm_up_time(warm_up)
        .measurement_time(measurement);
}

thread_local! {
    /// Per-iteration time of every sample criterion took, keyed by "group/function", in the
    /// order they were taken (warm-up batches first, then the measured samples).
    static SAMPLES: RefCell<BTreeMap<String, Vec<f64>>> = const { RefCell::new(BTreeMap::new()) };
}

/// Runs `routine` as criterion's measured routine under `group_name/function` and records each
/// batch's time per iteration, so that [`print_ratios`] can compare the medians at the end
/// without reading criterion's files.
pub(crate) fn bench_recorded(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    group_name: &str,
    function: &str,
    mut routine: impl FnMut(),
) {
    let key = format!("{group_name}/{function}");
    group.bench_function(function, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                routine();
            }
            let elapsed = start.elapsed();
            let per_iter = elapsed.as_secs_f64() / iters.max(1) as f64;
            SAMPLES.with(|s| {
                s.borrow_mut()
                    .entry(key.clone())
                    .or_default()
                    .push(per_iter)
            });
            elapsed
        })
    });
}

/// Registers the `braid` and `tokio` functions of group `name`, each runtime built for its
/// function only and shut down after it.
pub(crate) fn compare(
    c: &mut criterion::Criterion,
    workers: usize,
    name: &str,
    braid_routine: impl Fn(&braid::Runtime),
    tokio_routine: impl Fn(&tokio::runtime::Runtime),
) {
    let mut group = c.benchmark_group(name);
    configure(&mut group);
    {
        let rt = braid_runtime(workers);
        bench_recorded(&mut group, name, "braid", || braid_routine(&rt));
        rt.shutdown(Duration::from_secs(5)).expect("braid shutdown");
    }
    {
        let rt = tokio_runtime(workers);
        bench_recorded(&mut group, name, "tokio", || tokio_routine(&rt));
        rt.shutdown_timeout(Duration::from_secs(5));
    }
    group.finish();
}

/// The median of `samples`, `None` if empty.
pub(crate) fn median(samples: &[f64]) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 0 {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

/// `secs` with a unit that keeps three significant decimals readable.
pub(crate) fn fmt_time(secs: f64) -> String {
    if secs >= 1.0 {
        format!("{secs:.3} s")
    } else if secs >= 1e-3 {
        format!("{:.3} ms", secs * 1e3)
    } else {
        format!("{:.3} µs", secs * 1e6)
    }
}

/// Prints braid's and tokio's median time per iteration and their ratio for each of `groups`
/// that ran (a criterion filter may have skipped some; `cargo test` mode runs one iteration
/// each). The functions are named `braid` and `tokio` in every group.
pub(crate) fn print_ratios(groups: &[&str]) {
    let samples = SAMPLES.with(|s| s.borrow().clone());
    let measured = |key: &str| {
        let all = samples.get(key)?;
        // The measured samples are the last sample_size() batches; the warm-up ones come first.
        median(&all[all.len().saturating_sub(sample_size())..])
    };
    let mut lines = Vec::new();
    for group in groups {
        if let (Some(b), Some(t)) = (
            measured(&format!("{group}/braid")),
            measured(&format!("{group}/tokio")),
        ) {
            lines.push(format!(
                "{group:<26} braid {:>12}   tokio {:>12}   braid/tokio {:>6.2}",
                fmt_time(b),
                fmt_time(t),
                b / t
            ));
        }
    }
    if !lines.is_empty() {
        println!(
            "\nmedian time per iteration, {} worker thread(s) each (ratio above 1: braid is slower)",
            workers()
        );
        for line in lines {
            println!("  {line}");
        }
    }
}

/// A one-shot countdown a plain thread can block on: the call of [`Latch::count_down`] that
/// brings it to zero wakes [`Latch::wait`]. Used where the measuring thread is foreign to both
/// runtimes, so that neither side gets an async wait the other lacks.
pub(crate) struct Latch {
    remaining: AtomicUsize,
    done: Mutex<bool>,
    cv: Condvar,
}

impl Latch {
    pub(crate) fn new(count: usize) -> Latch {
        Latch {
            remaining: AtomicUsize::new(count),
            done: Mutex::new(false),
            cv: Condvar::new(),
        }
    }

    pub(crate) fn count_down(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.done.lock().unwrap() = true;
            self.cv.notify_all();
        }
    }

    pub(crate) fn wait(&self) {
        let mut done = self.done.lock().unwrap();
        while !*done {
            done = self.cv.wait(done).unwrap();
        }
    }
}

/// SplitMix64 (Steele, Lea and Flood, 2014): a tiny seeded generator that
/// `benches/python/_common.py` implements bit for bit, so both languages sleep the same delays.
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The seed of the `timers` workload's delays, shared with the Python twin.
pub(crate) const TIMER_SEED: u64 = 0x5EED_0B7A_1D00;

/// `n` delays of 0 to 10 ms inclusive, in whole microseconds, from [`TIMER_SEED`].
pub(crate) fn timer_delays(n: usize) -> Vec<Duration> {
    let mut rng = SplitMix64::new(TIMER_SEED);
    (0..n)
        .map(|_| Duration::from_micros(rng.next_u64() % 10_001))
        .collect()
}

/// Writes `json` to `$BRAID_BENCH_SUMMARY_DIR/<name>.json` when the report generator set that
/// variable (criterion's own files hold the medians; this carries what criterion does not,
/// such as latency percentiles).
pub(crate) fn write_summary(name: &str, json: &str) {
    if let Some(dir) = std::env::var_os("BRAID_BENCH_SUMMARY_DIR") {
        let dir = std::path::PathBuf::from(dir);
        let path = dir.join(format!("{name}.json"));
        if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, json)) {
            eprintln!("could not write {}: {e}", path.display());
        }
    }
}
