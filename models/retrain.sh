#!/usr/bin/env bash
# Retrains the default risk model (models/default.json and its card models/default.md) on
# simulated telemetry, then evaluates it on two seeds not used in training and appends the
# results to the card. Deterministic: the same code gives the same model (the card's dates and
# timings aside). Takes a few minutes on two cores; needs about 1.5 GB of disk in target/.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/shadowsteer
cargo build --release --quiet
data=target/risk-data
mkdir -p "$data"
train=()
for seed in 1 2 3 4 5 6; do
    "$bin" simulate --appliances 40 --hours 8 --seed "$seed" --out "$data/train$seed.csv"
    train+=("$data/train$seed.csv")
done
"$bin" train --data "$(IFS=,; echo "${train[*]}")" --out models/default.json --members 16 --novelty \
    --note "training data: shadowsteer simulate --appliances 40 --hours 8 --seed N for N = 1..6 (default failure rate 4 per appliance-day)" \
    --note "retrain with models/retrain.sh"
{
    echo
    echo "## Held-out evaluation"
    echo
    echo "Seeds 101 and 102 were not used in training: \`shadowsteer simulate --appliances 60 --hours 12 --seed N\`, then \`shadowsteer evaluate --model models/default.json --data FILE\`."
    for seed in 101 102; do
        "$bin" simulate --appliances 60 --hours 12 --seed "$seed" --out "$data/test$seed.csv" >/dev/null
        echo
        echo "### Seed $seed"
        echo
        "$bin" evaluate --model models/default.json --data "$data/test$seed.csv" | tail -n +3
    done
} >> models/default.md
echo "wrote models/default.json and models/default.md"
