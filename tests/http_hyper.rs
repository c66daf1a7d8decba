//! hyper 1.x on braid (`braid::hyper`, the `hyper` feature, switched on for the root crate's
//! tests by its dev-dependency): an HTTP/1 server on braid sockets, timers and tasks, fetched
//! by Python's `urllib` and by hyper's own client on braid; keep-alive, bodies, many clients,
//! hyper's header-read timeout on `BraidTimer`, and connections cancelled, aborted or
//! abandoned mid-request.

mod common;

use braid::hyper::{drive, into_error, BraidExecutor, BraidSleep, BraidTimer, HyperIo};
use braid::{ErrorKind, Event, Task, TcpListener, TcpStream};
use common::runtime;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::rt::{Executor, Timer};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{header, Method, Request, Response, StatusCode};
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

/// The bound on anything that should happen promptly: only a hang reaches it.
const LIMIT: Duration = Duration::from_secs(20);
/// The bound on a whole scenario.
const SCENARIO_LIMIT: Duration = Duration::from_secs(90);

/// Runs `scenario` as the main future of a fresh 2-loop runtime, bounded by
/// [`SCENARIO_LIMIT`], then shuts the runtime down.
fn scenario<Fut>(scenario: Fut)
where
    Fut: Future<Output = braid::Result<()>>,
{
    let rt = runtime(2);
    if let Err(e) = rt.run_until_complete(braid::wait_for(scenario, Some(SCENARIO_LIMIT))) {
        panic!("{e:?}");
    }
    rt.shutdown(Duration::from_secs(5)).unwrap();
}

/// What the test server's handlers report to the test.
#[derive(Default)]
struct Hooks {
    /// Set when a request to `/hang` has reached its handler.
    hanging: Event,
}

/// The test server's routes: `GET /` says hello, `POST /echo` sends the body back, `GET /hang`
/// sleeps for an hour (until cancelled).
async fn route(req: Request<Incoming>, hooks: Arc<Hooks>) -> braid::Result<Response<Full<Bytes>>> {
    let reply = |status: StatusCode, body: Bytes| {
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        response
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => Ok(reply(StatusCode::OK, Bytes::from_static(b"Hello, World!"))),
        (&Method::POST, "/echo") => {
            let body = req.into_body().collect().await?.to_bytes();
            Ok(reply(StatusCode::OK, body))
        }
        (&Method::GET, "/hang") => {
            hooks.hanging.set();
            braid::sleep(Duration::from_secs(3600)).await?;
            Ok(reply(StatusCode::OK, Bytes::new()))
        }
        _ => Ok(reply(StatusCode::NOT_FOUND, Bytes::new())),
    }
}

/// A braid HTTP/1 server on 127.0.0.1:0: one task accepts, one task per connection serves.
struct Server {
    addr: SocketAddr,
    accept: Task<()>,
    /// The connection tasks not yet taken by the test, in accept order; each ends with
    /// `drive`'s outcome.
    conns: Arc<braid::Queue<Task<()>>>,
    accepted: Arc<AtomicUsize>,
    hooks: Arc<Hooks>,
}

impl Server {
    /// Starts a server whose connections use `builder` (with `BraidTimer` set).
    async fn start(mut builder: http1::Builder) -> braid::Result<Server> {
        builder.timer(BraidTimer);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let conns = Arc::new(braid::Queue::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let hooks = Arc::new(Hooks::default());
        let accept = {
            let conns = conns.clone();
            let accepted = accepted.clone();
            let hooks = hooks.clone();
            braid::create_task(async move {
                loop {
                    let (stream, _) = listener.accept().await?;
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let builder = builder.clone();
                    let hooks = hooks.clone();
                    let conn = braid::create_task(async move {
                        let service = service_fn(move |req| route(req, hooks.clone()));
                        drive(builder.serve_connection(HyperIo::new(stream), service)).await
                    });
                    conns.put_nowait(conn)?;
                }
            })
        };
        Ok(Server {
            addr,
            accept,
            conns,
            accepted,
            hooks,
        })
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// The next accepted connection's task (waits at most [`LIMIT`] for it).
    async fn next_conn(&self) -> braid::Result<Task<()>> {
        braid::wait_for(self.conns.get(), Some(LIMIT)).await
    }

    /// Stops accepting and cancels the connections still open.
    async fn stop(self) -> braid::Result<()> {
        self.accept.cancel();
        let _ = braid::wait_for(self.accept, Some(LIMIT)).await;
        while let Ok(conn) = self.conns.get_nowait() {
            conn.cancel();
            let _ = braid::wait_for(conn, Some(LIMIT)).await;
        }
        Ok(())
    }
}

/// A hyper HTTP/1 client connection on braid; its connection future runs as a braid task.
async fn connect(addr: SocketAddr) -> braid::Result<(SendRequest<Full<Bytes>>, Task<()>)> {
    let stream = TcpStream::connect(addr).await?;
    let (send, conn) = hyper::client::conn::http1::handshake(HyperIo::new(stream))
        .await
        .map_err(into_error)?;
    let conn = braid::create_task(drive(conn));
    Ok((send, conn))
}

/// One request over `send`: the status and the whole body.
async fn fetch(
    send: &mut SendRequest<Full<Bytes>>,
    method: Method,
    path: &str,
    body: Bytes,
) -> braid::Result<(StatusCode, Bytes)> {
    send.ready().await.map_err(into_error)?;
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "127.0.0.1")
        .body(Full::new(body))?;
    let response = send.send_request(request).await.map_err(into_error)?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// The `python3` of this machine, if there is one.
fn python3() -> Option<&'static str> {
    let found = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    found.then_some("python3")
}

/// Fetches `url` with `urllib.request` in a python3 process (run on braid's thread pool, so
/// that the loops keep serving): the status line and the body, or None without python3.
async fn python_fetch(url: String) -> braid::Result<Option<String>> {
    let Some(python) = python3() else {
        return Ok(None);
    };
    const SCRIPT: &str = "import sys, urllib.error, urllib.request\n\
        try:\n\
        \x20   r = urllib.request.urlopen(sys.argv[1], timeout=15)\n\
        except urllib.error.HTTPError as e:\n\
        \x20   r = e\n\
        sys.stdout.write('%d\\n%s' % (r.getcode(), r.read().decode()))\n";
    let out = braid::wait_for(
        braid::to_thread(move || {
            std::process::Command::new(python)
                .args(["-c", SCRIPT, &url])
                .output()
        }),
        Some(LIMIT + Duration::from_secs(10)),
    )
    .await??;
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(Some(String::from_utf8(out.stdout).expect("utf-8")))
}

#[test]
fn python_urllib_gets_hello_world_from_a_braid_hyper_server() {
    if python3().is_none() {
        println!("SKIPPED python_urllib_gets_hello_world_from_a_braid_hyper_server: no python3");
        return;
    }
    scenario(async {
        let server = Server::start(http1::Builder::new()).await?;
        let fetched = python_fetch(format!("http://{}/", server.addr)).await?;
        assert_eq!(fetched.as_deref(), Some("200\nHello, World!"));
        // A second process, a second connection: the server keeps accepting.
        let fetched = python_fetch(format!("http://{}/missing", server.addr)).await?;
        assert_eq!(fetched.as_deref(), Some("404\n"));
        assert_eq!(server.accepted(), 2);
        server.stop().await
    });
}

#[test]
fn hyper_client_on_braid_keeps_one_connection_alive_for_several_requests() {
    scenario(async {
        let server = Server::start(http1::Builder::new()).await?;
        let (mut send, client_conn) = connect(server.addr).await?;
        for _ in 0..3 {
            let (status, body) = fetch(&mut send, Method::GET, "/", Bytes::new()).await?;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body, "Hello, World!");
        }
        // A body larger than HyperIo's 16 KiB read chunk, in both directions.
        let big: Bytes = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let (status, echoed) = fetch(&mut send, Method::POST, "/echo", big.clone()).await?;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(echoed, big);
        let (status, body) = fetch(&mut send, Method::POST, "/echo", "ping".into()).await?;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"ping"[..]));
        let (status, _) = fetch(&mut send, Method::GET, "/nowhere", Bytes::new()).await?;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            server.accepted(),
            1,
            "every request used the one connection"
        );

        // Dropping the sender closes the client's side; both connection tasks end cleanly.
        drop(send);
        braid::wait_for(client_conn, Some(LIMIT)).await?;
        let server_conn = server.next_conn().await?;
        braid::wait_for(server_conn, Some(LIMIT)).await?;
        server.stop().await
    });
}

#[test]
fn fifty_concurrent_hyper_clients_each_make_several_requests() {
    const CLIENTS: usize = 50;
    const REQUESTS: usize = 4;
    scenario(async {
        let server = Server::start(http1::Builder::new()).await?;
        let addr = server.addr;
        let clients: Vec<Task<usize>> = (0..CLIENTS)
            .map(|c| {
                braid::create_task(async move {
                    let (mut send, conn) = connect(addr).await?;
                    for r in 0..REQUESTS {
                        let (status, body) = if r % 2 == 0 {
                            fetch(&mut send, Method::GET, "/", Bytes::new()).await?
                        } else {
                            let note = Bytes::from(format!("client {c} request {r}"));
                            let (status, body) =
                                fetch(&mut send, Method::POST, "/echo", note.clone()).await?;
                            assert_eq!(body, note);
                            (status, Bytes::from_static(b"Hello, World!"))
                        };
                        assert_eq!(status, StatusCode::OK);
                        assert_eq!(body, "Hello, World!");
                    }
                    drop(send);
                    conn.await?;
                    Ok(REQUESTS)
                })
            })
            .collect();
        let mut served = 0;
        for client in clients {
            served += braid::wait_for(client, Some(SCENARIO_LIMIT / 2)).await?;
        }
        assert_eq!(served, CLIENTS * REQUESTS);
        assert_eq!(server.accepted(), CLIENTS);
        server.stop().await
    });
}

#[test]
fn header_read_timeout_on_braid_timer_disconnects_a_silent_client() {
    const TIMEOUT: Duration = Duration::from_millis(300);
    scenario(async {
        let mut builder = http1::Builder::new();
        builder.header_read_timeout(TIMEOUT);
        let server = Server::start(builder).await?;

        // Before the connect: the server may start its timer before `connect` returns here.
        let start = Instant::now();
        let silent = TcpStream::connect(server.addr).await?;
        let mut buf = [0u8; 64];
        // The server hangs up: end of stream (or a reset), not a hang.
        match braid::wait_for(silent.read(&mut buf), Some(LIMIT)).await {
            Ok(0) => {}
            Ok(n) => panic!("the server sent {n} bytes to a client that asked nothing"),
            Err(e) => assert_eq!(e.kind(), ErrorKind::Io, "{e:?}"),
        }
        let waited = start.elapsed();
        assert!(
            waited >= TIMEOUT,
            "disconnected after {waited:?}, before the timeout"
        );
        let conn = server.next_conn().await?;
        let outcome = braid::wait_for(conn, Some(LIMIT)).await;
        assert_eq!(
            outcome.as_ref().map_err(|e| e.kind()),
            Err(ErrorKind::Timeout),
            "{outcome:?}"
        );
        server.stop().await
    });
}

#[test]
fn header_read_timeout_is_armed_afresh_for_each_request_on_a_kept_alive_connection() {
    // The requests span more than one timeout, each gap far less: the connection survives
    // only if every request's head gets a timer of its own (hyper's HTTP/1 server asks
    // BraidTimer for a new sleep per request head; `reset` is tested below).
    const TIMEOUT: Duration = Duration::from_millis(1000);
    const GAP: Duration = Duration::from_millis(250);
    const REQUESTS: u32 = 6;
    scenario(async {
        let mut builder = http1::Builder::new();
        builder.header_read_timeout(TIMEOUT);
        let server = Server::start(builder).await?;
        let (mut send, client_conn) = connect(server.addr).await?;
        let start = Instant::now();
        let mut last_sent = start;
        for i in 0..REQUESTS {
            if i > 0 {
                braid::sleep(GAP).await?;
            }
            last_sent = Instant::now();
            let (status, _) = fetch(&mut send, Method::GET, "/", Bytes::new()).await?;
            assert_eq!(status, StatusCode::OK);
        }
        assert!(
            start.elapsed() > TIMEOUT,
            "the requests took less than one timeout"
        );
        assert_eq!(server.accepted(), 1);
        // Idle now: the timer armed after the last request closes the connection.
        braid::wait_for(client_conn, Some(LIMIT)).await?;
        assert!(last_sent.elapsed() >= TIMEOUT);
        let outcome = braid::wait_for(server.next_conn().await?, Some(LIMIT)).await;
        assert_eq!(
            outcome.as_ref().map_err(|e| e.kind()),
            Err(ErrorKind::Timeout),
            "{outcome:?}"
        );
        server.stop().await
    });
}

/// Awaits a hyper sleep for at most [`LIMIT`]. A `BraidSleep` is no cancellation point, so
/// `wait_for` could not cut it short: the bound is a braid sleep polled beside it.
async fn finishes(sleep: Pin<&mut dyn hyper::rt::Sleep>) -> braid::Result<()> {
    let mut sleep = sleep;
    let mut bound = braid::sleep(LIMIT);
    poll_fn(|cx| {
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut bound).poll(cx) {
            Poll::Ready(Ok(())) => panic!("the hyper sleep did not finish within {LIMIT:?}"),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

#[test]
fn braid_timer_sleeps_until_its_deadline_and_resets_both_ways() {
    scenario(async {
        let timer = BraidTimer;
        let start = Instant::now();
        finishes(timer.sleep(Duration::from_millis(30)).as_mut()).await?;
        assert!(start.elapsed() >= Duration::from_millis(30));

        // Reset sooner: an hour becomes 20 ms.
        let start = Instant::now();
        let mut sleep = timer.sleep_until(start + Duration::from_secs(3600));
        assert!(sleep.is::<BraidSleep>());
        timer.reset(&mut sleep, start + Duration::from_millis(20));
        finishes(sleep.as_mut()).await?;
        assert!(start.elapsed() >= Duration::from_millis(20));

        // Reset later, after it was polled: it does not fire at the old deadline.
        let start = Instant::now();
        let mut sleep = timer.sleep(Duration::from_millis(10));
        let polled = poll_fn(|cx| Poll::Ready(sleep.as_mut().poll(cx))).await;
        assert!(polled.is_pending());
        timer.reset(&mut sleep, start + Duration::from_millis(80));
        finishes(sleep.as_mut()).await?;
        assert!(start.elapsed() >= Duration::from_millis(80));

        // A completed sleep that is reset runs again.
        let start = Instant::now();
        timer.reset(&mut sleep, start + Duration::from_millis(20));
        finishes(sleep.as_mut()).await?;
        assert!(start.elapsed() >= Duration::from_millis(20));
        Ok(())
    });
}

#[test]
fn a_cancel_is_neither_swallowed_by_a_pending_braid_sleep_nor_fires_it() {
    scenario(async {
        // Returned once its first poll has parked it on both sleeps.
        let task = common::queued(async {
            // hyper's pattern: a timer polled beside a real await point.
            let mut timer = BraidTimer.sleep(Duration::from_secs(3600));
            let mut io = braid::sleep(Duration::from_secs(3600));
            poll_fn(|cx| {
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ok("the timer fired"));
                }
                match Pin::new(&mut io).poll(cx) {
                    Poll::Ready(Ok(())) => Poll::Ready(Ok("the sleep ended")),
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await
        })
        .await?;
        assert!(task.cancel());
        let outcome = braid::wait_for(task, Some(LIMIT)).await;
        assert!(
            outcome.as_ref().is_err_and(|e| e.is_cancelled()),
            "{outcome:?}"
        );
        Ok(())
    });
}

#[test]
fn braid_executor_runs_what_hyper_hands_it_from_a_loop_and_from_a_plain_thread() {
    let rt = runtime(2);
    // Bound to a loop: callable from a thread that runs no loop.
    let exec = BraidExecutor::on(rt.event_loop());
    let (tx, rx) = std::sync::mpsc::channel();
    let from_thread = std::thread::spawn(move || {
        exec.execute(async move {
            braid::sleep(Duration::from_millis(5)).await.unwrap();
            let on_loop = braid::try_get_running_loop().is_some();
            tx.send(on_loop).unwrap();
        })
    });
    from_thread.join().unwrap();
    assert_eq!(rx.recv_timeout(LIMIT), Ok(true));

    // Unbound: spawns on the loop running the caller.
    let out = rt.run_until_complete(braid::wait_for(
        async {
            let done = braid::create_future::<u32>();
            let setter = done.clone();
            BraidExecutor::new().execute(async move {
                let _ = setter.set_result(42);
            });
            done.await
        },
        Some(LIMIT),
    ));
    assert_eq!(out.unwrap(), 42);
    rt.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
#[should_panic(expected = "needs a running braid event loop")]
fn an_unbound_braid_executor_outside_a_loop_panics_with_a_clear_message() {
    BraidExecutor::new().execute(async {});
}

#[test]
fn cancelling_a_connection_task_mid_request_ends_it_cancelled_and_fails_the_client() {
    scenario(async {
        let server = Server::start(http1::Builder::new()).await?;
        let (mut send, client_conn) = connect(server.addr).await?;
        let pending = braid::create_task(async move {
            fetch(&mut send, Method::GET, "/hang", Bytes::new()).await
        });
        braid::wait_for(server.hooks.hanging.wait(), Some(LIMIT)).await?;
        let conn = server.next_conn().await?;
        assert!(conn.cancel_with("server shutting down"));
        // The handler's sleep takes the cancel; hyper fails the connection; into_error sees
        // the task's cancel request: the task ends cancelled, with the request's message.
        let outcome = braid::wait_for(conn, Some(LIMIT)).await;
        assert!(
            outcome
                .as_ref()
                .is_err_and(|e| e.is_cancelled() && e.message() == Some("server shutting down")),
            "{outcome:?}"
        );
        // The client sees the connection close under its request: an error, not a hang.
        let fetched = braid::wait_for(pending, Some(LIMIT)).await;
        assert!(fetched.is_err_and(|e| !e.is_timeout() && !e.is_cancelled()));
        let _ = braid::wait_for(client_conn, Some(LIMIT)).await;
        server.stop().await
    });
}

#[test]
fn cancelling_an_idle_kept_alive_connection_is_delivered_by_hyper_io() {
    scenario(async {
        let server = Server::start(http1::Builder::new()).await?;
        let (mut send, client_conn) = connect(server.addr).await?;
        let (status, _) = fetch(&mut send, Method::GET, "/", Bytes::new()).await?;
        assert_eq!(status, StatusCode::OK);
        // The connection now waits in HyperIo's read for the next request.
        let conn = server.next_conn().await?;
        assert!(conn.cancel_with("idle too long"));
        // hyper takes the failed read of an idle connection for a clean close: `drive`
        // ends the task cancelled all the same, with the request's message.
        let outcome = braid::wait_for(conn, Some(LIMIT)).await;
        assert!(
            outcome
                .as_ref()
                .is_err_and(|e| e.is_cancelled() && e.message() == Some("idle too long")),
            "{outcome:?}"
        );
        // The server's side is gone: the client's connection ends.
        braid::wait_for(client_conn, Some(LIMIT)).await?;
        let again = fetch(&mut send, Method::GET, "/", Bytes::new()).await;
        assert!(again.is_err());
        server.stop().await
    });
}

/// A cancel pending when `drive` is first polled (made before it, in the same step) is
/// delivered by HyperIo's first read, which hyper takes for a clean close of an idle
/// connection: `drive` must still end the task cancelled. Before, it counted that request
/// as one made before it and returned `Ok`, and the cancel was lost.
#[test]
fn a_cancel_pending_when_drive_begins_ends_the_connection_task_cancelled() {
    scenario(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let client = TcpStream::connect(listener.local_addr()?).await?;
        let (stream, _) = listener.accept().await?;
        let conn = braid::create_task(async move {
            braid::current_task()
                .expect("in a task")
                .cancel_with("not now");
            let service = service_fn(|_req: Request<Incoming>| async {
                Ok::<_, braid::Error>(Response::new(Full::new(Bytes::from_static(b"hi"))))
            });
            drive(http1::Builder::new().serve_connection(HyperIo::new(stream), service)).await
        });
        let outcome = braid::wait_for(conn, Some(LIMIT)).await;
        drop(client);
        assert!(
            outcome
                .as_ref()
                .is_err_and(|e| e.is_cancelled() && e.message() == Some("not now")),
            "a cancelled connection task finished with {outcome:?}"
        );
        Ok(())
    });
}

#[test]
fn aborting_a_connection_task_mid_request_drops_the_connection() {
    scenario(async {
        let server = Server::start(http1::Builder::new()).await?;
        let (mut send, client_conn) = connect(server.addr).await?;
        let pending = braid::create_task(async move {
            fetch(&mut send, Method::GET, "/hang", Bytes::new()).await
        });
        braid::wait_for(server.hooks.hanging.wait(), Some(LIMIT)).await?;
        let conn = server.next_conn().await?;
        conn.abort();
        let outcome = braid::wait_for(conn, Some(LIMIT)).await;
        assert!(outcome.is_err_and(|e| e.is_cancelled()));
        let fetched = braid::wait_for(pending, Some(LIMIT)).await;
        assert!(fetched.is_err_and(|e| !e.is_timeout() && !e.is_cancelled()));
        let _ = braid::wait_for(client_conn, Some(LIMIT)).await;
        server.stop().await
    });
}

#[test]
fn a_client_that_hangs_up_mid_body_ends_the_server_connection_with_an_error() {
    scenario(async {
        let server = Server::start(http1::Builder::new()).await?;
        let client = TcpStream::connect(server.addr).await?;
        client
            .write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\nonly ten..")
            .await?;
        let conn = server.next_conn().await?;
        drop(client);
        let outcome = braid::wait_for(conn, Some(LIMIT)).await;
        assert!(
            outcome
                .as_ref()
                .is_err_and(|e| !e.is_cancelled() && !e.is_timeout()),
            "{outcome:?}"
        );
        server.stop().await
    });
}

/// A stream that is always readable (a fixed text) and takes every write: no braid socket, so
/// no cancellation point of its own.
struct Plain {
    text: &'static [u8],
    read: usize,
}

impl futures::io::AsyncRead for Plain {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let rest = &self.text[self.read..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.read += n;
        Poll::Ready(Ok(n))
    }
}

impl futures::io::AsyncWrite for Plain {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(
        self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[test]
fn hyper_io_reads_and_writes_are_cancellation_points_that_consume_nothing() {
    use hyper::rt::{Read, ReadBuf, Write};
    scenario(async {
        let task = braid::create_task(async {
            let mut io = HyperIo::new(Plain {
                text: b"hello",
                read: 0,
            });
            let mut storage = [0u8; 16];
            let me = braid::current_task().expect("in a task");

            me.cancel();
            let mut buf = ReadBuf::new(&mut storage);
            let read = poll_fn(|cx| Pin::new(&mut io).poll_read(cx, buf.unfilled())).await;
            let err = braid::Error::from(read.unwrap_err());
            assert!(err.is_cancelled(), "{err:?}");
            assert_eq!(io.get_ref().read, 0, "a cancelled read took nothing");
            me.uncancel();

            me.cancel();
            let write = poll_fn(|cx| Pin::new(&mut io).poll_write(cx, b"x")).await;
            assert!(braid::Error::from(write.unwrap_err()).is_cancelled());
            me.uncancel();

            // The cancel was delivered once: the next read goes through, whole.
            let mut buf = ReadBuf::new(&mut storage);
            poll_fn(|cx| Pin::new(&mut io).poll_read(cx, buf.unfilled())).await?;
            assert_eq!(buf.filled(), b"hello");
            Ok(())
        });
        braid::wait_for(task, Some(LIMIT)).await
    });
}

/// `target/<profile>/examples/<name>`, next to this test's `deps/` directory, if built.
fn built_example(name: &str) -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe
        .parent()?
        .parent()?
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    path.is_file().then_some(path)
}

/// One blocking `GET /` with `Connection: close`: the whole response.
fn blocking_get(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response
}

#[test]
fn the_http_server_example_answers_then_exits_after_its_requests() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    // `cargo test` builds the examples; `cargo test --test http_hyper` alone does not.
    let Some(exe) = built_example("http_server") else {
        println!("SKIPPED: examples/http_server is not built (cargo build --examples)");
        return;
    };
    let mut child = Command::new(exe)
        .args(["--addr", "127.0.0.1:0", "--requests", "3"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the example");
    // Killed if the test fails before it exits.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let mut child = Reap(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap_or_default());
        }
    });
    let first = rx.recv_timeout(LIMIT).expect("the example printed nothing");
    let url = first
        .strip_prefix("serving on http://")
        .and_then(|rest| rest.strip_suffix('/'))
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    for _ in 0..3 {
        let response = blocking_get(&url);
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.ends_with("\r\n\r\nHello, World!"), "{response}");
    }
    assert_eq!(rx.recv_timeout(LIMIT).as_deref(), Ok("served 3 requests"));
    // Its stdout closed: it is exiting; its status must be success.
    assert_eq!(
        rx.recv_timeout(LIMIT),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
    );
    let status = child.0.wait().expect("wait");
    assert!(status.success(), "{status}");
}

#[test]
fn drive_is_unpin_for_a_connection_future_that_is_not_and_refuses_a_second_finish() {
    // API.md: every future braid returns is `Unpin`. An `async` block is not; `drive`'s
    // future around one must still be (this call does not compile otherwise).
    fn unpin<T: Unpin>(future: T) -> T {
        future
    }
    scenario(async {
        let mut driven = unpin(drive(async { Ok::<u8, hyper::Error>(7) }));
        assert_eq!(poll_fn(|cx| Pin::new(&mut driven).poll(cx)).await?, 7);
        // Polled once more after it finished: an error, not a second poll of the connection.
        let again = poll_fn(|cx| Pin::new(&mut driven).poll(cx)).await;
        assert_eq!(again.unwrap_err().kind(), ErrorKind::InvalidState);
        Ok(())
    });
}
