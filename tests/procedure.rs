//! The Phase 1 verification procedure (`docs/phase1-verification.md` and its Japanese twin) is
//! what CI runs: `scripts/verify-phase1.sh` executes the document's ```sh blocks in order and
//! compares each output with its ```text block (`scripts/procedure.py`). These tests hold the
//! rest: both documents show the same blocks and steps in the same order, the script that
//! would run is made of exactly those blocks, and the comparison fails on a wrong value.

use std::io::Write;
use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const DOCUMENTS: [&str; 2] = [
    "docs/phase1-verification.md",
    "docs/phase1-verification.ja.md",
];

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The document's ```sh and ```text blocks, each with its info string.
fn blocks(document: &str) -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    let mut open: Option<(String, Vec<String>)> = None;
    for line in read(document).lines() {
        match &mut open {
            Some(_) if line.trim() == "```" => found.push(open.take().unwrap()),
            Some((_, lines)) => lines.push(line.to_string()),
            None => {
                let info = line.strip_prefix("```").unwrap_or_default();
                if info.starts_with("sh") || info.starts_with("text") {
                    open = Some((info.to_string(), Vec::new()));
                }
            }
        }
    }
    found
}

/// The numbers of the document's steps (`**1.2 ...`), in order.
fn steps(document: &str) -> Vec<String> {
    read(document)
        .lines()
        .filter_map(|l| l.strip_prefix("**"))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.contains('.') && n.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .map(str::to_string)
        .collect()
}

fn procedure(args: &[&str]) -> std::process::Output {
    Command::new("python3")
        .arg(Path::new(ROOT).join("scripts/procedure.py"))
        .args(args)
        .current_dir(ROOT)
        .output()
        .unwrap()
}

#[test]
fn both_documents_show_the_same_blocks_and_steps_in_the_same_order() {
    let english = blocks(DOCUMENTS[0]);
    assert!(english.len() > 40, "only {} blocks", english.len());
    assert_eq!(english, blocks(DOCUMENTS[1]));
    let numbers = steps(DOCUMENTS[0]);
    assert!(numbers.len() >= 20, "{numbers:?}");
    assert_eq!(numbers, steps(DOCUMENTS[1]));
}

#[test]
fn the_script_runs_every_command_of_the_document_in_its_order() {
    for backend in ["cni", "netavark"] {
        let out = procedure(&[DOCUMENTS[0], "--backend", backend, "--print"]);
        assert!(out.status.success(), "{out:?}");
        let script = String::from_utf8(out.stdout).unwrap();
        let mut from = 0;
        for (info, lines) in blocks(DOCUMENTS[0]) {
            let other = if backend == "cni" { "netavark" } else { "cni" };
            if !info.starts_with("sh") || info.contains(other) {
                continue;
            }
            let body = lines.join("\n");
            let at = script[from..]
                .find(&body)
                .unwrap_or_else(|| panic!("{backend}: not run, or not in order:\n{body}"));
            from += at + body.len();
        }
        assert!(script.contains("current='7.1 "), "the cleanup is not run");
    }
}

/// Compares `output` with `expected` as the procedure does; true if they match.
fn matches(expected: &str, output: &str, excerpt: bool) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        path.display().to_string()
    };
    let (expected, output) = (write("expected", expected), write("output", output));
    let mode = if excerpt { "--excerpt" } else { "--whole" };
    let out = procedure(&["--compare", &expected, &output, mode]);
    out.status.success()
}

#[test]
fn an_expected_block_with_a_wrong_value_fails() {
    let ls = "10.79.0.2\n10.79.0.254\nlast_reserved_ip\n";
    assert!(matches(ls, ls, false));
    assert!(!matches(
        ls,
        "10.79.0.3\n10.79.0.254\nlast_reserved_ip\n",
        false
    ));
    assert!(!matches(ls, &format!("{ls}10.79.0.9\n"), false), "a leak");
    assert!(
        !matches(ls, "10.79.0.2\n10.79.0.254\n", false),
        "a line missing"
    );
}

#[test]
fn placeholders_stand_for_what_varies_and_nothing_else() {
    let ping = "3 packets transmitted, 3 received, 0% packet loss, time <time>\n";
    let output = "PING ...\n3 packets transmitted, 3 received, 0% packet loss, time 2003ms\n";
    assert!(matches(ping, output, true));
    assert!(!matches(
        ping,
        &output.replace("3 received", "2 received"),
        true
    ));
    assert!(
        !matches(ping, output, false),
        "an excerpt is not the whole output"
    );
    let columns = "p1 flatnet-verify 10.79.0.2 <packets/bytes>\n";
    assert!(matches(
        columns,
        "p1            flatnet-verify 10.79.0.2      13/886\n",
        true
    ));
    assert!(!matches(
        columns,
        "p2            flatnet-verify 10.79.0.2      13/886\n",
        true
    ));
}

#[test]
fn a_failing_step_stops_the_run_names_the_step_and_runs_the_cleanup() {
    let dir = tempfile::tempdir().unwrap();
    let cleaned = dir.path().join("cleaned");
    let reached = dir.path().join("reached");
    let document = dir.path().join("procedure.md");
    let text = format!(
        "**1.1 Say hello.**\n\n```sh\necho hello\n```\n\n```text\nhello\n```\n\n\
         **1.2 Fail.**\n\n```sh\nfalse\n```\n\n\
         **1.3 Never reached.**\n\n```sh\ntouch {reached}\n```\n\n\
         ## 2. Cleanup\n\n**2.1 Clean.**\n\n```sh\ntouch {cleaned}\n```\n",
        reached = reached.display(),
        cleaned = cleaned.display()
    );
    std::fs::write(&document, text).unwrap();
    let out = procedure(&[document.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("FAILED at step 1.2 Fail"), "{stderr}");
    assert!(!reached.exists(), "the run went on after a failed step");
    assert!(cleaned.exists(), "the cleanup did not run");
}
