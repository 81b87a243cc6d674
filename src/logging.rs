//! Where Flatnet's programs log. The plugins write warnings to stderr, where the runtime shows
//! them; flatnetd logs to journald under systemd, to a rotated 0600 file when a plugin started
//! it, and to stderr otherwise. `FLATNET_LOG` overrides the level (`debug` shows handshakes).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// A log file grows to this size before it becomes `<name>.1` (the one kept old generation).
pub const LOG_FILE_MAX_BYTES: u64 = 4 << 20;

fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_env("FLATNET_LOG").unwrap_or_else(|_| EnvFilter::new(default))
}

/// Plugins and short-lived commands: warnings and errors on stderr, without colours or
/// timestamps (the runtime adds its own).
pub fn init_plugin() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter("warn"))
        .with_writer(io::stderr)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .try_init();
}

/// Where the daemon's log goes.
pub enum DaemonLog<'a> {
    /// A file of the state directory, rotated by size; stderr follows it (panics land there).
    File(&'a Path),
    /// stderr, or the journal when systemd connected stderr to it.
    Stderr,
}

pub fn init_daemon(log: DaemonLog) -> io::Result<()> {
    match log {
        DaemonLog::File(path) => {
            let file = RotatingFile::open(path, LOG_FILE_MAX_BYTES, true)?;
            tracing_subscriber::fmt()
                .with_env_filter(filter("info"))
                .with_writer(Arc::new(file))
                .with_ansi(false)
                .init();
        }
        DaemonLog::Stderr if stderr_is_journal() => match tracing_journald::layer() {
            Ok(journal) => tracing_subscriber::registry()
                .with(filter("info"))
                .with(journal.with_syslog_identifier("flatnetd".into()))
                .init(),
            Err(_) => init_stderr(false),
        },
        DaemonLog::Stderr => init_stderr(io::IsTerminal::is_terminal(&io::stderr())),
    }
    Ok(())
}

fn init_stderr(ansi: bool) {
    tracing_subscriber::fmt()
        .with_env_filter(filter("info"))
        .with_writer(io::stderr)
        .with_ansi(ansi)
        .init();
}

/// systemd sets `JOURNAL_STREAM` to the device and inode of the stream it gave us; a child
/// that inherited the variable but not the stream must not take it for the journal.
fn stderr_is_journal() -> bool {
    let Some(expected) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(meta) = nix::sys::stat::fstat(io::stderr().as_raw_fd()) else {
        return false;
    };
    expected.to_string_lossy() == format!("{}:{}", meta.st_dev, meta.st_ino)
}

/// An append-only log file that moves aside to `<path>.1` once it reaches `max_bytes`.
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    follow_stderr: bool,
    current: Mutex<(File, u64)>,
}

impl RotatingFile {
    pub fn open(path: &Path, max_bytes: u64, follow_stderr: bool) -> io::Result<Self> {
        let file = open_log_file(path)?;
        let size = file.metadata()?.len();
        let rotating = RotatingFile {
            path: path.to_path_buf(),
            max_bytes,
            follow_stderr,
            current: Mutex::new((file, size)),
        };
        if follow_stderr {
            rotating.redirect_stderr(&rotating.current.lock().expect("fresh lock").0);
        }
        Ok(rotating)
    }

    fn rotate(&self, current: &mut (File, u64)) -> io::Result<()> {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, &old)?;
        let file = open_log_file(&self.path)?;
        if self.follow_stderr {
            self.redirect_stderr(&file);
        }
        *current = (file, 0);
        Ok(())
    }

    fn redirect_stderr(&self, file: &File) {
        // SAFETY: dup2 onto fd 2 replaces stderr atomically; both descriptors are valid.
        unsafe { libc::dup2(file.as_raw_fd(), libc::STDERR_FILENO) };
    }
}

impl Write for &RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.1 > 0 && current.1 + buf.len() as u64 > self.max_bytes {
            // A log that cannot rotate goes on growing rather than losing lines.
            let _ = self.rotate(&mut current);
        }
        let written = current.0.write(buf)?;
        current.1 += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Opens a log for appending, 0600 when created, and makes an existing one 0600 too; a
/// symlink is refused (the state directory is root's, but a log is no place to follow one).
pub fn open_log_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::PermissionsExt;
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_full_log_moves_aside_and_a_new_private_one_begins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flatnetd.log");
        let log = RotatingFile::open(&path, 100, false).unwrap();
        let line = [b'x'; 40];
        for _ in 0..3 {
            (&log).write_all(&line).unwrap();
        }
        let old = std::fs::metadata(dir.path().join("flatnetd.log.1")).unwrap();
        let new = std::fs::metadata(&path).unwrap();
        assert_eq!(old.len(), 80, "two lines fit before the limit");
        assert_eq!(new.len(), 40);
        assert_eq!(new.permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn an_existing_log_is_made_private_and_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flatnetd.log");
        std::fs::write(&path, b"before\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let log = RotatingFile::open(&path, 1 << 20, false).unwrap();
        (&log).write_all(b"after\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "before\nafter\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_symlinked_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"").unwrap();
        let path = dir.path().join("flatnetd.log");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(RotatingFile::open(&path, 1 << 20, false).is_err());
    }
}
