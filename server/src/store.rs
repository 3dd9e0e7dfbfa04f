//! The store: packs + index behind the [`Repository`] trait.
//!
//! Write path: `put_blob` appends to an in-memory pack (one for chunks, one
//! for trees and snapshots, so metadata stays together). A full pack is
//! sealed and handed to the pack writer thread, which writes and fsyncs it
//! through the backend and only then inserts its blobs into the index, while
//! the backup goes on hashing and compressing. Until indexed, blobs are
//! "pending": visible to `has_blobs`, `get_blob` and the tree reference
//! check of this process, but not to other processes.
//!
//! Packs are numbered as they are sealed, written by as many threads as the
//! backend writes at once, and indexed strictly in that order; a tree's pack
//! is sealed after the pack of every chunk it names (both in one step). So
//! the indexed packs are always a prefix of the sealed ones, and an indexed
//! tree never names a blob that is not indexed.
//!
//! A failed pack write poisons the store: later packs are not indexed, and
//! every call fails until [`Store::flush`] has seen every sealed pack
//! finish; that flush reports the failure, drops the blobs of the open packs
//! (their trees may name lost chunks) and lifts the poison. A session whose
//! blobs were lost then cannot commit: its trees name blobs the store lacks,
//! or its root tree is not indexed. So an object store that was down for a
//! while costs the backups running then, not the server's later ones.

use crate::backend::{LocalDir, PackBackend};
use crate::config;
use crate::index::Index;
use crate::pack::{PackEntry, PackWriter};
use crate::s3::{S3Backend, S3Config};
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
    /// The server config's `[s3]`, with its credentials. `None`: the store
    /// directory's `backend.toml` says where the packs are (credentials
    /// then come from the environment), or, without one, `DIR/packs`.
    pub s3: Option<S3Config>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            verify_uploads: true,
            s3: None,
        }
    }
}

/// The file in a store directory naming the bucket its packs live in.
pub const BACKEND_FILE: &str = "backend.toml";

/// `backend.toml`: `[s3]` with the bucket's location (no secrets).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendFile {
    s3: Option<S3Config>,
}

fn read_backend_file(dir: &Path) -> Result<Option<S3Config>, StoreError> {
    let path = dir.join(BACKEND_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::Io {
                context: format!("reading {}", path.display()),
                source,
            });
        }
    };
    let file: BackendFile = toml::from_str(&text)
        .map_err(|e| StoreError::Refused(format!("{}: {e}", path.display())))?;
    Ok(file.s3)
}

/// Records (durably) that the packs of the store in `dir` live in `s3`.
pub(crate) fn write_backend_file(dir: &Path, s3: &S3Config) -> Result<(), StoreError> {
    let text = toml::to_string(&BackendFile {
        s3: Some(s3.location()),
    })
    .expect("a backend config serializes");
    crate::backend::write_durably(
        &dir.join(BACKEND_FILE),
        format!("# Where this store's packs are (written by homesync; credentials are not kept here).\n{text}")
            .as_bytes(),
    )
}

/// The key of the store's config in a bucket.
pub const BUCKET_CONFIG: &str = "config";

/// The backend of the store in `dir`: the bucket of `given` (the server
/// config) or of `backend.toml`, or the local `packs/` directory. A bucket
/// is probed at once, so a wrong endpoint, bucket or key is an error now
/// rather than at the first backup.
pub(crate) fn open_backend(
    dir: &Path,
    given: Option<&S3Config>,
) -> Result<Box<dyn PackBackend>, StoreError> {
    let recorded = read_backend_file(dir)?;
    let s3 = match (given, recorded) {
        (None, None) => return Ok(Box::new(LocalDir::new(dir.join("packs")))),
        (Some(g), None) => {
            return Err(StoreError::Refused(format!(
                "the store at {} keeps its packs in {}, not in {}: packs do not move \
                 (remove [s3] from the server config, or recover the bucket's store \
                 into a new directory with `homesync admin rebuild-index`)",
                dir.display(),
                dir.join("packs").display(),
                g.describe()
            )));
        }
        (None, Some(r)) => r,
        (Some(g), Some(r)) if g.same_place(&r) => g.clone(),
        (Some(g), Some(r)) => {
            return Err(StoreError::Refused(format!(
                "the store at {} keeps its packs in {}, but the server config names {}",
                dir.display(),
                r.describe(),
                g.describe()
            )));
        }
    };
    let backend = S3Backend::new(&s3)?;
    backend.probe()?;
    Ok(Box::new(backend))
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
    /// The number the next sealed pack gets.
    sealed: u64,
    /// The number of the next pack to index: writers wait for their turn.
    indexed: u64,
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
    seq: u64,
    name: String,
    bytes: Arc<Vec<u8>>,
    entries: Vec<PackEntry>,
}

/// A store's config in its bucket must be the directory's: two stores
/// writing one bucket prefix would collect each other's packs as garbage.
fn check_bucket_config(bucket: &S3Backend, local: &StoreConfig) -> Result<(), StoreError> {
    match bucket.get_rel(BUCKET_CONFIG)? {
        // A store created before its config reached the bucket (a crash
        // between the two writes of `init`): complete it.
        None => bucket.put_rel(BUCKET_CONFIG, config::render(local).as_bytes()),
        Some(bytes) => match config::parse(&bytes) {
            Ok(c) if c.id == local.id => Ok(()),
            Ok(c) => Err(StoreError::Refused(format!(
                "{} holds store {}, but this store is {}: two stores must not share a bucket prefix",
                bucket.config().describe(),
                c.id,
                local.id
            ))),
            Err(e) => Err(StoreError::Refused(format!(
                "{}: its `config` object is unreadable: {e}",
                bucket.config().describe()
            ))),
        },
    }
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
    /// Held while sealing and handing packs to the writers, so that they
    /// receive packs in sealed order (the oldest unindexed pack always has
    /// a writer: no writer waits for a pack no writer holds).
    seal_order: Mutex<()>,
}

/// The pack writer threads and the channel feeding them.
type Writers = (SyncSender<Job>, Vec<std::thread::JoinHandle<()>>);

pub struct Store {
    dir: PathBuf,
    config: StoreConfig,
    /// See [`OpenOptions::verify_uploads`].
    verify_uploads: bool,
    pub(crate) shared: Arc<Shared>,
    writer: Mutex<Option<Writers>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere must not make the store unusable for error reporting.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn check_poisoned(state: &WriteState) -> Result<(), StoreError> {
        match &state.poisoned {
            Some(why) => Err(StoreError::Refused(format!(
                "an earlier pack write failed; the store takes blobs again once the uploads running now have finished: {why}"
            ))),
            None => Ok(()),
        }
    }

    fn present(&self, state: &WriteState, id: &BlobId) -> Result<bool, StoreError> {
        Ok(state.pending.contains_key(id) || lock(&self.index).has(id)?)
    }

    /// Writes a sealed pack durably, then, in its turn, indexes it
    /// (writer threads).
    fn write_pack(
        &self,
        Job {
            seq,
            name,
            bytes,
            entries,
        }: Job,
    ) {
        // Claimed first, so garbage collection (in any process) never
        // takes the file for an orphan between its rename and its rows.
        // (Separate statements: a lock guard in a chain lives to its end.)
        let claimed = lock(&self.index).claim_pack(&name, self.me.0, self.me.1);
        let written = claimed.and_then(|()| self.backend.put(&name, &bytes));
        let earlier_failure = {
            let mut st = lock(&self.state);
            while st.indexed != seq {
                st = self.written.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            st.poisoned.clone()
        };
        let result = written.and_then(|()| match earlier_failure {
            // An earlier pack is lost: this one may hold trees naming its
            // chunks, so it must not be indexed (it is an orphan now).
            Some(why) => {
                let _ = self.backend.delete(&name);
                Err(StoreError::Refused(format!("not indexed after {why}")))
            }
            None => lock(&self.index).add_pack(&name, bytes.len() as u64, &entries),
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
        st.indexed += 1;
        self.written.notify_all();
    }
}

impl Store {
    /// Creates a new, empty store in `dir` (which may exist but must not
    /// already hold a store).
    pub fn init(dir: &Path, chunker: ChunkerParams, zstd_level: i32) -> Result<Store, StoreError> {
        Self::init_with(dir, chunker, zstd_level, OpenOptions::default())
    }

    /// [`Store::init`] with options: with `options.s3`, the packs go to
    /// that bucket, which must not hold a store already.
    pub fn init_with(
        dir: &Path,
        chunker: ChunkerParams,
        zstd_level: i32,
        options: OpenOptions,
    ) -> Result<Store, StoreError> {
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
        let packs = if options.s3.is_some() {
            dir.to_path_buf()
        } else {
            dir.join("packs")
        };
        std::fs::create_dir_all(&packs).map_err(|source| StoreError::Io {
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
        if let Some(s3) = &options.s3 {
            let bucket = S3Backend::new(s3)?;
            bucket.probe()?;
            if let Some(existing) = bucket.get_rel(BUCKET_CONFIG)? {
                let id = config::parse(&existing)
                    .map(|c| c.id)
                    .unwrap_or_else(|_| "(unreadable config)".into());
                return Err(StoreError::Refused(format!(
                    "{} already holds store {id}: recover it with \
                     `homesync admin rebuild-index` instead of creating a new one",
                    s3.describe()
                )));
            }
            bucket.put_rel(BUCKET_CONFIG, config::render(&cfg).as_bytes())?;
            write_backend_file(dir, s3)?;
        }
        Index::open(&dir.join("index.sqlite"), true)?;
        // The config file is written last: it is what marks a complete store.
        config::write(&cfg_path, &cfg)?;
        Store::open(dir, options)
    }

    /// Opens the store in `dir`.
    pub fn open(dir: &Path, options: OpenOptions) -> Result<Store, StoreError> {
        let cfg_path = dir.join("config");
        if !cfg_path.exists() {
            return Err(StoreError::NotFound(dir.display().to_string()));
        }
        let config = config::read(&cfg_path)?;
        let backend = open_backend(dir, options.s3.as_ref())?;
        if let Some(bucket) = backend.s3() {
            check_bucket_config(bucket, &config)?;
        }
        let index = Index::open(&dir.join("index.sqlite"), false)?;
        Ok(Store {
            dir: dir.to_path_buf(),
            config,
            verify_uploads: options.verify_uploads,
            shared: Arc::new(Shared {
                backend,
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
                    sealed: 0,
                    indexed: 0,
                }),
                written: std::sync::Condvar::new(),
                seal_order: Mutex::new(()),
            }),
            writer: Mutex::new(None),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The store with its backend wrapped by `wrap`: fault injection in
    /// tests (failing writes, a full disk). Call before any blob is put.
    pub fn wrap_backend(
        mut self,
        wrap: impl FnOnce(Box<dyn PackBackend>) -> Box<dyn PackBackend>,
    ) -> Store {
        let shared = Arc::get_mut(&mut self.shared).expect("no writer threads yet");
        let noop: Box<dyn PackBackend> = Box::new(LocalDir::new(PathBuf::new()));
        let inner = std::mem::replace(&mut shared.backend, noop);
        shared.backend = wrap(inner);
        self
    }

    /// The bucket holding the packs, if they are not in `DIR/packs`.
    pub fn bucket(&self) -> Option<&S3Backend> {
        self.shared.backend.s3()
    }

    /// Where the packs are (for verification, `check.rs`).
    pub(crate) fn backend(&self) -> &dyn PackBackend {
        self.shared.backend.as_ref()
    }

    /// The index, locked: hold it briefly, backups wait meanwhile.
    pub(crate) fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        lock(&self.shared.index)
    }

    /// Sends a job to the writer threads (as many as the backend writes
    /// packs at once), starting them on first use. Blocks while they are
    /// all busy (back-pressure on the backup).
    fn send(&self, job: Job) -> Result<(), StoreError> {
        let tx = {
            let mut w = lock(&self.writer);
            let (tx, _) = w.get_or_insert_with(|| {
                let (tx, rx) = sync_channel::<Job>(WRITE_QUEUE);
                let rx = Arc::new(Mutex::new(rx));
                let handles = (0..self.shared.backend.parallel_writes().max(1))
                    .map(|_| {
                        let shared = self.shared.clone();
                        let rx = rx.clone();
                        std::thread::Builder::new()
                            .name("pack-writer".into())
                            .spawn(move || {
                                // The lock is held only while waiting for a job.
                                while let Ok(job) = { lock(&rx).recv() } {
                                    shared.write_pack(job);
                                }
                            })
                            .expect("spawning a pack writer thread")
                    })
                    .collect();
                (tx, handles)
            });
            tx.clone()
        };
        tx.send(job)
            .map_err(|_| StoreError::Refused("the pack writer thread has stopped".into()))
    }

    /// Seals the open chunk pack and, with `trees`, then the open tree
    /// pack (so a tree's chunks are always in an earlier pack), and hands
    /// them to the writers in that order.
    fn seal(&self, trees: bool) -> Result<(), StoreError> {
        let _order = lock(&self.shared.seal_order);
        let jobs = {
            let mut st = lock(&self.shared.state);
            Shared::check_poisoned(&st)?;
            let slots: &[Slot] = if trees {
                &[Slot::Data, Slot::Tree]
            } else {
                &[Slot::Data]
            };
            let mut jobs = Vec::new();
            for &slot in slots {
                let w = st.writer(slot);
                if w.is_empty() {
                    continue;
                }
                let (name, bytes, entries) = std::mem::take(w).finish();
                let bytes = Arc::new(bytes);
                st.outstanding += 1;
                let seq = st.sealed;
                st.sealed += 1;
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
                jobs.push(Job {
                    seq,
                    name,
                    bytes,
                    entries,
                });
            }
            jobs
        };
        for job in jobs {
            self.send(job)?;
        }
        Ok(())
    }

    /// Makes every blob put so far durable and indexed, or reports why not.
    ///
    /// Waits for every sealed pack of every thread, not just this one's:
    /// a blob this session was told the store "has" may sit in another
    /// session's pack, and a snapshot must not be committed before it.
    /// After a failed pack write, this is where the store recovers (see the
    /// module documentation).
    pub fn flush(&self) -> Result<(), StoreError> {
        let sealed = self.seal(true);
        let mut st = lock(&self.shared.state);
        while st.outstanding > 0 {
            st = self
                .shared
                .written
                .wait(st)
                .unwrap_or_else(|e| e.into_inner());
        }
        if let Some(why) = st.poisoned.take() {
            let st = &mut *st;
            for slot in [Slot::Data, Slot::Tree] {
                *st.writer(slot) = PackWriter::new();
            }
            st.pending.retain(|_, p| !matches!(p, Pending::Open { .. }));
            return Err(StoreError::Refused(format!(
                "a pack write failed, the blobs of this and other running sessions since \
                 then are not stored: {why}"
            )));
        }
        sealed
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
        if self.verify_uploads || kind == BlobKind::Tree {
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
                    let span = Encoded::from(span);
                    for (i, l) in run {
                        let at = (l.offset - start) as usize;
                        out[*i] = Some(Ok(span.slice(at..at + l.length as usize)));
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
pub type Encoded = bytes::Bytes;

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
        if let Some((tx, handles)) = lock(&self.writer).take() {
            drop(tx);
            for h in handles {
                let _ = h.join();
            }
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
            // Trees name chunks: the chunks' pack goes first, so neither a
            // crash nor a failed write leaves an indexed tree whose chunks
            // are lost.
            self.seal(slot == Slot::Tree)?;
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

    /// Fails every pack write while `failing` is set.
    struct Flaky {
        inner: Box<dyn PackBackend>,
        failing: Arc<std::sync::atomic::AtomicBool>,
    }

    impl PackBackend for Flaky {
        fn put(&self, name: &str, data: &[u8]) -> Result<(), StoreError> {
            if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::Io {
                    context: format!("writing pack {name}"),
                    source: std::io::Error::other("injected: the bucket is down"),
                });
            }
            self.inner.put(name, data)
        }
        fn read_at(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
            self.inner.read_at(name, offset, len)
        }
        fn read(&self, name: &str) -> Result<Vec<u8>, StoreError> {
            self.inner.read(name)
        }
        fn list(&self) -> Result<Vec<String>, StoreError> {
            self.inner.list()
        }
        fn delete(&self, name: &str) -> Result<(), StoreError> {
            self.inner.delete(name)
        }
        fn size(&self, name: &str) -> Result<Option<u64>, StoreError> {
            self.inner.size(name)
        }
        fn parallel_writes(&self) -> usize {
            4
        }
    }

    /// A new store in `dir` whose pack writes fail while the flag is set.
    fn flaky_store(dir: &Path) -> (Store, Arc<std::sync::atomic::AtomicBool>) {
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = failing.clone();
        let store = Store::init(dir, ChunkerParams::default(), 3)
            .unwrap()
            .wrap_backend(|inner| Box::new(Flaky { inner, failing: f }));
        (store, failing)
    }

    #[test]
    fn a_failed_pack_write_fails_the_running_backup_and_the_next_one_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let (store, failing) = flaky_store(dir.path());
        let kept = chunk(&store, b"stored before the outage");
        store.flush().unwrap();

        failing.store(true, std::sync::atomic::Ordering::SeqCst);
        let lost = chunk(&store, b"lost in the outage");
        let (tid, tblob) = tree_with(vec![kept, lost]);
        store.put_blob(tid.into(), BlobKind::Tree, &tblob).unwrap();
        let e = store.commit_snapshot(&snapshot(tid)).unwrap_err();
        assert!(e.to_string().contains("the bucket is down"), "{e}");
        assert!(store.snapshots().unwrap().is_empty());
        failing.store(false, std::sync::atomic::Ordering::SeqCst);

        // Nothing of the failed session is claimed to be stored; the tree
        // naming the lost chunk is refused until the chunk comes again.
        assert_eq!(
            store
                .has_blobs(&[kept.into(), lost.into(), tid.into()])
                .unwrap(),
            [true, false, false]
        );
        let e = store
            .put_blob(tid.into(), BlobKind::Tree, &tblob)
            .unwrap_err();
        assert!(e.to_string().contains("lacks"), "{e}");
        chunk(&store, b"lost in the outage");
        store.put_blob(tid.into(), BlobKind::Tree, &tblob).unwrap();
        let sid = store.commit_snapshot(&snapshot(tid)).unwrap();
        assert_eq!(store.snapshots().unwrap()[0].0, sid);
        assert_eq!(
            store.get_blob(lost.into(), BlobKind::Chunk).unwrap(),
            b"lost in the outage"
        );
    }

    #[test]
    fn four_writer_threads_store_every_pack() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = flaky_store(dir.path());
        // Enough incompressible chunks for several data packs, written by
        // four threads at once.
        let mut ids = Vec::new();
        for i in 0..40u64 {
            let mut data = vec![0u8; 1 << 20];
            let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            for b in data.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            ids.push(chunk(&store, &data));
        }
        let (tid, tblob) = tree_with(ids.clone());
        store.put_blob(tid.into(), BlobKind::Tree, &tblob).unwrap();
        store.commit_snapshot(&snapshot(tid)).unwrap();
        drop(store);
        let store = Store::open(dir.path(), OpenOptions::default()).unwrap();
        assert!(store.shared.backend.list().unwrap().len() >= 3);
        for id in ids {
            store.get_blob(id.into(), BlobKind::Chunk).unwrap();
        }
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
