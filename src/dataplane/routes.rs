//! The data plane's copy of the lighthouse: Flatnet address -> (host endpoint, host key), and
//! the DNS names on each network. Kept current by the changes a lighthouse feed reports
//! ([`super::follower`]); the packet path only ever reads these maps.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};

use super::packet::network_tag;
use crate::lighthouse::{Change, Entry};
use crate::tunnel::{decode_key, PublicKey};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub endpoint: SocketAddr,
    pub key: PublicKey,
}

/// What the table keeps of an entry: enough to route to it and to undo its indexes.
struct Known {
    route: Route,
    names: Vec<String>,
}

#[derive(Default)]
pub struct RouteTable {
    routes: HashMap<(u32, Ipv4Addr), Known>,
    /// Host key -> how many addresses it serves: only listed hosts may open tunnels.
    keys: HashMap<PublicKey, usize>,
    /// Host endpoint -> its key and how many addresses name that pair, so that a datagram
    /// for an unknown session is matched in O(1).
    by_endpoint: HashMap<SocketAddr, (PublicKey, usize)>,
    /// Network tag -> DNS name -> addresses (a shared alias may name several containers).
    names: HashMap<u32, HashMap<String, Vec<Ipv4Addr>>>,
}

impl RouteTable {
    /// The addresses a name has on a network (lower case, no trailing dot).
    pub fn addresses_of(&self, tag: u32, name: &str) -> Option<&[Ipv4Addr]> {
        self.names.get(&tag)?.get(name).map(Vec::as_slice)
    }

    pub fn route(&self, tag: u32, ip: Ipv4Addr) -> Option<Route> {
        self.routes.get(&(tag, ip)).map(|known| known.route)
    }

    /// May this key open tunnels? Only hosts that serve some Flatnet address may.
    pub fn is_listed(&self, key: &PublicKey) -> bool {
        self.keys.contains_key(key)
    }

    /// The key of the host whose endpoint this is.
    pub fn key_at(&self, endpoint: SocketAddr) -> Option<PublicKey> {
        self.by_endpoint.get(&endpoint).map(|(key, _)| *key)
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn apply(&mut self, change: Change) {
        match change {
            Change::Reset(entries) => {
                *self = RouteTable::default();
                for entry in entries {
                    self.put(entry);
                }
            }
            Change::Put(entry) => self.put(entry),
            Change::Delete { network, ip } => self.delete(network_tag(&network), ip),
        }
    }

    /// Adds or replaces the entry for an address.
    pub fn put(&mut self, entry: Entry) {
        let Some(key) = decode_key(&entry.host.public_key) else {
            return; // a host without a data plane yet
        };
        let tag = network_tag(&entry.network);
        self.delete(tag, entry.ip);
        let route = Route {
            endpoint: entry.host.endpoint,
            key,
        };
        *self.keys.entry(key).or_default() += 1;
        self.by_endpoint
            .entry(route.endpoint)
            .and_modify(|(k, n)| {
                // The newest claim on an endpoint wins (a host restarted with a new key).
                *k = key;
                *n += 1;
            })
            .or_insert((key, 1));
        let names = self.names.entry(tag).or_default();
        for name in &entry.names {
            names.entry(name.clone()).or_default().push(entry.ip);
        }
        let known = Known {
            route,
            names: entry.names,
        };
        self.routes.insert((tag, entry.ip), known);
    }

    pub fn delete(&mut self, tag: u32, ip: Ipv4Addr) {
        let Some(known) = self.routes.remove(&(tag, ip)) else {
            return;
        };
        let Route { endpoint, key } = known.route;
        if let Some(n) = self.keys.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.keys.remove(&key);
            }
        }
        if let Some((_, n)) = self.by_endpoint.get_mut(&endpoint) {
            *n -= 1;
            if *n == 0 {
                self.by_endpoint.remove(&endpoint);
            }
        }
        if let Some(names) = self.names.get_mut(&tag) {
            for name in &known.names {
                if let Some(addresses) = names.get_mut(name) {
                    addresses.retain(|a| *a != ip);
                    if addresses.is_empty() {
                        names.remove(name);
                    }
                }
            }
            if names.is_empty() {
                self.names.remove(&tag);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lighthouse::HostInfo;
    use crate::tunnel::encode_key;

    fn entry(ip: &str, host: u8, names: &[&str]) -> Entry {
        Entry {
            network: "n".into(),
            ip: ip.parse().unwrap(),
            container_id: format!("c-{ip}"),
            names: names.iter().map(|n| n.to_string()).collect(),
            host: HostInfo {
                endpoint: SocketAddr::from(([192, 0, 2, host], 4800)),
                public_key: encode_key(&[host; 32]),
            },
        }
    }

    #[test]
    fn deltas_keep_every_index_in_step() {
        let tag = network_tag("n");
        let mut table = RouteTable::default();
        table.apply(Change::Reset(vec![
            entry("10.0.0.2", 1, &["web"]),
            entry("10.0.0.3", 1, &["web", "db"]),
        ]));
        table.apply(Change::Put(entry("10.0.0.4", 2, &[])));
        assert_eq!(table.len(), 3);
        assert_eq!(table.addresses_of(tag, "web").unwrap().len(), 2);
        assert!(table.is_listed(&[1; 32]) && table.is_listed(&[2; 32]));

        table.apply(Change::Delete {
            network: "n".into(),
            ip: "10.0.0.3".parse().unwrap(),
        });
        assert_eq!(
            table.addresses_of(tag, "web").unwrap(),
            ["10.0.0.2".parse::<Ipv4Addr>().unwrap()]
        );
        assert_eq!(table.addresses_of(tag, "db"), None);
        assert!(table.is_listed(&[1; 32]), "host 1 still serves 10.0.0.2");

        table.apply(Change::Delete {
            network: "n".into(),
            ip: "10.0.0.2".parse().unwrap(),
        });
        assert!(!table.is_listed(&[1; 32]), "host 1 serves nothing any more");
        assert_eq!(table.key_at(SocketAddr::from(([192, 0, 2, 1], 4800))), None);
        assert_eq!(
            table.route(tag, "10.0.0.4".parse().unwrap()).unwrap().key,
            [2; 32]
        );

        // An address moving to another host is one put.
        table.apply(Change::Put(entry("10.0.0.4", 3, &[])));
        assert!(!table.is_listed(&[2; 32]));
        assert_eq!(table.len(), 1);
        table.apply(Change::Reset(Vec::new()));
        assert_eq!(table.len(), 0);
        assert!(!table.is_listed(&[3; 32]));
    }
}
