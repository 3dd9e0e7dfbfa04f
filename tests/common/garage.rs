//! A real Garage (S3-compatible object store) on 127.0.0.1, started with
//! `scripts/garage.sh`: one node, or three with three copies.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const KEY_ID: &str = "GKtest0000000000000000001";
pub const SECRET: &str = "testsecret0000000000000000000000000000000000000000000000000000001";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/garage.sh")
}

fn garage_sh(args: &[&str]) {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .expect("running scripts/garage.sh");
    assert!(
        out.status.success(),
        "scripts/garage.sh {args:?} failed (install Garage with `scripts/garage.sh install`):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `n` consecutive TCP ports free on 127.0.0.1 now (Garage's S3 and RPC
/// ports are TCP).
fn free_ports(n: u16) -> u16 {
    for _ in 0..200 {
        let base = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if base > 65_000 {
            continue;
        }
        let held: Vec<_> = (0..n)
            .map_while(|i| TcpListener::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if held.len() == n as usize {
            return base;
        }
    }
    panic!("no {n} consecutive free ports on 127.0.0.1");
}

/// A running Garage, stopped on drop.
pub struct Garage {
    pub dir: PathBuf,
    /// S3 port of node 1 (the one the server talks to).
    pub port: u16,
}

impl Garage {
    pub fn single(dir: &Path) -> Garage {
        let port = free_ports(2);
        garage_sh(&["start", dir.to_str().unwrap(), &port.to_string()]);
        Garage {
            dir: dir.to_path_buf(),
            port,
        }
    }

    /// Three nodes, three copies of everything (writes need two).
    pub fn cluster(dir: &Path) -> Garage {
        let port = free_ports(6);
        garage_sh(&["cluster", dir.to_str().unwrap(), &port.to_string()]);
        Garage {
            dir: dir.to_path_buf(),
            port,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server config's `[s3]` table for bucket `packs`, plus `extra`
    /// lines.
    pub fn s3_toml(&self, extra: &str) -> String {
        format!(
            "[s3]\nendpoint = \"{}\"\nregion = \"garage\"\nbucket = \"packs\"\n\
             access_key_id = \"{KEY_ID}\"\nsecret_access_key = \"{SECRET}\"\n{extra}",
            self.endpoint()
        )
    }

    /// SIGKILL node `n` (1-3) of a cluster.
    pub fn kill(&self, n: u8) {
        garage_sh(&["kill", self.dir.to_str().unwrap(), &n.to_string()]);
    }

    /// Starts node `n` again with its data.
    pub fn revive(&self, n: u8) {
        garage_sh(&["revive", self.dir.to_str().unwrap(), &n.to_string()]);
    }

    /// curl with Garage's SigV4 signature on `path` (below the endpoint)
    /// and `extra` arguments; its stdout, asserting success.
    pub fn curl(&self, path: &str, extra: &[&str]) -> Vec<u8> {
        let out = Command::new("curl")
            .args([
                "-sf",
                "--aws-sigv4",
                "aws:amz:garage:s3",
                "--user",
                &format!("{KEY_ID}:{SECRET}"),
                "-H",
                "x-amz-content-sha256: UNSIGNED-PAYLOAD",
            ])
            .args(extra)
            .arg(format!("{}/{path}", self.endpoint()))
            .output()
            .expect("curl");
        assert!(out.status.success(), "curl {path} {extra:?} failed");
        out.stdout
    }

    /// Replaces object `key` of bucket `packs` with `bytes`.
    pub fn put_object(&self, key: &str, bytes: &str) {
        self.curl(
            &format!("packs/{key}"),
            &["-X", "PUT", "--data-binary", bytes],
        );
    }

    /// Keys under `prefix` in bucket `packs` with their ETags (of the first
    /// 1000), listed with curl's own SigV4 (not homesync's client).
    pub fn objects(&self, prefix: &str) -> Vec<(String, String)> {
        let out = self.curl("packs?list-type=2&max-keys=1000", &[]);
        let xml = String::from_utf8_lossy(&out);
        let tag = |s: &str, t: &str| {
            s.split(&format!("<{t}>"))
                .nth(1)
                .and_then(|r| r.split(&format!("</{t}>")).next())
                .unwrap_or_default()
                .to_string()
        };
        xml.split("<Contents>")
            .skip(1)
            .map(|c| (tag(c, "Key"), tag(c, "ETag")))
            .filter(|(k, _)| k.starts_with(prefix))
            .collect()
    }

    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.objects(prefix).into_iter().map(|(k, _)| k).collect()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["stop", self.dir.to_str().unwrap()])
            .status();
    }
}
