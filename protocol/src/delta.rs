//! Sub-chunk deltas: how a chunk that changed a little travels as a few
//! kilobytes instead of a megabyte.
//!
//! A delta is a *transfer encoding only*: the server applies it to the base
//! chunk it already holds, re-hashes the result with BLAKE3 and stores the
//! full chunk, so nothing in the store ever depends on a delta chain.
//! fast_rsync's own checks (CRC32 + truncated MD4) only pick matching
//! blocks; they are not trusted for correctness.
//!
//! Signature: fast_rsync's serialised form (librsync MD4 format), block
//! size chosen from the base's length like rsync does (about its square
//! root), 8 bytes of MD4 per block. Delta payload: one format byte, then
//! either the raw fast_rsync delta (`0`) or a `u32` little-endian raw
//! length and a zstd frame of it (`1`), whichever is smaller.

pub use fast_rsync::Signature;
use fast_rsync::SignatureOptions;

/// Bytes of MD4 kept per block: a false match costs only a refused delta
/// (the client then sends the chunk whole), never a wrong chunk.
const CRYPTO_HASH: u32 = 8;
/// Block sizes the client accepts in a signature from the server.
const MIN_BLOCK: u32 = 256;
const MAX_BLOCK: u32 = 64 << 10;
const RAW: u8 = 0;
const ZSTD: u8 = 1;

/// Why a signature or delta was not usable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeltaError {
    #[error("malformed signature: {0}")]
    Signature(String),
    #[error("malformed delta: {0}")]
    Delta(String),
    #[error("delta would produce more than {0} bytes")]
    TooLarge(usize),
}

/// The largest tree a delta may produce: larger trees travel whole, so a
/// delta request never makes the server build more than this.
pub const MAX_TREE_OUTPUT: usize = 16 << 20;

/// The rsync rule of thumb: block size near the square root of the base's
/// length (a power of two, 512 B to 4 KiB). Smaller blocks find shorter
/// matches but make the signature larger: a 1 MiB chunk gets 1 KiB blocks
/// and a 12 KiB signature.
pub fn block_size(len: usize) -> u32 {
    let root = (len as f64).sqrt() as u32;
    root.next_power_of_two().clamp(512, 4096)
}

/// The signature of `base`, to send to whoever will encode against it.
pub fn signature(base: &[u8]) -> Vec<u8> {
    Signature::calculate(
        base,
        SignatureOptions {
            block_size: block_size(base.len()),
            crypto_hash_size: CRYPTO_HASH,
        },
    )
    .into_serialized()
}

/// Parses a signature that came over the network or from a cache,
/// refusing parameters fast_rsync would panic on or that make no sense.
pub fn parse_signature(bytes: Vec<u8>) -> Result<Signature, DeltaError> {
    let bad = |why: &str| DeltaError::Signature(why.to_string());
    let field = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
    };
    let block = field(4).ok_or_else(|| bad("truncated header"))?;
    let hash = field(8).ok_or_else(|| bad("truncated header"))?;
    if !(MIN_BLOCK..=MAX_BLOCK).contains(&block) {
        return Err(bad(&format!("block size {block}")));
    }
    if !(4..=16).contains(&hash) {
        return Err(bad(&format!("hash size {hash}")));
    }
    Signature::deserialize(bytes).map_err(|e| DeltaError::Signature(e.to_string()))
}

/// Encodes `data` as a delta against the base `signature` describes,
/// compressed when that helps.
pub fn encode(signature: &Signature, data: &[u8], zstd_level: i32) -> Result<Vec<u8>, DeltaError> {
    let mut raw = Vec::new();
    fast_rsync::diff(&signature.index(), data, &mut raw)
        .map_err(|e| DeltaError::Delta(e.to_string()))?;
    let packed = zstd::bulk::compress(&raw, zstd_level).ok();
    Ok(match packed {
        Some(z) if z.len() + 4 < raw.len() => {
            let mut out = Vec::with_capacity(5 + z.len());
            out.push(ZSTD);
            out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
            out.extend_from_slice(&z);
            out
        }
        _ => {
            let mut out = Vec::with_capacity(1 + raw.len());
            out.push(RAW);
            out.extend_from_slice(&raw);
            out
        }
    })
}

/// Applies a delta payload to `base`, producing at most `limit` bytes.
/// Every size is checked before memory is committed, so a hostile payload
/// costs at most a few times `limit`.
pub fn apply(base: &[u8], payload: &[u8], limit: usize) -> Result<Vec<u8>, DeltaError> {
    let bad = |why: String| DeltaError::Delta(why);
    // A delta is literals plus commands of at most 17 bytes, and a copy
    // command covers at least one block (256 bytes or more): an honest
    // delta is never more than a sixteenth larger than its output.
    let max_raw = limit.saturating_add(limit / 16).saturating_add(4096);
    let unpacked;
    let raw: &[u8] = match payload.split_first() {
        Some((&RAW, rest)) => rest,
        Some((&ZSTD, rest)) => {
            let (len, z) = rest
                .split_first_chunk::<4>()
                .ok_or_else(|| bad("truncated length".into()))?;
            let len = u32::from_le_bytes(*len) as usize;
            if len > max_raw {
                return Err(bad(format!("claims {len} bytes, over {max_raw}")));
            }
            unpacked = zstd::bulk::decompress(z, len).map_err(|e| bad(format!("zstd: {e}")))?;
            if unpacked.len() != len {
                return Err(bad(format!(
                    "{} bytes, not the {len} claimed",
                    unpacked.len()
                )));
            }
            &unpacked
        }
        Some((f, _)) => return Err(bad(format!("unknown format {f}"))),
        None => return Err(bad("empty".into())),
    };
    let mut out = Vec::new();
    fast_rsync::apply_limited(base, raw, &mut out, limit).map_err(|e| match e {
        fast_rsync::ApplyError::OutputLimit { .. } => DeltaError::TooLarge(limit),
        e => bad(e.to_string()),
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn round_trip(base: &[u8], new: &[u8]) -> Vec<u8> {
        let sig = parse_signature(signature(base)).unwrap();
        let delta = encode(&sig, new, 3).unwrap();
        assert_eq!(apply(base, &delta, new.len().max(1)).unwrap(), new);
        delta
    }

    #[test]
    fn a_small_overwrite_costs_about_its_size() {
        let base = noise(1 << 20, 1);
        let mut new = base.clone();
        new[500_000..504_096].copy_from_slice(&noise(4096, 2));
        let delta = round_trip(&base, &new);
        assert!(delta.len() < 8 << 10, "{} bytes", delta.len());
    }

    #[test]
    fn an_append_costs_about_the_appended_bytes() {
        let base = noise(700_000, 3);
        let mut new = base.clone();
        new.extend_from_slice(&noise(100_000, 4));
        let delta = round_trip(&base, &new);
        assert!(delta.len() < 102_000, "{} bytes", delta.len());
    }

    #[test]
    fn text_literals_are_compressed() {
        let base = noise(200_000, 5);
        let mut new = base.clone();
        new.extend(std::iter::repeat_n(b"a log line that repeats\n".as_slice(), 4000).flatten());
        let delta = round_trip(&base, &new);
        assert!(
            delta[0] == ZSTD && delta.len() < 10_000,
            "{} bytes",
            delta.len()
        );
    }

    #[test]
    fn output_over_the_limit_is_refused() {
        let base = noise(10_000, 6);
        let new = noise(50_000, 7);
        let sig = parse_signature(signature(&base)).unwrap();
        let delta = encode(&sig, &new, 3).unwrap();
        assert_eq!(
            apply(&base, &delta, 49_999),
            Err(DeltaError::TooLarge(49_999))
        );
    }

    #[test]
    fn hostile_signatures_and_payloads_are_errors() {
        let mut sig = signature(&noise(5000, 8));
        sig[4..8].copy_from_slice(&0u32.to_be_bytes());
        assert!(parse_signature(sig).is_err());
        assert!(parse_signature(vec![1, 2, 3]).is_err());
        let mut bomb = vec![ZSTD];
        bomb.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(apply(b"base", &bomb, 1 << 20).is_err());
        assert!(apply(b"base", &[], 10).is_err());
        assert!(apply(b"base", &[9, 1, 2], 10).is_err());
    }

    proptest! {
        #[test]
        fn random_edits_round_trip(
            seed in any::<u64>(),
            len in 0usize..200_000,
            edits in proptest::collection::vec((any::<u16>(), 0u8..3, 0usize..5000), 0..6),
        ) {
            let base = noise(len, seed);
            let mut new = base.clone();
            for (at, op, n) in edits {
                let at = if new.is_empty() { 0 } else { at as usize * new.len() / 65536 };
                match op {
                    0 => { new.splice(at..at, noise(n, seed ^ 9)); }
                    1 => { let end = (at + n).min(new.len()); new.drain(at..end); }
                    _ => {
                        let end = (at + n).min(new.len());
                        new[at..end].copy_from_slice(&noise(end - at, seed ^ 5));
                    }
                }
            }
            round_trip(&base, &new);
        }

        #[test]
        fn arbitrary_payloads_never_panic(base in proptest::collection::vec(any::<u8>(), 0..2000),
                                          payload in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = apply(&base, &payload, 4096);
            let _ = parse_signature(payload);
        }
    }
}
