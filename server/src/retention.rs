//! Retention: which snapshots a policy keeps, and why.
//!
//! [`plan`] is a pure function: snapshots + [`Policy`] + the time it is run
//! -> one [`Decision`] per snapshot, keep or remove, with its reasons. No I/O
//! and no clock: `now` is passed in. `homesync forget` prints the decisions
//! (`--dry-run` stops there) and forgets the snapshots to remove.
//!
//! The rules are restic's `forget` rules (restic 0.17 and later,
//! `internal/restic/snapshot_policy.go` and its "Removing snapshots
//! according to a policy" documentation):
//!
//! - Snapshots are grouped by (machine, source), as restic groups by host
//!   and paths; the policy is applied to each group on its own.
//! - Within a group, snapshots are walked from newest to oldest (equal times:
//!   the larger id counts as newer, so the plan never depends on input order).
//! - `keep_last N` keeps the N newest. `keep_hourly/daily/weekly/monthly/yearly
//!   N` count the N newest distinct hours/days/... that hold a snapshot, and
//!   keep the newest snapshot of each; periods without a snapshot do not
//!   count. If a rule still has counts left when the walk reaches the oldest
//!   snapshot, that snapshot is kept too ("oldest daily ..."), which keeps the
//!   longest history the counts allow.
//! - Periods are calendar periods in **UTC** (hours :00-:59, days 00:00-23:59,
//!   ISO weeks Monday to Sunday, months, years), not the server's or the
//!   laptop's local time: a fleet spans time zones, and UTC needs no time-zone
//!   database. A backup at 00:30 local time in UTC+2 counts for the day
//!   before.
//! - `keep_within D` keeps every snapshot taken less than D before the
//!   group's newest snapshot, not before `now`: a machine that stopped backing
//!   up keeps its last D of history however long it stays away. `now` only
//!   decides which snapshots are in the future (a machine with a wrong
//!   clock): those are ignored when finding the newest, and kept.
//! - `keep_tags` keeps every snapshot carrying any of these tags.
//! - A snapshot is kept if any rule keeps it; the rules' results are ORed.
//! - **A group's newest snapshot is never removed**, whatever the policy
//!   (restic refuses a policy that would remove a whole group; homesync keeps
//!   the newest instead, so a machine always has something to restore).
//! - An empty policy keeps everything ("policy is empty"), as in restic,
//!   which refuses to act on one; [`Policy::is_empty`] tells callers.
//!
//! Where Proxmox Backup Server differs: its options are applied in order and
//! each only looks at backups older than those the previous options kept, so
//! overlapping rules keep more there. homesync follows restic.

use homesync_protocol::{Snapshot, SnapshotId, Timestamp};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Which snapshots to keep. Every field is optional; a snapshot kept by any
/// of them is kept. Deserialized from the server config's `[retention]`
/// tables (unknown fields refused).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Keep the N newest snapshots.
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the N newest hours that have one.
    pub keep_hourly: Option<u32>,
    /// ... of each of the N newest days (UTC) that have one.
    pub keep_daily: Option<u32>,
    /// ... of each of the N newest ISO weeks (Monday to Sunday, UTC).
    pub keep_weekly: Option<u32>,
    /// ... of each of the N newest months.
    pub keep_monthly: Option<u32>,
    /// ... of each of the N newest years.
    pub keep_yearly: Option<u32>,
    /// Keep every snapshot taken within this [`Span`] of the newest one,
    /// e.g. `"36h"`, `"30d"`, `"2w"`, `"1y2m3d"`.
    pub keep_within: Option<String>,
    /// Keep every snapshot carrying any of these tags.
    #[serde(default)]
    pub keep_tags: Vec<String>,
}

/// A policy field that is not acceptable, named as in the config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` {reason}")]
pub struct PolicyError {
    pub field: &'static str,
    pub reason: String,
}

/// The counting rules, in the order restic applies and reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Rule {
    fn name(self) -> &'static str {
        match self {
            Rule::Last => "last",
            Rule::Hourly => "hourly",
            Rule::Daily => "daily",
            Rule::Weekly => "weekly",
            Rule::Monthly => "monthly",
            Rule::Yearly => "yearly",
        }
    }

    fn field(self) -> &'static str {
        match self {
            Rule::Last => "keep_last",
            Rule::Hourly => "keep_hourly",
            Rule::Daily => "keep_daily",
            Rule::Weekly => "keep_weekly",
            Rule::Monthly => "keep_monthly",
            Rule::Yearly => "keep_yearly",
        }
    }

    /// The period `t` falls in, as a number that differs between periods;
    /// `nr` (the position in the walk) makes every snapshot its own period
    /// for `keep_last`.
    fn bucket(self, t: Timestamp, nr: usize) -> i64 {
        let days = t.sec.div_euclid(86_400);
        match self {
            Rule::Last => nr as i64,
            Rule::Hourly => t.sec.div_euclid(3600),
            Rule::Daily => days,
            Rule::Weekly => {
                let (y, w) = iso_week(days);
                y * 100 + i64::from(w)
            }
            Rule::Monthly => {
                let (y, m, _) = civil_from_days(days);
                y * 12 + i64::from(m)
            }
            Rule::Yearly => civil_from_days(days).0,
        }
    }

    /// The period `t` falls in, for people: `2026-11-24 13:00`,
    /// `2026-11-24`, `2026-W48`, `2026-11`, `2026`.
    fn label(self, t: Timestamp) -> String {
        let days = t.sec.div_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        match self {
            Rule::Last => String::new(),
            Rule::Hourly => format!(
                "{y:04}-{m:02}-{d:02} {:02}:00",
                t.sec.rem_euclid(86_400) / 3600
            ),
            Rule::Daily => format!("{y:04}-{m:02}-{d:02}"),
            Rule::Weekly => {
                let (y, w) = iso_week(days);
                format!("{y:04}-W{w:02}")
            }
            Rule::Monthly => format!("{y:04}-{m:02}"),
            Rule::Yearly => format!("{y:04}"),
        }
    }
}

const RULES: [Rule; 6] = [
    Rule::Last,
    Rule::Hourly,
    Rule::Daily,
    Rule::Weekly,
    Rule::Monthly,
    Rule::Yearly,
];

impl Policy {
    fn count(&self, rule: Rule) -> Option<u32> {
        match rule {
            Rule::Last => self.keep_last,
            Rule::Hourly => self.keep_hourly,
            Rule::Daily => self.keep_daily,
            Rule::Weekly => self.keep_weekly,
            Rule::Monthly => self.keep_monthly,
            Rule::Yearly => self.keep_yearly,
        }
    }

    /// True when no rule is set: such a policy keeps everything.
    pub fn is_empty(&self) -> bool {
        RULES.iter().all(|&r| self.count(r).is_none())
            && self.keep_within.is_none()
            && self.keep_tags.is_empty()
    }

    /// Checks every field: counts at least 1, `keep_within` a valid
    /// [`Span`], no empty tag. (An empty policy is valid: it keeps all.)
    pub fn validate(&self) -> Result<(), PolicyError> {
        self.within().map(|_| ())
    }

    /// Validates, and parses `keep_within`.
    fn within(&self) -> Result<Option<Span>, PolicyError> {
        for rule in RULES {
            if self.count(rule) == Some(0) {
                return Err(PolicyError {
                    field: rule.field(),
                    reason: "must be at least 1 (leave it out to not use it)".into(),
                });
            }
        }
        if self.keep_tags.iter().any(|t| t.is_empty()) {
            return Err(PolicyError {
                field: "keep_tags",
                reason: "holds an empty tag".into(),
            });
        }
        self.keep_within
            .as_deref()
            .map(|s| {
                s.parse::<Span>().map_err(|e| PolicyError {
                    field: "keep_within",
                    reason: e.to_string(),
                })
            })
            .transpose()
    }
}

/// `last 3, daily 7, within 30d, tags keep,release`, or `empty`.
impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = RULES
            .iter()
            .filter_map(|&r| self.count(r).map(|n| format!("{} {n}", r.name())))
            .collect();
        if let Some(w) = &self.keep_within {
            parts.push(format!("within {w}"));
        }
        if !self.keep_tags.is_empty() {
            parts.push(format!("tags {}", self.keep_tags.join(",")));
        }
        if parts.is_empty() {
            f.write_str("empty")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// A calendar duration in restic's syntax: numbers each followed by a unit,
/// `y` years, `m` months, `d` days, `h` hours, plus `w` weeks (7 days; restic
/// lacks it). Each unit at most once, in any order, e.g. `36h`, `30d`, `2w`,
/// `1y`, `1y2m3d`, `2y5m7d3h`. Not zero, no sign, no spaces inside.
///
/// Going back a span from a time is calendar arithmetic as in restic (Go's
/// `AddDate`): years and months are subtracted from the date, a day past
/// the month's end rolls over (2016-03-31 minus `1m` is "2016-02-31", that
/// is 2016-03-02), then days, then hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Span {
    pub years: u32,
    pub months: u32,
    pub weeks: u32,
    pub days: u32,
    pub hours: u32,
}

/// Why a string is not a [`Span`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a duration like 36h, 30d, 2w, 1y2m3d ({why})")]
pub struct SpanError {
    pub text: String,
    pub why: &'static str,
}

impl FromStr for Span {
    type Err = SpanError;

    fn from_str(text: &str) -> Result<Span, SpanError> {
        let err = |why| SpanError {
            text: text.to_string(),
            why,
        };
        if text.is_empty() {
            return Err(err("empty"));
        }
        let mut span = Span::default();
        let mut seen = [false; 5];
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(err("a unit must follow a number"));
            }
            let n: u32 = rest[..digits]
                .parse()
                .map_err(|_| err("number too large"))?;
            let Some(&unit) = rest.as_bytes().get(digits) else {
                return Err(err("the last number has no unit (y, m, w, d or h)"));
            };
            let (slot, i) = match unit {
                b'y' => (&mut span.years, 0),
                b'm' => (&mut span.months, 1),
                b'w' => (&mut span.weeks, 2),
                b'd' => (&mut span.days, 3),
                b'h' => (&mut span.hours, 4),
                _ => return Err(err("units are y, m, w, d and h")),
            };
            if std::mem::replace(&mut seen[i], true) {
                return Err(err("a unit appears twice"));
            }
            *slot = n;
            rest = &rest[digits + 1..];
        }
        if span == Span::default() {
            return Err(err("zero"));
        }
        Ok(span)
    }
}

/// The canonical text, units in the order y m w d h: `1y2m3d`.
impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, unit) in [
            (self.years, 'y'),
            (self.months, 'm'),
            (self.weeks, 'w'),
            (self.days, 'd'),
            (self.hours, 'h'),
        ] {
            if n != 0 {
                write!(f, "{n}{unit}")?;
            }
        }
        Ok(())
    }
}

impl Span {
    /// The time this span before `t` (clamped to the representable range).
    pub fn before(&self, t: Timestamp) -> Timestamp {
        let days = t.sec.div_euclid(86_400);
        let time_of_day = i128::from(t.sec.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        let months = i128::from(y) * 12 + i128::from(m - 1)
            - i128::from(self.years) * 12
            - i128::from(self.months);
        let year = months.div_euclid(12);
        let month = months.rem_euclid(12) as u32 + 1;
        // Years far beyond any real clock: no snapshot can be older.
        let Ok(year) = i64::try_from(year) else {
            return Timestamp {
                sec: i64::MIN,
                nsec: 0,
            };
        };
        let day = i128::from(days_from_civil(year, month, 1)) + i128::from(d)
            - 1
            - 7 * i128::from(self.weeks)
            - i128::from(self.days);
        let sec = day * 86_400 + time_of_day - 3600 * i128::from(self.hours);
        Timestamp {
            sec: sec.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64,
            nsec: t.nsec,
        }
    }
}

/// Keep or remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Keep,
    Remove,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Keep => "keep",
            Action::Remove => "remove",
        }
    }
}

/// What the policy does with one snapshot, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub id: SnapshotId,
    pub time: Timestamp,
    pub machine: String,
    pub source: Vec<u8>,
    pub action: Action,
    /// Never empty. For a kept snapshot, every rule that keeps it: `last 3`,
    /// `daily 2026-11-24`, `oldest monthly 2026-10`, `within 30d`,
    /// `tag release`, `newest of source`, `policy is empty`. For a removed
    /// one, why each rule passed it over: `beyond last 3`,
    /// `daily 2026-11-24 kept a newer one`, `beyond daily 7`,
    /// `not within 30d of the newest`, `no tag release`.
    pub reasons: Vec<String>,
}

/// One decision per snapshot: groups by (machine, source) in byte order,
/// oldest first within a group (as `homesync snapshots` lists them). The
/// same set of snapshots gives the same decisions in any input order. The
/// policy is validated first; see the module documentation for the rules.
pub fn plan(
    snapshots: &[(SnapshotId, Snapshot)],
    policy: &Policy,
    now: Timestamp,
) -> Result<Vec<Decision>, PolicyError> {
    let within = policy.within()?;
    let mut groups: BTreeMap<(&str, &[u8]), Group> = BTreeMap::new();
    for (id, s) in snapshots {
        groups
            .entry((s.machine.as_str(), s.source.as_slice()))
            .or_default()
            .push((id, s));
    }
    let mut out = Vec::with_capacity(snapshots.len());
    for mut group in groups.into_values() {
        // Newest first; equal times: the larger id first.
        group.sort_by(|a, b| b.1.time.cmp(&a.1.time).then(b.0.cmp(a.0)));
        let start = out.len();
        plan_group(&group, policy, within, now, &mut out);
        out[start..].reverse();
    }
    Ok(out)
}

/// The snapshots of one (machine, source).
type Group<'a> = Vec<(&'a SnapshotId, &'a Snapshot)>;

/// Decides one group, walked newest first; appends in that order.
fn plan_group(
    group: &[(&SnapshotId, &Snapshot)],
    policy: &Policy,
    within: Option<Span>,
    now: Timestamp,
    out: &mut Vec<Decision>,
) {
    // Snapshots in the future (a wrong clock) do not move the window; with
    // none in the past, nothing is outside it.
    let newest_past = group.iter().map(|(_, s)| s.time).find(|t| *t <= now);
    let cutoff = within.and_then(|w| newest_past.map(|t| (w, w.before(t))));
    let mut left: Vec<(Rule, u32, u32, Option<i64>)> = RULES
        .iter()
        .filter_map(|&r| policy.count(r).map(|n| (r, n, n, None)))
        .collect();
    let empty = policy.is_empty();
    for (nr, (id, s)) in group.iter().enumerate() {
        let oldest = nr + 1 == group.len();
        let mut keep: Vec<String> = Vec::new();
        let mut why_not: Vec<String> = Vec::new();
        for (rule, count, remaining, last) in &mut left {
            if *remaining == 0 {
                why_not.push(format!("beyond {} {count}", rule.name()));
                continue;
            }
            let bucket = rule.bucket(s.time, nr);
            let label = |prefix: &str| match rule {
                Rule::Last => format!("{prefix}last {count}"),
                r => format!("{prefix}{} {}", r.name(), r.label(s.time)),
            };
            if *last != Some(bucket) {
                keep.push(label(""));
            } else if oldest {
                keep.push(label("oldest "));
            } else {
                why_not.push(format!("{} kept a newer one", label("")));
                continue;
            }
            *last = Some(bucket);
            *remaining -= 1;
        }
        if let Some((span, since)) = cutoff {
            if s.time > since {
                keep.push(format!("within {span}"));
            } else {
                why_not.push(format!("not within {span} of the newest"));
            }
        } else if let Some(span) = within {
            keep.push(format!("within {span}"));
        }
        let tags: Vec<&String> = policy
            .keep_tags
            .iter()
            .filter(|t| s.tags.contains(t))
            .collect();
        if tags.is_empty() {
            if !policy.keep_tags.is_empty() {
                why_not.push(format!("no tag {}", policy.keep_tags.join(",")));
            }
        } else {
            keep.extend(tags.iter().map(|t| format!("tag {t}")));
        }
        if nr == 0 {
            keep.push("newest of source".into());
        }
        if empty {
            keep.push("policy is empty".into());
        }
        let (action, reasons) = if keep.is_empty() {
            (Action::Remove, why_not)
        } else {
            (Action::Keep, keep)
        };
        out.push(Decision {
            id: **id,
            time: s.time,
            machine: s.machine.clone(),
            source: s.source.clone(),
            action,
            reasons,
        });
    }
}

/// The retention part of the server config: a default policy and
/// per-machine overrides. An override replaces the default for its machine
/// wholesale (nothing is merged field by field), so reading one table tells
/// the whole policy of that machine. A machine with neither keeps
/// everything; an empty override keeps everything of that machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    pub default: Option<Policy>,
    pub machines: BTreeMap<String, Policy>,
}

impl Retention {
    /// The policy for `machine`: its override, else the default.
    pub fn policy_for(&self, machine: &str) -> Option<&Policy> {
        self.machines.get(machine).or(self.default.as_ref())
    }
}

/// Year, month (1-12), day (1-31) of a day count since 1970-01-01
/// (Howard Hinnant's civil-from-days, proleptic Gregorian, any year).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The day count since 1970-01-01 of a date; the day may run past the
/// month's end (it then rolls into the next months, as in Go's `AddDate`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// ISO 8601 week-numbering year and week (1-53) of a day count: weeks run
/// Monday to Sunday, and week 1 holds the year's first Thursday.
fn iso_week(days: i64) -> (i64, u32) {
    // 1970-01-01 was a Thursday; Monday = 0.
    let weekday = (days + 3).rem_euclid(7);
    let thursday = days - weekday + 3;
    let (y, _, _) = civil_from_days(thursday);
    let week = (thursday - days_from_civil(y, 1, 1)) / 7 + 1;
    (y, week as u32)
}

/// Parses a UTC time: `YYYY-MM-DD`, `YYYY-MM-DD HH:MM`, `YYYY-MM-DD
/// HH:MM:SS` or with fractional seconds; `T` may stand for the space, and a
/// trailing `Z` is allowed (it is UTC either way). For `HOMESYNC_NOW` and
/// tests.
pub fn parse_utc(text: &str) -> Option<Timestamp> {
    let s = text.strip_suffix('Z').unwrap_or(text);
    let (date, time) = match s.split_once([' ', 'T']) {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let num = |s: &str, len: usize| -> Option<u32> {
        (s.len() == len && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
    };
    let mut parts = date.split('-');
    let y = num(parts.next()?, 4)?;
    let m = num(parts.next()?, 2)?;
    let d = num(parts.next()?, 2)?;
    if parts.next().is_some() || !(1..=12).contains(&m) || d == 0 {
        return None;
    }
    let days = days_from_civil(i64::from(y), m, d);
    if civil_from_days(days) != (i64::from(y), m, d) {
        return None; // e.g. February 30
    }
    let (mut hh, mut mm, mut ss, mut nsec) = (0, 0, 0, 0);
    if let Some(time) = time {
        let (hms, frac) = match time.split_once('.') {
            Some((a, b)) => (a, Some(b)),
            None => (time, None),
        };
        let mut parts = hms.split(':');
        hh = num(parts.next()?, 2)?;
        mm = num(parts.next()?, 2)?;
        if let Some(sec) = parts.next() {
            ss = num(sec, 2)?;
        } else if frac.is_some() {
            return None;
        }
        if parts.next().is_some() || hh > 23 || mm > 59 || ss > 59 {
            return None;
        }
        if let Some(frac) = frac {
            if frac.is_empty() || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            nsec = frac.parse::<u32>().ok()? * 10u32.pow(9 - frac.len() as u32);
        }
    }
    Some(Timestamp {
        sec: days * 86_400 + i64::from(hh * 3600 + mm * 60 + ss),
        nsec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use homesync_protocol::{Node, NodeKind, TreeId};
    use proptest::prelude::*;
    use std::collections::{BTreeSet, HashSet};

    fn ts(s: &str) -> Timestamp {
        parse_utc(s).unwrap_or_else(|| panic!("bad test time {s:?}"))
    }

    fn snap(machine: &str, source: &str, time: Timestamp, tags: &[&str]) -> Snapshot {
        Snapshot {
            time,
            machine: machine.into(),
            source: source.as_bytes().to_vec(),
            root: {
                let mut n = Node::new(b"home".to_vec(), NodeKind::Dir);
                n.subtree = Some(TreeId([7; 32]));
                n
            },
            parent: None,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            stats: Default::default(),
        }
    }

    /// Snapshots of one machine and source at the given times, ids by
    /// position (so equal times stay distinct snapshots, as in restic's
    /// test list).
    fn at(times: &[&str]) -> Vec<(SnapshotId, Snapshot)> {
        times
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let (t, tags) = t.split_once(" [").unwrap_or((t, ""));
                let tags: Vec<&str> = tags
                    .trim_end_matches(']')
                    .split(',')
                    .filter(|t| !t.is_empty())
                    .collect();
                (id(i as u32), snap("m", "/home", ts(t), &tags))
            })
            .collect()
    }

    fn id(n: u32) -> SnapshotId {
        let mut b = [0; 32];
        b[..4].copy_from_slice(&n.to_be_bytes());
        SnapshotId(b)
    }

    fn policy(f: impl FnOnce(&mut Policy)) -> Policy {
        let mut p = Policy::default();
        f(&mut p);
        p
    }

    /// A time far after every test snapshot.
    const LATER: Timestamp = Timestamp {
        sec: 4_000_000_000,
        nsec: 0,
    };

    /// The kept snapshots' times, oldest first, as `YYYY-MM-DD HH:MM:SS`
    /// (`.1` appended for a tenth of a second).
    fn kept(snaps: &[(SnapshotId, Snapshot)], p: &Policy, now: Timestamp) -> Vec<String> {
        plan(snaps, p, now)
            .unwrap()
            .iter()
            .filter(|d| d.action == Action::Keep)
            .map(|d| show(d.time))
            .collect()
    }

    fn show(t: Timestamp) -> String {
        let days = t.sec.div_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        let s = t.sec.rem_euclid(86_400);
        let mut out = format!(
            "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
            s / 3600,
            s / 60 % 60,
            s % 60
        );
        if t.nsec != 0 {
            out.push_str(&format!(".{}", t.nsec / 100_000_000));
        }
        out
    }

    // ---- restic's documentation ("Removing snapshots according to a
    // policy", doc/060_forget.rst) ----

    /// "Suppose you have only made one backup every Sunday for 12 weeks ...
    /// Then `forget --keep-daily 4` will keep the last four snapshots, for
    /// the last four Sundays, and remove the other snapshots."
    #[test]
    fn restic_doc_twelve_sundays_keep_daily_4() {
        let snaps = at(&[
            "2019-09-01 11:00:00",
            "2019-09-08 11:00:00",
            "2019-09-15 11:00:00",
            "2019-09-22 11:00:00",
            "2019-09-29 11:00:00",
            "2019-10-06 11:00:00",
            "2019-10-13 11:00:00",
            "2019-10-20 11:00:00",
            "2019-10-27 11:00:00",
            "2019-11-03 11:00:00",
            "2019-11-10 11:00:00",
            "2019-11-17 11:00:00",
        ]);
        let p = policy(|p| p.keep_daily = Some(4));
        assert_eq!(
            kept(&snaps, &p, LATER),
            [
                "2019-10-27 11:00:00",
                "2019-11-03 11:00:00",
                "2019-11-10 11:00:00",
                "2019-11-17 11:00:00"
            ]
        );
        let d = plan(&snaps, &p, LATER).unwrap();
        assert_eq!(d[11].reasons, ["daily 2019-11-17", "newest of source"]);
        assert_eq!(d[8].reasons, ["daily 2019-10-27"]);
        assert_eq!(d[7].action, Action::Remove);
        assert_eq!(d[7].reasons, ["beyond daily 4"]);
    }

    /// "suppose you make one backup every day for 100 years. Then `forget
    /// --keep-daily 7 --keep-weekly 5 --keep-monthly 12 --keep-yearly 75`
    /// would keep the most recent 7 daily snapshots and 4 last-day-of-the-week
    /// ones (since the 7 dailies already include 1 weekly). Additionally, 12
    /// or 11 last-day-of-the-month snapshots will be kept (depending on
    /// whether one of them ends up being the same as a daily or weekly). And
    /// finally 75 or 74 last-day-of-the-year snapshots are kept".
    ///
    /// Checked by hand for 1924-01-01 to Sunday 2023-12-31 (36525 days):
    /// dailies Dec 25-31; weeklies Dec 31 (a daily) + Dec 24, 17, 10, 3;
    /// monthlies Dec 31 (a daily) + the last days of Jan-Nov 2023; yearlies
    /// Dec 31 2023 (a daily) + Dec 31 of 1949-2022. 7 + 4 + 11 + 74 = 96.
    /// The counts are all used up, so the oldest snapshot is not kept.
    #[test]
    fn restic_doc_hundred_years_of_dailies() {
        let first = days_from_civil(1924, 1, 1);
        let last = days_from_civil(2023, 12, 31);
        let snaps: Vec<_> = (first..=last)
            .map(|day| {
                let t = Timestamp {
                    sec: day * 86_400 + 3 * 3600,
                    nsec: 0,
                };
                (id((day - first) as u32), snap("m", "/home", t, &[]))
            })
            .collect();
        assert_eq!(snaps.len(), 36_525);
        let p = policy(|p| {
            p.keep_daily = Some(7);
            p.keep_weekly = Some(5);
            p.keep_monthly = Some(12);
            p.keep_yearly = Some(75);
        });
        let days: BTreeSet<String> = kept(&snaps, &p, LATER)
            .into_iter()
            .map(|t| t[..10].to_string())
            .collect();
        let mut want: BTreeSet<String> = (25..=31).map(|d| format!("2023-12-{d}")).collect();
        for d in ["03", "10", "17", "24"] {
            want.insert(format!("2023-12-{d}"));
        }
        for (m, d) in [
            (1, 31),
            (2, 28),
            (3, 31),
            (4, 30),
            (5, 31),
            (6, 30),
            (7, 31),
            (8, 31),
            (9, 30),
            (10, 31),
            (11, 30),
        ] {
            want.insert(format!("2023-{m:02}-{d}"));
        }
        for y in 1949..=2022 {
            want.insert(format!("{y}-12-31"));
        }
        assert_eq!(want.len(), 96);
        assert_eq!(days, want);
    }

    // ---- Proxmox Backup Server's documentation (backup-client.rst,
    // "Pruning and Removing Backups": `prune host/elsa --dry-run
    // --keep-daily 1 --keep-weekly 3`). Proxmox applies its options in
    // order; here both rule sets agree. ----

    #[test]
    fn proxmox_doc_keep_daily_1_keep_weekly_3() {
        let snaps = at(&[
            "2019-11-10 10:42:20",
            "2019-11-21 12:36:25",
            "2019-11-22 11:54:47",
            "2019-12-03 09:35:01",
            "2019-12-04 13:20:37",
        ]);
        let p = policy(|p| {
            p.keep_daily = Some(1);
            p.keep_weekly = Some(3);
        });
        let d = plan(&snaps, &p, LATER).unwrap();
        let table: Vec<(String, &str)> = d
            .iter()
            .map(|d| (show(d.time), d.action.as_str()))
            .collect();
        assert_eq!(
            table,
            [
                ("2019-11-10 10:42:20".to_string(), "keep"),
                ("2019-11-21 12:36:25".to_string(), "remove"),
                ("2019-11-22 11:54:47".to_string(), "keep"),
                ("2019-12-03 09:35:01".to_string(), "remove"),
                ("2019-12-04 13:20:37".to_string(), "keep"),
            ]
        );
        assert_eq!(
            d[4].reasons,
            ["daily 2019-12-04", "weekly 2019-W49", "newest of source"]
        );
        assert_eq!(
            d[3].reasons,
            ["beyond daily 1", "weekly 2019-W49 kept a newer one"]
        );
        assert_eq!(d[0].reasons, ["weekly 2019-W45"]);
    }

    // ---- restic's own test list (internal/restic/snapshot_policy_test.go,
    // `testExpireSnapshots`), with policies of its table; each expected set
    // worked out by hand, and those of restic's golden files
    // policy_keep_snapshots_15 and _16 match them. ----

    const RESTIC_LIST: &[&str] = &[
        "2014-09-01 10:20:30",
        "2014-09-02 10:20:30",
        "2014-09-05 10:20:30",
        "2014-09-06 10:20:30",
        "2014-09-08 10:20:30",
        "2014-09-09 10:20:30",
        "2014-09-10 10:20:30",
        "2014-09-11 10:20:30",
        "2014-09-20 10:20:30",
        "2014-09-22 10:20:30",
        "2014-08-08 10:20:30",
        "2014-08-10 10:20:30",
        "2014-08-12 10:20:30",
        "2014-08-13 10:20:30",
        "2014-08-13 10:20:30.1",
        "2014-08-15 10:20:30",
        "2014-08-18 10:20:30",
        "2014-08-20 10:20:30",
        "2014-08-21 10:20:30",
        "2014-08-22 10:20:30",
        "2014-10-01 10:20:30 [foo]",
        "2014-10-02 10:20:30 [foo]",
        "2014-10-05 10:20:30 [foo]",
        "2014-10-06 10:20:30 [foo]",
        "2014-10-08 10:20:30 [foo]",
        "2014-10-09 10:20:30 [foo]",
        "2014-10-10 10:20:30 [foo]",
        "2014-10-11 10:20:30 [foo]",
        "2014-10-20 10:20:30 [foo]",
        "2014-10-22 10:20:30 [foo]",
        "2014-11-08 10:20:30 [foo]",
        "2014-11-10 10:20:30 [foo]",
        "2014-11-12 10:20:30 [foo]",
        "2014-11-13 10:20:30 [foo]",
        "2014-11-13 10:20:30.1 [bar]",
        "2014-11-15 10:20:30 [foo,bar]",
        "2014-11-18 10:20:30",
        "2014-11-20 10:20:30",
        "2014-11-21 10:20:30",
        "2014-11-22 10:20:30",
        "2015-09-01 10:20:30",
        "2015-09-02 10:20:30",
        "2015-09-05 10:20:30",
        "2015-09-06 10:20:30",
        "2015-09-08 10:20:30",
        "2015-09-09 10:20:30",
        "2015-09-10 10:20:30",
        "2015-09-11 10:20:30",
        "2015-09-20 10:20:30",
        "2015-09-22 10:20:30",
        "2015-08-08 10:20:30",
        "2015-08-10 10:20:30",
        "2015-08-12 10:20:30",
        "2015-08-13 10:20:30",
        "2015-08-13 10:20:30.1",
        "2015-08-15 10:20:30",
        "2015-08-18 10:20:30",
        "2015-08-20 10:20:30",
        "2015-08-21 10:20:30",
        "2015-08-22 10:20:30",
        "2015-10-01 10:20:30",
        "2015-10-02 10:20:30",
        "2015-10-05 10:20:30",
        "2015-10-06 10:20:30",
        "2015-10-08 10:20:30",
        "2015-10-09 10:20:30",
        "2015-10-10 10:20:30",
        "2015-10-11 10:20:30",
        "2015-10-20 10:20:30",
        "2015-10-22 10:20:30",
        "2015-10-22 10:20:30",
        "2015-10-22 10:20:30 [foo,bar]",
        "2015-10-22 10:20:30 [foo,bar]",
        "2015-10-22 10:20:30 [foo,bar]",
        "2015-11-08 10:20:30",
        "2015-11-10 10:20:30",
        "2015-11-12 10:20:30",
        "2015-11-13 10:20:30",
        "2015-11-13 10:20:30.1",
        "2015-11-15 10:20:30",
        "2015-11-18 10:20:30",
        "2015-11-20 10:20:30",
        "2015-11-21 10:20:30",
        "2015-11-22 10:20:30",
        "2016-01-01 01:02:03",
        "2016-01-01 01:03:03",
        "2016-01-01 07:08:03",
        "2016-01-03 07:02:03",
        "2016-01-04 10:23:03",
        "2016-01-04 11:23:03",
        "2016-01-04 12:23:03",
        "2016-01-04 12:24:03",
        "2016-01-04 12:28:03",
        "2016-01-04 12:30:03",
        "2016-01-04 16:23:03",
        "2016-01-05 09:02:03",
        "2016-01-06 08:02:03",
        "2016-01-07 10:02:03",
        "2016-01-08 20:02:03",
        "2016-01-09 21:02:03",
        "2016-01-12 21:02:03",
        "2016-01-12 21:08:03",
        "2016-01-18 12:02:03",
    ];

    /// The snapshots of restic's list from `from` on (same list order).
    fn restic_from(from: &str) -> Vec<String> {
        let mut v: Vec<String> = RESTIC_LIST
            .iter()
            .map(|t| t.split(" [").next().unwrap().to_string())
            .filter(|t| t.as_str() >= from)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn restic_table() {
        let snaps = at(RESTIC_LIST);
        assert_eq!(snaps.len(), 103);
        let check = |p: Policy, want: Vec<&str>| {
            let mut want: Vec<String> = want.into_iter().map(String::from).collect();
            want.sort();
            assert_eq!(kept(&snaps, &p, LATER), want, "policy {p}");
        };
        check(
            policy(|p| p.keep_last = Some(5)),
            vec![
                "2016-01-08 20:02:03",
                "2016-01-09 21:02:03",
                "2016-01-12 21:02:03",
                "2016-01-12 21:08:03",
                "2016-01-18 12:02:03",
            ],
        );
        // Fewer snapshots than counts: everything is kept.
        check(
            policy(|p| p.keep_last = Some(200)),
            restic_from("0").iter().map(String::as_str).collect(),
        );
        check(
            policy(|p| p.keep_daily = Some(3)),
            vec![
                "2016-01-09 21:02:03",
                "2016-01-12 21:08:03",
                "2016-01-18 12:02:03",
            ],
        );
        check(
            policy(|p| {
                p.keep_last = Some(5);
                p.keep_daily = Some(5);
            }),
            vec![
                "2016-01-07 10:02:03",
                "2016-01-08 20:02:03",
                "2016-01-09 21:02:03",
                "2016-01-12 21:02:03",
                "2016-01-12 21:08:03",
                "2016-01-18 12:02:03",
            ],
        );
        // The newest of each of 20 hours: 9 hours of 2016 (four snapshots in
        // 2016-01-04 12:xx keep only 12:30) and 3 of 2016-01-01/03, then 8
        // of 2015-11 down to 2015-11-13, where the .1 one is the newer.
        check(
            policy(|p| p.keep_hourly = Some(20)),
            vec![
                "2015-11-13 10:20:30.1",
                "2015-11-15 10:20:30",
                "2015-11-18 10:20:30",
                "2015-11-20 10:20:30",
                "2015-11-21 10:20:30",
                "2015-11-22 10:20:30",
                "2016-01-01 01:03:03",
                "2016-01-01 07:08:03",
                "2016-01-03 07:02:03",
                "2016-01-04 10:23:03",
                "2016-01-04 11:23:03",
                "2016-01-04 12:30:03",
                "2016-01-04 16:23:03",
                "2016-01-05 09:02:03",
                "2016-01-06 08:02:03",
                "2016-01-07 10:02:03",
                "2016-01-08 20:02:03",
                "2016-01-09 21:02:03",
                "2016-01-12 21:08:03",
                "2016-01-18 12:02:03",
            ],
        );
        // ISO weeks: 2016-W03 (Mon 01-18), W02 (01-12), W01 (Sat 01-09),
        // and Sunday 2016-01-03 is in 2015-W53.
        check(
            policy(|p| {
                p.keep_daily = Some(3);
                p.keep_weekly = Some(4);
            }),
            vec![
                "2016-01-03 07:02:03",
                "2016-01-09 21:02:03",
                "2016-01-12 21:08:03",
                "2016-01-18 12:02:03",
            ],
        );
        // Golden file policy_keep_snapshots_15.
        check(
            policy(|p| {
                p.keep_daily = Some(2);
                p.keep_weekly = Some(2);
                p.keep_monthly = Some(6);
            }),
            vec![
                "2014-11-22 10:20:30",
                "2015-08-22 10:20:30",
                "2015-09-22 10:20:30",
                "2015-10-22 10:20:30",
                "2015-11-22 10:20:30",
                "2016-01-12 21:08:03",
                "2016-01-18 12:02:03",
            ],
        );
        // Golden file policy_keep_snapshots_16: three years for ten counts,
        // so the oldest snapshot is kept as well.
        check(
            policy(|p| p.keep_yearly = Some(10)),
            vec![
                "2014-08-08 10:20:30",
                "2014-11-22 10:20:30",
                "2015-11-22 10:20:30",
                "2016-01-18 12:02:03",
            ],
        );
        // Within a span of the newest (2016-01-18 12:02:03).
        check(
            policy(|p| p.keep_within = Some("1d".into())),
            vec!["2016-01-18 12:02:03"],
        );
        check(
            policy(|p| p.keep_within = Some("7d".into())),
            vec![
                "2016-01-12 21:02:03",
                "2016-01-12 21:08:03",
                "2016-01-18 12:02:03",
            ],
        );
        // 13d23h back: 2016-01-04 13:02:03.
        check(
            policy(|p| p.keep_within = Some("13d23h".into())),
            restic_from("2016-01-04 13")
                .iter()
                .map(String::as_str)
                .collect(),
        );
        // 1m back: 2015-12-18 12:02:03: all 19 of 2016.
        check(
            policy(|p| p.keep_within = Some("1m".into())),
            restic_from("2016").iter().map(String::as_str).collect(),
        );
        // 2m2h back: 2015-11-18 10:02:03.
        check(
            policy(|p| p.keep_within = Some("2m2h".into())),
            restic_from("2015-11-18")
                .iter()
                .map(String::as_str)
                .collect(),
        );
        // 1y1m1d back: month 0 of 2015 is December 2014: 2014-12-17.
        check(
            policy(|p| p.keep_within = Some("1y1d1m".into())),
            restic_from("2015").iter().map(String::as_str).collect(),
        );
        assert_eq!(restic_from("2015").len(), 63);
        // Tags foo or bar (restic's `--keep-tag foo --keep-tag bar`), plus
        // the newest, which restic would not keep here.
        check(
            policy(|p| p.keep_tags = vec!["foo".into(), "bar".into()]),
            RESTIC_LIST
                .iter()
                .filter(|t| t.contains('['))
                .map(|t| t.split(" [").next().unwrap())
                .chain(["2016-01-18 12:02:03"])
                .collect(),
        );
    }

    // ---- homesync's own cases ----

    #[test]
    fn reasons_name_every_rule() {
        let snaps = at(&[
            "2026-10-01 09:00:00 [keep]",
            "2026-11-20 09:00:00",
            "2026-11-23 09:00:00",
            "2026-11-24 08:00:00",
            "2026-11-24 09:00:00",
            "2026-11-25 09:00:00",
            "2026-11-26 09:00:00",
        ]);
        let p = policy(|p| {
            p.keep_last = Some(3);
            p.keep_daily = Some(3);
            p.keep_within = Some("3d".into());
            p.keep_tags = vec!["keep".into()];
        });
        let d = plan(&snaps, &p, ts("2026-11-26 12:00:00")).unwrap();
        let reasons: Vec<(&str, Vec<&str>)> = d
            .iter()
            .map(|d| {
                (
                    d.action.as_str(),
                    d.reasons.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        let removed = vec![
            "beyond last 3",
            "beyond daily 3",
            "not within 3d of the newest",
            "no tag keep",
        ];
        assert_eq!(
            reasons,
            [
                ("keep", vec!["tag keep"]),
                ("remove", removed.clone()),
                ("remove", removed),
                ("keep", vec!["within 3d"]),
                ("keep", vec!["last 3", "daily 2026-11-24", "within 3d"]),
                ("keep", vec!["last 3", "daily 2026-11-25", "within 3d"]),
                (
                    "keep",
                    vec![
                        "last 3",
                        "daily 2026-11-26",
                        "within 3d",
                        "newest of source"
                    ]
                ),
            ]
        );
    }

    #[test]
    fn bucket_labels() {
        let t = ts("2026-11-24 13:45:00");
        assert_eq!(Rule::Hourly.label(t), "2026-11-24 13:00");
        assert_eq!(Rule::Daily.label(t), "2026-11-24");
        assert_eq!(Rule::Weekly.label(t), "2026-W48");
        assert_eq!(Rule::Monthly.label(t), "2026-11");
        assert_eq!(Rule::Yearly.label(t), "2026");
        // ISO weeks at year ends.
        for (day, week) in [
            ("2015-12-31", "2015-W53"),
            ("2016-01-03", "2015-W53"),
            ("2016-01-04", "2016-W01"),
            ("2018-12-31", "2019-W01"),
            ("2020-12-31", "2020-W53"),
            ("2021-01-03", "2020-W53"),
            ("2021-01-04", "2021-W01"),
            ("1969-12-29", "1970-W01"),
            ("1900-01-01", "1900-W01"),
        ] {
            assert_eq!(Rule::Weekly.label(ts(day)), week, "{day}");
        }
        // Just before midnight UTC is still the day before.
        assert_eq!(Rule::Daily.label(ts("2026-11-24 23:59:59.9")), "2026-11-24");
        assert_eq!(Rule::Daily.label(ts("1969-12-31 23:59:59")), "1969-12-31");
    }

    #[test]
    fn groups_are_machine_and_source() {
        let mut snaps = Vec::new();
        for (i, (m, src, t)) in [
            ("laptop", "/home", "2026-11-01 10:00:00"),
            ("laptop", "/home", "2026-11-02 10:00:00"),
            ("laptop", "/home", "2026-11-03 10:00:00"),
            ("laptop", "/etc", "2026-10-01 10:00:00"),
            ("desk", "/home", "2026-09-01 10:00:00"),
            ("desk", "/home", "2026-09-02 10:00:00"),
        ]
        .into_iter()
        .enumerate()
        {
            snaps.push((id(i as u32), snap(m, src, ts(t), &[])));
        }
        let p = policy(|p| p.keep_last = Some(1));
        let d = plan(&snaps, &p, LATER).unwrap();
        let got: Vec<String> = d
            .iter()
            .map(|d| {
                format!(
                    "{} {} {} {}",
                    d.machine,
                    String::from_utf8_lossy(&d.source),
                    show(d.time),
                    d.action.as_str()
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                "desk /home 2026-09-01 10:00:00 remove",
                "desk /home 2026-09-02 10:00:00 keep",
                "laptop /etc 2026-10-01 10:00:00 keep",
                "laptop /home 2026-11-01 10:00:00 remove",
                "laptop /home 2026-11-02 10:00:00 remove",
                "laptop /home 2026-11-03 10:00:00 keep",
            ]
        );
    }

    #[test]
    fn within_ignores_snapshots_in_the_future() {
        // A wrong clock stamped one snapshot next year.
        let snaps = at(&[
            "2026-11-20 10:00:00",
            "2026-11-24 10:00:00",
            "2026-11-25 10:00:00",
            "2027-06-01 10:00:00",
        ]);
        let p = policy(|p| p.keep_within = Some("2d".into()));
        assert_eq!(
            kept(&snaps, &p, ts("2026-11-26 00:00:00")),
            [
                "2026-11-24 10:00:00",
                "2026-11-25 10:00:00",
                "2027-06-01 10:00:00"
            ]
        );
        // Once that time has come, the window follows it.
        assert_eq!(
            kept(&snaps, &p, ts("2027-06-01 10:00:00")),
            ["2027-06-01 10:00:00"]
        );
        // Everything in the future: nothing is outside the window.
        assert_eq!(kept(&snaps, &p, ts("2020-01-01 00:00:00")).len(), 4);
        // The window is relative to the newest snapshot, not to now: a
        // machine away for a year keeps its last two days.
        assert_eq!(
            kept(&snaps[..3], &p, ts("2027-11-26 00:00:00")),
            ["2026-11-24 10:00:00", "2026-11-25 10:00:00"]
        );
    }

    #[test]
    fn newest_is_never_removed_and_empty_policy_keeps_all() {
        let snaps = at(&["2026-11-20 10:00:00", "2026-11-21 10:00:00 [x]"]);
        let p = policy(|p| p.keep_tags = vec!["keep".into()]);
        let d = plan(&snaps, &p, LATER).unwrap();
        assert_eq!(d[0].action, Action::Remove);
        assert_eq!(d[0].reasons, ["no tag keep"]);
        assert_eq!(d[1].action, Action::Keep);
        assert_eq!(d[1].reasons, ["newest of source"]);

        let empty = Policy::default();
        assert!(empty.is_empty());
        assert_eq!(empty.to_string(), "empty");
        let d = plan(&snaps, &empty, LATER).unwrap();
        assert!(d.iter().all(|d| d.action == Action::Keep));
        assert_eq!(d[0].reasons, ["policy is empty"]);
        assert!(plan(&[], &p, LATER).unwrap().is_empty());
    }

    #[test]
    fn equal_times_are_ordered_by_id() {
        let snaps = at(&["2026-11-20 10:00:00", "2026-11-20 10:00:00"]);
        let p = policy(|p| p.keep_daily = Some(1));
        let d = plan(&snaps, &p, LATER).unwrap();
        assert_eq!((d[0].id, d[0].action), (id(0), Action::Remove));
        assert_eq!((d[1].id, d[1].action), (id(1), Action::Keep));
    }

    #[test]
    fn validation_names_the_field() {
        for (p, field) in [
            (policy(|p| p.keep_last = Some(0)), "keep_last"),
            (policy(|p| p.keep_hourly = Some(0)), "keep_hourly"),
            (policy(|p| p.keep_daily = Some(0)), "keep_daily"),
            (policy(|p| p.keep_weekly = Some(0)), "keep_weekly"),
            (policy(|p| p.keep_monthly = Some(0)), "keep_monthly"),
            (policy(|p| p.keep_yearly = Some(0)), "keep_yearly"),
            (policy(|p| p.keep_within = Some("3x".into())), "keep_within"),
            (policy(|p| p.keep_within = Some("".into())), "keep_within"),
            (policy(|p| p.keep_tags = vec!["".into()]), "keep_tags"),
        ] {
            let e = p.validate().unwrap_err();
            assert_eq!(e.field, field);
            assert!(e.to_string().starts_with(&format!("`{field}` ")), "{e}");
            assert_eq!(plan(&[], &p, LATER).unwrap_err(), e);
        }
        let e = policy(|p| p.keep_within = Some("3x".into()))
            .validate()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "`keep_within` \"3x\" is not a duration like 36h, 30d, 2w, 1y2m3d (units are y, m, w, d and h)"
        );
    }

    #[test]
    fn policy_from_toml() {
        let p: Policy = toml::from_str(
            "keep_last = 3\nkeep_daily = 7\nkeep_within = \"30d\"\nkeep_tags = [\"keep\"]\n",
        )
        .unwrap();
        assert_eq!(p.to_string(), "last 3, daily 7, within 30d, tags keep");
        p.validate().unwrap();
        let e = toml::from_str::<Policy>("keep_dayly = 7\n").unwrap_err();
        assert!(e.to_string().contains("keep_dayly"), "{e}");
        assert!(toml::from_str::<Policy>("keep_daily = -1\n").is_err());
    }

    #[test]
    fn spans() {
        for (text, span, shown) in [
            ("36h", (0, 0, 0, 0, 36), "36h"),
            ("30d", (0, 0, 0, 30, 0), "30d"),
            ("2w", (0, 0, 2, 0, 0), "2w"),
            ("1y", (1, 0, 0, 0, 0), "1y"),
            ("1y2m3d", (1, 2, 0, 3, 0), "1y2m3d"),
            ("2y5m7d3h", (2, 5, 0, 7, 3), "2y5m7d3h"),
            ("3h1y", (1, 0, 0, 0, 3), "1y3h"),
            ("0y1d", (0, 0, 0, 1, 0), "1d"),
        ] {
            let s: Span = text.parse().unwrap();
            assert_eq!(
                (s.years, s.months, s.weeks, s.days, s.hours),
                span,
                "{text}"
            );
            assert_eq!(s.to_string(), shown);
        }
        for bad in [
            "",
            "5",
            "d",
            "3x",
            "1d1d",
            "-1d",
            "0d",
            "0y0h",
            "1.5d",
            " 1d",
            "1d ",
            "1D",
            "99999999999d",
        ] {
            assert!(bad.parse::<Span>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn going_back_a_span_is_calendar_arithmetic() {
        let back = |from: &str, span: &str| show(span.parse::<Span>().unwrap().before(ts(from)));
        // Go's AddDate: a day past the month's end rolls over.
        assert_eq!(back("2016-03-31 10:00:00", "1m"), "2016-03-02 10:00:00");
        assert_eq!(back("2015-03-31 10:00:00", "1m"), "2015-03-03 10:00:00");
        assert_eq!(back("2016-02-29 10:00:00", "1y"), "2015-03-01 10:00:00");
        assert_eq!(back("2016-01-18 12:02:03", "1y1m1d"), "2014-12-17 12:02:03");
        assert_eq!(back("2026-11-26 12:00:00", "2w"), "2026-11-12 12:00:00");
        assert_eq!(back("2026-11-26 12:00:00", "36h"), "2026-11-25 00:00:00");
        assert_eq!(back("1970-01-01 00:00:00", "1d"), "1969-12-31 00:00:00");
        let far: Span = "4294967295y".parse().unwrap();
        assert!(far.before(ts("2026-01-01")).sec < 0);
        assert_eq!(
            far.before(Timestamp {
                sec: i64::MIN,
                nsec: 0
            })
            .sec,
            i64::MIN
        );
    }

    #[test]
    fn utc_times_parse() {
        assert_eq!(ts("1970-01-01"), Timestamp { sec: 0, nsec: 0 });
        assert_eq!(ts("1970-01-02T00:00:01Z").sec, 86_401);
        assert_eq!(ts("2000-02-29 00:00").sec, 951_782_400);
        assert_eq!(
            ts("1969-12-31 23:59:59.25"),
            Timestamp {
                sec: -1,
                nsec: 250_000_000
            }
        );
        for bad in [
            "",
            "2026",
            "2026-13-01",
            "2026-02-30",
            "2026-11-26 24:00",
            "2026-11-26 12:60",
            "2026-11-26 12",
            "2026-11-26 12:00:00.",
            "2026-11-26 12:00.5",
            "26-11-26",
            "2026-11-26Z12:00",
            "2026-11-26 12:00:00+02:00",
        ] {
            assert!(parse_utc(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn retention_overrides_replace_the_default() {
        let mut r = Retention::default();
        assert_eq!(r.policy_for("a"), None);
        r.default = Some(policy(|p| p.keep_daily = Some(7)));
        r.machines
            .insert("b".into(), policy(|p| p.keep_last = Some(2)));
        assert_eq!(r.policy_for("a").unwrap().to_string(), "daily 7");
        assert_eq!(r.policy_for("b").unwrap().to_string(), "last 2");
    }

    // ---- properties ----

    /// Up to 40 snapshots of 3 machines x 2 sources over about two years,
    /// on whole minutes (so many share hours, days and weeks); some tagged.
    fn snapshots() -> impl Strategy<Value = Vec<(SnapshotId, Snapshot)>> {
        proptest::collection::vec(
            (
                0..3usize,
                0..2usize,
                0..(2 * 366 * 24 * 60i64),
                proptest::sample::subsequence(vec!["keep", "pin", "other"], 0..=2),
            ),
            0..40,
        )
        .prop_map(|v| {
            let base = ts("2025-01-01").sec;
            let mut seen = HashSet::new();
            v.into_iter()
                .map(|(m, s, minute, tags)| {
                    let t = Timestamp {
                        sec: base + minute * 60,
                        nsec: 0,
                    };
                    let s = snap(["a", "b", "c"][m], ["/home", "/etc"][s], t, &tags);
                    (s.id(), s)
                })
                .filter(|(id, _)| seen.insert(*id))
                .collect()
        })
    }

    fn count() -> impl Strategy<Value = Option<u32>> {
        prop_oneof![Just(None), (1..8u32).prop_map(Some)]
    }

    fn span() -> impl Strategy<Value = Option<Span>> {
        prop_oneof![
            Just(None),
            (0..2u32, 0..3u32, 0..2u32, 0..20u32, 0..48u32)
                .prop_filter("not zero", |s| *s != (0, 0, 0, 0, 0))
                .prop_map(|(years, months, weeks, days, hours)| Some(Span {
                    years,
                    months,
                    weeks,
                    days,
                    hours
                })),
        ]
    }

    fn policies() -> impl Strategy<Value = Policy> {
        (
            [count(), count(), count(), count(), count(), count()],
            span(),
            proptest::sample::subsequence(vec!["keep", "pin"], 0..=2),
        )
            .prop_map(|(c, within, tags)| Policy {
                keep_last: c[0],
                keep_hourly: c[1],
                keep_daily: c[2],
                keep_weekly: c[3],
                keep_monthly: c[4],
                keep_yearly: c[5],
                keep_within: within.map(|s| s.to_string()),
                keep_tags: tags.into_iter().map(String::from).collect(),
            })
    }

    fn now() -> impl Strategy<Value = Timestamp> {
        (0..(3 * 366 * 24i64)).prop_map(|h| Timestamp {
            sec: ts("2025-01-01").sec + h * 3600,
            nsec: 0,
        })
    }

    fn kept_ids(d: &[Decision]) -> BTreeSet<SnapshotId> {
        d.iter()
            .filter(|d| d.action == Action::Keep)
            .map(|d| d.id)
            .collect()
    }

    /// Ids and times of one group's snapshots.
    type Times = Vec<(SnapshotId, Timestamp)>;

    /// Each group's snapshots, newest first (ties: larger id first).
    fn groups(snaps: &[(SnapshotId, Snapshot)]) -> Vec<Times> {
        let mut g: BTreeMap<(String, Vec<u8>), Times> = BTreeMap::new();
        for (id, s) in snaps {
            g.entry((s.machine.clone(), s.source.clone()))
                .or_default()
                .push((*id, s.time));
        }
        g.into_values()
            .map(|mut v| {
                v.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
                v
            })
            .collect()
    }

    proptest! {
        #[test]
        fn one_decision_per_snapshot_each_with_reasons(snaps in snapshots(), p in policies(), now in now()) {
            let d = plan(&snaps, &p, now).unwrap();
            let mut got: Vec<SnapshotId> = d.iter().map(|d| d.id).collect();
            let mut want: Vec<SnapshotId> = snaps.iter().map(|(id, _)| *id).collect();
            got.sort();
            want.sort();
            prop_assert_eq!(got, want);
            prop_assert!(d.iter().all(|d| !d.reasons.is_empty()));
        }

        #[test]
        fn newest_of_each_group_is_kept(snaps in snapshots(), p in policies(), now in now()) {
            let kept = kept_ids(&plan(&snaps, &p, now).unwrap());
            for g in groups(&snaps) {
                prop_assert!(kept.contains(&g[0].0));
            }
        }

        #[test]
        fn keep_last_keeps_the_newest_n(snaps in snapshots(), mut p in policies(), n in 1..6u32, now in now()) {
            p.keep_last = Some(n);
            let kept = kept_ids(&plan(&snaps, &p, now).unwrap());
            let only = Policy { keep_last: Some(n), ..Policy::default() };
            let only_kept = kept_ids(&plan(&snaps, &only, now).unwrap());
            let mut newest = BTreeSet::new();
            for g in groups(&snaps) {
                newest.extend(g.iter().take(n as usize).map(|(id, _)| *id));
            }
            prop_assert!(newest.is_subset(&kept));
            prop_assert_eq!(only_kept, newest);
        }

        #[test]
        fn a_larger_policy_keeps_a_superset(
            snaps in snapshots(),
            p in policies(),
            more in ([0..3u32, 0..3, 0..3, 0..3, 0..3, 0..3], span(), any::<bool>()),
            now in now(),
        ) {
            prop_assume!(!p.is_empty());
            let (extra, within, pin) = more;
            let add = |c: Option<u32>, e: u32| match c {
                Some(c) => Some(c + e),
                None => (e > 0).then_some(e),
            };
            let mut q = p.clone();
            q.keep_last = add(p.keep_last, extra[0]);
            q.keep_hourly = add(p.keep_hourly, extra[1]);
            q.keep_daily = add(p.keep_daily, extra[2]);
            q.keep_weekly = add(p.keep_weekly, extra[3]);
            q.keep_monthly = add(p.keep_monthly, extra[4]);
            q.keep_yearly = add(p.keep_yearly, extra[5]);
            let old: Option<Span> = p.keep_within.as_deref().map(|s| s.parse().unwrap());
            q.keep_within = match (old, within) {
                (None, None) => None,
                (a, b) => {
                    let (a, b) = (a.unwrap_or_default(), b.unwrap_or_default());
                    Some(Span {
                        years: a.years + b.years,
                        months: a.months + b.months,
                        weeks: a.weeks + b.weeks,
                        days: a.days + b.days,
                        hours: a.hours + b.hours,
                    }.to_string())
                }
            };
            if pin && !q.keep_tags.contains(&"pin".to_string()) {
                q.keep_tags.push("pin".into());
            }
            let small = kept_ids(&plan(&snaps, &p, now).unwrap());
            let large = kept_ids(&plan(&snaps, &q, now).unwrap());
            prop_assert!(small.is_subset(&large), "{} keeps {:?}, {} keeps {:?}", p, small, q, large);
        }

        #[test]
        fn plan_is_deterministic_and_independent_of_input_order(
            (snaps, shuffled) in snapshots().prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle())),
            p in policies(),
            now in now(),
        ) {
            let a = plan(&snaps, &p, now).unwrap();
            prop_assert_eq!(&a, &plan(&snaps, &p, now).unwrap());
            prop_assert_eq!(&a, &plan(&shuffled, &p, now).unwrap());
        }

        #[test]
        fn tagged_snapshots_are_kept(snaps in snapshots(), mut p in policies(), now in now()) {
            p.keep_tags = vec!["pin".into()];
            let d = plan(&snaps, &p, now).unwrap();
            for (id, s) in &snaps {
                if s.tags.iter().any(|t| t == "pin") {
                    let d = d.iter().find(|d| d.id == *id).unwrap();
                    prop_assert_eq!(d.action, Action::Keep);
                    prop_assert!(d.reasons.contains(&"tag pin".to_string()));
                }
            }
        }

        /// Counting rules alone keep at most the sum of their counts per
        /// group (restic's own check), and for one rule exactly: the newest
        /// snapshot of each of the N newest periods, plus the oldest
        /// snapshot when fewer than N periods exist.
        #[test]
        fn counting_rules_match_a_direct_model(snaps in snapshots(), rule in 0..6usize, n in 1..8u32) {
            let rule = RULES[rule];
            let mut p = Policy::default();
            match rule {
                Rule::Last => p.keep_last = Some(n),
                Rule::Hourly => p.keep_hourly = Some(n),
                Rule::Daily => p.keep_daily = Some(n),
                Rule::Weekly => p.keep_weekly = Some(n),
                Rule::Monthly => p.keep_monthly = Some(n),
                Rule::Yearly => p.keep_yearly = Some(n),
            }
            let kept = kept_ids(&plan(&snaps, &p, LATER).unwrap());
            let mut want = BTreeSet::new();
            for g in groups(&snaps) {
                let mut periods: Vec<i64> = Vec::new();
                for (nr, (id, t)) in g.iter().enumerate() {
                    let b = rule.bucket(*t, nr);
                    if !periods.contains(&b) {
                        periods.push(b);
                        if periods.len() <= n as usize {
                            want.insert(*id);
                        }
                    }
                }
                if periods.len() < n as usize {
                    want.insert(g.last().unwrap().0);
                }
                let in_group = g.iter().filter(|(id, _)| kept.contains(id)).count();
                prop_assert!(in_group <= n as usize);
            }
            prop_assert_eq!(kept, want);
        }

        #[test]
        fn any_times_and_spans_never_panic(
            times in proptest::collection::vec(any::<i64>(), 0..10),
            span in (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()),
            now in any::<i64>(),
        ) {
            let snaps: Vec<_> = times.iter().enumerate().map(|(i, &sec)| {
                (id(i as u32), snap("m", "/", Timestamp { sec, nsec: 0 }, &[]))
            }).collect();
            let span = Span { years: span.0, months: span.1, weeks: span.2, days: span.3, hours: span.4 };
            let p = Policy {
                keep_last: Some(2), keep_hourly: Some(2), keep_daily: Some(2), keep_weekly: Some(2),
                keep_monthly: Some(2), keep_yearly: Some(2),
                keep_within: (span != Span::default()).then(|| span.to_string()),
                keep_tags: vec![],
            };
            let d = plan(&snaps, &p, Timestamp { sec: now, nsec: 0 }).unwrap();
            prop_assert_eq!(d.len(), snaps.len());
        }

        #[test]
        fn civil_dates_round_trip(days in -100_000_000i64..100_000_000) {
            let (y, m, d) = civil_from_days(days);
            prop_assert_eq!(days_from_civil(y, m, d), days);
            prop_assert!((1..=12).contains(&m) && (1..=31).contains(&d));
            let (_, w) = iso_week(days);
            prop_assert!((1..=53).contains(&w));
        }

        #[test]
        fn spans_print_and_parse_back(s in span()) {
            if let Some(s) = s {
                prop_assert_eq!(s.to_string().parse::<Span>().unwrap(), s);
            }
        }
    }
}
