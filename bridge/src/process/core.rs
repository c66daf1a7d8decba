//! The supervisor's shared state: the job queue, the in-flight table (one slot per worker),
//! cancellation, time limits and crash counting, behind one mutex and with no I/O, so that
//! the loom model `tests/loom_process_pool.rs` can run it.
//!
//! The I/O side (`supervisor.rs`) drives it: each slot's thread reports its worker's life
//! (`spawning`, `spawned`, `ready`, `next_job`, `job_done`, `release`, `reaped`); the
//! monitor thread sleeps in `run_monitor` until the next deadline; `submit`, `cancel`,
//! `shutdown` and `terminate` come from users' threads.
//!
//! ## A slot's life
//!
//! ```text
//!  spawning ─spawned─► starting ─ready─► ready ─next_job─► busy ─job_done─► ready ─► …
//!     ▲                   │                │                 │
//!     │                   └────────────────┴─────────────────┴─ the worker ended (its socket
//!     │                                                          closed): release, reap
//!     └─────────────────────────── reaped ◄──────────────────────┘
//!  spawning ─► gone   (shut down and nothing queued, broken, or terminating)
//! ```
//!
//! A job is in exactly one place: the queue, one slot's `job`, or settled. Whoever takes it
//! out (dispatch, cancel, crash, shutdown) settles it, outside the lock, since settling runs
//! the future's done callbacks.
//!
//! ## Stopping a worker
//!
//! `stop` on a slot records why (cancel, time limit, retirement, shutdown) and when to
//! escalate. Cancellation and time limits send SIGTERM at once and SIGKILL at `escalate_at`;
//! a retiring or idle worker at shutdown is asked to leave (its connection is ended) and is
//! killed only if it has not gone by `escalate_at`. When the worker's end is reaped, the
//! reason decides what its job gets: Cancelled, Timeout, or (no reason: a crash)
//! `BrokenExecutor` with the pid and how it ended. A job's time limit counts from its
//! dispatch, so it may expire while the argument is still being written: the write then
//! fails and `unsent` gives the job what the reason says at once, rather than queueing it
//! again (only a job whose worker died on its own before it had the job goes back).
//!
//! ## Signals never reach a recycled pid
//!
//! A slot's `pid` is set at spawn and cleared by `release` before the slot's thread reaps
//! the process; every signal is sent under the lock, to a `pid` still set. An unreaped
//! process keeps its pid, so no signal can reach another process that reused it.
//!
//! ## Crashes
//!
//! A worker that ends on its own (a signal it did not get from us, an exit, a malformed
//! frame, not becoming ready in time) is a crash: it fails only its own job and is replaced.
//! When `max_crashes` crashes fall within `crash_window`, the pool is broken: every queued
//! job fails at once with `BrokenExecutor`, later submissions are refused, running jobs
//! finish, and no worker is started again.

use crate::sync::{Condvar, Mutex, MutexGuard};
use crate::{Error, ErrorKind, Result};
use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// The producing side of one job with its result type erased: how the core starts and
/// settles a job's future.
pub trait JobHandle: Send {
    /// Marks the job running; false if its future was cancelled first (the job must then
    /// never run).
    fn start(&self) -> bool;
    /// Settles the job with the worker's answer (the encoded result) or an error.
    fn finish(self: Box<Self>, outcome: Result<Vec<u8>>);
}

/// A signal the core sends to a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sig {
    /// Please stop (SIGTERM).
    Term,
    /// Stop now (SIGKILL).
    Kill,
}

/// How the pool supervises its workers.
#[derive(Clone, Debug)]
pub struct Config {
    /// Worker processes (slots).
    pub workers: usize,
    /// Jobs a worker runs before it is replaced (`None`: no limit).
    pub max_tasks_per_child: Option<usize>,
    /// Crashes within `crash_window` that break the pool.
    pub max_crashes: usize,
    /// The window in which crashes are counted.
    pub crash_window: Duration,
    /// Between SIGTERM (or ending a worker's connection) and SIGKILL.
    pub kill_grace: Duration,
    /// How long a new worker may take to become ready before it counts as crashed.
    pub startup_timeout: Duration,
    /// The registered functions' names, by index, for messages.
    pub names: Vec<String>,
}

/// A job as submitted.
pub struct Job {
    /// From [`Core::next_id`].
    pub id: u64,
    /// The registered function's index.
    pub func: u32,
    /// The encoded argument.
    pub payload: Vec<u8>,
    /// The job's time limit, counted from its dispatch: the sending of its argument counts.
    pub timeout: Option<Duration>,
    /// Starts and settles its future.
    pub handle: Box<dyn JobHandle>,
}

/// A job handed to a slot's thread to send to its worker.
#[derive(Debug)]
pub struct Dispatch {
    /// The job's id (the worker's answer carries it back).
    pub id: u64,
    /// The registered function's index.
    pub func: u32,
    /// The encoded argument.
    pub payload: Vec<u8>,
}

/// What a slot's thread does next.
#[derive(Debug)]
pub enum Next {
    /// Send this job to the worker.
    Run(Dispatch),
    /// Let this worker go (its quota is used up, or it is being stopped) and start another.
    Retire,
    /// Let this worker go; the slot ends (shut down, broken, or terminating).
    Exit,
}

/// How a worker process ended, as the slot's thread saw it.
#[derive(Debug)]
pub struct Exit {
    /// Its pid.
    pub pid: u32,
    /// How it ended: "was killed by signal 9 (SIGKILL)", "exited with status 3".
    pub status: String,
    /// What went wrong on the connection, if anything (a malformed frame).
    pub failure: Option<String>,
}

#[derive(Clone, Debug)]
enum Reason {
    Cancelled,
    Timeout(Duration),
    StartupTimeout,
    Retire,
    Shutdown,
    Terminate,
}

struct Stop {
    reason: Reason,
    /// When to send SIGKILL if the worker is still there.
    escalate_at: Option<Instant>,
}

struct Running {
    id: u64,
    func: u32,
    limit: Option<Duration>,
    deadline: Option<Instant>,
    handle: Box<dyn JobHandle>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Spawning,
    /// `deadline: None`: the startup timeout is too long to be a point in time (no limit).
    Starting {
        deadline: Option<Instant>,
    },
    Ready,
    Gone,
}

struct Slot {
    /// Set from spawn until `release`: the only pid a signal may go to.
    pid: Option<u32>,
    phase: Phase,
    job: Option<Running>,
    stop: Option<Stop>,
    tasks_done: usize,
}

struct State {
    queue: VecDeque<Job>,
    slots: Vec<Slot>,
    /// When recent crashes happened (those within the window).
    crashes: VecDeque<Instant>,
    broken: Option<Error>,
    shutdown: bool,
    terminating: bool,
    next_id: u64,
}

type Signal = Box<dyn Fn(u32, Sig) + Send + Sync>;

/// The supervisor's state machine (see the module docs).
pub struct Core {
    state: Mutex<State>,
    /// Slot threads waiting for a job.
    work: Condvar,
    /// The monitor (deadlines changed) and shutdown (a slot ended).
    events: Condvar,
    config: Config,
    signal: Signal,
}

/// A job taken out of the state with the outcome it is to be settled with.
type Settling = (Box<dyn JobHandle>, Result<Vec<u8>>);

/// Settled outside the lock: what an operation took out of the state.
#[must_use]
struct Settle(Vec<Settling>);

impl Settle {
    fn none() -> Settle {
        Settle(Vec::new())
    }

    fn run(self) {
        for (handle, outcome) in self.0 {
            handle.finish(outcome);
        }
    }
}

impl Core {
    /// A core for `config.workers` slots; `signal` sends a signal to a pid (called under the
    /// lock, so it must not call back into the core).
    pub fn new(config: Config, signal: impl Fn(u32, Sig) + Send + Sync + 'static) -> Core {
        let slots = (0..config.workers)
            .map(|_| Slot {
                pid: None,
                phase: Phase::Spawning,
                job: None,
                stop: None,
                tasks_done: 0,
            })
            .collect();
        Core {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                slots,
                crashes: VecDeque::new(),
                broken: None,
                shutdown: false,
                terminating: false,
                next_id: 0,
            }),
            work: Condvar::new(),
            events: Condvar::new(),
            config,
            signal: Box::new(signal),
        }
    }

    /// A core that refuses every job with `error` and has no live slot (a pool that never
    /// starts workers).
    pub fn refusing(config: Config, error: Error) -> Core {
        let core = Core::new(config, |_, _| {});
        {
            let mut st = core.state.lock();
            st.broken = Some(error);
            for slot in &mut st.slots {
                slot.phase = Phase::Gone;
            }
        }
        core
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A fresh job id.
    pub fn next_id(&self) -> u64 {
        let mut st = self.state.lock();
        st.next_id += 1;
        st.next_id
    }

    /// Queues `job`.
    ///
    /// # Errors
    ///
    /// `BrokenExecutor` once the pool is broken, Closed after shutdown (the job is dropped
    /// unrun).
    pub fn submit(&self, job: Job) -> Result<()> {
        let mut st = self.state.lock();
        let error = match (&st.broken, st.shutdown) {
            (Some(broken), _) => broken.clone(),
            (None, true) => Error::new(ErrorKind::Closed, "the process pool is shut down"),
            (None, false) => {
                st.queue.push_back(job);
                drop(st);
                self.work.notify_all();
                return Ok(());
            }
        };
        drop(st);
        drop(job);
        Err(error)
    }

    /// Cancels job `id` (its future is already cancelled): a queued job leaves the queue and
    /// never runs; a running one has its worker stopped.
    pub fn cancel(&self, id: u64, now: Instant) {
        let mut st = self.state.lock();
        if let Some(pos) = st.queue.iter().position(|j| j.id == id) {
            let job = st.queue.remove(pos);
            drop(st);
            drop(job); // settles the (cancelled) future: the producer is gone for good
            return;
        }
        let mut stopped = false;
        for slot in &mut st.slots {
            let running = slot.job.as_ref().is_some_and(|j| j.id == id);
            if running && slot.stop.is_none() {
                self.stop(slot, Reason::Cancelled, Some(Sig::Term), now);
                stopped = true;
            }
        }
        drop(st);
        if stopped {
            self.events.notify_all();
        }
    }

    fn stop(&self, slot: &mut Slot, reason: Reason, sig: Option<Sig>, now: Instant) {
        slot.stop = Some(Stop {
            reason,
            escalate_at: now.checked_add(self.config.kill_grace),
        });
        if let (Some(pid), Some(sig)) = (slot.pid, sig) {
            (self.signal)(pid, sig);
        }
    }

    /// The slot's thread is about to start a worker: false if the slot ends instead (shut
    /// down with nothing queued, broken, or terminating).
    pub fn spawning(&self, slot: usize) -> bool {
        let mut st = self.state.lock();
        let end = st.broken.is_some() || st.terminating || (st.shutdown && st.queue.is_empty());
        let s = &mut st.slots[slot];
        s.pid = None;
        s.stop = None;
        s.tasks_done = 0;
        if end {
            s.phase = Phase::Gone;
            drop(st);
            self.events.notify_all();
            false
        } else {
            s.phase = Phase::Spawning;
            true
        }
    }

    /// The slot's worker was started with `pid`.
    pub fn spawned(&self, slot: usize, pid: u32) {
        let now = Instant::now();
        let mut st = self.state.lock();
        let terminating = st.terminating;
        // An overflowing deadline (`Duration::MAX`) is no limit, as for the other timeouts.
        let deadline = now.checked_add(self.config.startup_timeout);
        let s = &mut st.slots[slot];
        s.pid = Some(pid);
        s.phase = Phase::Starting { deadline };
        if terminating {
            self.stop(s, Reason::Terminate, Some(Sig::Term), now);
        }
        drop(st);
        self.events.notify_all();
    }

    /// Slots `from..` never got a thread (one could not start): they count as ended, since
    /// nothing else would end them and dropping the pool waits until every slot has.
    pub fn never_started(&self, from: usize) {
        let mut st = self.state.lock();
        for s in st.slots.iter_mut().skip(from) {
            s.phase = Phase::Gone;
        }
        drop(st);
        self.events.notify_all();
    }

    /// The slot's worker could not be started: counts as a crash (at `now`).
    pub fn spawn_failed(&self, slot: usize, error: &str, now: Instant) {
        let mut st = self.state.lock();
        let message = format!("could not start a worker process: {error}");
        let settle = self.record_crash(&mut st, now, &message);
        st.slots[slot].phase = Phase::Spawning;
        drop(st);
        self.events.notify_all();
        self.work.notify_all();
        settle.run();
    }

    /// The slot's worker said hello: false if it is being stopped already (the slot's
    /// thread then lets it go).
    pub fn ready(&self, slot: usize) -> bool {
        let mut st = self.state.lock();
        let s = &mut st.slots[slot];
        s.phase = Phase::Ready;
        s.stop.is_none()
    }

    /// Something that will not get better by retrying (a worker that reached a different
    /// pool): the pool is broken at once with `message`.
    pub fn fatal(&self, message: &str) {
        let mut st = self.state.lock();
        let settle = self.break_pool(&mut st, message.to_owned());
        drop(st);
        self.work.notify_all();
        self.events.notify_all();
        settle.run();
    }

    /// The next thing for the slot's (ready, idle) worker to do; blocks until there is one.
    pub fn next_job(&self, slot: usize) -> Next {
        loop {
            if let Some(next) = self.take_next(slot, None) {
                return next;
            }
        }
    }

    /// As [`next_job`](Core::next_job), but gives up at `until` (`None`: the worker is still
    /// idle), so that the slot's thread can check that its idle worker is still alive.
    pub fn next_job_until(&self, slot: usize, until: Instant) -> Option<Next> {
        self.take_next(slot, Some(until))
    }

    fn take_next(&self, slot: usize, until: Option<Instant>) -> Option<Next> {
        let mut st = self.state.lock();
        // Jobs cancelled before they started: settled outside the lock.
        let mut refused: Vec<Job> = Vec::new();
        let next = loop {
            let now = Instant::now();
            let ending = st.terminating || st.broken.is_some();
            let s = &mut st.slots[slot];
            if let Some(stop) = &s.stop {
                break Some(match stop.reason {
                    Reason::Shutdown | Reason::Terminate => Next::Exit,
                    _ => Next::Retire,
                });
            }
            if ending {
                self.stop(s, Reason::Shutdown, None, now);
                break Some(Next::Exit);
            }
            if self
                .config
                .max_tasks_per_child
                .is_some_and(|max| s.tasks_done >= max)
            {
                self.stop(s, Reason::Retire, None, now);
                break Some(Next::Retire);
            }
            if let Some(job) = st.queue.pop_front() {
                if !job.handle.start() && !fault!(ProcessPoolRunsCancelledJob) {
                    refused.push(job);
                    continue;
                }
                let deadline = job.timeout.and_then(|t| now.checked_add(t));
                let dispatch = Dispatch {
                    id: job.id,
                    func: job.func,
                    payload: job.payload,
                };
                st.slots[slot].job = Some(Running {
                    id: job.id,
                    func: job.func,
                    limit: job.timeout,
                    deadline,
                    handle: job.handle,
                });
                if deadline.is_some() {
                    self.events.notify_all();
                }
                break Some(Next::Run(dispatch));
            }
            if st.shutdown {
                self.stop(&mut st.slots[slot], Reason::Shutdown, None, now);
                break Some(Next::Exit);
            }
            match until {
                Some(until) => {
                    if self.work.wait_until(&mut st, until) {
                        break None;
                    }
                }
                None => self.work.wait(&mut st),
            }
        };
        drop(st);
        if matches!(next, Some(Next::Retire | Next::Exit)) {
            // A graceful stop has an escalation deadline for the monitor.
            self.events.notify_all();
        }
        drop(refused);
        next
    }

    /// Job `id`, just dispatched to the slot, never reached its worker (the worker was gone
    /// before the job could be written to it): it goes back to the front of the queue, as it
    /// did not run, unless its worker was stopped for it (a cancel, its time limit), when it
    /// ends as a running job stopped for that reason does, or the pool is broken or
    /// terminating, when it fails as a queued job does. `payload` is its argument, handed back.
    pub fn unsent(&self, slot: usize, id: u64, payload: Vec<u8>) {
        let mut st = self.state.lock();
        let s = &mut st.slots[slot];
        let Some(job) = s.job.take_if(|j| j.id == id) else {
            return;
        };
        // Set from spawn until `release`, which the slot's thread calls after this.
        let pid = s.pid.unwrap_or_default();
        // We stopped the worker while the argument was being written, which is why the write
        // failed. Queued again, the job would be stopped again on every new worker (its time
        // limit counts from each dispatch) and its future never settled; a cancelled one would
        // wait for a new worker to refuse it.
        let stopped = match s.stop.as_ref().map(|stop| &stop.reason) {
            Some(Reason::Cancelled) => Some(cancelled_while_running(pid)),
            Some(Reason::Timeout(limit)) => Some(self.past_time_limit(*limit, Some(job.func), pid)),
            _ => None,
        };
        // Its future is running already: `start` says so again when it is dispatched anew.
        let job = Job {
            id,
            func: job.func,
            payload,
            timeout: job.limit,
            handle: job.handle,
        };
        let error = if let Some(stopped) = stopped {
            stopped
        } else if let Some(broken) = &st.broken {
            broken.clone()
        } else if st.terminating {
            Error::cancelled(Some(
                "the process pool was dropped before the job started".to_owned(),
            ))
        } else {
            st.queue.push_front(job);
            drop(st);
            self.work.notify_all();
            return;
        };
        drop(st);
        job.handle.finish(Err(error));
    }

    /// The slot's thread is ending abnormally (it panicked outside a worker's conversation):
    /// the slot is gone and its job fails; once no slot is left the pool is broken, so that no
    /// queued job waits for a worker that will never come.
    pub fn abandon(&self, slot: usize, message: &str) {
        let mut st = self.state.lock();
        let s = &mut st.slots[slot];
        s.pid = None;
        s.stop = None;
        s.phase = Phase::Gone;
        let job = s.job.take();
        let error = Error::new(ErrorKind::BrokenExecutor, message.to_owned());
        let settle = if st.slots.iter().all(|s| s.phase == Phase::Gone) {
            self.break_pool(&mut st, message.to_owned())
        } else {
            Settle::none()
        };
        drop(st);
        self.slot_ended(job.map(|job| (job.handle, Err(error))), settle);
    }

    /// The slot's worker answered job `id`: settles it. False if the slot was not running
    /// that job (a confused worker: the slot's thread treats it as a broken connection).
    pub fn job_done(&self, slot: usize, id: u64, outcome: Result<Vec<u8>>) -> bool {
        let handle = {
            let mut st = self.state.lock();
            let s = &mut st.slots[slot];
            match s.job.take() {
                Some(job) if job.id == id => {
                    s.tasks_done += 1;
                    job.handle
                }
                other => {
                    s.job = other;
                    return false;
                }
            }
        };
        handle.finish(outcome);
        true
    }

    /// The slot's worker has closed its connection (it ended, or is ending): SIGKILL it to be
    /// sure it ends (a process that has exited ignores signals and keeps its exit status) and
    /// forget its pid, so that nothing signals it once it is reaped.
    pub fn release(&self, slot: usize) {
        let mut st = self.state.lock();
        if let Some(pid) = st.slots[slot].pid.take() {
            (self.signal)(pid, Sig::Kill);
        }
    }

    /// The slot's worker was reaped: settles its job (Cancelled, Timeout, or a crash's
    /// `BrokenExecutor`) and counts a crash (at `now`). The slot's thread then calls
    /// [`spawning`](Core::spawning).
    pub fn reaped(&self, slot: usize, exit: &Exit, now: Instant) {
        let mut st = self.state.lock();
        let s = &mut st.slots[slot];
        s.pid = None;
        let stop = s.stop.take();
        let job = s.job.take();
        let was_starting = matches!(s.phase, Phase::Starting { .. });
        s.phase = Phase::Spawning;
        let pid = exit.pid;
        let what = match &job {
            Some(job) => format!("while running `{}`", self.name(job.func)),
            None if was_starting => "before it was ready: a worker runs the program again from the start and must reach the same ProcessPool::build() as its parent (see ProcessPool's documentation)".to_owned(),
            None => "while idle".to_owned(),
        };
        let mut crash = format!("worker process {pid} {} {what}", exit.status);
        if let Some(failure) = &exit.failure {
            crash = format!("{crash} ({failure})");
        }
        let (error, crashed) = match stop.map(|s| s.reason) {
            Some(Reason::Cancelled) => (cancelled_while_running(pid), false),
            Some(Reason::Timeout(limit)) => (
                self.past_time_limit(limit, job.as_ref().map(|j| j.func), pid),
                false,
            ),
            Some(Reason::Terminate) => (
                Error::cancelled(Some(format!(
                    "the process pool was dropped while the job ran; worker process {pid} was stopped"
                ))),
                false,
            ),
            Some(Reason::StartupTimeout) => (
                Error::new(
                    ErrorKind::BrokenExecutor,
                    format!(
                        "worker process {pid} did not become ready within {:?} and was killed",
                        self.config.startup_timeout
                    ),
                ),
                true,
            ),
            Some(Reason::Retire | Reason::Shutdown) => {
                (Error::new(ErrorKind::BrokenExecutor, crash.clone()), false)
            }
            None => (Error::new(ErrorKind::BrokenExecutor, crash.clone()), true),
        };
        let settle = if crashed {
            let message = error.message().unwrap_or(&crash).to_owned();
            self.record_crash(&mut st, now, &message)
        } else {
            Settle::none()
        };
        drop(st);
        self.slot_ended(job.map(|job| (job.handle, Err(error))), settle);
    }

    /// After a slot's worker is gone (reaped, or its thread gave up), outside the lock: wakes
    /// the slots' threads and the monitor, then settles the slot's job, if it had one, before
    /// the jobs its end failed.
    fn slot_ended(&self, job: Option<Settling>, mut settle: Settle) {
        if let Some(job) = job {
            settle.0.insert(0, job);
        }
        self.work.notify_all();
        self.events.notify_all();
        settle.run();
    }

    /// What a job gets when its worker `pid` was stopped because it ran past `limit`.
    fn past_time_limit(&self, limit: Duration, func: Option<u32>, pid: u32) -> Error {
        Error::new(
            ErrorKind::Timeout,
            format!(
                "`{}` ran past its time limit of {limit:?}; worker process {pid} was stopped",
                func.map_or("the job", |f| self.name(f))
            ),
        )
    }

    fn name(&self, func: u32) -> &str {
        self.config
            .names
            .get(func as usize)
            .map_or("an unknown function", String::as_str)
    }

    fn record_crash(&self, st: &mut MutexGuard<'_, State>, now: Instant, message: &str) -> Settle {
        let window = self.config.crash_window;
        while st
            .crashes
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > window)
        {
            st.crashes.pop_front();
        }
        st.crashes.push_back(now);
        if st.crashes.len() >= self.config.max_crashes && st.broken.is_none() {
            let n = st.crashes.len();
            let crashes = if n == 1 {
                "1 worker crash".to_owned()
            } else {
                format!("{n} worker crashes")
            };
            self.break_pool(
                st,
                format!(
                    "the process pool is broken after {crashes} within {window:?}; the last: {message}"
                ),
            )
        } else {
            Settle::none()
        }
    }

    fn break_pool(&self, st: &mut MutexGuard<'_, State>, message: String) -> Settle {
        let error = Error::new(ErrorKind::BrokenExecutor, message);
        if st.broken.is_none() {
            st.broken = Some(error.clone());
        }
        if fault!(ProcessPoolBrokenKeepsQueue) {
            return Settle::none();
        }
        Settle(
            st.queue
                .drain(..)
                .map(|job| (job.handle, Err(error.clone())))
                .collect(),
        )
    }

    /// Deals with every deadline that has passed by `now` (time limits, escalations,
    /// startups); returns the next one.
    pub fn expire(&self, now: Instant) -> Option<Instant> {
        let mut st = self.state.lock();
        self.expire_locked(&mut st, now)
    }

    fn expire_locked(&self, st: &mut State, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut upcoming = |at: Instant| next = Some(next.map_or(at, |n: Instant| n.min(at)));
        for slot in &mut st.slots {
            if slot.stop.is_none() {
                if let Phase::Starting {
                    deadline: Some(deadline),
                } = slot.phase
                {
                    if deadline <= now {
                        self.stop(slot, Reason::StartupTimeout, Some(Sig::Kill), now);
                    } else {
                        upcoming(deadline);
                    }
                }
            }
            if slot.stop.is_none() {
                let timed = slot
                    .job
                    .as_ref()
                    .and_then(|j| Some((j.deadline?, j.limit?)));
                if let Some((deadline, limit)) = timed {
                    if deadline <= now {
                        self.stop(slot, Reason::Timeout(limit), Some(Sig::Term), now);
                    } else {
                        upcoming(deadline);
                    }
                }
            }
            if let Some(stop) = &mut slot.stop {
                if let Some(at) = stop.escalate_at {
                    if at <= now {
                        stop.escalate_at = None;
                        if let Some(pid) = slot.pid {
                            (self.signal)(pid, Sig::Kill);
                        }
                    } else {
                        upcoming(at);
                    }
                }
            }
        }
        next
    }

    /// The monitor thread's body: sleeps until the next deadline, deals with it, and
    /// returns once every slot has ended.
    pub fn run_monitor(&self) {
        let mut st = self.state.lock();
        loop {
            if st.slots.iter().all(|s| s.phase == Phase::Gone) {
                return;
            }
            match self.expire_locked(&mut st, Instant::now()) {
                Some(deadline) => {
                    self.events.wait_until(&mut st, deadline);
                }
                None => self.events.wait(&mut st),
            }
        }
    }

    /// Shuts down: later submissions are refused with Closed; with `cancel_futures` the
    /// queued jobs are cancelled (they never run), otherwise they still run. Workers leave
    /// once nothing is queued.
    pub fn shutdown(&self, cancel_futures: bool) {
        let cancelled: Vec<Job> = {
            let mut st = self.state.lock();
            st.shutdown = true;
            if cancel_futures {
                st.queue.drain(..).collect()
            } else {
                Vec::new()
            }
        };
        self.work.notify_all();
        self.events.notify_all();
        for job in cancelled {
            job.handle.finish(Err(Error::cancelled(Some(
                "the process pool shut down before the job started".to_owned(),
            ))));
        }
    }

    /// Shuts down, cancels what is queued and stops every worker now (SIGTERM, then
    /// SIGKILL after the grace period); running jobs end Cancelled.
    pub fn terminate(&self) {
        self.shutdown(true);
        let now = Instant::now();
        let mut st = self.state.lock();
        st.terminating = true;
        for slot in &mut st.slots {
            if slot.pid.is_none() {
                continue;
            }
            match &mut slot.stop {
                // Already leaving: make it leave now (expire_locked below sends SIGKILL).
                Some(stop) => stop.escalate_at = Some(now),
                None => self.stop(slot, Reason::Terminate, Some(Sig::Term), now),
            }
        }
        let _ = self.expire_locked(&mut st, now);
        drop(st);
        self.work.notify_all();
        self.events.notify_all();
    }

    /// Waits until every slot has ended, or `deadline` passes; true if they all did.
    pub fn wait_gone(&self, deadline: Option<Instant>) -> bool {
        let mut st = self.state.lock();
        loop {
            if st.slots.iter().all(|s| s.phase == Phase::Gone) {
                return true;
            }
            match deadline {
                Some(d) => {
                    if self.events.wait_until(&mut st, d)
                        && !st.slots.iter().all(|s| s.phase == Phase::Gone)
                    {
                        return false;
                    }
                }
                None => self.events.wait(&mut st),
            }
        }
    }

    /// The pids of the live workers.
    pub fn pids(&self) -> Vec<u32> {
        let st = self.state.lock();
        st.slots.iter().filter_map(|s| s.pid).collect()
    }

    /// Jobs waiting for a worker.
    pub fn queued(&self) -> usize {
        self.state.lock().queue.len()
    }

    /// The error every job gets once the pool is broken.
    pub fn broken(&self) -> Option<Error> {
        self.state.lock().broken.clone()
    }

    /// True after `shutdown`.
    pub fn is_shutdown(&self) -> bool {
        self.state.lock().shutdown
    }
}

/// What a job gets when its worker `pid` was stopped because the job was cancelled.
fn cancelled_while_running(pid: u32) -> Error {
    Error::cancelled(Some(format!(
        "the job was cancelled while running; worker process {pid} was stopped"
    )))
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.state.lock();
        f.debug_struct("Core")
            .field("queued", &st.queue.len())
            .field(
                "pids",
                &st.slots.iter().filter_map(|s| s.pid).collect::<Vec<_>>(),
            )
            .field("broken", &st.broken.is_some())
            .field("shutdown", &st.shutdown)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    type Log<T> = Arc<std::sync::Mutex<Vec<T>>>;

    /// A job whose outcome lands in a shared log.
    struct Probe {
        cancelled: bool,
        outcomes: Log<Result<Vec<u8>>>,
    }

    impl JobHandle for Probe {
        fn start(&self) -> bool {
            !self.cancelled
        }
        fn finish(self: Box<Self>, outcome: Result<Vec<u8>>) {
            self.outcomes.lock().unwrap().push(outcome);
        }
    }

    struct Rig {
        core: Core,
        signals: Log<(u32, Sig)>,
        outcomes: Log<Result<Vec<u8>>>,
    }

    const PID: u32 = 4242;

    fn rig(edit: impl FnOnce(&mut Config)) -> Rig {
        let mut config = Config {
            workers: 1,
            max_tasks_per_child: None,
            max_crashes: 3,
            crash_window: Duration::from_secs(10),
            kill_grace: Duration::from_secs(1),
            startup_timeout: Duration::from_secs(30),
            names: vec!["crunch".to_owned()],
        };
        edit(&mut config);
        let signals: Log<(u32, Sig)> = Arc::default();
        let sent = signals.clone();
        let core = Core::new(config, move |pid, sig| {
            sent.lock().unwrap().push((pid, sig))
        });
        Rig {
            core,
            signals,
            outcomes: Arc::default(),
        }
    }

    impl Rig {
        fn ready_worker(&self) {
            assert!(self.core.spawning(0));
            self.core.spawned(0, PID);
            assert!(self.core.ready(0));
        }

        fn submit(&self, timeout: Option<Duration>) -> u64 {
            let id = self.core.next_id();
            let probe = Probe {
                cancelled: false,
                outcomes: self.outcomes.clone(),
            };
            self.core
                .submit(Job {
                    id,
                    func: 0,
                    payload: vec![id as u8],
                    timeout,
                    handle: Box::new(probe),
                })
                .unwrap();
            id
        }

        fn dispatch(&self) -> u64 {
            match self.core.next_job(0) {
                Next::Run(job) => job.id,
                other => panic!("expected a job, got {other:?}"),
            }
        }

        fn reap(&self, status: &str, now: Instant) {
            self.core.release(0);
            let exit = Exit {
                pid: PID,
                status: status.to_owned(),
                failure: None,
            };
            self.core.reaped(0, &exit, now);
        }

        fn signals(&self) -> Vec<(u32, Sig)> {
            self.signals.lock().unwrap().clone()
        }

        fn last_error(&self) -> Error {
            let outcomes = self.outcomes.lock().unwrap();
            outcomes
                .last()
                .expect("an outcome")
                .clone()
                .expect_err("an error")
        }
    }

    #[test]
    fn cancelling_a_running_job_sends_term_then_kill_after_the_grace() {
        let rig = rig(|_| {});
        rig.ready_worker();
        let id = rig.submit(None);
        assert_eq!(rig.dispatch(), id);
        let t0 = Instant::now();
        rig.core.cancel(id, t0);
        assert_eq!(rig.signals(), [(PID, Sig::Term)]);
        let next = rig.core.expire(t0 + Duration::from_millis(500));
        assert_eq!(
            next,
            Some(t0 + Duration::from_secs(1)),
            "the escalation is due next"
        );
        assert_eq!(
            rig.signals(),
            [(PID, Sig::Term)],
            "not before the grace is over"
        );
        rig.core.expire(t0 + Duration::from_secs(1));
        assert_eq!(rig.signals(), [(PID, Sig::Term), (PID, Sig::Kill)]);
        assert!(matches!(rig.core.next_job(0), Next::Retire));
        rig.reap("was killed by signal 15 (SIGTERM)", t0);
        assert!(rig.last_error().is_cancelled());
        assert!(
            rig.core.broken().is_none(),
            "a stop we asked for is not a crash"
        );
    }

    #[test]
    fn a_job_past_its_deadline_is_stopped_and_fails_with_timeout() {
        let rig = rig(|_| {});
        rig.ready_worker();
        rig.submit(Some(Duration::from_millis(10)));
        rig.dispatch();
        let later = Instant::now() + Duration::from_secs(3600);
        rig.core.expire(later);
        assert_eq!(rig.signals(), [(PID, Sig::Term)]);
        rig.reap("was killed by signal 15 (SIGTERM)", later);
        let err = rig.last_error();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert!(
            err.to_string()
                .contains("`crunch` ran past its time limit of 10ms"),
            "{err}"
        );
    }

    #[test]
    fn crashes_outside_the_window_do_not_count() {
        let rig = rig(|c| c.max_crashes = 2);
        let t0 = Instant::now();
        rig.ready_worker();
        rig.reap("exited with status 1", t0);
        rig.ready_worker();
        rig.reap("exited with status 1", t0 + Duration::from_secs(11));
        assert!(
            rig.core.broken().is_none(),
            "the first crash left the window"
        );
        rig.ready_worker();
        rig.submit(None);
        rig.reap("exited with status 1", t0 + Duration::from_secs(12));
        let broken = rig
            .core
            .broken()
            .expect("two crashes within 10 s break the pool");
        assert!(broken.to_string().contains("2 worker crashes"), "{broken}");
        let err = rig.last_error();
        assert_eq!(
            err.kind(),
            ErrorKind::BrokenExecutor,
            "the queued job fails"
        );
        assert!(!rig.core.spawning(0), "a broken pool starts no worker");
    }

    #[test]
    fn a_crash_fails_the_running_job_with_the_pid_and_status_and_spares_the_queue() {
        let rig = rig(|_| {});
        rig.ready_worker();
        rig.submit(None);
        let queued = rig.submit(None);
        rig.dispatch();
        rig.reap("was killed by signal 9 (SIGKILL)", Instant::now());
        let err = rig.last_error();
        assert_eq!(err.kind(), ErrorKind::BrokenExecutor);
        assert_eq!(
            err.to_string(),
            "worker process 4242 was killed by signal 9 (SIGKILL) while running `crunch`"
        );
        rig.ready_worker();
        assert_eq!(
            rig.dispatch(),
            queued,
            "the replacement takes the queued job"
        );
    }

    #[test]
    fn a_slow_starter_is_killed_and_counts_as_a_crash() {
        let rig = rig(|c| {
            c.startup_timeout = Duration::from_secs(1);
            c.max_crashes = 1;
        });
        assert!(rig.core.spawning(0));
        rig.core.spawned(0, PID);
        let later = Instant::now() + Duration::from_secs(5);
        rig.core.expire(later);
        assert_eq!(rig.signals(), [(PID, Sig::Kill)]);
        rig.reap("was killed by signal 9 (SIGKILL)", later);
        let broken = rig.core.broken().expect("broken");
        assert!(
            broken.to_string().contains("did not become ready"),
            "{broken}"
        );
    }

    #[test]
    fn no_signal_reaches_a_released_pid() {
        let rig = rig(|_| {});
        rig.ready_worker();
        let id = rig.submit(Some(Duration::from_millis(1)));
        rig.dispatch();
        rig.core.release(0);
        assert_eq!(rig.signals(), [(PID, Sig::Kill)]);
        let later = Instant::now() + Duration::from_secs(3600);
        rig.core.cancel(id, later);
        rig.core.expire(later);
        rig.core.terminate();
        assert_eq!(
            rig.signals(),
            [(PID, Sig::Kill)],
            "signals after release: the pid may be reused"
        );
    }

    #[test]
    fn max_tasks_per_child_retires_the_worker_after_its_quota() {
        let rig = rig(|c| c.max_tasks_per_child = Some(2));
        rig.ready_worker();
        for _ in 0..3 {
            rig.submit(None);
        }
        for _ in 0..2 {
            let id = rig.dispatch();
            assert!(rig.core.job_done(0, id, Ok(Vec::new())));
        }
        assert!(matches!(rig.core.next_job(0), Next::Retire));
        rig.reap("exited with status 0", Instant::now());
        assert!(rig.core.broken().is_none());
        rig.ready_worker();
        rig.dispatch();
        assert_eq!(rig.core.queued(), 0);
    }

    #[test]
    fn a_job_whose_worker_was_stopped_while_its_argument_was_sent_ends_with_the_reason() {
        let rig = rig(|_| {});
        rig.ready_worker();
        let id = rig.submit(Some(Duration::from_millis(10)));
        rig.dispatch();
        let later = Instant::now() + Duration::from_secs(3600);
        rig.core.expire(later);
        // The SIGTERM made the write of the argument fail.
        rig.core.unsent(0, id, vec![id as u8]);
        let err = rig.last_error();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(err.to_string().contains("time limit of 10ms"), "{err}");
        assert_eq!(
            rig.core.queued(),
            0,
            "a job past its limit is not sent again"
        );
        rig.reap("was killed by signal 15 (SIGTERM)", later);
        assert_eq!(rig.outcomes.lock().unwrap().len(), 1, "settled once");
        assert!(
            rig.core.broken().is_none(),
            "a stop we asked for is not a crash"
        );

        rig.ready_worker();
        let id = rig.submit(None);
        rig.dispatch();
        rig.core.cancel(id, later);
        rig.core.unsent(0, id, vec![id as u8]);
        assert!(rig.last_error().is_cancelled());
        assert_eq!(rig.core.queued(), 0, "a cancelled job is not sent again");
    }

    #[test]
    fn a_job_whose_worker_died_on_its_own_before_it_was_sent_goes_back_to_the_queue() {
        let rig = rig(|_| {});
        rig.ready_worker();
        let id = rig.submit(Some(Duration::from_secs(60)));
        rig.dispatch();
        rig.core.unsent(0, id, vec![id as u8]);
        assert!(rig.outcomes.lock().unwrap().is_empty());
        assert_eq!(rig.core.queued(), 1);
    }

    #[test]
    fn slots_that_never_got_a_thread_count_as_ended() {
        let rig = rig(|c| c.workers = 3);
        assert!(rig.core.spawning(0));
        rig.core.never_started(1);
        rig.core.terminate();
        assert!(!rig.core.spawning(0));
        assert!(rig.core.wait_gone(Some(Instant::now())));
    }

    #[test]
    fn a_job_cancelled_before_dispatch_is_skipped() {
        let rig = rig(|_| {});
        rig.ready_worker();
        let id = rig.core.next_id();
        let probe = Probe {
            cancelled: true,
            outcomes: rig.outcomes.clone(),
        };
        rig.core
            .submit(Job {
                id,
                func: 0,
                payload: Vec::new(),
                timeout: None,
                handle: Box::new(probe),
            })
            .unwrap();
        let next = rig.submit(None);
        assert_eq!(rig.dispatch(), next);
    }
}
