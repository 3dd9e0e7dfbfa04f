//! Reading file metadata into nodes, and the low-level pieces shared by
//! backup and restore: xattrs (POSIX ACLs are xattrs), sparse data extents.

use crate::owners::Owners;
use homesync_protocol::{Node, NodeKind, Timestamp};
use rustix::fs::SeekFrom;
use std::fs::Metadata;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// The node kind of an lstat result.
pub fn kind_of(meta: &Metadata) -> NodeKind {
    let t = meta.file_type();
    if t.is_dir() {
        NodeKind::Dir
    } else if t.is_symlink() {
        NodeKind::Symlink
    } else if t.is_fifo() {
        NodeKind::Fifo
    } else if t.is_char_device() {
        NodeKind::CharDevice
    } else if t.is_block_device() {
        NodeKind::BlockDevice
    } else if t.is_socket() {
        NodeKind::Socket
    } else {
        NodeKind::File
    }
}

/// A node carrying everything lstat tells about `meta` (no contents yet).
pub fn node_from(name: Vec<u8>, meta: &Metadata, owners: &Owners) -> Node {
    let kind = kind_of(meta);
    let mut n = Node::new(name, kind);
    n.mode = meta.mode() & 0o7777;
    n.uid = meta.uid();
    n.gid = meta.gid();
    n.user = owners.user(n.uid).map(str::to_string);
    n.group = owners.group(n.gid).map(str::to_string);
    n.mtime = Timestamp {
        sec: meta.mtime(),
        nsec: meta.mtime_nsec() as u32,
    };
    if matches!(kind, NodeKind::CharDevice | NodeKind::BlockDevice) {
        n.rdev = meta.rdev();
    }
    if kind == NodeKind::File {
        n.size = meta.size();
    }
    n
}

/// All extended attributes of `path` (not following a symlink), sorted.
/// A file system without xattr support simply has none.
pub fn read_xattrs(path: &Path) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let unsupported = |e: rustix::io::Errno| e == rustix::io::Errno::NOTSUP;
    let mut list = vec![0u8; 1024];
    let n = loop {
        match rustix::fs::llistxattr(path, &mut list[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => {
                let need = rustix::fs::llistxattr_query(path)?;
                list.resize(need.max(list.len() * 2), 0);
            }
            Err(e) if unsupported(e) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for name in list[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let mut value = vec![0u8; 256];
        loop {
            match rustix::fs::lgetxattr(path, name, &mut value[..]) {
                Ok(len) => {
                    value.truncate(len);
                    break;
                }
                Err(rustix::io::Errno::RANGE) => {
                    let need = rustix::fs::lgetxattr_query(path, name)?;
                    value.resize(need.max(value.len() * 2), 0);
                }
                // Removed between list and get: it no longer exists.
                Err(rustix::io::Errno::NODATA) => {
                    value.clear();
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        out.push((name.to_vec(), value));
    }
    out.sort();
    Ok(out)
}

/// The data regions of an open file of `size` bytes (SEEK_DATA/SEEK_HOLE).
/// Returns `None` when the file has no holes, so dense files stay simple.
pub fn data_extents<F: AsFd>(fd: F, size: u64) -> std::io::Result<Option<Vec<(u64, u64)>>> {
    let mut extents = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match rustix::fs::seek(&fd, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break, // only a hole remains
            Err(rustix::io::Errno::INVAL) => return Ok(None), // no SEEK_DATA support
            Err(e) => return Err(e.into()),
        };
        if start >= size {
            break;
        }
        let end = rustix::fs::seek(&fd, SeekFrom::Hole(start))?.min(size);
        extents.push((start, end - start));
        pos = end;
    }
    rustix::fs::seek(&fd, SeekFrom::Start(0))?;
    if extents.len() == 1 && extents[0] == (0, size) {
        return Ok(None);
    }
    Ok(Some(extents))
}

/// True when a file of `meta` may have holes worth looking for.
pub fn maybe_sparse(meta: &Metadata) -> bool {
    meta.blocks().saturating_mul(512) < meta.size()
}
