#!/usr/bin/env bash
# Side-by-side resolver benchmark: berth dns vs dnsmasq (Debian 2.90), same local upstream, one run.
#
#   bench/dns/run.sh            # DUR=10 s per measurement, ROUNDS=3; needs root (binds :53 on 127.0.10.x)
#
# Upstream: a dnsmasq on 127.0.10.1 answering every *.bench.test A with 93.184.216.34, TTL 3600,
# from --address (no cache, no forwarding). Candidates (both running, measured in turn):
#   berth   127.0.10.2  (release build of dns/examples/serve.rs: the dns crate's Service, no Docker)
#   dnsmasq 127.0.10.3  (--cache-size=100000, domain-needed, bogus-priv, stop-dns-rebind)
# Both have the same 100 local names (server1..100.berth.internal), the same safety switches on,
# no rate limit (dnsmasq has none), the same cap on outstanding upstream queries (1024) and
# query logging off.
#
# Measurements (dnsperf 2.10, CLIENTS=4 client sockets (-c; several source ports, as tenants
# have, so berth's per-core SO_REUSEPORT sockets all get work), -q 200 outstanding, -t 2 s):
#   hit   : 1 000 names, warmed once, then replayed for DUR s        → QPS, lost, CPU µs per
#           answer of the server and of dnsperf (utime+stime over the run / answers)
#   p99   : same at a fixed 10 000 QPS with -v                         → p50/p99 latency
#   local : server<N>.berth.internal for DUR s                         → QPS, lost
#   (hit, p99, local: ROUNDS=3 interleaved rounds, medians; both servers run side by side)
#   miss  : cache filled with 100 000 names (-Q 10000), then DUR s of
#           never-seen names, -q 50 -t 5 (so a slow server is measured,
#           not just timed out)                                        → QPS, lost
#   memory: resident set growth of each server over the fill, per cached entry
set -euo pipefail
cd "$(dirname "$0")/../.."
DUR=${DUR:-10}
CLIENTS=${CLIENTS:-4}
UP=127.0.10.1
BERTH=127.0.10.2
DNSMASQ=127.0.10.3
W=$(mktemp -d /tmp/berth-dns-bench.XXXXXX)
chmod 755 "$W" # dnsmasq reads --addn-hosts after dropping to nobody
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT

BIN=${BIN:-target/release/examples/serve}
if [[ ! -x $BIN || ${REBUILD:-0} == 1 ]]; then
    cargo build --release -p dns --example serve
fi

# Query files.
for i in $(seq 1 1000); do echo "h$i.bench.test A"; done >"$W/hit.txt"
for i in $(seq 1 100000); do echo "f$i.bench.test A"; done >"$W/fill.txt"
for i in $(seq 1 1000000); do echo "m$i.bench.test A"; done >"$W/miss.txt"
for i in $(seq 1 100); do echo "server$i.berth.internal A"; done >"$W/local.txt"
for i in $(seq 1 100); do echo "172.19.2.$((10 + i)) server$i.berth.internal"; done >"$W/hosts"

dnsmasq -k --conf-file=/dev/null --no-resolv --no-hosts --listen-address=$UP --bind-interfaces \
    --port=53 --address=/bench.test/93.184.216.34 --local-ttl=3600 --cache-size=0 \
    --dns-forward-max=10000 --pid-file="$W/up.pid" 2>"$W/up.log" &
PIDS+=($!)

cat >"$W/berth.toml" <<EOF
listen = ["$BERTH:53"]
upstreams = ["$UP:53"]
allow_from = ["127.0.0.0/8"]
cache_size = 100000
rate_limit_qps = 0
max_inflight = 1024
EOF

perf() { # server file extra-args... → prints dnsperf output
    local s=$1 f=$2
    shift 2
    dnsperf -s "$s" -d "$f" -c "$CLIENTS" -q 200 -t 2 "$@" 2>&1
}
field() { grep -m1 "$1" | sed -E 's/.*: +//; s/ .*//'; }
lost() { grep -m1 'Queries lost' | sed -E 's/.*: +//'; }
pct() { # file with one latency (s) a line → "p50 p99" in ms
    sort -n "$1" | awk '{a[NR]=$1} END {if (NR==0) {print "- -"; exit}
        printf "%.3f %.3f\n", a[int(NR*0.50)+1]*1000, a[int(NR*0.99)]*1000}'
}

# One measurement on one server; appends "qps lost%" (or "p50 p99") to $W/<tag>.<name>.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime of a process
measure() { # tag name addr pid
    local tag=$1 name=$2 addr=$3 pid=$4 out t0 t1
    case $tag in
    hit)
        # CPU per answer besides QPS: on 2 cores the load generator shares the machine, so QPS
        # also measures how much CPU each server leaves dnsperf.
        t0=$(cpu_ticks "$pid")
        out=$(/usr/bin/time -f 'dnsperf cpu %U %S' dnsperf -s "$addr" -d "$W/hit.txt" -c "$CLIENTS" \
            -q 200 -t 2 -l "$DUR" 2>&1)
        t1=$(cpu_ticks "$pid")
        local nq gen
        nq=$(echo "$out" | field 'Queries completed')
        gen=$(echo "$out" | awk '/^dnsperf cpu/ {print $3 + $4}')
        awk -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v n="$nq" -v g="$gen" \
            'BEGIN { printf "%.2f %.2f\n", t / hz * 1e6 / n, g * 1e6 / n }' >>"$W/cpu.$name"
        ;;
    local) out=$(perf "$addr" "$W/local.txt" -l "$DUR") ;;
    p99)
        perf "$addr" "$W/hit.txt" -l "$DUR" -Q 10000 -v | awk '/^> /{print $NF}' >"$W/lat"
        pct "$W/lat" >>"$W/$tag.$name"
        return
        ;;
    esac
    echo "$out" >>"$W/$tag.$name.log"
    echo "$(echo "$out" | field 'Queries per second') $(echo "$out" | grep -m1 'Queries lost' | sed -E 's/.*\((.*)%\).*/\1/')" >>"$W/$tag.$name"
}
median() { # file column → median value of that column
    awk -v c="$2" '{print $c}' "$1" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}

wait_ready() { # addr log
    for _ in $(seq 1 50); do
        dig @"$1" server1.berth.internal +short +time=1 +tries=1 | grep -q 172.19.2.11 && return 0
        sleep 0.2
    done
    cat "$2"
    return 1
}

SERVE_PRINT_METRICS=1 "$BIN" "$W/berth.toml" --servers 100 2>"$W/berth.log" &
BPID=$!
PIDS+=($BPID)
dnsmasq -k --conf-file=/dev/null --no-resolv --no-hosts --addn-hosts="$W/hosts" --server=$UP \
    --listen-address=$DNSMASQ --bind-interfaces --port=53 --cache-size=100000 --dns-forward-max=1024 \
    --domain-needed --bogus-priv --stop-dns-rebind --log-facility=- --pid-file="$W/dm.pid" 2>"$W/dm.log" &
DPID=$!
PIDS+=($DPID)
wait_ready $BERTH "$W/berth.log"
wait_ready $DNSMASQ "$W/dm.log"

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
# Hits, tail latency and local names: ROUNDS interleaved rounds (berth, dnsmasq, berth, ...) so
# background load hits both alike; the table shows medians.
ROUNDS=${ROUNDS:-3}
perf $BERTH "$W/hit.txt" -n 1 >/dev/null
perf $DNSMASQ "$W/hit.txt" -n 1 >/dev/null
for r in $(seq 1 "$ROUNDS"); do
    for tag in hit p99 local; do
        echo "round $r: $tag" >&2
        measure $tag berth $BERTH $BPID
        measure $tag dnsmasq $DNSMASQ $DPID
    done
done

# Misses with a full cache last: this is where dnsmasq stalls, and it does not recover quickly.
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
for c in "berth $BERTH $BPID" "dnsmasq $DNSMASQ $DPID"; do
    set -- $c
    echo "fill + miss: $1" >&2
    before=$(rss_kib "$3")
    perf "$2" "$W/fill.txt" -n 1 -Q 10000 >"$W/fill.$1.log"
    after=$(rss_kib "$3")
    echo $(((after - before) * 1024 / 100000)) >"$W/mem.$1"
    out=$(dnsperf -s "$2" -d "$W/miss.txt" -c "$CLIENTS" -q 50 -t 5 -l "$DUR" 2>&1)
    echo "$out" >"$W/miss.$1.log"
    echo "$(echo "$out" | field 'Queries per second') $(echo "$out" | lost)" >"$W/miss.$1"
done

kill -USR1 $DPID # cache statistics into dm.log (insertions that evicted live entries)
sleep 0.5
grep -E "cache size|queries forwarded" "$W/dm.log" >&2 || true
kill $BPID $DPID
wait $BPID $DPID 2>/dev/null || true
grep -E "^berth_dns_cache_(entries|evictions) |^berth_dns_upstream_queries_total " "$W/berth.log" >&2 || true

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "-" }'; }
m() { median "$W/$1.$2" "$3"; }
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), load at start $LOAD0, at end $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ); DUR=$DUR s, $ROUNDS rounds, medians, dnsperf -c $CLIENTS"
echo
echo "| measurement | berth | dnsmasq 2.90 | berth / dnsmasq |"
echo "|---|---|---|---|"
echo "| cache-hit QPS (lost %) | $(m hit berth 1) ($(m hit berth 2)) | $(m hit dnsmasq 1) ($(m hit dnsmasq 2)) | $(ratio "$(m hit berth 1)" "$(m hit dnsmasq 1)") |"
echo "| cache-hit p50 / p99 ms at 10k QPS | $(m p99 berth 1) / $(m p99 berth 2) | $(m p99 dnsmasq 1) / $(m p99 dnsmasq 2) | p99 dnsmasq/berth $(ratio "$(m p99 dnsmasq 2)" "$(m p99 berth 2)") |"
echo "| CPU µs per cache-hit answer: server / dnsperf | $(m cpu berth 1) / $(m cpu berth 2) | $(m cpu dnsmasq 1) / $(m cpu dnsmasq 2) | server dnsmasq/berth $(ratio "$(m cpu dnsmasq 1)" "$(m cpu berth 1)") |"
echo "| local-name QPS (lost %) | $(m local berth 1) ($(m local berth 2)) | $(m local dnsmasq 1) ($(m local dnsmasq 2)) | $(ratio "$(m local berth 1)" "$(m local dnsmasq 1)") |"
echo "| fill 100 000 names at 10k QPS: lost | $(lost <"$W/fill.berth.log") | $(lost <"$W/fill.dnsmasq.log") | |"
read -r bq bl <<<"$(cat "$W/miss.berth")"
read -r dq dl <<<"$(cat "$W/miss.dnsmasq")"
echo "| cache-miss QPS, full 100 000-entry cache (lost) | $bq ($bl) | $dq ($dl) | $(ratio "$bq" "$dq") |"
echo "| resident memory per cached entry (RSS growth over the fill / 100 000) | $(cat "$W/mem.berth") B | $(cat "$W/mem.dnsmasq") B | |"
if [[ -n ${KEEP:-} ]]; then cp -r "$W" "$KEEP"; echo "logs kept in $KEEP"; fi
