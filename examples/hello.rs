//! Hello world, asyncio style: `asyncio.run(main())`.
//!
//! ```text
//! cargo run --example hello
//! ```

use std::time::Duration;

async fn main_coroutine() -> braid::Result<()> {
    println!("Hello ...");
    braid::sleep(Duration::from_millis(200)).await?;
    println!("... World!");
    Ok(())
}

fn main() -> braid::Result<()> {
    braid::run(main_coroutine())
}
