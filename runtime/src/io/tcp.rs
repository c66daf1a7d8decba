//! TCP: `TcpListener` and `TcpStream`, readiness-driven on the loops' pollers.

use super::readiness::Direction;
use super::{cancel_point_io, resolve, IoFuture, IoHandle, IoOp};
use braid_bridge::{Error, Result};
use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::task::{Context, Poll};

/// A TCP socket listening for connections (asyncio's server socket).
///
/// # Examples
///
/// ```
/// use braid_runtime::{TcpListener, TcpStream};
/// braid_runtime::run(async {
///     let listener = TcpListener::bind("127.0.0.1:0").await?;
///     let addr = listener.local_addr()?;
///     let client = TcpStream::connect(addr).await?;
///     let (server, peer) = listener.accept().await?;
///     assert_eq!(peer, client.local_addr()?);
///     client.write_all(b"ping").await?;
///     let mut buf = [0; 4];
///     server.read_exact(&mut buf).await?;
///     assert_eq!(&buf, b"ping");
///     Ok(())
/// })
/// .unwrap();
/// ```
pub struct TcpListener {
    io: IoHandle<std::net::TcpListener>,
}

impl TcpListener {
    /// Binds a listener (with `SO_REUSEADDR`, as asyncio does on Unix). A host name is resolved
    /// on the default thread pool; the first address that binds wins.
    ///
    /// # Errors
    /// Kind `Io`: the address is in use, cannot be assigned or did not resolve.
    pub fn bind(addr: impl ToSocketAddrs + Send + 'static) -> IoFuture<'static, TcpListener> {
        Box::pin(async move {
            let mut last = None;
            for addr in resolve(addr).await? {
                match std::net::TcpListener::bind(addr) {
                    Ok(listener) => return TcpListener::from_std(listener),
                    Err(e) => last = Some(e),
                }
            }
            Err(Error::from(
                last.expect("resolve returns at least one address"),
            ))
        })
    }

    /// Adopts a bound std listener, switching it to non-blocking mode.
    ///
    /// ```
    /// let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    /// let listener = braid_runtime::TcpListener::from_std(std).unwrap();
    /// assert!(listener.local_addr().is_ok());
    /// ```
    ///
    /// # Errors
    /// Kind `Io` if the mode cannot be set.
    pub fn from_std(listener: std::net::TcpListener) -> Result<TcpListener> {
        listener.set_nonblocking(true)?;
        Ok(TcpListener {
            io: IoHandle::new(listener),
        })
    }

    /// The address the listener is bound to.
    ///
    /// # Errors
    /// Kind `Io` if the OS cannot tell.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.io.get_ref().local_addr()?)
    }

    /// Waits for the next connection. A cancellation point.
    ///
    /// # Errors
    /// Cancelled; kind `Io` for the OS's refusals (too many open files, say), after which the
    /// listener is still usable.
    pub fn accept(
        &self,
    ) -> impl Future<Output = Result<(TcpStream, SocketAddr)>> + Send + Unpin + '_ {
        let io = IoOp::new(&self.io, Direction::Read, |l: &std::net::TcpListener| {
            l.accept()
        });
        AcceptStream(io)
    }

    /// `accept` for hand-written futures: no cancellation point.
    ///
    /// # Errors
    /// As [`accept`](Self::accept), without Cancelled.
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<Result<(TcpStream, SocketAddr)>> {
        match self
            .io
            .poll_op(Direction::Read, cx, std::net::TcpListener::accept)
        {
            Poll::Ready(Ok((stream, addr))) => Poll::Ready(adopt(stream).map(|s| (s, addr))),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
            Poll::Pending => Poll::Pending,
        }
    }
}

fn adopt(stream: std::net::TcpStream) -> Result<TcpStream> {
    stream.set_nonblocking(true)?;
    // asyncio sets TCP_NODELAY on every TCP connection: small writes go out at once.
    let _ = stream.set_nodelay(true);
    Ok(TcpStream {
        io: IoHandle::new(stream),
    })
}

struct AcceptStream<'a, F>(IoOp<'a, std::net::TcpListener, F>);

impl<F> Future for AcceptStream<'_, F>
where
    F: FnMut(&std::net::TcpListener) -> io::Result<(std::net::TcpStream, SocketAddr)> + Unpin,
{
    type Output = Result<(TcpStream, SocketAddr)>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.0).poll(cx) {
            Poll::Ready(Ok((stream, addr))) => Poll::Ready(adopt(stream).map(|s| (s, addr))),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl std::fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpListener")
            .field("local_addr", &self.io.get_ref().local_addr().ok())
            .finish()
    }
}

/// A TCP connection. Reads and writes take `&self`, so one task may read while another writes.
/// Implements `futures_io::AsyncRead` and `AsyncWrite` (for `TcpStream` and `&TcpStream`).
///
/// # Examples
///
/// ```
/// use braid_runtime::{TcpListener, TcpStream};
/// braid_runtime::run(async {
///     let listener = TcpListener::bind("127.0.0.1:0").await?;
///     let client = TcpStream::connect(listener.local_addr()?).await?;
///     let (server, _) = listener.accept().await?;
///     server.write_all(b"hello").await?;
///     server.shutdown(std::net::Shutdown::Write)?;
///     let mut got = Vec::new();
///     let mut buf = [0; 2];
///     loop {
///         let n = client.read(&mut buf).await?;
///         if n == 0 { break; }
///         got.extend_from_slice(&buf[..n]);
///     }
///     assert_eq!(got, b"hello");
///     Ok(())
/// })
/// .unwrap();
/// ```
pub struct TcpStream {
    io: IoHandle<std::net::TcpStream>,
}

impl TcpStream {
    byte_stream_methods!(std::net::TcpStream);

    /// Connects to `addr` without blocking a loop: a host name is resolved on the default
    /// thread pool, then each address is tried in turn. `TCP_NODELAY` is set, as asyncio does.
    ///
    /// # Errors
    /// Cancelled; kind `Io`: refused, unreachable, or the name did not resolve (the last
    /// address's error).
    pub fn connect(addr: impl ToSocketAddrs + Send + 'static) -> IoFuture<'static, TcpStream> {
        Box::pin(async move {
            let mut last = None;
            for addr in resolve(addr).await? {
                match connect_one(addr).await {
                    Ok(stream) => return Ok(stream),
                    Err(e) if e.is_cancelled() => return Err(e),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.expect("resolve returns at least one address"))
        })
    }

    /// Adopts a connected std stream, switching it to non-blocking mode.
    ///
    /// # Errors
    /// Kind `Io` if the mode cannot be set.
    pub fn from_std(stream: std::net::TcpStream) -> Result<TcpStream> {
        stream.set_nonblocking(true)?;
        Ok(TcpStream {
            io: IoHandle::new(stream),
        })
    }

    /// The remote address.
    ///
    /// # Errors
    /// Kind `Io` (`NotConnected`).
    pub fn peer_addr(&self) -> Result<SocketAddr> {
        Ok(self.io.get_ref().peer_addr()?)
    }

    /// The local address.
    ///
    /// # Errors
    /// Kind `Io` if the OS cannot tell.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.io.get_ref().local_addr()?)
    }

    /// Sets `TCP_NODELAY` (on by default, as in asyncio).
    ///
    /// # Errors
    /// Kind `Io`.
    pub fn set_nodelay(&self, nodelay: bool) -> Result<()> {
        Ok(self.io.get_ref().set_nodelay(nodelay)?)
    }

    /// Whether `TCP_NODELAY` is set.
    ///
    /// # Errors
    /// Kind `Io`.
    pub fn nodelay(&self) -> Result<bool> {
        Ok(self.io.get_ref().nodelay()?)
    }
}

async fn connect_one(addr: SocketAddr) -> Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    let started = socket.connect(&addr.into());
    let stream = TcpStream {
        io: IoHandle::new(std::net::TcpStream::from(socket)),
    };
    match started {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
            // Writable means the handshake ended, either way; SO_ERROR says which.
            IoOp::new(&stream.io, Direction::Write, |s: &std::net::TcpStream| {
                super::connect_outcome(s.take_error(), s.peer_addr().map(drop))
            })
            .await?;
        }
        Err(e) => return Err(e.into()),
    }
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

impl std::fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpStream")
            .field("local_addr", &self.io.get_ref().local_addr().ok())
            .field("peer_addr", &self.io.get_ref().peer_addr().ok())
            .finish()
    }
}

macro_rules! futures_io_impls {
    ($t:ty) => {
        impl futures_io::AsyncRead for $t {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut [u8],
            ) -> Poll<io::Result<usize>> {
                cancel_point_io()?;
                self.poll_read_bytes(cx, buf)
            }
        }

        impl futures_io::AsyncWrite for $t {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                cancel_point_io()?;
                self.poll_write_bytes(cx, buf)
            }

            fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                // Nothing is buffered in user space.
                Poll::Ready(Ok(()))
            }

            fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.shutdown(Shutdown::Write) {
                    Ok(()) => Poll::Ready(Ok(())),
                    Err(e) => Poll::Ready(Err(e.into_io_error())),
                }
            }
        }
    };
}

futures_io_impls!(TcpStream);
futures_io_impls!(&TcpStream);
pub(crate) use futures_io_impls;
