# Sourced by benches/dns-vs-nsd.sh and benches/dns-over-tls.sh, not run on its own: `serve` on
# an embedded cluster, and the fleet both benchmarks query. The caller sets BIN, work, pids
# (an array its clean-up kills), ADMIN_PORT and SERVER_CPU, and writes $work/steering.toml;
# udp_latency also needs LOAD_CPU, LAT_DURATION, DNSPERF_CLIENTS, OUTSTANDING and
# $work/queries.txt.

# require_tools "command|Debian package" ...: stops, naming every missing tool and its package.
# What start_serve and load_fleet use, and dnsperf and kdig, which both callers query with, are
# always checked.
require_tools() {
    local missing=() spec
    for spec in "dnsperf|dnsperf" "kdig|knot-dnsutils" "taskset|util-linux" \
        "psql|postgresql-client" "curl|curl" "python3|python3" "$@"; do
        command -v "${spec%%|*}" >/dev/null || missing+=("${spec%%|*} (apt-get install ${spec#*|})")
    done
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null ||
        missing+=("Postgres server binaries (apt-get install postgresql)")
    if [ ${#missing[@]} -gt 0 ]; then
        echo "missing tools; install them first:" >&2
        printf '  %s\n' "${missing[@]}" >&2
        exit 1
    fi
}

# Starts serve, waits until /readyz answers, pins all of its threads to SERVER_CPU (its
# Postgres stays unpinned); sets ss_pid and DB.
start_serve() {
    echo "== starting shadowsteer serve (embedded Postgres in $work/data)"
    RUST_LOG=warn "$BIN" serve --config "$work/steering.toml" --data-dir "$work/data" >"$work/serve.log" 2>&1 &
    ss_pid=$!
    pids+=("$ss_pid")
    for _ in $(seq 600); do
        curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1 && break
        kill -0 "$ss_pid" 2>/dev/null || { cat "$work/serve.log"; exit 1; }
        sleep 0.1
    done
    taskset -a -cp "$SERVER_CPU" "$ss_pid" >/dev/null
    local pgport
    pgport=$(sed -n 4p "$work/data/pg/postmaster.pid")
    DB="postgres://postgres:$(cat "$work/data/pg-password")@127.0.0.1:$pgport/shadowsteer"
}

# load_fleet N: appliances eu-1 (192.0.2.1) and us-1 (192.0.2.2), and clients c1 .. cN under
# c.vpn.example.net, each with eu-1 as primary and us-1 as shadow.
load_fleet() {
    local n=$1 key
    for a in "eu-1 eu 192.0.2.1" "us-1 us 192.0.2.2"; do
        set -- $a
        key=$(python3 -c 'import base64,os; print(base64.b64encode(os.urandom(32)).decode())')
        "$BIN" appliance add --database-url "$DB" --id "$1" --region "$2" --endpoint "$3:51820" --public-key "$key" >/dev/null
    done
    echo "== loading $n clients"
    psql -q -v ON_ERROR_STOP=1 "$DB" <<EOF
INSERT INTO clients (region, id, public_key, tunnel_ip, peer_index, primary_appliance, shadow_appliance)
SELECT 'eu', 'c' || i, encode(sha256(('bench' || i)::bytea), 'base64'), '10.0.0.0'::inet + i, i, 'eu-1', 'us-1'
FROM generate_series(1, $n) AS i;
EOF
}

# udp_latency PORT QPS TAG: dnsperf over UDP at QPS for LAT_DURATION seconds; prints
# "p50 p90 p99 p99.9" of the answered queries in microseconds (dnsperf -v per-query latencies,
# dnsperf's output kept in $work/dnsperf-lat-TAG.txt, the sorted latencies in $work/lat-TAG.txt).
udp_latency() {
    taskset -c "$LOAD_CPU" dnsperf -v -s 127.0.0.1 -p "$1" -d "$work/queries.txt" -l "$LAT_DURATION" \
        -c "$DNSPERF_CLIENTS" -q "$OUTSTANDING" -Q "$2" -t 2 >"$work/dnsperf-lat-$3.txt" 2>/dev/null
    awk '$1 == ">" && $2 == "NOERROR" { print $NF * 1e6 }' "$work/dnsperf-lat-$3.txt" | sort -n > "$work/lat-$3.txt"
    awk '{ v[NR] = $1 } END { if (NR == 0) { print "- - - -"; exit }
          printf "%.0f %.0f %.0f %.0f\n", v[int(NR*0.50)+1], v[int(NR*0.90)+1], v[int(NR*0.99)+1], v[int(NR*0.999)+1] }' "$work/lat-$3.txt"
}
