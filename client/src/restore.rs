//! Restore: snapshot -> plan (tree walk) -> directories -> file contents in
//! parallel (unnamed until complete: see [`crate::pending_file`]) -> links
//! and special files -> directory metadata last, deepest first.
//!
//! Ordered for use. First the login files (small files below the hidden
//! entries at the top of the snapshot and of each home: `.bashrc`,
//! `.config/...`), found by walking only those trees, within a budget of
//! 1 % of the files and bytes; then the ready point (`on_ready`: the
//! installer may let the user log in), long before the whole snapshot is
//! walked; then everything else, recently modified files first, large old
//! media last. (When the snapshot's byte count does not fit the target, or
//! only some paths are restored, the whole plan comes first and the ready
//! point follows the login files found in it.)
//!
//! Bounded: at most [`PLAN_WINDOW`] entries are planned at a time; a larger
//! snapshot is restored a window of subtrees at a time, depth first (see
//! [`Restorer::restore_subtree`]), so memory does not grow with the home.
//!
//! Resumable: a file already at its place with the snapshot's size, mtime
//! and mode was completed by an earlier run (files get their names only
//! after contents and metadata), so it is not fetched again; temporary
//! files an interrupted run left (where unnamed files are not available)
//! are removed.
//!
//! Safety: nothing read from the store is trusted. Names were validated
//! when trees were decoded; every directory is opened with `openat2` and
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, and every final component is
//! created or changed with `*at` calls that do not follow symlinks, so a
//! symlink inside the target (planted or restored) is never followed.

use crate::browse::{self, join, split_path};
use crate::error::{ClientError, EntryError};
use crate::owners::Owners;
use crate::pending_file::{self, PendingFile};
use crate::progress::Progress;
use homesync_protocol::blob::MAX_PLAIN_LEN;
use homesync_protocol::{BlobKind, ChunkId, Node, NodeKind, Repository, Snapshot, StoreError};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, XattrFlags};
use rustix::process::{Gid, Uid};
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// What is restored when the first phase ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ready {
    /// Files (and other entries) restored or found in place so far.
    pub files: u64,
    pub bytes: u64,
    /// Files and bytes still to come: when the ready point comes before
    /// the whole snapshot is walked, from the snapshot's own counts (whose
    /// bytes include the holes of sparse files).
    pub files_left: u64,
    pub bytes_left: u64,
}

/// See [`RestoreOptions::on_ready`].
pub type ReadyHook = Box<dyn Fn(&Ready) + Send + Sync>;

pub struct RestoreOptions {
    pub target: PathBuf,
    /// Only these paths (relative to the snapshot root) and what is below
    /// them; empty means everything.
    pub paths: Vec<Vec<u8>>,
    /// Keep recorded uids/gids instead of mapping owner names to local ids.
    pub numeric_ids: bool,
    /// Called once, when the login files (and the directories on their
    /// way) are in place and, as root, those directories have their owners:
    /// the user may log in while the rest arrives.
    pub on_ready: Option<ReadyHook>,
    /// At most this many entries are planned at once (default
    /// [`PLAN_WINDOW`]): a larger snapshot is restored a window of subtrees
    /// at a time, so memory does not grow with the home.
    pub plan_window: Option<u64>,
}

#[derive(Debug, Default)]
pub struct RestoreReport {
    pub files: u64,
    pub bytes: u64,
    /// Files already in place from an earlier run, not fetched again.
    pub skipped: u64,
    pub skipped_bytes: u64,
    pub errors: Vec<EntryError>,
    pub warnings: Vec<String>,
}

/// Entries planned at once by default (see [`RestoreOptions::plan_window`]):
/// about 60 MB of plan. A home with fewer is restored in one window, in
/// the order of use over all of it; a larger one window by window, each
/// in that order.
pub const PLAN_WINDOW: u64 = 100_000;

/// Files up to this size may be login files (see [`login_file`]).
const SMALL: u64 = 1 << 20;
/// Files modified this long before the snapshot count as recent...
const RECENT_SECS: i64 = 30 * 86_400;
/// ...when no larger than this.
const RECENT_MAX: u64 = 64 << 20;
/// The first phase holds at most 1/FIRST_SHARE of the files and of the
/// bytes to restore, so that it ends after a small part of the restore...
const FIRST_SHARE: u64 = 100;
/// ...but it may always hold this many files and bytes.
const FIRST_MIN_FILES: u64 = 200;
const FIRST_MIN_BYTES: u64 = 16 << 20;

/// Whether a file is one a login reads: a small file below a hidden entry
/// at the top of the snapshot or one level down (`.bashrc`, `.config/...`
/// of a home, or of each home in a snapshot of `/home`), not in a cache or
/// the trash.
fn login_file(rel: &[u8], node: &Node) -> bool {
    let hidden = |c: &[u8]| c.first() == Some(&b'.');
    let mut comps = rel.split(|&b| b == b'/');
    let top = comps.next().is_some_and(hidden) || comps.next().is_some_and(hidden);
    top && node.data_len() <= SMALL
        && !rel
            .split(|&b| b == b'/')
            .any(|c| c == b".cache" || c == b"Trash")
}

/// Whether a file was modified in the [`RECENT_SECS`] before the snapshot
/// (not after it: a clock far off says nothing about use).
fn recent(node: &Node, snapshot_time: i64) -> bool {
    node.data_len() <= RECENT_MAX
        && node.mtime.sec >= snapshot_time - RECENT_SECS
        && node.mtime.sec <= snapshot_time + 86_400
}

/// How many files and bytes the first phase may hold, of `files` and
/// `bytes` in all.
fn first_budget(files: u64, bytes: u64) -> (u64, u64) {
    (
        (files / FIRST_SHARE).max(FIRST_MIN_FILES),
        (bytes / FIRST_SHARE).max(FIRST_MIN_BYTES),
    )
}

/// Splits the files to restore into the first phase (login files, in path
/// order, within [`first_budget`]) and the rest, ordered for use: recent
/// files first, then the others, each most recently modified first (large
/// old media last).
fn order_for_use(todo: Vec<&Item>, snapshot_time: i64) -> (Vec<&Item>, Vec<&Item>) {
    let total = todo
        .iter()
        .fold(0u64, |n, it| n.saturating_add(it.node.data_len()));
    let (max_files, max_bytes) = first_budget(todo.len() as u64, total);
    let (mut files, mut bytes) = (0u64, 0u64);
    let (first, mut rest): (Vec<&Item>, Vec<&Item>) = todo.into_iter().partition(|it| {
        let len = it.node.data_len();
        let fits = files < max_files && bytes.saturating_add(len) <= max_bytes;
        if fits && login_file(&it.rel, &it.node) {
            files += 1;
            bytes += len;
            true
        } else {
            false
        }
    });
    rest.sort_by_key(|it| (!recent(&it.node, snapshot_time), -it.node.mtime.sec));
    (first, rest)
}

/// What the first phase did when it ran before the full plan.
#[derive(Default)]
struct Early {
    /// Entries restored, found in place or failed: not to be done again.
    done: HashSet<Vec<u8>>,
    new_dirs: HashSet<Vec<u8>>,
    bad_dirs: Vec<Vec<u8>>,
    skipped: u64,
    skipped_bytes: u64,
}

struct Item {
    rel: Vec<u8>,
    node: Node,
}

/// What [`Restorer::restore_items`] is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Window {
    /// Everything to restore.
    Whole,
    /// One subtree, whole.
    Subtree,
    /// A subtree's root and its entries other than directories: its
    /// subdirectories are windows of their own, so its own metadata waits.
    Shell,
}

/// What every window of one restore shares.
struct Run<'a> {
    early: &'a Early,
    target_is_new: bool,
    is_root: bool,
    /// The early first phase ran (see [`restore`]).
    streamed: bool,
    snapshot_time: i64,
    target: &'a Path,
    free: &'a dyn Fn() -> u64,
    ready: &'a dyn Fn(u64, u64, u64, u64),
    t0: std::time::Instant,
}

struct Restorer<'a> {
    repo: &'a dyn Repository,
    root: OwnedFd,
    target: PathBuf,
    owners: Option<Owners>,
    numeric_ids: bool,
    progress: &'a Progress,
    errors: Mutex<Vec<EntryError>>,
    files: AtomicU64,
    bytes: AtomicU64,
    /// Chunks several files of this restore use: fetched once, kept until
    /// their last user has them (see [`Shared`]).
    shared: Mutex<Shared>,
    /// Signalled when a shared chunk's fetch ends.
    fetched: std::sync::Condvar,
}

/// Chunks used more than once in a restore, with how many uses are left
/// and, once fetched, their bytes (within [`SHARED_BUDGET`]).
#[derive(Default)]
struct Shared {
    uses: std::collections::HashMap<ChunkId, (u32, SharedChunk)>,
    bytes: usize,
}

#[derive(Clone, Default)]
enum SharedChunk {
    #[default]
    Absent,
    /// A worker is fetching it: the others wait for it.
    Fetching,
    Here(std::sync::Arc<Vec<u8>>),
}

/// What a worker that needs a chunk is to do (see [`claim`]).
enum Claim {
    /// Used once (or no longer kept): just fetch it.
    Unshared,
    /// Another user fetched it: here are its bytes.
    Here(Vec<u8>),
    /// Another worker is fetching it: wait for it.
    Wait,
    /// Shared, and this worker fetches it for all: publish it afterwards.
    Mine,
}

/// The first step of getting chunk `id`: a kept copy is taken (the last
/// user's take frees it), an absent shared chunk is marked as being
/// fetched by the caller.
fn claim(sh: &mut Shared, id: ChunkId) -> Claim {
    let Shared { uses, bytes } = sh;
    let Some((left, state)) = uses.get_mut(&id) else {
        return Claim::Unshared;
    };
    match state {
        SharedChunk::Here(data) => {
            let data = data.to_vec();
            *left = left.saturating_sub(1);
            if *left == 0 {
                *bytes -= data.len();
                uses.remove(&id);
            }
            Claim::Here(data)
        }
        SharedChunk::Fetching => Claim::Wait,
        SharedChunk::Absent => {
            *state = SharedChunk::Fetching;
            Claim::Mine
        }
    }
}

/// Bytes of shared chunks kept at most; beyond it they are fetched again.
const SHARED_BUDGET: usize = 256 << 20;

/// Workers restoring files of one chunk (most files), a group at a time:
/// a group's chunks come in one round trip to a server (one `GetBatch`
/// stream), so a few workers keep the link and the disk busy...
const SMALL_WORKERS: usize = 8;
/// ...each group holding up to this many files...
const GROUP_FILES: usize = 64;
/// ...and this many bytes (but always at least one file). A stream per
/// small file cost both ends more CPU than the file itself (a QUIC stream,
/// a task and a thread hand-off each, a credential check and an index
/// lookup on the server).
const GROUP_BYTES: u64 = 2 << 20;
/// Files of several chunks, each fetching up to [`FETCH_WINDOW`] chunks at
/// once (one `get_blobs` call). Together at most 8 + 4 requests, within
/// the 32 the server allows on one connection. Memory: at most 8 groups
/// (each up to 2 MiB plus a file of up to 4 MiB) and 4 x 4 chunks of at
/// most 4 MiB, plus the shared chunks ([`SHARED_BUDGET`]).
const LARGE_WORKERS: usize = 4;
const FETCH_WINDOW: usize = 4;
/// Tasks fetching trees at once while planning...
const TREE_FETCHERS: usize = 32;
/// ...each up to this many trees in one call.
const TREE_BATCH: usize = 64;

/// Consecutive files of one chunk in groups of up to [`GROUP_FILES`]
/// files and [`GROUP_BYTES`] bytes, in the order given.
fn small_groups<'i, 'a>(small: &'i [&'a Item]) -> Vec<&'i [&'a Item]> {
    let mut groups = Vec::new();
    let mut rest = small;
    while !rest.is_empty() {
        let mut bytes = 0u64;
        let n = rest
            .iter()
            .take(GROUP_FILES)
            .position(|it| {
                bytes = bytes.saturating_add(it.node.data_len());
                bytes > GROUP_BYTES
            })
            .unwrap_or(rest.len().min(GROUP_FILES))
            .max(1);
        let (group, tail) = rest.split_at(n);
        groups.push(group);
        rest = tail;
    }
    groups
}

/// Whether, restoring window by window (see [`Restorer::restore_subtree`]),
/// the entry at `path` was restored before the window rooted at `root`:
/// windows go depth first, in name order, each split directory's own
/// entries before its subdirectories. So it was if it sits directly in a
/// directory above `root`, or below a sibling branch that sorts first.
fn restored_before(path: &[u8], root: &[u8]) -> bool {
    let mut p = path
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .peekable();
    let mut r = root.split(|&b| b == b'/').filter(|c| !c.is_empty());
    loop {
        match (p.next(), r.next()) {
            (Some(a), Some(b)) if a == b => continue,
            // Directly in a directory above the window (its shell came first).
            (Some(_), Some(_)) if p.peek().is_none() => return true,
            (Some(a), Some(b)) => return a < b,
            // Inside the window, or the window's root itself.
            _ => return false,
        }
    }
}

fn split_parent(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (b"", rel),
    }
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

fn times(node: &Node) -> Timestamps {
    let t = Timespec {
        tv_sec: node.mtime.sec,
        tv_nsec: node.mtime.nsec as _,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Why one entry failed; `corrupt` marks damage in the store.
#[derive(Debug)]
struct Fail {
    msg: String,
    corrupt: bool,
}

impl From<std::io::Error> for Fail {
    fn from(e: std::io::Error) -> Self {
        Fail {
            msg: e.to_string(),
            corrupt: false,
        }
    }
}

impl From<rustix::io::Errno> for Fail {
    fn from(e: rustix::io::Errno) -> Self {
        std::io::Error::from(e).into()
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail {
            corrupt: e.is_corruption(),
            msg: e.to_string(),
        }
    }
}

/// Owner, xattrs, mode and times of a FIFO, socket or device just created
/// as `name` in `dir`. It is opened with `O_PATH | O_NOFOLLOW` and must
/// still be of its kind; everything is then set through that descriptor
/// (`chmod` has no no-follow form, so through its `/proc/self/fd` link,
/// which leads to the opened inode itself). Someone who can write in the
/// directory (its owner, on a resumed restore) and swaps the entry for a
/// symlink to `/etc/shadow` meanwhile gets an error, not a changed
/// `/etc/shadow`.
fn special_meta(
    dir: &OwnedFd,
    name: &[u8],
    node: &Node,
    owner: Option<(Uid, Gid)>,
) -> Result<(), Fail> {
    let want = match node.kind {
        NodeKind::Fifo => FileType::Fifo,
        NodeKind::Socket => FileType::Socket,
        NodeKind::CharDevice => FileType::CharacterDevice,
        NodeKind::BlockDevice => FileType::BlockDevice,
        k => unreachable!("{} is not a special file", k.name()),
    };
    let fd = rustix::fs::openat(
        dir,
        os(name),
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let found = FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode);
    if found != want {
        return Err(Fail {
            msg: format!(
                "replaced by a {found:?} while it was restored: its owner, mode and times are not set"
            ),
            corrupt: false,
        });
    }
    if let Some((u, g)) = owner {
        rustix::fs::chownat(&fd, "", Some(u), Some(g), AtFlags::EMPTY_PATH)?;
    }
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    for (k, v) in &node.xattrs {
        rustix::fs::setxattr(&link, os(k), v, XattrFlags::empty())?;
    }
    rustix::fs::chmod(&link, Mode::from_raw_mode(node.mode))?;
    rustix::fs::utimensat(rustix::fs::CWD, &link, &times(node), AtFlags::empty())?;
    Ok(())
}

/// Whether `path` is one of `filters`, below one, or above one.
fn wanted(path: &[u8], filters: &[Vec<Vec<u8>>]) -> (bool, bool) {
    if filters.is_empty() {
        return (true, false);
    }
    let comps: Vec<&[u8]> = if path.is_empty() {
        vec![]
    } else {
        path.split(|&b| b == b'/').collect()
    };
    let inside = filters
        .iter()
        .any(|f| f.len() <= comps.len() && f.iter().zip(&comps).all(|(a, b)| a == b));
    let above = filters
        .iter()
        .any(|f| f.len() > comps.len() && comps.iter().zip(f).all(|(a, b)| *a == b.as_slice()));
    (inside, above)
}

impl Restorer<'_> {
    fn fail(&self, rel: &[u8], f: Fail) {
        self.progress.errors.fetch_add(1, Relaxed);
        self.errors.lock().expect("errors").push(EntryError {
            path: self.target.join(os(rel)),
            error: f.msg,
            corruption: f.corrupt,
        });
    }

    /// Opens directory `rel` of the target without following any symlink.
    fn open_dir(&self, rel: &[u8]) -> Result<OwnedFd, Fail> {
        let path = if rel.is_empty() { &b"."[..] } else { rel };
        Ok(rustix::fs::openat2(
            &self.root,
            os(path),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
        )?)
    }

    fn owner(&self, node: &Node) -> Option<(Uid, Gid)> {
        let o = self.owners.as_ref()?;
        let (uid, gid) = if self.numeric_ids {
            (node.uid, node.gid)
        } else {
            (
                o.map_uid(node.user.as_deref(), node.uid),
                o.map_gid(node.group.as_deref(), node.gid),
            )
        };
        Some((Uid::from_raw(uid), Gid::from_raw(gid)))
    }

    /// Owner, xattrs, mode, times: in that order, because chown clears
    /// setuid bits and an ACL xattr rewrites group mode bits.
    fn apply_meta_fd<F: AsFd>(&self, fd: F, node: &Node) -> Result<(), Fail> {
        if let Some((u, g)) = self.owner(node) {
            rustix::fs::fchown(&fd, Some(u), Some(g))?;
        }
        for (k, v) in &node.xattrs {
            rustix::fs::fsetxattr(&fd, os(k), v, XattrFlags::empty()).map_err(|e| {
                Fail::from(std::io::Error::other(format!(
                    "setting xattr {}: {e}",
                    String::from_utf8_lossy(k)
                )))
            })?;
        }
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(node.mode))?;
        rustix::fs::futimens(&fd, &times(node))?;
        Ok(())
    }

    /// The same for a symlink, addressed as `name` in `dir` without
    /// following it (its mode is not set: Linux symlinks have none).
    fn apply_meta_symlink(&self, dir: &OwnedFd, name: &[u8], node: &Node) -> Result<(), Fail> {
        if let Some((u, g)) = self.owner(node) {
            rustix::fs::chownat(dir, os(name), Some(u), Some(g), AtFlags::SYMLINK_NOFOLLOW)?;
        }
        if !node.xattrs.is_empty() {
            // l*xattr on /proc/self/fd/N/name: the directory is pinned by fd
            // and the final component is not followed.
            let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
            p.extend_from_slice(name);
            for (k, v) in &node.xattrs {
                rustix::fs::lsetxattr(os(&p), os(k), v, XattrFlags::empty())?;
            }
        }
        rustix::fs::utimensat(dir, os(name), &times(node), AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(())
    }

    /// Creates directory `rel` (its parent exists); true when it was not
    /// there before.
    fn make_dir(&self, rel: &[u8]) -> Result<bool, Fail> {
        let (parent, name) = split_parent(rel);
        let dir = self.open_dir(parent)?;
        match rustix::fs::mkdirat(&dir, os(name), Mode::from_raw_mode(0o700)) {
            Err(rustix::io::Errno::EXIST) => {
                let st = rustix::fs::statat(&dir, os(name), AtFlags::SYMLINK_NOFOLLOW)?;
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    return Ok(false);
                }
                // A symlink or file where the snapshot has a directory:
                // replace it, never follow it.
                rustix::fs::unlinkat(&dir, os(name), AtFlags::empty())?;
                rustix::fs::mkdirat(&dir, os(name), Mode::from_raw_mode(0o700))?;
                Ok(true)
            }
            r => r.map(|()| true).map_err(Fail::from),
        }
    }

    /// A chunk's bytes. Every `Repository` verifies what it returns against
    /// the id (the embedded store re-hashes on read; the remote one
    /// re-hashes what arrives), so hashing again here would only cost time.
    ///
    /// A chunk several files use is fetched once and handed to each.
    fn fetch(&self, id: ChunkId) -> Result<Vec<u8>, Fail> {
        let mut sh = self.shared.lock().expect("shared chunks");
        loop {
            match claim(&mut sh, id) {
                Claim::Unshared => {
                    drop(sh);
                    return Ok(self.repo.get_blob(id.into(), BlobKind::Chunk)?);
                }
                Claim::Here(data) => return Ok(data),
                Claim::Wait => sh = self.fetched.wait(sh).expect("shared chunks"),
                Claim::Mine => {
                    drop(sh);
                    let got = self.repo.get_blob(id.into(), BlobKind::Chunk);
                    self.publish(id, got.as_ref().ok());
                    return Ok(got?);
                }
            }
        }
    }

    /// The bytes of several chunks, in order, with one `get_blobs` call (one
    /// round trip to a server) for all that are not already here or being
    /// fetched by another worker; those are waited for afterwards, once
    /// this call's own shared chunks are handed over (so two workers never
    /// wait for each other).
    fn fetch_many(&self, ids: &[ChunkId]) -> Vec<Result<Vec<u8>, Fail>> {
        let mut out: Vec<Option<Result<Vec<u8>, Fail>>> = ids.iter().map(|_| None).collect();
        // Indices to fetch now (with whether others wait for it), and later.
        let mut ask: Vec<(usize, bool)> = Vec::new();
        let mut later = Vec::new();
        {
            let mut sh = self.shared.lock().expect("shared chunks");
            for (i, &id) in ids.iter().enumerate() {
                match claim(&mut sh, id) {
                    Claim::Unshared => ask.push((i, false)),
                    Claim::Mine => ask.push((i, true)),
                    Claim::Here(data) => out[i] = Some(Ok(data)),
                    Claim::Wait => later.push(i),
                }
            }
        }
        let want: Vec<_> = ask.iter().map(|&(i, _)| ids[i].into()).collect();
        match self.repo.get_blobs(&want, BlobKind::Chunk) {
            Ok(list) => {
                for (&(i, shared), got) in ask.iter().zip(list) {
                    if shared {
                        self.publish(ids[i], got.as_ref().ok());
                    }
                    out[i] = Some(got.map_err(Fail::from));
                }
            }
            Err(e) => {
                for &(i, shared) in &ask {
                    if shared {
                        self.publish(ids[i], None);
                    }
                    out[i] = Some(Err(Fail {
                        msg: e.to_string(),
                        corrupt: e.is_corruption(),
                    }));
                }
            }
        }
        for i in later {
            out[i] = Some(self.fetch(ids[i]));
        }
        out.into_iter()
            .map(|o| o.expect("every chunk is answered"))
            .collect()
    }

    /// Ends this worker's fetch of shared chunk `id` (`got`: its bytes, or
    /// `None` when the fetch failed): kept for its other users within
    /// [`SHARED_BUDGET`], and they are woken.
    fn publish(&self, id: ChunkId, got: Option<&Vec<u8>>) {
        let mut sh = self.shared.lock().expect("shared chunks");
        let Shared { uses, bytes } = &mut *sh;
        if let Some((left, state)) = uses.get_mut(&id) {
            *left = left.saturating_sub(1);
            *state = SharedChunk::Absent;
            if *left == 0 {
                uses.remove(&id);
            } else if let Some(data) = got
                && *bytes + data.len() <= SHARED_BUDGET
            {
                *bytes += data.len();
                *state = SharedChunk::Here(std::sync::Arc::new(data.clone()));
            } else if got.is_some() {
                // Over the budget: later users fetch it themselves.
                uses.remove(&id);
            }
        }
        self.fetched.notify_all();
    }

    /// Writes the file's contents; `first`, when given, is its first
    /// chunk, already fetched (with its group, see `restore_contents`).
    fn write_contents(
        &self,
        file: &File,
        node: &Node,
        mut first: Option<Result<Vec<u8>, Fail>>,
    ) -> Result<u64, Fail> {
        let mut written = 0u64;
        if node.is_dense() {
            // A few chunks of a large file are fetched at once (one
            // `get_blobs` call: one round trip and one stream, and the
            // server reads a file's neighbouring chunks with one `pread`),
            // then written in order. Chunks are
            // at least 256 KiB (but a file's last), so each is written as
            // it is: a buffer would only copy them.
            let mut w = file;
            for window in node.chunks.chunks(FETCH_WINDOW) {
                let fetched: Vec<Result<Vec<u8>, Fail>> = match window {
                    [c] => vec![first.take().unwrap_or_else(|| self.fetch(*c))],
                    more => self.fetch_many(more),
                };
                for data in fetched {
                    let data = data?;
                    w.write_all(&data)?;
                    written += data.len() as u64;
                    self.progress
                        .bytes_done
                        .fetch_add(data.len() as u64, Relaxed);
                }
            }
        } else {
            // Holes stay holes: size first, then each data region in place.
            file.set_len(node.size)?;
            let mut extents = node.extents.iter().copied();
            let mut cur = extents.next();
            let mut used = 0u64;
            for &c in &node.chunks {
                let data = first.take().unwrap_or_else(|| self.fetch(c))?;
                let mut rest = &data[..];
                while !rest.is_empty() {
                    let Some((off, len)) = cur else {
                        return Err(Fail {
                            msg: "more data than the file's extents hold".into(),
                            corrupt: true,
                        });
                    };
                    let n = ((len - used) as usize).min(rest.len());
                    file.write_all_at(&rest[..n], off + used)?;
                    rest = &rest[n..];
                    used += n as u64;
                    written += n as u64;
                    if used == len {
                        cur = extents.next();
                        used = 0;
                    }
                }
                self.progress
                    .bytes_done
                    .fetch_add(data.len() as u64, Relaxed);
            }
        }
        if written != node.data_len() {
            return Err(Fail {
                msg: format!(
                    "restored {written} bytes, the snapshot records {}",
                    node.data_len()
                ),
                corrupt: true,
            });
        }
        Ok(written)
    }

    /// Whether a regular file is at `rel` (not following symlinks).
    fn is_file(&self, rel: &[u8]) -> bool {
        let (parent, name) = split_parent(rel);
        self.open_dir(parent).is_ok_and(|dir| {
            rustix::fs::statat(&dir, os(name), AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile)
        })
    }

    /// Whether an earlier run completed this file: a regular file at its
    /// place with the snapshot's size, mtime and permission bits (contents
    /// and metadata are set before a file gets its name).
    fn already_restored(&self, rel: &[u8], node: &Node) -> bool {
        let (parent, name) = split_parent(rel);
        let Ok(dir) = self.open_dir(parent) else {
            return false;
        };
        let Ok(st) = rustix::fs::statat(&dir, os(name), AtFlags::SYMLINK_NOFOLLOW) else {
            return false;
        };
        FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
            && st.st_size as u64 == node.size
            && st.st_mtime == node.mtime.sec
            && st.st_mtime_nsec as u32 == node.mtime.nsec
            && st.st_mode & 0o7777 == node.mode
    }

    /// Removes the temporary files an interrupted restore left in directory
    /// `rel` (never a name the snapshot has there).
    fn remove_leftovers(&self, rel: &[u8], keep: &dyn Fn(&[u8]) -> bool) {
        let Ok(dir) = self.open_dir(rel) else { return };
        let Ok(mut entries) = rustix::fs::Dir::read_from(&dir) else {
            return;
        };
        while let Some(Ok(e)) = entries.next() {
            let name = e.file_name().to_bytes();
            if pending_file::is_leftover(name) && !keep(join(rel, name).as_slice()) {
                let _ = rustix::fs::unlinkat(&dir, os(name), AtFlags::empty());
            }
        }
    }

    /// Restores file contents: files of one chunk and files of several on
    /// workers of their own (the former wait for round trips, the latter
    /// for bandwidth), each kind taken in the order given. Files of one
    /// chunk go in groups ([`small_groups`]), each group's chunks fetched
    /// with one `get_blobs` call.
    fn restore_contents(&self, items: &[&Item]) {
        let (large, small): (Vec<&Item>, Vec<&Item>) =
            items.iter().partition(|it| it.node.chunks.len() > 1);
        let groups = small_groups(&small);
        let run_large = |next: &AtomicUsize| {
            while let Some(it) = large.get(next.fetch_add(1, Relaxed)) {
                if let Err(e) = self.restore_file(&it.rel, &it.node, None) {
                    self.fail(&it.rel, e);
                }
            }
        };
        let run_small = |next: &AtomicUsize| {
            while let Some(group) = groups.get(next.fetch_add(1, Relaxed)) {
                // By path, so that files of one directory follow each other
                // and share one open of it.
                let mut group = group.to_vec();
                group.sort_unstable_by(|a, b| a.rel.cmp(&b.rel));
                let ids: Vec<ChunkId> = group
                    .iter()
                    .filter_map(|it| it.node.chunks.first().copied())
                    .collect();
                let mut data = self.fetch_many(&ids).into_iter();
                let mut dir: Option<(&[u8], OwnedFd)> = None;
                for it in group {
                    let first = match it.node.chunks.is_empty() {
                        true => None,
                        false => data.next(),
                    };
                    let (parent, name) = split_parent(&it.rel);
                    if dir.as_ref().is_none_or(|(p, _)| *p != parent) {
                        dir = match self.open_dir(parent) {
                            Ok(fd) => Some((parent, fd)),
                            Err(e) => {
                                self.fail(&it.rel, e);
                                None
                            }
                        };
                    }
                    let Some((_, fd)) = &dir else { continue };
                    if let Err(e) = self.restore_file_in(fd, name, &it.node, first) {
                        self.fail(&it.rel, e);
                    }
                }
            }
        };
        let (next_small, next_large) = (AtomicUsize::new(0), AtomicUsize::new(0));
        std::thread::scope(|s| {
            for i in 0..SMALL_WORKERS.min(groups.len()) {
                std::thread::Builder::new()
                    .name(format!("restore-{i}"))
                    .spawn_scoped(s, || run_small(&next_small))
                    .expect("starting a restore worker");
            }
            for i in 0..LARGE_WORKERS.min(large.len()) {
                std::thread::Builder::new()
                    .name(format!("restore-large-{i}"))
                    .spawn_scoped(s, || run_large(&next_large))
                    .expect("starting a restore worker");
            }
        });
    }

    /// Directory metadata, deepest first.
    fn finish_dirs(&self, items: &[Item], bad_dirs: &[Vec<u8>], under_bad: &dyn Fn(&[u8]) -> bool) {
        for it in items
            .iter()
            .rev()
            .filter(|i| i.node.kind == NodeKind::Dir && !under_bad(&i.rel))
        {
            if bad_dirs.contains(&it.rel) {
                continue;
            }
            if let Err(e) = self
                .open_dir(&it.rel)
                .and_then(|fd| self.apply_meta_fd(&fd, &it.node))
            {
                self.fail(&it.rel, e);
            }
        }
    }

    /// Writes a file under a temporary name, sets its metadata, renames it.
    fn restore_file(
        &self,
        rel: &[u8],
        node: &Node,
        first: Option<Result<Vec<u8>, Fail>>,
    ) -> Result<(), Fail> {
        let (parent, name) = split_parent(rel);
        self.restore_file_in(&self.open_dir(parent)?, name, node, first)
    }

    /// [`Restorer::restore_file`] with its directory already open.
    fn restore_file_in(
        &self,
        dir: &OwnedFd,
        name: &[u8],
        node: &Node,
        first: Option<Result<Vec<u8>, Fail>>,
    ) -> Result<(), Fail> {
        let pending = PendingFile::create(dir)?;
        // Verified contents are kept even if some metadata cannot be set
        // (an xattr namespace this user may not write, a file system
        // without xattrs): the file is put in place and the metadata
        // failure reported on its own.
        let written = self
            .write_contents(pending.file(), node, first)
            .map(|n| (n, self.apply_meta_fd(pending.file(), node)));
        match written {
            Ok((n, meta)) => {
                pending.publish(dir, os(name))?;
                self.files.fetch_add(1, Relaxed);
                self.bytes.fetch_add(n, Relaxed);
                self.progress.files_done.fetch_add(1, Relaxed);
                meta.map_err(|f| Fail {
                    msg: format!("contents restored, but metadata not: {}", f.msg),
                    corrupt: false,
                })
            }
            Err(e) => {
                pending.discard(dir);
                Err(e)
            }
        }
    }

    /// Creates a symlink, fifo, socket, device or hardlink, replacing a
    /// non-directory already at its place.
    fn restore_special(&self, rel: &[u8], node: &Node) -> Result<(), Fail> {
        if node.kind == NodeKind::Symlink && (node.target.is_empty() || node.target.contains(&0)) {
            return Err(Fail {
                msg: format!(
                    "symlink target {:?} is empty or holds a NUL byte: no file system stores that",
                    String::from_utf8_lossy(&node.target)
                ),
                corrupt: true,
            });
        }
        let (parent, name) = split_parent(rel);
        let dir = self.open_dir(parent)?;
        let create = || -> rustix::io::Result<()> {
            let mode = Mode::from_raw_mode(node.mode);
            match node.kind {
                NodeKind::Symlink => rustix::fs::symlinkat(os(&node.target), &dir, os(name)),
                NodeKind::Fifo => rustix::fs::mknodat(&dir, os(name), FileType::Fifo, mode, 0),
                NodeKind::Socket => rustix::fs::mknodat(&dir, os(name), FileType::Socket, mode, 0),
                NodeKind::CharDevice => {
                    rustix::fs::mknodat(&dir, os(name), FileType::CharacterDevice, mode, node.rdev)
                }
                NodeKind::BlockDevice => {
                    rustix::fs::mknodat(&dir, os(name), FileType::BlockDevice, mode, node.rdev)
                }
                NodeKind::Hardlink => {
                    let (tp, tn) = split_parent(&node.target);
                    let tdir = self.open_dir(tp).map_err(|_| rustix::io::Errno::NOENT)?;
                    rustix::fs::linkat(&tdir, os(tn), &dir, os(name), AtFlags::empty())
                }
                NodeKind::File | NodeKind::Dir => {
                    unreachable!("files and directories are restored elsewhere")
                }
            }
        };
        match create() {
            Err(rustix::io::Errno::EXIST) => {
                rustix::fs::unlinkat(&dir, os(name), AtFlags::empty())?;
                create()?;
            }
            r => r?,
        }
        match node.kind {
            NodeKind::Hardlink => {}
            NodeKind::Symlink => self.apply_meta_symlink(&dir, name, node)?,
            _ => special_meta(&dir, name, node, self.owner(node))?,
        }
        self.files.fetch_add(1, Relaxed);
        self.progress.files_done.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Collects the items to restore, sorted by path (so parents come
    /// before their children). Directories whose parent's tree has arrived
    /// wait in a queue; up to [`TREE_FETCHERS`] tasks each take up to
    /// [`TREE_BATCH`] of them and fetch their trees with one `get_blobs`
    /// call: over a network each call is a round trip (and a stream, and
    /// a server task), and a home has thousands of directories.
    fn plan(
        &self,
        planners: &rayon::ThreadPool,
        root: (Vec<u8>, Node),
        depth: usize,
        filters: &[Vec<Vec<u8>>],
        max_entries: Option<u64>,
        window: Option<u64>,
    ) -> Result<Option<Vec<Item>>, ClientError> {
        let p = Planning::new(filters, max_entries, window.unwrap_or(u64::MAX), true);
        self.walk(planners, &p, root, depth)?;
        if p.entries.load(Relaxed) > p.window {
            return Ok(None);
        }
        self.progress
            .add_total(p.files.load(Relaxed), p.bytes.load(Relaxed));
        let mut items = p.items.into_inner().expect("plan");
        items.sort_unstable_by(|a, b| a.rel.cmp(&b.rel));
        // Kept to the end: without the slack of its growth.
        items.shrink_to_fit();
        Ok(Some(items))
    }

    /// Walks every tree below `root`, keeping nothing, to refuse a snapshot
    /// with more entries than `max_entries` (see [`Restorer::walk`]).
    fn count_entries(
        &self,
        planners: &rayon::ThreadPool,
        root: (Vec<u8>, Node),
        max_entries: Option<u64>,
    ) -> Result<(), ClientError> {
        let p = Planning::new(&[], max_entries, u64::MAX, false);
        self.walk(planners, &p, root, 0)
    }

    /// Plans `root` and below into `p` (see [`Restorer::plan`]); an error
    /// when more entries than `p.max_entries` were found.
    fn walk(
        &self,
        planners: &rayon::ThreadPool,
        p: &Planning<'_>,
        root: (Vec<u8>, Node),
        depth: usize,
    ) -> Result<(), ClientError> {
        planners.scope(|s| {
            let mut dirs = Vec::new();
            self.plan_entries(p, vec![root], depth, &mut dirs);
            self.queue_trees(s, p, dirs, depth + 1);
        });
        let entries = p.entries.load(Relaxed);
        if entries <= p.max_entries || p.window < p.max_entries {
            return Ok(());
        }
        // A tree may be the subtree of many directories (copies of a
        // project), so a few small trees can name 2^40 entries: the plan
        // stops before it outgrows what the target could hold.
        Err(ClientError::Io {
            path: self.target.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!(
                    "the snapshot has more than {} entries (found {entries} before \
                     stopping), more than this file system has inodes in all",
                    p.max_entries
                ),
            ),
        })
    }

    /// Restores the subtree at `root` (`depth` below the snapshot's root):
    /// whole when it has at most `window` entries; else its root and its
    /// other entries first, then each subdirectory the same way, then the
    /// root's metadata. Memory holds one window's plan at a time (and the
    /// path down to it).
    #[allow(clippy::too_many_arguments)]
    fn restore_subtree(
        &self,
        planners: &rayon::ThreadPool,
        root: (Vec<u8>, Node),
        depth: usize,
        run: &Run<'_>,
        report: &mut RestoreReport,
        deferred: &mut Vec<Item>,
        max_entries: Option<u64>,
        window: u64,
    ) -> Result<(), ClientError> {
        if let Some(items) = self.plan(
            planners,
            root.clone(),
            depth,
            &[],
            max_entries,
            Some(window),
        )? {
            tracing::info!(
                "planned {} entries under {:?} after {:?}",
                items.len(),
                String::from_utf8_lossy(&root.0),
                run.t0.elapsed()
            );
            // The whole snapshot in one window: as without windows.
            let window = match root.0.is_empty() {
                true => Window::Whole,
                false => Window::Subtree,
            };
            return self.restore_items(&items, run, report, window, deferred);
        }
        // Too many for one window. The snapshot's root checks first, walking
        // every tree without keeping anything, that the target has inodes
        // for all (a few small trees can name 2^40 entries): else nothing
        // would stop the windows before the disk is full.
        if depth == 0 && max_entries.is_some() {
            self.count_entries(planners, root.clone(), max_entries)?;
        }
        // The root's own entries, without descending.
        let (rel, node) = root;
        let mut shell = self.plan_one_level(&rel, node, depth);
        let subdirs: Vec<(Vec<u8>, Node)> = shell
            .iter()
            .skip(1)
            .filter(|it| it.node.kind == NodeKind::Dir)
            .map(|it| (it.rel.clone(), it.node.clone()))
            .collect();
        shell.retain(|it| it.rel == rel || it.node.kind != NodeKind::Dir);
        self.restore_items(&shell, run, report, Window::Shell, deferred)?;
        let root_item = shell.swap_remove(0);
        drop(shell);
        for sub in subdirs {
            self.restore_subtree(
                planners,
                sub,
                depth + 1,
                run,
                report,
                deferred,
                max_entries,
                window,
            )?;
        }
        // Its metadata, now that everything below it is in place.
        let bad = |_: &[u8]| false;
        self.finish_dirs(std::slice::from_ref(&root_item), &[], &bad);
        Ok(())
    }

    /// A directory and its entries (checked and owners mapped as in a full
    /// plan; subdirectories with their nodes, not descended into), sorted
    /// by path, the directory first.
    fn plan_one_level(&self, rel: &[u8], node: Node, depth: usize) -> Vec<Item> {
        let p = Planning::new(&[], None, u64::MAX, true);
        let subtree = node.subtree;
        let mut dirs = Vec::new();
        self.plan_entries(&p, vec![(rel.to_vec(), node)], depth, &mut dirs);
        if let Some(sub) = subtree {
            match browse::load_trees(self.repo, &[sub]).map(|mut t| t.pop()) {
                Ok(Some(Ok(tree))) => {
                    let children = tree
                        .nodes
                        .into_iter()
                        .map(|child| (join(rel, &child.name), child))
                        .collect();
                    self.plan_entries(&p, children, depth + 1, &mut dirs);
                }
                Ok(Some(Err(e))) | Err(e) => self.fail(
                    rel,
                    Fail {
                        msg: format!("its entries are not restored: {e}"),
                        corrupt: e.is_corruption(),
                    },
                ),
                Ok(None) => {}
            }
        }
        // The directories' own entries count when their windows are planned.
        self.progress
            .add_total(p.files.load(Relaxed), p.bytes.load(Relaxed));
        let mut items = p.items.into_inner().expect("plan");
        items.sort_unstable_by(|a, b| a.rel.cmp(&b.rel));
        items
    }

    /// Queues directories (`depth` below the root) whose trees are to be
    /// fetched, and starts enough tasks to fetch them in batches.
    fn queue_trees<'s>(
        &'s self,
        s: &rayon::Scope<'s>,
        p: &'s Planning<'_>,
        dirs: Vec<(Vec<u8>, homesync_protocol::TreeId)>,
        depth: usize,
    ) {
        let tasks = dirs.len().div_ceil(TREE_BATCH);
        p.queue
            .lock()
            .expect("plan queue")
            .extend(dirs.into_iter().map(|(rel, sub)| (rel, sub, depth)));
        for _ in 0..tasks {
            s.spawn(move |s| self.plan_trees(s, p));
        }
    }

    /// Takes up to [`TREE_BATCH`] queued directories (the most recently
    /// queued: depth first keeps the queue short), fetches their trees in
    /// one call, plans their entries and queues their subdirectories. A
    /// task that finds the queue empty (others took it) has nothing to do.
    fn plan_trees<'s>(&'s self, s: &rayon::Scope<'s>, p: &'s Planning<'_>) {
        if p.entries.load(Relaxed) > p.max_entries.min(p.window) {
            return;
        }
        let batch = {
            let mut q = p.queue.lock().expect("plan queue");
            let keep = q.len().saturating_sub(TREE_BATCH);
            q.split_off(keep)
        };
        if batch.is_empty() {
            return;
        }
        let ids: Vec<_> = batch.iter().map(|(_, sub, _)| *sub).collect();
        let trees = match browse::load_trees(self.repo, &ids) {
            Ok(trees) => trees,
            Err(e) => {
                for (rel, ..) in &batch {
                    self.fail(
                        rel,
                        Fail {
                            msg: format!("its entries are not restored: {e}"),
                            corrupt: e.is_corruption(),
                        },
                    );
                }
                return;
            }
        };
        for ((rel, _, depth), tree) in batch.into_iter().zip(trees) {
            match tree {
                Ok(tree) => {
                    let children = tree
                        .nodes
                        .into_iter()
                        .map(|child| (join(&rel, &child.name), child))
                        .collect();
                    let mut dirs = Vec::new();
                    self.plan_entries(p, children, depth, &mut dirs);
                    self.queue_trees(s, p, dirs, depth + 1);
                }
                Err(e) => self.fail(
                    &rel,
                    Fail {
                        msg: format!("its entries are not restored: {e}"),
                        corrupt: e.is_corruption(),
                    },
                ),
            }
        }
    }

    /// Plans the entries of one directory (`depth` below the root); the
    /// subdirectories to descend into go to `dirs`.
    fn plan_entries(
        &self,
        p: &Planning<'_>,
        entries: Vec<(Vec<u8>, Node)>,
        depth: usize,
        dirs: &mut Vec<(Vec<u8>, homesync_protocol::TreeId)>,
    ) {
        let mut planned = Vec::with_capacity(entries.len());
        let mut inodes = 0;
        for (rel, node) in entries {
            let (inside, above) = wanted(&rel, p.filters);
            if !inside && !above {
                continue;
            }
            if depth > browse::MAX_DEPTH {
                // Deeper than any path Linux can name: a hostile or broken
                // store.
                self.fail(
                    &rel,
                    Fail {
                        msg: format!(
                            "directories nested deeper than {} levels",
                            browse::MAX_DEPTH
                        ),
                        corrupt: true,
                    },
                );
                continue;
            }
            if matches!(node.kind, NodeKind::File | NodeKind::Hardlink) {
                // No blob holds more than MAX_PLAIN_LEN bytes: a larger size
                // is a lie (and would overflow the sums of what is needed).
                let most = (node.chunks.len() as u64).saturating_mul(MAX_PLAIN_LEN as u64);
                if node.data_len() > most {
                    self.fail(
                        &rel,
                        Fail {
                            msg: format!(
                                "records {} bytes of contents in {} chunks of at most {} MiB",
                                node.data_len(),
                                node.chunks.len(),
                                MAX_PLAIN_LEN >> 20
                            ),
                            corrupt: true,
                        },
                    );
                    continue;
                }
                p.files.fetch_add(1, Relaxed);
                p.bytes.fetch_add(node.data_len(), Relaxed);
            }
            // Hardlinks take no inode of their own.
            if node.kind != NodeKind::Hardlink {
                inodes += 1;
            }
            if let Some(sub) = node.subtree {
                dirs.push((rel.clone(), sub));
            }
            // The plan holds every entry until the end: what it no longer
            // needs goes now (the name is the end of `rel`; owners are
            // mapped onto this machine's ids once, here).
            let mut node = node;
            if let Some((u, g)) = self.owner(&node) {
                node.uid = u.as_raw();
                node.gid = g.as_raw();
            }
            node.user = None;
            node.group = None;
            node.name = Vec::new();
            planned.push(Item { rel, node });
        }
        let before = p.entries.fetch_add(inodes, Relaxed);
        if before.saturating_add(inodes) > p.max_entries.min(p.window) {
            dirs.clear();
            return;
        }
        if p.keep {
            p.items.lock().expect("plan").extend(planned);
        }
    }

    /// Restores planned `items` (sorted by path): stages 3 to 7 of
    /// [`restore`]. `window` says whether they are the whole restore or one
    /// window of it (see [`Restorer::restore_subtree`]).
    fn restore_items(
        &self,
        items: &[Item],
        run: &Run<'_>,
        report: &mut RestoreReport,
        window: Window,
        deferred: &mut Vec<Item>,
    ) -> Result<(), ClientError> {
        let r = self;
        let (early, target_is_new, is_root, streamed) =
            (run.early, run.target_is_new, run.is_root, run.streamed);
        let t0 = run.t0;
        let whole = window == Window::Whole;
        // 3. Directories, parents first.
        let mut bad_dirs: Vec<Vec<u8>> = early.bad_dirs.clone();
        let mut new_dirs: HashSet<&[u8]> = early.new_dirs.iter().map(Vec::as_slice).collect();
        if target_is_new {
            new_dirs.insert(b"");
        }
        for it in items
            .iter()
            .filter(|i| i.node.kind == NodeKind::Dir && !i.rel.is_empty())
        {
            if new_dirs.contains(it.rel.as_slice()) || early.bad_dirs.contains(&it.rel) {
                continue;
            }
            match r.make_dir(&it.rel) {
                Ok(true) => {
                    new_dirs.insert(&it.rel);
                }
                Ok(false) => {}
                Err(e) => {
                    bad_dirs.push(it.rel.clone());
                    r.fail(&it.rel, e);
                }
            }
        }
        let in_new_dir = |rel: &[u8]| new_dirs.contains(split_parent(rel).0);
        let under_bad = |rel: &[u8]| {
            bad_dirs
                .iter()
                .any(|d| rel.starts_with(d) && rel.get(d.len()) == Some(&b'/'))
        };

        // The plan is sorted by path: what it holds is found by binary search
        // (no set of every path next to it; see docs/benchmarks.md, memory).
        let planned = |rel: &[u8]| -> Option<&Item> {
            items
                .binary_search_by(|i| i.rel.as_slice().cmp(rel))
                .ok()
                .map(|at| &items[at])
        };

        // Leftovers of an interrupted run go (names the snapshot has are kept).
        for it in items.iter().filter(|i| {
            i.node.kind == NodeKind::Dir
                && !under_bad(&i.rel)
                && !new_dirs.contains(i.rel.as_slice())
        }) {
            r.remove_leftovers(&it.rel, &|rel| planned(rel).is_some());
        }

        // 4. What is left to do. A hardlink whose first name is not part of
        //    this restore gets its own copy of the contents; one whose first
        //    name is in another window is linked after every window. Files
        //    an earlier run completed are not fetched again.
        let file_planned =
            |rel: &[u8]| planned(rel).is_some_and(|it| it.node.kind == NodeKind::File);
        let window_root = items.first().map_or(&b""[..], |it| it.rel.as_slice());
        let (elsewhere, here): (Vec<&Item>, Vec<&Item>) = items
            .iter()
            .filter(|i| {
                i.node.kind != NodeKind::Dir && !under_bad(&i.rel) && !early.done.contains(&i.rel)
            })
            .partition(|i| {
                !whole
                    && i.node.kind == NodeKind::Hardlink
                    && !file_planned(&i.node.target)
                    && !restored_before(&i.node.target, window_root)
            });
        for it in elsewhere {
            // Its directory's metadata is set again once it is linked.
            let parent = split_parent(&it.rel).0;
            deferred.extend(planned(parent).into_iter().chain([it]).map(|it| Item {
                rel: it.rel.clone(),
                node: it.node.clone(),
            }));
        }
        let (contents, specials): (Vec<&Item>, Vec<&Item>) = here.into_iter().partition(|i| {
            i.node.kind == NodeKind::File
                || (whole && i.node.kind == NodeKind::Hardlink && !file_planned(&i.node.target))
        });
        let (done, todo): (Vec<&Item>, Vec<&Item>) = contents
            .into_iter()
            .partition(|it| !in_new_dir(&it.rel) && r.already_restored(&it.rel, &it.node));
        for it in &done {
            report.skipped += 1;
            report.skipped_bytes += it.node.data_len();
            r.progress.add_done(1, it.node.data_len());
        }
        // Stop before filling the disk: the run can be repeated once there is
        // room, and it resumes.
        let needed = todo
            .iter()
            .fold(0u64, |n, it| n.saturating_add(it.node.data_len()));
        let free = (run.free)();
        if needed > free {
            return Err(ClientError::NoSpace {
                path: run.target.to_path_buf(),
                needed,
                free,
            });
        }
        let (phase1, phase2) = if streamed {
            let mut rest = todo;
            rest.sort_by_key(|it| (!recent(&it.node, run.snapshot_time), -it.node.mtime.sec));
            (Vec::new(), rest)
        } else {
            order_for_use(todo, run.snapshot_time)
        };
        {
            // Counted by sorting (32 bytes a chunk), not in a map of every
            // chunk: only the shared ones are kept.
            let mut all: Vec<ChunkId> = phase1
                .iter()
                .chain(&phase2)
                .flat_map(|it| it.node.chunks.iter().copied())
                .collect();
            all.sort_unstable();
            r.shared.lock().expect("shared chunks").uses = all
                .chunk_by(|a, b| a == b)
                .filter(|run| run.len() > 1)
                .map(|run| (run[0], (run.len() as u32, SharedChunk::Absent)))
                .collect();
        }
        tracing::info!(
            "{} files to restore ({} in the first phase) after {:?}",
            phase1.len() + phase2.len(),
            phase1.len(),
            t0.elapsed()
        );
        r.restore_contents(&phase1);

        // 5. Symlinks, special files and hardlinks (their targets now exist);
        //    hardlinks to files not yet restored wait for them.
        let targets: HashSet<&[u8]> = specials
            .iter()
            .filter(|it| it.node.kind == NodeKind::Hardlink)
            .map(|it| it.node.target.as_slice())
            .collect();
        let late: HashSet<&[u8]> = phase2
            .iter()
            .map(|it| it.rel.as_slice())
            .filter(|rel| targets.contains(rel))
            .collect();
        let (later, now): (Vec<&Item>, Vec<&Item>) = specials.into_iter().partition(|it| {
            it.node.kind == NodeKind::Hardlink && late.contains(it.node.target.as_slice())
        });
        for it in now {
            if let Err(e) = r.restore_special(&it.rel, &it.node) {
                r.fail(&it.rel, e);
            }
        }

        // 6. Without an early first phase, it ends here: directories get their
        //    owners and modes (as root, who can still write into read-only
        //    ones), then the caller hears that the user may log in.
        if !streamed {
            if is_root {
                r.finish_dirs(items, &bad_dirs, &under_bad);
            }
            (run.ready)(
                r.files.load(Relaxed) + report.skipped,
                r.bytes.load(Relaxed) + report.skipped_bytes,
                phase2.len() as u64 + later.len() as u64,
                phase2.iter().map(|it| it.node.data_len()).sum(),
            );
        }
        r.restore_contents(&phase2);
        tracing::info!("contents restored after {:?}", t0.elapsed());
        for it in later {
            if let Err(e) = r.restore_special(&it.rel, &it.node) {
                r.fail(&it.rel, e);
            }
        }

        // 7. Directory metadata, deepest first, so restoring a child's mtime or
        //    a read-only mode never disturbs what is still to be written. A
        //    window's root that was split waits for its subwindows.
        let items = match window {
            Window::Shell => &items[1..],
            _ => items,
        };
        r.finish_dirs(items, &bad_dirs, &under_bad);
        Ok(())
    }

    /// The entries a login needs, found without walking the whole
    /// snapshot: the hidden entries at its top and one level down (of each
    /// home, in a snapshot of `/home`) and what is below them, breadth
    /// first (shallow configuration before deep), except caches and the
    /// trash; plus the directories on the way. Only files, directories and
    /// symlinks; at most about `max` entries. Sorted by path. Trees that do
    /// not load are left to the full plan, which reports them.
    fn plan_login(&self, planners: &rayon::ThreadPool, root: &Node, max: usize) -> Vec<Item> {
        let mut items = vec![Item {
            rel: Vec::new(),
            node: root.clone(),
        }];
        // (directory, its tree, its depth below the root, inside a hidden entry)
        let mut level = Vec::new();
        if let Some(sub) = root.subtree {
            level.push((Vec::new(), sub, 0usize, false));
        }
        while !level.is_empty() && items.len() < max {
            let trees: Vec<_> = planners.install(|| {
                use rayon::prelude::*;
                level
                    .into_par_iter()
                    .map(|(rel, sub, depth, hidden)| {
                        (rel, depth, hidden, browse::load_tree(self.repo, sub))
                    })
                    .collect()
            });
            level = Vec::new();
            for (rel, depth, hidden, tree) in trees {
                let Ok(tree) = tree else { continue };
                for child in tree.nodes {
                    if items.len() >= max {
                        break;
                    }
                    if child.name == b".cache" || child.name == b"Trash" {
                        continue;
                    }
                    let inside = hidden || (depth <= 1 && child.name.first() == Some(&b'.'));
                    let rel = join(&rel, &child.name);
                    match (child.subtree, child.kind) {
                        (Some(sub), _) if inside && depth < browse::MAX_DEPTH => {
                            level.push((rel.clone(), sub, depth + 1, true));
                        }
                        // A directory at the top (a home): its hidden entries.
                        (Some(sub), _) if depth == 0 => {
                            level.push((rel.clone(), sub, 1, false));
                        }
                        (None, NodeKind::File | NodeKind::Symlink) if inside => {}
                        _ => continue,
                    }
                    items.push(Item { rel, node: child });
                }
            }
        }
        items.sort_unstable_by(|a, b| a.rel.cmp(&b.rel));
        items
    }

    /// The first phase before the full plan: the login entries'
    /// directories, their small files (within the budget for
    /// `files`/`bytes` in all) and symlinks; then, as root, those
    /// directories' owners and modes, so that their users can log in.
    fn early_phase(
        &self,
        planners: &rayon::ThreadPool,
        root: &Node,
        files: u64,
        bytes: u64,
        target_is_new: bool,
        is_root: bool,
    ) -> Early {
        let (max_files, max_bytes) = first_budget(files, bytes);
        let items = self.plan_login(planners, root, max_files as usize * 2);
        let mut early = Early::default();
        if target_is_new {
            early.new_dirs.insert(Vec::new());
        }
        for it in items
            .iter()
            .filter(|i| i.node.kind == NodeKind::Dir && !i.rel.is_empty())
        {
            match self.make_dir(&it.rel) {
                Ok(true) => {
                    early.new_dirs.insert(it.rel.clone());
                }
                Ok(false) => {}
                Err(e) => {
                    self.fail(&it.rel, e);
                    early.bad_dirs.push(it.rel.clone());
                }
            }
        }
        let bad = early.bad_dirs.clone();
        let under_bad = |rel: &[u8]| {
            bad.iter()
                .any(|d| rel.starts_with(d) && rel.get(d.len()) == Some(&b'/'))
        };
        let (mut n, mut b) = (0u64, 0u64);
        let mut todo = Vec::new();
        for it in items.iter().filter(|i| {
            i.node.kind == NodeKind::File && login_file(&i.rel, &i.node) && !under_bad(&i.rel)
        }) {
            let len = it.node.data_len();
            if n >= max_files || b.saturating_add(len) > max_bytes {
                continue;
            }
            n += 1;
            b += len;
            early.done.insert(it.rel.clone());
            if !early.new_dirs.contains(split_parent(&it.rel).0)
                && self.already_restored(&it.rel, &it.node)
            {
                early.skipped += 1;
                early.skipped_bytes += len;
                self.progress.add_done(1, len);
            } else {
                todo.push(it);
            }
        }
        self.restore_contents(&todo);
        for it in items
            .iter()
            .filter(|i| i.node.kind == NodeKind::Symlink && !under_bad(&i.rel))
        {
            early.done.insert(it.rel.clone());
            if let Err(e) = self.restore_special(&it.rel, &it.node) {
                self.fail(&it.rel, e);
            }
        }
        if is_root {
            self.finish_dirs(&items, &early.bad_dirs, &under_bad);
        }
        early
    }
}

/// The state of one [`Restorer::plan`].
struct Planning<'a> {
    filters: &'a [Vec<Vec<u8>>],
    max_entries: u64,
    /// Planning stops past this many entries (a window too large).
    window: u64,
    /// Whether entries are kept (else only counted).
    keep: bool,
    /// Files and bytes planned, added to the progress once the plan is kept.
    files: AtomicU64,
    bytes: AtomicU64,
    items: Mutex<Vec<Item>>,
    /// Entries planned that take an inode.
    entries: AtomicU64,
    /// Directories whose trees are still to be fetched: (path, tree, depth).
    #[allow(clippy::type_complexity)]
    queue: Mutex<Vec<(Vec<u8>, homesync_protocol::TreeId, usize)>>,
}

impl<'a> Planning<'a> {
    fn new(filters: &'a [Vec<Vec<u8>>], max_entries: Option<u64>, window: u64, keep: bool) -> Self {
        Planning {
            filters,
            max_entries: max_entries.unwrap_or(u64::MAX),
            window,
            keep,
            files: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            items: Mutex::new(Vec::new()),
            entries: AtomicU64::new(0),
            queue: Mutex::new(Vec::new()),
        }
    }
}

/// Restores `snapshot` (or the parts named in `opts.paths`) into `opts.target`.
pub fn restore(
    repo: &dyn Repository,
    snapshot: &Snapshot,
    opts: &RestoreOptions,
    progress: &Progress,
) -> Result<RestoreReport, ClientError> {
    let mut filters = Vec::new();
    for p in &opts.paths {
        // Fails early, naming the path, when it is not in the snapshot.
        browse::find(repo, snapshot, p)?;
        filters.push(
            split_path(p)?
                .into_iter()
                .map(<[u8]>::to_vec)
                .collect::<Vec<_>>(),
        );
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ClientError::Io { path, source }
    };
    // A directory this run creates holds nothing of an earlier run: no
    // file in it needs checking.
    let target_is_new = std::fs::symlink_metadata(&opts.target).is_err();
    std::fs::create_dir_all(&opts.target).map_err(io(&opts.target))?;
    let root = rustix::fs::open(
        &opts.target,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io(&opts.target)(e.into()))?;
    let mut report = RestoreReport::default();
    let is_root = rustix::process::geteuid().is_root();
    if !is_root {
        report
            .warnings
            .push("not running as root: file owners are not restored (files belong to you)".into());
    }
    let r = Restorer {
        repo,
        root,
        target: opts.target.clone(),
        owners: is_root.then(Owners::load),
        numeric_ids: opts.numeric_ids,
        progress,
        errors: Mutex::new(Vec::new()),
        files: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        shared: Mutex::default(),
        fetched: std::sync::Condvar::new(),
    };
    // More threads than cores: each mostly waits for a tree from the
    // server (one round trip each), not for the CPU.
    let planners = rayon::ThreadPoolBuilder::new()
        .num_threads(TREE_FETCHERS)
        .thread_name(|i| format!("restore-plan-{i}"))
        .build()
        .map_err(|e| ClientError::Usage(format!("starting restore workers: {e}")))?;
    // Total inodes of the target's file system (0 where they are not
    // counted, as on btrfs): no snapshot with more entries can be restored.
    let max_entries = rustix::fs::fstatvfs(&r.root)
        .ok()
        .map(|fs| fs.f_files)
        .filter(|&n| n > 0);
    let t0 = std::time::Instant::now();
    let free = || {
        rustix::fs::fstatvfs(&r.root)
            .map(|fs| fs.f_bavail.saturating_mul(fs.f_frsize))
            .unwrap_or(u64::MAX)
    };
    let stats = &snapshot.stats;
    let ready = |files: u64, bytes: u64, files_left: u64, bytes_left: u64| {
        if let Some(ready) = &opts.on_ready {
            ready(&Ready {
                files,
                bytes,
                files_left,
                bytes_left,
            });
        }
        tracing::info!("ready after {:?}", t0.elapsed());
    };

    // 1. The first phase, before the whole snapshot is walked, when the
    //    snapshot's own count of its bytes shows that it fits (else the
    //    full plan comes first, so that nothing is written to a target
    //    without room).
    let early = (opts.paths.is_empty() && stats.bytes <= free()).then(|| {
        let early = r.early_phase(
            &planners,
            &snapshot.root,
            stats.files,
            stats.bytes,
            target_is_new,
            is_root,
        );
        let (files, bytes) = (
            r.files.load(Relaxed) + early.skipped,
            r.bytes.load(Relaxed) + early.skipped_bytes,
        );
        // What is left, from the snapshot's counts (its bytes count holes).
        ready(
            files,
            bytes,
            (stats.files + stats.other).saturating_sub(files),
            stats.bytes.saturating_sub(bytes),
        );
        early
    });
    let streamed = early.is_some();
    let early = early.unwrap_or_default();
    report.skipped = early.skipped;
    report.skipped_bytes = early.skipped_bytes;

    // 2. The plan, and the rest. With an early first phase the snapshot is
    //    restored in windows of at most `plan_window` entries (one window
    //    when it is smaller), so the plan's memory does not grow with the
    //    home; otherwise the whole plan comes first.
    let run = Run {
        early: &early,
        target_is_new,
        is_root,
        streamed,
        snapshot_time: snapshot.time.sec,
        target: &opts.target,
        free: &free,
        ready: &ready,
        t0,
    };
    let mut deferred = Vec::new();
    if streamed {
        let window = opts.plan_window.unwrap_or(PLAN_WINDOW).max(1);
        r.restore_subtree(
            &planners,
            (Vec::new(), snapshot.root.clone()),
            0,
            &run,
            &mut report,
            &mut deferred,
            max_entries,
            window,
        )?;
        // Hardlinks whose first name is in another window: linked now that
        // every window is in place; one whose first name is not there (not
        // in the snapshot, or failed) gets its own copy, as without windows.
        let (mut dirs, deferred): (Vec<Item>, Vec<Item>) = deferred
            .into_iter()
            .partition(|it| it.node.kind == NodeKind::Dir);
        let (links, copies): (Vec<Item>, Vec<Item>) = deferred
            .into_iter()
            .partition(|it| r.is_file(&it.node.target));
        for it in links {
            if let Err(e) = r.restore_special(&it.rel, &it.node) {
                r.fail(&it.rel, e);
            }
        }
        r.restore_contents(&copies.iter().collect::<Vec<_>>());
        dirs.sort_unstable_by(|a, b| a.rel.cmp(&b.rel));
        dirs.dedup_by(|a, b| a.rel == b.rel);
        r.finish_dirs(&dirs, &[], &|_: &[u8]| false);
    } else {
        let items = r
            .plan(
                &planners,
                (Vec::new(), snapshot.root.clone()),
                0,
                &filters,
                max_entries,
                None,
            )?
            .expect("a plan without a window is never too large");
        tracing::info!("planned {} entries in {:?}", items.len(), t0.elapsed());
        r.restore_items(&items, &run, &mut report, Window::Whole, &mut deferred)?;
    }

    report.files = r.files.load(Relaxed);
    report.bytes = r.bytes.load(Relaxed);
    report.errors = r.errors.into_inner().expect("errors");
    report.errors.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_select_paths_their_parents_and_below() {
        let f = vec![vec![b"a".to_vec(), b"b".to_vec()]];
        assert_eq!(wanted(b"", &f), (false, true));
        assert_eq!(wanted(b"a", &f), (false, true));
        assert_eq!(wanted(b"a/b", &f), (true, false));
        assert_eq!(wanted(b"a/b/c", &f), (true, false));
        assert_eq!(wanted(b"a/c", &f), (false, false));
        assert_eq!(wanted(b"ab", &f), (false, false));
        assert_eq!(wanted(b"x", &[]), (true, false));
    }

    /// What a user racing a root restore in their own directory could do:
    /// swap the FIFO just created for a symlink to a file they may not
    /// change. The file's mode and times stay as they were.
    #[test]
    fn a_special_file_swapped_for_a_symlink_is_not_followed() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let secret = tmp.path().join("secret");
        std::fs::write(&secret, b"secret").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let before = std::fs::metadata(&secret).unwrap();
        let home = tmp.path().join("home");
        std::fs::create_dir(&home).unwrap();
        std::os::unix::fs::symlink(&secret, home.join("fifo")).unwrap();
        let dir: OwnedFd = File::open(&home).unwrap().into();
        let mut node = Node::new(b"fifo".to_vec(), NodeKind::Fifo);
        node.mode = 0o666;
        node.mtime.sec = 1_000_000;
        let err = special_meta(&dir, b"fifo", &node, None).expect_err("refused");
        assert!(err.msg.contains("replaced by a Symlink"), "{}", err.msg);
        let after = std::fs::metadata(&secret).unwrap();
        assert_eq!(after.permissions().mode() & 0o7777, 0o600);
        assert_eq!(after.modified().unwrap(), before.modified().unwrap());

        // The FIFO itself gets its mode and times.
        std::fs::remove_file(home.join("fifo")).unwrap();
        rustix::fs::mknodat(&dir, "fifo", FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
        special_meta(&dir, b"fifo", &node, None).expect("metadata set");
        let m = std::fs::symlink_metadata(home.join("fifo")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o666);
        assert_eq!(
            m.modified().unwrap(),
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000)
        );
    }

    fn file(len: u64, mtime: i64) -> Node {
        let mut n = Node::new(b"f".to_vec(), NodeKind::File);
        n.size = len;
        n.chunks = vec![ChunkId::of(b"x")];
        n.mtime.sec = mtime;
        n
    }

    #[test]
    fn login_files_are_small_files_below_hidden_entries_at_the_top() {
        let small = file(100, 0);
        for yes in [
            &b".bashrc"[..],
            b".config/app/settings",
            b"alice/.profile",
            b"alice/.ssh/config",
            b"alice/.local/share/app/db",
        ] {
            assert!(login_file(yes, &small), "{}", String::from_utf8_lossy(yes));
        }
        for no in [
            &b"notes.txt"[..],
            b"alice/Documents/x",
            b"alice/src/.git/config",
            b"alice/.cache/thumbnails/x",
            b"alice/.local/share/Trash/files/x",
            b".cache/x",
        ] {
            assert!(!login_file(no, &small), "{}", String::from_utf8_lossy(no));
        }
        assert!(!login_file(b".config/big", &file(SMALL + 1, 0)));
    }

    #[test]
    fn the_first_phase_is_login_files_within_its_budget_and_the_rest_recent_first() {
        let now = 1_000_000_000;
        let mut items = Vec::new();
        // 300 login files, 10 KiB each: the budget takes 200 of them.
        for i in 0..300 {
            items.push(Item {
                rel: format!("alice/.config/{i:03}").into_bytes(),
                node: file(10 << 10, now - 10 * 86_400),
            });
        }
        items.push(Item {
            rel: b"alice/old.iso".to_vec(),
            node: file(100 << 20, now - 400 * 86_400),
        });
        items.push(Item {
            rel: b"alice/older.txt".to_vec(),
            node: file(10, now - 500 * 86_400),
        });
        items.push(Item {
            rel: b"alice/recent.odt".to_vec(),
            node: file(1 << 20, now - 86_400),
        });
        let (first, rest) = order_for_use(items.iter().collect(), now);
        assert_eq!(first.len(), FIRST_MIN_FILES as usize);
        assert!(first.iter().all(|it| it.rel.starts_with(b"alice/.config/")));
        let names: Vec<&[u8]> = rest.iter().map(|it| it.rel.as_slice()).collect();
        // Recent files first (the login files over the budget are recent
        // too, but older than the document), then old ones, newest first.
        assert_eq!(names[0], b"alice/recent.odt");
        assert_eq!(names[names.len() - 2], b"alice/old.iso");
        assert_eq!(names[names.len() - 1], b"alice/older.txt");
        // A byte budget too: 16 MiB of login files at most.
        let big: Vec<Item> = (0..20)
            .map(|i| Item {
                rel: format!(".config/{i}").into_bytes(),
                node: file(SMALL, now),
            })
            .collect();
        let (first, _) = order_for_use(big.iter().collect(), now);
        assert_eq!(first.len(), 16);
    }

    #[test]
    fn small_files_go_in_groups_bounded_by_count_and_bytes() {
        let items: Vec<Item> = [10u64, 10, 3 << 20, 10]
            .iter()
            .chain(&[100; 130])
            .map(|&len| Item {
                rel: b"f".to_vec(),
                node: file(len, 0),
            })
            .collect();
        let refs: Vec<&Item> = items.iter().collect();
        let sizes: Vec<usize> = small_groups(&refs).iter().map(|g| g.len()).collect();
        // The 3 MiB file is over the byte budget: alone in its group, which
        // ends the one before; then groups of GROUP_FILES.
        assert_eq!(sizes, [2, 1, GROUP_FILES, GROUP_FILES, 3]);
        assert!(small_groups(&[]).is_empty());
    }

    #[test]
    fn windows_go_depth_first_in_name_order_a_split_directorys_own_entries_first() {
        // Restoring the window rooted at b/d: done are the entries directly
        // in the split directories above it ("", b), and every branch that
        // sorts before it (a, b/c).
        for (path, before) in [
            (&b"top.txt"[..], true),
            (b"a/deep/x", true),
            (b"b/file", true),
            (b"b/c/x", true),
            (b"b/d", false),
            (b"b/d/x", false),
            (b"b/e/x", false),
            (b"c/x", false),
        ] {
            assert_eq!(
                restored_before(path, b"b/d"),
                before,
                "{}",
                String::from_utf8_lossy(path)
            );
        }
        // A window at the snapshot's root comes first.
        assert!(!restored_before(b"x", b""));
    }

    #[test]
    fn parent_and_name_split_at_the_last_slash() {
        assert_eq!(split_parent(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split_parent(b"c"), (&b""[..], &b"c"[..]));
    }
}
