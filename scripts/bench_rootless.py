"""Rootless Podman on Flatnet against the same user's own rootless networking, in one run
(part of scripts/bench.py): a user of the trixie chroot (scripts/setup-rootless.sh) runs
Podman 5 without root; Flatnet's plugin asks a root flatnetd on its user socket.

- container to container on one host: Flatnet against a rootless bridge network (Podman's
  way for one user's containers to talk, inside the rootless network namespace pasta serves);
- to another host (a namespace on a veth from this one, host B): the user's container on
  Flatnet to a rootful container of host B on the same network, through the tunnel, against
  the user's container on the default network (pasta) to host B's own address (pasta leaves
  through this host's sockets; a rootless user has no other way there);
- `podman run --rm ... true`: Flatnet against the default rootless network (pasta).

Throughput is timed inside the client container (busybox: dd into nc), so `podman exec`'s
own cost is not counted. Nothing asserts a timing.
"""

import json
import os
import statistics
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

CHROOT = Path(os.environ.get("FLATNET_CHROOT", "/var/lib/flatnet/trixie"))
CHROOT_MOUNTS = os.environ.get("FLATNET_CHROOT_MOUNTS", "/run/flatnet-trixie/mnt")
USER, UID = "flatnet-alice", 2101
IMAGE = "localhost/flatnet-test:latest"
STATE = "/run/flatnet-bench-rl"
SOCKET = "/var/lib/flatnet/bench-rl.sock"
GRANTS = "/etc/flatnet/bench-rl.json"
FLATNET, BRIDGE = "fnb-rl", "fnb-rl-bridge"
SUBNET, USER_BLOCK = "10.231.0.0/24", "10.231.0.128/25"
# The underlay to host B: a documentation range of its own, on a veth from this namespace.
LINK = ("fnb-rl-a", "fnb-rl-b")
HOST_A, HOST_B = "203.0.113.65", "203.0.113.66"
SINK_PORT = 5001
# What the other host runs to receive: it reads and drops every connection's bytes.
SINK = f"""
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {SINK_PORT}))
s.listen(8)
while True:
    c, _ = s.accept()
    while c.recv(1 << 20):
        pass
    c.close()
"""


def in_chroot(*args):
    return ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root",
            "PODMAN_IGNORE_CGROUPSV1_WARNING=1", "nsenter", f"--mount={CHROOT_MOUNTS}", "--", *args]


def as_user(*args):
    return in_chroot("runuser", "-u", USER, "--", "env", "-C", f"/home/{USER}",
                     f"XDG_RUNTIME_DIR=/run/user/{UID}", f"HOME=/home/{USER}", *args)


def run(cmd, check=True):
    return subprocess.run([str(c) for c in cmd], check=check, capture_output=True, text=True)


def available():
    """Rootless Podman and its user are set up (scripts/test.sh does it)."""
    if not Path(CHROOT_MOUNTS).exists():
        return False
    return run(as_user("podman", "image", "exists", IMAGE), check=False).returncode == 0


@contextmanager
def underlay(lab):
    """Host B's namespace on a veth from this host's; gone with the lab and the link."""
    host_b = lab.ns("rlb")
    run(["ip", "link", "add", LINK[0], "type", "veth", "peer", "name", LINK[1], "netns", host_b])
    try:
        run(["ip", "addr", "add", f"{HOST_A}/30", "dev", LINK[0]])
        run(["ip", "link", "set", LINK[0], "up"])
        run(["ip", "-n", host_b, "addr", "add", f"{HOST_B}/30", "dev", LINK[1]])
        run(["ip", "-n", host_b, "link", "set", LINK[1], "up"])
        yield host_b
    finally:
        run(["ip", "link", "del", LINK[0]], check=False)


def other_host(lab, host_b, tunnel_port):
    """Host B serves the user's network to a rootful container through flatnet-cni, with this
    host's lighthouse; a sink in that container and one in host B's own namespace. Returns
    the container's Flatnet address."""
    lighthouse = CHROOT / STATE.lstrip("/") / "lighthouse.json"
    host = lab.host_in(host_b, f"{HOST_B}:{tunnel_port}", lighthouse, network=FLATNET,
                       subnets=(SUBNET,))
    container, ip = lab.attach(host, "rlb1")
    for ns in (container, host_b):
        lab.spawn(ns, "python3", "-c", SINK)
        lab.wait_port(ns, SINK_PORT)
    return ip


@contextmanager
def networks(port):
    """A root flatnetd with a user socket granting the user a network, and the user's bridge."""
    (CHROOT / GRANTS.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    (CHROOT / GRANTS.lstrip("/")).write_text(json.dumps(
        {"networks": {FLATNET: {"subnets": [SUBNET], "users": [USER],
                                # Podman allocates in it, clear of host B's addresses.
                                "blocks": {USER: [USER_BLOCK]}}}}))
    run(in_chroot("flatnetd", "--state-dir", STATE, "start", f"--listen={HOST_A}:{port}",
                  f"--user-socket={SOCKET}", f"--users={GRANTS}", f"--lighthouse={STATE}/lighthouse.json"))
    try:
        run(as_user("podman", "network", "create", "-d", "flatnet", "-o", f"user_socket={SOCKET}", FLATNET))
        run(as_user("podman", "network", "create", "--subnet", "10.232.0.0/24", BRIDGE))
        yield
    finally:
        run(as_user("podman", "rm", "-f", "-t", "0", "fnb-s", "fnb-c"), check=False)
        run(as_user("podman", "network", "rm", "-f", FLATNET, BRIDGE), check=False)
        run(in_chroot("flatnetd", "--state-dir", STATE, "stop"), check=False)
        (CHROOT / GRANTS.lstrip("/")).unlink(missing_ok=True)


def throughput(network, megabytes):
    """Gbit/s of one TCP stream between two of the user's containers on `network`. busybox nc
    closes a connection when its own stdin ends: the listener's never does."""
    run(as_user("podman", "run", "-d", "--name", "fnb-s", "--network", network, IMAGE,
                "sh", "-c", f"while true; do sleep 600 | nc -l -p {SINK_PORT} > /dev/null; done"))
    try:
        return throughput_to(network, "fnb-s", megabytes)
    finally:
        run(as_user("podman", "rm", "-f", "-t", "0", "fnb-s"), check=False)


def throughput_to(network, target, megabytes):
    """Gbit/s of one TCP stream from a user's container on `network` to the sink at `target`."""
    run(as_user("podman", "run", "-d", "--name", "fnb-c", "--network", network, IMAGE, "sleep", "600"))
    try:
        # busybox date has no %N: /proc/uptime's hundredths, microseconds out.
        send = (f"set -o pipefail; s=$(cut -d' ' -f1 /proc/uptime); dd if=/dev/zero bs=65536 "
                f"count={megabytes * 16} 2>/dev/null | nc {target} {SINK_PORT} && "
                f"e=$(cut -d' ' -f1 /proc/uptime) && "
                f"awk \"BEGIN {{ printf \\\"%d\\\", ($e - $s) * 1000000 }}\"")
        for _ in range(50):  # the listener's first loop may still be starting
            out = run(as_user("podman", "exec", "fnb-c", "sh", "-c", send), check=False)
            if out.returncode == 0 and out.stdout.strip().isdigit() and int(out.stdout) > 0:
                return megabytes * 8 * 1.048576 / (int(out.stdout.strip()) / 1e6)
            time.sleep(0.1)
        raise RuntimeError(f"no transfer over {network} to {target}: {out.stderr}")
    finally:
        run(as_user("podman", "rm", "-f", "-t", "0", "fnb-c"), check=False)


def run_cost(network, count):
    """Milliseconds of `podman run --rm ... true` on `network`, after one warm-up run."""
    times = []
    for i in range(count + 1):
        started = time.perf_counter()
        run(as_user("podman", "run", "--rm", "--network", network, IMAGE, "true"))
        if i > 0:
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def rootless(rounds, megabytes, runs, port, lab):
    """Paired rounds of every figure; None when rootless Podman is not set up here. `lab`
    (bench.Lab) holds host B's namespaces and processes."""
    if not available():
        return None
    with underlay(lab) as host_b, networks(port):
        remote_ip = other_host(lab, host_b, port + 1)
        rows = []
        for _ in range(rounds):
            rows.append({
                "flatnet_gbps": throughput(FLATNET, megabytes) / 1000,
                "bridge_gbps": throughput(BRIDGE, megabytes) / 1000,
                "flatnet_two_hosts_gbps": throughput_to(FLATNET, remote_ip, megabytes) / 1000,
                "pasta_two_hosts_gbps": throughput_to("pasta", HOST_B, megabytes) / 1000,
                "flatnet_run_ms": run_cost(FLATNET, runs),
                "pasta_run_ms": run_cost("pasta", runs),
            })
    median = lambda key: statistics.median(r[key] for r in rows)
    ratio = lambda a, b: statistics.median(r[a] / r[b] for r in rows)
    figures = {key: median(key) for key in rows[0]}
    return {"rounds": rows, "megabytes": megabytes, **figures,
            "ratio_to_bridge": ratio("flatnet_gbps", "bridge_gbps"),
            "two_hosts_ratio_to_pasta": ratio("flatnet_two_hosts_gbps", "pasta_two_hosts_gbps")}


def table(r):
    return ["", "ROOTLESS PODMAN (one user's containers; same rounds)",
            f"  container to container, 1 TCP stream: Flatnet {r['flatnet_gbps']:.2f} Gbit/s, "
            f"rootless bridge (pasta's namespace) {r['bridge_gbps']:.2f} Gbit/s, x{r['ratio_to_bridge']:.2f}",
            f"  to another host, 1 TCP stream: Flatnet (to a container there, through the tunnel) "
            f"{r['flatnet_two_hosts_gbps']:.2f} Gbit/s, default network (pasta, to the host) "
            f"{r['pasta_two_hosts_gbps']:.2f} Gbit/s, x{r['two_hosts_ratio_to_pasta']:.2f}",
            f"  podman run --rm true: Flatnet p50 {r['flatnet_run_ms']:.0f} ms, "
            f"default network (pasta) p50 {r['pasta_run_ms']:.0f} ms "
            f"(+{r['flatnet_run_ms'] - r['pasta_run_ms']:.0f} ms)"]
