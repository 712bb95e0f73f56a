#!/usr/bin/env bash
# Installs what deploy/cross.sh needs, on Debian 12 (bookworm) amd64, with
# apt from the machine's configured Debian archive and nothing else:
#   - rustc-web / cargo-web (bookworm-security, Rust >= 1.88; 1.96 today);
#   - per target, Debian's standard library of exactly the same version as a
#     foreign architecture (dpkg --add-architecture arm64 / armhf, then
#     libstd-rust-web-dev:arm64 / libstd-rust-web-dev:armhf), its cross C
#     compiler, binutils and C library (also used for the C parts of ring,
#     lz4 and zstd);
#   - qemu user-mode emulation, curl and mosquitto_pub for the smoke tests.
# rustup's toolchain is not used: it has only the host target here and
# cannot download others.
#
#   deploy/install-cross-toolchain.sh [aarch64|armv7 ...]   (default: both)
#
# Installs only what the named targets need. Idempotent: does nothing (not
# even apt-get update) when all is in place. When apt cannot serve a
# package (no candidate, or not the version of rustc-web), it stops and
# says what to do; it never downloads packages by URL.
set -euo pipefail
sudo_cmd=()
[[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
export DEBIAN_FRONTEND=noninteractive
apt_get() { "${sudo_cmd[@]}" apt-get -o DPkg::Lock::Timeout=600 -qq "$@"; }
die() { echo "install-cross-toolchain: $*" >&2; exit 1; }

[[ $(dpkg --print-architecture) == amd64 ]] || die "needs an amd64 Debian host, this is $(dpkg --print-architecture)"

# Per target: the Debian architecture of its standard library and the
# packages of its cross tools.
arches=() pkgs=(rustc-web cargo-web qemu-user mosquitto-clients curl ca-certificates)
for arg in "$@"; do
    case $arg in
    aarch64 | aarch64-unknown-linux-gnu)
        arches+=(arm64)
        pkgs+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross binutils-aarch64-linux-gnu) ;;
    armv7 | armv7-unknown-linux-gnueabihf)
        arches+=(armhf)
        pkgs+=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross binutils-arm-linux-gnueabihf) ;;
    *) die "unknown target '$arg' (aarch64 or armv7)" ;;
    esac
done
if ((!$#)); then
    exec "$0" aarch64 armv7
fi
mapfile -t arches < <(printf '%s\n' "${arches[@]}" | sort -u)

installed() { [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null) == ii* ]]; }
version_of() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null; }

# An earlier version of this script unpacked the armhf standard library into
# ~/.cache/sluice and linked it into /usr/lib/rustlib: the link would make
# dpkg put the package's files through it into the cache. Remove it first.
for a in "${arches[@]}"; do
    [[ $a == armhf ]] || continue
    link=/usr/lib/rustlib/armv7-unknown-linux-gnueabihf
    if [[ -L $link ]] && ! installed libstd-rust-web-dev:armhf; then
        echo "removing $link -> $(readlink "$link") (left by an older install-cross-toolchain.sh)" >&2
        "${sudo_cmd[@]}" rm "$link"
    fi
done

# Everything in place, at matching versions?
complete() {
    local p v
    for p in "${pkgs[@]}"; do installed "$p" || return 1; done
    v=$(version_of rustc-web)
    for a in "${arches[@]}"; do
        installed "libstd-rust-web-dev:$a" && [[ $(version_of "libstd-rust-web-dev:$a") == "$v" ]] || return 1
    done
}

if ! complete; then
    foreign=$(dpkg --print-foreign-architectures)
    for a in "${arches[@]}"; do
        if ! grep -qx "$a" <<<"$foreign"; then
            echo "adding the dpkg architecture $a" >&2
            "${sudo_cmd[@]}" dpkg --add-architecture "$a"
        fi
    done
    echo "apt-get update" >&2
    apt_get update || die "apt-get update failed (see above); fix the apt sources or the network and rerun"
    # The standard libraries must be exactly rustc-web's version (they are
    # Multi-Arch: same with the host's libstd-rust-web-dev); check that the
    # archive offers it for every architecture before installing anything,
    # so a lagging mirror gives this message rather than a dependency error.
    want=$(apt-cache policy rustc-web | sed -nE 's/^ *Candidate: //p')
    [[ -n $want && $want != "(none)" ]] ||
        die "apt has no candidate for rustc-web: add bookworm-security (deb http://deb.debian.org/debian-security bookworm-security main) to the apt sources, apt-get update, and rerun"
    minor=$(sed -E 's/^([0-9]+:)?1\.([0-9]+).*/\2/' <<<"$want")
    ((minor >= 88)) ||
        die "apt's rustc-web is $want; the locked dependencies need >= 1.88, which is in bookworm-security: add it to the apt sources, apt-get update, and rerun"
    for a in "${arches[@]}"; do
        # madison lists what the archives offer (apt-cache show exits 0 for
        # a missing version); awk reads to the end (no SIGPIPE under pipefail).
        offered=$(apt-cache madison "libstd-rust-web-dev:$a" | awk -F' *[|] *' '{printf "%s ", $2}')
        if [[ " $offered" != *" $want "* ]]; then
            die "apt cannot serve libstd-rust-web-dev:$a version $want (the version of rustc-web); the archives offer: ${offered:-nothing}
  The $a index of the mirror may lag behind the amd64 one (a security update in progress): wait, then rerun
  (it runs apt-get update); or point apt at a consistent mirror. Nothing is downloaded around apt."
        fi
    done
    install=("${pkgs[@]/#rustc-web/rustc-web=$want}")
    install=("${install[@]/#cargo-web/cargo-web=$want}")
    install+=(libstd-rust-web-dev="$want")
    for a in "${arches[@]}"; do install+=("libstd-rust-web-dev:$a=$want"); done
    echo "installing ${install[*]}" >&2
    apt_get install -y --no-install-recommends "${install[@]}" >/dev/null ||
        die "apt-get install ${install[*]} failed (see above); nothing was installed around apt"
fi

complete || die "packages missing or at different versions after apt-get install: rustc-web $(version_of rustc-web), $(for a in "${arches[@]}"; do printf 'libstd-rust-web-dev:%s %s ' "$a" "$(version_of "libstd-rust-web-dev:$a")"; done)"
for a in "${arches[@]}"; do
    case $a in arm64) t=aarch64-unknown-linux-gnu ;; armhf) t=armv7-unknown-linux-gnueabihf ;; esac
    [[ -n $(compgen -G "/usr/lib/rustlib/$t/lib/libstd-*.rlib") ]] ||
        die "libstd-rust-web-dev:$a is installed but /usr/lib/rustlib/$t/lib has no libstd; reinstall it (apt-get install --reinstall libstd-rust-web-dev:$a)"
done
