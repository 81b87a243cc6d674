//! Where Flatnet keeps things in etcd, and how a key is read back.
//!
//! ```text
//! /flatnet/v1/hosts/<host>/cert                 the host's certificate (HostCert, JSON)
//! /flatnet/v1/hosts/<host>/candidates           where else it may be reached (Candidates)
//! /flatnet/v1/entries/<network>/<host>/<ip>    an Entry of the network, by the host serving it
//! /flatnet/v1/revocations/<issuer>              a network CA's RevocationList
//! ```
//!
//! Entries live under their network, so a host watches only the networks it serves; the
//! host's name in the key is what etcd's RBAC binds each host's writes to (one grant per
//! network its certificate names), and what a peer checks the entry against (the host's
//! certificate must grant the address). Certificates, candidates and revocations are few and
//! every host follows them all.

use std::net::IpAddr;

use etcd_client::KeyValue;

use crate::cert::{HostCert, RevocationList};
use crate::lighthouse::{Candidates, Entry, Published};

pub const HOSTS: &str = "/flatnet/v1/hosts/";
pub const ENTRIES: &str = "/flatnet/v1/entries/";
/// Each network CA's revocation list, under the CA's name, put there by the operator (hosts
/// may only read it).
pub const REVOCATIONS: &str = "/flatnet/v1/revocations/";

pub fn entry_key(network: &str, host: &str, ip: IpAddr) -> String {
    format!("{ENTRIES}{network}/{host}/{ip}")
}

/// Every entry of a network.
pub fn network_prefix(network: &str) -> String {
    format!("{ENTRIES}{network}/")
}

/// A host's entries on a network: what its etcd role may write there.
pub fn host_entries_prefix(network: &str, host: &str) -> String {
    format!("{ENTRIES}{network}/{host}/")
}

/// Where a host kept its entries before they moved under their networks: a daemon clears
/// its own once, at start.
pub fn legacy_entries_prefix(host: &str) -> String {
    format!("{HOSTS}{host}/entries/")
}

pub fn cert_key(host: &str) -> String {
    format!("{HOSTS}{host}/cert")
}

pub fn candidates_key(host: &str) -> String {
    format!("{HOSTS}{host}/candidates")
}

/// What a key names.
#[derive(Debug, PartialEq)]
pub enum Key {
    Revocations {
        issuer: String,
    },
    Cert {
        host: String,
    },
    Candidates {
        host: String,
    },
    Entry {
        network: String,
        host: String,
        ip: IpAddr,
    },
}

pub fn parse_key(key: &[u8]) -> Option<Key> {
    let key = std::str::from_utf8(key).ok()?;
    if let Some(issuer) = key.strip_prefix(REVOCATIONS) {
        return Some(Key::Revocations {
            issuer: issuer.to_string(),
        });
    }
    if let Some(rest) = key.strip_prefix(ENTRIES) {
        let mut parts = rest.split('/');
        let (network, host, ip) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || network.is_empty() || host.is_empty() {
            return None;
        }
        return Some(Key::Entry {
            network: network.to_string(),
            host: host.to_string(),
            ip: ip.parse().ok()?,
        });
    }
    let (host, rest) = key.strip_prefix(HOSTS)?.split_once('/')?;
    let host = host.to_string();
    match rest {
        "cert" => Some(Key::Cert { host }),
        "candidates" => Some(Key::Candidates { host }),
        _ => None,
    }
}

pub enum Stored {
    Cert(HostCert),
    Entry(Published),
    Revocations(RevocationList),
    /// A host's candidates, with the host's name.
    Candidates(String, Candidates),
}

/// What a key holds, if its value is what the key names: a value stored under another name
/// or address is ignored (and so is anything unreadable: etcd is written by every host).
pub fn parse_kv(kv: &KeyValue) -> Option<Stored> {
    match parse_key(kv.key())? {
        Key::Cert { host } => {
            let cert: HostCert = serde_json::from_slice(kv.value()).ok()?;
            (cert.name == host).then_some(Stored::Cert(cert))
        }
        Key::Entry { .. } => parse_entry(kv).map(Stored::Entry),
        Key::Candidates { host } => {
            let candidates = serde_json::from_slice(kv.value()).ok()?;
            Some(Stored::Candidates(host, candidates))
        }
        Key::Revocations { issuer } => {
            let list: RevocationList = serde_json::from_slice(kv.value()).ok()?;
            (list.issuer == issuer).then_some(Stored::Revocations(list))
        }
    }
}

pub fn parse_entry(kv: &KeyValue) -> Option<Published> {
    let Key::Entry { network, host, ip } = parse_key(kv.key())? else {
        return None;
    };
    let entry: Entry = serde_json::from_slice(kv.value()).ok()?;
    if (network.as_str(), ip) != (entry.network.as_str(), entry.ip) {
        tracing::warn!(
            "etcd key {} holds an entry for {} {}: ignored",
            String::from_utf8_lossy(kv.key()),
            entry.network,
            entry.ip
        );
        return None;
    }
    Some(Published { host, entry })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_network_host_and_address() {
        let key = entry_key("net-a", "host-a", "10.1.2.3".parse().unwrap());
        assert_eq!(key, "/flatnet/v1/entries/net-a/host-a/10.1.2.3");
        assert!(key.starts_with(&network_prefix("net-a")));
        assert!(key.starts_with(&host_entries_prefix("net-a", "host-a")));
        assert!(!key.starts_with(&network_prefix("net")));
        assert_eq!(
            parse_key(key.as_bytes()),
            Some(Key::Entry {
                network: "net-a".into(),
                host: "host-a".into(),
                ip: "10.1.2.3".parse().unwrap()
            })
        );
        assert_eq!(
            parse_key(cert_key("host-a").as_bytes()),
            Some(Key::Cert {
                host: "host-a".into()
            })
        );
        assert_eq!(
            parse_key(candidates_key("host-a").as_bytes()),
            Some(Key::Candidates {
                host: "host-a".into()
            })
        );
        assert_eq!(
            parse_key(b"/flatnet/v1/revocations/net-ca"),
            Some(Key::Revocations {
                issuer: "net-ca".into()
            })
        );
    }

    #[test]
    fn keys_of_no_known_shape_name_nothing() {
        for key in [
            "/flatnet/v1/entries/net-a/host-a/not-an-ip",
            "/flatnet/v1/entries/net-a/host-a/10.1.2.3/more",
            "/flatnet/v1/entries/net-a//10.1.2.3",
            "/flatnet/v1/entries/net-a/10.1.2.3",
            // The layout before entries moved under their networks.
            "/flatnet/v1/hosts/a/entries/net-a/10.1.2.3",
            "/flatnet/v1/hosts/a/other",
            "/other/a/cert",
        ] {
            assert_eq!(parse_key(key.as_bytes()), None, "{key}");
        }
        assert!(legacy_entries_prefix("a").starts_with(HOSTS));
    }
}
