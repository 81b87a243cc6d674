#!/usr/bin/env bash
# Installs the anchors `make bench-anchors` measures Flatnet against, when missing: Nebula
# (Debian's package) and boringtun (`cargo install boringtun-cli`, configured with Debian's
# wireguard-tools). Not part of the tests: the benchmark alone needs them.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_root

ANCHORS="${FLATNET_ANCHORS:-/opt/flatnet-anchors}"
BORINGTUN_VERSION=0.7.1

command -v nebula > /dev/null && command -v nebula-cert > /dev/null || apt_install nebula
# Only the `wg` tool (apt_install takes no recommends): it speaks boringtun's configuration
# socket; no kernel module is needed.
command -v wg > /dev/null || apt_install wireguard-tools
if ! [ -x "$ANCHORS/bin/boringtun-cli" ]; then
    log "building boringtun-cli $BORINGTUN_VERSION into $ANCHORS (a few minutes)"
    cargo install --locked boringtun-cli --version "$BORINGTUN_VERSION" --root "$ANCHORS"
fi
log "anchors ready: nebula $(nebula -version | awk '{print $2}'), $("$ANCHORS/bin/boringtun-cli" --version)"
