//! The data plane's copy of the lighthouse: Flatnet address -> (host endpoint, host key), and
//! the DNS names on each network. Kept current by the changes a lighthouse feed reports
//! ([`super::follower`]); the packet path only ever reads these maps.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use super::candidates::{Believed, CandidateBook};
use crate::cert::{HostCert, RevocationList, TrustBundle};
use crate::lighthouse::{Change, Entry, NetworkId, Published};
use crate::tunnel::{decode_key, PublicKey};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub endpoint: SocketAddr,
    pub key: PublicKey,
}

/// What the table keeps of an installed entry: enough to route to it and to undo its indexes.
struct Known {
    route: Route,
    names: Vec<String>,
}

type Address = (u32, IpAddr);

/// DNS names one entry may give its address (a container's name and aliases).
const MAX_NAMES: usize = 32;
/// The longest name DNS carries.
const MAX_NAME_LEN: usize = 253;

#[derive(Default)]
pub struct RouteTable {
    /// The network CA: with one, an entry counts only if the certificate of the host that
    /// published it verifies, names the entry's key and grants its address.
    trust: Option<TrustBundle>,
    /// Every published entry, by host and address.
    published: HashMap<(String, Address), Entry>,
    /// The network id each (host, network name, address) is published under: what a delete,
    /// which names the network, undoes.
    network_ids: HashMap<(String, String, IpAddr), NetworkId>,
    /// The hosts that publish each address (one, unless someone lies).
    claimants: HashMap<Address, BTreeSet<String>>,
    /// The addresses each host publishes: looked at again when its certificate changes.
    by_host: HashMap<String, HashSet<Address>>,
    /// Certificates that verified, by host name.
    certs: HashMap<String, HostCert>,
    /// Their keys, with the host's name.
    certified: HashMap<PublicKey, String>,
    /// Admit every certified key, not only those that serve an address here (a relay, which
    /// may serve none, passes traffic between any two hosts).
    admit_certified: bool,
    /// Published entries not believed right now.
    refused: HashSet<(String, Address)>,
    /// The entries believed: where each address is routed. Looked up for every packet, with
    /// keys the lighthouse chose: a fast hasher, not SipHash.
    routes: foldhash::HashMap<Address, Known>,
    /// Host key -> how many addresses it serves: only listed hosts may open tunnels.
    keys: foldhash::HashMap<PublicKey, usize>,
    /// Host endpoint -> the keys routes name with it, and how many addresses each, so that a
    /// datagram for an unknown session is matched in O(1).
    by_endpoint: HashMap<SocketAddr, HashMap<PublicKey, usize>>,
    /// Network id -> DNS name -> addresses (a shared alias may name several containers).
    names: HashMap<u32, HashMap<String, Vec<IpAddr>>>,
    /// The networks this host serves, by identifier, with their subnets: an entry that carries
    /// one of these identifiers under another network's name, or for an address outside the
    /// subnet, is not believed, whoever vouches for it (so no packet from there is delivered).
    local: HashMap<NetworkId, (String, Vec<IpNet>)>,
    /// Keys whose last route went: their tunnels are to be closed (if still unlisted then).
    delisted: Vec<PublicKey>,
    /// The newest revocation list of each trusted CA that reached us, by CA name.
    revocations: HashMap<String, RevocationList>,
    /// Where else hosts may be reached.
    candidates: CandidateBook,
    /// Routes taken away or pointed elsewhere so far (deleted, no longer believed, moved to
    /// another host): a lighthouse that reconnects without a change must not move this.
    withdrawn: u64,
}

impl RouteTable {
    /// A table that believes only what the network CA's certificates vouch for.
    pub fn trusting(trust: impl Into<TrustBundle>) -> Self {
        RouteTable {
            trust: Some(trust.into()),
            ..Default::default()
        }
    }

    /// The addresses a name has on a network (lower case, no trailing dot).
    pub fn addresses_of(&self, network_id: NetworkId, name: &str) -> Option<&[IpAddr]> {
        self.names.get(&network_id)?.get(name).map(Vec::as_slice)
    }

    pub fn route(&self, network_id: NetworkId, ip: IpAddr) -> Option<Route> {
        self.routes.get(&(network_id, ip)).map(|known| known.route)
    }

    /// May this key open tunnels? Only hosts that serve some Flatnet address may (on a
    /// relay: every host whose certificate is believed and not revoked).
    pub fn is_listed(&self, key: &PublicKey) -> bool {
        self.keys.contains_key(key) || (self.admit_certified && self.is_certified(key))
    }

    fn is_certified(&self, key: &PublicKey) -> bool {
        self.certified
            .get(key)
            .and_then(|host| self.certs.get(host))
            .is_some_and(|cert| !self.is_revoked(&cert.public_key))
    }

    /// Admits every certified host (see [`RouteTable::is_listed`]).
    pub fn admit_certified(&mut self, admit: bool) {
        self.admit_certified = admit;
    }

    /// The key of the host whose endpoint this is, if only one key claims it: a host that
    /// publishes another host's endpoint with its own key (certified for its own addresses)
    /// must not be handed that host's traffic. A host restarted with a new key has its old
    /// entries replaced (the lighthouse says it moved), and the endpoint is one key's again.
    /// An endpoint no route names may be one that only one host lists as a candidate.
    pub fn key_at(&self, endpoint: SocketAddr) -> Option<PublicKey> {
        let Some(keys) = self.by_endpoint.get(&endpoint) else {
            return self.candidates.owner(endpoint);
        };
        match keys.len() {
            1 => keys.keys().next().copied(),
            _ => None,
        }
    }

    /// The keys whose candidate endpoints changed since the last call, with their lists now.
    pub fn take_changed_candidates(&mut self) -> Vec<(PublicKey, Believed)> {
        self.candidates.take_changed()
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Routes withdrawn or changed since the table was made.
    pub fn withdrawn(&self) -> u64 {
        self.withdrawn
    }

    /// Tells the table that this host serves `network`, with `subnets`, under `network_id`.
    pub fn serve_network(&mut self, network_id: NetworkId, network: &str, subnets: Vec<IpNet>) {
        let served = (network.to_string(), subnets);
        if self.local.get(&network_id) == Some(&served) {
            return;
        }
        self.local.insert(network_id, served);
        let tagged: Vec<Address> = self
            .claimants
            .keys()
            .filter(|(id, _)| *id == network_id)
            .copied()
            .collect();
        for address in tagged {
            self.settle(address);
        }
    }

    /// Drops the certificates void at `now` (Unix seconds): their hosts' routes go at once.
    /// Returns the hosts dropped.
    pub fn expire_certs(&mut self, now: u64) -> Vec<String> {
        let expired: Vec<String> = self
            .certs
            .iter()
            .filter(|(_, cert)| now > cert.not_after)
            .map(|(host, _)| host.clone())
            .collect();
        for host in &expired {
            tracing::warn!("host {host}'s certificate expired: its routes are dropped");
            self.drop_cert(host);
        }
        if !expired.is_empty() {
            self.settle_candidates();
        }
        expired
    }

    /// The keys that serve nothing any more since the last call: their tunnels may go.
    pub fn take_delisted(&mut self) -> Vec<PublicKey> {
        let mut delisted = std::mem::take(&mut self.delisted);
        delisted.retain(|key| !self.keys.contains_key(key));
        delisted.sort_unstable();
        delisted.dedup();
        delisted
    }

    /// Published entries not believed (no valid certificate, another key, outside its blocks
    /// or networks).
    pub fn refused(&self) -> usize {
        self.refused.len()
    }

    pub fn apply(&mut self, change: Change) {
        // Which candidate lists are believed depends on lists, certificates and revocations,
        // not on entries.
        let about_trust = !matches!(change, Change::Put(_) | Change::Delete { .. });
        match change {
            Change::Reset {
                certs,
                entries,
                candidates,
            } => {
                let delisted: Vec<PublicKey> = self.keys.keys().copied().collect();
                let old: Vec<(Address, Route)> =
                    self.routes.iter().map(|(a, k)| (*a, k.route)).collect();
                *self = RouteTable {
                    trust: self.trust.take(),
                    admit_certified: self.admit_certified,
                    local: std::mem::take(&mut self.local),
                    revocations: std::mem::take(&mut self.revocations),
                    // Kept, so that the keys whose lists are gone are reported.
                    candidates: std::mem::take(&mut self.candidates),
                    delisted,
                    withdrawn: self.withdrawn,
                    ..Default::default()
                };
                for cert in certs {
                    self.put_cert(cert);
                }
                for published in entries {
                    self.put(published);
                }
                self.candidates.reset(candidates);
                let gone = old.iter().filter(|(a, r)| self.route(a.0, a.1) != Some(*r));
                self.withdrawn += gone.count() as u64;
            }
            Change::Hosts { certs, candidates } => {
                self.replace_certs(certs);
                self.candidates.reset(candidates);
            }
            Change::Network { network, entries } => self.replace_network(&network, entries),
            Change::Put(published) => self.put(published),
            Change::Delete { host, network, ip } => self.delete(&host, &network, ip),
            Change::Candidates { host, candidates } => self.candidates.put(host, candidates),
            Change::Cert(cert) => self.put_cert(cert),
            Change::CertGone { host } => self.drop_cert(&host),
            Change::Revocations(list) => self.put_revocations(list),
        }
        if about_trust {
            self.settle_candidates();
        }
    }

    fn settle_candidates(&mut self) {
        let (trust, certs) = (&self.trust, &self.certs);
        let revocations = &self.revocations;
        self.candidates.settle(|host, public_key| {
            trust.is_none()
                || certs.get(host).is_some_and(|cert| {
                    cert.public_key == public_key
                        && !revocations.values().any(|list| list.revokes(public_key))
                })
        });
    }

    /// Takes a revocation list the CA signed if it is newer than the one held; every host is
    /// looked at again, so a revoked key loses its routes at once.
    fn put_revocations(&mut self, list: RevocationList) {
        let Some(trust) = &self.trust else {
            return;
        };
        if let Err(why) = trust.verify_revocations(&list) {
            tracing::warn!("a revocation list is not believed: {why}");
            return;
        }
        if self
            .revocations
            .get(&list.issuer)
            .is_some_and(|held| held.serial >= list.serial)
        {
            return;
        }
        tracing::info!(
            "revocation list {} of {}: {} keys revoked",
            list.serial,
            list.issuer,
            list.revoked.len()
        );
        self.revocations.insert(list.issuer.clone(), list);
        let hosts: Vec<String> = self.by_host.keys().cloned().collect();
        for host in hosts {
            self.settle_host(&host);
        }
    }

    fn is_revoked(&self, public_key: &str) -> bool {
        self.revocations
            .values()
            .any(|list| list.revokes(public_key))
    }

    /// Adds or replaces a host's entry for an address. Its names are bounded (a host could
    /// publish any number, of any length): the first [`MAX_NAMES`] that DNS can carry count.
    pub fn put(&mut self, published: Published) {
        let Published { host, mut entry } = published;
        entry.names.retain(|name| name.len() <= MAX_NAME_LEN);
        entry.names.truncate(MAX_NAMES);
        let address = (entry.wire_network_id(), entry.ip);
        let named = (host.clone(), entry.network.clone(), entry.ip);
        if let Some(old) = self.network_ids.insert(named, address.0) {
            if old != address.0 {
                // The same entry under another identifier: the old one goes.
                self.delete_address(&host, (old, entry.ip));
            }
        }
        self.claimants
            .entry(address)
            .or_default()
            .insert(host.clone());
        self.by_host
            .entry(host.clone())
            .or_default()
            .insert(address);
        self.published.insert((host, address), entry);
        self.settle(address);
    }

    /// Drops a host's entry for an address of the named network.
    pub fn delete(&mut self, host: &str, network: &str, ip: IpAddr) {
        let named = (host.to_string(), network.to_string(), ip);
        if let Some(network_id) = self.network_ids.remove(&named) {
            self.delete_address(host, (network_id, ip));
        }
    }

    fn delete_address(&mut self, host: &str, address: Address) {
        let key = (host.to_string(), address);
        if self.published.remove(&key).is_none() {
            return;
        }
        self.refused.remove(&key);
        if let Some(hosts) = self.claimants.get_mut(&address) {
            hosts.remove(host);
            if hosts.is_empty() {
                self.claimants.remove(&address);
            }
        }
        if let Some(addresses) = self.by_host.get_mut(host) {
            addresses.remove(&address);
            if addresses.is_empty() {
                self.by_host.remove(host);
            }
        }
        self.settle(address);
    }

    /// Every certificate there is: the hosts whose certificate is gone lose their routes.
    fn replace_certs(&mut self, certs: Vec<HostCert>) {
        let named: HashSet<&str> = certs.iter().map(|cert| cert.name.as_str()).collect();
        let gone: Vec<String> = self
            .certs
            .keys()
            .filter(|host| !named.contains(host.as_str()))
            .cloned()
            .collect();
        for host in gone {
            self.drop_cert(&host);
        }
        for cert in certs {
            if self.certs.get(&cert.name) != Some(&cert) {
                self.put_cert(cert);
            }
        }
    }

    /// Every entry of a network: the ones not among them go, the others are put (an entry
    /// put again unchanged keeps its route).
    fn replace_network(&mut self, network: &str, entries: Vec<Published>) {
        let kept: HashSet<(&str, IpAddr)> = entries
            .iter()
            .map(|p| (p.host.as_str(), p.entry.ip))
            .collect();
        let gone: Vec<(String, IpAddr)> = self
            .network_ids
            .keys()
            .filter(|(host, name, ip)| name == network && !kept.contains(&(host.as_str(), *ip)))
            .map(|(host, _, ip)| (host.clone(), *ip))
            .collect();
        for (host, ip) in gone {
            self.delete(&host, network, ip);
        }
        for published in entries {
            let address = (published.entry.wire_network_id(), published.entry.ip);
            let unchanged = self
                .published
                .get(&(published.host.clone(), address))
                .is_some_and(|held| *held == published.entry);
            if !unchanged {
                self.put(published);
            }
        }
    }

    fn drop_cert(&mut self, host: &str) {
        if let Some(cert) = self.certs.remove(host) {
            if let Some(key) = decode_key(&cert.public_key) {
                self.certified.remove(&key);
            }
        }
        self.settle_host(host);
    }

    fn put_cert(&mut self, cert: HostCert) {
        let host = cert.name.clone();
        let verdict = match &self.trust {
            Some(trust) => trust.verify(&cert, crate::cert::now_unix()),
            None => Ok(()),
        };
        match verdict {
            Ok(()) => {
                if let Some(old) = self
                    .certs
                    .get(&host)
                    .and_then(|c| decode_key(&c.public_key))
                {
                    self.certified.remove(&old);
                }
                if let Some(key) = decode_key(&cert.public_key) {
                    self.certified.insert(key, host.clone());
                }
                self.certs.insert(host.clone(), cert);
                self.settle_host(&host);
            }
            Err(why) => {
                tracing::warn!("host {host}'s certificate is not believed: {why}");
                self.drop_cert(&host);
            }
        }
    }

    fn settle_host(&mut self, host: &str) {
        let addresses: Vec<Address> = self
            .by_host
            .get(host)
            .map(|a| a.iter().copied().collect())
            .unwrap_or_default();
        for address in addresses {
            self.settle(address);
        }
    }

    /// Routes an address to the first of its claimants that is believed, if any.
    fn settle(&mut self, address: Address) {
        let before = self.route(address.0, address.1);
        self.uninstall(address);
        let claimants: Vec<String> = self
            .claimants
            .get(&address)
            .map(|hosts| hosts.iter().cloned().collect())
            .unwrap_or_default();
        let mut chosen = None;
        for host in claimants {
            let key = (host, address);
            let entry = &self.published[&key];
            if chosen.is_none() && self.believes(&key.0, entry) {
                chosen = Some(entry.clone());
                self.refused.remove(&key);
            } else if self.believes(&key.0, entry) {
                self.refused.remove(&key);
            } else {
                self.refused.insert(key);
            }
        }
        if let Some(entry) = chosen {
            self.install(address, entry);
        }
        let after = self.route(address.0, address.1);
        if before.is_some() && after != before {
            self.withdrawn += 1;
        }
    }

    fn believes(&self, host: &str, entry: &Entry) -> bool {
        let network_id = entry.wire_network_id();
        if self.local.get(&network_id).is_some_and(|(name, subnets)| {
            *name != entry.network || !subnets.iter().any(|s| s.contains(&entry.ip))
        }) {
            return false;
        }
        if self.trust.is_none() {
            return true;
        }
        self.certs.get(host).is_some_and(|cert| {
            cert.public_key == entry.host.public_key
                && cert.vouches_for(&entry.network, network_id, entry.ip)
                && !self.is_revoked(&cert.public_key)
        })
    }

    fn install(&mut self, address: Address, entry: Entry) {
        let Some(key) = decode_key(&entry.host.public_key) else {
            return; // a host without a data plane yet
        };
        let route = Route {
            endpoint: entry.host.endpoint,
            key,
        };
        *self.keys.entry(key).or_default() += 1;
        *self
            .by_endpoint
            .entry(route.endpoint)
            .or_default()
            .entry(key)
            .or_default() += 1;
        let names = self.names.entry(address.0).or_default();
        for name in &entry.names {
            names.entry(name.clone()).or_default().push(address.1);
        }
        let known = Known {
            route,
            names: entry.names,
        };
        self.routes.insert(address, known);
    }

    fn uninstall(&mut self, (network_id, ip): Address) {
        let Some(known) = self.routes.remove(&(network_id, ip)) else {
            return;
        };
        let Route { endpoint, key } = known.route;
        if let Some(n) = self.keys.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.keys.remove(&key);
                self.delisted.push(key);
            }
        }
        if let Some(keys) = self.by_endpoint.get_mut(&endpoint) {
            if let Some(n) = keys.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    keys.remove(&key);
                }
            }
            if keys.is_empty() {
                self.by_endpoint.remove(&endpoint);
            }
        }
        if let Some(names) = self.names.get_mut(&network_id) {
            for name in &known.names {
                if let Some(addresses) = names.get_mut(name) {
                    addresses.retain(|a| *a != ip);
                    if addresses.is_empty() {
                        names.remove(name);
                    }
                }
            }
            if names.is_empty() {
                self.names.remove(&network_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::{CaKey, CertNetwork, Grant};
    use crate::lighthouse::HostInfo;
    use crate::tunnel::encode_key;

    fn entry(ip: &str, host: u8, names: &[&str]) -> Entry {
        Entry {
            network: "n".into(),
            network_id: 1,
            ip: ip.parse().unwrap(),
            container_id: format!("c-{ip}"),
            names: names.iter().map(|n| n.to_string()).collect(),
            host: HostInfo {
                endpoint: SocketAddr::from(([192, 0, 2, host], 4800)),
                public_key: encode_key(&[host; 32]),
            },
        }
    }

    /// As a file lighthouse publishes: no host names.
    fn anonymous(entry: Entry) -> Published {
        Published {
            host: String::new(),
            entry,
        }
    }

    fn by(host: &str, entry: Entry) -> Published {
        Published {
            host: host.into(),
            entry,
        }
    }

    fn delete(host: &str, ip: &str) -> Change {
        Change::Delete {
            host: host.into(),
            network: "n".into(),
            ip: ip.parse().unwrap(),
        }
    }

    #[test]
    fn deltas_keep_every_index_in_step() {
        let network_id = 1;
        let mut table = RouteTable::default();
        table.apply(Change::Reset {
            certs: vec![],
            entries: vec![
                anonymous(entry("10.0.0.2", 1, &["web"])),
                anonymous(entry("10.0.0.3", 1, &["web", "db"])),
            ],
            candidates: vec![],
        });
        table.apply(Change::Put(anonymous(entry("10.0.0.4", 2, &[]))));
        assert_eq!(table.len(), 3);
        assert_eq!(table.addresses_of(network_id, "web").unwrap().len(), 2);
        assert!(table.is_listed(&[1; 32]) && table.is_listed(&[2; 32]));

        table.apply(delete("", "10.0.0.3"));
        assert_eq!(table.withdrawn(), 1);
        let web: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(table.addresses_of(network_id, "web").unwrap(), [web]);
        assert_eq!(table.addresses_of(network_id, "db"), None);
        assert!(table.is_listed(&[1; 32]), "host 1 still serves 10.0.0.2");

        table.apply(delete("", "10.0.0.2"));
        assert!(!table.is_listed(&[1; 32]), "host 1 serves nothing any more");
        assert_eq!(table.key_at(SocketAddr::from(([192, 0, 2, 1], 4800))), None);
        let four = "10.0.0.4".parse().unwrap();
        assert_eq!(table.route(network_id, four).unwrap().key, [2; 32]);

        // An address moving to another host is one put in a file lighthouse.
        table.apply(Change::Put(anonymous(entry("10.0.0.4", 3, &[]))));
        assert!(!table.is_listed(&[2; 32]));
        assert_eq!(table.len(), 1);
        assert_eq!(table.withdrawn(), 3, "a route that moved counts");
        table.apply(Change::Reset {
            certs: vec![],
            entries: vec![anonymous(entry("10.0.0.4", 3, &[]))],
            candidates: vec![],
        });
        assert_eq!(table.withdrawn(), 3, "read again, unchanged");
        table.apply(Change::Reset {
            certs: vec![],
            entries: vec![],
            candidates: vec![],
        });
        assert_eq!(table.len(), 0);
        assert_eq!(table.withdrawn(), 4);
        assert!(!table.is_listed(&[3; 32]));
    }

    #[test]
    fn with_a_ca_candidates_count_for_the_key_the_certificate_names() {
        let (_, mut table) = trusting_b();
        let mapped = SocketAddr::from(([198, 51, 100, 7], 31000));
        let publish = |host: &str, key: u8| Change::Candidates {
            host: host.into(),
            candidates: crate::lighthouse::Candidates {
                public_key: encode_key(&[key; 32]),
                endpoints: vec![mapped],
                relay: false,
            },
        };
        // Host "b" for another key, and a host without a certificate: neither counts.
        table.apply(publish("b", 3));
        table.apply(publish("c", 3));
        assert!(table.take_changed_candidates().is_empty());
        assert_eq!(table.key_at(mapped), None);
        table.apply(publish("b", 2));
        let changed = table.take_changed_candidates();
        assert_eq!(changed.len(), 1);
        assert_eq!(
            (changed[0].0, &changed[0].1.endpoints),
            ([2; 32], &vec![mapped])
        );
        assert_eq!(
            table.key_at(mapped),
            Some([2; 32]),
            "a datagram from there is b's"
        );
        table.apply(Change::CertGone { host: "b".into() });
        let changed = table.take_changed_candidates();
        assert_eq!(changed.len(), 1);
        assert!(
            changed[0].1.endpoints.is_empty(),
            "withdrawn with the certificate"
        );
    }

    #[test]
    fn a_network_read_again_replaces_only_that_networks_entries() {
        let mut table = RouteTable::default();
        let on = |network: &str, id: u32, ip: &str, host: u8| {
            let mut e = entry(ip, host, &[]);
            (e.network, e.network_id) = (network.into(), id);
            by(&format!("h{host}"), e)
        };
        for put in [on("n", 1, "10.0.0.2", 1), on("n", 1, "10.0.0.3", 2)] {
            table.apply(Change::Put(put));
        }
        table.apply(Change::Put(on("m", 2, "10.9.0.2", 2)));
        assert_eq!(table.len(), 3);
        table.take_delisted();

        // Read again: 10.0.0.3 went while the watch was down, 10.0.0.2 is unchanged.
        table.apply(Change::Network {
            network: "n".into(),
            entries: vec![on("n", 1, "10.0.0.2", 1)],
        });
        let route = |table: &RouteTable, id: u32, ip: &str| table.route(id, ip.parse().unwrap());
        assert!(route(&table, 1, "10.0.0.2").is_some());
        assert_eq!(route(&table, 1, "10.0.0.3"), None);
        assert!(
            route(&table, 2, "10.9.0.2").is_some(),
            "network m is untouched"
        );
        assert!(table.take_delisted().is_empty(), "host 2 still serves m");
        assert_eq!(table.withdrawn(), 1, "only 10.0.0.3 went");

        // No longer followed: nothing of n is held.
        table.apply(Change::Network {
            network: "n".into(),
            entries: vec![],
        });
        assert_eq!(table.len(), 1);
        assert_eq!(table.take_delisted(), vec![[1; 32]]);
        assert!(table.published.keys().all(|(host, _)| host == "h2"));
    }

    #[test]
    fn every_certificate_read_again_drops_the_hosts_without_one() {
        let (ca_key, ca) = CaKey::generate("ca").unwrap();
        let grant = |name: &str, host: u8, block: &str| certify(&ca_key, name, host, block);
        let mut table = RouteTable::trusting(ca);
        let (b, c) = (grant("b", 2, "10.0.1.0/24"), grant("c", 3, "10.0.2.0/24"));
        table.apply(Change::Hosts {
            certs: vec![b.clone(), c],
            candidates: vec![],
        });
        table.apply(Change::Put(by("b", entry("10.0.1.2", 2, &[]))));
        table.apply(Change::Put(by("c", entry("10.0.2.2", 3, &[]))));
        assert_eq!(table.len(), 2);
        table.apply(Change::Hosts {
            certs: vec![b],
            candidates: vec![],
        });
        assert_eq!(table.len(), 1, "c's certificate is gone, and its route");
        assert_eq!(table.refused(), 1);
    }

    #[test]
    fn a_relay_admits_every_certified_key_and_no_revoked_one() {
        let (ca_key, mut table) = trusting_b();
        assert!(!table.is_listed(&[2; 32]), "b serves nothing here");
        table.admit_certified(true);
        assert!(table.is_listed(&[2; 32]));
        assert!(!table.is_listed(&[3; 32]), "no certificate names this key");
        let list = ca_key
            .sign_revocations(1, vec![encode_key(&[2; 32])])
            .unwrap();
        table.apply(Change::Revocations(list));
        assert!(!table.is_listed(&[2; 32]), "revoked");
        table.apply(Change::CertGone { host: "b".into() });
        assert!(table.certified.is_empty());
    }

    /// A table trusting a new CA, which certified host "b" (key 2) for 10.0.1.0/24.
    fn trusting_b() -> (CaKey, RouteTable) {
        let (ca_key, ca) = CaKey::generate("ca").unwrap();
        let mut table = RouteTable::trusting(ca);
        table.apply(Change::Cert(certify(&ca_key, "b", 2, "10.0.1.0/24")));
        (ca_key, table)
    }

    /// Host `name`'s certificate for key `[key; 32]` and `block` on network "n".
    fn certify(ca_key: &CaKey, name: &str, key: u8, block: &str) -> HostCert {
        ca_key
            .sign(name, &encode_key(&[key; 32]), on_n(block))
            .unwrap()
    }

    /// What a CA grants in these tests: one block on network "n" (identifier 1).
    fn on_n(block: &str) -> Grant {
        Grant {
            blocks: vec![block.parse().unwrap()],
            networks: vec![CertNetwork {
                name: "n".into(),
                id: 1,
            }],
            any_network: false,
            not_after: u64::MAX,
        }
    }

    #[test]
    fn with_a_ca_only_what_a_certificate_grants_is_routed() {
        let network_id = 1;
        let (ca_key, ca) = CaKey::generate("ca").unwrap();
        let grant = |name: &str, host: u8, block: &str| certify(&ca_key, name, host, block);
        let mut table = RouteTable::trusting(ca);
        // B's entry before B's certificate: held back until the certificate comes.
        table.apply(Change::Put(by("b", entry("10.0.1.2", 2, &["web"]))));
        assert_eq!(table.len(), 0);
        assert_eq!(table.refused(), 1);
        table.apply(Change::Cert(grant("b", 2, "10.0.1.0/24")));
        let key_of = |table: &RouteTable, ip: &str| {
            let route = table.route(network_id, ip.parse().unwrap());
            route.map(|r| r.key)
        };
        assert_eq!(key_of(&table, "10.0.1.2"), Some([2; 32]));
        assert_eq!(table.refused(), 0);

        // C, with a certificate for its own block, claims B's address and B's name.
        table.apply(Change::Cert(grant("c", 3, "10.0.2.0/24")));
        table.apply(Change::Put(by("c", entry("10.0.1.2", 3, &["web"]))));
        assert_eq!(key_of(&table, "10.0.1.2"), Some([2; 32]));
        assert_eq!(table.addresses_of(network_id, "web").unwrap().len(), 1);
        assert_eq!(table.refused(), 1);
        // ... or publishes under its own name with B's key: not the key its certificate names.
        table.apply(Change::Put(by("c", entry("10.0.2.9", 2, &[]))));
        assert_eq!(table.route(network_id, "10.0.2.9".parse().unwrap()), None);
        // Even when B's entry is gone, C's claim is not believed.
        table.apply(delete("b", "10.0.1.2"));
        assert_eq!(table.route(network_id, "10.0.1.2".parse().unwrap()), None);
        assert!(!table.is_listed(&[3; 32]), "C serves nothing it may");

        // D's certificate from another CA, or forged, is not believed.
        let (other_ca, _) = CaKey::generate("ca").unwrap();
        let forged = other_ca
            .sign("d", &encode_key(&[4; 32]), on_n("10.0.3.0/24"))
            .unwrap();
        table.apply(Change::Cert(forged));
        table.apply(Change::Put(by("d", entry("10.0.3.2", 4, &[]))));
        assert_eq!(table.route(network_id, "10.0.3.2".parse().unwrap()), None);

        // A host whose certificate goes loses its routes.
        table.apply(Change::Put(by("c", entry("10.0.2.3", 3, &[]))));
        assert!(table.is_listed(&[3; 32]));
        table.apply(Change::CertGone { host: "c".into() });
        assert!(!table.is_listed(&[3; 32]));
    }

    /// IPv6 entries are believed as IPv4 ones are: inside a block the certificate grants,
    /// and inside a subnet of the network where this host serves it.
    #[test]
    fn ipv6_entries_count_only_inside_granted_blocks_and_served_subnets() {
        let (ca_key, ca) = CaKey::generate("ca").unwrap();
        let mut table = RouteTable::trusting(ca);
        let mut grant = on_n("10.0.1.0/24");
        grant.blocks.push("fd77::1:0/112".parse().unwrap());
        let cert = ca_key.sign("b", &encode_key(&[2; 32]), grant).unwrap();
        table.apply(Change::Cert(cert));
        table.apply(Change::Put(by("b", entry("fd77::1:5", 2, &["web"]))));
        table.apply(Change::Put(by("b", entry("fd77::2:5", 2, &[]))));
        let routed = |table: &RouteTable, ip: &str| table.route(1, ip.parse().unwrap()).is_some();
        assert!(routed(&table, "fd77::1:5"));
        assert!(!routed(&table, "fd77::2:5"), "outside the granted block");
        let names = table.addresses_of(1, "web").unwrap();
        assert_eq!(names, ["fd77::1:5".parse::<IpAddr>().unwrap()]);
        // Served here with an IPv4 subnet alone, the network has no IPv6 address to believe.
        table.serve_network(1, "n", vec!["10.0.0.0/16".parse().unwrap()]);
        assert!(!routed(&table, "fd77::1:5"));
        table.serve_network(
            1,
            "n",
            vec!["10.0.0.0/16".parse().unwrap(), "fd77::/64".parse().unwrap()],
        );
        assert!(routed(&table, "fd77::1:5"));
    }

    #[test]
    fn an_entry_counts_only_on_a_network_its_certificate_names_with_its_identifier() {
        let (ca_key, ca) = CaKey::generate("ca").unwrap();
        let mut table = RouteTable::trusting(ca);
        table.serve_network(1, "n", vec!["10.0.0.0/16".parse().unwrap()]);
        let c = ca_key
            .sign("c", &encode_key(&[3; 32]), on_n("10.0.2.0/24"))
            .unwrap();
        table.apply(Change::Cert(c));
        let on = |network: &str, network_id: NetworkId, ip: &str| {
            let mut e = entry(ip, 3, &["github.com"]);
            e.network = network.into();
            e.network_id = network_id;
            by("c", e)
        };
        // Another network, under its own identifier or under n's: neither is believed.
        table.apply(Change::Put(on("m", 2, "10.0.2.5")));
        table.apply(Change::Put(on("m", 1, "10.0.2.6")));
        // n under another identifier.
        table.apply(Change::Put(on("n", 2, "10.0.2.7")));
        assert_eq!(table.len(), 0);
        assert_eq!(table.refused(), 3);
        assert_eq!(table.addresses_of(2, "github.com"), None);
        table.apply(Change::Put(on("n", 1, "10.0.2.8")));
        assert_eq!(table.len(), 1);
        // The host's block reaches beyond the network's subnet here: what lies beyond does not
        // count, and a narrower subnet served later takes back what it leaves out.
        table.serve_network(1, "n", vec!["10.0.2.0/25".parse().unwrap()]);
        table.apply(Change::Put(on("n", 1, "10.0.2.200")));
        assert_eq!(table.len(), 1);
        assert_eq!(table.refused(), 4);

        // A host the operator let serve any network gets its hash as identifier; a name whose
        // hash is a served network's identifier does not pass as that network.
        let mut any = on_n("10.0.4.0/24");
        any.networks.clear();
        any.any_network = true;
        let w = ca_key.sign("w", &encode_key(&[5; 32]), any).unwrap();
        table.apply(Change::Cert(w));
        let (served, impostor) = crate::network_id::colliding_names("net-");
        let hash = crate::network_id::derived(&served);
        table.serve_network(hash, &served, vec!["10.0.0.0/16".parse().unwrap()]);
        let mut e = entry("10.0.4.2", 5, &[]);
        e.network = impostor;
        e.network_id = hash;
        table.apply(Change::Put(by("w", e.clone())));
        assert_eq!(table.route(hash, e.ip), None);
        e.network = served;
        table.apply(Change::Put(by("w", e.clone())));
        assert_eq!(table.route(hash, e.ip).map(|r| r.key), Some([5; 32]));
    }

    #[test]
    fn a_certificate_that_expires_takes_its_routes_and_lists_its_key_for_closing() {
        let (ca_key, ca) = CaKey::generate("ca").unwrap();
        let mut table = RouteTable::trusting(ca);
        let mut short = on_n("10.0.1.0/24");
        short.not_after = crate::cert::now_unix() + 60;
        let b = ca_key.sign("b", &encode_key(&[2; 32]), short).unwrap();
        let not_after = b.not_after;
        table.apply(Change::Cert(b));
        table.apply(Change::Put(by("b", entry("10.0.1.2", 2, &["web"]))));
        assert!(table.is_listed(&[2; 32]));
        assert!(table.take_delisted().is_empty());
        assert!(
            table.expire_certs(not_after).is_empty(),
            "valid through its last second"
        );
        assert_eq!(table.expire_certs(not_after + 1), ["b"]);
        assert!(!table.is_listed(&[2; 32]));
        assert_eq!(table.addresses_of(1, "web"), None);
        assert_eq!(table.refused(), 1);
        assert_eq!(table.take_delisted(), [[2; 32]]);
        assert!(table.take_delisted().is_empty());
    }

    /// A table trusting a new CA that certified hosts b (key 2, 10.0.1.0/24) and c (key 3,
    /// 10.0.2.0/24) on "n".
    fn hosts_b_and_c() -> (CaKey, RouteTable) {
        let (ca_key, ca) = CaKey::generate("ca").unwrap();
        let mut table = RouteTable::trusting(ca);
        for (name, host, block) in [("b", 2, "10.0.1.0/24"), ("c", 3, "10.0.2.0/24")] {
            let cert = ca_key
                .sign(name, &encode_key(&[host; 32]), on_n(block))
                .unwrap();
            table.apply(Change::Cert(cert));
        }
        (ca_key, table)
    }

    #[test]
    fn a_revoked_key_loses_its_routes_and_an_older_list_does_not_bring_them_back() {
        let (ca_key, mut table) = hosts_b_and_c();
        table.apply(Change::Put(by("b", entry("10.0.1.2", 2, &[]))));
        table.apply(Change::Put(by("c", entry("10.0.2.2", 3, &[]))));
        assert_eq!(table.len(), 2);
        table.take_delisted();

        let revoke_b = ca_key
            .sign_revocations(2, vec![encode_key(&[2; 32])])
            .unwrap();
        table.apply(Change::Revocations(revoke_b));
        assert_eq!(table.len(), 1);
        assert!(!table.is_listed(&[2; 32]) && table.is_listed(&[3; 32]));
        assert_eq!(table.take_delisted(), [[2; 32]]);
        // An older list (replayed by anyone), a forged one, or a reset: still revoked.
        let older = ca_key.sign_revocations(1, Vec::new()).unwrap();
        table.apply(Change::Revocations(older));
        let (other_ca, _) = CaKey::generate("ca").unwrap();
        let forged = other_ca.sign_revocations(9, Vec::new()).unwrap();
        table.apply(Change::Revocations(forged));
        table.apply(Change::Put(by("b", entry("10.0.1.3", 2, &[]))));
        assert!(!table.is_listed(&[2; 32]));
        let certs = vec![ca_key
            .sign("b", &encode_key(&[2; 32]), on_n("10.0.1.0/24"))
            .unwrap()];
        let entries = vec![by("b", entry("10.0.1.2", 2, &[]))];
        table.apply(Change::Reset {
            certs,
            entries,
            candidates: vec![],
        });
        assert!(!table.is_listed(&[2; 32]));
        // A newer list that lifts it.
        let lifted = ca_key.sign_revocations(3, Vec::new()).unwrap();
        table.apply(Change::Revocations(lifted));
        assert!(table.is_listed(&[2; 32]));
    }

    #[test]
    fn an_endpoint_claimed_by_two_keys_belongs_to_neither_until_one_leaves() {
        let (_, mut table) = hosts_b_and_c();
        let b_endpoint = SocketAddr::from(([192, 0, 2, 2], 4800));
        table.apply(Change::Put(by("b", entry("10.0.1.2", 2, &[]))));
        assert_eq!(table.key_at(b_endpoint), Some([2; 32]));
        // C, certified for its own block, names B's endpoint with its own key.
        let mut squat = entry("10.0.2.2", 3, &[]);
        squat.host.endpoint = b_endpoint;
        table.apply(Change::Put(by("c", squat)));
        assert_eq!(table.key_at(b_endpoint), None);
        table.apply(delete("c", "10.0.2.2"));
        assert_eq!(table.key_at(b_endpoint), Some([2; 32]));
    }

    #[test]
    fn an_entry_counts_with_a_bounded_number_of_names() {
        let mut table = RouteTable::default();
        let many: Vec<String> = (0..100).map(|i| format!("name-{i}")).collect();
        let long = "x".repeat(MAX_NAME_LEN + 1);
        let mut names: Vec<&str> = vec![long.as_str()];
        names.extend(many.iter().map(String::as_str));
        table.apply(Change::Put(anonymous(entry("10.0.0.2", 1, &names))));
        assert_eq!(table.addresses_of(1, &long), None);
        assert!(table.addresses_of(1, "name-0").is_some());
        assert!(table
            .addresses_of(1, &format!("name-{}", MAX_NAMES - 1))
            .is_some());
        assert_eq!(table.addresses_of(1, &format!("name-{MAX_NAMES}")), None);
    }
}
