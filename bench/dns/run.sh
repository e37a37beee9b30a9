#!/usr/bin/env bash
# Side-by-side resolver benchmark: berth dns vs dnsmasq (Debian 2.90), same local upstream, one run.
#
#   bench/dns/run.sh            # DUR=10 s per measurement, ROUNDS=3; needs root (binds :53 on 127.0.10.x)
#   DUR=3 ROUNDS=1 EXTRA=0 bench/dns/run.sh   # a quick check: the four main rows only
#
# Everything (servers, dnsperf, dig) runs in a network namespace the script creates and
# deletes: no other service's netfilter rules (Docker's NAT, say) on the path.
#
# Upstream: a dnsmasq on 127.0.10.1 answering every *.bench.test A with 93.184.216.34, TTL 3600,
# from --address (no cache, no forwarding). Candidates (all running, measured in turn):
#   berth (limit off)   127.0.10.2  rate_limit_qps = 0
#   berth (defaults)    127.0.10.4  the shipped per-client limit (rate_limit_qps/burst not set)
#   dnsmasq             127.0.10.3 and .5  (--cache-size=100000, domain-needed, bogus-priv,
#                                   stop-dns-rebind; .5 takes the many-source rows)
# (berth: release build of dns/examples/serve.rs, the dns crate's Service, no Docker). Both berths
# set only listen, upstreams, allow_from = 127.0.0.0/8 (the clients are not on a tenant subnet),
# cache_size = 100000 and max_inflight = 1024 (both the defaults), and the limit-off one
# rate_limit_qps = 0; every other key is the shipped default. All have the same 100 local names
# (server1..100.berth.internal), the same safety switches on and query logging off; dnsmasq has
# no rate limit.
#
# Main rows (ROUNDS interleaved rounds, berth then dnsmasq, medians), each mode twice:
#   limit off : berth (limit off) and dnsmasq, dnsperf -c CLIENTS -q Q from 127.0.0.1
#   defaults  : berth (defaults) and dnsmasq, dnsperf -c SOURCES -q Q, each socket with a
#               source address of its own (127.0.20.1.., see many_sources), as many tenants
#   hits  : 1 000 names, warmed once, then replayed for DUR s
#   local : server<N>.berth.internal (N = 1..100) for DUR s
# Counted: NOERROR answers only (dnsperf counts REFUSED and SERVFAIL as completed; its rcode
# table is parsed), per second of dnsperf run time; CPU µs per answer = the server's
# utime+stime over the measurement (/proc/PID/stat) / its NOERROR answers.
#
# EXTRA=1 (default) adds, with the limit-off berth and one source:
#   p99   : cache hits at a fixed 10 000 QPS with -v                 → p50/p99 latency
#   miss  : cache filled with 100 000 names (-Q 10000), then DUR s of
#           never-seen names, -q 50 -t 5 (so a slow server is measured,
#           not just timed out)                                        → QPS, lost
#   memory: resident set growth of each server over the fill, per cached entry
set -euo pipefail
cd "$(dirname "$0")/../.."
DUR=${DUR:-10}
CLIENTS=${CLIENTS:-4}
SOURCES=${SOURCES:-64}
Q=${Q:-256}
ROUNDS=${ROUNDS:-3}
EXTRA=${EXTRA:-1}
UP=127.0.10.1
BERTH=127.0.10.2
DNSMASQ=127.0.10.3
BERTH_DEF=127.0.10.4
DNSMASQ_MANY=127.0.10.5 # dnsmasq's second address: the one the many-source rows use
W=$(mktemp -d /tmp/berth-dns-bench.XXXXXX)
chmod 755 "$W" # dnsmasq reads --addn-hosts after dropping to nobody
# Everything runs in a network namespace of its own: no other service's netfilter rules on the
# path, and the many-source rows' NAT table touches nothing outside it.
NS=berth-dns-bench-$$
ip netns add "$NS"
IN=(ip netns exec "$NS")
"${IN[@]}" ip link set lo up
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns delete "$NS" 2>/dev/null || true
    if [[ -n ${KEEP:-} ]]; then cp -r "$W" "$KEEP" && echo "logs kept in $KEEP" >&2; fi
    rm -rf "$W"
}
trap cleanup EXIT

# SOURCES client addresses from one dnsperf: its -c SOURCES sockets are bound to consecutive
# ports from 20000 (-x), and a stateless rule in the namespace rewrites the source address of
# the socket on port 20000+i to 127.0.20.(i+1) — one address a socket, so every client has a
# budget of its own. The answers come back to that address, which is local (127/8 on lo), on
# the socket's port. No connection tracking, no NAT: the rows cost the kernel what the others do.
many_sources() { # on|off
    if [[ $1 == off ]]; then
        "${IN[@]}" nft delete table ip berth_bench
        return
    fi
    local map i
    map=$(for i in $(seq 0 $((SOURCES - 1))); do printf '%d : 127.0.20.%d, ' $((20000 + i)) $((i + 1)); done)
    "${IN[@]}" nft -f - <<EOF
table ip berth_bench {
    chain out {
        type filter hook output priority raw; policy accept;
        ip daddr { $BERTH_DEF, $DNSMASQ_MANY } udp dport 53 ip saddr set udp sport map { ${map%, } }
    }
}
EOF
}

BIN=${BIN:-target/release/examples/serve}
if [[ ! -x $BIN || ${REBUILD:-0} == 1 ]]; then
    cargo build --release -p dns --example serve
fi

# Query files.
for i in $(seq 1 1000); do echo "h$i.bench.test A"; done >"$W/hit.txt"
for i in $(seq 1 100); do echo "server$i.berth.internal A"; done >"$W/local.txt"
for i in $(seq 1 100); do echo "172.19.2.$((10 + i)) server$i.berth.internal"; done >"$W/hosts"
if [[ $EXTRA == 1 ]]; then
    for i in $(seq 1 100000); do echo "f$i.bench.test A"; done >"$W/fill.txt"
    for i in $(seq 1 1000000); do echo "m$i.bench.test A"; done >"$W/miss.txt"
fi

"${IN[@]}" dnsmasq -k --conf-file=/dev/null --no-resolv --no-hosts --listen-address=$UP --bind-interfaces \
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
cat >"$W/berth-defaults.toml" <<EOF
listen = ["$BERTH_DEF:53"]
upstreams = ["$UP:53"]
allow_from = ["127.0.0.0/8"]
cache_size = 100000
max_inflight = 1024
EOF

perf() { # server file extra-args... → prints dnsperf output
    local s=$1 f=$2
    shift 2
    "${IN[@]}" dnsperf -s "$s" -d "$f" -c "$CLIENTS" -q 200 -t 2 "$@" 2>&1
}
field() { grep -m1 "$1" | sed -E 's/.*: +//; s/ .*//'; }
lost() { grep -m1 'Queries lost' | sed -E 's/.*: +//'; }
pct() { # file with one latency (s) a line → "p50 p99" in ms
    sort -n "$1" | awk '{a[NR]=$1} END {if (NR==0) {print "- -"; exit}
        printf "%.3f %.3f\n", a[int(NR*0.50)+1]*1000, a[int(NR*0.99)]*1000}'
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime of a process

# load addr file sources → dnsperf output in $W/out: one source: -c CLIENTS from 127.0.0.1;
# more: -c SOURCES sockets, each its own source address (see many_sources).
load() {
    local addr=$1 f=$2 n=$3
    if [[ $n == 1 ]]; then
        "${IN[@]}" dnsperf -s "$addr" -d "$f" -c "$CLIENTS" -q "$Q" -t 2 -l "$DUR" >"$W/out" 2>&1
    else
        "${IN[@]}" dnsperf -s "$addr" -x 20000 -c "$n" -q "$Q" -t 2 -l "$DUR" -d "$f" >"$W/out" 2>&1
    fi
}
# Sums the outputs of one load: "noerror_qps completed_qps longest_runtime_s noerror_answers".
tally() {
    awk '
        /Queries completed:/ { c += $3 }
        /Response codes:/ { for (i = 3; i <= NF; i++) if ($i == "NOERROR") n += $(i + 1) }
        /Run time \(s\):/ { if ($4 > t) t = $4 }
        END { if (t == 0) t = 1; printf "%.0f %.0f %.3f %d\n", n / t, c / t, t, n }' "$W/out"
}

# One main-row measurement; appends "noerror_qps completed_qps cpu_us_per_answer" to
# $W/<mode>.<limit>.<server>.
measure() { # mode limit server addr pid sources
    local mode=$1 limit=$2 name=$3 addr=$4 pid=$5 n=$6 t0 t1 nq cq rt na
    t0=$(cpu_ticks "$pid")
    load "$addr" "$W/$mode.txt" "$n"
    t1=$(cpu_ticks "$pid")
    read -r nq cq rt na <<<"$(tally)"
    cat "$W/out" >>"$W/$mode.$limit.$name.log"
    awk -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v n="$na" -v nq="$nq" -v cq="$cq" \
        'BEGIN { printf "%s %s %.2f\n", nq, cq, (n > 0 ? t / hz * 1e6 / n : 0) }' \
        >>"$W/$mode.$limit.$name"
}
median() { # file column → median value of that column
    awk -v c="$2" '{print $c}' "$1" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}

wait_ready() { # addr log
    for _ in $(seq 1 50); do
        "${IN[@]}" dig @"$1" server1.berth.internal +short +time=1 +tries=1 | grep -q 172.19.2.11 && return 0
        sleep 0.2
    done
    cat "$2"
    return 1
}

SERVE_PRINT_METRICS=1 "${IN[@]}" "$BIN" "$W/berth.toml" --servers 100 2>"$W/berth.log" &
BPID=$!
PIDS+=($BPID)
SERVE_PRINT_METRICS=1 "${IN[@]}" "$BIN" "$W/berth-defaults.toml" --servers 100 2>"$W/berth-defaults.log" &
BDPID=$!
PIDS+=($BDPID)
"${IN[@]}" dnsmasq -k --conf-file=/dev/null --no-resolv --no-hosts --addn-hosts="$W/hosts" --server=$UP \
    --listen-address=$DNSMASQ --listen-address=$DNSMASQ_MANY --bind-interfaces --port=53 --cache-size=100000 --dns-forward-max=1024 \
    --domain-needed --bogus-priv --stop-dns-rebind --log-facility=- --pid-file="$W/dm.pid" 2>"$W/dm.log" &
DPID=$!
PIDS+=($DPID)
wait_ready $BERTH "$W/berth.log"
wait_ready $BERTH_DEF "$W/berth-defaults.log"
wait_ready $DNSMASQ "$W/dm.log"

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
# Interleaved rounds (berth, dnsmasq, berth, ...) so background load hits both alike; the
# tables show medians.
wait_ready $DNSMASQ_MANY "$W/dm.log"
for s in $BERTH $BERTH_DEF $DNSMASQ; do perf "$s" "$W/hit.txt" -n 1 >/dev/null; done
for r in $(seq 1 "$ROUNDS"); do
    for mode in hit local; do
        echo "round $r: $mode, limit off" >&2
        measure $mode off berth $BERTH $BPID 1
        measure $mode off dnsmasq $DNSMASQ $DPID 1
        echo "round $r: $mode, defaults from $SOURCES sources" >&2
        many_sources on
        measure $mode def berth $BERTH_DEF $BDPID "$SOURCES"
        measure $mode def dnsmasq $DNSMASQ_MANY $DPID "$SOURCES"
        many_sources off
    done
    if [[ $EXTRA == 1 ]]; then
        echo "round $r: p99" >&2
        for c in "berth $BERTH" "dnsmasq $DNSMASQ"; do
            set -- $c
            perf "$2" "$W/hit.txt" -l "$DUR" -Q 10000 -v | awk '/^> /{print $NF}' >"$W/lat"
            pct "$W/lat" >>"$W/p99.$1"
        done
    fi
done

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
if [[ $EXTRA == 1 ]]; then
    # Misses with a full cache last: this is where dnsmasq stalls, and it does not recover quickly.
    for c in "berth $BERTH $BPID" "dnsmasq $DNSMASQ $DPID"; do
        set -- $c
        echo "fill + miss: $1" >&2
        before=$(rss_kib "$3")
        perf "$2" "$W/fill.txt" -n 1 -Q 10000 >"$W/fill.$1.log"
        after=$(rss_kib "$3")
        echo $(((after - before) * 1024 / 100000)) >"$W/mem.$1"
        out=$("${IN[@]}" dnsperf -s "$2" -d "$W/miss.txt" -c "$CLIENTS" -q 50 -t 5 -l "$DUR" 2>&1)
        echo "$out" >"$W/miss.$1.log"
        echo "$(echo "$out" | field 'Queries per second') $(echo "$out" | lost)" >"$W/miss.$1"
    done
    kill -USR1 $DPID # cache statistics into dm.log (insertions that evicted live entries)
    sleep 0.5
    grep -E "cache size|queries forwarded" "$W/dm.log" >&2 || true
fi
kill $BPID $BDPID $DPID
wait $BPID $BDPID $DPID 2>/dev/null || true
for l in berth berth-defaults; do
    echo "$l:" >&2
    grep -E "^berth_dns_(cache_(entries|evictions)|upstream_queries_total|responses_total)" "$W/$l.log" >&2 || true
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "-" }'; }
m() { median "$W/$1" "$2"; }
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), load at start $LOAD0, at end $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ); DUR=$DUR s, $ROUNDS rounds, medians"
echo "limit off: berth rate_limit_qps = 0, dnsperf -c $CLIENTS -q $Q from 127.0.0.1; shipped limit: berth's default rate_limit_qps/burst, dnsperf -c $SOURCES -q $Q, one source address a socket (127.0.20.1-$SOURCES, rewritten in the namespace)"
echo "both berths: allow_from = 127.0.0.0/8, every other key the shipped default; dnsmasq has no limit"
echo
echo "| measurement | berth NOERROR/s (all answers/s) | dnsmasq NOERROR/s (all answers/s) | berth / dnsmasq | CPU µs per answer berth / dnsmasq | CPU berth / dnsmasq |"
echo "|---|---|---|---|---|---|"
for mode in hit local; do
    for limit in off def; do
        case $mode.$limit in
        hit.off) what="cache hits, limit off" ;;
        hit.def) what="cache hits, shipped limit, $SOURCES sources" ;;
        local.off) what="local names, limit off" ;;
        local.def) what="local names, shipped limit, $SOURCES sources" ;;
        esac
        b=$mode.$limit.berth d=$mode.$limit.dnsmasq
        echo "| $what | $(m "$b" 1) ($(m "$b" 2)) | $(m "$d" 1) ($(m "$d" 2)) | $(ratio "$(m "$b" 1)" "$(m "$d" 1)") | $(m "$b" 3) / $(m "$d" 3) | $(ratio "$(m "$b" 3)" "$(m "$d" 3)") |"
    done
done
if [[ $EXTRA == 1 ]]; then
    echo
    echo "| measurement (limit off, one source) | berth | dnsmasq 2.90 | |"
    echo "|---|---|---|---|"
    echo "| cache-hit p50 / p99 ms at 10k QPS | $(m p99.berth 1) / $(m p99.berth 2) | $(m p99.dnsmasq 1) / $(m p99.dnsmasq 2) | p99 dnsmasq/berth $(ratio "$(m p99.dnsmasq 2)" "$(m p99.berth 2)") |"
    echo "| fill 100 000 names at 10k QPS: lost | $(lost <"$W/fill.berth.log") | $(lost <"$W/fill.dnsmasq.log") | |"
    read -r bq bl <<<"$(cat "$W/miss.berth")"
    read -r dq dl <<<"$(cat "$W/miss.dnsmasq")"
    echo "| cache-miss QPS, full 100 000-entry cache (lost) | $bq ($bl) | $dq ($dl) | $(ratio "$bq" "$dq") |"
    echo "| resident memory per cached entry (RSS growth over the fill / 100 000) | $(cat "$W/mem.berth") B | $(cat "$W/mem.dnsmasq") B | |"
fi
