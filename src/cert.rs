//! Host certificates: the network's trust root. A network CA (an Ed25519 key that stays on the
//! operator's machine, never on a host) signs, for each host, its name, its Noise public key and
//! the address blocks it may serve. Hosts carry only the CA's public certificate; a peer accepts
//! a lighthouse entry only if the certificate of the host that published it is the CA's, names
//! the entry's key, and grants the entry's address. So a host that is taken over can claim
//! nothing beyond its own blocks, whatever it writes to the lighthouse.
//!
//! Both kinds of certificate are small JSON documents; the signature covers the certificate's
//! fields as serialised in their fixed order.

use std::net::Ipv4Addr;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::state::check_name;
use crate::tunnel::decode_key;

const VERSION: u32 = 1;

/// The CA's public half: the one file every host of the network shares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaCert {
    pub version: u32,
    pub name: String,
    /// Ed25519 public key, base64.
    pub public_key: String,
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
    /// The addresses the host may serve, in any network whose subnet contains them.
    pub blocks: Vec<Ipv4Net>,
    /// Unix seconds after which the certificate is void.
    pub not_after: u64,
    /// The CA's name.
    pub issuer: String,
    /// Ed25519 over the fields above, base64.
    pub signature: String,
}

/// The signed part of a host certificate, in its fixed order.
#[derive(Serialize)]
struct Signed<'a> {
    version: u32,
    name: &'a str,
    public_key: &'a str,
    blocks: &'a [Ipv4Net],
    not_after: u64,
    issuer: &'a str,
}

impl CaKey {
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

    /// Grants `blocks` to the host `name` whose Noise key is `public_key`, until `not_after`.
    pub fn sign(
        &self,
        name: &str,
        public_key: &str,
        blocks: Vec<Ipv4Net>,
        not_after: u64,
    ) -> Result<HostCert> {
        check_name("host name", name, 64).map_err(Error::InvalidRequest)?;
        if decode_key(public_key).is_none() {
            return Err(Error::InvalidRequest(format!(
                "{public_key:?} is not a host's public key (32 bytes of base64, as `flatnetd key` prints)"
            )));
        }
        if blocks.is_empty() {
            return Err(Error::InvalidRequest(
                "a host certificate grants at least one block".into(),
            ));
        }
        let blocks: Vec<Ipv4Net> = blocks.iter().map(Ipv4Net::trunc).collect();
        let mut cert = HostCert {
            version: VERSION,
            name: name.to_string(),
            public_key: public_key.to_string(),
            blocks,
            not_after,
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
            not_after: self.not_after,
            issuer: &self.issuer,
        })
        .expect("certificates serialise")
    }

    /// Whether `ca` signed this certificate and it is still valid at `now` (Unix seconds).
    pub fn verify(&self, ca: &CaCert, now: u64) -> std::result::Result<(), String> {
        if self.version != VERSION {
            return Err(format!(
                "certificate version {} is not {VERSION}",
                self.version
            ));
        }
        if self.issuer != ca.name {
            return Err(format!("issued by {:?}, not by {:?}", self.issuer, ca.name));
        }
        let key = BASE64
            .decode(&ca.public_key)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .and_then(|b| VerifyingKey::from_bytes(&b).ok())
            .ok_or("the CA certificate's key is not an Ed25519 key")?;
        let signature = BASE64
            .decode(&self.signature)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .map(|b| Signature::from_bytes(&b))
            .ok_or("the signature is not 64 bytes of base64")?;
        key.verify_strict(&self.signed_bytes(), &signature)
            .map_err(|_| "the signature does not verify".to_string())?;
        if now > self.not_after {
            return Err(format!("expired at {}", self.not_after));
        }
        Ok(())
    }

    /// Whether the certificate lets its host serve `ip`.
    pub fn grants(&self, ip: Ipv4Addr) -> bool {
        self.blocks.iter().any(|b| b.contains(&ip))
    }

    /// The parts of `subnet` the certificate grants.
    pub fn blocks_in(&self, subnet: Ipv4Net) -> Vec<Ipv4Net> {
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

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads a JSON certificate (or key) file.
pub fn load<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes =
        std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::InvalidConfig(format!("{}: {e}", path.display())))
}

/// This host's certificate, checked against the CA and against the host's own key.
pub fn load_host_cert(path: &Path, ca: &CaCert, own_key: Option<&str>) -> Result<HostCert> {
    let cert: HostCert = load(path)?;
    cert.verify(ca, now_unix())
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

    #[test]
    fn a_signed_certificate_verifies_and_grants_its_blocks_only() {
        let (ca_key, ca) = CaKey::generate("net-ca").unwrap();
        let block: Ipv4Net = "198.51.100.64/26".parse().unwrap();
        let cert = ca_key
            .sign("host-a", &host_key(1), vec![block], u64::MAX)
            .unwrap();
        assert_eq!(cert.verify(&ca, now_unix()), Ok(()));
        assert!(cert.grants("198.51.100.70".parse().unwrap()));
        assert!(!cert.grants("198.51.100.2".parse().unwrap()));
        let subnet = "198.51.100.0/24".parse().unwrap();
        assert_eq!(cert.blocks_in(subnet), [block]);
        assert!(cert.blocks_in("203.0.113.0/24".parse().unwrap()).is_empty());
        // JSON round trip keeps it valid.
        let text = serde_json::to_string(&cert).unwrap();
        let back: HostCert = serde_json::from_str(&text).unwrap();
        assert_eq!(back.verify(&ca, now_unix()), Ok(()));
    }

    #[test]
    fn any_change_or_another_ca_breaks_the_signature() {
        let (ca_key, ca) = CaKey::generate("net-ca").unwrap();
        let cert = ca_key
            .sign(
                "host-a",
                &host_key(1),
                vec!["10.0.0.0/24".parse().unwrap()],
                u64::MAX,
            )
            .unwrap();
        let mut wider = cert.clone();
        wider.blocks = vec!["10.0.0.0/16".parse().unwrap()];
        assert!(wider
            .verify(&ca, 0)
            .unwrap_err()
            .contains("does not verify"));
        let mut other_key = cert.clone();
        other_key.public_key = host_key(2);
        assert!(other_key.verify(&ca, 0).is_err());
        let (_, impostor) = CaKey::generate("net-ca").unwrap();
        assert!(cert.verify(&impostor, 0).is_err());
        let expired = ca_key
            .sign(
                "host-a",
                &host_key(1),
                vec!["10.0.0.0/24".parse().unwrap()],
                100,
            )
            .unwrap();
        assert!(expired.verify(&ca, 101).unwrap_err().contains("expired"));
    }

    #[test]
    fn signing_refuses_what_is_not_a_host() {
        let (ca_key, _) = CaKey::generate("net-ca").unwrap();
        let block = vec!["10.0.0.0/24".parse().unwrap()];
        assert!(ca_key
            .sign("host a", &host_key(1), block.clone(), 1)
            .is_err());
        assert!(ca_key.sign("host-a", "not-a-key", block, 1).is_err());
        assert!(ca_key.sign("host-a", &host_key(1), Vec::new(), 1).is_err());
    }
}
