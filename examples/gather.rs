//! asyncio's `gather` example: three tasks compute factorials, sleeping one second per step,
//! all at once; `braid::gather` returns their results in argument order (A, B, C), whichever
//! finishes first. Done one after another they would take 1 + 2 + 3 = 6 s; gathered they take
//! about 3 s, the time of the longest.
//!
//! ```text
//! cargo run --example gather                  # about 3 s
//! cargo run --example gather -- --scale 0.01  # every duration x 0.01: about 0.03 s
//! ```
//!
//! ```text
//! Task A: Compute factorial(2), currently i=2...
//! Task B: Compute factorial(3), currently i=2...
//! Task C: Compute factorial(4), currently i=2...
//! Task A: factorial(2) = 2
//! Task B: Compute factorial(3), currently i=3...
//! ...
//! [2, 6, 24] (in 3.00 s)
//! ```

use std::time::{Duration, Instant};

mod common;

/// Computes `number`! one multiplication per `step`, reporting each step.
async fn factorial(name: &'static str, number: u64, step: Duration) -> braid::Result<u64> {
    let mut f = 1;
    for i in 2..=number {
        println!("Task {name}: Compute factorial({number}), currently i={i}...");
        braid::sleep(step).await?;
        f *= i;
    }
    println!("Task {name}: factorial({number}) = {f}");
    Ok(f)
}

async fn main_coroutine(scale: f64) -> braid::Result<()> {
    let step = braid::delay_from_secs(scale)?;
    let start = Instant::now();
    // Each coroutine becomes a task at once; the results come back in this order.
    let results =
        braid::gather([("A", 2), ("B", 3), ("C", 4)].map(|(name, n)| factorial(name, n, step)))
            .await?;
    println!("{results:?} (in {:.2} s)", start.elapsed().as_secs_f64());
    Ok(())
}

fn main() -> braid::Result<()> {
    let scale = common::scale_arg("gather");
    braid::run(main_coroutine(scale))
}
