#!/usr/bin/env bash
# Installs the real peers the tests talk to, from Debian's packages:
# mosquitto-clients (mosquitto_pub / mosquitto_sub) for the MQTT
# end-to-end test and mosquitto (the broker) for benchmark comparisons.
# Idempotent; does nothing when they are already there.
set -euo pipefail
need=()
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v mosquitto >/dev/null 2>&1 || [[ -x /usr/sbin/mosquitto ]] || need+=(mosquitto)
if ((${#need[@]})); then
    echo "installing ${need[*]}" >&2
    sudo_cmd=()
    [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo_cmd[@]}" apt-get update -qq
    "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The Debian package starts a mosquitto service where systemd runs; the
# tests and benchmarks start their own instances on other ports.
