//! braid's cross-thread layer (Python's `concurrent.futures`, in spirit): everything that
//! crosses threads lives here, and knows nothing of event loops.
//!
//! The [`Error`] type shared by all of braid; [`ConcurrentFuture`] (Python's
//! `concurrent.futures.Future`) with [`wait`] and [`as_completed`]; the loop [`doorbell`]; and
//! the `sync` shim that lets every synchronising line run under loom.
//!
//! ```
//! use braid_bridge::{Error, ErrorKind};
//! let e = Error::new(ErrorKind::Closed, "runtime is shut down");
//! assert_eq!(e.kind(), ErrorKind::Closed);
//! ```
#![warn(missing_docs, unreachable_pub)]

/// True if the loom fault switch `f` is on (always false outside loom builds): the one hook
/// by which the `#[should_panic]` loom twins break a protocol on purpose.
macro_rules! fault {
    ($f:ident) => {{
        #[cfg(loom)]
        let on = crate::fault::on(crate::fault::Fault::$f);
        #[cfg(not(loom))]
        let on = false;
        on
    }};
}

pub mod doorbell;
mod error;
#[cfg(loom)]
#[doc(hidden)]
pub mod fault;
mod future;
mod pool;
#[cfg(unix)]
mod process;
#[doc(hidden)]
pub mod sync;
#[doc(hidden)]
pub mod tuning;

pub use error::{Error, ErrorKind, Result};
pub use future::{
    as_completed, wait, AsCompleted, CancelOutcome, Completer, ConcurrentFuture, ReturnWhen,
};
#[doc(hidden)]
pub use future::{
    enter_loop_thread, enter_task_cancel_point, LoopThreadGuard, TaskCancelPoint,
    TaskCancelPointGuard,
};
pub use pool::{Executor, PoolFull, SubmitAsync, ThreadPool, ThreadPoolBuilder};
/// The process pool's supervisor state machine, public for its loom model only.
#[cfg(unix)]
#[doc(hidden)]
pub use process::core as process_core;
#[cfg(all(unix, not(loom)))]
pub use process::{ProcessPool, ProcessPoolBuilder};

/// Writes `line` and a newline to stderr, and ignores a failed write (a pipe nobody reads any
/// more, say). braid's last-resort reports (the default exception handler's, a panicking done
/// callback's) run on loop and pool threads, where `eprintln!`, which panics when its write
/// fails, killed the thread. Used by braid's runtime; not needed by applications.
///
/// With unwinding panics this is `eprintln!` with its panic caught, so that a test harness
/// still captures the line; the panic hook then sees that panic. With `panic = "abort"` it
/// writes to stderr directly, which a harness does not capture.
///
/// ```
/// braid_bridge::report_to_stderr(format_args!("braid: {}", "a report"));
/// ```
#[doc(hidden)]
pub fn report_to_stderr(line: std::fmt::Arguments<'_>) {
    #[cfg(panic = "unwind")]
    let _ = std::panic::catch_unwind(|| eprintln!("{line}"));
    #[cfg(not(panic = "unwind"))]
    {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }
}
