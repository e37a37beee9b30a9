#!/bin/bash
# Throughput of port forwards through the berth gateway beside OpenSSH sshd, same client, same
# cipher: SIZE_MB MiB through `ssh -L` and through `ssh -R`, each way, ROUNDS rounds alternating
# berth and sshd (the order flips every round), median MiB/s, ratio berth / sshd.
#
#   cargo build --release -p berth && make agent
#   bench/gateway/forward.sh                                  # SIZE_MB=1024 ROUNDS=5
#   SIZE_MB=16 ROUNDS=1 bench/gateway/forward.sh              # smoke test (figures meaningless)
#   BERTH=target/debug/berth SIZE_MB=16 ROUNDS=1 bench/gateway/forward.sh
#
# -L upload:   client → 127.0.0.1:LPORT → forward → a sink on the far side's 127.0.0.1 (berth:
#              the tenant container's loopback; sshd: the host's).
# -L download: a source on the far side's 127.0.0.1 → forward → client.
# -R upload:   a process on the far side (berth: in the container; sshd: on the host as the
#              login user's peer) pushes into the remote listener → forward → a sink on the
#              client's 127.0.0.1.
# -R download: the far side pulls from the remote listener ← forward ← a source on the client.
# Only runs that moved exactly SIZE_MB MiB are counted. Run it alone on the machine.
set -euo pipefail
[ -n "${DEBUG:-}" ] && set -x

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BERTH=${BERTH:-$ROOT/target/release/berth}
AGENT=${AGENT:-$ROOT/target/x86_64-unknown-linux-gnu/release/berth-agent}
SIZE_MB=${SIZE_MB:-1024}
ROUNDS=${ROUNDS:-5}
CIPHER=${CIPHER:-aes256-gcm@openssh.com}
KEX=${KEX:-curve25519-sha256}
IMAGE=${IMAGE:-berth/tenant:bookworm}
S_USER=${S_USER:-berthbench}
PREFIX=bfwd$$
W=$(mktemp -d /tmp/berth-fwd.XXXXXX)
PIDS=""
trap cleanup EXIT

cleanup() {
  set +e
  for p in $PIDS; do kill "$p" 2>/dev/null; done
  [ -n "${GW_PID:-}" ] && kill -TERM "$GW_PID" 2>/dev/null && wait "$GW_PID" 2>/dev/null
  [ -n "${SSHD_PID:-}" ] && kill "$SSHD_PID" 2>/dev/null
  docker ps -aq --filter "name=^/$PREFIX-" | xargs -r docker rm -f -v >/dev/null 2>&1
  docker volume ls -q --filter "name=$PREFIX-" | xargs -r docker volume rm -f >/dev/null 2>&1
  docker network rm "$PREFIX-net" >/dev/null 2>&1
  rm -rf "$W"
}
die() { echo "forward.sh: $*" >&2; exit 1; }
[ -x "$BERTH" ] || die "build first: cargo build --release -p berth (or BERTH=…)"
[ -x "$AGENT" ] || die "build the agent first: make agent"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
PORT_B=$(free_port); PORT_S=$(free_port); PORT_M=$(free_port)

echo "machine: $(nproc) CPUs, kernel $(uname -r); $(ssh -V 2>&1)"
echo "commit: $(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown); load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "command: SIZE_MB=$SIZE_MB ROUNDS=$ROUNDS CIPHER=$CIPHER bench/gateway/forward.sh"

# --- the helpers both sides run (python3 is on the host and in the tenant image) --------------
cat > "$W/fwd.py" <<'EOF'
import socket, sys, time
mode = sys.argv[1]
CH = b"\0" * (1 << 20)
def drain(c):
    n = 0
    while True:
        b = c.recv(1 << 20)
        if not b:
            return n
        n += len(b)
def push(c, size):
    left = size
    while left:
        k = min(left, len(CH))
        c.sendall(CH[:k])
        left -= k
    c.shutdown(socket.SHUT_WR)
if mode in ("sink", "source"):          # serve one connection on 127.0.0.1:PORT
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(sys.argv[2]))); s.listen(1)
    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        if mode == "sink":
            drain(c)
        else:
            push(c, int(sys.argv[3])); drain(c)
        c.close()
else:                                   # push|pull PORT SIZE: one timed transfer, prints bytes secs
    size = int(sys.argv[3])
    for _ in range(200):
        try:
            c = socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=60); break
        except OSError:
            time.sleep(0.05)
    t0 = time.monotonic()
    if mode == "push":
        push(c, size); n = size + drain(c)
    else:
        n = drain(c)
    print(n, time.monotonic() - t0)
EOF
SIZE=$((SIZE_MB * 1048576))

# --- berth gateway (own state, network and tenant) --------------------------------------------
ssh-keygen -q -t ed25519 -N '' -f "$W/key"
cat > "$W/berth.toml" <<EOF
state_dir = "$W/state"
database_url = "sqlite://$W/state/berth.db"
[ssh]
listen = ["127.0.0.1:$PORT_B"]
agent_binary = "$AGENT"
[network]
name = "$PREFIX-net"
bridge = "bf$(( $$ % 100000 ))"
subnet = "10.214.$(( $$ % 200 + 20 )).0/24"
gateway = "10.214.$(( $$ % 200 + 20 )).1"
[tenants]
image = "$IMAGE"
name_prefix = "$PREFIX"
agent_dir = "$W/agent"
[metrics]
listen = "127.0.0.1:$PORT_M"
EOF
export BERTH_CONFIG=$W/berth.toml
mkdir -p "$W/state" && chmod 700 "$W/state"
"$BERTH" account add bench --no-password >/dev/null
"$BERTH" account key add bench --file "$W/key.pub" >/dev/null
SERVER=$("$BERTH" server create --owner bench 2>>"$W/gateway.log" | tail -1)
"$BERTH" run gateway >>"$W/gateway.log" 2>&1 &
GW_PID=$!
wait_port "$PORT_B" || { cat "$W/gateway.log" >&2; die "gateway did not listen"; }

# --- sshd baseline -----------------------------------------------------------------------------
id "$S_USER" >/dev/null 2>&1 || useradd -m -s /bin/bash "$S_USER"
[ "$(passwd -S "$S_USER" | awk '{ print $2 }')" = L ] && echo "$S_USER:$(head -c 24 /dev/urandom | base64)" | chpasswd
ssh-keygen -q -t ed25519 -N '' -f "$W/sshd_host_key"
chmod 711 "$W"; mkdir -m 755 "$W/pub"; cp "$W/key.pub" "$W/pub/authorized_keys"; chmod 644 "$W/pub/authorized_keys"
chmod 755 "$W/fwd.py"
mkdir -p /run/sshd
cat > "$W/sshd_config" <<EOF
Port $PORT_S
ListenAddress 127.0.0.1
HostKey $W/sshd_host_key
AuthorizedKeysFile $W/pub/authorized_keys
AllowUsers $S_USER
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
StrictModes no
AllowTcpForwarding yes
PidFile $W/sshd.pid
EOF
/usr/sbin/sshd -D -f "$W/sshd_config" -E "$W/sshd.log" &
SSHD_PID=$!
wait_port "$PORT_S" || die "sshd did not listen"

OPTS=(-F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
      -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityAgent=none -o ControlMaster=no
      -o ControlPath=none -o Compression=no -o ExitOnForwardFailure=yes -i "$W/key" -c "$CIPHER"
      -o KexAlgorithms="$KEX")
B=(ssh "${OPTS[@]}" -p "$PORT_B" "$SERVER@127.0.0.1")
S=(ssh "${OPTS[@]}" -p "$PORT_S" "$S_USER@127.0.0.1")
"${B[@]}" true || { cat "$W/gateway.log" >&2; die "berth login failed"; }
"${S[@]}" true || die "sshd login failed"
CONTAINER=$(docker ps -q --no-trunc --filter "name=^/$PREFIX-" | head -1)
docker cp "$W/fwd.py" "$CONTAINER:/tmp/fwd.py"

# far-side commands: berth's run in the container (as the session user), sshd's on the host
far() { # side cmd… (background service or one-shot)
  if [ "$1" = b ]; then shift; docker exec "$CONTAINER" python3 /tmp/fwd.py "$@"
  else shift; su "$S_USER" -s /bin/sh -c "python3 $W/fwd.py $*"; fi
}
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
declare -A T

# One measurement: side (b|s), test (l_up l_down r_up r_down) → MiB/s on stdout, or "fail".
measure() {
  local side=$1 test=$2 ssh_cmd svc fwd out bytes secs rport lport
  if [ "$side" = b ]; then ssh_cmd=("${B[@]}"); else ssh_cmd=("${S[@]}"); fi
  rport=$((20000 + RANDOM % 20000)); lport=$(free_port)
  case $test in
    l_up|l_down)
      [ "$test" = l_up ] && mode=sink || mode=source
      far "$side" "$mode" "$rport" "$SIZE" >"$W/svc.out" 2>&1 & svc=$!
      for _ in $(seq 100); do grep -q ready "$W/svc.out" 2>/dev/null && break; sleep 0.1; done
      "${ssh_cmd[@]}" -N -L "127.0.0.1:$lport:127.0.0.1:$rport" & fwd=$!
      [ "$test" = l_up ] && mode=push || mode=pull
      out=$(python3 "$W/fwd.py" "$mode" "$lport" "$SIZE")
      ;;
    r_up|r_down)
      [ "$test" = r_up ] && mode=sink || mode=source
      python3 "$W/fwd.py" "$mode" "$lport" "$SIZE" >"$W/svc.out" 2>&1 & svc=$!
      for _ in $(seq 100); do grep -q ready "$W/svc.out" 2>/dev/null && break; sleep 0.1; done
      "${ssh_cmd[@]}" -N -R "127.0.0.1:$rport:127.0.0.1:$lport" & fwd=$!
      [ "$test" = r_up ] && mode=push || mode=pull
      out=$(far "$side" "$mode" "$rport" "$SIZE")
      ;;
  esac
  kill "$fwd" "$svc" 2>/dev/null; wait "$fwd" "$svc" 2>/dev/null || true
  [ "$side" = b ] && docker exec "$CONTAINER" pkill -f "fwd.py (sink|source) $rport" 2>/dev/null || true
  [ "$side" = s ] && pkill -u "$S_USER" -f "fwd.py (sink|source) $rport" 2>/dev/null || true
  read -r bytes secs <<<"$out"
  if [ "${bytes:-0}" != "$SIZE" ]; then echo fail; return; fi
  awk -v b="$bytes" -v s="$secs" 'BEGIN { printf "%.1f", b / 1048576 / s }'
}

TESTS=(l_up l_down r_up r_down)
declare -A LABEL=([l_up]="-L upload" [l_down]="-L download" [r_up]="-R upload" [r_down]="-R download" [b]=berth [s]=sshd)
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then order=(b s); else order=(s b); fi
  for t in "${TESTS[@]}"; do
    for side in "${order[@]}"; do
      v=$(measure "$side" "$t")
      printf 'round %d  %-12s %-5s %s MiB/s\n' "$r" "${LABEL[$t]}" "${LABEL[$side]}" "$v"
      [ "$v" = fail ] || T[${side}_$t]="${T[${side}_$t]:-} $v"
    done
  done
done
echo
echo "| forward ($SIZE_MB MiB, median of $ROUNDS) | berth MiB/s | sshd MiB/s | ratio |"
echo "|---|---|---|---|"
for t in "${TESTS[@]}"; do
  # shellcheck disable=SC2086
  b=$(median ${T[b_$t]:-0}); s=$(median ${T[s_$t]:-0})
  printf '| %s | %.0f | %.0f | %s |\n' "${LABEL[$t]}" "$b" "$s" "$(awk -v a="$b" -v b="$s" 'BEGIN { printf "%.2f", (b == 0 ? 0 : a / b) }')"
done
