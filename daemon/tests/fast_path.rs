//! The same-host fast path: two containers of one host talk without a tunnel (flatnetd moves
//! frames from one TUN queue to the other), under the same checks as the tunnel. Needs root.

mod cluster;

use flatnet_test_support::needs_root;
use std::net::Ipv4Addr;

use cluster::*;

const BULK_BYTES: u32 = 50_000_000;

/// `BULK_BYTES` of a pattern with a prime period (251): a segment lost, repeated or misplaced
/// changes what arrives.
fn bulk_file(cluster: &Cluster) -> (std::path::PathBuf, Vec<u8>) {
    let file = cluster.shared.path().join("bulk");
    let content: Vec<u8> = (0..BULK_BYTES).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &content).unwrap();
    (file, content)
}

fn fast_path(cluster: &Cluster, host: usize) -> (u64, u64) {
    let status = cluster.status(host);
    let counter = |field: &str| status["fast_path"][field].as_u64().unwrap();
    (counter("packets"), counter("bytes"))
}

fn ping_address(cluster: &Cluster, from: usize, to: Ipv4Addr) -> bool {
    let to = to.to_string();
    let mut ping = cluster.in_container(from, &["ping", "-c", "2", "-W", "1", &to]);
    ping.output().unwrap().status.success()
}

#[test]
fn fifty_megabytes_between_containers_of_one_host_arrive_intact_without_a_tunnel() {
    needs_root!();
    let mut cluster = Cluster::new(1);
    let (a, b) = (cluster.attach(0), cluster.attach(0));
    let (file, content) = bulk_file(&cluster);
    let received = cluster.send_file(a, b, 7400, &file);
    assert_eq!(received.len(), content.len(), "the transfer arrived short");
    assert!(received == content, "the transfer arrived damaged");

    let (packets, bytes) = fast_path(&cluster, 0);
    println!("fast path: {packets} frames, {bytes} bytes for {BULK_BYTES} bytes of payload");
    assert!(
        bytes >= u64::from(BULK_BYTES),
        "only {bytes} bytes took the fast path"
    );
    // Segment trains stay whole: far fewer frames than MTU-sized packets.
    assert!(
        packets < u64::from(BULK_BYTES) / 1400,
        "{packets} frames: trains were cut"
    );
    let status = cluster.status(0);
    assert_eq!(
        status["sessions"], 0,
        "a tunnel was opened: {:#}",
        status["peers"]
    );
}

#[test]
fn fifty_megabytes_across_hosts_arrive_intact_through_the_tunnel() {
    needs_root!();
    let (cluster, a, b) = Cluster::connected_pair();
    let (file, content) = bulk_file(&cluster);
    let received = cluster.send_file(a, b, 7401, &file);
    assert_eq!(received.len(), content.len(), "the transfer arrived short");
    assert!(received == content, "the transfer arrived damaged");
    let sent: u64 = cluster.status(0)["peers"][0]["tx_bytes"].as_u64().unwrap();
    assert!(
        sent >= u64::from(BULK_BYTES),
        "only {sent} bytes went through the tunnel"
    );
    assert_eq!(
        fast_path(&cluster, 0),
        (0, 0),
        "a packet to another host took the fast path"
    );
}

#[test]
fn a_spoofed_source_is_dropped_on_the_fast_path() {
    needs_root!();
    let mut cluster = Cluster::new(1);
    let (a, b, other) = (cluster.attach(0), cluster.attach(0), cluster.attach(0));
    let (a_ns, b_ns) = (
        &cluster.containers[a].ns.name,
        &cluster.containers[b].ns.name,
    );
    let (own, forged, to) = (
        cluster.containers[a].ip,
        cluster.containers[other].ip,
        cluster.containers[b].ip.to_string(),
    );

    // Control: a datagram with a's own source arrives, by the fast path.
    let listener = udp_listener(b_ns, &to, 4001);
    inject_udp(a_ns, own, &to, 4001);
    let heard = listener.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&heard.stdout).contains("received"));
    assert!(fast_path(&cluster, 0).0 >= 3);

    let (before, fast_before) = (cluster.drops(0, "spoofed"), fast_path(&cluster, 0));
    let listener = udp_listener(b_ns, &to, 4002);
    inject_udp(a_ns, forged, &to, 4002);
    let heard = listener.wait_with_output().unwrap();
    let heard = String::from_utf8_lossy(&heard.stdout);
    assert!(
        heard.contains("nothing"),
        "a forged source arrived: {heard}"
    );
    assert_eq!(cluster.drops(0, "spoofed"), before + 3);
    assert_eq!(fast_path(&cluster, 0), fast_before);
}

#[test]
fn a_container_moved_to_another_network_is_not_reached_from_the_old_one() {
    needs_root!();
    let mut cluster = Cluster::new(1);
    let (a, c) = (cluster.attach(0), cluster.attach(0));
    assert!(
        cluster.ping(a, c, 1),
        "neighbours on one network must connect"
    );
    let old: Ipv4Addr = cluster.containers[c].ip;

    let new = cluster.move_to(c, "other", "203.0.113.0/24");
    cluster.network = "other".into();
    cluster.subnet = "203.0.113.0/24".into();
    let d = cluster.attach(0);
    let before = fast_path(&cluster, 0);
    assert!(
        cluster.ping(d, c, 1),
        "the moved container must serve its new network"
    );
    assert!(
        fast_path(&cluster, 0).0 > before.0,
        "new neighbours take the fast path"
    );

    // From the old network, the old address leads nowhere.
    let no_route = cluster.drops(0, "no_route");
    assert!(
        !ping_address(&cluster, a, old),
        "the old address still answers"
    );
    assert!(cluster.drops(0, "no_route") >= no_route + 2);
    // The new address is another network's: whatever the host's routing makes of it (egress
    // through the gateways is not the fast path), no frame crosses between the networks here.
    let before = fast_path(&cluster, 0);
    ping_address(&cluster, a, new);
    assert_eq!(
        fast_path(&cluster, 0),
        before,
        "the fast path crossed networks"
    );
}

/// An operator who wants every packet between containers encrypted, even on one host, says so
/// with `--same-host encrypted`: the host's tunnel to itself carries them, as before the fast
/// path, and the setting outlives a restart.
#[test]
fn same_host_encrypted_sends_neighbours_through_the_tunnel() {
    needs_root!();
    let mut cluster = Cluster::new(1);
    cluster.start_daemon_with(0, &["--same-host", "encrypted"]);
    let (a, b) = (cluster.attach(0), cluster.attach(0));
    cluster.tcp(a, b, 7402);
    let status = cluster.status(0);
    assert_eq!(status["same_host"], "encrypted");
    assert_eq!(
        fast_path(&cluster, 0),
        (0, 0),
        "a neighbour took the fast path"
    );
    let own_key = &status["public_key"];
    let peer = &status["peers"][0];
    assert_eq!(&peer["public_key"], own_key, "the host tunnels to itself");
    assert!(peer["tx_packets"].as_u64().unwrap() > 0);
    assert_eq!(peer["seen_as"], peer["endpoint"], "told where it is seen");

    // Asking a running daemon for the other path is refused, not ignored.
    let said = cluster.refused_start(0, &["--same-host", "fast"]);
    assert!(said.contains("--same-host encrypted"), "{said}");

    cluster.stop_daemon(0);
    cluster.start_daemon(0);
    assert_eq!(
        cluster.status(0)["same_host"],
        "encrypted",
        "kept across a restart"
    );
    assert!(cluster.ping(a, b, 1));
}
