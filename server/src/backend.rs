//! Where pack files live. Packs are written once, never modified, and named
//! by the hash of their bytes, so a backend needs only put, ranged get and
//! list: a local directory ([`LocalDir`]) or an S3-compatible bucket
//! ([`crate::s3::S3Backend`]).

use homesync_protocol::StoreError;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

pub trait PackBackend: Send + Sync {
    /// Stores a pack durably: when this returns, the bytes survive a crash.
    fn put(&self, name: &str, data: &[u8]) -> Result<(), StoreError>;
    /// `len` bytes of pack `name` from `offset`.
    fn read_at(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>, StoreError>;
    /// The whole pack.
    fn read(&self, name: &str) -> Result<Vec<u8>, StoreError>;
    /// Names of all packs.
    fn list(&self) -> Result<Vec<String>, StoreError>;
    /// Removes a pack (garbage collection); a pack already gone is no error.
    fn delete(&self, name: &str) -> Result<(), StoreError>;
    /// The size of pack `name` in bytes; `None` when there is no such pack.
    fn size(&self, name: &str) -> Result<Option<u64>, StoreError>;
    /// Packs worth writing at once: one for a local disk (fsyncs queue
    /// anyway), several for object storage, where each upload waits on
    /// round trips and replication.
    fn parallel_writes(&self) -> usize {
        1
    }
    /// The bucket, when packs live in one (index copies go there too).
    fn s3(&self) -> Option<&crate::s3::S3Backend> {
        None
    }
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { context, source }
}

/// Writes `data` to `path` so that after return either the old file or the
/// whole new one exists, never a torn one: temp file, fsync, rename, fsync
/// of the directory.
pub fn write_durably(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().expect("file path has a parent");
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        path.file_name().expect("file name").to_string_lossy()
    ));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if let Err(e) = result {
        // Leave nothing half-written behind (a full disk must not fill it further).
        let _ = std::fs::remove_file(&tmp);
        return Err(StoreError::Io {
            context: format!("writing {}", path.display()),
            source: e,
        });
    }
    Ok(())
}

/// Packs in `DIR/xx/NAME`, `xx` being the name's first two hex digits, so no
/// directory grows past a few thousand entries.
pub struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    pub fn new(root: PathBuf) -> Self {
        LocalDir { root }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(&name[..2.min(name.len())]).join(name)
    }
}

impl PackBackend for LocalDir {
    fn put(&self, name: &str, data: &[u8]) -> Result<(), StoreError> {
        let path = self.path(name);
        let dir = path.parent().expect("pack path has a parent");
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
            File::open(&self.root)
                .and_then(|d| d.sync_all())
                .map_err(io(format!("syncing {}", self.root.display())))?;
        }
        write_durably(&path, data)
    }

    fn read_at(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        let path = self.path(name);
        let mut f = File::open(&path).map_err(io(format!("opening pack {}", path.display())))?;
        // Read into fresh capacity (`read_to_end` does not zero it first,
        // as `vec![0; len]` would: restores read gigabytes this way).
        let mut buf = Vec::with_capacity(len);
        f.seek(std::io::SeekFrom::Start(offset))
            .and_then(|_| (&mut f).take(len as u64).read_to_end(&mut buf))
            .and_then(|n| match n == len {
                true => Ok(()),
                false => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("only {n} bytes are there: the pack is shorter"),
                )),
            })
            .map_err(io(format!(
                "reading {len} bytes at {offset} of pack {}",
                path.display()
            )))?;
        Ok(buf)
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.path(name);
        std::fs::read(&path).map_err(io(format!("reading pack {}", path.display())))
    }

    fn list(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let rd = |p: &Path| std::fs::read_dir(p).map_err(io(format!("listing {}", p.display())));
        for sub in rd(&self.root)? {
            let sub = sub.map_err(io(format!("listing {}", self.root.display())))?;
            if !sub.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            for f in rd(&sub.path())? {
                let f = f.map_err(io(format!("listing {}", sub.path().display())))?;
                let name = f.file_name().to_string_lossy().into_owned();
                if !name.starts_with('.') {
                    out.push(name);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, name: &str) -> Result<(), StoreError> {
        let path = self.path(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io(format!("deleting pack {}", path.display()))(e))
            }
            _ => Ok(()),
        }
    }

    fn size(&self, name: &str) -> Result<Option<u64>, StoreError> {
        let path = self.path(name);
        match std::fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io {
                context: format!("stat of pack {}", path.display()),
                source: e,
            }),
        }
    }
}
