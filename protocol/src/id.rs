//! Typed content ids: BLAKE3-256 of the plain bytes they name.
//!
//! Chunks use plain BLAKE3. Trees and snapshots use BLAKE3 in key
//! derivation mode with a context string of their own, so the three kinds
//! live in separate id spaces: a file whose bytes happen to equal an encoded
//! tree (an empty directory's tree is two bytes) can never be confused with
//! that tree, in the index or anywhere else. In code, mixing up a tree id
//! and a chunk id is a type error.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// An id string that is not 64 hex digits (or a valid prefix of them).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a valid id: {0:?} (expected 64 hex digits)")]
pub struct IdParseError(pub String);

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $hash:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The id of `data`: its BLAKE3-256 hash.
            pub fn of(data: &[u8]) -> Self {
                let hash: fn(&[u8]) -> [u8; 32] = $hash;
                Self(hash(data))
            }
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
            /// The full id in lowercase hex.
            pub fn to_hex(&self) -> String {
                hex(&self.0)
            }
            /// The first 8 hex digits, as shown in listings.
            pub fn short(&self) -> String {
                hex(&self.0[..4])
            }
            /// Parses a slice of exactly 32 bytes (e.g. a database column).
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                <[u8; 32]>::try_from(bytes).ok().map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_hex32(s).map(Self).ok_or_else(|| IdParseError(s.to_string()))
            }
        }
    };
}

/// Context strings of the keyed id spaces; never change them.
pub const TREE_CONTEXT: &str = "homesync 2026-11 tree id";
pub const SNAPSHOT_CONTEXT: &str = "homesync 2026-11 snapshot id";

fn plain_hash(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

fn tree_hash(data: &[u8]) -> [u8; 32] {
    blake3::derive_key(TREE_CONTEXT, data)
}

fn snapshot_hash(data: &[u8]) -> [u8; 32] {
    blake3::derive_key(SNAPSHOT_CONTEXT, data)
}

typed_id!(
    /// Names any blob in the store, whatever it holds. `BlobId::of` is the
    /// chunk hash; use [`BlobId::of_kind`] when the kind is known.
    BlobId,
    plain_hash
);
typed_id!(
    /// Names a chunk: a run of file bytes cut by the chunker.
    ChunkId,
    plain_hash
);
typed_id!(
    /// Names an encoded tree (one directory's nodes).
    TreeId,
    tree_hash
);
typed_id!(
    /// Names an encoded snapshot.
    SnapshotId,
    snapshot_hash
);

impl BlobId {
    /// The id of `plain` bytes stored as a blob of `kind`.
    pub fn of_kind(kind: crate::BlobKind, plain: &[u8]) -> BlobId {
        BlobId(match kind {
            crate::BlobKind::Chunk => plain_hash(plain),
            crate::BlobKind::Tree => tree_hash(plain),
            crate::BlobKind::Snapshot => snapshot_hash(plain),
        })
    }
}

impl From<ChunkId> for BlobId {
    fn from(id: ChunkId) -> Self {
        BlobId(id.0)
    }
}

impl From<TreeId> for BlobId {
    fn from(id: TreeId) -> Self {
        BlobId(id.0)
    }
}

impl From<SnapshotId> for BlobId {
    fn from(id: SnapshotId) -> Self {
        BlobId(id.0)
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn hex_round_trips(bytes in any::<[u8; 32]>()) {
            let id = ChunkId(bytes);
            prop_assert_eq!(id.to_hex().parse::<ChunkId>().unwrap(), id);
        }

        #[test]
        fn parse_never_panics(s in ".{0,80}") {
            let _ = s.parse::<SnapshotId>();
        }
    }

    #[test]
    fn id_is_blake3_of_the_plain_bytes_in_one_space_per_kind() {
        assert_eq!(ChunkId::of(b"abc").0, *blake3::hash(b"abc").as_bytes());
        assert!("xyz".parse::<TreeId>().is_err());
        // An empty directory's tree and a file holding the same two bytes.
        let bytes = crate::Tree::default().encode();
        assert_ne!(TreeId::of(&bytes).0, ChunkId::of(&bytes).0);
        assert_ne!(SnapshotId::of(&bytes).0, TreeId::of(&bytes).0);
        assert_eq!(
            BlobId::of_kind(crate::BlobKind::Tree, &bytes).0,
            TreeId::of(&bytes).0
        );
    }
}
