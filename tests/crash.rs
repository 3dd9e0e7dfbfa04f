//! Crashes, for real: `homesync serve` SIGKILLed during backups and
//! restores over QUIC, the retention and GC jobs SIGKILLed while they run,
//! and the client SIGKILLed during backup (its SQLite file-state cache
//! included) and restore.
//!
//! Each kill lands at a uniformly random fraction of how long the same
//! operation took once unkilled (measured here, so the kills stay inside
//! the operation however fast it becomes). The RNG's seed is printed;
//! `HOMESYNC_CRASH_SEED=N` repeats a run. `HOMESYNC_CRASH_TRIALS=N` sets the
//! trials per scenario (CI: [`CI_TRIALS`]; the long run in
//! docs/reliability.md used 50).
//!
//! After every kill: `check --read-data` passes, every committed snapshot
//! restores exactly as its source was when it was taken, and the
//! interrupted work, run again, completes without moving again what was
//! already stored (or restored).

mod common;

use common::server::*;
use common::*;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Trials per scenario in CI: enough to land kills all over each
/// operation, few enough for the file to stay well under three minutes.
const CI_TRIALS: usize = 10;

/// Slack for what a backup sends besides the new chunks: trees, and the
/// blob headers of each.
const TREE_SLACK: u64 = 64 << 10;

fn trials() -> usize {
    match std::env::var("HOMESYNC_CRASH_TRIALS") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("HOMESYNC_CRASH_TRIALS={v:?} is not a number")),
        Err(_) => CI_TRIALS,
    }
}

/// The kill points' generator for scenario `name`: seeded from
/// `HOMESYNC_CRASH_SEED` or the clock, mixed with the name so that each
/// test has its own sequence; printed so that a failure can be replayed.
fn scenario_rng(name: &str) -> Rng {
    let base = match std::env::var("HOMESYNC_CRASH_SEED") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("HOMESYNC_CRASH_SEED={v:?} is not a number")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    };
    eprintln!("{name}: HOMESYNC_CRASH_SEED={base} repeats this run");
    let mixed = name
        .bytes()
        .fold(base, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01B3));
    Rng(mixed)
}

/// A uniformly random point of `whole`.
fn point_of(rng: &mut Rng, whole: Duration) -> Duration {
    whole.mul_f64((rng.next() >> 11) as f64 / (1u64 << 53) as f64)
}

/// A child whose output is collected on threads (so a full pipe never
/// stalls it), to be killed or waited for.
struct Running {
    child: Child,
    started: Instant,
    out: std::thread::JoinHandle<String>,
    err: std::thread::JoinHandle<String>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let collect = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = r.read_to_string(&mut s);
                s
            })
        };
        let out = collect(Box::new(child.stdout.take().unwrap()));
        let err = collect(Box::new(child.stderr.take().unwrap()));
        Running {
            child,
            started: Instant::now(),
            out,
            err,
        }
    }

    /// Lets the child run up to a random point of `whole` after its
    /// start. When it ends sooner (the machine got less busy than when
    /// `whole` was measured), `whole` becomes what it took, so that later
    /// kills keep landing inside the operation.
    fn run_to_random_point(&mut self, rng: &mut Rng, whole: &mut Duration) {
        let point = point_of(rng, *whole);
        while self.started.elapsed() < point {
            if self.child.try_wait().unwrap().is_some() {
                *whole = self.started.elapsed();
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGKILLs the child (if it still runs) and returns how it ended:
    /// `None` when the kill ended it, else its exit code and stdout.
    fn kill(mut self) -> Option<(i32, String, String)> {
        let _ = self.child.kill();
        let (code, out, err) = self.wait();
        code.map(|c| (c, out, err))
    }

    /// Waits for the child: its exit code (`None` when a signal ended
    /// it), stdout and stderr.
    fn wait(mut self) -> (Option<i32>, String, String) {
        let status = self.child.wait().unwrap();
        let out = self.out.join().unwrap();
        let err = self.err.join().unwrap();
        (status.code(), out, err)
    }
}

/// The snapshot id a finished backup printed.
fn snapshot_id_of(stdout: &str) -> String {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message_type"] == "summary")
        .and_then(|v| v["snapshot_id"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("a finished backup printed no snapshot id:\n{stdout}"))
}

/// The bytes of every blob the store's index lists: what is stored for
/// good (packs written but not indexed do not count).
fn stored_bytes(store: &Path) -> u64 {
    let db = rusqlite::Connection::open_with_flags(
        store.join("index.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    db.query_row("SELECT COALESCE(SUM(length), 0) FROM blobs", [], |r| {
        r.get::<_, i64>(0)
    })
    .unwrap() as u64
}

/// A home of many small files (one chunk each) and a few larger ones.
fn make_home(src: &Path, rng: &mut Rng) {
    for i in 0..120 {
        let len = 1024 + rng.below(24 << 10);
        write_file(
            &src.join(format!("d{}/f{i}", i % 6)),
            &random_bytes(rng.next(), len),
        );
    }
    for i in 0..2 {
        write_file(
            &src.join(format!("big{i}")),
            &random_bytes(rng.next(), 400 << 10),
        );
    }
}

/// Changes the home as a day's work would (files edited, added, removed,
/// one larger file written); returns the bytes of new content, all of it
/// incompressible and new to the store.
fn change_home(src: &Path, rng: &mut Rng, round: usize) -> u64 {
    let mut files: Vec<PathBuf> = files_under(src)
        .into_iter()
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with("big"))
        .collect();
    files.sort();
    let mut new = 0;
    for _ in 0..12 {
        let f = &files[rng.below(files.len())];
        let len = 1024 + rng.below(24 << 10);
        write_file(f, &random_bytes(rng.next(), len));
        new += len as u64;
    }
    for i in 0..8 {
        let len = 1024 + rng.below(24 << 10);
        write_file(
            &src.join(format!("r{round}/n{i}")),
            &random_bytes(rng.next(), len),
        );
        new += len as u64;
    }
    for _ in 0..4 {
        let f = &files[rng.below(files.len())];
        let _ = std::fs::remove_file(f);
    }
    let len = 600 << 10;
    write_file(
        &src.join(format!("big{}", round % 3)),
        &random_bytes(rng.next(), len),
    );
    new + len as u64
}

/// A server with one machine and its home, and what each snapshot must
/// restore to.
struct Fleet {
    tmp: tempfile::TempDir,
    server: Server,
    credential: String,
    src: PathBuf,
    /// snapshot id -> `describe_tree` of the source when it was taken.
    expected: BTreeMap<String, BTreeMap<String, String>>,
    restores: usize,
}

impl Fleet {
    fn new(rng: &mut Rng) -> Fleet {
        let tmp = tempfile::tempdir().unwrap();
        let server = Server::start(tmp.path());
        let credential = server.add_machine("laptop", false);
        let src = tmp.path().join("src");
        make_home(&src, rng);
        Fleet {
            tmp,
            server,
            credential,
            src,
            expected: BTreeMap::new(),
            restores: 0,
        }
    }

    fn client(&self) -> Client {
        self.server.client(&self.credential, self.tmp.path())
    }

    fn store(&self) -> &Homesync {
        &self.server.store
    }

    /// `backup SRC` to completion; records what the snapshot must restore to.
    fn backup(&mut self) -> Run {
        let run = self.client().backup(&self.src);
        self.expected
            .insert(run.snapshot_id(), describe_tree(&self.src));
        run
    }

    fn backup_command(&self) -> Command {
        self.client()
            .command(&[OsStr::new("backup"), self.src.as_os_str()])
    }

    fn restore_command(&self, target: &Path) -> Command {
        self.client().command(&[
            OsStr::new("restore"),
            OsStr::new("latest"),
            OsStr::new("--target"),
            target.as_os_str(),
        ])
    }

    /// SIGKILLs the server and starts it again on the same store.
    fn crash_server(&mut self) {
        self.server.child.kill().unwrap();
        self.server.child.wait().unwrap();
        self.server = Server::reopen(self.tmp.path());
    }

    /// What must hold after any crash: the store passes `check
    /// --read-data`, and every snapshot it lists restores exactly as its
    /// source was. A snapshot nobody was told about (committed just
    /// before the kill, its answer lost) is one of the source as it is
    /// now, when `current` is given: the source does not change while a
    /// backup runs.
    fn assert_store_whole(&mut self, current: Option<&BTreeMap<String, String>>) {
        self.store()
            .run(&[OsStr::new("check"), OsStr::new("--read-data")])
            .expect_ok();
        let run = self.store().run(&[OsStr::new("snapshots")]);
        run.expect_ok();
        let ids: Vec<String> = run
            .messages("snapshot")
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        for id in ids {
            let want = match (self.expected.get(&id), current) {
                (Some(w), _) => w.clone(),
                (None, Some(c)) => {
                    self.expected.insert(id.clone(), c.clone());
                    c.clone()
                }
                (None, None) => panic!("snapshot {id} was never committed by a backup"),
            };
            self.restores += 1;
            let target = self.tmp.path().join(format!("verify{}", self.restores));
            self.store().restore(&id, &target, &[]).expect_ok();
            assert_same_map(&format!("snapshot {id}"), &want, &describe_tree(&target));
            std::fs::remove_dir_all(&target).unwrap();
        }
    }
}

/// Bytes of the regular files in `target` that are already as `want`
/// has them (complete: a restore renames a file into place only once its
/// contents and metadata are set), and their number.
fn already_restored(target: &Path, want: &BTreeMap<String, String>) -> (u64, u64) {
    if !target.exists() {
        return (0, 0);
    }
    let mut bytes = 0;
    let mut files = 0;
    for (rel, md) in walk(target) {
        let key = format!("{:?}", rel.as_os_str());
        if md.is_file() && want.get(&key) == Some(&describe_entry(&target.join(&rel), &md)) {
            bytes += md.len();
            files += 1;
        }
    }
    (bytes, files)
}

/// Runs an interrupted restore again and asserts it completes, gives the
/// snapshot back exactly, and fetches none of the files already in place;
/// returns how many bytes were.
fn resume_restore(
    fleet: &Fleet,
    target: &Path,
    want: &BTreeMap<String, String>,
    total: u64,
) -> u64 {
    let (present, present_files) = already_restored(target, want);
    let run = fleet.client().restore_latest(target);
    assert_same_map("resumed restore", want, &describe_tree(target));
    let restored = run.summary_u64("bytes_restored");
    assert!(
        restored <= total - present,
        "{present} of {total} bytes were in place, yet {restored} were restored\n{}",
        run.describe()
    );
    assert!(
        run.summary_u64("files_skipped") >= present_files,
        "{present_files} files were in place\n{}",
        run.describe()
    );
    present
}

/// Every file-state cache under `cache_home` passes SQLite's own
/// integrity check: a kill at any point of a backup leaves a cache the
/// next one can use as it is (WAL, every update one transaction), not one
/// it has to throw away.
fn assert_caches_intact(cache_home: &Path) {
    let caches: Vec<PathBuf> = files_under(cache_home)
        .into_iter()
        .filter(|p| p.file_name() == Some(OsStr::new("files.sqlite")))
        .collect();
    assert!(!caches.is_empty(), "no file-state cache in {cache_home:?}");
    for cache in caches {
        let db = rusqlite::Connection::open(&cache).unwrap();
        let verdict: String = db
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(verdict, "ok", "{cache:?}");
    }
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

fn report(name: &str, trials: usize, interrupted: usize, partial: usize) {
    eprintln!(
        "{name}: {trials} trials, {interrupted} killed mid-operation, \
         {partial} with part of the work done (stored, restored) before the kill"
    );
}

/// A fleet with two snapshots, and how long the second backup (of a
/// day's changes, as each trial makes) took.
fn backup_fleet(scenario: &str) -> (Rng, Fleet, Duration) {
    let mut rng = scenario_rng(scenario);
    let mut fleet = Fleet::new(&mut rng);
    fleet.backup();
    change_home(&fleet.src, &mut rng, 0);
    let (_, whole) = timed(|| fleet.backup());
    (rng, fleet, whole)
}

#[test]
fn server_killed_during_backups_loses_nothing_committed_and_the_rerun_sends_only_the_rest() {
    let (mut rng, mut fleet, mut whole) = backup_fleet("server-kill-backup");
    let (mut interrupted, mut partial) = (0, 0);
    for trial in 1..=trials() {
        let new = change_home(&fleet.src, &mut rng, trial);
        let now = describe_tree(&fleet.src);
        let before = stored_bytes(&fleet.store().repo);
        let mut backup = Running::spawn(fleet.backup_command());
        backup.run_to_random_point(&mut rng, &mut whole);
        fleet.crash_server();
        // A client whose server vanished waits out the QUIC idle timeout
        // (30 s) before it fails; the store sees nothing of that wait, so
        // the client goes too, unless it had finished.
        let committed = match &backup.kill() {
            Some((0, out, _)) => {
                let id = snapshot_id_of(out);
                fleet.expected.insert(id, now.clone());
                true
            }
            _ => false,
        };
        let stored = stored_bytes(&fleet.store().repo) - before;
        fleet.assert_store_whole(Some(&now));

        let rerun = fleet.backup();
        let sent = rerun.summary_u64("blob_bytes_sent");
        if !committed {
            interrupted += 1;
        }
        if stored > 0 && !committed {
            partial += 1;
            assert!(
                sent + stored <= new + TREE_SLACK,
                "trial {trial}: {stored} bytes were stored before the kill, \
                 {new} were new, yet the rerun sent {sent}\n{}",
                rerun.describe()
            );
        } else {
            assert!(sent <= new + TREE_SLACK, "{}", rerun.describe());
        }
    }
    fleet.assert_store_whole(None);
    report(
        "server killed during backup",
        trials(),
        interrupted,
        partial,
    );
}

/// Restores of one snapshot, each killed at a random point (the server
/// with it when `crash_server`), then run again to the end.
fn restores_killed(scenario: &str, what: &str, crash_server: bool) {
    let mut rng = scenario_rng(scenario);
    let mut fleet = Fleet::new(&mut rng);
    fleet.backup();
    let want = describe_tree(&fleet.src);
    let first = fleet.tmp.path().join("restore0");
    let (run, mut whole) = timed(|| fleet.client().restore_latest(&first));
    let total = run.summary_u64("bytes_restored");
    let (mut interrupted, mut partial) = (0, 0);
    for trial in 1..=trials() {
        let target = fleet.tmp.path().join(format!("restore{trial}"));
        let mut restore = Running::spawn(fleet.restore_command(&target));
        restore.run_to_random_point(&mut rng, &mut whole);
        if crash_server {
            fleet.crash_server();
        }
        if restore.kill().is_none() {
            interrupted += 1;
        }
        if crash_server {
            fleet.assert_store_whole(None);
        }
        if resume_restore(&fleet, &target, &want, total) > 0 {
            partial += 1;
        }
        std::fs::remove_dir_all(&target).unwrap();
    }
    fleet.assert_store_whole(None);
    report(what, trials(), interrupted, partial);
}

#[test]
fn server_killed_during_restores_keeps_the_store_whole_and_the_rerun_fetches_only_the_rest() {
    restores_killed("server-kill-restore", "server killed during restore", true);
}

/// `homesync --repo STORE admin run-job KIND --server-config CONFIG`, the
/// same job the server runs, in a process of its own beside the server.
fn job_command(fleet: &Fleet, kind: &str, config: &Path) -> Command {
    let mut cmd = Command::new(bin());
    cmd.arg("--json")
        .arg("--repo")
        .arg(&fleet.store().repo)
        .args(["admin", "run-job", kind, "--server-config"])
        .arg(config)
        .env("XDG_CACHE_HOME", fleet.tmp.path().join("cache"))
        .stdin(Stdio::null());
    cmd
}

/// Runs job `kind` once to completion and returns how long it took.
fn run_job(fleet: &Fleet, kind: &str, config: &Path) -> Duration {
    let (finished, took) = timed(|| Running::spawn(job_command(fleet, kind, config)).wait());
    let (code, out, err) = finished;
    assert_eq!(code, Some(0), "{kind} job failed:\n{out}\n{err}");
    took
}

#[test]
fn retention_and_gc_killed_anywhere_leave_every_kept_snapshot_whole_and_finish_next_time() {
    let mut rng = scenario_rng("job-kill");
    let mut fleet = Fleet::new(&mut rng);
    const KEEP: usize = 3;
    let config = fleet.tmp.path().join("server.toml");
    std::fs::write(
        &config,
        format!("store = \"store\"\n[retention]\nkeep_last = {KEEP}\n"),
    )
    .unwrap();
    // Each round leaves garbage: two new snapshots, whose predecessors
    // retention removes, of a home whose files were rewritten.
    let round = |fleet: &mut Fleet, rng: &mut Rng, n: usize| {
        for k in 0..2 {
            change_home(&fleet.src, rng, 2 * n + k);
            fleet.backup();
        }
    };
    round(&mut fleet, &mut rng, 0);
    let mut retention = run_job(&fleet, "retention", &config);
    round(&mut fleet, &mut rng, 1);
    run_job(&fleet, "retention", &config);
    let mut gc = run_job(&fleet, "gc", &config);
    let mut interrupted = BTreeMap::from([("retention", 0), ("gc", 0)]);
    for trial in 1..=trials() {
        round(&mut fleet, &mut rng, trial + 1);
        for (kind, whole) in [("retention", &mut retention), ("gc", &mut gc)] {
            let mut job = Running::spawn(job_command(&fleet, kind, &config));
            job.run_to_random_point(&mut rng, whole);
            match job.kill() {
                None => *interrupted.get_mut(kind).unwrap() += 1,
                Some((code, out, err)) => {
                    assert_eq!(code, 0, "trial {trial}: {kind} failed:\n{out}\n{err}")
                }
            }
            fleet.assert_store_whole(None);
            // The next run finishes the job.
            run_job(&fleet, kind, &config);
        }
        let left = fleet.store().run(&[OsStr::new("snapshots")]);
        assert_eq!(left.messages("snapshot").len(), KEEP, "{}", left.describe());
        // Nothing left for a collection after the finishing run, but
        // what that run condemned (swept by this one, no session open).
        let again = fleet.store().run(&[OsStr::new("gc")]);
        again.expect_ok();
        assert_eq!(
            again.messages("gc")[0]["condemned"],
            0,
            "{}",
            again.describe()
        );
    }
    fleet.assert_store_whole(None);
    for (kind, n) in interrupted {
        report(&format!("{kind} killed"), trials(), n, 0);
    }
}

#[test]
fn client_killed_during_backup_keeps_its_cache_and_the_next_backup_is_whole() {
    let (mut rng, mut fleet, mut whole) = backup_fleet("client-kill-backup");
    let (mut interrupted, mut partial) = (0, 0);
    for trial in 1..=trials() {
        let new = change_home(&fleet.src, &mut rng, 2 * trial);
        let then = describe_tree(&fleet.src);
        let before = stored_bytes(&fleet.store().repo);
        let mut backup = Running::spawn(fleet.backup_command());
        backup.run_to_random_point(&mut rng, &mut whole);
        let committed = match backup.kill() {
            None => {
                interrupted += 1;
                false
            }
            Some((code, out, err)) => {
                assert_eq!(code, 0, "trial {trial}: the backup failed:\n{out}\n{err}");
                fleet.expected.insert(snapshot_id_of(&out), then.clone());
                true
            }
        };
        let stored = stored_bytes(&fleet.store().repo) - before;
        assert_caches_intact(&fleet.tmp.path().join("cache"));
        // The server may still hold the killed client's session until
        // its idle timeout; the snapshot it may have committed is `then`.
        fleet.assert_store_whole(Some(&then));
        // Work goes on while the backup is down.
        let more = change_home(&fleet.src, &mut rng, 2 * trial + 1);
        let rerun = fleet.backup();
        let sent = rerun.summary_u64("blob_bytes_sent");
        if stored > 0 && !committed {
            partial += 1;
            assert!(
                sent + stored <= new + more + TREE_SLACK,
                "trial {trial}: {stored} bytes were stored before the kill, \
                 {} were new, yet the rerun sent {sent}\n{}",
                new + more,
                rerun.describe()
            );
        }
        let target = fleet.tmp.path().join(format!("latest{trial}"));
        fleet.client().restore_latest(&target);
        assert_same_map(
            "the backup after the kill",
            &describe_tree(&fleet.src),
            &describe_tree(&target),
        );
        std::fs::remove_dir_all(&target).unwrap();
    }
    fleet.assert_store_whole(None);
    report(
        "client killed during backup",
        trials(),
        interrupted,
        partial,
    );
}

#[test]
fn client_killed_during_restore_resumes_without_fetching_what_is_in_place() {
    restores_killed("client-kill-restore", "client killed during restore", false);
}
