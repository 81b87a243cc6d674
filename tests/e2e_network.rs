//! A complete Podman network, end to end on both backends: names and aliases, published ports
//! (from 127.0.0.1 and from the host's own address, TCP, UDP, ranges, conflicts), the host as a
//! member, egress to "the outside" with DNS forwarding, `--internal` (closed to the outside and
//! to the host's other networks, but for its published ports), and what is left after the last
//! container, also when flatnetd was killed in the middle.
//!
//! "The outside" is a namespace this test makes, on a veth from the host's namespace
//! (198.51.100.0/24), with a web server and its own resolver (dnsmasq); nothing here sends a
//! packet beyond this machine, and no query reaches the host's resolvers.

use flatnet_test_support::needs_podman;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flatnet_test_support::podman::{Backend, Net, NetOptions};
use flatnet_test_support::{run_ok, TestNetns};

const OUTSIDE_HOST_SIDE: &str = "198.51.100.1";
const OUTSIDE_SERVER: &str = "198.51.100.2";
const OUTSIDE_NAME: &str = "outside.test";
const BUSYBOX: &str = "/var/lib/flatnet/image/rootfs/bin/busybox";

/// A stand-in for the world beyond the host: a namespace on a veth from the host's namespace,
/// serving HTTP and DNS (`outside.test` -> its own address) on 198.51.100.2. Its processes are
/// stopped by PID and the namespace deleted when dropped.
struct Outside {
    ns: TestNetns,
    veth: String,
    servers: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Outside {
    fn start() -> Outside {
        let ns = TestNetns::new("out");
        let veth = format!("fnout{}", std::process::id() % 100_000);
        run_ok(
            "ip",
            &[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
            ],
        );
        run_ok(
            "ip",
            &[
                "addr",
                "add",
                &format!("{OUTSIDE_HOST_SIDE}/24"),
                "dev",
                &veth,
            ],
        );
        run_ok("ip", &["link", "set", &veth, "up"]);
        ns.ip(&[
            "addr",
            "add",
            &format!("{OUTSIDE_SERVER}/24"),
            "dev",
            "eth0",
        ]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["link", "set", "lo", "up"]);

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), "outside-web\n").unwrap();
        let in_ns = |args: &[&str]| {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &ns.name]).args(args);
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
            cmd
        };
        let web_root = dir.path().to_str().unwrap().to_string();
        let httpd = in_ns(&[
            BUSYBOX,
            "httpd",
            "-f",
            "-p",
            &format!("{OUTSIDE_SERVER}:80"),
            "-h",
            &web_root,
        ])
        .spawn()
        .unwrap();
        let log = dir.path().join("queries.log");
        // Authoritative for .test, no upstream of its own: it never forwards anything.
        let dnsmasq = in_ns(&[
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &format!("--listen-address={OUTSIDE_SERVER}"),
            "--local=/test/",
            &format!("--address=/{OUTSIDE_NAME}/{OUTSIDE_SERVER}"),
            "--log-queries",
            &format!("--log-facility={}", log.display()),
            "--user=root",
            "--pid-file=",
        ])
        .spawn()
        .unwrap();
        let outside = Outside {
            ns,
            veth,
            servers: vec![httpd, dnsmasq],
            dir,
        };
        outside.wait_serving();
        outside
    }

    /// Waits until the web server and the resolver have bound their sockets.
    fn wait_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let bound = |flags: &str, port: &str| {
            let out = run_ok("ip", &["netns", "exec", &self.ns.name, "ss", flags]);
            out.contains(&format!("{OUTSIDE_SERVER}:{port}"))
        };
        while !(bound("-ltn", "80") && bound("-lun", "53")) {
            assert!(
                Instant::now() < deadline,
                "the outside servers did not start"
            );
            std::thread::yield_now();
        }
    }

    /// Routes `subnet` through the host, as a neighbour that learnt it would.
    fn route_through_host(&self, subnet: &str) {
        self.ns
            .ip(&["route", "add", subnet, "via", OUTSIDE_HOST_SIDE]);
    }

    /// Fetches `url` from the outside within 3 s: the page, or None.
    fn fetch(&self, url: &str) -> Option<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns.name, BUSYBOX])
            .args(["timeout", "3", BUSYBOX, "wget", "-q", "-O", "-", url])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    }

    fn pings(&self, ip: &str) -> bool {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns.name])
            .args(["ping", "-c", "1", "-W", "2", ip])
            .output()
            .unwrap();
        out.status.success()
    }

    /// Every query the outside resolver was asked, as it logged them.
    fn queries(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("queries.log")).unwrap_or_default()
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
    }
}

/// A UDP echo server in a container's network namespace (busybox has none): the host's python3
/// entered into the namespace with nsenter, so its packets take the container's path. It
/// answers one datagram; stopped by PID when dropped.
struct UdpEcho(Child);

impl UdpEcho {
    fn start(net: &Net, container: &str, port: u16) -> UdpEcho {
        use std::io::BufRead;
        let script = format!(
            "import socket\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             s.bind(('0.0.0.0', {port}))\n\
             print('ready', flush=True)\n\
             data, peer = s.recvfrom(512)\n\
             s.sendto(b'echo:' + data, peer)\n"
        );
        let pid = net.podman_ok(&["inspect", "-f", "{{.State.Pid}}", container]);
        let mut child = Command::new("nsenter")
            .args(["-t", pid.trim(), "-n", "python3", "-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        UdpEcho(child)
    }

    /// Sends "datagram" to `to` until the echo comes back (UDP may lose the first); bounded.
    fn ask(&self, to: SocketAddr) -> String {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 512];
        loop {
            assert!(Instant::now() < deadline, "no UDP answer through {to}");
            socket.send_to(b"datagram", to).unwrap();
            if let Ok(n) = socket.recv(&mut buf) {
                return String::from_utf8_lossy(&buf[..n]).to_string();
            }
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET /` over TCP from the test process (the host); the body, or the error.
fn http_get(address: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(3))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// The host's own address on its underlay: the source of its default route, else its first
/// global IPv4 address outside Flatnet's interfaces.
fn host_address() -> Ipv4Addr {
    let routes = run_ok("ip", &["-4", "route", "show", "default"]);
    let dev = routes.split_whitespace().skip_while(|w| *w != "dev").nth(1);
    let addrs = match dev {
        Some(dev) => run_ok(
            "ip",
            &["-4", "-o", "addr", "show", "dev", dev, "scope", "global"],
        ),
        None => run_ok("ip", &["-4", "-o", "addr", "show", "scope", "global"]),
    };
    addrs
        .lines()
        .filter(|l| !l.contains(" fn-") && !l.contains(" fnout"))
        .find_map(|l| l.split_whitespace().nth(3)?.split('/').next()?.parse().ok())
        .expect("the host has an IPv4 address")
}

fn nft_ruleset() -> String {
    run_ok("nft", &["list", "ruleset"])
}

fn host_ping(ip: &str) -> bool {
    Command::new("ping")
        .args(["-c", "1", "-W", "2", ip])
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Runs `cmd` in `container`; true if it succeeded.
fn succeeds(net: &Net, container: &str, cmd: &[&str]) -> bool {
    net.exec_output(container, cmd).status.success()
}

/// Fetches `url` from inside `container` within 3 s: the page, or None if it cannot be had.
/// The limit is busybox's `timeout`: busybox 1.35's own `wget -T` crashes (exit 139), which
/// would pass for "unreachable", so a crash fails the test instead.
fn fetch(net: &Net, container: &str, url: &str) -> Option<String> {
    let out = net.exec_output(container, &["timeout", "3", "wget", "-q", "-O", "-", url]);
    // Through `podman exec` a crash is an exit code.
    let crashed = out.status.code() == Some(128 + libc::SIGSEGV);
    assert!(
        !crashed,
        "wget of {url} crashed: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

/// Asks the network's resolver (flatnetd at the gateway) inside `container`.
fn nslookup(net: &Net, container: &str, name: &str) -> String {
    let gateway = gateway(net);
    let out = net.exec_output(container, &["nslookup", name, &gateway]);
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

fn gateway(net: &Net) -> String {
    Ipv4Addr::from(u32::from(net.subnet.network()) + 1).to_string()
}

/// The host member interface of this network, as flatnetd reports it.
fn member_ifname(net: &Net) -> String {
    let status = net.daemon_status();
    let networks = status["networks"].as_array().cloned().unwrap_or_default();
    let ours = networks.iter().find(|n| n["network"] == net.name.as_str());
    ours.and_then(|n| n["host_member"].as_str())
        .unwrap_or_else(|| panic!("no host member for {} in {status}", net.name))
        .to_string()
}

/// What must be gone once the network has no containers: its host member, its rules, its
/// state (leases, records, lighthouse entries, names).
fn assert_nothing_left(net: &Net, member: &str, host_ports: &[u16]) {
    let links = run_ok("ip", &["-o", "link", "show"]);
    assert!(
        !links.contains(member),
        "host member {member} is left: {links}"
    );
    let rules = nft_ruleset();
    assert!(
        !rules.contains(member),
        "rules for {member} are left: {rules}"
    );
    for port in host_ports {
        assert!(
            !rules.contains(&format!("dport {port} ")),
            "rule for {port} is left: {rules}"
        );
    }
    assert!(net.leftovers().is_empty(), "{:?}", net.leftovers());
}

struct Ports {
    local: u16,
    any: u16,
    udp: u16,
    range: u16,
}

fn complete_network(backend: Backend, name: &str, subnet: &str, ports: Ports) {
    let outside = Outside::start();
    let options = NetOptions {
        internal: false,
        dns_upstream: Some(OUTSIDE_SERVER),
        ..NetOptions::default()
    };
    let net = Net::create_with(backend, name, subnet, &options);
    let (web, client, ranged) = (net.container(1), net.container(2), net.container(3));
    let p_local = format!("127.0.0.1:{}:80", ports.local);
    let p_any = format!("{}:80", ports.any);
    let p_udp = format!("{}:9999/udp", ports.udp);
    let serve = "echo hello-web > /tmp/index.html && exec httpd -f -p 80 -h /tmp";
    net.run_command(
        &web,
        &[
            "--network-alias",
            "www",
            "-p",
            &p_local,
            "-p",
            &p_any,
            "-p",
            &p_udp,
        ],
        &["sh", "-c", serve],
    );
    net.run_detached(&client, &["--cap-add", "NET_RAW"]);
    let span = format!("{}-{}", ports.range, ports.range + 2);
    let serve_range = (0..3)
        .map(|i| {
            let port = ports.range + i;
            format!("mkdir /tmp/{i} && echo port-{port} > /tmp/{i}/index.html && httpd -p {port} -h /tmp/{i}")
        })
        .collect::<Vec<_>>()
        .join(" && ")
        + " && exec sleep 600";
    net.run_command(
        &ranged,
        &["-p", &format!("{span}:{span}")],
        &["sh", "-c", &serve_range],
    );
    net.wait_listening(&web, 80);
    net.wait_listening(&ranged, ports.range + 2);
    let member = member_ifname(&net);

    // Names: the container's name and its alias, with no --dns flag.
    for name in [&web, "www"] {
        let out = net.exec_ok(&client, &["ping", "-c", "1", "-W", "2", name]);
        assert!(out.contains("1 packets received"), "ping {name}: {out}");
    }
    let page = net.exec_ok(
        &client,
        &["wget", "-q", "-O", "-", &format!("http://{web}:80/")],
    );
    assert_eq!(page.trim(), "hello-web");

    // Published ports from the host: loopback, the host's own address, UDP, a range.
    let local: SocketAddr = ([127, 0, 0, 1], ports.local).into();
    assert!(http_get(local).unwrap().contains("hello-web"));
    let own: SocketAddr = (host_address(), ports.any).into();
    assert!(http_get(own).unwrap().contains("hello-web"), "via {own}");
    let any_local: SocketAddr = ([127, 0, 0, 1], ports.any).into();
    assert!(http_get(any_local).unwrap().contains("hello-web"));
    for i in 0..3 {
        let port = ports.range + i;
        let body = http_get(([127, 0, 0, 1], port).into()).unwrap();
        assert!(body.contains(&format!("port-{port}")), "{port}: {body}");
    }
    let echo = UdpEcho::start(&net, &web, 9999);
    assert_eq!(
        echo.ask(([127, 0, 0, 1], ports.udp).into()),
        "echo:datagram"
    );
    let shown = net.podman_ok(&["port", &web]);
    assert!(
        shown.contains(&format!("80/tcp -> 127.0.0.1:{}", ports.local)),
        "{shown}"
    );
    let status = net.daemon_status();
    assert!(status["containers"]
        .to_string()
        .contains(&format!("127.0.0.1:{}:80/tcp", ports.local)));
    assert!(
        status["dns"]["local_answers"].as_u64().unwrap() > 0,
        "{}",
        status["dns"]
    );

    // A neighbour routing the subnet through the host reaches the published port, not the
    // container's own address (the ingress filter, on for a new network).
    outside.route_through_host(&net.subnet.to_string());
    let web_address = net.address_inside(&web, "eth0").unwrap().addr();
    assert_eq!(outside.fetch(&format!("http://{web_address}/")), None);
    assert!(!outside.pings(&web_address.to_string()));
    let published = format!("http://{OUTSIDE_HOST_SIDE}:{}/", ports.any);
    assert_eq!(outside.fetch(&published).as_deref(), Some("hello-web\n"));
    assert!(nft_ruleset().contains("chain ingress"));

    // A host port already published: a clear error naming it, and no rule changes. Podman 5
    // reserves its containers' host ports itself (conmon binds them), so it refuses first;
    // on Podman 4.3 (CNI) Flatnet refuses, naming the container that holds the port.
    let rules = nft_ruleset();
    let thief = net.container(4);
    let refused = net.try_run(
        &thief,
        &["-p", &format!("{}:8080", ports.any)],
        &["sleep", "600"],
    );
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "a second container got port {}",
        ports.any
    );
    let reason = match backend {
        Backend::Cni => "already published by container",
        Backend::Netavark => "address already in use",
    };
    assert!(
        error.contains(&ports.any.to_string()) && error.contains(reason),
        "{error}"
    );
    assert_eq!(
        nft_ruleset(),
        rules,
        "the refused container changed the rules"
    );
    net.podman(&["rm", "-f", &thief]);

    // The host as a member: it pings a container, a container pings it.
    assert!(host_ping(&net.inspect_ip(&web).to_string()));
    assert!(succeeds(
        &net,
        &client,
        &["ping", "-c", "1", "-W", "2", &gateway(&net)]
    ));

    // Egress: the outside by address, and by a name only the outside's resolver knows.
    let outside_page = format!("http://{OUTSIDE_SERVER}/");
    assert_eq!(
        net.exec_ok(&client, &["wget", "-q", "-O", "-", &outside_page])
            .trim(),
        "outside-web"
    );
    let by_name = format!("http://{OUTSIDE_NAME}/");
    assert_eq!(
        net.exec_ok(&client, &["wget", "-q", "-O", "-", &by_name])
            .trim(),
        "outside-web"
    );
    assert!(
        outside.queries().contains(OUTSIDE_NAME),
        "the query was not forwarded"
    );
    assert!(net.daemon_status()["dns"]["forwarded"].as_u64().unwrap() > 0);

    // `--dns` keeps name resolution working. Podman 4.3 writes the server into resolv.conf
    // and the container asks it through the gateway; Podman 5 writes the network's resolver
    // (flatnetd) whatever `--dns` says, and passes plugins no per-container servers.
    let own_dns = net.container(5);
    net.run_detached(&own_dns, &["--dns", OUTSIDE_SERVER]);
    let resolv = net.exec_ok(&own_dns, &["cat", "/etc/resolv.conf"]);
    let written = match backend {
        Backend::Cni => OUTSIDE_SERVER.to_string(),
        Backend::Netavark => gateway(&net),
    };
    assert!(
        resolv.contains(&format!("nameserver {written}")),
        "{resolv}"
    );
    let page = net.exec_ok(&own_dns, &["wget", "-q", "-O", "-", &by_name]);
    assert_eq!(page.trim(), "outside-web");

    // A removed container's name is gone, and so are its ports.
    net.podman_ok(&["rm", "-f", "-t", "0", &web]);
    let answer = nslookup(&net, &client, &web);
    assert!(answer.contains("NXDOMAIN"), "{answer}");
    assert!(http_get(local).is_err(), "port {} still open", ports.local);
    assert!(!nft_ruleset().contains(&format!("dport {} ", ports.local)));

    net.remove_containers();
    assert_nothing_left(
        &net,
        &member,
        &[ports.local, ports.any, ports.udp, ports.range],
    );
}

fn internal_network(backend: Backend, name: &str, subnet: &str, other_subnet: &str) {
    let outside = Outside::start();
    let options = NetOptions {
        internal: true,
        dns_upstream: Some(OUTSIDE_SERVER),
        ..NetOptions::default()
    };
    let net = Net::create_with(backend, name, subnet, &options);
    let (a, b) = (net.container(1), net.container(2));
    net.run_detached(&a, &["--cap-add", "NET_RAW"]);
    net.run_detached(&b, &[]);
    let member = member_ifname(&net);

    // Inside the network everything works: names, the host member.
    assert!(succeeds(&net, &a, &["ping", "-c", "1", "-W", "2", &b]));
    assert!(succeeds(
        &net,
        &a,
        &["ping", "-c", "1", "-W", "2", &gateway(&net)]
    ));
    let routes = net.exec_ok(&a, &["ip", "route"]);
    assert!(
        !routes.contains("default"),
        "an internal network has no default route: {routes}"
    );

    // Beyond it nothing: not by address, not by name; the query is refused, never forwarded.
    let page = format!("http://{OUTSIDE_SERVER}/");
    assert_eq!(fetch(&net, &a, &page), None);
    let answer = nslookup(&net, &a, OUTSIDE_NAME);
    assert!(answer.contains("REFUSED"), "{answer}");
    assert_eq!(fetch(&net, &a, &format!("http://{OUTSIDE_NAME}/")), None);
    assert_eq!(
        outside.queries().matches(OUTSIDE_NAME).count(),
        0,
        "{}",
        outside.queries()
    );

    // A port published from an internal network works: the connection comes from the host
    // member's address, so the container answers without a route out.
    let web = net.container(3);
    let serve = "echo internal-web > /tmp/index.html && exec httpd -f -p 80 -h /tmp";
    let published = ["-p", "127.0.0.1:18999:80", "-p", "18998:80"];
    net.run_command(&web, &published, &["sh", "-c", serve]);
    net.wait_listening(&web, 80);
    let body = http_get(([127, 0, 0, 1], 18999).into()).unwrap();
    assert!(body.contains("internal-web"), "{body}");

    // Nor can another network on this host route in through the host, though its own egress
    // works: an internal network is entered by its members and its published ports alone.
    // (A network made without the ingress filter keeps routed access from the outside.)
    let unfiltered = NetOptions {
        ingress_filter: Some(false),
        ..NetOptions::default()
    };
    let other = Net::create_with(backend, &format!("{name}x"), other_subnet, &unfiltered);
    let stranger = other.container(1);
    other.run_detached(&stranger, &[]);
    outside.route_through_host(other_subnet);
    let stranger_address = other.address_inside(&stranger, "eth0").unwrap().addr();
    assert!(outside.pings(&stranger_address.to_string()));
    assert_eq!(
        fetch(&other, &stranger, &page).as_deref(),
        Some("outside-web\n")
    );
    let web_address = net.address_inside(&web, "eth0").unwrap().addr();
    assert_eq!(
        fetch(&other, &stranger, &format!("http://{web_address}/")),
        None
    );
    let published = format!("http://{}:18998/", host_address());
    let body = fetch(&other, &stranger, &published);
    assert_eq!(body.as_deref(), Some("internal-web\n"), "via {published}");
    other.remove_containers();

    net.remove_containers();
    assert_nothing_left(&net, &member, &[18999, 18998]);
}

/// flatnetd is killed with containers attached and a port published; then the containers are
/// removed. Their teardown alone must leave nothing: no member, no rule, no state.
fn killed_daemon(backend: Backend, name: &str, subnet: &str, port: u16) {
    let net = Net::create(backend, name, subnet);
    let (a, b) = (net.container(1), net.container(2));
    net.run_command(
        &a,
        &["-p", &format!("{port}:80")],
        &["sh", "-c", "httpd -f -p 80 -h /tmp"],
    );
    net.run_detached(&b, &[]);
    let member = member_ifname(&net);
    let pid = net.daemon_status()["pid"].as_u64().unwrap() as i32;
    nix_kill(pid);
    net.remove_containers();
    assert_nothing_left(&net, &member, &[port]);
}

fn nix_kill(pid: i32) {
    // SAFETY: kill(2) with a PID this test read from the daemon it is testing.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    // Gone when every thread is (the leader turns zombie before the others finish dying).
    let deadline = Instant::now() + Duration::from_secs(5);
    let alive = || {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"));
        tasks.into_iter().flatten().flatten().any(|task| {
            std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
                !stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
        })
    };
    while alive() {
        assert!(Instant::now() < deadline, "flatnetd {pid} does not die");
        std::thread::yield_now();
    }
}

#[test]
fn cni_complete_network() {
    let _serial = needs_podman!();
    let ports = Ports {
        local: 18081,
        any: 18082,
        udp: 18083,
        range: 18090,
    };
    complete_network(Backend::Cni, "fne2e-cnifull", "10.211.0.0/24", ports);
}

#[test]
fn netavark_complete_network() {
    let _serial = needs_podman!();
    let ports = Ports {
        local: 18181,
        any: 18182,
        udp: 18183,
        range: 18190,
    };
    complete_network(Backend::Netavark, "fne2e-nvfull", "10.212.0.0/24", ports);
}

#[test]
fn cni_internal_network() {
    let _serial = needs_podman!();
    internal_network(
        Backend::Cni,
        "fne2e-cniint",
        "10.213.0.0/24",
        "10.219.0.0/24",
    );
}

#[test]
fn netavark_internal_network() {
    let _serial = needs_podman!();
    internal_network(
        Backend::Netavark,
        "fne2e-nvint",
        "10.214.0.0/24",
        "10.220.0.0/24",
    );
}

#[test]
fn cni_killed_daemon_leaves_nothing() {
    let _serial = needs_podman!();
    killed_daemon(Backend::Cni, "fne2e-cnikill", "10.215.0.0/24", 18281);
}

#[test]
fn netavark_killed_daemon_leaves_nothing() {
    let _serial = needs_podman!();
    killed_daemon(Backend::Netavark, "fne2e-nvkill", "10.216.0.0/24", 18282);
}
