//! The worker's side: what `ProcessPool::build()` does in a worker process. It connects to
//! its pool's socket (see `rendezvous.rs`), points its stdout at its stderr (so that what
//! jobs print is seen), runs the initializer, says hello with the list of functions it has
//! registered, then answers jobs one at a time until the pool ends the connection or tells
//! it to leave, and exits.

use super::rendezvous::SOCKET_ENV;
use super::wire::{read_frame, write_frame, FromWorker, Outcome, ToWorker, MAGIC};
use crate::Error;
use std::io::{self, BufReader, BufWriter, Write};
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Set in a worker's environment: `<parent pid>/<build ordinal>/<thread name>`.
pub(super) const WORKER_ENV: &str = "BRAID_PROCESS_POOL_WORKER";

/// Which `build()` this process is a worker for: the `ordinal`-th (from 0) on a thread named
/// `thread` ("" for an unnamed thread).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Target {
    pub(super) parent: u32,
    pub(super) ordinal: usize,
    pub(super) thread: String,
}

impl Target {
    pub(super) fn encode(&self) -> String {
        format!("{}/{}/{}", self.parent, self.ordinal, self.thread)
    }

    fn decode(value: &str) -> Option<Target> {
        let mut parts = value.splitn(3, '/');
        Some(Target {
            parent: parts.next()?.parse().ok()?,
            ordinal: parts.next()?.parse().ok()?,
            thread: parts.next()?.to_owned(),
        })
    }

    /// This process's target, if it is a worker.
    pub(super) fn of_this_process() -> Option<Target> {
        Target::decode(std::env::var(WORKER_ENV).ok()?.as_str())
    }
}

/// A registered function as a worker runs it: decode, call (catching a panic), encode.
pub(super) type Call = Box<dyn Fn(&[u8]) -> Outcome>;

/// One registered function.
pub(super) struct Entry {
    pub(super) name: &'static str,
    pub(super) call: Call,
}

/// Serves jobs for the pool of process `parent`, then exits the process.
pub(super) fn serve(entries: &[Entry], initializer: Option<&dyn Fn()>, parent: u32) -> ! {
    let code = match serve_until_told(entries, initializer, parent) {
        Ok(code) => code,
        Err(e) => {
            crate::report_to_stderr(format_args!(
                "braid: process pool worker {} lost its pool: {e}",
                std::process::id()
            ));
            70
        }
    };
    std::process::exit(code)
}

fn serve_until_told(
    entries: &[Entry],
    initializer: Option<&dyn Fn()>,
    parent: u32,
) -> io::Result<i32> {
    // Die with the pool's thread that started us (it holds our connection and outlives us).
    // The check after it closes the window in which the parent died before the request.
    // (Elsewhere than Linux a worker whose pool's process died leaves when its connection
    // closes.)
    #[cfg(any(target_os = "linux", target_os = "android"))]
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    let parent_now = rustix::process::getppid().map(|p| p.as_raw_pid());
    if parent_now != i32::try_from(parent).ok() {
        return Ok(0);
    }
    let socket = std::env::var_os(SOCKET_ENV)
        .ok_or_else(|| io::Error::other(format!("{SOCKET_ENV} is not set")))?;
    // Close-on-exec, as std makes every socket: no child of this process ever holds it, so
    // the pool sees the connection end when this process does.
    let connection = UnixStream::connect(socket)?;
    // Until now stdout was /dev/null, where what the program printed before `build()` went.
    io::stdout().flush()?;
    rustix::stdio::dup2_stdout(io::stderr())?;
    let mut input = BufReader::new(&connection);
    let mut output = BufWriter::new(&connection);
    output.write_all(MAGIC)?;
    if let Some(init) = initializer {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(init)) {
            write_frame(&mut output, &FromWorker::InitFailed(panic_text(payload)))?;
            return Ok(1);
        }
    }
    let hello = FromWorker::Hello {
        pid: std::process::id(),
        functions: entries.iter().map(|e| e.name.to_owned()).collect(),
    };
    write_frame(&mut output, &hello)?;
    loop {
        match read_frame::<_, ToWorker>(&mut input)? {
            None | Some(ToWorker::Exit) => return Ok(0),
            Some(ToWorker::Job { id, func, arg }) => {
                let outcome = match entries.get(func as usize) {
                    Some(entry) => (entry.call)(&arg),
                    None => Outcome::Unknown(func),
                };
                match write_frame(&mut output, &FromWorker::Done { id, outcome }) {
                    // Over the frame limit: nothing was written, so the stream is still good;
                    // only this job fails.
                    Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                        let outcome = Outcome::BadResult(format!("it is too large to send ({e})"));
                        write_frame(&mut output, &FromWorker::Done { id, outcome })?;
                    }
                    done => done?,
                }
            }
        }
    }
}

/// The text of a panic payload.
pub(super) fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    Error::from_panic(payload)
        .message()
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_round_trip_with_slashes_and_colons_in_the_thread_name() {
        let t = Target {
            parent: 42,
            ordinal: 3,
            thread: "mod::test/odd".to_owned(),
        };
        assert_eq!(Target::decode(&t.encode()), Some(t));
        assert_eq!(Target::decode("garbage"), None);
    }
}
