//! Scheduler micro-benchmarks: braid's runtime against tokio's multi-thread runtime, side by
//! side in one run, with the same number of worker threads on both sides.
//!
//! Workloads, after tokio's own `benches/rt_multi_threaded.rs`:
//!
//! - `spawn_many_local`: from inside a task, spawn 10 000 tasks that each decrement a shared
//!   counter; the last one completes a notification (`braid::Promise<()>` /
//!   `tokio::sync::oneshot`) that the spawning task awaits. Measures spawn, schedule and run of
//!   tiny tasks, mostly through the spawning worker's local queue and stealing.
//! - `yield_many`: 200 tasks, each yielding 1 000 times (`braid::yield_now` /
//!   `tokio::task::yield_now`), all joined. Measures the cost of a task's wake-and-repoll round
//!   trip through the run queues.
//!
//! Each runtime is built once per group, outside the measured closure, and driven with
//! `Runtime::run_until_complete` / `tokio::runtime::Runtime::block_on` inside it. Both sides
//! use `BRAID_BENCH_WORKERS` worker threads (default 2). After the criterion groups the binary
//! prints the braid/tokio ratio of the median times per workload (above 1: braid is slower).
//!
//! ```text
//! cargo bench --bench scheduler
//! BRAID_BENCH_WORKERS=4 cargo bench --bench scheduler
//! ```

use criterion::{BenchmarkGroup, Criterion, SamplingMode};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Tasks spawned per iteration of `spawn_many_local`.
const SPAWN_TASKS: usize = 10_000;
/// Tasks per iteration of `yield_many`.
const YIELD_TASKS: usize = 200;
/// Yields per task in `yield_many`.
const YIELDS_PER_TASK: usize = 1_000;

/// Samples per benchmark function; the ratios use the last this-many recorded samples.
const SAMPLE_SIZE: usize = 20;
const WARM_UP: Duration = Duration::from_millis(1_000);
const MEASUREMENT: Duration = Duration::from_millis(3_000);

fn workers() -> usize {
    match std::env::var("BRAID_BENCH_WORKERS") {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n >= 1 => n,
            _ => panic!("BRAID_BENCH_WORKERS must be a positive integer, got {v:?}"),
        },
        Err(_) => 2,
    }
}

fn braid_runtime(workers: usize) -> braid::Runtime {
    braid::Runtime::builder()
        .workers(workers)
        .thread_name("bench-braid")
        .build()
        .expect("build braid runtime")
}

fn tokio_runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("bench-tokio")
        .enable_all()
        .build()
        .expect("build tokio runtime")
}

thread_local! {
    /// Per-iteration time of every sample criterion took, keyed by "group/function", in the
    /// order they were taken (warm-up batches first, then the measured samples).
    static SAMPLES: RefCell<BTreeMap<String, Vec<f64>>> = const { RefCell::new(BTreeMap::new()) };
}

/// Runs `routine` as criterion's measured routine and records each batch's time per
/// iteration, so that `main` can compare the medians without reading criterion's files.
fn bench_recorded(
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

fn configure(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    // Each iteration is milliseconds long: flat sampling keeps the run within its time budget.
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(SAMPLE_SIZE)
        .warm_up_time(WARM_UP)
        .measurement_time(MEASUREMENT);
}

// ---- spawn_many_local ----------------------------------------------------------------------

struct BraidCountdown {
    remaining: AtomicUsize,
    done: braid::Promise<()>,
}

fn braid_spawn_many_local(rt: &braid::Runtime) {
    rt.run_until_complete(async {
        let spawner = braid::create_task(async {
            let shared = Arc::new(BraidCountdown {
                remaining: AtomicUsize::new(SPAWN_TASKS),
                done: braid::Promise::new(),
            });
            for _ in 0..SPAWN_TASKS {
                let shared = shared.clone();
                // Dropping a Task detaches it.
                drop(braid::create_task(async move {
                    if shared.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                        shared.done.set_result(())?;
                    }
                    Ok(())
                }));
            }
            shared.done.clone().await
        });
        spawner.await
    })
    .expect("braid spawn_many_local");
}

struct TokioCountdown {
    remaining: AtomicUsize,
    done: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

fn tokio_spawn_many_local(rt: &tokio::runtime::Runtime) {
    rt.block_on(async {
        let spawner = tokio::spawn(async {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let shared = Arc::new(TokioCountdown {
                remaining: AtomicUsize::new(SPAWN_TASKS),
                done: Mutex::new(Some(tx)),
            });
            for _ in 0..SPAWN_TASKS {
                let shared = shared.clone();
                drop(tokio::spawn(async move {
                    if shared.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                        let tx = shared.done.lock().unwrap().take().expect("one last task");
                        tx.send(()).unwrap();
                    }
                }));
            }
            rx.await.unwrap();
        });
        spawner.await.unwrap();
    });
}

fn spawn_many_local(c: &mut Criterion, workers: usize) {
    const NAME: &str = "spawn_many_local";
    let mut group = c.benchmark_group(NAME);
    configure(&mut group);
    {
        let rt = braid_runtime(workers);
        bench_recorded(&mut group, NAME, "braid", || braid_spawn_many_local(&rt));
        rt.shutdown(Duration::from_secs(5)).expect("braid shutdown");
    }
    {
        let rt = tokio_runtime(workers);
        bench_recorded(&mut group, NAME, "tokio", || tokio_spawn_many_local(&rt));
        rt.shutdown_timeout(Duration::from_secs(5));
    }
    group.finish();
}

// ---- yield_many ----------------------------------------------------------------------------

fn braid_yield_many(rt: &braid::Runtime) {
    rt.run_until_complete(async {
        let tasks: Vec<_> = (0..YIELD_TASKS)
            .map(|_| {
                braid::create_task(async {
                    for _ in 0..YIELDS_PER_TASK {
                        braid::yield_now().await?;
                    }
                    Ok(())
                })
            })
            .collect();
        for t in tasks {
            t.await?;
        }
        Ok(())
    })
    .expect("braid yield_many");
}

fn tokio_yield_many(rt: &tokio::runtime::Runtime) {
    rt.block_on(async {
        let tasks: Vec<_> = (0..YIELD_TASKS)
            .map(|_| {
                tokio::spawn(async {
                    for _ in 0..YIELDS_PER_TASK {
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
}

fn yield_many(c: &mut Criterion, workers: usize) {
    const NAME: &str = "yield_many";
    let mut group = c.benchmark_group(NAME);
    configure(&mut group);
    {
        let rt = braid_runtime(workers);
        bench_recorded(&mut group, NAME, "braid", || braid_yield_many(&rt));
        rt.shutdown(Duration::from_secs(5)).expect("braid shutdown");
    }
    {
        let rt = tokio_runtime(workers);
        bench_recorded(&mut group, NAME, "tokio", || tokio_yield_many(&rt));
        rt.shutdown_timeout(Duration::from_secs(5));
    }
    group.finish();
}

// ---- report --------------------------------------------------------------------------------

fn median(samples: &[f64]) -> Option<f64> {
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

fn fmt_time(secs: f64) -> String {
    if secs >= 1.0 {
        format!("{secs:.3} s")
    } else if secs >= 1e-3 {
        format!("{:.3} ms", secs * 1e3)
    } else {
        format!("{:.3} µs", secs * 1e6)
    }
}

/// Prints braid's and tokio's median time per iteration and their ratio for every group that
/// ran (a criterion filter may have skipped some; `cargo test` mode runs one iteration each).
fn print_ratios(workers: usize) {
    let samples = SAMPLES.with(|s| s.borrow().clone());
    let measured = |key: &str| {
        let all = samples.get(key)?;
        // The measured samples are the last SAMPLE_SIZE batches; the warm-up ones come first.
        median(&all[all.len().saturating_sub(SAMPLE_SIZE)..])
    };
    let mut lines = Vec::new();
    for group in ["spawn_many_local", "yield_many"] {
        if let (Some(b), Some(t)) = (
            measured(&format!("{group}/braid")),
            measured(&format!("{group}/tokio")),
        ) {
            lines.push(format!(
                "{group:<18} braid {:>12}   tokio {:>12}   braid/tokio {:>6.2}",
                fmt_time(b),
                fmt_time(t),
                b / t
            ));
        }
    }
    if !lines.is_empty() {
        println!("\nmedian time per iteration, {workers} worker thread(s) each (ratio above 1: braid is slower)");
        for line in lines {
            println!("  {line}");
        }
    }
}

fn main() {
    let workers = workers();
    let mut c = Criterion::default().configure_from_args();
    spawn_many_local(&mut c, workers);
    yield_many(&mut c, workers);
    c.final_summary();
    print_ratios(workers);
}
