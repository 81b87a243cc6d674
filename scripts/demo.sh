#!/usr/bin/env bash
# The quick start: installs what is missing, builds, installs, and runs two containers on a
# Flatnet network with each Podman backend, showing their Flatnet addresses.
#   scripts/demo.sh            both backends (CNI on the host, netavark in the trixie chroot)
#   scripts/demo.sh cni        only the host Podman 4.3 with flatnet-cni
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_root
backends=${1:-all}

"$FLATNET_ROOT/scripts/install-deps.sh"
[ "$backends" = cni ] || "$FLATNET_ROOT/scripts/setup-chroot.sh"
"$FLATNET_ROOT/scripts/install.sh"
"$FLATNET_ROOT/scripts/build-image.sh"

show_pair() { # podman command prefix...
    local a=flatnet-demo-a b=flatnet-demo-b
    "$@" rm -f "$a" "$b" >/dev/null 2>&1 || true
    "$@" run -d --name "$a" --network flatnet "$TEST_IMAGE" sleep 600 >/dev/null
    "$@" run -d --name "$b" --network flatnet "$TEST_IMAGE" sleep 600 >/dev/null
    for c in "$a" "$b"; do
        printf '  %s: %s\n' "$c" "$("$@" exec "$c" ip -4 -o addr show eth0 | awk '{print $4}')"
    done
    "$@" rm -f -t 0 "$a" "$b" >/dev/null
}

log "CNI backend (podman $(podman --version | awk '{print $3}'), flatnet-cni):"
show_pair podman

if [ "$backends" != cni ]; then
    log "netavark backend (podman 5 in $CHROOT_DIR, plugin flatnet):"
    in_chroot podman network exists flatnet \
        || in_chroot podman network create -d flatnet --subnet 10.78.0.0/24 flatnet >/dev/null
    show_pair in_chroot podman
fi
log "done: each container got its own Flatnet address on a TUN interface"
