//! Backups and restores over a bad path: a real `homesync serve` on
//! 127.0.0.1 behind a UDP relay (`common::relay`) that loses, delays and
//! reorders datagrams, blacks out, or changes the client's address as the
//! server sees it. Everything must arrive intact; a QUIC connection rides
//! out a short blackout and a change of address.

mod common;

use common::relay::{Faults, Relay};
use common::server::{Client, Server};
use common::*;
use std::ffi::OsStr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

fn through(server: &Server, relay: &Relay, credential: &str, home: &Path) -> Client {
    Client {
        server: relay.addr.to_string(),
        fingerprint: server.fingerprint.clone(),
        credential: credential.to_string(),
        home: home.to_path_buf(),
    }
}

/// Big incompressible files and many small ones.
fn home_like(src: &Path, big_files: u64, seed: u64) {
    for i in 0..big_files {
        write_file(
            &src.join(format!("video-{i}.bin")),
            &random_bytes(seed + i, 4 << 20),
        );
    }
    for i in 0..200u64 {
        write_file(
            &src.join(format!("docs/note-{i}.txt")),
            format!("note {i} of seed {seed}\n")
                .repeat(i as usize + 1)
                .as_bytes(),
        );
    }
}

const CLEAN: Faults = Faults {
    loss: 0.0,
    delay: Duration::ZERO,
    jitter: Duration::ZERO,
};

/// Starts `backup SRC` through `client`, runs `disturb` once it has run
/// for a moment (asserting it still runs), and waits for it.
fn backup_disturbed(
    client: &Client,
    src: &Path,
    relay: &Relay,
    disturb: impl FnOnce(),
) -> (i32, String) {
    let mut cmd = client.command(&[OsStr::new("backup"), src.as_os_str()]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    // Mid-upload: once a tenth of the 64 MiB or so has passed the relay
    // (about a thousand datagrams of up to MAX_UDP_PAYLOAD bytes), however
    // fast this machine is.
    let start = std::time::Instant::now();
    while relay.forwarded() < 1000 && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the backup ended before the path was disturbed"
    );
    disturb();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn backup_and_restore_over_a_lossy_reordering_path_arrive_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let cred = server.add_machine("laptop", false);
    let relay = Relay::start(
        server.addr.parse().unwrap(),
        Faults {
            loss: 0.02,
            delay: Duration::from_millis(2),
            jitter: Duration::from_millis(8),
        },
        42,
    );
    let client = through(&server, &relay, &cred, &tmp.path().join("home"));
    let src = tmp.path().join("src");
    // Small: under 2 % loss QUIC's congestion control keeps the window
    // small, and the point is what arrives, not how fast.
    home_like(&src, 1, 1);
    client.backup(&src);
    let restored = tmp.path().join("restored");
    client.restore_latest(&restored);
    assert_eq!(describe_tree(&restored), describe_tree(&src));
    // About 2 % of what passed (some 3000 datagrams of up to
    // MAX_UDP_PAYLOAD bytes): the path really was lossy.
    assert!(
        relay.dropped() >= 20,
        "only {} datagrams lost of {}",
        relay.dropped(),
        relay.forwarded() + relay.dropped()
    );
}

#[test]
fn a_three_second_blackout_mid_backup_does_not_fail_it() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let cred = server.add_machine("laptop", false);
    let relay = Relay::start(server.addr.parse().unwrap(), CLEAN, 7);
    let client = through(&server, &relay, &cred, &tmp.path().join("home"));
    let src = tmp.path().join("src");
    home_like(&src, 16, 2);
    let (code, out) = backup_disturbed(&client, &src, &relay, || {
        relay.blackout(Duration::from_secs(3))
    });
    assert_eq!(code, 0, "{out}");
    assert!(relay.dropped() > 0, "the blackout dropped nothing");
    let restored = tmp.path().join("restored");
    client.restore_latest(&restored);
    assert_eq!(describe_tree(&restored), describe_tree(&src));
}

#[test]
fn the_client_changing_address_mid_backup_keeps_its_session() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let cred = server.add_machine("laptop", false);
    let relay = Relay::start(server.addr.parse().unwrap(), CLEAN, 9);
    let client = through(&server, &relay, &cred, &tmp.path().join("home"));
    let src = tmp.path().join("src");
    home_like(&src, 16, 3);
    let before = relay.server_sees();
    let (code, out) = backup_disturbed(&client, &src, &relay, || relay.change_address());
    assert_eq!(code, 0, "{out}");
    assert_ne!(relay.server_sees(), before);
    // One session: the connection moved, it was not made again.
    let sessions = server.sessions(1);
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let restored = tmp.path().join("restored");
    client.restore_latest(&restored);
    assert_eq!(describe_tree(&restored), describe_tree(&src));
}
