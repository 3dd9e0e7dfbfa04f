//! The QUIC service: `homesync serve`. Moves frames between quinn streams
//! and the store; what the frames mean and in which order they may come is
//! decided by `homesync_protocol::wire`, who may do what by [`crate::auth`].
//!
//! Every request is its own bidirectional stream. The store's work (SQLite,
//! file I/O, hashing) runs on tokio's blocking pool so one slow disk never
//! stalls the network tasks of other clients.

use crate::auth::{Auth, Principal, Role};
use crate::store::Store;
use homesync_protocol::wire::{self, ErrorCode, GotBlobRef, Request, Response, Session};
use homesync_protocol::{BlobKind, Repository, Snapshot, StoreError};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// The server's TLS identity: a self-signed certificate made on first start.
pub struct Identity {
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

/// The fingerprint clients pin: BLAKE3 of the certificate's DER bytes.
pub fn fingerprint(cert_der: &[u8]) -> String {
    blake3::hash(cert_der).to_hex().to_string()
}

impl Identity {
    /// Loads `cert`/`key` (DER), creating both on first start.
    pub fn load_or_create(cert: &Path, key: &Path) -> Result<Identity, StoreError> {
        let io = |what: &Path| {
            let what = what.display().to_string();
            move |source| StoreError::Io {
                context: what,
                source,
            }
        };
        if cert.exists() && key.exists() {
            return Ok(Identity {
                cert_der: std::fs::read(cert).map_err(io(cert))?,
                key_der: std::fs::read(key).map_err(io(key))?,
            });
        }
        let ck = rcgen::generate_simple_self_signed(vec!["homesync".to_string()])
            .map_err(|e| StoreError::Refused(format!("making the server certificate: {e}")))?;
        let id = Identity {
            cert_der: ck.cert.der().to_vec(),
            key_der: ck.signing_key.serialize_der(),
        };
        for p in [cert, key] {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir).map_err(io(dir))?;
            }
        }
        // The key first and private: a certificate without its key is useless.
        crate::backend::write_durably(key, &id.key_der)?;
        std::fs::set_permissions(key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(io(key))?;
        crate::backend::write_durably(cert, &id.cert_der)?;
        Ok(id)
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert_der)
    }
}

/// Limits that keep one client from starving the others.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once; more are refused at the handshake.
    pub max_connections: usize,
    /// Concurrent request streams per connection (the back-pressure).
    pub streams_per_connection: u32,
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1000,
            streams_per_connection: 32,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// A QUIC endpoint bound to `listen` with this identity and ALPN.
pub fn endpoint(
    listen: SocketAddr,
    identity: &Identity,
    limits: &Limits,
) -> Result<quinn::Endpoint, StoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = rustls::pki_types::CertificateDer::from(identity.cert_der.clone());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(identity.key_der.clone().into());
    let refused = |e: &dyn std::fmt::Display| StoreError::Refused(format!("TLS setup: {e}"));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| refused(&e))?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(|e| refused(&e))?;
    tls.alpn_protocols = vec![wire::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| refused(&e))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(limits.streams_per_connection.into());
    transport.max_concurrent_uni_streams(0u8.into());
    // What QUIC buffers for a connection before the service reads it: with
    // quinn's defaults a fleet of fast uploaders could park gigabytes here.
    // 4 MiB per connection still fills a 100 ms path at 40 MB/s.
    transport.receive_window((4u32 << 20).into());
    transport.stream_receive_window((2u32 << 20).into());
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(wire::MAX_UDP_PAYLOAD);
    transport.mtu_discovery_config(Some(mtu));
    transport.max_idle_timeout(Some(
        limits.idle_timeout.try_into().map_err(|e| refused(&e))?,
    ));
    config.transport_config(Arc::new(transport));
    let io = |source| StoreError::Io {
        context: format!("listening on {listen}"),
        source,
    };
    let mut endpoint = quinn::EndpointConfig::default();
    endpoint
        .max_udp_payload_size(wire::MAX_UDP_PAYLOAD)
        .map_err(|e| refused(&e))?;
    quinn::Endpoint::new(
        endpoint,
        Some(config),
        udp_socket(listen).map_err(io)?,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(io)
}

/// A UDP socket with 4 MiB buffers: with the kernel's default (208 KiB) a
/// burst of uploads overflows the receive buffer even on loopback, and
/// every lost packet halves QUIC's congestion window.
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

/// Who a session is, and the credential to re-check on each request.
#[derive(Clone)]
struct Authed {
    principal: Principal,
    credential: Option<String>,
    /// An uploader's registration as a writer session: garbage collection
    /// keeps what the session may rely on until the connection ends (all
    /// clones dropped with the connection's session state).
    _writer: Option<Arc<crate::gc::SessionGuard>>,
}

/// What one session moved, reported when its connection ends: the
/// server's own count of what clients sent it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionReport {
    pub peer: String,
    /// The authenticated machine, if the session got that far.
    pub machine: Option<String>,
    pub requests: u64,
    /// Encoded blobs received whole (chunks and trees), stored or not.
    pub blob_bytes: u64,
    pub blobs_stored: u64,
    /// Delta payloads received, and how many were stored or refused.
    pub delta_bytes: u64,
    pub deltas_stored: u64,
    pub deltas_refused: u64,
    /// UDP bytes in each direction, QUIC framing included.
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// The largest UDP payload the server's packets had at the end (the
    /// path MTU QUIC found towards the client; see `wire::MAX_UDP_PAYLOAD`).
    pub path_mtu: u16,
}

/// A session's running counts (see [`SessionReport`]).
#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    blob_bytes: AtomicU64,
    blobs_stored: AtomicU64,
    delta_bytes: AtomicU64,
    deltas_stored: AtomicU64,
    deltas_refused: AtomicU64,
}

type Reporter = Box<dyn Fn(&SessionReport) + Send + Sync>;

/// What every connection task shares.
pub struct Service {
    store: Arc<Store>,
    auth: Arc<Auth>,
    max_connections: usize,
    /// Connections being served now.
    connections: std::sync::atomic::AtomicUsize,
    /// Bytes of requests held in memory by all connections together, in
    /// units of [`MEMORY_UNIT`]. A stream waits for its share before its
    /// body is read; meanwhile QUIC flow control holds the client back.
    memory: Arc<tokio::sync::Semaphore>,
    /// See [`Service::with_slow_request`].
    slow_request: Duration,
    reporter: Option<Reporter>,
}

/// A request may be at most this large before its session's `Hello` is
/// accepted: a `Hello` is a few hundred bytes, and an unauthenticated peer
/// must not make the server set memory aside for a 64 MiB frame.
pub const BEFORE_HELLO_MAX_FRAME: usize = 16 << 10;
/// After the grace period a request's bytes must keep arriving at this
/// average rate (512 kbit/s).
pub const MIN_REQUEST_RATE: u64 = 64 << 10;
pub const DEFAULT_SLOW_REQUEST: Duration = Duration::from_secs(30);

/// All request buffers together stay under this many bytes.
pub const REQUEST_MEMORY: usize = 64 << 20;
const MEMORY_UNIT: usize = 64 << 10;

impl Service {
    pub fn new(store: Arc<Store>, auth: Arc<Auth>, max_connections: usize) -> Service {
        Service {
            store,
            auth,
            max_connections,
            connections: Default::default(),
            memory: Arc::new(tokio::sync::Semaphore::new(REQUEST_MEMORY / MEMORY_UNIT)),
            slow_request: DEFAULT_SLOW_REQUEST,
            reporter: None,
        }
    }

    /// A request stream that, after `grace`, has delivered less than
    /// [`MIN_REQUEST_RATE`] on average is cut and its connection closed:
    /// memory is set aside for a request when its length arrives, so a peer
    /// announcing a large request and sending nothing (slow loris) would
    /// otherwise hold it, and starve every other session, for as long as it
    /// keeps the connection alive.
    pub fn with_slow_request(mut self, grace: Duration) -> Self {
        self.slow_request = grace;
        self
    }

    /// Calls `f` with each session's counts when its connection ends.
    pub fn on_session_end(mut self, f: impl Fn(&SessionReport) + Send + Sync + 'static) -> Self {
        self.reporter = Some(Box::new(f));
        self
    }

    /// Accepts connections until `shutdown` resolves, then stops accepting,
    /// lets open requests finish (up to `grace`), and flushes the store.
    pub async fn run(
        self: Arc<Self>,
        endpoint: quinn::Endpoint,
        shutdown: impl std::future::Future<Output = ()>,
        grace: Duration,
    ) {
        tokio::pin!(shutdown);
        let tasks = tokio_util_tasks::Tasks::default();
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                incoming = endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    use std::sync::atomic::Ordering::SeqCst;
                    if self.connections.fetch_add(1, SeqCst) >= self.max_connections {
                        self.connections.fetch_sub(1, SeqCst);
                        tracing::warn!("{}: refused: {} connections already", incoming.remote_address(), self.max_connections);
                        incoming.refuse();
                        continue;
                    }
                    let svc = self.clone();
                    tasks.spawn(async move {
                        svc.clone().connection(incoming).await;
                        svc.connections.fetch_sub(1, SeqCst);
                    });
                }
            }
        }
        tracing::info!("shutting down: no new connections");
        endpoint.set_server_config(None);
        if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
            tracing::warn!("sessions still open after {grace:?}: closing them");
        }
        endpoint.close(0u32.into(), b"server shutting down");
        let store = self.store.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || store.flush())
            .await
            .expect("flush task")
        {
            tracing::error!("flushing the store at shutdown: {e}");
        }
        endpoint.wait_idle().await;
    }

    async fn connection(self: Arc<Self>, incoming: quinn::Incoming) {
        let conn = match incoming.await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("handshake failed: {e}");
                return;
            }
        };
        let peer = conn.remote_address();
        let session = Arc::new(tokio::sync::Mutex::new(Session::<Authed>::default()));
        let counters = Arc::new(Counters::default());
        let streams = tokio_util_tasks::Tasks::default();
        loop {
            match conn.accept_bi().await {
                Ok((send, recv)) => {
                    let svc = self.clone();
                    let session = session.clone();
                    let conn = conn.clone();
                    let counters = counters.clone();
                    streams.spawn(
                        async move { svc.stream(conn, session, &counters, send, recv).await },
                    );
                }
                Err(e) => {
                    tracing::debug!("{peer}: connection ended: {e}");
                    break;
                }
            }
        }
        streams.wait().await;
        // Blobs uploaded by a session that did not commit are made durable
        // anyway: the next run of that client finds them and sends nothing.
        let store = self.store.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || store.flush())
            .await
            .expect("flush task")
        {
            tracing::error!("{peer}: flushing after the session: {e}");
        }
        if let Some(report) = &self.reporter {
            let machine = match &*session.lock().await {
                Session::Ready(a, _) => Some(a.principal.machine.clone()),
                _ => None,
            };
            let stats = conn.stats();
            tracing::debug!(
                mtu = stats.path.current_mtu,
                datagrams_sent = stats.udp_tx.datagrams,
                ios_sent = stats.udp_tx.ios,
                bytes_sent = stats.udp_tx.bytes,
                lost_packets = stats.path.lost_packets,
                black_holes = stats.path.black_holes_detected,
                probes_sent = stats.path.sent_plpmtud_probes,
                probes_lost = stats.path.lost_plpmtud_probes,
                congestion_events = stats.path.congestion_events,
                "{peer}: QUIC path"
            );
            let get = |c: &AtomicU64| c.load(Relaxed);
            report(&SessionReport {
                peer: peer.to_string(),
                machine,
                requests: get(&counters.requests),
                blob_bytes: get(&counters.blob_bytes),
                blobs_stored: get(&counters.blobs_stored),
                delta_bytes: get(&counters.delta_bytes),
                deltas_stored: get(&counters.deltas_stored),
                deltas_refused: get(&counters.deltas_refused),
                bytes_received: stats.udp_rx.bytes,
                bytes_sent: stats.udp_tx.bytes,
                path_mtu: stats.path.current_mtu,
            });
        }
    }

    async fn stream(
        self: Arc<Self>,
        conn: quinn::Connection,
        session: Arc<tokio::sync::Mutex<Session<Authed>>>,
        counters: &Arc<Counters>,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let peer = conn.remote_address();
        // The memory permit is held until the answer is sent: the request's
        // bytes live that long.
        let max_len = match &*session.lock().await {
            Session::AwaitHello => BEFORE_HELLO_MAX_FRAME,
            _ => wire::MAX_FRAME,
        };
        let (answer, _memory) =
            match read_frame(&mut recv, &self.memory, max_len, self.slow_request).await {
                Err(FrameError::Bad(why)) => {
                    (Response::error(ErrorCode::BadRequest, why).into(), None)
                }
                Err(FrameError::Stream(e)) => {
                    tracing::debug!("{peer}: stream failed: {e}");
                    return;
                }
                Ok((bytes, permit)) => {
                    let answer = match Request::decode(&bytes) {
                        Err(e) => Response::error(ErrorCode::BadRequest, e.to_string()).into(),
                        Ok(req) => {
                            // Work buffers beyond the frame itself come out of the
                            // same budget (a 4 KiB delta may build a whole tree).
                            // Not waited for: a stream holding its frame's share
                            // while waiting for more could deadlock with others;
                            // a busy answer only makes the client send blobs whole.
                            let units = (self.work_memory(&req).div_ceil(MEMORY_UNIT) as u32)
                                .min((REQUEST_MEMORY / MEMORY_UNIT) as u32);
                            match units {
                                0 => self.request(peer, &session, counters, req).await,
                                n => match self.memory.clone().try_acquire_many_owned(n) {
                                    Ok(_work) => self.request(peer, &session, counters, req).await,
                                    Err(_) => Response::error(
                                        ErrorCode::Internal,
                                        "server busy: send the blob whole",
                                    )
                                    .into(),
                                },
                            }
                        }
                    };
                    (answer, Some(permit))
                }
            };
        let close = matches!(
            answer,
            Answer::Response(Response::Error {
                code: ErrorCode::BadRequest | ErrorCode::Unauthenticated | ErrorCode::Version,
                ..
            })
        );
        if let Answer::Response(Response::Error { code, message }) = &answer {
            tracing::warn!("{peer}: {code:?}: {message}");
        }
        // Handed over whole: `write_all` would copy the answer into
        // quinn's buffers once more.
        let mut parts = match answer {
            Answer::Response(r) => vec![r.encode().into()],
            Answer::Frame(f) => vec![f.into()],
            Answer::Parts(p) => p,
        };
        let _ = send.write_all_chunks(&mut parts).await;
        let _ = send.finish();
        if close {
            // Bad input ends the connection, after the answer is delivered.
            let _ = send.stopped().await;
            conn.close(1u32.into(), b"protocol error");
        }
    }

    async fn request(
        self: &Arc<Self>,
        peer: SocketAddr,
        session: &tokio::sync::Mutex<Session<Authed>>,
        counters: &Arc<Counters>,
        req: Request,
    ) -> Answer {
        counters.requests.fetch_add(1, Relaxed);
        let mut s = session.lock().await;
        let authed = match s.admit(&req) {
            Err(r) => return r.into(),
            Ok(Some(a)) => {
                drop(s);
                a
            }
            Ok(None) => {
                let Request::Hello {
                    credential,
                    version,
                } = req
                else {
                    unreachable!("admit returns None only for Hello")
                };
                let auth = self.auth.clone();
                let store = self.store.clone();
                let presented = credential.clone();
                let what = format!("connection from {peer}");
                let authed = tokio::task::spawn_blocking(move || {
                    let p = auth.authenticate(&presented)?;
                    let writer = match p.can_upload_blobs() {
                        true => Some(Arc::new(
                            store.begin_session(&format!("{} ({what})", p.machine))?,
                        )),
                        false => None,
                    };
                    Ok::<_, StoreError>((p, writer))
                })
                .await
                .expect("auth task");
                return match authed {
                    Ok((p, writer)) => {
                        tracing::info!("{peer}: session of {} ({})", p.machine, p.role.as_str());
                        let c = self.store.config();
                        // The client's version: it may send what that has.
                        let welcome = Response::Welcome {
                            version,
                            store_id: c.id.clone(),
                            chunker: c.chunker,
                            zstd_level: c.zstd_level,
                            machine: p.machine.clone(),
                            role: p.role.as_str().to_string(),
                        };
                        // A restore token is spent by this session; other
                        // credentials are checked again on every request.
                        let credential = (p.role != Role::Restore).then_some(credential);
                        s.established(
                            Authed {
                                principal: p,
                                credential,
                                _writer: writer,
                            },
                            version,
                        );
                        welcome
                    }
                    Err(e) => {
                        s.close();
                        tracing::warn!("{peer}: authentication failed: {e}");
                        Response::error(ErrorCode::Unauthenticated, "unknown or revoked credential")
                    }
                }
                .into();
            }
        };
        // Re-check the credential on every request so that revoking it
        // takes effect at once, even for open sessions.
        let svc = self.clone();
        let counters = counters.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(c) = &authed.credential
                && svc.auth.authenticate(c).ok().as_ref() != Some(&authed.principal)
            {
                return Response::error(ErrorCode::Unauthenticated, "credential revoked").into();
            }
            match req {
                Request::GetBatch { ids, kind } => svc.get_batch(&authed.principal, &ids, kind),
                Request::Get { id, kind } => svc.get(id, kind),
                req => svc.serve(&authed.principal, req, &counters).into(),
            }
        })
        .await
        .unwrap_or_else(|e| {
            Response::error(ErrorCode::Internal, format!("request task failed: {e}")).into()
        })
    }

    /// `Get`: the blob as stored, not verified (the client verifies every
    /// blob, see `Store::read_blob`), encoded without a copy of its own.
    fn get(&self, id: homesync_protocol::BlobId, kind: u8) -> Answer {
        let Some(kind) = BlobKind::from_u8(kind) else {
            return Response::error(ErrorCode::BadRequest, "unknown blob kind").into();
        };
        match self.store.read_blob(id, kind) {
            Ok(blob) => Answer::Frame(wire::encode_blob(&blob)),
            Err(e) => Response::error(error_code(&e), e.to_string()).into(),
        }
    }

    /// `GetBatch`: the blobs as stored (see `Store::read_blob`), sent
    /// straight from the buffers they were read into, never copied into a
    /// frame (see [`wire::encode_blobs_parts`]).
    fn get_batch(&self, p: &Principal, ids: &[homesync_protocol::BlobId], kind: u8) -> Answer {
        let Some(kind) = BlobKind::from_u8(kind) else {
            return Response::error(ErrorCode::BadRequest, "unknown blob kind").into();
        };
        let list = match self.store.read_blobs(ids, kind, wire::GET_BATCH_BYTES) {
            Ok(list) => list,
            Err(e) => return Response::error(error_code(&e), e.to_string()).into(),
        };
        let entries: Vec<GotBlobRef> = list
            .iter()
            .map(|r| match r {
                Ok(blob) => GotBlobRef::Blob(blob),
                Err(e) => {
                    tracing::warn!("{}: GetBatch: {e}", p.machine);
                    GotBlobRef::Error {
                        code: error_code(e),
                        message: e.to_string(),
                    }
                }
            })
            .collect();
        let parts = wire::encode_blobs_parts(&entries)
            .into_iter()
            .map(|part| match part {
                wire::FramePart::Made(bytes) => bytes::Bytes::from(bytes),
                wire::FramePart::Blob(i) => match &list[i] {
                    Ok(blob) => blob.clone(),
                    Err(_) => unreachable!("entry {i} is an error, encoded in place"),
                },
            })
            .collect();
        Answer::Parts(parts)
    }

    /// Memory a request may need while served, beyond its frame: a delta's
    /// base, unpacked commands and result; a signature's chunk.
    fn work_memory(&self, req: &Request) -> usize {
        let chunk = self.store.config().chunker.max as usize;
        match req {
            Request::PutDelta { kind, .. } if *kind == BlobKind::Tree as u8 => {
                3 * homesync_protocol::delta::MAX_TREE_OUTPUT
            }
            Request::PutDelta { .. } => 3 * chunk,
            Request::Signatures { .. } => 2 * chunk,
            _ => 0,
        }
    }

    /// One authenticated request (blocking: runs on the blocking pool).
    fn serve(&self, p: &Principal, req: Request, counters: &Counters) -> Response {
        let count = |c: &AtomicU64, n: usize| {
            c.fetch_add(n as u64, Relaxed);
        };
        let kind_of = |k: u8| {
            BlobKind::from_u8(k)
                .ok_or_else(|| Response::error(ErrorCode::BadRequest, "unknown blob kind"))
        };
        let result = match req {
            Request::Hello { .. } => unreachable!("handled by the session"),
            Request::Has { ids } => self
                .store
                .has_blobs(&ids)
                .map(|present| Response::Has { present }),
            Request::Put { id, kind, blob } => {
                if !p.can_upload_blobs() {
                    return Response::error(ErrorCode::Forbidden, "this credential cannot upload");
                }
                let kind = match kind_of(kind) {
                    Ok(k) if k != BlobKind::Snapshot => k,
                    Ok(_) => {
                        return Response::error(
                            ErrorCode::BadRequest,
                            "snapshots are sent with Commit",
                        );
                    }
                    Err(r) => return r,
                };
                count(&counters.blob_bytes, blob.len());
                self.store.put_blob(id, kind, &blob).map(|stored| {
                    count(&counters.blobs_stored, stored as usize);
                    Response::Put { stored }
                })
            }
            Request::PutBatch { chunks } => {
                if !p.can_upload_blobs() {
                    return Response::error(ErrorCode::Forbidden, "this credential cannot upload");
                }
                count(
                    &counters.blob_bytes,
                    chunks.iter().map(|c| c.blob.len()).sum(),
                );
                chunks
                    .iter()
                    .map(|c| {
                        let stored = self.store.put_blob(c.id, BlobKind::Chunk, &c.blob)?;
                        count(&counters.blobs_stored, stored as usize);
                        Ok(stored)
                    })
                    .collect::<Result<Vec<bool>, StoreError>>()
                    .map(|stored| Response::PutBatch { stored })
            }
            Request::PutDelta {
                id,
                kind,
                base,
                delta,
            } => {
                if !p.can_upload_blobs() {
                    return Response::error(ErrorCode::Forbidden, "this credential cannot upload");
                }
                let kind = match kind_of(kind) {
                    Ok(k) => k,
                    Err(r) => return r,
                };
                count(&counters.delta_bytes, delta.len());
                let r = self.store.put_delta(id, kind, base, &delta);
                match &r {
                    Ok(true) => count(&counters.deltas_stored, 1),
                    Ok(false) => {}
                    Err(_) => count(&counters.deltas_refused, 1),
                }
                r.map(|stored| Response::Put { stored })
            }
            // Only an uploader needs delta bases; a signature says more about
            // a chunk than `Has` does, so restore sessions get none.
            Request::Signatures { .. } if !p.can_upload_blobs() => {
                return Response::error(
                    ErrorCode::Forbidden,
                    "this credential cannot upload, so it needs no signatures",
                );
            }
            Request::Signatures { ids } => {
                self.store
                    .signatures(&ids)
                    .map(|sigs| Response::Signatures {
                        list: sigs
                            .into_iter()
                            .map(|s| s.map(serde_bytes::ByteBuf::from))
                            .collect(),
                    })
            }
            Request::Generation => self
                .store
                .generation()
                .map(|generation| Response::Generation { generation }),
            Request::Forget { id } => {
                if !p.can_delete() {
                    return Response::error(
                        ErrorCode::Forbidden,
                        format!(
                            "{} may not delete snapshots: machines are append-only",
                            p.machine
                        ),
                    );
                }
                self.store.forget_snapshot(id).map(|()| {
                    tracing::info!("{} forgot snapshot {id}", p.machine);
                    Response::Forgotten
                })
            }
            Request::Get { .. } => unreachable!("answered by get"),
            Request::GetBatch { .. } => unreachable!("answered by get_batch"),
            Request::Commit { snapshot } => {
                let snap = match Snapshot::decode(&snapshot) {
                    Ok(s) => s,
                    Err(e) => {
                        return Response::error(ErrorCode::BadRequest, format!("snapshot: {e}"));
                    }
                };
                if !p.can_write_snapshot_for(&snap.machine) {
                    return Response::error(
                        ErrorCode::Forbidden,
                        format!(
                            "{} may not commit snapshots of machine {:?}",
                            p.machine, snap.machine
                        ),
                    );
                }
                self.store
                    .commit_snapshot(&snap)
                    .map(|id| Response::Committed { id })
            }
            Request::Snapshots { machine } => {
                let wanted = match readable_machine(p, machine) {
                    Ok(m) => m,
                    Err(refused) => return refused,
                };
                self.store.snapshots().map(|all| Response::Snapshots {
                    list: all
                        .into_iter()
                        .filter(|(_, s)| s.machine == wanted)
                        .map(|(_, s)| serde_bytes::ByteBuf::from(s.encode()))
                        .collect(),
                })
            }
            Request::Latest { machine, source } => {
                let wanted = match readable_machine(p, machine) {
                    Ok(m) => m,
                    Err(refused) => return refused,
                };
                self.store
                    .latest_snapshot(&wanted, &source)
                    .map(|latest| Response::Snapshots {
                        list: latest
                            .map(|(_, s)| serde_bytes::ByteBuf::from(s.encode()))
                            .into_iter()
                            .collect(),
                    })
            }
        };
        result.unwrap_or_else(|e| Response::error(error_code(&e), e.to_string()))
    }
}

/// The machine whose snapshots `Snapshots` or `Latest` asks about (the
/// session's own by default), or the refusal if `p` may not read them.
fn readable_machine(p: &Principal, machine: Option<String>) -> Result<String, Response> {
    let wanted = machine.unwrap_or_else(|| p.machine.clone());
    match p.can_read_snapshot_of(&wanted) {
        true => Ok(wanted),
        false => Err(Response::error(
            ErrorCode::Forbidden,
            format!("{} may not list snapshots of machine {wanted:?}", p.machine),
        )),
    }
}

/// What a stream sends back: an answer to encode, or (`GetBatch`) a frame
/// already encoded.
enum Answer {
    Response(Response),
    Frame(Vec<u8>),
    /// A frame in pieces (see [`Service::get_batch`]).
    Parts(Vec<bytes::Bytes>),
}

impl From<Response> for Answer {
    fn from(r: Response) -> Answer {
        Answer::Response(r)
    }
}

/// The wire's name for a store error.
fn error_code(e: &StoreError) -> ErrorCode {
    match e {
        StoreError::Missing(_) | StoreError::NoSnapshot(_) => ErrorCode::NotFound,
        e if e.is_corruption() => ErrorCode::Corrupt,
        StoreError::Refused(_) => ErrorCode::Refused,
        _ => ErrorCode::Internal,
    }
}

enum FrameError {
    /// The peer sent something that is not one frame: answer BadRequest.
    Bad(String),
    /// The stream broke: nobody to answer.
    Stream(String),
}

/// Reads exactly one request frame (at most `max_len` bytes) and the end of
/// the stream. The length prefix is checked first and the buffer allocated
/// once at its size, so an oversized claim costs nothing and a large blob is
/// not copied while the buffer grows. The body must arrive within `grace`
/// plus one second per [`MIN_REQUEST_RATE`] bytes received so far.
async fn read_frame(
    recv: &mut quinn::RecvStream,
    memory: &Arc<tokio::sync::Semaphore>,
    max_len: usize,
    grace: Duration,
) -> Result<(Vec<u8>, tokio::sync::OwnedSemaphorePermit), FrameError> {
    use quinn::ReadExactError;
    let failed = |e: ReadExactError| match e {
        ReadExactError::FinishedEarly(n) => {
            FrameError::Bad(format!("request truncated after {n} more bytes"))
        }
        ReadExactError::ReadError(e) => FrameError::Stream(e.to_string()),
    };
    let mut header = [0u8; 4];
    recv.read_exact(&mut header).await.map_err(failed)?;
    let len = wire::frame_len(header).map_err(|e| FrameError::Bad(e.to_string()))?;
    if len > max_len {
        return Err(FrameError::Bad(format!(
            "a request of {len} bytes before Hello (at most {max_len})"
        )));
    }
    // Twice the frame: the decoded request holds a copy of its blob.
    let units = (2 * (4 + len))
        .div_ceil(MEMORY_UNIT)
        .min(REQUEST_MEMORY / MEMORY_UNIT) as u32;
    let permit = memory
        .clone()
        .acquire_many_owned(units)
        .await
        .map_err(|_| FrameError::Stream("server shutting down".into()))?;
    let mut frame = vec![0u8; 4 + len];
    frame[..4].copy_from_slice(&header);
    let started = tokio::time::Instant::now();
    let mut got = 0;
    while got < len {
        let deadline =
            started + grace + Duration::from_secs_f64(got as f64 / MIN_REQUEST_RATE as f64);
        match tokio::time::timeout_at(deadline, recv.read(&mut frame[4 + got..])).await {
            Err(_) => {
                return Err(FrameError::Bad(format!(
                    "too slow: {got} of {len} bytes of the request in {:.0} s",
                    started.elapsed().as_secs_f64()
                )));
            }
            Ok(Ok(Some(n))) => got += n,
            Ok(Ok(None)) => return Err(failed(ReadExactError::FinishedEarly(got))),
            Ok(Err(e)) => return Err(FrameError::Stream(e.to_string())),
        }
    }
    match recv.read_chunk(1, true).await {
        Ok(None) => Ok((frame, permit)),
        Ok(Some(_)) => Err(FrameError::Bad("bytes after the request frame".into())),
        Err(e) => Err(FrameError::Stream(e.to_string())),
    }
}

/// A set of spawned tasks that can be awaited together.
mod tokio_util_tasks {
    use std::future::Future;
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct Tasks(Mutex<tokio::task::JoinSet<()>>);

    impl Tasks {
        pub fn spawn(&self, f: impl Future<Output = ()> + Send + 'static) {
            let mut set = self.0.lock().unwrap_or_else(|e| e.into_inner());
            // Reap finished tasks so a long-running server does not grow.
            while set.try_join_next().is_some() {}
            set.spawn(f);
        }

        pub async fn wait(&self) {
            let mut set = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
            while set.join_next().await.is_some() {}
        }
    }
}
