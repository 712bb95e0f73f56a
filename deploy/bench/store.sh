# The store part of deploy/bench.sh (`deploy/bench.sh store`), sourced by
# it: uses its $work directory, cleanup, launch, metric helpers and RUNS.
#   store_bench BIN
# 1. Card wear: disk bytes written by the process (/proc/PID/io
#    write_bytes, everything it writes: segments, sled, directories) per
#    stored record byte (sluice_service_bytes_in_total) for MQTT QoS 1
#    100 B payloads at 1k msg/s (10 publishers, `sluice bench mqtt --rate`)
#    with flush_interval 50 ms (default), 250 ms and 1 s, and for 1 KiB
#    records in HTTP batches of 64 (`sluice bench http`, 4 clients).
# 2. Restart: STORE_FILL_GIB (default 1) GiB of 1 KiB records in HTTP
#    batches of 64, kill -9, restart: seconds to /readyz, RSS after the
#    restart, and the data directory's size (du) against the stored record
#    bytes.
# 3. Slow card: `sluice bench isolation` (express sync 50/s vs 32 flood
#    clients of the buffered weight-1 service, batches of 64 x 100 B) with
#    ../shared/tools/sdcard.c LD_PRELOADed (SDCARD_SYNC_MS=3 SDCARD_MBPS=20),
#    weighted and fifo, and with a 4 KiB flood on the real disk.
# Prints medians over RUNS runs.
STORE_DURATION=${STORE_DURATION:-20}
STORE_FILL_GIB=${STORE_FILL_GIB:-1}
SDCARD_SRC=${SDCARD_SRC:-../shared/tools/sdcard.c}

write_bytes() { awk '$1 == "write_bytes:" {print $2}' "/proc/$1/io"; }
status_kib() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }
metric_sum() { curl -s "http://$1/metrics" | awk -v n="$2" '$1 ~ "^"n"({|$)" {s += $2} END {printf "%.0f\n", s}'; }
ready() { until [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$1/readyz") == 200 ]]; do sleep 0.01; done; }

wear_config() { # wear_config FLUSH_INTERVAL -> path
    local f="$work/wear-$1.toml"
    printf '[store]\nflush_interval = "%s"\n[[topic]]\nname = "bench"\npartitions = 4\n' "$1" >"$f"
    echo "$f"
}

wear_run() { # wear_run BIN LOAD(mqtt|http) FLUSH_INTERVAL -> one JSON line
    local bin=$1 load=$2 fi=$3 dir w0 w1 b0 b1
    dir="$work/wear-$RANDOM"
    launch "$(wear_config "$fi")" "$dir"
    ready "$addr"
    w0=$(write_bytes "$pid") b0=$(metric_sum "$addr" sluice_service_bytes_in_total)
    case $load in
    mqtt)
        "$bin" bench mqtt --addr "$mqtt" --publishers 10 --inflight 100 --qos 1 --payload 100 \
            --rate 100 --duration "$STORE_DURATION" --warmup 0 --json >/dev/null 2>&1 ;;
    http)
        "$bin" bench http --addr "$addr" --topic bench --clients 4 --batch 64 --payload 1024 \
            --duration "$STORE_DURATION" >/dev/null 2>&1 ;;
    esac
    sleep 2 # the last flush and checkpoint land
    w1=$(write_bytes "$pid") b1=$(metric_sum "$addr" sluice_service_bytes_in_total)
    kill -TERM "$pid"; wait "$pid" || true
    python3 -c 'import json,sys; w,b=int(sys.argv[3]),int(sys.argv[4]); print(json.dumps({"load":sys.argv[1],"flush":sys.argv[2],"written":w,"record_bytes":b,"per_record_byte":w/b if b else None}))' \
        "$load" "$fi" "$((w1 - w0))" "$((b1 - b0))"
}

fill_http() { # fill_http ADDR BYTES: 1 KiB records in batches of 64
    python3 - "$1" "$2" <<'EOF'
import json, sys, urllib.request, concurrent.futures
addr, target = sys.argv[1], int(sys.argv[2])
value = "v" * 1000
body = json.dumps({"records": [{"key": f"dev-{i}", "value": value} for i in range(64)]}).encode()
per = 64 * 1024
def post(_):
    req = urllib.request.Request(f"http://{addr}/v1/topics/bench/records", data=body,
                                 headers={"content-type": "application/json"})
    while True:
        with urllib.request.urlopen(req) as r:
            if r.status == 200:
                return
with concurrent.futures.ThreadPoolExecutor(8) as ex:
    list(ex.map(post, range(target // per)))
EOF
}

restart_run() { # restart_run BIN -> one JSON line
    local bin=$1 dir t0 t1 rss bytes du
    dir="$work/restart-$RANDOM"
    launch "$(wear_config 50ms)" "$dir"
    ready "$addr"
    fill_http "$addr" $((STORE_FILL_GIB << 30))
    sleep 2
    bytes=$(metric_sum "$addr" sluice_service_bytes_in_total)
    kill -KILL "$pid"; wait "$pid" 2>/dev/null || true
    du=$(du -sb "$dir/log" | cut -f1)
    rm -f "$dir/listen.json"
    t0=$(date +%s.%N)
    launch "$(wear_config 50ms)" "$dir"
    ready "$addr"
    t1=$(date +%s.%N)
    sleep 1
    rss=$(status_kib "$pid" VmRSS)
    kill -TERM "$pid"; wait "$pid" || true
    python3 -c 'import json,sys; t0,t1,rss,b,du=map(float,sys.argv[1:6]); print(json.dumps({"ready_s":t1-t0,"rss_mib":rss/1024,"record_bytes":b,"du_bytes":du,"space_per_record_byte":du/b}))' \
        "$t0" "$t1" "$rss" "$bytes" "$du"
}

isolation_run() { # isolation_run BIN MODE FLOOD_PAYLOAD PRELOAD(0|1)
    local bin=$1 mode=$2 payload=$3 preload=$4
    if ((preload)); then
        LD_PRELOAD=$work/sdcard.so SDCARD_SYNC_MS=3 SDCARD_MBPS=20 start "$mode"
    else
        start "$mode"
    fi
    "$bin" bench isolation --addr "$addr" --express-topic alarms --express-rate 50 \
        --flood-topic logs --flood-clients 32 --flood-batch 64 --payload 100 \
        --flood-payload "$payload" --duration 8
    stop
}

store_bench() { # store_bench BIN
    local bin=$1 results=$work/store.jsonl run fi
    echo "== card wear: bytes written per stored record byte, $STORE_DURATION s per run, $RUNS runs"
    for run in $(seq "$RUNS"); do
        for fi in 50ms 250ms 1s; do wear_run "$bin" mqtt "$fi" | tee -a "$results"; done
        wear_run "$bin" http 50ms | tee -a "$results"
    done
    python3 - "$results" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"load"' in l]
for load, fi in (("mqtt", "50ms"), ("mqtt", "250ms"), ("mqtt", "1s"), ("http", "50ms")):
    v = [r["per_record_byte"] for r in rows if r["load"] == load and r["flush"] == fi and r["per_record_byte"]]
    if v:
        print(f"{load:<5} flush_interval {fi:>6}: {statistics.median(v):.2f} bytes written per record byte (median of {len(v)})")
EOF
    echo "== restart after kill -9 with $STORE_FILL_GIB GiB stored"
    for run in $(seq "$RUNS"); do restart_run "$bin" | tee -a "$work/restart.jsonl"; done
    python3 - "$work/restart.jsonl" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for k in ("ready_s", "rss_mib", "space_per_record_byte"):
    print(f"{k}: median {statistics.median(r[k] for r in rows):.3f}")
EOF
    gcc -O2 -shared -fPIC -o "$work/sdcard.so" "$SDCARD_SRC" -ldl -lpthread
    for mode in weighted fifo; do
        echo "== slow card (sdcard.so, 3 ms per sync, 20 MB/s): isolation, 100 B flood, $mode"
        for run in $(seq "$RUNS"); do isolation_run "$bin" "$mode" 100 1; done
    done
    echo "== real disk: isolation, 4 KiB flood, weighted"
    for run in $(seq "$RUNS"); do isolation_run "$bin" weighted 4096 0; done
}
