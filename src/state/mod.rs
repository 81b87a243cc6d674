//! The on-disk state: the layout ([`StateDir`], [`NetworkDirs`]: every file of
//! `docs/state.md` is named there and nowhere else) and the primitives every writer uses: an
//! exclusive file lock and atomic file replacement. The attachment records, which name
//! networks by their lighthouse identifier, are `crate::attachment`, above this module.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, IoContext, Result};

mod dir;
pub use dir::{NetworkDirs, StateDir};

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
        // O_NOFOLLOW: a symlink planted at the lock's name must not make us create or
        // truncate whatever it points to.
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .context(|| format!("opening lock file {}", path.display()))?;
        let lock = Flock::lock(file, how)
            .map_err(|(_, errno)| Error::io(format!("locking {}", path.display()), errno.into()))?;
        Ok(FileLock { _lock: lock })
    }
}

/// Creates a directory (and parents) readable only by root: state names containers and keys.
/// A directory that exists must be one nobody else could have planted files in: owned by us
/// (root) and not writable by group or others.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return check_private_dir(dir);
    }
    fs::create_dir_all(dir).context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .context(|| format!("setting mode of {}", dir.display()))
}

/// Refuses a state directory another user owns or may write to: whoever can write there can
/// plant leases, records or symlinks that root would then act on.
pub fn check_private_dir(dir: &Path) -> Result<()> {
    let meta = fs::metadata(dir).context(|| format!("inspecting {}", dir.display()))?;
    let uid = nix::unistd::geteuid().as_raw();
    if meta.uid() != uid || meta.mode() & 0o022 != 0 {
        return Err(Error::InvalidConfig(format!(
            "{} is owned by uid {} with mode {:o}: a Flatnet state directory must belong to \
             uid {uid} and not be writable by group or others",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Writes `bytes` to a temporary sibling, syncs it and renames it over `path`: readers see the
/// old content or the new, never a torn file, even if the writer is killed half-way.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_sibling(path);
    write_new(&tmp, bytes)?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io(format!("writing {}", path.display()), e)
    })
}

/// Creates `path` with `bytes` only if it does not exist yet; returns false if it does.
/// The content is complete before the name appears (write a temporary file, then hard-link it),
/// so a concurrent reader never sees an empty lease and a killed writer leaves no name behind.
pub fn create_exclusive(path: &Path, bytes: &[u8]) -> Result<bool> {
    let tmp = temp_sibling(path);
    write_new(&tmp, bytes)?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(Error::io(format!("creating {}", path.display()), e)),
    }
}

/// Writes a new file (mode 0600) that must not exist, and syncs it. A leftover regular file
/// of ours at that name (a writer with our pid was killed) is replaced; anything else there
/// (a planted symlink) is refused, and what it points to is never opened.
fn write_new(tmp: &Path, bytes: &[u8]) -> Result<()> {
    let create = || {
        OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(tmp)
    };
    // A failed write removes what it created, never what it found.
    let written = |file: File| {
        let result = write_all_synced(file, bytes);
        if result.is_err() {
            let _ = fs::remove_file(tmp);
        }
        result
    };
    let file = match create() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta =
                fs::symlink_metadata(tmp).context(|| format!("inspecting {}", tmp.display()))?;
            if !meta.file_type().is_file() {
                return Err(Error::InvalidConfig(format!(
                    "{} exists and is not a regular file: refusing to write through it",
                    tmp.display()
                )));
            }
            remove_if_exists(tmp)?;
            create()
        }
        other => other,
    };
    file.and_then(written)
        .context(|| format!("writing {}", tmp.display()))
}

fn write_all_synced(mut file: File, bytes: &[u8]) -> std::io::Result<()> {
    file.write_all(bytes)?;
    file.sync_data()?;
    crate::killpoint::here("state.temp_written");
    Ok(())
}

/// Removes the temporary files of writers that were killed (`.<name>.tmp.<pid>` whose pid is
/// gone) from `dir`; returns how many. A live writer's are left alone, so this is safe while
/// others write.
pub fn remove_stale_temps(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    for path in list_dir(dir)? {
        let Some(pid) = path
            .file_name()
            .and_then(|n| temp_owner(&n.to_string_lossy()))
        else {
            continue;
        };
        if !process_exists(pid) {
            remove_if_exists(&path)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The pid in a temporary file's name, `.<name>.tmp.<pid>`.
fn temp_owner(name: &str) -> Option<i32> {
    let (stem, pid) = name.rsplit_once(".tmp.")?;
    if !stem.starts_with('.') {
        return None;
    }
    pid.parse().ok().filter(|&pid| pid > 0)
}

/// Whether `pid` is a live process. A zombie is not: it writes nothing any more, and may
/// stay unreaped for long where the container's init does not reap.
fn process_exists(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may itself hold ") ".
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    state.is_some_and(|s| s != 'Z' && s != 'X')
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_planted_at_the_temporary_name_is_refused_and_its_target_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("victim");
        fs::write(&target, "precious").unwrap();
        let path = dir.path().join("lease");
        std::os::unix::fs::symlink(&target, temp_sibling(&path)).unwrap();
        assert!(write_atomic(&path, b"attacker's").is_err());
        assert!(create_exclusive(&path, b"attacker's").is_err());
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious");
        assert!(!path.exists());
    }

    #[test]
    fn a_leftover_temporary_file_of_ours_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record");
        fs::write(temp_sibling(&path), "half-written").unwrap();
        write_atomic(&path, b"whole").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "whole");
        assert_eq!(list_dir(dir.path()).unwrap(), vec![path]);
    }

    #[test]
    fn a_directory_others_may_write_is_refused() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("state");
        create_private_dir(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        for mode in [0o777, 0o770, 0o702] {
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
            let err = create_private_dir(&dir).unwrap_err().to_string();
            assert!(err.contains("not be writable by group or others"), "{err}");
            assert!(FileLock::acquire(&dir.join("lock")).is_err());
        }
        assert!(!dir.join("lock").exists(), "nothing was created in it");
    }

    #[test]
    fn stale_temporary_files_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        // A pid that is gone: a child that has been reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        // A writer killed and not reaped yet (a zombie) is as dead.
        let zombie = std::process::Command::new("true").spawn().unwrap();
        let stat = format!("/proc/{}/stat", zombie.id());
        while !fs::read_to_string(&stat).unwrap().contains(") Z ") {
            std::thread::yield_now();
        }
        let stale = dir.path().join(format!(".10.0.0.2.tmp.{dead}"));
        let unreaped = dir.path().join(format!(".10.0.0.5.tmp.{}", zombie.id()));
        let live = dir
            .path()
            .join(format!(".10.0.0.3.tmp.{}", std::process::id()));
        let lease = dir.path().join("10.0.0.4");
        for path in [&stale, &unreaped, &live, &lease] {
            fs::write(path, "x").unwrap();
        }
        assert_eq!(remove_stale_temps(dir.path()).unwrap(), 2);
        assert!(!stale.exists() && !unreaped.exists() && live.exists() && lease.exists());
        drop(zombie);
    }

    #[test]
    fn exclusive_creation_uses_one_temporary_suffix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("10.0.0.2");
        // Stop half-way (a killed writer): the temporary file must have one suffix.
        let tmp = temp_sibling(&path);
        assert_eq!(
            tmp.file_name()
                .unwrap()
                .to_string_lossy()
                .matches(".tmp.")
                .count(),
            1
        );
        assert!(create_exclusive(&path, b"a").unwrap());
        assert!(!create_exclusive(&path, b"b").unwrap());
        assert_eq!(list_dir(dir.path()).unwrap(), vec![path]);
    }
}
