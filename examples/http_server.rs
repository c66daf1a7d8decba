//! hyper's "Hello, World!" HTTP/1 server, on braid: a braid `TcpListener` accepts, each
//! connection is served by `hyper::server::conn::http1` in a braid task of its own (spread
//! over the runtime's loop threads), with braid's timers behind hyper's timeouts
//! (`BraidTimer`) and braid's sockets behind hyper's I/O (`HyperIo`). Needs the `hyper`
//! feature (`cargo test` and `cargo build --examples` switch it on by themselves).
//!
//! ```text
//! cargo run --example http_server                               # 127.0.0.1:8080, until Ctrl-C
//! cargo run --example http_server -- --addr 127.0.0.1:0 --requests 3
//! curl http://127.0.0.1:8080/                                   # Hello, World!
//! ```
//!
//! The first line on stdout is `serving on http://ADDR/`, with the address actually bound (so
//! that a script that asks for port 0 learns the port). With `--requests N` the server stops
//! after the N-th request: it stops accepting, lets every connection finish the response in
//! flight and close (hyper's graceful shutdown), prints `served N requests` and exits with
//! status 0.

use braid::hyper::{drive, BraidTimer, HyperIo};
use braid::{Event, Task, TcpListener, TcpStream};
use clap::Parser;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use std::future::{poll_fn, Future};
use std::io::Write;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The command line.
#[derive(Parser, Debug)]
#[command(name = "http_server", about = "hyper's Hello, World! server on braid")]
struct Args {
    /// The address to listen on (port 0: any free port; the bound one is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Stop after this many requests, let the connections finish, and exit.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    requests: Option<u64>,
    /// Event loop threads of the runtime.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    workers: u64,
}

/// What the connections share with the main task.
struct Shared {
    /// Requests answered so far.
    served: AtomicU64,
    /// `--requests`, if given.
    limit: Option<u64>,
    /// Set at the last allowed request: connections finish what is in flight and close.
    stop: Event,
    /// The connection tasks, to wait for at the end.
    conns: Mutex<Vec<Task<()>>>,
}

/// The one route: every request gets "Hello, World!".
async fn hello(
    _req: Request<Incoming>,
    shared: Arc<Shared>,
) -> braid::Result<Response<Full<Bytes>>> {
    let n = shared.served.fetch_add(1, Ordering::Relaxed) + 1;
    if shared.limit == Some(n) {
        shared.stop.set();
    }
    Ok(Response::new(Full::new(Bytes::from_static(
        b"Hello, World!",
    ))))
}

/// Serves one connection until the client closes it or the server stops. Ends cancelled if
/// its task is cancelled (`drive`).
async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) -> braid::Result<()> {
    let service = {
        let shared = shared.clone();
        service_fn(move |req| hello(req, shared.clone()))
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(BraidTimer)
        .header_read_timeout(Duration::from_secs(10));
    let conn = builder.serve_connection(HyperIo::new(stream), service);
    drive(async {
        let mut conn = pin!(conn);
        let mut stopping = pin!(shared.stop.wait());
        let mut asked = false;
        poll_fn(|cx| {
            // Once the server stops, hyper finishes the response in flight, then closes.
            if !asked && stopping.as_mut().poll(cx).is_ready() {
                conn.as_mut().graceful_shutdown();
                asked = true;
            }
            conn.as_mut().poll(cx)
        })
        .await
    })
    .await
}

/// Accepts connections until cancelled, one task each.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) -> braid::Result<()> {
    // The list is pruned of finished connections whenever it doubles: a server that runs
    // until it is killed kept every connection's finished task (550 bytes each) for good.
    let mut prune_at = 64;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) if e.is_cancelled() => return Err(e),
            Err(e) => {
                // Out of file descriptors, say: the listener is still usable; as asyncio
                // does, pause a little rather than spin on the same error.
                eprintln!("accept: {e}");
                braid::sleep(Duration::from_millis(100)).await?;
                continue;
            }
        };
        let task = {
            let shared = shared.clone();
            braid::create_task(async move {
                match serve_connection(stream, shared).await {
                    // Told here, so that a pruned task's error is not reported again as
                    // "never retrieved".
                    Err(e) if !e.is_cancelled() => {
                        eprintln!("connection from {peer}: {e}");
                        Ok(())
                    }
                    outcome => outcome,
                }
            })
        };
        let mut conns = shared.conns.lock().unwrap();
        if conns.len() >= prune_at {
            conns.retain(|conn| !conn.done());
            prune_at = (conns.len() * 2).max(64);
        }
        conns.push(task);
    }
}

async fn main_coroutine(args: Args) -> braid::Result<()> {
    let listener = TcpListener::bind(args.addr).await?;
    println!("serving on http://{}/", listener.local_addr()?);
    std::io::stdout().flush()?;
    let shared = Arc::new(Shared {
        served: AtomicU64::new(0),
        limit: args.requests,
        stop: Event::new(),
        conns: Mutex::new(Vec::new()),
    });
    let accept = braid::create_task(accept_loop(listener, shared.clone()));
    // Without --requests nothing sets it: the server runs until the process is killed.
    shared.stop.wait().await?;
    accept.cancel();
    let _ = accept.await;
    let conns = std::mem::take(&mut *shared.conns.lock().unwrap());
    // Each finishes its response and closes; those still open after 10 s in all are cut off
    // (10 s each, one after another, could take 10 s per hanging connection).
    let deadline = Instant::now() + Duration::from_secs(10);
    for conn in conns {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Err(e) = braid::wait_for(conn, Some(left)).await {
            if !e.is_cancelled() {
                eprintln!("a connection did not close cleanly: {e}");
            }
        }
    }
    println!("served {} requests", shared.served.load(Ordering::Relaxed));
    Ok(())
}

fn main() -> braid::Result<()> {
    let args = Args::parse();
    let rt = braid::Runtime::builder()
        .workers(args.workers as usize)
        .build()?;
    let outcome = rt.run_until_complete(main_coroutine(args));
    rt.shutdown(Duration::from_secs(5))?;
    outcome
}
