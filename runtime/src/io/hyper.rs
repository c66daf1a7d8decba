//! hyper 1.x on braid: the runtime traits of `hyper::rt`, implemented for braid's sockets,
//! tasks and timers (the feature `hyper`).
//!
//! - [`HyperIo`] turns any `futures_io::AsyncRead + AsyncWrite` stream (a [`TcpStream`],
//!   a [`UnixStream`]) into hyper's `rt::Read + rt::Write`.
//! - [`BraidExecutor`] is hyper's `rt::Executor`: what hyper spawns (HTTP/2 streams, say) runs
//!   as a braid task.
//! - [`BraidTimer`] is hyper's `rt::Timer` (its sleeps are [`BraidSleep`]s): the timeouts of
//!   hyper's builders (`header_read_timeout`, keep-alive pings) run on braid's timers.
//! - [`drive`] awaits a hyper connection as a braid await (and [`into_error`] turns a
//!   `hyper::Error` into a braid [`Error`]), so that a connection task that was cancelled
//!   ends cancelled.
//!
//! braid depends on hyper without any protocol feature; an application picks hyper's
//! `server`/`client`/`http1`/`http2` features itself.
//!
//! ```
//! use braid_runtime::hyper::HyperIo;
//! use braid_runtime::{TcpListener, TcpStream};
//! use hyper::rt::{Read, ReadBuf, Write};
//! use std::future::poll_fn;
//! use std::pin::Pin;
//!
//! braid_runtime::run(async {
//!     let listener = TcpListener::bind("127.0.0.1:0").await?;
//!     let mut client = HyperIo::new(TcpStream::connect(listener.local_addr()?).await?);
//!     let mut server = HyperIo::new(listener.accept().await?.0);
//!     // What hyper does with a connection, by hand:
//!     let sent = poll_fn(|cx| Pin::new(&mut client).poll_write(cx, b"GET / HTTP/1.1\r\n")).await?;
//!     let mut storage = [0u8; 64];
//!     let mut buf = ReadBuf::new(&mut storage);
//!     poll_fn(|cx| Pin::new(&mut server).poll_read(cx, buf.unfilled())).await?;
//!     assert_eq!(buf.filled(), &b"GET / HTTP/1.1\r\n"[..sent]);
//!     Ok(())
//! })
//! .unwrap();
//! ```
//!
//! ## Cancellation
//!
//! A task that runs a hyper connection is cancelled as any braid task is: at its next braid
//! await point. [`HyperIo`]'s reads and writes are such points (whatever the stream), as is
//! every braid future the service awaits; the cancel then fails the connection, which ends,
//! dropping its socket. [`BraidSleep`]s are **not** cancellation points: a hyper timer pending
//! when the task is cancelled neither fires early nor swallows the cancel; it leaves the
//! cancel to the connection's I/O, which hyper polls beside its timers. [`drive`] (or
//! [`into_error`]) reports the resulting failure as braid's Cancelled error, so the connection
//! task ends cancelled; [`drive`] does so even when hyper swallowed the failure (a read that
//! fails on an idle HTTP/1 connection counts as a clean close for hyper).
//!
//! [`TcpStream`]: crate::TcpStream
//! [`UnixStream`]: crate::UnixStream

use crate::{context, EventLoop, Sleep};
use braid_bridge::{Error, ErrorKind, Result};
use futures_io::{AsyncRead, AsyncWrite};
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The most [`HyperIo`] reads from its stream in one `poll_read` (the size its scratch buffer
/// grows to).
const READ_CHUNK: usize = 16 * 1024;

/// A `futures_io` stream as hyper's I/O: `hyper::rt::Read` and `hyper::rt::Write` for any
/// `AsyncRead + AsyncWrite + Unpin` (braid's [`TcpStream`](crate::TcpStream) and
/// [`UnixStream`](crate::UnixStream), or a reference to one).
///
/// hyper hands reads a buffer that may be uninitialised; so that no `unsafe` is needed, the
/// stream reads into a scratch buffer owned by the `HyperIo` (allocated at the first read, at
/// most 16 KiB) and the bytes are copied into hyper's. Writes go straight through; flushing
/// and shutting down are the stream's `poll_flush` and `poll_close`.
///
/// # Examples
///
/// Serving one HTTP/1 connection (needs hyper's `server` and `http1` features):
///
/// ```no_run
/// use braid_runtime::hyper::{drive, BraidTimer, HyperIo};
/// use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
///
/// braid_runtime::run(async {
///     let listener = braid_runtime::TcpListener::bind("127.0.0.1:8080").await?;
///     let (stream, _) = listener.accept().await?;
///     let service = service_fn(|_req: Request<Incoming>| async {
///         Ok::<_, braid_runtime::Error>(Response::new("hi".to_owned()))
///     });
///     let conn = http1::Builder::new()
///         .timer(BraidTimer)
///         .serve_connection(HyperIo::new(stream), service);
///     drive(conn).await
/// })
/// .unwrap();
/// ```
///
/// # Cancel safety
///
/// `poll_read` and `poll_write` are cancellation points of the task polling them, checked
/// before the stream is touched: a cancelled read has taken nothing from the stream and a
/// cancelled write has sent nothing. The cancel surfaces as an `io::Error` that
/// `Error::from` turns back into braid's Cancelled error.
pub struct HyperIo<T> {
    inner: T,
    /// Where reads land before they are copied into hyper's (maybe uninitialised) buffer.
    scratch: Vec<u8>,
}

impl<T> HyperIo<T> {
    /// Wraps `inner`.
    ///
    /// ```
    /// use braid_runtime::hyper::HyperIo;
    /// braid_runtime::run(async {
    ///     let listener = braid_runtime::TcpListener::bind("127.0.0.1:0").await?;
    ///     let io = HyperIo::new(braid_runtime::TcpStream::connect(listener.local_addr()?).await?);
    ///     assert_eq!(io.get_ref().peer_addr()?, listener.local_addr()?);
    ///     Ok(())
    /// })
    /// .unwrap();
    /// ```
    pub fn new(inner: T) -> HyperIo<T> {
        HyperIo {
            inner,
            scratch: Vec::new(),
        }
    }

    /// The wrapped stream.
    ///
    /// ```
    /// let io = braid_runtime::hyper::HyperIo::new(std::io::empty());
    /// let _: &std::io::Empty = io.get_ref();
    /// ```
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The wrapped stream, mutably. Reading from it directly is fine: `HyperIo` buffers
    /// nothing between calls.
    ///
    /// ```
    /// let mut io = braid_runtime::hyper::HyperIo::new(Vec::<u8>::new());
    /// io.get_mut().push(1);
    /// assert_eq!(io.get_ref(), &[1]);
    /// ```
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// Unwraps the stream (after hyper's `Connection::into_parts`, say).
    ///
    /// ```
    /// let io = braid_runtime::hyper::HyperIo::new(vec![1u8, 2]);
    /// assert_eq!(io.into_inner(), [1, 2]);
    /// ```
    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: fmt::Debug> fmt::Debug for HyperIo<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HyperIo")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The cancellation point of `HyperIo`'s read and write: the running task's pending cancel,
/// once, as an `io::Error` carrying braid's Cancelled error.
fn cancel_point() -> io::Result<()> {
    match context::cancel_point() {
        Some(cancel) => Err(cancel.into_io_error()),
        None => Ok(()),
    }
}

impl<T: AsyncRead + Unpin> ::hyper::rt::Read for HyperIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ::hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        cancel_point()?;
        let this = self.get_mut();
        let want = buf.remaining().min(READ_CHUNK);
        if want == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.scratch.len() < want {
            this.scratch.resize(want, 0);
        }
        let scratch = &mut this.scratch[..want];
        match Pin::new(&mut this.inner).poll_read(cx, scratch) {
            Poll::Ready(Ok(n)) => {
                buf.put_slice(&scratch[..n]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> ::hyper::rt::Write for HyperIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        cancel_point()?;
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

/// hyper's `rt::Executor` on braid: each future hyper hands over (an HTTP/2 stream, a
/// connection's background work) becomes a braid task in the runtime's shared pool, detached
/// (its output is dropped; a panic in it goes where a detached task's panic goes).
///
/// [`BraidExecutor::new`] spawns on the loop running on the calling thread, so hyper must call
/// it from a braid task or callback; [`BraidExecutor::on`] is bound to a loop's runtime and
/// may be called from any thread. A future handed over after the runtime has shut down is
/// dropped unrun.
///
/// # Examples
///
/// ```
/// use braid_runtime::hyper::BraidExecutor;
/// use hyper::rt::Executor;
///
/// braid_runtime::run(async {
///     let ran = braid_runtime::create_future::<&str>();
///     let done = ran.clone();
///     BraidExecutor::new().execute(async move {
///         let _ = done.set_result("ran on braid");
///     });
///     assert_eq!(ran.await?, "ran on braid");
///     Ok(())
/// })
/// .unwrap();
/// ```
#[derive(Clone, Default)]
pub struct BraidExecutor {
    lp: Option<EventLoop>,
}

impl BraidExecutor {
    /// An executor that spawns on the loop running on the calling thread.
    ///
    /// ```
    /// let exec = braid_runtime::hyper::BraidExecutor::new();
    /// # drop(exec);
    /// ```
    pub fn new() -> BraidExecutor {
        BraidExecutor { lp: None }
    }

    /// An executor that spawns on `lp`'s runtime, from any thread.
    ///
    /// ```
    /// use braid_runtime::hyper::BraidExecutor;
    /// use hyper::rt::Executor;
    ///
    /// let rt = braid_runtime::Runtime::builder().workers(1).build().unwrap();
    /// let exec = BraidExecutor::on(rt.event_loop());
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// std::thread::spawn(move || exec.execute(async move { tx.send(7).unwrap() }));
    /// assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(20)).unwrap(), 7);
    /// ```
    pub fn on(lp: EventLoop) -> BraidExecutor {
        BraidExecutor { lp: Some(lp) }
    }
}

impl From<EventLoop> for BraidExecutor {
    /// As [`BraidExecutor::on`].
    ///
    /// ```
    /// let rt = braid_runtime::Runtime::builder().workers(1).build().unwrap();
    /// let exec = braid_runtime::hyper::BraidExecutor::from(rt.event_loop());
    /// # drop(exec);
    /// ```
    fn from(lp: EventLoop) -> BraidExecutor {
        BraidExecutor::on(lp)
    }
}

impl fmt::Debug for BraidExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BraidExecutor")
            .field("bound_to_loop", &self.lp.as_ref().map(EventLoop::id))
            .finish()
    }
}

impl<F> ::hyper::rt::Executor<F> for BraidExecutor
where
    F: Future + Send + 'static,
{
    /// Spawns `fut` as a detached braid task.
    ///
    /// # Panics
    ///
    /// For an executor made by [`BraidExecutor::new`], when called on a thread that runs no
    /// braid event loop (hyper's `execute` cannot return an error; use
    /// [`BraidExecutor::on`] there).
    #[track_caller]
    fn execute(&self, fut: F) {
        let task = async move {
            fut.await;
            Ok(())
        };
        match &self.lp {
            // Closed: the runtime is shutting down; the future is dropped unrun, as hyper's
            // own executors drop work they cannot take.
            Some(lp) => drop(lp.spawn(task)),
            None => match crate::try_get_running_loop() {
                Some(lp) => drop(lp.spawn(task)),
                None => panic!(
                    "BraidExecutor::execute needs a running braid event loop on this thread \
                     (use BraidExecutor::on(event_loop) to spawn from other threads)"
                ),
            },
        }
    }
}

/// hyper's `rt::Timer` on braid's timers. Its sleeps are [`BraidSleep`]s.
///
/// The sleeps must be polled inside a braid event loop (hyper polls them from the connection
/// future, which runs as a braid task); they are not cancellation points (see the
/// [module docs](self#cancellation)).
///
/// # Examples
///
/// ```
/// use braid_runtime::hyper::BraidTimer;
/// use hyper::rt::Timer;
/// use std::time::{Duration, Instant};
///
/// braid_runtime::run(async {
///     let start = Instant::now();
///     BraidTimer.sleep(Duration::from_millis(20)).await;
///     assert!(start.elapsed() >= Duration::from_millis(20));
///     Ok(())
/// })
/// .unwrap();
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct BraidTimer;

impl ::hyper::rt::Timer for BraidTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn ::hyper::rt::Sleep>> {
        Box::pin(BraidSleep::new(crate::sleep(duration)))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn ::hyper::rt::Sleep>> {
        Box::pin(BraidSleep::new(crate::sleep_until(deadline)))
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    /// Moves the sleep's deadline when it is a [`BraidSleep`] (keeping its allocation);
    /// replaces it with a new one otherwise.
    fn reset(&self, sleep: &mut Pin<Box<dyn ::hyper::rt::Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<BraidSleep>() {
            Some(mine) => mine.get_mut().reset(new_deadline),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

/// The sleep of [`BraidTimer`]: completes at its deadline (never before), on braid's timers.
///
/// Unlike [`Sleep`], whose output is a `Result`, it completes with `()`, as hyper requires,
/// and is no cancellation point: a cancel of the task polling it stays pending for the
/// task's next braid await (hyper's I/O).
///
/// # Examples
///
/// ```
/// use braid_runtime::hyper::BraidSleep;
/// use std::time::{Duration, Instant};
///
/// braid_runtime::run(async {
///     let start = Instant::now();
///     let mut sleep = BraidSleep::until(start + Duration::from_secs(3600));
///     sleep.reset(start + Duration::from_millis(10)); // sooner after all
///     sleep.await;
///     assert!(start.elapsed() >= Duration::from_millis(10));
///     Ok(())
/// })
/// .unwrap();
/// ```
///
/// # Panics
///
/// When first polled outside a braid event loop.
#[must_use = "futures do nothing unless you `.await` them"]
pub struct BraidSleep {
    inner: Sleep,
}

impl BraidSleep {
    fn new(inner: Sleep) -> BraidSleep {
        BraidSleep { inner }
    }

    /// A sleep until `deadline` (a deadline in the past completes after one yield).
    ///
    /// ```
    /// use std::time::Instant;
    /// let s = braid_runtime::hyper::BraidSleep::until(Instant::now());
    /// assert!(s.deadline() <= Instant::now());
    /// ```
    pub fn until(deadline: Instant) -> BraidSleep {
        BraidSleep::new(crate::sleep_until(deadline))
    }

    /// The instant it completes at.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// let s = braid_runtime::hyper::BraidSleep::until(Instant::now() + Duration::from_secs(1));
    /// assert!(s.deadline() > Instant::now());
    /// ```
    pub fn deadline(&self) -> Instant {
        self.inner.deadline()
    }

    /// Moves the deadline to `deadline`, sooner or later, even after the sleep completed (it
    /// then runs again). A waker registered by an earlier poll is not kept: poll it again.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// let mut s = braid_runtime::hyper::BraidSleep::until(Instant::now());
    /// let later = Instant::now() + Duration::from_secs(5);
    /// s.reset(later);
    /// assert_eq!(s.deadline(), later);
    /// ```
    pub fn reset(&mut self, deadline: Instant) {
        // Dropping the old sleep takes its entry out of the runtime's timer heap.
        self.inner = crate::sleep_until(deadline);
    }
}

impl Future for BraidSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // The timer alone: the task's cancel is left for its next real await point.
        match self.get_mut().inner.poll_timer(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(()),
            Poll::Ready(Err(e)) => panic!("BraidSleep: {e} (hyper's timer runs on braid)"),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl ::hyper::rt::Sleep for BraidSleep {}

impl fmt::Debug for BraidSleep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BraidSleep")
            .field("deadline", &self.inner.deadline())
            .finish()
    }
}

/// Awaits a hyper connection (or any future of a `hyper::Result`) as a braid await: the
/// outcome is braid's `Result`, and a cancel of the running task that arrived while `conn`
/// ran, or was waiting for an await point as it began, ends it with braid's Cancelled error
/// (delivered once, with the request's message), even when hyper took the cancel for an I/O
/// error and swallowed it (hyper reports a failed read on an idle HTTP/1 connection as a
/// clean close). Other failures are mapped as [`into_error`] maps them.
///
/// Run each connection's future through it in its own task: cancelling that task then ends
/// the connection (its socket is closed) and the task ends cancelled.
///
/// # Examples
///
/// ```no_run
/// use braid_runtime::hyper::{drive, BraidTimer, HyperIo};
/// use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
///
/// // A server that runs until the process is killed.
/// braid_runtime::run::<_, ()>(async {
///     let listener = braid_runtime::TcpListener::bind("127.0.0.1:8080").await?;
///     loop {
///         let (stream, _) = listener.accept().await?;
///         braid_runtime::create_task(drive(
///             http1::Builder::new().timer(BraidTimer).serve_connection(
///                 HyperIo::new(stream),
///                 service_fn(|_req: Request<Incoming>| async {
///                     Ok::<_, braid_runtime::Error>(Response::new("hi".to_owned()))
///                 }),
///             ),
///         ));
///     }
/// })
/// .unwrap();
/// ```
///
/// # Errors
///
/// Cancelled, if the running task was cancelled meanwhile; else as [`into_error`].
pub fn drive<F, T>(conn: F) -> Drive<F>
where
    F: Future<Output = ::hyper::Result<T>>,
{
    Drive {
        conn: Some(Box::pin(conn)),
        requests_before: None,
    }
}

/// The future of [`drive`]. It is `Unpin`, as every braid future is, whatever the connection
/// future is: that one is boxed (one allocation per connection).
///
/// # Examples
///
/// ```
/// use braid_runtime::hyper::drive;
///
/// braid_runtime::run(async {
///     // Any future of a `hyper::Result` will do; an `async` block is not `Unpin`.
///     let driven = drive(async { Ok::<_, hyper::Error>("served") });
///     let _: &dyn Unpin = &driven;
///     assert_eq!(driven.await?, "served");
///     Ok(())
/// })
/// .unwrap();
/// ```
///
/// # Cancel safety
///
/// Dropping it drops the connection (its socket closes).
#[must_use = "futures do nothing unless you `.await` them"]
pub struct Drive<F> {
    /// `None` once it has finished.
    conn: Option<Pin<Box<F>>>,
    /// The running task's cancel requests that had reached it when this was first polled:
    /// one still waiting for an await point is not counted, since `conn` may be where it
    /// is delivered (and swallowed).
    requests_before: Option<usize>,
}

impl<F, T> Future for Drive<F>
where
    F: Future<Output = ::hyper::Result<T>>,
{
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(Err(crate::combinators::polled_after_completion("drive")));
        };
        let requests_before = *this
            .requests_before
            .get_or_insert_with(delivered_cancel_requests);
        let Poll::Ready(outcome) = conn.as_mut().poll(cx) else {
            return Poll::Pending;
        };
        this.conn = None;
        if cancel_requests() > requests_before {
            // Delivered here if `conn` did not take it: else the task's next await point
            // would have it a second time.
            // Not pending any more if `conn` swallowed it: the latest request's message.
            let cancel = context::take_cancel()
                .or_else(outstanding_cancel)
                .unwrap_or_else(|| Error::cancelled(None));
            return Poll::Ready(Err(cancel));
        }
        Poll::Ready(outcome.map_err(classify))
    }
}

impl<F> fmt::Debug for Drive<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drive")
            .field("finished", &self.conn.is_none())
            .finish()
    }
}

/// A `hyper::Error` as braid's [`Error`], in the task that drove the connection:
///
/// - braid's Cancelled error, with the latest request's message, if that task has a cancel
///   request outstanding (its [`cancelling()`](crate::TaskRef::cancelling) is not 0): the
///   connection failed because the task was cancelled, whether the cancel reached hyper's
///   I/O ([`HyperIo`]) or a braid future the service awaited. Returning it ends the task
///   cancelled, as asyncio would;
/// - kind `Timeout` for one of hyper's timeouts (`header_read_timeout`, …);
/// - kind `Io` when an I/O error caused it, `Other` otherwise;
///
/// each with the `hyper::Error` as its source. A connection can also swallow a cancel and end
/// with `Ok`; [`drive`] covers that case too.
///
/// # Examples
///
/// ```
/// use braid_runtime::hyper::into_error;
/// use braid_runtime::ErrorKind;
///
/// braid_runtime::run(async {
///     // A client connection whose server hangs up before answering.
///     let listener = braid_runtime::TcpListener::bind("127.0.0.1:0").await?;
///     let stream = braid_runtime::TcpStream::connect(listener.local_addr()?).await?;
///     drop(listener.accept().await?);
///     let io = braid_runtime::hyper::HyperIo::new(stream);
///     let (mut send, conn) =
///         hyper::client::conn::http1::handshake::<_, String>(io).await.map_err(into_error)?;
///     let conn = braid_runtime::create_task(async move { conn.await.map_err(into_error) });
///     let req = hyper::Request::new(String::new());
///     let err = into_error(send.send_request(req).await.unwrap_err());
///     assert!(matches!(err.kind(), ErrorKind::Io | ErrorKind::Other));
///     let _ = conn.await;
///     Ok(())
/// })
/// .unwrap();
/// ```
pub fn into_error(error: ::hyper::Error) -> Error {
    if let Some(cancel) = outstanding_cancel() {
        return cancel;
    }
    classify(error)
}

/// The running task's Cancelled error with its latest request's message, if a request is
/// outstanding.
fn outstanding_cancel() -> Option<Error> {
    context::with_current_header(|h| h.cancel.outstanding_cancel()).flatten()
}

/// The running task's outstanding cancel requests (0 outside a task).
fn cancel_requests() -> usize {
    context::with_current_header(|h| h.cancel.cancelling()).unwrap_or(0)
}

/// The running task's cancel requests less one still waiting for an await point.
fn delivered_cancel_requests() -> usize {
    context::with_current_header(|h| h.cancel.cancelling_delivered()).unwrap_or(0)
}

/// A hyper error that is no cancellation, by kind.
fn classify(error: ::hyper::Error) -> Error {
    let kind = if error.is_timeout() {
        ErrorKind::Timeout
    } else if caused_by_io(&error) {
        ErrorKind::Io
    } else {
        ErrorKind::Other
    };
    Error::with_source(kind, error)
}

/// True if an `io::Error` is in `error`'s chain of sources.
fn caused_by_io(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<io::Error>() {
            return true;
        }
        next = e.source();
    }
    false
}
