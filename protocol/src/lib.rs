//! homesync's pure formats: the words of `docs/design.md` as types and bytes.
//!
//! Nothing here touches the network, the disk or a database, so every format
//! can be tested (and fuzzed) in isolation and shared by the client and the
//! store, which never import each other.

pub mod blob;
pub mod chunker;
pub mod delta;
pub mod id;
pub mod repository;
pub mod snapshot;
pub mod tree;
pub mod wire;

pub use blob::{Blob, BlobEncoder, BlobError, BlobKind, Codec};
pub use chunker::{ChunkerError, ChunkerParams};
pub use delta::DeltaError;
pub use id::{BlobId, ChunkId, IdParseError, SnapshotId, TreeId};
pub use repository::{Repository, StoreConfig, StoreError, Transfer};
pub use snapshot::{Snapshot, SnapshotStats};
pub use tree::{FormatError, Node, NodeKind, Timestamp, Tree};
