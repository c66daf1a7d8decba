//! braid's event loops: asyncio's semantics on a multi-threaded, work-stealing runtime.
//!
//! Each loop thread runs one event loop; all loops share one pool of tasks (a crossbeam-deque
//! injector plus per-loop queues that siblings steal from). Callbacks are pinned to their loop
//! and run there in FIFO order. See the crate `braid` for the overview.
//!
//! ```
//! use std::time::Duration;
//!
//! let out = braid_runtime::run(async {
//!     let a = braid_runtime::create_task(async {
//!         braid_runtime::sleep(Duration::from_millis(10)).await?;
//!         Ok("a")
//!     });
//!     let b = braid_runtime::create_task(async { Ok("b") });
//!     Ok((a.await?, b.await?))
//! }).unwrap();
//! assert_eq!(out, ("a", "b"));
//! ```
//!
//! ## Memory
//!
//! A thread that spawns tasks keeps the memory of finished tasks for its next spawns, in per-thread
//! free lists by size (64-byte classes up to 1 KiB; larger tasks always use the global allocator);
//! `call_soon_threadsafe` callbacks use the same lists. For a size class it allocates from itself,
//! a thread keeps at most 256 KiB of free cells (about 1 000 tiny tasks; a thread whose tasks
//! come in several sizes can keep that much of each, 4 MiB at most) and gives the rest back to
//! the global allocator. Each kept cell starts a cache line (its allocation is a line longer, to align it in),
//! so no two cells share one. Free cells of a class it has never allocated (a loop running the
//! callbacks other threads sent it) it passes on, 64 at a time, to a depot shared by the process,
//! where threads whose own lists are empty find them; until 64 are gathered, up to 63 per class
//! wait with the thread. The depot keeps at most 256 KiB per size class (4 MiB in all) and frees
//! the rest. A thread's lists go to the depot, as far as the depot's budget takes them, when the
//! thread exits, not when a `Runtime` is dropped: a long-lived thread (such as `main`, running
//! `run_until_complete`) holds them until then. Nothing returns the depot's memory to the allocator
//! while the process runs.
//!
//! ## What the compiler refuses
//!
//! A task that may move between loops must be `Send`; a `!Send` future goes to
//! [`spawn_local`] instead:
//!
//! ```compile_fail
//! braid_runtime::run(async {
//!     let local = std::rc::Rc::new(1);
//!     braid_runtime::create_task(async move { Ok(*local) }); // Rc is not Send
//!     Ok(())
//! }).unwrap();
//! ```
//!
//! A handle to a task whose output is not `Send` cannot leave its thread:
//!
//! ```compile_fail
//! fn assert_send<T: Send>(_: T) {}
//! braid_runtime::run(async {
//!     let t = braid_runtime::spawn_local(async { Ok(std::rc::Rc::new(1)) });
//!     assert_send(t);
//!     Ok(())
//! }).unwrap();
//! ```
//!
//! Callbacks handed over from another thread must be `Send`:
//!
//! ```compile_fail
//! let rt = braid_runtime::Runtime::builder().workers(1).build().unwrap();
//! let local = std::rc::Rc::new(1);
//! rt.event_loop().call_soon_threadsafe(move || drop(local)).unwrap();
//! ```
#![warn(missing_docs, unreachable_pub)]
#![deny(unsafe_op_in_unsafe_fn)]

mod combinators;
mod context;
mod event_loop;
mod executor;
mod io;
mod linger;
mod local_timers;
mod promise;
mod registry;
mod runtime;
mod scheduler;
mod sync;
mod task;
mod timer;

/// The cross-thread layer: `ConcurrentFuture`, `ThreadPool`, `Executor`, …
pub use braid_bridge as bridge;
pub use braid_bridge::{Error, ErrorKind, Result, ReturnWhen};
pub use combinators::{
    as_completed, gather, shield, task_group, timeout, wait, wait_for, AsCompleted, Gather,
    GatherSettled, Shield, TaskGroup, TaskGroupRun, Timeout, Wait, WaitFor,
};
pub use event_loop::{CallbackHandle, EventLoop, ExceptionContext, LoopState, TimerHandle};
pub use executor::{run_in_executor, to_thread, wrap_future, ExecutorFuture};
#[cfg(feature = "hyper")]
pub use io::hyper;
pub use io::{
    open_connection, open_unix_connection, start_server, Drain, IncompleteRead, IoFuture,
    LimitOverrun, ServeForever, Server, StreamRead, StreamReader, StreamWriter, TcpListener,
    TcpStream, UdpSocket, UnixListener, UnixStream, WaitClosed, DEFAULT_LIMIT,
};
pub use promise::{create_future, CallbackId, Promise, PromiseFuture};
pub use runtime::{run, Builder, Runtime};
pub use sync::{
    Barrier, BarrierWait, BoundedSemaphore, BrokenBarrier, Condition, ConditionAcquire,
    ConditionGuard, ConditionWait, ConditionWaitFor, Event, EventWait, LifoQueue, Lock,
    LockAcquire, LockGuard, PriorityQueue, Queue, QueueEmpty, QueueFull, QueueGet, QueueJoin,
    QueuePut, QueueShutDown, Semaphore, SemaphoreAcquire, SemaphorePermit,
};
pub use task::{Task, TaskId, TaskRef};
pub use timer::{delay_from_secs, sleep, sleep_until, yield_now, Sleep, YieldNow};

use event_loop::{spawn_task, LoopCtx};
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

#[track_caller]
fn running_loop() -> Rc<LoopCtx> {
    match context::current_loop() {
        Some(ctx) => ctx,
        None => panic!("no running event loop"),
    }
}

/// The loop running on this thread (asyncio's `get_running_loop`).
///
/// # Panics
///
/// With "no running event loop" when called outside a loop; see [`try_get_running_loop`].
///
/// # Examples
///
/// ```
/// braid_runtime::run(async {
///     let lp = braid_runtime::get_running_loop();
///     assert!(lp.is_running());
///     Ok(())
/// }).unwrap();
/// ```
#[track_caller]
pub fn get_running_loop() -> EventLoop {
    let ctx = running_loop();
    EventLoop {
        rt: ctx.rt.clone(),
        lp: ctx.lp.clone(),
    }
}

/// The loop running on this thread, or `None`.
///
/// # Examples
///
/// ```
/// assert!(braid_runtime::try_get_running_loop().is_none());
/// ```
pub fn try_get_running_loop() -> Option<EventLoop> {
    context::current_loop().map(|ctx| EventLoop {
        rt: ctx.rt.clone(),
        lp: ctx.lp.clone(),
    })
}

/// Spawns a task on the running runtime's shared pool (asyncio's `create_task`). On a
/// runtime that is shutting down, the task is returned already finished with a Closed error.
///
/// # Panics
///
/// With "no running event loop" outside a loop.
///
/// # Examples
///
/// ```
/// braid_runtime::run(async {
///     let t = braid_runtime::create_task(async { Ok(1 + 1) });
///     assert_eq!(t.await?, 2);
///     Ok(())
/// }).unwrap();
/// ```
#[track_caller]
pub fn create_task<F, T>(fut: F) -> Task<T>
where
    F: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let ctx = running_loop();
    spawn_task(&ctx.rt, None, fut).0
}

/// Spawns a task pinned to this loop: it is never stolen, so it need not be `Send`.
///
/// # Panics
///
/// With "no running event loop" outside a loop.
///
/// # Examples
///
/// ```
/// use std::rc::Rc;
/// braid_runtime::run(async {
///     let shared = Rc::new(3); // !Send
///     let t = braid_runtime::spawn_local(async move { Ok(*shared * 2) });
///     assert_eq!(t.await?, 6);
///     Ok(())
/// }).unwrap();
/// ```
#[track_caller]
pub fn spawn_local<F, T>(fut: F) -> Task<T>
where
    F: Future<Output = Result<T>> + 'static,
    T: 'static,
{
    let ctx = running_loop();
    spawn_task(&ctx.rt, Some(ctx.lp.clone()), fut).0
}

/// Schedules `f` to run on this loop after the callbacks already scheduled (asyncio's
/// `call_soon`). A panic in `f` goes to the loop's exception handler.
///
/// # Panics
///
/// With "no running event loop" outside a loop.
///
/// # Examples
///
/// ```
/// use std::{cell::RefCell, rc::Rc};
/// braid_runtime::run(async {
///     let order = Rc::new(RefCell::new(Vec::new()));
///     for i in 0..3 {
///         let order = order.clone();
///         braid_runtime::call_soon(move || order.borrow_mut().push(i));
///     }
///     braid_runtime::yield_now().await?;
///     assert_eq!(*order.borrow(), [0, 1, 2]);
///     Ok(())
/// }).unwrap();
/// ```
#[track_caller]
pub fn call_soon<F: FnOnce() + 'static>(f: F) -> CallbackHandle {
    running_loop().call_soon(Box::new(f), std::any::type_name::<F>())
}

/// Schedules `f` to run on this loop after `delay` (asyncio's `call_later`). Callbacks due
/// at the same instant run in the order they were scheduled; none runs early. A delay too
/// large to represent never fires.
///
/// # Panics
///
/// With "no running event loop" outside a loop.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use std::{cell::Cell, rc::Rc};
/// braid_runtime::run(async {
///     let fired = Rc::new(Cell::new(false));
///     let f = fired.clone();
///     braid_runtime::call_later(Duration::from_millis(5), move || f.set(true));
///     braid_runtime::sleep(Duration::from_millis(20)).await?;
///     assert!(fired.get());
///     Ok(())
/// }).unwrap();
/// ```
#[track_caller]
pub fn call_later<F: FnOnce() + 'static>(delay: Duration, f: F) -> TimerHandle {
    let now = Instant::now();
    let when = now
        .checked_add(delay)
        .unwrap_or_else(|| timer::far_future(now));
    running_loop().call_at(when, Box::new(f), std::any::type_name::<F>())
}

/// Schedules `f` to run on this loop at `when` (asyncio's `call_at`); a time in the past
/// means "as soon as possible".
///
/// # Panics
///
/// With "no running event loop" outside a loop.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// braid_runtime::run(async {
///     let handle = braid_runtime::call_at(Instant::now() + Duration::from_millis(1), || ());
///     assert!(handle.when() <= Instant::now() + Duration::from_millis(1));
///     Ok(())
/// }).unwrap();
/// ```
#[track_caller]
pub fn call_at<F: FnOnce() + 'static>(when: Instant, f: F) -> TimerHandle {
    running_loop().call_at(when, Box::new(f), std::any::type_name::<F>())
}

/// The running loop's monotonic clock (asyncio's `loop.time()`).
///
/// # Panics
///
/// With "no running event loop" outside a loop.
///
/// # Examples
///
/// ```
/// braid_runtime::run(async {
///     let t0 = braid_runtime::time();
///     assert!(braid_runtime::time() >= t0);
///     Ok(())
/// }).unwrap();
/// ```
#[track_caller]
pub fn time() -> Instant {
    let _ = running_loop();
    Instant::now()
}

/// The task running on this thread, if any: it follows the task, not the thread, so it is
/// right after every resume on whichever loop the task was stolen to. Inside
/// `run_until_complete` the driven future counts as a task (named "main").
///
/// # Examples
///
/// ```
/// braid_runtime::run(async {
///     let t = braid_runtime::create_task(async {
///         Ok(braid_runtime::current_task().unwrap().id())
///     });
///     let id = t.id();
///     assert_eq!(t.await?, id);
///     Ok(())
/// }).unwrap();
/// ```
pub fn current_task() -> Option<TaskRef> {
    context::current_task()
}

/// Every unfinished task of the running runtime (the main future of `run_until_complete`
/// excluded), in creation order.
///
/// # Panics
///
/// With "no running event loop" outside a loop.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// braid_runtime::run(async {
///     let t = braid_runtime::create_task(braid_runtime::sleep(Duration::from_secs(1)));
///     assert!(braid_runtime::all_tasks().iter().any(|r| r.id() == t.id()));
///     t.cancel();
///     Ok(())
/// }).unwrap();
/// ```
#[track_caller]
pub fn all_tasks() -> Vec<TaskRef> {
    let ctx = running_loop();
    ctx.rt
        .registry
        .snapshot()
        .into_iter()
        .filter(|t| !t.header().done())
        .map(TaskRef::from_raw)
        .collect()
}
