//! What `flatnet-cni` says to a person: `--help`, `--version` and its manual page. A runtime
//! calls the plugin without arguments (the command comes in `CNI_COMMAND`), so any argument
//! means a person is asking, and the answer never waits on stdin.

use std::io::Write;

use std::path::PathBuf;

use clap::{Arg, Command};

/// The sections of the manual that clap does not know: keys, environment, exit codes.
const MANUAL_SECTIONS: &str = include_str!("manual.roff");

pub fn command() -> Command {
    Command::new("flatnet-cni")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Flatnet as a CNI plugin: containers on an encrypted flat overlay network")
        .long_about(
            "A CNI plugin, run by the container runtime (Podman's CNI backend, containerd, \
             CRI-O) with CNI_COMMAND and the other CNI_* variables in the environment and the \
             network configuration on stdin. ADD gives the container a TUN interface and a \
             Flatnet address and has flatnetd carry its packets through Noise tunnels; DEL, \
             CHECK, STATUS, GC and VERSION follow the CNI specification 1.1.\n\n\
             Run by a person it answers --help and --version, and without CNI_COMMAND prints \
             one line about itself; flatnet-cni(8) lists the network configuration keys.",
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

/// One line for a person who ran the plugin without a CNI command.
pub fn about() -> String {
    format!(
        "flatnet-cni {}: Flatnet as a CNI plugin (CNI spec versions {}); see flatnet-cni --help",
        env!("CARGO_PKG_VERSION"),
        flatnet_cni::protocol::SUPPORTED_VERSIONS.join(", ")
    )
}

/// Answers a person's command line. Returns false when there is none (a runtime's call).
pub fn answer_person() -> bool {
    if std::env::args_os().len() < 2 {
        return false;
    }
    let matches = command().get_matches();
    if let Some(dir) = matches.get_one::<PathBuf>("generate-man") {
        if let Err(e) = flatnet::manual::write_page(dir, "flatnet-cni.8", render_manual) {
            eprintln!("flatnet-cni: {e}");
            std::process::exit(1);
        }
    }
    true
}

fn render_manual(out: &mut dyn Write) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(command())
        .section("8")
        .manual("Flatnet");
    man.render(out)?;
    out.write_all(MANUAL_SECTIONS.as_bytes())
}
