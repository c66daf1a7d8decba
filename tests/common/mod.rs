//! Helpers shared by the integration tests (each test file includes this with `mod common;`
//! and uses what it needs).
#![allow(dead_code)]

use braid::Runtime;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// How long a test waits for something that should happen at once; only a hang reaches it.
pub(crate) const WAIT: Duration = Duration::from_secs(5);

/// A runtime with `workers` loops.
pub(crate) fn runtime(workers: usize) -> Runtime {
    Runtime::builder()
        .workers(workers)
        .build()
        .expect("runtime")
}

/// Serialises the tests of one file that measure time or share the machine's cores.
pub(crate) fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The names of this process's threads that start with `prefix` (from `/proc/self/task`,
/// where names are cut to 15 bytes).
pub(crate) fn threads_named(prefix: &str) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for entry in dir.flatten() {
            if let Ok(name) = std::fs::read_to_string(entry.path().join("comm")) {
                let name = name.trim();
                if name.starts_with(prefix) {
                    names.push(name.to_owned());
                }
            }
        }
    }
    names
}
