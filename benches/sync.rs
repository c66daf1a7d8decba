//! Synchronisation-primitive benchmarks: braid's `Queue` and `Lock` against tokio's
//! `sync::mpsc` channel and `sync::Mutex`, side by side in one run, with the same number of
//! worker threads on both sides (`BRAID_BENCH_WORKERS`, default 2).
//!
//! Workloads:
//!
//! - `queue_mpsc`: 4 producer tasks each put 10 000 integers into one bounded queue of 128
//!   (`braid::Queue::new(128)` / `tokio::sync::mpsc::channel(128)`); one consumer task takes
//!   all 40 000 and sums them. Producer/consumer throughput, with puts that wait when the
//!   queue is full and gets that wait when it is empty, across worker threads.
//! - `lock_contention`: 8 tasks each take a lock 2 000 times (`braid::Lock` /
//!   `tokio::sync::Mutex<()>`) and bump a shared atomic counter while holding it. A short
//!   critical section under contention from tasks on every worker: mostly the fast path of
//!   a free lock, with a hand-off whenever two workers meet.
//! - `lock_handoff`: the same 8 tasks take the lock 500 times each and yield
//!   (`braid::yield_now` / `tokio::task::yield_now`) while holding it, so that every other
//!   task queues behind the holder: each acquisition is a hand-off through the waiter queue.
//!
//! Each runtime is built once per group, outside the measured closure, and driven with
//! `Runtime::run_until_complete` / `tokio::runtime::Runtime::block_on` inside it; each
//! iteration checks its result (the sum, the counter). After the criterion groups the binary
//! prints the braid/tokio ratio of the median times per workload (above 1: braid is slower).
//! `BRAID_BENCH_QUICK=1` takes fewer, shorter samples.
//!
//! ```text
//! cargo bench --bench sync
//! BRAID_BENCH_WORKERS=4 cargo bench --bench sync -- lock_handoff
//! ```

mod common;

use common::compare;
use criterion::Criterion;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Producer tasks in `queue_mpsc`.
const PRODUCERS: u64 = 4;
/// Items each producer puts in `queue_mpsc`.
const ITEMS_PER_PRODUCER: u64 = 10_000;
/// The bound of the queue (channel) in `queue_mpsc`.
const QUEUE_CAPACITY: usize = 128;
/// Tasks in `lock_contention`.
const LOCK_TASKS: u64 = 8;
/// Acquisitions per task in `lock_contention`.
const LOCKS_PER_TASK: u64 = 2_000;

/// Acquisitions per task in `lock_handoff`.
const HANDOFFS_PER_TASK: u64 = 500;

/// The groups this binary defines, in order.
const GROUPS: [&str; 3] = ["queue_mpsc", "lock_contention", "lock_handoff"];

/// The sum of every item put in `queue_mpsc`: each producer puts 0..ITEMS_PER_PRODUCER.
const QUEUE_SUM: u64 = PRODUCERS * (ITEMS_PER_PRODUCER * (ITEMS_PER_PRODUCER - 1) / 2);

// ---- queue_mpsc ----------------------------------------------------------------------------

fn braid_queue_mpsc(rt: &braid::Runtime) {
    let sum = rt
        .run_until_complete(async {
            let queue = Arc::new(braid::Queue::new(QUEUE_CAPACITY));
            let producers: Vec<_> = (0..PRODUCERS)
                .map(|_| {
                    let queue = queue.clone();
                    braid::create_task(async move {
                        for i in 0..ITEMS_PER_PRODUCER {
                            queue.put(i).await?;
                        }
                        Ok(())
                    })
                })
                .collect();
            let consumer = braid::create_task(async move {
                let mut sum = 0u64;
                for _ in 0..PRODUCERS * ITEMS_PER_PRODUCER {
                    sum += queue.get().await?;
                }
                Ok(sum)
            });
            for p in producers {
                p.await?;
            }
            consumer.await
        })
        .expect("braid queue_mpsc");
    assert_eq!(sum, QUEUE_SUM);
}

fn tokio_queue_mpsc(rt: &tokio::runtime::Runtime) {
    let sum = rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::channel(QUEUE_CAPACITY);
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|_| {
                let tx = tx.clone();
                tokio::spawn(async move {
                    for i in 0..ITEMS_PER_PRODUCER {
                        tx.send(i).await.expect("the consumer is alive");
                    }
                })
            })
            .collect();
        drop(tx);
        let consumer = tokio::spawn(async move {
            let mut sum = 0u64;
            for _ in 0..PRODUCERS * ITEMS_PER_PRODUCER {
                sum += rx.recv().await.expect("every producer sends all");
            }
            sum
        });
        for p in producers {
            p.await.unwrap();
        }
        consumer.await.unwrap()
    });
    assert_eq!(sum, QUEUE_SUM);
}

// ---- lock_contention and lock_handoff ------------------------------------------------------

/// `LOCK_TASKS` tasks each take a `braid::Lock` `rounds` times, bump a counter while holding
/// it and, if `yield_inside`, yield before releasing it.
fn braid_lock(rt: &braid::Runtime, rounds: u64, yield_inside: bool) {
    let count = rt
        .run_until_complete(async {
            let lock = Arc::new(braid::Lock::new());
            let counter = Arc::new(AtomicU64::new(0));
            let tasks: Vec<_> = (0..LOCK_TASKS)
                .map(|_| {
                    let (lock, counter) = (lock.clone(), counter.clone());
                    braid::create_task(async move {
                        for _ in 0..rounds {
                            let _guard = lock.acquire().await?;
                            counter.fetch_add(1, Ordering::Relaxed);
                            if yield_inside {
                                braid::yield_now().await?;
                            }
                        }
                        Ok(())
                    })
                })
                .collect();
            for t in tasks {
                t.await?;
            }
            Ok(counter.load(Ordering::Relaxed))
        })
        .expect("braid lock");
    assert_eq!(count, LOCK_TASKS * rounds);
}

/// [`braid_lock`] with a `tokio::sync::Mutex<()>`.
fn tokio_lock(rt: &tokio::runtime::Runtime, rounds: u64, yield_inside: bool) {
    let count = rt.block_on(async {
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        let counter = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..LOCK_TASKS)
            .map(|_| {
                let (lock, counter) = (lock.clone(), counter.clone());
                tokio::spawn(async move {
                    for _ in 0..rounds {
                        let _guard = lock.lock().await;
                        counter.fetch_add(1, Ordering::Relaxed);
                        if yield_inside {
                            tokio::task::yield_now().await;
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        counter.load(Ordering::Relaxed)
    });
    assert_eq!(count, LOCK_TASKS * rounds);
}

fn main() {
    let workers = common::workers();
    let mut c = Criterion::default().configure_from_args();
    compare(
        &mut c,
        workers,
        "queue_mpsc",
        braid_queue_mpsc,
        tokio_queue_mpsc,
    );
    compare(
        &mut c,
        workers,
        "lock_contention",
        |rt| braid_lock(rt, LOCKS_PER_TASK, false),
        |rt| tokio_lock(rt, LOCKS_PER_TASK, false),
    );
    compare(
        &mut c,
        workers,
        "lock_handoff",
        |rt| braid_lock(rt, HANDOFFS_PER_TASK, true),
        |rt| tokio_lock(rt, HANDOFFS_PER_TASK, true),
    );
    c.final_summary();
    common::print_ratios(&GROUPS);
}
