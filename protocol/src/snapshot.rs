//! Snapshots: one backup of one source (machine + path) at one time.

use crate::id::{SnapshotId, TreeId};
use crate::tree::{FormatError, Node, NodeKind, Timestamp, decode_versioned, encode_versioned};
use serde::{Deserialize, Serialize};

pub const SNAPSHOT_VERSION: u8 = 1;

/// Counts recorded with a snapshot (what the backup saw and what it added).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotStats {
    pub files: u64,
    pub dirs: u64,
    pub other: u64,
    /// Logical bytes of all files.
    pub bytes: u64,
    /// Files whose contents were read (the rest came from the file-state cache).
    pub files_read: u64,
    pub bytes_read: u64,
    /// Blobs and (encoded) bytes this backup added to the store.
    pub blobs_added: u64,
    pub bytes_added: u64,
    /// Entries that could not be read: the snapshot is partial.
    pub errors: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub time: Timestamp,
    pub machine: String,
    /// The absolute source path, raw bytes.
    pub source: Vec<u8>,
    /// The source directory itself: its metadata, and its tree as `subtree`.
    pub root: Node,
    pub parent: Option<SnapshotId>,
    pub tags: Vec<String>,
    pub stats: SnapshotStats,
}

impl Snapshot {
    pub fn encode(&self) -> Vec<u8> {
        encode_versioned(SNAPSHOT_VERSION, self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Snapshot, FormatError> {
        let snap: Snapshot = decode_versioned(SNAPSHOT_VERSION, bytes)?;
        snap.root.validate()?;
        if snap.root.kind != NodeKind::Dir {
            return Err(FormatError::BadNode {
                name: String::from_utf8_lossy(&snap.root.name).into_owned(),
                why: "a snapshot's root must be a directory",
            });
        }
        Ok(snap)
    }

    /// The id of the source directory's tree.
    pub fn root_tree(&self) -> TreeId {
        self.root
            .subtree
            .expect("validated: a snapshot root is a directory")
    }

    pub fn id(&self) -> SnapshotId {
        SnapshotId::of(&self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn snapshot_round_trips(sec: i64, machine in ".{0,20}", source in proptest::collection::vec(any::<u8>(), 0..50), root: [u8; 32], tags in proptest::collection::vec(".{0,8}", 0..3), files: u64) {
            let s = Snapshot {
                time: Timestamp { sec, nsec: 5 },
                machine,
                source,
                root: {
                    let mut n = Node::new(b"home".to_vec(), NodeKind::Dir);
                    n.subtree = Some(TreeId(root));
                    n
                },
                parent: Some(SnapshotId(root)),
                tags,
                stats: SnapshotStats { files, ..Default::default() },
            };
            let bytes = s.encode();
            prop_assert_eq!(Snapshot::decode(&bytes).unwrap(), s.clone());
            prop_assert_eq!(SnapshotId::of(&bytes), s.id());
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1000)) {
            let _ = Snapshot::decode(&bytes);
        }
    }
}
