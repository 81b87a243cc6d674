#!/usr/bin/env bash
# Builds Flatnet in release mode and installs it:
#   host:   /usr/local/lib/cni/flatnet-cni and /etc/cni/net.d/flatnet.conflist (Podman 4.3, CNI)
#   chroot: /usr/local/libexec/netavark/flatnet (Podman 5 + netavark), when the chroot exists
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_root
cd "$FLATNET_ROOT"

log "cargo build --release"
cargo build --release --workspace --quiet
install -D -m 0755 target/release/flatnet-cni /usr/local/lib/cni/flatnet-cni
install -D -m 0755 target/release/flatnet /usr/local/libexec/netavark/flatnet
install -D -m 0644 examples/cni/flatnet.conflist /etc/cni/net.d/flatnet.conflist
if [ -d "$CHROOT_DIR/usr/bin" ]; then
    install -D -m 0755 target/release/flatnet "$CHROOT_DIR/usr/local/libexec/netavark/flatnet"
fi
log "installed flatnet-cni and flatnet"
