//! The floor under three benchmark workloads: the same work done by the simplest executor
//! that could run it, with none of a runtime's duties (no wakers, no join handles, no task
//! registry, no cancellation, no idle protocol). It bounds what any runtime can reach on
//! this machine, and so which of issue 8's "50x faster than CPython asyncio" targets are
//! reachable at all (see `benchmarks/NOTES.md`).
//!
//! - `spawn_many_local`: one thread boxes 10 000 futures that each decrement a shared
//!   counter, then polls each once.
//! - `spawn_many_remote`: one thread boxes them into a mutex-guarded queue while a second
//!   thread spins on the queue and polls them.
//! - `call_soon_threadsafe`: four threads push 100 000 boxed closures (25 000 each, each
//!   holding a clone of the counter, as in `benches/bridge.rs`) into a mutex-guarded queue
//!   while a fifth spins on it and runs them; and the same through a lock-free
//!   `crossbeam_deque::Injector` (the queue braid's loops share), which is faster here.
//!
//! Prints the best time of many runs of each.
//!
//! ```text
//! cargo run --release -p braid-benchmarks --example floor
//! ```

use crossbeam_deque::{Injector, Steal};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

/// Tasks per run of the spawn workloads, as in `benches/scheduler.rs`.
const TASKS: usize = 10_000;
/// Callbacks per run of `call_soon_threadsafe`, as in `benches/bridge.rs`.
const CALLBACKS: usize = 100_000;
/// Threads submitting them.
const SUBMITTERS: usize = 4;

type BoxedTask = Pin<Box<dyn Future<Output = ()> + Send>>;
type Callback = Box<dyn FnOnce() + Send>;

/// The best of `runs` timings of `f`.
fn best_of(runs: usize, mut f: impl FnMut()) -> Duration {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .min()
        .expect("at least one run")
}

/// A task of the spawn workloads: decrements `left` once.
fn countdown_task(left: &Arc<AtomicUsize>) -> BoxedTask {
    let left = left.clone();
    Box::pin(async move {
        left.fetch_sub(1, Ordering::AcqRel);
    })
}

fn spawn_local() {
    let left = Arc::new(AtomicUsize::new(TASKS));
    let mut queue: VecDeque<BoxedTask> = (0..TASKS).map(|_| countdown_task(&left)).collect();
    let mut cx = Context::from_waker(Waker::noop());
    while let Some(mut task) = queue.pop_front() {
        // These tasks finish on their first poll.
        let _ = task.as_mut().poll(&mut cx);
    }
    assert_eq!(left.load(Ordering::Acquire), 0);
}

/// Spins until `left` reaches zero, running whatever `queue` holds with `run`.
fn spin_consumer<T: Send + 'static>(
    queue: Arc<Mutex<VecDeque<T>>>,
    left: Arc<AtomicUsize>,
    mut run: impl FnMut(T) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut batch = VecDeque::new();
        while left.load(Ordering::Acquire) > 0 {
            std::mem::swap(&mut batch, &mut *queue.lock().expect("queue lock"));
            batch.drain(..).for_each(&mut run);
        }
    })
}

fn spawn_remote() {
    let queue = Arc::new(Mutex::new(VecDeque::<BoxedTask>::new()));
    let left = Arc::new(AtomicUsize::new(TASKS));
    let consumer = spin_consumer(queue.clone(), left.clone(), |mut task| {
        let _ = task.as_mut().poll(&mut Context::from_waker(Waker::noop()));
    });
    for _ in 0..TASKS {
        let task = countdown_task(&left);
        queue.lock().expect("queue lock").push_back(task);
    }
    consumer.join().expect("consumer");
}

/// Four threads hand `push` 25 000 callbacks each, every one holding a clone of `left`
/// and decrementing it when run.
fn submit_callbacks(left: &Arc<AtomicUsize>, push: impl Fn(Callback) + Sync) {
    std::thread::scope(|s| {
        for _ in 0..SUBMITTERS {
            let push = &push;
            s.spawn(move || {
                for _ in 0..CALLBACKS / SUBMITTERS {
                    let left = left.clone();
                    push(Box::new(move || {
                        left.fetch_sub(1, Ordering::AcqRel);
                    }));
                }
            });
        }
    });
}

fn call_soon_threadsafe() {
    let queue = Arc::new(Mutex::new(VecDeque::<Callback>::new()));
    let left = Arc::new(AtomicUsize::new(CALLBACKS));
    let consumer = spin_consumer(queue.clone(), left.clone(), |callback| callback());
    submit_callbacks(&left, |callback| {
        queue.lock().expect("queue lock").push_back(callback);
    });
    consumer.join().expect("consumer");
}

fn call_soon_threadsafe_lock_free() {
    let queue = Arc::new(Injector::<Callback>::new());
    let left = Arc::new(AtomicUsize::new(CALLBACKS));
    let consumer = {
        let (queue, left) = (queue.clone(), left.clone());
        std::thread::spawn(move || {
            while left.load(Ordering::Acquire) > 0 {
                match queue.steal() {
                    Steal::Success(callback) => callback(),
                    Steal::Empty | Steal::Retry => std::hint::spin_loop(),
                }
            }
        })
    };
    submit_callbacks(&left, |callback| queue.push(callback));
    consumer.join().expect("consumer");
}

fn main() {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "spawn_many_local floor:     {:8.3} ms per {TASKS} tasks",
        ms(best_of(200, spawn_local))
    );
    println!(
        "spawn_many_remote floor:    {:8.3} ms per {TASKS} tasks",
        ms(best_of(100, spawn_remote))
    );
    println!(
        "call_soon_threadsafe floor: {:8.3} ms per {CALLBACKS} callbacks",
        ms(best_of(20, call_soon_threadsafe))
    );
    println!(
        "  the same, lock-free queue: {:8.3} ms per {CALLBACKS} callbacks",
        ms(best_of(20, call_soon_threadsafe_lock_free))
    );
}
