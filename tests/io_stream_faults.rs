//! Faults at the edges of a stream connection's life, each checked against what asyncio does
//! (CPython 3.12 `asyncio.streams` and its selector transport):
//!
//! - a `start_server` handler that panics before it returns its future is reported as one
//!   that panics inside it, its connection is closed, and the server goes on serving;
//! - closing a stream with bytes from the peer still unread neither resets the connection
//!   (which would cut short a reply still queued to send) nor loses those bytes: they stay
//!   readable after `close`, as asyncio's transport had read them into the reader's buffer.
//!
//! Every wait is bounded (`common::WAIT`, or a deadline on a plain thread), so a lost wake-up
//! or a dead accept task fails its test instead of hanging it.

use braid::{ErrorKind, Queue, StreamReader, StreamWriter};
use std::future::Future;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

mod common;
use common::*;

/// What the exception handler was given: the message, and the error's kind and text.
type Report = (String, Option<(ErrorKind, String)>);

/// Sends every report of `rt`'s loops (and of the loop running the main future) to a queue.
fn collect_reports(rt: &braid::Runtime) -> Arc<Queue<Report>> {
    let reports: Arc<Queue<Report>> = Arc::new(Queue::new(0));
    for lp in rt.event_loops() {
        let reports = reports.clone();
        lp.set_exception_handler(move |ctx| {
            let error = ctx.error.as_ref().map(|e| (e.kind(), e.to_string()));
            let _ = reports.put_nowait((ctx.message.clone(), error));
        });
    }
    reports
}

/// `fut`, bounded by `WAIT`; a timeout says what did not happen.
async fn within<T>(what: &str, fut: impl Future<Output = braid::Result<T>>) -> braid::Result<T> {
    braid::wait_for(fut, Some(WAIT))
        .await
        .map_err(|e| braid::Error::msg(format!("{what}: {e}")))
}

/// asyncio logs a handler's exception and keeps accepting. A handler closure that panics
/// before it returns its future must not take the accept task down with it: its panic is
/// reported as one inside the future is (same message, kind `Panicked`), its client reads EOF,
/// and later clients are served.
#[test]
fn a_handler_that_panics_before_returning_its_future_leaves_the_server_serving() {
    let rt = runtime(2);
    let reports = collect_reports(&rt);
    let outcome = rt.run_until_complete(async {
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = connections.clone();
        let server = braid::start_server(
            move |r: StreamReader, w: StreamWriter| {
                let nth = seen.fetch_add(1, Ordering::SeqCst);
                if nth == 0 {
                    panic!("handler setup failed");
                }
                async move {
                    if nth == 1 {
                        panic!("handler body failed");
                    }
                    let line = r.readline().await?;
                    w.write(&line)?;
                    w.drain().await
                }
            },
            "127.0.0.1:0",
        )
        .await?;

        // First connection: the closure itself panics.
        let (r1, _w1) = braid::open_connection(server.local_addr()).await?;
        let (sync_message, sync_error) = within("no report of the panic", reports.get()).await?;
        let (kind, text) = sync_error.expect("the report carries the panic");
        assert_eq!(kind, ErrorKind::Panicked, "{text}");
        assert!(text.contains("handler setup failed"), "{text}");
        let rest = within(
            "the panicked handler's connection stays open",
            r1.read_to_end(),
        );
        assert_eq!(rest.await?, b"");

        // Second connection: the future panics; reported the same way.
        let (r2, _w2) = braid::open_connection(server.local_addr()).await?;
        let report = within("the next connection is not served", reports.get());
        let (async_message, async_error) = report.await?;
        let (kind, text) = async_error.expect("the report carries the panic");
        assert_eq!(kind, ErrorKind::Panicked, "{text}");
        assert!(text.contains("handler body failed"), "{text}");
        assert_eq!(sync_message, async_message);
        let rest = within(
            "the panicked handler's connection stays open",
            r2.read_to_end(),
        );
        assert_eq!(rest.await?, b"");

        // Third connection: served.
        assert!(server.is_serving());
        let (r3, w3) = braid::open_connection(server.local_addr()).await?;
        w3.write(b"hello\n")?;
        let echoed = within("the third connection is not served", r3.readline()).await?;
        assert_eq!(echoed, b"hello\n");
        assert_eq!(connections.load(Ordering::SeqCst), 3);
        assert!(reports.empty(), "a handler that succeeds reports nothing");
        server.close();
        Ok(())
    });
    outcome.unwrap();
    rt.shutdown(WAIT).unwrap();
}

/// The reply of the long-reply scenario: more than the client's receive buffer holds while it
/// does not read (128 KiB by default), so that most of it is still queued to send when the
/// handler's connection is closed, and less than a loopback socket's send buffer takes
/// (autotuned to some MiB), so that the handler hands all of it to the kernel and returns.
const REPLY: usize = 2 << 20;

/// The long-reply scenario: a handler reads its one-line request (with its reader's limit set
/// to `limit`), answers with a long reply and returns, which closes its writer, while its
/// client had sent `extra` more bytes after the request that the handler never reads. The
/// client (a plain thread) reads nothing until the server's connection has ended, then reads
/// to EOF. Returns how much of the reply it read, or its error and the count before it.
fn long_reply_after_unread_bytes(limit: usize, extra: usize) -> Result<usize, (usize, String)> {
    let rt = runtime(2);
    let (request_read, request_was_read) = std::sync::mpsc::channel::<()>();
    let extras_sent = Arc::new(braid::Event::new());
    let (sent, client_sent) = (extras_sent.clone(), extras_sent.clone());
    let server = rt
        .run_until_complete(braid::start_server(
            move |r: StreamReader, w: StreamWriter| {
                let (request_read, sent) = (request_read.clone(), sent.clone());
                async move {
                    r.set_limit(limit);
                    if r.readline().await? != b"request\n" {
                        return Err(braid::Error::msg("not the request"));
                    }
                    let _ = request_read.send(());
                    braid::wait_for(sent.wait(), Some(WAIT)).await?;
                    w.write(&vec![b'x'; REPLY])?;
                    w.drain().await
                }
            },
            "127.0.0.1:0",
        ))
        .unwrap();
    let addr = server.local_addr();
    let (ended, server_ended) = std::sync::mpsc::channel::<()>();
    let client = std::thread::spawn(move || {
        let mut total = 0;
        let mut session = || -> std::io::Result<()> {
            let mut c = std::net::TcpStream::connect(addr)?;
            c.set_read_timeout(Some(WAIT))?;
            c.set_write_timeout(Some(WAIT))?;
            c.write_all(b"request\n")?;
            request_was_read
                .recv_timeout(WAIT)
                .expect("the handler never read its request");
            // On loopback a completed write is in the server's receive queue: the handler
            // returns with these bytes unread.
            c.write_all(&vec![b'?'; extra])?;
            client_sent.set();
            server_ended
                .recv_timeout(WAIT)
                .expect("the server's connection never ended");
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match c.read(&mut buf)? {
                    0 => return Ok(()),
                    n => total += n,
                }
            }
        };
        let outcome = session();
        outcome.map(|()| total).map_err(|e| (total, e.to_string()))
    });
    rt.run_until_complete(async {
        // The connection is open by now; closing the server leaves it be.
        braid::wait_for(extras_sent.wait(), Some(WAIT)).await?;
        server.close();
        let ended_in_time = braid::wait_for(server.wait_closed(), Some(WAIT)).await;
        assert!(
            ended_in_time.is_ok(),
            "the handler's connection did not end: did the kernel not take the reply?"
        );
        Ok(())
    })
    .unwrap();
    let _ = ended.send(());
    let outcome = client.join().unwrap();
    rt.shutdown(WAIT).unwrap();
    outcome
}

/// Closing a Linux socket with unread received bytes sends RST and drops what is still queued
/// to send, here most of a reply; asyncio's transport had read those bytes into the reader's
/// buffer, so its close is a FIN behind the whole reply. The client must read all of it, then
/// EOF.
#[test]
fn a_long_reply_arrives_whole_when_the_client_sent_bytes_the_handler_never_read() {
    let outcome = long_reply_after_unread_bytes(braid::DEFAULT_LIMIT, 30);
    assert_eq!(outcome, Ok(REPLY), "the reply was cut short");
}

/// As above with more unread bytes than `close` keeps for the reader (twice its limit): the
/// rest is read and dropped, so there is still no reset.
#[test]
fn a_long_reply_arrives_whole_when_more_was_unread_than_close_keeps() {
    let outcome = long_reply_after_unread_bytes(1024, 16 * 1024);
    assert_eq!(outcome, Ok(REPLY), "the reply was cut short");
}

/// Waits (bounded) until `probe`, a second handle on a socket's descriptor, shows `n` bytes
/// received and unread. `MSG_PEEK` takes nothing out, so the bytes stay in the kernel, where
/// the fixed bug lost them.
fn wait_until_received(probe: &std::net::TcpStream, n: usize) {
    let deadline = Instant::now() + WAIT;
    let mut buf = vec![0u8; n];
    loop {
        match probe.peek(&mut buf) {
            Ok(k) if k >= n => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("peek failed: {e}"),
        }
        assert!(Instant::now() < deadline, "the peer's bytes never arrived");
        std::thread::yield_now();
    }
}

/// Bytes the peer sent before `close()` are still read after it, then EOF (asyncio: `close`
/// feeds EOF behind what the transport had received). Over TCP, the bytes are known to be in
/// the kernel (peeked through a second handle) and not yet in the reader's buffer. They come
/// after a read that emptied the socket without waiting, so no readiness edge announced them
/// to the stream: `close` must look anyway.
#[test]
fn bytes_received_before_close_are_still_read_after_it_over_tcp() {
    let rt = runtime(1);
    rt.run_until_complete(async {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let mut peer = std::net::TcpStream::connect(listener.local_addr()?)?;
        let (accepted, _) = listener.accept()?;
        let probe = accepted.try_clone()?;
        let (r, w) = braid::TcpStream::from_std(accepted)?.into_streams();
        peer.write_all(b"first\n")?;
        wait_until_received(&probe, 6);
        assert_eq!(braid::wait_for(r.readline(), Some(WAIT)).await?, b"first\n");
        peer.write_all(b"hello\nworld\n")?;
        wait_until_received(&probe, 12);
        w.close();
        let got = braid::wait_for(r.read_to_end(), Some(WAIT)).await?;
        assert_eq!(
            got, b"hello\nworld\n",
            "received bytes were dropped by close()"
        );
        assert!(r.at_eof());
        Ok(())
    })
    .unwrap();
    rt.shutdown(WAIT).unwrap();
}

/// As over TCP, on a Unix socket pair (where a completed write is in the peer's receive queue
/// at once); the lines are read one by one after `close`, then EOF.
#[test]
fn bytes_received_before_close_are_still_read_after_it_over_unix() {
    let rt = runtime(1);
    rt.run_until_complete(async {
        let (a, mut peer) = std::os::unix::net::UnixStream::pair()?;
        let (r, w) = braid::UnixStream::from_std(a)?.into_streams();
        peer.write_all(b"hello\nworld\n")?;
        w.close();
        assert_eq!(braid::wait_for(r.readline(), Some(WAIT)).await?, b"hello\n");
        assert_eq!(braid::wait_for(r.readline(), Some(WAIT)).await?, b"world\n");
        assert_eq!(braid::wait_for(r.readline(), Some(WAIT)).await?, b"");
        assert!(r.at_eof());
        Ok(())
    })
    .unwrap();
    rt.shutdown(WAIT).unwrap();
}

/// What `close` keeps of unread bytes is bounded as asyncio's transport bounds its reading
/// (it pauses once the reader holds more than twice its limit): a peer that sent much more
/// leaves a prefix of at most twice the limit readable, and `close` does not block on it.
#[test]
fn close_keeps_at_most_twice_the_limit_of_unread_bytes() {
    let rt = runtime(1);
    rt.run_until_complete(async {
        let (a, mut peer) = std::os::unix::net::UnixStream::pair()?;
        let (r, w) = braid::UnixStream::from_std(a)?.into_streams();
        r.set_limit(1024);
        let sent: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        peer.write_all(&sent)?;
        w.close();
        let kept = braid::wait_for(r.read_to_end(), Some(WAIT)).await?;
        assert!(!kept.is_empty(), "close kept none of the unread bytes");
        assert!(kept.len() <= 2 * 1024, "close kept {} bytes", kept.len());
        assert_eq!(
            kept[..],
            sent[..kept.len()],
            "not a prefix of what was sent"
        );
        Ok(())
    })
    .unwrap();
    rt.shutdown(WAIT).unwrap();
}
