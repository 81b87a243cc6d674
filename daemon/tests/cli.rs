//! flatnetd's command line for operators: help, version, manual pages and `check`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use flatnet_test_support::needs_root;
use serde_json::json;

const DAEMON: &str = env!("CARGO_BIN_EXE_flatnetd");

fn plugin_dir() -> PathBuf {
    Path::new(DAEMON).parent().unwrap().to_path_buf()
}

fn flatnetd(args: &[&str]) -> Output {
    Command::new(DAEMON).args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn help_lists_every_subcommand_and_version_is_the_crates() {
    let help = text(&flatnetd(&["--help"]));
    for sub in ["run", "start", "stop", "status", "check"] {
        assert!(
            help.contains(&format!("  {sub} ")),
            "{sub} missing from\n{help}"
        );
    }
    assert!(
        !help.contains("generate-man"),
        "the manual generator is for packagers only"
    );
    let version = flatnetd(&["--version"]);
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("flatnetd {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn manual_pages_cover_the_daemon_and_each_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    assert!(flatnetd(&["generate-man", dir.path().to_str().unwrap()])
        .status
        .success());
    for page in [
        "flatnetd",
        "flatnetd-run",
        "flatnetd-start",
        "flatnetd-stop",
        "flatnetd-status",
        "flatnetd-check",
    ] {
        let text = std::fs::read_to_string(dir.path().join(format!("{page}.8"))).unwrap();
        assert!(
            text.contains(&format!(".TH {page} 8")),
            "{page}.8 has no title"
        );
    }
    let run = std::fs::read_to_string(dir.path().join("flatnetd-run.8")).unwrap();
    assert!(
        run.contains("metrics"),
        "flatnetd-run(8) documents --metrics"
    );
}

/// A state directory of its own and a conflist that points at it.
struct CheckSetup {
    dir: tempfile::TempDir,
}

impl CheckSetup {
    fn new() -> CheckSetup {
        CheckSetup {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn conflist(&self, plugin: serde_json::Value) -> PathBuf {
        let mut plugin = plugin;
        plugin["type"] = json!("flatnet-cni");
        plugin["stateDir"] = json!(self.state());
        let list = json!({"cniVersion": "1.0.0", "name": "checked", "plugins": [plugin]});
        let path = self.dir.path().join("checked.conflist");
        std::fs::write(&path, list.to_string()).unwrap();
        path
    }

    fn check(&self, extra: &[&str]) -> (bool, String) {
        let state = self.state();
        let mut args = vec!["--state-dir", state.to_str().unwrap(), "check"];
        args.extend_from_slice(extra);
        let plugins = plugin_dir();
        args.extend_from_slice(&["--plugin-dir", plugins.to_str().unwrap()]);
        let out = flatnetd(&args);
        (out.status.success(), text(&out))
    }
}

#[test]
fn check_accepts_a_good_conflist_and_changes_nothing() {
    needs_root!();
    let setup = CheckSetup::new();
    let conflist = setup.conflist(json!({"subnet": "10.91.0.0/24"}));
    let (ok, out) = setup.check(&["--conflist", conflist.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(
        out.contains("ok    network checked: the plugin accepts its configuration"),
        "{out}"
    );
    assert!(out.contains("/dev/net/tun"), "{out}");
    assert!(
        !setup.state().exists(),
        "a check made {}",
        setup.state().display()
    );
}

#[test]
fn check_names_what_is_wrong_with_a_conflist() {
    needs_root!();
    let setup = CheckSetup::new();
    let conflist = setup.conflist(json!({"subnet": "10.91.0.0/24", "gateway": "10.92.0.1"}));
    let (ok, out) = setup.check(&["--conflist", conflist.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("FAIL  network checked:") && out.contains("10.92.0.1"),
        "{out}"
    );
    assert!(out.contains("1 failed"), "{out}");

    let no_flatnet = setup.dir.path().join("other.conflist");
    std::fs::write(
        &no_flatnet,
        r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"bridge"}]}"#,
    )
    .unwrap();
    let (ok, out) = setup.check(&["--conflist", no_flatnet.to_str().unwrap()]);
    assert!(
        !ok && out.contains("no plugin of type flatnet-cni"),
        "{out}"
    );
}

/// An installed plugin that accepts what flatnetd's own reading of the network refuses (a
/// plugin of another version): check says the two disagree instead of passing.
#[test]
fn check_notices_a_plugin_that_reads_networks_otherwise() {
    needs_root!();
    let setup = CheckSetup::new();
    let lenient = setup.dir.path().join("lenient");
    std::fs::create_dir(&lenient).unwrap();
    let plugin = lenient.join("flatnet-cni");
    std::fs::write(&plugin, "#!/bin/sh\ncat > /dev/null\n").unwrap();
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let conflist = setup.conflist(json!({"subnet": "10.91.0.0/24", "gateway": "10.92.0.1"}));
    let (ok, out) = setup.check(&[
        "--conflist",
        conflist.to_str().unwrap(),
        "--plugin-dir",
        lenient.to_str().unwrap(),
    ]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("ok    network checked: the plugin accepts")
            && out.contains("reads it otherwise than the installed plugin"),
        "{out}"
    );
}

#[test]
fn check_refuses_a_readable_key_and_an_open_state_directory() {
    needs_root!();
    let setup = CheckSetup::new();
    let state = setup.state();
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let key = state.join("host.key");
    std::fs::write(&key, "not a key\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, out) = setup.check(&[]);
    assert!(!ok, "{out}");
    assert!(out.contains("writable by others (mode 777)"), "{out}");
    assert!(out.contains("readable by others (mode 644)"), "{out}");

    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, out) = setup.check(&[]);
    assert!(!ok && out.contains("is not a Flatnet key"), "{out}");
}

#[test]
fn check_validates_a_podman_network_through_the_plugin() {
    needs_root!();
    let setup = CheckSetup::new();
    let networks = setup.dir.path().join("networks");
    std::fs::create_dir(&networks).unwrap();
    let network = |name: &str, driver: &str, options: serde_json::Value| {
        let mut options = options;
        options["state_dir"] = json!(setup.state());
        let stored = json!({
            "name": name, "id": "0".repeat(64), "driver": driver, "network_interface": "",
            "created": "2026-11-27T00:00:00Z",
            "subnets": [{"subnet": "10.93.0.0/24", "gateway": "10.93.0.1"}],
            "ipv6_enabled": false, "internal": false, "dns_enabled": true,
            "options": options, "ipam_options": {"driver": "host-local"}
        });
        std::fs::write(networks.join(format!("{name}.json")), stored.to_string()).unwrap();
    };
    network("good", "flatnet", json!({"mtu": "1400"}));
    network("typo", "flatnet", json!({"mut": "1400"}));
    network("bridged", "bridge", json!({}));
    let dir = networks.to_str().unwrap();
    let (ok, out) = setup.check(&["--network", "good", "--networks-dir", dir]);
    assert!(ok, "{out}");
    let (ok, out) = setup.check(&["--network", "typo", "--networks-dir", dir]);
    assert!(!ok && out.contains("unknown option \"mut\""), "{out}");
    let (ok, out) = setup.check(&["--network", "bridged", "--networks-dir", dir]);
    assert!(!ok && out.contains("uses driver \"bridge\""), "{out}");
    let (ok, out) = setup.check(&["--network", "absent", "--networks-dir", dir]);
    assert!(!ok && out.contains("absent.json"), "{out}");
}

#[test]
fn ready_fd_must_be_an_open_descriptor_above_stderr() {
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("state");
    for (fd, complaint) in [
        ("1", "must be 3 or above"),
        ("0", "must be 3 or above"),
        ("57", "not an open descriptor"),
    ] {
        let out = Command::new(DAEMON)
            .args([
                "--state-dir",
                dir.to_str().unwrap(),
                "run",
                "--ready-fd",
                fd,
            ])
            .args(["--listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "--ready-fd {fd} was accepted");
        assert!(text(&out).contains(complaint), "{}", text(&out));
        assert!(
            !dir.exists(),
            "--ready-fd {fd}: state was made before the refusal"
        );
    }
}

/// `flatnetd run` with `flags`: refused before any state is made; returns what it said.
fn refused_before_anything_starts(flags: &[&str]) -> String {
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("state");
    let out = Command::new(DAEMON)
        .args(["--state-dir", dir.to_str().unwrap(), "run"])
        .args(["--listen", "127.0.0.1:0"])
        .args(flags)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{flags:?} was accepted");
    assert!(
        !dir.exists(),
        "{flags:?}: state was made before the refusal"
    );
    text(&out)
}

/// A same-host mode that is neither `fast` nor `encrypted` is refused by name, before any
/// state is made.
#[test]
fn an_unknown_same_host_mode_is_refused_before_anything_starts() {
    let said = refused_before_anything_starts(&["--same-host", "plain"]);
    assert!(said.contains("expected fast or encrypted"), "{said}");
}

/// More sealing workers than flatnetd runs is refused, before any state is made.
#[test]
fn too_many_workers_are_refused_before_anything_starts() {
    let said = refused_before_anything_starts(&["--workers", "9"]);
    assert!(said.contains("--workers"), "{said}");
}

fn flatnet_cert(args: &[&str]) -> Output {
    Command::new(plugin_dir().join("flatnet-cert"))
        .args(args)
        .output()
        .unwrap()
}

/// The CA's tool: a host certificate names its networks (their identifiers allotted once),
/// signing a host's new key revokes its old one, and `revoke` adds to a list the CA signs.
#[test]
fn flatnet_cert_names_networks_and_revokes_replaced_keys() {
    use flatnet::cert::{self, CaCert, HostCert, RevocationList};
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let ca_dir = ca.to_str().unwrap();
    assert!(flatnet_cert(&["ca", "--name", "net", "--out-dir", ca_dir])
        .status
        .success());
    let key = |n: u8| flatnet::tunnel::encode_key(&[n; 32]);
    let sign = |k: &str, extra: &[&str]| {
        let mut args = vec!["sign", "--ca-dir", ca_dir, "--name", "host-a"];
        args.extend(["--public-key", k, "--block", "10.0.0.0/26"]);
        args.extend(extra);
        flatnet_cert(&args)
    };
    let refused = sign(&key(1), &[]);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("--network"), "{}", text(&refused));
    assert!(sign(&key(1), &["--network", "web"]).status.success());
    assert!(!ca.join("revocations.json").exists(), "nothing revoked yet");

    let rekeyed = sign(&key(2), &["--network", "web", "--network", "db"]);
    assert!(rekeyed.status.success(), "{}", text(&rekeyed));
    let ca_cert: CaCert = cert::load(&ca.join("ca.crt")).unwrap();
    let list: RevocationList = cert::load(&ca.join("revocations.json")).unwrap();
    assert_eq!(list.verify(&ca_cert), Ok(()));
    assert_eq!((list.serial, list.revoked.clone()), (1, vec![key(1)]));
    let host: HostCert = cert::load(&ca.join("issued/host-a.crt")).unwrap();
    let registry: serde_json::Value = cert::load(&ca.join("networks.json")).unwrap();
    assert_eq!(
        host.network_id("web"),
        registry["web"].as_u64().map(|id| id as u32)
    );
    assert_eq!(
        host.network_id("db"),
        registry["db"].as_u64().map(|id| id as u32)
    );

    let out = flatnet_cert(&["revoke", "--ca-dir", ca_dir, "--name", "host-a"]);
    assert!(out.status.success(), "{}", text(&out));
    let list: RevocationList = cert::load(&ca.join("revocations.json")).unwrap();
    assert_eq!(list.verify(&ca_cert), Ok(()));
    assert_eq!(list.serial, 2);
    assert!(list.revokes(&key(1)) && list.revokes(&key(2)));
}
