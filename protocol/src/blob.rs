//! The blob format: how a chunk, tree or snapshot is stored and sent.
//!
//! ```text
//! offset size  field
//! 0      3     magic "HSB"
//! 3      1     format version (1)
//! 4      1     kind   (0 chunk, 1 tree, 2 snapshot)
//! 5      1     codec  (0 raw, 1 zstd)
//! 6      4     plain length, u32 little-endian
//! 10     ...   payload: the plain bytes, or their zstd frame
//! ```
//! A payload is stored raw when zstd does not make it smaller (photos, video,
//! archives), so incompressible data costs 10 bytes, not zstd's overhead.
//! The blob id is the BLAKE3 of the plain bytes, never of the stored bytes, so
//! a change of codec or level never changes an id.

use crate::id::BlobId;

pub const MAGIC: &[u8; 3] = b"HSB";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 10;
/// No blob holds more than this many plain bytes; decoders refuse larger
/// claims before allocating anything.
pub const MAX_PLAIN_LEN: usize = 64 << 20;

/// The largest blob a client normally sends (a maximal chunk plus header),
/// for sizing buffers; larger blobs are legal but rarer.
pub const MAX_CHUNK_HINT: usize = (4 << 20) + HEADER_LEN;

/// What a blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlobKind {
    Chunk = 0,
    Tree = 1,
    Snapshot = 2,
}

impl BlobKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(BlobKind::Chunk),
            1 => Some(BlobKind::Tree),
            2 => Some(BlobKind::Snapshot),
            _ => None,
        }
    }
}

/// How a blob's payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Raw = 0,
    Zstd = 1,
}

/// Why bytes are not a valid blob. Every variant is corruption or hostility,
/// never a reason to panic.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlobError {
    #[error("blob is {0} bytes, shorter than its header")]
    Truncated(usize),
    #[error("bad blob magic")]
    BadMagic,
    #[error("unsupported blob version {0}")]
    Version(u8),
    #[error("unknown blob kind {0}")]
    Kind(u8),
    #[error("unknown blob codec {0}")]
    Codec(u8),
    #[error("blob claims {0} plain bytes, over the limit of {MAX_PLAIN_LEN}")]
    TooLarge(u64),
    #[error("raw blob payload is {got} bytes, header says {want}")]
    Length { got: usize, want: usize },
    #[error("zstd payload does not decompress: {0}")]
    Decompress(String),
    #[error("content hash mismatch: expected {expected}, got {actual}")]
    HashMismatch { expected: BlobId, actual: BlobId },
    #[error("expected a {expected:?} blob, found {found:?}")]
    WrongKind { expected: BlobKind, found: BlobKind },
}

/// A decoded blob header plus its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob<'a> {
    pub kind: BlobKind,
    pub codec: Codec,
    pub plain_len: usize,
    pub payload: &'a [u8],
}

impl<'a> Blob<'a> {
    /// Parses the header; checks sizes without decompressing.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, BlobError> {
        if bytes.len() < HEADER_LEN {
            return Err(BlobError::Truncated(bytes.len()));
        }
        if &bytes[..3] != MAGIC {
            return Err(BlobError::BadMagic);
        }
        if bytes[3] != VERSION {
            return Err(BlobError::Version(bytes[3]));
        }
        let kind = BlobKind::from_u8(bytes[4]).ok_or(BlobError::Kind(bytes[4]))?;
        let codec = match bytes[5] {
            0 => Codec::Raw,
            1 => Codec::Zstd,
            c => return Err(BlobError::Codec(c)),
        };
        let plain_len = u32::from_le_bytes(bytes[6..10].try_into().expect("4 bytes")) as usize;
        if plain_len > MAX_PLAIN_LEN {
            return Err(BlobError::TooLarge(plain_len as u64));
        }
        let payload = &bytes[HEADER_LEN..];
        if codec == Codec::Raw && payload.len() != plain_len {
            return Err(BlobError::Length {
                got: payload.len(),
                want: plain_len,
            });
        }
        Ok(Blob {
            kind,
            codec,
            plain_len,
            payload,
        })
    }

    /// The plain bytes. Output never exceeds the header's (bounded) length.
    pub fn plain(&self) -> Result<Vec<u8>, BlobError> {
        match self.codec {
            Codec::Raw => Ok(self.payload.to_vec()),
            Codec::Zstd => {
                let mut out = Vec::with_capacity(self.plain_len);
                // `decompress_to_buffer` never writes past the capacity we set.
                // One decompression context per thread: making one costs
                // more than decompressing a small blob.
                thread_local! {
                    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
                        const { std::cell::RefCell::new(None) };
                }
                let n = DECOMPRESSOR
                    .with(|d| {
                        let mut d = d.borrow_mut();
                        if d.is_none() {
                            *d = Some(zstd::bulk::Decompressor::new()?);
                        }
                        d.as_mut()
                            .expect("just made")
                            .decompress_to_buffer(self.payload, &mut out)
                    })
                    .map_err(|e| BlobError::Decompress(e.to_string()))?;
                if n != self.plain_len {
                    return Err(BlobError::Length {
                        got: n,
                        want: self.plain_len,
                    });
                }
                Ok(out)
            }
        }
    }

    /// The plain bytes, checked to hash to `expected` (in the id space of
    /// the blob's kind).
    pub fn plain_verified(&self, expected: BlobId) -> Result<Vec<u8>, BlobError> {
        let plain = self.plain()?;
        let actual = BlobId::of_kind(self.kind, &plain);
        if actual != expected {
            return Err(BlobError::HashMismatch { expected, actual });
        }
        Ok(plain)
    }
}

/// Decodes `bytes` into plain bytes of kind `kind` hashing to `id`.
pub fn decode_verified(bytes: &[u8], id: BlobId, kind: BlobKind) -> Result<Vec<u8>, BlobError> {
    let blob = Blob::parse(bytes)?;
    if blob.kind != kind {
        return Err(BlobError::WrongKind {
            expected: kind,
            found: blob.kind,
        });
    }
    blob.plain_verified(id)
}

/// Encodes blobs, reusing one zstd context (keep one per thread).
pub struct BlobEncoder {
    level: i32,
    compressor: zstd::bulk::Compressor<'static>,
    scratch: Vec<u8>,
}

impl BlobEncoder {
    pub fn new(level: i32) -> Self {
        BlobEncoder {
            level,
            compressor: zstd::bulk::Compressor::new(level).expect("zstd context"),
            scratch: Vec::new(),
        }
    }

    pub fn level(&self) -> i32 {
        self.level
    }

    /// The blob for `plain`: zstd when that is smaller, else raw.
    ///
    /// Panics if `plain` is longer than [`MAX_PLAIN_LEN`]; callers cut chunks
    /// and trees far below it.
    pub fn encode(&mut self, kind: BlobKind, plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(kind, plain, &mut out);
        out
    }

    /// Guesses from three 16 KiB samples whether zstd would fail to shrink
    /// `plain` (photos, video, archives): then compressing it all would
    /// cost most of a backup's CPU for nothing. Small inputs are just tried.
    fn looks_incompressible(&mut self, plain: &[u8]) -> bool {
        const SAMPLE: usize = 16 << 10;
        if plain.len() < 8 * SAMPLE {
            return false;
        }
        let mid = plain.len() / 2 - SAMPLE / 2;
        let mut sampled = 0;
        let mut packed = 0;
        for start in [0, mid, plain.len() - SAMPLE] {
            self.scratch.clear();
            self.scratch
                .reserve(zstd::zstd_safe::compress_bound(SAMPLE));
            let sample = &plain[start..start + SAMPLE];
            match self
                .compressor
                .compress_to_buffer(sample, &mut self.scratch)
            {
                Ok(n) => {
                    sampled += SAMPLE;
                    packed += n.min(SAMPLE);
                }
                Err(_) => return false,
            }
        }
        // Under 3% saved on the samples: store raw.
        packed * 100 >= sampled * 97
    }

    /// Like [`encode`](Self::encode), into a buffer the caller reuses, so
    /// a backup does not allocate megabytes per chunk.
    pub fn encode_into(&mut self, kind: BlobKind, plain: &[u8], out: &mut Vec<u8>) {
        assert!(plain.len() <= MAX_PLAIN_LEN, "blob over MAX_PLAIN_LEN");
        let bound = zstd::zstd_safe::compress_bound(plain.len());
        self.scratch.clear();
        self.scratch.reserve(bound);
        let compressed = if plain.len() >= 64 && !self.looks_incompressible(plain) {
            self.compressor
                .compress_to_buffer(plain, &mut self.scratch)
                .ok()
                .filter(|&n| n < plain.len())
        } else {
            None
        };
        let (codec, payload) = match compressed {
            Some(n) => (Codec::Zstd, &self.scratch[..n]),
            None => (Codec::Raw, plain),
        };
        out.clear();
        out.reserve(HEADER_LEN + payload.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(kind as u8);
        out.push(codec as u8);
        out.extend_from_slice(&(plain.len() as u32).to_le_bytes());
        out.extend_from_slice(payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn compressible_data_is_zstd_and_random_data_is_raw() {
        let mut enc = BlobEncoder::new(3);
        let text = b"hello homesync ".repeat(1000);
        let b = enc.encode(BlobKind::Chunk, &text);
        assert!(b.len() < text.len() / 10);
        assert_eq!(Blob::parse(&b).unwrap().codec, Codec::Zstd);
        let mut random = vec![0u8; 100_000];
        blake3::Hasher::new().finalize_xof().fill(&mut random);
        let b = enc.encode(BlobKind::Chunk, &random);
        assert_eq!(b.len(), random.len() + HEADER_LEN);
        assert_eq!(Blob::parse(&b).unwrap().codec, Codec::Raw);
    }

    #[test]
    fn large_random_chunks_skip_compression_and_text_does_not() {
        let mut enc = BlobEncoder::new(3);
        let mut random = vec![0u8; 1 << 20];
        blake3::Hasher::new().finalize_xof().fill(&mut random);
        assert!(enc.looks_incompressible(&random));
        let b = enc.encode(BlobKind::Chunk, &random);
        assert_eq!(Blob::parse(&b).unwrap().codec, Codec::Raw);
        // Random bytes with compressible text in the middle of the samples.
        let text = b"the quick brown fox jumps over the lazy dog. ".repeat(30_000);
        assert!(!enc.looks_incompressible(&text));
        assert_eq!(
            Blob::parse(&enc.encode(BlobKind::Chunk, &text))
                .unwrap()
                .codec,
            Codec::Zstd
        );
    }

    #[test]
    fn a_flipped_byte_is_caught() {
        let mut enc = BlobEncoder::new(3);
        let text = b"some file contents ".repeat(100);
        let id = BlobId::of(&text);
        let mut b = enc.encode(BlobKind::Chunk, &text);
        assert_eq!(decode_verified(&b, id, BlobKind::Chunk).unwrap(), text);
        let last = b.len() - 1;
        b[last] ^= 0x40;
        assert!(decode_verified(&b, id, BlobKind::Chunk).is_err());
        assert!(matches!(
            decode_verified(&enc.encode(BlobKind::Tree, &text), id, BlobKind::Chunk),
            Err(BlobError::WrongKind { .. })
        ));
    }

    #[test]
    fn a_zstd_bomb_claiming_little_is_refused() {
        // 10 MiB of zeros compresses to a few bytes; claim 100 plain bytes.
        let mut enc = BlobEncoder::new(3);
        let mut b = enc.encode(BlobKind::Chunk, &vec![0u8; 10 << 20]);
        b[6..10].copy_from_slice(&100u32.to_le_bytes());
        assert!(Blob::parse(&b).unwrap().plain().is_err());
    }

    proptest! {
        #[test]
        fn encoding_round_trips(data in proptest::collection::vec(any::<u8>(), 0..5000), rep in 1usize..20, level in 1i32..6) {
            let plain: Vec<u8> = data.iter().cycle().take(data.len() * rep).copied().collect();
            let mut enc = BlobEncoder::new(level);
            let b = enc.encode(BlobKind::Tree, &plain);
            let got = decode_verified(&b, BlobId::of_kind(BlobKind::Tree, &plain), BlobKind::Tree).unwrap();
            prop_assert_eq!(got, plain);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            if let Ok(b) = Blob::parse(&bytes) {
                let _ = b.plain();
            }
        }

        #[test]
        fn decoding_valid_headers_with_junk_never_panics(kind in 0u8..3, codec in 0u8..2, len in 0u32..100_000, junk in proptest::collection::vec(any::<u8>(), 0..500)) {
            let mut bytes = b"HSB\x01".to_vec();
            bytes.push(kind);
            bytes.push(codec);
            bytes.extend_from_slice(&len.to_le_bytes());
            bytes.extend_from_slice(&junk);
            if let Ok(p) = Blob::parse(&bytes).and_then(|b| b.plain()) {
                prop_assert_eq!(p.len(), len as usize);
            }
        }
    }
}
