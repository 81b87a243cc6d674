# Build, install and package Flatnet. The scripts in scripts/ are the entry points for the
# quick start (scripts/demo.sh) and the tests (scripts/test.sh); this file holds the steps.
#
#   make                      build (release)
#   make install              into PREFIX (/usr/local), DESTDIR for staging
#   make uninstall            the same files out again; the user's config stays
#   make deb                  target/debian/flatnet_<version>-1_<arch>.deb (cargo-deb)
#   make bench, bench-quick   measurements (docs/benchmark.md); bench adds bench-paths
#   make bench-anchors        the data plane against Nebula, wireguard-go and boringtun, same
#                             rounds (installs trixie's builds), and the cipher's ceiling
#   make bench-aead           ChaCha20-Poly1305 from ring, aws-lc-rs, OpenSSL and RustCrypto
#   make bench-convergence    30 real daemons, then 300 hosts (270 light) on etcd, 10
#                             containers each on 10 networks: how fast routes spread, etcd's
#                             load, and a leader killed at that size
#   make bench-paths          first reply across a punched path and a relay, 30 rounds each
#                             (p50, p99); one stream through a relay against direct
#   make fuzz                 every fuzz target for FUZZ_SECONDS (300) each (cargo fuzz)
#   make kill-campaign        200 kills at random points and 1000 start/stop cycles a backend,
#                             and 200 kills on the rootless path

PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
CNI_PLUGIN_DIR ?= $(PREFIX)/lib/cni
NETAVARK_PLUGIN_DIR ?= $(PREFIX)/libexec/netavark
MANDIR ?= $(PREFIX)/share/man
DOCDIR ?= $(PREFIX)/share/doc/flatnet
SYSTEMD_UNIT_DIR ?= $(PREFIX)/lib/systemd/system
CNI_CONF_DIR ?= /etc/cni/net.d
# The unit is installed where systemd runs; SYSTEMD=yes or no overrides.
SYSTEMD ?= $(if $(wildcard /run/systemd/system),yes,no)
CARGO_DEB_VERSION = 2.12.1

RELEASE = target/release
BINARIES = $(RELEASE)/flatnetd $(RELEASE)/flatnet-cni $(RELEASE)/flatnet $(RELEASE)/flatnet-cert
MAN_DIR = $(RELEASE)/man

.PHONY: all build man unit install uninstall deb demo test bench bench-quick bench-anchors bench-aead bench-convergence bench-paths \
	fuzz flood kill-campaign

all: build

build:
	cargo build --release --workspace --locked

# Pages from the clap definitions, plus the hand-written overview flatnet(7).
man: build
	rm -rf $(MAN_DIR) && mkdir -p $(MAN_DIR)
	$(RELEASE)/flatnetd generate-man $(MAN_DIR)
	$(RELEASE)/flatnet-cni --generate-man $(MAN_DIR)
	$(RELEASE)/flatnet --generate-man $(MAN_DIR)
	$(RELEASE)/flatnet-cert generate-man $(MAN_DIR)
	cp docs/man/flatnet.7 $(MAN_DIR)/
	gzip -n -9 $(MAN_DIR)/*.[78]

unit:
	mkdir -p $(RELEASE)/systemd
	sed 's|@BINDIR@|$(BINDIR)|g' packaging/flatnetd.service.in > $(RELEASE)/systemd/flatnetd.service

install: man unit
	install -D -m 0755 $(RELEASE)/flatnetd $(DESTDIR)$(BINDIR)/flatnetd
	install -D -m 0755 $(RELEASE)/flatnet-cert $(DESTDIR)$(BINDIR)/flatnet-cert
	install -D -m 0755 $(RELEASE)/flatnet-cni $(DESTDIR)$(CNI_PLUGIN_DIR)/flatnet-cni
	install -D -m 0755 $(RELEASE)/flatnet $(DESTDIR)$(NETAVARK_PLUGIN_DIR)/flatnet
	install -d $(DESTDIR)$(MANDIR)/man7 $(DESTDIR)$(MANDIR)/man8
	install -m 0644 $(MAN_DIR)/*.7.gz $(DESTDIR)$(MANDIR)/man7/
	install -m 0644 $(MAN_DIR)/*.8.gz $(DESTDIR)$(MANDIR)/man8/
	install -D -m 0644 examples/cni/flatnet.conflist $(DESTDIR)$(DOCDIR)/examples/flatnet.conflist
	@# The example network only where there is none: never overwrite the user's.
	@if [ -e $(DESTDIR)$(CNI_CONF_DIR)/flatnet.conflist ]; then \
		echo "keeping $(DESTDIR)$(CNI_CONF_DIR)/flatnet.conflist"; \
	else \
		install -D -m 0644 examples/cni/flatnet.conflist $(DESTDIR)$(CNI_CONF_DIR)/flatnet.conflist; \
	fi
	@if [ "$(SYSTEMD)" = yes ]; then \
		install -D -m 0644 $(RELEASE)/systemd/flatnetd.service $(DESTDIR)$(SYSTEMD_UNIT_DIR)/flatnetd.service; \
	fi

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/flatnetd $(DESTDIR)$(BINDIR)/flatnet-cert \
		$(DESTDIR)$(CNI_PLUGIN_DIR)/flatnet-cni \
		$(DESTDIR)$(NETAVARK_PLUGIN_DIR)/flatnet $(DESTDIR)$(SYSTEMD_UNIT_DIR)/flatnetd.service \
		$(DESTDIR)$(MANDIR)/man7/flatnet.7.gz $(DESTDIR)$(MANDIR)/man8/flatnet.8.gz \
		$(DESTDIR)$(MANDIR)/man8/flatnet-cni.8.gz $(DESTDIR)$(MANDIR)/man8/flatnetd.8.gz \
		$(DESTDIR)$(MANDIR)/man8/flatnet-cert*.8.gz \
		$(DESTDIR)$(MANDIR)/man8/flatnetd-*.8.gz
	rm -rf $(DESTDIR)$(DOCDIR)
	@echo "left in place: $(DESTDIR)$(CNI_CONF_DIR)/flatnet.conflist (your network), $(DESTDIR)/run/flatnet (state)"

# cargo-deb is installed (pinned) on first use.
deb: man
	$(MAKE) unit BINDIR=/usr/bin
	command -v cargo-deb >/dev/null || cargo install cargo-deb --version $(CARGO_DEB_VERSION) --locked
	cargo deb -p flatnetd --no-build

demo:
	scripts/demo.sh

test:
	scripts/test.sh

bench: build
	python3 scripts/bench.py
	$(MAKE) bench-paths

bench-quick: build
	python3 scripts/bench.py --quick

# Not in CI: it installs the anchors (Nebula, boringtun) and takes several minutes.
bench-anchors: build
	scripts/install-anchors.sh
	python3 scripts/bench.py --anchors

# The maintained AEAD crates side by side (benches/aead, a crate of its own; the openssl crate
# builds against the system's OpenSSL).
bench-aead:
	dpkg -s libssl-dev pkg-config > /dev/null 2>&1 || apt-get install -y --no-install-recommends libssl-dev pkg-config
	cd benches/aead && cargo run --release --quiet

# CI runs 4 real daemons and 36 light hosts, 4 containers each on 3 networks (the defaults).
SCALE_REAL ?= 30
SCALE_LIGHT ?= 270
SCALE_PER_HOST ?= 10
SCALE_NETWORKS ?= 10
bench-convergence: build
	FLATNET_SCALE_REAL=$(SCALE_REAL) FLATNET_SCALE_LIGHT=$(SCALE_LIGHT) \
		FLATNET_SCALE_PER_HOST=$(SCALE_PER_HOST) FLATNET_SCALE_NETWORKS=$(SCALE_NETWORKS) \
		cargo test --release -p flatnetd --test etcd_scale -- --nocapture

# CI runs 3 rounds and 50 MB (the tests' defaults).
PATH_ROUNDS ?= 30
bench-paths: build
	FLATNET_BENCH_ROUNDS=$(PATH_ROUNDS) cargo test --release -p flatnetd --test nat \
		-- time_to_the_first_reply --nocapture
	FLATNET_BENCH_ROUNDS=$(PATH_ROUNDS) FLATNET_BENCH_BYTES=200000000 cargo test --release \
		-p flatnetd --test relay -- time_to_the_first_reply --nocapture

# Kill points on both backends (200 kills, 1000 start/stop cycles each) and on the rootless
# path (200 kills); CI runs 20 and 30.
# The plugins the test gives Podman are the test builds, which carry the kill points.
kill-campaign:
	cargo build --release --workspace --features flatnet/kill-points
	FLATNET_E2E=1 FLATNET_KILLS=200 FLATNET_CYCLES=1000 cargo test --release -p flatnetd \
		--test kill_points -- --nocapture --test-threads 1

# 100,000 spoofed initiations a second for 200 s, across a natural rekey; CI floods for 10 s.
FLOOD_SECONDS ?= 200
flood:
	FLATNET_FLOOD_SECONDS=$(FLOOD_SECONDS) cargo test --release -p flatnetd --test hostile \
		a_spoofed_handshake_flood -- --nocapture

FUZZ_SECONDS ?= 300
fuzz:
	scripts/fuzz.sh $(FUZZ_SECONDS)
