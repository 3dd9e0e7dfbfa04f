//! Who may do what on a server store: machine and admin credentials, one-time
//! restore tokens, and the access rules the server applies to every request.
//!
//! The rows live in the store's own SQLite file (`index.sqlite`) in two
//! tables of their own, `machines` and `restore_tokens`, created with
//! `CREATE TABLE IF NOT EXISTS` by [`Auth::open`]; the index's schema and its
//! `PRAGMA user_version` are left alone. Note that these rows, unlike the
//! blob rows, cannot be rebuilt from the packs.
//!
//! # Secrets
//! A machine credential is `hs1.<name>.<secret>` and a restore token
//! `hs1r.<secret>`, `<secret>` being 32 bytes from the OS's random source
//! written as 43 characters of unpadded base64url. The server stores only
//! `blake3::hash(secret)`. Because every secret is 256 bits of randomness (no
//! password a person chose), a single fast hash is enough: there is nothing
//! to brute-force, so a slow KDF (argon2, scrypt) would only cost CPU on
//! every connection. Hashes are compared as [`blake3::Hash`] values, whose
//! equality is constant-time.
//!
//! # Revocation
//! [`Auth::authenticate`] reads the database on every call, so a revoked
//! credential is refused on the next request that checks it (the server is
//! expected to call it per request or per session start; see the QUIC
//! service).
//!
//! # Restore tokens
//! A restore token is consumed when it is authenticated: [`Auth::authenticate`]
//! marks it used in the same `BEGIN IMMEDIATE` transaction that finds it, and
//! returns a [`Role::Restore`] principal. So a token opens exactly one session
//! (one connection); the server keeps the [`Principal`] for that session's
//! lifetime. If the connection breaks, an admin issues a new token.
//!
//! # Access rules
//! | role      | write snapshots        | read snapshots of     | delete |
//! |-----------|------------------------|-----------------------|--------|
//! | `Machine` | its own machine only   | its own machine only  | never  |
//! | `Admin`   | its own name only      | every machine         | yes    |
//! | `Restore` | never                  | the token's machine   | never  |

use homesync_protocol::StoreError;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Prefix of a machine (or admin) credential: `hs1.<name>.<secret>`.
pub const CREDENTIAL_PREFIX: &str = "hs1.";
/// Prefix of a one-time restore token: `hs1r.<secret>`.
pub const RESTORE_TOKEN_PREFIX: &str = "hs1r.";
/// Length of the base64url text of a 32-byte secret.
const SECRET_LEN: usize = 43;
/// Longest credential [`Auth::authenticate`] will look at.
pub const MAX_CREDENTIAL_LEN: usize = CREDENTIAL_PREFIX.len() + MAX_NAME_LEN + 1 + SECRET_LEN;
/// Longest machine name.
pub const MAX_NAME_LEN: usize = 64;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS machines(
    name TEXT PRIMARY KEY NOT NULL,
    cred_hash BLOB NOT NULL,
    role TEXT NOT NULL CHECK(role IN ('machine', 'admin')),
    created INTEGER NOT NULL,
    revoked INTEGER NULL
);
CREATE TABLE IF NOT EXISTS restore_tokens(
    hash BLOB PRIMARY KEY NOT NULL,
    machine TEXT NOT NULL,
    created INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    used INTEGER NULL
);
";

const UNKNOWN: &str = "unknown or revoked credential";

/// What a principal is allowed to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Backs up, lists and restores its own snapshots; never deletes.
    Machine,
    /// Lists, restores and deletes across machines; backs up only as itself.
    Admin,
    /// Holder of a one-time restore token: reads one machine's snapshots.
    /// Never stored in the `machines` table.
    Restore,
}

impl Role {
    /// The word stored in the database and shown to people.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Machine => "machine",
            Role::Admin => "admin",
            Role::Restore => "restore",
        }
    }

    fn from_db(s: &str) -> Option<Role> {
        match s {
            "machine" => Some(Role::Machine),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated peer: the machine it is (or, for [`Role::Restore`], the
/// machine whose snapshots it may read) and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub machine: String,
    pub role: Role,
}

impl Principal {
    /// May this principal commit a snapshot recorded under `machine`?
    /// Only a machine or admin, and only under its own name.
    pub fn can_write_snapshot_for(&self, machine: &str) -> bool {
        matches!(self.role, Role::Machine | Role::Admin) && self.machine == machine
    }

    /// May this principal list, browse or restore `machine`'s snapshots?
    pub fn can_read_snapshot_of(&self, machine: &str) -> bool {
        match self.role {
            Role::Admin => true,
            Role::Machine | Role::Restore => self.machine == machine,
        }
    }

    /// May this principal delete snapshots (forget, prune)? Admins only:
    /// a machine's history is append-only for the machine itself.
    pub fn can_delete(&self) -> bool {
        self.role == Role::Admin
    }

    /// May this principal upload blobs (the first half of a backup)?
    /// Everyone who may write some snapshot, that is not a restore token.
    pub fn can_upload_blobs(&self) -> bool {
        matches!(self.role, Role::Machine | Role::Admin)
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.role {
            Role::Restore => write!(f, "restore token for {}", self.machine),
            role => write!(f, "{role} {}", self.machine),
        }
    }
}

/// A row of the `machines` table, without its hash. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineInfo {
    pub name: String,
    pub role: Role,
    pub created: i64,
    pub revoked: Option<i64>,
}

/// Checks a machine name: 1 to 64 characters of `[A-Za-z0-9._-]`, not
/// starting with `.` or `-` (so it is a safe file name and command argument,
/// and cannot be confused with an option).
pub fn validate_machine_name(name: &str) -> Result<(), StoreError> {
    let bad = |why: &str| Err(StoreError::Refused(format!("machine name {name:?}: {why}")));
    if name.is_empty() {
        return bad("is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("is longer than 64 characters");
    }
    if name.starts_with('.') || name.starts_with('-') {
        return bad("must not start with '.' or '-'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("may contain only letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// The credential and restore-token tables of one store.
///
/// Holds its own connection (behind a mutex, so an `Arc<Auth>` can be shared
/// by every session); each call is one short statement or transaction.
pub struct Auth {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth").field("path", &self.path).finish()
    }
}

impl Auth {
    /// Opens the auth tables in the store index at `path` (the store's
    /// `index.sqlite` file, which must exist: this never creates a store),
    /// creating the tables if they are missing.
    pub fn open(path: &Path) -> Result<Auth, StoreError> {
        if !path.exists() {
            return Err(StoreError::NotFound(path.display().to_string()));
        }
        let err = |e: rusqlite::Error| StoreError::Index(format!("{}: {e}", path.display()));
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(30)).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        // FULL: a revocation or a used token must survive power loss.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.execute_batch(&format!("BEGIN IMMEDIATE; {SCHEMA} COMMIT;"))
            .map_err(err)?;
        Ok(Auth {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock dropped its transaction, which
        // rolled back: the connection is still consistent.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sql(&self, what: &str) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
        let what = what.to_string();
        move |e| StoreError::Index(format!("{}: {what}: {e}", self.path.display()))
    }

    /// Adds machine `name` with `role` (`Machine` or `Admin`) and returns its
    /// credential, which is shown once and never stored. Refused if the name
    /// is invalid or already in use by a machine that is not revoked;
    /// re-adding a revoked name issues a fresh credential (the old one stays
    /// dead) and clears the revocation.
    pub fn add_machine(&self, name: &str, role: Role) -> Result<String, StoreError> {
        self.add_machine_at(name, role, now())
    }

    fn add_machine_at(&self, name: &str, role: Role, now: i64) -> Result<String, StoreError> {
        validate_machine_name(name)?;
        if role == Role::Restore {
            return Err(StoreError::Refused(format!(
                "machine {name}: a credential's role is machine or admin, not restore"
            )));
        }
        let secret = random_secret()?;
        let hash = blake3::hash(secret.as_bytes());
        let ctx = format!("adding machine {name}");
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql(&ctx))?;
        let existing: Option<Option<i64>> = tx
            .query_row(
                "SELECT revoked FROM machines WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql(&ctx))?;
        match existing {
            Some(None) => {
                return Err(StoreError::Refused(format!(
                    "machine {name} already exists (revoke it first to issue a new credential)"
                )));
            }
            Some(Some(_)) => {
                tx.execute(
                    "UPDATE machines SET cred_hash = ?2, role = ?3, created = ?4, revoked = NULL
                     WHERE name = ?1",
                    params![name, &hash.as_bytes()[..], role.as_str(), now],
                )
                .map_err(self.sql(&ctx))?;
            }
            None => {
                tx.execute(
                    "INSERT INTO machines(name, cred_hash, role, created, revoked)
                     VALUES (?1, ?2, ?3, ?4, NULL)",
                    params![name, &hash.as_bytes()[..], role.as_str(), now],
                )
                .map_err(self.sql(&ctx))?;
            }
        }
        tx.commit().map_err(self.sql(&ctx))?;
        tracing::info!(machine = name, %role, "added credential");
        Ok(format!("{CREDENTIAL_PREFIX}{name}.{secret}"))
    }

    /// Revokes machine `name`'s credential; the next request made with it is
    /// refused. Revoking an already revoked machine changes nothing and
    /// succeeds; an unknown name is refused. Its snapshots and any restore
    /// tokens issued for it stay (a token is how a replacement machine gets
    /// the data of a lost, revoked one).
    pub fn revoke(&self, name: &str) -> Result<(), StoreError> {
        let ctx = format!("revoking machine {name}");
        let conn = self.conn();
        let changed = conn
            .execute(
                "UPDATE machines SET revoked = ?2 WHERE name = ?1 AND revoked IS NULL",
                params![name, now()],
            )
            .map_err(self.sql(&ctx))?;
        if changed == 0 {
            let exists = conn
                .prepare_cached("SELECT 1 FROM machines WHERE name = ?1")
                .and_then(|mut s| s.exists([name]))
                .map_err(self.sql(&ctx))?;
            if !exists {
                return Err(StoreError::Refused(format!("no machine named {name}")));
            }
        } else {
            tracing::info!(machine = name, "revoked credential");
        }
        Ok(())
    }

    /// Every machine, revoked ones included, by name.
    pub fn list_machines(&self) -> Result<Vec<MachineInfo>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT name, role, created, revoked FROM machines ORDER BY name")
            .map_err(self.sql("listing machines"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                ))
            })
            .map_err(self.sql("listing machines"))?;
        let mut out = Vec::new();
        for row in rows {
            let (name, role, created, revoked) = row.map_err(self.sql("listing machines"))?;
            let role = Role::from_db(&role).ok_or_else(|| {
                StoreError::Index(format!("machine {name}: unknown role {role:?}"))
            })?;
            out.push(MachineInfo {
                name,
                role,
                created,
                revoked,
            });
        }
        Ok(out)
    }

    /// Who holds `credential`: a machine or admin credential, or an unused,
    /// unexpired restore token (which this call consumes: see the module
    /// docs). Anything else — malformed, unknown, revoked, expired, used —
    /// is `Refused("unknown or revoked credential")`, never saying which.
    pub fn authenticate(&self, credential: &str) -> Result<Principal, StoreError> {
        self.authenticate_at(credential, now())
    }

    fn authenticate_at(&self, credential: &str, now: i64) -> Result<Principal, StoreError> {
        if credential.len() > MAX_CREDENTIAL_LEN {
            return Err(refused());
        }
        if let Some(secret) = credential.strip_prefix(RESTORE_TOKEN_PREFIX) {
            let machine = self.redeem_restore_token_at(secret, now)?;
            return Ok(Principal {
                machine,
                role: Role::Restore,
            });
        }
        let Some(rest) = credential.strip_prefix(CREDENTIAL_PREFIX) else {
            return Err(refused());
        };
        let Some((name, secret)) = rest.rsplit_once('.') else {
            return Err(refused());
        };
        if validate_machine_name(name).is_err() || !is_secret(secret) {
            return Err(refused());
        }
        let presented = blake3::hash(secret.as_bytes());
        let ctx = format!("authenticating machine {name}");
        let row: Option<(Vec<u8>, String, Option<i64>)> = self
            .conn()
            .prepare_cached("SELECT cred_hash, role, revoked FROM machines WHERE name = ?1")
            .and_then(|mut s| {
                s.query_row([name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()
            })
            .map_err(self.sql(&ctx))?;
        let Some((stored, role, revoked)) = row else {
            // Compare anyway, so an unknown name costs what a wrong secret does.
            let _ = presented == blake3::Hash::from_bytes([0; 32]);
            return Err(refused());
        };
        let stored: [u8; 32] = stored.as_slice().try_into().map_err(|_| {
            StoreError::Index(format!(
                "machine {name}: stored credential hash has {} bytes, not 32",
                stored.len()
            ))
        })?;
        // `Hash == Hash` is constant-time.
        if presented != blake3::Hash::from_bytes(stored) || revoked.is_some() {
            return Err(refused());
        }
        let role = Role::from_db(&role)
            .ok_or_else(|| StoreError::Index(format!("machine {name}: unknown role {role:?}")))?;
        Ok(Principal {
            machine: name.to_string(),
            role,
        })
    }

    /// Issues a one-time token with which a new machine may restore
    /// `machine`'s snapshots, valid for `ttl` (at least one second). The
    /// machine need not have a credential here (its snapshots may predate
    /// the server, or it may be revoked), only a valid name.
    pub fn issue_restore_token(&self, machine: &str, ttl: Duration) -> Result<String, StoreError> {
        self.issue_restore_token_at(machine, ttl, now())
    }

    fn issue_restore_token_at(
        &self,
        machine: &str,
        ttl: Duration,
        now: i64,
    ) -> Result<String, StoreError> {
        validate_machine_name(machine)?;
        if ttl < Duration::from_secs(1) {
            return Err(StoreError::Refused(format!(
                "restore token for machine {machine}: lifetime must be at least one second"
            )));
        }
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let secret = random_secret()?;
        let hash = blake3::hash(secret.as_bytes());
        self.conn()
            .execute(
                "INSERT INTO restore_tokens(hash, machine, created, expires, used)
                 VALUES (?1, ?2, ?3, ?4, NULL)",
                params![&hash.as_bytes()[..], machine, now, now.saturating_add(ttl)],
            )
            .map_err(self.sql(&format!("issuing a restore token for machine {machine}")))?;
        tracing::info!(machine, ttl_secs = ttl, "issued restore token");
        Ok(format!("{RESTORE_TOKEN_PREFIX}{secret}"))
    }

    /// Consumes restore token `token` and returns the machine whose
    /// snapshots it grants. A used, expired, unknown or malformed token is
    /// refused. ([`Auth::authenticate`] does the same for a token presented
    /// as a credential.)
    pub fn redeem_restore_token(&self, token: &str) -> Result<String, StoreError> {
        match token.strip_prefix(RESTORE_TOKEN_PREFIX) {
            Some(secret) => self.redeem_restore_token_at(secret, now()),
            None => Err(refused()),
        }
    }

    fn redeem_restore_token_at(&self, secret: &str, now: i64) -> Result<String, StoreError> {
        if !is_secret(secret) {
            return Err(refused());
        }
        let hash = blake3::hash(secret.as_bytes());
        let ctx = "redeeming a restore token";
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql(ctx))?;
        let row: Option<(String, i64, Option<i64>)> = tx
            .query_row(
                "SELECT machine, expires, used FROM restore_tokens WHERE hash = ?1",
                [&hash.as_bytes()[..]],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(self.sql(ctx))?;
        // The hash was looked up, not compared: it is the key, and learning
        // whether some hash prefix exists tells nothing about a 256-bit secret.
        let Some((machine, expires, used)) = row else {
            return Err(refused());
        };
        if used.is_some() || now >= expires {
            return Err(refused());
        }
        tx.execute(
            "UPDATE restore_tokens SET used = ?2 WHERE hash = ?1",
            params![&hash.as_bytes()[..], now],
        )
        .map_err(self.sql(ctx))?;
        tx.commit().map_err(self.sql(ctx))?;
        tracing::info!(machine, "redeemed restore token");
        Ok(machine)
    }
}

fn refused() -> StoreError {
    StoreError::Refused(UNKNOWN.to_string())
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// 32 random bytes as 43 characters of unpadded base64url.
fn random_secret() -> Result<String, StoreError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| StoreError::Refused(format!("no randomness for a credential: {e}")))?;
    Ok(base64url(&bytes))
}

fn base64url(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | ((b as u32) << (16 - 8 * i)));
        let chars = group.len() + 1;
        for i in 0..chars {
            out.push(B64URL[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Is `s` shaped like a secret (43 base64url characters)?
fn is_secret(s: &str) -> bool {
    s.len() == SECRET_LEN && s.bytes().all(|b| B64URL.contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Index;
    use proptest::prelude::*;

    fn store() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        Index::open(&path, true).unwrap();
        (dir, path)
    }

    fn is_refused(r: Result<impl fmt::Debug, StoreError>) -> bool {
        matches!(r, Err(StoreError::Refused(ref m)) if m == UNKNOWN)
    }

    #[test]
    fn base64url_matches_rfc4648() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(base64url(&[0xff; 32]).len(), SECRET_LEN);
        assert!(is_secret(&random_secret().unwrap()));
    }

    #[test]
    fn open_requires_an_index_and_leaves_its_schema_alone() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Auth::open(&dir.path().join("index.sqlite")),
            Err(StoreError::NotFound(_))
        ));
        let (_dir, path) = store();
        Auth::open(&path).unwrap();
        Auth::open(&path).unwrap(); // idempotent
        Index::open(&path, false).unwrap(); // user_version untouched
    }

    #[test]
    fn add_authenticate_revoke() {
        let (_dir, path) = store();
        let auth = Auth::open(&path).unwrap();
        let cred = auth.add_machine("laptop-1", Role::Machine).unwrap();
        assert!(cred.starts_with("hs1.laptop-1."));
        assert_eq!(cred.len(), "hs1.laptop-1.".len() + SECRET_LEN);
        let admin = auth.add_machine("ops.admin", Role::Admin).unwrap();

        assert_eq!(
            auth.authenticate(&cred).unwrap(),
            Principal {
                machine: "laptop-1".into(),
                role: Role::Machine
            }
        );
        assert_eq!(auth.authenticate(&admin).unwrap().role, Role::Admin);
        assert_eq!(auth.authenticate(&admin).unwrap().machine, "ops.admin");

        // A wrong secret, or a right secret under another name, is refused.
        let mut wrong = cred.clone();
        let last = wrong.pop().unwrap();
        wrong.push(if last == 'A' { 'B' } else { 'A' });
        assert!(is_refused(auth.authenticate(&wrong)));
        let secret = cred.rsplit_once('.').unwrap().1;
        assert!(is_refused(
            auth.authenticate(&format!("hs1.ops.admin.{secret}"))
        ));
        assert!(is_refused(
            auth.authenticate(&format!("hs1.nobody.{secret}"))
        ));

        // Revoking through another connection takes effect at once.
        let other = Auth::open(&path).unwrap();
        other.revoke("laptop-1").unwrap();
        assert!(is_refused(auth.authenticate(&cred)));
        other.revoke("laptop-1").unwrap(); // idempotent
        assert!(
            matches!(other.revoke("ghost"), Err(StoreError::Refused(m)) if m.contains("ghost"))
        );
        assert_eq!(auth.authenticate(&admin).unwrap().role, Role::Admin);

        let list = auth.list_machines().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].name, "laptop-1");
        assert!(list[0].revoked.is_some());
        assert_eq!(list[1].name, "ops.admin");
        assert_eq!(list[1].role, Role::Admin);
        assert_eq!(list[1].revoked, None);
    }

    #[test]
    fn duplicate_names_refused_until_revoked() {
        let (_dir, path) = store();
        let auth = Auth::open(&path).unwrap();
        let first = auth.add_machine("desk", Role::Machine).unwrap();
        match auth.add_machine("desk", Role::Admin) {
            Err(StoreError::Refused(m)) => assert!(m.contains("desk"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(auth.authenticate(&first).unwrap().role, Role::Machine);
        auth.revoke("desk").unwrap();
        let second = auth.add_machine("desk", Role::Admin).unwrap();
        assert_ne!(first, second);
        assert!(is_refused(auth.authenticate(&first)));
        assert_eq!(auth.authenticate(&second).unwrap().role, Role::Admin);
        let list = auth.list_machines().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].revoked, None);
    }

    #[test]
    fn names_are_validated() {
        let (_dir, path) = store();
        let auth = Auth::open(&path).unwrap();
        for bad in [
            "",
            ".hidden",
            "-opt",
            "a/b",
            "a b",
            "é",
            &"x".repeat(65),
            "a\0b",
        ] {
            match auth.add_machine(bad, Role::Machine) {
                Err(StoreError::Refused(m)) => assert!(m.contains("machine name"), "{m}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        for good in ["a", "A.b_c-9", "x.", &"x".repeat(64)] {
            auth.add_machine(good, Role::Machine).unwrap();
        }
        assert!(auth.add_machine("r", Role::Restore).is_err());
        assert!(
            auth.issue_restore_token("../x", Duration::from_secs(60))
                .is_err()
        );
    }

    #[test]
    fn malformed_credentials_refused() {
        let (_dir, path) = store();
        let auth = Auth::open(&path).unwrap();
        let cred = auth.add_machine("m", Role::Machine).unwrap();
        let secret = cred.strip_prefix("hs1.m.").unwrap();
        for bad in [
            "",
            "hs1.",
            "hs1..",
            "hs1.m",
            "hs1.m.",
            &format!("hs1.m.{secret}x"),
            &format!("hs1.m.{}", &secret[1..]),
            &format!("hs1.m.{}=", &secret[1..]),
            &format!("hs2.m.{secret}"),
            &format!(" hs1.m.{secret}"),
            &format!("hs1.m.{secret}\n"),
            &format!("hs1r.{secret}"),
            &format!("hs1r.{}", "A".repeat(10_000)),
        ] {
            assert!(is_refused(auth.authenticate(bad)), "{bad:?}");
        }
        assert_eq!(auth.authenticate(&cred).unwrap().machine, "m");
    }

    #[test]
    fn arbitrary_credentials_never_panic() {
        let (_dir, path) = store();
        let auth = Auth::open(&path).unwrap();
        let cred = auth.add_machine("m", Role::Machine).unwrap();
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 512,
            ..ProptestConfig::default()
        });
        let strategy = prop_oneof![
            any::<String>(),
            "hs1\\.[a-zA-Z0-9._-]{0,70}\\.[A-Za-z0-9_=+/-]{0,50}",
            "hs1r\\.[A-Za-z0-9_=+/-]{0,50}",
            "[A-Za-z0-9_-]{0,3}".prop_map({
                let cred = cred.clone();
                move |s| format!("{}{s}", &cred[..cred.len() - 2])
            }),
        ];
        runner
            .run(&strategy, |s| {
                let r = auth.authenticate(&s);
                if s == cred {
                    prop_assert!(r.is_ok());
                } else {
                    prop_assert!(is_refused(r), "{s:?}");
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn restore_token_works_once_for_its_machine() {
        let (_dir, path) = store();
        let auth = Auth::open(&path).unwrap();
        auth.add_machine("old-laptop", Role::Machine).unwrap();
        auth.revoke("old-laptop").unwrap(); // lost: tokens still work
        let token = auth
            .issue_restore_token("old-laptop", Duration::from_secs(3600))
            .unwrap();
        assert!(token.starts_with("hs1r."));
        let p = auth.authenticate(&token).unwrap();
        assert_eq!(
            p,
            Principal {
                machine: "old-laptop".into(),
                role: Role::Restore
            }
        );
        assert!(p.can_read_snapshot_of("old-laptop"));
        assert!(!p.can_read_snapshot_of("other"));
        assert!(is_refused(auth.authenticate(&token)));
        assert!(is_refused(auth.redeem_restore_token(&token)));

        let token = auth
            .issue_restore_token("desk", Duration::from_secs(3600))
            .unwrap();
        assert_eq!(auth.redeem_restore_token(&token).unwrap(), "desk");
        assert!(is_refused(auth.redeem_restore_token(&token)));
        assert!(is_refused(auth.authenticate(&token)));
        assert!(is_refused(auth.redeem_restore_token("hs1.desk.x")));
    }

    #[test]
    fn expired_token_refused() {
        let (_dir, path) = store();
        let auth = Auth::open(&path).unwrap();
        let t0 = 1_000_000;
        let token = auth
            .issue_restore_token_at("m", Duration::from_secs(60), t0)
            .unwrap();
        let secret = token.strip_prefix(RESTORE_TOKEN_PREFIX).unwrap();
        assert!(is_refused(auth.redeem_restore_token_at(secret, t0 + 60)));
        assert!(is_refused(auth.authenticate_at(&token, t0 + 3600)));
        // Refusing an expired token did not consume it: still valid earlier.
        assert_eq!(
            auth.authenticate_at(&token, t0 + 59).unwrap().role,
            Role::Restore
        );
        assert!(
            auth.issue_restore_token("m", Duration::from_millis(10))
                .is_err()
        );
        // A huge lifetime saturates instead of overflowing.
        let forever = auth.issue_restore_token("m", Duration::MAX).unwrap();
        assert_eq!(auth.redeem_restore_token(&forever).unwrap(), "m");
    }

    #[test]
    fn access_rules() {
        let p = |machine: &str, role| Principal {
            machine: machine.into(),
            role,
        };
        let machine = p("a", Role::Machine);
        let admin = p("root", Role::Admin);
        let restore = p("a", Role::Restore);
        // (principal, write a, write b, write own-name, read a, read b, delete, upload)
        let table = [
            (&machine, true, false, true, true, false, false, true),
            (&admin, false, false, true, true, true, true, true),
            (&restore, false, false, false, true, false, false, false),
        ];
        for (who, wa, wb, wself, ra, rb, del, up) in table {
            assert_eq!(who.can_write_snapshot_for("a"), wa, "{who}");
            assert_eq!(who.can_write_snapshot_for("b"), wb, "{who}");
            assert_eq!(who.can_write_snapshot_for(&who.machine), wself, "{who}");
            assert_eq!(who.can_read_snapshot_of("a"), ra, "{who}");
            assert_eq!(who.can_read_snapshot_of("b"), rb, "{who}");
            assert_eq!(who.can_delete(), del, "{who}");
            assert_eq!(who.can_upload_blobs(), up, "{who}");
        }
        assert_eq!(restore.to_string(), "restore token for a");
        assert_eq!(admin.to_string(), "admin root");
    }
}
