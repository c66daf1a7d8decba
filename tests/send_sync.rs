//! The type-level API (API.md, "Across the whole API"), pinned at compile time as tokio's
//! `tests/async_send_sync.rs` does: every public type is `Debug` (`Task<T>` and `Promise<T>`
//! without `T: Debug`); handles and futures are `Unpin`, and `Send + Sync` when their `T` is
//! `Send`; `Promise`, `EventLoop` and `TaskRef` are `Clone` without `T: Clone`; ids and plain
//! enums are `Copy + Eq + Hash + Debug`; `Error` is `Send + Sync + 'static + Clone`. A failure
//! here is a compile error of this test binary.
//!
//! Only positives are checked here: negatives (`Task<Rc<..>>` is not `Send`, and so on) need
//! `compile_fail` doctests, which cannot live in `tests/`; they belong in the runtime's
//! rustdoc.

use braid::{
    CallbackHandle, CallbackId, Error, ErrorKind, EventLoop, ExceptionContext, LoopState, Promise,
    PromiseFuture, Runtime, Sleep, Task, TaskId, TaskRef, TimerHandle, YieldNow,
};
use std::fmt::{Debug, Display};
use std::future::{Future, IntoFuture};
use std::hash::Hash;
use std::time::{Duration, Instant};

fn send<T: Send>() {}
fn sync<T: Sync>() {}
fn unpin<T: Unpin>() {}
fn debug<T: Debug>() {}
fn clone<T: Clone>() {}
fn id_like<T: Copy + Eq + Hash + Debug + Send + Sync + 'static>() {}
fn send_sync_unpin<T: Send + Sync + Unpin>() {}

fn future_send_sync_unpin<F: Future + Send + Sync + Unpin>(_: &F) {}

/// A payload that is Send + Sync but neither Debug nor Clone.
struct Opaque(#[allow(dead_code)] u8);

/// `Task<T>` is Send + Sync + Unpin + Debug for a Send `T`, without `T: Debug` or `T: Clone`,
/// and is a `Future<Output = braid::Result<T>>`.
#[test]
fn task_is_send_sync_unpin_debug_for_send_t() {
    send_sync_unpin::<Task<u32>>();
    send_sync_unpin::<Task<Opaque>>();
    send_sync_unpin::<Task<String>>();
    debug::<Task<Opaque>>();
    fn output<T, F: Future<Output = braid::Result<T>>>() {}
    output::<Opaque, Task<Opaque>>();
}

/// `TaskRef` and `TaskId`: TaskRef is Clone + Send + Sync + Debug + Eq + Hash; TaskId is an
/// id type (Copy + Eq + Hash + Debug).
#[test]
fn task_ref_and_task_id() {
    send_sync_unpin::<TaskRef>();
    clone::<TaskRef>();
    debug::<TaskRef>();
    fn eq_hash<T: Eq + Hash>() {}
    eq_hash::<TaskRef>();
    id_like::<TaskId>();
}

/// `Promise<T>` is Clone without `T: Clone`, Send + Sync + Unpin for a Send `T`, Debug
/// without `T: Debug`; its future (`PromiseFuture<T>`) is Send + Sync + Unpin + Debug.
#[test]
fn promise_and_its_future() {
    clone::<Promise<Opaque>>();
    send_sync_unpin::<Promise<Opaque>>();
    debug::<Promise<Opaque>>();
    send_sync_unpin::<PromiseFuture<String>>();
    debug::<PromiseFuture<Opaque>>();
    fn into_future<T: Clone + Send + 'static>(p: Promise<T>) -> PromiseFuture<T> {
        p.into_future()
    }
    let fut = into_future(Promise::<u8>::new());
    future_send_sync_unpin(&fut);
    id_like::<CallbackId>();
}

/// `EventLoop` is Clone + Send + Sync + Unpin + Debug; `Runtime` is Send + Sync + Debug (so
/// it can be shared in an `Arc`); `Builder` is Send + Debug.
#[test]
fn event_loop_runtime_builder() {
    send_sync_unpin::<EventLoop>();
    clone::<EventLoop>();
    debug::<EventLoop>();
    send::<Runtime>();
    sync::<Runtime>();
    debug::<Runtime>();
    send::<braid::Builder>();
    debug::<braid::Builder>();
}

/// Callback and timer handles are Send + Sync + Unpin + Debug; `ExceptionContext` is
/// Send + Sync + Debug (handlers are `Fn(&ExceptionContext) + Send + Sync`).
#[test]
fn handles_and_exception_context() {
    send_sync_unpin::<CallbackHandle>();
    debug::<CallbackHandle>();
    send_sync_unpin::<TimerHandle>();
    debug::<TimerHandle>();
    send::<ExceptionContext>();
    sync::<ExceptionContext>();
    debug::<ExceptionContext>();
}

/// `ErrorKind` and `LoopState` are Copy + Eq + Hash + Debug; `Error` is Send + Sync +
/// 'static + Clone + Debug + Display, converts from std errors with `?`, and into
/// `Box<dyn std::error::Error + Send + Sync>`.
#[test]
fn error_types() {
    id_like::<ErrorKind>();
    id_like::<LoopState>();
    fn error_like<T: Send + Sync + 'static + Clone + Debug + Display + Unpin>() {}
    error_like::<Error>();
    fn parse(s: &str) -> braid::Result<u8> {
        Ok(s.parse::<u8>()?)
    }
    assert!(parse("300").is_err());
    let boxed: Box<dyn std::error::Error + Send + Sync> = Error::msg("boxed").into();
    assert_eq!(boxed.to_string(), "boxed");
}

/// The futures of `sleep`, `sleep_until` and `yield_now` are Send + Sync + Unpin (+ Debug),
/// as are the futures of `create_task`'s `Task` (checked on values, as users hold them).
#[test]
fn free_function_futures_are_send_sync_unpin() {
    let s = braid::sleep(Duration::from_millis(1));
    future_send_sync_unpin(&s);
    let su = braid::sleep_until(Instant::now());
    future_send_sync_unpin(&su);
    let y = braid::yield_now();
    future_send_sync_unpin(&y);
    debug::<Sleep>();
    debug::<YieldNow>();
    unpin::<Sleep>();
    unpin::<YieldNow>();
    // A task handle is also a Send + Sync + Unpin future; built on a runtime to hold a value.
    let rt = Runtime::builder().workers(1).build().unwrap();
    let t = rt.event_loop().spawn(async { Ok(Opaque(1)) }).unwrap();
    future_send_sync_unpin(&t);
    assert!(rt.run_until_complete(t).is_ok());
    rt.shutdown(Duration::from_secs(5)).unwrap();
}
