//! braid's sockets at the socket level (API.md "Streams and sockets", issue 5): `TcpListener`
//! and `TcpStream` (connect, accept, addresses, `TCP_NODELAY`), partial reads and writes of a
//! mebibyte in odd-sized pieces with every byte checked, end of stream after the peer's
//! `shutdown(Write)` while the other direction goes on, `futures_io::AsyncRead`/`AsyncWrite`
//! through `futures`' extension traits (and a cancellation surfacing through them), a
//! cancelled `read` that takes nothing from the socket (deterministically, and racing the
//! data's arrival), `UdpSocket` (`send_to`/`recv_from` both ways, connected `send`/`recv`, two
//! tasks waiting on one socket both woken), and `UnixListener`/`UnixStream` (connect, accept,
//! addresses, `pair`).
//!
//! The TCP and UDP scenarios run on a 1-loop and on a 2-loop runtime. Every wait is bounded
//! (`common::WAIT` or `settle`), so a lost wake-up fails a test instead of hanging it.

use braid::{ErrorKind, Result, TcpListener, TcpStream, UdpSocket, UnixListener, UnixStream};
use futures::{AsyncReadExt, AsyncWriteExt};
use std::collections::HashSet;
use std::io::Write;
use std::net::Shutdown;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::*;

/// The runtime sizes the socket scenarios run on.
const LOOPS: [usize; 2] = [1, 2];

/// A byte stream without a short period: a lost, duplicated or reordered piece of any length
/// changes what follows it.
fn pattern(i: usize) -> u8 {
    let mut x = i as u64 + 0x9e37_79b9;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 29;
    x as u8
}

/// A connected pair on the loopback: (the connecting side, the accepted side).
async fn tcp_pair() -> Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let client = TcpStream::connect(listener.local_addr()?).await?;
    let (server, _) = braid::wait_for(listener.accept(), Some(WAIT)).await?;
    Ok((client, server))
}

/// A fresh directory for this process's Unix sockets (removed by the caller).
fn socket_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("braid-io-tcp-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a socket directory");
    dir
}

/// Reads until end of stream with `read` into a buffer of `chunk` bytes.
async fn read_all(stream: &TcpStream, chunk: usize) -> Result<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = vec![0; chunk];
    loop {
        let n = braid::wait_for(stream.read(&mut buf), Some(WAIT)).await?;
        if n == 0 {
            return Ok(got);
        }
        got.extend_from_slice(&buf[..n]);
    }
}

/// The socket types can move between the loops' threads (tasks run anywhere).
#[test]
fn socket_types_are_send_sync() {
    fn check<T: Send + Sync + std::fmt::Debug>() {}
    check::<TcpListener>();
    check::<TcpStream>();
    check::<UdpSocket>();
    check::<UnixListener>();
    check::<UnixStream>();
}

/// `accept` reports the client's address; each side's `peer_addr` is the other's
/// `local_addr`; both sides have `TCP_NODELAY` set (asyncio sets it on every TCP connection),
/// and `set_nodelay` changes it.
#[test]
fn connect_and_accept_agree_on_addresses() {
    on_loops(&LOOPS, || async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        assert!(addr.ip().is_loopback());
        assert_ne!(addr.port(), 0, "binding port 0 picks a free port");

        let client = TcpStream::connect(addr).await?;
        let (server, peer) = braid::wait_for(listener.accept(), Some(WAIT)).await?;
        assert_eq!(peer, client.local_addr()?);
        assert_eq!(server.peer_addr()?, client.local_addr()?);
        assert_eq!(client.peer_addr()?, addr);
        assert_eq!(server.local_addr()?, addr);

        assert!(client.nodelay()?, "connect sets TCP_NODELAY");
        assert!(server.nodelay()?, "accept sets TCP_NODELAY");
        client.set_nodelay(false)?;
        assert!(!client.nodelay()?);

        // A string address (a literal, no lookup) connects as well.
        let second = TcpStream::connect(format!("127.0.0.1:{}", addr.port())).await?;
        let (_, peer) = braid::wait_for(listener.accept(), Some(WAIT)).await?;
        assert_eq!(peer, second.local_addr()?);
        Ok(())
    });
}

/// `from_std` adopts connected std sockets (switched to non-blocking mode).
#[test]
fn from_std_adopts_std_sockets() {
    on_loops(&[1], || async {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let listener = TcpListener::from_std(std_listener)?;
        let std_client = std::net::TcpStream::connect(listener.local_addr()?)?;
        let client = TcpStream::from_std(std_client)?;
        let (server, _) = braid::wait_for(listener.accept(), Some(WAIT)).await?;
        client.write_all(b"adopted").await?;
        let mut buf = [0; 7];
        braid::wait_for(server.read_exact(&mut buf), Some(WAIT)).await?;
        assert_eq!(&buf, b"adopted");
        Ok(())
    });
}

/// A mebibyte written in odd-sized pieces (1 byte to 64 KiB + 1) and read back with a 7-byte
/// buffer: every byte arrives, once, in order, and then `read` returns 0 (end of stream after
/// the writer's `shutdown(Write)`).
#[test]
fn a_mebibyte_in_odd_pieces_read_through_a_7_byte_buffer() {
    const TOTAL: usize = 1 << 20;
    const PIECES: [usize; 9] = [1, 3, 7, 13, 4093, 65_537, 31, 997, 2];
    on_loops(&LOOPS, || async {
        let (client, server) = tcp_pair().await?;
        let data: Vec<u8> = (0..TOTAL).map(pattern).collect();
        let writer = braid::create_task(async move {
            let mut sent = 0;
            for &piece in PIECES.iter().cycle() {
                if sent == data.len() {
                    break;
                }
                let end = (sent + piece).min(data.len());
                client.write_all(&data[sent..end]).await?;
                sent = end;
            }
            client.shutdown(Shutdown::Write)?;
            Ok(sent)
        });

        let mut buf = [0u8; 7];
        let mut offset = 0;
        loop {
            let n = braid::wait_for(server.read(&mut buf), Some(WAIT)).await?;
            if n == 0 {
                break;
            }
            assert!(n <= buf.len());
            for (k, &byte) in buf[..n].iter().enumerate() {
                assert_eq!(byte, pattern(offset + k), "byte {} differs", offset + k);
            }
            offset += n;
        }
        assert_eq!(offset, TOTAL, "every byte arrives and then the stream ends");
        assert_eq!(settle(writer).await?, TOTAL);
        // End of stream is sticky.
        assert_eq!(server.read(&mut buf).await?, 0);
        Ok(())
    });
}

/// After the peer's `shutdown(Write)`, `read` returns 0 (a task already waiting in `read` is
/// woken to see it), while the other direction still carries data.
#[test]
fn read_returns_zero_after_the_peer_shuts_down_writing() {
    on_loops(&LOOPS, || async {
        let (client, server) = tcp_pair().await?;
        let server = Arc::new(server);
        let waiting = server.clone();
        let reader = queued(async move {
            let mut buf = [0; 16];
            waiting.read(&mut buf).await
        })
        .await?;
        client.write_all(b"last words").await?;
        client.shutdown(Shutdown::Write)?;

        let first = settle(reader).await?;
        let mut got = first;
        let mut buf = [0; 16];
        loop {
            let n = braid::wait_for(server.read(&mut buf), Some(WAIT)).await?;
            if n == 0 {
                break;
            }
            got += n;
        }
        assert_eq!(got, b"last words".len());
        assert_eq!(server.read(&mut buf).await?, 0, "EOF again");

        // Half-closed: the server can still answer and the client still reads.
        server.write_all(b"reply").await?;
        server.shutdown(Shutdown::Write)?;
        assert_eq!(read_all(&client, 3).await?, b"reply");
        Ok(())
    });
}

/// `futures::AsyncReadExt`/`AsyncWriteExt` drive `TcpStream` and `&TcpStream`: the server
/// echoes with `futures::io::copy(&stream, &mut &stream)`, the client writes 200 KiB with
/// `write_all` from one task and `close`s (a write shutdown), and reads the echo with
/// `read_to_end` from another.
#[test]
fn futures_io_traits_echo_through_copy() {
    const LEN: usize = 200 * 1024;
    on_loops(&LOOPS, || async {
        let (client, server) = tcp_pair().await?;
        let echo = braid::create_task(async move {
            let copied = futures::io::copy(&server, &mut &server).await?;
            AsyncWriteExt::close(&mut &server).await?;
            Ok(copied)
        });

        let client = Arc::new(client);
        let sending = client.clone();
        let sender = braid::create_task(async move {
            let data: Vec<u8> = (0..LEN).map(pattern).collect();
            let mut w: &TcpStream = &sending;
            AsyncWriteExt::write_all(&mut w, &data).await?;
            w.flush().await?;
            w.close().await?;
            Ok(())
        });

        let mut echoed = Vec::new();
        let mut r: &TcpStream = &client;
        braid::wait_for(async { Ok(r.read_to_end(&mut echoed).await?) }, Some(WAIT)).await?;
        settle(sender).await?;
        assert_eq!(settle(echo).await?, LEN as u64);
        assert_eq!(echoed.len(), LEN);
        assert!(echoed.iter().enumerate().all(|(i, &b)| b == pattern(i)));

        // The owned stream implements the traits too.
        let (mut a, mut b) = tcp_pair().await?;
        AsyncWriteExt::write_all(&mut a, b"owned").await?;
        a.close().await?;
        let mut got = Vec::new();
        b.read_to_end(&mut got).await?;
        assert_eq!(got, b"owned");
        Ok(())
    });
}

/// A cancel delivered to a task blocked in `AsyncReadExt::read` surfaces as an `io::Error`
/// that `braid::Error::from` (or `?`) turns back into the Cancelled error.
#[test]
fn a_cancel_surfaces_through_async_read_as_cancelled() {
    on_loops(&LOOPS, || async {
        let (_client, server) = tcp_pair().await?;
        let task = queued(async move {
            let mut buf = [0; 8];
            let mut r: &TcpStream = &server;
            match AsyncReadExt::read(&mut r, &mut buf).await {
                Ok(n) => Ok(Ok(n)),
                Err(io) => Ok(Err(braid::Error::from(io))),
            }
        })
        .await?;
        assert!(task.cancel());
        // The task saw the cancel as the read's error and converted it back.
        match settle(task).await? {
            Err(e) => assert!(e.is_cancelled(), "{e:?}"),
            Ok(n) => panic!("the read returned {n} bytes nobody sent"),
        }
        Ok(())
    });
}

/// A task blocked in `read` is cancelled while bytes are already waiting in the socket; the
/// cancel wins (it is checked before the syscall), so the cancelled read took nothing: the
/// next `read` gets the bytes sent before the cancel, and then those sent after it. The task
/// is pinned to this loop, so it cannot run between the write and the cancel.
#[test]
fn a_cancelled_read_takes_nothing_from_the_socket() {
    on_loops(&LOOPS, || async {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let mut client = std::net::TcpStream::connect(listener.local_addr()?)?;
        let (server, _) = listener.accept()?;
        let server = Arc::new(TcpStream::from_std(server)?);

        let waiting = server.clone();
        let task = queued_local(async move {
            let mut buf = [0; 64];
            let n = waiting.read(&mut buf).await?;
            Ok(buf[..n].to_vec())
        })
        .await?;
        // Blocking std writes: no await, so the pinned task cannot run in between.
        client.write_all(b"before|")?;
        assert!(task.cancel());
        assert_cancelled(&settle(task).await);

        client.write_all(b"after")?;
        client.shutdown(Shutdown::Write)?;
        assert_eq!(read_all(&server, 64).await?, b"before|after");
        Ok(())
    });
}

/// The cancel races the data's arrival, 100 rounds, with the reader on any loop and the cancel
/// given a varying head start (busy waits and yields): whichever wins, the bytes are either in
/// the read's result or still in the socket, never lost and never duplicated.
#[test]
fn a_read_cancelled_while_data_arrives_loses_no_bytes() {
    const ROUNDS: usize = 100;
    on_loops(&LOOPS, || async {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let mut client = std::net::TcpStream::connect(listener.local_addr()?)?;
        let (server, _) = listener.accept()?;
        let server = Arc::new(TcpStream::from_std(server)?);
        let (mut completed, mut cancelled) = (0, 0);
        for round in 0..ROUNDS {
            let message = format!("<round {round}>").into_bytes();
            let waiting = server.clone();
            let task = queued(async move {
                let mut buf = [0; 64];
                let n = waiting.read(&mut buf).await?;
                Ok(buf[..n].to_vec())
            })
            .await?;
            client.write_all(&message)?;
            // A varying head start lets the read win some rounds: a busy wait of 0 to 175 µs
            // (the task may run on another loop meanwhile), or, every fourth round, a yield
            // (it may run on this one).
            if round % 4 == 3 {
                braid::yield_now().await?;
            } else {
                let head_start = Instant::now();
                while head_start.elapsed() < Duration::from_micros(25 * (round % 8) as u64) {
                    std::hint::spin_loop();
                }
            }
            task.cancel();
            let mut got = match settle(task).await {
                Ok(bytes) => {
                    completed += 1;
                    bytes
                }
                Err(e) if e.is_cancelled() => {
                    cancelled += 1;
                    Vec::new()
                }
                Err(e) => return Err(e),
            };
            let mut buf = [0; 64];
            while got.len() < message.len() {
                let n = braid::wait_for(server.read(&mut buf), Some(WAIT)).await?;
                assert_ne!(n, 0, "round {round}: the stream ended early");
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, message, "round {round}");
        }
        eprintln!("{ROUNDS} rounds: {completed} reads completed, {cancelled} cancelled");
        Ok(())
    });
}

/// `UdpSocket`: `send_to`/`recv_from` in both directions, each side seeing the other's
/// address as the sender; a datagram larger than the buffer is truncated to it.
#[test]
fn udp_send_to_and_recv_from_both_ways() {
    on_loops(&LOOPS, || async {
        let a = UdpSocket::bind("127.0.0.1:0").await?;
        let b = UdpSocket::bind("127.0.0.1:0").await?;
        let (a_addr, b_addr) = (a.local_addr()?, b.local_addr()?);
        assert_ne!(a_addr, b_addr);

        assert_eq!(a.send_to(b"ping", b_addr).await?, 4);
        let mut buf = [0; 64];
        let (n, from) = braid::wait_for(b.recv_from(&mut buf), Some(WAIT)).await?;
        assert_eq!((&buf[..n], from), (&b"ping"[..], a_addr));

        assert_eq!(b.send_to(b"pong!", a_addr).await?, 5);
        let (n, from) = braid::wait_for(a.recv_from(&mut buf), Some(WAIT)).await?;
        assert_eq!((&buf[..n], from), (&b"pong!"[..], b_addr));

        // One datagram per receive: two sends are two receives, the boundaries kept.
        a.send_to(b"one", b_addr).await?;
        a.send_to(b"two", b_addr).await?;
        let mut small = [0; 2];
        let (n, _) = braid::wait_for(b.recv_from(&mut small), Some(WAIT)).await?;
        assert_eq!(&small[..n], b"on", "truncated to the buffer");
        let (n, _) = braid::wait_for(b.recv_from(&mut buf), Some(WAIT)).await?;
        assert_eq!(&buf[..n], b"two", "the rest of the first datagram is gone");
        Ok(())
    });
}

/// Connected UDP sockets: `send`/`recv` with the peer set by `connect`, `peer_addr`; an
/// unconnected socket has no peer (`NotConnected`).
#[test]
fn udp_connected_send_and_recv() {
    on_loops(&LOOPS, || async {
        let a = UdpSocket::bind("127.0.0.1:0").await?;
        let b = UdpSocket::bind("127.0.0.1:0").await?;
        let e = a.peer_addr().expect_err("not connected yet");
        assert_eq!(e.kind(), ErrorKind::Io);
        assert_eq!(
            e.downcast_ref::<std::io::Error>().map(|io| io.kind()),
            Some(std::io::ErrorKind::NotConnected)
        );

        a.connect(b.local_addr()?).await?;
        b.connect(a.local_addr()?).await?;
        assert_eq!(a.peer_addr()?, b.local_addr()?);
        assert_eq!(b.peer_addr()?, a.local_addr()?);

        let mut buf = [0; 32];
        for i in 0..10u8 {
            a.send(&[i; 5]).await?;
            let n = braid::wait_for(b.recv(&mut buf), Some(WAIT)).await?;
            assert_eq!(&buf[..n], &[i; 5]);
            b.send(&[i; 3]).await?;
            let n = braid::wait_for(a.recv(&mut buf), Some(WAIT)).await?;
            assert_eq!(&buf[..n], &[i; 3]);
        }
        Ok(())
    });
}

/// Two tasks wait in `recv_from` on one shared socket; two datagrams arrive; each task is
/// woken and receives one of them (20 rounds, the tasks on any loop).
#[test]
fn two_receivers_on_one_udp_socket_are_both_woken() {
    on_loops(&LOOPS, || async {
        let shared = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let sender = UdpSocket::bind("127.0.0.1:0").await?;
        let target = shared.local_addr()?;
        for round in 0..20 {
            let mut tasks = Vec::new();
            for _ in 0..2 {
                let socket = shared.clone();
                tasks.push(
                    queued(async move {
                        let mut buf = [0; 64];
                        let (n, _) = socket.recv_from(&mut buf).await?;
                        Ok(buf[..n].to_vec())
                    })
                    .await?,
                );
            }
            let sent: HashSet<Vec<u8>> = [format!("{round}-a"), format!("{round}-b")]
                .into_iter()
                .map(String::into_bytes)
                .collect();
            for datagram in &sent {
                sender.send_to(datagram, target).await?;
            }
            let mut got = HashSet::new();
            for task in tasks {
                got.insert(settle(task).await?);
            }
            assert_eq!(got, sent, "round {round}: each receiver gets one datagram");
        }
        Ok(())
    });
}

/// `UnixListener::bind`, `UnixStream::connect` and `accept`: addresses name the path, data
/// flows both ways, and `shutdown(Write)` gives the peer end of stream.
#[test]
fn unix_listener_connect_and_accept() {
    let dir = socket_dir("listener");
    let path = dir.join("echo.sock");
    let p = path.clone();
    on_loops(&[2], move || {
        let path = p.clone();
        async move {
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path)?;
            assert_eq!(listener.local_addr()?.as_pathname(), Some(path.as_path()));
            let client = UnixStream::connect(path.clone()).await?;
            let (server, _) = braid::wait_for(listener.accept(), Some(WAIT)).await?;
            assert_eq!(client.peer_addr()?.as_pathname(), Some(path.as_path()));
            assert_eq!(server.local_addr()?.as_pathname(), Some(path.as_path()));

            client.write_all(b"over unix").await?;
            client.shutdown(Shutdown::Write)?;
            let mut got = Vec::new();
            let mut buf = [0; 4];
            loop {
                let n = braid::wait_for(server.read(&mut buf), Some(WAIT)).await?;
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, b"over unix");
            server.write_all(b"back").await?;
            let mut buf = [0; 4];
            braid::wait_for(client.read_exact(&mut buf), Some(WAIT)).await?;
            assert_eq!(&buf, b"back");
            Ok(())
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// `UnixStream::pair`: a connected pair; the futures_io traits work on it too.
#[test]
fn unix_stream_pair_carries_data_both_ways() {
    on_loops(&LOOPS, || async {
        let (a, b) = UnixStream::pair()?;
        let data: Vec<u8> = (0..300_000).map(pattern).collect();
        let a = Arc::new(a);
        let sending = a.clone();
        let expected = data.clone();
        let sender = braid::create_task(async move {
            sending.write_all(&data).await?;
            sending.shutdown(Shutdown::Write)
        });
        let mut got = Vec::new();
        let mut r: &UnixStream = &b;
        braid::wait_for(async { Ok(r.read_to_end(&mut got).await?) }, Some(WAIT)).await?;
        settle(sender).await?;
        assert!(got == expected, "300 000 bytes through the pair, in order");

        let mut w: &UnixStream = &b;
        AsyncWriteExt::write_all(&mut w, b"and back").await?;
        let mut buf = [0; 8];
        braid::wait_for(a.read_exact(&mut buf), Some(WAIT)).await?;
        assert_eq!(&buf, b"and back");
        Ok(())
    });
}

/// `UnixStream::connect` to a listener whose backlog is full fails at once with kind `Io`
/// (`WouldBlock`, which Linux's `EAGAIN` is), as tokio's does: nothing is in progress, and no
/// readiness will ever come. It used to wait for one, for good.
#[test]
fn a_unix_connect_to_a_full_backlog_fails_instead_of_hanging() {
    use std::os::fd::AsRawFd;
    let dir = socket_dir("full-backlog");
    let path = dir.join("full.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    // SAFETY: `listen` on the listener's open descriptor, which it owns; no memory is passed.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
    // A backlog of 0 holds one pending connection; a second would find it full.
    let _held = std::os::unix::net::UnixStream::connect(&path).expect("the first connect");
    let outcome =
        braid::run(async move { Ok(braid::wait_for(UnixStream::connect(path), Some(WAIT)).await) })
            .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let error = match outcome {
        Err(e) => e,
        Ok(_) => panic!("connected to a listener with a full backlog"),
    };
    assert!(!error.is_timeout(), "the connect hung: {error:?}");
    assert_eq!(error.kind(), ErrorKind::Io, "{error:?}");
    let io = error
        .downcast_ref::<std::io::Error>()
        .expect("an io::Error");
    assert_eq!(io.kind(), std::io::ErrorKind::WouldBlock, "{error:?}");
}

/// A read into an empty buffer and a write of nothing return 0 at once, as std's do: on an
/// idle socket, on a full one, and with data waiting (which the empty read leaves for the
/// next one). They used to wait for readiness first, hanging where none would come, and the
/// empty read then returned the 0 that means the end of the stream.
#[test]
fn an_empty_read_or_write_returns_zero_at_once() {
    on_loops(&LOOPS, || async {
        let (a, b) = UnixStream::pair()?;
        assert_eq!(braid::wait_for(a.read(&mut []), Some(WAIT)).await?, 0);
        let mut r: &UnixStream = &a;
        let empty = braid::wait_for(
            async { Ok(AsyncReadExt::read(&mut r, &mut []).await?) },
            Some(WAIT),
        )
        .await?;
        assert_eq!(empty, 0, "AsyncRead into an empty buffer");
        b.write_all(b"data").await?;
        assert_eq!(braid::wait_for(a.read(&mut []), Some(WAIT)).await?, 0);
        let mut buf = [0; 4];
        braid::wait_for(a.read_exact(&mut buf), Some(WAIT)).await?;
        assert_eq!(&buf, b"data", "the empty read took nothing");

        // A socket whose send buffer is full (filled before braid adopts it).
        let (full, _peer) = std::os::unix::net::UnixStream::pair()?;
        full.set_nonblocking(true)?;
        let chunk = [0u8; 64 * 1024];
        while (&full).write(&chunk).is_ok() {}
        let full = UnixStream::from_std(full)?;
        assert_eq!(braid::wait_for(full.write(&[]), Some(WAIT)).await?, 0);
        let mut w: &UnixStream = &full;
        let none = braid::wait_for(
            async { Ok(AsyncWriteExt::write(&mut w, &[]).await?) },
            Some(WAIT),
        )
        .await?;
        assert_eq!(none, 0, "AsyncWrite of nothing");
        Ok(())
    });
}

/// `UnixStream::connect` (and `open_unix_connection`) refuse a path with a NUL byte inside
/// with `InvalidInput`, as std does: the kernel reads the path up to the NUL, so
/// `dir/a\0junk` used to connect to `dir/a`. A leading NUL still names an abstract socket.
#[test]
fn a_unix_connect_to_a_path_with_a_nul_inside_is_invalid_input() {
    use std::os::unix::ffi::OsStringExt;
    let dir = socket_dir("nul");
    let path = dir.join("a");
    let p = path.clone();
    on_loops(&[1], move || {
        let path = p.clone();
        async move {
            let _listener = UnixListener::bind(&path)?;
            let mut bytes = path.clone().into_os_string().into_vec();
            bytes.extend_from_slice(b"\0junk");
            let with_nul = PathBuf::from(std::ffi::OsString::from_vec(bytes));
            let invalid = |outcome: Result<()>| {
                let error = outcome.expect_err("connected through a path with a NUL inside");
                let io = error.downcast_ref::<std::io::Error>().map(|e| e.kind());
                assert_eq!(io, Some(std::io::ErrorKind::InvalidInput), "{error:?}");
            };
            invalid(UnixStream::connect(with_nul.clone()).await.map(drop));
            invalid(braid::open_unix_connection(with_nul).await.map(drop));

            use std::os::linux::net::SocketAddrExt;
            let name = format!("braid-io-tcp-{}-nul", std::process::id());
            let abstract_addr = std::os::unix::net::SocketAddr::from_abstract_name(&name)?;
            let std_listener = std::os::unix::net::UnixListener::bind_addr(&abstract_addr)?;
            let listener = UnixListener::from_std(std_listener)?;
            let mut abstract_path = vec![0u8];
            abstract_path.extend_from_slice(name.as_bytes());
            let abstract_path = PathBuf::from(std::ffi::OsString::from_vec(abstract_path));
            let _client = UnixStream::connect(abstract_path).await?;
            braid::wait_for(listener.accept(), Some(WAIT)).await?;
            Ok(())
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}
