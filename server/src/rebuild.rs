//! `homesync admin rebuild-index`: a store's SQLite index made again from
//! where its packs are (a bucket or the store directory), for a server
//! whose disk was lost or whose index file is damaged or gone.
//!
//! 1. The store config comes from the directory, or from the bucket's
//!    `config` object on a new server (with `backend.toml` written).
//! 2. The newest index copy that SQLite finds sound is the start (see
//!    [`crate::index_copy`]); with none (or `packs_only`), an empty index.
//! 3. Every pack listed in the bucket or directory that the start does not
//!    know is read from its trailer (three small ranged reads) and indexed;
//!    snapshot blobs in them become snapshot rows again. Packs the start
//!    names that are gone (collected since the copy) are dropped, and with
//!    them the snapshots whose blobs went (forgotten since the copy).
//! 4. Upload sessions, pack claims and running jobs are cleared, and the
//!    generation is bumped: clients re-check what their caches say the
//!    store has.
//!
//! The result is written beside the old index and renamed over it only
//! when complete; a damaged old index is kept as `index.sqlite.replaced-TIME`.
//!
//! Limits, by construction: a snapshot forgotten after the copy whose blob
//! is still in a pack comes back (retention forgets it again); credentials
//! and restore tokens exist only in copies (from the packs alone, machines
//! must be added again).

use crate::backend::PackBackend;
use crate::index::Index;
use crate::index_copy::Place;
use crate::pack::{self, PackEntry};
use crate::s3::{S3Backend, S3Config};
use crate::store::{self, BUCKET_CONFIG};
use homesync_protocol::blob;
use homesync_protocol::{BlobKind, Snapshot, SnapshotId, StoreError};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Threads reading pack trailers (each read is a round trip on S3).
const READERS: usize = 8;

#[derive(Debug, Clone, Default)]
pub struct RebuildOptions {
    /// Ignore index copies: rebuild from the packs alone.
    pub packs_only: bool,
    /// Replace an existing index file (kept under another name).
    pub replace: bool,
    /// The server config's `[s3]` (with credentials), for a store whose
    /// directory does not say yet where its packs are.
    pub s3: Option<S3Config>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebuildReport {
    /// The copy started from; `None`: the packs alone.
    pub copy: Option<String>,
    /// Copies that SQLite found damaged (skipped), with why.
    pub bad_copies: Vec<(String, String)>,
    pub packs_listed: u64,
    pub packs_added: u64,
    /// Packs the copy named that are gone.
    pub packs_dropped: u64,
    /// Packs whose trailer is damaged, with why: their blobs are not
    /// indexed, and garbage collection deletes them as orphans (copy them
    /// away first to keep them). A pack that could not be *read* (I/O,
    /// network) fails the rebuild instead.
    pub bad_packs: Vec<(String, String)>,
    pub blobs_added: u64,
    pub snapshots_added: u64,
    /// Snapshots of the copy whose blobs are gone.
    pub snapshots_dropped: Vec<SnapshotId>,
    pub snapshots: u64,
    /// Where an old index file was kept.
    pub replaced: Option<PathBuf>,
    pub store_created: bool,
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { context, source }
}

/// Rebuilds the index of the store in `dir`. See the module documentation.
pub fn rebuild_index(dir: &Path, opts: &RebuildOptions) -> Result<RebuildReport, StoreError> {
    let mut report = RebuildReport::default();
    let index_path = dir.join("index.sqlite");
    if index_path.exists() && !opts.replace {
        return Err(StoreError::Refused(format!(
            "{} exists: pass --replace to rebuild it anyway (the old file is kept beside it)",
            index_path.display()
        )));
    }
    if let Some(s3) = &opts.s3 {
        report.store_created = adopt_bucket(dir, s3)?;
    } else if !dir.join("config").exists() {
        return Err(StoreError::NotFound(format!(
            "{} (to recover a store from a bucket, give the server config with its [s3])",
            dir.display()
        )));
    }
    let backend = store::open_backend(dir, opts.s3.as_ref())?;
    let bucket = backend.s3();

    let tmp = dir.join("index.sqlite.rebuild");
    remove_db(&tmp)?;
    let mut index = None;
    if !opts.packs_only {
        let place = Place::of(dir, bucket);
        for name in place.list()?.iter().rev() {
            match start_from_copy(&place, name, &tmp)? {
                Ok(i) => {
                    report.copy = Some(name.clone());
                    index = Some(i);
                    break;
                }
                Err(why) => {
                    tracing::warn!("index copy {name} in {}: {why}", place.describe());
                    report.bad_copies.push((name.clone(), why));
                    remove_db(&tmp)?;
                }
            }
        }
    }
    let mut index = match index {
        Some(i) => i,
        None => Index::open(&tmp, true)?,
    };

    let listed = backend.list()?;
    report.packs_listed = listed.len() as u64;
    let known = index.pack_names()?;
    let listed_set: HashSet<&String> = listed.iter().collect();
    let gone: Vec<String> = known
        .iter()
        .filter(|n| !listed_set.contains(n))
        .cloned()
        .collect();
    report.packs_dropped = gone.len() as u64;
    index.drop_packs(&gone)?;

    let new: Vec<&String> = listed.iter().filter(|n| !known.contains(*n)).collect();
    let mut snapshot_blobs = Vec::new();
    for (name, read) in read_trailers(&*backend, &new) {
        match read {
            Ok((size, entries)) => {
                index.add_pack(name, size, &entries)?;
                report.packs_added += 1;
                report.blobs_added += entries.len() as u64;
                snapshot_blobs.extend(
                    entries
                        .iter()
                        .filter(|e| e.kind == BlobKind::Snapshot)
                        .map(|e| (name.clone(), *e)),
                );
            }
            // Damaged: its blobs stay unindexed, the report names it.
            Err(Unreadable::Damaged(why)) => {
                tracing::warn!("pack {name}: {why}");
                report.bad_packs.push((name.clone(), why));
            }
            // Not read (a dropped connection, a node down): an index without
            // the pack's blobs would let garbage collection delete the pack
            // as an orphan. Nothing is replaced; run it again.
            Err(Unreadable::Io(e)) => {
                remove_db(&tmp)?;
                return Err(e);
            }
        }
    }
    // After every pack: a snapshot's root tree may sit in a later pack.
    let existing = index.snapshot_ids()?;
    for (pack_name, e) in snapshot_blobs {
        let sid = SnapshotId(e.id.0);
        if existing.contains(&sid) {
            continue;
        }
        let encoded = backend.read_at(&pack_name, e.offset, e.length as usize)?;
        let snapshot = blob::decode_verified(&encoded, e.id, BlobKind::Snapshot)
            .map_err(|source| StoreError::Corrupt { id: e.id, source })
            .and_then(|plain| {
                Snapshot::decode(&plain).map(|s| (s, plain)).map_err(|err| {
                    StoreError::CorruptDetail {
                        id: e.id,
                        detail: format!("snapshot does not decode: {err}"),
                    }
                })
            });
        match snapshot {
            Ok((s, plain)) => match index.add_snapshot(&sid, &s, &plain) {
                Ok(()) => report.snapshots_added += 1,
                Err(StoreError::Refused(why)) => tracing::warn!("not restoring {why}"),
                Err(e) => return Err(e),
            },
            Err(err) => report.bad_packs.push((pack_name, err.to_string())),
        }
    }
    for (id, s) in index.snapshots()? {
        if !index.has(&id.into())? || !index.has(&s.root_tree().into())? {
            index.remove_snapshot(&id)?;
            report.snapshots_dropped.push(id);
        }
    }
    report.snapshots = index.snapshot_ids()?.len() as u64;
    index.clear_processes()?;
    index.bump_generation()?;
    drop(index);

    if index_path.exists() {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let kept = dir.join(format!("index.sqlite.replaced-{millis}"));
        std::fs::rename(&index_path, &kept)
            .map_err(io(format!("moving {} aside", index_path.display())))?;
        for ext in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.join(format!("index.sqlite{ext}")));
        }
        report.replaced = Some(kept);
    }
    // The rebuilt file is complete (WAL checkpointed on close): move it in.
    std::fs::rename(&tmp, &index_path).map_err(io(format!(
        "moving the rebuilt index to {}",
        index_path.display()
    )))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("syncing {}", dir.display())))?;
    Ok(report)
}

/// Makes `dir` the home of the store in the bucket of `s3`: its config
/// from the bucket (when the directory has none), `backend.toml`. Returns
/// whether the directory's config was written now.
fn adopt_bucket(dir: &Path, s3: &S3Config) -> Result<bool, StoreError> {
    let bucket = S3Backend::new(s3)?;
    bucket.probe()?;
    let text = bucket.get_rel(BUCKET_CONFIG)?.ok_or_else(|| {
        StoreError::NotFound(format!("a store in {} (no `config` object)", s3.describe()))
    })?;
    let cfg = crate::config::parse(&text)
        .map_err(|e| StoreError::Refused(format!("{}: its `config` object: {e}", s3.describe())))?;
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    store::write_backend_file(dir, s3)?;
    let cfg_path = dir.join("config");
    if cfg_path.exists() {
        let local = crate::config::read(&cfg_path)?;
        if local.id != cfg.id {
            return Err(StoreError::Refused(format!(
                "the store at {} is {}, but {} holds store {}",
                dir.display(),
                local.id,
                s3.describe(),
                cfg.id
            )));
        }
        return Ok(false);
    }
    crate::config::write(&cfg_path, &cfg)?;
    Ok(true)
}

/// Opens copy `name` as the start of the rebuild at `tmp`; `Ok(Err(why))`
/// when SQLite finds it damaged.
fn start_from_copy(
    place: &Place<'_>,
    name: &str,
    tmp: &Path,
) -> Result<Result<Index, String>, StoreError> {
    let bytes = place.get(name)?;
    crate::backend::write_durably(tmp, &bytes)?;
    let index = match Index::open(tmp, false) {
        Ok(i) => i,
        Err(StoreError::Index(why)) => return Ok(Err(why)),
        Err(e) => return Err(e),
    };
    match index.integrity_problem() {
        Ok(None) => Ok(Ok(index)),
        Ok(Some(why)) => Ok(Err(why)),
        Err(StoreError::Index(why)) => Ok(Err(why)),
        Err(e) => Err(e),
    }
}

fn remove_db(path: &Path) -> Result<(), StoreError> {
    for ext in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{ext}", path.display()));
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io(format!("removing {}", p.display()))(e));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Why a pack's trailer was not read.
enum Unreadable {
    /// The bytes are there but are not a pack's.
    Damaged(String),
    /// The backend could not be read.
    Io(StoreError),
}

type TrailerRead = Result<(u64, Vec<PackEntry>), Unreadable>;

/// The size and trailer of each pack, read on [`READERS`] threads; a pack
/// that cannot be read says why.
fn read_trailers<'a>(
    backend: &dyn PackBackend,
    names: &[&'a String],
) -> Vec<(&'a String, TrailerRead)> {
    let next = AtomicUsize::new(0);
    let out = Mutex::new(Vec::with_capacity(names.len()));
    std::thread::scope(|s| {
        for _ in 0..READERS.min(names.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(name) = names.get(i) else { return };
                    let r = read_trailer(backend, name);
                    store::lock(&out).push((*name, r));
                }
            });
        }
    });
    let mut out = out.into_inner().unwrap_or_else(|e| e.into_inner());
    out.sort_by(|a, b| a.0.cmp(b.0));
    out
}

fn read_trailer(backend: &dyn PackBackend, name: &str) -> TrailerRead {
    let damaged = |e: pack::PackError| Unreadable::Damaged(e.to_string());
    let size = backend
        .size(name)
        .map_err(Unreadable::Io)?
        .ok_or_else(|| {
            Unreadable::Io(StoreError::Refused(format!(
                "pack {name} went away while the index was rebuilt: is a server still running on this store?"
            )))
        })?;
    if size < (pack::HEADER_LEN + pack::FOOTER_LEN) as u64 {
        return Err(damaged(pack::PackError::Truncated(size as usize)));
    }
    let header = backend
        .read_at(name, 0, pack::HEADER_LEN)
        .map_err(Unreadable::Io)?;
    let footer = backend
        .read_at(name, size - pack::FOOTER_LEN as u64, pack::FOOTER_LEN)
        .map_err(Unreadable::Io)?;
    let (start, len) = pack::trailer_span(&header, &footer, size).map_err(damaged)?;
    let trailer = backend.read_at(name, start, len).map_err(Unreadable::Io)?;
    let entries = pack::parse_trailer(&trailer, start).map_err(damaged)?;
    Ok((size, entries))
}
