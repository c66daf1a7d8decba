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

const USAGE: &str = "usage: gather [--scale F]   (F >= 0 multiplies every duration; default 1)";

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

/// Parses `--scale F` (or `--scale=F`); `Err` carries the message for the user.
fn parse_scale() -> Result<f64, String> {
    let mut scale = 1.0;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--scale" => args.next().ok_or("--scale needs a value")?,
            other => match other.strip_prefix("--scale=") {
                Some(v) => v.to_owned(),
                None => return Err(format!("unknown argument {other:?}")),
            },
        };
        scale = match value.parse::<f64>() {
            Ok(f) if f.is_finite() && f >= 0.0 => f,
            _ => {
                return Err(format!(
                    "--scale: expected a finite number >= 0, got {value:?}"
                ))
            }
        };
    }
    Ok(scale)
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
    let scale = parse_scale().unwrap_or_else(|message| {
        eprintln!("gather: {message}\n{USAGE}");
        std::process::exit(2);
    });
    braid::run(main_coroutine(scale))
}
