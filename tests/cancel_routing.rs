//! Where a cancel request goes (API.md "Tasks and cancellation"): to the task's *current*
//! await point, and through an awaited `Task` only while the task awaits it, as asyncio's
//! `_fut_waiter` is the one future a task is suspended on. A `Task` handle polled once and
//! kept, or moved to another task, must not steal later requests, nor may one made while the
//! task runs a step; a request travelling round a cycle of awaits must stop; a task may not
//! await itself. Also: a request landing during the final step is too late even after an
//! earlier one was delivered in that step, and the task dressing `run_until_complete`'s
//! future is done once it returns.

use braid::{Event, Promise, Task};
use futures::future::{select, Either};
use std::future::{poll_fn, Future, IntoFuture};
use std::pin::Pin;
use std::sync::{mpsc, Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

mod common;
use common::{runtime, WAIT};

const LONG: Duration = Duration::from_secs(60);

/// Polls `task` once, as the losing arm of a select does, and stops awaiting it.
async fn poll_once<T: 'static>(task: &mut Task<T>) {
    poll_fn(|cx| {
        let _ = Pin::new(&mut *task).poll(cx);
        Poll::Ready(())
    })
    .await
}

/// `task`'s outcome if it ends within [`WAIT`], else `None` (it is not cancelled: a
/// `wait_for` would cancel it at the deadline and hide a request that never arrived).
async fn within<T: 'static>(task: Task<T>) -> braid::Result<Option<T>> {
    let (done, _pending) =
        braid::wait(vec![task], Some(WAIT), braid::ReturnWhen::AllCompleted).await?;
    match done.into_iter().next() {
        Some(task) => Ok(Some(task.await?)),
        None => Ok(None),
    }
}

/// The `cancelling()` of `child` as found (0 if every request went elsewhere), after which
/// it is cancelled and waited for, so that nothing outlives the test.
async fn left_alone_then_ended(child: Task<()>) -> usize {
    let cancelling = child.cancelling();
    child.cancel();
    let _ = child.await;
    cancelling
}

/// A child that sleeps until cancelled.
fn sleeper() -> Task<()> {
    braid::create_task(async { braid::sleep(LONG).await })
}

/// A select between a socket read and a child task is won by the read; the task keeps the
/// child's handle and reads again. A cancel then reaches that read, not the child.
#[test]
fn a_cancel_after_a_select_won_by_a_read_reaches_the_next_read() {
    let rt = runtime(2);
    let (child_cancelling, second_read) = rt
        .run_until_complete(async {
            let (a, b) = braid::UnixStream::pair()?;
            let (reader, _a_writer) = a.into_streams();
            let (_b_reader, writer) = b.into_streams();
            let in_select = Promise::<()>::new();
            let in_second_read = Promise::<()>::new();
            let (selecting, entered) = (in_select.clone(), in_second_read.clone());
            let x = braid::create_task(async move {
                let mut child = sleeper();
                let child_arm = poll_fn(|cx| {
                    let polled = Pin::new(&mut child).poll(cx);
                    // Polled (and registered as awaited): now let the read win.
                    let _ = selecting.set_result(());
                    polled
                });
                match select(reader.read(10), Box::pin(child_arm)).await {
                    Either::Left((read, _)) => assert_eq!(read?.len(), 1),
                    Either::Right(_) => panic!("the child finished first"),
                }
                entered.set_result(())?;
                let second = reader.read(10).await;
                let child_cancelling = left_alone_then_ended(child).await;
                Ok((child_cancelling, second.map(|data| data.len())))
            });
            in_select.await?;
            writer.write(b"a")?;
            in_second_read.await?;
            x.cancel();
            let outcome = within(x).await;
            // Whatever the outcome, let a read still blocked (the bug) end before shutdown.
            let _ = writer.write(b"b");
            outcome
        })
        .expect("the task ends")
        .expect("the cancelled task was still blocked in its read");
    assert_eq!(child_cancelling, 0, "the request went to the child");
    assert!(
        second_read.as_ref().is_err_and(braid::Error::is_cancelled),
        "the read was not cancelled: {second_read:?}"
    );
    rt.shutdown(WAIT).unwrap();
}

/// The same with the handle polled once in the very step that then waits on a read.
#[test]
fn a_cancel_of_a_task_reading_after_polling_a_kept_handle_reaches_the_read() {
    let rt = runtime(2);
    let (child_cancelling, read) = rt
        .run_until_complete(async {
            let (a, b) = braid::UnixStream::pair()?;
            let (reader, _a_writer) = a.into_streams();
            let (_b_reader, writer) = b.into_streams();
            let reading = Promise::<()>::new();
            let entered = reading.clone();
            let x = braid::create_task(async move {
                let mut child = sleeper();
                poll_once(&mut child).await;
                entered.set_result(())?;
                let read = reader.read(10).await;
                let child_cancelling = left_alone_then_ended(child).await;
                Ok((child_cancelling, read.map(|data| data.len())))
            });
            reading.await?;
            x.cancel();
            let outcome = within(x).await;
            let _ = writer.write(b"b");
            outcome
        })
        .expect("the task ends")
        .expect("the cancelled task was still blocked in its read");
    assert_eq!(child_cancelling, 0, "the request went to the child");
    assert!(read.is_err_and(|e| e.is_cancelled()));
    rt.shutdown(WAIT).unwrap();
}

/// A cancel made from another thread while the task runs a step goes to its next await
/// point, as asyncio's does (a task in a step awaits nothing), not to a child's handle it
/// polled once earlier in that step and kept. Before, the request went to the child, and the
/// task slept on: a race the tests above lost about one run in thirty.
#[test]
fn a_cancel_made_during_a_step_waits_for_the_next_await_point() {
    let rt = runtime(2);
    let (in_step_tx, in_step_rx) = mpsc::channel();
    let (go_on_tx, go_on_rx) = mpsc::channel::<()>();
    let x = rt
        .event_loop()
        .spawn(async move {
            let mut child = sleeper();
            poll_once(&mut child).await;
            // Still in the step that polled the handle: hold the loop thread while the
            // request is made.
            in_step_tx.send(()).unwrap();
            go_on_rx
                .recv_timeout(WAIT)
                .expect("the test thread answers");
            let slept = braid::sleep(LONG).await;
            let child_cancelling = left_alone_then_ended(child).await;
            Ok((slept, child_cancelling))
        })
        .unwrap();
    in_step_rx.recv_timeout(WAIT).expect("the task runs");
    assert!(x.cancel(), "the task is running");
    go_on_tx.send(()).unwrap();
    let (slept, child_cancelling) = rt
        .run_until_complete(within(x))
        .unwrap()
        .expect("the task was still asleep: its cancel went elsewhere");
    assert_eq!(child_cancelling, 0, "the request went to the child");
    assert!(slept.is_err_and(|e| e.is_cancelled()), "the sleep ran on");
    rt.shutdown(WAIT).unwrap();
}

/// The same for the task that dresses `run_until_complete`'s future, which the host thread
/// polls outside any queue.
#[test]
fn a_cancel_of_the_main_task_during_its_step_waits_for_the_next_await_point() {
    let rt = runtime(2);
    let (slept, child_cancelling) = rt
        .run_until_complete(async {
            let mut child = sleeper();
            poll_once(&mut child).await;
            let me = braid::current_task().expect("in the main task");
            // Cancelled from another thread while this step runs.
            std::thread::spawn(move || me.cancel())
                .join()
                .expect("the canceller returns");
            let slept = braid::sleep(WAIT).await;
            let child_cancelling = left_alone_then_ended(child).await;
            Ok((slept, child_cancelling))
        })
        .expect("the main task keeps its value");
    assert_eq!(child_cancelling, 0, "the request went to the child");
    assert!(slept.is_err_and(|e| e.is_cancelled()), "the sleep ran on");
    rt.shutdown(WAIT).unwrap();
}

/// A task that polled a child's handle once, then cancels itself, is cancelled at its next
/// await point (asyncio: a running task awaits nothing), and the child is left alone.
#[test]
fn a_self_cancel_after_polling_a_kept_handle_is_delivered_at_the_next_sleep() {
    let rt = runtime(2);
    let (slept, child_cancelling) = rt
        .run_until_complete(async {
            braid::create_task(async {
                let mut child = sleeper();
                poll_once(&mut child).await;
                braid::current_task().expect("in a task").cancel();
                let slept = braid::sleep(LONG).await;
                let child_cancelling = left_alone_then_ended(child).await;
                Ok((slept, child_cancelling))
            })
            .await
        })
        .unwrap();
    assert!(slept.is_err_and(|e| e.is_cancelled()), "the sleep ran on");
    assert_eq!(child_cancelling, 0, "the request went to the child");
    rt.shutdown(WAIT).unwrap();
}

/// A handle polled by one task (X) and then awaited by another (Y) carries Y's cancels, and
/// gives them back to Y when Y stops awaiting it without reading it: here Y's cancel goes
/// on to the child (from Y's await of it), which catches it and runs on, the other arm of
/// Y's select wins, and Y must then be cancelled at its next await point. Before, the
/// handle still spoke for X: Y's request was settled as X's, and lost.
#[test]
fn a_handle_moved_to_another_task_carries_that_tasks_cancel() {
    let rt = runtime(2);
    let y_slept = rt
        .run_until_complete(async {
            let caught = Promise::<()>::new();
            let release = Arc::new(Event::new());
            let (caught_by_child, child_release) = (caught.clone(), release.clone());
            let x = braid::create_task(async move {
                let asleep = Promise::<()>::new();
                let sleeping = asleep.clone();
                let mut child = braid::create_task(async move {
                    sleeping.set_result(())?;
                    let cancelled = braid::sleep(LONG).await;
                    assert!(cancelled.is_err_and(|e| e.is_cancelled()));
                    caught_by_child.set_result(())?;
                    child_release.wait().await
                });
                // Started: a cancel before its first step would end it without running it.
                asleep.await?;
                poll_once(&mut child).await;
                Ok(child)
            });
            let child = x.await?;
            // Not braid's: it neither takes a cancel nor forgets what Y awaits (a braid leaf
            // would take a request made during Y's step, before it reached the child), nor
            // is it registered as what Y awaits (a Promise would be, instead of the child).
            let (other, other_arm) = futures::channel::oneshot::channel::<()>();
            let in_select = Promise::<()>::new();
            let entered = in_select.clone();
            let y = braid::create_task(async move {
                entered.set_result(())?;
                match select(child, other_arm).await {
                    // The losing arm, the child's handle, is dropped here.
                    Either::Right((_, child)) => drop(child),
                    Either::Left(_) => panic!("the other arm wins"),
                }
                Ok(braid::sleep(LONG).await)
            });
            in_select.await?;
            y.cancel();
            // Y's request reached the child; now the other arm wins.
            // Bounded: were the request lost, this would wait for ever.
            braid::wait_for(caught.into_future(), Some(WAIT)).await?;
            other.send(()).expect("Y is in its select");
            let y_outcome = within(y).await;
            release.set();
            y_outcome
        })
        .expect("Y ends")
        .expect("Y was still asleep: its cancel was lost");
    assert!(
        y_slept.as_ref().is_err_and(|e| e.is_cancelled()),
        "Y's sleep was not cancelled: {y_slept:?}"
    );
    rt.shutdown(WAIT).unwrap();
}

/// A handle polled by X, then sent to a plain thread and dropped there unpolled, while X
/// waits on a future foreign to braid (no cancellation point forgets the handle). A cancel
/// of X made meanwhile goes on to the child through X's registration; when the handle is
/// dropped, it must come back to X (its next braid await point), not be settled as if X's
/// whole future were ending. Before, it was lost: X slept on. (If the cancel lands while X
/// is still in its step, X has it directly; either way X must end its sleep cancelled.)
#[test]
fn a_handle_moved_to_a_thread_and_dropped_there_gives_the_request_back() {
    let rt = runtime(2);
    let (handle_tx, handle_rx) = mpsc::channel::<Task<()>>();
    let (go_tx, go_rx) = futures::channel::oneshot::channel::<()>();
    let x = rt
        .event_loop()
        .spawn(async move {
            let asleep = Promise::<()>::new();
            let sleeping = asleep.clone();
            let mut child = braid::create_task(async move {
                sleeping.set_result(())?;
                braid::sleep(LONG).await
            });
            asleep.await?;
            poll_once(&mut child).await;
            handle_tx.send(child).unwrap();
            let _ = go_rx.await;
            Ok(braid::sleep(WAIT).await)
        })
        .unwrap();
    let child = handle_rx.recv_timeout(WAIT).expect("X sends the handle");
    assert!(x.cancel(), "X is not done");
    drop(child);
    go_tx.send(()).expect("X waits for go");
    let slept = rt.run_until_complete(within(x)).unwrap().expect("X ends");
    assert!(
        slept.is_err_and(|e| e.is_cancelled()),
        "X's request was lost: its sleep ran on"
    );
    rt.shutdown(WAIT).unwrap();
}

/// Awaiting its own handle is refused (asyncio: "Task cannot await on itself"), and the
/// task can then be cancelled as any other. Before, the await waited for ever, and a cancel
/// of the task recursed until the stack overflowed, aborting the process.
#[test]
fn a_task_awaiting_itself_is_refused_and_can_be_cancelled() {
    let rt = runtime(2);
    let slot: Arc<Mutex<Option<Task<()>>>> = Arc::new(Mutex::new(None));
    let (refusal_tx, refusal_rx) = mpsc::channel();
    let go = Promise::<()>::new();
    let (s, go_in_task) = (slot.clone(), go.clone());
    let me = rt
        .event_loop()
        .spawn(async move {
            go_in_task.await?;
            let me = s.lock().unwrap().take().expect("the handle was handed in");
            refusal_tx.send(me.await.map_err(|e| e.kind())).unwrap();
            braid::sleep(LONG).await
        })
        .unwrap();
    let watcher = me.as_ref();
    *slot.lock().unwrap() = Some(me);
    go.set_result(()).unwrap();
    let refusal = refusal_rx
        .recv_timeout(WAIT)
        .expect("the await of itself returned");
    assert_eq!(refusal, Err(braid::ErrorKind::InvalidState));
    assert!(watcher.cancel());
    let deadline = Instant::now() + WAIT;
    while !watcher.done() && Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert!(watcher.cancelled(), "the cancel reached the task");
    rt.shutdown(WAIT).unwrap();
}

/// Two tasks awaiting each other wait for ever (as in asyncio). A cancel of one travels to
/// the other and back; it must stop where the cycle closes instead of going round until the
/// stack overflows (the process aborted). Both stay as they were, each with the request
/// counted once.
#[test]
fn a_cancel_going_round_a_cycle_of_awaits_stops_where_it_closes() {
    let rt = runtime(2);
    type Slot = Arc<Mutex<Option<Task<()>>>>;
    let (slot_a, slot_b): (Slot, Slot) = Default::default();
    let awaiting = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let go = Promise::<()>::new();
    let spawn_awaiting = |other: &Slot| {
        let (other, awaiting, go) = (other.clone(), awaiting.clone(), go.clone());
        rt.event_loop()
            .spawn(async move {
                go.await?;
                let mut other = other.lock().unwrap().take().expect("handed in");
                poll_fn(|cx| {
                    let polled = Pin::new(&mut other).poll(cx);
                    if polled.is_pending() {
                        // Registered as what this task awaits.
                        awaiting.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    polled
                })
                .await
            })
            .unwrap()
    };
    let a = spawn_awaiting(&slot_b);
    let b = spawn_awaiting(&slot_a);
    let (a_ref, b_ref) = (a.as_ref(), b.as_ref());
    *slot_a.lock().unwrap() = Some(a);
    *slot_b.lock().unwrap() = Some(b);
    go.set_result(()).unwrap();
    let deadline = Instant::now() + WAIT;
    while awaiting.load(std::sync::atomic::Ordering::SeqCst) < 2 && Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert!(a_ref.cancel(), "the request is taken");
    assert_eq!((a_ref.cancelling(), b_ref.cancelling()), (1, 1));
    assert!(
        !a_ref.done() && !b_ref.done(),
        "they still wait for each other"
    );
    // The shutdown finishes them (and reports them left running).
    assert!(rt.shutdown(Duration::from_millis(300)).is_err());
    assert!(a_ref.done() && b_ref.done());
}

/// A request landing from another thread during a task's final step is too late (the task
/// keeps its value), also when a request pending as that step began was delivered, and
/// caught, in it. Before, the second was taken for the first, and the value thrown away.
#[test]
fn a_request_during_a_final_step_that_caught_an_earlier_one_is_too_late() {
    for round in 0..10 {
        let rt = runtime(2);
        let (in_step_tx, in_step_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let mut t = rt
            .event_loop()
            .spawn(async move {
                braid::current_task().expect("in a task").cancel();
                // Suspend where the request is not looked at: it is still pending as the
                // next (final) step begins.
                let mut once = false;
                poll_fn(|cx| {
                    if once {
                        Poll::Ready(())
                    } else {
                        once = true;
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                })
                .await;
                let caught = braid::yield_now().await;
                assert!(caught.is_err_and(|e| e.is_cancelled()));
                in_step_tx.send(()).unwrap();
                let _ = release_rx.recv_timeout(WAIT);
                Ok(5)
            })
            .unwrap();
        in_step_rx.recv_timeout(WAIT).unwrap();
        assert!(t.cancel(), "still running");
        release_tx.send(()).unwrap();
        let out = rt.run_until_complete(&mut t);
        assert_eq!(
            out.ok(),
            Some(5),
            "round {round}: the value was thrown away"
        );
        assert!(!t.cancelled());
        rt.shutdown(WAIT).unwrap();
    }
}

/// The task that dresses `run_until_complete`'s future is done once the future returned, as
/// asyncio's main task is: a `TaskRef` taken inside reads it done (and cancelled if it ended
/// so), and `cancel()` on it returns false.
#[test]
fn the_main_task_is_done_once_run_until_complete_returns() {
    let rt = runtime(1);
    let main = rt
        .run_until_complete(async { Ok(braid::current_task().expect("in the main task")) })
        .unwrap();
    assert!(main.done() && !main.cancelled());
    assert!(!main.cancel(), "a finished task refuses a cancel");
    let cancelled_main = Arc::new(Mutex::new(None));
    let kept = cancelled_main.clone();
    let ended = rt.run_until_complete(async move {
        let me = braid::current_task().expect("in the main task");
        *kept.lock().unwrap() = Some(me.clone());
        me.cancel();
        braid::sleep(LONG).await
    });
    assert!(ended.is_err_and(|e| e.is_cancelled()));
    let main = cancelled_main.lock().unwrap().take().unwrap();
    assert!(main.done() && main.cancelled());
    rt.shutdown(WAIT).unwrap();
}

/// The same through a gather: A gathers B, B awaits A, and A cancels itself. A's request
/// reaches its gather at A's next poll, goes on to B, and back to A, where it must stop;
/// before, A was woken to pass it on again, for ever (a busy loop, `cancelling()` growing).
#[test]
fn a_self_cancel_going_round_a_cycle_through_a_gather_stops() {
    let rt = runtime(2);
    let slot: Arc<Mutex<Option<Task<()>>>> = Arc::default();
    let b_awaiting = Promise::<()>::new();
    let (slot_in_b, b_in) = (slot.clone(), b_awaiting.clone());
    let b = rt
        .event_loop()
        .spawn(async move {
            let mut a = loop {
                if let Some(a) = slot_in_b.lock().unwrap().take() {
                    break a;
                }
                braid::yield_now().await?;
            };
            poll_fn(|cx| {
                let polled = Pin::new(&mut a).poll(cx);
                let _ = b_in.set_result(());
                polled
            })
            .await
        })
        .unwrap();
    let b_ref = b.as_ref();
    let a = rt
        .event_loop()
        .spawn(async move {
            b_awaiting.await?;
            braid::current_task().expect("in a task").cancel();
            braid::gather(vec![b]).await.map(|_| ())
        })
        .unwrap();
    let a_ref = a.as_ref();
    *slot.lock().unwrap() = Some(a);
    let deadline = Instant::now() + WAIT;
    while b_ref.cancelling() == 0 && Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert_eq!(b_ref.cancelling(), 1, "the request reached B");
    // Give a busy loop time to show: each round would count the request again.
    let settle = Instant::now() + Duration::from_millis(200);
    while Instant::now() < settle {
        std::thread::yield_now();
    }
    assert_eq!((a_ref.cancelling(), b_ref.cancelling()), (1, 1));
    assert!(rt.shutdown(Duration::from_millis(300)).is_err());
}
