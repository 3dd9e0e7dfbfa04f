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

use crate::backend::PackBackend;
use crate::index::{BlobRow, PackUsage, Relocated, SessionRow, Swept};
use crate::pack::{self, PackEntry, PackWriter};
use crate::store::{PACK_TARGET, Shared, Store, TREE_PACK_TARGET, lock};
use homesync_protocol::{
    BlobId, BlobKind, NodeKind, Repository, SnapshotId, StoreError, Tree, blob,
};
use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::time::{Duration, Instant};

/// Packs with less than this share of their bytes still referenced are
/// rewritten (the rest of their bytes are reclaimed).
pub const REWRITE_BELOW: f64 = 0.5;

/// After those, the packs with the largest share of garbage are rewritten
/// too until the garbage left is at most this share of the store's
/// referenced bytes (restic's `--max-unused`): a store of many mostly-live
/// packs would otherwise keep most of its garbage. restic's default is
/// 5 %; a rewrite here copies stored bytes verbatim, so less costs little:
/// on the 51-snapshot store of `scripts/bench-gc.sh`, 2 % reclaimed 168 MB
/// where 5 % reclaimed 122 MB, in 2.2 s instead of 1.5 s.
pub const MAX_UNUSED: f64 = 0.02;

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
        let started = Instant::now();
        let mut report = GcReport::default();
        // Mark from the committed snapshots.
        let snapshots = lock(&self.shared.index).snapshots_strict()?;
        let mut expected: HashSet<SnapshotId> = snapshots.iter().map(|(id, _)| *id).collect();
        let mut reachable = HashSet::new();
        self.mark(&snapshots, &mut reachable)?;
        let marked = started.elapsed();
        let (generation, condemned, revived) = lock(&self.shared.index).condemn(&reachable)?;
        report.generation = generation;
        report.condemned = condemned;
        report.revived = revived;
        let condemned_at = started.elapsed();
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
        let swept_at = started.elapsed();
        self.reclaim_packs(opts, &mut report)?;
        let reclaimed_at = started.elapsed();
        self.delete_orphans(&mut report)?;
        tracing::info!(
            "garbage collection in {:.2?}: mark {:.2?}, condemn {:.2?}, sweep {:.2?}, packs {:.2?}, orphans {:.2?}",
            started.elapsed(),
            marked,
            condemned_at - marked,
            swept_at - condemned_at,
            reclaimed_at - swept_at,
            started.elapsed() - reclaimed_at,
        );
        tracing::info!("garbage collection: {report:?}");
        Ok(report)
    }

    /// Deletes packs nothing points into and rewrites those [`plan_reclaim`]
    /// picks (see [`Store::rewrite_packs`]). Pack files are deleted by a
    /// thread of their own (an unlink of a 16 MiB file takes about 15 ms
    /// here), while the rewrite goes on.
    fn reclaim_packs(&self, opts: &GcOptions, report: &mut GcReport) -> Result<(), StoreError> {
        let usage = lock(&self.shared.index).pack_usage()?;
        let plan = plan_reclaim(usage, opts);
        let backend = &*self.shared.backend;
        std::thread::scope(|s| {
            let (del_tx, del_rx) = channel::<String>();
            let deleter = s.spawn(move || {
                let mut first = None;
                for name in del_rx {
                    if let Err(e) = backend.delete(&name) {
                        tracing::error!("deleting pack {name}: {e}");
                        first.get_or_insert(e);
                    }
                }
                first.map_or(Ok(()), Err)
            });
            let result = (|| {
                let names: Vec<String> = plan.delete.iter().map(|p| p.name.clone()).collect();
                let removed: HashSet<String> = lock(&self.shared.index)
                    .remove_packs_if_empty(&names)?
                    .into_iter()
                    .collect();
                for p in plan.delete.iter().filter(|p| removed.contains(&p.name)) {
                    report.packs_deleted += 1;
                    report.bytes_reclaimed += p.size;
                    let _ = del_tx.send(p.name.clone());
                }
                self.rewrite_packs(plan.rewrite, &del_tx, report)
            })();
            drop(del_tx);
            let deleted = deleter
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            result.and(deleted)
        })
    }

    /// Copies the blobs still indexed in `packs` into new packs, moves their
    /// rows, and deletes the old packs (their names go to `delete`).
    ///
    /// Three threads, each holding at most a pack or two of bytes (memory
    /// stays under about six packs, ~100 MiB, however large the store):
    /// - a reader reads each old pack whole and checks it (see
    ///   [`read_for_rewrite`]);
    /// - this thread, the copier, copies the referenced blobs' stored bytes
    ///   verbatim (never decompressed or compressed again) into a new chunk
    ///   pack or tree pack, several old packs into one new pack, and claims
    ///   each full new pack;
    /// - a writer writes each new pack durably (fsync, rename, directory
    ///   fsync) and, every [`RELOCATE_BATCH`] packs, moves the rows of
    ///   their blobs and drops the old packs left without rows, in one
    ///   transaction; only then are those old files deleted.
    ///
    /// A crash anywhere leaves every row pointing into a durable pack: a
    /// new pack not yet indexed is an orphan for the next run, an old pack
    /// whose rows all moved is deleted by the next run.
    fn rewrite_packs(
        &self,
        packs: Vec<PackUsage>,
        delete: &Sender<String>,
        report: &mut GcReport,
    ) -> Result<(), StoreError> {
        if packs.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let ids: HashSet<i64> = packs.iter().map(|p| p.id).collect();
        let mut rows = lock(&self.shared.index).rows_in_packs(&ids)?;
        let jobs: Vec<(PackUsage, Vec<BlobRow>)> = packs
            .into_iter()
            .map(|p| {
                let r = rows.remove(&p.id).unwrap_or_default();
                (p, r)
            })
            .collect();
        let shared = &*self.shared;
        let backend = &*shared.backend;
        let (stats, times) = std::thread::scope(|s| {
            let (read_tx, read_rx) = sync_channel::<Result<ReadPack, StoreError>>(0);
            let reader = s.spawn(move || {
                let mut busy = Duration::ZERO;
                for (usage, rows) in jobs {
                    let t = Instant::now();
                    let r = read_for_rewrite(backend, usage, rows);
                    busy += t.elapsed();
                    let failed = r.is_err();
                    if read_tx.send(r).is_err() || failed {
                        break;
                    }
                }
                busy
            });
            let (out_tx, out_rx) = sync_channel::<ToWriter>(0);
            let delete = delete.clone();
            let writer = s.spawn(move || write_rewritten(shared, out_rx, &delete));
            let copy_started = Instant::now();
            let copied = copy_live(shared, read_rx, &out_tx);
            let copy_wall = copy_started.elapsed();
            drop(out_tx);
            let written = writer
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            let read_busy = reader
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            // The copier's own error first; a copier stopped because the
            // writer hung up reports the writer's.
            let stats = copied.and(written);
            (stats, (read_busy, copy_wall))
        });
        let stats = stats?;
        report.packs_rewritten += stats.old_removed;
        report.bytes_reclaimed += stats.old_bytes.saturating_sub(stats.new_bytes);
        tracing::info!(
            "rewrote {} packs ({} B) into {} ({} B) in {:.2?}: reader busy {:.2?}, copy loop {:.2?}, writer: pack writes {:.2?}, index {:.2?}",
            stats.old_removed,
            stats.old_bytes,
            stats.new_packs,
            stats.new_bytes,
            started.elapsed(),
            times.0,
            times.1,
            stats.put,
            stats.index,
        );
        Ok(())
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

/// Garbage bytes of a pack: its size minus the size of a pack holding only
/// its referenced blobs (their bytes, trailer entries, header, nonce and
/// footer). A pack whose blobs are all referenced has none, so a run never
/// rewrites what the one before wrote.
pub fn garbage(p: &PackUsage) -> u64 {
    let fixed = (pack::HEADER_LEN + pack::NONCE_LEN + pack::FOOTER_LEN) as u64;
    let needed = p.live_bytes + p.blobs * pack::ENTRY_LEN as u64 + fixed;
    p.size.saturating_sub(needed)
}

/// What one run does with the store's packs, decided from the index alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReclaimPlan {
    /// No row points into them: deleted without being read.
    pub delete: Vec<PackUsage>,
    /// Their referenced blobs are copied into new packs, then they go.
    pub rewrite: Vec<PackUsage>,
}

/// Picks the packs to delete and to rewrite (a pure function of the packs'
/// usage). Packs no row points into are deleted. A pack whose referenced
/// blobs take less than `rewrite_below` of it is rewritten. Of the others,
/// those with the largest share of garbage are rewritten (restic's order:
/// the fewest bytes copied per byte reclaimed) until the garbage left is
/// at most `max_unused` of the store's referenced bytes (restic's measure
/// too). Those bytes do not change when packs are rewritten, so a second
/// run finds nothing to do: a plan measured against the packs' sizes
/// instead (as the first version was) moved its own goal post, and each
/// run rewrote a few more packs.
pub fn plan_reclaim(usage: Vec<PackUsage>, opts: &GcOptions) -> ReclaimPlan {
    let mut plan = ReclaimPlan::default();
    let referenced: u64 = usage.iter().map(|p| p.live_bytes).sum();
    let mut rest = Vec::new();
    for p in usage {
        if p.blobs == 0 {
            plan.delete.push(p);
        } else if ((p.size - garbage(&p)) as f64) < opts.rewrite_below * p.size as f64 {
            plan.rewrite.push(p);
        } else {
            rest.push(p);
        }
    }
    let allowed = opts.max_unused * referenced as f64;
    let mut left: u64 = rest.iter().map(garbage).sum();
    // Garbage share, highest first: g1/s1 > g2/s2 as g1*s2 > g2*s1 (exact).
    rest.sort_by(|a, b| {
        let (ga, gb) = (garbage(a) as u128, garbage(b) as u128);
        (gb * a.size as u128)
            .cmp(&(ga * b.size as u128))
            .then(gb.cmp(&ga))
            .then_with(|| a.name.cmp(&b.name))
    });
    for p in rest {
        if left as f64 <= allowed || garbage(&p) == 0 {
            break;
        }
        left -= garbage(&p);
        plan.rewrite.push(p);
    }
    plan
}

/// An old pack read for a rewrite, its referenced blobs checked.
struct ReadPack {
    usage: PackUsage,
    bytes: Vec<u8>,
    /// The rows pointing into it, in offset order.
    rows: Vec<BlobRow>,
}

/// Reads pack `usage` whole and checks the blobs `rows` place in it.
///
/// The cheap check first: a pack is named by the BLAKE3 of its bytes, so
/// if they still hash to its name, every byte is as it was written, when
/// each blob was verified (the server decodes and re-hashes every upload;
/// the embedded store's writer hashed the plain bytes itself). A blob whose
/// row matches an entry of that intact trailer is then copied after a look
/// at its header only (magic, kind, lengths): decompressing and re-hashing
/// it could find nothing the pack hash did not. Copying the stored bytes
/// verbatim can only keep a blob as good as it was.
///
/// Otherwise (damaged bytes somewhere in the pack, or a row the trailer
/// does not list) each referenced blob is decoded and re-hashed: a damaged
/// one stops the run (the pack stays, for `homesync check`); damage only in
/// unreferenced bytes goes with the pack.
fn read_for_rewrite(
    backend: &dyn PackBackend,
    usage: PackUsage,
    rows: Vec<BlobRow>,
) -> Result<ReadPack, StoreError> {
    if rows.is_empty() {
        // Its blobs moved meanwhile (uploaded again): nothing to read.
        return Ok(ReadPack {
            usage,
            bytes: Vec::new(),
            rows,
        });
    }
    let bytes = backend.read(&usage.name)?;
    let trailer: HashSet<PackEntry> = if pack::named_by_content(&usage.name, &bytes) {
        pack::read_entries(&bytes)
            .map(|e| e.into_iter().collect())
            .unwrap_or_default()
    } else {
        tracing::warn!(
            "pack {} does not hash to its name: its {} referenced blobs are decoded and re-hashed one by one",
            usage.name,
            rows.len()
        );
        HashSet::new()
    };
    for r in &rows {
        let encoded = bytes
            .get(r.offset as usize..)
            .and_then(|b| b.get(..r.length as usize))
            .ok_or_else(|| StoreError::CorruptDetail {
                id: r.id,
                detail: format!(
                    "pack {} is {} bytes, the index places the blob at {}+{}",
                    usage.name,
                    bytes.len(),
                    r.offset,
                    r.length
                ),
            })?;
        let listed = trailer.contains(&PackEntry {
            id: r.id,
            kind: r.kind,
            offset: r.offset,
            length: r.length,
        });
        let checked = if listed {
            blob::Blob::parse(encoded).and_then(|b| {
                if b.kind == r.kind {
                    Ok(())
                } else {
                    Err(blob::BlobError::WrongKind {
                        expected: r.kind,
                        found: b.kind,
                    })
                }
            })
        } else {
            blob::decode_verified(encoded, r.id, r.kind).map(drop)
        };
        checked.map_err(|source| StoreError::Corrupt { id: r.id, source })?;
    }
    Ok(ReadPack { usage, bytes, rows })
}

/// What the copier hands the writer thread.
enum ToWriter {
    /// An old pack is being copied: `blobs` of its blobs will come in new
    /// packs (sent before any of them).
    Old {
        id: i64,
        name: String,
        size: u64,
        blobs: usize,
    },
    /// A full new pack, and the old pack each of its entries comes from.
    New {
        name: String,
        bytes: Vec<u8>,
        entries: Vec<PackEntry>,
        from: Vec<i64>,
    },
}

/// A new pack being filled by the copier.
struct Filling {
    writer: PackWriter,
    from: Vec<i64>,
    target: usize,
}

impl Filling {
    fn new(target: usize) -> Self {
        Filling {
            writer: PackWriter::with_capacity(target + blob::MAX_CHUNK_HINT),
            from: Vec::new(),
            target,
        }
    }

    /// The pack so far, sealed, and a new empty one in its place.
    fn take(&mut self) -> ToWriter {
        let full = std::mem::replace(self, Filling::new(self.target));
        let (name, bytes, entries) = full.writer.finish();
        ToWriter::New {
            name,
            bytes,
            entries,
            from: full.from,
        }
    }
}

/// The copier: the referenced blobs of each old pack from `read`, verbatim,
/// into new packs for `out`. Chunks and trees (and snapshot blobs) go to
/// separate packs, as the store writes them. Each full new pack is claimed
/// here, before the writer renames it into place. Ends early, without
/// error, if the writer hung up (its error is the one to report).
fn copy_live(
    shared: &Shared,
    read: Receiver<Result<ReadPack, StoreError>>,
    out: &SyncSender<ToWriter>,
) -> Result<(), StoreError> {
    let mut data = Filling::new(PACK_TARGET);
    let mut trees = Filling::new(TREE_PACK_TARGET);
    let seal = |f: &mut Filling| -> Result<bool, StoreError> {
        let sealed = f.take();
        if let ToWriter::New { name, .. } = &sealed {
            lock(&shared.index).claim_pack(name, shared.me.0, shared.me.1)?;
        }
        Ok(out.send(sealed).is_ok())
    };
    for old in read {
        let old = old?;
        let announced = out.send(ToWriter::Old {
            id: old.usage.id,
            name: old.usage.name.clone(),
            size: old.usage.size,
            blobs: old.rows.len(),
        });
        if announced.is_err() {
            return Ok(());
        }
        for r in &old.rows {
            let f = if r.kind == BlobKind::Chunk {
                &mut data
            } else {
                &mut trees
            };
            let start = r.offset as usize;
            f.writer
                .add(r.id, r.kind, &old.bytes[start..start + r.length as usize]);
            f.from.push(r.pack);
            if f.writer.len() >= f.target && !seal(f)? {
                return Ok(());
            }
        }
    }
    for f in [&mut data, &mut trees] {
        if !f.writer.is_empty() && !seal(f)? {
            return Ok(());
        }
    }
    Ok(())
}

/// What the writer thread did, and where its time went.
#[derive(Default)]
struct Written {
    new_packs: u64,
    new_bytes: u64,
    old_removed: u64,
    old_bytes: u64,
    put: Duration,
    index: Duration,
}

/// New packs indexed together, in one transaction (which also drops the
/// old packs they emptied): one commit (a WAL fsync) per batch, not per
/// pack. At most this many written packs (16 MiB each) wait for their
/// index rows, so the rewrite needs about that much room on disk beyond the
/// store, besides the old packs not yet emptied.
const RELOCATE_BATCH: usize = 8;

/// The writer thread of [`Store::rewrite_packs`]: writes each new pack
/// durably, then, every [`RELOCATE_BATCH`] packs and at the end, moves the
/// rows of their blobs and drops the old packs left empty, in one
/// transaction; then their files go to `delete`.
fn write_rewritten(
    shared: &Shared,
    rx: Receiver<ToWriter>,
    delete: &Sender<String>,
) -> Result<Written, StoreError> {
    struct Durable {
        name: String,
        size: u64,
        moves: Vec<(PackEntry, i64)>,
    }
    let mut w = Written::default();
    // Old packs with blobs not yet in an indexed new pack: name, size, count.
    let mut waiting: HashMap<i64, (String, u64, usize)> = HashMap::new();
    // Old packs all of whose blobs are in new packs of `batch` or indexed.
    let mut emptied: Vec<(String, u64)> = Vec::new();
    let mut batch: Vec<Durable> = Vec::new();
    let flush = |batch: &mut Vec<Durable>,
                 emptied: &mut Vec<(String, u64)>,
                 w: &mut Written|
     -> Result<(), StoreError> {
        if batch.is_empty() && emptied.is_empty() {
            return Ok(());
        }
        let t = Instant::now();
        let new: Vec<Relocated<'_>> = batch
            .iter()
            .map(|d| Relocated {
                name: &d.name,
                size: d.size,
                moves: &d.moves,
            })
            .collect();
        let names: Vec<String> = emptied.iter().map(|(n, _)| n.clone()).collect();
        let removed: HashSet<String> = lock(&shared.index)
            .relocate(&new, &names)?
            .into_iter()
            .collect();
        w.index += t.elapsed();
        for (name, size) in emptied.drain(..) {
            if removed.contains(&name) {
                w.old_removed += 1;
                w.old_bytes += size;
                let _ = delete.send(name);
            } else {
                // Something still points into it: kept, for the next run.
                tracing::warn!("pack {name} still holds indexed blobs after its rewrite: kept");
            }
        }
        batch.clear();
        Ok(())
    };
    for msg in rx {
        match msg {
            ToWriter::Old {
                id,
                name,
                size,
                blobs,
            } => {
                if blobs == 0 {
                    emptied.push((name, size));
                } else {
                    waiting.insert(id, (name, size, blobs));
                }
            }
            ToWriter::New {
                name,
                bytes,
                entries,
                from,
            } => {
                let t = Instant::now();
                shared.backend.put(&name, &bytes)?;
                w.put += t.elapsed();
                let size = bytes.len() as u64;
                drop(bytes);
                w.new_packs += 1;
                w.new_bytes += size;
                for old in &from {
                    if let Some(entry) = waiting.get_mut(old) {
                        entry.2 -= 1;
                        if entry.2 == 0
                            && let Some((name, size, _)) = waiting.remove(old)
                        {
                            emptied.push((name, size));
                        }
                    }
                }
                batch.push(Durable {
                    name,
                    size,
                    moves: entries.into_iter().zip(from).collect(),
                });
                if batch.len() >= RELOCATE_BATCH {
                    flush(&mut batch, &mut emptied, &mut w)?;
                }
            }
        }
    }
    flush(&mut batch, &mut emptied, &mut w)?;
    Ok(w)
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

    /// A pack's usage: `blobs` referenced blobs of `live` bytes in all,
    /// and `dead` bytes besides what a pack of just them needs.
    fn usage(name: &str, blobs: u64, live: u64, dead: u64) -> PackUsage {
        let fixed = (pack::HEADER_LEN + pack::NONCE_LEN + pack::FOOTER_LEN) as u64;
        PackUsage {
            id: 0,
            name: name.into(),
            size: live + blobs * pack::ENTRY_LEN as u64 + fixed + dead,
            blobs,
            live_bytes: live,
        }
    }

    fn names(packs: &[PackUsage]) -> Vec<&str> {
        packs.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn a_pack_of_only_referenced_blobs_has_no_garbage() {
        let mut w = PackWriter::new();
        w.add(BlobId([1; 32]), BlobKind::Chunk, &[7; 1000]);
        w.add(BlobId([2; 32]), BlobKind::Tree, &[8; 10]);
        let (name, bytes, _) = w.finish();
        let mut p = PackUsage {
            id: 1,
            name,
            size: bytes.len() as u64,
            blobs: 2,
            live_bytes: 1010,
        };
        assert_eq!(garbage(&p), 0);
        // Even `--rewrite-below 1` leaves it alone: a run never rewrites
        // what the one before wrote.
        let every = GcOptions {
            rewrite_below: 1.0,
            max_unused: 0.0,
        };
        assert_eq!(
            plan_reclaim(vec![p.clone()], &every),
            ReclaimPlan::default()
        );
        // One blob unreferenced: its bytes and its trailer entry.
        p.blobs = 1;
        p.live_bytes = 1000;
        assert_eq!(garbage(&p), 10 + pack::ENTRY_LEN as u64);
        assert_eq!(plan_reclaim(vec![p], &every).rewrite.len(), 1);
    }

    #[test]
    fn the_plan_deletes_empty_packs_rewrites_mostly_dead_ones_then_the_largest_garbage_shares() {
        let packs = vec![
            usage("empty", 0, 0, 5000),
            usage("mostly-dead", 10, 1000, 9000),
            usage("live", 100, 1_000_000, 0),
            usage("a-tenth-dead", 10, 900_000, 100_000),
            usage("a-third-dead", 10, 200_000, 100_000),
            usage("a-hundredth-dead", 10, 990_000, 10_000),
        ];
        let opts = GcOptions {
            rewrite_below: 0.5,
            max_unused: 0.05,
        };
        let plan = plan_reclaim(packs.clone(), &opts);
        assert_eq!(names(&plan.delete), ["empty"]);
        // Then 210,000 bytes of garbage against 3.09 MB referenced (6.8 %):
        // the pack with the largest share goes first, even though another
        // holds as much garbage; 110,000 left is under 5 %.
        assert_eq!(names(&plan.rewrite), ["mostly-dead", "a-third-dead"]);
        // Stricter: until 1 % at most.
        let strict = GcOptions {
            max_unused: 0.01,
            ..opts.clone()
        };
        assert_eq!(
            names(&plan_reclaim(packs.clone(), &strict).rewrite),
            ["mostly-dead", "a-third-dead", "a-tenth-dead"]
        );
        // max_unused 1 and rewrite_below 0: nothing is rewritten.
        let none = GcOptions {
            rewrite_below: 0.0,
            max_unused: 1.0,
        };
        let plan = plan_reclaim(packs, &none);
        assert!(plan.rewrite.is_empty(), "{plan:?}");
        assert_eq!(names(&plan.delete), ["empty"]);
    }

    proptest::proptest! {
        #[test]
        fn the_plan_leaves_at_most_max_unused_garbage(
            packs in proptest::collection::vec((0u64..50, 0u64..5_000_000, 0u64..5_000_000), 0..40),
            rewrite_below in 0.0f64..=1.0,
            max_unused in 0.0f64..=1.0,
        ) {
            let packs: Vec<PackUsage> = packs
                .iter()
                .enumerate()
                .map(|(i, &(blobs, live, dead))| {
                    usage(&format!("p{i:02}"), blobs, if blobs == 0 { 0 } else { live }, dead)
                })
                .collect();
            let opts = GcOptions { rewrite_below, max_unused };
            let plan = plan_reclaim(packs.clone(), &opts);
            let chosen: HashSet<&str> = names(&plan.delete).into_iter().chain(names(&plan.rewrite)).collect();
            proptest::prop_assert_eq!(chosen.len(), plan.delete.len() + plan.rewrite.len());
            for p in &packs {
                // Every empty pack is deleted, and only those.
                proptest::prop_assert_eq!(p.blobs == 0, names(&plan.delete).contains(&p.name.as_str()));
                // A pack without garbage is never rewritten.
                if garbage(p) == 0 {
                    proptest::prop_assert!(!names(&plan.rewrite).contains(&p.name.as_str()));
                }
            }
            // What stays holds at most max_unused of garbage, counted
            // against the referenced bytes.
            let referenced: u64 = packs.iter().map(|p| p.live_bytes).sum();
            let left: u64 = packs
                .iter()
                .filter(|p| !chosen.contains(p.name.as_str()))
                .map(garbage)
                .sum();
            proptest::prop_assert!(left as f64 <= max_unused * referenced as f64 || left == 0);
            // Carried out (each rewritten pack's blobs in a pack of their
            // own, without garbage), the plan leaves nothing for a second
            // run to do.
            let after: Vec<PackUsage> = packs
                .iter()
                .filter(|p| !names(&plan.delete).contains(&p.name.as_str()))
                .map(|p| {
                    if names(&plan.rewrite).contains(&p.name.as_str()) {
                        usage(&format!("new-{}", p.name), p.blobs, p.live_bytes, 0)
                    } else {
                        p.clone()
                    }
                })
                .collect();
            proptest::prop_assert_eq!(plan_reclaim(after, &opts), ReclaimPlan::default());
        }
    }

    /// The file of pack `name` in store directory `dir`.
    fn pack_path(dir: &tempfile::TempDir, name: &str) -> std::path::PathBuf {
        dir.path().join("s/packs").join(&name[..2]).join(name)
    }

    /// Flips the last byte of blob `id` in its pack file.
    fn damage(dir: &tempfile::TempDir, s: &Store, id: BlobId) {
        let loc = lock(&s.shared.index).locate(&id).unwrap().unwrap();
        let path = pack_path(dir, &loc.pack);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[(loc.offset + loc.length as u64 - 1) as usize] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
    }

    /// A store whose one data pack holds a kept chunk and a chunk only a
    /// forgotten snapshot used (incompressible, so stored raw).
    fn kept_and_dead_in_one_pack() -> (tempfile::TempDir, Store, BlobId, BlobId) {
        let (dir, s) = store();
        let kept = put_chunk(&s, &noise(1, 100_000));
        let dead = put_chunk(&s, &noise(2, 300_000));
        let old = commit(&s, put_tree(&s, "both", &[kept, dead]).unwrap(), 1);
        commit(&s, put_tree(&s, "kept", &[kept]).unwrap(), 2);
        s.forget_snapshot(old).unwrap();
        (dir, s, kept, dead)
    }

    #[test]
    fn damage_only_in_garbage_goes_with_the_rewritten_pack() {
        let (dir, s, kept, dead) = kept_and_dead_in_one_pack();
        let old = lock(&s.shared.index).locate(&kept).unwrap().unwrap().pack;
        damage(&dir, &s, dead);
        let r = s.gc(&GcOptions::default()).unwrap();
        assert!(r.packs_rewritten >= 1, "{r:?}");
        assert!(!pack_path(&dir, &old).exists());
        assert_eq!(
            s.get_blob(kept, BlobKind::Chunk).unwrap(),
            noise(1, 100_000)
        );
        let on_disk: HashSet<String> = s.shared.backend.list().unwrap().into_iter().collect();
        assert_eq!(on_disk, lock(&s.shared.index).pack_names().unwrap());
    }

    #[test]
    fn a_damaged_referenced_blob_stops_the_rewrite_and_its_pack_stays() {
        let (dir, s, kept, _) = kept_and_dead_in_one_pack();
        let old = lock(&s.shared.index).locate(&kept).unwrap().unwrap().pack;
        damage(&dir, &s, kept);
        match s.gc(&GcOptions::default()) {
            Err(StoreError::Corrupt { id, .. }) => assert_eq!(id, kept),
            other => panic!("{other:?}"),
        }
        assert!(pack_path(&dir, &old).exists());
        assert_eq!(
            lock(&s.shared.index).locate(&kept).unwrap().unwrap().pack,
            old
        );
    }

    #[test]
    fn blobs_of_several_packs_are_copied_verbatim_into_one() {
        let (dir, s) = store();
        let mut kept = Vec::new();
        let mut old_packs = HashSet::new();
        let mut forget = Vec::new();
        for p in 0..4u8 {
            let c: Vec<BlobId> = (0..3)
                .map(|i| put_chunk(&s, &noise(p * 3 + i, 200_000)))
                .collect();
            forget.push(commit(
                &s,
                put_tree(&s, &format!("all{p}"), &c).unwrap(),
                p as i64,
            ));
            kept.push(c[0]);
            old_packs.insert(lock(&s.shared.index).locate(&c[0]).unwrap().unwrap().pack);
        }
        commit(&s, put_tree(&s, "kept", &kept).unwrap(), 9);
        let stored: Vec<Vec<u8>> = kept
            .iter()
            .map(|id| s.read_blob_verified(*id, BlobKind::Chunk).unwrap())
            .collect();
        for id in forget {
            s.forget_snapshot(id).unwrap();
        }
        let r = s.gc(&GcOptions::default()).unwrap();
        assert!(r.packs_rewritten >= 4, "{r:?}");
        let new: HashSet<String> = kept
            .iter()
            .map(|id| lock(&s.shared.index).locate(id).unwrap().unwrap().pack)
            .collect();
        assert_eq!(new.len(), 1, "the kept chunks share one new pack");
        assert!(new.is_disjoint(&old_packs));
        for p in &old_packs {
            assert!(!pack_path(&dir, p).exists());
        }
        for (i, id) in kept.iter().enumerate() {
            // The same stored bytes, and they still decode and verify.
            assert_eq!(
                s.read_blob_verified(*id, BlobKind::Chunk).unwrap(),
                stored[i]
            );
            assert_eq!(
                s.get_blob(*id, BlobKind::Chunk).unwrap(),
                noise(i as u8 * 3, 200_000)
            );
        }
        let again = s.gc(&GcOptions::default()).unwrap();
        assert_eq!((again.packs_rewritten, again.bytes_reclaimed), (0, 0));
    }

    #[test]
    fn relocation_leaves_rows_that_moved_meanwhile_and_keeps_packs_still_used() {
        let (_d, s, kept, dead) = kept_and_dead_in_one_pack();
        let mut index = lock(&s.shared.index);
        let old = index.locate(&kept).unwrap().unwrap().pack;
        let old_id = index
            .pack_usage()
            .unwrap()
            .into_iter()
            .find(|p| p.name == old)
            .unwrap()
            .id;
        let entry = |id, offset| {
            (
                PackEntry {
                    id,
                    kind: BlobKind::Chunk,
                    offset,
                    length: 10,
                },
                old_id,
            )
        };
        // Only `kept` moves: `dead` still points into the old pack, so the
        // old pack is not dropped.
        let moves = [entry(kept, 8)];
        let new = [Relocated {
            name: "new-pack",
            size: 100,
            moves: &moves,
        }];
        assert!(
            index
                .relocate(&new, std::slice::from_ref(&old))
                .unwrap()
                .is_empty()
        );
        assert_eq!(index.locate(&kept).unwrap().unwrap().pack, "new-pack");
        assert_eq!(index.locate(&dead).unwrap().unwrap().pack, old);
        // A row no longer in the pack it was copied from stays where it is.
        let moves = [entry(kept, 50)];
        let again = [Relocated {
            name: "other-pack",
            size: 100,
            moves: &moves,
        }];
        index.relocate(&again, &[]).unwrap();
        let loc = index.locate(&kept).unwrap().unwrap();
        assert_eq!((loc.pack.as_str(), loc.offset), ("new-pack", 8));
        // Once `dead` moves too, the old pack is dropped.
        let moves = [entry(dead, 20)];
        let last = [Relocated {
            name: "new-pack",
            size: 100,
            moves: &moves,
        }];
        let removed = index.relocate(&last, std::slice::from_ref(&old)).unwrap();
        assert_eq!(removed, std::slice::from_ref(&old));
        assert_eq!(
            index
                .remove_packs_if_empty(&["new-pack".into(), "other-pack".into()])
                .unwrap(),
            ["other-pack"]
        );
    }
}
