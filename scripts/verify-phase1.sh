#!/usr/bin/env bash
# The Phase 1 verification procedure, run as its document gives it: the ```sh blocks of
# docs/phase1-verification.md in the document's order, in one shell, each block's output
# compared with the ```text block under it (scripts/procedure.py says how). Stops at the first
# step that fails or prints something else than the document shows, naming the step, and then
# runs the document's cleanup; a passing run ends with the cleanup too, so the procedure can be
# run again at once. The Japanese document shows the same blocks (tests/procedure.rs).
#   scripts/verify-phase1.sh [cni|netavark]      (default: cni)
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
require_root
cd "$FLATNET_ROOT"
backend=${1:-cni}
log "Phase 1 procedure, $backend backend"
exec python3 scripts/procedure.py docs/phase1-verification.md --backend "$backend"
