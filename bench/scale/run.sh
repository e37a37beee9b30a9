#!/bin/bash
# Many servers on one host: what berth's daemons cost per idle server, how login latency and
# `berth server list` behave as the count grows, with Docker's own per-container cost shown
# apart. Creates the servers itself (the tenant image, no data in them), measures at each step,
# and removes everything it made on exit (also on failure or Ctrl-C).
#
#   cargo build --release -p berth && make agent
#   bench/scale/run.sh                              # STEPS="10 100 250 500 1000"
#   STEPS="10 20" LOGIN_N=3 bench/scale/run.sh      # smoke (figures meaningless on a busy host)
#   STEPS="100 200 400" NETFILTER=0 bench/scale/run.sh
#
# The daemons run as production splits them (one process each, like the systemd units):
# `berth run gateway`, `berth run dns` (local names from the gateway's hosts file),
# `berth run netfilter` (its own table name, on this run's own bridge; NETFILTER=0 leaves the
# host's nftables alone). Servers are created PAR at a time until each step's count is reached;
# then, with everything idle for SETTLE seconds and the load average under CALM (at most
# CALM_MAX seconds more):
#  - RSS and PSS of each daemon (from /proc/PID/smaps_rollup), and their growth per server over
#    the daemons' own figures at zero servers (target ≤ 100 KiB per server for the three);
#  - Docker's own cost apart: PSS of dockerd + containerd + every containerd-shim + every process
#    in the run's containers, growth per server;
#  - login + `true` (key, agent warm) to the first and to the last server, median of LOGIN_N
#    each, and their ratio (target: last within 10 % of first);
#  - `berth server list` wall time, median of LIST_N (target ≤ 200 ms), and `--json` (both
#    answered by the running gateway's event-fed state map), and `--docker` (Docker lists
#    every container, the way every list worked before the gateway answered it).
# Prints a line per step and a Markdown table for docs/BENCHMARKS.md. Run it alone on the
# machine; it needs root (Docker, nftables) and about 1 MiB of PSS per idle container.
set -euo pipefail
[ -n "${DEBUG:-}" ] && set -x

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BERTH=${BERTH:-$ROOT/target/release/berth}
AGENT=${AGENT:-$ROOT/target/x86_64-unknown-linux-gnu/release/berth-agent}
STEPS=${STEPS:-10 100 250 500 1000}
PAR=${PAR:-4}
LOGIN_N=${LOGIN_N:-9}
LIST_N=${LIST_N:-5}
SETTLE=${SETTLE:-10}
# After SETTLE, also wait (up to CALM_MAX seconds) for the 1-minute load average to fall under
# CALM: creating hundreds of servers leaves the host busy for minutes, which scatters logins.
CALM=${CALM:-1.0}
CALM_MAX=${CALM_MAX:-300}
NETFILTER=${NETFILTER:-1}
IMAGE=${IMAGE:-berth/tenant:bookworm}
KEX=${KEX:-curve25519-sha256}
PREFIX=bscale$$
W=$(mktemp -d /tmp/berth-scale.XXXXXX)
CMDLINE="STEPS=\"$STEPS\" PAR=$PAR LOGIN_N=$LOGIN_N LIST_N=$LIST_N SETTLE=$SETTLE CALM=$CALM CALM_MAX=$CALM_MAX NETFILTER=$NETFILTER bench/scale/run.sh"

cleanup() {
  set +e
  for p in ${GW_PID:-} ${DNS_PID:-} ${NF_PID:-}; do kill -TERM "$p" 2>/dev/null; done
  for p in ${GW_PID:-} ${DNS_PID:-} ${NF_PID:-}; do wait "$p" 2>/dev/null; done
  # The netfilter daemon leaves its tables on exit (the filter stays while berth restarts).
  if [ "$NETFILTER" = 1 ] && [ -x "$BERTH" ] && [ -f "$W/berth.toml" ]; then
    BERTH_CONFIG=$W/berth.toml "$BERTH" netfilter flush >/dev/null 2>&1
  fi
  docker ps -aq --filter "label=berth.instance=$PREFIX" | xargs -r -n 100 docker rm -f -v >/dev/null 2>&1
  docker ps -aq --filter "name=^/$PREFIX-" | xargs -r -n 100 docker rm -f -v >/dev/null 2>&1
  docker volume ls -q --filter "name=$PREFIX-" | xargs -r -n 100 docker volume rm -f >/dev/null 2>&1
  docker network rm "$PREFIX-net" >/dev/null 2>&1
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() { echo "scale/run.sh: $*" >&2; exit 1; }
[ -x "$BERTH" ] || die "build first: cargo build --release -p berth (or BERTH=path)"
[ -x "$AGENT" ] || die "build the agent first: make agent (or AGENT=path)"
docker image inspect "$IMAGE" >/dev/null 2>&1 || die "image $IMAGE missing: berth image build"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
now() { date +%s.%N; }
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
ms_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", (b - a) * 1000 }'; }

PORT_B=$(free_port)
PORT_M=$(free_port)
PORT_D=$(free_port)
NET_N=$(( $$ % 200 + 20 ))
# A /20: room for 1000 servers and more on the run's own bridge.
SUBNET="10.$(( 100 + $$ % 100 )).$(( (NET_N % 16) * 16 )).0/20"
GW_ADDR="${SUBNET%.0/20}.1"

echo "machine: $(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r)"
echo "docker $(docker version -f '{{.Server.Version}}' 2>/dev/null || echo '?'); commit $(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || echo ' (+ uncommitted changes)')"
echo "berth: $BERTH"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "command: $CMDLINE"
echo

mkdir -p "$W/state" "$W/agent" "$W/run" && chmod 700 "$W/state"
cat > "$W/berth.toml" <<EOF
state_dir = "$W/state"
database_url = "sqlite://$W/state/berth.db"
[ssh]
listen = ["127.0.0.1:$PORT_B"]
agent_binary = "$AGENT"
[ssh.auth]
max_unauthenticated_per_ip = 512
connections_per_ip_burst = 1000
[network]
name = "$PREFIX-net"
bridge = "bs$(( $$ % 100000 ))"
subnet = "$SUBNET"
gateway = "$GW_ADDR"
[dns]
listen = ["$GW_ADDR:53"]
upstreams = ["127.0.0.1:9"]
[tenants]
image = "$IMAGE"
name_prefix = "$PREFIX"
agent_dir = "$W/agent"
[netfilter]
table = "$PREFIX"
ports_file = "$W/run/ports.json"
[publish]
hosts_file = "$W/run/hosts"
[metrics]
listen = "127.0.0.1:$PORT_M"
dns_listen = "127.0.0.1:$PORT_D"
netfilter_textfile = "$W/run/netfilter.prom"
EOF
export BERTH_CONFIG=$W/berth.toml
"$BERTH" config check >/dev/null || die "config check failed: $("$BERTH" config check 2>&1)"
ssh-keygen -q -t ed25519 -N '' -f "$W/key"
"$BERTH" account add scale --no-password >/dev/null
"$BERTH" account key add scale --file "$W/key.pub" >/dev/null

# The gateway makes the tenant network; dns and netfilter start once it exists.
"$BERTH" run gateway >>"$W/gateway.log" 2>&1 &
GW_PID=$!
wait_port "$PORT_B" || { cat "$W/gateway.log" >&2; die "gateway did not listen on $PORT_B"; }
"$BERTH" run dns >>"$W/dns.log" 2>&1 &
DNS_PID=$!
if [ "$NETFILTER" = 1 ]; then
  "$BERTH" run netfilter >>"$W/netfilter.log" 2>&1 &
  NF_PID=$!
fi
sleep 3
for p in $GW_PID $DNS_PID ${NF_PID:-}; do
  kill -0 "$p" 2>/dev/null || { cat "$W"/*.log >&2; die "a daemon exited at start (logs above)"; }
done

OPTS=(-F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
      -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityAgent=none -o ControlMaster=no
      -o ControlPath=none -o GSSAPIAuthentication=no -i "$W/key" -o KexAlgorithms="$KEX" -p "$PORT_B")
login() { ssh "${OPTS[@]}" "$1@127.0.0.1" true; }

# --- memory ------------------------------------------------------------------------------------
pss_rss() { # pid… → "PSS RSS" summed in KiB (vanished processes count 0)
  local p ps=0 rs=0 a b
  for p in "$@"; do
    read -r a b < <(awk '/^Rss:/ { r = $2 } /^Pss:/ { p = $2 } END { print p + 0, r + 0 }' "/proc/$p/smaps_rollup" 2>/dev/null || echo "0 0")
    ps=$(( ps + a )); rs=$(( rs + b ))
  done
  echo "$ps $rs"
}
run_pids() { # every process in the run's containers
  local c
  for c in $(docker ps -q --filter "label=berth.instance=$PREFIX"); do
    docker top "$c" -eo pid 2>/dev/null | tail -n +2
  done
}
docker_side() { # PSS of Docker's daemons, shims and what runs in the containers
  local shims
  shims=$({ pgrep -x containerd-shim || true; pgrep -f '^[^ ]*containerd-shim' || true; } | sort -u)
  # shellcheck disable=SC2046
  set -- $(pss_rss $(pgrep -x dockerd) $(pgrep -x containerd)) $(pss_rss $shims) $(pss_rss $(run_pids))
  echo "$1 $3 $5"  # daemons, shims, containers (PSS)
}

declare -A R   # R[step_key] = value
measure() { # step
  local n=$1 first last t lb=() ll=() lt=() i v
  sleep "$SETTLE"
  for i in $(seq "$CALM_MAX"); do
    awk -v c="$CALM" '{ exit !($1 < c) }' /proc/loadavg && break
    sleep 1
  done
  echo "step $n: measuring at load average $(cut -d' ' -f1-3 /proc/loadavg)"
  read -r R[${n}_gw_pss] R[${n}_gw_rss] < <(pss_rss "$GW_PID")
  read -r R[${n}_dns_pss] R[${n}_dns_rss] < <(pss_rss "$DNS_PID")
  read -r R[${n}_nf_pss] R[${n}_nf_rss] < <(pss_rss ${NF_PID:-})
  read -r R[${n}_dk_daemons] R[${n}_dk_shims] R[${n}_dk_ctr] < <(docker_side)
  if [ "$n" -gt 0 ]; then
    first=${SERVERS[0]}
    last=${SERVERS[$(( ${#SERVERS[@]} - 1 ))]}
    login "$first" && login "$last" || die "warm-up login failed at $n servers"
    for i in $(seq "$LOGIN_N"); do
      # Alternate the order so neither side always goes first.
      if [ $((i % 2)) -eq 1 ]; then
        t=$(now); login "$first"; lb+=("$(ms_since "$t")")
        t=$(now); login "$last"; ll+=("$(ms_since "$t")")
      else
        t=$(now); login "$last"; ll+=("$(ms_since "$t")")
        t=$(now); login "$first"; lb+=("$(ms_since "$t")")
      fi
    done
    R[${n}_login_first]=$(median "${lb[@]}")
    R[${n}_login_last]=$(median "${ll[@]}")
  fi
  for i in $(seq "$LIST_N"); do
    t=$(now); v=$("$BERTH" server list | tail -n +2 | wc -l); lt+=("$(ms_since "$t")")
    [ "$v" -eq "$n" ] || die "berth server list shows $v servers, want $n"
  done
  R[${n}_list]=$(median "${lt[@]}")
  lt=()
  for i in $(seq "$LIST_N"); do
    t=$(now); "$BERTH" server list --json >/dev/null; lt+=("$(ms_since "$t")")
  done
  R[${n}_list_json]=$(median "${lt[@]}")
  lt=()
  for i in $(seq "$LIST_N"); do
    t=$(now); "$BERTH" server list --docker >/dev/null; lt+=("$(ms_since "$t")")
  done
  R[${n}_list_docker]=$(median "${lt[@]}")
}

per_server() { # key step → KiB per server over step 0
  awk -v a="${R[0_$1]}" -v b="${R[$2_$1]}" -v n="$2" 'BEGIN { printf "%.1f", (b - a) / n }'
}

SERVERS=()
create_upto() { # count
  local want=$1 have=${#SERVERS[@]} k
  [ "$want" -gt "$have" ] || return 0
  seq $(( want - have )) | xargs -P "$PAR" -I{} sh -c '"$1" server create --owner scale 2>>"$2/create.err" | tail -1' _ "$BERTH" "$W" >"$W/created" ||
    { tail -5 "$W/create.err" >&2; die "server create failed before $want servers"; }
  while read -r k; do SERVERS+=("$k"); done < <(sort -V "$W/created")
  [ "${#SERVERS[@]}" -eq "$want" ] || die "created ${#SERVERS[@]} servers, wanted $want"
  mapfile -t SERVERS < <(printf '%s\n' "${SERVERS[@]}" | sort -V)
}

measure 0
printf 'step %5d: gateway %6d KiB RSS, dns %6d, netfilter %6d (PSS %d / %d / %d); server list %s ms\n' 0 \
  "${R[0_gw_rss]}" "${R[0_dns_rss]}" "${R[0_nf_rss]}" "${R[0_gw_pss]}" "${R[0_dns_pss]}" "${R[0_nf_pss]}" "${R[0_list]}"
DONE_STEPS=()
for n in $STEPS; do
  t=$(now)
  create_upto "$n" || break
  secs=$(awk -v a="$t" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }')
  running=$(docker ps -q --filter "label=berth.instance=$PREFIX" | wc -l)
  [ "$running" -eq "$n" ] || die "$running containers running at step $n"
  measure "$n"
  DONE_STEPS+=("$n")
  daemons=$(awk -v g="$(per_server gw_pss "$n")" -v d="$(per_server dns_pss "$n")" -v f="$(per_server nf_pss "$n")" 'BEGIN { printf "%.1f", g + d + f }')
  printf 'step %5d (created in %s s): gateway %6d KiB RSS, dns %6d, netfilter %6d (PSS %d / %d / %d) → %s KiB/server (PSS); docker daemons %s, shims %s, containers %s KiB/server; login first %s ms, last %s ms; server list %s ms (--json %s ms, --docker %s ms)\n' \
    "$n" "$secs" "${R[${n}_gw_rss]}" "${R[${n}_dns_rss]}" "${R[${n}_nf_rss]}" "${R[${n}_gw_pss]}" "${R[${n}_dns_pss]}" "${R[${n}_nf_pss]}" \
    "$daemons" "$(per_server dk_daemons "$n")" "$(per_server dk_shims "$n")" "$(per_server dk_ctr "$n")" \
    "${R[${n}_login_first]}" "${R[${n}_login_last]}" "${R[${n}_list]}" "${R[${n}_list_json]}" "${R[${n}_list_docker]}"
  R[${n}_daemons]=$daemons
done

echo
echo "| servers | gateway / dns / netfilter PSS (KiB) | berth daemons per server | Docker per server (daemons + shims + container) | login first / last (ms) | last ÷ first | \`server list\` / \`--docker\` (ms) |"
echo "|---:|---|---:|---|---|---:|---:|"
printf '| 0 | %d / %d / %d | | | | | %s / %s |\n' "${R[0_gw_pss]}" "${R[0_dns_pss]}" "${R[0_nf_pss]}" "${R[0_list]}" "${R[0_list_docker]}"
for n in "${DONE_STEPS[@]}"; do
  printf '| %d | %d / %d / %d | %s KiB | %s + %s + %s KiB | %s / %s | %s | %s / %s |\n' "$n" \
    "${R[${n}_gw_pss]}" "${R[${n}_dns_pss]}" "${R[${n}_nf_pss]}" "${R[${n}_daemons]}" \
    "$(per_server dk_daemons "$n")" "$(per_server dk_shims "$n")" "$(per_server dk_ctr "$n")" \
    "${R[${n}_login_first]}" "${R[${n}_login_last]}" \
    "$(awk -v a="${R[${n}_login_first]}" -v b="${R[${n}_login_last]}" 'BEGIN { printf "%.2f", (a == 0 ? 0 : b / a) }')" \
    "${R[${n}_list]}" "${R[${n}_list_docker]}"
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
