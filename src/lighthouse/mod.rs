//! `LighthouseClient`: who serves a Flatnet address. Maps (network, Flatnet IP) to the container
//! and to the host that carries its traffic (underlay endpoint and the host's public key).
//!
//! Registration is also the cluster-wide claim on an address: a second container registering an
//! address someone else holds gets [`Error::AddressInUse`], so hosts that share a lighthouse
//! never hand out the same address twice even though each keeps its own local leases.
//!
//! Backends: [`FileLighthouse`] (one JSON file: one host, simulated hosts, the Phase 1 mock)
//! and [`EtcdLighthouse`] (an etcd cluster over TLS, which only `flatnetd` talks to; the
//! plugins reach it through their host's daemon, `control::ViaDaemon`). A data plane follows
//! a lighthouse through a [`Feed`] of changes, on a thread of its own.

pub mod etcd;
pub mod file;
mod settings;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cert::{HostCert, RevocationList};
use crate::error::Result;
pub use crate::network_id::NetworkId;
pub use etcd::EtcdLighthouse;
pub use file::FileLighthouse;
pub use settings::{EtcdSettings, LighthouseInput, LighthouseSettings, DEFAULT_LEASE_TTL_S};

/// The host side of an entry: where to send tunnelled packets and which key must answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    pub endpoint: SocketAddr,
    /// The host's static Noise public key, base64; empty until its data plane has one.
    #[serde(default)]
    pub public_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub network: String,
    /// The network's identifier as the lighthouse allotted it (0 in an entry of a Flatnet that
    /// did not allot them: see [`Entry::wire_network_id`]).
    #[serde(default)]
    pub network_id: NetworkId,
    pub ip: IpAddr,
    pub container_id: String,
    /// DNS names of the container on its network: its name and aliases, normalised.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    pub host: HostInfo,
}

impl Entry {
    /// The identifier the entry's packets carry on the wire.
    pub fn wire_network_id(&self) -> NetworkId {
        crate::network_id::or_legacy(self.network_id, &self.network)
    }
}

/// An entry with the name of the host that published it ("" in a file lighthouse, where
/// entries are not per host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub host: String,
    pub entry: Entry,
}

/// Where else than its entries' endpoint a host may be reached: the addresses its peers see
/// it at (a NAT's, if it is behind one) and, when it listens on all addresses, its local
/// ones. Published once per host, not per entry, since they change together. Peers only try
/// them: a handshake still has to prove the key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidates {
    /// The host's static Noise public key, base64.
    pub public_key: String,
    /// Most useful first; at most [`MAX_CANDIDATES`] are believed.
    pub endpoints: Vec<SocketAddr>,
    /// The host relays for hosts that cannot reach each other (`flatnetd --relay`); every
    /// host keeps a session with it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub relay: bool,
}

/// Candidate endpoints believed per host: each handshake is sent to all of them.
pub const MAX_CANDIDATES: usize = 8;

/// One change to the lighthouse, as a [`Feed`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Everything there is: forget what came before (the file lighthouse, at every change).
    Reset {
        certs: Vec<HostCert>,
        entries: Vec<Published>,
        /// Each host's candidate endpoints, with the host's name.
        candidates: Vec<(String, Candidates)>,
    },
    /// Every host's certificate and candidates: forget the ones known before (etcd, when it
    /// reads them).
    Hosts {
        certs: Vec<HostCert>,
        candidates: Vec<(String, Candidates)>,
    },
    /// Every entry of a network: forget the ones known of it before (etcd, when it reads the
    /// network; empty when the host stops following it).
    Network {
        network: String,
        entries: Vec<Published>,
    },
    /// An entry was added or updated.
    Put(Published),
    /// A host's entry for this address is gone.
    Delete {
        host: String,
        network: String,
        ip: IpAddr,
    },
    /// A host published its candidate endpoints (none: it withdrew them).
    Candidates {
        host: String,
        candidates: Candidates,
    },
    /// A host published its certificate (not yet checked: the follower checks it).
    Cert(HostCert),
    /// A host's certificate is gone (the host left).
    CertGone { host: String },
    /// The network CA's list of revoked host keys (not yet checked: the follower checks it).
    /// Kept across a [`Change::Reset`]: a daemon never goes back to an older list.
    Revocations(RevocationList),
}

/// A lighthouse as a stream of changes: what a data plane follows instead of reading the
/// lighthouse on its packet path.
pub trait Feed: Send {
    /// The changes since the last call; the first calls read everything followed. Waits
    /// up to `wait` for something to happen; an empty answer means nothing did.
    fn changes(&mut self, wait: Duration) -> Result<Vec<Change>>;
    /// The backend's state for `flatnetd status`.
    fn health(&self) -> FeedHealth;
}

/// How following a lighthouse goes: its backend, health, revision and, with etcd, the lease.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedHealth {
    /// `file` or `etcd`.
    pub backend: String,
    /// The last read succeeded (and, with etcd, the host holds its lease).
    pub healthy: bool,
    pub error: Option<String>,
    /// The etcd revision followed, or the file changes seen.
    pub revision: i64,
    /// The host's etcd lease, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ttl_s: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ttl_left_ms: Option<i64>,
    /// Times a scope (the hosts, the revocations, a network) was read whole: once each at
    /// start, and again only when etcd compacted past what a broken watch had seen.
    #[serde(default)]
    pub full_reads: u64,
    /// Watches started again from the revision they had reached, after they broke.
    #[serde(default)]
    pub resumed_watches: u64,
    /// Key and value bytes read from the lighthouse, by reads and watches.
    #[serde(default)]
    pub read_bytes: u64,
    /// The networks whose entries are followed; `None`: every network (the file lighthouse).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
}

/// A lighthouse backend.
pub trait Lighthouse: Send + Sync {
    /// The network's identifier, allotted on first use and the same on every host afterwards;
    /// no two names ever hold the same one.
    fn network_id(&self, network: &str) -> Result<NetworkId>;
    /// Claims `entry.ip` for `entry.container_id`; re-registering one's own address updates it.
    fn register(&self, entry: &Entry) -> Result<()>;
    /// Drops the entry if this container holds it; anything else is a no-op.
    fn unregister(&self, network: &str, ip: IpAddr, container_id: &str) -> Result<()>;
    fn lookup(&self, network: &str, ip: IpAddr) -> Result<Option<Entry>>;
    fn entries(&self, network: &str) -> Result<Vec<Entry>> {
        let mut all = self.all_entries()?;
        all.retain(|e| e.network == network);
        Ok(all)
    }
    /// Every entry of every network.
    fn all_entries(&self) -> Result<Vec<Entry>>;
    /// Publishes this host's candidate endpoints, replacing the last ones.
    fn publish_candidates(&self, candidates: &Candidates) -> Result<()>;
    /// Follows the lighthouse from now on.
    fn follow(&self) -> Result<Box<dyn Feed>>;
    /// The networks the host serves: a backend that can follows the entries of these only,
    /// and its feed forgets the others ([`Change::Network`], empty). The file lighthouse is
    /// read whole at every change and follows every network.
    fn follow_networks(&self, _networks: &std::collections::BTreeSet<String>) {}
}
