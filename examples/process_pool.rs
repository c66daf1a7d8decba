//! Three ways to keep blocking work off the event loop, as in asyncio's documentation of
//! `loop.run_in_executor`: blocking I/O on the runtime's default thread pool, the same on a
//! thread pool of our own, and CPU-bound work on a pool of worker processes; each awaited
//! from a task.
//!
//! ```text
//! cargo run --release --example process_pool
//! ```
//!
//! Output (the random bytes differ from run to run):
//!
//! ```text
//! default thread pool: 100 random bytes from /dev/urandom: 5e0c41…
//! custom thread pool:  100 random bytes from /dev/urandom: b7a2f9…
//! process pool:        sum of the squares below 10000000 = 333333283333335000000 (worker 41231)
//! ```
//!
//! The process pool is built first thing in `main`: its workers are this program started
//! again, and each one serves jobs at that `build()` call instead of running the rest of
//! `main`.

use braid::bridge::{ProcessPool, ThreadPool};
use std::fs::File;
use std::io::Read;

/// Blocking I/O: fine on a thread, but it would stall every task of a loop it ran on.
fn read_random_bytes() -> std::io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; 100];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// CPU-bound work: it would hold a thread (and, in Python, the GIL) for its whole run, so it
/// goes to another process. Returns the sum and the pid of the process that computed it.
fn sum_of_squares(below: u64) -> (u128, u32) {
    let sum = (0..below).map(|i| u128::from(i) * u128::from(i)).sum();
    (sum, std::process::id())
}

fn show(bytes: &[u8]) -> String {
    let head: String = bytes.iter().take(3).map(|b| format!("{b:02x}")).collect();
    format!("{} random bytes from /dev/urandom: {head}…", bytes.len())
}

fn main() -> braid::Result<()> {
    // In a worker process this call serves jobs and never returns.
    let processes = ProcessPool::builder()
        .workers(2)
        .register(sum_of_squares)
        .build()?;
    let threads = ThreadPool::new(4);

    braid::run(async {
        // 1. The runtime's default thread pool (asyncio's `run_in_executor(None, …)`).
        let bytes = braid::to_thread(read_random_bytes).await??;
        println!("default thread pool: {}", show(&bytes));

        // 2. A thread pool of our own.
        let bytes = braid::run_in_executor(&threads, read_random_bytes).await??;
        println!("custom thread pool:  {}", show(&bytes));

        // 3. A process pool: the argument and the result cross a pipe.
        let below = 10_000_000;
        let (sum, worker) = processes.submit(sum_of_squares, below)?.await?;
        println!("process pool:        sum of the squares below {below} = {sum} (worker {worker})");
        assert_ne!(worker, std::process::id());
        Ok(())
    })?;

    threads.shutdown(true, false);
    processes.shutdown(true, false);
    Ok(())
}
