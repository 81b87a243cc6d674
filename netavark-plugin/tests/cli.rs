//! `flatnet` (the netavark plugin) for a person: help, version and the manual answer at once,
//! without reading stdin; netavark's own subcommands still go to the plugin protocol.

use flatnet_test_support as support;
use std::process::Output;

const BIN: &str = env!("CARGO_BIN_EXE_flatnet");

fn run_with_open_stdin(args: &[&str]) -> Output {
    support::run_with_open_stdin(BIN, args)
}

#[test]
fn help_and_version_answer_without_reading_stdin() {
    for flag in ["--help", "-h"] {
        let help = run_with_open_stdin(&[flag]);
        assert!(help.status.success());
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(
            text.contains("netavark") && text.contains("teardown"),
            "{text}"
        );
    }
    let version = run_with_open_stdin(&["--version"]);
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("flatnet {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn info_still_speaks_the_plugin_protocol() {
    let out = run_with_open_stdin(&["info"]);
    assert!(out.status.success());
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn the_manual_documents_every_network_option() {
    let page = support::generated_manual(BIN, "flatnet.8");
    let options = [
        "mtu",
        "tunnel_port",
        "endpoint",
        "state_dir",
        "lighthouse",
        "dns_upstreams",
    ];
    support::assert_documented(&page, &options);
}
