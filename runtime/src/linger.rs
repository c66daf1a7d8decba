//! Whether a worker loop lingers before it sleeps: only while lingering pays.
//!
//! Lingering (`braid_bridge::tuning::linger`) keeps a loop looking for work for a few
//! microseconds before it sleeps, because waking a thread whose vCPU has halted costs tens of
//! microseconds. It pays when the next work is handed over by another thread: a foreign
//! thread's `run_coroutine_threadsafe` or `call_soon_threadsafe`, a spawn into the injector.
//! It does not pay when the loop's work comes from its sockets. The kernel wakes a sleeping
//! loop through its poller when data arrives, so the look saves little, and every look costs
//! an `epoll_wait` and a `sched_yield`. On a machine whose cores are busy, often with the very
//! threads on the other end of those sockets, that CPU is theirs. Measured with `perf stat` on
//! `echo` (braid's server and the load generator sharing two cores): lingering loops made
//! 0.3-1.0 `sched_yield`s and 0.4-1.0 `epoll_wait`s per message and used 8-10 µs of CPU per
//! round trip (both processes); loops that did not linger, no yields, 0.15-0.25 `epoll_wait`s
//! and 7-8 µs. The wall time moved less than this machine's noise.
//!
//! So each loop keeps a small score of what woke it lately ([`WakeSource`]): work handed over
//! raises it, a socket lowers it, and the loop lingers while it is above zero. tokio and
//! asyncio never linger; a loop whose work is all sockets now behaves as theirs do, and one
//! serving another thread's round trips keeps the fast path.

use std::cell::Cell;

/// What ended a loop's wait for work, as far as the loop can tell once it is awake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WakeSource {
    /// Another thread handed the loop work: a doorbell message (a callback, a wake of a
    /// `spawn_local` task) or a task in the injector.
    Handoff,
    /// One of its sockets became ready (and no work was handed over).
    Io,
    /// Anything else: a timer, a sibling's call to come and steal, a spurious wake-up.
    Other,
}

/// The score of [`WakeSource`]s a loop keeps (thread-local: a loop's own).
#[derive(Debug)]
pub(crate) struct LingerScore {
    score: Cell<i8>,
}

impl LingerScore {
    /// The score's bounds: from either end, four socket wakes stop the lingering and five
    /// handoffs bring it back. Small, so that a loop whose work changes kind follows it
    /// within a few wakes; not one, so that a lone socket event in a stream of handoffs does
    /// not cost the next handoff its linger.
    const MAX: i8 = 4;
    const MIN: i8 = -4;

    /// A new loop lingers (it has seen no socket yet).
    pub(crate) fn new() -> LingerScore {
        LingerScore {
            score: Cell::new(Self::MAX),
        }
    }

    /// Whether the loop should linger before its next sleep.
    pub(crate) fn lingers(&self) -> bool {
        self.score.get() > 0
    }

    /// Counts what ended the last wait.
    pub(crate) fn record(&self, source: WakeSource) {
        let s = self.score.get();
        self.score.set(match source {
            WakeSource::Handoff => (s + 1).min(Self::MAX),
            WakeSource::Io => (s - 1).max(Self::MIN),
            WakeSource::Other => s,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::{LingerScore, WakeSource};

    #[test]
    fn a_new_loop_lingers_and_handoffs_keep_it_lingering() {
        let score = LingerScore::new();
        assert!(score.lingers());
        for _ in 0..100 {
            score.record(WakeSource::Handoff);
        }
        assert!(score.lingers());
    }

    #[test]
    fn a_loop_woken_by_its_sockets_stops_lingering_within_a_few_wakes() {
        let score = LingerScore::new();
        let mut wakes = 0;
        while score.lingers() {
            score.record(WakeSource::Io);
            wakes += 1;
            assert!(wakes <= 4, "still lingering after {wakes} socket wakes");
        }
        assert_eq!(wakes, 4);
    }

    #[test]
    fn handoffs_bring_lingering_back_after_many_socket_wakes() {
        let score = LingerScore::new();
        for _ in 0..1000 {
            score.record(WakeSource::Io);
        }
        assert!(!score.lingers());
        let mut handoffs = 0;
        while !score.lingers() {
            score.record(WakeSource::Handoff);
            handoffs += 1;
            assert!(handoffs <= 5, "not lingering after {handoffs} handoffs");
        }
        // From the floor (-4), the fifth handoff lifts it above zero.
        assert_eq!(handoffs, 5);
    }

    #[test]
    fn other_wakes_leave_the_decision_alone() {
        let score = LingerScore::new();
        for _ in 0..4 {
            score.record(WakeSource::Io);
        }
        assert!(!score.lingers());
        for _ in 0..100 {
            score.record(WakeSource::Other);
        }
        assert!(!score.lingers());
        score.record(WakeSource::Handoff);
        assert!(score.lingers());
    }

    #[test]
    fn an_even_mix_keeps_the_decision_it_started_with() {
        let score = LingerScore::new();
        for _ in 0..50 {
            score.record(WakeSource::Io);
            score.record(WakeSource::Handoff);
        }
        // Alternating from the top: 4, 3, 4, 3, ... so it keeps lingering.
        assert!(score.lingers());
    }
}

/// The score as the worker loops keep it: what their wakes count as.
#[cfg(all(test, not(loom)))]
mod loop_tests {
    use crate::{Runtime, TcpListener};
    use std::io::{Read, Write};
    use std::time::Duration;

    fn lingers_here() -> bool {
        crate::context::current_loop()
            .expect("runs on a loop")
            .lingers()
    }

    /// 20 one-byte round trips from a plain thread's client to a task of `rt`. Returns
    /// whether the loop serving the socket would linger after the last one.
    ///
    /// The client waits a millisecond before each message. The pause is the workload, not a
    /// wait for an outcome: the loop must run out of work between messages for its wake-ups
    /// to count. Without it, on one core the echo's send can hand the CPU straight to the
    /// client, whose next message is then there before the server reads again, and the loop
    /// never waits at all.
    fn serve_paced_echo(rt: &Runtime) -> bool {
        let listener = rt
            .run_until_complete(TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            let mut sock = std::net::TcpStream::connect(addr).unwrap();
            let mut byte = [0u8; 1];
            for i in 0..20u8 {
                std::thread::sleep(Duration::from_millis(1));
                sock.write_all(&[i]).unwrap();
                sock.read_exact(&mut byte).unwrap();
                assert_eq!(byte[0], i);
            }
        });
        let lingers = rt
            .run_until_complete(async move {
                crate::create_task(async move {
                    let (sock, _) = listener.accept().await?;
                    let mut buf = [0u8; 1];
                    for _ in 0..20 {
                        // Woken by the socket, on the loop whose poller holds it.
                        let n = sock.read(&mut buf).await?;
                        assert_eq!(n, 1);
                        sock.write_all(&buf).await?;
                    }
                    Ok(lingers_here())
                })
                .await
            })
            .unwrap();
        client.join().unwrap();
        lingers
    }

    #[test]
    fn a_loop_serving_a_socket_stops_lingering() {
        let rt = Runtime::builder().workers(2).build().unwrap();
        assert!(
            !serve_paced_echo(&rt),
            "the loop woken by its socket 20 times still lingers"
        );
        rt.shutdown(Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn socket_wakes_stop_the_lingering_and_another_threads_coroutines_bring_it_back() {
        // One worker: the loop that served the socket is the one the coroutines run on.
        let rt = Runtime::builder().workers(1).build().unwrap();
        assert!(
            !serve_paced_echo(&rt),
            "20 socket wakes did not stop the lingering"
        );
        let lp = rt.event_loop();
        let lingered = std::thread::spawn(move || {
            (0..20)
                .map(|_| {
                    // Handed over to a loop that went to sleep, so that each is a wake the loop
                    // counts. Sent as soon as the last result came, one could reach the loop
                    // before it parked, uncounted: on a loaded machine, enough of them that
                    // the loop had not come back to lingering by the eleventh (seen once in
                    // about thirty runs of the lib tests).
                    let deadline = std::time::Instant::now() + Duration::from_secs(10);
                    while lp.state() != crate::LoopState::Idle {
                        assert!(std::time::Instant::now() < deadline, "the loop never slept");
                        std::thread::yield_now();
                    }
                    lp.run_coroutine_threadsafe(async { Ok(lingers_here()) })
                        .unwrap()
                        .result(Some(Duration::from_secs(10)))
                        .unwrap()
                })
                .collect::<Vec<bool>>()
        })
        .join()
        .unwrap();
        // Each coroutine is a task in the injector, handed over while the loop waited.
        assert!(
            lingered[10..].iter().all(|&l| l),
            "a loop fed by another thread's coroutines did not go back to lingering: \
             {lingered:?}"
        );
        rt.shutdown(Duration::from_secs(5)).unwrap();
    }
}
