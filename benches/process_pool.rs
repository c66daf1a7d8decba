//! The process pool's round trip: braid's `ProcessPool` beside CPython's
//! `concurrent.futures.ProcessPoolExecutor`, both with 2 worker processes, both awaited from
//! a coroutine (a braid task awaiting `submit`'s futures; asyncio awaiting
//! `loop.run_in_executor`). The CPython side is `benches/python/process_pool.py`, run with
//! `python3` at the end of this binary, which then prints the ratios; without `python3` it
//! says so and skips the comparison.
//!
//! - `process_pool_tiny`: 10 000 trivial jobs (`x + 1`) submitted at once and awaited: the
//!   cost of a round trip (encoding, the pipes, the supervisor's hand-off) per job.
//! - `process_pool_cpu`: 100 jobs that each keep a CPU busy for 10 ms (a spin on the clock,
//!   so that the language's speed does not enter into it): the pool's overhead beside real
//!   work; 2 workers need about 0.5 s.
//!
//! The pool is built once, first thing in `main` (its workers are this binary started again,
//! serving at that call). `BRAID_BENCH_QUICK=1` takes fewer, shorter samples.
//!
//! ```text
//! cargo bench --bench process_pool
//! ```

use braid::bridge::ProcessPool;
use criterion::{Criterion, Throughput};
use std::process::Command;
use std::time::{Duration, Instant};

const WORKERS: usize = 2;
const TINY_JOBS: u64 = 10_000;
const CPU_JOBS: u64 = 100;
const CPU_MS: u64 = 10;

fn tiny(x: u64) -> u64 {
    x + 1
}

/// Keeps a CPU busy for `ms` milliseconds; returns how many times it looked at the clock.
fn spin(ms: u64) -> u64 {
    let end = Instant::now() + Duration::from_millis(ms);
    let mut turns = 0;
    while Instant::now() < end {
        turns += 1;
    }
    turns
}

fn quick() -> bool {
    std::env::var("BRAID_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

async fn tiny_round(pool: &ProcessPool) -> braid::Result<()> {
    let futures = (0..TINY_JOBS)
        .map(|x| pool.submit(tiny, x))
        .collect::<braid::Result<Vec<_>>>()?;
    for (x, fut) in (0..).zip(futures) {
        assert_eq!(fut.await?, x + 1);
    }
    Ok(())
}

async fn cpu_round(pool: &ProcessPool) -> braid::Result<()> {
    let futures = (0..CPU_JOBS)
        .map(|_| pool.submit(spin, CPU_MS))
        .collect::<braid::Result<Vec<_>>>()?;
    for fut in futures {
        assert!(fut.await? > 0);
    }
    Ok(())
}

/// One round of workload `name`, timed.
fn run_once(rt: &braid::Runtime, pool: &ProcessPool, name: &str) -> Duration {
    let start = Instant::now();
    match name {
        "process_pool_tiny" => rt.run_until_complete(tiny_round(pool)),
        _ => rt.run_until_complete(cpu_round(pool)),
    }
    .expect("the round's jobs succeed");
    start.elapsed()
}

/// The median of `samples` rounds after a warm-up one, as the Python side samples.
fn median_of(rt: &braid::Runtime, pool: &ProcessPool, name: &str, samples: usize) -> f64 {
    run_once(rt, pool, name);
    let mut times: Vec<f64> = (0..samples)
        .map(|_| run_once(rt, pool, name).as_secs_f64())
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Runs the CPython twin; its JSON, or why there is none.
fn cpython() -> Result<serde_json::Value, String> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/benches/python/process_pool.py"
    );
    let mut cmd = Command::new("python3");
    cmd.arg(script);
    if quick() {
        cmd.arg("--quick");
    }
    let output = match cmd.output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("python3 not found".to_owned())
        }
        Err(e) => return Err(format!("python3 could not run: {e}")),
    };
    if !output.status.success() {
        return Err(format!(
            "{script} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| format!("{script} printed no JSON: {e}"))
}

fn compare(rt: &braid::Runtime, pool: &ProcessPool) {
    let samples = if quick() { 5 } else { 10 };
    println!("\nprocess_pool: braid ProcessPool vs CPython ProcessPoolExecutor, {WORKERS} workers, medians");
    let python = match cpython() {
        Ok(json) => json,
        Err(why) => {
            println!("  comparison skipped: {why}");
            return;
        }
    };
    let version = python["python"].as_str().unwrap_or("?");
    println!(
        "  {:<20} {:>12} {:>16} {:>14}",
        "workload",
        "braid",
        format!("CPython {version}"),
        "braid/CPython"
    );
    for (name, jobs) in [
        ("process_pool_tiny", TINY_JOBS),
        ("process_pool_cpu", CPU_JOBS),
    ] {
        let braid = median_of(rt, pool, name, samples);
        let result = &python["results"][name];
        let Some(py) = result["median_s"].as_f64() else {
            let error = python["errors"][name].as_str().unwrap_or("no result");
            println!(
                "  {name:<20} {:>10.1} ms   CPython failed: {error}",
                braid * 1e3
            );
            continue;
        };
        println!(
            "  {name:<20} {:>9.1} ms {:>13.1} ms {:>14.3}   ({:.0} vs {:.0} jobs/s; CPython start method {})",
            braid * 1e3,
            py * 1e3,
            braid / py,
            jobs as f64 / braid,
            jobs as f64 / py,
            result["start_method"].as_str().unwrap_or("?"),
        );
    }
    println!("  (braid/CPython below 1: braid is faster)");
}

fn main() {
    // In a worker process this call serves jobs and never returns.
    let pool = ProcessPool::builder()
        .workers(WORKERS)
        .register(tiny)
        .register(spin)
        .build()
        .expect("process pool");
    let rt = braid::Runtime::builder()
        .workers(1)
        .build()
        .expect("runtime");
    let (sample_size, measure) = if quick() {
        (10, Duration::from_secs(2))
    } else {
        (10, Duration::from_secs(6))
    };
    let mut c = Criterion::default()
        .sample_size(sample_size)
        .measurement_time(measure)
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    for (name, jobs) in [
        ("process_pool_tiny", TINY_JOBS),
        ("process_pool_cpu", CPU_JOBS),
    ] {
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Elements(jobs));
        group.bench_function("braid", |b| b.iter(|| run_once(&rt, &pool, name)));
        group.finish();
    }
    c.final_summary();
    // Without `--bench` criterion only checks that each bench runs (`cargo test
    // --all-targets`): no comparison then.
    if std::env::args().any(|a| a == "--bench") {
        compare(&rt, &pool);
    }
    pool.shutdown(true, false);
}
