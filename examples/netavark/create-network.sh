#!/bin/sh
# Creates a Flatnet network with the netavark plugin. Every -o option is optional:
#   mtu          container interface MTU (default 1416: a 1500-byte underlay minus tunnel overhead)
#   tunnel_port  this host's UDP port for tunnels (default 4800)
#   state_dir    where leases, attachments and the lighthouse file live (default /run/flatnet)
#   lighthouse   path of the file lighthouse (default <state_dir>/lighthouse.json)
#   endpoint     underlay address:port other hosts reach this host at (default 127.0.0.1:<port>)
set -e
podman network create -d flatnet --subnet 10.78.0.0/24 -o mtu=1416 flatnet
podman run --rm --network flatnet docker.io/library/alpine ip addr show eth0
