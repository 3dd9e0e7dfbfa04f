//! Copies of the SQLite index, kept where the packs are, so that losing the
//! server machine (or its index file) loses no backups.
//!
//! The blob rows could be rebuilt from the pack trailers alone; a copy also
//! keeps what packs cannot tell: credentials (`machines`), forgotten
//! snapshots staying forgotten, jobs' history. `homesync admin
//! rebuild-index` starts from the newest sound copy and adds the packs
//! written after it (see [`crate::rebuild`]).
//!
//! A copy is taken with SQLite's online backup API in one step, under one
//! read transaction: a consistent image even while backups commit (they
//! wait for nothing; WAL readers do not block writers). Copies are named
//! `TIME-NONCE.sqlite` (unix milliseconds, zero-padded, so names sort by
//! time) under `index/` in the bucket, or `index-copies/` in the store
//! directory when the packs are local (there it guards against a damaged
//! index file, not a lost disk). The newest [`KEEP`] are kept.

use crate::s3::S3Backend;
use crate::store::Store;
use homesync_protocol::StoreError;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Copies kept; older ones are deleted after a new one is stored.
pub const KEEP: usize = 3;
/// The directory of copies in a store directory with local packs.
pub const LOCAL_DIR: &str = "index-copies";
const BUCKET_DIR: &str = "index/";

/// Where copies are kept.
pub enum Place<'a> {
    Bucket(&'a S3Backend),
    Dir(PathBuf),
}

impl Place<'_> {
    /// The place for the store in `dir` whose packs are in `bucket`, if any.
    pub fn of<'a>(dir: &Path, bucket: Option<&'a S3Backend>) -> Place<'a> {
        match bucket {
            Some(b) => Place::Bucket(b),
            None => Place::Dir(dir.join(LOCAL_DIR)),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Place::Bucket(b) => format!("{BUCKET_DIR} in {}", b.config().describe()),
            Place::Dir(d) => d.display().to_string(),
        }
    }

    /// Names of the copies, oldest first.
    pub fn list(&self) -> Result<Vec<String>, StoreError> {
        let mut names: Vec<String> = match self {
            Place::Bucket(b) => b
                .list_objects(BUCKET_DIR)?
                .into_iter()
                .filter_map(|(k, _)| k.strip_prefix(BUCKET_DIR).map(str::to_string))
                .collect(),
            Place::Dir(d) => match std::fs::read_dir(d) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(source) => {
                    return Err(StoreError::Io {
                        context: format!("listing {}", d.display()),
                        source,
                    });
                }
                Ok(rd) => rd
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect(),
            },
        };
        names.retain(|n| n.ends_with(".sqlite") && !n.starts_with('.'));
        names.sort();
        Ok(names)
    }

    pub fn get(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        let missing = || StoreError::NotFound(format!("index copy {name} in {}", self.describe()));
        match self {
            Place::Bucket(b) => b
                .get_rel(&format!("{BUCKET_DIR}{name}"))?
                .ok_or_else(missing),
            Place::Dir(d) => std::fs::read(d.join(name)).map_err(|source| StoreError::Io {
                context: format!("reading {}", d.join(name).display()),
                source,
            }),
        }
    }

    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        match self {
            Place::Bucket(b) => b.put_rel(&format!("{BUCKET_DIR}{name}"), bytes),
            Place::Dir(d) => {
                std::fs::create_dir_all(d).map_err(|source| StoreError::Io {
                    context: format!("creating {}", d.display()),
                    source,
                })?;
                crate::backend::write_durably(&d.join(name), bytes)
            }
        }
    }

    fn delete(&self, name: &str) -> Result<(), StoreError> {
        match self {
            Place::Bucket(b) => b.delete_rel(&format!("{BUCKET_DIR}{name}")),
            Place::Dir(d) => match std::fs::remove_file(d.join(name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::Io {
                    context: format!("deleting {}", d.join(name).display()),
                    source: e,
                }),
                _ => Ok(()),
            },
        }
    }
}

/// A copy just stored.
#[derive(Debug, Clone)]
pub struct Saved {
    pub name: String,
    pub bytes: u64,
    pub place: String,
    /// Older copies deleted.
    pub pruned: usize,
}

fn sqlite(what: String) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |e| StoreError::Index(format!("{what}: {e}"))
}

/// Takes a consistent copy of the store's index and stores it beside the
/// packs, then deletes all but the newest [`KEEP`] copies.
pub fn save(store: &Store) -> Result<Saved, StoreError> {
    let index = store.dir().join("index.sqlite");
    let tmp = store
        .dir()
        .join(format!(".index-copy-{}.tmp", std::process::id()));
    let result = (|| {
        let _ = std::fs::remove_file(&tmp);
        let src = Connection::open_with_flags(&index, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(sqlite(format!("opening {}", index.display())))?;
        src.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(sqlite(index.display().to_string()))?;
        let mut dst =
            Connection::open(&tmp).map_err(sqlite(format!("creating {}", tmp.display())))?;
        {
            let backup = rusqlite::backup::Backup::new(&src, &mut dst)
                .map_err(sqlite(format!("copying {}", index.display())))?;
            // All pages in one step: one read transaction, one image.
            loop {
                match backup
                    .step(-1)
                    .map_err(sqlite(format!("copying {}", index.display())))?
                {
                    rusqlite::backup::StepResult::Done => break,
                    _ => std::thread::sleep(std::time::Duration::from_millis(50)),
                }
            }
        }
        drop(dst);
        std::fs::read(&tmp).map_err(|source| StoreError::Io {
            context: format!("reading {}", tmp.display()),
            source,
        })
    })();
    let _ = std::fs::remove_file(&tmp);
    let bytes = result?;
    let place = Place::of(store.dir(), store.bucket());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let mut nonce = [0u8; 4];
    getrandom::fill(&mut nonce).map_err(|e| StoreError::Refused(format!("no randomness: {e}")))?;
    let name = format!("{now:016}-{}.sqlite", homesync_protocol::id::hex(&nonce));
    place.put(&name, &bytes)?;
    let names = place.list()?;
    let mut pruned = 0;
    if names.len() > KEEP {
        for old in &names[..names.len() - KEEP] {
            place.delete(old)?;
            pruned += 1;
        }
    }
    Ok(Saved {
        name,
        bytes: bytes.len() as u64,
        place: place.describe(),
        pruned,
    })
}
