//! Progress counters, updated by the engine and read by whoever draws them
//! (the CLI's indicatif bar). Plain atomics: the engine never waits on UI.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct Progress {
    pub files_total: AtomicU64,
    pub bytes_total: AtomicU64,
    pub files_done: AtomicU64,
    pub bytes_done: AtomicU64,
    pub errors: AtomicU64,
}

impl Progress {
    pub fn add_total(&self, files: u64, bytes: u64) {
        self.files_total.fetch_add(files, Relaxed);
        self.bytes_total.fetch_add(bytes, Relaxed);
    }

    pub fn add_done(&self, files: u64, bytes: u64) {
        self.files_done.fetch_add(files, Relaxed);
        self.bytes_done.fetch_add(bytes, Relaxed);
    }

    pub fn get(&self) -> (u64, u64, u64, u64) {
        (
            self.files_done.load(Relaxed),
            self.files_total.load(Relaxed),
            self.bytes_done.load(Relaxed),
            self.bytes_total.load(Relaxed),
        )
    }
}
