#!/usr/bin/env bash
# A/B of two `serve` builds under the same fixed load: CPU time per answer (the server's
# utime+stime from /proc/PID/stat over exactly N passes of the query file, divided by its
# NOERROR answers) and voluntary context switches per answer (all threads). Each round starts
# A, fills its cache, measures, stops it, then the same for B, so background load hits both
# alike; CPU time per answer is far less sensitive to a shared machine than QPS.
#
#   bench/dns/cpu_ab.sh OLD_BIN NEW_BIN
#   MODE=local SOURCES=64 N=300 ROUNDS=5 bench/dns/cpu_ab.sh OLD_BIN NEW_BIN
#
# MODE=hit (1 000 cached names, the default) or local (server1..100.berth.internal); N passes
# of the file (default 200); SOURCES=1 (dnsperf -c 4 from 127.0.0.1, limit off) or more (one
# source address per dnsperf socket as in run.sh, the shipped per-client limit on). Needs root,
# dnsperf, dnsmasq (the upstream); runs in a network namespace of its own.
set -euo pipefail
A=${1:?old serve binary}
B=${2:?new serve binary}
MODE=${MODE:-hit}
N=${N:-200}
ROUNDS=${ROUNDS:-3}
SOURCES=${SOURCES:-1}
UP=127.0.12.1
SRV=127.0.12.2
W=$(mktemp -d /tmp/berth-dns-ab.XXXXXX)
NS=berth-dns-ab-$$
ip netns add "$NS"
IN=(ip netns exec "$NS")
"${IN[@]}" ip link set lo up
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns delete "$NS" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
case $MODE in
hit) for i in $(seq 1 1000); do echo "h$i.bench.test A"; done >"$W/q.txt" ;;
local) for i in $(seq 1 100); do echo "server$i.berth.internal A"; done >"$W/q.txt" ;;
*)
    echo "MODE is hit or local" >&2
    exit 64
    ;;
esac
"${IN[@]}" dnsmasq -k --conf-file=/dev/null --no-resolv --no-hosts --listen-address=$UP --bind-interfaces \
    --port=53 --address=/bench.test/93.184.216.34 --local-ttl=3600 --cache-size=0 \
    --pid-file="$W/up.pid" 2>"$W/up.log" &
PIDS+=($!)
limit="rate_limit_qps = 0"
[[ $SOURCES == 1 ]] || limit=""
cat >"$W/b.toml" <<EOT
listen = ["$SRV:53"]
upstreams = ["$UP:53"]
allow_from = ["127.0.0.0/8"]
cache_size = 100000
$limit
EOT
args=(-c 4)
if [[ $SOURCES != 1 ]]; then
    map=$(for i in $(seq 0 $((SOURCES - 1))); do printf '%d : 127.0.20.%d, ' $((20000 + i)) $((i + 1)); done)
    "${IN[@]}" nft -f - <<EOT
table ip berth_ab {
    chain out {
        type filter hook output priority raw; policy accept;
        ip daddr $SRV udp dport 53 ip saddr set udp sport map { ${map%, } }
    }
}
EOT
    args=(-x 20000 -c "$SOURCES")
fi
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
csw() { cat /proc/"$1"/task/*/status | awk '/^voluntary_ctxt_switches/ {v += $2} END {print v}'; }
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ); MODE=$MODE SOURCES=$SOURCES N=$N"
for r in $(seq 1 "$ROUNDS"); do
    for which in A B; do
        bin=${!which}
        "${IN[@]}" "$bin" "$W/b.toml" --servers 100 2>"$W/s.log" &
        sp=$!
        for _ in $(seq 1 50); do
            "${IN[@]}" dig @$SRV server1.berth.internal +short +time=1 +tries=1 | grep -q . && break
            sleep 0.2
        done
        "${IN[@]}" dnsperf -s $SRV -d "$W/q.txt" -n 1 -q 200 >/dev/null 2>&1
        t0=$(ticks $sp)
        c0=$(csw $sp)
        out=$("${IN[@]}" dnsperf -s $SRV -d "$W/q.txt" "${args[@]}" -q 256 -t 2 -n "$N" 2>&1)
        t1=$(ticks $sp)
        c1=$(csw $sp)
        kill $sp
        wait $sp 2>/dev/null || true
        noerr=$(echo "$out" | awk '/Response codes:/ {for (i = 3; i <= NF; i++) if ($i == "NOERROR") print $(i + 1)}')
        qps=$(echo "$out" | awk '/Queries per second/ {print $4}')
        awk -v w=$which -v r="$r" -v t=$((t1 - t0)) -v c=$((c1 - c0)) -v n="${noerr:-0}" -v q="${qps:-0}" \
            -v hz="$(getconf CLK_TCK)" 'BEGIN { if (n == 0) n = 1
            printf "round %d %s: NOERROR %d, %.0f/s, CPU %.3f us per answer, %.3f voluntary switches per answer\n",
                r, w, n, q, t / hz * 1e6 / n, c / n }'
    done
done
