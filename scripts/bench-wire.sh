#!/usr/bin/env bash
# bench-wire.sh - bytes on the wire for a backup after one day of edits: rsync (daemon on
# 127.0.0.1), restic (local repository) and homesync (`homesync serve` on 127.0.0.1, QUIC),
# side by side on the same data.  Run as root, from anywhere.
#
# usage: scripts/bench-wire.sh [DATASET]   (default: the pristine home made by scripts/bench-peers.sh)
#   env: W=workdir (default /tmp/homesync-bench-wire, wiped first; ~7 GB while running)
#        H=homesync binary (default target/release/homesync, built if missing)
#        RSYNC_PORT (8873), HS_PORT (7445), RSYNC_OPTS (default "-a --stats")
#   1. cp -a DATASET to W/src, first backup of it with each tool
#   2. mutate-home.py W/src --day 1, incremental backup with each tool
#   3. no-change backup with each tool (homesync: files_read / bytes_read, goal 0)
#   4. one 4 KiB in-place write near 3/4 of carol/VMs/debian12.img, incremental with each tool
#   5. one same-length UPDATE of a row of carol/data/app.sqlite, incremental with each tool
# Figures: rsync --stats "Total bytes sent/received", restic's summary data_added(_packed), the
# homesync summary's bytes_sent, blob_bytes_sent, delta_bytes_sent, overhead_bytes_sent,
# bytes_received, files_read, bytes_read (n/a where a field is missing), wall time of each run,
# and the server's "session" lines from serve.json after it stops.  MB = 10^6 bytes.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=/work/shared/bench
DS=${1:-/work/bench-data/pristine-s42-x1.0}
W=${W:-/tmp/homesync-bench-wire}
H=${H:-$REPO/target/release/homesync}
RSYNC_PORT=${RSYNC_PORT:-8873}
HS_PORT=${HS_PORT:-7445}
read -r -a RSYNC_OPTS <<< "${RSYNC_OPTS:--a --stats}"
export RESTIC_PASSWORD=bench-wire RESTIC_CACHE_DIR=$W/restic-cache

die() { echo "bench-wire: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (owners, devices, ACLs in the dataset)"
[ -d "$DS" ] || die "no dataset at $DS (scripts/bench-peers.sh makes one)"
for t in rsync restic python3 /usr/bin/time; do command -v "$t" > /dev/null || die "$t missing (apt-get install -y rsync restic time)"; done
if [ ! -x "$H" ]; then
  echo "== building $H"
  cargo build --release --manifest-path "$REPO/Cargo.toml"
fi
[ -x "$H" ] || die "no homesync binary at $H"

tcp_listening() { local hex; hex=$(printf '%04X' "$1"); grep -q "^ *[0-9]*: [0-9A-F]*:$hex 00000000:0000 0A" /proc/net/tcp; }
udp_bound() { local hex; hex=$(printf '%04X' "$1"); grep -q "^ *[0-9]*: [0-9A-F]*:$hex " /proc/net/udp; }
tcp_listening "$RSYNC_PORT" && die "TCP port $RSYNC_PORT is in use (set RSYNC_PORT)"
udp_bound "$HS_PORT" && die "UDP port $HS_PORT is in use (set HS_PORT)"

RSYNCD_PID="" SERVE_PID="" CRED=""
stop_serve() {
  [ -n "$SERVE_PID" ] || return 0
  kill -INT "$SERVE_PID" 2> /dev/null || true
  wait "$SERVE_PID" 2> /dev/null || true
  SERVE_PID=""
}
stop_rsyncd() {
  [ -n "$RSYNCD_PID" ] || return 0
  kill -TERM "$RSYNCD_PID" 2> /dev/null || true
  wait "$RSYNCD_PID" 2> /dev/null || true
  RSYNCD_PID=""
}
cleanup() { stop_serve; stop_rsyncd; }
trap cleanup EXIT
trap 'exit 130' INT TERM

rm -rf "$W"
mkdir -p "$W/logs" "$W/rsync-dest" "$W/rsyncd" "$W/hs-cache" "$W/hs-config"
SRC=$W/src
: > "$W/commands.txt"

# run NAME CMD... : stdout > logs/NAME.out, stderr > logs/NAME.err, wall seconds -> WALL[NAME],
# exit code -> RC[NAME]; the command line goes to commands.txt (credential shown as $CRED).
declare -A WALL RC V
run() {
  local name=$1 line t0 t1 rc=0; shift
  line=$(printf '%q ' "$@")
  [ -n "$CRED" ] && line=${line//"$CRED"/\"\$CRED\"}
  printf '%-16s %s\n' "$name" "$line" >> "$W/commands.txt"
  sync
  t0=$(date +%s.%N)
  "$@" > "$W/logs/$name.out" 2> "$W/logs/$name.err" || rc=$?
  t1=$(date +%s.%N)
  WALL[$name]=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
  RC[$name]=$rc
  [ "$rc" = 0 ] || echo "   ($name: exit $rc, see $W/logs/$name.err)" >&2
}
# ok NAME CODES... : fail unless RC[NAME] is one of CODES (partial backups are tolerated)
ok() {
  local name=$1 c; shift
  for c in "$@"; do [ "${RC[$name]}" = "$c" ] && return 0; done
  tail -20 "$W/logs/$name.err" >&2
  die "$name failed with exit ${RC[$name]}"
}

# ---- the three tools ---------------------------------------------------------------------
start_rsyncd() {
  cat > "$W/rsyncd/rsyncd.conf" << EOF
use chroot = no
numeric ids = yes
max connections = 4
[bench]
  path = $W/rsync-dest
  read only = no
  uid = root
  gid = root
EOF
  rsync --daemon --no-detach --config="$W/rsyncd/rsyncd.conf" --address=127.0.0.1 --port="$RSYNC_PORT" \
    --log-file="$W/rsyncd/rsyncd.log" &
  RSYNCD_PID=$!
  for _ in $(seq 100); do tcp_listening "$RSYNC_PORT" && return 0; sleep 0.05; done
  die "rsync daemon did not start on port $RSYNC_PORT"
}
rsync_backup() {  # rsync_backup PHASE
  local n=rsync.$1
  run "$n" rsync "${RSYNC_OPTS[@]}" "$SRC/" "rsync://127.0.0.1:$RSYNC_PORT/bench/"
  ok "$n" 0 23 24
  V[$n.sent]=$(sed -n 's/^Total bytes sent: *//p' "$W/logs/$n.out" | tr -d ',.')
  V[$n.received]=$(sed -n 's/^Total bytes received: *//p' "$W/logs/$n.out" | tr -d ',.')
}

start_serve() {
  run hs.init "$H" --repo "$W/hs-store" init
  ok hs.init 0
  CRED=$("$H" --repo "$W/hs-store" admin add-machine bench 2> /dev/null)
  [ -n "$CRED" ] || die "admin add-machine printed no credential"
  printf '%-16s %s\n' hs.add-machine "CRED=\$($(printf '%q ' "$H" --repo "$W/hs-store" admin add-machine bench)2> /dev/null)" >> "$W/commands.txt"
  printf '%-16s %s &\n' hs.serve "$(printf '%q ' "$H" --repo "$W/hs-store" --json serve --listen "127.0.0.1:$HS_PORT")> $W/serve.json 2> $W/serve.err" >> "$W/commands.txt"
  "$H" --repo "$W/hs-store" --json serve --listen "127.0.0.1:$HS_PORT" > "$W/serve.json" 2> "$W/serve.err" &
  SERVE_PID=$!
  for _ in $(seq 200); do [ -s "$W/serve.json" ] && break; sleep 0.05; done
  [ -s "$W/serve.json" ] || { cat "$W/serve.err" >&2; die "homesync serve did not start"; }
  FP=$(python3 -c "import json,sys; print(json.loads(open(sys.argv[1]).readline())['fingerprint'])" "$W/serve.json")
}
HS_FIELDS=(bytes_sent blob_bytes_sent delta_bytes_sent overhead_bytes_sent bytes_received files_read bytes_read)
hs_backup() {  # hs_backup PHASE
  local n=hs.$1 f k v
  run "$n" env XDG_CACHE_HOME="$W/hs-cache" XDG_CONFIG_HOME="$W/hs-config" \
    "$H" --json --server "127.0.0.1:$HS_PORT" --fingerprint "$FP" --credential "$CRED" \
    backup --no-default-excludes "$SRC"
  ok "$n" 0 3
  # one "field value" line per field, n/a if the summary lacks it
  while read -r k v; do V[$n.$k]=$v; done < <(python3 - "$W/logs/$n.out" "${HS_FIELDS[@]}" << 'PY'
import json, sys
s = {}
for line in open(sys.argv[1], errors="replace"):
    try:
        j = json.loads(line)
    except ValueError:
        continue
    if isinstance(j, dict) and j.get("message_type") == "summary":
        s = j
for f in sys.argv[2:]:
    print(f, s[f] if isinstance(s.get(f), int) else "n/a")
PY
  )
  for f in "${HS_FIELDS[@]}"; do [ -n "${V[$n.$f]:-}" ] || V[$n.$f]=n/a; done
}

restic_backup() {  # restic_backup PHASE
  local n=restic.$1 k v
  run "$n" restic -r "$W/restic-repo" backup --json --host bench "$SRC"
  ok "$n" 0 3
  while read -r k v; do V[$n.$k]=$v; done < <(python3 - "$W/logs/$n.out" << 'PY'
import json, sys
s = {}
for line in open(sys.argv[1], errors="replace"):
    try:
        j = json.loads(line)
    except ValueError:
        continue
    if isinstance(j, dict) and j.get("message_type") == "summary":
        s = j
for f in ("data_added", "data_added_packed"):
    print(f, s[f] if isinstance(s.get(f), int) else "n/a")
PY
  )
}

backup_all() {  # backup_all PHASE
  echo "== $1: rsync, restic, homesync"
  rsync_backup "$1"; restic_backup "$1"; hs_backup "$1"
  echo "   rsync ${WALL[rsync.$1]} s, sent ${V[rsync.$1.sent]} B | restic ${WALL[restic.$1]} s," \
    "added ${V[restic.$1.data_added]} B | homesync ${WALL[hs.$1]} s, sent ${V[hs.$1.bytes_sent]} B," \
    "read ${V[hs.$1.files_read]} files / ${V[hs.$1.bytes_read]} B"
}

# ---- the run ---------------------------------------------------------------------------------
T_START=$(date +%s)
echo "== copying $DS ($(du -sh --apparent-size "$DS" | cut -f1)) to $SRC"
run copy cp -a "$DS" "$SRC"
ok copy 0

start_rsyncd
run restic.init restic -r "$W/restic-repo" init
ok restic.init 0
start_serve
echo "   rsync daemon pid $RSYNCD_PID on :$RSYNC_PORT, homesync serve pid $SERVE_PID on :$HS_PORT (fingerprint $FP)"

backup_all initial

echo "== mutate-home.py --day 1"
run mutate python3 "$BENCH/mutate-home.py" "$SRC" --day 1
ok mutate 0
backup_all day1
backup_all nochange

VM=$SRC/carol/VMs/debian12.img
echo "== edit: 4 KiB in place near 3/4 of $VM"
run edit-vm python3 -c '
import os, sys
p = sys.argv[1]
off = (os.path.getsize(p) * 3 // 4) // 4096 * 4096
with open(p, "r+b") as f:          # in place: no truncation, holes elsewhere kept
    f.seek(off)
    f.write(os.urandom(4096))
print(f"wrote 4096 random bytes at offset {off} of {p}")
' "$VM"
ok edit-vm 0
cat "$W/logs/edit-vm.out"
backup_all vm

DB=$SRC/carol/data/app.sqlite
echo "== edit: UPDATE one row in the middle of $DB (same length)"
run edit-db python3 -c '
import random, sqlite3, string, sys
con = sqlite3.connect(sys.argv[1])
(nmax,) = con.execute("SELECT max(id) FROM items").fetchone()
rid = nmax // 2 + 7                 # mutate-home.py day D updates nmax // 2 + D
(body,) = con.execute("SELECT body FROM items WHERE id=?", (rid,)).fetchone()
r = random.Random(7)
new = "".join(r.choice(string.ascii_lowercase + " ") for _ in body)
with con:
    con.execute("UPDATE items SET body=? WHERE id=?", (new, rid))
con.close()
print(f"updated items.body of id {rid} ({len(body)} chars) in {sys.argv[1]}")
' "$DB"
ok edit-db 0
cat "$W/logs/edit-db.out"
backup_all db

stop_serve
stop_rsyncd
T_END=$(date +%s)

# ---- report ------------------------------------------------------------------------------------
echo
echo "## bench-wire: $DS, $(date -u +%FT%TZ), $(nproc) cores"
echo
echo "rsync $(rsync --version | head -1 | awk '{print $3}') (daemon on 127.0.0.1, ${RSYNC_OPTS[*]}), $(restic version | cut -d' ' -f1,2), homesync $H"
echo
python3 - "$W/hs-store" "$W/restic-repo" "$W/rsync-dest" << 'PY'
import os, sys
def size(d):
    t = 0
    for dp, dn, fn in os.walk(d):
        for f in fn:
            try:
                t += os.lstat(os.path.join(dp, f)).st_size
            except OSError:
                pass
    return t
print("final sizes: " + ", ".join(f"{n} {size(d)} B" for n, d in
      zip(("homesync store", "restic repo", "rsync mirror (apparent)"), sys.argv[1:])))
PY
echo
{
  for p in initial day1 vm db nochange; do
    printf '%s' "$p"
    for k in rsync.$p.sent rsync.$p.received restic.$p.data_added restic.$p.data_added_packed; do printf '\t%s' "${V[$k]:-n/a}"; done
    for f in "${HS_FIELDS[@]}"; do printf '\t%s' "${V[hs.$p.$f]:-n/a}"; done
    printf '\t%s\t%s\t%s\n' "${WALL[rsync.$p]}" "${WALL[restic.$p]}" "${WALL[hs.$p]}"
  done
} > "$W/figures.tsv"
python3 - "$W/figures.tsv" << 'PY'
import sys
names = {"initial": "first backup", "day1": "day-1 incremental", "vm": "VM 4 KiB edit",
         "db": "DB row edit", "nochange": "no-change"}
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
def b(v):
    return v if not v.isdigit() else f"{int(v)} ({int(v) / 1e6:.2f} MB)"
print("| phase | rsync bytes sent | restic data added | homesync bytes sent | homesync blobs | homesync deltas | homesync overhead |")
print("|---|---:|---:|---:|---:|---:|---:|")
for r in rows:
    print("| " + " | ".join([names[r[0]], b(r[1]), b(r[3]), b(r[5]), b(r[6]), b(r[7]), b(r[8])]) + " |")
print()
print("| phase | rsync received | restic added packed | homesync received | homesync files read | homesync bytes read | wall rsync / restic / homesync (s) |")
print("|---|---:|---:|---:|---:|---:|---:|")
for r in rows:
    print("| " + " | ".join([names[r[0]], b(r[2]), b(r[4]), b(r[9]), r[10], b(r[11]), f"{r[12]} / {r[13]} / {r[14]}"]) + " |")
by = {r[0]: r for r in rows}
if all(by[p][1].isdigit() for p in ("vm", "db", "nochange")):
    base = int(by["nochange"][1])
    print()
    print(f"rsync sends its whole file list on every run ({base} B in the no-change row); net of it, the VM edit"
          f" cost {int(by['vm'][1]) - base} B and the DB edit {int(by['db'][1]) - base} B.")
PY
echo
echo "MB = 10^6 bytes.  rsync: --stats Total bytes sent/received (client side, the daemon receives);"
echo "restic: summary data_added (before compression/packing; data_added_packed needs restic >= 0.17)."
echo
echo "### server sessions (serve.json after shutdown)"
if grep -q '"message_type": *"session"' "$W/serve.json"; then
  grep '"message_type": *"session"' "$W/serve.json"
else
  echo "(none: this homesync serve prints no session lines)"
fi
echo
echo "### commands"
echo '```'
cat "$W/commands.txt"
echo '```'
echo
echo "whole run: $((T_END - T_START)) s; logs in $W/logs (W is left in place: rm -rf $W)"
