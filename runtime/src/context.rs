//! Thread-local context: which loop this thread is running (if any) and which task it is
//! polling right now.
//!
//! The running task is kept as a raw pointer set for exactly one poll (see `task::raw`), so
//! that entering a task costs no reference-count traffic; `current_task()` turns it into a
//! counted handle only when asked.

use crate::event_loop::LoopCtx;
use crate::task::raw::{self, RawTask};
use crate::task::{CancelTarget, Header, TaskRef};
use braid_bridge::Error;
use std::cell::{Cell, RefCell};
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::Arc;

thread_local! {
    static LOOP: RefCell<Option<Rc<LoopCtx>>> = const { RefCell::new(None) };
    static TASK: Cell<Option<NonNull<dyn RawTask>>> = const { Cell::new(None) };
}

/// The loop this thread is running, if any.
#[inline]
pub(crate) fn current_loop() -> Option<Rc<LoopCtx>> {
    LOOP.with(|l| l.borrow().clone())
}

/// Makes `ctx` this thread's loop until the guard drops.
pub(crate) fn enter_loop(ctx: Rc<LoopCtx>) -> LoopGuard {
    let previous = LOOP.with(|l| l.borrow_mut().replace(ctx));
    LoopGuard { previous }
}

pub(crate) struct LoopGuard {
    previous: Option<Rc<LoopCtx>>,
}

impl Drop for LoopGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        LOOP.with(|l| *l.borrow_mut() = previous);
    }
}

/// Marks `task` as this thread's running task until the guard drops. The caller keeps the
/// task alive (it holds an `Arc`) for the guard's whole life.
#[inline]
pub(crate) fn enter_task(task: NonNull<dyn RawTask>) -> TaskGuard {
    let previous = TASK.with(|t| t.replace(Some(task)));
    TaskGuard { previous }
}

pub(crate) struct TaskGuard {
    previous: Option<NonNull<dyn RawTask>>,
}

impl Drop for TaskGuard {
    #[inline]
    fn drop(&mut self) {
        TASK.with(|t| t.set(self.previous));
    }
}

/// Runs `f` with the running task's header, if a task is running on this thread.
#[inline]
pub(crate) fn with_current_header<R>(f: impl FnOnce(&Header) -> R) -> Option<R> {
    TASK.with(|t| t.get()).map(|ptr| raw::with_header(ptr, f))
}

/// The running task, as a counted handle.
pub(crate) fn current_task() -> Option<TaskRef> {
    TASK.with(|t| t.get()).map(raw::current_task_ref)
}

/// True if `header` is the running task's.
pub(crate) fn current_task_is(header: &Header) -> bool {
    with_current_header(|h| std::ptr::eq(h, header)).unwrap_or(false)
}

/// The leaf-future cancellation point: delivers the running task's pending cancel request,
/// once. Leaf futures that register no awaited target also forget a stale one here.
#[inline]
pub(crate) fn take_cancel() -> Option<Error> {
    with_current_header(|h| h.cancel.take_cancel()).flatten()
}

/// Forgets what the running task awaits (`key`'s registration only, or any).
pub(crate) fn clear_awaiting(key: Option<usize>) {
    with_current_header(|h| h.cancel.clear_awaiting(key));
}

/// A leaf future's registration as what its task awaits (a Task or a Promise), so that
/// cancelling the task cancels it too. It remembers the task that registered, so that dropping
/// the future clears that task's registration from whatever thread drops it: a stale
/// registration would swallow a later cancel.
pub(crate) struct AwaitRegistration {
    key: usize,
    registrar: Option<TaskRef>,
}

impl AwaitRegistration {
    pub(crate) const fn new(key: usize) -> AwaitRegistration {
        AwaitRegistration {
            key,
            registrar: None,
        }
    }

    /// Registers `target` for the running task, once (no-op outside a task).
    pub(crate) fn register(&mut self, target: impl FnOnce() -> Arc<dyn CancelTarget>) {
        if self.registrar.is_some() {
            return;
        }
        if let Some(task) = current_task() {
            task.header().cancel.set_awaiting(self.key, target());
            self.registrar = Some(task);
        }
    }

    /// Withdraws the registration, if any.
    pub(crate) fn clear(&mut self) {
        if let Some(task) = self.registrar.take() {
            task.header().cancel.clear_awaiting(Some(self.key));
        }
    }
}

impl Drop for AwaitRegistration {
    fn drop(&mut self) {
        self.clear();
    }
}
