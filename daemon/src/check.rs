//! `flatnetd check`: whether this host can run Flatnet and whether a network's configuration
//! would be accepted, one line per check, like `nebula -test`. A configuration is validated by
//! the plugin that owns its format (CNI STATUS for a conflist, netavark `create` for a Podman
//! network), so the check says exactly what the real attach would.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use flatnet::config::{default_endpoint, DEFAULT_TUNNEL_PORT};
use flatnet::control::{self, DaemonConfig};
use flatnet::lighthouse::{EtcdSettings, FileLighthouse, Lighthouse, LighthouseSettings};
use flatnet::state::StateDir;
use flatnet::tunnel::{encode_key, StaticKeys};
use flatnet::FlatnetConfig;
use flatnet_cni::protocol::NetConf;
use flatnet_netavark::translate;
use serde_json::{json, Value};

/// Where runtimes look for CNI plugins when CNI_PATH does not say (Podman's defaults).
const CNI_DIRS: &[&str] = &[
    "/usr/local/libexec/cni",
    "/usr/libexec/cni",
    "/usr/local/lib/cni",
    "/usr/lib/cni",
    "/opt/cni/bin",
];
/// Where netavark looks for plugins (Podman's `netavark_plugin_dirs` defaults).
const NETAVARK_DIRS: &[&str] = &[
    "/usr/local/libexec/netavark",
    "/usr/libexec/netavark",
    "/usr/local/lib/netavark",
    "/usr/lib/netavark",
];

#[derive(clap::Args)]
pub struct CheckArgs {
    /// A CNI network configuration list: each flatnet-cni plugin in it is checked.
    #[arg(long, conflicts_with = "network")]
    conflist: Option<PathBuf>,
    /// A netavark network by name, as Podman stores it in --networks-dir.
    #[arg(long)]
    network: Option<String>,
    /// Where Podman keeps netavark networks.
    #[arg(long, default_value = "/etc/containers/networks")]
    networks_dir: PathBuf,
    /// Directories searched for the plugins before CNI_PATH and the usual ones.
    #[arg(long)]
    plugin_dir: Vec<PathBuf>,
}

/// What a network needs of this host: its state directory, lighthouse and endpoint.
struct Wants {
    state_dir: StateDir,
    lighthouse: LighthouseSettings,
    endpoint: SocketAddr,
}

impl Wants {
    /// What a network's configuration, as its plugin maps it, asks of this host.
    fn of(config: FlatnetConfig) -> Wants {
        Wants {
            state_dir: config.state_dir,
            lighthouse: config.lighthouse,
            endpoint: config.endpoint,
        }
    }

    /// With no network named: the state directory given, with the defaults a network has.
    fn host_defaults(state_dir: &Path) -> Wants {
        let state_dir = StateDir::new(state_dir);
        Wants {
            lighthouse: LighthouseSettings::File(state_dir.default_lighthouse()),
            state_dir,
            endpoint: default_endpoint(DEFAULT_TUNNEL_PORT),
        }
    }
}

#[derive(Default)]
struct Report {
    failed: usize,
    passed: usize,
}

impl Report {
    fn ok(&mut self, what: impl AsRef<str>) {
        self.passed += 1;
        println!("ok    {}", what.as_ref());
    }

    fn fail(&mut self, what: impl AsRef<str>) {
        self.failed += 1;
        println!("FAIL  {}", what.as_ref());
    }

    fn warn(&mut self, what: impl AsRef<str>) {
        println!("warn  {}", what.as_ref());
    }

    fn check(&mut self, result: Result<String, String>) {
        match result {
            Ok(what) => self.ok(what),
            Err(why) => self.fail(why),
        }
    }
}

pub fn run(state_dir: &Path, args: &CheckArgs) -> ExitCode {
    let mut report = Report::default();
    let wants = if let Some(path) = &args.conflist {
        check_conflist(path, args, &mut report)
    } else if let Some(name) = &args.network {
        check_netavark_network(name, args, &mut report)
    } else {
        vec![Wants::host_defaults(state_dir)]
    };
    report.check(check_tun());
    report.check(check_root());
    for want in &wants {
        report.check(check_state_dir(&want.state_dir));
        report.check(check_key(&want.state_dir.host_key()));
        report.check(check_lighthouse(want));
        if let Some(warning) = certificate_warning(want) {
            report.warn(warning);
        }
        report.check(check_daemon(want));
    }
    if which("nft").is_none() {
        report.warn("nft not found: published ports (-p) will fail until nftables is installed");
    }
    println!("{} checks passed, {} failed", report.passed, report.failed);
    if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Each flatnet-cni entry of the list, as the runtime would pass it, through the plugin's STATUS.
fn check_conflist(path: &Path, args: &CheckArgs, report: &mut Report) -> Vec<Wants> {
    let list = match read_json(path) {
        Ok(list) => list,
        Err(e) => {
            report.fail(e);
            return Vec::new();
        }
    };
    let plugins: Vec<&Value> = list["plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["type"] == "flatnet-cni")
        .collect();
    if plugins.is_empty() {
        report.fail(format!(
            "{}: no plugin of type flatnet-cni in \"plugins\"",
            path.display()
        ));
        return Vec::new();
    }
    let Some(binary) = find_plugin("flatnet-cni", &args.plugin_dir, &cni_dirs()) else {
        report.fail("flatnet-cni is in no CNI plugin directory (CNI_PATH, /usr/lib/cni, ...)");
        return Vec::new();
    };
    report.ok(format!("plugin {}", binary.display()));
    let mut wants = Vec::new();
    for plugin in plugins {
        let mut conf = plugin.clone();
        conf["name"] = list["name"].clone();
        // STATUS exists from CNI 1.1; the plugin validates the keys the same way for every version.
        conf["cniVersion"] = json!("1.1.0");
        let input = serde_json::to_vec(&conf).expect("JSON value serialises");
        let name = list["name"].as_str().unwrap_or("?");
        let accepted = run_plugin(&binary, &[], &[("CNI_COMMAND", "STATUS")], &input);
        match &accepted {
            Ok(_) => report.ok(format!(
                "network {name}: the plugin accepts its configuration"
            )),
            Err(e) => report.fail(format!("network {name}: {e}")),
        }
        let config = NetConf::parse(&input)
            .and_then(|conf| conf.flatnet_config())
            .map_err(|e| e.msg);
        wants.extend(mapped(name, config, accepted.is_ok(), report));
    }
    wants
}

/// A Podman network file, through the plugin's `create` (netavark's validation step).
fn check_netavark_network(name: &str, args: &CheckArgs, report: &mut Report) -> Vec<Wants> {
    let path = args.networks_dir.join(format!("{name}.json"));
    let network = match read_json(&path) {
        Ok(network) => network,
        Err(e) => {
            report.fail(e);
            return Vec::new();
        }
    };
    if network["driver"] != "flatnet" {
        report.fail(format!(
            "network {name} uses driver {}, not flatnet",
            network["driver"]
        ));
        return Vec::new();
    }
    let Some(binary) = find_plugin("flatnet", &args.plugin_dir, NETAVARK_DIRS) else {
        report.fail(
            "the netavark plugin flatnet is in no plugin directory (/usr/libexec/netavark, ...)",
        );
        return Vec::new();
    };
    report.ok(format!("plugin {}", binary.display()));
    let input = serde_json::to_vec(&network).expect("JSON value serialises");
    let accepted = run_plugin(&binary, &["create"], &[], &input);
    match &accepted {
        Ok(_) => report.ok(format!("network {name}: the plugin accepts it")),
        Err(e) => report.fail(format!("network {name}: {e}")),
    }
    let config = serde_json::from_value(network)
        .map_err(|e| format!("not a netavark network: {e}"))
        .and_then(|network| translate::config_of(&network).map_err(|e| e.to_string()));
    mapped(name, config, accepted.is_ok(), report)
        .into_iter()
        .collect()
}

/// A network's configuration as its plugin's own mapping reads it. A failure the plugin
/// already reported is not counted twice; one it did not report means the installed plugin
/// and this flatnetd read networks differently.
fn mapped(
    name: &str,
    config: Result<FlatnetConfig, String>,
    plugin_accepted: bool,
    report: &mut Report,
) -> Option<Wants> {
    match config {
        Ok(config) => Some(Wants::of(config)),
        Err(e) => {
            if plugin_accepted {
                report.fail(format!(
                    "network {name}: flatnetd reads it otherwise than the installed plugin: {e}"
                ));
            }
            None
        }
    }
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))
}

fn cni_dirs() -> Vec<PathBuf> {
    let from_env = std::env::var_os("CNI_PATH").unwrap_or_default();
    std::env::split_paths(&from_env)
        .chain(CNI_DIRS.iter().map(PathBuf::from))
        .collect()
}

fn find_plugin<D: AsRef<Path>>(name: &str, first: &[PathBuf], dirs: &[D]) -> Option<PathBuf> {
    let dirs = first
        .iter()
        .map(PathBuf::as_path)
        .chain(dirs.iter().map(AsRef::as_ref));
    dirs.map(|d| d.join(name)).find(|p| p.is_file())
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Runs a plugin on `input`; its error (CNI error object or netavark `{"error": ...}`) on failure.
fn run_plugin(
    binary: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    input: &[u8],
) -> Result<Value, String> {
    let mut child = Command::new(binary)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {}: {e}", binary.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input);
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("running {}: {e}", binary.display()))?;
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    if output.status.success() {
        return Ok(answer);
    }
    let message = answer["msg"]
        .as_str()
        .or_else(|| answer["error"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&output.stderr).trim().to_string());
    Err(message)
}

fn check_tun() -> Result<String, String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map(|_| "/dev/net/tun opens".to_string())
        .map_err(|e| {
            format!("/dev/net/tun: {e} (load the tun module, or give the container the device)")
        })
}

fn check_root() -> Result<String, String> {
    match nix::unistd::geteuid().is_root() {
        true => Ok("running as root".into()),
        false => Err("not root: TUN devices, namespaces and nftables need root".into()),
    }
}

/// The state directory holds keys and leases: root's, and nobody else may write it.
fn check_state_dir(dir: &Path) -> Result<String, String> {
    let meta = match std::fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(format!(
                "state directory {} (made on first use)",
                dir.display()
            ))
        }
        Err(e) => return Err(format!("state directory {}: {e}", dir.display())),
    };
    let mode = meta.permissions().mode() & 0o777;
    if !meta.is_dir() {
        Err(format!(
            "state directory {} is not a directory",
            dir.display()
        ))
    } else if meta.uid() != 0 {
        Err(format!(
            "state directory {} belongs to uid {}, not root",
            dir.display(),
            meta.uid()
        ))
    } else if mode & 0o022 != 0 {
        Err(format!(
            "state directory {} is writable by others (mode {mode:o}); make it 0700",
            dir.display()
        ))
    } else {
        Ok(format!(
            "state directory {} (root, {mode:o})",
            dir.display()
        ))
    }
}

fn check_key(path: &Path) -> Result<String, String> {
    match StaticKeys::load(path) {
        Ok(Some(keys)) => Ok(format!(
            "host key {} ({})",
            path.display(),
            encode_key(&keys.public)
        )),
        Ok(None) => Ok(format!("host key {} (made on first use)", path.display())),
        Err(e) => Err(e.to_string()),
    }
}

/// With etcd, a certificate about to expire (or expired): its peers will drop this host.
fn certificate_warning(wants: &Wants) -> Option<String> {
    let LighthouseSettings::Etcd(etcd) = &wants.lighthouse else {
        return None;
    };
    let cert: flatnet::cert::HostCert = flatnet::cert::load(&etcd.host_cert_file).ok()?;
    flatnet::cert::expiry_warning(cert.not_after, flatnet::cert::now_unix())
}

fn check_lighthouse(wants: &Wants) -> Result<String, String> {
    match &wants.lighthouse {
        LighthouseSettings::File(path) => check_file_lighthouse(path),
        LighthouseSettings::Etcd(etcd) => check_etcd_lighthouse(etcd, &wants.state_dir),
    }
}

/// The TLS files flatnetd reads, and whether a running flatnetd follows etcd.
fn check_etcd_lighthouse(etcd: &EtcdSettings, state_dir: &StateDir) -> Result<String, String> {
    for file in [&etcd.ca_file, &etcd.cert_file, &etcd.key_file] {
        std::fs::File::open(file).map_err(|e| format!("etcd TLS file {}: {e}", file.display()))?;
    }
    let own = std::fs::read_to_string(state_dir.host_pub()).ok();
    let trust =
        flatnet::cert::TrustBundle::load(&etcd.network_ca_file).map_err(|e| e.to_string())?;
    let host =
        flatnet::cert::load_host_cert(&etcd.host_cert_file, &trust, own.as_deref().map(str::trim))
            .map_err(|e| e.to_string())?;
    let endpoints = etcd.endpoints.join(",");
    if !control::is_running(state_dir) {
        return Ok(format!(
            "lighthouse etcd {endpoints} as {} (TLS files readable, certificate valid)",
            host.name
        ));
    }
    let state = control::status(state_dir)
        .map_err(|e| e.to_string())?
        .lighthouse_state;
    if state.healthy {
        Ok(format!(
            "lighthouse etcd {endpoints} as {}: followed at revision {}, lease {} s left",
            host.name,
            state.revision,
            state.lease_ttl_left_ms.unwrap_or(0).max(0) / 1000
        ))
    } else {
        Err(format!(
            "lighthouse etcd {endpoints}: {}",
            state.error.as_deref().unwrap_or("not followed yet")
        ))
    }
}

fn check_file_lighthouse(path: &Path) -> Result<String, String> {
    if !path.exists() {
        return match path.ancestors().skip(1).find(|d| d.exists()) {
            Some(dir) if dir.is_dir() => {
                Ok(format!("lighthouse {} (made on first use)", path.display()))
            }
            _ => Err(format!(
                "lighthouse {}: no directory to make it in",
                path.display()
            )),
        };
    }
    FileLighthouse::new(path)
        .all_entries()
        .map(|entries| format!("lighthouse {} ({} entries)", path.display(), entries.len()))
        .map_err(|e| format!("lighthouse {}: {e}", path.display()))
}

/// A daemon already serving the state directory must have the settings the network wants:
/// the same check a plugin makes before it attaches.
fn check_daemon(wants: &Wants) -> Result<String, String> {
    let state_dir = &wants.state_dir;
    if !control::is_running(state_dir) {
        return Ok(format!(
            "no flatnetd serves {state_dir} yet (the first container starts one)"
        ));
    }
    let running =
        control::status(state_dir).map_err(|e| format!("flatnetd of {state_dir}: {e}"))?;
    let wanted = DaemonConfig {
        state_dir: state_dir.clone(),
        lighthouse: wants.lighthouse.clone(),
        listen: wants.endpoint,
        tuning: Default::default(),
    };
    control::launch::check_settings(&wanted, &running).map_err(|e| e.to_string())?;
    Ok(format!("flatnetd serves {state_dir} on {}", running.listen))
}
