//! The task cell: one allocation holding a task's header, its future and its output; the
//! task's waker is a pointer to the cell (see [`waker_vtable`]). This is the only module of
//! braid-runtime with `unsafe` code, so it also holds the two poller calls that `polling`
//! marks unsafe (`poller_add_edge`, `poller_delete`).
//!
//! Who may touch which field when:
//!
//! * `stage` (the future, per-step flags): only the thread that holds the RUNNING bit of
//!   `header.state` (see `state.rs`), or the spawner before the task is first published to a
//!   queue. For a `spawn_local` task that thread is always its owner loop thread: wakes from
//!   elsewhere are routed to the owner's inbox, never run in place.
//! * `output`: behind its own mutex; written once by the completing runner, taken once by the
//!   join handle. A success is not stored at all once the handle is dropped.
//! * `header`: its own atomics and mutexes.

use super::state::{IdleAction, RunAction, WakeAction};
use super::{Header, TaskRef};
use crate::context;
use braid_bridge::sync::{Mutex, UnsafeCell};
use braid_bridge::{Error, Result};
use std::future::Future;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::Arc;
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

/// The operations every task (and the main pseudo-task of `run_until_complete`) offers to the
/// scheduler, untyped.
pub(crate) trait RawTask: Send + Sync {
    fn header(&self) -> &Header;
    /// Poll once (or drop, if aborted). Called by a loop after popping the task.
    fn run(self: Arc<Self>);
    /// Put the task in the right queue (the runtime's, or its owner loop's).
    fn schedule(self: Arc<Self>);
    /// Shutdown only: if the task is idle, drop its future and finish it with `error`.
    /// Returns false if it is running right now or already finished.
    fn force_finish(self: Arc<Self>, error: Error) -> bool;
    /// A wake through the state machine (used by `cancel`, which holds no waker).
    fn wake_task(self: Arc<Self>);
    /// The stored error, if the task failed (not cancelled) and its output is still there.
    fn stored_failure(&self) -> Option<Error> {
        None
    }
}

/// Typed access for the join handle.
pub(crate) trait Join<T>: RawTask + crate::task::CancelTarget {
    fn poll_join(&self, cx: &mut Context<'_>) -> Poll<Result<T>>;
    /// The stored error, if the task failed (not cancelled) and nobody took the output.
    fn unretrieved_error(&self) -> Option<Error>;
}

/// Where a finished task's output goes instead of the join handle (run_coroutine_threadsafe
/// hands it to a `ConcurrentFuture`).
pub(crate) type Deliver<T> = Box<dyn FnOnce(Result<T>) + Send>;

struct Stage<F, T> {
    future: Option<F>,
    started: bool,
    deliver: Option<Deliver<T>>,
}

pub(crate) struct TaskCell<F, T> {
    header: Header,
    stage: UnsafeCell<Stage<F, T>>,
    output: Mutex<Option<Result<T>>>,
}

// SAFETY: the future `F` (which may be !Send for spawn_local tasks) is only touched by the
// thread holding RUNNING, and for a local task that is always its owner loop thread: `schedule`
// routes its wakes to the owner's inbox, and `force_finish` is only called for a local task by
// its owner (see `Header::home`). The output `T` is written by that thread and read by the
// join handle, which is `Send` only when `T: Send` (see the impls on `Task<T>` below).
unsafe impl<F, T> Send for TaskCell<F, T> {}
// SAFETY: as above: every shared access goes through atomics, mutexes, or the RUNNING bit.
unsafe impl<F, T> Sync for TaskCell<F, T> {}

impl<F, T> TaskCell<F, T>
where
    F: Future<Output = Result<T>> + 'static,
    T: 'static,
{
    /// Allocates the cell.
    pub(crate) fn new(header: Header, future: F, deliver: Option<Deliver<T>>) -> Arc<Self> {
        // Written straight into the allocation: `Arc::new` of a finished value builds it on
        // the stack and copies it twice (a tenth of a tiny task's instructions).
        let mut cell = Arc::<Self>::new_uninit();
        Arc::get_mut(&mut cell)
            .expect("a new allocation has one owner")
            .write(TaskCell {
                header,
                stage: UnsafeCell::new(Stage {
                    future: Some(future),
                    started: false,
                    deliver,
                }),
                output: Mutex::new(None),
            });
        // SAFETY: the value was written just above.
        unsafe { cell.assume_init() }
    }

    /// Drops the future and stores `output`, then publishes completion.
    /// Must be called by the RUNNING holder.
    fn finish(self: &Arc<Self>, output: Result<T>) {
        // SAFETY: we hold RUNNING (the caller's contract), so nobody else touches the stage.
        let (future, deliver) = self.stage.with_mut(|stage| unsafe {
            let stage = &mut *stage;
            (stage.future.take(), stage.deliver.take())
        });
        // A destructor may panic too; it must not take the loop down.
        if let Some(future) = future {
            let _ = catch_unwind(AssertUnwindSafe(move || drop(future)));
        }
        let cancelled = matches!(&output, Err(e) if e.is_cancelled());
        let failed = matches!(&output, Err(e) if !e.is_cancelled());
        let failure = match &output {
            Err(e) if !e.is_cancelled() => Some(e.clone()),
            _ => None,
        };
        match deliver {
            Some(deliver) => deliver(output),
            // Once the handle is gone a success can never be taken, so it is dropped here
            // rather than stored: a lock less per detached task. A failure is kept, for
            // `stored_failure` (a done callback added later through a `TaskRef` reports it).
            None if output.is_ok() && self.header.handle_dropped() => {
                let _ = catch_unwind(AssertUnwindSafe(move || drop(output)));
            }
            None => *self.output.lock() = Some(output),
        }
        self.header.complete(cancelled, failed);
        self.header
            .after_complete(&|| TaskRef::from_raw(self.clone()), failure);
    }
}

impl<F, T> RawTask for TaskCell<F, T>
where
    F: Future<Output = Result<T>> + 'static,
    T: 'static,
{
    fn header(&self) -> &Header {
        &self.header
    }

    fn run(self: Arc<Self>) {
        match self.header.state.start_run() {
            RunAction::Skip => return,
            RunAction::Abort => {
                self.finish(Err(Error::cancelled(Some("aborted".to_owned()))));
                return;
            }
            RunAction::Poll => {}
        }
        // SAFETY: we hold RUNNING: the stage is ours until we give it back below.
        let stage = self.stage.with_mut(|stage| unsafe { &mut *stage });
        let first_poll = !stage.started;
        stage.started = true;
        let step = self.header.cancel.begin_step(first_poll);
        if step.cancel_before_start {
            self.finish(Err(step.error_if_cancelled()));
            return;
        }
        let Some(future) = stage.future.as_mut() else {
            debug_assert!(false, "a running task without a future");
            return;
        };
        // The poll borrows the runner's reference to the cell for its waker: a future that
        // keeps the waker clones it, taking a count of its own. Never dropped, so it never
        // gives back the count it did not take.
        // SAFETY: `self` keeps the cell alive for the whole poll, and `waker_vtable` is the
        // vtable of a `TaskCell<F, T>` pointer, which this is.
        let waker = ManuallyDrop::new(unsafe {
            Waker::from_raw(RawWaker::new(
                Arc::as_ptr(&self).cast(),
                waker_vtable::<F, T>(),
            ))
        });
        let mut cx = Context::from_waker(&waker);
        let me: &dyn RawTask = &*self;
        let guard = context::enter_task(NonNull::from(me));
        // SAFETY: the future lives in the task's heap allocation and is never moved out
        // until it is dropped in place (in `finish`).
        let future = unsafe { Pin::new_unchecked(future) };
        let polled = catch_unwind(AssertUnwindSafe(|| future.poll(&mut cx)));
        drop(guard);
        match polled {
            Ok(Poll::Pending) => match self.header.state.end_poll_pending() {
                IdleAction::Idle => {}
                IdleAction::Reschedule => self.schedule(),
            },
            Ok(Poll::Ready(output)) => {
                self.finish(self.header.cancel.step_outcome(&step, output));
            }
            Err(payload) => self.finish(Err(Error::from_panic(payload))),
        }
    }

    fn schedule(self: Arc<Self>) {
        crate::scheduler::schedule(self);
    }

    fn force_finish(self: Arc<Self>, error: Error) -> bool {
        if !self.header.state.try_claim_idle() {
            return false;
        }
        // We hold RUNNING now, as `finish` requires.
        self.finish(Err(error));
        true
    }

    fn wake_task(self: Arc<Self>) {
        if self.header.state.wake() == WakeAction::Schedule {
            self.schedule();
        }
    }

    fn stored_failure(&self) -> Option<Error> {
        TaskCell::stored_failure(self)
    }
}

impl<F, T> crate::task::CancelTarget for TaskCell<F, T>
where
    F: Future<Output = Result<T>> + 'static,
    T: 'static,
{
    fn cancel_from_awaiter(self: Arc<Self>, message: Option<String>) -> bool {
        crate::task::request_cancel(&(self as Arc<dyn RawTask>), message)
    }

    fn missed_request(&self) -> bool {
        self.header.missed_cancel()
    }
}

impl<F, T> Join<T> for TaskCell<F, T>
where
    F: Future<Output = Result<T>> + 'static,
    T: 'static,
{
    fn poll_join(&self, cx: &mut Context<'_>) -> Poll<Result<T>> {
        if !self.header.watch(cx.waker()) {
            return Poll::Pending;
        }
        match self.output.lock().take() {
            Some(output) => Poll::Ready(output),
            None => Poll::Ready(Err(Error::new(
                braid_bridge::ErrorKind::InvalidState,
                "the task's result was already taken",
            ))),
        }
    }

    fn unretrieved_error(&self) -> Option<Error> {
        self.stored_failure()
    }
}

impl<F, T> TaskCell<F, T> {
    fn stored_failure(&self) -> Option<Error> {
        match &*self.output.lock() {
            Some(Err(e)) if !e.is_cancelled() => Some(e.clone()),
            _ => None,
        }
    }
}

/// The waker of a `TaskCell<F, T>`: its data pointer is `Arc::as_ptr` of the cell, and every
/// waker but the one a poll borrows (see `run`) owns one strong count. Written by hand, not
/// through `std::task::Wake`, so that a poll can lend the runner's own reference instead of
/// the task keeping a counted waker of itself for its whole life (two atomic operations per
/// task, and a reference cycle to break at completion).
fn waker_vtable<F, T>() -> &'static RawWakerVTable
where
    F: Future<Output = Result<T>> + 'static,
    T: 'static,
{
    &RawWakerVTable::new(
        clone_waker::<F, T>,
        wake_waker::<F, T>,
        wake_waker_by_ref::<F, T>,
        drop_waker::<F, T>,
    )
}

/// `RawWakerVTable::clone`.
///
/// # Safety
///
/// `ptr` is a waker's data pointer from `waker_vtable::<F, T>()`: a live `TaskCell<F, T>`.
unsafe fn clone_waker<F, T>(ptr: *const ()) -> RawWaker
where
    F: Future<Output = Result<T>> + 'static,
    T: 'static,
{
    // SAFETY: the waker being cloned keeps the cell alive (it owns a count, or borrows the
    // runner's), so the count may be bumped; the new waker owns that count.
    unsafe { Arc::increment_strong_count(ptr.cast::<TaskCell<F, T>>()) };
    RawWaker::new(ptr, waker_vtable::<F, T>())
}

/// `RawWakerVTable::wake`: consumes the waker's count.
///
/// # Safety
///
/// As `clone_waker`; called only on a waker that owns its count (std never calls `wake` on
/// the borrowed one, which is never dropped or consumed).
unsafe fn wake_waker<F, T>(ptr: *const ())
where
    F: Future<Output = Result<T>> + 'static,
    T: 'static,
{
    // SAFETY: the waker owns one strong count of this cell, which the `Arc` takes over.
    let cell = unsafe { Arc::from_raw(ptr.cast::<TaskCell<F, T>>()) };
    cell.wake_task();
}

/// `RawWakerVTable::wake_by_ref`.
///
/// # Safety
///
/// As `clone_waker`.
unsafe fn wake_waker_by_ref<F, T>(ptr: *const ())
where
    F: Future<Output = Result<T>> + 'static,
    T: 'static,
{
    // SAFETY: the waker keeps the cell alive for this call; `ManuallyDrop` leaves its count
    // (owned or borrowed) untouched.
    let cell = ManuallyDrop::new(unsafe { Arc::from_raw(ptr.cast::<TaskCell<F, T>>()) });
    // A count of our own only when the task is to be queued.
    if cell.header.state.wake() == WakeAction::Schedule {
        Arc::clone(&cell).schedule();
    }
}

/// `RawWakerVTable::drop`: gives back the waker's count.
///
/// # Safety
///
/// As `wake_waker`.
unsafe fn drop_waker<F, T>(ptr: *const ())
where
    F: Future<Output = Result<T>> + 'static,
    T: 'static,
{
    // SAFETY: the waker owns one strong count of this cell, given back here.
    unsafe { Arc::decrement_strong_count(ptr.cast::<TaskCell<F, T>>()) };
}

/// The running task of this thread, as a raw pointer set for the duration of one poll.
pub(crate) fn current_task_ref(ptr: NonNull<dyn RawTask>) -> TaskRef {
    // SAFETY: `ptr` was set by `enter_task` from a `&dyn RawTask` borrowed from an `Arc` that
    // the runner keeps alive for the whole poll, and it is cleared before that borrow ends;
    // so the pointee is alive and owned by an `Arc`, whose count we may bump.
    let arc = unsafe {
        Arc::increment_strong_count(ptr.as_ptr());
        Arc::from_raw(ptr.as_ptr())
    };
    TaskRef::from_raw(arc)
}

/// Borrows the running task's header through the raw pointer.
pub(crate) fn with_header<R>(ptr: NonNull<dyn RawTask>, f: impl FnOnce(&Header) -> R) -> R {
    // SAFETY: as in `current_task_ref`: the pointee outlives the poll during which the
    // pointer is set, and `f` runs within that poll.
    f(unsafe { ptr.as_ref() }.header())
}

/// Marker giving `Task<T>` the auto traits of `T` for `Send`, while the `Arc<dyn Join<T>>`
/// inside is always `Send + Sync`.
pub(crate) struct SendIfT<T>(PhantomData<*const T>);

impl<T> SendIfT<T> {
    pub(crate) const NEW: SendIfT<T> = SendIfT(PhantomData);
}

// SAFETY: `SendIfT<T>` carries no data; it only makes `Task<T>` as `Send` as `T` is, because a
// join handle moves a `T` to whoever polls it.
unsafe impl<T: Send> Send for SendIfT<T> {}
// SAFETY: `&Task<T>` gives no access to a `T` (only `poll`, through `&mut`, does), so sharing
// the handle is sound whenever moving `T` is.
unsafe impl<T: Send> Sync for SendIfT<T> {}

/// A value only ever reached through `&mut` (or by value): it may be shared by reference
/// between threads whatever `T` is, because a shared reference gives no access to it. The
/// combinators keep children's results in one so that they are `Sync` when `T` is merely
/// `Send`, as API.md promises for every braid future.
pub(crate) struct Exclusive<T>(T);

impl<T> Exclusive<T> {
    pub(crate) const fn new(value: T) -> Exclusive<T> {
        Exclusive(value)
    }

    pub(crate) fn get_mut(&mut self) -> &mut T {
        &mut self.0
    }

    pub(crate) fn into_inner(self) -> T {
        self.0
    }
}

// Never pinned through: `Exclusive` offers no pin projection.
impl<T> Unpin for Exclusive<T> {}

// SAFETY: `Exclusive` has no method taking `&self`, so sharing `&Exclusive<T>` between threads
// shares no access to `T`; moving it (`Send`) is sound exactly when moving `T` is.
unsafe impl<T: Send> Sync for Exclusive<T> {}

/// `TypeId` for types that need not be `'static`. Lifetimes are erased: two types differing
/// only in lifetimes get the same id. `downcast_task_mut` below explains why that is sound
/// for its one use.
fn type_id_of<T: ?Sized>() -> std::any::TypeId {
    trait TypeIdOf {
        fn id(&self) -> std::any::TypeId
        where
            Self: 'static;
    }
    impl<T: ?Sized> TypeIdOf for PhantomData<T> {
        fn id(&self) -> std::any::TypeId
        where
            Self: 'static,
        {
            std::any::TypeId::of::<T>()
        }
    }
    let marker = PhantomData::<T>;
    let object: &dyn TypeIdOf = &marker;
    // SAFETY: only the lifetime bound of the trait object changes, so that `id` (which needs
    // `Self: 'static` only to call `TypeId::of`) may be called; `id` reads nothing through the
    // reference, and `TypeId::of` itself ignores lifetimes.
    let object: &(dyn TypeIdOf + 'static) = unsafe { std::mem::transmute(object) };
    object.id()
}

/// `Some` if `F` is `Task<T>` (asyncio's `wait_for(task, 0)` looks at a task's state without
/// running anything, where a coroutine must never start).
pub(crate) fn downcast_task_mut<F, T>(future: &mut F) -> Option<&mut super::Task<T>>
where
    F: Future<Output = Result<T>>,
{
    if type_id_of::<F>() != type_id_of::<super::Task<T>>() {
        return None;
    }
    // SAFETY: the ids are equal, so `F` is `Task<X>` for some `X` equal to `T` up to
    // lifetimes; and since `Task<X>: Future<Output = Result<X>>` and `F::Output` is
    // `Result<T>`, the associated-type equality makes `X` exactly `T`. So `F` and `Task<T>`
    // are the same type and the cast only renames it.
    Some(unsafe { &mut *(future as *mut F).cast::<super::Task<T>>() })
}

/// Registers socket `fd` with `poller`, edge-triggered for both directions and for the peer
/// closing its side (`EPOLLRDHUP`, which `polling`'s own registration leaves out and the
/// readiness protocol needs: see `io::readiness`), under `key`.
///
/// The one caller is `io::driver`'s `Arm` for an `IoSource`, whose socket is owned by the
/// `IoHandle` next to it; `IoHandle`'s `Drop` runs `IoSource::deregister` (which calls
/// [`poller_delete`]) before the socket field is dropped and the descriptor closed.
pub(crate) fn poller_add_edge(
    poller: &polling::Poller,
    fd: std::os::fd::RawFd,
    key: usize,
) -> std::io::Result<()> {
    use rustix::event::epoll::{self, EventData, EventFlags};
    use std::os::fd::AsFd;
    // SAFETY: the descriptor is open now (its `IoHandle` is alive: we are inside one of its
    // operations), and the borrow ends with this call. Registering it directly in the
    // poller's epoll instance (polling keeps no record of its sources on Linux) leaves the
    // same duty polling's `add` states: per this function's contract, its owner deletes it
    // from this poller before closing it.
    let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let interest = EventFlags::IN | EventFlags::OUT | EventFlags::RDHUP | EventFlags::PRI;
    epoll::add(
        poller.as_fd(),
        socket,
        EventData::new_u64(key as u64),
        interest | EventFlags::ET,
    )
    .map_err(std::io::Error::from)
}

/// Deregisters `fd` from `poller` (see [`poller_add_edge`]).
pub(crate) fn poller_delete(poller: &polling::Poller, fd: std::os::fd::RawFd) {
    // SAFETY: `fd` is still open: it is deleted by its `IoHandle`'s `Drop` before the socket
    // it owns is dropped, so this borrow cannot outlive the descriptor.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    // An error means it was not registered; nothing then can deliver its events.
    let _ = poller.delete(borrowed);
}
