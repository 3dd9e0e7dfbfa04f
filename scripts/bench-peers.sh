#!/usr/bin/env bash
# bench-peers.sh - homesync vs restic (and any other peers.sh tool) on a realistic home, one command.
#
# usage: scripts/bench-peers.sh [DATA_ROOT]          (run as root, from anywhere)
#   DATA_ROOT   where datasets and runs live (default /work/bench-data); keep it OUT of the repo
#               and on the filesystem you want to measure.
# environment:
#   TOOLS="homesync restic"   peers.sh tool names (borg_lz4, rsync_local, ... need those tools)
#   PLUGIN=benches/peers/homesync.sh   peers.sh -x file; benches/peers/remote.sh adds
#                             homesync_quic (QUIC on 127.0.0.1) and restic_sftp (sshd on 127.0.0.1)
#   STEPS="info limits initial mutate incremental restore check"   peers.sh steps, in order
#   BENCH_DIR=<repo>/../shared/bench   where peers.sh, make-home.py, peers-report.py live
#   SCALE=1.0 SEED=42         make-home.py dataset (always --real-src: Debian's linux-source)
#   QUIET_MAX=300             peers.sh -q: wait up to this long for a quiet machine per phase
#   CACHE_MODE=warm           peers.sh -c warm|cold
#   NO_BUILD=1                skip `cargo build --release` (use the binary as it is)
#   HOMESYNC_BIN=...          binary to measure (default target/release/homesync)
#
# What it does:
#   1. scripts/install-bench-deps.sh (apt, only if something is missing)
#   2. cargo build --release
#   3. the pristine dataset DATA_ROOT/pristine-s<SEED>-x<SCALE> (make-home.py --real-src; made once,
#      reused), then a fresh `cp -a` of it as this run's dataset, because peers.sh's `mutate` step
#      edits the dataset in place (mutate-home.py --day 1)
#   4. peers.sh -d RUN/home -w RUN/work -x benches/peers/homesync.sh -t "$TOOLS" -s "$STEPS"
#   5. peers-report.py -> RUN/report.md, plus RUN/summary.md: the tools side by side per phase and
#      homesync's speed goals (met / not met) against restic from the same run
# RUN = DATA_ROOT/runs/<UTC time>; DATA_ROOT/runs/latest points at it.  Older runs keep only their
# results/ and reports: their datasets, repositories and restores are deleted AFTER this run's
# measurements, because ext4 creates files 2-4x slower for minutes after mass deletions (see the
# note at the top of peers.sh); a run that starts within 400 s of such a deletion waits it out.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA_ROOT=${1:-/work/bench-data}
TOOLS=${TOOLS:-homesync restic}
STEPS=${STEPS:-info limits initial mutate incremental restore check}
BENCH_DIR=${BENCH_DIR:-$REPO/../shared/bench}
SCALE=${SCALE:-1.0} SEED=${SEED:-42}
QUIET_MAX=${QUIET_MAX:-300} CACHE_MODE=${CACHE_MODE:-warm}
SETTLE_S=400

log() { printf '[%(%H:%M:%S)T] bench-peers: %s\n' -1 "$*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (the dataset has foreign owners, devices, ACLs)"
[ -f "$BENCH_DIR/peers.sh" ] || die "no peers.sh in BENCH_DIR=$BENCH_DIR"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
mkdir -p "$DATA_ROOT/runs"
DATA_ROOT=$(cd "$DATA_ROOT" && pwd)
case "$DATA_ROOT/" in "$REPO"/*) die "DATA_ROOT $DATA_ROOT is inside the repository; pick another" ;; esac

# 1. tools
"$REPO/scripts/install-bench-deps.sh"

# 2. binary
if [ "${NO_BUILD:-0}" != 1 ]; then
  log "cargo build --release"
  (cd "$REPO" && cargo build --release)
fi
export HOMESYNC_BIN=${HOMESYNC_BIN:-$REPO/target/release/homesync}
[ -x "$HOMESYNC_BIN" ] || die "no homesync binary at $HOMESYNC_BIN"

# 3. dataset: pristine (made once) -> fresh copy for this run
PRISTINE=$DATA_ROOT/pristine-s$SEED-x$SCALE
if [ ! -f "$PRISTINE.done" ]; then
  log "generating $PRISTINE (make-home.py --real-src, about 75 s at scale 1)"
  python3 "$BENCH_DIR/make-home.py" "$PRISTINE" --seed "$SEED" --scale "$SCALE" --real-src --force \
    > "$PRISTINE.log" 2>&1 || { cat "$PRISTINE.log" >&2; die "make-home.py failed"; }
  tail -3 "$PRISTINE.log" >&2
  date +%s > "$DATA_ROOT/.last-mass-delete"   # --force may have deleted an old tree
  touch "$PRISTINE.done"
fi
RUN=$DATA_ROOT/runs/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$RUN"
{
  echo "homesync: $("$HOMESYNC_BIN" --version 2>&1) ($HOMESYNC_BIN), source $(git -C "$REPO" describe --always --dirty 2> /dev/null || echo unknown)"
  echo "dataset: make-home.py --seed $SEED --scale $SCALE --real-src; tools: $TOOLS; steps: $STEPS; cache: $CACHE_MODE"
} > "$RUN/build.txt"
log "copying the dataset to $RUN/home"
cp -a "$PRISTINE" "$RUN/home"
ln -sfn "$RUN" "$DATA_ROOT/runs/latest"

SETTLE=0
if [ -f "$DATA_ROOT/.last-mass-delete" ]; then
  age=$(($(date +%s) - $(cat "$DATA_ROOT/.last-mass-delete")))
  [ "$age" -lt "$SETTLE_S" ] && SETTLE=$((SETTLE_S - age))
fi

# 4. measure
log "peers.sh tools=[$TOOLS] steps=[$STEPS] -> $RUN/work/results"
(
  cd "$REPO"
  bash "$BENCH_DIR/peers.sh" -d "$RUN/home" -w "$RUN/work" -x "$REPO/${PLUGIN:-benches/peers/homesync.sh}" \
    -t "$TOOLS" -s "$STEPS" -c "$CACHE_MODE" -q "$QUIET_MAX" -W "$SETTLE"
) 2>&1 | tee "$RUN/peers.log" || log "peers.sh exited non-zero (see $RUN/peers.log)"
RES=$RUN/work/results
[ -f "$RES/results.tsv" ] || die "peers.sh left no results.tsv"

# 5. report
python3 "$BENCH_DIR/peers-report.py" "$RES" > "$RUN/report.md"
cp "$RES/commands.tsv" "$RUN/commands.tsv" 2> /dev/null || true
{ sed 's/^/    /' "$RUN/build.txt"; echo; } > "$RUN/summary.md"
python3 - "$RES" "$TOOLS" >> "$RUN/summary.md" <<'PY'
import csv, os, sys
out, tools = sys.argv[1], sys.argv[2].split()
rows = list(csv.DictReader(open(os.path.join(out, "results.tsv")), delimiter="\t"))
R = {(r["tool"], r["phase"]): r for r in rows}
def cpu(r): return sum(float(r[k]) for k in ("user_s", "sys_s", "srv_user_s", "srv_sys_s"))
def rss(r): return int(r["maxrss_kib"]) / 1024
def repo(r): return int(r["repo_apparent"]) / 1e6
phases = [("initial", "first backup"), ("nochange", "no-change backup"),
          ("incremental", "backup after a day of edits"), ("restore", "full restore"),
          ("check", "check")]
tools = [t for t in tools if any(k[0] == t for k in R)]
print("| phase | " + " | ".join("%s wall s | %s CPU s | %s peak RSS MiB | %s store MB" % (t, t, t, t) for t in tools) + " |")
print("|---|" + "---:|" * (4 * len(tools)))
for ph, name in phases:
    if not any((t, ph) in R for t in tools):
        continue
    cells = []
    for t in tools:
        r = R.get((t, ph))
        if r is None:
            cells += ["-"] * 4
            continue
        bad = "" if r["rc"] == "0" else " (rc %s)" % r["rc"]
        cells += ["%.2f%s" % (float(r["wall_s"]), bad), "%.2f" % cpu(r), "%.0f" % rss(r), "%.1f" % repo(r)]
    print("| %s | %s |" % (name, " | ".join(cells)))
ds = next((int(r["ds_apparent"]) for r in rows if r["phase"] == "initial"), 0)
print("\nDataset: %.1f MB apparent at the first backup. Store MB = repository apparent size after the phase." % (ds / 1e6))
noisy = ["%s %s %.1f s" % (t, ph, float(R[(t, ph)]["foreign_cpu_s"])) for ph, _ in phases for t in tools
         if (t, ph) in R and float(R[(t, ph)].get("foreign_cpu_s") or 0) >= 1.0]
print("CPU used by other processes during a phase (>= 1 s; that phase's wall time is inflated): %s." % (", ".join(noisy) or "none"))
h, p = "homesync", "restic"
if h in tools and p in tools:
    print("\n| goal (homesync vs restic, same run) | homesync | restic | met? |")
    print("|---|---:|---:|---|")
    def g(name, hv, pv, ok, fmt="%.2f"):
        print("| %s | %s | %s | %s |" % (name, fmt % hv, fmt % pv, "yes" if ok else "**no**"))
    hi, pi = R.get((h, "initial")), R.get((p, "initial"))
    if hi and pi:
        ht, pt = ds / 1e6 / float(hi["wall_s"]), ds / 1e6 / float(pi["wall_s"])
        g("first backup throughput >= 1.5x restic (MB/s)", ht, pt, ht >= 1.5 * pt and hi["rc"] == "0", "%.0f")
        g("first backup store no larger (MB)", repo(hi), repo(pi), repo(hi) <= repo(pi), "%.1f")
    hn, pn = R.get((h, "nochange")), R.get((p, "nochange"))
    if hn and pn:
        g("no-change backup <= 0.5x restic's time (s)", float(hn["wall_s"]), float(pn["wall_s"]),
          float(hn["wall_s"]) <= 0.5 * float(pn["wall_s"]) and hn["rc"] == "0")
    hr, pr = R.get((h, "restore")), R.get((p, "restore"))
    if hr and pr:
        g("full restore at least as fast (s)", float(hr["wall_s"]), float(pr["wall_s"]),
          float(hr["wall_s"]) <= float(pr["wall_s"]) and hr["rc"] == "0")
    for ph, name in phases[:4]:
        a, b = R.get((h, ph)), R.get((p, ph))
        if a and b:
            g("peak RSS <= restic's, %s (MiB)" % name, rss(a), rss(b), rss(a) <= rss(b), "%.0f")
PY
log "report: $RUN/report.md   summary: $RUN/summary.md"
cat "$RUN/summary.md"

# Clean up older runs now that the measurements are done (keep their reports and results/).
for old in "$DATA_ROOT"/runs/*/; do
  old=${old%/}
  [ "$old" = "$RUN" ] || [ -L "$old" ] && continue
  if [ -e "$old/home" ] || [ -e "$old/work/repo" ]; then
    log "deleting the datasets, repositories and restores of $old (results kept)"
    rm -rf "${old:?}/home" "$old/work/repo" "$old/work/cache" "$old/work/borgbase" "$old/work/restore" \
      "$old/work/cpcopy" "$old/work/probe" "$old/work/ssh" "$old/work/rsyncd"
    date +%s > "$DATA_ROOT/.last-mass-delete"
  fi
done
if [[ " $STEPS " == *" restore "* ]]; then date +%s > "$DATA_ROOT/.last-mass-delete"; fi  # peers.sh deleted its restores
log "done"
