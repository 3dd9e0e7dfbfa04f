//! Packs on a real Garage (S3-compatible, `scripts/garage.sh`) on
//! 127.0.0.1 behind a real `homesync serve`: backup, restore, retention,
//! GC and `check --read-data` on the bucket; a server rebuilt from the
//! bucket alone; one node of three killed mid-backup; two killed.
//!
//! Built only with `--features garage-tests` (`.ci/run` installs Garage
//! with `scripts/garage.sh install` and runs these as their own step).

mod common;

use common::garage::{Garage, KEY_ID, SECRET};
use common::server::Server;
use common::*;
use serde_json::Value;
use std::ffi::OsStr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Jobs run only when a test asks.
const NO_JOBS: &str = "[jobs]\nretention_every = \"off\"\ngc_every = \"off\"\n\
                       check_every = \"off\"\nindex_copy_every = \"off\"\n";

/// `n` files of `mib` MiB of incompressible bytes under `dir/name-i`.
fn random_files(dir: &Path, name: &str, n: u64, mib: usize, seed: u64) {
    for i in 0..n {
        write_file(
            &dir.join(format!("{name}-{i}")),
            &random_bytes(seed * 1000 + i, mib << 20),
        );
    }
}

fn arg(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// The store directory's commands, with the bucket's key in the
/// environment (the directory's backend.toml keeps no secrets).
fn store_cmd(dir: &Path) -> Homesync {
    let mut h = Homesync::new(dir.join("store"));
    h.env.push(("AWS_ACCESS_KEY_ID".into(), KEY_ID.into()));
    h.env.push(("AWS_SECRET_ACCESS_KEY".into(), SECRET.into()));
    h
}

fn run_job(dir: &Path, kind: &str) -> Value {
    let config = dir.join("server.toml");
    let run = store_cmd(dir).run(&[
        arg("admin"),
        arg("run-job"),
        arg(kind),
        arg("--server-config"),
        config.as_os_str(),
    ]);
    run.expect_ok();
    run.messages("job")[0].clone()
}

fn restore_and_compare(client: &common::server::Client, snapshot: &str, want: &Path, to: &Path) {
    client
        .run(&[
            arg("restore"),
            arg(snapshot),
            arg("--target"),
            to.as_os_str(),
        ])
        .expect_ok();
    assert_eq!(
        describe_tree(to),
        describe_tree(want),
        "restore of {snapshot}"
    );
}

#[test]
fn backup_restore_retention_gc_and_check_run_on_the_bucket() {
    let tmp = tempfile::tempdir().unwrap();
    let garage = Garage::single(&tmp.path().join("garage"));
    let server = Server::start_with_config(
        tmp.path(),
        &format!(
            "{NO_JOBS}[retention]\nkeep_last = 1\n{}",
            // Parts of 5 MiB: every full data pack goes up in parts.
            garage.s3_toml("multipart_threshold = 5242880\npart_size = 5242880\n")
        ),
    );
    let cred = server.add_machine("laptop", false);
    let home = tmp.path().join("home");
    let client = server.client(&cred, &home);
    let src = tmp.path().join("src");
    random_files(&src, "kept", 3, 4, 1);
    random_files(&src, "dropped", 2, 4, 2);
    write_file(&src.join("notes.txt"), b"small file\n");
    client.backup(&src);

    // Nothing in the store directory but the index and its config.
    assert!(!tmp.path().join("store/packs").exists());
    let packs = garage.objects("packs/");
    assert!(packs.len() >= 2, "{packs:?}");
    assert!(
        packs.iter().any(|(_, etag)| etag.contains('-')),
        "no pack was uploaded in parts: {packs:?}"
    );
    assert_eq!(garage.keys("config"), ["config"]);

    for i in 0..2 {
        std::fs::remove_file(src.join(format!("dropped-{i}"))).unwrap();
    }
    random_files(&src, "added", 1, 3, 3);
    let second = client.backup(&src).snapshot_id();

    let job = run_job(tmp.path(), "retention");
    assert_eq!(job["numbers"]["snapshots_removed"], 1, "{job}");
    let before: Vec<String> = garage.keys("packs/");
    let job = run_job(tmp.path(), "gc");
    let reclaimed = job["numbers"]["bytes_reclaimed"].as_u64().unwrap();
    assert!(reclaimed >= 7 << 20, "{job}");
    let after: Vec<String> = garage.keys("packs/");
    assert!(
        before.iter().any(|k| !after.contains(k)),
        "gc deleted no pack object"
    );

    let check = store_cmd(tmp.path()).run(&[arg("check"), arg("--read-data")]);
    check.expect_ok();
    let restored = tmp.path().join("restored");
    restore_and_compare(&client, &second, &src, &restored);

    // A damaged pack in the bucket is found by check --read-data.
    let (victim, _) = garage.objects("packs/").into_iter().next().unwrap();
    let name = victim.rsplit('/').next().unwrap();
    garage.put_object(&victim, "not a pack");
    let check = store_cmd(tmp.path()).run(&[arg("check"), arg("--read-data")]);
    check.expect_code(5);
    assert!(check.stdout.contains(name), "{}", check.stdout);
}

#[test]
fn a_wrong_key_or_a_missing_bucket_stops_the_server_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let garage = Garage::single(&tmp.path().join("garage"));
    for (what, s3, expect) in [
        (
            "wrong secret",
            garage
                .s3_toml("retries = 0\n")
                .replace(SECRET, "wrongsecret"),
            "403",
        ),
        (
            "missing bucket",
            garage
                .s3_toml("retries = 0\n")
                .replace("bucket = \"packs\"", "bucket = \"nope\""),
            "bucket nope",
        ),
    ] {
        let dir = tmp.path().join(what.replace(' ', "-"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("server.toml"), format!("store = \"store\"\n{s3}")).unwrap();
        let mut cmd = std::process::Command::new(bin());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--server-config"])
            .arg(dir.join("server.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (code, stdout, stderr) =
            run_with_timeout(cmd, Duration::from_secs(30), "homesync serve");
        assert_ne!(code, 0, "{what}: the server started: {stdout}");
        assert!(!stdout.contains("listening"), "{what}: {stdout}");
        assert!(
            stderr.contains(expect) && stderr.contains("at http://127.0.0.1"),
            "{what}: {stderr}"
        );
        // Nothing half-made is left to trip the next start.
        assert!(!dir.join("store/config").exists(), "{what}");
    }
}

#[test]
fn a_server_whose_state_directory_is_lost_rebuilds_its_index_from_the_bucket() {
    let tmp = tempfile::tempdir().unwrap();
    let garage = Garage::single(&tmp.path().join("garage"));
    let config = tmp.path().join("server.toml");
    let mut server =
        Server::start_with_config(tmp.path(), &format!("{NO_JOBS}{}", garage.s3_toml("")));
    let cred = server.add_machine("laptop", false);
    let home = tmp.path().join("home");
    let src = tmp.path().join("src");
    random_files(&src, "photo", 2, 3, 7);
    write_file(&src.join("doc.txt"), b"first version\n");
    let first = server.client(&cred, &home).backup(&src).snapshot_id();
    let first_tree = tmp.path().join("first");
    std::fs::create_dir_all(&first_tree).unwrap();
    sh(
        "cp",
        &[arg("-a"), src.join(".").as_os_str(), first_tree.as_os_str()],
        None,
    );

    // The copy knows the machine and the first snapshot; the second comes after it.
    let job = run_job(tmp.path(), "index-copy");
    assert_eq!(job["result"], "ok", "{job}");
    assert_eq!(garage.keys("index/").len(), 1);
    write_file(&src.join("doc.txt"), b"second version\n");
    random_files(&src, "video", 1, 5, 8);
    let second = server.client(&cred, &home).backup(&src).snapshot_id();

    // The server machine dies with its disk.
    let _ = server.child.kill();
    let _ = server.child.wait();
    std::fs::remove_dir_all(tmp.path().join("store")).unwrap();

    let rebuild = |extra: &[&str]| {
        let mut args = vec![
            arg("admin"),
            arg("rebuild-index"),
            arg("--server-config"),
            config.as_os_str(),
        ];
        args.extend(extra.iter().map(|a| arg(a)));
        let run = store_cmd(tmp.path()).run(&args);
        run.expect_ok();
        run.messages("rebuild_index")[0].clone()
    };
    let report = rebuild(&[]);
    assert_eq!(report["store_created"], true, "{report}");
    assert!(report["copy"].is_string(), "{report}");
    assert!(report["packs_added"].as_u64().unwrap() >= 1, "{report}");
    assert_eq!(report["snapshots"], 2, "{report}");
    assert_eq!(report["snapshots_added"], 1, "{report}");

    server = Server::start_config(&config);
    // The credential came back with the copy.
    let client = server.client(&cred, &home);
    restore_and_compare(&client, &first, &first_tree, &tmp.path().join("r1"));
    restore_and_compare(&client, &second, &src, &tmp.path().join("r2"));
    store_cmd(tmp.path())
        .run(&[arg("check"), arg("--read-data")])
        .expect_ok();
    let _ = server.child.kill();
    let _ = server.child.wait();

    // From the packs alone: every snapshot, no credentials.
    let report = rebuild(&["--packs-only", "--replace"]);
    assert!(report["copy"].is_null(), "{report}");
    assert_eq!(report["snapshots"], 2, "{report}");
    assert!(report["replaced"].is_string(), "{report}");
    let machines = store_cmd(tmp.path()).run(&[arg("admin"), arg("machines")]);
    machines.expect_ok();
    assert!(
        machines.messages("machine").is_empty(),
        "{}",
        machines.stdout
    );
    store_cmd(tmp.path())
        .run(&[arg("check"), arg("--read-data")])
        .expect_ok();
}

/// Backs up `src` in a child process, kills Garage nodes `kill` once the
/// backup has run for a moment, and returns the finished run's exit code,
/// stdout and stderr, asserting the kill happened while it ran.
fn backup_while_killing(
    client: &common::server::Client,
    garage: &Garage,
    src: &Path,
    kill: &[u8],
) -> (i32, String, String) {
    let mut cmd = client.command(&[arg("backup"), src.as_os_str()]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the backup ended before the nodes were killed"
    );
    for &n in kill {
        garage.kill(n);
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn one_node_of_three_killed_mid_backup_the_backup_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let garage = Garage::cluster(&tmp.path().join("garage"));
    let server = Server::start_with_config(tmp.path(), &format!("{NO_JOBS}{}", garage.s3_toml("")));
    let cred = server.add_machine("laptop", false);
    let client = server.client(&cred, &tmp.path().join("home"));
    let src = tmp.path().join("src");
    random_files(&src, "big", 24, 4, 11);
    let (code, stdout, stderr) = backup_while_killing(&client, &garage, &src, &[3]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    restore_and_compare(&client, "latest", &src, &tmp.path().join("restored"));
    store_cmd(tmp.path())
        .run(&[arg("check"), arg("--read-data")])
        .expect_ok();
}

#[test]
fn two_nodes_of_three_killed_the_backup_fails_and_the_next_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let garage = Garage::cluster(&tmp.path().join("garage"));
    let server = Server::start_with_config(
        tmp.path(),
        &format!(
            "{NO_JOBS}{}",
            garage.s3_toml("retries = 1\ntimeout_secs = 5\n")
        ),
    );
    let cred = server.add_machine("laptop", false);
    let client = server.client(&cred, &tmp.path().join("home"));
    let src = tmp.path().join("src");
    random_files(&src, "old", 4, 4, 21);
    client.backup(&src);
    random_files(&src, "new", 24, 4, 22);

    let (code, stdout, stderr) = backup_while_killing(&client, &garage, &src, &[2, 3]);
    assert_ne!(code, 0, "the backup succeeded with two nodes of three down");
    assert!(
        stderr.contains("bucket packs at http://127.0.0.1"),
        "the error does not name the store: {stdout}\n{stderr}"
    );
    let snapshots = client.run(&[arg("snapshots")]);
    assert_eq!(
        snapshots.messages("snapshot").len(),
        1,
        "a snapshot was committed"
    );

    garage.revive(2);
    garage.revive(3);
    // The cluster takes a moment to find its nodes again.
    let deadline = Instant::now() + Duration::from_secs(60);
    let run = loop {
        let run = client.run(&[arg("backup"), src.as_os_str()]);
        if run.code == 0 || Instant::now() > deadline {
            break run;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    run.expect_ok();
    // What was stored before the failure is not sent again: the old files
    // (16 MiB) not at all, the new ones (96 MiB) at most once.
    let sent = run.summary_u64("blob_bytes_sent");
    assert!(sent < (96 << 20) + (1 << 20), "sent {sent} bytes");
    restore_and_compare(&client, "latest", &src, &tmp.path().join("restored"));
    store_cmd(tmp.path())
        .run(&[arg("check"), arg("--read-data")])
        .expect_ok();
}
