//! `current_task()` and `all_tasks()`: `current_task` follows a task, not a thread, when the
//! task is stolen to another loop (API.md "current_task() follows the task"); it is `None`
//! outside tasks (test thread, callbacks); `all_tasks()` lists the runtime's unfinished tasks
//! and not the finished ones. Scenarios after CPython's `test_asyncio/test_tasks.py`
//! (`test_current_task`, `test_current_task_with_interleaving_tasks`, `test_all_tasks*`).

use braid::{Promise, TaskId};
use std::collections::HashSet;
use std::sync::mpsc;
use std::thread::{self, ThreadId};
use std::time::Duration;

mod common;
use common::{runtime, WAIT};

fn current_id() -> TaskId {
    braid::current_task().expect("inside a task").id()
}

/// A task that blocks the loop it runs on (with a callback that waits for the task to come
/// back) and then sleeps must resume on the other loop; `current_task()` is that same task on
/// both sides of every migration, and so is the loop reported by `get_running_loop()`.
#[test]
fn current_task_follows_a_task_stolen_to_another_loop() {
    let rt = runtime(2);
    let t = rt
        .event_loop()
        .spawn(async {
            let me = current_id();
            let mut records = Vec::new();
            let mut seen_ids = Vec::new();
            for _round in 0..6 {
                let here = braid::get_running_loop();
                let before = (thread::current().id(), current_id(), here.id());
                // Pin this loop until we are back: the sleep's wake-up must be run elsewhere.
                let (release_tx, release_rx) = mpsc::channel::<()>();
                here.call_soon_threadsafe(move || {
                    let _ = release_rx.recv_timeout(WAIT);
                })?;
                braid::sleep(Duration::from_millis(5)).await?;
                let after = (
                    thread::current().id(),
                    current_id(),
                    braid::get_running_loop().id(),
                );
                let _ = release_tx.send(());
                records.push((before, after));
                // A few plain yields and short sleeps, wherever they land.
                for i in 0..10 {
                    if i % 2 == 0 {
                        braid::yield_now().await?;
                    } else {
                        braid::sleep(Duration::from_micros(200)).await?;
                    }
                    seen_ids.push(current_id());
                }
            }
            Ok((me, records, seen_ids))
        })
        .unwrap();
    let id = t.id();
    let (me, records, seen_ids) = rt.run_until_complete(t).unwrap();
    assert_eq!(me, id);
    let mut threads = HashSet::new();
    for (round, (before, after)) in records.iter().enumerate() {
        assert_eq!(before.1, id, "round {round}: current_task before the sleep");
        assert_eq!(after.1, id, "round {round}: current_task after the sleep");
        assert_ne!(
            before.0, after.0,
            "round {round}: the task resumed on its blocked loop's thread"
        );
        assert_ne!(
            before.2, after.2,
            "round {round}: get_running_loop() did not follow the task"
        );
        threads.insert(before.0);
        threads.insert(after.0);
    }
    assert!(threads.len() >= 2);
    assert!(
        seen_ids.iter().all(|&s| s == id),
        "current_task() was another task at some resume"
    );
    rt.shutdown(WAIT).unwrap();
}

/// Many tasks yielding and sleeping while both loops are busy (so they get stolen back and
/// forth at will): at every resume `current_task()` is the task itself.
#[test]
fn current_task_is_right_after_every_resume_under_stealing() {
    let rt = runtime(2);
    let results = rt
        .run_until_complete(async {
            let tasks: Vec<_> = (0..8)
                .map(|k| {
                    braid::create_task(async move {
                        let mut seen: Vec<(TaskId, ThreadId)> = Vec::new();
                        for i in 0..300u32 {
                            if (i + k) % 3 == 0 {
                                braid::sleep(Duration::from_micros(100)).await?;
                            } else {
                                braid::yield_now().await?;
                            }
                            seen.push((current_id(), thread::current().id()));
                        }
                        Ok(seen)
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                let id = t.id();
                out.push((id, t.await?));
            }
            Ok(out)
        })
        .unwrap();
    let mut threads = HashSet::new();
    for (id, seen) in results {
        assert_eq!(seen.len(), 300);
        for (i, (seen_id, thread)) in seen.into_iter().enumerate() {
            assert_eq!(
                seen_id, id,
                "resume {i} of task {id} saw another current task"
            );
            threads.insert(thread);
        }
    }
    assert!(!threads.is_empty());
    rt.shutdown(WAIT).unwrap();
}

/// `current_task()` is `None` on a plain thread and inside callbacks (threadsafe, `call_soon`
/// and done callbacks), and `Some` inside tasks and the future of `run_until_complete`
/// (which asyncio wraps in a task).
#[test]
fn current_task_is_none_outside_tasks() {
    assert!(
        braid::current_task().is_none(),
        "a plain thread has no current task"
    );
    let rt = runtime(2);
    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    rt.event_loops()[1]
        .call_soon_threadsafe(move || {
            tx2.send(("threadsafe", braid::current_task().is_some()))
                .unwrap()
        })
        .unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), ("threadsafe", false));

    let (in_main, in_task, in_call_soon, in_done_cb) = rt
        .run_until_complete(async move {
            let in_main = braid::current_task().is_some();
            let t = braid::create_task(async { Ok(braid::current_task().map(|r| r.id())) });
            let tid = t.id();
            let seen: Promise<bool> = braid::create_future();
            let s = seen.clone();
            braid::call_soon(move || s.set_result(braid::current_task().is_some()).unwrap());
            let in_call_soon = seen.await?;
            let done_cb: Promise<bool> = braid::create_future();
            let d = done_cb.clone();
            t.add_done_callback(move |_| d.set_result(braid::current_task().is_some()).unwrap());
            let in_task = t.await? == Some(tid);
            let in_done_cb = done_cb.await?;
            Ok((in_main, in_task, in_call_soon, in_done_cb))
        })
        .unwrap();
    assert!(
        in_main,
        "the future of run_until_complete has no current task"
    );
    assert!(in_task, "current_task() inside a task is not that task");
    assert!(!in_call_soon, "a call_soon callback sees a current task");
    assert!(!in_done_cb, "a done callback sees a current task");
    assert!(
        braid::current_task().is_none(),
        "the test thread has a current task after run_until_complete"
    );
    rt.shutdown(WAIT).unwrap();
}

/// `all_tasks()` lists unfinished tasks (shared and local, sleeping on any loop), not the
/// finished ones and not the future of `run_until_complete` (CPython `test_all_tasks`).
#[test]
fn all_tasks_lists_unfinished_tasks_only() {
    let rt = runtime(2);
    let (sleeper, local, quick, main, first, second) = rt
        .run_until_complete(async {
            let main = current_id();
            let never: Promise<()> = braid::create_future();
            let n = never.clone();
            let sleeper = braid::create_task(async { braid::sleep(Duration::from_secs(60)).await });
            let local = braid::spawn_local(async move { n.await });
            let quick = braid::create_task(async { Ok(()) });
            let (sleeper_id, local_id, quick_id) = (sleeper.id(), local.id(), quick.id());
            // Wait for `quick` through a done callback, which runs after it has fully finished.
            let finished: Promise<()> = braid::create_future();
            let f = finished.clone();
            quick.add_done_callback(move |_| f.set_result(()).unwrap());
            finished.await?;
            let first: Vec<TaskId> = braid::all_tasks().iter().map(|r| r.id()).collect();
            sleeper.cancel();
            local.cancel();
            let _ = sleeper.await;
            let _ = local.await;
            let second: Vec<TaskId> = braid::all_tasks().iter().map(|r| r.id()).collect();
            Ok((sleeper_id, local_id, quick_id, main, first, second))
        })
        .unwrap();
    assert!(
        first.contains(&sleeper),
        "{first:?} lacks the sleeping task"
    );
    assert!(first.contains(&local), "{first:?} lacks the local task");
    assert!(!first.contains(&quick), "{first:?} lists a finished task");
    assert!(
        !first.contains(&main),
        "{first:?} lists the run_until_complete future"
    );
    assert!(
        !second.contains(&sleeper) && !second.contains(&local),
        "{second:?} lists joined tasks"
    );
    rt.shutdown(WAIT).unwrap();
}

/// A task that is done is never listed by `all_tasks()` (asyncio's `all_tasks` filters out
/// done tasks): checked many times, the instant `done()` turns true, with short tasks
/// finishing on a worker loop.
#[test]

fn all_tasks_never_lists_a_done_task() {
    let rt = runtime(2);
    let (stale, rounds) = rt
        .run_until_complete(async {
            let mut stale = Vec::new();
            let rounds = 3000;
            for _ in 0..rounds {
                let t = braid::create_task(async { Ok(()) });
                let r = t.as_ref();
                while !r.done() {
                    std::hint::spin_loop();
                }
                if braid::all_tasks().iter().any(|x| x.id() == r.id()) {
                    stale.push(r.id());
                }
                t.await?;
            }
            Ok((stale, rounds))
        })
        .unwrap();
    assert!(
        stale.is_empty(),
        "{} of {rounds} done tasks were still listed, e.g. {:?}",
        stale.len(),
        &stale[..stale.len().min(5)]
    );
    rt.shutdown(WAIT).unwrap();
}

/// `all_tasks()` lists only the running runtime's tasks, not another runtime's.
#[test]
fn all_tasks_is_per_runtime() {
    let rt_a = runtime(1);
    let rt_b = runtime(1);
    let other = rt_b
        .event_loop()
        .spawn(async { braid::sleep(Duration::from_secs(60)).await })
        .unwrap();
    let other_id = other.id();
    let (listed, own_listed) = rt_a
        .run_until_complete(async {
            let own = braid::create_task(async { braid::sleep(Duration::from_secs(60)).await });
            let ids: Vec<TaskId> = braid::all_tasks().iter().map(|r| r.id()).collect();
            own.cancel();
            let _ = own.await;
            Ok((ids.contains(&other_id), ids.len()))
        })
        .unwrap();
    assert!(!listed, "another runtime's task was listed");
    assert_eq!(own_listed, 1);
    other.cancel();
    assert!(rt_b.run_until_complete(other).unwrap_err().is_cancelled());
    rt_a.shutdown(WAIT).unwrap();
    rt_b.shutdown(WAIT).unwrap();
}
