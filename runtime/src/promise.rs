//! `Promise<T>`: asyncio's `Future`, a one-shot result that tasks await and callbacks watch.

use crate::context;
use crate::event_loop::LoopShared;
use crate::task::{AwaitTarget, CancelTarget};
use braid_bridge::sync::atomic::Ordering;
use braid_bridge::sync::Mutex;
use braid_bridge::{Error, ErrorKind, Result};
use std::fmt;
use std::future::{Future, IntoFuture};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// Identifies a done callback, for [`Promise::remove_done_callback`].
///
/// # Examples
///
/// ```
/// let p = braid_runtime::Promise::<u8>::new();
/// let a = p.add_done_callback(|_| ());
/// let b = p.add_done_callback(|_| ());
/// assert_ne!(a, b);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct CallbackId(u64);

// Unique numbers only, no synchronisation: std's atomic (loom's cannot live in a static).
static NEXT_CALLBACK_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

type PromiseCallback<T> = Box<dyn FnOnce(&Promise<T>) + Send>;

struct State<T> {
    outcome: Option<Result<T>>,
    cancelled: bool,
    /// The first await waiting: nearly always the only one, kept without an allocation.
    /// Each await has its own entry, named by the number it was given, so that one that
    /// stops waiting takes back its waker and no other's.
    first_waiter: Option<(u64, Waker)>,
    waiters: Vec<(u64, Waker)>,
    next_waiter: u64,
    callbacks: Vec<(CallbackId, PromiseCallback<T>)>,
    /// asyncio's `__log_traceback`: set by `set_exception` (not for a Cancelled error, as
    /// braid never reports a cancellation as never retrieved), cleared by whatever takes the
    /// error (`result()`, an await that returns it) and by `cancel()`, as asyncio's is. Still
    /// set when the last reference goes: "Future exception was never retrieved".
    unretrieved: bool,
}

struct Inner<T> {
    state: Mutex<State<T>>,
    /// The loop that was running when the promise was created: done callbacks run there.
    home: Option<Arc<LoopShared>>,
}

/// A one-shot result that tasks can await (asyncio's `Future`), settable from any thread.
///
/// Done callbacks are scheduled on the loop that was running when the promise was created
/// (as `call_soon`), in the order they were added, and never run synchronously; a promise
/// created outside any loop runs them on the loop that completes it, or on the completing
/// thread if that is no loop.
///
/// # Examples
///
/// ```
/// use braid_runtime::{create_future, create_task, Promise};
///
/// braid_runtime::run(async {
///     let promise: Promise<String> = create_future();
///     let setter = promise.clone();
///     create_task(async move {
///         setter.set_result("ready".to_owned())?;
///         Ok(())
///     });
///     assert_eq!(promise.await?, "ready");
///     Ok(())
/// }).unwrap();
/// ```
///
/// An error nobody took is reported, as asyncio's "Future exception was never retrieved":
/// once, when the last clone of a failed promise goes without `result()` or an await having
/// returned the error, to the exception handler of the loop the promise was created on (a
/// promise created outside any loop: of the loop the dropping thread runs, else stderr). A
/// done callback does not take the error unless it calls `result()`; a cancelled promise, or
/// one failed with a Cancelled error, is never reported, and `cancel()` on a failed promise
/// takes back the report, as asyncio's does.
///
/// ```
/// use std::sync::{mpsc, Mutex};
/// braid_runtime::run(async {
///     let (tx, rx) = mpsc::channel();
///     let tx = Mutex::new(tx);
///     braid_runtime::get_running_loop()
///         .set_exception_handler(move |ctx| drop(tx.lock().unwrap().send(ctx.message.clone())));
///     let promise = braid_runtime::create_future::<u8>();
///     promise.set_exception(braid_runtime::Error::msg("lost"))?;
///     drop(promise); // the last reference, and nobody took the error
///     assert_eq!(rx.try_recv().unwrap(), "Future exception was never retrieved");
///     Ok(())
/// }).unwrap();
/// ```
pub struct Promise<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for Promise<T> {
    fn clone(&self) -> Self {
        Promise {
            inner: self.inner.clone(),
        }
    }
}

impl<T: Send + 'static> Default for Promise<T> {
    fn default() -> Self {
        Promise::new()
    }
}

/// A new pending [`Promise`] bound to the running loop (asyncio's `loop.create_future`).
///
/// # Examples
///
/// ```
/// braid_runtime::run(async {
///     let p = braid_runtime::create_future::<u32>();
///     assert!(!p.done());
///     Ok(())
/// }).unwrap();
/// ```
pub fn create_future<T: Send + 'static>() -> Promise<T> {
    Promise::new()
}

impl<T: Send + 'static> Promise<T> {
    /// A new pending promise, bound to the running loop if there is one.
    ///
    /// ```
    /// let p = braid_runtime::Promise::<i32>::new();
    /// p.set_result(3).unwrap();
    /// assert_eq!(p.result().unwrap(), 3);
    /// ```
    pub fn new() -> Promise<T> {
        let home = context::current_loop().map(|ctx| ctx.lp.clone());
        Promise {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    outcome: None,
                    cancelled: false,
                    first_waiter: None,
                    waiters: Vec::new(),
                    next_waiter: 0,
                    callbacks: Vec::new(),
                    unretrieved: false,
                }),
                home,
            }),
        }
    }

    fn settle(&self, outcome: Result<T>, cancelled: bool) -> Result<()> {
        let (first_waiter, waiters, callbacks) = {
            let mut st = self.inner.state.lock();
            if st.outcome.is_some() {
                return Err(Error::new(
                    ErrorKind::InvalidState,
                    "the promise is already done",
                ));
            }
            st.unretrieved = matches!(&outcome, Err(e) if !e.is_cancelled());
            st.outcome = Some(outcome);
            st.cancelled = cancelled;
            (
                st.first_waiter.take(),
                std::mem::take(&mut st.waiters),
                std::mem::take(&mut st.callbacks),
            )
        };
        for (_, w) in first_waiter.into_iter().chain(waiters) {
            w.wake();
        }
        for (_, cb) in callbacks {
            self.schedule_callback(cb);
        }
        Ok(())
    }

    fn schedule_callback(&self, cb: PromiseCallback<T>) {
        let me = self.clone();
        let run: Box<dyn FnOnce() + Send> = Box::new(move || cb(&me));
        match &self.inner.home {
            Some(lp) => crate::event_loop::dispatch_to(lp, run),
            None => match context::current_loop() {
                Some(ctx) => crate::event_loop::dispatch_to(&ctx.lp, run),
                // No loop to hand it to: run here, and as a loop would, keep its panic from
                // the caller of `set_result` and from the callbacks after it.
                None => {
                    if let Err(payload) = std::panic::catch_unwind(AssertUnwindSafe(run)) {
                        braid_bridge::report_to_stderr(format_args!(
                            "braid: a Promise done callback panicked: {}",
                            Error::from_panic(payload)
                        ));
                    }
                }
            },
        }
    }

    /// Completes the promise with `value`.
    ///
    /// ```
    /// let p = braid_runtime::Promise::new();
    /// p.set_result(1).unwrap();
    /// assert!(p.set_result(2).is_err()); // InvalidState: already done
    /// ```
    ///
    /// # Errors
    ///
    /// `InvalidState` if the promise is already done.
    pub fn set_result(&self, value: T) -> Result<()> {
        self.settle(Ok(value), false)
    }

    /// Completes the promise with an error. A Cancelled error fails the promise like any
    /// other, without cancelling it (`cancelled()` stays false), as asyncio's
    /// `set_exception(CancelledError())` does; awaiting it still gives that error.
    ///
    /// ```
    /// let p = braid_runtime::Promise::<u8>::new();
    /// p.set_exception(braid_runtime::Error::msg("no")).unwrap();
    /// assert_eq!(p.result().unwrap_err().to_string(), "no");
    /// ```
    ///
    /// # Errors
    ///
    /// `InvalidState` if the promise is already done.
    pub fn set_exception(&self, error: Error) -> Result<()> {
        self.settle(Err(error), false)
    }

    /// Cancels the promise; returns false if it was already done.
    ///
    /// ```
    /// let p = braid_runtime::Promise::<u8>::new();
    /// assert!(p.cancel());
    /// assert!(p.cancelled());
    /// assert!(!p.cancel());
    /// ```
    pub fn cancel(&self) -> bool {
        self.cancel_with_message(None)
    }

    fn cancel_with_message(&self, message: Option<String>) -> bool {
        if self.settle(Err(Error::cancelled(message)), true).is_ok() {
            return true;
        }
        // Already done: asyncio's `cancel()` clears `__log_traceback` all the same, so a task
        // cancelled while awaiting a promise that has just failed leaves nothing to report.
        self.inner.state.lock().unretrieved = false;
        false
    }

    /// True if the promise was cancelled.
    ///
    /// ```
    /// let p = braid_runtime::Promise::<u8>::new();
    /// assert!(!p.cancelled());
    /// ```
    pub fn cancelled(&self) -> bool {
        self.inner.state.lock().cancelled
    }

    /// True once the promise has a result, an error, or was cancelled.
    ///
    /// ```
    /// let p = braid_runtime::Promise::new();
    /// p.set_result(()).unwrap();
    /// assert!(p.done());
    /// ```
    pub fn done(&self) -> bool {
        self.inner.state.lock().outcome.is_some()
    }

    /// The result (a clone of the value, or the error).
    ///
    /// ```
    /// let p = braid_runtime::Promise::<u8>::new();
    /// assert!(p.result().is_err()); // InvalidState: not done yet
    /// p.set_result(9).unwrap();
    /// assert_eq!(p.result().unwrap(), 9);
    /// ```
    ///
    /// # Errors
    ///
    /// `InvalidState` if not done; the stored error otherwise.
    pub fn result(&self) -> Result<T>
    where
        T: Clone,
    {
        let mut st = self.inner.state.lock();
        st.unretrieved = false;
        match &st.outcome {
            Some(outcome) => outcome.clone(),
            None => Err(Error::new(
                ErrorKind::InvalidState,
                "the promise is not done yet",
            )),
        }
    }

    /// Calls `f` once the promise is done, scheduled on its loop; returns an id for
    /// [`remove_done_callback`](Promise::remove_done_callback).
    ///
    /// ```
    /// use std::sync::mpsc;
    /// braid_runtime::run(async {
    ///     let (tx, rx) = mpsc::channel();
    ///     let p = braid_runtime::create_future::<u8>();
    ///     p.add_done_callback(move |p| tx.send(p.result().unwrap()).unwrap());
    ///     p.set_result(7)?;
    ///     assert!(rx.try_recv().is_err()); // scheduled, not yet run
    ///     braid_runtime::yield_now().await?;
    ///     assert_eq!(rx.try_recv().unwrap(), 7);
    ///     Ok(())
    /// }).unwrap();
    /// ```
    pub fn add_done_callback<F>(&self, f: F) -> CallbackId
    where
        F: FnOnce(&Promise<T>) + Send + 'static,
    {
        let id = CallbackId(NEXT_CALLBACK_ID.fetch_add(1, Ordering::Relaxed));
        {
            let mut st = self.inner.state.lock();
            if st.outcome.is_none() {
                st.callbacks.push((id, Box::new(f)));
                return id;
            }
        }
        self.schedule_callback(Box::new(f));
        id
    }

    /// Removes a done callback that has not been scheduled yet; returns how many it removed.
    ///
    /// ```
    /// let p = braid_runtime::Promise::<u8>::new();
    /// let id = p.add_done_callback(|_| panic!("removed"));
    /// assert_eq!(p.remove_done_callback(id), 1);
    /// assert_eq!(p.remove_done_callback(id), 0);
    /// p.set_result(1).unwrap();
    /// ```
    pub fn remove_done_callback(&self, id: CallbackId) -> usize {
        let removed: Vec<_> = {
            let mut st = self.inner.state.lock();
            let (removed, kept) = std::mem::take(&mut st.callbacks)
                .into_iter()
                .partition(|(cid, _)| *cid == id);
            st.callbacks = kept;
            removed
        };
        // Dropped after the lock: a closure may hold the last clone of a failed promise,
        // whose report calls the exception handler, which may look at this promise.
        removed.len()
    }
}

impl<T> Drop for Inner<T> {
    /// The last reference went: an error nobody took is reported (asyncio's `__del__`).
    fn drop(&mut self) {
        let error = {
            // Uncontended: no reference is left to take the lock from elsewhere.
            let st = self.state.lock();
            match &st.outcome {
                Some(Err(error)) if st.unretrieved => error.clone(),
                _ => return,
            }
        };
        report_unretrieved(self.home.as_deref(), error);
    }
}

/// asyncio's "Future exception was never retrieved", to the exception handler of the
/// promise's home loop (asyncio's `self._loop.call_exception_handler`). A promise created
/// outside any loop reports to the loop this thread runs, if any, else to stderr as the
/// default handler would. Called with no lock held: the handler may do anything, drop another
/// promise included; its panic is caught there, and stderr's is too.
#[cold]
#[inline(never)]
fn report_unretrieved(home: Option<&LoopShared>, error: Error) {
    let ctx =
        crate::ExceptionContext::new("Future exception was never retrieved").with_error(error);
    match home {
        Some(lp) => lp.report(&ctx),
        // `current_loop` is `None` in a thread-local's destructor as the thread exits.
        None => match context::current_loop() {
            Some(ctx_lp) => ctx_lp.lp.report(&ctx),
            None => braid_bridge::report_to_stderr(format_args!("braid: {ctx}")),
        },
    }
}

impl<T: Send + 'static> CancelTarget for Inner<T> {
    fn cancel_from_awaiter(self: Arc<Self>, message: Option<String>) -> bool {
        Promise { inner: self }.cancel_with_message(message)
    }
}

/// The future of awaiting a [`Promise`].
///
/// # Examples
///
/// ```
/// braid_runtime::run(async {
///     let p = braid_runtime::create_future::<u8>();
///     p.set_result(1)?;
///     let fut: braid_runtime::PromiseFuture<u8> = p.into_future();
///     assert_eq!(fut.await?, 1);
///     Ok(())
/// }).unwrap();
/// # use std::future::IntoFuture;
/// ```
#[must_use = "futures do nothing unless you `.await` them"]
pub struct PromiseFuture<T> {
    promise: Promise<T>,
    registration: context::AwaitRegistration,
    /// This await's entry among the promise's waiters, while it has one.
    waiter: Option<u64>,
}

impl<T: Clone + Send + 'static> IntoFuture for Promise<T> {
    type Output = Result<T>;
    type IntoFuture = PromiseFuture<T>;

    fn into_future(self) -> PromiseFuture<T> {
        let registration = context::AwaitRegistration::new(std::ptr::NonNull::from(&*self.inner));
        PromiseFuture {
            promise: self,
            registration,
            waiter: None,
        }
    }
}

impl<T: Clone + Send + 'static> Future for PromiseFuture<T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let this = &mut *self;
        if let Some(cancel) = context::take_cancel() {
            // asyncio: cancelling the awaiting task cancels the future it awaits.
            this.promise
                .cancel_with_message(cancel.message().map(str::to_owned));
            // Settled now, by this cancel or before it: settling took every waiter.
            this.waiter = None;
            this.registration.end_read(|| false);
            return Poll::Ready(Err(cancel));
        }
        // A waker this poll replaces is dropped after the lock: the last reference to a task
        // may free it, and its future may hold an await of this very promise.
        let mut replaced = None;
        {
            let mut st = this.promise.inner.state.lock();
            if let Some(outcome) = &st.outcome {
                let outcome = outcome.clone();
                // The error goes to the awaiter: retrieved (asyncio's `__await__` returns
                // `self.result()`).
                st.unretrieved = false;
                drop(st);
                this.waiter = None;
                this.registration.end_read(|| false);
                return Poll::Ready(outcome);
            }
            let waker = cx.waker();
            let st = &mut *st;
            let entry = this.waiter.and_then(|id| {
                let first = st.first_waiter.iter_mut();
                first.chain(st.waiters.iter_mut()).find(|(at, _)| *at == id)
            });
            match entry {
                Some((_, known)) => {
                    if !known.will_wake(waker) {
                        replaced = Some(std::mem::replace(known, waker.clone()));
                    }
                }
                None => {
                    let id = st.next_waiter;
                    st.next_waiter += 1;
                    let entry = (id, waker.clone());
                    match st.first_waiter {
                        None => st.first_waiter = Some(entry),
                        Some(_) => st.waiters.push(entry),
                    }
                    this.waiter = Some(id);
                }
            }
        }
        drop(replaced);
        let inner = &this.promise.inner;
        this.registration
            .register(|| AwaitTarget::Other(inner.clone()));
        Poll::Pending
    }
}

impl<T> Drop for PromiseFuture<T> {
    /// An await that stops waiting takes its waker back: a long-lived promise awaited in turn
    /// by many short-lived tasks (each timing out) would otherwise keep every one alive.
    fn drop(&mut self) {
        let Some(id) = self.waiter.take() else {
            return;
        };
        let waker = {
            let mut st = self.promise.inner.state.lock();
            if st.first_waiter.as_ref().is_some_and(|(at, _)| *at == id) {
                st.first_waiter.take()
            } else {
                let at = st.waiters.iter().position(|(at, _)| *at == id);
                at.map(|at| st.waiters.remove(at))
            }
        };
        // Dropped outside the lock: the last reference to a task may free it.
        drop(waker);
    }
}

impl<T> fmt::Debug for Promise<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.inner.state.lock();
        let state = match (&st.outcome, st.cancelled) {
            (None, _) => "pending",
            (Some(_), true) => "cancelled",
            (Some(Ok(_)), false) => "finished",
            (Some(Err(_)), false) => "failed",
        };
        f.debug_struct("Promise").field("state", &state).finish()
    }
}

impl<T> fmt::Debug for PromiseFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PromiseFuture")
            .field("promise", &self.promise)
            .finish()
    }
}
