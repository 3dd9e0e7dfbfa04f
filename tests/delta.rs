//! Delta transfer end to end: what a changed file costs on the wire, as
//! counted by the real server (`homesync serve` on 127.0.0.1), and that the
//! store stays exactly right whatever the client sends.

mod common;

use common::server::*;
use common::*;
use homesync_protocol::{BlobEncoder, BlobId, BlobKind, ChunkId, Repository, StoreError, delta};
use proptest::prelude::*;
use serde_json::Value;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

fn u(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no `{field}` in {v}"))
}

/// Payload bytes the server received in a session: blobs and deltas.
fn payload(session: &Value) -> u64 {
    u(session, "blob_bytes") + u(session, "delta_bytes")
}

fn same_bytes(a: &Path, b: &Path) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert!(
        x.len() == y.len() && blake3::hash(&x) == blake3::hash(&y),
        "{} and {} differ ({} and {} bytes)",
        a.display(),
        b.display(),
        x.len(),
        y.len()
    );
}

#[test]
fn a_small_overwrite_and_an_append_to_a_large_file_cost_about_their_size() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let client = server.client(&server.add_machine("laptop", false), tmp.path());
    let src = tmp.path().join("src");
    let big = src.join("disk.img");
    write_file(&big, &random_bytes(41, 256 << 20));
    let backup = || client.backup(&src);
    backup();

    // 4 KiB overwritten in the middle, in place.
    let mut f = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
    f.seek(SeekFrom::Start(128 << 20)).unwrap();
    f.write_all(&random_bytes(42, 4096)).unwrap();
    drop(f);
    let edit = backup();
    assert!(edit.summary_u64("deltas_sent") >= 1, "{}", edit.describe());

    // 1 MiB appended.
    let mut f = std::fs::OpenOptions::new().append(true).open(&big).unwrap();
    f.write_all(&random_bytes(43, 1 << 20)).unwrap();
    drop(f);
    let append = backup();

    let s = server.sessions(3);
    assert!(
        payload(&s[1]) < 64 << 10,
        "a 4 KiB overwrite sent {} bytes of blobs and deltas: {}",
        payload(&s[1]),
        s[1]
    );
    assert_eq!(u(&s[1], "deltas_stored"), 1, "{}", s[1]);
    assert!(
        payload(&s[2]) < (1 << 20) * 12 / 10,
        "a 1 MiB append sent {} bytes of blobs and deltas: {}",
        payload(&s[2]),
        s[2]
    );
    // The client counts what the server counts.
    for (run, session) in [(&edit, &s[1]), (&append, &s[2])] {
        assert_eq!(
            run.summary_u64("delta_bytes_sent"),
            u(session, "delta_bytes")
        );
        assert_eq!(run.summary_u64("blob_bytes_sent"), u(session, "blob_bytes"));
        assert!(run.summary_u64("bytes_sent") >= payload(session));
    }

    let target = tmp.path().join("restored");
    client.restore_latest(&target);
    same_bytes(&big, &target.join("disk.img"));
}

#[test]
fn a_forged_delta_is_refused_and_nothing_is_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let repo = server.remote(&server.add_machine("laptop", false)).unwrap();
    let base = random_bytes(1, 300_000);
    let mut edited = base.clone();
    edited[1000..1100].copy_from_slice(&[7; 100]);
    let base_id = BlobId::from(ChunkId::of(&base));
    let edited_id = BlobId::from(ChunkId::of(&edited));
    let blob = BlobEncoder::new(3).encode(BlobKind::Chunk, &base);
    repo.put_blob(base_id, BlobKind::Chunk, &blob).unwrap();
    // Chunk uploads are pipelined: reading it back waits for it.
    assert_eq!(repo.get_blob(base_id, BlobKind::Chunk).unwrap(), base);

    let sig = repo.signatures(&[base_id, edited_id]).unwrap();
    assert!(sig[1].is_none(), "no signature for a missing chunk");
    let sig = delta::parse_signature(sig[0].clone().unwrap()).unwrap();
    let d = delta::encode(&sig, &edited, 3).unwrap();
    assert!(d.len() < 10_000, "{} bytes", d.len());

    // Right delta, wrong claimed id: the result does not hash to it.
    let forged = BlobId::from(ChunkId::of(b"something else"));
    match repo.put_delta(forged, BlobKind::Chunk, base_id, &d) {
        Err(StoreError::Refused(why)) => assert!(why.contains("hash"), "{why}"),
        other => panic!("forged delta: {other:?}"),
    }
    // Garbage, and a base the store lacks.
    assert!(
        repo.put_delta(edited_id, BlobKind::Chunk, base_id, &[1, 2, 3])
            .is_err()
    );
    assert!(matches!(
        repo.put_delta(edited_id, BlobKind::Chunk, forged, &d),
        Err(StoreError::Missing(_))
    ));
    assert_eq!(
        repo.has_blobs(&[forged, edited_id]).unwrap(),
        [false, false],
        "nothing stored"
    );

    // The honest delta is stored as the whole chunk.
    assert!(
        repo.put_delta(edited_id, BlobKind::Chunk, base_id, &d)
            .unwrap()
    );
    assert_eq!(repo.get_blob(edited_id, BlobKind::Chunk).unwrap(), edited);
    drop(repo);
    let s = &server.sessions(1)[0];
    assert_eq!(
        (u(s, "deltas_stored"), u(s, "deltas_refused")),
        (1, 3),
        "{s}"
    );
}

#[test]
fn unchanged_renamed_and_slightly_changed_directories_cost_almost_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let client = server.client(&server.add_machine("laptop", false), tmp.path());
    let src = tmp.path().join("src");
    write_file(
        &src.join("projects/old/data.bin"),
        &random_bytes(5, 3 << 20),
    );
    write_file(&src.join("projects/old/notes.txt"), b"notes\n");
    for i in 0..2000 {
        write_file(
            &src.join(format!("big/f{i:04}")),
            format!("file {i}\n").as_bytes(),
        );
    }
    // The cache vouches only for files whose ctime is 2 s before the backup.
    std::thread::sleep(std::time::Duration::from_millis(3100));
    client.backup(&src);

    // Nothing changed: nothing is read, and the store is asked next to
    // nothing (no question per directory, no tree sent).
    let same = client.backup(&src);
    assert_eq!(same.summary_u64("files_read"), 0, "{}", same.describe());

    // A directory renamed, and one file added to a directory of 2000.
    std::fs::rename(src.join("projects/old"), src.join("archive")).unwrap();
    write_file(&src.join("big/new"), b"new\n");
    let moved = client.backup(&src);
    assert_eq!(moved.summary_u64("files_read"), 1, "{}", moved.describe());

    let s = server.sessions(3);
    assert_eq!(payload(&s[1]), 0, "{}", s[1]);
    assert!(u(&s[1], "bytes_received") < 16 << 10, "{}", s[1]);
    // No chunk of the renamed files; the large directory's tree as a delta.
    assert!(payload(&s[2]) < 16 << 10, "{}", s[2]);
    assert!(u(&s[2], "deltas_stored") >= 1, "{}", s[2]);
    let target = tmp.path().join("restored");
    client.restore_latest(&target);
    same_bytes(
        &src.join("archive/data.bin"),
        &target.join("archive/data.bin"),
    );
    assert_same_listing("after rename", &mtree(&src), &mtree(&target));
}

#[test]
fn after_blobs_leave_the_store_the_cache_is_checked_not_trusted() {
    let tmp = tempfile::tempdir().unwrap();
    let hs = Homesync::new(tmp.path().join("store"));
    hs.init();
    let src = tmp.path().join("src");
    for i in 0..5 {
        write_file(&src.join(format!("f{i}")), &random_bytes(i, 100_000));
    }
    std::thread::sleep(std::time::Duration::from_millis(3100));
    hs.backup(&src, &[]);

    // What garbage collection does to the index: a blob goes, and the
    // store moves to a new generation.
    let gone = ChunkId::of(&random_bytes(3, 100_000));
    let db = rusqlite::Connection::open(tmp.path().join("store/index.sqlite")).unwrap();
    let n = db
        .execute("DELETE FROM blobs WHERE id = ?1", [&gone.0[..]])
        .unwrap();
    assert_eq!(n, 1);
    db.execute(
        "INSERT INTO meta(key, value) VALUES ('generation', 1)
         ON CONFLICT(key) DO UPDATE SET value = value + 1",
        [],
    )
    .unwrap();
    drop(db);

    let run = hs.backup(&src, &[]);
    // Only the file whose chunk went is read again; nothing was refused.
    assert_eq!(run.summary_u64("files_read"), 1, "{}", run.describe());
    assert!(!run.stderr.contains("refused"), "{}", run.describe());
    let target = tmp.path().join("restored");
    hs.restore("latest", &target, &[]).expect_ok();
    same_bytes(&src.join("f3"), &target.join("f3"));

    // In the same generation the cache is trusted: nothing is read.
    let again = hs.backup(&src, &[]);
    assert_eq!(again.summary_u64("files_read"), 0, "{}", again.describe());
}

/// One random edit: insert, delete or overwrite `len` bytes at a fraction
/// `at` (of 65536) of the file.
#[derive(Debug, Clone)]
enum Edit {
    Insert { at: u16, len: usize, seed: u64 },
    Delete { at: u16, len: usize },
    Overwrite { at: u16, len: usize, seed: u64 },
}

fn apply(data: &mut Vec<u8>, edit: &Edit) {
    let pos = |at: u16, n: usize| at as usize * n / 65536;
    match *edit {
        Edit::Insert { at, len, seed } => {
            let p = pos(at, data.len());
            data.splice(p..p, random_bytes(seed, len));
        }
        Edit::Delete { at, len } => {
            let p = pos(at, data.len());
            let end = (p + len).min(data.len());
            data.drain(p..end);
        }
        Edit::Overwrite { at, len, seed } => {
            let p = pos(at, data.len());
            let end = (p + len).min(data.len());
            data[p..end].copy_from_slice(&random_bytes(seed, end - p));
        }
    }
}

fn edits() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<u16>(), 1usize..70_000, any::<u64>()).prop_map(|(at, len, seed)| Edit::Insert {
            at,
            len,
            seed
        }),
        (any::<u16>(), 1usize..70_000).prop_map(|(at, len)| Edit::Delete { at, len }),
        (any::<u16>(), 1usize..70_000, any::<u64>()).prop_map(|(at, len, seed)| Edit::Overwrite {
            at,
            len,
            seed
        }),
    ]
}

#[test]
fn random_edits_of_random_files_restore_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let client = server.client(&server.add_machine("laptop", false), tmp.path());
    let deltas = std::cell::Cell::new(0);
    let case = std::cell::Cell::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 12,
        ..ProptestConfig::default()
    });
    let files = proptest::collection::vec(
        (
            0usize..3 << 20,
            any::<u64>(),
            proptest::collection::vec(edits(), 1..4),
        ),
        1..4,
    );
    runner
        .run(&files, |files| {
            case.set(case.get() + 1);
            let case = case.get();
            let src = tmp.path().join(format!("case{case}"));
            for (i, (len, seed, _)) in files.iter().enumerate() {
                write_file(&src.join(format!("f{i}")), &random_bytes(*seed, *len));
            }
            client.backup(&src);
            for (i, (len, seed, edits)) in files.iter().enumerate() {
                let mut data = random_bytes(*seed, *len);
                for e in edits {
                    apply(&mut data, e);
                }
                let path = src.join(format!("f{i}"));
                if seed % 2 == 0 {
                    // In place: the same inode (the cache knows its last version).
                    write_file(&path, &data);
                } else {
                    // Editor style: a new file renamed over the old one
                    // (its last version is found in the parent snapshot).
                    let temp = src.join(format!(".f{i}.tmp"));
                    write_file(&temp, &data);
                    std::fs::rename(&temp, &path).unwrap();
                }
            }
            let run = client.backup(&src);
            deltas.set(deltas.get() + run.summary_u64("deltas_sent"));
            let target = tmp.path().join(format!("restored{case}"));
            client.restore_latest(&target);
            for i in 0..files.len() {
                let name = format!("f{i}");
                prop_assert_eq!(
                    std::fs::read(src.join(&name)).unwrap(),
                    std::fs::read(target.join(&name)).unwrap(),
                    "{} of case {}",
                    name,
                    case
                );
            }
            Ok(())
        })
        .unwrap();
    assert!(deltas.get() > 0, "no case sent a delta");
}
