//! User and group names for ids, and ids for names, from /etc/passwd and
//! /etc/group. Read once per run. Names are recorded at backup so a restore
//! onto another machine can map owners by name rather than by number.
//! (Users known only to NSS modules such as LDAP keep their numeric ids.)

use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Default, Clone)]
pub struct Owners {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
    uids: HashMap<String, u32>,
    gids: HashMap<String, u32>,
}

fn parse(path: &Path) -> Vec<(String, u32)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let id = f.nth(1)?.parse().ok()?;
            (!name.is_empty() && !name.starts_with('#')).then(|| (name.to_string(), id))
        })
        .collect()
}

impl Owners {
    pub fn load() -> Self {
        Self::from_files(Path::new("/etc/passwd"), Path::new("/etc/group"))
    }

    pub fn from_files(passwd: &Path, group: &Path) -> Self {
        let mut o = Owners::default();
        for (name, id) in parse(passwd) {
            o.users.entry(id).or_insert_with(|| name.clone());
            o.uids.entry(name).or_insert(id);
        }
        for (name, id) in parse(group) {
            o.groups.entry(id).or_insert_with(|| name.clone());
            o.gids.entry(name).or_insert(id);
        }
        o
    }

    pub fn user(&self, uid: u32) -> Option<&str> {
        self.users.get(&uid).map(String::as_str)
    }

    pub fn group(&self, gid: u32) -> Option<&str> {
        self.groups.get(&gid).map(String::as_str)
    }

    /// The local uid for a recorded owner: by name when this machine knows
    /// the name, else the recorded number.
    pub fn map_uid(&self, name: Option<&str>, uid: u32) -> u32 {
        name.and_then(|n| self.uids.get(n)).copied().unwrap_or(uid)
    }

    pub fn map_gid(&self, name: Option<&str>, gid: u32) -> u32 {
        name.and_then(|n| self.gids.get(n)).copied().unwrap_or(gid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("passwd");
        let g = dir.path().join("group");
        std::fs::write(
            &p,
            "root:x:0:0::/root:/bin/sh\nalice:x:1001:1001::/home/alice:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(&g, "root:x:0:\nstaff:x:50:alice\n").unwrap();
        let o = Owners::from_files(&p, &g);
        assert_eq!(o.user(1001), Some("alice"));
        assert_eq!(o.group(50), Some("staff"));
        assert_eq!(o.map_uid(Some("alice"), 1000), 1001);
        assert_eq!(o.map_uid(Some("nobody-here"), 1000), 1000);
        assert_eq!(o.map_gid(None, 7), 7);
    }
}
