//! The Phase 1 verification procedure (`docs/phase1-verification.md` and its Japanese twin)
//! cannot drift from what CI runs: every command the documents show stands on a line of a
//! script CI runs (`scripts/verify-phase1.sh`, after the tests, or the README's test command)
//! or of the real Forgejo example; both documents show the same commands; and every step of the
//! script is described in both.

use std::path::Path;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const DOCUMENTS: [&str; 2] = [
    "docs/phase1-verification.md",
    "docs/phase1-verification.ja.md",
];
/// Where a documented command may stand: what CI runs, and the real Forgejo scenario.
const SOURCES: [&str; 3] = [
    "scripts/verify-phase1.sh",
    ".ci/run",
    "examples/forgejo/run.sh",
];

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn squeeze(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The lines of the document's ```sh blocks: its commands.
fn commands(document: &str) -> Vec<String> {
    let mut inside = false;
    let mut found = Vec::new();
    for line in read(document).lines() {
        let fence = line.trim_start();
        if fence.starts_with("```") {
            inside = !inside && fence == "```sh";
            continue;
        }
        if inside && !line.trim().is_empty() && !line.trim_start().starts_with('#') {
            found.push(squeeze(line));
        }
    }
    found
}

/// `step 1.2 ...` lines of the procedure script: their numbers.
fn script_steps() -> Vec<String> {
    read("scripts/verify-phase1.sh")
        .lines()
        .filter_map(|l| l.strip_prefix("step "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn every_documented_command_is_run_by_ci_or_the_forgejo_example() {
    let lines: Vec<String> = SOURCES
        .iter()
        .flat_map(|s| read(s).lines().map(squeeze).collect::<Vec<_>>())
        .collect();
    for document in DOCUMENTS {
        let commands = commands(document);
        assert!(
            commands.len() > 30,
            "{document}: only {} commands",
            commands.len()
        );
        for command in commands {
            assert!(
                lines.iter().any(|line| line.contains(&command)),
                "{document}: `{command}` is in no script CI runs ({SOURCES:?})"
            );
        }
    }
}

#[test]
fn both_documents_show_the_same_commands() {
    assert_eq!(commands(DOCUMENTS[0]), commands(DOCUMENTS[1]));
}

#[test]
fn every_step_of_the_script_is_in_both_documents() {
    let steps = script_steps();
    assert!(steps.len() >= 15, "{steps:?}");
    for document in DOCUMENTS {
        let text = read(document);
        for step in &steps {
            assert!(
                text.contains(&format!("**{step} ")),
                "{document} does not describe step {step}"
            );
        }
    }
}
