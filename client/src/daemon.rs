//! The background daemon: inotify watches keep a dirty set per source; a
//! quiet period after the last change (or a maximum delay after the first)
//! starts an incremental snapshot that lists only the changed directories
//! and reuses every other tree of the previous snapshot.
//!
//! Threads, each blocked while there is nothing to do (an idle daemon
//! makes no wake-ups but the inotify read):
//! - the main loop: polls the inotify descriptor and a wake-up socket, with
//!   a timeout only when something is due (a pending change, a retry, the
//!   end of a pause, the daily full scan);
//! - the worker: connects to the store, takes one snapshot per job, keeps
//!   the file-state cache open between jobs;
//! - the control thread: answers `homesync status`/`pause`/`resume`.
//!
//! Soundness: a snapshot may reuse a directory's tree only if nothing in it
//! changed since the previous snapshot's scan began. Watches exist before
//! any scan starts, and a job takes the dirty set before it scans, so every
//! change after that lands in the next set. What inotify cannot vouch for
//! is scanned deeply: everything at start and after an overflow, unwatched
//! subtrees every time, everything again daily.

use crate::backup::{self, BackupOptions, Incremental};
use crate::config::DaemonSettings;
use crate::control::{self, LastSnapshot, LiveProgress, Request, Response, Status, unix_now};
use crate::dirty::{Dirty, Visit, split};
use crate::exclude::Excludes;
use crate::filecache::FileCache;
use crate::progress::Progress;
use crate::watch::Watcher;
use crate::{ClientError, EntryError};
use homesync_protocol::{Repository, SnapshotId};
use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A store connection for one snapshot.
pub struct Connected {
    pub repo: Box<dyn Repository>,
    /// The machine snapshots are recorded under (a server decides it).
    pub machine: String,
    /// Held while the snapshot runs (an embedded store's GC session).
    pub guard: Option<Box<dyn std::any::Any>>,
}

pub type Connect = Box<dyn Fn() -> Result<Connected, String> + Send>;

pub struct DaemonOptions {
    pub sources: Vec<PathBuf>,
    pub excludes: Vec<String>,
    pub default_excludes: bool,
    pub one_file_system: bool,
    /// Paths never backed up (an embedded store, the state directory).
    pub skip: Vec<PathBuf>,
    pub state_dir: PathBuf,
    pub settings: DaemonSettings,
    pub connect: Connect,
}

/// The first retry after a failed snapshot; it doubles up to the maximum.
const FIRST_RETRY: Duration = Duration::from_secs(15);
/// How often a held snapshot (battery, metered) asks again, at most.
const HOLD_RECHECK: Duration = Duration::from_secs(60);

struct Job {
    src: usize,
    root: PathBuf,
    /// The previous snapshot of this source and the store generation it
    /// was taken in.
    base: Option<(SnapshotId, u64)>,
    dirty: Dirty,
}

struct Done {
    src: usize,
    dirty: Dirty,
    result: Result<Outcome, String>,
}

struct Outcome {
    id: SnapshotId,
    generation: u64,
    summary: LastSnapshot,
    listed: backup::Listed,
    errors: Vec<EntryError>,
}

enum Msg {
    Done(Box<Done>),
    Pause(Option<Duration>),
    Resume,
}

/// Sends messages to the main loop and wakes it.
#[derive(Clone)]
struct Mailbox {
    tx: mpsc::Sender<Msg>,
    wake: Arc<UnixStream>,
}

impl Mailbox {
    fn send(&self, m: Msg) {
        if self.tx.send(m).is_ok() {
            // A full wake-up socket already wakes the loop: nothing lost.
            let _ = std::io::Write::write(&mut &*self.wake, b"!");
        }
    }
}

/// Per-source state of the main loop.
struct Source {
    root: PathBuf,
    /// When the first change now pending was seen, and the last.
    first_change: Option<Instant>,
    first_change_unix: Option<u64>,
    last_change: Instant,
    base: Option<(SnapshotId, u64)>,
    /// Directories holding files with several names (see `ScanDir::has_links`).
    linked: BTreeSet<Vec<u8>>,
}

/// What the control thread reads.
struct Shared {
    status: Mutex<Status>,
    progress: Mutex<Option<Arc<Progress>>>,
    /// Uids that may pause and resume, besides root and the daemon's own.
    controllers: Vec<u32>,
}

/// Lowers the daemon's CPU and I/O priority (nice 19, idle I/O class);
/// threads started later inherit both.
pub fn lower_priority() {
    if let Err(e) = rustix::process::setpriority_process(None, 19) {
        tracing::debug!("setpriority: {e}");
    }
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_IDLE: libc::c_long = 3;
    // SAFETY: ioprio_set takes three integers and touches no memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0 as libc::c_long,
            IOPRIO_CLASS_IDLE << 13,
        )
    };
    if r != 0 {
        tracing::debug!("ioprio_set: {}", std::io::Error::last_os_error());
    }
}

/// Runs the daemon until killed. Fails only if it cannot start (no state
/// directory, no inotify, a source that is not a directory).
pub fn run(opts: DaemonOptions) -> Result<(), ClientError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ClientError::Io {
            path: path.clone(),
            source,
        }
    };
    std::fs::create_dir_all(&opts.state_dir).map_err(io(&opts.state_dir))?;
    let sources: Vec<PathBuf> = opts
        .sources
        .iter()
        .map(|p| std::fs::canonicalize(p).map_err(io(p)))
        .collect::<Result<_, _>>()?;
    let mut skip: Vec<PathBuf> = opts
        .skip
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect();
    skip.extend(std::fs::canonicalize(&opts.state_dir).ok());

    let mut watcher = Watcher::new().map_err(|e| {
        ClientError::Usage(format!(
            "cannot start inotify: {e} (fs.inotify.max_user_instances reached?)"
        ))
    })?;
    let started = Instant::now();
    for root in &sources {
        let excludes = Excludes::new(root, &opts.excludes, opts.default_excludes)?;
        watcher
            .add_source(root, excludes, skip.clone(), opts.one_file_system)
            .map_err(io(root))?;
    }
    tracing::info!(
        "watching {} directories under {} in {:?}",
        watcher.watches(),
        sources
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        started.elapsed()
    );

    let saved = control::saved_status(&opts.state_dir).unwrap_or_default();
    let controllers = controllers(&sources);
    let shared = Arc::new(Shared {
        status: Mutex::new(Status {
            running: true,
            pid: std::process::id(),
            activity: "starting".into(),
            last_snapshot: saved.last_snapshot.clone(),
            last_error: saved.last_error.clone(),
            snapshots: saved.snapshots,
            full_scans: saved.full_scans,
            ..Default::default()
        }),
        progress: Mutex::new(None),
        controllers,
    });

    let (wake_tx, mut wake_rx) = UnixStream::pair().map_err(io(&opts.state_dir))?;
    wake_tx.set_nonblocking(true).map_err(io(&opts.state_dir))?;
    wake_rx.set_nonblocking(true).map_err(io(&opts.state_dir))?;
    let (tx, rx) = mpsc::channel();
    let mailbox = Mailbox {
        tx,
        wake: Arc::new(wake_tx),
    };

    let socket = opts.state_dir.join(control::SOCKET);
    let _ = std::fs::remove_file(&socket); // left by a killed daemon
    let listener = UnixListener::bind(&socket).map_err(io(&socket))?;
    // Status is for every user of the machine; pausing is checked per peer.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))
        .map_err(io(&socket))?;
    {
        let shared = shared.clone();
        let mailbox = mailbox.clone();
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || serve_control(listener, &shared, &mailbox))
            .map_err(io(&socket))?;
    }

    let (job_tx, job_rx) = mpsc::channel::<Job>();
    {
        let shared = shared.clone();
        let mailbox = mailbox.clone();
        let worker = Worker {
            connect: opts.connect,
            excludes: opts.excludes.clone(),
            default_excludes: opts.default_excludes,
            one_file_system: opts.one_file_system,
            skip,
            cache_dir: opts.state_dir.join("cache"),
            cache: None,
        };
        std::thread::Builder::new()
            .name("snapshot".into())
            .spawn(move || worker.run(job_rx, &shared, &mailbox))
            .map_err(io(&opts.state_dir))?;
    }

    let s = &opts.settings;
    let now = Instant::now();
    let mut srcs: Vec<Source> = sources
        .iter()
        .map(|root| Source {
            root: root.clone(),
            first_change: Some(now),
            first_change_unix: Some(unix_now()),
            // Due at once: nothing is vouched for after a restart.
            last_change: now.checked_sub(s.quiet_period).unwrap_or(now),
            base: None,
            linked: BTreeSet::new(),
        })
        .collect();
    let mut dirty: Vec<Dirty> = sources.iter().map(|_| Dirty::everything()).collect();
    tracing::info!(
        "first snapshot scans everything: changes made while no daemon watched are unknown"
    );
    // A pause outlives a restart.
    let mut paused: Option<Option<Instant>> = match (saved.paused, saved.paused_until) {
        (true, None) => Some(None),
        (true, Some(t)) if t > unix_now() => Some(Some(now + Duration::from_secs(t - unix_now()))),
        _ => None,
    };
    let mut running = false;
    let mut retry: Option<(Instant, Duration)> = None;
    let mut hold: Option<(Instant, String)> = None;
    let mut next_full = now + s.full_scan_every;
    let mut persist = true;

    loop {
        let now = Instant::now();
        if now >= next_full {
            tracing::info!("daily safety net: the next snapshots scan everything");
            watcher.retry_unwatched();
            for d in dirty.iter_mut() {
                d.deep(b"");
            }
            for src in srcs.iter_mut() {
                src.first_change.get_or_insert(now);
                src.first_change_unix.get_or_insert(unix_now());
            }
            next_full = now + s.full_scan_every;
        }
        if let Some(Some(until)) = paused
            && now >= until
        {
            tracing::info!("pause over: resuming");
            paused = None;
            persist = true;
        }
        if retry.is_some_and(|(at, _)| now < at) || paused.is_some() || running {
            hold = None;
        }
        // Start a snapshot if one is due.
        let due = |i: usize, src: &Source| {
            src.first_change.map(|first| {
                let at = (src.last_change + s.quiet_period).min(first + s.max_delay);
                (at, i)
            })
        };
        let next_due = srcs
            .iter()
            .enumerate()
            .filter(|(i, _)| !dirty[*i].is_empty())
            .filter_map(|(i, src)| due(i, src))
            .min();
        if let Some((at, i)) = next_due
            && !running
            && paused.is_none()
            && now >= at
            && retry.is_none_or(|(r, _)| now >= r)
            && hold.as_ref().is_none_or(|(h, _)| now >= *h)
        {
            match crate::power::hold(s) {
                Some(why) => {
                    if hold.is_none() {
                        tracing::info!("holding the snapshot: {why}");
                    }
                    hold = Some((now + HOLD_RECHECK.min(s.max_delay), why));
                }
                None => {
                    hold = None;
                    watcher.mark_unwatched(&mut dirty);
                    let d = &mut dirty[i];
                    // Every name of a multiply linked file is listed together.
                    let src = &mut srcs[i];
                    if !d.full && src.linked.iter().any(|l| d.visit(l) != Visit::Reuse) {
                        for l in &src.linked {
                            d.list(l);
                        }
                    }
                    let taken = std::mem::take(d);
                    tracing::info!(
                        "snapshot of {}: {}",
                        src.root.display(),
                        if taken.full || src.base.is_none() {
                            "full scan".to_string()
                        } else {
                            format!("{} changed directories", taken.len())
                        }
                    );
                    src.first_change = None;
                    src.first_change_unix = None;
                    running = true;
                    let job = Job {
                        src: i,
                        root: src.root.clone(),
                        base: src.base,
                        dirty: taken,
                    };
                    if job_tx.send(job).is_err() {
                        return Err(ClientError::Usage("the snapshot thread died".into()));
                    }
                }
            }
        }

        // Publish the status.
        {
            let mut st = shared.status.lock().unwrap_or_else(|e| e.into_inner());
            st.activity = if running {
                "backing up"
            } else if paused.is_some() {
                "paused"
            } else if hold.is_some() {
                "holding"
            } else if retry.is_some() {
                "retrying"
            } else if dirty.iter().any(|d| !d.is_empty()) {
                "pending"
            } else {
                "idle"
            }
            .into();
            st.detail = hold.as_ref().map(|(_, why)| why.clone()).or_else(|| {
                retry.map(|(at, _)| {
                    format!(
                        "the last attempt failed; next in {}s",
                        at.saturating_duration_since(now).as_secs()
                    )
                })
            });
            st.paused = paused.is_some();
            st.paused_until = paused.flatten().map(|t| to_unix(now, t));
            st.pending_dirs = dirty.iter().map(|d| d.len() as u64).sum();
            st.pending_since = srcs.iter().filter_map(|s| s.first_change_unix).min();
            st.next_snapshot = next_due
                .filter(|_| paused.is_none() && !running)
                .map(|(at, _)| to_unix(now, at.max(retry.map_or(at, |r| r.0))));
            st.watches = watcher.watches() as u64;
            st.unwatched_dirs = watcher
                .sources
                .iter()
                .map(|s| s.unwatched.len() as u64)
                .sum();
            st.events = watcher.events;
            st.overflows = watcher.overflows;
            if persist {
                persist = false;
                if let Err(e) = control::save_status(&opts.state_dir, &st) {
                    tracing::warn!(
                        "cannot write {}: {e}",
                        opts.state_dir.join(control::STATUS_FILE).display()
                    );
                }
            }
        }

        // Sleep until an event, a message, or the next deadline.
        let mut deadline = next_full;
        if let Some(Some(until)) = paused {
            deadline = deadline.min(until);
        }
        if !running
            && paused.is_none()
            && let Some((mut at, _)) = next_due
        {
            if let Some((r, _)) = retry {
                at = at.max(r);
            }
            if let Some((h, _)) = &hold {
                at = at.max(*h);
            }
            deadline = deadline.min(at);
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        wait_readable(&watcher, &wake_rx, wait);

        let before: Vec<bool> = dirty.iter().map(Dirty::is_empty).collect();
        let mut touched = vec![false; srcs.len()];
        match watcher.read(&mut dirty, &mut touched) {
            Ok(_) => {}
            Err(e) => tracing::error!("reading inotify events: {e}"),
        }
        let now = Instant::now();
        for (i, src) in srcs.iter_mut().enumerate() {
            if touched[i] {
                src.last_change = now;
                if before[i] && !dirty[i].is_empty() {
                    src.first_change = Some(now);
                    src.first_change_unix = Some(unix_now());
                }
            }
        }
        let mut buf = [0u8; 64];
        while matches!(wake_rx.read(&mut buf), Ok(n) if n > 0) {}
        while let Ok(msg) = rx.try_recv() {
            match msg {
                Msg::Pause(d) => {
                    paused = Some(d.map(|d| Instant::now() + d));
                    tracing::info!(
                        "paused{}",
                        d.map_or(" until resumed".into(), |d| format!(" for {d:?}"))
                    );
                    persist = true;
                }
                Msg::Resume => {
                    if paused.take().is_some() {
                        tracing::info!("resumed");
                    }
                    retry = None;
                    persist = true;
                }
                Msg::Done(done) => {
                    running = false;
                    persist = true;
                    let Done {
                        src: i,
                        dirty: taken,
                        result,
                    } = *done;
                    let src = &mut srcs[i];
                    match result {
                        Ok(o) => {
                            retry = None;
                            src.base = Some((o.id, o.generation));
                            if o.listed.complete {
                                src.linked.clear();
                            }
                            for (rel, linked, whole) in &o.listed.dirs {
                                if *linked {
                                    src.linked.insert(rel.clone());
                                } else if *whole {
                                    src.linked.remove(rel);
                                }
                            }
                            // What could not be read is tried again next time.
                            for e in &o.errors {
                                if let Ok(rel) = e.path.strip_prefix(&src.root) {
                                    let rel = rel.as_os_str().as_bytes();
                                    let (dir, name) = split(rel);
                                    dirty[i].deep(rel);
                                    dirty[i].changed(dir, name);
                                }
                            }
                            if !dirty[i].is_empty() && src.first_change.is_none() {
                                src.first_change = Some(Instant::now());
                                src.first_change_unix = Some(unix_now());
                            }
                            tracing::info!(
                                "snapshot {} of {}: listed {} directories, reused {}, read {} files ({} bytes), sent {} bytes in {} ms{}",
                                o.summary.id,
                                src.root.display(),
                                o.summary.dirs_listed,
                                o.summary.dirs_reused,
                                o.summary.files_read,
                                o.summary.bytes_read,
                                o.summary.bytes_sent,
                                o.summary.duration_ms,
                                if o.errors.is_empty() {
                                    String::new()
                                } else {
                                    format!("; {} entries could not be read", o.errors.len())
                                }
                            );
                            let mut st = shared.status.lock().unwrap_or_else(|e| e.into_inner());
                            st.snapshots += 1;
                            if !o.summary.incremental {
                                st.full_scans += 1;
                            }
                            st.last_snapshot = Some(o.summary);
                        }
                        Err(why) => {
                            let delay = retry
                                .map_or(FIRST_RETRY, |(_, d)| d * 2)
                                .min(s.max_retry_delay);
                            tracing::warn!(
                                "snapshot of {} failed: {why}; changes are kept, next attempt in {delay:?}",
                                src.root.display()
                            );
                            retry = Some((Instant::now() + delay, delay));
                            dirty[i].merge(taken);
                            src.first_change.get_or_insert(Instant::now());
                            src.first_change_unix.get_or_insert(unix_now());
                            shared
                                .status
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .last_error = Some((unix_now(), why));
                        }
                    }
                }
            }
        }
    }
}

fn to_unix(now: Instant, at: Instant) -> u64 {
    unix_now() + at.saturating_duration_since(now).as_secs()
}

/// Blocks until inotify or the wake-up socket is readable, or `wait` ends.
fn wait_readable(watcher: &Watcher, wake: &UnixStream, wait: Duration) {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut fds = [
        PollFd::from_borrowed_fd(watcher.fd(), PollFlags::IN),
        PollFd::new(wake, PollFlags::IN),
    ];
    // Rounded up, so a deadline is never missed by a spin of early wake-ups.
    let ms = wait.as_millis().min(i64::MAX as u128) as i64 + 1;
    let timeout = Timespec {
        tv_sec: ms / 1000,
        tv_nsec: (ms % 1000) * 1_000_000,
    };
    if let Err(e) = poll(&mut fds, Some(&timeout))
        && e != rustix::io::Errno::INTR
    {
        tracing::error!("poll: {e}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Root may pause, and so may the owners of the sources and of their
/// direct subdirectories (`/home/ann` when `/home` is backed up).
fn controllers(sources: &[PathBuf]) -> Vec<u32> {
    let mut uids = BTreeSet::new();
    for root in sources {
        if let Ok(m) = std::fs::metadata(root) {
            uids.insert(m.uid());
        }
        if let Ok(rd) = std::fs::read_dir(root) {
            for e in rd.flatten() {
                if let Ok(m) = e.metadata()
                    && m.is_dir()
                {
                    uids.insert(m.uid());
                }
            }
        }
    }
    uids.into_iter().collect()
}

fn serve_control(listener: UnixListener, shared: &Shared, mailbox: &Mailbox) {
    for conn in listener.incoming() {
        let Ok(s) = conn else { continue };
        // A peer that never finishes its request holds this thread at most
        // this long.
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
        let response = match control::read_request(&s) {
            Err(e) => Response {
                ok: false,
                error: Some(e),
                status: None,
            },
            Ok(req) => {
                let allowed = match req {
                    Request::Status => true,
                    _ => rustix::net::sockopt::socket_peercred(&s).is_ok_and(|c| {
                        let uid = c.uid.as_raw();
                        uid == 0
                            || uid == rustix::process::geteuid().as_raw()
                            || shared.controllers.contains(&uid)
                    }),
                };
                if !allowed {
                    Response {
                        ok: false,
                        error: Some(
                            "only root and the owners of the backed-up homes may pause or resume"
                                .into(),
                        ),
                        status: None,
                    }
                } else {
                    match req {
                        Request::Status => {}
                        Request::Pause { seconds } => {
                            mailbox.send(Msg::Pause(seconds.map(Duration::from_secs)));
                        }
                        Request::Resume => mailbox.send(Msg::Resume),
                    }
                    if !matches!(req, Request::Status) {
                        // Let the loop take it in, so the answer shows it.
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    let mut st = shared
                        .status
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone();
                    st.progress = shared
                        .progress
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .as_ref()
                        .map(|p| LiveProgress {
                            files_done: p.files_done.load(Relaxed),
                            files_total: p.files_total.load(Relaxed),
                            bytes_done: p.bytes_done.load(Relaxed),
                            bytes_total: p.bytes_total.load(Relaxed),
                        });
                    Response {
                        ok: true,
                        error: None,
                        status: Some(st),
                    }
                }
            }
        };
        let _ = control::write_response(&s, &response);
    }
}

struct Worker {
    connect: Connect,
    excludes: Vec<String>,
    default_excludes: bool,
    one_file_system: bool,
    skip: Vec<PathBuf>,
    cache_dir: PathBuf,
    /// The file-state cache, open across snapshots, with its store's id.
    cache: Option<(String, FileCache)>,
}

impl Worker {
    fn run(mut self, jobs: mpsc::Receiver<Job>, shared: &Shared, mailbox: &Mailbox) {
        for job in jobs {
            let progress = Arc::new(Progress::default());
            *shared.progress.lock().unwrap_or_else(|e| e.into_inner()) = Some(progress.clone());
            let result = self.snapshot(&job, &progress);
            *shared.progress.lock().unwrap_or_else(|e| e.into_inner()) = None;
            // A full scan's buffers were freed into the allocator's arenas;
            // a daemon that then idles for hours should hand them back.
            // SAFETY: malloc_trim only releases free memory of glibc's heap.
            unsafe {
                libc::malloc_trim(0);
            }
            mailbox.send(Msg::Done(Box::new(Done {
                src: job.src,
                dirty: job.dirty,
                result,
            })));
        }
    }

    fn snapshot(&mut self, job: &Job, progress: &Progress) -> Result<Outcome, String> {
        let started = Instant::now();
        let c = (self.connect)()?;
        let repo = c.repo.as_ref();
        let generation = repo.generation().map_err(|e| e.to_string())?;
        let incremental = match job.base {
            Some((parent, g)) if g == generation && !job.dirty.full => Some(Incremental {
                parent,
                dirty: job.dirty.clone(),
            }),
            Some(_) if !job.dirty.full => {
                tracing::info!(
                    "the store's generation moved on (garbage collection ran): scanning everything"
                );
                None
            }
            _ => None,
        };
        let store_id = repo.config().id.clone();
        if self.cache.as_ref().is_none_or(|(id, _)| *id != store_id) {
            let path = backup::cache_path(&self.cache_dir, repo);
            self.cache = FileCache::open(&path)
                .inspect_err(|e| tracing::warn!("no file-state cache at {}: {e}", path.display()))
                .ok()
                .map(|c| (store_id, c));
        }
        let opts = BackupOptions {
            source: job.root.clone(),
            excludes: self.excludes.clone(),
            default_excludes: self.default_excludes,
            one_file_system: self.one_file_system,
            machine: c.machine.clone(),
            tags: vec![],
            cache_dir: None,
            skip: self.skip.clone(),
            incremental,
        };
        let cache = self.cache.as_mut().map(|(_, c)| c);
        let report =
            backup::backup_with_cache(repo, &opts, cache, progress).map_err(|e| format!("{e}"))?;
        let stats = &report.snapshot.stats;
        Ok(Outcome {
            id: report.id,
            generation,
            summary: LastSnapshot {
                id: report.id.to_string(),
                source: job.root.display().to_string(),
                time: unix_now(),
                incremental: !report.listed.complete,
                dirs_listed: report.listed.dirs.len() as u64,
                dirs_reused: report.listed.reused,
                files_read: stats.files_read,
                bytes_read: stats.bytes_read,
                bytes_sent: report.transfer.map_or(stats.bytes_added, |t| t.sent),
                errors: report.errors.len() as u64,
                duration_ms: started.elapsed().as_millis() as u64,
            },
            listed: report.listed,
            errors: report.errors,
        })
    }
}
