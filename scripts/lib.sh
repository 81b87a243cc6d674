# Shared helpers for Flatnet's scripts. Source it; it defines functions only.

FLATNET_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The trixie chroot that holds Podman 5 + netavark (the host's Podman 4.3 cannot load plugins).
CHROOT_DIR=${FLATNET_CHROOT:-/var/lib/flatnet/trixie}
TEST_IMAGE=localhost/flatnet-test:latest

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

require_root() { [ "$(id -u)" = 0 ] || die "run as root (network namespaces, TUN devices and Podman need it)"; }

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "apt-get install ${missing[*]}"
    if [ ! -f /var/lib/flatnet/.apt-updated ] || [ -n "$(find /var/lib/flatnet/.apt-updated -mmin +360)" ]; then
        apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
        mkdir -p /var/lib/flatnet && touch /var/lib/flatnet/.apt-updated
    fi
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q \
        --no-install-recommends "${missing[@]}" >/dev/null
}

# The mount namespace the chroot's programs run in (made by scripts/setup-chroot.sh): its root
# is the chroot, entered with pivot_root rather than chroot(2). Under chroot(2), runc's
# pivot_root left each container's mount namespace rooted at the host's /, so `podman exec`
# processes started there and not in the container.
CHROOT_MOUNTS=${FLATNET_CHROOT_MOUNTS:-/run/flatnet-trixie/mnt}

# Run a command inside the trixie chroot (its mount namespace) with a clean environment.
in_chroot() {
    mountpoint -q "$CHROOT_MOUNTS" || die "no mount namespace for the chroot: run scripts/setup-chroot.sh"
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root PODMAN_IGNORE_CGROUPSV1_WARNING=1 nsenter --mount="$CHROOT_MOUNTS" -- "$@"
}

# The root file system of the Forgejo stand-in's containers (scripts/build-forge-rootfs.sh).
FORGE_ROOTFS=/var/lib/flatnet/forge-rootfs
# The image the stand-in's CI jobs run in: the forge rootfs's Debian with git.
JOB_IMAGE=localhost/flatnet-job:latest

# The rootless users of the tests and benchmarks (scripts/setup-rootless.sh), name:uid.
ROOTLESS_USERS=(flatnet-alice:2101 flatnet-bob:2102)

# Run a command in the chroot as a rootless user, with their runtime directory and home.
as_user() {
    local name=$1 uid
    shift
    uid=$(in_chroot id -u "$name")
    in_chroot runuser -u "$name" -- env -C "/home/$name" XDG_RUNTIME_DIR="/run/user/$uid" \
        HOME="/home/$name" "$@"
}
