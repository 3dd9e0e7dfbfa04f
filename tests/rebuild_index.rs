//! `homesync admin rebuild-index` on a local store: a damaged or deleted
//! index is rebuilt from the newest index copy plus the packs written after
//! it (or from the packs alone), every snapshot restores byte-identical,
//! credentials survive with a copy, and what was forgotten and collected
//! since the copy stays gone.

mod common;

use common::*;
use serde_json::Value;
use std::ffi::OsStr;
use std::path::Path;

fn arg(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn rebuild(hs: &Homesync, extra: &[&str]) -> Value {
    let mut args = vec![arg("admin"), arg("rebuild-index")];
    args.extend(extra.iter().map(|a| arg(a)));
    let run = hs.run(&args);
    run.expect_ok();
    run.messages("rebuild_index")[0].clone()
}

fn snapshot_ids(hs: &Homesync) -> Vec<String> {
    let run = hs.run(&[arg("snapshots")]);
    run.expect_ok();
    run.messages("snapshot")
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

fn restores_identically(hs: &Homesync, id: &str, want: &Path, to: &Path) {
    hs.restore(id, to, &[]).expect_ok();
    let inner = to.join(want.strip_prefix("/").unwrap());
    let got = if inner.exists() {
        inner
    } else {
        to.to_path_buf()
    };
    assert_eq!(describe_tree(&got), describe_tree(want), "restore of {id}");
}

#[test]
fn a_damaged_index_is_rebuilt_from_its_copy_and_the_newer_packs() {
    let tmp = tempfile::tempdir().unwrap();
    let hs = Homesync::new(tmp.path().join("store"));
    hs.init();
    let src = tmp.path().join("src");
    write_file(&src.join("a.txt"), b"first\n");
    write_file(&src.join("big.bin"), &random_bytes(1, 3 << 20));
    let first = hs.backup(&src, &[]).snapshot_id();
    let v1 = tmp.path().join("v1");
    sh("cp", &[arg("-a"), src.as_os_str(), v1.as_os_str()], None);
    hs.run(&[arg("admin"), arg("add-machine"), arg("laptop")])
        .expect_ok();
    hs.run(&[arg("admin"), arg("run-job"), arg("index-copy")])
        .expect_ok();
    assert_eq!(
        std::fs::read_dir(tmp.path().join("store/index-copies"))
            .unwrap()
            .count(),
        1
    );
    write_file(&src.join("a.txt"), b"second\n");
    write_file(&src.join("more.bin"), &random_bytes(2, 2 << 20));
    let second = hs.backup(&src, &[]).snapshot_id();

    // The index file is damaged: the store says so, naming the file.
    let index = tmp.path().join("store/index.sqlite");
    let mut bytes = std::fs::read(&index).unwrap();
    bytes[..4096].fill(0x5a);
    std::fs::write(&index, bytes).unwrap();
    for ext in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(tmp.path().join(format!("store/index.sqlite{ext}")));
    }
    let broken = hs.run(&[arg("snapshots")]);
    assert_ne!(broken.code, 0);
    assert!(
        broken
            .stdout
            .contains("index.sqlite: file is not a database"),
        "{}",
        broken.stdout
    );

    // Not without --replace.
    let refused = hs.run(&[arg("admin"), arg("rebuild-index")]);
    refused.expect_code(1);
    assert!(refused.stdout.contains("--replace"), "{}", refused.stdout);

    let report = rebuild(&hs, &["--replace"]);
    assert!(report["copy"].is_string(), "{report}");
    assert!(report["packs_added"].as_u64().unwrap() >= 1, "{report}");
    assert_eq!(report["snapshots"], 2, "{report}");
    assert_eq!(report["snapshots_added"], 1, "{report}");
    assert!(
        Path::new(report["replaced"].as_str().unwrap()).exists(),
        "{report}"
    );
    let mut ids = snapshot_ids(&hs);
    ids.sort();
    let mut want = vec![first.clone(), second.clone()];
    want.sort();
    assert_eq!(ids, want);
    restores_identically(&hs, &first, &v1, &tmp.path().join("r1"));
    restores_identically(&hs, &second, &src, &tmp.path().join("r2"));
    // The machine came back with the copy.
    let machines = hs.run(&[arg("admin"), arg("machines")]);
    assert_eq!(machines.messages("machine").len(), 1, "{}", machines.stdout);
    hs.run(&[arg("check"), arg("--read-data")]).expect_ok();
}

#[test]
fn a_deleted_index_is_rebuilt_from_the_packs_and_collected_snapshots_stay_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let hs = Homesync::new(tmp.path().join("store"));
    hs.init();
    let src = tmp.path().join("src");
    write_file(&src.join("old.bin"), &random_bytes(3, 2 << 20));
    let old = hs.backup(&src, &[]).snapshot_id();
    std::fs::remove_file(src.join("old.bin")).unwrap();
    write_file(&src.join("new.bin"), &random_bytes(4, 2 << 20));
    let new = hs.backup(&src, &[]).snapshot_id();
    hs.run(&[arg("admin"), arg("run-job"), arg("index-copy")])
        .expect_ok();
    // Forgotten and collected after the copy: the copy still names it.
    hs.run(&[arg("forget"), arg(&old)]).expect_ok();
    hs.run(&[arg("gc")]).expect_ok();

    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(tmp.path().join(format!("store/index.sqlite{ext}")));
    }
    let report = rebuild(&hs, &[]);
    assert!(report["copy"].is_string(), "{report}");
    assert_eq!(
        report["snapshots_dropped"],
        serde_json::json!([old]),
        "{report}"
    );
    assert_eq!(snapshot_ids(&hs), vec![new.clone()]);
    restores_identically(&hs, &new, &src, &tmp.path().join("r"));

    // From the packs alone: the same, with nothing from the copy.
    let report = rebuild(&hs, &["--replace", "--packs-only"]);
    assert!(report["copy"].is_null(), "{report}");
    assert_eq!(report["snapshots"], 1, "{report}");
    assert_eq!(snapshot_ids(&hs), vec![new.clone()]);
    hs.run(&[arg("check"), arg("--read-data")]).expect_ok();
}

/// Found in review: a pack that could not be *read* (here a directory where
/// a pack file should be: EISDIR, as a dropped connection or a dead node
/// would be for a bucket) was reported and skipped, and the index written
/// without its blobs, so garbage collection would then delete it as an
/// orphan. Now the rebuild fails, naming the pack, and writes nothing.
#[test]
fn a_pack_that_cannot_be_read_fails_the_rebuild_and_replaces_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let hs = Homesync::new(tmp.path().join("store"));
    hs.init();
    let src = tmp.path().join("src");
    write_file(&src.join("a.bin"), &random_bytes(5, 1 << 20));
    hs.backup(&src, &[]).expect_ok();
    let name = "ab".repeat(32);
    std::fs::create_dir_all(tmp.path().join(format!("store/packs/ab/{name}"))).unwrap();
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(tmp.path().join(format!("store/index.sqlite{ext}")));
    }
    let run = hs.run(&[arg("admin"), arg("rebuild-index")]);
    run.expect_code(1);
    assert!(run.stdout.contains(&name), "{}", run.stdout);
    assert!(!tmp.path().join("store/index.sqlite").exists());
    // Once the pack is readable again (here: gone), the rebuild succeeds.
    std::fs::remove_dir(tmp.path().join(format!("store/packs/ab/{name}"))).unwrap();
    assert_eq!(rebuild(&hs, &[])["snapshots"], 1);
}
