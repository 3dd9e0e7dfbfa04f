//! `homesync admin jobs` and `homesync admin run-job`: the server's jobs on
//! the store at --repo (or the server config's store).

use crate::exit;
use crate::output::Out;
use crate::{cli::Cli, default_repo};
use anyhow::Context;
use homesync_protocol::StoreError;
use homesync_server::jobs::{self, JobError, JobKind, JobResult};
use homesync_server::rebuild::{self, RebuildOptions};
use homesync_server::serve_config::ServeConfig;
use homesync_server::{OpenOptions, Store};
use std::path::{Path, PathBuf};

fn open(dir: &Path, options: OpenOptions) -> anyhow::Result<Store> {
    Store::open(dir, options).with_context(|| format!("opening store {}", dir.display()))
}

/// The server config of `--server-config`, or the defaults for --repo.
fn server_config(cli: &Cli, config: Option<&Path>) -> anyhow::Result<(ServeConfig, PathBuf)> {
    let cfg = match config {
        Some(path) => ServeConfig::load(path)?,
        None => ServeConfig::with_store(cli.repo.clone().unwrap_or_else(default_repo)),
    };
    let dir = cli.repo.clone().unwrap_or_else(|| cfg.store.clone());
    Ok((cfg, dir))
}

pub fn list(cli: &Cli, out: &Out) -> anyhow::Result<u8> {
    let store = open(
        &cli.repo.clone().unwrap_or_else(default_repo),
        OpenOptions::default(),
    )?;
    out.jobs(&jobs::status(&store)?);
    Ok(exit::OK)
}

/// Takes the job lock of `kind` for a hand-run `homesync gc` or `check`.
pub fn lock(store: &Store, kind: JobKind) -> anyhow::Result<jobs::JobLock<'_>> {
    jobs::lock(store, kind).map_err(|e| match e {
        JobError::Store(e) => anyhow::Error::from(e),
        e => anyhow::anyhow!("{e}"),
    })
}

pub fn run(cli: &Cli, kind: &str, config: Option<&Path>, out: &Out) -> anyhow::Result<u8> {
    let kind = JobKind::parse(kind).expect("clap checked the kind");
    let (cfg, dir) = server_config(cli, config)?;
    if !dir.join("config").exists() {
        return Err(StoreError::NotFound(dir.display().to_string()).into());
    }
    let store = open(&dir, cfg.open_options(true))?;
    let now = crate::policy_clock()?;
    let report = jobs::run_job(&store, kind, &cfg, now).map_err(|e| match e {
        JobError::Store(e) => anyhow::Error::from(e),
        e => anyhow::anyhow!("{e}"),
    })?;
    out.job(&report);
    Ok(match report.result {
        JobResult::Ok => exit::OK,
        JobResult::Damage => exit::CORRUPT,
        JobResult::Error => exit::ERROR,
    })
}

/// `homesync admin rebuild-index`.
pub fn rebuild_index(
    cli: &Cli,
    config: Option<&Path>,
    packs_only: bool,
    replace: bool,
    out: &Out,
) -> anyhow::Result<u8> {
    let (cfg, dir) = server_config(cli, config)?;
    let opts = RebuildOptions {
        packs_only,
        replace,
        s3: cfg.s3.clone(),
    };
    let report = rebuild::rebuild_index(&dir, &opts)
        .with_context(|| format!("rebuilding the index of store {}", dir.display()))?;
    out.rebuild(&dir, &report);
    Ok(if report.bad_packs.is_empty() {
        exit::OK
    } else {
        exit::CORRUPT
    })
}
