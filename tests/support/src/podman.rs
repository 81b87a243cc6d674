//! Real Podman for the end-to-end tests, both backends:
//! - CNI: the host's Podman 4.3 runs `flatnet-cni` from /usr/lib/cni;
//! - netavark: Podman 5 in the trixie chroot runs the `flatnet` plugin.
//!
//! `scripts/test.sh` installs both Podmans,
//! builds the image and sets FLATNET_E2E=1. Without it the tests skip on a developer machine
//! and fail in CI, where skipping would hide a regression.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::{leaked_state, lighthouse_entries};

pub const IMAGE: &str = "localhost/flatnet-test:latest";

/// Podman tests share the engines' locks and the machine's two cores: one at a time.
pub static SERIAL: Mutex<()> = Mutex::new(());

pub fn e2e_enabled(test: &str) -> Option<MutexGuard<'static, ()>> {
    if std::env::var_os("FLATNET_E2E").is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("{test}: CI must run the Podman tests; run them through scripts/test.sh");
        }
        eprintln!("skipping {test}: run scripts/test.sh (sets FLATNET_E2E=1) for Podman tests");
        return None;
    }
    Some(
        SERIAL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    )
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Backend {
    Cni,
    Netavark,
}

pub fn chroot_dir() -> PathBuf {
    std::env::var_os("FLATNET_CHROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/flatnet/trixie"))
}

/// `program` inside the trixie chroot, as `in_chroot` of scripts/lib.sh runs it: in the chroot's
/// mount namespace (scripts/setup-chroot.sh), with a clean environment.
pub fn in_chroot(program: &str) -> Command {
    let mounts = std::env::var("FLATNET_CHROOT_MOUNTS")
        .unwrap_or_else(|_| "/run/flatnet-trixie/mnt".to_string());
    let mut cmd = Command::new("nsenter");
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", "/root")
        .env("PODMAN_IGNORE_CGROUPSV1_WARNING", "1")
        .arg(format!("--mount={mounts}"))
        .args(["--", program]);
    cmd
}

/// Network settings beyond the subnet.
#[derive(Debug, Default)]
pub struct NetOptions {
    pub internal: bool,
    /// An IPv6 subnet besides the IPv4 one: a dual-stack network.
    pub subnet6: Option<&'static str>,
    /// `None`: the default (on).
    pub ingress_filter: Option<bool>,
    /// The resolver names outside the network go to (tests bring their own; never the host's).
    pub dns_upstream: Option<&'static str>,
    /// A state directory and tunnel port of the network's own (a daemon of its own).
    pub state_dir: Option<&'static str>,
    pub tunnel_port: Option<u16>,
    /// A containers.conf to run Podman with instead of the usual (`CONTAINERS_CONF`), as seen
    /// by that Podman (inside the chroot for netavark).
    pub containers_conf: Option<String>,
}

/// A Flatnet network on one backend, removed with its containers when dropped.
pub struct Net {
    pub backend: Backend,
    pub name: String,
    pub subnet: Ipv4Net,
    pub subnet6: Option<Ipv6Net>,
    own_state_dir: Option<&'static str>,
    containers_conf: Option<String>,
}

impl Net {
    pub fn create(backend: Backend, name: &str, subnet: &str) -> Net {
        Net::create_with(backend, name, subnet, &NetOptions::default())
    }

    /// A network as a user would make it: the CNI conflist declares the `portMappings` and
    /// `aliases` capabilities (as `examples/cni/flatnet.conflist` does); netavark needs none.
    pub fn create_with(backend: Backend, name: &str, subnet: &str, options: &NetOptions) -> Net {
        let net = Net {
            backend,
            name: name.to_string(),
            subnet: subnet.parse().unwrap(),
            subnet6: options.subnet6.map(|s| s.parse().unwrap()),
            own_state_dir: options.state_dir,
            containers_conf: options.containers_conf.clone(),
        };
        net.remove_leftovers();
        match backend {
            Backend::Cni => {
                let subnets: Vec<_> = std::iter::once(subnet)
                    .chain(options.subnet6)
                    .map(|s| serde_json::json!({"subnet": s}))
                    .collect();
                let mut plugin = serde_json::json!({
                    "type": "flatnet-cni",
                    "subnets": subnets,
                    "capabilities": {"portMappings": true, "aliases": true},
                    "internal": options.internal,
                });
                if let Some(upstream) = options.dns_upstream {
                    plugin["dnsUpstreams"] = serde_json::json!([upstream]);
                }
                if let Some(on) = options.ingress_filter {
                    plugin["ingressFilter"] = serde_json::json!(on);
                }
                if let Some(dir) = options.state_dir {
                    plugin["stateDir"] = serde_json::json!(dir);
                }
                if let Some(port) = options.tunnel_port {
                    plugin["tunnelPort"] = serde_json::json!(port);
                }
                let conflist = serde_json::json!({
                    "cniVersion": "1.0.0",
                    "name": name,
                    "plugins": [plugin],
                });
                std::fs::write(net.conflist(), conflist.to_string()).unwrap();
            }
            Backend::Netavark => {
                // The host's CNI data plane holds UDP 4800 in this network namespace.
                let mut args = vec!["network", "create", "-d", "flatnet", "--subnet", subnet];
                if let Some(subnet6) = options.subnet6 {
                    args.extend(["--ipv6", "--subnet", subnet6]);
                }
                let port = format!("tunnel_port={}", options.tunnel_port.unwrap_or(4801));
                args.extend(["-o", &port]);
                let state_dir = options.state_dir.map(|d| format!("state_dir={d}"));
                if let Some(state_dir) = &state_dir {
                    args.extend(["-o", state_dir]);
                }
                let upstream = options.dns_upstream.map(|u| format!("dns_upstreams={u}"));
                if let Some(upstream) = &upstream {
                    args.extend(["-o", upstream]);
                }
                let ingress = options
                    .ingress_filter
                    .map(|on| format!("ingress_filter={on}"));
                if let Some(ingress) = &ingress {
                    args.extend(["-o", ingress]);
                }
                if options.internal {
                    args.push("--internal");
                }
                args.push(name);
                net.podman_ok(&args);
            }
        }
        net
    }

    pub fn conflist(&self) -> PathBuf {
        PathBuf::from(format!("/etc/cni/net.d/{}.conflist", self.name))
    }

    pub fn podman(&self, args: &[&str]) -> Output {
        self.podman_env(args, &[])
    }

    /// Podman with extra environment variables (which it passes on to the plugins).
    pub fn podman_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.podman_command()
            .envs(env.iter().copied())
            .args(args)
            .output()
            .unwrap()
    }

    /// This backend's Podman, its arguments still to add.
    pub fn podman_command(&self) -> Command {
        let mut cmd = match self.backend {
            Backend::Cni => Command::new("podman"),
            Backend::Netavark => in_chroot("podman"),
        };
        if let Some(conf) = &self.containers_conf {
            cmd.env("CONTAINERS_CONF", conf);
        }
        cmd
    }

    /// This backend's Podman serving its Docker-compatible API on the unix socket `socket`
    /// (a path as that Podman sees it), ready when this returns; stopped when dropped.
    pub fn api_service(&self, socket: &str) -> ApiService {
        let seen_from_host = match self.backend {
            Backend::Cni => PathBuf::from(socket),
            Backend::Netavark => chroot_dir().join(socket.trim_start_matches('/')),
        };
        let _ = std::fs::remove_file(&seen_from_host);
        let child = self
            .podman_command()
            .args(["system", "service", "--time=0", &format!("unix://{socket}")])
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let service = ApiService {
            child,
            socket: seen_from_host,
        };
        crate::wait_until(std::time::Duration::from_secs(30), || {
            service.socket.exists()
        });
        service
    }

    pub fn podman_ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(
            out.status.success(),
            "podman {args:?} ({:?}) failed: {}",
            self.backend,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The state directory the plugin uses, as seen from the host.
    pub fn state_dir(&self) -> PathBuf {
        let dir = self.own_state_dir.unwrap_or("/run/flatnet");
        match self.backend {
            Backend::Cni => PathBuf::from(dir),
            Backend::Netavark => chroot_dir().join(dir.trim_start_matches('/')),
        }
    }

    pub fn container(&self, n: usize) -> String {
        format!("{}-c{n}", self.name)
    }

    pub fn run_detached(&self, name: &str, extra: &[&str]) {
        self.run_command(name, extra, &["sleep", "600"]);
    }

    /// `podman run -d` with extra flags and a command of the test image.
    pub fn run_command(&self, name: &str, extra: &[&str], command: &[&str]) {
        let out = self.try_run(name, extra, command);
        assert!(
            out.status.success(),
            "podman run {name} ({:?}) failed: {}",
            self.backend,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn try_run(&self, name: &str, extra: &[&str], command: &[&str]) -> Output {
        self.try_run_env(name, extra, command, &[])
    }

    pub fn try_run_env(
        &self,
        name: &str,
        extra: &[&str],
        command: &[&str],
        env: &[(&str, &str)],
    ) -> Output {
        let mut args = vec!["run", "-d", "--name", name, "--network", &self.name];
        args.extend_from_slice(extra);
        args.push(IMAGE);
        args.extend_from_slice(command);
        self.podman_env(&args, env)
    }

    /// The state directory's daemon status, read with `flatnetd status --json` as an
    /// operator would (inside the chroot for the netavark backend).
    pub fn daemon_status(&self) -> serde_json::Value {
        let out = match self.backend {
            Backend::Cni => Command::new("flatnetd")
                .args(["status", "--json"])
                .output()
                .unwrap(),
            Backend::Netavark => in_chroot("flatnetd")
                .args(["status", "--json"])
                .output()
                .unwrap(),
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The address Podman reports for the container on this network.
    pub fn inspect_ip(&self, container: &str) -> Ipv4Addr {
        let format = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            self.name
        );
        let out = self.podman_ok(&["inspect", "-f", &format, container]);
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("inspect IP of {container}: {out:?}"))
    }

    /// The IPv6 address Podman reports for the container on this network.
    pub fn inspect_ip6(&self, container: &str) -> Ipv6Addr {
        let format = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").GlobalIPv6Address}}}}",
            self.name
        );
        let out = self.podman_ok(&["inspect", "-f", &format, container]);
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("inspect IPv6 of {container}: {out:?}"))
    }

    /// Runs a command inside a running container (`podman exec`).
    pub fn exec(&self, container: &str, args: &[&str]) -> Command {
        let mut cmd = self.podman_command();
        cmd.args(["exec", container]).args(args);
        cmd
    }

    /// Runs `args` in the container. Podman's and the OCI runtime's own failures under load
    /// (exit 125; "OCI runtime error", such as runc's "read init-p: connection reset by
    /// peer" or conmon's "container create failed ... EOF") are tried again, twice at most,
    /// and reported; the command's own exit status is returned as it is.
    pub fn exec_output(&self, container: &str, args: &[&str]) -> Output {
        const PODMAN_FAILED: i32 = 125;
        let runtime_failed = |out: &Output| {
            out.status.code() == Some(PODMAN_FAILED)
                || String::from_utf8_lossy(&out.stderr).starts_with("Error: OCI runtime error")
        };
        let mut tries = 0;
        loop {
            let out = self.exec(container, args).output().unwrap();
            tries += 1;
            if !runtime_failed(&out) || tries == 3 {
                return out;
            }
            eprintln!(
                "podman exec {container} {args:?} failed, trying again: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    pub fn exec_ok(&self, container: &str, args: &[&str]) -> String {
        let out = self.exec_output(container, args);
        assert!(
            out.status.success(),
            "{args:?} in {container}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Waits until something listens on TCP `port` in the container.
    pub fn wait_listening(&self, container: &str, port: u16) {
        let needle = format!(":{port} ");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self
            .exec_ok(container, &["netstat", "-ltn"])
            .contains(&needle)
        {
            assert!(
                Instant::now() < deadline,
                "nothing listens on {port} in {container}"
            );
            std::thread::yield_now();
        }
    }

    /// Sends `file` (a path inside `from`) over TCP to `to`, which stores it at the same path.
    pub fn send_file(&self, from: &str, to: &str, to_ip: IpAddr, port: u16, file: &str) {
        let store = format!("cat > {file}");
        let mut receiver = self
            .exec(
                to,
                &[
                    "nc",
                    "-l",
                    "-p",
                    &port.to_string(),
                    "-e",
                    "sh",
                    "-c",
                    &store,
                ],
            )
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.wait_listening(to, port);
        let send = format!("nc {to_ip} {port} < {file}");
        self.exec_ok(from, &["sh", "-c", &send]);
        assert!(
            receiver.wait().unwrap().success(),
            "receiver in {to} failed"
        );
    }

    /// The address `ip addr` shows inside the container on `ifname`.
    /// The IPv4 address on `ifname` in the container; None when it has no such interface or no
    /// address. Any other failure of `podman exec` panics with what it said (busybox `ip` says
    /// "can't find device", iproute2 "does not exist").
    pub fn address_inside(&self, container: &str, ifname: &str) -> Option<Ipv4Net> {
        let out = self.exec_output(container, &["ip", "-4", "-o", "addr", "show", ifname]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success()
                || stderr.contains("can't find device")
                || stderr.contains("does not exist"),
            "ip addr show {ifname} in {container} ({:?}): {stderr}",
            self.backend
        );
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.parse().ok())
    }

    /// Addresses leased to containers (the host member's own lease is not counted).
    pub fn leases(&self) -> usize {
        let dir = self
            .state_dir()
            .join("networks")
            .join(&self.name)
            .join("leases");
        let is_container_lease = |entry: &std::fs::DirEntry| {
            entry
                .file_name()
                .to_string_lossy()
                .parse::<IpAddr>()
                .is_ok()
                && !std::fs::read_to_string(entry.path())
                    .unwrap_or_default()
                    .starts_with("flatnet-host-")
        };
        std::fs::read_dir(dir)
            .map(|entries| entries.flatten().filter(is_container_lease).count())
            .unwrap_or(0)
    }

    /// Leases, attachment records and lighthouse entries of this network that remain.
    pub fn leftovers(&self) -> Vec<String> {
        let dir = self.state_dir().join("networks").join(&self.name);
        let mut left: Vec<String> = leaked_state(&dir)
            .into_iter()
            .map(|p| p.display().to_string())
            .collect();
        let prefix = format!("lighthouse:{}/", self.name);
        left.extend(
            lighthouse_entries(&self.state_dir())
                .into_iter()
                .filter(|e| e.starts_with(&prefix)),
        );
        left
    }

    pub fn remove_containers(&self) {
        let filter = format!("name=^{}-", self.name);
        let ids = self.podman_ok(&["ps", "-aq", "--filter", &filter]);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f", "-t", "0"];
            args.extend(ids);
            self.podman_ok(&args);
        }
    }

    pub fn remove_leftovers(&self) {
        self.remove_containers();
        match self.backend {
            Backend::Cni => {
                let _ = std::fs::remove_file(self.conflist());
            }
            Backend::Netavark => {
                let _ = self.podman(&["network", "rm", "-f", &self.name]);
            }
        }
    }
}

/// A `podman system service` the test started; killed, and its socket removed, when dropped.
pub struct ApiService {
    child: std::process::Child,
    socket: PathBuf,
}

impl Drop for ApiService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.remove_leftovers();
    }
}
