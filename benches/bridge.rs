//! The bridge, braid beside tokio's multi-thread runtime with the same number of workers, in
//! one run:
//!
//! * `round_trip`: a foreign (non-runtime) thread submits a trivial coroutine and blocks on
//!   its result: braid's `run_coroutine_threadsafe` + `ConcurrentFuture::result` against
//!   tokio's `Handle::spawn` + a blocking wait on the `JoinHandle`. Median by criterion, then
//!   p50/p99 over 20 000 round trips.
//! * `call_soon_threadsafe`: 4 foreign threads hand 100 000 callbacks to the loops; the time
//!   until all have run. tokio has no callbacks: its counterpart is `Handle::spawn` of a
//!   trivial future from the same threads.
//! * `to_thread`: a task runs 10 000 blocking jobs on the default pool and awaits them all:
//!   `braid::to_thread` against `tokio::task::spawn_blocking`.
//!
//! Run with `cargo bench --bench bridge`; `BRAID_BENCH_WORKERS` sets the worker count
//! (default 2, this machine's cores).
use criterion::Criterion;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn workers() -> usize {
    std::env::var("BRAID_BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

fn runtimes() -> (braid::Runtime, tokio::runtime::Runtime) {
    let n = workers();
    let braid = braid::Runtime::builder()
        .workers(n)
        .build()
        .expect("braid runtime");
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(n)
        .enable_all()
        .build()
        .expect("tokio runtime");
    (braid, tokio)
}

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

const CALLBACKS: usize = 100_000;
const SUBMITTERS: usize = 4;

fn braid_callbacks(lp: &braid::EventLoop) {
    let done = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|s| {
        for _ in 0..SUBMITTERS {
            let (lp, done) = (lp.clone(), done.clone());
            s.spawn(move || {
                for _ in 0..CALLBACKS / SUBMITTERS {
                    let done = done.clone();
                    lp.call_soon_threadsafe(move || {
                        done.fetch_add(1, Ordering::Relaxed);
                    })
                    .expect("open loop");
                }
            });
        }
    });
    while done.load(Ordering::Acquire) < CALLBACKS {
        std::thread::yield_now();
    }
}

fn tokio_callbacks(handle: &tokio::runtime::Handle) {
    let done = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|s| {
        for _ in 0..SUBMITTERS {
            let (handle, done) = (handle.clone(), done.clone());
            s.spawn(move || {
                for _ in 0..CALLBACKS / SUBMITTERS {
                    let done = done.clone();
                    handle.spawn(async move {
                        done.fetch_add(1, Ordering::Relaxed);
                    });
                }
            });
        }
    });
    while done.load(Ordering::Acquire) < CALLBACKS {
        std::thread::yield_now();
    }
}

const BLOCKING_JOBS: u64 = 10_000;

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

/// `n` timed calls of `f`, sorted.
fn sorted_times(n: usize, mut f: impl FnMut()) -> Vec<Duration> {
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times
}

/// Median of `runs` timed calls of `f`.
fn median(runs: usize, f: impl FnMut()) -> Duration {
    sorted_times(runs, f)[runs / 2]
}

/// p50 and p99 of `n` timed calls of `f`.
fn percentiles(n: usize, f: impl FnMut()) -> (Duration, Duration) {
    let times = sorted_times(n, f);
    (times[n / 2], times[n * 99 / 100])
}

fn main() {
    let (braid_rt, tokio_rt) = runtimes();
    let lp = braid_rt.event_loop();
    let handle = tokio_rt.handle().clone();
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));

    let mut g = c.benchmark_group("round_trip");
    g.bench_function("braid", |b| b.iter(|| braid_round_trip(&lp)));
    g.bench_function("tokio", |b| b.iter(|| tokio_round_trip(&handle)));
    g.finish();
    let mut g = c.benchmark_group("call_soon_threadsafe_100k_from_4_threads");
    g.sample_size(10);
    g.bench_function("braid", |b| b.iter(|| braid_callbacks(&lp)));
    g.bench_function("tokio_spawn", |b| b.iter(|| tokio_callbacks(&handle)));
    g.finish();
    let mut g = c.benchmark_group("to_thread_10k");
    g.sample_size(10);
    g.bench_function("braid", |b| b.iter(|| braid_to_thread(&braid_rt)));
    g.bench_function("tokio_spawn_blocking", |b| {
        b.iter(|| tokio_spawn_blocking(&tokio_rt))
    });
    g.finish();
    c.final_summary();

    println!(
        "\n== braid vs tokio ({} workers each); ratio = braid / tokio, lower is better ==",
        workers()
    );
    let (bp50, bp99) = percentiles(20_000, || braid_round_trip(&lp));
    let (tp50, tp99) = percentiles(20_000, || tokio_round_trip(&handle));
    println!(
        "round_trip            p50 braid {bp50:>10.2?} tokio {tp50:>10.2?} ratio {:.2} | p99 braid {bp99:>10.2?} tokio {tp99:>10.2?} ratio {:.2}",
        ratio(bp50, tp50),
        ratio(bp99, tp99)
    );
    let b = median(9, || braid_callbacks(&lp));
    let t = median(9, || tokio_callbacks(&handle));
    println!(
        "call_soon_threadsafe  median braid {b:>10.2?} tokio {t:>10.2?} ratio {:.2} ({:.1} M callbacks/s)",
        ratio(b, t),
        CALLBACKS as f64 / b.as_secs_f64() / 1e6
    );
    let b = median(9, || braid_to_thread(&braid_rt));
    let t = median(9, || tokio_spawn_blocking(&tokio_rt));
    println!(
        "to_thread             median braid {b:>10.2?} tokio {t:>10.2?} ratio {:.2}",
        ratio(b, t)
    );
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}
