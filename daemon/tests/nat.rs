//! Hosts behind NAT (see `cluster`: router namespaces with nftables masquerade). So far: a host
//! behind NAT reaches a public one, learns from it where the NAT puts it (inside the tunnel),
//! and keeps the NAT's mapping open, so the public host reaches it too. Needs root.

mod cluster;

use std::time::{Duration, Instant};

use cluster::*;
use flatnet_test_support::needs_root;

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
