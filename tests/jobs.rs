//! The server's jobs end to end: `homesync admin run-job` applies the config's
//! retention, collects garbage and checks data, `admin jobs` reports what
//! they did, a running job refuses a second start from another process, and
//! `homesync serve` runs the jobs on its own on the config's schedule.

mod common;

use common::*;
use homesync_protocol::{
    BlobEncoder, BlobKind, ChunkId, Node, NodeKind, Repository, Snapshot, Tree,
};
use homesync_server::index::Index;
use homesync_server::retention::parse_utc;
use homesync_server::{OpenOptions, Store};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

/// Commits, for each (machine, time), a snapshot of one file of its own
/// 200 KB of incompressible bytes, so forgetting a snapshot leaves garbage.
fn commit(repo: &Path, snaps: &[(&str, &str)]) {
    let store = Store::open(repo, OpenOptions::default()).unwrap();
    for (i, (machine, time)) in snaps.iter().enumerate() {
        let data = random_bytes(i as u64 + 1, 200_000);
        let chunk = ChunkId::of(&data);
        store
            .put_blob(
                chunk.into(),
                BlobKind::Chunk,
                &BlobEncoder::new(3).encode(BlobKind::Chunk, &data),
            )
            .unwrap();
        let mut file = Node::new(format!("file{i}").into_bytes(), NodeKind::File);
        file.size = data.len() as u64;
        file.chunks = vec![chunk];
        let tree = Tree::new(vec![file]);
        store
            .put_blob(
                tree.id().into(),
                BlobKind::Tree,
                &BlobEncoder::new(3).encode(BlobKind::Tree, &tree.encode()),
            )
            .unwrap();
        let mut root = Node::new(b"root".to_vec(), NodeKind::Dir);
        root.mode = 0o755;
        root.subtree = Some(tree.id());
        store
            .commit_snapshot(&Snapshot {
                time: parse_utc(time).unwrap(),
                machine: machine.to_string(),
                source: b"/home".to_vec(),
                root,
                parent: None,
                tags: vec![],
                stats: Default::default(),
            })
            .unwrap();
    }
}

/// The `job` line of a kind in `admin jobs --json`.
fn listed(hs: &Homesync, kind: &str) -> Value {
    let run = hs.run(args!["admin", "jobs"]);
    run.expect_ok();
    let jobs = run.messages("job");
    assert_eq!(jobs.len(), 4, "{}", run.describe());
    jobs.into_iter()
        .find(|j| j["kind"] == kind)
        .cloned()
        .unwrap_or_else(|| panic!("no {kind} line\n{}", run.describe()))
}

#[test]
fn run_job_applies_retention_collects_garbage_and_checks() {
    let dir = tempfile::tempdir().unwrap();
    let mut hs = Homesync::new(dir.path().join("store"));
    hs.init();
    commit(
        &hs.repo,
        &[
            ("laptop", "2026-11-01 10:00:00"),
            ("laptop", "2026-11-02 10:00:00"),
            ("laptop", "2026-11-03 10:00:00"),
            ("laptop", "2026-11-04 10:00:00"),
            ("desk", "2026-11-01 10:00:00"),
            ("desk", "2026-11-02 10:00:00"),
            ("desk", "2026-11-03 10:00:00"),
        ],
    );
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        "store = \"store\"\n\
         [retention]\nkeep_last = 2\n\
         [retention.machines.desk]\nkeep_last = 1\n\
         [jobs]\ncheck_subset_parts = 1\n",
    )
    .unwrap();
    hs.env
        .push(("HOMESYNC_NOW".into(), "2026-11-05T00:00:00Z".into()));

    // Before any run: every kind listed, never run.
    let never = listed(&hs, "gc");
    assert!(never["started"].is_null(), "{never}");
    assert!(never["running"].is_null(), "{never}");

    let run = hs.run(args![
        "admin",
        "run-job",
        "retention",
        "--server-config",
        config
    ]);
    run.expect_ok();
    let job = run.messages("job")[0].clone();
    assert_eq!(job["result"], "ok", "{job}");
    // laptop keeps 2 of 4, desk 1 of 3.
    assert_eq!(job["numbers"]["snapshots_removed"], 4, "{job}");
    assert_eq!(job["numbers"]["snapshots_kept"], 3, "{job}");
    assert_eq!(
        Store::open(&hs.repo, OpenOptions::default())
            .unwrap()
            .snapshots()
            .unwrap()
            .len(),
        3
    );

    let run = hs.run(args!["admin", "run-job", "gc", "--server-config", config]);
    run.expect_ok();
    let gc = run.messages("job")[0].clone();
    assert!(
        gc["numbers"]["bytes_reclaimed"].as_u64().unwrap() > 0,
        "{gc}"
    );
    assert_eq!(gc["numbers"]["blobs_deleted"], 12, "{gc}"); // chunk, tree, snapshot blob of 4

    let run = hs.run(args![
        "admin",
        "run-job",
        "check",
        "--server-config",
        config
    ]);
    run.expect_ok();
    let check = run.messages("job")[0].clone();
    assert_eq!(check["numbers"]["damage"], 0, "{check}");
    assert!(
        check["numbers"]["bytes_read"].as_u64().unwrap() > 0,
        "{check}"
    );

    // `admin jobs` reports the same.
    let r = listed(&hs, "retention");
    assert_eq!(r["numbers"]["snapshots_removed"], 4, "{r}");
    assert_eq!(r["result"], "ok");
    assert!(r["started"].as_i64().unwrap() > 0, "{r}");
    assert!(r["duration_s"].as_f64().is_some(), "{r}");
    assert_eq!(listed(&hs, "gc")["numbers"], gc["numbers"]);
    assert_eq!(listed(&hs, "check")["numbers"]["damage"], 0);

    // A second retention run finds nothing more to remove.
    let run = hs.run(args![
        "admin",
        "run-job",
        "retention",
        "--server-config",
        config
    ]);
    assert_eq!(
        run.expect_ok().messages("job")[0]["numbers"]["snapshots_removed"],
        0
    );

    // Text output.
    let run = hs.run_text(args!["admin", "jobs"]);
    run.expect_ok();
    assert!(
        run.stdout.contains("gc ") && run.stdout.contains("reclaimed"),
        "{}",
        run.describe()
    );

    // Damage: a flipped byte in the largest pack (chunks) is found by the
    // next check job (exit 5, result `damage`).
    let packs = hs.repo.join("packs");
    let largest = walk(&packs)
        .into_iter()
        .filter(|(_, md)| md.is_file())
        .max_by_key(|(_, md)| md.len())
        .unwrap()
        .0;
    let largest = packs.join(largest);
    let mut bytes = std::fs::read(&largest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&largest, bytes).unwrap();
    let run = hs.run(args![
        "admin",
        "run-job",
        "check",
        "--server-config",
        config
    ]);
    run.expect_code(5);
    let job = run.messages("job")[0].clone();
    assert_eq!(job["result"], "damage", "{job}");
    assert!(job["numbers"]["damage"].as_u64().unwrap() >= 1, "{job}");
    assert_eq!(listed(&hs, "check")["result"], "damage");
}

#[test]
fn a_running_job_refuses_a_second_start_from_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let hs = Homesync::new(dir.path().join("store"));
    hs.init();
    // This test process holds the gc lock, as a server running it would.
    let me = (
        std::process::id(),
        homesync_server::gc::process_start(std::process::id()).unwrap(),
    );
    let mut index = Index::open(&hs.repo.join("index.sqlite"), false).unwrap();
    let alive = |pid, start| homesync_server::gc::process_start(pid) == Some(start);
    assert!(index.claim_job("gc", &[], me, 1, &alive).unwrap().is_none());

    for kind in ["gc", "check"] {
        let run = hs.run(args!["admin", "run-job", kind]);
        run.expect_code(1);
        let msg = run.errors()[0]["error"].as_str().unwrap().to_string();
        assert!(msg.contains("a gc job is running"), "{msg}");
    }
    // So are a hand-run `homesync gc` and `homesync check`.
    for cmd in ["gc", "check"] {
        let run = hs.run(args![cmd]);
        run.expect_code(1);
        let msg = run.errors()[0]["error"].as_str().unwrap().to_string();
        assert!(msg.contains("a gc job is running"), "{cmd}: {msg}");
    }
    // Listed as running.
    assert_eq!(listed(&hs, "gc")["running"]["pid"], me.0);
    // Retention does not conflict (and without a policy, does nothing).
    let run = hs.run(args!["admin", "run-job", "retention"]);
    run.expect_ok();
    let msg = run.messages("job")[0]["summary"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("no [retention] policy"), "{msg}");

    index.release_job("gc", me).unwrap();
    hs.run(args!["admin", "run-job", "gc"]).expect_ok();
    // A row left by a dead process does not block.
    assert!(
        index
            .claim_job("check", &[], (me.0, me.1 + 1), 1, &|_, _| true)
            .unwrap()
            .is_none()
    );
    hs.run(args!["admin", "run-job", "check"]).expect_ok();
}

/// `homesync --json serve --server-config CONFIG`, and its JSON lines.
fn serve(config: &Path) -> (Child, Receiver<Value>) {
    let mut child = Command::new(bin())
        .args(["--json", "serve", "--server-config"])
        .arg(config)
        .env("HOMESYNC_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    let out = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for l in out.lines() {
            let Ok(l) = l else { break };
            if let Ok(v) = serde_json::from_str(&l) {
                let _ = tx.send(v);
            }
        }
    });
    (child, rx)
}

#[test]
fn serve_runs_the_jobs_on_its_schedule_and_stops_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let hs = Homesync::new(dir.path().join("store"));
    hs.init();
    commit(
        &hs.repo,
        &[
            ("laptop", "2026-11-01 10:00:00"),
            ("laptop", "2026-11-02 10:00:00"),
        ],
    );
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        "store = \"store\"\nlisten = \"127.0.0.1:0\"\n\
         [retention]\nkeep_last = 1\n\
         [jobs]\nretention_every = \"1s\"\ngc_every = \"1s\"\ncheck_every = \"2s\"\n\
         index_copy_every = \"2s\"\n",
    )
    .unwrap();
    let (mut child, rx) = serve(&config);
    // Every kind runs, and the frequent ones run again.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut runs: Vec<Value> = Vec::new();
    let enough = |runs: &[Value]| {
        let n = |k: &str| runs.iter().filter(|j| j["kind"] == k).count();
        n("retention") >= 2 && n("gc") >= 2 && n("check") >= 1 && n("index-copy") >= 1
    };
    while !enough(&runs) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) if v["message_type"] == "job" => runs.push(v),
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                panic!("the server ran only these jobs in 30 s: {runs:?}");
            }
        }
    }
    let first = runs.iter().find(|j| j["kind"] == "retention").unwrap();
    assert_eq!(first["numbers"]["snapshots_removed"], 1, "{runs:?}");
    assert!(runs.iter().all(|j| j["result"] == "ok"), "{runs:?}");
    assert!(
        runs.iter()
            .filter(|j| j["kind"] == "gc")
            .any(|j| j["numbers"]["bytes_reclaimed"].as_u64() > Some(0)),
        "{runs:?}"
    );
    // The server's runs are in the jobs table too.
    assert_eq!(listed(&hs, "check")["numbers"]["damage"], 0);
    // The index copy is a sound SQLite file naming the snapshot kept.
    let copies: Vec<_> = std::fs::read_dir(hs.repo.join("index-copies"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!copies.is_empty() && copies.len() <= 3, "{copies:?}");
    let copy = Index::open(&copies[0], false).unwrap();
    assert_eq!(copy.integrity_problem().unwrap(), None);
    assert!(!copy.snapshots().unwrap().is_empty());

    // SIGTERM: the server stops within a few seconds.
    let stopped = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if stopped.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            panic!("the server did not stop within 15 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // Restarted with hourly jobs: they ran moments ago, so none runs now.
    std::fs::write(
        &config,
        "store = \"store\"\nlisten = \"127.0.0.1:0\"\n\
         [jobs]\nretention_every = \"1h\"\ngc_every = \"1h\"\ncheck_every = \"1h\"\n",
    )
    .unwrap();
    let (mut child, rx) = serve(&config);
    let until = Instant::now() + Duration::from_secs(3);
    let mut listening = false;
    while let Ok(v) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
        assert_ne!(v["message_type"], "job", "ran again after a restart: {v}");
        listening |= v["message_type"] == "listening";
    }
    assert!(listening);
    assert!(child.try_wait().unwrap().is_none(), "the server stopped");
    let _ = child.kill();
    let _ = child.wait();
}
