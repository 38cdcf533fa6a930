#!/usr/bin/env bash
# Benchmark: shadowsteer's steering answers vs NSD serving a static zone with the same names.
#
# What it does (nothing is installed; missing tools are named and the script stops):
#   1. builds shadowsteer (release) and starts `serve` on an embedded cluster in a temp dir,
#      with N clients (c1 .. cN under c.vpn.example.net) steered between two appliances;
#   2. writes the same N names as static A records into a zone file and starts NSD on it;
#   3. pins each server to SERVER_CPU and dnsperf to LOAD_CPU (taskset), and runs dnsperf with
#      the same query file against each: maximum qps, then latency at half of shadowsteer's
#      maximum (dnsperf -v per-query latencies -> p50/p90/p99/p99.9);
#   4. prints qps, latency percentiles and the ratio shadowsteer/NSD;
#   5. measures the change-to-answer latency (an advisory committed in Postgres until the DNS
#      answer follows; p50/p99) with benches/change_latency.rs.
#
# Environment knobs: CLIENTS (10000), DURATION (seconds per max-rate run, 15),
# LAT_DURATION (seconds per latency run, 10), SERVER_CPU (0), LOAD_CPU (1), DNSPERF_CLIENTS (8),
# OUTSTANDING (dnsperf -q, 200), ROUNDS (change-latency rounds, 100), KEEP=1 keeps the work dir.
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-10000}
DURATION=${DURATION:-15}
LAT_DURATION=${LAT_DURATION:-10}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
DNSPERF_CLIENTS=${DNSPERF_CLIENTS:-8}
OUTSTANDING=${OUTSTANDING:-200}
ROUNDS=${ROUNDS:-100}

source benches/serve-fleet.sh
require_tools "nsd|nsd"
ncpu=$(nproc)
if [ "$ncpu" -lt 2 ]; then
    echo "note: only $ncpu CPU; server and load share it, numbers mean little" >&2
fi

echo "== building shadowsteer (release)"
cargo build --release --quiet --bin shadowsteer
cargo build --release --quiet --bench change_latency 2>/dev/null || true
BIN=$PWD/target/release/shadowsteer
LAT_BIN=$(ls -t target/release/deps/change_latency-* 2>/dev/null | grep -v '\.d$' | head -1 || true)

work=$(mktemp -d /tmp/shadowsteer-bench-XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ "${KEEP:-0}" = 1 ]; then echo "work dir kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SS_PORT=$(free_port); NSD_PORT=$(free_port); ADMIN_PORT=$(free_port)

# --- shadowsteer -----------------------------------------------------------------------------
cat > "$work/steering.toml" <<EOF
[server]
region = "eu"
name = "bench"
[dns]
listen = ["127.0.0.1:$SS_PORT"]
udp_workers = 1
[dns.rate_limit]
responses_per_second = 0
[[dns.zones]]
name = "vpn.example.net"
[[dns.zones.ns]]
name = "ns1"
addresses = ["127.0.0.1"]
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
[steering]
hold_down = "0s"
EOF
start_serve
load_fleet "$CLIENTS"
for _ in $(seq 300); do
    [ "$(kdig @127.0.0.1 -p "$SS_PORT" "c$CLIENTS.c.vpn.example.net" A +short 2>/dev/null)" = 192.0.2.1 ] && break
    sleep 0.1
done
[ "$(kdig @127.0.0.1 -p "$SS_PORT" "c$CLIENTS.c.vpn.example.net" A +short)" = 192.0.2.1 ] || { echo "shadowsteer does not answer c$CLIENTS" >&2; exit 1; }

# --- NSD ---------------------------------------------------------------------------------------
mkdir -p "$work/nsd/xfr"
{
    echo '$ORIGIN vpn.example.net.'
    echo '@ 3600 IN SOA ns1 hostmaster 1 3600 600 604800 30'
    echo '@ 3600 IN NS ns1'
    echo 'ns1 3600 IN A 127.0.0.1'
    awk -v n="$CLIENTS" 'BEGIN { for (i = 1; i <= n; i++) printf "c%d.c 10 IN A 192.0.2.1\n", i }'
} > "$work/nsd/vpn.example.net.zone"
cat > "$work/nsd/nsd.conf" <<EOF
server:
    ip-address: 127.0.0.1@$NSD_PORT
    port: $NSD_PORT
    username: ""
    chroot: ""
    zonesdir: "$work/nsd"
    zonelistfile: "$work/nsd/zone.list"
    database: ""
    pidfile: "$work/nsd/nsd.pid"
    xfrdfile: "$work/nsd/xfrd.state"
    xfrdir: "$work/nsd/xfr"
    logfile: "$work/nsd/nsd.log"
    server-count: 1
    verbosity: 0
remote-control:
    control-enable: no
zone:
    name: vpn.example.net
    zonefile: vpn.example.net.zone
EOF
echo "== starting NSD"
taskset -c "$SERVER_CPU" nsd -d -c "$work/nsd/nsd.conf" >"$work/nsd/stdout.log" 2>&1 &
pids+=("$!")
for _ in $(seq 100); do
    [ "$(kdig @127.0.0.1 -p "$NSD_PORT" c1.c.vpn.example.net A +short 2>/dev/null)" = 192.0.2.1 ] && break
    sleep 0.1
done
[ "$(kdig @127.0.0.1 -p "$NSD_PORT" c1.c.vpn.example.net A +short)" = 192.0.2.1 ] || { cat "$work/nsd/"*.log; exit 1; }
# NSD forks its serving process; pin every process of it.
for p in $(pgrep -P "${pids[-1]}") "${pids[-1]}"; do taskset -a -cp "$SERVER_CPU" "$p" >/dev/null 2>&1 || true; done

# --- load ------------------------------------------------------------------------------------
awk -v n="$CLIENTS" 'BEGIN { srand(42); for (i = 0; i < 200000; i++) printf "c%d.c.vpn.example.net A\n", 1 + int(rand() * n) }' > "$work/queries.txt"

maxrate() { # port -> qps
    taskset -c "$LOAD_CPU" dnsperf -s 127.0.0.1 -p "$1" -d "$work/queries.txt" -l "$DURATION" \
        -c "$DNSPERF_CLIENTS" -q "$OUTSTANDING" -t 2 >"$work/dnsperf-$1.txt" 2>&1
    awk '/Queries per second:/ { print int($4) }' "$work/dnsperf-$1.txt"
}
lost() { awk '/Queries lost:/ { print $3 " " $4 }' "$work/dnsperf-$1.txt"; }

echo "== max rate, ${DURATION}s each (server on CPU $SERVER_CPU, dnsperf on CPU $LOAD_CPU)"
ss_qps=$(maxrate "$SS_PORT"); echo "shadowsteer: $ss_qps qps (lost $(lost "$SS_PORT"))"
nsd_qps=$(maxrate "$NSD_PORT"); echo "NSD:         $nsd_qps qps (lost $(lost "$NSD_PORT"))"
half=$((ss_qps / 2))
echo "== latency at $half qps (half of shadowsteer's maximum), ${LAT_DURATION}s each"
read -r s50 s90 s99 s999 <<<"$(udp_latency "$SS_PORT" "$half" shadowsteer)"
read -r n50 n90 n99 n999 <<<"$(udp_latency "$NSD_PORT" "$half" nsd)"

echo "== change-to-answer latency ($ROUNDS rounds of advisory add + remove)"
if [ -n "$LAT_BIN" ]; then
    change=$("$LAT_BIN" "$DB" "127.0.0.1:$SS_PORT" c1.c.vpn.example.net 192.0.2.1 192.0.2.2 eu-1 "$ROUNDS")
else
    change="(change_latency bench did not build)"
fi

echo
echo "================ results (clients: $CLIENTS, machine: $(nproc) CPUs, $(uname -r)) ================"
printf '%-12s %12s %10s %10s %10s %10s\n' server qps p50_us p90_us p99_us p99.9_us
printf '%-12s %12s %10s %10s %10s %10s\n' shadowsteer "$ss_qps" "$s50" "$s90" "$s99" "$s999"
printf '%-12s %12s %10s %10s %10s %10s\n' nsd "$nsd_qps" "$n50" "$n90" "$n99" "$n999"
awk -v a="$ss_qps" -v b="$nsd_qps" 'BEGIN { if (b > 0) printf "ratio shadowsteer/NSD: %.2f (target >= 0.80)\n", a / b }'
echo "$change (target p99 <= 50 ms)"
echo "(latency columns measured at $half qps; dnsperf: $DNSPERF_CLIENTS clients, $OUTSTANDING outstanding)"
