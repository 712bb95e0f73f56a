#!/usr/bin/env bash
# Installs the real peers the tests talk to, from Debian's packages
# (systemd-analyze for the unit file check and its exposure score, lintian
# for the package, g++ for the fuzz build, and):
# mosquitto-clients (mosquitto_pub / mosquitto_sub) for the MQTT
# end-to-end test and mosquitto (the broker) for benchmark comparisons.
# Idempotent; does nothing when they are already there.
set -euo pipefail
need=()
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v mosquitto >/dev/null 2>&1 || [[ -x /usr/sbin/mosquitto ]] || need+=(mosquitto)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# g++: libfuzzer-sys compiles libFuzzer's C++ sources for deploy/fuzz.sh.
command -v c++ >/dev/null 2>&1 || need+=(g++)
# kcat (librdkafka 2.0 from Debian): gateway/tests/kafka_listener.rs produces
# and consumes with it against the Kafka listener.
command -v kcat >/dev/null 2>&1 || need+=(kcat)
# lintian: gateway/tests/package.rs checks the .deb with it.
command -v lintian >/dev/null 2>&1 || need+=(lintian)
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

# openssl: the TLS tests (sinks, listeners) make their certificates with it.
if ! command -v openssl >/dev/null 2>&1; then
    echo "installing openssl" >&2
    sudo_cmd=()
    [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo_cmd[@]}" apt-get update -qq
    "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends openssl >/dev/null
fi

# Python confluent-kafka (librdkafka 2.16, bundled in the manylinux wheel)
# in a venv outside the clone: the independent Kafka client the uplink
# tests read back with (deploy/kafka-check.py), so the Kafka sink is not
# checked by the client it is built on. The tests find it through
# SLUICE_PYTHON (deploy/test.sh sets it), else this default path.
CONFLUENT_KAFKA_VERSION=2.16.1
venv="${SLUICE_CACHE:-$HOME/.cache/sluice}/venv"
if ! "$venv/bin/python" -c "import confluent_kafka, sys; sys.exit(confluent_kafka.__version__ != '$CONFLUENT_KAFKA_VERSION')" \
    >/dev/null 2>&1; then
    echo "installing confluent-kafka $CONFLUENT_KAFKA_VERSION into $venv" >&2
    python=$(command -v python3 || true)
    if [[ -z $python ]] || ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
        sudo_cmd=()
        [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
        export DEBIAN_FRONTEND=noninteractive
        "${sudo_cmd[@]}" apt-get update -qq
        "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
        python=$(command -v python3)
    fi
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: \
        "confluent-kafka==$CONFLUENT_KAFKA_VERSION"
fi
# kafka-python (pure Python, its own codec) in the same venv: the Kafka
# listener's tests produce and consume with it besides librdkafka.
KAFKA_PYTHON_VERSION=3.0.12
if ! "$venv/bin/python" -c "import kafka, sys; sys.exit(kafka.__version__ != '$KAFKA_PYTHON_VERSION')" \
    >/dev/null 2>&1; then
    echo "installing kafka-python $KAFKA_PYTHON_VERSION into $venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "kafka-python==$KAFKA_PYTHON_VERSION"
fi

# The status page's browser test (gateway/tests/status_page.rs): Debian's
# chromium, driven headless by playwright-core (npm, no bundled browser)
# from Node.js, kept outside the clone. The test finds them through
# SLUICE_CHROMIUM and SLUICE_NODE_MODULES (deploy/test.sh sets them), else
# these defaults.
PLAYWRIGHT_CORE_VERSION=1.65.1
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if ((${#need[@]})); then
    echo "installing ${need[*]}" >&2
    sudo_cmd=()
    [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo_cmd[@]}" apt-get update -qq
    "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
npm_dir="${SLUICE_CACHE:-$HOME/.cache/sluice}/npm"
installed=$(node -p "require('$npm_dir/node_modules/playwright-core/package.json').version" 2>/dev/null || true)
if [[ $installed != "$PLAYWRIGHT_CORE_VERSION" ]]; then
    echo "installing playwright-core $PLAYWRIGHT_CORE_VERSION into $npm_dir" >&2
    mkdir -p "$npm_dir"
    # playwright-core never downloads a browser (only the playwright
    # package does); the test launches Debian's chromium.
    npm install --prefix "$npm_dir" --no-audit --no-fund --no-save --loglevel=error \
        "playwright-core@$PLAYWRIGHT_CORE_VERSION" >/dev/null
fi
