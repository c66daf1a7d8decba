//! One error type for all of braid, like Python's exceptions: a kind to branch on, a message,
//! and the underlying error (an `io::Error`, a user's error) reachable by downcast.

use std::any::Any;
use std::error::Error as StdError;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// `Result` with braid's [`Error`] as the default error type.
///
/// # Examples
///
/// ```
/// fn parse(s: &str) -> braid_bridge::Result<u32> {
///     Ok(s.parse::<u32>()?)
/// }
/// assert_eq!(parse("7").unwrap(), 7);
/// assert!(parse("x").is_err());
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure an [`Error`] is: the branch point, like Python's exception classes.
///
/// # Examples
///
/// ```
/// use braid_bridge::{Error, ErrorKind};
/// assert_eq!(Error::cancelled(None).kind(), ErrorKind::Cancelled);
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The work was cancelled (asyncio's `CancelledError`).
    Cancelled,
    /// A deadline passed (asyncio's `TimeoutError`).
    Timeout,
    /// An operation was called in a state that does not allow it (asyncio's
    /// `InvalidStateError`, and braid's "would deadlock").
    InvalidState,
    /// A task, callback or job panicked; the message is the panic text.
    Panicked,
    /// The runtime, loop or pool was shut down.
    Closed,
    /// A pool can no longer run work (a worker process died).
    BrokenExecutor,
    /// An I/O error; the `std::io::Error` is reachable with `downcast_ref`.
    Io,
    /// Several errors at once (a task group); see [`Error::group_errors`].
    Group,
    /// Anything else: a user's error or message.
    Other,
}

struct ErrorImpl {
    kind: ErrorKind,
    message: Option<String>,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
    group: Vec<Error>,
}

/// braid's error: cheap to clone (an `Arc` inside), `Send + Sync + 'static`.
///
/// Like `anyhow::Error`, it does not itself implement `std::error::Error`, so that `?` can
/// convert any standard error into it; it derefs to `dyn std::error::Error` instead, and
/// converts into `Box<dyn std::error::Error + Send + Sync>` so `?` works in `main`.
///
/// # Examples
///
/// ```
/// use braid_bridge::{Error, ErrorKind};
///
/// let err = Error::cancelled(Some("shutting down".into()));
/// assert!(err.is_cancelled());
/// assert_eq!(err.message(), Some("shutting down"));
///
/// let io: Error = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "gone").into();
/// assert_eq!(io.kind(), ErrorKind::Io);
/// assert_eq!(io.downcast_ref::<std::io::Error>().unwrap().kind(), std::io::ErrorKind::BrokenPipe);
/// ```
#[derive(Clone)]
pub struct Error {
    inner: Arc<ErrorImpl>,
}

impl Error {
    fn from_parts(
        kind: ErrorKind,
        message: Option<String>,
        source: Option<Box<dyn StdError + Send + Sync>>,
        group: Vec<Error>,
    ) -> Error {
        Error {
            inner: Arc::new(ErrorImpl {
                kind,
                message,
                source,
                group,
            }),
        }
    }

    /// The kind of failure.
    ///
    /// ```
    /// # use braid_bridge::{Error, ErrorKind};
    /// assert_eq!(Error::msg("x").kind(), ErrorKind::Other);
    /// ```
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// True if the kind is [`ErrorKind::Cancelled`].
    ///
    /// ```
    /// # use braid_bridge::Error;
    /// assert!(Error::cancelled(None).is_cancelled());
    /// ```
    pub fn is_cancelled(&self) -> bool {
        self.inner.kind == ErrorKind::Cancelled
    }

    /// True if the kind is [`ErrorKind::Timeout`].
    ///
    /// ```
    /// # use braid_bridge::{Error, ErrorKind};
    /// assert!(Error::new(ErrorKind::Timeout, "late").is_timeout());
    /// ```
    pub fn is_timeout(&self) -> bool {
        self.inner.kind == ErrorKind::Timeout
    }

    /// A cancellation, with the message given to `cancel_with` if any.
    ///
    /// ```
    /// # use braid_bridge::Error;
    /// assert_eq!(Error::cancelled(Some("bye".into())).to_string(), "cancelled: bye");
    /// ```
    pub fn cancelled(message: Option<String>) -> Error {
        Error::from_parts(ErrorKind::Cancelled, message, None, Vec::new())
    }

    /// An error of kind [`ErrorKind::Other`] with `message`.
    ///
    /// ```
    /// # use braid_bridge::Error;
    /// assert_eq!(Error::msg("boom").to_string(), "boom");
    /// ```
    pub fn msg(message: impl fmt::Display) -> Error {
        Error::new(ErrorKind::Other, message)
    }

    /// An error of `kind` with `message`.
    ///
    /// ```
    /// # use braid_bridge::{Error, ErrorKind};
    /// let e = Error::new(ErrorKind::Closed, "runtime is shut down");
    /// assert_eq!(e.kind(), ErrorKind::Closed);
    /// ```
    pub fn new(kind: ErrorKind, message: impl fmt::Display) -> Error {
        Error::from_parts(kind, Some(message.to_string()), None, Vec::new())
    }

    /// An error of `kind` whose cause is `source`, reachable through
    /// [`downcast_ref`](Error::downcast_ref).
    ///
    /// ```
    /// # use braid_bridge::{Error, ErrorKind};
    /// let io = std::io::Error::other("disk on fire");
    /// let e = Error::with_source(ErrorKind::BrokenExecutor, io);
    /// assert!(e.downcast_ref::<std::io::Error>().is_some());
    /// ```
    pub fn with_source(kind: ErrorKind, source: impl StdError + Send + Sync + 'static) -> Error {
        let message = source.to_string();
        Error::from_parts(kind, Some(message), Some(Box::new(source)), Vec::new())
    }

    /// An error of kind [`ErrorKind::Group`] that carries `errors` (what a task group raises).
    ///
    /// ```
    /// # use braid_bridge::{Error, ErrorKind};
    /// let g = Error::group("2 tasks failed", vec![Error::msg("a"), Error::msg("b")]);
    /// assert_eq!(g.group_errors().len(), 2);
    /// ```
    pub fn group(message: impl fmt::Display, errors: Vec<Error>) -> Error {
        Error::from_parts(ErrorKind::Group, Some(message.to_string()), None, errors)
    }

    /// An error of kind [`ErrorKind::Panicked`] from a panic payload; the message is the panic
    /// text when the payload is a string.
    ///
    /// ```
    /// # use braid_bridge::Error;
    /// let payload = std::panic::catch_unwind(|| panic!("oh no")).unwrap_err();
    /// let e = Error::from_panic(payload);
    /// assert_eq!(e.message(), Some("oh no"));
    /// ```
    pub fn from_panic(payload: Box<dyn Any + Send>) -> Error {
        let text = if let Some(s) = payload.downcast_ref::<&'static str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "a panic with a non-string payload".to_owned()
        };
        Error::new(ErrorKind::Panicked, text)
    }

    /// Every child error of a [`ErrorKind::Group`] error; empty for any other kind.
    ///
    /// ```
    /// # use braid_bridge::Error;
    /// assert!(Error::msg("x").group_errors().is_empty());
    /// ```
    pub fn group_errors(&self) -> &[Error] {
        &self.inner.group
    }

    /// The message: the cancel message, the panic text, the wrapped error's text…
    ///
    /// ```
    /// # use braid_bridge::Error;
    /// assert_eq!(Error::cancelled(None).message(), None);
    /// ```
    pub fn message(&self) -> Option<&str> {
        self.inner.message.as_deref()
    }

    /// The underlying error, if it is an `E`.
    ///
    /// ```
    /// # use braid_bridge::Error;
    /// let e: Error = "x".parse::<u8>().unwrap_err().into();
    /// assert!(e.downcast_ref::<std::num::ParseIntError>().is_some());
    /// ```
    pub fn downcast_ref<E: StdError + 'static>(&self) -> Option<&E> {
        let source: &(dyn StdError + 'static) = self.inner.source.as_deref()?;
        source.downcast_ref::<E>()
    }
}

impl fmt::Display for ErrorImpl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(source) = &self.source {
            return fmt::Display::fmt(source, f);
        }
        let msg = self.message.as_deref();
        match (self.kind, msg) {
            (ErrorKind::Cancelled, None) => f.write_str("cancelled"),
            (ErrorKind::Cancelled, Some(m)) => write!(f, "cancelled: {m}"),
            (ErrorKind::Panicked, Some(m)) => write!(f, "panicked: {m}"),
            (ErrorKind::Timeout, None) => f.write_str("timed out"),
            (ErrorKind::Group, Some(m)) => {
                write!(f, "{m} ({} sub-error", self.group.len())?;
                if self.group.len() != 1 {
                    f.write_str("s")?;
                }
                f.write_str(")")
            }
            (_, Some(m)) => f.write_str(m),
            (kind, None) => write!(f, "{kind:?}"),
        }
    }
}

impl fmt::Debug for ErrorImpl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind);
        if let Some(m) = &self.message {
            d.field("message", m);
        }
        if let Some(s) = &self.source {
            d.field("source", s);
        }
        if !self.group.is_empty() {
            d.field("group", &self.group);
        }
        d.finish()
    }
}

impl StdError for ErrorImpl {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.inner, f)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.inner, f)
    }
}

impl<E: StdError + Send + Sync + 'static> From<E> for Error {
    fn from(error: E) -> Error {
        let mut boxed: Box<dyn Any> = Box::new(error);
        match boxed.downcast::<std::io::Error>() {
            Ok(io) => {
                // An `Error` that travelled through an `io::Error` (a cancellation surfacing
                // from `AsyncRead::poll_read`) comes back as itself, kind and all.
                if io.get_ref().is_some_and(|inner| inner.is::<StdView>()) {
                    let inner = io.into_inner().expect("checked above");
                    let view = inner.downcast::<StdView>().expect("checked above");
                    return view.0;
                }
                Error::with_source(ErrorKind::Io, *io)
            }
            Err(other) => {
                boxed = other;
                let error = *boxed.downcast::<E>().expect("boxed an E");
                Error::with_source(ErrorKind::Other, error)
            }
        }
    }
}

impl Error {
    /// This error as an `io::Error`, for I/O traits whose methods can only return one (a
    /// cancellation at an `AsyncRead::poll_read`). Converting it back with `Error::from` (or
    /// `?`) gives this error again, with its kind; an I/O error keeps its `io::ErrorKind`.
    ///
    /// ```
    /// # use braid_bridge::{Error, ErrorKind};
    /// let io = Error::cancelled(None).into_io_error();
    /// assert!(Error::from(io).is_cancelled());
    /// ```
    pub fn into_io_error(self) -> std::io::Error {
        let kind = self
            .downcast_ref::<std::io::Error>()
            .map_or(std::io::ErrorKind::Other, std::io::Error::kind);
        std::io::Error::new(kind, StdView(self))
    }
}

/// A `std::error::Error` view of a braid [`Error`], for `Box<dyn Error>` and `main`.
struct StdView(Error);

impl fmt::Display for StdView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for StdView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl StdError for StdView {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.inner.source()
    }
}

impl From<Error> for Box<dyn StdError + Send + Sync> {
    fn from(error: Error) -> Self {
        Box::new(StdView(error))
    }
}

impl Deref for Error {
    type Target = dyn StdError + Send + Sync + 'static;
    fn deref(&self) -> &Self::Target {
        &*self.inner
    }
}

impl AsRef<dyn StdError + Send + Sync> for Error {
    fn as_ref(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_keep_their_kind_and_source() {
        let e: Error = std::io::Error::from(std::io::ErrorKind::ConnectionReset).into();
        assert_eq!(e.kind(), ErrorKind::Io);
        let io = e.downcast_ref::<std::io::Error>().expect("io source");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionReset);
    }

    #[test]
    fn question_mark_in_a_boxed_main() {
        fn main_like() -> std::result::Result<(), Box<dyn StdError + Send + Sync>> {
            Err(Error::new(ErrorKind::Closed, "closed"))?
        }
        assert_eq!(main_like().unwrap_err().to_string(), "closed");
    }

    #[test]
    fn display_by_kind() {
        assert_eq!(Error::cancelled(None).to_string(), "cancelled");
        assert_eq!(
            Error::new(ErrorKind::Panicked, "x").to_string(),
            "panicked: x"
        );
        let g = Error::group("group failed", vec![Error::msg("a")]);
        assert_eq!(g.to_string(), "group failed (1 sub-error)");
    }

    #[test]
    fn clones_share_the_same_error() {
        let e = Error::msg("shared");
        let c = e.clone();
        assert!(Arc::ptr_eq(&e.inner, &c.inner));
    }
}
