//! Stress harness for programs that embed braid: N plain ("foreign") threads hammer a runtime of
//! M event loops for a while with a mix of spawns, `run_coroutine_threadsafe`,
//! `call_soon_threadsafe`, `to_thread` and sleeps, cancelling some of them right after
//! submission, then check that everything was accounted for.
//!
//! ```text
//! cargo run --release --example stress -- --help
//! cargo run --release --example stress -- --threads 8 --loops 2 --duration 30s --cancel-ratio 0.2
//! cargo run --release --example stress -- --mix spawn=1,call_soon_threadsafe=5 --duration 5s
//! ```
//!
//! A progress bar (on a terminal) shows the operations per second while it runs. At the end it
//! prints, per operation: how many were submitted, completed and cancelled, the rate, and the
//! latency percentiles (from submission to completion: the task's done callback, the blocked
//! `result()` returning, the callback running); then the invariants it checked:
//!
//! - something was submitted (a run too short to submit anything checks nothing);
//! - every submission is accounted for: submitted = completed + cancelled + failed;
//! - nothing failed, lost or refused: no operation ended with an error or a panic, none was
//!   cancelled unless the harness asked for that cancel, no callback was dropped without
//!   running unless it was cancelled, the runtime refused no submission;
//! - nothing leaked: every coroutine and callback the harness handed over has been dropped
//!   after shutdown (each carries a guard that counts itself);
//! - no task left: `braid::all_tasks()` is empty once the work has settled;
//! - no thread left: once the foreign threads are joined and the runtime is shut down,
//!   `/proc/self/task` counts as many threads as before the runtime was built (polled for up
//!   to [`THREAD_EXIT_TIMEOUT`]: the kernel may list a joined thread for a moment);
//! - every foreign thread finished without panicking;
//! - the runtime shut down cleanly.
//!
//! The exit status is non-zero if any invariant fails. `tests/stress_example.rs` runs this file's
//! [`run`] for a few hundred milliseconds.
//!
//! To test the checker itself, the hidden flag `--inject-failure error|panic|cancel` makes every
//! coroutine the harness submits (every operation but `call_soon_threadsafe`) end with an error,
//! a panic, or a cancel nobody asked for, instead of doing its work: the invariants must fail.

use braid::{EventLoop, Runtime};
use clap::Parser;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use std::fmt;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The operations the foreign threads submit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// `EventLoop::spawn` of a coroutine that yields once; outcome from its done callback.
    Spawn,
    /// `EventLoop::run_coroutine_threadsafe` of a coroutine that yields once; the thread blocks
    /// on `result()`.
    RunCoroutineThreadsafe,
    /// `EventLoop::call_soon_threadsafe` of a callback; cancelled through its handle.
    CallSoonThreadsafe,
    /// A coroutine (through `run_coroutine_threadsafe`) awaiting `braid::to_thread` of a
    /// little blocking work; the thread blocks on `result()`.
    ToThread,
    /// `EventLoop::spawn` of a coroutine that sleeps up to `--max-sleep`.
    Sleep,
}

impl Op {
    const ALL: [Op; 5] = [
        Op::Spawn,
        Op::RunCoroutineThreadsafe,
        Op::CallSoonThreadsafe,
        Op::ToThread,
        Op::Sleep,
    ];

    fn name(self) -> &'static str {
        match self {
            Op::Spawn => "spawn",
            Op::RunCoroutineThreadsafe => "run_coroutine_threadsafe",
            Op::CallSoonThreadsafe => "call_soon_threadsafe",
            Op::ToThread => "to_thread",
            Op::Sleep => "sleep",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Relative weights of the operations (`--mix`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mix {
    weights: [u32; 5],
}

impl Mix {
    /// The operation whose share of the total weight `roll` (uniform in `0..total`) falls in.
    fn pick(&self, roll: u64) -> Op {
        let total: u64 = self.weights.iter().map(|&w| u64::from(w)).sum();
        let mut roll = roll % total;
        for op in Op::ALL {
            let w = u64::from(self.weights[op.index()]);
            if roll < w {
                return op;
            }
            roll -= w;
        }
        unreachable!("roll < total")
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = Op::ALL
            .iter()
            .map(|op| format!("{}={}", op.name(), self.weights[op.index()]))
            .collect();
        f.write_str(&parts.join(","))
    }
}

fn parse_mix(text: &str) -> Result<Mix, String> {
    let mut weights = [0u32; 5];
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}`: expected NAME=WEIGHT"))?;
        let op = Op::ALL
            .into_iter()
            .find(|op| op.name() == name.trim())
            .ok_or_else(|| {
                let names: Vec<&str> = Op::ALL.iter().map(|op| op.name()).collect();
                format!("unknown operation `{name}`; known: {}", names.join(", "))
            })?;
        weights[op.index()] = weight
            .trim()
            .parse()
            .map_err(|_| format!("`{part}`: the weight must be a whole number"))?;
    }
    if weights.iter().all(|&w| w == 0) {
        return Err("at least one operation needs a weight above 0".to_owned());
    }
    Ok(Mix { weights })
}

/// The longest duration a flag takes: far beyond any run, and short enough that adding it to
/// `Instant::now()` cannot overflow (a huge one used to panic with "overflow when adding
/// duration to instant").
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// `250ms`, `10s`, `2m`, or a plain number of seconds (`1.5`), at most [`MAX_DURATION`].
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{text}`: expected a number and a unit (ms, s, m)"))?;
    let secs = match unit {
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (ms, s, m)")),
    };
    let duration = Duration::try_from_secs_f64(secs).map_err(|e| format!("`{text}`: {e}"))?;
    if duration > MAX_DURATION {
        return Err(format!("`{text}`: too long; at most 365 days"));
    }
    Ok(duration)
}

/// `--duration`: as [`parse_duration`], and above zero (a run that submits nothing checks
/// nothing).
fn parse_run_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err(format!("`{text}`: the run needs a duration above 0")),
        duration => Ok(duration),
    }
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("`{text}`: expected a fraction from 0 to 1")),
    }
}

fn parse_positive(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{text}`: expected a whole number of at least 1")),
    }
}

/// The harness's settings; every flag has a default.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "stress",
    about = concat!(
        "Stress harness for programs embedding braid: foreign threads hammer a runtime, ",
        "then the invariants are checked"
    )
)]
pub(crate) struct Config {
    /// Foreign (non-runtime) threads submitting work.
    #[arg(long, default_value = "4", value_parser = parse_positive)]
    pub(crate) threads: usize,
    /// Event loops (worker threads) of the runtime.
    #[arg(long, default_value = "2", value_parser = parse_positive)]
    pub(crate) loops: usize,
    /// How long the threads submit work: 500ms, 10s, 2m.
    #[arg(long, default_value = "10s", value_parser = parse_run_duration)]
    pub(crate) duration: Duration,
    /// Relative weights of the operations, NAME=WEIGHT separated by commas (names: spawn,
    /// run_coroutine_threadsafe, call_soon_threadsafe, to_thread, sleep; left out: 0).
    #[arg(
        long,
        default_value = concat!(
            "spawn=3,run_coroutine_threadsafe=2,call_soon_threadsafe=3,",
            "to_thread=1,sleep=2"
        ),
        value_parser = parse_mix
    )]
    pub(crate) mix: Mix,
    /// Fraction of operations cancelled right after submission (0 to 1).
    #[arg(long, default_value = "0.1", value_parser = parse_ratio)]
    pub(crate) cancel_ratio: f64,
    /// Longest delay of a sleep operation (each picks one uniformly up to this).
    #[arg(long, default_value = "2ms", value_parser = parse_duration)]
    pub(crate) max_sleep: Duration,
    /// Operations submitted and not yet settled, all threads together, before a thread waits
    /// (bounds the memory fire-and-forget operations can pile up).
    #[arg(long, default_value = "10000", value_parser = parse_positive)]
    pub(crate) max_in_flight: usize,
    /// How long to wait, after the run, for every operation to settle.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub(crate) settle_timeout: Duration,
    /// Seed of the threads' random choices.
    #[arg(long, default_value = "1")]
    pub(crate) seed: u64,
    /// No progress bar.
    #[arg(long)]
    pub(crate) no_progress: bool,
    /// For testing the checker: every coroutine the harness submits (all operations but
    /// call_soon_threadsafe) ends this way instead of doing its work, so the invariants must
    /// fail. Hidden from --help: it is no setting of a stress run.
    #[arg(long, value_enum, hide = true)]
    pub(crate) inject_failure: Option<Inject>,
}

/// How `--inject-failure` makes the harness's coroutines end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Inject {
    /// Return an error.
    Error,
    /// Panic (through `resume_unwind`, so no panic message is printed for each).
    Panic,
    /// Return a Cancelled error although nobody cancelled it.
    Cancel,
}

impl Inject {
    /// What a coroutine does first: nothing without `inject`, else end as `inject` says.
    fn apply(inject: Option<Inject>) -> braid::Result<()> {
        match inject {
            None => Ok(()),
            Some(Inject::Error) => Err(braid::Error::msg("injected error")),
            Some(Inject::Cancel) => Err(braid::Error::cancelled(Some("injected".to_owned()))),
            Some(Inject::Panic) => std::panic::resume_unwind(Box::new("injected panic")),
        }
    }
}

/// Counters per operation, plus the latency histogram (nanoseconds).
struct OpStats {
    submitted: AtomicU64,
    completed: AtomicU64,
    cancelled: AtomicU64,
    failed: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

impl OpStats {
    fn new() -> OpStats {
        OpStats {
            submitted: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            // 1 ns to 10 minutes at 3 significant digits.
            latency: Mutex::new(
                Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("histogram bounds"),
            ),
        }
    }
}

/// What every thread and every guard reports to.
struct Stats {
    ops: [OpStats; 5],
    /// Coroutines and callbacks handed to the runtime and not yet dropped.
    live: AtomicU64,
    /// Callbacks dropped without running although nobody cancelled them.
    lost: AtomicU64,
    /// Submissions the runtime refused while it was open.
    refused: AtomicU64,
    /// What the failures were (the first few).
    failures: Mutex<Vec<String>>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            ops: [
                OpStats::new(),
                OpStats::new(),
                OpStats::new(),
                OpStats::new(),
                OpStats::new(),
            ],
            live: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            failures: Mutex::new(Vec::new()),
        }
    }

    fn op(&self, op: Op) -> &OpStats {
        &self.ops[op.index()]
    }

    fn submitted(&self, op: Op) {
        self.op(op).submitted.fetch_add(1, Ordering::Relaxed);
    }

    fn completed(&self, op: Op, submitted_at: Instant) {
        let s = self.op(op);
        if let Ok(mut h) = s.latency.lock() {
            h.saturating_record(submitted_at.elapsed().as_nanos() as u64);
        }
        s.completed.fetch_add(1, Ordering::Release);
    }

    fn cancelled(&self, op: Op) {
        self.op(op).cancelled.fetch_add(1, Ordering::Release);
    }

    fn failed(&self, op: Op, what: String) {
        self.op(op).failed.fetch_add(1, Ordering::Release);
        if let Ok(mut f) = self.failures.lock() {
            if f.len() < 10 {
                f.push(format!("{}: {what}", op.name()));
            }
        }
    }

    /// Counts how `op`, submitted at `submitted_at`, ended. A cancel is expected only if the
    /// harness asked for one (`cancel_requested`); any other cancel is a failure.
    fn settle(&self, op: Op, submitted_at: Instant, cancel_requested: bool, outcome: Outcome) {
        match outcome {
            Outcome::Completed => self.completed(op, submitted_at),
            Outcome::Cancelled(_) if cancel_requested => self.cancelled(op),
            Outcome::Cancelled(what) => {
                self.failed(op, format!("cancelled without the harness asking: {what}"))
            }
            Outcome::Failed(what) => self.failed(op, what),
        }
    }

    fn total(&self, field: impl Fn(&OpStats) -> &AtomicU64) -> u64 {
        self.ops
            .iter()
            .map(|s| field(s).load(Ordering::Acquire))
            .sum()
    }

    /// Operations submitted and not yet settled one way or the other.
    fn unsettled(&self) -> u64 {
        let settled =
            self.total(|s| &s.completed) + self.total(|s| &s.cancelled) + self.total(|s| &s.failed);
        self.total(|s| &s.submitted).saturating_sub(settled)
    }
}

/// How an operation ended, before [`Stats::settle`] checks a cancel against the harness's request.
enum Outcome {
    /// It did its work.
    Completed,
    /// It ended cancelled (what the cancel said).
    Cancelled(String),
    /// It ended with an error or a panic, or a wrong result (what went wrong).
    Failed(String),
}

/// Travels inside every coroutine and callback handed to the runtime, so that [`Stats::live`]
/// counts those not yet dropped.
struct Live(Arc<Stats>);

impl Live {
    fn new(stats: &Arc<Stats>) -> Live {
        stats.live.fetch_add(1, Ordering::AcqRel);
        Live(stats.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A `call_soon_threadsafe` callback's accounting: it settles as completed when the callback
/// runs, and on drop without running as cancelled if a cancel was asked for, else as lost.
struct CallbackOp {
    _live: Live,
    stats: Arc<Stats>,
    submitted_at: Instant,
    cancel_requested: Arc<AtomicBool>,
    ran: bool,
}

impl CallbackOp {
    fn run(mut self) {
        self.ran = true;
        self.stats
            .completed(Op::CallSoonThreadsafe, self.submitted_at);
    }
}

thread_local! {
    /// Set on a foreign thread while its `call_soon_threadsafe` call is under way. A refused
    /// callback is dropped inside that call, on this thread; an accepted one only on the
    /// loop's. So a callback dropped unrun while this is set was refused: counted as refused
    /// by its submitter, not also as failed and lost (which, never counted as submitted,
    /// also broke `submitted = completed + cancelled + failed`).
    static SUBMITTING_CALLBACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Drop for CallbackOp {
    fn drop(&mut self) {
        if self.ran || SUBMITTING_CALLBACK.with(std::cell::Cell::get) {
            return;
        }
        if self.cancel_requested.load(Ordering::Acquire) {
            self.stats.cancelled(Op::CallSoonThreadsafe);
        } else {
            self.stats.lost.fetch_add(1, Ordering::AcqRel);
            self.stats
                .failed(Op::CallSoonThreadsafe, "dropped without running".to_owned());
        }
    }
}

/// xorshift64*: each foreign thread's own random choices.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // Any non-zero state works; mix the seed so that neighbouring seeds differ at once.
        Rng((seed ^ 0x9E37_79B9_7F4A_7C15).max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    fn fraction(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// How long a foreign thread waits on one `result()` before it counts the operation as stuck.
const RESULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The body of one foreign thread: submit until `deadline`.
fn foreign_thread(
    index: usize,
    config: &Config,
    loops: &[EventLoop],
    stats: &Arc<Stats>,
    deadline: Instant,
) {
    let mut rng = Rng::new(config.seed.wrapping_add(index as u64));
    let max_in_flight = config.max_in_flight as u64;
    while Instant::now() < deadline {
        if stats.unsettled() >= max_in_flight {
            std::thread::sleep(Duration::from_micros(100));
            continue;
        }
        let lp = &loops[(rng.next() % loops.len() as u64) as usize];
        let op = config.mix.pick(rng.next());
        let cancel = rng.fraction() < config.cancel_ratio;
        match op {
            Op::Spawn | Op::Sleep => {
                let delay = if op == Op::Sleep {
                    config.max_sleep.mul_f64(rng.fraction())
                } else {
                    Duration::ZERO
                };
                spawn(op, lp, stats, delay, cancel, config.inject_failure);
            }
            Op::RunCoroutineThreadsafe | Op::ToThread => {
                round_trip(op, lp, stats, cancel, config.inject_failure);
            }
            Op::CallSoonThreadsafe => call_soon(lp, stats, cancel),
        }
    }
}

fn spawn(
    op: Op,
    lp: &EventLoop,
    stats: &Arc<Stats>,
    delay: Duration,
    cancel: bool,
    inject: Option<Inject>,
) {
    let live = Live::new(stats);
    let submitted_at = Instant::now();
    // What the coroutine returned, for the done callback (which sees only whether the task
    // was cancelled); left unset if it panicked.
    let returned = Arc::new(OnceLock::<braid::Result<()>>::new());
    let result = returned.clone();
    let task = lp.spawn(async move {
        let _live = live;
        let outcome = async {
            Inject::apply(inject)?;
            if delay.is_zero() {
                braid::yield_now().await
            } else {
                braid::sleep(delay).await
            }
        }
        .await;
        let _ = result.set(outcome.clone());
        outcome
    });
    match task {
        Ok(task) => {
            stats.submitted(op);
            let stats = stats.clone();
            task.add_done_callback(move |t| {
                let outcome = if t.cancelled() {
                    Outcome::Cancelled("the task ended cancelled".to_owned())
                } else {
                    match returned.get() {
                        Some(Ok(())) => Outcome::Completed,
                        Some(Err(e)) => Outcome::Failed(e.to_string()),
                        None => Outcome::Failed("the task ended without returning: a panic".into()),
                    }
                };
                stats.settle(op, submitted_at, cancel, outcome);
            });
            if cancel {
                task.cancel();
            }
        }
        Err(e) => refused(stats, op, &e),
    }
}

fn round_trip(op: Op, lp: &EventLoop, stats: &Arc<Stats>, cancel: bool, inject: Option<Inject>) {
    let live = Live::new(stats);
    let submitted_at = Instant::now();
    let submitted = if op == Op::ToThread {
        lp.run_coroutine_threadsafe(async move {
            let _live = live;
            Inject::apply(inject)?;
            braid::to_thread(|| (0..1_000u64).map(std::hint::black_box).sum::<u64>()).await
        })
    } else {
        lp.run_coroutine_threadsafe(async move {
            let _live = live;
            Inject::apply(inject)?;
            braid::yield_now().await?;
            Ok(499_500)
        })
    };
    let fut = match submitted {
        Ok(fut) => fut,
        Err(e) => return refused(stats, op, &e),
    };
    stats.submitted(op);
    if cancel {
        fut.cancel();
    }
    let outcome = match fut.into_result(Some(RESULT_TIMEOUT)) {
        Ok(499_500) => Outcome::Completed,
        Ok(other) => Outcome::Failed(format!("wrong result {other}")),
        Err(e) if e.is_cancelled() => Outcome::Cancelled(e.to_string()),
        Err(e) if e.is_timeout() => Outcome::Failed(format!("no result within {RESULT_TIMEOUT:?}")),
        Err(e) => Outcome::Failed(e.to_string()),
    };
    stats.settle(op, submitted_at, cancel, outcome);
}

fn call_soon(lp: &EventLoop, stats: &Arc<Stats>, cancel: bool) {
    let cancel_requested = Arc::new(AtomicBool::new(false));
    let callback = CallbackOp {
        _live: Live::new(stats),
        stats: stats.clone(),
        submitted_at: Instant::now(),
        cancel_requested: cancel_requested.clone(),
        ran: false,
    };
    SUBMITTING_CALLBACK.with(|s| s.set(true));
    let submitted = lp.call_soon_threadsafe(move || callback.run());
    SUBMITTING_CALLBACK.with(|s| s.set(false));
    match submitted {
        Ok(handle) => {
            stats.submitted(Op::CallSoonThreadsafe);
            if cancel {
                cancel_requested.store(true, Ordering::Release);
                handle.cancel();
            }
        }
        // The refused closure was dropped unrun inside the call, and counted as nothing.
        Err(e) => refused(stats, Op::CallSoonThreadsafe, &e),
    }
}

fn refused(stats: &Stats, op: Op, e: &braid::Error) {
    stats.refused.fetch_add(1, Ordering::AcqRel);
    if let Ok(mut f) = stats.failures.lock() {
        if f.len() < 10 {
            f.push(format!("{}: refused: {e}", op.name()));
        }
    }
}

/// Threads of this process, from /proc/self/task (None where there is no procfs).
pub(crate) fn thread_count() -> Option<usize> {
    std::fs::read_dir("/proc/self/task")
        .ok()
        .map(|d| d.flatten().count())
}

/// How long the "no thread left" check waits for the thread count to come back down: a thread
/// that has been joined may still be listed in /proc/self/task for a moment, until the kernel
/// has reaped it.
pub(crate) const THREAD_EXIT_TIMEOUT: Duration = Duration::from_secs(2);

/// Waits up to `timeout` for this process to count `before` threads again (at once if
/// `before` is None: no procfs); the last count seen.
pub(crate) fn wait_for_thread_count(before: Option<usize>, timeout: Duration) -> Option<usize> {
    let mut after = thread_count();
    wait_until(timeout, || {
        after = thread_count();
        after == before
    });
    after
}

/// One checked invariant.
#[derive(Debug, Clone)]
pub(crate) struct Invariant {
    pub(crate) name: &'static str,
    pub(crate) holds: bool,
    pub(crate) detail: String,
}

/// One operation's line of the report.
#[derive(Debug, Clone)]
pub(crate) struct OpReport {
    pub(crate) op: Op,
    pub(crate) submitted: u64,
    pub(crate) completed: u64,
    pub(crate) cancelled: u64,
    pub(crate) failed: u64,
    /// p50, p90, p99, max of the completed ones.
    pub(crate) latency: Option<[Duration; 4]>,
}

/// What a run did and whether its invariants held.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    pub(crate) config: Config,
    pub(crate) elapsed: Duration,
    pub(crate) ops: Vec<OpReport>,
    pub(crate) invariants: Vec<Invariant>,
    pub(crate) failures: Vec<String>,
}

impl Report {
    /// Whether every invariant held.
    pub(crate) fn passed(&self) -> bool {
        self.invariants.iter().all(|i| i.holds)
    }

    /// The process exit status this report calls for: 0 if every invariant held, else 1.
    pub(crate) fn exit_status(&self) -> u8 {
        if self.passed() {
            0
        } else {
            1
        }
    }
}

fn fmt_latency(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 1_000.0 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{us:.1} µs")
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        writeln!(
            f,
            "stress: {} foreign threads, {} loops, {:.1} s of submissions ({:.1} s in all), \
             mix {}, cancel ratio {}",
            c.threads,
            c.loops,
            c.duration.as_secs_f64(),
            self.elapsed.as_secs_f64(),
            c.mix,
            c.cancel_ratio
        )?;
        writeln!(
            f,
            "\n{:<26} {:>10} {:>10} {:>10} {:>7} {:>11} {:>10} {:>10} {:>10} {:>10}",
            "operation",
            "submitted",
            "completed",
            "cancelled",
            "failed",
            "ops/s",
            "p50",
            "p90",
            "p99",
            "max"
        )?;
        let secs = c.duration.as_secs_f64().max(1e-9);
        let mut total = 0;
        for o in &self.ops {
            total += o.submitted;
            let [p50, p90, p99, max] = match o.latency {
                Some(l) => l.map(fmt_latency),
                None => [
                    "–".to_owned(),
                    "–".to_owned(),
                    "–".to_owned(),
                    "–".to_owned(),
                ],
            };
            writeln!(
                f,
                "{:<26} {:>10} {:>10} {:>10} {:>7} {:>11.0} \
                 {p50:>10} {p90:>10} {p99:>10} {max:>10}",
                o.op.name(),
                o.submitted,
                o.completed,
                o.cancelled,
                o.failed,
                o.submitted as f64 / secs,
            )?;
        }
        writeln!(
            f,
            "{:<26} {:>10} {:>43.0}",
            "all",
            total,
            total as f64 / secs
        )?;
        writeln!(f, "\ninvariants:")?;
        for i in &self.invariants {
            let mark = if i.holds { "ok  " } else { "FAIL" };
            writeln!(f, "  [{mark}] {}: {}", i.name, i.detail)?;
        }
        for failure in &self.failures {
            writeln!(f, "  failure: {failure}")?;
        }
        writeln!(
            f,
            "\n{}",
            if self.passed() {
                "all invariants hold"
            } else {
                "SOME INVARIANTS FAILED"
            }
        )
    }
}

/// Waits up to `timeout` for `done()`; whether it came true. Polls, because what it waits for
/// is spread over counters that many threads update.
fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Runs the harness as `config` says and checks the invariants. Prints nothing but the
/// progress bar (unless `no_progress`).
pub(crate) fn run(config: &Config) -> Report {
    let threads_before = thread_count();
    let started = Instant::now();
    let stats = Arc::new(Stats::new());
    let mut invariants = Vec::new();

    let rt = match Runtime::builder()
        .workers(config.loops)
        .thread_name("stress-loop")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return Report {
                config: config.clone(),
                elapsed: started.elapsed(),
                ops: Vec::new(),
                invariants: vec![Invariant {
                    name: "runtime started",
                    holds: false,
                    detail: e.to_string(),
                }],
                failures: Vec::new(),
            }
        }
    };
    let loops = rt.event_loops();
    let bar = if config.no_progress {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(config.duration.as_millis().max(1) as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {elapsed:>4} / {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    };
    // No overflow: the parser takes no duration above MAX_DURATION.
    let deadline = Instant::now() + config.duration;
    let panicked = std::thread::scope(|s| {
        let foreign: Vec<_> = (0..config.threads)
            .map(|index| {
                let (loops, stats) = (&loops, &stats);
                std::thread::Builder::new()
                    .name(format!("stress-foreign-{index}"))
                    .spawn_scoped(s, move || {
                        foreign_thread(index, config, loops, stats, deadline)
                    })
                    .expect("spawn a foreign thread")
            })
            .collect();
        // The bar is drawn from this thread: no ticker thread of its own to count at the end.
        while Instant::now() < deadline {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let elapsed = config.duration.saturating_sub(remaining);
            let submitted = stats.total(|s| &s.submitted);
            bar.set_position(elapsed.as_millis() as u64);
            bar.set_message(format!(
                "{:.0?}  {submitted} ops, {:.0} ops/s",
                config.duration,
                submitted as f64 / elapsed.as_secs_f64().max(1e-3)
            ));
            std::thread::sleep(remaining.min(Duration::from_millis(100)));
        }
        // Joined, not only waited for by the scope: the scope returns once each closure has
        // returned, while its OS thread may still be running (its thread-locals' destructors)
        // and be counted in /proc/self/task.
        foreign
            .into_iter()
            .filter_map(|thread| thread.join().err())
            .count()
    });
    bar.finish_and_clear();
    invariants.push(Invariant {
        name: "every foreign thread finished",
        holds: panicked == 0,
        detail: format!("{panicked} of {} foreign threads panicked", config.threads),
    });

    // Everything submitted settles: every operation has an outcome and every coroutine and
    // callback the harness handed over has been dropped.
    let settled = wait_until(config.settle_timeout, || {
        stats.unsettled() == 0 && stats.live.load(Ordering::Acquire) == 0
    });
    invariants.push(Invariant {
        name: "everything settled",
        holds: settled,
        detail: format!(
            "{} operations without an outcome and {} coroutines or callbacks alive \
             (waited up to {:?})",
            stats.unsettled(),
            stats.live.load(Ordering::Acquire),
            config.settle_timeout
        ),
    });

    // No task left: what a finished task leaves behind clears as it finishes, so poll briefly.
    let mut left = Vec::new();
    let emptied = wait_until(Duration::from_secs(5), || {
        left = rt
            .run_until_complete(async {
                Ok(braid::all_tasks()
                    .iter()
                    .map(|t| t.name())
                    .collect::<Vec<_>>())
            })
            .unwrap_or_else(|e| vec![format!("(all_tasks failed: {e})")]);
        left.is_empty()
    });
    invariants.push(Invariant {
        name: "no task left",
        holds: emptied,
        detail: if emptied {
            "braid::all_tasks() is empty".to_owned()
        } else {
            format!("{} tasks left: {}", left.len(), left.join(", "))
        },
    });

    let shutdown = rt.shutdown(Duration::from_secs(10));
    invariants.push(Invariant {
        name: "clean shutdown",
        holds: shutdown.is_ok(),
        detail: match &shutdown {
            Ok(()) => "Runtime::shutdown returned Ok".to_owned(),
            Err(e) => format!("Runtime::shutdown: {e}"),
        },
    });
    let elapsed = started.elapsed();

    let mut ops = Vec::new();
    let (mut submitted, mut completed, mut cancelled, mut failed) = (0, 0, 0, 0);
    for op in Op::ALL {
        let s = stats.op(op);
        let o = OpReport {
            op,
            submitted: s.submitted.load(Ordering::Acquire),
            completed: s.completed.load(Ordering::Acquire),
            cancelled: s.cancelled.load(Ordering::Acquire),
            failed: s.failed.load(Ordering::Acquire),
            latency: s.latency.lock().ok().filter(|h| !h.is_empty()).map(|h| {
                [0.5, 0.9, 0.99, 1.0].map(|q| Duration::from_nanos(h.value_at_quantile(q)))
            }),
        };
        submitted += o.submitted;
        completed += o.completed;
        cancelled += o.cancelled;
        failed += o.failed;
        if config.mix.weights[op.index()] > 0 || o.submitted > 0 {
            ops.push(o);
        }
    }
    let lost = stats.lost.load(Ordering::Acquire);
    let refused = stats.refused.load(Ordering::Acquire);
    invariants.push(Invariant {
        name: "something was submitted",
        holds: submitted > 0,
        detail: if submitted > 0 {
            format!("{submitted} operations submitted")
        } else {
            format!(
                "nothing was submitted in {:?}, so nothing was checked",
                config.duration
            )
        },
    });
    invariants.push(Invariant {
        name: "submitted = completed + cancelled + failed",
        holds: submitted == completed + cancelled + failed,
        detail: format!("{submitted} = {completed} + {cancelled} + {failed}"),
    });
    invariants.push(Invariant {
        name: "nothing failed, lost or refused",
        holds: failed == 0 && lost == 0 && refused == 0,
        detail: format!(
            "{failed} failed (of which {lost} callbacks dropped without running), {refused} refused"
        ),
    });
    let live = stats.live.load(Ordering::Acquire);
    invariants.push(Invariant {
        name: "nothing leaked",
        holds: live == 0,
        detail: format!("{live} coroutines or callbacks still alive after shutdown"),
    });
    let threads_after = wait_for_thread_count(threads_before, THREAD_EXIT_TIMEOUT);
    invariants.push(Invariant {
        name: "no thread left",
        holds: threads_before == threads_after,
        detail: match (threads_before, threads_after) {
            (Some(b), Some(a)) => format!(
                "{b} threads before the runtime, {a} after shutdown (waited up to {:?})",
                THREAD_EXIT_TIMEOUT
            ),
            _ => "/proc/self/task unreadable: threads not counted".to_owned(),
        },
    });
    let failures = stats.failures.lock().map(|f| f.clone()).unwrap_or_default();
    Report {
        config: config.clone(),
        elapsed,
        ops,
        invariants,
        failures,
    }
}

fn main() -> ExitCode {
    let config = Config::parse();
    let report = run(&config);
    print!("{report}");
    ExitCode::from(report.exit_status())
}

/// Unit tests of the harness's accounting (run by `tests/stress_example.rs`, which includes
/// this file).
#[cfg(test)]
mod accounting_tests {
    use super::*;

    /// A `call_soon_threadsafe` that a closed loop refuses counts as refused and as nothing
    /// else. Its callback, dropped unrun inside the refused call, was also counted as failed
    /// and lost, so one refusal broke two invariants and showed a failure that never was.
    #[test]
    fn a_refused_callback_counts_as_refused_only() {
        let rt = Runtime::builder().workers(1).build().expect("runtime");
        let lp = rt.event_loop();
        rt.shutdown(Duration::from_secs(5)).expect("shutdown");
        let stats = Arc::new(Stats::new());
        call_soon(&lp, &stats, false);
        let op = stats.op(Op::CallSoonThreadsafe);
        assert_eq!(stats.refused.load(Ordering::Acquire), 1);
        assert_eq!(stats.lost.load(Ordering::Acquire), 0);
        assert_eq!(op.failed.load(Ordering::Acquire), 0);
        assert_eq!(op.submitted.load(Ordering::Acquire), 0);
        assert_eq!(
            stats.live.load(Ordering::Acquire),
            0,
            "the callback was dropped"
        );
    }
}
