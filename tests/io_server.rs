//! `braid::start_server` and `Server` with asyncio's semantics (API.md "Streams and sockets",
//! issue 5; CPython 3.13's `Server`): `serve_forever` returns once the server is closed from
//! another task, a second `serve_forever` is `InvalidState`, cancelling it closes the server;
//! `close` refuses new connections at once while open ones go on; `wait_closed` waits for the
//! open connections to end; `close_clients` (the peer reads EOF) and `abort_clients` (the
//! handler's pending read fails with `ConnectionAborted`); a handler's error goes to the loop's
//! exception handler and the server keeps serving; a server's connections run on more than
//! one loop; and 1000 concurrent connections each echoing 100 KiB, every byte checked.
//!
//! Each wait is bounded (`common::WAIT`, `settle`), so a lost wake-up fails instead of hanging.

use braid::{ErrorKind, Queue, Result, Server, StreamReader, StreamWriter};
use std::collections::HashSet;
use std::io::ErrorKind as IoKind;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::*;

/// The runtime sizes the scenarios run on.
const LOOPS: [usize; 2] = [1, 2];

/// asyncio's echo server handler: each line back until EOF.
async fn echo_lines(reader: StreamReader, writer: StreamWriter) -> Result<()> {
    loop {
        let line = reader.readline().await?;
        if line.is_empty() {
            return Ok(());
        }
        writer.write(&line)?;
        writer.drain().await?;
    }
}

/// An echo server on a free loopback port.
async fn echo_server() -> Result<Arc<Server>> {
    Ok(Arc::new(
        braid::start_server(echo_lines, "127.0.0.1:0").await?,
    ))
}

/// A client connection to `server`, checked to be served: one line echoed.
async fn served_client(server: &Server) -> Result<(StreamReader, StreamWriter)> {
    let (r, w) = braid::open_connection(server.local_addr()).await?;
    assert_echoes(&r, &w, b"hello\n").await?;
    Ok((r, w))
}

/// `line` comes back.
async fn assert_echoes(r: &StreamReader, w: &StreamWriter, line: &[u8]) -> Result<()> {
    w.write(line)?;
    let echoed = braid::wait_for(r.readline(), Some(WAIT)).await?;
    assert_eq!(echoed, line);
    Ok(())
}

/// The `io::ErrorKind` of a braid error, which must be of kind `Io`.
fn io_kind(e: &braid::Error) -> IoKind {
    assert_eq!(e.kind(), ErrorKind::Io, "{e:?}");
    e.downcast_ref::<std::io::Error>()
        .unwrap_or_else(|| panic!("no io::Error in {e:?}"))
        .kind()
}

/// Asserts that connecting to `server` is refused now.
async fn assert_refused(server: &Server) -> Result<()> {
    let outcome = braid::wait_for(braid::open_connection(server.local_addr()), Some(WAIT)).await;
    match outcome {
        Err(e) => assert_eq!(io_kind(&e), IoKind::ConnectionRefused, "{e:?}"),
        Ok(_) => panic!("a closed server accepted a connection"),
    }
    Ok(())
}

/// `serve_forever` waits while the server serves and returns Ok once another task closes it;
/// on the closed server it is then refused (`InvalidState`).
#[test]
fn serve_forever_returns_after_close() {
    on_loops(&LOOPS, || async {
        let server = echo_server().await?;
        assert!(server.is_serving());
        let serving = server.clone();
        let forever = queued(async move { serving.serve_forever().await }).await?;
        // It serves meanwhile.
        let (r, w) = served_client(&server).await?;
        assert_echoes(&r, &w, b"again\n").await?;

        server.close();
        assert!(!server.is_serving());
        settle(forever).await?;
        let e = braid::wait_for(server.serve_forever(), Some(WAIT))
            .await
            .expect_err("serve_forever on a closed server");
        assert_eq!(e.kind(), ErrorKind::InvalidState, "{e:?}");
        Ok(())
    });
}

/// A second `serve_forever` while one is waiting is `InvalidState` (asyncio's RuntimeError);
/// the first goes on and returns at close.
#[test]
fn a_second_serve_forever_is_invalid_state() {
    on_loops(&LOOPS, || async {
        let server = echo_server().await?;
        let serving = server.clone();
        let forever = queued(async move { serving.serve_forever().await }).await?;
        let e = braid::wait_for(server.serve_forever(), Some(WAIT))
            .await
            .expect_err("a second serve_forever");
        assert_eq!(e.kind(), ErrorKind::InvalidState, "{e:?}");
        assert!(!forever.done());
        assert!(server.is_serving());
        server.close();
        settle(forever).await?;
        Ok(())
    });
}

/// Cancelling the task in `serve_forever` closes the server (asyncio): new connections are
/// refused.
#[test]
fn cancelling_serve_forever_closes_the_server() {
    on_loops(&LOOPS, || async {
        let server = echo_server().await?;
        let _ = served_client(&server).await?;
        let serving = server.clone();
        let forever = queued(async move { serving.serve_forever().await }).await?;
        assert!(forever.cancel());
        assert_cancelled(&settle(forever).await);
        assert!(!server.is_serving());
        assert_refused(&server).await?;
        braid::wait_for(server.wait_closed(), Some(WAIT)).await?;
        Ok(())
    });
}

/// `close` stops listening at once: a new connection is refused, while a connection accepted
/// before goes on echoing.
#[test]
fn close_refuses_new_connections_but_open_ones_go_on() {
    on_loops(&LOOPS, || async {
        let server = echo_server().await?;
        let (r, w) = served_client(&server).await?;
        assert_eq!(server.connections(), 1);
        server.close();
        server.close(); // idempotent
        assert!(!server.is_serving());
        assert_refused(&server).await?;
        assert_echoes(&r, &w, b"still here\n").await?;
        assert_eq!(server.connections(), 1);
        Ok(())
    });
}

/// After CPython `test_server.py`'s `test_wait_closed_basic`: `wait_closed` returns only once
/// the server is closed and every connection it accepted has ended (CPython 3.12).
#[test]
fn wait_closed_waits_for_open_connections() {
    on_loops(&LOOPS, || async {
        let server = echo_server().await?;
        let (r, w) = served_client(&server).await?;
        let (r2, w2) = served_client(&server).await?;

        let waiting = server.clone();
        let closed = queued(async move { waiting.wait_closed().await }).await?;
        server.close();
        assert_echoes(&r, &w, b"after close\n").await?;
        assert!(!closed.done(), "two connections are open");

        // The first client leaves: its handler reads EOF and returns.
        w.close();
        assert_eq!(braid::wait_for(r.read_to_end(), Some(WAIT)).await?, b"");
        assert_echoes(&r2, &w2, b"one left\n").await?;
        assert!(!closed.done(), "one connection is open");

        w2.close();
        settle(closed).await?;
        assert_eq!(server.connections(), 0);
        // Closed and empty: at once.
        braid::wait_for(server.wait_closed(), Some(WAIT)).await?;
        Ok(())
    });
}

/// What a handler's connection ended with, reported through a queue.
async fn recording_echo(
    reader: StreamReader,
    writer: StreamWriter,
    outcomes: Arc<Queue<Result<()>>>,
) -> Result<()> {
    let outcome = echo_lines(reader, writer).await;
    // Recorded here, not returned: the tests check it, the exception handler need not.
    outcomes.put_nowait(outcome)
}

/// An echo server whose handlers report how they ended.
async fn recording_server() -> Result<(Arc<Server>, Arc<Queue<Result<()>>>)> {
    let outcomes = Arc::new(Queue::new(0));
    let q = outcomes.clone();
    let server =
        braid::start_server(move |r, w| recording_echo(r, w, q.clone()), "127.0.0.1:0").await?;
    Ok((Arc::new(server), outcomes))
}

/// After CPython 3.13 `test_server.py`'s `test_close_clients`: `close_clients` closes each open
/// connection gracefully: the client reads EOF, and the
/// handler's pending `readline` returns EOF too, so the handler ends normally.
#[test]
fn close_clients_gives_the_peers_eof() {
    on_loops(&LOOPS, || async {
        let (server, outcomes) = recording_server().await?;
        let (r1, w1) = served_client(&server).await?;
        let (r2, _w2) = served_client(&server).await?;
        server.close();
        server.close_clients();
        assert_eq!(braid::wait_for(r1.read_to_end(), Some(WAIT)).await?, b"");
        assert_eq!(braid::wait_for(r2.read_to_end(), Some(WAIT)).await?, b"");
        for _ in 0..2 {
            braid::wait_for(outcomes.get(), Some(WAIT)).await??;
        }
        braid::wait_for(server.wait_closed(), Some(WAIT)).await?;
        // The client's writer may still write; nobody reads it (no error is promised either
        // way), but nothing hangs.
        let _ = w1.write(b"into the void\n");
        Ok(())
    });
}

/// After CPython 3.13 `test_server.py`'s `test_abort_clients`: `abort_clients` fails each
/// handler's pending read with an I/O error `ConnectionAborted`
/// (no hang); the client reads EOF or a reset.
#[test]
fn abort_clients_fails_the_handlers_reads() {
    on_loops(&LOOPS, || async {
        let (server, outcomes) = recording_server().await?;
        let (r1, _w1) = served_client(&server).await?;
        let (r2, _w2) = served_client(&server).await?;
        server.close();
        server.abort_clients();
        for _ in 0..2 {
            let outcome = braid::wait_for(outcomes.get(), Some(WAIT)).await?;
            let e = outcome.expect_err("an aborted handler's readline fails");
            assert_eq!(io_kind(&e), IoKind::ConnectionAborted, "{e:?}");
        }
        for r in [r1, r2] {
            match braid::wait_for(r.read_to_end(), Some(WAIT)).await {
                Ok(rest) => assert_eq!(rest, b""),
                Err(e) => assert!(
                    matches!(
                        io_kind(&e),
                        IoKind::ConnectionReset | IoKind::ConnectionAborted
                    ),
                    "{e:?}"
                ),
            }
        }
        braid::wait_for(server.wait_closed(), Some(WAIT)).await?;
        Ok(())
    });
}

/// A handler that fails has its error reported to the loop's exception handler, with
/// asyncio's message; its client reads EOF; the server goes on serving other connections.
#[test]
fn a_handler_error_goes_to_the_exception_handler() {
    let rt = runtime(2);
    let reports: Arc<Queue<(String, Option<String>)>> = Arc::new(Queue::new(0));
    let install = |lp: &braid::EventLoop| {
        let reports = reports.clone();
        lp.set_exception_handler(move |ctx| {
            let error = ctx.error.as_ref().map(|e| e.to_string());
            let _ = reports.put_nowait((ctx.message.clone(), error));
        });
    };
    for lp in rt.event_loops() {
        install(&lp);
    }
    let outcome = rt.run_until_complete(async {
        install(&braid::get_running_loop());
        let server = braid::start_server(
            |r: StreamReader, w: StreamWriter| async move {
                let first = r.readline().await?;
                if first == b"fail\n" {
                    return Err(braid::Error::msg("the handler failed on purpose"));
                }
                w.write(&first)?;
                echo_lines(r, w).await
            },
            "127.0.0.1:0",
        )
        .await?;

        let (r, w) = braid::open_connection(server.local_addr()).await?;
        w.write(b"fail\n")?;
        let (message, error) = braid::wait_for(reports.get(), Some(WAIT)).await?;
        assert_eq!(message, "Unhandled exception in a start_server handler");
        assert_eq!(error.as_deref(), Some("the handler failed on purpose"));
        assert_eq!(
            braid::wait_for(r.read_to_end(), Some(WAIT)).await?,
            b"",
            "the failed handler's connection is closed"
        );

        assert!(server.is_serving());
        let (r, w) = served_client(&server).await?;
        assert_echoes(&r, &w, b"still serving\n").await?;
        assert!(reports.empty(), "a handler that succeeds reports nothing");
        server.close();
        Ok(())
    });
    outcome.unwrap();
    rt.shutdown(WAIT).unwrap();
}

/// A server's connections run on more than one loop: 24 concurrent connections on a 3-loop
/// runtime, each handler recording its loop and then keeping that loop busy for 5 ms (as a
/// handler doing real work would) while the others are accepted, so idle loops take them.
#[test]
fn connections_spread_over_the_loops() {
    const CLIENTS: usize = 24;
    let _serial = serial();
    on_loops(&[3], || async {
        let seen: Arc<Mutex<Vec<usize>>> = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let server = braid::start_server(
            move |r: StreamReader, w: StreamWriter| {
                let record = record.clone();
                async move {
                    record.lock().unwrap().push(braid::get_running_loop().id());
                    let busy = Instant::now();
                    while busy.elapsed() < Duration::from_millis(5) {
                        std::hint::spin_loop();
                    }
                    echo_lines(r, w).await
                }
            },
            "127.0.0.1:0",
        )
        .await?;
        let addr = server.local_addr();
        let mut clients = Vec::new();
        for i in 0..CLIENTS {
            clients.push(braid::create_task(async move {
                let (r, w) = braid::open_connection(addr).await?;
                let line = format!("client {i}\n").into_bytes();
                assert_echoes(&r, &w, &line).await
            }));
        }
        for client in clients {
            settle(client).await?;
        }
        let ids = seen.lock().unwrap().clone();
        assert_eq!(ids.len(), CLIENTS);
        let distinct: HashSet<usize> = ids.iter().copied().collect();
        eprintln!("handlers ran on loops {distinct:?}: {ids:?}");
        assert!(
            distinct.len() >= 2,
            "all {CLIENTS} handlers ran on one loop: {ids:?}"
        );
        server.close();
        Ok(())
    });
}

/// Makes sure this process may open `needed` descriptors (raising the soft limit up to the
/// hard one); false if it cannot.
fn ensure_fd_limit(needed: u64) -> bool {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through a pointer to a live, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return false;
    }
    if lim.rlim_cur >= needed {
        return true;
    }
    if lim.rlim_max < needed {
        return false;
    }
    lim.rlim_cur = needed;
    // SAFETY: setrlimit reads one rlimit through a pointer to a live, initialised rlimit.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 }
}

/// The 100 KiB a connection sends: a window into one long pseudo-random sequence, at an offset
/// of its own, so that data crossing between connections would be caught.
fn payload(base: &[u8], conn: usize, len: usize) -> &[u8] {
    let start = (conn * 7919) % (base.len() - len);
    &base[start..start + len]
}

/// 1000 connections open at the same time on a 2-loop runtime, each echoing 100 KiB through
/// the server (read in pieces of up to 64 KiB, written back with `drain`), every byte checked.
/// Clients connect at most 64 at a time until the server has greeted them (so the listen
/// backlog never overflows into SYN retransmits), then wait at a barrier until all 1000 are
/// connected (the server then counts 1000 open connections), and then all transfer at once.
#[test]
fn a_thousand_concurrent_connections_echo_100_kib_each() {
    const CONNS: usize = 1000;
    const LEN: usize = 100 * 1024;
    if !ensure_fd_limit(2 * CONNS as u64 + 256) {
        eprintln!(
            "SKIPPED a_thousand_concurrent_connections_echo_100_kib_each: the open-file limit \
             cannot be raised to {} (see `ulimit -n`)",
            2 * CONNS + 256
        );
        return;
    }
    let _serial = serial();
    let started = Instant::now();
    on_loops(&[2], || async {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let base: Arc<Vec<u8>> = Arc::new(
            (0..LEN + 64 * 1024)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect(),
        );
        let server = braid::start_server(
            |r: StreamReader, w: StreamWriter| async move {
                w.write(b"hi\n")?;
                loop {
                    let chunk = r.read(64 * 1024).await?;
                    if chunk.is_empty() {
                        return Ok(());
                    }
                    w.write(&chunk)?;
                    w.drain().await?;
                }
            },
            "127.0.0.1:0",
        )
        .await?;
        let addr = server.local_addr();
        let connecting = Arc::new(braid::Semaphore::new(64));
        let all_connected = Arc::new(braid::Barrier::new(CONNS + 1));
        let go = Arc::new(braid::Event::new());

        let mut clients = Vec::with_capacity(CONNS);
        for conn in 0..CONNS {
            let (base, connecting, all_connected, go) = (
                base.clone(),
                connecting.clone(),
                all_connected.clone(),
                go.clone(),
            );
            clients.push(braid::create_task(async move {
                let (r, w) = {
                    let _permit = connecting.acquire().await?;
                    let (r, w) = braid::open_connection(addr).await?;
                    assert_eq!(r.readline().await?, b"hi\n", "connection {conn}");
                    (r, w)
                };
                all_connected.wait().await?;
                go.wait().await?;
                let data = payload(&base, conn, LEN);
                w.write(data)?;
                w.write_eof()?;
                let echoed = r.readexactly(LEN).await?;
                assert!(echoed == data, "connection {conn}: the echo differs");
                assert_eq!(
                    r.read_to_end().await?,
                    b"",
                    "connection {conn}: extra bytes"
                );
                Ok(())
            }));
        }
        braid::wait_for(all_connected.wait(), Some(Duration::from_secs(20))).await?;
        assert_eq!(server.connections(), CONNS, "all open at the same time");
        go.set();
        let connected = started.elapsed();
        for client in clients {
            braid::wait_for(client, Some(Duration::from_secs(20))).await?;
        }
        eprintln!(
            "{CONNS} connections: all connected after {connected:?}, all echoed after {:?}",
            started.elapsed()
        );
        server.close();
        braid::wait_for(server.wait_closed(), Some(WAIT)).await?;
        Ok(())
    });
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

/// Regression: a short read drains the data but not the end-of-stream that came with it. A
/// client that reads a whole echo and then waits for EOF must get it (it hung when short reads
/// cleared the read readiness: the FIN's edge had been spent before the last read).
#[test]
fn eof_arriving_with_the_last_data_is_seen_after_a_short_read() {
    common::on_loops(&[1, 2], || async {
        let server = braid::start_server(
            |reader, writer| async move {
                writer.write(b"hi\n")?;
                loop {
                    let data = reader.read(65536).await?;
                    if data.is_empty() {
                        return Ok(());
                    }
                    writer.write(&data)?;
                    writer.drain().await?;
                }
            },
            "127.0.0.1:0",
        )
        .await?;
        let (r, w) = braid::open_connection(server.local_addr()).await?;
        assert_eq!(r.readline().await?, b"hi\n");
        let payload: Vec<u8> = (0..100_000u32).map(|k| k.wrapping_mul(31) as u8).collect();
        w.write(&payload)?;
        w.write_eof()?;
        let echoed =
            braid::wait_for(r.readexactly(payload.len()), Some(Duration::from_secs(20))).await?;
        assert!(echoed == payload, "the echo differs");
        let rest = braid::wait_for(r.read_to_end(), Some(Duration::from_secs(20))).await?;
        assert!(rest.is_empty(), "{} bytes after the echo", rest.len());
        server.close();
        Ok(())
    });
}

/// `start_server` called while the runtime shuts down (here in a task's cleanup after the
/// shutdown's cancel) fails with Closed: the server could never accept, since its accept
/// task was refused. It returned a server that never accepted, and
/// the refused task was reported as "Task exception was never retrieved".
#[test]
fn start_server_during_shutdown_is_closed() {
    let rt = runtime(1);
    let lp = rt.event_loop();
    let reports = Arc::new(Mutex::new(Vec::new()));
    let seen = reports.clone();
    lp.set_exception_handler(move |ctx| seen.lock().unwrap().push(ctx.message.clone()));
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (outcome_tx, outcome_rx) = std::sync::mpsc::channel();
    drop(
        lp.spawn(async move {
            started_tx.send(()).unwrap();
            let cancelled = braid::sleep(Duration::from_secs(3600)).await;
            assert!(cancelled.is_err(), "the shutdown cancels the sleep");
            let started = braid::start_server(echo_lines, "127.0.0.1:0").await;
            outcome_tx
                .send(started.map(|s| s.local_addr()).map_err(|e| e.kind()))
                .unwrap();
            Ok(())
        })
        .unwrap(),
    );
    started_rx.recv_timeout(WAIT).unwrap();
    rt.shutdown(WAIT).unwrap();
    let outcome = outcome_rx.recv_timeout(WAIT).expect("the cleanup ran");
    assert_eq!(outcome.unwrap_err(), ErrorKind::Closed);
    assert_eq!(*reports.lock().unwrap(), Vec::<String>::new());
}
