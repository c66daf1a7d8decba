//! `task_group` / `TaskGroup` with asyncio's semantics (API.md "Combinators", issue 4): the
//! group waits for every child, including ones created late by the body or by other
//! children; the first child failure (or a body failure) cancels the other children and the
//! body; the group's error (kind `Group`) carries every child error, the body's own last; an
//! external cancel of the task running the group gives a plain `Cancelled`; errors raised
//! while cancelling win over the cancel; nested groups nest their errors; `create_task` on a
//! finished or aborting group is an `InvalidState` error and the coroutine never runs; the
//! parent's `cancelling()` count is restored once the group has handled its own cancel.
//!
//! Scenarios are ported from CPython's `Lib/test/test_asyncio/test_taskgroups.py`; each test
//! names the one it follows. Steps are sequenced with promises, never sleeps; every scenario
//! runs on runtimes of 1, 2 and 4 loops, inside a task, with children that sleep and yield so
//! that they move between loops.

use braid::{Error, ErrorKind, Task, TaskGroup};
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

mod common;
use common::*;

/// Longer than any test: a sleep this long only ends by being cancelled.
const LONG: Duration = Duration::from_secs(60);

/// Runs `scenario` in a task on a fresh runtime of each size in `loops`, naming the size on
/// failure.
fn on_loops<S, Fut>(loops: &[usize], scenario: S)
where
    S: Fn() -> Fut,
    Fut: Future<Output = braid::Result<()>> + Send + 'static,
{
    for &n in loops {
        let rt = runtime(n);
        let fut = scenario();
        if let Err(e) = rt.run_until_complete(async move { braid::create_task(fut).await }) {
            panic!("on a runtime of {n} loop(s): {e:?}");
        }
        rt.shutdown(WAIT).unwrap();
    }
}

/// A child that sleeps `delay` then fails with `message` (CPython's `crash_after`).
async fn crash_after(delay: Duration, message: &'static str) -> braid::Result<()> {
    braid::sleep(delay).await?;
    Err(Error::msg(message))
}

/// A sleep until cancelled that counts the cancel in `count` (adding `by`) and re-raises it.
async fn sleep_counting_cancel(count: Arc<AtomicUsize>, by: usize) -> braid::Result<()> {
    match braid::sleep(LONG).await {
        Err(e) if e.is_cancelled() => {
            count.fetch_add(by, Ordering::SeqCst);
            Err(e)
        }
        other => other,
    }
}

/// The running task's pending cancel requests.
fn cancelling() -> usize {
    braid::current_task().expect("a task").cancelling()
}

/// The messages of a group error's children, in order.
fn messages(err: &Error) -> Vec<String> {
    assert_eq!(err.kind(), ErrorKind::Group, "not a group error: {err:?}");
    err.group_errors()
        .iter()
        .map(|e| e.message().unwrap_or("").to_owned())
        .collect()
}

/// The group waits for every child; their results are there once it returns (CPython
/// `test_taskgroup_01`).
#[test]
fn waits_for_every_child() {
    on_loops(&[1, 2, 4], || async {
        let (t1, t2) = braid::task_group(|tg| async move {
            let t1 = tg.create_task(async {
                braid::sleep(Duration::from_millis(10)).await?;
                Ok(42)
            });
            let t2 = tg.create_task(async {
                braid::sleep(Duration::from_millis(20)).await?;
                Ok(11)
            });
            Ok((t1, t2))
        })
        .await?;
        assert!(
            t1.done() && t2.done(),
            "the group returned before its children"
        );
        assert_eq!((t1.await?, t2.await?), (42, 11));
        Ok(())
    });
}

/// A child created late by the body, after an await, is waited for too (CPython
/// `test_taskgroup_02`).
#[test]
fn waits_for_a_child_created_late_by_the_body() {
    on_loops(&[1, 2, 4], || async {
        let (t1, t2) = braid::task_group(|tg| async move {
            let t1 = tg.create_task(async {
                braid::sleep(Duration::from_millis(10)).await?;
                Ok(42)
            });
            braid::sleep(Duration::from_millis(15)).await?;
            let t2 = tg.create_task(async {
                braid::sleep(Duration::from_millis(20)).await?;
                Ok(11)
            });
            Ok((t1, t2))
        })
        .await?;
        assert!(t1.done() && t2.done());
        assert_eq!((t1.await?, t2.await?), (42, 11));
        Ok(())
    });
}

type BoxedChild = Pin<Box<dyn Future<Output = braid::Result<()>> + Send>>;

/// A child that, after a short sleep, creates two more children in `group` until `depth`
/// runs out (CPython's `hydra`), counting every head in `heads`.
fn hydra(group: TaskGroup, depth: u32, heads: Arc<AtomicUsize>) -> BoxedChild {
    Box::pin(async move {
        braid::sleep(Duration::from_millis(1)).await?;
        braid::yield_now().await?;
        heads.fetch_add(1, Ordering::SeqCst);
        if depth > 0 {
            for _ in 0..2 {
                group.create_task(hydra(group.clone(), depth - 1, heads.clone()));
            }
        }
        Ok(())
    })
}

/// Children created by other children (through a clone of the group they hold) are waited
/// for, however late: a body that returns at once still waits for all 15 heads of a
/// depth-3 hydra (CPython `test_taskgroup_24`, `test_taskgroup_25`).
#[test]
fn waits_for_children_created_by_children() {
    on_loops(&[1, 2, 4], || async {
        let heads = Arc::new(AtomicUsize::new(0));
        let h = heads.clone();
        braid::task_group(|tg| async move {
            tg.create_task(hydra(tg.clone(), 3, h));
            Ok(())
        })
        .await?;
        assert_eq!(heads.load(Ordering::SeqCst), 1 + 2 + 4 + 8);
        Ok(())
    });
}

/// Cancelling one child explicitly does not abort the group: the others go on (CPython
/// `test_taskgroup_03`).
#[test]
fn an_explicitly_cancelled_child_does_not_abort_the_group() {
    on_loops(&[1, 2, 4], || async {
        let (t1, t2) = braid::task_group(|tg| async move {
            let t1 = tg.create_task(async {
                braid::sleep(LONG).await?;
                Ok(42)
            });
            braid::yield_now().await?;
            t1.cancel();
            let t2 = tg.create_task(async {
                braid::sleep(Duration::from_millis(10)).await?;
                Ok(11)
            });
            Ok((t1, t2))
        })
        .await?;
        assert!(t1.cancelled());
        assert_eq!(t2.await?, 11);
        Ok(())
    });
}

/// The first child failure cancels the other children and the body; the group error lists
/// the child errors only (no Cancelled among them), and the code after the group never runs
/// (CPython `test_taskgroup_04`, `test_cancel_children_on_child_error`; as there, the three
/// failing children race, so one to three of them fail before the cancel).
#[test]
fn the_first_child_failure_cancels_the_others_and_the_body() {
    on_loops(&[1, 2, 4], || async {
        let child_cancelled = Arc::new(AtomicUsize::new(0));
        let body_cancelled = Arc::new(AtomicUsize::new(0));
        let (cc, bc) = (child_cancelled.clone(), body_cancelled.clone());
        let err = braid::task_group(|tg| async move {
            // The sleeper first, running before anything fails (a child cancelled before
            // it starts never runs, so it could not count its cancel).
            let started = braid::create_future::<()>();
            let s = started.clone();
            tg.create_task(async move {
                s.set_result(())?;
                sleep_counting_cancel(cc, 1).await
            });
            started.await?;
            for _ in 0..3 {
                tg.create_task(crash_after(Duration::from_millis(10), "division by zero"));
            }
            sleep_counting_cancel(bc, 1).await
        })
        .await
        .unwrap_err();
        let msgs = messages(&err);
        assert!((1..=3).contains(&msgs.len()), "{msgs:?}");
        assert!(msgs.iter().all(|m| m == "division by zero"), "{msgs:?}");
        assert_eq!(child_cancelled.load(Ordering::SeqCst), 1);
        assert_eq!(body_cancelled.load(Ordering::SeqCst), 1);
        assert_eq!(cancelling(), 0);
        Ok(())
    });
}

/// A body failure, at once or after an await, cancels every child; the group error holds
/// the body's error (CPython `test_taskgroup_09`, `test_taskgroup_10`).
#[test]
fn a_body_failure_cancels_the_children() {
    for await_first in [false, true] {
        on_loops(&[1, 2, 4], move || async move {
            let (tx, rx) = mpsc::channel();
            let err = braid::task_group(|tg| async move {
                let t1 = tg.create_task(async {
                    braid::sleep(LONG).await?;
                    Ok(42)
                });
                let t2 = tg.create_task(async {
                    braid::sleep(LONG).await?;
                    Ok(11)
                });
                tx.send((t1.as_ref(), t2.as_ref())).unwrap();
                if await_first {
                    braid::sleep(Duration::from_millis(5)).await?;
                }
                Err::<(), _>(Error::msg("division by zero"))
            })
            .await
            .unwrap_err();
            assert_eq!(messages(&err), ["division by zero"]);
            let (t1, t2) = rx.try_recv().unwrap();
            assert!(t1.cancelled() && t2.cancelled());
            Ok(())
        });
    }
}

/// An external cancel of the task running the group, while the body awaits or while the
/// group waits for its children on exit, cancels every child and gives a plain `Cancelled`,
/// not a group error (CPython `test_cancellation`, `test_taskgroup_07`, `test_taskgroup_17`,
/// `test_taskgroup_22`).
#[test]
fn an_external_cancel_gives_a_plain_cancelled() {
    for body_waits in [true, false] {
        on_loops(&[1, 2, 4], move || async move {
            let num = Arc::new(AtomicUsize::new(0));
            let ready = braid::create_future::<()>();
            let (n, r) = (num.clone(), ready.clone());
            let runner = braid::create_task(async move {
                braid::task_group(|tg| async move {
                    let started = Arc::new(AtomicUsize::new(0));
                    let all_started = braid::create_future::<()>();
                    for _ in 0..5 {
                        let (n, started, all) = (n.clone(), started.clone(), all_started.clone());
                        tg.create_task(async move {
                            if started.fetch_add(1, Ordering::SeqCst) == 4 {
                                all.set_result(())?;
                            }
                            sleep_counting_cancel(n, 1).await
                        });
                    }
                    all_started.await?;
                    r.set_result(())?;
                    if body_waits {
                        sleep_counting_cancel(n, 10).await
                    } else {
                        Ok(())
                    }
                })
                .await
            });
            let rr = runner.as_ref();
            ready.await?;
            assert!(runner.cancel());
            let err = runner.await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Cancelled, "{err:?}");
            assert!(rr.cancelled());
            let expect = if body_waits { 15 } else { 5 };
            assert_eq!(num.load(Ordering::SeqCst), expect);
            Ok(())
        });
    }
}

/// Errors raised by the children while they are being cancelled win over the external
/// cancel: the runner fails with the group error, not `Cancelled` (CPython
/// `test_taskgroup_08`).
#[test]
fn errors_raised_by_children_while_cancelling_win_over_the_cancel() {
    on_loops(&[1, 2, 4], || async {
        let ready = braid::create_future::<()>();
        let r = ready.clone();
        let runner = braid::create_task(async move {
            braid::task_group(|tg| async move {
                // Every child running before the cancel (one cancelled before it starts
                // never runs, so it could not raise its error).
                let started = Arc::new(AtomicUsize::new(0));
                let all_started = braid::create_future::<()>();
                for _ in 0..5 {
                    let (started, all) = (started.clone(), all_started.clone());
                    tg.create_task(async move {
                        if started.fetch_add(1, Ordering::SeqCst) == 4 {
                            all.set_result(())?;
                        }
                        let _ = braid::sleep(LONG).await;
                        Err::<(), _>(Error::msg("division by zero"))
                    });
                }
                all_started.await?;
                r.set_result(())?;
                braid::sleep(LONG).await
            })
            .await
        });
        ready.await?;
        runner.cancel();
        let err = runner.await.unwrap_err();
        assert_eq!(messages(&err), vec!["division by zero"; 5]);
        Ok(())
    });
}

/// An error raised by the body while it is being cancelled wins over the external cancel
/// (CPython `test_taskgroup_18`).
#[test]
fn an_error_raised_by_the_body_while_cancelling_wins_over_the_cancel() {
    on_loops(&[1, 2, 4], || async {
        let ready = braid::create_future::<()>();
        let num = Arc::new(AtomicUsize::new(0));
        let (r, n) = (ready.clone(), num.clone());
        let runner = braid::create_task(async move {
            braid::task_group(|_tg| async move {
                r.set_result(())?;
                match braid::sleep(LONG).await {
                    Err(e) if e.is_cancelled() => {
                        n.fetch_add(10, Ordering::SeqCst);
                        Err::<(), _>(Error::msg("my exc"))
                    }
                    other => other,
                }
            })
            .await
        });
        ready.await?;
        runner.cancel();
        let err = runner.await.unwrap_err();
        assert_eq!(messages(&err), ["my exc"]);
        assert_eq!(num.load(Ordering::SeqCst), 10);
        Ok(())
    });
}

/// A child that fails while the body is still cleaning up after an external cancel: the
/// group cancels the body's cleanup, and the child's error wins (CPython
/// `test_taskgroup_15`, sequenced by a gate instead of sleeps).
#[test]
fn a_child_failing_during_the_body_cleanup_wins_over_the_cancel() {
    on_loops(&[1, 2, 4], || async {
        let ready = braid::create_future::<()>();
        let r = ready.clone();
        let runner = braid::create_task(async move {
            braid::task_group(|tg| async move {
                let gate = braid::create_future::<()>();
                let g = gate.clone();
                tg.create_task(async move {
                    g.await?;
                    Err::<(), _>(Error::msg("division by zero"))
                });
                r.set_result(())?;
                match braid::sleep(LONG).await {
                    Err(e) if e.is_cancelled() => {
                        // Cleanup: let the child fail meanwhile; the group then cuts it short.
                        gate.set_result(())?;
                        let cleanup = braid::sleep(LONG).await;
                        assert!(
                            matches!(&cleanup, Err(c) if c.is_cancelled()),
                            "{cleanup:?}"
                        );
                        Err(e)
                    }
                    other => other,
                }
            })
            .await
        });
        ready.await?;
        runner.cancel();
        let err = runner.await.unwrap_err();
        assert_eq!(messages(&err), ["division by zero"]);
        Ok(())
    });
}

/// The same with the group in a nested task that the runner awaits: cancelling the runner
/// cancels the nested task, and the group error comes out of both (CPython
/// `test_taskgroup_16`).
#[test]
fn a_group_in_a_nested_task_of_a_cancelled_runner() {
    on_loops(&[1, 2, 4], || async {
        let ready = braid::create_future::<()>();
        let r = ready.clone();
        let runner = braid::create_task(async move {
            let nested = braid::create_task(async move {
                braid::task_group(|tg| async move {
                    let gate = braid::create_future::<()>();
                    let g = gate.clone();
                    tg.create_task(async move {
                        g.await?;
                        Err::<(), _>(Error::msg("division by zero"))
                    });
                    r.set_result(())?;
                    match braid::sleep(LONG).await {
                        Err(e) if e.is_cancelled() => {
                            gate.set_result(())?;
                            let _ = braid::sleep(LONG).await;
                            Err(e)
                        }
                        other => other,
                    }
                })
                .await
            });
            nested.await
        });
        ready.await?;
        runner.cancel();
        let err = runner.await.unwrap_err();
        assert_eq!(messages(&err), ["division by zero"]);
        Ok(())
    });
}

/// The body's own error (raised while the group cancels it) is listed last, after the child
/// error that started the abort (CPython `test_taskgroup_19`).
#[test]
fn the_body_error_is_listed_last() {
    on_loops(&[1, 2, 4], || async {
        let err = braid::task_group(|tg| async move {
            tg.create_task(crash_after(Duration::from_millis(5), "division by zero"));
            let _ = braid::sleep(LONG).await;
            Err::<(), _>(Error::msg("my exc"))
        })
        .await
        .unwrap_err();
        assert_eq!(messages(&err), ["division by zero", "my exc"]);
        Ok(())
    });
}

/// Nested groups nest their errors: an inner group's failure is one error of the outer
/// group, itself a group error (CPython `test_taskgroup_14`). When the outer group fails
/// first, the inner group is cancelled and contributes nothing (CPython
/// `test_taskgroup_13`).
#[test]
fn nested_groups_nest_their_errors() {
    on_loops(&[1, 2, 4], || async {
        let err = braid::task_group(|g1| async move {
            g1.create_task(crash_after(LONG, "outer"));
            braid::task_group(|g2| async move {
                g2.create_task(crash_after(Duration::from_millis(10), "inner"));
                Ok(())
            })
            .await
        })
        .await
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Group);
        assert_eq!(err.group_errors().len(), 1, "{err:?}");
        assert_eq!(messages(&err.group_errors()[0]), ["inner"]);

        let err = braid::task_group(|g1| async move {
            g1.create_task(crash_after(Duration::from_millis(10), "outer"));
            braid::task_group(|g2| async move {
                g2.create_task(crash_after(LONG, "inner"));
                Ok(())
            })
            .await
        })
        .await
        .unwrap_err();
        assert_eq!(messages(&err), ["outer"]);
        assert_eq!(cancelling(), 0);
        Ok(())
    });
}

/// `create_task` on a finished group returns a task already failed with `InvalidState`,
/// whose coroutine never runs; `try_create_task` returns the error (CPython
/// `test_taskgroup_finished`, `test_coro_closed_when_tg_closed`).
#[test]
fn create_task_on_a_finished_group_is_an_error() {
    on_loops(&[1, 2], || async {
        let mut kept = None;
        braid::task_group(|tg| {
            kept = Some(tg.clone());
            async { Ok(()) }
        })
        .await?;
        let tg = kept.expect("the body ran");
        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        let late = tg.create_task(async move {
            r.store(true, Ordering::SeqCst);
            Ok(())
        });
        let err = late.await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidState, "{err:?}");
        let err = tg
            .try_create_task(async { Ok(()) })
            .map(|_| ())
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidState, "{err:?}");
        assert!(!ran.load(Ordering::SeqCst), "the late coroutine ran");
        Ok(())
    });
}

/// `create_task` on a group that is aborting after a child failure is an error too: a child
/// being cancelled cannot start new work, and the group error holds only the real failure
/// (CPython `test_taskgroup_no_create_task_after_failure`).
#[test]
fn create_task_on_an_aborting_group_is_an_error() {
    on_loops(&[1, 2, 4], || async {
        let seen: Arc<Mutex<Vec<ErrorKind>>> = Arc::default();
        let ran = Arc::new(AtomicBool::new(false));
        let (s, r) = (seen.clone(), ran.clone());
        let err = braid::task_group(|tg| async move {
            // The failing child waits until the other one runs (one cancelled before it
            // starts never runs, so it could not try to create a task).
            let started = braid::create_future::<()>();
            let st = started.clone();
            tg.create_task(async move {
                started.await?;
                Err::<(), _>(Error::msg("division by zero"))
            });
            let group = tg.clone();
            tg.create_task(async move {
                st.set_result(())?;
                match braid::sleep(LONG).await {
                    Err(e) if e.is_cancelled() => {
                        let late = group.create_task(async move {
                            r.store(true, Ordering::SeqCst);
                            Ok(())
                        });
                        let late = late.await.map(|_| ()).unwrap_err().kind();
                        let tried = group
                            .try_create_task(async { Ok(()) })
                            .map(|_| ())
                            .unwrap_err()
                            .kind();
                        s.lock().unwrap().extend([late, tried]);
                        Err(e)
                    }
                    other => other,
                }
            });
            Ok(())
        })
        .await
        .unwrap_err();
        assert_eq!(messages(&err), ["division by zero"]);
        assert_eq!(
            *seen.lock().unwrap(),
            [ErrorKind::InvalidState, ErrorKind::InvalidState]
        );
        assert!(!ran.load(Ordering::SeqCst), "the late coroutine ran");
        Ok(())
    });
}

/// After a group that cancelled its parent task to abort, the parent's `cancelling()` count
/// is back to 0 and the cancel does not leak out: the next await is not cancelled (CPython
/// `test_cancelling_level_preserved`, `test_cancellation_does_not_leak_out_of_tg`).
#[test]
fn the_cancelling_count_is_restored_after_the_group() {
    on_loops(&[1, 2, 4], || async {
        // The body waits while the child fails, and returns before it fails.
        for body_waits in [true, false] {
            let err = braid::task_group(|tg| async move {
                tg.create_task(async {
                    braid::yield_now().await?;
                    Err::<(), _>(Error::msg("runtime error"))
                });
                if body_waits {
                    braid::sleep(LONG).await
                } else {
                    Ok(())
                }
            })
            .await
            .unwrap_err();
            assert_eq!(messages(&err), ["runtime error"]);
            assert_eq!(cancelling(), 0);
            braid::sleep(Duration::from_millis(1)).await?;
        }
        Ok(())
    });
}

/// Nested groups, both failing: each restores the count it raised, so after the inner group
/// it is 0, while the outer group aborts it is 1, and after the outer group it is 0 again
/// (CPython `test_nested_groups_both_cancelled`, sequenced so that the inner group fails
/// first).
#[test]
fn nested_groups_restore_the_cancelling_count() {
    on_loops(&[1, 2, 4], || async {
        let go = braid::create_future::<()>();
        let err = braid::task_group(|outer| async move {
            let g = go.clone();
            outer.create_task(async move {
                g.await?;
                Err::<(), _>(Error::msg("value error"))
            });
            let inner = braid::task_group(|inner| async move {
                inner.create_task(async {
                    braid::yield_now().await?;
                    Err::<(), _>(Error::msg("runtime error"))
                });
                Ok(())
            })
            .await
            .unwrap_err();
            assert_eq!(messages(&inner), ["runtime error"]);
            assert_eq!(cancelling(), 0);
            go.set_result(())?;
            let aborted = braid::sleep(LONG).await;
            assert!(
                matches!(&aborted, Err(e) if e.is_cancelled()),
                "{aborted:?}"
            );
            assert_eq!(cancelling(), 1);
            aborted
        })
        .await
        .unwrap_err();
        assert_eq!(messages(&err), ["value error"]);
        assert_eq!(cancelling(), 0);
        braid::sleep(Duration::from_millis(1)).await?;
        Ok(())
    });
}

/// An external cancel that lands while the group fails is not lost: after the group error
/// the count is 1 (the group withdrew only its own request), and the next await of the task
/// is cancelled (CPython `test_error_and_cancel`).
#[test]
fn an_external_cancel_during_a_failing_group_is_not_lost() {
    on_loops(&[1, 2, 4], || async {
        let in_body = braid::create_future::<()>();
        let reached = Arc::new(AtomicBool::new(false));
        let (ib, re) = (in_body.clone(), reached.clone());
        let task = braid::create_task(async move {
            let err = braid::task_group(|tg| async move {
                let started = braid::create_future::<()>();
                let s = started.clone();
                tg.create_task(async move {
                    s.set_result(())?;
                    let _ = braid::sleep(LONG).await;
                    Err::<(), _>(Error::msg("runtime error"))
                });
                // Running before the cancel, so that it raises while being cancelled.
                started.await?;
                ib.set_result(())?;
                braid::sleep(LONG).await
            })
            .await
            .unwrap_err();
            assert_eq!(messages(&err), ["runtime error"]);
            assert_eq!(cancelling(), 1);
            let after = braid::sleep(LONG).await;
            re.store(true, Ordering::SeqCst);
            after
        });
        in_body.await?;
        assert!(task.cancel());
        assert_eq!(task.cancelling(), 1);
        let r = task.as_ref();
        let res = task.await;
        assert!(matches!(&res, Err(e) if e.is_cancelled()), "{res:?}");
        assert!(r.cancelled());
        assert!(reached.load(Ordering::SeqCst));
        Ok(())
    });
}

/// `TaskGroup` is a cheap `Clone + Send + Sync` handle (children hold clones to create late
/// tasks), and `Debug`.
#[test]
fn task_group_is_clone_send_sync() {
    fn assert_handle<T: Clone + Send + Sync + std::fmt::Debug + 'static>() {}
    assert_handle::<TaskGroup>();
    fn assert_task<T: Send + 'static>(_: &Task<T>) {}
    on_loops(&[1], || async {
        let v = braid::task_group(|tg| async move {
            let t = tg.create_task(async { Ok(1) });
            assert_task(&t);
            t.await
        })
        .await?;
        assert_eq!(v, 1);
        Ok(())
    });
}

/// One round of `a_failing_child_leaves_no_stray_cancel_on_the_parent`: `Ok(Err(..))` if the
/// task got a cancel after its group ended.
async fn group_then_await() -> braid::Result<std::result::Result<(), String>> {
    // Set by a done callback of the failing child, which runs on its thread after the
    // group's own hook for that child has returned.
    let after_hook = braid::create_future::<()>();
    let signal = after_hook.clone();
    let group_out = braid::task_group(|group| async move {
        // Cancelling `slow_to_cancel`'s promise wakes it at once, then runs the promise's
        // many done callbacks: the failing child's thread stays busy between cancelling the
        // other children and cancelling the parent, while that child finishes elsewhere.
        let awaited = braid::create_future::<()>();
        for _ in 0..50_000 {
            awaited.add_done_callback(|_| {});
        }
        let waiting = braid::create_future::<()>();
        let (w, a) = (waiting.clone(), awaited.clone());
        let _slow_to_cancel = group.create_task(async move {
            w.set_result(())?;
            std::future::IntoFuture::into_future(a).await
        });
        waiting.await?;
        braid::yield_now().await?;
        let failing = group.create_task(async { Err::<(), _>(braid::Error::msg("boom")) });
        failing.add_done_callback(move |_| {
            let _ = signal.set_result(());
        });
        Ok(())
    })
    .await;
    let err = group_out.expect_err("the group fails");
    assert_eq!(err.kind(), braid::ErrorKind::Group, "{err:?}");
    // The group is over: nothing may cancel this task any more.
    Ok(after_hook.await.map_err(|e| format!("{e:?}")))
}

/// A child's failure cancels the group's parent task, and the group withdraws that cancel
/// before it returns, also when the other children finish on other loops while the failing
/// child's thread is still making its cancels. The group used to be able to finish in that
/// gap, before the parent's cancel was made: the cancel then landed after the group, and the
/// code after it failed Cancelled (asyncio, on one thread, has no such gap).
#[test]
fn a_failing_child_leaves_no_stray_cancel_on_the_parent() {
    let rt = runtime(2);
    let rounds = 30;
    let strays: Vec<String> = rt
        .run_until_complete(async move {
            let mut strays = Vec::new();
            for _ in 0..rounds {
                if let Err(stray) = braid::create_task(group_then_await()).await? {
                    strays.push(stray);
                }
            }
            Ok(strays)
        })
        .unwrap();
    assert!(
        strays.is_empty(),
        "{} of {rounds} rounds: a stray cancel after the group ended: {:?}",
        strays.len(),
        strays.first()
    );
    rt.shutdown(WAIT).unwrap();
}

/// A body that cancels its own task and returns, with no child left: the group keeps the
/// body's value, and the request is delivered at the task's next await point. asyncio's
/// `__aexit__` awaits only while children are live, so it does not see the request; the group
/// took it, and turned the value into Cancelled.
#[test]
fn a_group_with_no_child_left_keeps_the_bodys_value_and_the_next_await_gets_the_cancel() {
    on_loops(&[1, 2], || async {
        let (value, next) = braid::create_task(async {
            let value = braid::task_group(|group| async move {
                group.create_task(async { Ok(()) }).await?;
                braid::current_task().unwrap().cancel();
                Ok(5)
            })
            .await;
            let next = braid::yield_now().await;
            Ok((value, next))
        })
        .await?;
        assert_eq!(value?, 5);
        assert_cancelled(&next);
        Ok(())
    });
}

/// A group dropped after a child's failure cancelled its task (a select whose other branch
/// won) withdraws that cancel: `cancelling()` comes back to 0, and the task's next group, and
/// its awaits after it, see no stray request. Before, nothing withdrew it: `cancelling()`
/// stayed at 1, so the next failing group's exit re-armed a cancel, which the await after it
/// received.
#[test]
fn a_group_dropped_after_a_child_failed_withdraws_the_cancel_of_its_task() {
    on_loops(&[1, 2], || async {
        braid::create_task(async {
            let group = Box::pin(braid::task_group(|group| async move {
                group.create_task(async {
                    braid::yield_now().await?;
                    Err::<(), _>(Error::msg("boom"))
                });
                braid::sleep(LONG).await
            }));
            // Never set: it ends only by receiving the cancel the failing child makes.
            let other = braid::create_future::<()>().into_future();
            let first = match futures::future::select(other, group).await {
                futures::future::Either::Left((outcome, _dropped_group)) => outcome,
                futures::future::Either::Right((outcome, _)) => {
                    panic!("the group ended first: {outcome:?}")
                }
            };
            // Delivered before the group was dropped: that cannot be taken back.
            assert_cancelled(&first);
            let me = braid::current_task().unwrap();
            // On two loops the failing child may still be between its cancel and leaving the
            // group: the drop then leaves the withdrawal to it (`ParentCancel`).
            let given_up = std::time::Instant::now() + WAIT;
            while me.cancelling() != 0 && std::time::Instant::now() < given_up {
                braid::yield_now().await?;
            }
            assert_eq!(
                me.cancelling(),
                0,
                "the dropped group's cancel was not withdrawn"
            );
            let later = braid::task_group(|group| async move {
                group.create_task(async { Err::<(), _>(Error::msg("boom2")) });
                braid::sleep(LONG).await
            })
            .await;
            assert_eq!(later.unwrap_err().kind(), ErrorKind::Group);
            assert_eq!(me.cancelling(), 0);
            braid::yield_now().await
        })
        .await
    });
}

/// Three children that each record their name and fail in their first step; the body
/// returns at once. Checks that all three ran and that the group error lists them in order.
async fn three_children_fail_in_one_iteration(yield_first: bool) -> braid::Result<()> {
    let ran: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let r = ran.clone();
    let err = braid::task_group(|tg| async move {
        for name in ["a", "b", "c"] {
            let r = r.clone();
            tg.create_task(async move {
                if yield_first {
                    braid::yield_now().await?;
                }
                r.lock().unwrap().push(name);
                Err::<(), _>(Error::msg(name))
            });
        }
        Ok(())
    })
    .await
    .unwrap_err();
    assert_eq!(
        *ran.lock().unwrap(),
        ["a", "b", "c"],
        "yield_first {yield_first}"
    );
    assert_eq!(messages(&err), ["a", "b", "c"], "yield_first {yield_first}");
    assert_eq!(cancelling(), 0);
    Ok(())
}

/// Children whose steps are queued on the loop when the first of them fails all take those
/// steps before the group aborts, as in asyncio, whose `_on_task_done` is a done callback
/// queued behind them: on one loop, run from a task or from the main future (the host loop),
/// all three children of CPython's `for n in 'abc': tg.create_task(f(n))` fail and the group
/// error carries the three. Before, the first failure cancelled the others inline, before
/// their first step: only "a" ran, and the group error held "a" alone.
#[test]
fn children_failing_in_one_iteration_all_run_and_the_group_keeps_every_error() {
    for yield_first in [false, true] {
        on_loops(&[1], move || {
            three_children_fail_in_one_iteration(yield_first)
        });
        let rt = runtime(1);
        rt.run_until_complete(three_children_fail_in_one_iteration(yield_first))
            .unwrap();
        rt.shutdown(WAIT).unwrap();
    }
}

/// Two children that fail once the same deadline has passed, and a third that sleeps until
/// cancelled. Checks that both failures are in the group error and the sleeper was
/// cancelled once.
async fn two_children_fail_at_one_deadline() -> braid::Result<()> {
    let cancelled = Arc::new(AtomicUsize::new(0));
    let c = cancelled.clone();
    let err = braid::task_group(|tg| async move {
        let deadline = std::time::Instant::now() + Duration::from_millis(10);
        for name in ["a", "b"] {
            tg.create_task(async move {
                braid::sleep_until(deadline).await?;
                Err::<(), _>(Error::msg(name))
            });
        }
        tg.create_task(sleep_counting_cancel(c, 1));
        Ok(())
    })
    .await
    .unwrap_err();
    // Whichever of the two the timers woke first failed first.
    let mut failed = messages(&err);
    failed.sort();
    assert_eq!(failed, ["a", "b"]);
    assert_eq!(cancelled.load(Ordering::SeqCst), 1);
    Ok(())
}

/// Two children woken by the same timer deadline both fail and the group keeps both errors
/// (the hunter's `sleep(10ms)` pair; asyncio collects both), on one loop, run from a task or
/// from the main future, whose loop may be the one that fires the timers. Before, the first
/// failure cancelled the second, already woken: it failed Cancelled at its sleep, and the
/// group error held one error.
#[test]
fn children_failing_at_the_same_deadline_are_all_kept() {
    on_loops(&[1], two_children_fail_at_one_deadline);
    let rt = runtime(1);
    rt.run_until_complete(two_children_fail_at_one_deadline())
        .unwrap();
    rt.shutdown(WAIT).unwrap();
}

/// `create_task` on a group that is shutting down returns a task already failed with
/// `InvalidState`, and dropping it unawaited reports nothing: the refusal is the caller's
/// (asyncio's `create_task` raises it to the caller), and a caller who awaits the task gets
/// it. Before, the dropped handle reported "Task exception was never retrieved".
#[test]
fn a_refused_create_task_dropped_unawaited_is_not_reported_as_never_retrieved() {
    for n in [1, 2] {
        let rt = runtime(n);
        let reports: Arc<Mutex<Vec<String>>> = Arc::default();
        let install = |lp: &braid::EventLoop| {
            let reports = reports.clone();
            lp.set_exception_handler(move |ctx| reports.lock().unwrap().push(ctx.to_string()));
        };
        for lp in rt.event_loops() {
            install(&lp);
        }
        let outcome = rt.run_until_complete(async {
            install(&braid::get_running_loop());
            braid::create_task(async {
                let err = braid::task_group(|tg| async move {
                    tg.create_task(async {
                        braid::yield_now().await?;
                        Err::<(), _>(Error::msg("boom"))
                    });
                    // The group's abort cancels this sleep; the body goes on.
                    let slept = braid::sleep(LONG).await;
                    assert_cancelled(&slept);
                    drop(tg.create_task(async { Ok(()) }));
                    let refused = tg.create_task(async { Ok(()) }).await.unwrap_err();
                    assert_eq!(refused.kind(), ErrorKind::InvalidState, "{refused:?}");
                    Ok(())
                })
                .await
                .unwrap_err();
                assert_eq!(messages(&err), ["boom"]);
                Ok(())
            })
            .await
        });
        assert!(outcome.is_ok(), "on {n} loop(s): {outcome:?}");
        rt.shutdown(WAIT).unwrap();
        assert_eq!(
            *reports.lock().unwrap(),
            Vec::<String>::new(),
            "on {n} loop(s)"
        );
    }
}
