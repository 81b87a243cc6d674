#!/usr/bin/env bash
# Builds Flatnet in release mode and installs it:
#   host:   /usr/local/bin/flatnetd, /usr/local/lib/cni/flatnet-cni, /etc/cni/net.d/flatnet.conflist
#           (Podman 4.3, CNI backend)
#   chroot: /usr/local/bin/flatnetd, /usr/local/libexec/netavark/flatnet (Podman 5 + netavark)
# A running flatnetd is restarted on the new binary; it re-attaches its containers itself.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_root
cd "$FLATNET_ROOT"

log "cargo build --release"
cargo build --release --workspace --quiet
install -D -m 0755 target/release/flatnetd /usr/local/bin/flatnetd
install -D -m 0755 target/release/flatnet-cni /usr/local/lib/cni/flatnet-cni
install -D -m 0755 target/release/flatnet /usr/local/libexec/netavark/flatnet
install -D -m 0644 examples/cni/flatnet.conflist /etc/cni/net.d/flatnet.conflist
if [ -d "$CHROOT_DIR/usr/bin" ]; then
    install -D -m 0755 target/release/flatnet "$CHROOT_DIR/usr/local/libexec/netavark/flatnet"
    install -D -m 0755 target/release/flatnetd "$CHROOT_DIR/usr/local/bin/flatnetd"
fi
restart_daemon() { # command prefix...
    if "$@" flatnetd --state-dir /run/flatnet status --json >/dev/null 2>&1; then
        "$@" flatnetd --state-dir /run/flatnet stop && "$@" flatnetd --state-dir /run/flatnet start
    fi
}
restart_daemon env
[ -x "$CHROOT_DIR/usr/local/bin/flatnetd" ] && restart_daemon in_chroot
log "installed flatnetd, flatnet-cni and flatnet"
