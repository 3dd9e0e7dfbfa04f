# Remote-backup plugins for peers.sh (shared/bench/peers.sh, "Tool plugin API" at its top):
#   homesync_quic  homesync to `homesync serve` on 127.0.0.1 over QUIC (server CPU and RSS measured)
#   restic_sftp    restic to an SFTP repository through sshd on 127.0.0.1
# rsync to its daemon on 127.0.0.1 is peers.sh's own `rsyncd`.
# Pass this file as peers.sh -x (it sources homesync.sh, so `homesync` is there too), e.g.
#   PLUGIN=benches/peers/remote.sh TOOLS="homesync homesync_quic restic_sftp rsyncd" scripts/bench-peers.sh
# shellcheck shell=bash
# shellcheck source=homesync.sh
. "$(dirname "${BASH_SOURCE[0]}")/homesync.sh"

QUIC_PORT=7443
udp_listening() { local hex; hex=$(printf '%04X' "$1"); grep -q ":$hex 00000000:0000 07" /proc/net/udp; }
# Like peers.sh's srv_start, for a UDP port: the server runs under /usr/bin/time -v.
udp_srv_start() {
  local port=$1; shift
  SRV_N=$((SRV_N + 1))
  local base="$OUT/raw/$CUR_TOOL.$CUR_PHASE.srv$SRV_N"
  printf '%s\t%s\tserver: %s\n' "$CUR_TOOL" "$CUR_PHASE" "$(printf '%q ' "$@")" >> "$OUT/commands.tsv"
  /usr/bin/time -v -o "$base.time" "$@" > "$base.log" 2>&1 &
  SRV_TIMEPID=$!
  for _ in $(seq 100); do udp_listening "$port" && return 0; sleep 0.05; done
  log "  !! server on UDP port $port did not come up"; return 1
}

homesync_quic_repo() { echo "$W/repo/homesync_quic"; }
homesync_quic_cache() { echo "$W/cache/homesync_quic"; }
homesync_quic_start() {
  udp_srv_start $QUIC_PORT "$HOMESYNC_BIN" --repo "$W/repo/homesync_quic" serve --listen 127.0.0.1:$QUIC_PORT
}
homesync_quic_client() {
  local fp cred
  fp=$(cat "$W/homesync_quic.fp") cred=$(cat "$W/homesync_quic.cred")
  echo env "XDG_CACHE_HOME=$W/cache/homesync_quic" "$HOMESYNC_BIN" --server 127.0.0.1:$QUIC_PORT --fingerprint "$fp" --credential "$cred"
}
homesync_quic_init() {
  mkdir -p "$W/cache/homesync_quic"
  m "$HOMESYNC_BIN" --repo "$W/repo/homesync_quic" init
  "$HOMESYNC_BIN" --repo "$W/repo/homesync_quic" admin add-machine bench 2> /dev/null > "$W/homesync_quic.cred"
  # First start makes the certificate: read its fingerprint, then stop.
  "$HOMESYNC_BIN" --json --repo "$W/repo/homesync_quic" serve --listen 127.0.0.1:0 > "$W/homesync_quic.serve" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do grep -q fingerprint "$W/homesync_quic.serve" && break; sleep 0.05; done
  kill -TERM $pid; wait $pid 2> /dev/null
  python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["fingerprint"])' "$W/homesync_quic.serve" > "$W/homesync_quic.fp"
}
# shellcheck disable=SC2046
homesync_quic_backup() { homesync_quic_start; m $(homesync_quic_client) backup --no-default-excludes --tag "$1" "$DS"; srv_stop; }
# shellcheck disable=SC2046
homesync_quic_restore() { homesync_quic_start; m $(homesync_quic_client) restore latest --target "$1"; srv_stop; }
homesync_quic_root() { echo "$1"; }

SFTP_PORT=2223
restic_sftp_repo() { echo "$W/repo/restic_sftp"; }
restic_sftp_cache() { echo "$W/cache/restic_sftp"; }
restic_sftp_init() {
  local s="$W/sftp"; rm -rf "$s"; mkdir -p "$s" /run/sshd
  ssh-keygen -q -t ed25519 -N '' -f "$s/hostkey"; ssh-keygen -q -t ed25519 -N '' -f "$s/id"
  cp "$s/id.pub" "$s/authorized_keys"
  cat > "$s/sshd_config" <<EOC
Port $SFTP_PORT
ListenAddress 127.0.0.1
HostKey $s/hostkey
PidFile $s/sshd.pid
AuthorizedKeysFile $s/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
EOC
  restic_sftp_start; m restic -r "$(restic_sftp_url)" -o sftp.command="$(restic_sftp_cmd)" init; srv_stop
}
restic_sftp_url() { echo "sftp:root@127.0.0.1:$W/repo/restic_sftp"; }
restic_sftp_cmd() { echo "ssh -p $SFTP_PORT -i $W/sftp/id -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes root@127.0.0.1 -s sftp"; }
restic_sftp_start() { srv_start $SFTP_PORT /usr/sbin/sshd -D -e -f "$W/sftp/sshd_config"; }
restic_sftp_backup() {
  restic_sftp_start
  m env RESTIC_CACHE_DIR="$W/cache/restic_sftp" restic -r "$(restic_sftp_url)" -o sftp.command="$(restic_sftp_cmd)" backup --host bench "$DS"
  srv_stop
}
restic_sftp_restore() {
  restic_sftp_start
  m env RESTIC_CACHE_DIR="$W/cache/restic_sftp" restic -r "$(restic_sftp_url)" -o sftp.command="$(restic_sftp_cmd)" restore latest --host bench --target "$1"
  srv_stop
}
restic_sftp_root() { echo "$1$DS"; }
