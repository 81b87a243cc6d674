//! Between netavark's types and Flatnet's: which network options exist, how a Network becomes
//! a `FlatnetConfig`, and how an attachment becomes the StatusBlock Podman shows.

use std::collections::HashMap;
use std::net::IpAddr;

use flatnet::config::{first_host, SubnetInput, DEFAULT_SUBNET, DEFAULT_SUBNET6};
use flatnet::lighthouse::{LighthouseInput, LighthouseSettings};
use flatnet::{Attachment, ConfigInput, Error, FlatnetConfig, PortMapping};
use netavark::network::types::{
    LeaseRange, NetAddress, NetInterface, Network, NetworkPluginExec, PerNetworkOptions,
    StatusBlock, Subnet,
};

/// Networks created before the ingress filter existed carry no such option: they keep routed
/// access. `create` writes the option into every new network, on unless given.
const INGRESS_FILTER: &str = "ingress_filter";

/// `-o key=value` options a Flatnet network accepts, and the config field each sets.
pub const OPTIONS: &[&str] = &[
    "mtu",
    "tunnel_port",
    "state_dir",
    "lighthouse",
    "etcd_endpoints",
    "etcd_ca_file",
    "etcd_cert_file",
    "etcd_key_file",
    "lease_ttl",
    "network_ca_file",
    "host_cert_file",
    "endpoint",
    "dns_upstreams",
    INGRESS_FILTER,
];

/// Validates a network at `podman network create` and fills in what was left out (a subnet and
/// its gateway), leaving name, id and driver as they are.
pub fn normalise(mut network: Network) -> Result<Network, Error> {
    let mut subnets = network.subnets.take().unwrap_or_default();
    let has_ipv6 = |subnets: &[Subnet]| subnets.iter().any(|s| s.subnet.addr().is_ipv6());
    if subnets.is_empty() {
        subnets.push(default_subnet(DEFAULT_SUBNET));
    }
    // `--ipv6` without an IPv6 subnet: a dual-stack network with the default one.
    if network.ipv6_enabled && !has_ipv6(&subnets) {
        subnets.push(default_subnet(DEFAULT_SUBNET6));
    }
    for subnet in &mut subnets {
        subnet.gateway.get_or_insert(first_host(subnet.subnet));
    }
    network.ipv6_enabled = has_ipv6(&subnets);
    network.subnets = Some(subnets);
    // Flatnet answers DNS itself (netavark starts aardvark-dns for bridge networks only);
    // Podman accepts `--network-alias` only on networks with DNS enabled.
    network.dns_enabled = true;
    network
        .options
        .get_or_insert_with(HashMap::new)
        .entry(INGRESS_FILTER.to_string())
        .or_insert_with(|| "true".to_string());
    let config = config_of(&network)?;
    if matches!(config.lighthouse, LighthouseSettings::Etcd(_)) {
        narrow_to_host(&mut network, config)?;
    }
    Ok(network)
}

fn default_subnet(text: &str) -> Subnet {
    Subnet {
        gateway: None,
        lease_range: None,
        subnet: text.parse().expect("default subnets parse"),
    }
}

/// Podman allocates the addresses of a plugin network itself, from its own per-host database
/// and within the subnet's lease range: on several hosts it would hand out the same addresses.
/// The range is narrowed here to this host's block (from its certificate), so each host's
/// Podman allocates only what this host may serve. A range the user gave (`--ip-range`) must
/// lie inside it.
fn narrow_to_host(network: &mut Network, config: FlatnetConfig) -> Result<(), Error> {
    let ranges = flatnet::Network::open(config).runtime_ranges()?;
    for subnet in network.subnets.as_mut().expect("normalised") {
        let family = |ip: &IpAddr| ip.is_ipv4() == subnet.subnet.addr().is_ipv4();
        let Some(&(start, end)) = ranges.iter().find(|(start, _)| family(start)) else {
            continue;
        };
        narrow_subnet(subnet, start, end)?;
    }
    Ok(())
}

/// Narrows one subnet's lease range to `start`-`end`; a range given must lie inside.
fn narrow_subnet(subnet: &mut Subnet, start: IpAddr, end: IpAddr) -> Result<(), Error> {
    let given = subnet.lease_range.as_ref().map(|range| {
        let parse = |ip: &Option<String>| ip.as_deref().map(str::parse::<IpAddr>);
        (parse(&range.start_ip), parse(&range.end_ip))
    });
    match given {
        None | Some((None, None)) => {}
        Some((Some(Ok(from)), Some(Ok(to)))) if start <= from && to <= end => return Ok(()),
        Some(_) => {
            return Err(invalid(&format!(
                "the address range given is not inside this host's range {start}-{end} \
                 (the blocks its certificate grants)"
            )))
        }
    }
    subnet.lease_range = Some(LeaseRange {
        start_ip: Some(start.to_string()),
        end_ip: Some(end.to_string()),
    });
    Ok(())
}

/// The Flatnet configuration a (normalised) netavark network describes.
pub fn config_of(network: &Network) -> Result<FlatnetConfig, Error> {
    let options = network.options.clone().unwrap_or_default();
    if let Some(unknown) = options.keys().find(|k| !OPTIONS.contains(&k.as_str())) {
        return Err(invalid(&format!(
            "unknown option {unknown:?}; Flatnet networks take {}",
            OPTIONS.join(", ")
        )));
    }
    refuse_unsupported(network)?;
    let subnets = network
        .subnets
        .iter()
        .flatten()
        .map(|s| SubnetInput::new(s.subnet.to_string(), s.gateway.map(|g| g.to_string())));
    let option = |key: &str| options.get(key).cloned();
    // `podman network create --dns` names the network's upstream resolvers, as `-o dns_upstreams`.
    let dns_servers = network.network_dns_servers.as_deref().unwrap_or_default();
    let dns_upstreams = match (option("dns_upstreams"), dns_servers) {
        (Some(_), [_, ..]) => {
            return Err(invalid(
                "give the upstream resolvers once: --dns or -o dns_upstreams, not both",
            ))
        }
        (Some(list), []) => Some(list),
        (None, []) => None,
        (None, servers) => Some(
            servers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ),
    };
    FlatnetConfig::from_input(ConfigInput {
        network: network.name.clone(),
        subnets: subnets.collect(),
        mtu: option("mtu"),
        state_dir: option("state_dir"),
        lighthouse: LighthouseInput {
            lighthouse: option("lighthouse"),
            etcd_endpoints: option("etcd_endpoints"),
            etcd_ca_file: option("etcd_ca_file"),
            etcd_cert_file: option("etcd_cert_file"),
            etcd_key_file: option("etcd_key_file"),
            lease_ttl: option("lease_ttl"),
            network_ca_file: option("network_ca_file"),
            host_cert_file: option("host_cert_file"),
        },
        tunnel_port: option("tunnel_port"),
        endpoint: option("endpoint"),
        internal: network.internal,
        ingress_filter: Some(option(INGRESS_FILTER).unwrap_or_else(|| "false".to_string())),
        dns_upstreams,
    })
}

/// Network fields netavark carries that a Flatnet network cannot honour: refused, not ignored.
fn refuse_unsupported(network: &Network) -> Result<(), Error> {
    if network
        .network_interface
        .as_deref()
        .is_some_and(|i| !i.is_empty())
    {
        return Err(invalid(
            "a Flatnet network has no host interface to name (--interface-name)",
        ));
    }
    if network.routes.as_ref().is_some_and(|r| !r.is_empty()) {
        return Err(invalid(
            "extra routes (--route) are not supported on Flatnet networks",
        ));
    }
    let ipam = network.ipam_options.as_ref();
    match ipam.and_then(|o| o.get("driver")).map(String::as_str) {
        None | Some("host-local") => Ok(()),
        Some(other) => Err(invalid(&format!(
            "IPAM driver {other:?} is not supported: Flatnet networks use host-local addressing"
        ))),
    }
}

/// Per-container network options (`--network NAME:opt=value`) beyond the interface name.
pub fn refuse_container_options(options: &PerNetworkOptions) -> Result<(), Error> {
    match options.options.as_ref().and_then(|o| o.keys().next()) {
        Some(key) => Err(Error::InvalidRequest(format!(
            "per-container network option {key:?} is not supported on Flatnet networks"
        ))),
        None => Ok(()),
    }
}

/// The container's DNS names on the network: its name, then its aliases.
pub fn names(opts: &NetworkPluginExec) -> Vec<String> {
    let aliases = opts.network_options.aliases.iter().flatten();
    std::iter::once(&opts.container_name)
        .chain(aliases)
        .filter(|name| !name.is_empty())
        .cloned()
        .collect()
}

/// `podman run -p` as netavark passes it (`range` counts ports, 0 or 1 for one).
pub fn ports(opts: &NetworkPluginExec) -> Result<Vec<PortMapping>, Error> {
    let mappings = opts.port_mappings.iter().flatten();
    mappings
        .map(|m| {
            PortMapping::new(
                &m.host_ip,
                m.host_port,
                m.container_port,
                &m.protocol,
                m.range,
            )
        })
        .collect()
}

/// The addresses Podman picked (it allocates whenever the network has subnets, one per
/// subnet) or `--ip`/`--ip6` asked for; the core matches them to the subnets.
pub fn static_ips(options: &PerNetworkOptions) -> Result<Vec<IpAddr>, Error> {
    if options.static_mac.as_deref().is_some_and(|m| !m.is_empty()) {
        return Err(Error::InvalidRequest(
            "Flatnet interfaces are layer-3 TUN devices and cannot take a MAC address".into(),
        ));
    }
    Ok(options.static_ips.clone().unwrap_or_default())
}

pub fn status_block(attachment: &Attachment) -> StatusBlock {
    let addresses = attachment.addresses.iter().zip(&attachment.gateways);
    let subnets = addresses
        .map(|(address, gateway)| NetAddress {
            gateway: Some(*gateway),
            ipnet: *address,
        })
        .collect();
    let interface = NetInterface {
        mac_address: attachment.mac.clone(),
        subnets: Some(subnets),
    };
    // Podman writes these into the container's resolv.conf (unless `--dns` overrides them).
    StatusBlock {
        dns_search_domains: Some(Vec::new()),
        dns_server_ips: Some(attachment.gateways.clone()),
        interfaces: Some(HashMap::from([(attachment.ifname.clone(), interface)])),
    }
}

fn invalid(msg: &str) -> Error {
    Error::InvalidConfig(msg.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(json: serde_json::Value) -> Network {
        serde_json::from_value(json).unwrap()
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "name": "flat", "id": "abc123", "driver": "flatnet",
            "dns_enabled": false, "internal": false, "ipv6_enabled": false,
        })
    }

    #[test]
    fn create_fills_subnet_and_gateway_and_keeps_identity() {
        let out = normalise(network(base())).unwrap();
        assert_eq!(
            (out.name.as_str(), out.id.as_str(), out.driver.as_str()),
            ("flat", "abc123", "flatnet")
        );
        let subnet = &out.subnets.unwrap()[0];
        assert_eq!(subnet.subnet.to_string(), DEFAULT_SUBNET);
        assert_eq!(subnet.gateway.unwrap().to_string(), "10.77.0.1");
        assert!(
            out.dns_enabled,
            "Podman refuses aliases on networks without DNS"
        );
    }

    #[test]
    fn podman_network_dns_names_the_upstreams() {
        let mut json = base();
        json["network_dns_servers"] = serde_json::json!(["192.0.2.53", "198.51.100.53"]);
        json["ipam_options"] = serde_json::json!({"driver": "host-local"});
        let config = config_of(&normalise(network(json)).unwrap()).unwrap();
        let want = ["192.0.2.53:53", "198.51.100.53:53"].map(|a| a.parse().unwrap());
        assert_eq!(config.dns_upstreams, Some(want.to_vec()));
    }

    #[test]
    fn per_container_options_are_refused() {
        let mut opts = exec(serde_json::json!({})).network_options;
        assert!(refuse_container_options(&opts).is_ok());
        opts.options = Some(HashMap::from([("mtu".to_string(), "9000".to_string())]));
        let err = refuse_container_options(&opts).unwrap_err().to_string();
        assert!(err.contains("mtu"), "{err}");
    }

    #[test]
    fn internal_and_dns_upstreams_reach_the_config() {
        let mut json = base();
        json["internal"] = serde_json::json!(true);
        json["options"] = serde_json::json!({"dns_upstreams": "192.0.2.53"});
        let config = config_of(&normalise(network(json)).unwrap()).unwrap();
        assert!(config.internal);
        assert_eq!(
            config.dns_upstreams,
            Some(vec!["192.0.2.53:53".parse().unwrap()])
        );
    }

    #[test]
    fn new_networks_get_the_ingress_filter_and_older_ones_keep_routed_access() {
        let created = normalise(network(base())).unwrap();
        let recorded = created.options.as_ref().unwrap().get(INGRESS_FILTER);
        assert_eq!(recorded.map(String::as_str), Some("true"));
        assert!(config_of(&created).unwrap().ingress_filter);

        let mut opted_out = base();
        opted_out["options"] = serde_json::json!({"ingress_filter": "false"});
        let created = normalise(network(opted_out)).unwrap();
        assert!(!config_of(&created).unwrap().ingress_filter);

        // A network from before the option: created, as Podman stored it, without it.
        let mut older = created.clone();
        older.options.as_mut().unwrap().remove(INGRESS_FILTER);
        assert!(!config_of(&older).unwrap().ingress_filter);

        let mut bad = base();
        bad["options"] = serde_json::json!({"ingress_filter": "on"});
        let err = normalise(network(bad)).unwrap_err().to_string();
        assert!(err.contains("ingressFilter"), "{err}");
    }

    fn exec(json: serde_json::Value) -> NetworkPluginExec {
        let mut full = serde_json::json!({
            "container_id": "c1", "container_name": "web",
            "network": base(),
            "network_options": {"interface_name": "eth0", "aliases": ["www", "front"]},
        });
        for (k, v) in json.as_object().unwrap() {
            full[k] = v.clone();
        }
        serde_json::from_value(full).unwrap()
    }

    #[test]
    fn names_are_the_container_name_then_its_aliases() {
        assert_eq!(names(&exec(serde_json::json!({}))), ["web", "www", "front"]);
    }

    #[test]
    fn port_mappings_translate_with_ranges_and_protocols() {
        let opts = exec(serde_json::json!({"port_mappings": [
            {"host_ip": "", "container_port": 80, "host_port": 8080, "range": 1, "protocol": "tcp"},
            {"host_ip": "127.0.0.1", "container_port": 9000, "host_port": 9000, "range": 3, "protocol": "udp"},
        ]}));
        let printed: Vec<String> = ports(&opts)
            .unwrap()
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(
            printed,
            ["8080:80/tcp", "127.0.0.1:9000-9002:9000-9002/udp"]
        );
        let sctp = exec(serde_json::json!({"port_mappings": [
            {"host_ip": "", "container_port": 80, "host_port": 80, "range": 1, "protocol": "sctp"},
        ]}));
        assert!(ports(&sctp).unwrap_err().to_string().contains("sctp"));
    }

    #[test]
    fn create_rejects_bad_networks() {
        let mut link_local = base();
        link_local["subnets"] = serde_json::json!([{"subnet": "fe80::/64"}]);
        let mut wide = base();
        wide["subnets"] = serde_json::json!([{"subnet": "fd00::/32"}]);
        let mut unknown = base();
        unknown["options"] = serde_json::json!({"colour": "blue"});
        let mut bad_mtu = base();
        bad_mtu["options"] = serde_json::json!({"mtu": "9"});
        let mut two = base();
        two["subnets"] =
            serde_json::json!([{"subnet": "192.0.2.0/24"}, {"subnet": "198.51.100.0/24"}]);
        let mut routes = base();
        routes["routes"] =
            serde_json::json!([{"destination": "192.0.2.0/24", "gateway": "10.77.0.1"}]);
        let mut parent = base();
        parent["network_interface"] = serde_json::json!("eth0");
        let mut dhcp = base();
        dhcp["ipam_options"] = serde_json::json!({"driver": "dhcp"});
        let mut twice = base();
        twice["network_dns_servers"] = serde_json::json!(["192.0.2.53"]);
        twice["options"] = serde_json::json!({"dns_upstreams": "192.0.2.54"});
        for (case, needle) in [
            (link_local, "link-local"),
            (wide, "/48 to /120"),
            (unknown, "colour"),
            (bad_mtu, "mtu"),
            (two, "at most one IPv4 and one IPv6"),
            (routes, "--route"),
            (parent, "--interface-name"),
            (dhcp, "dhcp"),
            (twice, "not both"),
        ] {
            let err = normalise(network(case)).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn static_addresses() {
        let mut opts = PerNetworkOptions {
            aliases: None,
            interface_name: "eth0".into(),
            static_ips: Some(vec!["10.77.0.9".parse().unwrap()]),
            static_mac: None,
            options: None,
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(static_ips(&opts).unwrap(), [ip("10.77.0.9")]);
        opts.static_ips = Some(vec![ip("10.77.0.9"), ip("fd77::9")]);
        assert_eq!(static_ips(&opts).unwrap(), [ip("10.77.0.9"), ip("fd77::9")]);
        opts.static_mac = Some("02:00:00:00:00:01".into());
        assert!(static_ips(&opts).is_err());
    }

    #[test]
    fn ipv6_makes_a_dual_stack_network_with_gateways() {
        let mut asked = base();
        asked["ipv6_enabled"] = serde_json::json!(true);
        let out = normalise(network(asked)).unwrap();
        let subnets = out.subnets.unwrap();
        let text: Vec<(String, String)> = subnets
            .iter()
            .map(|s| (s.subnet.to_string(), s.gateway.unwrap().to_string()))
            .collect();
        assert_eq!(
            text,
            [
                (DEFAULT_SUBNET.to_string(), "10.77.0.1".to_string()),
                (DEFAULT_SUBNET6.to_string(), "fd77::1".to_string())
            ]
        );
        // An IPv6 subnet alone makes an IPv6-only network, marked as IPv6.
        let mut only = base();
        only["subnets"] = serde_json::json!([{"subnet": "fd78::/64"}]);
        let out = normalise(network(only)).unwrap();
        assert!(out.ipv6_enabled);
        assert_eq!(
            out.subnets.unwrap()[0].gateway.unwrap().to_string(),
            "fd78::1"
        );
    }
}
