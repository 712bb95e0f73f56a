#!/usr/bin/env bash
# The test command (README): lints, then every test of the workspace.
# Needs the Rust toolchain (uses cargo-nextest when installed) and installs
# the test peers from Debian's packages (deploy/install-test-peers.sh); ends
# with the aarch64 cross build smoke-tested under qemu (deploy/cross.sh) and
# a short run of the fuzz targets (deploy/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
deploy/install-test-peers.sh
# The Kafka sink tests (uplink/tests/kafka.rs) read these two; without them
# they look in the same default places.
SLUICE_TANSU=${SLUICE_TANSU:-$(deploy/install-tansu.sh)}
SLUICE_PYTHON=${SLUICE_PYTHON:-${SLUICE_CACHE:-$HOME/.cache/sluice}/venv/bin/python}
export SLUICE_TANSU SLUICE_PYTHON
# The status page's browser test (gateway/tests/status_page.rs) reads these:
# Debian's chromium and playwright-core from npm (install-test-peers.sh).
SLUICE_CHROMIUM=${SLUICE_CHROMIUM:-/usr/lib/chromium/chromium}
SLUICE_NODE_MODULES=${SLUICE_NODE_MODULES:-${SLUICE_CACHE:-$HOME/.cache/sluice}/npm/node_modules}
export SLUICE_CHROMIUM SLUICE_NODE_MODULES
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
else
    cargo test --workspace --locked --no-fail-fast
fi
cargo test --workspace --doc --locked
# The Raspberry Pi cross build and its qemu smoke test (README, "Building
# the binaries and packages"): the aarch64 binary with the ci-cross profile
# (the release profile with thin LTO), its target directory kept in the
# cache between runs. SLUICE_CI_CROSS="aarch64 armv7" adds armv7, "none"
# skips it.
if [[ ${SLUICE_CI_CROSS:-aarch64} != none ]]; then
    # shellcheck disable=SC2086
    SLUICE_CROSS_TARGET_DIR=${SLUICE_CROSS_TARGET_DIR:-${SLUICE_CACHE:-$HOME/.cache/sluice}/cross-target} \
        deploy/cross.sh --profile ci-cross ${SLUICE_CI_CROSS:-aarch64}
fi
# A short fuzz smoke run (20 s per target); deploy/fuzz.sh runs them longer.
# Its build is kept in the cache between runs, like the cross build's.
CARGO_TARGET_DIR=${SLUICE_FUZZ_TARGET_DIR:-${SLUICE_CACHE:-$HOME/.cache/sluice}/fuzz-target} \
    deploy/fuzz.sh "${SLUICE_FUZZ_SECONDS:-20}"
