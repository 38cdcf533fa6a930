#!/usr/bin/env bash
# Benchmark: DNS over TLS (RFC 7858) beside UDP and TCP on the same server.
#
# What it does (nothing is installed; missing tools are named and the script stops):
#   1. makes a CA and a server certificate with the README's OpenSSL commands (so they are
#      checked too);
#   2. builds shadowsteer (release) and starts `serve` on an embedded cluster in a temp dir, with
#      [dns.tls] and N clients (c1 .. cN under c.vpn.example.net);
#   3. checks the certificate from outside with kdig +tls;
#   4. runs dnsperf at maximum rate over UDP, TCP and DoT (`-m dot`), each with
#      DNSPERF_CLIENTS connections, the server pinned to SERVER_CPU and dnsperf to LOAD_CPU;
#   5. times the client helper's own lookups (benches/dot_lookup.rs): UDP, TLS on a kept session,
#      TLS on a new session each time;
#   6. a handshake flood: UDP latency at FLOOD_QPS alone, then while FLOOD_CLIENTS
#      `openssl s_time -new` loops open TLS sessions as fast as they can (on LOAD_CPU with
#      dnsperf, so the rise also holds dnsperf's own delays: an upper bound), and the admin
#      API's /healthz time in both.
#
# Environment knobs: CLIENTS (10000), DURATION (seconds per run, 10), SERVER_CPU (0),
# LOAD_CPU (1), DNSPERF_CLIENTS (8), OUTSTANDING (dnsperf -q, 200), ROUNDS (lookups per way,
# 2000), LAT_DURATION (seconds per flood-phase run, 10), FLOOD_QPS (20000), FLOOD_CLIENTS (4),
# KEEP=1 keeps the work dir.
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-10000}
DURATION=${DURATION:-10}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
DNSPERF_CLIENTS=${DNSPERF_CLIENTS:-8}
OUTSTANDING=${OUTSTANDING:-200}
ROUNDS=${ROUNDS:-2000}
LAT_DURATION=${LAT_DURATION:-10}
FLOOD_QPS=${FLOOD_QPS:-20000}
FLOOD_CLIENTS=${FLOOD_CLIENTS:-4}

source benches/serve-fleet.sh
require_tools "openssl|openssl"
# (Read whole: grep -q stopping early would fail the pipe under pipefail.)
[[ "$(dnsperf -h 2>&1 || true)" == *"dot"* ]] || { echo "this dnsperf has no DNS-over-TLS mode (-m dot); 2.5 or later needed" >&2; exit 1; }

echo "== building shadowsteer and the lookup bench (release)"
cargo build --release --quiet --bin shadowsteer
cargo build --release --quiet --bench dot_lookup
BIN=$PWD/target/release/shadowsteer
LOOKUP_BIN=$(ls -t target/release/deps/dot_lookup-* | grep -v '\.d$' | head -1)

work=$(mktemp -d /tmp/shadowsteer-dot-XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ "${KEEP:-0}" = 1 ]; then echo "work dir kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

echo "== a CA and a server certificate (README, \"The client helper\")"
(
    cd "$work"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
        -subj "/CN=shadowsteer DNS CA" -keyout dns-ca.key -out dns-ca.pem 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=ns1.vpn.example.net" \
        -keyout dns-tls.key -out dns-tls.csr 2>/dev/null
    openssl x509 -req -in dns-tls.csr -CA dns-ca.pem -CAkey dns-ca.key -CAcreateserial -days 365 \
        -extfile <(printf "subjectAltName=DNS:ns1.vpn.example.net") -out dns-tls.crt 2>/dev/null
    chmod 600 dns-tls.key dns-ca.key
)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port); TLS_PORT=$(free_port); ADMIN_PORT=$(free_port)
cat > "$work/steering.toml" <<EOF
[server]
region = "eu"
name = "bench"
[dns]
listen = ["127.0.0.1:$PORT"]
udp_workers = 1
[dns.tls]
listen = ["127.0.0.1:$TLS_PORT"]
certificate = "$work/dns-tls.crt"
private_key = "$work/dns-tls.key"
[dns.rate_limit]
responses_per_second = 0
[[dns.zones]]
name = "vpn.example.net"
[[dns.zones.ns]]
name = "ns1"
addresses = ["127.0.0.1"]
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
EOF
start_serve
load_fleet "$CLIENTS"
dot=(+tls "+tls-ca=$work/dns-ca.pem" +tls-hostname=ns1.vpn.example.net)
for _ in $(seq 300); do
    [ "$(kdig @127.0.0.1 -p "$TLS_PORT" "${dot[@]}" "c$CLIENTS.c.vpn.example.net" A +short 2>/dev/null)" = 192.0.2.1 ] && break
    sleep 0.1
done
got=$(kdig @127.0.0.1 -p "$TLS_PORT" "${dot[@]}" "c$CLIENTS.c.vpn.example.net" A +short)
[ "$got" = 192.0.2.1 ] || { echo "kdig over TLS got '$got' for c$CLIENTS"; cat "$work/serve.log"; exit 1; }
echo "kdig +tls verified the certificate and got $got"

awk -v n="$CLIENTS" 'BEGIN { srand(42); for (i = 0; i < 200000; i++) printf "c%d.c.vpn.example.net A\n", 1 + int(rand() * n) }' > "$work/queries.txt"
maxrate() { # mode port -> "qps lost"
    taskset -c "$LOAD_CPU" dnsperf -m "$1" -s 127.0.0.1 -p "$2" -d "$work/queries.txt" -l "$DURATION" \
        -c "$DNSPERF_CLIENTS" -q "$OUTSTANDING" -t 2 >"$work/dnsperf-$1.txt" 2>&1
    awk '/Queries per second:/ { q = int($4) } /Queries lost:/ { l = $3 " " $4 } END { print q " (lost " l ")" }' "$work/dnsperf-$1.txt"
}
echo "== max rate, ${DURATION}s each (server on CPU $SERVER_CPU, dnsperf on CPU $LOAD_CPU, $DNSPERF_CLIENTS connections)"
udp=$(maxrate udp "$PORT"); echo "UDP: $udp qps"
tcp=$(maxrate tcp "$PORT"); echo "TCP: $tcp qps"
tls=$(maxrate dot "$TLS_PORT"); echo "DoT: $tls qps"

echo "== the helper's lookups ($ROUNDS per way, one at a time)"
lookups=$("$LOOKUP_BIN" "127.0.0.1:$PORT" "127.0.0.1:$TLS_PORT" ns1.vpn.example.net "$work/dns-ca.pem" c1.c.vpn.example.net "$ROUNDS")

TOKEN=$("$BIN" token create --database-url "$DB" --name bench --scope read 2>/dev/null)
handshake_failures() {
    curl -sf -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$ADMIN_PORT/metrics" |
        awk -F'[" ]' '/^shadowsteer_dns_tls_handshake_failures_total/ { printf "%s%s %s", sep, $2, $NF; sep = ", " }'
}
# healthz_ms N: "p50 max" of N /healthz requests, 50 ms apart, in milliseconds.
healthz_ms() {
    for _ in $(seq "$1"); do
        curl -sf -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$ADMIN_PORT/healthz"
        sleep 0.05
    done | sort -n | awk '{ v[NR] = $1 * 1000 } END { printf "%.2f %.2f\n", v[int(NR*0.5)+1], v[NR] }'
}
lost_of() { awk '/Queries lost:/ { print $3 " " $4 }' "$work/dnsperf-lat-$1.txt"; }

echo "== a handshake flood: UDP at $FLOOD_QPS qps alone, then beside $FLOOD_CLIENTS openssl s_time -new loops, ${LAT_DURATION}s each"
read -r q50 q90 q99 q999 <<<"$(udp_latency "$PORT" "$FLOOD_QPS" quiet)"
read -r h50 hmax <<<"$(healthz_ms 20)"
before=$(handshake_failures)
flood=()
for i in $(seq "$FLOOD_CLIENTS"); do
    taskset -c "$LOAD_CPU" openssl s_time -connect "127.0.0.1:$TLS_PORT" -new -time $((LAT_DURATION + 2)) \
        >"$work/flood-$i.txt" 2>&1 &
    flood+=($!); pids+=($!)
done
sleep 1
healthz_ms 20 >"$work/healthz-flood.txt" &
read -r f50 f90 f99 f999 <<<"$(udp_latency "$PORT" "$FLOOD_QPS" flood)"
wait "$!" || true
read -r fh50 fhmax <"$work/healthz-flood.txt"
for p in "${flood[@]}"; do wait "$p" || true; done
handshakes=$(cat "$work"/flood-*.txt | awk '/connections in [0-9]+ real seconds/ { n += $1; if ($4 > t) t = $4 } END { printf "%d in %d s", n, t }')
failures=$(handshake_failures)

echo
echo "================ results (clients: $CLIENTS, machine: $(nproc) CPUs, $(uname -r)) ================"
echo "max rate: UDP $udp, TCP $tcp, DoT $tls qps"
echo "$lookups"
echo "handshake flood ($FLOOD_CLIENTS openssl s_time -new loops): $handshakes handshakes completed"
echo "  UDP at $FLOOD_QPS qps, p50/p90/p99/p99.9 us: alone $q50 $q90 $q99 $q999 (lost $(lost_of quiet)), flooded $f50 $f90 $f99 $f999 (lost $(lost_of flood))"
echo "  /healthz p50/max ms over 20: alone $h50 $hmax, flooded $fh50 $fhmax"
echo "TLS handshakes not ending in a session, by reason: before the flood ${before:-?}; after it ${failures:-?}"
