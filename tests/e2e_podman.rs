//! End to end with real Podman, both backends:
//! - CNI: the host's Podman 4.3 runs `flatnet-cni` from /usr/lib/cni;
//! - netavark: Podman 5 in the trixie chroot runs the `flatnet` plugin.
//!
//! `scripts/test.sh` installs both, builds the image and sets FLATNET_E2E=1. Without it these
//! tests skip on a developer machine and fail in CI, where skipping would hide a regression.

use flatnet_test_support::needs_podman;
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::Instant;

use flatnet_test_support::podman::{Backend, Net, IMAGE};

const CHURN: usize = 40;

fn basics(backend: Backend, name: &str, subnet: &str, static_ip: &str) {
    let net = Net::create(backend, name, subnet);

    let hello = net.podman_ok(&["run", "--rm", "--network", name, IMAGE, "echo", "hello"]);
    assert_eq!(hello.trim(), "hello");
    assert!(
        net.leftovers().is_empty(),
        "--rm left {:?}",
        net.leftovers()
    );

    // Two containers: addresses from the subnet, distinct, and what inspect reports is real.
    let (a, b) = (net.container(1), net.container(2));
    net.run_detached(&a, &[]);
    net.run_detached(&b, &[]);
    let mut seen = HashSet::new();
    for c in [&a, &b] {
        let inside = net.address_inside(c, "eth0").expect("eth0 has an address");
        assert!(
            net.subnet.contains(&inside.addr()),
            "{inside} outside {}",
            net.subnet
        );
        assert_eq!(inside.prefix_len(), net.subnet.prefix_len());
        assert_eq!(net.inspect_ip(c), inside.addr());
        seen.insert(inside.addr());
    }
    assert_eq!(seen.len(), 2, "both containers got {seen:?}");

    // --ip is honoured.
    let fixed = net.container(3);
    let wanted: Ipv4Addr = static_ip.parse().unwrap();
    net.run_detached(&fixed, &["--ip", static_ip]);
    assert_eq!(net.address_inside(&fixed, "eth0").unwrap().addr(), wanted);
    assert_eq!(net.inspect_ip(&fixed), wanted);
    assert_eq!(net.leases(), 3);

    // Restart: a new namespace, an address again, and no lease leaked by the old one.
    net.podman_ok(&["restart", "-t", "0", &a]);
    let after = net.address_inside(&a, "eth0").expect("eth0 after restart");
    assert!(net.subnet.contains(&after.addr()));
    assert_eq!(net.inspect_ip(&a), after.addr());
    assert_eq!(net.leases(), 3);

    net.remove_containers();
    assert!(net.leftovers().is_empty(), "rm left {:?}", net.leftovers());
}

fn churn(backend: Backend, name: &str, subnet: &str) {
    let net = Net::create(backend, name, subnet);
    std::thread::scope(|s| {
        for n in 0..CHURN {
            let net = &net;
            s.spawn(move || net.run_detached(&net.container(n), &[]));
        }
    });
    let ips: Vec<Ipv4Addr> = (0..CHURN)
        .map(|n| net.inspect_ip(&net.container(n)))
        .collect();
    let unique: HashSet<_> = ips.iter().collect();
    assert_eq!(unique.len(), CHURN, "duplicate addresses among {ips:?}");
    assert!(ips.iter().all(|ip| net.subnet.contains(ip)));
    assert_eq!(net.leases(), CHURN);

    std::thread::scope(|s| {
        for n in 0..CHURN {
            let net = &net;
            s.spawn(move || net.podman_ok(&["rm", "-f", "-t", "0", &net.container(n)]));
        }
    });
    let left = net.leftovers();
    assert!(
        left.is_empty(),
        "{} leftovers after churn: {left:?}",
        left.len()
    );
    println!(
        "churn {backend:?}: {CHURN} containers, {} unique addresses, 0 leftovers",
        unique.len()
    );
}

/// Two containers talk through Flatnet's tunnels: ping both ways, TCP both ways, 50 MB intact.
fn traffic(backend: Backend, name: &str, subnet: &str) {
    let net = Net::create(backend, name, subnet);
    let (a, b) = (net.container(1), net.container(2));
    net.run_detached(&a, &["--cap-add", "NET_RAW"]);
    net.run_detached(&b, &["--cap-add", "NET_RAW"]);
    let (ip_a, ip_b) = (net.inspect_ip(&a), net.inspect_ip(&b));

    for (from, to) in [(&a, ip_b), (&b, ip_a)] {
        let out = net.exec_ok(from, &["ping", "-c", "3", "-W", "2", &to.to_string()]);
        assert!(out.contains("3 packets received"), "{from} -> {to}: {out}");
    }
    for (from, to, to_ip, port) in [(&a, &b, ip_b, 7001), (&b, &a, ip_a, 7002)] {
        let message = format!("hello from {from} to {to}");
        net.exec_ok(
            from,
            &["sh", "-c", &format!("echo '{message}' > /tmp/message")],
        );
        net.send_file(from, to, to_ip.into(), port, "/tmp/message");
        assert_eq!(net.exec_ok(to, &["cat", "/tmp/message"]).trim(), message);
    }

    let make = "dd if=/dev/urandom of=/tmp/blob bs=1M count=50 2>/dev/null && sha256sum /tmp/blob";
    let sent = net.exec_ok(&a, &["sh", "-c", make]);
    let started = Instant::now();
    net.send_file(&a, &b, ip_b.into(), 7003, "/tmp/blob");
    let elapsed = started.elapsed();
    let received = net.exec_ok(&b, &["sha256sum", "/tmp/blob"]);
    let digest = |s: &str| s.split_whitespace().next().unwrap().to_string();
    assert_eq!(digest(&sent), digest(&received), "50 MB arrived altered");
    println!(
        "{backend:?}: 50 MB in {:.2} s ({:.0} Mbit/s), sha256 {}",
        elapsed.as_secs_f64(),
        400.0 / elapsed.as_secs_f64(),
        digest(&sent)
    );
}

#[test]
fn cni_backend_traffic() {
    let _serial = needs_podman!();
    traffic(Backend::Cni, "fne2e-cnitraffic", "10.207.0.0/24");
}

#[test]
fn netavark_backend_traffic() {
    let _serial = needs_podman!();
    traffic(Backend::Netavark, "fne2e-nvtraffic", "10.208.0.0/24");
}

#[test]
fn cni_backend_basics() {
    let _serial = needs_podman!();
    basics(Backend::Cni, "fne2e-cni", "10.201.0.0/24", "10.201.0.200");
}

#[test]
fn netavark_backend_basics() {
    let _serial = needs_podman!();
    basics(
        Backend::Netavark,
        "fne2e-nv",
        "10.202.0.0/24",
        "10.202.0.200",
    );
}

#[test]
fn netavark_connect_and_disconnect() {
    let _serial = needs_podman!();
    let first = Net::create(Backend::Netavark, "fne2e-nva", "10.203.0.0/24");
    let second = Net::create(Backend::Netavark, "fne2e-nvb", "10.204.0.0/24");
    let c = first.container(1);
    first.run_detached(&c, &[]);

    second.podman_ok(&["network", "connect", &second.name, &c]);
    let eth1 = first
        .address_inside(&c, "eth1")
        .expect("eth1 after connect");
    assert!(second.subnet.contains(&eth1.addr()), "{eth1}");
    assert_eq!(second.inspect_ip(&c), eth1.addr());
    assert_eq!(second.leases(), 1);
    // One default route per network, each with its own metric (the first is preferred).
    let routes = first.exec_ok(&c, &["ip", "route"]);
    assert_eq!(routes.matches("default via").count(), 2, "{routes}");

    second.podman_ok(&["network", "disconnect", &second.name, &c]);
    assert_eq!(first.address_inside(&c, "eth1"), None);
    let routes = first.exec_ok(&c, &["ip", "route"]);
    assert_eq!(routes.matches("default via").count(), 1, "{routes}");
    assert!(first.address_inside(&c, "eth0").is_some());
    assert!(second.leftovers().is_empty(), "{:?}", second.leftovers());

    first.remove_containers();
    assert!(first.leftovers().is_empty(), "{:?}", first.leftovers());
}

#[test]
fn cni_backend_churn() {
    let _serial = needs_podman!();
    churn(Backend::Cni, "fne2e-cnichurn", "10.205.0.0/24");
}

#[test]
fn netavark_backend_churn() {
    let _serial = needs_podman!();
    churn(Backend::Netavark, "fne2e-nvchurn", "10.206.0.0/24");
}
