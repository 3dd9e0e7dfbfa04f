//! The daemon's control socket and status: `homesync status`, `pause` and
//! `resume` talk to the running daemon over a Unix socket in its state
//! directory (one JSON line each way). The socket is local, so only the
//! machine's users reach it; anyone may read the status, and pausing is for
//! root, the daemon's own user, and the owners of the backed-up homes.
//! The same status, without live progress, is kept in `daemon.json` beside
//! it, so `homesync status` can say what happened last when no daemon runs.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const SOCKET: &str = "daemon.sock";
pub const STATUS_FILE: &str = "daemon.json";

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LastSnapshot {
    pub id: String,
    pub source: String,
    /// Unix seconds when it was committed.
    pub time: u64,
    /// Listed only the changed directories (not a full scan).
    pub incremental: bool,
    pub dirs_listed: u64,
    pub dirs_reused: u64,
    pub files_read: u64,
    pub bytes_read: u64,
    pub bytes_sent: u64,
    pub errors: u64,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LiveProgress {
    pub files_done: u64,
    pub files_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    /// Whether a daemon answered (false when read from the status file).
    pub running: bool,
    pub pid: u32,
    /// idle, pending, backing up, paused, holding, retrying.
    pub activity: String,
    /// Why it holds or what it waits for, in words.
    pub detail: Option<String>,
    pub paused: bool,
    /// Unix seconds; absent while paused means until `resume`.
    pub paused_until: Option<u64>,
    /// Directories with changes not yet in a snapshot.
    pub pending_dirs: u64,
    /// Unix seconds of the oldest change not yet in a snapshot.
    pub pending_since: Option<u64>,
    /// Unix seconds when the next snapshot is due.
    pub next_snapshot: Option<u64>,
    pub last_snapshot: Option<LastSnapshot>,
    /// Unix seconds and message of the last failure.
    pub last_error: Option<(u64, String)>,
    pub progress: Option<LiveProgress>,
    pub watches: u64,
    /// Subtrees without a watch (the inotify limit): rescanned every time.
    pub unwatched_dirs: u64,
    pub events: u64,
    pub overflows: u64,
    pub snapshots: u64,
    pub full_scans: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status,
    /// Pause for `seconds`, or until resumed.
    Pause {
        seconds: Option<u64>,
    },
    Resume,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    pub error: Option<String>,
    pub status: Option<Status>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no daemon answers at {}: {source}", path.display())]
    NotRunning {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the daemon at {}: {message}", path.display())]
    Refused { path: PathBuf, message: String },
    #[error("the daemon at {} sent a malformed answer: {why}", path.display())]
    Malformed { path: PathBuf, why: String },
}

/// Sends one request to the daemon whose state directory is `state_dir`.
pub fn request(state_dir: &Path, req: &Request) -> Result<Status, ControlError> {
    let path = state_dir.join(SOCKET);
    let not_running = |source| ControlError::NotRunning {
        path: path.clone(),
        source,
    };
    let mut s = UnixStream::connect(&path).map_err(not_running)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(not_running)?;
    let mut line = serde_json::to_string(req).expect("requests serialise");
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(not_running)?;
    let mut answer = String::new();
    BufReader::new(std::io::Read::take(&s, 64 << 10))
        .read_line(&mut answer)
        .map_err(not_running)?;
    let r: Response = serde_json::from_str(&answer).map_err(|e| ControlError::Malformed {
        path: path.clone(),
        why: e.to_string(),
    })?;
    match (r.ok, r.status) {
        (true, Some(st)) => Ok(st),
        (_, _) => Err(ControlError::Refused {
            path,
            message: r.error.unwrap_or_else(|| "refused".into()),
        }),
    }
}

/// The status the last daemon left in `state_dir`, if any.
pub fn saved_status(state_dir: &Path) -> Option<Status> {
    let text = std::fs::read_to_string(state_dir.join(STATUS_FILE)).ok()?;
    let mut st: Status = serde_json::from_str(&text).ok()?;
    st.running = false;
    st.progress = None;
    Some(st)
}

/// Writes the status file atomically (a reader never sees half of it).
pub fn save_status(state_dir: &Path, st: &Status) -> std::io::Result<()> {
    let tmp = state_dir.join(format!(".{STATUS_FILE}.tmp"));
    let mut text = serde_json::to_string_pretty(st).expect("status serialises");
    text.push('\n');
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, state_dir.join(STATUS_FILE))
}

/// Reads one request line (at most 4 KiB: a peer cannot make the daemon
/// buffer more).
pub fn read_request(s: &UnixStream) -> Result<Request, String> {
    let mut line = String::new();
    BufReader::new(std::io::Read::take(s, 4096))
        .read_line(&mut line)
        .map_err(|e| format!("reading the request: {e}"))?;
    serde_json::from_str(line.trim()).map_err(|e| format!("malformed request {line:?}: {e}"))
}

pub fn write_response(mut s: &UnixStream, r: &Response) -> std::io::Result<()> {
    let mut line = serde_json::to_string(r).expect("responses serialise");
    line.push('\n');
    s.write_all(line.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_status_round_trip_as_json() {
        let r: Request = serde_json::from_str(r#"{"cmd":"pause","seconds":60}"#).unwrap();
        assert!(matches!(r, Request::Pause { seconds: Some(60) }));
        let r: Request = serde_json::from_str(r#"{"cmd":"status"}"#).unwrap();
        assert!(matches!(r, Request::Status));
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"format-disk"}"#).is_err());
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(saved_status(dir.path()), None);
        let st = Status {
            running: true,
            pid: 7,
            activity: "idle".into(),
            snapshots: 3,
            ..Default::default()
        };
        save_status(dir.path(), &st).unwrap();
        let back = saved_status(dir.path()).unwrap();
        assert!(!back.running, "a saved status is not a running daemon");
        assert_eq!(back.snapshots, 3);
        let e = request(dir.path(), &Request::Status).unwrap_err();
        assert!(matches!(e, ControlError::NotRunning { .. }), "{e}");
    }
}
