//! Command-line arguments.

use clap::{Args, Parser, Subcommand};
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
    Snapshots,
    /// List the entries of a snapshot, recursively
    Ls(LsArgs),
    /// Restore a snapshot, or paths within it, into a directory
    Restore(RestoreArgs),
    /// Show what changed between two snapshots
    Diff(DiffArgs),
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
    /// Path inside the snapshot
    pub path: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot id, id prefix, or `latest`
    pub snapshot: String,
    /// Directory to restore into (created if missing)
    #[arg(long, short = 't')]
    pub target: PathBuf,
    /// Only these paths inside the snapshot (and what is below them)
    pub paths: Vec<PathBuf>,
    /// Keep recorded uid/gid numbers instead of mapping owner names
    #[arg(long)]
    pub numeric_ids: bool,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    pub from: String,
    pub to: String,
}
