//! Restoring a hand-crafted hostile store: names that could escape the
//! target (`..`, `.`, `/`, NUL, empty), absurd lengths, duplicate names,
//! hardlinks that point out of the snapshot, symlinks out of the target
//! followed by entries that try to write through them. Over QUIC through
//! the real server and from the embedded store: each bad entry is refused
//! with an error naming it, the good entries are restored, the exit code
//! says so, and nothing appears outside the target.
//!
//! The store's own upload path refuses such trees (`Store::put_blob`
//! decodes every tree), so the hostile trees are written the way a
//! tampered store would hold them: packs written by hand and indexed.

mod common;

use common::server::*;
use common::*;
use homesync_protocol::{
    BlobEncoder, BlobKind, ChunkId, Node, NodeKind, Repository, Snapshot, SnapshotStats, Timestamp,
    Tree, TreeId,
};
use homesync_server::backend::{LocalDir, PackBackend};
use homesync_server::index::Index;
use homesync_server::pack::PackWriter;
use homesync_server::{OpenOptions, Store};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Builds snapshots in a store: chunks and sound trees through the store's
/// API, hostile trees as raw packs.
struct Crafter {
    store: Store,
    dir: PathBuf,
    now: i64,
}

impl Crafter {
    fn open(dir: &Path) -> Crafter {
        Crafter {
            store: Store::open(dir, OpenOptions::default()).unwrap(),
            dir: dir.to_path_buf(),
            now: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64,
        }
    }

    fn meta(&self, mut n: Node, mode: u32) -> Node {
        n.mode = mode;
        n.mtime = Timestamp {
            sec: self.now - 60,
            nsec: 0,
        };
        n
    }

    fn file(&self, name: &[u8], data: &[u8]) -> Node {
        let id = ChunkId::of(data);
        self.store
            .put_blob(
                id.into(),
                BlobKind::Chunk,
                &BlobEncoder::new(3).encode(BlobKind::Chunk, data),
            )
            .unwrap();
        let mut n = self.meta(Node::new(name.to_vec(), NodeKind::File), 0o644);
        n.size = data.len() as u64;
        n.chunks = vec![id];
        n
    }

    fn symlink(&self, name: &[u8], target: &[u8]) -> Node {
        let mut n = self.meta(Node::new(name.to_vec(), NodeKind::Symlink), 0o777);
        n.target = target.to_vec();
        n
    }

    /// A hardlink node: carries its own copy of the contents, as the
    /// backup writes them.
    fn hardlink(&self, name: &[u8], target: &[u8], data: &[u8]) -> Node {
        let mut n = self.file(name, data);
        n.kind = NodeKind::Hardlink;
        n.target = target.to_vec();
        n
    }

    fn dir_node(&self, name: &[u8], tree: TreeId) -> Node {
        let mut n = self.meta(Node::new(name.to_vec(), NodeKind::Dir), 0o755);
        n.subtree = Some(tree);
        n
    }

    /// A directory whose tree the store accepts (it decodes).
    fn dir(&self, name: &[u8], nodes: Vec<Node>) -> Node {
        let tree = Tree::new(nodes);
        let plain = tree.encode();
        let id = tree.id();
        self.store
            .put_blob(
                id.into(),
                BlobKind::Tree,
                &BlobEncoder::new(3).encode(BlobKind::Tree, &plain),
            )
            .unwrap();
        self.dir_node(name, id)
    }

    /// A directory whose tree holds `nodes` exactly as given (not sorted,
    /// not checked), in a pack of its own, indexed directly.
    fn raw_dir(&self, name: &[u8], nodes: Vec<Node>) -> Node {
        let tree = Tree { nodes };
        let plain = tree.encode();
        assert!(
            Tree::decode(&plain).is_err(),
            "{}: this tree is not hostile",
            String::from_utf8_lossy(name)
        );
        let id = tree.id();
        let mut pack = PackWriter::new();
        pack.add(
            id.into(),
            BlobKind::Tree,
            &BlobEncoder::new(3).encode(BlobKind::Tree, &plain),
        );
        let (pack_name, bytes, entries) = pack.finish();
        LocalDir::new(self.dir.join("packs"))
            .put(&pack_name, &bytes)
            .unwrap();
        Index::open(&self.dir.join("index.sqlite"), false)
            .unwrap()
            .add_pack(&pack_name, bytes.len() as u64, &entries)
            .unwrap();
        self.dir_node(name, id)
    }

    fn commit(&self, machine: &str, root: Vec<Node>) -> String {
        let root = self.dir(b"home", root);
        let snap = Snapshot {
            time: Timestamp {
                sec: self.now,
                nsec: 0,
            },
            machine: machine.into(),
            source: b"/home/alice".to_vec(),
            root,
            parent: None,
            tags: vec![],
            stats: SnapshotStats::default(),
        };
        self.store.commit_snapshot(&snap).unwrap().to_hex()
    }
}

const LONG: usize = 4096;

/// The hostile snapshot: every bad entry in a directory of its own (a tree
/// is refused as a whole at its first bad entry), good entries beside them.
fn hostile_snapshot(c: &Crafter, machine: &str, outside: &Path) -> String {
    let ok = |c: &Crafter| c.file(b"ok.txt", b"a good file beside a bad one\n");
    let bad = |c: &Crafter, dir: &[u8], bad: Node| c.raw_dir(dir, vec![ok(c), bad]);
    let payload = b"written through a hostile entry\n";
    let mut dup = vec![
        c.file(b"same", b"first of two\n"),
        c.file(b"same", b"second of two\n"),
    ];
    dup.insert(0, ok(c));
    let outside_b = outside.as_os_str().as_bytes();
    let long = vec![b'n'; LONG];
    let root = vec![
        // Hidden entries at the top go in the first phase, before the rest
        // is planned: the same checks apply there.
        c.dir(
            b".config",
            vec![
                c.file(b"settings", b"login\n"),
                c.symlink(b"esc", outside_b),
            ],
        ),
        bad(c, b".evil", c.file(b"..", payload)),
        c.file(b"good.txt", b"good\n"),
        c.dir(
            b"docs",
            vec![
                c.file(b"notes.txt", b"notes\n"),
                c.dir(b"deep", vec![c.file(b"deeper.txt", b"deeper\n")]),
            ],
        ),
        bad(c, b"bad-dotdot", c.file(b"..", payload)),
        bad(c, b"bad-dot", c.file(b".", payload)),
        bad(c, b"bad-slash", c.file(b"../../escaped", payload)),
        bad(c, b"bad-nul", c.file(b"a\0b", payload)),
        bad(c, b"bad-empty", c.file(b"", payload)),
        c.raw_dir(b"bad-dup", dup),
        bad(
            c,
            b"bad-dir-dotdot",
            c.dir(b"..", vec![c.file(b"escaped", payload)]),
        ),
        bad(c, b"bad-link-up", c.hardlink(b"h", b"../escaped", payload)),
        bad(
            c,
            b"bad-link-abs",
            c.hardlink(b"h", &[outside_b, b"/escaped"].concat(), payload),
        ),
        // Names the decoder lets through but no file system takes.
        c.dir(b"long", vec![ok(c), c.file(&long, payload)]),
        c.dir(
            b"long-dir",
            vec![ok(c), c.dir(&long, vec![c.file(b"escaped", payload)])],
        ),
        c.dir(b"nul-target", vec![ok(c), c.symlink(b"s", b"a\0b")]),
        // A size no chunk list can hold (and two of them would overflow
        // the sum of what the restore needs).
        c.dir(
            b"absurd-size",
            vec![ok(c), absurd(c, b"huge1"), absurd(c, b"huge2")],
        ),
        // Symlinks out of the target are data: restored as they are...
        c.symlink(b"esc", outside_b),
        c.symlink(b"up", b"../../.."),
        // ...and never followed: a hardlink whose first name lies behind
        // one gets its own copy of the contents.
        c.hardlink(b"through-esc", b"esc/escaped", payload),
        c.hardlink(b"through-up", b"up/escaped", payload),
        c.dir(
            b"sub",
            vec![
                c.symlink(b"esc", outside_b),
                c.hardlink(b"via", b"sub/esc/escaped", payload),
            ],
        ),
    ];
    c.commit(machine, root)
}

fn absurd(c: &Crafter, name: &[u8]) -> Node {
    let mut n = c.file(name, b"tiny");
    n.size = u64::MAX - 1;
    n
}

/// A second snapshot where the first one's symlinks are a directory and a
/// file, with something to write beneath the former.
fn replacing_snapshot(c: &Crafter, machine: &str) -> String {
    let payload = b"written through a symlink left by an earlier restore\n";
    c.commit(
        machine,
        vec![
            c.file(b"good.txt", b"good\n"),
            c.dir(b"esc", vec![c.file(b"escaped", payload)]),
            c.file(b"up", payload),
            c.dir(
                b"sub",
                vec![c.dir(b"esc", vec![c.file(b"escaped", payload)])],
            ),
        ],
    )
}

/// Names (recursively, not following symlinks) under `dir` with their
/// kind and size: what "nothing changed here" is checked against.
fn listing(dir: &Path) -> BTreeMap<PathBuf, String> {
    walk(dir)
        .into_iter()
        .map(|(p, m)| {
            let t = m.file_type();
            (p, format!("{t:?} {} {}", m.len(), m.ino()))
        })
        .collect()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The world outside the target: a sentinel directory (which the hostile
/// entries aim at) and the test's temporary directory around everything.
struct Outside {
    sentinel: PathBuf,
    before: BTreeMap<PathBuf, String>,
    top: PathBuf,
    top_before: Vec<PathBuf>,
}

impl Outside {
    fn new(top: &Path) -> Outside {
        let sentinel = top.join("outside");
        write_file(&sentinel.join("keep"), b"keep\n");
        Outside {
            before: listing(&sentinel),
            sentinel,
            top: top.to_path_buf(),
            top_before: vec![],
        }
    }

    fn snapshot_top(&mut self) {
        self.top_before = top_names(&self.top);
    }

    fn assert_untouched(&self, what: &str) {
        assert_eq!(
            listing(&self.sentinel),
            self.before,
            "{what}: the directory outside the target changed"
        );
        assert_eq!(read(&self.sentinel.join("keep")), "keep\n");
        assert_eq!(
            top_names(&self.top),
            self.top_before,
            "{what}: something appeared beside the target"
        );
        for p in ["/escaped", "/tmp/escaped"] {
            assert!(!Path::new(p).exists(), "{what}: {p} was created");
        }
    }
}

fn top_names(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// The error messages of `run`, by path relative to `target`.
fn errors_by_path(run: &Run, target: &Path) -> BTreeMap<String, String> {
    run.errors()
        .iter()
        .map(|e| {
            let p = e["path"].as_str().unwrap_or_default();
            let rel = Path::new(p)
                .strip_prefix(target)
                .map(|r| r.to_string_lossy().into_owned())
                .unwrap_or_else(|_| p.to_string());
            (rel, e["error"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

fn check_hostile_restore(run: &Run, target: &Path, outside: &Outside, what: &str) {
    let d = run.describe();
    // Refused entries make the store damaged as far as the client can
    // tell: exit 5, like any other damage.
    assert_eq!(run.code, 5, "{what}: exit code\n{d}");
    let errors = errors_by_path(run, target);
    let expect = [
        (".evil", "\"..\""),
        ("bad-dotdot", "\"..\""),
        ("bad-dot", "\".\""),
        ("bad-slash", "\"../../escaped\""),
        ("bad-nul", "\"a\\0b\""),
        ("bad-empty", "\"\""),
        ("bad-dup", "\"same\""),
        ("bad-dir-dotdot", "\"..\""),
        ("bad-link-up", "\"h\""),
        ("bad-link-abs", "\"h\""),
    ];
    for (dir, name) in expect {
        let e = errors
            .get(dir)
            .unwrap_or_else(|| panic!("{what}: no error for {dir}: {errors:#?}\n{d}"));
        assert!(
            e.contains(name),
            "{what}: the error for {dir} does not name the entry {name}: {e}"
        );
        // The directory is left empty: nothing of a refused tree is
        // written, not even its good entries.
        let p = target.join(dir);
        assert!(
            !p.exists() || std::fs::read_dir(&p).unwrap().next().is_none(),
            "{what}: {dir} has entries"
        );
    }
    for (dir, why) in [
        ("bad-link-up", "hardlink target"),
        ("bad-link-abs", "hardlink target"),
        ("bad-dup", "order"),
    ] {
        assert!(
            errors[dir].contains(why),
            "{what}: the error for {dir} does not say why ({why}): {}",
            errors[dir]
        );
    }
    let long = "n".repeat(LONG);
    for p in [format!("long/{long}"), format!("long-dir/{long}")] {
        let e = errors
            .get(&p)
            .unwrap_or_else(|| panic!("{what}: no error for long/{{4096 x n}}: {errors:#?}"));
        assert!(e.contains("too long"), "{what}: {e}");
    }
    assert!(
        errors["nul-target/s"].contains("NUL"),
        "{what}: {}",
        errors["nul-target/s"]
    );
    for f in ["absurd-size/huge1", "absurd-size/huge2"] {
        assert!(
            errors[f].contains("bytes of contents in 1 chunks"),
            "{what}: {}",
            errors[f]
        );
    }
    assert_eq!(
        errors.len(),
        expect.len() + 5,
        "{what}: unexpected errors: {errors:#?}"
    );

    // The good entries are all there.
    assert_eq!(read(&target.join("good.txt")), "good\n");
    assert_eq!(read(&target.join(".config/settings")), "login\n");
    assert_eq!(read(&target.join("docs/notes.txt")), "notes\n");
    assert_eq!(read(&target.join("docs/deep/deeper.txt")), "deeper\n");
    for dir in ["long", "long-dir", "nul-target", "absurd-size"] {
        assert_eq!(
            read(&target.join(dir).join("ok.txt")),
            "a good file beside a bad one\n",
            "{what}: {dir}/ok.txt"
        );
    }
    // Symlinks are restored as symlinks with their targets as recorded.
    for (link, to) in [
        ("esc", outside.sentinel.clone()),
        (".config/esc", outside.sentinel.clone()),
        ("up", PathBuf::from("../../..")),
        ("sub/esc", outside.sentinel.clone()),
    ] {
        let p = target.join(link);
        assert!(
            p.symlink_metadata().unwrap().file_type().is_symlink(),
            "{what}: {link} is not a symlink"
        );
        assert_eq!(std::fs::read_link(&p).unwrap(), to, "{what}: {link}");
    }
    // A hardlink behind a symlink became a plain file with its contents.
    for f in ["through-esc", "through-up", "sub/via"] {
        let m = target.join(f).symlink_metadata().unwrap();
        assert!(m.file_type().is_file(), "{what}: {f} is {m:?}");
        assert_eq!(
            read(&target.join(f)),
            "written through a hostile entry\n",
            "{what}: {f}"
        );
    }
    // No temporary file was left behind.
    for p in walk(target).keys() {
        assert!(
            !p.to_string_lossy().contains(".homesync-"),
            "{what}: leftover {}",
            p.display()
        );
    }
    outside.assert_untouched(what);
}

#[test]
fn hostile_trees_are_refused_over_quic_and_from_the_embedded_store() {
    let tmp = tempfile::tempdir().unwrap();
    let top = tmp.path().join("world");
    std::fs::create_dir(&top).unwrap();
    let mut outside = Outside::new(&top);
    let server = Server::start(tmp.path());
    let client = server.client(&server.add_machine("laptop", false), tmp.path());
    let (hostile, replacing) = {
        let c = Crafter::open(&server.store.repo);
        (
            hostile_snapshot(&c, "laptop", &outside.sentinel),
            replacing_snapshot(&c, "laptop"),
        )
    };
    let restore_quic = |id: &str, target: &Path| {
        client.run(&[
            OsStr::new("restore"),
            OsStr::new(id),
            OsStr::new("--target"),
            target.as_os_str(),
        ])
    };

    // Over QUIC.
    let quic = top.join("quic");
    outside.snapshot_top();
    outside.top_before.push(quic.clone());
    outside.top_before.sort();
    let run = restore_quic(&hostile, &quic);
    check_hostile_restore(&run, &quic, &outside, "QUIC");

    // From the embedded store.
    let embedded = top.join("embedded");
    outside.top_before.push(embedded.clone());
    outside.top_before.sort();
    let run = server.store.restore(&hostile, &embedded, &[]);
    check_hostile_restore(&run, &embedded, &outside, "embedded");

    // The same target again: a second run refuses the same entries and
    // changes nothing else (the restored symlinks stay unfollowed).
    let again = restore_quic(&hostile, &quic);
    check_hostile_restore(&again, &quic, &outside, "QUIC, second run");

    // Then a snapshot where those symlinks are a directory and a file:
    // each symlink is replaced, never written through.
    for (what, target, run) in [
        ("QUIC", &quic, restore_quic(&replacing, &quic)),
        (
            "embedded",
            &embedded,
            server.store.restore(&replacing, &embedded, &[]),
        ),
    ] {
        run.expect_ok();
        for d in ["esc", "sub/esc"] {
            let m = target.join(d).symlink_metadata().unwrap();
            assert!(m.is_dir(), "{what}: {d} is not a directory: {m:?}");
            assert!(read(&target.join(d).join("escaped")).contains("earlier restore"));
        }
        let m = target.join("up").symlink_metadata().unwrap();
        assert!(m.is_file(), "{what}: up is {m:?}");
        outside.assert_untouched(&format!("{what}, replacing snapshot"));
    }
}

/// A target where someone planted symlinks (out of the target, and to a
/// file outside) where the snapshot has a directory and a file.
#[test]
fn symlinks_planted_in_the_target_are_replaced_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let top = tmp.path().join("world");
    std::fs::create_dir(&top).unwrap();
    let mut outside = Outside::new(&top);
    let hs = Homesync::new(tmp.path().join("store"));
    hs.init();
    let id = {
        let c = Crafter::open(&hs.repo);
        c.commit(
            "laptop",
            vec![
                c.dir(b"docs", vec![c.file(b"notes.txt", b"notes\n")]),
                c.file(b"keep", b"replaced\n"),
            ],
        )
    };
    let target = top.join("home");
    std::fs::create_dir(&target).unwrap();
    std::os::unix::fs::symlink(&outside.sentinel, target.join("docs")).unwrap();
    std::os::unix::fs::symlink(outside.sentinel.join("keep"), target.join("keep")).unwrap();
    outside.snapshot_top();
    hs.restore(&id, &target, &[]).expect_ok();
    assert!(target.join("docs").symlink_metadata().unwrap().is_dir());
    assert_eq!(read(&target.join("docs/notes.txt")), "notes\n");
    assert!(target.join("keep").symlink_metadata().unwrap().is_file());
    assert_eq!(read(&target.join("keep")), "replaced\n");
    outside.assert_untouched("planted symlinks");
}

/// Device nodes are data: restoring as root creates them, inside the
/// target, with the recorded numbers.
#[test]
fn device_nodes_are_created_inside_the_target_as_root() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let hs = Homesync::new(tmp.path().join("store"));
    hs.init();
    let id = {
        let c = Crafter::open(&hs.repo);
        let mut null = c.meta(Node::new(b"null".to_vec(), NodeKind::CharDevice), 0o600);
        null.rdev = 0x103; // 1:3, like /dev/null
        c.commit("laptop", vec![null])
    };
    let target = tmp.path().join("home");
    hs.restore(&id, &target, &[]).expect_ok();
    let m = target.join("null").symlink_metadata().unwrap();
    assert!(m.file_type().is_char_device(), "{m:?}");
    assert_eq!(m.rdev(), 0x103);
    assert_eq!(m.mode() & 0o7777, 0o600);
}

/// Trees are content-addressed, so one tree can be the subtree of many
/// directories (a legitimate copy of a project is exactly that). Forty
/// small trees, each naming the one below twice, make 2^40 entries: the
/// restore must stop while planning, not exhaust memory or the disk.
#[test]
fn a_snapshot_of_two_to_the_forty_entries_stops_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let hs = Homesync::new(tmp.path().join("store"));
    hs.init();
    let id = {
        let c = Crafter::open(&hs.repo);
        let mut nodes = vec![c.file(b"f", b"x")];
        for _ in 0..40 {
            let a = c.dir(b"a", nodes);
            let mut b = a.clone();
            b.name = b"b".to_vec();
            nodes = vec![a, b];
        }
        c.commit("laptop", nodes)
    };
    // A file system with 20,000 inodes.
    let small = SmallFs::mount("64m,nr_inodes=20000");
    let target = small.path().join("home");
    let started = std::time::Instant::now();
    let run = hs.restore(&id, &target, &[]);
    assert_eq!(run.code, 1, "{}", run.describe());
    assert!(
        run.stdout.contains("inodes"),
        "no word of inodes: {}",
        run.describe()
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    // Nothing but the two top-level directories, which the first phase
    // makes (looking for login files) before the whole plan is known.
    let written: Vec<_> = walk(&target).into_iter().collect();
    assert!(
        written.len() <= 2 && written.iter().all(|(_, m)| m.is_dir()),
        "entries were written: {:?}",
        written.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
}
