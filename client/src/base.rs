//! Delta bases: for a chunk the store lacks, the chunk of the file's
//! previous version it most likely replaced, so it can travel as a delta
//! against that chunk.
//!
//! The previous version comes from the file-state cache (same inode: an
//! in-place edit, an append, a renamed directory) or else from the parent
//! snapshot at the same path (an editor that writes a new file and renames
//! it over the old one, or a client whose cache was lost).

use crate::browse::load_tree;
use homesync_protocol::{ChunkId, NodeKind, Repository, Tree, TreeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How far back [`PreviousVersion::base_for`] looks for a shared chunk.
pub const ANCHOR_WINDOW: usize = 64;

/// The chunk list of a file's previous version, indexed for alignment.
pub struct PreviousVersion {
    chunks: Vec<ChunkId>,
    /// Where each chunk first occurs in `chunks`.
    first_at: HashMap<ChunkId, usize>,
}

impl PreviousVersion {
    pub fn new(chunks: Vec<ChunkId>) -> Option<PreviousVersion> {
        if chunks.is_empty() {
            return None;
        }
        let mut first_at = HashMap::with_capacity(chunks.len());
        for (i, c) in chunks.iter().enumerate() {
            first_at.entry(*c).or_insert(i);
        }
        Some(PreviousVersion { chunks, first_at })
    }

    /// The old chunk that new chunk `k` most likely replaced, given the new
    /// version's chunks so far: `before`, then `batch` (`k` counts from the
    /// start of `before`).
    ///
    /// Content-defined boundaries realign right after an edit, so old and
    /// new lists match chunk for chunk except around edits. The nearest
    /// earlier chunk both versions share anchors the alignment: an insert
    /// or delete before it shifts offsets but not the count of chunks in
    /// between. The search looks back [`ANCHOR_WINDOW`] chunks at most (a
    /// file rewritten throughout has no anchor, and scanning all of it for
    /// every chunk would be quadratic); without an anchor, chunk k aligns
    /// with old chunk k. Past the old version's end there is no base
    /// (appended bytes are new).
    pub fn base_for(&self, before: &[ChunkId], batch: &[ChunkId], k: usize) -> Option<ChunkId> {
        let at = |j: usize| {
            if j < before.len() {
                before.get(j)
            } else {
                batch.get(j - before.len())
            }
        };
        let at = (k.saturating_sub(ANCHOR_WINDOW)..k)
            .rev()
            .find_map(|j| {
                at(j)
                    .and_then(|c| self.first_at.get(c))
                    .map(|&i| i + (k - j))
            })
            .unwrap_or(k);
        self.chunks.get(at).copied()
    }
}

/// The parent snapshot's trees, fetched as needed and kept for the run.
pub struct ParentTrees<'a> {
    repo: &'a dyn Repository,
    root: Option<TreeId>,
    trees: Mutex<HashMap<TreeId, Option<Arc<Tree>>>>,
}

impl<'a> ParentTrees<'a> {
    pub fn new(repo: &'a dyn Repository, root: Option<TreeId>) -> Self {
        ParentTrees {
            repo,
            root,
            trees: Mutex::default(),
        }
    }

    fn tree(&self, id: TreeId) -> Option<Arc<Tree>> {
        if let Some(t) = self
            .trees
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            return t.clone();
        }
        // A parent tree that cannot be read only costs the deltas below it.
        let tree = load_tree(self.repo, id)
            .inspect_err(|e| tracing::debug!("parent tree {id}: {e}"))
            .ok()
            .map(Arc::new);
        self.trees
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tree.clone());
        tree
    }

    /// The id of the parent snapshot's tree for the directory at `rel`
    /// (`/`-separated from the backup's root; empty for the root).
    pub fn tree_id_at(&self, rel: &[u8]) -> Option<TreeId> {
        let mut id = self.root?;
        for name in rel.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            let tree = self.tree(id)?;
            let dir = tree.nodes.iter().find(|n| n.name == name)?;
            id = dir.subtree?;
        }
        Some(id)
    }

    /// The parent snapshot's tree of the directory at `rel`, decoded.
    pub fn tree_of(&self, rel: &[u8]) -> Option<Arc<Tree>> {
        self.tree(self.tree_id_at(rel)?)
    }

    /// The parent snapshot's tree for the directory at `rel`, encoded: the
    /// base for a delta of the directory's new tree.
    pub fn tree_at(&self, rel: &[u8]) -> Option<(TreeId, Vec<u8>)> {
        let id = self.tree_id_at(rel)?;
        // Encoding is canonical, so this is the stored tree byte for byte.
        let bytes = self.tree(id)?.encode();
        (TreeId::of(&bytes) == id).then_some((id, bytes))
    }

    /// The chunks the parent snapshot holds for the regular file at `rel`.
    pub fn file_chunks(&self, rel: &[u8]) -> Option<Vec<ChunkId>> {
        let (dir, name) = match rel.iter().rposition(|&b| b == b'/') {
            Some(i) => (&rel[..i], &rel[i + 1..]),
            None => (&rel[..0], rel),
        };
        let tree = self.tree(self.tree_id_at(dir)?)?;
        let node = tree.nodes.iter().find(|n| n.name == name)?;
        (node.kind == NodeKind::File).then(|| node.chunks.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(s: &str) -> Vec<ChunkId> {
        s.bytes().map(|b| ChunkId([b; 32])).collect()
    }

    #[test]
    fn bases_follow_the_nearest_shared_chunk() {
        let old = PreviousVersion::new(ids("abcdef")).unwrap();
        // In-place edit of the third chunk.
        assert_eq!(old.base_for(&[], &ids("abXdef"), 2), Some(ids("c")[0]));
        // An insert that split the second chunk in two: X and Y replace b;
        // Y aligns with c, which is as good a guess as any.
        assert_eq!(old.base_for(&[], &ids("aXYcdef"), 1), Some(ids("b")[0]));
        // The first chunk changed: nothing earlier, align by position.
        assert_eq!(old.base_for(&[], &ids("Xbcdef"), 0), Some(ids("a")[0]));
        // Chunks removed before the edit: the anchor d realigns.
        assert_eq!(old.base_for(&[], &ids("adX"), 2), Some(ids("e")[0]));
        // An append grew the last chunk (base f); what follows is new.
        assert_eq!(old.base_for(&[], &ids("abcdeXY"), 5), Some(ids("f")[0]));
        assert_eq!(old.base_for(&[], &ids("abcdeXY"), 6), None);
        assert!(PreviousVersion::new(vec![]).is_none());
        // The same with part of the new chunks in `before`.
        assert_eq!(
            old.base_for(&ids("adX")[..2], &ids("X"), 2),
            Some(ids("e")[0])
        );
    }

    #[test]
    fn a_file_rewritten_throughout_aligns_by_position_quickly() {
        let n = 20_000usize;
        let id = |i: usize, salt: u8| {
            let mut b = [salt; 32];
            b[..8].copy_from_slice(&(i as u64).to_le_bytes());
            ChunkId(b)
        };
        let old = PreviousVersion::new((0..n).map(|i| id(i, 1)).collect()).unwrap();
        let new: Vec<ChunkId> = (0..n).map(|i| id(i, 2)).collect();
        // Bounded work per chunk (the window), so this is fast even in a
        // debug build; unbounded, it took 7.8 s optimised.
        for k in 0..n {
            assert_eq!(old.base_for(&new[..k], &new[k..], k), Some(id(k, 1)));
        }
    }
}
