//! braid's stream server talking to CPython's asyncio (API.md "Streams and sockets", issue 5):
//! `start_server` echoing lines, driven by `tests/python/echo_client.py`, an
//! `asyncio.open_connection` client run with the machine's `python3`. The client checks every
//! echo, half-closes, and expects the server to close; the server counts the lines it saw.
//! The Python process runs on braid's thread pool (`braid::to_thread`), so the runtime keeps
//! serving while it waits. Skipped, with a message, when `python3` is not installed.

use braid::{Result, StreamReader, StreamWriter};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;
use common::*;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/echo_client.py");

/// The version line of `python3`, or `None` (with a message) if it cannot run.
fn python3() -> Option<String> {
    match Command::new("python3").arg("--version").output() {
        Ok(out) if out.status.success() => {
            Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        }
        Ok(out) => {
            eprintln!("SKIPPED: `python3 --version` failed: {:?}", out.status);
            None
        }
        Err(e) => {
            eprintln!("SKIPPED: python3 is not available: {e}");
            None
        }
    }
}

/// Echoes lines until EOF, counting them; the connection closes when it returns.
async fn counting_echo(r: StreamReader, w: StreamWriter, lines: Arc<AtomicUsize>) -> Result<()> {
    loop {
        let line = r.readline().await?;
        if line.is_empty() {
            return Ok(());
        }
        lines.fetch_add(1, Ordering::Relaxed);
        w.write(&line)?;
        w.drain().await?;
    }
}

/// Runs the Python client against a braid echo server on a 2-loop runtime and checks its
/// exit status, its summary line and the server's line count.
fn python_client_echoes(n: usize, mode: &'static str) {
    let Some(version) = python3() else { return };
    eprintln!("using {version}");
    on_loops(&[2], || async move {
        let lines = Arc::new(AtomicUsize::new(0));
        let counter = lines.clone();
        let server = braid::start_server(
            move |r, w| counting_echo(r, w, counter.clone()),
            "127.0.0.1:0",
        )
        .await?;
        let port = server.local_addr().port().to_string();
        let client = braid::to_thread(move || {
            Command::new("python3")
                .arg(SCRIPT)
                .arg(port)
                .arg(n.to_string())
                .arg(mode)
                .output()
        });
        // The script bounds each of its waits by 10 s; this bounds the whole run.
        let out = braid::wait_for(client, Some(Duration::from_secs(60))).await??;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "echo_client.py {mode} exited with {:?}\nstdout: {stdout}\nstderr: {stderr}",
            out.status
        );
        assert!(
            stdout.starts_with(&format!("ok: {n} lines,")),
            "unexpected summary: {stdout}"
        );
        braid::wait_for(
            async {
                server.close();
                server.wait_closed().await
            },
            Some(WAIT),
        )
        .await?;
        assert_eq!(lines.load(Ordering::Relaxed), n, "lines the server echoed");
        Ok(())
    });
}

/// 300 lines, each sent once the previous one came back.
#[test]
fn python_asyncio_client_echoes_line_by_line() {
    python_client_echoes(300, "lines");
}

/// 3000 lines (about 450 KB) sent in one burst before any echo is read: both sides' buffers
/// and `drain`s carry it.
#[test]
fn python_asyncio_client_echoes_a_burst() {
    python_client_echoes(3000, "burst");
}
