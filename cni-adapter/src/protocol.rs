//! The CNI wire format: the network config the runtime sends on stdin, the result and error
//! objects the plugin prints, in the config's own spec version.

use std::collections::HashMap;
use std::net::IpAddr;

use flatnet::config::SubnetInput;
use flatnet::lighthouse::LighthouseInput;
use flatnet::{Attachment, ConfigInput, Error, FlatnetConfig, PortMapping};
use serde::Deserialize;
use serde_json::{json, Value};

/// Spec versions whose configs this plugin accepts and whose results it can write.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];
const LATEST: &str = "1.1.0";

/// Error codes the CNI spec defines, plus Flatnet's own (100 and up).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const CONTAINER_UNKNOWN: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN: u32 = 11;
    /// STATUS: ADD cannot be served.
    pub const NOT_AVAILABLE: u32 = 50;
    /// STATUS: ADD cannot be served, and running containers have no data plane either.
    pub const NOT_AVAILABLE_CONTAINERS_AFFECTED: u32 = 51;
    pub const ADDRESS_EXHAUSTED: u32 = 100;
    pub const ADDRESS_IN_USE: u32 = 101;
    pub const CHECK_FAILED: u32 = 102;
    pub const ALREADY_ATTACHED: u32 = 103;
    pub const PORT_IN_USE: u32 = 104;
    /// A rootless user asked for what the operator did not grant.
    pub const NOT_PERMITTED: u32 = 105;
}

/// A CNI error: printed as the spec's error object on stdout, with a non-zero exit.
#[derive(Debug)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

impl From<Error> for CniError {
    fn from(err: Error) -> Self {
        let code = match &err {
            Error::InvalidConfig(_) => code::INVALID_CONFIG,
            Error::InvalidRequest(_) => code::INVALID_ENV,
            Error::NetnsNotFound(_) => code::CONTAINER_UNKNOWN,
            Error::AddressExhausted { .. } => code::ADDRESS_EXHAUSTED,
            Error::AddressInUse { .. } => code::ADDRESS_IN_USE,
            Error::AlreadyAttached { .. } => code::ALREADY_ATTACHED,
            Error::PortInUse { .. } => code::PORT_IN_USE,
            Error::NotPermitted(_) => code::NOT_PERMITTED,
            Error::CheckFailed(_) => code::CHECK_FAILED,
            Error::NetnsReplaced(_) => code::CONTAINER_UNKNOWN,
            Error::DaemonUnavailable(_)
            | Error::DaemonAlreadyRunning(_)
            | Error::Refused(_)
            | Error::LighthouseUnavailable(_) => code::TRY_AGAIN,
            Error::Io { source, .. } if is_transient(source) => code::TRY_AGAIN,
            Error::Netlink { .. }
            | Error::Firewall { .. }
            | Error::Protocol(_)
            | Error::Json { .. }
            | Error::Crypto { .. }
            | Error::Internal(_)
            | Error::Io { .. } => code::IO_FAILURE,
        };
        CniError {
            code,
            msg: err.to_string(),
            details: String::new(),
        }
    }
}

fn is_transient(err: &std::io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EAGAIN | libc::EBUSY))
}

/// The plugin's section of the network configuration (the runtime has already picked it out of
/// the conflist). Unknown keys are ignored, as CNI plugins conventionally do.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    /// The network's one subnet, and its gateway (first host address if left out)...
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    /// ... or its subnets, one IPv4 and one IPv6 at most: a dual-stack network.
    pub subnets: Option<Vec<CniSubnet>>,
    pub mtu: Option<u32>,
    pub state_dir: Option<String>,
    /// A file path, or `etcd` with the `etcd*` keys below.
    pub lighthouse: Option<String>,
    /// `https://host:port` of each etcd member.
    pub etcd_endpoints: Option<Vec<String>>,
    pub etcd_ca_file: Option<String>,
    pub etcd_cert_file: Option<String>,
    pub etcd_key_file: Option<String>,
    /// Seconds a dead host's entries outlive it.
    pub lease_ttl: Option<u32>,
    /// The network CA's certificate and this host's (`flatnet-cert`).
    pub network_ca_file: Option<String>,
    pub host_cert_file: Option<String>,
    pub tunnel_port: Option<u16>,
    pub endpoint: Option<String>,
    /// Containers reach only Flatnet and the host: no default route, no published ports.
    pub internal: Option<bool>,
    /// Drop routed traffic to the containers from outside Flatnet but for published ports and
    /// replies; on unless `false` (a conflist is read at every ADD: there is no creation step
    /// at which an older network could be told apart).
    pub ingress_filter: Option<bool>,
    /// Resolvers for names outside the network (`ip` or `ip:port`); default: the host's.
    pub dns_upstreams: Option<Vec<String>>,
    /// Under a rootless runtime: flatnetd's user socket (default /var/lib/flatnet/user.sock);
    /// the network's other settings are then the operator's grant.
    pub user_socket: Option<String>,
    /// What the runtime fills in for the capabilities the conflist declares.
    pub runtime_config: Option<RuntimeConfig>,
    pub prev_result: Option<Value>,
    /// GC: the attachments the runtime still knows about.
    #[serde(rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

/// One subnet of `subnets`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CniSubnet {
    pub subnet: String,
    pub gateway: Option<String>,
}

/// `portMappings` and `aliases` capabilities (the CNI conventions' shapes).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    #[serde(default)]
    pub port_mappings: Vec<CniPortMapping>,
    /// Network name -> the container's aliases on it (Podman's `--network-alias`).
    #[serde(default)]
    pub aliases: HashMap<String, Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniPortMapping {
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default)]
    pub protocol: String,
    #[serde(rename = "hostIP", default)]
    pub host_ip: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Part of the spec's shape; Flatnet keys attachments by container alone.
    pub ifname: Option<String>,
}

impl NetConf {
    /// Decodes stdin: unparsable JSON is a decode failure (6), a well-formed config with wrong
    /// fields is an invalid config (7), an unknown spec version is incompatible (1).
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODE_FAILURE,
                format!("network config is not JSON: {e}"),
            )
        })?;
        let conf: NetConf = serde_json::from_value(value)
            .map_err(|e| CniError::new(code::INVALID_CONFIG, format!("network config: {e}")))?;
        check_version(&conf.cni_version)?;
        Ok(conf)
    }

    /// The core's configuration of the network this plugin configuration describes: where
    /// every command starts, and what `flatnetd check` reads a conflist's entries with.
    pub fn flatnet_config(&self) -> Result<FlatnetConfig, CniError> {
        Ok(FlatnetConfig::from_input(self.config_input()?)?)
    }

    pub fn config_input(&self) -> Result<ConfigInput, CniError> {
        Ok(ConfigInput {
            network: self.name.clone(),
            subnets: self.subnet_inputs()?,
            mtu: self.mtu.map(|v| v.to_string()),
            state_dir: self.state_dir.clone(),
            lighthouse: LighthouseInput {
                lighthouse: self.lighthouse.clone(),
                etcd_endpoints: self.etcd_endpoints.as_ref().map(|list| list.join(",")),
                etcd_ca_file: self.etcd_ca_file.clone(),
                etcd_cert_file: self.etcd_cert_file.clone(),
                etcd_key_file: self.etcd_key_file.clone(),
                lease_ttl: self.lease_ttl.map(|v| v.to_string()),
                network_ca_file: self.network_ca_file.clone(),
                host_cert_file: self.host_cert_file.clone(),
            },
            tunnel_port: self.tunnel_port.map(|v| v.to_string()),
            endpoint: self.endpoint.clone(),
            internal: self.internal.unwrap_or(false),
            ingress_filter: self.ingress_filter.map(|on| on.to_string()),
            dns_upstreams: self.dns_upstreams.as_ref().map(|list| list.join(",")),
        })
    }

    /// `subnet` and `gateway`, or `subnets`: not both.
    fn subnet_inputs(&self) -> Result<Vec<SubnetInput>, CniError> {
        match (&self.subnet, &self.subnets) {
            (Some(_), Some(_)) => Err(CniError::new(
                code::INVALID_CONFIG,
                "network config has both subnet and subnets: give one",
            )),
            (None, Some(_)) if self.gateway.is_some() => Err(CniError::new(
                code::INVALID_CONFIG,
                "network config has gateway beside subnets: give each subnet its gateway",
            )),
            (Some(subnet), None) => Ok(vec![SubnetInput::new(subnet, self.gateway.clone())]),
            (None, Some(subnets)) if subnets.is_empty() => Err(CniError::new(
                code::INVALID_CONFIG,
                "network config has an empty subnets list",
            )),
            (None, Some(subnets)) => Ok(subnets
                .iter()
                .map(|s| SubnetInput::new(&s.subnet, s.gateway.clone()))
                .collect()),
            (None, None) if self.gateway.is_some() => Err(CniError::new(
                code::INVALID_CONFIG,
                "network config has a gateway but no subnet",
            )),
            (None, None) => Ok(Vec::new()),
        }
    }

    /// Published ports from `runtimeConfig.portMappings` (Podman sends one per port of a range).
    pub fn port_mappings(&self) -> Result<Vec<PortMapping>, CniError> {
        let mappings = self.runtime_config.iter().flat_map(|r| &r.port_mappings);
        mappings
            .map(|m| PortMapping::new(&m.host_ip, m.host_port, m.container_port, &m.protocol, 1))
            .collect::<Result<_, _>>()
            .map_err(CniError::from)
    }

    /// The container's aliases on this network.
    pub fn aliases(&self) -> Vec<String> {
        self.runtime_config
            .as_ref()
            .and_then(|r| r.aliases.get(&self.name))
            .cloned()
            .unwrap_or_default()
    }
}

/// A chained plugin's ADD result: what the plugins before it reported (`prevResult`), then this
/// plugin's interface, address and routes, its address pointing at its interface's new index.
pub fn chain_result(ours: Value, prev: Option<&Value>) -> Value {
    let Some(prev) = prev else {
        return ours;
    };
    let list = |v: &Value, key: &str| v[key].as_array().cloned().unwrap_or_default();
    let mut merged = ours.clone();
    let mut interfaces = list(prev, "interfaces");
    let shift = interfaces.len() as u64;
    interfaces.extend(list(&ours, "interfaces"));
    let mut ips = list(prev, "ips");
    ips.extend(list(&ours, "ips").into_iter().map(|mut ip| {
        if let Some(index) = ip["interface"].as_u64() {
            ip["interface"] = json!(index + shift);
        }
        ip
    }));
    let mut routes = list(prev, "routes");
    routes.extend(list(&ours, "routes"));
    let mut nameservers = list(&prev["dns"], "nameservers");
    for server in list(&ours["dns"], "nameservers") {
        if !nameservers.contains(&server) {
            nameservers.push(server);
        }
    }
    merged["interfaces"] = json!(interfaces);
    merged["ips"] = json!(ips);
    merged["routes"] = json!(routes);
    let mut dns = prev.get("dns").cloned().unwrap_or_else(|| json!({}));
    dns["nameservers"] = json!(nameservers);
    merged["dns"] = dns;
    merged
}

/// CHECK against the ADD result the runtime kept: it must list the interface `ifname` and, on
/// it, the address the interface has now.
pub fn check_prev_result(prev: &Value, ifname: &str, address: &str) -> Result<(), CniError> {
    let failed = |msg: String| Err(CniError::new(code::CHECK_FAILED, msg));
    let interfaces = prev["interfaces"].as_array().cloned().unwrap_or_default();
    let Some(index) = interfaces.iter().position(|i| i["name"] == ifname) else {
        return failed(format!("prevResult has no interface {ifname}"));
    };
    let reported: Vec<&str> = prev["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|ip| ip["interface"].as_u64() == Some(index as u64))
        .filter_map(|ip| ip["address"].as_str())
        .collect();
    if reported.contains(&address) {
        Ok(())
    } else {
        failed(format!(
            "prevResult reports {reported:?} on {ifname}, the interface has {address}"
        ))
    }
}

pub fn check_version(version: &str) -> Result<(), CniError> {
    if SUPPORTED_VERSIONS.contains(&version) {
        Ok(())
    } else {
        Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {version:?} is not supported; use one of {}",
                SUPPORTED_VERSIONS.join(", ")
            ),
        ))
    }
}

/// The answer to VERSION, in the version the runtime spoke (or the latest).
pub fn version_result(stdin: &[u8]) -> Value {
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST.to_string());
    json!({ "cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS })
}

/// The ADD result for an attachment, shaped for the config's spec version.
pub fn add_result(version: &str, attachment: &Attachment, sandbox: &str) -> Value {
    let mut interface = json!({
        "name": attachment.ifname,
        "mac": attachment.mac,
        "sandbox": sandbox,
    });
    if version == "1.1.0" {
        interface["mtu"] = json!(attachment.mtu);
    }
    let subnets = attachment.addresses.iter().zip(&attachment.gateways);
    let mut ips = Vec::new();
    let mut routes = Vec::new();
    for (address, gateway) in subnets.clone() {
        let mut ip = json!({
            "address": address.to_string(),
            "gateway": gateway.to_string(),
            "interface": 0,
        });
        if version == "0.4.0" {
            ip["version"] = json!(if address.addr().is_ipv4() { "4" } else { "6" });
        }
        ips.push(ip);
        routes.push(json!({ "dst": address.trunc().to_string() }));
    }
    if attachment.egress {
        for (address, gateway) in subnets {
            let everywhere = if address.addr().is_ipv4() {
                "0.0.0.0/0"
            } else {
                "::/0"
            };
            routes.push(json!({ "dst": everywhere, "gw": gateway.to_string() }));
        }
    }
    json!({
        "cniVersion": version,
        "interfaces": [interface],
        "ips": ips,
        "routes": routes,
        // flatnetd answers DNS at the gateway addresses.
        "dns": { "nameservers": attachment.gateways.iter().map(ToString::to_string).collect::<Vec<_>>() },
    })
}

/// Options from CNI_ARGS (`K=V;K=V`): `IP` asks for static addresses, comma-separated, one
/// per subnet (Podman's `--ip`, `--ip6`);
/// `K8S_POD_NAME` is the container's name (Podman sets it), which becomes a DNS name.
#[derive(Debug, Default, PartialEq)]
pub struct CniArgs {
    pub ips: Vec<IpAddr>,
    pub name: Option<String>,
}

impl CniArgs {
    pub fn parse(text: &str) -> Result<Self, CniError> {
        let mut args = CniArgs::default();
        for pair in text.split(';').filter(|p| !p.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("CNI_ARGS entry {pair:?} is not KEY=VALUE"),
                ));
            };
            match key {
                "IP" => {
                    for one in value.split(',').filter(|v| !v.is_empty()) {
                        let addr = one.split('/').next().unwrap_or(one);
                        args.ips.push(addr.parse().map_err(|_| {
                            CniError::new(
                                code::INVALID_ENV,
                                format!("CNI_ARGS IP={value:?}: {one:?} is not an IP address"),
                            )
                        })?);
                    }
                }
                "MAC" => {
                    return Err(CniError::new(
                        code::INVALID_ENV,
                        "Flatnet interfaces are layer-3 TUN devices and cannot take a MAC address",
                    ))
                }
                "K8S_POD_NAME" if !value.is_empty() => args.name = Some(value.to_string()),
                _ => {} // IgnoreUnknown and the like carry nothing for Flatnet
            }
        }
        Ok(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment() -> Attachment {
        Attachment {
            version: 1,
            network: "flat".into(),
            network_id: 1,
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: "/run/netns/x".into(),
            addresses: vec!["10.77.0.5/16".parse().unwrap()],
            gateways: vec!["10.77.0.1".parse().unwrap()],
            mac: "02:46:0a:4d:00:05".into(),
            mtu: 1416,
            names: vec!["web".into()],
            ports: Vec::new(),
            egress: true,
            netns_id: None,
            owner: None,
        }
    }

    #[test]
    fn result_shapes_follow_the_spec_version() {
        let r = add_result("1.0.0", &attachment(), "/run/netns/x");
        assert_eq!(r["cniVersion"], "1.0.0");
        assert_eq!(r["ips"][0]["address"], "10.77.0.5/16");
        assert_eq!(r["ips"][0]["gateway"], "10.77.0.1");
        assert_eq!(r["ips"][0]["interface"], 0);
        assert!(r["ips"][0].get("version").is_none());
        assert!(r["interfaces"][0].get("mtu").is_none());
        assert_eq!(r["interfaces"][0]["sandbox"], "/run/netns/x");
        assert_eq!(r["routes"][0]["dst"], "10.77.0.0/16");
        assert_eq!(r["routes"][1]["dst"], "0.0.0.0/0");
        assert_eq!(r["routes"][1]["gw"], "10.77.0.1");
        assert_eq!(r["dns"]["nameservers"][0], "10.77.0.1");
        let internal = Attachment {
            egress: false,
            ..attachment()
        };
        let r = add_result("1.0.0", &internal, "/run/netns/x");
        assert_eq!(r["routes"].as_array().unwrap().len(), 1);

        let r = add_result("0.4.0", &attachment(), "/run/netns/x");
        assert_eq!(r["ips"][0]["version"], "4");
        let r = add_result("1.1.0", &attachment(), "/run/netns/x");
        assert_eq!(r["interfaces"][0]["mtu"], 1416);
    }

    #[test]
    fn a_chained_result_keeps_what_came_before_and_checks_against_it() {
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "lo"}, {"name": "bond0", "sandbox": "/run/netns/x"}],
            "ips": [{"address": "192.0.2.9/24", "interface": 1}],
            "routes": [{"dst": "192.0.2.0/24"}],
            "dns": {"nameservers": ["192.0.2.53"], "search": ["example.org"]},
        });
        let ours = add_result("1.0.0", &attachment(), "/run/netns/x");
        let merged = chain_result(ours.clone(), Some(&prev));
        assert_eq!(merged["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(merged["interfaces"][2]["name"], "eth0");
        assert_eq!(merged["ips"][0]["address"], "192.0.2.9/24");
        assert_eq!(merged["ips"][1]["address"], "10.77.0.5/16");
        assert_eq!(
            merged["ips"][1]["interface"], 2,
            "our address points at our interface"
        );
        assert_eq!(merged["routes"][0]["dst"], "192.0.2.0/24");
        assert_eq!(merged["routes"].as_array().unwrap().len(), 3);
        assert_eq!(
            merged["dns"]["nameservers"],
            json!(["192.0.2.53", "10.77.0.1"])
        );
        assert_eq!(merged["dns"]["search"], json!(["example.org"]));
        assert_eq!(chain_result(ours.clone(), None), ours);

        assert!(check_prev_result(&merged, "eth0", "10.77.0.5/16").is_ok());
        let moved = check_prev_result(&merged, "eth0", "10.77.0.6/16").unwrap_err();
        assert_eq!(moved.code, code::CHECK_FAILED);
        assert!(check_prev_result(&prev, "eth0", "10.77.0.5/16").is_err());
        // The address on another interface does not count.
        assert!(check_prev_result(&merged, "bond0", "10.77.0.5/16").is_err());
    }

    #[test]
    fn mac_is_locally_administered_unicast() {
        let mac = attachment().mac;
        let first = u8::from_str_radix(&mac[..2], 16).unwrap();
        assert_eq!(first & 0b11, 0b10);
        assert_eq!(mac.split(':').count(), 6);
    }

    /// What a runtime may retry is told apart from what it may not: a data plane that cannot
    /// be had now is "try again"; a damaged state file is an I/O failure; a reused namespace
    /// path means the container is unknown.
    #[test]
    fn core_errors_map_to_what_the_runtime_should_do() {
        let damaged = serde_json::from_str::<Value>("{").unwrap_err();
        let cases = [
            (Error::DaemonUnavailable("no".into()), code::TRY_AGAIN),
            (Error::DaemonAlreadyRunning("/s".into()), code::TRY_AGAIN),
            (Error::Refused("no".into()), code::TRY_AGAIN),
            (
                Error::Json {
                    context: "parsing x".into(),
                    source: damaged,
                },
                code::IO_FAILURE,
            ),
            (Error::NetnsReplaced("/n".into()), code::CONTAINER_UNKNOWN),
            (Error::Internal("panic".into()), code::IO_FAILURE),
        ];
        for (err, want) in cases {
            let shown = err.to_string();
            let cni = CniError::from(err);
            assert_eq!(cni.code, want, "{shown}");
            assert_eq!(cni.msg, shown);
        }
    }

    #[test]
    fn decode_errors_have_the_spec_codes() {
        assert_eq!(
            NetConf::parse(b"{nope").unwrap_err().code,
            code::DECODE_FAILURE
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"1.0.0","type":"flatnet-cni"}"#)
                .unwrap_err()
                .code,
            code::INVALID_CONFIG
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"x","mtu":"big"}"#)
                .unwrap_err()
                .code,
            code::INVALID_CONFIG
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"9.9.9","name":"n","type":"x"}"#)
                .unwrap_err()
                .code,
            code::INCOMPATIBLE_VERSION
        );
        let ok = NetConf::parse(br#"{"cniVersion":"0.4.0","name":"n","type":"x","extra":1}"#);
        assert!(ok.is_ok());
    }

    #[test]
    fn error_json_has_the_spec_fields() {
        let e = CniError::new(code::INVALID_ENV, "CNI_NETNS is missing").to_json("1.0.0");
        assert_eq!(e["cniVersion"], "1.0.0");
        assert_eq!(e["code"], 4);
        assert_eq!(e["msg"], "CNI_NETNS is missing");
    }

    #[test]
    fn version_answer_lists_supported_versions() {
        let v = version_result(br#"{"cniVersion":"1.0.0"}"#);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 3);
        assert_eq!(version_result(b"")["cniVersion"], "1.1.0");
    }

    #[test]
    fn runtime_config_gives_ports_and_aliases() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"flatnet-cni","internal":true,
                "dnsUpstreams":["192.0.2.53"],
                "runtimeConfig":{"portMappings":[
                    {"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":"127.0.0.1"},
                    {"hostPort":5353,"containerPort":53,"protocol":"udp"}],
                 "aliases":{"n":["www"],"other":["nope"]}}}"#,
        )
        .unwrap();
        let ports: Vec<String> = conf
            .port_mappings()
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(ports, ["127.0.0.1:8080:80/tcp", "5353:53/udp"]);
        assert_eq!(conf.aliases(), ["www"]);
        let input = conf.config_input().unwrap();
        assert!(input.internal);
        assert_eq!(input.dns_upstreams.as_deref(), Some("192.0.2.53"));
    }

    #[test]
    fn the_ingress_filter_is_on_unless_the_conflist_turns_it_off() {
        let conf = |extra: &str| {
            let text =
                format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"flatnet-cni"{extra}}}"#);
            NetConf::parse(text.as_bytes())
        };
        let filtered = |extra| {
            conf(extra)
                .unwrap()
                .flatnet_config()
                .unwrap()
                .ingress_filter
        };
        assert!(filtered(""));
        assert!(!filtered(r#","ingressFilter":false"#));
        let err = conf(r#","ingressFilter":"no""#).unwrap_err();
        assert_eq!(err.code, code::INVALID_CONFIG);
    }

    #[test]
    fn cni_args() {
        let a = CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.77.0.9").unwrap();
        assert_eq!(a.ips, ["10.77.0.9".parse::<IpAddr>().unwrap()]);
        let two = CniArgs::parse("IP=10.77.0.9/16,fd77::9").unwrap();
        assert_eq!(two.ips.len(), 2);
        assert!(two.ips[1].is_ipv6());
        assert_eq!(a.name.as_deref(), Some("web"));
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
        assert_eq!(
            CniArgs::parse("IP=nope").unwrap_err().code,
            code::INVALID_ENV
        );
        assert_eq!(
            CniArgs::parse("garbage").unwrap_err().code,
            code::INVALID_ENV
        );
        assert_eq!(
            CniArgs::parse("MAC=02:00:00:00:00:01").unwrap_err().code,
            code::INVALID_ENV
        );
    }
}
