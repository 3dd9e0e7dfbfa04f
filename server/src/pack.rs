//! The pack format: many blobs back to back, then a trailer listing them, so
//! the index can be rebuilt from the packs alone.
//!
//! ```text
//! header   "HSPK" version(1) 0 0 0                       8 bytes
//! blobs    each a complete blob (see homesync_protocol::blob)
//! trailer  per blob: id[32] kind u8 offset u64 length u32  45 bytes each
//! footer   nonce[16] count u32, "HSPT"                   24 bytes
//! ```
//! All integers little-endian. A pack's name is the BLAKE3 hex of its bytes:
//! packs are immutable and content-named, so they can live on object storage.
//! The random nonce (version 2) makes every pack's name unique: otherwise a
//! pack of the same blobs written again (the same trees uploaded after
//! garbage collection removed them) would get the name of a pack being
//! deleted, and the deletion could take the new file with it. Version 1
//! packs (no nonce, 8-byte footer) are still read.

use homesync_protocol::{BlobId, BlobKind};

pub const MAGIC: &[u8; 4] = b"HSPK";
pub const FOOTER_MAGIC: &[u8; 4] = b"HSPT";
pub const VERSION: u8 = 2;
pub const HEADER_LEN: usize = 8;
/// Entry count and magic at the very end.
pub const FOOTER_LEN: usize = 8;
/// Version 2: random bytes between the trailer and the footer.
pub const NONCE_LEN: usize = 16;
/// One trailer entry: id, kind, offset, length.
pub const ENTRY_LEN: usize = 45;

/// Where one blob sits in a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PackEntry {
    pub id: BlobId,
    pub kind: BlobKind,
    pub offset: u64,
    pub length: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PackError {
    #[error("pack is {0} bytes, too short for header and footer")]
    Truncated(usize),
    #[error("bad pack magic")]
    BadMagic,
    #[error("unsupported pack version {0}")]
    Version(u8),
    #[error("pack trailer is inconsistent: {0}")]
    BadTrailer(&'static str),
}

/// A pack being filled in memory.
pub struct PackWriter {
    bytes: Vec<u8>,
    entries: Vec<PackEntry>,
}

impl Default for PackWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl PackWriter {
    pub fn new() -> Self {
        Self::with_capacity(0)
    }

    /// A writer whose buffer will not reallocate below `capacity` bytes
    /// (a pack's target size plus one blob): growth by doubling would
    /// otherwise leave a 32 MiB buffer for a 16 MiB pack.
    pub fn with_capacity(capacity: usize) -> Self {
        Self::reusing(Vec::with_capacity(capacity))
    }

    /// A writer filling `buffer` (cleared first): the store recycles the
    /// buffer of a written pack rather than allocating a new one.
    pub fn reusing(mut bytes: Vec<u8>) -> Self {
        bytes.clear();
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&[VERSION, 0, 0, 0]);
        PackWriter {
            bytes,
            entries: Vec::new(),
        }
    }

    /// Appends an encoded blob; returns its offset in the pack.
    pub fn add(&mut self, id: BlobId, kind: BlobKind, blob: &[u8]) -> u64 {
        let offset = self.bytes.len() as u64;
        self.bytes.extend_from_slice(blob);
        self.entries.push(PackEntry {
            id,
            kind,
            offset,
            length: blob.len() as u32,
        });
        offset
    }

    /// The encoded blob at `offset`..`offset+len`, while still in memory.
    pub fn slice(&self, offset: u64, len: u32) -> &[u8] {
        &self.bytes[offset as usize..offset as usize + len as usize]
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends trailer and footer; returns the pack's name, bytes and entries.
    pub fn finish(mut self) -> (String, Vec<u8>, Vec<PackEntry>) {
        self.bytes
            .reserve_exact(self.entries.len() * ENTRY_LEN + NONCE_LEN + FOOTER_LEN);
        for e in &self.entries {
            self.bytes.extend_from_slice(&e.id.0);
            self.bytes.push(e.kind as u8);
            self.bytes.extend_from_slice(&e.offset.to_le_bytes());
            self.bytes.extend_from_slice(&e.length.to_le_bytes());
        }
        let mut nonce = [0u8; NONCE_LEN];
        // Without randomness the name is merely content-derived, as in
        // version 1: still correct, only open to the rare race above.
        let _ = getrandom::fill(&mut nonce);
        self.bytes.extend_from_slice(&nonce);
        self.bytes
            .extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(FOOTER_MAGIC);
        let name = blake3::hash(&self.bytes).to_hex().to_string();
        (name, self.bytes, self.entries)
    }
}

/// Whether `bytes` still hash to the pack name `name` (packs are named by
/// the BLAKE3 of their bytes): if so every byte of the pack, trailer
/// included, is as it was written. Hashing runs at several GB/s, far
/// faster than decompressing and re-hashing each blob.
pub fn named_by_content(name: &str, bytes: &[u8]) -> bool {
    blake3::hash(bytes).to_hex().as_str() == name
}

/// Lists the blobs of a whole pack from its trailer (for index rebuilds and
/// checks). Bounds are checked; nothing is trusted.
pub fn read_entries(pack: &[u8]) -> Result<Vec<PackEntry>, PackError> {
    if pack.len() < HEADER_LEN + FOOTER_LEN {
        return Err(PackError::Truncated(pack.len()));
    }
    let (start, len) = trailer_span(
        &pack[..HEADER_LEN],
        &pack[pack.len() - FOOTER_LEN..],
        pack.len() as u64,
    )?;
    parse_trailer(&pack[start as usize..start as usize + len], start)
}

/// Where the trailer of a pack of `pack_len` bytes lies (offset, length),
/// from its first and last 8 bytes: a pack's blobs can be listed without
/// reading them.
pub fn trailer_span(
    header: &[u8],
    footer: &[u8],
    pack_len: u64,
) -> Result<(u64, usize), PackError> {
    if pack_len < (HEADER_LEN + FOOTER_LEN) as u64
        || header.len() != HEADER_LEN
        || footer.len() != FOOTER_LEN
    {
        return Err(PackError::Truncated(pack_len as usize));
    }
    if &header[..4] != MAGIC || &footer[4..] != FOOTER_MAGIC {
        return Err(PackError::BadMagic);
    }
    let nonce = match header[4] {
        1 => 0,
        2 => NONCE_LEN as u64,
        v => return Err(PackError::Version(v)),
    };
    let count = u32::from_le_bytes(footer[..4].try_into().expect("4")) as u64;
    let trailer_len = count
        .checked_mul(ENTRY_LEN as u64)
        .filter(|&l| l + (HEADER_LEN + FOOTER_LEN) as u64 + nonce <= pack_len)
        .ok_or(PackError::BadTrailer("entry count larger than the pack"))?;
    Ok((
        pack_len - FOOTER_LEN as u64 - nonce - trailer_len,
        trailer_len as usize,
    ))
}

/// The entries of a trailer that starts at `data_end` (where the blob area
/// ends); every entry must lie within the blob area.
pub fn parse_trailer(trailer: &[u8], data_end: u64) -> Result<Vec<PackEntry>, PackError> {
    if !trailer.len().is_multiple_of(ENTRY_LEN) {
        return Err(PackError::BadTrailer(
            "trailer is not a whole number of entries",
        ));
    }
    let mut out = Vec::with_capacity(trailer.len() / ENTRY_LEN);
    for e in trailer.chunks_exact(ENTRY_LEN) {
        let id = BlobId(e[..32].try_into().expect("32"));
        let kind = BlobKind::from_u8(e[32]).ok_or(PackError::BadTrailer("unknown blob kind"))?;
        let offset = u64::from_le_bytes(e[33..41].try_into().expect("8"));
        let length = u32::from_le_bytes(e[41..45].try_into().expect("4"));
        if offset < HEADER_LEN as u64 || offset.saturating_add(length as u64) > data_end {
            return Err(PackError::BadTrailer("blob outside the data area"));
        }
        out.push(PackEntry {
            id,
            kind,
            offset,
            length,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_lists_what_was_added() {
        let mut w = PackWriter::new();
        let a = w.add(BlobId([1; 32]), BlobKind::Chunk, b"hello");
        let b = w.add(BlobId([2; 32]), BlobKind::Tree, b"world!");
        let (name, bytes, entries) = w.finish();
        assert_eq!(name, blake3::hash(&bytes).to_hex().to_string());
        assert!(named_by_content(&name, &bytes));
        let mut flipped = bytes.clone();
        flipped[a as usize] ^= 1;
        assert!(!named_by_content(&name, &flipped));
        assert!(!named_by_content("not-a-hash", &bytes));
        let read = read_entries(&bytes).unwrap();
        assert_eq!(read, entries);
        assert_eq!(read[0].offset, a);
        assert_eq!(&bytes[b as usize..b as usize + 6], b"world!");
    }

    #[test]
    fn the_same_blobs_make_packs_of_different_names() {
        let pack = || {
            let mut w = PackWriter::new();
            w.add(BlobId([1; 32]), BlobKind::Tree, b"same");
            w.finish()
        };
        let (a, b) = (pack(), pack());
        assert_ne!(a.0, b.0);
        assert_eq!(read_entries(&a.1).unwrap(), read_entries(&b.1).unwrap());
        // A version 1 pack: no nonce.
        let mut v1 = a.1.clone();
        v1[4] = 1;
        let footer = v1.split_off(v1.len() - 24);
        v1.extend_from_slice(&footer[16..]);
        assert_eq!(read_entries(&v1).unwrap(), a.2);
    }

    #[test]
    fn the_trailer_alone_lists_the_same_blobs() {
        let mut w = PackWriter::new();
        w.add(BlobId([1; 32]), BlobKind::Chunk, b"hello");
        w.add(BlobId([2; 32]), BlobKind::Tree, b"world!");
        let (_, bytes, entries) = w.finish();
        let n = bytes.len();
        let (start, len) =
            trailer_span(&bytes[..HEADER_LEN], &bytes[n - FOOTER_LEN..], n as u64).unwrap();
        assert_eq!(start as usize + len + NONCE_LEN + FOOTER_LEN, n);
        assert_eq!(
            parse_trailer(&bytes[start as usize..start as usize + len], start).unwrap(),
            entries
        );
        // A footer claiming more entries than fit is refused.
        let mut footer = bytes[n - FOOTER_LEN..].to_vec();
        footer[0] = 200;
        assert!(trailer_span(&bytes[..HEADER_LEN], &footer, n as u64).is_err());
        assert!(parse_trailer(&bytes[start as usize..start as usize + len - 1], start).is_err());
    }

    #[test]
    fn damaged_packs_are_refused_not_panicked_on() {
        let mut w = PackWriter::new();
        w.add(BlobId([1; 32]), BlobKind::Chunk, b"hello");
        let (_, bytes, _) = w.finish();
        for cut in 0..bytes.len() {
            let _ = read_entries(&bytes[..cut]);
        }
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 8] = 200; // count far beyond the pack
        assert!(read_entries(&bad).is_err());
    }
}
