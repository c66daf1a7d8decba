//! # braid
//!
//! Python's asyncio, rebuilt in Rust for many cores: per-thread event loops that share one
//! work-stealing pool of tasks, with asyncio's semantics (cancellation delivered at await
//! points, callbacks pinned to their loop in FIFO order, `run_until_complete`, `call_later`,
//! `Promise` as asyncio's `Future`) and cross-thread guarantees (a submission is never lost
//! between a producer and a sleeping loop; every task settles at shutdown).
//!
//! ```
//! use std::time::Duration;
//!
//! fn main() -> braid::Result<()> {
//!     braid::run(async {
//!         let slow = braid::create_task(async {
//!             braid::sleep(Duration::from_millis(20)).await?;
//!             Ok("slow")
//!         });
//!         let fast = braid::create_task(async { Ok("fast") });
//!         assert_eq!(fast.await?, "fast");
//!         assert_eq!(slow.await?, "slow");
//!         Ok(())
//!     })
//! }
//! # main().unwrap();
//! ```
//!
//! The crate `braid::bridge` is the cross-thread layer (`concurrent.futures` in spirit).
#![warn(missing_docs, unreachable_pub)]

pub use braid_bridge as bridge;
pub use braid_runtime::*;
