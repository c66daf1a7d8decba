//! Each worker loop's I/O driver: the sockets registered with its poller, and the dispatch of
//! the poller's events to their readiness.
//!
//! A socket is registered the first time a task must wait on it, with the poller of the worker
//! loop holding the fewest sockets (the loop the task runs on when it holds no more than any
//! other, or when the task is pinned to it). Registration is edge-triggered for both
//! directions and lasts until the socket is dropped, so a waiting task costs no `epoll_ctl`
//! after the first wait, and the task follows its socket: the loop whose poller reports the
//! socket ready is the one the task is woken on.
//!
//! Why the fewest rather than the loop the task first runs on: a loop's sockets wake only that
//! loop, and it sees them only when it polls, so sockets concentrated on one loop wait behind
//! its queue while a sibling idles. Placed where their handlers first ran, a server's 50
//! connections split 60/40 to 80/20 between two loops, because the loop that accepts them
//! runs most of the new handlers before a sibling steals any; `echo` took 44-48 ms per
//! iteration that way, 39-42 ms spread evenly (medians of alternating quick runs, eight to
//! ten each; tokio 40-47 ms in the same runs).
//!
//! Who waits on a loop's poller: the loop itself, blocking while it sleeps and without blocking
//! every few iterations while it runs; and the monitor thread, without blocking, while the loop
//! is stuck in one long callback or poll (so I/O on a stuck loop still wakes its tasks within
//! a few milliseconds: DESIGN.md's no-stranding rule). `drive` decides who may wait: the loop
//! holds it from before it announces sleep until it is awake again, so the monitor can never
//! swallow a doorbell notification meant for a sleeping loop.

use super::readiness::{Arm, Direction, Readiness, READ_CLOSED, UNSURE};
use crate::context;
use crate::event_loop::LoopShared;
use crate::scheduler::RuntimeShared;
use crate::LoopState;
use braid_bridge::sync::atomic::{AtomicUsize, Ordering};
use braid_bridge::sync::{Mutex, MutexGuard};
use braid_bridge::{Error, ErrorKind};
use polling::Events;
use rustix::event::epoll;
use std::io;
use std::os::fd::{AsFd, RawFd};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// A loop's registered sockets.
pub(crate) struct IoDriver {
    sources: Mutex<SourceSlab>,
    /// How many sockets are registered: a loop with none skips its I/O polls.
    registered: AtomicUsize,
    /// Held by whoever waits on the poller (see the module docs).
    drive: Mutex<()>,
    /// Event buffers for `poll_now` (used under `drive`).
    scratch: Mutex<Scratch>,
}

/// `polling`'s event buffer for `poll_now`'s fallback.
struct Scratch {
    events: Events,
}

/// Events one non-blocking poll takes at most (more wait for the next one).
const RAW_EVENTS: usize = 64;

#[derive(Default)]
struct SourceSlab {
    slots: Vec<Option<Arc<IoSource>>>,
    free: Vec<usize>,
    /// The loop has closed and `wake_after_close` has taken its list of sockets: a socket
    /// added now would never be woken, so none is (see `admit`).
    closed: bool,
}

impl IoDriver {
    pub(crate) fn new() -> IoDriver {
        IoDriver {
            sources: Mutex::new(SourceSlab::default()),
            registered: AtomicUsize::new(0),
            drive: Mutex::new(()),
            scratch: Mutex::new(Scratch {
                events: Events::new(),
            }),
        }
    }

    pub(crate) fn registered(&self) -> usize {
        self.registered.load(Ordering::Relaxed)
    }

    /// The loop has closed, and nobody polls its poller any more: wakes whoever waits on a
    /// socket registered with it. A waiter that tries again and has to wait re-registers the
    /// socket (`IoSource::arm`, which sees the loop closed): with a loop of the runtime it
    /// is used in now (a task of another runtime), or fails off the loops.
    ///
    /// From now on the slab refuses new sockets (`admit`): one that a task chose this loop
    /// for just before it closed, and adds after this list is taken, would be in a poller
    /// nobody polls, woken by nobody. The flag and the list are taken under one lock, so
    /// each socket is either in the list or refused.
    pub(crate) fn wake_after_close(&self) {
        let sources: Vec<Arc<IoSource>> = {
            let mut slab = self.sources.lock();
            slab.closed = true;
            slab.slots.iter().flatten().cloned().collect()
        };
        for source in sources {
            source.readiness.wake_all();
        }
    }

    /// Puts `source` in the slab, unless the loop has closed (see `wake_after_close`).
    /// Returns its key.
    fn admit(&self, source: &Arc<IoSource>) -> Option<usize> {
        let mut slab = self.sources.lock();
        if slab.closed {
            return None;
        }
        let key = match slab.free.pop() {
            Some(key) => {
                slab.slots[key] = Some(source.clone());
                key
            }
            None => {
                slab.slots.push(Some(source.clone()));
                slab.slots.len() - 1
            }
        };
        Some(key)
    }

    /// Empties the slot `key` (its socket is no longer registered here).
    fn forget(&self, key: usize) {
        let mut slab = self.sources.lock();
        slab.slots[key] = None;
        slab.free.push(key);
    }

    /// Taken by the loop before it announces sleep, held until it is awake.
    pub(crate) fn lock_drive(&self) -> MutexGuard<'_, ()> {
        self.drive.lock()
    }

    /// Hands each event of `polling`'s list to its socket's readiness. Returns how many were
    /// dispatched. The list does not show `EPOLLRDHUP`, so the edges are `UNSURE`.
    pub(crate) fn dispatch(&self, events: &Events) -> usize {
        let mut n = 0;
        for ev in events.iter() {
            if let Some(source) = self.source(ev.key) {
                source.readiness.set(polling_edge_bits(&ev));
                n += 1;
            }
        }
        n
    }

    /// As `dispatch`, for raw epoll events. Also says whether one of them was not a socket's
    /// (the poller's own notifier or timer).
    fn dispatch_raw(&self, events: &[epoll::Event]) -> (usize, bool) {
        let (mut n, mut foreign) = (0, false);
        for ev in events {
            match self.source_of(ev) {
                Some(source) => {
                    source.readiness.set(edge_bits(ev.flags));
                    n += 1;
                }
                None => foreign = true,
            }
        }
        (n, foreign)
    }

    /// The socket registered under `key`, if there is one. A missing slot is an event that
    /// raced its socket's deregistration, or the poller's own notifier or timer.
    fn source(&self, key: usize) -> Option<Arc<IoSource>> {
        let slab = self.sources.lock();
        slab.slots.get(key).and_then(|s| s.clone())
    }

    fn source_of(&self, ev: &epoll::Event) -> Option<Arc<IoSource>> {
        self.source(usize::try_from(ev.data.u64()).ok()?)
    }
}

/// The readiness bits of an epoll event (see `readiness`).
fn edge_bits(flags: epoll::EventFlags) -> u8 {
    use epoll::EventFlags as F;
    let mut ready = 0;
    if flags.intersects(F::IN | F::HUP | F::ERR | F::PRI | F::RDHUP) {
        ready |= Direction::Read as u8;
    }
    if flags.intersects(F::OUT | F::HUP | F::ERR) {
        ready |= Direction::Write as u8;
    }
    if flags.intersects(F::RDHUP | F::HUP | F::ERR) {
        ready |= READ_CLOSED;
    }
    ready
}

/// The readiness bits of an event from `polling`'s list, which does not show `EPOLLRDHUP`:
/// `UNSURE` (see `readiness`).
fn polling_edge_bits(ev: &polling::Event) -> u8 {
    let mut ready = UNSURE;
    if ev.readable {
        ready |= Direction::Read as u8;
    }
    if ev.writable {
        ready |= Direction::Write as u8;
    }
    ready
}

/// An empty epoll event, to fill a buffer with.
const NO_EVENT: epoll::Event = epoll::Event {
    flags: epoll::EventFlags::empty(),
    data: epoll::EventData::new_u64(0),
};

/// Polls `lp`'s poller without blocking and dispatches what it reports, unless someone else
/// is waiting on it (the loop asleep, or another poll). Returns how many sockets were woken.
///
/// `polling`'s own `wait` costs five syscalls on Linux (it re-arms its timer and notifier every
/// time); a loop polls its sockets often while it runs, so this is one `epoll_wait` with a zero
/// timeout. If that consumes an event that is not one of our sockets' (the poller's notifier or
/// timer), a `polling` wait follows at once, to clear and re-arm them as `polling` expects.
pub(crate) fn poll_now(lp: &LoopShared) -> usize {
    if lp.io.registered() == 0 {
        return 0;
    }
    let Some(_drive) = lp.io.drive.try_lock() else {
        return 0;
    };
    // On the stack: rustix's event type is not `Send`, and 64 of them are 768 bytes.
    let mut raw = [NO_EVENT; RAW_EVENTS];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let n = match epoll::wait(lp.poller().as_fd(), &mut raw[..], Some(&zero)) {
        Ok(n) => n,
        Err(_) => return 0,
    };
    let (woken, foreign) = lp.io.dispatch_raw(&raw[..n]);
    if !foreign {
        return woken;
    }
    let mut scratch = lp.io.scratch.lock();
    let events = &mut scratch.events;
    events.clear();
    match lp.poller().wait(events, Some(Duration::ZERO)) {
        Ok(_) => woken + lp.io.dispatch(events),
        Err(_) => woken,
    }
}

/// Socket edges a sleeping loop took from its poller, held until it is awake again to
/// dispatch them (`dispatch_edges`): a task woken from inside the sleep would be offered to
/// the sleeping loop itself as idle.
pub(crate) type Edges = Vec<(Arc<IoSource>, u8)>;

/// Sleeps in `lp`'s poller until a socket, the poller's notifier or `timeout` wakes it, and
/// leaves the socket edges it brought in `edges` (even when it then fails). The caller holds
/// the drive lock.
///
/// One `epoll_wait`, through rustix rather than `polling`'s `wait`, for two reasons: the
/// events keep their `EPOLLRDHUP` bit (see `readiness`), and a wake-up by a socket costs one
/// syscall instead of five. `timeout` is rounded up to whole milliseconds, as tokio's and
/// asyncio's pollers round it. When the notifier or timer woke us, a non-blocking `polling`
/// wait follows to clear and re-arm them, as `poll_now` does.
pub(crate) fn wait(
    lp: &LoopShared,
    timeout: Option<Duration>,
    edges: &mut Edges,
) -> io::Result<()> {
    edges.clear();
    let mut raw = [NO_EVENT; RAW_EVENTS];
    let timeout = timeout.map(|t| rustix::event::Timespec {
        tv_sec: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    let n = epoll::wait(lp.poller().as_fd(), &mut raw[..], timeout.as_ref())?;
    let mut foreign = false;
    for ev in &raw[..n] {
        match lp.io.source_of(ev) {
            Some(source) => edges.push((source, edge_bits(ev.flags))),
            None => foreign = true,
        }
    }
    if foreign {
        let mut scratch = lp.io.scratch.lock();
        let events = &mut scratch.events;
        events.clear();
        lp.poller().wait(events, Some(Duration::ZERO))?;
        for ev in events.iter() {
            if let Some(source) = lp.io.source(ev.key) {
                edges.push((source, polling_edge_bits(&ev)));
            }
        }
    }
    Ok(())
}

/// Hands the edges a `wait` brought to their sockets.
pub(crate) fn dispatch_edges(edges: &mut Edges) {
    for (source, ready) in edges.drain(..) {
        source.readiness.set(ready);
    }
}

/// Where a socket is registered.
struct Registration {
    home: Arc<LoopShared>,
    key: usize,
}

/// One socket's registration state: its readiness, and the poller it is registered with once
/// a task has had to wait on it.
pub(crate) struct IoSource {
    pub(crate) readiness: Readiness,
    fd: RawFd,
    registration: Mutex<Option<Registration>>,
    /// The runtime whose loop the socket was made on, if any: where it registers when it
    /// first has to wait off the loops (a `StreamWriter` written from a thread-pool job).
    made_in: Weak<RuntimeShared>,
}

/// The error for a socket used where no braid loop runs.
fn no_loop() -> io::Error {
    Error::new(
        ErrorKind::InvalidState,
        "no running event loop: braid sockets are awaited inside a braid runtime",
    )
    .into_io_error()
}

/// The error for a socket that must wait on a loop whose runtime has closed every loop (a
/// flush woken as the last one closes): no poller is left to wait on.
fn loops_closed() -> io::Error {
    Error::new(
        ErrorKind::Closed,
        "every event loop of the runtime has closed: the socket cannot wait for readiness",
    )
    .into_io_error()
}

/// Whether `lp` may take a socket: a loop closing or closed will not poll its poller again.
fn is_open(lp: &LoopShared) -> bool {
    !matches!(lp.state(), LoopState::Closing | LoopState::Closed)
}

/// The worker loop a socket first waited on from here should be registered with: the one
/// holding the fewest sockets, this one if it holds no more (see the module docs). The counts
/// are read without a lock: two sockets registered at once may land on the same loop, and the
/// next ones even it out. A task pinned to this worker loop (`spawn_local`) keeps its sockets
/// here: registered elsewhere, every event would wake that loop only to send the task back.
///
/// Never a loop that is closing or closed: a socket registered there would wait for good (a
/// flush woken by its loop's close, on that loop's thread, used to register right back with
/// it). With none of its runtime's loops open, the socket cannot wait: an error.
fn choose_home(made_in: &Weak<RuntimeShared>) -> io::Result<Arc<LoopShared>> {
    let Some(ctx) = context::current_loop() else {
        // Off the loops: the runtime the socket was made in, while it still serves.
        return match made_in.upgrade() {
            Some(rt) if !rt.stopping.load(Ordering::Acquire) => {
                least_loaded(&rt).ok_or_else(loops_closed)
            }
            _ => Err(no_loop()),
        };
    };
    let least = least_loaded(&ctx.rt).ok_or_else(loops_closed)?;
    let pinned = || context::with_current_header(|h| h.home.is_some()) == Some(true);
    if ctx.worker.is_some()
        && is_open(&ctx.lp)
        && (ctx.lp.io.registered() <= least.io.registered() || pinned())
    {
        return Ok(ctx.lp.clone());
    }
    Ok(least)
}

/// The open worker loop of `rt` holding the fewest sockets, if any loop is open.
fn least_loaded(rt: &RuntimeShared) -> Option<Arc<LoopShared>> {
    rt.loops
        .iter()
        .filter(|lp| is_open(lp))
        .min_by_key(|lp| lp.io.registered())
        .cloned()
}

impl IoSource {
    pub(crate) fn new(fd: RawFd) -> IoSource {
        IoSource {
            readiness: Readiness::new(),
            fd,
            registration: Mutex::new(None),
            made_in: context::current_loop().map_or_else(Weak::new, |ctx| Arc::downgrade(&ctx.rt)),
        }
    }

    /// Removes the socket from its poller and slab. Must run before the socket is closed.
    pub(crate) fn deregister(self: &Arc<Self>) {
        let registration = self.registration.lock().take();
        if let Some(registration) = registration {
            self.remove(registration);
        }
        self.readiness.close();
    }

    /// Takes the socket out of `registration`'s poller and slab.
    fn remove(&self, Registration { home, key }: Registration) {
        crate::task::raw::poller_delete(home.poller(), self.fd);
        home.io.forget(key);
        home.io.registered.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Arm for Arc<IoSource> {
    fn arm(&self) -> io::Result<()> {
        let mut registration = self.registration.lock();
        if let Some(current) = registration.as_ref() {
            if current.home.state() != LoopState::Closed {
                return Ok(());
            }
            // Its loop has closed (its runtime shut down), and nobody polls that poller any
            // more: waiting there would be for good. The socket moves to a loop of the
            // runtime it is used in now, or fails as an unregistered one does off the loops.
            // Added to the new poller edge-triggered, it reports what is ready already.
            let stale = registration.take().expect("checked above");
            self.remove(stale);
        }
        // The loop chosen open may close before the socket is in its slab, which then
        // refuses it (`IoDriver::admit`); the next choice skips that loop, whose state was
        // Closed before its slab closed. Each refusal is one loop closed for good: this ends.
        let (home, key) = loop {
            let home = choose_home(&self.made_in)?;
            if let Some(key) = home.io.admit(self) {
                break (home, key);
            }
        };
        if let Err(e) = crate::task::raw::poller_add_edge(home.poller(), self.fd, key) {
            home.io.forget(key);
            return Err(e);
        }
        home.io.registered.fetch_add(1, Ordering::Relaxed);
        *registration = Some(Registration { home, key });
        Ok(())
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    //! The drive lock keeps the monitor from swallowing a doorbell notification meant for a
    //! sleeping loop: the loop takes the lock before it announces sleep and holds it while it
    //! sleeps, and the monitor only polls a poller whose drive lock it could take. The poller
    //! is modelled by its pending notification: whoever waits on the poller consumes it.
    use super::IoDriver;
    use braid_bridge::doorbell::{Doorbell, Unpark};
    use braid_bridge::sync::atomic::{AtomicUsize, Ordering};
    use braid_bridge::sync::Mutex;
    use std::sync::Arc;

    /// The poller's notification, as `Poller::notify` leaves it for the next `wait`.
    struct Notify(Mutex<bool>);

    impl Notify {
        fn consume(&self) -> bool {
            std::mem::take(&mut *self.0.lock())
        }
    }

    impl Unpark for Notify {
        fn unpark(&self) {
            *self.0.lock() = true;
        }
    }

    /// `lock_late` takes the drive lock after the sleep is announced and the re-check done,
    /// right before the wait: the bug the order prevents.
    fn model(lock_late: bool) {
        loom::model(move || {
            let driver = Arc::new(IoDriver::new());
            let bell = Arc::new(Doorbell::<u32, _>::new(Notify(Mutex::new(false))));
            let finished = Arc::new(AtomicUsize::new(0));

            let submitter = {
                let (bell, finished) = (bell.clone(), finished.clone());
                loom::thread::spawn(move || {
                    bell.push(1).unwrap();
                    finished.fetch_add(1, Ordering::SeqCst);
                })
            };
            let monitor = {
                let (driver, bell, finished) = (driver.clone(), bell.clone(), finished.clone());
                loom::thread::spawn(move || {
                    // The monitor's non-blocking poll of a loop it thinks is stuck.
                    if let Some(_drive) = driver.drive.try_lock() {
                        bell.unparker().consume();
                    }
                    finished.fetch_add(1, Ordering::SeqCst);
                })
            };

            // The loop, going to sleep: announce, re-check, wait.
            let early = (!lock_late).then(|| driver.lock_drive());
            if bell.prepare_sleep() {
                let recheck_found_work = bell.has_messages();
                let late = lock_late.then(|| driver.lock_drive());
                if !recheck_found_work {
                    // Asleep in the poller until a notification arrives.
                    loop {
                        if bell.unparker().consume() {
                            break;
                        }
                        if finished.load(Ordering::SeqCst) == 2 {
                            assert!(
                                bell.unparker().consume(),
                                "the loop sleeps with a message queued and no notification left"
                            );
                            break;
                        }
                        loom::thread::yield_now();
                    }
                }
                drop(late);
                bell.finish_sleep();
            }
            drop(early);
            submitter.join().unwrap();
            monitor.join().unwrap();
        });
    }

    #[test]
    fn loom_io_drive_lock_keeps_the_doorbell_notification() {
        model(false);
    }

    #[test]
    #[should_panic(expected = "no notification left")]
    fn loom_io_drive_lock_taken_after_announcing_sleep_loses_it() {
        model(true);
    }

    /// `IoSource::arm` adding a socket to the slab of the loop it chose, as `IoSource::arm`
    /// does. `broken` reads the slab's closed flag and adds the socket under two locks: the
    /// bug that taking both under one prevents.
    struct Admit<'a> {
        driver: &'a IoDriver,
        source: &'a Arc<super::IoSource>,
        broken: bool,
    }

    impl super::Arm for Admit<'_> {
        fn arm(&self) -> std::io::Result<()> {
            let admitted = if self.broken {
                let closed = self.driver.sources.lock().closed;
                (!closed).then(|| {
                    let mut slab = self.driver.sources.lock();
                    slab.slots.push(Some(self.source.clone()));
                    slab.slots.len() - 1
                })
            } else {
                self.driver.admit(self.source)
            };
            admitted
                .map(drop)
                .ok_or_else(|| std::io::Error::other("the loop has closed"))
        }
    }

    /// A task chose a loop for its socket while the loop was open and adds the socket to its
    /// slab while the loop closes (`wake_after_close`): the socket is either refused (the
    /// task chooses again) or in the list the close wakes, never waiting on a poller that
    /// nobody polls.
    fn closing_slab_model(broken: bool) {
        use super::Direction;
        use crate::sync::loom_support::Flag;
        use std::task::{Context, Poll};
        loom::model(move || {
            let driver = Arc::new(IoDriver::new());
            let closer = {
                let driver = driver.clone();
                loom::thread::spawn(move || driver.wake_after_close())
            };
            let source = Arc::new(super::IoSource::new(-1));
            let arm = Admit {
                driver: &driver,
                source: &source,
                broken,
            };
            let (flag, waker) = Flag::new();
            let mut cx = Context::from_waker(&waker);
            // A new socket is assumed ready: spend that, as a `WouldBlock` does.
            let Poll::Ready(Ok(seen)) = source.readiness.poll_ready(Direction::Read, &mut cx, &arm)
            else {
                panic!("a new socket is ready");
            };
            source.readiness.clear(seen);
            let waited = source.readiness.poll_ready(Direction::Read, &mut cx, &arm);
            closer.join().unwrap();
            match waited {
                Poll::Pending => assert!(
                    flag.woken(),
                    "a socket joined the slab of a closed loop and nobody will wake it"
                ),
                Poll::Ready(outcome) => assert!(outcome.is_err(), "the socket was not ready"),
            }
        });
    }

    #[test]
    fn loom_io_a_socket_joining_a_closing_loop_is_refused_or_woken() {
        closing_slab_model(false);
    }

    #[test]
    #[should_panic(expected = "nobody will wake it")]
    fn loom_io_twin_checking_the_close_apart_from_the_add_strands_a_socket() {
        closing_slab_model(true);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use crate::{create_task, Runtime, TcpListener, TcpStream};
    use std::future::Future;
    use std::time::Duration;

    /// How many sockets each worker loop's poller holds, read on a worker loop.
    fn registered_per_loop() -> Vec<usize> {
        let ctx = crate::context::current_loop().expect("runs on a loop");
        ctx.rt.loops.iter().map(|lp| lp.io.registered()).collect()
    }

    #[test]
    fn sockets_first_waited_on_from_one_task_are_spread_over_the_loops() {
        let rt = Runtime::builder().workers(2).build().unwrap();
        let counts = rt
            .run_until_complete(async {
                // One task registers every socket (a server's accept loop, say), without
                // leaving its loop between them. Placed where their first wait ran, they
                // would all be with that loop.
                create_task(async {
                    let listener = TcpListener::bind("127.0.0.1:0").await?;
                    let addr = listener.local_addr()?;
                    let mut open = Vec::new();
                    for _ in 0..8 {
                        let client = TcpStream::connect(addr).await?;
                        let (server, _) = listener.accept().await?;
                        // Nothing was sent: polled once, the read registers the socket and
                        // is left pending. No timer, so the task never leaves its loop.
                        let mut buf = [0u8; 1];
                        let mut read = server.read(&mut buf);
                        let first = std::future::poll_fn(|cx| {
                            std::task::Poll::Ready(std::pin::Pin::new(&mut read).poll(cx))
                        })
                        .await;
                        assert!(first.is_pending(), "a read of a silent socket returned");
                        drop(read);
                        open.push((client, server));
                    }
                    Ok(registered_per_loop())
                })
                .await
            })
            .unwrap();
        let total: usize = counts.iter().sum();
        assert!(
            total >= 8,
            "not every accepted socket registered: {counts:?}"
        );
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(
            max - min <= 1,
            "sockets not spread evenly over the loops: {counts:?}"
        );
        rt.shutdown(Duration::from_secs(5)).unwrap();
    }
}
