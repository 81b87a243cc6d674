//! Dual-stack Flatnet networks (an IPv4 and an IPv6 subnet) across hosts whose underlay is
//! IPv6 or IPv4: both families reach across, by address and by name, and an IPv6 packet from a
//! container that lies about its source is dropped and counted. Needs root.

mod cluster;

use std::net::IpAddr;
use std::time::Duration;

use cluster::*;
use flatnet_test_support::{self as support, needs_root};

const DUAL_STACK: &str = "198.51.100.0/24,fd77:1::/64";
/// What the tests send in one TCP connection over IPv6.
const BULK_BYTES: u32 = 50_000_000;

/// Two hosts, a dual-stack container on each, over an IPv6 or IPv4 underlay.
fn dual_stack_pair(ipv6_underlay: bool) -> (Cluster, usize, usize) {
    let mut cluster = Cluster::wire_only();
    cluster.ipv6_underlay = ipv6_underlay;
    cluster.subnet = DUAL_STACK.into();
    cluster.add_host();
    cluster.add_host();
    let a = cluster.attach_named(0, "web");
    let b = cluster.attach_named(1, "db");
    (cluster, a, b)
}

fn both_families_reach_across(ipv6_underlay: bool) {
    let (cluster, a, b) = dual_stack_pair(ipv6_underlay);
    let (a6, b6) = (cluster.containers[a].ip6, cluster.containers[b].ip6);
    let (a6, b6) = (a6.expect("an IPv6 address"), b6.expect("an IPv6 address"));
    assert!(cluster.ping6(a, b, 2) && cluster.ping6(b, a, 2), "ping -6");
    assert!(
        cluster.ping(a, b, 1) && cluster.ping(b, a, 1),
        "ping over IPv4"
    );

    let mbit = cluster.transfer_to(a, (b, IpAddr::V6(b6)), 7300, BULK_BYTES);
    println!(
        "TCP over IPv6, {} underlay: {mbit:.0} Mbit/s",
        family(ipv6_underlay)
    );

    // The peer is reached at the underlay address of the family configured.
    let endpoint = cluster.peer(0, 1)["endpoint"].as_str().unwrap().to_string();
    assert_eq!(endpoint, cluster.hosts[1].endpoint(), "{endpoint}");

    // Names answer AAAA with the IPv6 address, A with the IPv4 one.
    let aaaa = lookup_type(&cluster, a, "db", "AAAA");
    assert!(aaaa.contains(&b6.to_string()), "{aaaa}");
    let a_record = lookup_type(&cluster, b, "web", "A");
    assert!(
        a_record.contains(&cluster.containers[a].ip.to_string()),
        "{a_record}"
    );
    assert!(!a_record.contains(&a6.to_string()), "{a_record}");
}

#[test]
fn dual_stack_containers_reach_each_other_over_an_ipv6_underlay() {
    needs_root!();
    both_families_reach_across(true);
}

#[test]
fn dual_stack_containers_reach_each_other_over_an_ipv4_underlay() {
    needs_root!();
    both_families_reach_across(false);
}

/// A host on `[::]` with an address of each family, a peer with IPv4 only and a peer with
/// IPv6 only: each reaches it over the family it has, through its candidates; the two peers,
/// which share no family, reach each other through it as a relay.
#[test]
fn a_host_of_both_families_is_reached_over_the_family_each_peer_has() {
    needs_root!();
    let mut cluster = Cluster::wire_only();
    cluster.subnet = DUAL_STACK.into();
    cluster.ipv6_underlay = true;
    let both = cluster.add_host();
    cluster.hosts[both].on_all_addresses = true;
    cluster.ipv6_underlay = false;
    let v4_only = cluster.add_host();
    cluster.ipv6_underlay = true;
    let v6_only = cluster.add_host();
    let v4 = format!("{}/24", cluster.hosts[v6_only].address);
    cluster.hosts[v6_only]
        .ns
        .ip(&["addr", "del", &v4, "dev", "eth0"]);

    cluster.start_daemon_with(both, &["--relay=true"]);
    let hub = cluster.attach_named(both, "hub");
    let (a, b) = (cluster.attach(v4_only), cluster.attach(v6_only));
    for (peer, container) in [(v4_only, a), (v6_only, b)] {
        assert!(
            cluster.ping(container, hub, 3) && cluster.ping6(hub, container, 1),
            "host {peer} does not reach the host of both families"
        );
    }
    let seen = |host: usize, other: usize| {
        let endpoint = cluster.peer(host, other)["endpoint"]
            .as_str()
            .unwrap()
            .to_string();
        endpoint.parse::<std::net::SocketAddr>().unwrap()
    };
    let over_ipv4 = std::net::SocketAddr::from((cluster.hosts[both].address, TUNNEL_PORT));
    assert_eq!(seen(v4_only, both), over_ipv4);
    let address6 = cluster.hosts[both].address6.unwrap();
    assert_eq!(seen(v6_only, both), (address6, TUNNEL_PORT).into());
    assert_eq!(
        seen(both, v4_only).to_string(),
        cluster.hosts[v4_only].endpoint()
    );
    assert_eq!(
        seen(both, v6_only).to_string(),
        cluster.hosts[v6_only].endpoint()
    );
    let published = cluster.status(both)["candidates"].to_string();
    for address in [over_ipv4.to_string(), format!("[{address6}]:{TUNNEL_PORT}")] {
        assert!(published.contains(&address), "{address} not in {published}");
    }

    let took = wait_until(Duration::from_secs(20), "IPv4 host to IPv6 host", || {
        cluster.ping(a, b, 1)
    });
    println!("IPv4-only host reached the IPv6-only host through the relay in {took:?}");
    let relay_key = cluster.status(both)["public_key"].clone();
    assert_eq!(cluster.peer(v4_only, v6_only)["via"], relay_key);
}

#[test]
fn a_spoofed_ipv6_source_is_dropped_and_counted() {
    needs_root!();
    let (mut cluster, a, b) = dual_stack_pair(true);
    let other = cluster.attach(1);
    assert!(cluster.ping6(a, b, 1));
    let before = cluster.drops(0, "spoofed");
    // From container a (host 0), a UDP packet claiming an address of host 1's container.
    let src = cluster.containers[other].ip6.unwrap();
    let dst = cluster.containers[b].ip6.unwrap();
    let script = format!(
        r#"
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
udp = bytes([0x0f, 0xa0, 0x0f, 0xa1, 0, 13, 0, 0]) + b"spoof"
header = bytes([0x60, 0, 0, 0, 0, len(udp), 17, 64]) + socket.inet_pton(socket.AF_INET6, "{src}") \
    + socket.inet_pton(socket.AF_INET6, "{dst}")
for _ in range(5):
    s.sendto(header + udp, ("{dst}", 0))
"#
    );
    python_in(&cluster.containers[a].ns.name, &script);
    wait_until(Duration::from_secs(5), "5 spoofed packets counted", || {
        cluster.drops(0, "spoofed") >= before + 5
    });
    assert!(cluster.ping6(a, b, 1), "genuine traffic still flows");
}

#[test]
fn nothing_is_left_of_a_dual_stack_network() {
    needs_root!();
    let (mut cluster, a, b) = dual_stack_pair(true);
    assert!(cluster.ping6(a, b, 1));
    let detached = cluster.detach_all();
    for c in &detached {
        assert!(
            !c.ns.has_link("eth0"),
            "{} still has its TUN device",
            c.ns.name
        );
    }
    for h in 0..2 {
        assert_eq!(cluster.leases(h), 0, "host {h} keeps leases");
        let left = support::host_leftovers(&["ip", "netns", "exec", &cluster.hosts[h].ns.name]);
        assert_eq!(left, Vec::<String>::new());
    }
}

/// On etcd, each host hands out IPv6 addresses from the IPv6 block its certificate grants,
/// as it does IPv4 ones, and a request for another host's IPv6 address is refused.
#[test]
fn hosts_on_etcd_hand_out_ipv6_addresses_from_their_certified_blocks() {
    needs_root!();
    let mut cluster = Cluster::with_etcd_in(2, 1, DUAL_STACK);
    let (a, b) = (cluster.attach(0), cluster.attach(1));
    for (c, host) in [(a, 0), (b, 1)] {
        let ip6 = cluster.containers[c].ip6.expect("an IPv6 address");
        let block = cluster.block6(host).unwrap();
        assert!(
            block.contains(&ip6),
            "{ip6} outside host {host}'s block {block}"
        );
        assert!(cluster.block(host).contains(&cluster.containers[c].ip));
    }
    assert!(cluster.ping6(a, b, 2) && cluster.ping6(b, a, 2));

    let foreign = cluster.block6(1).unwrap().hosts().nth(7).unwrap();
    let ns = support::TestNetns::new("ctr");
    let args = format!("IgnoreUnknown=1;IP={foreign}");
    let conf = cluster.conf_with(0, &serde_json::Value::Null);
    let out = cluster.cni_conf(0, "ADD", &ns, "foreign6", &args, &conf);
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "host 0 took {foreign}");
    assert!(answer.contains("not in this host's blocks"), "{answer}");
    assert!(!ns.has_link("eth0"), "the refused ADD left an interface");
}

fn family(ipv6: bool) -> &'static str {
    if ipv6 {
        "IPv6"
    } else {
        "IPv4"
    }
}
