#!/usr/bin/env bash
# install-bench-deps.sh - install what the peer benchmarks need (Debian/Ubuntu, run as root).
#
# usage: scripts/install-bench-deps.sh [--no-linux-source]
#
# Idempotent: checks each command (or file) first and runs `apt-get update` + `apt-get install`
# only when something is missing.  Installs:
#   restic            the peer we compare against
#   borgbackup, rsync the other peers (bench-gc.sh, bench-wire.sh)
#   hyperfine         machine-limit measurements (peers.sh step "limits")
#   libarchive-tools  bsdtar --format=mtree listings for the fidelity report
#   attr, acl         getfattr/setfattr, getfacl/setfacl (make-home.py, fidelity listings)
#   time              /usr/bin/time -v (CPU and peak RSS of every measured command)
#   python3           make-home.py, mutate-home.py, fidelity.py, peers-report.py
#   b3sum, zstd, openssl   machine limits (BLAKE3, zstd, SHA-256 of the same data)
#   linux-source      real Linux 6.1 sources for `make-home.py --real-src` (skip: --no-linux-source)
set -euo pipefail

WANT_SRC=1
for a in "$@"; do
  case $a in
    --no-linux-source) WANT_SRC=0 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install-bench-deps.sh: unknown argument $a" >&2; exit 2 ;;
  esac
done

# "check package" pairs: check is a command name or an absolute path
NEED=(
  restic restic
  borg borgbackup
  rsync rsync
  hyperfine hyperfine
  bsdtar libarchive-tools
  getfattr attr
  setfacl acl
  /usr/bin/time time
  python3 python3
  b3sum b3sum
  zstd zstd
  openssl openssl
  rsync rsync
  /usr/sbin/sshd openssh-server
  ssh-keygen openssh-client
)
missing=()
for ((i = 0; i < ${#NEED[@]}; i += 2)); do
  c=${NEED[i]} p=${NEED[i + 1]}
  if [[ $c == /* ]]; then [ -x "$c" ] && continue; else command -v "$c" > /dev/null 2>&1 && continue; fi
  missing+=("$p")
done
if [ "$WANT_SRC" = 1 ] && ! compgen -G '/usr/src/linux-source-*.tar.xz' > /dev/null; then
  missing+=(linux-source)
fi

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-bench-deps.sh: everything present" >&2
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "install-bench-deps.sh: need root to install: ${missing[*]}" >&2; exit 1; }
echo "install-bench-deps.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
