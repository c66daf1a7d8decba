//! Fairness: tasks that never stop yielding (`yield_now` in a loop, two on two loops) do
//! not starve the rest of the runtime. Callbacks sent with `call_soon_threadsafe`, timers
//! (`call_later`), sleeping tasks and new tasks submitted from outside all still run within a
//! generous bound (asyncio runs everything ready once per loop iteration; braid's loops give
//! callbacks, timers and the shared injector a turn between task budgets). Tests here load
//! both cores, so they run one at a time (a static mutex).

use braid::Runtime;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

mod common;
use common::{serial, WAIT};

/// How late anything may run while spinners occupy the loops; spinners yield every few µs.
const BOUND: Duration = Duration::from_millis(100);

/// A 2-loop runtime with two never-ending `yield_now` spinners (normally one per loop once
/// the idle loop has stolen one; either way the loops always have a task ready); dropping
/// the guard stops them.
struct Spinning {
    rt: Runtime,
    stop: Arc<AtomicBool>,
}

impl Spinning {
    fn new() -> Spinning {
        let rt = Runtime::builder().workers(2).build().expect("runtime");
        let stop = Arc::new(AtomicBool::new(false));
        let spinning = Arc::new(AtomicUsize::new(0));
        for _ in 0..2 {
            let (stop, spinning) = (stop.clone(), spinning.clone());
            rt.event_loop()
                .spawn(async move {
                    spinning.fetch_add(1, Ordering::SeqCst);
                    while !stop.load(Ordering::SeqCst) {
                        braid::yield_now().await?;
                    }
                    Ok(())
                })
                .unwrap();
        }
        let end = Instant::now() + WAIT;
        while spinning.load(Ordering::SeqCst) < 2 {
            assert!(Instant::now() < end, "the spinners never started");
            std::thread::yield_now();
        }
        Spinning { rt, stop }
    }
}

impl Drop for Spinning {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// While tasks keep yielding on both loops, `call_soon_threadsafe` callbacks to each loop run
/// within 100 ms.
#[test]
fn threadsafe_callbacks_are_not_starved_by_yielding_tasks() {
    let _serial = serial();
    let s = Spinning::new();
    for round in 0..5 {
        for lp in s.rt.event_loops() {
            let (tx, rx) = mpsc::channel();
            let sent = Instant::now();
            lp.call_soon_threadsafe(move || tx.send(Instant::now()).unwrap())
                .unwrap();
            let ran = rx.recv_timeout(WAIT).expect("the callback ran");
            let late = ran.duration_since(sent);
            assert!(
                late < BOUND,
                "round {round}: loop {} ran a callback after {late:?}",
                lp.id()
            );
        }
    }
}

/// While tasks keep yielding on both loops, a `call_later(10 ms)` on each loop fires within
/// 100 ms of its deadline, and a sleeping task wakes within 100 ms of its deadline.
#[test]
fn timers_and_sleeps_are_not_starved_by_yielding_tasks() {
    let _serial = serial();
    let s = Spinning::new();
    for lp in s.rt.event_loops() {
        let (tx, rx) = mpsc::channel();
        lp.call_soon_threadsafe(move || {
            let due = Instant::now() + Duration::from_millis(10);
            braid::call_at(due, move || tx.send((due, Instant::now())).unwrap());
        })
        .unwrap();
        let (due, fired) = rx.recv_timeout(WAIT).expect("the timer fired");
        assert!(fired >= due);
        let late = fired.duration_since(due);
        assert!(
            late < BOUND,
            "loop {}: call_later fired {late:?} late",
            lp.id()
        );
    }
    let sleeper =
        s.rt.event_loop()
            .spawn(async {
                let due = Instant::now() + Duration::from_millis(10);
                braid::sleep_until(due).await?;
                Ok(Instant::now().duration_since(due))
            })
            .unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(futures::executor::block_on(sleeper)).unwrap());
    let late = rx.recv_timeout(WAIT).expect("the sleeper woke").unwrap();
    assert!(late < BOUND, "a 10 ms sleep woke {late:?} late");
}

/// While tasks keep yielding on both loops, new tasks submitted from outside the runtime
/// (the shared injector) start within 100 ms.
#[test]
fn injected_tasks_are_not_starved_by_yielding_tasks() {
    let _serial = serial();
    let s = Spinning::new();
    let lp = s.rt.event_loop();
    for round in 0..10 {
        let submitted = Instant::now();
        let t = lp.spawn(async move { Ok(Instant::now()) }).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || tx.send(futures::executor::block_on(t)).unwrap());
        let started = rx.recv_timeout(WAIT).expect("the task ran").unwrap();
        let late = started.duration_since(submitted);
        assert!(
            late < BOUND,
            "round {round}: an injected task started after {late:?}"
        );
    }
}
