//! Foreign threads: a plain `std::thread` program (no `async` in `main`) that embeds a braid
//! `Runtime` and talks to it from four threads of its own, the way a C library's callback
//! threads, a GUI thread or a legacy worker pool would.
//!
//! ```text
//! cargo run --example foreign_threads
//! ```
//!
//! What it shows:
//!
//! - `EventLoop::run_coroutine_threadsafe` from each thread: the coroutine runs on the
//!   runtime, the thread gets a `ConcurrentFuture` and waits on it with a timeout;
//! - `EventLoop::call_soon_threadsafe`: plain callbacks run on a loop thread, in order;
//! - a wait that times out (the future is left running, and collected later);
//! - cancelling a coroutine with `cancel_and_wait`, which returns only once its cleanup (which
//!   itself awaits) has run;
//! - `Runtime::shutdown`, which cancels what is still running, so nothing is left hanging.
//!
//! Output (thread interleaving varies from run to run):
//!
//! ```text
//! [worker-0] submitted job 0
//! [worker-0] job 0 -> 0 (coroutine ran on braid-example-1)
//! ...
//! [worker-0] waited 10 ms for a 200 ms coroutine: timed out, as expected
//! [worker-0] waited again, longer: late but fine
//! ...
//! [worker-3] cancelled the slow job: Cancelled; its cleanup had run: true
//! [main] callbacks run on the loops: 8 of 8
//! [main] coroutine still running at shutdown now reports: Err(Cancelled)
//! [main] shut down cleanly
//! ```

use braid::bridge::CancelOutcome;
use braid::{EventLoop, Runtime};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

/// Prints a line tagged with the current thread's name.
fn say(message: &str) {
    println!("[{}] {message}", thread::current().name().unwrap_or("?"));
}

/// A coroutine's share of the work: waits a little (without holding a loop thread), then
/// computes on the default thread pool.
async fn job(n: u64) -> braid::Result<(u64, String)> {
    braid::sleep(Duration::from_millis(5 * n)).await?;
    let square = braid::to_thread(move || n * n).await?;
    let on = thread::current().name().unwrap_or("?").to_owned();
    Ok((square, on))
}

/// What each foreign thread does: submit two coroutines and two callbacks, wait for the
/// coroutines with a timeout. Thread 3 also starts a slow coroutine and cancels it.
fn foreign_thread(id: u64, lp: EventLoop, callbacks: Arc<AtomicUsize>) -> braid::Result<()> {
    for k in 0..2 {
        let c = callbacks.clone();
        lp.call_soon_threadsafe(move || {
            c.fetch_add(1, Ordering::SeqCst);
        })?;
        let n = id * 2 + k;
        let fut = lp.run_coroutine_threadsafe(job(n))?;
        say(&format!("submitted job {n}"));
        let (square, on) = fut.result(Some(Duration::from_secs(5)))?;
        say(&format!("job {n} -> {square} (coroutine ran on {on})"));
    }

    // A wait that gives up: the coroutine takes longer than we are prepared to wait now.
    let slowish = lp.run_coroutine_threadsafe(async {
        braid::sleep(Duration::from_millis(200)).await?;
        Ok("late but fine")
    })?;
    match slowish.result(Some(Duration::from_millis(10))) {
        Err(e) if e.is_timeout() => {
            say("waited 10 ms for a 200 ms coroutine: timed out, as expected")
        }
        other => say(&format!("unexpected: {other:?}")),
    }
    say(&format!(
        "waited again, longer: {}",
        slowish.result(Some(Duration::from_secs(5)))?
    ));

    if id == 3 {
        // A coroutine that would run for an hour, with cleanup to do when cancelled.
        let (started_tx, started_rx) = mpsc::channel();
        let cleaned = Arc::new(AtomicBool::new(false));
        let c = cleaned.clone();
        let slow = lp.run_coroutine_threadsafe(async move {
            let _ = started_tx.send(());
            match braid::sleep(Duration::from_secs(3600)).await {
                Ok(()) => Ok("finished an hour later"),
                Err(e) => {
                    // Cleanup may await: flush, close, say goodbye.
                    braid::sleep(Duration::from_millis(20)).await?;
                    c.store(true, Ordering::SeqCst);
                    Err(e)
                }
            }
        })?;
        let _ = started_rx.recv_timeout(Duration::from_secs(5));
        let outcome = match slow.cancel_and_wait(Some(Duration::from_secs(5))) {
            CancelOutcome::Cancelled => "Cancelled".to_owned(),
            CancelOutcome::Completed(r) => format!("Completed({r:?})"),
            CancelOutcome::TimedOut => "TimedOut".to_owned(),
        };
        say(&format!(
            "cancelled the slow job: {outcome}; its cleanup had run: {}",
            cleaned.load(Ordering::SeqCst)
        ));
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let rt = Runtime::builder()
        .workers(2)
        .thread_name("braid-example")
        .build()?;
    let callbacks = Arc::new(AtomicUsize::new(0));

    let threads: Vec<_> = (0..4)
        .map(|id| {
            let lp = rt.event_loops()[id as usize % 2].clone();
            let callbacks = callbacks.clone();
            thread::Builder::new()
                .name(format!("worker-{id}"))
                .spawn(move || foreign_thread(id, lp, callbacks))
        })
        .collect::<Result<_, _>>()?;
    for t in threads {
        t.join().expect("a foreign thread panicked")?;
    }

    // Callbacks run in order on their loop: once this one has run, the earlier ones have.
    for lp in rt.event_loops() {
        let (tx, rx) = mpsc::channel();
        lp.call_soon_threadsafe(move || {
            let _ = tx.send(());
        })?;
        rx.recv_timeout(Duration::from_secs(5))?;
    }
    println!(
        "[main] callbacks run on the loops: {} of 8",
        callbacks.load(Ordering::SeqCst)
    );

    // One more coroutine that is still running when we shut down: shutdown cancels it and
    // its future settles, so nobody waiting on it hangs.
    let (started_tx, started_rx) = mpsc::channel();
    let orphan = rt.event_loop().run_coroutine_threadsafe(async move {
        let _ = started_tx.send(());
        braid::sleep(Duration::from_secs(3600)).await?;
        Ok(())
    })?;
    started_rx.recv_timeout(Duration::from_secs(5))?;
    rt.shutdown(Duration::from_secs(5))?;
    println!(
        "[main] coroutine still running at shutdown now reports: {:?}",
        orphan
            .result(Some(Duration::from_secs(1)))
            .map_err(|e| e.kind())
    );
    println!("[main] shut down cleanly");
    Ok(())
}
