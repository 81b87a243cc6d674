//! Published ports (`podman run -p`): what a container asks the host to forward to it. Both
//! front ends translate their form (netavark `port_mappings`, CNI `runtimeConfig.portMappings`)
//! into [`PortMapping`]; the core validates them, refuses a host port another Flatnet container
//! already holds, and [`crate::firewall`] turns them into DNAT rules.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn parse(text: &str) -> Result<Self> {
        match text.to_ascii_lowercase().as_str() {
            "" | "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            other => Err(Error::InvalidRequest(format!(
                "port protocol {other:?} is not supported: Flatnet publishes tcp and udp"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// `[host_ip:]host_port[-end]:container_port[-end][/protocol]`, ranges kept as a count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// Only this host address (and only its family); `None` for every address of the host,
    /// both families.
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
    /// How many consecutive ports, from `host_port` and `container_port` on (at least 1).
    pub range: u16,
}

impl PortMapping {
    /// Checks the fields a runtime sent. `host_ip` is text because both protocols send text
    /// (empty, `0.0.0.0` or `::` for every address).
    pub fn new(
        host_ip: &str,
        host_port: u16,
        container_port: u16,
        protocol: &str,
        range: u16,
    ) -> Result<Self> {
        let host_ip = match host_ip.trim().trim_start_matches('[').trim_end_matches(']') {
            "" | "0.0.0.0" | "::" => None,
            text => Some(text.parse::<IpAddr>().map_err(|_| {
                Error::InvalidRequest(format!(
                    "published port host address {text:?} is not an IP address"
                ))
            })?),
        };
        let mapping = PortMapping {
            host_ip,
            host_port,
            container_port,
            protocol: Protocol::parse(protocol)?,
            range: range.max(1),
        };
        if mapping.host_ip.is_some_and(is_ipv6_loopback) && mapping.protocol == Protocol::Udp {
            // flatnetd relays TCP on ::1 itself (see `loopback_ports`); datagrams it does not.
            return Err(Error::InvalidRequest(format!(
                "published port {mapping}: udp on ::1 is not supported (the kernel cannot \
                 forward IPv6 loopback traffic); publish it on all addresses or on one of the \
                 host's IPv6 addresses"
            )));
        }
        let fits = |start: u16| start != 0 && u32::from(start) + u32::from(mapping.range) <= 65536;
        if !fits(host_port) || !fits(container_port) {
            return Err(Error::InvalidRequest(format!(
                "published port {mapping} is not within 1-65535"
            )));
        }
        Ok(mapping)
    }

    /// Whether the mapping forwards to a container address of this family.
    pub fn carries(&self, container: IpAddr) -> bool {
        self.host_ip
            .is_none_or(|host| host.is_ipv4() == container.is_ipv4())
    }

    /// Whether connections to `[::1]` reach this mapping: those flatnetd relays itself, since
    /// the kernel cannot forward IPv6 loopback traffic (there is no `route_localnet` for it).
    pub fn on_ipv6_loopback(&self) -> bool {
        self.host_ip.is_none_or(is_ipv6_loopback)
    }

    /// Each single port of a range: (host port, container port).
    pub fn ports(&self) -> impl Iterator<Item = (u16, u16)> + '_ {
        (0..self.range).map(|i| (self.host_port + i, self.container_port + i))
    }

    /// Do both claim some host port for the same protocol on a common host address?
    pub fn overlaps(&self, other: &PortMapping) -> bool {
        let addresses_meet = match (self.host_ip, other.host_ip) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        let end = |m: &PortMapping| u32::from(m.host_port) + u32::from(m.range);
        self.protocol == other.protocol
            && addresses_meet
            && u32::from(self.host_port) < end(other)
            && u32::from(other.host_port) < end(self)
    }
}

fn is_ipv6_loopback(ip: IpAddr) -> bool {
    ip.is_ipv6() && ip.is_loopback()
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(ip) => write!(f, "{ip}:")?,
            None => {}
        }
        let span = |start: u16| {
            if self.range > 1 {
                format!("{start}-{}", u32::from(start) + u32::from(self.range) - 1)
            } else {
                start.to_string()
            }
        };
        write!(
            f,
            "{}:{}/{}",
            span(self.host_port),
            span(self.container_port),
            self.protocol.as_str()
        )
    }
}

/// The first of `wanted` that a mapping in `held` (container id, mapping) already claims.
pub fn find_conflict<'a>(
    wanted: &[PortMapping],
    held: impl IntoIterator<Item = (&'a str, &'a PortMapping)>,
) -> Option<Error> {
    let held: Vec<_> = held.into_iter().collect();
    for mapping in wanted {
        if let Some((owner, theirs)) = held.iter().find(|(_, h)| h.overlaps(mapping)) {
            return Some(Error::PortInUse {
                port: mapping.to_string(),
                owner: owner.to_string(),
                held: theirs.to_string(),
            });
        }
    }
    // Two mappings of one request may not overlap either.
    for (i, a) in wanted.iter().enumerate() {
        if let Some(b) = wanted[i + 1..].iter().find(|b| b.overlaps(a)) {
            return Some(Error::InvalidRequest(format!(
                "published ports {a} and {b} overlap"
            )));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(ip: &str, host: u16, ctr: u16, proto: &str, range: u16) -> PortMapping {
        PortMapping::new(ip, host, ctr, proto, range).unwrap()
    }

    #[test]
    fn mappings_read_and_print_like_podman_flags() {
        assert_eq!(map("", 8080, 80, "tcp", 1).to_string(), "8080:80/tcp");
        assert_eq!(
            map("127.0.0.1", 9000, 9000, "UDP", 3).to_string(),
            "127.0.0.1:9000-9002:9000-9002/udp"
        );
        assert_eq!(map("0.0.0.0", 1, 2, "", 0).host_ip, None);
        assert_eq!(map("::", 1, 2, "", 0).host_ip, None);
        let v6 = map("2001:db8::10", 8080, 80, "tcp", 1);
        assert_eq!(v6.to_string(), "[2001:db8::10]:8080:80/tcp");
        assert_eq!(map("[2001:db8::10]", 8080, 80, "tcp", 1), v6);
        assert!(v6.carries("fd77::5".parse().unwrap()));
        assert!(!v6.carries("10.77.0.5".parse().unwrap()));
        assert!(map("", 1, 2, "", 0).carries("10.77.0.5".parse().unwrap()));
        assert!(map("", 1, 2, "", 0).on_ipv6_loopback());
        assert!(map("[::1]", 1, 2, "tcp", 0).on_ipv6_loopback());
        assert!(!v6.on_ipv6_loopback() && !map("127.0.0.1", 1, 2, "", 0).on_ipv6_loopback());
        let ports: Vec<_> = map("", 9000, 7000, "tcp", 3).ports().collect();
        assert_eq!(ports, vec![(9000, 7000), (9001, 7001), (9002, 7002)]);
    }

    #[test]
    fn bad_mappings_are_refused_with_the_reason() {
        for (ip, host, ctr, proto, range, needle) in [
            ("", 0, 80, "tcp", 1, "1-65535"),
            ("", 65535, 80, "tcp", 2, "1-65535"),
            ("", 80, 80, "sctp", 1, "sctp"),
            ("::1", 53, 53, "udp", 1, "udp on ::1 is not supported"),
            ("host", 80, 80, "tcp", 1, "not an IP address"),
        ] {
            let err = PortMapping::new(ip, host, ctr, proto, range).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[test]
    fn overlap_needs_protocol_port_and_address_to_meet() {
        let any_8080 = map("", 8080, 80, "tcp", 1);
        assert!(any_8080.overlaps(&map("127.0.0.1", 8080, 81, "tcp", 1)));
        assert!(!any_8080.overlaps(&map("", 8080, 80, "udp", 1)));
        assert!(!any_8080.overlaps(&map("", 8081, 80, "tcp", 1)));
        assert!(map("", 8078, 1, "tcp", 3).overlaps(&any_8080));
        assert!(!map("", 8077, 1, "tcp", 3).overlaps(&any_8080));
        assert!(!map("127.0.0.1", 53, 53, "udp", 1).overlaps(&map("127.0.0.2", 53, 53, "udp", 1)));
    }

    #[test]
    fn a_conflict_names_the_port_and_its_holder() {
        let held = map("", 8080, 80, "tcp", 1);
        let err = find_conflict(&[map("", 8080, 8080, "tcp", 1)], [("web1", &held)]).unwrap();
        let msg = err.to_string();
        assert!(msg.contains("8080") && msg.contains("web1"), "{msg}");
        assert!(find_conflict(&[map("", 8081, 80, "tcp", 1)], [("web1", &held)]).is_none());
        let own = [map("", 9000, 1, "tcp", 2), map("", 9001, 5, "tcp", 1)];
        assert!(find_conflict(&own, []).is_some());
    }
}
