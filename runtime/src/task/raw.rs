//! Task allocations and the counted pointer to them. This is the only module of
//! braid-runtime with `unsafe` code, so it also holds the cells of `call_soon_threadsafe`
//! callbacks ([`new_threadsafe_callback`]), the memory both kinds of cell come from
//! (`cell_memory`), and the two poller calls that `polling` marks unsafe (`poller_add_edge`,
//! `poller_delete`).
//!
//! A task is one heap allocation whose first field is its [`Header`]: a spawned task's
//! [`TaskCell`] (header, output, future), or the main future's stand-in of
//! `run_until_complete` ([`new_main_task`]). [`TaskPtr`] is a thin pointer to the header
//! that owns one count of the header's [`RefCount`]; the header's [`TaskVtable`] holds what
//! depends on the allocation's type (how to poll it, queue it, free it). A task's waker is
//! the same pointer under one waker vtable for all tasks (see [`WAKER_VTABLE`]).
//!
//! Our own pointer rather than `Arc<dyn …>`: a new task's count starts at the number of owners
//! its spawner hands out (join handle, registry, run queue), where an `Arc` starts at one and
//! took an atomic increment for each further owner; and the pointer is one word, where an
//! `Arc<dyn …>` is two in every queue slot.
//!
//! Who may touch which field when:
//!
//! * `future`: only the thread that holds the RUNNING bit of `header.state` (see
//!   `state.rs`), or the spawner before the task is first published to a queue. For a
//!   `spawn_local` task that thread is always its owner loop thread: wakes from elsewhere
//!   are routed to the owner's inbox, never run in place.
//! * `output`: behind its own mutex; written once by the completing runner, taken once by the
//!   join handle. A success is not stored at all once the handle is dropped. A delivering
//!   task's slot holds its deliverer from the spawn until the runner takes it to finish.
//! * `header`: its own atomics and mutexes.

use super::join::Watch;
use super::state::{IdleAction, RunAction, WakeAction};
use super::{Header, TaskId, TaskRef};
use crate::context;
use crate::event_loop::{HandleState, LoopShared};
use crate::scheduler::RuntimeShared;
use braid_bridge::sync::{Mutex, UnsafeCell};
use braid_bridge::{Error, Result};
use std::alloc::Layout;
use std::future::Future;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::Arc;
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

/// Drops the value in `slot`, if any, where it lies, and leaves `None` there, even if its
/// destructor panics (the slot must not be dropped twice).
///
/// # Safety
///
/// `slot` points to a live `Option<F>` that nobody else touches during this call.
unsafe fn drop_pinned_in_place<F>(slot: *mut Option<F>) {
    /// Marks the slot empty once the value is gone, without dropping it again.
    struct MarkEmpty<F>(*mut Option<F>);
    impl<F> Drop for MarkEmpty<F> {
        fn drop(&mut self) {
            // SAFETY: the slot is live and ours (the function's contract); what it held was
            // just dropped in place, so it is overwritten without a drop.
            unsafe { std::ptr::write(self.0, None) }
        }
    }
    // SAFETY: live and ours (the contract).
    if let Some(value) = unsafe { (*slot).as_mut() } {
        let _mark = MarkEmpty(slot);
        // SAFETY: dropped once, here; `_mark` then overwrites the slot without dropping.
        unsafe { std::ptr::drop_in_place(value as *mut F) };
    }
}

/// What a task does that depends on the type of its allocation: one static table per type,
/// pointed to by its header.
pub(crate) struct TaskVtable {
    /// Polls the task once (or finishes it, if aborted). Called by a loop after popping it.
    run: fn(TaskPtr),
    /// Puts the task in the right queue (the runtime's, or its owner loop's).
    schedule: fn(TaskPtr),
    /// A wake through the state machine, queueing the task if that is due.
    wake: fn(TaskPtr),
    /// As `wake`, keeping the caller's count.
    wake_by_ref: fn(&TaskPtr),
    /// Shutdown only: if the task is idle, drops its future and finishes it with the error.
    /// False if it is running right now or already finished.
    force_finish: fn(TaskPtr, Error) -> bool,
    /// Shutdown only, for a task it could not finish (running on a stuck loop): a delivering
    /// task's deliverer gets the error now, so that its `ConcurrentFuture` settles; the
    /// output the task may still produce is dropped. Nothing for other tasks.
    give_up_delivery: fn(&TaskPtr, Error),
    /// The stored error, if the task failed (not cancelled) and its output is still there.
    stored_failure: fn(&TaskPtr) -> Option<Error>,
    /// Drops what the allocation holds and frees it.
    ///
    /// Safety: the pointer is an allocation of this table's type, and the last count of it
    /// was just given back (nobody can reach it any more).
    dealloc: unsafe fn(NonNull<Header>),
}

/// A counted pointer to a task allocation (see the module docs): what the run queues, the
/// registry, wakers and task handles hold.
pub(crate) struct TaskPtr {
    header: NonNull<Header>,
}

// SAFETY: a `TaskPtr` gives shared access to the header, whose mutable parts are atomics
// and mutexes (the rest, the id and the runtime and home `Arc`s, never change), and through
// the vtable to the rest of the allocation under the rules in the module docs (the future
// only to the RUNNING holder, on its owner loop for a local task; the output behind its
// mutex). Whoever gives back the last count drops what is left of the cell, on any thread:
// a future never finished (only at shutdown, when loops have stopped polling), an output
// never taken, or a deliverer never called (its `Completer`'s drop settles the
// `ConcurrentFuture` with BrokenExecutor), as the `Arc` it replaces did. `Task<T>` adds
// `T`'s own bounds (see `SendIfT`).
unsafe impl Send for TaskPtr {}
// SAFETY: as above.
unsafe impl Sync for TaskPtr {}

impl TaskPtr {
    /// Takes over one count of the task at `header`.
    ///
    /// # Safety
    ///
    /// `header` is the header of a live task allocation, and the caller hands the new
    /// pointer one count it owns (a waker's, or one of the counts a new task starts with).
    unsafe fn from_counted(header: NonNull<Header>) -> TaskPtr {
        TaskPtr { header }
    }

    /// A new counted pointer to the task at `header`, which the caller keeps alive.
    ///
    /// # Safety
    ///
    /// `header` is the header of a live task allocation, and stays live for this call.
    unsafe fn from_borrowed(header: NonNull<Header>) -> TaskPtr {
        // SAFETY: live for this call (the caller's contract); once incremented, the count
        // is ours.
        unsafe { header.as_ref() }.refs.increment();
        TaskPtr { header }
    }

    /// The task's header.
    #[inline]
    pub(crate) fn header(&self) -> &Header {
        // SAFETY: our count keeps the allocation, and so its header, alive while `self` is
        // borrowed.
        unsafe { self.header.as_ref() }
    }

    /// The header's address: identifies the task while any pointer to it lives.
    pub(crate) fn as_non_null(&self) -> NonNull<Header> {
        self.header
    }

    /// Polls the task once (or finishes it, if aborted).
    pub(crate) fn run(self) {
        (self.header().vtable.run)(self)
    }

    /// Puts the task in the right queue.
    pub(crate) fn schedule(self) {
        (self.header().vtable.schedule)(self)
    }

    /// A wake through the state machine, consuming this count (a waker's `wake`).
    pub(crate) fn wake_task(self) {
        (self.header().vtable.wake)(self)
    }

    /// As [`wake_task`](TaskPtr::wake_task), keeping this count (a count of its own is
    /// taken only if the task is to be queued).
    pub(crate) fn wake_by_ref(&self) {
        (self.header().vtable.wake_by_ref)(self)
    }

    /// Shutdown only: if the task is idle, drops its future and finishes it with `error`.
    /// Returns false if it is running right now or already finished.
    pub(crate) fn force_finish(self, error: Error) -> bool {
        (self.header().vtable.force_finish)(self, error)
    }

    /// Shutdown only, for a task `force_finish` could not finish (running on a stuck loop):
    /// whoever waits for it stops waiting for the loop. If its output goes to a deliverer
    /// (`run_coroutine_threadsafe`), that gets `error` now; otherwise a joiner of its handle
    /// is woken and gets [`given_up_error`] (and one that looks later gets it at once). What
    /// the task returns later is dropped, by `finish` or with the cell.
    pub(crate) fn give_up(&self, error: Error) {
        let join = &self.header().join;
        if join.delivers() {
            (self.header().vtable.give_up_delivery)(self, error)
        } else if let Some(waker) = join.give_up() {
            waker.wake();
        }
    }

    /// The stored error, if the task failed (not cancelled) and its output is still there.
    pub(crate) fn stored_failure(&self) -> Option<Error> {
        (self.header().vtable.stored_failure)(self)
    }

    /// A waker of this task, owning a count of its own.
    pub(crate) fn waker(&self) -> Waker {
        let ptr = ManuallyDrop::new(self.clone()).header.as_ptr() as *const ();
        // SAFETY: `ptr` is a live task header whose count the waker now owns, which is
        // what `WAKER_VTABLE`'s functions require.
        unsafe { Waker::from_raw(RawWaker::new(ptr, &WAKER_VTABLE)) }
    }

    /// The current count (for tests).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn ref_count(&self) -> usize {
        self.header().refs.get()
    }
}

impl Clone for TaskPtr {
    #[inline]
    fn clone(&self) -> TaskPtr {
        self.header().refs.increment();
        TaskPtr {
            header: self.header,
        }
    }
}

impl Drop for TaskPtr {
    #[inline]
    fn drop(&mut self) {
        let dealloc = self.header().vtable.dealloc;
        if self.header().refs.decrement() {
            // SAFETY: that was the last count, and the vtable is the allocation's own (set
            // when it was made), as `dealloc` requires.
            unsafe { dealloc(self.header) }
        }
    }
}

/// Where a finished task's output goes instead of the join handle (run_coroutine_threadsafe
/// hands it to a `ConcurrentFuture`).
pub(crate) type Deliver<T> = Box<dyn FnOnce(Result<T>) + Send>;

/// A task's output slot.
enum Output<T> {
    /// Not stored yet, or taken.
    Empty,
    /// Where the output goes when the task finishes (`JoinState::delivers`). Boxed once more
    /// to take one word: a task cell's every byte is written at each spawn, and this is what
    /// brought a tiny task's cell within 192 bytes, three cache lines (`benchmarks/NOTES.md`).
    Deliver(Box<Deliver<T>>),
    /// The output, for the join handle.
    Ready(Result<T>),
}

/// Takes a delivering task's deliverer out of its output slot, under the slot's lock: of the
/// runner finishing the task and a shutdown giving its future up (`give_up_delivery`), one
/// gets it and the other `None` (loom model `loom_a_deliverer_is_called_once_*`).
fn take_deliverer<T>(slot: &Mutex<Output<T>>) -> Option<Box<Deliver<T>>> {
    match std::mem::replace(&mut *slot.lock(), Output::Empty) {
        Output::Deliver(deliver) => Some(deliver),
        _ => None,
    }
}

/// The part of a spawned task that its join handle reads: the header and the output. First
/// in every `TaskCell<_, T>`, so a join handle needs to know `T` but not the future's type.
#[repr(C)]
struct JoinCell<T> {
    header: Header,
    output: Mutex<Output<T>>,
}

/// The size of the cell a task running `future` takes (the tests' check on cell sizes).
#[cfg(all(test, not(loom)))]
pub(crate) fn cell_size_of<F: Future<Output = Result<T>>, T>(_future: &F) -> usize {
    std::mem::size_of::<TaskCell<F, T>>()
}

/// A spawned task's allocation.
#[repr(C)]
pub(crate) struct TaskCell<F, T> {
    head: JoinCell<T>,
    /// The future, until the task finishes: only the holder of the state's RUNNING bit
    /// touches it.
    future: UnsafeCell<Option<F>>,
}

impl<F, T> TaskCell<F, T>
where
    F: Future<Output = Result<T>> + 'static,
    T: 'static,
{
    const VTABLE: &'static TaskVtable = &TaskVtable {
        run: Self::run,
        schedule: crate::scheduler::schedule,
        wake: Self::wake,
        wake_by_ref: Self::wake_by_ref,
        force_finish: Self::force_finish,
        give_up_delivery: Self::give_up_delivery,
        stored_failure: Self::stored_failure,
        dealloc: Self::dealloc,
    };

    /// Allocates a task of `rt` (pinned to `home` if given, unnamed) and returns its join
    /// handle's pointer and `OWNERS` more counted pointers: the count starts at `OWNERS + 1`,
    /// with no atomic operation for any of them.
    pub(crate) fn allocate<const OWNERS: usize>(
        id: TaskId,
        rt: Arc<RuntimeShared>,
        home: Option<Arc<LoopShared>>,
        future: F,
        deliver: Option<Deliver<T>>,
    ) -> (JoinPtr<T>, [TaskPtr; OWNERS]) {
        // Made before the cell: with a call that may unwind (the box's allocation) among
        // its fields, the compiler builds the cell on the stack and copies it in.
        let delivers = deliver.is_some();
        let output = match deliver {
            Some(deliver) => Output::Deliver(Box::new(deliver)),
            None => Output::Empty,
        };
        // Written straight into the allocation: building the cell as a value and moving it
        // in copies it twice (a tenth of a tiny task's instructions).
        let memory = cell_memory::allocate(Layout::new::<Self>()).cast::<Self>();
        // SAFETY: `allocate` returned memory fit for a `Self` (its layout's size and
        // alignment), owned by nobody else.
        unsafe {
            memory.as_ptr().write(TaskCell {
                head: JoinCell {
                    header: Header::new(Self::VTABLE, OWNERS + 1, id, rt, home),
                    output: Mutex::new(output),
                },
                future: UnsafeCell::new(Some(future)),
            })
        };
        let header = memory.cast::<Header>();
        if delivers {
            // SAFETY: just written above, the header first (as below); no pointer to the
            // cell has been handed out yet, so this borrow is the only one.
            unsafe { &mut (*header.as_ptr()).join }.mark_delivering();
        }
        // SAFETY: `TaskCell` and `JoinCell` are `repr(C)` with the header first, so the cast
        // above points at it; the count was made `OWNERS + 1`, one for each pointer below.
        let ptrs = std::array::from_fn(|_| unsafe { TaskPtr::from_counted(header) });
        let join = JoinPtr {
            // SAFETY: as above.
            task: unsafe { TaskPtr::from_counted(header) },
            _output: PhantomData,
        };
        (join, ptrs)
    }

    /// The cell `me` points to.
    fn cell(me: &TaskPtr) -> &Self {
        // SAFETY: these functions are reached only through `Self::VTABLE`, which only cells
        // of this type carry; `repr(C)` puts the header first, so the header's address is
        // the cell's; `me`'s count keeps it alive while borrowed.
        unsafe { me.header.cast::<Self>().as_ref() }
    }

    /// Drops the future and stores `output`, then publishes completion.
    /// Must be called by the RUNNING holder.
    fn finish(me: &TaskPtr, output: Result<T>) {
        let cell = Self::cell(me);
        let header = &cell.head.header;
        // Dropped where it lies: it was pinned there by its first poll, and a future that
        // borrows its own locals across an await (a condition's wait borrowing its guard)
        // runs its destructors through those borrows. Moved out first, it dropped through
        // dangling pointers (a segfault when aborting such a task). A destructor may panic
        // too; it must not take the loop down.
        // Its await registrations then know their task's future is ending (`abandon`); only
        // marked when one may matter, as this runs at every task's end.
        let dropping = header
            .cancel
            .may_hold_registrations()
            .then(|| context::dropping_future_of(me.header));
        cell.future.with_mut(|slot| {
            header.drop_reporting_panics(|| {
                // SAFETY: we hold RUNNING (the caller's contract), so nobody else touches the
                // future; the cell keeps it alive.
                unsafe { drop_pinned_in_place(slot) }
            })
        });
        drop(dropping);
        let cancelled = matches!(&output, Err(e) if e.is_cancelled());
        let failed = matches!(&output, Err(e) if !e.is_cancelled());
        let failure = match &output {
            Err(e) if !e.is_cancelled() => Some(e.clone()),
            _ => None,
        };
        if header.join.delivers() {
            match take_deliverer(&cell.head.output) {
                Some(deliver) => deliver(output),
                // A shutdown that timed out on this task's loop gave its future up
                // (`give_up_delivery`): nobody waits for the output any more.
                None => header.drop_reporting_panics(move || drop(output)),
            }
        } else if output.is_ok() && header.handle_dropped() {
            // Once the handle is gone a success can never be taken, so it is dropped here
            // rather than stored: a lock less per detached task. A failure is kept, for
            // `stored_failure` (a done callback added later through a `TaskRef` reports it).
            header.drop_reporting_panics(move || drop(output));
        } else {
            *cell.head.output.lock() = Output::Ready(output);
        }
        header.complete(cancelled, failed);
        header.after_complete(&|| TaskRef::from_raw(me.clone()), failure);
    }

    fn run(me: TaskPtr) {
        let cell = Self::cell(&me);
        let header = &cell.head.header;
        match header.state.start_run() {
            RunAction::Skip => return,
            RunAction::Abort => {
                Self::finish(&me, Err(Error::cancelled(Some("aborted".to_owned()))));
                return;
            }
            RunAction::Poll => {}
        }
        let step = header.cancel.begin_step(header.cancel.first_step());
        if step.cancel_before_start {
            Self::finish(&me, Err(step.error_if_cancelled()));
            return;
        }
        // SAFETY: we hold RUNNING: the future is ours until we give it back below.
        let future = cell.future.with_mut(|future| unsafe { &mut *future });
        let Some(future) = future.as_mut() else {
            debug_assert!(false, "a running task without a future");
            return;
        };
        // The poll borrows the runner's count for its waker: a future that keeps the waker
        // clones it, taking a count of its own. Never dropped, so it never gives back the
        // count it did not take.
        // SAFETY: `me` keeps the task alive for the whole poll, as `WAKER_VTABLE` requires.
        let waker = ManuallyDrop::new(unsafe {
            Waker::from_raw(RawWaker::new(
                me.header.as_ptr() as *const (),
                &WAKER_VTABLE,
            ))
        });
        let mut cx = Context::from_waker(&waker);
        let guard = context::enter_task(me.header);
        // SAFETY: the future lives in the task's heap allocation and is never moved out
        // until it is dropped in place (in `finish`).
        let future = unsafe { Pin::new_unchecked(future) };
        let polled = catch_unwind(AssertUnwindSafe(|| future.poll(&mut cx)));
        drop(guard);
        match polled {
            Ok(Poll::Pending) => match header.state.end_poll_pending() {
                IdleAction::Idle => {}
                IdleAction::Reschedule => crate::scheduler::schedule(me),
            },
            Ok(Poll::Ready(output)) => {
                Self::finish(&me, header.cancel.step_outcome(&step, output));
            }
            Err(payload) => Self::finish(&me, Err(Error::from_panic(payload))),
        }
    }

    fn wake(me: TaskPtr) {
        if me.header().state.wake() == WakeAction::Schedule {
            crate::scheduler::schedule(me);
        }
    }

    fn wake_by_ref(me: &TaskPtr) {
        // A count of our own only when the task is to be queued.
        if me.header().state.wake() == WakeAction::Schedule {
            crate::scheduler::schedule(me.clone());
        }
    }

    fn force_finish(me: TaskPtr, error: Error) -> bool {
        if !me.header().state.try_claim_idle() {
            return false;
        }
        // We hold RUNNING now, as `finish` requires.
        Self::finish(&me, Err(error));
        true
    }

    fn give_up_delivery(me: &TaskPtr, error: Error) {
        let cell = Self::cell(me);
        if !cell.head.header.join.delivers() {
            return;
        }
        // `finish` takes it the same way: exactly one of the two calls it, and `finish`
        // then drops the output it has no deliverer for.
        if let Some(deliver) = take_deliverer(&cell.head.output) {
            deliver(Err(error));
        }
    }

    fn stored_failure(me: &TaskPtr) -> Option<Error> {
        Self::cell(me).head.stored_failure()
    }

    /// `TaskVtable::dealloc`.
    ///
    /// # Safety
    ///
    /// As `TaskVtable::dealloc`: `header` heads a `TaskCell<F, T>` nobody can reach any more.
    unsafe fn dealloc(header: NonNull<Header>) {
        let cell = header.cast::<Self>();
        // Gives the memory back once the value is dropped, even if a destructor panics.
        // SAFETY: from `cell_memory::allocate` with this layout (in `allocate`); the guard
        // drops after the fields below, and nothing touches the memory after that.
        let _memory =
            unsafe { cell_memory::ReleaseOnDrop::new(cell.cast(), Layout::new::<Self>()) };
        let cell = cell.as_ptr();
        // The output and the future hold the user's values, and the last count may go
        // anywhere: with a handle on the user's thread, or with the registry's in a loop's
        // sweep or a spawn's. Each is dropped with a panic caught and reported, as `finish`
        // drops the future and a detached task's success, before the header, which names the
        // runtime whose exception handler hears of it.
        // For the three drops below: `allocate` wrote a `Self` there, whose header is at its
        // start (`repr(C)`); the last count is gone, so this is the only access, and each
        // field is dropped once. The header is borrowed apart from the other two fields, and
        // dropped last, after the borrow's last use. Their destructors may drop other tasks'
        // last counts: no list is borrowed meanwhile (the release comes after).
        // SAFETY: see above.
        let header = unsafe { &(*cell).head.header };
        // SAFETY: see above.
        header.drop_reporting_panics(|| unsafe {
            std::ptr::drop_in_place(std::ptr::addr_of_mut!((*cell).head.output))
        });
        // SAFETY: see above.
        header.drop_reporting_panics(|| unsafe {
            std::ptr::drop_in_place(std::ptr::addr_of_mut!((*cell).future))
        });
        // The header holds none of the user's values once the task has finished: its
        // joiner's waker and done callbacks are taken at completion.
        // SAFETY: see above.
        unsafe { std::ptr::drop_in_place(std::ptr::addr_of_mut!((*cell).head.header)) };
    }
}

impl<T> JoinCell<T> {
    fn stored_failure(&self) -> Option<Error> {
        match &*self.output.lock() {
            Output::Ready(Err(e)) if !e.is_cancelled() => Some(e.clone()),
            _ => None,
        }
    }
}

/// A task pointer that knows the type of the task's output: the join handle's.
pub(crate) struct JoinPtr<T> {
    task: TaskPtr,
    /// Invariant in `T`, as the `Arc<dyn Join<T>>` this replaced made `Task<T>`.
    _output: PhantomData<fn(T) -> T>,
}

impl<T> JoinPtr<T> {
    /// The untyped pointer.
    pub(crate) fn task(&self) -> &TaskPtr {
        &self.task
    }

    fn cell(&self) -> &JoinCell<T> {
        // SAFETY: a `JoinPtr<T>` is only made by `TaskCell::<_, T>::allocate`, for a cell that
        // begins with a `JoinCell<T>` (`repr(C)`); our count keeps it alive.
        unsafe { self.task.header.cast::<JoinCell<T>>().as_ref() }
    }

    /// Registers the joiner's waker, or takes the output once the task has completed.
    pub(crate) fn poll_join(&self, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let cell = self.cell();
        match cell.header.watch(cx.waker()) {
            Watch::Completed => {}
            Watch::Pending => return Poll::Pending,
            Watch::GivenUp => return Poll::Ready(Err(given_up_error())),
        }
        // Taken in a statement of its own: the guard is gone before any arm runs.
        let slot = std::mem::replace(&mut *cell.output.lock(), Output::Empty);
        match slot {
            Output::Ready(output) => Poll::Ready(output),
            // Read only once the task completed, when `finish` has emptied a delivering
            // task's slot: a deliverer here would be dropped undelivered.
            Output::Deliver(deliver) => {
                debug_assert!(false, "a completed task's deliverer not taken");
                *cell.output.lock() = Output::Deliver(deliver);
                Poll::Ready(Err(Error::new(
                    braid_bridge::ErrorKind::InvalidState,
                    "the task's result goes to its deliverer",
                )))
            }
            Output::Empty => Poll::Ready(Err(Error::new(
                braid_bridge::ErrorKind::InvalidState,
                "the task's result was already taken",
            ))),
        }
    }

    /// The stored error, if the task failed (not cancelled) and nobody took the output.
    pub(crate) fn unretrieved_error(&self) -> Option<Error> {
        self.cell().stored_failure()
    }
}

/// What the joiner of a task given up by a timed-out shutdown gets (`TaskPtr::give_up`): the
/// same as the joiner of a task the shutdown finished.
fn given_up_error() -> Error {
    Error::cancelled(Some("the runtime shut down".to_owned()))
}

/// Memory for task and callback cells: per-thread free lists by size, in front of the global
/// allocator, and a process-wide depot through which threads hand each other free cells.
///
/// A spawned task's cell is freed by whoever gives back its last count. With the registry
/// routing finished tasks back to the shard that spawned them (see `registry`), that is
/// mostly the spawning thread, so a thread that spawns many tasks gets the cells of the
/// ones that finished back from its own list: no call into the allocator, and none of
/// glibc's trimming of the heap top that made the next burst of spawns fault its pages in
/// again (`benchmarks/NOTES.md`). Each list keeps at most [`KEEP_BYTES_PER_CLASS`] of cells
/// (1 024 of a tiny task's, whose 192-byte blocks each take 256 bytes with the line they are
/// aligned in), and only on a thread that has allocated cells of that class.
///
/// Cells of a class a thread never allocates (a loop running the callbacks that foreign
/// threads sent it) go into an outgoing *magazine* of [`MAGAZINE`] cells, and a full magazine
/// into the [`Depot`], where a thread whose own list ran dry takes a whole magazine before it
/// asks the allocator. One lock per 64 cells each way, where glibc took its arena lock for
/// every cell freed by a thread that did not allocate it. The depot keeps at most
/// [`DEPOT_BYTES_PER_CLASS`] per class; past that, cells go back to the allocator, as do the
/// cells a thread frees beyond its own budget of a class it allocates. A thread that exits
/// hands its lists to the depot.
///
/// Whether a thread allocates a class is decided by its first allocation of it, for good: a
/// loop that once sends itself a callback of the same size class as the callbacks it runs for
/// foreign threads keeps up to its budget of them and frees the rest to the allocator, as for
/// tasks, instead of passing them on.
///
/// Under loom no cells are kept (the models' cells come from the allocator and go back to
/// it): a thread-local cache is no synchronisation to check. The depot's hand-over is
/// (`loom_a_magazine_*`).
mod cell_memory {
    // Under loom only the depot runs (in its model); the lists keep nothing.
    #![cfg_attr(loom, allow(dead_code))]

    use braid_bridge::sync::atomic::{AtomicUsize, Ordering};
    use braid_bridge::sync::Mutex;
    use crossbeam_utils::CachePadded;
    use std::alloc::Layout;
    use std::ptr::NonNull;

    /// Cells are kept by size, rounded up to a multiple of this.
    const CLASS_BYTES: usize = 64;
    /// Size classes kept: cells up to 1 KiB. Larger ones come from the allocator each time.
    const CLASSES: usize = 16;
    /// The alignment of kept blocks: a cache line, so that no two cells share one. Blocks
    /// that started where the allocator put them (16 bytes apart from a line at random)
    /// shared a line with their neighbours, the next task's counts and state beside the
    /// last one's future, written by different loops (`benchmarks/NOTES.md`). A cell that
    /// needs more alignment is not kept.
    const ALIGN: usize = 64;
    /// The alignment a block's allocation asks for: a word's, which every allocator gives
    /// through its plain path (glibc's `malloc`), where a larger one may take a slower one.
    const RAW_ALIGN: usize = std::mem::align_of::<usize>();
    // The distance from an allocation's start to its block, 1 to `ALIGN`, fits the byte
    // kept before the block.
    const _: () = assert!(ALIGN <= u8::MAX as usize && RAW_ALIGN <= ALIGN);
    /// At most this many bytes of free blocks (allocations included, see [`block_bytes`])
    /// per size class and thread, so that a thread that once spawned a million tasks keeps
    /// little of them. With one loop, which holds all of `spawn_many_local`'s 10 000 cells
    /// at once, 4 MiB took its driver from 2.6 to 2.2 ms; with two loops, as benched, it
    /// made no difference, and was not kept (`benchmarks/NOTES.md`).
    pub(super) const KEEP_BYTES_PER_CLASS: usize = 256 * 1024;
    /// Cells handed to and taken from the depot at a time.
    pub(super) const MAGAZINE: usize = 64;
    /// At most this many bytes of free cells per size class in the depot, for the process.
    pub(super) const DEPOT_BYTES_PER_CLASS: usize = 256 * 1024;

    /// The size of a block of `class`.
    const fn block_size(class: usize) -> usize {
        (class + 1) * CLASS_BYTES
    }

    /// What a block of `class` takes from the allocator: its size and a line to align it
    /// in (see [`fresh_block`]).
    const fn block_bytes(class: usize) -> usize {
        block_size(class) + ALIGN
    }

    /// How many blocks of `class` make `bytes`.
    pub(super) const fn cells_in(bytes: usize, class: usize) -> usize {
        bytes / block_bytes(class)
    }

    /// The size class of `layout`, if cells of that layout are kept.
    pub(super) fn class_of(layout: Layout) -> Option<usize> {
        if cfg!(loom) || layout.align() > ALIGN || layout.size() > CLASSES * CLASS_BYTES {
            return None;
        }
        Some(layout.size().div_ceil(CLASS_BYTES).max(1) - 1)
    }

    /// What a block of `class` offers: its size, aligned to [`ALIGN`] (the tests' check).
    #[cfg(test)]
    pub(super) fn class_layout(class: usize) -> Layout {
        match Layout::from_size_align(block_size(class), ALIGN) {
            Ok(layout) => layout,
            Err(_) => unreachable!("at most 1 KiB, aligned to 64"),
        }
    }

    /// What a block of `class` takes from the allocator: a line more, to align it in.
    fn raw_layout(class: usize) -> Layout {
        match Layout::from_size_align(block_bytes(class), RAW_ALIGN) {
            Ok(layout) => layout,
            Err(_) => unreachable!("at most 1 KiB and a line, aligned to a word"),
        }
    }

    /// Memory for a cell of `layout`, not kept in any list, from the global allocator.
    fn fresh(layout: Layout) -> NonNull<u8> {
        // SAFETY: a cell's layout is never zero-sized (it holds a header).
        let block = unsafe { std::alloc::alloc(layout) };
        NonNull::new(block).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
    }

    /// A new block of `class`, from the global allocator: the first [`ALIGN`]-aligned
    /// address past the allocation's start, with its distance from that start kept in the
    /// byte just before it (for [`free_block`]). Asking the allocator for the alignment
    /// itself (glibc's `memalign`) made `timers`, whose 100 000 cells mostly come from it,
    /// 9% slower.
    pub(super) fn fresh_block(class: usize) -> NonNull<u8> {
        let raw = fresh(raw_layout(class));
        let offset = ALIGN - raw.as_ptr() as usize % ALIGN;
        // SAFETY: `offset` is 1 to `ALIGN` (`RAW_ALIGN` to `ALIGN`, as the allocator aligns
        // to `RAW_ALIGN`), so the block and the byte before it lie inside the allocation,
        // which is `ALIGN` bytes longer than the block.
        unsafe {
            let block = raw.add(offset);
            block.sub(1).write(offset as u8);
            block
        }
    }

    /// Gives a block of `class` back to the global allocator.
    ///
    /// # Safety
    ///
    /// `block` came from [`fresh_block`]`(class)`, holds no value, and is not used again.
    pub(super) unsafe fn free_block(block: NonNull<u8>, class: usize) {
        // SAFETY: `fresh_block` wrote the block's offset into the allocation in the byte
        // before it, a byte no cell uses; going back by it gives the allocation's start,
        // which came from the allocator with `raw_layout(class)`.
        unsafe {
            let offset = block.sub(1).read() as usize;
            std::alloc::dealloc(block.sub(offset).as_ptr(), raw_layout(class));
        }
    }

    /// Gives free blocks of `class` back to the allocator.
    fn free_all(blocks: &mut Vec<NonNull<u8>>, class: usize) {
        for block in blocks.drain(..) {
            // SAFETY: every block in a list, magazine or the depot came from
            // `fresh_block(class)` and holds no value.
            unsafe { free_block(block, class) };
        }
    }

    /// Free blocks of one size class on their way between threads.
    pub(super) struct Magazine(Vec<NonNull<u8>>);

    // SAFETY: the blocks are raw memory holding no value, owned by whoever holds the
    // magazine; nothing else points into them.
    unsafe impl Send for Magazine {}

    #[cfg(all(test, loom))]
    impl Magazine {
        pub(super) fn from_blocks_for_model(blocks: Vec<NonNull<u8>>) -> Magazine {
            Magazine(blocks)
        }

        pub(super) fn blocks_for_model(&self) -> &[NonNull<u8>] {
            &self.0
        }

        pub(super) fn into_blocks_for_model(self) -> Vec<NonNull<u8>> {
            self.0
        }
    }

    /// One size class's full magazines.
    struct DepotClass {
        magazines: Mutex<Vec<Magazine>>,
        /// Blocks in `magazines`: read without the lock, so that a thread finding its list
        /// empty with nothing here (a burst of spawns) pays a load, not a lock.
        blocks: AtomicUsize,
    }

    /// Free cells handed between threads (see the module docs).
    pub(super) struct Depot {
        /// A cache line each: a thread whose list of one class ran dry reads that class's
        /// `blocks` at every allocation, and should not miss on another class's lock.
        classes: [CachePadded<DepotClass>; CLASSES],
    }

    impl Depot {
        #[cfg(not(loom))]
        pub(super) const fn new() -> Depot {
            Depot {
                classes: [const {
                    CachePadded::new(DepotClass {
                        magazines: Mutex::new(Vec::new()),
                        blocks: AtomicUsize::new(0),
                    })
                }; CLASSES],
            }
        }

        /// loom's mutexes and atomics are not `const`: a model builds its depot.
        #[cfg(loom)]
        pub(super) fn new() -> Depot {
            Depot {
                classes: std::array::from_fn(|_| {
                    CachePadded::new(DepotClass {
                        magazines: Mutex::new(Vec::new()),
                        blocks: AtomicUsize::new(0),
                    })
                }),
            }
        }

        /// Keeps `magazine` of `class`, or gives it back if that would pass the budget.
        pub(super) fn give(&self, class: usize, magazine: Magazine) -> Result<(), Magazine> {
            let depot = &self.classes[class];
            let mut magazines = depot.magazines.lock();
            let blocks = depot.blocks.load(Ordering::Relaxed) + magazine.0.len();
            if blocks > cells_in(DEPOT_BYTES_PER_CLASS, class) {
                return Err(magazine);
            }
            magazines.push(magazine);
            // Changed only under the lock, so this is exact whenever the lock is free.
            depot.blocks.store(blocks, Ordering::Relaxed);
            Ok(())
        }

        /// A magazine of `class`, if any waits.
        pub(super) fn take(&self, class: usize) -> Option<Magazine> {
            let depot = &self.classes[class];
            // Only a hint: the lock's acquire is what orders the blocks' earlier use (the
            // freeing thread's) before ours.
            if depot.blocks.load(Ordering::Relaxed) == 0 {
                return None;
            }
            let mut magazines = depot.magazines.lock();
            let magazine = magazines.pop()?;
            let left = depot.blocks.load(Ordering::Relaxed) - magazine.0.len();
            depot.blocks.store(left, Ordering::Relaxed);
            Some(magazine)
        }

        /// Blocks of `class` waiting here.
        #[cfg(test)]
        pub(super) fn blocks(&self, class: usize) -> usize {
            self.classes[class].blocks.load(Ordering::Relaxed)
        }
    }

    impl Drop for Depot {
        fn drop(&mut self) {
            for (class, depot) in self.classes.iter_mut().enumerate() {
                for mut magazine in depot.magazines.lock().drain(..) {
                    free_all(&mut magazine.0, class);
                }
            }
        }
    }

    /// The process's depot. (A model of loom's builds its own: see `loom_tests`.)
    #[cfg(not(loom))]
    static DEPOT: Depot = Depot::new();

    /// One thread's free cells.
    pub(super) struct FreeLists {
        /// Kept for this thread's next cells, the last freed first (the hottest in cache).
        lists: [Vec<NonNull<u8>>; CLASSES],
        /// Not kept here: filling up to a magazine for the depot.
        outgoing: [Vec<NonNull<u8>>; CLASSES],
        /// This thread has allocated a cell of the class: only then does it keep freed ones
        /// (a thread that only ever drops tasks' last counts would keep cells it never uses).
        allocates: [bool; CLASSES],
    }

    impl FreeLists {
        pub(super) const fn new() -> FreeLists {
            FreeLists {
                lists: [const { Vec::new() }; CLASSES],
                outgoing: [const { Vec::new() }; CLASSES],
                allocates: [false; CLASSES],
            }
        }

        /// A free block of `class`: this thread's, else a magazine's from `depot`; `None`
        /// if neither has one (then the allocator serves).
        pub(super) fn allocate(&mut self, class: usize, depot: &Depot) -> Option<NonNull<u8>> {
            self.allocates[class] = true;
            if let Some(block) = self.lists[class].pop() {
                return Some(block);
            }
            if let Some(block) = self.outgoing[class].pop() {
                return Some(block);
            }
            let Magazine(blocks) = depot.take(class)?;
            // Our list is empty: the magazine becomes it.
            self.lists[class] = blocks;
            self.lists[class].pop()
        }

        /// Takes back a free `block` of `class`: kept here, passed on to `depot`, or freed.
        pub(super) fn release(&mut self, block: NonNull<u8>, class: usize, depot: &Depot) {
            if self.allocates[class] {
                // A product, not `cells_in`'s quotient: this runs for every freed cell.
                if (self.lists[class].len() + 1) * block_bytes(class) <= KEEP_BYTES_PER_CLASS {
                    self.lists[class].push(block);
                } else {
                    // Not to the depot: two loops that both spawn would trade their surplus
                    // through it, each getting cells the other's core last wrote
                    // (`spawn_many_local` 2.5 -> 2.9 ms, `benchmarks/NOTES.md`).
                    // SAFETY: a block of this class came from `fresh_block(class)` and holds
                    // no value (the caller's contract).
                    unsafe { free_block(block, class) };
                }
                return;
            }
            let outgoing = &mut self.outgoing[class];
            if outgoing.capacity() == 0 {
                outgoing.reserve_exact(MAGAZINE);
            }
            outgoing.push(block);
            if outgoing.len() >= MAGAZINE {
                let full = Magazine(std::mem::take(outgoing));
                if let Err(Magazine(mut refused)) = depot.give(class, full) {
                    free_all(&mut refused, class);
                    // Reuse the emptied vector for the next magazine.
                    *outgoing = refused;
                }
            }
        }

        /// Everything this thread holds goes to `depot`, in magazines, as far as its budget
        /// takes them; the rest to the allocator (a thread exits).
        pub(super) fn hand_over(&mut self, depot: &Depot) {
            for class in 0..CLASSES {
                let mut blocks = std::mem::take(&mut self.lists[class]);
                blocks.append(&mut self.outgoing[class]);
                while !blocks.is_empty() {
                    let rest = blocks.split_off(blocks.len().saturating_sub(MAGAZINE));
                    if let Err(Magazine(mut refused)) = depot.give(class, Magazine(rest)) {
                        free_all(&mut refused, class);
                        free_all(&mut blocks, class);
                    }
                }
            }
        }

        /// How many free blocks of `class` this thread keeps for itself (for tests).
        #[cfg(test)]
        pub(super) fn kept(&self, class: usize) -> usize {
            self.lists[class].len()
        }

        /// How many wait in the outgoing magazine of `class` (for tests).
        #[cfg(test)]
        pub(super) fn outgoing(&self, class: usize) -> usize {
            self.outgoing[class].len()
        }
    }

    impl Drop for FreeLists {
        fn drop(&mut self) {
            for class in 0..CLASSES {
                free_all(&mut self.lists[class], class);
                free_all(&mut self.outgoing[class], class);
            }
        }
    }

    /// A thread's lists, handed to the depot when the thread exits.
    #[cfg(not(loom))]
    struct ThreadLists(std::cell::RefCell<FreeLists>);

    #[cfg(not(loom))]
    impl Drop for ThreadLists {
        fn drop(&mut self) {
            self.0.get_mut().hand_over(&DEPOT);
        }
    }

    #[cfg(not(loom))]
    std::thread_local! {
        static FREE: ThreadLists = const { ThreadLists(std::cell::RefCell::new(FreeLists::new())) };
    }

    /// Runs `f` on this thread's lists and the depot, or returns `None` if the lists are
    /// gone (the thread is exiting: a task dropped by another thread-local's destructor) or
    /// in use (never: no code of a task or callback runs under the borrow, so this is
    /// defensive). Then the allocator serves.
    #[inline]
    fn with_lists<R>(f: impl FnOnce(&mut FreeLists, &Depot) -> R) -> Option<R> {
        #[cfg(not(loom))]
        {
            FREE.try_with(|lists| Some(f(&mut *lists.0.try_borrow_mut().ok()?, &DEPOT)))
                .ok()
                .flatten()
        }
        #[cfg(loom)]
        {
            let _ = f;
            None
        }
    }

    /// Memory for a value of `layout` (never zero-sized), uninitialised.
    #[inline]
    pub(super) fn allocate(layout: Layout) -> NonNull<u8> {
        let Some(class) = class_of(layout) else {
            return fresh(layout);
        };
        with_lists(|lists, depot| lists.allocate(class, depot))
            .flatten()
            .unwrap_or_else(|| fresh_block(class))
    }

    /// Calls [`release`] when dropped.
    pub(super) struct ReleaseOnDrop {
        block: NonNull<u8>,
        layout: Layout,
    }

    impl ReleaseOnDrop {
        /// # Safety
        ///
        /// As [`release`]'s, from the moment the guard drops: `block` came from
        /// `allocate(layout)`, and by then holds no value and is not used again.
        pub(super) unsafe fn new(block: NonNull<u8>, layout: Layout) -> ReleaseOnDrop {
            ReleaseOnDrop { block, layout }
        }
    }

    impl Drop for ReleaseOnDrop {
        fn drop(&mut self) {
            // SAFETY: the guard's contract (see `new`).
            unsafe { release(self.block, self.layout) };
        }
    }

    /// Gives back memory from [`allocate`]: kept for the next cell of its size (on this
    /// thread or, through the depot, another), or freed.
    ///
    /// # Safety
    ///
    /// `block` came from `allocate(layout)` with this `layout`, holds no value any more, and
    /// is not used after this call.
    #[inline]
    pub(super) unsafe fn release(block: NonNull<u8>, layout: Layout) {
        let Some(class) = class_of(layout) else {
            // SAFETY: `allocate` took it from the allocator with this very layout.
            unsafe { std::alloc::dealloc(block.as_ptr(), layout) };
            return;
        };
        if with_lists(|lists, depot| lists.release(block, class, depot)).is_none() {
            // SAFETY: from `allocate`, so a block of its class from `fresh_block`.
            unsafe { free_block(block, class) };
        }
    }
}

/// What the main future of `run_until_complete` needs of its stand-in task: it is polled
/// by its own thread, never queued, so a wake or a schedule only tells that thread.
pub(crate) trait MainWaker: Send + Sync + 'static {
    /// The main future was woken (`header` is its task's).
    fn wake(&self, header: &Header);
}

/// The stand-in task allocation of a `run_until_complete` main future.
#[repr(C)]
struct MainCell<W> {
    header: Header,
    waker: W,
}

impl<W: MainWaker> MainCell<W> {
    const VTABLE: &'static TaskVtable = &TaskVtable {
        // Never queued: `run_until_complete` polls the main future itself.
        run: drop,
        schedule: Self::wake,
        wake: Self::wake,
        wake_by_ref: Self::wake_by_ref,
        force_finish: Self::force_finish,
        give_up_delivery: Self::give_up_delivery,
        stored_failure: Self::stored_failure,
        dealloc: Self::dealloc,
    };

    /// The cell `me` points to; `me` must be a `MainCell<W>`'s (reached through
    /// `Self::VTABLE` or a `MainPtr<W>`).
    fn cell(me: &TaskPtr) -> &Self {
        // SAFETY: called only through `Self::VTABLE`, carried only by this type's cells, or
        // from a `MainPtr<W>`, made only for one; the header is first (`repr(C)`); `me`
        // keeps it alive while borrowed.
        unsafe { me.header.cast::<Self>().as_ref() }
    }

    fn wake(me: TaskPtr) {
        Self::wake_by_ref(&me);
    }

    fn wake_by_ref(me: &TaskPtr) {
        let cell = Self::cell(me);
        // Before the host hears of it: a cancel that sees the mark knows the main future
        // woken, not parked at its await point (see `task::cancel`).
        cell.header.state.host_woken();
        cell.waker.wake(&cell.header);
    }

    fn force_finish(_me: TaskPtr, _error: Error) -> bool {
        false
    }

    fn give_up_delivery(_me: &TaskPtr, _error: Error) {}

    fn stored_failure(_me: &TaskPtr) -> Option<Error> {
        None
    }

    /// `TaskVtable::dealloc`.
    ///
    /// # Safety
    ///
    /// As `TaskVtable::dealloc`: `header` heads a `MainCell<W>` nobody can reach any more.
    unsafe fn dealloc(header: NonNull<Header>) {
        // SAFETY: allocated by `Box` in `new_main_task` as a `Self`, header first; the last
        // count is gone.
        drop(unsafe { Box::from_raw(header.cast::<Self>().as_ptr()) });
    }
}

/// The stand-in task of a `run_until_complete` main future, typed by what its wakes go to.
pub(crate) struct MainPtr<W> {
    task: TaskPtr,
    _waker: PhantomData<W>,
}

impl<W: MainWaker> MainPtr<W> {
    /// The untyped pointer.
    pub(crate) fn task(&self) -> &TaskPtr {
        &self.task
    }

    /// What the task's wakes go to (`run_until_complete` reads the wake it recorded).
    pub(crate) fn waker_state(&self) -> &W {
        // A `MainPtr<W>` is only made by `new_main_task`, for a `MainCell<W>`, which is what
        // `MainCell::<W>::cell` requires.
        &MainCell::<W>::cell(&self.task).waker
    }
}

/// The stand-in task of a `run_until_complete` main future (named "main", pinned to `home`),
/// whose wakes go to `waker`.
pub(crate) fn new_main_task<W: MainWaker>(
    id: TaskId,
    rt: Arc<RuntimeShared>,
    home: Arc<LoopShared>,
    waker: W,
) -> MainPtr<W> {
    let header = Header::new(MainCell::<W>::VTABLE, 1, id, rt, Some(home));
    header.set_name("main".to_owned());
    let cell = Box::new(MainCell { header, waker });
    let header = NonNull::from(Box::leak(cell)).cast::<Header>();
    MainPtr {
        // SAFETY: the header is the cell's first field (`repr(C)`), and its count of one is
        // handed to this pointer.
        task: unsafe { TaskPtr::from_counted(header) },
        _waker: PhantomData,
    }
}

/// The one waker vtable of every task: the data pointer is the task's header, and every
/// waker but the one a poll borrows (see `TaskCell::run`) owns one count. Written by hand,
/// not through `std::task::Wake`, so that a poll can lend the runner's own count instead of
/// the task keeping a counted waker of itself for its whole life (two atomic operations per
/// task, and a reference cycle to break at completion). One table for all task types, so a
/// waker costs no vtable lookup to clone or drop.
static WAKER_VTABLE: RawWakerVTable =
    RawWakerVTable::new(clone_waker, wake_waker, wake_waker_by_ref, drop_waker);

/// `RawWakerVTable::clone`.
///
/// # Safety
///
/// `ptr` is a waker's data pointer from `WAKER_VTABLE`: the header of a live task.
unsafe fn clone_waker(ptr: *const ()) -> RawWaker {
    // SAFETY: the waker being cloned keeps the task alive (it owns a count, or borrows the
    // runner's), so the count may be bumped; the new waker owns that count.
    let task = unsafe { TaskPtr::from_borrowed(NonNull::new_unchecked(ptr as *mut Header)) };
    RawWaker::new(
        ManuallyDrop::new(task).header.as_ptr() as *const (),
        &WAKER_VTABLE,
    )
}

/// `RawWakerVTable::wake`: consumes the waker's count.
///
/// # Safety
///
/// As `clone_waker`; called only on a waker that owns its count (std never calls `wake` on
/// the borrowed one, which is never dropped or consumed).
unsafe fn wake_waker(ptr: *const ()) {
    // SAFETY: the waker owns one count of this task, which the pointer takes over.
    let task = unsafe { TaskPtr::from_counted(NonNull::new_unchecked(ptr as *mut Header)) };
    task.wake_task();
}

/// `RawWakerVTable::wake_by_ref`.
///
/// # Safety
///
/// As `clone_waker`.
unsafe fn wake_waker_by_ref(ptr: *const ()) {
    // SAFETY: the waker keeps the task alive for this call; `ManuallyDrop` leaves its count
    // (owned or borrowed) untouched.
    let task = ManuallyDrop::new(unsafe {
        TaskPtr::from_counted(NonNull::new_unchecked(ptr as *mut Header))
    });
    (task.header().vtable.wake_by_ref)(&task);
}

/// `RawWakerVTable::drop`: gives back the waker's count.
///
/// # Safety
///
/// As `wake_waker`.
unsafe fn drop_waker(ptr: *const ()) {
    // SAFETY: the waker owns one count of this task, given back here.
    drop(unsafe { TaskPtr::from_counted(NonNull::new_unchecked(ptr as *mut Header)) });
}

/// The running task of this thread, as a counted pointer from the raw one set for the
/// duration of one poll.
pub(crate) fn current_task_ref(ptr: NonNull<Header>) -> TaskRef {
    // SAFETY: `ptr` was set by `enter_task` from a `TaskPtr` that the runner keeps alive for
    // the whole poll, and it is cleared before that poll ends.
    TaskRef::from_raw(unsafe { TaskPtr::from_borrowed(ptr) })
}

/// Borrows the running task's header through the raw pointer.
pub(crate) fn with_header<R>(ptr: NonNull<Header>, f: impl FnOnce(&Header) -> R) -> R {
    // SAFETY: as in `current_task_ref`: the task outlives the poll during which the pointer
    // is set, and `f` runs within that poll.
    f(unsafe { ptr.as_ref() })
}

/// Marker giving `Task<T>` the auto traits of `T` for `Send`, while the `JoinPtr<T>`
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

/// The allocation of a `call_soon_threadsafe` callback: its handle's state and the closure,
/// in memory from `cell_memory` (see [`new_threadsafe_callback`]).
#[repr(C)]
struct CallbackCell<F> {
    head: CallbackHead,
    /// Moved out (and called) or dropped exactly once, by the [`QueuedCallback`], the only
    /// one that touches it; gone before the last count is given back.
    f: UnsafeCell<ManuallyDrop<F>>,
}

/// What every callback cell starts with.
struct CallbackHead {
    /// The queue entry and the handle.
    refs: super::refcount::RefCount,
    vtable: &'static CallbackVtable,
    state: HandleState,
}

/// What depends on a callback cell's closure type.
struct CallbackVtable {
    /// Moves the closure out and calls it.
    ///
    /// Safety: the caller is the cell's `QueuedCallback`, and the closure is still there.
    call: unsafe fn(NonNull<CallbackHead>),
    /// Drops the closure uncalled. Safety: as `call`'s.
    discard: unsafe fn(NonNull<CallbackHead>),
    layout: Layout,
}

impl<F: FnOnce() + Send + 'static> CallbackCell<F> {
    const VTABLE: &'static CallbackVtable = &CallbackVtable {
        call: Self::call,
        discard: Self::discard,
        layout: Layout::new::<Self>(),
    };

    /// # Safety
    ///
    /// `head` heads a live `CallbackCell<F>`; the caller is its `QueuedCallback` and has
    /// neither called nor dropped the closure.
    unsafe fn call(head: NonNull<CallbackHead>) {
        // SAFETY: a `CallbackCell<F>` (head first, `repr(C)`), live; the queue entry alone
        // touches `f`, and takes it only this once (the caller's contract).
        let f = unsafe { head.cast::<Self>().as_ref() }
            .f
            .with_mut(|f| unsafe { ManuallyDrop::take(&mut *f) });
        f();
    }

    /// # Safety
    ///
    /// As [`Self::call`]'s.
    unsafe fn discard(head: NonNull<CallbackHead>) {
        // SAFETY: as in `call`: the closure is there, and ours alone to drop, once.
        unsafe { head.cast::<Self>().as_ref() }
            .f
            .with_mut(|f| unsafe { ManuallyDrop::drop(&mut *f) });
    }
}

/// Gives back one count of the callback cell at `head`, freeing the cell if it was the last.
///
/// # Safety
///
/// The caller owns a count of the live cell at `head`, does not use it after this call, and
/// the closure is gone (called or dropped) if this may be the last count.
unsafe fn release_callback(head: NonNull<CallbackHead>) {
    // SAFETY: live while we hold our count.
    let head_ref = unsafe { head.as_ref() };
    let layout = head_ref.vtable.layout;
    if head_ref.refs.decrement() {
        // SAFETY: the last count is gone, so nobody else can reach the cell; the closure is
        // gone (the contract), and the rest (counts, flags, an `Instant`) needs no drop. The
        // memory came from `cell_memory::allocate(layout)`.
        unsafe { cell_memory::release(head.cast(), layout) };
    }
}

/// A `call_soon_threadsafe` callback in its loop's queue: owns the closure, and runs or drops
/// it exactly once. One count of the cell.
pub(crate) struct QueuedCallback {
    head: NonNull<CallbackHead>,
}

// SAFETY: it carries an `F: Send` (moved out and called, or dropped, on whichever thread
// holds it) and a count of a cell whose shared part (`HandleState`) is `Sync`.
unsafe impl Send for QueuedCallback {}

impl QueuedCallback {
    /// The state the callback's handle reads and writes.
    pub(crate) fn state(&self) -> &HandleState {
        // SAFETY: our count keeps the cell alive while `self` is borrowed.
        &unsafe { self.head.as_ref() }.state
    }

    /// Calls the closure (the count is given back even if it panics).
    pub(crate) fn run(self) {
        let head = ManuallyDrop::new(self).head;
        let _give_back = GiveBackOnDrop(head);
        // SAFETY: `head` is a live cell whose queue entry we were; the closure is still
        // there, since only `run` (which consumes the entry) and `drop` take it.
        unsafe { (head.as_ref().vtable.call)(head) };
    }
}

impl Drop for QueuedCallback {
    fn drop(&mut self) {
        // Given back even if the closure's destructor panics.
        let _give_back = GiveBackOnDrop(self.head);
        // SAFETY: never run (`run` forgets the entry), so the closure is there and ours.
        unsafe { (self.head.as_ref().vtable.discard)(self.head) };
    }
}

/// Gives back a queue entry's count when dropped: after its closure was called or dropped,
/// or while either unwinds.
struct GiveBackOnDrop(NonNull<CallbackHead>);

impl Drop for GiveBackOnDrop {
    fn drop(&mut self) {
        // SAFETY: the queue entry's count, given back once (the entry made this guard as it
        // gave up its own drop); the closure is gone by now, moved out for the call or
        // dropped, whether that returned or is unwinding.
        unsafe { release_callback(self.0) };
    }
}

/// The handle's share of a `call_soon_threadsafe` callback: its state. One count of the cell.
pub(crate) struct CallbackState {
    head: NonNull<CallbackHead>,
}

// SAFETY: it reaches only the cell's `HandleState` (atomics and an `Instant`) and its count.
unsafe impl Send for CallbackState {}
// SAFETY: as above.
unsafe impl Sync for CallbackState {}

impl CallbackState {
    /// The callback's handle state.
    pub(crate) fn get(&self) -> &HandleState {
        // SAFETY: our count keeps the cell alive while `self` is borrowed.
        &unsafe { self.head.as_ref() }.state
    }

    /// The cell's count (for tests).
    #[cfg(all(test, not(loom)))]
    fn ref_count(&self) -> usize {
        // SAFETY: our count keeps the cell alive for this call.
        unsafe { self.head.as_ref() }.refs.get()
    }
}

impl Clone for CallbackState {
    fn clone(&self) -> CallbackState {
        // SAFETY: our count keeps the cell alive for this call; the new count is the clone's.
        unsafe { self.head.as_ref() }.refs.increment();
        CallbackState { head: self.head }
    }
}

impl Drop for CallbackState {
    fn drop(&mut self) {
        // SAFETY: our count, given back once. The closure is gone if this is the last count:
        // the queue entry, the other owner, drops or calls it before giving its count back.
        unsafe { release_callback(self.head) };
    }
}

/// A `call_soon_threadsafe` callback: the closure and its handle's state in one cell with two
/// counts, one for the loop's queue (which runs the closure) and one for the handle. The
/// memory comes from the cell lists (`cell_memory`): a loop that gives back the last count of
/// the callbacks of foreign threads, and sends none of that size itself, hands the cells
/// back to them through the depot, where with `Arc` glibc took an arena lock for each one
/// (see `benchmarks/NOTES.md`).
pub(crate) fn new_threadsafe_callback<F: FnOnce() + Send + 'static>(
    state: HandleState,
    f: F,
) -> (QueuedCallback, CallbackState) {
    let layout = Layout::new::<CallbackCell<F>>();
    let memory = cell_memory::allocate(layout).cast::<CallbackCell<F>>();
    // SAFETY: fresh memory of the cell's layout, written once, before anyone else can see it.
    unsafe {
        memory.as_ptr().write(CallbackCell {
            head: CallbackHead {
                refs: super::refcount::RefCount::new(2),
                vtable: CallbackCell::<F>::VTABLE,
                state,
            },
            f: UnsafeCell::new(ManuallyDrop::new(f)),
        });
    }
    let head = memory.cast::<CallbackHead>();
    (QueuedCallback { head }, CallbackState { head })
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::cell_memory::{
        allocate, cells_in, class_layout, class_of, free_block, fresh_block, release, Depot,
        FreeLists, DEPOT_BYTES_PER_CLASS, KEEP_BYTES_PER_CLASS, MAGAZINE,
    };
    use std::alloc::Layout;
    use std::ptr::NonNull;

    /// A block of `class` as `allocate` makes them: from the lists, else from the allocator.
    fn take(lists: &mut FreeLists, depot: &Depot, class: usize) -> NonNull<u8> {
        lists
            .allocate(class, depot)
            .unwrap_or_else(|| fresh_block(class))
    }

    /// The 320-byte class and the 1 KiB one.
    const SMALL: usize = 4;
    const LARGE: usize = 15;

    #[test]
    fn a_freed_cell_serves_the_next_cell_of_its_class_from_the_same_lists() {
        let depot = Depot::new();
        let mut lists = FreeLists::new();
        let first = take(&mut lists, &depot, SMALL);
        let other_class = take(&mut lists, &depot, SMALL - 1);
        lists.release(first, SMALL, &depot);
        lists.release(other_class, SMALL - 1, &depot);
        assert_eq!(lists.kept(SMALL), 1, "kept, not given to the allocator");
        assert_eq!(take(&mut lists, &depot, SMALL), first, "handed out again");
        assert_eq!(lists.kept(SMALL), 0);
        assert_eq!(lists.kept(SMALL - 1), 1, "each class keeps its own");
        lists.release(first, SMALL, &depot);
    }

    /// The blocks of `class` the depot holds when full: whole magazines, within its budget.
    fn depot_capacity(class: usize) -> usize {
        cells_in(DEPOT_BYTES_PER_CLASS, class) / MAGAZINE * MAGAZINE
    }

    #[test]
    fn a_thread_keeps_no_more_than_its_budget_and_frees_the_rest() {
        let depot = Depot::new();
        let mut lists = FreeLists::new();
        let budget = cells_in(KEEP_BYTES_PER_CLASS, LARGE);
        let blocks: Vec<_> = (0..budget + MAGAZINE + 3)
            .map(|_| take(&mut lists, &depot, LARGE))
            .collect();
        for &block in &blocks {
            lists.release(block, LARGE, &depot);
        }
        assert_eq!(lists.kept(LARGE), budget);
        assert_eq!(lists.outgoing(LARGE), 0, "not passed on: it allocates them");
        assert_eq!(depot.blocks(LARGE), 0, "the rest went to the allocator");
        // The kept ones come back, the last one kept first.
        let again = take(&mut lists, &depot, LARGE);
        assert_eq!(again, blocks[budget - 1]);
        lists.release(again, LARGE, &depot);
    }

    #[test]
    fn a_thread_that_starts_allocating_a_class_first_uses_its_outgoing_cells() {
        let depot = Depot::new();
        let mut lists = FreeLists::new();
        let blocks: Vec<_> = (0..3).map(|_| fresh_block(SMALL)).collect();
        for &block in &blocks {
            lists.release(block, SMALL, &depot);
        }
        assert_eq!(
            lists.outgoing(SMALL),
            3,
            "not allocated here: bound for the depot"
        );
        let first = take(&mut lists, &depot, SMALL);
        assert!(blocks.contains(&first), "taken from the outgoing magazine");
        assert_eq!(lists.outgoing(SMALL), 2);
        lists.release(first, SMALL, &depot);
        assert_eq!(lists.kept(SMALL), 1, "now it allocates the class: kept");
    }

    #[test]
    fn an_exiting_thread_frees_what_the_full_depot_refuses() {
        let depot = Depot::new();
        let mut filler = FreeLists::new();
        // A class whose share of the depot is whole magazines (256 blocks of 1 024 bytes
        // each), so that the full depot has no room left for a partial one.
        const WHOLE: usize = 14;
        let budget = cells_in(DEPOT_BYTES_PER_CLASS, WHOLE);
        assert_eq!(budget % MAGAZINE, 0);
        for _ in 0..budget {
            filler.release(fresh_block(WHOLE), WHOLE, &depot);
        }
        assert_eq!(depot.blocks(WHOLE), budget, "full");
        let mut exiting = FreeLists::new();
        let mine = take(&mut exiting, &depot, WHOLE);
        let theirs = take(&mut exiting, &depot, WHOLE);
        exiting.release(mine, WHOLE, &depot);
        exiting.release(theirs, WHOLE, &depot);
        for _ in 0..2 {
            exiting.release(fresh_block(WHOLE), WHOLE, &depot);
        }
        // Its list holds the magazine it took and two more: one magazine fits the depot
        // again, the two do not.
        assert_eq!(exiting.kept(WHOLE), MAGAZINE + 2);
        exiting.hand_over(&depot);
        assert_eq!(exiting.kept(WHOLE), 0);
        assert_eq!(
            depot.blocks(WHOLE),
            budget,
            "filled up again to its budget, the rest freed"
        );
    }

    #[test]
    fn cells_freed_by_a_thread_that_never_allocates_them_reach_one_that_does() {
        let depot = Depot::new();
        let mut spawner = FreeLists::new();
        let mut runner = FreeLists::new();
        // The spawner's own list holds nothing, so its cells come from the allocator.
        let blocks: Vec<_> = (0..MAGAZINE)
            .map(|_| take(&mut spawner, &depot, SMALL))
            .collect();
        for &block in &blocks {
            runner.release(block, SMALL, &depot);
        }
        assert_eq!(runner.kept(SMALL), 0, "the runner keeps none for itself");
        assert_eq!(runner.outgoing(SMALL), 0);
        assert_eq!(depot.blocks(SMALL), MAGAZINE);
        // The spawner's next cells are those.
        let again: Vec<_> = (0..MAGAZINE)
            .map(|_| take(&mut spawner, &depot, SMALL))
            .collect();
        assert_eq!(depot.blocks(SMALL), 0);
        let (mut sorted, mut sorted_again) = (blocks.clone(), again.clone());
        sorted.sort();
        sorted_again.sort();
        assert_eq!(sorted, sorted_again, "the magazine came back whole");
        for block in again {
            spawner.release(block, SMALL, &depot);
        }
    }

    #[test]
    fn the_depot_keeps_no_more_than_its_budget_and_the_rest_is_freed() {
        let depot = Depot::new();
        let mut runner = FreeLists::new();
        let budget = depot_capacity(LARGE);
        for _ in 0..budget + 2 * MAGAZINE {
            // From the allocator each time (a `FreeLists` would take the depot's back).
            runner.release(fresh_block(LARGE), LARGE, &depot);
        }
        assert_eq!(depot.blocks(LARGE), budget, "refused magazines were freed");
        assert_eq!(runner.outgoing(LARGE), 0);
    }

    #[test]
    fn an_exiting_thread_hands_its_lists_to_the_depot() {
        let depot = Depot::new();
        let mut exiting = FreeLists::new();
        let count = MAGAZINE + 5;
        let blocks: Vec<_> = (0..count)
            .map(|_| take(&mut exiting, &depot, SMALL))
            .collect();
        for &block in &blocks {
            exiting.release(block, SMALL, &depot);
        }
        exiting.hand_over(&depot);
        assert_eq!(exiting.kept(SMALL), 0);
        assert_eq!(depot.blocks(SMALL), count, "in two magazines");
        let mut next = FreeLists::new();
        let first = take(&mut next, &depot, SMALL);
        assert!(blocks.contains(&first));
        next.release(first, SMALL, &depot);
    }

    /// Through the thread-locals and the process's depot: a thread that exits leaves its
    /// free cells to the next thread that needs cells of their size. (A size no task or
    /// callback of these tests has: 129 to 192 bytes, below any task's cell and above
    /// their callbacks' closures, so no other test takes the magazine first.)
    #[test]
    fn an_exiting_threads_free_cells_serve_another_thread() {
        let size = Layout::from_size_align(160, 8).expect("a valid layout");
        let left = std::thread::spawn(move || {
            let blocks: Vec<_> = (0..3).map(|_| allocate(size)).collect();
            for &block in &blocks {
                // SAFETY: from `allocate` with this layout, holding no value, not used again.
                unsafe { release(block, size) };
            }
            blocks
                .iter()
                .map(|b| b.as_ptr() as usize)
                .collect::<Vec<_>>()
        })
        .join()
        .expect("the thread ran");
        let next = allocate(size);
        assert!(
            left.contains(&(next.as_ptr() as usize)),
            "the exited thread's cell, from the depot"
        );
        // SAFETY: as above.
        unsafe { release(next, size) };
    }

    #[test]
    fn a_fresh_block_of_every_class_starts_a_cache_line() {
        for class in 0..16 {
            let blocks: Vec<_> = (0..8).map(|_| fresh_block(class)).collect();
            for &block in &blocks {
                assert_eq!(block.as_ptr() as usize % 64, 0, "class {class}");
                // The whole block is ours to write.
                // SAFETY: a fresh block of the class's size, holding no value.
                unsafe { block.as_ptr().write_bytes(0xa5, class_layout(class).size()) };
            }
            for block in blocks {
                // SAFETY: from `fresh_block(class)`, holding no value, not used again.
                unsafe { free_block(block, class) };
            }
        }
    }

    #[test]
    fn every_kept_size_and_alignment_gets_a_class_block_that_fits_it() {
        for align in [1, 2, 4, 8, 16, 32, 64] {
            for size in 1..=1024 {
                let wanted = Layout::from_size_align(size, align).unwrap();
                let class = class_of(wanted).expect("kept");
                let block = class_layout(class);
                assert!(block.size() >= size && block.align() >= align);
                assert!(block.size() < size + 64, "the smallest class that fits");
            }
            assert_eq!(
                class_of(Layout::from_size_align(1025, align).unwrap()),
                None
            );
        }
        assert_eq!(class_of(Layout::from_size_align(64, 128).unwrap()), None);
    }

    #[test]
    fn cells_too_large_or_too_aligned_for_the_lists_come_from_the_allocator() {
        for layout in [
            Layout::from_size_align(4096, 8).unwrap(),
            Layout::from_size_align(64, 128).unwrap(),
        ] {
            assert_eq!(class_of(layout), None, "not kept");
            let block = allocate(layout);
            assert_eq!(block.as_ptr() as usize % layout.align(), 0);
            // SAFETY: from `allocate` with this layout, holding no value, not used again.
            unsafe { release(block, layout) };
        }
    }
}

#[cfg(all(test, not(loom)))]
mod callback_tests {
    use super::{new_threadsafe_callback, CallbackState, QueuedCallback};
    use crate::event_loop::HandleState;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Counts a closure's calls and drops (of what it captured).
    #[derive(Default)]
    struct Seen {
        calls: AtomicUsize,
        drops: AtomicUsize,
    }

    struct Captured(Arc<Seen>);

    impl Drop for Captured {
        fn drop(&mut self) {
            self.0.drops.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A queued callback that counts its call in `seen` and, once dropped, its closure's drop.
    fn counting_callback(seen: &Arc<Seen>) -> (QueuedCallback, CallbackState) {
        let captured = Captured(seen.clone());
        new_threadsafe_callback(HandleState::new(None), move || {
            captured.0.calls.fetch_add(1, Ordering::SeqCst);
        })
    }

    fn counts(seen: &Seen) -> (usize, usize) {
        (
            seen.calls.load(Ordering::SeqCst),
            seen.drops.load(Ordering::SeqCst),
        )
    }

    #[test]
    fn a_threadsafe_callback_runs_once_and_its_handle_outlives_the_run() {
        let seen = Arc::new(Seen::default());
        let (queued, state) = counting_callback(&seen);
        let second_handle = state.clone();
        assert_eq!(state.ref_count(), 3, "queue entry and two handles");
        queued.run();
        assert_eq!(counts(&seen), (1, 1), "called once, then dropped");
        assert_eq!(state.ref_count(), 2, "the queue entry gave its count back");
        drop(second_handle);
        assert!(!state.get().cancelled());
    }

    #[test]
    fn a_threadsafe_callback_dropped_unrun_drops_its_closure_uncalled() {
        let seen = Arc::new(Seen::default());
        let (queued, state) = counting_callback(&seen);
        drop(queued);
        assert_eq!(counts(&seen), (0, 1));
        assert_eq!(state.ref_count(), 1);
    }

    #[test]
    fn a_closure_whose_drop_panics_still_gives_its_queue_entrys_count_back() {
        struct PanicsOnDrop;
        impl Drop for PanicsOnDrop {
            fn drop(&mut self) {
                panic!("from the closure's destructor");
            }
        }
        let captured = PanicsOnDrop;
        let (queued, state) = new_threadsafe_callback(HandleState::new(None), move || {
            let _keep = &captured;
        });
        assert!(catch_unwind(AssertUnwindSafe(|| drop(queued))).is_err());
        assert_eq!(state.ref_count(), 1, "only the handle is left");
    }

    #[test]
    fn a_panicking_threadsafe_callback_still_gives_its_count_back() {
        let seen = Arc::new(Seen::default());
        let captured = Captured(seen.clone());
        let (queued, state) = new_threadsafe_callback(HandleState::new(None), move || {
            captured.0.calls.fetch_add(1, Ordering::SeqCst);
            panic!("from the callback");
        });
        assert!(catch_unwind(AssertUnwindSafe(|| queued.run())).is_err());
        assert_eq!(counts(&seen), (1, 1), "the unwind dropped what it captured");
        assert_eq!(state.ref_count(), 1, "only the handle is left");
    }

    /// Compile-time: what a handle to a `call_soon_threadsafe` callback may cross.
    #[test]
    fn a_callback_handle_is_send_sync_and_unwind_safe() {
        fn crosses<T: Send + Sync + std::panic::UnwindSafe + std::panic::RefUnwindSafe>() {}
        crosses::<crate::CallbackHandle>();
    }

    #[test]
    fn the_handle_may_be_the_last_owner_on_another_thread() {
        let seen = Arc::new(Seen::default());
        let (queued, state) = counting_callback(&seen);
        let runner = std::thread::spawn(move || queued.run());
        runner.join().expect("ran");
        std::thread::spawn(move || drop(state))
            .join()
            .expect("dropped");
        assert_eq!(counts(&seen), (1, 1));
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::super::refcount::RefCount;
    use braid_bridge::sync::{Arc, UnsafeCell};
    use loom::thread;

    /// A task allocation reduced to what its count guards: a part every owner reads (as
    /// `TaskPtr::drop` reads the vtable before it gives its count back) and a part each owner
    /// writes while it holds a count (as a runner writes the future). The last owner tears both
    /// down (as `dealloc` drops the cell). loom's cells report any of those accesses not
    /// ordered before the teardown.
    struct ModelCell {
        count: RefCount,
        vtable: UnsafeCell<usize>,
        parts: [UnsafeCell<usize>; 3],
    }

    // SAFETY: (model only) the cells are shared exactly as a task allocation is; loom checks
    // in every interleaving that no two accesses race.
    unsafe impl Sync for ModelCell {}

    /// One owner's life: its write, the read `TaskPtr::drop` makes, the decrement, and the
    /// teardown if it was the last.
    fn own_and_give_back(cell: &ModelCell, part: usize) -> bool {
        // SAFETY: (model only) each owner writes only its own part.
        cell.parts[part].with_mut(|p| unsafe { *p += 1 });
        // SAFETY: (model only) a read; writes come only in the teardown, which loom orders.
        let _vtable = cell.vtable.with(|v| unsafe { *v });
        if !cell.count.decrement() {
            return false;
        }
        // SAFETY: (model only) the last owner's exclusive access, which loom verifies.
        cell.vtable.with_mut(|v| unsafe { *v = 0 });
        for part in &cell.parts {
            // SAFETY: (model only) as above.
            part.with_mut(|p| unsafe {
                assert_eq!(*p, 1, "an owner's write the teardown did not see");
                *p = 0;
            });
        }
        true
    }

    /// Two owners preset at creation (as a spawner hands out its counts); one of them clones
    /// a third on its thread and hands it to yet another thread (a waker sent away), so the
    /// relaxed increment's count is given back where it was not taken. Exactly one owner
    /// tears down, after every other owner's accesses.
    #[test]
    fn loom_the_last_owner_alone_tears_down_after_every_owners_accesses() {
        loom::model(|| {
            let cell = Arc::new(ModelCell {
                count: RefCount::new(2),
                vtable: UnsafeCell::new(7),
                parts: [UnsafeCell::new(0), UnsafeCell::new(0), UnsafeCell::new(0)],
            });
            let cloner = {
                let cell = cell.clone();
                thread::spawn(move || {
                    cell.count.increment();
                    let receiver = {
                        let cell = cell.clone();
                        thread::spawn(move || own_and_give_back(&cell, 2))
                    };
                    (own_and_give_back(&cell, 1), receiver)
                })
            };
            let here = own_and_give_back(&cell, 0);
            let (cloner_last, receiver) = cloner.join().unwrap();
            let receiver_last = receiver.join().unwrap();
            let lasts = [here, cloner_last, receiver_last];
            assert_eq!(lasts.iter().filter(|&&last| last).count(), 1);
        });
    }

    /// A magazine one thread frees into the depot is taken whole by at most one of two
    /// threads that find their lists empty, is never lost, and reaches the taker with the
    /// giver's last writes to its cells ordered before the taker's first: each block holds a
    /// loom cell, written by the giver before `give` and by whoever takes it after `take`,
    /// so a hand-over outside the depot's lock is reported as a race
    /// (`cell_memory::Depot`).
    #[test]
    fn loom_a_magazine_is_taken_whole_by_at_most_one_thread_after_the_givers_writes() {
        use super::cell_memory::{class_layout, free_block, fresh_block, Depot, Magazine};
        use std::ptr::NonNull;
        type Tracked = UnsafeCell<usize>;
        assert!(std::mem::size_of::<Tracked>() <= class_layout(0).size());
        /// Writes to each block's cell (the block's next user).
        fn write_all(blocks: &[NonNull<u8>], value: usize) {
            for block in blocks {
                // SAFETY: (model only) each block holds a `Tracked`, written in place below
                // and dropped only at the end of the model; loom checks the accesses.
                let cell = unsafe { block.cast::<Tracked>().as_ref() };
                // SAFETY: (model only) as above.
                cell.with_mut(|v| unsafe { *v = value });
            }
        }
        /// Takes a magazine, if any, writes to it, and counts its blocks (freeing them).
        fn take_and_use(depot: &Depot) -> usize {
            depot.take(0).map_or(0, |magazine| {
                let blocks = magazine.into_blocks_for_model();
                write_all(&blocks, 2);
                release_all(blocks)
            })
        }
        fn release_all(blocks: Vec<NonNull<u8>>) -> usize {
            let n = blocks.len();
            for block in blocks {
                // SAFETY: (model only) written in place at the start, dropped once, here;
                // then the block goes back the way it came.
                unsafe {
                    std::ptr::drop_in_place(block.cast::<Tracked>().as_ptr());
                    free_block(block, 0);
                }
            }
            n
        }
        loom::model(|| {
            let depot = Arc::new(Depot::new());
            let blocks: Vec<NonNull<u8>> = (0..2)
                .map(|_| {
                    let block = fresh_block(0);
                    // SAFETY: (model only) fresh memory large enough for a `Tracked`.
                    unsafe { block.cast::<Tracked>().as_ptr().write(UnsafeCell::new(0)) };
                    block
                })
                .collect();
            let giver = {
                let depot = depot.clone();
                let magazine = Magazine::from_blocks_for_model(blocks);
                thread::spawn(move || {
                    // The giver's last use of the cells, before it frees them.
                    write_all(magazine.blocks_for_model(), 1);
                    assert!(depot.give(0, magazine).is_ok());
                })
            };
            let taker = {
                let depot = depot.clone();
                thread::spawn(move || take_and_use(&depot))
            };
            let here = take_and_use(&depot);
            giver.join().unwrap();
            let there = taker.join().unwrap();
            assert!(here == 0 || there == 0, "taken by one thread at most");
            // Whatever is left, taken now: every block is somewhere, once.
            let left = take_and_use(&depot);
            assert_eq!(here + there + left, 2, "every block somewhere, once");
            assert_eq!(depot.blocks(0), 0);
        });
    }

    /// The loop runs a `call_soon_threadsafe` callback while the thread that sent it cancels
    /// it and drops its handles: the closure runs at most once and what it captured is
    /// dropped exactly once, whoever gives the cell's last count back (the cell's teardown is
    /// the count's, modelled above).
    #[test]
    fn loom_a_threadsafe_callback_runs_at_most_once_whoever_lets_go_last() {
        use super::new_threadsafe_callback;
        use crate::event_loop::HandleState;
        use braid_bridge::sync::atomic::{AtomicUsize, Ordering};
        loom::model(|| {
            let calls = Arc::new(AtomicUsize::new(0));
            let (queued, state) = new_threadsafe_callback(HandleState::new(None), {
                let calls = calls.clone();
                move || {
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            });
            let lp = thread::spawn(move || {
                // As the loop does: a cancelled callback is dropped unrun.
                if !queued.state().cancelled() {
                    queued.run();
                }
            });
            let handle = state.clone();
            drop(state);
            handle.get().cancel();
            drop(handle);
            lp.join().unwrap();
            assert!(calls.load(Ordering::Relaxed) <= 1, "run at most once");
            assert_eq!(
                Arc::strong_count(&calls),
                1,
                "the closure was dropped, once"
            );
        });
    }

    /// How the deliverer models take a deliverer out of its slot.
    type TakeDeliverer =
        fn(&braid_bridge::sync::Mutex<super::Output<usize>>) -> Option<Box<super::Deliver<usize>>>;

    /// The deliverer model's body: the runner and a shutdown both take the deliverer with
    /// `take`, and call it if they got it.
    fn deliverer_taken_by_the_runner_or_the_shutdown(take: TakeDeliverer) {
        use super::Output;
        use braid_bridge::sync::atomic::{AtomicUsize, Ordering};
        use braid_bridge::sync::Mutex;
        loom::model(move || {
            // How many times it was called, and with what (1: the output, 2: the error).
            let calls = Arc::new(AtomicUsize::new(0));
            let got = Arc::new(AtomicUsize::new(0));
            let deliver: super::Deliver<usize> = {
                let (calls, got) = (calls.clone(), got.clone());
                Box::new(move |outcome| {
                    calls.fetch_add(1, Ordering::Relaxed);
                    got.store(outcome.unwrap_or(2), Ordering::Relaxed);
                })
            };
            let slot = Arc::new(Mutex::new(Output::Deliver(Box::new(deliver))));
            let runner = {
                let slot = slot.clone();
                thread::spawn(move || take(&slot).map(|deliver| deliver(Ok(1))))
            };
            let shutdown =
                take(&slot).map(|deliver| deliver(Err(braid_bridge::Error::cancelled(None))));
            let by_runner = runner.join().unwrap();
            assert_eq!(calls.load(Ordering::Relaxed), 1, "called exactly once");
            assert!(by_runner.is_some() != shutdown.is_some());
            let expected = if by_runner.is_some() { 1 } else { 2 };
            assert_eq!(got.load(Ordering::Relaxed), expected);
            assert!(matches!(*slot.lock(), Output::Empty));
        });
    }

    /// A shutdown gives up a delivering task's future (`give_up_delivery`) while the stuck
    /// loop comes unstuck and finishes the task: the deliverer is called exactly once, with
    /// the output or the shutdown's error, and the other side's value is dropped.
    #[test]
    fn loom_a_deliverer_is_called_once_by_the_runner_or_the_shutdown() {
        deliverer_taken_by_the_runner_or_the_shutdown(super::take_deliverer);
    }

    /// The twin: a take that looks under the lock and takes under a second one lets both
    /// sides see the deliverer; loom finds the run where the second side, counting on what
    /// it saw, finds the slot empty. That is why `take_deliverer` swaps the slot in one lock.
    #[test]
    #[should_panic(expected = "taken between the look and the take")]
    fn loom_deliverer_twin_looked_at_and_taken_in_two_locks_finds_it_gone() {
        fn take_in_two_locks(
            slot: &braid_bridge::sync::Mutex<super::Output<usize>>,
        ) -> Option<Box<super::Deliver<usize>>> {
            use super::Output;
            if !matches!(*slot.lock(), Output::Deliver(_)) {
                return None;
            }
            match std::mem::replace(&mut *slot.lock(), Output::Empty) {
                Output::Deliver(deliver) => Some(deliver),
                _ => panic!("the deliverer was taken between the look and the take"),
            }
        }
        deliverer_taken_by_the_runner_or_the_shutdown(take_in_two_locks);
    }
}
