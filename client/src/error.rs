//! Client errors. A problem with one entry is an [`EntryError`]: it is
//! reported and the run goes on. A [`ClientError`] stops the run.

use homesync_protocol::StoreError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad exclude pattern {pattern:?}: {why}")]
    Exclude { pattern: String, why: String },
    #[error("file-state cache {path}: {why}")]
    Cache { path: PathBuf, why: String },
    #[error("{0}")]
    Usage(String),
    #[error(
        "{}: not enough space: the restore needs {} MiB more, {} MiB are free; free some and run the same command again (it resumes)",
        path.display(), needed.div_ceil(1 << 20), free >> 20
    )]
    NoSpace {
        path: PathBuf,
        needed: u64,
        free: u64,
    },
}

impl ClientError {
    pub fn is_corruption(&self) -> bool {
        matches!(self, ClientError::Store(e) if e.is_corruption())
    }
}

/// One entry that could not be backed up or restored.
#[derive(Debug, Clone)]
pub struct EntryError {
    /// The path on disk (backup) or inside the target (restore).
    pub path: PathBuf,
    pub error: String,
    /// True when the cause is damaged data in the store.
    pub corruption: bool,
}

impl EntryError {
    pub fn new(path: impl Into<PathBuf>, error: impl ToString) -> Self {
        EntryError {
            path: path.into(),
            error: error.to_string(),
            corruption: false,
        }
    }
}
