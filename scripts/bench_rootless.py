"""Rootless Podman on Flatnet against the same user's own rootless networking, in one run
(part of scripts/bench.py): a user of the trixie chroot (scripts/setup-rootless.sh) runs
Podman 5 without root; Flatnet's plugin asks a root flatnetd on its user socket.

- container to container on one host: Flatnet against a rootless bridge network (Podman's
  way for one user's containers to talk, inside the rootless network namespace pasta serves);
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
def networks(port):
    """A root flatnetd with a user socket granting the user a network, and the user's bridge."""
    (CHROOT / GRANTS.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    (CHROOT / GRANTS.lstrip("/")).write_text(json.dumps(
        {"networks": {FLATNET: {"subnets": ["10.231.0.0/24"], "users": [USER]}}}))
    run(in_chroot("flatnetd", "--state-dir", STATE, "start", f"--listen=127.0.0.1:{port}",
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
                "sh", "-c", "while true; do sleep 600 | nc -l -p 5001 > /dev/null; done"))
    run(as_user("podman", "run", "-d", "--name", "fnb-c", "--network", network, IMAGE, "sleep", "600"))
    try:
        # busybox date has no %N: /proc/uptime's hundredths, microseconds out.
        send = (f"set -o pipefail; s=$(cut -d' ' -f1 /proc/uptime); dd if=/dev/zero bs=65536 "
                f"count={megabytes * 16} 2>/dev/null | nc fnb-s 5001 && e=$(cut -d' ' -f1 /proc/uptime) && "
                f"awk \"BEGIN {{ printf \\\"%d\\\", ($e - $s) * 1000000 }}\"")
        for _ in range(50):  # the listener's first loop may still be starting
            out = run(as_user("podman", "exec", "fnb-c", "sh", "-c", send), check=False)
            if out.returncode == 0 and out.stdout.strip().isdigit() and int(out.stdout) > 0:
                return megabytes * 8 * 1.048576 / (int(out.stdout.strip()) / 1e6)
            time.sleep(0.1)
        raise RuntimeError(f"no transfer over {network}: {out.stderr}")
    finally:
        run(as_user("podman", "rm", "-f", "-t", "0", "fnb-s", "fnb-c"), check=False)


def run_cost(network, count):
    """Milliseconds of `podman run --rm ... true` on `network`, after one warm-up run."""
    times = []
    for i in range(count + 1):
        started = time.perf_counter()
        run(as_user("podman", "run", "--rm", "--network", network, IMAGE, "true"))
        if i > 0:
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def rootless(rounds, megabytes, runs, port):
    """Paired rounds of both figures; None when rootless Podman is not set up here."""
    if not available():
        return None
    with networks(port):
        rows = []
        for _ in range(rounds):
            rows.append({
                "flatnet_gbps": throughput(FLATNET, megabytes) / 1000,
                "bridge_gbps": throughput(BRIDGE, megabytes) / 1000,
                "flatnet_run_ms": run_cost(FLATNET, runs),
                "pasta_run_ms": run_cost("pasta", runs),
            })
    median = lambda key: statistics.median(r[key] for r in rows)
    return {"rounds": rows, "megabytes": megabytes,
            "flatnet_gbps": median("flatnet_gbps"), "bridge_gbps": median("bridge_gbps"),
            "ratio_to_bridge": statistics.median(r["flatnet_gbps"] / r["bridge_gbps"] for r in rows),
            "flatnet_run_ms": median("flatnet_run_ms"), "pasta_run_ms": median("pasta_run_ms")}


def table(r):
    return ["", "ROOTLESS PODMAN (one user's containers, one host; same rounds)",
            f"  container to container, 1 TCP stream: Flatnet {r['flatnet_gbps']:.2f} Gbit/s, "
            f"rootless bridge (pasta's namespace) {r['bridge_gbps']:.2f} Gbit/s, x{r['ratio_to_bridge']:.2f}",
            f"  podman run --rm true: Flatnet p50 {r['flatnet_run_ms']:.0f} ms, "
            f"default network (pasta) p50 {r['pasta_run_ms']:.0f} ms "
            f"(+{r['flatnet_run_ms'] - r['pasta_run_ms']:.0f} ms)"]
