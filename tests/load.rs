//! Load: many machines backing up and restoring against one real `homesync
//! serve` on 127.0.0.1 at once, each through its own QUIC connection (the
//! client library, one connection per machine, as the daemon keeps).
//! No errors, every machine gets through its rounds, every restore is
//! byte-identical, and the server's peak memory stays bounded.
//!
//! `HOMESYNC_LOAD_CLIENTS` (default 50) and `HOMESYNC_LOAD_ROUNDS`
//! (default 2) make the long mode run by hand; the figures it prints are in
//! docs/reliability.md.

mod common;

use common::server::Server;
use common::*;
use homesync_client::backup::{self, BackupOptions};
use homesync_client::progress::Progress;
use homesync_client::restore::{self, RestoreOptions};
use homesync_protocol::Repository;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The server's peak resident memory so far, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// A small home: files every machine shares (dedup across the fleet) and
/// files of its own.
fn make_home(dir: &Path, machine: usize) {
    write_file(&dir.join("shared/manual.pdf"), &random_bytes(7, 256 << 10));
    for i in 0..20 {
        write_file(
            &dir.join(format!("docs/note-{i}.txt")),
            format!("machine {machine} note {i}\n")
                .repeat(50)
                .as_bytes(),
        );
    }
    write_file(
        &dir.join("photo.jpg"),
        &random_bytes(1000 + machine as u64, 192 << 10),
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn many_machines_back_up_and_restore_at_once_without_errors() {
    let clients = env_or("HOMESYNC_LOAD_CLIENTS", 50);
    let rounds = env_or("HOMESYNC_LOAD_ROUNDS", 2);
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let creds: Vec<String> = (0..clients)
        .map(|i| server.add_machine(&format!("m{i:03}"), false))
        .collect();
    let backups = Mutex::new(Vec::new());
    let restores = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|s| {
        for (i, cred) in creds.iter().enumerate() {
            let (server, backups, restores) = (&server, &backups, &restores);
            let root = tmp.path().join(format!("m{i:03}"));
            s.spawn(move || {
                let home = root.join("home");
                make_home(&home, i);
                let repo = server
                    .remote(cred)
                    .unwrap_or_else(|e| panic!("machine {i}: connecting: {e}"));
                for round in 0..rounds {
                    write_file(
                        &home.join("docs/today.txt"),
                        format!("machine {i}, round {round}\n").as_bytes(),
                    );
                    let opts = BackupOptions {
                        source: home.clone(),
                        excludes: vec![],
                        default_excludes: false,
                        one_file_system: true,
                        machine: format!("m{i:03}"),
                        tags: vec![],
                        cache_dir: None,
                        skip: vec![],
                        incremental: None,
                    };
                    let t = Instant::now();
                    let report = backup::backup(&repo, &opts, &Progress::default())
                        .unwrap_or_else(|e| panic!("machine {i} round {round}: backup: {e}"));
                    backups.lock().unwrap().push(t.elapsed());
                    assert!(report.errors.is_empty(), "machine {i}: {:?}", report.errors);

                    let target = root.join(format!("restored-{round}"));
                    let t = Instant::now();
                    let r = restore::restore(
                        &repo,
                        &report.snapshot,
                        &RestoreOptions {
                            target: target.clone(),
                            paths: vec![],
                            numeric_ids: true,
                            on_ready: None,
                            plan_window: None,
                        },
                        &Progress::default(),
                    )
                    .unwrap_or_else(|e| panic!("machine {i} round {round}: restore: {e}"));
                    restores.lock().unwrap().push(t.elapsed());
                    assert!(r.errors.is_empty(), "machine {i}: {:?}", r.errors);
                    assert_eq!(
                        describe_tree(&target),
                        describe_tree(&home),
                        "machine {i} round {round}"
                    );
                }
                // Each machine sees only its own snapshots, all of them.
                let mine = repo.snapshots().unwrap();
                assert_eq!(mine.len(), rounds, "machine {i}");
                assert!(mine.iter().all(|(_, s)| s.machine == format!("m{i:03}")));
            });
        }
    });
    let wall = started.elapsed();
    let peak = peak_rss_kib(server.child.id());
    let mut b = backups.into_inner().unwrap();
    let mut r = restores.into_inner().unwrap();
    b.sort();
    r.sort();
    assert_eq!(b.len(), clients * rounds);
    assert_eq!(r.len(), clients * rounds);
    eprintln!(
        "load: {clients} machines x {rounds} rounds in {:.1} s; backup p50 {:?} p99 {:?} max {:?}; \
         restore p50 {:?} p99 {:?} max {:?}; server peak RSS {} MiB",
        wall.as_secs_f64(),
        percentile(&b, 0.5),
        percentile(&b, 0.99),
        b[b.len() - 1],
        percentile(&r, 0.5),
        percentile(&r, 0.99),
        r[r.len() - 1],
        peak / 1024
    );
    // Bounded memory: the server's buffers are per request and limited
    // (docs/design.md), not per machine's data.
    assert!(
        peak < 768 * 1024,
        "server peak RSS {} MiB with {clients} machines",
        peak / 1024
    );
}
