#!/usr/bin/env bash
# bench-daemon.sh - the daemon's snapshot after 10 edited files vs a manual
# `homesync backup` vs `restic backup`, on a make-home.py home of 100,000+
# files; then the idle daemon's CPU over IDLE_SECS.
#
# usage: scripts/bench-daemon.sh            (as root)
# env:   W=/var/tmp/bench-daemon  SCALE=2  EXTRA_FILES=60000  IDLE_SECS=600  SEED=42
#
# The home is make-home.py's at SCALE (2: 49.5k files, 4.3 GB) plus a
# mail archive of EXTRA_FILES small messages in 60 folders of 1000 (a
# Maildir-like layout: the large flat directories homes have), for 100k+
# files in all.
#
# For each tool it records wall time, CPU seconds (user+sys), and the file
# system work, counted by `strace -f -c` in a second run of the same step:
# stat-family calls, directory reads (getdents64) and opens. Bytes of file
# contents read come from each tool's own report (homesync's snapshot
# statistics, restic's summary) and, for the daemon, from /proc/PID/io.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${W:-/var/tmp/bench-daemon}
SCALE=${SCALE:-2}
SEED=${SEED:-42}
EXTRA_FILES=${EXTRA_FILES:-60000}
IDLE_SECS=${IDLE_SECS:-600}
BENCH=${BENCH:-../shared/bench}
bash scripts/install-bench-deps.sh --no-linux-source >/dev/null
command -v strace >/dev/null || apt-get install -y strace >/dev/null

cargo build --release --quiet --bin homesync
B=$PWD/target/release/homesync
mkdir -p "$W"
HOME_DIR=$W/home
if [ ! -f "$W/home.done" ]; then
  rm -rf "$HOME_DIR"
  python3 "$BENCH/make-home.py" "$HOME_DIR" --seed "$SEED" --scale "$SCALE" >/dev/null
  touch "$W/home.done"
fi
if [ ! -f "$W/extra.done" ]; then
  python3 - "$HOME_DIR/dave/Maildir" "$EXTRA_FILES" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rnd = random.Random(7)
for i in range(n):
    d = os.path.join(root, f"folder-{i // 1000:03d}", "cur")
    os.makedirs(d, exist_ok=True)
    body = " ".join(rnd.choice(["lorem", "ipsum", "backup", "daemon", "quiet", "home"]) for _ in range(rnd.randint(20, 400)))
    with open(os.path.join(d, f"{1700000000 + i}.{i}.host:2,S"), "w") as f:
        f.write(f"From: a{i}@example.org\nSubject: message {i}\n\n{body}\n")
PY
  touch "$W/extra.done"
fi
FILES=$(find "$HOME_DIR" -type f | wc -l)
DIRS=$(find "$HOME_DIR" -type d | wc -l)
echo "home: $FILES files, $DIRS directories, $(du -sh --apparent-size "$HOME_DIR" | cut -f1) apparent"

# Ten regular text files spread over the tree, edited by appending a line.
mapfile -t ALL < <(find "$HOME_DIR" -type f \( -name '*.c' -o -name '*.txt' -o -name '*.md' -o -name '*.h' -o -name '*.csv' -o -name '*:2,S' \) -size -200k | sort)
pick() { # pick ROUND: 10 files, a different set each round
  local r=$1 n=${#ALL[@]} i
  for i in $(seq 0 9); do echo "${ALL[$(( (i * n / 10 + r * 7919) % n ))]}"; done
}
edit() { local f; for f in $(pick "$1"); do echo "edit round $1 $(date +%s%N)" >>"$f"; done; }

# CPU seconds (user+sys) of PID from /proc: fields 14 and 15, in ticks.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }
rchar_of() { awk '/^rchar/ {print $2}' "/proc/$1/io"; }
# strace -c summary -> "stat=N getdents=N open=N read=N"
syscalls() {
  awk '
    $NF ~ /^(newfstatat|statx|lstat|stat|fstat)$/ {s += $4}
    $NF == "getdents64" {g += $4}
    $NF ~ /^(openat|openat2|open)$/ {o += $4}
    $NF ~ /^(read|pread64)$/ {r += $4}
    END {printf "stat=%d getdents=%d open=%d read=%d", s, g, o, r}' "$1"
}
timed() { # timed LOG CMD...: wall and CPU seconds of CMD
  /usr/bin/time -f "%e %U %S %M" -o "$1" "${@:2}" >"$1.out" 2>"$1.err" || { cat "$1.err" >&2; exit 1; }
  awk '{printf "wall=%.2fs cpu=%.2fs rss=%dMB", $1, $2 + $3, $4 / 1024}' "$1"
}

# ---------------------------------------------------------------- daemon
HS=$W/hs
rm -rf "$HS" && mkdir -p "$HS/state"
"$B" --repo "$HS/store" init >/dev/null
cat >"$HS/client.toml" <<EOF
paths = ["$HOME_DIR"]
state_dir = "$HS/state"
[daemon]
quiet_period = "2s"
max_delay = "10s"
min_battery_percent = 0
EOF
export HOMESYNC_CONFIG=$HS/client.toml
status() { "$B" --json status 2>/dev/null || true; }
jq_num() { python3 -c "import json,sys; d=json.loads(sys.stdin.read() or '{}'); v=d; exec('for k in sys.argv[1].split(\".\"): v=v.get(k) if isinstance(v, dict) else None'); print(v if v is not None else '')" "$1"; }
wait_snapshots() { # wait until the daemon has taken N snapshots and is idle
  local n=$1 st
  for _ in $(seq 1 3000); do
    st=$(status)
    if [ "$(echo "$st" | jq_num snapshots)" -ge "$n" ] 2>/dev/null && [ "$(echo "$st" | jq_num activity)" = idle ]; then return 0; fi
    sleep 0.2
  done
  echo "daemon did not reach $n snapshots: $st" >&2; exit 1
}
HOMESYNC_LOG=info "$B" --repo "$HS/store" daemon 2>"$HS/daemon.log" &
DPID=$!
trap 'kill $DPID 2>/dev/null || true' EXIT
T0=$(date +%s.%N)
wait_snapshots 1
echo "daemon first (full) snapshot: $(echo "$(date +%s.%N) - $T0" | bc) s including $(grep -o 'watching [0-9]* directories[^,]*' "$HS/daemon.log")"
sleep 3 # past the cache's 2-second racy window
C0=$(cpu_of $DPID); R0=$(rchar_of $DPID)
edit 1
wait_snapshots 2
C1=$(cpu_of $DPID); R1=$(rchar_of $DPID)
LAST=$(status)
echo "daemon, 10 files edited: snapshot took $(echo "$LAST" | jq_num last_snapshot.duration_ms) ms" \
  "(from the first change: quiet period 2 s + that), cpu=$(echo "$C1 - $C0" | bc)s, rchar=$(( R1 - R0 )) B," \
  "$(echo "$LAST" | jq_num last_snapshot.dirs_listed) directories listed or patched, $(echo "$LAST" | jq_num last_snapshot.dirs_reused) reused," \
  "read $(echo "$LAST" | jq_num last_snapshot.files_read) files / $(echo "$LAST" | jq_num last_snapshot.bytes_read) B"
sleep 3
# strace attaches to every thread of the process.
strace -f -c -o "$HS/daemon.strace" -p $DPID 2>/dev/null & SPID=$!
sleep 1
edit 2
wait_snapshots 3
kill -INT $SPID; wait $SPID 2>/dev/null || true
echo "  work (another 10 files): $(syscalls "$HS/daemon.strace")"
"$B" pause >/dev/null

# ---------------------------------------------------------------- manual backup
export XDG_CACHE_HOME=$HS/cache
"$B" --repo "$HS/store" --json backup "$HOME_DIR" >/dev/null
sleep 3
edit 3
echo "homesync backup, 10 files edited: $(timed "$HS/manual.time" "$B" --repo "$HS/store" --json backup "$HOME_DIR")" \
  "$(grep -o '"files_read":[0-9]*' "$HS/manual.time.out" | head -1) $(grep -o '"bytes_read":[0-9]*' "$HS/manual.time.out" | head -1)"
edit 4
strace -f -c -o "$HS/manual.strace" "$B" --repo "$HS/store" --json backup "$HOME_DIR" >/dev/null
echo "  work: $(syscalls "$HS/manual.strace")"

# ---------------------------------------------------------------- restic
export RESTIC_PASSWORD=bench RESTIC_REPOSITORY=$W/restic RESTIC_CACHE_DIR=$W/restic-cache
rm -rf "$W/restic" "$W/restic-cache"
restic init >/dev/null
restic backup --quiet "$HOME_DIR" >/dev/null
sleep 3
edit 5
echo "restic backup, 10 files edited: $(timed "$W/restic.time" restic backup --json "$HOME_DIR")" \
  "$(grep '"summary"' "$W/restic.time.out" | grep -o '"files_changed":[0-9]*\|"total_bytes_processed":[0-9]*' | tr '\n' ' ')"
edit 6
strace -f -c -o "$W/restic.strace" restic backup --quiet "$HOME_DIR" >/dev/null
echo "  work: $(syscalls "$W/restic.strace")"

# ---------------------------------------------------------------- idle daemon
"$B" resume >/dev/null
wait_snapshots 4
sleep 5
C0=$(cpu_of $DPID)
strace -f -c -o "$HS/idle.strace" -p $DPID 2>/dev/null & SPID=$!
sleep "$IDLE_SECS"
kill -INT $SPID; wait $SPID 2>/dev/null || true
C1=$(cpu_of $DPID)
echo "idle daemon over ${IDLE_SECS}s: cpu=$(echo "$C1 - $C0" | bc)s, system calls: $(awk '$NF=="total" {print $3}' "$HS/idle.strace" | grep . || echo 0)" \
  "(per hour: $(echo "($C1 - $C0) * 3600 / $IDLE_SECS" | bc -l | cut -c1-6)s)"
echo "daemon RSS: $(awk '/VmRSS/ {print $2 / 1024 " MB"}' /proc/$DPID/status)"
