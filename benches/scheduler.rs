//! Scheduler micro-benchmarks: braid's runtime against tokio's multi-thread runtime, side by
//! side in one run, with the same number of worker threads on both sides
//! (`BRAID_BENCH_WORKERS`, default 2). The same workloads in CPython asyncio (and uvloop) are
//! in `benches/python/scheduler.py`; `cargo run --release -p braid-benchmarks` runs all three
//! and writes `BENCHMARKS.md`.
//!
//! Workloads, after tokio's own `benches/rt_multi_threaded.rs`:
//!
//! - `spawn_many_local`: from inside a task, spawn 10 000 tasks that each decrement a shared
//!   counter; the last one completes a notification (`braid::Promise<()>` /
//!   `tokio::sync::oneshot`) that the spawning task awaits. Spawn, schedule and run of tiny
//!   tasks, mostly through the spawning worker's local queue and stealing.
//! - `spawn_many_remote`: the bench's own thread, foreign to both runtimes, spawns 10 000 such
//!   tasks (`EventLoop::spawn` / `Handle::spawn`) and blocks until the last has run. Spawn
//!   through the shared injector and the wake-up of sleeping workers.
//! - `ping_pong`: 1 000 pairs of tasks; in each pair one sends the other a one-shot message
//!   and waits for the one-shot answer (`braid::Promise<()>` / `tokio::sync::oneshot`).
//!   Cross-task wake-ups.
//! - `yield_many`: 200 tasks, each yielding 1 000 times (`braid::yield_now` /
//!   `tokio::task::yield_now`), all joined. A task's wake-and-repoll round trip through the
//!   run queues.
//! - `chained_spawn`: a chain of 1 000 tasks, each spawning the next; the last completes a
//!   notification. Latency of one spawn when nothing else is queued.
//! - `timers`: 100 000 tasks each sleeping a delay of 0 to 10 ms (SplitMix64 with a fixed seed,
//!   the same delays in the Python twin), all joined. Timer insertion, expiry and wake-up.
//!
//! Each runtime is built once per group, outside the measured closure, and driven with
//! `Runtime::run_until_complete` / `tokio::runtime::Runtime::block_on` inside it. After the
//! criterion groups the binary prints the braid/tokio ratio of the median times per workload
//! (above 1: braid is slower). `BRAID_BENCH_QUICK=1` takes fewer, shorter samples.
//!
//! ```text
//! cargo bench --bench scheduler
//! BRAID_BENCH_WORKERS=4 cargo bench --bench scheduler -- yield_many
//! ```

mod common;

use common::{compare, timer_delays, Latch};
use criterion::Criterion;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Tasks spawned per iteration of `spawn_many_local` and `spawn_many_remote`.
const SPAWN_TASKS: usize = 10_000;
/// Pairs of tasks per iteration of `ping_pong`.
const PING_PONG_PAIRS: usize = 1_000;
/// Tasks per iteration of `yield_many`.
const YIELD_TASKS: usize = 200;
/// Yields per task in `yield_many`.
const YIELDS_PER_TASK: usize = 1_000;
/// Length of the chain in `chained_spawn`.
const CHAIN_LENGTH: usize = 1_000;
/// Concurrent sleeps per iteration of `timers`.
const TIMERS: usize = 100_000;

/// The groups this binary defines, in order.
const GROUPS: [&str; 6] = [
    "spawn_many_local",
    "spawn_many_remote",
    "ping_pong",
    "yield_many",
    "chained_spawn",
    "timers",
];

// ---- spawn_many_local ----------------------------------------------------------------------

struct BraidCountdown {
    remaining: AtomicUsize,
    done: braid::Promise<()>,
}

impl BraidCountdown {
    fn new(count: usize) -> Arc<BraidCountdown> {
        Arc::new(BraidCountdown {
            remaining: AtomicUsize::new(count),
            done: braid::Promise::new(),
        })
    }

    fn count_down(&self) -> braid::Result<()> {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.set_result(())?;
        }
        Ok(())
    }
}

fn braid_spawn_many_local(rt: &braid::Runtime) {
    rt.run_until_complete(async {
        let spawner = braid::create_task(async {
            let countdown = BraidCountdown::new(SPAWN_TASKS);
            for _ in 0..SPAWN_TASKS {
                let countdown = countdown.clone();
                // Dropping a Task detaches it.
                drop(braid::create_task(async move { countdown.count_down() }));
            }
            countdown.done.clone().await
        });
        spawner.await
    })
    .expect("braid spawn_many_local");
}

struct TokioCountdown {
    remaining: AtomicUsize,
    done: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl TokioCountdown {
    fn new(count: usize) -> (Arc<TokioCountdown>, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let countdown = Arc::new(TokioCountdown {
            remaining: AtomicUsize::new(count),
            done: Mutex::new(Some(tx)),
        });
        (countdown, rx)
    }

    fn count_down(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let tx = self.done.lock().unwrap().take().expect("one last task");
            tx.send(()).unwrap();
        }
    }
}

fn tokio_spawn_many_local(rt: &tokio::runtime::Runtime) {
    rt.block_on(async {
        let spawner = tokio::spawn(async {
            let (countdown, done) = TokioCountdown::new(SPAWN_TASKS);
            for _ in 0..SPAWN_TASKS {
                let countdown = countdown.clone();
                drop(tokio::spawn(async move { countdown.count_down() }));
            }
            done.await.unwrap();
        });
        spawner.await.unwrap();
    });
}

// ---- spawn_many_remote ---------------------------------------------------------------------

fn braid_spawn_many_remote(rt: &braid::Runtime) {
    let lp = rt.event_loop();
    let latch = Arc::new(Latch::new(SPAWN_TASKS));
    for _ in 0..SPAWN_TASKS {
        let latch = latch.clone();
        drop(
            lp.spawn(async move {
                latch.count_down();
                Ok(())
            })
            .expect("braid spawn from a foreign thread"),
        );
    }
    latch.wait();
}

fn tokio_spawn_many_remote(rt: &tokio::runtime::Runtime) {
    let handle = rt.handle();
    let latch = Arc::new(Latch::new(SPAWN_TASKS));
    for _ in 0..SPAWN_TASKS {
        let latch = latch.clone();
        drop(handle.spawn(async move { latch.count_down() }));
    }
    latch.wait();
}

// ---- ping_pong -----------------------------------------------------------------------------

fn braid_ping_pong(rt: &braid::Runtime) {
    rt.run_until_complete(async {
        let spawner = braid::create_task(async {
            let countdown = BraidCountdown::new(PING_PONG_PAIRS);
            for _ in 0..PING_PONG_PAIRS {
                let countdown = countdown.clone();
                drop(braid::create_task(async move {
                    let ping = braid::Promise::<()>::new();
                    let pong = braid::Promise::<()>::new();
                    let (their_ping, their_pong) = (ping.clone(), pong.clone());
                    drop(braid::create_task(async move {
                        their_ping.await?;
                        their_pong.set_result(())
                    }));
                    ping.set_result(())?;
                    pong.await?;
                    countdown.count_down()
                }));
            }
            countdown.done.clone().await
        });
        spawner.await
    })
    .expect("braid ping_pong");
}

fn tokio_ping_pong(rt: &tokio::runtime::Runtime) {
    rt.block_on(async {
        let spawner = tokio::spawn(async {
            let (countdown, done) = TokioCountdown::new(PING_PONG_PAIRS);
            for _ in 0..PING_PONG_PAIRS {
                let countdown = countdown.clone();
                drop(tokio::spawn(async move {
                    let (ping_tx, ping_rx) = tokio::sync::oneshot::channel::<()>();
                    let (pong_tx, pong_rx) = tokio::sync::oneshot::channel::<()>();
                    drop(tokio::spawn(async move {
                        ping_rx.await.unwrap();
                        pong_tx.send(()).unwrap();
                    }));
                    ping_tx.send(()).unwrap();
                    pong_rx.await.unwrap();
                    countdown.count_down();
                }));
            }
            done.await.unwrap();
        });
        spawner.await.unwrap();
    });
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

// ---- chained_spawn -------------------------------------------------------------------------

/// Spawns the next link of the chain, or ends it: a plain function, so that the chain's
/// futures do not nest.
fn braid_chain(links_left: usize, done: braid::Promise<()>) -> braid::Result<()> {
    if links_left == 0 {
        return done.set_result(());
    }
    drop(braid::create_task(async move {
        braid_chain(links_left - 1, done)
    }));
    Ok(())
}

fn braid_chained_spawn(rt: &braid::Runtime) {
    rt.run_until_complete(async {
        let done = braid::Promise::new();
        braid_chain(CHAIN_LENGTH, done.clone())?;
        done.await
    })
    .expect("braid chained_spawn");
}

fn tokio_chain(links_left: usize, done: tokio::sync::oneshot::Sender<()>) {
    if links_left == 0 {
        done.send(()).unwrap();
        return;
    }
    drop(tokio::spawn(
        async move { tokio_chain(links_left - 1, done) },
    ));
}

fn tokio_chained_spawn(rt: &tokio::runtime::Runtime) {
    rt.block_on(async {
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio_chain(CHAIN_LENGTH, tx);
        rx.await.unwrap();
    });
}

// ---- timers --------------------------------------------------------------------------------

fn braid_timers(rt: &braid::Runtime, delays: &[Duration]) {
    rt.run_until_complete(async {
        let tasks: Vec<_> = delays
            .iter()
            .map(|&d| braid::create_task(braid::sleep(d)))
            .collect();
        for t in tasks {
            t.await?;
        }
        Ok(())
    })
    .expect("braid timers");
}

fn tokio_timers(rt: &tokio::runtime::Runtime, delays: &[Duration]) {
    rt.block_on(async {
        let tasks: Vec<_> = delays
            .iter()
            .map(|&d| tokio::spawn(tokio::time::sleep(d)))
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
}

fn main() {
    let workers = common::workers();
    let delays = timer_delays(TIMERS);
    let mut c = Criterion::default().configure_from_args();
    compare(
        &mut c,
        workers,
        "spawn_many_local",
        braid_spawn_many_local,
        tokio_spawn_many_local,
    );
    compare(
        &mut c,
        workers,
        "spawn_many_remote",
        braid_spawn_many_remote,
        tokio_spawn_many_remote,
    );
    compare(
        &mut c,
        workers,
        "ping_pong",
        braid_ping_pong,
        tokio_ping_pong,
    );
    compare(
        &mut c,
        workers,
        "yield_many",
        braid_yield_many,
        tokio_yield_many,
    );
    compare(
        &mut c,
        workers,
        "chained_spawn",
        braid_chained_spawn,
        tokio_chained_spawn,
    );
    compare(
        &mut c,
        workers,
        "timers",
        |rt| braid_timers(rt, &delays),
        |rt| tokio_timers(rt, &delays),
    );
    c.final_summary();
    common::print_ratios(&GROUPS);
}
