//! The daemon's status: what `flatnetd status` shows, metrics render and plugins check. The
//! daemon fills these types and every reader deserialises them, so a field renamed here is a
//! compile error in each reader, never a silent zero. The counters the packet thread keeps
//! (per member, DNS, fast path, polling) are these types too: what it counts is what it shows.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::settings::{MetricsAddress, SameHost};
use crate::lighthouse::FeedHealth;
use crate::tunnel::{PeerStatus, RelayedPair};

/// Everything a running daemon reports about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub version: String,
    pub pid: u32,
    /// The control protocol it speaks.
    pub protocol: u32,
    pub public_key: String,
    pub listen: SocketAddr,
    /// The candidate endpoints this host published last (where else peers may reach it).
    #[serde(default)]
    pub candidates: Vec<SocketAddr>,
    /// The lighthouse as its settings name it (a path, or `etcd <endpoints>`).
    pub lighthouse: String,
    pub lighthouse_state: FeedHealth,
    pub metrics: Option<MetricsAddress>,
    pub persistent_keepalive_s: Option<u32>,
    pub same_host: SameHost,
    /// One entry per sealing worker; none when the packet thread seals.
    pub seal_workers: Vec<SealWorkerStats>,
    /// One entry per opening worker; none when the packet thread opens everything.
    #[serde(default)]
    pub open_workers: Vec<OpenWorkerStats>,
    /// Time the packet thread spent handling events (not waiting for them).
    pub busy_us: u64,
    pub uptime_ms: u64,
    pub rss_kib: u64,
    /// Flatnet addresses the route table maps to hosts.
    pub routes: usize,
    /// Routes taken away or moved to another host since the daemon started (containers
    /// gone, entries no longer believed): a lighthouse outage that changed nothing leaves it.
    #[serde(default)]
    pub routes_withdrawn: u64,
    /// Lighthouse entries refused (not vouched for by the network CA).
    pub refused_entries: usize,
    /// With etcd: Unix seconds after which this host's own certificate is void.
    #[serde(default)]
    pub certificate_not_after: Option<u64>,
    /// Members served: containers and host members.
    pub containers: Vec<MemberStatus>,
    pub peers: Vec<PeerStatus>,
    /// Whether this host relays for others (`--relay`), and what it passed on, per pair of
    /// hosts (sealed for each other: it never opens them).
    #[serde(default)]
    pub relay: bool,
    #[serde(default)]
    pub relayed: Vec<RelayedPair>,
    pub sessions: usize,
    pub networks: Vec<NetworkStatus>,
    pub dns: DnsStats,
    pub fast_path: FastPathStats,
    /// Packets dropped, by reason (`receive_buffer_overflow`: by the kernel, before flatnetd
    /// saw them).
    pub drops: BTreeMap<String, u64>,
    pub poll: PollStatus,
}

/// A served TUN queue: a container's, or a network's host member's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    /// IPv4 first (`address` from a daemon of an IPv4-only Flatnet).
    #[serde(alias = "address", deserialize_with = "crate::attachment::one_or_more")]
    pub addresses: Vec<IpAddr>,
    pub host_member: bool,
    /// Host ports published to it, as `host_ip:host_port->container_port/protocol`.
    pub published_ports: Vec<String>,
    pub stats: MemberStats,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStats {
    /// Packets the member sent into Flatnet.
    pub from_container_packets: u64,
    pub from_container_bytes: u64,
    /// Packets Flatnet delivered to the member.
    pub to_container_packets: u64,
    pub to_container_bytes: u64,
}

/// A network with members on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkStatus {
    pub network: String,
    /// The network identifier, 8 hex digits.
    pub id: String,
    /// The host member's interface.
    pub host_member: String,
    /// The host member's addresses, the gateways and the subnets, one per subnet, IPv4 first.
    #[serde(alias = "address", deserialize_with = "crate::attachment::one_or_more")]
    pub addresses: Vec<IpAddr>,
    #[serde(alias = "gateway", deserialize_with = "crate::attachment::one_or_more")]
    pub gateways: Vec<IpAddr>,
    #[serde(alias = "subnet", deserialize_with = "crate::attachment::one_or_more")]
    pub subnets: Vec<IpNet>,
    pub internal: bool,
    /// Forwarded traffic to the containers only from Flatnet, replies and published ports.
    #[serde(default)]
    pub ingress_filter: bool,
    pub dns_upstreams: Vec<SocketAddr>,
    /// Whether the host member's queue is open.
    pub served: bool,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealWorkerStats {
    pub trains: u64,
    pub packets: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenWorkerStats {
    /// Datagrams it opened for the packet thread.
    pub datagrams: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsStats {
    pub queries: u64,
    /// Answered from Flatnet's names (found, NXDOMAIN, REFUSED on internal networks).
    pub local_answers: u64,
    pub forwarded: u64,
    pub upstream_answers: u64,
    /// SERVFAIL sent: no upstream, an upstream that did not answer in time, too many pending.
    pub failures: u64,
    /// Datagrams on a query's socket that were not its answer (another ID or question).
    #[serde(default)]
    pub ignored_answers: u64,
}

/// Frames moved between two containers of this host without a tunnel.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FastPathStats {
    /// TUN writes: a segment train counts once.
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollStatus {
    pub window_us: u64,
    pub stats: PollStats,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollStats {
    /// Windows in which something arrived before the window closed.
    pub caught: u64,
    /// Windows that closed empty, after which the loop slept.
    pub missed: u64,
    /// Windows not opened because the tick's budget was spent.
    pub over_budget: u64,
    /// Time spent in polls that found nothing.
    pub empty_us: u64,
}

impl DaemonStatus {
    /// Whether the daemon serves this container on this network.
    pub fn serves(&self, network: &str, container_id: &str) -> bool {
        self.containers
            .iter()
            .any(|c| c.network == network && c.container_id == container_id)
    }
}
