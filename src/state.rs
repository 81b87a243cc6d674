//! The on-disk state layout and the two primitives every writer uses: an exclusive file lock
//! and atomic file replacement. `docs/state.md` describes the layout.
//!
//! ```text
//! <state_dir>/
//!   lighthouse.json                 file lighthouse (default location; shared by hosts in tests)
//!   lighthouse.json.lock
//!   networks/<network>/
//!     lock                          serialises IPAM and attachment-record changes
//!     leases/<ip>                   one file per reserved address: "<container_id>\n<ifname>\n"
//!     leases/last_reserved_ip       where the round-robin allocator continues
//!     attachments/<container_id>.json
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, IoContext, Result};

/// Paths of one network's state below the state directory.
#[derive(Debug, Clone)]
pub struct NetworkDirs {
    pub root: PathBuf,
}

impl NetworkDirs {
    pub fn new(state_dir: &Path, network: &str) -> Self {
        NetworkDirs {
            root: state_dir.join("networks").join(network),
        }
    }
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("lock")
    }
    pub fn leases(&self) -> PathBuf {
        self.root.join("leases")
    }
    pub fn attachments(&self) -> PathBuf {
        self.root.join("attachments")
    }
}

/// An exclusive advisory lock held until dropped. Works across processes, which is what matters:
/// every plugin invocation is its own short-lived process.
pub struct FileLock {
    _lock: Flock<File>,
}

impl FileLock {
    pub fn acquire(path: &Path) -> Result<Self> {
        Self::lock(path, FlockArg::LockExclusive)
    }

    /// Takes the lock only if nobody holds it; `None` if somebody does.
    pub fn try_acquire(path: &Path) -> Result<Option<Self>> {
        match Self::lock(path, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(lock)),
            Err(Error::Io { source, .. })
                if source.raw_os_error() == Some(nix::errno::Errno::EWOULDBLOCK as i32) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn lock(path: &Path, how: FlockArg) -> Result<Self> {
        if let Some(dir) = path.parent() {
            create_private_dir(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .context(|| format!("opening lock file {}", path.display()))?;
        let lock = Flock::lock(file, how)
            .map_err(|(_, errno)| Error::io(format!("locking {}", path.display()), errno.into()))?;
        Ok(FileLock { _lock: lock })
    }
}

/// Creates a directory (and parents) readable only by root: state names containers and keys.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .context(|| format!("setting mode of {}", dir.display()))
}

/// Writes `bytes` to a temporary sibling, syncs it and renames it over `path`: readers see the
/// old content or the new, never a torn file, even if the writer is killed half-way.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_data()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.context(|| format!("writing {}", path.display()))
}

/// Creates `path` with `bytes` only if it does not exist yet; returns false if it does.
/// The content is complete before the name appears (write a temporary file, then hard-link it),
/// so a concurrent reader never sees an empty lease and a killed writer leaves no name behind.
pub fn create_exclusive(path: &Path, bytes: &[u8]) -> Result<bool> {
    let tmp = temp_sibling(path);
    write_atomic(&tmp, bytes)?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(Error::io(format!("creating {}", path.display()), e)),
    }
}

/// Reads a file; `None` if it does not exist (state that was never written, or released).
pub fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

/// The entries of a directory; none if it does not exist yet.
pub fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
    };
    entries
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .context(|| format!("listing {}", dir.display()))
}

/// Removes a file; a file that is already gone is not an error (every release is idempotent).
pub fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io(format!("removing {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp.{}", std::process::id()))
}

/// Names that become path components must not be able to escape their directory.
/// Returns the complaint, for the caller to wrap in the right error kind.
pub fn check_name(what: &str, name: &str, max_len: usize) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= max_len
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {name:?} must be 1-{max_len} characters of [A-Za-z0-9_.-], starting with a letter or digit"
        ))
    }
}
