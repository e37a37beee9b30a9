#!/bin/bash
# berth gateway vs OpenSSH sshd on this machine, same client, same cipher, one run.
#
#   bench/gateway/run.sh            # uses target/release/berth (cargo build --release -p berth)
#   SIZE_MB=1024 CIPHER=aes256-gcm@openssh.com IDLE=200 bench/gateway/run.sh
#
# berth: ssh server<N>@127.0.0.1 → gateway → Docker exec in the tenant container.
# sshd:  ssh root@127.0.0.1 → /usr/sbin/sshd on the host (the "no gateway" baseline).
# Prints one line per measurement plus a Markdown table for docs/BENCHMARKS.md.
set -euo pipefail
[ -n "${DEBUG:-}" ] && set -x

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BERTH=${BERTH:-$ROOT/target/release/berth}
SIZE_MB=${SIZE_MB:-1024}
CIPHER=${CIPHER:-aes256-gcm@openssh.com}  # russh offers no aes128-gcm
IDLE=${IDLE:-200}
IMAGE=${IMAGE:-berth/tenant:bookworm}
PORT_B=${PORT_B:-22422}
PORT_S=${PORT_S:-22423}
PREFIX=bbench$$
W=$(mktemp -d /tmp/berth-bench.XXXXXX)
trap cleanup EXIT

cleanup() {
  set +e
  [ -n "${IDLE_PIDS:-}" ] && kill $IDLE_PIDS 2>/dev/null
  [ -n "${GW_PID:-}" ] && kill -TERM "$GW_PID" 2>/dev/null && wait "$GW_PID" 2>/dev/null
  [ -n "${SSHD_PID:-}" ] && kill "$SSHD_PID" 2>/dev/null
  docker ps -aq --filter "name=^/$PREFIX-" | xargs -r docker rm -f -v >/dev/null 2>&1
  docker volume ls -q --filter "name=$PREFIX-" | xargs -r docker volume rm -f >/dev/null 2>&1
  docker network rm "$PREFIX-net" >/dev/null 2>&1
  rm -rf "$W"
}

[ -x "$BERTH" ] || { echo "build first: cargo build --release -p berth" >&2; exit 1; }

# --- berth gateway ---------------------------------------------------------------------------
ssh-keygen -q -t ed25519 -N '' -f "$W/key"
cat > "$W/berth.toml" <<EOF
state_dir = "$W/state"
database_url = "sqlite://$W/state/berth.db"
[ssh]
listen = ["127.0.0.1:$PORT_B"]
max_sessions_per_server = 1000
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
[metrics]
listen = ""
EOF
export BERTH_CONFIG=$W/berth.toml
mkdir -p "$W/state" && chmod 700 "$W/state"
"$BERTH" account add bench --no-password >/dev/null
"$BERTH" account key add bench --file "$W/key.pub" >/dev/null
SERVER=$("$BERTH" server create --owner bench | tail -1)
"$BERTH" run gateway >"$W/gateway.log" 2>&1 &
GW_PID=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT_B) 2>/dev/null && break; sleep 0.1; done

# --- sshd baseline ---------------------------------------------------------------------------
ssh-keygen -q -t ed25519 -N '' -f "$W/sshd_host_key"
cp "$W/key.pub" "$W/authorized_keys"; chmod 600 "$W/authorized_keys"
mkdir -p /run/sshd
cat > "$W/sshd_config" <<EOF
Port $PORT_S
ListenAddress 127.0.0.1
HostKey $W/sshd_host_key
AuthorizedKeysFile $W/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
UsePAM no
StrictModes no
Subsystem sftp /usr/lib/openssh/sftp-server
MaxSessions 1000
MaxStartups 1000
PidFile $W/sshd.pid
EOF
/usr/sbin/sshd -D -f "$W/sshd_config" -E "$W/sshd.log" &
SSHD_PID=$!
sleep 0.5

OPTS=(-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes
      -o IdentitiesOnly=yes -i "$W/key" -c "$CIPHER" -o Compression=no)
B=(ssh "${OPTS[@]}" -p "$PORT_B" "$SERVER@127.0.0.1")
S=(ssh "${OPTS[@]}" -p "$PORT_S" "root@127.0.0.1")
"${B[@]}" true 2>"$W/login.err" || { cat "$W/login.err" >&2; echo "berth login failed; log:" >&2; cat "$W/gateway.log" >&2; exit 1; }
"${S[@]}" true || { echo "sshd login failed" >&2; exit 1; }

now() { date +%s.%N; }
mbps() { awk -v mb="$SIZE_MB" -v t="$1" 'BEGIN { printf "%.0f", mb / t }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
declare -A R

measure() { # name cmd...
  local name=$1; shift
  local t0 t1; t0=$(now); "$@"; t1=$(now)
  R[$name]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
  echo "$name: ${R[$name]} s ($(mbps "${R[$name]}") MiB/s)"
}

# 1. ssh … cat: upload and download
measure b_up   sh -c "head -c ${SIZE_MB}M /dev/zero | ${B[*]} 'cat >/dev/null'"
measure s_up   sh -c "head -c ${SIZE_MB}M /dev/zero | ${S[*]} 'cat >/dev/null'"
measure b_down sh -c "${B[*]} 'head -c ${SIZE_MB}M /dev/zero' >/dev/null"
measure s_down sh -c "${S[*]} 'head -c ${SIZE_MB}M /dev/zero' >/dev/null"

# 2. sftp put/get of a random file
head -c "${SIZE_MB}M" /dev/urandom > "$W/blob"
SF=(sftp "${OPTS[@]}" -q)
printf 'put %s blob\n' "$W/blob" > "$W/put"
printf 'get blob %s\n' "/dev/null" > "$W/get"
printf 'put %s /tmp/berth-bench-blob\n' "$W/blob" > "$W/sput"
printf 'get /tmp/berth-bench-blob %s\n' "/dev/null" > "$W/sget"
measure b_sftp_put "${SF[@]}" -P "$PORT_B" -b "$W/put" "$SERVER@127.0.0.1"
measure s_sftp_put "${SF[@]}" -P "$PORT_S" -b "$W/sput" root@127.0.0.1
measure b_sftp_get "${SF[@]}" -P "$PORT_B" -b "$W/get" "$SERVER@127.0.0.1"
measure s_sftp_get "${SF[@]}" -P "$PORT_S" -b "$W/sget" root@127.0.0.1
rm -f /tmp/berth-bench-blob "$W/blob"
"${B[@]}" 'rm -f blob'

# 3. login + exec `true` (key auth), 20 runs each
lat() { local t0 t1 i; t0=$(now); for i in $(seq 20); do "$@" true; done; t1=$(now); awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) * 1000 / 20 }'; }
R[b_login]=$(lat "${B[@]}")
R[s_login]=$(lat "${S[@]}")
echo "login+true: berth ${R[b_login]} ms, sshd ${R[s_login]} ms"

# 4. Memory with $IDLE idle sessions (each: a connection with one exec `sleep 600`).
# berth: RSS of a freshly started gateway process (restarted so the allocator holds no pages
# from the transfers above). sshd: sum of PSS (shared pages split fairly) of all sshd processes.
rss() { awk '/VmRSS/ { print $2 }' "/proc/$1/status"; }
pss_sshd() { for p in $(pgrep -x sshd); do awk '/^Pss:/ { print $2 }' "/proc/$p/smaps_rollup" 2>/dev/null || true; done | awk '{ s += $1 } END { print s + 0 }'; }
kill -TERM "$GW_PID"; wait "$GW_PID" 2>/dev/null || true
"$BERTH" run gateway >>"$W/gateway.log" 2>&1 &
GW_PID=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT_B) 2>/dev/null && break; sleep 0.1; done
"${B[@]}" true
sleep 1
base=$(rss "$GW_PID")
IDLE_PIDS=""
for i in $(seq "$IDLE"); do
  "${B[@]}" -T 'sleep 600' </dev/null >/dev/null 2>&1 &
  IDLE_PIDS="$IDLE_PIDS $!"
  [ $((i % 20)) -eq 0 ] && sleep 1
done
sleep 8
loaded=$(rss "$GW_PID")
alive=$("${B[@]}" 'pgrep -cx sleep' || true)
R[b_rss_per]=$(( (loaded - base) / IDLE ))
echo "berth RSS: ${base} KiB → ${loaded} KiB with $IDLE sessions ($alive sleep execs alive) → ${R[b_rss_per]} KiB/session"
kill $IDLE_PIDS 2>/dev/null || true; IDLE_PIDS=""; sleep 3
sbase=$(pss_sshd)
for i in $(seq "$IDLE"); do
  "${S[@]}" -T 'sleep 600' </dev/null >/dev/null 2>&1 &
  IDLE_PIDS="$IDLE_PIDS $!"
  [ $((i % 20)) -eq 0 ] && sleep 1
done
sleep 8
sloaded=$(pss_sshd)
salive=$(ps -eo comm= | grep -cx sleep || true)
R[s_rss_per]=$(( (sloaded - sbase) / IDLE ))
echo "sshd PSS (all sshd processes): ${sbase} KiB → ${sloaded} KiB ($salive sleeps on the host) → ${R[s_rss_per]} KiB/session"
kill $IDLE_PIDS 2>/dev/null || true; IDLE_PIDS=""

cat <<EOF

| measurement ($SIZE_MB MiB, $CIPHER) | berth → container | sshd → host | ratio (berth/sshd) |
|---|---|---|---|
| ssh cat upload | $(mbps "${R[b_up]}") MiB/s | $(mbps "${R[s_up]}") MiB/s | $(ratio "${R[s_up]}" "${R[b_up]}")× |
| ssh cat download | $(mbps "${R[b_down]}") MiB/s | $(mbps "${R[s_down]}") MiB/s | $(ratio "${R[s_down]}" "${R[b_down]}")× |
| sftp put | $(mbps "${R[b_sftp_put]}") MiB/s | $(mbps "${R[s_sftp_put]}") MiB/s | $(ratio "${R[s_sftp_put]}" "${R[b_sftp_put]}")× |
| sftp get | $(mbps "${R[b_sftp_get]}") MiB/s | $(mbps "${R[s_sftp_get]}") MiB/s | $(ratio "${R[s_sftp_get]}" "${R[b_sftp_get]}")× |
| login + exec true (key) | ${R[b_login]} ms | ${R[s_login]} ms | $(ratio "${R[b_login]}" "${R[s_login]}")× |
| memory per idle session ($IDLE) | ${R[b_rss_per]} KiB (gateway RSS) | ${R[s_rss_per]} KiB (sshd PSS) | $(ratio "${R[b_rss_per]}" "${R[s_rss_per]}")× |
EOF
