//! The loop's remote doorbell: a multi-producer inbox plus the "asleep" flag.
//!
//! Any thread may [`push`](Doorbell::push) a message for a loop or [`ring`](Doorbell::ring) it;
//! only the loop itself drains the inbox and sleeps. The protocol guarantees two things:
//!
//! * **No lost wake-up.** A loop about to sleep calls [`prepare_sleep`](Doorbell::prepare_sleep),
//!   which publishes `asleep = true` and then re-checks the inbox. A producer publishes its
//!   message and then reads `asleep`. Both sides put a `fence(SeqCst)` between their store and
//!   their load (the Dekker pattern), so at least one of them sees the other: either the loop
//!   sees the message and does not sleep, or the producer sees `asleep` and unparks it. The
//!   loop's other work sources (the shared injector, timers) use the same handshake through
//!   [`ring`](Doorbell::ring): publish the work, then ring.
//! * **No wake-up for nothing.** A producer unparks only when it is the one that flips
//!   `asleep` from true to false, so a busy loop is never notified, and a burst of messages to
//!   a sleeping loop costs one notification.
//!
//! The unparking itself is abstracted by [`Unpark`] (the runtime uses `polling::Poller::notify`,
//! whose notification is sticky: a notify that lands before the wait makes the wait return at
//! once). The loom model in `tests/loom_doorbell.rs` checks the protocol with a sticky
//! `loom::thread::park` standing in for the poller.

use crate::sync::atomic::{fence, AtomicBool, Ordering};
use crate::sync::Mutex;
use std::collections::VecDeque;
use std::fmt;

/// How a doorbell wakes its sleeping owner. The wake must be sticky: an `unpark` that happens
/// before the owner sleeps makes that sleep return at once.
pub trait Unpark: Send + Sync {
    /// Wakes the owner, or makes its next sleep return at once.
    fn unpark(&self);
}

struct Inbox<M> {
    messages: VecDeque<M>,
    closed: bool,
}

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
    /// True while the inbox may hold messages; lets the owner skip the lock when it is empty.
    has_messages: AtomicBool,
    /// True from `prepare_sleep` until the owner wakes or a producer claims the wake-up.
    asleep: AtomicBool,
    unparker: U,
}

impl<M, U: Unpark> Doorbell<M, U> {
    /// A doorbell with an empty, open inbox whose owner is awake.
    pub fn new(unparker: U) -> Self {
        Doorbell {
            inbox: Mutex::new(Inbox { messages: VecDeque::new(), closed: false }),
            has_messages: AtomicBool::new(false),
            asleep: AtomicBool::new(false),
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
        {
            let mut inbox = self.inbox.lock();
            if inbox.closed {
                return Err(message);
            }
            inbox.messages.push_back(message);
            self.has_messages.store(true, Ordering::Relaxed);
        }
        self.ring();
        Ok(())
    }

    /// Wakes the owner if it sleeps or is about to. Call it after publishing work the owner
    /// checks in its sleep re-check (a task in a shared queue, a timer).
    #[inline]
    pub fn ring(&self) {
        // Pairs with the fence in `prepare_sleep`: our published work happens before this
        // fence, their `asleep = true` before theirs; one of us sees the other.
        fence(Ordering::SeqCst);
        if self.asleep.load(Ordering::Relaxed) {
            self.ring_slow();
        }
    }

    #[cold]
    fn ring_slow(&self) {
        // Only the producer that flips the flag unparks: one notification per sleep.
        if self.asleep.swap(false, Ordering::AcqRel) {
            self.unparker.unpark();
        }
    }

    /// Owner only: moves every queued message, in push order, to the back of `out`.
    /// Returns how many were moved.
    pub fn drain_into(&self, out: &mut VecDeque<M>) -> usize {
        if !self.has_messages.load(Ordering::Acquire) {
            return 0;
        }
        let mut inbox = self.inbox.lock();
        self.has_messages.store(false, Ordering::Relaxed);
        let n = inbox.messages.len();
        out.append(&mut inbox.messages);
        n
    }

    /// Owner only: true if messages are waiting (a cheap check, no lock).
    #[inline]
    pub fn has_messages(&self) -> bool {
        self.has_messages.load(Ordering::Acquire)
    }

    /// Owner only: announces that the owner is about to sleep, then re-checks the inbox.
    /// Returns true if the owner may sleep; it must then re-check its other work sources and
    /// call [`finish_sleep`](Doorbell::finish_sleep) after sleeping (or instead, if it found
    /// work). Returns false (and stays awake) if messages are already waiting.
    pub fn prepare_sleep(&self) -> bool {
        self.asleep.store(true, Ordering::Relaxed);
        // Pairs with the fence in `ring`.
        fence(Ordering::SeqCst);
        if self.has_messages.load(Ordering::Relaxed) {
            self.asleep.store(false, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Owner only: marks the owner awake after a sleep (or an aborted one).
    #[inline]
    pub fn finish_sleep(&self) {
        self.asleep.store(false, Ordering::Relaxed);
    }

    /// True while the owner has announced a sleep that nobody has claimed yet.
    pub fn is_asleep(&self) -> bool {
        self.asleep.load(Ordering::Relaxed)
    }

    /// Closes the inbox: later pushes fail. Returns the messages that were still queued, so
    /// the caller can run or report them.
    pub fn close(&self) -> VecDeque<M> {
        let mut inbox = self.inbox.lock();
        inbox.closed = true;
        self.has_messages.store(false, Ordering::Relaxed);
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
            .field("has_messages", &self.has_messages.load(Ordering::Relaxed))
            .field("asleep", &self.asleep.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}
