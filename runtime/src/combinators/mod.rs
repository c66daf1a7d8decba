//! asyncio's combinators: `gather`, `shield`, `wait`, `wait_for`, `timeout`, `as_completed`
//! and `TaskGroup`, with CPython 3.12's semantics, for children that may run on any loop.
//!
//! The combinators that watch many tasks give each child its own waker (see [`ReadySet`]),
//! so that a wake says *which* child finished: a gather of n tasks does O(n) work in all,
//! not O(n) per completion.

mod gather;
mod group;
mod shield;
mod timeout;
mod wait;

pub use gather::{gather, Gather, GatherSettled};
pub use group::{task_group, TaskGroup, TaskGroupRun};
pub use shield::{shield, Shield};
pub use timeout::{timeout, wait_for, Timeout, WaitFor};
pub use wait::{as_completed, wait, AsCompleted, Wait};

use braid_bridge::sync::Mutex;
use braid_bridge::{Error, ErrorKind};
use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Wake, Waker};

/// Which children woke since the parent last looked, in wake order, plus the parent's waker.
pub(crate) struct ReadySet {
    inner: Mutex<ReadyInner>,
}

struct ReadyInner {
    queue: VecDeque<usize>,
    queued: Vec<bool>,
    parent: Option<Waker>,
}

impl ReadySet {
    /// A set of `n` children, all of them queued (each must be looked at once to start
    /// watching it), and their wakers.
    pub(crate) fn new(n: usize) -> (Arc<ReadySet>, Vec<Waker>) {
        let set = Arc::new(ReadySet {
            inner: Mutex::new(ReadyInner {
                queue: (0..n).collect(),
                queued: vec![true; n],
                parent: None,
            }),
        });
        let wakers = (0..n)
            .map(|index| {
                Waker::from(Arc::new(ChildWaker {
                    set: set.clone(),
                    index,
                }))
            })
            .collect();
        (set, wakers)
    }

    /// Remembers the waker of the task polling the combinator.
    pub(crate) fn set_parent(&self, waker: &Waker) {
        let mut inner = self.inner.lock();
        match &inner.parent {
            Some(old) if old.will_wake(waker) => {}
            _ => inner.parent = Some(waker.clone()),
        }
    }

    /// Forgets the parent's waker (the combinator is finished or dropped), so that children
    /// still holding a child waker do not keep the parent task alive.
    pub(crate) fn clear_parent(&self) {
        self.inner.lock().parent = None;
    }

    /// The next child that woke, if any; it is unqueued first, so a wake that comes while the
    /// caller looks at it queues it again.
    pub(crate) fn pop(&self) -> Option<usize> {
        let mut inner = self.inner.lock();
        let index = inner.queue.pop_front()?;
        inner.queued[index] = false;
        Some(index)
    }
}

struct ChildWaker {
    set: Arc<ReadySet>,
    index: usize,
}

impl Wake for ChildWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let parent = {
            let mut inner = self.set.inner.lock();
            if !inner.queued[self.index] {
                inner.queued[self.index] = true;
                inner.queue.push_back(self.index);
            }
            inner.parent.clone()
        };
        if let Some(parent) = parent {
            parent.wake();
        }
    }
}

/// The error of a combinator polled again after it returned.
pub(crate) fn polled_after_completion(what: &str) -> Error {
    Error::new(
        ErrorKind::InvalidState,
        format!("{what} polled after it completed"),
    )
}

/// asyncio's `TimeoutError`.
pub(crate) fn timeout_error() -> Error {
    Error::new(ErrorKind::Timeout, "timed out")
}
