//! `homesync check`: verifies the embedded store (or, on the server, the
//! server's store given with `--repo`).

use crate::cli::{CheckArgs, Cli};
use crate::exit;
use crate::output::Out;
use homesync_client::ClientError;
use homesync_server::check::{self, CheckOptions, CheckProgress, Stage, Subset};
use homesync_server::jobs::{JobError, JobKind};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

pub fn run(cli: &Cli, a: &CheckArgs, out: &Out) -> anyhow::Result<u8> {
    if cli.repo.is_none() {
        let server = match &cli.server {
            Some(s) => Some(s.clone()),
            None => crate::client_config(cli)?.and_then(|(_, c)| c.server),
        };
        if let Some(server) = server {
            return Err(ClientError::Usage(format!(
                "check runs on the store itself, not over the network: on the server of \
                 {server}, run `homesync --repo STORE check` (the server also checks a part of \
                 its data on its [jobs] schedule); pass --repo to check a local store"
            ))
            .into());
        }
    }
    let subset = match &a.subset {
        Some(spec) => Subset::parse(spec, a.subset_offset).map_err(ClientError::Usage)?,
        None => Subset::All,
    };
    let opts = CheckOptions {
        read_data: a.read_data || a.subset.is_some(),
        subset,
    };
    let store = crate::open_store(cli, false, out)?;
    // Not beside a garbage collection, which could delete a pack between
    // the listings and make it look missing. A store this user cannot
    // write (read-only media) is checked without the lock.
    let _lock = match homesync_server::jobs::lock(&store, JobKind::Check) {
        Ok(lock) => Some(lock),
        Err(JobError::Store(e)) => {
            tracing::warn!("checking without the job lock: {e}");
            None
        }
        Err(e) => return Err(anyhow::anyhow!("{e}")),
    };
    let progress = Arc::new(CheckProgress::default());
    let p = progress.clone();
    let bar = crate::progress_bar::start_with(!cli.json, move || {
        let stage = p.stage();
        let (done, total) = (p.items_done.load(Relaxed), p.items_total.load(Relaxed));
        let msg = match stage {
            Stage::Packs => format!("{} {done}/{total}", stage.describe()),
            Stage::Trees | Stage::Damage => format!("{} ({done} trees)", stage.describe()),
            Stage::Listing => stage.describe().to_string(),
        };
        (msg, p.bytes_done.load(Relaxed), p.bytes_total.load(Relaxed))
    });
    let started = std::time::Instant::now();
    let report = check::check(&store, &opts, &progress);
    bar.finish();
    let report = report?;
    for w in &report.warnings {
        out.note(&format!("warning: {w}"));
    }
    for e in &report.errors {
        out.error(None, e);
    }
    for d in &report.damaged {
        out.damage(d);
    }
    out.check_summary(&report, &opts, started.elapsed());
    Ok(if report.is_damaged() {
        exit::CORRUPT
    } else {
        exit::OK
    })
}
