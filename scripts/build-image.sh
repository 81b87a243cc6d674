#!/usr/bin/env bash
# Builds the registry-free test image (busybox-static rootfs) and imports it into the host Podman
# and, when the chroot exists, into the chroot's Podman. Idempotent.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_root

work=/var/lib/flatnet/image
tarball=$work/flatnet-test.tar
if [ ! -f "$tarball" ]; then
    log "building busybox rootfs"
    rm -rf "$work" && mkdir -p "$work/deb" "$work/rootfs"
    (cd "$work/deb" && apt-get download -q busybox-static >/dev/null 2>&1) \
        || { apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null; (cd "$work/deb" && apt-get download -q busybox-static >/dev/null); }
    dpkg-deb -x "$work"/deb/busybox-static_*.deb "$work/deb/x"
    root=$work/rootfs
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,proc,sys,dev,root,var/tmp}
    cp "$work/deb/x/bin/busybox" "$root/bin/busybox"
    for applet in $("$root/bin/busybox" --list); do
        [ "$applet" = busybox ] || ln -sf /bin/busybox "$root/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
    tar -C "$root" -cf "$tarball" .
fi

if ! podman image exists "$TEST_IMAGE"; then
    log "importing $TEST_IMAGE into host podman"
    podman import -q --change 'CMD ["/bin/sh"]' "$tarball" "$TEST_IMAGE" >/dev/null
fi
if [ -x "$CHROOT_DIR/usr/bin/podman" ]; then
    if ! in_chroot podman image exists "$TEST_IMAGE"; then
        log "importing $TEST_IMAGE into chroot podman"
        cp "$tarball" "$CHROOT_DIR/tmp/flatnet-test.tar"
        in_chroot podman import -q --change 'CMD ["/bin/sh"]' /tmp/flatnet-test.tar "$TEST_IMAGE" >/dev/null
        rm -f "$CHROOT_DIR/tmp/flatnet-test.tar"
    fi
fi
