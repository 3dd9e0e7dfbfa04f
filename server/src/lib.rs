//! homesync's store: packs of blobs on a [`backend::PackBackend`] plus a
//! SQLite index saying where each blob lives and which snapshots exist.
//!
//! The embedded default store is this crate used in-process; the QUIC
//! server puts the same [`Store`] behind the network.

pub mod auth;
pub mod backend;
pub mod check;
pub mod config;
pub mod gc;
pub mod index;
pub mod index_copy;
pub mod jobs;
pub mod pack;
pub mod rebuild;
pub mod retention;
pub mod s3;
pub mod serve_config;
pub mod service;
pub mod store;

pub use store::{OpenOptions, Store};
