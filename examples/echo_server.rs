//! asyncio's "TCP echo server using streams", in braid: every line a client sends comes back
//! to it (`readline`, `write`, `drain`), each connection in its own task, the tasks spread over
//! the runtime's loop threads. Connections are logged to stderr with the peer's address and
//! the loop the handler runs on (a task may move between loops at any await, so the log of a
//! connection's end names the loop it ended on).
//!
//! ```text
//! cargo run --example echo_server                                # 127.0.0.1:8888, until Ctrl-C
//! cargo run --example echo_server -- --addr 127.0.0.1:0 --workers 4 --max-connections 2
//! ```
//!
//! The first line on stdout is `serving on ADDR`, with the address actually bound (so that a
//! script or test that asks for port 0 learns the port). Without `--max-connections` it serves
//! until Ctrl-C ends the process; with `--max-connections N` it stops accepting after the N-th
//! connection, waits until every connection has ended, and exits with status 0. Pair it with
//! `examples/echo_client.rs`:
//!
//! ```text
//! $ printf 'a\nb\n' | cargo run --example echo_client
//! a
//! b
//! ```

use clap::Parser;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The command line.
#[derive(Parser, Debug)]
#[command(
    name = "echo_server",
    about = "braid's TCP echo server (asyncio streams)"
)]
struct Args {
    /// The address to listen on (port 0: any free port; the bound one is printed).
    #[arg(long, default_value = "127.0.0.1:8888")]
    addr: String,
    /// Event loop threads of the runtime.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    workers: u64,
    /// Stop accepting after this many connections, wait until they have all ended, and exit.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: Option<u64>,
}

/// What the connection handlers share with the main task.
struct Shared {
    /// Connections accepted so far.
    accepted: AtomicU64,
    /// `--max-connections`, if given.
    max: Option<u64>,
    /// Set when the last allowed connection has been accepted.
    enough: braid::Event,
}

/// One connection: echo each line until the client closes its side.
async fn handle_echo(
    reader: braid::StreamReader,
    writer: braid::StreamWriter,
    shared: Arc<Shared>,
) -> braid::Result<()> {
    let peer = writer.peer_addr()?;
    let number = shared.accepted.fetch_add(1, Ordering::Relaxed) + 1;
    if let Some(max) = shared.max {
        if number > max {
            // Accepted in the moment before the server closed: turn it away.
            eprintln!("refused {peer}: --max-connections {max} reached");
            writer.close();
            return writer.wait_closed().await;
        }
        if number == max {
            shared.enough.set();
        }
    }
    eprintln!(
        "connection {number} from {peer} on loop {}",
        braid::get_running_loop().id()
    );
    let mut lines = 0u64;
    loop {
        let line = reader.readline().await?;
        if line.is_empty() {
            break; // EOF: the client has finished sending
        }
        writer.write(&line)?;
        writer.drain().await?;
        lines += 1;
    }
    writer.close();
    writer.wait_closed().await?;
    eprintln!(
        "connection {number} from {peer} closed after {lines} line(s), on loop {}",
        braid::get_running_loop().id()
    );
    Ok(())
}

async fn main_coroutine(args: Args) -> braid::Result<()> {
    let shared = Arc::new(Shared {
        accepted: AtomicU64::new(0),
        max: args.max_connections,
        enough: braid::Event::new(),
    });
    let handler_shared = shared.clone();
    let server = braid::start_server(
        move |reader, writer| handle_echo(reader, writer, handler_shared.clone()),
        args.addr,
    )
    .await?;
    println!("serving on {}", server.local_addr());
    match args.max_connections {
        None => server.serve_forever().await,
        Some(max) => {
            shared.enough.wait().await?;
            server.close();
            eprintln!("accepted {max} connection(s): closed, waiting for them to end");
            server.wait_closed().await
        }
    }
}

fn main() -> braid::Result<()> {
    let args = Args::parse();
    let workers = usize::try_from(args.workers).unwrap_or(usize::MAX);
    let rt = braid::Runtime::builder()
        .workers(workers)
        .thread_name("echo-server")
        .build()?;
    let served = rt.run_until_complete(main_coroutine(args));
    rt.shutdown(Duration::from_secs(5))?;
    served
}
