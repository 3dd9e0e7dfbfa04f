//! Reading snapshots back: naming one (`latest`, an id or a prefix),
//! walking its trees, listing, and comparing two snapshots.

use crate::error::ClientError;
use homesync_protocol::{
    BlobId, BlobKind, Node, NodeKind, Repository, Snapshot, SnapshotId, StoreError, Tree, TreeId,
};

/// Finds the snapshot named by `spec`: `latest`, a full id, or a unique
/// prefix of at least 4 hex digits.
pub fn resolve(repo: &dyn Repository, spec: &str) -> Result<(SnapshotId, Snapshot), ClientError> {
    resolve_in(repo.snapshots()?, spec)
}

/// [`resolve`] among the given snapshots.
pub fn resolve_in(
    all: Vec<(SnapshotId, Snapshot)>,
    spec: &str,
) -> Result<(SnapshotId, Snapshot), ClientError> {
    if spec == "latest" {
        return all.into_iter().max_by_key(|(_, s)| s.time).ok_or_else(|| {
            ClientError::Store(StoreError::NoSnapshot(
                "latest (there are no snapshots)".into(),
            ))
        });
    }
    if spec.len() < 4 || !spec.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ClientError::Usage(format!(
            "{spec:?} is not a snapshot: use `latest`, an id or a prefix of at least 4 hex digits"
        )));
    }
    let spec_lc = spec.to_ascii_lowercase();
    let mut found: Vec<_> = all
        .into_iter()
        .filter(|(id, _)| id.to_hex().starts_with(&spec_lc))
        .collect();
    match found.len() {
        1 => Ok(found.pop().expect("one")),
        0 => Err(ClientError::Store(StoreError::NoSnapshot(spec.to_string()))),
        n => Err(ClientError::Usage(format!(
            "{spec:?} matches {n} snapshots: give more digits"
        ))),
    }
}

/// Loads and validates a tree.
pub fn load_tree(repo: &dyn Repository, id: TreeId) -> Result<Tree, StoreError> {
    decode_tree(id, &repo.get_blob(id.into(), BlobKind::Tree)?)
}

fn decode_tree(id: TreeId, bytes: &[u8]) -> Result<Tree, StoreError> {
    Tree::decode(bytes).map_err(|e| StoreError::CorruptDetail {
        id: id.into(),
        detail: format!("tree does not decode: {e}"),
    })
}

/// Several trees with one [`Repository::get_blobs`] call (one round trip
/// to a server), each loaded as [`load_tree`] would, in order.
#[allow(clippy::type_complexity)]
pub fn load_trees(
    repo: &dyn Repository,
    ids: &[TreeId],
) -> Result<Vec<Result<Tree, StoreError>>, StoreError> {
    let blobs: Vec<BlobId> = ids.iter().map(|&id| id.into()).collect();
    Ok(repo
        .get_blobs(&blobs, BlobKind::Tree)?
        .into_iter()
        .zip(ids)
        .map(|(bytes, &id)| decode_tree(id, &bytes?))
        .collect())
}

/// Splits `a/b/c` into components, refusing anything but plain names.
pub fn split_path(path: &[u8]) -> Result<Vec<&[u8]>, ClientError> {
    let trimmed: Vec<&[u8]> = path
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect();
    for c in &trimmed {
        if *c == b".." {
            return Err(ClientError::Usage(format!(
                "{}: `..` is not allowed in a snapshot path",
                String::from_utf8_lossy(path)
            )));
        }
    }
    Ok(trimmed)
}

/// The node at `path` (relative to the snapshot root); the root itself for
/// an empty path.
pub fn find(repo: &dyn Repository, snapshot: &Snapshot, path: &[u8]) -> Result<Node, ClientError> {
    let mut node = snapshot.root.clone();
    for comp in split_path(path)? {
        let Some(sub) = node.subtree else {
            return Err(ClientError::Usage(format!(
                "{}: {} is not a directory",
                String::from_utf8_lossy(path),
                String::from_utf8_lossy(&node.name)
            )));
        };
        let tree = load_tree(repo, sub)?;
        node = tree
            .nodes
            .into_iter()
            .find(|n| n.name == comp)
            .ok_or_else(|| {
                ClientError::Usage(format!(
                    "{}: no such path in the snapshot",
                    String::from_utf8_lossy(path)
                ))
            })?;
    }
    Ok(node)
}

/// Calls `f(path, node)` for `node` (at `path`) and everything below it, in
/// name order.
pub fn walk(
    repo: &dyn Repository,
    path: Vec<u8>,
    node: &Node,
    f: &mut dyn FnMut(&[u8], &Node),
) -> Result<(), StoreError> {
    walk_at(repo, path, node, f, 0)
}

/// Trees nested deeper than this are refused: no Linux path is that deep
/// (PATH_MAX is 4096 bytes), so only a hostile or broken store has them, and
/// following them would exhaust the stack.
pub const MAX_DEPTH: usize = 2048;

fn walk_at(
    repo: &dyn Repository,
    path: Vec<u8>,
    node: &Node,
    f: &mut dyn FnMut(&[u8], &Node),
    depth: usize,
) -> Result<(), StoreError> {
    f(&path, node);
    if let Some(sub) = node.subtree {
        if depth >= MAX_DEPTH {
            return Err(StoreError::CorruptDetail {
                id: sub.into(),
                detail: format!("directories nested deeper than {MAX_DEPTH} levels"),
            });
        }
        for child in load_tree(repo, sub)?.nodes {
            walk_at(repo, join(&path, &child.name), &child, f, depth + 1)?;
        }
    }
    Ok(())
}

pub fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        name.to_vec()
    } else {
        [parent, b"/", name].concat()
    }
}

/// A difference between two snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added,
    Removed,
    /// Contents, kind or metadata differ.
    Modified,
}

impl Change {
    pub fn symbol(self) -> char {
        match self {
            Change::Added => '+',
            Change::Removed => '-',
            Change::Modified => 'M',
        }
    }
}

fn same_entry(a: &Node, b: &Node) -> bool {
    let strip = |n: &Node| Node {
        subtree: None,
        ..n.clone()
    };
    // A directory is "modified" only by its own metadata; its children are
    // reported one by one.
    strip(a) == strip(b)
}

/// Every path that differs between the trees `a` and `b`, in name order.
/// Identical subtrees (same id) are skipped without being read.
pub fn diff(
    repo: &dyn Repository,
    a: &Node,
    b: &Node,
    out: &mut dyn FnMut(Change, &[u8], &Node),
) -> Result<(), StoreError> {
    diff_at(repo, Vec::new(), a.subtree, b.subtree, out)
}

fn diff_at(
    repo: &dyn Repository,
    path: Vec<u8>,
    a: Option<TreeId>,
    b: Option<TreeId>,
    out: &mut dyn FnMut(Change, &[u8], &Node),
) -> Result<(), StoreError> {
    if a == b {
        return Ok(());
    }
    let load = |t: Option<TreeId>| {
        t.map(|t| load_tree(repo, t))
            .transpose()
            .map(Option::unwrap_or_default)
    };
    let (ta, tb) = (load(a)?, load(b)?);
    let (mut i, mut j) = (0, 0);
    let report_all =
        |change, path: Vec<u8>, node: &Node, out: &mut dyn FnMut(Change, &[u8], &Node)| {
            walk(repo, path, node, &mut |p, n| out(change, p, n))
        };
    while i < ta.nodes.len() || j < tb.nodes.len() {
        let order = match (ta.nodes.get(i), tb.nodes.get(j)) {
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                let n = &ta.nodes[i];
                report_all(Change::Removed, join(&path, &n.name), n, out)?;
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                let n = &tb.nodes[j];
                report_all(Change::Added, join(&path, &n.name), n, out)?;
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (x, y) = (&ta.nodes[i], &tb.nodes[j]);
                let p = join(&path, &x.name);
                if x.kind != y.kind && (x.kind == NodeKind::Dir || y.kind == NodeKind::Dir) {
                    report_all(Change::Removed, p.clone(), x, out)?;
                    report_all(Change::Added, p, y, out)?;
                } else {
                    if !same_entry(x, y) {
                        out(Change::Modified, &p, y);
                    }
                    if x.kind == NodeKind::Dir {
                        diff_at(repo, p, x.subtree, y.subtree, out)?;
                    }
                }
                i += 1;
                j += 1;
            }
        }
    }
    Ok(())
}
