//! How a worker and its pool find each other: a Unix socket that the worker connects to when
//! it reaches `build()`, instead of pipes on its stdin and stdout.
//!
//! A worker runs the program again up to `build()`, and a child the program starts there
//! inherits the worker's stdin and stdout. When those were the pipes to the pool, such a
//! child held them open after the worker had died: the pool never read the end of the
//! worker, and its job waited for as long as the child lived (and what the child read or
//! wrote went into the conversation). A connection the worker makes in `build()` is
//! close-on-exec from the start, so no child of the worker ever holds it; the worker starts
//! with its stdin and stdout on `/dev/null`.
//!
//! Each pool has a directory of its own in the temp directory (in `/tmp` if the temp
//! directory's path is too long for a socket's address), open to this user only (so
//! nobody else can connect), removed with the pool. Before a slot starts a worker it binds
//! a socket there, named after the slot and given to the worker in [`SOCKET_ENV`]; it
//! accepts the worker's one connection and removes the socket's file. A worker that exits
//! before it connects (it never reached `build()`, or was killed for being slow) cannot say
//! so: while it waits, the slot looks whether it has exited, at first every millisecond and
//! then less often, as a worker that is slow to start will be slower still.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Set in a worker's environment: the path of the socket it connects to.
pub(super) const SOCKET_ENV: &str = "BRAID_PROCESS_POOL_SOCKET";

/// The longest pause between two looks at a worker that has not connected yet.
const MAX_PAUSE: Duration = Duration::from_millis(20);

/// A pool's directory for its workers' sockets; dropping it removes it.
#[derive(Debug)]
pub(super) struct Rendezvous {
    dir: PathBuf,
}

/// The longest path a Unix socket's address holds: `sun_path`'s size less its closing NUL.
#[cfg(any(target_os = "linux", target_os = "android"))]
const MAX_SOCKET_PATH: usize = 107;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const MAX_SOCKET_PATH: usize = 103;

/// Where sockets go when the temp directory's path is too long for them.
const FALLBACK_DIR: &str = "/tmp";

impl Rendezvous {
    /// Creates a directory for the sockets of a pool of `slots` workers, open to this user
    /// only: in the temp directory, or in `/tmp` if the temp directory's path (`TMPDIR`) is
    /// too long for a socket's address there, which holds about a hundred bytes.
    pub(super) fn new(slots: usize) -> io::Result<Rendezvous> {
        // Names tell this process's pools apart; they synchronise nothing.
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let pid = std::process::id();
        let longest_socket_name = slots.saturating_sub(1).to_string().len();
        let holds_sockets =
            |dir: &Path| dir.as_os_str().len() + 1 + longest_socket_name <= MAX_SOCKET_PATH;
        let temp = std::env::temp_dir();
        loop {
            let name = format!("braid-ppool-{pid}-{}", NEXT.fetch_add(1, Ordering::Relaxed));
            let dir = match [temp.join(&name), Path::new(FALLBACK_DIR).join(&name)]
                .into_iter()
                .find(|dir| holds_sockets(dir))
            {
                Some(dir) => dir,
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "no directory for the workers' sockets: {} and {FALLBACK_DIR} are \
                             too long for a Unix socket's address ({MAX_SOCKET_PATH} bytes)",
                            temp.display()
                        ),
                    ))
                }
            };
            match DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(Rendezvous { dir }),
                // Left by an earlier process with our pid, or made by someone else: use only
                // a directory this call made.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(with_path(e, &dir)),
            }
        }
    }

    /// Binds the socket that the next worker of slot `slot` is to connect to.
    pub(super) fn listen(&self, slot: usize) -> io::Result<Listening> {
        let path = self.dir.join(slot.to_string());
        // Normally gone with the slot's last worker's `Listening`; in our directory, whatever
        // is there is ours.
        let _ = fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(|e| with_path(e, &path))?;
        let listening = Listening { listener, path };
        // Nonblocking, so that the wait for the worker can look at whether it has exited.
        listening.listener.set_nonblocking(true)?;
        Ok(listening)
    }
}

impl Drop for Rendezvous {
    fn drop(&mut self) {
        // Only our own sockets' files can be in it, and each is removed once used.
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A slot's socket, bound for one worker; dropping it removes its file.
#[derive(Debug)]
pub(super) struct Listening {
    listener: UnixListener,
    path: PathBuf,
}

impl Listening {
    /// The socket's path, for the worker's [`SOCKET_ENV`].
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the worker to connect: `None` if `exited` says it has exited first.
    pub(super) fn accept(self, exited: impl Fn() -> bool) -> io::Result<Option<UnixStream>> {
        let mut pause = Duration::from_millis(1);
        loop {
            // Looked at before the accept: a worker that connected and then exited has its
            // connection queued by then, and is not taken for one that never connected.
            let gone = exited();
            match self.listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false)?;
                    return Ok(Some(stream));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if gone {
                return Ok(None);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_pools_directory_is_its_users_alone_and_goes_with_the_pool() {
        let rendezvous = Rendezvous::new(4).unwrap();
        let dir = rendezvous.dir.clone();
        let mode = fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let listening = rendezvous.listen(0).unwrap();
        let socket = listening.path().to_owned();
        assert!(socket.exists());
        drop(listening);
        assert!(!socket.exists(), "a used socket's file is removed");
        drop(rendezvous);
        assert!(!dir.exists());
    }

    #[test]
    fn a_connection_made_before_the_worker_exited_is_accepted_and_none_is_waited_for_after() {
        let rendezvous = Rendezvous::new(4).unwrap();
        let listening = rendezvous.listen(3).unwrap();
        let mut worker = UnixStream::connect(listening.path()).unwrap();
        // The worker connected, wrote and exited: its connection still counts.
        let mut stream = listening.accept(|| true).unwrap().expect("its connection");
        worker.write_all(b"hi").unwrap();
        let mut got = [0; 2];
        stream.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
        let listening = rendezvous.listen(3).unwrap();
        assert!(listening.accept(|| true).unwrap().is_none());
    }
}
