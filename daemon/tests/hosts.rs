//! Several Flatnet hosts on one machine sharing one file lighthouse (see `cluster`):
//! reachability, faults, and what is left afterwards. Needs root.

mod cluster;

use flatnet_test_support as support;
use flatnet_test_support::needs_root;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cluster::*;
use flatnet::state::StateDir;
use flatnet_test_support::TestNetns;
use serde_json::{json, Value};

#[test]
fn two_then_three_hosts_reach_each_other() {
    needs_root!();
    let mut cluster = Cluster::new(2);
    let (a, b) = (cluster.attach(0), cluster.attach(1));
    assert!(cluster.ping(a, b, 2) && cluster.ping(b, a, 2));
    cluster.tcp(a, b, 7100);
    cluster.tcp(b, a, 7101);

    cluster.add_host();
    let c = cluster.attach(2);
    let all = [a, b, c];
    for &from in &all {
        for &to in all.iter().filter(|&&t| t != from) {
            assert!(cluster.ping(from, to, 1), "{from} -> {to}");
        }
    }
    cluster.tcp(c, a, 7102);
    cluster.tcp(b, c, 7103);

    // Each host has its own key and endpoint; the addresses are unique cluster-wide.
    let keys: std::collections::HashSet<_> = (0..3)
        .map(|h| {
            cluster.status(h)["public_key"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(keys.len(), 3);
    let ips: std::collections::HashSet<_> = cluster.containers.iter().map(|c| c.ip).collect();
    assert_eq!(ips.len(), 3);
    for h in 0..3 {
        let peers = cluster.status(h)["peers"].as_array().unwrap().len();
        assert!(peers >= 2, "host {h} has tunnels to {peers} hosts");
    }
}

/// Before identifiers were allotted, a packet carried the FNV-1a hash of its network's name:
/// two names with the same hash were one network on the wire. The networks share a subnet (as
/// two Podman networks may), each on hosts of its own, so only the tag tells them apart.
#[test]
fn networks_whose_names_collide_in_a_32_bit_hash_stay_apart() {
    needs_root!();
    let (a, b) = flatnet::lighthouse::network_id::colliding_names("net-");
    let mut cluster = Cluster::new(4);
    let at = |last: u8| Ipv4Addr::new(198, 51, 100, last);
    cluster.network = a.clone();
    let (on_a, _) = cluster.attach_at(0, at(10));
    let (on_a_too, _) = cluster.attach_at(1, at(11));
    cluster.network = b.clone();
    let (on_b, _) = cluster.attach_at(2, at(20));
    let (on_b_too, _) = cluster.attach_at(3, at(21));

    assert!(cluster.ping(on_a, on_a_too, 1), "{a} works across hosts");
    assert!(cluster.ping(on_b, on_b_too, 1), "{b} works across hosts");
    let no_route = cluster.drops(0, "no_route");
    assert!(!cluster.ping(on_a, on_b, 2), "{a} reaches {b}");
    assert!(!cluster.ping(on_b_too, on_a_too, 2), "{b} reaches {a}");
    assert!(
        cluster.drops(0, "no_route") > no_route,
        "the crossing is dropped"
    );
    // Each host's status names its network's identifier: one per name, the same everywhere.
    let id = |host: usize| cluster.status(host)["networks"][0]["id"].clone();
    assert_eq!(id(0), id(1));
    assert_eq!(id(2), id(3));
    assert_ne!(id(0), id(2));
}

#[test]
fn kill_9_and_restart_keeps_the_outage_short() {
    needs_root!();
    let (cluster, a, b) = Cluster::connected_pair();
    let mut pinger = Pinger::start(&cluster, a, b, 0.1, 80);
    let mut seen = vec![pinger.next_reply().expect("ping runs")];

    let victim = cluster.daemon_pid(1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    let killed = Instant::now();
    // kill(2) returns before the process is gone: `start` must wait the dying daemon out (it
    // still accepts on its socket and holds its lock for a moment), as an operator's would.
    cluster.start_daemon(1);
    println!("restarted in {:?}", killed.elapsed());
    assert_ne!(cluster.daemon_pid(1), victim);

    seen.push(pinger.next_reply().expect("replies resume"));
    let (replies, outage) = pinger.finish(seen);
    println!("kill -9: {replies}/80 replies, longest outage {outage:.1} s");
    assert!(outage < 3.0, "outage {outage:.1} s");
    assert!(cluster.ping(b, a, 1), "the other direction works too");
    // The container kept its interface and address throughout.
    assert!(cluster.containers[b]
        .ns
        .ip(&["addr", "show", "eth0"])
        .contains("198.51.100."));
}

#[test]
fn stop_returns_once_the_lock_and_port_are_free() {
    needs_root!();
    let (cluster, a, b) = Cluster::connected_pair();
    let lock = cluster.hosts[0].state.path().join("flatnetd.lock");
    for round in 0..5 {
        cluster.stop_daemon(0);
        // Right after `stop` returns, a new daemon must be able to take over.
        let free = flatnet::state::FileLock::try_acquire(&lock).unwrap();
        assert!(free.is_some(), "round {round}: the lock is still held");
        drop(free);
        cluster.start_daemon(0);
    }
    assert!(cluster.ping(a, b, 1), "the restarted daemon serves");
}

/// One scrape of a metrics endpoint on a Unix socket: (status line, body).
fn scrape(socket: &Path, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: flatnetd\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// The value of one series (name with labels) in a scrape, 0 when absent.
fn series(body: &str, prefix: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn metrics_are_served_when_asked_and_move_with_traffic() {
    needs_root!();
    let (cluster, a, b) = Cluster::connected_pair();
    let socket = cluster.hosts[0].state.path().join("metrics.sock");
    cluster.stop_daemon(0);
    cluster.start_daemon_with(0, &[&format!("--metrics=unix:{}", socket.display())]);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the metrics socket is root's");

    let (status, before) = scrape(&socket, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        series(&before, "flatnet_containers{network=\"multihost\"}"),
        1.0,
        "{before}"
    );
    assert!(cluster.ping(a, b, 5));
    cluster.tcp(a, b, 7100);
    let (_, after) = scrape(&socket, "/metrics");
    for counter in [
        "flatnet_peer_transmit_bytes_total",
        "flatnet_peer_receive_bytes_total",
        "flatnet_peer_transmit_packets_total",
        "flatnet_peer_receive_packets_total",
        "flatnet_packet_thread_busy_seconds_total",
    ] {
        assert!(
            series(&after, counter) > series(&before, counter),
            "{counter} did not move:\n{after}"
        );
    }
    assert!(
        series(&after, "flatnet_handshakes_completed_total")
            + series(&after, "flatnet_peer_sessions")
            >= 1.0
    );
    assert_eq!(series(&after, "flatnet_lighthouse_healthy"), 1.0);
    assert!(scrape(&socket, "/").0.contains("404"));
    // A client that connects and says nothing holds the endpoint only until its timeout.
    let silent = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    assert_eq!(scrape(&socket, "/metrics").0, "HTTP/1.1 200 OK");
    drop(silent);
    // Asking a running daemon for metrics elsewhere is refused, not silently ignored.
    let h = &cluster.hosts[0];
    let elsewhere = in_ns(&h.ns.name, &[DAEMON, "--state-dir"])
        .arg(h.state.path())
        .args(["start", "--metrics", "127.0.0.1:9808"])
        .output()
        .unwrap();
    assert!(!elsewhere.status.success());
    assert!(String::from_utf8_lossy(&elsewhere.stderr).contains("already runs with metrics unix:"));

    // What it costs: resident memory with metrics on, and the time of a scrape.
    let started = Instant::now();
    let rounds = 50;
    for _ in 0..rounds {
        scrape(&socket, "/metrics");
    }
    let per_scrape = started.elapsed() / rounds;
    let rss = series(&after, "process_resident_memory_bytes") / 1024.0;
    println!(
        "metrics: {} bytes per scrape, {per_scrape:?} per scrape, flatnetd RSS {rss} KiB",
        after.len()
    );

    // The endpoint survives a restart on the last run's settings, and goes with the daemon.
    cluster.stop_daemon(0);
    assert!(
        !socket.exists(),
        "a stopped daemon leaves no metrics socket"
    );
    cluster.start_daemon(0);
    assert_eq!(scrape(&socket, "/metrics").0, "HTTP/1.1 200 OK");
}

#[test]
fn metrics_refuse_a_non_loopback_address() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(DAEMON)
        .args([
            "--state-dir",
            dir.path().to_str().unwrap(),
            "start",
            "--metrics",
            "192.0.2.1:9808",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"));
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing was started"
    );
}

#[test]
fn sigterm_and_sigint_stop_cleanly_and_a_restart_serves_again() {
    needs_root!();
    let (cluster, a, b) = Cluster::connected_pair();
    let state = cluster.hosts[1].state.path();
    for signal in [nix::sys::signal::SIGTERM, nix::sys::signal::SIGINT] {
        let pid = cluster.daemon_pid(1);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
        // A clean stop removes the control socket, then releases the lock.
        let deadline = Instant::now() + Duration::from_secs(10);
        while StateDir::new(state).control_socket().exists()
            || flatnet::state::FileLock::try_acquire(&state.join("flatnetd.lock"))
                .unwrap()
                .is_none()
        {
            assert!(Instant::now() < deadline, "{signal} did not stop flatnetd");
            std::thread::yield_now();
        }
        let log = std::fs::read_to_string(state.join("flatnetd.log")).unwrap();
        assert!(log.contains(&format!("{signal}: stopping")), "{log}");
        // The container kept its interface and address; a new daemon serves it again.
        assert!(cluster.containers[b]
            .ns
            .ip(&["addr", "show", "eth0"])
            .contains("198.51.100."));
        cluster.start_daemon(1);
        // The peer still holds the old daemon's session: the first packets re-handshake.
        let back = Instant::now();
        while !cluster.ping(a, b, 1) {
            assert!(
                back.elapsed() < Duration::from_secs(10),
                "not served after {signal}"
            );
        }
    }
}

#[test]
fn a_vanished_peer_costs_little_and_traffic_resumes() {
    needs_root!();
    let (cluster, a, b) = Cluster::connected_pair();

    // Host 1 drops off the underlay; host 0 restarts, so it must handshake again.
    cluster.hosts[1].ns.ip(&["link", "set", "eth0", "down"]);
    cluster.stop_daemon(0);
    cluster.start_daemon(0);
    let pid = cluster.daemon_pid(0);
    let cpu_before = cpu_seconds(pid);
    let window = Instant::now();
    let pinger = Pinger::start(&cluster, a, b, 0.1, 60);
    let (replies, _) = pinger.finish(Vec::new());
    let elapsed = window.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu_before;
    let peer = cluster.status(0)["peers"][0].clone();
    let handshakes = peer["handshakes_sent"].as_u64().unwrap();
    println!(
        "peer gone for {elapsed:.1} s: {handshakes} handshakes, daemon CPU {cpu:.2} s ({:.1}%)",
        100.0 * cpu / elapsed
    );
    assert_eq!(replies, 0);
    assert!(
        handshakes <= 10,
        "{handshakes} handshakes in {elapsed:.1} s: no backoff"
    );
    assert!(
        cpu / elapsed < 0.05,
        "daemon busy while its peer is gone: {cpu:.2} s CPU"
    );

    cluster.hosts[1].ns.ip(&["link", "set", "eth0", "up"]);
    let back = Instant::now();
    while !cluster.ping(a, b, 1) {
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "traffic did not resume"
        );
    }
    println!(
        "traffic resumed {:.1} s after the peer returned",
        back.elapsed().as_secs_f64()
    );
}

#[test]
fn garbage_is_dropped_and_counted_while_ping_goes_on() {
    needs_root!();
    let (cluster, a, b) = Cluster::connected_pair();
    // What garbage can be counted as (other reasons belong to the containers' own traffic).
    let counted = |c: &Cluster| -> u64 {
        let drops = &c.status(1)["drops"];
        [
            "malformed",
            "unknown_session",
            "bad_tag",
            "bad_handshake",
            "replay",
            "expired",
            "unknown_key",
            "stale_handshake",
            "bad_mac",
            "rate_limited",
        ]
        .iter()
        .map(|r| drops[r].as_u64().unwrap())
        .sum()
    };
    let before = counted(&cluster);
    let kernel_before = udp_receive_errors(&cluster.hosts[1].ns);
    let pinger = Pinger::start(&cluster, a, b, 0.05, 100);

    const GARBAGE: u64 = 100_000;
    let target = format!("{}:{TUNNEL_PORT}", cluster.hosts[1].address);
    let script = format!(
        r#"
import os, random, socket, struct
host, port = "{target}".split(":")
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
rnd = random.Random(7)
for i in range({GARBAGE}):
    kind = i % 100
    if kind < 40:   body = os.urandom(rnd.randrange(1, 1500))                      # random
    elif kind < 60: body = os.urandom(rnd.randrange(1, 16))                        # truncated
    elif kind < 62: body = os.urandom(rnd.randrange(9000, 65000))                  # oversized
    elif kind < 63: body = bytes([1, 0, 0, 0]) + os.urandom(124)                   # initiation-sized
    else:           body = struct.pack("<BxxxIQ", 4, rnd.getrandbits(32), i) + os.urandom(rnd.randrange(16, 1400))  # transport, bad tag
    while True:
        try:
            s.sendto(body, (host, int(port))); break
        except BlockingIOError:
            pass
"#
    );
    python_in(&cluster.hosts[0].ns.name, &script);
    let (replies, _) = pinger.finish(Vec::new());

    // Everything sent was either counted by flatnetd or dropped by the kernel before it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let counted = counted(&cluster) - before;
        let kernel = udp_receive_errors(&cluster.hosts[1].ns) - kernel_before;
        if counted + kernel >= GARBAGE || Instant::now() > deadline {
            println!("garbage: {counted} counted by flatnetd, {kernel} dropped by the kernel; ping {replies}/100");
            assert_eq!(counted + kernel, GARBAGE);
            break;
        }
        std::thread::yield_now();
    }
    assert!(replies >= 90, "ping suffered: {replies}/100");
    assert!(cluster.ping(a, b, 1), "the daemon still serves");
}

#[test]
fn a_handshake_flood_costs_little_and_no_ping_is_lost() {
    needs_root!();
    // Hosts 0 and 1 serve a container each; host 2 is the attacker on the same underlay.
    let mut cluster = Cluster::new(3);
    let (a, b) = (cluster.attach(0), cluster.attach(1));
    assert!(cluster.ping(a, b, 1), "the pair does not connect");
    let target_key = cluster.status(1)["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    let pid = cluster.daemon_pid(1);
    let cpu_before = cpu_seconds(pid);
    let (drops_before, status_before) = (cluster.status(1)["drops"].clone(), Instant::now());

    const RATE: u64 = 10_000;
    const SECONDS: u64 = 10;
    let pinger = Pinger::start(&cluster, a, b, 0.01, (SECONDS * 100) as u32);
    // Initiations with a valid header from one address: nine in ten with a random body (an
    // unknown key that does not even know ours), one in ten with a valid MAC (an attacker who
    // read our public key from the lighthouse) and a random Noise message.
    let target = format!("{}:{TUNNEL_PORT}", cluster.hosts[1].address);
    let script = format!(
        r#"
import base64, hashlib, os, socket, time
host, port = "{target}".split(":")
public = base64.b64decode("{target_key}")
mac_key = hashlib.blake2s(b"flatnet mac1 v1" + public).digest()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
start = time.monotonic()
for i in range({RATE} * {SECONDS}):
    body = bytes([1, 0, 0, 0]) + os.urandom(108)
    if i % 10 == 0:
        body += hashlib.blake2s(body, key=mac_key, digest_size=16).digest()
    else:
        body += os.urandom(16)
    s.sendto(body, (host, int(port)))
    if i % 100 == 99:
        ahead = start + (i + 1) / {RATE} - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
"#
    );
    python_in(&cluster.hosts[2].ns.name, &script);
    let flood_seconds = status_before.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu_before;
    let (replies, longest_gap) = pinger.finish(Vec::new());

    let sent = RATE * SECONDS;
    let delta = |status: &Value, reason: &str| {
        status["drops"][reason].as_u64().unwrap() - drops_before[reason].as_u64().unwrap()
    };
    // Every datagram is counted by its reason once flatnetd has read them all.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = cluster.status(1);
        let counted: u64 = [
            "bad_mac",
            "rate_limited",
            "bad_handshake",
            "receive_buffer_overflow",
        ]
        .iter()
        .map(|r| delta(&status, r))
        .sum();
        if counted >= sent || Instant::now() > deadline {
            break status;
        }
        std::thread::yield_now();
    };
    let (bad_mac, limited, bad_handshake, overflow) = (
        delta(&status, "bad_mac"),
        delta(&status, "rate_limited"),
        delta(&status, "bad_handshake"),
        delta(&status, "receive_buffer_overflow"),
    );
    println!(
        "flood: {sent} initiations in {flood_seconds:.1} s; flatnetd CPU {cpu:.2} s ({:.0}% of a core); \
         drops: bad_mac {bad_mac}, rate_limited {limited}, bad_handshake {bad_handshake}, \
         receive_buffer_overflow {overflow}; ping {replies}/{}, longest gap {longest_gap:.2} s",
        100.0 * cpu / flood_seconds,
        SECONDS * 100
    );
    assert_eq!(bad_mac + limited + bad_handshake + overflow, sent);
    // Only what passed the MAC and the per-source budget (20 at once, 20 a second) cost a
    // Diffie-Hellman.
    assert!(bad_handshake <= 20 + 20 * (flood_seconds.ceil() as u64 + 1));
    assert!(bad_mac >= sent * 8 / 10, "{bad_mac} dropped by the MAC");
    assert_eq!(
        replies as u64,
        SECONDS * 100,
        "pings were lost during the flood"
    );
    assert!(
        cpu < 0.5 * flood_seconds,
        "the flood took {cpu:.2} s of CPU in {flood_seconds:.1} s"
    );
}

#[test]
fn a_silent_control_client_blocks_nobody_and_is_cut_off() {
    needs_root!();
    let mut cluster = Cluster::new(1);
    let first = cluster.attach(0);
    let socket = StateDir::new(cluster.hosts[0].state.path()).control_socket();
    // Connects and sends nothing.
    let mut silent = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    // Attaches and status are served meanwhile, and the silent client is still connected.
    let second = cluster.attach(0);
    assert!(cluster.ping(first, second, 1));
    assert!(cluster.status(0)["containers"].as_array().unwrap().len() >= 2);
    silent.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let pending = std::io::Read::read(&mut silent, &mut byte);
    assert!(
        matches!(&pending, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the silent client was served or cut off before the others: {pending:?}"
    );
    // Then the daemon hangs up on it.
    silent.set_nonblocking(false).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(std::io::Read::read(&mut silent, &mut byte).unwrap(), 0);
}

#[test]
fn the_control_socket_refuses_callers_of_other_users() {
    needs_root!();
    let mut cluster = Cluster::new(1);
    cluster.attach(0);
    let socket = StateDir::new(cluster.hosts[0].state.path()).control_socket();
    // Effective uid nobody, file-system uid root: the path is reachable (its directory is
    // root's), so only the credentials check stands in the way.
    let script = format!(
        r#"
import ctypes, os, select, socket
os.seteuid(65534)
ctypes.CDLL(None).setfsuid(0)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect("{}")
# A slow caller: the daemon must not answer and close before the request is in.
select.select([s], [], [], 0.3)
s.sendall(b'{{"v":1,"op":"status"}}\n')
print(s.recv(65536).decode())
"#,
        socket.display()
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        answer.contains("uid 65534") && answer.contains("not allowed"),
        "{answer} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!answer.contains("public_key"), "status leaked: {answer}");
    // Root still gets its answer.
    assert!(cluster.status(0)["public_key"].is_string());
}

#[test]
fn a_reused_namespace_path_is_not_served_after_a_restart() {
    needs_root!();
    let mut cluster = Cluster::new(1);
    let (kept, gone) = (cluster.attach(0), cluster.attach(0));
    cluster.stop_daemon(0);
    // While no daemon runs, one container dies and its namespace path is taken by another's.
    let old = &cluster.containers[gone].ns;
    old.delete();
    support::run_ok("ip", &["netns", "add", &old.name]);
    cluster.start_daemon(0);

    let served: Vec<String> = cluster.status(0)["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["container_id"].as_str().unwrap().to_string())
        .collect();
    assert!(served.contains(&cluster.containers[kept].id));
    assert!(
        !served.contains(&cluster.containers[gone].id),
        "the reused path is served: {served:?}"
    );
    assert!(
        !old.has_link("eth0"),
        "a TUN device was made in the stranger's namespace"
    );
    let log = std::fs::read_to_string(cluster.hosts[0].state.path().join("flatnetd.log")).unwrap();
    assert!(log.contains("path was reused"), "{log}");
}

/// The capabilities the systemd unit leaves flatnetd, as `setpriv --bounding-set` takes them.
fn unit_capabilities() -> String {
    let unit = include_str!("../../packaging/flatnetd.service.in");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit bounds capabilities");
    let caps: Vec<String> = line
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    format!("-all,{}", caps.join(","))
}

#[test]
fn the_capabilities_the_unit_grants_are_enough() {
    needs_root!();
    let mut cluster = Cluster::new(2);
    // Host 0's daemon runs with only what the unit leaves it; host 1's as the plugins start it.
    let bounding = format!("--bounding-set={}", unit_capabilities());
    let h = &cluster.hosts[0];
    let started = in_ns(&h.ns.name, &["setpriv", &bounding, DAEMON, "--state-dir"])
        .arg(h.state.path())
        .arg("start")
        .arg("--lighthouse")
        .arg(cluster.shared.path().join("lighthouse.json"))
        .arg("--listen")
        .arg(format!("{}:{TUNNEL_PORT}", h.address))
        .status()
        .unwrap();
    assert!(started.success());
    let pid = cluster.daemon_pid(0);
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let bounded = proc_status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
        .unwrap();
    // CAP_NET_BIND_SERVICE (10), CAP_NET_ADMIN (12), CAP_SYS_ADMIN (21).
    assert_eq!(bounded, 1 << 10 | 1 << 12 | 1 << 21, "CapBnd {bounded:x}");

    let web = cluster.attach_named(0, "web");
    let local = cluster.attach(0);
    let remote = cluster.attach(1);
    assert!(cluster.ping(local, web, 1) && cluster.ping(remote, web, 1));
    assert!(cluster.ping(web, remote, 1));
    let answer = lookup(&cluster, local, "web");
    assert!(
        answer.contains(&cluster.containers[web].ip.to_string()),
        "{answer}"
    );
    assert_eq!(
        cluster.daemon_pid(0),
        pid,
        "the bounded daemon served it all"
    );
}

#[test]
fn a_daemon_started_by_a_plugin_is_detached_from_it() {
    needs_root!();
    // Without systemd (here), the fallback: a process in a session of its own. Under
    // systemd-run --scope the same process (it execs flatnetd) would be just as detached.
    let mut cluster = Cluster::new(1);
    cluster.attach(0);
    let pid = cluster.daemon_pid(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // After the name: state, ppid, pgrp, session.
    let (pgrp, session): (u32, u32) = (fields[2].parse().unwrap(), fields[3].parse().unwrap());
    assert_eq!(
        (pgrp, session),
        (pid, pid),
        "not a session leader of its own"
    );
}

#[test]
fn the_unit_is_told_when_flatnetd_serves_and_stops() {
    needs_root!();
    let cluster = Cluster::new(1);
    let h = &cluster.hosts[0];
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify");
    let systemd = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut daemon = in_ns(&h.ns.name, &[DAEMON, "--state-dir"])
        .arg(h.state.path())
        .args(["run", "--listen", &format!("{}:{TUNNEL_PORT}", h.address)])
        .env("NOTIFY_SOCKET", &socket_path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut message = [0u8; 64];
    let n = systemd.recv(&mut message).unwrap();
    assert_eq!(&message[..n], b"READY=1");
    // Ready means serving: the control socket answers at once.
    assert!(cluster.status(0)["pid"].as_u64().is_some());
    cluster.stop_daemon(0);
    let n = systemd.recv(&mut message).unwrap();
    assert_eq!(&message[..n], b"STOPPING=1");
    assert!(daemon.wait().unwrap().success());
}

/// UDP datagrams the kernel dropped for full receive buffers, in a namespace.
fn udp_receive_errors(ns: &TestNetns) -> u64 {
    let snmp = support::run_ok("ip", &["netns", "exec", &ns.name, "cat", "/proc/net/snmp"]);
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = udp.next().unwrap().split_whitespace().collect();
    let values: Vec<&str> = udp.next().unwrap().split_whitespace().collect();
    let at = names.iter().position(|n| *n == "RcvbufErrors").unwrap();
    values[at].parse().unwrap()
}

#[test]
fn spoofed_inner_source_is_dropped_and_counted() {
    needs_root!();
    let mut cluster = Cluster::new(2);
    let (a, b, other) = (cluster.attach(0), cluster.attach(1), cluster.attach(0));
    assert!(cluster.ping(a, b, 1));
    let before = cluster.drops(0, "spoofed");
    // From container a, a UDP packet claiming to come from container `other`.
    let (src, dst) = (cluster.containers[other].ip, cluster.containers[b].ip);
    let script = format!(
        r#"
import socket, struct
src, dst = socket.inet_aton("{src}"), socket.inet_aton("{dst}")
udp = struct.pack("!HHHH", 4000, 4001, 8 + 5, 0) + b"spoof"
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src, dst)
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for _ in range(5):
    s.sendto(ip + udp, ("{dst}", 0))
"#
    );
    python_in(&cluster.containers[a].ns.name, &script);
    let deadline = Instant::now() + Duration::from_secs(5);
    while cluster.drops(0, "spoofed") < before + 5 {
        assert!(
            Instant::now() < deadline,
            "spoofed packets were not dropped and counted"
        );
        std::thread::yield_now();
    }
    assert!(cluster.ping(a, b, 1), "genuine traffic still flows");
}

#[test]
fn a_container_cannot_reach_the_hosts_loopback_through_its_gateway() {
    needs_root!();
    let mut cluster = Cluster::new(1);
    let c = cluster.attach(0);
    let (host, ctr) = (
        cluster.hosts[0].ns.name.clone(),
        cluster.containers[c].ns.name.clone(),
    );
    let src = cluster.containers[c].ip;
    // Control: the same crafted packet to the host's own underlay address arrives (egress).
    let underlay = cluster.hosts[0].address.to_string();
    let listener = udp_listener(&host, &underlay, 5301);
    inject_udp(&ctr, src, &underlay, 5301);
    let heard = listener.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&heard.stdout).contains("received"));

    // To 127.0.0.1 it must not arrive (the member has route_localnet on), and flatnetd counts it.
    let before = cluster.drops(0, "no_route");
    let listener = udp_listener(&host, "127.0.0.1", 5302);
    inject_udp(&ctr, src, "127.0.0.1", 5302);
    let heard = listener.wait_with_output().unwrap();
    let heard = String::from_utf8_lossy(&heard.stdout);
    assert!(
        heard.contains("nothing"),
        "a container reached 127.0.0.1: {heard}"
    );
    assert!(cluster.drops(0, "no_route") >= before + 3);
}

#[test]
fn nothing_is_left_after_the_last_container() {
    needs_root!();
    let mut cluster = Cluster::new(2);
    cluster.start_daemon(0);
    let idle = cluster.status(0)["rss_kib"].as_u64().unwrap();
    let remote = cluster.attach(1);
    let local: Vec<usize> = (0..30).map(|_| cluster.attach(0)).collect();
    for &c in local.iter().step_by(5) {
        assert!(cluster.ping(c, remote, 1));
    }
    let busy = cluster.status(0)["rss_kib"].as_u64().unwrap();
    let detached = cluster.detach_all();

    let status = cluster.status(0);
    let after = status["rss_kib"].as_u64().unwrap();
    println!("flatnetd RSS: idle {idle} KiB, 30 containers {busy} KiB, after {after} KiB");
    assert_eq!(status["containers"].as_array().unwrap().len(), 0);
    assert_eq!(status["peers"].as_array().unwrap().len(), 0);
    assert_eq!(status["sessions"], 0);
    for c in &detached {
        assert!(
            !c.ns.has_link("eth0"),
            "{} still has its TUN device",
            c.ns.name
        );
    }
    assert!(after <= idle + 2048, "RSS {after} KiB vs idle {idle} KiB");
}

#[test]
fn names_resolve_and_host_members_answer_across_hosts() {
    needs_root!();
    let mut cluster = Cluster::new(2);
    let web = cluster.attach_named(0, "web");
    let db = cluster.attach_named(1, "DB");
    let (web_ip, db_ip) = (cluster.containers[web].ip, cluster.containers[db].ip);

    // Names resolve on their own host and across hosts (the lighthouse carries them).
    let answer = lookup(&cluster, web, "db");
    assert!(answer.contains(&db_ip.to_string()), "{answer}");
    let answer = lookup(&cluster, db, "web");
    assert!(answer.contains(&web_ip.to_string()), "{answer}");
    assert!(lookup(&cluster, web, "nobody").contains("NXDOMAIN"));

    // The host reaches containers by Flatnet address, its own and the other host's.
    for (host, target) in [(0, web_ip), (0, db_ip), (1, web_ip)] {
        let ping = in_ns(
            &cluster.hosts[host].ns.name,
            &["ping", "-c", "1", "-W", "2"],
        )
        .arg(target.to_string())
        .output()
        .unwrap();
        assert!(ping.status.success(), "host {host} -> {target}");
    }
    // Containers reach their own host at the gateway, another host at its member's address.
    let members: Vec<String> = (0..2)
        .map(|h| {
            cluster.status(h)["networks"][0]["address"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_ne!(
        members[0], members[1],
        "member addresses are unique across hosts"
    );
    for (c, target) in [(web, GATEWAY), (db, GATEWAY), (db, members[0].as_str())] {
        let ping = cluster
            .in_container(c, &["ping", "-c", "1", "-W", "2", target])
            .status()
            .unwrap();
        assert!(ping.success(), "container {c} -> {target}");
    }

    // A container that leaves takes its name with it, on every host.
    let gone = cluster.containers.remove(db);
    assert!(cluster.cni(1, "DEL", &gone.ns, &gone.id).status.success());
    assert!(lookup(&cluster, web, "db").contains("NXDOMAIN"));
    cluster.detach_all();
    for h in &cluster.hosts {
        let left = support::host_leftovers(&["ip", "netns", "exec", &h.ns.name]);
        assert_eq!(left, Vec::<String>::new());
    }
}

const FORGE_ROOTFS: &str = "/var/lib/flatnet/forge-rootfs";

/// A part of the Forgejo stand-in (`examples/forgejo/standin/`) as a plain process in a
/// container's namespace: its root file system as an overlay in a mount namespace of its own,
/// with /dev, /proc and a resolv.conf naming the gateway (flatnetd). The process group is
/// killed when dropped; the mounts go with their namespace.
struct Standin {
    child: Child,
    _scratch: tempfile::TempDir,
}

impl Standin {
    fn start(ns: &str, script: &str) -> Standin {
        use std::os::unix::process::CommandExt;
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().display();
        let setup = format!(
            "mkdir {dir}/upper {dir}/work {dir}/root && \
             mount -t overlay overlay -o lowerdir={FORGE_ROOTFS},upperdir={dir}/upper,workdir={dir}/work {dir}/root && \
             mount --rbind /dev {dir}/root/dev && mount -t proc proc {dir}/root/proc && \
             echo 'nameserver {GATEWAY}' > {dir}/root/etc/resolv.conf && \
             exec chroot {dir}/root {script}"
        );
        let child = in_ns(ns, &["unshare", "--mount", "--propagation", "private"])
            .args(["sh", "-c", &setup])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        Standin {
            child,
            _scratch: scratch,
        }
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// `curl` in a host's namespace; the body if the answer was a success.
fn curl_in(ns: &str, url: &str) -> Option<String> {
    let out = in_ns(ns, &["curl", "-sf", "-m", "5", url])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

#[test]
fn the_forge_stand_in_runs_across_two_hosts() {
    needs_root!();
    let buildbot = Path::new(FORGE_ROOTFS).join("opt/forge/bin/buildbot");
    assert!(buildbot.is_file(), "run scripts/build-forge-rootfs.sh");
    let mut cluster = Cluster::new(2);
    // The forge on host 0, its git and web ports published on host 0; the runner on host 1.
    let published = json!({"portMappings": [
        {"hostPort": 3000, "containerPort": 3000, "protocol": "tcp", "hostIP": "127.0.0.1"},
        {"hostPort": 8010, "containerPort": 8010, "protocol": "tcp", "hostIP": "127.0.0.1"},
    ]});
    let forge = cluster.attach_with(0, "forge", &published);
    let runner = cluster.attach_named(1, "runner");
    let started = Instant::now();
    let _forge = Standin::start(&cluster.containers[forge].ns.name, "/opt/standin/forge.sh");
    let _runner = Standin::start(
        &cluster.containers[runner].ns.name,
        "/opt/standin/runner.sh",
    );
    let host0 = cluster.hosts[0].ns.name.clone();
    let api = |path: &str| -> Option<Value> {
        let body = curl_in(&host0, &format!("http://127.0.0.1:8010/api/v2/{path}"))?;
        serde_json::from_str(&body).ok()
    };
    let wait_for = |stage: &str, check: &dyn Fn() -> Option<Value>| -> Value {
        loop {
            if let Some(found) = check() {
                println!("  {stage}: {:.1} s", started.elapsed().as_secs_f64());
                return found;
            }
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "'{stage}' did not happen"
            );
            std::thread::sleep(Duration::from_millis(200)); // polling an HTTP API
        }
    };
    // The runner on host 1 found the forge on host 0 by name and holds a connection to it.
    wait_for("runner online", &|| {
        let workers = api("workers?name=runner")?;
        let connected = workers["workers"][0]["connected_to"].as_array()?.len();
        (connected > 0).then_some(workers)
    });

    // A push from host 0 through the published port, as a developer on that host would.
    let repo = tempfile::tempdir().unwrap();
    let workflows = repo.path().join(".forgejo/workflows");
    std::fs::create_dir_all(&workflows).unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/forgejo/repo/.forgejo/workflows/hello.yml");
    std::fs::copy(example, workflows.join("hello.yml")).unwrap();
    let git = |args: &[&str]| {
        let mut argv = vec![
            "git",
            "-c",
            "user.name=flatnet",
            "-c",
            "user.email=flatnet@localhost",
        ];
        argv.extend_from_slice(args);
        let status = in_ns(&host0, &argv)
            .current_dir(repo.path())
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "Hello from Flatnet"]);
    git(&["push", "-q", "http://127.0.0.1:3000/", "main"]);

    let build = wait_for("job done", &|| {
        let builds = api("builds?order=-buildid&limit=1")?;
        let build = builds["builds"][0].clone();
        (build["complete"] == true).then_some(build)
    });
    let log_url = format!(
        "http://127.0.0.1:8010/api/v2/builds/{}/steps/workflow/logs/stdio/raw",
        build["buildid"]
    );
    let log = curl_in(&host0, &log_url).unwrap_or_default();
    assert_eq!(build["results"], 0, "the job failed: {log}");
    assert!(log.contains("Hello from Flatnet"), "{log}");
    println!(
        "two hosts: stand-in start to green job in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// tcpdump writing a capture file, stopped (by its PID) when dropped.
struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    fn start(ns: &str, interface: &str, filter: &str, file: PathBuf) -> Capture {
        let mut child = in_ns(
            ns,
            &[
                "tcpdump",
                "-i",
                interface,
                "--immediate-mode",
                "-U",
                "-n",
                "-w",
            ],
        )
        .arg(&file)
        .arg(filter)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        // tcpdump says "listening on ..." once the capture is armed.
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        assert!(line.contains("listening on"), "tcpdump: {line}");
        Capture { child, file }
    }

    /// Stops the capture; returns the raw capture and how many packets it holds.
    fn stop(mut self) -> (Vec<u8>, usize) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::SIGINT).unwrap();
        self.child.wait().unwrap();
        let bytes = std::fs::read(&self.file).unwrap();
        let listing = support::run_ok("tcpdump", &["-n", "-r", self.file.to_str().unwrap()]);
        (bytes, listing.lines().count())
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// An underlay with a smaller MTU than Flatnet's datagrams need: single datagrams leave
/// fragmented, and trains that would go as one GSO message must do the same.
#[test]
fn a_narrow_underlay_still_carries_bulk_tcp() {
    needs_root!();
    let (cluster, a, b) = Cluster::connected_pair();
    for (i, host) in cluster.hosts.iter().enumerate() {
        host.ns.ip(&["link", "set", "eth0", "mtu", "1400"]);
        cluster
            .wire
            .ip(&["link", "set", &format!("h{i}"), "mtu", "1400"]);
    }
    let file = cluster.shared.path().join("bulk");
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &content).unwrap();
    let started = Instant::now();
    let received = cluster.send_file(a, b, 7300, &file);
    println!(
        "3 MB over a 1400-byte underlay in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert!(received == content, "the transfer arrived damaged or short");
    let log = std::fs::read_to_string(cluster.hosts[0].state.path().join("flatnetd.log")).unwrap();
    assert!(
        log.contains("narrower than Flatnet's datagrams"),
        "the sender did not notice the narrow path"
    );
}

#[test]
fn the_underlay_carries_only_ciphertext() {
    needs_root!();
    const MARKER: &str = "FLATNET-PLAINTEXT-MARKER-7f3a9c";
    let (cluster, a, b) = Cluster::connected_pair();

    let pcap = cluster.shared.path().join("flatnet.pcap");
    let filter = format!("udp port {TUNNEL_PORT}");
    let capture = Capture::start(&cluster.wire.name, "h1", &filter, pcap);
    let file = cluster.shared.path().join("marker");
    std::fs::write(&file, MARKER.repeat(200)).unwrap();
    cluster.send_file(a, b, 7200, &file);
    let (bytes, datagrams) = capture.stop();
    println!("underlay capture: {datagrams} datagrams to port {TUNNEL_PORT}, marker absent");
    assert!(datagrams >= 5, "the capture saw only {datagrams} datagrams");
    assert!(
        !contains(&bytes, MARKER.as_bytes()),
        "plaintext on the wire"
    );

    // Control: the same transfer over a plain veth, captured the same way, shows the marker.
    let (left, right) = (TestNetns::new("pl"), TestNetns::new("pr"));
    left.ip(&[
        "link",
        "add",
        "p0",
        "type",
        "veth",
        "peer",
        "name",
        "p1",
        "netns",
        &right.name,
    ]);
    left.ip(&["addr", "add", "192.0.2.1/24", "dev", "p0"]);
    right.ip(&["addr", "add", "192.0.2.2/24", "dev", "p1"]);
    left.ip(&["link", "set", "p0", "up"]);
    right.ip(&["link", "set", "p1", "up"]);
    let pcap = cluster.shared.path().join("plain.pcap");
    let capture = Capture::start(&left.name, "p0", "tcp port 7201", pcap);
    let received = cluster.shared.path().join("plain-received");
    let mut listener = nc_receiver(&right.name, 7201, &received);
    let bb = busybox();
    let send = format!(
        "until {bb} nc 192.0.2.2 7201 < {}; do {bb} usleep 50000; done",
        file.display()
    );
    let sent = in_ns(&left.name, &[&bb, "sh", "-c", &send])
        .status()
        .unwrap();
    assert!(sent.success() && listener.wait());
    let (bytes, _) = capture.stop();
    assert!(
        contains(&bytes, MARKER.as_bytes()),
        "the control capture must show the marker"
    );
}
