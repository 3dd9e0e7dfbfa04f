//! `homesync forget` by policy, end to end: snapshots at simulated times over
//! two months are committed through the store library (a backup always
//! stamps the real clock), then the real binary plans with its policy clock
//! set by `HOMESYNC_NOW`, and forgets exactly the expected snapshots.
//!
//! Every expected set below is worked out by hand from the rules (restic's;
//! see `server/src/retention.rs`). Calendar: 2026-11-30 is a Monday, so the
//! ISO weeks are W49 = Nov 30-, W48 = Nov 23-29, W47 = Nov 16-22, W46 =
//! Nov 9-15.

mod common;

use common::server::*;
use common::*;
use homesync_protocol::{
    BlobEncoder, BlobKind, Node, NodeKind, Repository, Snapshot, Timestamp, Tree,
};
use homesync_server::retention::parse_utc;
use homesync_server::{OpenOptions, Store};
use serde_json::Value;
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::Path;

fn ts(s: &str) -> Timestamp {
    parse_utc(s).unwrap()
}

/// Commits snapshots of (machine, source, time, tags) into the store at
/// `repo`, all of one empty root directory.
fn commit(repo: &Path, snaps: &[(&str, &str, String, Vec<&str>)]) {
    let store = Store::open(repo, OpenOptions::default()).unwrap();
    let tree = Tree::default();
    let bytes = tree.encode();
    store
        .put_blob(
            tree.id().into(),
            BlobKind::Tree,
            &BlobEncoder::new(3).encode(BlobKind::Tree, &bytes),
        )
        .unwrap();
    for (machine, source, time, tags) in snaps {
        let mut root = Node::new(b"root".to_vec(), NodeKind::Dir);
        root.mode = 0o755;
        root.subtree = Some(tree.id());
        store
            .commit_snapshot(&Snapshot {
                time: ts(time),
                machine: machine.to_string(),
                source: source.as_bytes().to_vec(),
                root,
                parent: None,
                tags: tags.iter().map(|t| t.to_string()).collect(),
                stats: Default::default(),
            })
            .unwrap();
    }
}

/// "YYYY-MM-DD HH:MM:SS" for day `d` of a month.
fn at(month: &str, d: u32, hour: u32) -> String {
    format!("{month}-{d:02} {hour:02}:00:00")
}

/// The simulated fleet:
/// - laptop:/home/ann every 6 hours from 2026-10-01 00:00 to 2026-11-30
///   18:00 (244 snapshots), the one of 2026-10-15 06:00 tagged `keep`;
/// - laptop:/etc on 2026-10-02 and 2026-10-20, at 12:00;
/// - desk:/home/bob daily at 03:00 from 2026-11-01 to 2026-11-30, one more
///   on 2026-11-29 01:00, and one stamped 2027-01-15 03:00 by a wrong clock.
fn fleet() -> Vec<(&'static str, &'static str, String, Vec<&'static str>)> {
    let mut v = Vec::new();
    for (month, days) in [("2026-10", 31), ("2026-11", 30)] {
        for d in 1..=days {
            for h in [0, 6, 12, 18] {
                let t = at(month, d, h);
                let tags = if t == "2026-10-15 06:00:00" {
                    vec!["keep"]
                } else {
                    vec![]
                };
                v.push(("laptop", "/home/ann", t, tags));
            }
        }
    }
    v.push(("laptop", "/etc", at("2026-10", 2, 12), vec![]));
    v.push(("laptop", "/etc", at("2026-10", 20, 12), vec![]));
    for d in 1..=30 {
        v.push(("desk", "/home/bob", at("2026-11", d, 3), vec![]));
    }
    v.push(("desk", "/home/bob", at("2026-11", 29, 1), vec![]));
    v.push(("desk", "/home/bob", at("2027-01", 15, 3), vec![]));
    v
}

/// What `--keep-daily 7 --keep-weekly 4 --keep-monthly 3 --keep-within 2d
/// --keep-tag keep` keeps at 2026-12-01 00:00.
fn expected() -> BTreeSet<String> {
    let mut keep = BTreeSet::new();
    let mut add = |m: &str, s: &str, t: String| keep.insert(format!("{m} {s} {t}"));
    // laptop:/home/ann. Daily: the 18:00 ones of Nov 24-30. Weekly: Nov 30
    // (W49), Nov 29 (W48), Nov 22 (W47), Nov 15 (W46). Monthly: Nov 30, Oct
    // 31, and with a count left the oldest, Oct 1 00:00. Within 2d of the
    // newest (Nov 30 18:00): after Nov 28 18:00, all of Nov 29 and 30. The
    // tagged Oct 15 06:00.
    for d in 24..=30 {
        add("laptop", "/home/ann", at("2026-11", d, 18));
    }
    for d in [29, 30] {
        for h in [0, 6, 12] {
            add("laptop", "/home/ann", at("2026-11", d, h));
        }
    }
    for t in [
        at("2026-11", 22, 18),
        at("2026-11", 15, 18),
        at("2026-10", 31, 18),
        at("2026-10", 15, 6),
        at("2026-10", 1, 0),
    ] {
        add("laptop", "/home/ann", t);
    }
    // laptop:/etc is its own group: both are kept (two days of seven).
    add("laptop", "/etc", at("2026-10", 2, 12));
    add("laptop", "/etc", at("2026-10", 20, 12));
    // desk:/home/bob. The future snapshot takes a daily, weekly and monthly
    // place, as in restic. Daily: 2027-01-15 and Nov 25-30. Weekly: Jan 15,
    // Nov 30, Nov 29, Nov 22. Monthly: Jan, Nov 30, and the oldest (Nov 1).
    // Within 2d: the newest snapshot not in the future is Nov 30 03:00, so
    // Nov 29 01:00 is kept too.
    add("desk", "/home/bob", at("2027-01", 15, 3));
    for d in 25..=30 {
        add("desk", "/home/bob", at("2026-11", d, 3));
    }
    add("desk", "/home/bob", at("2026-11", 22, 3));
    add("desk", "/home/bob", at("2026-11", 1, 3));
    add("desk", "/home/bob", at("2026-11", 29, 1));
    keep
}

const POLICY: &[&str] = &[
    "forget",
    "--keep-daily",
    "7",
    "--keep-weekly",
    "4",
    "--keep-monthly",
    "3",
    "--keep-within",
    "2d",
    "--keep-tag",
    "keep",
];

fn with(extra: &[&'static str]) -> Vec<&'static OsStr> {
    POLICY.iter().chain(extra).map(|s| OsStr::new(*s)).collect()
}

/// "machine source time" of each `forget` message with this action.
fn decided(run: &Run, action: &str) -> BTreeSet<String> {
    run.messages("forget")
        .iter()
        .filter(|m| m["action"] == action)
        .map(|m| {
            format!(
                "{} {} {}",
                m["machine"].as_str().unwrap(),
                m["source"].as_str().unwrap(),
                m["time"].as_str().unwrap()
            )
        })
        .collect()
}

fn listed(h: &Homesync) -> BTreeSet<String> {
    let run = h.run(args!["snapshots"]);
    run.expect_ok();
    run.messages("snapshot")
        .iter()
        .map(|m| {
            format!(
                "{} {} {}",
                m["machine"].as_str().unwrap(),
                m["source"].as_str().unwrap(),
                m["time"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn forget_by_policy_over_simulated_months() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = Homesync::new(tmp.path().join("store"));
    h.init();
    let fleet = fleet();
    assert_eq!(fleet.len(), 244 + 2 + 32);
    commit(&h.repo, &fleet);
    let all = listed(&h);
    assert_eq!(all.len(), 278);
    let want = expected();
    assert_eq!(want.len(), 18 + 2 + 10);

    // Dry run: every snapshot decided once, exactly the expected ones kept.
    h.env
        .push(("HOMESYNC_NOW".into(), "2026-12-01T00:00:00Z".into()));
    let run = h.run(&with(&["--dry-run"]));
    run.expect_ok();
    assert_eq!(run.messages("forget").len(), 278, "{}", run.describe());
    let kept = decided(&run, "keep");
    assert_eq!(kept, want, "{}", run.describe());
    let removed = decided(&run, "remove");
    assert_eq!(removed.len(), 278 - 30);
    assert!(removed.is_disjoint(&kept));
    let summary = run.summary();
    assert_eq!(summary["kept"], 30);
    assert_eq!(summary["removed"], 248);
    assert_eq!(summary["dry_run"], true);
    // Each decision says why.
    let find = |time: &str, machine: &str| -> Value {
        run.messages("forget")
            .into_iter()
            .find(|m| m["time"] == time && m["machine"] == machine)
            .unwrap()
            .clone()
    };
    let reasons = |time: &str, machine: &str| -> Vec<String> {
        find(time, machine)["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(reasons("2026-10-15 06:00:00", "laptop"), ["tag keep"]);
    assert_eq!(
        reasons("2026-10-01 00:00:00", "laptop"),
        ["oldest monthly 2026-10"]
    );
    assert_eq!(
        reasons("2026-11-30 18:00:00", "laptop"),
        [
            "daily 2026-11-30",
            "weekly 2026-W49",
            "monthly 2026-11",
            "within 2d",
            "newest of source"
        ]
    );
    assert_eq!(reasons("2026-11-29 01:00:00", "desk"), ["within 2d"]);
    assert_eq!(
        reasons("2026-11-10 12:00:00", "laptop"),
        [
            "beyond daily 7",
            "beyond weekly 4",
            "monthly 2026-11 kept a newer one",
            "not within 2d of the newest",
            "no tag keep"
        ]
    );
    let m = find("2027-01-15 03:00:00", "desk");
    assert_eq!(m["action"], "keep");
    assert_eq!(m["source"], "/home/bob");
    assert_eq!(m["unix_time"], ts("2027-01-15 03:00").sec);
    assert_eq!(m["snapshot_id"].as_str().unwrap().len(), 64);
    // Nothing was forgotten.
    assert_eq!(listed(&h), all);

    // The policy clock decides what is in the future: two months later the
    // 2027 snapshot is the newest in the past, and within 2d of it there is
    // no November snapshot left.
    h.env[0].1 = "2027-02-01 00:00".into();
    let later = h.run(&with(&["--dry-run"]));
    later.expect_ok();
    let mut want_later = want.clone();
    want_later.remove("desk /home/bob 2026-11-29 01:00:00");
    assert_eq!(decided(&later, "keep"), want_later, "{}", later.describe());

    // The text table: one heading per group, then id, time, action, reasons.
    h.env[0].1 = "2026-12-01T00:00:00Z".into();
    let text = h.run_text(&with(&["--dry-run"]));
    text.expect_ok();
    for line in [
        "desk /home/bob\n",
        "laptop /etc\n",
        "laptop /home/ann\n",
        "  2026-10-15 06:00:00  keep    tag keep\n",
        "  2026-11-29 01:00:00  keep    within 2d\n",
        "would keep 30 snapshots and forget 248 (dry run: nothing forgotten)\n",
    ] {
        assert!(text.stdout.contains(line), "{line:?}\n{}", text.describe());
    }
    assert!(
        text.stderr.contains(
            "applying policy daily 7, weekly 4, monthly 3, within 2d, tags keep to 278 snapshots"
        ),
        "{}",
        text.describe()
    );

    // For real: exactly the kept snapshots remain.
    let run = h.run(&with(&[]));
    run.expect_ok();
    assert_eq!(decided(&run, "keep"), want);
    assert_eq!(run.summary()["dry_run"], false);
    assert_eq!(listed(&h), want);

    // Applying the same policy again forgets nothing more.
    let again = h.run(&with(&[]));
    again.expect_ok();
    assert_eq!(again.summary()["removed"], 0, "{}", again.describe());
    assert_eq!(listed(&h), want);
}

#[test]
fn forget_arguments_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = Homesync::new(tmp.path().join("store"));
    h.init();
    commit(
        &h.repo,
        &[
            ("m", "/home", "2026-11-01 10:00:00".into(), vec![]),
            ("m", "/home", "2026-11-02 10:00:00".into(), vec![]),
        ],
    );
    for bad in [
        &["forget"][..],
        &["forget", "latest", "--keep-last", "1"],
        &["forget", "--keep-last", "0"],
        &["forget", "--keep-daily", "-1"],
        &["forget", "--keep-within", "3x"],
        &["forget", "--keep-tag", ""],
    ] {
        let a: Vec<&OsStr> = bad.iter().map(OsStr::new).collect();
        let run = h.run(&a);
        run.expect_code(2);
    }
    let run = h.run_text(args!["forget", "--keep-within", "3x"]);
    assert!(
        run.stderr.contains("is not a duration like 36h"),
        "{}",
        run.describe()
    );
    h.env.push(("HOMESYNC_NOW".into(), "yesterday".into()));
    let run = h.run(args!["forget", "--keep-last", "1"]);
    run.expect_code(2);
    assert!(
        run.errors()[0]["error"]
            .as_str()
            .unwrap()
            .contains("HOMESYNC_NOW"),
        "{}",
        run.describe()
    );
    h.env.clear();
    // Explicit ids still work, and --dry-run leaves them.
    let run = h.run(args!["forget", "--dry-run", "latest"]);
    run.expect_ok();
    assert_eq!(listed(&h).len(), 2);
    h.run(args!["forget", "latest"]).expect_ok();
    assert_eq!(
        listed(&h),
        BTreeSet::from(["m /home 2026-11-01 10:00:00".to_string()])
    );
}

/// Over QUIC: an admin plans and forgets another machine's snapshots with
/// `--machine`; a machine may plan its own but not forget (append-only).
#[test]
fn forget_by_policy_on_a_server() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let snaps: Vec<_> = (1..=5)
        .map(|d| ("laptop", "/home/ann", at("2026-11", d, 10), vec![]))
        .chain([("desk", "/home/bob", at("2026-11", 1, 10), vec![])])
        .collect();
    commit(&server.store.repo, &snaps);
    let admin = server.client(&server.add_machine("root", true), tmp.path());
    let laptop = server.client(&server.add_machine("laptop", false), tmp.path());
    let run = |c: &Client, args: &[&str]| -> Run {
        let a: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let mut cmd = c.command(&a);
        cmd.env("HOMESYNC_NOW", "2026-12-01T00:00:00Z");
        let (code, stdout, stderr) = run_with_timeout(cmd, RUN_TIMEOUT, &format!("{args:?}"));
        let json = stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        Run {
            cmdline: format!("{args:?}"),
            code,
            stdout,
            stderr,
            json,
        }
    };
    let policy = ["forget", "--keep-last", "2"];

    let mine = run(&laptop, &[&policy[..], &["--dry-run"]].concat());
    mine.expect_ok();
    assert_eq!(decided(&mine, "keep").len(), 2, "{}", mine.describe());
    assert_eq!(decided(&mine, "remove").len(), 3);
    let refused = run(&laptop, &policy);
    refused.expect_code(1);
    assert!(
        refused.stdout.contains("append-only"),
        "{}",
        refused.describe()
    );

    let planned = run(
        &admin,
        &[&policy[..], &["--machine", "laptop", "--dry-run"]].concat(),
    );
    planned.expect_ok();
    assert_eq!(
        decided(&planned, "keep"),
        BTreeSet::from([
            "laptop /home/ann 2026-11-04 10:00:00".to_string(),
            "laptop /home/ann 2026-11-05 10:00:00".to_string(),
        ]),
        "{}",
        planned.describe()
    );
    run(&admin, &[&policy[..], &["--machine", "laptop"]].concat()).expect_ok();
    let after = run(&admin, &["snapshots", "--machine", "laptop"]);
    after.expect_ok();
    assert_eq!(after.messages("snapshot").len(), 2, "{}", after.describe());
    // The other machine is untouched.
    let desk = run(&admin, &["snapshots", "--machine", "desk"]);
    assert_eq!(desk.messages("snapshot").len(), 1, "{}", desk.describe());
}
