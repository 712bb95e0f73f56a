#!/usr/bin/env bash
# The consumer's side of priority through the Kafka listener: a
# confluent-kafka group member reads an express `alarms` topic and a
# weight-1 `bulk` topic, doing WORK_MS of work per record (0.5 ms: it
# drains about 2000 records/s), while alarms are produced every 20 ms.
# Alarm latency is produce -> the consumer's hand. Idle (no bulk), then
# while a bulk producer floods at full speed (far more than the consumer
# drains), with librdkafka's default prefetch (up to 64 MiB queued in the
# client, first in first out) and with a small one (PREFETCH_KB, default
# 4: queued.max.messages.kbytes and fetch.max.bytes, with fetch.wait.max.ms
# 10 and no fetch backoff), which is what a
# consumer that wants its alarms first should set.
#   deploy/bench/kafka-consumer-latency.sh [SLUICE_BIN]
# RUNS (default 3) runs of COUNT (default 250) alarms each; prints every
# run. Needs deploy/install-test-peers.sh (the venv).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:-target/release/sluice}
PY=${SLUICE_PYTHON:-${SLUICE_CACHE:-$HOME/.cache/sluice}/venv/bin/python}
RUNS=${RUNS:-3}
COUNT=${COUNT:-250}
WORK_MS=${WORK_MS:-0.5}
PREFETCH_KB=${PREFETCH_KB:-4}
DRIVER=gateway/tests/kafka/driver.py
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

source deploy/bench/kafka-sluice.sh
start_sluice
addr=$sluice_addr
measure() { # measure GROUP [PREFETCH_KB]
    "$PY" "$DRIVER" consumer-latency --bootstrap "$addr" --topics alarms,bulk --count "$COUNT" \
        --group "$1" --work-ms "$WORK_MS" --prefetch-kb "${2:-0}" --timeout 120
}
for ((i = 1; i <= RUNS; i++)); do
    idle=$(measure "idle-$i" "$PREFETCH_KB")
    "$PY" "$DRIVER" bench --bootstrap "$addr" --topic bulk --count 100000000 --size 100 --timeout 600 \
        >/dev/null 2>&1 &
    flood=$!
    sleep 1
    small=$(measure "small-$i" "$PREFETCH_KB")
    default=$(measure "default-$i")
    kill "$flood" 2>/dev/null || true
    wait "$flood" 2>/dev/null || true
    echo "run $i: idle $idle"
    echo "run $i: under the flood, prefetch ${PREFETCH_KB} KiB: $small"
    echo "run $i: under the flood, librdkafka default prefetch: $default"
done
