//! The `homesync` command: argument parsing, output and exit codes. All the
//! work is done by the client engine and the store.

mod check;
mod cli;
mod daemon;
mod jobs;
mod output;
mod progress_bar;
mod serve;

use anyhow::Context;
use clap::Parser;
use cli::{AdminCommand, Cli, Command, ForgetArgs};
use homesync_client::backup::{self, BackupOptions};
use homesync_client::browse;
use homesync_client::config::ClientConfig;
use homesync_client::remote::{RemoteOptions, RemoteRepository};
use homesync_client::restore::{self, RestoreOptions};
use homesync_client::{ClientError, Progress};
use homesync_protocol::{ChunkerParams, Repository, Snapshot, SnapshotId, StoreError, Timestamp};
use homesync_server::auth::{Auth, Role};
use homesync_server::retention::{self, Action};
use homesync_server::{OpenOptions, Store};
use output::Out;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit codes (documented in docs/cli.md).
pub mod exit {
    pub const OK: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const PARTIAL: u8 = 3;
    pub const NO_STORE: u8 = 4;
    pub const CORRUPT: u8 = 5;
}

unsafe extern "C" {
    /// glibc's allocator tuning (`man 3 mallopt`).
    fn mallopt(param: i32, value: i32) -> i32;
}

/// Allocations of 4 MiB and more (read buffers, pack buffers) get their own
/// mappings, returned to the system when freed. Without this, glibc raises
/// its mmap threshold after the first large free and serves later large
/// buffers from per-thread heaps that fragment: the bench home's backup
/// peaked at 180 MB instead of 140 MB.
fn tune_allocator() {
    const M_MMAP_THRESHOLD: i32 = -3;
    // SAFETY: mallopt only sets a tunable; called before any other thread exists.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 4 << 20);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HOMESYNC_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = classify(&e);
            Out::new(cli.json).error(None, &describe(&e));
            ExitCode::from(code)
        }
    }
}

/// The error and its causes on one line, each cause once (a library error
/// often already quotes its source in its own message).
fn describe(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !msg.contains(&text) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&text);
        }
    }
    msg
}

/// The exit code for a fatal error.
fn classify(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(s) = cause.downcast_ref::<StoreError>() {
            return match s {
                StoreError::NotFound(_) => exit::NO_STORE,
                e if e.is_corruption() => exit::CORRUPT,
                _ => exit::ERROR,
            };
        }
        if let Some(c) = cause.downcast_ref::<ClientError>() {
            return match c {
                ClientError::Store(StoreError::NotFound(_)) => exit::NO_STORE,
                ClientError::Usage(_) | ClientError::Exclude { .. } => exit::USAGE,
                c if c.is_corruption() => exit::CORRUPT,
                _ => exit::ERROR,
            };
        }
    }
    exit::ERROR
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

/// What the daemon backs up when the config names no paths.
pub(crate) fn home_paths() -> Vec<PathBuf> {
    vec![PathBuf::from("/home")]
}

fn xdg(var: &str, fallback: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| home().join(fallback))
}

/// The store used when neither `--repo` nor `HOMESYNC_REPO` is given.
pub(crate) fn default_repo() -> PathBuf {
    xdg("XDG_DATA_HOME", ".local/share").join("homesync/store")
}

/// Where `backup` keeps its file-state cache: under the configured state
/// directory if there is one (a read-only root), else the user's cache.
fn cache_dir(cli: &Cli) -> PathBuf {
    if let Some(d) = cli.state_dir.clone().or_else(|| {
        client_config(cli)
            .ok()
            .flatten()
            .and_then(|(_, c)| c.state_dir)
    }) {
        return d.join("cache");
    }
    xdg("XDG_CACHE_HOME", ".cache").join("homesync")
}

/// The store a command works on: the embedded one, or a server.
enum Repo {
    Local(Store),
    Remote(Box<RemoteRepository>),
}

impl Repo {
    fn dyn_repo(&self) -> &dyn Repository {
        match self {
            Repo::Local(s) => s,
            Repo::Remote(r) => r.as_ref(),
        }
    }

    /// Snapshots of `machine` (default: all in a local store; this
    /// machine's, or the token's, on a server).
    fn snapshots(&self, machine: Option<&str>) -> anyhow::Result<Vec<(SnapshotId, Snapshot)>> {
        Ok(match self {
            Repo::Local(s) => s
                .snapshots()?
                .into_iter()
                .filter(|(_, snap)| machine.is_none_or(|m| snap.machine == m))
                .collect(),
            Repo::Remote(r) => r.snapshots_of(machine.map(str::to_string))?,
        })
    }

    fn resolve(&self, machine: Option<&str>, spec: &str) -> anyhow::Result<(SnapshotId, Snapshot)> {
        Ok(browse::resolve_in(self.snapshots(machine)?, spec)?)
    }
}

/// The time a retention policy is applied at: the clock, or `HOMESYNC_NOW`
/// (a UTC time such as `2026-11-30T12:00:00Z`), which exists for tests and
/// scripts. Nothing else reads it: snapshot times always come from the clock.
fn policy_clock() -> anyhow::Result<Timestamp> {
    match std::env::var("HOMESYNC_NOW") {
        Ok(s) => Ok(retention::parse_utc(&s).ok_or_else(|| {
            ClientError::Usage(format!(
                "HOMESYNC_NOW={s:?} is not a UTC time like 2026-11-30T12:00:00Z"
            ))
        })?),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(ClientError::Usage("HOMESYNC_NOW is not valid UTF-8".into()).into())
        }
        Err(std::env::VarError::NotPresent) => {
            let d = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            Ok(Timestamp {
                sec: d.as_secs() as i64,
                nsec: d.subsec_nanos(),
            })
        }
    }
}

/// `forget`: snapshots given by id, or chosen by a retention policy.
fn forget(cli: &Cli, a: &ForgetArgs, out: &Out) -> anyhow::Result<u8> {
    let repo = open_repo(cli, false, out)?;
    if !a.snapshots.is_empty() {
        for spec in &a.snapshots {
            let (id, _) = repo.resolve(a.machine.as_deref(), spec)?;
            if a.dry_run {
                out.note(&format!("would forget snapshot {id}"));
            } else {
                repo.dyn_repo().forget_snapshot(id)?;
                out.note(&format!("forgot snapshot {id}"));
            }
        }
        return Ok(exit::OK);
    }
    // clap requires ids or at least one --keep-* flag, so the policy is
    // never empty here.
    let policy = a.policy.policy();
    let now = policy_clock()?;
    let snapshots = repo.snapshots(a.machine.as_deref())?;
    let decisions =
        retention::plan(&snapshots, &policy, now).map_err(|e| ClientError::Usage(e.to_string()))?;
    out.note(&format!(
        "applying policy {policy} to {} snapshots",
        snapshots.len()
    ));
    let (mut kept, mut removed) = (0, 0);
    let mut group = None;
    for d in &decisions {
        if group != Some((&d.machine, &d.source)) {
            group = Some((&d.machine, &d.source));
            out.forget_group(&d.machine, &d.source);
        }
        if d.action == Action::Remove {
            if !a.dry_run {
                repo.dyn_repo()
                    .forget_snapshot(d.id)
                    .with_context(|| format!("forgetting snapshot {}", d.id))?;
            }
            removed += 1;
        } else {
            kept += 1;
        }
        out.forget(d);
    }
    out.forget_summary(kept, removed, a.dry_run);
    Ok(exit::OK)
}

/// The client config: `--config`, else the default places; missing is fine.
pub(crate) fn client_config(cli: &Cli) -> anyhow::Result<Option<(PathBuf, ClientConfig)>> {
    let path = match &cli.config {
        Some(p) => p.clone(),
        None => homesync_client::config::default_path(),
    };
    if cli.config.is_none() && !path.exists() {
        return Ok(None);
    }
    let cfg = ClientConfig::load(&path)?;
    Ok(Some((path, cfg)))
}

/// Remote settings from flags and environment, falling back to the config.
pub(crate) fn remote_options(cli: &Cli) -> anyhow::Result<Option<RemoteOptions>> {
    let cfg = client_config(cli)?.map(|(_, c)| c).unwrap_or_default();
    let Some(server) = cli.server.clone().or(cfg.server) else {
        return Ok(None);
    };
    let fingerprint = cli.fingerprint.clone().or(cfg.fingerprint).ok_or_else(|| {
        ClientError::Usage(format!(
            "no fingerprint for server {server}: pass --fingerprint (printed by `homesync serve`)"
        ))
    })?;
    let credential = cli.credential.clone().or(cfg.credential).ok_or_else(|| {
        ClientError::Usage(format!(
            "no credential for server {server}: pass --credential (from `homesync admin add-machine`)"
        ))
    })?;
    Ok(Some(RemoteOptions {
        server,
        fingerprint,
        credential,
        bulk_download: matches!(cli.command, Command::Restore { .. }),
    }))
}

fn open_repo(cli: &Cli, create_default: bool, out: &Out) -> anyhow::Result<Repo> {
    if cli.repo.is_none()
        && let Some(opts) = remote_options(cli)?
    {
        let remote =
            RemoteRepository::connect(&opts).with_context(|| format!("server {}", opts.server))?;
        return Ok(Repo::Remote(Box::new(remote)));
    }
    Ok(Repo::Local(open_store(cli, create_default, out)?))
}

pub(crate) fn open_store(cli: &Cli, create_default: bool, out: &Out) -> anyhow::Result<Store> {
    let path = cli.repo.clone().unwrap_or_else(default_repo);
    let options = OpenOptions {
        // In-process: the only writer is this process, which hashed each
        // chunk itself a moment before. The network server always verifies.
        verify_uploads: false,
        ..OpenOptions::default()
    };
    match Store::open(&path, options.clone()) {
        Err(StoreError::NotFound(_)) if create_default && cli.repo.is_none() => {
            Store::init(&path, ChunkerParams::default(), 3)
                .with_context(|| format!("creating store {}", path.display()))?;
            out.note(&format!("created the default store at {}", path.display()));
            Ok(Store::open(&path, options)?)
        }
        r => r.with_context(|| format!("opening store {}", path.display())),
    }
}

fn run(cli: &Cli) -> anyhow::Result<u8> {
    let out = Out::new(cli.json);
    match &cli.command {
        Command::Init => {
            let path = cli.repo.clone().unwrap_or_else(default_repo);
            let store = Store::init(&path, ChunkerParams::default(), 3)
                .with_context(|| format!("creating store {}", path.display()))?;
            out.init(&path, &store.config().id);
            Ok(exit::OK)
        }
        Command::Backup(a) => {
            let repo = open_repo(cli, true, &out)?;
            let cfg = client_config(cli)?.map(|(_, c)| c).unwrap_or_default();
            let mut patterns = cfg.exclude.clone();
            patterns.extend(a.exclude.iter().cloned());
            for f in &a.exclude_file {
                patterns.extend(homesync_client::exclude::Excludes::read_file(f)?);
            }
            let paths = match (a.paths.is_empty(), cfg.paths.is_empty()) {
                (false, _) => a.paths.clone(),
                (true, false) => cfg.paths.clone(),
                (true, true) => vec![home()],
            };
            let (machine, skip) = match &repo {
                // A server records snapshots under the credential's machine.
                Repo::Remote(r) => (r.machine().to_string(), vec![]),
                Repo::Local(s) => (
                    a.machine
                        .clone()
                        .or(cfg.machine)
                        .unwrap_or_else(backup::default_machine),
                    vec![s.dir().to_path_buf()],
                ),
            };
            // Garbage collection must not delete what this backup is told
            // the store has before the snapshot is committed.
            let _session = match &repo {
                Repo::Local(s) => Some(
                    s.begin_session(&format!("local backup by pid {}", std::process::id()))
                        .context("registering the backup with the store")?,
                ),
                Repo::Remote(_) => None,
            };
            let mut code = exit::OK;
            for path in paths {
                let opts = BackupOptions {
                    source: path.clone(),
                    excludes: patterns.clone(),
                    default_excludes: !a.no_default_excludes,
                    one_file_system: !a.cross_file_systems,
                    machine: machine.clone(),
                    tags: a.tag.clone(),
                    cache_dir: (!a.no_cache).then(|| cache_dir(cli)),
                    skip: skip.clone(),
                    incremental: None,
                };
                let progress = std::sync::Arc::new(Progress::default());
                let bar = progress_bar::start(&progress, !cli.json, "backing up");
                let started = std::time::Instant::now();
                let report = backup::backup(repo.dyn_repo(), &opts, &progress);
                bar.finish();
                let report = report.with_context(|| format!("backing up {}", path.display()))?;
                for e in &report.errors {
                    out.error(Some(&e.path), &e.error);
                }
                out.backup_summary(&report, started.elapsed());
                if !report.errors.is_empty() {
                    code = exit::PARTIAL;
                }
            }
            Ok(code)
        }
        Command::Snapshots { machine } => {
            let repo = open_repo(cli, false, &out)?;
            out.snapshots(&repo.snapshots(machine.as_deref())?);
            Ok(exit::OK)
        }
        Command::Ls(a) => {
            let repo = open_repo(cli, false, &out)?;
            let (_, snap) = repo.resolve(a.machine.as_deref(), &a.snapshot)?;
            let rel = a
                .path
                .as_ref()
                .map(|p| p.as_os_str().as_bytes().to_vec())
                .unwrap_or_default();
            let node = browse::find(repo.dyn_repo(), &snap, &rel)?;
            let start = browse::split_path(&rel)?.join(&b'/');
            browse::walk(repo.dyn_repo(), start, &node, &mut |p, n| out.node(p, n))?;
            Ok(exit::OK)
        }
        Command::Restore(a) => {
            let repo = open_repo(cli, false, &out)?;
            let (_, snap) = repo.resolve(a.machine.as_deref(), &a.snapshot)?;
            let opts = RestoreOptions {
                target: a.target.clone(),
                paths: a
                    .paths
                    .iter()
                    .map(|p| p.as_os_str().as_bytes().to_vec())
                    .collect(),
                numeric_ids: a.numeric_ids,
                // A tuning knob, and how the tests make small homes restore
                // in many windows.
                plan_window: std::env::var("HOMESYNC_RESTORE_WINDOW")
                    .ok()
                    .and_then(|v| v.parse().ok()),
                on_ready: Some({
                    let out = out.clone();
                    let file = a.ready_file.clone();
                    let started = std::time::Instant::now();
                    Box::new(move |r: &restore::Ready| {
                        if let Some(f) = &file {
                            let text = format!(
                                "first phase restored: {} entries, {} bytes; {} files, {} bytes to come\n",
                                r.files, r.bytes, r.files_left, r.bytes_left
                            );
                            if let Err(e) = std::fs::write(f, text) {
                                out.error(Some(f), &format!("writing the ready file: {e}"));
                            }
                        }
                        out.ready(r, started.elapsed());
                    })
                }),
            };
            let progress = std::sync::Arc::new(Progress::default());
            let bar = progress_bar::start(&progress, !cli.json, "restoring");
            let started = std::time::Instant::now();
            let report = restore::restore(repo.dyn_repo(), &snap, &opts, &progress);
            bar.finish();
            let report = report?;
            for w in &report.warnings {
                out.note(&format!("warning: {w}"));
            }
            for e in &report.errors {
                out.error(Some(&e.path), &e.error);
            }
            out.restore_summary(&report, started.elapsed());
            Ok(if report.errors.iter().any(|e| e.corruption) {
                exit::CORRUPT
            } else if !report.errors.is_empty() {
                exit::PARTIAL
            } else {
                exit::OK
            })
        }
        Command::Diff(a) => {
            let repo = open_repo(cli, false, &out)?;
            let (_, x) = repo.resolve(a.machine.as_deref(), &a.from)?;
            let (_, y) = repo.resolve(a.machine.as_deref(), &a.to)?;
            browse::diff(repo.dyn_repo(), &x.root, &y.root, &mut |c, p, n| {
                out.change(c, p, n)
            })?;
            Ok(exit::OK)
        }
        Command::Forget(a) => forget(cli, a, &out),
        Command::Gc { rewrite_below } => {
            if !(0.0..=1.0).contains(rewrite_below) {
                return Err(ClientError::Usage(format!(
                    "--rewrite-below {rewrite_below}: give a share between 0 and 1"
                ))
                .into());
            }
            let Repo::Local(store) = open_repo(cli, true, &out)? else {
                return Err(ClientError::Usage(
                    "garbage collection runs on the server's store: `homesync --repo STORE gc` on the server".into(),
                )
                .into());
            };
            // Not beside a GC or check job (or another `homesync gc`/`check`).
            let _lock = jobs::lock(&store, homesync_server::jobs::JobKind::Gc)?;
            let report = store.gc(&homesync_server::gc::GcOptions {
                rewrite_below: *rewrite_below,
                ..Default::default()
            })?;
            out.gc(&report);
            Ok(exit::OK)
        }
        Command::Check(a) => check::run(cli, a, &out),
        Command::Daemon => daemon::run_daemon(cli),
        Command::Status => daemon::status(cli, &out),
        Command::Pause { duration } => {
            daemon::control(cli, &out, daemon::pause_request(duration.as_deref())?)
        }
        Command::Resume => daemon::control(cli, &out, homesync_client::control::Request::Resume),
        Command::Serve(a) => serve::run(cli, a, &out),
        Command::Admin(AdminCommand::Jobs) => jobs::list(cli, &out),
        Command::Admin(AdminCommand::RunJob {
            kind,
            server_config,
        }) => jobs::run(cli, kind, server_config.as_deref(), &out),
        Command::Admin(AdminCommand::RebuildIndex {
            server_config,
            packs_only,
            replace,
        }) => jobs::rebuild_index(cli, server_config.as_deref(), *packs_only, *replace, &out),
        Command::Admin(cmd) => {
            let store_dir = cli.repo.clone().unwrap_or_else(default_repo);
            if !store_dir.join("config").exists() {
                return Err(StoreError::NotFound(store_dir.display().to_string()).into());
            }
            let auth = Auth::open(&store_dir.join("index.sqlite"))?;
            match cmd {
                AdminCommand::AddMachine { name, admin } => {
                    let role = if *admin { Role::Admin } else { Role::Machine };
                    let credential = auth.add_machine(name, role)?;
                    out.credential(name, role.as_str(), &credential);
                }
                AdminCommand::Revoke { name } => {
                    auth.revoke(name)?;
                    out.note(&format!("revoked the credential of {name}"));
                }
                AdminCommand::Machines => out.machines(&auth.list_machines()?),
                AdminCommand::RestoreToken { machine, hours } => {
                    let token = auth.issue_restore_token(
                        machine,
                        std::time::Duration::from_secs(hours * 3600),
                    )?;
                    out.credential(machine, "restore", &token);
                }
                AdminCommand::Jobs
                | AdminCommand::RunJob { .. }
                | AdminCommand::RebuildIndex { .. } => unreachable!("handled above"),
            }
            Ok(exit::OK)
        }
        Command::Login => {
            let opts = remote_options(cli)?.ok_or_else(|| {
                ClientError::Usage("login needs --server, --fingerprint and --credential".into())
            })?;
            // Prove the settings work before saving them.
            let remote = RemoteRepository::connect(&opts)
                .with_context(|| format!("server {}", opts.server))?;
            let (path, mut cfg) = match client_config(cli)? {
                Some(pc) => pc,
                None => (
                    cli.config
                        .clone()
                        .unwrap_or_else(homesync_client::config::default_path),
                    ClientConfig::default(),
                ),
            };
            cfg.server = Some(opts.server.clone());
            cfg.fingerprint = Some(opts.fingerprint.clone());
            cfg.credential = Some(opts.credential.clone());
            cfg.machine = Some(remote.machine().to_string());
            cfg.save(&path)?;
            out.note(&format!(
                "logged in to {} as {} ({}); settings saved in {}",
                opts.server,
                remote.machine(),
                remote.role(),
                path.display()
            ));
            Ok(exit::OK)
        }
    }
}
