//! Switches that break braid's cross-thread protocols on purpose, compiled only under
//! `--cfg loom`: each loom model has a `#[should_panic]` twin that turns one on to prove the
//! model catches the bug it exists for. Never present in a normal build.

use std::sync::atomic::{AtomicUsize, Ordering};

/// A deliberate bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Fault {
    /// No fault.
    None = 0,
    /// Completion does not wake blocked waiters.
    SkipWaiterNotify = 1,
    /// Completion does not wake registered wakers.
    SkipWakers = 2,
    /// `cancel()` overrides a future that already finished.
    CancelOverridesFinished = 3,
    /// `add_done_callback` forgets to re-check `done` under the lock (queues a callback on a
    /// future that already finished, where nobody will ever run it).
    CallbackSkipsDoneCheck = 4,
    /// The thread pool leaves queued jobs behind at shutdown (a worker exits with work queued).
    PoolExitsWithQueuedJobs = 5,
    /// `cancel_and_wait` returns before the producer settles.
    CancelAndWaitSkipsSettle = 6,
    /// The doorbell's `prepare_sleep` ignores what arrived (sleeps through a message).
    DoorbellIgnoresPending = 7,
    /// The doorbell unparks on every ring, asleep or not.
    DoorbellAlwaysUnparks = 8,
    /// The doorbell accepts pushes after `close` (which nobody will ever drain).
    DoorbellIgnoresClose = 9,
    /// The process pool dispatches a queued job whose future was cancelled (it runs anyway).
    ProcessPoolRunsCancelledJob = 10,
    /// The process pool, breaking after too many crashes, leaves the queued jobs unsettled.
    ProcessPoolBrokenKeepsQueue = 11,
    /// The doorbell's `has_queued` counts a bare ring as a queued message.
    DoorbellQueuedCountsRings = 12,
    /// `ThreadPool::shutdown_timeout` called from a job waits for every thread, its siblings
    /// also waiting in it included (each waits for the other for good).
    PoolJobsInShutdownUncounted = 13,
    /// The doorbell's drain takes the messages before it clears `PENDING` (a push in
    /// between, onto the emptied inbox, rings before the clear and is slept through).
    DoorbellClearsAfterTake = 14,
}

// A plain std atomic: set before a model starts, read inside it; not part of what is checked.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// Turns `fault` on for the models that follow (until [`clear`]).
pub fn set(fault: Fault) {
    ACTIVE.store(fault as usize, Ordering::SeqCst);
}

/// Turns every fault off.
pub fn clear() {
    set(Fault::None);
}

/// True if `fault` is on.
pub(crate) fn on(fault: Fault) -> bool {
    ACTIVE.load(Ordering::SeqCst) == fault as usize
}

/// Runs `f` as a loom model with `fault` switched on for its duration (off again even if the
/// model panics). Models that use this run one at a time, since the switch is process-wide.
pub fn model<F>(fault: Fault, f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            clear();
        }
    }
    set(fault);
    let _clear = Clear;
    loom::model(f);
}
