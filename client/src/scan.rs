//! The scanner: walks a source directory (one file system by default,
//! excludes applied) and records every entry's metadata. Contents are read
//! later, by the backup pipeline, and only for files the file-state cache
//! cannot vouch for.

use crate::dirty::{Dirty, Visit};
use crate::error::EntryError;
use crate::exclude::Excludes;
use crate::meta;
use crate::owners::Owners;
use crate::progress::Progress;
use homesync_protocol::{Node, NodeKind, Timestamp, Tree, TreeId};
use rustix::fs::{OFlags, ResolveFlags};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;

/// A regular file whose contents the pipeline must supply.
#[derive(Debug, Clone)]
pub struct FileJob {
    /// Where the file is: `dirs[dir].entries[entry]`. Its paths are derived
    /// when needed ([`Scan::file_rel`], [`Scan::file_path`]) rather than
    /// stored: a home has hundreds of thousands of files.
    pub dir: u32,
    pub entry: u32,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    /// Names the file has (in and outside the source).
    pub nlink: u64,
}

/// How an entry gets what lstat cannot tell.
#[derive(Debug, Clone, Copy)]
pub enum Link {
    /// Complete as scanned (symlink, fifo, device, socket).
    None,
    /// A directory: `dirs[i]`.
    Dir(usize),
    /// A regular file: contents from `files[i]`.
    File(usize),
    /// A further name of `files[i]`, first seen elsewhere.
    HardlinkOf(usize),
    /// Unchanged: the node as the previous snapshot recorded it, contents
    /// included (a patched directory's untouched entries).
    Kept,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub node: Node,
    pub link: Link,
}

#[derive(Debug)]
pub struct ScanDir {
    pub path: PathBuf,
    /// The directory the scan saw; it is listed only if it is still this one.
    pub dev: u64,
    pub ino: u64,
    /// Path from the scan root, `/`-separated raw bytes (empty for the root).
    pub rel: Vec<u8>,
    /// The directory's own metadata.
    pub node: Node,
    pub entries: Vec<Entry>,
    /// Not listed: unchanged since the previous snapshot, whose tree (and
    /// its totals) this is. Only incremental scans reuse trees.
    pub reused: Option<(TreeId, TreeTotals)>,
    /// It holds a file with several names: an incremental scan lists it
    /// whenever another such directory changes (an unlink elsewhere
    /// changes which name is the first).
    pub has_links: bool,
    /// Not listed but patched: only the changed names were looked at, so
    /// `has_links` speaks for those alone.
    pub patched: bool,
}

/// What a tree holds, counted recursively: the snapshot's statistics are
/// the root's totals, and a reused tree brings its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeTotals {
    pub files: u64,
    pub dirs: u64,
    pub other: u64,
    pub bytes: u64,
}

impl std::ops::AddAssign for TreeTotals {
    fn add_assign(&mut self, o: TreeTotals) {
        self.files += o.files;
        self.dirs += o.dirs;
        self.other += o.other;
        self.bytes += o.bytes;
    }
}

/// What an incremental scan may skip: directories the dirty set does not
/// mark keep their previous tree (when its totals are known; otherwise
/// they are scanned after all), and directories with changed entries are
/// patched: their previous tree, with only those names looked at again.
pub struct Scope<'a> {
    pub dirty: &'a Dirty,
    /// The previous snapshot's tree of the directory at `rel`.
    pub previous: &'a dyn Fn(&[u8]) -> Option<Arc<Tree>>,
    /// The totals of a previous tree (what the file-state cache recorded).
    pub totals: &'a dyn Fn(&TreeId) -> Option<TreeTotals>,
}

impl Scope<'_> {
    /// The previous tree of unchanged directory `rel`, to reuse as is.
    fn reuse(&self, rel: &[u8]) -> Option<(TreeId, TreeTotals)> {
        let (dir, name) = crate::dirty::split(rel);
        let tree = (self.previous)(dir)?;
        let node = tree.nodes.iter().find(|n| n.name == name)?;
        let id = node.subtree.filter(|_| node.kind == NodeKind::Dir)?;
        Some((id, (self.totals)(&id)?))
    }
}

/// Everything found under a root. `dirs[0]` is the root; every directory's
/// index is larger than its parent's, so walking `dirs` backwards visits
/// children before parents (what building trees bottom-up needs).
#[derive(Debug)]
pub struct Scan {
    /// The scan root, open: files are opened beneath it.
    pub root: OwnedFd,
    pub dirs: Vec<ScanDir>,
    pub files: Vec<FileJob>,
    pub errors: Vec<EntryError>,
}

pub struct ScanOptions<'a> {
    pub excludes: &'a Excludes,
    /// Absolute paths never backed up (the store itself, its caches).
    pub skip: &'a [PathBuf],
    pub one_file_system: bool,
    pub owners: &'a Owners,
    /// Incremental scan: list only what changed.
    pub scope: Option<&'a Scope<'a>>,
}

fn join_rel(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        name.to_vec()
    } else {
        [parent, b"/", name].concat()
    }
}

/// Opens `rel` beneath the directory `root` without following any symlink
/// on the way or at the end (`openat2` with `RESOLVE_BENEATH |
/// RESOLVE_NO_SYMLINKS`): a directory swapped for a symlink after the scan
/// cannot redirect the backup elsewhere.
pub fn open_beneath(root: &OwnedFd, rel: &[u8], flags: OFlags) -> std::io::Result<OwnedFd> {
    let path: &[u8] = if rel.is_empty() { b"." } else { rel };
    Ok(rustix::fs::openat2(
        root,
        OsStr::from_bytes(path),
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    )?)
}

fn ctime_of(m: &std::fs::Metadata) -> Timestamp {
    Timestamp {
        sec: m.ctime(),
        nsec: m.ctime_nsec() as u32,
    }
}

impl Scan {
    fn file_name(&self, job: &FileJob) -> &[u8] {
        &self.dirs[job.dir as usize].entries[job.entry as usize]
            .node
            .name
    }

    /// The file's path from the scan root, what it is opened by (never
    /// following a symlink, see [`open_beneath`]).
    pub fn file_rel(&self, job: &FileJob) -> Vec<u8> {
        join_rel(&self.dirs[job.dir as usize].rel, self.file_name(job))
    }

    /// The file's full path, for messages.
    pub fn file_path(&self, job: &FileJob) -> PathBuf {
        self.dirs[job.dir as usize]
            .path
            .join(OsStr::from_bytes(self.file_name(job)))
    }
}

/// Walks `root`. Fails only if the root itself cannot be read; problems
/// with entries below it are collected in [`Scan::errors`].
pub fn scan(
    root: &std::path::Path,
    opts: &ScanOptions,
    progress: &Progress,
) -> Result<Scan, EntryError> {
    let root_meta = std::fs::symlink_metadata(root).map_err(|e| EntryError::new(root, e))?;
    if !root_meta.is_dir() {
        return Err(EntryError::new(
            root,
            "not a directory (homesync backs up directories)",
        ));
    }
    let root_dev = root_meta.dev();
    // The root node is named after the source directory; `/` has no name a
    // tree could hold, so it is called `root`.
    let name = root
        .file_name()
        .map_or(b"root".to_vec(), |n| n.as_bytes().to_vec());
    let root_fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| EntryError::new(root, std::io::Error::from(e)))?;
    let mut root_node = meta::node_from(name, &root_meta, opts.owners);
    root_node.xattrs = meta::read_xattrs(root).unwrap_or_default();
    let mut s = Scan {
        root: root_fd,
        dirs: vec![ScanDir {
            path: root.to_path_buf(),
            dev: root_meta.dev(),
            ino: root_meta.ino(),
            rel: Vec::new(),
            node: root_node,
            entries: Vec::new(),
            reused: None,
            has_links: false,
            patched: false,
        }],
        files: Vec::new(),
        errors: Vec::new(),
    };
    let mut first_name: HashMap<(u64, u64), (usize, Vec<u8>)> = HashMap::new();
    let mut stack = vec![0usize];
    while let Some(d) = stack.pop() {
        let dir_path = s.dirs[d].path.clone();
        let dir_rel = s.dirs[d].rel.clone();
        // Everything below goes through this descriptor (as
        // /proc/self/fd/N/name), so the directory listed is the one scanned.
        let dir_fd = match open_beneath(&s.root, &dir_rel, OFlags::RDONLY | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            Err(e) => {
                s.errors.push(EntryError::new(
                    &dir_path,
                    format!("cannot open directory: {e}"),
                ));
                continue;
            }
        };
        match rustix::fs::fstat(&dir_fd) {
            Ok(st) if (st.st_dev, st.st_ino) == (s.dirs[d].dev, s.dirs[d].ino) => {}
            Ok(_) => {
                s.errors.push(EntryError::new(
                    &dir_path,
                    "replaced by another directory during the backup",
                ));
                continue;
            }
            Err(e) => {
                s.errors
                    .push(EntryError::new(&dir_path, std::io::Error::from(e)));
                continue;
            }
        }
        let base = PathBuf::from(format!("/proc/self/fd/{}", dir_fd.as_raw_fd()));
        let tagged_cache = opts.excludes.is_tagged_cache(&base);
        // A patched directory is not listed: its previous entries are kept
        // but for the changed names (and subdirectories that are not
        // reused), which are looked at again.
        let previous = opts
            .scope
            .filter(|scope| !tagged_cache && scope.dirty.visit(&dir_rel) == Visit::Patch)
            .and_then(|scope| Some((scope, (scope.previous)(&dir_rel)?)));
        let mut entries = Vec::with_capacity(previous.as_ref().map_or(16, |(_, t)| t.nodes.len()));
        let mut has_links = false;
        let names: Vec<std::ffi::OsString> = match &previous {
            Some((scope, tree)) => {
                s.dirs[d].patched = true;
                let changed = scope.dirty.names(&dir_rel);
                let mut fresh: Vec<Vec<u8>> =
                    changed.map_or(vec![], |c| c.iter().cloned().collect());
                for node in &tree.nodes {
                    if changed.is_some_and(|c| c.contains(&node.name)) {
                        continue;
                    }
                    let rel = join_rel(&dir_rel, &node.name);
                    let keep = match node.kind {
                        NodeKind::Dir => match (scope.dirty.visit(&rel), node.subtree) {
                            (Visit::Reuse, Some(id)) => (scope.totals)(&id).map(|t| (id, t)),
                            _ => None,
                        }
                        .map(|reused| {
                            let i = s.dirs.len();
                            s.dirs.push(ScanDir {
                                path: dir_path.join(OsStr::from_bytes(&node.name)),
                                dev: 0,
                                ino: 0,
                                rel,
                                node: node.clone(),
                                entries: Vec::new(),
                                reused: Some(reused),
                                has_links: false,
                                patched: false,
                            });
                            Link::Dir(i)
                        }),
                        // Which name of a linked file comes first depends
                        // on the walk: looked at again (linked directories
                        // are listed whole anyway).
                        NodeKind::Hardlink => None,
                        _ => Some(Link::Kept),
                    };
                    match keep {
                        Some(link) => entries.push(Entry {
                            node: node.clone(),
                            link,
                        }),
                        None => fresh.push(node.name.clone()),
                    }
                }
                fresh.sort();
                fresh.dedup();
                fresh
                    .into_iter()
                    .filter(|n| !n.is_empty() && !n.contains(&b'/'))
                    .map(std::ffi::OsString::from_vec)
                    .collect()
            }
            None => {
                let mut names: Vec<std::ffi::OsString> = match std::fs::read_dir(&base) {
                    Ok(rd) => rd
                        .filter_map(|e| match e {
                            Ok(e) => Some(e.file_name()),
                            Err(err) => {
                                s.errors.push(EntryError::new(&dir_path, err));
                                None
                            }
                        })
                        .collect(),
                    Err(e) => {
                        s.errors.push(EntryError::new(
                            &dir_path,
                            format!("cannot list directory: {e}"),
                        ));
                        continue;
                    }
                };
                names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
                names
            }
        };
        for name in names {
            if tagged_cache && name != OsStr::new("CACHEDIR.TAG") {
                continue;
            }
            let path = dir_path.join(&name);
            let via = base.join(&name);
            let m = match std::fs::symlink_metadata(&via) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // deleted since listing
                Err(e) => {
                    s.errors.push(EntryError::new(&path, e));
                    continue;
                }
            };
            if opts.excludes.excluded(&path, m.is_dir()) || opts.skip.contains(&path) {
                continue;
            }
            let name = name.as_bytes().to_vec();
            let rel = join_rel(&dir_rel, &name);
            let mut node = meta::node_from(name, &m, opts.owners);
            match meta::read_xattrs(&via) {
                Ok(x) => node.xattrs = x,
                Err(e) => s
                    .errors
                    .push(EntryError::new(&path, format!("reading xattrs: {e}"))),
            }
            let link = match node.kind {
                NodeKind::Dir => {
                    let i = s.dirs.len();
                    let cross = opts.one_file_system && m.dev() != root_dev;
                    let reused = opts
                        .scope
                        .filter(|scope| !cross && scope.dirty.visit(&rel) == Visit::Reuse)
                        .and_then(|scope| scope.reuse(&rel));
                    // A mount point is kept as an empty directory, not entered.
                    if !cross && reused.is_none() {
                        stack.push(i);
                    }
                    s.dirs.push(ScanDir {
                        path: path.clone(),
                        dev: m.dev(),
                        ino: m.ino(),
                        rel: rel.clone(),
                        node: node.clone(),
                        entries: Vec::new(),
                        reused,
                        has_links: false,
                        patched: false,
                    });
                    Link::Dir(i)
                }
                NodeKind::Symlink => match std::fs::read_link(&via) {
                    Ok(t) => {
                        node.target = t.into_os_string().into_encoded_bytes();
                        Link::None
                    }
                    Err(e) => {
                        s.errors
                            .push(EntryError::new(&path, format!("reading symlink: {e}")));
                        continue;
                    }
                },
                NodeKind::File => {
                    let key = (m.dev(), m.ino());
                    has_links |= m.nlink() > 1;
                    if let Some((first, target)) = first_name.get(&key).filter(|_| m.nlink() > 1) {
                        node.kind = NodeKind::Hardlink;
                        node.target = target.clone();
                        Link::HardlinkOf(*first)
                    } else {
                        let i = s.files.len();
                        s.files.push(FileJob {
                            dir: d as u32,
                            entry: entries.len() as u32,
                            dev: m.dev(),
                            ino: m.ino(),
                            size: m.size(),
                            mtime: node.mtime,
                            ctime: ctime_of(&m),
                            nlink: m.nlink(),
                        });
                        progress.add_total(1, m.size());
                        if m.nlink() > 1 {
                            first_name.insert(key, (i, rel));
                        }
                        Link::File(i)
                    }
                }
                _ => Link::None,
            };
            entries.push(Entry { node, link });
        }
        s.dirs[d].entries = entries;
        s.dirs[d].has_links = has_links;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_beneath_never_follows_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::fs::write(dir.path().join("real/file"), b"y").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("swapped")).unwrap();
        std::os::unix::fs::symlink("real/file", dir.path().join("link")).unwrap();
        let root: OwnedFd = std::fs::File::open(dir.path()).unwrap().into();
        assert!(open_beneath(&root, b"real/file", OFlags::RDONLY).is_ok());
        assert!(open_beneath(&root, b"swapped/secret", OFlags::RDONLY).is_err());
        assert!(open_beneath(&root, b"link", OFlags::RDONLY).is_err());
        assert!(open_beneath(&root, b"../x", OFlags::RDONLY).is_err());
    }
}
