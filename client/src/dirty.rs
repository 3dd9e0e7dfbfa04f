//! The dirty set: what changed in a source since the last snapshot, as
//! inotify reported it: entries by name, directories to list again, and
//! subtrees to scan whole. An incremental snapshot looks only at these: a
//! directory with changed entries is *patched* (the previous tree with just
//! those names examined again), its ancestors are rebuilt from their
//! previous trees (they name the changed children), and every other
//! directory's tree is taken from the previous snapshot as it was.
//!
//! Paths are relative to the source root, `/`-separated raw bytes, empty for
//! the root, as the scanner's `rel`.

use std::collections::{BTreeMap, BTreeSet};

/// How the scanner treats one directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visit {
    /// Scan it and everything below it (new, moved in, or not vouched for).
    Deep,
    /// List it again; decide for each subdirectory in turn.
    List,
    /// Its previous tree, with the changed names (if any) looked at again;
    /// decide for each subdirectory in turn.
    Patch,
    /// Unchanged since the previous snapshot: reuse its tree.
    Reuse,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dirty {
    /// Nothing can be vouched for: scan everything.
    pub full: bool,
    /// Directories to list again in full.
    list: BTreeSet<Vec<u8>>,
    /// Directories whose whole subtree must be scanned.
    deep: BTreeSet<Vec<u8>>,
    /// Entries that changed, by directory.
    names: BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>>,
}

impl Dirty {
    /// A set that vouches for nothing (first snapshot, overflow).
    pub fn everything() -> Dirty {
        Dirty {
            full: true,
            ..Dirty::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.full && self.list.is_empty() && self.deep.is_empty() && self.names.is_empty()
    }

    /// Directories marked, for logs and status (`full` counts as one).
    pub fn len(&self) -> usize {
        usize::from(self.full) + self.list.len() + self.deep.len() + self.names.len()
    }

    /// Directory `rel` must be listed again in full.
    pub fn list(&mut self, rel: &[u8]) {
        if !self.full {
            self.list.insert(rel.to_vec());
        }
    }

    /// Entry `name` of directory `dir` changed (created, written, removed,
    /// renamed, its metadata). The directory's own metadata may have
    /// changed with it (its mtime, when entries come and go), so its name
    /// in its parent is marked too.
    pub fn changed(&mut self, dir: &[u8], name: &[u8]) {
        if self.full {
            return;
        }
        self.names
            .entry(dir.to_vec())
            .or_default()
            .insert(name.to_vec());
        if !dir.is_empty() {
            let (parent, base) = split(dir);
            self.names
                .entry(parent.to_vec())
                .or_default()
                .insert(base.to_vec());
        }
    }

    /// Directory `rel` is looked at again though no entry of it is known to
    /// have changed (its own metadata did; the root's is always read).
    pub fn touch(&mut self, rel: &[u8]) {
        if !self.full {
            self.names.entry(rel.to_vec()).or_default();
        }
    }

    /// The changed entries of directory `rel`.
    pub fn names(&self, rel: &[u8]) -> Option<&BTreeSet<Vec<u8>>> {
        self.names.get(rel)
    }

    /// Everything below `rel` (a directory, or a name that may be one) must
    /// be scanned.
    pub fn deep(&mut self, rel: &[u8]) {
        if rel.is_empty() {
            self.full = true;
        }
        if self.full {
            self.list.clear();
            self.deep.clear();
            self.names.clear();
        } else {
            self.deep.insert(rel.to_vec());
        }
    }

    /// Adds everything `other` marks (a failed snapshot's set goes back).
    pub fn merge(&mut self, other: Dirty) {
        if other.full {
            self.deep(b"");
            return;
        }
        for r in other.list {
            self.list(&r);
        }
        for r in other.deep {
            self.deep(&r);
        }
        if !self.full {
            for (dir, names) in other.names {
                self.names.entry(dir).or_default().extend(names);
            }
        }
    }

    /// How the scanner treats directory `rel`.
    pub fn visit(&self, rel: &[u8]) -> Visit {
        if self.full || self.deep.contains(rel) {
            return Visit::Deep;
        }
        // An ancestor marked deep covers `rel`.
        for (i, &b) in rel.iter().enumerate() {
            if b == b'/' && self.deep.contains(&rel[..i]) {
                return Visit::Deep;
            }
        }
        if self.list.contains(rel) {
            return Visit::List;
        }
        if self.names.contains_key(rel) || self.has_marked_below(rel) {
            return Visit::Patch;
        }
        Visit::Reuse
    }

    /// Whether some marked path lies strictly below `rel`.
    fn has_marked_below(&self, rel: &[u8]) -> bool {
        if rel.is_empty() {
            let below = |r: &Vec<u8>| !r.is_empty();
            return self.list.iter().any(below)
                || self.deep.iter().any(below)
                || self.names.keys().any(below);
        }
        // Paths starting with `rel/` sort between `rel/` and `rel0` ('0'
        // follows '/').
        let (lo, hi) = ([rel, b"/"].concat(), [rel, b"0"].concat());
        self.list.range(lo.clone()..hi.clone()).next().is_some()
            || self.deep.range(lo.clone()..hi.clone()).next().is_some()
            || self.names.range(lo..hi).next().is_some()
    }
}

/// `rel` split into its parent directory and its last name.
pub fn split(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&rel[..0], rel),
    }
}

/// The parent directory of `rel` (the root's parent is the root).
pub fn parent(rel: &[u8]) -> &[u8] {
    split(rel).0
}

/// `name` inside directory `dir`.
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        [dir, b"/", name].concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn changed_entries_patch_their_directory_and_its_ancestors() {
        let mut d = Dirty::default();
        assert!(d.is_empty());
        d.changed(b"a/b", b"f");
        d.deep(b"x/new");
        d.list(b"q");
        assert_eq!(d.visit(b""), Visit::Patch);
        assert_eq!(d.visit(b"a"), Visit::Patch);
        assert_eq!(d.visit(b"a/b"), Visit::Patch);
        assert_eq!(d.names(b"a/b").unwrap().len(), 1);
        // b's own metadata (its mtime) may have changed with it.
        assert!(d.names(b"a").unwrap().contains(&b"b".to_vec()));
        assert_eq!(d.visit(b"a/b/c"), Visit::Reuse);
        assert_eq!(d.visit(b"a/bc"), Visit::Reuse);
        assert_eq!(d.visit(b"ab"), Visit::Reuse);
        assert_eq!(d.visit(b"x"), Visit::Patch);
        assert_eq!(d.visit(b"x/new"), Visit::Deep);
        assert_eq!(d.visit(b"x/new/deeper/still"), Visit::Deep);
        assert_eq!(d.visit(b"x/newer"), Visit::Reuse);
        assert_eq!(d.visit(b"q"), Visit::List);
        assert_eq!(d.visit(b"y"), Visit::Reuse);
        assert_eq!(d.len(), 4);
    }

    #[test]
    fn a_change_at_the_root_patches_only_the_root() {
        let mut d = Dirty::default();
        d.changed(b"", b"notes.txt");
        assert_eq!(d.visit(b""), Visit::Patch);
        assert_eq!(d.visit(b"a"), Visit::Reuse);
    }

    #[test]
    fn full_swallows_everything_and_merge_keeps_marks() {
        let mut d = Dirty::default();
        d.list(b"a");
        let mut e = Dirty::default();
        e.deep(b"b");
        e.changed(b"c", b"x");
        d.merge(e);
        assert_eq!(d.visit(b"b/c"), Visit::Deep);
        assert_eq!(d.visit(b"a"), Visit::List);
        assert_eq!(d.visit(b"c"), Visit::Patch);
        d.merge(Dirty::everything());
        assert!(d.full);
        assert_eq!(d.visit(b"q/r"), Visit::Deep);
        d.list(b"z");
        d.changed(b"z", b"y");
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn paths_split_and_join() {
        assert_eq!(parent(b"a/b/c"), b"a/b");
        assert_eq!(parent(b"a"), b"");
        assert_eq!(split(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(join(b"", b"a"), b"a");
        assert_eq!(join(b"a", b"b"), b"a/b");
    }

    fn rel() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop::sample::select(vec![&b"a"[..], b"b", b"a0", b"a.b"]),
            0..4,
        )
        .prop_map(|parts| parts.join(&b'/'))
    }

    proptest! {
        /// `visit` agrees with its definition, checked the slow way.
        #[test]
        fn visit_matches_the_definition(
            lists in prop::collection::vec(rel(), 0..4),
            deeps in prop::collection::vec(rel(), 0..3),
            changes in prop::collection::vec(rel(), 0..4),
            probe in rel(),
        ) {
            let mut d = Dirty::default();
            for r in &lists { d.list(r); }
            for r in &deeps { d.deep(r); }
            // A change of entry `e` in directory `dir`: `dir` is patched,
            // and so is its parent (for `dir`'s own metadata).
            let mut patched = vec![];
            for r in &changes {
                let (dir, name) = split(r);
                d.changed(dir, name);
                patched.push(dir.to_vec());
                if !dir.is_empty() {
                    patched.push(parent(dir).to_vec());
                }
            }
            let under = |p: &[u8], a: &[u8]| a.is_empty() || p == a || p.starts_with(&[a, b"/"].concat());
            let below = |p: &[u8], a: &[u8]| a != p && under(p, a);
            let expect = if deeps.iter().any(|a| under(&probe, a)) {
                Visit::Deep
            } else if lists.contains(&probe) {
                Visit::List
            } else if patched.contains(&probe)
                || lists.iter().chain(&deeps).chain(&patched).any(|m| below(m, &probe))
            {
                Visit::Patch
            } else {
                Visit::Reuse
            };
            prop_assert_eq!(d.visit(&probe), expect);
        }
    }
}
