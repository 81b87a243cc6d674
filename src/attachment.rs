//! Attachment records: a container's membership of a network, as written on disk by the
//! plugins (last in an attach, first to go in a detach) and read by the data plane to know
//! which TUN devices to serve. The record is the source of truth for both.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};
use crate::netns::NetnsId;
use crate::network_id::{self, NetworkId};
use crate::portmap::{PortMapping, Protocol};
use crate::state::{
    check_name, create_private_dir, list_dir, read_if_exists, write_atomic, NetworkDirs, StateDir,
};

pub const RECORD_VERSION: u32 = 1;

/// A container's membership of a network, as recorded on disk and reported to the runtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub version: u32,
    pub network: String,
    /// The network's identifier in the lighthouse (0 in a record of an older Flatnet: see
    /// [`Attachment::wire_network_id`]).
    #[serde(default)]
    pub network_id: NetworkId,
    pub container_id: String,
    pub ifname: String,
    pub netns: PathBuf,
    /// The container's addresses, one per subnet of the network (IPv4 first), each with its
    /// subnet's prefix length. A record of an IPv4-only Flatnet has one `address`.
    #[serde(alias = "address", deserialize_with = "one_or_more")]
    pub addresses: Vec<IpNet>,
    /// The subnets' gateways, in the same order (`gateway` in an older record).
    #[serde(alias = "gateway", deserialize_with = "one_or_more")]
    pub gateways: Vec<IpAddr>,
    /// TUN devices have no MAC; runtimes insist on one, so report a stable, locally
    /// administered one derived from the address.
    pub mac: String,
    pub mtu: u32,
    /// DNS names, normalised (lower case).
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// Whether the container has a default route through the gateway (not on `--internal`).
    #[serde(default)]
    pub egress: bool,
    /// Which namespace `netns` named at attach time: a path can be reused by another
    /// container's namespace once this one is gone, and must not be served as this one.
    #[serde(default)]
    pub netns_id: Option<NetnsId>,
    /// The user whose rootless container this is (it came through flatnetd's user socket):
    /// only they may detach it or see it. `None`: root's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<u32>,
}

impl Attachment {
    /// The identifier the container's packets carry on the wire.
    pub fn wire_network_id(&self) -> NetworkId {
        network_id::or_legacy(self.network_id, &self.network)
    }

    /// The container's addresses without their prefix lengths.
    pub fn ips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.addresses.iter().map(IpNet::addr)
    }

    /// The ports flatnetd relays on `[::1]` for this container (TCP published on every address
    /// or on `::1`, to its IPv6 address; `dataplane::services::loopback_ports`): (host port,
    /// where to).
    pub fn loopback_relays(&self) -> Vec<(u16, SocketAddr)> {
        let Some(v6) = self.ips().find(IpAddr::is_ipv6) else {
            return Vec::new();
        };
        self.ports
            .iter()
            .filter(|m| m.protocol == Protocol::Tcp && m.on_ipv6_loopback())
            .flat_map(|m| m.ports())
            .map(|(host, container)| (host, SocketAddr::new(v6, container)))
            .collect()
    }
}

/// A list, or (as older records wrote it) a single value.
pub(crate) fn one_or_more<'de, D, T>(deserializer: D) -> std::result::Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMore<T> {
        One(T),
        More(Vec<T>),
    }
    Ok(match OneOrMore::deserialize(deserializer)? {
        OneOrMore::One(one) => vec![one],
        OneOrMore::More(more) => more,
    })
}

/// The record of one container on one network; `None` if it has none.
pub fn load(dirs: &NetworkDirs, container_id: &str) -> Result<Option<Attachment>> {
    check_container_id(container_id)?;
    read(&dirs.attachment(container_id))
}

/// The record of one container, as the data plane looks it up by network name.
pub fn find(state: &StateDir, network: &str, container_id: &str) -> Result<Option<Attachment>> {
    check_name("network name", network, 200).map_err(Error::InvalidRequest)?;
    load(&state.network(network), container_id)
}

/// Writes (or replaces) a container's record atomically.
pub fn save(dirs: &NetworkDirs, attachment: &Attachment) -> Result<()> {
    create_private_dir(&dirs.attachments())?;
    let bytes = serde_json::to_vec_pretty(attachment).expect("attachment serialises");
    write_atomic(&dirs.attachment(&attachment.container_id), &bytes)
}

/// Every record of one network.
pub fn in_network(dirs: &NetworkDirs) -> Result<Vec<Attachment>> {
    let mut found = Vec::new();
    for path in list_dir(&dirs.attachments())? {
        if path.extension().is_some_and(|e| e == "json") {
            found.extend(read(&path)?);
        }
    }
    Ok(found)
}

/// Every record under a state directory, all networks.
pub fn all(state: &StateDir) -> Result<Vec<Attachment>> {
    let mut found = Vec::new();
    for network in list_dir(&state.networks())? {
        found.extend(in_network(&NetworkDirs { root: network })?);
    }
    Ok(found)
}

fn read(path: &Path) -> Result<Option<Attachment>> {
    let Some(bytes) = read_if_exists(path)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::json(format!("parsing attachment {}", path.display()), e))
}

pub fn check_container_id(id: &str) -> Result<()> {
    check_name("container ID", id, 255).map_err(Error::InvalidRequest)
}

/// The locally administered MAC reported for an address: 02:46 ('F') then its last four
/// octets (all of an IPv4 address).
pub fn mac_for(ip: IpAddr) -> String {
    let [a, b, c, d] = match ip {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            [o[12], o[13], o[14], o[15]]
        }
    };
    format!("02:46:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A damaged record is a JSON failure that keeps serde's error as its source, so callers
    /// can tell it from an I/O failure and the log says where the JSON broke.
    #[test]
    fn a_damaged_record_is_a_json_error_with_its_source() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let dirs = state.network("net");
        create_private_dir(&dirs.attachments()).unwrap();
        std::fs::write(dirs.attachment("c1"), "{\"version\": 1,").unwrap();
        let err = load(&dirs, "c1").unwrap_err();
        assert!(matches!(err, Error::Json { .. }), "{err:?}");
        let source = std::error::Error::source(&err).expect("a source");
        let json = source
            .downcast_ref::<serde_json::Error>()
            .expect("serde's error");
        assert!(json.is_eof(), "{json}");
        assert!(err.to_string().contains("c1.json"), "{err}");
    }

    /// A record an IPv4-only Flatnet wrote (one `address`, one `gateway`) is read as a
    /// record with one address, and written back in the new form.
    #[test]
    fn an_older_single_address_record_is_read() {
        let old = r#"{"version": 1, "network": "n", "container_id": "c1", "ifname": "eth0",
            "netns": "/run/netns/x", "address": "10.77.0.2/16", "gateway": "10.77.0.1",
            "mac": "02:46:0a:4d:00:02", "mtu": 1416}"#;
        let record: Attachment = serde_json::from_str(old).unwrap();
        assert_eq!(record.addresses, ["10.77.0.2/16".parse::<IpNet>().unwrap()]);
        assert_eq!(record.gateways, ["10.77.0.1".parse::<IpAddr>().unwrap()]);
        let again = serde_json::to_value(&record).unwrap();
        assert_eq!(again["addresses"][0], "10.77.0.2/16");
        let back: Attachment = serde_json::from_value(again).unwrap();
        assert_eq!(back, record);
    }

    #[test]
    fn loopback_relays_serve_tcp_on_every_address_or_on_ipv6_loopback_to_the_ipv6_address() {
        let record = |addresses: &str| -> Attachment {
            serde_json::from_str(&format!(
                r#"{{"version": 1, "network": "n", "container_id": "c", "ifname": "eth0",
                    "netns": "/run/netns/x", "addresses": {addresses}, "gateways": [],
                    "mac": "02:00:00:00:00:01", "mtu": 1400, "ports": [
                    {{"host_ip": null, "host_port": 8080, "container_port": 80,
                      "protocol": "tcp", "range": 2}},
                    {{"host_ip": "::1", "host_port": 9000, "container_port": 90,
                      "protocol": "tcp", "range": 1}},
                    {{"host_ip": "127.0.0.1", "host_port": 9100, "container_port": 91,
                      "protocol": "tcp", "range": 1}},
                    {{"host_ip": null, "host_port": 5353, "container_port": 53,
                      "protocol": "udp", "range": 1}}]}}"#
            ))
            .unwrap()
        };
        let dual = record(r#"["10.77.0.5/24", "fd77::5/64"]"#);
        let to = |port| SocketAddr::new("fd77::5".parse().unwrap(), port);
        assert_eq!(
            dual.loopback_relays(),
            [(8080, to(80)), (8081, to(81)), (9000, to(90))]
        );
        let v4_only = record(r#"["10.77.0.5/24"]"#);
        assert!(v4_only.loopback_relays().is_empty(), "IPv4 only");
    }
}
