//! Rootless Podman through flatnetd, end to end: real users (subordinate ranges, their own
//! storage) run Podman without root, Podman 5 in the trixie chroot with the `flatnet` plugin
//! and the host's Podman 4.3 with `flatnet-cni`; the plugins ask a root flatnetd on the user
//! socket, which holds each request to the test's grants.
//!
//! `scripts/test.sh` prepares the users (scripts/setup-rootless.sh) and sets FLATNET_E2E=1.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use flatnet_test_support::podman::IMAGE;
use flatnet_test_support::rootless::{Machine, RootDaemon, User, ALICE, BOB, HOST_ALICE};
use flatnet_test_support::{needs_podman, run_ok, state_dir, stdout_json, wait_until, TestNetns};

const GRANTS: &str = r#"{"networks": {
  "rl-team": {"subnets": ["10.93.0.0/24"], "users": ["flatnet-alice"],
              "blocks": {"flatnet-alice": ["10.93.0.64/26"]}},
  "rl-shared": {"subnets": ["10.94.0.0/24"], "users": ["flatnet-alice", "flatnet-bob"],
                "blocks": {"flatnet-alice": ["10.94.0.64/26"], "flatnet-bob": ["10.94.0.128/26"]},
                "max_containers": 2}}}"#;

fn create_network(user: User, daemon: &RootDaemon, network: &str) {
    let socket = format!("user_socket={}", daemon.socket);
    user.podman_ok(&["network", "create", "-d", "flatnet", "-o", &socket, network]);
}

fn address_of(user: User, container: &str) -> Ipv4Addr {
    let out = user.podman_ok(&["exec", container, "ip", "-4", "-o", "addr", "show", "eth0"]);
    let cidr = out.split_whitespace().skip_while(|w| *w != "inet").nth(1);
    let ip = cidr.and_then(|c| c.split('/').next()).unwrap_or_default();
    ip.parse()
        .unwrap_or_else(|_| panic!("{container} has no IPv4 address: {out}"))
}

/// The user's containers as `flatnetd status` shows them to that user.
fn user_status(user: User, daemon: &RootDaemon) -> Vec<serde_json::Value> {
    let out = user
        .command("flatnetd")
        .args(["status", "--json", "--user-socket", &daemon.socket])
        .output()
        .unwrap();
    assert!(out.status.success(), "{} status: {out:?}", user.name);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn container_id(user: User, container: &str) -> String {
    user.podman_ok(&["inspect", "-f", "{{.Id}}", container])
        .trim()
        .to_string()
}

/// TCP from `from` to `to` by name: what the listener sends arrives.
fn tcp_by_name(user: User, from: &str, to: &str) {
    user.podman_ok(&[
        "exec",
        "-d",
        to,
        "sh",
        "-c",
        "echo over-flatnet | nc -l -p 7000",
    ]);
    let mut got = String::new();
    wait_until(Duration::from_secs(10), || {
        let out = user.podman(&["exec", from, "nc", "-w", "2", to, "7000"]);
        got = String::from_utf8_lossy(&out.stdout).trim().to_string();
        got == "over-flatnet"
    });
    assert_eq!(got, "over-flatnet");
}

/// The body of an HTTP/1.0 GET, or what went wrong.
fn http_get(address: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(address) else {
        return "no connection".into();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
    let _ = write!(stream, "GET {path} HTTP/1.0\r\n\r\n");
    let mut page = String::new();
    let _ = stream.read_to_string(&mut page);
    page
}

#[test]
fn a_rootless_user_s_containers_talk_by_name_over_flatnet() {
    let _serial = needs_podman!();
    ALICE.clean();
    let daemon = RootDaemon::start("rl-talk", "127.0.0.1:4881", GRANTS);
    create_network(ALICE, &daemon, "rl-team");
    // The user's network is the operator's definition, narrowed to the user's block.
    let inspect: serde_json::Value =
        serde_json::from_str(&ALICE.podman_ok(&["network", "inspect", "rl-team"])).unwrap();
    let subnet = &inspect[0]["subnets"][0];
    assert_eq!(subnet["subnet"], "10.93.0.0/24");
    assert_eq!(subnet["lease_range"]["start_ip"], "10.93.0.64");
    assert_eq!(subnet["lease_range"]["end_ip"], "10.93.0.127");

    let raw = ["--cap-add", "NET_RAW"];
    ALICE.run_detached("rl-a1", "rl-team", &raw);
    ALICE.run_detached("rl-a2", "rl-team", &raw);
    let block: ipnet::Ipv4Net = "10.93.0.64/26".parse().unwrap();
    for c in ["rl-a1", "rl-a2"] {
        let ip = address_of(ALICE, c);
        assert!(block.contains(&ip), "{c} got {ip}, outside alice's block");
    }
    ALICE.podman_ok(&["exec", "rl-a2", "ping", "-c", "2", "-W", "2", "rl-a1"]);
    tcp_by_name(ALICE, "rl-a2", "rl-a1");

    // Alice sees her two containers; root's status has them too, with the host member.
    let mine = user_status(ALICE, &daemon);
    let mut ids: Vec<_> = mine.iter().map(|m| m["container_id"].clone()).collect();
    ids.sort_by_key(|v| v.to_string());
    let mut want = vec![container_id(ALICE, "rl-a1"), container_id(ALICE, "rl-a2")];
    want.sort();
    assert_eq!(ids, want);
    assert!(mine
        .iter()
        .all(|m| m["stats"]["to_container_packets"].as_u64() > Some(0)));
    let all = daemon.status()["containers"].as_array().unwrap().len();
    assert_eq!(all, 3, "two containers and the host member");

    // An unprivileged host port is published through the host's table; a privileged one is
    // refused by name.
    let web = ["-p", "18081:80"];
    ALICE.podman_ok(
        &[
            &["run", "-d", "--name", "rl-web"][..],
            &web,
            &[
                "--network",
                "rl-team",
                IMAGE,
                "httpd",
                "-f",
                "-p",
                "80",
                "-h",
                "/etc",
            ],
        ]
        .concat(),
    );
    let mut page = String::new();
    wait_until(Duration::from_secs(10), || {
        page = http_get("127.0.0.1:18081", "/passwd");
        page.contains("root:x:0")
    });
    assert!(page.contains("root:x:0"), "{page}");
    let why = ALICE.podman_refused(&[
        "run",
        "--rm",
        "-p",
        "80:80",
        "--network",
        "rl-team",
        IMAGE,
        "true",
    ]);
    assert!(why.contains("port 80 is privileged"), "{why}");

    ALICE.podman_ok(&["rm", "-f", "-t", "0", "rl-a1", "rl-a2", "rl-web"]);
    assert_eq!(daemon.leftovers(), Vec::<std::path::PathBuf>::new());
    ALICE.podman_ok(&["network", "rm", "rl-team"]);
}

#[test]
fn users_are_held_to_their_grants() {
    let _serial = needs_podman!();
    ALICE.clean();
    BOB.clean();
    let daemon = RootDaemon::start("rl-grants", "127.0.0.1:4882", GRANTS);

    // No daemon on the socket named: the plugin says what is missing.
    let nowhere = "user_socket=/var/lib/flatnet/rl-nowhere.sock";
    let why = BOB.podman_refused(&["network", "create", "-d", "flatnet", "-o", nowhere, "rl-x"]);
    assert!(why.contains("running with --user-socket"), "{why}");

    // Bob is not granted rl-team: refused by name, nothing made.
    let socket = format!("user_socket={}", daemon.socket);
    let why = BOB.podman_refused(&[
        "network", "create", "-d", "flatnet", "-o", &socket, "rl-team",
    ]);
    assert!(
        why.contains("flatnet-bob") && why.contains("not granted network rl-team"),
        "{why}"
    );
    let networks = BOB.podman_ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(!networks.contains("rl-team"), "{networks}");

    create_network(ALICE, &daemon, "rl-shared");
    create_network(BOB, &daemon, "rl-shared");
    ALICE.run_detached("rl-web", "rl-shared", &[]);
    let alice_ip = address_of(ALICE, "rl-web").to_string();

    // Bob cannot take alice's address, nor her container's name.
    let why = BOB.podman_refused(&[
        "run",
        "--rm",
        "--network",
        "rl-shared",
        "--ip",
        &alice_ip,
        IMAGE,
        "true",
    ]);
    assert!(why.contains("flatnet-alice's block"), "{why}");
    let why = BOB.podman_refused(&[
        "run",
        "--rm",
        "--name",
        "rl-web",
        "--network",
        "rl-shared",
        IMAGE,
        "true",
    ]);
    assert!(why.contains("another user's container"), "{why}");

    // Bob's own container is his alone to see.
    BOB.run_detached("rl-bob1", "rl-shared", &[]);
    let bobs = user_status(BOB, &daemon);
    assert_eq!(bobs.len(), 1, "{bobs:?}");
    assert_eq!(bobs[0]["container_id"], container_id(BOB, "rl-bob1"));
    let alices = user_status(ALICE, &daemon);
    assert_eq!(alices.len(), 1, "{alices:?}");
    assert_eq!(alices[0]["container_id"], container_id(ALICE, "rl-web"));

    // The plugin pointed at a namespace that is not bob's (the host's), or at alice's
    // container: refused, and alice's container is still served.
    let network = inspect_network(BOB, "rl-shared");
    let host_ns = plugin_as(BOB, "setup", "/proc/self/ns/net", &network, "f00d");
    assert!(host_ns.contains("belongs to uid 0"), "{host_ns}");
    // In a namespace of bob's own the owner check passes; an id that is not a name is still
    // refused before flatnetd makes anything.
    let escape = plugin_in_own_namespace(BOB, &network, "../../escape");
    assert!(escape.contains("container ID"), "{escape}");
    let alice_id = container_id(ALICE, "rl-web");
    let teardown = plugin_as(BOB, "teardown", "/proc/self/ns/net", &network, &alice_id);
    assert!(teardown.contains("is not flatnet-bob's"), "{teardown}");
    assert_eq!(user_status(ALICE, &daemon).len(), 1);

    // Two containers per user on rl-shared: a third is refused by the rule.
    ALICE.run_detached("rl-web2", "rl-shared", &[]);
    let why = ALICE.podman_refused(&["run", "--rm", "--network", "rl-shared", IMAGE, "true"]);
    assert!(why.contains("the 2 containers"), "{why}");

    // A grant taken away holds from the next request; the user still removes their own.
    daemon.set_grants(r#"{"networks": {"rl-shared": {"subnets": ["10.94.0.0/24"]}}}"#);
    let why = ALICE.podman_refused(&["run", "--rm", "--network", "rl-shared", IMAGE, "true"]);
    assert!(why.contains("not granted network rl-shared"), "{why}");
    ALICE.clean();
    BOB.clean();
    assert_eq!(daemon.leftovers(), Vec::<std::path::PathBuf>::new());
}

/// The network as the user's Podman stored it (what netavark passes its plugin).
fn inspect_network(user: User, name: &str) -> serde_json::Value {
    let out = user.podman_ok(&["network", "inspect", name]);
    let mut network: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut network = network[0].take();
    network.as_object_mut().unwrap().remove("containers");
    network
}

/// The plugin's setup run as `user` in a user and network namespace of their own (as rootless
/// Podman runs it), on that namespace: it must fail; its stdout (the `{"error"}` object).
fn plugin_in_own_namespace(user: User, network: &serde_json::Value, container_id: &str) -> String {
    let mut command = user.command("unshare");
    command
        .args(["--user", "--map-root-user", "--net", PLUGIN])
        .args(["setup", "/proc/self/ns/net"]);
    refused(command, &plugin_input(network, container_id))
}

/// The plugin binary run as `user` (as netavark would): it must fail; its stdout.
fn plugin_as(
    user: User,
    verb: &str,
    netns: &str,
    network: &serde_json::Value,
    container_id: &str,
) -> String {
    let mut command = user.command(PLUGIN);
    command.args([verb, netns]);
    refused(command, &plugin_input(network, container_id))
}

const PLUGIN: &str = "/usr/libexec/netavark/flatnet";

fn plugin_input(network: &serde_json::Value, container_id: &str) -> String {
    serde_json::json!({
        "container_id": container_id,
        "container_name": "rl-probe",
        "port_mappings": [],
        "network": network,
        "network_options": {"interface_name": "eth0"},
    })
    .to_string()
}

fn refused(command: std::process::Command, input: &str) -> String {
    let out = output_with_input(command, input);
    assert!(!out.status.success(), "the plugin accepted {input}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The plugin's answer to `input`, which it must accept.
fn run_with_input(command: std::process::Command, input: &str) -> String {
    let out = output_with_input(command, input);
    assert!(out.status.success(), "the plugin refused {input}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn output_with_input(mut command: std::process::Command, input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

/// A veth pair from this machine's namespace (host A, 203.0.113.1) to another host's
/// (203.0.113.2), removed on drop.
struct Link {
    name: &'static str,
}

impl Link {
    fn to(host: &TestNetns) -> Link {
        let link = Link { name: "rl-veth-a" };
        let _ = run_ok_quiet(&["link", "del", link.name]);
        run_ok(
            "ip",
            &[
                "link",
                "add",
                link.name,
                "type",
                "veth",
                "peer",
                "name",
                "rl-veth-b",
            ],
        );
        run_ok("ip", &["link", "set", "rl-veth-b", "netns", &host.name]);
        run_ok("ip", &["addr", "add", "203.0.113.1/24", "dev", link.name]);
        run_ok("ip", &["link", "set", link.name, "up"]);
        host.ip(&["addr", "add", "203.0.113.2/24", "dev", "rl-veth-b"]);
        host.ip(&["link", "set", "rl-veth-b", "up"]);
        link
    }
}

fn run_ok_quiet(args: &[&str]) -> bool {
    std::process::Command::new("ip")
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Drop for Link {
    fn drop(&mut self) {
        run_ok_quiet(&["link", "del", self.name]);
    }
}

#[test]
fn a_rootless_container_and_a_rootful_one_on_another_host_meet_across_the_tunnel() {
    let _serial = needs_podman!();
    // Host B: a namespace of its own whose runtime runs flatnet-cni as root.
    let host_b = state_dir("rl-host-b");
    let _link = Link::to(&host_b.host);
    let host_a = RootDaemon::start("rl-host-a", "203.0.113.1:4883", GRANTS);
    let lighthouse = host_a.host_path(&format!("{}/lighthouse.json", host_a.state_dir));
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "rl-team", "type": "flatnet-cni",
        "subnet": "10.93.0.0/24", "stateDir": host_b.path(), "lighthouse": lighthouse,
        "tunnelPort": 4884, "endpoint": "203.0.113.2:4884",
    })
    .to_string();
    let b1 = TestNetns::new("rlb");
    let cni = |command: &str| {
        let env = [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "rootful-b1"),
            ("CNI_NETNS", b1.path_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
        ];
        host_b.plugin("/usr/lib/cni/flatnet-cni", &[], &env, &conf)
    };
    let added = cni("ADD");
    assert!(added.status.success(), "{added:?}");
    let b1_cidr: ipnet::IpNet = stdout_json(&added)["ips"][0]["address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let b1_ip = b1_cidr.addr().to_string();

    create_network(ALICE, &host_a, "rl-team");
    ALICE.run_detached("rl-a1", "rl-team", &["--cap-add", "NET_RAW"]);
    let a1_ip = address_of(ALICE, "rl-a1").to_string();
    let started = Instant::now();
    ALICE.podman_ok(&["exec", "rl-a1", "ping", "-c", "2", "-W", "3", &b1_ip]);
    eprintln!("rootless host A to rootful host B: {:?}", started.elapsed());
    let back = std::process::Command::new("ip")
        .args([
            "netns", "exec", &b1.name, "ping", "-c", "1", "-W", "3", &a1_ip,
        ])
        .output()
        .unwrap();
    assert!(
        back.status.success(),
        "host B to alice's container: {back:?}"
    );
    let peers = host_a.status()["peers"].as_array().unwrap().clone();
    assert!(
        peers.iter().any(|p| p["endpoint"] == "203.0.113.2:4884"),
        "host A has no tunnel to host B: {peers:?}"
    );

    ALICE.podman_ok(&["rm", "-f", "-t", "0", "rl-a1"]);
    assert!(cni("DEL").status.success());
    assert_eq!(host_a.leftovers(), Vec::<std::path::PathBuf>::new());
    host_b.assert_nothing_left();
}

#[test]
fn rootless_churn_and_a_killed_daemon_leave_nothing() {
    let _serial = needs_podman!();
    ALICE.clean();
    let daemon = RootDaemon::start("rl-churn", "127.0.0.1:4885", GRANTS);
    create_network(ALICE, &daemon, "rl-team");
    let rounds = 8;
    let started = Instant::now();
    for _ in 0..rounds {
        ALICE.podman_ok(&["run", "--rm", "--network", "rl-team", IMAGE, "true"]);
    }
    eprintln!(
        "rootless podman run --rm true on Flatnet: {:?} each",
        started.elapsed() / rounds
    );
    assert_eq!(daemon.leftovers(), Vec::<std::path::PathBuf>::new());

    // A daemon killed under a running container: the next one serves it again from its
    // record and the namespace it holds, and its removal still leaves nothing.
    ALICE.run_detached("rl-k1", "rl-team", &["--cap-add", "NET_RAW"]);
    ALICE.run_detached("rl-k2", "rl-team", &["--cap-add", "NET_RAW"]);
    let pid = daemon.status()["pid"].as_u64().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    daemon.restart();
    assert_ne!(daemon.status()["pid"].as_u64(), Some(pid));
    ALICE.podman_ok(&["exec", "rl-k2", "ping", "-c", "1", "-W", "3", "rl-k1"]);
    ALICE.podman_ok(&["rm", "-f", "-t", "0", "rl-k1", "rl-k2"]);
    assert_eq!(daemon.leftovers(), Vec::<std::path::PathBuf>::new());
}

/// A container its runtime never tears down (here the plugin's setup run in a namespace whose
/// only process then ends, as when Podman dies between setup and start) holds its address and
/// the user's quota only until its namespace has been empty for the grace; a running
/// container as old stays.
#[test]
fn an_abandoned_rootless_container_is_taken_away() {
    let _serial = needs_podman!();
    ALICE.clean();
    let daemon = RootDaemon::start("rl-gone", "127.0.0.1:4887", GRANTS);
    create_network(ALICE, &daemon, "rl-team");
    ALICE.run_detached("rl-live", "rl-team", &[]);
    // A short grace only now that rl-live runs: however slow its Podman was between setup
    // and start, rl-live is not taken for abandoned.
    daemon.restart_with(&["--abandoned-after=2"], &[]);
    let network = inspect_network(ALICE, "rl-team");
    let mut setup = ALICE.command("unshare");
    setup
        .args(["--user", "--map-root-user", "--net", PLUGIN])
        .args(["setup", "/proc/self/ns/net"]);
    let answer = run_with_input(setup, &plugin_input(&network, "abandoned1"));
    assert!(answer.contains("10.93.0."), "{answer}");
    let served = |id: &str| {
        user_status(ALICE, &daemon)
            .iter()
            .any(|c| c["container_id"] == id)
    };
    assert!(served("abandoned1"), "the setup's container is not served");

    let started = Instant::now();
    wait_until(Duration::from_secs(20), || !served("abandoned1"));
    assert!(
        !served("abandoned1"),
        "the abandoned container is still served"
    );
    eprintln!(
        "abandoned container taken away after {:?}",
        started.elapsed()
    );
    assert!(
        served(&container_id(ALICE, "rl-live")),
        "the running container went too"
    );
    // rl-live's removal would leave the abandoned container's record, lease and pin in place
    // (its namespace still opens): only the reclaim takes them.
    ALICE.podman_ok(&["rm", "-f", "-t", "0", "rl-live"]);
    assert_eq!(daemon.leftovers(), Vec::<std::path::PathBuf>::new());
}

#[test]
fn flatnet_cni_under_rootless_podman_4_asks_flatnetd() {
    let _serial = needs_podman!();
    HOST_ALICE.clean();
    let daemon = RootDaemon::start_on(Machine::Host, "rl-cni", "127.0.0.1:4886", GRANTS);
    let conflist = |network: &str| {
        let list = serde_json::json!({
            "cniVersion": "1.0.0", "name": network,
            "plugins": [{"type": "flatnet-cni", "userSocket": daemon.socket}],
        });
        let path = format!("/home/{}/.config/cni/net.d/{network}.conflist", ALICE.name);
        HOST_ALICE.write_file(&path, &list.to_string());
    };
    conflist("rl-team");
    let raw = ["--cap-add", "NET_RAW"];
    HOST_ALICE.run_detached("rl-c1", "rl-team", &raw);
    HOST_ALICE.run_detached("rl-c2", "rl-team", &raw);
    let block: ipnet::Ipv4Net = "10.93.0.64/26".parse().unwrap();
    assert!(block.contains(&address_of(HOST_ALICE, "rl-c1")));
    HOST_ALICE.podman_ok(&["exec", "rl-c2", "ping", "-c", "2", "-W", "2", "rl-c1"]);
    tcp_by_name(HOST_ALICE, "rl-c2", "rl-c1");
    assert_eq!(user_status(HOST_ALICE, &daemon).len(), 2);

    // A network the grants do not open: the CNI error names it, nothing is made.
    conflist("rl-closed");
    let why = HOST_ALICE.podman_refused(&["run", "--rm", "--network", "rl-closed", IMAGE, "true"]);
    assert!(why.contains("rl-closed is not open"), "{why}");

    HOST_ALICE.podman_ok(&["rm", "-f", "-t", "0", "rl-c1", "rl-c2"]);
    assert_eq!(daemon.leftovers(), Vec::<std::path::PathBuf>::new());
}
