#!/usr/bin/env python3
"""Flatnet's benchmark: the data plane against a plain veth pair, DNS answers against dnsmasq
over veth, a published port against Podman's bridge with -p, attach latency, memory, rootless
Podman against its own networking (bench_rootless.py).

Runs as root on the machine itself; all traffic stays inside network namespaces this script
creates (192.0.2.0/24 underlay, 198.51.100.0/24 Flatnet) and loopback. Every process it starts
it stops by PID. Nothing here asserts a timing: it measures and reports.

    scripts/bench.py                 full run (about 4 minutes)
    scripts/bench.py --quick         short setting, what CI runs to prove the benchmark works
    scripts/bench.py --previous DIR  also the data plane of another build (DIR holds its release
                                     binaries), in the same interleaved rounds: ratios to it
    scripts/bench.py --anchors       the data plane only, with Nebula, wireguard-go and boringtun
                                     across two host namespaces in the same rounds (make
                                     bench-anchors installs them): ratios to the best anchor of
                                     each round, and the cipher's own ceiling
                                     (benches/cipher_ceiling.rs)

Output: a table on the terminal, bench-results/bench.json and bench-results/bench.svg
(bench-anchors.json and .svg with --anchors).
"""

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import bench_rootless

ROOT = Path(__file__).resolve().parent.parent
RELEASE = ROOT / "target" / "release"
DAEMON = RELEASE / "flatnetd"
IMAGE = "localhost/flatnet-test:latest"
PORT = 4870  # clear of the defaults other Flatnet networks on this machine use
PREFIX = f"fnb{os.getpid() % 10000}"
ANCHORS = Path(os.environ.get("FLATNET_ANCHORS", "/opt/flatnet-anchors"))
# The anchors' overlay: a documentation range of its own, inside their two host namespaces.
ANCHOR_IPS = ("203.0.113.1", "203.0.113.2")
ANCHOR_MTU = "1420"


def sh(*args, check=True, **kw):
    return subprocess.run([str(a) for a in args], check=check, capture_output=True, text=True, **kw)


def netns(name):
    sh("ip", "netns", "add", name)
    sh("ip", "-n", name, "link", "set", "lo", "up")
    return name


def in_ns(ns, *args):
    return ["ip", "netns", "exec", ns, *[str(a) for a in args]]


class Lab:
    """Namespaces, daemons and containers made for the run; all removed on exit. `release` is
    the directory of the build under test (flatnet-cni starts the flatnetd beside it)."""

    def __init__(self, release=RELEASE):
        self.release = Path(release)
        self.namespaces = []
        self.state_dirs = []
        self.attached = []  # (host ns, conf, container ns, id)
        self.processes = []  # started here, stopped by PID on close
        self.files = []
        self.tmpdirs = []  # the anchors' keys and configs

    def ns(self, role):
        name = netns(f"{PREFIX}-{role}")
        self.namespaces.append(name)
        return name

    def veth(self, a, b, addr_a, addr_b, names=("v0", "v1")):
        sh("ip", "-n", a, "link", "add", names[0], "type", "veth", "peer", "name", names[1], "netns", b)
        sh("ip", "-n", a, "addr", "add", f"{addr_a}/24", "dev", names[0])
        sh("ip", "-n", b, "addr", "add", f"{addr_b}/24", "dev", names[1])
        sh("ip", "-n", a, "link", "set", names[0], "up")
        sh("ip", "-n", b, "link", "set", names[1], "up")

    def host(self, role, endpoint, lighthouse, subnets=("198.51.100.0/24",)):
        return self.host_in(self.ns(role), endpoint, lighthouse, subnets=subnets)

    def host_in(self, ns, endpoint, lighthouse, network="bench", subnets=("198.51.100.0/24",)):
        """A host in namespace `ns`: flatnet-cni's network there, its flatnetd (started by
        the first ADD) on `endpoint`."""
        state = Path(tempfile.mkdtemp(prefix="flatnet-bench-"))
        self.state_dirs.append(state)
        conf = json.dumps({
            "cniVersion": "1.0.0", "name": network, "type": "flatnet-cni",
            "subnets": [{"subnet": s} for s in subnets], "stateDir": str(state),
            "lighthouse": str(lighthouse), "endpoint": endpoint,
            "tunnelPort": int(endpoint.rsplit(":", 1)[1]),
        })
        return {"ns": ns, "conf": conf, "state": state}

    def cni(self, host, command, container_ns, cid, name=""):
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": f"/run/netns/{container_ns}",
               "CNI_IFNAME": "eth0", "CNI_PATH": str(self.release), "PATH": os.environ["PATH"],
               "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAME={name}"}
        started = time.perf_counter()
        cni = self.release / "flatnet-cni"
        out = subprocess.run(in_ns(host["ns"], cni), input=host["conf"], env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        if out.returncode != 0:
            raise RuntimeError(f"{command} failed: {out.stdout} {out.stderr}")
        return out.stdout, elapsed

    def attach(self, host, role, name="", family=4):
        """A container; returns its namespace and its address of `family` (4 or 6)."""
        ns = self.ns(role)
        out, _ = self.cni(host, "ADD", ns, ns, name)
        self.attached.append((host, ns))
        addresses = [ip["address"].split("/")[0] for ip in json.loads(out)["ips"]]
        return ns, next(a for a in addresses if (":" in a) == (family == 6))

    def detach(self, host, ns):
        _, elapsed = self.cni(host, "DEL", ns, ns)
        self.attached.remove((host, ns))
        return elapsed

    def daemon(self, host):
        out = sh(self.release / "flatnetd", "--state-dir", host["state"], "status", "--json")
        return json.loads(out.stdout)

    def spawn(self, ns, *args, log=None):
        out = open(log, "w") if log else subprocess.DEVNULL
        process = subprocess.Popen(in_ns(ns, *args), stdout=out, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def wait_port(self, ns, port):
        wait_port(ns, port)

    def tmpdir(self):
        path = Path(tempfile.mkdtemp(prefix="flatnet-bench-"))
        self.tmpdirs.append(path)
        return path

    def close(self):
        for process in self.processes:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for path in self.files:
            Path(path).unlink(missing_ok=True)
        for path in self.tmpdirs:
            shutil.rmtree(path, ignore_errors=True)
        for host, ns in list(self.attached):
            try:
                self.detach(host, ns)
            except RuntimeError:
                pass
        for state in self.state_dirs:
            sh(self.release / "flatnetd", "--state-dir", state, "stop", check=False)
            shutil.rmtree(state, ignore_errors=True)
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)


@contextmanager
def lab(release=RELEASE):
    l = Lab(release)
    try:
        yield l
    finally:
        l.close()


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def wait_port(ns, port, proto="tcp"):
    flag = "-ltn" if proto == "tcp" else "-lun"
    deadline = time.time() + 10
    while time.time() < deadline:
        if f":{port} " in sh(*in_ns(ns, "ss", flag), check=False).stdout:
            return
    raise RuntimeError(f"nothing listens on {port} in {ns}")


def iperf(client_ns, server_ns, server_ip, seconds, streams=1, udp_size=None, pids=()):
    port = 5201
    server = subprocess.Popen(in_ns(server_ns, "iperf3", "-s", "-1", "-p", port),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(server_ns, port)
        args = ["iperf3", "-c", server_ip, "-p", port, "-t", seconds, "-J", "-P", streams]
        if udp_size:
            args += ["-u", "-b", "0", "-l", udp_size]
        cpu0 = cpu_seconds(pids)
        out = sh(*in_ns(client_ns, *args))
        cpu = cpu_seconds(pids) - cpu0
    finally:
        server.wait(timeout=15)
    end = json.loads(out.stdout)["end"]
    if udp_size:
        bps = end["sum"]["bits_per_second"] * (1 - end["sum"].get("lost_percent", 0) / 100)
    else:
        bps = end["sum_received"]["bits_per_second"]
    gbit = bps * seconds / 1e9
    return {"gbps": bps / 1e9, "cpu_s": cpu, "gbit_per_cpu_s": (gbit / cpu) if cpu > 0 else None}


def rtt(client_ns, ip, count, interval):
    out = sh(*in_ns(client_ns, "ping", "-c", count, "-i", interval, "-n", ip))
    times = [float(t) for t in re.findall(r"time=([\d.]+) ms", out.stdout)]
    times.sort()
    return {"median_ms": statistics.median(times), "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))]}


def scenario_veth(l):
    a, b = l.ns("va"), l.ns("vb")
    l.veth(a, b, "192.0.2.1", "192.0.2.2")
    return a, b, "192.0.2.2", []


def scenario_same_host(l):
    lighthouse = Path(tempfile.mkdtemp(prefix="flatnet-bench-lh-")) / "lighthouse.json"
    h = l.host("sh", f"127.0.0.1:{PORT}", lighthouse)
    a, _ = l.attach(h, "sa")
    b, ip_b = l.attach(h, "sb")
    return a, b, ip_b, [l.daemon(h)["pid"]]


def scenario_two_hosts(l, workers=None):
    """`workers`: the daemons' sealing workers (flatnetd's default if none)."""
    lighthouse = Path(tempfile.mkdtemp(prefix="flatnet-bench-lh-")) / "lighthouse.json"
    h1 = l.host("h1", f"192.0.2.11:{PORT}", lighthouse)
    h2 = l.host("h2", f"192.0.2.12:{PORT}", lighthouse)
    l.veth(h1["ns"], h2["ns"], "192.0.2.11", "192.0.2.12", names=("u1", "u2"))
    if workers is not None:
        for h, endpoint in ((h1, "192.0.2.11"), (h2, "192.0.2.12")):
            sh(*in_ns(h["ns"], l.release / "flatnetd", "--state-dir", h["state"], "start",
                      "--lighthouse", lighthouse, "--listen", f"{endpoint}:{PORT}", "--workers", workers))
    a, _ = l.attach(h1, "ta")
    b, ip_b = l.attach(h2, "tb")
    return a, b, ip_b, [l.daemon(h1)["pid"], l.daemon(h2)["pid"]]


def scenario_two_hosts_ipv6(l):
    """The two-host scenario with a dual-stack network over an IPv6 underlay, measured over the
    containers' IPv6 addresses."""
    lighthouse = Path(tempfile.mkdtemp(prefix="flatnet-bench-lh-")) / "lighthouse.json"
    subnets = ("198.51.100.0/24", "fd77:b::/64")
    h1 = l.host("s1", f"[2001:db8::11]:{PORT}", lighthouse, subnets)
    h2 = l.host("s2", f"[2001:db8::12]:{PORT}", lighthouse, subnets)
    l.veth(h1["ns"], h2["ns"], "192.0.2.11", "192.0.2.12", names=("u1", "u2"))
    for h, ip, dev in ((h1, "2001:db8::11", "u1"), (h2, "2001:db8::12", "u2")):
        sh("ip", "-n", h["ns"], "-6", "addr", "add", f"{ip}/64", "dev", dev, "nodad")
    a, _ = l.attach(h1, "6a", family=6)
    b, ip_b = l.attach(h2, "6b", family=6)
    return a, b, ip_b, [l.daemon(h1)["pid"], l.daemon(h2)["pid"]]


def underlay_pair(l, tag):
    """Two host namespaces on a veth underlay, as in the two-host scenario."""
    h1, h2 = l.ns(f"{tag}1"), l.ns(f"{tag}2")
    l.veth(h1, h2, "192.0.2.11", "192.0.2.12", names=("u1", "u2"))
    return h1, h2


def wait_for(what, ready, seconds=10):
    deadline = time.time() + seconds
    while not ready():
        if time.time() > deadline:
            raise RuntimeError(f"{what} did not come up")
        time.sleep(0.05)


def has_address(ns, dev, ip):
    return f"inet {ip}/" in sh("ip", "-n", ns, "addr", "show", "dev", dev, check=False).stdout


def anchor(program):
    """An anchor's binary as scripts/install-anchors.sh put it (trixie's builds under
    ANCHORS/trixie, boringtun under ANCHORS/bin)."""
    for found in (ANCHORS / "trixie" / "usr" / "bin" / program, ANCHORS / "bin" / program):
        if found.exists():
            return found
    return None


def anchor_versions():
    """The anchors' versions as installed (their packages' versions)."""
    files = {"nebula": ANCHORS / "trixie" / "nebula.version",
             "wireguard_go": ANCHORS / "trixie" / "wireguard-go.version",
             "boringtun": ANCHORS / "boringtun.version"}
    return {name: f.read_text().strip() for name, f in files.items() if f.exists()}


def scenario_nebula(l):
    """Nebula (trixie's package) in each host namespace, peers by static_host_map, MTU 1420,
    its own certificates, a firewall that lets everything through."""
    h1, h2 = underlay_pair(l, "nb")
    pki = l.tmpdir()
    nebula_cert = anchor("nebula-cert")
    sh(nebula_cert, "ca", "-name", "flatnet-bench", "-out-crt", pki / "ca.crt", "-out-key", pki / "ca.key")
    pids = []
    for i, (ns, ip) in enumerate(zip((h1, h2), ANCHOR_IPS)):
        peer = ANCHOR_IPS[1 - i]
        sh(nebula_cert, "sign", "-ca-crt", pki / "ca.crt", "-ca-key", pki / "ca.key", "-name", f"h{i}",
           "-ip", f"{ip}/24", "-out-crt", pki / f"h{i}.crt", "-out-key", pki / f"h{i}.key")
        everything = [{"port": "any", "proto": "any", "host": "any"}]
        config = {
            "pki": {"ca": str(pki / "ca.crt"), "cert": str(pki / f"h{i}.crt"), "key": str(pki / f"h{i}.key")},
            "static_host_map": {peer: [f"192.0.2.{12 - i}:4242"]},
            "lighthouse": {"am_lighthouse": False, "hosts": []},
            "listen": {"host": "0.0.0.0", "port": 4242},
            "punchy": {"punch": False},
            "tun": {"dev": "nebula1", "mtu": int(ANCHOR_MTU)},
            "logging": {"level": "error"},
            "firewall": {"outbound": everything, "inbound": everything},
        }
        (pki / f"h{i}.yml").write_text(json.dumps(config))  # JSON is YAML
        pids.append(l.spawn(ns, anchor("nebula"), "-config", pki / f"h{i}.yml", log=pki / f"h{i}.log").pid)
        wait_for(f"nebula in {ns}", lambda: has_address(ns, "nebula1", ip))
    return h1, h2, ANCHOR_IPS[1], pids


def scenario_boringtun(l):
    """boringtun-cli 0.7 (its default 4 threads) in each host namespace, configured with `wg`
    through its configuration socket, MTU 1420."""
    def start(ns, name, log):
        return l.spawn(ns, anchor("boringtun-cli"), name, "--foreground", "--disable-drop-privileges",
                       "--log", log)
    return userspace_wireguard(l, "bt", start)


def scenario_wireguard_go(l):
    """wireguard-go (trixie's package, with TUN segmentation offload and batched I/O) in each
    host namespace, configured with `wg` through its socket, MTU 1420."""
    def start(ns, name, log):
        # It refuses to run on Linux unless told the kernel's module is not wanted.
        return l.spawn(ns, "env", "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1",
                       anchor("wireguard-go"), "-f", name, log=log)
    return userspace_wireguard(l, "wg", start)


def userspace_wireguard(l, tag, start):
    """Two host namespaces each running a userspace WireGuard that `start(ns, name, log)`
    launches and that serves `wg` on /var/run/wireguard/<name>.sock; peered over the veth."""
    h1, h2 = underlay_pair(l, tag)
    keys = l.tmpdir()
    names = (f"{PREFIX}{tag}1", f"{PREFIX}{tag}2")
    private = [sh("wg", "genkey").stdout.strip() for _ in names]
    public = [sh("wg", "pubkey", input=k).stdout.strip() for k in private]
    pids = []
    for i, (ns, name, ip) in enumerate(zip((h1, h2), names, ANCHOR_IPS)):
        socket_path = Path(f"/var/run/wireguard/{name}.sock")
        l.files.append(socket_path)
        pids.append(start(ns, name, keys / f"{name}.log").pid)
        wait_for(f"{tag} {name}", socket_path.exists)
        (keys / f"{name}.key").write_text(private[i])
        sh(*in_ns(ns, "wg", "set", name, "private-key", keys / f"{name}.key", "listen-port", "51820",
                  "peer", public[1 - i], "allowed-ips", f"{ANCHOR_IPS[1 - i]}/32",
                  "endpoint", f"192.0.2.{12 - i}:51820"))
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", name)
        sh("ip", "-n", ns, "link", "set", name, "mtu", ANCHOR_MTU, "up")
    return h1, h2, ANCHOR_IPS[1], pids


def scenario_two_hosts_0_workers(l):
    """Two hosts whose packet threads seal everything themselves."""
    return scenario_two_hosts(l, workers=0)


def scenario_two_hosts_2_workers(l):
    """Two hosts sealing on two workers each, whatever flatnetd's default on this machine."""
    return scenario_two_hosts(l, workers=2)


SCENARIOS = [("veth", scenario_veth), ("flatnet_same_host", scenario_same_host),
             ("flatnet_two_hosts", scenario_two_hosts),
             ("flatnet_two_hosts_ipv6", scenario_two_hosts_ipv6),
             ("flatnet_two_hosts_0_workers", scenario_two_hosts_0_workers),
             ("flatnet_two_hosts_2_workers", scenario_two_hosts_2_workers)]
ANCHOR_SCENARIOS = [("nebula", scenario_nebula), ("wireguard_go", scenario_wireguard_go),
                    ("boringtun", scenario_boringtun)]
ANCHOR_NAMES = [name for name, _ in ANCHOR_SCENARIOS]


def data_plane(rounds, seconds, pings, previous=None, anchors=False):
    """Rounds interleave the scenarios, so machine noise shows in every one of them. With
    `previous`, the Flatnet scenarios run with that build's binaries too; with `anchors`,
    the anchors (Nebula, wireguard-go, boringtun) join the rounds."""
    scenarios = [(name, make, RELEASE) for name, make in SCENARIOS]
    if anchors:
        scenarios += [(name, make, RELEASE) for name, make in ANCHOR_SCENARIOS]
    if previous:
        scenarios += [(name.replace("flatnet_", "previous_"), make, previous)
                      for name, make in SCENARIOS if name in ("flatnet_same_host", "flatnet_two_hosts")]
    results = {name: [] for name, _, _ in scenarios}
    for r in range(rounds):
        for name, make, release in scenarios:
            with lab(release) as l:
                a, b, ip_b, pids = make(l)
                sh(*in_ns(a, "ping", "-c", "3", "-i", "0.2", "-W", "2", ip_b))  # warm: handshakes
                row = {
                    "tcp1": iperf(a, b, ip_b, seconds, 1, pids=pids),
                    "tcp4": iperf(a, b, ip_b, seconds, 4, pids=pids),
                    "udp1200": iperf(a, b, ip_b, seconds, 1, udp_size=1200, pids=pids),
                    # Every 10 ms each hop's thread sleeps in between and must be woken; every
                    # 1 ms it is still warm. Both are real; the first is the conservative one.
                    "rtt": rtt(a, ip_b, pings, "0.01"),
                    "rtt_1ms": rtt(a, ip_b, pings, "0.001"),
                }
                results[name].append(row)
                print(f"  round {r + 1} {name}: tcp1 {row['tcp1']['gbps']:.2f} Gbit/s, "
                      f"rtt {row['rtt']['median_ms']:.3f} ms", file=sys.stderr)
    return results


def attach_latency(count):
    with lab() as l:
        lighthouse = Path(tempfile.mkdtemp(prefix="flatnet-bench-lh-")) / "lighthouse.json"
        h = l.host("at", f"127.0.0.1:{PORT}", lighthouse)
        ns, _ = l.attach(h, "warm")  # starts the daemon: not part of the measurement
        adds, dels = [], []
        for i in range(count):
            c = l.ns(f"a{i}")
            _, t = l.cni(h, "ADD", c, c)
            l.attached.append((h, c))
            adds.append(t * 1000)
            dels.append(l.detach(h, c) * 1000)
            sh("ip", "netns", "del", c)
            l.namespaces.remove(c)
        return {"add_ms": percentiles(adds), "del_ms": percentiles(dels)}


# Sends `count` DNS queries for NAME (type A) to SERVER:53 one after another, from inside a
# namespace; prints each round trip in ms as JSON. Hand-built: a measuring tool, not a resolver.
DNS_CLIENT = r"""
import json, socket, struct, sys, time
server, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
qname = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.connect((server, 53))
times = []
for i in range(count):
    query = struct.pack(">HHHHHH", i & 0xffff, 0x0100, 1, 0, 0, 0) + qname + struct.pack(">HH", 1, 1)
    start = time.perf_counter()
    s.send(query)
    while True:
        reply = s.recv(512)
        if reply[:2] == query[:2]:
            break
    assert struct.unpack(">H", reply[6:8])[0] >= 1, "no answer record"
    times.append((time.perf_counter() - start) * 1000)
print(json.dumps(times))
"""


def dns_queries(client_ns, server, name, count):
    out = sh(*in_ns(client_ns, "python3", "-c", DNS_CLIENT, server, name, count))
    return json.loads(out.stdout)


def dns_latency(rounds, count):
    """A Flatnet name answered by flatnetd at the gateway, against dnsmasq answering a local
    name over a veth pair (the kernel-only path), in interleaved rounds."""
    if not shutil.which("dnsmasq"):
        return None
    results = {"flatnet": [], "dnsmasq_veth": []}
    for _ in range(rounds):
        with lab() as l:
            lighthouse = Path(tempfile.mkdtemp(prefix="flatnet-bench-lh-")) / "lighthouse.json"
            h = l.host("dns", f"127.0.0.1:{PORT}", lighthouse)
            l.attach(h, "dweb", name="web")
            client, _ = l.attach(h, "dcl")
            results["flatnet"] += dns_queries(client, "198.51.100.1", "web", count)
        with lab() as l:
            a, b = l.ns("dva"), l.ns("dvb")
            l.veth(a, b, "192.0.2.1", "192.0.2.2")
            server = subprocess.Popen(in_ns(b, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
                                            "--no-resolv", "--no-hosts", "--bind-interfaces",
                                            "--listen-address=192.0.2.2", "--address=/web/192.0.2.5",
                                            "--user=root", "--pid-file="),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_port(b, 53, "udp")
                results["dnsmasq_veth"] += dns_queries(a, "192.0.2.2", "web", count)
            finally:
                server.kill()
                server.wait()
    report = {k: percentiles(v) for k, v in results.items()}
    report["ratio_p50"] = report["flatnet"]["p50"] / report["dnsmasq_veth"]["p50"]
    return report


def published_port(rounds, seconds):
    """TCP from the host into a container through `-p 127.0.0.1:PORT:5201`, on a Flatnet network
    and on Podman's own bridge network, in interleaved rounds (host Podman, CNI backend). The
    container is the host's root as an overlay (`--rootfs /:O`), for its iperf3."""
    if not shutil.which("podman"):
        return None
    results = {"bridge": [], "flatnet": []}
    with bench_network() as flatnet:
        for _ in range(rounds):
            for kind, network, port in (("bridge", "podman", 18771), ("flatnet", flatnet, 18772)):
                name = f"{PREFIX}-pp-{kind}"
                sh("podman", "rm", "-f", name, check=False)
                sh("podman", "run", "-d", "--name", name, "--network", network,
                   "-p", f"127.0.0.1:{port}:5201", "--rootfs", "/:O", "iperf3", "-s")
                try:
                    deadline = time.time() + 10
                    while ":5201 " not in sh("podman", "exec", name, "ss", "-ltn", check=False).stdout:
                        if time.time() > deadline:
                            raise RuntimeError(f"iperf3 does not listen in {name}")
                    out = sh("iperf3", "-c", "127.0.0.1", "-p", port, "-t", seconds, "-J")
                    results[kind].append(json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9)
                finally:
                    sh("podman", "rm", "-f", "-t", "0", name, check=False)
    report = {k: {"median_gbps": statistics.median(v), "min": min(v), "max": max(v)}
              for k, v in results.items()}
    report["ratio_to_bridge"] = statistics.median(
        [f / b for f, b in zip(results["flatnet"], results["bridge"])])
    return report


@contextmanager
def bench_network():
    """A Flatnet CNI network of the benchmark's own (own state directory and port)."""
    conflist = Path("/etc/cni/net.d/flatnet-bench.conflist")
    conflist.write_text(json.dumps({"cniVersion": "1.0.0", "name": "flatnet-bench", "plugins": [
        {"type": "flatnet-cni", "subnet": "10.230.0.0/24", "stateDir": "/run/flatnet-bench",
         "tunnelPort": PORT + 1, "capabilities": {"portMappings": True}}]}))
    try:
        yield "flatnet-bench"
    finally:
        sh(DAEMON, "--state-dir", "/run/flatnet-bench", "stop", check=False)
        conflist.unlink()


def percentiles(values):
    values = sorted(values)
    return {"p50": statistics.median(values), "p99": values[min(len(values) - 1, int(len(values) * 0.99))],
            "min": values[0], "max": values[-1]}


def podman_run(count):
    """`podman run ... true` on a Flatnet network against Podman's default network."""
    if not shutil.which("podman") or sh("podman", "image", "exists", IMAGE, check=False).returncode:
        return None
    with bench_network() as flatnet:
        times = {"default": [], "flatnet": []}
        for i in range(count + 1):
            for net, name in (("default", "podman"), ("flatnet", flatnet)):
                started = time.perf_counter()
                sh("podman", "run", "--rm", "--network", name, IMAGE, "true")
                if i > 0:  # the first run of each warms caches and starts the daemon
                    times[net].append((time.perf_counter() - started) * 1000)
        return {net: percentiles(t) for net, t in times.items()}


def memory(counts):
    with lab() as l:
        lighthouse = Path(tempfile.mkdtemp(prefix="flatnet-bench-lh-")) / "lighthouse.json"
        h = l.host("mem", f"127.0.0.1:{PORT}", lighthouse)
        sh(*in_ns(h["ns"], DAEMON, "--state-dir", h["state"], "start", "--lighthouse", lighthouse,
                  "--listen", f"127.0.0.1:{PORT}"))
        rss = {"idle": l.daemon(h)["rss_kib"]}
        attached = 0
        for target in counts:
            while attached < target:
                l.attach(h, f"m{attached}")
                attached += 1
            rss[str(target)] = l.daemon(h)["rss_kib"]
        top = str(counts[-1])
        rss["per_container_kib"] = (rss[top] - rss["idle"]) / counts[-1]
        return rss


def summarise(dp):
    """Medians, min-max, and each Flatnet figure's ratio to the veth figure of the same round."""
    out = {}
    for name, rows in dp.items():
        s = {}
        for metric in ("tcp1", "tcp4", "udp1200"):
            g = [r[metric]["gbps"] for r in rows]
            s[metric] = {"median_gbps": statistics.median(g), "min": min(g), "max": max(g)}
            eff = [r[metric]["gbit_per_cpu_s"] for r in rows if r[metric]["gbit_per_cpu_s"]]
            if eff:
                s[metric]["gbit_per_cpu_s"] = statistics.median(eff)
            if name != "veth":
                ratios = [r[metric]["gbps"] / v[metric]["gbps"] for r, v in zip(rows, dp["veth"])]
                s[metric]["ratio_to_veth"] = statistics.median(ratios)
        for key in ("rtt", "rtt_1ms"):
            med = [r[key]["median_ms"] for r in rows]
            p99 = [r[key]["p99_ms"] for r in rows]
            s[key] = {"median_ms": statistics.median(med), "p99_ms": statistics.median(p99),
                      "min": min(med), "max": max(med)}
            if name != "veth":
                ratios = [r[key]["median_ms"] / v[key]["median_ms"] for r, v in zip(rows, dp["veth"])
                          if v[key]["median_ms"] > 0]
                if ratios:
                    s[key]["ratio_to_veth"] = statistics.median(ratios)
        out[name] = s
    return out


def anchor_ratios(dp):
    """Flatnet across two hosts against each anchor and the best of them, paired by round: the
    median of the per-round ratios. Higher is better except for RTT."""
    names = [n for n in ANCHOR_NAMES if n in dp]
    if not names:
        return None
    flatnet = dp["flatnet_two_hosts"]
    figures = {
        "tcp1": lambda r: r["tcp1"]["gbps"],
        "tcp4": lambda r: r["tcp4"]["gbps"],
        "gbit_per_cpu_s": lambda r: r["tcp1"]["gbit_per_cpu_s"] or 0,
        "rtt": lambda r: r["rtt"]["median_ms"],
    }
    out = {}
    for figure, value in figures.items():
        pick = min if figure == "rtt" else max
        per_round = []
        for i, row in enumerate(flatnet):
            anchors = {name: value(dp[name][i]) for name in names}
            best = pick(anchors, key=anchors.get)
            per_round.append({"flatnet": value(row), **anchors, "best": best,
                              "ratio_to_best": value(row) / anchors[best] if anchors[best] else None})
        ratios = [r["ratio_to_best"] for r in per_round if r["ratio_to_best"] is not None]
        out[figure] = {"rounds": per_round, "ratio_to_best": statistics.median(ratios) if ratios else None}
        best_counts = {}
        for r in per_round:
            best_counts[r["best"]] = best_counts.get(r["best"], 0) + 1
        out[figure]["best_anchor"] = max(best_counts, key=best_counts.get)
        for name in names:
            paired = [r["flatnet"] / r[name] for r in per_round if r[name]]
            out[figure][f"ratio_to_{name}"] = statistics.median(paired) if paired else None
    return out


def cipher_ceiling(summary):
    """The AEAD's own speed on one core (benches/cipher_ceiling.rs) and each two-host tunnel's
    Gbit per CPU-second as a share of what it allows at the packet size the tunnels seal."""
    out = sh("cargo", "bench", "--quiet", "--bench", "cipher_ceiling", "--", "--json", cwd=ROOT)
    figures = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    packet = next(f for f in figures if f["implementation"].startswith("snow") and f["size"] < 2000)
    shares = {}
    for name, s in summary.items():
        eff = s["tcp1"].get("gbit_per_cpu_s")
        if eff and name != "veth" and "same_host" not in name:
            shares[name] = {"gbit_per_cpu_s": eff,
                            "per_cent": 100 * eff / packet["ceiling_gbit_per_cpu_s"]}
    return {"figures": figures, "packet": packet, "shares": shares}


def table(report):
    lines = ["", "DATA PLANE (median of rounds; [min-max]; x = ratio to veth in the same round)"]
    lines.append(f"{'scenario':<27} {'TCP 1 stream':>26} {'TCP 4 streams':>26} {'UDP 1200 B':>26} "
                 f"{'RTT med/p99 ms':>17} {'(1 ms pings)':>17} {'Gbit per CPU-s':>15}")
    rtt_ratios = []
    for name, s in report["summary"].items():
        def cell(m):
            c = s[m]
            ratio = f" x{c['ratio_to_veth']:.3f}" if "ratio_to_veth" in c else ""
            return f"{c['median_gbps']:.2f} [{c['min']:.2f}-{c['max']:.2f}]{ratio}"
        eff = s["tcp1"].get("gbit_per_cpu_s")
        lines.append(f"{name:<27} {cell('tcp1'):>26} {cell('tcp4'):>26} {cell('udp1200'):>26} "
                     f"{s['rtt']['median_ms']:>8.3f}/{s['rtt']['p99_ms']:<8.3f} "
                     f"{s['rtt_1ms']['median_ms']:>8.3f}/{s['rtt_1ms']['p99_ms']:<8.3f} "
                     f"{(f'{eff:.2f}' if eff else '-'):>15}")
        if "ratio_to_veth" in s["rtt"]:
            rtt_ratios.append(f"{name} x{s['rtt']['ratio_to_veth']:.1f} "
                              f"(1 ms pings x{s['rtt_1ms'].get('ratio_to_veth', 0):.1f})")
    if rtt_ratios:
        lines.append("RTT median as a multiple of veth's: " + ", ".join(rtt_ratios))
    for where in ("same_host", "two_hosts"):
        now, before = report["rounds"].get(f"flatnet_{where}"), report["rounds"].get(f"previous_{where}")
        if now and before:
            tcp = statistics.median([a["tcp1"]["gbps"] / b["tcp1"]["gbps"] for a, b in zip(now, before)])
            rtt = statistics.median([a["rtt"]["median_ms"] / b["rtt"]["median_ms"] for a, b in zip(now, before)])
            lines.append(f"this build / previous build, {where}, same rounds: TCP 1 stream x{tcp:.3f}, "
                         f"RTT x{rtt:.2f}")
    two, none = report["rounds"].get("flatnet_two_hosts_2_workers"), report["rounds"].get("flatnet_two_hosts_0_workers")
    if two and none:
        paired = {m: statistics.median([a[m]["gbps"] / b[m]["gbps"] for a, b in zip(two, none)])
                  for m in ("tcp1", "tcp4")}
        rtt = statistics.median([a["rtt"]["median_ms"] / b["rtt"]["median_ms"] for a, b in zip(two, none)])
        lines.append(f"2 workers (sealing, opening) / none (flatnetd's default here: {report['machine']['default_workers']}), "
                     f"two hosts, same rounds: TCP 1 stream x{paired['tcp1']:.3f}, "
                     f"TCP 4 streams x{paired['tcp4']:.3f}, RTT x{rtt:.2f}")
    six, four = report["rounds"].get("flatnet_two_hosts_ipv6"), report["rounds"].get("flatnet_two_hosts")
    if six and four:
        paired = {m: statistics.median([a[m]["gbps"] / b[m]["gbps"] for a, b in zip(six, four)])
                  for m in ("tcp1", "tcp4")}
        lines.append(f"IPv6 / IPv4 (dual-stack network, each over its own underlay family), two hosts, "
                     f"same rounds: TCP 1 stream x{paired['tcp1']:.3f}, TCP 4 streams x{paired['tcp4']:.3f}")
    fast, two = report["summary"].get("flatnet_same_host"), report["summary"].get("flatnet_two_hosts")
    if fast and two:
        lines.append(f"4 streams / 1 stream: one host x{fast['tcp4']['median_gbps'] / fast['tcp1']['median_gbps']:.2f}, "
                     f"two hosts x{two['tcp4']['median_gbps'] / two['tcp1']['median_gbps']:.2f}")
    anchors = report.get("anchors")
    if anchors:
        lines += ["", "ANCHORS (Flatnet two hosts / anchor, paired by round, median; best = the better "
                      "anchor of each round)"]
        names = {"tcp1": "TCP 1 stream", "tcp4": "TCP 4 streams", "gbit_per_cpu_s": "Gbit per CPU-s",
                 "rtt": "RTT median (lower is better)"}
        for figure, label in names.items():
            a = anchors[figure]
            cells = ", ".join(f"{n} x{a[f'ratio_to_{n}']:.2f}" for n in ANCHOR_NAMES
                              if a.get(f"ratio_to_{n}") is not None)
            best = a["ratio_to_best"]
            lines.append(f"  {label:<30} best x{best:.2f}, mostly {a['best_anchor']} ({cells})"
                         if best else f"  {label:<30} -")
        versions = report.get("anchor_versions", {})
        lines.append("  versions: " + ", ".join(f"{n} {v}" for n, v in versions.items()))
    c = report.get("cipher")
    if c:
        packet = c["packet"]
        lines += ["", f"CIPHER (one core: {packet['implementation']} at {packet['size']} B seals "
                      f"{packet['seal_gbps']:.2f} Gbit/s, opens {packet['open_gbps']:.2f}; each byte sealed "
                      f"once and opened once: ceiling {packet['ceiling_gbit_per_cpu_s']:.2f} Gbit per CPU-s)"]
        for name, share in c["shares"].items():
            lines.append(f"  {name:<27} {share['gbit_per_cpu_s']:.2f} Gbit per CPU-s, "
                         f"{share['per_cent']:.0f} % of the ceiling")
        for f in c["figures"]:
            lines.append(f"  {f['implementation']:<30} {f['size']:>6} B: seal {f['seal_gbps']:.2f}, "
                         f"open {f['open_gbps']:.2f} Gbit/s, ceiling {f['ceiling_gbit_per_cpu_s']:.2f}")
    a = report.get("attach")
    if a:
        lines += ["", "ATTACH (flatnetd running)",
                  f"  ADD p50 {a['add_ms']['p50']:.1f} ms  p99 {a['add_ms']['p99']:.1f} ms   "
                  f"DEL p50 {a['del_ms']['p50']:.1f} ms  p99 {a['del_ms']['p99']:.1f} ms"]
    p = report.get("podman_run")
    if p:
        lines.append(f"  podman run ... true: default network p50 {p['default']['p50']:.0f} ms, "
                     f"Flatnet p50 {p['flatnet']['p50']:.0f} ms "
                     f"(+{p['flatnet']['p50'] - p['default']['p50']:.0f} ms)")
    d = report.get("dns")
    if d:
        lines += ["", "DNS (a Flatnet name from a container; anchor: dnsmasq over veth, same rounds)",
                  f"  flatnetd p50 {d['flatnet']['p50']:.3f} ms  p99 {d['flatnet']['p99']:.3f} ms   "
                  f"dnsmasq over veth p50 {d['dnsmasq_veth']['p50']:.3f} ms  "
                  f"p99 {d['dnsmasq_veth']['p99']:.3f} ms   x{d['ratio_p50']:.2f}"]
    pp = report.get("published_port")
    if pp:
        lines += ["", "PUBLISHED PORT (TCP host -> container, -p 127.0.0.1:P:5201, same rounds)",
                  f"  Podman bridge {pp['bridge']['median_gbps']:.2f} Gbit/s "
                  f"[{pp['bridge']['min']:.2f}-{pp['bridge']['max']:.2f}]   "
                  f"Flatnet {pp['flatnet']['median_gbps']:.2f} Gbit/s "
                  f"[{pp['flatnet']['min']:.2f}-{pp['flatnet']['max']:.2f}]   "
                  f"x{pp['ratio_to_bridge']:.3f} bridge"]
    m = report.get("memory")
    if m:
        counts = [k for k in m if k not in ("idle", "per_container_kib")]
        lines += ["", "MEMORY (flatnetd RSS)",
                  "  idle " + f"{m['idle'] / 1024:.1f} MiB; " +
                  "; ".join(f"{k} containers {m[k] / 1024:.1f} MiB" for k in counts) +
                  f"; {m['per_container_kib']:.1f} KiB per container"]
    if report.get("rootless"):
        lines += bench_rootless.table(report["rootless"])
    return "\n".join(lines)


def svg(report, path):
    """Bars: single-stream TCP per scenario (log scale would hide the story; two panels instead)."""
    s = report["summary"]
    names = list(s)
    w, left, bar = 820, 230, 26
    h = 45 + len(names) * (2 * bar + 14) + 30
    peak = max(s[n][m]["max"] for n in names for m in ("tcp1", "tcp4"))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
             f'<text x="10" y="20" font-size="15">Throughput, Gbit/s (median, whiskers min-max)</text>']
    colors = {"tcp1": "#3b6ea8", "tcp4": "#7fb069"}
    y = 45
    for n in names:
        parts.append(f'<text x="10" y="{y + 2 * bar - 8}">{n}</text>')
        for m in ("tcp1", "tcp4"):
            c = s[n][m]
            scale = (w - left - 120) / peak
            parts.append(f'<rect x="{left}" y="{y}" width="{c["median_gbps"] * scale:.1f}" height="{bar - 4}" fill="{colors[m]}"/>')
            parts.append(f'<line x1="{left + c["min"] * scale:.1f}" x2="{left + c["max"] * scale:.1f}" '
                         f'y1="{y + bar / 2 - 2}" y2="{y + bar / 2 - 2}" stroke="black"/>')
            label = f'{c["median_gbps"]:.2f}' + (f' (x{c["ratio_to_veth"]:.3f} veth)' if "ratio_to_veth" in c else "")
            parts.append(f'<text x="{left + c["median_gbps"] * scale + 6:.1f}" y="{y + bar - 10}">{m}: {label}</text>')
            y += bar
        y += 14
    parts.append(f'<text x="10" y="{h - 12}">RTT median: ' +
                 ", ".join(f'{n} {s[n]["rtt"]["median_ms"]:.3f} ms' for n in names) + "</text>")
    parts.append("</svg>")
    path.write_text("\n".join(parts))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short setting (CI): proves the benchmark runs")
    ap.add_argument("--out", default=str(ROOT / "bench-results"))
    ap.add_argument("--previous", help="release directory of another build to compare with")
    ap.add_argument("--rounds", type=int, help="rounds of the data plane (default 3, quick 1)")
    ap.add_argument("--anchors", action="store_true",
                    help="the data plane only, with the anchors (Nebula, wireguard-go, boringtun) "
                         "and the cipher's ceiling in the same run")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: run as root (namespaces, TUN devices)")
    for tool in ("iperf3", "ss", "ping"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} missing: run scripts/install-deps.sh")
    rounds, seconds, pings, attaches, runs, mem, queries = (
        (1, 1, 20, 10, 2, [1, 5], 50) if args.quick else (3, 5, 500, 100, 10, [1, 100, 250], 2000))

    rounds = args.rounds or rounds
    if args.anchors:
        missing = [t for t in ("nebula", "nebula-cert", "wireguard-go", "boringtun-cli") if not anchor(t)]
        missing += [] if shutil.which("wg") else ["wg"]
        if missing:
            sys.exit(f"bench: anchors missing ({', '.join(missing)}): "
                     "run scripts/install-anchors.sh (make bench-anchors does)")

    print("data plane ...", file=sys.stderr)
    dp = data_plane(rounds, seconds, pings, args.previous, args.anchors)
    report = {
        "machine": {"cores": os.cpu_count(), "kernel": os.uname().release, "quick": args.quick,
                    "default_workers": min(max(len(os.sched_getaffinity(0)) - 2, 0), 4),
                    "rounds": rounds, "seconds": seconds},
        "rounds": dp, "summary": summarise(dp), "anchors": anchor_ratios(dp),
    }
    if args.anchors:
        report["anchor_versions"] = anchor_versions()
        print("cipher ceiling ...", file=sys.stderr)
        report["cipher"] = cipher_ceiling(report["summary"])
    if not args.anchors:
        print("DNS ...", file=sys.stderr)
        report["dns"] = dns_latency(rounds, queries)
        print("published port ...", file=sys.stderr)
        report["published_port"] = published_port(rounds, seconds)
        print("attach latency ...", file=sys.stderr)
        report["attach"] = attach_latency(attaches)
        print("podman run ...", file=sys.stderr)
        report["podman_run"] = podman_run(runs)
        print("memory ...", file=sys.stderr)
        report["memory"] = memory(mem)
        print("rootless Podman ...", file=sys.stderr)
        with lab() as l:
            report["rootless"] = bench_rootless.rootless(rounds, 100 if args.quick else 1000,
                                                         runs, PORT + 2, l)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "bench-anchors" if args.anchors else "bench"
    (out / f"{name}.json").write_text(json.dumps(report, indent=2))
    svg(report, out / f"{name}.svg")
    print(table(report))
    print(f"\nwrote {out / (name + '.json')} and {out / (name + '.svg')}")


if __name__ == "__main__":
    main()
