//! Manual pages: each program renders its own from its clap definition (`clap_mangen`) and
//! writes it with [`write_page`] when `make man` asks (`--generate-man DIR`).

use std::io::{self, Write};
use std::path::Path;

/// Renders a page into `dir/file`; the error names the file.
pub fn write_page(
    dir: &Path,
    file: &str,
    render: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<(), String> {
    let path = dir.join(file);
    let mut page = Vec::new();
    render(&mut page)
        .and_then(|()| std::fs::write(&path, page))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}
