//! flatnet-cni driven through the CNI protocol (environment + stdin) against real network
//! namespaces, as a runtime would. Needs root.

use std::os::unix::fs::PermissionsExt;
use std::process::Output;

use flatnet_test_support::needs_root;
use flatnet_test_support::*;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_flatnet-cni");

fn conf(version: &str, state: &TestState) -> String {
    json!({
        "cniVersion": version,
        "name": "cnitest",
        "type": "flatnet-cni",
        "subnet": "192.0.2.0/24",
        "stateDir": state.path(),
        "tunnelPort": state.port,
    })
    .to_string()
}

fn cni(
    state: &TestState,
    command: &str,
    id: &str,
    netns: &str,
    stdin: &str,
    extra: &[(&str, &str)],
) -> Output {
    let mut env = vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/usr/lib/cni"),
    ];
    env.extend_from_slice(extra);
    state.plugin(BIN, &[], &env, stdin)
}

/// A command that must succeed: its output, or the plugin's answer in the failure.
fn cni_ok(state: &TestState, command: &str, id: &str, netns: &str, stdin: &str) -> Output {
    let out = cni(state, command, id, netns, stdin, &[]);
    assert!(
        out.status.success(),
        "{command} {id}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

fn assert_cni_error(out: &Output, code: u64) -> Value {
    assert!(!out.status.success(), "expected failure, got success");
    let err = stdout_json(out);
    assert_eq!(err["code"], code, "{err}");
    assert!(!err["msg"].as_str().unwrap().is_empty());
    err
}

#[test]
fn add_check_del_in_every_spec_version() {
    needs_root!();
    for version in ["0.4.0", "1.0.0", "1.1.0"] {
        let state = state_dir("roundtrip");
        let ns = TestNetns::new("rt");
        let conf = conf(version, &state);

        let out = cni_ok(&state, "ADD", "ctr1", ns.path_str(), &conf);
        let result = stdout_json(&out);
        assert_eq!(result["cniVersion"], version);
        let address = result["ips"][0]["address"].as_str().unwrap().to_string();
        assert!(
            address.starts_with("192.0.2.") && address.ends_with("/24"),
            "{address}"
        );
        assert_eq!(result["interfaces"][0]["name"], "eth0");
        assert_eq!(result["interfaces"][0]["sandbox"], ns.path_str());

        let shown = ns.ip(&["-4", "addr", "show", "eth0"]);
        assert!(shown.contains(&format!("inet {address}")), "{shown}");
        let mtu = format!("mtu {}", flatnet::config::DEFAULT_MTU);
        assert!(shown.contains(&mtu), "{shown}");
        assert!(ns.ip(&["route"]).contains("192.0.2.0/24 dev eth0"));
        // The daemon the plugin started logs each attach to a private file.
        let log = state.path().join("flatnetd.log");
        let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", log.display());
        let logged = std::fs::read_to_string(&log).unwrap();
        assert!(logged.contains("attached ctr1 on"), "{logged}");

        let mut with_prev: Value = serde_json::from_str(&conf).unwrap();
        with_prev["prevResult"] = result.clone();
        cni_ok(
            &state,
            "CHECK",
            "ctr1",
            ns.path_str(),
            &with_prev.to_string(),
        );

        for _ in 0..2 {
            let out = cni_ok(&state, "DEL", "ctr1", ns.path_str(), &with_prev.to_string());
            assert!(out.stdout.is_empty());
        }
        assert!(!ns.has_link("eth0"));
        state.assert_nothing_left();
    }
}

#[test]
fn containers_get_distinct_addresses_and_static_requests() {
    needs_root!();
    let state = state_dir("distinct");
    let conf = conf("1.0.0", &state);
    let namespaces: Vec<_> = (0..3).map(|_| TestNetns::new("d")).collect();
    let mut seen = Vec::new();
    for (i, ns) in namespaces.iter().enumerate() {
        let out = cni_ok(&state, "ADD", &format!("c{i}"), ns.path_str(), &conf);
        seen.push(
            stdout_json(&out)["ips"][0]["address"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 3, "{seen:?}");

    let fixed = TestNetns::new("s");
    let args = (
        "CNI_ARGS",
        "IgnoreUnknown=1;K8S_POD_NAME=web;IP=192.0.2.200",
    );
    let out = cni(&state, "ADD", "static", fixed.path_str(), &conf, &[args]);
    assert_eq!(stdout_json(&out)["ips"][0]["address"], "192.0.2.200/24");
    assert!(fixed.ip(&["addr"]).contains("inet 192.0.2.200/24"));

    // The same address for another container is refused and leaves nothing behind.
    let other = TestNetns::new("s2");
    let out = cni(&state, "ADD", "static2", other.path_str(), &conf, &[args]);
    assert_cni_error(&out, 101);
    assert!(!other.has_link("eth0"));

    for (i, ns) in namespaces.iter().enumerate() {
        cni_ok(&state, "DEL", &format!("c{i}"), ns.path_str(), &conf);
    }
    cni_ok(&state, "DEL", "static", fixed.path_str(), &conf);
    cni_ok(&state, "DEL", "static2", other.path_str(), &conf);
    state.assert_nothing_left();
}

#[test]
fn del_succeeds_when_things_are_already_gone() {
    needs_root!();
    let state = state_dir("gone");
    let conf = conf("1.0.0", &state);
    let ns = TestNetns::new("g");
    cni_ok(&state, "ADD", "gone", ns.path_str(), &conf);
    let path = ns.path_str().to_string();
    ns.delete();
    // The namespace died with the container; DEL still frees the address.
    cni_ok(&state, "DEL", "gone", &path, &conf);
    state.assert_nothing_left();
    // DEL without CNI_NETNS, for a container never added.
    let env = [
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", "never"),
        ("CNI_IFNAME", "eth0"),
    ];
    assert!(state.plugin(BIN, &[], &env, &conf).status.success());
}

/// A namespace path reused by another namespace holds someone else's interfaces: the orphan
/// collector, DEL and GC leave them, whatever their kind.
#[test]
fn a_reused_namespace_path_keeps_its_new_interfaces() {
    needs_root!();
    let state = state_dir("reused");
    let conf = conf("1.1.0", &state);
    let reused = TestNetns::new("r");
    cni_ok(&state, "ADD", "first", reused.path_str(), &conf);
    reused.delete();
    run_ok("ip", &["netns", "add", &reused.name]);
    // As in the report, a veth named like ours; and a TUN device, which only the namespace's
    // identity tells from ours.
    reused.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "x0"]);
    reused.ip(&["tuntap", "add", "dev", "eth1", "mode", "tun"]);
    let other = TestNetns::new("o");
    // The next ADD collects the orphan "first": its record names the old namespace.
    cni_ok(&state, "ADD", "second", other.path_str(), &conf);
    assert!(reused.has_link("eth0") && reused.has_link("eth1"));
    // The runtime's DEL for "first", at the reused path, under both names.
    for ifname in ["eth0", "eth1"] {
        let out = cni(
            &state,
            "DEL",
            "first",
            reused.path_str(),
            &conf,
            &[("CNI_IFNAME", ifname)],
        );
        assert!(out.status.success());
    }
    assert!(reused.has_link("eth0") && reused.has_link("eth1"));
    // A record whose namespace path was reused: attach "third" there, replace the namespace
    // again with a TUN eth0 of its own, and let GC drop "third".
    reused.ip(&["link", "del", "eth0"]);
    cni_ok(&state, "ADD", "third", reused.path_str(), &conf);
    reused.delete();
    run_ok("ip", &["netns", "add", &reused.name]);
    reused.ip(&["tuntap", "add", "dev", "eth0", "mode", "tun"]);
    let mut gc: Value = serde_json::from_str(&conf).unwrap();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "second", "ifname": "eth0"}]);
    let out = state.plugin(BIN, &[], &[("CNI_COMMAND", "GC")], &gc.to_string());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(reused.has_link("eth0"));
    cni_ok(&state, "DEL", "second", other.path_str(), &conf);
    state.assert_nothing_left();
}

#[test]
fn bad_input_gets_the_spec_error_and_leaves_nothing() {
    needs_root!();
    let state = state_dir("bad");
    let good = conf("1.0.0", &state);
    let ns = TestNetns::new("b");
    let bad_subnet = good.replace("192.0.2.0/24", "192.0.2.0/33");
    let bad_version = good.replace("\"1.0.0\"", "\"7.0.0\"");
    let mac = ("CNI_ARGS", "MAC=02:00:00:00:00:01");
    let cases: Vec<(&str, Output, u64)> = vec![
        (
            "malformed JSON",
            cni(&state, "ADD", "b1", ns.path_str(), "{\"cniVersion\":", &[]),
            6,
        ),
        (
            "unknown cniVersion",
            cni(&state, "ADD", "b2", ns.path_str(), &bad_version, &[]),
            1,
        ),
        (
            "invalid subnet",
            cni(&state, "ADD", "b3", ns.path_str(), &bad_subnet, &[]),
            7,
        ),
        (
            "missing netns",
            cni(&state, "ADD", "b4", "/run/netns/does-not-exist", &good, &[]),
            3,
        ),
        (
            "missing env",
            state.plugin(BIN, &[], &[("CNI_COMMAND", "ADD")], &good),
            4,
        ),
        (
            "bad container id",
            cni(&state, "ADD", "../evil", ns.path_str(), &good, &[]),
            4,
        ),
        (
            "bad CNI_ARGS",
            cni(
                &state,
                "ADD",
                "b5",
                ns.path_str(),
                &good,
                &[("CNI_ARGS", "IP=x")],
            ),
            4,
        ),
        (
            "static MAC",
            cni(&state, "ADD", "b6", ns.path_str(), &good, &[mac]),
            4,
        ),
        (
            "unknown command",
            cni(&state, "FROB", "b7", ns.path_str(), &good, &[]),
            4,
        ),
    ];
    for (what, out, code) in cases {
        let err = assert_cni_error(&out, code);
        println!("{what}: {err}");
    }
    assert!(!ns.has_link("eth0"));
    state.assert_nothing_left();
}

#[test]
fn failure_half_way_rolls_back() {
    needs_root!();
    let state = state_dir("rollback");
    let conf = conf("1.0.0", &state);
    let ns = TestNetns::new("rb");
    // An interface of that name already exists: the attach fails after the address was taken.
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
    ]);
    let out = cni(&state, "ADD", "rb", ns.path_str(), &conf, &[]);
    assert_cni_error(&out, 4);
    state.assert_nothing_left();
    // The rollback removed only what the attach made: the pre-existing link is untouched.
    assert!(ns.ip(&["-d", "link", "show", "eth0"]).contains("veth"));
}

#[test]
fn a_chained_add_passes_the_previous_result_through_and_check_uses_it() {
    needs_root!();
    let state = state_dir("chain");
    let ns = TestNetns::new("ch");
    let mut conf: Value = serde_json::from_str(&conf("1.0.0", &state)).unwrap();
    conf["prevResult"] = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "lo", "sandbox": ns.path_str()}],
        "ips": [{"address": "127.0.0.1/8", "interface": 0}],
    });
    let out = cni(&state, "ADD", "ch", ns.path_str(), &conf.to_string(), &[]);
    let result = stdout_json(&out);
    assert_eq!(result["interfaces"][0]["name"], "lo");
    assert_eq!(result["interfaces"][1]["name"], "eth0");
    assert_eq!(result["ips"][0]["address"], "127.0.0.1/8");
    assert_eq!(result["ips"][1]["interface"], 1);
    let ours = result["ips"][1]["address"].as_str().unwrap().to_string();
    assert!(ns.ip(&["-4", "addr", "show", "eth0"]).contains(&ours));

    // CHECK against the kept result passes; against one that does not list eth0 it fails.
    let mut check = conf.clone();
    check["prevResult"] = result.clone();
    cni_ok(&state, "CHECK", "ch", ns.path_str(), &check.to_string());
    let out = cni(&state, "CHECK", "ch", ns.path_str(), &conf.to_string(), &[]);
    let error = assert_cni_error(&out, 102);
    assert!(
        error["msg"].as_str().unwrap().contains("no interface eth0"),
        "{error}"
    );

    cni_ok(&state, "DEL", "ch", ns.path_str(), &conf.to_string());
    state.assert_nothing_left();
}

#[test]
fn check_notices_a_missing_interface() {
    needs_root!();
    let state = state_dir("check");
    let conf = conf("1.0.0", &state);
    let ns = TestNetns::new("ck");
    cni_ok(&state, "ADD", "ck", ns.path_str(), &conf);
    ns.ip(&["link", "del", "eth0"]);
    assert_cni_error(&cni(&state, "CHECK", "ck", ns.path_str(), &conf, &[]), 102);
    assert_cni_error(
        &cni(&state, "CHECK", "nobody", ns.path_str(), &conf, &[]),
        102,
    );
    cni_ok(&state, "DEL", "ck", ns.path_str(), &conf);
    state.assert_nothing_left();
}

#[test]
fn no_data_plane_means_try_again_and_nothing_left() {
    needs_root!();
    let state = state_dir("nodp");
    let conf = conf("1.0.0", &state);
    let ns = TestNetns::new("nd");
    let missing = ("FLATNETD", "/nonexistent/flatnetd");
    let err = assert_cni_error(
        &cni(&state, "ADD", "nd", ns.path_str(), &conf, &[missing]),
        11,
    );
    assert!(err["msg"].as_str().unwrap().contains("flatnetd"), "{err}");
    assert!(!ns.has_link("eth0"));
    state.assert_nothing_left();
}

#[test]
fn check_notices_a_stopped_data_plane() {
    needs_root!();
    let state = state_dir("checkdp");
    let conf = conf("1.0.0", &state);
    let ns = TestNetns::new("cd");
    cni_ok(&state, "ADD", "cd", ns.path_str(), &conf);
    cni_ok(&state, "CHECK", "cd", ns.path_str(), &conf);
    state.stop_daemon();
    let err = assert_cni_error(&cni(&state, "CHECK", "cd", ns.path_str(), &conf, &[]), 102);
    assert!(err["msg"].as_str().unwrap().contains("flatnetd"), "{err}");
    // DEL needs no data plane.
    cni_ok(&state, "DEL", "cd", ns.path_str(), &conf);
    state.assert_nothing_left();
}

#[test]
fn version_status_and_gc() {
    needs_root!();
    let out = run_plugin(
        BIN,
        &[],
        &[("CNI_COMMAND", "VERSION")],
        r#"{"cniVersion":"1.0.0"}"#,
    );
    let v = stdout_json(&out);
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(v["supportedVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));

    let state = state_dir("gc");
    let conf = conf("1.1.0", &state);
    let status = state.plugin(BIN, &[], &[("CNI_COMMAND", "STATUS")], &conf);
    assert!(status.status.success());
    // A state directory that cannot be made is not ready, and STATUS makes nothing.
    let blocker = state.path().join("a-file");
    std::fs::write(&blocker, "").unwrap();
    let mut unusable: Value = serde_json::from_str(&conf).unwrap();
    unusable["stateDir"] = json!(blocker.join("state"));
    let out = state.plugin(
        BIN,
        &[],
        &[("CNI_COMMAND", "STATUS")],
        &unusable.to_string(),
    );
    let error = assert_cni_error(&out, 50);
    assert!(
        error["msg"].as_str().unwrap().contains("not a directory"),
        "{error}"
    );
    // Without a daemon binary an ADD cannot be served either.
    let no_daemon = ("FLATNETD", "/nonexistent/flatnetd");
    let status_without_daemon =
        || state.plugin(BIN, &[], &[("CNI_COMMAND", "STATUS"), no_daemon], &conf);
    assert_cni_error(&status_without_daemon(), 50);

    let keep = TestNetns::new("keep");
    let dropped = TestNetns::new("drop");
    let address_of = |out: Output| {
        let result = stdout_json(&out);
        let cidr = result["ips"][0]["address"].as_str().unwrap().to_string();
        cidr.split('/').next().unwrap().to_string()
    };
    let kept_ip = address_of(cni(&state, "ADD", "keep", keep.path_str(), &conf, &[]));
    let dropped_ip = address_of(cni(&state, "ADD", "drop", dropped.path_str(), &conf, &[]));
    // Without the list of valid attachments nothing is known to be stale: refused, all kept.
    let out = state.plugin(BIN, &[], &[("CNI_COMMAND", "GC")], &conf);
    let error = assert_cni_error(&out, 7);
    assert!(
        error["msg"].as_str().unwrap().contains("valid-attachments"),
        "{error}"
    );
    assert!(keep.has_link("eth0") && dropped.has_link("eth0"));
    let mut gc: Value = serde_json::from_str(&conf).unwrap();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    let out = state.plugin(BIN, &[], &[("CNI_COMMAND", "GC")], &gc.to_string());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(keep.has_link("eth0"));
    assert!(!dropped.has_link("eth0"));
    let entries = lighthouse_entries(state.path());
    assert!(entries.iter().any(|e| e.ends_with(&format!("/{kept_ip}"))));
    assert!(!entries
        .iter()
        .any(|e| e.ends_with(&format!("/{dropped_ip}"))));
    // The host member stays while the network has a container here.
    assert!(state.host.ip(&["-o", "link"]).contains("fn-"));
    // Serving: ready. Without a daemon binary and with the daemon gone, the running
    // container is cut off too: 51.
    assert!(state
        .plugin(BIN, &[], &[("CNI_COMMAND", "STATUS")], &conf)
        .status
        .success());
    assert_cni_error(&status_without_daemon(), 50);
    state.stop_daemon();
    assert_cni_error(&status_without_daemon(), 51);
    cni_ok(&state, "DEL", "keep", keep.path_str(), &conf);
    state.assert_nothing_left();
}

#[test]
fn a_host_member_deleted_by_hand_comes_back_with_the_next_attach() {
    needs_root!();
    let state = state_dir("member");
    let conf = conf("1.0.0", &state);
    let (a, b) = (TestNetns::new("ma"), TestNetns::new("mb"));
    cni_ok(&state, "ADD", "ma", a.path_str(), &conf);
    let members = state.host_leftovers();
    let member = members
        .iter()
        .find_map(|l| l.strip_prefix("interface "))
        .expect("a host member")
        .to_string();
    state.host.ip(&["link", "del", &member]);

    cni_ok(&state, "ADD", "mb", b.path_str(), &conf);
    assert!(state.host.has_link(&member), "{member} was not made again");
    let rules = run_ok(
        "ip",
        &["netns", "exec", &state.host.name, "nft", "list", "ruleset"],
    );
    assert!(rules.contains(&member), "{rules}");
    for (id, ns) in [("ma", &a), ("mb", &b)] {
        cni_ok(&state, "DEL", id, ns.path_str(), &conf);
    }
    state.assert_nothing_left();
}

#[test]
fn a_network_overlapping_one_already_here_is_refused() {
    needs_root!();
    let state = state_dir("overlap");
    let first = conf("1.0.0", &state);
    let second = first
        .replace("\"cnitest\"", "\"cnitest2\"")
        .replace("192.0.2.0/24", "192.0.2.128/25");
    let (a, b) = (TestNetns::new("oa"), TestNetns::new("ob"));
    cni_ok(&state, "ADD", "oa", a.path_str(), &first);

    let refused = cni(&state, "ADD", "ob", b.path_str(), &second, &[]);
    let err = assert_cni_error(&refused, 7);
    let msg = err["msg"].as_str().unwrap();
    assert!(
        msg.contains("192.0.2.128/25") && msg.contains("overlaps") && msg.contains("cnitest"),
        "{err}"
    );
    assert!(!b.has_link("eth0"));

    // Once the first network has left the host, the second may come.
    cni_ok(&state, "DEL", "oa", a.path_str(), &first);
    cni_ok(&state, "ADD", "ob", b.path_str(), &second);
    cni_ok(&state, "DEL", "ob", b.path_str(), &second);
    state.assert_nothing_left();
}

#[test]
fn a_killed_daemon_s_loopback_redirects_go_with_the_last_container() {
    needs_root!();
    let state = state_dir("relay");
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "cnirelay",
        "type": "flatnet-cni",
        "subnets": [{"subnet": "192.0.2.0/24"}, {"subnet": "fd77:9::/64"}],
        "stateDir": state.path(),
        "tunnelPort": state.port,
        "runtimeConfig": {"portMappings": [
            {"hostPort": 18777, "containerPort": 80, "protocol": "tcp"}
        ]},
    })
    .to_string();
    let ns = TestNetns::new("r");
    cni_ok(&state, "ADD", "r1", ns.path_str(), &conf);
    let relays = || -> Vec<String> {
        let left = state.host_leftovers();
        left.into_iter().filter(|l| l.ends_with("-relay")).collect()
    };
    assert_eq!(relays().len(), 1, "no redirect table for [::1]:18777");

    // Killed: nothing of the daemon's may clear its table now; the last DEL must.
    let pid = flatnet::control::status(&state.state_dir()).unwrap().pid;
    // SAFETY: kill(2) of the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    wait_until(std::time::Duration::from_secs(5), || {
        !flatnet::control::is_running(&state.state_dir())
    });
    cni_ok(&state, "DEL", "r1", ns.path_str(), &conf);
    assert_eq!(relays(), Vec::<String>::new());
    state.assert_nothing_left();
}
