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

# Runs a command inside a container. The chroot's runc (1.1) does not switch `podman exec`
# into the container's mount namespace (the command would see the host's files), so for the
# chroot Podman we enter the container's namespaces with nsenter from the host instead.
in_container() { # podman-prefix... -- container command...
    local prefix=()
    while [ "$1" != -- ]; do prefix+=("$1"); shift; done
    shift
    local c=$1; shift
    if [ "${prefix[0]}" = in_chroot ]; then
        nsenter -t "$("${prefix[@]}" inspect -f '{{.State.Pid}}' "$c")" -m -n -p -u -i -r -w -- "$@"
    else
        "${prefix[@]}" exec "$c" "$@"
    fi
}

show_pair() { # podman command prefix...
    local a=flatnet-demo-a b=flatnet-demo-b
    "$@" rm -f "$a" "$b" >/dev/null 2>&1 || true
    for c in "$a" "$b"; do
        "$@" run -d --name "$c" --network flatnet --cap-add NET_RAW "$TEST_IMAGE" sleep 600 >/dev/null
    done
    local ip_a ip_b
    ip_a=$(in_container "$@" -- "$a" ip -4 -o addr show eth0 | awk '{print $4}')
    ip_b=$(in_container "$@" -- "$b" ip -4 -o addr show eth0 | awk '{print $4}')
    printf '  %s: %s\n  %s: %s\n' "$a" "$ip_a" "$b" "$ip_b"
    printf '  %s pings %s over Flatnet:\n' "$a" "$b"
    in_container "$@" -- "$a" ping -c 3 "${ip_b%/*}" | sed 's/^/    /'
    printf '  %s sends %s a message over TCP: ' "$b" "$a"
    in_container "$@" -- "$a" sh -c "nc -l -p 7000 -e sh -c 'cat > /tmp/message' </dev/null >/dev/null 2>&1 &"
    in_container "$@" -- "$b" sh -c "until echo 'hello over Flatnet' | nc ${ip_a%/*} 7000 2>/dev/null; do usleep 100000; done"
    in_container "$@" -- "$a" sh -c 'until [ -s /tmp/message ]; do usleep 100000; done; cat /tmp/message'
    "$@" rm -f -t 0 "$a" "$b" >/dev/null
}

log "CNI backend (podman $(podman --version | awk '{print $3}'), flatnet-cni):"
show_pair podman

if [ "$backends" != cni ]; then
    log "netavark backend (podman 5 in $CHROOT_DIR, plugin flatnet):"
    # The host's CNI data plane has UDP 4800 (same network namespace): this one takes 4801.
    in_chroot podman network rm -f flatnet >/dev/null 2>&1 || true
    in_chroot podman network create -d flatnet --subnet 10.78.0.0/24 -o tunnel_port=4801 flatnet >/dev/null
    show_pair in_chroot podman
fi
log "done: the containers talked through flatnetd (one host: the same-host fast path; across hosts: Noise tunnels)"
log "see the data plane: flatnetd status   (chroot: . scripts/lib.sh; in_chroot flatnetd status)"
