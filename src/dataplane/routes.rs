//! The data plane's copy of the lighthouse: Flatnet address -> (host endpoint, host key),
//! reloaded when the lighthouse's revision changes. Lookups on the packet path never touch
//! the lighthouse itself; a miss costs one revision check (a `stat` for the file lighthouse)
//! and reloads only if something changed.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};

use super::packet::network_tag;
use crate::lighthouse::Lighthouse;
use crate::tunnel::{decode_key, PublicKey};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub endpoint: SocketAddr,
    pub key: PublicKey,
}

pub struct RouteTable {
    lighthouse: Box<dyn Lighthouse>,
    revision: Option<u64>,
    routes: HashMap<(u32, Ipv4Addr), Route>,
    keys: HashSet<PublicKey>,
    /// Host endpoint -> its key: a datagram for an unknown session is matched in O(1).
    by_endpoint: HashMap<SocketAddr, PublicKey>,
    /// Network tag -> DNS name -> addresses (a shared alias may name several containers).
    names: HashMap<u32, HashMap<String, Vec<Ipv4Addr>>>,
    /// Why the last read of the lighthouse failed, until one succeeds.
    last_error: Option<String>,
}

impl RouteTable {
    pub fn new(lighthouse: Box<dyn Lighthouse>) -> Self {
        RouteTable {
            lighthouse,
            revision: None,
            routes: HashMap::new(),
            keys: HashSet::new(),
            by_endpoint: HashMap::new(),
            names: HashMap::new(),
            last_error: None,
        }
    }

    /// The addresses a name has on a network (lower case, no trailing dot).
    pub fn addresses_of(&self, tag: u32, name: &str) -> Option<&[Ipv4Addr]> {
        self.names.get(&tag)?.get(name).map(Vec::as_slice)
    }

    /// Looks up a route; on a miss, reloads the lighthouse if it changed and looks again
    /// (a container attached on another host a moment ago).
    pub fn resolve(&mut self, tag: u32, ip: Ipv4Addr) -> Option<Route> {
        if let Some(route) = self.routes.get(&(tag, ip)) {
            return Some(*route);
        }
        self.refresh();
        self.routes.get(&(tag, ip)).copied()
    }

    /// May this key open tunnels? Only hosts that serve some Flatnet address may.
    pub fn is_listed(&self, key: &PublicKey) -> bool {
        self.keys.contains(key)
    }

    /// The key of the host whose endpoint this is.
    pub fn key_at(&self, endpoint: SocketAddr) -> Option<PublicKey> {
        self.by_endpoint.get(&endpoint).copied()
    }

    /// The lighthouse as status and metrics show it.
    pub fn health(&self) -> serde_json::Value {
        serde_json::json!({
            "backend": "file",
            "healthy": self.last_error.is_none() && self.revision.is_some(),
            "error": self.last_error,
        })
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Reloads if the lighthouse changed since the last load.
    pub fn refresh(&mut self) {
        let revision = match self.lighthouse.revision() {
            Ok(revision) => revision,
            Err(e) => {
                self.last_error = Some(e.to_string());
                return;
            }
        };
        if self.revision == Some(revision) {
            return;
        }
        match self.lighthouse.all_entries() {
            Ok(entries) => {
                self.routes.clear();
                self.keys.clear();
                self.by_endpoint.clear();
                self.names.clear();
                for entry in entries {
                    let Some(key) = decode_key(&entry.host.public_key) else {
                        continue; // a host without a data plane yet
                    };
                    let route = Route {
                        endpoint: entry.host.endpoint,
                        key,
                    };
                    let tag = network_tag(&entry.network);
                    self.routes.insert((tag, entry.ip), route);
                    self.keys.insert(key);
                    self.by_endpoint.insert(entry.host.endpoint, key);
                    let names = self.names.entry(tag).or_default();
                    for name in entry.names {
                        names.entry(name).or_default().push(entry.ip);
                    }
                }
                self.revision = Some(revision);
                self.last_error = None;
            }
            Err(e) => {
                tracing::warn!("reading the lighthouse: {e}");
                self.last_error = Some(e.to_string());
            }
        }
    }
}
