//! The `homesync serve` config file (TOML), e.g. `/etc/homesync/server.toml`.
//!
//! Every field but `store` has a default; an unknown field is an error (a
//! typo must not silently fall back to a default). Relative paths are taken
//! relative to the directory holding the config file, not the working
//! directory (which for a systemd service is `/`).
//!
//! `[retention]` holds the default retention [`Policy`] (see
//! [`crate::retention`]) and `[retention.machines."NAME"]` per-machine
//! overrides; an override replaces the default for its machine wholesale.
//! `[jobs]` says how often the server runs retention, garbage collection
//! and a rotating data check (see [`crate::jobs`]).
//! The same text is in `examples/server.toml`:
//!
//! ```toml
#![doc = include_str!("../../examples/server.toml")]
//! ```

use crate::jobs::{self, JobsConfig};
use crate::retention::{Policy, Retention};
use crate::s3::S3Config;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default address to listen on (all IPv4 interfaces, UDP port 7443).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7443";
/// Default certificate file name, in the store directory (DER).
pub const DEFAULT_CERT_FILE: &str = "server-cert.der";
/// Default private key file name, in the store directory (DER, PKCS#8).
pub const DEFAULT_KEY_FILE: &str = "server-key.der";
pub const DEFAULT_MAX_CONNECTIONS: usize = 1000;
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;
pub const DEFAULT_SESSION_EXPIRY_HOURS: u64 = 72;

/// A config file that could not be read, parsed or accepted. Every variant
/// names the file; a parse error also gives the line and column.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Bad TOML, a value of the wrong type, or an unknown field; `message`
    /// is toml's, which starts with "TOML parse error at line L, column C".
    #[error("{}: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
    /// A value the file's syntax allows but homesync does not; `field` is
    /// its dotted path, e.g. `retention.machines."laptop".keep_daily`.
    #[error("{}: `{field}` {reason}", path.display())]
    Invalid {
        path: PathBuf,
        field: String,
        reason: String,
    },
}

/// What `homesync serve` runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// UDP address of the QUIC endpoint.
    pub listen: SocketAddr,
    /// The store directory.
    pub store: PathBuf,
    /// The server's certificate (created on first start if missing).
    pub cert: PathBuf,
    /// The certificate's private key (created with it).
    pub key: PathBuf,
    /// Connections beyond this many are refused.
    pub max_connections: usize,
    /// A connection silent this long is closed.
    pub idle_timeout_secs: u64,
    /// A request stream slower than 64 KiB/s on average after this many
    /// seconds is cut (see [`crate::service::Service::with_slow_request`]).
    pub slow_request_secs: u64,
    /// An upload session not committed within this long expires, and the
    /// blobs only it uploaded become garbage.
    pub session_expiry_hours: u64,
    /// The retention policies (`[retention]`); none by default.
    pub retention: Retention,
    /// When the server runs its jobs (`[jobs]`).
    pub jobs: JobsConfig,
    /// `[s3]`: packs in this bucket instead of the store directory.
    pub s3: Option<S3Config>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    listen: Option<SocketAddr>,
    store: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    max_connections: Option<usize>,
    idle_timeout_secs: Option<u64>,
    slow_request_secs: Option<u64>,
    session_expiry_hours: Option<u64>,
    retention: Option<RawRetention>,
    jobs: Option<RawJobs>,
    s3: Option<S3Config>,
}

/// `[jobs]`: intervals as text (`"1h"`, `"7d"`, `"off"`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJobs {
    retention_every: Option<String>,
    gc_every: Option<String>,
    check_every: Option<String>,
    check_subset_parts: Option<u32>,
    index_copy_every: Option<String>,
}

/// `[retention]`: the default policy's fields, and `machines`. (serde's
/// `flatten` would not refuse unknown fields, hence the repetition.)
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    keep_last: Option<u32>,
    keep_hourly: Option<u32>,
    keep_daily: Option<u32>,
    keep_weekly: Option<u32>,
    keep_monthly: Option<u32>,
    keep_yearly: Option<u32>,
    keep_within: Option<String>,
    #[serde(default)]
    keep_tags: Vec<String>,
    #[serde(default)]
    machines: BTreeMap<String, Policy>,
}

impl ServeConfig {
    /// The defaults for a store at `store` (for flags without a file).
    pub fn with_store(store: PathBuf) -> ServeConfig {
        ServeConfig {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            cert: store.join(DEFAULT_CERT_FILE),
            key: store.join(DEFAULT_KEY_FILE),
            store,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
            slow_request_secs: crate::service::DEFAULT_SLOW_REQUEST.as_secs(),
            session_expiry_hours: DEFAULT_SESSION_EXPIRY_HOURS,
            retention: Retention::default(),
            jobs: JobsConfig::default(),
            s3: None,
        }
    }

    /// Reads, parses and checks the config file at `path`.
    pub fn load(path: &Path) -> Result<ServeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        ServeConfig::parse(&text, path)
    }

    /// Parses config text that came from `path` (used in messages, and as
    /// the base of relative paths).
    pub fn parse(text: &str, path: &Path) -> Result<ServeConfig, ConfigError> {
        let raw: Raw = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            line: e.span().map(|s| line_of(text, s.start)),
            message: e.to_string().trim_end().to_string(),
        })?;
        let invalid = |field: &str, reason: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            field: field.to_string(),
            reason: reason.to_string(),
        };
        let base = path.parent().unwrap_or(Path::new(""));
        let resolve = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };
        let store = match raw.store {
            None => return Err(invalid("store", "is missing (the store directory)")),
            Some(p) if p.as_os_str().is_empty() => return Err(invalid("store", "is empty")),
            Some(p) => resolve(p),
        };
        let mut config = ServeConfig::with_store(store);
        if let Some(listen) = raw.listen {
            config.listen = listen;
        }
        for (field, value, slot) in [
            ("cert", raw.cert, &mut config.cert),
            ("key", raw.key, &mut config.key),
        ] {
            match value {
                Some(p) if p.as_os_str().is_empty() => return Err(invalid(field, "is empty")),
                Some(p) => *slot = resolve(p),
                None => {}
            }
        }
        if config.cert == config.key {
            return Err(invalid("key", "must be another file than `cert`"));
        }
        if let Some(n) = raw.max_connections {
            if n == 0 {
                return Err(invalid("max_connections", "must be at least 1"));
            }
            config.max_connections = n;
        }
        if let Some(n) = raw.slow_request_secs {
            if n == 0 {
                return Err(invalid("slow_request_secs", "must be at least 1"));
            }
            config.slow_request_secs = n;
        }
        if let Some(n) = raw.idle_timeout_secs {
            if n == 0 {
                return Err(invalid("idle_timeout_secs", "must be at least 1"));
            }
            config.idle_timeout_secs = n;
        }
        if let Some(n) = raw.session_expiry_hours {
            if n == 0 {
                return Err(invalid("session_expiry_hours", "must be at least 1"));
            }
            config.session_expiry_hours = n;
        }
        if let Some(r) = raw.retention {
            let default = Policy {
                keep_last: r.keep_last,
                keep_hourly: r.keep_hourly,
                keep_daily: r.keep_daily,
                keep_weekly: r.keep_weekly,
                keep_monthly: r.keep_monthly,
                keep_yearly: r.keep_yearly,
                keep_within: r.keep_within,
                keep_tags: r.keep_tags,
            };
            default
                .validate()
                .map_err(|e| invalid(&format!("retention.{}", e.field), &e.reason))?;
            // An empty `[retention]` (only overrides, say) sets no default.
            config.retention.default = (!default.is_empty()).then_some(default);
            for (name, policy) in r.machines {
                if name.is_empty() {
                    return Err(invalid("retention.machines", "names a machine \"\""));
                }
                policy.validate().map_err(|e| {
                    invalid(
                        &format!("retention.machines.{name:?}.{}", e.field),
                        &e.reason,
                    )
                })?;
                // An empty override is kept: it exempts its machine.
                config.retention.machines.insert(name, policy);
            }
        }
        if let Some(j) = raw.jobs {
            for (field, value, slot) in [
                (
                    "jobs.retention_every",
                    j.retention_every,
                    &mut config.jobs.retention_every,
                ),
                ("jobs.gc_every", j.gc_every, &mut config.jobs.gc_every),
                (
                    "jobs.check_every",
                    j.check_every,
                    &mut config.jobs.check_every,
                ),
                (
                    "jobs.index_copy_every",
                    j.index_copy_every,
                    &mut config.jobs.index_copy_every,
                ),
            ] {
                if let Some(text) = value {
                    *slot = jobs::parse_interval(&text).map_err(|e| invalid(field, &e))?;
                }
            }
            if let Some(n) = j.check_subset_parts {
                if n == 0 {
                    return Err(invalid(
                        "jobs.check_subset_parts",
                        "must be at least 1 (1 reads every pack in each check)",
                    ));
                }
                config.jobs.check_subset_parts = n;
            }
        }
        if let Some(s3) = raw.s3 {
            s3.validate().map_err(|e| invalid("s3", &e))?;
            config.s3 = Some(s3);
        }
        Ok(config)
    }

    /// Store options with this config's bucket (and its credentials).
    pub fn open_options(&self, verify_uploads: bool) -> crate::store::OpenOptions {
        crate::store::OpenOptions {
            verify_uploads,
            s3: self.s3.clone(),
        }
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    pub fn session_expiry(&self) -> Duration {
        Duration::from_secs(self.session_expiry_hours.saturating_mul(3600))
    }
}

/// The 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    let at = at.min(text.len());
    text.as_bytes()[..at]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ServeConfig, ConfigError> {
        ServeConfig::parse(text, Path::new("/etc/homesync/server.toml"))
    }

    #[test]
    fn defaults() {
        let c = parse("store = \"/srv/homesync\"\n").unwrap();
        assert_eq!(c, ServeConfig::with_store("/srv/homesync".into()));
        assert_eq!(c.listen, "0.0.0.0:7443".parse().unwrap());
        assert_eq!(c.cert, Path::new("/srv/homesync/server-cert.der"));
        assert_eq!(c.key, Path::new("/srv/homesync/server-key.der"));
        assert_eq!(c.max_connections, 1000);
        assert_eq!(c.idle_timeout(), Duration::from_secs(60));
        assert_eq!(c.session_expiry(), Duration::from_secs(72 * 3600));
    }

    #[test]
    fn every_field() {
        let c = parse(
            "listen = \"[::1]:9000\"\nstore = \"store\"\ncert = \"/tls/c.pem\"\nkey = \"k.der\"\n\
             max_connections = 20\nidle_timeout_secs = 5\nsession_expiry_hours = 1\n",
        )
        .unwrap();
        assert_eq!(
            c,
            ServeConfig {
                listen: "[::1]:9000".parse().unwrap(),
                store: "/etc/homesync/store".into(),
                cert: "/tls/c.pem".into(),
                key: "/etc/homesync/k.der".into(),
                max_connections: 20,
                idle_timeout_secs: 5,
                slow_request_secs: 30,
                session_expiry_hours: 1,
                retention: Retention::default(),
                jobs: JobsConfig::default(),
                s3: None,
            }
        );
    }

    #[test]
    fn retention_default_and_overrides() {
        let c = parse(
            "store = \"/s\"\n[retention]\nkeep_daily = 7\nkeep_within = \"30d\"\n\
             keep_tags = [\"keep\"]\n\
             [retention.machines.\"build-01\"]\nkeep_last = 3\n\
             [retention.machines.kiosk]\n",
        )
        .unwrap();
        let r = &c.retention;
        assert_eq!(
            r.default.as_ref().unwrap().to_string(),
            "daily 7, within 30d, tags keep"
        );
        // Overrides replace the default wholesale; an empty one keeps all.
        assert_eq!(r.policy_for("build-01").unwrap().to_string(), "last 3");
        assert!(r.policy_for("kiosk").unwrap().is_empty());
        assert_eq!(
            r.policy_for("laptop").unwrap().to_string(),
            "daily 7, within 30d, tags keep"
        );
        // Overrides only: no default.
        let c = parse("store = \"/s\"\n[retention.machines.a]\nkeep_last = 1\n").unwrap();
        assert_eq!(c.retention.default, None);
        assert_eq!(c.retention.policy_for("b"), None);
    }

    #[test]
    fn example_file_parses() {
        let c = parse(include_str!("../../examples/server.toml")).unwrap();
        assert_eq!(c.store, Path::new("/srv/homesync"));
        assert_eq!(c.listen.port(), 7443);
        let r = &c.retention;
        assert_eq!(
            r.default.as_ref().unwrap().to_string(),
            "last 3, daily 7, weekly 5, monthly 12, yearly 3, within 2d, tags keep"
        );
        assert_eq!(r.policy_for("build-server").unwrap().to_string(), "last 10");
        assert_eq!(
            c.jobs,
            JobsConfig {
                retention_every: Some(Duration::from_secs(3600)),
                gc_every: Some(Duration::from_secs(86_400)),
                check_every: Some(Duration::from_secs(7 * 86_400)),
                check_subset_parts: 4,
                index_copy_every: Some(Duration::from_secs(3600)),
            }
        );
    }

    #[test]
    fn s3_table() {
        let c = parse(
            "store = \"/s\"\n[s3]\nendpoint = \"http://127.0.0.1:3900\"\nregion = \"garage\"\n\
             bucket = \"packs\"\nprefix = \"fleet\"\n",
        )
        .unwrap();
        let s3 = c.s3.unwrap();
        assert_eq!(s3.bucket, "packs");
        assert_eq!(s3.describe(), "bucket packs/fleet at http://127.0.0.1:3900");
        let e =
            parse("store = \"/s\"\n[s3]\nendpoint = \"http://h\"\nbucket = \"b\"\npart_size = 1\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("`s3`") && e.contains("part_size"), "{e}");
        let e = parse("store = \"/s\"\n[s3]\nbucket = \"b\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("endpoint"), "{e}");
    }

    #[test]
    fn jobs_intervals() {
        let c = parse("store = \"/s\"\n").unwrap();
        assert_eq!(c.jobs, JobsConfig::default());
        let c = parse(
            "store = \"/s\"\n[jobs]\nretention_every = \"30m\"\ngc_every = \"off\"\n\
             check_every = \"1s\"\ncheck_subset_parts = 1\n",
        )
        .unwrap();
        assert_eq!(c.jobs.retention_every, Some(Duration::from_secs(1800)));
        assert_eq!(c.jobs.gc_every, None);
        assert_eq!(c.jobs.check_every, Some(Duration::from_secs(1)));
        assert_eq!(c.jobs.check_subset_parts, 1);
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        let e = ServeConfig::load(&path).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(e.to_string().contains("server.toml"), "{e}");

        std::fs::write(&path, "store = \"s\"\nmax_conections = 5\n").unwrap();
        let e = ServeConfig::load(&path).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with(&path.display().to_string()), "{msg}");
        assert!(msg.contains("max_conections"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
        assert!(
            matches!(e, ConfigError::Parse { line: Some(2), .. }),
            "{e:?}"
        );

        std::fs::write(&path, "store = \"s\"\n").unwrap();
        assert_eq!(
            ServeConfig::load(&path).unwrap().store,
            dir.path().join("s")
        );
    }

    #[test]
    fn bad_values_refused() {
        for (text, field) in [
            ("listen = \"/srv\"", "listen"),
            ("listen = \"localhost:7443\"\nstore = \"/s\"", "listen"),
            ("store = 5", "store"),
            ("max_connections = 0\nstore = \"/s\"", "max_connections"),
            ("max_connections = -1\nstore = \"/s\"", "max_connections"),
            ("idle_timeout_secs = 0\nstore = \"/s\"", "idle_timeout_secs"),
            (
                "session_expiry_hours = 0\nstore = \"/s\"",
                "session_expiry_hours",
            ),
            ("cert = \"\"\nstore = \"/s\"", "cert"),
            ("cert = \"/x\"\nkey = \"/x\"\nstore = \"/s\"", "key"),
            ("listen = \"0.0.0.0:1\"", "store"),
            ("store = \"\"", "store"),
            ("[store]\npath = \"/s\"", "store"),
            (
                "store = \"/s\"\n[retention]\nkeep_daily = 0",
                "retention.keep_daily",
            ),
            ("store = \"/s\"\n[retention]\nkeep_dayly = 3", "keep_dayly"),
            (
                "store = \"/s\"\n[retention]\nkeep_tags = [\"\"]",
                "retention.keep_tags",
            ),
            ("store = \"/s\"\nretention = 3", "retention"),
            (
                "store = \"/s\"\n[retention.machines.laptop]\nkeep_within = \"1x\"",
                "retention.machines.\"laptop\".keep_within",
            ),
            (
                "store = \"/s\"\n[retention.machines.laptop]\nkeep_lats = 3",
                "keep_lats",
            ),
            (
                "store = \"/s\"\n[retention.machines.\"\"]\nkeep_last = 1",
                "retention.machines",
            ),
            ("store = \"/s\"\n[jobs]\ngc_every = \"0s\"", "jobs.gc_every"),
            (
                "store = \"/s\"\n[jobs]\ncheck_every = \"weekly\"",
                "jobs.check_every",
            ),
            (
                "store = \"/s\"\n[jobs]\nretention_every = 3600",
                "retention_every",
            ),
            (
                "store = \"/s\"\n[jobs]\ncheck_subset_parts = 0",
                "jobs.check_subset_parts",
            ),
            ("store = \"/s\"\n[jobs]\ngc_evry = \"1d\"", "gc_evry"),
        ] {
            let e = parse(text).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains("/etc/homesync/server.toml"), "{msg}");
            assert!(msg.contains(field), "{text:?}: {msg}");
        }
    }
}
