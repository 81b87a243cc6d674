#!/usr/bin/env bash
# Installs what Flatnet's build, demo and tests need on a Debian 12 host, and configures the
# host's Podman 4.3 for the CNI backend. Idempotent; safe to run again.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_root

# Build: netavark's and etcd-client's build scripts compile protobuf definitions (etcd's import
# Google's well-known types, from libprotobuf-dev).
apt_install ca-certificates build-essential pkg-config protobuf-compiler libprotobuf-dev
# The etcd lighthouse's tests run their own etcd members (never a system-wide one) and make
# their own CA and certificates.
apt_install etcd-server etcd-client openssl
# Podman with the CNI backend; runc because crun rejects this host's hybrid cgroup layout.
# nftables: Flatnet's published ports and egress live in an nft table of its own.
apt_install podman containernetworking-plugins runc conmon iptables iproute2 nftables
# The tests' stand-in for the outside world's resolver (in a test namespace, never the host's).
apt_install dnsmasq-base
# The trixie chroot (Podman 5 + netavark), packet captures and throughput tools.
apt_install debootstrap tcpdump iperf3 iputils-ping python3 git curl netcat-openbsd shellcheck

# Podman reads drop-ins after containers.conf; ours only sets what this host needs.
nofile=$(ulimit -Hn)
mkdir -p /etc/containers/containers.conf.d
cat > /etc/containers/containers.conf.d/50-flatnet.conf <<CONF
# Written by flatnet scripts/install-deps.sh
[containers]
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=4096:4096"]

[network]
network_backend = "cni"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
log "host dependencies ready"
