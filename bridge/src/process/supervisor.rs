//! The I/O side of the pool: one thread per worker slot starts the worker, waits for it to
//! connect (see `rendezvous.rs`), talks to it (one job at a time: write the job, read the
//! answer), lets it go, reaps it and starts the next; the decisions are the core's. A worker
//! that is stopped (a cancel, a time limit) closes its connection by dying, which is how its
//! slot's thread, blocked on a read, learns of it: only the worker holds its end. An idle
//! worker has no read pending: its slot's thread, waiting for work, looks every
//! [`IDLE_CHECK`] whether it has exited, and a job written to a worker that turns out to be
//! gone goes back to the queue, since it never ran.
//!
//! A slot's thread blocks SIGPIPE, so that a write to a dead worker's socket fails with `EPIPE`
//! rather than killing the program when SIGPIPE is at its default disposition (as many
//! command-line programs set it). A panic in a slot's thread while it talks to a worker (in a
//! done callback's caller, a result's `Drop`) ends that worker as a crash; the thread goes on.

use super::core::{Core, Exit, Next, Sig};
use super::rendezvous::{Listening, Rendezvous, SOCKET_ENV};
use super::wire::{read_frame, skip_to_magic, write_frame, FromWorker, Outcome, ToWorker};
use super::worker::{panic_text, WORKER_ENV};
use crate::sync::Arc;
use crate::{Error, ErrorKind, Result};
use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::Shutdown;
use std::os::unix::process::ExitStatusExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How often a slot's thread checks that its idle worker is still alive: how long a worker
/// that died idle (the OOM killer, an operator's `kill`) stays unnoticed and unreaped.
const IDLE_CHECK: Duration = Duration::from_millis(100);

/// How to start a worker.
#[derive(Debug)]
pub(super) struct Launch {
    pub(super) exe: PathBuf,
    pub(super) args: Vec<OsString>,
    /// The value of [`WORKER_ENV`].
    pub(super) target: String,
    /// The registered functions' names, in order: a worker must say the same.
    pub(super) functions: Vec<String>,
    /// Where the workers connect to.
    pub(super) rendezvous: Rendezvous,
}

/// Sends `sig` to `pid` (the core calls this only for a pid not yet reaped).
pub(super) fn send_signal(pid: u32, sig: Sig) {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    let signal = match sig {
        Sig::Term => rustix::process::Signal::TERM,
        Sig::Kill => rustix::process::Signal::KILL,
    };
    // ESRCH cannot happen to an unreaped child; nothing else is worth reporting here.
    let _ = rustix::process::kill_process(pid, signal);
}

/// The body of slot `slot`'s thread: workers one after another, until the core says the
/// slot is over.
pub(super) fn run_slot(core: &Arc<Core>, slot: usize, launch: &Launch) {
    block_sigpipe();
    // A panic outside a worker's conversation is a bug in the pool: the slot is given up, its
    // job failed, rather than left looking alive to the core (which would wait for it).
    let _abandon = Abandon { core, slot };
    slot_loop(core, slot, launch);
}

/// Dropped by a panic, marks the slot gone (see [`Core::abandon`]).
struct Abandon<'a> {
    core: &'a Core,
    slot: usize,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.core
                .abandon(self.slot, "the process pool's thread for a worker panicked");
        }
    }
}

/// Blocks SIGPIPE on this thread: a write to the socket of a worker that has gone then fails
/// with `EPIPE` (which the thread handles) whatever the program's SIGPIPE disposition. The
/// workers this thread starts do not inherit the mask: std's `Command` clears it in them.
fn block_sigpipe() {
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
    let mut pipe = SigSet::empty();
    pipe.add(Signal::SIGPIPE);
    // It cannot fail with a valid `how` and set; if it ever did, a write to a dead worker's
    // socket would only fall back to the program's own SIGPIPE disposition.
    let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&pipe), None);
}

fn slot_loop(core: &Arc<Core>, slot: usize, launch: &Launch) {
    while core.spawning(slot) {
        let listening = match launch.rendezvous.listen(slot) {
            Ok(listening) => listening,
            Err(e) => {
                let error = format!("could not listen for it: {e}");
                core.spawn_failed(slot, &error, Instant::now());
                continue;
            }
        };
        // Its stdin and stdout are not the pool's (see `rendezvous.rs`): what the program
        // prints before `build()` is discarded, and a child it starts there holds nothing of
        // the pool's.
        let spawned = Command::new(&launch.exe)
            .args(&launch.args)
            .env(WORKER_ENV, &launch.target)
            .env(SOCKET_ENV, listening.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let error = format!("{}: {e}", launch.exe.display());
                core.spawn_failed(slot, &error, Instant::now());
                continue;
            }
        };
        let pid = child.id();
        core.spawned(slot, pid);
        // A panic in the conversation (user code runs on this thread: a result's `Drop`)
        // leaves the protocol in an unknown state: the worker goes, as a crash, and the slot
        // starts another; the crash limit stops a panic that comes back every time.
        let talk = catch_unwind(AssertUnwindSafe(|| {
            talk(core, slot, launch, pid, listening)
        }));
        let failure = talk.unwrap_or_else(|payload| {
            Some(format!(
                "the pool's thread for it panicked: {}",
                panic_text(payload)
            ))
        });
        core.release(slot);
        let status = match child.wait() {
            Ok(status) => describe(status),
            Err(e) => format!("could not be waited for ({e})"),
        };
        let exit = Exit {
            pid,
            status,
            failure,
        };
        core.reaped(slot, &exit, Instant::now());
    }
}

/// The life of worker `pid` on its connection: what went wrong, if anything.
fn talk(
    core: &Core,
    slot: usize,
    launch: &Launch,
    pid: u32,
    listening: Listening,
) -> Option<String> {
    let connection = match listening.accept(|| has_exited(pid)) {
        Ok(Some(connection)) => connection,
        // It ended before it reached `build()`: its exit status says why.
        Ok(None) => return None,
        Err(e) => return Some(format!("its connection could not be accepted: {e}")),
    };
    let mut to_worker = BufWriter::new(&connection);
    let mut from_worker = BufReader::new(&connection);
    let failure = converse(core, slot, launch, pid, &mut to_worker, &mut from_worker).err();
    // Ending our side makes a worker that is still there leave; its side closes once it has.
    // If it does not leave, the core's escalation deadline kills it.
    drop(to_worker);
    let _ = connection.shutdown(Shutdown::Write);
    if failure.is_none() {
        drain(&mut from_worker);
    }
    failure
}

/// True once the (unreaped) worker `pid` has exited. It is left unreaped (`WNOWAIT`): its pid
/// must stay its own until the core has forgotten it (see `core.rs`).
fn has_exited(pid: u32) -> bool {
    use rustix::process::{waitid, Pid, WaitId, WaitIdOptions};
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return true;
    };
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    // An error (there is no such child) would mean it is gone too.
    !matches!(waitid(WaitId::Pid(pid), options), Ok(None))
}

/// Talks to the worker until it is to go (`Ok`) or has gone (`Ok`: its exit status says
/// why), or until it says something that makes no sense (`Err`, with what).
fn converse(
    core: &Core,
    slot: usize,
    launch: &Launch,
    pid: u32,
    to_worker: &mut impl Write,
    from_worker: &mut impl BufRead,
) -> std::result::Result<(), String> {
    match skip_to_magic(from_worker) {
        Ok(true) => {}
        Ok(false) => return Ok(()),
        Err(e) => return gone_or(e),
    }
    match read_frame::<_, FromWorker>(from_worker) {
        Ok(Some(FromWorker::Hello {
            pid: hello_pid,
            functions,
        })) => {
            if hello_pid != pid {
                return Err(format!("it said hello as process {hello_pid}"));
            }
            if functions != launch.functions {
                let message = format!(
                    "worker process {pid} registered {functions:?}, but its pool registered {:?}: a worker must reach the same ProcessPool::build(), with the same functions registered in the same order",
                    launch.functions
                );
                core.fatal(&message);
                return Err("it reached a different pool".to_owned());
            }
        }
        Ok(Some(FromWorker::InitFailed(message))) => {
            return Err(format!("its initializer panicked: {message}"))
        }
        Ok(Some(FromWorker::Done { .. })) => {
            return Err("it answered a job before saying hello".to_owned())
        }
        Ok(None) => return Ok(()),
        Err(e) => return gone_or(e),
    }
    if !core.ready(slot) {
        return Ok(());
    }
    loop {
        let Some(next) = core.next_job_until(slot, Instant::now() + IDLE_CHECK) else {
            if has_exited(pid) {
                return Ok(());
            }
            continue;
        };
        match next {
            Next::Run(job) => {
                let name = launch
                    .functions
                    .get(job.func as usize)
                    .map_or("?", String::as_str);
                let frame = ToWorker::Job {
                    id: job.id,
                    func: job.func,
                    arg: job.payload,
                };
                if let Err(e) = write_frame(to_worker, &frame) {
                    let ToWorker::Job { arg, .. } = frame else {
                        unreachable!("the frame is a job");
                    };
                    if e.kind() == io::ErrorKind::InvalidInput {
                        // Over the frame limit (submit refuses such an argument): nothing was
                        // written, the worker is fine; only the job fails.
                        let error = Error::new(
                            ErrorKind::Other,
                            format!("could not send the argument of `{name}`: {e}"),
                        );
                        let _ = core.job_done(slot, job.id, Err(error));
                        continue;
                    }
                    // The worker was gone before it had the whole job: the job did not run.
                    core.unsent(slot, job.id, arg);
                    return gone_or(e);
                }
                match read_frame::<_, FromWorker>(from_worker) {
                    Ok(Some(FromWorker::Done { id, outcome })) => {
                        if !core.job_done(slot, id, job_result(outcome, name)) {
                            return Err(format!("it answered job {id}, which it was not running"));
                        }
                    }
                    Ok(Some(_)) => {
                        return Err("it said hello again in the middle of a job".to_owned())
                    }
                    Ok(None) => return Ok(()),
                    Err(e) => return gone_or(e),
                }
            }
            Next::Retire | Next::Exit => {
                // Best effort: ending our side of the connection says the same.
                let _ = write_frame(to_worker, &ToWorker::Exit);
                return Ok(());
            }
        }
    }
}

/// An I/O error on a worker's connection: a garbled stream is a failure worth naming; anything
/// else means the worker has gone, and its exit status tells the story.
fn gone_or(e: io::Error) -> std::result::Result<(), String> {
    if e.kind() == io::ErrorKind::InvalidData {
        Err(format!("it sent a malformed frame: {e}"))
    } else {
        Ok(())
    }
}

/// What a job's future gets from the worker's answer.
fn job_result(outcome: Outcome, name: &str) -> Result<Vec<u8>> {
    match outcome {
        Outcome::Value(bytes) => Ok(bytes),
        Outcome::Panicked(message) => Err(Error::new(ErrorKind::Panicked, message)),
        Outcome::BadArgument(e) => Err(Error::new(
            ErrorKind::Other,
            format!("the worker could not decode the argument of `{name}`: {e}"),
        )),
        Outcome::BadResult(e) => Err(Error::new(
            ErrorKind::Other,
            format!("the worker could not encode the result of `{name}`: {e}"),
        )),
        Outcome::Unknown(func) => Err(Error::new(
            ErrorKind::InvalidState,
            format!("the worker has no function #{func}"),
        )),
    }
}

/// Reads and discards until the end of the stream (the worker has closed its side).
fn drain(r: &mut impl Read) {
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// "exited with status 3", "was killed by signal 9 (SIGKILL)".
pub(super) fn describe(status: ExitStatus) -> String {
    if let Some(sig) = status.signal() {
        let dumped = if status.core_dumped() {
            ", core dumped"
        } else {
            ""
        };
        format!("was killed by signal {sig} ({}{dumped})", signal_name(sig))
    } else if let Some(code) = status.code() {
        format!("exited with status {code}")
    } else {
        format!("ended ({status})")
    }
}

fn signal_name(sig: i32) -> String {
    use rustix::process::Signal;
    const NAMES: &[(Signal, &str)] = &[
        (Signal::HUP, "SIGHUP"),
        (Signal::INT, "SIGINT"),
        (Signal::QUIT, "SIGQUIT"),
        (Signal::ILL, "SIGILL"),
        (Signal::TRAP, "SIGTRAP"),
        (Signal::ABORT, "SIGABRT"),
        (Signal::BUS, "SIGBUS"),
        (Signal::FPE, "SIGFPE"),
        (Signal::KILL, "SIGKILL"),
        (Signal::USR1, "SIGUSR1"),
        (Signal::SEGV, "SIGSEGV"),
        (Signal::USR2, "SIGUSR2"),
        (Signal::PIPE, "SIGPIPE"),
        (Signal::ALARM, "SIGALRM"),
        (Signal::TERM, "SIGTERM"),
        (Signal::XCPU, "SIGXCPU"),
        (Signal::XFSZ, "SIGXFSZ"),
        (Signal::SYS, "SIGSYS"),
    ];
    NAMES
        .iter()
        .find(|(s, _)| s.as_raw() == sig)
        .map_or_else(|| format!("signal {sig}"), |(_, name)| (*name).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_read_as_people_say_them() {
        assert_eq!(
            describe(ExitStatus::from_raw(3 << 8)),
            "exited with status 3"
        );
        assert_eq!(
            describe(ExitStatus::from_raw(9)),
            "was killed by signal 9 (SIGKILL)"
        );
        assert_eq!(
            describe(ExitStatus::from_raw(6 | 0x80)),
            "was killed by signal 6 (SIGABRT, core dumped)"
        );
    }
}
