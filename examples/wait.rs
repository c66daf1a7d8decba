//! `braid::wait` with `ReturnWhen::FirstCompleted`: three breakfast chores start at once (toast
//! 1 s, coffee 2 s, eggs 3 s); `wait` returns as soon as the first is done, with the tasks
//! split into done and pending (each in the order given). Nothing is cancelled: the pending
//! ones are then waited for with `ReturnWhen::AllCompleted`.
//!
//! ```text
//! cargo run --example wait                  # about 3 s
//! cargo run --example wait -- --scale 0.01  # every duration x 0.01: about 0.03 s
//! ```
//!
//! ```text
//! [ 1.00s] first completed: done [toast], pending [coffee, eggs]
//! [ 1.00s] toast: toast is ready
//! [ 3.00s] all completed: done [coffee, eggs], pending []
//! [ 3.00s] coffee: coffee is ready
//! [ 3.00s] eggs: eggs is ready
//! ```

use braid::{ReturnWhen, Task};
use std::time::{Duration, Instant};

mod common;

/// The chores: name and duration in seconds before scaling.
const CHORES: [(&str, f64); 3] = [("coffee", 2.0), ("toast", 1.0), ("eggs", 3.0)];

/// Prints `message` stamped with the seconds since `start`.
fn stamp(start: Instant, message: &str) {
    println!("[{:5.2}s] {message}", start.elapsed().as_secs_f64());
}

/// One chore: wait for it to be done.
async fn chore(name: &'static str, duration: Duration) -> braid::Result<String> {
    braid::sleep(duration).await?;
    Ok(format!("{name} is ready"))
}

/// The tasks' names, as `[a, b]`.
fn names(tasks: &[Task<String>]) -> String {
    let names: Vec<String> = tasks.iter().map(Task::name).collect();
    format!("[{}]", names.join(", "))
}

/// Awaits each done task and prints its value.
async fn report(start: Instant, done: Vec<Task<String>>) -> braid::Result<()> {
    for task in done {
        let name = task.name();
        let value = task.await?;
        stamp(start, &format!("{name}: {value}"));
    }
    Ok(())
}

async fn main_coroutine(scale: f64) -> braid::Result<()> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (name, secs) in CHORES {
        let task = braid::create_task(chore(name, braid::delay_from_secs(secs * scale)?));
        task.set_name(name);
        tasks.push(task);
    }

    let (done, pending) = braid::wait(tasks, None, ReturnWhen::FirstCompleted).await?;
    stamp(
        start,
        &format!(
            "first completed: done {}, pending {}",
            names(&done),
            names(&pending)
        ),
    );
    report(start, done).await?;
    if pending.is_empty() {
        // Everything finished at once (a scale of 0): there is nothing left to wait for, and
        // `wait` on no task at all is an error.
        return Ok(());
    }

    let (done, pending) = braid::wait(pending, None, ReturnWhen::AllCompleted).await?;
    stamp(
        start,
        &format!(
            "all completed: done {}, pending {}",
            names(&done),
            names(&pending)
        ),
    );
    report(start, done).await
}

fn main() -> braid::Result<()> {
    let scale = common::scale_arg("wait");
    braid::run(main_coroutine(scale))
}
