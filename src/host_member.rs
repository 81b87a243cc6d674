//! The host's own member of a network: a TUN device on the host side holding the network's
//! gateway address, served by flatnetd like a container's. Through it the host reaches its
//! containers by Flatnet address, containers reach the host, published ports are forwarded
//! and (on a network that is not internal) containers egress to the host's other networks.
//!
//! Addresses: the gateway is the same on every host and only ever local (containers reach
//! their own host's member through it; it is reserved by IPAM and never in the lighthouse).
//! Each member also gets an address of its own from IPAM, registered in the lighthouse like a
//! container's, so other hosts' containers can reach it unambiguously; the host sends from it.
//!
//! A member exists while its network has containers on this host: created by the first attach,
//! removed by the last detach (both under the state directory's member lock).

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::FlatnetConfig;
use crate::dns;
use crate::error::{Error, IoContext, Result};
use crate::netns;
use crate::state::{read_if_exists, remove_if_exists, write_atomic, NetworkDirs};

const RECORD_VERSION: u32 = 1;

/// A network's host member on this host, as recorded in `networks/<name>/host.json`. The
/// daemon reads it to serve the member and to answer DNS for the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostMember {
    pub version: u32,
    pub network: String,
    /// Lease and lighthouse identity of this member: unique per host.
    pub id: String,
    pub ifname: String,
    /// The network's subnets, IPv4 first (`subnet` in a record of an IPv4-only Flatnet).
    #[serde(alias = "subnet", deserialize_with = "crate::attachment::one_or_more")]
    pub subnets: Vec<IpNet>,
    /// Their gateways, in the same order.
    #[serde(alias = "gateway", deserialize_with = "crate::attachment::one_or_more")]
    pub gateways: Vec<IpAddr>,
    /// The member's own addresses (not the gateways), one per subnet, unique across hosts.
    #[serde(alias = "address", deserialize_with = "crate::attachment::one_or_more")]
    pub addresses: Vec<IpAddr>,
    pub mtu: u32,
    pub internal: bool,
    /// Records made before the option existed lack it: their networks keep routed access.
    #[serde(default)]
    pub ingress_filter: bool,
    /// Where the daemon forwards names outside the network.
    pub dns_upstreams: Vec<SocketAddr>,
}

impl HostMember {
    /// The member a network would have on this host, for an address IPAM gave it.
    pub fn describe(config: &FlatnetConfig, addresses: Vec<IpAddr>) -> Result<Self> {
        let dns_upstreams = match &config.dns_upstreams {
            Some(upstreams) => upstreams.clone(),
            None => dns::host_resolvers(Path::new(dns::HOST_RESOLV_CONF))?,
        };
        Ok(HostMember {
            version: RECORD_VERSION,
            network: config.network.clone(),
            id: member_id(config),
            ifname: member_ifname(config),
            subnets: config.subnets.iter().map(|s| s.net).collect(),
            gateways: config.subnets.iter().map(|s| s.gateway).collect(),
            addresses,
            mtu: config.mtu,
            internal: config.internal,
            ingress_filter: config.ingress_filter,
            dns_upstreams,
        })
    }

    pub fn path(dirs: &NetworkDirs) -> PathBuf {
        dirs.host_member()
    }

    pub fn load(dirs: &NetworkDirs) -> Result<Option<Self>> {
        let path = Self::path(dirs);
        let Some(bytes) = read_if_exists(&path)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::json(format!("parsing {}", path.display()), e))
    }

    pub fn save(&self, dirs: &NetworkDirs) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).expect("host member serialises");
        write_atomic(&Self::path(dirs), &bytes)
    }

    pub fn forget(dirs: &NetworkDirs) -> Result<()> {
        remove_if_exists(&Self::path(dirs))
    }

    /// Creates the member's interface in the calling process's namespace (the host side).
    /// If a step after the creation fails, the device is removed again.
    pub fn create_interface(&self) -> Result<()> {
        netns::here(|host| {
            if host.interface_state(&self.ifname)?.is_some() {
                // Left by a member whose record was lost (a crash between the two): replace it.
                host.remove_interface(&self.ifname)?;
            }
            let device = host.create_interface(&self.ifname, self.mtu)?;
            let configured = (|| {
                host.configure_ipv6(&device, self.has_ipv6())?;
                for &ip in self.gateways.iter().chain(&self.addresses) {
                    host.assign_ip(&device, IpNet::from(ip))?;
                }
                host.set_up(&device)?;
                if self.has_ipv6() {
                    host.wait_addresses_usable(&device)?;
                }
                for (&subnet, &address) in self.subnets.iter().zip(&self.addresses) {
                    host.add_route(&device, subnet, address)?;
                }
                self.set_sysctls()
            })();
            if configured.is_err() {
                let _ = host.remove_interface(&device.name);
            }
            configured
        })
    }

    pub fn has_ipv6(&self) -> bool {
        self.subnets.iter().any(|s| s.addr().is_ipv6())
    }

    /// The network's IPv4 subnet, if it has one.
    pub fn ipv4_subnet(&self) -> Option<ipnet::Ipv4Net> {
        self.subnets.iter().find_map(|s| match s {
            IpNet::V4(v4) => Some(*v4),
            IpNet::V6(_) => None,
        })
    }

    pub fn has_interface(&self) -> Result<bool> {
        netns::here(|host| Ok(host.interface_state(&self.ifname)?.is_some()))
    }

    pub fn remove_interface(&self) -> Result<()> {
        netns::here(|host| host.remove_interface(&self.ifname).map(drop))
    }

    /// `route_localnet` lets connections from 127.0.0.1 to a published port leave through the
    /// member (then masqueraded); forwarding lets containers egress and outside clients reach
    /// published ports. Forwarding is a host-wide switch that other networks rely on too, so
    /// it is turned on, never off (as Podman does for its bridges).
    fn set_sysctls(&self) -> Result<()> {
        write_sysctl(
            &format!("net/ipv4/conf/{}/route_localnet", self.ifname),
            "1",
        )?;
        if !self.internal {
            write_sysctl("net/ipv4/ip_forward", "1")?;
            if self.has_ipv6() {
                // As Podman does for an IPv6 bridge; hosts that learn their own IPv6 route
                // from router advertisements need accept_ra=2 on that interface then.
                write_sysctl("net/ipv6/conf/all/forwarding", "1")?;
            }
        }
        Ok(())
    }
}

/// The member's lease and lighthouse identity on this host: stable, and distinct per host (the
/// endpoint is) so two hosts never mistake each other's member entry for their own.
pub fn member_id(config: &FlatnetConfig) -> String {
    format!("flatnet-host-{:08x}", host_hash(config, ""))
}

/// What every host member's interface name starts with.
pub const MEMBER_IFNAME_PREFIX: &str = "fn-";

/// `fn-` and eight hex digits: unique per (host data plane, network), within the 15 characters
/// of an interface name. Two state directories in one namespace (two Podmans) never collide.
pub fn member_ifname(config: &FlatnetConfig) -> String {
    format!(
        "{MEMBER_IFNAME_PREFIX}{:08x}",
        host_hash(config, &config.network)
    )
}

/// The nftables table of one state directory's data plane (one per endpoint).
pub fn firewall_table(config: &FlatnetConfig) -> String {
    format!("flatnet-{:08x}", host_hash(config, ""))
}

/// The nftables table of a daemon's loopback relay (`dataplane::services::loopback_ports`).
pub fn relay_table(listen: std::net::SocketAddr) -> String {
    format!(
        "flatnet-{:08x}-relay",
        crate::network_id::fnv1a(&format!("{listen}/"))
    )
}

fn host_hash(config: &FlatnetConfig, suffix: &str) -> u32 {
    crate::network_id::fnv1a(&format!("{}/{suffix}", config.endpoint))
}

fn write_sysctl(key: &str, value: &str) -> Result<()> {
    let path = Path::new("/proc/sys").join(key);
    fs::write(&path, value).context(|| format!("setting {}", path.display()))
}
