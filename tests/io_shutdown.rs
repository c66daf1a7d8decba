//! Sockets and servers when their runtime shuts down (API.md "Streams and sockets",
//! "Running"): a `StreamWriter` with data the peer has not taken yet, dropped (its connection
//! ends: the peer reads the end of the stream and the socket is closed by the time
//! `shutdown` returns) or kept (another runtime's loop sends its buffer; where no loop runs,
//! `drain` fails with Closed); and a server started just before the shutdown (it stops
//! listening, however its accept task ended).
//!
//! asyncio's `loop.close()` leaves a transport that still holds data to be closed: the data
//! is lost and the peer sees the connection close. braid does the same for a writer nobody
//! holds any more. Every wait is bounded, so a stranded flush fails a test instead of hanging
//! it. The tests run one at a time: two of them count this process's open descriptors.

use braid::{ErrorKind, StreamWriter};
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

mod common;
use common::*;

/// More than a loopback socket's buffers take, so the writer keeps most of it.
const BIG: usize = 16 << 20;

/// How long the peer waits for the next byte (or the end) before it calls the stream stuck.
const PEER_PATIENCE: Duration = Duration::from_secs(10);

/// This process's open file descriptors.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
}

/// How a peer's read of the whole stream ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The end of the stream, after this many bytes.
    Eof(usize),
    /// A reset, after this many bytes (the other side closed with data unread).
    Reset(usize),
    /// Nothing came for `PEER_PATIENCE`, after this many bytes: the stream never ended.
    Stuck(usize),
}

/// Reads `peer` until it ends, with `PEER_PATIENCE` for each read.
fn read_to_the_end(peer: &mut TcpStream) -> End {
    peer.set_read_timeout(Some(PEER_PATIENCE))
        .expect("set a read timeout");
    let mut total = 0;
    let mut buf = vec![0; 1 << 16];
    loop {
        match peer.read(&mut buf) {
            Ok(0) => return End::Eof(total),
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return End::Reset(total),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return End::Stuck(total)
            }
            Err(e) => panic!("the peer's read failed: {e}"),
        }
    }
}

/// A listener on the loopback that nobody accepts from until the test says so: a peer that
/// reads nothing meanwhile.
fn silent_peer() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a listener");
    let addr = listener.local_addr().expect("its address");
    (listener, addr)
}

/// A writer dropped with most of 16 MiB unsent (the `braid::run` whose main writes and
/// returns): the shutdown ends its connection. Its flush used to re-register the socket with
/// the loop that was closing, whose poller nobody polls: the peer never saw the end, and the
/// socket, the connection and the closed loop's poller stayed open for good.
#[test]
fn a_dropped_writer_with_unsent_data_is_closed_by_the_shutdown() {
    let _serial = serial();
    for workers in [1, 2] {
        let (listener, addr) = silent_peer();
        let before = open_fds();
        let rt = runtime(workers);
        rt.run_until_complete(async move {
            let (_reader, writer) = braid::open_connection(addr).await?;
            writer.write(&vec![7; BIG])?;
            assert!(writer.buffered() > 0, "the socket took all 16 MiB at once");
            Ok(())
        })
        .unwrap();
        rt.shutdown(WAIT).unwrap();
        assert_eq!(
            open_fds(),
            before,
            "on {workers} loop(s): descriptors left open after the shutdown (the socket, a \
             poller)"
        );
        let (mut peer, _) = listener.accept().expect("accept");
        let end = read_to_the_end(&mut peer);
        assert!(
            matches!(end, End::Eof(n) | End::Reset(n) if n < BIG),
            "on {workers} loop(s): the peer's stream did not end: {end:?}"
        );
    }
}

/// A server's handler that is sending a large reply to a slow client when the runtime shuts
/// down: the client reads what was sent and then the end of the stream, and the connection's
/// socket is closed.
#[test]
fn a_handler_with_an_unsent_reply_ends_its_connection_at_shutdown() {
    let _serial = serial();
    let before = open_fds();
    let rt = runtime(2);
    let addr = rt
        .run_until_complete(async {
            let server = braid::start_server(
                |_reader, writer| async move {
                    writer.write(&vec![b'x'; BIG / 2])?;
                    writer.drain().await
                },
                "127.0.0.1:0",
            )
            .await?;
            Ok(server.local_addr())
        })
        .unwrap();
    let mut client = TcpStream::connect(addr).expect("connect");
    // The reply has started: the handler wrote, and its flush waits for the client.
    client
        .set_read_timeout(Some(PEER_PATIENCE))
        .expect("set a read timeout");
    let mut first = [0; 1];
    client
        .read_exact(&mut first)
        .expect("the reply's first byte");
    rt.shutdown(WAIT).unwrap();
    assert_eq!(
        open_fds(),
        before + 1,
        "descriptors other than the client's left open after the shutdown"
    );
    let end = read_to_the_end(&mut client);
    assert!(
        matches!(end, End::Eof(_) | End::Reset(_)),
        "the client's stream did not end: {end:?}"
    );
}

/// A runtime with one loop whose writer has most of 16 MiB buffered, and the peer it writes
/// to: the runtime is shut down with the writer kept.
fn writer_left_by_a_shut_down_runtime() -> (StreamWriter, braid::StreamReader, TcpStream) {
    let (listener, addr) = silent_peer();
    let first = runtime(1);
    let (reader, writer) = first
        .run_until_complete(async move {
            let (reader, writer) = braid::open_connection(addr).await?;
            writer.write(&vec![7; BIG])?;
            Ok((reader, writer))
        })
        .unwrap();
    let (peer, _) = listener.accept().expect("accept");
    assert!(writer.buffered() > 0, "the socket took all 16 MiB at once");
    first.shutdown(WAIT).unwrap();
    (writer, reader, peer)
}

/// A writer kept past its runtime's shutdown, then drained and closed on another runtime:
/// the flush goes on from there and the peer gets every byte, then the end. Its `drain` used
/// to wait for a flush armed on the closed loop, which nobody would ever wake.
#[test]
fn a_kept_writer_sends_its_buffer_from_another_runtime() {
    let _serial = serial();
    let (writer, reader, mut peer) = writer_left_by_a_shut_down_runtime();
    let reading = std::thread::spawn(move || read_to_the_end(&mut peer));
    let second = runtime(1);
    let long = Some(Duration::from_secs(60));
    second
        .run_until_complete(braid::wait_for(writer.drain(), long))
        .expect("drain on the second runtime");
    second
        .run_until_complete(async {
            writer.close();
            braid::wait_for(writer.wait_closed(), long).await
        })
        .expect("close on the second runtime");
    drop((reader, writer));
    assert_eq!(reading.join().unwrap(), End::Eof(BIG));
    second.shutdown(WAIT).unwrap();
}

/// A writer kept past its runtime's shutdown and drained on a thread where no loop runs: no
/// loop can send the buffer, so `drain` fails with Closed at once instead of waiting for
/// good, and the peer sees the end of the stream.
#[test]
fn a_kept_writer_drained_where_no_loop_runs_fails_with_closed() {
    let _serial = serial();
    let (writer, reader, mut peer) = writer_left_by_a_shut_down_runtime();
    let (tx, rx) = mpsc::channel();
    // A thread of its own, so that a drain that never settles fails the test instead of
    // hanging it (the thread is then left behind).
    std::thread::spawn(move || {
        let outcome = futures::executor::block_on(writer.drain());
        let _ = tx.send((outcome, writer));
    });
    let (outcome, writer) = rx
        .recv_timeout(WAIT)
        .expect("drain on a thread without a loop never settled");
    let error = outcome.expect_err("drain without a loop to flush on succeeded");
    assert_eq!(error.kind(), ErrorKind::Closed, "{error:?}");
    assert!(
        error.to_string().contains("unsent"),
        "the error does not say data was lost: {error}"
    );
    let end = read_to_the_end(&mut peer);
    assert!(
        matches!(end, End::Eof(n) | End::Reset(n) if n < BIG),
        "the peer's stream did not end: {end:?}"
    );
    drop((reader, writer));
}

/// A server started right before the shutdown stops listening, whether its accept task was
/// cancelled before it first ran, cancelled while it waited, or finished by force. One that
/// never ran used to keep its listener open with `is_serving()` true: clients connected into
/// a backlog that nobody accepted from.
#[test]
fn a_server_started_right_before_the_shutdown_stops_listening() {
    let _serial = serial();
    for round in 0..20 {
        let rt = runtime(2);
        let server = rt
            .run_until_complete(braid::start_server(
                |_reader, _writer| async { Ok(()) },
                "127.0.0.1:0",
            ))
            .unwrap();
        let addr = server.local_addr();
        rt.shutdown(WAIT).unwrap();
        assert!(
            !server.is_serving(),
            "round {round}: the server still serves after the shutdown"
        );
        let refused = TcpStream::connect_timeout(&addr, WAIT);
        assert!(
            refused.is_err(),
            "round {round}: a client connected to a server nobody serves"
        );
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(futures::executor::block_on(server.wait_closed()));
        });
        rx.recv_timeout(WAIT)
            .expect("wait_closed never settled")
            .unwrap();
    }
}
