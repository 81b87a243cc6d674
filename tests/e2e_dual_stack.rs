//! Dual-stack Podman networks end to end, on both backends: each container has an IPv4 and an
//! IPv6 address, which `podman inspect` shows; containers reach each other over IPv6 by name
//! and by address (50 MB intact); names answer AAAA; a port published on every address is
//! reached over both families from the host; containers egress over IPv6 (masqueraded, as
//! Podman's bridge does) unless the network is `--internal`; nothing is left afterwards.
//!
//! "The outside" is a namespace this test makes, on a veth from the host's namespace with
//! documentation addresses (198.51.100.0/24, as tests/e2e_network.rs, and 2001:db8:77::/64)
//! and a web server; nothing here sends a packet beyond this machine.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flatnet_test_support::needs_podman;
use flatnet_test_support::podman::{Backend, Net, NetOptions};
use flatnet_test_support::{run_ok, TestNetns};

const HOST_SIDE4: &str = "198.51.100.1";
const SERVER4: &str = "198.51.100.2";
const HOST_SIDE6: &str = "2001:db8:77::1";
const SERVER6: &str = "2001:db8:77::2";
const BUSYBOX: &str = "/var/lib/flatnet/image/rootfs/bin/busybox";

/// A web server beyond the host on both families; stopped by PID, its veth deleted, when
/// dropped.
struct Outside {
    ns: TestNetns,
    veth: String,
    httpd: Child,
    _root: tempfile::TempDir,
}

impl Outside {
    fn start() -> Outside {
        let ns = TestNetns::new("out6");
        let veth = format!("fnsix{}", std::process::id() % 100_000);
        run_ok(
            "ip",
            &[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
            ],
        );
        run_ok(
            "ip",
            &["addr", "add", &format!("{HOST_SIDE4}/24"), "dev", &veth],
        );
        run_ok(
            "ip",
            &[
                "-6",
                "addr",
                "add",
                &format!("{HOST_SIDE6}/64"),
                "dev",
                &veth,
                "nodad",
            ],
        );
        run_ok("ip", &["link", "set", &veth, "up"]);
        ns.ip(&["addr", "add", &format!("{SERVER4}/24"), "dev", "eth0"]);
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{SERVER6}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["link", "set", "lo", "up"]);
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("index.html"), "outside-web\n").unwrap();
        let httpd = Command::new("ip")
            .args([
                "netns", "exec", &ns.name, BUSYBOX, "httpd", "-f", "-p", "80", "-h",
            ])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let outside = Outside {
            ns,
            veth,
            httpd,
            _root: root,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !run_ok("ip", &["netns", "exec", &outside.ns.name, "ss", "-ltn"]).contains(":80 ") {
            assert!(
                Instant::now() < deadline,
                "the outside web server did not start"
            );
            std::thread::yield_now();
        }
        outside
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.httpd.kill();
        let _ = self.httpd.wait();
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
    }
}

/// `GET /` from the test process (the host): the response, or the error.
fn http_get(address: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(3))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// A page fetched inside `container` within 3 s, or None.
fn fetch(net: &Net, container: &str, url: &str) -> Option<String> {
    let out = net.exec_output(container, &["timeout", "3", "wget", "-q", "-O", "-", url]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

fn gateway6(net: &Net) -> String {
    let subnet = net.subnet6.expect("a dual-stack network");
    std::net::Ipv6Addr::from(u128::from(subnet.network()) + 1).to_string()
}

fn dual_stack(backend: Backend, name: &str, subnets: (&'static str, &'static str), port: u16) {
    let _outside = Outside::start();
    let options = NetOptions {
        subnet6: Some(subnets.1),
        ..NetOptions::default()
    };
    let net = Net::create_with(backend, name, subnets.0, &options);
    let (web, client) = (net.container(1), net.container(2));
    let serve = "echo hello-web > /tmp/index.html && exec httpd -f -p 80 -h /tmp";
    let loopback_only = port + 10;
    let publish = [
        "-p".to_string(),
        format!("{port}:80"),
        "-p".to_string(),
        format!("[::1]:{loopback_only}:80"),
    ];
    let publish: Vec<&str> = publish.iter().map(String::as_str).collect();
    net.run_command(&web, &publish, &["sh", "-c", serve]);
    net.run_detached(&client, &["--cap-add", "NET_RAW"]);
    net.wait_listening(&web, 80);

    // Both addresses, as Podman shows them and as the container has them.
    let (web4, web6) = (net.inspect_ip(&web), net.inspect_ip6(&web));
    assert!(net.subnet.contains(&web4) && net.subnet6.unwrap().contains(&web6));
    let inside = net.exec_ok(&web, &["ip", "-6", "addr", "show", "eth0"]);
    assert!(inside.contains(&web6.to_string()), "{inside}");
    let routes = net.exec_ok(&client, &["ip", "-6", "route"]);
    assert!(
        routes.contains(&format!("default via {}", gateway6(&net))),
        "{routes}"
    );

    // IPv6 between containers: by address, by name (AAAA), TCP.
    for target in [web6.to_string(), web.clone()] {
        let out = net.exec_ok(&client, &["ping", "-6", "-c", "1", "-W", "2", &target]);
        assert!(
            out.contains("1 packets received"),
            "ping -6 {target}: {out}"
        );
    }
    let answer = net.exec_ok(&client, &["nslookup", "-type=AAAA", &web, &gateway6(&net)]);
    assert!(answer.contains(&web6.to_string()), "{answer}");
    let page = fetch(&net, &client, &format!("http://[{web6}]/"));
    assert_eq!(page.as_deref(), Some("hello-web\n"));
    let make = "dd if=/dev/urandom of=/tmp/blob bs=1M count=50 2>/dev/null && sha256sum /tmp/blob";
    let sent = net.exec_ok(&client, &["sh", "-c", make]);
    net.send_file(&client, &web, IpAddr::V6(web6), 7306, "/tmp/blob");
    let received = net.exec_ok(&web, &["sha256sum", "/tmp/blob"]);
    let digest = |s: &str| s.split_whitespace().next().unwrap().to_string();
    assert_eq!(
        digest(&sent),
        digest(&received),
        "50 MB over IPv6 arrived altered"
    );

    // A port published on every address: over IPv4 and over the host's IPv6 address.
    let v4: SocketAddr = ([127, 0, 0, 1], port).into();
    assert!(http_get(v4).unwrap().contains("hello-web"), "via {v4}");
    let v6: SocketAddr = (HOST_SIDE6.parse::<IpAddr>().unwrap(), port).into();
    assert!(http_get(v6).unwrap().contains("hello-web"), "via {v6}");
    // And on IPv6 loopback, which flatnetd relays: for every address and for `[::1]` alone.
    let loopback6 = |port| SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    for via in [loopback6(port), loopback6(loopback_only)] {
        assert!(http_get(via).unwrap().contains("hello-web"), "via {via}");
    }
    let not_published = SocketAddr::from(([127, 0, 0, 1], loopback_only));
    assert!(
        http_get(not_published).is_err(),
        "[::1] only, yet {not_published} answered"
    );

    // Egress over IPv6 (and IPv4) to the outside.
    let beyond = fetch(&net, &client, &format!("http://[{SERVER6}]/"));
    assert_eq!(beyond.as_deref(), Some("outside-web\n"), "egress over IPv6");
    let beyond = fetch(&net, &client, &format!("http://{SERVER4}/"));
    assert_eq!(beyond.as_deref(), Some("outside-web\n"), "egress over IPv4");

    net.remove_containers();
    assert!(net.leftovers().is_empty(), "{:?}", net.leftovers());
    let rules = run_ok("nft", &["list", "ruleset"]);
    assert!(!rules.contains(&format!("dport {port} ")), "{rules}");
    for port in [port, loopback_only] {
        let closed = TcpStream::connect_timeout(&loopback6(port), Duration::from_secs(1));
        assert!(
            closed.is_err(),
            "[::1]:{port} still listens after the container went"
        );
    }
}

fn internal_dual_stack(backend: Backend, name: &str, subnets: (&'static str, &'static str)) {
    let outside = Outside::start();
    let options = NetOptions {
        subnet6: Some(subnets.1),
        internal: true,
        ..NetOptions::default()
    };
    let net = Net::create_with(backend, name, subnets.0, &options);
    let (a, b) = (net.container(1), net.container(2));
    net.run_detached(&a, &["--cap-add", "NET_RAW"]);
    net.run_detached(&b, &[]);
    let out = net.exec_ok(&a, &["ping", "-6", "-c", "1", "-W", "2", &b]);
    assert!(out.contains("1 packets received"), "{out}");
    let routes = net.exec_ok(&a, &["ip", "-6", "route"]);
    assert!(!routes.contains("default"), "{routes}");
    assert_eq!(fetch(&net, &a, &format!("http://[{SERVER6}]/")), None);
    drop(outside);
    net.remove_containers();
    assert!(net.leftovers().is_empty(), "{:?}", net.leftovers());
}

#[test]
fn cni_dual_stack_network() {
    let _serial = needs_podman!();
    dual_stack(
        Backend::Cni,
        "fne2e-cni6",
        ("10.235.0.0/24", "fd77:235::/64"),
        18381,
    );
}

#[test]
fn netavark_dual_stack_network() {
    let _serial = needs_podman!();
    dual_stack(
        Backend::Netavark,
        "fne2e-nv6",
        ("10.236.0.0/24", "fd77:236::/64"),
        18382,
    );
}

#[test]
fn cni_internal_dual_stack_network() {
    let _serial = needs_podman!();
    internal_dual_stack(
        Backend::Cni,
        "fne2e-cni6i",
        ("10.237.0.0/24", "fd77:237::/64"),
    );
}

#[test]
fn netavark_internal_dual_stack_network() {
    let _serial = needs_podman!();
    internal_dual_stack(
        Backend::Netavark,
        "fne2e-nv6i",
        ("10.238.0.0/24", "fd77:238::/64"),
    );
}
