//! `braid::shield`: keep work going when the task waiting for it is cancelled. A request
//! handler saves an order (1 s) and the client hangs up after 0.3 s, which cancels the
//! handler. Awaited plainly, the cancel reaches the save and the order is lost; awaited
//! through `shield`, the handler's await returns Cancelled at once while the save runs on to
//! the end, and the handler, before giving up, waits for it through the same shield.
//!
//! ```text
//! cargo run --example shield                  # about 2 s
//! cargo run --example shield -- --scale 0.01  # every duration x 0.01: about 0.02 s
//! ```
//!
//! ```text
//! Without shield:
//! [ 0.00s] saving order #1...
//! [ 0.30s] the client hung up: cancel the handler
//! [ 0.30s] save of order #1 cancelled
//! [ 0.30s] handler: cancelled
//!
//! With shield:
//! [ 0.00s] saving order #2...
//! [ 0.30s] the client hung up: cancel the handler
//! [ 0.30s] handler: cancelled, but the save goes on; waiting for it before giving up
//! [ 1.00s] saved order #2
//! [ 1.00s] handler: order #2 saved
//! ```

use std::time::{Duration, Instant};

mod common;

/// Prints `message` stamped with the seconds since `start`.
fn stamp(start: Instant, message: &str) {
    println!("[{:5.2}s] {message}", start.elapsed().as_secs_f64());
}

/// Saves `order`: takes `duration`, and says so if it is cancelled halfway.
async fn save(order: &'static str, duration: Duration, start: Instant) -> braid::Result<String> {
    stamp(start, &format!("saving {order}..."));
    if let Err(e) = braid::sleep(duration).await {
        stamp(start, &format!("save of {order} cancelled"));
        return Err(e);
    }
    stamp(start, &format!("saved {order}"));
    Ok(format!("{order} saved"))
}

/// Handles one request: saves `order`, through `shield` or not; cancelled when the client
/// hangs up after `patience`.
async fn handle(
    order: &'static str,
    shielded: bool,
    times: (Duration, Duration),
    start: Instant,
) -> braid::Result<()> {
    let (work, patience) = times;
    let saving = braid::create_task(save(order, work, start));
    let handler = braid::create_task(async move {
        if !shielded {
            let outcome = saving.await;
            if let Err(e) = &outcome {
                stamp(start, &format!("handler: {e}"));
            }
            return outcome;
        }
        let mut shield = braid::shield(saving);
        match (&mut shield).await {
            Err(e) if e.is_cancelled() => {
                stamp(
                    start,
                    "handler: cancelled, but the save goes on; waiting for it before giving up",
                );
                // The cancel was delivered once: this await is not cancelled.
                let saved = (&mut shield).await?;
                stamp(start, &format!("handler: {saved}"));
                Err(e)
            }
            outcome => outcome,
        }
    });
    braid::sleep(patience).await?;
    stamp(start, "the client hung up: cancel the handler");
    handler.cancel();
    match handler.await {
        Err(e) if e.is_cancelled() => Ok(()),
        other => other.map(drop),
    }
}

async fn main_coroutine(scale: f64) -> braid::Result<()> {
    let times = (
        braid::delay_from_secs(scale)?,
        braid::delay_from_secs(0.3 * scale)?,
    );
    println!("Without shield:");
    handle("order #1", false, times, Instant::now()).await?;
    println!("\nWith shield:");
    handle("order #2", true, times, Instant::now()).await
}

fn main() -> braid::Result<()> {
    let scale = common::scale_arg("shield");
    braid::run(main_coroutine(scale))
}
