//! An indicatif bar drawn from the engine's counters, only when stderr is a
//! terminal: scripts and logs get no escape codes.

use homesync_client::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub struct Bar {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Bar {
    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts drawing `progress` if `wanted` and stderr is a terminal.
pub fn start(progress: &Arc<Progress>, wanted: bool, verb: &'static str) -> Bar {
    let progress = progress.clone();
    start_with(wanted, move || {
        let (files, files_total, bytes, bytes_total) = progress.get();
        (
            format!("{verb} {files}/{files_total} files"),
            bytes,
            bytes_total,
        )
    })
}

/// Starts drawing what `read` returns (message, bytes done, bytes in all),
/// ten times a second, if `wanted` and stderr is a terminal.
pub fn start_with(wanted: bool, read: impl Fn() -> (String, u64, u64) + Send + 'static) -> Bar {
    let stop = Arc::new(AtomicBool::new(false));
    if !wanted || !std::io::stderr().is_terminal() {
        return Bar { stop, thread: None };
    }
    let stop2 = stop.clone();
    let thread = std::thread::spawn(move || {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(10));
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .expect("valid template"),
        );
        while !stop2.load(Ordering::Relaxed) {
            let (msg, bytes, bytes_total) = read();
            bar.set_length(bytes_total.max(bytes));
            bar.set_position(bytes);
            bar.set_message(msg);
            std::thread::sleep(Duration::from_millis(100));
        }
        bar.finish_and_clear();
    });
    Bar {
        stop,
        thread: Some(thread),
    }
}
