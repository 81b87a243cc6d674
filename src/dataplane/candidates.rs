//! The candidate endpoints hosts publish (where else than their entries' endpoint they may be
//! reached), as far as they are believed: with a network CA, a host's list counts only for the
//! key its certificate names. The tunnels are given each key's list; and a datagram from an
//! endpoint that only one key lists is taken to be from that key's host (a host behind NAT is
//! first heard from its NAT's mapping).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

use crate::lighthouse::{Candidates, MAX_CANDIDATES};
use crate::tunnel::{decode_key, PublicKey};

/// What is believed of one host: where it may be reached, and whether it relays.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Believed {
    pub endpoints: Vec<SocketAddr>,
    pub relay: bool,
}

#[derive(Default)]
pub struct CandidateBook {
    /// What each host published (a file lighthouse names no hosts: all under "").
    published: HashMap<String, Vec<Candidates>>,
    /// What is believed of each key.
    believed: HashMap<PublicKey, Believed>,
    /// Endpoint -> the key that lists it; `None` when several do.
    owners: HashMap<SocketAddr, Option<PublicKey>>,
    /// Keys whose list changed since [`CandidateBook::take_changed`].
    changed: BTreeSet<PublicKey>,
}

impl CandidateBook {
    /// Replaces what `host` published (an empty list withdraws it).
    pub fn put(&mut self, host: String, candidates: Candidates) {
        if candidates.endpoints.is_empty() {
            self.published.remove(&host);
        } else {
            self.published.insert(host, vec![candidates]);
        }
    }

    /// Replaces everything published.
    pub fn reset(&mut self, all: Vec<(String, Candidates)>) {
        self.published.clear();
        for (host, candidates) in all {
            self.published.entry(host).or_default().push(candidates);
        }
    }

    /// Works out again what is believed; `believes(host, key)` says whether `host` may
    /// publish for `key`.
    pub fn settle(&mut self, believes: impl Fn(&str, &str) -> bool) {
        let mut believed: HashMap<PublicKey, Believed> = HashMap::new();
        for (host, lists) in &self.published {
            for candidates in lists {
                if !believes(host, &candidates.public_key) {
                    continue;
                }
                let Some(key) = decode_key(&candidates.public_key) else {
                    continue;
                };
                let host = believed.entry(key).or_default();
                host.relay |= candidates.relay;
                let endpoints = &mut host.endpoints;
                for &endpoint in &candidates.endpoints {
                    let usable = !endpoint.ip().is_unspecified() && endpoint.port() != 0;
                    if usable && endpoints.len() < MAX_CANDIDATES && !endpoints.contains(&endpoint)
                    {
                        endpoints.push(endpoint);
                    }
                }
            }
        }
        believed.retain(|_, host| !host.endpoints.is_empty());
        let keys: BTreeSet<PublicKey> = believed
            .keys()
            .chain(self.believed.keys())
            .copied()
            .collect();
        for key in keys {
            if believed.get(&key) != self.believed.get(&key) {
                self.changed.insert(key);
            }
        }
        self.owners.clear();
        for (key, host) in &believed {
            for &endpoint in &host.endpoints {
                self.owners
                    .entry(endpoint)
                    .and_modify(|owner| *owner = None)
                    .or_insert(Some(*key));
            }
        }
        self.believed = believed;
    }

    /// The one key that lists `endpoint`, if only one does.
    pub fn owner(&self, endpoint: SocketAddr) -> Option<PublicKey> {
        self.owners.get(&endpoint).copied().flatten()
    }

    /// The keys whose lists changed since the last call, with what is believed now (no
    /// endpoints: nothing).
    pub fn take_changed(&mut self) -> Vec<(PublicKey, Believed)> {
        std::mem::take(&mut self.changed)
            .into_iter()
            .map(|key| (key, self.believed.get(&key).cloned().unwrap_or_default()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::encode_key;

    fn list(key: u8, endpoints: &[&str]) -> Candidates {
        Candidates {
            public_key: encode_key(&[key; 32]),
            endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
            relay: false,
        }
    }

    fn ep(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn reach(endpoints: &[&str], relay: bool) -> Believed {
        Believed {
            endpoints: endpoints.iter().map(|e| ep(e)).collect(),
            relay,
        }
    }

    #[test]
    fn only_believed_lists_count_and_each_change_is_reported_once() {
        let mut book = CandidateBook::default();
        book.put("a".into(), list(1, &["198.51.100.1:4800", "0.0.0.0:4800"]));
        book.put("m".into(), list(2, &["198.51.100.2:4800"]));
        // Host "m" holds no certificate for key 2.
        let believes = |host: &str, key: &str| host == "a" && key == encode_key(&[1; 32]);
        book.settle(believes);
        assert_eq!(
            book.take_changed(),
            [([1; 32], reach(&["198.51.100.1:4800"], false))],
            "an unspecified address is no candidate"
        );
        assert!(book.take_changed().is_empty());
        assert_eq!(book.owner(ep("198.51.100.1:4800")), Some([1; 32]));
        assert_eq!(book.owner(ep("198.51.100.2:4800")), None);

        book.put("a".into(), list(1, &[]));
        book.settle(believes);
        assert_eq!(book.take_changed(), [([1; 32], reach(&[], false))]);
        assert_eq!(book.owner(ep("198.51.100.1:4800")), None);
    }

    #[test]
    fn an_endpoint_two_keys_list_is_nobody_s_and_lists_are_bounded() {
        let mut book = CandidateBook::default();
        let many: Vec<String> = (1..=20).map(|i| format!("198.51.100.{i}:4800")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        book.reset(vec![
            (String::new(), list(1, &many)),
            (String::new(), list(2, &["198.51.100.1:4800"])),
        ]);
        book.settle(|_, _| true);
        let changed = book.take_changed();
        assert_eq!(changed[0].1.endpoints.len(), MAX_CANDIDATES);
        assert_eq!(book.owner(ep("198.51.100.1:4800")), None);
        assert_eq!(book.owner(ep("198.51.100.2:4800")), Some([1; 32]));
    }

    #[test]
    fn becoming_a_relay_is_a_change_and_a_relay_without_endpoints_is_nothing() {
        let mut book = CandidateBook::default();
        book.put("r".into(), list(3, &["192.0.2.10:4800"]));
        book.settle(|_, _| true);
        book.take_changed();
        let mut relay = list(3, &["192.0.2.10:4800"]);
        relay.relay = true;
        book.put("r".into(), relay.clone());
        book.settle(|_, _| true);
        assert_eq!(
            book.take_changed(),
            [([3; 32], reach(&["192.0.2.10:4800"], true))]
        );
        relay.endpoints.clear();
        book.put("r".into(), relay);
        book.settle(|_, _| true);
        assert_eq!(book.take_changed(), [([3; 32], reach(&[], false))]);
    }
}
