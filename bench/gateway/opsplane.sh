#!/bin/bash
# What the operator plane costs: throughput of a recorded PTY session vs the same session not
# recorded, and of an audited SFTP transfer vs the same transfer unaudited — one berth, one
# server, one run, side by side (issue 23's target: each ≥ 0.9× of its unrecorded/unaudited peer).
#
#   cargo build --release -p berth && make agent
#   bench/gateway/opsplane.sh                          # SIZE_MB=256 ROUNDS=5
#   SIZE_MB=8 ROUNDS=1 bench/gateway/opsplane.sh       # smoke test (figures meaningless)
#
# PTY: `ssh -tt server<N> 'cat FILE'`, FILE = SIZE_MB MiB of base64 text in the container's page
#      cache, client output to /dev/null; recording toggled per session with
#      `berth server set --record on|off` (it applies from the next session), `[recording] dir`
#      under the run's temporary state dir.
# SFTP: `sftp -b` get of a SIZE_MB MiB random file to /dev/null and put of one to the tenant's
#      /dev/null; audit on and off is `[ssh] sftp_audit`, which needs a gateway restart: the
#      gateway is restarted between the two sides every round.
# The sides alternate and the order flips every round; median MiB/s per side; ratio = on / off.
# Run it alone on the machine: anything else running skews it.
set -euo pipefail
[ -n "${DEBUG:-}" ] && set -x

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BERTH=${BERTH:-$ROOT/target/release/berth}
AGENT=${AGENT:-$ROOT/target/x86_64-unknown-linux-gnu/release/berth-agent}
SIZE_MB=${SIZE_MB:-256}
ROUNDS=${ROUNDS:-5}
CIPHER=${CIPHER:-aes256-gcm@openssh.com}
KEX=${KEX:-curve25519-sha256}
IMAGE=${IMAGE:-berth/tenant:bookworm}
CMDLINE="SIZE_MB=$SIZE_MB ROUNDS=$ROUNDS CIPHER=$CIPHER bench/gateway/opsplane.sh"
PREFIX=bops$$
W=$(mktemp -d /tmp/berth-bench-ops.XXXXXX)
trap cleanup EXIT

cleanup() {
  set +e
  [ -n "${GW_PID:-}" ] && kill -TERM "$GW_PID" 2>/dev/null && wait "$GW_PID" 2>/dev/null
  docker ps -aq --filter "name=^/$PREFIX-" | xargs -r docker rm -f -v >/dev/null 2>&1
  docker volume ls -q --filter "name=$PREFIX-" | xargs -r docker volume rm -f >/dev/null 2>&1
  docker network rm "$PREFIX-net" >/dev/null 2>&1
  rm -rf "$W"
}

die() { echo "opsplane.sh: $*" >&2; exit 1; }
[ -x "$BERTH" ] || die "build first: cargo build --release -p berth"
[ -x "$AGENT" ] || die "build the agent first: make agent"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT_B=$(free_port)
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

COMMIT=$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || COMMIT="$COMMIT (+ uncommitted changes)"
echo "machine: $(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), kernel $(uname -r)"
echo "commit: $COMMIT; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "command: $CMDLINE"
echo

ssh-keygen -q -t ed25519 -N '' -f "$W/key"
write_config() { # sftp_audit: true|false
  cat > "$W/berth.toml" <<EOF
state_dir = "$W/state"
database_url = "sqlite://$W/state/berth.db"
[ssh]
listen = ["127.0.0.1:$PORT_B"]
agent_binary = "$AGENT"
sftp_audit = $1
[recording]
dir = "$W/state/recordings"
max_bytes_per_session = $(( (SIZE_MB * 2 + 64) * 1048576 ))
[network]
name = "$PREFIX-net"
bridge = "bo$(( $$ % 100000 ))"
subnet = "10.214.$(( $$ % 200 + 20 )).0/24"
gateway = "10.214.$(( $$ % 200 + 20 )).1"
[tenants]
image = "$IMAGE"
name_prefix = "$PREFIX"
agent_dir = "$W/agent"
EOF
}
export BERTH_CONFIG=$W/berth.toml
mkdir -p "$W/state" && chmod 700 "$W/state"
write_config true
start_gateway() { # sftp_audit
  if [ -n "${GW_PID:-}" ]; then kill -TERM "$GW_PID"; wait "$GW_PID" 2>/dev/null || true; fi
  write_config "$1"
  "$BERTH" run gateway >>"$W/gateway.log" 2>&1 &
  GW_PID=$!
  wait_port "$PORT_B" || { cat "$W/gateway.log" >&2; die "gateway did not listen on $PORT_B"; }
}
"$BERTH" account add bench --no-password >/dev/null
"$BERTH" account key add bench --file "$W/key.pub" >/dev/null
SERVER=$("$BERTH" server create --owner bench 2>>"$W/gateway.log" | tail -1)
start_gateway true

OPTS=(-F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
      -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityAgent=none -o ControlMaster=no
      -o ControlPath=none -o Compression=no -i "$W/key" -c "$CIPHER" -o KexAlgorithms="$KEX")
DEST="$SERVER@127.0.0.1"
B=(ssh "${OPTS[@]}" -p "$PORT_B" "$DEST")
"${B[@]}" true || { cat "$W/gateway.log" >&2; die "login failed"; }
# Sources in the container: base64 text for the terminal (a PTY mangles raw binary), random bytes
# for SFTP; read once so both are in the page cache.
"${B[@]}" "head -c $(( SIZE_MB * 786432 )) /dev/urandom | base64 -w 100 > text.b64 && head -c ${SIZE_MB}M /dev/urandom > blob && cat text.b64 blob >/dev/null"
head -c "${SIZE_MB}M" /dev/urandom > "$W/blob"
printf 'get blob /dev/null\n' > "$W/get"
printf 'put %s /dev/null\n' "$W/blob" > "$W/put"
PTY_BYTES=$("${B[@]}" 'wc -c < text.b64')

now() { date +%s.%N; }
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b == 0 ? 0 : a / b) }'; }
mibs() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.1f", b / 1048576 / s }'; }
declare -A T

pty_one() { # on|off
  "$BERTH" server set "$SERVER" --record "$1" >/dev/null
  local t0 t1
  t0=$(now)
  "${B[@]}" -tt 'stty raw -echo; cat text.b64' >/dev/null
  t1=$(now)
  mibs "$PTY_BYTES" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"
}
sftp_one() { # get|put
  local t0 t1
  t0=$(now)
  sftp "${OPTS[@]}" -q -P "$PORT_B" -b "$W/$1" "$DEST" >/dev/null
  t1=$(now)
  mibs $(( SIZE_MB * 1048576 )) "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"
}

for r in $(seq "$ROUNDS"); do
  if (( r % 2 )); then order="on off"; else order="off on"; fi
  for side in $order; do
    v=$(pty_one "$side"); T[pty_$side]+="$v "; echo "round $r pty recording=$side: $v MiB/s"
  done
  for side in $order; do
    if [ "$side" = on ]; then start_gateway true; else start_gateway false; fi
    for op in get put; do
      v=$(sftp_one "$op"); T[sftp_${op}_$side]+="$v "; echo "round $r sftp $op audit=$side: $v MiB/s"
    done
  done
done
"$BERTH" server set "$SERVER" --record off >/dev/null
RECS=$("$BERTH" session recordings --server "$SERVER" --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
AUDITED=$(grep -c '"sftp"' "$W/gateway.log" 2>/dev/null || true)
echo
echo "recordings stored: $RECS (expected $ROUNDS)"
echo
echo "| test | on (MiB/s, median of $ROUNDS) | off (MiB/s) | ratio on/off |"
echo "|---|---|---|---|"
for t in pty sftp_get sftp_put; do
  # shellcheck disable=SC2086
  on=$(median ${T[${t}_on]}); off=$(median ${T[${t}_off]})
  echo "| $t | $on | $off | $(ratio "$on" "$off") |"
done
echo
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg); audit lines naming sftp in the log: ${AUDITED:-0}"
