//! Host certificates: the network's trust root. A network CA (an Ed25519 key that stays on the
//! operator's machine, never on a host) signs, for each host, its name, its Noise public key,
//! the address blocks it may serve and the networks it may serve them on, each with the
//! identifier the CA allotted it. Hosts carry only the CA's public certificate; a peer accepts a
//! lighthouse entry only if the certificate of the host that published it is the CA's, names
//! the entry's key, grants the entry's address and names the entry's network with the
//! entry's identifier. So a host that is taken over can claim nothing beyond its own blocks on
//! its own networks, whatever it writes to the lighthouse.
//!
//! Both kinds of certificate are small JSON documents; the signature covers the certificate's
//! fields as serialised in their fixed order.

use std::net::IpAddr;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::network_id::{self, NetworkId};
use crate::state::check_name;
use crate::tunnel::decode_key;

/// Version 2 binds networks; a version 1 certificate (blocks in any network) is refused.
const VERSION: u32 = 2;

/// The CA's public half: the one file every host of the network shares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaCert {
    pub version: u32,
    pub name: String,
    /// Ed25519 public key, base64.
    pub public_key: String,
}

/// The CAs a host trusts: usually one; two while a CA is being replaced (hosts signed by
/// either are believed). The file is one CA certificate or a JSON array of them, with
/// distinct names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustBundle(Vec<CaCert>);

impl TrustBundle {
    pub fn new(cas: Vec<CaCert>) -> Result<Self> {
        if cas.is_empty() {
            return Err(Error::InvalidConfig(
                "a trust bundle holds at least one CA".into(),
            ));
        }
        let mut names: Vec<&str> = cas.iter().map(|ca| ca.name.as_str()).collect();
        names.sort_unstable();
        if let Some(twice) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::InvalidConfig(format!(
                "two CAs named {:?} in one trust bundle: a new CA needs a name of its own",
                twice[0]
            )));
        }
        Ok(TrustBundle(cas))
    }

    /// Reads a CA certificate or a bundle of them.
    pub fn load(path: &Path) -> Result<Self> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(CaCert),
            Many(Vec<CaCert>),
        }
        let cas = match load::<OneOrMany>(path)? {
            OneOrMany::One(ca) => vec![ca],
            OneOrMany::Many(cas) => cas,
        };
        Self::new(cas).map_err(|e| Error::InvalidConfig(format!("{}: {e}", path.display())))
    }

    pub fn cas(&self) -> &[CaCert] {
        &self.0
    }

    fn issuer(&self, name: &str) -> std::result::Result<&CaCert, String> {
        self.0.iter().find(|ca| ca.name == name).ok_or_else(|| {
            let trusted: Vec<&str> = self.0.iter().map(|ca| ca.name.as_str()).collect();
            format!("issued by {name:?}, not by {}", trusted.join(" or "))
        })
    }

    /// Whether a trusted CA signed `cert` and it is valid at `now`.
    pub fn verify(&self, cert: &HostCert, now: u64) -> std::result::Result<(), String> {
        cert.verify(self.issuer(&cert.issuer)?, now)
    }

    /// Whether a trusted CA signed `list`.
    pub fn verify_revocations(&self, list: &RevocationList) -> std::result::Result<(), String> {
        list.verify(self.issuer(&list.issuer)?)
    }
}

impl From<CaCert> for TrustBundle {
    fn from(ca: CaCert) -> Self {
        TrustBundle(vec![ca])
    }
}

/// The CA's secret half; only `flatnet-cert` reads it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaKey {
    pub version: u32,
    pub name: String,
    /// Ed25519 secret key, base64.
    pub secret_key: String,
}

/// What the CA grants one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostCert {
    pub version: u32,
    /// The host's name: its etcd user and the prefix its entries live under.
    pub name: String,
    /// The host's Noise (X25519) public key, base64.
    pub public_key: String,
    /// The addresses the host may serve, on the networks below.
    pub blocks: Vec<IpNet>,
    /// The networks the host may serve, with the identifiers the CA allotted them (none in a
    /// version 1 certificate, which is read only to be refused).
    #[serde(default)]
    pub networks: Vec<CertNetwork>,
    /// Every network besides (only if the operator asked for it): a network not named above
    /// then has its name's hash as identifier, and no other network's name.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub any_network: bool,
    /// Unix seconds after which the certificate is void.
    pub not_after: u64,
    /// The CA's name.
    pub issuer: String,
    /// Ed25519 over the fields above, base64.
    pub signature: String,
}

/// A network a certificate names: its name and the identifier its packets carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertNetwork {
    pub name: String,
    pub id: NetworkId,
}

/// What the CA grants a host, besides its name and key.
#[derive(Debug, Clone)]
pub struct Grant {
    pub blocks: Vec<IpNet>,
    pub networks: Vec<CertNetwork>,
    pub any_network: bool,
    pub not_after: u64,
}

/// The signed part of a host certificate, in its fixed order.
#[derive(Serialize)]
struct Signed<'a> {
    version: u32,
    name: &'a str,
    public_key: &'a str,
    blocks: &'a [IpNet],
    networks: &'a [CertNetwork],
    any_network: bool,
    not_after: u64,
    issuer: &'a str,
}

impl CaCert {
    /// Whether this CA, named `issuer`, made `signature` (base64) over `bytes`.
    fn verify(
        &self,
        issuer: &str,
        bytes: &[u8],
        signature: &str,
    ) -> std::result::Result<(), String> {
        if issuer != self.name {
            return Err(format!("issued by {issuer:?}, not by {:?}", self.name));
        }
        let key = BASE64
            .decode(&self.public_key)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .and_then(|b| VerifyingKey::from_bytes(&b).ok())
            .ok_or("the CA certificate's key is not an Ed25519 key")?;
        let signature = BASE64
            .decode(signature)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .map(|b| Signature::from_bytes(&b))
            .ok_or("the signature is not 64 bytes of base64")?;
        key.verify_strict(bytes, &signature)
            .map_err(|_| "the signature does not verify".to_string())
    }
}

/// The host keys a CA has revoked: their certificates are void whatever their expiry. The CA
/// signs a new list, with a higher serial, for each revocation; it travels through the
/// lighthouse, and a daemon never goes back to a list with a lower serial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationList {
    pub version: u32,
    pub issuer: String,
    pub serial: u64,
    /// Host public keys (base64), sorted.
    pub revoked: Vec<String>,
    pub signature: String,
}

#[derive(Serialize)]
struct SignedRevocations<'a> {
    version: u32,
    issuer: &'a str,
    serial: u64,
    revoked: &'a [String],
}

impl RevocationList {
    fn signed_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&SignedRevocations {
            version: self.version,
            issuer: &self.issuer,
            serial: self.serial,
            revoked: &self.revoked,
        })
        .expect("revocation lists serialise")
    }

    /// Whether `ca` signed this list.
    pub fn verify(&self, ca: &CaCert) -> std::result::Result<(), String> {
        if self.version != 1 {
            return Err(format!("revocation list version {} is not 1", self.version));
        }
        ca.verify(&self.issuer, &self.signed_bytes(), &self.signature)
    }

    pub fn revokes(&self, public_key: &str) -> bool {
        self.revoked
            .binary_search_by(|k| k.as_str().cmp(public_key))
            .is_ok()
    }
}

impl CaKey {
    /// Signs the list of revoked host keys under `serial`.
    pub fn sign_revocations(
        &self,
        serial: u64,
        mut revoked: Vec<String>,
    ) -> Result<RevocationList> {
        revoked.sort();
        revoked.dedup();
        let mut list = RevocationList {
            version: 1,
            issuer: self.name.clone(),
            serial,
            revoked,
            signature: String::new(),
        };
        let signature = self.signing_key()?.sign(&list.signed_bytes());
        list.signature = BASE64.encode(signature.to_bytes());
        Ok(list)
    }

    /// A new CA key pair.
    pub fn generate(name: &str) -> Result<(CaKey, CaCert)> {
        check_name("CA name", name, 64).map_err(Error::InvalidRequest)?;
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| Error::crypto("reading randomness", e))?;
        let signing = SigningKey::from_bytes(&secret);
        let key = CaKey {
            version: VERSION,
            name: name.to_string(),
            secret_key: BASE64.encode(secret),
        };
        let cert = CaCert {
            version: VERSION,
            name: name.to_string(),
            public_key: BASE64.encode(signing.verifying_key().as_bytes()),
        };
        Ok((key, cert))
    }

    fn signing_key(&self) -> Result<SigningKey> {
        let bytes: [u8; 32] = BASE64
            .decode(&self.secret_key)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Error::InvalidConfig("the CA key is not 32 bytes of base64".into()))?;
        Ok(SigningKey::from_bytes(&bytes))
    }

    /// Grants the host `name` whose Noise key is `public_key` what `grant` says.
    pub fn sign(&self, name: &str, public_key: &str, grant: Grant) -> Result<HostCert> {
        check_name("host name", name, 64).map_err(Error::InvalidRequest)?;
        if decode_key(public_key).is_none() {
            return Err(Error::InvalidRequest(format!(
                "{public_key:?} is not a host's public key (32 bytes of base64, as `flatnetd key` prints)"
            )));
        }
        if grant.blocks.is_empty() {
            return Err(Error::InvalidRequest(
                "a host certificate grants at least one block".into(),
            ));
        }
        if grant.networks.is_empty() && !grant.any_network {
            return Err(Error::InvalidRequest(
                "a host certificate names at least one network (or any network, if asked)".into(),
            ));
        }
        for network in &grant.networks {
            check_name("network name", &network.name, 64).map_err(Error::InvalidRequest)?;
            if network.id == 0 {
                return Err(Error::InvalidRequest(format!(
                    "network {} has no identifier",
                    network.name
                )));
            }
        }
        let mut cert = HostCert {
            version: VERSION,
            name: name.to_string(),
            public_key: public_key.to_string(),
            blocks: grant.blocks.iter().map(IpNet::trunc).collect(),
            networks: grant.networks,
            any_network: grant.any_network,
            not_after: grant.not_after,
            issuer: self.name.clone(),
            signature: String::new(),
        };
        let signature = self.signing_key()?.sign(&cert.signed_bytes());
        cert.signature = BASE64.encode(signature.to_bytes());
        Ok(cert)
    }
}

impl HostCert {
    fn signed_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&Signed {
            version: self.version,
            name: &self.name,
            public_key: &self.public_key,
            blocks: &self.blocks,
            networks: &self.networks,
            any_network: self.any_network,
            not_after: self.not_after,
            issuer: &self.issuer,
        })
        .expect("certificates serialise")
    }

    /// Whether `ca` signed this certificate and it is still valid at `now` (Unix seconds).
    pub fn verify(&self, ca: &CaCert, now: u64) -> std::result::Result<(), String> {
        if self.version != VERSION {
            return Err(format!(
                "certificate version {} is not {VERSION}: sign it again, naming its networks \
                 (flatnet-cert sign --network)",
                self.version
            ));
        }
        ca.verify(&self.issuer, &self.signed_bytes(), &self.signature)?;
        if now > self.not_after {
            return Err(format!("expired at {}", self.not_after));
        }
        Ok(())
    }

    /// Whether the certificate lets its host serve `ip`.
    pub fn grants(&self, ip: IpAddr) -> bool {
        self.blocks.iter().any(|b| b.contains(&ip))
    }

    /// The identifier of `network` if the certificate lets its host serve it: the one the CA
    /// allotted, or for a network it does not name, with `any_network`, the name's hash.
    pub fn network_id(&self, network: &str) -> Option<NetworkId> {
        match self.networks.iter().find(|n| n.name == network) {
            Some(named) => Some(named.id),
            None if self.any_network => Some(network_id::derived(network)),
            None => None,
        }
    }

    /// Whether an entry for `ip` on `network` tagged `id` is one this certificate vouches for.
    pub fn vouches_for(&self, network: &str, id: NetworkId, ip: IpAddr) -> bool {
        self.grants(ip) && self.network_id(network) == Some(id)
    }

    /// The parts of `subnet` the certificate grants.
    pub fn blocks_in(&self, subnet: IpNet) -> Vec<IpNet> {
        self.blocks
            .iter()
            .filter_map(|b| {
                if subnet.contains(b) {
                    Some(*b)
                } else if b.contains(&subnet) {
                    Some(subnet)
                } else {
                    None
                }
            })
            .collect()
    }
}

/// How long before its expiry a host's own certificate is warned about (status, check, log).
pub const EXPIRY_WARNING_S: u64 = 14 * 86_400;

/// A warning for a host certificate void after `not_after`, if it expires within
/// [`EXPIRY_WARNING_S`] of `now` or has expired.
pub fn expiry_warning(not_after: u64, now: u64) -> Option<String> {
    if now > not_after {
        return Some(format!(
            "this host's certificate expired {} s ago: peers drop it; sign a new one",
            now - not_after
        ));
    }
    let left = not_after - now;
    (left < EXPIRY_WARNING_S).then(|| {
        format!(
            "this host's certificate expires in {} (at {not_after}): sign a new one before \
             then, or its peers drop it",
            human_duration(left)
        )
    })
}

fn human_duration(seconds: u64) -> String {
    match seconds {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 2 * 3_600 => format!("{} hours", s / 3_600),
        s => format!("{s} s"),
    }
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The networks a CA has named, with their identifiers: kept beside the CA key, so that every
/// certificate it signs gives a name the same identifier and no two names one.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NetworkRegistry(std::collections::BTreeMap<String, NetworkId>);

impl NetworkRegistry {
    /// The network's identifier: the one it has, or the first candidate no other name holds.
    pub fn allot(&mut self, name: &str) -> Result<CertNetwork> {
        check_name("network name", name, 64).map_err(Error::InvalidRequest)?;
        if let Some(&id) = self.0.get(name) {
            return Ok(CertNetwork {
                name: name.to_string(),
                id,
            });
        }
        let taken: std::collections::HashSet<NetworkId> = self.0.values().copied().collect();
        let id = network_id::candidates(name)
            .take(network_id::MAX_PROBES)
            .find(|id| !taken.contains(id))
            .ok_or_else(|| {
                Error::InvalidRequest(format!("no free identifier for network {name}"))
            })?;
        self.0.insert(name.to_string(), id);
        Ok(CertNetwork {
            name: name.to_string(),
            id,
        })
    }
}

/// Reads a JSON certificate (or key) file.
pub fn load<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes =
        std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::InvalidConfig(format!("{}: {e}", path.display())))
}

/// This host's certificate, checked against the trusted CAs and against the host's own key.
pub fn load_host_cert(path: &Path, trust: &TrustBundle, own_key: Option<&str>) -> Result<HostCert> {
    let cert: HostCert = load(path)?;
    trust
        .verify(&cert, now_unix())
        .map_err(|e| Error::InvalidConfig(format!("host certificate {}: {e}", path.display())))?;
    if let Some(own) = own_key.filter(|own| *own != cert.public_key) {
        return Err(Error::InvalidConfig(format!(
            "host certificate {} is for key {}, but this host's key is {own}",
            path.display(),
            cert.public_key
        )));
    }
    Ok(cert)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::encode_key;

    fn host_key(n: u8) -> String {
        encode_key(&[n; 32])
    }

    fn grant(blocks: &[&str], networks: &[(&str, NetworkId)], not_after: u64) -> Grant {
        Grant {
            blocks: blocks.iter().map(|b| b.parse().unwrap()).collect(),
            networks: networks
                .iter()
                .map(|&(name, id)| CertNetwork {
                    name: name.into(),
                    id,
                })
                .collect(),
            any_network: false,
            not_after,
        }
    }

    #[test]
    fn a_signed_certificate_verifies_and_grants_its_blocks_on_its_networks_only() {
        let (ca_key, ca) = CaKey::generate("net-ca").unwrap();
        let block: IpNet = "198.51.100.64/26".parse().unwrap();
        let cert = ca_key
            .sign(
                "host-a",
                &host_key(1),
                grant(&["198.51.100.64/26"], &[("web", 7)], u64::MAX),
            )
            .unwrap();
        assert_eq!(cert.verify(&ca, now_unix()), Ok(()));
        assert!(cert.grants("198.51.100.70".parse().unwrap()));
        assert!(!cert.grants("198.51.100.2".parse().unwrap()));
        let subnet = "198.51.100.0/24".parse().unwrap();
        assert_eq!(cert.blocks_in(subnet), [block]);
        assert!(cert.blocks_in("203.0.113.0/24".parse().unwrap()).is_empty());
        let inside = "198.51.100.70".parse().unwrap();
        assert!(cert.vouches_for("web", 7, inside));
        assert!(!cert.vouches_for("web", 8, inside), "another identifier");
        assert!(!cert.vouches_for("db", 7, inside), "another network");
        assert_eq!(cert.network_id("db"), None);
        // JSON round trip keeps it valid.
        let text = serde_json::to_string(&cert).unwrap();
        let back: HostCert = serde_json::from_str(&text).unwrap();
        assert_eq!(back.verify(&ca, now_unix()), Ok(()));
    }

    #[test]
    fn any_network_is_only_what_the_operator_asks_and_then_only_by_hash() {
        let (ca_key, _) = CaKey::generate("net-ca").unwrap();
        let mut wide = grant(&["10.0.0.0/24"], &[("web", 7)], u64::MAX);
        wide.any_network = true;
        let cert = ca_key.sign("host-a", &host_key(1), wide).unwrap();
        assert_eq!(cert.network_id("web"), Some(7));
        assert_eq!(cert.network_id("db"), Some(network_id::derived("db")));
        let ip = "10.0.0.9".parse().unwrap();
        assert!(!cert.vouches_for("db", 7, ip), "a chosen identifier");
    }

    #[test]
    fn any_change_or_another_ca_breaks_the_signature() {
        let (ca_key, ca) = CaKey::generate("net-ca").unwrap();
        let cert = ca_key
            .sign(
                "host-a",
                &host_key(1),
                grant(&["10.0.0.0/24"], &[("web", 7)], u64::MAX),
            )
            .unwrap();
        let mut wider = cert.clone();
        wider.blocks = vec!["10.0.0.0/16".parse().unwrap()];
        let mut more_networks = cert.clone();
        more_networks.networks.push(CertNetwork {
            name: "db".into(),
            id: 9,
        });
        let mut any = cert.clone();
        any.any_network = true;
        for forged in [wider, more_networks, any] {
            assert!(forged
                .verify(&ca, 0)
                .unwrap_err()
                .contains("does not verify"));
        }
        let mut other_key = cert.clone();
        other_key.public_key = host_key(2);
        assert!(other_key.verify(&ca, 0).is_err());
        let (_, impostor) = CaKey::generate("net-ca").unwrap();
        assert!(cert.verify(&impostor, 0).is_err());
        let expired = ca_key
            .sign(
                "host-a",
                &host_key(1),
                grant(&["10.0.0.0/24"], &[("web", 7)], 100),
            )
            .unwrap();
        assert!(expired.verify(&ca, 101).unwrap_err().contains("expired"));
        let mut old = cert;
        old.version = 1;
        assert!(old.verify(&ca, 0).unwrap_err().contains("--network"));
    }

    #[test]
    fn signing_refuses_what_is_not_a_host() {
        let (ca_key, _) = CaKey::generate("net-ca").unwrap();
        let ok = || grant(&["10.0.0.0/24"], &[("web", 7)], 1);
        assert!(ca_key.sign("host a", &host_key(1), ok()).is_err());
        assert!(ca_key.sign("host-a", "not-a-key", ok()).is_err());
        let no_block = grant(&[], &[("web", 7)], 1);
        assert!(ca_key.sign("host-a", &host_key(1), no_block).is_err());
        let no_network = grant(&["10.0.0.0/24"], &[], 1);
        assert!(ca_key.sign("host-a", &host_key(1), no_network).is_err());
        let bad_name = grant(&["10.0.0.0/24"], &[("a/b", 7)], 1);
        assert!(ca_key.sign("host-a", &host_key(1), bad_name).is_err());
    }

    #[test]
    fn a_revocation_list_verifies_only_as_signed_and_only_for_its_ca() {
        let (ca_key, ca) = CaKey::generate("net-ca").unwrap();
        let list = ca_key
            .sign_revocations(3, vec![host_key(2), host_key(1), host_key(2)])
            .unwrap();
        assert_eq!(list.verify(&ca), Ok(()));
        assert_eq!(list.revoked.len(), 2, "sorted, once each");
        assert!(list.revokes(&host_key(1)) && list.revokes(&host_key(2)));
        assert!(!list.revokes(&host_key(3)));
        let mut rolled_back = list.clone();
        rolled_back.serial = 9;
        let mut emptied = list.clone();
        emptied.revoked.clear();
        for forged in [rolled_back, emptied] {
            assert!(forged.verify(&ca).unwrap_err().contains("does not verify"));
        }
        let (_, other) = CaKey::generate("net-ca").unwrap();
        assert!(list.verify(&other).is_err());
    }

    #[test]
    fn a_bundle_trusts_each_of_its_cas_and_no_other() {
        let (old_key, old) = CaKey::generate("net-ca").unwrap();
        let (new_key, new) = CaKey::generate("net-ca-2").unwrap();
        let (_, same_name) = CaKey::generate("net-ca").unwrap();
        assert!(TrustBundle::new(vec![old.clone(), same_name]).is_err());
        assert!(TrustBundle::new(Vec::new()).is_err());
        let both = TrustBundle::new(vec![old.clone(), new]).unwrap();
        let grant = || grant(&["10.0.0.0/24"], &[("web", 7)], u64::MAX);
        let by_old = old_key.sign("a", &host_key(1), grant()).unwrap();
        let by_new = new_key.sign("b", &host_key(2), grant()).unwrap();
        assert_eq!(both.verify(&by_old, 0), Ok(()));
        assert_eq!(both.verify(&by_new, 0), Ok(()));
        let only_old = TrustBundle::from(old);
        assert!(only_old
            .verify(&by_new, 0)
            .unwrap_err()
            .contains("net-ca-2"));
        let list = new_key.sign_revocations(1, vec![host_key(1)]).unwrap();
        assert_eq!(both.verify_revocations(&list), Ok(()));
        assert!(only_old.verify_revocations(&list).is_err());
        // A file holds one CA or an array of them.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.crt");
        std::fs::write(&file, serde_json::to_vec(both.cas()).unwrap()).unwrap();
        assert_eq!(TrustBundle::load(&file).unwrap(), both);
        std::fs::write(&file, serde_json::to_vec(&both.cas()[0]).unwrap()).unwrap();
        assert_eq!(TrustBundle::load(&file).unwrap(), only_old);
    }

    #[test]
    fn expiry_is_warned_about_two_weeks_ahead_and_after() {
        let now = 1_000_000_000;
        assert_eq!(expiry_warning(now + EXPIRY_WARNING_S, now), None);
        let soon = expiry_warning(now + 3 * 86_400, now).unwrap();
        assert!(soon.contains("expires in 3 days"), "{soon}");
        let hours = expiry_warning(now + 5 * 3_600, now).unwrap();
        assert!(hours.contains("5 hours"), "{hours}");
        let gone = expiry_warning(now - 10, now).unwrap();
        assert!(gone.contains("expired 10 s ago"), "{gone}");
    }

    #[test]
    fn the_registry_gives_each_name_one_identifier_and_no_two_names_one() {
        let (a, b) = network_id::colliding_names("net-");
        let mut registry = NetworkRegistry::default();
        let first = registry.allot(&a).unwrap();
        assert_eq!(first.id, network_id::derived(&a));
        let second = registry.allot(&b).unwrap();
        assert_ne!(second.id, first.id);
        assert_eq!(registry.allot(&a).unwrap(), first);
        let text = serde_json::to_string(&registry).unwrap();
        let back: NetworkRegistry = serde_json::from_str(&text).unwrap();
        assert_eq!(back, registry);
        assert!(registry.allot("not/a/name").is_err());
    }
}
