//! TCP echo throughput: a braid echo server against a tokio echo server, side by side in one
//! run, with the same number of worker threads on both sides (`BRAID_BENCH_WORKERS`, default
//! 2), driven by the same load generator in a separate process. The CPython asyncio (and
//! uvloop) server is `benches/python/echo.py`, driven by this same load generator;
//! `cargo run --release -p braid-benchmarks` runs all of them and writes `BENCHMARKS.md`.
//!
//! Workload `echo`: 50 connections each send 200 messages of 100 bytes and read each one back
//! before sending the next (10 000 round trips per iteration, 50 in flight at any time). The
//! servers echo whatever arrives:
//!
//! - `braid`: `braid::start_server`, each connection `reader.read(4096)` → `writer.write` →
//!   `writer.drain()` (asyncio's streams, as `echo.py` does).
//! - `braid_tcp`: `braid::TcpListener` and a task per connection doing `TcpStream::read` →
//!   `write_all` (braid's sockets without the stream layer: the same code as the tokio side).
//! - `tokio`: `tokio::net::TcpListener` and a task per connection doing `read` →
//!   `write_all` (`AsyncReadExt`/`AsyncWriteExt`), `TCP_NODELAY` set as braid and asyncio set
//!   it on every connection.
//!
//! The load generator is this binary started again as `echo --load-generator ADDR
//! CONNECTIONS THREADS SIZE`: it opens the connections (blocking std sockets, `TCP_NODELAY`)
//! and splits them over `THREADS` plain threads (2). On `run N` (stdin) each thread does N
//! rounds over its connections: write one message on each, then read each one's echo back in
//! full and check it (a round counter and the connection's own byte pattern). It answers
//! `done NANOS`, the wall time from handing out the command to the last thread finishing.
//! That time is what criterion records: connecting, process start-up and the pipe commands
//! are outside it. Server and load generator share the machine's cores, the same way for
//! every server.
//!
//! After the criterion group the binary prints each server's median messages per second and
//! braid's ratios to tokio (time ratio above 1: braid is slower).
//! `BRAID_BENCH_QUICK=1` takes fewer, shorter samples.
//!
//! ```text
//! cargo bench --bench echo
//! BRAID_BENCH_WORKERS=4 cargo bench --bench echo -- echo/tokio
//! ```

mod common;

use criterion::{BenchmarkGroup, Criterion};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Concurrent connections of the load generator.
const CONNECTIONS: usize = 50;
/// Bytes per message.
const MESSAGE_SIZE: usize = 100;
/// Round trips per connection in one iteration.
const MESSAGES_PER_CONNECTION: usize = 200;
/// Plain threads of the load generator that share the connections.
const LOAD_THREADS: usize = 2;
/// Messages echoed in one iteration.
const MESSAGES: usize = CONNECTIONS * MESSAGES_PER_CONNECTION;
/// The servers' read size.
const READ_SIZE: usize = 4096;
/// The load generator's mode flag (its first argument).
const LOAD_FLAG: &str = "--load-generator";
/// How long the load generator may take to answer one command before the bench gives up.
const ANSWER_LIMIT: Duration = Duration::from_secs(60);

// ---- the load generator (a separate process) -------------------------------------------------

/// The message of connection `conn` in round `round`: the round counter, then the connection's
/// own byte pattern, so that a stale or misrouted echo does not compare equal.
fn message(conn: usize, round: u64, out: &mut [u8; MESSAGE_SIZE]) {
    out[..8].copy_from_slice(&round.to_le_bytes());
    for (i, b) in out[8..].iter_mut().enumerate() {
        *b = ((conn * 31 + i) % 251) as u8;
    }
}

/// One load thread's connections (global index, socket).
struct Share {
    conns: Vec<(usize, std::net::TcpStream)>,
    /// Rounds done so far (the next round's counter).
    round: u64,
}

impl Share {
    /// `rounds` lockstep rounds: a message on every connection, then every echo back.
    fn run(&mut self, rounds: usize) -> Result<(), String> {
        let mut sent = [0u8; MESSAGE_SIZE];
        let mut back = [0u8; MESSAGE_SIZE];
        for _ in 0..rounds {
            for (conn, sock) in &mut self.conns {
                message(*conn, self.round, &mut sent);
                sock.write_all(&sent)
                    .map_err(|e| format!("connection {conn}: write: {e}"))?;
            }
            for (conn, sock) in &mut self.conns {
                sock.read_exact(&mut back)
                    .map_err(|e| format!("connection {conn}: read: {e}"))?;
                message(*conn, self.round, &mut sent);
                if back != sent {
                    return Err(format!(
                        "connection {conn}: round {} came back altered",
                        self.round
                    ));
                }
            }
            self.round += 1;
        }
        Ok(())
    }
}

fn parse_arg(args: &[String], i: usize, what: &str) -> Result<usize, String> {
    args.get(i)
        .ok_or(format!("missing {what}"))?
        .parse()
        .map_err(|e| format!("{what}: {e}"))
}

/// The load generator's body: `ADDR CONNECTIONS THREADS SIZE` after the flag; commands on stdin
/// (`run N`), answers on stdout (`ready`, then `done NANOS` per command); exits at stdin's EOF.
fn load_generator(args: &[String]) -> Result<(), String> {
    let addr: SocketAddr = args
        .first()
        .ok_or("missing ADDR")?
        .parse()
        .map_err(|e| format!("ADDR: {e}"))?;
    let connections = parse_arg(args, 1, "CONNECTIONS")?;
    let threads = parse_arg(args, 2, "THREADS")?.clamp(1, connections.max(1));
    let size = parse_arg(args, 3, "SIZE")?;
    if size != MESSAGE_SIZE {
        return Err(format!(
            "SIZE must be {MESSAGE_SIZE} (built in), got {size}"
        ));
    }
    let mut shares: Vec<Share> = (0..threads)
        .map(|_| Share {
            conns: Vec::new(),
            round: 0,
        })
        .collect();
    for conn in 0..connections {
        let sock = std::net::TcpStream::connect(addr)
            .map_err(|e| format!("connect {conn} to {addr}: {e}"))?;
        sock.set_nodelay(true)
            .map_err(|e| format!("TCP_NODELAY: {e}"))?;
        shares[conn % threads].conns.push((conn, sock));
    }
    let (done_tx, done_rx) = mpsc::channel::<Result<(), String>>();
    let mut commands = Vec::new();
    let mut handles = Vec::new();
    for (i, mut share) in shares.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel::<usize>();
        commands.push(tx);
        let done = done_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("echo-load-{i}"))
            .spawn(move || {
                // Ends when the command channel closes; the sockets close with `share`.
                for rounds in rx {
                    if done.send(share.run(rounds)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| format!("spawn a load thread: {e}"))?;
        handles.push(handle);
    }
    let mut out = std::io::stdout().lock();
    let say = |out: &mut std::io::StdoutLock<'_>, text: &str| {
        writeln!(out, "{text}")
            .and_then(|()| out.flush())
            .map_err(|e| format!("stdout: {e}"))
    };
    say(&mut out, "ready")?;
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| format!("stdin: {e}"))?;
        let Some(rounds) = line.strip_prefix("run ") else {
            return Err(format!("unknown command {line:?}"));
        };
        let rounds: usize = rounds.trim().parse().map_err(|e| format!("run: {e}"))?;
        let start = Instant::now();
        for tx in &commands {
            tx.send(rounds).map_err(|_| "a load thread is gone")?;
        }
        for _ in &commands {
            done_rx.recv().map_err(|_| "a load thread is gone")??;
        }
        let elapsed = start.elapsed();
        say(&mut out, &format!("done {}", elapsed.as_nanos()))?;
    }
    drop(commands);
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

/// The load generator seen from the bench: a child process and its pipes.
struct LoadGenerator {
    child: Child,
    stdin: Option<ChildStdin>,
    answers: mpsc::Receiver<String>,
}

impl LoadGenerator {
    /// Starts this binary as the load generator against `addr` and waits until it is connected.
    fn start(addr: SocketAddr) -> LoadGenerator {
        let exe = std::env::current_exe().expect("the bench's own path");
        let mut child = Command::new(exe)
            .args([
                LOAD_FLAG,
                &addr.to_string(),
                &CONNECTIONS.to_string(),
                &LOAD_THREADS.to_string(),
                &MESSAGE_SIZE.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the load generator");
        let stdin = child.stdin.take();
        let stdout: ChildStdout = child.stdout.take().expect("piped");
        // Answers are read on a thread, so that every wait for one can have a time limit.
        let (tx, answers) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut load = LoadGenerator {
            child,
            stdin,
            answers,
        };
        let first = load.answer();
        assert_eq!(first, "ready", "the load generator did not connect");
        load
    }

    fn answer(&mut self) -> String {
        match self.answers.recv_timeout(ANSWER_LIMIT) {
            Ok(line) => line,
            Err(e) => {
                let _ = self.child.kill();
                panic!("no answer from the load generator ({e}); see its stderr above")
            }
        }
    }

    /// One measured run of `rounds` round trips per connection; the load generator's time.
    fn run(&mut self, rounds: usize) -> Duration {
        let stdin = self.stdin.as_mut().expect("open until finish");
        writeln!(stdin, "run {rounds}")
            .and_then(|()| stdin.flush())
            .expect("command the load generator");
        let line = self.answer();
        let nanos: u64 = line
            .strip_prefix("done ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected answer from the load generator: {line:?}"));
        Duration::from_nanos(nanos)
    }

    /// Closes its stdin (it closes its connections and exits) and waits for it.
    fn finish(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    assert!(status.success(), "the load generator failed ({status})");
                    return;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!("the load generator did not exit: killed");
                }
            }
        }
    }
}

impl Drop for LoadGenerator {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            // Dropped without finish (a panic): do not leave it running.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---- the servers -------------------------------------------------------------------------

/// One connection of braid's stream server: asyncio's `read` → `write` → `drain`.
async fn braid_stream_echo(
    reader: braid::StreamReader,
    writer: braid::StreamWriter,
) -> braid::Result<()> {
    loop {
        let data = reader.read(READ_SIZE).await?;
        if data.is_empty() {
            return Ok(());
        }
        writer.write(&data)?;
        writer.drain().await?;
    }
}

/// braid's stream server (asyncio's shape).
fn braid_stream_server(rt: &braid::Runtime) -> braid::Server {
    rt.run_until_complete(braid::start_server(braid_stream_echo, "127.0.0.1:0"))
        .expect("start the braid stream server")
}

/// One connection of braid's raw-socket server.
async fn braid_tcp_echo(sock: braid::TcpStream) -> braid::Result<()> {
    let mut buf = vec![0u8; READ_SIZE];
    loop {
        let n = sock.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        sock.write_all(&buf[..n]).await?;
    }
}

/// The accept task of braid's raw-socket server: a task per connection.
async fn braid_tcp_accept(listener: braid::TcpListener) -> braid::Result<()> {
    loop {
        let (sock, _) = listener.accept().await?;
        // Dropping the handle detaches the task.
        drop(braid::create_task(braid_tcp_echo(sock)));
    }
}

/// braid's raw-socket server: its address and its accept task.
fn braid_tcp_server(rt: &braid::Runtime) -> (SocketAddr, braid::Task<()>) {
    rt.run_until_complete(async {
        let listener = braid::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        Ok((addr, braid::create_task(braid_tcp_accept(listener))))
    })
    .expect("start the braid TcpListener server")
}

/// tokio's server: an accept task and a task per connection.
fn tokio_server(rt: &tokio::runtime::Runtime) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind the tokio server");
    let addr = listener.local_addr().expect("its address");
    let accepting = rt.spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let _ = sock.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; READ_SIZE];
                loop {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if sock.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, accepting)
}

// ---- measuring -----------------------------------------------------------------------------

/// Benchmarks `function` of group `echo` against the server at `addr` with a fresh load
/// generator; returns its median time per iteration over the measured samples.
fn bench_server(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    function: &str,
    addr: SocketAddr,
) -> Option<f64> {
    let mut load = LoadGenerator::start(addr);
    let mut per_iteration = Vec::new();
    group.bench_function(function, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += load.run(MESSAGES_PER_CONNECTION);
            }
            per_iteration.push(total.as_secs_f64() / iters.max(1) as f64);
            total
        })
    });
    load.finish();
    // The measured samples are the last sample_size() batches; the warm-up ones come first.
    let measured = &per_iteration[per_iteration.len().saturating_sub(common::sample_size())..];
    common::median(measured)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(LOAD_FLAG) {
        if let Err(e) = load_generator(&args[2..]) {
            eprintln!("echo load generator: {e}");
            std::process::exit(1);
        }
        return;
    }
    let workers = common::workers();
    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("echo");
    common::configure(&mut group);
    let mut medians: Vec<(&str, Option<f64>)> = Vec::new();
    {
        let rt = common::braid_runtime(workers);
        let server = braid_stream_server(&rt);
        medians.push((
            "braid",
            bench_server(&mut group, "braid", server.local_addr()),
        ));
        rt.run_until_complete(async {
            server.close();
            braid::wait_for(server.wait_closed(), Some(Duration::from_secs(10))).await
        })
        .expect("the braid server's connections end with the load generator");
        rt.shutdown(Duration::from_secs(5)).expect("braid shutdown");
    }
    {
        let rt = common::braid_runtime(workers);
        let (addr, accepting) = braid_tcp_server(&rt);
        medians.push(("braid_tcp", bench_server(&mut group, "braid_tcp", addr)));
        accepting.cancel();
        rt.shutdown(Duration::from_secs(5)).expect("braid shutdown");
    }
    {
        let rt = common::tokio_runtime(workers);
        let (addr, accepting) = tokio_server(&rt);
        medians.push(("tokio", bench_server(&mut group, "tokio", addr)));
        accepting.abort();
        rt.shutdown_timeout(Duration::from_secs(5));
    }
    group.finish();
    c.final_summary();
    report(workers, &medians);
}

/// Prints messages per second per server and braid's ratios to tokio, and writes them to the
/// report generator's summary directory.
fn report(workers: usize, medians: &[(&str, Option<f64>)]) {
    let measured: Vec<(&str, f64)> = medians
        .iter()
        .filter_map(|&(name, m)| Some((name, m?)))
        .collect();
    if measured.is_empty() {
        return;
    }
    println!(
        "\necho: {CONNECTIONS} connections x {MESSAGES_PER_CONNECTION} round trips of \
         {MESSAGE_SIZE} bytes per iteration ({MESSAGES} messages), {workers} worker thread(s) \
         per server; load generator: a separate process, {LOAD_THREADS} threads"
    );
    let tokio = measured.iter().find(|(n, _)| *n == "tokio").map(|m| m.1);
    let mut servers = serde_json::Map::new();
    for &(name, secs) in &measured {
        let rate = MESSAGES as f64 / secs;
        let vs = match tokio {
            Some(t) if name != "tokio" => format!(
                "   time/tokio {:>5.2}   msgs/s ÷ tokio {:>5.2}",
                secs / t,
                t / secs
            ),
            _ => String::new(),
        };
        println!(
            "  {name:<10} {:>10}   {:>10.0} messages/s{vs}",
            common::fmt_time(secs),
            rate
        );
        servers.insert(
            name.to_owned(),
            serde_json::json!({ "median_s": secs, "messages_per_s": rate }),
        );
    }
    println!("  (time/tokio above 1: braid is slower)");
    // The report generator reads the count, and hands the executable to echo.py as its load
    // generator.
    let json = serde_json::json!({
        "messages_per_iteration": MESSAGES,
        "load_generator": std::env::current_exe().ok(),
        "servers": servers,
    });
    common::write_summary("echo", &json.to_string());
}
