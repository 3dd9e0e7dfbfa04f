//! The file-state cache: what the client knows about files it backed up
//! before, keyed by (device, inode) so a renamed file or directory is still
//! recognised. A file whose size, mtime and ctime are unchanged reuses its
//! chunk list and is not read at all.
//!
//! The cache lives per store (`<cache dir>/<store id>/files.sqlite`), is only
//! updated after a snapshot is committed, and is disposable: if it is
//! damaged it is recreated and the next backup simply reads more.
//!
//! Three more things live here:
//! - the store *generation* each entry was learnt in: once the store's
//!   generation moves on (garbage collection), a cached chunk list is no
//!   longer proof that the store holds those chunks, and the backup asks
//!   before relying on it;
//! - the trees of each source's last snapshot (with their generation), so
//!   a backup need not ask the store about directories that did not change;
//! - each tree's totals (files, directories, bytes below it), so an
//!   incremental snapshot that reuses a tree can still count its contents;
//! - delta signatures of chunks the client uploaded for files that change,
//!   so the next small edit of such a file is encoded against them without
//!   asking the server.

use crate::scan::TreeTotals;
use homesync_protocol::{ChunkId, Timestamp, TreeId};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What was stored for one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub size: u64,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub chunks: Vec<ChunkId>,
    pub extents: Vec<(u64, u64)>,
    /// The store generation in which the entry was checked, if it can
    /// vouch for an unchanged file at all. A file changed too recently to
    /// trust its timestamps is still recorded (`None`): its chunk list is
    /// the base for deltas of its next version.
    pub verified_in: Option<u64>,
}

/// The cache's entries in memory: a plain map, so the parallel backup
/// workers can share it while the database connection stays on one thread.
#[derive(Debug, Default)]
pub struct Known(HashMap<(u64, u64), Cached>);

impl Known {
    /// The cached contents of a file, if size, mtime and ctime all match.
    pub fn lookup(
        &self,
        dev: u64,
        ino: u64,
        size: u64,
        mtime: Timestamp,
        ctime: Timestamp,
    ) -> Option<&Cached> {
        self.0.get(&(dev, ino)).filter(|c| {
            c.verified_in.is_some() && c.size == size && c.mtime == mtime && c.ctime == ctime
        })
    }

    /// What was stored for this inode last time, whatever changed since:
    /// the previous version of a file, as a base for deltas.
    pub fn previous(&self, dev: u64, ino: u64) -> Option<&Cached> {
        self.0.get(&(dev, ino))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

pub struct FileCache {
    path: PathBuf,
    conn: Connection,
    pub known: Known,
    /// Cached signatures, read by the backup workers.
    pub signatures: SignatureCache,
    run: i64,
}

const SCHEMA_VERSION: i64 = 3;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS files(
    dev INTEGER NOT NULL, ino INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_s INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    ctime_s INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
    chunks BLOB NOT NULL, extents BLOB NOT NULL,
    verified_in INTEGER,
    run INTEGER NOT NULL,
    PRIMARY KEY(dev, ino)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS signatures(
    chunk BLOB PRIMARY KEY NOT NULL,
    signature BLOB NOT NULL,
    run INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS trees(
    source BLOB PRIMARY KEY NOT NULL,
    generation INTEGER NOT NULL,
    ids BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
";

/// Added after schema 3 without a version change (the other tables stay
/// valid), so it is created on every open.
const TOTALS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tree_totals(
    tree BLOB PRIMARY KEY NOT NULL,
    files INTEGER NOT NULL, dirs INTEGER NOT NULL,
    other INTEGER NOT NULL, bytes INTEGER NOT NULL,
    run INTEGER NOT NULL) WITHOUT ROWID;
";

/// One committed snapshot, as [`FileCache::record`] keeps it.
pub struct Record<'a> {
    pub source: &'a [u8],
    /// The store generation the snapshot was taken in.
    pub generation: u64,
    /// The files the scan saw (all of them, or an incremental scan's).
    pub files: &'a [((u64, u64), Cached)],
    /// Every directory's tree with its totals, reused ones included.
    pub trees: &'a [(TreeId, TreeTotals)],
    pub signatures: &'a [(ChunkId, Vec<u8>)],
    /// A full scan: what it did not see may be forgotten. An incremental
    /// scan saw only what changed, so it forgets nothing.
    pub complete: bool,
}

/// Signatures kept at most (about 12 KiB each for 1 MiB chunks): the
/// chunks of files that changed lately, the likeliest to change again.
pub const KEEP_SIGNATURES: usize = 4096;

/// Delta signatures of chunks this client uploaded, by chunk id. Reads go
/// through their own connection so the backup workers can share it.
pub struct SignatureCache(Mutex<Connection>);

impl SignatureCache {
    pub fn get(&self, chunk: &ChunkId) -> Option<Vec<u8>> {
        let conn = self.0.lock().unwrap_or_else(|e| e.into_inner());
        conn.prepare_cached("SELECT signature FROM signatures WHERE chunk = ?1")
            .and_then(|mut s| s.query_row([&chunk.0[..]], |r| r.get(0)).optional())
            .ok()
            .flatten()
    }
}

/// Entries not seen for this many runs are dropped. Runs count backups of
/// every source sharing the cache, so this is generous: a machine backing
/// up a dozen directories in turn still finds each one's entries.
const KEEP_RUNS: i64 = 64;

fn err(path: &Path) -> impl Fn(rusqlite::Error) -> crate::ClientError + '_ {
    move |e| crate::ClientError::Cache {
        path: path.to_path_buf(),
        why: e.to_string(),
    }
}

impl FileCache {
    /// Opens the cache at `path`, recreating it if it is unreadable.
    pub fn open(path: &Path) -> Result<FileCache, crate::ClientError> {
        match Self::try_open(path) {
            Ok(c) => Ok(c),
            Err(e) => {
                tracing::warn!(
                    "file-state cache {} is unusable ({e}); starting a new one",
                    path.display()
                );
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
                Self::try_open(path)
            }
        }
    }

    fn try_open(path: &Path) -> Result<FileCache, crate::ClientError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| crate::ClientError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let e = err(path);
        let conn = Connection::open(path).map_err(&e)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(&e)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(&e)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(&e)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(&e)?;
        if version != SCHEMA_VERSION {
            // An older layout: the cache is disposable, start afresh.
            conn.execute_batch(&format!(
                "BEGIN; DROP TABLE IF EXISTS files; DROP TABLE IF EXISTS signatures;
                 DROP TABLE IF EXISTS meta; DROP TABLE IF EXISTS trees; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))
            .map_err(&e)?;
        }
        conn.execute_batch(TOTALS_SCHEMA).map_err(&e)?;
        let meta = |key: &str| -> Result<Option<i64>, crate::ClientError> {
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()
                .map_err(&e)
        };
        let run = meta("run")?.unwrap_or(0);
        let mut entries = HashMap::new();
        {
            let mut st = conn
                .prepare("SELECT dev, ino, size, mtime_s, mtime_ns, ctime_s, ctime_ns, chunks, extents, verified_in FROM files")
                .map_err(&e)?;
            let rows = st
                .query_map([], |r| {
                    let chunks: Vec<u8> = r.get(7)?;
                    let extents: Vec<u8> = r.get(8)?;
                    Ok((
                        (r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64),
                        Cached {
                            size: r.get::<_, i64>(2)? as u64,
                            mtime: Timestamp {
                                sec: r.get(3)?,
                                nsec: r.get(4)?,
                            },
                            ctime: Timestamp {
                                sec: r.get(5)?,
                                nsec: r.get(6)?,
                            },
                            chunks: chunks
                                .chunks_exact(32)
                                .map(|c| ChunkId(c.try_into().expect("32 bytes")))
                                .collect(),
                            extents: extents
                                .chunks_exact(16)
                                .map(|c| {
                                    (
                                        u64::from_le_bytes(c[..8].try_into().expect("8")),
                                        u64::from_le_bytes(c[8..].try_into().expect("8")),
                                    )
                                })
                                .collect(),
                            verified_in: r.get::<_, Option<i64>>(9)?.map(|g| g as u64),
                        },
                    ))
                })
                .map_err(&e)?;
            for row in rows {
                let (k, v) = row.map_err(&e)?;
                entries.insert(k, v);
            }
        }
        let signatures = SignatureCache(Mutex::new(Connection::open(path).map_err(&e)?));
        Ok(FileCache {
            path: path.to_path_buf(),
            conn,
            known: Known(entries),
            signatures,
            run: run + 1,
        })
    }

    /// The trees of `source`'s last snapshot, if it was taken in store
    /// `generation`: the store holds every one of them.
    pub fn known_trees(&self, source: &[u8], generation: u64) -> HashSet<TreeId> {
        self.conn
            .query_row(
                "SELECT ids FROM trees WHERE source = ?1 AND generation = ?2",
                params![source, generation as i64],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .optional()
            .ok()
            .flatten()
            .map(|ids| {
                ids.chunks_exact(32)
                    .map(|c| TreeId(c.try_into().expect("32 bytes")))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The totals of a tree recorded by an earlier snapshot.
    pub fn totals(&self, tree: &TreeId) -> Option<TreeTotals> {
        self.conn
            .prepare_cached("SELECT files, dirs, other, bytes FROM tree_totals WHERE tree = ?1")
            .and_then(|mut st| {
                st.query_row([&tree.0[..]], |r| {
                    Ok(TreeTotals {
                        files: r.get::<_, i64>(0)? as u64,
                        dirs: r.get::<_, i64>(1)? as u64,
                        other: r.get::<_, i64>(2)? as u64,
                        bytes: r.get::<_, i64>(3)? as u64,
                    })
                })
                .optional()
            })
            .ok()
            .flatten()
    }

    /// Records a committed snapshot: its files, its trees, and new
    /// signatures; after a full scan, forgets what was not seen for a
    /// while. One transaction; the entries in memory follow.
    pub fn record(&mut self, r: &Record) -> Result<(), crate::ClientError> {
        let e = err(&self.path);
        let tx = self.conn.transaction().map_err(&e)?;
        {
            let mut ids: Vec<u8> = r.trees.iter().flat_map(|(t, _)| t.0).collect();
            if !r.complete {
                // An incremental snapshot adds to what the store is known
                // to hold, in the same generation.
                let old: Option<Vec<u8>> = tx
                    .query_row(
                        "SELECT ids FROM trees WHERE source = ?1 AND generation = ?2",
                        params![r.source, r.generation as i64],
                        |row| row.get(0),
                    )
                    .optional()
                    .map_err(&e)?;
                if let Some(old) = old {
                    let new: HashSet<&[u8]> = ids.chunks_exact(32).collect();
                    let extra: Vec<u8> = old
                        .chunks_exact(32)
                        .filter(|c| !new.contains(c))
                        .flatten()
                        .copied()
                        .collect();
                    ids.extend(extra);
                }
            }
            tx.execute(
                "INSERT OR REPLACE INTO trees(source, generation, ids) VALUES (?1, ?2, ?3)",
                params![r.source, r.generation as i64, ids],
            )
            .map_err(&e)?;
            let mut st = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO tree_totals(tree, files, dirs, other, bytes, run)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(&e)?;
            for (id, t) in r.trees {
                st.execute(params![
                    &id.0[..],
                    t.files as i64,
                    t.dirs as i64,
                    t.other as i64,
                    t.bytes as i64,
                    self.run
                ])
                .map_err(&e)?;
            }
            let mut st = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO signatures(chunk, signature, run) VALUES (?1, ?2, ?3)",
                )
                .map_err(&e)?;
            for (id, sig) in r.signatures {
                st.execute(params![&id.0[..], sig, self.run]).map_err(&e)?;
            }
            let mut st = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO files(dev, ino, size, mtime_s, mtime_ns, ctime_s, ctime_ns, chunks, extents, verified_in, run)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )
                .map_err(&e)?;
            for ((dev, ino), c) in r.files {
                let chunks: Vec<u8> = c.chunks.iter().flat_map(|id| id.0).collect();
                let extents: Vec<u8> = c
                    .extents
                    .iter()
                    .flat_map(|(o, l)| o.to_le_bytes().into_iter().chain(l.to_le_bytes()))
                    .collect();
                st.execute(params![
                    *dev as i64,
                    *ino as i64,
                    c.size as i64,
                    c.mtime.sec,
                    c.mtime.nsec,
                    c.ctime.sec,
                    c.ctime.nsec,
                    chunks,
                    extents,
                    c.verified_in.map(|g| g as i64),
                    self.run
                ])
                .map_err(&e)?;
            }
        }
        if r.complete {
            tx.execute("DELETE FROM files WHERE run < ?1", [self.run - KEEP_RUNS])
                .map_err(&e)?;
            tx.execute(
                "DELETE FROM tree_totals WHERE run < ?1",
                [self.run - KEEP_RUNS],
            )
            .map_err(&e)?;
        }
        tx.execute(
            "DELETE FROM signatures WHERE chunk IN
             (SELECT chunk FROM signatures ORDER BY run DESC LIMIT -1 OFFSET ?1)",
            [KEEP_SIGNATURES as i64],
        )
        .map_err(&e)?;
        tx.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('run', ?1)",
            [self.run],
        )
        .map_err(&e)?;
        tx.commit().map_err(&e)?;
        // A long-running client (the daemon) keeps using this cache.
        if r.complete {
            let seen: HashSet<(u64, u64)> = r.files.iter().map(|(k, _)| *k).collect();
            self.known.0.retain(|k, _| seen.contains(k));
        }
        for (k, c) in r.files {
            self.known.0.insert(*k, c.clone());
        }
        self.run += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_reopen_and_mismatches_miss() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s/files.sqlite");
        let t = |s| Timestamp { sec: s, nsec: 7 };
        let c = Cached {
            size: 10,
            mtime: t(1),
            ctime: t(2),
            chunks: vec![ChunkId([3; 32])],
            extents: vec![(0, 4), (8, 2)],
            verified_in: Some(7),
        };
        let unverified = Cached {
            verified_in: None,
            ..c.clone()
        };
        let mut cache = FileCache::open(&p).unwrap();
        let totals = TreeTotals {
            files: 2,
            dirs: 1,
            other: 0,
            bytes: 20,
        };
        cache
            .record(&Record {
                source: b"/home/a",
                generation: 7,
                files: &[((1, 2), c.clone()), ((1, 5), unverified.clone())],
                trees: &[(TreeId([9; 32]), totals)],
                signatures: &[(ChunkId([4; 32]), vec![1, 2, 3])],
                complete: true,
            })
            .unwrap();
        // An incremental snapshot adds to the known trees.
        cache
            .record(&Record {
                source: b"/home/a",
                generation: 7,
                files: &[],
                trees: &[(TreeId([8; 32]), totals)],
                signatures: &[],
                complete: false,
            })
            .unwrap();
        drop(cache);
        let cache = FileCache::open(&p).unwrap();
        assert!(cache.known_trees(b"/home/a", 7).contains(&TreeId([9; 32])));
        assert!(cache.known_trees(b"/home/a", 7).contains(&TreeId([8; 32])));
        assert_eq!(cache.totals(&TreeId([9; 32])), Some(totals));
        assert_eq!(cache.totals(&TreeId([7; 32])), None);
        assert!(cache.known_trees(b"/home/a", 8).is_empty());
        assert!(cache.known_trees(b"/home/b", 7).is_empty());
        assert_eq!(cache.signatures.get(&ChunkId([4; 32])), Some(vec![1, 2, 3]));
        assert_eq!(cache.signatures.get(&ChunkId([5; 32])), None);
        assert_eq!(cache.known.lookup(1, 5, 10, t(1), t(2)), None);
        assert_eq!(cache.known.previous(1, 5), Some(&unverified));
        assert_eq!(cache.known.lookup(1, 2, 10, t(1), t(2)), Some(&c));
        assert_eq!(cache.known.lookup(1, 2, 10, t(1), t(3)), None);
        assert_eq!(cache.known.lookup(1, 2, 11, t(1), t(2)), None);
        assert_eq!(cache.known.lookup(1, 3, 10, t(1), t(2)), None);
    }

    #[test]
    fn a_damaged_cache_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("files.sqlite");
        std::fs::write(
            &p,
            b"this is not a database, just junk bytes that fill a page",
        )
        .unwrap();
        assert!(FileCache::open(&p).unwrap().known.is_empty());
    }
}
