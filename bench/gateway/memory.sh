#!/bin/bash
# Memory under a burst of concurrent transfers: berth's gateway vs OpenSSH sshd on loopback, same
# client, same load, and whether the gateway gives the memory back once the load is over.
#
#   cargo build --release -p berth && make agent
#   bench/gateway/memory.sh                          # N=60 SIZE_MB=16 ROUNDS=3 AFTER=60
#   N=12 SIZE_MB=4 ROUNDS=1 AFTER=20 bench/gateway/memory.sh   # smoke (figures meaningless)
#   MALLOC_ARENA_MAX=8 bench/gateway/memory.sh       # glibc tunables reach the gateway as is
#   WINDOW=8388608 bench/gateway/memory.sh           # ssh.window_size other than the default
#   KIND=1 bench/gateway/memory.sh                   # one kind of transfer only (0-3, below)
#
# Load: N transfers at once, each on its own connection, SIZE_MB MiB each, a quarter of each kind:
# 0 ssh cat upload (to /dev/null), 1 ssh cat download (from /dev/zero), 2 sftp put (to /dev/null),
# 3 sftp get (of a file in the page cache); ROUNDS rounds, berth and sshd alternating (the order flips
# every round).
# Measured:
#  - whole-host PSS (from /proc/PID/smaps_rollup) sampled every 0.1 s during each round by
#    bench/gateway/pss_sampler.py (one process at nice -10, so the load does not starve it): peak
#    and mean, each also as growth over the side's idle figure.
#    berth = gateway + dockerd + containerd + every containerd-shim + every process in the tenant
#    container's cgroup (agent, sftp-server, cat, head); sshd = every sshd process and everything
#    below our sshd. The ssh/sftp clients count on neither side. Target: berth ≤ sshd. Docker's
#    idle daemons count on berth's side only, so the growth figures compare what the load costs
#    a host that runs Docker either way.
#  - the gateway's RSS: idle (after one warm-up login), peak during the load, right after it, and
#    AFTER seconds after it (polled each second; the time it first came within 2× idle is
#    printed). Target: within 2× idle within 60 s.
# Run it alone on the machine: anything else running skews both.
set -euo pipefail
[ -n "${DEBUG:-}" ] && set -x

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BERTH=${BERTH:-$ROOT/target/release/berth}
AGENT=${AGENT:-$ROOT/target/x86_64-unknown-linux-gnu/release/berth-agent}
N=${N:-60}
SIZE_MB=${SIZE_MB:-16}
ROUNDS=${ROUNDS:-3}
AFTER=${AFTER:-60}
CIPHER=${CIPHER:-aes256-gcm@openssh.com}
KEX=${KEX:-curve25519-sha256}
IMAGE=${IMAGE:-berth/tenant:bookworm}
S_USER=${S_USER:-berthbench}  # the sshd side logs in as this host user (created if missing)
CMDLINE="N=$N SIZE_MB=$SIZE_MB ROUNDS=$ROUNDS AFTER=$AFTER CIPHER=$CIPHER${WINDOW:+ WINDOW=$WINDOW}${KIND:+ KIND=$KIND}${MALLOC_ARENA_MAX:+ MALLOC_ARENA_MAX=$MALLOC_ARENA_MAX} bench/gateway/memory.sh"
PREFIX=bmem$$
W=$(mktemp -d /tmp/berth-mem.XXXXXX)
trap cleanup EXIT

cleanup() {
  set +e
  [ -n "${LOAD_PIDS:-}" ] && kill $LOAD_PIDS 2>/dev/null
  [ -n "${GW_PID:-}" ] && kill -TERM "$GW_PID" 2>/dev/null && wait "$GW_PID" 2>/dev/null
  [ -n "${SSHD_PID:-}" ] && kill "$SSHD_PID" 2>/dev/null
  docker ps -aq --filter "name=^/$PREFIX-" | xargs -r docker rm -f -v >/dev/null 2>&1
  docker volume ls -q --filter "name=$PREFIX-" | xargs -r docker volume rm -f >/dev/null 2>&1
  docker network rm "$PREFIX-net" >/dev/null 2>&1
  [ -n "${HOST_BLOB:-}" ] && rm -f "$HOST_BLOB"
  rm -rf "$W"
}

die() { echo "memory.sh: $*" >&2; exit 1; }
[ -x "$BERTH" ] || die "build first: cargo build --release -p berth (or BERTH=path)"
[ -x "$AGENT" ] || die "build the agent first: make agent (or AGENT=path)"
[ $((N % 4)) -eq 0 ] || die "N must be a multiple of 4 (a quarter of each transfer kind)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
now() { date +%s.%N; }
PORT_B=$(free_port)
PORT_S=$(free_port)
PORT_M=$(free_port)

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
COMMIT=$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || COMMIT="$COMMIT (+ uncommitted changes)"
CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
echo "machine: $(nproc) CPUs ($CPU), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r), glibc $(ldd --version 2>/dev/null | awk 'NR == 1 { print $NF }')"
echo "client/server: $(ssh -V 2>&1); docker $(docker version -f '{{.Server.Version}}' 2>/dev/null || echo '?')"
echo "commit: $COMMIT; berth: $BERTH"
echo "load average at start: $LOAD0"
echo "command: $CMDLINE"
echo

# --- berth gateway ---------------------------------------------------------------------------
ssh-keygen -q -t ed25519 -N '' -f "$W/key"
mkdir -p "$W/state" && chmod 700 "$W/state"
cat > "$W/berth.toml" <<EOF
state_dir = "$W/state"
database_url = "sqlite://$W/state/berth.db"
[ssh]
listen = ["127.0.0.1:$PORT_B"]
max_sessions_per_server = 1000
agent_binary = "$AGENT"
${WINDOW:+window_size = $WINDOW}
[ssh.auth]
max_unauthenticated_per_ip = 512
connections_per_ip_burst = 1000
[network]
name = "$PREFIX-net"
bridge = "bm$(( $$ % 100000 ))"
subnet = "10.214.$(( $$ % 200 + 20 )).0/24"
gateway = "10.214.$(( $$ % 200 + 20 )).1"
[tenants]
image = "$IMAGE"
name_prefix = "$PREFIX"
agent_dir = "$W/agent"
[publish]
hosts_file = ""
[metrics]
listen = "127.0.0.1:$PORT_M"
EOF
export BERTH_CONFIG=$W/berth.toml
"$BERTH" run gateway >>"$W/gateway.log" 2>&1 &
GW_PID=$!
wait_port "$PORT_B" || { cat "$W/gateway.log" >&2; die "gateway did not listen on $PORT_B"; }
"$BERTH" account add bench --no-password >/dev/null
"$BERTH" account key add bench --file "$W/key.pub" >/dev/null
SERVER=$("$BERTH" server create --owner bench 2>>"$W/gateway.log" | tail -1)

# --- sshd baseline (as bench/gateway/run.sh) -----------------------------------------------------
id "$S_USER" >/dev/null 2>&1 || useradd -m -s /bin/bash "$S_USER"
[ "$(passwd -S "$S_USER" | awk '{ print $2 }')" = L ] && echo "$S_USER:$(head -c 24 /dev/urandom | base64)" | chpasswd
S_HOME=$(getent passwd "$S_USER" | cut -d: -f6)
ssh-keygen -q -t ed25519 -N '' -f "$W/sshd_host_key"
chmod 711 "$W"; mkdir -m 755 "$W/pub"
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

OPTS=(-F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
      -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityAgent=none -o ControlMaster=no
      -o ControlPath=none -o GSSAPIAuthentication=no -o Compression=no -i "$W/key" -c "$CIPHER"
      -o KexAlgorithms="$KEX")
B_DEST="$SERVER@127.0.0.1"
S_DEST="$S_USER@127.0.0.1"
B=(ssh "${OPTS[@]}" -p "$PORT_B" "$B_DEST")
S=(ssh "${OPTS[@]}" -p "$PORT_S" "$S_DEST")
"${B[@]}" true 2>"$W/login.err" || { cat "$W/login.err" "$W/gateway.log" >&2; die "berth login failed"; }
"${S[@]}" true || die "sshd login failed (log: $(cat "$W/sshd.log"))"
CONTAINER=$(docker ps -q --no-trunc --filter "name=^/$PREFIX-" | head -1)
[ -n "$CONTAINER" ] || die "no running tenant container after login"

# Sources for the gets: a file in the login's home on each side, read once (page cache).
BLOB=berth-mem-$$.blob
HOST_BLOB=$S_HOME/$BLOB
head -c "${SIZE_MB}M" /dev/urandom > "$HOST_BLOB"; chmod 644 "$HOST_BLOB"
"${B[@]}" "head -c ${SIZE_MB}M /dev/urandom > $BLOB && cat $BLOB >/dev/null"
printf 'put %s /dev/null\n' "$HOST_BLOB" > "$W/put"
printf 'get %s /dev/null\n' "$BLOB" > "$W/get"

# --- what is measured ------------------------------------------------------------------------------
rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
CINIT=$(docker inspect -f '{{.State.Pid}}' "$CONTAINER")
CGPATH=$(awk -F: '$2 == "pids" { print $3; exit }' "/proc/$CINIT/cgroup")
if [ -n "$CGPATH" ]; then CGDIR=/sys/fs/cgroup/pids$CGPATH
else CGDIR=/sys/fs/cgroup$(awk -F: '$1 == "0" { print $3; exit }' "/proc/$CINIT/cgroup"); fi
[ -r "$CGDIR/cgroup.procs" ] || die "cannot find the container's cgroup ($CGDIR)"
load() { # side: N transfers at once, waits for all; fails if any failed
  local side=$1 port dest ssh_cmd i pids="" failed=0 p
  if [ "$side" = b ]; then port=$PORT_B dest=$B_DEST ssh_cmd=("${B[@]}"); else port=$PORT_S dest=$S_DEST ssh_cmd=("${S[@]}"); fi
  for i in $(seq "$N"); do
    case ${KIND:-$((i % 4))} in
      0) head -c "${SIZE_MB}M" /dev/zero | "${ssh_cmd[@]}" 'cat >/dev/null' & ;;
      1) "${ssh_cmd[@]}" "head -c ${SIZE_MB}M /dev/zero" >/dev/null & ;;
      2) sftp "${OPTS[@]}" -q -P "$port" -b "$W/put" "$dest" >/dev/null & ;;
      3) sftp "${OPTS[@]}" -q -P "$port" -b "$W/get" "$dest" >/dev/null & ;;
    esac
    pids="$pids $!"
  done
  LOAD_PIDS=$pids
  for p in $pids; do wait "$p" || failed=$((failed + 1)); done
  LOAD_PIDS=""
  [ "$failed" -eq 0 ] || die "$side: $failed of $N transfers failed"
}
SAMPLER=$ROOT/bench/gateway/pss_sampler.py
sampler_args() { if [ "$1" = b ]; then echo "berth $GW_PID $CGDIR"; else echo "sshd $SSHD_PID"; fi; }
sampled_load() { # side → prints "peak_pss peak_gateway_rss seconds samples processes_at_peak mean_pss"
  local side=$1 t0 sp peak mean n procs gpeak
  t0=$(now)
  # shellcheck disable=SC2046
  nice -n -10 python3 "$SAMPLER" $(sampler_args "$side") >"$W/sample" &
  sp=$!
  load "$side" || { kill "$sp" 2>/dev/null; die "$side: load failed"; }
  kill -TERM "$sp"; wait "$sp" || true
  read -r peak mean n procs gpeak <"$W/sample"
  echo "$peak $gpeak $(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }') $n $procs $mean"
}

sleep 2
GW_IDLE=$(rss "$GW_PID")
# shellcheck disable=SC2046
B_IDLE=$(python3 "$SAMPLER" --once $(sampler_args b) | cut -d' ' -f1)
# shellcheck disable=SC2046
S_IDLE=$(python3 "$SAMPLER" --once $(sampler_args s) | cut -d' ' -f1)
echo "idle: gateway RSS $GW_IDLE KiB; whole-host PSS berth $B_IDLE KiB, sshd $S_IDLE KiB"
BP=() SP=() GP=() BG=() SG=() BM=() SM=()
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then order=(b s); else order=(s b); fi
  for side in "${order[@]}"; do
    read -r peak gpeak secs samples procs mean < <(sampled_load "$side")
    if [ "$side" = b ]; then
      BP+=("$peak"); GP+=("$gpeak"); BG+=($((peak - B_IDLE))); BM+=($((mean - B_IDLE)))
      printf 'round %d  berth  %3d × %d MiB in %5s s: whole-host PSS peak %7d KiB (+%d; mean +%d; %d samples, %d processes at the peak), gateway RSS peak %d KiB, %d KiB right after\n' \
        "$r" "$N" "$SIZE_MB" "$secs" "$peak" $((peak - B_IDLE)) $((mean - B_IDLE)) "$samples" "$procs" "$gpeak" "$(rss "$GW_PID")"
    else
      SP+=("$peak"); SG+=($((peak - S_IDLE))); SM+=($((mean - S_IDLE)))
      printf 'round %d  sshd   %3d × %d MiB in %5s s: whole-host PSS peak %7d KiB (+%d; mean +%d; %d samples, %d processes at the peak)\n' \
        "$r" "$N" "$SIZE_MB" "$secs" "$peak" $((peak - S_IDLE)) $((mean - S_IDLE)) "$samples" "$procs"
    fi
    sleep 2
  done
done

# After the last berth round: the gateway's RSS each second for AFTER seconds (the sshd round,
# if it came last, already gave it time; run another berth round to start the clock fresh).
read -r peak gpeak secs _ _ _ < <(sampled_load b)
BP+=("$peak"); GP+=("$gpeak")
echo "final berth round: $N × $SIZE_MB MiB in $secs s, gateway RSS peak $gpeak KiB; then idle:"
WITHIN=""
for s in $(seq 0 "$AFTER"); do
  g=$(rss "$GW_PID")
  if [ -z "$WITHIN" ] && [ "$g" -le $((2 * GW_IDLE)) ]; then WITHIN=$s; fi
  case $s in 0|1|5|10|20|30|45|60|90|120) printf '  +%3d s: gateway RSS %7d KiB (%.2f× idle)\n' "$s" "$g" "$(awk -v a="$g" -v b="$GW_IDLE" 'BEGIN { print a / b }')" ;; esac
  [ "$s" -lt "$AFTER" ] && sleep 1
done
GW_AFTER=$(rss "$GW_PID")
max() { printf '%s\n' "$@" | sort -n | tail -1; }
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
BMAX=$(max "${BP[@]}"); SMAX=$(max "${SP[@]}"); GMAX=$(max "${GP[@]}")
echo "gateway RSS within 2× idle after: ${WITHIN:-never (in $AFTER s)} s"
echo "trims: $(curl -fsS "http://127.0.0.1:$PORT_M/metrics" 2>/dev/null | grep '^berth_gateway_memory_trims_total' | tr '\n' ' ')"
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
echo "load average at end: $LOAD1"

cat <<EOF

Command: \`$CMDLINE\`; machine $(nproc) CPUs, load $LOAD0 at start / $LOAD1 at end; commit $COMMIT.

| $N × $SIZE_MB MiB at once (¼ each ssh up/down, sftp put/get), worst of $ROUNDS+1 rounds | berth | sshd | berth/sshd | target |
|---|---|---|---|---|
| whole-host PSS peak during the load | $BMAX KiB (idle $B_IDLE) | $SMAX KiB (idle $S_IDLE) | $(awk -v a="$BMAX" -v b="$SMAX" 'BEGIN { printf "%.2f", a / b }')× | ≤ 1.0× |
| growth over idle at the peak, per round | $(IFS=/; echo "${BG[*]}") KiB | $(IFS=/; echo "${SG[*]}") KiB | $(awk -v a="$(median "${BG[@]}")" -v b="$(median "${SG[@]}")" 'BEGIN { printf "%.2f", a / b }')× (medians) | |
| mean growth over idle during the load, per round | $(IFS=/; echo "${BM[*]}") KiB | $(IFS=/; echo "${SM[*]}") KiB | $(awk -v a="$(median "${BM[@]}")" -v b="$(median "${SM[@]}")" 'BEGIN { printf "%.2f", a / b }')× (medians) | |
| gateway RSS idle / peak / $AFTER s after | $GW_IDLE / $GMAX / $GW_AFTER KiB | | $(awk -v a="$GW_AFTER" -v b="$GW_IDLE" 'BEGIN { printf "%.2f", a / b }')× idle | ≤ 2× idle within 60 s (${WITHIN:-not reached} s) |
EOF
