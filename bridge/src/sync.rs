//! The synchronisation shim: every line of cross-thread synchronisation in braid imports from
//! here, so that the same code runs on std/parking_lot normally and on loom's model checker
//! under `--cfg loom`.
//!
//! Both sides expose one API: a parking_lot-style `Mutex` whose `lock()` returns the guard
//! directly and a `Condvar` that waits on `&mut` guards, std's atomics (`fence` included),
//! `Arc`, and loom's `UnsafeCell` with `with`/`with_mut`.
//!
//! loom treats SeqCst *accesses* as AcqRel (loom issue #180) but models `fence(SeqCst)`
//! exactly, so every store-then-load handshake in braid (the Dekker pattern behind "no lost
//! wake-up") is written with an explicit `fence(SeqCst)` between the two.

#[cfg(not(loom))]
mod imp {
    pub use std::sync::Arc;

    /// Atomics: std's, re-exported.
    pub mod atomic {
        pub use std::sync::atomic::{
            fence, AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering,
        };
    }

    pub use parking_lot::{Mutex, MutexGuard};

    /// A condition variable with one API on both sides of the shim.
    #[derive(Debug, Default)]
    pub struct Condvar(parking_lot::Condvar);

    impl Condvar {
        /// A new condition variable.
        pub const fn new() -> Self {
            Condvar(parking_lot::Condvar::new())
        }

        /// Blocks until notified (or spuriously).
        pub fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) {
            self.0.wait(guard);
        }

        /// Blocks until notified (or spuriously) or until `deadline`; true if it timed out.
        pub fn wait_until<T>(
            &self,
            guard: &mut MutexGuard<'_, T>,
            deadline: std::time::Instant,
        ) -> bool {
            self.0.wait_until(guard, deadline).timed_out()
        }

        /// Wakes every waiter.
        pub fn notify_all(&self) {
            self.0.notify_all();
        }
    }

    /// `std::cell::UnsafeCell` with loom's closure-based API, so that code written against it
    /// compiles unchanged under loom (where every access is checked).
    #[derive(Debug, Default)]
    pub struct UnsafeCell<T: ?Sized>(std::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        /// Wraps `value`.
        pub const fn new(value: T) -> Self {
            UnsafeCell(std::cell::UnsafeCell::new(value))
        }
    }

    impl<T: ?Sized> UnsafeCell<T> {
        /// Calls `f` with a shared raw pointer to the contents.
        #[inline]
        pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }

        /// Calls `f` with a mutable raw pointer to the contents.
        #[inline]
        pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }

    /// Threads: std's.
    pub mod thread {
        pub use std::thread::{current, park, spawn, yield_now, JoinHandle, Thread};
        pub use std::thread_local;

        /// Spawns a named thread, with a stack size if given.
        pub fn spawn_named<F>(
            name: String,
            stack_size: Option<usize>,
            f: F,
        ) -> std::io::Result<JoinHandle<()>>
        where
            F: FnOnce() + Send + 'static,
        {
            let mut builder = std::thread::Builder::new().name(name);
            if let Some(size) = stack_size {
                builder = builder.stack_size(size);
            }
            builder.spawn(f)
        }
    }
}

#[cfg(loom)]
mod imp {
    pub use loom::sync::Arc;

    /// Atomics: loom's, with std's `Ordering`.
    pub mod atomic {
        pub use loom::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicU8, AtomicUsize};
        pub use std::sync::atomic::Ordering;
    }

    /// loom's mutex with parking_lot's signature: `lock()` returns the guard (no poisoning in
    /// braid, since panics are caught before they can unwind through a held lock).
    #[derive(Debug, Default)]
    pub struct Mutex<T>(loom::sync::Mutex<T>);

    /// The guard of [`Mutex`]; holds loom's guard in an `Option` so that [`Condvar`] can take
    /// it by `&mut`, as parking_lot's does.
    pub struct MutexGuard<'a, T>(Option<loom::sync::MutexGuard<'a, T>>);

    impl<T> std::ops::Deref for MutexGuard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            self.0.as_ref().expect("guard present")
        }
    }

    impl<T> std::ops::DerefMut for MutexGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            self.0.as_mut().expect("guard present")
        }
    }

    /// loom's condition variable behind parking_lot's signature. loom never times out a
    /// wait, so a timed wait is modelled as an untimed one (the harder case for lost wake-ups).
    #[derive(Debug, Default)]
    pub struct Condvar(loom::sync::Condvar);

    impl Condvar {
        /// A new condition variable.
        pub fn new() -> Self {
            Condvar(loom::sync::Condvar::new())
        }

        /// Blocks until notified.
        pub fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) {
            let inner = guard.0.take().expect("guard present");
            guard.0 = Some(self.0.wait(inner).unwrap_or_else(|p| p.into_inner()));
        }

        /// As `wait`: loom has no clock. Never reports a timeout.
        pub fn wait_until<T>(
            &self,
            guard: &mut MutexGuard<'_, T>,
            _deadline: std::time::Instant,
        ) -> bool {
            self.wait(guard);
            false
        }

        /// Wakes every waiter.
        pub fn notify_all(&self) {
            self.0.notify_all();
        }
    }

    impl<T> Mutex<T> {
        /// Wraps `value`.
        pub fn new(value: T) -> Self {
            Mutex(loom::sync::Mutex::new(value))
        }

        /// Locks, blocking (in the model) until the lock is free.
        pub fn lock(&self) -> MutexGuard<'_, T> {
            MutexGuard(Some(
                self.0.lock().unwrap_or_else(|poison| poison.into_inner()),
            ))
        }

        /// Locks if free.
        pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
            self.0.try_lock().ok().map(|g| MutexGuard(Some(g)))
        }

        /// Unwraps the value.
        pub fn into_inner(self) -> T {
            self.0
                .into_inner()
                .unwrap_or_else(|poison| poison.into_inner())
        }
    }

    pub use loom::cell::UnsafeCell;

    /// Threads: loom's (and loom's thread-locals: model threads share one OS thread).
    pub mod thread {
        pub use loom::thread::{current, park, spawn, yield_now, JoinHandle, Thread};
        pub use loom::thread_local;

        /// Spawns a model thread (loom threads have no names or stack sizes).
        pub fn spawn_named<F>(
            _name: String,
            _stack_size: Option<usize>,
            f: F,
        ) -> std::io::Result<JoinHandle<()>>
        where
            F: FnOnce() + Send + 'static,
        {
            Ok(loom::thread::spawn(f))
        }
    }
}

pub use imp::*;
