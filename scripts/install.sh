#!/usr/bin/env bash
# Builds the Debian package (`make deb`) and installs it, as an operator would:
#   host:   dpkg -i: flatnetd in /usr/bin, flatnet-cni in /usr/lib/cni (Podman 4.3, CNI backend)
#   chroot: dpkg -i in the trixie chroot: the netavark plugin in /usr/libexec/netavark (Podman 5)
# Copies an earlier `make install` put in /usr/local are removed first: Podman would find those
# before the package's. A running flatnetd is restarted on the new binary; it re-attaches its
# containers itself. The example network goes to /etc/cni/net.d only if there is none.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_root
cd "$FLATNET_ROOT"

log "make deb"
make -s deb >/dev/null
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
deb="$FLATNET_ROOT/target/debian/flatnet_${version}-1_$(dpkg --print-architecture).deb"
[ -f "$deb" ] || die "make deb did not produce $deb"

# Was a daemon serving? Then stop it now and start it again on the new binary.
running() { "$@" flatnetd --state-dir /run/flatnet status --json >/dev/null 2>&1; }
restart_host=no restart_chroot=no
if running env; then restart_host=yes; env flatnetd --state-dir /run/flatnet stop; fi
if [ -d "$CHROOT_DIR/usr/bin" ] && running in_chroot; then
    restart_chroot=yes
    in_chroot flatnetd --state-dir /run/flatnet stop
fi

make -s uninstall PREFIX=/usr/local >/dev/null
log "dpkg -i $(basename "$deb")"
dpkg -i "$deb" >/dev/null
if [ -d "$CHROOT_DIR/usr/bin" ]; then
    make -s uninstall PREFIX=/usr/local DESTDIR="$CHROOT_DIR" >/dev/null
    cp "$deb" "$CHROOT_DIR/tmp/flatnet.deb"
    in_chroot dpkg -i /tmp/flatnet.deb >/dev/null
    rm -f "$CHROOT_DIR/tmp/flatnet.deb"
fi
[ -e /etc/cni/net.d/flatnet.conflist ] ||
    install -D -m 0644 /usr/share/doc/flatnet/examples/flatnet.conflist /etc/cni/net.d/flatnet.conflist

[ "$restart_host" = no ] || flatnetd --state-dir /run/flatnet start
[ "$restart_chroot" = no ] || in_chroot flatnetd --state-dir /run/flatnet start
log "installed flatnetd, flatnet-cni and flatnet (package $(basename "$deb"), $(du -k "$deb" | cut -f1) KiB)"
