//! The background daemon against a real `homesync serve` on 127.0.0.1:
//! changes reach the server as incremental snapshots within the configured
//! delay, new directories are watched, an inotify overflow costs a full
//! scan and no change, a server that goes away gets the changes once it is
//! back, pause holds snapshots, and the daemon runs on a read-only root.

mod common;

use common::server::Server;
use common::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Daemon starts are serialised: the overflow test lowers the kernel's
/// event queue size, which a daemon started meanwhile would inherit.
static START: Mutex<()> = Mutex::new(());

const MAX_DELAY: Duration = Duration::from_secs(2);
/// How long a change may take to reach a snapshot: the maximum delay plus
/// the snapshot itself on a busy 2-core CI machine.
const ARRIVAL: Duration = Duration::from_secs(45);

struct Daemon {
    child: Child,
    state: PathBuf,
    config: PathBuf,
    log: PathBuf,
    client: common::server::Client,
}

impl Daemon {
    fn config_text(server: &Server, credential: &str, home: &Path, state: &Path) -> String {
        format!(
            "server = {:?}\nfingerprint = {:?}\ncredential = {:?}\npaths = [{:?}]\nstate_dir = {:?}\n\
             [daemon]\nquiet_period = \"500ms\"\nmax_delay = \"2s\"\nmax_retry_delay = \"1s\"\nmin_battery_percent = 0\n",
            server.addr,
            server.fingerprint,
            credential,
            home.display().to_string(),
            state.display().to_string()
        )
    }

    /// Starts a daemon with config `text` (written to `dir/client.toml`,
    /// state in `dir/state`), through `sh -c WRAP` if given (which must
    /// end by exec'ing the daemon). Does not wait for anything.
    fn launch(
        server: &Server,
        credential: &str,
        home: &Path,
        dir: &Path,
        text: &str,
        wrap: Option<String>,
    ) -> Daemon {
        let state = dir.join("state");
        let config = dir.join("client.toml");
        std::fs::write(&config, text).unwrap();
        let log = dir.join("daemon.log");
        let mut cmd = match wrap {
            None => {
                let mut c = Command::new(bin());
                c.arg("daemon");
                c
            }
            Some(script) => {
                let mut c = Command::new("unshare");
                c.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
                c
            }
        };
        let child = cmd
            .env("HOMESYNC_CONFIG", &config)
            .env("HOMESYNC_LOG", "info")
            .env_remove("HOMESYNC_REPO")
            .env_remove("HOMESYNC_STATE_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start homesync daemon");
        Daemon {
            child,
            state,
            config,
            log,
            client: server.client(credential, home),
        }
    }

    /// A daemon with the test settings, once its first (full) snapshot is
    /// done.
    fn start(server: &Server, credential: &str, home: &Path, dir: &Path) -> Daemon {
        let text = Self::config_text(server, credential, home, &dir.join("state"));
        Self::start_with(server, credential, home, dir, &text, None)
    }

    fn start_with(
        server: &Server,
        credential: &str,
        home: &Path,
        dir: &Path,
        text: &str,
        wrap: Option<String>,
    ) -> Daemon {
        let d = {
            let _g = START.lock().unwrap_or_else(|e| e.into_inner());
            Self::launch(server, credential, home, dir, text, wrap)
        };
        d.wait_until("the first (full) snapshot", |st| {
            st["snapshots"].as_u64() >= Some(1) && st["activity"] == "idle"
        });
        d
    }

    fn status(&self) -> Option<Value> {
        let out = Command::new(bin())
            .args(["--json", "status"])
            .env("HOMESYNC_CONFIG", &self.config)
            .env_remove("HOMESYNC_STATE_DIR")
            .output()
            .unwrap();
        // With --json an error is a JSON message too: only a status counts.
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .filter(|v| v.get("running").is_some())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `ok(status)` holds; returns how long that took.
    fn wait_until(&self, what: &str, ok: impl Fn(&Value) -> bool) -> Duration {
        let start = Instant::now();
        loop {
            if let Some(st) = self.status()
                && st["running"] == true
                && ok(&st)
            {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < ARRIVAL,
                "waited {ARRIVAL:?} for {what}; status {:?}\ndaemon log:\n{}",
                self.status(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn snapshots(&self) -> u64 {
        self.status().expect("daemon status")["snapshots"]
            .as_u64()
            .unwrap()
    }

    /// Waits for a snapshot taken after now that leaves nothing pending.
    fn wait_for_snapshot(&self, what: &str) -> (Duration, Value) {
        let before = self.snapshots();
        let took = self.wait_until(what, |st| {
            st["snapshots"].as_u64() > Some(before)
                && st["pending_dirs"] == 0
                && st["activity"] == "idle"
        });
        (took, self.status().unwrap()["last_snapshot"].clone())
    }

    fn control(&self, args: &[&str]) {
        let out = Command::new(bin())
            .args(args)
            .env("HOMESYNC_CONFIG", &self.config)
            .env_remove("HOMESYNC_STATE_DIR")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    }

    /// The latest snapshot on the server, restored into `target` and
    /// compared with `home` entry by entry.
    fn assert_server_has(&self, home: &Path, target: &Path) {
        let _ = std::fs::remove_dir_all(target);
        self.client.restore_latest(target);
        assert_eq!(
            describe_tree(target),
            describe_tree(home),
            "log:\n{}",
            self.log()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary directory with a real server in it, a machine credential,
/// and a seeded home.
fn setup() -> (tempfile::TempDir, Server, String, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"));
    let cred = server.add_machine("laptop", false);
    let home = dir.path().join("home");
    seed_home(&home);
    (dir, server, cred, home)
}

fn seed_home(home: &Path) {
    for (p, data) in [
        ("Documents/report.txt", &b"quarterly figures"[..]),
        ("Documents/old/letter.txt", b"dear sir"),
        (".config/app/settings.ini", b"[a]\nb=1\n"),
        ("Music/track.ogg", &[7u8; 100_000]),
    ] {
        write_file(&home.join(p), data);
    }
}

#[test]
fn created_modified_renamed_and_deleted_files_arrive_in_incremental_snapshots() {
    let (dir, server, cred, home) = setup();
    // Files changed within 2 s (whole seconds) of a backup's start are not
    // vouched for by the cache (a change in the same timestamp tick would
    // go unseen) and are read again; let the seed age so the count below
    // is exact.
    std::thread::sleep(Duration::from_millis(3100));
    let d = Daemon::start(&server, &cred, &home, dir.path());
    let target = dir.path().join("restored");
    d.assert_server_has(&home, &target);

    write_file(&home.join("Documents/new.txt"), b"created after start");
    let (took, last) = d.wait_for_snapshot("a created file");
    assert!(took < MAX_DELAY + ARRIVAL, "{took:?}");
    assert_eq!(last["incremental"], true, "{last}");
    assert!(
        last["dirs_reused"].as_u64() >= Some(2),
        "untouched trees reused: {last}"
    );
    assert_eq!(last["files_read"], 1, "only the new file is read: {last}");
    d.assert_server_has(&home, &target);

    std::fs::write(
        home.join("Documents/report.txt"),
        b"quarterly figures, revised",
    )
    .unwrap();
    d.wait_for_snapshot("a modified file");
    d.assert_server_has(&home, &target);

    std::fs::rename(
        home.join("Documents/old/letter.txt"),
        home.join(".config/letter-moved.txt"),
    )
    .unwrap();
    d.wait_for_snapshot("a renamed file");
    d.assert_server_has(&home, &target);

    std::fs::remove_file(home.join("Music/track.ogg")).unwrap();
    let (_, last) = d.wait_for_snapshot("a deleted file");
    assert_eq!(last["files_read"], 0, "{last}");
    d.assert_server_has(&home, &target);

    // Metadata alone: a file's mode, a directory's mode, a new symlink.
    std::fs::set_permissions(
        home.join(".config/app/settings.ini"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::set_permissions(home.join("Music"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("../Music", home.join(".config/music-link")).unwrap();
    let (_, last) = d.wait_for_snapshot("metadata changes");
    // The mode change moved the file's ctime, so the cache no longer
    // vouches for it: it is read once more, and nothing else is.
    assert_eq!(last["files_read"], 1, "{last}");
    d.assert_server_has(&home, &target);

    // A renamed directory: its subtree moves with its watches.
    std::fs::rename(home.join("Documents"), home.join("Docs")).unwrap();
    d.wait_for_snapshot("a renamed directory");
    write_file(&home.join("Docs/old/after-move.txt"), b"in the moved tree");
    d.wait_for_snapshot("a change inside the renamed directory");
    d.assert_server_has(&home, &target);
}

#[test]
fn a_directory_tree_created_after_start_is_watched() {
    let (dir, server, cred, home) = setup();
    let d = Daemon::start(&server, &cred, &home, dir.path());
    let target = dir.path().join("restored");

    std::fs::create_dir_all(home.join("Projects/x/y/z")).unwrap();
    write_file(&home.join("Projects/x/y/z/deep.txt"), b"one");
    d.wait_for_snapshot("a new tree");
    d.assert_server_has(&home, &target);
    // Only a watch on the new deepest directory can report this.
    std::fs::write(home.join("Projects/x/y/z/deep.txt"), b"two, longer").unwrap();
    let (_, last) = d.wait_for_snapshot("an edit deep in the new tree");
    assert_eq!(last["incremental"], true, "{last}");
    d.assert_server_has(&home, &target);
    let st = d.status().unwrap();
    assert!(st["watches"].as_u64() >= Some(10), "{st}");
}

#[test]
fn an_event_queue_overflow_rescans_everything_and_loses_no_change() {
    require_root();
    let (dir, server, cred, home) = setup();
    let knob = Path::new("/proc/sys/fs/inotify/max_queued_events");
    let d = {
        // The queue size is fixed when the daemon creates its inotify
        // instance; other daemon starts wait for START meanwhile.
        let _g = START.lock().unwrap_or_else(|e| e.into_inner());
        let old = std::fs::read_to_string(knob).unwrap();
        std::fs::write(knob, "16").unwrap();
        let text = Daemon::config_text(&server, &cred, &home, &dir.path().join("state"));
        let d = Daemon::launch(&server, &cred, &home, dir.path(), &text, None);
        // Give it time to create its instance before restoring the knob.
        let deadline = Instant::now() + Duration::from_secs(20);
        while d.status().is_none_or(|st| st["running"] != true) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::fs::write(knob, old.trim()).unwrap();
        d
    };
    d.wait_until("the first snapshot", |st| {
        st["snapshots"].as_u64() >= Some(1)
    });
    d.wait_until("idle", |st| st["activity"] == "idle");
    // Far more events than a queue of 16 holds, while the daemon is
    // stopped (as if busy): the kernel drops the rest and says so.
    let pid = d.child.id().to_string();
    sh("kill", &["-STOP".as_ref(), pid.as_ref()], None);
    for i in 0..300 {
        write_file(
            &home.join(format!("Documents/burst-{i}.txt")),
            format!("file {i}").as_bytes(),
        );
    }
    sh("kill", &["-CONT".as_ref(), pid.as_ref()], None);
    let (_, last) = d.wait_for_snapshot("the burst");
    let st = d.status().unwrap();
    assert!(
        st["overflows"].as_u64() >= Some(1),
        "no overflow seen: {st}"
    );
    assert!(
        d.log().contains("overflowed"),
        "the overflow is logged:\n{}",
        d.log()
    );
    assert!(st["full_scans"].as_u64() >= Some(2), "{st} {last}");
    d.assert_server_has(&home, &dir.path().join("restored"));
}

#[test]
fn changes_made_while_the_server_is_away_arrive_when_it_returns() {
    let (dir, mut server, cred, home) = setup();
    let d = Daemon::start(&server, &cred, &home, dir.path());

    server.child.kill().unwrap();
    server.child.wait().unwrap();
    write_file(&home.join("Documents/offline.txt"), b"written on a train");
    d.wait_until("a failed attempt", |st| !st["last_error"].is_null());
    let st = d.status().unwrap();
    assert!(st["pending_dirs"].as_u64() >= Some(1), "{st}");
    write_file(&home.join("Documents/offline-2.txt"), b"and another");

    // The server comes back on the same address.
    server.child = Command::new(bin())
        .args(["--json", "--repo"])
        .arg(&server.store.repo)
        .args(["serve", "--listen", &server.addr])
        .env("HOMESYNC_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    d.wait_for_snapshot("the changes after the server returned");
    d.assert_server_has(&home, &dir.path().join("restored"));
}

#[test]
fn pause_holds_snapshots_and_resume_sends_them() {
    let (dir, server, cred, home) = setup();
    let d = Daemon::start(&server, &cred, &home, dir.path());
    let before = d.snapshots();

    d.control(&["pause"]);
    write_file(&home.join("Documents/while-paused.txt"), b"held back");
    std::thread::sleep(MAX_DELAY * 3);
    let st = d.status().unwrap();
    assert_eq!(st["paused"], true, "{st}");
    assert_eq!(
        st["snapshots"].as_u64(),
        Some(before),
        "no snapshot while paused: {st}"
    );
    assert!(st["pending_dirs"].as_u64() >= Some(1), "{st}");
    // The pause is saved: a restarted daemon would still hold.
    let saved: Value =
        serde_json::from_slice(&std::fs::read(d.state.join("daemon.json")).unwrap()).unwrap();
    assert_eq!(saved["paused"], true, "{saved}");

    d.control(&["resume"]);
    d.wait_for_snapshot("the held change after resume");
    d.assert_server_has(&home, &dir.path().join("restored"));

    // A timed pause ends by itself.
    d.control(&["pause", "1s"]);
    write_file(&home.join("Documents/after-timed-pause.txt"), b"x");
    d.wait_for_snapshot("the change after a timed pause");
}

#[test]
fn the_daemon_writes_nothing_outside_its_state_directory_on_a_read_only_root() {
    require_root();
    require_tool("unshare");
    let (dir, server, cred, home) = setup();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    // In a private mount namespace: the home and the state directory stay
    // writable (bind mounts of themselves), then the root and every other
    // mount become read-only.
    let q = |p: &Path| shell_quote(p.as_os_str());
    let script = format!(
        "set -e; mount --bind {h} {h}; mount --bind {s} {s}; \
         findmnt -rn -o TARGET | while read -r m; do \
           case \"$m\" in {h}|{s}|/proc|/proc/*|/sys|/sys/*|/dev|/dev/*) ;; *) mount -o remount,bind,ro \"$m\" 2>/dev/null || true ;; esac; \
         done; \
         if touch {probe} 2>/dev/null; then echo 'root still writable' >&2; exit 97; fi; \
         exec {bin} daemon",
        h = q(&home),
        s = q(&state),
        bin = shell_quote(bin().as_os_str()),
        probe = q(&dir.path().join("probe")),
    );
    let text = Daemon::config_text(&server, &cred, &home, &state);
    let d = Daemon::start_with(&server, &cred, &home, dir.path(), &text, Some(script));
    write_file(&home.join("Documents/on-stateless.txt"), b"read-only root");
    d.wait_for_snapshot("a change on a read-only root");
    d.assert_server_has(&home, &dir.path().join("restored"));
    let log = d.log();
    assert!(!log.contains("Read-only file system"), "{log}");
    assert!(
        state.join("cache").is_dir(),
        "the cache lives in the state directory"
    );
    assert!(state.join("daemon.json").is_file());
    assert!(!dir.path().join("probe").exists());
}

#[test]
fn hard_links_stay_links_across_incremental_snapshots() {
    let (dir, server, cred, home) = setup();
    write_file(&home.join("a/shared.bin"), &random_bytes(1, 50_000));
    std::fs::create_dir_all(home.join("b")).unwrap();
    std::fs::hard_link(home.join("a/shared.bin"), home.join("b/shared-too.bin")).unwrap();
    let d = Daemon::start(&server, &cred, &home, dir.path());
    let target = dir.path().join("restored");
    d.assert_server_has(&home, &target);

    // A change beside the second name only: the link is still recorded.
    write_file(&home.join("b/other.txt"), b"beside the link");
    d.wait_for_snapshot("a change beside a link");
    d.assert_server_has(&home, &target);

    // A new link, from a changed directory to a file in an untouched one.
    std::fs::hard_link(home.join("Music/track.ogg"), home.join("b/track-link.ogg")).unwrap();
    d.wait_for_snapshot("a new link to an untouched directory");
    d.assert_server_has(&home, &target);

    // The first name goes away: the other name carries the contents.
    std::fs::remove_file(home.join("a/shared.bin")).unwrap();
    d.wait_for_snapshot("the first name removed");
    d.assert_server_has(&home, &target);
}

#[test]
fn on_a_low_battery_snapshots_wait_until_mains_power_returns() {
    let (dir, server, cred, home) = setup();
    // A fake power_supply class: a battery at 12 %, mains offline.
    let power = dir.path().join("power");
    let supply = |name: &str, files: &[(&str, &str)]| {
        std::fs::create_dir_all(power.join(name)).unwrap();
        for (k, v) in files {
            std::fs::write(power.join(name).join(k), format!("{v}\n")).unwrap();
        }
    };
    supply(
        "BAT0",
        &[
            ("type", "Battery"),
            ("status", "Discharging"),
            ("capacity", "12"),
        ],
    );
    supply("AC", &[("type", "Mains"), ("online", "0")]);
    let text = Daemon::config_text(&server, &cred, &home, &dir.path().join("state")).replace(
        "min_battery_percent = 0\n",
        &format!(
            "min_battery_percent = 20\npower_supply_dir = {:?}\n",
            power.display().to_string()
        ),
    );
    let d = Daemon::launch(&server, &cred, &home, dir.path(), &text, None);
    // Even the first snapshot waits.
    d.wait_until("the hold", |st| st["activity"] == "holding");
    let st = d.status().unwrap();
    assert!(st["detail"].as_str().unwrap().contains("12%"), "{st}");
    assert_eq!(st["snapshots"], 0, "{st}");
    std::thread::sleep(MAX_DELAY * 2);
    assert_eq!(d.status().unwrap()["snapshots"], 0);

    supply("AC", &[("type", "Mains"), ("online", "1")]);
    d.wait_until("a snapshot on mains power", |st| {
        st["snapshots"].as_u64() >= Some(1) && st["activity"] == "idle"
    });
    d.assert_server_has(&home, &dir.path().join("restored"));
}
