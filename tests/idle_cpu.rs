//! An idle runtime does not spin: a 2-loop runtime left idle for 1 s uses under 5% of one
//! core (process CPU time from `getrusage(RUSAGE_SELF)`, over wall time). One test only, so
//! no other test shares the process while it measures.

use braid::{LoopState, Runtime};
use std::time::{Duration, Instant};

/// User + system CPU time of the whole process.
fn process_cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the struct we pass, which is plain data.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// An idle 2-loop runtime uses under 5% of one core over 1 s.
#[test]
fn idle_two_loop_runtime_uses_under_5_percent_of_a_core() {
    let rt = Runtime::builder().workers(2).build().expect("runtime");
    // Exercise it first (tasks, timers, a callback), so the idle state is the one after work.
    let v = rt
        .run_until_complete(async {
            let t = braid::create_task(async {
                braid::sleep(Duration::from_millis(5)).await?;
                Ok(1)
            });
            braid::yield_now().await?;
            t.await
        })
        .unwrap();
    assert_eq!(v, 1);
    let (tx, rx) = std::sync::mpsc::channel();
    rt.event_loops()[1]
        .call_soon_threadsafe(move || tx.send(()).unwrap())
        .unwrap();
    rx.recv_timeout(Duration::from_secs(5)).unwrap();

    // Wait (bounded) until both loops sleep.
    let end = Instant::now() + Duration::from_secs(5);
    while rt
        .event_loops()
        .iter()
        .any(|lp| lp.state() != LoopState::Idle)
    {
        assert!(Instant::now() < end, "the loops never went idle");
        std::thread::sleep(Duration::from_millis(1));
    }

    let cpu0 = process_cpu_time();
    let wall0 = Instant::now();
    std::thread::sleep(Duration::from_secs(1)); // the test thread rests; the runtime idles
    let cpu = process_cpu_time() - cpu0;
    let wall = wall0.elapsed();
    let share = cpu.as_secs_f64() / wall.as_secs_f64();
    assert!(
        share < 0.05,
        "idle runtime used {cpu:?} of CPU over {wall:?} ({:.1}% of a core)",
        share * 100.0
    );
    rt.shutdown(Duration::from_secs(5)).unwrap();
}
