//! Following etcd at scale: watches that resume where they broke (a leader loss reads
//! nothing again), a full read only after etcd compacted past a host's revision, and each
//! host following only the networks it serves. Real daemons, a real etcd cluster with TLS and
//! RBAC. Needs root and etcd.

mod cluster;

use flatnet_test_support::needs_root;
use serde_json::Value;
use std::time::Duration;

use cluster::*;

/// What a host's status says of following etcd.
#[derive(Debug, Clone, PartialEq)]
struct Following {
    full_reads: u64,
    resumed: u64,
    healthy: bool,
    networks: Vec<String>,
}

fn following(cluster: &Cluster, host: usize) -> Following {
    let state: Value = cluster.status(host)["lighthouse_state"].clone();
    Following {
        full_reads: state["full_reads"].as_u64().unwrap(),
        resumed: state["resumed_watches"].as_u64().unwrap(),
        healthy: state["healthy"].as_bool().unwrap(),
        networks: state["networks"]
            .as_array()
            .expect("etcd names the networks it follows")
            .iter()
            .map(|n| n.as_str().unwrap().to_string())
            .collect(),
    }
}

/// Every member is killed and started again in turn, the leader first: each host's watches
/// break (at the latest when their member goes) and start again where they were. No host
/// reads anything again, no route table changes at any moment, and everyone still follows.
#[test]
fn a_rolling_restart_of_etcd_reads_nothing_again_and_flaps_no_route() {
    needs_root!();
    let mut cluster = Cluster::with_etcd(3, 3);
    let hosts = [0, 1, 2];
    let first = cluster.attach(0);
    for h in [1, 2] {
        cluster.attach(h);
    }
    wait_routes(&cluster, &hosts, 6);
    let before: Vec<Following> = hosts.iter().map(|&h| following(&cluster, h)).collect();
    let leader = cluster.etcd().leader();
    let order = [leader, (leader + 1) % 3, (leader + 2) % 3];
    for member in order {
        cluster.etcd.as_mut().unwrap().kill_member(member);
        // Watched while the others elect a leader (or keep theirs) and the hosts move over.
        let steady = || hosts.iter().all(|&h| routes(&cluster, h) == 6);
        for _ in 0..25 {
            assert!(
                steady(),
                "a route table changed while member {member} was down"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        cluster.etcd.as_mut().unwrap().restart_members(&[member]);
    }
    wait_until(Duration::from_secs(30), "every host resumed", || {
        hosts.iter().all(|&h| {
            let now = following(&cluster, h);
            assert_eq!(routes(&cluster, h), 6, "host {h}'s routes changed");
            now.healthy && now.resumed > before[h].resumed
        })
    });
    for h in hosts {
        let now = following(&cluster, h);
        println!("host {h}: {before:?} -> {now:?}", before = before[h]);
        assert_eq!(now.full_reads, before[h].full_reads, "host {h} read again");
    }
    // Still following: a container attached now is routed everywhere.
    let late = cluster.attach(1);
    wait_routes(&cluster, &hosts, 7);
    assert!(cluster.ping(first, late, 1));
}

/// Host 1 is cut off from etcd while a container is attached on host 0 and etcd compacts its
/// history past host 1's revision. Back in reach, host 1's watches find their revision gone
/// and each scope (hosts, revocations, the network) is read once; host 0, which never lost
/// its watches, reads nothing again.
#[test]
fn after_a_compaction_past_its_revision_a_host_reads_each_scope_once() {
    needs_root!();
    let mut cluster = Cluster::with_etcd(2, 1);
    // Long enough that host 1 keeps its lease while it is cut off.
    cluster.lease_ttl_s = 60;
    let b = cluster.attach(1);
    cluster.attach(0);
    wait_routes(&cluster, &[0, 1], 4);
    let before = [following(&cluster, 0), following(&cluster, 1)];
    let cut = |cluster: &Cluster, action: &str| {
        for ip in cluster.etcd().addresses() {
            let ns = &cluster.hosts[1].ns;
            ns.ip(&["route", action, "blackhole", &format!("{ip}/32")]);
        }
    };
    cut(&cluster, "add");
    wait_until(Duration::from_secs(20), "host 1's watches break", || {
        let error = cluster.status(1)["lighthouse_state"]["error"].clone();
        let error = error.as_str().unwrap_or_default().to_string();
        ["hosts: ", "revocations: ", "network multihost: "]
            .iter()
            .all(|scope| error.contains(scope))
    });
    let c = cluster.attach(0);
    wait_routes(&cluster, &[0], 5);
    let etcd = cluster.etcd();
    // Something after the new container's entry, so the compaction passes it too.
    etcd.etcdctl(&etcd.endpoints(), &["put", "/elsewhere", "x"]);
    etcd.compact(etcd.revision());
    cut(&cluster, "del");
    let took = wait_routes(&cluster, &[1], 5);
    println!("host 1 routed the new container {took:?} after it was back in reach");
    wait_until(
        Duration::from_secs(20),
        "host 1 read every scope again",
        || {
            let now = following(&cluster, 1);
            now.healthy && now.full_reads >= before[1].full_reads + 3
        },
    );
    assert!(cluster.ping(b, c, 1));
    let after = [following(&cluster, 0), following(&cluster, 1)];
    println!("host 0: {:?} -> {:?}", before[0], after[0]);
    println!("host 1: {:?} -> {:?}", before[1], after[1]);
    assert_eq!(after[0].full_reads, before[0].full_reads);
    assert_eq!(
        after[1].full_reads,
        before[1].full_reads + 3,
        "hosts, revocations and the network, each once"
    );
}

/// Hosts 0 and 1 serve network "multihost", host 2 network "blue" (another subnet): no host holds a route or
/// entry of a network it does not serve. Host 0 joins "blue" with a container: it reads that
/// network and reaches host 2's container; when the container leaves, "blue" is forgotten.
#[test]
fn a_host_follows_only_the_networks_it_serves() {
    needs_root!();
    let mut cluster = Cluster::with_etcd(3, 1);
    cluster.also_certified = vec!["blue".into()];
    cluster.also_granted = vec!["198.51.101.0/24".into()];
    for h in 0..3 {
        cluster.grant(h);
    }
    cluster.attach(0);
    cluster.attach(1);
    (cluster.network, cluster.subnet) = ("blue".into(), "198.51.101.0/24".into());
    let blue_far = cluster.attach(2);
    wait_routes(&cluster, &[0, 1], 4);
    wait_routes(&cluster, &[2], 2);
    let networks = |cluster: &Cluster, h: usize| following(cluster, h).networks;
    assert_eq!(networks(&cluster, 0), ["multihost"]);
    assert_eq!(networks(&cluster, 2), ["blue"]);

    let blue_near = cluster.attach(0);
    let took = wait_routes(&cluster, &[0], 8);
    println!("host 0 routed network blue {took:?} after its first container's ADD returned");
    assert_eq!(networks(&cluster, 0), ["blue", "multihost"]);
    assert!(cluster.ping(blue_near, blue_far, 1));
    assert_eq!(routes(&cluster, 1), 4, "host 1 never follows blue");

    let gone = &cluster.containers[blue_near];
    let out = cluster.cni(0, "DEL", &gone.ns, &gone.id);
    assert!(out.status.success());
    wait_routes(&cluster, &[0], 4);
    assert_eq!(networks(&cluster, 0), ["multihost"]);
}
