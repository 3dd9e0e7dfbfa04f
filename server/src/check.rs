//! Verification (`homesync check`): is everything the snapshots need in the
//! store, and (with `read_data`) do the stored bytes still hash to their ids?
//!
//! - **Structure** (always): every pack the index names exists, is the size
//!   the index recorded, and its trailer lists the blobs the index places in
//!   it, where it places them (header, footer and trailer only: a few KiB
//!   per pack); every indexed blob lies within its pack; every snapshot
//!   row decodes and its blob is indexed; every tree of every snapshot is
//!   read, re-hashed and decoded (once, however many snapshots share it) and
//!   every blob it references is indexed.
//! - **Data** (`read_data`): every indexed blob of the selected packs is
//!   decoded and re-hashed against its id, pack by pack, each pack read
//!   once in one go (packs are about 16 MiB), and the pack's own bytes are
//!   hashed against its name. [`Subset`] picks a deterministic part of the
//!   packs, so that repeated runs cover the whole store in turn.
//!
//! Each damaged or missing blob is then mapped to what it affects: the
//! snapshots and the paths in them (files whose contents include a damaged
//! chunk, directories whose tree is damaged), walking the snapshots' trees
//! once more but descending only into trees that lead to damage.
//!
//! Packs the index does not name and trailer entries it does not hold are
//! warnings, not damage: a pack is renamed into place just before it is
//! indexed, so a check running beside a backup sees such packs, and a crash
//! between the two leaves one for garbage collection.

use crate::Store;
use crate::index::{BlobRow, PackRow};
use crate::pack::{self, PackEntry};
use homesync_protocol::blob;
use homesync_protocol::{
    BlobId, BlobKind, Snapshot, SnapshotId, StoreError, Timestamp, Tree, TreeId,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::ErrorKind;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Packs up to this size are read whole for `read_data` (packs are sealed
/// at 16 MiB, plus one blob); a larger one is read blob by blob.
pub const READ_WHOLE_MAX: u64 = 128 << 20;

/// Which packs `read_data` reads. The selection depends only on the pack's
/// name (a BLAKE3 hash, so evenly spread): the same subset picks the same
/// packs every time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Subset {
    #[default]
    All,
    /// Part `n` of `m` (1-based): parts `1/m` ... `m/m` are disjoint and
    /// together cover every pack (`restic check --read-data-subset n/m`).
    Part { n: u32, m: u32 },
    /// About `percent` % of the packs: those whose bucket (0..100, from the
    /// name) is in `offset .. offset + percent`, wrapping at 100. Moving the
    /// offset on by `percent` each run covers everything in turn.
    Percent { percent: u32, offset: u32 },
}

impl Subset {
    /// Parses `n/m` or `N%` (then `offset` applies, default 0).
    pub fn parse(spec: &str, offset: Option<u32>) -> Result<Subset, String> {
        let spec = spec.trim();
        let num = |s: &str| {
            s.trim()
                .parse::<u32>()
                .map_err(|_| format!("subset {spec:?}: {s:?} is not a whole number"))
        };
        if let Some(p) = spec.strip_suffix('%') {
            let percent = num(p)?;
            if !(1..=100).contains(&percent) {
                return Err(format!("subset {spec:?}: the percentage must be 1 to 100"));
            }
            let offset = offset.unwrap_or(0);
            if offset >= 100 {
                return Err(format!("subset offset {offset}: must be 0 to 99"));
            }
            return Ok(if percent == 100 {
                Subset::All
            } else {
                Subset::Percent { percent, offset }
            });
        }
        if offset.is_some() {
            return Err("a subset offset goes with a percentage (--subset N%)".into());
        }
        let (n, m) = spec
            .split_once('/')
            .ok_or_else(|| format!("subset {spec:?}: expected n/m (e.g. 2/7) or N% (e.g. 10%)"))?;
        let (n, m) = (num(n)?, num(m)?);
        if m == 0 || n == 0 || n > m {
            return Err(format!("subset {spec:?}: needs 1 <= n <= m"));
        }
        Ok(if m == 1 {
            Subset::All
        } else {
            Subset::Part { n, m }
        })
    }

    /// A number spread evenly over packs: the name's first 64 bits.
    fn key(name: &str) -> u64 {
        name.get(..16)
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .unwrap_or_else(|| {
                let h = blake3::hash(name.as_bytes());
                u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
            })
    }

    /// Whether pack `name` is in this subset.
    pub fn selects(&self, name: &str) -> bool {
        let key = Subset::key(name);
        match *self {
            Subset::All => true,
            Subset::Part { n, m } => key % u64::from(m) == u64::from(n - 1),
            Subset::Percent { percent, offset } => {
                (key % 100 + 100 - u64::from(offset)) % 100 < u64::from(percent)
            }
        }
    }
}

impl fmt::Display for Subset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subset::All => f.write_str("all"),
            Subset::Part { n, m } => write!(f, "{n}/{m}"),
            Subset::Percent { percent, offset: 0 } => write!(f, "{percent}%"),
            Subset::Percent { percent, offset } => write!(f, "{percent}% from {offset}"),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Read and re-hash the blobs of the packs in `subset`.
    pub read_data: bool,
    pub subset: Subset,
}

/// What the check is doing, for a progress bar (counters only, read from
/// another thread).
#[derive(Debug, Default)]
pub struct CheckProgress {
    /// A [`Stage`] as a number.
    pub stage: AtomicU64,
    /// Packs (stages Packs, Data) or trees (stages Trees, Damage) done.
    pub items_done: AtomicU64,
    /// Packs in all (stages Packs, Data); 0 when unknown.
    pub items_total: AtomicU64,
    pub bytes_done: AtomicU64,
    /// Bytes of the packs to read (stage Data).
    pub bytes_total: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Listing = 0,
    Packs = 1,
    Trees = 2,
    Damage = 3,
}

impl Stage {
    pub fn describe(self) -> &'static str {
        match self {
            Stage::Listing => "listing",
            Stage::Packs => "checking packs",
            Stage::Trees => "checking trees",
            Stage::Damage => "finding affected files",
        }
    }
}

impl CheckProgress {
    fn enter(&self, stage: Stage, total: u64, bytes_total: u64) {
        self.items_done.store(0, Relaxed);
        self.bytes_done.store(0, Relaxed);
        self.items_total.store(total, Relaxed);
        self.bytes_total.store(bytes_total, Relaxed);
        self.stage.store(stage as u64, Relaxed);
    }

    pub fn stage(&self) -> Stage {
        match self.stage.load(Relaxed) {
            1 => Stage::Packs,
            2 => Stage::Trees,
            3 => Stage::Damage,
            _ => Stage::Listing,
        }
    }
}

/// What is wrong with a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Referenced, but the index has no such blob.
    Missing,
    /// Its pack file is gone.
    PackMissing,
    /// The index places it past the end of its pack (the pack is shorter).
    Truncated { pack_size: u64 },
    /// Read, but it does not decode, or its bytes do not hash to its id.
    Corrupt(String),
    /// Reading it failed (an I/O error of the disk).
    Unreadable(String),
}

impl Problem {
    /// A short stable word for scripts (`--json`).
    pub fn code(&self) -> &'static str {
        match self {
            Problem::Missing => "missing",
            Problem::PackMissing => "pack_missing",
            Problem::Truncated { .. } => "truncated",
            Problem::Corrupt(_) => "corrupt",
            Problem::Unreadable(_) => "unreadable",
        }
    }
}

impl Problem {
    /// What went wrong, without the [`Problem::code`] word.
    pub fn detail(&self) -> String {
        match self {
            Problem::Corrupt(why) | Problem::Unreadable(why) => why.clone(),
            p => p.to_string(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing => f.write_str("not in the store"),
            Problem::PackMissing => f.write_str("its pack is missing"),
            Problem::Truncated { pack_size } => {
                write!(
                    f,
                    "lies past the end of its pack ({pack_size} bytes): truncated"
                )
            }
            Problem::Corrupt(why) => write!(f, "corrupt: {why}"),
            Problem::Unreadable(why) => write!(f, "unreadable: {why}"),
        }
    }
}

/// One place a damaged blob is needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Affected {
    pub snapshot: SnapshotId,
    pub machine: String,
    /// The snapshot's source directory (raw bytes).
    pub source: Vec<u8>,
    pub time: Timestamp,
    /// Relative to the source, raw bytes: a file whose contents include
    /// the blob, or a directory whose tree it is; empty for the snapshot's
    /// root directory or the snapshot itself.
    pub path: Vec<u8>,
}

/// A damaged or missing blob and everything that needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub blob: BlobId,
    pub kind: BlobKind,
    /// The pack the index places it in (none when it is not indexed).
    pub pack: Option<String>,
    pub problem: Problem,
    /// Sorted by snapshot time, then path. Empty: no snapshot needs it.
    pub affected: Vec<Affected>,
}

#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub snapshots_checked: u64,
    /// Distinct trees read, re-hashed and decoded.
    pub trees_checked: u64,
    /// Indexed blobs checked against their pack (within it, listed by its
    /// trailer), plus distinct references checked to be indexed.
    pub blobs_checked: u64,
    /// Blobs read and re-hashed (`read_data`).
    pub blobs_read: u64,
    pub packs_checked: u64,
    /// Packs whose data was read (`read_data`, within the subset).
    pub packs_read: u64,
    /// Bytes read from packs: trailers, trees, and with `read_data` the
    /// selected packs.
    pub bytes_read: u64,
    pub damaged: Vec<Damage>,
    /// Damage not confined to one blob: a pack of the wrong size, a pack
    /// trailer that is unreadable or disagrees with the index, a pack whose
    /// bytes no longer hash to its name, a damaged snapshot or index row.
    pub errors: Vec<String>,
    /// Worth knowing, not damage: packs not in the index, blobs in a pack's
    /// trailer that the index does not hold.
    pub warnings: Vec<String>,
}

impl CheckReport {
    /// True when anything is damaged or missing (exit code 5).
    pub fn is_damaged(&self) -> bool {
        !self.damaged.is_empty() || !self.errors.is_empty()
    }
}

/// Blob kinds as words.
pub fn kind_name(kind: BlobKind) -> &'static str {
    match kind {
        BlobKind::Chunk => "chunk",
        BlobKind::Tree => "tree",
        BlobKind::Snapshot => "snapshot",
    }
}

/// A store error met while checking: damage to record, or a reason to stop
/// (the index failing, no permission to read the store at all).
fn as_problem(e: StoreError) -> Result<Problem, StoreError> {
    match e {
        StoreError::Missing(_) => Ok(Problem::Missing),
        StoreError::Corrupt { source, .. } => Ok(Problem::Corrupt(source.to_string())),
        StoreError::CorruptDetail { detail, .. } => Ok(Problem::Corrupt(detail)),
        StoreError::Io { source, context } if source.kind() != ErrorKind::PermissionDenied => {
            Ok(Problem::Unreadable(format!("{context}: {source}")))
        }
        e => Err(e),
    }
}

struct Checker<'a> {
    store: &'a Store,
    progress: &'a CheckProgress,
    /// Every indexed blob, sorted by id.
    blobs: Vec<BlobRow>,
    packs: HashMap<i64, PackRow>,
    damaged: BTreeMap<BlobId, Damage>,
    /// Per pack, blobs its trailer lists that the index does not place
    /// in it.
    elsewhere: Vec<(String, Vec<BlobId>)>,
    report: CheckReport,
}

impl Checker<'_> {
    fn row(&self, id: &BlobId) -> Option<&BlobRow> {
        self.blobs
            .binary_search_by(|r| r.id.cmp(id))
            .ok()
            .map(|i| &self.blobs[i])
    }

    fn pack_name(&self, pack: i64) -> Option<String> {
        self.packs.get(&pack).map(|p| p.name.clone())
    }

    /// Records damage; the first problem found for a blob is kept.
    fn damage(&mut self, blob: BlobId, kind: BlobKind, pack: Option<String>, problem: Problem) {
        self.damaged.entry(blob).or_insert(Damage {
            blob,
            kind,
            pack,
            problem,
            affected: Vec::new(),
        });
    }

    /// Damage to a blob the index holds.
    fn damage_row(&mut self, row: BlobRow, problem: Problem) {
        let pack = self.pack_name(row.pack);
        self.damage(row.id, row.kind, pack, problem);
    }

    /// A backend read; `Ok(Err(problem))` when the pack is damaged or gone.
    fn read(
        &mut self,
        read: impl FnOnce() -> Result<Vec<u8>, StoreError>,
    ) -> Result<Result<Vec<u8>, Problem>, StoreError> {
        match read() {
            Ok(bytes) => {
                self.report.bytes_read += bytes.len() as u64;
                self.progress
                    .bytes_done
                    .fetch_add(bytes.len() as u64, Relaxed);
                Ok(Ok(bytes))
            }
            Err(StoreError::Io { context, source }) => match source.kind() {
                ErrorKind::NotFound => Ok(Err(Problem::PackMissing)),
                ErrorKind::PermissionDenied => Err(StoreError::Io { context, source }),
                _ => Ok(Err(Problem::Unreadable(format!("{context}: {source}")))),
            },
            Err(e) => Err(e),
        }
    }

    /// The trailer entries of a pack of `size` bytes, read from its header,
    /// footer and trailer only.
    fn read_trailer(
        &mut self,
        name: &str,
        size: u64,
    ) -> Result<Result<Vec<PackEntry>, String>, StoreError> {
        let store = self.store;
        let backend = store.backend();
        let fixed = (pack::HEADER_LEN + pack::FOOTER_LEN) as u64;
        if size < fixed {
            return Ok(Err(pack::PackError::Truncated(size as usize).to_string()));
        }
        let header = match self.read(|| backend.read_at(name, 0, pack::HEADER_LEN))? {
            Ok(b) => b,
            Err(p) => return Ok(Err(p.to_string())),
        };
        let footer = match self
            .read(|| backend.read_at(name, size - pack::FOOTER_LEN as u64, pack::FOOTER_LEN))?
        {
            Ok(b) => b,
            Err(p) => return Ok(Err(p.to_string())),
        };
        let (start, len) = match pack::trailer_span(&header, &footer, size) {
            Ok(span) => span,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let trailer = match self.read(|| backend.read_at(name, start, len))? {
            Ok(b) => b,
            Err(p) => return Ok(Err(p.to_string())),
        };
        Ok(pack::parse_trailer(&trailer, start).map_err(|e| e.to_string()))
    }

    /// Checks one indexed pack; `rows` are its blobs, by offset.
    fn check_pack(
        &mut self,
        pack: &PackRow,
        rows: &[BlobRow],
        read_data: bool,
    ) -> Result<(), StoreError> {
        let name = pack.name.as_str();
        self.report.packs_checked += 1;
        self.report.blobs_checked += rows.len() as u64;
        let size = match self.store.backend().size(name) {
            Ok(Some(s)) => s,
            Ok(None) => {
                if rows.is_empty() {
                    self.report.warnings.push(format!(
                        "pack {name} is in the index, holds no blob and is missing"
                    ));
                }
                for &r in rows {
                    self.damage_row(r, Problem::PackMissing);
                }
                return Ok(());
            }
            Err(StoreError::Io { context, source })
                if source.kind() != ErrorKind::PermissionDenied =>
            {
                let why = format!("{context}: {source}");
                for &r in rows {
                    self.damage_row(r, Problem::Unreadable(why.clone()));
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if size != pack.size {
            self.report.errors.push(format!(
                "pack {name} is {size} bytes, the index recorded {}",
                pack.size
            ));
        }
        let store = self.store;
        let whole = if read_data && size <= READ_WHOLE_MAX {
            let backend = store.backend();
            match self.read(|| backend.read(name))? {
                Ok(b) => Some(b),
                Err(p) => {
                    for &r in rows {
                        self.damage_row(r, p.clone());
                    }
                    return Ok(());
                }
            }
        } else {
            None
        };
        // Index against trailer.
        let trailer = match &whole {
            Some(b) => pack::read_entries(b).map_err(|e| e.to_string()),
            None => self.read_trailer(name, size)?,
        };
        match &trailer {
            Err(why) => self.report.errors.push(format!(
                "pack {name}: its trailer is unreadable ({why}); the index cannot be rebuilt from it"
            )),
            Ok(entries) => {
                let listed: HashSet<(BlobId, u64, u32, BlobKind)> = entries
                    .iter()
                    .map(|e| (e.id, e.offset, e.length, e.kind))
                    .collect();
                let unlisted: Vec<&BlobRow> = rows
                    .iter()
                    .filter(|r| !listed.contains(&(r.id, r.offset, r.length, r.kind)))
                    .collect();
                if let Some(first) = unlisted.first() {
                    self.report.errors.push(format!(
                        "pack {name}: its trailer does not list {} blob(s) the index places there (e.g. {} at {})",
                        unlisted.len(),
                        first.id,
                        first.offset
                    ));
                }
                // Listed but indexed elsewhere (a duplicate) or not at all
                // (garbage): told apart once the whole index is at hand.
                let here: HashSet<BlobId> = rows.iter().map(|r| r.id).collect();
                let elsewhere: Vec<BlobId> = entries
                    .iter()
                    .map(|e| e.id)
                    .filter(|id| !here.contains(id))
                    .collect();
                if !elsewhere.is_empty() {
                    self.elsewhere.push((name.to_string(), elsewhere));
                }
            }
        }
        // Every blob within the pack.
        let mut inside = Vec::with_capacity(rows.len());
        for &r in rows {
            let end = r.offset.saturating_add(u64::from(r.length));
            if end > size {
                self.damage_row(r, Problem::Truncated { pack_size: size });
            } else if r.offset < pack::HEADER_LEN as u64 {
                self.damage_row(
                    r,
                    Problem::Corrupt(format!(
                        "the index places it at {} in the pack header",
                        r.offset
                    )),
                );
            } else {
                inside.push(r);
            }
        }
        if !read_data {
            return Ok(());
        }
        // Data: re-hash every blob.
        self.report.packs_read += 1;
        let mut bad = false;
        for r in inside {
            let read_one;
            let encoded: &[u8] = match &whole {
                Some(b) => {
                    let at = r.offset as usize;
                    match b.get(at..at + r.length as usize) {
                        Some(slice) => slice,
                        None => {
                            // Shorter than its size a moment ago.
                            bad = true;
                            let pack_size = b.len() as u64;
                            self.damage_row(r, Problem::Truncated { pack_size });
                            continue;
                        }
                    }
                }
                None => {
                    let backend = store.backend();
                    match self.read(|| backend.read_at(name, r.offset, r.length as usize))? {
                        Ok(b) => {
                            read_one = b;
                            &read_one
                        }
                        Err(p) => {
                            bad = true;
                            self.damage_row(r, p);
                            continue;
                        }
                    }
                }
            };
            self.report.blobs_read += 1;
            if let Err(e) = blob::decode_verified(encoded, r.id, r.kind) {
                bad = true;
                self.damage_row(r, Problem::Corrupt(e.to_string()));
            }
        }
        match &whole {
            Some(b) if !bad && blake3::hash(b).to_hex().as_str() != name => {
                self.report.errors.push(format!(
                    "pack {name}: its bytes no longer hash to its name, though every indexed blob in it checks out (damage in its header, trailer or unindexed blobs)"
                ));
            }
            None if size > READ_WHOLE_MAX => self.report.warnings.push(format!(
                "pack {name} is {size} bytes: its blobs were read one by one, the pack's own hash was not checked"
            )),
            _ => {}
        }
        Ok(())
    }

    /// Reads and decodes a tree; `None` (damage recorded) when it cannot be.
    fn read_tree(&mut self, id: TreeId) -> Result<Option<Tree>, StoreError> {
        let bid = BlobId::from(id);
        if self.damaged.contains_key(&bid) {
            return Ok(None);
        }
        let Some(row) = self.row(&bid).copied() else {
            // Not in the listing: maybe indexed since (a backup committing).
            if !self.store.index().has(&bid)? {
                self.damage(bid, BlobKind::Tree, None, Problem::Missing);
                return Ok(None);
            }
            return self.decode_tree(id, None);
        };
        self.report.bytes_read += u64::from(row.length);
        self.decode_tree(id, Some(row))
    }

    fn decode_tree(
        &mut self,
        id: TreeId,
        row: Option<BlobRow>,
    ) -> Result<Option<Tree>, StoreError> {
        let bid = BlobId::from(id);
        let pack = row.and_then(|r| self.pack_name(r.pack));
        let plain = match homesync_protocol::Repository::get_blob(self.store, bid, BlobKind::Tree) {
            Ok(p) => p,
            Err(e) => {
                let problem = as_problem(e)?;
                self.damage(bid, BlobKind::Tree, pack, problem);
                return Ok(None);
            }
        };
        match Tree::decode(&plain) {
            Ok(t) => Ok(Some(t)),
            Err(e) => {
                self.damage(
                    bid,
                    BlobKind::Tree,
                    pack,
                    Problem::Corrupt(format!("does not decode as a tree: {e}")),
                );
                Ok(None)
            }
        }
    }

    /// Is this referenced blob indexed? Records it missing if not.
    fn referenced(&mut self, id: BlobId, kind: BlobKind) -> Result<(), StoreError> {
        self.report.blobs_checked += 1;
        if self.row(&id).is_none() && !self.store.index().has(&id)? {
            self.damage(id, kind, None, Problem::Missing);
        }
        Ok(())
    }

    /// Walks every snapshot's trees, each distinct tree once.
    fn check_trees(&mut self, snapshots: &[(SnapshotId, Snapshot)]) -> Result<(), StoreError> {
        self.progress.enter(Stage::Trees, 0, 0);
        let mut seen: HashSet<TreeId> = HashSet::new();
        let mut chunks_seen: HashSet<BlobId> = HashSet::new();
        for (sid, snap) in snapshots {
            self.report.snapshots_checked += 1;
            self.referenced((*sid).into(), BlobKind::Snapshot)?;
            let mut stack = vec![snap.root_tree()];
            while let Some(id) = stack.pop() {
                if !seen.insert(id) {
                    continue;
                }
                let Some(tree) = self.read_tree(id)? else {
                    continue;
                };
                self.report.trees_checked += 1;
                self.progress.items_done.fetch_add(1, Relaxed);
                for node in &tree.nodes {
                    for &c in &node.chunks {
                        if chunks_seen.insert(c.into()) {
                            self.referenced(c.into(), BlobKind::Chunk)?;
                        }
                    }
                    if let Some(sub) = node.subtree
                        && !seen.contains(&sub)
                    {
                        stack.push(sub);
                    }
                }
            }
        }
        Ok(())
    }

    /// Fills in `affected` of every damaged blob.
    fn attribute(&mut self, snapshots: &[(SnapshotId, Snapshot)]) -> Result<(), StoreError> {
        if self.damaged.is_empty() {
            return Ok(());
        }
        self.progress.enter(Stage::Damage, 0, 0);
        let targets: HashSet<BlobId> = self.damaged.keys().copied().collect();
        // Whether a tree leads to damage (below it, not counting itself);
        // the trees that do are kept to be walked once per snapshot.
        let mut leads: HashMap<TreeId, bool> = HashMap::new();
        let mut kept: HashMap<TreeId, Tree> = HashMap::new();
        let mut found: Vec<(BlobId, Affected)> = Vec::new();
        for (sid, snap) in snapshots {
            let at = |path: Vec<u8>| Affected {
                snapshot: *sid,
                machine: snap.machine.clone(),
                source: snap.source.clone(),
                time: snap.time,
                path,
            };
            if targets.contains(&BlobId::from(*sid)) {
                found.push(((*sid).into(), at(Vec::new())));
            }
            let root = snap.root_tree();
            if targets.contains(&BlobId::from(root)) {
                found.push((root.into(), at(Vec::new())));
                continue;
            }
            if !self.leads_to_damage(root, &targets, &mut leads, &mut kept)? {
                continue;
            }
            let mut stack: Vec<(TreeId, Vec<u8>)> = vec![(root, Vec::new())];
            while let Some((id, dir)) = stack.pop() {
                let Some(tree) = kept.get(&id) else { continue };
                for node in &tree.nodes {
                    let path = if dir.is_empty() {
                        node.name.clone()
                    } else {
                        [&dir[..], b"/", &node.name[..]].concat()
                    };
                    let mut hit: Vec<BlobId> = node
                        .chunks
                        .iter()
                        .map(|&c| BlobId::from(c))
                        .filter(|c| targets.contains(c))
                        .collect();
                    hit.sort();
                    hit.dedup();
                    for c in hit {
                        found.push((c, at(path.clone())));
                    }
                    if let Some(sub) = node.subtree {
                        if targets.contains(&BlobId::from(sub)) {
                            found.push((sub.into(), at(path.clone())));
                        } else if leads.get(&sub) == Some(&true) {
                            stack.push((sub, path));
                        }
                    }
                }
            }
        }
        for (blob, a) in found {
            if let Some(d) = self.damaged.get_mut(&blob) {
                d.affected.push(a);
            }
        }
        for d in self.damaged.values_mut() {
            d.affected
                .sort_by(|a, b| (a.time, a.snapshot, &a.path).cmp(&(b.time, b.snapshot, &b.path)));
            d.affected.dedup();
        }
        Ok(())
    }

    /// Whether anything below `root` is damaged, filling `leads` for every
    /// tree beneath it (iteratively: a hostile store may nest trees deeper
    /// than any stack).
    fn leads_to_damage(
        &mut self,
        root: TreeId,
        targets: &HashSet<BlobId>,
        leads: &mut HashMap<TreeId, bool>,
        kept: &mut HashMap<TreeId, Tree>,
    ) -> Result<bool, StoreError> {
        let mut open: HashMap<TreeId, Tree> = HashMap::new();
        let mut stack: Vec<(TreeId, bool)> = vec![(root, false)];
        while let Some((id, expanded)) = stack.pop() {
            if leads.contains_key(&id) {
                continue;
            }
            if !expanded {
                // Damaged trees are targets and never opened; an unreadable
                // tree not among them (damaged since the walk) leads nowhere.
                let tree = match homesync_protocol::Repository::get_blob(
                    self.store,
                    id.into(),
                    BlobKind::Tree,
                )
                .ok()
                .and_then(|p| Tree::decode(&p).ok())
                {
                    Some(t) => t,
                    None => {
                        leads.insert(id, false);
                        continue;
                    }
                };
                self.progress.items_done.fetch_add(1, Relaxed);
                stack.push((id, true));
                for sub in tree.nodes.iter().filter_map(|n| n.subtree) {
                    if !targets.contains(&BlobId::from(sub)) && !leads.contains_key(&sub) {
                        stack.push((sub, false));
                    }
                }
                open.insert(id, tree);
            } else {
                let tree = open.remove(&id).expect("expanded trees are open");
                let hit = tree.nodes.iter().any(|n| {
                    n.chunks.iter().any(|&c| targets.contains(&BlobId::from(c)))
                        || n.subtree.is_some_and(|s| {
                            targets.contains(&BlobId::from(s)) || leads.get(&s) == Some(&true)
                        })
                });
                leads.insert(id, hit);
                if hit {
                    kept.insert(id, tree);
                }
            }
        }
        Ok(leads.get(&root) == Some(&true))
    }
}

/// Checks the store: structure always, stored bytes with
/// `opts.read_data`. Damage is reported in the result; an error means the
/// check itself could not go on (the index failing, no permission).
pub fn check(
    store: &Store,
    opts: &CheckOptions,
    progress: &CheckProgress,
) -> Result<CheckReport, StoreError> {
    progress.enter(Stage::Listing, 0, 0);
    // In this order: a pack is renamed into place before its blobs are
    // indexed, and a snapshot row is added only after its blobs are; so
    // every pack the index lists below is in `on_disk` unless lost, and
    // every blob of a listed snapshot is in the blob listing unless lost.
    let on_disk: HashSet<String> = store.backend().list()?.into_iter().collect();
    let rows = store.index().snapshot_rows()?;
    let listing = store.index().listing()?;

    let mut report = CheckReport::default();
    let mut snapshots = Vec::with_capacity(rows.len());
    for (id, data) in rows {
        let Some(id) = SnapshotId::from_slice(&id) else {
            report
                .errors
                .push(format!("a snapshot row has a {}-byte id", id.len()));
            continue;
        };
        if SnapshotId::of(&data) != id {
            report.errors.push(format!(
                "snapshot {id}: its row does not hash to its id (the snapshot is not listed)"
            ));
            continue;
        }
        match Snapshot::decode(&data) {
            Ok(s) => snapshots.push((id, s)),
            Err(e) => report.errors.push(format!(
                "snapshot {id}: its row does not decode ({e}; the snapshot is not listed)"
            )),
        }
    }
    report
        .errors
        .extend(listing.bad_rows.iter().map(|r| format!("index: {r}")));

    // One copy of the listing (about 60 bytes a blob): first grouped by
    // pack in offset order for the packs, then sorted by id for lookups.
    let mut blobs = listing.blobs;
    blobs.sort_unstable_by_key(|r| (r.pack, r.offset));
    let mut groups: HashMap<i64, std::ops::Range<usize>> = HashMap::new();
    let mut start = 0;
    for g in blobs.chunk_by(|a, b| a.pack == b.pack) {
        groups.insert(g[0].pack, start..start + g.len());
        start += g.len();
    }
    let packs: HashMap<i64, PackRow> = listing.packs.into_iter().map(|p| (p.id, p)).collect();
    let mut c = Checker {
        store,
        progress,
        blobs: Vec::new(),
        packs,
        damaged: BTreeMap::new(),
        elsewhere: Vec::new(),
        report,
    };

    // Packs, in the order of their names (as they lie in the directory).
    let mut order: Vec<PackRow> = c.packs.values().cloned().collect();
    order.sort_by(|a, b| a.name.cmp(&b.name));
    let selected = |p: &PackRow| opts.read_data && opts.subset.selects(&p.name);
    let read_total: u64 = order.iter().filter(|p| selected(p)).map(|p| p.size).sum();
    progress.enter(Stage::Packs, order.len() as u64, read_total);
    for p in &order {
        let rows = groups.remove(&p.id).map_or(&[][..], |g| &blobs[g]);
        c.check_pack(p, rows, selected(p))?;
        progress.items_done.fetch_add(1, Relaxed);
    }
    // Blob rows naming a pack the index does not have.
    let mut strays: Vec<(i64, std::ops::Range<usize>)> = groups.into_iter().collect();
    strays.sort_by_key(|(pack, _)| *pack);
    for (pack, g) in strays {
        c.report.errors.push(format!(
            "index: {} blob row(s) name pack row {pack}, which does not exist",
            g.len()
        ));
        for r in &blobs[g] {
            c.damage(
                r.id,
                r.kind,
                None,
                Problem::Corrupt(format!(
                    "the index names pack row {pack}, which does not exist"
                )),
            );
        }
    }
    blobs.sort_unstable_by_key(|r| r.id);
    c.blobs = blobs;
    for (name, ids) in std::mem::take(&mut c.elsewhere) {
        let unindexed = ids.iter().filter(|id| c.row(id).is_none()).count();
        if unindexed > 0 {
            c.report.warnings.push(format!(
                "pack {name}: {unindexed} blob(s) in its trailer are not in the index (garbage)"
            ));
        }
    }
    let indexed: HashSet<&str> = order.iter().map(|p| p.name.as_str()).collect();
    let mut orphans: Vec<&String> = on_disk
        .iter()
        .filter(|n| !indexed.contains(n.as_str()))
        .collect();
    orphans.sort();
    for name in orphans {
        c.report.warnings.push(format!(
            "pack {name} is not in the index (left by an interrupted write, or being written now)"
        ));
    }

    c.check_trees(&snapshots)?;
    c.attribute(&snapshots)?;
    let mut report = c.report;
    report.damaged = c.damaged.into_values().collect();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OpenOptions;
    use homesync_protocol::{
        BlobEncoder, ChunkId, ChunkerParams, Node, NodeKind, Repository, SnapshotStats,
    };
    use std::path::PathBuf;

    fn put_chunk(store: &Store, data: &[u8]) -> ChunkId {
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

    fn file(name: &str, chunks: Vec<ChunkId>) -> Node {
        let mut n = Node::new(name.as_bytes().to_vec(), NodeKind::File);
        n.size = 1;
        n.chunks = chunks;
        n
    }

    fn dir(name: &str, sub: TreeId) -> Node {
        let mut n = Node::new(name.as_bytes().to_vec(), NodeKind::Dir);
        n.subtree = Some(sub);
        n
    }

    fn put_tree(store: &Store, nodes: Vec<Node>) -> TreeId {
        let t = Tree::new(nodes);
        store
            .put_blob(
                t.id().into(),
                BlobKind::Tree,
                &BlobEncoder::new(3).encode(BlobKind::Tree, &t.encode()),
            )
            .unwrap();
        t.id()
    }

    fn commit(store: &Store, root: TreeId, sec: i64) -> SnapshotId {
        store
            .commit_snapshot(&Snapshot {
                time: Timestamp { sec, nsec: 0 },
                machine: "m".into(),
                source: b"/home/u".to_vec(),
                root: dir("u", root),
                parent: None,
                tags: vec![],
                stats: SnapshotStats::default(),
            })
            .unwrap()
    }

    /// Two snapshots sharing a chunk (in `docs/a` and, later, `b`) and a
    /// subtree; returns the store, the shared chunk and the snapshot ids.
    fn setup() -> (tempfile::TempDir, Store, ChunkId, [SnapshotId; 2]) {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::init(tmp.path(), ChunkerParams::default(), 3).unwrap();
        let shared = put_chunk(&store, &vec![42u8; 5000]);
        let other = put_chunk(&store, b"other contents");
        let docs = put_tree(
            &store,
            vec![file("a", vec![shared]), file("z", vec![other])],
        );
        let root1 = put_tree(&store, vec![dir("docs", docs)]);
        let s1 = commit(&store, root1, 10);
        let root2 = put_tree(
            &store,
            vec![dir("docs", docs), file("b", vec![shared, shared])],
        );
        let s2 = commit(&store, root2, 20);
        (tmp, store, shared, [s1, s2])
    }

    fn run(store: &Store, read_data: bool, subset: Subset) -> CheckReport {
        check(
            store,
            &CheckOptions { read_data, subset },
            &CheckProgress::default(),
        )
        .unwrap()
    }

    fn pack_of(store: &Store, id: BlobId) -> (crate::index::BlobLocation, PathBuf) {
        let loc = store.index().locate(&id).unwrap().unwrap();
        let path = store
            .dir()
            .join("packs")
            .join(&loc.pack[..2])
            .join(&loc.pack);
        (loc, path)
    }

    fn paths(d: &Damage) -> Vec<(SnapshotId, String)> {
        d.affected
            .iter()
            .map(|a| (a.snapshot, String::from_utf8_lossy(&a.path).into_owned()))
            .collect()
    }

    #[test]
    fn a_sound_store_passes_both_levels() {
        let (_tmp, store, _, _) = setup();
        let r = run(&store, false, Subset::All);
        assert!(!r.is_damaged(), "{r:?}");
        assert_eq!(r.snapshots_checked, 2);
        // root1, root2, docs: the shared subtree is read once.
        assert_eq!(r.trees_checked, 3);
        assert_eq!(r.packs_read, 0);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        let full = run(&store, true, Subset::All);
        assert!(!full.is_damaged(), "{full:?}");
        // 2 chunks, 3 trees, 2 snapshot blobs.
        assert_eq!(full.blobs_read, 7);
        assert_eq!(full.packs_read, full.packs_checked);
        assert!(full.bytes_read > r.bytes_read);
    }

    #[test]
    fn a_flipped_byte_is_found_by_reading_and_traced_to_its_files() {
        let (_tmp, store, shared, [s1, s2]) = setup();
        let (loc, path) = pack_of(&store, shared.into());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[loc.offset as usize + loc.length as usize - 1] ^= 0x40;
        std::fs::write(&path, bytes).unwrap();

        assert!(!run(&store, false, Subset::All).is_damaged());
        let r = run(&store, true, Subset::All);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.damaged.len(), 1, "{r:?}");
        let d = &r.damaged[0];
        assert_eq!(d.blob, BlobId::from(shared));
        assert_eq!(d.kind, BlobKind::Chunk);
        assert_eq!(d.pack.as_deref(), Some(loc.pack.as_str()));
        assert_eq!(d.problem.code(), "corrupt");
        assert_eq!(
            paths(d),
            vec![
                (s1, "docs/a".to_string()),
                (s2, "b".to_string()),
                (s2, "docs/a".to_string())
            ]
        );
    }

    #[test]
    fn a_missing_index_row_is_reported_with_its_paths() {
        let (tmp, store, shared, [s1, s2]) = setup();
        drop(store);
        let conn = rusqlite::Connection::open(tmp.path().join("index.sqlite")).unwrap();
        conn.execute("DELETE FROM blobs WHERE id = ?1", [&shared.0[..]])
            .unwrap();
        drop(conn);
        let store = Store::open(tmp.path(), OpenOptions::default()).unwrap();
        let r = run(&store, false, Subset::All);
        assert_eq!(r.damaged.len(), 1, "{r:?}");
        assert_eq!(r.damaged[0].problem, Problem::Missing);
        assert_eq!(r.damaged[0].pack, None);
        assert_eq!(paths(&r.damaged[0]).len(), 3);
        assert!(paths(&r.damaged[0]).contains(&(s1, "docs/a".into())));
        assert!(paths(&r.damaged[0]).contains(&(s2, "b".into())));
        // The pack still holds it: garbage, not damage.
        assert!(
            r.warnings.iter().any(|w| w.contains("not in the index")),
            "{:?}",
            r.warnings
        );
    }

    #[test]
    fn a_damaged_tree_is_found_without_reading_data_and_names_its_directory() {
        let (_tmp, store, _, [s1, s2]) = setup();
        let docs = store.snapshots().unwrap()[0].1.root_tree();
        let docs = Tree::decode(&store.get_blob(docs.into(), BlobKind::Tree).unwrap())
            .unwrap()
            .nodes[0]
            .subtree
            .unwrap();
        let (loc, path) = pack_of(&store, docs.into());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[loc.offset as usize + loc.length as usize - 2] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let r = run(&store, false, Subset::All);
        assert_eq!(r.damaged.len(), 1, "{r:?}");
        assert_eq!(r.damaged[0].kind, BlobKind::Tree);
        assert_eq!(
            paths(&r.damaged[0]),
            vec![(s1, "docs".to_string()), (s2, "docs".to_string())]
        );
    }

    #[test]
    fn a_truncated_pack_fails_the_structure_check() {
        let (_tmp, store, shared, _) = setup();
        let (loc, path) = pack_of(&store, shared.into());
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(loc.offset + 3).unwrap();
        let r = run(&store, false, Subset::All);
        assert!(r.is_damaged());
        let d = r.damaged.iter().find(|d| d.blob == shared.into()).unwrap();
        assert!(matches!(d.problem, Problem::Truncated { .. }), "{d:?}");
        assert_eq!(d.affected.len(), 3);
        assert!(
            r.errors.iter().any(|e| e.contains("trailer")),
            "{:?}",
            r.errors
        );
        assert!(r.errors.iter().any(|e| e.contains("the index recorded")));
    }

    #[test]
    fn a_missing_pack_damages_all_its_blobs_and_an_orphan_is_a_warning() {
        let (_tmp, store, shared, _) = setup();
        let (_, path) = pack_of(&store, shared.into());
        let orphan = path.with_file_name("ab".repeat(32));
        std::fs::rename(&path, store.dir().join("packs/keep")).unwrap();
        let r = run(&store, false, Subset::All);
        let missing: Vec<_> = r
            .damaged
            .iter()
            .filter(|d| d.problem == Problem::PackMissing)
            .collect();
        assert_eq!(missing.len(), 2, "{r:?}");
        std::fs::rename(store.dir().join("packs/keep"), &path).unwrap();
        std::fs::copy(&path, &orphan).unwrap();
        let r = run(&store, true, Subset::All);
        assert!(!r.is_damaged(), "{r:?}");
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(r.warnings[0].contains("not in the index"));
    }

    #[test]
    fn damage_outside_the_blobs_is_caught_by_the_pack_hash() {
        let (_tmp, store, shared, _) = setup();
        let (_, path) = pack_of(&store, shared.into());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[5] ^= 1; // a reserved header byte nobody reads
        std::fs::write(&path, bytes).unwrap();
        assert!(!run(&store, false, Subset::All).is_damaged());
        let r = run(&store, true, Subset::All);
        assert!(r.damaged.is_empty(), "{r:?}");
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        assert!(r.errors[0].contains("hash to its name"));
    }

    #[test]
    fn subsets_are_deterministic_disjoint_and_cover_everything() {
        let names: Vec<String> = (0..2000u32)
            .map(|i| blake3::hash(&i.to_le_bytes()).to_hex().to_string())
            .collect();
        for m in [2u32, 3, 7] {
            for name in &names {
                let parts = (1..=m)
                    .filter(|&n| Subset::Part { n, m }.selects(name))
                    .count();
                assert_eq!(parts, 1);
            }
        }
        let quarter = |offset| Subset::Percent {
            percent: 25,
            offset,
        };
        for name in &names {
            let hits = [0, 25, 50, 75]
                .iter()
                .filter(|&&o| quarter(o).selects(name))
                .count();
            assert_eq!(hits, 1);
        }
        let n = names.iter().filter(|n| quarter(0).selects(n)).count();
        assert!((400..600).contains(&n), "{n}");
        assert_eq!(Subset::parse("2/5", None), Ok(Subset::Part { n: 2, m: 5 }));
        assert_eq!(
            Subset::parse("10%", Some(30)),
            Ok(Subset::Percent {
                percent: 10,
                offset: 30
            })
        );
        assert_eq!(Subset::parse("100%", None), Ok(Subset::All));
        assert_eq!(Subset::parse("1/1", None), Ok(Subset::All));
        for bad in ["0/3", "4/3", "1/0", "0%", "101%", "x", "1/2/3", "%"] {
            assert!(Subset::parse(bad, None).is_err(), "{bad}");
        }
        assert!(Subset::parse("1/2", Some(5)).is_err());
        assert!(Subset::parse("5%", Some(100)).is_err());
    }

    #[test]
    fn complementary_subsets_read_everything_once() {
        let (_tmp, store, _, _) = setup();
        let full = run(&store, true, Subset::All);
        let halves: Vec<CheckReport> = (1..=2)
            .map(|n| run(&store, true, Subset::Part { n, m: 2 }))
            .collect();
        assert_eq!(halves[0].packs_read + halves[1].packs_read, full.packs_read);
        assert_eq!(halves[0].blobs_read + halves[1].blobs_read, full.blobs_read);
    }
}
