//! The backup pipeline: scan -> file-state cache -> read, chunk, hash (on
//! all cores) -> store only missing blobs -> trees bottom-up -> commit.

use crate::base::{ParentTrees, PreviousVersion};
use crate::dirty::Dirty;
use crate::error::{ClientError, EntryError};
use crate::exclude::Excludes;
use crate::filecache::{Cached, FileCache, KEEP_SIGNATURES, Known, Record, SignatureCache};
use crate::meta;
use crate::owners::Owners;
use crate::progress::Progress;
use crate::scan::{self, FileJob, Link, Scan, TreeTotals};
use homesync_protocol::{
    BlobEncoder, BlobId, BlobKind, ChunkId, ChunkerParams, Node, NodeKind, Repository, Snapshot,
    SnapshotId, SnapshotStats, StoreError, Timestamp, Transfer, Tree, TreeId, delta,
};
use rayon::prelude::*;
use std::cell::{OnceCell, RefCell};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

pub struct BackupOptions {
    pub source: PathBuf,
    pub excludes: Vec<String>,
    pub default_excludes: bool,
    pub one_file_system: bool,
    pub machine: String,
    pub tags: Vec<String>,
    /// Directory for file-state caches (one per store); `None` disables it.
    pub cache_dir: Option<PathBuf>,
    /// Absolute paths left out whatever the patterns say (the store itself).
    pub skip: Vec<PathBuf>,
    /// List only the directories that changed since `parent` (the daemon).
    pub incremental: Option<Incremental>,
}

/// An incremental snapshot: what changed since a snapshot of the same
/// source. Sound only if every change since `parent`'s scan began is in
/// `dirty`, which the daemon's watches guarantee.
#[derive(Debug, Clone)]
pub struct Incremental {
    pub parent: SnapshotId,
    pub dirty: Dirty,
}

/// What the scan of a backup listed, for the daemon.
#[derive(Debug, Default)]
pub struct Listed {
    /// Every directory listed or patched (`rel`), whether it holds a file
    /// with several names, and whether it was listed in full (a patched
    /// one looked at its changed names only).
    pub dirs: Vec<(Vec<u8>, bool, bool)>,
    /// Directories whose trees came from the previous snapshot unlisted.
    pub reused: u64,
    /// A full scan: every directory was listed.
    pub complete: bool,
}

#[derive(Debug)]
pub struct BackupReport {
    pub id: SnapshotId,
    pub snapshot: Snapshot,
    /// Entries left out or possibly inconsistent: the snapshot is partial.
    pub errors: Vec<EntryError>,
    /// What went over the network (a remote store only).
    pub transfer: Option<Transfer>,
    pub listed: Listed,
}

/// Reading buffer per worker: a multiple of the largest chunk, so each
/// refill cuts several chunks and moves at most one chunk's bytes.
const READ_BUFFER: usize = 8 << 20;
/// Files up to this size are read whole and stored in batches.
const SMALL_FILE: u64 = 64 << 10;
/// Files per batch (at most SMALL_FILE bytes each held in memory).
const GROUP: usize = 128;
/// A file that keeps changing is read at most this many times.
const READ_ATTEMPTS: usize = 3;
/// Chunks smaller than this are sent whole: a delta would save little.
const MIN_DELTA_CHUNK: usize = 16 << 10;
/// Trees whose blob is smaller than this are sent whole.
const MIN_DELTA_TREE: usize = 8 << 10;

thread_local! {
    static ENCODER: RefCell<Option<BlobEncoder>> = const { RefCell::new(None) };
    static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static ENCODED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Contents of one file as stored.
#[derive(Debug, Clone)]
struct FileContent {
    size: u64,
    mtime: Timestamp,
    chunks: Vec<ChunkId>,
    extents: Vec<(u64, u64)>,
    /// Stable while read (size, mtime and ctime unchanged); only stable
    /// files enter the file-state cache.
    ctime: Timestamp,
}

enum Failure {
    /// This file is skipped; the backup goes on.
    Entry(String),
    /// The store failed: the backup stops.
    Store(StoreError),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Entry(e.to_string())
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

#[derive(Default)]
struct Counters {
    files_read: AtomicU64,
    bytes_read: AtomicU64,
    blobs_added: AtomicU64,
    bytes_added: AtomicU64,
}

/// One file being read: where it is, and (found when first needed) its
/// previous version, the source of delta bases.
struct FileCtx<'j> {
    job: &'j FileJob,
    previous: OnceCell<Option<PreviousVersion>>,
}

impl<'j> FileCtx<'j> {
    fn new(job: &'j FileJob) -> Self {
        FileCtx {
            job,
            previous: OnceCell::new(),
        }
    }
}

struct Pipeline<'a> {
    repo: &'a dyn Repository,
    /// What the scan found; files are opened beneath its root.
    scan: &'a Scan,
    chunker: ChunkerParams,
    level: i32,
    counters: Counters,
    progress: &'a Progress,
    /// Whether missing chunks of changed files go as deltas.
    deltas: bool,
    /// Previous versions by inode (the file-state cache, trusted or not).
    cached: Option<&'a Known>,
    /// Previous versions by path.
    parent: ParentTrees<'a>,
    signatures: Option<&'a SignatureCache>,
    /// Signatures of chunks uploaded for changed files: they are the
    /// likeliest bases of the next backup's deltas.
    /// At most [`KEEP_SIGNATURES`], the newest: a file rewritten
    /// throughout must not fill memory with them.
    new_signatures: Mutex<std::collections::VecDeque<(ChunkId, Vec<u8>)>>,
}

fn now() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        sec: d.as_secs() as i64,
        nsec: d.subsec_nanos(),
    }
}

fn stamp(sec: i64, nsec: i64) -> Timestamp {
    Timestamp {
        sec,
        nsec: nsec as u32,
    }
}

/// Opens `rel` beneath the scan root for reading, without following any
/// symlink and, where permitted, without updating the access time.
fn open_for_reading(root: &std::os::fd::OwnedFd, rel: &[u8]) -> std::io::Result<File> {
    use rustix::fs::OFlags;
    scan::open_beneath(root, rel, OFlags::RDONLY | OFlags::NOATIME)
        .or_else(|e| {
            // O_NOATIME needs ownership (or CAP_FOWNER): retry without it.
            if e.raw_os_error() == Some(libc_flags::EPERM) {
                scan::open_beneath(root, rel, OFlags::RDONLY)
            } else {
                Err(e)
            }
        })
        .map(File::from)
}

/// The few libc constants needed, from rustix (no libc dependency).
mod libc_flags {
    pub const EPERM: i32 = rustix::io::Errno::PERM.raw_os_error();
}

impl Pipeline<'_> {
    /// The previous version of a file: same inode in the cache, else the
    /// same path in the parent snapshot.
    fn previous(&self, job: &FileJob) -> Option<PreviousVersion> {
        let by_inode = self
            .cached
            .and_then(|k| k.previous(job.dev, job.ino))
            .map(|c| c.chunks.clone())
            .filter(|c| !c.is_empty());
        let chunks = by_inode.or_else(|| self.parent.file_chunks(&self.scan.file_rel(job)))?;
        PreviousVersion::new(chunks)
    }

    /// Delta bases, with their signatures, for the missing chunks `missing`
    /// (indexes into `ids`, the chunks following `before` in the file).
    /// Signatures come from the local cache, else from the store in one
    /// request; a base without one is simply not used.
    fn delta_bases(
        &self,
        previous: &PreviousVersion,
        before: &[ChunkId],
        ids: &[ChunkId],
        missing: &[usize],
    ) -> HashMap<usize, (ChunkId, delta::Signature)> {
        let wanted: Vec<(usize, ChunkId)> = missing
            .iter()
            .filter_map(|&i| Some((i, previous.base_for(before, ids, before.len() + i)?)))
            .collect();
        let mut sigs: HashMap<ChunkId, Vec<u8>> = HashMap::new();
        for (_, base) in &wanted {
            if let Some(sig) = self.signatures.and_then(|c| c.get(base)) {
                sigs.insert(*base, sig);
            }
        }
        let mut ask: Vec<ChunkId> = wanted
            .iter()
            .map(|(_, b)| *b)
            .filter(|b| !sigs.contains_key(b))
            .collect();
        ask.sort_unstable();
        ask.dedup();
        if !ask.is_empty() {
            let blob_ids: Vec<BlobId> = ask.iter().map(|&b| b.into()).collect();
            match self.repo.signatures(&blob_ids) {
                Ok(list) => {
                    sigs.extend(ask.into_iter().zip(list).filter_map(|(b, s)| Some((b, s?))))
                }
                Err(e) => tracing::debug!("no signatures from the store: {e}"),
            }
        }
        wanted
            .into_iter()
            .filter_map(|(i, base)| {
                let sig = delta::parse_signature(sigs.get(&base)?.clone())
                    .inspect_err(|e| tracing::debug!("signature of {base}: {e}"))
                    .ok()?;
                Some((i, (base, sig)))
            })
            .collect()
    }

    /// Stores a batch of chunks: one `has` question for all of them, then
    /// each missing chunk compressed and put once. Batching matters over a
    /// network, where each question is a round trip.
    ///
    /// `file` is the file the chunks belong to and its chunks before them:
    /// a missing chunk of a file with a previous version goes as a delta
    /// against the chunk it replaced, when that is clearly smaller.
    fn store_chunks(
        &self,
        pieces: &[&[u8]],
        file: Option<(&FileCtx, &[ChunkId])>,
    ) -> Result<Vec<ChunkId>, StoreError> {
        let ids: Vec<ChunkId> = pieces.iter().map(|p| ChunkId::of(p)).collect();
        if ids.is_empty() {
            return Ok(ids);
        }
        let blob_ids: Vec<_> = ids.iter().map(|&id| id.into()).collect();
        let present = self.repo.has_blobs(&blob_ids)?;
        let mut sent = std::collections::HashSet::new();
        let missing: Vec<usize> = (0..ids.len())
            .filter(|&i| !present[i] && sent.insert(ids[i]))
            .collect();
        if missing.is_empty() {
            return Ok(ids);
        }
        let previous = file.and_then(|(f, _)| {
            f.previous
                .get_or_init(|| self.deltas.then(|| self.previous(f.job)).flatten())
                .as_ref()
        });
        let bases = match (previous, file) {
            (Some(p), Some((_, before))) => {
                let big: Vec<usize> = missing
                    .iter()
                    .copied()
                    .filter(|&i| pieces[i].len() >= MIN_DELTA_CHUNK)
                    .collect();
                self.delta_bases(p, before, &ids, &big)
            }
            _ => HashMap::new(),
        };
        for i in missing {
            let (piece, id) = (pieces[i], ids[i]);
            let added = ENCODED.with(|out| {
                let mut out = out.borrow_mut();
                ENCODER.with(|e| {
                    e.borrow_mut()
                        .get_or_insert_with(|| BlobEncoder::new(self.level))
                        .encode_into(BlobKind::Chunk, piece, &mut out)
                });
                if let Some((base, sig)) = bases.get(&i)
                    && let Some(stored) = self.put_as_delta(
                        id.into(),
                        BlobKind::Chunk,
                        (*base).into(),
                        sig,
                        piece,
                        out.len(),
                    )
                {
                    return Ok::<_, StoreError>(stored.then_some(out.len()));
                }
                Ok(self
                    .repo
                    .put_blob(id.into(), BlobKind::Chunk, &out)?
                    .then_some(out.len()))
            })?;
            if let Some(len) = added {
                self.counters.blobs_added.fetch_add(1, Relaxed);
                self.counters.bytes_added.fetch_add(len as u64, Relaxed);
            }
            if previous.is_some() && piece.len() >= MIN_DELTA_CHUNK {
                let sig = delta::signature(piece);
                let mut kept = self.new_signatures.lock().expect("signatures");
                if kept.len() == KEEP_SIGNATURES {
                    kept.pop_front();
                }
                kept.push_back((id, sig));
            }
        }
        Ok(ids)
    }

    /// Sends `plain` as a delta against `base` if that is clearly smaller
    /// than its blob (`blob_len` bytes). `None`: send the blob instead (the
    /// delta was not worth it, or the store refused it).
    fn put_as_delta(
        &self,
        id: BlobId,
        kind: BlobKind,
        base: BlobId,
        sig: &delta::Signature,
        plain: &[u8],
        blob_len: usize,
    ) -> Option<bool> {
        let d = delta::encode(sig, plain, self.level)
            .inspect_err(|e| tracing::debug!("delta for {id}: {e}"))
            .ok()?;
        // Clearly smaller: an eighth of the blob saved, and a few KiB. A
        // delta costs the server a read of the base, and an append that
        // grew a small last chunk saves little.
        if d.len() + (blob_len / 8).max(4096) > blob_len {
            return None;
        }
        self.repo
            .put_delta(id, kind, base, &d)
            .inspect_err(|e| tracing::info!("delta for {id} not taken ({e}); sending it whole"))
            .ok()
    }

    /// Reads `regions` of `file` (all of it when `None`) through the chunker,
    /// storing each chunk. Returns the chunk ids and the bytes read.
    fn chunk_file(
        &self,
        file: &File,
        ctx: &FileCtx,
        regions: Option<&[(u64, u64)]>,
    ) -> Result<(Vec<ChunkId>, u64), Failure> {
        BUFFER.with(|buf| {
            let mut buf = buf.borrow_mut();
            // At least two maximal chunks, or a cut could find no boundary
            // in a full buffer.
            let size = READ_BUFFER.max(2 * self.chunker.max as usize);
            if buf.len() < size {
                buf.resize(size, 0);
            }
            let mut chunks = Vec::new();
            let mut filled = 0usize;
            let mut total = 0u64;
            let whole = [(0u64, u64::MAX)];
            let regions = regions.unwrap_or(&whole);
            for (ri, &(offset, len)) in regions.iter().enumerate() {
                let mut pos = 0u64;
                while pos < len {
                    let want = ((len - pos).min((buf.len() - filled) as u64)) as usize;
                    let n = file.read_at(&mut buf[filled..filled + want], offset + pos)?;
                    if n == 0 {
                        if len != u64::MAX {
                            return Err(Failure::Entry("file shrank while being read".into()));
                        }
                        break;
                    }
                    filled += n;
                    pos += n as u64;
                    total += n as u64;
                    self.progress.bytes_done.fetch_add(n as u64, Relaxed);
                    if filled == buf.len() {
                        let cuts = self.chunker.cut(&buf[..filled], false);
                        let end = cuts.last().map_or(0, |r| r.end);
                        let pieces: Vec<&[u8]> = cuts.into_iter().map(|r| &buf[r]).collect();
                        let ids = self.store_chunks(&pieces, Some((ctx, &chunks)))?;
                        chunks.extend(ids);
                        buf.copy_within(end..filled, 0);
                        filled -= end;
                    }
                }
                let last = ri + 1 == regions.len();
                if last {
                    let cuts = self.chunker.cut(&buf[..filled], true);
                    let pieces: Vec<&[u8]> = cuts.into_iter().map(|r| &buf[r]).collect();
                    let ids = self.store_chunks(&pieces, Some((ctx, &chunks)))?;
                    chunks.extend(ids);
                }
            }
            Ok((chunks, total))
        })
    }

    /// Reads a small file whole (one chunk at most) without storing it.
    /// `None` when it is no longer small or is sparse: read it normally.
    fn read_small(&self, job: &FileJob) -> Result<Option<(Vec<u8>, FileContent, bool)>, Failure> {
        let file = open_for_reading(&self.scan.root, &self.scan.file_rel(job))?;
        let before = file.metadata()?;
        if (before.dev(), before.ino()) != (job.dev, job.ino) {
            return Err(Failure::Entry(
                "replaced by another file during the backup".into(),
            ));
        }
        if !before.is_file() {
            return Err(Failure::Entry("no longer a regular file".into()));
        }
        if before.size() > SMALL_FILE || meta::maybe_sparse(&before) {
            return Ok(None);
        }
        let mut data = Vec::with_capacity(before.size() as usize);
        std::io::Read::read_to_end(&mut std::io::Read::take(&file, SMALL_FILE + 1), &mut data)?;
        if data.len() as u64 > SMALL_FILE {
            return Ok(None);
        }
        let after = file.metadata()?;
        let stable = unchanged(&before, &after) && data.len() as u64 == after.size();
        if !stable {
            // Changing under us: the normal path re-reads it.
            return Ok(None);
        }
        self.counters.files_read.fetch_add(1, Relaxed);
        self.counters
            .bytes_read
            .fetch_add(data.len() as u64, Relaxed);
        self.progress
            .bytes_done
            .fetch_add(data.len() as u64, Relaxed);
        let content = FileContent {
            size: data.len() as u64,
            mtime: stamp(after.mtime(), after.mtime_nsec()),
            ctime: stamp(after.ctime(), after.ctime_nsec()),
            chunks: Vec::new(),
            extents: Vec::new(),
        };
        Ok(Some((data, content, true)))
    }

    /// Backs up a group of files: small ones are read whole and their
    /// chunks stored in one batch (one `has` question for the group), the
    /// others one by one.
    fn read_group(&self, jobs: &[&FileJob]) -> Vec<Result<(FileContent, bool), Failure>> {
        let mut out = Vec::with_capacity(jobs.len());
        let mut small: Vec<(usize, Vec<u8>)> = Vec::new();
        for job in jobs {
            let r = if job.size <= SMALL_FILE {
                match self.read_small(job) {
                    Ok(Some((data, content, stable))) => {
                        small.push((out.len(), data));
                        Ok((content, stable))
                    }
                    Ok(None) => self.read_file(job),
                    Err(e) => Err(e),
                }
            } else {
                self.read_file(job)
            };
            out.push(r);
        }
        let with_data: Vec<&(usize, Vec<u8>)> =
            small.iter().filter(|(_, d)| !d.is_empty()).collect();
        let pieces: Vec<&[u8]> = with_data.iter().map(|(_, d)| d.as_slice()).collect();
        match self.store_chunks(&pieces, None) {
            Ok(ids) => {
                for ((i, _), id) in with_data.iter().zip(ids) {
                    if let Ok((content, _)) = &mut out[*i] {
                        content.chunks = vec![id];
                    }
                }
            }
            Err(e) => {
                let msg = e.to_string();
                out[with_data[0].0] = Err(Failure::Store(e));
                for (i, _) in &with_data[1..] {
                    out[*i] = Err(Failure::Entry(format!("not stored: {msg}")));
                }
            }
        }
        out
    }

    fn read_file(&self, job: &FileJob) -> Result<(FileContent, bool), Failure> {
        let file = open_for_reading(&self.scan.root, &self.scan.file_rel(job))?;
        let ctx = FileCtx::new(job);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let before = file.metadata()?;
            if attempt == 1 && (before.dev(), before.ino()) != (job.dev, job.ino) {
                // The path now leads elsewhere (renamed over, or a directory
                // on the way swapped for a symlink): never store another
                // file's contents under this name.
                return Err(Failure::Entry(
                    "replaced by another file during the backup".into(),
                ));
            }
            if !before.is_file() {
                return Err(Failure::Entry("no longer a regular file".into()));
            }
            let regions = if meta::maybe_sparse(&before) {
                meta::data_extents(&file, before.size())?
            } else {
                None
            };
            let (chunks, read) = self.chunk_file(&file, &ctx, regions.as_deref())?;
            self.counters.files_read.fetch_add(1, Relaxed);
            self.counters.bytes_read.fetch_add(read, Relaxed);
            let after = file.metadata()?;
            let stable = unchanged(&before, &after) && (regions.is_some() || read == after.size());
            if stable || attempt == READ_ATTEMPTS {
                let content = FileContent {
                    size: if regions.is_some() {
                        after.size()
                    } else {
                        read
                    },
                    mtime: stamp(after.mtime(), after.mtime_nsec()),
                    ctime: stamp(after.ctime(), after.ctime_nsec()),
                    chunks,
                    extents: regions.unwrap_or_default(),
                };
                return Ok((content, stable));
            }
        }
    }
}

/// Whether a file's size, mtime and ctime are the same in two `fstat`s:
/// then nothing wrote to it in between (ctime moves on every write).
fn unchanged(before: &std::fs::Metadata, after: &std::fs::Metadata) -> bool {
    before.size() == after.size()
        && (before.mtime(), before.mtime_nsec()) == (after.mtime(), after.mtime_nsec())
        && (before.ctime(), before.ctime_nsec()) == (after.ctime(), after.ctime_nsec())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The machine name used when none is given.
pub fn default_machine() -> String {
    hostname()
}

/// Where the file-state cache of `repo` lives under `cache_dir`.
pub fn cache_path(cache_dir: &Path, repo: &dyn Repository) -> PathBuf {
    cache_dir.join(&repo.config().id).join("files.sqlite")
}

/// Backs up `opts.source` into `repo` and commits one snapshot, with the
/// file-state cache under `opts.cache_dir` (if any).
pub fn backup(
    repo: &dyn Repository,
    opts: &BackupOptions,
    progress: &Progress,
) -> Result<BackupReport, ClientError> {
    // The cache only saves reading: a backup without it is slower, not wrong.
    let mut cache = opts.cache_dir.as_ref().and_then(|dir| {
        let path = cache_path(dir, repo);
        FileCache::open(&path)
            .inspect_err(|e| {
                tracing::warn!(
                    "reading every file: no file-state cache at {}: {e}",
                    path.display()
                )
            })
            .ok()
    });
    backup_with_cache(repo, opts, cache.as_mut(), progress)
}

/// [`backup`] with a file-state cache the caller keeps open (the daemon
/// keeps one for its lifetime instead of loading it for every snapshot).
///
/// If the store refuses the result while the cache supplied chunk lists or
/// the previous snapshot supplied trees (their blobs are gone: the store was
/// repaired, pruned, or is an older copy), the backup runs once more as a
/// full scan reading every file, and the cache is rebuilt from that run.
pub fn backup_with_cache(
    repo: &dyn Repository,
    opts: &BackupOptions,
    mut cache: Option<&mut FileCache>,
    progress: &Progress,
) -> Result<BackupReport, ClientError> {
    let before = repo.transfer();
    let mut report = match backup_once(repo, opts, cache.as_deref_mut(), progress, true, true) {
        Err(ClientError::Store(StoreError::Refused(why)))
            if cache.is_some() || opts.incremental.is_some() =>
        {
            tracing::warn!(
                "the store refused this backup ({why}); reading every file again without the cache"
            );
            backup_once(repo, opts, cache, progress, false, false)
        }
        r => r,
    }?;
    report.transfer = repo
        .transfer()
        .map(|t| t.since(&before.unwrap_or_default()));
    Ok(report)
}

fn backup_once(
    repo: &dyn Repository,
    opts: &BackupOptions,
    cache: Option<&mut FileCache>,
    progress: &Progress,
    trust_cache: bool,
    allow_incremental: bool,
) -> Result<BackupReport, ClientError> {
    let start = now();
    let source = std::fs::canonicalize(&opts.source).map_err(|source| ClientError::Io {
        path: opts.source.clone(),
        source,
    })?;
    let excludes = Excludes::new(&source, &opts.excludes, opts.default_excludes)?;
    let owners = Owners::load();
    let skip: Vec<PathBuf> = opts
        .skip
        .iter()
        .chain(opts.cache_dir.iter())
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect();
    let source_bytes = source.as_os_str().as_bytes();
    // The parent: the newest snapshot of this source (one question, not
    // the list of every snapshot, which grows with each one the daemon
    // takes); the daemon's own previous one when it names it.
    let latest = repo.latest_snapshot(&opts.machine, source_bytes)?;
    let incremental = opts.incremental.as_ref().filter(|_| allow_incremental);
    let parent = match incremental {
        Some(inc) if latest.as_ref().is_some_and(|(id, _)| *id == inc.parent) => latest,
        Some(inc) => {
            // Rare: another backup of this source came in between.
            let found = repo
                .snapshots()?
                .into_iter()
                .find(|(id, _)| *id == inc.parent);
            if found.is_none() {
                tracing::warn!(
                    "snapshot {} is gone from the store: scanning everything",
                    inc.parent
                );
            }
            found
        }
        None => latest,
    };
    let incremental = incremental.filter(|_| parent.is_some());
    let parent_trees = ParentTrees::new(repo, parent.as_ref().map(|(_, s)| s.root_tree()));
    let timer = std::time::Instant::now();
    let scan = {
        // A tree is reused only if its totals are known too (the snapshot's
        // statistics need them); otherwise the directory is scanned.
        let cache_ref = cache.as_deref();
        let previous = |rel: &[u8]| parent_trees.tree_of(rel);
        let totals = |id: &TreeId| cache_ref?.totals(id);
        let scope = incremental.map(|inc| scan::Scope {
            dirty: &inc.dirty,
            previous: &previous,
            totals: &totals,
        });
        let scan_opts = scan::ScanOptions {
            excludes: &excludes,
            skip: &skip,
            one_file_system: opts.one_file_system,
            owners: &owners,
            scope: scope.as_ref(),
        };
        scan::scan(&source, &scan_opts, progress)
            .map_err(|e| ClientError::Usage(format!("{}: {}", e.path.display(), e.error)))?
    };
    if incremental.is_some()
        && let Some(path) = new_link_elsewhere(&scan, cache.as_deref().map(|c| &c.known))
    {
        tracing::info!(
            "{} gained or lost a name the incremental scan did not list: scanning everything",
            path.display()
        );
        return backup_once(repo, opts, cache, progress, trust_cache, false);
    }
    let reused = scan.dirs.iter().filter(|d| d.reused.is_some()).count();
    tracing::info!(
        "scanned {} directories ({reused} reused unlisted), {} files in {:?}",
        scan.dirs.len() - reused,
        scan.files.len(),
        timer.elapsed()
    );
    // An entry learnt in another generation of the store (blobs were
    // removed since) still says the file is unchanged, but no longer that
    // the store holds its chunks: those are asked for before use.
    let generation = repo.generation()?;
    // Directories whose tree the last snapshot already had need no question.
    let known_trees = cache
        .as_ref()
        .filter(|_| trust_cache)
        .map(|c| c.known_trees(source_bytes, generation))
        .unwrap_or_default();

    let pipeline = Pipeline {
        repo,
        scan: &scan,
        chunker: repo.config().chunker,
        level: repo.config().zstd_level,
        counters: Counters::default(),
        progress,
        deltas: repo.prefers_deltas(),
        cached: cache.as_ref().map(|c| &c.known),
        parent: parent_trees,
        signatures: cache.as_ref().map(|c| &c.signatures),
        new_signatures: Mutex::default(),
    };
    let errors = Mutex::new(scan.errors.clone());
    let abort = AtomicBool::new(false);
    let fatal: Mutex<Option<StoreError>> = Mutex::new(None);
    let known = cache.as_ref().filter(|_| trust_cache).map(|c| &c.known);
    let results: Vec<Option<(FileContent, bool)>> = scan
        .files
        .par_chunks(GROUP)
        .map(|group| {
            let mut out: Vec<Option<(FileContent, bool)>> = vec![None; group.len()];
            if abort.load(Relaxed) {
                return out;
            }
            let hits: Vec<Option<&Cached>> = group
                .iter()
                .map(|job| known.and_then(|k| k.lookup(job.dev, job.ino, job.size, job.mtime, job.ctime)))
                .collect();
            let hits = match confirm_present(repo, hits, generation) {
                Ok(h) => h,
                Err(e) => {
                    abort.store(true, Relaxed);
                    fatal.lock().expect("fatal").get_or_insert(e);
                    return out;
                }
            };
            let mut to_read = Vec::new();
            for ((slot, job), hit) in out.iter_mut().zip(group).zip(hits) {
                match hit {
                    Some(c) => {
                        progress.add_done(1, job.size);
                        *slot = Some((
                            FileContent {
                                size: c.size,
                                mtime: c.mtime,
                                ctime: c.ctime,
                                chunks: c.chunks.clone(),
                                extents: c.extents.clone(),
                            },
                            true,
                        ));
                    }
                    None => to_read.push(job),
                }
            }
            let read = pipeline.read_group(&to_read);
            let mut read = read.into_iter();
            for (slot, job) in out.iter_mut().zip(group) {
                if slot.is_some() {
                    continue;
                }
                progress.files_done.fetch_add(1, Relaxed);
                match read.next().expect("one result per file read") {
                    Ok((content, stable)) => {
                        if !stable {
                            errors.lock().expect("errors").push(EntryError::new(
                                scan.file_path(job),
                                format!("changed while being read ({READ_ATTEMPTS} attempts); the stored copy may be inconsistent"),
                            ));
                        }
                        *slot = Some((content, stable));
                    }
                    Err(Failure::Entry(e)) => {
                        progress.errors.fetch_add(1, Relaxed);
                        errors.lock().expect("errors").push(EntryError::new(scan.file_path(job), e));
                    }
                    Err(Failure::Store(e)) => {
                        abort.store(true, Relaxed);
                        fatal.lock().expect("fatal").get_or_insert(e);
                    }
                }
            }
            out
        })
        .collect::<Vec<_>>()
        .into_iter()
        .flatten()
        .collect();
    if let Some(e) = fatal.into_inner().expect("fatal") {
        return Err(e.into());
    }

    tracing::info!("files done at {:?}", timer.elapsed());
    let mut errors = errors.into_inner().expect("errors");
    let (trees, totals) = build_trees(&pipeline, &scan, &results, &known_trees, &mut errors)?;
    let mut stats = SnapshotStats {
        files: totals[0].files,
        dirs: totals[0].dirs,
        other: totals[0].other,
        bytes: totals[0].bytes,
        ..Default::default()
    };
    let root = trees[0];
    tracing::info!("trees done at {:?}", timer.elapsed());
    let mut root_node = scan.dirs[0].node.clone();
    root_node.subtree = Some(root);
    let c = &pipeline.counters;
    stats.files_read = c.files_read.load(Relaxed);
    stats.bytes_read = c.bytes_read.load(Relaxed);
    stats.blobs_added = c.blobs_added.load(Relaxed);
    stats.bytes_added = c.bytes_added.load(Relaxed);
    stats.errors = errors.len() as u64;
    let snapshot = Snapshot {
        time: start,
        machine: opts.machine.clone(),
        source: source_bytes.to_vec(),
        root: root_node,
        parent: parent.map(|(id, _)| id),
        tags: opts.tags.clone(),
        stats,
    };
    let id = repo.commit_snapshot(&snapshot)?;
    tracing::info!("committed at {:?}", timer.elapsed());

    let signatures: Vec<_> = pipeline
        .new_signatures
        .into_inner()
        .expect("signatures")
        .into();
    if let Some(cache) = cache {
        // Only files that were stable while read, and whose ctime is safely
        // before the backup started (a change within the same timestamp
        // tick would otherwise go unnoticed next time), are vouched for.
        // ctime alone decides: every write moves it to the kernel's "now",
        // while mtime may be set anywhere, even into the future.
        let racy = start.sec - 2;
        let entries: Vec<((u64, u64), Cached)> = scan
            .files
            .iter()
            .zip(&results)
            .filter_map(|(job, r)| {
                // Files too fresh or unsteady to vouch for are kept as
                // delta bases all the same.
                let (c, stable) = r.as_ref()?;
                Some((
                    (job.dev, job.ino),
                    Cached {
                        size: c.size,
                        mtime: c.mtime,
                        ctime: c.ctime,
                        chunks: c.chunks.clone(),
                        extents: c.extents.clone(),
                        verified_in: (*stable && c.ctime.sec < racy).then_some(generation),
                    },
                ))
            })
            .collect();
        let trees: Vec<(TreeId, TreeTotals)> = trees.iter().copied().zip(totals).collect();
        if let Err(e) = cache.record(&Record {
            source: source_bytes,
            generation,
            files: &entries,
            trees: &trees,
            signatures: &signatures,
            complete: incremental.is_none(),
        }) {
            tracing::warn!("could not update the file-state cache: {e}");
        }
    }
    Ok(BackupReport {
        id,
        snapshot,
        errors,
        transfer: None,
        listed: Listed {
            dirs: scan
                .dirs
                .iter()
                .filter(|d| d.reused.is_none())
                .map(|d| (d.rel.clone(), d.has_links, !d.patched))
                .collect(),
            reused: reused as u64,
            complete: incremental.is_none(),
        },
    })
}

/// A file with more names than the scan saw, whose link count changed
/// since the last snapshot (the cache no longer vouches for it): a new hard
/// link to a file in a directory the incremental scan reused. Listing that
/// directory is needed to record the link, and which one is unknown.
/// (Names outside the source, unchanged, are no reason: a full scan would
/// not see them either.)
fn new_link_elsewhere(scan: &Scan, known: Option<&Known>) -> Option<PathBuf> {
    let mut names: HashMap<usize, u64> = HashMap::new();
    for d in &scan.dirs {
        for e in &d.entries {
            if let Link::HardlinkOf(i) = e.link {
                *names.entry(i).or_default() += 1;
            }
        }
    }
    scan.files.iter().enumerate().find_map(|(i, job)| {
        let seen = 1 + names.get(&i).copied().unwrap_or(0);
        (job.nlink > seen
            && known
                .and_then(|k| k.lookup(job.dev, job.ino, job.size, job.mtime, job.ctime))
                .is_none())
        .then(|| scan.file_path(job))
    })
}

/// Keeps the cache hits learnt in this `generation` of the store, and of
/// the others those whose chunks the store still holds (one question for
/// the whole group); the rest are read again.
fn confirm_present<'c>(
    repo: &dyn Repository,
    hits: Vec<Option<&'c Cached>>,
    generation: u64,
) -> Result<Vec<Option<&'c Cached>>, StoreError> {
    let stale = |c: &Cached| c.verified_in != Some(generation);
    let ids: Vec<BlobId> = hits
        .iter()
        .flatten()
        .filter(|c| stale(c))
        .flat_map(|c| c.chunks.iter().map(|&id| id.into()))
        .collect();
    if ids.is_empty() {
        return Ok(hits);
    }
    let present: HashMap<BlobId, bool> = ids.iter().copied().zip(repo.has_blobs(&ids)?).collect();
    Ok(hits
        .into_iter()
        .map(|h| h.filter(|c| !stale(c) || c.chunks.iter().all(|&id| present[&BlobId::from(id)])))
        .collect())
}

/// Builds and stores every directory's tree, children first; returns the
/// trees' ids, the root's first. A tree the store already has (`known`, or
/// so it answers) is not sent again.
fn build_trees(
    p: &Pipeline,
    scan: &Scan,
    results: &[Option<(FileContent, bool)>],
    known: &HashSet<TreeId>,
    errors: &mut Vec<EntryError>,
) -> Result<(Vec<TreeId>, Vec<TreeTotals>), ClientError> {
    let mut ids: Vec<Option<TreeId>> = vec![None; scan.dirs.len()];
    let mut totals = vec![TreeTotals::default(); scan.dirs.len()];
    let mut encoder = BlobEncoder::new(p.level);
    // Encoded trees in the order they must be stored (children first).
    let mut encoded: Vec<(usize, TreeId, Vec<u8>)> = Vec::with_capacity(scan.dirs.len());
    for d in (0..scan.dirs.len()).rev() {
        if let Some((id, t)) = scan.dirs[d].reused {
            ids[d] = Some(id);
            totals[d] = t;
            continue;
        }
        let mut t = TreeTotals::default();
        let mut nodes = Vec::with_capacity(scan.dirs[d].entries.len());
        for e in &scan.dirs[d].entries {
            let mut n: Node = e.node.clone();
            match e.link {
                Link::Dir(i) => {
                    n.subtree = Some(ids[i].expect("children are built before parents"));
                    t.dirs += 1;
                    t += totals[i];
                }
                Link::File(i) | Link::HardlinkOf(i) => {
                    let Some((c, _)) = &results[i] else {
                        if matches!(e.link, Link::HardlinkOf(_)) {
                            // Its first name failed (and was reported): this
                            // name is left out too, and said so.
                            errors.push(EntryError::new(
                                scan.dirs[d]
                                    .path
                                    .join(std::ffi::OsStr::from_bytes(&e.node.name)),
                                format!(
                                    "left out: it is a hard link to {}, which could not be read",
                                    String::from_utf8_lossy(&e.node.target)
                                ),
                            ));
                        }
                        continue;
                    };
                    n.size = c.size;
                    if matches!(e.link, Link::File(_)) {
                        n.mtime = c.mtime;
                    }
                    n.chunks = c.chunks.clone();
                    n.extents = c.extents.clone();
                    t.files += 1;
                    t.bytes += c.size;
                }
                Link::None => t.other += 1,
                Link::Kept => match n.kind {
                    NodeKind::File | NodeKind::Hardlink => {
                        t.files += 1;
                        t.bytes += n.size;
                    }
                    _ => t.other += 1,
                },
            }
            nodes.push(n);
        }
        let tree = Tree::new(nodes);
        let bytes = tree.encode();
        if bytes.len() > homesync_protocol::blob::MAX_PLAIN_LEN {
            return Err(ClientError::Usage(format!(
                "{}: {} entries make a directory record of {} MiB, over the limit of {} MiB",
                scan.dirs[d].path.display(),
                tree.nodes.len(),
                bytes.len() >> 20,
                homesync_protocol::blob::MAX_PLAIN_LEN >> 20
            )));
        }
        let id = TreeId::of(&bytes);
        encoded.push((d, id, bytes));
        ids[d] = Some(id);
        totals[d] = t;
    }
    // A tree's id depends only on its contents, so every id is known before
    // anything is sent: one batched question finds the new trees (over a
    // network: one round trip, not one per directory), which then go up
    // children first.
    encoded.retain(|(_, id, _)| !known.contains(id));
    let blob_ids: Vec<_> = encoded.iter().map(|(_, id, _)| (*id).into()).collect();
    let present = p.repo.has_blobs(&blob_ids)?;
    let mut sent = HashSet::new();
    for ((d, id, bytes), present) in encoded.iter().zip(present) {
        if present || !sent.insert(*id) {
            continue;
        }
        let blob = encoder.encode(BlobKind::Tree, bytes);
        let len = blob.len() as u64;
        // A directory that changed a little (a file added, one mtime) goes
        // as a delta against its tree in the parent snapshot: a large
        // directory's tree is mostly chunk ids, which do not compress.
        let as_delta =
            (p.deltas && blob.len() > MIN_DELTA_TREE && bytes.len() <= delta::MAX_TREE_OUTPUT)
                .then(|| p.parent.tree_at(&scan.dirs[*d].rel))
                .flatten()
                .and_then(|(base, base_bytes)| {
                    let sig = delta::parse_signature(delta::signature(&base_bytes)).ok()?;
                    p.put_as_delta(
                        (*id).into(),
                        BlobKind::Tree,
                        base.into(),
                        &sig,
                        bytes,
                        blob.len(),
                    )
                });
        let stored = match as_delta {
            Some(stored) => stored,
            None => p.repo.put_blob((*id).into(), BlobKind::Tree, &blob)?,
        };
        if stored {
            p.counters.blobs_added.fetch_add(1, Relaxed);
            p.counters.bytes_added.fetch_add(len, Relaxed);
        }
    }
    Ok((
        ids.into_iter()
            .map(|id| id.expect("every tree built"))
            .collect(),
        totals,
    ))
}
