//! Manual pages of a program with subcommands, rendered from its clap definition: one page for
//! the program and one per subcommand (`flatnetd-check(8)`, `flatnet-cert-sign(8)`, ...), as
//! the program's own page lists them. Shared by flatnetd and flatnet-cert.

use std::io::Write;
use std::path::Path;

/// Writes `<name>.8` (followed by `top_extra`, roff) and `<name>-<sub>.8` for each visible
/// subcommand (followed by `sub_extra`) into `dir`.
pub fn write_pages(
    dir: &Path,
    top: clap::Command,
    top_extra: &str,
    sub_extra: &str,
) -> Result<(), String> {
    let program = top.get_name().to_string();
    let mut pages = vec![(top.clone(), top_extra)];
    for sub in top
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name = format!("{program}-{}", sub.get_name());
        pages.push((sub.clone().name(name), sub_extra));
    }
    for (command, extra) in pages {
        let file = format!("{}.8", command.get_name());
        let man = clap_mangen::Man::new(command)
            .section("8")
            .manual("Flatnet");
        let render = |out: &mut dyn Write| {
            man.render(out)?;
            out.write_all(extra.as_bytes())
        };
        flatnet::manual::write_page(dir, &file, render)?;
    }
    Ok(())
}
