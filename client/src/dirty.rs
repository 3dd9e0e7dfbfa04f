//! The dirty set: which directories of a source changed since the last
//! snapshot, as inotify reported them. An incremental snapshot lists only
//! these (and their ancestors, whose trees name the changed children) and
//! takes every other directory's tree from the previous snapshot.
//!
//! Paths are relative to the source root, `/`-separated raw bytes, empty for
//! the root, as the scanner's `rel`.

use std::collections::BTreeSet;

/// How the scanner treats one directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visit {
    /// Scan it and everything below it (new, moved in, or not vouched for).
    Deep,
    /// List it again; decide for each subdirectory in turn.
    List,
    /// Unchanged since the previous snapshot: reuse its tree.
    Reuse,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dirty {
    /// Nothing can be vouched for: scan everything.
    pub full: bool,
    /// Directories whose own entries changed.
    list: BTreeSet<Vec<u8>>,
    /// Directories whose whole subtree must be scanned.
    deep: BTreeSet<Vec<u8>>,
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
        !self.full && self.list.is_empty() && self.deep.is_empty()
    }

    /// Directories marked, for logs and status (`full` counts as one).
    pub fn len(&self) -> usize {
        usize::from(self.full) + self.list.len() + self.deep.len()
    }

    /// The entries of directory `rel` changed.
    pub fn list(&mut self, rel: &[u8]) {
        if !self.full {
            self.list.insert(rel.to_vec());
        }
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
    }

    /// Whether directory `rel` itself was marked for listing.
    pub fn contains(&self, rel: &[u8]) -> bool {
        self.full || self.list.contains(rel) || self.visit(rel) == Visit::Deep
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
        if self.list.contains(rel) || self.has_marked_below(rel) {
            return Visit::List;
        }
        Visit::Reuse
    }

    /// Whether some marked path lies strictly below `rel`.
    fn has_marked_below(&self, rel: &[u8]) -> bool {
        let below = |set: &BTreeSet<Vec<u8>>| {
            if rel.is_empty() {
                // Everything but the root itself is below the root.
                return set.iter().any(|r| !r.is_empty());
            }
            // Paths starting with `rel/` sort between `rel/` and `rel0`
            // ('0' follows '/').
            let lo = [rel, b"/"].concat();
            let hi = [rel, b"0"].concat();
            set.range(lo..hi).next().is_some()
        };
        below(&self.list) || below(&self.deep)
    }
}

/// The parent directory of `rel` (the root's parent is the root).
pub fn parent(rel: &[u8]) -> &[u8] {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => &rel[..i],
        None => &rel[..0],
    }
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
    fn ancestors_are_listed_and_the_rest_reused() {
        let mut d = Dirty::default();
        assert!(d.is_empty());
        d.list(b"a/b");
        d.deep(b"x/new");
        assert_eq!(d.visit(b""), Visit::List);
        assert_eq!(d.visit(b"a"), Visit::List);
        assert_eq!(d.visit(b"a/b"), Visit::List);
        assert_eq!(d.visit(b"a/b/c"), Visit::Reuse);
        assert_eq!(d.visit(b"a/bc"), Visit::Reuse);
        assert_eq!(d.visit(b"ab"), Visit::Reuse);
        assert_eq!(d.visit(b"x"), Visit::List);
        assert_eq!(d.visit(b"x/new"), Visit::Deep);
        assert_eq!(d.visit(b"x/new/deeper/still"), Visit::Deep);
        assert_eq!(d.visit(b"x/newer"), Visit::Reuse);
        assert_eq!(d.visit(b"y"), Visit::Reuse);
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn the_root_alone_lists_only_the_root() {
        let mut d = Dirty::default();
        d.list(b"");
        assert_eq!(d.visit(b""), Visit::List);
        assert_eq!(d.visit(b"a"), Visit::Reuse);
    }

    #[test]
    fn full_swallows_everything_and_merge_keeps_marks() {
        let mut d = Dirty::default();
        d.list(b"a");
        let mut e = Dirty::default();
        e.deep(b"b");
        d.merge(e);
        assert_eq!(d.visit(b"b/c"), Visit::Deep);
        assert_eq!(d.visit(b"a"), Visit::List);
        d.merge(Dirty::everything());
        assert!(d.full);
        assert_eq!(d.visit(b"q/r"), Visit::Deep);
        d.list(b"z");
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn paths_split_and_join() {
        assert_eq!(parent(b"a/b/c"), b"a/b");
        assert_eq!(parent(b"a"), b"");
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
            lists in prop::collection::vec(rel(), 0..5),
            deeps in prop::collection::vec(rel(), 0..3),
            probe in rel(),
        ) {
            let mut d = Dirty::default();
            for r in &lists { d.list(r); }
            for r in &deeps { d.deep(r); }
            let under = |p: &[u8], a: &[u8]| a.is_empty() || p == a || p.starts_with(&[a, b"/"].concat());
            let expect = if deeps.iter().any(|a| under(&probe, a)) {
                Visit::Deep
            } else if lists.iter().chain(&deeps).any(|m| under(m, &probe)) {
                Visit::List
            } else {
                Visit::Reuse
            };
            prop_assert_eq!(d.visit(&probe), expect);
        }
    }
}
