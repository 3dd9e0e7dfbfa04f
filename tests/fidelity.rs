//! End-to-end fidelity tests: the real `homesync` binary, a real store on
//! disk, real source trees with every kind of node, and restored trees
//! compared with independent tools (bsdtar's mtree writer, getfattr) as well
//! as with std's lstat.
//!
//! These tests run as root (device nodes, owners). The external tools they
//! need are installed by `scripts/install-test-deps.sh`.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, chown, lchown, symlink};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::Value;
use tempfile::TempDir;

const MIB: u64 = 1024 * 1024;

/// A fresh temporary directory with an initialised store in `<tmp>/store`.
fn setup() -> (TempDir, Homesync) {
    require_root();
    let tmp = tempfile::Builder::new()
        .prefix("homesync-fidelity-")
        .tempdir()
        .expect("create temp dir");
    let hs = Homesync::new(tmp.path().join("store"));
    hs.init();
    (tmp, hs)
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

fn mkdir(path: &Path) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
}

// ---------------------------------------------------------------------------
// 1. every node kind round-trips
// ---------------------------------------------------------------------------

/// Interesting paths of the tree built by `build_every_kind_tree`.
struct KindTree {
    sparse: PathBuf,
    hardlink_a: PathBuf,
    hardlink_b: PathBuf,
    fifo: PathBuf,
    socket: PathBuf,
    chardev: PathBuf,
    blockdev: PathBuf,
}

/// A directory 20 levels down the deep chain (created by the caller first).
fn deep_parent_of(src: &Path) -> PathBuf {
    let mut d = src.join("deep");
    for i in 0..20 {
        d.push(format!("level{i:02}"));
    }
    d
}

fn build_every_kind_tree(src: &Path) -> KindTree {
    let p = |rel: &str| src.join(rel);

    // Regular files of various sizes.
    write_file(&p("small.txt"), b"hello, world\n");
    write_file(&p("random_100k.bin"), &random_bytes(2, 100 * 1024));
    let big = random_bytes(1, 3 * MIB as usize + 12_345);
    write_file(&p("random_3m.bin"), &big);
    // The same content under another name: its chunks are stored once and
    // must still be restored into both files.
    write_file(&p("random_3m_copy.bin"), &big);
    let text: Vec<u8> = (0..40_000)
        .flat_map(|i| format!("line {i:06}: the quick brown fox\n").into_bytes())
        .collect();
    write_file(&p("text_1m.txt"), &text);
    write_file(&p("empty_file"), b"");
    mkdir(&p("empty_dir"));

    // Tricky but legal names.
    write_file(&p("..."), b"three dots\n");
    write_file(&p(".hidden"), b"dot file\n");
    write_file(&p("with space\nand newline"), b"odd name\n");
    write_file(&p("back\\slash"), b"backslash\n");

    // Deep nesting and a 255-byte name (at the top and at the bottom).
    let long_name = format!("{}.txt", "L".repeat(251));
    assert_eq!(long_name.len(), 255);
    let mut deep = p("deep");
    for i in 0..40 {
        deep.push(format!("level{i:02}"));
    }
    mkdir(&deep);
    write_file(&deep.join(&long_name), b"at the bottom\n");
    write_file(&p(&long_name), b"long name at the top\n");

    // Non-UTF-8 names.
    write_file(&src.join(OsStr::from_bytes(b"caf\xe9")), b"latin-1 name\n");
    let weird_dir = src.join(OsStr::from_bytes(b"dir\xff\xfe\x01name"));
    mkdir(&weird_dir);
    write_file(&weird_dir.join(OsStr::from_bytes(b"\x80\x81")), b"x");

    // A 64 MiB sparse file with data at 0 and at 40 MiB.
    let sparse = p("sparse.img");
    {
        let mut f = File::create(&sparse).unwrap();
        f.write_all(&random_bytes(3, 4096)).unwrap();
        f.seek(SeekFrom::Start(40 * MIB)).unwrap();
        f.write_all(&random_bytes(4, 4096)).unwrap();
        f.set_len(64 * MIB).unwrap();
    }
    // A file that is one hole and nothing else.
    File::create(p("all_hole.img"))
        .unwrap()
        .set_len(10 * MIB)
        .unwrap();

    // A hardlink pair across directories.
    let hardlink_a = p("hardlink_a");
    write_file(&hardlink_a, b"one inode, two names\n");
    mkdir(&p("links"));
    let hardlink_b = p("links/hardlink_b");
    fs::hard_link(&hardlink_a, &hardlink_b).unwrap();
    fs::hard_link(&hardlink_a, deep_parent_of(src).join("hardlink_c")).unwrap();

    // Symlinks: relative, absolute, dangling, non-UTF-8 target, to a dir.
    symlink("../small.txt", p("links/relative")).unwrap();
    symlink("/etc/passwd", p("links/absolute")).unwrap();
    symlink("does/not/exist", p("links/dangling")).unwrap();
    symlink(
        OsStr::from_bytes(b"caf\xe9\xff"),
        p("links/non_utf8_target"),
    )
    .unwrap();
    symlink("../empty_dir", p("links/to_dir")).unwrap();

    // Special files.
    mkdir(&p("special"));
    let fifo = p("special/fifo");
    sh("mkfifo", args![fifo], None);
    let socket = p("special/socket");
    drop(UnixListener::bind(&socket).expect("bind unix socket"));
    let chardev = p("special/null");
    sh("mknod", args![chardev, "c", "1", "3"], None);
    let blockdev = p("special/loop240");
    sh("mknod", args![blockdev, "b", "7", "240"], None);

    // Odd modes.
    mkdir(&p("modes"));
    write_file(&p("modes/setuid"), b"#!/bin/sh\necho setuid\n");
    chmod(&p("modes/setuid"), 0o4755);
    write_file(&p("modes/zero"), b"mode 000\n");
    chmod(&p("modes/zero"), 0o000);
    write_file(&p("modes/private"), b"mode 600\n");
    chmod(&p("modes/private"), 0o600);
    mkdir(&p("modes/sticky"));
    write_file(&p("modes/sticky/inside"), b"in a sticky dir\n");
    chmod(&p("modes/sticky"), 0o1777);
    mkdir(&p("modes/setgid_dir"));
    chmod(&p("modes/setgid_dir"), 0o2755);
    mkdir(&p("modes/readonly_dir"));
    write_file(&p("modes/readonly_dir/inside"), b"in a read-only dir\n");
    chmod(&p("modes/readonly_dir"), 0o555);

    // Other owners (chown before chmod: chown clears set-id bits).
    mkdir(&p("owners/dir"));
    write_file(&p("owners/file"), b"owned by 1234:5678\n");
    chown(p("owners/file"), Some(1234), Some(5678)).unwrap();
    chown(p("owners/dir"), Some(4321), Some(8765)).unwrap();
    symlink("file", p("owners/link")).unwrap();
    lchown(p("owners/link"), Some(1234), Some(5678)).unwrap();
    write_file(&p("owners/setgid_file"), b"setgid, other group\n");
    chown(p("owners/setgid_file"), Some(1234), Some(5678)).unwrap();
    chmod(&p("owners/setgid_file"), 0o2750);

    // Extended attributes and POSIX ACLs.
    mkdir(&p("xattrs/dir"));
    write_file(&p("xattrs/file"), b"has xattrs\n");
    let xf = p("xattrs/file");
    sh(
        "setfattr",
        args!["-n", "user.comment", "-v", "hello world", xf],
        None,
    );
    sh(
        "setfattr",
        args!["-n", "user.binary", "-v", "0x00ff10fe", xf],
        None,
    );
    sh("setfattr", args!["-n", "user.empty", xf], None);
    let big_value = format!("0x{}", "ab".repeat(3000));
    sh(
        "setfattr",
        args!["-n", "user.big", "-v", big_value, xf],
        None,
    );
    sh(
        "setfattr",
        args!["-n", "user.dirattr", "-v", "on a dir", p("xattrs/dir")],
        None,
    );
    write_file(&p("acl/file"), b"has an ACL\n");
    sh(
        "setfacl",
        args!["-m", "u:nobody:r,g:65534:rw", p("acl/file")],
        None,
    );
    mkdir(&p("acl/dir"));
    sh("setfacl", args!["-m", "u:nobody:rx", p("acl/dir")], None);
    sh(
        "setfacl",
        args!["-d", "-m", "u:nobody:rx", p("acl/dir")],
        None,
    );

    // Odd mtimes (with nanoseconds), on files, a symlink and a directory.
    mkdir(&p("times/old_dir"));
    write_file(&p("times/old_dir/inside"), b"x\n");
    write_file(&p("times/old"), b"from 1901\n");
    write_file(&p("times/future"), b"from 2100\n");
    symlink("old", p("times/old_link")).unwrap();
    set_mtime(&p("times/old"), "1901-12-14 00:00:00.123456789 UTC");
    set_mtime(&p("times/future"), "2100-01-01 00:00:00.987654321 UTC");
    set_mtime(&p("times/old_link"), "1905-05-05 05:05:05.000000555 UTC");
    set_mtime(&p("times/old_dir"), "1970-01-01 00:00:00.000000001 UTC");
    set_mtime(&p("empty_dir"), "1999-12-31 23:59:59.999999999 UTC");
    set_mtime(&deep, "2001-02-03 04:05:06.7 UTC");

    KindTree {
        sparse,
        hardlink_a,
        hardlink_b,
        fifo,
        socket,
        chardev,
        blockdev,
    }
}

#[test]
fn every_node_kind_round_trips() {
    require_tools(&[
        "bsdtar", "getfattr", "setfattr", "setfacl", "mkfifo", "mknod", "touch",
    ]);
    let (tmp, hs) = setup();
    let src = tmp.path().join("src");
    mkdir(&src);
    let kinds = build_every_kind_tree(&src);

    let sparse_md = fs::metadata(&kinds.sparse).unwrap();
    assert!(
        sparse_md.blocks() * 512 < 4 * MIB,
        "test setup: the file system did not keep {} sparse ({} blocks)",
        kinds.sparse.display(),
        sparse_md.blocks()
    );

    let mtree_src = mtree(&src);
    let xattrs_src = getfattr_dump(&src);
    let lstat_src = describe_tree(&src);
    // bsdtar must have seen every kind (it may skip sockets in some modes).
    for kind in [
        "type=socket",
        "type=fifo",
        "type=char",
        "type=block",
        "type=link",
    ] {
        assert!(
            mtree_src.iter().any(|l| l.contains(kind)),
            "test setup: bsdtar's listing has no {kind}:\n{}",
            mtree_src.join("\n")
        );
    }
    assert!(
        xattrs_src
            .iter()
            .any(|b| b.contains("system.posix_acl_default")),
        "test setup: getfattr shows no default ACL"
    );

    let backup = hs.backup(&src, &[]);
    assert_eq!(
        backup.summary_u64("errors"),
        0,
        "backup reported errors\n{}",
        backup.describe()
    );
    let id = backup.snapshot_id();

    // Backing up must not change the source.
    assert_same_listing("source after backup (mtree)", &mtree_src, &mtree(&src));

    let dst = tmp.path().join("restored");
    let restore = hs.restore(&id, &dst, &[]);
    restore.expect_ok();
    assert_eq!(
        restore.summary_u64("errors"),
        0,
        "restore reported errors\n{}",
        restore.describe()
    );

    assert_same_listing("bsdtar mtree listing", &mtree_src, &mtree(&dst));
    assert_same_listing("getfattr listing", &xattrs_src, &getfattr_dump(&dst));
    assert_same_map("lstat listing", &lstat_src, &describe_tree(&dst));

    // The same, planned at most 3 entries at a time: the snapshot goes in
    // windows of subtrees (hardlinks across windows, directories split
    // between windows, their metadata last), as a home larger than
    // PLAN_WINDOW does.
    let windowed = tmp.path().join("restored-in-windows");
    let mut small = Homesync::new(hs.repo.clone());
    small
        .env
        .push(("HOMESYNC_RESTORE_WINDOW".into(), "3".into()));
    let run = small.restore(&id, &windowed, &[]);
    run.expect_ok();
    assert_eq!(run.summary_u64("errors"), 0, "{}", run.describe());
    assert_same_listing("windows: mtree", &mtree_src, &mtree(&windowed));
    assert_same_listing("windows: getfattr", &xattrs_src, &getfattr_dump(&windowed));
    assert_same_map("windows: lstat", &lstat_src, &describe_tree(&windowed));

    // The sparse file stays sparse.
    let restored_sparse = dst.join(kinds.sparse.strip_prefix(&src).unwrap());
    let md = fs::metadata(&restored_sparse).unwrap();
    assert_eq!(md.len(), 64 * MIB);
    assert!(
        md.blocks() * 512 < 8 * MIB,
        "restored sparse file is not sparse: {} bytes allocated for a 64 MiB file \
         with 8 KiB of data",
        md.blocks() * 512
    );

    // The hardlink pair is one inode again.
    let a = fs::metadata(dst.join(kinds.hardlink_a.strip_prefix(&src).unwrap())).unwrap();
    let b = fs::metadata(dst.join(kinds.hardlink_b.strip_prefix(&src).unwrap())).unwrap();
    assert_eq!(
        (a.dev(), a.ino()),
        (b.dev(), b.ino()),
        "hardlink pair was restored as two separate files"
    );
    let c = fs::metadata(dst.join(deep_parent_of(Path::new("")).join("hardlink_c"))).unwrap();
    assert_eq!(
        (a.dev(), a.ino()),
        (c.dev(), c.ino()),
        "third name of the hardlink group was restored as a separate file"
    );
    assert_eq!(a.nlink(), 3);

    // A file that is all hole stays all hole.
    let hole = fs::metadata(dst.join("all_hole.img")).unwrap();
    assert_eq!(hole.len(), 10 * MIB);
    assert!(
        hole.blocks() * 512 < MIB,
        "restored all-hole file has {} bytes allocated",
        hole.blocks() * 512
    );

    // Special files have the right type.
    let ft = |p: &Path| {
        fs::symlink_metadata(dst.join(p.strip_prefix(&src).unwrap()))
            .unwrap_or_else(|e| panic!("restored {}: {e}", p.display()))
    };
    assert!(
        ft(&kinds.fifo).file_type().is_fifo(),
        "fifo not restored as a fifo"
    );
    assert!(
        ft(&kinds.socket).file_type().is_socket(),
        "socket not restored as a socket"
    );
    let c = ft(&kinds.chardev);
    assert!(c.file_type().is_char_device(), "char device not restored");
    assert_eq!(
        c.rdev(),
        fs::symlink_metadata(&kinds.chardev).unwrap().rdev()
    );
    let bd = ft(&kinds.blockdev);
    assert!(
        bd.file_type().is_block_device(),
        "block device not restored"
    );
    assert_eq!(
        bd.rdev(),
        fs::symlink_metadata(&kinds.blockdev).unwrap().rdev()
    );
}

// ---------------------------------------------------------------------------
// 2. an unchanged file is not read again
// ---------------------------------------------------------------------------

/// Drains pending inotify events, returning the relative paths of non-dir
/// entries that were opened or read.
fn drain_opened(
    ino: &mut inotify::Inotify,
    dirs: &HashMap<inotify::WatchDescriptor, PathBuf>,
) -> BTreeSet<PathBuf> {
    use inotify::EventMask;
    let mut buf = [0u8; 64 * 1024];
    let mut opened = BTreeSet::new();
    loop {
        match ino.read_events(&mut buf) {
            Ok(events) => {
                let mut any = false;
                for ev in events {
                    any = true;
                    if ev.mask.contains(EventMask::Q_OVERFLOW) {
                        panic!("inotify queue overflowed");
                    }
                    if ev.mask.contains(EventMask::ISDIR) {
                        continue;
                    }
                    if let Some(name) = ev.name {
                        let dir = dirs.get(&ev.wd).cloned().unwrap_or_default();
                        opened.insert(dir.join(name));
                    }
                }
                if !any {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("reading inotify events: {e}"),
        }
    }
    opened
}

/// Sleeps until the wall clock's second is at least `secs` past the newest
/// ctime second of any entry under `dir`.
fn wait_until_ctimes_are_older_than(dir: &Path, secs: i64) {
    let newest = walk(dir).values().map(|md| md.ctime()).max().unwrap_or(0);
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        if now >= newest + secs {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn unchanged_file_is_not_read_again() {
    use inotify::{Inotify, WatchMask};

    let (tmp, hs) = setup();
    let src = tmp.path().join("src");
    write_file(&src.join("a.txt"), b"alpha\n");
    write_file(&src.join("b.bin"), &random_bytes(10, 200 * 1024));
    write_file(&src.join("sub/c.txt"), b"charlie\n");
    write_file(&src.join("sub/d.bin"), &random_bytes(11, 50 * 1024));
    for f in ["a.txt", "b.bin", "sub/c.txt", "sub/d.bin"] {
        set_mtime(&src.join(f), "2020-01-02 03:04:05.123456789 UTC");
    }
    // A file changed within the last timestamp tick(s) before a backup
    // starts cannot safely enter the file-state cache (a later change in the
    // same tick would go unnoticed); the client keeps a margin of 2 s. Start
    // the first backup only when every ctime is safely older than that.
    wait_until_ctimes_are_older_than(&src, 3);

    let first = hs.backup(&src, &[]);
    assert_eq!(
        first.summary_u64("files_read"),
        4,
        "first backup should read all 4 files\n{}",
        first.describe()
    );

    let mut ino = Inotify::init().expect("inotify init");
    let mut dirs = HashMap::new();
    for rel in ["", "sub"] {
        let wd = ino
            .watches()
            .add(src.join(rel), WatchMask::OPEN | WatchMask::ACCESS)
            .expect("add inotify watch");
        dirs.insert(wd, PathBuf::from(rel));
    }
    // Nothing has happened yet.
    assert!(drain_opened(&mut ino, &dirs).is_empty());

    let second = hs.backup(&src, &[]);
    let opened = drain_opened(&mut ino, &dirs);
    assert!(
        opened.is_empty(),
        "second backup of an unchanged tree opened/read files: {opened:?}\n{}",
        second.describe()
    );
    assert_eq!(
        second.summary_u64("files_read"),
        0,
        "second backup of an unchanged tree read files\n{}",
        second.describe()
    );
    assert_eq!(second.summary_u64("files"), 4, "{}", second.describe());

    // Change one file: exactly that one is read.
    {
        let mut f = OpenOptions::new()
            .append(true)
            .open(src.join("sub/d.bin"))
            .unwrap();
        f.write_all(b"appended").unwrap();
    }
    let _ = drain_opened(&mut ino, &dirs); // our own open/append
    let third = hs.backup(&src, &[]);
    let opened = drain_opened(&mut ino, &dirs);
    assert_eq!(
        opened,
        BTreeSet::from([PathBuf::from("sub/d.bin")]),
        "third backup should open exactly the modified file\n{}",
        third.describe()
    );
    assert_eq!(
        third.summary_u64("files_read"),
        1,
        "third backup should read exactly one file\n{}",
        third.describe()
    );
    drop(tmp);
}

// ---------------------------------------------------------------------------
// 3. flipped bytes in a pack are reported
// ---------------------------------------------------------------------------

#[test]
fn flipped_bytes_in_a_pack_are_reported() {
    let (tmp, hs) = setup();
    let src = tmp.path().join("src");
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("one.bin", random_bytes(21, 16 * 1024)),
        ("two.bin", random_bytes(22, 40 * 1024)),
        ("sub/three.bin", random_bytes(23, 96 * 1024)),
        ("sub/four.bin", random_bytes(24, 24 * 1024)),
        ("victim.bin", random_bytes(25, 768 * 1024)),
    ];
    for (name, data) in &files {
        write_file(&src.join(name), data);
    }
    let id = hs.backup(&src, &[]).snapshot_id();

    // Find the victim's bytes in the packs (incompressible data is stored
    // raw); failing that, flip bytes in the middle of the largest pack, which
    // the victim dominates.
    let victim = &files.iter().find(|(n, _)| *n == "victim.bin").unwrap().1;
    let mid = victim.len() / 2;
    let needle = &victim[mid..mid + 64];
    let packs = files_under(&hs.repo.join("packs"));
    assert!(
        !packs.is_empty(),
        "no pack files under {}",
        hs.repo.join("packs").display()
    );
    let mut target: Option<(PathBuf, usize)> = None;
    for pack in &packs {
        let data = fs::read(pack).unwrap();
        if let Some(pos) = find_bytes(&data, needle) {
            target = Some((pack.clone(), pos));
            break;
        }
    }
    let found_raw = target.is_some();
    let (pack, pos) = target.unwrap_or_else(|| {
        let largest = packs
            .iter()
            .max_by_key(|p| fs::metadata(p).unwrap().len())
            .unwrap()
            .clone();
        let len = fs::metadata(&largest).unwrap().len() as usize;
        (largest, len / 2)
    });
    eprintln!(
        "flipping 16 bytes at offset {pos} of {} (victim's bytes found raw: {found_raw})",
        pack.display()
    );
    let mut data = fs::read(&pack).unwrap();
    for b in &mut data[pos..pos + 16] {
        *b ^= 0xA5;
    }
    // Packs may be written read-only; root can still rewrite them.
    fs::write(&pack, &data).unwrap();

    let dst = tmp.path().join("restored");
    let run = hs.restore(&id, &dst, &[]);
    assert_eq!(
        run.code,
        5,
        "restore from a corrupted pack should exit 5 (corruption found)\n{}",
        run.describe()
    );
    let named_in_json = run.error_paths().iter().any(|p| p.contains("victim.bin"));
    let named_in_stderr = run.stderr.contains("victim.bin");
    assert!(
        named_in_json || named_in_stderr,
        "the corrupted file victim.bin is not named in the errors\n{}",
        run.describe()
    );
    for (name, data) in &files {
        if *name == "victim.bin" {
            continue;
        }
        let got = fs::read(dst.join(name))
            .unwrap_or_else(|e| panic!("{name} was not restored: {e}\n{}", run.describe()));
        assert!(got == *data, "{name} was not restored byte-identical");
    }
    // A file that failed verification must not be left with wrong content
    // under its real name, nor under a leftover temporary name.
    if let Ok(got) = fs::read(dst.join("victim.bin")) {
        assert!(
            got == *victim,
            "victim.bin was left in the target with corrupted content"
        );
    }
    let expected: BTreeSet<PathBuf> = [
        "one.bin",
        "two.bin",
        "sub",
        "sub/three.bin",
        "sub/four.bin",
        "victim.bin",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    let stray: Vec<PathBuf> = walk(&dst)
        .into_keys()
        .filter(|p| !expected.contains(p))
        .collect();
    assert!(
        stray.is_empty(),
        "stray entries left in the target: {stray:?}"
    );
}

// ---------------------------------------------------------------------------
// 4. an unreadable file is reported and the backup goes on
// ---------------------------------------------------------------------------

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    lchown(path, Some(uid), Some(gid)).unwrap();
    if fs::symlink_metadata(path).unwrap().is_dir() {
        for e in fs::read_dir(path).unwrap() {
            chown_tree(&e.unwrap().path(), uid, gid);
        }
    }
}

#[test]
fn unreadable_file_is_reported_and_backup_goes_on() {
    require_root();
    require_tool("setpriv");
    const NOBODY: u32 = 65534;
    let tmp = tempfile::Builder::new()
        .prefix("homesync-fidelity-")
        .tempdir()
        .unwrap();
    let src = tmp.path().join("src");
    write_file(&src.join("ok1.txt"), b"readable one\n");
    write_file(&src.join("sub/ok2.txt"), b"readable two\n");
    let secret = src.join("sub/secret.txt");
    write_file(&secret, b"nobody may read this\n");
    // A directory nobody may list: reported too, and the rest goes on.
    let locked = src.join("locked");
    write_file(&locked.join("inner.txt"), b"behind a locked door\n");
    write_file(&src.join("zzz_after.txt"), b"after the locked dir\n");
    chown_tree(tmp.path(), NOBODY, NOBODY);
    chmod(tmp.path(), 0o755);
    chmod(&secret, 0o000);
    chmod(&locked, 0o000);

    // Precondition: as nobody the file really cannot be read.
    let cat = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(&secret)
        .output()
        .unwrap();
    assert!(
        !cat.status.success(),
        "test setup: user nobody can read a mode-000 file (capabilities kept?)"
    );

    let mut hs = Homesync::new(tmp.path().join("store"));
    hs.as_user = Some((NOBODY, NOBODY));
    hs.init();
    let run = hs.run(args!["backup", src]);
    assert_eq!(
        run.code,
        3,
        "backup with an unreadable file should exit 3 (partial)\n{}",
        run.describe()
    );
    assert!(
        run.error_paths().iter().any(|p| p.contains("secret.txt")),
        "no JSON error line names secret.txt\n{}",
        run.describe()
    );
    assert!(
        run.error_paths().iter().any(|p| p.ends_with("locked")),
        "no JSON error line names the unlistable directory `locked`\n{}",
        run.describe()
    );
    assert!(run.summary_u64("errors") >= 2, "{}", run.describe());
    let _ = run.snapshot_id();

    let ls = hs.run_text(args!["ls", "latest"]);
    ls.expect_ok();
    for name in ["ok1.txt", "sub/ok2.txt", "zzz_after.txt"] {
        assert!(
            ls.stdout.contains(name),
            "`ls latest` does not list {name}\n{}",
            ls.describe()
        );
    }

    // The readable files restore fine.
    let dst = tmp.path().join("restored");
    let r = hs.restore("latest", &dst, &[]);
    assert!(
        r.code == 0 || r.code == 3,
        "restore of the partial snapshot failed\n{}",
        r.describe()
    );
    assert_eq!(fs::read(dst.join("ok1.txt")).unwrap(), b"readable one\n");
    assert_eq!(
        fs::read(dst.join("sub/ok2.txt")).unwrap(),
        b"readable two\n"
    );
    assert_eq!(
        fs::read(dst.join("zzz_after.txt")).unwrap(),
        b"after the locked dir\n"
    );
}

// ---------------------------------------------------------------------------
// 5. restore never follows a symlink inside the target
// ---------------------------------------------------------------------------

#[test]
fn restore_refuses_to_follow_a_symlink_in_the_target() {
    let (tmp, hs) = setup();
    let src = tmp.path().join("src");
    write_file(&src.join("sub/file.txt"), b"inside sub\n");
    write_file(&src.join("sub/deeper/x.txt"), b"deeper\n");
    write_file(&src.join("plain.txt"), b"plain file\n");
    let id = hs.backup(&src, &[]).snapshot_id();

    let outside_dir = tmp.path().join("outside_dir");
    mkdir(&outside_dir);
    let outside_file = tmp.path().join("outside_file");
    write_file(&outside_file, b"ORIGINAL\n");

    let check_outside = |what: &str, run: &Run| {
        let inside: Vec<PathBuf> = walk(&outside_dir).into_keys().collect();
        assert!(
            inside.is_empty(),
            "{what}: restore wrote through a symlink into {}: {inside:?}\n{}",
            outside_dir.display(),
            run.describe()
        );
        assert_eq!(
            fs::read(&outside_file).unwrap(),
            b"ORIGINAL\n",
            "{what}: restore wrote through a symlink into {}\n{}",
            outside_file.display(),
            run.describe()
        );
    };

    // Whole-snapshot restore into a target holding planted symlinks.
    let dst = tmp.path().join("target");
    mkdir(&dst);
    symlink(&outside_dir, dst.join("sub")).unwrap();
    symlink(&outside_file, dst.join("plain.txt")).unwrap();
    let run = hs.restore(&id, &dst, &[]);
    check_outside("full restore", &run);
    assert!(
        run.code == 0 || run.code == 3,
        "full restore: unexpected exit code\n{}",
        run.describe()
    );
    if run.code == 0 {
        // It succeeded, so the symlinks must have been replaced.
        let sub = fs::symlink_metadata(dst.join("sub")).unwrap();
        assert!(
            sub.is_dir(),
            "target/sub is still not a real directory\n{}",
            run.describe()
        );
        assert_eq!(fs::read(dst.join("sub/file.txt")).unwrap(), b"inside sub\n");
        assert_eq!(fs::read(dst.join("sub/deeper/x.txt")).unwrap(), b"deeper\n");
        let plain = fs::symlink_metadata(dst.join("plain.txt")).unwrap();
        assert!(plain.is_file(), "target/plain.txt is still a symlink");
        assert_eq!(fs::read(dst.join("plain.txt")).unwrap(), b"plain file\n");
    } else {
        assert!(
            !run.errors().is_empty() || !run.stderr.is_empty(),
            "full restore exited 3 without saying why\n{}",
            run.describe()
        );
    }

    // Restoring a single path whose parent is a planted symlink.
    let dst2 = tmp.path().join("target2");
    mkdir(&dst2);
    symlink(&outside_dir, dst2.join("sub")).unwrap();
    let run = hs.restore(&id, &dst2, args!["sub/deeper/x.txt"]);
    check_outside("single-path restore", &run);
    assert!(
        run.code == 0 || run.code == 3,
        "single-path restore: unexpected exit code\n{}",
        run.describe()
    );
    if run.code == 0 {
        assert!(fs::symlink_metadata(dst2.join("sub")).unwrap().is_dir());
        assert_eq!(
            fs::read(dst2.join("sub/deeper/x.txt")).unwrap(),
            b"deeper\n"
        );
    }
}

// ---------------------------------------------------------------------------
// 6. subtree and single-file restore
// ---------------------------------------------------------------------------

#[test]
fn subtree_and_single_file_restore() {
    let (tmp, hs) = setup();
    let src = tmp.path().join("src");
    let contents: BTreeMap<&str, &[u8]> = BTreeMap::from([
        ("a/b/c.txt", &b"c\n"[..]),
        ("a/b/d/e.txt", &b"e\n"[..]),
        ("a/x.txt", &b"x\n"[..]),
        ("top.txt", &b"top\n"[..]),
        ("other/f.txt", &b"f\n"[..]),
        ("other/g.txt", &b"g\n"[..]),
    ]);
    for (name, data) in &contents {
        write_file(&src.join(name), data);
    }
    chmod(&src.join("a/b"), 0o750);
    set_mtime(&src.join("a/b"), "2011-11-11 11:11:11.111111111 UTC");
    let id = hs.backup(&src, &[]).snapshot_id();

    let check = |dst: &Path, run: &Run, expected: &[&str]| {
        run.expect_ok();
        let got: BTreeSet<PathBuf> = walk(dst).into_keys().collect();
        let want: BTreeSet<PathBuf> = expected.iter().map(PathBuf::from).collect();
        assert_eq!(got, want, "restored entries differ\n{}", run.describe());
        for e in expected {
            if let Some(data) = contents.get(e) {
                assert_eq!(fs::read(dst.join(e)).unwrap(), *data, "{e}");
            }
        }
    };

    let dst1 = tmp.path().join("subtree");
    let run = hs.restore(&id, &dst1, args!["a/b"]);
    check(
        &dst1,
        &run,
        &["a", "a/b", "a/b/c.txt", "a/b/d", "a/b/d/e.txt"],
    );
    assert_eq!(run.summary_u64("files_restored"), 2, "{}", run.describe());
    let want = fs::metadata(src.join("a/b")).unwrap();
    let got = fs::metadata(dst1.join("a/b")).unwrap();
    assert_eq!(got.mode(), want.mode(), "mode of restored a/b");
    assert_eq!(
        (got.mtime(), got.mtime_nsec()),
        (want.mtime(), want.mtime_nsec()),
        "mtime of restored a/b"
    );

    let dst2 = tmp.path().join("single");
    let run = hs.restore(&id, &dst2, args!["other/f.txt"]);
    check(&dst2, &run, &["other", "other/f.txt"]);
    assert_eq!(run.summary_u64("files_restored"), 1, "{}", run.describe());
    assert_eq!(run.summary_u64("bytes_restored"), 2, "{}", run.describe());

    let dst3 = tmp.path().join("both");
    let run = hs.restore(&id, &dst3, args!["a/b/d", "top.txt"]);
    check(
        &dst3,
        &run,
        &["a", "a/b", "a/b/d", "a/b/d/e.txt", "top.txt"],
    );
}

// ---------------------------------------------------------------------------
// 7. snapshots, ls, diff and `latest`
// ---------------------------------------------------------------------------

/// Snapshot records in `snapshots --json` output: objects with
/// message_type "snapshot", plain objects carrying an id, or array elements.
fn snapshot_records(run: &Run) -> Vec<&Value> {
    let mut out = Vec::new();
    for v in &run.json {
        match v {
            Value::Array(items) => out.extend(items.iter()),
            Value::Object(m) => match m.get("message_type").and_then(Value::as_str) {
                Some("snapshot") => out.push(v),
                Some(_) => {}
                None => out.push(v),
            },
            _ => {}
        }
    }
    out
}

fn lines_mentioning<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.contains(name)).collect()
}

#[test]
fn snapshots_ls_diff_and_latest() {
    let (tmp, hs) = setup();
    let src = tmp.path().join("src");
    write_file(&src.join("keep.txt"), b"unchanged\n");
    write_file(&src.join("modify.txt"), b"before\n");
    write_file(&src.join("gone.txt"), b"will be removed\n");
    write_file(&src.join("dir/gone2.txt"), b"will be removed too\n");
    let first = hs.backup(&src, &[]).snapshot_id();

    write_file(&src.join("modify.txt"), b"after, and longer\n");
    fs::remove_file(src.join("gone.txt")).unwrap();
    fs::remove_file(src.join("dir/gone2.txt")).unwrap();
    write_file(&src.join("added.txt"), b"new\n");
    write_file(&src.join("newdir/added2.txt"), b"new too\n");
    let second = hs.backup(&src, &[]).snapshot_id();
    assert_ne!(first, second);

    let snaps = hs.run(args!["snapshots"]);
    snaps.expect_ok();
    assert_eq!(
        snapshot_records(&snaps).len(),
        2,
        "`snapshots --json` should list 2 snapshots\n{}",
        snaps.describe()
    );
    for id in [&first, &second] {
        assert!(
            snaps.stdout.contains(id.as_str()),
            "`snapshots --json` does not show the full id {id}\n{}",
            snaps.describe()
        );
    }

    let ls = hs.run_text(args!["ls", "latest"]);
    ls.expect_ok();
    for name in ["keep.txt", "modify.txt", "added.txt", "newdir/added2.txt"] {
        assert!(
            ls.stdout.contains(name),
            "`ls latest` does not list {name}\n{}",
            ls.describe()
        );
    }
    for name in ["gone.txt", "gone2.txt"] {
        assert!(
            !ls.stdout.contains(name),
            "`ls latest` still lists removed {name}\n{}",
            ls.describe()
        );
    }

    // An 8-hex prefix names the first snapshot.
    let ls1 = hs.run_text(args!["ls", &first[..8]]);
    ls1.expect_ok();
    for name in ["gone.txt", "dir/gone2.txt", "keep.txt"] {
        assert!(
            ls1.stdout.contains(name),
            "`ls {}` does not list {name}\n{}",
            &first[..8],
            ls1.describe()
        );
    }
    assert!(!ls1.stdout.contains("added.txt"), "{}", ls1.describe());

    // ls with a path lists only that subtree.
    let ls_sub = hs.run_text(args!["ls", "latest", "newdir"]);
    ls_sub.expect_ok();
    assert!(
        ls_sub.stdout.contains("added2.txt"),
        "{}",
        ls_sub.describe()
    );
    assert!(!ls_sub.stdout.contains("keep.txt"), "{}", ls_sub.describe());

    let diff = hs.run_text(args!["diff", &first, "latest"]);
    diff.expect_ok();
    for name in [
        "modify.txt",
        "gone.txt",
        "gone2.txt",
        "added.txt",
        "added2.txt",
    ] {
        assert!(
            !lines_mentioning(&diff.stdout, name).is_empty(),
            "`diff` does not mention {name}\n{}",
            diff.describe()
        );
    }
    assert!(
        lines_mentioning(&diff.stdout, "keep.txt").is_empty(),
        "`diff` mentions the unchanged keep.txt\n{}",
        diff.describe()
    );

    // With --json, each change says what kind it is.
    let jdiff = hs.run(args!["diff", &first[..12], &second]);
    jdiff.expect_ok();
    let kind_of = |path: &str| -> Vec<String> {
        jdiff
            .json
            .iter()
            .filter(|v| v.get("path").and_then(Value::as_str) == Some(path))
            .filter_map(|v| v.get("change").and_then(Value::as_str).map(str::to_string))
            .collect()
    };
    for (path, want) in [
        ("modify.txt", "modified"),
        ("gone.txt", "removed"),
        ("dir/gone2.txt", "removed"),
        ("added.txt", "added"),
        ("newdir/added2.txt", "added"),
    ] {
        assert_eq!(
            kind_of(path),
            vec![want.to_string()],
            "`diff --json`: change for {path}\n{}",
            jdiff.describe()
        );
    }
    assert!(kind_of("keep.txt").is_empty(), "{}", jdiff.describe());
    drop(tmp);
}

// ---------------------------------------------------------------------------
// exit code 4: no store
// ---------------------------------------------------------------------------

#[test]
fn no_store_at_the_location_exits_4() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let hs = Homesync::new(tmp.path().join("no-store-here"));
    let run = hs.run(args!["snapshots"]);
    assert_eq!(
        run.code,
        4,
        "`snapshots` on a missing store should exit 4\n{}",
        run.describe()
    );
    let empty = tmp.path().join("empty-dir");
    mkdir(&empty);
    let hs = Homesync::new(&empty);
    let run = hs.run(args!["ls", "latest"]);
    assert_eq!(
        run.code,
        4,
        "`ls` on an empty directory should exit 4\n{}",
        run.describe()
    );
}

// ---------------------------------------------------------------------------
// the file-state cache is disposable
// ---------------------------------------------------------------------------

#[test]
fn unusable_cache_location_does_not_stop_a_backup() {
    // The file-state cache only saves reading; when its location cannot be
    // used (here XDG_CACHE_HOME is a regular file, so nothing can be created
    // below it), the backup must still succeed, reading every file.
    let (tmp, mut hs) = setup();
    let src = tmp.path().join("src");
    write_file(&src.join("a.txt"), b"alpha\n");
    write_file(&src.join("sub/b.txt"), b"bravo\n");
    let not_a_dir = tmp.path().join("cache-is-a-file");
    write_file(&not_a_dir, b"not a directory\n");
    hs.cache_home = not_a_dir;
    let run = hs.run(args!["backup", src]);
    assert_eq!(
        run.code,
        0,
        "backup failed because the file-state cache location is unusable\n{}",
        run.describe()
    );
    assert_eq!(run.summary_u64("files_read"), 2, "{}", run.describe());
    let dst = tmp.path().join("restored");
    hs.restore("latest", &dst, &[]).expect_ok();
    assert_eq!(fs::read(dst.join("sub/b.txt")).unwrap(), b"bravo\n");
}
