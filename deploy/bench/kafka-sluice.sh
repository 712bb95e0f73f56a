# Sourced by the Kafka listener benchmarks: starts sluice ($BIN) with the
# Kafka listener, an express `sync` service `alarms` and a weight-1 buffered
# service `bulk` (each with its topic), plus EXTRA_TOML, in $work/sluice;
# appends its pid to pids and sets sluice_addr (Kafka) and sluice_http.
start_sluice() {
    printf '[kafka]\nlisten = "127.0.0.1:0"\n%b%b' "${EXTRA_TOML:-}" \
        '[[service]]\nname = "alarms"\nexpress = true\ndurability = "sync"\n[[topic]]\nname = "alarms"\nservice = "alarms"\n[[service]]\nname = "bulk"\nweight = 1\n[[topic]]\nname = "bulk"\nservice = "bulk"\n' \
        >"$work/sluice.toml"
    SLUICE_LOG=warn "$BIN" run --config "$work/sluice.toml" --data-dir "$work/sluice" \
        --http-listen 127.0.0.1:0 --mqtt-listen 127.0.0.1:0 2>"$work/sluice.log" &
    pids+=($!)
    until [[ -s $work/sluice/listen.json ]]; do
        kill -0 "${pids[-1]}" 2>/dev/null || { cat "$work/sluice.log" >&2; exit 1; }
        sleep 0.05
    done
    sluice_addr=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["kafka"])' "$work/sluice/listen.json")
    sluice_http=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["http"])' "$work/sluice/listen.json")
}
