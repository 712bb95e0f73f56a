#!/bin/bash
# CPU per ingested record with and without rules (issue #15 targets).
# usage: deploy/bench/rules.sh BIN RATE_PER_PUBLISHER PUBLISHERS SECONDS
# e.g.   deploy/bench/rules.sh target/release/sluice 17500 10 10
# Runs a fresh sluice three times (no rule; a filter + projection; a keyed
# 1-minute tumbling window with 4 aggregates over 1000 keys) under the same
# MQTT load (sluice bench mqtt, QoS 1, 100 B) and prints the CPU time of the
# sluice process per record persisted, and each rule's input, lag and open
# windows at the end.
set -e
BIN=$(realpath "$1"); RATE=$2; PUBS=$3; SECS=$4
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
cat > none.toml <<'T'
[[topic]]
name = "bench"
[store]
max_bytes = "2GiB"
T
cp none.toml filter.toml; cat >> filter.toml <<'T'
[[rule]]
name = "fp"
inputs = ["bench"]
output = "bench-out"
filter = "value.seq % 2 == 0"
project = { seq = "value.seq", svc = "value.svc", ms = "value.sent_us / 1000" }
T
cp none.toml window.toml; cat >> window.toml <<'T'
[[rule]]
name = "win"
inputs = ["bench"]
output = "bench-1m"
key = "string(value.seq % 1000)"
[rule.window]
size = "1m"
aggregates = { n = "count()", avg = "avg(value.sent_us % 1000)", hi = "max(value.seq)", last = "last(value.svc)" }
T
for c in none filter window; do
  rm -rf data-$c; mkdir -p data-$c
  $BIN run --config $c.toml --data-dir data-$c --http-listen 127.0.0.1:0 --mqtt-listen 127.0.0.1:0 2>log-$c.txt &
  PID=$!
  for i in $(seq 100); do [ -s data-$c/listen.json ] && break; sleep 0.1; done
  MQTT=$(python3 -c "import json;print(json.load(open('data-$c/listen.json'))['mqtt'])")
  HTTP=$(python3 -c "import json;print(json.load(open('data-$c/listen.json'))['http'])")
  T0=$(awk '{print $14+$15}' /proc/$PID/stat)
  $BIN bench mqtt --addr $MQTT --publishers $PUBS --rate $RATE --duration $SECS --warmup 0 --sluice-http $HTTP --json > bench-$c.json 2>/dev/null
  sleep 1
  T1=$(awk '{print $14+$15}' /proc/$PID/stat)
  STORED=$(curl -s http://$HTTP/metrics | awk '/^sluice_service_records_in_total/ {s+=$2} END {print s}')
  RULES=$(curl -s http://$HTTP/v1/rules)
  kill -TERM $PID; wait $PID || true
  echo "$c: cpu_ticks=$((T1-T0)) stored=$STORED cpu_us_per_record=$(python3 -c "print(round(($T1-$T0)*10000/$STORED,2))") rules=$(echo $RULES | python3 -c "import json,sys;d=json.load(sys.stdin);print([(r['name'],r['records_in'],r['lag_records'],r['open_windows']) for r in d['rules']])")"
done
