//! `FlatnetConfig`: one network's settings, validated the same way whichever front end read them.
//!
//! Front ends fill a [`ConfigInput`] from their own format (CNI network config JSON, netavark
//! Network options) and call [`FlatnetConfig::from_input`]; every complaint names the field
//! and the value.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use ipnet::Ipv4Net;

use crate::error::{Error, Result};
use crate::lighthouse::{LighthouseInput, LighthouseSettings};
use crate::state::{check_name, NetworkDirs, StateDir};

pub const DEFAULT_SUBNET: &str = "10.77.0.0/16";
pub const DEFAULT_STATE_DIR: &str = "/run/flatnet";
pub const DEFAULT_TUNNEL_PORT: u16 = 4800;
/// Bytes a tunnelled packet adds on the underlay: IPv6 header (40, the worst case) + UDP (8)
/// + Flatnet transport header (16) + network tag (4) + AEAD tag (16).
pub const TUNNEL_OVERHEAD: u32 = 84;
/// Fits a 1500-byte underlay without fragmentation, IPv4 or IPv6.
pub const DEFAULT_MTU: u32 = 1500 - TUNNEL_OVERHEAD;
const MTU_RANGE: std::ops::RangeInclusive<u32> = 576..=(9000 - TUNNEL_OVERHEAD);

/// A validated network configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlatnetConfig {
    /// Network name; also names the network's state directory.
    pub network: String,
    pub subnet: Ipv4Net,
    /// Reserved for the host's own member of the network; never given to a container.
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    pub state_dir: StateDir,
    /// The file lighthouse (Phase 1's LighthouseClient backend) or an etcd cluster.
    pub lighthouse: LighthouseSettings,
    /// UDP port of this host's data plane.
    pub tunnel_port: u16,
    /// Underlay address other hosts reach this host's data plane at.
    pub endpoint: SocketAddr,
    /// An internal network reaches only Flatnet and the host member: no default route, no
    /// egress, and DNS names outside the network are refused. Published ports still work
    /// (their connections come from the host member's address).
    pub internal: bool,
    /// Forwarded traffic to the network's containers is dropped unless it comes from one of
    /// Flatnet's own interfaces, belongs to a connection a container opened, or is for a
    /// published port: a neighbour routing the subnet through this host reaches only what
    /// `-p` publishes (docs/podman.md, "Ingress filter").
    pub ingress_filter: bool,
    /// Where names outside the network are forwarded; `None`: the host's resolv.conf.
    pub dns_upstreams: Option<Vec<SocketAddr>>,
}

/// Raw, unvalidated settings as text, the common denominator of JSON numbers and netavark's
/// string options. `None` means "use the default".
#[derive(Debug, Clone, Default)]
pub struct ConfigInput {
    pub network: String,
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    pub mtu: Option<String>,
    pub state_dir: Option<String>,
    pub lighthouse: LighthouseInput,
    pub tunnel_port: Option<String>,
    pub endpoint: Option<String>,
    pub internal: bool,
    /// `true` or `false`; on unless given (what a network made today gets).
    pub ingress_filter: Option<String>,
    /// Comma-separated `ip` or `ip:port` resolvers.
    pub dns_upstreams: Option<String>,
}

impl FlatnetConfig {
    pub fn from_input(input: ConfigInput) -> Result<Self> {
        check_name("network name", &input.network, 200).map_err(Error::InvalidConfig)?;
        let subnet = parse_subnet(input.subnet.as_deref().unwrap_or(DEFAULT_SUBNET))?;
        let gateway = match input.gateway.as_deref() {
            Some(text) => parse_gateway(text, subnet)?,
            None => first_host(subnet),
        };
        let mtu = match input.mtu.as_deref() {
            Some(text) => parse_mtu(text)?,
            None => DEFAULT_MTU,
        };
        let state_dir = StateDir::new(parse_abs_path(
            "stateDir",
            input.state_dir.as_deref(),
            DEFAULT_STATE_DIR,
        )?);
        let lighthouse =
            LighthouseSettings::from_input(&input.lighthouse, &state_dir.default_lighthouse())?;
        let tunnel_port = match input.tunnel_port.as_deref() {
            Some(text) => parse_port(text)?,
            None => DEFAULT_TUNNEL_PORT,
        };
        let endpoint = match input.endpoint.as_deref() {
            Some(text) => text.parse().map_err(|_| {
                invalid(format!("endpoint {text:?} is not an address:port such as 192.0.2.10:{DEFAULT_TUNNEL_PORT}"))
            })?,
            None => default_endpoint(tunnel_port),
        };
        let ingress_filter = match input.ingress_filter.as_deref() {
            Some(text) => parse_bool("ingressFilter", text)?,
            None => true,
        };
        let dns_upstreams = input
            .dns_upstreams
            .as_deref()
            .map(parse_upstreams)
            .transpose()?;
        Ok(FlatnetConfig {
            network: input.network,
            subnet,
            gateway,
            mtu,
            state_dir,
            lighthouse,
            tunnel_port,
            endpoint,
            internal: input.internal,
            ingress_filter,
            dns_upstreams,
        })
    }

    /// The state directory of this network.
    pub fn dirs(&self) -> NetworkDirs {
        self.state_dir.network(&self.network)
    }
}

/// Where a host's data plane listens, and is reached, when no endpoint is configured: loopback,
/// so that nothing listens where it need not (one host, or hosts in namespaces of one machine).
pub fn default_endpoint(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

fn invalid(msg: String) -> Error {
    Error::InvalidConfig(msg)
}

fn parse_subnet(text: &str) -> Result<Ipv4Net> {
    let net: Ipv4Net = text.parse().map_err(|_| {
        invalid(format!(
            "subnet {text:?} is not an IPv4 CIDR such as {DEFAULT_SUBNET} (Flatnet networks are IPv4)"
        ))
    })?;
    if net.network() != net.addr() {
        return Err(invalid(format!(
            "subnet {text:?} has host bits set; did you mean {}?",
            net.trunc()
        )));
    }
    if net.prefix_len() > 30 {
        return Err(invalid(format!(
            "subnet {text:?} is too small: a /30 or larger is needed for a gateway and a container"
        )));
    }
    Ok(net)
}

fn parse_gateway(text: &str, subnet: Ipv4Net) -> Result<Ipv4Addr> {
    let ip: Ipv4Addr = text
        .parse()
        .map_err(|_| invalid(format!("gateway {text:?} is not an IPv4 address")))?;
    if !subnet.contains(&ip) || ip == subnet.network() || ip == subnet.broadcast() {
        return Err(invalid(format!(
            "gateway {ip} is not a host address of subnet {subnet}"
        )));
    }
    Ok(ip)
}

fn parse_mtu(text: &str) -> Result<u32> {
    match text.trim().parse::<u32>() {
        Ok(mtu) if MTU_RANGE.contains(&mtu) => Ok(mtu),
        _ => Err(invalid(format!(
            "mtu {text:?} must be a number from {} to {} (the underlay adds {TUNNEL_OVERHEAD} bytes)",
            MTU_RANGE.start(),
            MTU_RANGE.end()
        ))),
    }
}

fn parse_port(text: &str) -> Result<u16> {
    match text.trim().parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(invalid(format!(
            "tunnelPort {text:?} must be a UDP port from 1 to 65535"
        ))),
    }
}

fn parse_abs_path(field: &str, text: Option<&str>, default: &str) -> Result<PathBuf> {
    let text = text.unwrap_or(default);
    let path = PathBuf::from(text);
    if !path.is_absolute() || path.components().any(|c| c.as_os_str() == "..") {
        return Err(invalid(format!(
            "{field} {text:?} must be an absolute path without '..'"
        )));
    }
    Ok(path)
}

fn parse_bool(field: &str, text: &str) -> Result<bool> {
    match text.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(format!("{field} {text:?} must be true or false"))),
    }
}

/// `192.0.2.53` or `192.0.2.53:5353`, comma-separated; port 53 unless given.
fn parse_upstreams(text: &str) -> Result<Vec<SocketAddr>> {
    text.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<SocketAddr>()
                .or_else(|_| t.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .ok()
                .filter(SocketAddr::is_ipv4)
                .ok_or_else(|| {
                    invalid(format!(
                        "dnsUpstreams entry {t:?} is not an IPv4 address or address:port"
                    ))
                })
        })
        .collect()
}

/// The first host address of a subnet: 10.77.0.0/16 -> 10.77.0.1.
pub fn first_host(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(network: &str) -> ConfigInput {
        ConfigInput {
            network: network.into(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_fill_every_field() {
        let cfg = FlatnetConfig::from_input(input("flat")).unwrap();
        assert_eq!(cfg.subnet.to_string(), DEFAULT_SUBNET);
        assert_eq!(cfg.gateway, Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(cfg.mtu, 1416);
        assert_eq!(
            cfg.lighthouse,
            LighthouseSettings::File("/run/flatnet/lighthouse.json".into())
        );
        assert_eq!(cfg.endpoint.to_string(), "127.0.0.1:4800");
        assert!(!cfg.internal);
        assert!(cfg.ingress_filter);
        assert_eq!(cfg.dns_upstreams, None);
    }

    #[test]
    fn the_ingress_filter_is_a_boolean() {
        let with = |text: &str| {
            let mut i = input("flat");
            i.ingress_filter = Some(text.into());
            FlatnetConfig::from_input(i)
        };
        assert!(!with("false").unwrap().ingress_filter);
        assert!(with("true").unwrap().ingress_filter);
        let err = with("yes").unwrap_err().to_string();
        assert!(
            err.contains("ingressFilter") && err.contains("\"yes\""),
            "{err}"
        );
    }

    #[test]
    fn dns_upstreams_take_a_default_port() {
        let mut i = input("flat");
        i.dns_upstreams = Some("192.0.2.53, 198.51.100.9:5353".into());
        let cfg = FlatnetConfig::from_input(i).unwrap();
        let want: Vec<SocketAddr> = vec![
            "192.0.2.53:53".parse().unwrap(),
            "198.51.100.9:5353".parse().unwrap(),
        ];
        assert_eq!(cfg.dns_upstreams, Some(want));
    }

    #[test]
    fn explicit_values_are_kept() {
        let cfg = FlatnetConfig::from_input(ConfigInput {
            network: "n1".into(),
            subnet: Some("192.0.2.0/24".into()),
            gateway: Some("192.0.2.254".into()),
            mtu: Some("1380".into()),
            state_dir: Some("/tmp/fn".into()),
            tunnel_port: Some("5000".into()),
            endpoint: Some("198.51.100.1:5000".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(cfg.gateway, Ipv4Addr::new(192, 0, 2, 254));
        assert_eq!(cfg.mtu, 1380);
        assert_eq!(
            cfg.lighthouse,
            LighthouseSettings::File("/tmp/fn/lighthouse.json".into())
        );
        assert_eq!(cfg.tunnel_port, 5000);
    }

    fn error_of(edit: impl FnOnce(&mut ConfigInput)) -> String {
        let mut i = input("flat");
        edit(&mut i);
        let err = FlatnetConfig::from_input(i).unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
        err.to_string()
    }

    #[test]
    fn bad_values_are_named_in_the_error() {
        type Edit = Box<dyn FnOnce(&mut ConfigInput)>;
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|i| i.subnet = Some("10.0.0.0/33".into())),
                "subnet \"10.0.0.0/33\"",
            ),
            (Box::new(|i| i.subnet = Some("fd00::/64".into())), "IPv4"),
            (
                Box::new(|i| i.subnet = Some("10.0.0.5/24".into())),
                "10.0.0.0/24",
            ),
            (
                Box::new(|i| i.subnet = Some("10.0.0.0/31".into())),
                "too small",
            ),
            (
                Box::new(|i| i.gateway = Some("10.78.0.1".into())),
                "gateway 10.78.0.1",
            ),
            (
                Box::new(|i| i.gateway = Some("10.77.0.0".into())),
                "gateway 10.77.0.0",
            ),
            (
                Box::new(|i| i.gateway = Some("nope".into())),
                "gateway \"nope\"",
            ),
            (Box::new(|i| i.mtu = Some("100".into())), "mtu \"100\""),
            (Box::new(|i| i.mtu = Some("big".into())), "mtu \"big\""),
            (
                Box::new(|i| i.tunnel_port = Some("0".into())),
                "tunnelPort \"0\"",
            ),
            (
                Box::new(|i| i.state_dir = Some("relative".into())),
                "stateDir \"relative\"",
            ),
            (
                Box::new(|i| i.lighthouse.lighthouse = Some("/a/../b".into())),
                "lighthouse",
            ),
            (
                Box::new(|i| i.endpoint = Some("host".into())),
                "endpoint \"host\"",
            ),
            (
                Box::new(|i| i.dns_upstreams = Some("resolver".into())),
                "dnsUpstreams entry \"resolver\"",
            ),
            (
                Box::new(|i| i.dns_upstreams = Some("2001:db8::53".into())),
                "dnsUpstreams",
            ),
            (Box::new(|i| i.network = "../x".into()), "network name"),
            (Box::new(|i| i.network = String::new()), "network name"),
        ];
        for (edit, needle) in cases {
            let msg = error_of(edit);
            assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
        }
    }
}
