//! A real `homesync serve` on 127.0.0.1 port 0 with a temporary store, and
//! clients for it: the binary, and the client library.

use super::*;
use serde_json::Value;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `homesync serve`, killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub fingerprint: String,
    pub store: Homesync,
    /// Every JSON line the server printed after `listening`.
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Server {
    pub fn start(dir: &Path) -> Server {
        Homesync::new(dir.join("store")).init();
        Self::reopen(dir)
    }

    /// `homesync serve` on the store `dir/store` that already exists: the
    /// restart after a crash (the certificate is the store's, so the
    /// fingerprint stays; the port is a new one).
    pub fn reopen(dir: &Path) -> Server {
        let store = Homesync::new(dir.join("store"));
        let mut cmd = Command::new(bin());
        cmd.args(["--json", "--repo"]).arg(dir.join("store")).args([
            "serve",
            "--listen",
            "127.0.0.1:0",
        ]);
        Self::spawn(cmd, store)
    }

    /// `homesync serve --server-config DIR/server.toml` with `store =
    /// "store"` and `extra` (an `[s3]` table, say) in the file; the store
    /// is created by the server. The file stays for [`Server::start_config`].
    pub fn start_with_config(dir: &Path, extra: &str) -> Server {
        let config = dir.join("server.toml");
        std::fs::write(&config, format!("store = \"store\"\n{extra}")).unwrap();
        Self::start_config(&config)
    }

    /// `homesync serve --server-config CONFIG` (whose store is CONFIG's
    /// directory's `store`).
    pub fn start_config(config: &Path) -> Server {
        let store = Homesync::new(config.parent().unwrap().join("store"));
        let mut cmd = Command::new(bin());
        cmd.args([
            "--json",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--server-config",
        ])
        .arg(config);
        Self::spawn(cmd, store)
    }

    fn spawn(mut cmd: Command, store: Homesync) -> Server {
        let mut child = cmd
            .env("HOMESYNC_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start homesync serve");
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        // A new store is announced first.
        while out.read_line(&mut line).unwrap() > 0 && line.contains("\"note\"") {
            line.clear();
        }
        // Keep reading: the server reports each session as it ends (and a
        // closed pipe would fail its writes).
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for l in out.lines() {
                let Ok(l) = l else { break };
                if let Ok(v) = serde_json::from_str(&l) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        let v: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("serve printed {line:?}: {e}"));
        assert_eq!(v["message_type"], "listening", "{v}");
        Server {
            child,
            addr: v["address"].as_str().unwrap().to_string(),
            fingerprint: v["fingerprint"].as_str().unwrap().to_string(),
            store,
            lines,
        }
    }

    /// The first `n` session reports, waiting up to 10 s for them (a
    /// session is reported once its connection has closed).
    pub fn sessions(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got: Vec<Value> = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .filter(|v| v["message_type"] == "session")
                .cloned()
                .collect();
            if got.len() >= n || Instant::now() > deadline {
                assert!(
                    got.len() >= n,
                    "{} of {n} session reports: {got:?}",
                    got.len()
                );
                return got;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A credential for a new machine (or admin).
    pub fn add_machine(&self, name: &str, admin: bool) -> String {
        let mut a = vec!["admin", "add-machine", name];
        if admin {
            a.push("--admin");
        }
        let a: Vec<&OsStr> = a.iter().map(OsStr::new).collect();
        let run = self.store.run(&a);
        run.expect_ok();
        run.messages("credential")[0]["credential"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The client library connected with `credential`.
    pub fn remote(
        &self,
        credential: &str,
    ) -> Result<homesync_client::remote::RemoteRepository, homesync_client::ClientError> {
        homesync_client::remote::RemoteRepository::connect(
            &homesync_client::remote::RemoteOptions {
                server: self.addr.clone(),
                fingerprint: self.fingerprint.clone(),
                credential: credential.to_string(),
                bulk_download: false,
            },
        )
    }

    pub fn client(&self, credential: &str, home: &Path) -> Client {
        Client {
            server: self.addr.clone(),
            fingerprint: self.fingerprint.clone(),
            credential: credential.to_string(),
            home: home.to_path_buf(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary run against the server.
pub struct Client {
    pub server: String,
    pub fingerprint: String,
    pub credential: String,
    pub home: PathBuf,
}

impl Client {
    pub fn command(&self, args: &[&OsStr]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.arg("--json")
            .args([
                "--server",
                &self.server,
                "--fingerprint",
                &self.fingerprint,
                "--credential",
                &self.credential,
            ])
            .args(args)
            .env_remove("HOMESYNC_REPO")
            .env("HOMESYNC_CONFIG", self.home.join("no-client.toml"))
            .env("XDG_CACHE_HOME", self.home.join("cache"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    pub fn run(&self, args: &[&OsStr]) -> Run {
        self.run_with_env(args, &[])
    }

    /// [`Client::run`] with these environment variables set.
    pub fn run_with_env(&self, args: &[&OsStr], env: &[(&str, &str)]) -> Run {
        let cmdline = format!("homesync --server {} {:?} (env {env:?})", self.server, args);
        let mut cmd = self.command(args);
        cmd.envs(env.iter().copied());
        let (code, stdout, stderr) = run_with_timeout(cmd, RUN_TIMEOUT, &cmdline);
        let json = stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        Run {
            cmdline,
            code,
            stdout,
            stderr,
            json,
        }
    }

    /// `backup SRC`, which must succeed.
    pub fn backup(&self, src: &Path) -> Run {
        let run = self.run(&[OsStr::new("backup"), src.as_os_str()]);
        run.expect_ok();
        run
    }

    /// `restore latest --target TARGET`, which must succeed.
    pub fn restore_latest(&self, target: &Path) -> Run {
        let run = self.try_restore_latest(target);
        run.expect_ok();
        run
    }

    /// `restore latest --target TARGET`, whatever its outcome.
    pub fn try_restore_latest(&self, target: &Path) -> Run {
        self.run(&[
            OsStr::new("restore"),
            OsStr::new("latest"),
            OsStr::new("--target"),
            target.as_os_str(),
        ])
    }
}
