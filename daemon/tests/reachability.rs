//! Several Flatnet hosts on one machine sharing one file lighthouse (see `cluster`): who
//! reaches whom, by address and by name, and what is left afterwards.
//! Needs root.

mod cluster;

use std::net::Ipv4Addr;

use cluster::*;
use flatnet_test_support::{self as support, needs_root};

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
    let (a, b) = flatnet::network_id::colliding_names("net-");
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
            cluster.status(h)["networks"][0]["addresses"][0]
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
