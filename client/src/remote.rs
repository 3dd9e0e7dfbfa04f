//! A store on a homesync server, reached over QUIC: the second
//! implementation of [`Repository`], so the backup and restore engine runs
//! unchanged against a remote store.
//!
//! The engine is synchronous (rayon workers); each call here runs one
//! request on its own QUIC stream of a shared connection, so the workers'
//! calls travel in parallel. The server's certificate is pinned by its
//! BLAKE3 fingerprint: no CA, and nothing else is accepted.

use crate::error::ClientError;
use homesync_protocol::wire::{
    self, ErrorCode, GotBlobView, PutItem, Request, Response, ResponseView,
};
use homesync_protocol::{
    BlobId, BlobKind, Repository, Snapshot, SnapshotId, StoreConfig, StoreError, Transfer, blob,
};
use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Where and how to reach a server.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// `host:port`.
    pub server: String,
    /// 64 hex digits: BLAKE3 of the server certificate (DER).
    pub fingerprint: String,
    /// Machine or admin credential, or a one-time restore token.
    pub credential: String,
    /// A session that mostly receives (a restore): both ends may then use
    /// packets of up to [`wire::MAX_UDP_PAYLOAD`] bytes where the path
    /// carries them. Otherwise the client keeps quinn's Ethernet-sized
    /// packets: discovering a larger MTU costs about ten padded probes of
    /// up to 6.5 KB in each direction, more than a daemon's small
    /// incremental snapshot moves in all.
    pub bulk_download: bool,
}

/// Bytes of chunk uploads in flight at once, in units of [`UNIT`]: enough
/// to keep a long link busy while the workers go on reading and
/// compressing; bounded, so memory is too (24 MiB).
const PIPELINE: u32 = 384;
const UNIT: usize = 64 << 10;
/// Chunks smaller than this travel in batches of up to this many bytes...
const BATCH_BYTES: usize = 1 << 20;
/// ...or this many chunks.
const BATCH_CHUNKS: usize = 512;

/// Chunk uploads sent but not yet answered.
#[derive(Default)]
struct InFlight {
    ids: Mutex<HashSet<BlobId>>,
    /// The first failed upload; every later call reports it.
    error: Mutex<Option<String>>,
}

pub struct RemoteRepository {
    runtime: tokio::runtime::Runtime,
    permits: Arc<tokio::sync::Semaphore>,
    inflight: Arc<InFlight>,
    /// Small chunks waiting to go as one `PutBatch`, and their bytes.
    batch: Mutex<(Vec<PutItem>, usize)>,
    buffers: Buffers,
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    config: StoreConfig,
    machine: String,
    role: String,
    /// The protocol version of the session: the server's answer to ours,
    /// lower with an older server (then blobs are fetched one by one).
    version: u32,
    /// Payload bytes handed to the connection (see [`Transfer`]).
    blob_bytes: AtomicU64,
    delta_bytes: AtomicU64,
    deltas: AtomicU64,
    /// Upload bandwidth limit, if any.
    throttle: Mutex<Option<Throttle>>,
}

/// A token bucket over upload bytes: each upload pushes the time the link
/// is free again by `bytes / rate`; a sender waits for whatever exceeds a
/// short burst.
struct Throttle {
    rate: u64,
    free_at: std::time::Instant,
}

impl Throttle {
    /// How long a sender of `bytes` at `now` waits.
    fn wait(&mut self, now: std::time::Instant, bytes: usize) -> std::time::Duration {
        self.free_at = self.free_at.max(now)
            + std::time::Duration::from_secs_f64(bytes as f64 / self.rate as f64);
        self.free_at
            .saturating_duration_since(now)
            .saturating_sub(BURST)
    }
}

/// Bytes a throttled client may send ahead of its rate.
const BURST: std::time::Duration = std::time::Duration::from_millis(250);

/// Accepts exactly the certificate whose BLAKE3 is the pinned fingerprint.
#[derive(Debug)]
struct Pinned {
    fingerprint: [u8; 32],
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if blake3::hash(end_entity.as_ref()).as_bytes() == &self.fingerprint {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server's certificate has fingerprint {}, not the pinned one",
                blake3::hash(end_entity.as_ref()).to_hex()
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn refused(msg: impl Into<String>) -> StoreError {
    StoreError::Refused(msg.into())
}

/// A server error as the engine's error type.
fn from_wire(code: ErrorCode, message: String, id: Option<BlobId>) -> StoreError {
    match (code, id) {
        (ErrorCode::NotFound, Some(id)) => StoreError::Missing(id),
        (ErrorCode::NotFound, None) => StoreError::NoSnapshot(message),
        (ErrorCode::Corrupt, Some(id)) => StoreError::CorruptDetail {
            id,
            detail: format!("server: {message}"),
        },
        _ => refused(format!("server: {code:?}: {message}")),
    }
}

fn parse_fingerprint(hex: &str) -> Result<[u8; 32], ClientError> {
    hex.parse::<BlobId>()
        .map(|b| b.0)
        .map_err(|_| ClientError::Usage(format!("fingerprint {hex:?} is not 64 hex digits")))
}

impl RemoteRepository {
    /// Connects, pins the certificate, and opens the session with `Hello`.
    pub fn connect(opts: &RemoteOptions) -> Result<RemoteRepository, ClientError> {
        Self::connect_speaking(opts, wire::PROTOCOL_VERSION)
    }

    /// [`RemoteRepository::connect`] offering protocol `version` at most:
    /// what a client of an older release does (for tests of how a server
    /// serves one).
    pub fn connect_speaking(
        opts: &RemoteOptions,
        version: u32,
    ) -> Result<RemoteRepository, ClientError> {
        let fingerprint = parse_fingerprint(&opts.fingerprint)?;
        let addr: SocketAddr = opts
            .server
            .to_socket_addrs()
            .map_err(|e| ClientError::Usage(format!("server address {:?}: {e}", opts.server)))?
            .next()
            .ok_or_else(|| {
                ClientError::Usage(format!(
                    "server address {:?} resolves to nothing",
                    opts.server
                ))
            })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("quic")
            .enable_all()
            .build()
            .map_err(|source| ClientError::Io {
                path: "tokio runtime".into(),
                source,
            })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(Pinned {
            fingerprint,
            algorithms: provider.signature_verification_algorithms,
        });
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| refused(format!("TLS setup: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        tls.alpn_protocols = vec![wire::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| refused(format!("TLS setup: {e}")))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        // Keep a quiet session (a long scan) alive through NATs.
        transport.keep_alive_interval(Some(std::time::Duration::from_secs(10)));
        let mut endpoint_config = quinn::EndpointConfig::default();
        if opts.bulk_download {
            let mut mtu = quinn::MtuDiscoveryConfig::default();
            mtu.upper_bound(wire::MAX_UDP_PAYLOAD);
            transport.mtu_discovery_config(Some(mtu));
            endpoint_config
                .max_udp_payload_size(wire::MAX_UDP_PAYLOAD)
                .map_err(|e| refused(format!("QUIC setup: {e}")))?;
        }
        config.transport_config(Arc::new(transport));
        let bind: SocketAddr = if addr.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        }
        .parse()
        .expect("literal");
        let _guard = runtime.enter();
        let mut endpoint = udp_socket(bind)
            .and_then(|socket| {
                quinn::Endpoint::new(endpoint_config, None, socket, Arc::new(quinn::TokioRuntime))
            })
            .map_err(|source| ClientError::Io {
                path: "QUIC client socket".into(),
                source,
            })?;
        endpoint.set_default_client_config(config);
        // A server of an older protocol refuses ours with `Version` and
        // closes the connection: connect again speaking its version.
        let mut version = version;
        let (conn, reply) = loop {
            let conn = runtime
                .block_on(async {
                    let connecting = endpoint
                        .connect(addr, "homesync")
                        .map_err(|e| e.to_string())?;
                    connecting.await.map_err(|e| e.to_string())
                })
                .map_err(|e| refused(format!("connecting to {addr}: {e}")))?;
            let hello = Request::Hello {
                version,
                credential: opts.credential.clone(),
            };
            match runtime.block_on(call(&conn, &hello))? {
                Response::Error {
                    code: ErrorCode::Version,
                    message,
                } if version > wire::MIN_PROTOCOL_VERSION => {
                    tracing::debug!("{addr}: {message}; speaking protocol {}", version - 1);
                    conn.close(0u32.into(), b"another version");
                    version -= 1;
                }
                reply => break (conn, reply),
            }
        };
        let Response::Welcome {
            version: agreed,
            store_id,
            chunker,
            zstd_level,
            machine,
            role,
        } = reply
        else {
            return Err(match reply {
                Response::Error { code, message } => from_wire(code, message, None).into(),
                other => refused(format!("unexpected answer to Hello: {other:?}")).into(),
            });
        };
        // A server of version 2 answers with its own version, which was ours.
        let version = agreed.min(version);
        chunker
            .validate()
            .map_err(|e| refused(format!("server's chunker: {e}")))?;
        drop(_guard);
        Ok(RemoteRepository {
            runtime,
            permits: Arc::new(tokio::sync::Semaphore::new(PIPELINE as usize)),
            inflight: Arc::default(),
            batch: Mutex::default(),
            buffers: Buffers::default(),
            endpoint,
            conn,
            config: StoreConfig {
                id: store_id,
                chunker,
                zstd_level,
            },
            machine,
            role,
            version,
            blob_bytes: AtomicU64::new(0),
            delta_bytes: AtomicU64::new(0),
            deltas: AtomicU64::new(0),
            throttle: Mutex::new(None),
        })
    }

    /// The machine the credential belongs to (snapshots are recorded under it).
    pub fn machine(&self) -> &str {
        &self.machine
    }

    /// The protocol version of the session (see [`wire::PROTOCOL_VERSION`]).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// "machine", "admin" or "restore".
    pub fn role(&self) -> &str {
        &self.role
    }

    /// Snapshots of `machine` (an admin's or restore token's view of another machine).
    pub fn snapshots_of(
        &self,
        machine: Option<String>,
    ) -> Result<Vec<(SnapshotId, Snapshot)>, StoreError> {
        match self.request(&Request::Snapshots { machine }, None)? {
            Response::Snapshots { list } => decode_snapshots(list),
            other => Err(unexpected(other)),
        }
    }

    /// Moves the connection to a new local socket (a laptop changing
    /// networks); QUIC carries the session over.
    pub fn rebind(&self) -> Result<(), ClientError> {
        let bind: SocketAddr = "0.0.0.0:0".parse().expect("literal");
        let socket = udp_socket(bind).map_err(|source| ClientError::Io {
            path: "QUIC client socket".into(),
            source,
        })?;
        let _guard = self.runtime.enter();
        self.endpoint
            .rebind(socket)
            .map_err(|source| ClientError::Io {
                path: "QUIC client socket".into(),
                source,
            })
    }

    /// Sends `bytes` as one request stream and returns the raw answer: for
    /// protocol diagnostics and tests of how a server meets bad input.
    pub fn send_raw(&self, bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
        let conn = self.conn.clone();
        self.runtime.block_on(async move {
            let lost =
                |e: &dyn std::fmt::Display| refused(format!("connection to the server lost: {e}"));
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost(&e))?;
            send.write_all(bytes).await.map_err(|e| lost(&e))?;
            send.finish().map_err(|e| lost(&e))?;
            recv.read_to_end(wire::MAX_FRAME + 4)
                .await
                .map_err(|e| lost(&e))
        })
    }

    /// Opens a request stream, sends `bytes` and leaves the stream open
    /// without finishing it, as a stalled or hostile peer would (tests of
    /// how a server meets slow clients). The stream lives as long as the
    /// returned handle; [`RawStream::answer`] waits for the server's reply.
    pub fn stall_raw(&self, bytes: &[u8]) -> Result<RawStream, StoreError> {
        let conn = self.conn.clone();
        let (send, recv) = self.runtime.block_on(async move {
            let lost =
                |e: &dyn std::fmt::Display| refused(format!("connection to the server lost: {e}"));
            let (mut send, recv) = conn.open_bi().await.map_err(|e| lost(&e))?;
            send.write_all(bytes).await.map_err(|e| lost(&e))?;
            Ok::<_, StoreError>((send, recv))
        })?;
        Ok(RawStream {
            _send: send,
            recv,
            runtime: self.runtime.handle().clone(),
        })
    }

    /// Sends the open batch, waits until every chunk upload is answered;
    /// reports the first failure.
    fn drain(&self) -> Result<(), StoreError> {
        let (chunks, bytes) =
            std::mem::take(&mut *self.batch.lock().unwrap_or_else(|e| e.into_inner()));
        if !chunks.is_empty() {
            self.send_batch(chunks, bytes)?;
        }
        let permits = self.permits.clone();
        let all = self
            .runtime
            .block_on(permits.acquire_many_owned(PIPELINE))
            .map_err(|_| refused("upload pipeline closed"))?;
        drop(all);
        self.upload_error()
    }

    fn upload_error(&self) -> Result<(), StoreError> {
        match &*self
            .inflight
            .error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
        {
            Some(msg) => Err(refused(format!("an earlier upload failed: {msg}"))),
            None => Ok(()),
        }
    }

    /// Queues a chunk: a small one joins the open batch (sent as one
    /// `PutBatch` when it holds 1 MiB or 512 chunks), a large one is sent
    /// alone. Neither waits for the answer.
    fn put_chunk(&self, id: BlobId, blob: &[u8]) -> Result<bool, StoreError> {
        self.upload_error()?;
        if !self
            .inflight
            .ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id)
        {
            return Ok(false);
        }
        if blob.len() >= BATCH_BYTES {
            let req = Request::Put {
                id,
                kind: BlobKind::Chunk as u8,
                blob: blob.to_vec(),
            };
            self.send_pipelined(vec![id], req, blob.len())?;
            return Ok(true);
        }
        let full = {
            let mut batch = self.batch.lock().unwrap_or_else(|e| e.into_inner());
            batch.0.push(PutItem {
                id,
                blob: blob.to_vec(),
            });
            batch.1 += blob.len();
            (batch.1 >= BATCH_BYTES || batch.0.len() >= BATCH_CHUNKS)
                .then(|| std::mem::take(&mut *batch))
        };
        if let Some((chunks, bytes)) = full {
            self.send_batch(chunks, bytes)?;
        }
        Ok(true)
    }

    /// Limits uploads to `bytes_per_second` (the daemon's
    /// `bandwidth_limit`); `None` lifts the limit.
    pub fn set_rate_limit(&self, bytes_per_second: Option<u64>) {
        *self.throttle.lock().unwrap_or_else(|e| e.into_inner()) =
            bytes_per_second.filter(|&r| r > 0).map(|rate| Throttle {
                rate,
                free_at: std::time::Instant::now(),
            });
    }

    /// Waits as long as the rate limit asks before sending `bytes`.
    fn pace(&self, bytes: usize) {
        let wait = {
            let mut t = self.throttle.lock().unwrap_or_else(|e| e.into_inner());
            let Some(t) = t.as_mut() else { return };
            t.wait(std::time::Instant::now(), bytes)
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }

    fn send_batch(&self, chunks: Vec<PutItem>, bytes: usize) -> Result<(), StoreError> {
        let ids = chunks.iter().map(|c| c.id).collect();
        self.send_pipelined(ids, Request::PutBatch { chunks }, bytes)
    }

    /// Sends an upload without waiting for its answer, within the byte
    /// budget of the pipeline; a failure is reported by the next call.
    fn send_pipelined(
        &self,
        ids: Vec<BlobId>,
        req: Request,
        bytes: usize,
    ) -> Result<(), StoreError> {
        self.pace(bytes);
        let units = (bytes.div_ceil(UNIT) as u32).clamp(1, PIPELINE);
        let permit = self
            .runtime
            .block_on(self.permits.clone().acquire_many_owned(units))
            .map_err(|_| refused("upload pipeline closed"))?;
        self.blob_bytes.fetch_add(bytes as u64, Relaxed);
        let conn = self.conn.clone();
        let inflight = self.inflight.clone();
        self.runtime.spawn(async move {
            let first = ids[0];
            let failure = match call(&conn, &req).await {
                Ok(Response::Put { .. }) => None,
                Ok(Response::PutBatch { stored }) if stored.len() == ids.len() => None,
                Ok(Response::Error { code, message }) => {
                    Some(format!("uploading chunk {first}…: {code:?}: {message}"))
                }
                Ok(other) => Some(format!("uploading chunk {first}…: {}", unexpected(other))),
                Err(e) => Some(format!("uploading chunk {first}…: {e}")),
            };
            if let Some(msg) = failure {
                inflight
                    .error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(msg);
            }
            let mut sending = inflight.ids.lock().unwrap_or_else(|e| e.into_inner());
            for id in &ids {
                sending.remove(id);
            }
            drop(permit);
        });
        Ok(())
    }

    /// `get_blobs` from a server without `GetBatch` (protocol 2): one `Get`
    /// per blob, all on their way at once, as many streams as the server
    /// allows (a worker asking for a group of 64 small files must not wait
    /// for 64 round trips one after another).
    #[allow(clippy::type_complexity)]
    fn get_each(
        &self,
        ids: &[BlobId],
        kind: BlobKind,
    ) -> Result<Vec<Result<Vec<u8>, StoreError>>, StoreError> {
        let sending = {
            let inflight = self.inflight.ids.lock().unwrap_or_else(|e| e.into_inner());
            ids.iter().any(|id| inflight.contains(id))
        };
        if sending {
            self.drain()?;
        }
        let answers = self.runtime.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for (i, &id) in ids.iter().enumerate() {
                let conn = self.conn.clone();
                set.spawn(async move {
                    let req = Request::Get {
                        id,
                        kind: kind as u8,
                    };
                    (i, call_frame(&conn, &req, Vec::new()).await)
                });
            }
            let mut answers: Vec<Option<Result<Vec<u8>, StoreError>>> =
                ids.iter().map(|_| None).collect();
            while let Some(done) = set.join_next().await {
                let (i, frame) = done.map_err(|e| refused(format!("request task failed: {e}")))?;
                answers[i] = Some(frame);
            }
            Ok::<_, StoreError>(answers)
        })?;
        answers
            .into_iter()
            .zip(ids)
            .map(|(frame, &id)| {
                let frame = frame.expect("every request is answered")?;
                Ok(match view(&frame)? {
                    ResponseView::Blob(blob) => blob::decode_verified(blob, id, kind)
                        .map_err(|source| StoreError::Corrupt { id, source }),
                    ResponseView::Other(Response::Error { code, message }) => {
                        Err(from_wire(code, message, Some(id)))
                    }
                    other => Err(unexpected_view(other)),
                })
            })
            .collect()
    }

    fn request(&self, req: &Request, id: Option<BlobId>) -> Result<Response, StoreError> {
        match self.runtime.block_on(call(&self.conn, req))? {
            Response::Error { code, message } => Err(from_wire(code, message, id)),
            r => Ok(r),
        }
    }
}

/// Snapshots as the server sent them, each id computed here from its bytes,
/// oldest first.
fn decode_snapshots<B: AsRef<[u8]>>(
    list: Vec<B>,
) -> Result<Vec<(SnapshotId, Snapshot)>, StoreError> {
    let mut v = list
        .into_iter()
        .map(|bytes| {
            let bytes = bytes.as_ref();
            let id = SnapshotId::of(bytes);
            Snapshot::decode(bytes)
                .map(|s| (id, s))
                .map_err(|e| refused(format!("server sent a bad snapshot: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    v.sort_by_key(|(id, s)| (s.time, *id));
    Ok(v)
}

/// A UDP socket with 4 MiB buffers (the kernel default drops packets under
/// a burst of uploads, and each loss halves QUIC's congestion window).
fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Best effort: the kernel caps them at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

fn unexpected(r: Response) -> StoreError {
    refused(format!(
        "unexpected answer from the server: {:?}",
        std::mem::discriminant(&r)
    ))
}

fn unexpected_view(v: ResponseView<'_>) -> StoreError {
    match v {
        ResponseView::Other(r) => unexpected(r),
        v => refused(format!(
            "unexpected answer from the server: {} blobs",
            match v {
                ResponseView::Blobs(l) => l.len(),
                _ => 1,
            }
        )),
    }
}

/// A response frame seen in place (see [`Response::view`]).
fn view(frame: &[u8]) -> Result<ResponseView<'_>, StoreError> {
    Response::view(frame).map_err(|e| refused(format!("malformed answer from the server: {e}")))
}

/// One request on its own stream.
async fn call(conn: &quinn::Connection, req: &Request) -> Result<Response, StoreError> {
    let bytes = call_frame(conn, req, Vec::new()).await?;
    Response::decode(&bytes).map_err(|e| refused(format!("malformed answer from the server: {e}")))
}

/// One request on its own stream; the answer's frame, undecoded, in `buf`
/// (whatever it held is dropped; see [`Buffers`]).
async fn call_frame(
    conn: &quinn::Connection,
    req: &Request,
    mut buf: Vec<u8>,
) -> Result<Vec<u8>, StoreError> {
    let lost = |e: &dyn std::fmt::Display| refused(format!("connection to the server lost: {e}"));
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost(&e))?;
    // Handed over whole (no copy into quinn's buffers).
    send.write_chunk(req.encode().into())
        .await
        .map_err(|e| lost(&e))?;
    send.finish().map_err(|e| lost(&e))?;
    // Room for the announced size (checked against the limit) at once;
    // quinn's chunks are appended, so the buffer is never zeroed first.
    let mut header = [0u8; 4];
    recv.read_exact(&mut header).await.map_err(|e| lost(&e))?;
    let len = wire::frame_len(header)
        .map_err(|e| refused(format!("malformed answer from the server: {e}")))?;
    buf.clear();
    buf.reserve_exact(4 + len);
    buf.extend_from_slice(&header);
    while buf.len() < 4 + len {
        match recv
            .read_chunk(4 + len - buf.len(), true)
            .await
            .map_err(|e| lost(&e))?
        {
            Some(chunk) => buf.extend_from_slice(&chunk.bytes),
            None => return Err(lost(&format!("answer truncated at {} bytes", buf.len()))),
        }
    }
    Ok(buf)
}

/// Answer buffers kept for the next blob answers: a restore receives
/// gigabytes in answers of up to a few MiB, and memory freed and taken
/// again from the kernel for each (page faults, zeroing) cost the client
/// several percent of its CPU.
#[derive(Default)]
struct Buffers(Mutex<Vec<Vec<u8>>>);

/// Buffers kept, and the largest kept (a blob answer is at most
/// [`wire::GET_BATCH_BYTES`] plus one chunk).
const KEPT_BUFFERS: usize = 8;
const KEPT_BUFFER_MAX: usize = 2 * wire::GET_BATCH_BYTES;

impl Buffers {
    fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default()
    }

    fn give(&self, buf: Vec<u8>) {
        if buf.capacity() <= KEPT_BUFFER_MAX {
            let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if kept.len() < KEPT_BUFFERS {
                kept.push(buf);
            }
        }
    }
}

impl Drop for RemoteRepository {
    fn drop(&mut self) {
        let _ = self.drain();
        let stats = self.conn.stats();
        tracing::debug!(
            mtu = stats.path.current_mtu,
            datagrams_received = stats.udp_rx.datagrams,
            datagrams_sent = stats.udp_tx.datagrams,
            lost_packets = stats.path.lost_packets,
            "QUIC path"
        );
        self.conn.close(0u32.into(), b"done");
        let endpoint = self.endpoint.clone();
        self.runtime.block_on(async move {
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(2), endpoint.wait_idle()).await;
        });
    }
}

impl Repository for RemoteRepository {
    fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn has_blobs(&self, ids: &[BlobId]) -> Result<Vec<bool>, StoreError> {
        self.upload_error()?;
        // Chunks on their way up count as present: never sent twice.
        let mut out: Vec<bool> = {
            let sending = self.inflight.ids.lock().unwrap_or_else(|e| e.into_inner());
            ids.iter().map(|id| sending.contains(id)).collect()
        };
        let ask: Vec<usize> = (0..ids.len()).filter(|&i| !out[i]).collect();
        for batch in ask.chunks(wire::MAX_HAS_BATCH) {
            let req = Request::Has {
                ids: batch.iter().map(|&i| ids[i]).collect(),
            };
            match self.request(&req, None)? {
                Response::Has { present } if present.len() == batch.len() => {
                    for (&i, p) in batch.iter().zip(present) {
                        out[i] = p;
                    }
                }
                other => return Err(unexpected(other)),
            }
        }
        Ok(out)
    }

    /// Chunks are pipelined (the answer "stored" means "sent"); a tree
    /// waits for every chunk upload first, because the server accepts a
    /// tree only when everything it names is there.
    fn put_blob(&self, id: BlobId, kind: BlobKind, encoded: &[u8]) -> Result<bool, StoreError> {
        if kind == BlobKind::Chunk {
            return self.put_chunk(id, encoded);
        }
        let req = Request::Put {
            id,
            kind: kind as u8,
            blob: encoded.to_vec(),
        };
        self.drain()?;
        self.pace(encoded.len());
        self.blob_bytes.fetch_add(encoded.len() as u64, Relaxed);
        match self.request(&req, Some(id))? {
            Response::Put { stored } => Ok(stored),
            other => Err(unexpected(other)),
        }
    }

    fn get_blob(&self, id: BlobId, kind: BlobKind) -> Result<Vec<u8>, StoreError> {
        // Only a blob still on its way up must wait for the pipeline (the
        // parent snapshot's trees, read mid-backup, need not).
        let sending = self
            .inflight
            .ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&id);
        if sending {
            self.drain()?;
        }
        let req = Request::Get {
            id,
            kind: kind as u8,
        };
        let frame = self
            .runtime
            .block_on(call_frame(&self.conn, &req, self.buffers.take()))?;
        let got = match view(&frame)? {
            // The server sends it as stored: this check is the one that
            // finds damage, on its disk or on the way.
            ResponseView::Blob(blob) => blob::decode_verified(blob, id, kind)
                .map_err(|source| StoreError::Corrupt { id, source }),
            ResponseView::Other(Response::Error { code, message }) => {
                Err(from_wire(code, message, Some(id)))
            }
            other => Err(unexpected_view(other)),
        };
        self.buffers.give(frame);
        got
    }

    /// One `GetBatch` stream for many blobs (a stream, a server task and a
    /// lookup per small file cost more than the file); what does not fit
    /// in one answer is asked for again. Each blob is verified here.
    fn get_blobs(
        &self,
        ids: &[BlobId],
        kind: BlobKind,
    ) -> Result<Vec<Result<Vec<u8>, StoreError>>, StoreError> {
        if self.version < wire::GET_BATCH_VERSION {
            return self.get_each(ids, kind);
        }
        let sending = {
            let inflight = self.inflight.ids.lock().unwrap_or_else(|e| e.into_inner());
            ids.iter().any(|id| inflight.contains(id))
        };
        if sending {
            self.drain()?;
        }
        let mut out = Vec::with_capacity(ids.len());
        while out.len() < ids.len() {
            let rest = &ids[out.len()..];
            let ask = &rest[..rest.len().min(wire::MAX_GET_BATCH)];
            let req = Request::GetBatch {
                ids: ask.to_vec(),
                kind: kind as u8,
            };
            let frame = self
                .runtime
                .block_on(call_frame(&self.conn, &req, self.buffers.take()))?;
            let list = match view(&frame)? {
                ResponseView::Blobs(list) if !list.is_empty() && list.len() <= ask.len() => list,
                ResponseView::Other(Response::Error { code, message }) => {
                    return Err(from_wire(code, message, None));
                }
                other => return Err(unexpected_view(other)),
            };
            out.extend(list.into_iter().zip(ask).map(|(got, &id)| {
                match got {
                    // The network is not trusted, nor is the server's disk.
                    GotBlobView::Blob(blob) => blob::decode_verified(blob, id, kind)
                        .map_err(|source| StoreError::Corrupt { id, source }),
                    GotBlobView::Error { code, message } => Err(from_wire(code, message, Some(id))),
                }
            }));
            self.buffers.give(frame);
        }
        Ok(out)
    }

    fn commit_snapshot(&self, snapshot: &Snapshot) -> Result<SnapshotId, StoreError> {
        self.drain()?;
        match self.request(
            &Request::Commit {
                snapshot: snapshot.encode(),
            },
            None,
        )? {
            Response::Committed { id } if id == snapshot.id() => Ok(id),
            Response::Committed { id } => Err(refused(format!(
                "server committed {id}, not {}",
                snapshot.id()
            ))),
            other => Err(unexpected(other)),
        }
    }

    fn snapshots(&self) -> Result<Vec<(SnapshotId, Snapshot)>, StoreError> {
        self.snapshots_of(None)
    }

    /// One `Latest` question (protocol 4), not the whole list; the answer is
    /// checked to be what was asked for.
    fn latest_snapshot(
        &self,
        machine: &str,
        source: &[u8],
    ) -> Result<Option<(SnapshotId, Snapshot)>, StoreError> {
        if self.version < wire::LATEST_VERSION {
            return Ok(self
                .snapshots_of(Some(machine.to_string()))?
                .into_iter()
                .rev()
                .find(|(_, s)| s.machine == machine && s.source == source));
        }
        let req = Request::Latest {
            machine: Some(machine.to_string()),
            source: source.to_vec(),
        };
        let list = match self.request(&req, None)? {
            Response::Snapshots { list } if list.len() <= 1 => decode_snapshots(list)?,
            other => return Err(unexpected(other)),
        };
        match list.into_iter().next() {
            Some((_, s)) if s.machine != machine || s.source != source => Err(refused(format!(
                "asked for the latest snapshot of {machine} for {}, the server sent one of {} for {}",
                String::from_utf8_lossy(source),
                s.machine,
                String::from_utf8_lossy(&s.source)
            ))),
            found => Ok(found),
        }
    }

    fn forget_snapshot(&self, id: SnapshotId) -> Result<(), StoreError> {
        match self.request(&Request::Forget { id }, None)? {
            Response::Forgotten => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    fn generation(&self) -> Result<u64, StoreError> {
        match self.request(&Request::Generation, None)? {
            Response::Generation { generation } => Ok(generation),
            other => Err(unexpected(other)),
        }
    }

    fn prefers_deltas(&self) -> bool {
        true
    }

    /// Signatures come from the server, so nothing waits for the upload
    /// pipeline: a chunk still on its way up is simply reported absent.
    fn signatures(&self, ids: &[BlobId]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for batch in ids.chunks(wire::MAX_SIGNATURE_BATCH) {
            let req = Request::Signatures {
                ids: batch.to_vec(),
            };
            match self.request(&req, None)? {
                Response::Signatures { list } if list.len() == batch.len() => {
                    out.extend(list.into_iter().map(|s| s.map(|b| b.into_vec())));
                }
                other => return Err(unexpected(other)),
            }
        }
        Ok(out)
    }

    /// Waits for the answer (unlike whole chunks): a refused delta is
    /// followed by the blob itself, so the caller must know. A tree waits
    /// for the chunk uploads first, as in `put_blob`.
    fn put_delta(
        &self,
        id: BlobId,
        kind: BlobKind,
        base: BlobId,
        delta: &[u8],
    ) -> Result<bool, StoreError> {
        if kind == BlobKind::Tree {
            self.drain()?;
        }
        self.upload_error()?;
        if self
            .inflight
            .ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&id)
        {
            return Ok(false);
        }
        self.pace(delta.len());
        self.delta_bytes.fetch_add(delta.len() as u64, Relaxed);
        self.deltas.fetch_add(1, Relaxed);
        let req = Request::PutDelta {
            id,
            kind: kind as u8,
            base,
            delta: delta.to_vec(),
        };
        match self.request(&req, Some(base))? {
            Response::Put { stored } => Ok(stored),
            other => Err(unexpected(other)),
        }
    }

    fn transfer(&self) -> Option<Transfer> {
        let stats = self.conn.stats();
        Some(Transfer {
            sent: stats.udp_tx.bytes,
            received: stats.udp_rx.bytes,
            blob_bytes: self.blob_bytes.load(Relaxed),
            delta_bytes: self.delta_bytes.load(Relaxed),
            deltas: self.deltas.load(Relaxed),
        })
    }
}

/// A request stream left open by [`RemoteRepository::stall_raw`].
pub struct RawStream {
    _send: quinn::SendStream,
    recv: quinn::RecvStream,
    runtime: tokio::runtime::Handle,
}

impl RawStream {
    /// The server's answer on this stream (when it gives up on it).
    pub fn answer(mut self) -> Result<Vec<u8>, StoreError> {
        let recv = &mut self.recv;
        self.runtime
            .block_on(recv.read_to_end(wire::MAX_FRAME + 4))
            .map_err(|e| refused(format!("connection to the server lost: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn the_throttle_holds_senders_to_the_rate_after_a_short_burst() {
        let start = Instant::now();
        let mut t = Throttle {
            rate: 1_000_000,
            free_at: start,
        };
        // 200 KB at 1 MB/s: within the burst, no wait.
        assert_eq!(t.wait(start, 200_000), Duration::ZERO);
        // 800 KB more: the link is busy until 1 s, minus the burst.
        let w = t.wait(start, 800_000);
        assert!((w.as_secs_f64() - 0.75).abs() < 1e-6, "{w:?}");
        // Ten seconds later the bucket is empty again.
        assert_eq!(
            t.wait(start + Duration::from_secs(10), 100_000),
            Duration::ZERO
        );
        // 4 MB sent at once from then on take 4 s at this rate.
        let w = t.wait(start + Duration::from_secs(10), 4_000_000);
        assert!((w.as_secs_f64() - (4.1 - 0.25)).abs() < 1e-6, "{w:?}");
    }
}
