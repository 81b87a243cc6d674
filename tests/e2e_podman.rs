//! End to end with real Podman, both backends:
//! - CNI: the host's Podman 4.3 runs `flatnet-cni` from /usr/local/lib/cni;
//! - netavark: Podman 5 in the trixie chroot runs the `flatnet` plugin.
//!
//! `scripts/test.sh` installs both, builds the image and sets FLATNET_E2E=1. Without it these
//! tests skip on a developer machine and fail in CI, where skipping would hide a regression.

mod support;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use support::{leaked_state, lighthouse_entries};

const IMAGE: &str = "localhost/flatnet-test:latest";
const CHURN: usize = 40;

/// Podman tests share the engines' locks and the machine's two cores: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn e2e_enabled(test: &str) -> Option<MutexGuard<'static, ()>> {
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
enum Backend {
    Cni,
    Netavark,
}

fn chroot_dir() -> PathBuf {
    std::env::var_os("FLATNET_CHROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/flatnet/trixie"))
}

/// A Flatnet network on one backend, removed with its containers when dropped.
struct Net {
    backend: Backend,
    name: String,
    subnet: Ipv4Net,
}

impl Net {
    fn create(backend: Backend, name: &str, subnet: &str) -> Net {
        let net = Net {
            backend,
            name: name.to_string(),
            subnet: subnet.parse().unwrap(),
        };
        net.remove_leftovers();
        match backend {
            Backend::Cni => {
                let conflist = serde_json::json!({
                    "cniVersion": "1.0.0",
                    "name": name,
                    "plugins": [{"type": "flatnet-cni", "subnet": subnet}],
                });
                std::fs::write(net.conflist(), conflist.to_string()).unwrap();
            }
            Backend::Netavark => {
                // The host's CNI data plane holds UDP 4800 in this network namespace.
                net.podman_ok(&[
                    "network",
                    "create",
                    "-d",
                    "flatnet",
                    "--subnet",
                    subnet,
                    "-o",
                    "tunnel_port=4801",
                    name,
                ]);
            }
        }
        net
    }

    fn conflist(&self) -> PathBuf {
        PathBuf::from(format!("/etc/cni/net.d/{}.conflist", self.name))
    }

    fn podman(&self, args: &[&str]) -> Output {
        let mut cmd = match self.backend {
            Backend::Cni => Command::new("podman"),
            Backend::Netavark => {
                let mut cmd = Command::new("chroot");
                cmd.env_clear()
                    .env(
                        "PATH",
                        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    )
                    .env("HOME", "/root")
                    .env("PODMAN_IGNORE_CGROUPSV1_WARNING", "1")
                    .arg(chroot_dir())
                    .arg("podman");
                cmd
            }
        };
        cmd.args(args).output().unwrap()
    }

    fn podman_ok(&self, args: &[&str]) -> String {
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
    fn state_dir(&self) -> PathBuf {
        match self.backend {
            Backend::Cni => PathBuf::from("/run/flatnet"),
            Backend::Netavark => chroot_dir().join("run/flatnet"),
        }
    }

    fn container(&self, n: usize) -> String {
        format!("{}-c{n}", self.name)
    }

    fn run_detached(&self, name: &str, extra: &[&str]) {
        let mut args = vec!["run", "-d", "--name", name, "--network", &self.name];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[IMAGE, "sleep", "600"]);
        self.podman_ok(&args);
    }

    /// The address Podman reports for the container on this network.
    fn inspect_ip(&self, container: &str) -> Ipv4Addr {
        let format = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            self.name
        );
        let out = self.podman_ok(&["inspect", "-f", &format, container]);
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("inspect IP of {container}: {out:?}"))
    }

    /// Runs a command inside a running container. The chroot's runc (1.1) does not switch
    /// `podman exec` into the container's mount namespace, so there we enter the container's
    /// namespaces and root with nsenter from the host, which is what `exec` means.
    fn exec(&self, container: &str, args: &[&str]) -> Command {
        match self.backend {
            Backend::Cni => {
                let mut cmd = Command::new("podman");
                cmd.args(["exec", container]).args(args);
                cmd
            }
            Backend::Netavark => {
                let pid = self.podman_ok(&["inspect", "-f", "{{.State.Pid}}", container]);
                let mut cmd = Command::new("nsenter");
                cmd.args([
                    "-t",
                    pid.trim(),
                    "-m",
                    "-n",
                    "-p",
                    "-u",
                    "-i",
                    "-r",
                    "-w",
                    "--",
                ])
                .args(args);
                cmd
            }
        }
    }

    fn exec_ok(&self, container: &str, args: &[&str]) -> String {
        let out = self.exec(container, args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?} in {container}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Waits until something listens on TCP `port` in the container.
    fn wait_listening(&self, container: &str, port: u16) {
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
    fn send_file(&self, from: &str, to: &str, to_ip: Ipv4Addr, port: u16, file: &str) {
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
    fn address_inside(&self, container: &str, ifname: &str) -> Option<Ipv4Net> {
        let out = self
            .exec(container, &["ip", "-4", "-o", "addr", "show", ifname])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.parse().ok())
    }

    fn leases(&self) -> usize {
        let dir = self
            .state_dir()
            .join("networks")
            .join(&self.name)
            .join("leases");
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().parse::<Ipv4Addr>().is_ok())
                    .count()
            })
            .unwrap_or(0)
    }

    /// Leases, attachment records and lighthouse entries of this network that remain.
    fn leftovers(&self) -> Vec<String> {
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

    fn remove_containers(&self) {
        let filter = format!("name=^{}-", self.name);
        let ids = self.podman_ok(&["ps", "-aq", "--filter", &filter]);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f", "-t", "0"];
            args.extend(ids);
            self.podman_ok(&args);
        }
    }

    fn remove_leftovers(&self) {
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

impl Drop for Net {
    fn drop(&mut self) {
        self.remove_leftovers();
    }
}

fn basics(backend: Backend, name: &str, subnet: &str, static_ip: &str) {
    let net = Net::create(backend, name, subnet);

    let hello = net.podman_ok(&["run", "--rm", "--network", name, IMAGE, "echo", "hello"]);
    assert_eq!(hello.trim(), "hello");
    assert!(
        net.leftovers().is_empty(),
        "--rm left {:?}",
        net.leftovers()
    );

    // Two containers: addresses from the subnet, distinct, and what inspect reports is real.
    let (a, b) = (net.container(1), net.container(2));
    net.run_detached(&a, &[]);
    net.run_detached(&b, &[]);
    let mut seen = HashSet::new();
    for c in [&a, &b] {
        let inside = net.address_inside(c, "eth0").expect("eth0 has an address");
        assert!(
            net.subnet.contains(&inside.addr()),
            "{inside} outside {}",
            net.subnet
        );
        assert_eq!(inside.prefix_len(), net.subnet.prefix_len());
        assert_eq!(net.inspect_ip(c), inside.addr());
        seen.insert(inside.addr());
    }
    assert_eq!(seen.len(), 2, "both containers got {seen:?}");

    // --ip is honoured.
    let fixed = net.container(3);
    let wanted: Ipv4Addr = static_ip.parse().unwrap();
    net.run_detached(&fixed, &["--ip", static_ip]);
    assert_eq!(net.address_inside(&fixed, "eth0").unwrap().addr(), wanted);
    assert_eq!(net.inspect_ip(&fixed), wanted);
    assert_eq!(net.leases(), 3);

    // Restart: a new namespace, an address again, and no lease leaked by the old one.
    net.podman_ok(&["restart", "-t", "0", &a]);
    let after = net.address_inside(&a, "eth0").expect("eth0 after restart");
    assert!(net.subnet.contains(&after.addr()));
    assert_eq!(net.inspect_ip(&a), after.addr());
    assert_eq!(net.leases(), 3);

    net.remove_containers();
    assert!(net.leftovers().is_empty(), "rm left {:?}", net.leftovers());
}

fn churn(backend: Backend, name: &str, subnet: &str) {
    let net = Net::create(backend, name, subnet);
    std::thread::scope(|s| {
        for n in 0..CHURN {
            let net = &net;
            s.spawn(move || net.run_detached(&net.container(n), &[]));
        }
    });
    let ips: Vec<Ipv4Addr> = (0..CHURN)
        .map(|n| net.inspect_ip(&net.container(n)))
        .collect();
    let unique: HashSet<_> = ips.iter().collect();
    assert_eq!(unique.len(), CHURN, "duplicate addresses among {ips:?}");
    assert!(ips.iter().all(|ip| net.subnet.contains(ip)));
    assert_eq!(net.leases(), CHURN);

    std::thread::scope(|s| {
        for n in 0..CHURN {
            let net = &net;
            s.spawn(move || net.podman_ok(&["rm", "-f", "-t", "0", &net.container(n)]));
        }
    });
    let left = net.leftovers();
    assert!(
        left.is_empty(),
        "{} leftovers after churn: {left:?}",
        left.len()
    );
    println!(
        "churn {backend:?}: {CHURN} containers, {} unique addresses, 0 leftovers",
        unique.len()
    );
}

/// Two containers talk through Flatnet's tunnels: ping both ways, TCP both ways, 50 MB intact.
fn traffic(backend: Backend, name: &str, subnet: &str) {
    let net = Net::create(backend, name, subnet);
    let (a, b) = (net.container(1), net.container(2));
    net.run_detached(&a, &["--cap-add", "NET_RAW"]);
    net.run_detached(&b, &["--cap-add", "NET_RAW"]);
    let (ip_a, ip_b) = (net.inspect_ip(&a), net.inspect_ip(&b));

    for (from, to) in [(&a, ip_b), (&b, ip_a)] {
        let out = net.exec_ok(from, &["ping", "-c", "3", "-W", "2", &to.to_string()]);
        assert!(out.contains("3 packets received"), "{from} -> {to}: {out}");
    }
    for (from, to, to_ip, port) in [(&a, &b, ip_b, 7001), (&b, &a, ip_a, 7002)] {
        let message = format!("hello from {from} to {to}");
        net.exec_ok(
            from,
            &["sh", "-c", &format!("echo '{message}' > /tmp/message")],
        );
        net.send_file(from, to, to_ip, port, "/tmp/message");
        assert_eq!(net.exec_ok(to, &["cat", "/tmp/message"]).trim(), message);
    }

    let make = "dd if=/dev/urandom of=/tmp/blob bs=1M count=50 2>/dev/null && sha256sum /tmp/blob";
    let sent = net.exec_ok(&a, &["sh", "-c", make]);
    let started = Instant::now();
    net.send_file(&a, &b, ip_b, 7003, "/tmp/blob");
    let elapsed = started.elapsed();
    let received = net.exec_ok(&b, &["sha256sum", "/tmp/blob"]);
    let digest = |s: &str| s.split_whitespace().next().unwrap().to_string();
    assert_eq!(digest(&sent), digest(&received), "50 MB arrived altered");
    println!(
        "{backend:?}: 50 MB in {:.2} s ({:.0} Mbit/s), sha256 {}",
        elapsed.as_secs_f64(),
        400.0 / elapsed.as_secs_f64(),
        digest(&sent)
    );
}

#[test]
fn cni_backend_traffic() {
    let Some(_serial) = e2e_enabled("cni_backend_traffic") else {
        return;
    };
    traffic(Backend::Cni, "fne2e-cnitraffic", "10.207.0.0/24");
}

#[test]
fn netavark_backend_traffic() {
    let Some(_serial) = e2e_enabled("netavark_backend_traffic") else {
        return;
    };
    traffic(Backend::Netavark, "fne2e-nvtraffic", "10.208.0.0/24");
}

#[test]
fn cni_backend_basics() {
    let Some(_serial) = e2e_enabled("cni_backend_basics") else {
        return;
    };
    basics(Backend::Cni, "fne2e-cni", "10.201.0.0/24", "10.201.0.200");
}

#[test]
fn netavark_backend_basics() {
    let Some(_serial) = e2e_enabled("netavark_backend_basics") else {
        return;
    };
    basics(
        Backend::Netavark,
        "fne2e-nv",
        "10.202.0.0/24",
        "10.202.0.200",
    );
}

#[test]
fn netavark_connect_and_disconnect() {
    let Some(_serial) = e2e_enabled("netavark_connect_and_disconnect") else {
        return;
    };
    let first = Net::create(Backend::Netavark, "fne2e-nva", "10.203.0.0/24");
    let second = Net::create(Backend::Netavark, "fne2e-nvb", "10.204.0.0/24");
    let c = first.container(1);
    first.run_detached(&c, &[]);

    second.podman_ok(&["network", "connect", &second.name, &c]);
    let eth1 = first
        .address_inside(&c, "eth1")
        .expect("eth1 after connect");
    assert!(second.subnet.contains(&eth1.addr()), "{eth1}");
    assert_eq!(second.inspect_ip(&c), eth1.addr());
    assert_eq!(second.leases(), 1);

    second.podman_ok(&["network", "disconnect", &second.name, &c]);
    assert_eq!(first.address_inside(&c, "eth1"), None);
    assert!(first.address_inside(&c, "eth0").is_some());
    assert!(second.leftovers().is_empty(), "{:?}", second.leftovers());

    first.remove_containers();
    assert!(first.leftovers().is_empty(), "{:?}", first.leftovers());
}

#[test]
fn cni_backend_churn() {
    let Some(_serial) = e2e_enabled("cni_backend_churn") else {
        return;
    };
    churn(Backend::Cni, "fne2e-cnichurn", "10.205.0.0/24");
}

#[test]
fn netavark_backend_churn() {
    let Some(_serial) = e2e_enabled("netavark_backend_churn") else {
        return;
    };
    churn(Backend::Netavark, "fne2e-nvchurn", "10.206.0.0/24");
}
