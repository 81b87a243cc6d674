//! The daemon's settings, defined once: [`DaemonOptions`] is their command-line form (clap
//! reads it for `flatnetd run` and `start`; [`Tuning::to_args`] writes it for a daemon a plugin
//! starts), [`DaemonConfig`] what a daemon runs with and saves as `flatnetd.json`. An option a
//! command line leaves out keeps the last run's value, else its default; adding one is a field
//! of [`Tuning`] (its doc comment is its help) and, if it has a default, its accessor.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{default_endpoint, DEFAULT_TUNNEL_PORT};
use crate::error::{Error, IoContext, Result};
use crate::lighthouse::{LighthouseInput, LighthouseSettings};
use crate::state::StateDir;

/// How long the packet thread polls after a send before it sleeps: a round trip between
/// hosts on one LAN fits in it.
pub const DEFAULT_POLL_US: u32 = 50;
/// Renew a tunnel's keys after two minutes, as WireGuard does.
pub const DEFAULT_REKEY_AFTER_S: u32 = 120;
/// How long a rootless container's namespace may stay without a process before flatnetd
/// takes the container away (`users::abandoned`): long past the moment between Podman's
/// setup and the container's first process.
pub const DEFAULT_ABANDONED_AFTER_S: u32 = 60;
/// The most sealing workers a daemon runs.
pub const MAX_WORKERS: usize = 4;

/// What a daemon runs with; saved as `flatnetd.json`, so a restart needs only the state
/// directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonConfig {
    pub state_dir: StateDir,
    pub lighthouse: LighthouseSettings,
    /// The UDP address the daemon listens on, which is also the endpoint other hosts are told.
    pub listen: SocketAddr,
    #[serde(flatten)]
    pub tuning: Tuning,
}

/// The daemon's own knobs: none changes what a network publishes, so the plugins leave them
/// to the operator. `None` keeps the last run's value, else the default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
pub struct Tuning {
    /// After sending, poll this many µs for the answer before sleeping; 0 never polls
    /// (lowest CPU use, higher latency on virtual machines) [default: 50, or the last run's]
    #[arg(long, value_name = "US")]
    pub poll_us: Option<u32>,
    /// Serve Prometheus metrics at GET /metrics on this loopback ip:port or unix:/path
    /// [default: off, or the last run's]
    #[arg(long)]
    pub metrics: Option<MetricsAddress>,
    /// Send a keepalive on every tunnel at least every SECS seconds and keep idle tunnels
    /// open, for peers behind NAT; 0 turns it off [default: every 25 s to the peers that see
    /// this host through NAT (elsewhere than its endpoint), to no others; or the last run's]
    #[arg(long = "persistent-keepalive", value_name = "SECS")]
    pub persistent_keepalive_s: Option<u32>,
    /// How containers of this host reach each other: `fast` (straight from one TUN device to
    /// the other, never leaving the host's memory) or `encrypted` (through the host's tunnel
    /// to itself, so every packet between containers is encrypted) [default: fast, or the
    /// last run's]
    #[arg(long, value_name = "fast|encrypted")]
    pub same_host: Option<SameHost>,
    /// Threads that seal packets for other hosts beside the packet thread, each flow always
    /// on the same one; 0: the packet thread seals them itself [default: one per CPU beyond
    /// two, at most 4, or the last run's]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=MAX_WORKERS as i64))]
    pub workers: Option<u8>,
    /// Renew a tunnel's keys after SECS seconds, from 5 to 120; keys are never used a minute
    /// past that [default: 120, or the last run's]
    #[arg(long = "rekey-after", value_name = "SECS", value_parser = clap::value_parser!(u32).range(5..=120))]
    pub rekey_after_s: Option<u32>,
    /// Relay for hosts that cannot reach each other (behind symmetric NAT or firewalls that
    /// drop unsolicited UDP): published through the lighthouse, and every host keeps a session
    /// with a relay; it passes their sealed datagrams on and cannot read them. Give it to
    /// hosts every other reaches [default: false, or the last run's]
    #[arg(long, value_name = "true|false")]
    pub relay: Option<bool>,
    /// Serve rootless Podman's plugins on this unix socket: anyone may connect, and each
    /// request is held to the grants of --users (docs/podman.md, "Rootless")
    /// [default: off, or the last run's]
    #[arg(long, value_name = "PATH")]
    pub user_socket: Option<PathBuf>,
    /// The grants for rootless users: which users may join which networks, with which
    /// addresses and how many containers [default: /etc/flatnet/users.json, or the last run's]
    #[arg(long = "users", value_name = "FILE")]
    pub users: Option<PathBuf>,
    /// Take a rootless container off its network when no process has been in its namespace
    /// for SECS seconds since its attach (its runtime died, or its teardown failed and was
    /// never tried again) [default: 60, or the last run's]
    #[arg(long = "abandoned-after", value_name = "SECS", value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub abandoned_after_s: Option<u32>,
}

impl Tuning {
    pub fn poll_us(&self) -> u32 {
        self.poll_us.unwrap_or(DEFAULT_POLL_US)
    }

    /// The keepalive interval; `None` when off.
    pub fn persistent_keepalive(&self) -> Option<Duration> {
        self.persistent_keepalive_s
            .filter(|&s| s > 0)
            .map(|s| Duration::from_secs(s.into()))
    }

    /// How old a session gets before its keys are renewed.
    pub fn rekey_after(&self) -> Duration {
        Duration::from_secs(self.rekey_after_s.unwrap_or(DEFAULT_REKEY_AFTER_S).into())
    }

    /// How long a rootless container's namespace may stay empty before it is taken away.
    pub fn abandoned_after(&self) -> Duration {
        let seconds = self.abandoned_after_s.unwrap_or(DEFAULT_ABANDONED_AFTER_S);
        Duration::from_secs(seconds.into())
    }

    pub fn relay(&self) -> bool {
        self.relay.unwrap_or(false)
    }

    pub fn same_host(&self) -> SameHost {
        self.same_host.unwrap_or_default()
    }

    /// Each knob this one leaves unset, taken from `fallback`.
    pub fn or(self, fallback: &Tuning) -> Tuning {
        let mut mine = as_map(&self);
        for (name, value) in as_map(fallback) {
            let slot = mine.entry(name).or_insert(serde_json::Value::Null);
            if slot.is_null() {
                *slot = value;
            }
        }
        serde_json::from_value(serde_json::Value::Object(mine)).expect("tuning round-trips")
    }

    /// The `flatnetd run` flags that give the knobs set here (clap's own names for them).
    pub fn to_args(&self) -> Vec<String> {
        use clap::Args;
        let values = as_map(self);
        let command = Tuning::augment_args(clap::Command::new("flatnetd"));
        command
            .get_arguments()
            .filter_map(|arg| {
                let value = values.get(arg.get_id().as_str()).filter(|v| !v.is_null())?;
                let text = match value {
                    serde_json::Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                Some(format!("--{}={text}", arg.get_long()?))
            })
            .collect()
    }
}

fn as_map(tuning: &Tuning) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(tuning).expect("tuning serialises") {
        serde_json::Value::Object(map) => map,
        _ => unreachable!("a struct serialises as an object"),
    }
}

/// The daemon's settings as `flatnetd run` and `start` take them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DaemonOptions {
    #[command(flatten)]
    pub lighthouse: LighthouseInput,
    /// UDP address to listen on, which is also the endpoint other hosts are told
    /// [default: 127.0.0.1:4800, or the last run's]
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    #[command(flatten)]
    pub tuning: Tuning,
}

impl DaemonOptions {
    /// Explicit options, else what the last daemon of this state directory used, else defaults.
    pub fn resolve(self, state_dir: StateDir) -> Result<DaemonConfig> {
        let last = DaemonConfig::load(&state_dir).ok();
        let lighthouse = match (&self.lighthouse.lighthouse, &last) {
            (None, Some(last)) if !self.lighthouse.etcd_options_given() => last.lighthouse.clone(),
            _ => LighthouseSettings::from_input(&self.lighthouse, &state_dir.default_lighthouse())?,
        };
        let listen = self
            .listen
            .or_else(|| last.as_ref().map(|c| c.listen))
            .unwrap_or_else(|| default_endpoint(DEFAULT_TUNNEL_PORT));
        let tuning = match &last {
            Some(last) => self.tuning.or(&last.tuning),
            None => self.tuning,
        };
        Ok(DaemonConfig {
            state_dir,
            lighthouse,
            listen,
            tuning,
        })
    }
}

impl DaemonConfig {
    /// The settings the last daemon of `state_dir` ran with.
    pub fn load(state_dir: &StateDir) -> Result<Self> {
        let path = state_dir.daemon_settings();
        let bytes = std::fs::read(&path).context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::InvalidConfig(format!("{}: {e}", path.display())))
    }

    /// The `flatnetd run` arguments that give these settings.
    pub fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut args = vec!["--state-dir".into(), self.state_dir.path().into()];
        args.extend(self.lighthouse.daemon_args());
        args.push(format!("--listen={}", self.listen).into());
        args.extend(self.tuning.to_args().into_iter().map(Into::into));
        args
    }
}

/// How two containers of one host talk: the fast path (the default), or through the host's
/// tunnel to itself, for an operator who wants every packet between containers encrypted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SameHost {
    #[default]
    Fast,
    Encrypted,
}

impl fmt::Display for SameHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SameHost::Fast => "fast",
            SameHost::Encrypted => "encrypted",
        })
    }
}

impl FromStr for SameHost {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text {
            "fast" => Ok(SameHost::Fast),
            "encrypted" => Ok(SameHost::Encrypted),
            _ => Err(format!("{text:?}: expected fast or encrypted")),
        }
    }
}

/// Where metrics are served: `127.0.0.1:9808` (loopback only) or `unix:/run/flatnet/metrics.sock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum MetricsAddress {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for MetricsAddress {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            return match path.starts_with('/') {
                true => Ok(MetricsAddress::Unix(PathBuf::from(path))),
                false => Err(format!("metrics socket {path:?} is not an absolute path")),
            };
        }
        let address: SocketAddr = text
            .parse()
            .map_err(|_| format!("metrics address {text:?} is neither ip:port nor unix:/path"))?;
        if !address.ip().is_loopback() {
            return Err(format!(
                "metrics address {address} is not a loopback address: flatnetd serves metrics \
                 on loopback or a Unix socket only (scrape through a local agent or proxy)"
            ));
        }
        Ok(MetricsAddress::Tcp(address))
    }
}

impl TryFrom<String> for MetricsAddress {
    type Error = String;
    fn try_from(text: String) -> std::result::Result<Self, String> {
        text.parse()
    }
}

impl From<MetricsAddress> for String {
    fn from(address: MetricsAddress) -> String {
        address.to_string()
    }
}

impl fmt::Display for MetricsAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricsAddress::Tcp(address) => write!(f, "{address}"),
            MetricsAddress::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        tuning: Tuning,
    }

    fn every_knob_set() -> Tuning {
        Tuning {
            poll_us: Some(7),
            metrics: Some("unix:/run/m.sock".parse().unwrap()),
            persistent_keepalive_s: Some(25),
            same_host: Some(SameHost::Encrypted),
            workers: Some(2),
            rekey_after_s: Some(30),
            relay: Some(true),
            user_socket: Some("/var/lib/flatnet/user.sock".into()),
            users: Some("/etc/flatnet/users.json".into()),
            abandoned_after_s: Some(10),
        }
    }

    /// What a plugin passes to the daemon it starts is what the daemon's parser reads back:
    /// every knob, by clap's own name for it.
    #[test]
    fn tuning_crosses_the_command_line_unchanged() {
        let tuning = every_knob_set();
        let args = tuning.to_args();
        let set = as_map(&tuning).values().filter(|v| !v.is_null()).count();
        assert_eq!(args.len(), set, "a flag for each knob: {args:?}");
        let parsed = Flags::try_parse_from(std::iter::once("flatnetd".to_string()).chain(args))
            .unwrap()
            .tuning;
        assert_eq!(parsed, tuning);
        assert!(Tuning::default().to_args().is_empty());
    }

    #[test]
    fn unset_knobs_fall_back_to_the_last_run_and_then_to_defaults() {
        let given = Tuning {
            poll_us: Some(0),
            ..Tuning::default()
        };
        let merged = given.or(&every_knob_set());
        assert_eq!(merged.poll_us(), 0, "given wins");
        assert_eq!(merged.workers, Some(2), "the last run's");
        assert_eq!(merged.same_host(), SameHost::Encrypted);
        let fresh = Tuning::default();
        assert_eq!(fresh.poll_us(), DEFAULT_POLL_US);
        assert_eq!(fresh.same_host(), SameHost::Fast);
        assert_eq!(fresh.persistent_keepalive(), None);
        let off = Tuning {
            persistent_keepalive_s: Some(0),
            ..Tuning::default()
        };
        assert_eq!(off.or(&every_knob_set()).persistent_keepalive(), None);
    }

    /// A daemon upgraded in place reads the settings its predecessor wrote, which name no
    /// same-host mode nor workers: it takes the fast path and a worker per spare CPU; written
    /// settings survive the round trip.
    #[test]
    fn settings_without_a_same_host_mode_or_workers_take_the_defaults() {
        let config = DaemonConfig {
            state_dir: StateDir::new("/run/flatnet"),
            lighthouse: LighthouseSettings::File("/run/flatnet/lighthouse.json".into()),
            listen: "127.0.0.1:4800".parse().unwrap(),
            tuning: Tuning {
                poll_us: Some(50),
                same_host: Some(SameHost::Encrypted),
                workers: Some(2),
                ..Tuning::default()
            },
        };
        let mut written = serde_json::to_value(&config).unwrap();
        let back: DaemonConfig = serde_json::from_value(written.clone()).unwrap();
        assert_eq!(back, config);
        written.as_object_mut().unwrap().remove("same_host");
        written.as_object_mut().unwrap().remove("workers");
        let older: DaemonConfig = serde_json::from_value(written).unwrap();
        assert_eq!(older.tuning.same_host(), SameHost::Fast);
        assert_eq!(
            older.tuning.workers, None,
            "as many workers as the CPUs allow"
        );
        assert_eq!("encrypted".parse::<SameHost>(), Ok(SameHost::Encrypted));
        assert!("plain".parse::<SameHost>().is_err());
    }

    #[test]
    fn loopback_and_unix_sockets_are_accepted_and_other_addresses_refused() {
        assert_eq!(
            "127.0.0.1:9808".parse::<MetricsAddress>(),
            Ok(MetricsAddress::Tcp("127.0.0.1:9808".parse().unwrap()))
        );
        assert_eq!(
            "unix:/run/flatnet/metrics.sock".parse::<MetricsAddress>(),
            Ok(MetricsAddress::Unix("/run/flatnet/metrics.sock".into()))
        );
        let refused = "0.0.0.0:9808".parse::<MetricsAddress>().unwrap_err();
        assert!(refused.contains("loopback"), "{refused}");
        assert!("unix:relative".parse::<MetricsAddress>().is_err());
        assert!("9808".parse::<MetricsAddress>().is_err());
        let round_trip: MetricsAddress = serde_json::from_str(
            &serde_json::to_string(&MetricsAddress::Unix("/m".into())).unwrap(),
        )
        .unwrap();
        assert_eq!(round_trip, MetricsAddress::Unix("/m".into()));
    }
}
