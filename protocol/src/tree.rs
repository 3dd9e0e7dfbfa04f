//! Nodes and trees: one directory's entries, encoded deterministically.
//!
//! Encoding: one format-version byte, then the postcard encoding of the
//! struct. Postcard has no maps and no optional field order, so one value has
//! exactly one encoding and a tree id is a true content hash. New fields mean
//! a new version byte. Decoding trusts nothing: trailing bytes, names that
//! could escape a restore target, unsorted or duplicate names, and fields
//! that do not fit the node's kind are all refused.

use crate::id::{ChunkId, TreeId};
use serde::{Deserialize, Serialize};

pub const TREE_VERSION: u8 = 1;

/// Why bytes are not a valid tree or snapshot.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("empty record")]
    Empty,
    #[error("unsupported format version {0}")]
    Version(u8),
    #[error("malformed encoding: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the record")]
    Trailing(usize),
    #[error("unsafe entry name {0:?}")]
    BadName(String),
    #[error("entries not in strictly increasing name order at {0:?}")]
    Unsorted(String),
    #[error("node {name:?}: {why}")]
    BadNode { name: String, why: &'static str },
}

/// The kind of a node, as in the glossary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
    /// A further name of a file seen earlier in the same snapshot: `target`
    /// is that file's path from the snapshot root. It also carries the file's
    /// contents so that restoring this path alone still gives the data.
    Hardlink,
    Fifo,
    CharDevice,
    BlockDevice,
    Socket,
}

impl NodeKind {
    /// The letter `ls -l` uses for this kind.
    pub fn letter(self) -> char {
        match self {
            NodeKind::File | NodeKind::Hardlink => '-',
            NodeKind::Dir => 'd',
            NodeKind::Symlink => 'l',
            NodeKind::Fifo => 'p',
            NodeKind::CharDevice => 'c',
            NodeKind::BlockDevice => 'b',
            NodeKind::Socket => 's',
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            NodeKind::File => "file",
            NodeKind::Dir => "dir",
            NodeKind::Symlink => "symlink",
            NodeKind::Hardlink => "hardlink",
            NodeKind::Fifo => "fifo",
            NodeKind::CharDevice => "chardev",
            NodeKind::BlockDevice => "blockdev",
            NodeKind::Socket => "socket",
        }
    }

    fn has_content(self) -> bool {
        matches!(self, NodeKind::File | NodeKind::Hardlink)
    }
}

/// A point in time with nanosecond precision, any year (odd mtimes exist).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

/// One entry of a tree. Fields that do not apply to the kind stay empty;
/// [`Tree::decode`] refuses nodes where they do not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Raw name bytes: Linux names need not be UTF-8.
    pub name: Vec<u8>,
    pub kind: NodeKind,
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Owner names at backup time, so a restore can map them onto new ids.
    pub user: Option<String>,
    pub group: Option<String>,
    pub mtime: Timestamp,
    /// Logical size for files (holes included); 0 otherwise.
    pub size: u64,
    /// Extended attributes (POSIX ACLs among them), sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// File contents: the chunks of the data regions, in order.
    pub chunks: Vec<ChunkId>,
    /// Data regions `(offset, length)` of a sparse file; empty for a dense
    /// file (one region covering everything) and for a file that is all
    /// hole (size > 0, no chunks). Holes are the gaps between regions.
    pub extents: Vec<(u64, u64)>,
    /// The directory's tree.
    pub subtree: Option<TreeId>,
    /// Symlink target, or the snapshot path of a hardlink's first name.
    pub target: Vec<u8>,
    /// Device number of a char or block device.
    pub rdev: u64,
}

impl Node {
    /// A node of `kind` with every optional field empty.
    pub fn new(name: Vec<u8>, kind: NodeKind) -> Self {
        Node {
            name,
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            user: None,
            group: None,
            mtime: Timestamp::default(),
            size: 0,
            xattrs: Vec::new(),
            chunks: Vec::new(),
            extents: Vec::new(),
            subtree: None,
            target: Vec::new(),
            rdev: 0,
        }
    }

    /// The file bytes the chunks hold: `size` for a dense file, the sum of
    /// the extents for a sparse one.
    ///
    /// A file with a size but neither chunks nor extents is one big hole.
    pub fn data_len(&self) -> u64 {
        if self.is_dense() {
            self.size
        } else {
            self.extents.iter().map(|e| e.1).sum()
        }
    }

    /// True when the chunks hold every byte of the file (no holes).
    pub fn is_dense(&self) -> bool {
        self.extents.is_empty() && (!self.chunks.is_empty() || self.size == 0)
    }

    pub(crate) fn validate(&self) -> Result<(), FormatError> {
        check_name(&self.name)?;
        let bad = |why| {
            Err(FormatError::BadNode {
                name: String::from_utf8_lossy(&self.name).into_owned(),
                why,
            })
        };
        if self.mode & !0o7777 != 0 {
            return bad("mode has bits outside 0o7777");
        }
        if self.mtime.nsec >= 1_000_000_000 {
            return bad("mtime nanoseconds out of range");
        }
        if !self.kind.has_content() && (!self.chunks.is_empty() || !self.extents.is_empty()) {
            return bad("contents on a node that is not a file");
        }
        if (self.kind == NodeKind::Dir) != self.subtree.is_some() {
            return bad("a directory needs a subtree, and only a directory has one");
        }
        if !matches!(self.kind, NodeKind::Symlink | NodeKind::Hardlink) && !self.target.is_empty() {
            return bad("a target on a node that is not a link");
        }
        if self.kind == NodeKind::Hardlink && !is_safe_relative_path(&self.target) {
            return bad("hardlink target is not a plain relative path");
        }
        let mut end = 0u64;
        for &(off, len) in &self.extents {
            if off < end || len == 0 {
                return bad("sparse extents overlap, are empty or out of order");
            }
            end = match off.checked_add(len) {
                Some(e) if e <= self.size => e,
                _ => return bad("sparse extent beyond the file size"),
            };
        }
        if self.xattrs.windows(2).any(|w| w[0].0 >= w[1].0) {
            return bad("xattrs not sorted or duplicated");
        }
        Ok(())
    }
}

/// Refuses names that could escape a directory or that no file can have.
pub fn check_name(name: &[u8]) -> Result<(), FormatError> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(FormatError::BadName(
            String::from_utf8_lossy(name).into_owned(),
        ));
    }
    Ok(())
}

/// `a/b/c` with every component a valid name (no `..`, no leading `/`).
pub fn is_safe_relative_path(path: &[u8]) -> bool {
    !path.is_empty() && path.split(|&b| b == b'/').all(|c| check_name(c).is_ok())
}

/// One directory: its nodes, sorted by name bytes, names unique.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    /// Sorts nodes by name; the encoding requires it.
    pub fn new(mut nodes: Vec<Node>) -> Self {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Tree { nodes }
    }

    /// The canonical bytes of this tree.
    pub fn encode(&self) -> Vec<u8> {
        encode_versioned(TREE_VERSION, self)
    }

    /// The tree's id: the hash of its canonical bytes.
    pub fn id(&self) -> TreeId {
        TreeId::of(&self.encode())
    }

    /// Parses and validates untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Tree, FormatError> {
        let tree: Tree = decode_versioned(TREE_VERSION, bytes)?;
        for node in &tree.nodes {
            node.validate()?;
        }
        if let Some(w) = tree.nodes.windows(2).find(|w| w[0].name >= w[1].name) {
            return Err(FormatError::Unsorted(
                String::from_utf8_lossy(&w[1].name).into_owned(),
            ));
        }
        Ok(tree)
    }

    /// Every blob this tree references directly: chunks and subtrees.
    pub fn references(&self) -> impl Iterator<Item = crate::BlobId> + '_ {
        self.nodes.iter().flat_map(|n| {
            n.chunks
                .iter()
                .map(|&c| c.into())
                .chain(n.subtree.map(Into::into))
        })
    }
}

pub(crate) fn encode_versioned<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    encode_versioned_after(Vec::new(), version, value)
}

/// Appends the version byte and the encoding to `out` (one buffer, no copy).
pub(crate) fn encode_versioned_after<T: Serialize>(
    mut out: Vec<u8>,
    version: u8,
    value: &T,
) -> Vec<u8> {
    out.push(version);
    // Serialising plain structs of integers, vecs and strings cannot fail.
    // Through `io::Write`, so byte strings are appended with one copy each
    // (`to_extend` appends them byte by byte: 2-3 % of a server's CPU when
    // sending blobs).
    postcard::to_io(value, out).expect("postcard encoding of an in-memory value")
}

pub(crate) fn decode_versioned<T: serde::de::DeserializeOwned>(
    version: u8,
    bytes: &[u8],
) -> Result<T, FormatError> {
    let (&v, rest) = bytes.split_first().ok_or(FormatError::Empty)?;
    if v != version {
        return Err(FormatError::Version(v));
    }
    // postcard pre-allocates at most a bounded amount per sequence
    // (serde's cautious size hint), so a huge length prefix cannot
    // exhaust memory: decoding fails when the bytes run out.
    let (value, trailing) =
        postcard::take_from_bytes(rest).map_err(|e| FormatError::Malformed(e.to_string()))?;
    if !trailing.is_empty() {
        return Err(FormatError::Trailing(trailing.len()));
    }
    Ok(value)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub fn arb_name() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            any::<u8>().prop_filter("no / or NUL", |b| *b != b'/' && *b != 0),
            1..40,
        )
        .prop_filter("not . or ..", |n| n != b"." && n != b"..")
    }

    fn arb_node() -> impl Strategy<Value = Node> {
        (
            arb_name(),
            0usize..8,
            0u32..0o7777,
            any::<(u32, u32)>(),
            any::<i64>(),
            0u32..1_000_000_000,
            proptest::collection::vec(
                (
                    proptest::collection::vec(any::<u8>(), 1..10),
                    proptest::collection::vec(any::<u8>(), 0..20),
                ),
                0..3,
            ),
            proptest::collection::vec(any::<[u8; 32]>(), 0..4),
            any::<[u8; 32]>(),
            any::<u64>(),
        )
            .prop_map(
                |(name, k, mode, (uid, gid), sec, nsec, mut xattrs, chunks, sub, rdev)| {
                    let kinds = [
                        NodeKind::File,
                        NodeKind::Dir,
                        NodeKind::Symlink,
                        NodeKind::Hardlink,
                        NodeKind::Fifo,
                        NodeKind::CharDevice,
                        NodeKind::BlockDevice,
                        NodeKind::Socket,
                    ];
                    let mut n = Node::new(name, kinds[k]);
                    n.mode = mode;
                    n.uid = uid;
                    n.gid = gid;
                    n.user = Some("alice".into());
                    n.mtime = Timestamp { sec, nsec };
                    xattrs.sort();
                    xattrs.dedup_by(|a, b| a.0 == b.0);
                    n.xattrs = xattrs;
                    match n.kind {
                        NodeKind::File | NodeKind::Hardlink => {
                            n.chunks = chunks.into_iter().map(ChunkId).collect();
                            n.size = 1 << 40;
                            n.extents = vec![(0, 10), (4096, 100)];
                            if n.kind == NodeKind::Hardlink {
                                n.target = b"a/b".to_vec();
                            }
                        }
                        NodeKind::Dir => n.subtree = Some(TreeId(sub)),
                        NodeKind::Symlink => n.target = b"../anything/\xff".to_vec(),
                        NodeKind::CharDevice | NodeKind::BlockDevice => n.rdev = rdev,
                        _ => {}
                    }
                    n
                },
            )
    }

    proptest! {
        #[test]
        fn tree_round_trips(nodes in proptest::collection::vec(arb_node(), 0..20)) {
            let mut nodes = nodes;
            nodes.sort_by(|a, b| a.name.cmp(&b.name));
            nodes.dedup_by(|a, b| a.name == b.name);
            let tree = Tree::new(nodes);
            let bytes = tree.encode();
            prop_assert_eq!(Tree::decode(&bytes).unwrap(), tree.clone());
            // Deterministic: encoding the decoded tree gives the same bytes.
            prop_assert_eq!(Tree::decode(&bytes).unwrap().encode(), bytes);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4000)) {
            let _ = Tree::decode(&bytes);
        }

        #[test]
        fn decoding_mutated_trees_never_panics(nodes in proptest::collection::vec(arb_node(), 1..5), at: usize, val: u8) {
            let mut bytes = Tree::new(nodes).encode();
            let i = at % bytes.len();
            bytes[i] = val;
            let _ = Tree::decode(&bytes);
        }
    }

    #[test]
    fn escaping_names_are_refused() {
        for bad in [&b".."[..], b".", b"a/b", b"", b"a\0b"] {
            let mut n = Node::new(bad.to_vec(), NodeKind::Fifo);
            n.mode = 0o644;
            let bytes = encode_versioned(TREE_VERSION, &Tree { nodes: vec![n] });
            assert!(
                matches!(Tree::decode(&bytes), Err(FormatError::BadName(_))),
                "{bad:?}"
            );
        }
        for ok in [&b"..."[..], b".bashrc", b"\xff\xfe"] {
            assert!(check_name(ok).is_ok());
        }
        let mut h = Node::new(b"h".to_vec(), NodeKind::Hardlink);
        h.target = b"../../etc/passwd".to_vec();
        let bytes = encode_versioned(TREE_VERSION, &Tree { nodes: vec![h] });
        assert!(matches!(
            Tree::decode(&bytes),
            Err(FormatError::BadNode { .. })
        ));
    }

    #[test]
    fn duplicate_names_and_trailing_bytes_are_refused() {
        let a = Node::new(b"a".to_vec(), NodeKind::Fifo);
        let bytes = encode_versioned(
            TREE_VERSION,
            &Tree {
                nodes: vec![a.clone(), a.clone()],
            },
        );
        assert!(matches!(
            Tree::decode(&bytes),
            Err(FormatError::Unsorted(_))
        ));
        let mut bytes = Tree::new(vec![a]).encode();
        bytes.push(0);
        assert_eq!(Tree::decode(&bytes), Err(FormatError::Trailing(1)));
    }

    #[test]
    fn a_huge_length_prefix_does_not_allocate_it() {
        // version, then a varint claiming 2^63 nodes, then nothing.
        let bytes = [
            TREE_VERSION,
            0x80,
            0x80,
            0x80,
            0x80,
            0x80,
            0x80,
            0x80,
            0x80,
            0x40,
        ];
        assert!(Tree::decode(&bytes).is_err());
    }
}
