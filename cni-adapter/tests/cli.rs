//! `flatnet-cni` for a person: help, version and the manual answer at once (stdin is left
//! open, so a plugin that read it would hang), and a runtime's call is still a CNI call.

use flatnet_test_support as support;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_flatnet-cni");

fn run_with_open_stdin(args: &[&str]) -> Output {
    support::run_with_open_stdin(BIN, args)
}

#[test]
fn help_and_version_answer_without_reading_stdin() {
    let help = run_with_open_stdin(&["--help"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("CNI plugin") && text.contains("Usage: flatnet-cni"),
        "{text}"
    );
    let version = run_with_open_stdin(&["--version"]);
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("flatnet-cni {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn an_unknown_argument_is_an_error_not_a_cni_call() {
    let out = run_with_open_stdin(&["--frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--frobnicate"));
}

#[test]
fn without_a_cni_command_it_says_what_it_is_without_reading_stdin() {
    let out = run_with_open_stdin(&[]);
    assert!(out.status.success());
    let about = String::from_utf8_lossy(&out.stderr);
    assert!(
        about.contains("flatnet-cni") && about.contains("1.1.0"),
        "{about}"
    );
    assert!(out.stdout.is_empty(), "nothing for a runtime to parse");
}

#[test]
fn with_a_cni_command_it_is_a_cni_plugin() {
    let out = Command::new(BIN)
        .env("CNI_COMMAND", "ADD")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    // It read stdin (empty here) and answered in the protocol's form.
    assert!(!out.status.success());
    let error: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(error["code"], 6, "{error}");
    assert!(
        error["msg"].as_str().unwrap().contains("network config"),
        "{error}"
    );
}

#[test]
fn the_manual_documents_every_network_key() {
    let page = support::generated_manual(BIN, "flatnet-cni.8");
    assert!(
        page.starts_with(".ie") || page.contains(".TH flatnet-cni 8"),
        "{page}"
    );
    let keys = [
        "subnet",
        "gateway",
        "mtu",
        "stateDir",
        "lighthouse",
        "tunnelPort",
        "endpoint",
        "internal",
        "dnsUpstreams",
        "capabilities",
    ];
    support::assert_documented(&page, &keys);
}
