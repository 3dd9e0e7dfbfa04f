//! The store: packs + index behind the [`Repository`] trait.
//!
//! Write path: `put_blob` appends to an in-memory pack (one for chunks, one
//! for trees and snapshots, so metadata stays together). A full pack is
//! sealed and handed to the pack writer thread, which writes and fsyncs it
//! through the backend and only then inserts its blobs into the index, while
//! the backup goes on hashing and compressing. Until indexed, blobs are
//! "pending": visible to `has_blobs`, `get_blob` and the tree reference
//! check of this process, but not to other processes. A failed pack write
//! poisons the store: every later call fails, so no tree or snapshot can
//! ever be committed on top of a lost blob.

use crate::backend::{LocalDir, PackBackend};
use crate::config;
use crate::index::Index;
use crate::pack::{PackEntry, PackWriter};
use homesync_protocol::blob::{self, Blob};
use homesync_protocol::{
    BlobEncoder, BlobId, BlobKind, ChunkerParams, Repository, Snapshot, SnapshotId, StoreConfig,
    StoreError, Tree, delta,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

/// A pack is sealed once it holds this many bytes.
pub const PACK_TARGET: usize = 16 << 20;
/// Tree packs are sealed smaller: they are read whole when listing.
pub const TREE_PACK_TARGET: usize = 4 << 20;
/// Sealed packs waiting for the writer thread beyond the one it writes.
/// None: the next pack fills while one is written, and each waiting pack
/// would hold another PACK_TARGET bytes of memory.
const WRITE_QUEUE: usize = 0;

#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Decode and re-hash every uploaded blob. The QUIC server always does;
    /// the embedded store may skip it because its only writer is the same
    /// process, which hashed the plain bytes a moment before.
    pub verify_uploads: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            verify_uploads: true,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Data,
    Tree,
}

/// Where a blob not yet in the index is.
#[derive(Clone)]
enum Pending {
    Open {
        slot: Slot,
        offset: u64,
        length: u32,
    },
    Sealed {
        pack: Arc<Vec<u8>>,
        offset: u64,
        length: u32,
    },
}

struct WriteState {
    data: PackWriter,
    tree: PackWriter,
    pending: HashMap<BlobId, Pending>,
    poisoned: Option<String>,
    /// The buffer of the last written pack, kept for the next one.
    spare: Option<Vec<u8>>,
    /// Sealed packs not yet written and indexed, by any thread.
    outstanding: usize,
}

impl WriteState {
    fn writer(&mut self, slot: Slot) -> &mut PackWriter {
        match slot {
            Slot::Data => &mut self.data,
            Slot::Tree => &mut self.tree,
        }
    }
}

/// A sealed pack for the writer thread.
struct Job {
    name: String,
    bytes: Arc<Vec<u8>>,
    entries: Vec<PackEntry>,
}

/// What the store's callers and its writer thread share.
pub(crate) struct Shared {
    pub(crate) backend: Box<dyn PackBackend>,
    pub(crate) index: Mutex<Index>,
    /// This process (pid, start time): claims on packs being written.
    pub(crate) me: (u32, u64),
    state: Mutex<WriteState>,
    /// Signalled (with `state`) whenever a sealed pack has been written.
    written: std::sync::Condvar,
}

pub struct Store {
    dir: PathBuf,
    config: StoreConfig,
    options: OpenOptions,
    pub(crate) shared: Arc<Shared>,
    writer: Mutex<Option<(SyncSender<Job>, std::thread::JoinHandle<()>)>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere must not make the store unusable for error reporting.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn check_poisoned(state: &WriteState) -> Result<(), StoreError> {
        match &state.poisoned {
            Some(why) => Err(StoreError::Refused(format!(
                "an earlier pack write failed, nothing more is accepted in this session: {why}"
            ))),
            None => Ok(()),
        }
    }

    fn present(&self, state: &WriteState, id: &BlobId) -> Result<bool, StoreError> {
        Ok(state.pending.contains_key(id) || lock(&self.index).has(id)?)
    }

    /// Writes a sealed pack durably, then indexes it (writer thread).
    fn write_pack(
        &self,
        Job {
            name,
            bytes,
            entries,
        }: Job,
    ) {
        // Claimed first, so garbage collection (in any process) never
        // takes the file for an orphan between its rename and its rows.
        // (Separate statements: a lock guard in a chain lives to its end.)
        let claimed = lock(&self.index).claim_pack(&name, self.me.0, self.me.1);
        let result = claimed
            .and_then(|()| self.backend.put(&name, &bytes))
            .and_then(|()| {
                let mut index = lock(&self.index);
                index.add_pack(&name, bytes.len() as u64, &entries)
            });
        let mut st = lock(&self.state);
        for e in &entries {
            st.pending.remove(&e.id);
        }
        if let Err(e) = result {
            tracing::error!("writing pack {name}: {e}");
            st.poisoned.get_or_insert(format!("pack {name}: {e}"));
        }
        if let Ok(buffer) = Arc::try_unwrap(bytes) {
            st.spare = Some(buffer);
        }
        st.outstanding -= 1;
        self.written.notify_all();
    }
}

impl Store {
    /// Creates a new, empty store in `dir` (which may exist but must not
    /// already hold a store).
    pub fn init(dir: &Path, chunker: ChunkerParams, zstd_level: i32) -> Result<Store, StoreError> {
        chunker
            .validate()
            .map_err(|e| StoreError::Refused(e.to_string()))?;
        let cfg_path = dir.join("config");
        if cfg_path.exists() {
            return Err(StoreError::Refused(format!(
                "a store already exists at {}",
                dir.display()
            )));
        }
        std::fs::create_dir_all(dir.join("packs")).map_err(|source| StoreError::Io {
            context: format!("creating store directory {}", dir.display()),
            source,
        })?;
        let mut id = [0u8; 16];
        getrandom::fill(&mut id)
            .map_err(|e| StoreError::Refused(format!("no randomness for the store id: {e}")))?;
        let cfg = StoreConfig {
            id: homesync_protocol::id::hex(&id),
            chunker,
            zstd_level,
        };
        Index::open(&dir.join("index.sqlite"), true)?;
        // The config file is written last: it is what marks a complete store.
        config::write(&cfg_path, &cfg)?;
        Store::open(dir, OpenOptions::default())
    }

    /// Opens the store in `dir`.
    pub fn open(dir: &Path, options: OpenOptions) -> Result<Store, StoreError> {
        let cfg_path = dir.join("config");
        if !cfg_path.exists() {
            return Err(StoreError::NotFound(dir.display().to_string()));
        }
        let config = config::read(&cfg_path)?;
        let index = Index::open(&dir.join("index.sqlite"), false)?;
        Ok(Store {
            dir: dir.to_path_buf(),
            config,
            options,
            shared: Arc::new(Shared {
                backend: Box::new(LocalDir::new(dir.join("packs"))),
                index: Mutex::new(index),
                me: {
                    let pid = std::process::id();
                    (pid, crate::gc::process_start(pid).unwrap_or(0))
                },
                state: Mutex::new(WriteState {
                    data: PackWriter::new(),
                    tree: PackWriter::new(),
                    pending: HashMap::new(),
                    poisoned: None,
                    spare: None,
                    outstanding: 0,
                }),
                written: std::sync::Condvar::new(),
            }),
            writer: Mutex::new(None),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the packs are (for verification, `check.rs`).
    pub(crate) fn backend(&self) -> &dyn PackBackend {
        self.shared.backend.as_ref()
    }

    /// The index, locked: hold it briefly, backups wait meanwhile.
    pub(crate) fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        lock(&self.shared.index)
    }

    /// Sends a job to the writer thread, starting it on first use. Blocks
    /// while the queue is full (back-pressure on the backup).
    fn send(&self, job: Job) -> Result<(), StoreError> {
        let tx = {
            let mut w = lock(&self.writer);
            let (tx, _) = w.get_or_insert_with(|| {
                let (tx, rx) = sync_channel::<Job>(WRITE_QUEUE);
                let shared = self.shared.clone();
                let handle = std::thread::Builder::new()
                    .name("pack-writer".into())
                    .spawn(move || {
                        for job in rx {
                            shared.write_pack(job);
                        }
                    })
                    .expect("spawning the pack writer thread");
                (tx, handle)
            });
            tx.clone()
        };
        tx.send(job)
            .map_err(|_| StoreError::Refused("the pack writer thread has stopped".into()))
    }

    /// Seals the open pack in `slot` (if it has blobs) and queues it.
    fn seal(&self, slot: Slot) -> Result<(), StoreError> {
        let job = {
            let mut st = lock(&self.shared.state);
            Shared::check_poisoned(&st)?;
            let w = st.writer(slot);
            if w.is_empty() {
                return Ok(());
            }
            let (name, bytes, entries) = std::mem::take(w).finish();
            let bytes = Arc::new(bytes);
            st.outstanding += 1;
            for e in &entries {
                st.pending.insert(
                    e.id,
                    Pending::Sealed {
                        pack: bytes.clone(),
                        offset: e.offset,
                        length: e.length,
                    },
                );
            }
            Job {
                name,
                bytes,
                entries,
            }
        };
        self.send(job)
    }

    /// Makes every blob put so far durable and indexed, or reports why not.
    ///
    /// Waits for every sealed pack of every thread, not just this one's:
    /// a blob this session was told the store "has" may sit in another
    /// session's pack, and a snapshot must not be committed before it.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.seal(Slot::Data)?;
        self.seal(Slot::Tree)?;
        let mut st = lock(&self.shared.state);
        while st.outstanding > 0 && st.poisoned.is_none() {
            st = self
                .shared
                .written
                .wait(st)
                .unwrap_or_else(|e| e.into_inner());
        }
        Shared::check_poisoned(&st)
    }

    fn verify_upload(
        &self,
        id: BlobId,
        kind: BlobKind,
        encoded: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let corrupt = |source| StoreError::Corrupt { id, source };
        let parsed = Blob::parse(encoded).map_err(corrupt)?;
        // The chunker never cuts larger: a larger "chunk" would only make
        // every later read of it (signatures, deltas) cost more.
        if kind == BlobKind::Chunk && parsed.plain_len > self.config.chunker.max as usize {
            return Err(StoreError::Refused(format!(
                "chunk {id} has {} bytes, over the store's chunk limit of {}",
                parsed.plain_len, self.config.chunker.max
            )));
        }
        if parsed.kind != kind {
            return Err(corrupt(blob::BlobError::WrongKind {
                expected: kind,
                found: parsed.kind,
            }));
        }
        if self.options.verify_uploads || kind == BlobKind::Tree {
            return parsed.plain_verified(id).map(Some).map_err(corrupt);
        }
        Ok(None)
    }
    /// The stored (encoded) bytes of a blob not yet in the index (in an
    /// open or sealed pack of this process), if it is one.
    fn read_pending(&self, id: &BlobId) -> Option<Vec<u8>> {
        let mut st = lock(&self.shared.state);
        match st.pending.get(id).cloned()? {
            Pending::Open {
                slot,
                offset,
                length,
            } => Some(st.writer(slot).slice(offset, length).to_vec()),
            Pending::Sealed {
                pack,
                offset,
                length,
            } => Some(pack[offset as usize..offset as usize + length as usize].to_vec()),
        }
    }

    /// The stored (encoded) bytes of a blob, wherever it is.
    fn read_encoded(&self, id: BlobId) -> Result<Vec<u8>, StoreError> {
        if let Some(encoded) = self.read_pending(&id) {
            return Ok(encoded);
        }
        let locate = || {
            lock(&self.shared.index)
                .locate(&id)?
                .ok_or(StoreError::Missing(id))
        };
        let loc = locate()?;
        let read = |loc: &crate::index::BlobLocation| {
            self.shared
                .backend
                .read_at(&loc.pack, loc.offset, loc.length as usize)
        };
        read(&loc)
            .or_else(|e| {
                // Garbage collection may have moved the blob to a new
                // pack between the lookup and the read: look again.
                match locate() {
                    Ok(again) if again != loc => read(&again),
                    _ => Err(e),
                }
            })
            .map_err(|e| match e {
                // The index names bytes the pack does not have: the
                // pack is damaged (truncated or deleted).
                StoreError::Io { context, source }
                    if matches!(
                        source.kind(),
                        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::NotFound
                    ) =>
                {
                    StoreError::CorruptDetail {
                        id,
                        detail: format!("{context}: {source}"),
                    }
                }
                e => e,
            })
    }

    /// The encoded blob, after checking that it decodes to bytes hashing to
    /// `id` (tests, and callers that hand blobs on without decoding them).
    pub fn read_blob_verified(&self, id: BlobId, kind: BlobKind) -> Result<Vec<u8>, StoreError> {
        let encoded = self.read_encoded(id)?;
        blob::decode_verified(&encoded, id, kind)
            .map_err(|source| StoreError::Corrupt { id, source })?;
        Ok(encoded)
    }

    /// The encoded blob as stored, its header checked (magic, version,
    /// kind, lengths) but not decompressed or re-hashed: what the server
    /// sends for `Get`. The client verifies every blob against its id on
    /// arrival anyway, every blob was verified when it was uploaded, and
    /// `check --read-data` is where stored damage is looked for; verifying
    /// here too cost the server about as much CPU as the client's own
    /// check (zstd decompression and BLAKE3 of every byte restored).
    pub fn read_blob(&self, id: BlobId, kind: BlobKind) -> Result<Vec<u8>, StoreError> {
        let encoded = self.read_encoded(id)?;
        check_header(id, kind, &encoded)?;
        Ok(encoded)
    }

    /// Several encoded blobs of `kind`, as [`Store::read_blob`] reads one,
    /// in order: a missing or damaged blob is an `Err` in its place. Only
    /// a prefix comes back when the blobs are larger together than
    /// `budget` bytes (at least one blob, whatever its size). One index
    /// transaction for all; the blobs are read per pack in offset order,
    /// each run of neighbours (a backup writes a directory's small files
    /// next to each other) with one `pread`.
    #[allow(clippy::type_complexity)]
    pub fn read_blobs(
        &self,
        ids: &[BlobId],
        kind: BlobKind,
        budget: usize,
    ) -> Result<Vec<Result<Encoded, StoreError>>, StoreError> {
        let mut out: Vec<Option<Result<Encoded, StoreError>>> = ids
            .iter()
            .map(|id| self.read_pending(id).map(|b| Ok(b.into())))
            .collect();
        let want: Vec<BlobId> = ids
            .iter()
            .zip(&out)
            .filter(|(_, o)| o.is_none())
            .map(|(id, _)| *id)
            .collect();
        let mut found = lock(&self.shared.index).locate_many(&want)?.into_iter();
        let mut located = Vec::new();
        let mut bytes = 0usize;
        let mut end = ids.len();
        for (i, o) in out.iter_mut().enumerate() {
            let len = match o {
                Some(Ok(b)) => b.len(),
                Some(Err(_)) => 0,
                None => match found.next().flatten() {
                    Some(loc) => {
                        let len = loc.length as usize;
                        located.push((i, loc));
                        len
                    }
                    None => {
                        *o = Some(Err(StoreError::Missing(ids[i])));
                        0
                    }
                },
            };
            bytes = bytes.saturating_add(len);
            if i > 0 && bytes > budget {
                end = i;
                break;
            }
        }
        located.retain(|(i, _)| *i < end);
        out.truncate(end);
        // Per pack, by offset: neighbours closer than READ_GAP are read in
        // one run (the gap's bytes are read and dropped).
        located.sort_by(|(_, a), (_, b)| (&a.pack, a.offset).cmp(&(&b.pack, b.offset)));
        let runs = located.chunk_by(|(_, a), (_, b)| {
            a.pack == b.pack && b.offset <= a.offset + a.length as u64 + READ_GAP
        });
        for run in runs {
            let first = &run[0].1;
            let start = first.offset;
            let stop = run
                .iter()
                .map(|(_, l)| l.offset + l.length as u64)
                .max()
                .unwrap_or(start);
            match self
                .shared
                .backend
                .read_at(&first.pack, start, (stop - start) as usize)
            {
                Ok(span) => {
                    let span = Arc::new(span);
                    for (i, l) in run {
                        let at = (l.offset - start) as usize;
                        out[*i] = Some(Ok(Encoded {
                            buf: span.clone(),
                            at: at..at + l.length as usize,
                        }));
                    }
                }
                // A pack moved by garbage collection meanwhile, or damaged:
                // each blob on its own, which looks it up again and names
                // the damage.
                Err(_) => {
                    for (i, _) in run {
                        out[*i] = Some(self.read_encoded(ids[*i]).map(Encoded::from));
                    }
                }
            }
        }
        Ok(out
            .into_iter()
            .zip(ids)
            .map(|(o, &id)| {
                let encoded = o.unwrap_or(Err(StoreError::Missing(id)))?;
                check_header(id, kind, &encoded)?;
                Ok(encoded)
            })
            .collect())
    }
}

/// An encoded blob as read: a part of a buffer that may hold its
/// neighbours too (one `pread` for several blobs of a pack), so that
/// sending it needs no copy of its own.
pub struct Encoded {
    buf: Arc<Vec<u8>>,
    at: std::ops::Range<usize>,
}

impl std::ops::Deref for Encoded {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.at.clone()]
    }
}

impl From<Vec<u8>> for Encoded {
    fn from(bytes: Vec<u8>) -> Encoded {
        Encoded {
            at: 0..bytes.len(),
            buf: Arc::new(bytes),
        }
    }
}

/// Blobs of one pack this close together are read with one `pread`.
const READ_GAP: u64 = 64 << 10;

/// Whether `encoded` has a sound header for a blob of `kind` (no
/// decompression, no hashing).
fn check_header(id: BlobId, kind: BlobKind, encoded: &[u8]) -> Result<(), StoreError> {
    let corrupt = |source| StoreError::Corrupt { id, source };
    let parsed = Blob::parse(encoded).map_err(corrupt)?;
    if parsed.kind != kind {
        return Err(corrupt(blob::BlobError::WrongKind {
            expected: kind,
            found: parsed.kind,
        }));
    }
    Ok(())
}

impl Drop for Store {
    /// Lets queued packs finish: blobs a caller was told are stored are not
    /// silently dropped (they only become visible to others once indexed).
    fn drop(&mut self) {
        if let Some((tx, handle)) = lock(&self.writer).take() {
            drop(tx);
            let _ = handle.join();
        }
    }
}

impl Repository for Store {
    fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn has_blobs(&self, ids: &[BlobId]) -> Result<Vec<bool>, StoreError> {
        let st = lock(&self.shared.state);
        ids.iter().map(|id| self.shared.present(&st, id)).collect()
    }

    fn put_blob(&self, id: BlobId, kind: BlobKind, encoded: &[u8]) -> Result<bool, StoreError> {
        let plain = self.verify_upload(id, kind, encoded)?;
        let tree = match (kind, plain) {
            (BlobKind::Tree, Some(p)) => {
                Some(Tree::decode(&p).map_err(|e| StoreError::Refused(format!("tree {id}: {e}")))?)
            }
            _ => None,
        };
        let slot = if kind == BlobKind::Chunk {
            Slot::Data
        } else {
            Slot::Tree
        };
        let full = {
            let mut st = lock(&self.shared.state);
            Shared::check_poisoned(&st)?;
            if self.shared.present(&st, &id)? {
                return Ok(false);
            }
            // A tree may only name blobs the store already holds; trees are
            // uploaded bottom-up, so a snapshot's root transitively covers all.
            if let Some(tree) = &tree {
                for r in tree.references() {
                    if !self.shared.present(&st, &r)? {
                        return Err(StoreError::Refused(format!(
                            "tree {id} references blob {r}, which the store lacks"
                        )));
                    }
                }
            }
            let target = if slot == Slot::Data {
                PACK_TARGET
            } else {
                TREE_PACK_TARGET
            };
            if st.writer(slot).is_empty() {
                // First blob of a new pack: reserve once for the whole pack.
                let mut buffer = st.spare.take().unwrap_or_default();
                buffer.clear();
                buffer.reserve(target + encoded.len().max(blob::MAX_CHUNK_HINT));
                *st.writer(slot) = PackWriter::reusing(buffer);
            }
            let w = st.writer(slot);
            let offset = w.add(id, kind, encoded);
            let full = w.len() >= target;
            st.pending.insert(
                id,
                Pending::Open {
                    slot,
                    offset,
                    length: encoded.len() as u32,
                },
            );
            full
        };
        if full {
            if slot == Slot::Tree {
                // Trees name chunks: the chunks' pack goes to disk first, so a
                // crash never leaves an indexed tree whose chunks are lost.
                self.seal(Slot::Data)?;
            }
            self.seal(slot)?;
        }
        Ok(true)
    }

    fn get_blob(&self, id: BlobId, kind: BlobKind) -> Result<Vec<u8>, StoreError> {
        let encoded = self.read_encoded(id)?;
        blob::decode_verified(&encoded, id, kind)
            .map_err(|source| StoreError::Corrupt { id, source })
    }

    /// Read in one go ([`Store::read_blobs`]), then each blob verified.
    fn get_blobs(
        &self,
        ids: &[BlobId],
        kind: BlobKind,
    ) -> Result<Vec<Result<Vec<u8>, StoreError>>, StoreError> {
        Ok(self
            .read_blobs(ids, kind, usize::MAX)?
            .into_iter()
            .zip(ids)
            .map(|(encoded, &id)| {
                blob::decode_verified(&encoded?, id, kind)
                    .map_err(|source| StoreError::Corrupt { id, source })
            })
            .collect())
    }

    fn commit_snapshot(&self, snapshot: &Snapshot) -> Result<SnapshotId, StoreError> {
        let encoded = snapshot.encode();
        // What is recorded must read back: refuse now, not on every later listing.
        Snapshot::decode(&encoded).map_err(|e| StoreError::Refused(format!("snapshot: {e}")))?;
        let id = SnapshotId::of(&encoded);
        let blob = homesync_protocol::BlobEncoder::new(self.config.zstd_level)
            .encode(BlobKind::Snapshot, &encoded);
        self.put_blob(id.into(), BlobKind::Snapshot, &blob)?;
        self.flush()?;
        lock(&self.shared.index).add_snapshot(&id, snapshot, &encoded)?;
        Ok(id)
    }

    fn snapshots(&self) -> Result<Vec<(SnapshotId, Snapshot)>, StoreError> {
        lock(&self.shared.index).snapshots()
    }

    fn forget_snapshot(&self, id: SnapshotId) -> Result<(), StoreError> {
        lock(&self.shared.index).remove_snapshot(&id)
    }

    fn generation(&self) -> Result<u64, StoreError> {
        lock(&self.shared.index).generation()
    }

    /// Each distinct chunk is read once; one that is absent, damaged or
    /// (from an older store) over the chunk limit gets no signature, which
    /// only costs its delta.
    fn signatures(&self, ids: &[BlobId]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let mut done: HashMap<BlobId, Option<Vec<u8>>> = HashMap::new();
        for &id in ids {
            if done.contains_key(&id) {
                continue;
            }
            let sig = match self.get_blob(id, BlobKind::Chunk) {
                Ok(plain) if plain.len() <= self.config.chunker.max as usize => {
                    Some(delta::signature(&plain))
                }
                Ok(_) | Err(StoreError::Missing(_)) => None,
                Err(e) if e.is_corruption() => {
                    tracing::error!("no signature for chunk {id}: {e}");
                    None
                }
                Err(e) => return Err(e),
            };
            done.insert(id, sig);
        }
        Ok(ids.iter().map(|id| done[id].clone()).collect())
    }

    fn put_delta(
        &self,
        id: BlobId,
        kind: BlobKind,
        base: BlobId,
        payload: &[u8],
    ) -> Result<bool, StoreError> {
        let refused = |why: String| {
            StoreError::Refused(format!("delta for {kind:?} {id} against {base}: {why}"))
        };
        // No chunk is larger than the chunker's maximum: neither may a
        // delta's result be.
        let limit = match kind {
            BlobKind::Chunk => self.config.chunker.max as usize,
            BlobKind::Tree => delta::MAX_TREE_OUTPUT,
            BlobKind::Snapshot => return Err(refused("snapshots are sent with Commit".into())),
        };
        if self.has_blobs(&[id])?[0] {
            return Ok(false);
        }
        let base_plain = self.get_blob(base, kind)?;
        let plain =
            delta::apply(&base_plain, payload, limit).map_err(|e| refused(e.to_string()))?;
        // fast_rsync's checksums only chose blocks; BLAKE3 decides.
        if BlobId::of_kind(kind, &plain) != id {
            return Err(refused("the result does not hash to the blob's id".into()));
        }
        let blob = BlobEncoder::new(self.config.zstd_level).encode(kind, &plain);
        self.put_blob(id, kind, &blob)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use homesync_protocol::{BlobEncoder, ChunkId, Node, NodeKind, Timestamp, TreeId};

    fn chunk(store: &Store, data: &[u8]) -> ChunkId {
        let id = ChunkId::of(data);
        store
            .put_blob(
                id.into(),
                BlobKind::Chunk,
                &BlobEncoder::new(3).encode(BlobKind::Chunk, data),
            )
            .unwrap();
        id
    }

    fn tree_with(chunks: Vec<ChunkId>) -> (TreeId, Vec<u8>) {
        let mut n = Node::new(b"f".to_vec(), NodeKind::File);
        n.size = 5;
        n.chunks = chunks;
        let t = Tree::new(vec![n]);
        (
            t.id(),
            BlobEncoder::new(3).encode(BlobKind::Tree, &t.encode()),
        )
    }

    fn snapshot(root: TreeId) -> Snapshot {
        Snapshot {
            time: Timestamp { sec: 1, nsec: 0 },
            machine: "m".into(),
            source: b"/home".to_vec(),
            root: {
                let mut n = Node::new(b"home".to_vec(), NodeKind::Dir);
                n.subtree = Some(root);
                n
            },
            parent: None,
            tags: vec![],
            stats: Default::default(),
        }
    }

    #[test]
    fn blobs_survive_reopen_and_are_packed_together() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path(), ChunkerParams::default(), 3).unwrap();
        let ids: Vec<ChunkId> = (0..1000u32)
            .map(|i| chunk(&store, format!("file {i}").as_bytes()))
            .collect();
        assert!(
            !store
                .put_blob(
                    ids[0].into(),
                    BlobKind::Chunk,
                    &BlobEncoder::new(3).encode(BlobKind::Chunk, b"file 0")
                )
                .unwrap()
        );
        let (tid, tblob) = tree_with(ids.clone());
        store.put_blob(tid.into(), BlobKind::Tree, &tblob).unwrap();
        let sid = store.commit_snapshot(&snapshot(tid)).unwrap();
        drop(store);
        let store = Store::open(dir.path(), OpenOptions::default()).unwrap();
        assert_eq!(
            store.get_blob(ids[7].into(), BlobKind::Chunk).unwrap(),
            b"file 7"
        );
        assert_eq!(store.snapshots().unwrap()[0].0, sid);
        // 1000 blobs, one data pack and one tree pack.
        assert_eq!(store.shared.backend.list().unwrap().len(), 2);
    }

    #[test]
    fn a_tree_naming_a_missing_blob_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path(), ChunkerParams::default(), 3).unwrap();
        let (tid, tblob) = tree_with(vec![ChunkId([9; 32])]);
        let err = store
            .put_blob(tid.into(), BlobKind::Tree, &tblob)
            .unwrap_err();
        assert!(err.to_string().contains("lacks"), "{err}");
        let err = store.commit_snapshot(&snapshot(tid)).unwrap_err();
        assert!(err.to_string().contains("not in the store"), "{err}");
        assert!(store.snapshots().unwrap().is_empty());
    }

    #[test]
    fn a_chunk_larger_than_the_chunker_cuts_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(&dir.path().join("s"), ChunkerParams::default(), 3).unwrap();
        let big = vec![0u8; ChunkerParams::default().max as usize + 1];
        let id = ChunkId::of(&big).into();
        let r = store.put_blob(
            id,
            BlobKind::Chunk,
            &BlobEncoder::new(3).encode(BlobKind::Chunk, &big),
        );
        assert!(matches!(r, Err(StoreError::Refused(_))), "{r:?}");
        assert!(!store.has_blobs(&[id]).unwrap()[0]);
    }

    #[test]
    fn a_forged_upload_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path(), ChunkerParams::default(), 3).unwrap();
        let blob = BlobEncoder::new(3).encode(BlobKind::Chunk, b"real bytes");
        let err = store
            .put_blob(BlobId::of(b"other bytes"), BlobKind::Chunk, &blob)
            .unwrap_err();
        assert!(err.is_corruption(), "{err}");
        assert!(!store.has_blobs(&[BlobId::of(b"other bytes")]).unwrap()[0]);
    }

    /// Where a blob is: its index entry and its pack's path.
    fn where_is(store: &Store, id: ChunkId) -> (crate::index::BlobLocation, std::path::PathBuf) {
        let loc = lock(&store.shared.index)
            .locate(&id.into())
            .unwrap()
            .unwrap();
        let path = store.dir.join("packs").join(&loc.pack[..2]).join(&loc.pack);
        (loc, path)
    }

    #[test]
    fn a_flipped_byte_on_disk_is_reported_naming_the_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path(), ChunkerParams::default(), 3).unwrap();
        let data = vec![7u8; 1000];
        let id = chunk(&store, &data);
        store.flush().unwrap();
        let (loc, path) = where_is(&store, id);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[loc.offset as usize + loc.length as usize - 1] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let err = store.get_blob(id.into(), BlobKind::Chunk).unwrap_err();
        assert!(err.is_corruption());
        assert!(err.to_string().contains(&id.to_hex()), "{err}");
    }

    #[test]
    fn a_truncated_or_missing_pack_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path(), ChunkerParams::default(), 3).unwrap();
        let id = chunk(&store, &[5u8; 5000]);
        store.flush().unwrap();
        let (loc, path) = where_is(&store, id);
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(loc.offset + 3).unwrap();
        let err = store.get_blob(id.into(), BlobKind::Chunk).unwrap_err();
        assert!(
            err.is_corruption() && err.to_string().contains(&id.to_hex()),
            "{err}"
        );
        std::fs::remove_file(&path).unwrap();
        assert!(
            store
                .get_blob(id.into(), BlobKind::Chunk)
                .unwrap_err()
                .is_corruption()
        );
    }

    #[test]
    fn opening_a_missing_store_says_so() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Store::open(&dir.path().join("nope"), OpenOptions::default()),
            Err(StoreError::NotFound(_))
        ));
    }
}
