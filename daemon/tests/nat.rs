//! Hosts behind NAT (see `cluster`: router namespaces with nftables masquerade). So far: a host
//! behind NAT reaches a public one, learns from it where the NAT puts it (inside the tunnel),
//! keeps the NAT's mapping open, so the public host reaches it too, and publishes that place
//! as a candidate endpoint, where a host that lost its tunnel finds it again; two hosts behind
//! NAT are introduced by the public host and punch through to each other. With the file
//! lighthouse and with etcd. Needs root.

mod cluster;

use std::time::{Duration, Instant};

use cluster::*;
use flatnet_test_support::{needs_root, wait_until};

/// Host 1 is behind a NAT whose UDP mappings last 30 s idle. Its container reaches host 0's
/// first (host 0 cannot: the lighthouse lists host 1's private endpoint); each host then knows
/// the other where the NAT shows it. Host 1, told it is seen elsewhere than its endpoint, sends
/// a keepalive every 25 s and host 0 none, and after 40 s of silence host 0's container still
/// reaches host 1's through the mapping.
#[test]
fn a_host_behind_nat_is_reached_through_a_mapping_it_keeps_open() {
    needs_root!();
    let mut cluster = Cluster::new(1);
    let (home, router) = cluster.add_host_behind_nat();
    let (public, private) = (cluster.attach(0), cluster.attach(home));
    assert!(
        cluster.ping(private, public, 1),
        "the host behind NAT does not reach the public one"
    );
    let mapped = cluster.peer(0, home)["endpoint"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        mapped.starts_with(&format!("{router}:")),
        "host 0 sees host 1 at {mapped}, not at the NAT"
    );
    assert_eq!(cluster.peer(home, 0)["seen_as"], mapped.as_str());
    assert_eq!(
        cluster.peer(0, home)["seen_as"],
        format!("{}:{TUNNEL_PORT}", cluster.hosts[0].address).as_str(),
        "host 0 is seen where it is"
    );

    let quiet_since = Instant::now();
    let keepalives = |host: usize, other: usize| {
        cluster.peer(host, other)["keepalives_sent"]
            .as_u64()
            .unwrap()
    };
    let before = (keepalives(home, 0), keepalives(0, home));
    while quiet_since.elapsed() < Duration::from_secs(40) {
        std::thread::sleep(Duration::from_secs(1));
    }
    // One passive keepalive (host 1 last received data, a ping's reply), then 25 s after it
    // one for the NAT: without that second one, the mapping goes at 30 s.
    assert!(
        keepalives(home, 0) >= before.0 + 2,
        "host 1 did not keep its mapping open: {} keepalives in 40 s",
        keepalives(home, 0) - before.0
    );
    assert_eq!(keepalives(0, home), before.1, "host 0 is not behind NAT");
    assert!(
        cluster.ping(public, private, 1),
        "the NAT forgot host 1's mapping"
    );
}

/// Host 0 restarts and so forgets its tunnel to host 1, which is behind NAT and published
/// where host 0 saw it as a candidate endpoint. Host 0's container reaches host 1's at once:
/// its initiation goes to the private endpoint in the entries (unreachable) and to the
/// candidate, through the mapping host 1 keeps open. Without the candidate it would have to
/// wait for host 1 to write first.
fn a_restarted_host_finds_one_behind_nat_at_its_candidate(mut cluster: Cluster) {
    let (home, _) = cluster.add_host_behind_nat();
    if cluster.etcd.is_some() {
        cluster.grant(home);
    }
    let (public, private) = (cluster.attach(0), cluster.attach(home));
    assert!(cluster.ping(private, public, 1), "no way out of the NAT");
    let mapped = cluster.peer(0, home)["endpoint"].clone();
    wait_until(Duration::from_secs(10), || {
        cluster.status(home)["candidates"] == serde_json::json!([mapped])
    });

    cluster.stop_daemon(0);
    cluster.start_daemon(0);
    assert!(
        cluster.ping(public, private, 1),
        "the restarted host does not find the one behind NAT"
    );
    assert_eq!(cluster.peer(0, home)["endpoint"], mapped);
}

#[test]
fn a_restarted_host_finds_one_behind_nat_at_its_candidate_from_a_file() {
    needs_root!();
    a_restarted_host_finds_one_behind_nat_at_its_candidate(Cluster::new(1));
}

#[test]
fn a_restarted_host_finds_one_behind_nat_at_its_candidate_from_etcd() {
    needs_root!();
    a_restarted_host_finds_one_behind_nat_at_its_candidate(Cluster::with_etcd(1, 1));
}

/// Two hosts behind NATs of their own (the same private address behind each), each with a
/// container, a tunnel with the public host 0 and its place published: the hosts, their NATs'
/// outside addresses and the containers (host 0's first).
struct BehindTwoNats {
    hosts: [usize; 2],
    routers: [std::net::Ipv4Addr; 2],
    containers: [usize; 3],
}

fn behind_two_nats(cluster: &mut Cluster) -> BehindTwoNats {
    let (one, router_one) = cluster.add_host_behind_nat();
    let (two, router_two) = cluster.add_host_behind_nat();
    if cluster.etcd.is_some() {
        cluster.grant(one);
        cluster.grant(two);
    }
    let containers = [cluster.attach(0), cluster.attach(one), cluster.attach(two)];
    let setup = BehindTwoNats {
        hosts: [one, two],
        routers: [router_one, router_two],
        containers,
    };
    reach_the_public_host(cluster, &setup);
    setup
}

/// Each host behind NAT pings host 0's container and waits until it has published where host
/// 0 sees it.
fn reach_the_public_host(cluster: &Cluster, setup: &BehindTwoNats) {
    for (host, container) in setup.hosts.into_iter().zip(&setup.containers[1..]) {
        assert!(
            cluster.ping(*container, setup.containers[0], 1),
            "no way out of the NAT"
        );
        let mapped = cluster.peer(0, host)["endpoint"].clone();
        wait_until(Duration::from_secs(10), || {
            cluster.status(host)["candidates"] == serde_json::json!([mapped])
        });
    }
}

/// Where `host` has `other` now.
fn endpoint_of(cluster: &Cluster, host: usize, other: usize) -> std::net::SocketAddr {
    let endpoint = cluster.peer(host, other)["endpoint"].clone();
    endpoint.as_str().unwrap().parse().unwrap()
}

/// Hosts 1 and 2 are behind NATs of their own. Host 1's container reaches host 2's: host 1's
/// initiation to host 2's NAT is dropped there (no mapping), host 0 tells host 2 that host 1
/// is trying, host 2 writes to host 1's NAT, which lets it through (host 1 wrote to host 2's
/// first). The tunnel is direct, NAT to NAT, and carries 20 MB.
fn two_hosts_behind_nat_punch_through(mut cluster: Cluster) {
    let setup = behind_two_nats(&mut cluster);
    let ([one, two], [_, b, c]) = (setup.hosts, setup.containers);
    assert!(cluster.ping(b, c, 3), "host 1 does not reach host 2");
    assert_eq!(
        endpoint_of(&cluster, one, two).ip(),
        setup.routers[1],
        "not straight to host 2's NAT"
    );
    assert_eq!(
        endpoint_of(&cluster, two, one).ip(),
        setup.routers[0],
        "not straight to host 1's NAT"
    );
    let mbits = cluster.transfer(b, c, 7400, 20_000_000);
    println!("20 MB NAT to NAT after punching: {mbits:.0} Mbit/s");
}

/// `make bench-punch` (and a bounded run in CI): the time from a container's first packet to
/// the first reply across a punched path, from fresh daemons and fresh NAT mappings each
/// round. Prints p50 and p99; asserts only that every round was punched (direct).
#[test]
fn time_to_the_first_reply_across_a_punched_path() {
    needs_root!();
    let rounds: usize = std::env::var("FLATNET_BENCH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    let mut cluster = Cluster::new(1);
    let setup = behind_two_nats(&mut cluster);
    let ([one, two], [_, b, c]) = (setup.hosts, setup.containers);
    let mut times = Vec::new();
    for round in 0..rounds {
        if round > 0 {
            // Both forget their tunnels, both NATs their mappings (taking the outside address
            // away drops every mapping made with it).
            for host in setup.hosts {
                cluster.stop_daemon(host);
            }
            for (router, address) in cluster.routers.iter().zip(setup.routers) {
                let address = format!("{address}/24");
                router.ip(&["addr", "del", &address, "dev", "wan"]);
                router.ip(&["addr", "add", &address, "dev", "wan"]);
            }
            for host in setup.hosts {
                cluster.start_daemon(host);
            }
            reach_the_public_host(&cluster, &setup);
        }
        times.push(cluster.first_reply_ms(b, c));
        assert_eq!(endpoint_of(&cluster, one, two).ip(), setup.routers[1]);
    }
    let (p50, p99) = p50_p99(&mut times);
    println!(
        "first reply across a punched path, {rounds} rounds: p50 {p50:.2} ms, p99 {p99:.2} ms"
    );
}

#[test]
fn two_hosts_behind_nat_punch_through_with_a_file() {
    needs_root!();
    two_hosts_behind_nat_punch_through(Cluster::new(1));
}

#[test]
fn two_hosts_behind_nat_punch_through_with_etcd() {
    needs_root!();
    two_hosts_behind_nat_punch_through(Cluster::with_etcd(1, 1));
}

/// Host 1's NAT gets a new outside address (a new lease from the provider) in the middle of a
/// TCP connection from host 1's container to host 0's. The connection carries on: host 1's
/// next datagram leaves through a new mapping, host 0 follows it there (authenticated traffic
/// moves the peer) and tells host 1, which publishes its new place. Nothing is restarted.
#[test]
fn a_tcp_connection_survives_the_nat_moving_to_another_address() {
    needs_root!();
    let mut cluster = Cluster::new(1);
    let (home, old) = cluster.add_host_behind_nat();
    let (public, private) = (cluster.attach(0), cluster.attach(home));
    assert!(cluster.ping(private, public, 1), "no way out of the NAT");
    let transfer = cluster.paused_transfer(private, public, 7500, 1 << 20);
    let router = &cluster.routers[0];
    let moved = std::net::Ipv4Addr::new(192, 0, 2, 250);
    // The old address first: the new one would be its secondary, and go with it.
    router.ip(&["addr", "del", &format!("{old}/24"), "dev", "wan"]);
    router.ip(&["addr", "add", &format!("{moved}/24"), "dev", "wan"]);
    transfer.finish();

    let endpoint = endpoint_of(&cluster, 0, home);
    assert_eq!(endpoint.ip(), moved, "host 0 did not follow host 1");
    wait_until(Duration::from_secs(10), || {
        cluster.status(home)["candidates"] == serde_json::json!([endpoint])
    });
}

/// Host 1 listens on every address: its entries carry `0.0.0.0`, which nobody can send to, and
/// it publishes its own address as a candidate. Host 0's container reaches host 1's first,
/// at that candidate.
#[test]
fn a_host_listening_on_all_addresses_is_reached_at_its_own() {
    needs_root!();
    let mut cluster = Cluster::new(2);
    cluster.hosts[1].on_all_addresses = true;
    let (a, b) = (cluster.attach(0), cluster.attach(1));
    let own = format!("{}:{TUNNEL_PORT}", cluster.hosts[1].address);
    wait_until(Duration::from_secs(10), || {
        cluster.status(1)["candidates"] == serde_json::json!([own])
    });
    assert!(
        cluster.ping(a, b, 1),
        "host 1 is not reached at its own address"
    );
    assert_eq!(endpoint_of(&cluster, 0, 1).to_string(), own);
}
