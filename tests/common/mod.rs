//! Helpers for the end-to-end tests: run the real `homesync` binary against a
//! real store on disk, build source trees, and list trees with independent
//! tools (bsdtar's mtree writer, getfattr) so that fidelity is not judged by
//! the project's own walker alone.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The script that installs every external tool these tests call.
pub mod garage;
pub mod relay;
pub mod server;

pub const INSTALL_SCRIPT: &str = "scripts/install-test-deps.sh";

/// How long one run of the binary may take before the test gives up on it
/// (a backup that opens a FIFO for reading, for instance, would hang).
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// The path of the `homesync` binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_homesync"))
}

/// Panics with a clear message when `tool` is not on PATH. Tests never skip
/// silently: a missing tool is a broken test environment.
pub fn require_tool(tool: &str) {
    if find_in_path(tool).is_none() {
        install_test_deps_once();
    }
    if find_in_path(tool).is_none() {
        panic!(
            "required test tool `{tool}` was not found on PATH; \
             run `bash {INSTALL_SCRIPT}` (as root) to install the test dependencies"
        );
    }
}

/// On a fresh machine `cargo test --workspace` installs what it needs:
/// the project's own script, run once per test binary.
fn install_test_deps_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(INSTALL_SCRIPT);
        let status = Command::new("bash").arg(&script).status();
        eprintln!("ran {}: {status:?}", script.display());
    });
}

pub fn require_tools(tools: &[&str]) {
    for t in tools {
        require_tool(t);
    }
}

fn find_in_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| {
            fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Panics unless the tests run as root (they create device nodes, chown
/// files and expect owners to be restored).
pub fn require_root() {
    // /proc/self is owned by the effective uid of the process reading it.
    let euid = fs::metadata("/proc/self")
        .map(|m| m.uid())
        .expect("stat /proc/self");
    assert_eq!(
        euid, 0,
        "these end-to-end tests must run as root (they create device nodes, \
         chown files and check that owners are restored)"
    );
}

/// Runs an external command, panicking with its output when it fails.
pub fn sh(program: &str, args: &[&OsStr], cwd: Option<&Path>) -> Vec<u8> {
    require_tool(program);
    let mut cmd = Command::new(program);
    cmd.args(args);
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("could not run {program}: {e}"));
    if !out.status.success() {
        panic!(
            "{program} {:?} failed ({}):\nstdout: {}\nstderr: {}",
            args,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.stdout
}

/// Shorthand to build an argument list of OsStr from mixed strings/paths.
#[macro_export]
macro_rules! args {
    ($($a:expr),* $(,)?) => {
        &[$(::std::convert::AsRef::<::std::ffi::OsStr>::as_ref(&$a)),*]
    };
}

/// The result of one run of the binary.
#[derive(Debug)]
pub struct Run {
    pub cmdline: String,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// stdout parsed as JSON Lines (lines that are not JSON are skipped).
    pub json: Vec<Value>,
}

impl Run {
    /// A description of the run for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "command: {}\nexit code: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline,
            self.code,
            truncate(&self.stdout, 8000),
            truncate(&self.stderr, 8000)
        )
    }

    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            code,
            "unexpected exit code (wanted {code})\n{}",
            self.describe()
        );
        self
    }

    pub fn expect_ok(&self) -> &Self {
        self.expect_code(0)
    }

    /// JSON messages with the given `message_type`.
    pub fn messages(&self, message_type: &str) -> Vec<&Value> {
        self.json
            .iter()
            .filter(|v| v.get("message_type").and_then(Value::as_str) == Some(message_type))
            .collect()
    }

    /// The final `summary` message; panics when there is none.
    pub fn summary(&self) -> &Value {
        self.messages("summary")
            .last()
            .copied()
            .unwrap_or_else(|| panic!("no summary JSON message\n{}", self.describe()))
    }

    /// A numeric field of the summary.
    pub fn summary_u64(&self, field: &str) -> u64 {
        self.summary()
            .get(field)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| {
                panic!(
                    "summary has no numeric `{field}`: {}\n{}",
                    self.summary(),
                    self.describe()
                )
            })
    }

    /// The snapshot id of a backup's summary (64 hex digits).
    pub fn snapshot_id(&self) -> String {
        let id = self
            .summary()
            .get("snapshot_id")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("summary has no snapshot_id\n{}", self.describe()))
            .to_string();
        assert!(
            id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "snapshot_id is not 64 hex digits: {id:?}\n{}",
            self.describe()
        );
        id
    }

    /// The `error` JSON messages.
    pub fn errors(&self) -> Vec<&Value> {
        self.messages("error")
    }

    /// The `path` fields of the `error` messages.
    pub fn error_paths(&self) -> Vec<String> {
        self.errors()
            .iter()
            .filter_map(|e| e.get("path").and_then(Value::as_str).map(str::to_string))
            .collect()
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n... ({} more bytes)", &s[..end], s.len() - end)
}

/// A store location plus how to run the binary against it.
pub struct Homesync {
    pub repo: PathBuf,
    /// Run the binary as this uid/gid (through `setpriv`) instead of root.
    pub as_user: Option<(u32, u32)>,
    /// `XDG_CACHE_HOME` for the binary (where the file-state cache lives):
    /// by default a `cache` directory beside the store, so tests neither
    /// share a cache nor touch the real user's.
    pub cache_home: PathBuf,
    /// Extra environment variables for every run (e.g. `HOMESYNC_NOW`).
    pub env: Vec<(OsString, OsString)>,
}

impl Homesync {
    pub fn new(repo: impl Into<PathBuf>) -> Self {
        let repo = repo.into();
        let cache_home = repo
            .parent()
            .expect("store path has a parent")
            .join("cache");
        Homesync {
            repo,
            as_user: None,
            cache_home,
            env: Vec::new(),
        }
    }

    /// Runs `homesync --repo REPO [--json] ARGS...` and waits for it (with a
    /// timeout).
    pub fn run_with(&self, json: bool, args: &[&OsStr]) -> Run {
        let mut full: Vec<OsString> = vec!["--repo".into(), self.repo.clone().into_os_string()];
        if json {
            full.push("--json".into());
        }
        full.extend(args.iter().map(|a| a.to_os_string()));

        let mut cmd;
        if let Some((uid, gid)) = self.as_user {
            require_tool("setpriv");
            cmd = Command::new("setpriv");
            cmd.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg(bin());
        } else {
            cmd = Command::new(bin());
        }
        cmd.args(&full)
            .env_remove("HOMESYNC_REPO")
            .env_remove("HOMESYNC_NOW")
            .env("XDG_CACHE_HOME", &self.cache_home)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let cmdline = format!(
            "{}{}{} {}",
            self.env
                .iter()
                .map(|(k, v)| format!("{}={} ", k.to_string_lossy(), shell_quote(v)))
                .collect::<String>(),
            match self.as_user {
                Some((u, g)) => format!("setpriv --reuid={u} --regid={g} --clear-groups "),
                None => String::new(),
            },
            bin().display(),
            full.iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let (code, stdout, stderr) = run_with_timeout(cmd, RUN_TIMEOUT, &cmdline);
        let json = stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect();
        Run {
            cmdline,
            code,
            stdout,
            stderr,
            json,
        }
    }

    /// `homesync --repo REPO --json ARGS...`
    pub fn run(&self, args: &[&OsStr]) -> Run {
        self.run_with(true, args)
    }

    /// `homesync --repo REPO ARGS...` (human-readable output).
    pub fn run_text(&self, args: &[&OsStr]) -> Run {
        self.run_with(false, args)
    }

    /// `init`, expecting success.
    pub fn init(&self) {
        self.run(args!["init"]).expect_ok();
    }

    /// `backup PATH EXTRA...`, expecting exit 0; returns the run.
    pub fn backup(&self, path: &Path, extra: &[&OsStr]) -> Run {
        let mut a: Vec<&OsStr> = vec![OsStr::new("backup"), path.as_os_str()];
        a.extend_from_slice(extra);
        let run = self.run(&a);
        run.expect_ok();
        run
    }

    /// `restore SNAPSHOT --target DIR PATHS...`; returns the run unchecked.
    pub fn restore(&self, snapshot: &str, target: &Path, paths: &[&OsStr]) -> Run {
        let mut a: Vec<&OsStr> = vec![
            OsStr::new("restore"),
            OsStr::new(snapshot),
            OsStr::new("--target"),
            target.as_os_str(),
        ];
        a.extend_from_slice(paths);
        self.run(&a)
    }
}

pub fn shell_quote(a: &OsStr) -> String {
    let s = a.to_string_lossy();
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Spawns `cmd`, collects stdout/stderr on threads, and kills it after
/// `timeout`.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration, what: &str) -> (i32, String, String) {
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {what}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let t_err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for child") {
            break st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let so = t_out.join().unwrap_or_default();
            let se = t_err.join().unwrap_or_default();
            panic!(
                "timed out after {timeout:?}: {what}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                String::from_utf8_lossy(&so),
                String::from_utf8_lossy(&se)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let so = t_out.join().unwrap_or_default();
    let se = t_err.join().unwrap_or_default();
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    (
        code,
        String::from_utf8_lossy(&so).into_owned(),
        String::from_utf8_lossy(&se).into_owned(),
    )
}

/// Deterministic pseudo-random (incompressible) bytes (SplitMix64).
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&rng.next().to_le_bytes());
    }
    v.truncate(len);
    v
}

/// SplitMix64: small, seeded, the same sequence every time.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        match n {
            0 => 0,
            n => (self.next() % n as u64) as usize,
        }
    }
}

/// Writes `data` to `path`, creating parent directories.
pub fn write_file(path: &Path, data: &[u8]) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir -p {}: {e}", p.display()));
    }
    let mut f = fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(data)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Sets the mtime of `path` (not following symlinks) with `touch -h -d`.
pub fn set_mtime(path: &Path, date: &str) {
    sh(
        "touch",
        args!["-h", "-m", "-d", date, path.as_os_str()],
        None,
    );
}

/// Every entry below `root` (not `root` itself), as paths relative to
/// `root`, with its metadata (symlinks not followed).
pub fn walk(root: &Path) -> BTreeMap<PathBuf, fs::Metadata> {
    fn go(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, fs::Metadata>) {
        let rd = fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
        for entry in rd {
            let entry = entry.expect("read_dir entry");
            let path = entry.path();
            let md = fs::symlink_metadata(&path)
                .unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let is_dir = md.is_dir();
            out.insert(rel, md);
            if is_dir {
                go(root, &path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    go(root, root, &mut out);
    out
}

/// A one-line summary of an entry's metadata as std sees it, for a second,
/// independent-of-bsdtar comparison (full st_mode, owners, rdev, size,
/// link count, mtime with nanoseconds, symlink target, file content hash).
pub fn describe_entry(path: &Path, md: &fs::Metadata) -> String {
    let ft = md.file_type();
    let kind = if ft.is_symlink() {
        "symlink"
    } else if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "chardev"
    } else if ft.is_block_device() {
        "blockdev"
    } else {
        "unknown"
    };
    let mut s = format!(
        "{kind} mode={:o} uid={} gid={} mtime={}.{:09}",
        md.mode(),
        md.uid(),
        md.gid(),
        md.mtime(),
        md.mtime_nsec()
    );
    if ft.is_file() {
        s.push_str(&format!(" size={} nlink={}", md.len(), md.nlink()));
        let data = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        s.push_str(&format!(" blake3={}", blake3::hash(&data).to_hex()));
    }
    if ft.is_char_device() || ft.is_block_device() {
        s.push_str(&format!(" rdev={:#x}", md.rdev()));
    }
    if ft.is_symlink() {
        let t = fs::read_link(path).unwrap();
        s.push_str(&format!(" target={:?}", t.as_os_str()));
    }
    s
}

/// `describe_entry` for the root and every entry below it, keyed by the
/// relative path (`.` for the root).
pub fn describe_tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let md = fs::symlink_metadata(root).unwrap();
    out.insert(".".to_string(), describe_entry(root, &md));
    for (rel, md) in walk(root) {
        out.insert(
            format!("{:?}", rel.as_os_str()),
            describe_entry(&root.join(&rel), &md),
        );
    }
    out
}

/// The mtree keywords compared between source and restored trees.
pub const MTREE_KEYWORDS: &str = "!all,type,mode,uid,gid,time,size,link,sha256,device,nlink";

/// `bsdtar --format=mtree` of `dir` (run inside it so paths start with `.`),
/// as sorted lines without the `#mtree` header.
pub fn mtree(dir: &Path) -> Vec<String> {
    require_tool("bsdtar");
    let out = sh(
        "bsdtar",
        args![
            "--format=mtree",
            format!("--options={MTREE_KEYWORDS}"),
            "-cf",
            "-",
            "."
        ],
        Some(dir),
    );
    let mut lines: Vec<String> = String::from_utf8(out)
        .expect("mtree output is ASCII")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// `getfattr -R -d -m - -h .` run inside `dir`: every extended attribute
/// (user.*, POSIX ACLs as system.posix_acl_*), as sorted per-file blocks.
pub fn getfattr_dump(dir: &Path) -> Vec<String> {
    require_tool("getfattr");
    let out = Command::new("getfattr")
        .args(["-R", "-d", "-m", "-", "-h", "-e", "hex", "."])
        .current_dir(dir)
        .output()
        .expect("run getfattr");
    // getfattr exits 0 even when some files carry no attributes; a non-zero
    // exit means it could not read something, which must not pass silently.
    assert!(
        out.status.success(),
        "getfattr failed in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("getfattr output is ASCII");
    let mut blocks: Vec<String> = text
        .split("\n\n")
        .map(|b| b.trim().to_string())
        .filter(|b| !b.is_empty())
        .map(|b| {
            // Sort the attribute lines inside a block too (the order is the
            // file system's, not meaningful).
            let mut lines: Vec<&str> = b.lines().collect();
            if lines.len() > 1 {
                lines[1..].sort();
            }
            lines.join("\n")
        })
        .collect();
    blocks.sort();
    blocks
}

/// Asserts two sorted listings are equal, showing only the differing lines.
pub fn assert_same_listing(what: &str, source: &[String], restored: &[String]) {
    if source == restored {
        return;
    }
    let only_src: Vec<&String> = source.iter().filter(|l| !restored.contains(l)).collect();
    let only_dst: Vec<&String> = restored.iter().filter(|l| !source.contains(l)).collect();
    panic!(
        "{what}: restored tree differs from the source\n\
         --- only in source ({}) ---\n{}\n--- only in restored ({}) ---\n{}",
        only_src.len(),
        only_src
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        only_dst.len(),
        only_dst
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
    );
}

/// Asserts two maps (path -> description) are equal, showing differences.
pub fn assert_same_map(
    what: &str,
    source: &BTreeMap<String, String>,
    restored: &BTreeMap<String, String>,
) {
    let mut problems = Vec::new();
    for (k, v) in source {
        match restored.get(k) {
            None => problems.push(format!("missing in restored: {k} ({v})")),
            Some(r) if r != v => {
                problems.push(format!("{k}:\n    source:   {v}\n    restored: {r}"))
            }
            _ => {}
        }
    }
    for k in restored.keys() {
        if !source.contains_key(k) {
            problems.push(format!("extra in restored: {k} ({})", restored[k]));
        }
    }
    assert!(
        problems.is_empty(),
        "{what}: {} difference(s)\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// All regular files under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    walk(dir)
        .into_iter()
        .filter(|(_, md)| md.is_file())
        .map(|(rel, _)| dir.join(rel))
        .collect()
}

/// Finds `needle` in `hay`.
pub fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > hay.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Path bytes as a lossy string.
pub fn lossy(p: &Path) -> String {
    String::from_utf8_lossy(p.as_os_str().as_bytes()).into_owned()
}

/// A size-limited tmpfs, unmounted on drop.
pub struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    pub fn mount(size: &str) -> SmallFs {
        let dir = tempfile::Builder::new()
            .prefix("homesync-smallfs-")
            .tempdir()
            .unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            ok.success(),
            "mounting a {size} tmpfs failed (the tests run as root)"
        );
        SmallFs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}
