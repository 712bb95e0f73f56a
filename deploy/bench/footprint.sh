# The footprint part of deploy/bench.sh (`deploy/bench.sh footprint`),
# sourced by it: uses its $work directory, cleanup, launch and RUNS.
#   footprint BIN
# For each profile (the Debian package's default config and
# deploy/small-box.toml) and load (idle, 1k and 10k MQTT QoS 1 msg/s of
# 100 B from 10 publishers via `sluice bench mqtt --rate`), RUNS runs of
# FOOTPRINT_DURATION seconds (default 20) on a fresh data directory,
# sampling once a second: VmRSS and Threads from /proc/PID/status, and
# write_bytes of /proc/PID/io against what sluice ingested (its metrics).
# Prints the medians over runs; raw results as JSON lines in
# FOOTPRINT_RESULTS when set.
FOOTPRINT_DURATION=${FOOTPRINT_DURATION:-20}
PUBLISHERS=10
PAYLOAD=100

metric() { # metric ADDR NAME: sum of a metric over its labels
    curl -s "http://$1/metrics" | awk -v n="$2" '$1 ~ "^"n"({|$)" {s += $2} END {printf "%.0f\n", s}'
}
status_field() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }
write_bytes() { awk '$1 == "write_bytes:" {print $2}' "/proc/$1/io"; }

one_run() { # one_run BIN RESULTS PROFILE CONFIG RATE (msg/s in total; 0 = idle)
    local bin=$1 results=$2 profile=$3 config=$4 rate=$5 dir http load= rss=() threads=() w0 w1 r0 r1 b0 b1
    dir="$work/data-$RANDOM"
    launch "$config" "$dir"
    http=$addr
    until [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$http/readyz") == 200 ]]; do sleep 0.1; done
    w0=$(write_bytes "$pid") r0=$(metric "$http" sluice_service_records_in_total) b0=$(metric "$http" sluice_service_bytes_in_total)
    if ((rate > 0)); then
        "$bin" bench mqtt --addr "$mqtt" --publishers "$PUBLISHERS" --inflight 100 --qos 1 --payload "$PAYLOAD" \
            --rate $((rate / PUBLISHERS)) --duration "$FOOTPRINT_DURATION" --warmup 0 --json >"$work/load.json" 2>/dev/null &
        load=$!
    fi
    for _ in $(seq "$FOOTPRINT_DURATION"); do
        sleep 1
        rss+=("$(status_field "$pid" VmRSS)")
        threads+=("$(status_field "$pid" Threads)")
    done
    [[ -z $load ]] || wait "$load"
    # Let the last flush (flush_interval) land before reading the counters.
    sleep 1
    w1=$(write_bytes "$pid") r1=$(metric "$http" sluice_service_records_in_total) b1=$(metric "$http" sluice_service_bytes_in_total)
    kill -TERM "$pid"
    wait "$pid" || true
    python3 - "$profile" "$rate" "$((w1 - w0))" "$((r1 - r0))" "$((b1 - b0))" "$PAYLOAD" "${rss[*]}" "${threads[*]}" <<'EOF' | tee -a "$results"
import json, statistics, sys
profile, rate, written, records, record_bytes, payload = sys.argv[1], *map(int, sys.argv[2:7])
rss = [int(x) for x in sys.argv[7].split()]
threads = [int(x) for x in sys.argv[8].split()]
print(json.dumps({
    "profile": profile, "rate": rate, "records": records,
    "rss_median_kib": statistics.median(rss), "rss_max_kib": max(rss), "threads_max": max(threads),
    "disk_bytes_written": written,
    "written_per_payload_byte": written / (records * payload) if records else None,
    "written_per_record_byte": written / record_bytes if record_bytes else None,
}))
EOF
}

footprint() { # footprint BIN
    local bin=$1 results=$work/footprint.jsonl run profile config rate
    echo "== footprint of $bin ($(stat -c %s "$bin") bytes), $FOOTPRINT_DURATION s per run, $RUNS runs"
    for run in $(seq "$RUNS"); do
        for profile in default small-box; do
            case $profile in
            default) config=deploy/debian/sluice.toml ;;
            small-box) config=deploy/small-box.toml ;;
            esac
            for rate in 0 1000 10000; do one_run "$bin" "$results" "$profile" "$config" "$rate"; done
        done
    done
    echo "== footprint medians over $RUNS runs"
    python3 - "$results" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(rs, k):
    v = [r[k] for r in rs if r[k] is not None]
    return statistics.median(v) if v else float("nan")
print(f"{'profile':<10} {'load msg/s':>10} {'records/run':>11} {'RSS median':>10} {'RSS max':>8} {'threads':>7} {'disk/payload':>12} {'disk/record':>11}")
for profile in ("default", "small-box"):
    for rate in (0, 1000, 10000):
        rs = [r for r in rows if r["profile"] == profile and r["rate"] == rate]
        print(f"{profile:<10} {rate:>10} {med(rs, 'records'):>11.0f} {med(rs, 'rss_median_kib') / 1024:>8.1f}MB"
              f" {med(rs, 'rss_max_kib') / 1024:>6.1f}MB {med(rs, 'threads_max'):>7.0f}"
              f" {med(rs, 'written_per_payload_byte'):>12.2f} {med(rs, 'written_per_record_byte'):>11.2f}")
EOF
    [[ -z ${FOOTPRINT_RESULTS:-} ]] || cp "$results" "$FOOTPRINT_RESULTS"
}
