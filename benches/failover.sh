#!/usr/bin/env bash
# Failover benchmark (issue "Takeover"): runs the takeover scenarios on a release build and
# prints what each cost. Needs root (network namespaces), wireguard-go and wg.
#
#   benches/failover.sh          a table
#   benches/failover.sh --json   one JSON object: predicted_lost, predicted_lost_helper,
#                                predicted_lost_helper_standby, sudden_gap_ms,
#                                sudden_gap_ms_helper, sudden_gap_ms_helper_standby,
#                                sudden_1000_last_ms, reactive_gap_ms (and
#                                sudden_1000_detection_ms)
#
# The scenarios are the integration tests' (tests/wg_takeover.rs, tests/takeover_scale.rs,
# tests/wg_reactive.rs): stock wireguard-go or the client helper in a network namespace, primary
# and shadow agents in namespaces of their own, a numbered probe stream at 100 packets/s
# through the tunnel. Each test appends what it measured to $SHADOWSTEER_MEASURE_OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
json=false
[ "${1:-}" = "--json" ] && json=true

out=$(mktemp /tmp/shadowsteer-failover-XXXXXX.jsonl)
log=$(mktemp /tmp/shadowsteer-failover-XXXXXX.log)
trap 'rm -f "$out"' EXIT
export SHADOWSTEER_MEASURE_OUT="$out"
# 1,000 sessions with the default detection (4 × 50 ms) on a release build.
export SHADOWSTEER_SCALE_MISSES=4
if ! cargo test --release --quiet \
    --test wg_takeover --test takeover_scale --test wg_reactive \
    -- --test-threads=1 --nocapture >"$log" 2>&1; then
    cat "$log" >&2
    echo "error: a failover scenario failed (log above)" >&2
    exit 1
fi
rm -f "$log"
python3 - "$out" "$json" <<'PY'
import json, sys
values = {}
for line in open(sys.argv[1]):
    line = line.strip()
    if line:
        values.update(json.loads(line))
keys = ["predicted_lost", "predicted_lost_helper", "predicted_lost_helper_standby",
        "sudden_gap_ms", "sudden_gap_ms_helper", "sudden_gap_ms_helper_standby",
        "sudden_1000_last_ms", "sudden_1000_detection_ms", "reactive_gap_ms"]
missing = [k for k in keys if k not in values]
if missing:
    sys.exit(f"error: not measured: {', '.join(missing)}")
result = {k: round(values[k], 1) for k in keys}
if sys.argv[2] == "true":
    print(json.dumps(result))
else:
    rows = [
        ("predicted move, stock client (packets lost)", "predicted_lost"),
        ("predicted move, client helper (packets lost)", "predicted_lost_helper"),
        ("move by DNS, helper with a standby session (packets lost)",
         "predicted_lost_helper_standby"),
        ("sudden crash, stock client: longest gap (ms)", "sudden_gap_ms"),
        ("sudden crash, client helper: longest gap (ms)", "sudden_gap_ms_helper"),
        ("sudden crash, helper with a standby session: longest gap (ms)",
         "sudden_gap_ms_helper_standby"),
        ("sudden crash, 1,000 sessions: last resumed after (ms)", "sudden_1000_last_ms"),
        ("  of which detection (ms)", "sudden_1000_detection_ms"),
        ("reactive baseline, DNS only: longest gap (ms)", "reactive_gap_ms"),
    ]
    for label, key in rows:
        print(f"{label:58} {result[key]}")
PY
