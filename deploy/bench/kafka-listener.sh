#!/usr/bin/env bash
# Produce and consume throughput through the Kafka protocol.
# Produce: the same confluent-kafka
# producer (100 B records, linger 5 ms, acks=1, one partition) against
# sluice's Kafka listener and against tansu (sqlite engine, as the uplink
# tests run it), one after the other on this machine, 127.0.0.1 only.
# Consume (tansu's fetch of many small batches is unreliable, so the
# reference is sluice's own HTTP API): a confluent-kafka consumer group
# reading COUNT records of that topic from the earliest offset, against
# sluice's HTTP group fetch (10,000 records a page, commit after each) of
# the same records; a new group each run.
# Alarm latency (LATENCY=1, the default): an alarm producer (acks=all,
# linger 0, one record at a time, 10 ms apart) to an express sync service,
# idle and while a bulk producer floods a buffered weight-1 service at full
# speed through the same listener: p50/p99 per run.
#   deploy/bench/kafka-listener.sh [SLUICE_BIN]
# SLUICE_BIN defaults to target/release/sluice. COUNT (default 200000)
# records per run, RUNS (default 3) runs each; prints every run and the
# medians. Needs deploy/install-test-peers.sh (the venv) and
# deploy/install-tansu.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:-target/release/sluice}
CACHE=${SLUICE_CACHE:-$HOME/.cache/sluice}
PY=${SLUICE_PYTHON:-$CACHE/venv/bin/python}
TANSU=${SLUICE_TANSU:-$CACHE/tansu-0.6.0/bin/tansu}
COUNT=${COUNT:-200000}
RUNS=${RUNS:-3}
DRIVER=gateway/tests/kafka/driver.py
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { until "$PY" -c "import socket; socket.create_connection(('127.0.0.1', $1), 1)" 2>/dev/null; do sleep 0.05; done; }
median() { sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

runs() { # runs NAME ADDR: RUNS produce runs into topic "bench", one line each
    local per_sec
    for ((i = 1; i <= RUNS; i++)); do
        per_sec=$("$PY" "$DRIVER" bench --bootstrap "$2" --topic bench --count "$COUNT" --size 100 --timeout 300 |
            "$PY" -c 'import json, sys; r = json.load(sys.stdin); assert r["failed"] == 0, r; print(round(r["per_sec"]))')
        echo "$1 run $i: $per_sec records/s" >&2
        echo "$per_sec"
    done
}

# sluice: the default (buffered) service, one partition; alarms (express,
# sync) and bulk (weight 1, buffered) for the latency part.
EXTRA_TOML='[[topic]]\nname = "bench"\npartitions = 1\n'
source deploy/bench/kafka-sluice.sh
start_sluice
sluice=$(runs sluice "$sluice_addr" | median)
http_addr=$sluice_http
reads() { # reads NAME COMMAND ARGS...: RUNS group reads of COUNT records, one line each
    local name=$1 per_sec i
    shift
    for ((i = 1; i <= RUNS; i++)); do
        per_sec=$("$PY" "$DRIVER" "$@" --topic bench --count "$COUNT" --group "$name-$i" --timeout 300 |
            "$PY" -c 'import json, sys; r = json.load(sys.stdin); print(round(r["per_sec"]))')
        echo "$name run $i: $per_sec records/s" >&2
        echo "$per_sec"
    done
}
if [[ ${LATENCY:-1} == 1 ]]; then
    for ((i = 1; i <= RUNS; i++)); do
        idle=$("$PY" "$DRIVER" latency --bootstrap "$sluice_addr" --topic alarms --count 300)
        "$PY" "$DRIVER" bench --bootstrap "$sluice_addr" --topic bulk --count 100000000 --size 100 --timeout 600 \
            >/dev/null 2>&1 &
        flood=$!
        sleep 1
        loaded=$("$PY" "$DRIVER" latency --bootstrap "$sluice_addr" --topic alarms --count 300)
        kill "$flood" 2>/dev/null || true
        wait "$flood" 2>/dev/null || true
        echo "alarm latency run $i: idle $idle, under a bulk flood $loaded" >&2
    done
fi
kafka_read=$(reads kafka-group consume-bench --bootstrap "$sluice_addr" | median)
http_read=$(reads http-group http-group-bench --bootstrap "$sluice_addr" --http "$http_addr" | median)

# tansu with sqlite, the topic created with one partition.
port=$(free_port)
mkdir -p "$work/tansu"
(cd "$work/tansu" && RUST_LOG=warn exec "$TANSU" broker --storage-engine sqlite://tansu.db \
    --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    >"$work/tansu.log" 2>&1) &
pids+=($!)
wait_port "$port"
"$PY" "$DRIVER" admin --bootstrap "127.0.0.1:$port" --topic bench --partitions 1 >/dev/null
tansu=$(runs tansu "127.0.0.1:$port" | median)

echo "median consume throughput, $COUNT records: Kafka group $kafka_read records/s, HTTP group fetch $http_read records/s ($(
    "$PY" -c "print(round($kafka_read / $http_read, 2))")x)"
echo "median produce throughput, $COUNT x 100 B, linger 5 ms, acks=1: sluice $sluice records/s, tansu $tansu records/s ($(
    "$PY" -c "print(round($sluice / $tansu, 2))")x)"
