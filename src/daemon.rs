//! `homesync daemon`, `status`, `pause` and `resume`: the CLI side of the
//! background daemon (the engine is `homesync_client::daemon`).

use crate::cli::Cli;
use crate::output::{Out, format_time};
use crate::{ClientError, default_repo, exit, home_paths, remote_options};
use anyhow::Context;
use homesync_client::config::{DEFAULT_STATE_DIR, parse_duration};
use homesync_client::control::{self, Request, Status, unix_now};
use homesync_client::daemon::{self, Connected, DaemonOptions};
use homesync_client::remote::RemoteRepository;
use homesync_protocol::Timestamp;
use homesync_server::{OpenOptions, Store};
use std::path::PathBuf;

/// The state directory: `--state-dir`, the config's, or the default.
pub fn state_dir(cli: &Cli) -> anyhow::Result<PathBuf> {
    if let Some(d) = &cli.state_dir {
        return Ok(d.clone());
    }
    let cfg = crate::client_config(cli)?
        .map(|(_, c)| c)
        .unwrap_or_default();
    Ok(cfg
        .state_dir
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)))
}

pub fn run_daemon(cli: &Cli) -> anyhow::Result<u8> {
    let cfg = crate::client_config(cli)?
        .map(|(_, c)| c)
        .unwrap_or_default();
    let settings = cfg
        .daemon
        .settings()
        .map_err(|(field, why)| ClientError::Usage(format!("`{field}` {why}")))?;
    let state = state_dir(cli)?;
    daemon::lower_priority();
    let sources = if cfg.paths.is_empty() {
        home_paths()
    } else {
        cfg.paths.clone()
    };
    let remote = remote_options(cli)?;
    let mut skip = vec![];
    let connect: daemon::Connect = match remote {
        Some(opts) => {
            let limit = settings.bandwidth_limit;
            Box::new(move || {
                let r = RemoteRepository::connect(&opts)
                    .map_err(|e| format!("server {}: {e}", opts.server))?;
                r.set_rate_limit(limit);
                Ok(Connected {
                    machine: r.machine().to_string(),
                    repo: Box::new(r),
                    guard: None,
                })
            })
        }
        None => {
            let path = cli.repo.clone().unwrap_or_else(default_repo);
            skip.push(path.clone());
            let machine = cfg
                .machine
                .clone()
                .unwrap_or_else(homesync_client::backup::default_machine);
            Box::new(move || {
                let store = Store::open(
                    &path,
                    OpenOptions {
                        verify_uploads: false,
                        ..OpenOptions::default()
                    },
                )
                .map_err(|e| format!("store {}: {e}", path.display()))?;
                let session = store
                    .begin_session(&format!("daemon pid {}", std::process::id()))
                    .map_err(|e| format!("store {}: {e}", path.display()))?;
                Ok(Connected {
                    machine: machine.clone(),
                    repo: Box::new(store),
                    guard: Some(Box::new(session)),
                })
            })
        }
    };
    daemon::run(DaemonOptions {
        sources,
        excludes: cfg.exclude.clone(),
        default_excludes: true,
        one_file_system: true,
        skip,
        state_dir: state,
        settings,
        connect,
    })?;
    Ok(exit::OK)
}

/// `status`: the running daemon's answer, or what the last one left.
pub fn status(cli: &Cli, out: &Out) -> anyhow::Result<u8> {
    let dir = state_dir(cli)?;
    let (st, why) = match control::request(&dir, &Request::Status) {
        Ok(st) => (st, None),
        Err(e) => match control::saved_status(&dir) {
            Some(st) => (st, Some(e.to_string())),
            None => return Err(e).context("no daemon status either"),
        },
    };
    show(cli, out, &st, why.as_deref());
    Ok(if st.running { exit::OK } else { exit::ERROR })
}

/// `pause [DURATION]` and `resume`.
pub fn control(cli: &Cli, out: &Out, req: Request) -> anyhow::Result<u8> {
    let dir = state_dir(cli)?;
    let st = control::request(&dir, &req)?;
    show(cli, out, &st, None);
    Ok(exit::OK)
}

pub fn pause_request(duration: Option<&str>) -> anyhow::Result<Request> {
    let seconds = duration
        .map(|d| parse_duration(d).map(|d| d.as_secs().max(1)))
        .transpose()
        .map_err(ClientError::Usage)?;
    Ok(Request::Pause { seconds })
}

fn ago(t: u64) -> String {
    let s = unix_now().saturating_sub(t);
    match s {
        0..120 => format!("{s} s ago"),
        120..7200 => format!("{} min ago", s / 60),
        7200..172_800 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

fn when(t: u64) -> String {
    format_time(Timestamp {
        sec: t as i64,
        nsec: 0,
    }) + " UTC"
}

fn show(cli: &Cli, out: &Out, st: &Status, not_running: Option<&str>) {
    if cli.json {
        let mut v = serde_json::to_value(st).expect("status serialises");
        if let Some(last) = &st.last_snapshot {
            v["last_snapshot_age_s"] = unix_now().saturating_sub(last.time).into();
        }
        if let Some(why) = not_running {
            v["not_running"] = why.into();
        }
        println!("{v}");
        return;
    }
    let _ = out;
    match not_running {
        Some(why) => println!("daemon: not running ({why}); its last status:"),
        None => println!("daemon: running (pid {}), {}", st.pid, st.activity),
    }
    if let Some(d) = &st.detail {
        println!("  {d}");
    }
    if let Some(p) = &st.progress {
        println!(
            "  progress: {}/{} files, {}/{} bytes",
            p.files_done, p.files_total, p.bytes_done, p.bytes_total
        );
    }
    if st.paused {
        match st.paused_until {
            Some(t) => println!("paused until {}", when(t)),
            None => println!("paused until `homesync resume`"),
        }
    }
    match &st.last_snapshot {
        Some(l) => println!(
            "last snapshot: {} of {}, {} ({}; {} directories listed, {} reused, {} files read, {} bytes sent{})",
            l.id,
            l.source,
            ago(l.time),
            if l.incremental {
                "incremental"
            } else {
                "full scan"
            },
            l.dirs_listed,
            l.dirs_reused,
            l.files_read,
            l.bytes_sent,
            if l.errors > 0 {
                format!(", {} entries unreadable", l.errors)
            } else {
                String::new()
            }
        ),
        None => println!("last snapshot: none yet"),
    }
    if st.pending_dirs > 0 {
        print!("pending: {} changed directories", st.pending_dirs);
        if let Some(t) = st.pending_since {
            print!(" since {}", ago(t));
        }
        match st.next_snapshot {
            Some(t) => println!("; next snapshot in {} s", t.saturating_sub(unix_now())),
            None => println!(),
        }
    } else if not_running.is_none() {
        println!("pending: nothing");
    }
    if let Some((t, e)) = &st.last_error {
        println!("last error ({}): {e}", ago(*t));
    }
    if not_running.is_none() {
        println!(
            "watching {} directories; {} events, {} overflows; {} snapshots ({} full scans)",
            st.watches, st.events, st.overflows, st.snapshots, st.full_scans
        );
        if st.unwatched_dirs > 0 {
            println!(
                "  {} subtrees have no watch (inotify limit, {}): rescanned by every snapshot",
                st.unwatched_dirs,
                homesync_client::watch::MAX_USER_WATCHES
            );
        }
    }
}
