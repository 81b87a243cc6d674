#!/usr/bin/env bash
# The test command. On a fresh Debian 12 machine, as root: installs what the tests need (apt
# packages, the trixie chroot with Podman 5 + netavark, the test image), builds and installs
# Flatnet, checks formatting and lints, and runs every test: unit, integration (real network
# namespaces) and end to end (real Podman, both backends).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_root
cd "$FLATNET_ROOT"

# The daemons the Podman tests start (one per state directory) are stopped when we finish.
stop_daemons() {
    /usr/bin/flatnetd --state-dir /run/flatnet stop 2>/dev/null || true
    [ -x "$CHROOT_DIR/usr/bin/flatnetd" ] && in_chroot flatnetd --state-dir /run/flatnet stop 2>/dev/null
    true
}
trap stop_daemons EXIT

scripts/install-deps.sh
scripts/setup-chroot.sh
scripts/install.sh
scripts/build-image.sh
scripts/setup-rootless.sh
scripts/build-forge-rootfs.sh

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --release --workspace --all-targets --quiet -- -D warnings
log "shellcheck: the Forgejo example and the stand-in's scripts"
bash -n examples/forgejo/run.sh
shellcheck -x examples/forgejo/run.sh examples/forgejo/standin/*.sh scripts/verify-phase1.sh
log "no dependency circles between the core's modules"
python3 scripts/check-module-cycles.py src

log "benchmark, short setting (proves it still runs; asserts no timing)"
python3 scripts/bench.py --quick --out "$(mktemp -d)"

log "fuzzing, bounded (make fuzz runs longer)"
scripts/fuzz.sh 15

log "cargo test (unit, integration, end to end)"
results=$(mktemp)
set +e
FLATNET_E2E=1 cargo test --release --workspace 2>&1 | tee "$results"
status=${PIPESTATUS[0]}
# The Phase 1 procedure as its document gives it (it runs cargo itself, so not from a test):
# twice in a row on the CNI backend (its cleanup must leave the machine ready for the next run),
# then on netavark.
for backend in cni cni netavark; do
    log "Phase 1 verification procedure (scripts/verify-phase1.sh $backend)"
    if scripts/verify-phase1.sh "$backend" > "$results.procedure" 2>&1; then
        tail -n 1 "$results.procedure"
        echo "test phase1_verification_procedure_$backend ... ok" | tee -a "$results"
    else
        cat "$results.procedure"
        echo "test phase1_verification_procedure_$backend ... FAILED" | tee -a "$results"
        status=1
    fi
done
rm -f "$results.procedure"
set -e
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6 }
     /^test phase1_verification_procedure_[a-z]* \.\.\. ok/ { p += 1 }
     /^test phase1_verification_procedure_[a-z]* \.\.\. FAILED/ { f += 1 }
     END { printf "%d passed, %d failed\n", p, f }' "$results"
rm -f "$results"
exit "$status"
