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

const USAGE: &str = "usage: wait_for [--scale F]   (F >= 0 multiplies every duration; default 1)";

/// Sleeps for `duration` (an hour, unscaled), then cheers: never reached here.
async fn eternity(duration: Duration) -> braid::Result<()> {
    braid::sleep(duration).await?;
    println!("yay!");
    Ok(())
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
    let hour = braid::delay_from_secs(3600.0 * scale)?;
    let limit = braid::delay_from_secs(scale)?;
    match braid::wait_for(eternity(hour), Some(limit)).await {
        Err(e) if e.is_timeout() => println!("timeout!"),
        other => other?,
    }
    Ok(())
}

fn main() -> braid::Result<()> {
    let scale = parse_scale().unwrap_or_else(|message| {
        eprintln!("wait_for: {message}\n{USAGE}");
        std::process::exit(2);
    });
    braid::run(main_coroutine(scale))
}
