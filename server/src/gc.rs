//! Garbage collection: reclaims blobs no snapshot references, while backups
//! keep running.
//!
//! No clocks, no atime, no lock-out. Safety comes from two records in the
//! index:
//! - **sessions**: every writer (a server connection that may upload, a
//!   local backup) registers with the store generation it began in, and is
//!   dropped when it ends (or when its process is found dead);
//! - **condemned blobs**: a blob unreachable at marking time is first only
//!   *condemned*, in a new generation. A condemned blob still reads, but
//!   counts as absent for writers (`has` says no, a tree naming it is
//!   refused, an upload of it revives it), so no session that begins after
//!   the condemnation can come to depend on it.
//!
//! A condemned blob is deleted (its index row; the bytes when its pack is
//! rewritten or dropped) only when every live session began after it was
//! condemned, and only in a transaction that also checks no snapshot was
//! committed since the last marking: a session older than the
//! condemnation may hold a tree naming the blob and commit it later.
//! Whatever a crash interrupts, the next run finishes: a pack is deleted
//! only after no index row points into it, and a rewritten pack is written
//! durably before rows move to it.

use crate::index::{SessionRow, Swept};
use crate::pack::{self, PackWriter};
use crate::store::{Store, lock};
use homesync_protocol::{
    BlobId, BlobKind, NodeKind, Repository, SnapshotId, StoreError, Tree, blob,
};
use std::collections::HashSet;

/// Packs with less than this share of their bytes still referenced are
/// rewritten (the rest of their bytes are reclaimed).
pub const REWRITE_BELOW: f64 = 0.5;

/// After those, packs with the most garbage are rewritten too until at most
/// this share of the remaining packs' bytes is garbage (restic's
/// `--max-unused`): a store of many mostly-live packs would otherwise keep
/// most of its garbage.
pub const MAX_UNUSED: f64 = 0.05;

#[derive(Debug, Clone)]
pub struct GcOptions {
    /// See [`REWRITE_BELOW`]; 0 never rewrites, 1 rewrites every pack with
    /// any garbage.
    pub rewrite_below: f64,
    /// See [`MAX_UNUSED`]; 1 turns this rule off.
    pub max_unused: f64,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            rewrite_below: REWRITE_BELOW,
            max_unused: MAX_UNUSED,
        }
    }
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// The generation clients now see.
    pub generation: u64,
    pub snapshots: u64,
    /// Blobs referenced by the snapshots (trees, chunks, snapshot blobs).
    pub reachable: u64,
    /// Newly condemned this run, and condemned blobs found referenced again.
    pub condemned: u64,
    pub revived: u64,
    /// Index rows removed, their bytes, and condemned blobs left for a
    /// later run because older sessions are still open.
    pub swept: Swept,
    pub packs_deleted: u64,
    pub packs_rewritten: u64,
    /// Pack file bytes removed minus bytes written by rewrites.
    pub bytes_reclaimed: u64,
    pub orphans_deleted: u64,
}

/// A registered writer session; dropping it ends the session.
pub struct SessionGuard {
    store: std::sync::Weak<crate::store::Shared>,
    id: i64,
    pub generation: u64,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if let Some(shared) = self.store.upgrade()
            && let Err(e) = lock(&shared.index).end_session(self.id)
        {
            // A leftover row only delays sweeping until the process is gone.
            tracing::warn!("ending store session {}: {e}", self.id);
        }
    }
}

/// The start time of process `pid` in clock ticks after boot, from
/// `/proc/PID/stat` (field 22, counted after the parenthesised name,
/// which may hold spaces).
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process that registered a session still runs.
fn alive(s: &SessionRow) -> bool {
    process_start(s.pid) == Some(s.pid_start)
}

impl Store {
    /// Registers a writer session (see the module documentation). Hold the
    /// guard for as long as the session may ask `has` or put blobs.
    pub fn begin_session(&self, what: &str) -> Result<SessionGuard, StoreError> {
        let pid = std::process::id();
        let start = process_start(pid).unwrap_or(0);
        let (id, generation) = lock(&self.shared.index).begin_session(pid, start, what)?;
        Ok(SessionGuard {
            store: std::sync::Arc::downgrade(&self.shared),
            id,
            generation,
        })
    }

    /// Adds to `reachable` every blob the snapshots reference that is not
    /// in it yet (a tree already there was walked before: its subtree is
    /// skipped). Any unreadable tree stops the run: what it references
    /// cannot be known, so nothing may be deleted.
    fn mark(
        &self,
        snapshots: &[(SnapshotId, homesync_protocol::Snapshot)],
        reachable: &mut HashSet<BlobId>,
    ) -> Result<Vec<BlobId>, StoreError> {
        let mut added = Vec::new();
        let mut stack = Vec::new();
        for (id, snap) in snapshots {
            if reachable.insert((*id).into()) {
                added.push((*id).into());
            }
            let root: BlobId = snap.root_tree().into();
            if reachable.insert(root) {
                added.push(root);
                stack.push(root);
            }
        }
        while let Some(tree_id) = stack.pop() {
            let bytes = self.get_blob(tree_id, BlobKind::Tree).map_err(|e| {
                StoreError::Refused(format!(
                    "garbage collection stopped: tree {tree_id} is unreadable ({e}); run `homesync check`"
                ))
            })?;
            let tree = Tree::decode(&bytes).map_err(|e| {
                StoreError::Refused(format!(
                    "garbage collection stopped: tree {tree_id} does not decode ({e})"
                ))
            })?;
            for node in &tree.nodes {
                if node.kind == NodeKind::Dir
                    && let Some(sub) = node.subtree
                    && reachable.insert(sub.into())
                {
                    added.push(sub.into());
                    stack.push(sub.into());
                }
                for c in &node.chunks {
                    if reachable.insert((*c).into()) {
                        added.push((*c).into());
                    }
                }
            }
        }
        Ok(added)
    }

    /// One garbage collection run: mark, condemn, sweep what is safe,
    /// reclaim pack space, delete orphaned pack files.
    pub fn gc(&self, opts: &GcOptions) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        // Mark from the committed snapshots.
        let snapshots = lock(&self.shared.index).snapshots_strict()?;
        let mut expected: HashSet<SnapshotId> = snapshots.iter().map(|(id, _)| *id).collect();
        let mut reachable = HashSet::new();
        self.mark(&snapshots, &mut reachable)?;
        let (generation, condemned, revived) = lock(&self.shared.index).condemn(&reachable)?;
        report.generation = generation;
        report.condemned = condemned;
        report.revived = revived;
        // Sweep, marking again first whatever was committed meanwhile.
        loop {
            if let Some(swept) = lock(&self.shared.index).sweep(&expected, &alive)? {
                report.swept = swept;
                break;
            }
            let now = lock(&self.shared.index).snapshots_strict()?;
            let new: Vec<_> = now
                .iter()
                .filter(|(id, _)| !expected.contains(id))
                .cloned()
                .collect();
            let added = self.mark(&new, &mut reachable)?;
            report.revived += lock(&self.shared.index).revive(&added)?;
            expected = now.iter().map(|(id, _)| *id).collect();
        }
        report.snapshots = expected.len() as u64;
        report.reachable = reachable.len() as u64;
        self.reclaim_packs(opts, &mut report)?;
        self.delete_orphans(&mut report)?;
        tracing::info!("garbage collection: {report:?}");
        Ok(report)
    }

    /// Deletes packs nothing points into and rewrites mostly dead ones.
    fn reclaim_packs(&self, opts: &GcOptions, report: &mut GcReport) -> Result<(), StoreError> {
        let usage = lock(&self.shared.index).pack_usage()?;
        let mut rest = Vec::new();
        for p in usage {
            if p.blobs == 0 {
                if lock(&self.shared.index).remove_pack_if_empty(&p.name)? {
                    self.shared.backend.delete(&p.name)?;
                    report.packs_deleted += 1;
                    report.bytes_reclaimed += p.size;
                }
            } else if (p.live_bytes as f64) < opts.rewrite_below * p.size as f64 {
                let written = self.rewrite_pack(&p.name)?;
                report.packs_rewritten += 1;
                report.bytes_reclaimed += p.size.saturating_sub(written);
            } else {
                rest.push(p);
            }
        }
        // Then the packs with the most garbage, until little is left. (A
        // pack's trailer and header count as garbage here: a few bytes per
        // blob, well below the threshold.)
        let dead_of = |p: &crate::index::PackUsage| p.size.saturating_sub(p.live_bytes);
        let total: u64 = rest.iter().map(|p| p.size).sum();
        let mut dead: u64 = rest.iter().map(dead_of).sum();
        rest.sort_by_key(|p| std::cmp::Reverse(dead_of(p)));
        for p in rest {
            if dead as f64 <= opts.max_unused * total as f64 {
                break;
            }
            let written = self.rewrite_pack(&p.name)?;
            report.packs_rewritten += 1;
            report.bytes_reclaimed += p.size.saturating_sub(written);
            dead = dead.saturating_sub(dead_of(&p));
        }
        Ok(())
    }

    /// Copies the blobs still indexed in pack `name` into a new pack, moves
    /// their rows, and deletes the old pack. Each blob is verified on the
    /// way: a damaged one stops the rewrite (the pack stays, for `check`).
    /// Returns the new pack's size.
    fn rewrite_pack(&self, name: &str) -> Result<u64, StoreError> {
        let live = lock(&self.shared.index).blobs_in_pack(name)?;
        let bytes = self.shared.backend.read(name)?;
        let entries = pack::read_entries(&bytes).map_err(|e| StoreError::CorruptDetail {
            id: live.iter().next().copied().unwrap_or(BlobId([0; 32])),
            detail: format!("pack {name}: {e}"),
        })?;
        let mut writer = PackWriter::new();
        for e in entries.iter().filter(|e| live.contains(&e.id)) {
            let encoded = &bytes[e.offset as usize..e.offset as usize + e.length as usize];
            blob::decode_verified(encoded, e.id, e.kind)
                .map_err(|source| StoreError::Corrupt { id: e.id, source })?;
            writer.add(e.id, e.kind, encoded);
        }
        let mut size = 0;
        if !writer.is_empty() {
            let (new_name, new_bytes, new_entries) = writer.finish();
            let (pid, start) = self.shared.me;
            lock(&self.shared.index).claim_pack(&new_name, pid, start)?;
            self.shared.backend.put(&new_name, &new_bytes)?;
            size = new_bytes.len() as u64;
            lock(&self.shared.index).relocate(name, &new_name, size, &new_entries)?;
        }
        if lock(&self.shared.index).remove_pack_if_empty(name)? {
            self.shared.backend.delete(name)?;
        }
        Ok(size)
    }

    /// Deletes pack files no index row knows and no live writer claims
    /// (left by a crash between writing and indexing).
    fn delete_orphans(&self, report: &mut GcReport) -> Result<(), StoreError> {
        // Listed before the claims are read: a file renamed into place after
        // the listing is not seen; one renamed before was claimed before.
        let on_disk: HashSet<String> = self.shared.backend.list()?.into_iter().collect();
        let doomed = lock(&self.shared.index)
            .orphans(&on_disk, &|pid, start| process_start(pid) == Some(start))?;
        for name in doomed {
            tracing::info!("deleting orphaned pack {name}");
            self.shared.backend.delete(&name)?;
            report.orphans_deleted += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use homesync_protocol::{
        BlobEncoder, ChunkId, ChunkerParams, Node, Snapshot, Timestamp, TreeId,
    };

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::init(&dir.path().join("s"), ChunkerParams::default(), 3).unwrap();
        (dir, s)
    }

    fn put_chunk(store: &Store, data: &[u8]) -> BlobId {
        let id = ChunkId::of(data).into();
        store
            .put_blob(
                id,
                BlobKind::Chunk,
                &BlobEncoder::new(3).encode(BlobKind::Chunk, data),
            )
            .unwrap();
        id
    }

    /// A tree with one file made of `chunks`, put into the store.
    fn put_tree(store: &Store, name: &str, chunks: &[BlobId]) -> Result<TreeId, StoreError> {
        let mut n = Node::new(name.as_bytes().to_vec(), NodeKind::File);
        n.chunks = chunks.iter().map(|c| ChunkId(c.0)).collect();
        let t = Tree::new(vec![n]);
        store.put_blob(
            t.id().into(),
            BlobKind::Tree,
            &BlobEncoder::new(3).encode(BlobKind::Tree, &t.encode()),
        )?;
        Ok(t.id())
    }

    fn commit(store: &Store, root: TreeId, sec: i64) -> SnapshotId {
        let mut dir = Node::new(b"home".to_vec(), NodeKind::Dir);
        dir.subtree = Some(root);
        store
            .commit_snapshot(&Snapshot {
                time: Timestamp { sec, nsec: 0 },
                machine: "m".into(),
                source: b"/home".to_vec(),
                root: dir,
                parent: None,
                tags: vec![],
                stats: Default::default(),
            })
            .unwrap()
    }

    fn has(store: &Store, id: BlobId) -> bool {
        store.has_blobs(&[id]).unwrap()[0]
    }

    /// A store with one chunk only a forgotten snapshot used, and one a
    /// kept snapshot uses.
    fn with_garbage() -> (tempfile::TempDir, Store, BlobId, BlobId) {
        let (dir, s) = store();
        let garbage = put_chunk(&s, &[1; 5000]);
        let kept = put_chunk(&s, &[2; 5000]);
        let old = commit(&s, put_tree(&s, "old", &[garbage, kept]).unwrap(), 1);
        commit(&s, put_tree(&s, "new", &[kept]).unwrap(), 2);
        s.forget_snapshot(old).unwrap();
        (dir, s, garbage, kept)
    }

    #[test]
    fn unreferenced_blobs_go_and_referenced_ones_stay() {
        let (_d, s, garbage, kept) = with_garbage();
        let r = s.gc(&GcOptions::default()).unwrap();
        // The chunk, the old tree and the old snapshot's blob.
        assert_eq!(r.swept.blobs, 3, "{r:?}");
        assert!(!has(&s, garbage));
        assert!(matches!(
            s.get_blob(garbage, BlobKind::Chunk),
            Err(StoreError::Missing(_))
        ));
        assert_eq!(s.get_blob(kept, BlobKind::Chunk).unwrap(), vec![2; 5000]);
        assert!(s.generation().unwrap() > 0);
        // Idempotent, and with nothing condemned the generation stays
        // (clients keep trusting their caches).
        let generation = s.generation().unwrap();
        let again = s.gc(&GcOptions::default()).unwrap();
        assert_eq!((again.condemned, again.swept.blobs), (0, 0), "{again:?}");
        assert_eq!(s.generation().unwrap(), generation);
    }

    #[test]
    fn a_session_told_a_blob_exists_keeps_it_until_it_ends() {
        let (_d, s, garbage, _) = with_garbage();
        // A backup begins and learns the store has the chunk...
        let session = s.begin_session("test backup").unwrap();
        assert!(has(&s, garbage));
        let tree = put_tree(&s, "again", &[garbage]).unwrap();
        // ...garbage collection runs meanwhile: the chunk is condemned (so
        // new sessions do not rely on it) but not deleted...
        let r = s.gc(&GcOptions::default()).unwrap();
        assert_eq!(r.swept.blobs, 0, "{r:?}");
        assert!(r.swept.deferred >= 1, "{r:?}");
        assert!(!has(&s, garbage), "condemned blobs count as absent");
        // ...the backup commits what it built, and ends.
        let snap = commit(&s, tree, 3);
        drop(session);
        // The next run finds the chunk referenced again.
        let r = s.gc(&GcOptions::default()).unwrap();
        assert!(r.revived >= 1, "{r:?}");
        assert!(has(&s, garbage));
        assert_eq!(s.get_blob(garbage, BlobKind::Chunk).unwrap(), vec![1; 5000]);
        assert!(s.snapshots().unwrap().iter().any(|(id, _)| *id == snap));
    }

    #[test]
    fn a_session_after_condemnation_uploads_again_and_the_blob_lives() {
        let (_d, s, garbage, _) = with_garbage();
        let blocker = s.begin_session("older backup").unwrap();
        s.gc(&GcOptions::default()).unwrap();
        // A new session is told the chunk is absent; a tree naming it is refused.
        let session = s.begin_session("new backup").unwrap();
        assert!(!has(&s, garbage));
        assert!(matches!(
            put_tree(&s, "x", &[garbage]),
            Err(StoreError::Refused(_))
        ));
        // It uploads the chunk again: revived, and the tree is accepted.
        assert!(has(&s, put_chunk(&s, &[1; 5000])));
        let tree = put_tree(&s, "x", &[garbage]).unwrap();
        commit(&s, tree, 4);
        drop((session, blocker));
        s.gc(&GcOptions::default()).unwrap();
        assert_eq!(s.get_blob(garbage, BlobKind::Chunk).unwrap(), vec![1; 5000]);
    }

    #[test]
    fn a_dead_process_does_not_hold_back_collection() {
        let (_d, s, garbage, _) = with_garbage();
        // A session row left by a process that died (pid_start never matches).
        lock(&s.shared.index)
            .begin_session(std::process::id(), u64::MAX, "crashed backup")
            .unwrap();
        let r = s.gc(&GcOptions::default()).unwrap();
        assert_eq!(r.swept.deferred, 0, "{r:?}");
        assert!(!has(&s, garbage));
        assert!(lock(&s.shared.index).sessions().unwrap().is_empty());
    }

    #[test]
    fn mostly_dead_packs_are_rewritten_and_live_blobs_still_read() {
        let (_d, s) = store();
        let big: Vec<BlobId> = (0..8u8).map(|i| put_chunk(&s, &vec![i; 200_000])).collect();
        let old = commit(&s, put_tree(&s, "all", &big).unwrap(), 1);
        commit(&s, put_tree(&s, "one", &big[..1]).unwrap(), 2);
        s.forget_snapshot(old).unwrap();
        let r = s
            .gc(&GcOptions {
                rewrite_below: 0.9,
                ..GcOptions::default()
            })
            .unwrap();
        assert!(r.packs_rewritten >= 1, "{r:?}");
        assert!(r.bytes_reclaimed > 0, "{r:?}");
        assert_eq!(
            s.get_blob(big[0], BlobKind::Chunk).unwrap(),
            vec![0; 200_000]
        );
        for id in &big[1..] {
            assert!(!has(&s, *id));
        }
        // Every pack file on disk is indexed, and every indexed one exists.
        let on_disk: HashSet<String> = s.shared.backend.list().unwrap().into_iter().collect();
        assert_eq!(on_disk, lock(&s.shared.index).pack_names().unwrap());
    }

    /// Incompressible bytes (zstd would shrink a repeated byte to nothing).
    fn noise(seed: u8, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        blake3::Hasher::new()
            .update(&[seed])
            .finalize_xof()
            .fill(&mut out);
        out
    }

    #[test]
    fn packs_a_third_dead_are_rewritten_until_little_garbage_is_left() {
        let run = |max_unused: f64| {
            let (_d, s) = store();
            let mut forget = Vec::new();
            // Four packs (a commit flushes one), each 2/3 live: above the
            // per-pack threshold, so only the max-unused rule rewrites them.
            for p in 0..4u8 {
                let c: Vec<BlobId> = (0..3)
                    .map(|i| put_chunk(&s, &noise(p * 3 + i, 300_000)))
                    .collect();
                commit(
                    &s,
                    put_tree(&s, &format!("keep{p}"), &c[..2]).unwrap(),
                    p as i64 * 2,
                );
                forget.push(commit(
                    &s,
                    put_tree(&s, &format!("all{p}"), &c).unwrap(),
                    p as i64 * 2 + 1,
                ));
            }
            for id in forget {
                s.forget_snapshot(id).unwrap();
            }
            s.gc(&GcOptions {
                max_unused,
                ..GcOptions::default()
            })
            .unwrap()
        };
        let r = run(MAX_UNUSED);
        assert_eq!(r.packs_rewritten, 4, "{r:?}");
        assert!(r.bytes_reclaimed >= 4 * 300_000, "{r:?}");
        assert_eq!(run(1.0).packs_rewritten, 0);
    }

    #[test]
    fn unindexed_pack_files_go_unless_a_live_writer_claims_them() {
        let (_d, s) = store();
        let (pid, start) = s.shared.me;
        let mut index = lock(&s.shared.index);
        index.claim_pack("ab-being-written", pid, start).unwrap();
        index.claim_pack("cd-writer-died", pid, start + 1).unwrap();
        drop(index);
        for name in ["ab-being-written", "cd-writer-died", "ef-never-claimed"] {
            s.shared.backend.put(name, b"pack bytes").unwrap();
        }
        assert_eq!(s.gc(&GcOptions::default()).unwrap().orphans_deleted, 2);
        assert_eq!(s.shared.backend.list().unwrap(), ["ab-being-written"]);
    }

    #[test]
    fn the_sweep_waits_when_a_snapshot_was_committed_after_marking() {
        let (_d, s, _, _) = with_garbage();
        let expected = lock(&s.shared.index).snapshot_ids().unwrap();
        commit(&s, put_tree(&s, "late", &[]).unwrap(), 5);
        assert_eq!(
            lock(&s.shared.index).sweep(&expected, &|_| true).unwrap(),
            None
        );
    }
}
