#!/usr/bin/env bash
# Cross builds for the Raspberry Pi, then proves each binary under qemu
# user-mode emulation against a smoke test on 127.0.0.1.
#
#   deploy/cross.sh [--no-smoke] [--profile P] [--slim] [aarch64|armv7 ...]   (default: both)
#
# aarch64 = aarch64-unknown-linux-gnu (64-bit Raspberry Pi OS, Pi 3/4/5/Zero 2),
# armv7   = armv7-unknown-linux-gnueabihf (32-bit Raspberry Pi OS, Pi 2 and later).
# The binaries link dynamically against glibc and need >= 2.34 (Raspberry Pi
# OS bookworm has 2.36); the script prints what each one needs.
#
# Builds with Debian's rustc-web 1.96 and its target standard libraries
# (deploy/install-cross-toolchain.sh installs them with apt, only for the
# targets asked for), the release profile (or --profile P, e.g. ci-cross:
# thin LTO, for the CI smoke build) and the Cargo.lock as is; --slim builds
# without the optional features (--no-default-features). Output:
#   $SLUICE_CROSS_TARGET_DIR/<triple>/<profile>/sluice
#   SLUICE_CROSS_TARGET_DIR   cargo target dir (default target/cross in the repo)
# Smoke test per binary: start `sluice run` under qemu on 127.0.0.1 port 0,
# /readyz, HTTP produce and fetch, an MQTT QoS 1 publish (mosquitto_pub)
# read back over HTTP, SIGTERM and a clean exit.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
smoke=1 profile=release features=()
targets=() short=()
while (($#)); do
    case $1 in
    --no-smoke) smoke=0 ;;
    --profile) profile=${2:?--profile needs a cargo profile name}; shift ;;
    --slim) features=(--no-default-features) ;;
    aarch64) targets+=(aarch64-unknown-linux-gnu) short+=(aarch64) ;;
    armv7) targets+=(armv7-unknown-linux-gnueabihf) short+=(armv7) ;;
    -h | --help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "cross.sh: unknown argument '$1' (expected --no-smoke, --profile P, --slim, aarch64 or armv7)" >&2; exit 2 ;;
    esac
    shift
done
((${#targets[@]})) || targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf) short=(aarch64 armv7)
target_dir=${SLUICE_CROSS_TARGET_DIR:-$repo/target/cross}

deploy/install-cross-toolchain.sh "${short[@]}"

# Per target: the GNU triple of its cross tools and its qemu.
gnu_triple() {
    case $1 in
    aarch64-unknown-linux-gnu) echo aarch64-linux-gnu ;;
    armv7-unknown-linux-gnueabihf) echo arm-linux-gnueabihf ;;
    esac
}
qemu_of() {
    case $1 in
    aarch64-unknown-linux-gnu) echo qemu-aarch64 ;;
    armv7-unknown-linux-gnueabihf) echo qemu-arm ;;
    esac
}
# qemu must load the cross glibc from /usr/<gnu> and nothing else: with the
# multiarch libc on the search path the emulated loader hangs at the first
# thread spawn.
qemu_cmd() {
    local gnu
    gnu=$(gnu_triple "$1")
    echo "$(qemu_of "$1") -L /usr/$gnu -E LD_LIBRARY_PATH=/usr/$gnu/lib"
}

# Debian's toolchain, not rustup's proxies (their 1.95 cannot use the 1.96
# standard libraries).
export PATH="/usr/bin:$PATH" RUSTC=/usr/bin/rustc CARGO=/usr/bin/cargo RUSTDOC=/usr/bin/rustdoc
unset RUSTUP_TOOLCHAIN RUSTC_WRAPPER RUSTFLAGS CARGO_BUILD_RUSTFLAGS CARGO_BUILD_TARGET
build_args=()
for t in "${targets[@]}"; do
    gnu=$(gnu_triple "$t")
    var=${t//-/_}
    VAR=${var^^}
    # The linker, and the C compiler and archiver for ring, lz4-sys and zstd-sys.
    export "CARGO_TARGET_${VAR}_LINKER=$gnu-gcc"
    export "CARGO_TARGET_${VAR}_RUNNER=$(qemu_cmd "$t")"
    export "CC_${var}=$gnu-gcc" "AR_${var}=$gnu-ar"
    build_args+=(--target "$t")
done
start=$(date +%s)
echo "building ${targets[*]} ($profile profile${features:+, slim}) into $target_dir with $(/usr/bin/cargo --version)" >&2
/usr/bin/cargo build --profile "$profile" --locked -p sluice-gateway --bin sluice "${features[@]}" "${build_args[@]}" --target-dir "$target_dir"
echo "build took $(($(date +%s) - start)) s" >&2

# The highest GLIBC_x.y symbol version a binary needs.
glibc_needed() {
    "$(gnu_triple "$1")-objdump" -T "$2" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1
}

smoke_test() {
    local t=$1 bin=$2 dir pid http mqtt body code status=0
    dir=$(mktemp -d)
    cat >"$dir/sluice.toml" <<EOF
[node]
data_dir = "$dir/data"
[http]
listen = "127.0.0.1:0"
[mqtt]
listen = "127.0.0.1:0"
EOF
    # shellcheck disable=SC2046
    SLUICE_LOG=warn $(qemu_cmd "$t") "$bin" run --config "$dir/sluice.toml" 2>"$dir/stderr" &
    pid=$!
    fail() {
        echo "smoke test of $t FAILED: $*" >&2
        sed 's/^/  sluice: /' "$dir/stderr" >&2
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        rm -rf "$dir"
        return 1
    }
    # Emulation is slow: generous deadlines, polling for the condition.
    local deadline=$((SECONDS + 180))
    until [[ -s $dir/data/listen.json ]]; do
        kill -0 "$pid" 2>/dev/null || { fail "sluice exited before writing listen.json"; return 1; }
        ((SECONDS < deadline)) || { fail "no listen.json after 180 s"; return 1; }
        sleep 0.2
    done
    http=$(sed -nE 's/.*"http": *"([^"]+)".*/\1/p' "$dir/data/listen.json")
    mqtt=$(sed -nE 's/.*"mqtt": *"([^"]+)".*/\1/p' "$dir/data/listen.json")
    [[ $http == 127.0.0.1:* && $mqtt == 127.0.0.1:* ]] || { fail "unexpected listen.json: $(cat "$dir/data/listen.json")"; return 1; }
    until [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$http/readyz") == 200 ]]; do
        ((SECONDS < deadline)) || { fail "/readyz not 200 after 180 s"; return 1; }
        sleep 0.2
    done
    body=$(curl -sS -XPOST "http://$http/v1/topics/smoke/records" -H 'content-type: application/json' \
        -d '{"records":[{"key":"dev-1","value":{"t":21.5}}]}')
    [[ $body == '{"offsets":[{"offset":0,"partition":0}]}' ]] || { fail "produce answered $body"; return 1; }
    # Reads see durable records only: a buffered service's record becomes
    # readable at the next flush (flush_interval), so poll with a long-poll.
    until body=$(curl -sS "http://$http/v1/topics/smoke/partitions/0/records?offset=0&wait_ms=1000") &&
        [[ $body == *'"key":"dev-1"'*'"value":{"t":21.5}'* ]]; do
        ((SECONDS < deadline)) || { fail "fetch answered $body"; return 1; }
        sleep 0.2
    done
    mosquitto_pub -h 127.0.0.1 -p "${mqtt##*:}" -q 1 -t plant/dev-7/temp -m '{"t":20.1}' ||
        { fail "mosquitto_pub failed"; return 1; }
    until body=$(curl -sS "http://$http/v1/topics/plant/partitions/0/records?offset=0&wait_ms=1000") &&
        [[ $body == *'"key":"dev-7/temp"'*'"value":{"t":20.1}'* ]]; do
        ((SECONDS < deadline)) || { fail "the MQTT publish was not readable over HTTP: $body"; return 1; }
        sleep 0.2
    done
    kill -TERM "$pid"
    wait "$pid" || status=$?
    ((status == 0)) || { fail "exit status $status after SIGTERM"; return 1; }
    rm -rf "$dir"
}

for t in "${targets[@]}"; do
    bin="$target_dir/$t/$profile/sluice"
    machine=$("$(gnu_triple "$t")-readelf" -h "$bin" | sed -nE 's/^ *Machine: *//p')
    echo "$t: $bin, $(stat -c %s "$bin") bytes, $machine, needs $(glibc_needed "$t" "$bin")" >&2
    if ((smoke)); then
        s=$(date +%s)
        smoke_test "$t" "$bin"
        echo "$t: smoke test under $(qemu_of "$t") passed ($(($(date +%s) - s)) s): /readyz, HTTP produce + fetch, MQTT publish read over HTTP, clean SIGTERM exit" >&2
    fi
done
