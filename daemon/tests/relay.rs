//! Hosts on the networks the issue names: a public host that relays (`--relay=true`), host B
//! behind a full-cone NAT, host C behind a symmetric NAT (a new port per destination) and host
//! D behind a firewall that lets UDP out only to the public host. B and C punch through to
//! each other; D is reached only through the relay, which passes the sealed datagrams on
//! without reading them. With the file lighthouse and with etcd. Needs root.

mod cluster;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use cluster::*;
use flatnet_test_support::{needs_root, wait_until};
use serde_json::Value;

/// The hosts (the public one is host 0), their containers (the public host's first) and the
/// relay's key.
struct RealNetworks {
    b: usize,
    c: usize,
    d: usize,
    containers: [usize; 4],
    relay_key: Value,
}

/// D's router: the third added.
const D_ROUTER: usize = 2;

fn real_networks(cluster: &mut Cluster) -> RealNetworks {
    cluster.start_daemon_with(0, &["--relay=true"]);
    let public: Ipv4Addr = cluster.hosts[0].address;
    let (b, _) = cluster.add_host_behind(Nat::FullCone);
    let (c, _) = cluster.add_host_behind(Nat::Symmetric);
    let (d, _) = cluster.add_host_behind(Nat::UdpOutOnlyTo(public));
    if cluster.etcd.is_some() {
        for host in [b, c, d] {
            cluster.grant(host);
        }
    }
    let containers = [
        cluster.attach(0),
        cluster.attach(b),
        cluster.attach(c),
        cluster.attach(d),
    ];
    for (host, container) in [(b, containers[1]), (c, containers[2]), (d, containers[3])] {
        assert!(
            cluster.ping(container, containers[0], 1),
            "host {host} does not reach the public host"
        );
        wait_until(Duration::from_secs(10), || {
            cluster.status(host)["candidates"]
                .as_array()
                .is_some_and(|c| !c.is_empty())
        });
    }
    RealNetworks {
        b,
        c,
        d,
        containers,
        relay_key: cluster.status(0)["public_key"].clone(),
    }
}

/// The relay `host` reaches `other` through (its key), if any.
fn via(cluster: &Cluster, host: usize, other: usize) -> Value {
    cluster.peer(host, other)["via"].clone()
}

/// What the relay passed on from `from` to `to`, in bytes.
fn relayed_bytes(cluster: &Cluster, from: usize, to: usize) -> u64 {
    let (from, to) = (
        cluster.status(from)["public_key"].clone(),
        cluster.status(to)["public_key"].clone(),
    );
    cluster.status(0)["relayed"]
        .as_array()
        .unwrap()
        .iter()
        .find(|pair| pair["from"] == from && pair["to"] == to)
        .map_or(0, |pair| pair["bytes"].as_u64().unwrap())
}

/// B and C punch through to each other (C's mapping for B is new, but B's NAT lets anyone
/// in); D cannot be reached but through the relay, from B or C. Every pair, and each with the
/// public host, carries 20 MB intact; the relay passed the relayed pairs' traffic on and took
/// none of it as its own.
fn every_pair_meets_directly_or_through_the_relay(mut cluster: Cluster) {
    let net = real_networks(&mut cluster);
    let [ca, cb, cc, cd] = net.containers;
    let (b, c, d) = (net.b, net.c, net.d);
    assert!(cluster.ping(cb, cc, 3), "B does not reach C");
    assert_eq!(via(&cluster, b, c), Value::Null, "B-C is relayed");
    assert_eq!(via(&cluster, c, b), Value::Null, "C-B is relayed");
    for (from, to) in [(cb, cd), (cc, cd)] {
        assert!(cluster.ping(from, to, 3), "{from} does not reach {to}");
    }
    for (host, other) in [(b, d), (d, b), (c, d), (d, c)] {
        assert_eq!(
            via(&cluster, host, other),
            net.relay_key,
            "host {host} reaches host {other} otherwise than through the relay"
        );
    }

    let relay_rx_from_b = || cluster.peer(0, b)["rx_bytes"].as_u64().unwrap();
    let (rx_before, relayed_before) = (relay_rx_from_b(), relayed_bytes(&cluster, b, d));
    let pairs = [(cb, cd), (cc, cd), (cb, cc), (cb, ca), (cc, ca), (cd, ca)];
    for (port, (from, to)) in (7600..).zip(pairs) {
        let mbits = cluster.transfer(from, to, port, 20_000_000);
        println!("20 MB from container {from} to {to}: {mbits:.0} Mbit/s");
        if (from, to) == (cb, cd) {
            let relayed = relayed_bytes(&cluster, b, d) - relayed_before;
            let taken = relay_rx_from_b() - rx_before;
            assert!(relayed >= 20_000_000, "the relay passed on {relayed} B");
            assert!(
                taken < 1_000_000,
                "the relay took {taken} B of B's traffic to D as its own"
            );
        }
    }
    assert!(relayed_bytes(&cluster, c, d) >= 20_000_000);
    assert_eq!(
        relayed_bytes(&cluster, b, c),
        0,
        "B-C went through the relay"
    );
}

#[test]
fn every_pair_meets_directly_or_through_the_relay_with_a_file() {
    needs_root!();
    every_pair_meets_directly_or_through_the_relay(Cluster::new(1));
}

#[test]
fn every_pair_meets_directly_or_through_the_relay_with_etcd() {
    needs_root!();
    every_pair_meets_directly_or_through_the_relay(Cluster::with_etcd(1, 1));
}

/// D's firewall goes in the middle of a TCP connection from D's container to B's, relayed
/// until then: the connection carries on, and within seconds both sides reach each other
/// directly (in the same session), so the relay passes nothing more.
#[test]
fn a_relayed_path_turns_direct_when_the_firewall_goes_mid_transfer() {
    needs_root!();
    let mut cluster = Cluster::new(1);
    let net = real_networks(&mut cluster);
    let [_, cb, _, cd] = net.containers;
    let (b, d) = (net.b, net.d);
    assert!(cluster.ping(cd, cb, 3), "D does not reach B");
    assert_eq!(via(&cluster, d, b), net.relay_key);

    let transfer = cluster.paused_transfer(cd, cb, 7700, 1 << 20);
    cluster.open_firewall(D_ROUTER);
    let opened = Instant::now();
    wait_until(Duration::from_secs(10), || {
        via(&cluster, d, b).is_null() && via(&cluster, b, d).is_null()
    });
    println!(
        "direct {:.1} s after the firewall went",
        opened.elapsed().as_secs_f64()
    );
    transfer.finish();
    let relayed = relayed_bytes(&cluster, d, b);
    assert!(cluster.ping(cd, cb, 3));
    cluster.transfer(cd, cb, 7701, 2_000_000);
    assert_eq!(relayed_bytes(&cluster, d, b), relayed, "still relayed");
}

/// CPU seconds (user and system) a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let fields = proc_stat(pid);
    // utime and stime: fields 14 and 15 of proc(5), in clock ticks of 1/100 s.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// `make bench-paths` (and a bounded run in CI): the time from a container's first packet to
/// the first reply across a relay, from fresh daemons each round (p50, p99); then one TCP
/// stream through the relay against the same pair direct, with the relay's CPU per Gbit.
/// Asserts only that each round was relayed and the last transfer direct.
#[test]
fn time_to_the_first_reply_and_throughput_across_a_relay() {
    needs_root!();
    let rounds: usize = std::env::var("FLATNET_BENCH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    let bytes: u32 = std::env::var("FLATNET_BENCH_BYTES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(50_000_000);
    let mut cluster = Cluster::new(1);
    let net = real_networks(&mut cluster);
    let [ca, cb, _, cd] = net.containers;
    let (b, d) = (net.b, net.d);
    let mut times = Vec::new();
    for round in 0..rounds {
        if round > 0 {
            for host in [b, d] {
                cluster.stop_daemon(host);
                cluster.start_daemon(host);
            }
            for container in [cb, cd] {
                assert!(cluster.ping(container, ca, 1));
            }
        }
        times.push(cluster.first_reply_ms(cb, cd));
        assert_eq!(via(&cluster, b, d), net.relay_key);
    }
    let (p50, p99) = p50_p99(&mut times);
    println!("first reply across a relay, {rounds} rounds: p50 {p50:.1} ms, p99 {p99:.1} ms");

    let relay = cluster.daemon_pid(0);
    let cpu = cpu_seconds(relay);
    let relayed = cluster.transfer(cb, cd, 7800, bytes);
    let relay_cpu = cpu_seconds(relay) - cpu;
    cluster.open_firewall(D_ROUTER);
    wait_until(Duration::from_secs(10), || {
        via(&cluster, d, b).is_null() && via(&cluster, b, d).is_null()
    });
    let direct = cluster.transfer(cb, cd, 7801, bytes);
    let gbits = f64::from(bytes) * 8.0 / 1e9;
    println!(
        "one TCP stream B to D: through the relay {relayed:.0} Mbit/s, direct {direct:.0} \
         Mbit/s, ratio {:.2}; relay CPU {:.2} s per Gbit",
        relayed / direct,
        relay_cpu / gbits
    );
}
