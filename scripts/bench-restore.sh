#!/usr/bin/env bash
# bench-restore.sh - full restore onto an empty directory: homesync over QUIC on 127.0.0.1
# (`homesync serve` + `homesync restore --server ... --ready-file`) side by side with restic
# (local repository) and borg (local repository, if installed), on the make-home.py home at one or
# more scales.  Run as root (owners, devices, ACLs in the dataset), from anywhere.
#
# usage: scripts/bench-restore.sh
#   env: SCALES="1.0 2.0"  make-home.py scales (datasets DATA_ROOT/pristine-s42-xSCALE, made once
#                          with --real-src if missing)
#        DATA_ROOT=/work/bench-data
#        RUNS=2            restores per tool and scale (interleaved: homesync, restic, borg, ...)
#        W=/tmp/homesync-bench-restore   work directory (wiped first; while running it holds the three
#                          repositories and one restored tree: about 4.5x the dataset's apparent size,
#                          checked before each scale)
#        H=homesync binary (default target/release/homesync, built if missing)
#        NO_BORG=1         leave borg out;  KEEP=1  keep W afterwards
#   Per scale:
#   1. back up the dataset once per tool (not the measurement): homesync with the embedded store
#      (`--machine bench --no-default-excludes`, the store is then served), restic 0.14 local,
#      borg `-e none --compression lz4`
#   2. RUNS times per tool, each into a freshly made ext4 file system (a loop-mounted sparse image
#      in W, like the empty /home of a replacement machine: ext4 creates files 2-4x slower where
#      many were deleted recently, which other work on a shared machine's disk does all the time),
#      after `sync` and reading the repository into the page cache (warm):
#        homesync serve --listen 127.0.0.1:0 (fresh per run, under /usr/bin/time -v), then
#        homesync --json --server ADDR --fingerprint FP --credential CRED \
#          restore latest --target T --ready-file T.ready          (under /usr/bin/time -v)
#        restic -r REPO restore latest --target T
#        env -C T borg extract REPO::home
#      wall (ns clock around the command), user+sys CPU and peak RSS (/usr/bin/time -v; for
#      homesync client and server apart), time until the ready file exists (polled every 5 ms from
#      the start of the command) and the `ready` JSON message's own `seconds`
#   3. a fidelity spot check of each tool's first restore against the dataset
#      (diff -r --no-dereference: contents and symlink targets); each restored tree is then unmounted
#      and its image deleted at once
#   Results: W/results.tsv (one line per restore), W/summary.md (medians), W/commands.txt.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=/work/shared/bench
SCALES=${SCALES:-1.0 2.0}
DATA_ROOT=${DATA_ROOT:-/work/bench-data}
RUNS=${RUNS:-2}
W=${W:-/tmp/homesync-bench-restore}
H=${H:-$REPO/target/release/homesync}
export RESTIC_PASSWORD=bench-restore
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
export LC_ALL=C.UTF-8

die() { echo "bench-restore: $*" >&2; exit 1; }
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
[ "$(id -u)" = 0 ] || die "run as root (owners, devices, ACLs in the dataset)"
for t in restic python3 /usr/bin/time diff mkfs.ext4 losetup; do
  command -v "$t" > /dev/null || die "$t missing (scripts/install-bench-deps.sh)"
done
BORG=0
if [ "${NO_BORG:-0}" != 1 ] && command -v borg > /dev/null; then BORG=1; fi
if [ ! -x "$H" ]; then
  log "building $H"
  cargo build --release --manifest-path "$REPO/Cargo.toml"
fi
[ -x "$H" ] || die "no homesync binary at $H"
TOOLS="homesync restic"; [ "$BORG" = 1 ] && TOOLS="$TOOLS borg"

# (No settling after wiping: the restores go to fresh file systems, the repositories are only read.)
rm -rf "$W"
mkdir -p "$W"
RES=$W/results.tsv
printf 'scale\ttool\trun\twall_s\tuser_s\tsys_s\tmaxrss_kib\tsrv_user_s\tsrv_sys_s\tsrv_maxrss_kib\tready_s\tready_msg_s\tbusy_s\trc\tds_bytes\tds_files\n' > "$RES"
: > "$W/commands.txt"
logcmd() { local line; line=$(printf '%q ' "$@"); echo "${line//"$W"/\$W}" >> "$W/commands.txt"; }

now() { date +%s.%N; }
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }  # USER_HZ = 100
# tv FILE KEY: a field of /usr/bin/time -v output
tv() { sed -n "s/^\s*$2: //p" "$1" | tail -1; }
warm() { find "$@" -type f -exec cat {} + > /dev/null 2>&1 || true; }
jfield() {  # jfield FILE TYPE FIELD: FIELD of the last JSON line of message_type TYPE
  python3 - "$@" << 'PY'
import json, sys
v = ""
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

make_dataset() {  # make_dataset SCALE: echo the dataset path, making it once
  local ds=$DATA_ROOT/pristine-s42-x$1
  if [ ! -e "$ds.done" ]; then
    log "making the scale $1 home at $ds (make-home.py --real-src)"
    python3 "$BENCH/make-home.py" "$ds" --seed 42 --scale "$1" --real-src --force > "$ds.log" 2>&1
    touch "$ds.done"
  fi
  echo "$ds"
}

MOUNTS=()
fresh_fs() {  # fresh_fs IMAGE DIR SIZE_BYTES: a new ext4 on a sparse image, mounted at DIR
  truncate -s "$3" "$1"
  mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$1"
  mkdir -p "$2"
  mount -o loop "$1" "$2"
  MOUNTS+=("$2")
}
unmount_all() {
  local m
  for m in "${MOUNTS[@]}"; do umount "$m" 2> /dev/null || true; done
  MOUNTS=()
}
trap unmount_all EXIT

SRV_PID=""
serve() {  # serve SCALE RUN: start homesync serve on the scale's store, set ADDR and FP
  local base=$W/$1/logs/homesync.$2.serve
  /usr/bin/time -v -o "$base.time" "$H" --json --repo "$W/$1/hs" serve --listen 127.0.0.1:0 \
    > "$base.out" 2> "$base.err" &
  SRV_PID=$!
  for _ in $(seq 400); do grep -q listening "$base.out" 2> /dev/null && break; sleep 0.025; done
  ADDR=$(jfield "$base.out" listening address)
  FP=$(jfield "$base.out" listening fingerprint)
  [ -n "$ADDR" ] || die "homesync serve did not start: $(cat "$base.err")"
}
unserve() {
  # /usr/bin/time's child is the server: TERM it, time then writes its figures.
  local child
  child=$(pgrep -P "$SRV_PID" || true)
  [ -n "$child" ] && kill -TERM "$child"
  wait "$SRV_PID" 2> /dev/null || true
  SRV_PID=""
}

# measure SCALE TOOL RUN TARGET CMD...: run CMD under /usr/bin/time -v, polling for TARGET.ready
measure() {
  local s=$1 tool=$2 run=$3 target=$4; shift 4
  local base=$W/$s/logs/$tool.$run t0 t1 b0 rc=0 ready_at="" poller
  [ "$run" = 1 ] && logcmd "$@"
  sync
  b0=$(busy_ticks)
  t0=$(now)
  (
    while [ ! -e "$target.ready" ]; do sleep 0.005; done
    now > "$base.readyat"
  ) &
  poller=$!
  /usr/bin/time -v -o "$base.time" "$@" > "$base.out" 2> "$base.err" || rc=$?
  t1=$(now)
  BUSY=$(python3 -c "print(f'{($(busy_ticks) - $b0) / 100:.2f}')")
  sleep 0.05
  kill "$poller" 2> /dev/null || true
  wait "$poller" 2> /dev/null || true
  [ -s "$base.readyat" ] && ready_at=$(python3 -c "print(f'{$(cat "$base.readyat") - $t0:.3f}')")
  WALL=$(python3 -c "print(f'{$t1 - $t0:.3f}')")
  USR=$(tv "$base.time" "User time (seconds)") SYS=$(tv "$base.time" "System time (seconds)")
  RSS=$(tv "$base.time" "Maximum resident set size (kbytes)")
  READY=$ready_at RC=$rc
  [ "$rc" = 0 ] || log "   $tool run $run: exit $rc (see $base.err)"
}

for S in $SCALES; do
  DS=$(make_dataset "$S")
  DS_BYTES=$(du -sb "$DS" | cut -f1)
  DS_FILES=$(find "$DS" -type f | wc -l)
  avail=$(df -B1 --output=avail "$W" | tail -1)
  [ "$avail" -gt $((DS_BYTES * 9 / 2)) ] ||
    die "scale $S needs about $((DS_BYTES * 9 / 2 / 1000000)) MB free in $W, $((avail / 1000000)) MB are"
  mkdir -p "$W/$S/logs" "$W/$S/restore"
  log "scale $S: $DS ($((DS_BYTES / 1000000)) MB apparent, $DS_FILES files); backing up with $TOOLS"
  "$H" --repo "$W/$S/hs" init > /dev/null
  XDG_CACHE_HOME=$W/$S/hs-cache "$H" --repo "$W/$S/hs" backup --no-default-excludes --machine bench "$DS" \
    > "$W/$S/logs/hs.backup" 2>&1
  CRED=$("$H" --json --repo "$W/$S/hs" admin add-machine bench | python3 -c \
    'import json, sys; print([j for j in map(json.loads, sys.stdin) if "credential" in j][0]["credential"])')
  export RESTIC_CACHE_DIR=$W/$S/restic-cache
  restic -r "$W/$S/restic" init > /dev/null 2>&1
  restic -r "$W/$S/restic" backup --host bench "$DS" > "$W/$S/logs/restic.backup" 2>&1
  if [ "$BORG" = 1 ]; then
    export BORG_BASE_DIR=$W/$S/borg-base
    borg init -e none "$W/$S/borg" > /dev/null 2>&1
    borg create --compression lz4 "$W/$S/borg::home" "$DS" > "$W/$S/logs/borg.backup" 2>&1
  fi
  for r in $(seq "$RUNS"); do
    for tool in $TOOLS; do
      T=$W/$S/restore/$tool.$r
      # Room for restic's and borg's non-sparse copy of the VM image, and to spare.
      fresh_fs "$W/$S/$tool.$r.img" "$T" $((DS_BYTES * 2 + (2 << 30)))
      SU="" SS="" SR="" RM=""
      case $tool in
        homesync)
          warm "$W/$S/hs"
          serve "$S" "$r"
          measure "$S" homesync "$r" "$T" "$H" --json --server "$ADDR" --fingerprint "$FP" \
            --credential "$CRED" restore latest --target "$T/home" --ready-file "$T.ready"
          unserve
          st=$W/$S/logs/homesync.$r.serve.time
          SU=$(tv "$st" "User time (seconds)") SS=$(tv "$st" "System time (seconds)")
          SR=$(tv "$st" "Maximum resident set size (kbytes)")
          RM=$(jfield "$W/$S/logs/homesync.$r.out" ready seconds)
          ;;
        restic)
          warm "$W/$S/restic"
          measure "$S" restic "$r" "$T" restic -r "$W/$S/restic" restore latest --target "$T"
          ;;
        borg)
          warm "$W/$S/borg"
          measure "$S" borg "$r" "$T" env -C "$T" borg extract "$W/$S/borg::home"
          ;;
      esac
      if [ "$r" = 1 ]; then
        # Fidelity spot check: homesync restores the snapshot's root into T/home; restic and borg
        # the whole absolute path.
        root=$T$DS
        [ "$tool" = homesync ] && root=$T/home
        n=$(diff -r --no-dereference "$DS" "$root" 2>&1 | grep -vc 'is a fifo\|is a socket\|^File .* is a character' || true)
        echo "$S $tool: $n lines of diff -r --no-dereference against the dataset" >> "$W/fidelity.txt"
      fi
      # The restored tree goes with its image (no mass deletion on the host file system).
      unmount_all
      rm -f "$W/$S/$tool.$r.img"
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$S" "$tool" "$r" "$WALL" \
        "$USR" "$SYS" "$RSS" "$SU" "$SS" "$SR" "$READY" "$RM" "$BUSY" "$RC" "$DS_BYTES" "$DS_FILES" >> "$RES"
      log "   $tool run $r: ${WALL} s wall, CPU ${USR}+${SYS} s, $((RSS / 1024)) MiB$([ -n "$SR" ] &&
        echo ", server ${SU}+${SS} s, $((SR / 1024)) MiB; ready after ${READY} s (message: ${RM} s)")"
    done
  done
  # The repositories of this scale go before the next one.
  rm -rf "$W/$S/hs" "$W/$S/restic" "$W/$S/borg"
done

python3 - "$RES" > "$W/summary.md" << 'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
def med(rs, k):
    v = [float(r[k]) for r in rs if r[k] not in ("", None)]
    return statistics.median(v) if v else None
print("| scale | tool | runs | wall s (median; all) | MB/s | CPU s client | peak RSS MiB client | server CPU s | server RSS MiB | ready s (share of wall) | other processes' CPU s |")
print("|---|---|---:|---|---:|---:|---:|---:|---:|---|---|")
for scale in dict.fromkeys(r["scale"] for r in rows):
    for tool in dict.fromkeys(r["tool"] for r in rows):
        rs = [r for r in rows if r["scale"] == scale and r["tool"] == tool]
        if not rs:
            continue
        w = med(rs, "wall_s")
        cpu = statistics.median(float(r["user_s"]) + float(r["sys_s"]) for r in rs)
        rss = max(int(r["maxrss_kib"]) for r in rs) / 1024
        mbs = int(rs[0]["ds_bytes"]) / 1e6 / w
        srv = "" if not rs[0]["srv_user_s"] else "%.2f" % statistics.median(float(r["srv_user_s"]) + float(r["srv_sys_s"]) for r in rs)
        srss = "" if not rs[0]["srv_maxrss_kib"] else "%d" % (max(int(r["srv_maxrss_kib"]) for r in rs) / 1024)
        ready = med(rs, "ready_s")
        rd = "" if ready is None else "%.2f (%.1f %%)" % (ready, 100 * ready / w)
        allw = ", ".join(r["wall_s"] for r in rs)
        # CPU of the whole machine during the run, less what was measured of the tools.
        other = ", ".join("%.1f" % (float(r["busy_s"]) - float(r["user_s"]) - float(r["sys_s"])
                                    - float(r["srv_user_s"] or 0) - float(r["srv_sys_s"] or 0)) for r in rs)
        print(f"| {scale} | {tool} | {len(rs)} | {w:.2f}; {allw} | {mbs:.0f} | {cpu:.2f} | {rss:.0f} | {srv} | {srss} | {rd} | {other} |")
PY
cat "$W/summary.md"
cat "$W/fidelity.txt" 2> /dev/null || true
if [ "${KEEP:-0}" != 1 ]; then
  log "removing $W (KEEP=1 keeps it)"
  rm -rf "$W"
fi
