#!/usr/bin/env bash
# Reproduces the README's benchmark figures on this machine.
#   deploy/bench.sh            everything (about 10 minutes on 2 cores)
#   deploy/bench.sh micro      criterion benches only (store, scheduler)
#   deploy/bench.sh http       end-to-end HTTP figures only
# Each end-to-end scenario runs RUNS times (default 3); report the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
RUNS=${RUNS:-3}
DURATION=${DURATION:-5}

if [[ $what == all || $what == micro ]]; then
    cargo bench -p sluice-store --bench scheduler -- --quick
    cargo bench -p sluice-store --bench store -- --quick
fi
[[ $what == all || $what == http ]] || exit 0

cargo build --release -p sluice-gateway
bin=target/release/sluice
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

start() { # start MODE -> sets addr
    local mode=$1
    local dir="$work/$mode-$RANDOM"
    sed "s/^mode = .*/mode = \"$mode\"/" deploy/bench/isolation.toml > "$work/$mode.toml"
    SLUICE_LOG=warn "$bin" run --config "$work/$mode.toml" --data-dir "$dir" \
        --http-listen 127.0.0.1:0 --mqtt-listen 127.0.0.1:0 &
    pid=$!
    for _ in $(seq 100); do [[ -f $dir/listen.json ]] && break; sleep 0.1; done
    addr=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['http'])" "$dir/listen.json")
}
stop() { kill -TERM "$pid"; wait "$pid" || true; }

echo "== end-to-end HTTP ingest (buffered service, 100 B values)"
for run in $(seq "$RUNS"); do
    start weighted
    for clients in 1 16 64; do
        for batch in 1 64; do
            echo -n "run $run: "
            "$bin" bench http --addr "$addr" --topic bench --clients $clients --batch $batch --payload 100 --duration "$DURATION"
        done
    done
    stop
done

# Two floods: 100 B records (HTTP parsing is the bottleneck, the store keeps
# up) and 4 KiB records (more bytes than the store sustains: queues fill).
for flood_payload in 100 4096; do
    for mode in weighted fifo; do
        echo "== priority isolation, flood of ${flood_payload} B records, scheduler mode $mode"
        for run in $(seq "$RUNS"); do
            start "$mode"
            echo "run $run:"
            "$bin" bench isolation --addr "$addr" --express-topic alarms --express-rate 50 \
                --flood-topic logs --flood-clients 32 --flood-batch 64 --payload 100 \
                --flood-payload "$flood_payload" --duration "$DURATION"
            stop
        done
    done
done
