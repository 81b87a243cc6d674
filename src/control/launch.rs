//! Starting the daemon on demand, the way netavark starts aardvark-dns: the first plugin that
//! needs a data plane starts one, concurrent plugins start exactly one, and a plugin whose
//! network wants other settings than the running daemon's is refused.

use std::fs::{self, File};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::client::{call, is_running, status};
use super::protocol::DataPlaneRequest;
use super::settings::DaemonConfig;
use super::status::DaemonStatus;
use crate::error::{Error, IoContext, Result};
use crate::state::{create_private_dir, FileLock, StateDir};

/// How long a plugin waits for a daemon it started to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes sure the daemon of `settings.state_dir` runs, starting it if needed and waiting until
/// it is ready. Concurrent callers (40 containers starting at once) start exactly one; a daemon
/// that is dying (killed a moment ago, stopping) is waited out and replaced.
pub fn ensure_running(settings: &DaemonConfig) -> Result<()> {
    if let Some(answer) = ask_running(settings) {
        return answer;
    }
    create_private_dir(&settings.state_dir)?;
    let _guard = FileLock::acquire(&settings.state_dir.start_lock())?;
    if let Some(answer) = ask_running(settings) {
        return answer;
    }
    wait_until_gone(&settings.state_dir)?;
    start_daemon(settings)
}

/// Asks the daemon of `state_dir` to stop and waits until it is gone: after `flatnetd stop`,
/// nothing of it writes into the state directory any more (it may be removed at once) and a
/// new daemon can start.
pub fn stop(state_dir: &StateDir) -> Result<()> {
    if !is_running(state_dir) {
        return Ok(());
    }
    call(state_dir, DataPlaneRequest::Shutdown)?;
    wait_until_gone(state_dir)
}

/// Whether the running daemon serves these settings; `None` when no daemon answers (none runs,
/// or one accepted and went away: it is dying).
fn ask_running(settings: &DaemonConfig) -> Option<Result<()>> {
    if !is_running(&settings.state_dir) {
        return None;
    }
    match status(&settings.state_dir) {
        Ok(running) => Some(check_settings(settings, &running)),
        Err(Error::Io { .. }) => None,
        Err(e) => Some(Err(e)),
    }
}

/// A dying daemon holds its lock until its last thread is gone (the kernel drops the lock with
/// the process): wait for that, so the new daemon can take it.
fn wait_until_gone(state_dir: &StateDir) -> Result<()> {
    let lock = state_dir.daemon_lock();
    let deadline = Instant::now() + START_TIMEOUT;
    while FileLock::try_acquire(&lock)?.is_none() {
        if Instant::now() > deadline {
            return Err(Error::DaemonUnavailable(format!(
                "a flatnetd still holds {} after {START_TIMEOUT:?}; try again",
                lock.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// A daemon serving this state directory with another endpoint or lighthouse would publish
/// addresses nobody can reach: refuse rather than attach into a black hole. Knobs the caller
/// names (`flatnetd start --metrics ...`) must match too.
pub fn check_settings(wanted: &DaemonConfig, running: &DaemonStatus) -> Result<()> {
    let state_dir = &wanted.state_dir;
    if let Some(metrics) = &wanted.tuning.metrics {
        if running.metrics.as_ref() != Some(metrics) {
            let serving = running
                .metrics
                .as_ref()
                .map_or("off".to_string(), ToString::to_string);
            return Err(Error::InvalidConfig(format!(
                "flatnetd for {state_dir} already runs with metrics {serving}: stop it to serve them at {metrics}"
            )));
        }
    }
    if let Some(same_host) = wanted.tuning.same_host {
        if running.same_host != same_host {
            return Err(Error::InvalidConfig(format!(
                "flatnetd for {state_dir} already runs with --same-host {}: stop it to change that",
                running.same_host
            )));
        }
    }
    let lighthouse = wanted.lighthouse.to_string();
    if running.listen != wanted.listen || running.lighthouse != lighthouse {
        return Err(Error::InvalidConfig(format!(
            "flatnetd for {state_dir} runs with endpoint {} and lighthouse {}, but this \
             network wants {} and {lighthouse}: give networks with other settings their own stateDir",
            running.listen, running.lighthouse, wanted.listen
        )));
    }
    Ok(())
}

fn start_daemon(settings: &DaemonConfig) -> Result<()> {
    let binary = daemon_binary()?;
    let log_path = settings.state_dir.daemon_log();
    // The daemon logs there itself, rotated; stdout and stderr catch what comes before that.
    let log = crate::logging::open_log_file(&log_path)
        .context(|| format!("opening {}", log_path.display()))?;
    let (ready_read, ready_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::io("creating pipe", e.into()))?;
    // The write end must survive exec in the daemon, and only there.
    let ready_fd = ready_write.as_raw_fd();
    let mut command = launcher(&binary, Path::new("/"));
    command
        .arg("run")
        .args(settings.to_args())
        .arg("--ready-fd")
        .arg(ready_fd.to_string())
        .arg("--log-file")
        .arg(&log_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().context(|| "duplicating log fd")?)
        .stderr(log);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            nix::unistd::setsid()?;
            fcntl(ready_fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
            Ok(())
        });
    }
    // Not being able to start the data plane is the data plane's failure (try again later),
    // not an I/O error of the request.
    let child = command
        .spawn()
        .map_err(|e| Error::DaemonUnavailable(format!("cannot start {}: {e}", binary.display())))?;
    drop(ready_write);
    let ready = wait_ready(ready_read, child.id(), &log_path);
    if ready.is_err() {
        // Reap a daemon that died starting, so that no zombie keeps its pid looking alive
        // (stale temporary files are recognised by their writer's pid being gone).
        let mut child = child;
        for _ in 0..100 {
            if !matches!(child.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    ready
}

/// How the daemon is started. Where systemd runs, in a scope of its own (`systemd-run
/// --scope`, as netavark starts aardvark-dns): started from a plugin it would otherwise land in
/// the caller's cgroup, and a Podman run from a systemd unit (quadlet) would take it down when
/// that unit stops. Elsewhere a plain process, detached into its own session. `root` is where
/// to look for systemd (`/`; a test's directory in tests).
fn launcher(binary: &Path, root: &Path) -> Command {
    let systemd_run = ["usr/bin/systemd-run", "bin/systemd-run"]
        .iter()
        .map(|p| root.join(p))
        .find(|p| p.is_file());
    match systemd_run {
        Some(systemd_run) if root.join("run/systemd/system").is_dir() => {
            let mut command = Command::new(systemd_run);
            command
                .args(["--scope", "--quiet", "--collect"])
                .arg("--description=Flatnet data plane")
                .arg(binary);
            command
        }
        _ => Command::new(binary),
    }
}

/// The daemon writes one byte to the pipe once it serves; EOF first means it died.
fn wait_ready(pipe: OwnedFd, pid: u32, log: &Path) -> Result<()> {
    let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
    let timeout =
        PollTimeout::try_from(START_TIMEOUT.as_millis() as i32).unwrap_or(PollTimeout::MAX);
    let ready = poll(&mut fds, timeout).map_err(|e| Error::io("waiting for flatnetd", e.into()))?;
    let mut byte = [0u8; 1];
    let got = if ready > 0 {
        File::from(pipe).read(&mut byte).unwrap_or(0)
    } else {
        0
    };
    if got == 1 {
        return Ok(());
    }
    let tail = fs::read_to_string(log)
        .map(|t| t.lines().rev().take(5).collect::<Vec<_>>().join(" | "))
        .unwrap_or_default();
    Err(Error::DaemonUnavailable(format!(
        "flatnetd (pid {pid}) did not become ready: {tail}"
    )))
}

/// The daemon binary: `FLATNETD`, else next to the running plugin, else on the usual paths.
/// The plugins run as root and start what this names as root, so a `FLATNETD` anyone but
/// root could have written (the file or a directory above it) is refused, and what runs is
/// the path that was checked, with every link resolved: a link swapped after the check (one
/// in a directory its owner may write) changes nothing.
pub fn daemon_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("FLATNETD") {
        return root_owned(&PathBuf::from(path));
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("flatnetd")));
    let candidates = sibling.into_iter().chain(
        ["/usr/local/bin/flatnetd", "/usr/bin/flatnetd"]
            .into_iter()
            .map(PathBuf::from),
    );
    for candidate in candidates {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Ok(PathBuf::from("flatnetd"))
}

/// The file's path with every link resolved, if the file and every directory above it
/// belong to root and are writable by nobody else.
fn root_owned(path: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let absolute = match fs::canonicalize(path) {
        Ok(absolute) => absolute,
        // Nothing there to trust or distrust: starting it fails, as with no daemon at all.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(path.to_path_buf()),
        Err(e) => {
            return Err(Error::InvalidConfig(format!(
                "FLATNETD={}: {e}",
                path.display()
            )))
        }
    };
    for step in absolute.ancestors() {
        let meta = fs::metadata(step)
            .map_err(|e| Error::InvalidConfig(format!("FLATNETD: {}: {e}", step.display())))?;
        // Sticky directories (/tmp) let only owners replace entries; anything else writable
        // by group or others lets them swap the binary.
        let sticky = meta.is_dir() && meta.mode() & 0o1000 != 0;
        if meta.uid() != 0 || (meta.mode() & 0o022 != 0 && !sticky) {
            return Err(Error::InvalidConfig(format!(
                "FLATNETD={}: {} must belong to root and not be writable by group or others",
                path.display(),
                step.display()
            )));
        }
    }
    Ok(absolute)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_daemon_gets_a_scope_of_its_own_only_where_systemd_runs() {
        let root = tempfile::tempdir().unwrap();
        let binary = Path::new("/usr/bin/flatnetd");
        let argv = |c: &Command| {
            std::iter::once(c.get_program())
                .chain(c.get_args())
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        };
        // No systemd (this machine, containers, chroots): the daemon itself.
        assert_eq!(argv(&launcher(binary, root.path())), ["/usr/bin/flatnetd"]);
        // systemd-run installed but systemd not running: still the daemon itself.
        let systemd_run = root.path().join("usr/bin/systemd-run");
        fs::create_dir_all(systemd_run.parent().unwrap()).unwrap();
        fs::write(&systemd_run, "").unwrap();
        assert_eq!(argv(&launcher(binary, root.path())), ["/usr/bin/flatnetd"]);
        // systemd running: in a transient scope.
        fs::create_dir_all(root.path().join("run/systemd/system")).unwrap();
        let command = launcher(binary, root.path());
        let args = argv(&command);
        assert_eq!(args[0], systemd_run.to_string_lossy());
        assert!(args.contains(&"--scope".to_string()));
        assert_eq!(args.last().unwrap(), "/usr/bin/flatnetd");
    }

    #[test]
    fn flatnetd_from_a_path_others_could_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("flatnetd");
        fs::write(&binary, "#!/bin/sh\n").unwrap();
        let mode = |path: &Path, mode| fs::set_permissions(path, fs::Permissions::from_mode(mode));
        mode(&binary, 0o755).unwrap();
        assert!(
            root_owned(&binary).is_ok(),
            "root's own file in root's directory"
        );

        mode(dir.path(), 0o777).unwrap();
        let err = root_owned(&binary).unwrap_err().to_string();
        assert!(err.contains("not be writable by group or others"), "{err}");
        mode(dir.path(), 0o700).unwrap();

        mode(&binary, 0o775).unwrap();
        assert!(root_owned(&binary).is_err(), "a group-writable binary");
        mode(&binary, 0o755).unwrap();

        std::os::unix::fs::chown(&binary, Some(65534), None).unwrap();
        assert!(root_owned(&binary).is_err(), "a binary nobody owns");
    }

    /// A link to a good binary in a place its owner may change: what runs is the binary the
    /// check saw, not whatever the link names later.
    #[test]
    fn flatnetd_runs_from_the_path_that_was_checked() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("flatnetd");
        fs::write(&binary, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&binary, &link).unwrap();
        let chosen = root_owned(&link).unwrap();
        assert_eq!(chosen, fs::canonicalize(&binary).unwrap());
        fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink("/nonexistent/evil", &link).unwrap();
        // Had the link been returned, it would now name nothing.
        assert!(
            chosen.is_file(),
            "{} follows the swapped link",
            chosen.display()
        );
    }
}
