#!/usr/bin/env bash
# Postgres stopped for SECONDS (default 600) under a running `serve` and a steady DNS query
# stream: what was lost, and how fast serving follows the database after its return.
# Usage: benches/postgres_outage.sh [SECONDS]. Needs root (the test cluster runs as postgres).
# The debug (dev) profile is used: the numbers are about retries and losses, not speed.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
exec nice -n 10 cargo bench --profile dev --bench postgres_outage -- "$seconds"
