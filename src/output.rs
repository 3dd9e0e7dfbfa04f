//! What the CLI prints: human text, or JSON Lines with `--json`.
//! Results go to stdout; notes and errors to stderr (as JSON on stdout with
//! `--json`, so a script reads one stream).

use homesync_client::backup::BackupReport;
use homesync_client::browse::Change;
use homesync_client::restore::RestoreReport;
use homesync_protocol::{Node, NodeKind, Snapshot, SnapshotId, Timestamp};
use homesync_server::jobs::{JobReport, JobStatus};
use homesync_server::rebuild::RebuildReport;
use homesync_server::retention::Decision;
use serde_json::{Map, Value, json};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

#[derive(Clone)]
pub struct Out {
    json: bool,
}

/// A path as JSON: `path` is always present (lossy UTF-8 for display);
/// `path_hex` carries the exact bytes when they are not valid UTF-8.
fn path_fields(m: &mut Map<String, Value>, key: &str, bytes: &[u8]) {
    m.insert(
        key.into(),
        Value::String(String::from_utf8_lossy(bytes).into_owned()),
    );
    if std::str::from_utf8(bytes).is_err() {
        m.insert(
            format!("{key}_hex"),
            Value::String(homesync_protocol::id::hex(bytes)),
        );
    }
}

/// Bytes shown to a person: valid UTF-8 as is but control characters,
/// which are shown, like other bytes that are not UTF-8, as `\xNN` (or
/// `\u{N}`): a file name from a hostile snapshot must not move the cursor,
/// clear the screen or retitle the terminal of whoever lists it.
fn escaped(bytes: &[u8]) -> String {
    bytes.utf8_chunks().fold(String::new(), |mut s, c| {
        for ch in c.valid().chars() {
            match ch {
                c if c.is_control() && (c as u32) < 0x100 => {
                    s.push_str(&format!("\\x{:02x}", c as u32))
                }
                c if c.is_control() => s.push_str(&format!("\\u{{{:x}}}", c as u32)),
                c => s.push(c),
            }
        }
        for b in c.invalid() {
            s.push_str(&format!("\\x{b:02x}"));
        }
        s
    })
}

/// `YYYY-MM-DD HH:MM:SS` in UTC, for any year.
pub fn format_time(t: Timestamp) -> String {
    let days = t.sec.div_euclid(86_400);
    let secs = t.sec.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// A finished job as one JSON line (`message_type` `job`).
fn job_json(r: &JobReport) -> Value {
    let numbers: Map<String, Value> = r
        .numbers
        .iter()
        .map(|(n, v)| (n.to_string(), Value::from(*v)))
        .collect();
    json!({
        "message_type": "job", "kind": r.kind.as_str(), "started": r.started_ms / 1000,
        "started_utc": format_time(Timestamp { sec: r.started_ms / 1000, nsec: 0 }),
        "duration_s": r.duration.as_secs_f64(), "result": r.result.as_str(),
        "summary": r.summary, "numbers": numbers,
    })
}

fn mode_string(n: &Node) -> String {
    let mut s = String::with_capacity(10);
    s.push(n.kind.letter());
    let m = n.mode;
    let bit = |b: u32, c: char| if m & b != 0 { c } else { '-' };
    let special = |x: u32, sp: u32, lower: char, upper: char| match (m & x != 0, m & sp != 0) {
        (true, true) => lower,
        (false, true) => upper,
        (true, false) => 'x',
        (false, false) => '-',
    };
    s.push(bit(0o400, 'r'));
    s.push(bit(0o200, 'w'));
    s.push(special(0o100, 0o4000, 's', 'S'));
    s.push(bit(0o040, 'r'));
    s.push(bit(0o020, 'w'));
    s.push(special(0o010, 0o2000, 's', 'S'));
    s.push(bit(0o004, 'r'));
    s.push(bit(0o002, 'w'));
    s.push(special(0o001, 0o1000, 't', 'T'));
    s
}

/// Small transfers read better in KiB.
fn kib(b: u64) -> String {
    if b < 10 << 20 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        mib(b)
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

impl Out {
    pub fn new(json: bool) -> Self {
        Out { json }
    }

    fn line(&self, v: Value) {
        let mut o = std::io::stdout().lock();
        let _ = writeln!(o, "{v}");
    }

    /// An informational message (stderr; JSON on stdout with `--json`).
    pub fn note(&self, msg: &str) {
        if self.json {
            self.line(json!({"message_type": "note", "message": msg}));
        } else {
            eprintln!("{msg}");
        }
    }

    pub fn error(&self, path: Option<&Path>, msg: &str) {
        if self.json {
            let mut m = Map::new();
            m.insert("message_type".into(), "error".into());
            if let Some(p) = path {
                path_fields(&mut m, "path", p.as_os_str().as_bytes());
            }
            m.insert("error".into(), msg.into());
            self.line(Value::Object(m));
        } else {
            match path {
                Some(p) => eprintln!("error: {}: {msg}", escaped(p.as_os_str().as_bytes())),
                None => eprintln!("error: {msg}"),
            }
        }
    }

    pub fn init(&self, path: &Path, id: &str) {
        if self.json {
            self.line(
                json!({"message_type": "init", "repo": path.display().to_string(), "store_id": id}),
            );
        } else {
            println!("created store {id} at {}", path.display());
        }
    }

    pub fn backup_summary(&self, r: &BackupReport, took: Duration) {
        let s = &r.snapshot.stats;
        if self.json {
            let mut v = json!({
                "message_type": "summary",
                "snapshot_id": r.id.to_hex(),
                "files": s.files, "dirs": s.dirs, "other": s.other, "bytes": s.bytes,
                "files_read": s.files_read, "bytes_read": s.bytes_read,
                "blobs_added": s.blobs_added, "bytes_added": s.bytes_added,
                "errors": s.errors, "seconds": took.as_secs_f64(),
            });
            if let Some(t) = &r.transfer {
                let m = v.as_object_mut().expect("object");
                for (k, n) in [
                    ("bytes_sent", t.sent),
                    ("blob_bytes_sent", t.blob_bytes),
                    ("delta_bytes_sent", t.delta_bytes),
                    ("overhead_bytes_sent", t.overhead()),
                    ("deltas_sent", t.deltas),
                    ("bytes_received", t.received),
                ] {
                    m.insert(k.into(), n.into());
                }
            }
            self.line(v);
        } else {
            println!(
                "snapshot {} saved: {} files, {} dirs, {} in all; read {} files ({}), added {} blobs ({}) in {:.1} s{}",
                r.id.short(),
                s.files,
                s.dirs,
                mib(s.bytes),
                s.files_read,
                mib(s.bytes_read),
                s.blobs_added,
                mib(s.bytes_added),
                took.as_secs_f64(),
                if s.errors > 0 {
                    format!("; {} entries could not be read", s.errors)
                } else {
                    String::new()
                }
            );
            if let Some(t) = &r.transfer {
                println!(
                    "sent {} (blobs {}, {} deltas {}, protocol {}), received {}",
                    kib(t.sent),
                    kib(t.blob_bytes),
                    t.deltas,
                    kib(t.delta_bytes),
                    kib(t.overhead()),
                    kib(t.received)
                );
            }
        }
    }

    pub fn gc(&self, r: &homesync_server::gc::GcReport) {
        if self.json {
            self.line(json!({
                "message_type": "gc",
                "generation": r.generation, "snapshots": r.snapshots, "reachable": r.reachable,
                "condemned": r.condemned, "revived": r.revived,
                "blobs_deleted": r.swept.blobs, "blob_bytes_deleted": r.swept.bytes,
                "deferred": r.swept.deferred,
                "packs_deleted": r.packs_deleted, "packs_rewritten": r.packs_rewritten,
                "bytes_reclaimed": r.bytes_reclaimed, "orphans_deleted": r.orphans_deleted,
            }));
        } else {
            println!(
                "garbage collection: {} snapshots reference {} blobs; {} blobs ({}) deleted, {} condemned{}; {} packs deleted, {} rewritten; {} reclaimed",
                r.snapshots,
                r.reachable,
                r.swept.blobs,
                mib(r.swept.bytes),
                r.condemned,
                if r.swept.deferred > 0 {
                    format!(" ({} wait for older backups to finish)", r.swept.deferred)
                } else {
                    String::new()
                },
                r.packs_deleted,
                r.packs_rewritten,
                mib(r.bytes_reclaimed)
            );
        }
    }

    /// A server session ended: what the server counted.
    pub fn session(&self, r: &homesync_server::service::SessionReport) {
        if self.json {
            self.line(json!({
                "message_type": "session",
                "peer": r.peer, "machine": r.machine, "requests": r.requests,
                "blob_bytes": r.blob_bytes, "blobs_stored": r.blobs_stored,
                "delta_bytes": r.delta_bytes, "deltas_stored": r.deltas_stored,
                "deltas_refused": r.deltas_refused,
                "bytes_received": r.bytes_received, "bytes_sent": r.bytes_sent,
                "path_mtu": r.path_mtu,
            }));
        } else {
            tracing::info!(
                "{} ({}): {} requests; received {} of blobs ({} new), {} of deltas ({} stored, {} refused); {} in, {} out",
                r.peer,
                r.machine.as_deref().unwrap_or("not authenticated"),
                r.requests,
                kib(r.blob_bytes),
                r.blobs_stored,
                kib(r.delta_bytes),
                r.deltas_stored,
                r.deltas_refused,
                kib(r.bytes_received),
                kib(r.bytes_sent)
            );
        }
    }

    /// A job the server's scheduler finished: a JSON line with `--json`
    /// (without, the job has logged its result already).
    pub fn server_job(&self, r: &JobReport) {
        if self.json {
            self.line(job_json(r));
        }
    }

    /// The result of `homesync admin rebuild-index`.
    pub fn rebuild(&self, dir: &Path, r: &RebuildReport) {
        if self.json {
            self.line(json!({
                "message_type": "rebuild_index",
                "store": dir.display().to_string(),
                "copy": r.copy,
                "bad_copies": r.bad_copies.iter().map(|(n, w)| json!({"name": n, "problem": w})).collect::<Vec<_>>(),
                "packs_listed": r.packs_listed,
                "packs_added": r.packs_added,
                "packs_dropped": r.packs_dropped,
                "bad_packs": r.bad_packs.iter().map(|(n, w)| json!({"name": n, "problem": w})).collect::<Vec<_>>(),
                "blobs_added": r.blobs_added,
                "snapshots_added": r.snapshots_added,
                "snapshots_dropped": r.snapshots_dropped.iter().map(|s| s.to_hex()).collect::<Vec<_>>(),
                "snapshots": r.snapshots,
                "replaced": r.replaced.as_ref().map(|p| p.display().to_string()),
                "store_created": r.store_created,
            }));
            return;
        }
        if r.store_created {
            println!("store directory {} made from its bucket", dir.display());
        }
        match &r.copy {
            Some(c) => println!("started from index copy {c}"),
            None => println!("started from the packs alone (no index copy used)"),
        }
        for (name, why) in &r.bad_copies {
            println!("skipped damaged index copy {name}: {why}");
        }
        println!(
            "{} packs listed: {} added ({} blobs), {} gone since the copy",
            r.packs_listed, r.packs_added, r.blobs_added, r.packs_dropped
        );
        for (name, why) in &r.bad_packs {
            println!(
                "damaged pack {name}: {why} (its blobs are not indexed; garbage collection will delete it: copy it away first to keep it)"
            );
        }
        for id in &r.snapshots_dropped {
            println!("snapshot {} dropped: its blobs are gone", id.short());
        }
        println!(
            "{} snapshots ({} found in packs newer than the copy)",
            r.snapshots, r.snapshots_added
        );
        if let Some(p) = &r.replaced {
            println!("the old index is kept as {}", p.display());
        }
        if r.copy.is_none() {
            println!(
                "no credentials survive a rebuild from the packs alone: add the machines again"
            );
        }
    }

    /// The result of `homesync admin run-job`.
    pub fn job(&self, r: &JobReport) {
        if self.json {
            self.line(job_json(r));
        } else {
            println!(
                "{}: {} in {:.1} s: {}",
                r.kind,
                r.result.as_str(),
                r.duration.as_secs_f64(),
                r.summary
            );
        }
    }

    /// `homesync admin jobs`: the latest run of each kind, and any running now.
    pub fn jobs(&self, all: &[JobStatus]) {
        for (kind, last, running) in all {
            if self.json {
                let mut v = match last {
                    Some(row) => json!({
                        "message_type": "job", "kind": kind.as_str(),
                        "started": row.started_ms / 1000,
                        "started_utc": format_time(Timestamp { sec: row.started_ms / 1000, nsec: 0 }),
                        "duration_s": row.duration_ms as f64 / 1000.0,
                        "result": row.result, "summary": row.summary,
                        "numbers": serde_json::from_str::<Value>(&row.numbers).unwrap_or(Value::Null),
                    }),
                    None => json!({
                        "message_type": "job", "kind": kind.as_str(), "started": null,
                        "started_utc": null, "duration_s": null, "result": null,
                        "summary": null, "numbers": {},
                    }),
                };
                v["running"] = match running {
                    Some(r) => json!({"pid": r.pid, "since": r.started}),
                    None => Value::Null,
                };
                self.line(v);
            } else {
                match last {
                    Some(row) => println!(
                        "{:<9}  {} UTC  {:>8.1} s  {:<6}  {}",
                        kind.as_str(),
                        format_time(Timestamp {
                            sec: row.started_ms / 1000,
                            nsec: 0
                        }),
                        row.duration_ms as f64 / 1000.0,
                        row.result,
                        row.summary
                    ),
                    None => println!("{:<9}  never run", kind.as_str()),
                }
                if let Some(r) = running {
                    println!(
                        "{:<9}  running since {} UTC (process {})",
                        "",
                        format_time(Timestamp {
                            sec: r.started,
                            nsec: 0
                        }),
                        r.pid
                    );
                }
            }
        }
    }

    pub fn restore_summary(&self, r: &RestoreReport, took: Duration) {
        if self.json {
            self.line(json!({
                "message_type": "summary",
                "files_restored": r.files, "bytes_restored": r.bytes,
                "files_skipped": r.skipped, "bytes_skipped": r.skipped_bytes,
                "errors": r.errors.len(), "seconds": took.as_secs_f64(),
            }));
        } else {
            println!(
                "restored {} entries ({}){} in {:.1} s{}",
                r.files,
                mib(r.bytes),
                if r.skipped > 0 {
                    format!(
                        ", {} files ({}) already in place",
                        r.skipped,
                        mib(r.skipped_bytes)
                    )
                } else {
                    String::new()
                },
                took.as_secs_f64(),
                if r.errors.is_empty() {
                    String::new()
                } else {
                    format!("; {} failed", r.errors.len())
                }
            );
        }
    }

    /// The first phase of a restore is done.
    pub fn ready(&self, r: &homesync_client::restore::Ready, after: Duration) {
        if self.json {
            self.line(json!({
                "message_type": "ready",
                "files": r.files, "bytes": r.bytes,
                "files_left": r.files_left, "bytes_left": r.bytes_left,
                "seconds": after.as_secs_f64(),
            }));
        } else {
            eprintln!(
                "ready after {:.1} s: {} entries in place; {} files ({}) still to come",
                after.as_secs_f64(),
                r.files,
                r.files_left,
                mib(r.bytes_left)
            );
        }
    }

    pub fn snapshots(&self, all: &[(SnapshotId, Snapshot)]) {
        if !self.json {
            println!(
                "{:<8}  {:<19}  {:<12}  {:>8}  {:>10}  source",
                "id", "time (UTC)", "machine", "files", "size"
            );
        }
        for (id, s) in all {
            if self.json {
                let mut m = Map::new();
                m.insert("message_type".into(), "snapshot".into());
                m.insert("id".into(), id.to_hex().into());
                m.insert("time".into(), format_time(s.time).into());
                m.insert("unix_time".into(), s.time.sec.into());
                m.insert("machine".into(), s.machine.clone().into());
                path_fields(&mut m, "source", &s.source);
                m.insert("tags".into(), s.tags.clone().into());
                m.insert("root".into(), s.root_tree().to_hex().into());
                m.insert("parent".into(), s.parent.map(|p| p.to_hex()).into());
                m.insert("files".into(), s.stats.files.into());
                m.insert("bytes".into(), s.stats.bytes.into());
                m.insert("errors".into(), s.stats.errors.into());
                self.line(Value::Object(m));
            } else {
                println!(
                    "{:<8}  {:<19}  {:<12}  {:>8}  {:>10}  {}{}",
                    id.short(),
                    format_time(s.time),
                    s.machine,
                    s.stats.files,
                    mib(s.stats.bytes),
                    escaped(&s.source),
                    if s.tags.is_empty() {
                        String::new()
                    } else {
                        format!("  [{}]", s.tags.join(","))
                    }
                );
            }
        }
    }

    /// The heading of one retention group (text only).
    pub fn forget_group(&self, machine: &str, source: &[u8]) {
        if !self.json {
            println!("{machine} {}", escaped(source));
        }
    }

    /// One retention decision: keep or remove, and why.
    pub fn forget(&self, d: &Decision) {
        if self.json {
            let mut m = Map::new();
            m.insert("message_type".into(), "forget".into());
            m.insert("snapshot_id".into(), d.id.to_hex().into());
            m.insert("time".into(), format_time(d.time).into());
            m.insert("unix_time".into(), d.time.sec.into());
            m.insert("machine".into(), d.machine.clone().into());
            path_fields(&mut m, "source", &d.source);
            m.insert("action".into(), d.action.as_str().into());
            m.insert("reasons".into(), d.reasons.clone().into());
            self.line(Value::Object(m));
        } else {
            println!(
                "  {:<8}  {:<19}  {:<6}  {}",
                d.id.short(),
                format_time(d.time),
                d.action.as_str(),
                d.reasons.join(", ")
            );
        }
    }

    pub fn forget_summary(&self, kept: usize, removed: usize, dry_run: bool) {
        if self.json {
            self.line(json!({
                "message_type": "summary",
                "kept": kept, "removed": removed, "dry_run": dry_run,
            }));
        } else if dry_run {
            println!(
                "would keep {kept} snapshots and forget {removed} (dry run: nothing forgotten)"
            );
        } else {
            println!("kept {kept} snapshots, forgot {removed}");
        }
    }

    pub fn node(&self, path: &[u8], n: &Node) {
        if self.json {
            let mut m = Map::new();
            m.insert("message_type".into(), "node".into());
            path_fields(&mut m, "path", path);
            m.insert("type".into(), n.kind.name().into());
            m.insert("mode".into(), format!("{:04o}", n.mode).into());
            m.insert("uid".into(), n.uid.into());
            m.insert("gid".into(), n.gid.into());
            m.insert("user".into(), n.user.clone().into());
            m.insert("group".into(), n.group.clone().into());
            m.insert("size".into(), n.size.into());
            m.insert(
                "mtime".into(),
                format!("{}.{:09}", n.mtime.sec, n.mtime.nsec).into(),
            );
            if matches!(n.kind, NodeKind::Symlink | NodeKind::Hardlink) {
                path_fields(&mut m, "target", &n.target);
            }
            self.line(Value::Object(m));
        } else {
            let owner =
                |name: &Option<String>, id: u32| name.clone().unwrap_or_else(|| id.to_string());
            let shown = if path.is_empty() { b"." as &[u8] } else { path };
            let link = match n.kind {
                NodeKind::Symlink => format!(" -> {}", escaped(&n.target)),
                NodeKind::Hardlink => format!(" => {}", escaped(&n.target)),
                _ => String::new(),
            };
            println!(
                "{} {}/{} {:>12} {} {}{}",
                mode_string(n),
                owner(&n.user, n.uid),
                owner(&n.group, n.gid),
                n.size,
                format_time(n.mtime),
                escaped(shown),
                link
            );
        }
    }

    pub fn listening(&self, addr: &std::net::SocketAddr, fingerprint: &str, store: &Path) {
        if self.json {
            self.line(json!({"message_type": "listening", "address": addr.to_string(), "fingerprint": fingerprint, "store": store.display().to_string()}));
        } else {
            println!(
                "homesync server listening on {addr} (store {})",
                store.display()
            );
            println!("certificate fingerprint: {fingerprint}");
        }
    }

    /// A credential or token: printed once, on stdout only.
    pub fn credential(&self, machine: &str, role: &str, credential: &str) {
        if self.json {
            self.line(json!({"message_type": "credential", "machine": machine, "role": role, "credential": credential}));
        } else {
            println!("{credential}");
            eprintln!(
                "({role} credential for {machine}: shown once, the server keeps only its hash)"
            );
        }
    }

    pub fn machines(&self, all: &[homesync_server::auth::MachineInfo]) {
        for m in all {
            let state = if m.revoked.is_some() {
                "revoked"
            } else {
                "active"
            };
            if self.json {
                self.line(json!({"message_type": "machine", "name": m.name, "role": m.role.as_str(), "created": m.created, "state": state}));
            } else {
                println!("{:<24} {:<8} {state}", m.name, m.role.as_str());
            }
        }
    }

    pub fn change(&self, c: Change, path: &[u8], n: &Node) {
        if self.json {
            let mut m = Map::new();
            m.insert("message_type".into(), "change".into());
            m.insert(
                "change".into(),
                match c {
                    Change::Added => "added",
                    Change::Removed => "removed",
                    Change::Modified => "modified",
                }
                .into(),
            );
            path_fields(&mut m, "path", path);
            m.insert("type".into(), n.kind.name().into());
            self.line(Value::Object(m));
        } else {
            let slash = if n.kind == NodeKind::Dir { "/" } else { "" };
            println!("{}    {}{slash}", c.symbol(), escaped(path));
        }
    }
}

/// `homesync check`.
impl Out {
    /// One damaged or missing blob and every snapshot path that needs it.
    pub fn damage(&self, d: &homesync_server::check::Damage) {
        use homesync_server::check::kind_name;
        if self.json {
            let affected: Vec<Value> = d
                .affected
                .iter()
                .map(|a| {
                    let mut m = Map::new();
                    m.insert("snapshot".into(), a.snapshot.to_hex().into());
                    m.insert("time".into(), format_time(a.time).into());
                    m.insert("machine".into(), a.machine.clone().into());
                    path_fields(&mut m, "source", &a.source);
                    path_fields(&mut m, "path", &a.path);
                    Value::Object(m)
                })
                .collect();
            self.line(json!({
                "message_type": "damage",
                "blob": d.blob.to_hex(),
                "kind": kind_name(d.kind),
                "pack": d.pack,
                "problem": d.problem.code(),
                "detail": d.problem.detail(),
                "affected": affected,
            }));
        } else {
            println!(
                "damaged {} {}{}: {}",
                kind_name(d.kind),
                d.blob,
                d.pack
                    .as_ref()
                    .map(|p| format!(" (pack {p})"))
                    .unwrap_or_default(),
                d.problem
            );
            if d.affected.is_empty() {
                println!("  no snapshot needs it");
            }
            for a in &d.affected {
                println!(
                    "  snapshot {} {} {} {}: {}",
                    a.snapshot.short(),
                    format_time(a.time),
                    a.machine,
                    escaped(&a.source),
                    if a.path.is_empty() {
                        ".".to_string()
                    } else {
                        escaped(&a.path)
                    }
                );
            }
        }
    }

    pub fn check_summary(
        &self,
        r: &homesync_server::check::CheckReport,
        opts: &homesync_server::check::CheckOptions,
        took: Duration,
    ) {
        if self.json {
            self.line(json!({
                "message_type": "check_summary",
                "read_data": opts.read_data,
                "subset": opts.read_data.then(|| opts.subset.to_string()),
                "snapshots_checked": r.snapshots_checked,
                "trees_checked": r.trees_checked,
                "blobs_checked": r.blobs_checked,
                "blobs_read": r.blobs_read,
                "packs_checked": r.packs_checked,
                "packs_read": r.packs_read,
                "bytes_read": r.bytes_read,
                "damaged_blobs": r.damaged.len(),
                "errors": r.errors.len(),
                "warnings": r.warnings.len(),
                "seconds": took.as_secs_f64(),
            }));
        } else {
            let read = if opts.read_data {
                format!(
                    "data of {} packs{}, {} blobs, {} read",
                    r.packs_read,
                    match opts.subset {
                        homesync_server::check::Subset::All => String::new(),
                        s => format!(" (subset {s})"),
                    },
                    r.blobs_read,
                    kib(r.bytes_read)
                )
            } else {
                format!("{} read", kib(r.bytes_read))
            };
            let verdict = if r.is_damaged() {
                format!(
                    "{} damaged or missing blob(s), {} other problem(s)",
                    r.damaged.len(),
                    r.errors.len()
                )
            } else {
                "no damage found".to_string()
            };
            println!(
                "checked {} snapshots, {} trees, {} packs ({read}) in {:.1} s: {verdict}",
                r.snapshots_checked,
                r.trees_checked,
                r.packs_checked,
                took.as_secs_f64()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_shown_to_a_person_carry_no_control_characters() {
        assert_eq!(escaped(b"plain name.txt"), "plain name.txt");
        assert_eq!(escaped("caf\u{e9}".as_bytes()), "caf\u{e9}");
        assert_eq!(
            escaped(b"evil\x1b]0;owned\x07\r\nname\xff"),
            "evil\\x1b]0;owned\\x07\\x0d\\x0aname\\xff"
        );
        assert_eq!(escaped("a\u{9b}b".as_bytes()), "a\\x9bb");
    }

    #[test]
    fn times_format_for_any_year() {
        assert_eq!(
            format_time(Timestamp { sec: 0, nsec: 0 }),
            "1970-01-01 00:00:00"
        );
        assert_eq!(
            format_time(Timestamp {
                sec: 951_782_400,
                nsec: 0
            }),
            "2000-02-29 00:00:00"
        );
        assert_eq!(
            format_time(Timestamp {
                sec: -2_208_988_800,
                nsec: 0
            }),
            "1900-01-01 00:00:00"
        );
        assert_eq!(
            format_time(Timestamp {
                sec: 4_102_444_799,
                nsec: 0
            }),
            "2099-12-31 23:59:59"
        );
    }

    #[test]
    fn non_utf8_paths_are_kept_exactly() {
        let mut m = Map::new();
        path_fields(&mut m, "path", b"caf\xe9");
        assert_eq!(m["path_hex"], "636166e9");
        assert_eq!(escaped(b"caf\xe9/x"), "caf\\xe9/x");
        let mut m = Map::new();
        path_fields(&mut m, "path", "café".as_bytes());
        assert!(!m.contains_key("path_hex"));
    }

    #[test]
    fn modes_render_like_ls() {
        let mut n = Node::new(b"x".to_vec(), NodeKind::Dir);
        n.mode = 0o1777;
        assert_eq!(mode_string(&n), "drwxrwxrwt");
        n.kind = NodeKind::File;
        n.mode = 0o4754;
        assert_eq!(mode_string(&n), "-rwsr-xr--");
    }
}
