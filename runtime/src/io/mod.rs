//! Sockets and streams on the loops' pollers.
//!
//! A socket is non-blocking and owned by an [`IoHandle`]; an operation tries its syscall and,
//! on `WouldBlock`, waits for the socket's readiness (see `readiness`), which the poller of the
//! loop it is registered with dispatches (see `driver`). The waiting task is woken wherever it
//! runs now. Every await is a cancellation point, checked *before* the syscall: a cancelled
//! read has consumed nothing from the socket, and a cancelled write has sent nothing.

/// The byte-stream methods `TcpStream` and `UnixStream` share (their sockets differ only in
/// type): `$std` is the std socket inside the `IoHandle` field `io`.
macro_rules! byte_stream_methods {
    ($std:ty) => {
        /// Reads what is available (at least one byte), or 0 at end of stream. An empty `buf`
        /// returns 0 at once, without waiting, as std's `read` does (so 0 means the end only
        /// for a buffer that has room). A cancellation point: a cancelled read has taken
        /// nothing from the socket.
        ///
        /// # Errors
        /// Cancelled; kind `Io` (a reset peer, say).
        pub fn read<'a>(
            &'a self,
            buf: &'a mut [u8],
        ) -> impl std::future::Future<Output = braid_bridge::Result<usize>> + Send + Unpin + 'a {
            super::StreamOp::new(
                &self.io,
                super::readiness::Direction::Read,
                buf.len(),
                move |s: &$std| std::io::Read::read(&mut &*s, buf),
            )
        }

        /// Fills `buf` completely. Bytes read before a cancellation or an error are lost with
        /// `buf`; use [`StreamReader::readexactly`](crate::StreamReader::readexactly) to keep
        /// them.
        ///
        /// # Errors
        /// Cancelled; kind `Io`, `UnexpectedEof` if the stream ends first.
        pub fn read_exact<'a>(&'a self, buf: &'a mut [u8]) -> super::IoFuture<'a, ()> {
            Box::pin(async move {
                let mut filled = 0;
                while filled < buf.len() {
                    let n = self.read(&mut buf[filled..]).await?;
                    if n == 0 {
                        return Err(super::io_error(
                            std::io::ErrorKind::UnexpectedEof,
                            "the stream ended before the buffer was filled",
                        ));
                    }
                    filled += n;
                }
                Ok(())
            })
        }

        /// Writes some of `buf` (at least one byte unless `buf` is empty: then 0, at once,
        /// whether or not the socket has room). A cancellation point: a cancelled write has
        /// sent nothing.
        ///
        /// # Errors
        /// Cancelled; kind `Io` (a reset peer: `BrokenPipe` or `ConnectionReset`).
        pub fn write<'a>(
            &'a self,
            buf: &'a [u8],
        ) -> impl std::future::Future<Output = braid_bridge::Result<usize>> + Send + Unpin + 'a {
            super::StreamOp::new(
                &self.io,
                super::readiness::Direction::Write,
                buf.len(),
                move |s: &$std| std::io::Write::write(&mut &*s, buf),
            )
        }

        /// Writes all of `buf`. If cancelled part-way, what was sent stays sent.
        ///
        /// # Errors
        /// Cancelled; kind `Io`.
        pub fn write_all<'a>(&'a self, buf: &'a [u8]) -> super::IoFuture<'a, ()> {
            Box::pin(async move {
                let mut sent = 0;
                while sent < buf.len() {
                    sent += self.write(&buf[sent..]).await?;
                }
                Ok(())
            })
        }

        /// Shuts down one or both directions; tasks waiting on the socket are woken to see it.
        ///
        /// # Errors
        /// Kind `Io` (`NotConnected`).
        pub fn shutdown(&self, how: std::net::Shutdown) -> braid_bridge::Result<()> {
            self.io.get_ref().shutdown(how)?;
            self.io.wake_all();
            Ok(())
        }

        pub(crate) fn poll_read_bytes(
            &self,
            cx: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.io.poll_stream(
                super::readiness::Direction::Read,
                cx,
                buf.len(),
                |s: &$std| std::io::Read::read(&mut &*s, &mut *buf),
            )
        }

        pub(crate) fn poll_write_bytes(
            &self,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.io.poll_stream(
                super::readiness::Direction::Write,
                cx,
                buf.len(),
                |s: &$std| std::io::Write::write(&mut &*s, buf),
            )
        }

        /// One non-blocking write, bypassing readiness (the stream writer's first attempt).
        pub(crate) fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
            std::io::Write::write(&mut self.io.get_ref(), buf)
        }

        pub(crate) fn wake_all(&self) {
            self.io.wake_all();
        }

        /// `shutdown` without waking the socket's waiters (the stream layer wakes them).
        pub(crate) fn shutdown_quiet(&self, how: std::net::Shutdown) -> std::io::Result<()> {
            self.io.get_ref().shutdown(how)
        }
    };
}

pub(crate) mod driver;
#[cfg(feature = "hyper")]
pub mod hyper;
pub(crate) mod readiness;
mod stream;
mod tcp;
mod udp;
mod unix;

pub use stream::{
    open_connection, open_unix_connection, start_server, Drain, IncompleteRead, LimitOverrun,
    ServeForever, Server, StreamRead, StreamReader, StreamWriter, WaitClosed, DEFAULT_LIMIT,
};
pub use tcp::{TcpListener, TcpStream};
pub use udp::UdpSocket;
pub use unix::{UnixListener, UnixStream};

use crate::context;
use braid_bridge::{Error, ErrorKind, Result};
use driver::IoSource;
use readiness::{poll_io, Direction};
use std::any::Any;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// A boxed future for operations done once per connection (connect, bind, serve), where one
/// allocation does not matter and an `async` body reads best. It is `Unpin`, as every braid
/// future is.
pub type IoFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// A non-blocking socket and its registration. Dropping it deregisters the socket from its
/// poller before the socket is closed (the order `polling` requires).
pub(crate) struct IoHandle<S: AsRawFd> {
    source: Arc<IoSource>,
    io: S,
}

impl<S: AsRawFd> IoHandle<S> {
    /// `io` must already be in non-blocking mode.
    pub(crate) fn new(io: S) -> IoHandle<S> {
        IoHandle {
            source: Arc::new(IoSource::new(io.as_raw_fd())),
            io,
        }
    }

    pub(crate) fn get_ref(&self) -> &S {
        &self.io
    }

    /// One readiness-driven syscall, without the cancellation point (for the `futures_io`
    /// traits and the stream layers, which check it themselves).
    pub(crate) fn poll_op<T>(
        &self,
        dir: Direction,
        cx: &mut Context<'_>,
        op: impl FnMut(&S) -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        let mut op = op;
        poll_io(
            &self.source.readiness,
            dir,
            cx,
            &self.source,
            || op(&self.io),
            |_| false,
        )
    }

    /// `poll_op` for a stream read or write of `len` bytes. A write of fewer bytes means the
    /// send buffer is full, and a read of fewer bytes that the receive buffer is empty, so the
    /// next operation waits for readiness instead of trying a syscall that would say
    /// `WouldBlock` (tokio does the same). A short read keeps its readiness when an end of
    /// stream may be waiting behind the data (see `readiness`).
    ///
    /// An empty buffer moves nothing and returns 0 at once, as std's `read` and `write` do:
    /// waiting for readiness first would hang on an idle (or full) socket, and a read that
    /// waited would then return 0, which reads as the end of the stream.
    pub(crate) fn poll_stream(
        &self,
        dir: Direction,
        cx: &mut Context<'_>,
        len: usize,
        op: impl FnMut(&S) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        if len == 0 {
            return Poll::Ready(Ok(0));
        }
        let mut op = op;
        poll_io(
            &self.source.readiness,
            dir,
            cx,
            &self.source,
            || op(&self.io),
            |&n| n > 0 && n < len,
        )
    }

    /// Wakes every task waiting on this socket (it was shut down from elsewhere).
    pub(crate) fn wake_all(&self) {
        self.source.readiness.wake_all();
    }
}

impl<S: AsRawFd> Drop for IoHandle<S> {
    fn drop(&mut self) {
        self.source.deregister();
    }
}

/// The cancellation point of a socket operation, as an `io::Error` for the `futures_io` traits
/// (`Error::from` turns it back into the Cancelled error).
pub(crate) fn cancel_point_io() -> io::Result<()> {
    match context::cancel_point() {
        Some(cancel) => Err(cancel.into_io_error()),
        None => Ok(()),
    }
}

/// One socket operation as a future: a cancellation point, then the syscall until it does not
/// block.
pub(crate) struct IoOp<'a, S: AsRawFd, F> {
    handle: &'a IoHandle<S>,
    dir: Direction,
    op: F,
}

impl<'a, S: AsRawFd, F> IoOp<'a, S, F> {
    pub(crate) fn new(handle: &'a IoHandle<S>, dir: Direction, op: F) -> Self {
        IoOp { handle, dir, op }
    }
}

/// A stream read or write of `len` bytes as a future (see `IoHandle::poll_stream`).
pub(crate) struct StreamOp<'a, S: AsRawFd, F> {
    handle: &'a IoHandle<S>,
    dir: Direction,
    len: usize,
    op: F,
}

impl<'a, S: AsRawFd, F> StreamOp<'a, S, F> {
    pub(crate) fn new(handle: &'a IoHandle<S>, dir: Direction, len: usize, op: F) -> Self {
        StreamOp {
            handle,
            dir,
            len,
            op,
        }
    }
}

impl<S: AsRawFd, F> Unpin for StreamOp<'_, S, F> {}

impl<S: AsRawFd, F: FnMut(&S) -> io::Result<usize>> Future for StreamOp<'_, S, F> {
    type Output = Result<usize>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<usize>> {
        if let Some(cancel) = context::cancel_point() {
            return Poll::Ready(Err(cancel));
        }
        let this = &mut *self;
        this.handle
            .poll_stream(this.dir, cx, this.len, &mut this.op)
            .map_err(Error::from)
    }
}

impl<S: AsRawFd, F> Unpin for IoOp<'_, S, F> {}

impl<S: AsRawFd, T, F: FnMut(&S) -> io::Result<T>> Future for IoOp<'_, S, F> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        if let Some(cancel) = context::cancel_point() {
            return Poll::Ready(Err(cancel));
        }
        let this = &mut *self;
        this.handle
            .poll_op(this.dir, cx, &mut this.op)
            .map_err(Error::from)
    }
}

/// Resolves `addr` as asyncio does: a literal address at once, a host name through
/// `getaddrinfo` on the default thread pool (it blocks).
pub(crate) async fn resolve(addr: impl ToSocketAddrs + Send + 'static) -> Result<Vec<SocketAddr>> {
    if let Some(literal) = literal_addr(&addr) {
        return Ok(vec![literal]);
    }
    let addrs =
        crate::to_thread(move || addr.to_socket_addrs().map(|it| it.collect::<Vec<_>>())).await??;
    if addrs.is_empty() {
        return Err(Error::with_source(
            ErrorKind::Io,
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "the address resolved to nothing",
            ),
        ));
    }
    Ok(addrs)
}

/// The address if `addr` is one already, or a string holding one (no lookup needed).
fn literal_addr(addr: &dyn Any) -> Option<SocketAddr> {
    if let Some(a) = addr.downcast_ref::<SocketAddr>() {
        return Some(*a);
    }
    if let Some(a) = addr.downcast_ref::<std::net::SocketAddrV4>() {
        return Some((*a).into());
    }
    if let Some(a) = addr.downcast_ref::<std::net::SocketAddrV6>() {
        return Some((*a).into());
    }
    if let Some(&(ip, port)) = addr.downcast_ref::<(std::net::IpAddr, u16)>() {
        return Some(SocketAddr::new(ip, port));
    }
    let text = addr
        .downcast_ref::<&'static str>()
        .copied()
        .or_else(|| addr.downcast_ref::<String>().map(String::as_str))?;
    text.parse().ok()
}

/// Whether a non-blocking connect has ended, once the socket is writable: `SO_ERROR` (the
/// socket's `take_error`) says how; a socket with no peer yet is still connecting.
pub(crate) fn connect_outcome(
    error: io::Result<Option<io::Error>>,
    peer: io::Result<()>,
) -> io::Result<()> {
    if let Some(e) = error? {
        return Err(e);
    }
    match peer {
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Err(io::ErrorKind::WouldBlock.into()),
        other => other,
    }
}

/// An I/O error as braid's `Error` (kind `Io`, the `io::Error` reachable by downcast).
pub(crate) fn io_error(kind: io::ErrorKind, message: &str) -> Error {
    Error::with_source(ErrorKind::Io, io::Error::new(kind, message.to_owned()))
}
