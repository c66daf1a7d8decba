//! Stress of `braid::Queue` under cancellation (issue 6: "4 producer and 4 consumer tasks on
//! a 2-loop runtime pass 200k items through a `Queue(64)` while 10% of the waiting gets and
//! puts are cancelled at random; every item is delivered exactly once").
//!
//! Each producer puts its 50 000 item indices in order; each consumer gets until it receives
//! the end marker (`None`, put once per consumer after the producers are done) and marks each
//! index in a shared bitmap, counting any index that was already marked. Every put and get
//! goes through [`Canceller::run`]: when the operation's first poll leaves it waiting, one time
//! in ten (a per-task xorshift PRNG) the task asks a random loop of the runtime, through
//! `call_soon_threadsafe`, to cancel it. The cancel lands at an arbitrary moment: before the
//! hand-off that would wake the operation, while the woken task waits to run, or after the
//! operation finished (then it hits a later await). A cancelled put is retried with the same
//! item; a cancelled get is simply retried. Before returning, each task absorbs the cancel
//! requests it still has in flight, so that it finishes with its counts.
//!
//! Afterwards: every index is marked, none twice, the consumers received exactly 200 000
//! items, the queue is empty, and cancellations happened on both sides. Measured at commit
//! 9447b91 (debug build, 2 shared cores): 0.6 to 0.7 s a run; about 220 000 operations of each
//! side wait (with FIFO service a newcomer queues behind the waiters, so nearly every
//! operation parks), about 22 000 per side get a cancel request and nearly all of those end in
//! a Cancelled error (requests that reach a task before it polled again merge into one, as
//! `Task.cancel` does in asyncio). So the full size runs in `cargo test`, far under the ~20 s
//! budget.

use braid::{EventLoop, Queue, Result, TaskRef};
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::runtime;

/// Producer tasks.
const PRODUCERS: usize = 4;
/// Consumer tasks.
const CONSUMERS: usize = 4;
/// Items in all.
const ITEMS: usize = 200_000;
/// The queue's maxsize.
const CAPACITY: usize = 64;
/// One waiting operation in this many is cancelled.
const CANCEL_ONE_IN: u64 = 10;
/// Bound for the whole run: generous, and never expected.
const BOUND: Duration = Duration::from_secs(120);

/// xorshift64: cheap, deterministic per task.
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

/// What the producers and consumers share.
struct Shared {
    queue: Queue<Option<u32>>,
    /// One bit per item index, set by the consumer that got it.
    delivered: Vec<AtomicU64>,
    /// Items got while their bit was already set.
    duplicates: AtomicUsize,
    /// The runtime's loops, where cancel requests are sent from.
    loops: Vec<EventLoop>,
}

impl Shared {
    fn mark(&self, index: u32) {
        let bit = 1u64 << (index % 64);
        let before = self.delivered[index as usize / 64].fetch_or(bit, Ordering::Relaxed);
        if before & bit != 0 {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What one task saw.
#[derive(Default, Debug, Clone, Copy)]
struct Counts {
    /// Items put (producers) or got (consumers), end markers excluded.
    items: usize,
    /// Operations whose first poll left them waiting.
    waited: usize,
    /// Cancel requests sent.
    requested: usize,
    /// Operations that returned a Cancelled error (and were retried).
    cancelled: usize,
    /// Cancel requests absorbed after the last operation.
    absorbed: usize,
}

/// Sends the running task cancel requests from other loops at random.
struct Canceller {
    me: TaskRef,
    rng: Rng,
    loops: Vec<EventLoop>,
    /// Requests sent whose callback has not run yet.
    in_flight: Arc<AtomicUsize>,
}

impl Canceller {
    fn new(shared: &Shared, seed: u64) -> Canceller {
        Canceller {
            me: braid::current_task().expect("a task"),
            rng: Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
            loops: shared.loops.clone(),
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Awaits `op`; if its first poll leaves it waiting, one time in [`CANCEL_ONE_IN`] asks a
    /// random loop to cancel this task.
    async fn run<F: Future>(&mut self, op: F, counts: &mut Counts) -> F::Output {
        let mut op = pin!(op);
        let mut first = true;
        poll_fn(|cx| {
            let poll = op.as_mut().poll(cx);
            if std::mem::take(&mut first) && poll.is_pending() {
                counts.waited += 1;
                if self.rng.next() % CANCEL_ONE_IN == 0 {
                    counts.requested += 1;
                    self.request_cancel();
                }
            }
            poll
        })
        .await
    }

    fn request_cancel(&mut self) {
        let lp = &self.loops[(self.rng.next() % self.loops.len() as u64) as usize];
        let (me, in_flight) = (self.me.clone(), self.in_flight.clone());
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let sent = lp.call_soon_threadsafe(move || {
            me.cancel();
            in_flight.fetch_sub(1, Ordering::SeqCst);
        });
        sent.expect("the runtime runs until the test is over");
    }

    /// Waits until every request sent has been made, taking the Cancelled errors still to be
    /// delivered, so that the task can return its value.
    async fn absorb(&self, counts: &mut Counts) -> Result<()> {
        loop {
            let all_made = self.in_flight.load(Ordering::SeqCst) == 0;
            match braid::yield_now().await {
                Ok(()) if all_made => return Ok(()),
                Ok(()) => {}
                Err(e) if e.is_cancelled() => counts.absorbed += 1,
                Err(e) => return Err(e),
            }
        }
    }
}

async fn producer(shared: Arc<Shared>, id: usize) -> Result<Counts> {
    let mut counts = Counts::default();
    let mut canceller = Canceller::new(&shared, id as u64 + 1);
    let per = ITEMS / PRODUCERS;
    for index in (id * per..(id + 1) * per).map(|i| i as u32) {
        loop {
            match canceller
                .run(shared.queue.put(Some(index)), &mut counts)
                .await
            {
                Ok(()) => break,
                Err(e) if e.is_cancelled() => counts.cancelled += 1,
                Err(e) => return Err(e),
            }
        }
        counts.items += 1;
    }
    canceller.absorb(&mut counts).await?;
    Ok(counts)
}

async fn consumer(shared: Arc<Shared>, id: usize) -> Result<Counts> {
    let mut counts = Counts::default();
    let mut canceller = Canceller::new(&shared, 1_000 + id as u64);
    loop {
        match canceller.run(shared.queue.get(), &mut counts).await {
            Ok(Some(index)) => {
                shared.mark(index);
                counts.items += 1;
            }
            Ok(None) => break,
            Err(e) if e.is_cancelled() => counts.cancelled += 1,
            Err(e) => return Err(e),
        }
    }
    canceller.absorb(&mut counts).await?;
    Ok(counts)
}

/// Sums the counts of a group of tasks.
fn total(all: &[Counts]) -> Counts {
    all.iter().fold(Counts::default(), |a, c| Counts {
        items: a.items + c.items,
        waited: a.waited + c.waited,
        requested: a.requested + c.requested,
        cancelled: a.cancelled + c.cancelled,
        absorbed: a.absorbed + c.absorbed,
    })
}

/// The stress scenario; see the file's header.
#[test]
fn every_item_is_delivered_exactly_once_under_random_cancels() {
    let rt = runtime(2);
    let loops = rt.event_loops();
    let started = Instant::now();
    let (puts, gets, left, shared) = rt
        .run_until_complete(async move {
            let shared = Arc::new(Shared {
                queue: Queue::new(CAPACITY),
                delivered: (0..ITEMS.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
                duplicates: AtomicUsize::new(0),
                loops,
            });
            let producers: Vec<_> = (0..PRODUCERS)
                .map(|id| braid::create_task(producer(shared.clone(), id)))
                .collect();
            let consumers: Vec<_> = (0..CONSUMERS)
                .map(|id| braid::create_task(consumer(shared.clone(), id)))
                .collect();
            let mut puts = Vec::new();
            for p in producers {
                puts.push(braid::wait_for(p, Some(BOUND)).await?);
            }
            for _ in 0..CONSUMERS {
                shared.queue.put(None).await?;
            }
            let mut gets = Vec::new();
            for c in consumers {
                gets.push(braid::wait_for(c, Some(BOUND)).await?);
            }
            let left = shared.queue.qsize();
            Ok((total(&puts), total(&gets), left, shared))
        })
        .unwrap();
    let elapsed = started.elapsed();
    rt.shutdown(common::WAIT).unwrap();
    eprintln!("{ITEMS} items in {elapsed:.2?}; puts {puts:?}; gets {gets:?}");

    let marked: usize = shared
        .delivered
        .iter()
        .map(|w| w.load(Ordering::Relaxed).count_ones() as usize)
        .sum();
    assert_eq!(
        shared.duplicates.load(Ordering::Relaxed),
        0,
        "items delivered twice"
    );
    assert_eq!(marked, ITEMS, "items lost");
    assert_eq!(puts.items, ITEMS);
    assert_eq!(gets.items, ITEMS);
    assert_eq!(left, 0, "items left in the queue");
    assert!(puts.cancelled > 0, "no put was cancelled: {puts:?}");
    assert!(gets.cancelled > 0, "no get was cancelled: {gets:?}");
}
