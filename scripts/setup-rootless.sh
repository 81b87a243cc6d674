#!/usr/bin/env bash
# The rootless Podman users of the tests and of `make bench`: users of the trixie chroot with
# subordinate uid and gid ranges, a runtime directory each, and the test image in their own
# storage. Needs scripts/setup-chroot.sh and scripts/build-image.sh first. Idempotent.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_root

# Rootless Podman's own network (pasta) opens /dev/net/tun as the user: Debian's udev makes
# it 0666; a machine without udev (this VM) leaves it 0600.
chmod 0666 /dev/net/tun

for entry in "${ROOTLESS_USERS[@]}"; do
    name=${entry%%:*}
    uid=${entry##*:}
    if ! in_chroot id -u "$name" >/dev/null 2>&1; then
        log "adding rootless user $name (uid $uid) to the chroot"
        in_chroot useradd --create-home --uid "$uid" --shell /bin/sh "$name"
    fi
    # useradd allots ranges itself; add one where it did not.
    first=$((1000000 + (uid - 2100) * 65536))
    for file in /etc/subuid /etc/subgid; do
        grep -q "^$name:" "$CHROOT_DIR$file" 2>/dev/null || echo "$name:$first:65536" >> "$CHROOT_DIR$file"
    done
    # The chroot's /run is a fresh tmpfs each boot.
    install -d -m 0700 -o "$uid" -g "$uid" "$CHROOT_DIR/run/user/$uid"
    if ! as_user "$name" podman image exists "$TEST_IMAGE"; then
        log "loading $TEST_IMAGE into $name's storage"
        in_chroot podman save -q -o "/tmp/flatnet-test-$uid.tar" "$TEST_IMAGE"
        chown "$uid" "$CHROOT_DIR/tmp/flatnet-test-$uid.tar"
        as_user "$name" podman load -q -i "/tmp/flatnet-test-$uid.tar" >/dev/null
        rm -f "$CHROOT_DIR/tmp/flatnet-test-$uid.tar"
    fi
done
log "rootless users ready in the chroot: ${ROOTLESS_USERS[*]}"

# Alice on the host too, for the host's Podman 4.3 with CNI (rootless, slirp4netns).
apt_install uidmap slirp4netns
entry=${ROOTLESS_USERS[0]}
name=${entry%%:*}
uid=${entry##*:}
id -u "$name" >/dev/null 2>&1 || useradd --create-home --uid "$uid" --shell /bin/sh "$name"
for file in /etc/subuid /etc/subgid; do
    grep -q "^$name:" "$file" 2>/dev/null || echo "$name:1065536:65536" >> "$file"
done
install -d -m 0700 -o "$uid" -g "$uid" "/run/user/$uid"
as_host_user() {
    runuser -u "$name" -- env -C "/home/$name" XDG_RUNTIME_DIR="/run/user/$uid" HOME="/home/$name" "$@"
}
if ! as_host_user podman image exists "$TEST_IMAGE" 2>/dev/null; then
    log "loading $TEST_IMAGE into $name's storage on the host"
    podman save -q -o "/tmp/flatnet-test-$uid.tar" "$TEST_IMAGE"
    chown "$uid" "/tmp/flatnet-test-$uid.tar"
    as_host_user podman load -q -i "/tmp/flatnet-test-$uid.tar" >/dev/null
    rm -f "/tmp/flatnet-test-$uid.tar"
fi
log "rootless user $name ready on the host"
