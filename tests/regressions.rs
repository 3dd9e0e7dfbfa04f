//! Regression tests for bugs found in review: each reproduces the original
//! failure through the real binary.

mod common;

use common::*;
use std::process::Command;

fn setup() -> (tempfile::TempDir, Homesync) {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let hs = Homesync::new(tmp.path().join("store"));
    hs.init();
    (tmp, hs)
}

/// An empty directory's tree is two bytes; a file with the same two bytes
/// must neither hide the tree nor be hidden by it (ids live in one space
/// per kind).
#[test]
fn a_file_holding_an_empty_trees_bytes_is_not_confused_with_it() {
    let (tmp, hs) = setup();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("emptydir")).unwrap();
    write_file(&src.join("blob.bin"), &[0x01, 0x00]);
    hs.backup(&src, &[]);
    let target = tmp.path().join("restored");
    hs.run(args!["restore", "latest", "--target", target])
        .expect_ok();
    assert_eq!(
        std::fs::read(target.join("blob.bin")).unwrap(),
        [0x01, 0x00]
    );
    assert!(target.join("emptydir").is_dir());
}

/// A file-state cache that names blobs the store no longer has (here: the
/// store was put back to an older copy) costs a re-read, not a failed backup.
#[test]
fn a_stale_file_state_cache_does_not_break_backups() {
    let (tmp, hs) = setup();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    write_file(&src.join("a.bin"), &random_bytes(3, 300 << 10));
    let old = tmp.path().join("store-before");
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        let _ = std::fs::remove_dir_all(to);
        let ok = Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(to)
            .status()
            .unwrap();
        assert!(ok.success());
    };
    copy(&hs.repo, &old);
    // Old enough ctimes for the cache to take the file.
    std::thread::sleep(std::time::Duration::from_millis(3100));
    hs.backup(&src, &[]);
    copy(&old, &hs.repo);
    write_file(&src.join("new.txt"), b"changed");
    let again = hs.run(args!["backup", src]);
    again.expect_ok();
    let target = tmp.path().join("restored");
    hs.run(args!["restore", "latest", "--target", target])
        .expect_ok();
    assert_eq!(
        std::fs::read(target.join("a.bin")).unwrap(),
        std::fs::read(src.join("a.bin")).unwrap()
    );
}

/// Metadata that cannot be set (a `trusted.*` xattr, as a normal user)
/// is reported, but the verified contents are restored all the same.
#[test]
fn contents_are_kept_when_metadata_cannot_be_set() {
    let (tmp, hs) = setup();
    require_tool("setfattr");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    write_file(&src.join("doc.txt"), b"precious");
    let ok = Command::new("setfattr")
        .args(["-n", "trusted.x", "-v", "1"])
        .arg(src.join("doc.txt"))
        .status()
        .unwrap();
    assert!(ok.success());
    hs.backup(&src, &[]);
    // Restore as nobody into a directory nobody owns.
    let target = tmp.path().join("restored");
    std::fs::create_dir(&target).unwrap();
    std::os::unix::fs::chown(&target, Some(65534), Some(65534)).unwrap();
    let mut nobody = Homesync::new(hs.repo.clone());
    nobody.as_user = Some((65534, 65534));
    nobody.cache_home = tmp.path().join("nobody-cache");
    // nobody must be able to reach the target and open the store.
    let _ = Command::new("chmod").arg("a+rx").arg(tmp.path()).status();
    let ok = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&hs.repo)
        .status()
        .unwrap();
    assert!(ok.success());
    let run = nobody.run(args!["restore", "latest", "--target", target]);
    assert_eq!(
        run.code,
        3,
        "metadata failure is a partial restore\n{}",
        run.describe()
    );
    assert_eq!(
        std::fs::read(target.join("doc.txt")).unwrap(),
        b"precious",
        "{}",
        run.describe()
    );
    assert!(
        run.stdout.contains("trusted.x"),
        "the failure names the xattr\n{}",
        run.describe()
    );
}

/// A store this user cannot write (read-only media, or root's store read by
/// a user) still lists and restores.
#[test]
fn a_store_that_cannot_be_written_still_restores() {
    let (tmp, hs) = setup();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    write_file(&src.join("a.txt"), b"readable");
    hs.backup(&src, &[]);
    let _ = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(tmp.path())
        .status();
    let target = tmp.path().join("out");
    std::fs::create_dir(&target).unwrap();
    std::os::unix::fs::chown(&target, Some(65534), Some(65534)).unwrap();
    let mut nobody = Homesync::new(hs.repo.clone());
    nobody.as_user = Some((65534, 65534));
    nobody.cache_home = target.join("cache");
    let list = nobody.run(args!["snapshots"]);
    list.expect_ok();
    assert_eq!(list.messages("snapshot").len(), 1, "{}", list.describe());
    nobody
        .run(args!["restore", "latest", "--target", target.join("r")])
        .expect_ok();
    assert_eq!(std::fs::read(target.join("r/a.txt")).unwrap(), b"readable");
}

/// A file written to throughout the backup is read again, then kept and
/// reported (exit 3): the stored copy may be inconsistent, and the user is told.
#[test]
fn a_file_that_keeps_changing_is_reported() {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    let (tmp, hs) = setup();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let log = src.join("busy.log");
    write_file(&log, &random_bytes(9, 16 << 20));
    write_file(&src.join("quiet.txt"), b"still");
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let log = log.clone();
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
            while !stop.load(Ordering::Relaxed) {
                f.write_all(&[b'x'; 512]).unwrap();
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(50));
    let run = hs.run(args!["backup", src]);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(run.code, 3, "{}", run.describe());
    let errors = run.error_paths();
    assert!(
        errors.iter().any(|p| p.ends_with("busy.log")),
        "{errors:?}\n{}",
        run.describe()
    );
    assert!(
        run.stdout.contains("changed while being read"),
        "{}",
        run.describe()
    );
    // The quiet file is in the snapshot as usual.
    let target = tmp.path().join("restored");
    hs.run(args!["restore", "latest", "--target", target])
        .expect_code(0);
    assert_eq!(std::fs::read(target.join("quiet.txt")).unwrap(), b"still");
}
