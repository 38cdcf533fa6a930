#!/usr/bin/env bash
# Packets per second and throughput through the shadowsteer agent vs wireguard-go as the
# server: same client, same traffic, same run.
#
# Topology (two network namespaces joined by a veth pair, nothing leaves the machine):
#   client ns: wireguard-go (stock client)  +  udp_load blast  --->  10.79.0.1:7
#   server ns: the server under test, its TUN device 10.79.0.1/24, udp_load echo on :7
# Servers, one after the other, with the same client key and the same client wireguard-go:
#   1. shadowsteer agent, inside = "tun"  (like wireguard-go: decrypted packets go to the kernel)
#   2. wireguard-go                        (the reference)
#   3. shadowsteer agent, inside = "echo" (data plane alone; no TUN, no kernel echo server)
# Traffic: udp_load blast, closed loop (at most WINDOW datagrams in flight), SECONDS per run,
# 64-byte payloads (packet rate) and 1200-byte payloads (throughput). Each figure is the
# median of RUNS runs. The ratio printed is agent(tun) / wireguard-go.
#
# Needs root, ip, wg, wireguard-go, python3, Postgres server binaries (the agent uses an
# embedded cluster for its roster). Usage: sudo benches/agent_vs_wireguard_go.sh
# Environment: SECONDS_PER_RUN (default 8), WINDOW (default 64), RUNS (default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${SECONDS_PER_RUN:-8}
WINDOW=${WINDOW:-64}
RUNS=${RUNS:-3}

[ "$(id -u)" = 0 ] || { echo "benchmark needs root (network namespaces, TUN devices)" >&2; exit 1; }
for t in ip wg wireguard-go python3; do
    command -v "$t" >/dev/null || { echo "missing $t (install iproute2 wireguard-tools wireguard-go python3)" >&2; exit 1; }
done

echo "== building (release)"
cargo build --release --quiet --bin shadowsteer
LOAD=$(cargo bench --bench udp_load --no-run --message-format=json 2>/dev/null |
    python3 -c 'import sys, json
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "udp_load":
        print(m["executable"])' | tail -1)
BIN=$PWD/target/release/shadowsteer
[ -x "$LOAD" ] || { echo "could not build benches/udp_load.rs" >&2; exit 1; }

tag=$(( $$ % 100000 ))
SRV=ssb-srv-$tag
CLI=ssb-cli-$tag
VS=ssbv$tag
VC=ssbp$tag
WGC=ssbc$tag
WGS=ssbs$tag
TUN=ssbt$tag
work=$(mktemp -d /tmp/ssb-XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 1
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$SRV" 2>/dev/null || true
    ip netns del "$CLI" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

wait_for() { # seconds, command...
    local n=$(( $1 * 10 )); shift
    until "$@" >/dev/null 2>&1; do
        n=$(( n - 1 )); [ "$n" -gt 0 ] || { echo "timed out waiting for: $*" >&2; return 1; }
        sleep 0.1
    done
}

echo "== namespaces"
ip netns add "$SRV"
ip netns add "$CLI"
ip link add "$VS" type veth peer name "$VC"
ip link set "$VS" netns "$SRV"
ip link set "$VC" netns "$CLI"
ip -n "$SRV" addr add 10.214.0.1/30 dev "$VS"
ip -n "$CLI" addr add 10.214.0.2/30 dev "$VC"
for ns in "$SRV" "$CLI"; do ip -n "$ns" link set lo up; done
ip -n "$SRV" link set "$VS" up
ip -n "$CLI" link set "$VC" up

echo "== keys and inventory (embedded database in $work/data)"
SPUB=$("$BIN" keys generate --out "$work/service.key")
CPUB=$("$BIN" keys generate --out "$work/client.key")
export SHADOWSTEER_DATA_DIR=$work/data RUST_LOG=warn
"$BIN" appliance add --id bench-1 --region bench --endpoint 10.214.0.1:51820 --public-key "$SPUB" >/dev/null
"$BIN" appliance add --id bench-2 --region bench2 --endpoint 10.214.0.5:51820 --public-key "$SPUB" >/dev/null
"$BIN" client add --id bencher --public-key "$CPUB" --tunnel-ip 10.79.0.2 --primary bench-1 --shadow bench-2 >/dev/null

echo "== client: wireguard-go in $CLI"
ip netns exec "$CLI" wireguard-go -f "$WGC" >/dev/null 2>&1 &
pids+=($!)
wait_for 10 test -S "/var/run/wireguard/$WGC.sock"
ip netns exec "$CLI" wg set "$WGC" private-key "$work/client.key"
ip -n "$CLI" addr add 10.79.0.2/32 dev "$WGC"
ip -n "$CLI" link set "$WGC" up
ip -n "$CLI" route add 10.79.0.0/24 dev "$WGC"

point_client() { # port: a fresh peer entry, so the first packet starts a new handshake
    ip netns exec "$CLI" wg set "$WGC" peer "$SPUB" remove 2>/dev/null || true
    ip netns exec "$CLI" wg set "$WGC" peer "$SPUB" endpoint "10.214.0.1:$1" allowed-ips 10.79.0.0/24
}

start_agent() { # inside port
    cat > "$work/agent.toml" <<EOF
[agent]
appliance = "bench-1"
listen = "10.214.0.1:$2"
key_file = "$work/service.key"
inside = "$1"
data_dir = "$work/data"
[tunnel]
network = "10.79.0.0/24"
tun_name = "$TUN"
EOF
    : > "$work/agent.log"
    RUST_LOG=info ip netns exec "$SRV" "$BIN" agent --config "$work/agent.toml" >"$work/agent.log" 2>&1 &
    AGENT=$!
    pids+=("$AGENT")
    wait_for 60 grep -q "roster loaded" "$work/agent.log" || { cat "$work/agent.log"; exit 1; }
}

stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

start_echo() {
    wait_for 10 ip -n "$SRV" addr show to 10.79.0.1
    ip netns exec "$SRV" "$LOAD" echo 10.79.0.1:7 &
    ECHO=$!
    pids+=("$ECHO")
    sleep 0.3
}

results="$work/results.jsonl"
measure() { # label
    for size in 64 1200; do
        for r in $(seq "$RUNS"); do
            line=$(ip netns exec "$CLI" "$LOAD" blast 10.79.0.1:7 "$size" "$SECONDS_PER_RUN" "$WINDOW")
            echo "$1 run $r: $line"
            echo "{\"server\":\"$1\",\"run\":$r,\"result\":$line}" >> "$results"
        done
    done
}

echo "== 1/3 shadowsteer agent, tun mode"
start_agent tun 51820
start_echo
point_client 51820
measure agent-tun
stop_pid "$ECHO"
stop_pid "$AGENT"

echo "== 2/3 wireguard-go server"
ip netns exec "$SRV" wireguard-go -f "$WGS" >/dev/null 2>&1 &
WGSPID=$!
pids+=("$WGSPID")
wait_for 10 test -S "/var/run/wireguard/$WGS.sock"
ip netns exec "$SRV" wg set "$WGS" private-key "$work/service.key" listen-port 51821 \
    peer "$CPUB" allowed-ips 10.79.0.2/32
ip -n "$SRV" addr add 10.79.0.1/24 dev "$WGS"
ip -n "$SRV" link set "$WGS" up
start_echo
point_client 51821
measure wireguard-go
stop_pid "$ECHO"
stop_pid "$WGSPID"

echo "== 3/3 shadowsteer agent, echo mode (data plane alone)"
start_agent echo 51822
point_client 51822
measure agent-echo
stop_pid "$AGENT"

echo "== summary (median of $RUNS runs of ${SECONDS_PER_RUN}s, window $WINDOW; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
python3 - "$results" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = {}
for server in ("agent-tun", "wireguard-go", "agent-echo"):
    for size in (64, 1200):
        rs = [r["result"] for r in rows if r["server"] == server and r["result"]["size"] == size]
        med[(server, size)] = (statistics.median(r["pps"] for r in rs),
                               statistics.median(r["goodput_bps"] for r in rs),
                               statistics.median(r["loss"] for r in rs))
print(f"{'server':14} {'64 B pkt/s':>12} {'1200 B pkt/s':>13} {'1200 B Mbit/s':>14} {'loss':>7}")
for server in ("agent-tun", "wireguard-go", "agent-echo"):
    p64, _, l64 = med[(server, 64)]
    p12, g12, l12 = med[(server, 1200)]
    print(f"{server:14} {p64:12.0f} {p12:13.0f} {g12/1e6:14.1f} {max(l64, l12):7.4f}")
ref64, ref12 = med[("wireguard-go", 64)][0], med[("wireguard-go", 1200)][1]
print(f"ratio agent(tun)/wireguard-go: packets/s {med[('agent-tun', 64)][0]/ref64:.2f}x, "
      f"throughput {med[('agent-tun', 1200)][1]/ref12:.2f}x (target >= 0.8x)")
EOF
