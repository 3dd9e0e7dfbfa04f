//! The client config file (TOML): which server to back up to, how to
//! recognise it, and this machine's credential. See [`default_path`] for
//! where it is looked for. It holds a secret, so [`ClientConfig::save`]
//! writes it with mode 0600, and [`ClientConfig::load`] warns when it is
//! readable by others. Unknown fields are refused. The same text is in
//! `examples/client.toml`:
//!
//! ```toml
#![doc = include_str!("../../examples/client.toml")]
//! ```

use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The system-wide config file, used when it exists.
pub const SYSTEM_PATH: &str = "/etc/homesync/client.toml";
/// Environment variable naming the config file, overriding every default.
pub const ENV_VAR: &str = "HOMESYNC_CONFIG";

/// A config file that could not be read, parsed, accepted or written. Every
/// variant names the file; a parse error also gives the line and column.
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
    #[error("{}: `{field}` {reason}", path.display())]
    Invalid {
        path: PathBuf,
        field: &'static str,
        reason: String,
    },
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The client's settings. Every field is optional in the file; command-line
/// flags override them.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The server, as `host:port` (`[v6addr]:port` for an IPv6 literal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The pinned server certificate: 64 hex digits of the BLAKE3 hash of
    /// its DER bytes (as `homesync serve` prints on first start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// This machine's credential (`homesync admin add-machine` prints it).
    /// Left out of `Debug` output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// The machine name snapshots are recorded under (default: host name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// Absolute paths to back up.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathBuf>,
    /// Exclude patterns (gitignore syntax), added to the defaults.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Where the client keeps its state (file-state cache, the daemon's
    /// status and socket): the only place it writes, so `/` may be
    /// read-only. Default for the daemon: [`DEFAULT_STATE_DIR`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// The background daemon (`homesync daemon`).
    #[serde(default, skip_serializing_if = "DaemonConfig::is_default")]
    pub daemon: DaemonConfig,
}

/// The daemon's state directory when the config names none.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/homesync";

/// `[daemon]`: when the daemon takes snapshots and when it holds back.
/// Durations are written like `30s`, `5m`, `2h`, `1day`.
#[derive(Clone, Default, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// A snapshot starts once no change was seen for this long (default 30s)...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_period: Option<String>,
    /// ...or at the latest this long after the first pending change
    /// (default 5m): a file written continuously goes once per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay: Option<String>,
    /// A full scan, the safety net under inotify, this often (default 1day).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_scan_every: Option<String>,
    /// On battery, wait while the charge is below this percentage
    /// (default 20; 0 never waits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_battery_percent: Option<u8>,
    /// Wait while the network is metered: NetworkManager's flag, or
    /// `metered = true` below (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_on_metered: Option<bool>,
    /// Treat the network as metered whatever NetworkManager says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metered: Option<bool>,
    /// Upload at most this many bytes per second (`2MiB`, `500KiB`, `1000000`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_limit: Option<String>,
    /// Where power supplies are described (default /sys/class/power_supply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_supply_dir: Option<PathBuf>,
    /// Longest wait between attempts while the server is unreachable
    /// (default 10m; the first retry comes after 15s, doubling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retry_delay: Option<String>,
}

/// The daemon's settings with defaults applied and values parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonSettings {
    pub quiet_period: std::time::Duration,
    pub max_delay: std::time::Duration,
    pub full_scan_every: std::time::Duration,
    pub min_battery_percent: u8,
    pub pause_on_metered: bool,
    pub metered: Option<bool>,
    pub bandwidth_limit: Option<u64>,
    pub power_supply_dir: PathBuf,
    pub max_retry_delay: std::time::Duration,
}

impl DaemonConfig {
    fn is_default(&self) -> bool {
        *self == DaemonConfig::default()
    }

    /// Parses the values; errors name the field.
    pub fn settings(&self) -> Result<DaemonSettings, (&'static str, String)> {
        let dur = |field: &'static str, v: &Option<String>, default: u64| match v {
            None => Ok(std::time::Duration::from_secs(default)),
            Some(s) => parse_duration(s).map_err(|e| (field, e)),
        };
        let s = DaemonSettings {
            quiet_period: dur("daemon.quiet_period", &self.quiet_period, 30)?,
            max_delay: dur("daemon.max_delay", &self.max_delay, 300)?,
            full_scan_every: dur("daemon.full_scan_every", &self.full_scan_every, 86_400)?,
            min_battery_percent: self.min_battery_percent.unwrap_or(20),
            pause_on_metered: self.pause_on_metered.unwrap_or(false),
            metered: self.metered,
            bandwidth_limit: self
                .bandwidth_limit
                .as_deref()
                .map(parse_bytes)
                .transpose()
                .map_err(|e| ("daemon.bandwidth_limit", e))?,
            power_supply_dir: self
                .power_supply_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("/sys/class/power_supply")),
            max_retry_delay: dur("daemon.max_retry_delay", &self.max_retry_delay, 600)?,
        };
        if s.min_battery_percent > 100 {
            return Err((
                "daemon.min_battery_percent",
                "must be a percentage, 0 to 100".into(),
            ));
        }
        if s.max_delay < s.quiet_period {
            return Err((
                "daemon.max_delay",
                "must not be shorter than daemon.quiet_period".into(),
            ));
        }
        if s.full_scan_every.is_zero() {
            return Err(("daemon.full_scan_every", "must be longer than 0s".into()));
        }
        Ok(s)
    }
}

/// A duration like `30s`, `5m`, `2h`, `1day`, `1h 30m`, or `250ms`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like 30s, 5m, 2h or 1day ({e})"))
}

/// A byte count like `2MiB`, `500KiB`, `1GB`, or `1000000`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim();
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use B, KiB, MiB, GiB, kB, MB, GB)"
            ));
        }
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 2MiB or 500KiB"))?;
    let v = (n * mult as f64) as u64;
    if v == 0 {
        return Err(format!("{s:?}: must be more than 0 bytes"));
    }
    Ok(v)
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("server", &self.server)
            .field("fingerprint", &self.fingerprint)
            .field(
                "credential",
                &self.credential.as_ref().map(|_| "<redacted>"),
            )
            .field("machine", &self.machine)
            .field("paths", &self.paths)
            .field("exclude", &self.exclude)
            .field("state_dir", &self.state_dir)
            .field("daemon", &self.daemon)
            .finish()
    }
}

impl ClientConfig {
    /// Reads, parses and checks the config file at `path`.
    pub fn load(path: &Path) -> Result<ClientConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config = ClientConfig::parse(&text, path)?;
        if config.credential.is_some()
            && let Ok(meta) = std::fs::metadata(path)
            && meta.mode() & 0o077 != 0
        {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", meta.mode() & 0o7777),
                "config file holds a credential but others may read it (chmod 600)"
            );
        }
        Ok(config)
    }

    /// Parses and checks config text that came from `path` (for messages).
    pub fn parse(text: &str, path: &Path) -> Result<ClientConfig, ConfigError> {
        let config: ClientConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            line: e.span().map(|s| line_of(text, s.start)),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    /// Checks every field; errors name `path` and the field.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            reason,
        };
        if let Some(server) = &self.server {
            check_server(server).map_err(|r| invalid("server", r))?;
        }
        if let Some(fp) = &self.fingerprint
            && parse_fingerprint(fp).is_none()
        {
            return Err(invalid(
                "fingerprint",
                format!(
                    "must be 64 hex digits (the BLAKE3 hash of the server certificate), not {fp:?}"
                ),
            ));
        }
        if let Some(credential) = &self.credential
            && (credential.is_empty() || !credential.bytes().all(|b| b.is_ascii_graphic()))
        {
            // Never echo the secret itself.
            return Err(invalid(
                "credential",
                "must be non-empty printable ASCII without spaces".to_string(),
            ));
        }
        if let Some(machine) = &self.machine {
            check_machine_name(machine).map_err(|r| invalid("machine", r))?;
        }
        if let Some(p) = self.paths.iter().find(|p| !p.is_absolute()) {
            return Err(invalid(
                "paths",
                format!("must be absolute paths, not {}", p.display()),
            ));
        }
        if self.exclude.iter().any(|e| e.trim().is_empty()) {
            return Err(invalid(
                "exclude",
                "must not hold an empty pattern".to_string(),
            ));
        }
        if let Some(p) = self.state_dir.as_ref().filter(|p| !p.is_absolute()) {
            return Err(invalid(
                "state_dir",
                format!("must be an absolute path, not {}", p.display()),
            ));
        }
        self.daemon
            .settings()
            .map_err(|(field, reason)| invalid(field, reason))?;
        Ok(())
    }

    /// The fingerprint as 32 bytes, if set (and valid).
    pub fn fingerprint_bytes(&self) -> Option<[u8; 32]> {
        self.fingerprint.as_deref().and_then(parse_fingerprint)
    }

    /// Writes the config to `path` atomically (temp file with mode 0600 in
    /// the same directory, fsync, rename, fsync the directory), creating the
    /// directory (mode 0700) if needed. The file is rewritten whole: comments
    /// in an existing file are not kept. An invalid config is not written.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        self.validate(path)?;
        let body = toml::to_string(self).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            field: "paths",
            reason: format!("cannot be written as TOML: {e}"),
        })?;
        let text = format!(
            "# homesync client config. It holds this machine's credential: keep it mode 0600.\n{body}"
        );
        let write_err = |source| ConfigError::Write {
            path: path.to_path_buf(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path
            .file_name()
            .ok_or_else(|| write_err(std::io::Error::other("not a file name")))?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(write_err)?;
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let result = (|| {
            let _ = std::fs::remove_file(&tmp); // left by a crashed run of this pid
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, path)?;
            std::fs::File::open(dir)?.sync_all()
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(write_err(e));
        }
        Ok(())
    }
}

/// Where the client config is: `$HOMESYNC_CONFIG` if set, else
/// `/etc/homesync/client.toml` if it exists, else
/// `$XDG_CONFIG_HOME/homesync/client.toml` (`~/.config/...` when
/// `XDG_CONFIG_HOME` is unset or relative). The file need not exist.
pub fn default_path() -> PathBuf {
    default_path_with(|k| std::env::var_os(k), |p| p.exists())
}

fn default_path_with(
    env: impl Fn(&str) -> Option<OsString>,
    exists: impl Fn(&Path) -> bool,
) -> PathBuf {
    let var = |k| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(p) = var(ENV_VAR) {
        return p;
    }
    let system = Path::new(SYSTEM_PATH);
    if exists(system) {
        return system.to_path_buf();
    }
    let config_home = var("XDG_CONFIG_HOME")
        .filter(|p| p.is_absolute())
        .or_else(|| var("HOME").map(|h| h.join(".config")));
    match config_home {
        Some(dir) => dir.join("homesync").join("client.toml"),
        None => system.to_path_buf(),
    }
}

fn parse_fingerprint(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(s.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// `host:port`, `[v6]:port`; the port a number 1..=65535.
fn check_server(s: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("must be host:port, not {s:?} ({why})"));
    let Some((host, port)) = s.rsplit_once(':') else {
        return bad("no port");
    };
    match port.parse::<u16>() {
        Ok(p) if p != 0 && !port.starts_with('+') => {}
        _ => return bad("bad port"),
    }
    if host.is_empty() || host.bytes().any(|b| b.is_ascii_whitespace() || b == b'/') {
        return bad("bad host");
    }
    if host.contains(':') || host.starts_with('[') {
        let inner = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
        if inner.is_none_or(|h| h.parse::<std::net::Ipv6Addr>().is_err()) {
            return bad("an IPv6 address goes in brackets");
        }
    }
    Ok(())
}

/// The server's rule (`homesync_server::auth::validate_machine_name`),
/// repeated here because the client does not depend on the server.
fn check_machine_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be 1 to 64 of [A-Za-z0-9._-], not starting with '.' or '-', not {name:?}"
        ))
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

    const FP: &str = "0123456789abcdef0123456789ABCDEF0123456789abcdef0123456789abcdef";

    #[test]
    fn daemon_settings_parse_with_defaults_and_named_errors() {
        let p = Path::new("/etc/homesync/client.toml");
        let c = ClientConfig::parse("", p).unwrap();
        let s = c.daemon.settings().unwrap();
        assert_eq!(s.quiet_period.as_secs(), 30);
        assert_eq!(s.max_delay.as_secs(), 300);
        assert_eq!(s.full_scan_every.as_secs(), 86_400);
        assert_eq!(s.bandwidth_limit, None);
        let c = ClientConfig::parse(
            "state_dir = \"/var/lib/hs\"\n[daemon]\nquiet_period = \"2s\"\nmax_delay = \"1m 30s\"\nbandwidth_limit = \"2MiB\"\n",
            p,
        )
        .unwrap();
        let s = c.daemon.settings().unwrap();
        assert_eq!(s.quiet_period.as_secs(), 2);
        assert_eq!(s.max_delay.as_secs(), 90);
        assert_eq!(s.bandwidth_limit, Some(2 << 20));
        let e = ClientConfig::parse("[daemon]\nquiet_period = \"soon\"\n", p).unwrap_err();
        assert!(e.to_string().contains("daemon.quiet_period"), "{e}");
        let e = ClientConfig::parse("[daemon]\nquiet_period = \"10m\"\n", p).unwrap_err();
        assert!(e.to_string().contains("daemon.max_delay"), "{e}");
        let e = ClientConfig::parse("[daemon]\nbandwidth_limit = \"2 parsecs\"\n", p).unwrap_err();
        assert!(e.to_string().contains("bandwidth_limit"), "{e}");
        let e = ClientConfig::parse("state_dir = \"var/lib\"\n", p).unwrap_err();
        assert!(e.to_string().contains("state_dir"), "{e}");
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert_eq!(parse_bytes("1.5 kB").unwrap(), 1500);
        assert!(parse_bytes("0").is_err());
    }

    fn full() -> ClientConfig {
        ClientConfig {
            server: Some("backup.example.org:7443".into()),
            fingerprint: Some(FP.into()),
            credential: Some("hs1.laptop.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()),
            machine: Some("laptop".into()),
            paths: vec!["/home/ann".into(), "/etc".into()],
            exclude: vec!["*.tmp".into(), "/home/ann/Downloads".into()],
            state_dir: Some("/var/lib/homesync".into()),
            daemon: DaemonConfig {
                quiet_period: Some("10s".into()),
                ..Default::default()
            },
        }
    }

    fn parse(text: &str) -> Result<ClientConfig, ConfigError> {
        ClientConfig::parse(text, Path::new("/etc/homesync/client.toml"))
    }

    #[test]
    fn round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/client.toml");
        let config = full();
        config.save(&path).unwrap();
        assert_eq!(ClientConfig::load(&path).unwrap(), config);
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777;
        assert_eq!(dir_mode & 0o077, 0);

        // Overwriting keeps it private and leaves no temp file behind.
        let empty = ClientConfig::default();
        empty.save(&path).unwrap();
        assert_eq!(ClientConfig::load(&path).unwrap(), empty);
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn defaults_and_example() {
        assert_eq!(parse("").unwrap(), ClientConfig::default());
        assert_eq!(parse("# nothing\n").unwrap(), ClientConfig::default());
        let c = parse(include_str!("../../examples/client.toml")).unwrap();
        assert_eq!(c.server.as_deref(), Some("backup.example.org:7443"));
        assert!(c.fingerprint_bytes().is_some());
        assert!(!c.paths.is_empty());
    }

    #[test]
    fn fingerprint_bytes() {
        let c = full();
        let b = c.fingerprint_bytes().unwrap();
        assert_eq!(b[0], 0x01);
        assert_eq!(b[8], 0x01);
        assert_eq!(b[15], 0xef);
        assert_eq!(b[31], 0xef);
        assert_eq!(ClientConfig::default().fingerprint_bytes(), None);
    }

    #[test]
    fn unknown_field_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        std::fs::write(&path, "server = \"h:1\"\nfingerprnt = \"x\"\n").unwrap();
        let e = ClientConfig::load(&path).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with(&path.display().to_string()), "{msg}");
        assert!(msg.contains("fingerprnt"), "{msg}");
        assert!(
            matches!(e, ConfigError::Parse { line: Some(2), .. }),
            "{e:?}"
        );

        let e = ClientConfig::load(&dir.path().join("missing.toml")).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(e.to_string().contains("missing.toml"));
    }

    #[test]
    fn bad_values_refused() {
        for (text, field) in [
            ("fingerprint = \"abc\"", "fingerprint"),
            (&format!("fingerprint = \"{FP}0\""), "fingerprint"),
            (&format!("fingerprint = \"{}g\"", &FP[1..]), "fingerprint"),
            (&format!("fingerprint = \" {}\"", &FP[1..]), "fingerprint"),
            ("server = \"example.org\"", "server"),
            ("server = \"example.org:0\"", "server"),
            ("server = \"example.org:99999\"", "server"),
            ("server = \":7443\"", "server"),
            ("server = \"::1:7443\"", "server"),
            ("server = \"[nonsense]:7443\"", "server"),
            ("credential = \"\"", "credential"),
            ("credential = \"hs1.a.b c\"", "credential"),
            ("machine = \"-x\"", "machine"),
            ("machine = \"a/b\"", "machine"),
            ("paths = [\"home\"]", "paths"),
            ("paths = \"/home\"", "paths"),
            ("exclude = [\"\"]", "exclude"),
        ] {
            let e = parse(text).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains("/etc/homesync/client.toml"), "{msg}");
            assert!(msg.contains(field), "{text:?}: {msg}");
        }
        for ok in [
            "server = \"[::1]:7443\"",
            "server = \"127.0.0.1:7443\"",
            "server = \"backup:1\"",
        ] {
            parse(ok).unwrap();
        }
        // The secret is not echoed in errors or debug output.
        let e = parse("credential = \"hs1.a.sec ret\"").unwrap_err();
        assert!(!e.to_string().contains("sec"), "{e}");
        assert!(!format!("{:?}", full()).contains("AAAA"));
    }

    #[test]
    fn invalid_config_not_saved() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        let bad = ClientConfig {
            fingerprint: Some("nope".into()),
            ..ClientConfig::default()
        };
        assert!(matches!(
            bad.save(&path),
            Err(ConfigError::Invalid {
                field: "fingerprint",
                ..
            })
        ));
        assert!(!path.exists());
    }

    #[test]
    fn default_path_order() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let yes = |_: &Path| true;
        let no = |_: &Path| false;
        let all = &[
            ("HOMESYNC_CONFIG", "/x/c.toml"),
            ("XDG_CONFIG_HOME", "/xdg"),
            ("HOME", "/home/ann"),
        ];
        assert_eq!(default_path_with(env(all), yes), Path::new("/x/c.toml"));
        let rest = &[("XDG_CONFIG_HOME", "/xdg"), ("HOME", "/home/ann")];
        assert_eq!(default_path_with(env(rest), yes), Path::new(SYSTEM_PATH));
        assert_eq!(
            default_path_with(env(rest), no),
            Path::new("/xdg/homesync/client.toml")
        );
        let relative = &[("XDG_CONFIG_HOME", "xdg"), ("HOME", "/home/ann")];
        assert_eq!(
            default_path_with(env(relative), no),
            Path::new("/home/ann/.config/homesync/client.toml")
        );
        let empty = &[("HOMESYNC_CONFIG", ""), ("HOME", "/h")];
        assert_eq!(
            default_path_with(env(empty), no),
            Path::new("/h/.config/homesync/client.toml")
        );
        assert_eq!(default_path_with(env(&[]), no), Path::new(SYSTEM_PATH));
    }
}
