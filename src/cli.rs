//! Command-line arguments.

use clap::{Args, Parser, Subcommand};
use homesync_server::retention::{Policy, Span, SpanError};
use std::path::PathBuf;

/// homesync: back up home directories and restore them faithfully.
#[derive(Parser, Debug)]
#[command(name = "homesync", version, about, long_about = None)]
pub struct Cli {
    /// Store directory [default: $XDG_DATA_HOME/homesync/store]
    #[arg(long, global = true, env = "HOMESYNC_REPO", value_name = "DIR")]
    pub repo: Option<PathBuf>,
    /// Print results as JSON Lines on stdout (no progress bars)
    #[arg(long, global = true)]
    pub json: bool,
    /// Use the homesync server at HOST:PORT instead of a local store
    #[arg(long, global = true, env = "HOMESYNC_SERVER", value_name = "HOST:PORT")]
    pub server: Option<String>,
    /// The server certificate's fingerprint (printed by `homesync serve`)
    #[arg(long, global = true, env = "HOMESYNC_FINGERPRINT", value_name = "HEX")]
    pub fingerprint: Option<String>,
    /// This machine's credential (from `homesync admin add-machine`), an
    /// admin credential, or a one-time restore token
    #[arg(
        long,
        global = true,
        env = "HOMESYNC_CREDENTIAL",
        value_name = "CREDENTIAL",
        hide_env_values = true
    )]
    pub credential: Option<String>,
    /// Client config file [default: $HOMESYNC_CONFIG, /etc/homesync/client.toml
    /// or ~/.config/homesync/client.toml]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The daemon's state directory [default: the config's state_dir, or
    /// /var/lib/homesync]
    #[arg(long, global = true, env = "HOMESYNC_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create an empty store
    Init,
    /// Back up directories (default: $HOME), one snapshot each
    Backup(BackupArgs),
    /// List snapshots, oldest first
    Snapshots {
        /// Another machine's snapshots (admin credential or restore token)
        #[arg(long)]
        machine: Option<String>,
    },
    /// List the entries of a snapshot, recursively
    Ls(LsArgs),
    /// Restore a snapshot, or paths within it, into a directory
    Restore(RestoreArgs),
    /// Show what changed between two snapshots
    Diff(DiffArgs),
    /// Remove snapshots from the list, given by id or by a retention policy
    /// (on a server: admin credentials only); their data is reclaimed by
    /// garbage collection
    Forget(ForgetArgs),
    /// Reclaim the space of blobs no snapshot references (on the store at
    /// --repo; safe while backups run)
    Gc {
        /// Rewrite packs with less than this share of live bytes (0 to 1)
        #[arg(long, default_value_t = homesync_server::gc::REWRITE_BELOW)]
        rewrite_below: f64,
    },
    /// Verify the store at --repo: every snapshot's trees and blobs present,
    /// index and packs agree; with --read-data also re-hash the stored blobs
    Check(CheckArgs),
    /// Run the server: the store behind QUIC for a fleet of machines
    Serve(ServeArgs),
    /// Manage machines, credentials and jobs of the store at --repo (on the server)
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Save the server address, fingerprint and credential in the client config
    Login,
    /// Watch the configured paths (default: /home) with inotify and back up
    /// changes soon after they happen (run by homesync-daemon.service)
    Daemon,
    /// The daemon's state: last snapshot and its age, pending changes,
    /// activity, last error (exit 1 when no daemon runs)
    Status,
    /// Hold the daemon's snapshots for DURATION (30m, 2h, 1day) or until
    /// `homesync resume`; changes are still collected
    Pause {
        #[arg(value_name = "DURATION")]
        duration: Option<String>,
    },
    /// End a pause: pending changes are backed up
    Resume,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Also read every stored blob and check it against its id (reads the
    /// whole store; see --subset)
    #[arg(long)]
    pub read_data: bool,
    /// Read only part of the packs (implies --read-data): `n/m` is part n
    /// of m (parts 1/m to m/m together are every pack), `N%` about N percent
    #[arg(long, value_name = "n/m|N%")]
    pub subset: Option<String>,
    /// With `--subset N%`: start at bucket K (0-99), so runs at offsets 0,
    /// N, 2N, ... cover every pack in turn
    #[arg(long, value_name = "K", requires = "subset")]
    pub subset_offset: Option<u32>,
}

#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Snapshot ids, id prefixes, or `latest` (or a policy: --keep-*)
    #[arg(required_unless_present = "policy", conflicts_with = "policy")]
    pub snapshots: Vec<String>,
    /// Another machine's snapshots (admin credential)
    #[arg(long)]
    pub machine: Option<String>,
    /// Only show what would be forgotten (and, with a policy, why)
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten, next_help_heading = "Policy (instead of snapshot ids)")]
    pub policy: PolicyArgs,
}

/// A retention policy (restic's rules, per machine and source, periods in
/// UTC; the newest snapshot of each source is always kept).
#[derive(Args, Debug)]
#[group(id = "policy", multiple = true)]
pub struct PolicyArgs {
    /// Keep the N newest snapshots
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the N newest hours that have one
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the N newest days (UTC) that have one
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the N newest ISO weeks that have one
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the N newest months that have one
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_monthly: Option<u32>,
    /// Keep the newest snapshot of each of the N newest years that have one
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_yearly: Option<u32>,
    /// Keep every snapshot within DUR of the newest one (y, m, w, d, h: 36h, 30d, 1y2m3d)
    #[arg(long, value_name = "DUR", value_parser = parse_span)]
    pub keep_within: Option<String>,
    /// Keep every snapshot with this tag (repeatable)
    #[arg(long, value_name = "TAG", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub keep_tag: Vec<String>,
}

impl PolicyArgs {
    pub fn policy(&self) -> Policy {
        Policy {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
            keep_within: self.keep_within.clone(),
            keep_tags: self.keep_tag.clone(),
        }
    }
}

/// Checks a --keep-within duration, keeping the text as given.
fn parse_span(s: &str) -> Result<String, SpanError> {
    s.parse::<Span>().map(|_| s.to_string())
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Server config file (TOML), e.g. /etc/homesync/server.toml
    #[arg(long = "server-config", value_name = "FILE")]
    pub server_config: Option<PathBuf>,
    /// Address to listen on [default: 0.0.0.0:7443, or the config's]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Register a machine and print its credential (shown once)
    AddMachine {
        name: String,
        /// An admin credential: list, restore and delete across machines
        #[arg(long)]
        admin: bool,
    },
    /// Revoke a machine's credential (effective on its next request)
    Revoke { name: String },
    /// List machines
    Machines,
    /// Print a one-time token with which a new machine may restore MACHINE's snapshots
    RestoreToken {
        machine: String,
        /// Hours the token stays valid
        #[arg(long, default_value_t = 72)]
        hours: u64,
    },
    /// The server's jobs: last run, duration, result and numbers of each kind
    Jobs,
    /// Run a server job now on the store (refused while one of its kind runs)
    RunJob {
        /// retention (apply the config's [retention]), gc, check (read
        /// the next part of the data in the rotation), or index-copy (store
        /// a copy of the index beside the packs)
        #[arg(value_parser = ["retention", "gc", "check", "index-copy"])]
        kind: String,
        /// Server config file with the [retention] policies and [jobs]
        /// settings (its store is used when --repo is not given)
        #[arg(long = "server-config", value_name = "FILE")]
        server_config: Option<PathBuf>,
    },
    /// Rebuild the store's index from its packs (and the newest sound index
    /// copy): after the index file was lost or damaged, or on a new server
    /// whose packs are in the bucket of the server config's [s3]
    RebuildIndex {
        /// Server config file; its [s3] says where the packs are when the
        /// store directory (its `store`, unless --repo) does not
        #[arg(long = "server-config", value_name = "FILE")]
        server_config: Option<PathBuf>,
        /// Ignore index copies: from the packs alone (credentials are then
        /// lost: add the machines again)
        #[arg(long)]
        packs_only: bool,
        /// Replace an existing index file (it is kept as index.sqlite.replaced-TIME)
        #[arg(long)]
        replace: bool,
    },
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Directories to back up
    pub paths: Vec<PathBuf>,
    /// Leave out paths matching a gitignore-style pattern (repeatable)
    #[arg(long, short = 'e', value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Read exclude patterns from a file, one per line
    #[arg(long, value_name = "FILE")]
    pub exclude_file: Vec<PathBuf>,
    /// Also back up ~/.cache, the trash and CACHEDIR.TAG-marked directories
    #[arg(long)]
    pub no_default_excludes: bool,
    /// Descend into other file systems mounted below a path
    #[arg(long)]
    pub cross_file_systems: bool,
    /// Machine name recorded in the snapshot [default: the host name]
    #[arg(long)]
    pub machine: Option<String>,
    /// Tag the snapshot (repeatable)
    #[arg(long)]
    pub tag: Vec<String>,
    /// Read every file, ignoring the file-state cache (and do not update it)
    #[arg(long)]
    pub no_cache: bool,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Snapshot id, id prefix, or `latest`
    pub snapshot: String,
    /// Another machine's snapshots (admin credential or restore token)
    #[arg(long)]
    pub machine: Option<String>,
    /// Path inside the snapshot
    pub path: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot id, id prefix, or `latest`
    pub snapshot: String,
    /// Another machine's snapshots (admin credential or restore token)
    #[arg(long)]
    pub machine: Option<String>,
    /// Directory to restore into (created if missing)
    #[arg(long, short = 't')]
    pub target: PathBuf,
    /// Only these paths inside the snapshot (and what is below them)
    pub paths: Vec<PathBuf>,
    /// Keep recorded uid/gid numbers instead of mapping owner names
    #[arg(long)]
    pub numeric_ids: bool,
    /// Create this file when the first phase is done (the login files:
    /// small files below each home's hidden entries, with their
    /// directories): the user can log in while the rest still arrives
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// Another machine's snapshots (admin credential or restore token)
    #[arg(long)]
    pub machine: Option<String>,
    pub from: String,
    pub to: String,
}
