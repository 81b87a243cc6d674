//! `FlatnetConfig`: one network's settings, validated the same way whichever front end read them.
//!
//! Front ends fill a [`ConfigInput`] from their own format (CNI network config JSON, netavark
//! Network options) and call [`FlatnetConfig::from_input`]; every complaint names the field
//! and the value.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net};

use crate::error::{Error, Result};
use crate::lighthouse::{LighthouseInput, LighthouseSettings};
use crate::state::{check_name, NetworkDirs, StateDir};

pub const DEFAULT_SUBNET: &str = "10.77.0.0/16";
/// The IPv6 subnet a network asked to be dual-stack (`--ipv6`) without naming one gets.
pub const DEFAULT_SUBNET6: &str = "fd77::/64";
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
    /// One subnet per address family, IPv4 first: a network is IPv4, IPv6 or dual-stack.
    pub subnets: Vec<Subnet>,
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

/// One address family's part of a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub net: IpNet,
    /// Reserved for the host's own member of the network; never given to a container.
    pub gateway: IpAddr,
}

impl Subnet {
    pub fn is_ipv4(&self) -> bool {
        self.net.addr().is_ipv4()
    }
}

/// A subnet as a front end gave it, with its gateway if one was given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubnetInput {
    pub subnet: String,
    pub gateway: Option<String>,
}

impl SubnetInput {
    pub fn new(subnet: impl Into<String>, gateway: Option<String>) -> Self {
        SubnetInput {
            subnet: subnet.into(),
            gateway,
        }
    }
}

/// Raw, unvalidated settings as text, the common denominator of JSON numbers and netavark's
/// string options. `None` means "use the default".
#[derive(Debug, Clone, Default)]
pub struct ConfigInput {
    pub network: String,
    /// None: the default subnet alone.
    pub subnets: Vec<SubnetInput>,
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
        let subnets = parse_subnets(&input.subnets)?;
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
            subnets,
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

    /// The IPv4 subnet and its gateway, if the network has one.
    pub fn ipv4(&self) -> Option<(Ipv4Net, Ipv4Addr)> {
        self.subnets.iter().find_map(|s| match (s.net, s.gateway) {
            (IpNet::V4(net), IpAddr::V4(gateway)) => Some((net, gateway)),
            _ => None,
        })
    }

    /// The subnets, comma-separated, for messages.
    pub fn subnets_text(&self) -> String {
        let all: Vec<String> = self.subnets.iter().map(|s| s.net.to_string()).collect();
        all.join(", ")
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

/// The subnets of a network: the default if none is given, else at most one per family.
fn parse_subnets(inputs: &[SubnetInput]) -> Result<Vec<Subnet>> {
    let default = [SubnetInput::new(DEFAULT_SUBNET, None)];
    let inputs = if inputs.is_empty() {
        &default[..]
    } else {
        inputs
    };
    let mut subnets = Vec::with_capacity(inputs.len());
    for input in inputs {
        let net = parse_subnet(&input.subnet)?;
        let gateway = match input.gateway.as_deref() {
            Some(text) => parse_gateway(text, net)?,
            None => first_host(net),
        };
        if let Some(same) = subnets
            .iter()
            .find(|s: &&Subnet| s.is_ipv4() == net.addr().is_ipv4())
        {
            return Err(invalid(format!(
                "subnets {} and {net} are of one address family: a network has at most one \
                 IPv4 and one IPv6 subnet",
                same.net
            )));
        }
        subnets.push(Subnet { net, gateway });
    }
    subnets.sort_by_key(|s| !s.is_ipv4());
    Ok(subnets)
}

/// Prefix lengths an IPv6 subnet may have: a /48 holds 65,536 hosts' /64 blocks; a /120 still
/// leaves a gateway, a host member and containers.
const IPV6_PREFIX: std::ops::RangeInclusive<u8> = 48..=120;

fn parse_subnet(text: &str) -> Result<IpNet> {
    let net: IpNet = text.parse().map_err(|_| {
        invalid(format!(
            "subnet {text:?} is not a CIDR such as {DEFAULT_SUBNET} or fd77::/64"
        ))
    })?;
    if net.network() != net.addr() {
        return Err(invalid(format!(
            "subnet {text:?} has host bits set; did you mean {}?",
            net.trunc()
        )));
    }
    if let Some(why) = unusable_range(net.addr()) {
        return Err(invalid(format!(
            "subnet {text:?} is {why}: it cannot carry containers"
        )));
    }
    match net {
        IpNet::V4(v4) if v4.prefix_len() > 30 => Err(invalid(format!(
            "subnet {text:?} is too small: a /30 or larger is needed for a gateway and a container"
        ))),
        IpNet::V6(v6) if !IPV6_PREFIX.contains(&v6.prefix_len()) => Err(invalid(format!(
            "IPv6 subnet {text:?} must be from /{} to /{}",
            IPV6_PREFIX.start(),
            IPV6_PREFIX.end()
        ))),
        _ => Ok(net),
    }
}

/// Why addresses in this range cannot be a network's, if they cannot.
fn unusable_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) if v4.is_multicast() || v4.is_broadcast() => Some("multicast"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("link-local"),
        IpAddr::V4(v4) if v4.is_loopback() || v4.is_unspecified() => {
            Some("loopback or unspecified")
        }
        IpAddr::V6(v6) if v6.is_multicast() => Some("multicast"),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("link-local"),
        IpAddr::V6(v6) if v6.is_loopback() || v6.is_unspecified() => {
            Some("loopback or unspecified")
        }
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => Some("IPv4-mapped"),
        _ => None,
    }
}

fn parse_gateway(text: &str, subnet: IpNet) -> Result<IpAddr> {
    let ip: IpAddr = text
        .parse()
        .map_err(|_| invalid(format!("gateway {text:?} is not an IP address")))?;
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

/// `192.0.2.53`, `192.0.2.53:5353`, `2001:db8::53` or `[2001:db8::53]:5353`, comma-separated;
/// port 53 unless given.
fn parse_upstreams(text: &str) -> Result<Vec<SocketAddr>> {
    text.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<SocketAddr>()
                .or_else(|_| t.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| {
                    invalid(format!(
                        "dnsUpstreams entry {t:?} is not an IP address or address:port"
                    ))
                })
        })
        .collect()
}

/// The first host address of a subnet: 10.77.0.0/16 -> 10.77.0.1, fd77::/64 -> fd77::1.
pub fn first_host(subnet: IpNet) -> IpAddr {
    match subnet {
        IpNet::V4(v4) => Ipv4Addr::from(u32::from(v4.network()) + 1).into(),
        IpNet::V6(v6) => std::net::Ipv6Addr::from(u128::from(v6.network()) + 1).into(),
    }
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
        assert_eq!(cfg.subnets_text(), DEFAULT_SUBNET);
        assert_eq!(cfg.subnets[0].gateway, Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(
            cfg.ipv4(),
            Some((DEFAULT_SUBNET.parse().unwrap(), Ipv4Addr::new(10, 77, 0, 1)))
        );
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
        i.dns_upstreams = Some("192.0.2.53, 198.51.100.9:5353, 2001:db8::53".into());
        let cfg = FlatnetConfig::from_input(i).unwrap();
        let want: Vec<SocketAddr> = vec![
            "192.0.2.53:53".parse().unwrap(),
            "198.51.100.9:5353".parse().unwrap(),
            "[2001:db8::53]:53".parse().unwrap(),
        ];
        assert_eq!(cfg.dns_upstreams, Some(want));
    }

    #[test]
    fn explicit_values_are_kept() {
        let cfg = FlatnetConfig::from_input(ConfigInput {
            network: "n1".into(),
            subnets: vec![SubnetInput::new("192.0.2.0/24", Some("192.0.2.254".into()))],
            mtu: Some("1380".into()),
            state_dir: Some("/tmp/fn".into()),
            tunnel_port: Some("5000".into()),
            endpoint: Some("198.51.100.1:5000".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(cfg.subnets[0].gateway, Ipv4Addr::new(192, 0, 2, 254));
        assert_eq!(cfg.mtu, 1380);
        assert_eq!(
            cfg.lighthouse,
            LighthouseSettings::File("/tmp/fn/lighthouse.json".into())
        );
        assert_eq!(cfg.tunnel_port, 5000);
    }

    #[test]
    fn a_network_is_ipv4_ipv6_or_both_with_ipv4_first() {
        let with = |subnets: &[&str]| {
            let mut i = input("flat");
            i.subnets = subnets.iter().map(|s| SubnetInput::new(*s, None)).collect();
            FlatnetConfig::from_input(i).unwrap()
        };
        let both = with(&["fd77::/64", "10.77.0.0/24"]);
        let found: Vec<(String, String)> = both
            .subnets
            .iter()
            .map(|s| (s.net.to_string(), s.gateway.to_string()))
            .collect();
        assert_eq!(
            found,
            [
                ("10.77.0.0/24".to_string(), "10.77.0.1".to_string()),
                ("fd77::/64".to_string(), "fd77::1".to_string())
            ]
        );
        let only = with(&["fd77:1::/120"]);
        assert_eq!(only.ipv4(), None);
        assert_eq!(only.subnets[0].gateway.to_string(), "fd77:1::1");
    }

    fn subnets(list: &[(&str, Option<&str>)]) -> Vec<SubnetInput> {
        let one = |(s, g): &(&str, Option<&str>)| SubnetInput::new(*s, g.map(str::to_string));
        list.iter().map(one).collect()
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
                Box::new(|i| i.subnets = subnets(&[("10.0.0.0/33", None)])),
                "subnet \"10.0.0.0/33\"",
            ),
            (
                Box::new(|i| i.subnets = subnets(&[("10.0.0.5/24", None)])),
                "10.0.0.0/24",
            ),
            (
                Box::new(|i| i.subnets = subnets(&[("10.0.0.0/31", None)])),
                "too small",
            ),
            (
                Box::new(|i| i.subnets = subnets(&[("fd00::/124", None)])),
                "/48 to /120",
            ),
            (
                Box::new(|i| i.subnets = subnets(&[("fd00::/40", None)])),
                "/48 to /120",
            ),
            (
                Box::new(|i| i.subnets = subnets(&[("fe80::/64", None)])),
                "link-local",
            ),
            (
                Box::new(|i| i.subnets = subnets(&[("ff05::/64", None)])),
                "multicast",
            ),
            (
                Box::new(|i| i.subnets = subnets(&[("224.1.0.0/16", None)])),
                "multicast",
            ),
            (
                Box::new(|i| i.subnets = subnets(&[("::ffff:10.0.0.0/120", None)])),
                "IPv4-mapped",
            ),
            (
                Box::new(|i| i.subnets = subnets(&[("fd00::/64", None), ("fd01::/64", None)])),
                "at most one IPv4 and one IPv6",
            ),
            (
                Box::new(|i| i.subnets = subnets(&[("10.0.0.0/24", None), ("10.0.0.0/25", None)])),
                "at most one IPv4 and one IPv6",
            ),
            (
                Box::new(|i| i.subnets = subnets(&[("10.77.0.0/16", Some("10.78.0.1"))])),
                "gateway 10.78.0.1",
            ),
            (
                Box::new(|i| i.subnets = subnets(&[("10.77.0.0/16", Some("10.77.0.0"))])),
                "gateway 10.77.0.0",
            ),
            (
                Box::new(|i| i.subnets = subnets(&[("fd77::/64", Some("10.77.0.1"))])),
                "gateway 10.77.0.1",
            ),
            (
                Box::new(|i| i.subnets = subnets(&[("10.77.0.0/16", Some("nope"))])),
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
                Box::new(|i| i.dns_upstreams = Some("2001:db8::53:99999".into())),
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
