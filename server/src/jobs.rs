//! The server's jobs: retention, garbage collection and verification, run
//! on schedules from the server config (`[jobs]`) by `homesync serve`, or by
//! hand with `homesync admin run-job KIND`.
//!
//! - **One job of a kind at a time, across processes**: a job first takes
//!   its kind's row in the index's `running_jobs` table, naming its process
//!   (pid and start time, as sessions do, see [`crate::gc`]); a row whose
//!   process is gone is dropped. A second start of a running kind is
//!   refused ([`JobError::Running`]). A GC job and a check job also exclude
//!   each other: a GC deleting a pack while a check reads the index would
//!   make the check report a sound pack missing.
//! - **Results** go to the `jobs` table (kind, start, duration, result,
//!   summary and the job's numbers as JSON): `homesync admin jobs` lists the
//!   latest of each kind, and the scheduler reads them, so a restarted
//!   server does not run everything again at once.
//! - **Scheduling** ([`due`]) is a pure function of the intervals, the last
//!   finished runs and the time; [`schedule`] runs due jobs one after the
//!   other on the blocking pool.

use crate::check::{self, CheckOptions, CheckProgress, Subset};
use crate::gc::{GcOptions, process_start};
use crate::index::{JobRow, RunningJob};
use crate::retention;
use crate::serve_config::ServeConfig;
use crate::store::Store;
use homesync_protocol::{Repository, Snapshot, SnapshotId, StoreError, Timestamp};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Default intervals: retention hourly, GC daily, a check weekly.
pub const DEFAULT_RETENTION_EVERY: Duration = Duration::from_secs(3600);
pub const DEFAULT_GC_EVERY: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_CHECK_EVERY: Duration = Duration::from_secs(7 * 24 * 3600);
/// A copy of the index beside the packs hourly (see [`crate::index_copy`]).
pub const DEFAULT_INDEX_COPY_EVERY: Duration = Duration::from_secs(3600);
/// A check job reads part k of this many (rotating), so every pack is read
/// once in this many check runs.
pub const DEFAULT_CHECK_SUBSET_PARTS: u32 = 4;
/// How often a long check job logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(60);
/// The scheduler looks at the jobs table at least this often (a hand run
/// moves the next scheduled one on).
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// A kind refused because another process runs it is tried again after this.
const RETRY_REFUSED: Duration = Duration::from_secs(60);
/// The `meta` key holding the part the last check job read.
const CHECK_PART_KEY: &str = "check_part";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum JobKind {
    Retention,
    Gc,
    Check,
    IndexCopy,
}

impl JobKind {
    /// In the order the scheduler runs them when several are due
    /// (retention first: GC then reclaims what it forgot).
    /// The index copy last: it then records what retention and GC did.
    pub const ALL: [JobKind; 4] = [
        JobKind::Retention,
        JobKind::Gc,
        JobKind::Check,
        JobKind::IndexCopy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Retention => "retention",
            JobKind::Gc => "gc",
            JobKind::Check => "check",
            JobKind::IndexCopy => "index-copy",
        }
    }

    pub fn parse(s: &str) -> Option<JobKind> {
        JobKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Kinds that may not run while this one does.
    fn excludes(self) -> &'static [&'static str] {
        match self {
            JobKind::Retention => &[],
            JobKind::Gc => &["check"],
            JobKind::Check => &["gc"],
            JobKind::IndexCopy => &[],
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[jobs]` in the server config: how often each job runs (`None`: never
/// on its own), and how many parts the check rotates through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobsConfig {
    pub retention_every: Option<Duration>,
    pub gc_every: Option<Duration>,
    pub check_every: Option<Duration>,
    pub check_subset_parts: u32,
    pub index_copy_every: Option<Duration>,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            retention_every: Some(DEFAULT_RETENTION_EVERY),
            gc_every: Some(DEFAULT_GC_EVERY),
            check_every: Some(DEFAULT_CHECK_EVERY),
            check_subset_parts: DEFAULT_CHECK_SUBSET_PARTS,
            index_copy_every: Some(DEFAULT_INDEX_COPY_EVERY),
        }
    }
}

impl JobsConfig {
    pub fn every(&self, kind: JobKind) -> Option<Duration> {
        match kind {
            JobKind::Retention => self.retention_every,
            JobKind::Gc => self.gc_every,
            JobKind::Check => self.check_every,
            JobKind::IndexCopy => self.index_copy_every,
        }
    }
}

/// Parses an interval: `off`, or numbers with units `s`, `m`, `h`, `d`,
/// `w` (seconds to weeks), e.g. `90s`, `1h`, `1h30m`, `7d`. Zero is refused
/// (say `off`).
pub fn parse_interval(text: &str) -> Result<Option<Duration>, String> {
    let t = text.trim();
    if t == "off" {
        return Ok(None);
    }
    let bad = |why: &str| format!("{text:?}: {why} (e.g. \"90s\", \"1h\", \"7d\", or \"off\")");
    if t.is_empty() {
        return Err(bad("is empty"));
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(bad(&format!("unknown unit {c:?}"))),
        };
        if num.is_empty() {
            return Err(bad(&format!("no number before {c:?}")));
        }
        let n: u64 = num.parse().map_err(|_| bad("number too large"))?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| bad("too long"))?;
        num.clear();
    }
    if !num.is_empty() {
        return Err(bad("a number needs a unit"));
    }
    if total == 0 {
        return Err(format!(
            "{text:?}: must be longer than 0 (to disable the job: \"off\")"
        ));
    }
    Ok(Some(Duration::from_secs(total)))
}

/// An interval as [`parse_interval`] reads it, largest units first.
pub fn format_interval(d: Option<Duration>) -> String {
    let Some(d) = d else { return "off".into() };
    let mut s = d.as_secs();
    let mut out = String::new();
    for (unit, len) in [
        ('w', 7 * 86_400),
        ('d', 86_400),
        ('h', 3600),
        ('m', 60),
        ('s', 1),
    ] {
        if s >= len {
            out.push_str(&format!("{}{unit}", s / len));
            s %= len;
        }
    }
    if out.is_empty() { "0s".into() } else { out }
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobResult {
    Ok,
    /// A check that found damage (it ran to its end).
    Damage,
    /// The job failed (the summary says why).
    Error,
}

impl JobResult {
    pub fn as_str(self) -> &'static str {
        match self {
            JobResult::Ok => "ok",
            JobResult::Damage => "damage",
            JobResult::Error => "error",
        }
    }
}

/// What one run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobReport {
    pub kind: JobKind,
    /// Unix milliseconds.
    pub started_ms: i64,
    pub duration: Duration,
    pub result: JobResult,
    pub summary: String,
    /// The job's numbers, e.g. `snapshots_removed`, `bytes_reclaimed`,
    /// `damage` (docs/operations.md lists them).
    pub numbers: Vec<(&'static str, u64)>,
}

impl JobReport {
    pub fn number(&self, name: &str) -> Option<u64> {
        self.numbers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }

    /// The numbers as a JSON object (names are plain identifiers).
    pub fn numbers_json(&self) -> String {
        let fields: Vec<String> = self
            .numbers
            .iter()
            .map(|(n, v)| format!("\"{n}\":{v}"))
            .collect();
        format!("{{{}}}", fields.join(","))
    }

    fn row(&self) -> JobRow {
        JobRow {
            kind: self.kind.as_str().into(),
            started_ms: self.started_ms,
            duration_ms: self.duration.as_millis() as u64,
            result: self.result.as_str().into(),
            summary: self.summary.clone(),
            numbers: self.numbers_json(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(
        "the {kind} job cannot start: a {} job is running (process {}, started {} s ago); try again when it is done",
        running.kind,
        running.pid,
        (unix_now() - running.started).max(0)
    )]
    Running { kind: JobKind, running: RunningJob },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Holds a job kind's lock; dropping it releases the lock.
pub struct JobLock<'a> {
    store: &'a Store,
    kind: JobKind,
}

impl Drop for JobLock<'_> {
    fn drop(&mut self) {
        if let Err(e) = self
            .store
            .index()
            .release_job(self.kind.as_str(), self.store.shared.me)
        {
            // A leftover row is ignored once this process is gone.
            tracing::warn!("releasing the {} job lock: {e}", self.kind);
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn alive(pid: u32, start: u64) -> bool {
    process_start(pid) == Some(start)
}

/// Takes the lock of job `kind` (see the module documentation), refusing
/// when a job of this kind, or one it excludes, runs in a live process.
pub fn lock(store: &Store, kind: JobKind) -> Result<JobLock<'_>, JobError> {
    let running = store.index().claim_job(
        kind.as_str(),
        kind.excludes(),
        store.shared.me,
        unix_now(),
        &alive,
    )?;
    match running {
        Some(running) => Err(JobError::Running { kind, running }),
        None => Ok(JobLock { store, kind }),
    }
}

/// A kind, its latest finished run, and the live process running it now.
pub type JobStatus = (JobKind, Option<JobRow>, Option<RunningJob>);

/// The latest finished run of each kind, and the live process running it
/// now, if any.
pub fn status(store: &Store) -> Result<Vec<JobStatus>, StoreError> {
    let index = store.index();
    let running = index.running_jobs()?;
    JobKind::ALL
        .into_iter()
        .map(|k| {
            let now = running
                .iter()
                .find(|r| r.kind == k.as_str() && alive(r.pid, r.pid_start))
                .cloned();
            Ok((k, index.last_job(k.as_str())?, now))
        })
        .collect()
}

/// Runs job `kind` now on `store` with the policies and settings of `cfg`;
/// `now` is the retention policy's clock. The result is recorded in the
/// index and returned, also when the job failed (`JobResult::Error`); an
/// error means it could not start (already running) or not be recorded.
pub fn run_job(
    store: &Store,
    kind: JobKind,
    cfg: &ServeConfig,
    now: Timestamp,
) -> Result<JobReport, JobError> {
    let _lock = lock(store, kind)?;
    let started_ms = unix_now_ms();
    let clock = Instant::now();
    tracing::info!("job {kind}: started");
    let outcome = match kind {
        JobKind::Retention => run_retention(store, cfg, now),
        JobKind::Gc => run_gc(store),
        JobKind::Check => run_check(store, cfg),
        JobKind::IndexCopy => run_index_copy(store),
    };
    let (result, summary, numbers) = match outcome {
        Ok(o) => o,
        Err(e) => (JobResult::Error, e.to_string(), Vec::new()),
    };
    let report = JobReport {
        kind,
        started_ms,
        duration: clock.elapsed(),
        result,
        summary,
        numbers,
    };
    store.index().record_job(&report.row())?;
    match report.result {
        JobResult::Ok => tracing::info!(
            "job {kind}: {} in {:.1} s: {}",
            report.result.as_str(),
            report.duration.as_secs_f64(),
            report.summary
        ),
        _ => tracing::warn!(
            "job {kind}: {} after {:.1} s: {}",
            report.result.as_str(),
            report.duration.as_secs_f64(),
            report.summary
        ),
    }
    Ok(report)
}

type Outcome = Result<(JobResult, String, Vec<(&'static str, u64)>), StoreError>;

fn run_retention(store: &Store, cfg: &ServeConfig, now: Timestamp) -> Outcome {
    let snapshots = store.snapshots()?;
    let total = snapshots.len() as u64;
    let r = &cfg.retention;
    if r.default.is_none() && r.machines.is_empty() {
        return Ok((
            JobResult::Ok,
            format!(
                "no [retention] policy in the server config: nothing removed ({total} snapshots kept)"
            ),
            vec![("snapshots_removed", 0), ("snapshots_kept", total)],
        ));
    }
    let mut by_machine: BTreeMap<String, Vec<(SnapshotId, Snapshot)>> = BTreeMap::new();
    for (id, s) in snapshots {
        by_machine
            .entry(s.machine.clone())
            .or_default()
            .push((id, s));
    }
    let (mut removed, mut without_policy) = (0u64, 0u64);
    for (machine, snaps) in &by_machine {
        let Some(policy) = r.policy_for(machine) else {
            without_policy += 1;
            continue;
        };
        let plan = retention::plan(snaps, policy, now)
            .map_err(|e| StoreError::Refused(format!("retention policy of {machine}: {e:?}")))?;
        for d in plan
            .iter()
            .filter(|d| d.action == retention::Action::Remove)
        {
            tracing::info!(
                "job retention: forgetting snapshot {} of {machine}:{} at {} ({})",
                d.id,
                String::from_utf8_lossy(&d.source),
                d.time.sec,
                d.reasons.join(", ")
            );
            match store.forget_snapshot(d.id) {
                Ok(()) => removed += 1,
                // Forgotten meanwhile (by hand): gone either way.
                Err(StoreError::NoSnapshot(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let machines = by_machine.len() as u64;
    let mut summary = format!("removed {removed} of {total} snapshots ({machines} machines)");
    if without_policy > 0 {
        summary.push_str(&format!(
            "; {without_policy} machines have no policy and keep everything"
        ));
    }
    Ok((
        JobResult::Ok,
        summary,
        vec![
            ("snapshots_removed", removed),
            ("snapshots_kept", total - removed),
            ("machines", machines),
        ],
    ))
}

fn run_gc(store: &Store) -> Outcome {
    let r = store.gc(&GcOptions::default())?;
    Ok((
        JobResult::Ok,
        format!(
            "reclaimed {} bytes: {} blobs deleted, {} left for a later run (older sessions still open), {} packs deleted, {} rewritten",
            r.bytes_reclaimed, r.swept.blobs, r.swept.deferred, r.packs_deleted, r.packs_rewritten
        ),
        vec![
            ("bytes_reclaimed", r.bytes_reclaimed),
            ("blobs_deleted", r.swept.blobs),
            ("deferred", r.swept.deferred),
            ("packs_deleted", r.packs_deleted),
            ("packs_rewritten", r.packs_rewritten),
            ("orphans_deleted", r.orphans_deleted),
            ("snapshots", r.snapshots),
        ],
    ))
}

fn run_index_copy(store: &Store) -> Outcome {
    let saved = crate::index_copy::save(store)?;
    Ok((
        JobResult::Ok,
        format!(
            "index copy {} ({} bytes) stored in {}, {} older copies deleted",
            saved.name, saved.bytes, saved.place, saved.pruned
        ),
        vec![
            ("bytes", saved.bytes),
            ("copies_deleted", saved.pruned as u64),
        ],
    ))
}

/// The part (1-based) of `parts` the next check job reads, after `last`.
pub fn next_check_part(last: Option<i64>, parts: u32) -> u32 {
    let parts = parts.max(1);
    match last {
        Some(l) if l >= 1 => (l as u64 % u64::from(parts)) as u32 + 1,
        _ => 1,
    }
}

fn run_check(store: &Store, cfg: &ServeConfig) -> Outcome {
    let parts = cfg.jobs.check_subset_parts.max(1);
    let part = next_check_part(store.index().meta(CHECK_PART_KEY)?, parts);
    let subset = if parts == 1 {
        Subset::All
    } else {
        Subset::Part { n: part, m: parts }
    };
    tracing::info!("job check: reading data of packs {subset}");
    let opts = CheckOptions {
        read_data: true,
        subset,
    };
    let progress = CheckProgress::default();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let report = std::thread::scope(|s| {
        let progress = &progress;
        s.spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stop_rx.recv_timeout(PROGRESS_EVERY)
            {
                use std::sync::atomic::Ordering::Relaxed;
                tracing::info!(
                    "job check: {}, {}/{} items, {} of {} bytes",
                    progress.stage().describe(),
                    progress.items_done.load(Relaxed),
                    progress.items_total.load(Relaxed),
                    progress.bytes_done.load(Relaxed),
                    progress.bytes_total.load(Relaxed)
                );
            }
        });
        let r = check::check(store, &opts, progress);
        drop(stop_tx);
        r
    })?;
    store.index().set_meta(CHECK_PART_KEY, i64::from(part))?;
    for w in &report.warnings {
        tracing::info!("job check: warning: {w}");
    }
    for e in &report.errors {
        tracing::error!("job check: {e}");
    }
    for d in &report.damaged {
        tracing::error!(
            "job check: damaged {} {}{}: {} (affects {} files or snapshots)",
            check::kind_name(d.kind),
            d.blob,
            d.pack
                .as_ref()
                .map(|p| format!(" in pack {p}"))
                .unwrap_or_default(),
            d.problem.detail(),
            d.affected.len()
        );
    }
    let damage = (report.damaged.len() + report.errors.len()) as u64;
    let summary = format!(
        "read part {part} of {parts} ({} packs, {} bytes); {}",
        report.packs_read,
        report.bytes_read,
        if damage == 0 {
            "no damage".to_string()
        } else {
            format!(
                "{damage} damaged or missing (see the log, or run `homesync check --read-data`)"
            )
        }
    );
    Ok((
        if damage == 0 {
            JobResult::Ok
        } else {
            JobResult::Damage
        },
        summary,
        vec![
            ("damage", damage),
            ("part", u64::from(part)),
            ("parts", u64::from(parts)),
            ("packs_read", report.packs_read),
            ("bytes_read", report.bytes_read),
            ("snapshots_checked", report.snapshots_checked),
            ("warnings", report.warnings.len() as u64),
        ],
    ))
}

/// The kinds due at `now_ms` (unix milliseconds): enabled, and either
/// never run or last finished (`last_finished`, unix milliseconds) at least
/// their interval ago. In [`JobKind::ALL`] order.
pub fn due(
    cfg: &JobsConfig,
    last_finished: &dyn Fn(JobKind) -> Option<i64>,
    now_ms: i64,
) -> Vec<JobKind> {
    JobKind::ALL
        .into_iter()
        .filter(|&k| wait_for(cfg, k, last_finished(k), now_ms) == Some(Duration::ZERO))
        .collect()
}

/// How long until `kind` is due (zero: now); `None` when disabled.
fn wait_for(
    cfg: &JobsConfig,
    kind: JobKind,
    last_finished: Option<i64>,
    now_ms: i64,
) -> Option<Duration> {
    let every = cfg.every(kind)?;
    let Some(last) = last_finished else {
        return Some(Duration::ZERO);
    };
    let next = last.saturating_add(every.as_millis() as i64);
    Some(Duration::from_millis(
        next.saturating_sub(now_ms).max(0) as u64
    ))
}

/// How long the scheduler may sleep before some kind is due.
pub fn next_wake(
    cfg: &JobsConfig,
    last_finished: &dyn Fn(JobKind) -> Option<i64>,
    now_ms: i64,
) -> Option<Duration> {
    JobKind::ALL
        .into_iter()
        .filter_map(|k| wait_for(cfg, k, last_finished(k), now_ms))
        .min()
}

fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// When each kind last finished (unix ms), from the jobs table.
fn last_finished(store: &Store) -> Result<BTreeMap<JobKind, i64>, StoreError> {
    let index = store.index();
    let mut out = BTreeMap::new();
    for k in JobKind::ALL {
        if let Some(row) = index.last_job(k.as_str())? {
            out.insert(k, row.started_ms + row.duration_ms as i64);
        }
    }
    Ok(out)
}

/// Runs the jobs of `cfg.jobs` when they are due, one at a time, on the
/// blocking pool, until `shutdown` resolves (a job then running is
/// abandoned: the caller shuts the runtime down without waiting for it;
/// every job is crash-safe). `on_done` sees each finished job.
pub async fn schedule(
    store: Arc<Store>,
    cfg: Arc<ServeConfig>,
    on_done: impl Fn(&JobReport) + Send + Sync + 'static,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let on_done = Arc::new(on_done);
    let mut refused: BTreeMap<JobKind, Instant> = BTreeMap::new();
    // A kind never run counts as run when the server started: a new or
    // upgraded server does not begin with every job at once (a check reading
    // a quarter of a large store, say), and a test server with the default
    // intervals runs none.
    let boot = unix_now_ms();
    let work = async {
        loop {
            let s = store.clone();
            let last = match tokio::task::spawn_blocking(move || last_finished(&s)).await {
                Ok(Ok(last)) => last,
                Ok(Err(e)) => {
                    tracing::error!("jobs: reading the last runs: {e}");
                    tokio::time::sleep(MAX_SLEEP).await;
                    continue;
                }
                Err(e) => {
                    tracing::error!("jobs: {e}");
                    return;
                }
            };
            let lookup = |k: JobKind| Some(last.get(&k).copied().unwrap_or(boot));
            refused.retain(|_, until| *until > Instant::now());
            for kind in due(&cfg.jobs, &lookup, unix_now_ms()) {
                if refused.contains_key(&kind) {
                    continue;
                }
                let (s, c, done) = (store.clone(), cfg.clone(), on_done.clone());
                let run = tokio::task::spawn_blocking(move || {
                    let now = Timestamp {
                        sec: unix_now(),
                        nsec: 0,
                    };
                    run_job(&s, kind, &c, now).inspect(|r| done(r))
                });
                match run.await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e @ JobError::Running { .. })) => {
                        tracing::info!("jobs: {e}; trying again later");
                        refused.insert(kind, Instant::now() + RETRY_REFUSED);
                    }
                    Ok(Err(e)) => {
                        tracing::error!("jobs: {kind}: {e}");
                        refused.insert(kind, Instant::now() + RETRY_REFUSED);
                    }
                    Err(e) => {
                        tracing::error!("jobs: {kind} panicked: {e}");
                        refused.insert(kind, Instant::now() + RETRY_REFUSED);
                    }
                }
            }
            let s = store.clone();
            let last = tokio::task::spawn_blocking(move || last_finished(&s))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            let lookup = |k: JobKind| Some(last.get(&k).copied().unwrap_or(boot));
            let sleep = next_wake(&cfg.jobs, &lookup, unix_now_ms())
                .unwrap_or(MAX_SLEEP)
                .clamp(Duration::from_millis(200), MAX_SLEEP);
            tokio::time::sleep(sleep).await;
        }
    };
    if JobKind::ALL.iter().all(|&k| cfg.jobs.every(k).is_none()) {
        tracing::info!("jobs: every job is off in the server config");
        return;
    }
    tokio::select! {
        _ = &mut shutdown => {}
        _ = work => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use homesync_protocol::ChunkerParams;

    #[test]
    fn intervals_parse_and_print() {
        let s = |n: u64| Some(Duration::from_secs(n));
        for (text, want) in [
            ("1s", s(1)),
            ("90s", s(90)),
            ("5m", s(300)),
            ("1h", s(3600)),
            ("1h30m", s(5400)),
            ("24h", s(86_400)),
            ("7d", s(7 * 86_400)),
            ("2w", s(14 * 86_400)),
            ("off", None),
        ] {
            assert_eq!(parse_interval(text), Ok(want), "{text}");
        }
        for bad in [
            "",
            "0s",
            "1",
            "h",
            "1x",
            "1.5h",
            "-1h",
            "99999999999999999999s",
        ] {
            assert!(parse_interval(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_interval(s(5400)), "1h30m");
        assert_eq!(format_interval(s(7 * 86_400)), "1w");
        assert_eq!(format_interval(None), "off");
    }

    #[test]
    fn scheduling_decisions() {
        let cfg = JobsConfig::default();
        let h = 3_600_000i64;
        let now = 1000 * h;
        // Never run: everything is due at once.
        assert_eq!(due(&cfg, &|_| None, now), JobKind::ALL.to_vec());
        assert_eq!(next_wake(&cfg, &|_| None, now), Some(Duration::ZERO));
        // Retention ran 30 minutes ago, GC 23 h ago, check 8 days ago, the
        // index copy 15 minutes ago.
        let last = |k: JobKind| {
            Some(match k {
                JobKind::Retention => now - h / 2,
                JobKind::Gc => now - 23 * h,
                JobKind::Check => now - 8 * 24 * h,
                JobKind::IndexCopy => now - h / 4,
            })
        };
        assert_eq!(due(&cfg, &last, now), vec![JobKind::Check]);
        // An hour after the retention run it is due; GC an hour later.
        assert_eq!(
            due(&cfg, &last, now + h / 2),
            vec![JobKind::Retention, JobKind::Check]
        );
        assert_eq!(due(&cfg, &last, now + h).len(), 4);
        // Check done now: the next wake is the retention's, 30 minutes on.
        let last2 = |k: JobKind| {
            if k == JobKind::Check {
                Some(now)
            } else {
                last(k)
            }
        };
        assert_eq!(
            next_wake(&cfg, &last2, now),
            Some(Duration::from_secs(1800))
        );
        // Disabled kinds are never due.
        let off = JobsConfig {
            retention_every: None,
            gc_every: None,
            check_every: None,
            check_subset_parts: 4,
            index_copy_every: None,
        };
        assert!(due(&off, &|_| None, now).is_empty());
        assert_eq!(next_wake(&off, &|_| None, now), None);
        // A clock that went back: not due, and the wait is bounded by the interval.
        let future = |_| Some(now + 10 * h);
        assert!(due(&cfg, &future, now).is_empty());
    }

    #[test]
    fn the_check_rotates_through_its_parts() {
        assert_eq!(next_check_part(None, 4), 1);
        assert_eq!(next_check_part(Some(1), 4), 2);
        assert_eq!(next_check_part(Some(4), 4), 1);
        // Fewer parts than before: still in range.
        assert_eq!(next_check_part(Some(7), 4), 4);
        assert_eq!(next_check_part(Some(3), 1), 1);
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::init(&dir.path().join("s"), ChunkerParams::default(), 3).unwrap();
        (dir, s)
    }

    #[test]
    fn one_job_of_a_kind_at_a_time_and_gc_excludes_check() {
        let (_d, s) = store();
        let held = lock(&s, JobKind::Gc).unwrap();
        let e = lock(&s, JobKind::Gc).err().unwrap();
        assert!(e.to_string().contains("a gc job is running"), "{e}");
        let e = lock(&s, JobKind::Check).err().unwrap();
        assert!(
            matches!(&e, JobError::Running { running, .. } if running.kind == "gc"),
            "{e}"
        );
        assert!(e.to_string().contains("the check job cannot start"), "{e}");
        // Retention is independent.
        let r = lock(&s, JobKind::Retention).unwrap();
        let cfg = ServeConfig::with_store(s.dir().to_path_buf());
        let now = Timestamp { sec: 0, nsec: 0 };
        assert!(matches!(
            run_job(&s, JobKind::Gc, &cfg, now),
            Err(JobError::Running { .. })
        ));
        drop((held, r));
        // Released: runs, and is recorded.
        let report = run_job(&s, JobKind::Gc, &cfg, now).unwrap();
        assert_eq!(report.result, JobResult::Ok);
        let st = status(&s).unwrap();
        let gc = st.iter().find(|(k, _, _)| *k == JobKind::Gc).unwrap();
        assert_eq!(gc.1.as_ref().unwrap().numbers, report.numbers_json());
        assert!(gc.2.is_none());
        assert!(report.numbers_json().contains("\"bytes_reclaimed\":0"));
    }

    #[test]
    fn a_lock_of_a_dead_process_is_ignored() {
        let (_d, s) = store();
        let (pid, start) = s.shared.me;
        // A row left by a process that died (its start time never matches).
        assert!(
            s.index()
                .claim_job("check", &[], (pid, start + 1), 5, &alive)
                .unwrap()
                .is_none()
        );
        assert_eq!(s.index().running_jobs().unwrap().len(), 1);
        assert!(status(&s).unwrap().iter().all(|(_, _, r)| r.is_none()));
        let held = lock(&s, JobKind::Check).unwrap();
        let rows = s.index().running_jobs().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].pid, rows[0].pid_start), (pid, start));
        drop(held);
        assert!(s.index().running_jobs().unwrap().is_empty());
    }

    #[test]
    fn retention_without_a_policy_does_nothing_and_says_so() {
        let (_d, s) = store();
        let cfg = ServeConfig::with_store(s.dir().to_path_buf());
        let r = run_job(&s, JobKind::Retention, &cfg, Timestamp { sec: 0, nsec: 0 }).unwrap();
        assert_eq!(r.result, JobResult::Ok);
        assert!(r.summary.contains("no [retention] policy"), "{}", r.summary);
        assert_eq!(r.number("snapshots_removed"), Some(0));
    }
}
