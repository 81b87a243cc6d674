//! The `flatnet` netavark plugin driven through its protocol (argv + stdin JSON) against real
//! network namespaces, as netavark would. Needs root.

use flatnet_test_support as support;
use flatnet_test_support::needs_root;
use std::process::Output;

use flatnet_test_support::*;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_flatnet");

fn network(state: &TestState) -> Value {
    json!({
        "name": "nvtest", "id": "0123456789abcdef", "driver": "flatnet",
        "dns_enabled": true, "internal": false, "ipv6_enabled": false,
        "subnets": [{"subnet": "198.51.100.0/24", "gateway": "198.51.100.1"}],
        "options": {
            "state_dir": state.path().to_str().unwrap(),
            "mtu": "1400",
            "tunnel_port": state.port.to_string(),
        },
    })
}

fn exec_opts(state: &TestState, id: &str, static_ips: Option<Vec<&str>>) -> String {
    json!({
        "container_id": id,
        "container_name": format!("name-{id}"),
        "port_mappings": null,
        "network": network(state),
        "network_options": {
            "aliases": null, "interface_name": "eth0",
            "static_ips": static_ips, "static_mac": null, "options": null,
        },
    })
    .to_string()
}

fn plugin(state: &TestState, args: &[&str], stdin: &str) -> Output {
    state.plugin(BIN, args, &[], stdin)
}

/// A command that must succeed: its output, or the plugin's answer in the failure.
fn plugin_ok(state: &TestState, args: &[&str], stdin: &str) -> Output {
    let out = plugin(state, args, stdin);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

fn assert_error(out: &Output, needle: &str) {
    assert!(!out.status.success(), "expected failure");
    let err = stdout_json(out);
    let msg = err["error"].as_str().expect("{\"error\": ...}");
    assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
}

#[test]
fn info_and_create() {
    let state = state_dir("create");
    let info = stdout_json(&plugin(&state, &["info"], ""));
    assert_eq!(info["api_version"], "1.0.0");
    assert!(info["version"].is_string());

    let mut bare = network(&state);
    bare.as_object_mut().unwrap().remove("subnets");
    let out = plugin_ok(&state, &["create"], &bare.to_string());
    let created = stdout_json(&out);
    for key in ["name", "id", "driver"] {
        assert_eq!(created[key], bare[key]);
    }
    assert_eq!(created["subnets"][0]["subnet"], "10.77.0.0/16");
    assert_eq!(created["subnets"][0]["gateway"], "10.77.0.1");

    let mut unknown = network(&state);
    unknown["options"]["vni"] = json!("42");
    assert_error(&plugin(&state, &["create"], &unknown.to_string()), "vni");
    let mut bad_subnet = network(&state);
    bad_subnet["subnets"][0] = json!({"subnet": "198.51.100.0/31"});
    assert_error(
        &plugin(&state, &["create"], &bad_subnet.to_string()),
        "too small",
    );
    let mut v6 = network(&state);
    v6["subnets"] = json!([{"subnet": "fd77::/64"}, {"subnet": "fd78::/64"}]);
    assert_error(
        &plugin(&state, &["create"], &v6.to_string()),
        "at most one IPv4 and one IPv6",
    );
    let mut dual = network(&state);
    dual["ipv6_enabled"] = json!(true);
    let created = stdout_json(&plugin_ok(&state, &["create"], &dual.to_string()));
    assert_eq!(created["subnets"][1]["subnet"], "fd77::/64");
    assert_eq!(created["subnets"][1]["gateway"], "fd77::1");
    assert_error(&plugin(&state, &["create"], "{not json"), "");
    assert_error(&plugin(&state, &["frobnicate"], "{}"), "unknown subcommand");
}

/// `flatnet-cert ARGS`, from the workspace's build, which must succeed.
fn cert_tool(args: &[&str]) {
    let tool = std::path::Path::new(BIN)
        .parent()
        .unwrap()
        .join("flatnet-cert");
    let out = std::process::Command::new(&tool)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} {args:?}: {}",
        tool.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// On etcd, each host's Podman must hand out only its host's block (Podman allocates plugin
/// networks' addresses itself, per host): `create` narrows the lease range to it.
#[test]
fn create_narrows_podmans_range_to_the_hosts_block_on_etcd() {
    let state = state_dir("narrow");
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    cert_tool(&["ca", "--name", "test", "--out-dir", &path("ca")]);
    let key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    for (host, block) in [
        ("host-a", "198.51.100.64/27"),
        ("host-b", "198.51.100.96/27"),
    ] {
        cert_tool(&[
            "sign",
            "--name",
            host,
            "--public-key",
            key,
            "--block",
            block,
            "--network",
            "nvtest",
            "--ca-dir",
            &path("ca"),
            "--out",
            &path(host),
        ]);
    }
    for file in ["etcd-ca.pem", "client.pem", "client.key"] {
        std::fs::write(path(file), "").unwrap();
    }
    let on_host = |host: &str| {
        let mut net = network(&state);
        for (option, value) in [
            ("lighthouse", "etcd".to_string()),
            ("etcd_endpoints", "https://192.0.2.201:2379".to_string()),
            ("etcd_ca_file", path("etcd-ca.pem")),
            ("etcd_cert_file", path("client.pem")),
            ("etcd_key_file", path("client.key")),
            ("network_ca_file", path("ca/ca.crt")),
            ("host_cert_file", path(host)),
        ] {
            net["options"][option] = json!(value);
        }
        net
    };
    let range = |net: &Value| {
        let out = plugin_ok(&state, &["create"], &net.to_string());
        stdout_json(&out)["subnets"][0]["lease_range"].clone()
    };
    // The block less its highest address, which the host member takes.
    assert_eq!(
        range(&on_host("host-a")),
        json!({"start_ip": "198.51.100.64", "end_ip": "198.51.100.94"})
    );
    assert_eq!(
        range(&on_host("host-b")),
        json!({"start_ip": "198.51.100.96", "end_ip": "198.51.100.126"})
    );
    // `--ip-range` inside the block is kept; outside it, refused.
    let mut inside = on_host("host-a");
    inside["subnets"][0]["lease_range"] =
        json!({"start_ip": "198.51.100.70", "end_ip": "198.51.100.80"});
    assert_eq!(range(&inside), inside["subnets"][0]["lease_range"]);
    let mut outside = on_host("host-a");
    outside["subnets"][0]["lease_range"] =
        json!({"start_ip": "198.51.100.2", "end_ip": "198.51.100.80"});
    assert_error(
        &plugin(&state, &["create"], &outside.to_string()),
        "not inside this host's range",
    );
    // A file lighthouse (one host, or a shared file) leaves Podman the whole subnet.
    assert_eq!(range(&network(&state)), Value::Null);
}

#[test]
fn setup_and_teardown() {
    needs_root!();
    let state = state_dir("setup");
    let ns = TestNetns::new("nv");
    let opts = exec_opts(&state, "c1", Some(vec!["198.51.100.23"]));
    let out = plugin_ok(&state, &["setup", ns.path_str()], &opts);
    let status = stdout_json(&out);
    let eth0 = &status["interfaces"]["eth0"];
    assert_eq!(eth0["subnets"][0]["ipnet"], "198.51.100.23/24");
    assert_eq!(eth0["subnets"][0]["gateway"], "198.51.100.1");
    assert_eq!(eth0["mac_address"], "02:46:c6:33:64:17");
    // flatnetd answers DNS at the gateway; Podman writes it into resolv.conf.
    assert_eq!(
        status["dns_server_ips"],
        serde_json::json!(["198.51.100.1"])
    );
    assert!(ns
        .ip(&["route"])
        .contains("default via 198.51.100.1 dev eth0"));
    let shown = ns.ip(&["-4", "addr", "show", "eth0"]);
    assert!(
        shown.contains("inet 198.51.100.23/24") && shown.contains("mtu 1400"),
        "{shown}"
    );

    // A second container asking for the same address is refused and leaves nothing.
    let other = TestNetns::new("nv2");
    let clash = exec_opts(&state, "c2", Some(vec!["198.51.100.23"]));
    assert_error(
        &plugin(&state, &["setup", other.path_str()], &clash),
        "in use",
    );
    assert!(!other.has_link("eth0"));

    for _ in 0..2 {
        let out = plugin_ok(&state, &["teardown", ns.path_str()], &opts);
        assert!(out.stdout.is_empty());
    }
    assert!(!ns.has_link("eth0"));
    state.assert_nothing_left();
}

#[test]
fn teardown_with_the_namespace_gone() {
    needs_root!();
    let state = state_dir("gone");
    let ns = TestNetns::new("nvg");
    let opts = exec_opts(&state, "g1", None);
    plugin_ok(&state, &["setup", ns.path_str()], &opts);
    let path = ns.path_str().to_string();
    ns.delete();
    plugin_ok(&state, &["teardown", &path], &opts);
    state.assert_nothing_left();
}

#[test]
fn bad_setup_input_leaves_nothing() {
    needs_root!();
    let state = state_dir("badsetup");
    let ns = TestNetns::new("nvb");
    let opts = exec_opts(&state, "b1", None);
    assert_error(
        &plugin(&state, &["setup", "/run/netns/nope"], &opts),
        "does not exist",
    );
    assert_error(&plugin(&state, &["setup", ns.path_str()], "{]"), "");
    assert_error(&plugin(&state, &["setup"], &opts), "netns path");
    let outside = exec_opts(&state, "b2", Some(vec!["192.0.2.9"]));
    assert_error(
        &plugin(&state, &["setup", ns.path_str()], &outside),
        "in no subnet of network",
    );
    // The network is IPv4-only: an IPv6 address is in none of its subnets either.
    let v6 = exec_opts(&state, "b3", Some(vec!["fd00::9"]));
    assert_error(
        &plugin(&state, &["setup", ns.path_str()], &v6),
        "fd00::9 is in no subnet",
    );
    let two = exec_opts(&state, "b4", Some(vec!["198.51.100.7", "198.51.100.8"]));
    assert_error(
        &plugin(&state, &["setup", ns.path_str()], &two),
        "one per subnet",
    );
    let mut mac: Value = serde_json::from_str(&opts).unwrap();
    mac["network_options"]["static_mac"] = json!("02:00:00:00:00:01");
    assert_error(
        &plugin(&state, &["setup", ns.path_str()], &mac.to_string()),
        "MAC",
    );
    assert!(!ns.has_link("eth0"));
    state.assert_nothing_left();
}

#[test]
fn published_ports_are_forwarded_refused_when_taken_and_removed() {
    needs_root!();
    let state = state_dir("ports");
    let with_ports = |id: &str, ports: serde_json::Value| {
        let mut opts: serde_json::Value =
            serde_json::from_str(&exec_opts(&state, id, None)).unwrap();
        opts["port_mappings"] = ports;
        opts.to_string()
    };
    let web = TestNetns::new("nvp");
    let web_opts = with_ports(
        "web",
        serde_json::json!([
            {"host_ip": "", "container_port": 80, "host_port": 18080, "range": 1, "protocol": "tcp"},
            {"host_ip": "127.0.0.1", "container_port": 9000, "host_port": 19000, "range": 3, "protocol": "udp"},
        ]),
    );
    let out = plugin_ok(&state, &["setup", web.path_str()], &web_opts);
    let address = stdout_json(&out)["interfaces"]["eth0"]["subnets"][0]["ipnet"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let table = || {
        support::run_ok(
            "ip",
            &["netns", "exec", &state.host.name, "nft", "list", "ruleset"],
        )
    };
    let rules = table();
    assert!(
        rules.contains(&format!("tcp dport 18080 dnat ip to {address}:80")),
        "{rules}"
    );
    for port in 0..3 {
        let rule = format!(
            "ip daddr 127.0.0.1 udp dport {} dnat ip to {address}:{}",
            19000 + port,
            9000 + port
        );
        assert!(rules.contains(&rule), "{rule} missing from {rules}");
    }

    // Another container asking for a taken host port: refused, named, nothing left of it.
    let thief = TestNetns::new("nvq");
    let thief_opts = with_ports(
        "thief",
        serde_json::json!([{"host_ip": "", "container_port": 8080, "host_port": 18080, "range": 1, "protocol": "tcp"}]),
    );
    assert_error(
        &plugin(&state, &["setup", thief.path_str()], &thief_opts),
        "18080",
    );
    assert!(!thief.has_link("eth0"));
    assert_eq!(table(), rules, "a refused setup changed the rules");

    plugin_ok(&state, &["teardown", web.path_str()], &web_opts);
    assert!(!table().contains("dnat"));
    state.assert_nothing_left();
}
