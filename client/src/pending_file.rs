//! A restored file before it is complete: contents and metadata go to a
//! file without a name (`O_TMPFILE`), linked into place once complete, so
//! nobody (the user logged in during the restore, a resumed run) ever sees
//! a half-written file under its real name.
//!
//! Why unnamed rather than a temporary name renamed into place: on ext4
//! the temporary name costs a directory entry made and removed per file
//! (create + rename were an eighth of a restore's CPU), and a killed
//! restore leaves nothing behind to clean up. Where the file system has no
//! unnamed files, a temporary name (`.homesync-PID-N.tmp`) is used instead;
//! an interrupted run's leftovers of that kind are removed by the next.

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The prefix and suffix of temporary names (see [`is_leftover`]).
const TMP_PREFIX: &[u8] = b".homesync-";
const TMP_SUFFIX: &[u8] = b".tmp";

/// A name no snapshot entry of ours would be left under: one this process
/// made for a file it had not finished.
fn tmp_name() -> String {
    format!(
        ".homesync-{}-{}.tmp",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Relaxed)
    )
}

/// Whether `name` is a temporary name an interrupted restore may have left.
pub fn is_leftover(name: &[u8]) -> bool {
    name.starts_with(TMP_PREFIX) && name.ends_with(TMP_SUFFIX)
}

/// A file being restored in a directory (see the module docs).
pub struct PendingFile {
    file: File,
    /// `None` while unnamed; otherwise the temporary name it has.
    tmp: Option<String>,
}

impl PendingFile {
    /// A new, empty file in `dir`, owner-only until its metadata is set.
    pub fn create(dir: &OwnedFd) -> Result<PendingFile, Errno> {
        let mode = Mode::from_raw_mode(0o600);
        match rustix::fs::openat(
            dir,
            ".",
            OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC,
            mode,
        ) {
            Ok(fd) => {
                return Ok(PendingFile {
                    file: File::from(fd),
                    tmp: None,
                });
            }
            // No unnamed files on this file system (or this kernel).
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL | Errno::NOENT) => {}
            Err(e) => return Err(e),
        }
        let tmp = tmp_name();
        let fd = rustix::fs::openat(
            dir,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            mode,
        )?;
        Ok(PendingFile {
            file: File::from(fd),
            tmp: Some(tmp),
        })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Puts the complete file at `name` in `dir`, replacing a
    /// non-directory there in one step.
    pub fn publish(self, dir: &OwnedFd, name: &OsStr) -> Result<(), Errno> {
        let tmp = match self.tmp {
            Some(tmp) => tmp,
            None => match link(&self.file, dir, name) {
                // Something is there (a run over an older restore): give
                // the file a temporary name, then rename it over that.
                Err(Errno::EXIST) => {
                    let tmp = tmp_name();
                    link(&self.file, dir, OsStr::new(&tmp))?;
                    tmp
                }
                done => return done,
            },
        };
        rustix::fs::renameat(dir, tmp.as_str(), dir, name).inspect_err(|_| {
            let _ = rustix::fs::unlinkat(dir, tmp.as_str(), AtFlags::empty());
        })
    }

    /// Gives up on the file: an unnamed one vanishes when closed.
    pub fn discard(self, dir: &OwnedFd) {
        if let Some(tmp) = &self.tmp {
            let _ = rustix::fs::unlinkat(dir, tmp.as_str(), AtFlags::empty());
        }
    }
}

/// Links the unnamed `file` at `name` in `dir`. `AT_EMPTY_PATH` needs
/// `CAP_DAC_READ_SEARCH` (root has it); anyone else goes through the file's
/// `/proc/self/fd` link.
fn link(file: &File, dir: &OwnedFd, name: &OsStr) -> Result<(), Errno> {
    match rustix::fs::linkat(file.as_fd(), "", dir, name, AtFlags::EMPTY_PATH) {
        Err(Errno::NOENT | Errno::PERM) => link_through_proc(file, dir, name),
        done => done,
    }
}

/// [`link`] without `CAP_DAC_READ_SEARCH`.
fn link_through_proc(file: &File, dir: &OwnedFd, name: &OsStr) -> Result<(), Errno> {
    rustix::fs::linkat(
        rustix::fs::CWD,
        format!("/proc/self/fd/{}", file.as_raw_fd()).as_str(),
        dir,
        name,
        AtFlags::SYMLINK_FOLLOW,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn open_dir(path: &std::path::Path) -> OwnedFd {
        rustix::fs::open(path, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap()
    }

    /// Names in `dir`, sorted, without `.` and `..`.
    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_pending_file_has_no_name_until_published() {
        let t = tempfile::tempdir().unwrap();
        let dir = open_dir(t.path());
        let pending = PendingFile::create(&dir).unwrap();
        pending.file().write_all(b"contents").unwrap();
        // tmpfs and ext4 both have unnamed files: nothing shows yet.
        assert_eq!(names(t.path()), Vec::<String>::new());
        pending.publish(&dir, OsStr::new("f")).unwrap();
        assert_eq!(names(t.path()), ["f"]);
        assert_eq!(std::fs::read(t.path().join("f")).unwrap(), b"contents");
    }

    #[test]
    fn publishing_replaces_a_file_already_there_and_leaves_no_temporary_name() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), b"old").unwrap();
        let dir = open_dir(t.path());
        let pending = PendingFile::create(&dir).unwrap();
        pending.file().write_all(b"new").unwrap();
        pending.publish(&dir, OsStr::new("f")).unwrap();
        assert_eq!(names(t.path()), ["f"]);
        assert_eq!(std::fs::read(t.path().join("f")).unwrap(), b"new");
    }

    #[test]
    fn a_discarded_file_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let dir = open_dir(t.path());
        let pending = PendingFile::create(&dir).unwrap();
        pending.file().write_all(b"partial").unwrap();
        pending.discard(&dir);
        assert_eq!(names(t.path()), Vec::<String>::new());
    }

    #[test]
    fn publishing_onto_a_directory_fails_and_leaves_nothing_else() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        let dir = open_dir(t.path());
        let pending = PendingFile::create(&dir).unwrap();
        assert!(pending.publish(&dir, OsStr::new("d")).is_err());
        assert_eq!(names(t.path()), ["d"]);
    }

    #[test]
    fn an_unnamed_file_links_without_privileges_too() {
        let t = tempfile::tempdir().unwrap();
        let dir = open_dir(t.path());
        let pending = PendingFile::create(&dir).unwrap();
        assert!(pending.tmp.is_none(), "tmpfs and ext4 have unnamed files");
        pending.file().write_all(b"as a user").unwrap();
        // What a restore not running as root does (AT_EMPTY_PATH needs
        // CAP_DAC_READ_SEARCH).
        link_through_proc(pending.file(), &dir, OsStr::new("f")).unwrap();
        assert_eq!(std::fs::read(t.path().join("f")).unwrap(), b"as a user");
    }

    #[test]
    fn leftovers_are_only_our_temporary_names() {
        assert!(is_leftover(tmp_name().as_bytes()));
        assert!(!is_leftover(b".homesync-notes"));
        assert!(!is_leftover(b"report.tmp"));
    }
}
