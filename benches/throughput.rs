//! Single-core throughput of the backup pipeline's CPU stages, on 64 MiB
//! buffers held in memory (no I/O): the content-defined chunker, BLAKE3 chunk
//! ids, zstd level 3 blob encoding, and verified blob decoding (restore).
//!
//! Two kinds of data: `text` (prose-like, compresses about like source code
//! and documents in a home directory) and `random` (like photos, video and
//! archives: zstd cannot shrink it, so blobs are stored raw).
//!
//! Run: `cargo bench --bench throughput` (results: docs/benchmarks.md).

use divan::Bencher;
use divan::counter::BytesCount;
use homesync_protocol::blob::decode_verified;
use homesync_protocol::{BlobEncoder, BlobId, BlobKind, ChunkerParams};
use std::hint::black_box;
use std::ops::Range;
use std::sync::LazyLock;

fn main() {
    // Build the inputs first so their one-line summaries print above the table.
    LazyLock::force(&TEXT);
    LazyLock::force(&RANDOM);
    divan::main();
}

/// Bytes per benchmark input.
const LEN: usize = 64 << 20;
/// Chunk size for the fixed-size hashing benchmark (the chunker's average).
const MIB: usize = 1 << 20;
/// zstd level the client uses.
const LEVEL: i32 = 3;

/// One kind of benchmark input and everything derived from it.
struct Input {
    data: Vec<u8>,
    /// The chunker's cuts over `data`.
    chunks: Vec<Range<usize>>,
    /// Each chunk as a stored blob (zstd -3 or raw) with its id.
    blobs: Vec<(BlobId, Vec<u8>)>,
}

impl Input {
    fn new(data: Vec<u8>) -> Self {
        assert_eq!(data.len(), LEN);
        let chunks = ChunkerParams::default().cut(&data, true);
        let mut enc = BlobEncoder::new(LEVEL);
        let blobs = chunks
            .iter()
            .map(|r| {
                let plain = &data[r.clone()];
                (BlobId::of(plain), enc.encode(BlobKind::Chunk, plain))
            })
            .collect();
        Input {
            data,
            chunks,
            blobs,
        }
    }

    fn stored_bytes(&self) -> usize {
        self.blobs.iter().map(|(_, b)| b.len()).sum()
    }
}

static TEXT: LazyLock<Input> = LazyLock::new(|| {
    let input = Input::new(text_like(LEN, 42));
    eprintln!(
        "text: {} chunks (mean {} KiB), zstd -{LEVEL} ratio {:.2}",
        input.chunks.len(),
        LEN / input.chunks.len() / 1024,
        LEN as f64 / input.stored_bytes() as f64
    );
    input
});

static RANDOM: LazyLock<Input> = LazyLock::new(|| {
    let input = Input::new(random(LEN, 42));
    eprintln!(
        "random: {} chunks (mean {} KiB), stored/plain {:.4}",
        input.chunks.len(),
        LEN / input.chunks.len() / 1024,
        input.stored_bytes() as f64 / LEN as f64
    );
    input
});

fn input(kind: &str) -> &'static Input {
    match kind {
        "text" => &TEXT,
        "random" => &RANDOM,
        _ => unreachable!("unknown input kind {kind}"),
    }
}

const KINDS: &[&str] = &["text", "random"];

/// splitmix64: a small deterministic generator, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Incompressible bytes (BLAKE3 XOF output).
fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.finalize_xof().fill(&mut out);
    out
}

/// Prose-like text: words from a 4000-word vocabulary with a skewed (roughly
/// Zipf) frequency, sentences, 72-column lines, paragraphs, and now and then a
/// number, so zstd -3 compresses it about 3x, like documents and mail.
fn text_like(len: usize, seed: u64) -> Vec<u8> {
    const SYLLABLES: &[&str] = &[
        "ka", "lo", "mi", "ne", "ru", "sta", "ter", "in", "on", "al", "be", "co", "de", "for",
        "ge", "ha", "is", "ju", "ment", "tion", "pre", "ex", "un", "re", "ly", "ar", "ver", "st",
        "qu", "ow", "th", "er",
    ];
    let mut rng = Rng(seed);
    let vocab: Vec<String> = (0..4000)
        .map(|_| {
            let n = 1 + rng.below(3) + rng.below(2);
            (0..n)
                .map(|_| SYLLABLES[rng.below(SYLLABLES.len())])
                .collect()
        })
        .collect();
    let mut out = Vec::with_capacity(len + 128);
    let mut col = 0;
    let mut words_in_sentence = 0;
    let mut sentences_in_paragraph = 0;
    let mut capital = true;
    while out.len() < len {
        // Skewed pick: the cube of a uniform number favours low indices.
        let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
        let word: Vec<u8> = if rng.below(40) == 0 {
            rng.below(100_000).to_string().into_bytes()
        } else {
            vocab[(u * u * u * vocab.len() as f64) as usize]
                .as_bytes()
                .to_vec()
        };
        if col + word.len() + 1 > 72 {
            out.push(b'\n');
            col = 0;
        } else if col > 0 {
            out.push(b' ');
            col += 1;
        }
        let start = out.len();
        out.extend_from_slice(&word);
        if capital {
            out[start] = out[start].to_ascii_uppercase();
            capital = false;
        }
        col += word.len();
        words_in_sentence += 1;
        if words_in_sentence > 5 + rng.below(15) {
            out.push(if rng.below(8) == 0 { b'?' } else { b'.' });
            col += 1;
            words_in_sentence = 0;
            capital = true;
            sentences_in_paragraph += 1;
            if sentences_in_paragraph > 3 + rng.below(5) {
                out.extend_from_slice(b"\n\n");
                col = 0;
                sentences_in_paragraph = 0;
            }
        } else if rng.below(12) == 0 {
            out.push(b',');
            col += 1;
        }
    }
    out.truncate(len);
    out
}

/// Content-defined chunking (FastCDC, 256 KiB / 1 MiB / 4 MiB) of 64 MiB.
#[divan::bench(args = KINDS, sample_count = 20, sample_size = 1)]
fn chunker(bencher: Bencher, kind: &str) {
    let data = &input(kind).data;
    let params = ChunkerParams::default();
    bencher
        .counter(BytesCount::new(LEN))
        .bench(|| params.cut(black_box(data), true));
}

/// BLAKE3-256 of 64 MiB as 64 chunks of 1 MiB each (one thread).
#[divan::bench(sample_count = 20, sample_size = 1)]
fn blake3_1mib_chunks(bencher: Bencher) {
    let data = &input("random").data;
    bencher.counter(BytesCount::new(LEN)).bench(|| {
        for c in black_box(data).chunks(MIB) {
            black_box(blake3::hash(c));
        }
    });
}

/// zstd level 3 blob encoding of every chunk (raw when zstd does not shrink it).
#[divan::bench(args = KINDS, sample_count = 10, sample_size = 1)]
fn zstd3_encode(bencher: Bencher, kind: &str) {
    let input = input(kind);
    let mut enc = BlobEncoder::new(LEVEL);
    bencher.counter(BytesCount::new(LEN)).bench_local(|| {
        for r in &input.chunks {
            black_box(enc.encode(BlobKind::Chunk, black_box(&input.data[r.clone()])));
        }
    });
}

/// Restore's CPU work per chunk: parse, zstd-decompress, BLAKE3-verify.
/// Throughput counts plain (restored) bytes.
#[divan::bench(args = KINDS, sample_count = 20, sample_size = 1)]
fn blob_decode_verified(bencher: Bencher, kind: &str) {
    let input = input(kind);
    bencher.counter(BytesCount::new(LEN)).bench(|| {
        for (id, blob) in &input.blobs {
            black_box(decode_verified(black_box(blob), *id, BlobKind::Chunk).expect("valid blob"));
        }
    });
}

/// Backup's whole CPU path on one thread: chunk, hash, encode.
#[divan::bench(args = KINDS, sample_count = 10, sample_size = 1)]
fn pipeline_chunk_hash_encode(bencher: Bencher, kind: &str) {
    let data = &input(kind).data;
    let params = ChunkerParams::default();
    let mut enc = BlobEncoder::new(LEVEL);
    bencher.counter(BytesCount::new(LEN)).bench_local(|| {
        for r in params.cut(black_box(data), true) {
            let plain = &data[r];
            black_box(BlobId::of(plain));
            black_box(enc.encode(BlobKind::Chunk, plain));
        }
    });
}
