//! Task timers (`sleep`, `sleep_until`) in one heap shared by every loop of a runtime, so that
//! a sleep started on a loop that later gets stuck still fires: any idle loop may fire it.
//! Callback timers (`call_later`) are pinned to their loop and live in the loop's own heap.

use crate::context;
use crate::scheduler::RuntimeShared;
use braid_bridge::sync::atomic::{AtomicU64, Ordering};
use braid_bridge::sync::Mutex;
use braid_bridge::{Error, ErrorKind, Result};
use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// One registered sleep.
pub(crate) struct TimerEntry {
    state: Mutex<EntryState>,
}

impl TimerEntry {
    /// True if the timer has fired; else `waker` is the one its firing (or the heap's
    /// abandonment, `TimerQueue::abandon_all`) wakes.
    fn wait(&self, waker: &Waker) -> bool {
        let mut st = self.state.lock();
        if st.fired {
            return true;
        }
        match &st.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => st.waker = Some(waker.clone()),
        }
        false
    }
}

struct EntryState {
    fired: bool,
    cancelled: bool,
    waker: Option<Waker>,
}

struct HeapItem {
    deadline: u64,
    seq: u64,
    entry: Arc<TimerEntry>,
}

impl PartialEq for HeapItem {
    fn eq(&self, other: &Self) -> bool {
        (self.deadline, self.seq) == (other.deadline, other.seq)
    }
}
impl Eq for HeapItem {}
impl PartialOrd for HeapItem {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for HeapItem {
    // Reversed: BinaryHeap is a max-heap and we want the earliest (then the oldest) on top.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.deadline, other.seq).cmp(&(self.deadline, self.seq))
    }
}

struct Heap {
    items: BinaryHeap<HeapItem>,
    seq: u64,
    /// Entries whose sleep was dropped before firing; swept when they dominate.
    dead: usize,
}

/// The shared heap plus a lock-free copy of its earliest deadline, so that loops can check
/// "is anything due" with one atomic load per tick.
pub(crate) struct TimerQueue {
    heap: Mutex<Heap>,
    earliest: AtomicU64,
}

impl TimerQueue {
    pub(crate) fn new() -> TimerQueue {
        TimerQueue {
            heap: Mutex::new(Heap {
                items: BinaryHeap::new(),
                seq: 0,
                dead: 0,
            }),
            earliest: AtomicU64::new(u64::MAX),
        }
    }

    /// The earliest deadline (runtime ns), if any timer is pending.
    #[inline]
    pub(crate) fn earliest(&self) -> Option<u64> {
        match self.earliest.load(Ordering::Acquire) {
            u64::MAX => None,
            ns => Some(ns),
        }
    }

    /// Registers `entry` at `deadline`; returns true if it became the earliest.
    fn insert(&self, deadline: u64, entry: Arc<TimerEntry>) -> bool {
        let mut heap = self.heap.lock();
        heap.seq += 1;
        let seq = heap.seq;
        heap.items.push(HeapItem {
            deadline,
            seq,
            entry,
        });
        if deadline < self.earliest.load(Ordering::Relaxed) {
            self.earliest.store(deadline, Ordering::Release);
            true
        } else {
            false
        }
    }

    fn note_dead(&self) {
        let mut heap = self.heap.lock();
        heap.dead += 1;
        if heap.dead > 64 && heap.dead * 2 > heap.items.len() {
            heap.items.retain(|item| !item.entry.state.lock().cancelled);
            heap.dead = 0;
            let earliest = heap.items.peek().map_or(u64::MAX, |i| i.deadline);
            self.earliest.store(earliest, Ordering::Release);
        }
    }

    /// The runtime has shut down and its loops have all exited: nobody will fire these.
    /// Empties the heap and wakes every sleep still waiting in it, unfired; polled again, it
    /// leaves for the runtime it is polled in, or fails off the loops
    /// (`Sleep::outlived_its_runtime`).
    pub(crate) fn abandon_all(&self) {
        let items = {
            let mut heap = self.heap.lock();
            heap.dead = 0;
            self.earliest.store(u64::MAX, Ordering::Release);
            std::mem::take(&mut heap.items)
        };
        let wakers: Vec<Waker> = items
            .into_iter()
            .filter_map(|item| item.entry.state.lock().waker.take())
            .collect();
        for w in wakers {
            w.wake();
        }
    }

    /// Fires every timer due at `now` (runtime ns). Returns how many sleeps it woke.
    pub(crate) fn fire(&self, now: u64) -> usize {
        let mut wakers = Vec::new();
        {
            let mut heap = self.heap.lock();
            while heap.items.peek().is_some_and(|top| top.deadline <= now) {
                let item = heap.items.pop().expect("peeked");
                let mut st = item.entry.state.lock();
                if st.cancelled {
                    heap.dead = heap.dead.saturating_sub(1);
                    continue;
                }
                st.fired = true;
                if let Some(w) = st.waker.take() {
                    wakers.push(w);
                }
            }
            let earliest = heap.items.peek().map_or(u64::MAX, |i| i.deadline);
            self.earliest.store(earliest, Ordering::Release);
        }
        let n = wakers.len();
        for w in wakers {
            w.wake();
        }
        n
    }
}

enum SleepState {
    New,
    Yielded,
    Registered {
        rt: Arc<RuntimeShared>,
        entry: Arc<TimerEntry>,
    },
    Done,
}

/// The future of [`sleep`] and [`sleep_until`]: completes at its deadline, or with a
/// Cancelled error if its task is cancelled first.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// braid_runtime::run(async {
///     let start = Instant::now();
///     braid_runtime::sleep(Duration::from_millis(20)).await?;
///     assert!(start.elapsed() >= Duration::from_millis(20));
///     Ok(())
/// }).unwrap();
/// ```
///
/// # Cancel safety
///
/// Dropping a `Sleep` unregisters it; it holds nothing else.
#[must_use = "futures do nothing unless you `.await` them"]
pub struct Sleep {
    deadline: Instant,
    state: SleepState,
}

impl Sleep {
    /// The instant this sleep completes at.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// let s = braid_runtime::sleep(Duration::from_secs(1));
    /// assert!(s.deadline() > Instant::now());
    /// ```
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

/// Sleeps for `delay` (asyncio's `sleep`). A zero delay yields once, as `asyncio.sleep(0)`
/// does. A delay too large to represent sleeps until cancelled.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// braid_runtime::run(async {
///     braid_runtime::sleep(Duration::from_millis(1)).await?;
///     Ok(())
/// }).unwrap();
/// ```
///
/// # Errors
///
/// A Cancelled error if the task is cancelled while sleeping; an `InvalidState` error if
/// polled outside a braid event loop.
pub fn sleep(delay: Duration) -> Sleep {
    let now = Instant::now();
    sleep_until(now.checked_add(delay).unwrap_or_else(|| far_future(now)))
}

/// Sleeps until `deadline`; a deadline in the past yields once.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// braid_runtime::run(async {
///     let deadline = Instant::now() + Duration::from_millis(5);
///     braid_runtime::sleep_until(deadline).await?;
///     assert!(Instant::now() >= deadline);
///     Ok(())
/// }).unwrap();
/// ```
///
/// # Errors
///
/// As [`sleep`].
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep {
        deadline,
        state: SleepState::New,
    }
}

/// About thirty years ahead: "never", for delays too large for `Instant`.
pub(crate) fn far_future(now: Instant) -> Instant {
    now.checked_add(Duration::from_secs(86_400 * 365 * 30))
        .unwrap_or(now)
}

impl Future for Sleep {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        if matches!(this.state, SleepState::Done) {
            return Poll::Ready(Ok(()));
        }
        if let Some(cancel) = context::take_cancel() {
            this.unregister();
            this.state = SleepState::Done;
            return Poll::Ready(Err(cancel));
        }
        context::clear_awaiting(None);
        this.poll_timer(cx)
    }
}

impl Sleep {
    /// The timer alone, without the cancellation point: for combinators (`timeout`, `wait`)
    /// that keep a deadline beside the future they drive, and must not take the task's
    /// cancel request away from it. Without a running loop (the first poll only), fails with
    /// InvalidState.
    pub(crate) fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self;
        match &this.state {
            SleepState::New => {
                let Some(ctx) = context::current_loop() else {
                    return Poll::Ready(Err(Error::new(
                        ErrorKind::InvalidState,
                        "sleep() needs a running braid event loop",
                    )));
                };
                if this.deadline <= Instant::now() {
                    // asyncio.sleep(0): let everything else that is ready run first.
                    this.state = SleepState::Yielded;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                let rt = ctx.rt.clone();
                let entry = Arc::new(TimerEntry {
                    state: Mutex::new(EntryState {
                        fired: false,
                        cancelled: false,
                        waker: Some(cx.waker().clone()),
                    }),
                });
                let deadline = rt.ns(this.deadline);
                if rt.timers.insert(deadline, entry.clone()) {
                    rt.on_new_earliest_timer(deadline);
                }
                this.state = SleepState::Registered { rt, entry };
                Poll::Pending
            }
            SleepState::Yielded => {
                this.state = SleepState::Done;
                Poll::Ready(Ok(()))
            }
            SleepState::Registered { rt, entry } => {
                if entry.wait(cx.waker()) {
                    this.state = SleepState::Done;
                    return Poll::Ready(Ok(()));
                }
                // Read after our waker is in the entry: a shutdown that empties the heap
                // after that takes the waker and wakes us; one before it is seen here.
                let Some(moved) = Self::outlived_its_runtime(rt) else {
                    return Poll::Pending;
                };
                // Its timer is in the heap of a runtime whose loops have all exited: nobody
                // fires it any more.
                this.unregister();
                this.state = SleepState::New;
                if moved {
                    // Polled in another runtime now: its timer goes there.
                    return this.poll_timer(cx);
                }
                Poll::Ready(Err(Error::new(
                    ErrorKind::InvalidState,
                    "sleep() needs a running braid event loop: the runtime it was first \
                     awaited in has shut down",
                )))
            }
            SleepState::Done => Poll::Ready(Ok(())),
        }
    }

    /// `Some` if the runtime `rt`, where this sleep's timer waits, has shut down and its
    /// worker loops have all exited: `Some(true)` if it is polled on a loop of another
    /// runtime now, `Some(false)` if off the loops. `None` on a host loop of `rt` still
    /// running (a `run_until_complete` that outlived the shutdown): that loop fires `rt`'s
    /// heap, which the shutdown left to it. One load while `rt` runs.
    fn outlived_its_runtime(rt: &Arc<RuntimeShared>) -> Option<bool> {
        if !rt.stopping.load(Ordering::Relaxed)
            || rt.exited.load(Ordering::Acquire) < rt.loops.len()
        {
            return None;
        }
        match context::current_loop() {
            Some(ctx) if Arc::ptr_eq(&ctx.rt, rt) => None,
            here => Some(here.is_some()),
        }
    }

    fn unregister(&mut self) {
        if let SleepState::Registered { rt, entry } = &self.state {
            let newly_dead = {
                let mut st = entry.state.lock();
                let newly = !st.fired && !st.cancelled;
                st.cancelled = true;
                st.waker = None;
                newly
            };
            if newly_dead {
                rt.timers.note_dead();
            }
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.unregister();
    }
}

impl fmt::Debug for Sleep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            SleepState::New => "new",
            SleepState::Yielded => "yielded",
            SleepState::Registered { .. } => "registered",
            SleepState::Done => "done",
        };
        f.debug_struct("Sleep")
            .field("deadline", &self.deadline)
            .field("state", &state)
            .finish()
    }
}

/// The future of [`yield_now`].
///
/// # Examples
///
/// ```
/// braid_runtime::run(async {
///     braid_runtime::yield_now().await?;
///     Ok(())
/// }).unwrap();
/// ```
#[must_use = "futures do nothing unless you `.await` them"]
#[derive(Debug)]
pub struct YieldNow {
    yielded: bool,
}

/// Lets every other ready task and callback run once before this task continues
/// (asyncio's `sleep(0)`). A cancellation point.
///
/// # Examples
///
/// ```
/// braid_runtime::run(async {
///     for _ in 0..3 {
///         braid_runtime::yield_now().await?;
///     }
///     Ok(())
/// }).unwrap();
/// ```
///
/// # Errors
///
/// A Cancelled error if the task has a cancel request pending.
pub fn yield_now() -> YieldNow {
    YieldNow { yielded: false }
}

impl Future for YieldNow {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if let Some(cancel) = context::take_cancel() {
            return Poll::Ready(Err(cancel));
        }
        if self.yielded {
            return Poll::Ready(Ok(()));
        }
        context::clear_awaiting(None);
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Converts seconds given as a float (Python's way of writing delays) into a `Duration`, with
/// asyncio's rules: a negative delay means "now", infinity means "never" (`Duration::MAX`,
/// which braid's timers treat as a sleep until cancelled), and NaN is an error.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use braid_runtime::delay_from_secs;
/// assert_eq!(delay_from_secs(0.25).unwrap(), Duration::from_millis(250));
/// assert_eq!(delay_from_secs(-3.0).unwrap(), Duration::ZERO);
/// assert_eq!(delay_from_secs(f64::INFINITY).unwrap(), Duration::MAX);
/// assert!(delay_from_secs(f64::NAN).is_err());
/// ```
///
/// # Errors
///
/// An error of kind `Other` when `secs` is NaN.
pub fn delay_from_secs(secs: f64) -> Result<Duration> {
    if secs.is_nan() {
        return Err(Error::msg("invalid delay: NaN is not a number of seconds"));
    }
    if secs <= 0.0 {
        return Ok(Duration::ZERO);
    }
    Ok(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX))
}

#[cfg(all(test, loom))]
mod loom_models {
    //! A sleep and the shutdown of the runtime whose heap holds its timer.
    use super::{EntryState, TimerEntry, TimerQueue};
    use crate::sync::loom_support::Flag;
    use braid_bridge::sync::atomic::{AtomicUsize, Ordering};
    use braid_bridge::sync::Mutex;
    use std::sync::Arc;

    /// A sleep moved to another task is polled there (a new waker) while the shutdown of
    /// its runtime, whose loops have all exited, empties the heap (`abandon_all`): the sleep
    /// either sees the runtime gone or is woken by the abandonment, and then sees it.
    /// `look_first` looks at the runtime before storing the waker, the other order from
    /// `Sleep::poll_timer`'s: the bug that order prevents, a wait in a heap nobody fires.
    fn model(look_first: bool) {
        loom::model(move || {
            let queue = Arc::new(TimerQueue::new());
            let (_first_task, first_waker) = Flag::new();
            let entry = Arc::new(TimerEntry {
                state: Mutex::new(EntryState {
                    fired: false,
                    cancelled: false,
                    waker: Some(first_waker),
                }),
            });
            queue.insert(1, entry.clone());
            // The loops' exits, as `Sleep::outlived_its_runtime` reads them.
            let exited = Arc::new(AtomicUsize::new(0));
            let shutdown = {
                let (queue, exited) = (queue.clone(), exited.clone());
                loom::thread::spawn(move || {
                    exited.store(1, Ordering::Release);
                    queue.abandon_all();
                })
            };
            let (woken, waker) = Flag::new();
            let gone = || exited.load(Ordering::Acquire) > 0;
            let saw_it_gone = if look_first {
                gone() || {
                    assert!(!entry.wait(&waker));
                    false
                }
            } else {
                assert!(!entry.wait(&waker), "nothing fires it");
                gone()
            };
            shutdown.join().unwrap();
            assert!(
                saw_it_gone || woken.woken(),
                "the sleep waits in the heap of a runtime that has shut down"
            );
        });
    }

    #[test]
    fn loom_timer_a_sleep_polled_as_its_runtime_shuts_down_leaves_or_is_woken() {
        model(false);
    }

    #[test]
    #[should_panic(expected = "the heap of a runtime that has shut down")]
    fn loom_timer_twin_looking_before_the_waker_is_stored_strands_the_sleep() {
        model(true);
    }
}
