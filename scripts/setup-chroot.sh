#!/usr/bin/env bash
# Builds (once) and mounts (every time) the Debian trixie chroot that holds Podman 5 + netavark,
# the Podman that can load netavark plugins on this host. Idempotent.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_root
apt_install debootstrap
MIRROR=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}

if [ ! -x "$CHROOT_DIR/usr/bin/podman" ]; then
    if [ ! -f "$CHROOT_DIR/.debootstrap-done" ]; then
        log "debootstrap trixie into $CHROOT_DIR (about a minute)"
        rm -rf "$CHROOT_DIR" && mkdir -p "$CHROOT_DIR"
        debootstrap --variant=minbase trixie "$CHROOT_DIR" "$MIRROR" >/var/log/flatnet-debootstrap.log 2>&1 \
            || die "debootstrap failed; see /var/log/flatnet-debootstrap.log"
        touch "$CHROOT_DIR/.debootstrap-done"
    fi
fi

mount_chroot() {
    mountpoint -q "$CHROOT_DIR" || mount --bind "$CHROOT_DIR" "$CHROOT_DIR"
    mountpoint -q "$CHROOT_DIR/proc" || mount -t proc proc "$CHROOT_DIR/proc"
    if ! mountpoint -q "$CHROOT_DIR/sys"; then
        mount --rbind /sys "$CHROOT_DIR/sys" && mount --make-rslave "$CHROOT_DIR/sys"
    fi
    if ! mountpoint -q "$CHROOT_DIR/dev"; then
        mount --rbind /dev "$CHROOT_DIR/dev" && mount --make-rslave "$CHROOT_DIR/dev"
    fi
    mountpoint -q "$CHROOT_DIR/run" || mount -t tmpfs -o mode=755 tmpfs "$CHROOT_DIR/run"
}
mount_chroot

# A mount namespace of its own whose root is the chroot (pivot_root), kept in $CHROOT_MOUNTS for
# in_chroot to enter: containers made there get mount namespaces rooted at their own root, as
# on a machine of their own. The chroot's mounts are shared with it as its masters, so what is
# mounted below the chroot later (the forge rootfs) appears inside too.
make_mount_namespace() {
    local dir
    dir=$(dirname "$CHROOT_MOUNTS")
    # A namespace can only be kept in a file on a private mount (as ip netns does /run/netns).
    mkdir -p "$dir"
    mountpoint -q "$dir" || { mount --bind "$dir" "$dir" && mount --make-private "$dir"; }
    mount --make-rshared "$CHROOT_DIR"
    touch "$CHROOT_MOUNTS"
    unshare --mount="$CHROOT_MOUNTS" --propagation slave true
    nsenter --mount="$CHROOT_MOUNTS" -- sh -c \
        "cd '$CHROOT_DIR' && mkdir -p .host && pivot_root . .host && umount -l /.host && rmdir /.host"
}
mountpoint -q "$CHROOT_MOUNTS" || make_mount_namespace

# nftables: the plugin runs in the chroot and writes Flatnet's nft table from there.
# aardvark-dns: as in a standard Podman 5 (it only serves bridge networks; without it Podman
# warns on every run that DNS is off, although Flatnet answers DNS itself).
# uidmap and passt: rootless Podman (scripts/setup-rootless.sh).
chroot_packages=(podman netavark aardvark-dns runc conmon iptables iproute2 nftables ca-certificates uidmap passt)
missing=()
for pkg in "${chroot_packages[@]}"; do
    in_chroot dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
        || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} inside the chroot"
    cp /etc/resolv.conf "$CHROOT_DIR/etc/resolv.conf" 2>/dev/null || true
    in_chroot apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
    in_chroot env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q \
        --no-install-recommends "${missing[@]}" \
        >/var/log/flatnet-chroot-apt.log 2>&1 || die "apt in chroot failed; see /var/log/flatnet-chroot-apt.log"
fi

nofile=$(ulimit -Hn)
mkdir -p "$CHROOT_DIR/etc/containers"
cat > "$CHROOT_DIR/etc/containers/containers.conf" <<CONF
# Written by flatnet scripts/setup-chroot.sh
[containers]
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=4096:4096"]

[network]
network_backend = "netavark"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
log "chroot ready: $(in_chroot podman --version), $(in_chroot /usr/lib/podman/netavark --version 2>/dev/null || echo netavark)"
