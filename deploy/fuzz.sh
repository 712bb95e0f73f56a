#!/usr/bin/env bash
# Builds the fuzz targets in fuzz/ and runs each for a bounded time
# (README, "Fuzzing"). deploy/test.sh runs it as a short smoke run.
#
#   deploy/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   (default: 25 s, every target)
#   SLUICE_FUZZ_CORPUS=DIR   keep the corpus each run grows in DIR/<target>
#                            (default: a temporary directory, removed after)
#
# Stable Rust only: no cargo-fuzz and no sanitizer. The flags below are the
# coverage instrumentation cargo-fuzz passes with `-s none` (stable codegen
# options); the build is plain cargo, with --target so build scripts and
# proc macros are not instrumented. libfuzzer-sys compiles libFuzzer's C++
# sources, so a C++ compiler is needed (deploy/install-test-peers.sh
# installs g++). The seeds in fuzz/corpus/<target> are read, never written:
# new inputs go to the working corpus. A crash or failed property stops the
# run with a non-zero exit and leaves the input in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-25}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(record_codec config_toml http_bodies round_trip)

if ! command -v c++ >/dev/null 2>&1; then
    echo "fuzz.sh: no C++ compiler (c++) found; libfuzzer-sys needs one: run deploy/install-test-peers.sh" >&2
    exit 1
fi

host=$(rustc -vV | sed -n 's/^host: //p')
flags=(
    -Cpasses=sancov-module
    -Cllvm-args=-sanitizer-coverage-level=4
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
    -Cllvm-args=-sanitizer-coverage-pc-table
    -Cllvm-args=-sanitizer-coverage-trace-compares
    -Cllvm-args=-sanitizer-coverage-stack-depth
    -Cllvm-args=-simplifycfg-branch-fold-threshold=0
    --cfg fuzzing
)
target_dir=${CARGO_TARGET_DIR:-fuzz/target}
start=$SECONDS
# Not --locked: a dependency added to the workspace would otherwise fail
# this build until fuzz/Cargo.lock is updated by hand. Cargo keeps every
# version already in the lock and adds only what is new.
lock_before=$(cksum <fuzz/Cargo.lock)
RUSTFLAGS="${flags[*]} ${RUSTFLAGS:-}" CARGO_TARGET_DIR=$target_dir \
    cargo build --manifest-path fuzz/Cargo.toml --release --target "$host" --bins
if [[ $(cksum <fuzz/Cargo.lock) != "$lock_before" ]]; then
    echo "fuzz.sh: fuzz/Cargo.lock changed (the workspace's dependencies did): commit it" >&2
fi
echo "fuzz.sh: build took $((SECONDS - start)) s" >&2

work=${SLUICE_FUZZ_CORPUS:-}
if [[ -z $work ]]; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
fi
status=0
for t in "${targets[@]}"; do
    mkdir -p "$work/$t" "fuzz/artifacts/$t"
    log="$work/$t.log"
    dict=()
    [[ -f fuzz/dict/$t.dict ]] && dict=(-dict="fuzz/dict/$t.dict")
    # -max_len: the largest seed (the full example configuration) must fit.
    if "$target_dir/$host/release/$t" "$work/$t" "fuzz/corpus/$t" "${dict[@]}" \
        -max_total_time="$secs" -max_len=16384 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        cov=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 | grep -oE 'cov: [0-9]+' || true)
        files=$(find "$work/$t" -type f | wc -l)
        bytes=$(find "$work/$t" -type f -printf '%s\n' | awk '{ n += $1 } END { print n + 0 }')
        echo "fuzz $t: ${runs:-?} inputs in $secs s, $files new corpus files ($bytes bytes), ${cov:-cov: ?} edges"
    else
        status=1
        echo "fuzz $t: FAILED; the input is in fuzz/artifacts/$t/; end of the log:" >&2
        tail -n 60 "$log" >&2
    fi
done
echo "fuzz.sh: build and runs took $((SECONDS - start)) s" >&2
exit "$status"
