//! `ProcessPool`: CPU-bound work in supervised worker processes (Python's
//! `ProcessPoolExecutor`, made to survive its workers dying).
//!
//! Files: `core.rs` is the supervisor's state machine (queue, in-flight table, cancel, time
//! limits, crash counting; no I/O, loom-modelled); `supervisor.rs` the I/O side (a thread per
//! worker slot); `rendezvous.rs` how a worker connects to its pool; `worker.rs` what
//! `build()` does in a worker; `wire.rs` the frames.
//!
//! Threads of a pool: one per worker slot (starts its worker, sends it one job at a time,
//! reads the answer, reaps it) and one monitor (time limits, the SIGTERM-to-SIGKILL grace,
//! slow starts). A job's future is settled by its slot's thread, so done callbacks run there.

#[doc(hidden)]
pub mod core;
#[cfg(not(loom))]
mod rendezvous;
#[cfg(not(loom))]
mod supervisor;
#[cfg(not(loom))]
mod wire;
#[cfg(not(loom))]
mod worker;

#[cfg(not(loom))]
pub use pool::{ProcessPool, ProcessPoolBuilder};

#[cfg(not(loom))]
mod pool {
    use super::core::{Config, Core, Job, JobHandle};
    use super::rendezvous::Rendezvous;
    use super::supervisor::{self, Launch};
    use super::wire::{Outcome, MAX_PAYLOAD};
    use super::worker::{self, Entry, Target};
    use crate::future::{Completer, ConcurrentFuture};
    use crate::sync::thread::{self, JoinHandle};
    use crate::sync::{Arc, Mutex};
    use crate::{Error, ErrorKind, Result};
    use serde::de::DeserializeOwned;
    use serde::Serialize;
    use std::any::{type_name, TypeId};
    use std::cell::Cell;
    use std::ffi::OsString;
    use std::fmt;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::time::{Duration, Instant};

    thread::thread_local! {
        /// How many pools this thread has built: with the thread's name, what tells a worker
        /// which `build()` is its own.
        // Not `const`: the same line must compile as loom's `thread_local!`.
        #[allow(clippy::missing_const_for_thread_local)]
        static BUILDS: Cell<usize> = Cell::new(0);
        /// The pool whose thread this is (0: none), so that shutdown never joins itself.
        #[allow(clippy::missing_const_for_thread_local)]
        static THREAD_OF_POOL: Cell<usize> = Cell::new(0);
    }

    // Ids tell pools apart; they synchronise nothing.
    static NEXT_POOL_ID: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

    struct Registered {
        type_id: TypeId,
        entry: Entry,
        /// A closure that captures state: the worker could not rebuild it.
        captures: bool,
    }

    /// Configures a [`ProcessPool`]: its workers, the functions it may run, and how it
    /// supervises them.
    ///
    /// The builder holds the registered functions as the worker runs them, which need not be
    /// `Send`: so the builder is not `Send` either. Build the pool where you configure it.
    ///
    /// # Examples
    ///
    /// ```
    /// use braid_bridge::ProcessPool;
    /// use std::time::Duration;
    ///
    /// fn double(x: i64) -> i64 { x * 2 }
    ///
    /// fn main() -> braid_bridge::Result<()> {
    ///     let pool = ProcessPool::builder()
    ///         .workers(2)
    ///         .max_tasks_per_child(100)
    ///         .job_timeout(Duration::from_secs(60))
    ///         .register(double)
    ///         .build()?;
    ///     assert_eq!(pool.submit(double, 21)?.result(None)?, 42);
    ///     Ok(())
    /// }
    /// ```
    pub struct ProcessPoolBuilder {
        workers: usize,
        max_tasks_per_child: Option<usize>,
        initializer: Option<Box<dyn Fn()>>,
        functions: Vec<Registered>,
        job_timeout: Option<Duration>,
        max_crashes: usize,
        crash_window: Duration,
        kill_grace: Duration,
        startup_timeout: Duration,
        drop_timeout: Duration,
        worker_args: Option<Vec<OsString>>,
    }

    impl ProcessPoolBuilder {
        /// Worker processes (default: the available cores, at most
        /// [`ProcessPool::MAX_WORKERS`]); `build()` refuses 0 and more than
        /// [`MAX_WORKERS`](ProcessPool::MAX_WORKERS).
        ///
        /// ```
        /// # fn main() -> braid_bridge::Result<()> {
        /// let pool = braid_bridge::ProcessPool::builder().workers(3).build()?;
        /// assert_eq!(pool.workers(), 3);
        /// # Ok(()) }
        /// ```
        pub fn workers(mut self, n: usize) -> Self {
            self.workers = n;
            self
        }

        /// How many jobs a worker runs before it is replaced by a fresh one (default: no
        /// limit), as Python's `max_tasks_per_child`: a bound on what a leaky job can hold.
        ///
        /// ```
        /// fn pid(_: ()) -> u32 { std::process::id() }
        /// # fn main() -> braid_bridge::Result<()> {
        /// let pool = braid_bridge::ProcessPool::builder()
        ///     .workers(1)
        ///     .max_tasks_per_child(1)
        ///     .register(pid)
        ///     .build()?;
        /// let first = pool.submit(pid, ())?.result(None)?;
        /// let second = pool.submit(pid, ())?.result(None)?;
        /// assert_ne!(first, second); // each job got a fresh worker
        /// # Ok(()) }
        /// ```
        pub fn max_tasks_per_child(mut self, n: usize) -> Self {
            self.max_tasks_per_child = Some(n);
            self
        }

        /// Runs `f` in each worker when it starts, before its first job (Python's
        /// `initializer`). It never runs in the pool's own process. A panic in it makes that
        /// worker count as crashed.
        ///
        /// ```
        /// use std::sync::atomic::{AtomicBool, Ordering};
        /// static READY: AtomicBool = AtomicBool::new(false);
        /// fn ready(_: ()) -> bool { READY.load(Ordering::SeqCst) }
        /// # fn main() -> braid_bridge::Result<()> {
        /// let pool = braid_bridge::ProcessPool::builder()
        ///     .workers(1)
        ///     .initializer(|| READY.store(true, Ordering::SeqCst))
        ///     .register(ready)
        ///     .build()?;
        /// assert!(pool.submit(ready, ())?.result(None)?);
        /// assert!(!READY.load(Ordering::SeqCst)); // not here, in the pool's process
        /// # Ok(()) }
        /// ```
        pub fn initializer(mut self, f: impl Fn() + 'static) -> Self {
            self.initializer = Some(Box::new(f));
            self
        }

        /// Lets the pool run `f`: a function item (or a closure that captures nothing),
        /// whose type names it in both processes. Register the same functions in the same
        /// order on every run of the program; registering one twice is harmless.
        ///
        /// The argument and the result cross to the worker with serde (postcard). A job's own
        /// error travels as its value: return a `Result<T, E>` with a serde-able `E`; the
        /// future then gives `Result<Result<T, E>>`, the outer error being the pool's (a
        /// panic, a crash, a time limit, a cancel).
        ///
        /// ```
        /// fn parse(s: String) -> Result<u32, String> {
        ///     s.parse().map_err(|e| format!("{s:?}: {e}"))
        /// }
        /// # fn main() -> braid_bridge::Result<()> {
        /// let pool = braid_bridge::ProcessPool::builder().workers(1).register(parse).build()?;
        /// assert_eq!(pool.submit(parse, "12".to_owned())?.result(None)?, Ok(12));
        /// assert!(pool.submit(parse, "x".to_owned())?.result(None)?.is_err());
        /// # Ok(()) }
        /// ```
        pub fn register<F, A, R>(mut self, f: F) -> Self
        where
            F: Fn(A) -> R + Copy + 'static,
            A: Serialize + DeserializeOwned,
            R: Serialize + DeserializeOwned,
        {
            let type_id = TypeId::of::<F>();
            if self.functions.iter().any(|r| r.type_id == type_id) {
                return self;
            }
            // The argument's `Deserialize` and the result's `Serialize` (and `Drop`) are the
            // job's code as much as `f` is: a panic in any of them fails the job, not the worker.
            let call = move |bytes: &[u8]| -> Outcome {
                let run = move || {
                    let arg: A = match postcard::from_bytes(bytes) {
                        Ok(arg) => arg,
                        Err(e) => return Outcome::BadArgument(e.to_string()),
                    };
                    match postcard::to_allocvec(&f(arg)) {
                        // Refused before it is framed: the frame would be refused, slowly.
                        Ok(bytes) if bytes.len() > MAX_PAYLOAD => Outcome::BadResult(format!(
                            "it is too large to send: {} bytes, at most {MAX_PAYLOAD}",
                            bytes.len()
                        )),
                        Ok(bytes) => Outcome::Value(bytes),
                        Err(e) => Outcome::BadResult(e.to_string()),
                    }
                };
                catch_unwind(AssertUnwindSafe(run))
                    .unwrap_or_else(|payload| Outcome::Panicked(worker::panic_text(payload)))
            };
            self.functions.push(Registered {
                type_id,
                entry: Entry {
                    name: type_name::<F>(),
                    call: Box::new(call),
                },
                captures: std::mem::size_of::<F>() != 0,
            });
            self
        }

        /// A time limit for every job (default: none), counted from when a worker takes the
        /// job; [`ProcessPool::submit_with_timeout`] sets one per job. A job past its limit
        /// has its worker stopped (SIGTERM, then SIGKILL after the
        /// [`kill_grace`](Self::kill_grace)) and fails with `Timeout`.
        ///
        /// ```
        /// # use std::time::Duration;
        /// let builder = braid_bridge::ProcessPool::builder().job_timeout(Duration::from_secs(30));
        /// # drop(builder);
        /// ```
        pub fn job_timeout(mut self, limit: Duration) -> Self {
            self.job_timeout = Some(limit);
            self
        }

        /// The pool breaks after `k` worker crashes within the
        /// [`crash_window`](Self::crash_window) (default 5): then every queued and later
        /// job fails with `BrokenExecutor`. Below that, a crash fails only the job that was
        /// running and the worker is replaced.
        ///
        /// ```
        /// let builder = braid_bridge::ProcessPool::builder().max_crashes(1); // Python's behaviour
        /// # drop(builder);
        /// ```
        pub fn max_crashes(mut self, k: usize) -> Self {
            self.max_crashes = k;
            self
        }

        /// The window in which crashes are counted (default 60 s).
        ///
        /// ```
        /// # use std::time::Duration;
        /// let builder = braid_bridge::ProcessPool::builder().crash_window(Duration::from_secs(10));
        /// # drop(builder);
        /// ```
        pub fn crash_window(mut self, window: Duration) -> Self {
            self.crash_window = window;
            self
        }

        /// How long a worker that is being stopped gets between SIGTERM and SIGKILL (default
        /// 2 s).
        ///
        /// ```
        /// # use std::time::Duration;
        /// let builder = braid_bridge::ProcessPool::builder().kill_grace(Duration::from_millis(200));
        /// # drop(builder);
        /// ```
        pub fn kill_grace(mut self, grace: Duration) -> Self {
            self.kill_grace = grace;
            self
        }

        /// How long a new worker may take to reach `build()` and say it is ready before it
        /// is killed and counted as crashed (default 30 s).
        ///
        /// ```
        /// # use std::time::Duration;
        /// let builder = braid_bridge::ProcessPool::builder().startup_timeout(Duration::from_secs(5));
        /// # drop(builder);
        /// ```
        pub fn startup_timeout(mut self, limit: Duration) -> Self {
            self.startup_timeout = limit;
            self
        }

        /// How long dropping the pool waits for its queued and running jobs before it
        /// cancels the rest and stops the workers (default 5 s).
        ///
        /// ```
        /// # use std::time::Duration;
        /// let builder = braid_bridge::ProcessPool::builder().drop_timeout(Duration::from_secs(1));
        /// # drop(builder);
        /// ```
        pub fn drop_timeout(mut self, limit: Duration) -> Self {
            self.drop_timeout = limit;
            self
        }

        /// The command-line arguments workers are started with, for a program whose
        /// arguments must differ in a worker (see "How workers start" on [`ProcessPool`]).
        /// By default: the program's own arguments when the pool is built on the main
        /// thread, and `<thread name> --exact` (libtest's filter) on a named thread.
        ///
        /// ```
        /// let builder = braid_bridge::ProcessPool::builder().worker_args(["--quiet"]);
        /// # drop(builder);
        /// ```
        pub fn worker_args<I, S>(mut self, args: I) -> Self
        where
            I: IntoIterator<Item = S>,
            S: Into<OsString>,
        {
            self.worker_args = Some(args.into_iter().map(Into::into).collect());
            self
        }

        fn check(&self) -> Result<()> {
            let invalid = |what: String| Err(Error::new(ErrorKind::InvalidState, what));
            if self.workers == 0 {
                return invalid("ProcessPool: workers must be at least 1".to_owned());
            }
            if self.workers > ProcessPool::MAX_WORKERS {
                // Each worker is a process and a thread here, and its slot is allocated up
                // front: past the limit, the allocation alone could abort the program.
                return invalid(format!(
                    "ProcessPool: workers must be at most {} (ProcessPool::MAX_WORKERS), not {}",
                    ProcessPool::MAX_WORKERS,
                    self.workers
                ));
            }
            if self.max_tasks_per_child == Some(0) {
                return invalid("ProcessPool: max_tasks_per_child must be at least 1".to_owned());
            }
            if self.max_crashes == 0 {
                return invalid("ProcessPool: max_crashes must be at least 1".to_owned());
            }
            if let Some(r) = self.functions.iter().find(|r| r.captures) {
                return invalid(format!(
                    "ProcessPool: `{}` captures state, which a worker process cannot rebuild: register a function item or a closure that captures nothing",
                    r.entry.name
                ));
            }
            Ok(())
        }

        /// Starts the pool: in the program, returns it with its workers starting; in a
        /// worker process, serves jobs and exits instead of returning (see "How workers
        /// start" on [`ProcessPool`]).
        ///
        /// ```
        /// let err = braid_bridge::ProcessPool::builder().workers(0).build().unwrap_err();
        /// assert_eq!(err.kind(), braid_bridge::ErrorKind::InvalidState);
        /// ```
        ///
        /// # Errors
        ///
        /// `InvalidState` for zero workers or more than
        /// [`MAX_WORKERS`](ProcessPool::MAX_WORKERS), a zero `max_tasks_per_child` or
        /// `max_crashes`, or a registered closure that captures state; the OS's error when
        /// the executable cannot be found, the temp directory cannot hold the directory
        /// for the workers' sockets, or a thread cannot start (the threads and workers
        /// that did start are stopped first, without waiting for the
        /// [`drop_timeout`](Self::drop_timeout)).
        pub fn build(self) -> Result<ProcessPool> {
            self.check()?;
            let ordinal = BUILDS.with(|n| n.replace(n.get() + 1));
            let current = std::thread::current();
            let thread_name = current.name().unwrap_or_default().to_owned();
            let names: Vec<String> = self
                .functions
                .iter()
                .map(|r| r.entry.name.to_owned())
                .collect();
            let functions: Vec<(TypeId, &'static str)> = self
                .functions
                .iter()
                .map(|r| (r.type_id, r.entry.name))
                .collect();
            let config = Config {
                workers: self.workers,
                max_tasks_per_child: self.max_tasks_per_child,
                max_crashes: self.max_crashes,
                crash_window: self.crash_window,
                kill_grace: self.kill_grace,
                startup_timeout: self.startup_timeout,
                names: names.clone(),
            };
            let pool_id = NEXT_POOL_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (job_timeout, drop_timeout) = (self.job_timeout, self.drop_timeout);
            let pool = move |core: Core| ProcessPool {
                core: Arc::new(core),
                functions,
                threads: Mutex::new(Vec::new()),
                job_timeout,
                drop_timeout,
                id: pool_id,
            };

            if let Some(target) = Target::of_this_process() {
                if target.ordinal == ordinal && target.thread == thread_name {
                    let entries: Vec<Entry> = self.functions.into_iter().map(|r| r.entry).collect();
                    worker::serve(&entries, self.initializer.as_deref(), target.parent);
                }
                let refusal = Error::new(
                    ErrorKind::BrokenExecutor,
                    format!(
                        "this process is a worker of pool #{} of thread {:?}; pool #{ordinal} of thread {thread_name:?} starts no workers in it",
                        target.ordinal, target.thread
                    ),
                );
                return Ok(pool(Core::refusing(config, refusal)));
            }

            let args = match self.worker_args {
                Some(args) => args,
                None if thread_name.is_empty() || thread_name == "main" => {
                    std::env::args_os().skip(1).collect()
                }
                // libtest runs each test on a thread named after it: run only that test.
                None => [
                    thread_name.as_str(),
                    "--exact",
                    "--include-ignored",
                    "--test-threads=1",
                    "--quiet",
                ]
                .into_iter()
                .map(OsString::from)
                .collect(),
            };
            let launch = Arc::new(Launch {
                exe: std::env::current_exe()?,
                args,
                target: Target {
                    parent: std::process::id(),
                    ordinal,
                    thread: thread_name,
                }
                .encode(),
                functions: names,
                rendezvous: Rendezvous::new(config.workers)?,
            });
            let pool = pool(Core::new(config, supervisor::send_signal));
            start_threads(pool, &launch, |name, body| {
                thread::spawn_named(name, None, body)
            })
        }
    }

    /// A pool thread's body, as [`start_threads`] hands it to its spawner.
    type Body = Box<dyn FnOnce() + Send>;

    /// Starts the pool's threads, one per slot and the monitor, with `spawn`: std's, except in
    /// the test that makes one fail. If one cannot start, stops what did and returns the error.
    fn start_threads(
        pool: ProcessPool,
        launch: &Arc<Launch>,
        mut spawn: impl FnMut(String, Body) -> std::io::Result<JoinHandle<()>>,
    ) -> Result<ProcessPool> {
        let (workers, pool_id) = (pool.core.config().workers, pool.id);
        let mut handles = Vec::with_capacity(workers + 1);
        let mut started = Ok(());
        for slot in 0..workers {
            let (core, launch) = (pool.core.clone(), launch.clone());
            let body: Body = Box::new(move || {
                THREAD_OF_POOL.with(|c| c.set(pool_id));
                supervisor::run_slot(&core, slot, &launch);
            });
            if let Err(e) = spawn(format!("braid-ppool-{slot}"), body).map(|h| handles.push(h)) {
                // No thread will end these slots: dropping the pool would wait for them until
                // its drop timeout and the kill grace had passed (forever with no timeout).
                pool.core.never_started(slot);
                started = Err(e);
                break;
            }
        }
        if started.is_ok() {
            let core = pool.core.clone();
            let body: Body = Box::new(move || {
                THREAD_OF_POOL.with(|c| c.set(pool_id));
                core.run_monitor();
            });
            started = spawn("braid-ppool-monitor".to_owned(), body).map(|h| handles.push(h));
        }
        *pool.threads.lock() = handles;
        if let Err(e) = started {
            // Dropping the pool then waits only for the slots whose threads did start.
            pool.core.terminate();
            return Err(e.into());
        }
        Ok(pool)
    }

    impl fmt::Debug for ProcessPoolBuilder {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("ProcessPoolBuilder")
                .field("workers", &self.workers)
                .field("max_tasks_per_child", &self.max_tasks_per_child)
                .field("initializer", &self.initializer.is_some())
                .field(
                    "functions",
                    &self
                        .functions
                        .iter()
                        .map(|r| r.entry.name)
                        .collect::<Vec<_>>(),
                )
                .field("job_timeout", &self.job_timeout)
                .field("max_crashes", &self.max_crashes)
                .field("crash_window", &self.crash_window)
                .finish_non_exhaustive()
        }
    }

    /// A pool of worker processes for CPU-bound work (Python's
    /// `concurrent.futures.ProcessPoolExecutor`), supervised: a worker that dies fails only
    /// its own job and is replaced.
    ///
    /// Jobs are registered functions ([`ProcessPoolBuilder::register`]) whose argument and
    /// result cross to the workers with serde. [`submit`](ProcessPool::submit) returns a
    /// [`ConcurrentFuture`]: block on it from any thread, or `.await` it from a task (this is
    /// `run_in_executor` for processes; awaiting it directly does not pass a task's
    /// cancellation on, `braid::wrap_future` does). `ProcessPool` is not an
    /// [`Executor`](crate::Executor): closures cannot cross processes.
    ///
    /// # How workers start
    ///
    /// A worker is the same executable (`std::env::current_exe()`, started afresh: never a
    /// fork of a threaded process) with the environment variable
    /// `BRAID_PROCESS_POOL_WORKER` set. It runs the program from the top; at the `build()`
    /// that started it (the same count of `build()` calls on a thread of the same name),
    /// `build()` does not return: it connects to the pool (a Unix socket in a directory of
    /// the pool's own in the temp directory, open to this user only), serves jobs over that
    /// connection, then exits the process. So:
    ///
    /// - **Build the pool early**, before other work: whatever comes before `build()` runs
    ///   again in every worker. Register the same functions in the same order on every run
    ///   (a worker that reaches a pool with other functions breaks the pool, with a clear
    ///   error). A `build()` in a worker before its own returns a pool that refuses work.
    /// - **In a binary**, build it in `main`, on the main thread: workers get the program's
    ///   own arguments.
    /// - **In a `#[test]`**, build it in the test function itself (on the test's thread, not
    ///   inside a runtime's task): libtest runs each test on a thread named after it, and
    ///   the pool starts its workers as `<test binary> <test name> --exact`, so that only
    ///   that test runs in them. A test binary with `harness = false` is a binary.
    /// - Anything else: say how with [`ProcessPoolBuilder::worker_args`].
    ///
    /// A worker's stdin is `/dev/null`. What it writes on stdout before `build()` is
    /// discarded; after it, its stdout goes to its stderr, which it shares with the program.
    /// A child process it starts, before `build()` or in a job, holds nothing of the pool's:
    /// when the worker dies, the pool knows at once. A worker dies with the pool's
    /// process (Linux's parent-death signal), so none outlives the program; dropping the pool
    /// or [`shutdown`](ProcessPool::shutdown) with `wait` reaps every worker, so none is left
    /// a zombie.
    ///
    /// # Supervision
    ///
    /// - A worker that dies (a signal, an abort, an exit) fails its running job with
    ///   `BrokenExecutor`, naming its pid and the signal or exit status, and is replaced;
    ///   queued jobs go on. After [`max_crashes`](ProcessPoolBuilder::max_crashes) crashes
    ///   within the [`crash_window`](ProcessPoolBuilder::crash_window) the pool is broken:
    ///   queued and later jobs fail with `BrokenExecutor` (running jobs finish).
    /// - A panic in a job is caught in the worker: `Panicked`, with the panic's message; the
    ///   worker lives on.
    /// - Cancelling a queued job's future means it never runs; cancelling a running one
    ///   stops its worker (SIGTERM, then SIGKILL after the
    ///   [`kill_grace`](ProcessPoolBuilder::kill_grace)), which is replaced. A job past its
    ///   time limit (counted from when a worker takes it, the sending of its argument
    ///   included) is stopped the same way and fails with `Timeout`.
    ///
    /// # Examples
    ///
    /// ```
    /// use braid_bridge::ProcessPool;
    ///
    /// fn sum_of_squares(n: u64) -> u64 {
    ///     (1..=n).map(|i| i * i).sum()
    /// }
    ///
    /// fn main() -> braid_bridge::Result<()> {
    ///     // In a worker process, this call serves jobs and never returns.
    ///     let pool = ProcessPool::builder().workers(2).register(sum_of_squares).build()?;
    ///     let futures = (1..=4)
    ///         .map(|n| pool.submit(sum_of_squares, n * 1000))
    ///         .collect::<braid_bridge::Result<Vec<_>>>()?;
    ///     let sums: Vec<u64> = futures
    ///         .into_iter()
    ///         .map(|f| f.into_result(None))
    ///         .collect::<braid_bridge::Result<_>>()?;
    ///     assert_eq!(sums[0], 333_833_500);
    ///     pool.shutdown(true, false);
    ///     Ok(())
    /// }
    /// ```
    pub struct ProcessPool {
        core: Arc<Core>,
        functions: Vec<(TypeId, &'static str)>,
        threads: Mutex<Vec<JoinHandle<()>>>,
        job_timeout: Option<Duration>,
        drop_timeout: Duration,
        id: usize,
    }

    impl ProcessPool {
        /// The most workers a pool may have (1024): each is a process, with a thread in
        /// this one to supervise it. [`build`](ProcessPoolBuilder::build) refuses more with
        /// an `InvalidState` error.
        ///
        /// ```
        /// use braid_bridge::{ErrorKind, ProcessPool};
        /// let err = ProcessPool::builder()
        ///     .workers(ProcessPool::MAX_WORKERS + 1)
        ///     .build()
        ///     .unwrap_err();
        /// assert_eq!(err.kind(), ErrorKind::InvalidState);
        /// ```
        pub const MAX_WORKERS: usize = 1024;

        /// A [`ProcessPoolBuilder`] with the defaults.
        ///
        /// ```
        /// let builder = braid_bridge::ProcessPool::builder();
        /// # drop(builder);
        /// ```
        pub fn builder() -> ProcessPoolBuilder {
            ProcessPoolBuilder {
                workers: std::thread::available_parallelism()
                    .map_or(1, |n| n.get())
                    .min(ProcessPool::MAX_WORKERS),
                max_tasks_per_child: None,
                initializer: None,
                functions: Vec::new(),
                job_timeout: None,
                max_crashes: 5,
                crash_window: Duration::from_secs(60),
                kill_grace: Duration::from_secs(2),
                startup_timeout: Duration::from_secs(30),
                drop_timeout: Duration::from_secs(5),
                worker_args: None,
            }
        }

        /// Runs the registered function `f` on `arg` in a worker; the future settles with
        /// its result. The argument is encoded here, before the job is queued.
        ///
        /// ```
        /// fn shout(s: String) -> String { s.to_uppercase() }
        /// # fn main() -> braid_bridge::Result<()> {
        /// let pool = braid_bridge::ProcessPool::builder().workers(1).register(shout).build()?;
        /// let fut = pool.submit(shout, "hi".to_owned())?;
        /// assert_eq!(fut.result(None)?, "HI");
        /// # Ok(()) }
        /// ```
        ///
        /// # Errors
        ///
        /// At once: `InvalidState` if `f` is not registered; kind `Other` if the argument
        /// cannot be serialised or is too large (over 1 GiB encoded); `BrokenExecutor` once
        /// the pool is broken; Closed after shutdown. Through the future: `Panicked`,
        /// `BrokenExecutor` (the worker died), `Timeout`, Cancelled, or kind `Other` if the
        /// result does not decode or is too large (over 1 GiB encoded). A panic in the
        /// argument's `Deserialize` or the result's `Serialize` (in the worker) or
        /// `Deserialize` (here) is `Panicked`, as one in `f` is.
        pub fn submit<F, A, R>(&self, f: F, arg: A) -> Result<ConcurrentFuture<R>>
        where
            F: Fn(A) -> R + Copy + 'static,
            A: Serialize,
            R: DeserializeOwned + Send + 'static,
        {
            self.submit_job(f, &arg, self.job_timeout)
        }

        /// As [`submit`](ProcessPool::submit), with a time limit counted from when a worker
        /// takes the job (sending it the argument counts, as does sending back the result):
        /// past it the worker is stopped and the job fails with `Timeout`, once, even if the
        /// worker had not received the whole argument yet.
        ///
        /// ```
        /// use std::time::Duration;
        /// fn nap(ms: u64) { std::thread::sleep(Duration::from_millis(ms)) }
        /// # fn main() -> braid_bridge::Result<()> {
        /// let pool = braid_bridge::ProcessPool::builder().workers(1).register(nap).build()?;
        /// let late = pool.submit_with_timeout(nap, 60_000, Duration::from_millis(100))?;
        /// assert!(late.result(None).unwrap_err().is_timeout());
        /// # Ok(()) }
        /// ```
        ///
        /// # Errors
        ///
        /// As [`submit`](ProcessPool::submit).
        pub fn submit_with_timeout<F, A, R>(
            &self,
            f: F,
            arg: A,
            limit: Duration,
        ) -> Result<ConcurrentFuture<R>>
        where
            F: Fn(A) -> R + Copy + 'static,
            A: Serialize,
            R: DeserializeOwned + Send + 'static,
        {
            self.submit_job(f, &arg, Some(limit))
        }

        fn submit_job<F, A, R>(
            &self,
            _f: F,
            arg: &A,
            timeout: Option<Duration>,
        ) -> Result<ConcurrentFuture<R>>
        where
            F: 'static,
            A: Serialize,
            R: DeserializeOwned + Send + 'static,
        {
            let type_id = TypeId::of::<F>();
            let Some(func) = self.functions.iter().position(|(t, _)| *t == type_id) else {
                let name = type_name::<F>();
                return Err(Error::new(
                    ErrorKind::InvalidState,
                    format!(
                        "`{name}` is not registered with this ProcessPool: add .register({}) to its builder",
                        name.rsplit("::").next().unwrap_or(name)
                    ),
                ));
            };
            let name = self.functions[func].1;
            let payload = postcard::to_allocvec(arg).map_err(|e| {
                Error::new(
                    ErrorKind::Other,
                    format!("could not serialise the argument of `{name}`: {e}"),
                )
            })?;
            if payload.len() > MAX_PAYLOAD {
                // Refused here: sent, it would fail on the way and look like a dead worker.
                let n = payload.len();
                return Err(Error::new(
                    ErrorKind::Other,
                    format!(
                        "the argument of `{name}` is too large: {n} bytes, at most {MAX_PAYLOAD}"
                    ),
                ));
            }
            let func = u32::try_from(func).map_err(|_| Error::msg("too many functions"))?;
            let (fut, completer) = ConcurrentFuture::pair();
            let id = self.core.next_id();
            let core = self.core.clone();
            completer.on_cancel(move || core.cancel(id, Instant::now()));
            self.core.submit(Job {
                id,
                func,
                payload,
                timeout,
                handle: Box::new(Typed { completer, name }),
            })?;
            Ok(fut)
        }

        /// Shuts the pool down: later submissions fail with Closed. With `cancel_futures`,
        /// queued jobs are cancelled (they never run); otherwise they still run. With `wait`,
        /// returns once every worker has exited and been reaped (called from the pool's own
        /// thread, in a done callback, it does not wait).
        ///
        /// ```
        /// fn inc(x: u8) -> u8 { x + 1 }
        /// # fn main() -> braid_bridge::Result<()> {
        /// let pool = braid_bridge::ProcessPool::builder().workers(1).register(inc).build()?;
        /// let fut = pool.submit(inc, 1)?;
        /// pool.shutdown(true, false);
        /// assert_eq!(fut.result(None)?, 2);
        /// assert!(pool.worker_pids().is_empty());
        /// assert!(pool.submit(inc, 2).is_err());
        /// # Ok(()) }
        /// ```
        pub fn shutdown(&self, wait: bool, cancel_futures: bool) {
            self.core.shutdown(cancel_futures);
            if wait && !self.on_own_thread() {
                self.core.wait_gone(None);
                self.join_threads();
            }
        }

        /// The pids of the live worker processes (for monitoring, and for tests that kill
        /// one).
        ///
        /// ```
        /// # fn main() -> braid_bridge::Result<()> {
        /// let pool = braid_bridge::ProcessPool::builder().workers(2).build()?;
        /// assert!(pool.worker_pids().len() <= 2);
        /// # Ok(()) }
        /// ```
        pub fn worker_pids(&self) -> Vec<u32> {
            self.core.pids()
        }

        /// How many workers the pool runs.
        ///
        /// ```
        /// # fn main() -> braid_bridge::Result<()> {
        /// assert_eq!(braid_bridge::ProcessPool::builder().workers(2).build()?.workers(), 2);
        /// # Ok(()) }
        /// ```
        pub fn workers(&self) -> usize {
            self.core.config().workers
        }

        /// Jobs waiting for a worker.
        ///
        /// ```
        /// # fn main() -> braid_bridge::Result<()> {
        /// assert_eq!(braid_bridge::ProcessPool::builder().workers(1).build()?.queued(), 0);
        /// # Ok(()) }
        /// ```
        pub fn queued(&self) -> usize {
            self.core.queued()
        }

        /// True once too many workers crashed: every job now fails with `BrokenExecutor`.
        ///
        /// ```
        /// # fn main() -> braid_bridge::Result<()> {
        /// assert!(!braid_bridge::ProcessPool::builder().workers(1).build()?.is_broken());
        /// # Ok(()) }
        /// ```
        pub fn is_broken(&self) -> bool {
            self.core.broken().is_some()
        }

        fn on_own_thread(&self) -> bool {
            THREAD_OF_POOL.with(Cell::get) == self.id
        }

        fn join_threads(&self) {
            let handles = std::mem::take(&mut *self.threads.lock());
            for handle in handles {
                let _ = handle.join();
            }
        }
    }

    impl Drop for ProcessPool {
        /// Shuts down and waits, at most the [`drop_timeout`](ProcessPoolBuilder::drop_timeout),
        /// for queued and running jobs; then cancels what is left, stops the workers
        /// (SIGTERM, then SIGKILL after the grace period) and reaps them.
        fn drop(&mut self) {
            if self.on_own_thread() {
                // Dropped in a done callback: the slot's thread cannot wait for itself.
                self.core.terminate();
                return;
            }
            self.core.shutdown(false);
            let deadline = Instant::now().checked_add(self.drop_timeout);
            if !self.core.wait_gone(deadline) {
                self.core.terminate();
                let grace = self.core.config().kill_grace + Duration::from_secs(5);
                if !self.core.wait_gone(Instant::now().checked_add(grace)) {
                    // A worker that even SIGKILL does not end (stuck in the kernel): leave
                    // its thread to reap it rather than hang here.
                    return;
                }
            }
            self.join_threads();
        }
    }

    impl fmt::Debug for ProcessPool {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("ProcessPool")
                .field("workers", &self.core.config().workers)
                .field(
                    "functions",
                    &self.functions.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
                )
                .field("core", &self.core)
                .finish()
        }
    }

    /// Starts and settles a job's future, decoding the worker's answer as `R`.
    struct Typed<R> {
        completer: Completer<R>,
        name: &'static str,
    }

    impl<R: DeserializeOwned + Send + 'static> JobHandle for Typed<R> {
        fn start(&self) -> bool {
            self.completer.set_running_or_notify_cancel()
        }

        fn finish(self: Box<Self>, outcome: Result<Vec<u8>>) {
            let name = self.name;
            let decode = |bytes: Vec<u8>| {
                postcard::from_bytes::<R>(&bytes).map_err(|e| {
                    Error::new(
                        ErrorKind::Other,
                        format!("could not decode the result of `{name}`: {e}"),
                    )
                })
            };
            // `R`'s `Deserialize` is the user's code, run on the slot's thread: a panic in it
            // fails this job as a panic in the job would, and must not end the thread.
            let result = outcome.and_then(|bytes| {
                catch_unwind(AssertUnwindSafe(|| decode(bytes))).unwrap_or_else(|payload| {
                    let message = worker::panic_text(payload);
                    Err(Error::new(
                        ErrorKind::Panicked,
                        format!("while decoding the result of `{name}`: {message}"),
                    ))
                })
            });
            self.completer.complete(result);
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use std::sync::mpsc;

        /// A pool of three slots whose workers would be `/bin/true` (which exits at once,
        /// saying nothing), built with a spawner that fails at its `fail_at`-th thread:
        /// None if `start_threads` did not return within 5 s.
        fn build_failing_at(fail_at: usize) -> Option<Result<ProcessPool>> {
            let config = Config {
                workers: 3,
                max_tasks_per_child: None,
                max_crashes: 1000,
                crash_window: Duration::from_secs(60),
                kill_grace: Duration::from_secs(2),
                startup_timeout: Duration::from_secs(30),
                names: Vec::new(),
            };
            let pool = ProcessPool {
                core: Arc::new(Core::new(config, supervisor::send_signal)),
                functions: Vec::new(),
                threads: Mutex::new(Vec::new()),
                job_timeout: None,
                drop_timeout: Duration::MAX,
                id: NEXT_POOL_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            };
            let launch = Arc::new(Launch {
                exe: "/bin/true".into(),
                args: Vec::new(),
                target: String::new(),
                functions: Vec::new(),
                rendezvous: Rendezvous::new(3).expect("a directory for the sockets"),
            });
            let (tx, rx) = mpsc::channel();
            // On a thread of its own: without the fix, it never returns.
            std::thread::spawn(move || {
                let mut spawned = 0;
                let result = start_threads(pool, &launch, |name, body| {
                    spawned += 1;
                    if spawned == fail_at {
                        Err(std::io::Error::other("no thread for you"))
                    } else {
                        thread::spawn_named(name, None, body)
                    }
                });
                let _ = tx.send(result);
            });
            rx.recv_timeout(Duration::from_secs(5)).ok()
        }

        #[test]
        fn a_pool_thread_that_cannot_start_fails_build_at_once_even_with_no_drop_timeout() {
            // The first slot's thread, a later one, and the monitor (after all three slots').
            for fail_at in [1, 2, 4] {
                let result = build_failing_at(fail_at)
                    .unwrap_or_else(|| panic!("build hung when thread {fail_at} failed"));
                let err = result.expect_err("a thread could not start");
                assert_eq!(err.kind(), ErrorKind::Io, "{err}");
                assert!(err.to_string().contains("no thread for you"), "{err}");
            }
        }
    }
}
