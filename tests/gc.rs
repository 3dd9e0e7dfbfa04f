//! Garbage collection end to end: the real binary on a real store, while
//! real backups run against a real server, and killed at random moments.

mod common;

use common::server::*;
use common::*;
use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn packs_bytes(store: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        std::fs::read_dir(p)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let m = e.metadata().unwrap();
                if m.is_dir() { walk(&e.path()) } else { m.len() }
            })
            .sum()
    }
    walk(&store.join("packs"))
}

fn gc(hs: &Homesync) -> serde_json::Value {
    let run = hs.run(&[OsStr::new("gc")]);
    run.expect_ok();
    run.messages("gc")[0].clone()
}

fn restore_and_compare(hs: &Homesync, snapshot: &str, expected: &Path, target: &Path) {
    hs.restore(snapshot, target, &[]).expect_ok();
    assert_same_listing(
        &format!("snapshot {snapshot}"),
        &mtree(expected),
        &mtree(target),
    );
}

#[test]
fn gc_reclaims_what_only_forgotten_snapshots_used() {
    let tmp = tempfile::tempdir().unwrap();
    let hs = Homesync::new(tmp.path().join("store"));
    hs.init();
    let src = tmp.path().join("src");
    write_file(&src.join("a"), &random_bytes(1, 3 << 20));
    write_file(&src.join("b"), &random_bytes(2, 3 << 20));
    let first = hs.backup(&src, &[]).snapshot_id();
    std::fs::remove_file(src.join("b")).unwrap();
    write_file(&src.join("c"), &random_bytes(3, 2 << 20));
    let second = hs.backup(&src, &[]).snapshot_id();
    let copy = tmp.path().join("expected");
    sh(
        "cp",
        &[OsStr::new("-a"), src.as_os_str(), copy.as_os_str()],
        None,
    );

    let before = packs_bytes(&hs.repo);
    hs.run(&[OsStr::new("forget"), OsStr::new(&first)])
        .expect_ok();
    let r = gc(&hs);
    let freed = before - packs_bytes(&hs.repo);
    assert!(r["blob_bytes_deleted"].as_u64().unwrap() >= 3 << 20, "{r}");
    assert!(freed >= 3 << 20, "only {freed} bytes freed: {r}");
    restore_and_compare(&hs, &second, &copy, &tmp.path().join("r"));
    hs.run(&[OsStr::new("check"), OsStr::new("--read-data")])
        .expect_ok();
    // Nothing left to do.
    assert_eq!(gc(&hs)["blobs_deleted"], 0);
}

#[test]
fn backups_over_the_server_commit_and_restore_while_gc_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let client = server.client(&server.add_machine("laptop", false), tmp.path());
    let src = tmp.path().join("src");
    let mut before: Vec<String> = Vec::new();
    // Each round forgets the previous snapshot, so there is always garbage
    // for the collector, some of it chunks the running backup re-uses.
    for round in 0..4u64 {
        for i in 0..6 {
            write_file(
                &src.join(format!("f{i}")),
                &random_bytes((round * 3 + i) % 8, 1 << 20),
            );
        }
        // gc in a loop, in another process, for as long as the backup runs.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let runner = {
            let stop = stop.clone();
            let repo = server.store.repo.clone();
            std::thread::spawn(move || {
                let mut runs = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || runs == 0 {
                    let out = Command::new(bin())
                        .arg("--repo")
                        .arg(&repo)
                        .arg("gc")
                        .stdout(Stdio::null())
                        .output()
                        .unwrap();
                    assert!(
                        out.status.success(),
                        "gc failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    runs += 1;
                    std::thread::sleep(Duration::from_millis(round * 7));
                }
                runs
            })
        };
        let id = client.backup(&src).snapshot_id();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(runner.join().unwrap() >= 1);
        // Machines are append-only: forget on the store itself.
        for old in before.drain(..) {
            server
                .store
                .run(&[OsStr::new("forget"), OsStr::new(&old)])
                .expect_ok();
        }
        before.push(id);
        let target = tmp.path().join(format!("restored{round}"));
        client.restore_latest(&target);
        assert_same_listing(&format!("round {round}"), &mtree(&src), &mtree(&target));
    }
    // And after a last collection with no backup running.
    gc(&server.store);
    let target = tmp.path().join("restored-final");
    client.restore_latest(&target);
    assert_same_listing("final", &mtree(&src), &mtree(&target));
}

#[test]
fn gc_killed_at_any_moment_leaves_a_store_the_next_run_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let hs = Homesync::new(tmp.path().join("store"));
    hs.init();
    let src = tmp.path().join("src");
    // Many small packs' worth of garbage, and some packs to rewrite.
    let mut ids = Vec::new();
    for round in 0..4u64 {
        for i in 0..40 {
            write_file(
                &src.join(format!("d{}/f{i}", i % 4)),
                &random_bytes(round * 100 + i, 200_000 + i as usize),
            );
        }
        ids.push(hs.backup(&src, &[]).snapshot_id());
    }
    let copy = tmp.path().join("expected");
    sh(
        "cp",
        &[OsStr::new("-a"), src.as_os_str(), copy.as_os_str()],
        None,
    );
    for id in &ids[..3] {
        hs.run(&[OsStr::new("forget"), OsStr::new(id)]).expect_ok();
    }
    let gc_child = |repo: &Path| {
        Command::new(bin())
            .arg("--repo")
            .arg(repo)
            .args(["gc", "--rewrite-below", "0.99"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // How long a whole run takes here (on a copy), so that the kills land
    // inside runs however fast collection becomes.
    let probe = tmp.path().join("probe");
    sh(
        "cp",
        &[OsStr::new("-a"), hs.repo.as_os_str(), probe.as_os_str()],
        None,
    );
    let t = std::time::Instant::now();
    assert!(gc_child(&probe).wait().unwrap().success());
    let whole = t.elapsed();
    let mut killed = 0;
    for (i, eighths) in [0u32, 1, 2, 3, 5].into_iter().enumerate() {
        let mut child = gc_child(&hs.repo);
        std::thread::sleep(whole * eighths / 8);
        let _ = child.kill();
        let status = child.wait().unwrap();
        if std::os::unix::process::ExitStatusExt::signal(&status) == Some(9) {
            killed += 1;
        }
        // Whatever the moment, the store checks out and the kept snapshot
        // restores whole.
        hs.run(&[OsStr::new("check")]).expect_ok();
        restore_and_compare(&hs, &ids[3], &copy, &tmp.path().join(format!("r{i}")));
    }
    assert!(
        killed >= 3,
        "only {killed} of 5 runs were interrupted (a whole run: {whole:?})"
    );
    // The next runs finish the job: no pack file is unindexed or missing.
    gc(&hs);
    gc(&hs);
    let r = gc(&hs);
    assert_eq!(r["condemned"], 0, "{r}");
    hs.run(&[OsStr::new("check"), OsStr::new("--read-data")])
        .expect_ok();
    restore_and_compare(&hs, &ids[3], &copy, &tmp.path().join("r-final"));
}
