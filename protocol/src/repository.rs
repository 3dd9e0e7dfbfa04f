//! The one seam between the client engine and a store.
//!
//! The client backs up and restores through [`Repository`]; the embedded
//! store implements it in-process, a QUIC connection will implement it for a
//! remote server. The client never knows which one it has.

use crate::blob::{BlobError, BlobKind};
use crate::chunker::ChunkerParams;
use crate::id::{BlobId, SnapshotId};
use crate::snapshot::Snapshot;

/// What a client must know about a store to write to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Random, fixed at creation: client caches are kept per store id.
    pub id: String,
    /// Fixed at creation so chunk boundaries never drift.
    pub chunker: ChunkerParams,
    /// zstd level clients should compress blobs with.
    pub zstd_level: i32,
}

/// Bytes a connection to a remote store moved since it opened. Payload
/// counts are what the engine handed over; `sent` and `received` are whole
/// UDP datagrams (QUIC and TLS framing, acknowledgements, retransmissions),
/// so the difference is the protocol's overhead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfer {
    pub sent: u64,
    pub received: u64,
    /// Encoded blobs (chunks and trees) sent whole.
    pub blob_bytes: u64,
    /// Delta payloads sent instead of whole chunks.
    pub delta_bytes: u64,
    pub deltas: u64,
}

impl Transfer {
    /// What moved between `earlier` and `self`.
    pub fn since(&self, earlier: &Transfer) -> Transfer {
        Transfer {
            sent: self.sent.saturating_sub(earlier.sent),
            received: self.received.saturating_sub(earlier.received),
            blob_bytes: self.blob_bytes.saturating_sub(earlier.blob_bytes),
            delta_bytes: self.delta_bytes.saturating_sub(earlier.delta_bytes),
            deltas: self.deltas.saturating_sub(earlier.deltas),
        }
    }

    /// Bytes sent that were neither blobs nor deltas.
    pub fn overhead(&self) -> u64 {
        self.sent
            .saturating_sub(self.blob_bytes)
            .saturating_sub(self.delta_bytes)
    }
}

/// Errors any store can return. Corruption always names the blob.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("blob {id} is corrupt: {source}")]
    Corrupt {
        id: BlobId,
        #[source]
        source: BlobError,
    },
    #[error("blob {id} is corrupt: {detail}")]
    CorruptDetail { id: BlobId, detail: String },
    #[error("blob {0} is not in the store")]
    Missing(BlobId),
    #[error("snapshot {0} is not in the store")]
    NoSnapshot(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("store index: {0}")]
    Index(String),
    #[error("no store at {0} (create one with `homesync init`)")]
    NotFound(String),
}

impl StoreError {
    /// True when the error means stored bytes are damaged or lost (exit code
    /// 5): a blob a committed snapshot references is unreadable or gone.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            StoreError::Corrupt { .. } | StoreError::CorruptDetail { .. } | StoreError::Missing(_)
        )
    }
}

/// A content-addressed store as the client sees it.
///
/// Ordering promise: a blob for which `put_blob` returned is readable by
/// `get_blob` in this process; after `commit_snapshot` returns, the snapshot
/// and everything it references are durable.
pub trait Repository: Send + Sync {
    fn config(&self) -> &StoreConfig;

    /// For each id, whether the store already holds it.
    fn has_blobs(&self, ids: &[BlobId]) -> Result<Vec<bool>, StoreError>;

    /// Stores an encoded blob (see [`crate::blob`]) under `id`, the hash of
    /// its plain bytes. Returns false when the store already had it.
    /// A tree is refused unless every blob it references is present.
    fn put_blob(&self, id: BlobId, kind: BlobKind, encoded: &[u8]) -> Result<bool, StoreError>;

    /// The plain bytes of a blob, verified to hash to `id`.
    fn get_blob(&self, id: BlobId, kind: BlobKind) -> Result<Vec<u8>, StoreError>;

    /// The plain bytes of several blobs of one kind, each verified to hash
    /// to its id, in order. A blob that is missing or damaged is an `Err`
    /// in its place and the others still come (a restore names the files
    /// it affects and restores the rest); the outer `Err` is a failure of
    /// the whole call (a lost connection). Over a network this is one
    /// round trip for many small blobs instead of one each.
    #[allow(clippy::type_complexity)]
    fn get_blobs(
        &self,
        ids: &[BlobId],
        kind: BlobKind,
    ) -> Result<Vec<Result<Vec<u8>, StoreError>>, StoreError> {
        Ok(ids.iter().map(|&id| self.get_blob(id, kind)).collect())
    }

    /// Makes every blob put so far durable, then records the snapshot, in
    /// that order. Refused when the snapshot's root tree is missing.
    fn commit_snapshot(&self, snapshot: &Snapshot) -> Result<SnapshotId, StoreError>;

    /// All snapshots, oldest first.
    fn snapshots(&self) -> Result<Vec<(SnapshotId, Snapshot)>, StoreError>;

    /// The newest snapshot of `machine` with source `source` (a backup's
    /// parent). A remote store answers it without sending the whole list.
    fn latest_snapshot(
        &self,
        machine: &str,
        source: &[u8],
    ) -> Result<Option<(SnapshotId, Snapshot)>, StoreError> {
        Ok(self
            .snapshots()?
            .into_iter()
            .rev()
            .find(|(_, s)| s.machine == machine && s.source == source))
    }

    /// The store's generation: it changes whenever blobs may have left the
    /// store (garbage collection, an index rebuilt from packs). What a
    /// client learnt about which blobs the store holds is only good for the
    /// generation it learnt it in.
    fn generation(&self) -> Result<u64, StoreError>;

    /// Whether sending a blob as a delta ([`Repository::put_delta`]) saves
    /// anything: over a network it does; to an embedded store it would only
    /// spend CPU.
    fn prefers_deltas(&self) -> bool {
        false
    }

    /// The delta signatures ([`crate::delta::signature`]) of these chunks;
    /// `None` for a chunk the store lacks.
    fn signatures(&self, ids: &[BlobId]) -> Result<Vec<Option<Vec<u8>>>, StoreError>;

    /// Stores blob `id` of `kind` (a chunk or a tree) given as a delta
    /// against `base`, a blob of the same kind the store holds: the result
    /// is rebuilt, checked to hash to `id`, and stored whole, exactly as
    /// [`Repository::put_blob`] would. Refused when it does not hash to
    /// `id` (then send the blob whole). False when the store had `id`.
    fn put_delta(
        &self,
        id: BlobId,
        kind: BlobKind,
        base: BlobId,
        delta: &[u8],
    ) -> Result<bool, StoreError>;

    /// Bytes moved so far, for a store across a network.
    fn transfer(&self) -> Option<Transfer> {
        None
    }

    /// Removes a snapshot from the list. Its blobs stay until garbage
    /// collection finds nothing else references them. A server allows this
    /// to admin credentials only (machines are append-only).
    fn forget_snapshot(&self, id: SnapshotId) -> Result<(), StoreError>;
}
