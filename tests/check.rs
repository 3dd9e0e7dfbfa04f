//! `homesync check` through the real binary: damage planted in the store
//! (a flipped byte, a truncated pack, a lost index row) is found at the
//! right level and traced to the snapshots and files it affects.

mod common;

use common::*;
use homesync_protocol::ChunkId;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Where the index places blob `id`: its pack file, offset and length.
fn blob_location(repo: &Path, id: &[u8; 32]) -> (PathBuf, u64, u64) {
    let db = rusqlite::Connection::open(repo.join("index.sqlite")).unwrap();
    let (pack, offset, length): (String, i64, i64) = db
        .query_row(
            "SELECT p.name, b.offset, b.length FROM blobs b JOIN packs p ON p.id = b.pack WHERE b.id = ?1",
            [&id[..]],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap_or_else(|e| panic!("blob {} is not indexed: {e}", ChunkId(*id)));
    (
        repo.join("packs").join(&pack[..2]).join(&pack),
        offset as u64,
        length as u64,
    )
}

/// The `damage` messages, by blob id.
fn damage_of<'a>(run: &'a Run, blob: &ChunkId) -> &'a Value {
    let hex = blob.to_hex();
    run.messages("damage")
        .into_iter()
        .find(|d| d["blob"] == hex.as_str())
        .unwrap_or_else(|| panic!("no damage message for {hex}\n{}", run.describe()))
}

/// (snapshot id, path) of every place a damage message names.
fn affected(d: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = d["affected"]
        .as_array()
        .expect("affected is a list")
        .iter()
        .map(|a| {
            (
                a["snapshot"].as_str().unwrap().to_string(),
                a["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

fn check_summary(run: &Run) -> &Value {
    run.messages("check_summary")
        .last()
        .copied()
        .unwrap_or_else(|| panic!("no check_summary\n{}", run.describe()))
}

fn summary_u64(run: &Run, field: &str) -> u64 {
    check_summary(run)[field]
        .as_u64()
        .unwrap_or_else(|| panic!("check_summary has no {field}\n{}", run.describe()))
}

/// A store with three snapshots over two sources that all hold one
/// shared, incompressible chunk: `docs/a.bin` and `b.bin` in the first
/// source (backed up twice), `copy.bin` in the second.
struct Fixture {
    _tmp: tempfile::TempDir,
    hs: Homesync,
    shared: ChunkId,
    /// Snapshot ids: source 1 twice, then source 2.
    snaps: [String; 3],
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let hs = Homesync::new(tmp.path().join("store"));
    hs.init();
    // Under the chunker's minimum: one chunk per file.
    let data = random_bytes(7, 120_000);
    let shared = ChunkId::of(&data);
    let one = tmp.path().join("one");
    write_file(&one.join("docs/a.bin"), &data);
    write_file(&one.join("b.bin"), &data);
    write_file(&one.join("other.bin"), &random_bytes(8, 50_000));
    let s1 = hs.backup(&one, &[]).snapshot_id();
    write_file(&one.join("new.txt"), b"a change");
    let s2 = hs.backup(&one, &[]).snapshot_id();
    let two = tmp.path().join("two");
    write_file(&two.join("copy.bin"), &data);
    let s3 = hs.backup(&two, &[]).snapshot_id();
    Fixture {
        _tmp: tmp,
        hs,
        shared,
        snaps: [s1, s2, s3],
    }
}

#[test]
fn a_flipped_byte_is_found_by_read_data_naming_the_files() {
    let f = fixture();
    f.hs.run(args!["check"]).expect_ok();
    let clean = f.hs.run(args!["check", "--read-data"]);
    clean.expect_ok();
    assert_eq!(summary_u64(&clean, "damaged_blobs"), 0);
    assert_eq!(summary_u64(&clean, "snapshots_checked"), 3);

    let (pack, offset, length) = blob_location(&f.hs.repo, &f.shared.0);
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[(offset + length / 2) as usize] ^= 0x10;
    std::fs::write(&pack, bytes).unwrap();

    // The structure is intact: only reading the data finds it.
    let structure = f.hs.run(args!["check"]);
    structure.expect_ok();
    assert_eq!(summary_u64(&structure, "damaged_blobs"), 0);

    let run = f.hs.run(args!["check", "--read-data"]);
    run.expect_code(5);
    assert_eq!(summary_u64(&run, "damaged_blobs"), 1, "{}", run.describe());
    let d = damage_of(&run, &f.shared);
    assert_eq!(d["kind"], "chunk");
    assert_eq!(d["problem"], "corrupt");
    assert_eq!(
        d["pack"].as_str(),
        pack.file_name().unwrap().to_str(),
        "{d}"
    );
    let [s1, s2, s3] = &f.snaps;
    let mut want = vec![
        (s1.clone(), "b.bin".to_string()),
        (s1.clone(), "docs/a.bin".to_string()),
        (s2.clone(), "b.bin".to_string()),
        (s2.clone(), "docs/a.bin".to_string()),
        (s3.clone(), "copy.bin".to_string()),
    ];
    want.sort();
    assert_eq!(affected(d), want, "{}", run.describe());

    // The text report names the blob and every affected file.
    let text = f.hs.run_text(args!["check", "--read-data"]);
    text.expect_code(5);
    assert!(
        text.stdout.contains(&f.shared.to_hex()),
        "{}",
        text.describe()
    );
    for (snap, path) in &want {
        let line = &snap[..8];
        assert!(
            text.stdout
                .lines()
                .any(|l| l.contains(line) && l.ends_with(&format!(": {path}"))),
            "{snap} {path} not named\n{}",
            text.describe()
        );
    }
}

#[test]
fn a_truncated_pack_fails_the_plain_check() {
    let f = fixture();
    let (pack, offset, length) = blob_location(&f.hs.repo, &f.shared.0);
    let file = std::fs::OpenOptions::new().write(true).open(&pack).unwrap();
    file.set_len(offset + length / 2).unwrap();
    drop(file);
    let run = f.hs.run(args!["check"]);
    run.expect_code(5);
    let d = damage_of(&run, &f.shared);
    assert_eq!(d["problem"], "truncated", "{d}");
    assert_eq!(affected(d).len(), 5, "{d}");
    assert!(
        run.errors()
            .iter()
            .any(|e| e["error"].as_str().unwrap().contains("trailer")),
        "{}",
        run.describe()
    );
}

#[test]
fn a_lost_index_row_is_reported_missing_with_its_paths() {
    let f = fixture();
    let db = rusqlite::Connection::open(f.hs.repo.join("index.sqlite")).unwrap();
    let n = db
        .execute("DELETE FROM blobs WHERE id = ?1", [&f.shared.0[..]])
        .unwrap();
    assert_eq!(n, 1);
    drop(db);
    let run = f.hs.run(args!["check"]);
    run.expect_code(5);
    let d = damage_of(&run, &f.shared);
    assert_eq!(d["problem"], "missing", "{d}");
    assert!(d["pack"].is_null(), "{d}");
    let paths: Vec<String> = affected(d).into_iter().map(|(_, p)| p).collect();
    for p in ["b.bin", "docs/a.bin", "copy.bin"] {
        assert!(
            paths.iter().any(|x| x == p),
            "{p} not named\n{}",
            run.describe()
        );
    }
    // The copy still in its pack is garbage, worth a warning, not damage.
    assert!(
        run.messages("note")
            .iter()
            .any(|n| n["message"].as_str().unwrap().contains("not in the index")),
        "{}",
        run.describe()
    );
}

#[test]
fn subsets_read_less_and_complementary_ones_cover_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let hs = Homesync::new(tmp.path().join("store"));
    hs.init();
    // Each backup flushes its own data and tree packs: 24 packs.
    for i in 0..12u64 {
        let src = tmp.path().join(format!("src{i}"));
        write_file(&src.join("f"), &random_bytes(100 + i, 40_000));
        hs.backup(&src, &[]);
    }
    let full = hs.run(args!["check", "--read-data"]);
    full.expect_ok();
    let packs = summary_u64(&full, "packs_read");
    assert_eq!(packs, summary_u64(&full, "packs_checked"));
    assert!(packs >= 24, "{}", full.describe());
    let blobs = summary_u64(&full, "blobs_read");
    let bytes = summary_u64(&full, "bytes_read");

    for specs in [
        vec![vec!["1/2"], vec!["2/2"]],
        vec![vec!["1/3"], vec!["2/3"], vec!["3/3"]],
        vec![vec!["50%"], vec!["50%", "--subset-offset", "50"]],
    ] {
        let (mut p, mut b) = (0, 0);
        for spec in &specs {
            let mut a: Vec<&str> = vec!["check", "--subset", spec[0]];
            a.extend(&spec[1..]);
            let a: Vec<&std::ffi::OsStr> = a.iter().map(std::ffi::OsStr::new).collect();
            let run = hs.run(&a);
            run.expect_ok();
            assert_eq!(summary_u64(&run, "packs_checked"), packs);
            let read = summary_u64(&run, "packs_read");
            assert!(read < packs, "{spec:?} read every pack\n{}", run.describe());
            assert!(
                summary_u64(&run, "bytes_read") < bytes,
                "{}",
                run.describe()
            );
            p += read;
            b += summary_u64(&run, "blobs_read");
        }
        assert_eq!(
            (p, b),
            (packs, blobs),
            "{specs:?} together read everything once"
        );
    }

    // A damaged blob is found by the subset holding its pack, and only by it.
    let data = random_bytes(105, 40_000);
    let id = ChunkId::of(&data);
    let (pack, offset, _) = blob_location(&hs.repo, &id.0);
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[offset as usize + 100] ^= 1;
    std::fs::write(&pack, bytes).unwrap();
    let codes: Vec<i32> = ["1/2", "2/2"]
        .iter()
        .map(|s| hs.run(args!["check", "--subset", s]).code)
        .collect();
    assert!(
        codes == [0, 5] || codes == [5, 0],
        "exactly one half finds it: {codes:?}"
    );
}

#[test]
fn check_refuses_a_remote_store_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "--server", "backup.example.org:7443"])
        .env_remove("HOMESYNC_REPO")
        .env("HOME", tmp.path())
        .env("XDG_CONFIG_HOME", tmp.path())
        .env("HOMESYNC_CONFIG", tmp.path().join("none.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("on the server"), "{stderr}");
}
