//! `Event`: asyncio.Event.

use super::{wake_all, WaitQueue};
use crate::context;
use braid_bridge::sync::Mutex;
use braid_bridge::Result;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A flag tasks can wait for (asyncio's `Event`), usable from tasks on any loop and set from
/// any thread.
///
/// `set` wakes every waiter; a waiter woken by `set` returns even if the flag was cleared
/// again before it ran, as in asyncio.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// braid_runtime::run(async {
///     let ev = Arc::new(braid_runtime::Event::new());
///     let waiter = {
///         let ev = ev.clone();
///         braid_runtime::create_task(async move { ev.wait().await })
///     };
///     ev.set();
///     waiter.await?;
///     assert!(ev.is_set());
///     Ok(())
/// }).unwrap();
/// ```
pub struct Event {
    state: Mutex<EventState>,
}

struct EventState {
    set: bool,
    waiters: WaitQueue,
}

impl Event {
    /// A cleared event.
    ///
    /// ```
    /// assert!(!braid_runtime::Event::new().is_set());
    /// ```
    pub fn new() -> Event {
        Event {
            state: Mutex::new(EventState {
                set: false,
                waiters: WaitQueue::default(),
            }),
        }
    }

    /// Sets the flag and wakes every waiter.
    ///
    /// ```
    /// let ev = braid_runtime::Event::new();
    /// ev.set();
    /// assert!(ev.is_set());
    /// ```
    pub fn set(&self) {
        let mut wake = Vec::new();
        {
            let mut state = self.state.lock();
            if state.set {
                return;
            }
            state.set = true;
            state.waiters.wake_all(&mut wake);
        }
        wake_all(wake);
    }

    /// Clears the flag.
    ///
    /// ```
    /// let ev = braid_runtime::Event::new();
    /// ev.set();
    /// ev.clear();
    /// assert!(!ev.is_set());
    /// ```
    pub fn clear(&self) {
        self.state.lock().set = false;
    }

    /// True if the flag is set.
    ///
    /// ```
    /// assert!(!braid_runtime::Event::new().is_set());
    /// ```
    pub fn is_set(&self) -> bool {
        self.state.lock().set
    }

    /// Waits until the flag is set (at once if it is). A cancellation point.
    ///
    /// ```
    /// braid_runtime::run(async {
    ///     let ev = braid_runtime::Event::new();
    ///     ev.set();
    ///     ev.wait().await?;
    ///     Ok(())
    /// }).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// The task's Cancelled error if it is cancelled while waiting.
    pub fn wait(&self) -> EventWait<'_> {
        EventWait {
            event: self,
            waiter: None,
            done: false,
        }
    }
}

impl Default for Event {
    fn default() -> Self {
        Event::new()
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        f.debug_struct("Event")
            .field("set", &state.set)
            .field("waiters", &state.waiters.len())
            .finish()
    }
}

/// The future of [`Event::wait`].
///
/// # Cancel safety
///
/// Dropping it leaves the waiters without a trace.
#[must_use = "futures do nothing unless you `.await` them"]
pub struct EventWait<'a> {
    event: &'a Event,
    waiter: Option<u64>,
    done: bool,
}

impl Future for EventWait<'_> {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(Err(crate::combinators::polled_after_completion(
                "Event::wait",
            )));
        }
        let cancel = context::take_cancel();
        context::clear_awaiting(None);
        let mut state = this.event.state.lock();
        let ready = match this.waiter {
            None => state.set,
            Some(id) => state.waiters.check(id, cx.waker()),
        };
        if let Some(cancel) = cancel {
            if let Some(id) = this.waiter.take() {
                state.waiters.remove(id);
            }
            this.done = true;
            return Poll::Ready(Err(cancel));
        }
        if ready {
            if let Some(id) = this.waiter.take() {
                state.waiters.remove(id);
            }
            this.done = true;
            return Poll::Ready(Ok(()));
        }
        if this.waiter.is_none() {
            this.waiter = Some(state.waiters.push(cx.waker()));
        }
        Poll::Pending
    }
}

impl Drop for EventWait<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.waiter.take() {
            self.event.state.lock().waiters.remove(id);
        }
    }
}

impl fmt::Debug for EventWait<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventWait")
            .field("waiting", &self.waiter.is_some())
            .finish()
    }
}
