# homesync plugin for peers.sh (shared/bench/peers.sh, "Tool plugin API" at its top): sourced by
# peers.sh with `-x FILE`; add the tool with `-t "homesync restic ..."`.  scripts/bench-peers.sh
# runs the whole comparison.
#
# Uses the release binary: $HOMESYNC_BIN, default target/release/homesync of this checkout.
# homesync runs embedded (local store in $W/repo/homesync, no server), like a local restic
# repository.  Its file-state cache lives under XDG_CACHE_HOME=$W/cache/homesync, so peers.sh
# measures, reports (cache_bytes) and cleans it together with the other tools' caches.
# shellcheck shell=bash

if [ -z "${HOMESYNC_BIN:-}" ]; then
  HOMESYNC_BIN="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/target/release/homesync"
fi
HOMESYNC_BIN=$(realpath -m "$HOMESYNC_BIN")
if [ ! -x "$HOMESYNC_BIN" ]; then
  echo "homesync plugin: no executable at $HOMESYNC_BIN (cargo build --release, or set HOMESYNC_BIN)" >&2
  exit 2
fi

homesync_repo() { echo "$W/repo/homesync"; }
homesync_cache() { echo "$W/cache/homesync"; }
# homesync_m ARGS...: one measured homesync command (env first, so commands.tsv shows it whole)
homesync_m() { m env "XDG_CACHE_HOME=$W/cache/homesync" "$HOMESYNC_BIN" --repo "$W/repo/homesync" "$@"; }
# homesync_run ARGS...: the same, unmeasured
homesync_run() { env "XDG_CACHE_HOME=$W/cache/homesync" "$HOMESYNC_BIN" --repo "$W/repo/homesync" "$@"; }

homesync_init() { mkdir -p "$W/cache/homesync"; homesync_m init; }
# LABEL (initial | nochange | incremental) becomes a tag.  --no-default-excludes: the same work as
# the peers (by default homesync skips .cache/, Trash and CACHEDIR.TAG directories).
homesync_backup() { homesync_m backup --no-default-excludes --tag "$1" "$DS"; }
# `backup PATH` makes PATH's contents the snapshot root and `restore --target DIR` puts the root's
# contents into DIR, so the restored tree is DEST itself.
homesync_restore() { homesync_m restore latest --target "$1"; }
homesync_root() { echo "$1"; }

# optional phases, defined only when this build has the command
if "$HOMESYNC_BIN" check --help > /dev/null 2>&1; then
  homesync_check() { homesync_m check; }
  if "$HOMESYNC_BIN" check --help 2> /dev/null | grep -q -- '--read-data'; then
    homesync_checkdata() { homesync_m check --read-data; }
  fi
fi

# untimed, after the restore listing: what homesync itself says about its snapshots
homesync_extra() {
  echo "homesync snapshots:"
  homesync_run snapshots 2>&1 | tail -5
  local ids
  ids=$(homesync_run --json snapshots 2> /dev/null | python3 -c '
import json, sys
ids = [json.loads(l).get("id") for l in sys.stdin if l.startswith("{")]
print(" ".join(i for i in ids[-2:] if i))' 2> /dev/null)
  if [ "$(wc -w <<< "$ids")" = 2 ]; then
    echo "homesync diff of the last two snapshots (first 12 lines):"
    # shellcheck disable=SC2086
    homesync_run diff $ids 2>&1 | head -12
  fi
  return 0
}
