#!/usr/bin/env bash
# The test command (README): lints, then every test of the workspace.
# Needs the Rust toolchain (uses cargo-nextest when installed) and installs
# the test peers from Debian's packages (deploy/install-test-peers.sh); ends
# with a short run of the fuzz targets (deploy/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
deploy/install-test-peers.sh
# The Kafka sink tests (uplink/tests/kafka.rs) read these two; without them
# they look in the same default places.
SLUICE_TANSU=${SLUICE_TANSU:-$(deploy/install-tansu.sh)}
SLUICE_PYTHON=${SLUICE_PYTHON:-${SLUICE_CACHE:-$HOME/.cache/sluice}/venv/bin/python}
export SLUICE_TANSU SLUICE_PYTHON
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
else
    cargo test --workspace --locked --no-fail-fast
fi
cargo test --workspace --doc --locked
# A short fuzz smoke run (20 s per target); deploy/fuzz.sh runs them longer.
deploy/fuzz.sh "${SLUICE_FUZZ_SECONDS:-20}"
