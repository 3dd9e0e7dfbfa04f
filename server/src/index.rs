//! The SQLite index: which pack holds each blob, and which snapshots exist.
//!
//! The index is the store's only mutable state. Rows for blobs are inserted
//! only after their pack is durable; a snapshot row only in a transaction
//! that first finds its root tree. Schema changes bump `PRAGMA user_version`.

use homesync_protocol::{BlobId, BlobKind, Snapshot, SnapshotId, StoreError};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::{HashMap, HashSet};
use std::path::Path;

use crate::pack::PackEntry;

pub const SCHEMA_VERSION: i64 = 4;

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
CREATE TABLE sessions(
    id INTEGER PRIMARY KEY,
    generation INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    pid_start INTEGER NOT NULL,
    what TEXT NOT NULL
);
CREATE TABLE condemned(
    id BLOB PRIMARY KEY NOT NULL,
    generation INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE pack_claims(
    name TEXT PRIMARY KEY NOT NULL,
    pid INTEGER NOT NULL,
    pid_start INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE jobs(
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    result TEXT NOT NULL,
    summary TEXT NOT NULL,
    numbers TEXT NOT NULL
);
CREATE INDEX jobs_by_kind ON jobs(kind, started_ms);
CREATE TABLE running_jobs(
    kind TEXT PRIMARY KEY NOT NULL,
    pid INTEGER NOT NULL,
    pid_start INTEGER NOT NULL,
    started INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Version 1 had no `meta` table (generation 0 throughout).
const MIGRATE_1_TO_2: &str = "
CREATE TABLE IF NOT EXISTS meta(
    key TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Version 3 added garbage collection's bookkeeping: open sessions and
/// condemned blobs.
const MIGRATE_2_TO_3: &str = "
CREATE TABLE IF NOT EXISTS sessions(
    id INTEGER PRIMARY KEY,
    generation INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    pid_start INTEGER NOT NULL,
    what TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS condemned(
    id BLOB PRIMARY KEY NOT NULL,
    generation INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pack_claims(
    name TEXT PRIMARY KEY NOT NULL,
    pid INTEGER NOT NULL,
    pid_start INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Version 4 added the server's jobs (see `crate::jobs`): finished runs,
/// and the kinds running now (the cross-process job lock).
const MIGRATE_3_TO_4: &str = "
CREATE TABLE IF NOT EXISTS jobs(
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    result TEXT NOT NULL,
    summary TEXT NOT NULL,
    numbers TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_kind ON jobs(kind, started_ms);
CREATE TABLE IF NOT EXISTS running_jobs(
    kind TEXT PRIMARY KEY NOT NULL,
    pid INTEGER NOT NULL,
    pid_start INTEGER NOT NULL,
    started INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Indexes added without a schema version of their own: an older homesync
/// uses the same tables and SQLite keeps the index up to date for it. Made
/// on every writable open (`IF NOT EXISTS`: nothing to do once made; a
/// store of a million blobs takes a second or two the first time).
/// `blobs_by_pack`: `blobs.pack` references `packs(id)` and the bundled
/// SQLite enforces foreign keys, so without it every deleted pack row
/// scanned the whole `blobs` table, as did every question about one pack's
/// blobs (garbage collection asks for each pack it deletes or rewrites).
const INDEXES: &str = "CREATE INDEX IF NOT EXISTS blobs_by_pack ON blobs(pack);";

/// Where blob `?1` is: its pack's name, kind, offset and length. The pack's
/// name comes from a subquery, not a join: this bundled SQLite (STAT4)
/// re-compiled the join form on every execution, because the join's plan
/// may depend on the bound value (2 % of a restoring server's CPU in the
/// parser).
const LOCATE: &str = "SELECT (SELECT name FROM packs WHERE id = b.pack), b.kind, b.offset, b.length
     FROM blobs b WHERE b.id = ?1";

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
    /// A write transaction that takes the write lock at once: a deferred
    /// one that read first fails with "database is locked", without
    /// waiting, when another process wrote meanwhile.
    fn write_tx(&mut self) -> Result<rusqlite::Transaction<'_>, StoreError> {
        self.conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql)
    }

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
            1..SCHEMA_VERSION => {
                let steps: String = [MIGRATE_1_TO_2, MIGRATE_2_TO_3, MIGRATE_3_TO_4]
                    [version as usize - 1..]
                    .concat();
                conn.execute_batch(&format!(
                    "BEGIN IMMEDIATE; {steps} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                ))
                .or_else(|e| {
                    // A failed batch leaves its transaction open.
                    let _ = conn.execute_batch("ROLLBACK");
                    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ReadOnly) {
                        // Read-only media: readable as it is (generation 0).
                        return Ok(());
                    }
                    Err(StoreError::Index(format!(
                        "{}: upgrading the index from version {version}: {e}",
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
        if let Err(e) = conn.execute_batch(INDEXES) {
            // Read-only media: only slower to collect garbage on, and that
            // needs a writable store anyway.
            if e.sqlite_error_code() != Some(rusqlite::ErrorCode::ReadOnly) {
                return Err(named(e));
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

    /// Whether the store holds `id` for writers: a condemned blob (see
    /// [`crate::gc`]) is still readable but counts as absent, so nothing
    /// new comes to depend on it.
    pub fn has(&self, id: &BlobId) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT 1 FROM blobs WHERE id = ?1
                 AND NOT EXISTS (SELECT 1 FROM condemned WHERE id = ?1)",
            )
            .and_then(|mut s| s.exists([&id.0[..]]))
            .map_err(sql)
    }

    pub fn locate(&self, id: &BlobId) -> Result<Option<BlobLocation>, StoreError> {
        Self::locate_in(&self.conn, id)
    }

    /// Where each of `ids` is, in one read transaction: a batch of reads
    /// (`GetBatch`) pays for one transaction, not one per blob.
    pub fn locate_many(&self, ids: &[BlobId]) -> Result<Vec<Option<BlobLocation>>, StoreError> {
        let tx = self.conn.unchecked_transaction().map_err(sql)?;
        let found = ids
            .iter()
            .map(|id| Self::locate_in(&tx, id))
            .collect::<Result<Vec<_>, _>>()?;
        tx.finish().map_err(sql)?;
        Ok(found)
    }

    fn locate_in(conn: &Connection, id: &BlobId) -> Result<Option<BlobLocation>, StoreError> {
        conn.prepare_cached(LOCATE)
            .and_then(|mut s| {
                s.query_row([&id.0[..]], |r| {
                    let kind: u8 = r.get(1)?;
                    Ok((
                        r.get::<_, Option<String>>(0)?,
                        kind,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                })
                .optional()
            })
            .map_err(sql)?
            .map(|(pack, kind, offset, length)| {
                Ok(BlobLocation {
                    pack: pack.ok_or_else(|| {
                        StoreError::Index(format!("blob {id} names a pack the index does not have"))
                    })?,
                    kind: BlobKind::from_u8(kind).ok_or_else(|| {
                        StoreError::Index(format!("blob {id} has unknown kind {kind}"))
                    })?,
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
        let tx = self.write_tx()?;
        tx.execute(
            "INSERT OR IGNORE INTO packs(name, size) VALUES (?1, ?2)",
            params![name, size as i64],
        )
        .map_err(sql)?;
        let pack: i64 = tx
            .query_row("SELECT id FROM packs WHERE name = ?1", [name], |r| r.get(0))
            .map_err(sql)?;
        tx.execute("DELETE FROM pack_claims WHERE name = ?1", [name])
            .map_err(sql)?;
        {
            // A condemned blob uploaded again lives on in its new copy.
            let mut revive = tx
                .prepare_cached("DELETE FROM condemned WHERE id = ?1")
                .map_err(sql)?;
            let mut keep = tx
                .prepare_cached("INSERT OR IGNORE INTO blobs(id, kind, pack, offset, length) VALUES (?1, ?2, ?3, ?4, ?5)")
                .map_err(sql)?;
            let mut replace = tx
                .prepare_cached("INSERT OR REPLACE INTO blobs(id, kind, pack, offset, length) VALUES (?1, ?2, ?3, ?4, ?5)")
                .map_err(sql)?;
            for e in entries {
                let revived = revive.execute([&e.id.0[..]]).map_err(sql)? > 0;
                let st = if revived { &mut replace } else { &mut keep };
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
        let tx = self.write_tx()?;
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

/// A process that may be writing to the store, and the store generation
/// it began in (see [`crate::gc`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub id: i64,
    pub generation: u64,
    pub pid: u32,
    /// The process's start time in clock ticks after boot (`/proc/PID/stat`
    /// field 22): with the pid, it tells a live process from a reused pid.
    pub pid_start: u64,
    pub what: String,
}

/// Bytes in a pack that index rows still point to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackUsage {
    /// The pack's row id (a [`BlobRow::pack`]).
    pub id: i64,
    pub name: String,
    pub size: u64,
    pub blobs: u64,
    pub live_bytes: u64,
}

/// A pack garbage collection wrote, durable, for [`Index::relocate`]: each
/// entry with the id of the pack its blob was copied from.
#[derive(Debug, Clone, Copy)]
pub struct Relocated<'a> {
    pub name: &'a str,
    pub size: u64,
    pub moves: &'a [(PackEntry, i64)],
}

/// What one sweep removed from the index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    pub blobs: u64,
    pub bytes: u64,
    /// Condemned blobs that must wait for older sessions to end.
    pub deferred: u64,
}

/// Garbage collection's bookkeeping. Every decision that makes deleting
/// safe is taken inside one transaction here, so two processes sharing a
/// store see each other's sessions and condemnations.
impl Index {
    /// Registers a writer; returns its row id and the generation it began in.
    pub fn begin_session(
        &mut self,
        pid: u32,
        pid_start: u64,
        what: &str,
    ) -> Result<(i64, u64), StoreError> {
        let tx = self.write_tx()?;
        let generation: i64 = tx
            .query_row(
                "SELECT COALESCE((SELECT value FROM meta WHERE key = 'generation'), 0)",
                [],
                |r| r.get(0),
            )
            .map_err(sql)?;
        tx.execute(
            "INSERT INTO sessions(generation, pid, pid_start, what) VALUES (?1, ?2, ?3, ?4)",
            params![generation, pid, pid_start as i64, what],
        )
        .map_err(sql)?;
        let id = tx.last_insert_rowid();
        tx.commit().map_err(sql)?;
        Ok((id, generation as u64))
    }

    pub fn end_session(&mut self, id: i64) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM sessions WHERE id = ?1", [id])
            .map(drop)
            .map_err(sql)
    }

    pub fn sessions(&self) -> Result<Vec<SessionRow>, StoreError> {
        sessions(&self.conn)
    }

    /// Every snapshot, refusing (not skipping) a damaged row: a collector
    /// that missed a snapshot would delete what it references.
    pub fn snapshots_strict(&self) -> Result<Vec<(SnapshotId, Snapshot)>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT id, data FROM snapshots")
            .map_err(sql)?;
        let rows = st
            .query_map([], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(sql)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, data) = row.map_err(sql)?;
            let id = SnapshotId::from_slice(&id)
                .filter(|id| SnapshotId::of(&data) == *id)
                .ok_or_else(|| StoreError::Index("a snapshot row is damaged".into()))?;
            let snap = Snapshot::decode(&data)
                .map_err(|e| StoreError::Index(format!("snapshot {id}: {e}")))?;
            out.push((id, snap));
        }
        Ok(out)
    }

    /// Moves to a new generation, revives condemned blobs in `reachable`
    /// and condemns every other blob in it. Returns the new generation and
    /// how many blobs were condemned and revived.
    pub fn condemn(&mut self, reachable: &HashSet<BlobId>) -> Result<(u64, u64, u64), StoreError> {
        let tx = self.write_tx()?;
        let condemned: Vec<BlobId> = query_ids(&tx, "SELECT id FROM condemned", [])?;
        let live: Vec<BlobId> = query_ids(
            &tx,
            "SELECT id FROM blobs WHERE id NOT IN (SELECT id FROM condemned)",
            [],
        )?;
        // A new generation only when something is condemned: otherwise no
        // blob a client may rely on can leave, and a daily collection of a
        // store without garbage would make every client re-check its cache.
        let doomed = live.iter().any(|id| !reachable.contains(id));
        let generation: i64 = if doomed {
            tx.query_row(
                "INSERT INTO meta(key, value) VALUES ('generation', 1)
                 ON CONFLICT(key) DO UPDATE SET value = value + 1 RETURNING value",
                [],
                |r| r.get(0),
            )
        } else {
            tx.query_row(
                "SELECT COALESCE((SELECT value FROM meta WHERE key = 'generation'), 0)",
                [],
                |r| r.get(0),
            )
        }
        .map_err(sql)?;
        let (mut revived, mut added) = (0, 0);
        {
            let mut revive = tx
                .prepare("DELETE FROM condemned WHERE id = ?1")
                .map_err(sql)?;
            for id in condemned.iter().filter(|id| reachable.contains(id)) {
                revived += revive.execute([&id.0[..]]).map_err(sql)? as u64;
            }
            let mut condemn = tx
                .prepare("INSERT OR IGNORE INTO condemned(id, generation) VALUES (?1, ?2)")
                .map_err(sql)?;
            for id in live.iter().filter(|id| !reachable.contains(id)) {
                added += condemn
                    .execute(params![&id.0[..], generation])
                    .map_err(sql)? as u64;
            }
        }
        tx.commit().map_err(sql)?;
        Ok((generation as u64, added, revived))
    }

    /// Takes condemned blobs back (they turned out to be referenced).
    pub fn revive(&mut self, ids: &[BlobId]) -> Result<u64, StoreError> {
        let tx = self.write_tx()?;
        let mut n = 0;
        {
            let mut st = tx
                .prepare("DELETE FROM condemned WHERE id = ?1")
                .map_err(sql)?;
            for id in ids {
                n += st.execute([&id.0[..]]).map_err(sql)? as u64;
            }
        }
        tx.commit().map_err(sql)?;
        Ok(n)
    }

    /// The snapshot ids, to notice commits made while marking.
    pub fn snapshot_ids(&self) -> Result<HashSet<SnapshotId>, StoreError> {
        query_ids(&self.conn, "SELECT id FROM snapshots", [])
    }

    /// Deletes the index rows of condemned blobs no open session can still
    /// refer to: those condemned in a generation no later than the one the
    /// oldest live session began in (all of them when none is open).
    /// Sessions of dead processes (`alive` says which) are dropped first.
    /// Returns `None`, deleting nothing, if the snapshots are no longer
    /// `expected`: something was committed since the caller marked.
    pub fn sweep(
        &mut self,
        expected: &HashSet<SnapshotId>,
        alive: &dyn Fn(&SessionRow) -> bool,
    ) -> Result<Option<Swept>, StoreError> {
        let tx = self.write_tx()?;
        let now: HashSet<SnapshotId> = query_ids(&tx, "SELECT id FROM snapshots", [])?;
        if &now != expected {
            return Ok(None);
        }
        let mut oldest = i64::MAX;
        for s in sessions(&tx)? {
            if alive(&s) {
                oldest = oldest.min(s.generation as i64);
            } else {
                tracing::info!(
                    "dropping the session of dead process {} ({})",
                    s.pid,
                    s.what
                );
                tx.execute("DELETE FROM sessions WHERE id = ?1", [s.id])
                    .map_err(sql)?;
            }
        }
        let (blobs, bytes): (i64, i64) = tx
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(b.length), 0) FROM blobs b JOIN condemned c ON c.id = b.id
                 WHERE c.generation <= ?1",
                [oldest],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(sql)?;
        tx.execute(
            "DELETE FROM blobs WHERE id IN (SELECT id FROM condemned WHERE generation <= ?1)",
            [oldest],
        )
        .map_err(sql)?;
        tx.execute("DELETE FROM condemned WHERE generation <= ?1", [oldest])
            .map_err(sql)?;
        let deferred: i64 = tx
            .query_row("SELECT COUNT(*) FROM condemned", [], |r| r.get(0))
            .map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(Some(Swept {
            blobs: blobs as u64,
            bytes: bytes as u64,
            deferred: deferred as u64,
        }))
    }

    /// Every pack with the bytes index rows still point to, by name: two
    /// plain reads in one transaction. (The join this replaced scanned
    /// `blobs` once per pack when it had no index by pack: 0.75 s for 85
    /// packs of a 64,000-blob store.)
    pub fn pack_usage(&self) -> Result<Vec<PackUsage>, StoreError> {
        let tx = self.conn.unchecked_transaction().map_err(sql)?;
        let mut per_pack: HashMap<i64, (u64, u64)> = HashMap::new();
        {
            let mut st = tx
                .prepare("SELECT pack, COUNT(*), SUM(length) FROM blobs GROUP BY pack")
                .map_err(sql)?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(sql)?;
            for row in rows {
                let (pack, blobs, bytes) = row.map_err(sql)?;
                per_pack.insert(pack, (blobs.max(0) as u64, bytes.max(0) as u64));
            }
        }
        let out = {
            let mut st = tx
                .prepare("SELECT id, name, size FROM packs ORDER BY name")
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
            let mut out = Vec::new();
            for row in rows {
                let (id, name, size) = row.map_err(sql)?;
                let (blobs, live_bytes) = per_pack.get(&id).copied().unwrap_or((0, 0));
                out.push(PackUsage {
                    id,
                    name,
                    size: size.max(0) as u64,
                    blobs,
                    live_bytes,
                });
            }
            out
        };
        tx.finish().map_err(sql)?;
        Ok(out)
    }

    /// The rows of the blobs in packs `ids` (see [`PackUsage::id`]), by
    /// pack, each pack's in offset order, read in one transaction.
    pub fn rows_in_packs(
        &self,
        ids: &HashSet<i64>,
    ) -> Result<HashMap<i64, Vec<BlobRow>>, StoreError> {
        let tx = self.conn.unchecked_transaction().map_err(sql)?;
        let mut out: HashMap<i64, Vec<BlobRow>> = HashMap::new();
        {
            let mut st = tx
                .prepare("SELECT id, kind, offset, length FROM blobs WHERE pack = ?1")
                .map_err(sql)?;
            for &pack in ids {
                let mut rows = st.query([pack]).map_err(sql)?;
                let mut found = Vec::new();
                while let Some(r) = rows.next().map_err(sql)? {
                    let id: Vec<u8> = r.get(0).map_err(sql)?;
                    let (kind, offset, length): (i64, i64, i64) = (
                        r.get(1).map_err(sql)?,
                        r.get(2).map_err(sql)?,
                        r.get(3).map_err(sql)?,
                    );
                    let row = BlobId::from_slice(&id).and_then(|id| {
                        Some(BlobRow {
                            id,
                            kind: u8::try_from(kind).ok().and_then(BlobKind::from_u8)?,
                            pack,
                            offset: u64::try_from(offset).ok()?,
                            length: u32::try_from(length).ok()?,
                        })
                    });
                    found.push(row.ok_or_else(|| {
                        StoreError::Index(format!(
                            "a malformed blob row in pack {pack} (kind {kind}, offset {offset}, length {length})"
                        ))
                    })?);
                }
                found.sort_by_key(|r| r.offset);
                if !found.is_empty() {
                    out.insert(pack, found);
                }
            }
        }
        tx.finish().map_err(sql)?;
        Ok(out)
    }

    /// Records the durable packs `new` (written by garbage collection) and
    /// points at them the rows of the blobs copied there, then drops the
    /// rows of those packs of `old` no blob row points into any more, all in
    /// one transaction. Returns the names of the packs dropped: their files
    /// may then be deleted. A row that no longer points into the pack its
    /// blob was copied from (a condemned blob uploaded again meanwhile lives
    /// in the upload's pack) is left alone.
    pub fn relocate(
        &mut self,
        new: &[Relocated<'_>],
        old: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let tx = self.write_tx()?;
        {
            let mut add = tx
                .prepare("INSERT OR IGNORE INTO packs(name, size) VALUES (?1, ?2)")
                .map_err(sql)?;
            let mut find = tx
                .prepare("SELECT id FROM packs WHERE name = ?1")
                .map_err(sql)?;
            let mut unclaim = tx
                .prepare("DELETE FROM pack_claims WHERE name = ?1")
                .map_err(sql)?;
            let mut mv = tx
                .prepare(
                    "UPDATE blobs SET pack = ?1, offset = ?2, length = ?3 WHERE id = ?4 AND pack = ?5",
                )
                .map_err(sql)?;
            for n in new {
                add.execute(params![n.name, n.size as i64]).map_err(sql)?;
                let pack: i64 = find.query_row([n.name], |r| r.get(0)).map_err(sql)?;
                unclaim.execute([n.name]).map_err(sql)?;
                for (e, from) in n.moves {
                    mv.execute(params![
                        pack,
                        e.offset as i64,
                        e.length as i64,
                        &e.id.0[..],
                        from
                    ])
                    .map_err(sql)?;
                }
            }
        }
        let removed = remove_empty_packs(&tx, old)?;
        tx.commit().map_err(sql)?;
        Ok(removed)
    }

    /// Drops the rows of those packs of `names` no blob row points into, in
    /// one transaction; returns the names dropped, whose files may then be
    /// deleted.
    pub fn remove_packs_if_empty(&mut self, names: &[String]) -> Result<Vec<String>, StoreError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let tx = self.write_tx()?;
        let removed = remove_empty_packs(&tx, names)?;
        tx.commit().map_err(sql)?;
        Ok(removed)
    }

    pub fn pack_names(&self) -> Result<HashSet<String>, StoreError> {
        let mut st = self.conn.prepare("SELECT name FROM packs").map_err(sql)?;
        let rows = st.query_map([], |r| r.get::<_, String>(0)).map_err(sql)?;
        rows.collect::<Result<_, _>>().map_err(sql)
    }

    /// Forgets packs that no longer exist (index rebuild: the bucket or
    /// directory is the truth): their blob rows and their own. Returns how
    /// many blob rows went.
    pub fn drop_packs(&mut self, names: &[String]) -> Result<u64, StoreError> {
        let tx = self.write_tx()?;
        let mut blobs = 0;
        for name in names {
            blobs += tx
                .execute(
                    "DELETE FROM blobs WHERE pack = (SELECT id FROM packs WHERE name = ?1)",
                    [name],
                )
                .map_err(sql)? as u64;
            tx.execute("DELETE FROM packs WHERE name = ?1", [name])
                .map_err(sql)?;
        }
        tx.commit().map_err(sql)?;
        Ok(blobs)
    }

    /// Drops the rows about live processes (upload sessions, pack claims,
    /// running jobs): an index restored from a copy names processes of
    /// another machine, or of a time long gone.
    pub fn clear_processes(&mut self) -> Result<(), StoreError> {
        self.conn
            .execute_batch(
                "BEGIN IMMEDIATE; DELETE FROM sessions; DELETE FROM pack_claims; \
                 DELETE FROM running_jobs; COMMIT;",
            )
            .map_err(sql)
    }

    /// SQLite's own structural check of the file: `Ok(None)` when sound,
    /// else its first complaint.
    pub fn integrity_problem(&self) -> Result<Option<String>, StoreError> {
        let first: String = self
            .conn
            .query_row("PRAGMA integrity_check(1)", [], |r| r.get(0))
            .map_err(sql)?;
        Ok((first != "ok").then_some(first))
    }

    /// Claims the name of a pack about to be written: until it is indexed
    /// (which drops the claim), garbage collection leaves the file alone
    /// while process `pid` lives.
    pub fn claim_pack(&mut self, name: &str, pid: u32, pid_start: u64) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO pack_claims(name, pid, pid_start) VALUES (?1, ?2, ?3)",
                params![name, pid, pid_start as i64],
            )
            .map(drop)
            .map_err(sql)
    }

    /// Of the pack files `on_disk` (listed *before* this call), those no
    /// index row knows and no live process claims: left by a crash between
    /// writing and indexing. Claims of dead processes are dropped.
    pub fn orphans(
        &mut self,
        on_disk: &HashSet<String>,
        alive: &dyn Fn(u32, u64) -> bool,
    ) -> Result<Vec<String>, StoreError> {
        let tx = self.write_tx()?;
        let known: HashSet<String> = {
            let mut st = tx.prepare("SELECT name FROM packs").map_err(sql)?;
            let rows = st.query_map([], |r| r.get::<_, String>(0)).map_err(sql)?;
            rows.collect::<Result<_, _>>().map_err(sql)?
        };
        let claims: Vec<(String, u32, u64)> = {
            let mut st = tx
                .prepare("SELECT name, pid, pid_start FROM pack_claims")
                .map_err(sql)?;
            let rows = st
                .query_map([], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
                })
                .map_err(sql)?;
            rows.collect::<Result<_, _>>().map_err(sql)?
        };
        let mut claimed = HashSet::new();
        for (name, pid, start) in claims {
            if alive(pid, start) {
                claimed.insert(name);
            } else {
                tx.execute("DELETE FROM pack_claims WHERE name = ?1", [&name])
                    .map_err(sql)?;
            }
        }
        tx.commit().map_err(sql)?;
        Ok(on_disk
            .iter()
            .filter(|n| !known.contains(*n) && !claimed.contains(*n))
            .cloned()
            .collect())
    }
}

/// One finished server job (see `crate::jobs`), as the `jobs` table keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    pub kind: String,
    /// Unix milliseconds (UTC).
    pub started_ms: i64,
    pub duration_ms: u64,
    /// `ok`, `damage` (a check that found damage) or `error`.
    pub result: String,
    pub summary: String,
    /// A JSON object of the job's numbers.
    pub numbers: String,
}

/// A job some process is running now (the job lock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningJob {
    pub kind: String,
    pub pid: u32,
    pub pid_start: u64,
    pub started: i64,
}

/// The server's jobs: the job lock and the record of finished runs.
impl Index {
    /// Takes the lock of job `kind` for process (`pid`, `pid_start`), in one
    /// transaction: rows of processes `alive` says are gone are dropped
    /// first; then, if `kind` or any of `excludes` is still running, that
    /// row is returned and nothing is taken.
    pub fn claim_job(
        &mut self,
        kind: &str,
        excludes: &[&str],
        (pid, pid_start): (u32, u64),
        started: i64,
        alive: &dyn Fn(u32, u64) -> bool,
    ) -> Result<Option<RunningJob>, StoreError> {
        let tx = self.write_tx()?;
        let running = running_jobs(&tx)?;
        for r in &running {
            if !alive(r.pid, r.pid_start) {
                tracing::info!(
                    "job {} of process {} is not running any more (the process ended)",
                    r.kind,
                    r.pid
                );
                tx.execute("DELETE FROM running_jobs WHERE kind = ?1", [&r.kind])
                    .map_err(sql)?;
            }
        }
        if let Some(r) = running
            .into_iter()
            .filter(|r| alive(r.pid, r.pid_start))
            .find(|r| r.kind == kind || excludes.contains(&r.kind.as_str()))
        {
            return Ok(Some(r));
        }
        tx.execute(
            "INSERT INTO running_jobs(kind, pid, pid_start, started) VALUES (?1, ?2, ?3, ?4)",
            params![kind, pid, pid_start as i64, started],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(None)
    }

    /// Releases the lock of job `kind` if (`pid`, `pid_start`) holds it.
    pub fn release_job(
        &mut self,
        kind: &str,
        (pid, pid_start): (u32, u64),
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "DELETE FROM running_jobs WHERE kind = ?1 AND pid = ?2 AND pid_start = ?3",
                params![kind, pid, pid_start as i64],
            )
            .map(drop)
            .map_err(sql)
    }

    /// The job lock rows (some may be of processes that died).
    pub fn running_jobs(&self) -> Result<Vec<RunningJob>, StoreError> {
        running_jobs(&self.conn)
    }

    pub fn record_job(&mut self, row: &JobRow) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO jobs(kind, started_ms, duration_ms, result, summary, numbers)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    row.kind,
                    row.started_ms,
                    row.duration_ms as i64,
                    row.result,
                    row.summary,
                    row.numbers
                ],
            )
            .map(drop)
            .map_err(sql)
    }

    /// The latest finished run of job `kind`.
    pub fn last_job(&self, kind: &str) -> Result<Option<JobRow>, StoreError> {
        self.conn
            .query_row(
                "SELECT kind, started_ms, duration_ms, result, summary, numbers FROM jobs
                 WHERE kind = ?1 ORDER BY started_ms DESC, id DESC LIMIT 1",
                [kind],
                |r| {
                    Ok(JobRow {
                        kind: r.get(0)?,
                        started_ms: r.get(1)?,
                        duration_ms: r.get::<_, i64>(2)?.max(0) as u64,
                        result: r.get(3)?,
                        summary: r.get(4)?,
                        numbers: r.get(5)?,
                    })
                },
            )
            .optional()
            .map_err(sql)
    }

    /// A number kept in the `meta` table (e.g. the check rotation).
    pub fn meta(&self, key: &str) -> Result<Option<i64>, StoreError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(sql)
    }

    pub fn set_meta(&mut self, key: &str, value: i64) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO meta(key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map(drop)
            .map_err(sql)
    }
}

fn running_jobs(conn: &Connection) -> Result<Vec<RunningJob>, StoreError> {
    let mut st = conn
        .prepare("SELECT kind, pid, pid_start, started FROM running_jobs ORDER BY kind")
        .map_err(sql)?;
    let rows = st
        .query_map([], |r| {
            Ok(RunningJob {
                kind: r.get(0)?,
                pid: r.get(1)?,
                pid_start: r.get::<_, i64>(2)? as u64,
                started: r.get(3)?,
            })
        })
        .map_err(sql)?;
    rows.collect::<Result<_, _>>().map_err(sql)
}

/// Drops, inside transaction `tx`, the rows of those packs of `names` no
/// blob row points into; returns their names. (`blobs_by_pack` makes each
/// question a lookup, not a scan of `blobs`.)
fn remove_empty_packs(
    tx: &rusqlite::Transaction<'_>,
    names: &[String],
) -> Result<Vec<String>, StoreError> {
    let mut delete = tx
        .prepare_cached(
            "DELETE FROM packs WHERE name = ?1
             AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.pack = packs.id)",
        )
        .map_err(sql)?;
    let mut removed = Vec::new();
    for name in names {
        if delete.execute([name]).map_err(sql)? > 0 {
            removed.push(name.clone());
        }
    }
    Ok(removed)
}

/// Ids of one kind from the first column of a query; a malformed one is
/// index damage.
fn query_ids<T: IdFromSlice, C: FromIterator<T>>(
    conn: &Connection,
    q: &str,
    params: impl rusqlite::Params,
) -> Result<C, StoreError> {
    let mut st = conn.prepare(q).map_err(sql)?;
    let rows = st
        .query_map(params, |r| r.get::<_, Vec<u8>>(0))
        .map_err(sql)?;
    rows.map(|r| {
        T::from_bytes(&r.map_err(sql)?)
            .ok_or_else(|| StoreError::Index(format!("a malformed id in `{q}`")))
    })
    .collect()
}

/// The id types the index stores as 32-byte blobs.
trait IdFromSlice: Sized {
    fn from_bytes(b: &[u8]) -> Option<Self>;
}

impl IdFromSlice for BlobId {
    fn from_bytes(b: &[u8]) -> Option<Self> {
        BlobId::from_slice(b)
    }
}

impl IdFromSlice for SnapshotId {
    fn from_bytes(b: &[u8]) -> Option<Self> {
        SnapshotId::from_slice(b)
    }
}

fn sessions(conn: &Connection) -> Result<Vec<SessionRow>, StoreError> {
    let mut st = conn
        .prepare("SELECT id, generation, pid, pid_start, what FROM sessions")
        .map_err(sql)?;
    let rows = st
        .query_map([], |r| {
            Ok(SessionRow {
                id: r.get(0)?,
                generation: r.get::<_, i64>(1)? as u64,
                pid: r.get(2)?,
                pid_start: r.get::<_, i64>(3)? as u64,
                what: r.get(4)?,
            })
        })
        .map_err(sql)?;
    rows.collect::<Result<_, _>>().map_err(sql)
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

    #[test]
    fn a_version_3_index_gains_the_jobs_tables() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let v3 = SCHEMA.split("CREATE TABLE jobs").next().unwrap();
        Connection::open(&path)
            .unwrap()
            .execute_batch(&format!("{v3} PRAGMA user_version = 3;"))
            .unwrap();
        let mut index = Index::open(&path, false).unwrap();
        let version: i64 = index
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(index.last_job("gc").unwrap(), None);
        let row = JobRow {
            kind: "gc".into(),
            started_ms: 100_000,
            duration_ms: 5,
            result: "ok".into(),
            summary: "s".into(),
            numbers: "{}".into(),
        };
        index.record_job(&row).unwrap();
        assert_eq!(index.last_job("gc").unwrap(), Some(row));
        // A version-1 index goes through every step.
        let path = dir.path().join("v1.sqlite");
        let v1 = SCHEMA.split("CREATE TABLE meta").next().unwrap();
        Connection::open(&path)
            .unwrap()
            .execute_batch(&format!("{v1} PRAGMA user_version = 1;"))
            .unwrap();
        let index = Index::open(&path, false).unwrap();
        assert!(index.running_jobs().unwrap().is_empty());
        assert_eq!(index.sessions().unwrap(), vec![]);
        assert!(has_index(&index, "blobs_by_pack"));
    }

    fn has_index(index: &Index, name: &str) -> bool {
        index
            .conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?1",
                [name],
                |_| Ok(()),
            )
            .optional()
            .unwrap()
            .is_some()
    }

    #[test]
    fn locating_blobs_finds_them_and_compiles_the_statement_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = Index::open(&dir.path().join("index.sqlite"), true).unwrap();
        let entry = |b: u8, offset: u64| PackEntry {
            id: BlobId([b; 32]),
            kind: BlobKind::Tree,
            offset,
            length: 10,
        };
        index
            .add_pack("p1", 100, &[entry(1, 8), entry(2, 18)])
            .unwrap();
        index.add_pack("p2", 100, &[entry(3, 8)]).unwrap();
        let ids = [BlobId([2; 32]), BlobId([9; 32]), BlobId([3; 32])];
        for _ in 0..50 {
            let found = index.locate_many(&ids).unwrap();
            let at = |l: &Option<BlobLocation>| l.as_ref().map(|l| (l.pack.clone(), l.offset));
            assert_eq!(
                found.iter().map(at).collect::<Vec<_>>(),
                [Some(("p1".into(), 18)), None, Some(("p2".into(), 8))]
            );
            assert_eq!(found[0].as_ref().unwrap().kind, BlobKind::Tree);
        }
        // A restore locates every blob it reads: a statement compiled
        // again on each run cost the server 2 % of its CPU.
        let st = index.conn.prepare_cached(LOCATE).unwrap();
        assert_eq!(st.get_status(rusqlite::StatementStatus::Run), 150);
        assert_eq!(st.get_status(rusqlite::StatementStatus::RePrepare), 0);
    }

    #[test]
    fn a_pack_row_goes_only_when_no_blob_row_points_into_it_and_without_a_scan() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = Index::open(&dir.path().join("index.sqlite"), true).unwrap();
        assert!(has_index(&index, "blobs_by_pack"));
        let entry = |b: u8| PackEntry {
            id: BlobId([b; 32]),
            kind: BlobKind::Chunk,
            offset: 8,
            length: 10,
        };
        index.add_pack("full", 100, &[entry(1)]).unwrap();
        index.add_pack("empty", 100, &[]).unwrap();
        let names = ["full".to_string(), "empty".into(), "unknown".into()];
        assert_eq!(index.remove_packs_if_empty(&names).unwrap(), ["empty"]);
        assert_eq!(
            index.pack_names().unwrap(),
            HashSet::from(["full".to_string()])
        );
        // Deleting a pack row checks `blobs` (a foreign key): through the
        // index, not by scanning the table.
        let plan: Vec<String> = index
            .conn
            .prepare("EXPLAIN QUERY PLAN DELETE FROM packs WHERE name = 'x' AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.pack = packs.id)")
            .unwrap()
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(plan.iter().any(|l| l.contains("blobs_by_pack")), "{plan:?}");
    }
}
