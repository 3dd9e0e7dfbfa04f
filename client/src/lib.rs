//! homesync's client engine: scan a home, back it up into a [`Repository`],
//! browse snapshots, and restore them faithfully.
//!
//! The engine knows stores only through [`homesync_protocol::Repository`]:
//! the embedded store and (later) a QUIC connection look the same to it.

pub mod backup;
pub mod base;
pub mod browse;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dirty;
pub mod error;
pub mod exclude;
pub mod filecache;
pub mod meta;
pub mod owners;
mod pending_file;
pub mod power;
pub mod progress;
pub mod remote;
pub mod restore;
pub mod scan;
pub mod watch;

pub use error::{ClientError, EntryError};
pub use progress::Progress;
