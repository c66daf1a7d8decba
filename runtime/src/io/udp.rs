//! UDP: `UdpSocket`, readiness-driven on the loops' pollers.

use super::readiness::Direction;
use super::{resolve, IoFuture, IoHandle, IoOp};
use braid_bridge::{Error, Result};
use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};

/// A UDP socket (asyncio's datagram endpoint). Every method takes `&self`; several tasks may
/// send and receive on one socket at once, and each waiting task is woken by readiness.
///
/// # Examples
///
/// ```
/// use braid_runtime::UdpSocket;
/// braid_runtime::run(async {
///     let a = UdpSocket::bind("127.0.0.1:0").await?;
///     let b = UdpSocket::bind("127.0.0.1:0").await?;
///     a.send_to(b"hi", b.local_addr()?).await?;
///     let mut buf = [0; 16];
///     let (n, from) = b.recv_from(&mut buf).await?;
///     assert_eq!((&buf[..n], from), (&b"hi"[..], a.local_addr()?));
///     Ok(())
/// })
/// .unwrap();
/// ```
pub struct UdpSocket {
    io: IoHandle<std::net::UdpSocket>,
}

impl UdpSocket {
    /// Binds a socket; a host name is resolved on the default thread pool.
    ///
    /// # Errors
    /// Kind `Io`: the address is in use or cannot be assigned.
    pub fn bind(addr: impl ToSocketAddrs + Send + 'static) -> IoFuture<'static, UdpSocket> {
        Box::pin(async move {
            let mut last = None;
            for addr in resolve(addr).await? {
                match std::net::UdpSocket::bind(addr) {
                    Ok(socket) => return UdpSocket::from_std(socket),
                    Err(e) => last = Some(e),
                }
            }
            Err(Error::from(
                last.expect("resolve returns at least one address"),
            ))
        })
    }

    /// Adopts a bound std socket, switching it to non-blocking mode.
    ///
    /// ```
    /// let std = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    /// assert!(braid_runtime::UdpSocket::from_std(std).is_ok());
    /// ```
    ///
    /// # Errors
    /// Kind `Io` if the mode cannot be set.
    pub fn from_std(socket: std::net::UdpSocket) -> Result<UdpSocket> {
        socket.set_nonblocking(true)?;
        Ok(UdpSocket {
            io: IoHandle::new(socket),
        })
    }

    /// Sets the default peer for `send` and `recv` (and filters what `recv` accepts).
    ///
    /// # Errors
    /// Kind `Io`, or the name did not resolve.
    pub fn connect(&self, addr: impl ToSocketAddrs + Send + 'static) -> IoFuture<'_, ()> {
        Box::pin(async move {
            let addrs = resolve(addr).await?;
            Ok(self.io.get_ref().connect(&addrs[..])?)
        })
    }

    /// Sends one datagram to `target`. A cancellation point.
    ///
    /// # Errors
    /// Cancelled; kind `Io` (a datagram too large: `InvalidInput` or the OS's `EMSGSIZE`).
    pub fn send_to<'a>(
        &'a self,
        buf: &'a [u8],
        target: SocketAddr,
    ) -> impl Future<Output = Result<usize>> + Send + Unpin + 'a {
        IoOp::new(
            &self.io,
            Direction::Write,
            move |s: &std::net::UdpSocket| s.send_to(buf, target),
        )
    }

    /// Receives one datagram (truncated to `buf`) and its sender. A cancellation point: a
    /// cancelled receive has taken no datagram.
    ///
    /// # Errors
    /// Cancelled; kind `Io` (`ConnectionRefused` after an ICMP error on a connected socket).
    pub fn recv_from<'a>(
        &'a self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = Result<(usize, SocketAddr)>> + Send + Unpin + 'a {
        IoOp::new(&self.io, Direction::Read, move |s: &std::net::UdpSocket| {
            s.recv_from(buf)
        })
    }

    /// Sends one datagram to the connected peer. A cancellation point.
    ///
    /// # Errors
    /// Cancelled; kind `Io` (`NotConnected` without `connect`).
    pub fn send<'a>(
        &'a self,
        buf: &'a [u8],
    ) -> impl Future<Output = Result<usize>> + Send + Unpin + 'a {
        IoOp::new(
            &self.io,
            Direction::Write,
            move |s: &std::net::UdpSocket| s.send(buf),
        )
    }

    /// Receives one datagram from the connected peer. A cancellation point.
    ///
    /// # Errors
    /// Cancelled; kind `Io`.
    pub fn recv<'a>(
        &'a self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = Result<usize>> + Send + Unpin + 'a {
        IoOp::new(&self.io, Direction::Read, move |s: &std::net::UdpSocket| {
            s.recv(buf)
        })
    }

    /// The local address.
    ///
    /// # Errors
    /// Kind `Io`.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.io.get_ref().local_addr()?)
    }

    /// The connected peer's address.
    ///
    /// # Errors
    /// Kind `Io` (`NotConnected`).
    pub fn peer_addr(&self) -> Result<SocketAddr> {
        Ok(self.io.get_ref().peer_addr()?)
    }

    /// Allows sending to broadcast addresses.
    ///
    /// # Errors
    /// Kind `Io`.
    pub fn set_broadcast(&self, on: bool) -> Result<()> {
        Ok(self.io.get_ref().set_broadcast(on)?)
    }
}

impl std::fmt::Debug for UdpSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpSocket")
            .field("local_addr", &self.io.get_ref().local_addr().ok())
            .finish()
    }
}
