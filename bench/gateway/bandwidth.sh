#!/bin/bash
# The bandwidth limit as a tenant sees it (issue 23: "a bandwidth-limited server's transfer runs
# at the limit ±10 % while a second channel's echo stays under 100 ms"): one berth gateway, one
# server with `berth server set --bandwidth LIMIT`, one SSH connection (a ControlMaster) carrying
#   - an interactive channel (`cat` in the container) that a probe writes a short line to every
#     PROBE_MS and times until the line comes back (keystroke → echo round trip), and
#   - bulk channels: download (`head -c SIZE /dev/zero` to /dev/null on the client), upload
#     (SIZE bytes from the client into the container's /dev/null), and two downloads at once
#     (the limit is the server's total, so together they run at LIMIT, each at about half).
# Per test: achieved MiB/s over the limit (target 0.9–1.1) and the echo's median / p99 / max in
# ms while the bulk ran (target max < 100 ms); an idle baseline of the echo first.
#
#   cargo build --release -p berth && make agent
#   bench/gateway/bandwidth.sh                           # LIMIT=50M SIZE_MB=1024 ROUNDS=3
#   LIMIT=8M SIZE_MB=16 ROUNDS=1 bench/gateway/bandwidth.sh   # smoke (figures meaningless)
#
# Run it alone on the machine: anything else running skews both figures.
set -euo pipefail
[ -n "${DEBUG:-}" ] && set -x

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BERTH=${BERTH:-$ROOT/target/release/berth}
AGENT=${AGENT:-$ROOT/target/x86_64-unknown-linux-gnu/release/berth-agent}
LIMIT=${LIMIT:-50M}
SIZE_MB=${SIZE_MB:-1024}
ROUNDS=${ROUNDS:-3}
PROBE_MS=${PROBE_MS:-50}
CIPHER=${CIPHER:-aes256-gcm@openssh.com}
IMAGE=${IMAGE:-berth/tenant:bookworm}
CMDLINE="LIMIT=$LIMIT SIZE_MB=$SIZE_MB ROUNDS=$ROUNDS PROBE_MS=$PROBE_MS bench/gateway/bandwidth.sh"
PREFIX=bbw$$
W=$(mktemp -d /tmp/berth-bench-bw.XXXXXX)
trap cleanup EXIT

cleanup() {
  set +e
  [ -n "${PROBE_PID:-}" ] && kill "$PROBE_PID" 2>/dev/null
  [ -n "${MASTER_PID:-}" ] && kill "$MASTER_PID" 2>/dev/null && wait "$MASTER_PID" 2>/dev/null
  [ -n "${GW_PID:-}" ] && kill -TERM "$GW_PID" 2>/dev/null && wait "$GW_PID" 2>/dev/null
  docker ps -aq --filter "name=^/$PREFIX-" | xargs -r docker rm -f -v >/dev/null 2>&1
  docker volume ls -q --filter "name=$PREFIX-" | xargs -r docker volume rm -f >/dev/null 2>&1
  docker network rm "$PREFIX-net" >/dev/null 2>&1
  rm -rf "$W"
}

die() { echo "bandwidth.sh: $*" >&2; exit 1; }
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
cat > "$W/berth.toml" <<EOF
state_dir = "$W/state"
database_url = "sqlite://$W/state/berth.db"
[ssh]
listen = ["127.0.0.1:$PORT_B"]
agent_binary = "$AGENT"
[network]
name = "$PREFIX-net"
bridge = "bb$(( $$ % 100000 ))"
subnet = "10.214.$(( $$ % 200 + 20 )).0/24"
gateway = "10.214.$(( $$ % 200 + 20 )).1"
[tenants]
image = "$IMAGE"
name_prefix = "$PREFIX"
agent_dir = "$W/agent"
EOF
export BERTH_CONFIG=$W/berth.toml
mkdir -p "$W/state" && chmod 700 "$W/state"
"$BERTH" account add bench --no-password >/dev/null
"$BERTH" account key add bench --file "$W/key.pub" >/dev/null
SERVER=$("$BERTH" server create --owner bench 2>>"$W/gateway.log" | tail -1)
SAID=$("$BERTH" server set "$SERVER" --bandwidth "$LIMIT")
RATE=$(grep -o 'bandwidth [0-9]* bytes/s' <<<"$SAID" | awk '{ print $2 }')
[ -n "$RATE" ] || die "server set --bandwidth said: $SAID"
"$BERTH" run gateway >>"$W/gateway.log" 2>&1 &
GW_PID=$!
wait_port "$PORT_B" || { cat "$W/gateway.log" >&2; die "gateway did not listen on $PORT_B"; }

OPTS=(-F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
      -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityAgent=none -o Compression=no
      -i "$W/key" -c "$CIPHER")
DEST="$SERVER@127.0.0.1"
ssh "${OPTS[@]}" -p "$PORT_B" -o ControlMaster=yes -o ControlPath="$W/mux" -N "$DEST" &
MASTER_PID=$!
for _ in $(seq 300); do [ -S "$W/mux" ] && break; sleep 0.1; done
[ -S "$W/mux" ] || { cat "$W/gateway.log" >&2; die "the ssh master never made its socket"; }
M=(ssh "${OPTS[@]}" -o ControlPath="$W/mux" "$DEST")
"${M[@]}" true || { cat "$W/gateway.log" >&2; die "login failed"; }
head -c "${SIZE_MB}M" /dev/zero > "$W/blob"

# The echo probe: `cat` in the container on its own channel of the same connection. It writes
# one short line every PROBE_MS, times its return, and appends the milliseconds to the file
# named in $W/probe.to (switched between tests; empty name: not recorded).
cat > "$W/probe.py" <<'EOF'
import os, subprocess, sys, time
w, period = sys.argv[1], float(sys.argv[2]) / 1000
p = subprocess.Popen(sys.argv[3:], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
n = 0
while True:
    n += 1
    line = b"probe %d\n" % n
    t0 = time.monotonic()
    p.stdin.write(line)
    got = b""
    while not got.endswith(b"\n"):
        c = p.stdout.read(1)
        if not c:
            sys.exit(1)
        got += c
    ms = (time.monotonic() - t0) * 1000
    try:
        to = open(os.path.join(w, "probe.to")).read().strip()
    except OSError:
        to = ""
    if to:
        with open(os.path.join(w, to), "a") as f:
            f.write("%.2f\n" % ms)
    time.sleep(max(0.0, period - ms / 1000))
EOF
: > "$W/probe.to"
python3 "$W/probe.py" "$W" "$PROBE_MS" "${M[@]}" 'stty -echo 2>/dev/null; exec cat' &
PROBE_PID=$!

now() { date +%s.%N; }
pct() { # FILE P: the P-th percentile (nearest rank) of the numbers in FILE
  sort -g "$1" | awk -v p="$2" '{ a[NR] = $1 } END { if (NR == 0) { print "-"; exit } i = int((p / 100) * NR + 0.999); if (i < 1) i = 1; if (i > NR) i = NR; print a[i] }'
}
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
declare -A R

echo idle > "$W/probe.to"
sleep 3
echo "" > "$W/probe.to"

timed() { # NAME BYTES CMD…: runs CMD with the probe recording into NAME.ms; MiB/s
  local name=$1 bytes=$2 t0 t1
  shift 2
  echo "$name.ms" > "$W/probe.to"
  t0=$(now)
  "$@"
  t1=$(now)
  echo "" > "$W/probe.to"
  awk -v b="$bytes" -v a="$t0" -v c="$t1" 'BEGIN { printf "%.2f", b / 1048576 / (c - a) }'
}
down() { "${M[@]}" "head -c ${SIZE_MB}M /dev/zero" >/dev/null; }
up() { "${M[@]}" 'cat >/dev/null' <"$W/blob"; }
two_down() {
  local half=$(( SIZE_MB / 2 ))
  "${M[@]}" "head -c ${half}M /dev/zero" >/dev/null &
  local a=$!
  "${M[@]}" "head -c ${half}M /dev/zero" >/dev/null
  wait "$a"
}
BYTES=$(( SIZE_MB * 1048576 ))
for r in $(seq "$ROUNDS"); do
  for t in down up two_down; do
    v=$(timed "$t" "$BYTES" "$t"); R[$t]+="$v "
    echo "round $r $t: $v MiB/s"
  done
done
LIMIT_MIB=$(awk -v r="$RATE" 'BEGIN { printf "%.2f", r / 1048576 }')
echo
echo "limit: $LIMIT = $RATE bytes/s = $LIMIT_MIB MiB/s; echo probe every $PROBE_MS ms on its own channel"
echo
echo "| test | MiB/s (median of $ROUNDS) | ÷ limit | echo median / p99 / max (ms, all rounds) | probes |"
echo "|---|---|---|---|---|"
touch "$W/idle"
echo "| idle (3 s, no bulk) | - | - | $(pct "$W/idle" 50) / $(pct "$W/idle" 99) / $(pct "$W/idle" 100) | $(wc -l <"$W/idle") |"
for t in down up two_down; do
  # shellcheck disable=SC2086
  m=$(median ${R[$t]})
  touch "$W/$t.ms"
  echo "| $t | $m | $(awk -v a="$m" -v b="$LIMIT_MIB" 'BEGIN { printf "%.2f", a / b }') | $(pct "$W/$t.ms" 50) / $(pct "$W/$t.ms" 99) / $(pct "$W/$t.ms" 100) | $(wc -l <"$W/$t.ms") |"
done
echo
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
