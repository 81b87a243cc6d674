//! Underlays narrower than Flatnet's datagrams (see `dataplane/pmtu.rs`): the path MTU comes
//! from the underlay interface and from routers' ICMP, TCP's MSS is clamped to it so that
//! nothing is fragmented, and a container's oversized DF packet is answered with ICMP.
//! Needs root.

mod cluster;

use std::time::{Duration, Instant};

use cluster::*;
use flatnet_test_support::needs_root;

/// iputils `ping` (busybox's cannot forbid fragmenting) in container `from` to `to` with
/// `args`: its exit status and output.
fn ping(cluster: &Cluster, from: usize, to: usize, args: &[&str]) -> (bool, String) {
    let to = cluster.containers[to].ip.to_string();
    let mut command = vec!["ping"];
    command.extend(args);
    command.extend(["-W", "2", &to]);
    let out = in_ns(&cluster.containers[from].ns.name, &command)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Both hosts' interfaces are narrower than Flatnet's datagrams at full size: the path MTU
/// is read from them before the first packet, TCP is clamped to it, and no datagram has to
/// leave fragmented (the kernel would refuse a GSO send, which flatnetd logs).
#[test]
fn the_underlay_interfaces_mtu_is_the_paths_from_the_start() {
    needs_root!();
    let mut cluster = Cluster::new(2);
    for (i, host) in cluster.hosts.iter().enumerate() {
        host.ns.ip(&["link", "set", "eth0", "mtu", "1400"]);
        cluster
            .wire
            .ip(&["link", "set", &format!("h{i}"), "mtu", "1400"]);
    }
    let (a, b) = (cluster.attach(0), cluster.attach(1));
    let mbits = cluster.transfer(a, b, 7300, 3_000_000);
    println!("3 MB over a 1400-byte underlay: {mbits:.0} Mbit/s");
    assert_eq!(cluster.peer(0, 1)["path_mtu"], 1400);
    let log = std::fs::read_to_string(cluster.hosts[0].state.path().join("flatnetd.log")).unwrap();
    assert!(
        !log.contains("narrower than Flatnet's datagrams"),
        "datagrams left fragmented: {log}"
    );
}

/// Host 1 sits behind a router whose link to it carries 1280 bytes; host 0's interface
/// carries 1500 and learns the rest from the router's ICMP (its kernel does; flatnetd reads
/// it). Large pings and a 50 MB TCP
/// transfer cross both ways; a container's DF packet too large for the path is answered with
/// ICMP naming the MTU that fits (1280 less the 64 bytes of the tunnel over IPv4).
#[test]
fn a_narrow_link_beyond_a_router_is_learnt_and_nothing_black_holes() {
    needs_root!();
    let mut cluster = Cluster::new(1);
    let far = cluster.add_host_behind_router(1280);
    let (a, b) = (cluster.attach(0), cluster.attach(far));
    assert!(
        cluster.ping(a, b, 1),
        "the hosts do not connect through the router"
    );

    // The far host knows its link from the start: a DF packet too large is answered at once.
    let (_, out) = ping(&cluster, b, a, &["-c", "1", "-M", "do", "-s", "1300"]);
    assert!(out.contains("mtu = 1216"), "no ICMP naming the path: {out}");
    assert_eq!(cluster.peer(far, 0)["path_mtu"], 1280);

    let there = cluster.transfer(a, b, 7310, 50_000_000);
    let back = cluster.transfer(b, a, 7311, 50_000_000);
    println!("50 MB across a 1280-byte link: {there:.0} Mbit/s towards it, {back:.0} Mbit/s back");
    // Clamped from either end, TCP never sent the near host a datagram the link refused;
    // a large ping does (the container's fragments are sent with DF): the router's ICMP
    // teaches the near host's kernel, and flatnetd reads it within a second of sending.
    assert_eq!(cluster.peer(0, far)["path_mtu"], 1500);
    ping(&cluster, a, b, &["-c", "1", "-s", "1400"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    // Small pings make flatnetd send, and so read the path again.
    while cluster.peer(0, far)["path_mtu"] != 1280 {
        assert!(cluster.ping(a, b, 1), "small pings stopped crossing");
        assert!(
            Instant::now() < deadline,
            "the router's ICMP was not heard: {}",
            cluster.hosts[0].ns.ip(&["route", "get", "203.0.113.10"])
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, out) = ping(&cluster, a, b, &["-c", "1", "-M", "do", "-s", "1300"]);
    assert!(out.contains("mtu = 1216"), "no ICMP naming the path: {out}");
    for (from, to) in [(a, b), (b, a)] {
        let (ok, out) = ping(&cluster, from, to, &["-c", "3", "-i", "0.2", "-s", "1400"]);
        assert!(
            ok && out.contains("3 received"),
            "1400-byte pings from {from} to {to}: {out}"
        );
    }
    assert!(cluster.drops(0, "too_big") >= 1 && cluster.drops(far, "too_big") >= 1);
}
