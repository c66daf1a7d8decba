//! asyncio's streams: `StreamReader`, `StreamWriter`, `open_connection`, `start_server` and
//! `Server`.
//!
//! A connection's reader and writer share one `Conn`. The reader keeps a buffer that reads
//! fill on demand (the kernel's buffer is the flow control while nobody reads); every read
//! operation works on that buffer under its lock, so a cancelled or failed operation leaves
//! whatever it had buffered for the next one. The writer behaves as asyncio's transport:
//! `write` sends at once what the socket takes and buffers the rest, and the socket's write
//! readiness flushes the buffer (on whichever thread dispatches it) without anybody awaiting;
//! `drain` waits while the buffer is over the high-water mark, until it is under the low one.

use super::{io_error, resolve, IoFuture, TcpListener, TcpStream, UnixStream};
use crate::context;
use crate::event_loop::{spawn_task, spawn_task_spread, ExceptionContext};
use crate::scheduler::RuntimeShared;
use braid_bridge::sync::atomic::{AtomicBool, Ordering};
use braid_bridge::sync::Mutex;
use braid_bridge::{Error, ErrorKind, Result};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Wake, Waker};

/// asyncio's default buffer limit for `readline`/`readuntil`: 64 KiB.
pub const DEFAULT_LIMIT: usize = 64 * 1024;
/// asyncio's default write-buffer high-water mark (64 KiB); the low one is a quarter of it.
const DEFAULT_HIGH_WATER: usize = 64 * 1024;
/// The reader asks the socket for at least this much room per read.
const MIN_READ_ROOM: usize = 16 * 1024;
/// A reader's buffer starts (and grows) by this much.
const READ_CHUNK: usize = 64 * 1024;
/// An emptied read buffer larger than this gives its memory back (down to `READ_CHUNK`): one
/// big message must not pin its size for the rest of a long-lived connection. Large enough
/// that lines and reads within the default limit never pay for it.
const READ_KEEP: usize = 4 * READ_CHUNK;
/// At most this much of the peer's unread data is read and dropped when a stream closes,
/// beyond what its reader keeps (see `Conn::take_in_unread`).
const CLOSE_DISCARD: usize = 1024 * 1024;

/// `readexactly` or `readuntil` met the end of the stream first (asyncio's
/// `IncompleteReadError`). Reached with `Error::downcast_ref`; the error's kind is `Io`.
#[derive(Clone, PartialEq, Eq)]
pub struct IncompleteRead {
    /// The bytes read before the end (taken out of the reader's buffer).
    pub partial: Vec<u8>,
    /// The byte count asked for (`readexactly`), or `None` (`readuntil`).
    pub expected: Option<usize>,
}

impl fmt::Display for IncompleteRead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.expected {
            Some(n) => write!(
                f,
                "{} bytes read on a total of {n} expected bytes",
                self.partial.len()
            ),
            None => write!(
                f,
                "{} bytes read on a total of undefined expected bytes",
                self.partial.len()
            ),
        }
    }
}

impl fmt::Debug for IncompleteRead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncompleteRead")
            .field("partial_len", &self.partial.len())
            .field("expected", &self.expected)
            .finish()
    }
}

impl std::error::Error for IncompleteRead {}

/// `readuntil` found no separator within the reader's limit (asyncio's `LimitOverrunError`).
/// The data stays buffered, so a retry (after `read(consumed)`, say) can make progress. Kind
/// `Other`; reached with `Error::downcast_ref`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitOverrun {
    /// How many bytes are to be consumed before the separator (or without one).
    pub consumed: usize,
    message: &'static str,
}

impl fmt::Display for LimitOverrun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} bytes)", self.message, self.consumed)
    }
}

impl std::error::Error for LimitOverrun {}

/// The socket under a stream pair.
enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Socket {
    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self {
            Socket::Tcp(s) => s.poll_read_bytes(cx, buf),
            Socket::Unix(s) => s.poll_read_bytes(cx, buf),
        }
    }

    fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self {
            Socket::Tcp(s) => s.poll_write_bytes(cx, buf),
            Socket::Unix(s) => s.poll_write_bytes(cx, buf),
        }
    }

    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.try_write(buf),
            Socket::Unix(s) => s.try_write(buf),
        }
    }

    /// Shuts the socket down without waking its waiters: callers hold a lock that a woken
    /// flush would take, and wake them (`wake_all`) once they have let go of it.
    fn shutdown(&self, how: Shutdown) {
        // A peer that is already gone makes this fail; the connection is over either way.
        let _ = match self {
            Socket::Tcp(s) => s.shutdown_quiet(how),
            Socket::Unix(s) => s.shutdown_quiet(how),
        };
    }

    fn wake_all(&self) {
        match self {
            Socket::Tcp(s) => s.wake_all(),
            Socket::Unix(s) => s.wake_all(),
        }
    }
}

struct ReadState {
    /// `buf[start..end]` is buffered data; `buf[end..]` is room for the next read.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Where the next separator search starts (bytes before it were searched already).
    scan: usize,
    eof: bool,
    /// The socket's read error: every later read reports it (asyncio's `set_exception`).
    error: Option<Error>,
    /// An operation is in progress (asyncio allows one waiter at a time).
    busy: bool,
    limit: usize,
}

impl ReadState {
    fn new(limit: usize) -> ReadState {
        ReadState {
            buf: Vec::new(),
            start: 0,
            end: 0,
            scan: 0,
            eof: false,
            error: None,
            busy: false,
            limit,
        }
    }

    fn buffered(&self) -> usize {
        self.end - self.start
    }

    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        let out = self.buf[self.start..self.start + n].to_vec();
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > READ_KEEP {
                // Empty, so nothing to copy: an idle connection keeps one chunk, not the
                // size of the largest message it ever received (as the writer's `flush`).
                self.buf.truncate(READ_CHUNK);
                self.buf.shrink_to(READ_CHUNK);
            }
        }
        self.scan = 0;
        out
    }

    fn take_all(&mut self) -> Vec<u8> {
        self.take(self.buffered())
    }

    /// Room at the end of the buffer for one read, compacting or growing it.
    ///
    /// `need` is how many bytes the reading operation needs buffered when it knows
    /// (`readexactly`), else 0. Growth doubles, for amortised copies, but not past a known
    /// need by more than one chunk: doubling would leave a `readexactly(n)` holding `2n`.
    /// Nor straight to it: memory is committed as data arrives, not on a length the peer
    /// announced. A small need still gets a whole chunk, so that one read takes in what
    /// follows too (a length prefix and its message).
    fn room(&mut self, need: usize) -> &mut [u8] {
        if self.buf.len() - self.end < MIN_READ_ROOM {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.buf.len() - self.end < MIN_READ_ROOM {
                let mut grown = (self.buf.len() * 2).max(self.end + READ_CHUNK);
                if need > self.buffered() {
                    grown = grown.min(need.max(self.end + READ_CHUNK));
                }
                // Exact: `resize` alone would round the capacity up to double the old one.
                self.buf.reserve_exact(grown - self.buf.len());
                self.buf.resize(grown, 0);
            }
        }
        &mut self.buf[self.end..]
    }
}

struct WriteState {
    /// `buf[start..]` waits to be sent.
    buf: Vec<u8>,
    start: usize,
    high: usize,
    low: usize,
    /// Over the high-water mark and not yet back under the low one: `drain` waits.
    paused: bool,
    /// A flush is waiting for write readiness.
    flushing: bool,
    eof_requested: bool,
    eof_sent: bool,
    closing: bool,
    /// Closed: flushed and shut down, or lost.
    closed: bool,
    /// The `StreamWriter` was dropped: nobody will use it again to resume a flush that could
    /// not wait where it was woken (see `Flusher`).
    dropped: bool,
    error: Option<Error>,
    drain_waiters: Vec<Waker>,
    close_waiters: Vec<Waker>,
}

impl WriteState {
    fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

/// One connection: the socket and both halves' state.
struct Conn {
    socket: Socket,
    read: Mutex<ReadState>,
    write: Mutex<WriteState>,
    /// `Server::abort_clients` ended the connection: every operation fails.
    aborted: AtomicBool,
    /// The server that accepted it, told when the connection is gone.
    _server: Option<ServerLink>,
}

fn aborted_error() -> Error {
    io_error(
        io::ErrorKind::ConnectionAborted,
        "the server aborted this connection (Server::abort_clients)",
    )
}

fn take_wakers(list: &mut Vec<Waker>) -> Vec<Waker> {
    std::mem::take(list)
}

impl Conn {
    fn new(socket: Socket, server: Option<ServerLink>) -> Arc<Conn> {
        Arc::new(Conn {
            socket,
            read: Mutex::new(ReadState::new(DEFAULT_LIMIT)),
            write: Mutex::new(WriteState {
                buf: Vec::new(),
                start: 0,
                high: DEFAULT_HIGH_WATER,
                low: DEFAULT_HIGH_WATER / 4,
                paused: false,
                flushing: false,
                eof_requested: false,
                eof_sent: false,
                closing: false,
                closed: false,
                dropped: false,
                error: None,
                drain_waiters: Vec::new(),
                close_waiters: Vec::new(),
            }),
            aborted: AtomicBool::new(false),
            _server: server,
        })
    }

    /// Sends what the socket takes now; arms a flush for the rest. A flush that cannot wait
    /// from here fails the connection (`strand`): called on the writer's behalf, by its
    /// user, there is nobody else to send the data. Called with `ws` locked.
    fn flush(self: &Arc<Self>, ws: &mut WriteState) {
        if let Err(e) = self.try_flush(ws) {
            self.strand(ws, e);
        }
    }

    /// Resumes a flush that could not wait where it was woken (see `Flusher`): one is due
    /// when data is buffered and no flush is armed. Called with `ws` locked. Returns whether
    /// the resumed flush closed the connection (sent all and closed, or failed): the caller
    /// then wakes the socket's waiters once it has let go of the lock (see `Flusher`).
    fn resume_flush(self: &Arc<Self>, ws: &mut WriteState) -> bool {
        if ws.pending() == 0 || ws.flushing || ws.closed {
            return false;
        }
        self.flush(ws);
        ws.closed
    }

    /// `flush`, except that a flush that cannot wait from here (no open loop: its runtime
    /// has shut down, and this is not another runtime's loop) returns that error, with the
    /// buffer kept and no flush armed. The socket's own errors fail the connection.
    fn try_flush(self: &Arc<Self>, ws: &mut WriteState) -> Result<()> {
        let waker = Waker::from(Arc::new(Flusher(self.clone())));
        let mut cx = Context::from_waker(&waker);
        while ws.pending() > 0 {
            match self.socket.poll_write(&mut cx, &ws.buf[ws.start..]) {
                Poll::Ready(Ok(n)) => {
                    ws.start += n;
                    if ws.paused && ws.pending() <= ws.low {
                        ws.paused = false;
                        wake(take_wakers(&mut ws.drain_waiters));
                    }
                }
                Poll::Ready(Err(e)) => {
                    let e = Error::from(e);
                    // The socket's errors are kind Io; any other is the readiness saying the
                    // flush cannot wait here (`IoSource::arm`), which it did not keep.
                    if e.kind() != ErrorKind::Io {
                        ws.flushing = false;
                        return Err(e);
                    }
                    self.lost(ws, e);
                    return Ok(());
                }
                Poll::Pending => {
                    ws.flushing = true;
                    return Ok(());
                }
            }
        }
        ws.buf.clear();
        // A burst far over the high-water mark leaves no lasting allocation behind.
        ws.buf.shrink_to(ws.high.saturating_mul(2));
        ws.start = 0;
        ws.flushing = false;
        self.after_flush(ws);
        Ok(())
    }

    /// No loop is left to send the buffered data (`cause`): as asyncio's transport when its
    /// loop is closed under it, the connection ends and the data is lost. The socket is shut
    /// down, so the peer reads what was already sent and then the end of the stream, and
    /// drainers and closers get a Closed error that says how much was never sent.
    #[cold]
    fn strand(&self, ws: &mut WriteState, cause: Error) {
        let error = Error::new(
            ErrorKind::Closed,
            format!(
                "the stream closed with {} buffered bytes unsent: {}",
                ws.pending(),
                cause
                    .message()
                    .unwrap_or("no event loop is left to send them")
            ),
        );
        self.lost(ws, error);
    }

    /// The buffer is empty: wake drainers, and carry out a requested `write_eof` or `close`.
    fn after_flush(&self, ws: &mut WriteState) {
        ws.paused = false;
        wake(take_wakers(&mut ws.drain_waiters));
        if ws.closing && !ws.closed {
            {
                // asyncio: closing the transport feeds EOF to the reader (bpo-35065), behind
                // what it had received. Lock order: the writer's state, then the reader's
                // (nothing takes them the other way round).
                let mut rs = self.read.lock();
                self.take_in_unread(&mut rs);
                rs.eof = true;
            }
            self.socket.shutdown(Shutdown::Both);
            ws.closed = true;
            wake(take_wakers(&mut ws.close_waiters));
        } else if ws.eof_requested && !ws.eof_sent {
            self.socket.shutdown(Shutdown::Write);
            ws.eof_sent = true;
        }
    }

    /// Before a close: reads what the peer sent and nobody read, without blocking, into the
    /// reader's buffer (up to twice its limit, where asyncio's transport pauses reading), and
    /// drops up to `CLOSE_DISCARD` more. asyncio's transport reads as data comes, so its
    /// reader still returns what arrived before `close`; and Linux answers the close of a
    /// socket with unread data by a reset that drops what is still queued to send (the tail
    /// of a reply). Callers wake the socket first (`close`), as readiness may be stale for a
    /// socket nobody waited on. A read error ends it quietly: the connection is closing, and
    /// the reader gets what it holds, then EOF (asyncio's `connection_lost` after a close).
    #[cold]
    fn take_in_unread(&self, rs: &mut ReadState) {
        if rs.eof || rs.error.is_some() {
            return;
        }
        // Nobody waits for this read: a `Pending` leaves a waker that does nothing.
        let mut cx = Context::from_waker(Waker::noop());
        let keep = rs.limit.saturating_mul(2);
        let mut scratch = Vec::new();
        let mut discarded = 0;
        while rs.buffered() < keep || discarded < CLOSE_DISCARD {
            let keeping = rs.buffered() < keep;
            let into = if keeping {
                let missing = keep - rs.buffered();
                let room = rs.room(keep);
                let len = room.len().min(missing);
                &mut room[..len]
            } else {
                scratch.resize(READ_CHUNK.min(CLOSE_DISCARD - discarded), 0);
                &mut scratch[..]
            };
            let asked = into.len();
            match self.socket.poll_read(&mut cx, into) {
                Poll::Ready(Ok(0)) => {
                    rs.eof = true;
                    return;
                }
                Poll::Ready(Ok(n)) => {
                    if keeping {
                        rs.end += n;
                    } else {
                        discarded += n;
                    }
                    if n < asked {
                        // A short read emptied the receive queue: no syscall to learn it.
                        return;
                    }
                }
                Poll::Ready(Err(_)) | Poll::Pending => return,
            }
        }
    }

    /// For `at_eof` with nothing buffered: one read without blocking, into the reader's
    /// buffer, to learn of an end of stream that arrived. asyncio's transport reads as data
    /// comes, so its `at_eof` turns true when the end arrives; here nothing reads until asked.
    /// The readiness decides whether the syscall is made, so a socket that blocked last time
    /// and has brought no edge since costs a lock, not a syscall. The socket's error is kept
    /// as a read's is (the kernel reports a reset once). Not while a read is in progress: it
    /// takes the end in itself, woken by the edge that brings it. A `Pending` leaves a waker
    /// that does nothing, beside the real ones (the waiters are a set).
    fn look_for_eof(&self, rs: &mut ReadState) {
        if rs.error.is_some() || rs.busy || self.is_aborted() {
            return;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.socket.poll_read(&mut cx, rs.room(0)) {
            Poll::Ready(Ok(0)) => rs.eof = true,
            Poll::Ready(Ok(n)) => rs.end += n,
            Poll::Ready(Err(e)) => {
                let e = Error::from(e);
                // Any other kind is the readiness saying this thread cannot wait for the
                // socket (no loop runs here): nothing about the connection.
                if e.kind() == ErrorKind::Io {
                    rs.error = Some(e);
                }
            }
            Poll::Pending => {}
        }
    }

    /// The connection failed while writing: drop the buffer, fail drainers and closers, and
    /// the reader too (asyncio's `connection_lost(exc)`): the kernel reports a reset once, so a
    /// reset the writer saw first would otherwise look like a clean EOF to the reader. The
    /// socket is shut down (asyncio closes it), so that a peer still connected sees the end
    /// now, not when the last handle goes; its waiters are not woken here (see
    /// `Socket::shutdown`).
    fn lost(&self, ws: &mut WriteState, error: Error) {
        {
            let mut rs = self.read.lock();
            if rs.error.is_none() {
                rs.error = Some(error.clone());
            }
        }
        ws.error = Some(error);
        ws.buf.clear();
        ws.start = 0;
        ws.flushing = false;
        ws.paused = false;
        ws.closed = true;
        self.socket.shutdown(Shutdown::Both);
        wake(take_wakers(&mut ws.drain_waiters));
        wake(take_wakers(&mut ws.close_waiters));
    }

    fn abort(&self) {
        self.aborted.store(true, Ordering::Release);
        // The streams fail first, then the socket: the other way round, a handler on
        // another loop woken by the shutdown could write before the streams knew, and get
        // the socket's `BrokenPipe` instead of `ConnectionAborted`.
        {
            let mut ws = self.write.lock();
            if !ws.closed {
                self.lost(&mut ws, aborted_error());
            }
        }
        self.socket.shutdown(Shutdown::Both);
        self.socket.wake_all();
    }

    fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire)
    }
}

fn wake(wakers: Vec<Waker>) {
    for w in wakers {
        w.wake();
    }
}

/// The waker of a pending flush: write readiness continues the flush right where it is
/// dispatched, as asyncio's transport does from its loop.
///
/// The loop the socket is registered with wakes it as well when it closes, and the flush
/// then moves to another open loop of its runtime. When none is left (the runtime shut down),
/// a writer still held keeps its buffer, and its next use (`write`, `drain`, `close`,
/// `wait_closed`) resumes the flush from where that runs, another runtime's loop say; a
/// writer that was dropped never will be used again, so its connection fails (`strand`). Either
/// way this waker is not kept by the readiness, which is what held the connection, and its
/// socket, alive for good.
struct Flusher(Arc<Conn>);

impl Wake for Flusher {
    fn wake(self: Arc<Self>) {
        let conn = &self.0;
        let mut ws = conn.write.lock();
        if ws.flushing {
            ws.flushing = false;
            let mut resume = Vec::new();
            if let Err(e) = conn.try_flush(&mut ws) {
                if ws.dropped {
                    conn.strand(&mut ws, e);
                } else {
                    // Those waiting for the flush resume it from their own loops.
                    resume = take_wakers(&mut ws.drain_waiters);
                    resume.append(&mut ws.close_waiters);
                }
            }
            let closed = ws.closed;
            drop(ws);
            wake(resume);
            if closed {
                // The flush ended in the close, or failed: this side's reader must come and
                // see EOF (or the error).
                conn.socket.wake_all();
            }
        }
    }
}

/// The reading half of a connection (asyncio's `StreamReader`). Every method takes `&self`;
/// one read operation runs at a time (a second one, from another task, fails with
/// `InvalidState`, as asyncio's `RuntimeError`). Reads are cancellation points, and a cancelled
/// read leaves what it had buffered for the next read.
///
/// # Examples
///
/// ```
/// braid_runtime::run(async {
///     let server = braid_runtime::start_server(
///         |reader, writer| async move {
///             let line = reader.readline().await?;
///             writer.write(&line)?;
///             writer.drain().await
///         },
///         "127.0.0.1:0",
///     )
///     .await?;
///     let (reader, writer) = braid_runtime::open_connection(server.local_addr()).await?;
///     writer.write(b"ping\n")?;
///     assert_eq!(reader.readline().await?, b"ping\n");
///     server.close();
///     Ok(())
/// })
/// .unwrap();
/// ```
pub struct StreamReader {
    conn: Arc<Conn>,
}

/// The writing half of a connection (asyncio's `StreamWriter`). `write` never blocks: what the
/// socket does not take now is buffered and sent as the socket drains; `drain` is the
/// backpressure. Dropping the writer closes it (after the buffer is sent).
///
/// The buffer is sent from the loops of the runtime: if that runtime shuts down first, a
/// writer that was dropped has its connection closed and the rest of its buffer lost, as
/// asyncio's transport when its loop is closed (the peer reads what was sent, then the end
/// of the stream). A writer still held keeps its buffer, and its next `write`, `drain`,
/// `close` or `wait_closed` on another runtime's loop sends it; where no loop runs, that
/// fails the connection with a Closed error.
///
/// # Examples
///
/// ```
/// braid_runtime::run(async {
///     let (a, b) = braid_runtime::UnixStream::pair()?;
///     // Dropping a writer closes its connection both ways, so each half is kept.
///     let (_a_reader, writer) = a.into_streams();
///     let (reader, _b_writer) = b.into_streams();
///     writer.writelines([&b"one "[..], b"two"])?;
///     writer.write_eof()?;
///     assert_eq!(reader.read_to_end().await?, b"one two");
///     Ok(())
/// })
/// .unwrap();
/// ```
pub struct StreamWriter {
    conn: Arc<Conn>,
}

fn pair(conn: Arc<Conn>) -> (StreamReader, StreamWriter) {
    (StreamReader { conn: conn.clone() }, StreamWriter { conn })
}

impl TcpStream {
    /// This connection as asyncio's stream pair.
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let listener = braid_runtime::TcpListener::bind("127.0.0.1:0").await?;
    ///     let stream = braid_runtime::TcpStream::connect(listener.local_addr()?).await?;
    ///     let (_reader, writer) = stream.into_streams();
    ///     assert!(writer.peer_addr().is_ok());
    ///     Ok(())
    /// })
    /// .unwrap();
    /// ```
    pub fn into_streams(self) -> (StreamReader, StreamWriter) {
        pair(Conn::new(Socket::Tcp(self), None))
    }
}

impl UnixStream {
    /// This connection as asyncio's stream pair.
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let (a, _b) = braid_runtime::UnixStream::pair()?;
    ///     let (reader, _writer) = a.into_streams();
    ///     assert!(!reader.at_eof());
    ///     Ok(())
    /// })
    /// .unwrap();
    /// ```
    pub fn into_streams(self) -> (StreamReader, StreamWriter) {
        pair(Conn::new(Socket::Unix(self), None))
    }
}

/// What a [`StreamRead`] does.
enum ReadOp {
    UpTo(usize),
    ToEnd,
    Line,
    Exactly(usize),
    Until(Vec<u8>),
}

/// A read of a [`StreamReader`] (`read`, `read_to_end`, `readline`, `readexactly`,
/// `readuntil`). Cancel-safe: dropping it before it completes loses no data.
#[must_use = "futures do nothing unless awaited"]
pub struct StreamRead<'a> {
    conn: &'a Conn,
    op: ReadOp,
    claimed: bool,
}

impl StreamReader {
    fn op(&self, op: ReadOp) -> StreamRead<'_> {
        StreamRead {
            conn: &self.conn,
            op,
            claimed: false,
        }
    }

    /// Up to `n` bytes: what is buffered, else what the next read brings; empty at EOF or for
    /// `n == 0` (asyncio's `read(n)`).
    ///
    /// # Errors
    /// Cancelled; kind `Io` from the socket; `InvalidState` if another read is in progress.
    pub fn read(&self, n: usize) -> StreamRead<'_> {
        self.op(ReadOp::UpTo(n))
    }

    /// Everything until EOF (asyncio's `read(-1)`).
    ///
    /// # Errors
    /// As [`read`](Self::read).
    pub fn read_to_end(&self) -> StreamRead<'_> {
        self.op(ReadOp::ToEnd)
    }

    /// One line, `\n` included; at EOF the partial line (empty when nothing is left).
    ///
    /// # Errors
    /// As [`read`](Self::read); [`LimitOverrun`] if the line is longer than the limit (the
    /// line is then dropped from the buffer, as asyncio does).
    pub fn readline(&self) -> StreamRead<'_> {
        self.op(ReadOp::Line)
    }

    /// Exactly `n` bytes.
    ///
    /// # Errors
    /// As [`read`](Self::read); [`IncompleteRead`] with `expected: Some(n)` if the stream ends
    /// first (the partial data is in the error, not the buffer).
    pub fn readexactly(&self, n: usize) -> StreamRead<'_> {
        self.op(ReadOp::Exactly(n))
    }

    /// The data up to and including `separator`.
    ///
    /// # Errors
    /// As [`read`](Self::read); [`IncompleteRead`] (`expected: None`) at EOF without the
    /// separator; [`LimitOverrun`] if it is not within the limit (the data stays buffered);
    /// kind `Other` for an empty separator.
    pub fn readuntil(&self, separator: &[u8]) -> StreamRead<'_> {
        self.op(ReadOp::Until(separator.to_vec()))
    }

    /// True when the buffer is empty and the peer has finished sending.
    ///
    /// As asyncio's, it turns true once the loop has seen the peer's end of stream, without
    /// a read to take it in: with nothing buffered, it looks at the socket without blocking
    /// (a syscall only when the loop has reported the socket readable since the last one),
    /// and what it finds there is kept for the next read.
    pub fn at_eof(&self) -> bool {
        let mut st = self.conn.read.lock();
        if st.buffered() > 0 {
            return false;
        }
        if !st.eof {
            self.conn.look_for_eof(&mut st);
        }
        st.eof && st.buffered() == 0
    }

    /// The buffer limit for `readline`/`readuntil` (default [`DEFAULT_LIMIT`]).
    pub fn limit(&self) -> usize {
        self.conn.read.lock().limit
    }

    /// Sets the buffer limit for `readline`/`readuntil` (asyncio's `limit=` argument).
    ///
    /// # Panics
    /// If `limit` is 0, as asyncio refuses it.
    pub fn set_limit(&self, limit: usize) {
        assert!(limit > 0, "a stream limit must be positive");
        self.conn.read.lock().limit = limit;
    }
}

impl fmt::Debug for StreamReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.conn.read.lock();
        f.debug_struct("StreamReader")
            .field("buffered", &st.buffered())
            .field("eof", &st.eof)
            .field("limit", &st.limit)
            .finish()
    }
}

fn overrun(consumed: usize, message: &'static str) -> Error {
    Error::with_source(ErrorKind::Other, LimitOverrun { consumed, message })
}

fn incomplete(partial: Vec<u8>, expected: Option<usize>) -> Error {
    Error::with_source(ErrorKind::Io, IncompleteRead { partial, expected })
}

/// `readuntil` on the buffer: `Some` when it has an answer without more data.
fn try_until(st: &mut ReadState, sep: &[u8]) -> Option<Result<Vec<u8>>> {
    if sep.is_empty() {
        return Some(Err(Error::msg("separator should be at least one byte")));
    }
    let found = st.data()[st.scan.min(st.buffered())..]
        .windows(sep.len())
        .position(|w| w == sep)
        .map(|i| i + st.scan);
    match found {
        Some(i) if i > st.limit => Some(Err(overrun(
            i,
            "separator is found, but chunk is longer than limit",
        ))),
        Some(i) => Some(Ok(st.take(i + sep.len()))),
        None => {
            let offset = (st.buffered() + 1).saturating_sub(sep.len());
            st.scan = offset;
            // An answer here ends the read, which resets `scan` (`StreamRead::poll`).
            if offset > st.limit {
                Some(Err(overrun(
                    offset,
                    "separator is not found, and chunk exceeds the limit",
                )))
            } else if st.eof {
                Some(Err(incomplete(st.take_all(), None)))
            } else {
                None
            }
        }
    }
}

impl ReadOp {
    /// How many bytes must be buffered for this operation to complete, when that is known
    /// (else 0): the read buffer grows to it and not past it (`ReadState::room`).
    #[inline]
    fn need(&self) -> usize {
        match self {
            ReadOp::Exactly(n) => *n,
            _ => 0,
        }
    }

    /// The answer the buffer gives now, if it gives one.
    fn try_complete(&self, st: &mut ReadState) -> Option<Result<Vec<u8>>> {
        match self {
            ReadOp::UpTo(0) => Some(Ok(Vec::new())),
            ReadOp::UpTo(n) => {
                if st.buffered() > 0 {
                    Some(Ok(st.take((*n).min(st.buffered()))))
                } else if st.eof {
                    Some(Ok(Vec::new()))
                } else {
                    None
                }
            }
            ReadOp::ToEnd => st.eof.then(|| Ok(st.take_all())),
            ReadOp::Exactly(n) => {
                if st.buffered() >= *n {
                    Some(Ok(st.take(*n)))
                } else if st.eof {
                    Some(Err(incomplete(st.take_all(), Some(*n))))
                } else {
                    None
                }
            }
            ReadOp::Until(sep) => try_until(st, sep),
            ReadOp::Line => match try_until(st, b"\n")? {
                Ok(line) => Some(Ok(line)),
                Err(e) => {
                    if let Some(inc) = e.downcast_ref::<IncompleteRead>() {
                        return Some(Ok(inc.partial.clone()));
                    }
                    if let Some(over) = e.downcast_ref::<LimitOverrun>() {
                        // asyncio drops the over-long line (and its newline if it was seen).
                        let consumed = over.consumed;
                        if st.data().get(consumed) == Some(&b'\n') {
                            st.take(consumed + 1);
                        } else {
                            st.take_all();
                        }
                    }
                    Some(Err(e))
                }
            },
        }
    }
}

impl Future for StreamRead<'_> {
    type Output = Result<Vec<u8>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Vec<u8>>> {
        if let Some(cancel) = context::cancel_point() {
            return Poll::Ready(Err(cancel));
        }
        let this = &mut *self;
        let conn = this.conn;
        let mut st = conn.read.lock();
        if !this.claimed {
            if st.busy {
                return Poll::Ready(Err(Error::new(
                    ErrorKind::InvalidState,
                    "a read was started while another task is already waiting for data \
                     on this StreamReader",
                )));
            }
            st.busy = true;
            this.claimed = true;
        }
        let result = loop {
            if let Some(e) = &st.error {
                break Err(e.clone());
            }
            if conn.is_aborted() {
                break Err(aborted_error());
            }
            if let Some(result) = this.op.try_complete(&mut st) {
                break result;
            }
            let room = st.room(this.op.need());
            match conn.socket.poll_read(cx, room) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => st.eof = true,
                Poll::Ready(Ok(n)) => st.end += n,
                Poll::Ready(Err(e)) => {
                    let e = Error::from(e);
                    st.error = Some(e.clone());
                    break Err(e);
                }
            }
        };
        // `scan` is one `readuntil`'s progress: the next read, whatever its separator,
        // searches from the start (also after an error that leaves the data buffered).
        st.scan = 0;
        st.busy = false;
        this.claimed = false;
        Poll::Ready(result)
    }
}

impl Drop for StreamRead<'_> {
    fn drop(&mut self) {
        if self.claimed {
            let mut st = self.conn.read.lock();
            st.busy = false;
            st.scan = 0;
        }
    }
}

impl StreamWriter {
    /// Queues `data`: sends what the socket takes now, buffers the rest (sent as the socket
    /// drains, whether or not anyone awaits). Never blocks.
    ///
    /// # Errors
    /// `InvalidState` after `close` or `write_eof`; the connection's error (kind `Io`) once it
    /// failed. Nothing of `data` was queued then.
    pub fn write(&self, data: &[u8]) -> Result<()> {
        let conn = &self.conn;
        let mut ws = conn.write.lock();
        if let Some(e) = &ws.error {
            return Err(e.clone());
        }
        if ws.closing {
            return Err(Error::new(
                ErrorKind::InvalidState,
                "write() on a StreamWriter that is closing",
            ));
        }
        if ws.eof_requested {
            return Err(Error::new(
                ErrorKind::InvalidState,
                "write() after write_eof()",
            ));
        }
        let mut data = data;
        if ws.pending() == 0 {
            match conn.socket.try_write(data) {
                Ok(n) => data = &data[n..],
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let e = Error::from(e);
                    conn.lost(&mut ws, e.clone());
                    return Err(e);
                }
            }
        }
        if data.is_empty() {
            return Ok(());
        }
        // Drop the sent front once it is half the buffer: a writer that keeps the buffer
        // from ever emptying (`write` then `drain` against a slower peer) would otherwise
        // keep every byte it ever sent. Each byte moves at most once per byte sent before it.
        if ws.start > 0 && ws.start * 2 >= ws.buf.len() {
            let sent = ws.start;
            ws.buf.drain(..sent);
            ws.start = 0;
        }
        ws.buf.extend_from_slice(data);
        if ws.pending() > ws.high {
            ws.paused = true;
        }
        if !ws.flushing {
            conn.flush(&mut ws);
        }
        Ok(())
    }

    /// `write` of each buffer in turn.
    ///
    /// # Errors
    /// As [`write`](Self::write).
    pub fn writelines<I, B>(&self, lines: I) -> Result<()>
    where
        I: IntoIterator<Item = B>,
        B: AsRef<[u8]>,
    {
        for line in lines {
            self.write(line.as_ref())?;
        }
        Ok(())
    }

    /// Waits while the write buffer is over its high-water mark, until it is under the low
    /// one. A cancellation point.
    ///
    /// # Errors
    /// Cancelled; the connection's error (kind `Io`); kind `Io` with an `io::Error` of kind
    /// `ConnectionReset` inside if [`close`](Self::close) has closed the connection (asyncio's
    /// ConnectionResetError('Connection lost')); Closed if the buffer can never be sent (its
    /// runtime shut down and no loop runs here: see [`StreamWriter`]).
    pub fn drain(&self) -> Drain<'_> {
        Drain {
            conn: &self.conn,
            polled: false,
        }
    }

    /// True: TCP and Unix streams can half-close.
    pub fn can_write_eof(&self) -> bool {
        true
    }

    /// Half-closes: the peer reads EOF once the buffer is sent; reading goes on.
    ///
    /// # Errors
    /// The connection's error, if it failed.
    pub fn write_eof(&self) -> Result<()> {
        let mut ws = self.conn.write.lock();
        if let Some(e) = &ws.error {
            return Err(e.clone());
        }
        ws.eof_requested = true;
        if ws.pending() == 0 && !ws.flushing {
            self.conn.after_flush(&mut ws);
            return Ok(());
        }
        if self.conn.resume_flush(&mut ws) {
            drop(ws);
            self.conn.socket.wake_all();
        }
        Ok(())
    }

    /// Closes the connection once the buffer is sent (both directions: this side's reader
    /// then reads EOF). Idempotent.
    ///
    /// What the peer sent and nobody read stays readable, as asyncio's reader keeps what its
    /// transport received: before the socket closes, the close takes in what it holds, up
    /// to twice the reader's limit (where asyncio's transport stops reading), and reads and
    /// drops up to 1 MiB more. That spares the reply's tail: Linux answers the close of a
    /// socket with unread data by a reset, which drops what is still queued to send. A peer
    /// that sent more than that may still get the reset.
    ///
    /// # Examples
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let (a, b) = braid_runtime::UnixStream::pair()?;
    ///     let (a_reader, a_writer) = a.into_streams();
    ///     let (b_reader, b_writer) = b.into_streams();
    ///     b_writer.write(b"request")?;
    ///     b_writer.drain().await?;
    ///     a_writer.write(b"reply")?;
    ///     a_writer.close();
    ///     a_writer.wait_closed().await?;
    ///     // The peer gets the whole reply, and the request stays readable after the close.
    ///     assert_eq!(b_reader.read_to_end().await?, b"reply");
    ///     assert_eq!(a_reader.read_to_end().await?, b"request");
    ///     Ok(())
    /// })
    /// .unwrap();
    /// ```
    pub fn close(&self) {
        {
            let mut ws = self.conn.write.lock();
            if ws.closing {
                // Closing already; a flush that could not wait where it was woken resumes.
                if self.conn.resume_flush(&mut ws) {
                    drop(ws);
                    self.conn.socket.wake_all();
                }
                return;
            }
        }
        // Marks the socket ready, so that the close reads what the peer sent whether or not
        // its edge was seen (`Conn::take_in_unread`). Not under the writer's lock: a woken
        // flush takes it.
        self.conn.socket.wake_all();
        let mut ws = self.conn.write.lock();
        if ws.closing {
            return;
        }
        ws.closing = true;
        if ws.pending() == 0 && !ws.flushing {
            self.conn.after_flush(&mut ws);
        } else {
            // Woken after the unlock below, whatever the resumed flush did.
            let _ = self.conn.resume_flush(&mut ws);
        }
        drop(ws);
        self.conn.socket.wake_all();
    }

    /// True once `close` was called (or the connection failed).
    pub fn is_closing(&self) -> bool {
        let ws = self.conn.write.lock();
        ws.closing || ws.closed
    }

    /// Waits until the connection is closed (after `close`, once the buffer is sent). A
    /// cancellation point.
    ///
    /// # Errors
    /// Cancelled; the error the connection failed with, if it did.
    pub fn wait_closed(&self) -> WaitClosed<'_> {
        WaitClosed { conn: &self.conn }
    }

    /// Sets the write buffer's high-water mark (and the low one to a quarter of it).
    pub fn set_write_buffer_limits(&self, high: usize) {
        let mut ws = self.conn.write.lock();
        ws.high = high;
        ws.low = high / 4;
    }

    /// Bytes queued and not yet sent.
    pub fn buffered(&self) -> usize {
        self.conn.write.lock().pending()
    }

    /// The remote address of a TCP connection.
    ///
    /// # Errors
    /// Kind `Io` (`NotConnected`); `InvalidState` for a Unix stream, which has no IP address.
    pub fn peer_addr(&self) -> Result<SocketAddr> {
        match &self.conn.socket {
            Socket::Tcp(s) => s.peer_addr(),
            Socket::Unix(_) => Err(Error::new(
                ErrorKind::InvalidState,
                "a Unix stream has no IP peer address",
            )),
        }
    }

    /// The local address of a TCP connection.
    ///
    /// # Errors
    /// As [`peer_addr`](Self::peer_addr).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        match &self.conn.socket {
            Socket::Tcp(s) => s.local_addr(),
            Socket::Unix(_) => Err(Error::new(
                ErrorKind::InvalidState,
                "a Unix stream has no IP local address",
            )),
        }
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        self.conn.write.lock().dropped = true;
        self.close();
    }
}

impl fmt::Debug for StreamWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ws = self.conn.write.lock();
        f.debug_struct("StreamWriter")
            .field("buffered", &ws.pending())
            .field("closing", &ws.closing)
            .finish()
    }
}

/// [`StreamWriter::drain`].
#[must_use = "futures do nothing unless awaited"]
pub struct Drain<'a> {
    conn: &'a Arc<Conn>,
    /// Polled before: the connection-lost check is made at the first poll only.
    polled: bool,
}

impl Future for Drain<'_> {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if let Some(cancel) = context::cancel_point() {
            return Poll::Ready(Err(cancel));
        }
        let this = self.get_mut();
        let conn = this.conn;
        let mut ws = conn.write.lock();
        // A flush that could not wait where it was woken (see `Flusher`) resumes here.
        if conn.resume_flush(&mut ws) {
            drop(ws);
            conn.socket.wake_all();
            ws = conn.write.lock();
        }
        if let Some(e) = &ws.error {
            return Poll::Ready(Err(e.clone()));
        }
        // asyncio's `drain` on a connection that `close` has ended raises
        // ConnectionResetError('Connection lost'). One that was already waiting when it ended
        // returns, as asyncio's `connection_lost(None)` completes its waiter; so does one
        // started while `close` still sends the buffer, as asyncio's finds the connection
        // not lost yet.
        let first = !std::mem::replace(&mut this.polled, true);
        if first && ws.closed {
            return Poll::Ready(Err(connection_lost()));
        }
        if !ws.paused {
            return Poll::Ready(Ok(()));
        }
        if !ws.drain_waiters.iter().any(|w| w.will_wake(cx.waker())) {
            ws.drain_waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// `drain` after the connection closed: kind `Io`, with an `io::Error` of kind
/// `ConnectionReset` inside, as asyncio's ConnectionResetError('Connection lost').
fn connection_lost() -> Error {
    Error::from(io::Error::new(
        io::ErrorKind::ConnectionReset,
        "Connection lost: drain() on a StreamWriter whose close() has closed the connection",
    ))
}

/// [`StreamWriter::wait_closed`].
#[must_use = "futures do nothing unless awaited"]
pub struct WaitClosed<'a> {
    conn: &'a Arc<Conn>,
}

impl Future for WaitClosed<'_> {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if let Some(cancel) = context::cancel_point() {
            return Poll::Ready(Err(cancel));
        }
        let mut ws = self.conn.write.lock();
        // A flush that could not wait where it was woken (see `Flusher`) resumes here.
        if ws.closing && self.conn.resume_flush(&mut ws) {
            drop(ws);
            self.conn.socket.wake_all();
            ws = self.conn.write.lock();
        }
        if ws.closed {
            return Poll::Ready(match &ws.error {
                Some(e) if !self.conn.is_aborted() => Err(e.clone()),
                _ => Ok(()),
            });
        }
        if !ws.close_waiters.iter().any(|w| w.will_wake(cx.waker())) {
            ws.close_waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Connects to `addr` and returns asyncio's stream pair (`asyncio.open_connection`).
///
/// ```
/// braid_runtime::run(async {
///     let listener = braid_runtime::TcpListener::bind("127.0.0.1:0").await?;
///     let (_r, w) = braid_runtime::open_connection(listener.local_addr()?).await?;
///     w.write(b"hello")?;
///     Ok(())
/// })
/// .unwrap();
/// ```
///
/// # Errors
/// As [`TcpStream::connect`].
pub fn open_connection(
    addr: impl ToSocketAddrs + Send + 'static,
) -> IoFuture<'static, (StreamReader, StreamWriter)> {
    Box::pin(async move { Ok(TcpStream::connect(addr).await?.into_streams()) })
}

/// `open_connection` for a Unix socket path (`asyncio.open_unix_connection`).
///
/// # Errors
/// As [`UnixStream::connect`].
pub fn open_unix_connection(
    path: impl Into<PathBuf>,
) -> IoFuture<'static, (StreamReader, StreamWriter)> {
    let path = path.into();
    Box::pin(async move { Ok(UnixStream::connect(path).await?.into_streams()) })
}

type HandlerFuture = Pin<Box<dyn Future<Output = Result<()>> + Send>>;
type Handler = dyn Fn(StreamReader, StreamWriter) -> HandlerFuture + Send + Sync;

struct ServerState {
    closed: bool,
    serving: bool,
    /// Live connections, by id (weak: a connection ends when its halves are dropped).
    conns: std::collections::HashMap<u64, Weak<Conn>>,
    next_id: u64,
    /// Tasks in `serve_forever` and `wait_closed`.
    waiters: Vec<Waker>,
}

struct ServerShared {
    addr: SocketAddr,
    listener: Mutex<Option<TcpListener>>,
    state: Mutex<ServerState>,
}

/// Held by a connection: tells its server when the connection is gone.
struct ServerLink {
    server: Weak<ServerShared>,
    id: u64,
}

impl Drop for ServerLink {
    fn drop(&mut self) {
        if let Some(server) = self.server.upgrade() {
            let woken = {
                let mut st = server.state.lock();
                st.conns.remove(&self.id);
                if st.closed && st.conns.is_empty() {
                    take_wakers(&mut st.waiters)
                } else {
                    Vec::new()
                }
            };
            wake(woken);
        }
    }
}

/// A listening server (asyncio's `Server`), from [`start_server`]. It serves from the start,
/// and goes on serving if this handle is dropped (as asyncio's does); `close` stops it.
///
/// ```
/// braid_runtime::run(async {
///     let server = braid_runtime::start_server(|_r, _w| async { Ok(()) }, "127.0.0.1:0").await?;
///     assert_ne!(server.local_addr().port(), 0);
///     server.close();
///     server.wait_closed().await?;
///     assert!(!server.is_serving());
///     Ok(())
/// })
/// .unwrap();
/// ```
pub struct Server {
    shared: Arc<ServerShared>,
}

/// Starts a TCP server on `addr` (`asyncio.start_server`): each connection gets its own task,
/// spread over the loops, running `handler(reader, writer)`. A handler's error is reported to
/// the loop's exception handler; the connection is closed when the handler returns.
///
/// A host name is resolved on the default thread pool and the first address that binds is
/// served (asyncio binds each one).
///
/// # Errors
/// Kind `Io` (the address is in use, say); `InvalidState` outside a braid runtime; `Closed`
/// once the runtime is shutting down.
pub fn start_server<H, Fut>(
    handler: H,
    addr: impl ToSocketAddrs + Send + 'static,
) -> IoFuture<'static, Server>
where
    H: Fn(StreamReader, StreamWriter) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let handler: Arc<Handler> = Arc::new(move |r, w| Box::pin(handler(r, w)));
    Box::pin(async move {
        let Some(rt) = context::current_loop().map(|ctx| ctx.rt.clone()) else {
            return Err(Error::new(
                ErrorKind::InvalidState,
                "start_server() needs a running braid event loop",
            ));
        };
        let mut last = None;
        let mut listener = None;
        for addr in resolve(addr).await? {
            match std::net::TcpListener::bind(addr) {
                Ok(l) => {
                    listener = Some(TcpListener::from_std(l)?);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let Some(listener) = listener else {
            return Err(Error::from(
                last.expect("resolve returns at least one address"),
            ));
        };
        let shared = Arc::new(ServerShared {
            addr: listener.local_addr()?,
            listener: Mutex::new(Some(listener)),
            state: Mutex::new(ServerState {
                closed: false,
                serving: false,
                conns: std::collections::HashMap::new(),
                next_id: 0,
                waiters: Vec::new(),
            }),
        });
        let accepting = shared.clone();
        let (accept, accepted) = spawn_task(&rt, None, accept_loop(accepting, handler, rt.clone()));
        if !accepted {
            // The runtime is shutting down: a server that would never accept is an error
            // (the listener closes with `shared`), not a task reported as never retrieved.
            accept.mark_quiet();
            return Err(crate::event_loop::closed_error());
        }
        drop(accept);
        Ok(Server { shared })
    })
}

/// How many connections the accept task takes in a row before it lets other tasks run.
const ACCEPT_BURST: usize = 64;

/// Closes its server when dropped: the accept task's future holds it, so the server stops
/// listening however that task ends. Cancelled before its first poll, or finished by force
/// at shutdown, the task drops its future without running it again, and a listener left
/// open would take connections into its backlog that nobody accepts, with `is_serving` true.
struct CloseOnDrop(Arc<ServerShared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The accept task's future. Not an `async fn`: the guard must exist before its first poll.
fn accept_loop(
    shared: Arc<ServerShared>,
    handler: Arc<Handler>,
    rt: Arc<RuntimeShared>,
) -> impl Future<Output = Result<()>> + Send {
    let guard = CloseOnDrop(shared.clone());
    async move {
        let _guard = guard;
        accept_connections(shared, handler, rt).await
    }
}

async fn accept_connections(
    shared: Arc<ServerShared>,
    handler: Arc<Handler>,
    rt: Arc<RuntimeShared>,
) -> Result<()> {
    let mut burst = 0;
    loop {
        let accepted = std::future::poll_fn(|cx| {
            if let Some(cancel) = context::cancel_point() {
                return Poll::Ready(Err(cancel));
            }
            match &*shared.listener.lock() {
                None => Poll::Ready(Ok(None)),
                Some(listener) => listener.poll_accept(cx).map(|r| r.map(Some)),
            }
        })
        .await;
        let (stream, _peer) = match accepted {
            Ok(Some(conn)) => conn,
            Ok(None) => return Ok(()),
            Err(e) if e.is_cancelled() => {
                shared.close();
                return Err(e);
            }
            Err(e) => {
                report(
                    &format!("accept() failed on the server at {}", shared.addr),
                    e.clone(),
                );
                // Out of descriptors or memory: give the process a moment (asyncio waits 1 s).
                let transient = e
                    .downcast_ref::<io::Error>()
                    .and_then(io::Error::raw_os_error)
                    .is_some_and(|c| {
                        [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM].contains(&c)
                    });
                if transient {
                    crate::sleep(std::time::Duration::from_millis(100)).await?;
                }
                continue;
            }
        };
        let conn = {
            let mut st = shared.state.lock();
            let id = st.next_id;
            st.next_id += 1;
            let conn = Conn::new(
                Socket::Tcp(stream),
                Some(ServerLink {
                    server: Arc::downgrade(&shared),
                    id,
                }),
            );
            st.conns.insert(id, Arc::downgrade(&conn));
            conn
        };
        let watched = conn.clone();
        let (reader, writer) = pair(conn);
        let handler = handler.clone();
        // The connection's task runs detached; its end is reported through the server. The
        // handler is called inside it, not here: a handler that panics before it returns its
        // future then fails its own task (reported as a panic in the future is, and its
        // streams are dropped, which closes the connection), not this accept loop.
        drop(spawn_task_spread(&rt, async move {
            if let Err(e) = handler(reader, writer).await {
                // An error out of `abort_clients` is the server's own doing, not the handler's.
                let aborted = watched.is_aborted();
                if !e.is_cancelled() && !aborted {
                    report("Unhandled exception in a start_server handler", e);
                }
            }
            Ok(())
        }));
        burst += 1;
        if burst >= ACCEPT_BURST {
            burst = 0;
            crate::yield_now().await?;
        }
    }
}

fn report(message: &str, error: Error) {
    if let Some(ctx) = context::current_loop() {
        ctx.lp
            .report(&ExceptionContext::new(message.to_owned()).with_error(error));
    }
}

impl ServerShared {
    fn close(&self) {
        let listener = self.listener.lock().take();
        // Dropping it deregisters and closes the socket: new connections are refused now,
        // and the accept task, woken by the deregistration, sees no listener and ends.
        drop(listener);
        let woken = {
            let mut st = self.state.lock();
            st.closed = true;
            take_wakers(&mut st.waiters)
        };
        wake(woken);
    }

    fn live(&self) -> Vec<Arc<Conn>> {
        self.state
            .lock()
            .conns
            .values()
            .filter_map(Weak::upgrade)
            .collect()
    }
}

impl Server {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// True until `close`.
    pub fn is_serving(&self) -> bool {
        !self.shared.state.lock().closed
    }

    /// Stops listening: new connections are refused at once. Connections already accepted go
    /// on (see [`close_clients`](Self::close_clients) and
    /// [`abort_clients`](Self::abort_clients)). Idempotent.
    pub fn close(&self) {
        self.shared.close();
    }

    /// Closes every open connection gracefully, as its writer's `close` does: queued data is
    /// sent, then the peer reads EOF, and so do the handlers' readers (CPython 3.13).
    pub fn close_clients(&self) {
        for conn in self.shared.live() {
            // As `StreamWriter::close`: the socket is marked ready before the writer's lock.
            conn.socket.wake_all();
            let mut ws = conn.write.lock();
            if !ws.closing {
                ws.closing = true;
                if ws.pending() == 0 && !ws.flushing {
                    conn.after_flush(&mut ws);
                } else {
                    // Woken after the unlock below, whatever the resumed flush did.
                    let _ = conn.resume_flush(&mut ws);
                }
            }
            drop(ws);
            conn.socket.wake_all();
        }
    }

    /// Aborts every open connection: queued data is dropped, the sockets are shut down, and
    /// every operation of the handlers on them fails with a `ConnectionAborted` I/O error
    /// (CPython 3.13).
    pub fn abort_clients(&self) {
        for conn in self.shared.live() {
            conn.abort();
        }
    }

    /// How many accepted connections are still open.
    pub fn connections(&self) -> usize {
        self.shared.live().len()
    }

    /// Serves until the server is closed; cancelling it closes the server (asyncio).
    ///
    /// # Errors
    /// Cancelled; `InvalidState` if the server is closed or another task is serving forever.
    pub fn serve_forever(&self) -> ServeForever<'_> {
        ServeForever {
            shared: &self.shared,
            claimed: false,
        }
    }

    /// Waits until the server is closed and every connection it accepted has ended (CPython
    /// 3.12). A cancellation point.
    ///
    /// # Errors
    /// Cancelled.
    pub fn wait_closed(&self) -> IoFuture<'_, ()> {
        let shared = &self.shared;
        Box::pin(std::future::poll_fn(move |cx| {
            if let Some(cancel) = context::cancel_point() {
                return Poll::Ready(Err(cancel));
            }
            let mut st = shared.state.lock();
            st.conns.retain(|_, c| c.strong_count() > 0);
            if st.closed && st.conns.is_empty() {
                return Poll::Ready(Ok(()));
            }
            if !st.waiters.iter().any(|w| w.will_wake(cx.waker())) {
                st.waiters.push(cx.waker().clone());
            }
            Poll::Pending
        }))
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.shared.addr)
            .field("serving", &self.is_serving())
            .finish()
    }
}

/// [`Server::serve_forever`].
#[must_use = "futures do nothing unless awaited"]
pub struct ServeForever<'a> {
    shared: &'a Arc<ServerShared>,
    claimed: bool,
}

impl Future for ServeForever<'_> {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if let Some(cancel) = context::cancel_point() {
            self.shared.close();
            return Poll::Ready(Err(cancel));
        }
        let mut st = self.shared.state.lock();
        if !self.claimed {
            if st.closed {
                return Poll::Ready(Err(Error::new(
                    ErrorKind::InvalidState,
                    format!("the server at {} is closed", self.shared.addr),
                )));
            }
            if st.serving {
                return Poll::Ready(Err(Error::new(
                    ErrorKind::InvalidState,
                    "the server is already being awaited on serve_forever()",
                )));
            }
            st.serving = true;
            self.claimed = true;
        }
        if st.closed {
            st.serving = false;
            self.claimed = false;
            return Poll::Ready(Ok(()));
        }
        if !st.waiters.iter().any(|w| w.will_wake(cx.waker())) {
            st.waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Drop for ServeForever<'_> {
    fn drop(&mut self) {
        if self.claimed {
            self.shared.state.lock().serving = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fills `st` as `StreamRead::poll` does for an operation that needs `need` bytes (0:
    /// unknown) until `total` bytes are buffered, from a peer that sends `total` bytes in
    /// reads as large as the room offered. Returns the largest capacity the buffer had.
    fn fill(st: &mut ReadState, need: usize, total: usize) -> usize {
        let mut peak = st.buf.capacity();
        while st.buffered() < total {
            let missing = total - st.buffered();
            let room = st.room(need);
            let n = room.len().min(missing);
            room[..n].fill(7);
            st.end += n;
            peak = peak.max(st.buf.capacity());
        }
        peak
    }

    /// `readexactly(n)` grew the buffer by doubling to `2n`: its need is known, so it grows
    /// to `n` and not past it by more than a chunk.
    #[test]
    fn a_known_need_grows_the_read_buffer_to_it_not_past_it() {
        const N: usize = 8 * 1024 * 1024 + 123;
        let mut st = ReadState::new(DEFAULT_LIMIT);
        let peak = fill(&mut st, N, N);
        assert_eq!(st.buffered(), N);
        assert!(
            peak <= N + READ_CHUNK,
            "the buffer grew to {peak} bytes for a need of {N}"
        );
        assert_eq!(st.take(N).len(), N);
    }

    /// A read buffer that empties gives back what it grew to beyond `READ_KEEP`, and one
    /// within it keeps its memory (no reallocation per message at usual sizes).
    #[test]
    fn an_emptied_read_buffer_gives_big_memory_back_and_keeps_small() {
        let mut st = ReadState::new(DEFAULT_LIMIT);
        fill(&mut st, 0, 8 * 1024 * 1024);
        let n = st.buffered();
        st.take(n - 1);
        assert!(
            st.buf.capacity() > READ_KEEP,
            "not empty yet: nothing to give back"
        );
        st.take(1);
        assert!(
            st.buf.capacity() <= READ_CHUNK,
            "an idle reader holds {} bytes",
            st.buf.capacity()
        );

        fill(&mut st, 0, READ_KEEP / 2);
        let small = st.buf.capacity();
        let n = st.buffered();
        st.take(n);
        assert_eq!(st.buf.capacity(), small);
    }

    /// Through a socket: after a large `readexactly` the idle reader's buffer is one chunk,
    /// not twice the message. (A runtime, which only runs outside loom's models.)
    #[test]
    #[cfg(not(loom))]
    fn a_large_readexactly_leaves_a_small_idle_read_buffer() {
        use std::io::Write;
        use std::time::Duration;
        const N: usize = 8 * 1024 * 1024;
        let rt = crate::Runtime::builder().workers(1).build().unwrap();
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let peer = std::thread::spawn(move || {
            let mut b = b;
            b.write_all(&vec![1u8; N]).unwrap();
            b
        });
        let (r, _w) = crate::UnixStream::from_std(a).unwrap().into_streams();
        let msg = rt
            .run_until_complete(crate::wait_for(
                r.readexactly(N),
                Some(Duration::from_secs(20)),
            ))
            .unwrap();
        assert_eq!(msg.len(), N);
        let _b = peer.join().unwrap();
        let held = r.conn.read.lock().buf.capacity();
        assert!(held <= READ_CHUNK, "an idle reader holds {held} bytes");
        drop((r, _w));
        rt.shutdown(Duration::from_secs(5)).unwrap();
    }
}
