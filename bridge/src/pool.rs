//! `ThreadPool`: an elastic pool of threads for blocking work (Python's
//! `ThreadPoolExecutor`), and the [`Executor`] trait that `run_in_executor` takes.
//!
//! ## Protocol
//!
//! One mutex guards the queue and the counters; two condition variables wait on it: `work`
//! (idle workers) and `room` (submitters blocked on a full bounded queue, and shutdown waiting
//! for workers to leave). The pool grows on demand, after tokio's blocking pool: a submit
//! either *claims* an idle worker (`idle -= 1; notified += 1; notify`) or, if none is idle and
//! the pool is below `max_workers`, starts a thread. A woken worker that finds `notified > 0`
//! takes the claim; one woken by its keep-alive deadline with no claim leaves. So a job is
//! never queued with every worker asleep and unclaimed, and a claim is never lost. The loom
//! model `tests/loom_pool.rs` checks hand-off racing shutdown.
//!
//! Every call of a job goes through `call_job`, which catches a panic escaping it: a job
//! catches its own body's panic, but dropping its value (when every handle of its future is
//! gone) or its captures (when it was cancelled) runs user code after that catch. On a
//! worker, an uncaught one would end the thread without counting it out.

use crate::future::{Completer, ConcurrentFuture};
use crate::sync::thread::{self, JoinHandle};
use crate::sync::{Arc, Condvar, Mutex, MutexGuard};
use crate::{Error, ErrorKind, Result};
use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Something that runs blocking jobs on other threads: what `run_in_executor` takes.
///
/// # Examples
///
/// ```
/// use braid_bridge::{Executor, ThreadPool};
/// use std::sync::mpsc;
/// let pool = ThreadPool::new(2);
/// let (tx, rx) = mpsc::channel();
/// pool.execute(Box::new(move || tx.send(7).unwrap())).unwrap();
/// assert_eq!(rx.recv().unwrap(), 7);
/// ```
pub trait Executor: Send + Sync {
    /// Runs `job` on some thread. An error means the job was not accepted (it is dropped
    /// unrun and the caller knows it).
    ///
    /// # Errors
    ///
    /// Implementation-defined; [`ThreadPool`] refuses with Closed after shutdown, with
    /// [`PoolFull`] when its bounded queue is full, and with the OS error when it has no
    /// thread and cannot start one.
    fn execute(&self, job: Box<dyn FnOnce() + Send>) -> Result<()>;

    /// As [`execute`](Executor::execute), for a job that wants to know why it will not run.
    /// The job is called once: with `None` on the thread that runs it, or with the error that
    /// keeps it from running after it was accepted ([`ThreadPool`] gives a Cancelled error to
    /// the jobs still queued when `shutdown` cancels them). The default calls `job(None)`
    /// through `execute`; an executor that then drops a job unrun drops it uncalled.
    ///
    /// # Errors
    ///
    /// As `execute`: the job was not accepted.
    ///
    /// ```
    /// use braid_bridge::{Executor, ThreadPool};
    /// use std::sync::mpsc;
    /// let pool = ThreadPool::new(1);
    /// let (tx, rx) = mpsc::channel();
    /// pool.execute_or_cancel(Box::new(move |refused| tx.send(refused.is_none()).unwrap()))
    ///     .unwrap();
    /// assert!(rx.recv().unwrap(), "the job ran");
    /// ```
    fn execute_or_cancel(&self, job: Box<dyn FnOnce(Option<Error>) + Send>) -> Result<()> {
        self.execute(Box::new(move || job(None)))
    }
}

/// The error (reachable with `Error::downcast_ref`) of a submission refused because the
/// pool's bounded queue is full.
///
/// # Examples
///
/// ```
/// use braid_bridge::{PoolFull, ThreadPool};
/// let pool = ThreadPool::builder().max_workers(1).queue_capacity(1).build().unwrap();
/// let (tx, rx) = std::sync::mpsc::channel::<()>();
/// let _busy = pool.submit(move || rx.recv().unwrap());   // occupies the only thread
/// while pool.queued() > 0 { std::thread::yield_now(); }
/// let _queued = pool.try_submit(|| ()).unwrap();          // fills the queue
/// let err = pool.try_submit(|| ()).unwrap_err();
/// assert_eq!(err.downcast_ref::<PoolFull>().unwrap().capacity, 1);
/// tx.send(()).unwrap();
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolFull {
    /// The queue's capacity.
    pub capacity: usize,
}

impl fmt::Display for PoolFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the thread pool's queue is full ({} jobs)",
            self.capacity
        )
    }
}

impl std::error::Error for PoolFull {}

/// What a queued job is asked to do when it is taken off the queue.
enum Mode {
    Run,
    Fail(Error),
}

type Job = Box<dyn FnOnce(Mode) + Send>;

struct State {
    queue: VecDeque<Job>,
    workers: usize,
    idle: usize,
    /// Claims made by submitters on idle workers, not yet taken by a woken worker.
    notified: usize,
    shutdown: bool,
    handles: Vec<(usize, JoinHandle<()>)>,
    exited: Vec<JoinHandle<()>>,
    next_id: usize,
    blocked_submitters: usize,
    room_wakers: Vec<Waker>,
    /// Workers whose jobs are waiting in `shutdown_timeout` right now: what such a caller
    /// does not wait for.
    jobs_in_shutdown: usize,
}

struct Shared {
    state: Mutex<State>,
    work: Condvar,
    room: Condvar,
    pool_id: usize,
    name: String,
    max_workers: usize,
    keep_alive: Duration,
    capacity: Option<usize>,
    stack_size: Option<usize>,
}

thread::thread_local! {
    /// The pool whose worker this thread is (0: none), so that shutdown never joins itself.
    // Not `const`: the same line must compile as loom's `thread_local!`, which has no const form.
    #[allow(clippy::missing_const_for_thread_local)]
    static WORKER_OF_POOL: Cell<usize> = Cell::new(0);
}

// Ids tell pools apart; they synchronise nothing (std's atomic: loom's cannot be a static).
static NEXT_POOL_ID: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

/// Configures a [`ThreadPool`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// let pool = braid_bridge::ThreadPool::builder()
///     .max_workers(4)
///     .thread_name("blocking")
///     .keep_alive(Duration::from_secs(10))
///     .queue_capacity(1000)
///     .build()
///     .unwrap();
/// assert_eq!(pool.max_workers(), 4);
/// ```
#[derive(Clone, Debug)]
pub struct ThreadPoolBuilder {
    max_workers: usize,
    name: String,
    keep_alive: Duration,
    capacity: Option<usize>,
    stack_size: Option<usize>,
}

impl ThreadPoolBuilder {
    /// The most threads the pool runs at once (default: available cores + 4, at most 32, as
    /// Python's default).
    ///
    /// ```
    /// let pool = braid_bridge::ThreadPool::builder().max_workers(2).build().unwrap();
    /// assert_eq!(pool.max_workers(), 2);
    /// ```
    pub fn max_workers(mut self, n: usize) -> Self {
        self.max_workers = n;
        self
    }

    /// The threads' name prefix: threads are named `<name>-<n>` (default `braid-pool`).
    ///
    /// ```
    /// let pool = braid_bridge::ThreadPool::builder().thread_name("io").build().unwrap();
    /// let name = pool.submit(|| std::thread::current().name().unwrap().to_owned());
    /// assert!(name.result(None).unwrap().starts_with("io-"));
    /// ```
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// How long an idle thread waits for work before it leaves (default 60 s).
    ///
    /// ```
    /// use std::time::Duration;
    /// let pool = braid_bridge::ThreadPool::builder().keep_alive(Duration::from_millis(10)).build().unwrap();
    /// # drop(pool);
    /// ```
    pub fn keep_alive(mut self, d: Duration) -> Self {
        self.keep_alive = d;
        self
    }

    /// Bounds the queue of jobs waiting for a thread: `try_submit` then fails with
    /// [`PoolFull`], `submit` blocks and `submit_async` waits for room.
    ///
    /// ```
    /// let pool = braid_bridge::ThreadPool::builder().queue_capacity(8).build().unwrap();
    /// # drop(pool);
    /// ```
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.capacity = Some(n);
        self
    }

    /// The stack size of the pool's threads (default: the platform's).
    ///
    /// ```
    /// let pool = braid_bridge::ThreadPool::builder().stack_size(1 << 20).build().unwrap();
    /// # drop(pool);
    /// ```
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = Some(bytes);
        self
    }

    /// Builds the pool (threads start on demand).
    ///
    /// ```
    /// assert!(braid_bridge::ThreadPool::builder().max_workers(0).build().is_err());
    /// ```
    ///
    /// # Errors
    ///
    /// An `InvalidState`-kind error for zero `max_workers` or a zero queue capacity.
    pub fn build(self) -> Result<ThreadPool> {
        if self.max_workers == 0 {
            return Err(Error::new(
                ErrorKind::InvalidState,
                "ThreadPool: max_workers must be at least 1",
            ));
        }
        if self.capacity == Some(0) {
            return Err(Error::new(
                ErrorKind::InvalidState,
                "ThreadPool: queue_capacity must be at least 1",
            ));
        }
        Ok(ThreadPool {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    workers: 0,
                    idle: 0,
                    notified: 0,
                    shutdown: false,
                    handles: Vec::new(),
                    exited: Vec::new(),
                    next_id: 0,
                    blocked_submitters: 0,
                    room_wakers: Vec::new(),
                    jobs_in_shutdown: 0,
                }),
                work: Condvar::new(),
                room: Condvar::new(),
                pool_id: NEXT_POOL_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                name: self.name,
                max_workers: self.max_workers,
                keep_alive: self.keep_alive,
                capacity: self.capacity,
                stack_size: self.stack_size,
            }),
        })
    }
}

/// An elastic pool of threads for blocking work (Python's `ThreadPoolExecutor`): grows up to
/// `max_workers` as work arrives; idle threads leave after a keep-alive.
///
/// A queued job that is cancelled never runs; a running one cannot be interrupted
/// (`cancel()` returns false). A panicking job gives a `Panicked` error. Dropping the pool
/// shuts it down without waiting: queued jobs still run, then the threads leave.
///
/// # Examples
///
/// ```
/// use braid_bridge::ThreadPool;
/// let pool = ThreadPool::new(4);
/// let squares: Vec<u64> = pool.map(|x: u64| x * x, 1..=5).map(|r| r.unwrap()).collect();
/// assert_eq!(squares, [1, 4, 9, 16, 25]);
/// pool.shutdown(true, false);
/// ```
pub struct ThreadPool {
    shared: Arc<Shared>,
}

impl ThreadPool {
    /// A pool of at most `max_workers` threads.
    ///
    /// # Panics
    ///
    /// If `max_workers` is 0 (use [`ThreadPool::builder`] for an error instead).
    ///
    /// ```
    /// let pool = braid_bridge::ThreadPool::new(2);
    /// assert_eq!(pool.submit(|| 1 + 1).result(None).unwrap(), 2);
    /// ```
    #[track_caller]
    pub fn new(max_workers: usize) -> ThreadPool {
        match Self::builder().max_workers(max_workers).build() {
            Ok(pool) => pool,
            Err(e) => panic!("{e}"),
        }
    }

    /// A [`ThreadPoolBuilder`].
    ///
    /// ```
    /// let pool = braid_bridge::ThreadPool::builder().max_workers(3).build().unwrap();
    /// assert_eq!(pool.max_workers(), 3);
    /// ```
    pub fn builder() -> ThreadPoolBuilder {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        ThreadPoolBuilder {
            max_workers: (cores + 4).min(32),
            name: "braid-pool".to_owned(),
            keep_alive: Duration::from_secs(60),
            capacity: None,
            stack_size: None,
        }
    }

    /// The most threads this pool runs.
    ///
    /// ```
    /// assert_eq!(braid_bridge::ThreadPool::new(5).max_workers(), 5);
    /// ```
    pub fn max_workers(&self) -> usize {
        self.shared.max_workers
    }

    /// Threads alive right now.
    ///
    /// ```
    /// let pool = braid_bridge::ThreadPool::new(2);
    /// assert_eq!(pool.worker_count(), 0); // threads start on demand
    /// ```
    pub fn worker_count(&self) -> usize {
        self.shared.state.lock().workers
    }

    /// Jobs waiting for a thread.
    ///
    /// ```
    /// assert_eq!(braid_bridge::ThreadPool::new(1).queued(), 0);
    /// ```
    pub fn queued(&self) -> usize {
        self.shared.state.lock().queue.len()
    }

    /// Runs `f` on the pool; the future settles with its value, or `Panicked` if it
    /// panicked. On a full bounded queue this blocks until there is room (use
    /// [`submit_async`](ThreadPool::submit_async) on an event loop). After shutdown the
    /// future is already failed with Closed.
    ///
    /// ```
    /// let pool = braid_bridge::ThreadPool::new(1);
    /// let f = pool.submit(|| "hello".len());
    /// assert_eq!(f.result(None).unwrap(), 5);
    /// ```
    pub fn submit<F, T>(&self, f: F) -> ConcurrentFuture<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (fut, job) = job_for(f);
        let mut st = self.shared.state.lock();
        if let Some(cap) = self.shared.capacity {
            while !st.shutdown && st.queue.len() >= cap {
                st.blocked_submitters += 1;
                self.shared.room.wait(&mut st);
                st.blocked_submitters -= 1;
            }
        }
        if let Err((job, error)) = Shared::enqueue(&self.shared, st, job) {
            call_job(job, Mode::Fail(error));
        }
        fut
    }

    /// As [`submit`](ThreadPool::submit), but never blocks.
    ///
    /// ```
    /// let pool = braid_bridge::ThreadPool::new(1);
    /// assert_eq!(pool.try_submit(|| 2).unwrap().result(None).unwrap(), 2);
    /// ```
    ///
    /// # Errors
    ///
    /// [`PoolFull`] (kind Other) when the bounded queue is full; Closed after shutdown;
    /// the OS error if the pool has no thread and cannot start one.
    pub fn try_submit<F, T>(&self, f: F) -> Result<ConcurrentFuture<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (fut, job) = job_for(f);
        let st = self.shared.state.lock();
        match Shared::enqueue(&self.shared, st, job) {
            Ok(()) => Ok(fut),
            Err((job, error)) => {
                call_job(job, Mode::Fail(error.clone()));
                Err(error)
            }
        }
    }

    /// As [`submit`](ThreadPool::submit), but waits for room in a full bounded queue
    /// without blocking the thread: the future resolves to the job's `ConcurrentFuture` once
    /// it is queued.
    ///
    /// ```
    /// let pool = braid_bridge::ThreadPool::builder().queue_capacity(4).build().unwrap();
    /// let fut = futures::executor::block_on(pool.submit_async(|| 3)).unwrap();
    /// assert_eq!(fut.result(None).unwrap(), 3);
    /// ```
    pub fn submit_async<F, T>(&self, f: F) -> SubmitAsync<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (fut, job) = job_for(f);
        SubmitAsync {
            shared: self.shared.clone(),
            job: std::sync::Mutex::new(Some(job)),
            fut: Some(fut),
        }
    }

    /// Runs `f` on every item and yields the results in input order (Python's
    /// `Executor.map`); every job is submitted before the first result is awaited.
    ///
    /// ```
    /// let pool = braid_bridge::ThreadPool::new(2);
    /// let lens: Vec<usize> = pool.map(|s: &str| s.len(), ["a", "bb"]).map(|r| r.unwrap()).collect();
    /// assert_eq!(lens, [1, 2]);
    /// ```
    pub fn map<I, F, A, T>(
        &self,
        f: F,
        items: I,
    ) -> impl Iterator<Item = Result<T>> + use<I, F, A, T>
    where
        I: IntoIterator<Item = A>,
        A: Send + 'static,
        F: Fn(A) -> T + Send + Sync + 'static,
        T: Send + 'static,
    {
        let f = Arc::new(f);
        let futures: Vec<ConcurrentFuture<T>> = items
            .into_iter()
            .map(|item| {
                let f = f.clone();
                self.submit(move || f(item))
            })
            .collect();
        futures.into_iter().map(|fut| fut.into_result(None))
    }

    /// Shuts the pool down: later submissions fail with Closed. With `cancel_futures`,
    /// queued jobs are cancelled (never run); otherwise they still run. With `wait`, returns
    /// once every thread has finished.
    ///
    /// ```
    /// let pool = braid_bridge::ThreadPool::new(2);
    /// let f = pool.submit(|| 1);
    /// pool.shutdown(true, false);
    /// assert_eq!(f.result(None).unwrap(), 1);
    /// assert_eq!(pool.worker_count(), 0);
    /// assert!(pool.submit(|| 2).result(None).is_err());
    /// ```
    pub fn shutdown(&self, wait: bool, cancel_futures: bool) {
        let handles = self.shared.begin_shutdown(cancel_futures, wait);
        for handle in handles {
            let _ = handle.join();
        }
        // A shutdown on another thread may have taken the handles of threads still running:
        // this one, too, returns only once they have left. Not from a job of this pool: two
        // jobs shutting it down would each wait for the other's thread, for good.
        let in_a_job = WORKER_OF_POOL.with(Cell::get) == self.shared.pool_id
            && !fault!(PoolJobsInShutdownUncounted);
        if wait && !in_a_job {
            let _ = self.shutdown_timeout(cancel_futures, Duration::MAX);
        }
    }

    /// Shuts down (as [`shutdown`](ThreadPool::shutdown) without waiting) and waits at most
    /// `timeout` for the threads to leave; returns true if they all did (and were joined).
    ///
    /// Called from a job of this pool, it cannot wait for its own thread, nor for the
    /// threads of the pool's other jobs that are waiting in `shutdown_timeout` at that moment
    /// (each would wait for the other for good): it waits for the rest, and returns true once
    /// only those threads are left. A thread whose job returned from this call counts again
    /// for a sibling still waiting. (`shutdown(true, _)` from a job does not wait at all.)
    ///
    /// ```
    /// use std::time::Duration;
    /// let pool = braid_bridge::ThreadPool::new(1);
    /// pool.submit(|| ());
    /// assert!(pool.shutdown_timeout(true, Duration::from_secs(5)));
    /// ```
    ///
    /// From jobs of the pool, each waiting for the other's thread without end:
    ///
    /// ```
    /// use std::sync::{Arc, Barrier};
    /// use std::time::Duration;
    /// let pool = Arc::new(braid_bridge::ThreadPool::new(2));
    /// let both_running = Arc::new(Barrier::new(2));
    /// let jobs: Vec<_> = (0..2)
    ///     .map(|_| {
    ///         let (pool2, both_running) = (pool.clone(), both_running.clone());
    ///         pool.submit(move || {
    ///             both_running.wait();
    ///             pool2.shutdown_timeout(false, Duration::MAX)
    ///         })
    ///     })
    ///     .collect();
    /// for job in jobs {
    ///     let all_left = job.result(Some(Duration::from_secs(5))).unwrap();
    ///     assert!(all_left, "only the other waiting job's thread was left");
    /// }
    /// ```
    pub fn shutdown_timeout(&self, cancel_futures: bool, timeout: Duration) -> bool {
        let _ = self.shared.begin_shutdown(cancel_futures, false);
        let deadline = Instant::now().checked_add(timeout);
        let in_a_job = WORKER_OF_POOL.with(Cell::get) == self.shared.pool_id
            && !fault!(PoolJobsInShutdownUncounted);
        let mut st = self.shared.state.lock();
        if in_a_job {
            st.jobs_in_shutdown += 1;
            // Siblings waiting here now have one thread fewer to wait for.
            self.shared.room.notify_all();
        }
        let all_left = loop {
            // Re-read after every wait: siblings come and go.
            let target = if in_a_job { st.jobs_in_shutdown } else { 0 };
            if st.workers <= target {
                break true;
            }
            let timed_out = match deadline {
                Some(d) => self.shared.room.wait_until(&mut st, d),
                None => {
                    self.shared.room.wait(&mut st);
                    false
                }
            };
            let target = if in_a_job { st.jobs_in_shutdown } else { 0 };
            if timed_out && st.workers > target {
                break false;
            }
        };
        if in_a_job {
            st.jobs_in_shutdown -= 1;
        }
        if !all_left {
            return false;
        }
        let handles: Vec<_> = std::mem::take(&mut st.exited);
        drop(st);
        for handle in handles {
            let _ = handle.join();
        }
        true
    }
}

impl Shared {
    /// Queues `job` and makes sure a thread will take it. Consumes the guard.
    fn enqueue(
        pool: &Arc<Self>,
        mut st: MutexGuard<'_, State>,
        job: Job,
    ) -> std::result::Result<(), (Job, Error)> {
        if st.shutdown {
            return Err((
                job,
                Error::new(ErrorKind::Closed, "the thread pool is shut down"),
            ));
        }
        if let Some(capacity) = pool.capacity {
            if st.queue.len() >= capacity {
                return Err((
                    job,
                    Error::with_source(ErrorKind::Other, PoolFull { capacity }),
                ));
            }
        }
        st.queue.push_back(job);
        if st.idle > 0 {
            st.idle -= 1;
            st.notified += 1;
            drop(st);
            pool.work.notify_all();
            return Ok(());
        }
        if st.workers < pool.max_workers {
            if let Err(e) = Shared::spawn_worker(pool, &mut st) {
                if st.workers == 0 {
                    // Nobody will ever run it: fail it now rather than leave it hanging.
                    let job = st.queue.pop_back().expect("just pushed");
                    return Err((job, Error::with_source(ErrorKind::BrokenExecutor, e)));
                }
                // Busy threads will get to it.
            }
        }
        Ok(())
    }

    fn spawn_worker(pool: &Arc<Self>, st: &mut State) -> std::io::Result<()> {
        // Threads that left on their own: join them now, so handles do not pile up.
        for handle in st.exited.drain(..) {
            let _ = handle.join();
        }
        st.next_id += 1;
        let id = st.next_id;
        let shared = pool.clone();
        let name = format!("{}-{id}", pool.name);
        let handle = thread::spawn_named(name, pool.stack_size, move || {
            Shared::worker_main(shared, id)
        })?;
        st.workers += 1;
        st.handles.push((id, handle));
        Ok(())
    }

    fn worker_main(pool: Arc<Self>, id: usize) {
        WORKER_OF_POOL.with(|c| c.set(pool.pool_id));
        let mut st = pool.state.lock();
        loop {
            if st.shutdown && fault!(PoolExitsWithQueuedJobs) {
                break;
            }
            if let Some(job) = st.queue.pop_front() {
                if st.blocked_submitters > 0 {
                    pool.room.notify_all();
                }
                let wakers = std::mem::take(&mut st.room_wakers);
                drop(st);
                wake_for_room(wakers);
                call_job(job, Mode::Run);
                st = pool.state.lock();
                continue;
            }
            if st.shutdown {
                break;
            }
            st.idle += 1;
            let deadline = Instant::now().checked_add(pool.keep_alive);
            let mut leave = false;
            loop {
                let timed_out = match deadline {
                    Some(d) => pool.work.wait_until(&mut st, d),
                    None => {
                        pool.work.wait(&mut st);
                        false
                    }
                };
                if st.notified > 0 {
                    // A submitter claimed an idle worker: that is us now.
                    st.notified -= 1;
                    break;
                }
                if st.shutdown {
                    st.idle -= 1;
                    break;
                }
                if timed_out {
                    st.idle -= 1;
                    leave = st.queue.is_empty();
                    break;
                }
            }
            if leave {
                break;
            }
        }
        st.workers -= 1;
        if let Some(pos) = st.handles.iter().position(|(i, _)| *i == id) {
            let (_, handle) = st.handles.swap_remove(pos);
            st.exited.push(handle);
        }
        // Shutdown may be waiting for the last thread to leave.
        pool.room.notify_all();
    }

    /// Marks the pool shut down, cancels queued jobs if asked, wakes everyone; returns the
    /// handles to join if `take_handles` (never this thread's own).
    fn begin_shutdown(&self, cancel_futures: bool, take_handles: bool) -> Vec<JoinHandle<()>> {
        let (cancelled, wakers, handles) = {
            let mut st = self.state.lock();
            st.shutdown = true;
            let cancelled: Vec<Job> = if cancel_futures {
                st.queue.drain(..).collect()
            } else {
                Vec::new()
            };
            let wakers = std::mem::take(&mut st.room_wakers);
            let mut handles = Vec::new();
            if take_handles {
                let me = WORKER_OF_POOL.with(Cell::get) == self.pool_id;
                handles.append(&mut st.exited);
                if !me {
                    handles.extend(st.handles.drain(..).map(|(_, h)| h));
                }
            }
            (cancelled, wakers, handles)
        };
        self.work.notify_all();
        self.room.notify_all();
        wake_for_room(wakers);
        // One by one through `call_job`: a panic dropping one job's captures must not leave
        // the others unfailed, nor unwind out of `shutdown`.
        for job in cancelled {
            call_job(
                job,
                Mode::Fail(Error::cancelled(Some(
                    "the thread pool shut down".to_owned(),
                ))),
            );
        }
        handles
    }
}

/// Calls `job` with `mode`, catching and reporting a panic that escapes it (see the module
/// docs): it comes from dropping the job's value or captures, after the job's own catch, when
/// its future is settled or has no handle left, so stderr is the only place left to tell.
fn call_job(job: Job, mode: Mode) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(move || job(mode))) {
        crate::report_to_stderr(format_args!(
            "braid: dropping a ThreadPool job's value or captures panicked: {}",
            Error::from_panic(payload)
        ));
    }
}

/// Wakes the `submit_async` callers waiting for room, each through a catch: a waker is the
/// caller's executor's code, and a panic in one must neither unwind out of a worker's loop
/// (killing the thread with the job it had just taken, while it stayed counted) or out of
/// `shutdown`, nor leave the wakers after it unwoken. Reported on stderr, as `call_job` does.
fn wake_for_room(wakers: Vec<Waker>) {
    for waker in wakers {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(move || waker.wake())) {
            crate::report_to_stderr(format_args!(
                "braid: waking a ThreadPool::submit_async caller panicked: {}",
                Error::from_panic(payload)
            ));
        }
    }
}

/// Wraps `f` as a queue job that completes a future.
fn job_for<F, T>(f: F) -> (ConcurrentFuture<T>, Job)
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (fut, completer) = ConcurrentFuture::pair();
    let job: Job = Box::new(move |mode| run_job(completer, f, mode));
    (fut, job)
}

fn run_job<F, T>(completer: Completer<T>, f: F, mode: Mode)
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match mode {
        Mode::Fail(error) => completer.set_exception(error),
        Mode::Run => {
            if !completer.set_running_or_notify_cancel() {
                return; // cancelled while queued: never runs
            }
            match catch_unwind(AssertUnwindSafe(f)) {
                Ok(value) => completer.set_result(value),
                Err(payload) => completer.set_exception(Error::from_panic(payload)),
            }
        }
    }
}

impl Executor for ThreadPool {
    fn execute(&self, job: Box<dyn FnOnce() + Send>) -> Result<()> {
        self.execute_or_cancel(Box::new(move |refused| {
            if refused.is_none() {
                job();
            }
        }))
    }

    fn execute_or_cancel(&self, job: Box<dyn FnOnce(Option<Error>) + Send>) -> Result<()> {
        let job: Job = Box::new(move |mode| {
            let refused = match mode {
                Mode::Run => None,
                Mode::Fail(error) => Some(error),
            };
            // A panic here is the job's own business: it is caught so the thread lives.
            let _ = catch_unwind(AssertUnwindSafe(move || job(refused)));
        });
        let st = self.shared.state.lock();
        Shared::enqueue(&self.shared, st, job).map_err(|(_, e)| e)
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        let _ = self.shared.begin_shutdown(false, false);
    }
}

impl fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.shared.state.lock();
        f.debug_struct("ThreadPool")
            .field("name", &self.shared.name)
            .field("max_workers", &self.shared.max_workers)
            .field("workers", &st.workers)
            .field("idle", &st.idle)
            .field("queued", &st.queue.len())
            .field("shutdown", &st.shutdown)
            .finish()
    }
}

/// The future of [`ThreadPool::submit_async`]: resolves to the job's future once the job is
/// queued (at once, unless a bounded queue is full).
///
/// # Examples
///
/// ```
/// let pool = braid_bridge::ThreadPool::builder().queue_capacity(1).build().unwrap();
/// let queued: braid_bridge::SubmitAsync<u8> = pool.submit_async(|| 5);
/// let job = futures::executor::block_on(queued).unwrap();
/// assert_eq!(job.result(None).unwrap(), 5);
/// ```
#[must_use = "futures do nothing unless you `.await` them"]
pub struct SubmitAsync<T> {
    shared: Arc<Shared>,
    /// In a mutex only so that `SubmitAsync` is `Sync` (a `Job` is `Send`, not `Sync`)
    /// without `unsafe`: it is reached through `get_mut` alone, never locked, so std's mutex
    /// (not the loom shim's: this synchronises nothing) costs nothing here.
    job: std::sync::Mutex<Option<Job>>,
    fut: Option<ConcurrentFuture<T>>,
}

impl<T: Send + 'static> Future for SubmitAsync<T> {
    type Output = Result<ConcurrentFuture<T>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(job) = self.job_slot().take() else {
            return Poll::Ready(Err(Error::new(
                ErrorKind::InvalidState,
                "polled after completion",
            )));
        };
        let shared = self.shared.clone();
        let mut st = shared.state.lock();
        if let Some(cap) = shared.capacity {
            if !st.shutdown && st.queue.len() >= cap {
                if !st.room_wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    st.room_wakers.push(cx.waker().clone());
                }
                drop(st);
                *self.job_slot() = Some(job);
                return Poll::Pending;
            }
        }
        let fut = self.fut.take().expect("present until ready");
        match Shared::enqueue(&shared, st, job) {
            Ok(()) => Poll::Ready(Ok(fut)),
            Err((job, error)) => {
                call_job(job, Mode::Fail(error.clone()));
                Poll::Ready(Err(error))
            }
        }
    }
}

impl<T> SubmitAsync<T> {
    /// The job, until it is queued or failed.
    fn job_slot(&mut self) -> &mut Option<Job> {
        // Never locked, so never poisoned; `into_inner` only spells that out.
        self.job
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<T> fmt::Debug for SubmitAsync<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The job and its future leave together, when the job is queued or failed.
        f.debug_struct("SubmitAsync")
            .field("queued", &self.fut.is_none())
            .finish()
    }
}
