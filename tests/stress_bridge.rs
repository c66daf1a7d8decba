//! Stress of the bridge between plain threads and the runtime (issue spec: "8 foreign
//! threads × 20k run_coroutine_threadsafe, 10% cancelled at random moments, plus
//! call_soon_threadsafe traffic; afterwards assert that every future settled exactly once with
//! the right value or cancellation, all_tasks() is empty, and after shutdown no pool thread is
//! left").
//!
//! A 2-worker runtime; 8 foreign threads each submit 20 000 coroutines. The full size runs
//! in debug builds too (`cargo test`): measured on 2 cores at about 0.7 s in debug and 0.35 s
//! in release for this whole file, far under the one-minute budget, so it is not scaled down.
//! Each coroutine does a little work with an await (`yield_now`, a short `sleep`, or a
//! `to_thread` job on the default pool) and returns a value derived from its index. About 10% are cancelled, chosen by a per-thread xorshift PRNG, at one of
//! four moments: at once, after a thread yield, a few submissions later, or with
//! `cancel_and_wait`. Every eighth submission also sends a `call_soon_threadsafe` callback to
//! one of the loops. Afterwards: every future holds the right value or is cancelled (never
//! another error, never a Timeout), a future whose `cancel()` returned true is cancelled, one
//! never cancelled is not; each future's done callbacks ran exactly once (per-future
//! `AtomicU8`, rechecked after shutdown); every callback ran; `all_tasks()` is empty; and after
//! `shutdown` no thread of the runtime (loops, monitor, default pool) is left. A second test
//! races `shutdown` against the same kind of traffic: every accepted future is settled by the
//! time `shutdown` returns.

use braid::bridge::{CancelOutcome, ConcurrentFuture};
use braid::{EventLoop, Runtime};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{eventually, threads_named};

/// Foreign threads.
const THREADS: usize = 8;
/// Coroutines per foreign thread.
const PER_THREAD: usize = 20_000;
/// Bound for any single future to settle: generous, and never expected.
const SETTLE: Duration = Duration::from_secs(30);
/// The runtime's thread-name prefix (short: /proc shows 15 bytes of a thread name).
const NAME: &str = "sb";

/// The value the coroutine with index `idx` returns.
fn value(idx: usize) -> u64 {
    (idx as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xB5AD_4ECE_DA1C_E2A9
}

/// xorshift64: cheap, deterministic per thread.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// How one submission's cancellation went.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Cancel {
    /// Not cancelled.
    No,
    /// `cancel()` was called and returned this.
    Requested(bool),
    /// Checked through `cancel_and_wait` (its outcome already asserted).
    Waited,
}

/// Counts of what one foreign thread saw.
#[derive(Default, Debug)]
struct Seen {
    ok: usize,
    cancelled: usize,
    callbacks_sent: usize,
}

/// One foreign thread: submits, cancels some, then checks every future.
fn foreign(
    t: usize,
    lp: EventLoop,
    loops: Vec<EventLoop>,
    settled: Arc<Vec<AtomicU8>>,
    callbacks_run: Arc<AtomicUsize>,
    go: Arc<Barrier>,
) -> Seen {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D ^ ((t as u64 + 1) << 32));
    let mut seen = Seen::default();
    let mut futs: Vec<(usize, ConcurrentFuture<u64>, Cancel)> = Vec::with_capacity(PER_THREAD);
    let mut deferred: Vec<usize> = Vec::new();
    go.wait();
    for i in 0..PER_THREAD {
        let idx = t * PER_THREAD + i;
        let r = rng.next();
        let kind = r % 50;
        let micros = (r >> 8) % 200;
        let fut = lp
            .run_coroutine_threadsafe(async move {
                match kind {
                    0 => braid::to_thread(move || value(idx)).await,
                    1..=9 => {
                        braid::sleep(Duration::from_micros(micros)).await?;
                        Ok(value(idx))
                    }
                    _ => {
                        braid::yield_now().await?;
                        Ok(value(idx))
                    }
                }
            })
            .expect("the runtime is running");
        let counters = settled.clone();
        fut.add_done_callback(move |f| {
            assert!(f.done());
            counters[idx].fetch_add(1, Ordering::SeqCst);
        });
        let mut cancel = Cancel::No;
        if (r >> 20) % 10 == 0 {
            match (r >> 24) % 4 {
                0 => cancel = Cancel::Requested(fut.cancel()),
                1 => {
                    thread::yield_now();
                    cancel = Cancel::Requested(fut.cancel());
                }
                2 => deferred.push(futs.len()),
                _ => {
                    match fut.cancel_and_wait(Some(SETTLE)) {
                        CancelOutcome::Cancelled => {
                            assert!(fut.cancelled(), "future {idx}");
                            seen.cancelled += 1;
                        }
                        CancelOutcome::Completed(Ok(v)) => {
                            assert_eq!(v, value(idx), "future {idx}");
                            seen.ok += 1;
                        }
                        other => panic!("future {idx}: cancel_and_wait gave {other:?}"),
                    }
                    assert!(fut.done());
                    cancel = Cancel::Waited;
                }
            }
        }
        futs.push((idx, fut, cancel));
        // A deferred cancel lands a few submissions after its own.
        if deferred.len() >= 3 || (i + 1 == PER_THREAD) {
            for pos in deferred.drain(..) {
                let ret = futs[pos].1.cancel();
                futs[pos].2 = Cancel::Requested(ret);
            }
        }
        if i % 8 == 0 {
            let n = callbacks_run.clone();
            loops[(t + i) % loops.len()]
                .call_soon_threadsafe(move || {
                    n.fetch_add(1, Ordering::SeqCst);
                })
                .expect("the loop is running");
            seen.callbacks_sent += 1;
        }
    }
    for (idx, fut, cancel) in &futs {
        if *cancel == Cancel::Waited {
            continue;
        }
        match fut.result(Some(SETTLE)) {
            Ok(v) => {
                assert_eq!(v, value(*idx), "future {idx}");
                assert!(!fut.cancelled(), "future {idx}");
                assert_ne!(
                    *cancel,
                    Cancel::Requested(true),
                    "future {idx}: cancel() returned true but it finished with a value"
                );
                seen.ok += 1;
            }
            Err(e) => {
                assert!(!e.is_timeout(), "future {idx} did not settle in {SETTLE:?}");
                assert!(e.is_cancelled(), "future {idx}: unexpected error {e}");
                assert!(fut.cancelled(), "future {idx}");
                assert!(
                    matches!(cancel, Cancel::Requested(_)),
                    "future {idx} was cancelled though nobody cancelled it"
                );
                seen.cancelled += 1;
            }
        }
    }
    seen
}

/// Issue spec: 8 foreign threads × 20k `run_coroutine_threadsafe`, 10%
/// cancelled at random moments, plus `call_soon_threadsafe` traffic: every future settles
/// exactly once with the right value or a cancellation, every callback runs, `all_tasks()`
/// is empty, and no runtime thread outlives `shutdown`.
#[test]
fn foreign_threads_submit_cancel_and_call_soon() {
    let start = Instant::now();
    let rt = Runtime::builder()
        .workers(2)
        .thread_name(NAME)
        .build()
        .expect("runtime");
    let total = THREADS * PER_THREAD;
    let settled: Arc<Vec<AtomicU8>> = Arc::new((0..total).map(|_| AtomicU8::new(0)).collect());
    let callbacks_run = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(Barrier::new(THREADS));
    let loops = rt.event_loops();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let lp = loops[t % loops.len()].clone();
            let (loops, settled, callbacks_run, go) = (
                loops.clone(),
                settled.clone(),
                callbacks_run.clone(),
                go.clone(),
            );
            thread::spawn(move || foreign(t, lp, loops, settled, callbacks_run, go))
        })
        .collect();
    let mut ok = 0;
    let mut cancelled = 0;
    let mut callbacks_sent = 0;
    for h in handles {
        let seen = h.join().expect("a foreign thread failed");
        ok += seen.ok;
        cancelled += seen.cancelled;
        callbacks_sent += seen.callbacks_sent;
    }
    assert_eq!(ok + cancelled, total);
    // Roughly 10% were asked to cancel; some of those finished first.
    assert!(
        cancelled > 0 && cancelled < total / 5,
        "cancelled {cancelled} of {total}"
    );

    // Done callbacks run after the future is visibly done, on the completing thread: wait
    // (polling, with a deadline) until every future's callback has run, then check that none
    // ran twice.
    let deadline = Instant::now() + SETTLE;
    while settled.iter().any(|c| c.load(Ordering::SeqCst) == 0) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    let wrong: Vec<(usize, u8)> = settled
        .iter()
        .enumerate()
        .map(|(i, c)| (i, c.load(Ordering::SeqCst)))
        .filter(|&(_, n)| n != 1)
        .take(10)
        .collect();
    assert!(
        wrong.is_empty(),
        "done callbacks not run exactly once: {wrong:?}"
    );

    // Callbacks run in FIFO order per loop: once a marker sent after them has run, all have.
    for lp in &loops {
        let (tx, rx) = mpsc::channel();
        lp.call_soon_threadsafe(move || tx.send(()).unwrap())
            .unwrap();
        rx.recv_timeout(SETTLE).expect("the marker callback ran");
    }
    assert_eq!(callbacks_run.load(Ordering::SeqCst), callbacks_sent);

    // A future cancelled from its thread is done at once, while its task may still be waiting
    // for a loop to deliver the cancel: wait (bounded) for the tasks to finish.
    let mut left = usize::MAX;
    let no_task_left = eventually(SETTLE, || {
        left = rt
            .run_until_complete(async { Ok(braid::all_tasks().len()) })
            .unwrap();
        left == 0
    });
    assert!(no_task_left, "{left} tasks left after every future settled");

    rt.shutdown(Duration::from_secs(10))
        .expect("clean shutdown");
    // A joined thread can linger in /proc for a moment after its join returned.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !threads_named(&format!("{NAME}-")).is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(threads_named(&format!("{NAME}-")), Vec::<String>::new());
    // Nothing ran a callback a second time during shutdown.
    assert!(settled.iter().all(|c| c.load(Ordering::SeqCst) == 1));
    eprintln!(
        "stress_bridge: {total} futures ({ok} ok, {cancelled} cancelled), {callbacks_sent} callbacks, {:?}",
        start.elapsed()
    );
}

/// Shutdown racing 8 foreign threads that keep submitting (some coroutines sleep for an
/// hour, some use `to_thread`) and cancelling: every submission is refused with Closed or
/// accepted, and every accepted future is settled by the time `shutdown` has returned (a
/// value, a cancellation, or Closed), its done callbacks run exactly once, and no runtime
/// thread is left.
#[test]
fn shutdown_racing_foreign_submissions() {
    const NAME2: &str = "sr";
    let rt = Runtime::builder()
        .workers(2)
        .thread_name(NAME2)
        .build()
        .expect("runtime");
    let submitted = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(Barrier::new(THREADS + 1));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let lp = rt.event_loops()[t % 2].clone();
            let (submitted, go) = (submitted.clone(), go.clone());
            thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9 ^ ((t as u64 + 7) << 40));
                let mut accepted = Vec::new();
                go.wait();
                for i in 0.. {
                    let idx = t * 1_000_000 + i;
                    let r = rng.next();
                    let kind = r % 20;
                    let fut = lp.run_coroutine_threadsafe(async move {
                        match kind {
                            0 => braid::to_thread(move || value(idx)).await,
                            1 => {
                                braid::sleep(Duration::from_secs(3600)).await?;
                                Ok(value(idx))
                            }
                            _ => {
                                braid::yield_now().await?;
                                Ok(value(idx))
                            }
                        }
                    });
                    let fut = match fut {
                        Ok(fut) => fut,
                        Err(e) => {
                            assert_eq!(e.kind(), braid::ErrorKind::Closed, "{e}");
                            break;
                        }
                    };
                    let runs = Arc::new(AtomicU8::new(0));
                    let n = runs.clone();
                    fut.add_done_callback(move |_| {
                        n.fetch_add(1, Ordering::SeqCst);
                    });
                    if (r >> 16) % 10 == 0 {
                        fut.cancel();
                    }
                    submitted.fetch_add(1, Ordering::SeqCst);
                    accepted.push((idx, kind, fut, runs));
                }
                accepted
            })
        })
        .collect();
    go.wait();
    // Shut down mid-stream, once a fair amount of work is in flight (polling a counter).
    let deadline = Instant::now() + SETTLE;
    while submitted.load(Ordering::SeqCst) < 20_000 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    rt.shutdown(Duration::from_secs(10))
        .expect("clean shutdown");
    let mut accepted = 0;
    for h in handles {
        for (idx, kind, fut, runs) in h.join().expect("a foreign thread failed") {
            accepted += 1;
            assert!(
                fut.done(),
                "future {idx} (kind {kind}) pending after shutdown returned"
            );
            match fut.result(Some(SETTLE)) {
                Ok(v) => {
                    assert_eq!(v, value(idx));
                    assert_ne!(kind, 1, "future {idx} slept an hour?");
                }
                Err(e) => assert!(
                    e.is_cancelled() || e.kind() == braid::ErrorKind::Closed,
                    "future {idx} (kind {kind}): {e}"
                ),
            }
            assert_eq!(
                runs.load(Ordering::SeqCst),
                1,
                "future {idx}: done callbacks"
            );
        }
    }
    assert!(accepted >= 20_000);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !threads_named(&format!("{NAME2}-")).is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(threads_named(&format!("{NAME2}-")), Vec::<String>::new());
}
