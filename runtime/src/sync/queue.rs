//! `Queue`, `LifoQueue`, `PriorityQueue`: asyncio's queues (Python 3.13, with `shutdown`).

use super::{pass_on_enabled, wake_all, WaitQueue};
use crate::context;
use braid_bridge::sync::Mutex;
use braid_bridge::{Error, ErrorKind, Result};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// `put_nowait` on a full queue (asyncio's `QueueFull`); reach it with `Error::downcast_ref`.
/// Its kind is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

/// `get_nowait` on an empty queue (asyncio's `QueueEmpty`); reach it with
/// `Error::downcast_ref`. Its kind is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueEmpty;

/// An operation on a queue that was shut down (asyncio's `QueueShutDown`); reach it with
/// `Error::downcast_ref`. Its kind is `Closed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueShutDown;

impl fmt::Display for QueueFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the queue is full")
    }
}
impl fmt::Display for QueueEmpty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the queue is empty")
    }
}
impl fmt::Display for QueueShutDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the queue is shut down")
    }
}
impl std::error::Error for QueueFull {}
impl std::error::Error for QueueEmpty {}
impl std::error::Error for QueueShutDown {}

fn full() -> Error {
    Error::with_source(ErrorKind::Other, QueueFull)
}
fn empty() -> Error {
    Error::with_source(ErrorKind::Other, QueueEmpty)
}
fn shut_down() -> Error {
    Error::with_source(ErrorKind::Closed, QueueShutDown)
}

/// Where the items live: the order is the only difference between the three queues.
trait Store: Default {
    type Item;
    fn push(&mut self, item: Self::Item);
    /// Takes the next item in the store's order: the oldest, the newest, or the smallest.
    fn pop(&mut self) -> Option<Self::Item>;
    fn len(&self) -> usize;
}

/// First in, first out.
struct Fifo<T>(VecDeque<T>);
/// Last in, first out.
struct Lifo<T>(Vec<T>);
/// Smallest first.
struct Smallest<T: Ord>(BinaryHeap<Reverse<T>>);

impl<T> Default for Fifo<T> {
    fn default() -> Self {
        Fifo(VecDeque::new())
    }
}
impl<T> Store for Fifo<T> {
    type Item = T;
    fn push(&mut self, item: T) {
        self.0.push_back(item);
    }
    fn pop(&mut self) -> Option<T> {
        self.0.pop_front()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}
impl<T> Default for Lifo<T> {
    fn default() -> Self {
        Lifo(Vec::new())
    }
}
impl<T> Store for Lifo<T> {
    type Item = T;
    fn push(&mut self, item: T) {
        self.0.push(item);
    }
    fn pop(&mut self) -> Option<T> {
        self.0.pop()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}
impl<T: Ord> Default for Smallest<T> {
    fn default() -> Self {
        Smallest(BinaryHeap::new())
    }
}
impl<T: Ord> Store for Smallest<T> {
    type Item = T;
    fn push(&mut self, item: T) {
        self.0.push(Reverse(item));
    }
    fn pop(&mut self) -> Option<T> {
        self.0.pop().map(|Reverse(item)| item)
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

/// The queue machinery shared by the three public queues.
///
/// asyncio serves waiting getters and putters in arrival order because its one thread runs
/// them in the order it woke them, and every getter takes the item next in the queue's order.
/// Here the woken may run on different loops in any order; what is kept is this:
///
/// - Items leave in the store's order (the oldest, the newest, the smallest), whoever takes
///   them: every take is a `pop`. So one consumer sees one producer's items of a `Queue` in
///   the order they were put, as in asyncio. (An earlier design let a woken getter take the
///   item its place in line would have given it; a getter that ran early then took a later
///   item, and got the earlier one next if the getter ahead of it left.)
/// - An item put while getters wait stays in the store and wakes the first getter not yet
///   woken: that getter now holds a *claim*, which is only counted (the getters notified in
///   the line). Items never outnumber the claims while a getter waits unwoken.
/// - A claimant that runs takes the next item if the items left reach its place among the
///   claimants (always, unless a `get_nowait` took claimed items); otherwise, or if the store
///   is empty, it gives its claim up and waits again in its place, first in line for the next
///   item. A newcomer's `get` may take an item only beyond the claims, so it cannot overtake
///   the getters already woken; `get_nowait` takes the next item, claimed or not, as
///   asyncio's does (so `while !q.empty() { q.get_nowait() }` never fails).
/// - A getter that leaves with a claim (cancelled or dropped) wakes the next one in its
///   stead, so an item never sits in the store while getters wait unwoken.
/// - After `shutdown(false)` a `get` fails only once the store is empty, as asyncio's
///   `while empty(): if shutdown: raise`: any getter that looks (a claimant, or a newcomer,
///   which no longer queues behind claims as no item will follow) takes the next item left.
///   The claims on the items left stand and pass on as before, and the take that empties the
///   store wakes every getter still waiting, to fail. So a claimant cancelled after shutdown
///   hands its item to a getter still waiting instead of stranding it.
/// - Waiting putters are woken in arrival order, one per free slot, each slot promised to the
///   putter woken for it: a newcomer may not take a promised slot. A putter inserts its item
///   itself when it runs, so a putter cancelled after being woken inserts nothing (its slot
///   goes to the next), as in asyncio.
struct Core<S: Store> {
    maxsize: usize,
    state: Mutex<State<S>>,
}

struct State<S: Store> {
    items: S,
    /// Waiting getters; a notified one holds a claim on an item (see [`Core`]).
    getters: WaitQueue,
    putters: WaitQueue,
    joiners: WaitQueue,
    unfinished: usize,
    shutdown: bool,
}

impl<S: Store> State<S> {
    fn qsize(&self) -> usize {
        self.items.len()
    }

    fn is_full(&self, maxsize: usize) -> bool {
        maxsize > 0 && self.qsize() >= maxsize
    }

    /// An item enters the queue, and a waiting getter is woken for it.
    fn accept(&mut self, item: S::Item, wake: &mut Vec<Waker>) {
        self.unfinished += 1;
        self.items.push(item);
        self.wake_getters(wake);
    }

    /// Wakes waiting getters in line order while items outnumber the claims on them.
    fn wake_getters(&mut self, wake: &mut Vec<Waker>) {
        while self.items.len() > self.getters.notified_count() {
            match self.getters.notify_one() {
                Some(waker) => wake.push(waker),
                None => break,
            }
        }
    }

    /// Free slots not yet promised to a woken putter (`usize::MAX` without a limit).
    fn unclaimed_room(&self, maxsize: usize) -> usize {
        if maxsize == 0 {
            return usize::MAX;
        }
        maxsize
            .saturating_sub(self.qsize())
            .saturating_sub(self.putters.notified_count())
    }

    /// Room may have appeared: wakes waiting putters in arrival order, one per free slot not
    /// already promised to a putter woken earlier.
    fn wake_next_putter(&mut self, maxsize: usize, wake: &mut Vec<Waker>) {
        while self.unclaimed_room(maxsize) > 0 {
            match self.putters.notify_one() {
                Some(waker) => wake.push(waker),
                None => break,
            }
        }
    }

    /// Takes the next item in the store's order and lets a putter use the room. The take
    /// that empties a shut-down queue wakes every getter still waiting: none will get an
    /// item now, so each fails when it runs.
    fn take(&mut self, maxsize: usize, wake: &mut Vec<Waker>) -> Option<S::Item> {
        let item = self.items.pop()?;
        self.wake_next_putter(maxsize, wake);
        if self.shutdown && self.items.len() == 0 && !fault(Fault::SkipDrainedWake) {
            self.getters.wake_all(wake);
        }
        Some(item)
    }

    /// asyncio's `get_nowait`, under the lock: the next item in order, claimed or not.
    fn get_now(&mut self, maxsize: usize, wake: &mut Vec<Waker>) -> Result<S::Item> {
        match self.take(maxsize, wake) {
            Some(item) => Ok(item),
            None if self.shutdown => Err(shut_down()),
            None => Err(empty()),
        }
    }

    /// [`Fault::TakeAtRank`]: the item a claimant of `rank` took in the earlier design (exact
    /// for a `PriorityQueue`, whose heap puts the items popped before it back in order).
    #[cfg(loom)]
    fn take_at_rank(&mut self, rank: usize) -> Option<S::Item> {
        let ahead: Vec<_> = (0..rank).map_while(|_| self.items.pop()).collect();
        let taken = self.items.pop();
        ahead.into_iter().for_each(|item| self.items.push(item));
        taken
    }

    /// May woken getter `id` take an item now? Yes if the items left reach its place among
    /// the claimants, and after shutdown whenever an item is left.
    fn claim_is_covered(&self, id: u64) -> bool {
        let held = self.items.len();
        // The common case, an item for every claimant, needs no walk of the line. No rank
        // (out of line, which only its own `leave_get` does): nothing to keep a place for.
        self.shutdown
            || held >= self.getters.notified_count()
            || self
                .getters
                .notified_rank(id)
                .is_none_or(|rank| rank < held)
    }
}

/// The faults the loom twins switch on to show that their models catch what they check;
/// without `cfg(loom)` each is a constant `false`.
#[derive(Clone, Copy)]
enum Fault {
    /// The earlier design: a woken getter takes the item its place among the claimants would
    /// give it, not the next one. Only the loom build has the code it switches.
    #[cfg(loom)]
    TakeAtRank,
    /// A woken getter that finds no item keeps its claim while it waits again.
    KeepClaimWhenEmpty,
    /// The take that empties a shut-down queue wakes nobody.
    SkipDrainedWake,
}

#[inline]
fn fault(which: Fault) -> bool {
    #[cfg(loom)]
    {
        faults::switch(which).load(std::sync::atomic::Ordering::SeqCst)
    }
    #[cfg(not(loom))]
    {
        let _ = which;
        false
    }
}

/// The switches behind [`Fault`], set by one twin at a time through
/// `loom_support::model_with_fault`.
#[cfg(loom)]
mod faults {
    use super::Fault;
    use std::sync::atomic::AtomicBool;

    pub(super) static TAKE_AT_RANK: AtomicBool = AtomicBool::new(false);
    pub(super) static KEEP_CLAIM_WHEN_EMPTY: AtomicBool = AtomicBool::new(false);
    pub(super) static SKIP_DRAINED_WAKE: AtomicBool = AtomicBool::new(false);

    pub(super) fn switch(which: Fault) -> &'static AtomicBool {
        match which {
            Fault::TakeAtRank => &TAKE_AT_RANK,
            Fault::KeepClaimWhenEmpty => &KEEP_CLAIM_WHEN_EMPTY,
            Fault::SkipDrainedWake => &SKIP_DRAINED_WAKE,
        }
    }
}

type PutRefused<T> = (T, Error);

impl<S: Store> Core<S> {
    fn new(maxsize: usize) -> Core<S> {
        Core {
            maxsize,
            state: Mutex::new(State {
                items: S::default(),
                getters: WaitQueue::default(),
                putters: WaitQueue::default(),
                joiners: WaitQueue::default(),
                unfinished: 0,
                shutdown: false,
            }),
        }
    }

    fn qsize(&self) -> usize {
        self.state.lock().qsize()
    }

    fn full(&self) -> bool {
        self.state.lock().is_full(self.maxsize)
    }

    fn try_put(&self, item: S::Item) -> std::result::Result<(), PutRefused<S::Item>> {
        let mut wake = Vec::new();
        {
            let mut state = self.state.lock();
            if state.shutdown {
                return Err((item, shut_down()));
            }
            if state.is_full(self.maxsize) {
                return Err((item, full()));
            }
            state.accept(item, &mut wake);
        }
        wake_all(wake);
        Ok(())
    }

    fn get_nowait(&self) -> Result<S::Item> {
        let mut wake = Vec::new();
        let item = self.state.lock().get_now(self.maxsize, &mut wake);
        wake_all(wake);
        item
    }

    /// One step of asyncio's `put`: `Ready(Ok)` once the item is in (`item` is then `None`);
    /// `Ready(Err(None))` if `cancelled` made it leave, the item still in `item`.
    pub(crate) fn poll_put(
        &self,
        item: &mut Option<S::Item>,
        waiter: &mut Option<u64>,
        waker: &Waker,
        cancelled: bool,
    ) -> Poll<Result<(), Option<Error>>> {
        let mut wake = Vec::new();
        let outcome = {
            let mut state = self.state.lock();
            if cancelled {
                if let Some(id) = waiter.take() {
                    self.leave_put(&mut state, id, &mut wake);
                }
                Poll::Ready(Err(None))
            } else if waiter.is_some_and(|id| !state.putters.check(id, waker)) {
                Poll::Pending
            } else if state.shutdown {
                if let Some(id) = waiter.take() {
                    state.putters.remove(id);
                }
                Poll::Ready(Err(Some(shut_down())))
            } else {
                // A woken putter uses the slot promised to it (unless a put_nowait took the
                // room meanwhile); a newcomer only a slot nobody was promised.
                let may_put = match *waiter {
                    Some(_) => !state.is_full(self.maxsize),
                    None => state.unclaimed_room(self.maxsize) > 0,
                };
                if may_put {
                    if let Some(id) = waiter.take() {
                        state.putters.remove(id);
                    }
                    let value = item.take().expect("a put holds its item until it is done");
                    state.accept(value, &mut wake);
                    state.wake_next_putter(self.maxsize, &mut wake);
                    Poll::Ready(Ok(()))
                } else {
                    match *waiter {
                        // Keeps its place in line, to be woken again when room appears.
                        Some(id) => state.putters.unnotify(id),
                        None => *waiter = Some(state.putters.push(waker)),
                    }
                    Poll::Pending
                }
            }
        };
        wake_all(wake);
        outcome
    }

    /// A putter leaves the line; if it had been woken, the next one is woken instead.
    fn leave_put(&self, state: &mut State<S>, id: u64, wake: &mut Vec<Waker>) {
        if state.putters.remove(id) && pass_on_enabled() {
            state.wake_next_putter(self.maxsize, wake);
        }
    }

    /// One step of asyncio's `get`. `Ready(Err(None))` if `cancelled` made it leave; a claim
    /// it held passes to the next getter.
    pub(crate) fn poll_get(
        &self,
        waiter: &mut Option<u64>,
        waker: &Waker,
        cancelled: bool,
    ) -> Poll<Result<S::Item, Option<Error>>> {
        let mut wake = Vec::new();
        let outcome = {
            let mut state = self.state.lock();
            match *waiter {
                Some(id) if cancelled => {
                    self.leave_get(&mut state, id, &mut wake);
                    *waiter = None;
                    Poll::Ready(Err(None))
                }
                // Not woken yet: stays in line (`check` keeps the waker of this poll).
                Some(id) if !state.getters.check(id, waker) => Poll::Pending,
                Some(id) => self.get_woken(&mut state, waiter, id, waker, &mut wake),
                None if cancelled => Poll::Ready(Err(None)),
                None => self.get_as_newcomer(&mut state, waiter, waker, &mut wake),
            }
        };
        wake_all(wake);
        outcome
    }

    /// A woken getter (`id`, in line) takes the next item if its claim is covered; fails if
    /// the queue is shut down and empty; else gives its claim up and waits again in its place.
    fn get_woken(
        &self,
        state: &mut State<S>,
        waiter: &mut Option<u64>,
        id: u64,
        waker: &Waker,
        wake: &mut Vec<Waker>,
    ) -> Poll<Result<S::Item, Option<Error>>> {
        if state.items.len() == 0 && state.shutdown {
            state.getters.remove(id);
            *waiter = None;
            return Poll::Ready(Err(Some(shut_down())));
        }
        #[cfg(loom)]
        if fault(Fault::TakeAtRank) && !state.shutdown {
            let rank = state.getters.notified_rank(id).unwrap_or(0);
            if let Some(item) = state.take_at_rank(rank) {
                state.getters.remove(id);
                *waiter = None;
                return Poll::Ready(Ok(item));
            }
        }
        if state.items.len() > 0 && state.claim_is_covered(id) {
            // Out of line first, so that a take emptying a shut-down queue wakes the others.
            state.getters.remove(id);
            *waiter = None;
            let item = state.take(self.maxsize, wake).expect("an item is held");
            return Poll::Ready(Ok(item));
        }
        // Its item went to a `get_nowait` (or the claimants ahead of it hold the items left):
        // waits again, first in line for the next item. The claim is given up, so that the
        // next put wakes it again.
        if !fault(Fault::KeepClaimWhenEmpty) {
            state.getters.unnotify(id);
        }
        state.getters.check(id, waker);
        Poll::Pending
    }

    /// A getter not in line takes an item nobody waiting has a claim on, or joins the line.
    /// After shutdown it takes any item left (none will follow to wait for), or fails.
    fn get_as_newcomer(
        &self,
        state: &mut State<S>,
        waiter: &mut Option<u64>,
        waker: &Waker,
        wake: &mut Vec<Waker>,
    ) -> Poll<Result<S::Item, Option<Error>>> {
        if state.shutdown || state.items.len() > state.getters.notified_count() {
            return match state.take(self.maxsize, wake) {
                Some(item) => Poll::Ready(Ok(item)),
                // Only a shut-down queue gets here empty.
                None => Poll::Ready(Err(Some(shut_down()))),
            };
        }
        *waiter = Some(state.getters.push(waker));
        Poll::Pending
    }

    /// A getter leaves the line; if it held a claim, the next getter is woken in its stead
    /// (after shutdown too: the claims on the items left still stand).
    fn leave_get(&self, state: &mut State<S>, id: u64, wake: &mut Vec<Waker>) {
        if state.getters.remove(id) && pass_on_enabled() {
            state.wake_getters(wake);
        }
    }

    fn abandon_put(&self, waiter: &mut Option<u64>) {
        if let Some(id) = waiter.take() {
            let mut wake = Vec::new();
            self.leave_put(&mut self.state.lock(), id, &mut wake);
            wake_all(wake);
        }
    }

    fn abandon_get(&self, waiter: &mut Option<u64>) {
        if let Some(id) = waiter.take() {
            let mut wake = Vec::new();
            self.leave_get(&mut self.state.lock(), id, &mut wake);
            wake_all(wake);
        }
    }

    fn task_done(&self) -> Result<()> {
        let mut wake = Vec::new();
        {
            let mut state = self.state.lock();
            if state.unfinished == 0 {
                return Err(Error::new(
                    ErrorKind::InvalidState,
                    "task_done() called too many times",
                ));
            }
            state.unfinished -= 1;
            if state.unfinished == 0 {
                state.joiners.wake_all(&mut wake);
            }
        }
        wake_all(wake);
        Ok(())
    }

    fn poll_join(&self, waiter: &mut Option<u64>, waker: &Waker) -> Poll<()> {
        let mut state = self.state.lock();
        // Woken by the count reaching zero: done, even if an item was put since (asyncio's
        // `join` waits on an event that, once set, has released its waiters).
        if let Some(id) = waiter.take() {
            if state.joiners.remove(id) {
                return Poll::Ready(());
            }
        }
        if state.unfinished == 0 {
            return Poll::Ready(());
        }
        *waiter = Some(state.joiners.push(waker));
        Poll::Pending
    }

    fn abandon_join(&self, waiter: &mut Option<u64>) {
        if let Some(id) = waiter.take() {
            self.state.lock().joiners.remove(id);
        }
    }

    fn shutdown(&self, immediate: bool) {
        let mut wake = Vec::new();
        let mut drained = Vec::new();
        {
            let mut state = self.state.lock();
            state.shutdown = true;
            if immediate {
                while let Some(item) = state.items.pop() {
                    drained.push(item);
                }
                state.unfinished = state.unfinished.saturating_sub(drained.len());
                if state.unfinished == 0 {
                    state.joiners.wake_all(&mut wake);
                }
            }
            // Waiting putters fail. Waiting getters fail once the queue is empty: now, or when
            // the last item is taken (`State::take`). Until then the claims on the items left
            // stand, so a getter woken for none of them waits on: the claim of a getter that
            // leaves passes to it.
            if state.items.len() == 0 {
                state.getters.wake_all(&mut wake);
            }
            state.putters.wake_all(&mut wake);
        }
        // Dropped outside the lock: an item's destructor may do anything.
        drop(drained);
        wake_all(wake);
    }
}

/// The future of `put` on any of the queues.
///
/// # Cancel safety
///
/// Dropping it (or a cancel) leaves the line without a trace; the item was not put, and
/// [`take_item`](QueuePut::take_item) gives it back.
#[must_use = "futures do nothing unless you `.await` them"]
pub struct QueuePut<'a, T> {
    core: &'a dyn PutCore<T>,
    /// The item until it is put.
    item: Option<T>,
    waiter: Option<u64>,
    done: bool,
}

/// The future of `get` on any of the queues.
///
/// # Cancel safety
///
/// Dropping it (or a cancel) leaves the line without a trace and takes no item.
#[must_use = "futures do nothing unless you `.await` them"]
pub struct QueueGet<'a, T> {
    core: &'a dyn GetCore<T>,
    waiter: Option<u64>,
    done: bool,
}

/// The future of `join` on any of the queues.
#[must_use = "futures do nothing unless you `.await` them"]
pub struct QueueJoin<'a> {
    core: &'a dyn JoinCore,
    waiter: Option<u64>,
    done: bool,
}

/// The typed operations the futures need, object-safe so that one future type serves the
/// three queues.
trait PutCore<T>: Sync {
    #[allow(clippy::type_complexity)]
    fn poll_put(
        &self,
        item: &mut Option<T>,
        waiter: &mut Option<u64>,
        waker: &Waker,
        cancelled: bool,
    ) -> Poll<Result<(), Option<Error>>>;
    fn abandon_put(&self, waiter: &mut Option<u64>);
}
trait GetCore<T>: Sync {
    fn poll_get(
        &self,
        waiter: &mut Option<u64>,
        waker: &Waker,
        cancelled: bool,
    ) -> Poll<Result<T, Option<Error>>>;
    fn abandon_get(&self, waiter: &mut Option<u64>);
}
trait JoinCore: Sync {
    fn poll_join(&self, waiter: &mut Option<u64>, waker: &Waker) -> Poll<()>;
    fn abandon_join(&self, waiter: &mut Option<u64>);
}

impl<S: Store + Send> PutCore<S::Item> for Core<S>
where
    S::Item: Send,
{
    fn poll_put(
        &self,
        item: &mut Option<S::Item>,
        waiter: &mut Option<u64>,
        waker: &Waker,
        cancelled: bool,
    ) -> Poll<Result<(), Option<Error>>> {
        Core::poll_put(self, item, waiter, waker, cancelled)
    }
    fn abandon_put(&self, waiter: &mut Option<u64>) {
        Core::abandon_put(self, waiter);
    }
}
impl<S: Store + Send> GetCore<S::Item> for Core<S>
where
    S::Item: Send,
{
    fn poll_get(
        &self,
        waiter: &mut Option<u64>,
        waker: &Waker,
        cancelled: bool,
    ) -> Poll<Result<S::Item, Option<Error>>> {
        Core::poll_get(self, waiter, waker, cancelled)
    }
    fn abandon_get(&self, waiter: &mut Option<u64>) {
        Core::abandon_get(self, waiter);
    }
}
impl<S: Store + Send> JoinCore for Core<S>
where
    S::Item: Send,
{
    fn poll_join(&self, waiter: &mut Option<u64>, waker: &Waker) -> Poll<()> {
        Core::poll_join(self, waiter, waker)
    }
    fn abandon_join(&self, waiter: &mut Option<u64>) {
        Core::abandon_join(self, waiter);
    }
}

impl<T> QueuePut<'_, T> {
    /// Takes the item back out of a put that did not complete (cancelled, refused, or never
    /// polled), to retry it. `None` once the item is in the queue.
    ///
    /// ```
    /// let q = braid_runtime::Queue::new(0);
    /// let mut put = q.put(String::from("x"));
    /// assert_eq!(put.take_item().as_deref(), Some("x"));
    /// ```
    pub fn take_item(&mut self) -> Option<T> {
        self.item.take()
    }
}

// The item is never pinned: it is moved into the queue by value.
impl<T> Unpin for QueuePut<'_, T> {}

impl<T> Future for QueuePut<'_, T> {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        if this.done || this.item.is_none() {
            return Poll::Ready(Err(crate::combinators::polled_after_completion(
                "Queue::put",
            )));
        }
        let cancel = context::take_cancel();
        context::clear_awaiting(None);
        let outcome = match this.core.poll_put(
            &mut this.item,
            &mut this.waiter,
            cx.waker(),
            cancel.is_some(),
        ) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(())) => Ok(()),
            Poll::Ready(Err(Some(error))) => Err(error),
            Poll::Ready(Err(None)) => Err(cancel.expect("refused for a cancel")),
        };
        this.done = true;
        Poll::Ready(outcome)
    }
}

impl<T> Drop for QueuePut<'_, T> {
    fn drop(&mut self) {
        self.core.abandon_put(&mut self.waiter);
    }
}

impl<T> fmt::Debug for QueuePut<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueuePut")
            .field("waiting", &self.waiter.is_some())
            .field("done", &self.item.is_none())
            .finish()
    }
}

impl<T> Future for QueueGet<'_, T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(Err(crate::combinators::polled_after_completion(
                "Queue::get",
            )));
        }
        let cancel = context::take_cancel();
        context::clear_awaiting(None);
        let outcome = match this
            .core
            .poll_get(&mut this.waiter, cx.waker(), cancel.is_some())
        {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(item)) => Ok(item),
            Poll::Ready(Err(Some(error))) => Err(error),
            Poll::Ready(Err(None)) => Err(cancel.expect("refused for a cancel")),
        };
        this.done = true;
        Poll::Ready(outcome)
    }
}

impl<T> Drop for QueueGet<'_, T> {
    fn drop(&mut self) {
        self.core.abandon_get(&mut self.waiter);
    }
}

impl<T> fmt::Debug for QueueGet<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueGet")
            .field("waiting", &self.waiter.is_some())
            .finish()
    }
}

impl Future for QueueJoin<'_> {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(Err(crate::combinators::polled_after_completion(
                "Queue::join",
            )));
        }
        if let Some(cancel) = context::take_cancel() {
            this.core.abandon_join(&mut this.waiter);
            this.done = true;
            return Poll::Ready(Err(cancel));
        }
        context::clear_awaiting(None);
        match this.core.poll_join(&mut this.waiter, cx.waker()) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                this.done = true;
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl Drop for QueueJoin<'_> {
    fn drop(&mut self) {
        self.core.abandon_join(&mut self.waiter);
    }
}

impl fmt::Debug for QueueJoin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueJoin")
            .field("waiting", &self.waiter.is_some())
            .finish()
    }
}

macro_rules! queue_type {
    ($(#[$doc:meta])* $name:ident, $store:ident, [$($bound:tt)*]) => {
        $(#[$doc])*
        pub struct $name<T: $($bound)*> {
            core: Core<$store<T>>,
        }

        impl<T: Send + $($bound)*> $name<T> {
            #[doc = concat!("A queue holding at most `maxsize` items (0: no limit).\n\n```\nlet q = braid_runtime::", stringify!($name), "::<u8>::new(2);\nassert_eq!(q.maxsize(), 2);\n```")]
            pub fn new(maxsize: usize) -> Self {
                $name { core: Core::new(maxsize) }
            }

            #[doc = concat!("The limit given to `new` (0: none).\n\n```\nassert_eq!(braid_runtime::", stringify!($name), "::<u8>::new(0).maxsize(), 0);\n```")]
            pub fn maxsize(&self) -> usize {
                self.core.maxsize
            }

            #[doc = concat!("The number of items in the queue.\n\n```\nlet q = braid_runtime::", stringify!($name), "::new(0);\nq.put_nowait(1).unwrap();\nassert_eq!(q.qsize(), 1);\n```")]
            pub fn qsize(&self) -> usize {
                self.core.qsize()
            }

            #[doc = concat!("True if the queue holds no item.\n\n```\nassert!(braid_runtime::", stringify!($name), "::<u8>::new(0).empty());\n```")]
            pub fn empty(&self) -> bool {
                self.qsize() == 0
            }

            #[doc = concat!("True if the queue holds `maxsize` items (never, without a limit).\n\n```\nlet q = braid_runtime::", stringify!($name), "::new(1);\nq.put_nowait(1).unwrap();\nassert!(q.full());\n```")]
            pub fn full(&self) -> bool {
                self.core.full()
            }

            #[doc = concat!("Puts `item`, waiting while the queue is full; waiting putters are served in arrival order. A cancellation point (a cancelled put puts nothing).\n\n# Errors\n\n[`QueueShutDown`] once the queue is shut down; the task's Cancelled error.\n\n```\nbraid_runtime::run(async {\n    let q = braid_runtime::", stringify!($name), "::new(1);\n    q.put(1).await?;\n    assert!(q.full());\n    Ok(())\n}).unwrap();\n```")]
            pub fn put(&self, item: T) -> QueuePut<'_, T> {
                QueuePut { core: &self.core, item: Some(item), waiter: None, done: false }
            }

            #[doc = concat!(
                "Takes the next item in the queue's order, waiting while the queue is empty.",
                "\n\nItems leave in the queue's order whoever takes them, so one consumer gets ",
                "one producer's items in that order. Waiting getters are woken in arrival ",
                "order, one per item put; a get that comes while getters woken for the items ",
                "have not run yet waits behind them. A cancellation point: a cancelled get ",
                "takes no item, and one woken for an item wakes the next getter in its ",
                "stead.\n\n# Errors\n\n[`QueueShutDown`] once the queue is shut down and ",
                "empty: after `shutdown(false)`, gets (waiting or new) take the items left and ",
                "fail only when none is left. The task's Cancelled error.\n\n```\n",
                "braid_runtime::run(async {\n    let q = braid_runtime::",
                stringify!($name),
                "::new(0);\n    q.put_nowait(7).unwrap();\n    assert_eq!(q.get().await?, ",
                "7);\n    Ok(())\n}).unwrap();\n```"
            )]
            pub fn get(&self) -> QueueGet<'_, T> {
                QueueGet { core: &self.core, waiter: None, done: false }
            }

            #[doc = concat!("Puts `item` without waiting.\n\n# Errors\n\n[`QueueFull`] if the queue is full, [`QueueShutDown`] once it is shut down (the item is dropped; see [`try_put`](Self::try_put) to get it back).\n\n```\nlet q = braid_runtime::", stringify!($name), "::new(1);\nq.put_nowait(1).unwrap();\nlet err = q.put_nowait(2).unwrap_err();\nassert!(err.downcast_ref::<braid_runtime::QueueFull>().is_some());\n```")]
            pub fn put_nowait(&self, item: T) -> Result<()> {
                self.core.try_put(item).map_err(|(_, error)| error)
            }

            #[doc = concat!("As [`put_nowait`](Self::put_nowait), but a refused item comes back with the error.\n\n# Errors\n\nAs `put_nowait`.\n\n```\nlet q = braid_runtime::", stringify!($name), "::new(1);\nq.put_nowait(1).unwrap();\nlet (item, _err) = q.try_put(2).unwrap_err();\nassert_eq!(item, 2);\n```")]
            pub fn try_put(&self, item: T) -> std::result::Result<(), (T, Error)> {
                self.core.try_put(item)
            }

            #[doc = concat!(
                "Takes the next item in the queue's order without waiting, even one a woken ",
                "getter has not taken yet (as asyncio's does; that getter waits again, first ",
                "in line).\n\n# Errors\n\n[`QueueEmpty`] if the queue is empty, ",
                "[`QueueShutDown`] if it is also shut down.\n\n```\nlet q = braid_runtime::",
                stringify!($name),
                "::<u8>::new(0);\nlet err = q.get_nowait().unwrap_err();\n",
                "assert!(err.downcast_ref::<braid_runtime::QueueEmpty>().is_some());\n```"
            )]
            pub fn get_nowait(&self) -> Result<T> {
                self.core.get_nowait()
            }

            #[doc = concat!("Marks one item taken earlier as processed (for [`join`](Self::join)).\n\n# Errors\n\n`InvalidState` if called more times than items were put.\n\n```\nlet q = braid_runtime::", stringify!($name), "::new(0);\nq.put_nowait(1).unwrap();\nq.get_nowait().unwrap();\nq.task_done().unwrap();\nassert!(q.task_done().is_err());\n```")]
            pub fn task_done(&self) -> Result<()> {
                self.core.task_done()
            }

            #[doc = concat!("Waits until every item put has been marked done with `task_done` (not merely taken). A cancellation point.\n\n# Errors\n\nThe task's Cancelled error.\n\n```\nbraid_runtime::run(async {\n    let q = braid_runtime::", stringify!($name), "::new(0);\n    q.put_nowait(1).unwrap();\n    q.get().await?;\n    q.task_done()?;\n    q.join().await?;\n    Ok(())\n}).unwrap();\n```")]
            pub fn join(&self) -> QueueJoin<'_> {
                QueueJoin { core: &self.core, waiter: None, done: false }
            }

            #[doc = concat!(
                "Shuts the queue down (Python 3.13): puts fail with [`QueueShutDown`] and so ",
                "do waiting putters; gets (waiting or new) still take the items left in order, ",
                "and fail only once the queue is empty. A waiting getter woken for an item ",
                "that is cancelled passes it on to a getter still waiting, as before shutdown. ",
                "With `immediate`, the items left are dropped (each counting as done for ",
                "`join`) and waiting getters fail at once.\n\n```\nlet q = braid_runtime::",
                stringify!($name),
                "::new(0);\nq.put_nowait(1).unwrap();\nq.shutdown(false);\n",
                "assert_eq!(q.get_nowait().unwrap(), 1);\nassert!(q.put_nowait(2).is_err());\n",
                "```"
            )]
            pub fn shutdown(&self, immediate: bool) {
                self.core.shutdown(immediate);
            }
        }

        impl<T: $($bound)*> fmt::Debug for $name<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let state = self.core.state.lock();
                f.debug_struct(stringify!($name))
                    .field("maxsize", &self.core.maxsize)
                    .field("qsize", &state.qsize())
                    .field("getters", &state.getters.len())
                    .field("putters", &state.putters.len())
                    .field("unfinished", &state.unfinished)
                    .field("shutdown", &state.shutdown)
                    .finish()
            }
        }
    };
}

queue_type! {
    /// A first-in, first-out queue for tasks on any loop (asyncio's `Queue`).
    ///
    /// Items leave in the order they were put, whoever takes them, so each consumer gets each
    /// producer's items in order. Waiting getters and putters are served in arrival order.
    /// After [`shutdown`](Queue::shutdown)`(false)`, gets take the items left and fail with
    /// [`QueueShutDown`] only once the queue is empty.
    ///
    /// ```
    /// use std::sync::Arc;
    /// braid_runtime::run(async {
    ///     let q = Arc::new(braid_runtime::Queue::new(2));
    ///     let consumer = {
    ///         let q = q.clone();
    ///         braid_runtime::create_task(async move {
    ///             let mut got = Vec::new();
    ///             for _ in 0..5 {
    ///                 got.push(q.get().await?);
    ///                 q.task_done()?;
    ///             }
    ///             Ok(got)
    ///         })
    ///     };
    ///     for i in 0..5 {
    ///         q.put(i).await?; // waits while two items are queued
    ///     }
    ///     q.join().await?;
    ///     assert_eq!(consumer.await?, [0, 1, 2, 3, 4]);
    ///     Ok(())
    /// }).unwrap();
    /// ```
    Queue, Fifo, [Sized]
}

queue_type! {
    /// A last-in, first-out queue (asyncio's `LifoQueue`).
    ///
    /// Every get takes the newest item held when it runs, whoever takes it; otherwise it
    /// behaves as [`Queue`].
    ///
    /// ```
    /// let q = braid_runtime::LifoQueue::new(0);
    /// q.put_nowait(1).unwrap();
    /// q.put_nowait(2).unwrap();
    /// assert_eq!(q.get_nowait().unwrap(), 2);
    /// ```
    LifoQueue, Lifo, [Sized]
}

queue_type! {
    /// A queue that hands out its smallest item first (asyncio's `PriorityQueue`).
    ///
    /// Every get takes the smallest item held when it runs, whoever takes it; otherwise it
    /// behaves as [`Queue`].
    ///
    /// ```
    /// let q = braid_runtime::PriorityQueue::new(0);
    /// q.put_nowait((3, "c")).unwrap();
    /// q.put_nowait((1, "a")).unwrap();
    /// assert_eq!(q.get_nowait().unwrap(), (1, "a"));
    /// ```
    PriorityQueue, Smallest, [Ord]
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::loom_support::{model, model_with_fault, Flag};
    use loom::sync::Arc;
    use loom::thread;

    /// A getter polled once on `core`, so that it waits in line, and never run by a task: its
    /// waiter slot, the flag its waker sets, and that waker (to poll it again with).
    fn parked_getter<T>(core: &impl GetCore<T>) -> (Option<u64>, std::sync::Arc<Flag>, Waker) {
        let (flag, waker) = Flag::new();
        let mut waiter = None;
        assert!(core.poll_get(&mut waiter, &waker, false).is_pending());
        (waiter, flag, waker)
    }

    /// A parked getter must have been woken (`why`, if not), and its next poll takes `item`.
    fn assert_woken_and_takes<T: PartialEq + std::fmt::Debug>(
        core: &impl GetCore<T>,
        (waiter, flag, waker): (&mut Option<u64>, &Flag, &Waker),
        item: T,
        why: &str,
    ) {
        assert!(flag.woken(), "{why}");
        match core.poll_get(waiter, waker, false) {
            Poll::Ready(Ok(got)) => assert_eq!(got, item),
            other => panic!("the woken getter got {other:?}"),
        }
    }

    /// An item arrives while the getter it wakes is being cancelled: the item is neither lost
    /// nor duplicated; the second getter is woken and gets it.
    fn put_races_cancel_of_the_first_getter() {
        let queue = Arc::new(Queue::new(0));
        let (mut b, _, b_waker) = parked_getter(&queue.core);
        let (mut c, c_flag, c_waker) = parked_getter(&queue.core);

        let putter = {
            let queue = queue.clone();
            thread::spawn(move || queue.put_nowait(7u32).expect("unbounded"))
        };
        let canceller = {
            let queue = queue.clone();
            thread::spawn(move || {
                assert!(matches!(
                    queue.core.poll_get(&mut b, &b_waker, true),
                    Poll::Ready(Err(None))
                ));
            })
        };
        putter.join().unwrap();
        canceller.join().unwrap();
        assert_woken_and_takes(
            &queue.core,
            (&mut c, &c_flag, &c_waker),
            7,
            "the item must wake the next getter",
        );
        assert_eq!(queue.qsize(), 0);
    }

    #[test]
    fn loom_queue_put_races_cancel() {
        model(false, put_races_cancel_of_the_first_getter);
    }

    #[test]
    #[should_panic(expected = "must wake the next getter")]
    fn loom_queue_put_races_cancel_without_pass_on() {
        model(true, put_races_cancel_of_the_first_getter);
    }

    /// A `get_nowait` races the put that wakes a waiting getter: the item goes to exactly
    /// one of them, and a getter whose item was taken waits on in its place, to be woken by
    /// the next put.
    fn get_nowait_races_a_woken_getter() {
        let queue = Arc::new(Queue::new(0));
        let (mut b, b_flag, _) = parked_getter(&queue.core);

        let putter = {
            let queue = queue.clone();
            thread::spawn(move || queue.put_nowait(7u32).expect("unbounded"))
        };
        let taker = {
            let queue = queue.clone();
            thread::spawn(move || queue.get_nowait().ok())
        };
        putter.join().unwrap();
        let taken = taker.join().unwrap();
        assert!(b_flag.woken(), "the put must wake the getter");
        let (again_flag, again_waker) = Flag::new();
        match queue.core.poll_get(&mut b, &again_waker, false) {
            Poll::Ready(Ok(item)) => {
                assert_eq!((item, taken), (7, None), "the item was delivered twice");
            }
            Poll::Pending => {
                assert_eq!(taken, Some(7), "the item was lost");
                queue.put_nowait(8).expect("unbounded");
                assert_woken_and_takes(
                    &queue.core,
                    (&mut b, &again_flag, &again_waker),
                    8,
                    "the next put must wake the getter that waits again",
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(queue.qsize(), 0);
    }

    #[test]
    fn loom_queue_get_nowait_races_a_woken_getter() {
        model(false, get_nowait_races_a_woken_getter);
    }

    #[test]
    #[should_panic(expected = "must wake the getter that waits again")]
    fn loom_queue_get_nowait_races_a_woken_getter_keeping_its_claim() {
        model_with_fault(
            faults::switch(Fault::KeepClaimWhenEmpty),
            true,
            get_nowait_races_a_woken_getter,
        );
    }

    /// Two woken getters of a `PriorityQueue` run on two threads in either order: whichever
    /// takes first gets the smallest item. Each checks, after its take, that no smaller item
    /// is left (the store only shrinks, so one taken out of order is seen in some order of
    /// the threads).
    fn woken_getters_take_the_smallest_first() {
        let queue = Arc::new(PriorityQueue::new(0));
        let (a, _, a_waker) = parked_getter(&queue.core);
        let (b, _, b_waker) = parked_getter(&queue.core);
        queue.put_nowait(5u32).expect("unbounded");
        queue.put_nowait(1u32).expect("unbounded");

        let getters = [(a, a_waker), (b, b_waker)].map(|(mut waiter, waker)| {
            let queue = queue.clone();
            thread::spawn(move || {
                let item = match queue.core.poll_get(&mut waiter, &waker, false) {
                    Poll::Ready(Ok(item)) => item,
                    other => panic!("a woken getter got {other:?}"),
                };
                // The items were 1 and 5: a 5 taken while one item is left passed over the 1.
                assert!(
                    item == 1 || queue.qsize() == 0,
                    "a getter took 5 while 1 was left"
                );
                item
            })
        });
        let [first, second] = getters.map(|getter| getter.join().unwrap());
        assert_eq!(first + second, 6, "each getter gets one of the two items");
        assert_eq!(queue.qsize(), 0);
    }

    #[test]
    fn loom_queue_woken_getters_take_the_smallest_first() {
        model(false, woken_getters_take_the_smallest_first);
    }

    #[test]
    #[should_panic(expected = "took 5 while 1 was left")]
    fn loom_queue_woken_getters_taking_by_rank() {
        model_with_fault(
            faults::switch(Fault::TakeAtRank),
            true,
            woken_getters_take_the_smallest_first,
        );
    }

    /// Two getters wait; an item wakes the first; the queue is shut down while the first is
    /// cancelled and the second polls (as a spurious wake would make it). The item is never
    /// stranded: the second getter is not failed while it is left, and gets it.
    fn shutdown_passes_a_cancelled_claim_on() {
        let queue = Arc::new(Queue::new(0));
        let (mut a, _, a_waker) = parked_getter(&queue.core);
        let (mut b, b_flag, b_waker) = parked_getter(&queue.core);
        queue.put_nowait(7u32).expect("unbounded");

        let closer = {
            let queue = queue.clone();
            thread::spawn(move || queue.shutdown(false))
        };
        let canceller = {
            let queue = queue.clone();
            thread::spawn(move || {
                let left = queue.core.poll_get(&mut a, &a_waker, true);
                assert!(matches!(left, Poll::Ready(Err(None))));
            })
        };
        let second = {
            let (queue, waker) = (queue.clone(), b_waker.clone());
            thread::spawn(move || {
                let outcome = queue.core.poll_get(&mut b, &waker, false);
                (outcome, b)
            })
        };
        closer.join().unwrap();
        canceller.join().unwrap();
        let (outcome, mut b) = second.join().unwrap();
        match outcome {
            Poll::Ready(Ok(7)) => {}
            Poll::Pending => {
                assert_woken_and_takes(
                    &queue.core,
                    (&mut b, &b_flag, &b_waker),
                    7,
                    "the cancelled claim must pass to the other getter",
                );
            }
            other => panic!("the second getter got {other:?} with the item left"),
        }
        assert_eq!(queue.qsize(), 0);
    }

    #[test]
    fn loom_queue_shutdown_passes_a_cancelled_claim_on() {
        model(false, shutdown_passes_a_cancelled_claim_on);
    }

    #[test]
    #[should_panic(expected = "must pass to the other getter")]
    fn loom_queue_shutdown_passes_a_cancelled_claim_on_without_pass_on() {
        model(true, shutdown_passes_a_cancelled_claim_on);
    }

    /// Two getters wait; an item wakes the first; the queue is shut down while the first
    /// takes the item and the second polls. The second is not left waiting on an empty
    /// shut-down queue: it fails with `QueueShutDown`, at once or when woken.
    fn shutdown_fails_the_rest_once_drained() {
        let queue = Arc::new(Queue::new(0));
        let (mut a, _, a_waker) = parked_getter(&queue.core);
        let (mut b, b_flag, b_waker) = parked_getter(&queue.core);
        queue.put_nowait(7u32).expect("unbounded");

        let closer = {
            let queue = queue.clone();
            thread::spawn(move || queue.shutdown(false))
        };
        let first = {
            let queue = queue.clone();
            thread::spawn(move || {
                let took = queue.core.poll_get(&mut a, &a_waker, false);
                assert!(matches!(took, Poll::Ready(Ok(7))));
            })
        };
        let second = {
            let (queue, waker) = (queue.clone(), b_waker.clone());
            thread::spawn(move || {
                let outcome = queue.core.poll_get(&mut b, &waker, false);
                (outcome, b)
            })
        };
        closer.join().unwrap();
        first.join().unwrap();
        let (mut outcome, mut b) = second.join().unwrap();
        if outcome.is_pending() {
            assert!(
                b_flag.woken(),
                "draining a shut-down queue must wake the getters left"
            );
            outcome = queue.core.poll_get(&mut b, &b_waker, false);
        }
        match outcome {
            Poll::Ready(Err(Some(e))) => assert!(e.downcast_ref::<QueueShutDown>().is_some()),
            other => panic!("the second getter got {other:?}"),
        }
    }

    #[test]
    fn loom_queue_shutdown_fails_the_rest_once_drained() {
        model(false, shutdown_fails_the_rest_once_drained);
    }

    #[test]
    #[should_panic(expected = "must wake the getters left")]
    fn loom_queue_shutdown_fails_the_rest_once_drained_without_the_wake() {
        model_with_fault(
            faults::switch(Fault::SkipDrainedWake),
            true,
            shutdown_fails_the_rest_once_drained,
        );
    }
}
