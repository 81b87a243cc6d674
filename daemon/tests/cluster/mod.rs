//! Several Flatnet hosts on one machine: each host is a network namespace on a bridged
//! underlay (192.0.2.0/24) with its own flatnetd (own key, state directory, control socket and
//! UDP address). "Containers" are namespaces attached through the real `flatnet-cni` binary
//! run inside their host's namespace, which also starts that host's daemon. The hosts share a
//! file lighthouse, or an etcd cluster ([`etcd`]) and nothing else but its CA certificate.

// Each test crate uses a part of this module.
#![allow(dead_code)]

pub mod etcd;
pub mod flood;
pub mod light;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flatnet::control;
use flatnet::state::StateDir;
use flatnet_test_support::{run_plugin, stdout_json, TestNetns};
use serde_json::{json, Value};

pub const DAEMON: &str = env!("CARGO_BIN_EXE_flatnetd");
pub const TUNNEL_PORT: u16 = 4800;

pub fn cert_binary() -> PathBuf {
    Path::new(DAEMON).parent().unwrap().join("flatnet-cert")
}

/// The network CA in `ca` grants host `name` with key `key` the block on `networks`:
/// `flatnet-cert sign`, with `extra` arguments.
pub fn sign(
    ca: &Path,
    name: &str,
    key: &str,
    block: ipnet::Ipv4Net,
    networks: &[&str],
    extra: &[&str],
    out: &Path,
) {
    let block = block.to_string();
    let mut args = vec![
        "sign",
        "--name",
        name,
        "--public-key",
        key,
        "--block",
        &block,
    ];
    for network in networks {
        args.extend(["--network", network]);
    }
    args.extend(extra);
    let status = Command::new(cert_binary())
        .args(args)
        .arg("--ca-dir")
        .arg(ca)
        .arg("--out")
        .arg(out)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "flatnet-cert sign for {name}");
}

/// `flatnet-cert ARGS DIR`, which must succeed.
fn cert_tool(args: &[&str], dir: &Path) {
    let mut all: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    all.push(dir.as_os_str());
    flatnet_cert(&all);
}

/// `flatnet-cert ARGS`, which must succeed.
pub fn flatnet_cert(args: &[&std::ffi::OsStr]) {
    let out = Command::new(cert_binary()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "flatnet-cert {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn cni_binary() -> PathBuf {
    let path = Path::new(DAEMON).parent().unwrap().join("flatnet-cni");
    assert!(
        path.is_file(),
        "{} is built with the workspace",
        path.display()
    );
    path
}

/// Busybox (ping, nc) from the test image's root file system.
pub fn busybox() -> String {
    let path = std::env::var("FLATNET_BUSYBOX")
        .unwrap_or_else(|_| "/var/lib/flatnet/image/rootfs/bin/busybox".into());
    assert!(
        Path::new(&path).is_file(),
        "{path} missing: run scripts/build-image.sh"
    );
    path
}

/// The network behind every router: private, the same behind each (as homes' are).
const PRIVATE_NET: &str = "203.0.113.0/24";
const PRIVATE_GATEWAY: &str = "203.0.113.1";
/// The address of the host behind each router (they all use the same private range, as homes do).
const PRIVATE_HOST: &str = "203.0.113.10";

/// How a router in front of a host's private network treats UDP (each masquerades what leaves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// Linux's own: a mapping keeps the source port where it can; only answers come in (from
    /// where the host wrote to). Two such hosts punch through.
    Cone,
    /// Full cone: the host's tunnel port is also open to anyone from outside (a forwarded
    /// port), so any host reaches it at its mapping.
    FullCone,
    /// A new random port for each destination: what one host learns of its mapping is of no
    /// use to another. Punching works only towards a full cone.
    Symmetric,
    /// UDP goes out only to this address (a strict firewall): punching cannot open anything.
    UdpOutOnlyTo(Ipv4Addr),
}

pub struct Host {
    pub ns: TestNetns,
    pub address: Ipv4Addr,
    pub state: tempfile::TempDir,
    /// The CA certificate this host trusts, when it is not the network's (a rogue host).
    pub network_ca: Option<PathBuf>,
    /// Its endpoint is `0.0.0.0:TUNNEL_PORT`, or `[::]:TUNNEL_PORT` with an IPv6 address (set
    /// before its daemon starts): it listens on every address and publishes them as candidates.
    pub on_all_addresses: bool,
    /// Its IPv6 address on the underlay, in a cluster whose hosts talk IPv6 (2001:db8:ff::/64):
    /// then its endpoint.
    pub address6: Option<Ipv6Addr>,
}

impl Host {
    /// The endpoint its network config and daemon are given.
    pub fn endpoint(&self) -> String {
        match (self.address6, self.on_all_addresses) {
            (Some(_), true) => return format!("[::]:{TUNNEL_PORT}"),
            (Some(address6), false) => return format!("[{address6}]:{TUNNEL_PORT}"),
            (None, _) => {}
        }
        let address = if self.on_all_addresses {
            Ipv4Addr::UNSPECIFIED
        } else {
            self.address
        };
        format!("{address}:{TUNNEL_PORT}")
    }
}

pub struct Container {
    pub ns: TestNetns,
    pub host: usize,
    pub id: String,
    pub ip: Ipv4Addr,
    /// Its IPv6 address, on a dual-stack network.
    pub ip6: Option<Ipv6Addr>,
    /// The network it joined, and that network's subnets (comma-separated).
    pub network: (String, String),
}

pub struct Cluster {
    pub wire: TestNetns,
    pub hosts: Vec<Host>,
    pub containers: Vec<Container>,
    pub shared: tempfile::TempDir,
    /// The etcd cluster the hosts share; none: a shared lighthouse file.
    pub etcd: Option<etcd::Etcd>,
    /// The Flatnet network the next attach joins, and its subnet: an IPv4 one, or an IPv4 and
    /// an IPv6 one comma-separated (a dual-stack network).
    pub network: String,
    pub subnet: String,
    /// The hosts' underlay is IPv6 (hosts added from now on get an IPv6 endpoint).
    pub ipv6_underlay: bool,
    /// The network CA's directory (`flatnet-cert ca`), kept apart from every host; with etcd.
    pub network_ca: Option<tempfile::TempDir>,
    /// Networks besides `network` that the hosts' certificates name.
    pub also_certified: Vec<String>,
    /// Subnets besides `subnet` in which each host's certificate grants the same block.
    pub also_granted: Vec<String>,
    /// The etcd lease TTL the hosts' daemons take (etcd clusters only).
    pub lease_ttl_s: u32,
    /// Router namespaces between the bridge and hosts behind them.
    pub routers: Vec<TestNetns>,
}

impl Cluster {
    pub fn new(hosts: usize) -> Cluster {
        let mut cluster = Cluster::wire_only();
        for _ in 0..hosts {
            cluster.add_host();
        }
        cluster
    }

    /// Hosts that share an etcd cluster of `members` members on the underlay, each granted
    /// its block of the subnet by a network CA.
    pub fn with_etcd(hosts: usize, members: usize) -> Cluster {
        Cluster::with_etcd_in(hosts, members, "198.51.100.0/24")
    }

    pub fn with_etcd_in(hosts: usize, members: usize, subnet: &str) -> Cluster {
        let network = ("multihost".to_string(), subnet.to_string());
        Cluster::with_etcd_networks(hosts, members, &[network])
    }

    /// Hosts on etcd whose certificates name every one of `networks` (name, subnet), with
    /// their block in each; attaches join the first until `network` and `subnet` are changed.
    pub fn with_etcd_networks(
        hosts: usize,
        members: usize,
        networks: &[(String, String)],
    ) -> Cluster {
        let mut cluster = Cluster::wire_only();
        let ((first, subnet), others) = networks.split_first().expect("a network");
        cluster.network = first.clone();
        cluster.subnet = subnet.clone();
        cluster.also_certified = others.iter().map(|(name, _)| name.clone()).collect();
        cluster.also_granted = others.iter().map(|(_, subnet)| subnet.clone()).collect();
        cluster.etcd = Some(etcd::Etcd::start(&cluster.wire, members));
        let ca = tempfile::Builder::new()
            .prefix("flatnet-network-ca-")
            .tempdir()
            .unwrap();
        cert_tool(&["ca", "--name", "test-network", "--out-dir"], ca.path());
        cluster.network_ca = Some(ca);
        for _ in 0..hosts {
            let host = cluster.add_host();
            cluster.grant(host);
        }
        cluster
    }

    /// Host `host`'s block: a /27 of the (IPv4) subnet, the first one left for the gateway.
    pub fn block(&self, host: usize) -> ipnet::Ipv4Net {
        block_in(self.subnet.split(',').next().unwrap(), host)
    }

    /// Host `host`'s block of the IPv6 subnet, on a dual-stack network: a /112, the first one
    /// left for the gateway.
    pub fn block6(&self, host: usize) -> Option<ipnet::Ipv6Net> {
        let subnet6 = self.subnet.split(',').nth(1)?;
        let subnet: ipnet::Ipv6Net = subnet6.parse().unwrap();
        let start = u128::from(subnet.network()) + ((host as u128 + 1) << 16);
        Some(ipnet::Ipv6Net::new(Ipv6Addr::from(start), 112).unwrap())
    }

    /// The networks the hosts' certificates name, and their etcd roles let them write on.
    fn certified_networks(&self) -> Vec<&str> {
        let mut networks = vec![self.network.as_str()];
        networks.extend(self.also_certified.iter().map(String::as_str));
        networks
    }

    /// The host's key (`flatnetd key`, made now) signed by the network CA with its block, as
    /// an operator does it: the certificate lands in the host's own directory.
    pub fn grant(&self, host: usize) {
        let ca = self.network_ca.as_ref().unwrap().path().to_path_buf();
        self.grant_by(host, &ca);
    }

    /// The host's key signed by the CA in `ca` (the network's, or another).
    pub fn grant_by(&self, host: usize, ca: &Path) {
        self.grant_with(host, ca, &[]);
    }

    /// The host's key signed by the network CA, valid for `seconds` from now.
    pub fn grant_for(&self, host: usize, seconds: u64) {
        let ca = self.network_ca.as_ref().unwrap().path().to_path_buf();
        self.grant_with(host, &ca, &["--valid-seconds", &seconds.to_string()]);
    }

    fn grant_with(&self, host: usize, ca: &Path, extra: &[&str]) {
        let h = &self.hosts[host];
        let out = Command::new(DAEMON)
            .arg("--state-dir")
            .arg(h.state.path())
            .arg("key")
            .output()
            .unwrap();
        assert!(out.status.success());
        let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let networks = self.certified_networks();
        let also: Vec<String> = self
            .also_granted
            .iter()
            .map(|subnet| block_in(subnet, host).to_string())
            .collect();
        let block6 = self.block6(host).map(|b| b.to_string());
        let mut extra = extra.to_vec();
        for block in also.iter().chain(&block6) {
            extra.extend(["--block", block]);
        }
        sign(
            ca,
            &format!("host-{host}"),
            &key,
            self.block(host),
            &networks,
            &extra,
            &self.host_cert(host),
        );
    }

    pub fn host_cert(&self, host: usize) -> PathBuf {
        self.hosts[host].state.path().join("host.crt")
    }

    /// The CA certificate host `host` is configured with.
    pub fn trusted_ca(&self, host: usize) -> PathBuf {
        self.hosts[host]
            .network_ca
            .clone()
            .unwrap_or_else(|| self.network_ca_cert())
    }

    /// Makes a CA of one's own in `dir` (`flatnet-cert ca`).
    pub fn make_ca(dir: &Path) {
        cert_tool(&["ca", "--name", "test-network", "--out-dir"], dir);
    }

    /// The CA's public certificate: what every host is given.
    pub fn network_ca_cert(&self) -> PathBuf {
        self.network_ca.as_ref().unwrap().path().join("ca.crt")
    }

    /// The underlay bridge alone: hosts are added with [`Cluster::add_host`].
    pub fn wire_only() -> Cluster {
        let wire = TestNetns::new("wire");
        wire.ip(&["link", "add", "br0", "type", "bridge"]);
        wire.ip(&["link", "set", "br0", "up"]);
        Cluster {
            wire,
            hosts: Vec::new(),
            containers: Vec::new(),
            shared: tempfile::tempdir().unwrap(),
            etcd: None,
            network: "multihost".into(),
            subnet: "198.51.100.0/24".into(),
            ipv6_underlay: false,
            network_ca: None,
            also_certified: Vec::new(),
            also_granted: Vec::new(),
            lease_ttl_s: etcd::LEASE_TTL_S,
            routers: Vec::new(),
        }
    }

    pub fn etcd(&self) -> &etcd::Etcd {
        self.etcd.as_ref().expect("a cluster with etcd")
    }

    /// Two hosts with one container each that already reach each other.
    pub fn connected_pair() -> (Cluster, usize, usize) {
        let mut cluster = Cluster::new(2);
        let (a, b) = (cluster.attach(0), cluster.attach(1));
        assert!(cluster.ping(a, b, 1), "the pair does not connect");
        (cluster, a, b)
    }

    pub fn add_host(&mut self) -> usize {
        let i = self.hosts.len();
        let ns = TestNetns::new("host");
        let port = format!("h{i}");
        self.wire.ip(&[
            "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ]);
        self.wire.ip(&["link", "set", &port, "master", "br0", "up"]);
        self.push_host(ns, Ipv4Addr::new(192, 0, 2, 10 + i as u8))
    }

    /// Takes on a host whose namespace has its `eth0`: addressed, up, with a state directory.
    fn push_host(&mut self, ns: TestNetns, address: Ipv4Addr) -> usize {
        ns.ip(&["addr", "add", &format!("{address}/24"), "dev", "eth0"]);
        let address6 = self.ipv6_underlay.then(|| {
            let address6 = Ipv6Addr::new(
                0x2001,
                0xdb8,
                0xff,
                0,
                0,
                0,
                0,
                10 + self.hosts.len() as u16,
            );
            let cidr = format!("{address6}/64");
            ns.ip(&["-6", "addr", "add", &cidr, "dev", "eth0", "nodad"]);
            address6
        });
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["link", "set", "lo", "up"]);
        let state = tempfile::Builder::new()
            .prefix("flatnet-host-")
            .tempdir()
            .unwrap();
        self.hosts.push(Host {
            ns,
            address,
            state,
            network_ca: None,
            on_all_addresses: false,
            address6,
        });
        self.hosts.len() - 1
    }

    /// A host on a network of its own (203.0.113.0/24) behind a router on the bridge, over a
    /// link of `link_mtu` bytes. The hosts already on the bridge route to it through the
    /// router (no NAT); the router answers datagrams too large for the link with ICMP.
    pub fn add_host_behind_router(&mut self, link_mtu: u32) -> usize {
        let outside = self.add_router(link_mtu);
        for host in &self.hosts {
            host.ns
                .ip(&["route", "add", PRIVATE_NET, "via", &outside.to_string()]);
        }
        self.add_private_host()
    }

    /// A host behind a NAT router on the bridge, as at home: the router masquerades what
    /// leaves by its bridge address (keeping source ports where it can, admitting from
    /// outside only what answers a mapping: Linux's NAT, a "cone" one for hole punching) and
    /// forgets an idle UDP mapping after 30 s, as common NATs do. Its private network
    /// (203.0.113.0/24) is reachable from nowhere else. Returns the host and the router's
    /// outside address.
    pub fn add_host_behind_nat(&mut self) -> (usize, Ipv4Addr) {
        self.add_host_behind(Nat::Cone)
    }

    /// A host behind a NAT router of the given kind (see [`Nat`]).
    pub fn add_host_behind(&mut self, nat: Nat) -> (usize, Ipv4Addr) {
        let outside = self.add_router(1500);
        let router = &self.routers[self.routers.len() - 1];
        // The router itself takes nothing from outside, as home routers' firewalls do. That
        // also keeps an unsolicited datagram from leaving a conntrack entry behind that would
        // make the next mapping towards its sender take another port.
        let mut rules = format!(
            "add table ip nat\n\
             add chain ip nat out {{ type nat hook postrouting priority srcnat; }}\n\
             add rule ip nat out oifname wan masquerade{}\n\
             add table ip filter\n\
             add chain ip filter in {{ type filter hook input priority filter; }}\n\
             add rule ip filter in iifname wan drop\n\
             add chain ip filter outbound {{ type filter hook forward priority filter; }}\n",
            if nat == Nat::Symmetric { " random" } else { "" }
        );
        match nat {
            Nat::FullCone => {
                rules += &format!(
                    "add chain ip nat pre {{ type nat hook prerouting priority dstnat; }}\n\
                     add rule ip nat pre iifname wan udp dport {TUNNEL_PORT} \
                     dnat to {PRIVATE_HOST}\n"
                );
            }
            Nat::UdpOutOnlyTo(allowed) => {
                rules += &format!(
                    "add rule ip filter outbound iifname lan meta l4proto udp ip daddr != {allowed} drop\n"
                );
            }
            Nat::Cone | Nat::Symmetric => {}
        }
        let mut nft = in_ns(&router.name, &["nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        nft.stdin
            .take()
            .unwrap()
            .write_all(rules.as_bytes())
            .unwrap();
        assert!(nft.wait().unwrap().success(), "nft refused the NAT rules");
        for timeout in [
            "net.netfilter.nf_conntrack_udp_timeout=30",
            "net.netfilter.nf_conntrack_udp_timeout_stream=30",
        ] {
            let set = in_ns(&router.name, &["sysctl", "-qw", timeout])
                .status()
                .unwrap();
            assert!(set.success(), "{timeout}");
        }
        (self.add_private_host(), outside)
    }

    /// Takes away the firewall of the `router`th router (in the order they were added):
    /// what [`Nat::UdpOutOnlyTo`] forbade goes out from now on.
    pub fn open_firewall(&self, router: usize) {
        let flush = in_ns(
            &self.routers[router].name,
            &["nft", "flush", "chain", "ip", "filter", "outbound"],
        )
        .status()
        .unwrap();
        assert!(flush.success(), "the firewall stays");
    }

    /// A router namespace between the bridge (its next outside address) and a private
    /// network of `link_mtu` bytes; returns its outside address.
    fn add_router(&mut self, link_mtu: u32) -> Ipv4Addr {
        let i = self.routers.len();
        assert!(i < 8, "room on the bridge for eight routers");
        let router = TestNetns::new("router");
        let outside = Ipv4Addr::new(192, 0, 2, 254 - i as u8);
        let port = format!("r{i}");
        self.wire.ip(&[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "wan",
            "netns",
            &router.name,
        ]);
        self.wire.ip(&["link", "set", &port, "master", "br0", "up"]);
        router.ip(&["addr", "add", &format!("{outside}/24"), "dev", "wan"]);
        router.ip(&["link", "set", "wan", "up"]);
        let mtu = link_mtu.to_string();
        router.ip(&[
            "link", "add", "lan", "mtu", &mtu, "type", "veth", "peer", "name", "eth0", "mtu", &mtu,
        ]);
        router.ip(&[
            "addr",
            "add",
            &format!("{PRIVATE_GATEWAY}/24"),
            "dev",
            "lan",
        ]);
        router.ip(&["link", "set", "lan", "up"]);
        let forwarding = in_ns(&router.name, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            .status()
            .unwrap();
        assert!(forwarding.success());
        self.routers.push(router);
        outside
    }

    /// A host on the private side of the newest router: its `eth0` waits there.
    fn add_private_host(&mut self) -> usize {
        let router = &self.routers[self.routers.len() - 1];
        let ns = TestNetns::new("host");
        router.ip(&["link", "set", "eth0", "netns", &ns.name]);
        let host = self.push_host(ns, PRIVATE_HOST.parse().unwrap());
        self.hosts[host]
            .ns
            .ip(&["route", "add", "default", "via", PRIVATE_GATEWAY]);
        host
    }

    /// The network config as the runtime hands it over, with `runtimeConfig` filled in.
    pub fn conf_with(&self, host: usize, runtime_config: &Value) -> String {
        let network = (self.network.clone(), self.subnet.clone());
        self.conf_of(host, &network, runtime_config)
    }

    /// The config of a network given by name and subnet.
    fn conf_of(&self, host: usize, network: &(String, String), runtime_config: &Value) -> String {
        let h = &self.hosts[host];
        let mut conf = json!({
            "cniVersion": "1.0.0",
            "name": network.0,
            "type": "flatnet-cni",
            "subnets": network.1.split(',').map(|s| json!({"subnet": s})).collect::<Vec<_>>(),
            "stateDir": h.state.path(),
            "lighthouse": self.shared.path().join("lighthouse.json"),
            "endpoint": h.endpoint(),
            "tunnelPort": TUNNEL_PORT,
            "runtimeConfig": runtime_config,
        });
        if let Some(etcd) = &self.etcd {
            let client = etcd.host_client(host, &self.certified_networks());
            conf["lighthouse"] = json!("etcd");
            conf["etcdEndpoints"] = json!(etcd.endpoints());
            conf["etcdCaFile"] = json!(etcd.ca_file());
            conf["etcdCertFile"] = json!(client.cert);
            conf["etcdKeyFile"] = json!(client.key);
            conf["leaseTtl"] = json!(self.lease_ttl_s);
            conf["networkCaFile"] = json!(self.trusted_ca(host));
            conf["hostCertFile"] = json!(self.host_cert(host));
        }
        conf.to_string()
    }

    /// Runs flatnet-cni inside the host's namespace, as that host's runtime would.
    pub fn cni(&self, host: usize, command: &str, c: &TestNetns, id: &str) -> std::process::Output {
        let conf = self.conf_with(host, &Value::Null);
        self.cni_conf(host, command, c, id, "", &conf)
    }

    /// DEL of a container, on the network it joined.
    fn cni_del(&self, c: &Container) -> std::process::Output {
        let conf = self.conf_of(c.host, &c.network, &Value::Null);
        self.cni_conf(c.host, "DEL", &c.ns, &c.id, "", &conf)
    }

    /// flatnet-cni in the host's namespace with `CNI_ARGS` and a network config of its own.
    pub fn cni_conf(
        &self,
        host: usize,
        command: &str,
        c: &TestNetns,
        id: &str,
        args: &str,
        conf: &str,
    ) -> std::process::Output {
        let host_ns = &self.hosts[host].ns.name;
        let cni = cni_binary();
        let env = [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", id),
            ("CNI_NETNS", c.path_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
            ("CNI_ARGS", args),
        ];
        let argv = ["netns", "exec", host_ns, cni.to_str().unwrap()];
        run_plugin("ip", &argv, &env, conf)
    }

    pub fn attach(&mut self, host: usize) -> usize {
        self.attach_named(host, "")
    }

    /// Attaches a container whose name (as Podman passes it in CNI_ARGS) is `name`.
    pub fn attach_named(&mut self, host: usize, name: &str) -> usize {
        self.attach_with(host, name, &Value::Null)
    }

    /// Attaches a named container with a `runtimeConfig` (published ports, aliases).
    pub fn attach_with(&mut self, host: usize, name: &str, runtime_config: &Value) -> usize {
        let ns = TestNetns::new("ctr");
        let id = format!("{}-{}", ns.name, host);
        let args = format!("IgnoreUnknown=1;K8S_POD_NAME={name}");
        let conf = self.conf_with(host, runtime_config);
        let out = self.cni_conf(host, "ADD", &ns, &id, &args, &conf);
        assert!(
            out.status.success(),
            "ADD: {}\nflatnetd's log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            self.daemon_log(host)
        );
        let ip = added_address(&out);
        let index = self.keep(ns, host, id, ip);
        self.containers[index].ip6 = added_address6(&out);
        index
    }

    /// Records a container just attached to the current network; returns its index.
    fn keep(&mut self, ns: TestNetns, host: usize, id: String, ip: Ipv4Addr) -> usize {
        ns.ip(&["link", "set", "lo", "up"]);
        let network = (self.network.clone(), self.subnet.clone());
        self.containers.push(Container {
            ns,
            host,
            id,
            ip,
            ip6: None,
            network,
        });
        self.containers.len() - 1
    }

    /// Attaches a container at a chosen address (CNI_ARGS IP=); returns it and how long ADD
    /// took.
    pub fn attach_at(&mut self, host: usize, ip: Ipv4Addr) -> (usize, Duration) {
        let ns = TestNetns::new("ctr");
        let id = format!("{}-{}", ns.name, host);
        let args = format!("IgnoreUnknown=1;IP={ip}");
        let started = Instant::now();
        let conf = self.conf_with(host, &Value::Null);
        let out = self.cni_conf(host, "ADD", &ns, &id, &args, &conf);
        let took = started.elapsed();
        assert!(
            out.status.success(),
            "ADD at {ip}: {}\nflatnetd's log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            self.daemon_log(host)
        );
        (self.keep(ns, host, id, ip), took)
    }

    /// Moves container `c` to another network, as a runtime would: DEL on its network, then
    /// ADD of the same namespace and id on `network` (`subnet`). Returns its new address.
    pub fn move_to(&mut self, c: usize, network: &str, subnet: &str) -> Ipv4Addr {
        let out = self.cni_del(&self.containers[c]);
        assert!(
            out.status.success(),
            "DEL: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let moved = (network.to_string(), subnet.to_string());
        let container = &self.containers[c];
        let conf = self.conf_of(container.host, &moved, &Value::Null);
        let out = self.cni_conf(
            container.host,
            "ADD",
            &container.ns,
            &container.id,
            "",
            &conf,
        );
        assert!(
            out.status.success(),
            "ADD: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let ip = added_address(&out);
        let container = &mut self.containers[c];
        container.ip = ip;
        container.ip6 = added_address6(&out);
        container.network = moved;
        ip
    }

    /// Detaches every container; their namespaces live on in what is returned.
    pub fn detach_all(&mut self) -> Vec<Container> {
        let containers = std::mem::take(&mut self.containers);
        for c in &containers {
            let out = self.cni_del(c);
            assert!(
                out.status.success(),
                "DEL: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        containers
    }

    /// A busybox applet run inside a container.
    pub fn in_container(&self, c: usize, args: &[&str]) -> Command {
        let mut cmd = in_ns(&self.containers[c].ns.name, &[&busybox()]);
        cmd.args(args);
        cmd
    }

    pub fn ping(&self, from: usize, to: usize, count: u32) -> bool {
        self.ping_address(from, self.containers[to].ip.into(), count)
    }

    /// Pings container `to` at its IPv6 address.
    pub fn ping6(&self, from: usize, to: usize, count: u32) -> bool {
        let to = self.containers[to].ip6.expect("a dual-stack container");
        self.ping_address(from, to.into(), count)
    }

    pub fn ping_address(&self, from: usize, to: IpAddr, count: u32) -> bool {
        let to = to.to_string();
        let out = self
            .in_container(from, &["ping", "-c", &count.to_string(), "-W", "2", &to])
            .output()
            .unwrap();
        out.status.success()
    }

    /// A TCP message from one container to another, checked on arrival.
    pub fn tcp(&self, from: usize, to: usize, port: u16) {
        let message = format!("from {from} to {to} over Flatnet");
        let file = self.shared.path().join(format!("tcp-{from}-{to}-{port}"));
        std::fs::write(&file, &message).unwrap();
        let received = self.send_file(from, to, port, &file);
        assert_eq!(received, message.as_bytes());
    }

    /// Sends a file's content over TCP from one container to another; returns what arrived.
    pub fn send_file(&self, from: usize, to: usize, port: u16, file: &Path) -> Vec<u8> {
        let address = self.containers[to].ip.into();
        self.send_file_to(from, (to, address), port, file)
    }

    /// [`Cluster::send_file`] to one of the container's addresses.
    pub fn send_file_to(
        &self,
        from: usize,
        (to, address): (usize, IpAddr),
        port: u16,
        file: &Path,
    ) -> Vec<u8> {
        let received = file.with_extension("received");
        let mut listener = nc_receiver(&self.containers[to].ns.name, port, &received);
        self.wait_listening(to, port);
        // Bounded, so a stalled transfer fails the test instead of hanging it.
        let send = format!(
            "timeout 60 {} nc {address} {port} < {}",
            busybox(),
            file.display()
        );
        let status = self
            .in_container(from, &["sh", "-c", &send])
            .status()
            .unwrap();
        assert!(status.success(), "sending to {to} failed");
        assert!(listener.wait());
        std::fs::read(&received).unwrap()
    }

    /// Sends `bytes` of a pattern that shows misordered or lost data over TCP from `from` to
    /// `to`, checks what arrived, and returns Mbit/s.
    pub fn transfer(&self, from: usize, to: usize, port: u16, bytes: u32) -> f64 {
        let address = self.containers[to].ip.into();
        self.transfer_to(from, (to, address), port, bytes)
    }

    /// [`Cluster::transfer`] to one of the container's addresses.
    pub fn transfer_to(&self, from: usize, to: (usize, IpAddr), port: u16, bytes: u32) -> f64 {
        let file = self.shared.path().join(format!("bulk-{port}"));
        let content: Vec<u8> = (0..bytes).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&file, &content).unwrap();
        let started = std::time::Instant::now();
        let received = self.send_file_to(from, to, port, &file);
        let seconds = started.elapsed().as_secs_f64();
        assert!(received == content, "the transfer arrived damaged or short");
        f64::from(bytes) * 8.0 / seconds / 1e6
    }

    /// Starts a TCP connection from container `from` to `to` that carries `half` bytes of a
    /// pattern and waits (the caller changes the network under it), then the second half on
    /// [`PausedTransfer::finish`], which checks that all arrived intact.
    pub fn paused_transfer(
        &self,
        from: usize,
        to: usize,
        port: u16,
        half: usize,
    ) -> PausedTransfer {
        let server = format!(
            "import socket\n\
             s = socket.socket(); s.bind(('0.0.0.0', {port})); s.listen(1); s.settimeout(30)\n\
             print('ready', flush=True)\n\
             c, _ = s.accept(); c.settimeout(30); data = bytearray()\n\
             while True:\n    b = c.recv(65536)\n    if not b: break\n    data += b\n\
             ok = data == bytes(i % 251 for i in range(2 * {half}))\n\
             print('intact' if ok else 'damaged', len(data), flush=True)\n"
        );
        let client = format!(
            "import socket, sys\n\
             data = bytes(i % 251 for i in range(2 * {half}))\n\
             c = socket.create_connection(('{}', {port}), timeout=30)\n\
             c.sendall(data[:{half}]); print('half', flush=True)\n\
             sys.stdin.readline()\n\
             c.sendall(data[{half}:]); c.close(); print('sent', flush=True)\n",
            self.containers[to].ip
        );
        let piped = |c: usize, script: &str| {
            in_ns(&self.containers[c].ns.name, &["python3", "-c", script])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let mut server = piped(to, &server);
        assert_eq!(line_of(&mut server), "ready");
        let mut client = piped(from, &client);
        assert_eq!(line_of(&mut client), "half");
        PausedTransfer {
            server,
            client,
            bytes: 2 * half,
        }
    }

    /// The round trip of container `from`'s first ping to `to`, in ms: handshakes, punching
    /// and relaying included.
    pub fn first_reply_ms(&self, from: usize, to: usize) -> f64 {
        let to = self.containers[to].ip.to_string();
        let out = self
            .in_container(from, &["ping", "-c", "1", "-W", "5", &to])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let time = text
            .split("time=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no reply: {text}"));
        time.parse().unwrap()
    }

    pub fn wait_listening(&self, c: usize, port: u16) {
        let needle = format!(":{port} ");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.in_container(c, &["netstat", "-ltn"]).output().unwrap();
            if String::from_utf8_lossy(&out.stdout).contains(&needle) {
                return;
            }
            assert!(Instant::now() < deadline, "nothing listens on {port}");
            std::thread::yield_now();
        }
    }

    /// What `host`'s daemon knows of the peer that is host `other` (JSON).
    pub fn peer(&self, host: usize, other: usize) -> Value {
        let key = self.status(other)["public_key"].clone();
        self.status(host)["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["public_key"] == key)
            .cloned()
            .unwrap_or_else(|| panic!("host {host} has no peer for host {other}"))
    }

    /// The daemon's status as it crosses the socket (JSON), for tests that read its fields.
    pub fn status(&self, host: usize) -> Value {
        let state = StateDir::new(self.hosts[host].state.path());
        serde_json::to_value(control::status(&state).unwrap()).unwrap()
    }

    pub fn drops(&self, host: usize, reason: &str) -> u64 {
        self.status(host)["drops"][reason].as_u64().unwrap()
    }

    pub fn daemon_pid(&self, host: usize) -> u32 {
        self.status(host)["pid"].as_u64().unwrap() as u32
    }

    /// `flatnetd start` in the host's namespace: what systemd's restart would do.
    pub fn start_daemon(&self, host: usize) {
        self.start_daemon_with(host, &[]);
    }

    /// `flatnetd start` with `flags` while the host's daemon runs with other settings: it must
    /// be refused, not ignored. Returns what it said on stderr.
    pub fn refused_start(&self, host: usize, flags: &[&str]) -> String {
        let h = &self.hosts[host];
        let out = in_ns(&h.ns.name, &[DAEMON, "--state-dir"])
            .arg(h.state.path())
            .arg("start")
            .args(flags)
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "flatnetd start {flags:?} was accepted"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn start_daemon_with(&self, host: usize, extra: &[&str]) {
        let h = &self.hosts[host];
        let status = in_ns(&h.ns.name, &[DAEMON, "--state-dir"])
            .arg(h.state.path())
            .arg("start")
            .args(extra)
            .args(self.lighthouse_flags(host))
            .arg("--listen")
            .arg(h.endpoint())
            .env("FLATNETD", DAEMON)
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The last lines of a host's daemon log.
    pub fn daemon_log(&self, host: usize) -> String {
        let log = self.hosts[host].state.path().join("flatnetd.log");
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Addresses leased on a host (its containers and its host member).
    pub fn leases(&self, host: usize) -> usize {
        let dir = self.hosts[host]
            .state
            .path()
            .join("networks/multihost/leases");
        std::fs::read_dir(dir).map_or(0, |entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().parse::<IpAddr>().is_ok())
                .count()
        })
    }

    /// The `flatnetd` flags that select the cluster's lighthouse.
    pub fn lighthouse_flags(&self, host: usize) -> Vec<String> {
        let Some(etcd) = &self.etcd else {
            let file = self.shared.path().join("lighthouse.json");
            return vec!["--lighthouse".into(), file.display().to_string()];
        };
        let client = etcd.host_client(host, &self.certified_networks());
        vec![
            "--lighthouse=etcd".into(),
            format!("--etcd-endpoints={}", etcd.endpoints().join(",")),
            format!("--etcd-ca-file={}", etcd.ca_file().display()),
            format!("--etcd-cert-file={}", client.cert.display()),
            format!("--etcd-key-file={}", client.key.display()),
            format!("--lease-ttl={}", self.lease_ttl_s),
            format!("--network-ca-file={}", self.trusted_ca(host).display()),
            format!("--host-cert-file={}", self.host_cert(host).display()),
        ]
    }

    /// `flatnetd stop`, as an operator runs it.
    pub fn stop_daemon(&self, host: usize) {
        let h = &self.hosts[host];
        let status = in_ns(&h.ns.name, &[DAEMON, "--state-dir"])
            .arg(h.state.path())
            .arg("stop")
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in std::mem::take(&mut self.containers) {
            let _ = self.cni_del(&c);
        }
        for host in 0..self.hosts.len() {
            self.stop_daemon(host);
        }
    }
}

/// The container's addresses in a successful ADD's result.
fn added_addresses(out: &std::process::Output) -> Vec<IpAddr> {
    let result = stdout_json(out);
    let ips = result["ips"].as_array().cloned().unwrap_or_default();
    ips.iter()
        .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
        .collect()
}

/// The container's IPv4 address in a successful ADD's result (every test network has one).
fn added_address(out: &std::process::Output) -> Ipv4Addr {
    added_addresses(out)
        .into_iter()
        .find_map(|ip| match ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .expect("an IPv4 address")
}

fn added_address6(out: &std::process::Output) -> Option<Ipv6Addr> {
    added_addresses(out).into_iter().find_map(|ip| match ip {
        IpAddr::V6(v6) => Some(v6),
        IpAddr::V4(_) => None,
    })
}

/// The gateway of the test network: every host's member answers to it, locally.
pub const GATEWAY: &str = "198.51.100.1";

/// Asks the gateway's resolver (flatnetd) for `name` from inside container `c`.
pub fn lookup(cluster: &Cluster, c: usize, name: &str) -> String {
    let out = cluster
        .in_container(c, &["nslookup", name, GATEWAY])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// `nslookup -type=KIND name` against the gateway, from container `c`.
pub fn lookup_type(cluster: &Cluster, c: usize, name: &str, kind: &str) -> String {
    let kind = format!("-type={kind}");
    let out = cluster
        .in_container(c, &["nslookup", &kind, name, GATEWAY])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// A command run inside a network namespace.
pub fn in_ns(ns: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(args);
    cmd
}

/// A TCP connection half way through its data (see [`Cluster::paused_transfer`]).
pub struct PausedTransfer {
    server: Child,
    client: Child,
    bytes: usize,
}

impl PausedTransfer {
    /// Sends the second half; asserts that the whole arrived intact, in order.
    pub fn finish(mut self) {
        self.client
            .stdin
            .as_mut()
            .unwrap()
            .write_all(b"go\n")
            .unwrap();
        assert_eq!(line_of(&mut self.client), "sent");
        assert_eq!(line_of(&mut self.server), format!("intact {}", self.bytes));
        assert!(self.client.wait().unwrap().success() && self.server.wait().unwrap().success());
    }
}

/// The fields of `/proc/<pid>/stat` after the process's name (the name may hold spaces):
/// the first is its state, field 3 of proc(5).
pub fn proc_stat(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = stat.rsplit(')').next().unwrap();
    after_name.split_whitespace().map(String::from).collect()
}

/// The median and the 99th percentile of `times` (sorted here).
pub fn p50_p99(times: &mut [f64]) -> (f64, f64) {
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

/// Reads one line a child printed.
fn line_of(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim().to_string()
}

/// A UDP listener in a namespace that reports whether a datagram arrived within 3 s.
pub fn udp_listener(ns: &str, address: &str, port: u16) -> Child {
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.bind(('{address}', {port}))\n\
         s.settimeout(3)\n\
         print('ready', flush=True)\n\
         try:\n    print('received', s.recv(100))\n\
         except socket.timeout:\n    print('nothing')\n"
    );
    let mut child = in_ns(ns, &["python3", "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    child
}

/// Runs a Python script inside a network namespace; it must succeed.
pub fn python_in(ns: &str, script: &str) {
    let status = in_ns(ns, &["python3", "-c", script]).status().unwrap();
    assert!(status.success(), "python in {ns} failed");
}

/// Writes a UDP packet from `src` to `dst:port` straight onto the container's eth0 (a packet
/// socket: no routing decides where it goes, the data plane does).
pub fn inject_udp(ns: &str, src: Ipv4Addr, dst: &str, port: u16) {
    let script = format!(
        r#"
import socket, struct
def checksum(b):
    s = sum(struct.unpack("!10H", b))
    s = (s >> 16) + (s & 0xffff)
    return ~(s + (s >> 16)) & 0xffff
udp = struct.pack("!HHHH", 4000, {port}, 8 + 5, 0) + b"probe"
header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     socket.inet_aton("{src}"), socket.inet_aton("{dst}"))
header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
for _ in range(3):
    s.sendto(header + udp, ("eth0", 0x0800))
"#
    );
    python_in(ns, &script);
}

/// Busybox nc listening on `port` in `ns`, storing what one connection sends in `into`.
/// A `nc -l` that stores what it receives; it and the shell it starts form a process group
/// that is killed when the receiver is dropped, so a failed transfer leaves nothing behind.
pub struct NcReceiver(pub Child);

impl NcReceiver {
    pub fn wait(&mut self) -> bool {
        self.0.wait().unwrap().success()
    }
}

impl Drop for NcReceiver {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

pub fn nc_receiver(ns: &str, port: u16, into: &Path) -> NcReceiver {
    use std::os::unix::process::CommandExt;
    let bb = busybox();
    let store = format!("cat > {}", into.display());
    let child = in_ns(
        ns,
        &[
            &bb,
            "nc",
            "-l",
            "-p",
            &port.to_string(),
            "-e",
            &bb,
            "sh",
            "-c",
            &store,
        ],
    )
    .stdin(Stdio::null())
    .process_group(0)
    .spawn()
    .unwrap();
    NcReceiver(child)
}

/// A continuous ping whose replies are read as they come.
pub struct Pinger {
    child: Child,
    /// Sequence numbers of replies, as ping prints them. A thread reads ping's output as it
    /// comes: a long run would otherwise fill the pipe and stall ping.
    replies: std::sync::mpsc::Receiver<u64>,
    interval: f64,
}

impl Pinger {
    pub fn start(cluster: &Cluster, from: usize, to: usize, interval: f64, count: u32) -> Pinger {
        let to = cluster.containers[to].ip.to_string();
        let mut child = cluster
            .in_container(
                from,
                &[
                    "ping",
                    "-i",
                    &interval.to_string(),
                    "-c",
                    &count.to_string(),
                    "-W",
                    "1",
                    &to,
                ],
            )
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (sender, replies) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let sequence = |line: &str| {
                line.split("seq=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            };
            for seq in lines.map_while(Result::ok).filter_map(|l| sequence(&l)) {
                if sender.send(seq).is_err() {
                    break;
                }
            }
        });
        Pinger {
            child,
            replies,
            interval,
        }
    }

    /// Blocks until the next reply; returns its sequence number.
    pub fn next_reply(&mut self) -> Option<u64> {
        self.replies.recv().ok()
    }

    /// Reads the rest; returns (replies, the longest run of missing replies in seconds).
    pub fn finish(self, mut seen: Vec<u64>) -> (usize, f64) {
        seen.extend(self.replies.iter());
        let mut child = self.child;
        let _ = child.wait();
        let longest = seen.windows(2).map(|w| w[1] - w[0] - 1).max().unwrap_or(0);
        (seen.len(), longest as f64 * self.interval)
    }
}

pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = stat.rsplit(')').next().unwrap();
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// Waits until `done` holds, for at most `within`; returns how long it took.
pub fn wait_until(within: Duration, what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < within, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

pub fn routes(cluster: &Cluster, host: usize) -> u64 {
    cluster.status(host)["routes"].as_u64().unwrap()
}

/// Every host's data plane knows `n` addresses (containers and host members).
pub fn wait_routes(cluster: &Cluster, hosts: &[usize], n: u64) -> Duration {
    let started = Instant::now();
    while !hosts.iter().all(|&h| routes(cluster, h) == n) {
        if started.elapsed() > Duration::from_secs(20) {
            let seen: Vec<String> = hosts
                .iter()
                .map(|&h| {
                    let s = cluster.status(h);
                    format!(
                        "host {h}: {} routes, {}",
                        s["routes"], s["lighthouse_state"]
                    )
                })
                .collect();
            panic!(
                "not {n} routes everywhere within 20 s:\n{}",
                seen.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

/// Host `host`'s block of `subnet`: a /27, the first one left for the gateway.
pub fn block_in(subnet: &str, host: usize) -> ipnet::Ipv4Net {
    let subnet: ipnet::Ipv4Net = subnet.parse().unwrap();
    let start = u32::from(subnet.network()) + 32 * (host as u32 + 1);
    ipnet::Ipv4Net::new(Ipv4Addr::from(start), 27).unwrap()
}
