//! Chores, the classic asyncio teaching example: doing the laundry (3 s), steaming rice (5 s)
//! and sweeping (2 s). Done one after another they take about 10 s; started together with
//! `braid::create_task` they take about 5 s, the time of the longest, because every chore
//! spends its time waiting (`braid::sleep`) and waiting does not occupy a thread.
//!
//! ```text
//! cargo run --release --example chores                  # about 15 s in all
//! cargo run --release --example chores -- --scale 0.01  # every duration x 0.01: about 0.15 s
//! ```
//!
//! Each line is stamped with the seconds since the start of its part:
//!
//! ```text
//! [ 0.00s] start laundry
//! [ 0.00s] start rice
//! [ 0.00s] start sweeping
//! [ 2.00s] done  sweeping
//! ...
//! ```

use std::time::{Duration, Instant};

mod common;

/// The chores: name and duration in seconds before scaling.
const CHORES: [(&str, f64); 3] = [("laundry", 3.0), ("rice", 5.0), ("sweeping", 2.0)];

/// Prints `message` stamped with the seconds since `start`.
fn stamp(start: Instant, message: &str) {
    println!("[{:5.2}s] {message}", start.elapsed().as_secs_f64());
}

/// One chore: announce it, wait for it to be done, announce that.
async fn chore(name: &'static str, duration: Duration, start: Instant) -> braid::Result<()> {
    stamp(start, &format!("start {name}"));
    braid::sleep(duration).await?;
    stamp(start, &format!("done  {name}"));
    Ok(())
}

/// The chores' durations, scaled (`delay_from_secs` takes seconds as a float, as asyncio does).
fn durations(scale: f64) -> braid::Result<Vec<(&'static str, Duration)>> {
    CHORES
        .iter()
        .map(|&(name, secs)| Ok((name, braid::delay_from_secs(secs * scale)?)))
        .collect()
}

async fn main_coroutine(scale: f64) -> braid::Result<()> {
    let chores = durations(scale)?;
    let total: Duration = chores.iter().map(|&(_, d)| d).sum();
    let longest = chores.iter().map(|&(_, d)| d).max().unwrap_or_default();

    println!(
        "One after another (expect about {:.2} s):",
        total.as_secs_f64()
    );
    let start = Instant::now();
    for &(name, duration) in &chores {
        chore(name, duration, start).await?;
    }
    let sequential = start.elapsed();
    println!(
        "-> one after another took {:.2} s\n",
        sequential.as_secs_f64()
    );

    println!(
        "Concurrently with create_task (expect about {:.2} s):",
        longest.as_secs_f64()
    );
    let start = Instant::now();
    let tasks: Vec<_> = chores
        .iter()
        .map(|&(name, duration)| braid::create_task(chore(name, duration, start)))
        .collect();
    for task in tasks {
        task.await?;
    }
    let concurrent = start.elapsed();
    println!("-> concurrently took {:.2} s\n", concurrent.as_secs_f64());

    println!(
        "one after another {:.2} s, concurrently {:.2} s",
        sequential.as_secs_f64(),
        concurrent.as_secs_f64()
    );
    Ok(())
}

fn main() -> braid::Result<()> {
    let scale = common::scale_arg("chores");
    braid::run(main_coroutine(scale))
}
