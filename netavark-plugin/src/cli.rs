//! What `flatnet` says to a person: `--help`, `--version` and its manual page. netavark calls
//! the plugin with a subcommand (`info`, `create`, `setup`, `teardown`) and JSON on stdin;
//! a first argument that is an option is a person asking, and the answer never reads stdin.

use std::io::Write;
use std::path::PathBuf;

use clap::{Arg, Command};

/// The sections of the manual that clap does not know: options, files, examples.
const MANUAL_SECTIONS: &str = include_str!("manual.roff");

pub fn command() -> Command {
    let step = |name: &'static str, about: &'static str| Command::new(name).about(about);
    Command::new("flatnet")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Flatnet as a netavark plugin: podman network create -d flatnet")
        .long_about(
            "A netavark network plugin (Podman >= 4.5 with netavark >= 1.6), installed in a \
             netavark plugin directory such as /usr/libexec/netavark; its file name is the \
             driver name. netavark runs it with a subcommand and the network (and, for setup \
             and teardown, the container's options) as JSON on stdin; it answers JSON on stdout \
             or {\"error\": ...} with a non-zero exit.",
        )
        .subcommand(step("info", "Print the plugin's version and API version"))
        .subcommand(step(
            "create",
            "Validate a network and fill in its defaults (podman network create)",
        ))
        .subcommand(
            step(
                "setup",
                "Attach a container: interface, address, names, ports (podman run)",
            )
            .arg(Arg::new("netns").required(true)),
        )
        .subcommand(
            step(
                "teardown",
                "Detach a container (podman stop, rm, network disconnect)",
            )
            .arg(Arg::new("netns").required(true)),
        )
        .arg(
            Arg::new("generate-man")
                .long("generate-man")
                .value_name("DIR")
                .value_parser(clap::value_parser!(PathBuf))
                .hide(true)
                .help("Write the manual page (roff) into DIR and exit"),
        )
}

/// Answers a person's command line. Returns false for netavark's calls.
pub fn answer_person() -> bool {
    let first = std::env::args().nth(1);
    if !first
        .as_deref()
        .is_some_and(|a| a.starts_with('-') || a == "help")
    {
        return false;
    }
    let matches = command().get_matches();
    if let Some(dir) = matches.get_one::<PathBuf>("generate-man") {
        if let Err(e) = flatnet::manual::write_page(dir, "flatnet.8", render_manual) {
            eprintln!("flatnet: {e}");
            std::process::exit(1);
        }
    }
    true
}

/// The subcommands are netavark's protocol, described in the extra sections, not pages of their own.
fn render_manual(out: &mut dyn Write) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(command())
        .section("8")
        .manual("Flatnet");
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    out.write_all(MANUAL_SECTIONS.as_bytes())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_manual_names_every_option_the_plugin_accepts() {
        for option in flatnet_netavark::translate::OPTIONS {
            assert!(
                super::MANUAL_SECTIONS.contains(&format!("\\fB{option}\\fR")),
                "-o {option} is missing from the manual"
            );
        }
    }
}
