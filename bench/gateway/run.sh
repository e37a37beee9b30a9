#!/bin/bash
# berth gateway vs OpenSSH sshd on this machine, same client, same cipher, one run: throughput,
# login latency and memory side by side.
#
#   cargo build --release -p berth && make agent
#   bench/gateway/run.sh                              # SIZE_MB=1024 ROUNDS=3 IDLE=100
#   DATA_PATH=attach bench/gateway/run.sh             # the old docker-exec attach stream
#   SIZE_MB=32 ROUNDS=1 IDLE=10 LOGIN_N=5 bench/gateway/run.sh   # smoke test (figures meaningless)
#   HOP=1 bench/gateway/run.sh                        # through a front and the internal hop
#
# HOP=1: the client logs in to `berth run front` (node n1), which relays over the internal SSH
#        hop to `berth run node` (node n2, holding the server) on the same machine; the store is
#        a PostgreSQL database of the run's own on the local cluster (scripts/test's `berth` role).
#        "gateway" memory is then the node process, "front" the front process.
# berth: ssh server<N>@127.0.0.1 → gateway → (agent path) berth-agent in the tenant container
#        hands over pipes by SCM_RIGHTS, or (attach path) a Docker exec's attach stream.
# sshd:  ssh berthbench@127.0.0.1 → /usr/sbin/sshd on the host, private port and config (the
#        baseline; S_USER, created if missing like bench/gateway/auth_env.sh does).
#
# Measured (berth and sshd alternating; the order flips every round so neither always goes first):
#  1. throughput, SIZE_MB MiB each, ROUNDS rounds, median: ssh cat upload/download, sftp put/get,
#     scp upload/download (scp's default SFTP protocol). ssh and sftp uploads go to /dev/null, scp
#     ones to a file deleted right after; downloads read a file already in the page cache.
#     Ratio = berth MiB/s / sshd MiB/s (target ≥ 0.9).
#  2. login + exec `true` with a key, LOGIN_N runs each (container running, agent warm), median;
#     ratio = berth ms / sshd ms (target ≤ 1.0).
#  3. whole-host memory per idle session (`ssh -T … 'sleep 600'`, IDLE of them): PSS from
#     /proc/PID/smaps_rollup, growth / IDLE. berth = gateway + dockerd + containerd + every
#     containerd-shim + every process in the tenant container's cgroup (agent, sleeps); sshd = every
#     sshd process + everything below our sshd (the sleeps). The gateway is restarted first, so
#     allocator state from the transfers does not count. Ratio target ≤ 0.5.
# Prints machine facts first, one line per measurement, the gateway's data-path counters, and a
# Markdown table for docs/BENCHMARKS.md. Run it alone on the machine: anything else running skews it.
set -euo pipefail
[ -n "${DEBUG:-}" ] && set -x

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BERTH=${BERTH:-$ROOT/target/release/berth}
AGENT=${AGENT:-$ROOT/target/x86_64-unknown-linux-gnu/release/berth-agent}
DATA_PATH=${DATA_PATH:-agent}  # agent | attach
HOP=${HOP:-0}  # 1: through a front and the internal hop (needs PostgreSQL)
SIZE_MB=${SIZE_MB:-1024}
ROUNDS=${ROUNDS:-3}
LOGIN_N=${LOGIN_N:-20}
IDLE=${IDLE:-100}
CIPHER=${CIPHER:-aes256-gcm@openssh.com}  # russh offers no aes128-gcm
# Pinned on both sides: OpenSSH 9.2 prefers sntrup761x25519, whose key generation alone costs the
# client ~150 ms here, and the gateway negotiates curve25519; unpinned, logins compare KEXes.
KEX=${KEX:-curve25519-sha256}
IMAGE=${IMAGE:-berth/tenant:bookworm}
S_USER=${S_USER:-berthbench}  # the sshd side logs in as this host user (created if missing)
CMDLINE="SIZE_MB=$SIZE_MB ROUNDS=$ROUNDS LOGIN_N=$LOGIN_N IDLE=$IDLE DATA_PATH=$DATA_PATH HOP=$HOP CIPHER=$CIPHER KEX=$KEX${WINDOW:+ WINDOW=$WINDOW} bench/gateway/run.sh"
PREFIX=bbench$$
W=$(mktemp -d /tmp/berth-bench.XXXXXX)
trap cleanup EXIT

cleanup() {
  set +e
  [ -n "${IDLE_PIDS:-}" ] && kill $IDLE_PIDS 2>/dev/null
  [ -n "${FRONT_PID:-}" ] && kill -TERM "$FRONT_PID" 2>/dev/null && wait "$FRONT_PID" 2>/dev/null
  [ -n "${GW_PID:-}" ] && kill -TERM "$GW_PID" 2>/dev/null && wait "$GW_PID" 2>/dev/null
  [ -n "${PG_DB:-}" ] && su postgres -c "psql -qc 'DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)'" >/dev/null 2>&1
  [ -n "${SSHD_PID:-}" ] && kill "$SSHD_PID" 2>/dev/null
  docker ps -aq --filter "name=^/$PREFIX-" | xargs -r docker rm -f -v >/dev/null 2>&1
  docker volume ls -q --filter "name=$PREFIX-" | xargs -r docker volume rm -f >/dev/null 2>&1
  docker network rm "$PREFIX-net" >/dev/null 2>&1
  [ -n "${HOST_BLOB:-}" ] && rm -f "$HOST_BLOB" "$HOST_BLOB.up"
  rm -rf "$W"
}

die() { echo "run.sh: $*" >&2; exit 1; }
[ -x "$BERTH" ] || die "build first: cargo build --release -p berth"
case $DATA_PATH in
  agent) [ -x "$AGENT" ] || die "build the agent first: make agent (or DATA_PATH=attach)"; AGENT_SETTING=$AGENT ;;
  attach) AGENT_SETTING=off ;;
  *) die "DATA_PATH must be agent or attach" ;;
esac
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT_B=${PORT_B:-$(free_port)}
PORT_S=${PORT_S:-$(free_port)}
PORT_M=${PORT_M:-$(free_port)}
PORT_H=${PORT_H:-$(free_port)}  # HOP=1: the node's hop endpoint
PORT_F=${PORT_F:-$(free_port)}  # HOP=1: the front's metrics
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

# --- machine facts ---------------------------------------------------------------------------
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
COMMIT=$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || COMMIT="$COMMIT (+ uncommitted changes)"
CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
SSHV=$(ssh -V 2>&1)
echo "machine: $(nproc) CPUs ($CPU), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r)"
echo "client/server: $SSHV; docker $(docker version -f '{{.Server.Version}}' 2>/dev/null || echo '?')"
echo "commit: $COMMIT; berth data path: $DATA_PATH (agent_binary = \"$AGENT_SETTING\")"
echo "load average at start: $LOAD0"
echo "command: $CMDLINE"
echo

# --- berth gateway ---------------------------------------------------------------------------
ssh-keygen -q -t ed25519 -N '' -f "$W/key"
DB_URL="sqlite://$W/state/berth.db"
if [ "$HOP" = 1 ]; then
  PG_DB=berth_bench_$$
  su postgres -c "psql -qc 'CREATE DATABASE $PG_DB OWNER berth'" >/dev/null || die "HOP=1 needs the local PostgreSQL with role berth (scripts/test --setup-only)"
  DB_URL="postgres://berth:berth-test@127.0.0.1/$PG_DB"
fi
cat > "$W/berth.toml" <<EOF
state_dir = "$W/state"
database_url = "$DB_URL"
[ssh]
listen = ["127.0.0.1:$PORT_B"]
max_sessions_per_server = 1000
agent_binary = "$AGENT_SETTING"
${WINDOW:+window_size = $WINDOW}
[ssh.auth]
max_unauthenticated_per_ip = 512
connections_per_ip_burst = 1000
[network]
name = "$PREFIX-net"
bridge = "bb$(( $$ % 100000 ))"
subnet = "10.213.$(( $$ % 200 + 20 )).0/24"
gateway = "10.213.$(( $$ % 200 + 20 )).1"
[tenants]
image = "$IMAGE"
name_prefix = "$PREFIX"
agent_dir = "$W/agent"
[metrics]
listen = "127.0.0.1:$PORT_M"
EOF
if [ "$HOP" = 1 ]; then
  # The node: no client listener, the hop endpoint; the front: its own state dir and metrics.
  printf '[cluster]\nnode = "n2"\nadvertise = "127.0.0.1:%s"\n' "$PORT_H" >>"$W/berth.toml"
  sed -e "s#^listen = \\[\"127.0.0.1:$PORT_B\"\\]#listen = []#" -i "$W/berth.toml"
  sed -e "s#^listen = \\[\\]#listen = [\"127.0.0.1:$PORT_B\"]#" \
      -e "s#127.0.0.1:$PORT_M#127.0.0.1:$PORT_F#" -e "s#$W/state#$W/front-state#" \
      -e 's#^node = "n2"#node = "n1"\nfront = "f1"#' "$W/berth.toml" >"$W/front.toml"
  mkdir -p "$W/front-state" && chmod 700 "$W/front-state"
fi
export BERTH_CONFIG=$W/berth.toml
mkdir -p "$W/state" && chmod 700 "$W/state"
start_gateway() {
  if [ "$HOP" = 1 ]; then
    "$BERTH" run node >>"$W/gateway.log" 2>&1 &
    GW_PID=$!
    wait_port "$PORT_H" || { cat "$W/gateway.log" >&2; die "node did not listen on $PORT_H"; }
    BERTH_CONFIG=$W/front.toml "$BERTH" run front >>"$W/front.log" 2>&1 &
    FRONT_PID=$!
  else
    "$BERTH" run gateway >>"$W/gateway.log" 2>&1 &
    GW_PID=$!
  fi
  wait_port "$PORT_B" || { cat "$W/gateway.log" "$W/front.log" >&2 2>/dev/null; die "gateway did not listen on $PORT_B"; }
}
if [ "$HOP" = 1 ]; then
  "$BERTH" run node >>"$W/gateway.log" 2>&1 &
  GW_PID=$!
  wait_port "$PORT_H" || { cat "$W/gateway.log" >&2; die "node did not listen on $PORT_H"; }
fi
"$BERTH" account add bench --no-password >/dev/null
"$BERTH" account key add bench --file "$W/key.pub" >/dev/null
if [ "$HOP" = 1 ]; then
  SERVER=$("$BERTH" server create --owner bench --node n2 2>>"$W/gateway.log" | tail -1)
  kill -TERM "$GW_PID"; wait "$GW_PID" 2>/dev/null || true
else
  SERVER=$("$BERTH" server create --owner bench 2>>"$W/gateway.log" | tail -1)
fi
start_gateway

# --- sshd baseline ---------------------------------------------------------------------------
# A plain user (as bench/gateway/auth_env.sh): root's rc files on a dev box (pyenv init, …) would
# be timed on every sshd login, while the container's user has stock Debian ones.
id "$S_USER" >/dev/null 2>&1 || useradd -m -s /bin/bash "$S_USER"
# sshd refuses a locked account (useradd's "!"): a random password, never used (PasswordAuthentication no).
[ "$(passwd -S "$S_USER" | awk '{ print $2 }')" = L ] && echo "$S_USER:$(head -c 24 /dev/urandom | base64)" | chpasswd
S_HOME=$(getent passwd "$S_USER" | cut -d: -f6)
ssh-keygen -q -t ed25519 -N '' -f "$W/sshd_host_key"
chmod 711 "$W"; mkdir -m 755 "$W/pub"   # sshd reads authorized_keys as the user
cp "$W/key.pub" "$W/pub/authorized_keys"; chmod 644 "$W/pub/authorized_keys"
mkdir -p /run/sshd
cat > "$W/sshd_config" <<EOF
Port $PORT_S
ListenAddress 127.0.0.1
HostKey $W/sshd_host_key
AuthorizedKeysFile $W/pub/authorized_keys
AllowUsers $S_USER
PermitRootLogin no
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
StrictModes no
Subsystem sftp /usr/lib/openssh/sftp-server
MaxSessions 1000
MaxStartups 1000
PidFile $W/sshd.pid
EOF
/usr/sbin/sshd -D -f "$W/sshd_config" -E "$W/sshd.log" &
SSHD_PID=$!
wait_port "$PORT_S" || die "sshd did not listen on $PORT_S"

# -F /dev/null: no user or system client config (no ControlMaster, no agent, no GSSAPI).
OPTS=(-F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
      -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityAgent=none -o ControlMaster=no
      -o ControlPath=none -o GSSAPIAuthentication=no -o Compression=no -i "$W/key" -c "$CIPHER"
      -o KexAlgorithms="$KEX")
B_DEST="$SERVER@127.0.0.1"
S_DEST="$S_USER@127.0.0.1"
B=(ssh "${OPTS[@]}" -p "$PORT_B" "$B_DEST")
S=(ssh "${OPTS[@]}" -p "$PORT_S" "$S_DEST")
"${B[@]}" true 2>"$W/login.err" || { cat "$W/login.err" >&2; echo "berth login failed; log:" >&2; cat "$W/gateway.log" >&2; exit 1; }
"${S[@]}" true || die "sshd login failed (log: $(cat "$W/sshd.log"))"
CONTAINER=$(docker ps -q --no-trunc --filter "name=^/$PREFIX-" | head -1)
[ -n "$CONTAINER" ] || die "no running tenant container after login"
negotiated() { "$@" -v true 2>&1 | awk '/kex: algorithm:/ { k = $NF } /kex: host key algorithm:/ { h = $NF }
  /kex: server->client cipher:/ { c = $5 } END { printf "kex %s, host key %s, cipher %s", k, h, c }'; }
NEG_B=$(negotiated "${B[@]}")
NEG_S=$(negotiated "${S[@]}")
echo "negotiated: berth $NEG_B; sshd $NEG_S"

now() { date +%s.%N; }
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
fmt() { awk -v x="$1" -v p="${2:-0}" 'BEGIN { printf "%.*f", p, x }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b == 0 ? 0 : a / b) }'; }
metrics_line() { curl -fsS "http://127.0.0.1:$PORT_M/metrics" | grep '^berth_gateway_session_paths_total' || echo "(no berth_gateway_session_paths_total samples)"; }
declare -A T   # T[side_test] = "MiB/s MiB/s …" (one per round)

# --- 1. throughput ---------------------------------------------------------------------------
# First, that bytes arrive whole both ways (a fast path that drops data would look fast).
for side in b s; do
  if [ "$side" = b ]; then cmd=("${B[@]}"); else cmd=("${S[@]}"); fi
  up=$(head -c 8M /dev/zero | "${cmd[@]}" 'wc -c')
  down=$("${cmd[@]}" 'head -c 8M /dev/zero' | wc -c)
  [ "$up" -eq 8388608 ] && [ "$down" -eq 8388608 ] || die "$side: 8 MiB check moved $up bytes up, $down down"
done
# Sources: a random file in the login's home on each side (same relative name), read once so it
# is in the page cache; the client uploads the host one.
BLOB=berth-bench-$$.blob
HOST_BLOB=$S_HOME/$BLOB
head -c "${SIZE_MB}M" /dev/urandom > "$HOST_BLOB"; chmod 644 "$HOST_BLOB"
"${B[@]}" "head -c ${SIZE_MB}M /dev/urandom > $BLOB && cat $BLOB >/dev/null"
printf 'put %s /dev/null\n' "$HOST_BLOB" > "$W/put"
printf 'get %s /dev/null\n' "$BLOB" > "$W/get"
SF=(sftp "${OPTS[@]}" -q)
SC=(scp "${OPTS[@]}" -q)

run_one() { # side test
  local side=$1 test=$2 port dest ssh_cmd
  if [ "$side" = b ]; then port=$PORT_B dest=$B_DEST ssh_cmd=("${B[@]}"); else port=$PORT_S dest=$S_DEST ssh_cmd=("${S[@]}"); fi
  case $test in
    up)       head -c "${SIZE_MB}M" /dev/zero | "${ssh_cmd[@]}" 'cat >/dev/null' ;;
    down)     "${ssh_cmd[@]}" "head -c ${SIZE_MB}M /dev/zero" >/dev/null ;;
    sftp_put) "${SF[@]}" -P "$port" -b "$W/put" "$dest" >/dev/null ;;
    sftp_get) "${SF[@]}" -P "$port" -b "$W/get" "$dest" >/dev/null ;;
    # scp (SFTP protocol) truncates and fsetstat()s its target, which /dev/null refuses: a file,
    # deleted right after (outside the timing), so its dirty pages are dropped, not written back.
    scp_up)   "${SC[@]}" -P "$port" "$HOST_BLOB" "$dest:$BLOB.up" ;;
    scp_down) "${SC[@]}" -P "$port" "$dest:$BLOB" "$W/down" ;;
  esac
}
after_one() { # side test: tidy up outside the timing
  case $2 in
    scp_up) if [ "$1" = b ]; then "${B[@]}" "rm -f $BLOB.up"; else rm -f "$HOST_BLOB.up"; fi ;;
    scp_down) rm -f "$W/down" ;;
  esac
}
TESTS=(up down sftp_put sftp_get scp_up scp_down)
declare -A LABEL=([up]="ssh cat upload" [down]="ssh cat download" [sftp_put]="sftp put" [sftp_get]="sftp get"
                  [scp_up]="scp upload" [scp_down]="scp download" [b]=berth [s]=sshd)
T0=$(now)
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then order=(b s); else order=(s b); fi
  for t in "${TESTS[@]}"; do
    for side in "${order[@]}"; do
      t0=$(now)
      run_one "$side" "$t" || die "round $r: ${LABEL[$side]} ${LABEL[$t]} failed"
      t1=$(now)
      after_one "$side" "$t"
      v=$(awk -v mb="$SIZE_MB" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", mb / (b - a) }')
      T[${side}_$t]="${T[${side}_$t]:-} $v"
      printf 'round %d  %-17s %-5s %7.2f s  %6.0f MiB/s\n' "$r" "${LABEL[$t]}" "${LABEL[$side]}" \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" "$v"
    done
  done
done
T_XFER=$(awk -v a="$T0" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }')
rm -f "$HOST_BLOB"
"${B[@]}" "rm -f $BLOB"
declare -A M   # medians
for t in "${TESTS[@]}"; do
  for side in b s; do
    # shellcheck disable=SC2086
    M[${side}_$t]=$(median ${T[${side}_$t]})
  done
  printf 'median  %-17s berth %6.0f MiB/s  sshd %6.0f MiB/s  ratio %s\n' "${LABEL[$t]}" \
    "${M[b_$t]}" "${M[s_$t]}" "$(ratio "${M[b_$t]}" "${M[s_$t]}")"
done

# --- 2. login + exec true --------------------------------------------------------------------
"${B[@]}" true  # container running, agent warm
LB=() LS=()
T0=$(now)
for i in $(seq "$LOGIN_N"); do
  for side in b s; do
    if [ "$side" = b ]; then cmd=("${B[@]}"); else cmd=("${S[@]}"); fi
    t0=$(now); "${cmd[@]}" true || die "login $i (${LABEL[$side]}) failed"; t1=$(now)
    ms=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", (b - a) * 1000 }')
    if [ "$side" = b ]; then LB+=("$ms"); else LS+=("$ms"); fi
  done
done
T_LOGIN=$(awk -v a="$T0" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }')
M[b_login]=$(median "${LB[@]}")
M[s_login]=$(median "${LS[@]}")
echo "login + exec true (median of $LOGIN_N): berth $(fmt "${M[b_login]}" 1) ms, sshd $(fmt "${M[s_login]}" 1) ms, ratio $(ratio "${M[b_login]}" "${M[s_login]}")"
PATHS_1=$(metrics_line)
echo "data paths taken (transfers + logins):"
echo "$PATHS_1" | sed 's/^/  /'

# --- 3. memory per idle session ----------------------------------------------------------------
pss() { # pids… → summed PSS in KiB (vanished processes count 0)
  local p s=0 v
  for p in "$@"; do
    v=$(awk '/^Pss:/ { print $2; exit }' "/proc/$p/smaps_rollup" 2>/dev/null || true)
    s=$(( s + ${v:-0} ))
  done
  echo "$s"
}
# The tenant container's cgroup (cgroup v1: the pids hierarchy; v2: the unified one).
CINIT=$(docker inspect -f '{{.State.Pid}}' "$CONTAINER")
CGPATH=$(awk -F: '$2 == "pids" { print $3; exit }' "/proc/$CINIT/cgroup")
if [ -n "$CGPATH" ]; then CGDIR=/sys/fs/cgroup/pids$CGPATH
else CGDIR=/sys/fs/cgroup$(awk -F: '$1 == "0" { print $3; exit }' "/proc/$CINIT/cgroup"); fi
[ -r "$CGDIR/cgroup.procs" ] || die "cannot find the container's cgroup ($CGDIR)"
container_pids() { find "$CGDIR" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -un; }
descendants() { # pid → pid and all its descendants
  ps -eo pid=,ppid= | awk -v root="$1" '{ kids[$2] = kids[$2] " " $1 }
    END { q[1] = root; n = 1; for (i = 1; i <= n; i++) { print q[i]; m = split(kids[q[i]], k, " "); for (j = 1; j <= m; j++) q[++n] = k[j] } }'
}
count_sleeps() { # pids… → how many are idle sessions (`sleep 600`)
  local p c=0
  for p in "$@"; do if [ "$(tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline")" = "sleep 600 " ]; then c=$((c + 1)); fi; done
  echo "$c"
}
# berth components: "name pss" lines
berth_mem() {
  local cpids
  cpids=$(container_pids)
  echo "gateway $(pss "$GW_PID")"
  echo "front $(pss ${FRONT_PID:-})"
  echo "dockerd $(pss $(pgrep -x dockerd))"
  echo "containerd $(pss $(pgrep -x containerd))"
  echo "shims $(pss $({ pgrep -x containerd-shim; pgrep -f '^[^ ]*containerd-shim'; } | sort -u))"
  echo "container $(pss $cpids)"
  echo "sleeps $(count_sleeps $cpids)"
}
sshd_pids() { { pgrep -x sshd || true; pgrep -x sshd-session || true; descendants "$SSHD_PID"; } | sort -un; }
sshd_mem() {
  local all
  all=$(sshd_pids)
  local sshds="" others="" p
  for p in $all; do case $(cat "/proc/$p/comm" 2>/dev/null) in sshd|sshd-session) sshds="$sshds $p" ;; *) others="$others $p" ;; esac; done
  echo "sshd $(pss $sshds)"
  echo "sessions $(pss $others)"
  echo "sleeps $(count_sleeps $(descendants "$SSHD_PID"))"
}
get() { awk -v k="$1" '$1 == k { print $2 }' <<<"$2"; }
total() { awk '$1 != "sleeps" { s += $2 } END { print s }' <<<"$1"; }
open_idle() { # ssh-command… : IDLE background idle sessions
  local i
  IDLE_PIDS=""
  for i in $(seq "$IDLE"); do
    "$@" -T 'sleep 600' </dev/null >/dev/null 2>>"$W/idle.err" &
    IDLE_PIDS="$IDLE_PIDS $!"
    if [ $((i % 20)) -eq 0 ]; then sleep 1; fi
  done
}
wait_sleeps() { # pid-lister want: poll until `want` idle sessions run (60 s at most), then settle
  local i n
  for i in $(seq 120); do
    n=$(count_sleeps $($1))
    if [ "$n" -eq "$2" ]; then sleep 3; return 0; fi
    sleep 0.5
  done
  echo "warning: $n idle sessions running after 60 s, wanted $2" >&2
}
sshd_tree() { descendants "$SSHD_PID"; }

if [ -n "${FRONT_PID:-}" ]; then kill -TERM "$FRONT_PID"; wait "$FRONT_PID" 2>/dev/null || true; fi
kill -TERM "$GW_PID"; wait "$GW_PID" 2>/dev/null || true
start_gateway
"${B[@]}" true  # starts the agent again (it exits with the gateway that started it)
sleep 2
T0=$(now)
bb=$(berth_mem)
open_idle "${B[@]}"
wait_sleeps container_pids "$IDLE"
bl=$(berth_mem)
PATHS_2=$(metrics_line)
kill $IDLE_PIDS 2>/dev/null || true; IDLE_PIDS=""
wait_sleeps container_pids 0
M[b_mem]=$(( ($(total "$bl") - $(total "$bb")) / IDLE ))
echo "berth whole-host PSS: $(total "$bb") KiB → $(total "$bl") KiB with $IDLE sessions ($(get sleeps "$bl") sleeps alive) → ${M[b_mem]} KiB/session"
for k in gateway front dockerd containerd shims container; do
  printf '  %-10s %8d → %8d KiB  (%+d KiB/session)\n' "$k" "$(get $k "$bb")" "$(get $k "$bl")" $(( ($(get $k "$bl") - $(get $k "$bb")) / IDLE ))
done
sb=$(sshd_mem)
open_idle "${S[@]}"
wait_sleeps sshd_tree "$IDLE"
sl=$(sshd_mem)
kill $IDLE_PIDS 2>/dev/null || true; IDLE_PIDS=""
wait_sleeps sshd_tree 0
T_MEM=$(awk -v a="$T0" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }')
M[s_mem]=$(( ($(total "$sl") - $(total "$sb")) / IDLE ))
echo "sshd whole-host PSS: $(total "$sb") KiB → $(total "$sl") KiB with $IDLE sessions ($(get sleeps "$sl") sleeps alive) → ${M[s_mem]} KiB/session"
for k in sshd sessions; do
  printf '  %-10s %8d → %8d KiB  (%+d KiB/session)\n' "$k" "$(get $k "$sb")" "$(get $k "$sl")" $(( ($(get $k "$sl") - $(get $k "$sb")) / IDLE ))
done
[ -s "$W/idle.err" ] && { echo "idle session errors (first 5):"; head -5 "$W/idle.err"; }
echo "data paths taken (idle sessions, restarted gateway):"
echo "$PATHS_2" | sed 's/^/  /'
echo "gateway log: $(grep -c 'session agent started' "$W/gateway.log" || true) × \"session agent started\", $(grep -ci 'agent unavailable\|agent path unavailable\|no session agent' "$W/gateway.log" || true) agent-unavailable lines"
if [ "$DATA_PATH" = agent ] && grep -Eq 'path="attach"} [1-9]' <<<"$PATHS_1"$'\n'"$PATHS_2"; then
  echo "WARNING: sessions took the attach path; gateway log lines about the agent:"
  grep -i agent "$W/gateway.log" | tail -5
fi

LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
echo "load average at end: $LOAD1 (start: $LOAD0); phases: transfers ${T_XFER} s, logins ${T_LOGIN} s, memory ${T_MEM} s"

row() { # label test
  printf '| %s | %s MiB/s | %s MiB/s | %s× | ≥ 0.9× |\n' "$1" "$(fmt "${M[b_$2]}")" "$(fmt "${M[s_$2]}")" "$(ratio "${M[b_$2]}" "${M[s_$2]}")"
}
cat <<EOF

Machine: $(nproc) CPUs ($CPU), kernel $(uname -r), $SSHV, load average $LOAD0 at start / $LOAD1 at end; commit $COMMIT.
Negotiated: berth $NEG_B; sshd $NEG_S.
Command: \`$CMDLINE\`

| measurement ($SIZE_MB MiB, $CIPHER, median of $ROUNDS alternating rounds) | berth ($DATA_PATH path) → container | sshd → host | berth/sshd | target |
|---|---|---|---|---|
$(for t in "${TESTS[@]}"; do row "${LABEL[$t]}" "$t"; done)
| login + exec true, key (median of $LOGIN_N) | $(fmt "${M[b_login]}" 1) ms | $(fmt "${M[s_login]}" 1) ms | $(ratio "${M[b_login]}" "${M[s_login]}")× | ≤ 1.0× |
| whole-host memory per idle session ($IDLE, PSS) | ${M[b_mem]} KiB | ${M[s_mem]} KiB | $(ratio "${M[b_mem]}" "${M[s_mem]}")× | ≤ 0.5× |
EOF
