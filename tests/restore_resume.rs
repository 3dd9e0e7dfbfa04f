//! Restore onto a replacement machine: ordered for use (the ready point
//! comes before large old files), resumable and idempotent, and stopped
//! cleanly before filling the disk. Over QUIC, against the real server.

mod common;

use common::server::*;
use common::*;
use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

/// 30 small files, one large recent file, two large old ones.
fn make_home(src: &Path) {
    for i in 0..30 {
        write_file(
            &src.join(format!(".config/app{}/settings-{i}", i % 3)),
            format!("setting {i}\n").repeat(50 + i).as_bytes(),
        );
    }
    write_file(&src.join("Documents/recent.odt"), &random_bytes(7, 2 << 20));
    for (i, name) in ["Videos/2019-holiday.mp4", "Videos/2020-wedding.mp4"]
        .iter()
        .enumerate()
    {
        let p = src.join(name);
        write_file(&p, &random_bytes(100 + i as u64, 3 << 20));
        set_mtime(&p, "2020-06-01 12:00:00");
    }
}

fn restore(client: &Client, target: &Path, ready: &Path, env: &[(&str, &str)]) -> Run {
    client.run_with_env(
        &[
            OsStr::new("restore"),
            OsStr::new("latest"),
            OsStr::new("--target"),
            target.as_os_str(),
            OsStr::new("--ready-file"),
            ready.as_os_str(),
        ],
        env,
    )
}

/// Bytes the server sent in its most recent session report.
fn last_sent(server: &Server, n: usize) -> u64 {
    server.sessions(n)[n - 1]["bytes_sent"].as_u64().unwrap()
}

#[test]
fn large_old_files_come_after_the_ready_point_and_a_second_run_fetches_only_what_is_missing() {
    ready_point_and_resume(&[]);
}

/// The same, the plan made three entries at a time: the home goes in
/// windows of subtrees, as one larger than PLAN_WINDOW does, and resumes
/// the same way.
#[test]
fn a_restore_in_windows_resumes_and_a_second_run_fetches_only_what_is_missing() {
    ready_point_and_resume(&[("HOMESYNC_RESTORE_WINDOW", "3")]);
}

/// Restores a home (with `env` set for each run), checks the ready point,
/// loses a video and a setting, restores again (only those come), and a
/// third time (nothing comes).
fn ready_point_and_resume(env: &[(&str, &str)]) {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let client = server.client(&server.add_machine("laptop", false), tmp.path());
    let src = tmp.path().join("src");
    make_home(&src);
    client.backup(&src);
    let target = tmp.path().join("home");
    let ready = tmp.path().join("ready");

    let first = restore(&client, &target, &ready, env);
    first.expect_ok();
    let r = first.messages("ready");
    assert_eq!(r.len(), 1, "{}", first.describe());
    // The first phase is the login files (the settings under .config): the
    // recent document and the two large old videos come after the ready
    // point.
    assert_eq!(r[0]["files"], 30, "{}", r[0]);
    assert_eq!(r[0]["files_left"], 3, "{}", r[0]);
    assert_eq!(r[0]["bytes_left"], 8 << 20, "{}", r[0]);
    assert!(std::fs::read_to_string(&ready).unwrap().contains("3 files"));
    assert_same_listing("first restore", &mtree(&src), &mtree(&target));
    let full = last_sent(&server, 2);

    // Lose a video and a setting, and leave a temporary file behind as an
    // interrupted run would.
    std::fs::remove_file(target.join("Videos/2020-wedding.mp4")).unwrap();
    std::fs::remove_file(target.join(".config/app1/settings-4")).unwrap();
    write_file(&target.join("Videos/.homesync-999-1.tmp"), b"half a file");
    let second = restore(&client, &target, &ready, env);
    second.expect_ok();
    assert_eq!(
        second.summary_u64("files_skipped"),
        31,
        "{}",
        second.describe()
    );
    assert_eq!(
        second.summary_u64("bytes_restored"),
        (3 << 20) + "setting 4\n".len() as u64 * (50 + 4),
        "{}",
        second.describe()
    );
    let resumed = last_sent(&server, 3);
    assert!(
        resumed < full * 6 / 10,
        "the second restore received {resumed} bytes, the first {full}"
    );
    assert!(!target.join("Videos/.homesync-999-1.tmp").exists());
    assert_same_listing("second restore", &mtree(&src), &mtree(&target));

    // A third run changes nothing.
    let third = restore(&client, &target, &ready, env);
    third.expect_ok();
    assert_eq!(
        third.summary_u64("bytes_restored"),
        0,
        "{}",
        third.describe()
    );
    assert_same_listing("third restore", &mtree(&src), &mtree(&target));
}

#[test]
fn a_restore_killed_after_the_ready_point_resumes_from_there() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let client = server.client(&server.add_machine("laptop", false), tmp.path());
    let src = tmp.path().join("src");
    make_home(&src);
    client.backup(&src);
    let target = tmp.path().join("home");
    let ready = tmp.path().join("ready");

    let mut child = client
        .command(&[
            OsStr::new("restore"),
            OsStr::new("latest"),
            OsStr::new("--target"),
            target.as_os_str(),
            OsStr::new("--ready-file"),
            ready.as_os_str(),
        ])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready.exists(), "the ready file never appeared");

    let resumed = restore(&client, &target, &tmp.path().join("ready2"), &[]);
    resumed.expect_ok();
    // Everything of the first phase (the 30 settings) was in place when
    // the file appeared.
    assert!(
        resumed.summary_u64("files_skipped") >= 30,
        "{}",
        resumed.describe()
    );
    assert_same_listing("resumed restore", &mtree(&src), &mtree(&target));
}

#[test]
fn a_target_without_room_stops_before_writing_and_resumes_once_there_is_room() {
    let tmp = tempfile::tempdir().unwrap();
    let hs = Homesync::new(tmp.path().join("store"));
    hs.init();
    let src = tmp.path().join("src");
    make_home(&src);
    hs.backup(&src, &[]);
    let small = SmallFs::mount("4m");
    let target = small.path().join("home");
    let run = hs.restore("latest", &target, &[]);
    assert_ne!(run.code, 0, "{}", run.describe());
    assert!(
        run.stderr.contains("not enough space") || run.stdout.contains("not enough space"),
        "{}",
        run.describe()
    );
    // Nothing but directories was written.
    assert!(
        walk(&target).values().all(|m| m.is_dir()),
        "files were written: {:?}",
        walk(&target).keys().collect::<Vec<_>>()
    );
    // With room (a larger file system in its place), the same command works.
    drop(small);
    let roomy = SmallFs::mount("64m");
    let target = roomy.path().join("home");
    hs.restore("latest", &target, &[]).expect_ok();
    assert_same_listing("after making room", &mtree(&src), &mtree(&target));
}

#[test]
fn a_chunk_many_files_share_is_fetched_once() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let client = server.client(&server.add_machine("laptop", false), tmp.path());
    let src = tmp.path().join("src");
    let same = random_bytes(9, 1 << 20);
    for i in 0..20 {
        write_file(&src.join(format!("copies/c{i}.iso")), &same);
    }
    client.backup(&src);
    let target = tmp.path().join("home");
    client.restore_latest(&target);
    let sent = last_sent(&server, 2);
    // Twenty files of the same mebibyte: one mebibyte on the wire, not 20.
    assert!(sent < 3 << 20, "the server sent {sent} bytes");
    assert_same_listing("copies", &mtree(&src), &mtree(&target));
}

/// A local user for the length of a test (removed on drop).
struct User(&'static str);

impl User {
    fn create(name: &'static str, uid: u32) -> User {
        let _ = std::process::Command::new("userdel").arg(name).status();
        let ok = std::process::Command::new("useradd")
            .args([
                "--no-create-home",
                "--uid",
                &uid.to_string(),
                "--user-group",
                name,
            ])
            .status()
            .expect("run useradd");
        assert!(ok.success(), "useradd {name} (the tests run as root)");
        User(name)
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = std::process::Command::new("userdel").arg(self.0).status();
    }
}

#[test]
fn owners_map_by_name_onto_the_new_machines_ids() {
    use std::os::unix::fs::MetadataExt;
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let client = server.client(&server.add_machine("laptop", false), tmp.path());
    let src = tmp.path().join("src");
    write_file(&src.join("alice/notes.txt"), b"mine\n");
    let old = User::create("hs-test-alice", 47101);
    sh(
        "chown",
        &[
            OsStr::new("-R"),
            OsStr::new("hs-test-alice:hs-test-alice"),
            src.join("alice").as_os_str(),
        ],
        None,
    );
    client.backup(&src);
    // The replacement machine knows the same user under another uid.
    drop(old);
    let _new = User::create("hs-test-alice", 47202);
    let target = tmp.path().join("home");
    client.restore_latest(&target);
    let m = std::fs::metadata(target.join("alice/notes.txt")).unwrap();
    assert_eq!((m.uid(), m.gid()), (47202, 47202));
    // --numeric-ids keeps the recorded numbers.
    let numeric = tmp.path().join("numeric");
    client
        .run(&[
            OsStr::new("restore"),
            OsStr::new("latest"),
            OsStr::new("--numeric-ids"),
            OsStr::new("--target"),
            numeric.as_os_str(),
        ])
        .expect_ok();
    let m = std::fs::metadata(numeric.join("alice/notes.txt")).unwrap();
    assert_eq!((m.uid(), m.gid()), (47101, 47101));
}
