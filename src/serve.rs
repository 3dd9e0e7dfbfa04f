//! `homesync serve`: the store behind QUIC until SIGTERM or Ctrl-C.

use crate::cli::{Cli, ServeArgs};
use crate::output::Out;
use crate::{default_repo, exit};
use anyhow::Context;
use homesync_protocol::{ChunkerParams, StoreError};
use homesync_server::Store;
use homesync_server::auth::Auth;
use homesync_server::jobs;
use homesync_server::serve_config::ServeConfig;
use homesync_server::service::{self, Identity, Limits, Service};
use std::sync::Arc;
use std::time::Duration;

/// How long open sessions may take to finish after a shutdown signal.
const GRACE: Duration = Duration::from_secs(10);
/// How long a shutdown waits for a running job before abandoning it.
const JOB_GRACE: Duration = Duration::from_secs(1);

pub fn run(cli: &Cli, args: &ServeArgs, out: &Out) -> anyhow::Result<u8> {
    let mut cfg = match &args.server_config {
        Some(path) => ServeConfig::load(path)?,
        None => ServeConfig::with_store(cli.repo.clone().unwrap_or_else(default_repo)),
    };
    if let Some(listen) = args.listen {
        cfg.listen = listen;
    }
    let options = cfg.open_options(true);
    let store = match Store::open(&cfg.store, options.clone()) {
        Err(StoreError::NotFound(_)) => {
            let store = Store::init_with(&cfg.store, ChunkerParams::default(), 3, options)
                .with_context(|| format!("creating store {}", cfg.store.display()))?;
            let place = match &cfg.s3 {
                Some(s3) => format!(" (packs in {})", s3.describe()),
                None => String::new(),
            };
            out.note(&format!(
                "created a new store at {}{place}",
                cfg.store.display()
            ));
            store
        }
        r => r.with_context(|| format!("opening store {}", cfg.store.display()))?,
    };
    let auth = Auth::open(&cfg.store.join("index.sqlite"))?;
    let identity = Identity::load_or_create(&cfg.cert, &cfg.key)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Store work (SQLite, hashing, pack I/O) runs on the blocking pool;
        // it is serialised by the store's locks anyway, and every extra
        // thread is another stack and malloc arena.
        .max_blocking_threads(8)
        .thread_name("homesync-serve")
        .build()
        .context("starting the async runtime")?;
    let limits = Limits {
        idle_timeout: cfg.idle_timeout(),
        max_connections: cfg.max_connections,
        ..Limits::default()
    };
    let endpoint = {
        let _guard = runtime.enter();
        service::endpoint(cfg.listen, &identity, &limits)?
    };
    let local = endpoint.local_addr().context("reading the bound address")?;
    out.listening(&local, &identity.fingerprint(), &cfg.store);
    let reporter = out.clone();
    let store = Arc::new(store);
    let svc = Arc::new(
        Service::new(store.clone(), Arc::new(auth), limits.max_connections)
            .with_slow_request(Duration::from_secs(cfg.slow_request_secs))
            .on_session_end(move |r| reporter.session(r)),
    );
    // The jobs run beside the service until shutdown; a job still running
    // then is abandoned (every job is crash-safe), not waited for.
    // The signal stops both at once: no job starts during the grace period.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    runtime.spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let reporter = out.clone();
    runtime.spawn(jobs::schedule(
        store,
        Arc::new(cfg),
        move |r| reporter.server_job(r),
        until_stopped(stopped.clone()),
    ));
    runtime.block_on(svc.run(endpoint, until_stopped(stopped), GRACE));
    runtime.shutdown_timeout(JOB_GRACE);
    out.note("server stopped");
    Ok(exit::OK)
}

/// Resolves on SIGTERM (systemd stop) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
