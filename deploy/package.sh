#!/usr/bin/env bash
# Debian packages of sluice (dpkg-deb only).
#
#   deploy/package.sh                    amd64, arm64 and armhf from release builds:
#                                        amd64 with cargo build --release (CARGO_TARGET_DIR
#                                        or target/), arm64 and armhf with deploy/cross.sh
#                                        (which also smoke-tests them under qemu)
#   deploy/package.sh --arch A --binary PATH [--version V] [--out DIR] [--compress none|gzip|xz]
#                                        one package from a prebuilt binary
#
# Output: DIR/sluice_<version>_<arch>.deb (default DIR: target/debian).
# Contents: /usr/bin/sluice, /lib/systemd/system/sluice.service,
# /etc/sluice/sluice.toml (conffile), /usr/share/doc/sluice/ (README,
# example configs, copyright, changelog), the manual page, lintian overrides
# and the maintainer scripts in deploy/debian/. Depends is computed from the
# binary's ELF symbol versions. The all-three build then runs lintian on each
# package (installed with apt when missing) and fails on any error or
# warning (README, "Building the binaries and packages").
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
die() { echo "package.sh: $*" >&2; exit 1; }

arch= binary= out=$repo/target/debian compress=xz
version=$(sed -nE '/^\[workspace.package\]/,/^\[/ s/^version = "(.*)"/\1/p' Cargo.toml)
while (($#)); do
    case $1 in
    --arch) arch=${2:?--arch needs amd64, arm64 or armhf}; shift 2 ;;
    --binary) binary=${2:?--binary needs a path}; shift 2 ;;
    --version) version=${2:?--version needs a version}; shift 2 ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --compress) compress=${2:?--compress needs none, gzip or xz}; shift 2 ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
    *) die "unknown argument '$1'" ;;
    esac
done
[[ $version =~ ^[0-9][A-Za-z0-9.+~-]*$ ]] || die "'$version' is not a Debian version"
case $compress in none | gzip | xz) ;; *) die "--compress must be none, gzip or xz, not '$compress'" ;; esac
mkdir -p "$out"
out=$(cd "$out" && pwd)

# The binutils prefix and ELF machine per Debian architecture.
tools_prefix() {
    case $1 in
    amd64) echo "" ;;
    arm64) echo aarch64-linux-gnu- ;;
    armhf) echo arm-linux-gnueabihf- ;;
    *) die "unknown architecture '$1' (amd64, arm64 or armhf)" ;;
    esac
}
elf_machine() {
    case $1 in
    amd64) echo "Advanced Micro Devices X86-64" ;;
    arm64) echo AArch64 ;;
    armhf) echo ARM ;;
    esac
}

# Depends from what the binary links: glibc (libc, libm, the loader) at the
# highest GLIBC_x.y symbol version it uses, libgcc_s (unwinding) likewise.
depends_of() {
    local bin=$1 prefix=$2 lib deps=() glibc gcc
    while read -r lib; do
        case $lib in
        libc.so.6 | libm.so.6 | libpthread.so.0 | libdl.so.2 | librt.so.1 | ld-linux*.so.* | ld-linux-*.so.*) ;;
        libgcc_s.so.1) ;;
        *) die "$bin links $lib, which this script does not know the Debian package of" ;;
        esac
    done < <("${prefix}objdump" -p "$bin" | awk '$1 == "NEEDED" {print $2}')
    glibc=$("${prefix}objdump" -T "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
    [[ -n $glibc ]] || die "$bin has no GLIBC symbol versions: not a dynamically linked glibc binary?"
    deps+=("libc6 (>= $glibc)")
    # Not `objdump | grep -q`: grep -q exits at the first match, objdump
    # then dies of SIGPIPE and pipefail makes the test false now and then.
    if [[ $("${prefix}objdump" -p "$bin") =~ NEEDED\ +libgcc_s\.so\.1 ]]; then
        gcc=$("${prefix}objdump" -T "$bin" | grep -o 'GCC_[0-9][0-9.]*' | sed 's/GCC_//' | sort -uV | tail -1)
        # Debian versions libgcc-s1's symbols as x.y.
        deps+=("libgcc-s1 (>= $(echo "${gcc:-3.0}" | cut -d. -f1-2))")
    fi
    local IFS=,
    echo "${deps[*]}" | sed 's/,/, /g'
}

# A Debian changelog (a native package's: one entry for this version),
# dated by the last commit (or SOURCE_DATE_EPOCH) so rebuilds are identical.
changelog() {
    local epoch
    epoch=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}
    cat <<EOF
sluice ($version) unstable; urgency=medium

  * Release $version; see /usr/share/doc/sluice/README.md.

 -- sluice developers <sluice@example.invalid>  $(LC_ALL=C date -u -R -d "@$epoch")
EOF
}

# lintian on a package: any error or warning fails (the lintian overrides
# shipped in the package cover the intended ones; README explains them).
lint() {
    local out
    if ! command -v lintian >/dev/null 2>&1; then
        echo "installing lintian" >&2
        local sudo_cmd=()
        [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
        DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get -o DPkg::Lock::Timeout=600 -qq install -y \
            --no-install-recommends lintian >/dev/null || die "cannot install lintian with apt-get"
    fi
    local status=0
    out=$(lintian --fail-on error,warning "$1" 2>&1) || status=$?
    out=$(sed '/^running with root privileges/d' <<<"$out")
    ((status == 0)) || die "lintian found errors or warnings in $1:
$out"
    echo "lintian $(basename "$1"): ${out:-clean}" >&2
}

build_one() { # build_one ARCH BINARY
    local arch=$1 bin=$2 prefix machine stage deb size
    prefix=$(tools_prefix "$arch")
    [[ -f $bin ]] || die "no binary at $bin"
    machine=$("${prefix}readelf" -h "$bin" | sed -nE 's/^ *Machine: *//p')
    [[ $machine == "$(elf_machine "$arch")" ]] || die "$bin is for '$machine', not $arch"
    stage=$(mktemp -d)
    chmod 755 "$stage"
    umask 022
    install -d -m 755 "$stage/DEBIAN" "$stage/usr/bin" "$stage/lib/systemd/system" "$stage/etc/sluice" \
        "$stage/usr/share/doc/sluice/examples" "$stage/usr/share/man/man1" "$stage/usr/share/lintian/overrides"
    # Stripped (the release profile strips already; a debug binary given
    # with --binary would otherwise carry hundreds of MB of debug info),
    # and without the .comment and .note sections, as dh_strip does.
    "${prefix}strip" --remove-section=.comment --remove-section=.note -o "$stage/usr/bin/sluice" "$bin"
    chmod 755 "$stage/usr/bin/sluice"
    install -m 644 deploy/systemd/sluice.service "$stage/lib/systemd/system/sluice.service"
    # Not readable by other users: the unit passes it (and the secrets in
    # credentials/) to the service as systemd credentials.
    install -m 640 deploy/debian/sluice.toml "$stage/etc/sluice/sluice.toml"
    install -d -m 700 "$stage/etc/sluice/credentials"
    install -m 644 README.md "$stage/usr/share/doc/sluice/README.md"
    install -m 644 deploy/debian/copyright "$stage/usr/share/doc/sluice/copyright"
    changelog >"$stage/usr/share/doc/sluice/changelog"
    gzip -9n "$stage/usr/share/doc/sluice/changelog"
    gzip -9n <deploy/debian/sluice.1 >"$stage/usr/share/man/man1/sluice.1.gz"
    install -m 644 deploy/debian/lintian-overrides "$stage/usr/share/lintian/overrides/sluice"
    chmod 644 "$stage/usr/share/doc/sluice/changelog.gz" "$stage/usr/share/man/man1/sluice.1.gz"
    install -m 644 config/examples/sluice.toml config/examples/minimal.toml deploy/small-box.toml \
        "$stage/usr/share/doc/sluice/examples/"
    install -m 755 deploy/debian/postinst deploy/debian/prerm deploy/debian/postrm "$stage/DEBIAN/"
    echo /etc/sluice/sluice.toml >"$stage/DEBIAN/conffiles"
    (cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z |
        xargs -0 md5sum) >"$stage/DEBIAN/md5sums"
    chmod 644 "$stage/DEBIAN/conffiles" "$stage/DEBIAN/md5sums"
    size=$(du -sk --apparent-size --exclude=DEBIAN "$stage" | cut -f1)
    cat >"$stage/DEBIAN/control" <<EOF
Package: sluice
Version: $version
Architecture: $arch
Maintainer: sluice developers <sluice@example.invalid>
Installed-Size: $size
Depends: $(depends_of "$stage/usr/bin/sluice" "$prefix")
Section: net
Priority: optional
Homepage: https://example.invalid/sluice
Description: edge-node priority message gateway for IoT
 sluice runs on a small ARM box or a Raspberry Pi next to the sensors.
 Sensors publish over MQTT (embedded broker) or HTTP; every event goes into
 a durable, partitioned, append-only log on local disk with Kafka semantics,
 served to local edge services and forwarded to a central Kafka, MQTT or
 HTTP endpoint. Per-service weights and express alarms decide the order of
 persisting, delivery, forwarding and eviction.
 .
 The package installs a hardened systemd unit but neither enables nor
 starts it: systemctl enable --now sluice
EOF
    chmod 644 "$stage/DEBIAN/control"
    deb="$out/sluice_${version}_${arch}.deb"
    dpkg-deb --root-owner-group -Z"$compress" --build "$stage" "$deb" >/dev/null
    rm -rf "$stage"
    echo "$deb"
}

if [[ -n $arch || -n $binary ]]; then
    [[ -n $arch && -n $binary ]] || die "--arch and --binary go together"
    build_one "$arch" "$binary"
    exit 0
fi

# All three from release builds.
cargo build --release --locked -p sluice-gateway --bin sluice
amd64_bin=${CARGO_TARGET_DIR:-$repo/target}/release/sluice
deploy/cross.sh
cross_dir=${SLUICE_CROSS_TARGET_DIR:-$repo/target/cross}
for deb in "$(build_one amd64 "$amd64_bin")" \
    "$(build_one arm64 "$cross_dir/aarch64-unknown-linux-gnu/release/sluice")" \
    "$(build_one armhf "$cross_dir/armv7-unknown-linux-gnueabihf/release/sluice")"; do
    lint "$deb"
    echo "$deb"
done
