//! Knobs shared by braid's crates (hidden from the docs: not part of the API contract).

use std::time::{Duration, Instant};

/// How long a thread about to block keeps looking for what it waits for first: an event loop
/// before it sleeps in its poller, a thread before it blocks on a `ConcurrentFuture`.
///
/// Why: on the virtual machines braid is measured on, waking a thread whose vCPU has halted
/// costs 15-45 µs, against about 1 µs when the thread is still running. A loop that lingers
/// takes work from another thread at once; a waiter that lingers sees the loop's answer at
/// once (measured with a `call_soon_threadsafe` round trip: 18 µs of its 19 µs went to waking
/// the blocked foreign thread). Lingering yields the CPU on every look, so a thread with work
/// to do is not kept off it. 20 µs unless `BRAID_LINGER_US` says otherwise (0 turns it off),
/// and never more than [`MAX_LINGER`]: a longer look only burns CPU, and a huge value made
/// `Instant::now() + linger` overflow. A worker loop lingers only while its recent wake-ups
/// were work handed over by other threads; one woken by its sockets sleeps at once (the
/// runtime's `linger` module says why).
///
/// ```
/// // The same for every caller in the process: read once.
/// assert_eq!(braid_bridge::tuning::linger(), braid_bridge::tuning::linger());
/// ```
pub fn linger() -> Duration {
    static LINGER: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *LINGER.get_or_init(|| {
        let us = std::env::var("BRAID_LINGER_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20);
        Duration::from_micros(us).min(MAX_LINGER)
    })
}

/// The longest [`linger`]: a `BRAID_LINGER_US` above 1 000 is taken as 1 000.
pub const MAX_LINGER: Duration = Duration::from_millis(1);

/// Lingers: calls `look` until it returns true (then returns true) or until [`linger`] has
/// passed (then false), never past `deadline`. `look` should yield the CPU
/// (`std::thread::yield_now`, with any lock released) before it looks: on a machine with no
/// spare core, the thread about to hand over the work may need this one.
///
/// ```
/// let mut looks = 0;
/// let found = braid_bridge::tuning::linger_until(None, || {
///     std::thread::yield_now();
///     looks += 1;
///     looks == 2
/// });
/// // Unless lingering is switched off (BRAID_LINGER_US=0), the second look finds it.
/// assert_eq!(found, looks == 2);
/// ```
pub fn linger_until(deadline: Option<Instant>, mut look: impl FnMut() -> bool) -> bool {
    let linger = linger();
    if linger.is_zero() {
        return false;
    }
    let mut until = Instant::now() + linger;
    if let Some(deadline) = deadline {
        until = until.min(deadline);
    }
    while Instant::now() < until {
        if look() {
            return true;
        }
    }
    false
}
