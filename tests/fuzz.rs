//! Structure-aware fuzzing of every decoder that reads bytes from outside:
//! wire frames (requests and responses), blobs, trees, snapshots, delta
//! signatures and payloads, and the config files (client, server, store).
//!
//! Random bytes rarely get past a decoder's first check (the protocol
//! crate's proptests do that part); here each input of the corpus in
//! `fuzz/corpus/TARGET/` (valid encodings, and any input that once found a
//! bug) is mutated many times (bits flipped, bytes set, ranges cut, copied
//! or inserted, length fields bent) with a seeded RNG, and every decoder
//! must return, never panic, and what it accepts must encode back to what
//! it decodes to. `HOMESYNC_FUZZ_ITERS` (default 3000 per corpus input)
//! and `HOMESYNC_FUZZ_SEED` make the long mode; `HOMESYNC_FUZZ_UPDATE=1`
//! writes the built-in seeds into the corpus.

mod common;

use common::Rng;
use homesync_protocol::wire::{ErrorCode, Request, Response};
use homesync_protocol::{
    BlobEncoder, BlobId, BlobKind, ChunkerParams, Node, NodeKind, Snapshot, SnapshotId, Timestamp,
    Tree, blob, delta,
};
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus")
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One to four mutations of `input`.
fn mutate(input: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = b.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                b[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                b[i] = [0, 0xff, 0x7f, 0x80, 1][rng.below(5)];
            }
            2 => b.truncate(rng.below(len + 1)),
            3 if len > 0 => {
                let (from, to) = (rng.below(len), rng.below(len));
                let (lo, hi) = (from.min(to), from.max(to));
                b.drain(lo..hi);
            }
            4 if len > 0 => {
                let (from, n) = (rng.below(len), 1 + rng.below(16));
                let piece: Vec<u8> = b[from..(from + n).min(len)].to_vec();
                let at = rng.below(len + 1);
                b.splice(at..at, piece);
            }
            5 => {
                let at = rng.below(len + 1);
                let junk: Vec<u8> = (0..1 + rng.below(8)).map(|_| rng.next() as u8).collect();
                b.splice(at..at, junk);
            }
            // A little-endian u32 (a length or count) bent to an extreme.
            6 if len >= 4 => {
                let i = rng.below(len - 3);
                let v: u32 = [0, 1, u32::MAX, u32::MAX / 2, 1 << 20][rng.below(5)];
                b[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            // A postcard varint made huge.
            7 if len > 0 => {
                let i = rng.below(len);
                b[i] |= 0x80;
            }
            _ => b.push(rng.next() as u8),
        }
    }
    b
}

fn node(name: &[u8], kind: NodeKind) -> Node {
    let mut n = Node::new(name.to_vec(), kind);
    n.mode = 0o644;
    n.size = 11;
    n
}

fn snapshot() -> Snapshot {
    let mut root = node(b"home", NodeKind::Dir);
    root.subtree = Some(Tree::new(vec![]).id());
    Snapshot {
        time: Timestamp {
            sec: 1_795_000_000,
            nsec: 5,
        },
        machine: "laptop".into(),
        source: b"/home/alice".to_vec(),
        root,
        parent: Some(SnapshotId([7; 32])),
        tags: vec!["keep".into()],
        stats: Default::default(),
    }
}

/// The built-in seeds: valid inputs of every target.
fn seeds() -> BTreeMap<&'static str, Vec<(String, Vec<u8>)>> {
    let mut s: BTreeMap<&str, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| {
        s.entry(target).or_default().push((name.to_string(), bytes));
    };
    let text = b"Dear diary, today I backed up my home. ".repeat(40);
    let mut enc = BlobEncoder::new(3);
    let chunk = enc.encode(BlobKind::Chunk, &text);
    add("blob", "chunk-zstd", chunk.clone());
    add("blob", "chunk-raw", enc.encode(BlobKind::Chunk, b"tiny"));
    let mut file = node(b"notes.txt", NodeKind::File);
    file.chunks = vec![homesync_protocol::ChunkId::of(&text)];
    let mut link = node(b"link", NodeKind::Symlink);
    link.target = b"notes.txt".to_vec();
    let tree = Tree::new(vec![file, link, node(b"\xff\xfename", NodeKind::File)]);
    add("tree", "three-entries", tree.encode());
    add("snapshot", "with-parent-and-tag", snapshot().encode());
    add(
        "request",
        "hello",
        Request::Hello {
            version: 3,
            credential: "hs1.laptop.secret".into(),
        }
        .encode(),
    );
    add(
        "request",
        "has",
        Request::Has {
            ids: vec![BlobId([1; 32]), BlobId([2; 32])],
        }
        .encode(),
    );
    add(
        "request",
        "put",
        Request::Put {
            id: BlobId::of(&text),
            kind: 0,
            blob: chunk.clone(),
        }
        .encode(),
    );
    add(
        "request",
        "commit",
        Request::Commit {
            snapshot: snapshot().encode(),
        }
        .encode(),
    );
    add(
        "response",
        "welcome",
        Response::Welcome {
            version: 3,
            store_id: "0123abcd".into(),
            chunker: ChunkerParams::default(),
            zstd_level: 3,
            machine: "laptop".into(),
            role: "machine".into(),
        }
        .encode(),
    );
    add(
        "response",
        "snapshots",
        Response::Snapshots {
            list: vec![serde_bytes::ByteBuf::from(snapshot().encode())],
        }
        .encode(),
    );
    add(
        "response",
        "error",
        Response::Error {
            code: ErrorCode::Corrupt,
            message: "blob x is corrupt".into(),
        }
        .encode(),
    );
    let base = b"the quick brown fox jumps over the lazy dog\n".repeat(200);
    let sig = delta::signature(&base);
    add("signature", "of-9k", sig.clone());
    let mut edited = base.clone();
    edited[4000..4010].copy_from_slice(b"0123456789");
    let parsed = delta::parse_signature(sig).unwrap();
    add(
        "delta",
        "ten-bytes-changed",
        delta::encode(&parsed, &edited, 3).unwrap(),
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    add(
        "client-config",
        "example",
        std::fs::read(root.join("examples/client.toml")).unwrap(),
    );
    add(
        "server-config",
        "example",
        std::fs::read(root.join("examples/server.toml")).unwrap(),
    );
    add(
        "store-config",
        "default",
        b"format = 1\nid = 0123abcd\nchunker_min = 262144\nchunker_avg = 1048576\n\
          chunker_max = 4194304\nzstd_level = 3\n"
            .to_vec(),
    );
    s
}

/// Runs target's decoder on `bytes`: whether it accepted them, or `Err`
/// for a broken promise (what it accepted does not survive a round trip).
fn decode(target: &str, bytes: &[u8]) -> Result<bool, String> {
    fn round_trip<T: PartialEq, E>(
        what: &str,
        decoded: Result<T, E>,
        again: impl Fn(&T) -> Result<T, E>,
    ) -> Result<bool, String> {
        match decoded {
            Ok(v) if again(&v).ok().as_ref() != Some(&v) => {
                Err(format!("{what} does not round-trip"))
            }
            r => Ok(r.is_ok()),
        }
    }
    let base = b"the quick brown fox jumps over the lazy dog\n".repeat(200);
    let text = || String::from_utf8_lossy(bytes).into_owned();
    Ok(match target {
        // Decoding the payload may fail (a bent length), but never panic.
        "blob" => blob::Blob::parse(bytes)
            .map(|b| {
                let _ = b.plain_verified(BlobId([0; 32]));
            })
            .is_ok(),
        "tree" => round_trip("tree", Tree::decode(bytes), |t| Tree::decode(&t.encode()))?,
        "snapshot" => round_trip("snapshot", Snapshot::decode(bytes), |s| {
            Snapshot::decode(&s.encode())
        })?,
        "request" => round_trip("request", Request::decode(bytes), |r| {
            Request::decode(&r.encode())
        })?,
        "response" => round_trip("response", Response::decode(bytes), |r| {
            Response::decode(&r.encode())
        })?,
        "signature" => delta::parse_signature(bytes.to_vec())
            .map(|sig| {
                let _ = delta::encode(&sig, b"some new data to diff", 3);
            })
            .is_ok(),
        "delta" => delta::apply(&base, bytes, 1 << 20).is_ok(),
        "client-config" => {
            homesync_client::config::ClientConfig::parse(&text(), Path::new("client.toml")).is_ok()
        }
        "server-config" => homesync_server::serve_config::ServeConfig::parse(
            &text(),
            Path::new("/etc/homesync/server.toml"),
        )
        .is_ok(),
        "store-config" => homesync_server::config::parse(bytes).is_ok(),
        other => return Err(format!("no decoder for corpus target {other}")),
    })
}

/// The corpus on disk: seeds written by HOMESYNC_FUZZ_UPDATE=1 and inputs
/// kept because they once found a bug.
fn corpus() -> BTreeMap<String, Vec<(String, Vec<u8>)>> {
    let mut out: BTreeMap<String, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    for dir in std::fs::read_dir(corpus_dir()).expect("fuzz/corpus") {
        let dir = dir.unwrap().path();
        let target = dir.file_name().unwrap().to_string_lossy().into_owned();
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            out.entry(target.clone())
                .or_default()
                .push((name, std::fs::read(&f).unwrap()));
        }
    }
    out
}

#[test]
fn the_corpus_holds_every_seed() {
    let seeds = seeds();
    if std::env::var_os("HOMESYNC_FUZZ_UPDATE").is_some() {
        for (target, inputs) in &seeds {
            let dir = corpus_dir().join(target);
            std::fs::create_dir_all(&dir).unwrap();
            for (name, bytes) in inputs {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        }
    }
    let corpus = corpus();
    for (target, inputs) in &seeds {
        let on_disk = corpus.get(*target).map(Vec::as_slice).unwrap_or_default();
        for (name, _) in inputs {
            assert!(
                on_disk.iter().any(|(n, _)| n == name),
                "fuzz/corpus/{target}/{name} is missing: run with HOMESYNC_FUZZ_UPDATE=1"
            );
        }
    }
    // Every valid seed decodes (or the fuzzing would start from nothing).
    for (target, inputs) in &seeds {
        for (name, bytes) in inputs {
            assert_eq!(decode(target, bytes), Ok(true), "seed {target}/{name}");
        }
    }
}

#[test]
fn mutated_inputs_never_panic_a_decoder_and_what_decodes_round_trips() {
    let iters = env_u64("HOMESYNC_FUZZ_ITERS", 3000);
    let seed = env_u64("HOMESYNC_FUZZ_SEED", 20261127);
    eprintln!("fuzz: seed {seed} (HOMESYNC_FUZZ_SEED), {iters} mutations per input");
    let mut rng = Rng(seed);
    let mut runs = 0u64;
    // Silence the default hook: a panic is reported below with its input.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut failures = Vec::new();
    for (target, inputs) in corpus() {
        for (name, bytes) in &inputs {
            for i in 0..iters {
                let input = mutate(bytes, &mut rng);
                runs += 1;
                match std::panic::catch_unwind(AssertUnwindSafe(|| decode(&target, &input))) {
                    Ok(Ok(_)) => {}
                    Ok(Err(why)) => {
                        failures.push(format!("{target}/{name} #{i}: {why}: {input:?}"))
                    }
                    Err(_) => failures.push(format!("{target}/{name} #{i}: panicked on {input:?}")),
                }
            }
        }
    }
    std::panic::set_hook(hook);
    eprintln!("fuzz: {runs} mutated inputs decoded");
    assert!(
        failures.is_empty(),
        "{} failures (keep each input in fuzz/corpus/TARGET/ once fixed):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
