//! Flatnet's nftables table in a real kernel: a router namespace (the host) between a filtered
//! network's member, another Flatnet network's member and "the outside", each a namespace on a
//! veth (the members stand in for flatnetd's TUN devices: the table only sees interface
//! names). What the host forwards to the containers is then checked connection by connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use flatnet::firewall::{self, Forward, NetworkRules, Ruleset};
use flatnet::netns::NetworkNamespace;
use flatnet::PortMapping;
use flatnet_test_support::{needs_root, TestNetns};

const FILTERED_MEMBER: &str = "fn-filtered";
const OTHER_MEMBER: &str = "fn-other";
const CONTAINER: &str = "10.230.0.2";
const OTHER_CONTAINER: &str = "10.231.0.2";
const HOST_OUTSIDE: &str = "198.51.100.1";
const OUTSIDE: &str = "198.51.100.2";
const PUBLISHED: u16 = 8080;

/// The four namespaces and their links; removed when dropped.
struct Topology {
    host: TestNetns,
    container: TestNetns,
    other: TestNetns,
    outside: TestNetns,
}

impl Topology {
    fn new() -> Topology {
        let topology = Topology {
            host: TestNetns::new("fwhost"),
            container: TestNetns::new("fwctr"),
            other: TestNetns::new("fwother"),
            outside: TestNetns::new("fwout"),
        };
        let host = &topology.host;
        host.ip(&["link", "set", "lo", "up"]);
        run_in(host, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        topology.link(
            &topology.container,
            FILTERED_MEMBER,
            "10.230.0.1",
            CONTAINER,
        );
        topology.link(&topology.other, OTHER_MEMBER, "10.231.0.1", OTHER_CONTAINER);
        topology.link(&topology.outside, "outside", HOST_OUTSIDE, OUTSIDE);
        // A neighbour that routes the Flatnet subnets through the host.
        for subnet in ["10.230.0.0/24", "10.231.0.0/24"] {
            topology
                .outside
                .ip(&["route", "add", subnet, "via", HOST_OUTSIDE]);
        }
        topology
    }

    /// A veth from the host (`host_side`, `host_ip`) to `ns`'s eth0 (`far_ip`), the host being
    /// the far side's default gateway.
    fn link(&self, ns: &TestNetns, host_side: &str, host_ip: &str, far_ip: &str) {
        let host = &self.host;
        host.ip(&[
            "link", "add", host_side, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ]);
        host.ip(&["addr", "add", &format!("{host_ip}/24"), "dev", host_side]);
        host.ip(&["link", "set", host_side, "up"]);
        ns.ip(&["addr", "add", &format!("{far_ip}/24"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&["route", "add", "default", "via", host_ip]);
    }

    /// The table as flatnetd's attach writes it: the filtered network publishes host port
    /// 8080 to its container's port 80.
    fn apply(&self, filtered: bool) {
        let network = |ifname: &str, subnet: &str, ingress_filter| NetworkRules {
            ifname: ifname.into(),
            subnets: vec![subnet.parse().unwrap()],
            internal: false,
            ingress_filter,
        };
        let rules = Ruleset {
            networks: vec![
                network(FILTERED_MEMBER, "10.230.0.0/24", filtered),
                network(OTHER_MEMBER, "10.231.0.0/24", false),
            ],
            forwards: vec![Forward {
                container: CONTAINER.parse().unwrap(),
                mapping: PortMapping::new("", PUBLISHED, 80, "tcp", 1).unwrap(),
            }],
        };
        open(&self.host)
            .run_inside(|| firewall::apply("flatnet-fwtest", &rules))
            .unwrap();
    }
}

fn open(ns: &TestNetns) -> NetworkNamespace {
    NetworkNamespace::open(&ns.path).unwrap()
}

fn run_in(ns: &TestNetns, cmd: &[&str]) {
    let mut args = vec!["netns", "exec", &ns.name];
    args.extend_from_slice(cmd);
    flatnet_test_support::run_ok("ip", &args);
}

fn io_error(context: &'static str) -> impl FnOnce(std::io::Error) -> flatnet::Error {
    move |source| flatnet::Error::Io {
        context: context.into(),
        source,
    }
}

/// A TCP listener in `ns` on `port` (any address).
fn listen(ns: &TestNetns, port: u16) -> TcpListener {
    open(ns)
        .run_inside(|| TcpListener::bind(("0.0.0.0", port)).map_err(io_error("binding")))
        .unwrap()
}

/// Whether a connection from `ns` to `to` is established within `wait`, and carries a byte
/// to `listener` (a dropped SYN times out; the kernel accepts into the backlog by itself).
fn connects(ns: &TestNetns, to: &str, listener: &TcpListener, wait: Duration) -> bool {
    let to: SocketAddr = to.parse().unwrap();
    let stream = open(ns)
        .run_inside(|| TcpStream::connect_timeout(&to, wait).map_err(io_error("connecting")));
    let Ok(mut stream) = stream else {
        return false;
    };
    stream.write_all(b"x").unwrap();
    let (mut accepted, _) = listener.accept().unwrap();
    let mut byte = [0u8];
    accepted.read_exact(&mut byte).unwrap();
    byte == *b"x"
}

/// Generous for what must pass; what must not is a dropped SYN, whatever the wait.
const PASSES: Duration = Duration::from_secs(5);
const DROPPED: Duration = Duration::from_millis(700);

#[test]
fn a_filtered_network_is_reached_from_outside_only_through_its_published_ports() {
    needs_root!();
    let topology = Topology::new();
    topology.apply(true);
    let web = listen(&topology.container, 80);
    let other_web = listen(&topology.other, 80);
    let outside_web = listen(&topology.outside, 80);

    // The outside, routing the subnet through the host: not to the container itself...
    let direct = format!("{CONTAINER}:80");
    assert!(!connects(&topology.outside, &direct, &web, DROPPED));
    // ...but through the port the container published on the host.
    let published = format!("{HOST_OUTSIDE}:{PUBLISHED}");
    assert!(connects(&topology.outside, &published, &web, PASSES));
    // Another Flatnet network's member is one of Flatnet's own interfaces.
    assert!(connects(&topology.other, &direct, &web, PASSES));
    // The container's own connections out get their replies.
    let out = format!("{OUTSIDE}:80");
    assert!(connects(&topology.container, &out, &outside_web, PASSES));
    // The network without the filter keeps routed access.
    let other_direct = format!("{OTHER_CONTAINER}:80");
    assert!(connects(
        &topology.outside,
        &other_direct,
        &other_web,
        PASSES
    ));

    // The same table with the filter off: the direct connection goes through, so the drop
    // above was the filter's.
    topology.apply(false);
    assert!(connects(&topology.outside, &direct, &web, PASSES));
}
