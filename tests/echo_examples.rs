//! The echo pair of `examples/echo_server.rs` and `examples/echo_client.rs`, run as the
//! processes a user starts: the server on port 0 with `--max-connections 2` (it prints the
//! port it bound on its first stdout line), two clients fed lines on stdin, each of which
//! must print exactly the lines it sent; then the server must exit by itself with status 0,
//! having logged both connections.
//!
//! `cargo test` builds the examples beside this test (`target/<profile>/examples/`); a run
//! that selects only this test (`cargo test --test echo_examples`) does not, and the test then
//! says so and passes without checking anything (build them with `cargo build --examples`).
//! Every wait has a deadline, and a process still running when the test fails is killed.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long any one step may take (generous: the machine may be busy compiling).
const DEADLINE: Duration = Duration::from_secs(30);

/// `target/<profile>/examples/<name>`, next to this test's `deps/` directory, if built.
fn example(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    let path = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    path.is_file().then_some(path)
}

/// A child process killed (and reaped) when dropped before it was waited for.
struct Running {
    name: &'static str,
    child: Option<Child>,
}

impl Running {
    fn spawn(name: &'static str, cmd: &mut Command) -> Running {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {name}: {e}"));
        Running {
            name,
            child: Some(child),
        }
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("not waited for yet")
    }

    /// Waits for the exit up to `limit`; panics (killing it) past the limit.
    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child().try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            if start.elapsed() > limit {
                panic!("{} did not exit within {limit:?}: killed", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Reads all of `pipe` on a thread; the receiver gets the bytes at EOF.
fn collect(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = pipe.read_to_end(&mut all);
        let _ = tx.send(all);
    });
    rx
}

/// Runs the client against `addr` with `input` on stdin; its stdout.
fn run_client(client: &PathBuf, addr: &str, input: &[u8]) -> Vec<u8> {
    let mut run = Running::spawn(
        "echo_client",
        Command::new(client)
            .args(["--addr", addr])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let stdout = collect(run.child().stdout.take().expect("piped"));
    let stderr = collect(run.child().stderr.take().expect("piped"));
    let mut stdin = run.child().stdin.take().expect("piped");
    stdin.write_all(input).expect("write the client's stdin");
    drop(stdin); // EOF: the client finishes
    let status = run.wait(DEADLINE);
    let out = stdout.recv_timeout(DEADLINE).expect("client stdout");
    let err = stderr.recv_timeout(DEADLINE).expect("client stderr");
    assert!(
        status.success(),
        "echo_client failed ({status}); stderr:\n{}",
        String::from_utf8_lossy(&err)
    );
    out
}

#[test]
fn echo_client_prints_every_line_the_echo_server_sends_back_and_the_server_stops_after_max_connections(
) {
    let (Some(server), Some(client)) = (example("echo_server"), example("echo_client")) else {
        eprintln!(
            "SKIPPED: the echo_server/echo_client examples are not built next to this test \
             (run plain `cargo test`, or `cargo build --examples` first)"
        );
        return;
    };
    let mut serving = Running::spawn(
        "echo_server",
        Command::new(&server)
            .args([
                "--addr",
                "127.0.0.1:0",
                "--workers",
                "2",
                "--max-connections",
                "2",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let server_err = collect(serving.child().stderr.take().expect("piped"));

    // The first stdout line names the bound address.
    let (tx, rx) = mpsc::channel();
    let server_out = serving.child().stdout.take().expect("piped");
    std::thread::spawn(move || {
        let mut first = String::new();
        let mut lines = BufReader::new(server_out);
        let _ = lines.read_line(&mut first);
        let _ = tx.send(first);
        let _ = std::io::copy(&mut lines, &mut std::io::sink());
    });
    let first = rx
        .recv_timeout(DEADLINE)
        .expect("the server prints its address");
    let addr = first
        .trim_end()
        .strip_prefix("serving on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    assert!(!addr.ends_with(":0"), "the bound port is printed: {addr}");

    let one = b"a\nb\nhello, world\n";
    assert_eq!(
        String::from_utf8_lossy(&run_client(&client, &addr, one)),
        String::from_utf8_lossy(one)
    );
    // A last line without a newline comes back with one; bytes are echoed as they are.
    let two = b"x\n\xff\xfe raw\ny";
    assert_eq!(run_client(&client, &addr, two), b"x\n\xff\xfe raw\ny\n");

    let status = serving.wait(DEADLINE);
    let log = String::from_utf8_lossy(&server_err.recv_timeout(DEADLINE).expect("server stderr"))
        .into_owned();
    assert!(status.success(), "echo_server failed ({status}):\n{log}");
    for n in 1..=2 {
        assert!(
            log.contains(&format!("connection {n} from 127.0.0.1:")),
            "connection {n} was not logged:\n{log}"
        );
    }
    assert!(log.contains(" on loop "), "{log}");
    // Each client sent three lines.
    assert_eq!(log.matches("closed after 3 line(s)").count(), 2, "{log}");
}
