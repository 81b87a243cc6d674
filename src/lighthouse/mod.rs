//! `LighthouseClient`: who serves a Flatnet address. Maps (network, Flatnet IP) to the container
//! and to the host that carries its traffic (underlay endpoint and the host's public key).
//!
//! Registration is also the cluster-wide claim on an address: a second container registering an
//! address someone else holds gets [`Error::AddressInUse`], so hosts that share a lighthouse
//! never hand out the same address twice even though each keeps its own local leases.

pub mod file;

use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::error::Result;
pub use file::FileLighthouse;

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
    pub ip: Ipv4Addr,
    pub container_id: String,
    /// DNS names of the container on its network: its name and aliases, normalised.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    pub host: HostInfo,
}

/// A lighthouse backend. Phase 1 ships [`FileLighthouse`]; a networked store (etcd) implements
/// the same trait with a compare-and-swap on `register`.
pub trait Lighthouse: Send + Sync {
    /// Claims `entry.ip` for `entry.container_id`; re-registering one's own address updates it.
    fn register(&self, entry: &Entry) -> Result<()>;
    /// Drops the entry if this container holds it; anything else is a no-op.
    fn unregister(&self, network: &str, ip: Ipv4Addr, container_id: &str) -> Result<()>;
    fn lookup(&self, network: &str, ip: Ipv4Addr) -> Result<Option<Entry>>;
    fn entries(&self, network: &str) -> Result<Vec<Entry>>;
    /// Every entry of every network: what a data plane caches.
    fn all_entries(&self) -> Result<Vec<Entry>>;
    /// A cheap token that changes whenever the entries may have changed, so a cache knows
    /// when to reload (a file's identity and mtime; a store's revision).
    fn revision(&self) -> Result<u64>;
}
