#!/usr/bin/env bash
# bench-garage.sh - first backup and full restore of the make-home.py home through `homesync serve`
# on 127.0.0.1, with the packs in the store directory ("local") and in a single-node Garage on
# 127.0.0.1 ("garage"), interleaved.
#
# usage: scripts/bench-garage.sh
#   env: DATA=/work/bench-data/pristine-s42-x1.0   the home (make-home.py --real-src; made if missing)
#        RUNS=3                  runs per backend
#        W=/var/tmp/homesync-bench-garage  work directory (wiped first; holds one store and one
#                                restored tree at a time)
#        H=homesync binary (default target/release/homesync, built if missing)
#        S3_EXTRA=""             extra lines for [s3] (e.g. "concurrency = 8")
#   Per run and backend: a fresh store (and a fresh Garage), `homesync serve` with jobs off, a
#   machine credential, then
#     homesync --json --server ADDR --fingerprint FP --credential CRED backup DATA --no-default-excludes
#     homesync --json --server ADDR --fingerprint FP --credential CRED restore latest --target T
#   each timed with a ns clock (wall) and /usr/bin/time -v (client CPU, RSS); the server's and
#   Garage's CPU from /proc/PID/stat around each step; "other" is the machine's busy CPU (/proc/stat)
#   less those three.
#   Results: W/results.tsv, W/summary.md (medians).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA=${DATA:-/work/bench-data/pristine-s42-x1.0}
RUNS=${RUNS:-3}
W=${W:-/var/tmp/homesync-bench-garage}
H=${H:-$REPO/target/release/homesync}
S3_EXTRA=${S3_EXTRA:-}
export LC_ALL=C.UTF-8
die() { echo "bench-garage: $*" >&2; exit 1; }
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

GARAGE=$(bash "$REPO/scripts/garage.sh" install)
[ -x "$H" ] || cargo build --release --manifest-path "$REPO/Cargo.toml"
if [ ! -d "$DATA" ]; then
  log "making $DATA"
  python3 /work/shared/bench/make-home.py --real-src --seed 42 --scale 1.0 "$DATA"
fi
rm -rf "$W"; mkdir -p "$W"
BYTES=$(du -sb --apparent-size "$DATA" | cut -f1)
FILES=$(find "$DATA" -type f | wc -l)
log "dataset $DATA: $BYTES bytes, $FILES files"
printf 'backend\trun\tstep\twall_s\tMB_s\tclient_cpu_s\tclient_rss_kb\tserver_cpu_s\tgarage_cpu_s\tother_cpu_s\n' > "$W/results.tsv"

HZ=$(getconf CLK_TCK)
proc_cpu() { # PID -> CPU seconds (user+sys) so far, 0 if gone
  [ -n "$1" ] && [ -r "/proc/$1/stat" ] || { echo 0; return; }
  awk -v hz="$HZ" '{ sub(/^.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"
}
busy_cpu() { awk -v hz="$HZ" '/^cpu / { print ($2 + $3 + $4 + $7 + $8) / hz }' /proc/stat; }

measure() { # BACKEND RUN STEP SERVERPID GARAGEPID -- command...
  local backend=$1 run=$2 step=$3 spid=$4 gpid=$5; shift 6
  local s0 g0 b0 t0 t1 s1 g1 b1
  s0=$(proc_cpu "$spid"); g0=$(proc_cpu "$gpid"); b0=$(busy_cpu); t0=$(date +%s%N)
  /usr/bin/time -v -o "$W/time.txt" "$@" > "$W/out.json" 2> "$W/err.txt" || {
    cat "$W/err.txt" >&2; die "$backend $step failed"; }
  t1=$(date +%s%N); s1=$(proc_cpu "$spid"); g1=$(proc_cpu "$gpid"); b1=$(busy_cpu)
  local wall cpu rss
  wall=$(echo "($t1 - $t0) / 1000000000" | bc -l)
  cpu=$(awk -F': ' '/User time|System time/ { s += $2 } END { print s }' "$W/time.txt")
  rss=$(awk -F': ' '/Maximum resident/ { print $2 }' "$W/time.txt")
  awk -v b="$backend" -v r="$run" -v st="$step" -v w="$wall" -v bytes="$BYTES" -v c="$cpu" \
      -v rss="$rss" -v s="$(echo "$s1 - $s0" | bc -l)" -v g="$(echo "$g1 - $g0" | bc -l)" \
      -v busy="$(echo "$b1 - $b0" | bc -l)" 'BEGIN {
        o = busy - c - s - g; if (o < 0) o = 0
        printf "%s\t%s\t%s\t%.2f\t%.1f\t%.2f\t%d\t%.2f\t%.2f\t%.2f\n", b, r, st, w, bytes / w / 1e6, c, rss, s, g, o }' \
      >> "$W/results.tsv"
  tail -1 "$W/results.tsv" >&2
}

for run in $(seq 1 "$RUNS"); do
  for backend in local garage; do
    d=$W/$backend; rm -rf "$d"; mkdir -p "$d"
    gpid=""
    extra=$'[jobs]\nretention_every = "off"\ngc_every = "off"\ncheck_every = "off"\nindex_copy_every = "off"\n'
    if [ "$backend" = garage ]; then
      GARAGE=$GARAGE bash "$REPO/scripts/garage.sh" start "$d/garage" 3950 > /dev/null
      gpid=$(cat "$d/garage/pid")
      extra+=$'[s3]\nendpoint = "http://127.0.0.1:3950"\nregion = "garage"\nbucket = "packs"\n'
      extra+=$'access_key_id = "GKtest0000000000000000001"\n'
      extra+=$'secret_access_key = "testsecret0000000000000000000000000000000000000000000000000000001"\n'
      extra+="$S3_EXTRA"$'\n'
    fi
    printf 'store = "store"\nlisten = "127.0.0.1:0"\n%s' "$extra" > "$d/server.toml"
    "$H" --json serve --server-config "$d/server.toml" > "$d/serve.log" 2> "$d/serve.err" &
    spid=$!
    for _ in $(seq 1 200); do grep -q listening "$d/serve.log" 2>/dev/null && break; sleep 0.05; done
    addr=$(grep -o '"address":"[^"]*"' "$d/serve.log" | cut -d'"' -f4)
    fp=$(grep -o '"fingerprint":"[^"]*"' "$d/serve.log" | cut -d'"' -f4)
    cred=$("$H" --json --repo "$d/store" admin add-machine bench | grep -o '"credential":"[^"]*"' | cut -d'"' -f4)
    client=("$H" --json --server "$addr" --fingerprint "$fp" --credential "$cred")
    sync
    measure "$backend" "$run" backup "$spid" "$gpid" -- \
      env XDG_CACHE_HOME="$d/cache" "${client[@]}" backup "$DATA" --no-default-excludes
    sync
    measure "$backend" "$run" restore "$spid" "$gpid" -- \
      "${client[@]}" restore latest --target "$d/restored"
    if [ "$run" = 1 ]; then
      diff -r --no-dereference "$DATA" "$d/restored/$(basename "$DATA")" > "$d/diff.txt" 2>&1 \
        || diff -r --no-dereference "$DATA" "$d/restored" > "$d/diff.txt" 2>&1 || true
      log "$backend fidelity: $(wc -l < "$d/diff.txt") diff lines"
    fi
    kill "$spid"; wait "$spid" 2>/dev/null || true
    [ -n "$gpid" ] && bash "$REPO/scripts/garage.sh" stop "$d/garage"
    rm -rf "$d/restored" "$d/store" "$d/garage"
  done
done

{
  echo "| backend | step | wall s (runs) | MB/s | client CPU s | server CPU s | Garage CPU s | other CPU s |"
  echo "|---|---|---|---:|---:|---:|---:|---:|"
  for step in backup restore; do
    for backend in local garage; do
      awk -F'\t' -v b="$backend" -v st="$step" '$1 == b && $3 == st' "$W/results.tsv" | sort -t$'\t' -k4,4n > "$W/sel"
      n=$(wc -l < "$W/sel"); m=$(( (n + 1) / 2 ))
      runs=$(cut -f4 "$W/sel" | paste -sd, | sed 's/,/, /g')
      awk -F'\t' -v m="$m" -v runs="$runs" 'NR == m {
        printf "| %s | %s | %s (%s) | %s | %s | %s | %s | %s |\n", $1, $3, $4, runs, $5, $6, $8, $9, $10 }' "$W/sel"
    done
  done
} > "$W/summary.md"
cat "$W/summary.md"
