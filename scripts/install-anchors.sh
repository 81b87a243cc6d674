#!/usr/bin/env bash
# Installs the anchors `make bench-anchors` measures Flatnet against, when missing, at the
# newest builds a package registry offers: Nebula and wireguard-go from Debian trixie (fetched
# with `apt-get download` inside the trixie tree, scripts/setup-chroot.sh, and extracted under
# $ANCHORS/trixie: Go builds that run on Debian 12 as they are), and boringtun
# (`cargo install boringtun-cli`). Both WireGuard implementations are configured with
# Debian's `wg` through their sockets. Not part of the tests: the benchmark alone needs them.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_root
cd "$FLATNET_ROOT"

ANCHORS="${FLATNET_ANCHORS:-/opt/flatnet-anchors}"
TRIXIE="$ANCHORS/trixie"
BORINGTUN_VERSION=0.7.1
# Where the trixie tree's apt puts the packages, as the host sees it.
DOWNLOADS=/var/cache/flatnet-anchors

# Only the `wg` tool (apt_install takes no recommends): no kernel module is needed.
command -v wg > /dev/null || apt_install wireguard-tools
mountpoint -q "$CHROOT_MOUNTS" || scripts/setup-chroot.sh

# Downloads trixie's package $1 into $DOWNLOADS (the tree's apt lists refreshed if too old).
download() {
    local fetch="cd $DOWNLOADS && apt-get download -q -o APT::Sandbox::User=root $1"
    in_chroot sh -c "$fetch" > /dev/null || { in_chroot apt-get update -q > /dev/null && in_chroot sh -c "$fetch" > /dev/null; }
}

# Extracts trixie's package $1 into $TRIXIE and notes its version.
fetch_from_trixie() {
    local package=$1 deb
    install -d "$CHROOT_DIR$DOWNLOADS" "$TRIXIE"
    rm -f "$CHROOT_DIR$DOWNLOADS/${package}"_*.deb
    download "$package"
    deb=$(ls "$CHROOT_DIR$DOWNLOADS/${package}"_*.deb)
    dpkg-deb -x "$deb" "$TRIXIE"
    dpkg-deb -f "$deb" Version > "$TRIXIE/$package.version"
    rm -f "$deb"
}

for package in nebula wireguard-go; do
    [ -s "$TRIXIE/$package.version" ] || fetch_from_trixie "$package"
done
if ! [ -x "$ANCHORS/bin/boringtun-cli" ]; then
    log "building boringtun-cli $BORINGTUN_VERSION into $ANCHORS (a few minutes)"
    cargo install --locked boringtun-cli --version "$BORINGTUN_VERSION" --root "$ANCHORS"
fi
echo "$BORINGTUN_VERSION" > "$ANCHORS/boringtun.version"
log "anchors ready: nebula $(cat "$TRIXIE/nebula.version"), wireguard-go $(cat "$TRIXIE/wireguard-go.version"), boringtun $BORINGTUN_VERSION"
