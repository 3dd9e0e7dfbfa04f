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

    fn full() -> ClientConfig {
        ClientConfig {
            server: Some("backup.example.org:7443".into()),
            fingerprint: Some(FP.into()),
            credential: Some("hs1.laptop.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()),
            machine: Some("laptop".into()),
            paths: vec!["/home/ann".into(), "/etc".into()],
            exclude: vec!["*.tmp".into(), "/home/ann/Downloads".into()],
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
