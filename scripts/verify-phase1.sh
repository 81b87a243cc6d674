#!/usr/bin/env bash
# The Phase 1 verification procedure (docs/phase1-verification.md, .ja.md), run as written:
# every command the documents show is on a line of this script (or of examples/forgejo/run.sh),
# and tests/procedure.rs checks that they stay so. Each step checks its pass criterion and
# stops with the step's number if it fails. Run it after scripts/demo.sh or scripts/test.sh's
# set-up (it needs the installed plugins, both Podmans, the test image and the forge rootfs).
#   scripts/verify-phase1.sh
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_root
cd "$FLATNET_ROOT"

out=$(mktemp)
step() { printf '\n== step %s\n' "$*"; current="$1"; }
expect() { grep -q -- "$1" "$out" || die "step $current: expected '$1' in: $(cat "$out")"; }
refuse() { ! grep -q -- "$1" "$out" || die "step $current: did not expect '$1' in: $(cat "$out")"; }
cleanup() {
    podman rm -f -t 0 verify-a verify-b forge runner >/dev/null 2>&1 || true
    for ns in p1 p2; do
        CNI_COMMAND=DEL CNI_CONTAINERID=$ns CNI_NETNS=/run/netns/$ns CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni /usr/lib/cni/flatnet-cni < examples/cni/flatnet-verify.json >/dev/null 2>&1 || true
        ip netns del $ns 2>/dev/null || true
    done
    rm -f /etc/cni/net.d/flatnet-verify.conflist "$out"
    rm -rf /tmp/flatnet-hello /tmp/flatnet-wire /tmp/flatnet-wire.log /tmp/flatnet-received
}
trap cleanup EXIT
cleanup
out=$(mktemp)

step 1.1 "build and install"
cargo build --release --workspace
scripts/install.sh 2>&1 | tee "$out"
expect "installed flatnetd, flatnet-cni and flatnet"

step 1.2 "CNI ADD into a fresh network namespace"
ip netns add p1
CNI_COMMAND=ADD CNI_CONTAINERID=p1 CNI_NETNS=/run/netns/p1 CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni /usr/lib/cni/flatnet-cni < examples/cni/flatnet-verify.json | tee "$out"
expect '"address":"10.79.0.'
expect '"nameservers":\["10.79.0.1"\]'
ip1=$(grep -o '10\.79\.0\.[0-9]*/24' "$out" | head -1 | cut -d/ -f1)

step 1.3 "CNI CHECK agrees"
CNI_COMMAND=CHECK CNI_CONTAINERID=p1 CNI_NETNS=/run/netns/p1 CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni /usr/lib/cni/flatnet-cni < examples/cni/flatnet-verify.json | tee "$out"
refuse '"code"'

step 1.4 "podman run on the network"
cp examples/cni/flatnet-verify.conflist /etc/cni/net.d/
podman run --rm --network flatnet-verify localhost/flatnet-test:latest echo hello | tee "$out"
expect "^hello$"

step 2.1 "the interface in the container: a TUN device with the address, up"
ip -n p1 -d addr show eth0 | tee "$out"
expect "tun type tun"
expect "inet $ip1/24"
expect "mtu 1416"
ip -n p1 route | tee "$out"
expect "10.79.0.0/24 dev eth0"

step 3.1 "IPAM: one lease file per address, the gateway never leased"
ls /run/flatnet/networks/flatnet-verify/leases/ | tee "$out"
expect "$ip1"
refuse "^10.79.0.1$"

step 3.2 "the address resolves to its container"
cat "/run/flatnet/networks/flatnet-verify/leases/$ip1" | tee "$out"
expect "^p1$"

step 3.3 "the lighthouse maps the address to this host's endpoint and key"
cat /run/flatnet/lighthouse.json | tee "$out"
expect "\"$ip1\""
expect '"endpoint": "127.0.0.1:4800"'

step 4.1 "a second container; ping through the encrypted tunnel"
# Containers of one host take the fast path unless told otherwise; Phase 1 shows the tunnel.
flatnetd stop
flatnetd start --same-host encrypted
ip netns add p2
CNI_COMMAND=ADD CNI_CONTAINERID=p2 CNI_NETNS=/run/netns/p2 CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni /usr/lib/cni/flatnet-cni < examples/cni/flatnet-verify.json | tee "$out"
ip2=$(grep -o '10\.79\.0\.[0-9]*/24' "$out" | head -1 | cut -d/ -f1)
ip netns exec p1 ping -c 3 "$ip2" | tee "$out"
expect "3 packets transmitted, 3 received"

step 4.2 "TCP through the tunnel"
ip netns exec p2 python3 -c 'import socket; s = socket.create_server(("0.0.0.0", 7000)); c, _ = s.accept(); print(c.recv(100).decode())' > /tmp/flatnet-received &
until ip netns exec p2 ss -ltn | grep -q ':7000 '; do sleep 0.1; done
ip netns exec p1 python3 -c 'import socket, sys; socket.create_connection((sys.argv[1], 7000)).sendall(b"hello over Flatnet")' "$ip2"
wait
cat /tmp/flatnet-received | tee "$out"
expect "hello over Flatnet"

step 4.3 "only ciphertext on the wire"
timeout 10 tcpdump -nni lo -c 6 -A udp port 4800 > /tmp/flatnet-wire 2> /tmp/flatnet-wire.log &
until grep -q 'listening on' /tmp/flatnet-wire.log; do sleep 0.1; done
ip netns exec p1 ping -c 3 -p 666c61746e65742d6d61726b6572 "$ip2" > /dev/null
wait || true
cat /tmp/flatnet-wire | tee "$out"
expect "UDP"
refuse "flatnet-marker"

step 4.4 "the data plane's own view"
flatnetd status | tee "$out"
expect "flatnet-verify"
expect "127.0.0.1:4800"

step 4.5 "negative: bad input is refused in the protocol's form and leaves nothing"
CNI_COMMAND=ADD CNI_CONTAINERID=bad CNI_NETNS=/run/netns/does-not-exist CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni /usr/lib/cni/flatnet-cni < examples/cni/flatnet-verify.json | tee "$out" || true
expect '"code":3'
ls /run/flatnet/networks/flatnet-verify/attachments/ | tee "$out"
refuse "bad"

step 4.6 "negative: flatnetd killed, the containers keep their interfaces, a restart serves them"
kill -9 "$(flatnetd status --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["pid"])')"
flatnetd start
ip netns exec p1 ping -c 3 "$ip2" | tee "$out"
expect "3 packets transmitted, 3 received"

step 4.7 "CNI DEL leaves nothing"
CNI_COMMAND=DEL CNI_CONTAINERID=p1 CNI_NETNS=/run/netns/p1 CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni /usr/lib/cni/flatnet-cni < examples/cni/flatnet-verify.json
CNI_COMMAND=DEL CNI_CONTAINERID=p2 CNI_NETNS=/run/netns/p2 CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni /usr/lib/cni/flatnet-cni < examples/cni/flatnet-verify.json
ls /run/flatnet/networks/flatnet-verify/leases/ /run/flatnet/networks/flatnet-verify/attachments/ | tee "$out"
refuse "10.79.0"
ip -o link | tee "$out"
refuse "fn-"

step 5.1 "Podman: two containers on the network, by name"
podman run -d --name verify-a --network flatnet-verify --cap-add NET_RAW localhost/flatnet-test:latest sleep 600
podman run -d --name verify-b --network flatnet-verify localhost/flatnet-test:latest sleep 600
podman exec verify-a ping -c 3 verify-b | tee "$out"
expect "3 packets received"

step 5.2 "the stand-in: forge and runner on the network"
podman run -d --name forge --network flatnet-verify -p 127.0.0.1:3000:3000 -p 127.0.0.1:8010:8010 --rootfs /var/lib/flatnet/forge-rootfs:O /opt/standin/forge.sh
podman run -d --name runner --network flatnet-verify --rootfs /var/lib/flatnet/forge-rootfs:O /opt/standin/runner.sh
until curl -s 'http://127.0.0.1:8010/api/v2/workers?name=runner' | grep -q '"connected_to": \[$'; do sleep 1; done
curl -s 'http://127.0.0.1:8010/api/v2/workers?name=runner' | tee "$out"
expect '"masterid": 1'

step 5.3 "a push runs the workflow on the runner"
mkdir -p /tmp/flatnet-hello && cp -r examples/forgejo/repo/.forgejo /tmp/flatnet-hello/
git -C /tmp/flatnet-hello init -q -b main
git -C /tmp/flatnet-hello add .
git -C /tmp/flatnet-hello -c user.name=flatnet -c user.email=flatnet@localhost commit -q -m 'Hello from Flatnet'
git -C /tmp/flatnet-hello push http://127.0.0.1:3000/ main
until curl -s 'http://127.0.0.1:8010/api/v2/builds?order=-buildid&limit=1' | grep -q '"complete": true'; do sleep 1; done
curl -s 'http://127.0.0.1:8010/api/v2/builds?order=-buildid&limit=1' | tee "$out"
expect '"results": 0'
curl -s http://127.0.0.1:8010/api/v2/builds/1/steps/workflow/logs/stdio/raw | tee "$out"
expect "Hello from Flatnet"

step 5.4 "removing the containers leaves nothing"
podman rm -f -t 0 verify-a verify-b forge runner
ls /run/flatnet/networks/flatnet-verify/leases/ | tee "$out"
refuse "10.79.0"
nft list ruleset | tee "$out"
refuse "dport 3000"
step 6.1 "two hosts: containers, names and the stand-in across simulated hosts"
cargo test --release -p flatnetd --test reachability --test forge_standin -- two_then_three_hosts names_resolve the_forge_stand_in 2>&1 | tee "$out"
# One result line per test file: reachability (two tests), then forge_standin (one).
expect "test result: ok. 2 passed"
expect "test result: ok. 1 passed"
refuse "FAILED"

printf '\nPhase 1 procedure: every step passed\n'
