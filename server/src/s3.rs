//! Packs in an S3-compatible bucket (Garage, MinIO, Ceph RGW, AWS S3).
//!
//! Requests are signed with `rusty-s3` (SigV4 presigned URLs, sans-IO) and
//! sent with `ureq` (blocking, rustls with ring). The store calls its
//! backend from plain threads (the pack writer, the server's blocking pool,
//! gc and check workers), so a blocking client fits without an async bridge,
//! and it keeps one TLS provider in the binary (`object_store` and `opendal`
//! bring reqwest and aws-lc-rs; see docs/design.md).
//!
//! Bucket layout, under an optional key prefix:
//! ```text
//! config                   the store's config (id, chunker, zstd level)
//! packs/xx/NAME            pack NAME (xx: its first two hex digits)
//! index/TIME-NONCE.sqlite  copies of the SQLite index (admin rebuild-index)
//! ```
//! Nothing relies on conditional writes (Garage accepts `If-None-Match: *`
//! overwrites): packs are content-named and written once, so an overwrite
//! writes the same bytes; the index names a pack only after its upload
//! returned.

use crate::backend::PackBackend;
use homesync_protocol::StoreError;
use rusty_s3::actions::{
    AbortMultipartUpload, CompleteMultipartUpload, CreateMultipartUpload, DeleteObject, GetObject,
    HeadObject, ListObjectsV2, PutObject, UploadPart,
};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use serde::{Deserialize, Serialize};
use std::io::{self, ErrorKind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Signed URLs are used at once; an hour covers a slow multipart part.
const SIGNED_FOR: Duration = Duration::from_secs(3600);
/// Environment variables read when the config names no credentials.
pub const ACCESS_KEY_ENV: &str = "AWS_ACCESS_KEY_ID";
pub const SECRET_KEY_ENV: &str = "AWS_SECRET_ACCESS_KEY";
/// S3's smallest multipart part (but the last).
const MIN_PART: u64 = 5 << 20;
/// Small reads fetch the aligned window of this size around them and keep
/// it: Garage stores objects in 1 MiB blocks and reads (and hashes) a whole
/// block for any range in it, so a restore of many small files, one ranged
/// GET each, cost Garage 4 ms of CPU per file; the neighbours of a blob (the
/// files beside it in its directory) are in the same window.
const WINDOW: u64 = 1 << 20;
/// Windows kept (64 MiB).
const WINDOWS_KEPT: usize = 64;
/// Reads spanning fewer windows than this go through the window cache
/// (whole windows fetched, so a blob read and its neighbours' cost Garage
/// each block once); larger ones are read as they are.
const SPAN_WINDOWS: u64 = 5;

/// Recently read windows of packs, least recently used first out.
#[derive(Default)]
struct WindowCache {
    map: std::collections::HashMap<(String, u64), std::sync::Arc<Vec<u8>>>,
    order: std::collections::VecDeque<(String, u64)>,
}

impl WindowCache {
    fn get(&mut self, key: &(String, u64)) -> Option<std::sync::Arc<Vec<u8>>> {
        let hit = self.map.get(key)?.clone();
        if let Some(i) = self.order.iter().position(|k| k == key) {
            let k = self.order.remove(i).expect("present");
            self.order.push_back(k);
        }
        Some(hit)
    }

    fn put(&mut self, key: (String, u64), bytes: std::sync::Arc<Vec<u8>>) {
        if self.map.insert(key.clone(), bytes).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > WINDOWS_KEPT {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_concurrency() -> usize {
    4
}
fn default_multipart_threshold() -> u64 {
    32 << 20
}
fn default_part_size() -> u64 {
    8 << 20
}
fn default_retries() -> u32 {
    6
}
fn default_timeout_secs() -> u64 {
    120
}

/// Where the packs are: the `[s3]` table of the server config, and the
/// store directory's `backend.toml` (without the secrets unless the server
/// config had them), so that every command opening the store finds them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// `http://host:port` or `https://host`.
    pub endpoint: String,
    #[serde(default = "default_region")]
    pub region: String,
    pub bucket: String,
    /// Key prefix, so that several stores can share a bucket.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// `https://BUCKET.host/KEY` rather than `https://host/BUCKET/KEY`
    /// (AWS prefers it; Garage and MinIO serve path style by default).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub virtual_host: bool,
    /// Falls back to `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    /// Packs uploaded at once (and parts of one multipart upload).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Packs of at least this many bytes are uploaded in parts.
    #[serde(default = "default_multipart_threshold")]
    pub multipart_threshold: u64,
    #[serde(default = "default_part_size")]
    pub part_size: u64,
    /// Attempts after the first for a request failing transiently (a 5xx,
    /// a 429, a reset connection), with doubling waits from 100 ms.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// One request (one GET, PUT or part) may take this long.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret stays out of logs and error messages.
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl S3Config {
    /// A config with defaults for everything but where the bucket is.
    pub fn new(endpoint: &str, region: &str, bucket: &str) -> S3Config {
        S3Config {
            endpoint: endpoint.into(),
            region: region.into(),
            bucket: bucket.into(),
            prefix: String::new(),
            virtual_host: false,
            access_key_id: None,
            secret_access_key: None,
            concurrency: default_concurrency(),
            multipart_threshold: default_multipart_threshold(),
            part_size: default_part_size(),
            retries: default_retries(),
            timeout_secs: default_timeout_secs(),
        }
    }

    /// `s3://bucket/prefix at endpoint`, for messages.
    pub fn describe(&self) -> String {
        format!(
            "bucket {}{}{} at {}",
            self.bucket,
            if self.prefix.is_empty() { "" } else { "/" },
            self.prefix.trim_end_matches('/'),
            self.endpoint
        )
    }

    /// Whether `other` names the same objects (credentials and tuning may
    /// differ).
    pub fn same_place(&self, other: &S3Config) -> bool {
        self.endpoint.trim_end_matches('/') == other.endpoint.trim_end_matches('/')
            && self.bucket == other.bucket
            && self.region == other.region
            && norm_prefix(&self.prefix) == norm_prefix(&other.prefix)
    }

    /// The same config without its secrets: what `backend.toml` keeps.
    pub fn location(&self) -> S3Config {
        S3Config {
            access_key_id: None,
            secret_access_key: None,
            ..self.clone()
        }
    }

    /// Checks the values a TOML file may hold but S3 does not accept.
    pub fn validate(&self) -> Result<(), String> {
        if self.concurrency == 0 || self.concurrency > 64 {
            return Err("`concurrency` must be between 1 and 64".into());
        }
        if self.part_size < MIN_PART {
            return Err(format!("`part_size` must be at least {MIN_PART} (5 MiB)"));
        }
        if self.multipart_threshold < self.part_size {
            return Err("`multipart_threshold` must be at least `part_size`".into());
        }
        if self.timeout_secs == 0 {
            return Err("`timeout_secs` must be positive".into());
        }
        if self.bucket.is_empty() {
            return Err("`bucket` is empty".into());
        }
        url::Url::parse(&self.endpoint)
            .map_err(|e| format!("`endpoint` {:?} is not a URL: {e}", self.endpoint))?;
        Ok(())
    }
}

fn norm_prefix(p: &str) -> String {
    let p = p.trim_matches('/');
    if p.is_empty() {
        String::new()
    } else {
        format!("{p}/")
    }
}

/// What went wrong with one request, before it becomes a [`StoreError`].
enum Failure {
    /// An HTTP status other than success.
    Status(u16, String),
    /// No answer: connection refused or reset, a timeout, DNS.
    Transport(String),
}

impl Failure {
    fn transient(&self) -> bool {
        match self {
            Failure::Status(s, _) => matches!(s, 408 | 429 | 500 | 502 | 503 | 504),
            Failure::Transport(_) => true,
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            Failure::Status(404, _) => ErrorKind::NotFound,
            Failure::Status(416, _) => ErrorKind::UnexpectedEof,
            Failure::Status(401 | 403, _) => ErrorKind::PermissionDenied,
            Failure::Status(..) => ErrorKind::Other,
            Failure::Transport(_) => ErrorKind::ConnectionAborted,
        }
    }

    fn message(&self) -> String {
        match self {
            Failure::Status(s, body) => {
                // S3 errors are XML: <Code>NoSuchBucket</Code><Message>...</Message>
                let tag = |t: &str| {
                    let open = format!("<{t}>");
                    let start = body.find(&open)? + open.len();
                    let end = body[start..].find(&format!("</{t}>"))? + start;
                    Some(body[start..end].to_string())
                };
                match (tag("Code"), tag("Message")) {
                    (Some(c), Some(m)) => format!("HTTP {s} {c}: {m}"),
                    (Some(c), None) => format!("HTTP {s} {c}"),
                    _ => format!("HTTP {s}"),
                }
            }
            Failure::Transport(m) => m.clone(),
        }
    }
}

/// An S3 bucket (under a prefix) reached over HTTP(S).
pub struct S3Backend {
    config: S3Config,
    bucket: Bucket,
    credentials: Credentials,
    agent: ureq::Agent,
    prefix: String,
    /// Requests that needed a retry.
    retried: AtomicUsize,
    windows: Mutex<WindowCache>,
}

impl S3Backend {
    /// Connects lazily; call [`S3Backend::probe`] to find a wrong endpoint,
    /// bucket or credential at once.
    pub fn new(config: &S3Config) -> Result<S3Backend, StoreError> {
        config
            .validate()
            .map_err(|e| StoreError::Refused(format!("[s3] {e}")))?;
        let refuse = |m: String| StoreError::Refused(format!("{}: {m}", config.describe()));
        let endpoint: url::Url = config
            .endpoint
            .parse()
            .map_err(|e| refuse(format!("bad endpoint: {e}")))?;
        let style = if config.virtual_host {
            UrlStyle::VirtualHost
        } else {
            UrlStyle::Path
        };
        let bucket = Bucket::new(
            endpoint,
            style,
            config.bucket.clone(),
            config.region.clone(),
        )
        .map_err(|e| refuse(format!("{e}")))?;
        let key = config
            .access_key_id
            .clone()
            .or_else(|| std::env::var(ACCESS_KEY_ENV).ok());
        let secret = config
            .secret_access_key
            .clone()
            .or_else(|| std::env::var(SECRET_KEY_ENV).ok());
        let (Some(key), Some(secret)) = (key, secret) else {
            return Err(refuse(format!(
                "no credentials: set access_key_id and secret_access_key in [s3], \
                 or {ACCESS_KEY_ENV} and {SECRET_KEY_ENV}"
            )));
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_global(Some(Duration::from_secs(config.timeout_secs)))
            .max_idle_connections_per_host(config.concurrency * 2)
            .build()
            .into();
        Ok(S3Backend {
            prefix: norm_prefix(&config.prefix),
            config: config.clone(),
            bucket,
            credentials: Credentials::new(key, secret),
            agent,
            retried: AtomicUsize::new(0),
            windows: Mutex::new(WindowCache::default()),
        })
    }

    pub fn config(&self) -> &S3Config {
        &self.config
    }

    /// Requests retried so far.
    pub fn retried(&self) -> usize {
        self.retried.load(Ordering::Relaxed)
    }

    /// A signed list request: fails now, with S3's own words, when the
    /// endpoint is unreachable, the bucket missing or the key wrong.
    pub fn probe(&self) -> Result<(), StoreError> {
        let mut list = ListObjectsV2::new(&self.bucket, Some(&self.credentials));
        list.with_prefix(self.prefix.as_str());
        list.with_max_keys(1);
        let url = list.sign(SIGNED_FOR);
        self.with_retries("listing", &format!("{}*", self.prefix), || {
            let resp = self.agent.get(url.as_str()).call();
            Self::body(resp, 1 << 20).map(|_| ())
        })
    }

    fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    fn pack_key(&self, name: &str) -> String {
        self.key(&format!("packs/{}/{name}", &name[..2.min(name.len())]))
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retries are
    /// spent; the error names the operation, the object and the bucket.
    fn with_retries<T>(
        &self,
        what: &str,
        key: &str,
        mut attempt: impl FnMut() -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        let mut wait = Duration::from_millis(100);
        let mut tries = 0;
        loop {
            match attempt() {
                Ok(v) => return Ok(v),
                Err(f) if f.transient() && tries < self.config.retries => {
                    tries += 1;
                    self.retried.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        "{what} {key} in {}: {} (attempt {tries}, retrying in {wait:?})",
                        self.config.describe(),
                        f.message()
                    );
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(f) => {
                    let after = if tries > 0 {
                        format!(" (after {} attempts)", tries + 1)
                    } else {
                        String::new()
                    };
                    return Err(StoreError::Io {
                        context: format!("{what} {key} in {}{after}", self.config.describe()),
                        source: io::Error::new(f.kind(), f.message()),
                    });
                }
            }
        }
    }

    /// The body of a successful response, at most `limit` bytes.
    fn body(
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        limit: u64,
    ) -> Result<(Vec<u8>, ureq::http::HeaderMap), Failure> {
        let resp = resp.map_err(|e| Failure::Transport(e.to_string()))?;
        let status = resp.status().as_u16();
        let (parts, mut body) = resp.into_parts();
        let bytes = body
            .with_config()
            .limit(limit)
            .read_to_vec()
            .map_err(|e| Failure::Transport(format!("reading the response: {e}")))?;
        if !(200..300).contains(&status) {
            return Err(Failure::Status(
                status,
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
        Ok((bytes, parts.headers))
    }

    /// Stores an object (one PUT, or a multipart upload when large).
    pub fn put_object(&self, key: &str, data: &[u8]) -> Result<(), StoreError> {
        if data.len() as u64 >= self.config.multipart_threshold {
            return self.put_multipart(key, data);
        }
        self.with_retries("uploading", key, || {
            let url = PutObject::new(&self.bucket, Some(&self.credentials), key).sign(SIGNED_FOR);
            Self::body(self.agent.put(url.as_str()).send(data), 1 << 20).map(|_| ())
        })
    }

    fn put_multipart(&self, key: &str, data: &[u8]) -> Result<(), StoreError> {
        let create = CreateMultipartUpload::new(&self.bucket, Some(&self.credentials), key);
        let url = create.sign(SIGNED_FOR);
        let (xml, _) = self.with_retries("starting a multipart upload of", key, || {
            Self::body(self.agent.post(url.as_str()).send_empty(), 1 << 20)
        })?;
        let upload_id = CreateMultipartUpload::parse_response(&String::from_utf8_lossy(&xml))
            .map_err(|e| StoreError::Io {
                context: format!("starting a multipart upload of {key}"),
                source: io::Error::other(format!("unreadable answer: {e}")),
            })?
            .upload_id()
            .to_string();
        let result = self.upload_parts(key, &upload_id, data).and_then(|etags| {
            let complete = CompleteMultipartUpload::new(
                &self.bucket,
                Some(&self.credentials),
                key,
                &upload_id,
                etags.iter().map(String::as_str),
            );
            let url = complete.sign(SIGNED_FOR);
            let body = complete.body();
            self.with_retries("completing the multipart upload of", key, || {
                Self::body(self.agent.post(url.as_str()).send(body.as_bytes()), 1 << 20).and_then(
                    |(xml, _)| {
                        // S3 may answer 200 with an <Error> body when the
                        // completion fails late.
                        let text = String::from_utf8_lossy(&xml);
                        if text.contains("<Error>") {
                            Err(Failure::Status(500, text.into_owned()))
                        } else {
                            Ok(())
                        }
                    },
                )
            })
        });
        if result.is_err() {
            // Parts left behind cost storage until aborted.
            let abort =
                AbortMultipartUpload::new(&self.bucket, Some(&self.credentials), key, &upload_id);
            let _ = self.agent.delete(abort.sign(SIGNED_FOR).as_str()).call();
        }
        result
    }

    /// Uploads the parts on up to `concurrency` threads; their ETags in order.
    fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        data: &[u8],
    ) -> Result<Vec<String>, StoreError> {
        let parts: Vec<&[u8]> = data.chunks(self.config.part_size as usize).collect();
        let next = AtomicUsize::new(0);
        let etags = Mutex::new(vec![String::new(); parts.len()]);
        let first_error: Mutex<Option<StoreError>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..self.config.concurrency.min(parts.len()) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= parts.len() || crate::store::lock(&first_error).is_some() {
                            return;
                        }
                        let number = u16::try_from(i + 1).expect("under 10,000 parts");
                        let r = self.with_retries("uploading a part of", key, || {
                            let url = UploadPart::new(
                                &self.bucket,
                                Some(&self.credentials),
                                key,
                                number,
                                upload_id,
                            )
                            .sign(SIGNED_FOR);
                            let (_, headers) =
                                Self::body(self.agent.put(url.as_str()).send(parts[i]), 1 << 20)?;
                            headers
                                .get("etag")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string)
                                .ok_or_else(|| Failure::Status(500, "part without an ETag".into()))
                        });
                        match r {
                            Ok(etag) => crate::store::lock(&etags)[i] = etag,
                            Err(e) => {
                                crate::store::lock(&first_error).get_or_insert(e);
                                return;
                            }
                        }
                    }
                });
            }
        });
        match first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e),
            None => Ok(etags.into_inner().unwrap_or_else(|e| e.into_inner())),
        }
    }

    /// The whole object; `None` when there is none.
    pub fn get_object(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.get(key, None) {
            Ok(v) => Ok(Some(v)),
            Err(StoreError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn get(&self, key: &str, range: Option<(u64, usize)>) -> Result<Vec<u8>, StoreError> {
        let url = GetObject::new(&self.bucket, Some(&self.credentials), key).sign(SIGNED_FOR);
        let bytes = self.with_retries("reading", key, || {
            let mut req = self.agent.get(url.as_str());
            let limit = match range {
                Some((offset, len)) => {
                    let last = offset + len.max(1) as u64 - 1;
                    req = req.header("Range", format!("bytes={offset}-{last}"));
                    len as u64
                }
                None => u64::MAX,
            };
            Self::body(req.call(), limit).map(|(b, _)| b)
        })?;
        if let Some((offset, len)) = range
            && bytes.len() != len
        {
            return Err(StoreError::Io {
                context: format!("reading {key} in {}", self.config.describe()),
                source: io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!("{len} bytes at {offset} asked, {} returned", bytes.len()),
                ),
            });
        }
        Ok(bytes)
    }

    /// Up to `n` bytes of `key` from `start` (fewer at its end).
    fn get_span(&self, key: &str, start: u64, n: u64) -> Result<Vec<u8>, StoreError> {
        let url = GetObject::new(&self.bucket, Some(&self.credentials), key).sign(SIGNED_FOR);
        self.with_retries("reading", key, || {
            let req = self
                .agent
                .get(url.as_str())
                .header("Range", format!("bytes={start}-{}", start + n - 1));
            Self::body(req.call(), n).map(|(b, _)| b)
        })
    }

    /// The size of an object; `None` when there is none.
    pub fn head_object(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let url = HeadObject::new(&self.bucket, Some(&self.credentials), key).sign(SIGNED_FOR);
        let r = self.with_retries("looking up", key, || {
            Self::body(self.agent.head(url.as_str()).call(), 0).map(|(_, h)| {
                h.get("content-length")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
            })
        });
        match r {
            Ok(Some(size)) => Ok(Some(size)),
            Ok(None) => Err(StoreError::Io {
                context: format!("looking up {key} in {}", self.config.describe()),
                source: io::Error::other("no Content-Length in the answer"),
            }),
            Err(StoreError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes an object; one already gone is no error (S3 says 204 anyway).
    pub fn delete_object(&self, key: &str) -> Result<(), StoreError> {
        let url = DeleteObject::new(&self.bucket, Some(&self.credentials), key).sign(SIGNED_FOR);
        match self.with_retries("deleting", key, || {
            Self::body(self.agent.delete(url.as_str()).call(), 1 << 20).map(|_| ())
        }) {
            Err(StoreError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    /// Every key under `rel` (relative to the prefix), with sizes, in key
    /// order; keys returned relative to the prefix.
    pub fn list_objects(&self, rel: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let full = self.key(rel);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut list = ListObjectsV2::new(&self.bucket, Some(&self.credentials));
            list.with_prefix(full.as_str());
            if let Some(t) = &token {
                list.with_continuation_token(t.as_str());
            }
            let url = list.sign(SIGNED_FOR);
            let (xml, _) = self.with_retries("listing", &full, || {
                Self::body(self.agent.get(url.as_str()).call(), 64 << 20)
            })?;
            let page =
                ListObjectsV2::parse_response(&String::from_utf8_lossy(&xml)).map_err(|e| {
                    StoreError::Io {
                        context: format!("listing {full} in {}", self.config.describe()),
                        source: io::Error::other(format!("unreadable answer: {e}")),
                    }
                })?;
            for c in page.contents {
                if let Some(rel) = c.key.strip_prefix(&self.prefix) {
                    out.push((rel.to_string(), c.size.unwrap_or(0)));
                }
            }
            match page.next_continuation_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        out.sort();
        Ok(out)
    }

    /// Stores `data` under a key relative to the prefix.
    pub fn put_rel(&self, rel: &str, data: &[u8]) -> Result<(), StoreError> {
        self.put_object(&self.key(rel), data)
    }

    pub fn get_rel(&self, rel: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_object(&self.key(rel))
    }

    pub fn delete_rel(&self, rel: &str) -> Result<(), StoreError> {
        self.delete_object(&self.key(rel))
    }
}

impl PackBackend for S3Backend {
    fn put(&self, name: &str, data: &[u8]) -> Result<(), StoreError> {
        self.put_object(&self.pack_key(name), data)
    }

    fn read_at(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let (first, last) = (offset / WINDOW, (offset + len as u64 - 1) / WINDOW);
        if last - first >= SPAN_WINDOWS {
            // Large: read just the range.
            return self.get(&self.pack_key(name), Some((offset, len)));
        }
        let mut windows: Vec<Option<std::sync::Arc<Vec<u8>>>> = {
            let mut cache = crate::store::lock(&self.windows);
            (first..=last)
                .map(|w| cache.get(&(name.to_string(), w * WINDOW)))
                .collect()
        };
        if let (Some(lo), Some(hi)) = (
            windows.iter().position(Option::is_none),
            windows.iter().rposition(Option::is_none),
        ) {
            // The windows missing, and any cached between them, in one GET;
            // it may come back short at the pack's end (S3 answers a range
            // past the end with what there is).
            let start = (first + lo as u64) * WINDOW;
            let span = self.get_span(&self.pack_key(name), start, (hi - lo + 1) as u64 * WINDOW)?;
            let mut cache = crate::store::lock(&self.windows);
            for (k, piece) in span.chunks(WINDOW as usize).enumerate() {
                let w = std::sync::Arc::new(piece.to_vec());
                cache.put((name.to_string(), start + k as u64 * WINDOW), w.clone());
                windows[lo + k] = Some(w);
            }
        }
        let mut out = Vec::with_capacity(len);
        for (k, w) in windows.iter().enumerate() {
            let base = (first + k as u64) * WINDOW;
            let w = w.as_deref().map(Vec::as_slice).unwrap_or_default();
            let from = offset.saturating_sub(base) as usize;
            let to = ((offset + len as u64 - base) as usize).min(w.len());
            if from < to {
                out.extend_from_slice(&w[from..to]);
            }
        }
        if out.len() != len {
            return Err(StoreError::Io {
                context: format!("reading pack {name} in {}", self.config.describe()),
                source: io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!("{len} bytes at {offset} asked, the pack is shorter"),
                ),
            });
        }
        Ok(out)
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        self.get(&self.pack_key(name), None)
    }

    fn list(&self) -> Result<Vec<String>, StoreError> {
        let mut names: Vec<String> = self
            .list_objects("packs/")?
            .into_iter()
            .filter_map(|(k, _)| k.rsplit('/').next().map(str::to_string))
            .filter(|n| !n.is_empty() && !n.starts_with('.'))
            .collect();
        names.sort();
        Ok(names)
    }

    fn delete(&self, name: &str) -> Result<(), StoreError> {
        let mut w = crate::store::lock(&self.windows);
        w.order.retain(|(n, _)| n != name);
        w.map.retain(|(n, _), _| n != name);
        drop(w);
        self.delete_object(&self.pack_key(name))
    }

    fn size(&self, name: &str) -> Result<Option<u64>, StoreError> {
        self.head_object(&self.pack_key(name))
    }

    fn parallel_writes(&self) -> usize {
        self.config.concurrency
    }

    fn s3(&self) -> Option<&S3Backend> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_with_defaults_and_refuses_unknown_fields() {
        let c: S3Config =
            toml::from_str("endpoint = \"http://127.0.0.1:3900\"\nbucket = \"packs\"\n").unwrap();
        assert_eq!(c.region, "us-east-1");
        assert_eq!(c.concurrency, 4);
        assert!(c.validate().is_ok());
        let e = toml::from_str::<S3Config>("endpoint = \"x\"\nbucket = \"b\"\nbukcet = 1\n")
            .unwrap_err();
        assert!(e.to_string().contains("bukcet"), "{e}");
        let mut bad = c.clone();
        bad.part_size = 1 << 20;
        assert!(bad.validate().unwrap_err().contains("part_size"));
        bad = c.clone();
        bad.endpoint = "not a url".into();
        assert!(bad.validate().unwrap_err().contains("endpoint"));
    }

    #[test]
    fn location_drops_secrets_and_debug_hides_them() {
        let mut c = S3Config::new("http://h:1", "garage", "b");
        c.prefix = "fleet/".into();
        c.access_key_id = Some("GK1".into());
        c.secret_access_key = Some("very-secret".into());
        let l = c.location();
        assert!(l.same_place(&c));
        assert_eq!(l.secret_access_key, None);
        assert!(!toml::to_string(&l).unwrap().contains("very-secret"));
        assert!(!format!("{c:?}").contains("very-secret"));
        let mut other = c.clone();
        other.prefix = "fleet2".into();
        assert!(!other.same_place(&c));
    }

    #[test]
    fn s3_error_bodies_become_short_messages() {
        let f = Failure::Status(
            404,
            "<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code><Message>Bucket not found: x</Message></Error>".into(),
        );
        assert_eq!(f.message(), "HTTP 404 NoSuchBucket: Bucket not found: x");
        assert_eq!(f.kind(), ErrorKind::NotFound);
        assert!(!f.transient());
        assert!(Failure::Status(503, String::new()).transient());
        assert!(Failure::Transport("reset".into()).transient());
    }

    #[test]
    fn a_closed_port_fails_with_a_message_naming_the_bucket() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut c = S3Config::new(&format!("http://127.0.0.1:{port}"), "garage", "packs");
        c.access_key_id = Some("k".into());
        c.secret_access_key = Some("s".into());
        c.retries = 1;
        let b = S3Backend::new(&c).unwrap();
        let e = b.probe().unwrap_err().to_string();
        assert!(e.contains("bucket packs at http://127.0.0.1"), "{e}");
        assert!(e.contains("after 2 attempts"), "{e}");
    }
}
