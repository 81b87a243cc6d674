//! Which lighthouse a network uses, as every front end spells it: a file path keeps the file
//! lighthouse; `etcd` plus endpoints and TLS files selects an etcd cluster. The same settings
//! reach `flatnetd` as flags and are kept in its `flatnetd.json`.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How long a host's entries outlive its last keepalive: a dead host vanishes from the other
/// hosts' route tables after this long. Short enough that traffic stops going into a black
/// hole within seconds, long enough that a daemon restart (or an etcd leader election, about
/// a second) does not drop every route of a host.
pub const DEFAULT_LEASE_TTL_S: u32 = 10;
const LEASE_TTL_RANGE: std::ops::RangeInclusive<u32> = 5..=3600;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LighthouseSettings {
    /// The file lighthouse at this path.
    File(PathBuf),
    Etcd(EtcdSettings),
}

/// An etcd cluster reached over TLS with a client certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSettings {
    /// `https://host:port` of each member.
    pub endpoints: Vec<String>,
    /// The CA that signed the members' certificates.
    pub ca_file: PathBuf,
    /// This host's client certificate and key (etcd's user is the certificate's common name).
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub lease_ttl_s: u32,
    /// The network CA's certificate (`flatnet-cert ca`): the trust root for every entry.
    pub network_ca_file: PathBuf,
    /// This host's certificate: its name, key and address blocks, signed by the network CA.
    pub host_cert_file: PathBuf,
}

/// The settings as text, the way a front end reads them; `None` is "not given". The flags are
/// flatnetd's (`--lighthouse`, `--etcd-endpoints`, ...); [`LighthouseSettings::daemon_args`]
/// writes them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LighthouseInput {
    /// The lighthouse: a file's path, or `etcd` with the --etcd-* flags
    /// [default: <state-dir>/lighthouse.json, or the last run's]
    #[arg(long)]
    pub lighthouse: Option<String>,
    /// The etcd members, comma-separated https://host:port
    #[arg(long, value_name = "URLS")]
    pub etcd_endpoints: Option<String>,
    /// The CA certificate that signed the etcd members' certificates (PEM)
    #[arg(long, value_name = "FILE")]
    pub etcd_ca_file: Option<String>,
    /// This host's etcd client certificate (PEM)
    #[arg(long, value_name = "FILE")]
    pub etcd_cert_file: Option<String>,
    /// This host's etcd client key (PEM)
    #[arg(long, value_name = "FILE")]
    pub etcd_key_file: Option<String>,
    /// Seconds this host's entries outlive it after its last keepalive to etcd [default: 10]
    #[arg(long, value_name = "SECS")]
    pub lease_ttl: Option<String>,
    /// The network CA's certificate, which every host's certificate must be signed by (etcd)
    #[arg(long, value_name = "FILE")]
    pub network_ca_file: Option<String>,
    /// This host's certificate from `flatnet-cert sign`: its name, key and blocks (etcd)
    #[arg(long, value_name = "FILE")]
    pub host_cert_file: Option<String>,
}

impl LighthouseInput {
    /// Whether any etcd setting is given (they make sense only with `lighthouse = etcd`).
    pub fn etcd_options_given(&self) -> bool {
        [
            &self.etcd_endpoints,
            &self.etcd_ca_file,
            &self.etcd_cert_file,
            &self.etcd_key_file,
            &self.lease_ttl,
            &self.network_ca_file,
            &self.host_cert_file,
        ]
        .iter()
        .any(|o| o.is_some())
    }
}

impl LighthouseSettings {
    /// Validates `input`; without a `lighthouse` the file at `default_file` is used.
    pub fn from_input(input: &LighthouseInput, default_file: &Path) -> Result<Self> {
        match input.lighthouse.as_deref().map(str::trim) {
            Some("etcd") => Ok(LighthouseSettings::Etcd(EtcdSettings::from_input(input)?)),
            _ if input.etcd_options_given() => Err(invalid(
                "etcd settings are given but lighthouse is not \"etcd\"".into(),
            )),
            Some(path) => Ok(LighthouseSettings::File(absolute_path("lighthouse", path)?)),
            None => Ok(LighthouseSettings::File(default_file.to_path_buf())),
        }
    }

    pub fn is_etcd(&self) -> bool {
        matches!(self, LighthouseSettings::Etcd(_))
    }

    /// The `flatnetd run` flags that select these settings.
    pub fn daemon_args(&self) -> Vec<OsString> {
        match self {
            LighthouseSettings::File(path) => vec!["--lighthouse".into(), path.into()],
            LighthouseSettings::Etcd(etcd) => vec![
                "--lighthouse".into(),
                "etcd".into(),
                format!("--etcd-endpoints={}", etcd.endpoints.join(",")).into(),
                flag("--etcd-ca-file", &etcd.ca_file),
                flag("--etcd-cert-file", &etcd.cert_file),
                flag("--etcd-key-file", &etcd.key_file),
                format!("--lease-ttl={}", etcd.lease_ttl_s).into(),
                flag("--network-ca-file", &etcd.network_ca_file),
                flag("--host-cert-file", &etcd.host_cert_file),
            ],
        }
    }
}

/// How status shows the lighthouse, and how a plugin compares a running daemon's with its own.
impl fmt::Display for LighthouseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LighthouseSettings::File(path) => write!(f, "{}", path.display()),
            LighthouseSettings::Etcd(etcd) => write!(f, "etcd {}", etcd.endpoints.join(",")),
        }
    }
}

impl EtcdSettings {
    fn from_input(input: &LighthouseInput) -> Result<Self> {
        let endpoints = input
            .etcd_endpoints
            .as_deref()
            .ok_or_else(|| invalid("lighthouse \"etcd\" needs etcd endpoints".into()))?
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(check_endpoint)
            .collect::<Result<Vec<_>>>()?;
        if endpoints.is_empty() {
            return Err(invalid("etcd endpoints are empty".into()));
        }
        let file = |name: &str, value: &Option<String>| {
            let text = value
                .as_deref()
                .ok_or_else(|| invalid(format!("lighthouse \"etcd\" needs {name}")))?;
            absolute_path(name, text)
        };
        let lease_ttl_s = match input.lease_ttl.as_deref() {
            None => DEFAULT_LEASE_TTL_S,
            Some(text) => match text.trim().parse() {
                Ok(ttl) if LEASE_TTL_RANGE.contains(&ttl) => ttl,
                _ => {
                    return Err(invalid(format!(
                        "lease TTL {text:?} must be {} to {} seconds",
                        LEASE_TTL_RANGE.start(),
                        LEASE_TTL_RANGE.end()
                    )))
                }
            },
        };
        Ok(EtcdSettings {
            endpoints,
            ca_file: file("an etcd CA file", &input.etcd_ca_file)?,
            cert_file: file("an etcd client certificate file", &input.etcd_cert_file)?,
            key_file: file("an etcd client key file", &input.etcd_key_file)?,
            lease_ttl_s,
            network_ca_file: file("the network CA's certificate", &input.network_ca_file)?,
            host_cert_file: file("this host's certificate", &input.host_cert_file)?,
        })
    }
}

/// Only TLS: the lighthouse is what every host trusts for routes, and etcd's client
/// certificates are what keeps one host from writing another's entries.
fn check_endpoint(text: &str) -> Result<String> {
    let Some(authority) = text.strip_prefix("https://") else {
        return Err(invalid(format!(
            "etcd endpoint {text:?} must be https://host:port (Flatnet talks to etcd over TLS only)"
        )));
    };
    let (host, port) = authority.rsplit_once(':').unwrap_or((authority, ""));
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(invalid(format!(
            "etcd endpoint {text:?} must be https://host:port"
        )));
    }
    Ok(text.to_string())
}

fn absolute_path(field: &str, text: &str) -> Result<PathBuf> {
    let path = PathBuf::from(text);
    if !path.is_absolute() || path.components().any(|c| c.as_os_str() == "..") {
        return Err(invalid(format!(
            "{field} {text:?} must be an absolute path without '..'"
        )));
    }
    Ok(path)
}

fn flag(name: &str, path: &Path) -> OsString {
    let mut arg = OsString::from(format!("{name}="));
    arg.push(path);
    arg
}

fn invalid(msg: String) -> Error {
    Error::InvalidConfig(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etcd_input() -> LighthouseInput {
        LighthouseInput {
            lighthouse: Some("etcd".into()),
            etcd_endpoints: Some("https://192.0.2.1:2379, https://192.0.2.2:2379".into()),
            etcd_ca_file: Some("/etc/flatnet/etcd-ca.pem".into()),
            etcd_cert_file: Some("/etc/flatnet/etcd.pem".into()),
            etcd_key_file: Some("/etc/flatnet/etcd.key".into()),
            lease_ttl: None,
            network_ca_file: Some("/etc/flatnet/ca.crt".into()),
            host_cert_file: Some("/etc/flatnet/host.crt".into()),
        }
    }

    #[test]
    fn a_path_or_nothing_is_the_file_lighthouse() {
        let default = Path::new("/run/flatnet/lighthouse.json");
        let none = LighthouseSettings::from_input(&LighthouseInput::default(), default).unwrap();
        assert_eq!(none, LighthouseSettings::File(default.into()));
        let input = LighthouseInput {
            lighthouse: Some("/srv/lh.json".into()),
            ..Default::default()
        };
        let file = LighthouseSettings::from_input(&input, default).unwrap();
        assert_eq!(file, LighthouseSettings::File("/srv/lh.json".into()));
        assert_eq!(file.daemon_args(), ["--lighthouse", "/srv/lh.json"]);
    }

    #[test]
    fn etcd_settings_round_trip_through_the_daemon_flags_and_json() {
        let settings = LighthouseSettings::from_input(&etcd_input(), Path::new("/unused")).unwrap();
        let LighthouseSettings::Etcd(etcd) = &settings else {
            panic!("not etcd: {settings:?}");
        };
        assert_eq!(etcd.endpoints.len(), 2);
        assert_eq!(etcd.lease_ttl_s, DEFAULT_LEASE_TTL_S);
        let args = settings.daemon_args();
        assert!(args.contains(&OsString::from("--etcd-ca-file=/etc/flatnet/etcd-ca.pem")));
        let json = serde_json::to_string(&settings).unwrap();
        let back: LighthouseSettings = serde_json::from_str(&json).unwrap();
        assert_eq!(back, settings);
        // flatnetd.json written by an older flatnetd holds a plain path.
        let old: LighthouseSettings = serde_json::from_str("\"/run/flatnet/lh.json\"").unwrap();
        assert_eq!(old, LighthouseSettings::File("/run/flatnet/lh.json".into()));
    }

    #[test]
    fn bad_etcd_settings_are_named() {
        type Spoil = fn(&mut LighthouseInput);
        let cases: [(&str, Spoil); 6] = [
            ("over TLS only", |i| {
                i.etcd_endpoints = Some("http://192.0.2.1:2379".into())
            }),
            ("https://host:port", |i| {
                i.etcd_endpoints = Some("https://192.0.2.1".into())
            }),
            ("needs an etcd client key file", |i| i.etcd_key_file = None),
            ("absolute path", |i| i.etcd_ca_file = Some("ca.pem".into())),
            ("lease TTL \"1\"", |i| i.lease_ttl = Some("1".into())),
            ("needs this host's certificate", |i| i.host_cert_file = None),
        ];
        for (needle, spoil) in cases {
            let mut input = etcd_input();
            spoil(&mut input);
            let err = LighthouseSettings::from_input(&input, Path::new("/x")).unwrap_err();
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
        let mut stray = etcd_input();
        stray.lighthouse = None;
        let err = LighthouseSettings::from_input(&stray, Path::new("/x")).unwrap_err();
        assert!(err.to_string().contains("not \"etcd\""), "{err}");
    }
}
