//! The readiness protocol between a socket's users and the thread that dispatches its poller's
//! events, kept apart from the poller so that loom can model it.
//!
//! Sockets are registered edge-triggered: the poller reports a direction once when it becomes
//! ready, not for as long as it stays ready. So readiness is remembered here, per direction,
//! until an operation proves it stale by failing with `WouldBlock`. The proof may race a new
//! edge: an edge that arrives between the failing syscall and the clear must not be erased, or
//! the task would sleep on data that is already there. Every edge therefore bumps `tick`, an
//! operation remembers the tick it saw before its syscall, and `clear` erases readiness only if
//! no edge came since (tokio's scheme, here behind one mutex instead of a packed atomic).
//!
//! A stream read that returns fewer bytes than asked has drained the socket's data, and
//! clearing read readiness then saves the `recvfrom` that would only say `WouldBlock`. It has
//! not necessarily drained an end of stream that arrived with the data, though: that edge is
//! spent, and a reader waiting for another would wait forever. So every edge also says
//! whether the peer has closed its side (`EPOLLRDHUP`, `EPOLLHUP` or `EPOLLERR`: the
//! `READ_CLOSED` bit), which is remembered for good, and a short read clears readiness only
//! while that is known not to be so. An edge that came through `polling`'s own event list,
//! which does not show `EPOLLRDHUP`, is marked `UNSURE` and disables the clearing until a
//! read's `WouldBlock` proves no end of stream is waiting.
//!
//! A waiting task leaves its waker here and nothing takes it back if the task stops waiting
//! without an edge (it was cancelled, or raced the read against something else). One task
//! waiting again is the same waker and is stored once, but a stream of short-lived tasks
//! waiting in turn on a quiet socket would pile up wakers, each keeping its task's memory
//! alive. So the waiters of a direction are swept when their number doubles (see
//! [`Waiters`]): every waiter is woken, a wake-up that is spurious for a task still waiting
//! (it polls again, finds no readiness and stores its waker again), and a waker that a sweep
//! woke a while ago and that has not been stored again since is dropped. Dropping it loses
//! nothing: its task was woken and, if it still waits, stores itself again when it polls.

use braid_bridge::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A direction, as a bit of the readiness set.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Direction {
    Read = 1,
    Write = 2,
}

/// Both directions.
pub(crate) const ALL: u8 = Direction::Read as u8 | Direction::Write as u8;

/// An edge bit beside the directions: the peer has closed its sending side, or the socket
/// failed, so reads will not block again (see the module docs).
pub(crate) const READ_CLOSED: u8 = 4;

/// An edge bit beside the directions: the edge's source could not tell whether the peer has
/// closed (see the module docs).
pub(crate) const UNSURE: u8 = 8;

/// The readiness seen by one poll, to hand back to [`Readiness::clear`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Seen {
    dir: Direction,
    tick: u64,
}

/// What the registration half needs to do when a task must wait (see `Readiness::poll_ready`).
pub(crate) trait Arm {
    /// Makes sure future edges will be dispatched to this `Readiness`. Called with the state
    /// lock held and the waker already stored, so an edge dispatched right away finds it.
    fn arm(&self) -> std::io::Result<()>;
}

struct State {
    /// Bumped by every dispatched edge.
    tick: u64,
    /// Directions known ready (`Direction` bits).
    ready: u8,
    /// Tasks waiting for each direction. More than one when a socket is shared by reference
    /// (a `UdpSocket` received from by two tasks): each one must hear the edge.
    readers: Waiters,
    writers: Waiters,
    /// The socket is gone (deregistered or the runtime closed): every wait ends now.
    closed: bool,
    /// An edge said the peer closed its side: a short read never clears read readiness.
    read_closed: bool,
    /// An `UNSURE` read edge came since the last read that said `WouldBlock`: a short read
    /// does not clear read readiness either.
    read_unsure: bool,
}

/// One socket's readiness and waiting tasks.
pub(crate) struct Readiness {
    state: Mutex<State>,
}

/// The fewest waiters of one direction that start a sweep (see [`Waiters`]). Under loom, one,
/// so that a model with a few threads reaches the sweep.
const SWEEP_MIN: usize = if cfg!(loom) { 1 } else { 16 };

/// How long a waiter woken by a sweep has to store its waker again before a later sweep
/// drops it (see [`Waiters`]). Under loom, no time: the models check that a dropped waiter
/// was woken, whatever the timing.
const SWEEP_GRACE: Duration = if cfg!(loom) {
    Duration::ZERO
} else {
    Duration::from_millis(20)
};

/// The tasks waiting for one direction of a socket, kept bounded by sweeps (see the module
/// docs).
///
/// A new waiter that finds `sweep_at` of them first sweeps: each waiter not yet swept is
/// woken and marked, and each one marked by an earlier sweep at least `SWEEP_GRACE` ago that
/// has not stored its waker since is dropped. The next sweep comes when the list has doubled
/// from what this one kept. The grace is what keeps many tasks that really wait from being
/// dropped and woken over and over: a woken task polls again within its loop's next
/// iteration, but a crowd of them (a hundred tasks receiving from one `UdpSocket`) may all
/// come back only after several sweeps. So a sweep costs at most one wake-up per waiter,
/// paid for by as many new waiters since the last one, and the list holds the tasks really
/// waiting plus about twice the waiters that came within the last grace period (at least
/// `SWEEP_MIN` before a sweep).
struct Waiters {
    list: Vec<Waiter>,
    sweep_at: usize,
    /// The loom models' broken twin turns this off: a sweep that drops without waking.
    #[cfg(all(test, loom))]
    wake_on_sweep: bool,
}

struct Waiter {
    waker: Waker,
    /// When a sweep woke it, if it has not stored its waker again since.
    swept: Option<Instant>,
}

/// What a sweep took out, to wake and to drop once the state lock is released: a waker may
/// run its task right there, and dropping the last one drops a task, which may come back to
/// this socket.
#[derive(Default)]
struct Swept {
    wake: Vec<Waker>,
    release: Vec<Waker>,
}

impl Swept {
    fn finish(self) {
        for w in self.wake {
            w.wake();
        }
        drop(self.release);
    }
}

impl Waiters {
    fn new() -> Waiters {
        Waiters {
            list: Vec::new(),
            sweep_at: SWEEP_MIN,
            #[cfg(all(test, loom))]
            wake_on_sweep: true,
        }
    }

    /// Stores `waker` unless it is stored already. May sweep first (into `swept`), reading
    /// the time from `now`.
    fn add(&mut self, waker: &Waker, now: &dyn Fn() -> Instant, swept: &mut Swept) {
        if let Some(w) = self.list.iter_mut().find(|w| w.waker.will_wake(waker)) {
            w.swept = None;
            return;
        }
        if self.list.len() >= self.sweep_at {
            self.sweep(now(), swept);
        }
        self.list.push(Waiter {
            waker: waker.clone(),
            swept: None,
        });
    }

    fn sweep(&mut self, now: Instant, swept: &mut Swept) {
        let wake = self.wakes_on_sweep();
        self.list.retain_mut(|w| match w.swept {
            Some(at) if now.saturating_duration_since(at) >= SWEEP_GRACE => {
                // A clone goes out, so the waker's last reference drops after the unlock.
                swept.release.push(w.waker.clone());
                false
            }
            Some(_) => true,
            None => {
                w.swept = Some(now);
                if wake {
                    swept.wake.push(w.waker.clone());
                }
                true
            }
        });
        self.sweep_at = SWEEP_MIN.max(2 * self.list.len());
    }

    #[cfg(not(all(test, loom)))]
    fn wakes_on_sweep(&self) -> bool {
        true
    }

    #[cfg(all(test, loom))]
    fn wakes_on_sweep(&self) -> bool {
        self.wake_on_sweep
    }

    /// Takes `waker` out again: its task does not wait after all.
    fn forget(&mut self, waker: &Waker) {
        self.list.retain(|w| !w.waker.will_wake(waker));
    }

    /// Takes every waiter out, to be woken.
    fn take_into(&mut self, woken: &mut Vec<Waker>) {
        woken.extend(self.list.drain(..).map(|w| w.waker));
    }

    #[cfg(all(test, not(loom)))]
    fn len(&self) -> usize {
        self.list.len()
    }
}

impl Readiness {
    /// A new socket is assumed ready both ways: the first operation tries the syscall, and
    /// only a `WouldBlock` makes it wait (saves a poller round trip on a fresh connection).
    pub(crate) fn new() -> Readiness {
        Readiness {
            state: Mutex::new(State {
                tick: 0,
                ready: ALL,
                readers: Waiters::new(),
                writers: Waiters::new(),
                closed: false,
                read_closed: false,
                read_unsure: false,
            }),
        }
    }

    /// The dispatcher saw an edge for `ready` (`Direction` bits, with `READ_CLOSED` and
    /// `UNSURE`): remember it and wake whoever waits for it.
    pub(crate) fn set(&self, ready: u8) {
        let mut woken = Vec::new();
        {
            let mut st = self.state.lock();
            st.tick = st.tick.wrapping_add(1);
            st.ready |= ready & ALL;
            if ready & READ_CLOSED != 0 {
                st.read_closed = true;
            }
            if ready & UNSURE != 0 && ready & Direction::Read as u8 != 0 {
                st.read_unsure = true;
            }
            if ready & Direction::Read as u8 != 0 {
                st.readers.take_into(&mut woken);
            }
            if ready & Direction::Write as u8 != 0 {
                st.writers.take_into(&mut woken);
            }
        }
        // Outside the lock: a waker may run the task right here (a host loop's main future),
        // and that task will come back to this lock.
        for w in woken {
            w.wake();
        }
    }

    /// Ready: the tick to hand to `clear` if the syscall then says `WouldBlock`. Pending: the
    /// waker is stored and `arm` was called, so the next edge wakes this task. An error of
    /// `arm`: the task cannot wait, and its waker is not kept.
    pub(crate) fn poll_ready(
        &self,
        dir: Direction,
        cx: &mut Context<'_>,
        arm: &dyn Arm,
    ) -> Poll<std::io::Result<Seen>> {
        self.poll_ready_at(dir, cx, arm, &Instant::now)
    }

    /// `poll_ready` with the clock a sweep reads (the tests set it).
    fn poll_ready_at(
        &self,
        dir: Direction,
        cx: &mut Context<'_>,
        arm: &dyn Arm,
        now: &dyn Fn() -> Instant,
    ) -> Poll<std::io::Result<Seen>> {
        let mut swept = Swept::default();
        let polled = {
            let mut st = self.state.lock();
            if st.closed || st.ready & dir as u8 != 0 {
                return Poll::Ready(Ok(Seen { dir, tick: st.tick }));
            }
            match dir {
                Direction::Read => st.readers.add(cx.waker(), now, &mut swept),
                Direction::Write => st.writers.add(cx.waker(), now, &mut swept),
            }
            match arm.arm() {
                Ok(()) => Poll::Pending,
                Err(e) => {
                    // The task gets the error instead of a wait, so its waker goes: kept, it
                    // would hold the task (or a stream's flush, and through it the socket)
                    // for as long as the socket lives, with nothing to wake it.
                    match dir {
                        Direction::Read => st.readers.forget(cx.waker()),
                        Direction::Write => st.writers.forget(cx.waker()),
                    }
                    Poll::Ready(Err(e))
                }
            }
        };
        swept.finish();
        polled
    }

    /// The syscall after `seen` said `WouldBlock`: forget the readiness, unless an edge
    /// arrived since (then the caller simply tries again).
    pub(crate) fn clear(&self, seen: Seen) {
        let mut st = self.state.lock();
        if st.tick == seen.tick && !st.closed {
            st.ready &= !(seen.dir as u8);
            if seen.dir == Direction::Read {
                // A read that blocks is not at an end of stream: whatever closes the peer's
                // side from now on brings an edge of its own.
                st.read_unsure = false;
            }
        }
    }

    /// A syscall after `seen` moved fewer bytes than asked, so the socket is drained in that
    /// direction: clear it as `clear` would after a `WouldBlock`, unless an end of stream may
    /// be waiting behind the data (see the module docs).
    pub(crate) fn clear_drained(&self, seen: Seen) {
        let mut st = self.state.lock();
        let maybe_eof = seen.dir == Direction::Read && (st.read_closed || st.read_unsure);
        if st.tick == seen.tick && !st.closed && !maybe_eof {
            st.ready &= !(seen.dir as u8);
        }
    }

    /// Ends every wait, now and later: the socket's registration is gone. Operations then
    /// go straight to the syscall, which reports what happened to the socket.
    pub(crate) fn close(&self) {
        let woken = {
            let mut st = self.state.lock();
            st.closed = true;
            st.ready = ALL;
            let mut woken = Vec::new();
            st.readers.take_into(&mut woken);
            st.writers.take_into(&mut woken);
            woken
        };
        for w in woken {
            w.wake();
        }
    }

    /// Wakes every waiting task and marks the socket ready both ways (a connection was shut
    /// down or aborted from elsewhere and its users must come and see). Its reads may end
    /// without a further edge, so short reads stop clearing until one blocks.
    pub(crate) fn wake_all(&self) {
        self.set(ALL | UNSURE);
    }
}

/// Runs one readiness-driven syscall: waits for `dir`, tries `op`, and on `WouldBlock` clears
/// the readiness it tried with and waits again.
///
/// `drained` says, of a successful result, whether it proves the socket drained in `dir` (a
/// stream read or write that moved fewer bytes than asked). The readiness is then cleared at
/// once (`Readiness::clear_drained`), as if the next syscall had said `WouldBlock`, which
/// saves that syscall: an edge that arrives after it still sets readiness again (the tick
/// sees to that).
pub(crate) fn poll_io<T>(
    readiness: &Readiness,
    dir: Direction,
    cx: &mut Context<'_>,
    arm: &dyn Arm,
    mut op: impl FnMut() -> std::io::Result<T>,
    drained: impl Fn(&T) -> bool,
) -> Poll<std::io::Result<T>> {
    loop {
        let seen = match readiness.poll_ready(dir, cx, arm) {
            Poll::Ready(Ok(seen)) => seen,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        match op() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => readiness.clear(seen),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(value) => {
                if drained(&value) {
                    readiness.clear_drained(seen);
                }
                return Poll::Ready(Ok(value));
            }
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

/// For the tests and models: a registration that has nothing to arm.
#[cfg(test)]
struct NoArm;

#[cfg(test)]
impl Arm for NoArm {
    fn arm(&self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    /// A task as the readiness sees it: its waker, and how often it was woken.
    struct Probe {
        wakes: AtomicUsize,
    }

    impl Wake for Probe {
        fn wake(self: Arc<Self>) {
            self.wakes.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn probe() -> Arc<Probe> {
        Arc::new(Probe {
            wakes: AtomicUsize::new(0),
        })
    }

    fn wakes(p: &Arc<Probe>) -> usize {
        p.wakes.load(Ordering::SeqCst)
    }

    /// Polls `readiness` for reading as the task `p`, at `now`.
    fn poll_as(readiness: &Readiness, p: &Arc<Probe>, now: Instant) -> bool {
        let waker = Waker::from(p.clone());
        let mut cx = Context::from_waker(&waker);
        readiness
            .poll_ready_at(Direction::Read, &mut cx, &NoArm, &|| now)
            .is_ready()
    }

    /// The `i`th millisecond after `start`.
    fn ms(start: Instant, i: usize) -> Instant {
        start + Duration::from_millis(i as u64)
    }

    fn quiet() -> Readiness {
        let readiness = Readiness::new();
        readiness.clear(Seen {
            dir: Direction::Read,
            tick: 0,
        });
        readiness
    }

    #[test]
    fn wakers_of_tasks_that_stopped_waiting_are_released() {
        let readiness = quiet();
        let start = Instant::now();
        // One task a millisecond waits once and goes (cancelled, or it raced the read against
        // something else), for one second.
        let gone: Vec<Arc<Probe>> = (0..1000).map(|_| probe()).collect();
        for (i, p) in gone.iter().enumerate() {
            assert!(!poll_as(&readiness, p, ms(start, i)));
        }
        // Each probe's own reference is ours; any other is a waker the readiness still holds.
        // At most: the grace period's waiters (20) and the list before its next sweep.
        let held: usize = gone.iter().map(|p| Arc::strong_count(p) - 1).sum();
        assert!(
            held <= 2 * (SWEEP_MIN + SWEEP_GRACE.as_millis() as usize),
            "{held} wakers of 1000 tasks that stopped waiting are still held"
        );
        assert_eq!(held, readiness.state.lock().readers.len());
    }

    #[test]
    fn a_task_still_waiting_is_woken_by_a_sweep_and_then_by_the_edge() {
        let readiness = quiet();
        let start = Instant::now();
        let waiting = probe();
        assert!(!poll_as(&readiness, &waiting, start));
        let mut seen = wakes(&waiting);
        let mut polls = 1;
        for i in 0..1000 {
            assert!(!poll_as(&readiness, &probe(), ms(start, i)));
            // As its loop would, a little later: a woken task polls again, still not ready.
            if wakes(&waiting) > seen {
                seen = wakes(&waiting);
                polls += 1;
                assert!(!poll_as(&readiness, &waiting, ms(start, i + 1)));
            }
        }
        assert!(
            polls > 1,
            "1000 other waiters came and went without a sweep"
        );
        readiness.set(Direction::Read as u8);
        assert!(
            wakes(&waiting) > seen,
            "the edge did not wake the task still waiting: it was swept out and lost"
        );
        assert!(poll_as(&readiness, &waiting, ms(start, 1001)));
    }

    #[test]
    fn many_tasks_still_waiting_settle_after_a_few_sweeps() {
        let readiness = quiet();
        let now = Instant::now();
        let crowd: Vec<Arc<Probe>> = (0..100).map(|_| probe()).collect();
        let mut seen = vec![usize::MAX; crowd.len()];
        let mut rounds = 0;
        // Each round polls again every task woken since its last poll (all of them at first),
        // as their loops would; the crowd has settled when a round polls nobody.
        loop {
            let mut polled = 0;
            for (p, seen) in crowd.iter().zip(&mut seen) {
                if *seen != wakes(p) {
                    *seen = wakes(p);
                    polled += 1;
                    assert!(!poll_as(&readiness, p, now));
                }
            }
            if polled == 0 {
                break;
            }
            rounds += 1;
            assert!(rounds <= 20, "the sweeps keep waking the same tasks");
        }
        let total: usize = crowd.iter().map(wakes).sum();
        assert!(total <= 3 * crowd.len(), "{total} spurious wake-ups");
        assert_eq!(readiness.state.lock().readers.len(), crowd.len());
        readiness.set(Direction::Read as u8);
        assert!(crowd.iter().zip(&seen).all(|(p, &s)| wakes(p) == s + 1));
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    //! The no-lost-edge property: a task that finds no data and waits is always woken by the
    //! edge that follows the data, however the edge interleaves with its syscall and clear.
    use super::*;
    use crate::sync::loom_support::Flag;
    use braid_bridge::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// One readiness-driven read of the "socket" `queued` (bytes the kernel holds).
    fn try_read(
        readiness: &Readiness,
        queued: &AtomicUsize,
        cx: &mut Context<'_>,
        broken_clear: bool,
    ) -> Poll<usize> {
        loop {
            let seen = match readiness.poll_ready(Direction::Read, cx, &NoArm) {
                Poll::Ready(seen) => seen.unwrap(),
                Poll::Pending => return Poll::Pending,
            };
            let n = queued.swap(0, Ordering::SeqCst);
            if n > 0 {
                return Poll::Ready(n);
            }
            if broken_clear {
                readiness.state.lock().ready &= !(Direction::Read as u8);
            } else {
                readiness.clear(seen);
            }
        }
    }

    /// `broken_clear` erases readiness whatever edge came since: the bug the tick prevents.
    fn model(broken_clear: bool) {
        loom::model(move || {
            let readiness = Arc::new(Readiness::new());
            let queued = Arc::new(AtomicUsize::new(0));
            let (r, q) = (readiness.clone(), queued.clone());
            let peer = loom::thread::spawn(move || {
                q.fetch_add(1, Ordering::SeqCst);
                r.set(Direction::Read as u8);
            });
            let (flag, waker) = Flag::new();
            let mut cx = Context::from_waker(&waker);
            let first = try_read(&readiness, &queued, &mut cx, broken_clear);
            peer.join().unwrap();
            if first.is_pending() {
                assert!(
                    flag.woken(),
                    "an edge was lost: data is queued and the waiting task was never woken"
                );
                assert_eq!(
                    try_read(&readiness, &queued, &mut cx, broken_clear),
                    Poll::Ready(1)
                );
            }
        });
    }

    #[test]
    fn loom_readiness_edge_is_never_lost() {
        model(false);
    }

    #[test]
    #[should_panic(expected = "an edge was lost")]
    fn loom_readiness_clear_without_tick_loses_an_edge() {
        model(true);
    }

    /// A socket in the model: bytes the kernel holds, and whether the peer's FIN came.
    struct Socket {
        queued: AtomicUsize,
        fin: AtomicUsize,
    }

    /// Reads the model socket until its end of stream (Ready) or until it must wait. Every
    /// read that finds data is short (the buffer is larger than what arrived), so it clears
    /// readiness as a stream read does; `broken_clear` clears it whatever the edges said.
    fn read_to_eof(
        readiness: &Readiness,
        socket: &Socket,
        cx: &mut Context<'_>,
        broken_clear: bool,
    ) -> Poll<()> {
        loop {
            let seen = match readiness.poll_ready(Direction::Read, cx, &NoArm) {
                Poll::Ready(seen) => seen.unwrap(),
                Poll::Pending => return Poll::Pending,
            };
            if socket.queued.swap(0, Ordering::SeqCst) > 0 {
                if broken_clear {
                    let mut st = readiness.state.lock();
                    if st.tick == seen.tick {
                        st.ready &= !(Direction::Read as u8);
                    }
                } else {
                    readiness.clear_drained(seen);
                }
                continue;
            }
            if socket.fin.load(Ordering::SeqCst) > 0 {
                return Poll::Ready(());
            }
            readiness.clear(seen);
        }
    }

    /// The peer sends its last data and closes at once: one edge, with `edge` bits.
    fn short_read_model(edge: u8, broken_clear: bool) {
        loom::model(move || {
            let readiness = Arc::new(Readiness::new());
            let socket = Arc::new(Socket {
                queued: AtomicUsize::new(0),
                fin: AtomicUsize::new(0),
            });
            let (r, s) = (readiness.clone(), socket.clone());
            let peer = loom::thread::spawn(move || {
                s.queued.fetch_add(1, Ordering::SeqCst);
                s.fin.store(1, Ordering::SeqCst);
                r.set(Direction::Read as u8 | edge);
            });
            let (flag, waker) = Flag::new();
            let mut cx = Context::from_waker(&waker);
            let first = read_to_eof(&readiness, &socket, &mut cx, broken_clear);
            peer.join().unwrap();
            if first.is_pending() {
                assert!(
                    flag.woken()
                        && read_to_eof(&readiness, &socket, &mut cx, broken_clear).is_ready(),
                    "the end of stream was lost: its edge was spent and the reader waits"
                );
            }
        });
    }

    #[test]
    fn loom_readiness_short_read_keeps_an_eof_the_edge_reported() {
        short_read_model(READ_CLOSED, false);
    }

    #[test]
    fn loom_readiness_short_read_keeps_an_eof_an_unsure_edge_may_hide() {
        short_read_model(UNSURE, false);
    }

    #[test]
    #[should_panic(expected = "the end of stream was lost")]
    fn loom_readiness_short_read_clearing_blindly_loses_the_eof() {
        short_read_model(READ_CLOSED, true);
    }

    #[test]
    fn loom_readiness_close_ends_every_wait() {
        loom::model(|| {
            let readiness = Arc::new(Readiness::new());
            readiness.clear(Seen {
                dir: Direction::Write,
                tick: 0,
            });
            let r = readiness.clone();
            let closer = loom::thread::spawn(move || r.close());
            let (flag, waker) = Flag::new();
            let mut cx = Context::from_waker(&waker);
            let first = readiness.poll_ready(Direction::Write, &mut cx, &NoArm);
            closer.join().unwrap();
            if first.is_pending() {
                assert!(flag.woken(), "close left a waiter asleep");
            }
            assert!(readiness
                .poll_ready(Direction::Write, &mut cx, &NoArm)
                .is_ready());
        });
    }

    /// A socket's registration as `IoSource::arm` sees it: whether the loop it is registered
    /// with has closed (the loop's state word), and whether an arm saw that and moved the
    /// socket to a live loop.
    struct HomeLoop {
        closed: AtomicUsize,
        moved: AtomicUsize,
    }

    impl Arm for HomeLoop {
        fn arm(&self) -> std::io::Result<()> {
            if self.closed.load(Ordering::SeqCst) > 0 {
                self.moved.store(1, Ordering::SeqCst);
            }
            Ok(())
        }
    }

    /// Waits as `poll_io` does on a socket with nothing to read: each readiness it is given
    /// is spent on a `WouldBlock` and cleared, until it has to wait.
    fn wait_for_data(readiness: &Readiness, home: &HomeLoop, cx: &mut Context<'_>) {
        while let Poll::Ready(seen) = readiness.poll_ready(Direction::Read, cx, home) {
            readiness.clear(seen.unwrap());
        }
    }

    /// The loop a socket is registered with closes while a task (of another runtime) waits on
    /// it (`IoDriver::wake_after_close`): the loop is Closed before it wakes the waiters, so
    /// the task either sees it closed as it arms and moves the socket, or is woken after and
    /// sees it closed when it waits again. `wake_first` wakes before marking Closed: the bug
    /// the order prevents, a wait on a poller nobody polls.
    fn closing_loop_model(wake_first: bool) {
        loom::model(move || {
            let readiness = Arc::new(Readiness::new());
            readiness.clear(Seen {
                dir: Direction::Read,
                tick: 0,
            });
            let home = Arc::new(HomeLoop {
                closed: AtomicUsize::new(0),
                moved: AtomicUsize::new(0),
            });
            let (r, h) = (readiness.clone(), home.clone());
            let closing = loom::thread::spawn(move || {
                if wake_first {
                    r.wake_all();
                }
                h.closed.store(1, Ordering::SeqCst);
                if !wake_first {
                    r.wake_all();
                }
            });
            let (flag, waker) = Flag::new();
            let mut cx = Context::from_waker(&waker);
            wait_for_data(&readiness, &home, &mut cx);
            closing.join().unwrap();
            if home.moved.load(Ordering::SeqCst) == 0 {
                assert!(
                    flag.woken(),
                    "a task waits on the poller of a closed loop and nobody will wake it"
                );
                wait_for_data(&readiness, &home, &mut cx);
                assert_eq!(home.moved.load(Ordering::SeqCst), 1);
            }
        });
    }

    #[test]
    fn loom_readiness_a_waiter_on_a_closing_loop_moves_or_is_woken() {
        closing_loop_model(false);
    }

    #[test]
    #[should_panic(expected = "a task waits on the poller of a closed loop")]
    fn loom_readiness_twin_waking_before_the_close_strands_a_waiter() {
        closing_loop_model(true);
    }

    /// A task waits; meanwhile another thread's tasks wait on the same socket, enough of them
    /// to sweep the list twice (the first sweep wakes the task, the second drops it, as it
    /// has not polled again), and then the edge comes. `wake_on_sweep: false` is the broken
    /// twin: a sweep that drops a waiter it never woke.
    fn sweep_model(wake_on_sweep: bool) {
        loom::model(move || {
            let readiness = Arc::new(Readiness::new());
            readiness.clear(Seen {
                dir: Direction::Read,
                tick: 0,
            });
            readiness.state.lock().readers.wake_on_sweep = wake_on_sweep;
            let r = readiness.clone();
            let crowd = loom::thread::spawn(move || {
                for _ in 0..2 {
                    let (_flag, waker) = Flag::new();
                    let mut cx = Context::from_waker(&waker);
                    let _ = r.poll_ready(Direction::Read, &mut cx, &NoArm);
                }
                r.set(Direction::Read as u8);
            });
            let (flag, waker) = Flag::new();
            let mut cx = Context::from_waker(&waker);
            let first = readiness.poll_ready(Direction::Read, &mut cx, &NoArm);
            crowd.join().unwrap();
            if first.is_pending() {
                assert!(
                    flag.woken(),
                    "a waiting task was swept out without a wake-up and missed the edge"
                );
            }
            assert!(readiness
                .poll_ready(Direction::Read, &mut cx, &NoArm)
                .is_ready());
        });
    }

    #[test]
    fn loom_readiness_sweep_wakes_a_task_before_dropping_it() {
        sweep_model(true);
    }

    #[test]
    #[should_panic(expected = "swept out without a wake-up")]
    fn loom_readiness_sweep_dropping_unwoken_loses_the_edge() {
        sweep_model(false);
    }
}
