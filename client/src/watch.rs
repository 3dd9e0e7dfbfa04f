//! inotify watches over the sources, turned into dirty sets.
//!
//! inotify is not recursive: every directory gets its own watch, including
//! those created later (watched as soon as their creation is read, then
//! marked for a deep scan, so whatever appeared in them before the watch
//! existed is scanned). Events name a directory and an entry; the watcher
//! maps the watch back to the directory's path and marks it dirty. What
//! inotify cannot vouch for is scanned deeply: everything after a queue
//! overflow, and the subtrees that got no watch because the per-user watch
//! limit was reached.

use crate::dirty::{Dirty, join, split};
use crate::exclude::Excludes;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where the kernel's watch limit is, for messages.
pub const MAX_USER_WATCHES: &str = "/proc/sys/fs/inotify/max_user_watches";

/// One source directory as the watcher sees it.
pub struct WatchedSource {
    pub root: PathBuf,
    dev: u64,
    excludes: Excludes,
    skip: Vec<PathBuf>,
    one_file_system: bool,
    /// Subtrees without a watch (the limit was hit): scanned deeply by every
    /// snapshot until a later attempt watches them.
    pub unwatched: BTreeSet<Vec<u8>>,
}

pub struct Watcher {
    inotify: Inotify,
    dirs: HashMap<WatchDescriptor, (usize, Vec<u8>)>,
    pub sources: Vec<WatchedSource>,
    buffer: Vec<u8>,
    /// The watch limit was reported in the log already.
    limit_reported: bool,
    /// Events read since start, overflows among them.
    pub events: u64,
    pub overflows: u64,
}

fn mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MODIFY
        | WatchMask::ATTRIB
        | WatchMask::CLOSE_WRITE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR
        | WatchMask::DONT_FOLLOW
        | WatchMask::EXCL_UNLINK
}

/// The kernel's current limit on watches per user, if readable.
pub fn watch_limit() -> Option<u64> {
    std::fs::read_to_string(MAX_USER_WATCHES)
        .ok()?
        .trim()
        .parse()
        .ok()
}

impl Watcher {
    pub fn new() -> std::io::Result<Watcher> {
        Ok(Watcher {
            inotify: Inotify::init()?,
            dirs: HashMap::new(),
            sources: Vec::new(),
            buffer: vec![0; 64 << 10],
            limit_reported: false,
            events: 0,
            overflows: 0,
        })
    }

    /// The descriptor to wait on: readable when events are queued.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    /// Directories watched now.
    pub fn watches(&self) -> usize {
        self.dirs.len()
    }

    /// Adds a source and watches all of it; returns its index.
    pub fn add_source(
        &mut self,
        root: &Path,
        excludes: Excludes,
        skip: Vec<PathBuf>,
        one_file_system: bool,
    ) -> std::io::Result<usize> {
        let dev = std::fs::symlink_metadata(root)?.dev();
        self.sources.push(WatchedSource {
            root: root.to_path_buf(),
            dev,
            excludes,
            skip,
            one_file_system,
            unwatched: BTreeSet::new(),
        });
        let src = self.sources.len() - 1;
        self.watch_tree(src, b"");
        Ok(src)
    }

    /// Tries again to watch the subtrees left without watches (after the
    /// limit was raised, or directories were removed).
    pub fn retry_unwatched(&mut self) {
        for src in 0..self.sources.len() {
            let left = std::mem::take(&mut self.sources[src].unwatched);
            for rel in left {
                self.watch_tree(src, &rel);
            }
        }
    }

    /// Watches directory `rel` of source `src` and every directory below
    /// it that a backup would enter (excludes, skipped paths and other file
    /// systems left out, as the scanner does).
    pub fn watch_tree(&mut self, src: usize, rel: &[u8]) -> usize {
        let mut added = 0;
        let mut stack = vec![rel.to_vec()];
        while let Some(rel) = stack.pop() {
            let s = &self.sources[src];
            let path = if rel.is_empty() {
                s.root.clone()
            } else {
                s.root.join(OsStr::from_bytes(&rel))
            };
            if !rel.is_empty() && (s.excludes.excluded(&path, true) || s.skip.contains(&path)) {
                continue;
            }
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => {
                    if s.one_file_system && m.dev() != s.dev {
                        // A mount point: backed up as an empty directory.
                        continue;
                    }
                }
                _ => continue, // gone or not a directory any more
            }
            match self.inotify.watches().add(&path, mask()) {
                Ok(wd) => {
                    self.dirs.insert(wd, (src, rel.clone()));
                    added += 1;
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                    if !self.limit_reported {
                        self.limit_reported = true;
                        tracing::warn!(
                            "the inotify watch limit is reached (fs.inotify.max_user_watches = {}, {MAX_USER_WATCHES}): \
                             {} and what is below it get no watch and are scanned in full by every snapshot; \
                             raise the limit, e.g. `sysctl fs.inotify.max_user_watches=1048576` \
                             (and in /etc/sysctl.d/ to keep it)",
                            watch_limit().map_or("?".into(), |n| n.to_string()),
                            path.display()
                        );
                    }
                    self.sources[src].unwatched.insert(rel);
                    continue;
                }
                Err(e) => {
                    // Unreadable or vanished: the scan reports it if it matters.
                    tracing::debug!("no watch on {}: {e}", path.display());
                    continue;
                }
            }
            let Ok(rd) = std::fs::read_dir(&path) else {
                continue;
            };
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(join(&rel, e.file_name().as_bytes()));
                }
            }
        }
        added
    }

    /// Stops watching `rel` and everything below it (a directory moved
    /// away; if it moved within the source, its new place is watched anew).
    fn unwatch_tree(&mut self, src: usize, rel: &[u8]) {
        let prefix = [rel, b"/"].concat();
        let gone: Vec<WatchDescriptor> = self
            .dirs
            .iter()
            .filter(|(_, (s, r))| *s == src && (r == rel || r.starts_with(&prefix)))
            .map(|(wd, _)| wd.clone())
            .collect();
        for wd in gone {
            self.dirs.remove(&wd);
            let _ = self.inotify.watches().remove(wd);
        }
        self.sources[src]
            .unwatched
            .retain(|r| !(r == rel || r.starts_with(&prefix)));
    }

    /// Reads every queued event, marks `dirty[source]` and sets
    /// `touched[source]` for each source an event concerned. Returns the
    /// number of events read (0: none were queued).
    pub fn read(&mut self, dirty: &mut [Dirty], touched: &mut [bool]) -> std::io::Result<usize> {
        let mut count = 0;
        loop {
            // Collected first: handling an event may add watches, which
            // needs the Inotify the events borrow from.
            let mut batch: Vec<(Option<WatchDescriptor>, EventMask, Option<Vec<u8>>)> = Vec::new();
            match self.inotify.read_events(&mut self.buffer) {
                Ok(events) => {
                    for e in events {
                        let wd = (!e.mask.contains(EventMask::Q_OVERFLOW)).then_some(e.wd);
                        batch.push((wd, e.mask, e.name.map(|n| n.as_bytes().to_vec())));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(count),
                Err(e) => return Err(e),
            }
            if batch.is_empty() {
                return Ok(count);
            }
            count += batch.len();
            self.events += batch.len() as u64;
            for (wd, mask, name) in batch {
                self.handle(wd, mask, name, dirty, touched);
            }
        }
    }

    fn handle(
        &mut self,
        wd: Option<WatchDescriptor>,
        mask: EventMask,
        name: Option<Vec<u8>>,
        dirty: &mut [Dirty],
        touched: &mut [bool],
    ) {
        let Some(wd) = wd else {
            touched.fill(true);
            self.overflows += 1;
            tracing::warn!(
                "the inotify event queue overflowed (fs.inotify.max_queued_events): changes were lost, the next snapshot scans everything"
            );
            for d in dirty.iter_mut() {
                d.deep(b"");
            }
            return;
        };
        if mask.contains(EventMask::IGNORED) {
            self.dirs.remove(&wd);
            return;
        }
        let Some((src, dir)) = self.dirs.get(&wd).cloned() else {
            return; // a watch removed a moment ago
        };
        touched[src] = true;
        let d = &mut dirty[src];
        let Some(name) = name else {
            // The watched directory itself: its metadata lives in its
            // parent's tree. Deleted or moved, its parent's watch reports it.
            if dir.is_empty() {
                d.touch(&dir);
                if mask.intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF) {
                    tracing::error!(
                        "{} itself was moved or deleted; it is no longer watched",
                        self.sources[src].root.display()
                    );
                }
            } else {
                let (parent, base) = split(&dir);
                d.changed(parent, base);
            }
            return;
        };
        let rel = join(&dir, &name);
        d.changed(&dir, &name);
        if mask.contains(EventMask::ISDIR) {
            if mask.contains(EventMask::MOVED_FROM) {
                self.unwatch_tree(src, &rel);
            } else if mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
                // Watch first, then scan: whatever happens in it from now
                // on is reported, and what happened before is scanned.
                self.watch_tree(src, &rel);
                dirty[src].deep(&rel);
            }
        }
    }

    /// Marks the subtrees without a watch for a deep scan.
    pub fn mark_unwatched(&self, dirty: &mut [Dirty]) {
        for (s, d) in self.sources.iter().zip(dirty) {
            for rel in &s.unwatched {
                d.deep(rel);
            }
        }
    }
}
