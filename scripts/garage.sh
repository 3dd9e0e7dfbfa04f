#!/usr/bin/env bash
# Garage (S3-compatible object store) for homesync's S3 tests and benchmarks.
#
#   garage.sh install                  build Garage 2.5.0 once into a version-pinned
#                                      cache outside the repository (~12 min on 2 cores)
#   garage.sh path                     print the binary's path (fails if not installed)
#   garage.sh start DIR S3PORT         one node, bucket "packs", ready when this returns
#   garage.sh cluster DIR BASEPORT     three nodes, three copies; node N serves S3 on
#                                      BASEPORT+2(N-1) and RPC on the port after it
#   garage.sh kill DIR N               SIGKILL node N (1-3) of a cluster
#   garage.sh revive DIR N             start node N again with its old data
#   garage.sh stop DIR                 stop every node started in DIR
#
# Key GKtest0000000000000000001 / secret testsecret00...001, region "garage",
# bucket "packs". Everything listens on 127.0.0.1 only.
set -euo pipefail

VERSION=2.5.0
CACHE=${HOMESYNC_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/homesync}
ROOT=$CACHE/garage-$VERSION
GARAGE=$ROOT/bin/garage
KEY_ID=GKtest0000000000000000001
SECRET=testsecret0000000000000000000000000000000000000000000000000000001

die() { echo "garage.sh: $*" >&2; exit 1; }

installed() { [ -x "$GARAGE" ] && "$GARAGE" --version 2>/dev/null | grep -q " cargo:$VERSION "; }

# node_config DIR S3PORT RPCPORT REPLICATION SECRET
node_config() {
  mkdir -p "$1"
  cat > "$1/garage.toml" <<TOML
metadata_dir = "$1/meta"
data_dir = "$1/data"
db_engine = "sqlite"
replication_factor = $4
compression_level = "none"
rpc_bind_addr = "127.0.0.1:$3"
rpc_public_addr = "127.0.0.1:$3"
rpc_secret = "$5"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$2"
TOML
  chmod 600 "$1/garage.toml"
}

run_node() { # DIR [extra args]
  local d=$1; shift
  RUST_LOG=${RUST_LOG:-garage=warn} setsid "$GARAGE" -c "$d/garage.toml" server "$@" \
    >> "$d/server.log" 2>&1 < /dev/null &
  echo $! > "$d/pid"
}

# Ready when a signed list of the bucket succeeds (layout, key and bucket exist).
wait_ready() { # S3PORT PIDFILE LOG
  for _ in $(seq 1 600); do
    if curl -sf --max-time 2 --aws-sigv4 "aws:amz:garage:s3" --user "$KEY_ID:$SECRET" \
        -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -o /dev/null \
        "http://127.0.0.1:$1/packs?list-type=2"; then
      return 0
    fi
    kill -0 "$(cat "$2")" 2>/dev/null || { cat "$3" >&2; die "garage exited"; }
    sleep 0.05
  done
  cat "$3" >&2
  die "garage on port $1 did not become ready"
}

stop_pid() {
  local pid; pid=$(cat "$1" 2>/dev/null) || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.05; done
  kill -KILL "$pid" 2>/dev/null || true
}

cmd=${1:-}
case $cmd in
install)
  if installed; then echo "$GARAGE"; exit 0; fi
  command -v cargo >/dev/null || die "cargo is needed to build Garage"
  echo "garage.sh: building Garage $VERSION into $ROOT (about 12 minutes the first time)" >&2
  cargo install garage --version "$VERSION" --locked --root "$ROOT" >&2
  installed || die "the build finished but $GARAGE does not run"
  echo "$GARAGE" ;;
path)
  installed || die "Garage $VERSION is not installed: run scripts/garage.sh install"
  echo "$GARAGE" ;;
start)
  dir=${2:?DIR}; port=${3:?S3PORT}
  installed || die "Garage $VERSION is not installed: run scripts/garage.sh install"
  rm -rf "$dir"; mkdir -p "$dir"
  node_config "$dir" "$port" $((port + 1)) 1 "$(openssl rand -hex 32)"
  GARAGE_DEFAULT_ACCESS_KEY=$KEY_ID GARAGE_DEFAULT_SECRET_KEY=$SECRET GARAGE_DEFAULT_BUCKET=packs \
    run_node "$dir" --single-node --default-bucket
  wait_ready "$port" "$dir/pid" "$dir/server.log"
  echo "garage ready on 127.0.0.1:$port" ;;
cluster)
  dir=${2:?DIR}; base=${3:?BASEPORT}
  installed || die "Garage $VERSION is not installed: run scripts/garage.sh install"
  rm -rf "$dir"; mkdir -p "$dir"; secret=$(openssl rand -hex 32)
  for n in 1 2 3; do
    s3=$((base + 2 * (n - 1)))
    node_config "$dir/n$n" "$s3" $((s3 + 1)) 3 "$secret"
    echo "$s3" > "$dir/n$n/s3port"
    run_node "$dir/n$n"
  done
  G=("$GARAGE" -c "$dir/n1/garage.toml")
  for n in 1 2 3; do
    for _ in $(seq 1 400); do
      "$GARAGE" -c "$dir/n$n/garage.toml" node id -q > "$dir/n$n/id" 2>/dev/null && break
      sleep 0.05
    done
    [ -s "$dir/n$n/id" ] || { cat "$dir/n$n/server.log" >&2; die "node $n did not start"; }
  done
  "${G[@]}" node connect "$(cat "$dir/n2/id")" >/dev/null
  "${G[@]}" node connect "$(cat "$dir/n3/id")" >/dev/null
  for n in 1 2 3; do
    "${G[@]}" layout assign -z "z$n" -c 1G "$(cut -c1-16 "$dir/n$n/id")" >/dev/null
  done
  "${G[@]}" layout apply --version 1 >/dev/null
  for _ in $(seq 1 200); do "${G[@]}" bucket create packs >/dev/null 2>&1 && break; sleep 0.1; done
  "${G[@]}" key import --yes -n test "$KEY_ID" "$SECRET" >/dev/null
  "${G[@]}" bucket allow --read --write --owner packs --key test >/dev/null
  for n in 1 2 3; do wait_ready "$(cat "$dir/n$n/s3port")" "$dir/n$n/pid" "$dir/n$n/server.log"; done
  echo "3-node garage ready on 127.0.0.1:$base" ;;
kill)
  dir=${2:?DIR}; n=${3:?N}
  kill -KILL "$(cat "$dir/n$n/pid")" 2>/dev/null || true ;;
revive)
  dir=${2:?DIR}; n=${3:?N}
  run_node "$dir/n$n" ;;
stop)
  dir=${2:?DIR}
  for p in "$dir"/pid "$dir"/n*/pid; do [ -e "$p" ] && stop_pid "$p"; done
  true ;;
*)
  sed -n '2,14p' "$0" >&2; exit 2 ;;
esac
