#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (cargo fuzz, libFuzzer) for SECONDS each (default 15: the
# bounded run CI does; `make fuzz` gives 300), keeping the corpus in fuzz/corpus/<target> so
# later runs start where earlier ones stopped. Prints executions per target; fails on a crash,
# leaving the input in fuzz/artifacts/<target>. Builds with the machine's stable Rust:
# `-s none` asks for no sanitizer (those need nightly), coverage instrumentation is stable.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$FLATNET_ROOT/fuzz"

seconds=${1:-15}
CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
log "building the fuzz targets"
cargo fuzz build -s none -O

status=0
total=0
for target in $(cargo fuzz list); do
    mkdir -p "corpus/$target"
    out=$(mktemp)
    if cargo fuzz run -s none -O "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 > "$out" 2>&1; then
        result=ok
    else
        result=CRASHED
        status=1
        grep -E "panicked|ERROR|SUMMARY|Test unit written" "$out" | head -20 >&2
    fi
    runs=$(awk '/stat::number_of_executed_units/ { print $NF }' "$out")
    total=$((total + ${runs:-0}))
    printf 'fuzz %-16s %12s executions in %ss: %s\n' "$target" "${runs:-0}" "$seconds" "$result"
    rm -f "$out"
done
printf 'fuzz total %s executions, %s\n' "$total" "$([ $status = 0 ] && echo "no crash" || echo "CRASHES")"
exit $status
