//! braid's cross-thread layer (Python's `concurrent.futures`, in spirit): everything that
//! crosses threads lives here, and knows nothing of event loops.
//!
//! For now: the [`Error`] type shared by all of braid, the [`sync`] shim that lets every
//! synchronising line run under loom, and the loop [`doorbell`].
//!
//! ```
//! use braid_bridge::{Error, ErrorKind};
//! let e = Error::new(ErrorKind::Closed, "runtime is shut down");
//! assert_eq!(e.kind(), ErrorKind::Closed);
//! ```
#![warn(missing_docs, unreachable_pub)]

pub mod doorbell;
mod error;
#[doc(hidden)]
pub mod sync;

pub use error::{Error, ErrorKind, Result};
