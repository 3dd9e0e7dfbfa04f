//! The QUIC server end to end: the real `homesync serve` on 127.0.0.1 port
//! 0 with a temporary store, and real clients (the binary, and the client
//! library for what only a library can do, such as rebinding mid-transfer).

mod common;

use common::server::*;
use common::*;
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::Command;

fn os(s: impl AsRef<OsStr>) -> OsString {
    s.as_ref().to_os_string()
}

fn make_tree(dir: &Path, seed: u64) {
    std::fs::create_dir_all(dir.join("docs/deep")).unwrap();
    write_file(
        &dir.join("docs/a.txt"),
        format!("hello {seed}\n").repeat(1000).as_bytes(),
    );
    write_file(&dir.join("docs/deep/b.bin"), &random_bytes(seed, 3 << 20));
    write_file(&dir.join("shared.bin"), &random_bytes(999, 1 << 20));
    std::os::unix::fs::symlink("docs/a.txt", dir.join("link")).unwrap();
}

#[test]
fn backup_list_diff_and_restore_over_quic() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let cred = server.add_machine("laptop", false);
    let client = server.client(&cred, tmp.path());
    let src = tmp.path().join("src");
    make_tree(&src, 1);

    let first = client.run(&[&os("backup"), src.as_os_str()]);
    first.expect_ok();
    let first_id = first.snapshot_id();
    assert!(first.summary_u64("blobs_added") > 0);
    write_file(&src.join("docs/new.txt"), b"new file");
    let second = client.run(&[&os("backup"), src.as_os_str()]);
    second.expect_ok();

    let snaps = client.run(&[&os("snapshots")]);
    snaps.expect_ok();
    let listed = snaps.messages("snapshot");
    assert_eq!(listed.len(), 2, "{}", snaps.describe());
    assert!(listed.iter().all(|s| s["machine"] == "laptop"));

    let ls = client.run(&[&os("ls"), &os("latest"), &os("docs")]);
    ls.expect_ok();
    let paths: Vec<&str> = ls
        .messages("node")
        .iter()
        .map(|n| n["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&"docs/new.txt") && paths.contains(&"docs/deep/b.bin"),
        "{paths:?}"
    );

    let diff = client.run(&[&os("diff"), &os(&first_id), &os("latest")]);
    diff.expect_ok();
    let changes: Vec<(String, String)> = diff
        .messages("change")
        .iter()
        .map(|c| {
            (
                c["change"].as_str().unwrap().into(),
                c["path"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        changes.contains(&("added".into(), "docs/new.txt".into())),
        "{changes:?}"
    );

    let target = tmp.path().join("restored");
    client.restore_latest(&target);
    assert_same_listing("restore over QUIC", &mtree(&src), &mtree(&target));
}

#[test]
fn a_server_with_another_certificate_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let cred = server.add_machine("laptop", false);
    let mut client = server.client(&cred, tmp.path());
    client.fingerprint = "ab".repeat(32);
    let run = client.run(&[&os("snapshots")]);
    assert_ne!(run.code, 0, "{}", run.describe());
    let text = format!("{}{}", run.stdout, run.stderr);
    assert!(
        text.contains("fingerprint"),
        "the error names the cause\n{}",
        run.describe()
    );
}

#[test]
fn machines_see_only_their_own_snapshots_and_tokens_work_once() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let a = server.client(&server.add_machine("alice-laptop", false), tmp.path());
    let b = server.client(&server.add_machine("bob-desktop", false), tmp.path());
    let src = tmp.path().join("src");
    make_tree(&src, 2);
    let id = a.run(&[&os("backup"), src.as_os_str()]).snapshot_id();

    // B sees nothing of A's and cannot ask for it.
    let mine = b.run(&[&os("snapshots")]);
    mine.expect_ok();
    assert!(mine.messages("snapshot").is_empty(), "{}", mine.describe());
    let theirs = b.run(&[&os("snapshots"), &os("--machine"), &os("alice-laptop")]);
    assert_ne!(theirs.code, 0, "{}", theirs.describe());
    assert!(theirs.stdout.contains("Forbidden"), "{}", theirs.describe());
    let steal = b.run(&[
        &os("restore"),
        &os(&id),
        &os("--target"),
        tmp.path().join("stolen").as_os_str(),
    ]);
    assert_ne!(steal.code, 0, "{}", steal.describe());
    assert!(!tmp.path().join("stolen/docs").exists());

    // A one-time restore token for A's machine works once, for A's snapshots only.
    let token_run = server
        .store
        .run(&[&os("admin"), &os("restore-token"), &os("alice-laptop")]);
    token_run.expect_ok();
    let token = token_run.messages("credential")[0]["credential"]
        .as_str()
        .unwrap()
        .to_string();
    let new_machine = server.client(&token, tmp.path());
    let target = tmp.path().join("new-laptop");
    new_machine
        .run(&[
            &os("restore"),
            &os("latest"),
            &os("--machine"),
            &os("alice-laptop"),
            &os("--target"),
            target.as_os_str(),
        ])
        .expect_ok();
    assert_same_listing("restore with a token", &mtree(&src), &mtree(&target));
    let again = new_machine.run(&[&os("snapshots"), &os("--machine"), &os("alice-laptop")]);
    assert_ne!(
        again.code,
        0,
        "a restore token works once\n{}",
        again.describe()
    );

    // Machines are append-only: A cannot delete its own snapshot; an admin can.
    let delete = a.run(&[&os("forget"), &os(&id)]);
    assert_ne!(delete.code, 0, "{}", delete.describe());
    assert!(
        delete.stdout.contains("append-only"),
        "{}",
        delete.describe()
    );
    assert_eq!(a.run(&[&os("snapshots")]).messages("snapshot").len(), 1);
    let admin = server.client(&server.add_machine("ops", true), tmp.path());
    admin
        .run(&[
            &os("forget"),
            &os(&id),
            &os("--machine"),
            &os("alice-laptop"),
        ])
        .expect_ok();
    assert!(a.run(&[&os("snapshots")]).messages("snapshot").is_empty());

    // A revoked credential is refused at once.
    server
        .store
        .run(&[&os("admin"), &os("revoke"), &os("bob-desktop")])
        .expect_ok();
    let revoked = b.run(&[&os("snapshots")]);
    assert_ne!(revoked.code, 0, "{}", revoked.describe());
}

#[test]
fn twenty_clients_back_up_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let mut children = Vec::new();
    for i in 0..20 {
        let name = format!("m{i:02}");
        let client = server.client(&server.add_machine(&name, false), &tmp.path().join(&name));
        let src = tmp.path().join(&name).join("home");
        std::fs::create_dir_all(&src).unwrap();
        write_file(&src.join("own.bin"), &random_bytes(100 + i, 256 << 10));
        write_file(&src.join("common.bin"), &random_bytes(7, 512 << 10));
        let child = client
            .command(&[&os("backup"), src.as_os_str()])
            .spawn()
            .unwrap();
        children.push((name, client, src, child));
    }
    for (name, client, src, child) in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let target = client.home.join("restored");
        client
            .run(&[
                &os("restore"),
                &os("latest"),
                &os("--target"),
                target.as_os_str(),
            ])
            .expect_ok();
        assert_same_listing(&name, &mtree(&src), &mtree(&target));
    }
}

#[test]
fn an_interrupted_backup_resumes_without_resending() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let client = server.client(&server.add_machine("laptop", false), tmp.path());
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..40 {
        write_file(
            &src.join(format!("f{i:02}")),
            &random_bytes(500 + i, 2 << 20),
        );
    }
    let total: u64 = 40 * (2 << 20);
    // Kill the client once it has uploaded part of the data.
    let mut child = client
        .command(&[&os("backup"), src.as_os_str()])
        .spawn()
        .unwrap();
    let packs = server.store.repo.join("packs");
    let start = std::time::Instant::now();
    while common::files_under(&packs).is_empty()
        && start.elapsed() < std::time::Duration::from_secs(60)
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));

    let resumed = client.run(&[&os("backup"), src.as_os_str()]);
    resumed.expect_ok();
    let sent = resumed.summary_u64("bytes_added");
    assert!(
        sent < total,
        "the second run sent {sent} of {total} bytes: nothing was resumed"
    );
    let target = tmp.path().join("restored");
    client
        .run(&[
            &os("restore"),
            &os("latest"),
            &os("--target"),
            target.as_os_str(),
        ])
        .expect_ok();
    assert_same_listing("resumed backup", &mtree(&src), &mtree(&target));
}

#[test]
fn a_connection_survives_a_rebind_mid_transfer() {
    use homesync_protocol::{BlobEncoder, BlobKind, ChunkId, Repository};
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let cred = server.add_machine("roamer", false);
    let remote = server.remote(&cred).unwrap();
    let mut enc = BlobEncoder::new(3);
    let mut ids = Vec::new();
    for i in 0..20u64 {
        if i == 10 {
            remote.rebind().unwrap();
        }
        let data = random_bytes(i, 100 << 10);
        let id = ChunkId::of(&data);
        assert!(
            remote
                .put_blob(
                    id.into(),
                    BlobKind::Chunk,
                    &enc.encode(BlobKind::Chunk, &data)
                )
                .unwrap()
        );
        ids.push((id, data));
    }
    for (id, data) in &ids {
        assert_eq!(
            &remote.get_blob((*id).into(), BlobKind::Chunk).unwrap(),
            data
        );
    }
}

#[test]
fn bad_input_is_refused_and_others_keep_working() {
    use homesync_protocol::wire::{ErrorCode, Response};
    use homesync_protocol::{BlobEncoder, BlobId, BlobKind, ChunkId, Repository};
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let connect = |cred: &str| server.remote(cred);
    let good = connect(&server.add_machine("good", false)).unwrap();
    let evil_cred = server.add_machine("evil", false);

    // Garbage bytes: BadRequest, then the connection is closed.
    let evil = connect(&evil_cred).unwrap();
    let answer = Response::decode(&evil.send_raw(b"\x05\x00\x00\x00\x01junk").unwrap()).unwrap();
    assert!(
        matches!(
            answer,
            Response::Error {
                code: ErrorCode::BadRequest,
                ..
            }
        ),
        "{answer:?}"
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        evil.snapshots().is_err(),
        "the connection is closed after bad input"
    );

    // A frame announcing more than the limit.
    let evil = connect(&evil_cred).unwrap();
    let answer = evil.send_raw(&u32::MAX.to_le_bytes());
    if let Ok(bytes) = answer {
        let r = Response::decode(&bytes).unwrap();
        assert!(
            matches!(
                r,
                Response::Error {
                    code: ErrorCode::BadRequest,
                    ..
                }
            ),
            "{r:?}"
        );
    }

    // A forged chunk (bytes that do not hash to the id) is refused, not stored.
    let evil = connect(&evil_cred).unwrap();
    let blob = BlobEncoder::new(3).encode(BlobKind::Chunk, b"real bytes");
    let forged = BlobId::of(b"other bytes");
    let req = homesync_protocol::wire::Request::Put {
        id: forged,
        kind: 0,
        blob,
    };
    let r = Response::decode(&evil.send_raw(&req.encode()).unwrap()).unwrap();
    assert!(
        matches!(
            r,
            Response::Error {
                code: ErrorCode::Corrupt,
                ..
            }
        ),
        "{r:?}"
    );
    assert_eq!(evil.has_blobs(&[forged]).unwrap(), vec![false]);

    // A wrong credential is refused.
    assert!(connect("hs1.evil.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").is_err());

    // Meanwhile the good client works as before.
    let data = random_bytes(42, 10_000);
    let id = ChunkId::of(&data);
    good.put_blob(
        id.into(),
        BlobKind::Chunk,
        &BlobEncoder::new(3).encode(BlobKind::Chunk, &data),
    )
    .unwrap();
    assert_eq!(good.get_blob(id.into(), BlobKind::Chunk).unwrap(), data);
}

#[test]
fn sigterm_stops_the_server_cleanly_and_the_store_stays_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::start(tmp.path());
    let client = server.client(&server.add_machine("laptop", false), tmp.path());
    let src = tmp.path().join("src");
    make_tree(&src, 5);
    let id = client.run(&[&os("backup"), src.as_os_str()]).snapshot_id();
    let ok = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed().as_secs() < 20,
            "the server did not stop within 20 s of SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "serve exited with {status}");
    // The store is whole: the snapshot restores from it directly.
    let target = tmp.path().join("restored");
    server
        .store
        .run(&[
            &os("restore"),
            &os(&id),
            &os("--target"),
            target.as_os_str(),
        ])
        .expect_ok();
    assert_same_listing("after SIGTERM", &mtree(&src), &mtree(&target));
}

/// `get_blobs` over QUIC (`GetBatch`): blobs come in order, a missing one
/// is an error in its place and the rest still come, and a batch larger
/// than one answer carries is asked for again until every blob is there.
#[test]
fn a_batch_of_blobs_comes_in_order_with_a_missing_one_reported_in_place() {
    use homesync_protocol::{BlobEncoder, BlobId, BlobKind, ChunkId, Repository, StoreError};
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let remote = server.remote(&server.add_machine("laptop", false)).unwrap();
    let mut enc = BlobEncoder::new(3);
    // Small ones, and three of 2 MiB (random, stored raw): together over
    // the 4 MiB an answer carries.
    let sizes = [3000, 2 << 20, 10, 2 << 20, 70_000, 2 << 20, 1];
    let blobs: Vec<(BlobId, Vec<u8>)> = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let data = random_bytes(7000 + i as u64, len);
            (ChunkId::of(&data).into(), data)
        })
        .collect();
    for (id, data) in &blobs {
        remote
            .put_blob(*id, BlobKind::Chunk, &enc.encode(BlobKind::Chunk, data))
            .unwrap();
    }
    let absent: BlobId = ChunkId::of(b"never stored").into();
    let mut ids: Vec<BlobId> = blobs.iter().map(|(id, _)| *id).collect();
    ids.insert(3, absent);
    let got = remote.get_blobs(&ids, BlobKind::Chunk).unwrap();
    assert_eq!(got.len(), ids.len());
    let mut want = blobs.iter().map(|(_, d)| d);
    for (i, (id, got)) in ids.iter().zip(&got).enumerate() {
        if *id == absent {
            assert!(
                matches!(got, Err(StoreError::Missing(m)) if *m == absent),
                "blob {i}: {got:?}"
            );
        } else {
            assert_eq!(got.as_ref().unwrap(), want.next().unwrap(), "blob {i}");
        }
    }
    // A later single `Get` on the same connection still works.
    assert_eq!(
        remote.get_blob(blobs[0].0, BlobKind::Chunk).unwrap(),
        blobs[0].1
    );
}

/// Damage in the server's store, restored over QUIC where small files'
/// chunks come in batches: the damaged file is named, the restore exits 5,
/// every other file (in the same batch, and a file of several chunks)
/// arrives intact, and no damaged bytes are left under the file's name.
#[test]
fn a_damaged_chunk_in_a_batch_names_its_file_and_the_rest_is_restored() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let client = server.client(&server.add_machine("laptop", false), tmp.path());
    let src = tmp.path().join("src");
    let mut files: Vec<(String, Vec<u8>)> = (0..40u64)
        .map(|i| {
            (
                format!("d{}/f{i:02}", i % 3),
                random_bytes(100 + i, 2000 + 500 * i as usize),
            )
        })
        .collect();
    files.push(("victim.bin".into(), random_bytes(99, 24 << 10)));
    // The same contents twice: one chunk shared by two files.
    files.push(("copy1".into(), random_bytes(98, 5000)));
    files.push(("copy2".into(), random_bytes(98, 5000)));
    files.push(("large.bin".into(), random_bytes(97, 5 << 20)));
    for (name, data) in &files {
        write_file(&src.join(name), data);
    }
    client.backup(&src);

    let victim = &files.iter().find(|(n, _)| n == "victim.bin").unwrap().1;
    let needle = &victim[1000..1064];
    let packs = files_under(&server.store.repo.join("packs"));
    let (pack, pos) = packs
        .iter()
        .find_map(|p| find_bytes(&std::fs::read(p).unwrap(), needle).map(|at| (p.clone(), at)))
        .expect("the victim's bytes, stored raw, in a pack");
    let mut data = std::fs::read(&pack).unwrap();
    for b in &mut data[pos..pos + 16] {
        *b ^= 0xA5;
    }
    std::fs::write(&pack, &data).unwrap();

    let target = tmp.path().join("restored");
    let run = client.try_restore_latest(&target);
    assert_eq!(run.code, 5, "damage found: exit 5\n{}", run.describe());
    let named = run.error_paths();
    assert!(
        named.len() == 1 && named[0].ends_with("victim.bin"),
        "only victim.bin is named: {named:?}\n{}",
        run.describe()
    );
    for (name, data) in &files {
        if name == "victim.bin" {
            continue;
        }
        let got = std::fs::read(target.join(name))
            .unwrap_or_else(|e| panic!("{name} was not restored: {e}\n{}", run.describe()));
        assert!(got == *data, "{name} was not restored byte-identical");
    }
    assert!(
        !target.join("victim.bin").exists(),
        "victim.bin was left with damaged contents"
    );
    let leftovers: Vec<_> = files_under(&target)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".homesync-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// A client of protocol 2 (before `GetBatch`) is still served: its session
/// speaks 2, `GetBatch` is refused in it, and the library, speaking 2,
/// fetches a batch with one `Get` per blob (as against an older server).
#[test]
fn a_protocol_2_client_is_served_without_get_batch() {
    use homesync_client::remote::{RemoteOptions, RemoteRepository};
    use homesync_protocol::wire::{self, ErrorCode, Request, Response};
    use homesync_protocol::{BlobEncoder, BlobId, BlobKind, ChunkId, Repository, StoreError};
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let cred = server.add_machine("laptop", false);
    let new = server.remote(&cred).unwrap();
    assert_eq!(new.version(), wire::PROTOCOL_VERSION);
    let old = RemoteRepository::connect_speaking(
        &RemoteOptions {
            server: server.addr.clone(),
            fingerprint: server.fingerprint.clone(),
            credential: cred.clone(),
            bulk_download: false,
        },
        wire::MIN_PROTOCOL_VERSION,
    )
    .unwrap();
    assert_eq!(old.version(), wire::MIN_PROTOCOL_VERSION);

    let mut enc = BlobEncoder::new(3);
    let blobs: Vec<(BlobId, Vec<u8>)> = (0..5u64)
        .map(|i| {
            let data = random_bytes(8000 + i, 1000 * (i as usize + 1));
            (ChunkId::of(&data).into(), data)
        })
        .collect();
    for (id, data) in &blobs {
        new.put_blob(*id, BlobKind::Chunk, &enc.encode(BlobKind::Chunk, data))
            .unwrap();
    }
    // Chunk uploads are pipelined: closing waits for their answers.
    drop(new);
    let absent: BlobId = ChunkId::of(b"never stored").into();
    let mut ids: Vec<BlobId> = blobs.iter().map(|(id, _)| *id).collect();
    ids.push(absent);
    let got = old.get_blobs(&ids, BlobKind::Chunk).unwrap();
    for ((_, data), got) in blobs.iter().zip(&got) {
        assert_eq!(got.as_ref().unwrap(), data);
    }
    assert!(matches!(got.last(), Some(Err(StoreError::Missing(m))) if *m == absent));

    // `GetBatch` is not part of protocol 2.
    let req = Request::GetBatch {
        ids: ids.clone(),
        kind: BlobKind::Chunk as u8,
    };
    let answer = Response::decode(&old.send_raw(&req.encode()).unwrap()).unwrap();
    assert!(
        matches!(
            answer,
            Response::Error {
                code: ErrorCode::BadRequest,
                ..
            }
        ),
        "{answer:?}"
    );
}

/// Found by the hardening work: memory is set aside for a request when its
/// length arrives, so a peer announcing a large request and sending nothing
/// held all of the server's request memory for as long as it kept its
/// connection alive, and every other session's uploads waited.
#[test]
fn a_peer_announcing_a_large_request_and_stalling_cannot_starve_others() {
    use homesync_protocol::wire::{ErrorCode, Response};
    use homesync_protocol::{BlobEncoder, BlobKind, ChunkId, Repository};
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with_config(tmp.path(), "slow_request_secs = 1\n");
    let good = server.remote(&server.add_machine("good", false)).unwrap();
    let evil = server.remote(&server.add_machine("evil", false)).unwrap();
    // 40 MiB announced (80 MiB of request memory: all of it), nothing sent.
    let stalled = evil.stall_raw(&(40u32 << 20).to_le_bytes()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));

    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut enc = BlobEncoder::new(3);
        let mut last = None;
        for i in 0..8u64 {
            let data = random_bytes(100 + i, 1 << 20);
            let id = ChunkId::of(&data);
            good.put_blob(
                id.into(),
                BlobKind::Chunk,
                &enc.encode(BlobKind::Chunk, &data),
            )
            .unwrap();
            last = Some((id, data));
        }
        let (id, data) = last.unwrap();
        let back = good.get_blob(id.into(), BlobKind::Chunk).unwrap();
        tx.send(back == data).unwrap();
    });
    // Before the fix this waited for as long as the stalled stream lived.
    let ok = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the good client's uploads waited on the stalled stream");
    assert!(ok);

    let answer = Response::decode(&stalled.answer().unwrap()).unwrap();
    match answer {
        Response::Error {
            code: ErrorCode::BadRequest,
            message,
        } => assert!(message.contains("too slow"), "{message}"),
        other => panic!("{other:?}"),
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        evil.snapshots().is_err(),
        "the slow peer's connection stays open"
    );
}

/// Found with the previous test: before `Hello` a peer is nobody, yet it
/// could announce a 64 MiB request and have the server set memory aside.
#[test]
fn a_large_request_before_hello_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    // A Hello carrying a 100 KiB "credential": refused before it is read.
    let e = match server.remote(&"x".repeat(100 << 10)) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a 100 KiB Hello was accepted"),
    };
    assert!(e.contains("before Hello"), "{e}");
    // Everyone else is served as before.
    let good = server.remote(&server.add_machine("good", false)).unwrap();
    assert!(
        homesync_protocol::Repository::snapshots(&good)
            .unwrap()
            .is_empty()
    );
}

/// A restore's packets grow to `MAX_UDP_PAYLOAD` on loopback and stay
/// there for the whole transfer; a backup keeps Ethernet-sized packets.
/// (With 16 KiB packets quinn's 10-packet send batches exceeded 64 KiB,
/// the kernel refused them, and the connection fell back to 1200 bytes.)
#[test]
fn a_restore_moves_large_packets_and_a_backup_ethernet_sized_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let client = server.client(&server.add_machine("laptop", false), tmp.path());
    let src = tmp.path().join("src");
    // Enough for many full send batches (about 5,000 large packets).
    for i in 0..8u64 {
        write_file(&src.join(format!("f{i}.bin")), &random_bytes(i, 4 << 20));
    }
    client.backup(&src);
    let target = tmp.path().join("restored");
    client.restore_latest(&target);
    assert_eq!(describe_tree(&target), describe_tree(&src));
    let s = server.sessions(2);
    let mtu = |v: &serde_json::Value| v["path_mtu"].as_u64().unwrap();
    assert!(mtu(&s[0]) <= 1472, "backup: {}", s[0]);
    assert_eq!(
        mtu(&s[1]),
        homesync_protocol::wire::MAX_UDP_PAYLOAD as u64,
        "restore: {}",
        s[1]
    );
}

/// A backup asks the server for its parent alone (`Latest`): what it
/// receives does not grow with the snapshots the machine already has (the
/// daemon takes one every few minutes, and before `Latest` each backup
/// received the whole list).
#[test]
fn a_backup_asks_for_its_parent_not_for_every_snapshot() {
    use homesync_protocol::Repository;
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let cred = server.add_machine("laptop", false);
    let client = server.client(&cred, tmp.path());
    let src = tmp.path().join("src");
    write_file(&src.join("notes.txt"), b"notes\n");
    let first = client.backup(&src);
    // 300 older snapshots of the same source (copies of the first, dated
    // before it), so the first stays the newest.
    {
        let remote = server.remote(&cred).unwrap();
        let (_, snap) = remote.snapshots().unwrap().pop().unwrap();
        for i in 0..300 {
            let mut old = snap.clone();
            old.time.sec -= 3600 + i;
            remote.commit_snapshot(&old).unwrap();
        }
        assert_eq!(remote.snapshots().unwrap().len(), 301);
        // The newest for this source, in one answer.
        let (id, _) = remote
            .latest_snapshot("laptop", &snap.source)
            .unwrap()
            .unwrap();
        assert_eq!(id.to_string(), first.snapshot_id());
        assert!(
            remote
                .latest_snapshot("laptop", b"/nowhere")
                .unwrap()
                .is_none()
        );
    }
    let again = client.backup(&src);
    assert_eq!(again.summary_u64("blobs_added"), 0, "{}", again.describe());
    let s = server.sessions(3);
    // 300 snapshots would be some 50 KB; the handshake and a few answers
    // are under 16 KiB.
    let sent = s[2]["bytes_sent"].as_u64().unwrap();
    assert!(sent < 16 << 10, "the server sent {sent} bytes: {}", s[2]);
}
