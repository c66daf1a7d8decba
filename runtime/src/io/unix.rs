//! Unix domain sockets: `UnixListener` and `UnixStream`.

use super::readiness::Direction;
use super::tcp::futures_io_impls;
use super::{cancel_point_io, IoFuture, IoHandle, IoOp};
use braid_bridge::Result;
use std::io;
use std::net::Shutdown;
use std::os::unix::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

/// A Unix domain socket listening for connections.
///
/// # Examples
///
/// ```
/// use braid_runtime::{UnixListener, UnixStream};
/// let dir = std::env::temp_dir().join(format!("braid-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("unix-listener.sock");
/// let _ = std::fs::remove_file(&path);
/// braid_runtime::run(async move {
///     let listener = UnixListener::bind(&path)?;
///     let client = UnixStream::connect(path.clone()).await?;
///     let (server, _) = listener.accept().await?;
///     client.write_all(b"ping").await?;
///     let mut buf = [0; 4];
///     server.read_exact(&mut buf).await?;
///     assert_eq!(&buf, b"ping");
///     Ok(())
/// })
/// .unwrap();
/// ```
pub struct UnixListener {
    io: IoHandle<std::os::unix::net::UnixListener>,
}

impl UnixListener {
    /// Binds a listener at `path` (which must not exist).
    ///
    /// # Errors
    /// Kind `Io` (`AddrInUse` if the path exists).
    pub fn bind(path: impl AsRef<Path>) -> Result<UnixListener> {
        UnixListener::from_std(std::os::unix::net::UnixListener::bind(path)?)
    }

    /// Adopts a std listener, switching it to non-blocking mode.
    ///
    /// # Errors
    /// Kind `Io` if the mode cannot be set.
    pub fn from_std(listener: std::os::unix::net::UnixListener) -> Result<UnixListener> {
        listener.set_nonblocking(true)?;
        Ok(UnixListener {
            io: IoHandle::new(listener),
        })
    }

    /// The address the listener is bound to.
    ///
    /// # Errors
    /// Kind `Io`.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.io.get_ref().local_addr()?)
    }

    /// Waits for the next connection. A cancellation point.
    ///
    /// # Errors
    /// Cancelled; kind `Io`.
    pub fn accept(&self) -> IoFuture<'_, (UnixStream, SocketAddr)> {
        Box::pin(async move {
            let (stream, addr) = IoOp::new(
                &self.io,
                Direction::Read,
                std::os::unix::net::UnixListener::accept,
            )
            .await?;
            Ok((UnixStream::from_std(stream)?, addr))
        })
    }
}

impl std::fmt::Debug for UnixListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnixListener")
            .field("local_addr", &self.io.get_ref().local_addr().ok())
            .finish()
    }
}

/// A Unix domain stream connection. Implements `futures_io::AsyncRead` and `AsyncWrite`.
///
/// # Examples
///
/// ```
/// braid_runtime::run(async {
///     let (a, b) = braid_runtime::UnixStream::pair()?;
///     a.write_all(b"hi").await?;
///     let mut buf = [0; 2];
///     b.read_exact(&mut buf).await?;
///     assert_eq!(&buf, b"hi");
///     Ok(())
/// })
/// .unwrap();
/// ```
pub struct UnixStream {
    io: IoHandle<std::os::unix::net::UnixStream>,
}

impl UnixStream {
    byte_stream_methods!(std::os::unix::net::UnixStream);

    /// Connects to the listener at `path` without blocking a loop.
    ///
    /// A `path` that starts with a NUL byte names a socket in Linux's abstract namespace,
    /// where every byte of the name counts.
    ///
    /// # Errors
    /// Cancelled; kind `Io` (`NotFound`, `ConnectionRefused`; `WouldBlock` when the
    /// listener's backlog is full, where a blocking connect would wait for room;
    /// `InvalidInput` for a path with a NUL byte that is not the first, as std refuses it).
    pub fn connect(path: impl Into<PathBuf>) -> IoFuture<'static, UnixStream> {
        let path = path.into();
        Box::pin(async move {
            use socket2::{Domain, Socket, Type};
            let addr = unix_addr(&path)?;
            let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
            socket.set_nonblocking(true)?;
            let started = socket.connect(&addr);
            let stream = UnixStream {
                io: IoHandle::new(std::os::unix::net::UnixStream::from(
                    std::os::fd::OwnedFd::from(socket),
                )),
            };
            match started {
                Ok(()) => Ok(stream),
                // Linux refuses a non-blocking Unix connect to a full backlog with EAGAIN:
                // nothing is in progress and no readiness edge will come, so waiting for one
                // would hang. The caller gets the error, as from tokio, and may retry.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(super::io_error(
                    io::ErrorKind::WouldBlock,
                    &format!(
                        "the listener at {} has a full backlog: try again later",
                        path.display()
                    ),
                )),
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
                    IoOp::new(
                        &stream.io,
                        Direction::Write,
                        |s: &std::os::unix::net::UnixStream| {
                            super::connect_outcome(s.take_error(), s.peer_addr().map(drop))
                        },
                    )
                    .await?;
                    Ok(stream)
                }
                Err(e) => Err(e.into()),
            }
        })
    }

    /// A connected pair (`socketpair`).
    ///
    /// # Errors
    /// Kind `Io`.
    pub fn pair() -> Result<(UnixStream, UnixStream)> {
        let (a, b) = std::os::unix::net::UnixStream::pair()?;
        Ok((UnixStream::from_std(a)?, UnixStream::from_std(b)?))
    }

    /// Adopts a std stream, switching it to non-blocking mode.
    ///
    /// # Errors
    /// Kind `Io` if the mode cannot be set.
    pub fn from_std(stream: std::os::unix::net::UnixStream) -> Result<UnixStream> {
        stream.set_nonblocking(true)?;
        Ok(UnixStream {
            io: IoHandle::new(stream),
        })
    }

    /// The local address.
    ///
    /// # Errors
    /// Kind `Io`.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.io.get_ref().local_addr()?)
    }

    /// The peer's address.
    ///
    /// # Errors
    /// Kind `Io`.
    pub fn peer_addr(&self) -> Result<SocketAddr> {
        Ok(self.io.get_ref().peer_addr()?)
    }
}

/// The socket address of `path`. The kernel reads a file system path up to its first NUL,
/// so `dir/a\0junk` would connect to `dir/a`: such a path is refused, as std refuses it. A
/// leading NUL is Linux's abstract namespace, whose names are taken whole, NULs and all.
fn unix_addr(path: &Path) -> Result<socket2::SockAddr> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    if bytes.first() != Some(&0) && bytes.contains(&0) {
        return Err(super::io_error(
            io::ErrorKind::InvalidInput,
            "paths must not contain interior null bytes",
        ));
    }
    Ok(socket2::SockAddr::unix(path)?)
}

impl std::fmt::Debug for UnixStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnixStream").finish_non_exhaustive()
    }
}

futures_io_impls!(UnixStream);
futures_io_impls!(&UnixStream);
