#!/usr/bin/env bash
# Installs tansu, an Apache Kafka-compatible broker in Rust, for the uplink
# tests, into a cache directory outside the clone (about 11 minutes to build
# on 2 cores the first time; later runs reuse it). Prints the binary's path.
#   SLUICE_CACHE   cache root (default ~/.cache/sluice)
set -euo pipefail
TANSU_VERSION=0.6.0
cache=${SLUICE_CACHE:-$HOME/.cache/sluice}
root="$cache/tansu-$TANSU_VERSION"
bin="$root/bin/tansu"
if [[ ! -x $bin ]]; then
    echo "building tansu $TANSU_VERSION into $root (first run only)" >&2
    mkdir -p "$cache"
    # Its own target dir, so the project's target/ stays untouched.
    CARGO_TARGET_DIR="$cache/tansu-build" nice -n 10 cargo install tansu \
        --version "$TANSU_VERSION" --features dynostore,libsql --locked --root "$root.tmp" >&2
    rm -rf "$root" && mv "$root.tmp" "$root"
    rm -rf "$cache/tansu-build"
fi
echo "$bin"
