#!/usr/bin/env bash
# Builds (once, cached) the root file system the Forgejo stand-in's containers run on: Debian
# bookworm minbase with python3 and git, and a venv with the pinned stand-in packages
# (examples/forgejo/standin/requirements.txt). No registry is needed: Podman runs it with
# `--rootfs DIR:O`. The stand-in's own scripts are copied in on every call (cheap); the venv is
# rebuilt when the requirements change. The chroot Podman sees it at the same path (bind).
# Also imports the image the stand-in's CI jobs run in (localhost/flatnet-job) into both Podmans.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_root
apt_install debootstrap

standin="$FLATNET_ROOT/examples/forgejo/standin"
if [ ! -f "$FORGE_ROOTFS/.debootstrap-done" ]; then
    log "debootstrap bookworm into $FORGE_ROOTFS for the Forgejo stand-in (about a minute)"
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    rm -rf "$FORGE_ROOTFS" && mkdir -p "$FORGE_ROOTFS"
    debootstrap --variant=minbase --include=python3,python3-venv,git,ca-certificates \
        bookworm "$FORGE_ROOTFS" "${mirror:-http://deb.debian.org/debian}" \
        >/var/log/flatnet-forge-debootstrap.log 2>&1 \
        || die "debootstrap failed; see /var/log/flatnet-forge-debootstrap.log"
    touch "$FORGE_ROOTFS/.debootstrap-done"
fi
want=$(sha256sum "$standin/requirements.txt" | cut -c1-16)
if [ "$(cat "$FORGE_ROOTFS/.venv-built" 2>/dev/null)" != "$want" ]; then
    log "installing the stand-in's pinned packages into $FORGE_ROOTFS/opt/forge (about a minute)"
    rm -rf "$FORGE_ROOTFS/opt/forge"
    # pip in the root file system reaches the registry as the host does: the host's resolver,
    # trust store and pip settings, for the install only.
    cp /etc/resolv.conf "$FORGE_ROOTFS/etc/resolv.conf"
    cp /etc/ssl/certs/ca-certificates.crt "$FORGE_ROOTFS/tmp/host-ca.crt"
    if [ -f /etc/pip.conf ]; then cp /etc/pip.conf "$FORGE_ROOTFS/etc/pip.conf"; fi
    cp "$standin/requirements.txt" "$FORGE_ROOTFS/tmp/requirements.txt"
    chroot "$FORGE_ROOTFS" python3 -m venv /opt/forge
    chroot "$FORGE_ROOTFS" env -i PATH=/usr/bin:/bin HOME=/root PIP_CERT=/tmp/host-ca.crt \
        REQUESTS_CA_BUNDLE=/tmp/host-ca.crt /opt/forge/bin/pip install -q --no-cache-dir \
        -r /tmp/requirements.txt >/var/log/flatnet-forge-pip.log 2>&1 \
        || die "pip failed; see /var/log/flatnet-forge-pip.log"
    # Containers get their resolv.conf from Podman; leave nothing of the host's behind.
    rm -f "$FORGE_ROOTFS/etc/resolv.conf" "$FORGE_ROOTFS/etc/pip.conf" \
        "$FORGE_ROOTFS/tmp/host-ca.crt" "$FORGE_ROOTFS/tmp/requirements.txt"
    echo "$want" > "$FORGE_ROOTFS/.venv-built"
fi
mkdir -p "$FORGE_ROOTFS/opt/standin"
cp "$standin"/*.sh "$standin"/*.py "$standin"/master.cfg "$FORGE_ROOTFS/opt/standin/"
chmod 0755 "$FORGE_ROOTFS"/opt/standin/*.sh "$FORGE_ROOTFS"/opt/standin/*.py

# The image act starts each CI job in (the runner's `docker` label): the same Debian with git,
# without the stand-in's own packages; in both Podmans, like the test image.
job_tarball=/var/lib/flatnet/flatnet-job.tar
if [ ! -f "$job_tarball" ] || [ "$FORGE_ROOTFS/.debootstrap-done" -nt "$job_tarball" ]; then
    tar -C "$FORGE_ROOTFS" --exclude=./opt --exclude=./proc --exclude=./sys --exclude=./dev \
        -cf "$job_tarball" .
    podman rmi -f "$JOB_IMAGE" >/dev/null 2>&1 || true
    [ -x "$CHROOT_DIR/usr/bin/podman" ] && { in_chroot podman rmi -f "$JOB_IMAGE" >/dev/null 2>&1 || true; }
fi
if ! podman image exists "$JOB_IMAGE"; then
    log "importing $JOB_IMAGE into host podman"
    podman import -q --change 'CMD ["/bin/bash"]' "$job_tarball" "$JOB_IMAGE" >/dev/null
fi
if [ -x "$CHROOT_DIR/usr/bin/podman" ] && ! in_chroot podman image exists "$JOB_IMAGE"; then
    log "importing $JOB_IMAGE into chroot podman"
    cp "$job_tarball" "$CHROOT_DIR/tmp/flatnet-job.tar"
    in_chroot podman import -q --change 'CMD ["/bin/bash"]' /tmp/flatnet-job.tar "$JOB_IMAGE" >/dev/null
    rm -f "$CHROOT_DIR/tmp/flatnet-job.tar"
fi

# The chroot's Podman runs containers on it too: same path inside the chroot.
if [ -d "$CHROOT_DIR/usr/bin" ]; then
    mkdir -p "$CHROOT_DIR$FORGE_ROOTFS"
    mountpoint -q "$CHROOT_DIR$FORGE_ROOTFS" || mount --bind "$FORGE_ROOTFS" "$CHROOT_DIR$FORGE_ROOTFS"
fi
log "forge stand-in root file system ready: $FORGE_ROOTFS"
