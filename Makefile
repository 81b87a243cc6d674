# Conveniences; the scripts are the real entry points.
.PHONY: demo test bench bench-quick

demo:
	scripts/demo.sh

test:
	scripts/test.sh

# Builds in release mode, then measures (see docs/benchmark.md).
bench:
	cargo build --release --workspace --quiet
	python3 scripts/bench.py

bench-quick:
	cargo build --release --workspace --quiet
	python3 scripts/bench.py --quick
