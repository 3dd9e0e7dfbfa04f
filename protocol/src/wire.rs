//! The wire protocol, sans I/O: messages, framing and the session's order
//! rules. The QUIC code in the client and server only moves bytes; every
//! decision about what bytes mean lives here, where it is property-tested.
//!
//! Transport (ALPN `homesync/1`): one QUIC connection per client session;
//! every request opens its own bidirectional stream, sends one request
//! frame, finishes its side, and reads one response frame. Parallel requests
//! are parallel streams; the server bounds how many a connection may open,
//! which is the back-pressure. The first request of a connection must be
//! `Hello`.
//!
//! Frame: `u32` little-endian payload length, then the payload: one
//! format-version byte (1) and the postcard encoding of a [`Request`] or
//! [`Response`]. Lengths above [`MAX_FRAME`] are refused before anything is
//! buffered.

use crate::blob::MAX_PLAIN_LEN;
use crate::chunker::ChunkerParams;
use crate::id::{BlobId, SnapshotId};
use crate::tree::{FormatError, decode_versioned, encode_versioned_after};
use serde::{Deserialize, Serialize};

/// QUIC application protocol name; a change of it is a new protocol.
pub const ALPN: &[u8] = b"homesync/1";

/// The largest UDP payload either end accepts (QUIC's
/// `max_udp_payload_size`) and probes for (the upper bound of MTU
/// discovery). Each packet costs both ends a header, an AEAD seal or open
/// and a share of a system call, so larger packets move the same bytes for
/// less CPU where the path allows them (loopback: 5.4x fewer packets than
/// at 1200 bytes, a restore's server CPU down by a fifth). quinn's default
/// (1472 accepted, 1452 probed) would leave loopback and jumbo-frame LANs
/// at Ethernet's size; on other paths probing finds the real limit.
///
/// Not higher: quinn 0.11 sends up to 10 packets in one segmentation-
/// offload `sendmsg`, and Linux refuses one over 64 KiB with `EMSGSIZE`,
/// which quinn-udp drops silently (it takes it for an MTU probe). With
/// 16 KiB packets every full batch was lost, loss detection then judged
/// the path an MTU black hole and fell back to 1200 bytes for the rest of
/// the connection.
pub const MAX_UDP_PAYLOAD: u16 = 6_500;

/// Checked in `Hello`. Version 3 added `GetBatch`, 4 `Latest`; a server still serves
/// clients of every version from [`MIN_PROTOCOL_VERSION`] on (their requests
/// are a subset of its own) and answers `Welcome` with the client's
/// version, so a client knows what it may send.
pub const PROTOCOL_VERSION: u32 = 4;
/// The oldest client version a server still serves.
pub const MIN_PROTOCOL_VERSION: u32 = 2;
/// The first version with `GetBatch`.
pub const GET_BATCH_VERSION: u32 = 3;
/// The first version with `Latest`.
pub const LATEST_VERSION: u32 = 4;
const FRAME_VERSION: u8 = 1;
/// The largest frame: a maximal blob plus room for the message around it.
pub const MAX_FRAME: usize = MAX_PLAIN_LEN + (1 << 20);
/// At most this many ids per `Has` request.
pub const MAX_HAS_BATCH: usize = 65_536;
/// At most this many chunks per `PutBatch` request.
pub const MAX_PUT_BATCH: usize = 4096;
/// At most this many ids per `Signatures` request (a 4 MiB chunk's
/// signature is 24 KiB: the answer stays far below [`MAX_FRAME`]).
pub const MAX_SIGNATURE_BATCH: usize = 64;
/// At most this many ids per `GetBatch` request.
pub const MAX_GET_BATCH: usize = 1024;
/// A `GetBatch` answer carries blobs up to about this many bytes (at least
/// one blob, whatever its size); the ids after them are left for the
/// client to ask again. So one stream holds no more answer in memory than
/// a `Get` of the largest chunk does.
pub const GET_BATCH_BYTES: usize = 4 << 20;

/// One chunk of a `PutBatch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutItem {
    pub id: BlobId,
    #[serde(with = "serde_bytes")]
    pub blob: Vec<u8>,
}

/// One blob of a `GetBatch` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GotBlob {
    /// The encoded blob, as stored; the client verifies it.
    Blob(#[serde(with = "serde_bytes")] Vec<u8>),
    /// This blob could not be read (`NotFound`, `Corrupt`, `Internal`): the
    /// others are still answered, so the client can name the files it
    /// affects and restore the rest.
    Error { code: ErrorCode, message: String },
}

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Opens the session: protocol version and credential (a machine
    /// credential, an admin credential or a one-time restore token).
    Hello { version: u32, credential: String },
    /// Which of these blobs does the store hold?
    Has { ids: Vec<BlobId> },
    /// Store an encoded blob (see [`crate::blob`]); the server re-hashes it.
    Put {
        id: BlobId,
        kind: u8,
        #[serde(with = "serde_bytes")]
        blob: Vec<u8>,
    },
    /// The encoded blob; the client verifies it.
    Get { id: BlobId, kind: u8 },
    /// Record an encoded snapshot, after every blob it references.
    Commit {
        #[serde(with = "serde_bytes")]
        snapshot: Vec<u8>,
    },
    /// Snapshots visible to the session (its own machine's, or those of
    /// `machine` for an admin; a restore token sees its machine's).
    Snapshots { machine: Option<String> },
    /// Many small chunks in one stream (a stream per 2 KiB file costs more
    /// than the file); each is checked exactly as a `Put` would be.
    PutBatch { chunks: Vec<PutItem> },
    /// Remove a snapshot from the list (admin credentials only).
    Forget { id: SnapshotId },
    /// The store's generation (see `Repository::generation`).
    Generation,
    /// Delta signatures of these chunks (see [`crate::delta`]).
    Signatures { ids: Vec<BlobId> },
    /// Blob `id` of `kind` (chunk or tree) as a delta against `base`, of
    /// the same kind; the server rebuilds it, checks its hash and stores it
    /// whole. Answered like `Put`.
    PutDelta {
        id: BlobId,
        kind: u8,
        base: BlobId,
        #[serde(with = "serde_bytes")]
        delta: Vec<u8>,
    },
    /// Many blobs of one kind in one stream (protocol 3): a stream per small
    /// file costs more than the file. Answered by `Blobs`, in order.
    GetBatch { ids: Vec<BlobId>, kind: u8 },
    /// The newest of the snapshots `Snapshots { machine }` would list whose
    /// source is `source` (protocol 4), answered by `Snapshots` with that one
    /// or none: what a backup needs of the list (its parent), without the
    /// whole list, which grows with every snapshot the daemon takes.
    Latest {
        machine: Option<String>,
        #[serde(with = "serde_bytes")]
        source: Vec<u8>,
    },
}

/// Why a request failed. Stable numbers: clients map them to exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// Malformed, oversized or out-of-order message.
    BadRequest = 1,
    /// The peer speaks another protocol version.
    Version = 2,
    /// Unknown or revoked credential, or no `Hello` yet.
    Unauthenticated = 3,
    /// Authenticated, but not allowed to do this.
    Forbidden = 4,
    /// No such blob or snapshot.
    NotFound = 5,
    /// Stored or uploaded bytes fail their hash check.
    Corrupt = 6,
    /// The store refused (e.g. a tree naming a missing blob).
    Refused = 7,
    /// The server failed (I/O, full disk); the request may be retried.
    Internal = 8,
}

/// What the server answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Welcome {
        version: u32,
        store_id: String,
        chunker: ChunkerParams,
        zstd_level: i32,
        /// The machine the credential belongs to.
        machine: String,
        /// "machine", "admin" or "restore".
        role: String,
    },
    Has {
        present: Vec<bool>,
    },
    Put {
        stored: bool,
    },
    Blob {
        #[serde(with = "serde_bytes")]
        blob: Vec<u8>,
    },
    Committed {
        id: SnapshotId,
    },
    Snapshots {
        /// Encoded snapshots (each checked against its id by the client).
        list: Vec<serde_bytes::ByteBuf>,
    },
    PutBatch {
        stored: Vec<bool>,
    },
    Forgotten,
    Generation {
        generation: u64,
    },
    Signatures {
        /// One per id asked, `None` for a chunk the store lacks.
        list: Vec<Option<serde_bytes::ByteBuf>>,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    /// The answer to `GetBatch`: one entry per id asked, in order, but
    /// possibly fewer than asked (the first ones, within
    /// [`GET_BATCH_BYTES`]): the client asks again for the rest.
    Blobs {
        list: Vec<GotBlob>,
    },
}

/// A `GetBatch` answer's entry, its blob left in the frame (see
/// [`Response::view`]); encoded exactly as [`GotBlob`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub enum GotBlobView<'a> {
    Blob(&'a [u8]),
    Error { code: ErrorCode, message: String },
}

/// A `GetBatch` answer's entry borrowing its blob, for encoding one
/// without first copying each blob into a [`GotBlob`]; encoded exactly as
/// [`GotBlob`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum GotBlobRef<'a> {
    Blob(#[serde(with = "serde_bytes")] &'a [u8]),
    Error { code: ErrorCode, message: String },
}

/// `Response::Blobs` over borrowed entries (see [`encode_blobs`]).
struct BlobsRef<'a>(&'a [GotBlobRef<'a>]);

impl Serialize for BlobsRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStructVariant;
        let mut v = s.serialize_struct_variant("Response", BLOBS_VARIANT, "Blobs", 1)?;
        v.serialize_field("list", self.0)?;
        v.end()
    }
}

/// The frame of `Response::Blobs` with these entries, the same bytes as
/// `Response::Blobs { list }.encode()` but without copying each blob into
/// a list of its own first.
pub fn encode_blobs(list: &[GotBlobRef<'_>]) -> Vec<u8> {
    frame(&BlobsRef(list))
}

/// A piece of a frame made by [`encode_blobs_parts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FramePart {
    /// Bytes made for the frame: its header, entries' headers, errors.
    Made(Vec<u8>),
    /// The blob of entry `i` of the list, as it is.
    Blob(usize),
}

/// The frame of [`encode_blobs`] in pieces, the blobs left where they are:
/// the server hands the pieces to QUIC as they are, so the gigabytes a
/// restore receives are never copied into a frame of their own (that copy
/// and the fresh pages for it were a tenth of a restoring server's CPU).
pub fn encode_blobs_parts(list: &[GotBlobRef<'_>]) -> Vec<FramePart> {
    /// A variant index and a length, as postcard writes both: varints.
    #[derive(Serialize)]
    struct Head {
        variant: u32,
        len: usize,
    }
    fn put<T: Serialize>(out: Vec<u8>, value: &T) -> Vec<u8> {
        // In-memory integers and strings always encode.
        postcard::to_io(value, out).expect("postcard encoding of an in-memory value")
    }
    let mut parts = Vec::with_capacity(2 * list.len() + 1);
    let mut made = vec![0u8; 4];
    made.push(FRAME_VERSION);
    made = put(
        made,
        &Head {
            variant: BLOBS_VARIANT,
            len: list.len(),
        },
    );
    let mut total = 0usize;
    for (i, entry) in list.iter().enumerate() {
        match entry {
            GotBlobRef::Blob(blob) => {
                made = put(
                    made,
                    &Head {
                        variant: GOT_BLOB_VARIANT,
                        len: blob.len(),
                    },
                );
                total += made.len() + blob.len();
                parts.push(FramePart::Made(std::mem::take(&mut made)));
                parts.push(FramePart::Blob(i));
            }
            GotBlobRef::Error { .. } => made = put(made, entry),
        }
    }
    if !made.is_empty() {
        total += made.len();
        parts.push(FramePart::Made(made));
    }
    let len = (total - 4) as u32;
    if let Some(FramePart::Made(first)) = parts.first_mut() {
        first[..4].copy_from_slice(&len.to_le_bytes());
    }
    parts
}

/// `Response::Blob` over a borrowed blob (see [`encode_blob`]).
struct BlobRef<'a>(&'a [u8]);

impl Serialize for BlobRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStructVariant;
        let mut v = s.serialize_struct_variant("Response", BLOB_VARIANT, "Blob", 1)?;
        v.serialize_field("blob", serde_bytes::Bytes::new(self.0))?;
        v.end()
    }
}

/// The frame of `Response::Blob` with this blob: the same bytes as
/// `Response::Blob { blob }.encode()`, without copying the blob into a
/// `Vec` of its own first.
pub fn encode_blob(blob: &[u8]) -> Vec<u8> {
    frame(&BlobRef(blob))
}

/// A response frame as [`Response::view`] sees it: the blobs of `Blob` and
/// `Blobs` are slices of the frame, any other answer is decoded as usual.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseView<'a> {
    Blob(&'a [u8]),
    Blobs(Vec<GotBlobView<'a>>),
    Other(Response),
}

/// Variant numbers of `Response::Blob` and `Response::Blobs` in the
/// postcard encoding (their places in the enum; a test checks them).
const BLOB_VARIANT: u32 = 3;
const BLOBS_VARIANT: u32 = 11;
/// `GotBlob::Blob`'s variant index.
const GOT_BLOB_VARIANT: u32 = 0;

/// Why bytes are not a valid frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {0} bytes is over the limit of {MAX_FRAME}")]
    TooLarge(u64),
    #[error("frame is truncated: {have} of {need} bytes")]
    Truncated { have: usize, need: usize },
    #[error("{0} bytes after the frame")]
    Trailing(usize),
    #[error("malformed message: {0}")]
    Format(#[from] FormatError),
    #[error("`Has` with {0} ids, over the limit of {MAX_HAS_BATCH}")]
    BatchTooLarge(usize),
    #[error("`PutBatch` with {0} chunks, over the limit of {MAX_PUT_BATCH}")]
    PutBatchTooLarge(usize),
    #[error("`Signatures` with {0} ids, over the limit of {MAX_SIGNATURE_BATCH}")]
    SignatureBatchTooLarge(usize),
    #[error("`GetBatch` with {0} ids, over the limit of {MAX_GET_BATCH}")]
    GetBatchTooLarge(usize),
}

/// A whole frame, in one allocation of its final size (a buffer growing
/// as blobs are appended would copy a 4 MiB answer several times over).
/// The length prefix is written in place afterwards, so a megabyte blob is
/// not copied once more to put four bytes before it.
fn frame<T: Serialize>(value: &T) -> Vec<u8> {
    // Counting is cheap: byte strings count by their length.
    let size = postcard::experimental::serialized_size(value).unwrap_or(0);
    let mut out = Vec::with_capacity(4 + 1 + size);
    out.extend_from_slice(&[0; 4]);
    let mut out = encode_versioned_after(out, FRAME_VERSION, value);
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_le_bytes());
    out
}

/// The payload length a frame header announces, refused if over the limit.
/// Call as soon as 4 bytes have arrived, before buffering the rest.
pub fn frame_len(header: [u8; 4]) -> Result<usize, WireError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len as u64));
    }
    Ok(len)
}

fn payload(bytes: &[u8]) -> Result<&[u8], WireError> {
    let header: [u8; 4] =
        bytes
            .get(..4)
            .and_then(|h| h.try_into().ok())
            .ok_or(WireError::Truncated {
                have: bytes.len(),
                need: 4,
            })?;
    let len = frame_len(header)?;
    let body = &bytes[4..];
    if body.len() < len {
        return Err(WireError::Truncated {
            have: body.len(),
            need: len,
        });
    }
    if body.len() > len {
        return Err(WireError::Trailing(body.len() - len));
    }
    Ok(body)
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        frame(self)
    }

    /// Decodes exactly one frame holding a request.
    pub fn decode(bytes: &[u8]) -> Result<Request, WireError> {
        let req: Request = decode_versioned(FRAME_VERSION, payload(bytes)?)?;
        if let Request::Has { ids } = &req
            && ids.len() > MAX_HAS_BATCH
        {
            return Err(WireError::BatchTooLarge(ids.len()));
        }
        if let Request::PutBatch { chunks } = &req
            && chunks.len() > MAX_PUT_BATCH
        {
            return Err(WireError::PutBatchTooLarge(chunks.len()));
        }
        if let Request::Signatures { ids } = &req
            && ids.len() > MAX_SIGNATURE_BATCH
        {
            return Err(WireError::SignatureBatchTooLarge(ids.len()));
        }
        if let Request::GetBatch { ids, .. } = &req
            && ids.len() > MAX_GET_BATCH
        {
            return Err(WireError::GetBatchTooLarge(ids.len()));
        }
        Ok(req)
    }

    /// The message's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "Hello",
            Request::Has { .. } => "Has",
            Request::Put { .. } => "Put",
            Request::Get { .. } => "Get",
            Request::Commit { .. } => "Commit",
            Request::Snapshots { .. } => "Snapshots",
            Request::PutBatch { .. } => "PutBatch",
            Request::Forget { .. } => "Forget",
            Request::Generation => "Generation",
            Request::Signatures { .. } => "Signatures",
            Request::PutDelta { .. } => "PutDelta",
            Request::GetBatch { .. } => "GetBatch",
            Request::Latest { .. } => "Latest",
        }
    }
}

impl Response {
    pub fn encode(&self) -> Vec<u8> {
        frame(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Response, WireError> {
        Ok(decode_versioned(FRAME_VERSION, payload(bytes)?)?)
    }

    /// Decodes a response frame, leaving the blobs of a `Blob` or `Blobs`
    /// answer in the frame: a restore receives gigabytes of them, and a
    /// copy of each (in fresh memory, page faults and all) cost the client
    /// more than a tenth of its CPU. Checks what [`Response::decode`] does.
    pub fn view(bytes: &[u8]) -> Result<ResponseView<'_>, WireError> {
        let malformed =
            |e: postcard::Error| WireError::Format(FormatError::Malformed(e.to_string()));
        let body = payload(bytes)?;
        let (&v, rest) = body.split_first().ok_or(FormatError::Empty)?;
        if v != FRAME_VERSION {
            return Err(FormatError::Version(v).into());
        }
        let (variant, rest) = postcard::take_from_bytes::<u32>(rest).map_err(malformed)?;
        let (view, trailing) = match variant {
            BLOB_VARIANT => {
                let (blob, t) = postcard::take_from_bytes::<&[u8]>(rest).map_err(malformed)?;
                (ResponseView::Blob(blob), t)
            }
            BLOBS_VARIANT => {
                let (list, t) = postcard::take_from_bytes(rest).map_err(malformed)?;
                (ResponseView::Blobs(list), t)
            }
            _ => return Ok(ResponseView::Other(Response::decode(bytes)?)),
        };
        if !trailing.is_empty() {
            return Err(FormatError::Trailing(trailing.len()).into());
        }
        Ok(view)
    }

    pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
        Response::Error {
            code,
            message: message.into(),
        }
    }
}

/// The order rules of one session, as a state machine: `Hello` first and
/// once; everything else only after a successful `Hello`, and only what the
/// version agreed in `Hello` has.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Session<P> {
    #[default]
    AwaitHello,
    /// Authenticated as `P` (the server's idea of who the peer is), speaking
    /// protocol version `u32`.
    Ready(P, u32),
    /// A failed `Hello` ends the session: the connection is closed.
    Closed,
}

impl Request {
    /// The first protocol version that has this request.
    pub fn since_version(&self) -> u32 {
        match self {
            Request::GetBatch { .. } => GET_BATCH_VERSION,
            Request::Latest { .. } => LATEST_VERSION,
            _ => MIN_PROTOCOL_VERSION,
        }
    }
}

impl<P: Clone> Session<P> {
    /// Whether `req` may be served now. On `Ok(None)` the request is a
    /// `Hello` to authenticate (then call [`Session::established`] with its
    /// version, or [`Session::close`]); on `Ok(Some(p))` serve it as `p`.
    pub fn admit(&self, req: &Request) -> Result<Option<P>, Response> {
        match (self, req) {
            (Session::AwaitHello, Request::Hello { version, .. }) => {
                if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(version) {
                    return Err(Response::error(
                        ErrorCode::Version,
                        format!(
                            "server speaks protocol {MIN_PROTOCOL_VERSION} to \
                             {PROTOCOL_VERSION}, client {version}"
                        ),
                    ));
                }
                Ok(None)
            }
            (Session::AwaitHello, _) => Err(Response::error(
                ErrorCode::Unauthenticated,
                "send Hello first",
            )),
            (Session::Ready(..), Request::Hello { .. }) => Err(Response::error(
                ErrorCode::BadRequest,
                "Hello was already sent",
            )),
            (Session::Ready(_, version), req) if req.since_version() > *version => {
                Err(Response::error(
                    ErrorCode::BadRequest,
                    format!(
                        "{} is not part of protocol {version} (it came with {})",
                        req.name(),
                        req.since_version()
                    ),
                ))
            }
            (Session::Ready(p, _), _) => Ok(Some(p.clone())),
            (Session::Closed, _) => Err(Response::error(
                ErrorCode::Unauthenticated,
                "session closed",
            )),
        }
    }

    /// Authenticated as `principal`, speaking `version` (from its `Hello`).
    pub fn established(&mut self, principal: P, version: u32) {
        *self = Session::Ready(principal, version);
    }

    pub fn close(&mut self) {
        *self = Session::Closed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frame [`encode_blobs_parts`] describes, its blobs from `list`.
    fn joined(parts: &[FramePart], list: &[GotBlob]) -> Vec<u8> {
        let mut out = Vec::new();
        for part in parts {
            match part {
                FramePart::Made(b) => out.extend_from_slice(b),
                FramePart::Blob(i) => match &list[*i] {
                    GotBlob::Blob(b) => out.extend_from_slice(b),
                    GotBlob::Error { .. } => panic!("entry {i} is an error, not a blob"),
                },
            }
        }
        out
    }
    use proptest::prelude::*;

    fn requests() -> Vec<Request> {
        vec![
            Request::Hello {
                version: 1,
                credential: "hs1.a.b".into(),
            },
            Request::Has {
                ids: vec![BlobId([1; 32]), BlobId([2; 32])],
            },
            Request::Put {
                id: BlobId([3; 32]),
                kind: 0,
                blob: vec![9; 1000],
            },
            Request::Get {
                id: BlobId([4; 32]),
                kind: 1,
            },
            Request::Commit {
                snapshot: vec![1, 2, 3],
            },
            Request::Snapshots {
                machine: Some("m".into()),
            },
            Request::Latest {
                machine: None,
                source: b"/home/\xffnon-utf8".to_vec(),
            },
            Request::PutBatch {
                chunks: vec![PutItem {
                    id: BlobId([6; 32]),
                    blob: vec![1, 2],
                }],
            },
            Request::Forget {
                id: SnapshotId([7; 32]),
            },
            Request::Generation,
            Request::Signatures {
                ids: vec![BlobId([8; 32])],
            },
            Request::PutDelta {
                id: BlobId([9; 32]),
                kind: 1,
                base: BlobId([10; 32]),
                delta: vec![0, 1, 2],
            },
            Request::GetBatch {
                ids: vec![BlobId([11; 32]), BlobId([12; 32])],
                kind: 0,
            },
        ]
    }

    #[test]
    fn every_request_and_response_round_trips() {
        for r in requests() {
            assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        }
        let responses = vec![
            Response::Welcome {
                version: 1,
                store_id: "s".into(),
                chunker: ChunkerParams::default(),
                zstd_level: 3,
                machine: "m".into(),
                role: "machine".into(),
            },
            Response::Has {
                present: vec![true, false],
            },
            Response::Put { stored: true },
            Response::Blob { blob: vec![1; 10] },
            Response::Committed {
                id: SnapshotId([5; 32]),
            },
            Response::Snapshots {
                list: vec![serde_bytes::ByteBuf::from(vec![1, 2])],
            },
            Response::Forgotten,
            Response::Generation { generation: 7 },
            Response::Signatures {
                list: vec![None, Some(serde_bytes::ByteBuf::from(vec![1]))],
            },
            Response::error(ErrorCode::Forbidden, "no"),
            Response::Blobs {
                list: vec![
                    GotBlob::Blob(vec![1, 2, 3]),
                    GotBlob::Error {
                        code: ErrorCode::Corrupt,
                        message: "damaged".into(),
                    },
                ],
            },
            // Lengths of one, two and three varint bytes; an empty blob;
            // errors first, last and alone.
            Response::Blobs {
                list: vec![
                    GotBlob::Error {
                        code: ErrorCode::NotFound,
                        message: "gone".into(),
                    },
                    GotBlob::Blob(vec![7; 200]),
                    GotBlob::Blob(Vec::new()),
                    GotBlob::Blob(vec![8; 70_000]),
                    GotBlob::Blob(vec![9; 127]),
                ],
            },
            Response::Blobs {
                list: vec![GotBlob::Error {
                    code: ErrorCode::Corrupt,
                    message: "damaged".into(),
                }],
            },
            Response::Blobs { list: Vec::new() },
        ];
        for r in responses {
            let frame = r.encode();
            if let Response::Blob { blob } = &r {
                assert_eq!(encode_blob(blob), frame);
            }
            if let Response::Blobs { list } = &r {
                let borrowed: Vec<GotBlobRef> = list
                    .iter()
                    .map(|g| match g {
                        GotBlob::Blob(b) => GotBlobRef::Blob(b),
                        GotBlob::Error { code, message } => GotBlobRef::Error {
                            code: *code,
                            message: message.clone(),
                        },
                    })
                    .collect();
                assert_eq!(encode_blobs(&borrowed), frame);
                assert_eq!(joined(&encode_blobs_parts(&borrowed), list), frame);
            }
            assert_eq!(Response::decode(&frame).unwrap(), r);
            // The in-place view sees the same answer.
            let view = Response::view(&frame).unwrap();
            match (&r, view) {
                (Response::Blob { blob }, ResponseView::Blob(b)) => assert_eq!(b, &blob[..]),
                (Response::Blobs { list }, ResponseView::Blobs(l)) => {
                    assert_eq!(l.len(), list.len());
                    for (got, view) in list.iter().zip(l) {
                        match (got, view) {
                            (GotBlob::Blob(a), GotBlobView::Blob(b)) => assert_eq!(&a[..], b),
                            (
                                GotBlob::Error { code, message },
                                GotBlobView::Error {
                                    code: c,
                                    message: m,
                                },
                            ) => assert_eq!((code, message), (&c, &m)),
                            (a, b) => panic!("{a:?} seen as {b:?}"),
                        }
                    }
                }
                (r, ResponseView::Other(o)) => {
                    assert!(!matches!(r, Response::Blob { .. } | Response::Blobs { .. }));
                    assert_eq!(&o, r);
                }
                (r, v) => panic!("{r:?} seen as {v:?}"),
            }
        }
    }

    #[test]
    fn oversized_truncated_and_trailing_frames_are_refused() {
        assert!(matches!(
            frame_len(u32::MAX.to_le_bytes()),
            Err(WireError::TooLarge(_))
        ));
        let f = Request::Get {
            id: BlobId([4; 32]),
            kind: 1,
        }
        .encode();
        assert!(matches!(
            Request::decode(&f[..f.len() - 1]),
            Err(WireError::Truncated { .. })
        ));
        let mut g = f.clone();
        g.push(0);
        assert!(matches!(Request::decode(&g), Err(WireError::Trailing(1))));
        let big = Request::Has {
            ids: vec![BlobId([0; 32]); MAX_HAS_BATCH + 1],
        }
        .encode();
        assert!(matches!(
            Request::decode(&big),
            Err(WireError::BatchTooLarge(_))
        ));
        let big = Request::GetBatch {
            ids: vec![BlobId([0; 32]); MAX_GET_BATCH + 1],
            kind: 0,
        }
        .encode();
        assert!(matches!(
            Request::decode(&big),
            Err(WireError::GetBatchTooLarge(_))
        ));
    }

    #[test]
    fn hello_comes_first_and_once() {
        let mut s: Session<&str> = Session::default();
        let has = Request::Has { ids: vec![] };
        assert!(matches!(
            s.admit(&has),
            Err(Response::Error {
                code: ErrorCode::Unauthenticated,
                ..
            })
        ));
        let bad = Request::Hello {
            version: 99,
            credential: String::new(),
        };
        assert!(matches!(
            s.admit(&bad),
            Err(Response::Error {
                code: ErrorCode::Version,
                ..
            })
        ));
        let hello = Request::Hello {
            version: PROTOCOL_VERSION,
            credential: "c".into(),
        };
        assert_eq!(s.admit(&hello), Ok(None));
        s.established("alice", PROTOCOL_VERSION);
        assert_eq!(s.admit(&has), Ok(Some("alice")));
        assert!(matches!(
            s.admit(&hello),
            Err(Response::Error {
                code: ErrorCode::BadRequest,
                ..
            })
        ));
        s.close();
        assert!(s.admit(&has).is_err());
    }

    /// A server serves the older protocol too, but only its requests: a
    /// client of version 2 gets `Welcome`, and `GetBatch` (version 3) is
    /// refused in its session.
    #[test]
    fn older_clients_are_served_what_their_version_has() {
        let mut s: Session<&str> = Session::default();
        let old = Request::Hello {
            version: MIN_PROTOCOL_VERSION,
            credential: "c".into(),
        };
        assert_eq!(s.admit(&old), Ok(None));
        s.established("bob", MIN_PROTOCOL_VERSION);
        let get = Request::Get {
            id: BlobId([1; 32]),
            kind: 0,
        };
        assert_eq!(s.admit(&get), Ok(Some("bob")));
        let batch = Request::GetBatch {
            ids: vec![BlobId([1; 32])],
            kind: 0,
        };
        assert!(matches!(
            s.admit(&batch),
            Err(Response::Error {
                code: ErrorCode::BadRequest,
                ..
            })
        ));
        s.established("bob", GET_BATCH_VERSION);
        assert_eq!(s.admit(&batch), Ok(Some("bob")));
        let latest = Request::Latest {
            machine: None,
            source: b"/home".to_vec(),
        };
        assert!(matches!(
            s.admit(&latest),
            Err(Response::Error {
                code: ErrorCode::BadRequest,
                ..
            })
        ));
        s.established("bob", LATEST_VERSION);
        assert_eq!(s.admit(&latest), Ok(Some("bob")));
        let too_old = Request::Hello {
            version: MIN_PROTOCOL_VERSION - 1,
            credential: "c".into(),
        };
        assert!(matches!(
            Session::<&str>::default().admit(&too_old),
            Err(Response::Error {
                code: ErrorCode::Version,
                ..
            })
        ));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let _ = Request::decode(&bytes);
            let _ = Response::decode(&bytes);
        }

        #[test]
        fn decoding_arbitrary_payloads_in_valid_frames_never_panics(body in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let mut f = ((body.len() + 1) as u32).to_le_bytes().to_vec();
            f.push(FRAME_VERSION);
            f.extend_from_slice(&body);
            let _ = Request::decode(&f);
            let _ = Response::decode(&f);
            let _ = Response::view(&f);
        }

        /// A frame the view accepts is one `decode` accepts, with the same
        /// contents.
        #[test]
        fn mutated_blob_answers_view_as_they_decode(at: usize, val: u8) {
            let r = Response::Blobs {
                list: vec![
                    GotBlob::Blob(vec![1, 2, 3]),
                    GotBlob::Error { code: ErrorCode::NotFound, message: "x".into() },
                ],
            };
            let mut f = r.encode();
            let i = at % f.len();
            f[i] = val;
            if let Ok(ResponseView::Blobs(l)) = Response::view(&f) {
                let Ok(Response::Blobs { list }) = Response::decode(&f) else {
                    panic!("viewed but not decoded")
                };
                prop_assert_eq!(l.len(), list.len());
            }
        }

        #[test]
        fn mutated_requests_never_panic(which in 0usize..12, at: usize, val: u8) {
            let mut f = requests()[which].encode();
            let i = at % f.len();
            f[i] = val;
            let _ = Request::decode(&f);
        }
    }
}
