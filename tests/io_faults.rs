//! Network faults on braid's sockets and streams (API.md "Streams and sockets", issue 5): each
//! gives a clear `Error` of kind `Io` whose `io::Error` is reachable with `downcast_ref`, and
//! never a hang or a panic. A peer that resets the connection (`SO_LINGER` 0, then close):
//! reads fail with `ConnectionReset`, writes and `drain` fail (also a `drain` already waiting);
//! a peer that half-closes: the reader gets EOF / `IncompleteRead`, the writer still works; a
//! refused connection (TCP, a connected UDP socket, a stale Unix socket path); an address in
//! use (TCP, `start_server`, UDP, Unix); a server that aborts its open connections; and a host
//! name that does not resolve.
//!
//! Every wait is bounded (`common::WAIT`, or 20 s for name resolution), so a fault that hangs
//! fails its test instead.

use braid::{ErrorKind, IncompleteRead, Result, StreamReader, StreamWriter};
use braid::{TcpListener, TcpStream, UdpSocket, UnixListener, UnixStream};
use std::io::{ErrorKind as IoKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

mod common;
use common::*;

/// The runtime sizes the scenarios run on.
const LOOPS: [usize; 2] = [1, 2];

/// The `io::ErrorKind` of `e`, which must be a braid error of kind `Io` carrying an
/// `io::Error`.
fn io_kind(e: &braid::Error) -> IoKind {
    assert_eq!(e.kind(), ErrorKind::Io, "{e:?}");
    e.downcast_ref::<std::io::Error>()
        .unwrap_or_else(|| panic!("no io::Error reachable in {e:?}"))
        .kind()
}

/// Asserts that `outcome` failed with one of the I/O error kinds in `kinds`.
fn assert_io<T: std::fmt::Debug>(outcome: &Result<T>, kinds: &[IoKind]) {
    match outcome {
        Err(e) => {
            let kind = io_kind(e);
            assert!(
                kinds.contains(&kind),
                "expected one of {kinds:?}, got {e:?}"
            );
        }
        Ok(v) => panic!("expected an I/O error of kind {kinds:?}, got Ok({v:?})"),
    }
}

/// What a write to a reset connection fails with (Linux reports the reset once, then a
/// broken pipe).
const RESET_WRITE: [IoKind; 2] = [IoKind::ConnectionReset, IoKind::BrokenPipe];

/// Closes `stream` with `SO_LINGER` 0: the kernel sends a reset instead of a FIN.
fn reset(stream: std::net::TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `size_of::<linger>()` bytes from a pointer to a live `linger`;
    // the descriptor is owned by `stream`, which is open.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    drop(stream);
}

/// A loopback port nobody listens on (bound, then released).
fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe");
    probe.local_addr().expect("probe address").port()
}

/// A braid stream pair connected to a plain std socket (the peer the test controls).
async fn streams_to_std_peer() -> Result<(StreamReader, StreamWriter, std::net::TcpStream)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let (r, w) = braid::open_connection(listener.local_addr()?).await?;
    let (peer, _) = listener.accept()?;
    Ok((r, w, peer))
}

/// Socket level: a task waiting in `read` when the peer resets wakes with `ConnectionReset`;
/// a write then fails (reset or broken pipe).
#[test]
fn a_reset_fails_a_waiting_tcp_read_and_later_writes() {
    on_loops(&LOOPS, || async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let peer = std::net::TcpStream::connect(listener.local_addr()?)?;
        let (ours, _) = braid::wait_for(listener.accept(), Some(WAIT)).await?;
        let ours = Arc::new(ours);
        let reading = ours.clone();
        let reader = queued(async move {
            let mut buf = [0; 64];
            reading.read(&mut buf).await
        })
        .await?;
        reset(peer);
        assert_io(&settle(reader).await, &[IoKind::ConnectionReset]);
        let write = braid::wait_for(ours.write_all(&[7; 1024]), Some(WAIT)).await;
        assert_io(&write, &RESET_WRITE);
        Ok(())
    });
}

/// Streams: a `readline` waiting when the peer resets fails with `ConnectionReset`, and so
/// does every later read (the error is kept, as asyncio's `set_exception`); `write` and
/// `drain` fail; `wait_closed` reports the failure.
#[test]
fn a_reset_fails_stream_reads_writes_and_drain() {
    on_loops(&LOOPS, || async {
        let (r, w, peer) = streams_to_std_peer().await?;
        let r = Arc::new(r);
        let reading = r.clone();
        let line = queued(async move { reading.readline().await }).await?;
        reset(peer);
        assert_io(&settle(line).await, &[IoKind::ConnectionReset]);
        assert_io(
            &braid::wait_for(r.read(10), Some(WAIT)).await,
            &[IoKind::ConnectionReset],
        );
        assert_io(
            &braid::wait_for(r.readexactly(1), Some(WAIT)).await,
            &[IoKind::ConnectionReset],
        );

        // The write side: the first write may be taken by the kernel before it learns of
        // the reset; within a few, write or drain fails, and then both keep failing.
        let mut failed = None;
        for _ in 0..16 {
            let attempt = match w.write(&[1; 4096]) {
                Ok(()) => braid::wait_for(w.drain(), Some(WAIT)).await,
                Err(e) => Err(e),
            };
            if let Err(e) = attempt {
                failed = Some(e);
                break;
            }
        }
        let failed = failed.expect("writes to a reset connection kept succeeding");
        assert_io(&Err::<(), _>(failed), &RESET_WRITE);
        assert_io(&w.write(b"again"), &RESET_WRITE);
        assert_io(&braid::wait_for(w.drain(), Some(WAIT)).await, &RESET_WRITE);
        assert_io(
            &braid::wait_for(w.wait_closed(), Some(WAIT)).await,
            &RESET_WRITE,
        );
        Ok(())
    });
}

/// A reset that the writer sees first still fails the reader: asyncio's transport hands the
/// error to `connection_lost`, which sets it on the reader, so a reset never reads as a clean
/// end of stream.
#[test]
fn a_reset_seen_by_the_writer_first_still_fails_the_reader() {
    on_loops(&LOOPS, || async {
        let (r, w, peer) = streams_to_std_peer().await?;
        reset(peer);
        // Write until the write side reports the reset (the kernel may take a first write).
        let mut failed = None;
        for _ in 0..16 {
            let attempt = match w.write(&[1; 4096]) {
                Ok(()) => braid::wait_for(w.drain(), Some(WAIT)).await,
                Err(e) => Err(e),
            };
            if let Err(e) = attempt {
                failed = Some(e);
                break;
            }
        }
        assert_io(
            &Err::<(), _>(failed.expect("writes to a reset connection kept succeeding")),
            &RESET_WRITE,
        );
        let line = braid::wait_for(r.readline(), Some(WAIT)).await;
        assert_io(&line, &RESET_WRITE);
        Ok(())
    });
}

/// A `drain` already waiting (the buffer over its high-water mark, the peer not reading)
/// fails when the peer resets, instead of waiting for ever.
#[test]
fn a_reset_fails_a_waiting_drain() {
    on_loops(&LOOPS, || async {
        let (_r, w, peer) = streams_to_std_peer().await?;
        w.set_write_buffer_limits(4096);
        let chunk = vec![0x5a; 64 * 1024];
        let mut total = 0;
        while w.buffered() <= 4096 {
            w.write(&chunk)?;
            total += chunk.len();
            assert!(
                total < 256 << 20,
                "256 MiB went out while the peer did not read"
            );
        }
        let w = Arc::new(w);
        let draining = w.clone();
        let drain = queued(async move { draining.drain().await }).await?;
        reset(peer);
        assert_io(&settle(drain).await, &RESET_WRITE);
        assert_io(&w.write(b"more"), &RESET_WRITE);
        assert_eq!(
            w.buffered(),
            0,
            "the unsent data was dropped with the connection"
        );
        Ok(())
    });
}

/// A peer that half-closes (`shutdown(Write)`): `readexactly` gets `IncompleteRead` (kind
/// `Io`) with the partial data, `readuntil` too, `readline` the partial line and then EOF; the
/// writer still reaches the peer.
#[test]
fn a_half_closed_peer_gives_eof_and_still_reads() {
    on_loops(&LOOPS, || async {
        let (r, w, mut peer) = streams_to_std_peer().await?;
        peer.write_all(b"partial")?;
        peer.shutdown(Shutdown::Write)?;
        let e = braid::wait_for(r.readexactly(100), Some(WAIT))
            .await
            .expect_err("EOF after 7 of 100 bytes");
        assert_eq!(e.kind(), ErrorKind::Io, "{e:?}");
        let inc = e.downcast_ref::<IncompleteRead>().expect("IncompleteRead");
        assert_eq!(
            (inc.partial.as_slice(), inc.expected),
            (&b"partial"[..], Some(100))
        );
        assert!(r.at_eof());
        assert_eq!(braid::wait_for(r.readline(), Some(WAIT)).await?, b"");
        let e = braid::wait_for(r.readuntil(b"\n"), Some(WAIT))
            .await
            .expect_err("EOF without a separator");
        let inc = e.downcast_ref::<IncompleteRead>().expect("IncompleteRead");
        assert_eq!((inc.partial.len(), inc.expected), (0, None));

        // The other direction is open.
        w.write(b"still writing")?;
        braid::wait_for(w.drain(), Some(WAIT)).await?;
        w.write_eof()?;
        let got = braid::to_thread(move || {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).map(|_| got)
        })
        .await??;
        assert_eq!(got, b"still writing");
        Ok(())
    });
}

/// A half-closed peer at the stream level with `readline`: the partial line at EOF, then
/// empty lines.
#[test]
fn readline_from_a_half_closed_peer() {
    on_loops(&LOOPS, || async {
        let (r, _w, mut peer) = streams_to_std_peer().await?;
        peer.write_all(b"one\ntwo")?;
        peer.shutdown(Shutdown::Write)?;
        assert_eq!(braid::wait_for(r.readline(), Some(WAIT)).await?, b"one\n");
        assert_eq!(braid::wait_for(r.readline(), Some(WAIT)).await?, b"two");
        assert_eq!(braid::wait_for(r.readline(), Some(WAIT)).await?, b"");
        assert!(r.at_eof());
        Ok(())
    });
}

/// Connecting to a port nobody listens on is refused (`TcpStream::connect` and
/// `open_connection`).
#[test]
fn a_refused_tcp_connection() {
    on_loops(&LOOPS, || async {
        let port = free_port();
        let outcome = braid::wait_for(TcpStream::connect(("127.0.0.1", port)), Some(WAIT)).await;
        assert_io(&outcome, &[IoKind::ConnectionRefused]);
        let outcome = braid::wait_for(
            braid::open_connection(format!("127.0.0.1:{port}")),
            Some(WAIT),
        )
        .await;
        assert_io(&outcome, &[IoKind::ConnectionRefused]);
        Ok(())
    });
}

/// A connected UDP socket sending to a port nobody listens on: the ICMP error comes back as
/// `ConnectionRefused` from `recv` (no rate limit applies on the loopback).
#[test]
fn a_refused_udp_datagram() {
    on_loops(&LOOPS, || async {
        let dead = UdpSocket::bind("127.0.0.1:0").await?;
        let dead_addr = dead.local_addr()?;
        drop(dead);
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        socket.connect(dead_addr).await?;
        socket.send(b"anyone?").await?;
        let mut buf = [0; 16];
        let outcome = braid::wait_for(socket.recv(&mut buf), Some(WAIT)).await;
        assert_io(&outcome, &[IoKind::ConnectionRefused]);
        Ok(())
    });
}

/// Unix sockets: a path that does not exist (`NotFound`), and a socket file nobody listens
/// on any more (`ConnectionRefused`).
#[test]
fn a_refused_unix_connection() {
    let dir = std::env::temp_dir().join(format!("braid-io-faults-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.clone();
    on_loops(&[1], move || {
        let dir = d.clone();
        async move {
            let missing = dir.join("missing.sock");
            let outcome = braid::wait_for(UnixStream::connect(missing), Some(WAIT)).await;
            assert_io(&outcome, &[IoKind::NotFound]);

            let stale = dir.join("stale.sock");
            drop(UnixListener::bind(&stale)?);
            assert!(stale.exists(), "the socket file outlives its listener");
            let outcome = braid::wait_for(UnixStream::connect(stale.clone()), Some(WAIT)).await;
            assert_io(&outcome, &[IoKind::ConnectionRefused]);
            let outcome = braid::wait_for(braid::open_unix_connection(stale), Some(WAIT)).await;
            assert_io(&outcome, &[IoKind::ConnectionRefused]);
            Ok(())
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Binding an address that is in use: a second TCP listener, `start_server` on a listener's
/// port, a second UDP socket, a Unix listener on an existing path: `AddrInUse`.
#[test]
fn an_address_in_use() {
    let dir = std::env::temp_dir().join(format!("braid-io-faults-inuse-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.clone();
    on_loops(&[1], move || {
        let dir = d.clone();
        async move {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            assert_io(&TcpListener::bind(addr).await, &[IoKind::AddrInUse]);
            let server = braid::start_server(|_r, _w| async { Ok(()) }, addr).await;
            assert_io(&server.map(|_| ()), &[IoKind::AddrInUse]);

            // And a running server's port is taken for a listener.
            let server = braid::start_server(|_r, _w| async { Ok(()) }, "127.0.0.1:0").await?;
            assert_io(
                &TcpListener::bind(server.local_addr()).await,
                &[IoKind::AddrInUse],
            );
            server.close();

            let udp = UdpSocket::bind("127.0.0.1:0").await?;
            assert_io(
                &UdpSocket::bind(udp.local_addr()?).await,
                &[IoKind::AddrInUse],
            );

            let path = dir.join("taken.sock");
            let _unix = UnixListener::bind(&path)?;
            assert_io(&UnixListener::bind(&path), &[IoKind::AddrInUse]);
            Ok(())
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server closed while connections are open, then `abort_clients`: the handlers' reads and
/// writes fail with `ConnectionAborted`; the clients' pending reads end (EOF or a reset) and
/// their writes and drains end too: nothing hangs.
#[test]
fn a_server_aborting_its_open_connections() {
    on_loops(&LOOPS, || async {
        let outcomes = Arc::new(braid::Queue::new(0));
        let q = outcomes.clone();
        let server = braid::start_server(
            move |r: StreamReader, w: StreamWriter| {
                let q = q.clone();
                async move {
                    w.write(b"ready\n")?;
                    let read = r.readline().await;
                    let write = w.write(b"too late\n");
                    let drain = w.drain().await;
                    q.put_nowait((read, write, drain))?;
                    Ok(())
                }
            },
            "127.0.0.1:0",
        )
        .await?;
        let mut clients = Vec::new();
        for _ in 0..3 {
            let (r, w) = braid::open_connection(server.local_addr()).await?;
            assert_eq!(braid::wait_for(r.readline(), Some(WAIT)).await?, b"ready\n");
            let r = Arc::new(r);
            let reading = r.clone();
            let pending = queued(async move { reading.readline().await }).await?;
            clients.push((pending, w));
        }
        assert_eq!(server.connections(), 3);
        server.close();
        server.abort_clients();

        for _ in 0..3 {
            let (read, write, drain) = braid::wait_for(outcomes.get(), Some(WAIT)).await?;
            assert_io(&read, &[IoKind::ConnectionAborted]);
            assert_io(&write, &[IoKind::ConnectionAborted]);
            assert_io(&drain, &[IoKind::ConnectionAborted]);
        }
        for (pending, w) in clients {
            match settle(pending).await {
                Ok(line) => assert_eq!(line, b"", "EOF"),
                outcome => assert_io(&outcome, &[IoKind::ConnectionReset]),
            }
            let write = async {
                w.write(b"anyone?\n")?;
                w.drain().await
            };
            match braid::wait_for(write, Some(WAIT)).await {
                Ok(()) => {}
                outcome => assert_io(&outcome, &RESET_WRITE),
            }
        }
        braid::wait_for(server.wait_closed(), Some(WAIT)).await?;
        assert_eq!(server.connections(), 0);
        Ok(())
    });
}

/// A host name that does not resolve (`.invalid` is reserved never to): kind `Io` with the
/// resolver's `io::Error`, from `TcpStream::connect`, `open_connection`, `TcpListener::bind`
/// and `UdpSocket::bind`, within 20 s each (the lookup runs on the thread pool).
#[test]
fn an_unresolvable_host_name() {
    on_loops(&[2], || async {
        let limit = Some(Duration::from_secs(20));
        let host = "nonexistent.invalid:80";
        let outcomes = [
            braid::wait_for(TcpStream::connect(host), limit)
                .await
                .map(|_| ()),
            braid::wait_for(braid::open_connection(host), limit)
                .await
                .map(|_| ()),
            braid::wait_for(TcpListener::bind(host), limit)
                .await
                .map(|_| ()),
            braid::wait_for(UdpSocket::bind(host), limit)
                .await
                .map(|_| ()),
        ];
        for outcome in outcomes {
            let e = outcome.expect_err("nonexistent.invalid resolved");
            io_kind(&e);
        }
        Ok(())
    });
}

/// A UDP socket made in `rt`, registered with one of its loops by a receive that waited
/// (and timed out).
fn udp_socket_that_waited_once(rt: &braid::Runtime) -> UdpSocket {
    rt.run_until_complete(async {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let mut buf = [0u8; 16];
        let idle = Duration::from_millis(20);
        let waited = braid::wait_for(socket.recv_from(&mut buf), Some(idle)).await;
        assert_eq!(waited.unwrap_err().kind(), ErrorKind::Timeout);
        Ok(socket)
    })
    .unwrap()
}

/// A socket that waited on a loop of a runtime that has since shut down, used in another
/// runtime, moves to a loop of that one and gets what is already queued for it; used off the
/// loops, it fails as a socket that never waited does. It stayed in the dead loop's poller,
/// which nobody polls any more, so its next wait was for good.
#[test]
fn a_socket_outliving_the_runtime_it_waited_in_moves_or_fails() {
    let waited_once = || {
        let rt = runtime(1);
        let socket = udp_socket_that_waited_once(&rt);
        rt.shutdown(WAIT).unwrap();
        socket
    };
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();

    let socket = waited_once();
    sender
        .send_to(b"hello", socket.local_addr().unwrap())
        .unwrap();
    let got = braid::run(async move {
        let mut buf = [0u8; 16];
        let (n, _) = braid::wait_for(socket.recv_from(&mut buf), Some(WAIT)).await?;
        Ok(buf[..n].to_vec())
    })
    .unwrap();
    assert_eq!(got, b"hello");

    let socket = waited_once();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 16];
        let outcome = futures::executor::block_on(socket.recv_from(&mut buf));
        tx.send(outcome.map(|(n, _)| n))
    });
    let outcome = rx.recv_timeout(WAIT).expect("the receive settled");
    assert_eq!(outcome.unwrap_err().kind(), ErrorKind::InvalidState);
}

/// A task of another runtime already waiting on a socket registered with a loop of a runtime
/// that then shuts down is woken as that loop closes, moves the socket to its own runtime
/// and gets the datagram sent after the shutdown. It went on waiting on the dead loop's
/// poller, for good.
#[test]
fn a_receive_waiting_when_its_sockets_runtime_shuts_down_moves_with_its_task() {
    let first = runtime(1);
    let socket = udp_socket_that_waited_once(&first);
    let addr = socket.local_addr().unwrap();
    let second = runtime(1);
    let got = second
        .run_until_complete(async move {
            let waiting = Arc::new(braid::Event::new());
            let receiver = braid::create_task({
                let waiting = waiting.clone();
                async move {
                    waiting.set();
                    let mut buf = [0u8; 16];
                    let (n, _) = braid::wait_for(socket.recv_from(&mut buf), Some(WAIT)).await?;
                    Ok(buf[..n].to_vec())
                }
            });
            // The receiver runs on this host loop: once this wakes, its step is over and
            // it waits on the first runtime's loop.
            waiting.wait().await?;
            braid::to_thread(move || first.shutdown(WAIT)).await??;
            let sender = std::net::UdpSocket::bind("127.0.0.1:0")?;
            sender.send_to(b"hello", addr)?;
            receiver.await
        })
        .unwrap();
    assert_eq!(got, b"hello");
    second.shutdown(WAIT).unwrap();
}
