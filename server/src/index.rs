//! The SQLite index: which pack holds each blob, and which snapshots exist.
//!
//! The index is the store's only mutable state. Rows for blobs are inserted
//! only after their pack is durable; a snapshot row only in a transaction
//! that first finds its root tree. Schema changes bump `PRAGMA user_version`.

use homesync_protocol::{BlobId, BlobKind, Snapshot, SnapshotId, StoreError};
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;

use crate::pack::PackEntry;

pub const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE packs(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL
);
CREATE TABLE blobs(
    id BLOB PRIMARY KEY NOT NULL,
    kind INTEGER NOT NULL,
    pack INTEGER NOT NULL REFERENCES packs(id),
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE snapshots(
    id BLOB PRIMARY KEY NOT NULL,
    time INTEGER NOT NULL,
    machine TEXT NOT NULL,
    root BLOB NOT NULL,
    data BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE meta(
    key TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Version 1 had no `meta` table (generation 0 throughout).
const MIGRATE_1_TO_2: &str = "
CREATE TABLE meta(
    key TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Where a blob is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobLocation {
    pub pack: String,
    pub kind: BlobKind,
    pub offset: u64,
    pub length: u32,
}

fn sql(e: rusqlite::Error) -> StoreError {
    StoreError::Index(e.to_string())
}

pub struct Index {
    conn: Connection,
}

impl Index {
    /// Opens (creating if `create`) the index at `path`. A store this user
    /// may not write (read-only media, another user's store) opens read-only:
    /// listing and restoring work, backing up fails when it first writes.
    pub fn open(path: &Path, create: bool) -> Result<Index, StoreError> {
        if !create && !path.exists() {
            return Err(StoreError::NotFound(path.display().to_string()));
        }
        let writable = |conn: &Connection| -> rusqlite::Result<()> {
            let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                conn.pragma_update(None, "journal_mode", "WAL")?;
            }
            // FULL: a committed snapshot must survive power loss, not just a crash.
            conn.pragma_update(None, "synchronous", "FULL")
        };
        let named = |e: rusqlite::Error| StoreError::Index(format!("{}: {e}", path.display()));
        let conn = match Connection::open(path).and_then(|c| writable(&c).map(|()| c)) {
            Ok(c) => c,
            Err(e) if !create && e.sqlite_error_code() == Some(rusqlite::ErrorCode::ReadOnly) => {
                // Without write access SQLite cannot make the WAL's shared-
                // memory file either, so the file is opened as immutable:
                // fine for read-only media; a writer working on the same
                // store meanwhile is not seen.
                tracing::warn!("{}: not writable, opened read-only", path.display());
                let escaped = path
                    .display()
                    .to_string()
                    .replace('%', "%25")
                    .replace('?', "%3f")
                    .replace('#', "%23");
                let uri = format!("file:{escaped}?immutable=1");
                Connection::open_with_flags(
                    uri,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                        | rusqlite::OpenFlags::SQLITE_OPEN_URI,
                )
                .map_err(named)?
            }
            Err(e) => return Err(named(e)),
        };
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(sql)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql)?;
        match version {
            0 => {
                conn.execute_batch(&format!(
                    "BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                ))
                .map_err(sql)?;
            }
            SCHEMA_VERSION => {}
            1 => {
                conn.execute_batch(&format!(
                    "BEGIN IMMEDIATE; {MIGRATE_1_TO_2} PRAGMA user_version = 2; COMMIT;"
                ))
                .or_else(|e| {
                    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ReadOnly) {
                        // Read-only media: readable as it is (generation 0).
                        return Ok(());
                    }
                    Err(StoreError::Index(format!(
                        "{}: upgrading the index from version 1: {e}",
                        path.display()
                    )))
                })?;
            }
            v => {
                return Err(StoreError::Index(format!(
                    "{}: schema version {v} is newer than this homesync ({SCHEMA_VERSION})",
                    path.display()
                )));
            }
        }
        Ok(Index { conn })
    }

    /// See [`homesync_protocol::Repository::generation`]: 0 until blobs
    /// are first removed.
    pub fn generation(&self) -> Result<u64, StoreError> {
        self.conn
            .query_row(
                "SELECT COALESCE((SELECT value FROM meta WHERE key = 'generation'), 0)",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|g| g as u64)
            .or_else(|e| match &e {
                // A version-1 index on read-only media has no meta table.
                rusqlite::Error::SqliteFailure(_, Some(m)) if m.contains("no such table") => Ok(0),
                _ => Err(sql(e)),
            })
    }

    /// Moves to a new generation; call in the same breath as removing blobs.
    pub fn bump_generation(&mut self) -> Result<u64, StoreError> {
        self.conn
            .query_row(
                "INSERT INTO meta(key, value) VALUES ('generation', 1)
                 ON CONFLICT(key) DO UPDATE SET value = value + 1 RETURNING value",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|g| g as u64)
            .map_err(sql)
    }

    pub fn has(&self, id: &BlobId) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached("SELECT 1 FROM blobs WHERE id = ?1")
            .and_then(|mut s| s.exists([&id.0[..]]))
            .map_err(sql)
    }

    pub fn locate(&self, id: &BlobId) -> Result<Option<BlobLocation>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT p.name, b.kind, b.offset, b.length FROM blobs b JOIN packs p ON p.id = b.pack WHERE b.id = ?1",
            )
            .and_then(|mut s| {
                s.query_row([&id.0[..]], |r| {
                    let kind: u8 = r.get(1)?;
                    Ok((r.get::<_, String>(0)?, kind, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?))
                })
                .optional()
            })
            .map_err(sql)?
            .map(|(pack, kind, offset, length)| {
                Ok(BlobLocation {
                    pack,
                    kind: BlobKind::from_u8(kind)
                        .ok_or_else(|| StoreError::Index(format!("blob {id} has unknown kind {kind}")))?,
                    offset: offset as u64,
                    length: length as u32,
                })
            })
            .transpose()
    }

    /// Records a durable pack and its blobs in one transaction. A blob already
    /// indexed elsewhere keeps its old location (the new copy is garbage).
    pub fn add_pack(
        &mut self,
        name: &str,
        size: u64,
        entries: &[PackEntry],
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(sql)?;
        tx.execute(
            "INSERT OR IGNORE INTO packs(name, size) VALUES (?1, ?2)",
            params![name, size as i64],
        )
        .map_err(sql)?;
        let pack: i64 = tx
            .query_row("SELECT id FROM packs WHERE name = ?1", [name], |r| r.get(0))
            .map_err(sql)?;
        {
            let mut st = tx
                .prepare_cached("INSERT OR IGNORE INTO blobs(id, kind, pack, offset, length) VALUES (?1, ?2, ?3, ?4, ?5)")
                .map_err(sql)?;
            for e in entries {
                st.execute(params![
                    &e.id.0[..],
                    e.kind as u8,
                    pack,
                    e.offset as i64,
                    e.length as i64
                ])
                .map_err(sql)?;
            }
        }
        tx.commit().map_err(sql)
    }

    /// Adds the snapshot row, in one transaction that first checks its root
    /// tree and its own blob are indexed.
    pub fn add_snapshot(
        &mut self,
        id: &SnapshotId,
        snapshot: &Snapshot,
        encoded: &[u8],
    ) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql)?;
        for (what, blob) in [
            ("root tree", BlobId::from(snapshot.root_tree())),
            ("snapshot blob", BlobId::from(*id)),
        ] {
            let found = tx
                .prepare_cached("SELECT 1 FROM blobs WHERE id = ?1")
                .and_then(|mut s| s.exists([&blob.0[..]]))
                .map_err(sql)?;
            if !found {
                return Err(StoreError::Refused(format!(
                    "snapshot {id}: its {what} {blob} is not in the store"
                )));
            }
        }
        tx.execute(
            "INSERT OR IGNORE INTO snapshots(id, time, machine, root, data) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![&id.0[..], snapshot.time.sec, snapshot.machine, &snapshot.root_tree().0[..], encoded],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)
    }

    /// Deletes the snapshot row `id`.
    pub fn remove_snapshot(&mut self, id: &SnapshotId) -> Result<(), StoreError> {
        let n = self
            .conn
            .execute("DELETE FROM snapshots WHERE id = ?1", [&id.0[..]])
            .map_err(sql)?;
        if n == 0 {
            return Err(StoreError::NoSnapshot(id.to_hex()));
        }
        Ok(())
    }

    /// All snapshots, oldest first; each row is checked against its id.
    pub fn snapshots(&self) -> Result<Vec<(SnapshotId, Snapshot)>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT id, data FROM snapshots ORDER BY time, id")
            .map_err(sql)?;
        let rows = st
            .query_map([], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(sql)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, data) = row.map_err(sql)?;
            // One damaged row must not hide every other snapshot: it is
            // reported and skipped.
            let Some(id) = SnapshotId::from_slice(&id) else {
                tracing::error!("snapshot row with a malformed id skipped");
                continue;
            };
            if SnapshotId::of(&data) != id {
                tracing::error!("snapshot {id}: its row does not hash to its id; skipped");
                continue;
            }
            match Snapshot::decode(&data) {
                Ok(snap) => out.push((id, snap)),
                Err(e) => tracing::error!("snapshot {id}: {e}; skipped"),
            }
        }
        Ok(out)
    }
}

/// A pack as the index records it (for verification, see `check.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackRow {
    pub id: i64,
    pub name: String,
    pub size: u64,
}

/// A blob as the index records it, `pack` being a [`PackRow::id`]
/// (compact: a store holds about a million per TiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRow {
    pub id: BlobId,
    pub kind: BlobKind,
    pub pack: i64,
    pub offset: u64,
    pub length: u32,
}

/// A snapshot row as stored: `(id, data)`, unchecked.
pub type SnapshotRow = (Vec<u8>, Vec<u8>);

/// Everything the index says, read in one transaction (for verification).
#[derive(Debug, Default)]
pub struct IndexListing {
    pub packs: Vec<PackRow>,
    pub blobs: Vec<BlobRow>,
    /// Rows that cannot even be described as a blob (malformed id, unknown
    /// kind, negative offset): index damage.
    pub bad_rows: Vec<String>,
}

impl Index {
    /// Every pack and blob row, read in one transaction, so the two agree.
    pub fn listing(&self) -> Result<IndexListing, StoreError> {
        let tx = self.conn.unchecked_transaction().map_err(sql)?;
        let mut out = IndexListing::default();
        {
            let mut st = tx
                .prepare("SELECT id, name, size FROM packs ORDER BY id")
                .map_err(sql)?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(sql)?;
            for row in rows {
                let (id, name, size) = row.map_err(sql)?;
                if size < 0 {
                    out.bad_rows
                        .push(format!("pack {name} has a negative size {size}"));
                }
                out.packs.push(PackRow {
                    id,
                    name,
                    size: size.max(0) as u64,
                });
            }
            let mut st = tx
                .prepare("SELECT id, kind, pack, offset, length FROM blobs")
                .map_err(sql)?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                })
                .map_err(sql)?;
            for row in rows {
                let (id, kind, pack, offset, length) = row.map_err(sql)?;
                let Some(id) = BlobId::from_slice(&id) else {
                    out.bad_rows
                        .push(format!("a blob row with a {}-byte id", id.len()));
                    continue;
                };
                let kind = u8::try_from(kind).ok().and_then(BlobKind::from_u8);
                match (kind, u64::try_from(offset), u32::try_from(length)) {
                    (Some(kind), Ok(offset), Ok(length)) => out.blobs.push(BlobRow {
                        id,
                        kind,
                        pack,
                        offset,
                        length,
                    }),
                    _ => out.bad_rows.push(format!(
                        "blob {id}: malformed row (kind {kind:?}, offset {offset}, length {length})"
                    )),
                }
            }
        }
        tx.finish().map_err(sql)?;
        Ok(out)
    }

    /// Every snapshot row as stored, `(id, data)`, nothing checked (unlike
    /// [`Index::snapshots`], which skips damaged rows): verification
    /// reports each damaged row.
    pub fn snapshot_rows(&self) -> Result<Vec<SnapshotRow>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT id, data FROM snapshots ORDER BY time, id")
            .map_err(sql)?;
        let rows = st
            .query_map([], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(sql)?;
        rows.collect::<Result<_, _>>().map_err(sql)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_index_is_upgraded_and_generations_move_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let v1 = SCHEMA.split("CREATE TABLE meta").next().unwrap();
        Connection::open(&path)
            .unwrap()
            .execute_batch(&format!("{v1} PRAGMA user_version = 1;"))
            .unwrap();
        let mut index = Index::open(&path, false).unwrap();
        assert_eq!(index.generation().unwrap(), 0);
        assert_eq!(index.bump_generation().unwrap(), 1);
        assert_eq!(index.bump_generation().unwrap(), 2);
        drop(index);
        let index = Index::open(&path, false).unwrap();
        assert_eq!(index.generation().unwrap(), 2);
        let version: i64 = index
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }
}
