#!/usr/bin/env bash
# Reproduces the README's benchmark figures on this machine.
#   deploy/bench.sh            everything (about 25 minutes on 2 cores)
#   deploy/bench.sh micro      criterion benches only (store, scheduler)
#   deploy/bench.sh http       end-to-end HTTP figures only
#   deploy/bench.sh mqtt       MQTT: sluice vs stock rumqttd vs Mosquitto
#   deploy/bench.sh footprint  memory, threads and disk writes idle and at
#                              1k and 10k MQTT msg/s (package default config
#                              and deploy/small-box.toml), binary size
#   deploy/bench.sh store      card wear (bytes written per record byte by
#                              flush_interval), restart after kill -9 with
#                              1 GiB stored, express latency on a slow-card
#                              model (see deploy/bench/store.sh)
# Each end-to-end scenario runs RUNS times (default 3); report the medians.
# Builds into CARGO_TARGET_DIR when it is set (default target/); with
# SLUICE_BIN=path, uses that binary and builds nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
RUNS=${RUNS:-3}
DURATION=${DURATION:-5}
# MQTT section: seconds per measurement, consumer drain rate (records/s),
# express alarm rate (msgs/s), and where to keep the raw results (JSON lines).
MQTT_DURATION=${MQTT_DURATION:-10}
DRAIN=${DRAIN:-1000}
ALARM_RATE=${ALARM_RATE:-50}
MQTT_RESULTS=${MQTT_RESULTS:-}
# MQTT_PRIORITY=0 skips the priority scenario of the MQTT section.
MQTT_PRIORITY=${MQTT_PRIORITY:-1}

if [[ $what == all || $what == micro ]]; then
    cargo bench -p sluice-store --bench scheduler -- --quick
    cargo bench -p sluice-store --bench store -- --quick
fi
[[ $what == all || $what == http || $what == mqtt || $what == footprint || $what == store ]] || exit 0

if [[ -n ${SLUICE_BIN:-} ]]; then
    bin=$SLUICE_BIN
else
    cargo build --release -p sluice-gateway
    bin=${CARGO_TARGET_DIR:-target}/release/sluice
fi
work=$(mktemp -d)
cleanup() {
    local p
    for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

start() { # start MODE -> sets pid, addr (HTTP), mqtt
    local mode=$1
    local dir="$work/$mode-$RANDOM"
    sed "s/^mode = .*/mode = \"$mode\"/" deploy/bench/isolation.toml > "$work/$mode.toml"
    launch "$work/$mode.toml" "$dir"
}
launch() { # launch CONFIG DATA_DIR -> sets pid, addr (HTTP), mqtt
    local dir=$2
    # Logs go to a file: rumqttd logs every reset client connection.
    SLUICE_LOG=warn "$bin" run --config "$1" --data-dir "$dir" \
        --http-listen 127.0.0.1:0 --mqtt-listen 127.0.0.1:0 2>>"$work/sluice.log" &
    pid=$!
    for _ in $(seq 100); do [[ -f $dir/listen.json ]] && break; sleep 0.1; done
    [[ -f $dir/listen.json ]] || { tail -20 "$work/sluice.log" >&2; echo "sluice did not start" >&2; exit 1; }
    addr=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['http'])" "$dir/listen.json")
    mqtt=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['mqtt'])" "$dir/listen.json")
}
stop() { kill -TERM "$pid"; wait "$pid" || true; }

if [[ $what == all || $what == http ]]; then
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
fi
if [[ $what == all || $what == footprint ]]; then
    source deploy/bench/footprint.sh
    footprint "$bin"
fi
if [[ $what == all || $what == store ]]; then
    source deploy/bench/store.sh
    store_bench "$bin"
fi
[[ $what == all || $what == mqtt ]] || exit 0

# == MQTT: sluice, stock rumqttd (same version and settings, not persisting)
# and Mosquitto side by side on 127.0.0.1, runs interleaved so a busy
# machine hurts all three alike. sluice is restarted with an empty data
# directory for every measurement; the two brokers keep running.
mosquitto_bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)
[[ -x $mosquitto_bin ]] || { echo "mosquitto not found: run deploy/install-test-peers.sh" >&2; exit 1; }
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done; echo "nothing listens on $1" >&2; exit 1; }

rumqttd_addr=127.0.0.1:$(free_port)
SLUICE_LOG=warn "$bin" bench rumqttd --listen "$rumqttd_addr" --config deploy/bench/isolation.toml \
    2>>"$work/rumqttd.log" &
mosquitto_port=$(free_port)
# Mosquitto 2 listens only on localhost and refuses anonymous clients
# unless configured; queue limits stay at their defaults (20 in flight and
# 1000 queued QoS 1 messages per subscriber, beyond that it drops).
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest none\n' \
    "$mosquitto_port" > "$work/mosquitto.conf"
"$mosquitto_bin" -c "$work/mosquitto.conf" &
wait_port "${rumqttd_addr##*:}"
wait_port "$mosquitto_port"
mosquitto_addr=127.0.0.1:$mosquitto_port
results=$work/results.jsonl
# Progress lines ([... 3s] ...) of the load tool are left out below.

counts() { # counts -> JSON: sluice's MQTT conservation counters and log size (sums over services/partitions)
    python3 - "$addr" <<'PY'
import json, sys, urllib.request
base = "http://" + sys.argv[1]
m = {}
for line in urllib.request.urlopen(base + "/metrics").read().decode().splitlines():
    if line.startswith("#") or not line.strip():
        continue
    name = line.split("{")[0].split(" ")[0]
    m[name] = m.get(name, 0) + float(line.rsplit(" ", 1)[1])
topics = json.load(urllib.request.urlopen(base + "/v1/topics"))["topics"]
print(json.dumps({
    "received": int(m.get("sluice_mqtt_received_total", 0)),
    "in": int(m.get("sluice_service_mqtt_in_total", 0)),
    "stored": int(m.get("sluice_service_mqtt_stored_total", 0)),
    "acked": int(m.get("sluice_service_mqtt_acked_total", 0)),
    "failed": int(m.get("sluice_service_mqtt_failed_total", 0)),
    "dropped": int(m.get("sluice_mqtt_dropped_total", 0)),
    "log_records": sum(p["high_watermark"] - p["log_start"] for t in topics for p in t["partitions"]),
}))
PY
}
record() { # record SCENARIO TARGET JSON
    python3 -c 'import json,sys;r=json.loads(sys.argv[3]);r["scenario"]=sys.argv[1];r["target"]=sys.argv[2];print(json.dumps(r))' \
        "$1" "$2" "$3" >> "$results"
}
throughput() { # throughput SCENARIO TARGET ARGS...
    local scenario=$1 target=$2 out extra=()
    shift 2
    case $target in
        sluice) start weighted; extra=(--addr "$mqtt" --sluice-http "$addr") ;;
        rumqttd) extra=(--addr "$rumqttd_addr") ;;
        mosquitto) extra=(--addr "$mosquitto_addr") ;;
    esac
    out=$("$bin" bench mqtt "${extra[@]}" "$@" --qos 1 --payload 100 --duration "$MQTT_DURATION" --json \
        2> >(grep -v '^\[' >&2))
    if [[ $target == sluice ]]; then
        # Every publish sluice acknowledged must be in the log.
        out=$(python3 -c 'import json,sys;r=json.loads(sys.argv[1]);r["counts"]=json.loads(sys.argv[2]);print(json.dumps(r))' "$out" "$(counts)")
        stop
    fi
    record "$scenario" "$target" "$out"
    python3 -c 'import json,sys;r=json.loads(sys.argv[1]);s=r.get("sluice");print("  %-9s %8.0f msg/s acked (median/s %8.0f), ack p50 %6.2f ms p99 %7.2f ms%s"%(sys.argv[2],r["msgs_per_s"],r["median_msgs_per_s"],r["ack_latency"]["p50_ms"],r["ack_latency"]["p99_ms"],"" if not s else ", persisted %d of %d received, dropped %d"%(s["persisted"],s["received"],s["dropped"])))
c=r.get("counts")
if c:
    lost=c["acked"]-min(c["stored"],c["log_records"])
    print("  %-9s acked %d, stored %d, in log %d, received %d, dropped %d%s"%("",c["acked"],c["stored"],c["log_records"],c["received"],c["dropped"],"  LOST %d ACKNOWLEDGED PUBLISHES"%lost if lost>0 else ""))' "$out" "$target"
}
priority() { # priority TARGET
    local target=$1 out extra=()
    local services=(--service "alarms:alarms/dev-1:$ALARM_RATE" --service "telemetry:telemetry/dev-1:$DRAIN"
        --service "logs:logs/dev-1:$((10 * DRAIN))")
    case $target in
        sluice | sluice-fifo)
            if [[ $target == sluice ]]; then start weighted; else start fifo; fi
            extra=(--addr "$mqtt" --consumer sluice --http "$addr") ;;
        mosquitto) extra=(--addr "$mosquitto_addr" --consumer mqtt) ;;
    esac
    out=$("$bin" bench mqtt-priority "${extra[@]}" "${services[@]}" --drain-rate "$DRAIN" \
        --qos 1 --payload 100 --duration "$MQTT_DURATION" --json 2> >(grep -v '^\[' >&2))
    [[ $target == sluice* ]] && stop
    record priority "$target" "$out"
    python3 -c 'import json,sys
r=json.loads(sys.argv[1]); g=">%.0f"%(1000*r["grace_s"])
f=lambda x, alt=g: alt if x is None else "%.2f"%x
print("  %-11s alarms p99 idle %s ms, loaded %s ms (x%s), %.0f%% delivered; shares %s"%(sys.argv[2],f(r["idle_p99_ms"]),f(r["loaded_p99_ms"]),f(r["p99_ratio"],"n/a"),100*(r["services"][0]["delivered_fraction"] or 0)," ".join("%s %.1f%%"%(s["name"],100*s["share"]) for s in r["services"])))' "$out" "$target"
}

for run in $(seq "$RUNS"); do
    echo "== MQTT run $run of $RUNS"
    echo " QoS 1 ingest, 100 B, 1 publisher with 100 in flight"
    for target in sluice rumqttd mosquitto; do throughput one-publisher "$target" --publishers 1 --inflight 100; done
    echo " QoS 1 ingest, 100 B, 100 publishers with 100 in flight each"
    for target in sluice rumqttd mosquitto; do throughput many-pipelined "$target" --publishers 100 --inflight 100; done
    echo " QoS 1 ingest, 100 B, 100 publishers with 1 in flight each"
    for target in sluice rumqttd mosquitto; do throughput many-publishers "$target" --publishers 100 --inflight 1; done
    [[ $MQTT_PRIORITY == 0 ]] && continue
    echo " priority: alarms (express) ${ALARM_RATE}/s, telemetry (weight 4) ${DRAIN}/s, logs (weight 1) $((10 * DRAIN))/s, consumer drains ${DRAIN}/s"
    for target in sluice mosquitto sluice-fifo; do priority "$target"; done
done

echo "== MQTT medians over $RUNS runs"
python3 - "$results" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(scenario, target, f):
    # JSON null is NaN (a percentile without samples): left out.
    v = [f(r) for r in rows if r["scenario"] == scenario and r["target"] == target]
    v = [x for x in v if x is not None and x == x]
    return statistics.median(v) if v else float("nan")
for scenario, label in [("one-publisher", "1 publisher x 100 in flight"), ("many-pipelined", "100 publishers x 100 in flight"),
                        ("many-publishers", "100 publishers x 1 in flight")]:
    rate = {t: med(scenario, t, lambda r: r["msgs_per_s"]) for t in ("sluice", "rumqttd", "mosquitto")}
    p99 = {t: med(scenario, t, lambda r: r["ack_latency"]["p99_ms"]) for t in rate}
    print(f"QoS 1, 100 B, {label}: acknowledged msg/s (median)")
    for t in rate:
        print(f"  {t:<10} {rate[t]:>9.0f} msg/s   ack p99 {p99[t]:7.2f} ms")
    print(f"  sluice / rumqttd = {rate['sluice'] / rate['rumqttd']:.2f}x, sluice / mosquitto = {rate['sluice'] / rate['mosquitto']:.2f}x")
    c = [r["counts"] for r in rows if r["scenario"] == scenario and r["target"] == "sluice" and "counts" in r]
    lost = sum(max(0, x["acked"] - min(x["stored"], x["log_records"])) for x in c)
    print(f"  sluice: acknowledged {sum(x['acked'] for x in c)}, stored {sum(x['stored'] for x in c)}, "
          f"in the log {sum(x['log_records'] for x in c)} over {len(c)} runs: " + (f"LOST {lost}" if lost else "0 lost"))
if not any(r["scenario"] == "priority" for r in rows):
    sys.exit(0)
print("priority: alarms publish -> consumer p99 (median of runs; >N: more than 1% not delivered within the N ms grace time)")
names = [s["name"] for s in next(r for r in rows if r["scenario"] == "priority")["services"]]
grace_ms = 1000 * next(r for r in rows if r["scenario"] == "priority")["grace_s"]
def cens(t, key):
    # A p99 beyond the grace time (null) counts as larger than any number.
    v = [r[key] if r[key] is not None else float("inf") for r in rows if r["scenario"] == "priority" and r["target"] == t]
    if not v:
        return "n/a"
    m = statistics.median(v)
    return f">{grace_ms:.0f}" if m == float("inf") else f"{m:.2f}"
for t in ("sluice", "sluice-fifo", "mosquitto"):
    shares = " ".join(f"{n} {100 * med('priority', t, lambda r, i=i: r['services'][i]['share']):.1f}%" for i, n in enumerate(names))
    got = " ".join(f"{n} {100 * med('priority', t, lambda r, i=i: r['services'][i]['delivered_fraction']):.0f}%" for i, n in enumerate(names))
    ratio = cens(t, "p99_ratio")
    print(f"  {t:<11} idle {cens(t, 'idle_p99_ms'):>8} ms  loaded {cens(t, 'loaded_p99_ms'):>8} ms  loaded/idle {'n/a' if ratio.startswith('>') else ratio}")
    print(f"  {'':<11} delivered shares: {shares}; delivered of published: {got}")
EOF
[[ -z $MQTT_RESULTS ]] || { cp "$results" "$MQTT_RESULTS"; cp "$work/sluice.log" "$MQTT_RESULTS.sluice.log"; }
errors=$(grep -c 'ERROR' "$work/sluice.log" || true)
echo "sluice log: $errors ERROR lines"
[[ $errors == 0 ]] || grep -m 5 'ERROR' "$work/sluice.log" || true
