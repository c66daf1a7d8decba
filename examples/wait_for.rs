//! asyncio's `wait_for` example: an "eternity" (an hour's sleep) cut off after one second.
//! `braid::wait_for` cancels the sleep at the deadline, waits until it has finished
//! cancelling, and returns a Timeout error.
//!
//! ```text
//! cargo run --example wait_for                  # about 1 s
//! cargo run --example wait_for -- --scale 0.01  # every duration x 0.01: about 0.01 s
//! ```
//!
//! ```text
//! timeout!
//! ```

use std::time::Duration;

mod common;

/// Sleeps for `duration` (an hour, unscaled), then cheers: never reached here.
async fn eternity(duration: Duration) -> braid::Result<()> {
    braid::sleep(duration).await?;
    println!("yay!");
    Ok(())
}

async fn main_coroutine(scale: f64) -> braid::Result<()> {
    let hour = braid::delay_from_secs(3600.0 * scale)?;
    let limit = braid::delay_from_secs(scale)?;
    match braid::wait_for(eternity(hour), Some(limit)).await {
        Err(e) if e.is_timeout() => println!("timeout!"),
        other => other?,
    }
    Ok(())
}

fn main() -> braid::Result<()> {
    let scale = common::scale_arg("wait_for");
    braid::run(main_coroutine(scale))
}
