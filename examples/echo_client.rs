//! asyncio's "TCP echo client using streams", in braid, fed from stdin: it connects with
//! `braid::open_connection`, then for every line read from stdin sends the line, waits for the
//! echo (`readline`) and prints it on stdout. It closes the connection and exits at the end of
//! stdin. Reading stdin blocks, so each line is read with `braid::to_thread`, off the loops.
//! A last line without a newline is sent with one (the server echoes whole lines).
//!
//! ```text
//! cargo run --example echo_server &               # serving on 127.0.0.1:8888
//! printf 'a\nb\n' | cargo run --example echo_client
//! a
//! b
//! cargo run --example echo_client -- --addr 127.0.0.1:9000   # type lines; Ctrl-D ends
//! ```
//!
//! Progress (connected, closed) goes to stderr, so stdout holds exactly the echoed lines.

use clap::Parser;
use std::io::{BufRead, Write};

/// The command line.
#[derive(Parser, Debug)]
#[command(
    name = "echo_client",
    about = "braid's TCP echo client (asyncio streams)"
)]
struct Args {
    /// The echo server's address.
    #[arg(long, default_value = "127.0.0.1:8888")]
    addr: String,
}

/// The next line of stdin with its newline (added if the last line has none); `None` at EOF.
fn next_stdin_line() -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    if std::io::stdin().lock().read_until(b'\n', &mut line)? == 0 {
        return Ok(None);
    }
    if !line.ends_with(b"\n") {
        line.push(b'\n');
    }
    Ok(Some(line))
}

async fn main_coroutine(args: Args) -> braid::Result<()> {
    let (reader, writer) = braid::open_connection(args.addr.clone()).await?;
    eprintln!("connected to {}", writer.peer_addr()?);
    let mut lines = 0u64;
    while let Some(line) = braid::to_thread(next_stdin_line).await?? {
        writer.write(&line)?;
        writer.drain().await?;
        let echo = reader.readline().await?;
        if echo.is_empty() {
            return Err(braid::Error::msg(format!(
                "the server at {} closed the connection after {lines} echoed line(s)",
                args.addr
            )));
        }
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(&echo)?;
        stdout.flush()?;
        lines += 1;
    }
    writer.close();
    writer.wait_closed().await?;
    eprintln!("closed after {lines} line(s)");
    Ok(())
}

fn main() -> braid::Result<()> {
    braid::run(main_coroutine(Args::parse()))
}
