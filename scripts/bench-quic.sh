#!/usr/bin/env bash
# bench-quic.sh - homesync over QUIC on 127.0.0.1 vs the embedded store, and a fleet of 20
# clients against one server (server peak RSS).  Run as root, from anywhere.
#
# usage: scripts/bench-quic.sh [DATASET]   (default: the pristine home made by scripts/bench-peers.sh)
#   1. first backup of DATASET into an embedded store           (/usr/bin/time: wall, CPU, peak RSS)
#   2. the same backup to `homesync serve` on 127.0.0.1:7443     (client and server measured apart)
#   3. 20 clients backing up 32 MiB each (8 MiB shared) at once  (server peak RSS, all must succeed)
# Client and server share this machine's cores, so step 2 shows the CPU both sides spend together.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DS=${1:-/work/bench-data/pristine-s42-x1.0}
W=${W:-/tmp/homesync-bench-quic}
[ -d "$DS" ] || { echo "no dataset at $DS (scripts/bench-peers.sh makes one)" >&2; exit 2; }
cargo build --release --manifest-path "$REPO/Cargo.toml" > /dev/null 2>&1
H=$REPO/target/release/homesync
stop_servers() { pkill -INT -f "homesync .* serve --listen 127.0.0.1:744[34]" 2> /dev/null || true; sleep 1.5; }
stop_servers
rm -rf "$W"; mkdir -p "$W"
fingerprint() { python3 -c "import json,sys; print(json.loads(open(sys.argv[1]).readline())['fingerprint'])" "$1"; }
wait_for() { for _ in $(seq 100); do [ -s "$1" ] && return 0; sleep 0.05; done; echo "server did not start" >&2; exit 1; }

echo "== first backup of $DS ($(du -sh --apparent-size "$DS" | cut -f1))"
"$H" --repo "$W/emb" init > /dev/null
sync
XDG_CACHE_HOME=$W/cache-emb /usr/bin/time -f "embedded:    %e s wall, %U s user, %S s sys, peak RSS %M KiB" \
  "$H" --repo "$W/emb" backup --no-default-excludes "$DS" > /dev/null

"$H" --repo "$W/srv" init > /dev/null
CRED=$("$H" --repo "$W/srv" admin add-machine bench 2> /dev/null)
/usr/bin/time -f "  server:    %U s user, %S s sys, peak RSS %M KiB" -o "$W/server.time" \
  "$H" --repo "$W/srv" --json serve --listen 127.0.0.1:7443 > "$W/serve.json" 2> "$W/serve.err" &
wait_for "$W/serve.json"
sync
XDG_CACHE_HOME=$W/cache-quic /usr/bin/time -f "QUIC client: %e s wall, %U s user, %S s sys, peak RSS %M KiB" \
  "$H" --server 127.0.0.1:7443 --fingerprint "$(fingerprint "$W/serve.json")" --credential "$CRED" \
  backup --no-default-excludes "$DS" > /dev/null
stop_servers; cat "$W/server.time"
echo "store sizes: embedded $(du -sb "$W/emb" | cut -f1) B, server $(du -sb "$W/srv" | cut -f1) B"

echo "== 20 clients at once"
python3 - "$W" << 'PY'
import os, sys
w = sys.argv[1]
common = os.urandom(8 << 20)
for i in range(20):
    d = f"{w}/fleet/m{i:02}/home"
    os.makedirs(d + "/docs", exist_ok=True)
    open(d + "/common.bin", "wb").write(common)
    open(d + "/own.bin", "wb").write(os.urandom(24 << 20))
    for j in range(300):
        open(f"{d}/docs/n{j}.txt", "w").write(f"machine {i} note {j}\n" * 50)
PY
F=$W/fleet
"$H" --repo "$F/store" init > /dev/null
/usr/bin/time -f "  server: %U s user, %S s sys, peak RSS %M KiB" -o "$F/server.time" \
  "$H" --repo "$F/store" --json serve --listen 127.0.0.1:7444 > "$F/serve.json" 2> /dev/null &
wait_for "$F/serve.json"
FP=$(fingerprint "$F/serve.json")
start=$(date +%s.%N); pids=()
for i in $(seq -w 0 19); do
  C=$("$H" --repo "$F/store" admin add-machine "m$i" 2> /dev/null)
  XDG_CACHE_HOME=$F/m$i/cache "$H" --json --server 127.0.0.1:7444 --fingerprint "$FP" --credential "$C" \
    backup "$F/m$i/home" > "$F/m$i/out.json" 2>&1 &
  pids+=($!)
done
fail=0; for p in "${pids[@]}"; do wait "$p" || fail=$((fail + 1)); done
end=$(date +%s.%N)
stop_servers
echo "20 clients x 32 MiB: $((20 - fail))/20 succeeded in $(python3 -c "print(round($end - $start, 1))") s"
cat "$F/server.time"
