#!/usr/bin/env bash
# Packets per second and throughput through the shadowsteer agent vs wireguard-go as the
# server: same clients, same traffic, same run.
#
# Topology (network namespaces joined by veth pairs, nothing leaves the machine):
#   client ns i (CLIENTS of them): wireguard-go (stock client) + udp_load blast ---> 10.79.0.1:7
#   server ns: the server under test, its TUN device 10.79.0.1/24, udp_load echo on :7
# Servers, one after the other, with the same client keys and the same client wireguard-gos:
#   1. shadowsteer agent, inside = "tun", tunnel.threads = each of THREADS
#      (like wireguard-go: decrypted packets go to the kernel)
#   2. wireguard-go                        (the reference)
#   3. shadowsteer agent, inside = "echo", each of THREADS (data plane alone; no TUN, no
#      kernel echo server)
# Traffic: udp_load blast from every client at once, closed loop (at most WINDOW datagrams in
# flight per client), SECONDS per run, 64-byte payloads (packet rate) and 1200-byte payloads
# (throughput); a run's figure is the sum over the clients. Each figure is the median of RUNS
# runs. The ratios printed are agent(tun) / wireguard-go. One client is one 4-tuple, which
# the kernel gives to one agent worker: threads only help with CLIENTS >= 2.
#
# Needs root, ip, wg, wireguard-go, python3, Postgres server binaries (the agent uses an
# embedded cluster for its roster). Usage: sudo benches/agent_vs_wireguard_go.sh
# Environment: SECONDS_PER_RUN (default 8), WINDOW (default 64), RUNS (default 3),
# CLIENTS (default 1), THREADS (agent data-plane threads to try, default "1 2").
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${SECONDS_PER_RUN:-8}
WINDOW=${WINDOW:-64}
RUNS=${RUNS:-3}
CLIENTS=${CLIENTS:-1}
THREADS=${THREADS:-1 2}

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
WGS=ssbs$tag
TUN=ssbt$tag
clients=$(seq 0 $(( CLIENTS - 1 )))
cli() { echo "ssb-cli$1-$tag"; }  # client i's namespace
wgc() { echo "ssbc$1x$tag"; }     # its wireguard-go interface
work=$(mktemp -d /tmp/ssb-XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 1
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$SRV" 2>/dev/null || true
    for i in $clients; do ip netns del "$(cli "$i")" 2>/dev/null || true; done
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

echo "== namespaces ($CLIENTS client(s))"
ip netns add "$SRV"
ip -n "$SRV" link set lo up
for i in $clients; do  # client i: 10.214.i.2/30, the server 10.214.i.1/30 on its side
    ip netns add "$(cli "$i")"
    ip link add "ssbv${i}x$tag" type veth peer name "ssbp${i}x$tag"
    ip link set "ssbv${i}x$tag" netns "$SRV"
    ip link set "ssbp${i}x$tag" netns "$(cli "$i")"
    ip -n "$SRV" addr add "10.214.$i.1/30" dev "ssbv${i}x$tag"
    ip -n "$(cli "$i")" addr add "10.214.$i.2/30" dev "ssbp${i}x$tag"
    ip -n "$(cli "$i")" link set lo up
    ip -n "$SRV" link set "ssbv${i}x$tag" up
    ip -n "$(cli "$i")" link set "ssbp${i}x$tag" up
done

echo "== keys and inventory (embedded database in $work/data)"
SPUB=$("$BIN" keys generate --out "$work/service.key")
export SHADOWSTEER_DATA_DIR=$work/data RUST_LOG=warn
"$BIN" appliance add --id bench-1 --region bench --endpoint 10.214.0.1:51820 --public-key "$SPUB" >/dev/null
"$BIN" appliance add --id bench-2 --region bench2 --endpoint 10.214.0.5:51820 --public-key "$SPUB" >/dev/null
for i in $clients; do
    "$BIN" keys generate --out "$work/client$i.key" > "$work/client$i.pub"
    "$BIN" client add --id "bencher$i" --public-key "$(cat "$work/client$i.pub")" \
        --tunnel-ip "10.79.0.$(( i + 2 ))" --primary bench-1 --shadow bench-2 >/dev/null
done

for i in $clients; do
    echo "== client $i: wireguard-go in $(cli "$i")"
    ip netns exec "$(cli "$i")" wireguard-go -f "$(wgc "$i")" >/dev/null 2>&1 &
    pids+=($!)
    wait_for 10 test -S "/var/run/wireguard/$(wgc "$i").sock"
    ip netns exec "$(cli "$i")" wg set "$(wgc "$i")" private-key "$work/client$i.key"
    ip -n "$(cli "$i")" addr add "10.79.0.$(( i + 2 ))/32" dev "$(wgc "$i")"
    ip -n "$(cli "$i")" link set "$(wgc "$i")" up
    ip -n "$(cli "$i")" route add 10.79.0.0/24 dev "$(wgc "$i")"
done

point_client() { # port: fresh peer entries, so the first packets start new handshakes
    for i in $clients; do
        ip netns exec "$(cli "$i")" wg set "$(wgc "$i")" peer "$SPUB" remove 2>/dev/null || true
        ip netns exec "$(cli "$i")" wg set "$(wgc "$i")" peer "$SPUB" \
            endpoint "10.214.$i.1:$1" allowed-ips 10.79.0.0/24
    done
}

start_agent() { # inside port threads
    cat > "$work/agent.toml" <<EOF
[agent]
appliance = "bench-1"
listen = "0.0.0.0:$2"
key_file = "$work/service.key"
inside = "$1"
data_dir = "$work/data"
[tunnel]
network = "10.79.0.0/24"
tun_name = "$TUN"
threads = $3
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
measure() { # label: every client blasts at once; one line per client and run
    for size in 64 1200; do
        for r in $(seq "$RUNS"); do
            blasts=()
            for i in $clients; do
                ip netns exec "$(cli "$i")" "$LOAD" blast 10.79.0.1:7 "$size" "$SECONDS_PER_RUN" "$WINDOW" \
                    > "$work/blast$i" &
                blasts+=($!)
            done
            wait "${blasts[@]}"
            load=$(cut -d' ' -f1 /proc/loadavg)
            for i in $clients; do
                line=$(cat "$work/blast$i")
                echo "$1 run $r client $i: $line (load $load)"
                echo "{\"server\":\"$1\",\"run\":$r,\"client\":$i,\"load\":$load,\"result\":$line}" >> "$results"
            done
        done
    done
}

n=0
for t in $THREADS; do
    n=$(( n + 1 ))
    echo "== shadowsteer agent, tun mode, $t thread(s)"
    start_agent tun $(( 51820 + n )) "$t"
    start_echo
    point_client $(( 51820 + n ))
    measure "agent-tun-${t}t"
    stop_pid "$ECHO"
    stop_pid "$AGENT"
done

echo "== wireguard-go server"
ip netns exec "$SRV" wireguard-go -f "$WGS" >/dev/null 2>&1 &
WGSPID=$!
pids+=("$WGSPID")
wait_for 10 test -S "/var/run/wireguard/$WGS.sock"
ip netns exec "$SRV" wg set "$WGS" private-key "$work/service.key" listen-port 51820
for i in $clients; do
    ip netns exec "$SRV" wg set "$WGS" peer "$(cat "$work/client$i.pub")" allowed-ips "10.79.0.$(( i + 2 ))/32"
done
ip -n "$SRV" addr add 10.79.0.1/24 dev "$WGS"
ip -n "$SRV" link set "$WGS" up
start_echo
point_client 51820
measure wireguard-go
stop_pid "$ECHO"
stop_pid "$WGSPID"

for t in $THREADS; do
    n=$(( n + 1 ))
    echo "== shadowsteer agent, echo mode (data plane alone), $t thread(s)"
    start_agent echo $(( 51820 + n )) "$t"
    point_client $(( 51820 + n ))
    measure "agent-echo-${t}t"
    stop_pid "$AGENT"
done

echo "== summary ($CLIENTS client(s), sums over clients; median of $RUNS runs of ${SECONDS_PER_RUN}s, window $WINDOW; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
THREADS="$THREADS" python3 - "$results" <<'EOF'
import json, os, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
threads = os.environ["THREADS"].split()
servers = [f"agent-tun-{t}t" for t in threads] + ["wireguard-go"] + [f"agent-echo-{t}t" for t in threads]
med = {}
for server in servers:
    for size in (64, 1200):
        runs = {}
        for r in rows:
            if r["server"] == server and r["result"]["size"] == size:
                runs.setdefault(r["run"], []).append(r)
        # A run's figure: packets and goodput summed over the clients, the worst client's loss.
        sums = [(sum(c["result"]["pps"] for c in cs), sum(c["result"]["goodput_bps"] for c in cs),
                 max(c["result"]["loss"] for c in cs), max(c["load"] for c in cs)) for cs in runs.values()]
        med[(server, size)] = tuple(statistics.median(s[k] for s in sums) for k in range(4))
print(f"{'server':16} {'64 B pkt/s':>12} {'1200 B pkt/s':>13} {'1200 B Mbit/s':>14} {'loss':>7} {'load':>5}")
for server in servers:
    p64, _, l64, a64 = med[(server, 64)]
    p12, g12, l12, a12 = med[(server, 1200)]
    print(f"{server:16} {p64:12.0f} {p12:13.0f} {g12/1e6:14.1f} {max(l64, l12):7.4f} {max(a64, a12):5.2f}")
ref64, ref12 = med[("wireguard-go", 64)][0], med[("wireguard-go", 1200)][1]
for t in threads:
    s = f"agent-tun-{t}t"
    print(f"ratio agent(tun, {t} thread(s))/wireguard-go: packets/s {med[(s, 64)][0]/ref64:.2f}x, "
          f"throughput {med[(s, 1200)][1]/ref12:.2f}x (target >= 1.0x)")
if len(threads) > 1:
    for mode in ("tun", "echo"):
        a, b = f"agent-{mode}-{threads[0]}t", f"agent-{mode}-{threads[-1]}t"
        print(f"scaling {mode} {threads[0]} -> {threads[-1]} threads: packets/s "
              f"{med[(b, 64)][0]/med[(a, 64)][0]:.2f}x, throughput {med[(b, 1200)][1]/med[(a, 1200)][1]:.2f}x")
EOF
