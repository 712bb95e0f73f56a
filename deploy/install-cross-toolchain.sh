#!/usr/bin/env bash
# Installs what deploy/cross.sh needs, on Debian 12 (bookworm) amd64, from
# Debian's archive only:
#   - rustc-web / cargo-web (bookworm-security, Rust 1.96) with Debian's
#     standard library for the host and for arm64 (libstd-rust-web-dev:arm64);
#   - the armhf standard library (armv7-unknown-linux-gnueabihf) of exactly
#     the same rustc-web version, from the armhf .deb (see below);
#   - the cross C compilers and C libraries (ring, lz4 and zstd have C parts)
#     and qemu user-mode emulation for the smoke tests, curl and
#     mosquitto_pub to drive them.
# rustup's toolchain is not used: it has only the host target here and
# cannot download others. Idempotent; does nothing when all is in place.
#   SLUICE_CACHE            cache root (default ~/.cache/sluice); the armhf std lives there
#   SLUICE_DEBIAN_SECURITY  Debian security archive (default http://deb.debian.org/debian-security)
set -euo pipefail
cache=${SLUICE_CACHE:-$HOME/.cache/sluice}
security=${SLUICE_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}
sudo_cmd=()
[[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
export DEBIAN_FRONTEND=noninteractive
apt_get() { "${sudo_cmd[@]}" apt-get -o DPkg::Lock::Timeout=600 -qq "$@"; }
die() { echo "install-cross-toolchain: $*" >&2; exit 1; }

[[ $(dpkg --print-architecture) == amd64 ]] || die "needs an amd64 Debian host, this is $(dpkg --print-architecture)"

# arm64 comes through apt as a foreign architecture. armhf deliberately
# does not: on mirrors where the armhf security index lags behind the
# others, apt then refuses the whole install.
pkgs=(rustc-web cargo-web libstd-rust-web-dev:arm64
    gcc-aarch64-linux-gnu libc6-dev-arm64-cross binutils-aarch64-linux-gnu
    gcc-arm-linux-gnueabihf libc6-dev-armhf-cross binutils-arm-linux-gnueabihf
    qemu-user mosquitto-clients curl ca-certificates xz-utils gpgv debian-archive-keyring)
missing=()
for p in "${pkgs[@]}"; do
    [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null) == ii* ]] || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "installing ${missing[*]}" >&2
    if ! grep -qx arm64 <<<"$(dpkg --print-foreign-architectures)"; then
        "${sudo_cmd[@]}" dpkg --add-architecture arm64
    fi
    apt_get update
    apt_get install -y --no-install-recommends "${pkgs[@]}" >/dev/null
fi

version=$(dpkg-query -W -f='${Version}' rustc-web)
arm64_version=$(dpkg-query -W -f='${Version}' libstd-rust-web-dev:arm64)
[[ $arm64_version == "$version" ]] ||
    die "libstd-rust-web-dev:arm64 is $arm64_version but rustc-web is $version; run apt-get update && apt-get install rustc-web libstd-rust-web-dev:arm64"
# rustc-web 1.85 (bookworm main) is too old for the locked dependencies;
# 1.96 comes from bookworm-security.
minor=$(/usr/bin/rustc --version | sed -E 's/^rustc 1\.([0-9]+).*/\1/')
((minor >= 88)) || die "/usr/bin/rustc is $(/usr/bin/rustc --version); need >= 1.88 from bookworm-security (is it in /etc/apt/sources.list.d?)"

# The armhf standard library: the armhf .deb of exactly rustc-web's version,
# unpacked into the cache and linked into /usr/lib/rustlib/.
triple=armv7-unknown-linux-gnueabihf
upstream=${version#*:}
root="$cache/libstd-rust-web-dev-armhf/$upstream"
link=/usr/lib/rustlib/$triple
if [[ ! -f $root/usr/lib/rustlib/$triple/lib/libstd.rlib && -z $(compgen -G "$root/usr/lib/rustlib/$triple/lib/libstd-*.rlib") ]]; then
    deb="libstd-rust-web-dev_${upstream}_armhf.deb"
    echo "fetching $deb" >&2
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    # Its SHA-256 from the signed index when the mirror's index is
    # consistent (InRelease signature -> Packages.xz hash -> .deb hash).
    # Mirrors have been seen serving an armhf Packages.xz that does not match
    # their InRelease; then only a hash recorded here for this exact version
    # is accepted.
    expected=
    curl -fsSL -o "$work/InRelease" "$security/dists/bookworm-security/InRelease"
    gpgv --quiet --keyring /usr/share/keyrings/debian-archive-keyring.gpg \
        --output "$work/Release" "$work/InRelease" 2>/dev/null || die "bad signature on $security InRelease"
    index_hash=$(awk '$3 == "main/binary-armhf/Packages.xz" {h = $1} END {print h}' "$work/Release")
    curl -fsSL -o "$work/Packages.xz" "$security/dists/bookworm-security/main/binary-armhf/Packages.xz"
    if [[ -n $index_hash && $(sha256sum "$work/Packages.xz" | cut -d' ' -f1) == "$index_hash" ]]; then
        expected=$(xz -dc "$work/Packages.xz" | awk -v v="$version" '
            /^Package: / {p = ($2 == "libstd-rust-web-dev")}
            p && /^Version: / {ok = ($2 == v)}
            p && ok && /^SHA256: / {print $2; exit}')
    else
        echo "the armhf index of $security does not match its signed InRelease; using the recorded hash" >&2
    fi
    if [[ -z $expected ]]; then
        case $upstream in
        # Recorded 2026-11-26 from deb.debian.org's bookworm-security armhf
        # Packages.xz, which did not match the signed InRelease that day:
        # verify it against the signed index once the mirror is consistent.
        1.96.0+dfsg1-1~deb12u2) expected=b9f9dd1d03a903680f918cb2bba00a2a3d76558545d5e6a8061072ab461bb989 ;;
        *) die "no verifiable SHA-256 for $deb: the mirror's armhf index is inconsistent and this version has no recorded hash; add it to $0 once the index verifies" ;;
        esac
    fi
    curl -fsSL -o "$work/$deb" "$security/pool/updates/main/r/rustc-web/$deb" ||
        die "cannot download $security/pool/updates/main/r/rustc-web/$deb"
    echo "$expected  $work/$deb" | sha256sum --quiet -c - || die "$deb does not have the expected SHA-256 $expected"
    rm -rf "$root.tmp" && mkdir -p "$root.tmp"
    dpkg-deb -x "$work/$deb" "$root.tmp"
    [[ -d $root.tmp/usr/lib/rustlib/$triple/lib ]] || die "$deb has no usr/lib/rustlib/$triple/lib"
    rm -rf "$root" && mv "$root.tmp" "$root"
fi
if [[ $(readlink "$link" 2>/dev/null) != "$root/usr/lib/rustlib/$triple" ]]; then
    [[ ! -e $link || -L $link ]] || die "$link exists and is not a link; remove it"
    "${sudo_cmd[@]}" ln -sfn "$root/usr/lib/rustlib/$triple" "$link"
fi
