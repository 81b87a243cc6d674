//! Several hosts on an etcd lighthouse: a real 3-member etcd cluster over TLS with client
//! certificates, and hosts that share nothing else but the CA's certificate (each its own
//! state directory, key, daemon and etcd client certificate). Then the faults a cluster meets:
//! members lost, quorum lost, a host killed for good and restarted. Needs root and etcd.

mod cluster;

use flatnet_test_support::needs_root;
use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use cluster::*;
use flatnet::netns::NetworkNamespace;
use flatnet::tunnel::{decode_key, Limits, PublicKey, StaticKeys, TunnelManager};
use flatnet_test_support::{run_ok, stdout_json, TestNetns};

#[test]
fn three_hosts_on_etcd_get_unique_addresses_and_reach_each_other() {
    needs_root!();
    let mut cluster = Cluster::with_etcd(3, 3);
    let containers: Vec<usize> = (0..6).map(|i| cluster.attach(i % 3)).collect();
    let ips: HashSet<_> = cluster.containers.iter().map(|c| c.ip).collect();
    assert_eq!(ips.len(), 6, "addresses are unique cluster-wide");
    // 6 containers and 3 host members, on every host.
    let took = wait_routes(&cluster, &[0, 1, 2], 9);
    println!("every host knows every address {took:?} after the last ADD");
    for &from in &containers {
        for &to in containers.iter().filter(|&&t| t != from) {
            assert!(cluster.ping(from, to, 1), "{from} -> {to}");
        }
    }
    cluster.tcp(containers[0], containers[1], 7200);
    cluster.tcp(containers[5], containers[3], 7201);

    for host in 0..3 {
        let state = &cluster.status(host)["lighthouse_state"];
        assert_eq!(state["backend"], "etcd");
        assert_eq!(state["healthy"], true, "host {host}: {state}");
        assert!(state["revision"].as_i64().unwrap() > 0);
        let left = state["lease_ttl_left_ms"].as_u64().unwrap();
        assert!(left > 0 && left <= u64::from(cluster::etcd::LEASE_TTL_S) * 1000);
        // Nothing of the lighthouse is on disk: no shared file, no local copy.
        assert!(!cluster.shared.path().join("lighthouse.json").exists());
    }

    // A container removed on one host vanishes from the others' route tables.
    let gone = cluster.containers.remove(containers[0]);
    let out = cluster.cni(gone.host, "DEL", &gone.ns, &gone.id);
    assert!(out.status.success());
    let took = wait_routes(&cluster, &[0, 1, 2], 8);
    println!("a removed container left every route table {took:?} after DEL");
}

#[test]
fn quorum_lost_keeps_traffic_and_fails_new_attaches_fast_until_it_is_back() {
    needs_root!();
    let mut cluster = Cluster::with_etcd(2, 3);
    let (a, b) = (cluster.attach(0), cluster.attach(1));
    wait_routes(&cluster, &[0, 1], 4);
    assert!(cluster.ping(a, b, 1));

    // One member lost: the cluster has quorum, attaches and traffic go on.
    cluster.etcd.as_mut().unwrap().kill_member(0);
    let c = cluster.attach(0);
    wait_routes(&cluster, &[0, 1], 5);
    assert!(cluster.ping(c, b, 1) && cluster.ping(b, a, 1));

    // Quorum lost: what is established goes on; a new ADD fails fast with "try again".
    cluster.etcd.as_mut().unwrap().kill_member(1);
    let pinger = Pinger::start(&cluster, a, b, 0.1, 30);
    let ns = TestNetns::new("ctr");
    let started = Instant::now();
    let out = cluster.cni(1, "ADD", &ns, "refused-without-quorum");
    let took = started.elapsed();
    println!("ADD without quorum failed after {took:?}");
    assert!(!out.status.success());
    let error = stdout_json(&out);
    assert_eq!(error["code"], 11, "{error}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(!ns.has_link("eth0"), "nothing is left in the namespace");
    assert_eq!(
        cluster.leases(1),
        2,
        "no lease is left: {:?}",
        cluster.leases(1)
    );
    let (replies, outage) = pinger.finish(Vec::new());
    println!("without quorum: {replies}/30 pings answered, longest gap {outage:.1} s");
    assert!(replies >= 29, "{replies}/30");

    // Quorum back: new attaches work again, with the same daemons.
    let pids = (cluster.daemon_pid(0), cluster.daemon_pid(1));
    cluster.etcd.as_mut().unwrap().restart_members(&[0, 1]);
    let d = cluster.attach(1);
    assert_eq!((cluster.daemon_pid(0), cluster.daemon_pid(1)), pids);
    wait_routes(&cluster, &[0, 1], 6);
    assert!(cluster.ping(d, a, 1) && cluster.ping(c, d, 1));
}

/// The host's lease in its status (hex), once it holds one and etcd answers.
fn healthy_lease(cluster: &Cluster, host: usize) -> Option<String> {
    let state = &cluster.status(host)["lighthouse_state"];
    let healthy = state["healthy"].as_bool() == Some(true);
    healthy
        .then(|| state["lease_id"].as_str().map(str::to_string))
        .flatten()
}

/// etcd out of a host's reach for longer than its lease: etcd lets the lease lapse, and the
/// host, once etcd answers again, takes a new one with its containers under it, and attaches
/// again (before, it kept asking etcd for the lapsed lease for ever).
#[test]
fn a_lease_that_lapsed_while_etcd_was_out_of_reach_is_replaced() {
    needs_root!();
    let mut cluster = Cluster::with_etcd(2, 1);
    let (a, b) = (cluster.attach(0), cluster.attach(1));
    wait_routes(&cluster, &[0, 1], 4);
    let before = healthy_lease(&cluster, 0).expect("a lease");

    let ns = cluster.hosts[0].ns.name.clone();
    let nft = |rules: &str| run_ok("ip", &["netns", "exec", &ns, "nft", rules]);
    nft("add table inet etcd_cut; add chain inet etcd_cut out { type filter hook output priority 0; }; add rule inet etcd_cut out tcp dport 2379 drop");
    // Until etcd itself says the lease is gone.
    let etcd = cluster.etcd();
    let started = Instant::now();
    while !String::from_utf8_lossy(
        &etcd
            .etcdctl(&etcd.endpoints(), &["lease", "timetolive", &before])
            .stdout,
    )
    .contains("expired")
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the lease never lapsed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    nft("delete table inet etcd_cut");

    let started = Instant::now();
    let after = loop {
        match healthy_lease(&cluster, 0) {
            Some(lease) if lease != before => break lease,
            _ if started.elapsed() > Duration::from_secs(30) => {
                panic!("no new lease: {}", cluster.status(0)["lighthouse_state"])
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    println!(
        "lease {before} lapsed; {after} taken {:?} after etcd came back",
        started.elapsed()
    );
    // The container attached before is under the new lease: the other host still routes it.
    let c = cluster.attach(0);
    wait_routes(&cluster, &[0, 1], 5);
    assert!(cluster.ping(a, b, 1) && cluster.ping(c, b, 1));
}

#[test]
fn a_host_killed_for_good_vanishes_after_its_lease_and_a_restart_brings_it_back() {
    needs_root!();
    let mut cluster = Cluster::with_etcd(3, 3);
    let (a, _b, c) = (cluster.attach(0), cluster.attach(1), cluster.attach(2));
    wait_routes(&cluster, &[0, 1, 2], 6);
    assert!(cluster.ping(a, c, 1));

    let victim = cluster.daemon_pid(2);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    // Its container and host member go when its lease runs out, and not before.
    let ttl = Duration::from_secs(cluster::etcd::LEASE_TTL_S.into());
    let took = wait_routes(&cluster, &[0, 1], 4);
    println!("a dead host left the route tables {took:?} after kill -9 (TTL {ttl:?})");
    assert!(took <= ttl + Duration::from_secs(3), "{took:?}");
    assert!(!cluster.ping(a, c, 1), "nothing answers for the dead host");
    let peers = cluster.status(0)["peers"].as_array().unwrap().len();
    assert!(peers <= 1, "host 0 keeps {peers} peers");

    // Restarted (its container still running): served and reachable again.
    cluster.start_daemon(2);
    wait_routes(&cluster, &[0, 1, 2], 6);
    // The first echo may meet host 0's session with the old daemon, which the new one answers
    // with a handshake: three tries.
    assert!(cluster.ping(a, c, 3) && cluster.ping(c, a, 3));
}

fn refused(cluster: &Cluster, host: usize) -> u64 {
    cluster.status(host)["refused_entries"].as_u64().unwrap()
}

fn peer_keys(cluster: &Cluster, host: usize) -> Vec<String> {
    let status = cluster.status(host);
    let peers = status["peers"].as_array().unwrap();
    peers
        .iter()
        .map(|p| p["public_key"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Three hosts on etcd with a container each (host 0's first), known to every host.
fn three_hosts_with_a_container_each() -> (Cluster, [usize; 3]) {
    let mut cluster = Cluster::with_etcd(3, 3);
    let containers = [cluster.attach(0), cluster.attach(1), cluster.attach(2)];
    wait_routes(&cluster, &[0, 1, 2], 6);
    (cluster, containers)
}

#[test]
fn a_host_cannot_take_another_hosts_address() {
    needs_root!();
    // The taker is host 0: its name sorts first, so only the certificates stand between it
    // and the victim's traffic (of two believed claims the first by name would win).
    let (cluster, [_c, b, a]) = three_hosts_with_a_container_each();
    // Host 0, taken over, publishes container b's address under its own name and key (what
    // its etcd credentials let it write), with b's container id.
    let taker = cluster.status(0);
    let entry = serde_json::json!({
        "network": "multihost",
        "ip": cluster.containers[b].ip,
        "container_id": cluster.containers[b].id,
        "host": {"endpoint": taker["listen"], "public_key": taker["public_key"]},
    });
    let key = format!(
        "/flatnet/v1/entries/multihost/host-0/{}",
        cluster.containers[b].ip
    );
    let etcd = cluster.etcd();
    let out = etcd.etcdctl_as(0, &["put", &key, &entry.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Under the victim's prefix its credentials write nothing: etcd's RBAC refuses.
    let victims = format!(
        "/flatnet/v1/entries/multihost/host-1/{}",
        cluster.containers[b].ip
    );
    for refused_op in [
        vec!["put", victims.as_str(), "{}"],
        vec!["del", victims.as_str()],
        vec!["del", "/flatnet/v1/hosts/host-1/cert"],
    ] {
        let out = etcd.etcdctl_as(0, &refused_op);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("permission denied"),
            "etcdctl {refused_op:?} as host-0: {stderr}"
        );
    }
    wait_until(Duration::from_secs(5), "the claim is refused", || {
        refused(&cluster, 2) == 1 && refused(&cluster, 1) == 1
    });
    assert_eq!(routes(&cluster, 2), 6, "no route was added or replaced");
    // b's traffic still goes to b's host, and the taker gets none of it.
    assert!(cluster.ping(a, b, 2) && cluster.ping(b, a, 1));
    let taker_key = taker["public_key"].as_str().unwrap().to_string();
    assert!(!peer_keys(&cluster, 2).contains(&taker_key));
    assert!(
        peer_keys(&cluster, 0).is_empty(),
        "the taker received nothing"
    );
}

#[test]
fn a_host_without_the_cas_grant_cannot_join() {
    needs_root!();
    let mut cluster = Cluster::with_etcd(2, 3);
    let (a, _b) = (cluster.attach(0), cluster.attach(1));
    wait_routes(&cluster, &[0, 1], 4);

    // A host whose certificate another CA signed, trusting that CA: it runs, publishes, and
    // nobody believes it.
    let rogue_ca = tempfile::tempdir().unwrap();
    Cluster::make_ca(&rogue_ca.path().join("ca"));
    let rogue = cluster.add_host();
    cluster.grant_by(rogue, &rogue_ca.path().join("ca"));
    cluster.hosts[rogue].network_ca = Some(rogue_ca.path().join("ca/ca.crt"));
    let r = cluster.attach(rogue);
    wait_until(
        Duration::from_secs(5),
        "the rogue host's entries are refused",
        || refused(&cluster, 0) == 2 && refused(&cluster, 1) == 2,
    );
    assert_eq!(routes(&cluster, 0), 4);
    assert!(!cluster.ping(a, r, 1) && !cluster.ping(r, a, 1));
    let rogue_key = cluster.status(rogue)["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!peer_keys(&cluster, 0).contains(&rogue_key));

    // A host that trusts the network's CA with a certificate of another: refused at ADD.
    let honest = cluster.add_host();
    cluster.grant_by(honest, &rogue_ca.path().join("ca"));
    let ns = TestNetns::new("ctr");
    let out = cluster.cni(honest, "ADD", &ns, "no-grant");
    assert!(!out.status.success());
    let error = stdout_json(&out);
    assert!(
        error["msg"].as_str().unwrap().contains("host certificate"),
        "{error}"
    );
    assert!(!ns.has_link("eth0"));
}

#[test]
fn an_address_outside_the_hosts_block_is_refused() {
    needs_root!();
    let mut cluster = Cluster::with_etcd(2, 3);
    let other = cluster.block(1).network();
    let ns = TestNetns::new("ctr");
    let args = format!(
        "IgnoreUnknown=1;IP={}",
        Ipv4Addr::from(u32::from(other) + 3)
    );
    let conf = cluster.conf_with(0, &serde_json::Value::Null);
    let out = cluster.cni_conf(0, "ADD", &ns, "wrong-block", &args, &conf);
    assert!(!out.status.success());
    let error = stdout_json(&out);
    assert!(
        error["msg"]
            .as_str()
            .unwrap()
            .contains("not in this host's blocks"),
        "{error}"
    );
    assert!(!ns.has_link("eth0"));
    let (c, _) = cluster.attach_at(0, Ipv4Addr::from(u32::from(cluster.block(0).network()) + 3));
    assert!(cluster.block(0).contains(&cluster.containers[c].ip));
}

#[test]
fn a_container_removed_while_its_daemon_was_down_leaves_the_lighthouse() {
    needs_root!();
    let mut cluster = Cluster::with_etcd(2, 3);
    let (_a, _b, _c) = (cluster.attach(0), cluster.attach(1), cluster.attach(1));
    wait_routes(&cluster, &[0, 1], 5);
    let victim = cluster.daemon_pid(1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    // Removed while no daemon runs on its host, within the lease's TTL.
    let gone = cluster.containers.remove(2);
    let out = cluster.cni(gone.host, "DEL", &gone.ns, &gone.id);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The restarted daemon takes its lease back, and drops what nothing records.
    cluster.start_daemon(1);
    let took = wait_routes(&cluster, &[0, 1], 4);
    println!("the stale entry left {took:?} after the restart");
    assert!(cluster.ping(0, 1, 3));
}

/// A host taken over: its own key, in a sender that seals whatever it is given. It speaks the
/// real protocol (the library's `TunnelManager`) from the host's underlay address, on a port of
/// its own, to one peer host; only the peer's checks stand between it and the peer's
/// containers.
struct TamperedSender {
    tunnels: TunnelManager,
    socket: UdpSocket,
    peer: PublicKey,
    endpoint: SocketAddr,
}

impl TamperedSender {
    fn new(cluster: &Cluster, host: usize, peer: usize) -> TamperedSender {
        let h = &cluster.hosts[host];
        let keys = StaticKeys::load(&h.state.path().join("host.key"))
            .unwrap()
            .expect("the host's key");
        let address = h.address;
        let socket = NetworkNamespace::open(Path::new(h.ns.path_str()))
            .unwrap()
            .run_inside(|| {
                UdpSocket::bind((address, 0)).map_err(|source| flatnet::Error::Io {
                    context: "binding".into(),
                    source,
                })
            })
            .unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let status = cluster.status(peer);
        TamperedSender {
            tunnels: TunnelManager::new(keys, Limits::default()),
            socket,
            peer: decode_key(status["public_key"].as_str().unwrap()).unwrap(),
            endpoint: status["listen"].as_str().unwrap().parse().unwrap(),
        }
    }

    /// Starts a handshake with the peer, `plaintext` waiting for its answer.
    fn knock(&mut self, plaintext: &[u8]) {
        let socket = &self.socket;
        let mut send = |datagram: &[u8], to: SocketAddr| {
            socket.send_to(datagram, to).unwrap();
        };
        let mut out = vec![0; plaintext.len() + 64];
        self.tunnels
            .encrypt_packet(
                &self.peer,
                self.endpoint,
                plaintext,
                &mut out,
                Instant::now(),
                &mut send,
            )
            .unwrap();
    }

    /// Seals `plaintext` (network tag and packet) for the peer, after a handshake if needed.
    fn send(&mut self, plaintext: &[u8]) {
        let TamperedSender {
            tunnels,
            socket,
            peer,
            endpoint,
        } = self;
        let mut send = |datagram: &[u8], to: SocketAddr| {
            socket.send_to(datagram, to).unwrap();
        };
        let mut out = vec![0; plaintext.len() + 64];
        tunnels
            .encrypt_packet(
                peer,
                *endpoint,
                plaintext,
                &mut out,
                Instant::now(),
                &mut send,
            )
            .unwrap();
        // Without a session the packet waits for the handshake's answer, then goes.
        let (mut datagram, mut plain) = ([0; 2048], [0; 2048]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while tunnels.session_count() == 0 {
            assert!(
                Instant::now() < deadline,
                "the peer did not answer the handshake"
            );
            if let Ok((n, from)) = socket.recv_from(&mut datagram) {
                let now = Instant::now();
                let mut trust = |_: &PublicKey| true;
                tunnels.decrypt_packet(
                    &datagram[..n],
                    from,
                    &mut plain,
                    now,
                    &mut trust,
                    &mut send,
                );
            }
        }
    }
}

/// The network tag and an IPv4 UDP packet, as a data plane seals them.
fn tagged_udp(tag: u32, src: Ipv4Addr, dst: Ipv4Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut header = vec![0x45, 0, 0, 0, 0, 1, 0, 0, 64, 17, 0, 0];
    header[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    header.extend(src.octets());
    header.extend(dst.octets());
    let sum = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    let checksum = !((folded & 0xffff) + (folded >> 16)) as u16;
    header[10..12].copy_from_slice(&checksum.to_be_bytes());
    let mut packet = tag.to_be_bytes().to_vec();
    packet.extend(header);
    packet.extend(4000u16.to_be_bytes());
    packet.extend(port.to_be_bytes());
    packet.extend(((8 + payload.len()) as u16).to_be_bytes());
    packet.extend([0, 0]); // no UDP checksum (allowed over IPv4)
    packet.extend(payload);
    packet
}

fn listener_heard(listener: Child) -> bool {
    let out = listener.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).contains("received")
}

#[test]
fn a_host_cannot_send_from_another_hosts_addresses() {
    needs_root!();
    let (cluster, [a, b, c]) = three_hosts_with_a_container_each();
    let tag = network_tag(&cluster, 0);
    let ip = |i: usize| cluster.containers[i].ip;
    let (to, ns) = (ip(a), cluster.containers[a].ns.name.clone());
    let mut sender = TamperedSender::new(&cluster, 2, 0);

    // Host 2 sending as its own container: delivered (the sender works).
    let listener = udp_listener(&ns, &to.to_string(), 7300);
    sender.send(&tagged_udp(tag, ip(c), to, 7300, b"own"));
    assert!(
        listener_heard(listener),
        "host 2's own packet did not arrive"
    );

    // As host 1's container (an address of host 1's block): dropped by host 0 and counted.
    let before = cluster.drops(0, "spoofed");
    let listener = udp_listener(&ns, &to.to_string(), 7301);
    for _ in 0..5 {
        sender.send(&tagged_udp(tag, ip(b), to, 7301, b"spoofed"));
    }
    wait_until(Duration::from_secs(5), "5 spoofed packets counted", || {
        cluster.drops(0, "spoofed") >= before + 5
    });
    assert!(
        !listener_heard(listener),
        "a spoofed packet reached the container"
    );
}

/// A host certified for network "intruders" only, whose block lies inside the victim network's
/// subnet, tries to publish on the victim network "multihost": its etcd role refuses (it may
/// write on its own networks only). Written for it anyway, as roles wider than its certificate
/// would let it (under its own name with the victim's identifier, and with its own): no host
/// believes any of it and its names are not answered. The victim hosts do not follow network
/// "intruders" at all, so the intruder is no peer of theirs: its handshakes are refused.
#[test]
fn a_host_certified_for_one_network_cannot_join_another() {
    needs_root!();
    let mut cluster = Cluster::with_etcd(2, 1);
    let (a, b) = (cluster.attach(0), cluster.attach(1));
    wait_routes(&cluster, &[0, 1], 4);
    let victim_tag = network_tag(&cluster, 0);
    cluster.network = "intruders".into();
    let intruder = cluster.add_host();
    cluster.grant(intruder);
    let own = cluster.attach(intruder);
    cluster.network = "multihost".into();
    let status = cluster.status(intruder);
    let own_tag = network_tag(&cluster, intruder);
    assert_ne!(own_tag, victim_tag);
    let block = cluster.block(intruder);
    let claims = [
        ("multihost", victim_tag, 5),
        ("intruders", victim_tag, 6),
        ("multihost", own_tag, 7),
    ];
    let etcd = cluster.etcd();
    for (network, tag, offset) in claims {
        let ip = Ipv4Addr::from(u32::from(block.network()) + offset);
        let entry = serde_json::json!({
            "network": network,
            "network_id": tag,
            "ip": ip,
            "container_id": format!("intruder-{offset}"),
            "names": ["intruder", "github.com"],
            "host": {"endpoint": status["listen"], "public_key": status["public_key"]},
        });
        let key = format!("/flatnet/v1/entries/{network}/host-{intruder}/{ip}");
        let put = ["put", key.as_str(), &entry.to_string()];
        let out = etcd.etcdctl_as(intruder, &put);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if network == "intruders" {
            assert!(out.status.success(), "{stderr}");
            continue;
        }
        assert!(
            !out.status.success() && stderr.contains("permission denied"),
            "{key} as the intruder: {stderr}"
        );
        let out = etcd.etcdctl(&etcd.endpoints(), &put);
        assert!(out.status.success());
    }
    // Its own container's entry (and host member) on its own network are not even read
    // here: hosts 0 and 1 follow "multihost" only.
    wait_until(Duration::from_secs(5), "every claim is refused", || {
        refused(&cluster, 0) == 2 && refused(&cluster, 1) == 2
    });
    assert_eq!(
        routes(&cluster, 0),
        4,
        "2 own + 2 of host 1, none of intruders"
    );
    let claimed: Vec<Ipv4Addr> = claims
        .iter()
        .map(|&(_, _, offset)| Ipv4Addr::from(u32::from(block.network()) + offset))
        .collect();
    for name in ["intruder", "github.com"] {
        let answer = lookup(&cluster, a, name);
        let hijacked = claimed.iter().any(|ip| answer.contains(&ip.to_string()));
        assert!(
            !hijacked,
            "{name} answered with the intruder's address: {answer}"
        );
    }
    assert!(lookup(&cluster, a, "intruder").contains("NXDOMAIN"));
    assert!(cluster.ping(a, b, 1));

    // Packets tagged for the victim network, from an address of its block: the intruder
    // cannot even open a tunnel to carry them.
    let to = cluster.containers[a].ip;
    let ns = cluster.containers[a].ns.name.clone();
    let from = cluster.containers[own].ip;
    let before = cluster.drops(0, "unknown_key");
    let listener = udp_listener(&ns, &to.to_string(), 7302);
    let mut sender = TamperedSender::new(&cluster, intruder, 0);
    sender.knock(&tagged_udp(victim_tag, from, to, 7302, b"intruder"));
    wait_until(
        Duration::from_secs(5),
        "the intruder's handshake refused",
        || cluster.drops(0, "unknown_key") > before,
    );
    assert!(
        !listener_heard(listener),
        "a packet of another network's host reached the container"
    );
}

/// Host 1's certificate runs out while it serves: every peer drops its routes and its tunnels
/// within a second of the expiry, and host 1 says so ahead of time.
#[test]
fn a_certificate_that_expires_while_its_host_runs_is_dropped_at_that_moment() {
    needs_root!();
    let mut cluster = Cluster::with_etcd(2, 1);
    cluster.grant_for(1, 20);
    let (a, b) = (cluster.attach(0), cluster.attach(1));
    wait_routes(&cluster, &[0, 1], 4);
    assert!(cluster.ping(a, b, 1));
    let not_after = cluster.status(1)["certificate_not_after"].as_u64().unwrap();
    let key = cluster.status(1)["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(peer_keys(&cluster, 0).contains(&key));
    // Its own daemon warns (status text, the metric's source) long before.
    let status = flatnetd_status_text(&cluster, 1);
    assert!(
        status.contains("WARNING: this host's certificate expires in"),
        "{status}"
    );

    // Void after `not_after`: from the first instant of the next second.
    let expiry = std::time::UNIX_EPOCH + Duration::from_secs(not_after + 1);
    while std::time::SystemTime::now() < expiry {
        assert_eq!(routes(&cluster, 0), 4, "dropped before its expiry");
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_until(Duration::from_secs(1), "host 1's routes dropped", || {
        routes(&cluster, 0) == 2
    });
    let late = std::time::SystemTime::now()
        .duration_since(expiry)
        .unwrap_or_default();
    println!("dropped {late:?} after the expiry");
    assert!(
        !peer_keys(&cluster, 0).contains(&key),
        "its tunnel is closed"
    );
    assert!(!cluster.ping(a, b, 1));
}

/// The operator revokes host 2's key and puts the CA's new list in etcd: every host drops
/// host 2's routes and tunnels within 2 s. A host's own credentials cannot put a list.
#[test]
fn a_revoked_key_is_dropped_by_every_host_within_two_seconds() {
    needs_root!();
    let (cluster, [a, b, c]) = three_hosts_with_a_container_each();
    assert!(cluster.ping(a, c, 1) && cluster.ping(b, c, 1));
    let revoked = cluster.status(2)["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    let ca_dir = cluster.network_ca.as_ref().unwrap().path();
    flatnet_cert(&[
        "revoke".as_ref(),
        "--name".as_ref(),
        "host-2".as_ref(),
        "--ca-dir".as_ref(),
        ca_dir.as_os_str(),
    ]);
    let list = std::fs::read_to_string(ca_dir.join("revocations.json")).unwrap();
    let etcd = cluster.etcd();
    let by_host = etcd.etcdctl_as(0, &["put", "/flatnet/v1/revocations/test-network", &list]);
    assert!(
        String::from_utf8_lossy(&by_host.stderr).contains("permission denied"),
        "a host put the revocation list"
    );
    let published = Instant::now();
    let put = etcd.etcdctl(
        &etcd.endpoints(),
        &["put", "/flatnet/v1/revocations/test-network", &list],
    );
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let took = wait_until(Duration::from_secs(2), "host 2 dropped everywhere", || {
        [0, 1]
            .iter()
            .all(|&h| routes(&cluster, h) == 4 && !peer_keys(&cluster, h).contains(&revoked))
    });
    println!(
        "revoked key dropped {took:?} after the list was put ({:?} in all)",
        published.elapsed()
    );
    assert!(!cluster.ping(a, c, 1), "the revoked host is still reached");
    assert!(cluster.ping(a, b, 1), "the others still talk");
}

/// A CA rotation half done: every host trusts a bundle of the old and the new CA, host 0 is
/// still signed by the old one, host 1 already by the new one (which carried the network's
/// identifier over), and they talk. A host that trusts only the old CA does not believe host 1.
#[test]
fn hosts_signed_by_either_ca_of_a_bundle_talk_during_a_rotation() {
    needs_root!();
    let mut cluster = Cluster::with_etcd(2, 1);
    let old = cluster.network_ca.as_ref().unwrap().path().to_path_buf();
    let dir = tempfile::tempdir().unwrap();
    let (new, bundle) = (dir.path().join("new"), dir.path().join("bundle.crt"));
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    flatnet_cert(&[
        os("ca"),
        os("--name"),
        os("test-network-2"),
        os("--out-dir"),
        new.as_os_str(),
        os("--replacing"),
        old.as_os_str(),
    ]);
    let (old_crt, new_crt) = (old.join("ca.crt"), new.join("ca.crt"));
    flatnet_cert(&[
        os("bundle"),
        os("--out"),
        bundle.as_os_str(),
        old_crt.as_os_str(),
        new_crt.as_os_str(),
    ]);
    for host in 0..2 {
        cluster.hosts[host].network_ca = Some(bundle.clone());
    }
    cluster.grant_by(1, &new);
    let (a, b) = (cluster.attach(0), cluster.attach(1));
    wait_routes(&cluster, &[0, 1], 4);
    assert!(cluster.ping(a, b, 2) && cluster.ping(b, a, 2));
    assert_eq!(network_tag(&cluster, 0), network_tag(&cluster, 1));

    let only_old = cluster.add_host();
    cluster.grant(only_old);
    let c = cluster.attach(only_old);
    wait_until(Duration::from_secs(5), "host 1's entries refused", || {
        refused(&cluster, only_old) == 2
    });
    assert!(cluster.ping(c, a, 1), "old CA to old CA");
    assert!(
        !cluster.ping(c, b, 1),
        "a host signed by a CA it does not trust"
    );
}

fn flatnetd_status_text(cluster: &Cluster, host: usize) -> String {
    let out = std::process::Command::new(DAEMON)
        .arg("--state-dir")
        .arg(cluster.hosts[host].state.path())
        .arg("status")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The identifier host `host` tags the cluster's first network with, from its status.
fn network_tag(cluster: &Cluster, host: usize) -> u32 {
    let shown = cluster.status(host)["networks"][0]["id"].clone();
    u32::from_str_radix(shown.as_str().unwrap(), 16).unwrap()
}

#[test]
fn colliding_network_names_get_identifiers_of_their_own_from_the_ca() {
    needs_root!();
    let (a, b) = flatnet::network_id::colliding_names("net-");
    let mut cluster = Cluster::with_etcd(2, 1);
    cluster.also_certified = vec![a.clone(), b.clone()];
    cluster.grant(0);
    cluster.grant(1);
    cluster.network = a.clone();
    cluster.attach(0);
    cluster.network = b.clone();
    cluster.attach(1);
    // The first name keeps its hash; the second gets another number, in every certificate.
    let registry: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            cluster
                .network_ca
                .as_ref()
                .unwrap()
                .path()
                .join("networks.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let (id_a, id_b) = (
        registry[&a].as_u64().unwrap(),
        registry[&b].as_u64().unwrap(),
    );
    assert_eq!(id_a, u64::from(flatnet::network_id::fnv1a(&a)));
    assert_ne!(id_a, id_b);
    // Each data plane tags its network with the identifier its certificate gives.
    let shown = |host: usize| u64::from(network_tag(&cluster, host));
    assert_eq!((shown(0), shown(1)), (id_a, id_b));
}
