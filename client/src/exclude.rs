//! What a backup leaves out: gitignore-style patterns (from `--exclude`, an
//! exclude file and the config), the default excludes for caches and the
//! trash, and directories marked with a `CACHEDIR.TAG`.

use crate::error::ClientError;
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use std::path::Path;

/// Left out unless `--no-default-excludes`: caches and the trash, in the
/// source itself (`backup ~`) and one level down (`backup /home`).
pub const DEFAULT_EXCLUDES: &[&str] = &[
    "/.cache/",
    "/*/.cache/",
    "/.local/share/Trash/",
    "/*/.local/share/Trash/",
];

/// The first bytes of a cache directory tag (bford.info/cachedir).
pub const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

pub struct Excludes {
    rules: Gitignore,
    honour_cachedir_tag: bool,
}

impl Excludes {
    /// Rules for a backup of `root`. Patterns are anchored at `root`.
    pub fn new(root: &Path, patterns: &[String], defaults: bool) -> Result<Excludes, ClientError> {
        let mut b = GitignoreBuilder::new(root);
        let all = defaults
            .then_some(DEFAULT_EXCLUDES)
            .into_iter()
            .flatten()
            .map(|s| s.to_string())
            .chain(patterns.iter().cloned());
        for p in all {
            b.add_line(None, &p).map_err(|e| ClientError::Exclude {
                pattern: p.clone(),
                why: e.to_string(),
            })?;
        }
        let rules = b.build().map_err(|e| ClientError::Exclude {
            pattern: String::new(),
            why: e.to_string(),
        })?;
        Ok(Excludes {
            rules,
            honour_cachedir_tag: defaults,
        })
    }

    /// Reads patterns from a file: one per line, `#` comments, blank lines ignored.
    pub fn read_file(path: &Path) -> Result<Vec<String>, ClientError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClientError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(text
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect())
    }

    /// Whether `path` (under the root) is excluded.
    pub fn excluded(&self, path: &Path, is_dir: bool) -> bool {
        self.rules.matched(path, is_dir).is_ignore()
    }

    /// Whether the directory `dir` is a tagged cache whose contents are left
    /// out (the tag file itself is kept, as Borg and tar do).
    pub fn is_tagged_cache(&self, dir: &Path) -> bool {
        if !self.honour_cachedir_tag {
            return false;
        }
        let mut head = [0u8; 43];
        std::fs::File::open(dir.join("CACHEDIR.TAG"))
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
            .is_ok_and(|()| head == CACHEDIR_SIGNATURE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_patterns_apply() {
        let root = Path::new("/home/u");
        let ex = Excludes::new(
            root,
            &["*.tmp".into(), "!keep.tmp".into(), "/Downloads/".into()],
            true,
        )
        .unwrap();
        assert!(ex.excluded(&root.join(".cache"), true));
        assert!(ex.excluded(&root.join("alice/.cache"), true));
        assert!(ex.excluded(&root.join("src/.cache"), true));
        assert!(!ex.excluded(&root.join("a/src/.cache"), true));
        assert!(ex.excluded(&root.join("a/x.tmp"), false));
        assert!(!ex.excluded(&root.join("a/keep.tmp"), false));
        assert!(ex.excluded(&root.join("Downloads"), true));
        assert!(!ex.excluded(&root.join("p/Downloads"), true));
        let none = Excludes::new(root, &[], false).unwrap();
        assert!(!none.excluded(&root.join(".cache"), true));
    }

    #[test]
    fn a_bad_pattern_is_named() {
        let err = Excludes::new(Path::new("/h"), &["a{b".into()], false)
            .err()
            .unwrap();
        assert!(err.to_string().contains("a{b"), "{err}");
    }
}
