//! The netavark path on several hosts: two Podman 5 instances (the chroot's) as two hosts on
//! one etcd network. Each host has what a machine of its own has: a network namespace on the
//! underlay, a mount namespace in which its IPAM database lives (rootful Podman keeps it in
//! `/run/containers/networks`, one per machine), its own storage and network configuration,
//! its flatnetd, key, host certificate and etcd user. Podman allocates plugin networks'
//! addresses itself from that database, so before `create` narrowed its range both hosts
//! handed out the bottom of the subnet. Needs root, etcd and the chroot (scripts/test.sh).

mod cluster;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cluster::Cluster;
use flatnet_test_support::podman::{chroot_dir, IMAGE};
use flatnet_test_support::{needs_podman, needs_root};

const NETWORK: &str = "twohosts";
const CONTAINERS_PER_HOST: usize = 20;

/// One host's Podman: its directories inside the chroot (as Podman there sees them) and the
/// mount namespace every Podman command of the host runs in.
struct PodmanHost {
    index: usize,
    netns: String,
    /// The host's tunnel endpoint.
    endpoint: String,
    /// The host's directory outside the chroot: its mount namespace file and IPAM directory.
    outside: PathBuf,
    /// The host's directory inside the chroot (storage, configuration, certificates).
    inside: String,
    /// The host's state directory inside the chroot (flatnetd's socket, key, records).
    state: String,
}

impl PodmanHost {
    /// Makes the host's directories and mount namespace, with its own IPAM database directory
    /// over the chroot's `/run/containers/networks`.
    fn new(cluster: &Cluster, index: usize, base: &Path) -> PodmanHost {
        let outside = base.join(format!("h{index}"));
        let tag = base.file_name().unwrap().to_str().unwrap();
        let host = PodmanHost {
            index,
            netns: cluster.hosts[index].ns.name.clone(),
            endpoint: cluster.hosts[index].endpoint(),
            inside: format!("/var/lib/{tag}/h{index}"),
            state: format!("/run/{tag}-h{index}"),
            outside,
        };
        std::fs::create_dir_all(host.outside.join("networks")).unwrap();
        std::fs::create_dir_all(host.in_chroot(&host.inside)).unwrap();
        std::fs::create_dir_all(host.in_chroot(&host.state)).unwrap();
        std::fs::write(host.mount_ns(), "").unwrap();
        let networks = chroot_dir().join("run/containers/networks");
        std::fs::create_dir_all(&networks).unwrap();
        let made = Command::new("unshare")
            .arg(format!("--mount={}", host.mount_ns().display()))
            .args(["--propagation", "slave", "mount", "--bind"])
            .arg(host.outside.join("networks"))
            .arg(&networks)
            .status()
            .unwrap();
        assert!(made.success(), "the mount namespace of host {index}");
        host
    }

    fn mount_ns(&self) -> PathBuf {
        self.outside.join("mnt")
    }

    /// A path inside the chroot, as seen from outside.
    fn in_chroot(&self, path: &str) -> PathBuf {
        chroot_dir().join(path.trim_start_matches('/'))
    }

    /// A command run in the chroot, in this host's network and mount namespaces.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--mount={}", self.mount_ns().display()))
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args(["--", "chroot"])
            .arg(chroot_dir())
            .args(args)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", "/root")
            .env("PODMAN_IGNORE_CGROUPSV1_WARNING", "1");
        cmd
    }

    fn podman(&self, args: &[&str]) -> Output {
        self.podman_command(args).output().unwrap()
    }

    fn podman_command(&self, args: &[&str]) -> Command {
        let root = format!("{}/storage", self.inside);
        let runroot = format!("{}/runroot", self.state);
        let config = format!("{}/networks", self.inside);
        let mut all = vec![
            "podman",
            "--root",
            &root,
            "--runroot",
            &runroot,
            "--network-config-dir",
            &config,
            "--storage-driver",
            "vfs",
        ];
        all.extend_from_slice(args);
        self.command(&all)
    }

    fn podman_ok(&self, args: &[&str]) -> String {
        self.succeeded(&format!("{args:?}"), self.podman(args))
    }

    /// The output of a Podman command that must have succeeded (`what` names it).
    fn succeeded(&self, what: &str, out: Output) -> String {
        assert!(
            out.status.success(),
            "host {}: podman {what}: {}\nflatnetd's log:\n{}",
            self.index,
            String::from_utf8_lossy(&out.stderr),
            self.daemon_log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn daemon_log(&self) -> String {
        let log = self.in_chroot(&format!("{}/flatnet/flatnetd.log", self.state));
        std::fs::read_to_string(log).unwrap_or_default()
    }

    /// Copies a file into the host's directory in the chroot; returns its path there.
    fn give(&self, from: &Path, name: &str) -> String {
        let inside = format!("{}/{name}", self.inside);
        std::fs::copy(from, self.in_chroot(&inside)).unwrap();
        inside
    }

    /// The host's key (`flatnetd key`, made now in its state directory), granted its block by
    /// the network CA; its etcd credentials and the CA certificates copied in. Returns the
    /// `-o` options of the network on this host.
    fn provision(&self, cluster: &Cluster) -> Vec<String> {
        let flatnet_state = format!("{}/flatnet", self.state);
        let out = self
            .command(&["flatnetd", "--state-dir", &flatnet_state, "key"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let host_cert = format!("{}/host.crt", self.inside);
        let ca_dir = cluster.network_ca.as_ref().unwrap().path();
        let name = format!("host-{}", self.index);
        let block = cluster.block(self.index);
        let block6 = cluster.block6(self.index).map(|b| b.to_string());
        let extra: Vec<&str> = block6
            .iter()
            .flat_map(|b| ["--block", b.as_str()])
            .collect();
        cluster::sign(
            ca_dir,
            &name,
            &key,
            block,
            &[NETWORK],
            &extra,
            &self.in_chroot(&host_cert),
        );
        let etcd = cluster.etcd();
        let client = etcd.host_client(self.index, &[NETWORK]);
        let endpoints = etcd.endpoints().join(",");
        [
            ("lighthouse", "etcd".to_string()),
            ("etcd_endpoints", endpoints),
            ("etcd_ca_file", self.give(&etcd.ca_file(), "etcd-ca.pem")),
            ("etcd_cert_file", self.give(&client.cert, "etcd-client.pem")),
            ("etcd_key_file", self.give(&client.key, "etcd-client.key")),
            (
                "network_ca_file",
                self.give(&cluster.network_ca_cert(), "ca.crt"),
            ),
            ("host_cert_file", host_cert),
            ("state_dir", flatnet_state),
            ("endpoint", self.endpoint.clone()),
        ]
        .into_iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect()
    }

    fn import_image(&self) {
        let tarball = format!("{}/image.tar", self.inside);
        std::fs::copy(
            "/var/lib/flatnet/image/flatnet-test.tar",
            self.in_chroot(&tarball),
        )
        .expect("the test image's tarball (scripts/build-image.sh)");
        self.podman_ok(&[
            "import",
            "-q",
            "--change",
            "CMD [\"/bin/sh\"]",
            &tarball,
            IMAGE,
        ]);
    }

    fn status(&self) -> serde_json::Value {
        let state = format!("{}/flatnet", self.state);
        let out = self
            .command(&["flatnetd", "--state-dir", &state, "status", "--json"])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    /// Waits until something in the container listens on TCP `port`.
    fn wait_listening(&self, container: &str, port: u16) {
        let pid = self.pid(container);
        let filter = format!("sport = :{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = Command::new("nsenter")
                .args(["-t", &pid, "-n", "--", "ss", "-Hltn", &filter])
                .output()
                .unwrap();
            if !out.stdout.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "nothing listens on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The container's process, to enter its namespaces.
    fn pid(&self, container: &str) -> String {
        self.podman_ok(&["inspect", "-f", "{{.State.Pid}}", container])
            .trim()
            .to_string()
    }

    fn address(&self, container: &str) -> Ipv4Addr {
        self.inspect_network(container, "IPAddress")
            .parse()
            .unwrap()
    }

    fn address6(&self, container: &str) -> Ipv6Addr {
        self.inspect_network(container, "GlobalIPv6Address")
            .parse()
            .unwrap()
    }

    /// A field of the container's settings on the network, as `podman inspect` shows it.
    fn inspect_network(&self, container: &str, field: &str) -> String {
        let format = format!("{{{{(index .NetworkSettings.Networks \"{NETWORK}\").{field}}}}}");
        let out = self.podman_ok(&["inspect", "-f", &format, container]);
        out.trim().to_string()
    }

    /// Addresses leased on the network here (containers and the host member).
    fn leases(&self) -> usize {
        let dir = format!("{}/flatnet/networks/{NETWORK}/leases", self.state);
        let is_address =
            |e: &std::fs::DirEntry| e.file_name().to_string_lossy().parse::<Ipv4Addr>().is_ok();
        std::fs::read_dir(self.in_chroot(&dir))
            .map(|entries| entries.flatten().filter(is_address).count())
            .unwrap_or(0)
    }

    fn clean(&self) {
        let _ = self.podman(&["rm", "-a", "-f", "-t", "0"]);
        let _ = self.podman(&["network", "rm", "-f", NETWORK]);
        let state = format!("{}/flatnet", self.state);
        let _ = self
            .command(&["flatnetd", "--state-dir", &state, "stop"])
            .output();
        let _ = Command::new("umount").arg(self.mount_ns()).status();
        let _ = std::fs::remove_dir_all(self.in_chroot(&self.inside));
        let _ = std::fs::remove_dir_all(self.in_chroot(&self.state));
    }
}

/// Pings every address from inside the container; returns those that did not answer.
fn unanswered<A: ToString>(pid: &str, targets: &[A]) -> Vec<String> {
    let list: Vec<String> = targets.iter().map(ToString::to_string).collect();
    let script = format!(
        "for ip in {}; do ping -c 1 -W 2 $ip >/dev/null 2>&1 || echo $ip; done",
        list.join(" ")
    );
    let out = Command::new("nsenter")
        .args(["-t", pid, "-m", "-n", "-r", "-w", "--", "sh", "-c", &script])
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// Removes the hosts (containers, networks, daemons, mount namespaces, directories) even when
/// the test fails half-way.
struct Hosts(Vec<PodmanHost>, PathBuf);

impl Drop for Hosts {
    fn drop(&mut self) {
        for host in &self.0 {
            host.clean();
        }
        let _ = Command::new("umount").arg(&self.1).status();
        let _ = std::fs::remove_dir_all(&self.1);
        // The hosts' parent directory in the chroot has the base's name.
        let tag = self.1.file_name().unwrap().to_str().unwrap();
        let _ = std::fs::remove_dir_all(chroot_dir().join("var/lib").join(tag));
    }
}

/// `podman run -d` of the test image on the network, with extra flags.
fn run(host: &PodmanHost, name: &str, extra: &[&str]) -> Output {
    let mut args = vec!["run", "-d", "--name", name, "--network", NETWORK];
    args.extend_from_slice(extra);
    args.extend([IMAGE, "sleep", "600"]);
    host.podman(&args)
}

/// Two hosts on an etcd cluster of `members`, each with its Podman's mount namespace and
/// directories; the network has `subnets` (an IPv4 one, or an IPv4 and an IPv6 one
/// comma-separated), and the tunnels between the hosts run over IPv6 if `ipv6_underlay`.
fn two_hosts(members: usize, subnets: &str, ipv6_underlay: bool) -> (Cluster, Hosts) {
    let mut cluster = Cluster::with_etcd_in(0, members, subnets);
    cluster.ipv6_underlay = ipv6_underlay;
    let base = PathBuf::from(format!("/run/flatnet-podman-hosts-{}", std::process::id()));
    std::fs::create_dir_all(&base).unwrap();
    let mut hosts = Hosts(Vec::new(), base.clone());
    // Mount namespace files live on a private mount of their own (the kernel's rule).
    for args in [&["--bind", ".", "."][..], &["--make-private", "."][..]] {
        let status = Command::new("mount")
            .args(args)
            .current_dir(&base)
            .status()
            .unwrap();
        assert!(status.success());
    }
    for index in 0..2 {
        cluster.add_host();
        hosts.0.push(PodmanHost::new(&cluster, index, &base));
    }
    (cluster, hosts)
}

/// `podman network create` on each host with its own files; returns each network's range.
fn create_networks(cluster: &Cluster, hosts: &Hosts) -> HashSet<String> {
    let mut ranges = HashSet::new();
    for host in &hosts.0 {
        host.import_image();
        let options = host.provision(cluster);
        let mut args = vec!["network", "create", "-d", "flatnet"];
        for subnet in cluster.subnet.split(',') {
            args.extend(["--subnet", subnet]);
        }
        if cluster.block6(0).is_some() {
            args.push("--ipv6");
        }
        for option in &options {
            args.extend(["-o", option]);
        }
        args.push(NETWORK);
        host.podman_ok(&args);
        let format = "{{range .Subnets}}{{.LeaseRange}}{{end}}";
        let range = host.podman_ok(&["network", "inspect", "-f", format, NETWORK]);
        ranges.insert(range.trim().to_string());
    }
    ranges
}

/// A container: its host, name and address.
type Started = (usize, String, Ipv4Addr);

/// `per_host` containers on each host, started alternately as two busy hosts would.
fn start_containers(hosts: &Hosts, per_host: usize) -> Vec<Started> {
    let mut containers = Vec::new();
    let started = Instant::now();
    for n in 0..per_host {
        for host in &hosts.0 {
            let name = format!("h{}-c{n}", host.index);
            host.succeeded(&format!("run {name}"), run(host, &name, &[]));
            containers.push((host.index, name.clone(), host.address(&name)));
        }
    }
    eprintln!(
        "{} containers started in {:.1} s",
        containers.len(),
        started.elapsed().as_secs_f64()
    );
    containers
}

/// Waits until every host routes `expected` addresses (containers and host members).
fn wait_for_routes(hosts: &Hosts, expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !hosts
        .0
        .iter()
        .all(|h| h.status()["routes"].as_u64() == Some(expected))
    {
        assert!(
            Instant::now() < deadline,
            "not {expected} routes on every host"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Quorum lost: established traffic goes on, a new container fails within 5 s with "try
/// again" and leaves no lease; quorum back, the same daemons attach again.
fn quorum_lost_and_back(cluster: &mut Cluster, hosts: &Hosts, containers: &[Started]) {
    let etcd = cluster.etcd.as_mut().unwrap();
    etcd.kill_member(1);
    etcd.kill_member(2);
    let (first, other) = (&containers[0], &containers[1]);
    let pid = hosts.0[first.0].pid(&first.1);
    assert!(
        unanswered(&pid, &[other.2]).is_empty(),
        "traffic stopped with etcd"
    );
    let host = &hosts.0[0];
    let leases = host.leases();
    let started = Instant::now();
    let out = run(host, "without-quorum", &[]);
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without quorum");
    assert!(stderr.contains("try again"), "{stderr}");
    assert!(took < Duration::from_secs(5), "refused after {took:?}");
    eprintln!(
        "without quorum, podman run failed in {:.1} s",
        took.as_secs_f64()
    );
    assert_eq!(host.leases(), leases, "the refused container left a lease");
    host.podman_ok(&["rm", "-f", "without-quorum"]);
    cluster.etcd.as_mut().unwrap().restart_members(&[1, 2]);
    host.succeeded("run with-quorum", run(host, "with-quorum", &[]));
}

#[test]
fn two_podman_hosts_on_etcd_give_distinct_addresses_and_reach_each_other() {
    needs_root!();
    let _serial = needs_podman!();
    let (mut cluster, hosts) = two_hosts(3, "198.51.100.0/24", false);
    let ranges = create_networks(&cluster, &hosts);
    assert_eq!(
        ranges.len(),
        2,
        "each host's Podman has its own range: {ranges:?}"
    );

    let containers = start_containers(&hosts, CONTAINERS_PER_HOST);
    let addresses: HashSet<Ipv4Addr> = containers.iter().map(|c| c.2).collect();
    assert_eq!(
        addresses.len(),
        containers.len(),
        "addresses repeat: {containers:?}"
    );
    for (host, name, ip) in &containers {
        assert!(
            cluster.block(*host).contains(ip),
            "{name} got {ip}, outside host {host}'s block"
        );
    }

    wait_for_routes(&hosts, containers.len() as u64 + 2);
    // Every pair across the hosts, both ways.
    for (host, name, _) in &containers {
        let others: Vec<Ipv4Addr> = containers
            .iter()
            .filter(|c| c.0 != *host)
            .map(|c| c.2)
            .collect();
        let missed = unanswered(&hosts.0[*host].pid(name), &others);
        assert!(missed.is_empty(), "{name} reaches none of {missed:?}");
    }

    quorum_lost_and_back(&mut cluster, &hosts, &containers);

    // `--ip` of the other host's block: refused with an error that says why.
    let foreign = cluster.block(1).hosts().nth(5).unwrap().to_string();
    let out = run(&hosts.0[0], "foreign", &["--ip", &foreign]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("not in this host's blocks"),
        "--ip {foreign} on host 0: {stderr}"
    );
}

#[test]
fn two_podman_hosts_on_etcd_carry_a_dual_stack_network() {
    needs_root!();
    let _serial = needs_podman!();
    let (cluster, hosts) = two_hosts(1, "198.51.100.0/24,fd77:2::/64", true);
    let ranges = create_networks(&cluster, &hosts);
    assert_eq!(ranges.len(), 2, "a range per host: {ranges:?}");

    let containers = start_containers(&hosts, 2);
    let mut addresses6 = HashSet::new();
    for (host, name, _) in &containers {
        let ip6 = hosts.0[*host].address6(name);
        let block6 = cluster.block6(*host).unwrap();
        assert!(block6.contains(&ip6), "{name} got {ip6}, outside {block6}");
        assert!(addresses6.insert((*host, name.clone(), ip6)));
    }
    // Each family's address and the host member's, on each host.
    wait_for_routes(&hosts, 2 * (containers.len() as u64 + 2));
    for (host, name, _) in &containers {
        let others: Vec<IpAddr> = addresses6
            .iter()
            .filter(|c| c.0 != *host)
            .map(|c| IpAddr::V6(c.2))
            .collect();
        let missed = unanswered(&hosts.0[*host].pid(name), &others);
        assert!(
            missed.is_empty(),
            "{name} reaches none of {missed:?} over IPv6"
        );
    }

    // By name (AAAA from the lighthouse) and 50 MB of TCP, across the IPv6 underlay.
    let (sender, receiver) = (&hosts.0[0], &hosts.0[1]);
    let by_name = unanswered(&sender.pid("h0-c0"), &["h1-c0"]);
    assert!(by_name.is_empty(), "h1-c0 by name: {by_name:?}");
    let to = receiver.address6("h1-c0");
    // The chroot's image has OpenBSD netcat: `-6` listens on IPv6, `-N` passes the end of the file on.
    let store = ["exec", "h1-c0", "sh", "-c", "nc -6 -l -p 7306 > /tmp/blob"];
    let mut listening = receiver.podman_command(&store).spawn().unwrap();
    let make = "dd if=/dev/urandom of=/tmp/blob bs=1M count=50 2>/dev/null && sha256sum /tmp/blob";
    let sent = sender.podman_ok(&["exec", "h0-c0", "sh", "-c", make]);
    receiver.wait_listening("h1-c0", 7306);
    let send = format!("timeout 60 nc -N {to} 7306 < /tmp/blob");
    sender.podman_ok(&["exec", "h0-c0", "sh", "-c", &send]);
    assert!(listening.wait().unwrap().success(), "the receiver failed");
    let received = receiver.podman_ok(&["exec", "h1-c0", "sha256sum", "/tmp/blob"]);
    let digest = |s: &str| s.split_whitespace().next().unwrap_or_default().to_string();
    assert_eq!(digest(&sent), digest(&received), "50 MB arrived altered");
    let peer = &sender.status()["peers"][0]["endpoint"];
    let over: std::net::SocketAddr = peer.as_str().unwrap().parse().unwrap();
    assert!(over.is_ipv6(), "the hosts talk over {over}");
}
