//! The loop's remote doorbell: a multi-producer inbox plus the "asleep" flag.
//!
//! Any thread may [`push`](Doorbell::push) a message for a loop or [`ring`](Doorbell::ring) it;
//! only the loop itself drains the inbox and sleeps. The protocol guarantees two things:
//!
//! * **No lost wake-up.** One state word holds two bits: `ASLEEP` (the owner announced a
//!   sleep) and `PENDING` (a message was pushed or the bell rung since the owner last looked).
//!   Both sides change the word only with read-modify-writes, which are totally ordered on one
//!   location: the owner's `fetch_or(ASLEEP)` in [`prepare_sleep`](Doorbell::prepare_sleep)
//!   either sees `PENDING` (and the owner stays awake) or comes first, and then the producer's
//!   `fetch_or(PENDING)` sees `ASLEEP` and unparks. No fence reasoning is needed.
//! * **No wake-up for nothing.** A producer unparks only when it is the one that clears
//!   `ASLEEP`, so a busy loop is never notified, and a burst of messages to a sleeping loop
//!   costs one notification.
//! * **One ring per batch.** Only a push onto an *empty* inbox rings. Whoever takes that
//!   first message (the owner's drain, which clears `PENDING` before it takes the inbox's
//!   lock) takes every message pushed behind it under the same lock, so the first push's
//!   ring stands for them all: either it lands after the owner's last clear (the owner sees
//!   `PENDING` and will not sleep) or it finds `ASLEEP` and unparks. A producer that finds
//!   messages already waiting skips the read-modify-write on `state`, a line the owner
//!   reads at every turn: under a backlog (foreign threads calling `call_soon_threadsafe`
//!   faster than the loop runs the callbacks) that is most pushes.
//!
//! Work published elsewhere (a shared run queue, a timer) reaches a sleeping owner the same
//! way: publish it, then [`ring`](Doorbell::ring), which sets `PENDING` like a message
//! without a payload.
//!
//! The unparking itself is abstracted by [`Unpark`] (the runtime uses `polling::Poller::notify`,
//! whose notification is sticky: a notify that lands before the wait makes the wait return at
//! once). The loom models in `tests/loom_doorbell.rs` check the protocol with loom's sticky
//! `Notify` standing in for the poller.

use crate::sync::atomic::{AtomicUsize, Ordering};
use crate::sync::Mutex;
use std::collections::VecDeque;
use std::fmt;

/// How a doorbell wakes its sleeping owner. The wake must be sticky: an `unpark` that happens
/// before the owner sleeps makes that sleep return at once.
///
/// # Examples
///
/// A thread's park token is sticky, so a `Thread` handle can serve:
///
/// ```
/// use braid_bridge::doorbell::{Doorbell, Unpark};
/// struct Wake(std::thread::Thread);
/// impl Unpark for Wake {
///     fn unpark(&self) { self.0.unpark(); }
/// }
/// let bell: Doorbell<u32, Wake> = Doorbell::new(Wake(std::thread::current()));
/// if bell.prepare_sleep() {
///     bell.ring();                 // a producer rings before we park…
///     std::thread::park();         // …so this returns at once
///     bell.finish_sleep();
/// }
/// ```
pub trait Unpark: Send + Sync {
    /// Wakes the owner, or makes its next sleep return at once.
    fn unpark(&self);
}

struct Inbox<M> {
    messages: VecDeque<M>,
    closed: bool,
}

/// The owner announced a sleep that no producer has claimed yet.
const ASLEEP: usize = 1 << 0;
/// Something arrived (a message, or a ring for work published elsewhere) since the owner last
/// drained.
const PENDING: usize = 1 << 1;

/// A multi-producer inbox and wake flag for one event loop. See the module docs for the
/// protocol.
///
/// # Examples
///
/// ```
/// use braid_bridge::doorbell::{Doorbell, Unpark};
/// use std::sync::atomic::{AtomicUsize, Ordering};
///
/// #[derive(Default)]
/// struct Counter(AtomicUsize);
/// impl Unpark for Counter {
///     fn unpark(&self) { self.0.fetch_add(1, Ordering::SeqCst); }
/// }
///
/// let bell = Doorbell::new(Counter::default());
/// assert!(bell.prepare_sleep());          // nothing queued: the owner may sleep
/// bell.push("hello").unwrap();            // a producer finds it asleep and unparks it
/// assert_eq!(bell.unparker().0.load(Ordering::SeqCst), 1);
/// bell.finish_sleep();
/// let mut out = std::collections::VecDeque::new();
/// bell.drain_into(&mut out);
/// assert_eq!(out, ["hello"]);
/// ```
pub struct Doorbell<M, U> {
    inbox: Mutex<Inbox<M>>,
    /// `ASLEEP | PENDING` bits; see the module docs.
    state: AtomicUsize,
    unparker: U,
}

impl<M, U: Unpark> Doorbell<M, U> {
    /// A doorbell with an empty, open inbox whose owner is awake.
    pub fn new(unparker: U) -> Self {
        Doorbell {
            inbox: Mutex::new(Inbox {
                messages: VecDeque::new(),
                closed: false,
            }),
            state: AtomicUsize::new(0),
            unparker,
        }
    }

    /// The unparker this doorbell rings with.
    pub fn unparker(&self) -> &U {
        &self.unparker
    }

    /// Queues `message` for the owner and wakes it if it sleeps.
    ///
    /// # Errors
    ///
    /// Gives the message back if the inbox was [closed](Doorbell::close): it is then the
    /// caller's to report, never silently dropped.
    pub fn push(&self, message: M) -> Result<(), M> {
        let first = {
            let mut inbox = self.inbox.lock();
            if inbox.closed && !fault!(DoorbellIgnoresClose) {
                return Err(message);
            }
            let first = inbox.messages.is_empty();
            inbox.messages.push_back(message);
            first
        };
        // Behind other messages, this one is taken with the first, whose push rang (see
        // "One ring per batch" in the module docs).
        if first {
            self.ring();
        }
        Ok(())
    }

    /// Wakes the owner if it sleeps or is about to, and makes its next
    /// [`prepare_sleep`](Doorbell::prepare_sleep) fail. Call it after publishing work the
    /// owner looks for elsewhere (a task in a shared queue, a timer).
    #[inline]
    pub fn ring(&self) {
        // AcqRel: the work published before this ring happens-before the owner's drain or
        // re-check that follows its own RMW on `state`.
        let prev = self.state.fetch_or(PENDING, Ordering::AcqRel);
        if prev & ASLEEP != 0 {
            self.ring_slow();
        } else if fault!(DoorbellAlwaysUnparks) {
            self.unparker.unpark();
        }
    }

    #[cold]
    fn ring_slow(&self) {
        // Only the producer that clears ASLEEP unparks: one notification per sleep.
        if self.state.fetch_and(!ASLEEP, Ordering::AcqRel) & ASLEEP != 0 {
            self.unparker.unpark();
        }
    }

    /// Owner only: moves every queued message, in push order, to the back of `out`.
    /// Returns how many were moved. Clears `PENDING`: a ring without a message counts as
    /// looked at once this returns.
    pub fn drain_into(&self, out: &mut VecDeque<M>) -> usize {
        if self.state.load(Ordering::Acquire) & PENDING == 0 {
            return 0;
        }
        // Clear first, then take: a push that finds the inbox emptied by this take rings
        // after it, setting PENDING again. (Taken first, such a push could ring before the
        // clear, which would then hide it.)
        let clears_after_take = fault!(DoorbellClearsAfterTake);
        if !clears_after_take {
            self.state.fetch_and(!PENDING, Ordering::AcqRel);
        }
        let mut inbox = self.inbox.lock();
        let n = inbox.messages.len();
        if out.is_empty() {
            // The usual case: trade buffers under the lock instead of copying every message
            // while producers wait for it. The inbox gets `out`'s emptied buffer, whose
            // capacity serves the next pushes.
            std::mem::swap(out, &mut inbox.messages);
        } else {
            out.append(&mut inbox.messages);
        }
        drop(inbox);
        if clears_after_take {
            self.state.fetch_and(!PENDING, Ordering::AcqRel);
        }
        n
    }

    /// Owner only: true if something arrived since the last drain (one atomic load).
    #[inline]
    pub fn has_messages(&self) -> bool {
        self.state.load(Ordering::Acquire) & PENDING != 0
    }

    /// True if messages wait in the inbox (takes its lock). Unlike
    /// [`has_messages`](Doorbell::has_messages), a bare [`ring`](Doorbell::ring) does not
    /// count: the owner can tell work sent to it from a call to look elsewhere.
    ///
    /// ```
    /// use braid_bridge::doorbell::{Doorbell, Unpark};
    /// struct Nobody;
    /// impl Unpark for Nobody {
    ///     fn unpark(&self) {}
    /// }
    /// let bell: Doorbell<u32, Nobody> = Doorbell::new(Nobody);
    /// bell.ring();
    /// assert!(bell.has_messages() && !bell.has_queued());
    /// bell.push(7).unwrap();
    /// assert!(bell.has_queued());
    /// ```
    pub fn has_queued(&self) -> bool {
        if fault!(DoorbellQueuedCountsRings) {
            return self.has_messages();
        }
        !self.inbox.lock().messages.is_empty()
    }

    /// Owner only: announces that the owner is about to sleep. Returns true if it may sleep;
    /// it should then re-check its other work sources and call
    /// [`finish_sleep`](Doorbell::finish_sleep) after sleeping (or instead, if it found
    /// work). Returns false (and stays awake) if something arrived since the last drain.
    pub fn prepare_sleep(&self) -> bool {
        let prev = self.state.fetch_or(ASLEEP, Ordering::AcqRel);
        if prev & PENDING != 0 && !fault!(DoorbellIgnoresPending) {
            self.state.fetch_and(!ASLEEP, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Owner only: marks the owner awake after a sleep (or an aborted one).
    #[inline]
    pub fn finish_sleep(&self) {
        if self.state.load(Ordering::Relaxed) & ASLEEP != 0 {
            self.state.fetch_and(!ASLEEP, Ordering::AcqRel);
        }
    }

    /// Closes the inbox: later pushes fail. Returns the messages that were still queued, so
    /// the caller can run or report them.
    pub fn close(&self) -> VecDeque<M> {
        let mut inbox = self.inbox.lock();
        inbox.closed = true;
        std::mem::take(&mut inbox.messages)
    }

    /// True once [`close`](Doorbell::close) has run.
    pub fn is_closed(&self) -> bool {
        self.inbox.lock().closed
    }
}

impl<M, U> fmt::Debug for Doorbell<M, U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Doorbell")
            .field(
                "pending",
                &(self.state.load(Ordering::Relaxed) & PENDING != 0),
            )
            .field(
                "asleep",
                &(self.state.load(Ordering::Relaxed) & ASLEEP != 0),
            )
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::{Doorbell, Unpark};
    use std::collections::VecDeque;

    struct Nobody;
    impl Unpark for Nobody {
        fn unpark(&self) {}
    }

    #[test]
    fn drains_keep_push_order_into_an_empty_or_a_filled_buffer() {
        let bell: Doorbell<u32, Nobody> = Doorbell::new(Nobody);
        let mut out = VecDeque::new();
        for round in 0..3 {
            // Into an empty buffer: the inbox's buffer is traded for `out`'s.
            bell.push(round * 10).unwrap();
            bell.push(round * 10 + 1).unwrap();
            assert_eq!(bell.drain_into(&mut out), 2);
            assert_eq!(out, [round * 10, round * 10 + 1]);
            // Into a buffer that already holds messages: appended behind them.
            bell.push(round * 10 + 2).unwrap();
            assert_eq!(bell.drain_into(&mut out), 1);
            assert_eq!(out, [round * 10, round * 10 + 1, round * 10 + 2]);
            out.clear();
            assert!(!bell.has_queued());
        }
    }
}
