#!/usr/bin/env bash
# bench-gc.sh - garbage collection on a store of many snapshots: homesync (embedded store) vs
# restic (local repository) vs borg (if installed), on the same data.  Run as root, from anywhere.
#
# usage: scripts/bench-gc.sh [DATASET]   (default: the pristine home made by scripts/bench-peers.sh)
#   env: W=workdir (default /tmp/homesync-bench-gc, wiped first; ~8 GB while running)
#        H=homesync binary (default target/release/homesync, built if missing)
#        DAYS=days of edits after day 0 (default 50), KEEP=snapshots kept (default 7)
#        DAY_BUDGET=seconds: stop adding days once the day loop has run this long (default 0 = no
#          limit; the days actually done are reported)
#        RESTIC_SPLIT=1: time `restic forget` and `restic prune` apart instead of `forget --prune`
#        NO_BORG=1: leave borg out even if it is installed
#        SAVE_STORE=DIR: copy homesync's store there after `forget`, before `gc` (not timed), to
#          profile or re-time gc on the same store: cp -a DIR S && homesync --repo S gc
#   1. cp -a DATASET to W/src; day 0: first backup with each tool
#   2. days 1..DAYS: mutate-home.py W/src --day D, then a backup with each tool
#   3. retention --keep-last KEEP and space reclaim, timed with /usr/bin/time (wall, CPU, peak RSS):
#        homesync `forget` and `gc` apart, restic `forget --prune`, borg `prune` and `compact` apart;
#        repository sizes (du -sb) and snapshot counts before and after
#   4. homesync: `check --read-data`, restore of the latest snapshot compared with W/src
#      (diff -r --no-dereference: contents and symlink targets, not metadata; entry count, du -sb,
#      regular-file bytes), a second `gc` that must reclaim nothing, then `gc --rewrite-below 1`
#      (what the default gc leaves in packs that are still mostly live)
#   5. homesync: one more day backed up alone, forget, then the next day's backup started at once
#      with `gc` running in the background (both must succeed; the backup's wall time vs the day
#      before's), then `check --read-data`
# The snapshots of a run are minutes apart, not days, so a time policy (--keep-daily) would keep
# one snapshot: every tool uses the count policy --keep-last KEEP instead.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=/work/shared/bench
DS=${1:-/work/bench-data/pristine-s42-x1.0}
W=${W:-/tmp/homesync-bench-gc}
H=${H:-$REPO/target/release/homesync}
DAYS=${DAYS:-50}
KEEP=${KEEP:-7}
DAY_BUDGET=${DAY_BUDGET:-0}
RESTIC_SPLIT=${RESTIC_SPLIT:-0}
export RESTIC_PASSWORD=bench-gc RESTIC_CACHE_DIR=$W/restic-cache
export BORG_BASE_DIR=$W/borg-base BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes \
  BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
export XDG_CACHE_HOME=$W/hs-cache XDG_CONFIG_HOME=$W/hs-config
TFMT='%e s wall, %U user, %S sys, %M KiB peak RSS'

die() { echo "bench-gc: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (owners, devices, ACLs in the dataset)"
[ -d "$DS" ] || die "no dataset at $DS (scripts/bench-peers.sh makes one)"
for t in restic python3 /usr/bin/time diff; do command -v "$t" > /dev/null || die "$t missing (apt-get install -y restic time diffutils)"; done
BORG=0
if [ "${NO_BORG:-0}" != 1 ] && command -v borg > /dev/null; then BORG=1; fi
if [ ! -x "$H" ]; then
  echo "== building $H"
  cargo build --release --manifest-path "$REPO/Cargo.toml"
fi
[ -x "$H" ] || die "no homesync binary at $H"
TOOLS="homesync restic"; [ "$BORG" = 1 ] && TOOLS="$TOOLS borg"

rm -rf "$W"
mkdir -p "$W/logs" "$W/hs-cache" "$W/hs-config" "$W/borg-base"
SRC=$W/src HS=$W/hs RR=$W/restic BR=$W/borg
: > "$W/commands.txt"

# timed_raw NAME CMD... : run under /usr/bin/time; stdout > logs/NAME.out, stderr > logs/NAME.err,
# the time line > logs/NAME.time, exit code > logs/NAME.rc, start/end epochs > logs/NAME.span.
# The first command of each kind goes to commands.txt (day numbers folded to D).
declare -A WALL USR SYS RSS RC SIZE V LOGGED
timed_raw() {
  local name=$1 t0 rc=0; shift
  t0=$(date +%s.%N)
  /usr/bin/time -o "$W/logs/$name.time" -f "$TFMT" "$@" > "$W/logs/$name.out" 2> "$W/logs/$name.err" || rc=$?
  echo "$rc" > "$W/logs/$name.rc"
  echo "$t0 $(date +%s.%N)" > "$W/logs/$name.span"
}
logcmd() {
  local name=$1 key line; shift
  key=$(sed 's/day[0-9]*/dayD/; s/[0-9]*$//' <<< "$name")
  [ -n "${LOGGED[$key]:-}" ] && return 0
  LOGGED[$key]=1
  line=$(printf '%q ' "$@")
  printf '%-18s %s\n' "$key" "${line//"$W"/\$W}" >> "$W/commands.txt"
}
collect() {  # collect NAME : the figures of a timed_raw run into WALL/USR/SYS/RSS/RC
  local name=$1 w u s m
  RC[$name]=$(cat "$W/logs/$name.rc")
  read -r w _ _ u _ s _ m _ < <(tail -1 "$W/logs/$name.time")
  WALL[$name]=$w; USR[$name]=${u%,}; SYS[$name]=${s%,}; RSS[$name]=$m
  [ "${RC[$name]}" = 0 ] || echo "   ($name: exit ${RC[$name]}, see $W/logs/$name.err)" >&2
}
timed() { local name=$1; shift; logcmd "$name" "$@"; sync; timed_raw "$name" "$@"; collect "$name"; }
ok() {  # ok NAME CODES... : fail unless RC[NAME] is one of CODES
  local name=$1 c; shift
  for c in "$@"; do [ "${RC[$name]}" = "$c" ] && return 0; done
  tail -20 "$W/logs/$name.err" >&2
  die "$name failed with exit ${RC[$name]}"
}
size() { du -sb "$1" | cut -f1; }
mb() { python3 -c "print(f'{$1 / 1e6:.1f}')"; }
count_hs() { "$H" --repo "$HS" --json snapshots | grep -c '"message_type":"snapshot"\|"message_type": "snapshot"' || true; }
count_restic() { restic -r "$RR" snapshots --json | python3 -c 'import json, sys; print(len(json.load(sys.stdin) or []))'; }
count_borg() { borg list --short "$BR" | wc -l; }
jfield() {  # jfield FILE TYPE FIELD : FIELD of the last JSON line of message_type TYPE in FILE
  python3 - "$@" << 'PY'
import json, sys
v = "n/a"
for line in open(sys.argv[1], errors="replace"):
    try:
        j = json.loads(line)
    except ValueError:
        continue
    if isinstance(j, dict) and j.get("message_type") == sys.argv[2] and sys.argv[3] in j:
        v = j[sys.argv[3]]
print(v)
PY
}

# ---- backups -----------------------------------------------------------------------------------
backup_hs() { timed "$1" "$H" --repo "$HS" --json backup --no-default-excludes "$SRC"; ok "$1" 0 3; }
backup_restic() { timed "$1" restic -r "$RR" backup --json --host bench "$SRC"; ok "$1" 0 3; }
backup_borg() { timed "$1" borg create --compression lz4 "$BR::$2" "$SRC"; ok "$1" 0 1; }
backup_all() {  # backup_all DAY
  backup_hs "hs.day$1"
  backup_restic "restic.day$1"
  [ "$BORG" = 1 ] && backup_borg "borg.day$1" "day$1"
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "${WALL[mutate.day$1]:-}" "${WALL[hs.day$1]}" "${WALL[restic.day$1]}" \
    "${WALL[borg.day$1]:-}" >> "$W/days.tsv"
}

T_START=$(date +%s)
echo "== tools: homesync $H ($("$H" --version 2> /dev/null || echo '?')), $(restic version | cut -d' ' -f1,2)$([ "$BORG" = 1 ] && echo ", $(borg --version)")"
[ "$BORG" = 1 ] || echo "   borg not installed (or NO_BORG=1): left out"
echo "== copying $DS ($(du -sh --apparent-size "$DS" | cut -f1)) to $SRC"
timed copy cp -a "$DS" "$SRC"
ok copy 0

timed hs.init "$H" --repo "$HS" init; ok hs.init 0
timed restic.init restic -r "$RR" init; ok restic.init 0
if [ "$BORG" = 1 ]; then timed borg.init borg init -e none "$BR"; ok borg.init 0; fi
: > "$W/days.tsv"
echo "== day 0: first backup with $TOOLS"
backup_all 0
echo "   homesync ${WALL[hs.day0]} s, restic ${WALL[restic.day0]} s$([ "$BORG" = 1 ] && echo ", borg ${WALL[borg.day0]} s")"

T_DAYS=$(date +%s)
DONE=0
for d in $(seq 1 "$DAYS"); do
  if [ "$DAY_BUDGET" != 0 ] && [ $(($(date +%s) - T_DAYS)) -ge "$DAY_BUDGET" ]; then
    echo "   day budget of $DAY_BUDGET s used up: stopping after day $DONE of $DAYS"
    break
  fi
  timed "mutate.day$d" python3 "$BENCH/mutate-home.py" "$SRC" --day "$d"
  ok "mutate.day$d" 0
  backup_all "$d"
  DONE=$d
  echo "== day $d: mutate ${WALL[mutate.day$d]} s | homesync ${WALL[hs.day$d]} s, restic ${WALL[restic.day$d]} s$([ "$BORG" = 1 ] && echo ", borg ${WALL[borg.day$d]} s")"
done
T_DAYS_END=$(date +%s)

# ---- retention and reclaim -----------------------------------------------------------------------
echo "== retention --keep-last $KEEP and reclaim, $((DONE + 1)) snapshots each"
SIZE[hs.before]=$(size "$HS"); V[hs.n_before]=$(count_hs)
timed hs.forget "$H" --repo "$HS" forget --keep-last "$KEEP"; ok hs.forget 0
SIZE[hs.mid]=$(size "$HS"); V[hs.n_after]=$(count_hs)
if [ -n "${SAVE_STORE:-}" ]; then rm -rf "$SAVE_STORE"; cp -a "$HS" "$SAVE_STORE"; sync; fi
timed hs.gc "$H" --repo "$HS" --json gc; ok hs.gc 0
SIZE[hs.after]=$(size "$HS")
for f in bytes_reclaimed blobs_deleted blob_bytes_deleted packs_deleted packs_rewritten deferred condemned; do
  V[hs.gc.$f]=$(jfield "$W/logs/hs.gc.out" gc "$f")
done
echo "   homesync: forget ${WALL[hs.forget]} s, gc ${WALL[hs.gc]} s; $(mb "${SIZE[hs.before]}") -> $(mb "${SIZE[hs.after]}") MB"

SIZE[restic.before]=$(size "$RR"); V[restic.n_before]=$(count_restic)
if [ "$RESTIC_SPLIT" = 1 ]; then
  timed restic.forget restic -r "$RR" forget --keep-last "$KEEP"; ok restic.forget 0
  SIZE[restic.mid]=$(size "$RR")
  timed restic.prune restic -r "$RR" prune; ok restic.prune 0
else
  timed restic.forget restic -r "$RR" forget --keep-last "$KEEP" --prune; ok restic.forget 0
fi
SIZE[restic.after]=$(size "$RR"); V[restic.n_after]=$(count_restic)
echo "   restic: $(mb "${SIZE[restic.before]}") -> $(mb "${SIZE[restic.after]}") MB"

if [ "$BORG" = 1 ]; then
  SIZE[borg.before]=$(size "$BR"); V[borg.n_before]=$(count_borg)
  timed borg.prune borg prune --keep-last "$KEEP" "$BR"; ok borg.prune 0
  SIZE[borg.mid]=$(size "$BR"); V[borg.n_after]=$(count_borg)
  timed borg.compact borg compact "$BR"; ok borg.compact 0
  SIZE[borg.after]=$(size "$BR")
  echo "   borg: $(mb "${SIZE[borg.before]}") -> $(mb "${SIZE[borg.mid]}") (prune) -> $(mb "${SIZE[borg.after]}") MB (compact)"
fi

# ---- homesync: verify ----------------------------------------------------------------------------
echo "== homesync: check --read-data, restore latest, second gc"
timed hs.check "$H" --repo "$HS" check --read-data; ok hs.check 0
timed hs.restore "$H" --repo "$HS" --json restore latest -t "$W/restore"; ok hs.restore 0
logcmd diff diff -r --no-dereference "$SRC" "$W/restore"
RC[diff]=0
diff -r --no-dereference "$SRC" "$W/restore" > "$W/logs/diff.out" 2>&1 || RC[diff]=$?
V[diff.lines]=$(wc -l < "$W/logs/diff.out")
# diff cannot compare special files: "File A is a fifo while file B is a fifo" is no difference
V[diff.special]=$(grep -cE '^File .* is a (fifo|socket|character special file|block special file) while file .* is a (fifo|socket|character special file|block special file)$' "$W/logs/diff.out" || true)
V[diff.real]=$((${V[diff.lines]} - ${V[diff.special]}))
V[src.files]=$(find "$SRC" | wc -l); V[restore.files]=$(find "$W/restore" | wc -l)
V[src.bytes]=$(size "$SRC"); V[restore.bytes]=$(size "$W/restore")
fbytes() { find "$1" -type f -printf '%s\n' | awk '{ t += $1 } END { printf "%.0f\n", t }'; }
V[src.fbytes]=$(fbytes "$SRC"); V[restore.fbytes]=$(fbytes "$W/restore")
echo "   regular-file bytes ${V[src.fbytes]} / ${V[restore.fbytes]}"
echo "   check exit ${RC[hs.check]}; diff -r exit ${RC[diff]} (${V[diff.real]} differences, ${V[diff.special]} special files diff cannot compare);" \
  "entries ${V[src.files]} / ${V[restore.files]}, du -sb ${V[src.bytes]} / ${V[restore.bytes]} (src / restore)"
rm -rf "$W/restore"
timed hs.gc2 "$H" --repo "$HS" --json gc; ok hs.gc2 0
SIZE[hs.after2]=$(size "$HS")
V[hs.gc2.bytes_reclaimed]=$(jfield "$W/logs/hs.gc2.out" gc bytes_reclaimed)
V[hs.gc2.blobs_deleted]=$(jfield "$W/logs/hs.gc2.out" gc blobs_deleted)
V[hs.gc2.packs]=$(jfield "$W/logs/hs.gc2.out" gc packs_deleted)/$(jfield "$W/logs/hs.gc2.out" gc packs_rewritten)
echo "   second gc: ${WALL[hs.gc2]} s, reclaimed ${V[hs.gc2.bytes_reclaimed]} B, ${V[hs.gc2.blobs_deleted]} blobs deleted, store ${SIZE[hs.after]} -> ${SIZE[hs.after2]} B"
# The default gc rewrites only packs below REWRITE_BELOW (0.5) live bytes: how much dead data the
# kept packs still hold shows in a gc that rewrites every pack with any dead bytes.
timed hs.gcfull "$H" --repo "$HS" --json gc --rewrite-below 1; ok hs.gcfull 0
SIZE[hs.after4]=$(size "$HS")
V[hs.gcfull.packs]=$(jfield "$W/logs/hs.gcfull.out" gc packs_rewritten)
echo "   gc --rewrite-below 1: ${WALL[hs.gcfull]} s, $(mb "${SIZE[hs.after2]}") -> $(mb "${SIZE[hs.after4]}") MB, ${V[hs.gcfull.packs]} packs rewritten"

# ---- homesync: a backup while gc runs ------------------------------------------------------------
# Day P = DONE+1: a plain backup (the reference) and a forget, so that gc has a snapshot's garbage;
# day C = DONE+2: gc in the background and the backup started at once.
P=$((DONE + 1)) C=$((DONE + 2))
echo "== homesync: day $P backup alone, forget, then day $C backup while gc runs"
timed "mutate.day$P" python3 "$BENCH/mutate-home.py" "$SRC" --day "$P"; ok "mutate.day$P" 0
backup_hs "hs.day$P"
timed hs.forget3 "$H" --repo "$HS" forget --keep-last "$KEEP"; ok hs.forget3 0
V[hs.n3]=$(count_hs)
timed "mutate.day$C" python3 "$BENCH/mutate-home.py" "$SRC" --day "$C"; ok "mutate.day$C" 0
SIZE[hs.before3]=$(size "$HS")
logcmd hs.gc-bg "$H" --repo "$HS" --json gc
logcmd hs.backup-during-gc "$H" --repo "$HS" --json backup --no-default-excludes "$SRC"
sync
timed_raw hs.gc3 "$H" --repo "$HS" --json gc &
GC_PID=$!
timed_raw "hs.day$C" "$H" --repo "$HS" --json backup --no-default-excludes "$SRC"
collect "hs.day$C"
wait "$GC_PID" || true
collect hs.gc3
read -r GS GE < "$W/logs/hs.gc3.span"; read -r BS BE < "$W/logs/hs.day$C.span"
V[overlap]=$(python3 -c "print(f'{max(0.0, min($GE, $BE) - max($GS, $BS)):.2f}')")
V[bs_after_gs]=$(python3 -c "print(f'{$BS - $GS:.2f}')")
SIZE[hs.after3]=$(size "$HS")
timed hs.check3 "$H" --repo "$HS" check --read-data
# what the concurrent gc deferred (condemned while the backup's session was open) goes now
timed hs.gc4 "$H" --repo "$HS" --json gc; ok hs.gc4 0
echo "   gc exit ${RC[hs.gc3]} (${WALL[hs.gc3]} s), backup exit ${RC[hs.day$C]} (${WALL[hs.day$C]} s;" \
  "day $P alone: ${WALL[hs.day$P]} s), overlap ${V[overlap]} s; check --read-data exit ${RC[hs.check3]}"
T_END=$(date +%s)

# ---- report --------------------------------------------------------------------------------------
echo
echo "## bench-gc: $DS, $(date -u +%FT%TZ), $(nproc) cores"
echo
echo "homesync $H, $(restic version | cut -d' ' -f1,2)$([ "$BORG" = 1 ] && echo ", $(borg --version) (lz4, unencrypted)" || echo "; borg not installed: left out")."
echo "Day 0 plus $DONE days of mutate-home.py$([ "$DONE" -lt "$DAYS" ] && echo " (of DAYS=$DAYS: DAY_BUDGET=$DAY_BUDGET s ran out)"), one backup per tool per day: $((DONE + 1)) snapshots each."
echo "Policy: --keep-last $KEEP for every tool. The backups of this run are minutes apart, not days"
echo "apart, so a time policy such as --keep-daily would keep a single snapshot; a count policy"
echo "selects the same $KEEP newest snapshots in each tool regardless of their times."
echo
{
  row() {  # row TOOL STEP NAME SIZE_BEFORE SIZE_AFTER N_BEFORE N_AFTER NOTE
    local d=$(( $4 - $5 ))
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$1" "$2" "${WALL[$3]}" \
      "$(python3 -c "print(f'{${USR[$3]} + ${SYS[$3]}:.2f}')") (${USR[$3]} + ${SYS[$3]})" \
      "$(python3 -c "print(f'{${RSS[$3]} / 1024:.0f}')")" "$(mb "$4")" "$(mb "$5")" "$(mb "$d")" "$6 -> $7" "$8"
  }
  echo "| tool | step | wall s | CPU s (user + sys) | peak RSS MiB | repo MB before | repo MB after | MB reclaimed | snapshots | note |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---|---|"
  row homesync "forget --keep-last $KEEP" hs.forget "${SIZE[hs.before]}" "${SIZE[hs.mid]}" "${V[hs.n_before]}" "${V[hs.n_after]}" ""
  row homesync gc hs.gc "${SIZE[hs.mid]}" "${SIZE[hs.after]}" "${V[hs.n_after]}" "${V[hs.n_after]}" \
    "gc says: ${V[hs.gc.bytes_reclaimed]} B reclaimed; ${V[hs.gc.blobs_deleted]} blobs (${V[hs.gc.blob_bytes_deleted]} B) deleted, ${V[hs.gc.deferred]} deferred, packs ${V[hs.gc.packs_deleted]} deleted / ${V[hs.gc.packs_rewritten]} rewritten"
  printf '| homesync | **forget + gc** | %s | %s | %s | %s | %s | %s | %s | |\n' \
    "$(python3 -c "print(f'{${WALL[hs.forget]} + ${WALL[hs.gc]}:.2f}')")" \
    "$(python3 -c "print(f'{${USR[hs.forget]} + ${SYS[hs.forget]} + ${USR[hs.gc]} + ${SYS[hs.gc]}:.2f}')")" \
    "$(python3 -c "print(f'{max(${RSS[hs.forget]}, ${RSS[hs.gc]}) / 1024:.0f}')")" \
    "$(mb "${SIZE[hs.before]}")" "$(mb "${SIZE[hs.after]}")" "$(mb "$((${SIZE[hs.before]} - ${SIZE[hs.after]}))")" \
    "${V[hs.n_before]} -> ${V[hs.n_after]}"
  row homesync "then: gc --rewrite-below 1" hs.gcfull "${SIZE[hs.after2]}" "${SIZE[hs.after4]}" "${V[hs.n_after]}" "${V[hs.n_after]}" \
    "extra step, not in the sum: every pack with dead bytes rewritten (${V[hs.gcfull.packs]} packs); the default gc rewrites packs under 50% live"
  if [ "$RESTIC_SPLIT" = 1 ]; then
    row restic "forget --keep-last $KEEP" restic.forget "${SIZE[restic.before]}" "${SIZE[restic.mid]}" "${V[restic.n_before]}" "${V[restic.n_after]}" ""
    row restic prune restic.prune "${SIZE[restic.mid]}" "${SIZE[restic.after]}" "${V[restic.n_after]}" "${V[restic.n_after]}" ""
  else
    row restic "forget --keep-last $KEEP --prune" restic.forget "${SIZE[restic.before]}" "${SIZE[restic.after]}" "${V[restic.n_before]}" "${V[restic.n_after]}" "one command"
  fi
  if [ "$BORG" = 1 ]; then
    row borg "prune --keep-last $KEEP" borg.prune "${SIZE[borg.before]}" "${SIZE[borg.mid]}" "${V[borg.n_before]}" "${V[borg.n_after]}" ""
    row borg compact borg.compact "${SIZE[borg.mid]}" "${SIZE[borg.after]}" "${V[borg.n_after]}" "${V[borg.n_after]}" ""
    printf '| borg | **prune + compact** | %s | %s | %s | %s | %s | %s | %s | |\n' \
      "$(python3 -c "print(f'{${WALL[borg.prune]} + ${WALL[borg.compact]}:.2f}')")" \
      "$(python3 -c "print(f'{${USR[borg.prune]} + ${SYS[borg.prune]} + ${USR[borg.compact]} + ${SYS[borg.compact]}:.2f}')")" \
      "$(python3 -c "print(f'{max(${RSS[borg.prune]}, ${RSS[borg.compact]}) / 1024:.0f}')")" \
      "$(mb "${SIZE[borg.before]}")" "$(mb "${SIZE[borg.after]}")" "$(mb "$((${SIZE[borg.before]} - ${SIZE[borg.after]}))")" \
      "${V[borg.n_before]} -> ${V[borg.n_after]}"
  fi
}
echo
echo "Repository sizes: du -sb of the repository directory (caches are kept outside it). MB = 10^6 bytes."
echo
echo "### daily backups (wall s)"
echo
python3 - "$W/days.tsv" << 'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
cols = {"mutate": 1, "homesync": 2, "restic": 3, "borg": 4}
print("| | " + " | ".join(cols) + " |")
print("|---|" + "---:|" * len(cols))
def cell(rs, i, f):
    v = [float(r[i]) for r in rs if len(r) > i and r[i]]
    return f(v) if v else "n/a"
print("| day 0 (first backup) | " + " | ".join(cell(rows[:1], i, lambda v: f"{v[0]:.1f}") for i in cols.values()) + " |")
inc = rows[1:]
if inc:
    print(f"| days 1-{inc[-1][0]}: median (min-max) | " + " | ".join(
        cell(inc, i, lambda v: f"{statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})") for i in cols.values()) + " |")
    print(f"| day {inc[-1][0]} | " + " | ".join(cell(inc[-1:], i, lambda v: f"{v[0]:.1f}") for i in cols.values()) + " |")
PY
echo
echo "### homesync verification"
echo
echo "| check | result |"
echo "|---|---|"
echo "| check --read-data after gc | exit ${RC[hs.check]}, ${WALL[hs.check]} s |"
echo "| restore latest (${WALL[hs.restore]} s) vs W/src: diff -r --no-dereference | exit ${RC[diff]}: ${V[diff.real]} differences, plus ${V[diff.special]} \"File A is a fifo/socket while file B is a fifo/socket\" lines (special files, which diff cannot compare)$([ "${V[diff.real]}" != 0 ] && echo " (first: $(grep -vE ' while file .* is a ' "$W/logs/diff.out" | head -3 | sed "s|$W|W|g" | tr '\n' ';' | cut -c1-300))") |"
echo "| entries (find \| wc -l) src / restore | ${V[src.files]} / ${V[restore.files]} |"
echo "| du -sb src / restore (counts directory sizes too) | ${V[src.bytes]} / ${V[restore.bytes]} |"
echo "| regular-file bytes (find -type f, sum of sizes) src / restore | ${V[src.fbytes]} / ${V[restore.fbytes]} |"
echo "| second gc | ${WALL[hs.gc2]} s; bytes_reclaimed ${V[hs.gc2.bytes_reclaimed]}, blobs_deleted ${V[hs.gc2.blobs_deleted]}, packs deleted/rewritten ${V[hs.gc2.packs]}; store ${SIZE[hs.after]} -> ${SIZE[hs.after2]} B |"
echo "| day $C backup during gc (day $P backed up alone, then forget: ${V[hs.n3]} snapshots left; store $(mb "${SIZE[hs.before3]}") MB -> $(mb "${SIZE[hs.after3]}") MB) | backup exit ${RC[hs.day$C]}, ${WALL[hs.day$C]} s wall (day $P alone: ${WALL[hs.day$P]} s); gc exit ${RC[hs.gc3]}, ${WALL[hs.gc3]} s wall, bytes_reclaimed $(jfield "$W/logs/hs.gc3.out" gc bytes_reclaimed), blobs_deleted $(jfield "$W/logs/hs.gc3.out" gc blobs_deleted), deferred $(jfield "$W/logs/hs.gc3.out" gc deferred); backup started ${V[bs_after_gs]} s after gc, overlap ${V[overlap]} s |"
echo "| check --read-data after that | exit ${RC[hs.check3]}, ${WALL[hs.check3]} s |"
echo "| gc once more, no backup running | exit ${RC[hs.gc4]}, ${WALL[hs.gc4]} s; blobs_deleted $(jfield "$W/logs/hs.gc4.out" gc blobs_deleted), deferred $(jfield "$W/logs/hs.gc4.out" gc deferred), bytes_reclaimed $(jfield "$W/logs/hs.gc4.out" gc bytes_reclaimed) |"
echo
echo "### commands (run with RESTIC_PASSWORD, RESTIC_CACHE_DIR=\$W/restic-cache, BORG_BASE_DIR=\$W/borg-base,"
echo "XDG_CACHE_HOME=\$W/hs-cache, XDG_CONFIG_HOME=\$W/hs-config; each under /usr/bin/time -f '$TFMT')"
echo
echo '```'
cat "$W/commands.txt"
echo "(background: hs.gc-bg, then hs.backup-during-gc at once)"
echo '```'
echo
echo "whole run: $((T_END - T_START)) s (day loop $((T_DAYS_END - T_DAYS)) s); logs in $W/logs (W is left in place: rm -rf $W)"
echo "Absolute times come from a shared, noisy machine with a warm page cache: compare tools side by side in one run."
