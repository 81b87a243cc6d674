//! The control protocol between the plugins (and the admin CLI) and `flatnetd`: one JSON
//! request and one JSON response per line over a root-only unix socket in the state directory.
//! Every message carries the protocol version, so a plugin and a daemon of different releases
//! refuse each other clearly instead of misreading each other.
//!
//! Also here: starting the daemon on demand, the way netavark starts aardvark-dns.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::lighthouse::{Entry, LighthouseSettings, NetworkId};
use crate::state::{create_private_dir, FileLock};

pub const PROTOCOL_VERSION: u32 = 1;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a plugin waits for a daemon it started to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Serve the container whose attachment record exists (the record is the source of truth).
    Attach {
        network: String,
        container_id: String,
    },
    Detach {
        network: String,
        container_id: String,
    },
    Status,
    Shutdown,
    /// Lighthouse operations for a daemon that holds the lighthouse (etcd): the plugins do not
    /// talk to etcd themselves. Answered off the packet thread.
    NetworkId {
        network: String,
    },
    Register {
        entry: Entry,
    },
    Unregister {
        network: String,
        ip: Ipv4Addr,
        container_id: String,
    },
    Lookup {
        network: String,
        ip: Ipv4Addr,
    },
    /// Every entry; with a network, that network's.
    Entries {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        network: Option<String>,
    },
}

impl Request {
    /// Whether the daemon answers this from the lighthouse rather than the data plane.
    pub fn is_lighthouse_op(&self) -> bool {
        matches!(
            self,
            Request::NetworkId { .. }
                | Request::Register { .. }
                | Request::Unregister { .. }
                | Request::Lookup { .. }
                | Request::Entries { .. }
        )
    }
}

/// Why a request failed, where the caller acts on the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Failure {
    AddressInUse {
        ip: Ipv4Addr,
        owner: String,
    },
    /// The lighthouse cannot be reached or has no quorum: try again later.
    LighthouseUnavailable,
    /// The request cannot succeed as it is (an address outside the host's blocks).
    InvalidRequest,
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope<T> {
    v: u32,
    #[serde(flatten)]
    body: T,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// Lighthouse entries asked for (lookup: none or one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<Vec<Entry>>,
    /// A network's identifier asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_id: Option<NetworkId>,
}

impl Response {
    pub fn ok() -> Self {
        Response {
            ok: true,
            ..Default::default()
        }
    }

    pub fn error(msg: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: Some(msg.into()),
            ..Default::default()
        }
    }

    /// A core error as an answer, keeping the reasons a caller acts on.
    pub fn from_error(error: &Error) -> Self {
        let failure = match error {
            Error::AddressInUse { ip, owner } => Some(Failure::AddressInUse {
                ip: *ip,
                owner: owner.clone(),
            }),
            Error::LighthouseUnavailable(_) => Some(Failure::LighthouseUnavailable),
            Error::InvalidRequest(_) => Some(Failure::InvalidRequest),
            _ => None,
        };
        let error = match error {
            // The variant's own text, not wrapped again on the other side.
            Error::LighthouseUnavailable(msg) | Error::InvalidRequest(msg) => msg.clone(),
            e => e.to_string(),
        };
        Response {
            failure,
            ..Response::error(error)
        }
    }

    pub fn with_entries(entries: Vec<Entry>) -> Self {
        Response {
            entries: Some(entries),
            ..Response::ok()
        }
    }

    pub fn with_network_id(id: NetworkId) -> Self {
        Response {
            network_id: Some(id),
            ..Response::ok()
        }
    }

    /// A refusal as the core error it stands for.
    fn into_error(self) -> Error {
        let msg = self.error.unwrap_or_default();
        match self.failure {
            Some(Failure::AddressInUse { ip, owner }) => Error::AddressInUse { ip, owner },
            Some(Failure::LighthouseUnavailable) => Error::LighthouseUnavailable(msg),
            Some(Failure::InvalidRequest) => Error::InvalidRequest(msg),
            None => Error::DataPlane(msg),
        }
    }
}

/// Where the daemon of a state directory listens.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("flatnetd.sock")
}

/// Encodes a request line (the daemon's side decodes it with [`decode_request`]).
pub fn encode_request(request: &Request) -> String {
    let mut line = serde_json::to_string(&Envelope {
        v: PROTOCOL_VERSION,
        body: request,
    })
    .expect("requests serialise");
    line.push('\n');
    line
}

/// Decodes a request line, refusing other protocol versions.
pub fn decode_request(line: &str) -> std::result::Result<Request, String> {
    let envelope: Envelope<serde_json::Value> =
        serde_json::from_str(line).map_err(|e| format!("bad request: {e}"))?;
    if envelope.v != PROTOCOL_VERSION {
        return Err(format!(
            "control protocol version {} is not supported (this daemon speaks {PROTOCOL_VERSION})",
            envelope.v
        ));
    }
    serde_json::from_value(envelope.body).map_err(|e| format!("bad request: {e}"))
}

pub fn encode_response(response: &Response) -> String {
    let mut line = serde_json::to_string(&Envelope {
        v: PROTOCOL_VERSION,
        body: response,
    })
    .expect("responses serialise");
    line.push('\n');
    line
}

/// Sends one request to the daemon of `state_dir` and waits for its answer.
pub fn request(state_dir: &Path, request: &Request) -> Result<Response> {
    let path = socket_path(state_dir);
    let mut stream = UnixStream::connect(&path)
        .context(|| format!("connecting to flatnetd at {}", path.display()))?;
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(REQUEST_TIMEOUT)))
        .and_then(|()| stream.write_all(encode_request(request).as_bytes()))
        .context(|| "sending to flatnetd")?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .context(|| "reading flatnetd's answer")?;
    let envelope: Envelope<Response> = serde_json::from_str(&line).map_err(|e| {
        Error::io(
            "flatnetd's answer",
            std::io::Error::other(format!("{e}: {line:?}")),
        )
    })?;
    if envelope.v != PROTOCOL_VERSION {
        return Err(Error::InvalidConfig(format!(
            "flatnetd speaks control protocol {}, this plugin {PROTOCOL_VERSION}: upgrade both together",
            envelope.v
        )));
    }
    Ok(envelope.body)
}

/// Sends a request and turns a refusal into an error.
pub fn call(state_dir: &Path, req: &Request) -> Result<Response> {
    let response = request(state_dir, req)?;
    if response.ok {
        Ok(response)
    } else {
        Err(response.into_error())
    }
}

/// Is a daemon answering on this state directory's socket?
pub fn is_running(state_dir: &Path) -> bool {
    UnixStream::connect(socket_path(state_dir)).is_ok()
}

/// How a daemon for a state directory is started.
#[derive(Debug, Clone)]
pub struct DaemonSettings {
    pub state_dir: PathBuf,
    pub lighthouse: LighthouseSettings,
    pub listen: SocketAddr,
    /// The daemon's poll window in µs; `None` keeps the last run's or the default.
    pub poll_us: Option<u32>,
    /// Where the daemon serves metrics; `None` keeps the last run's setting.
    pub metrics: Option<crate::dataplane::MetricsAddress>,
    /// The daemon's persistent keepalive in seconds (0: off); `None` keeps the last run's.
    pub persistent_keepalive_s: Option<u32>,
    /// How the daemon's containers reach each other; `None` keeps the last run's.
    pub same_host: Option<crate::dataplane::SameHost>,
    /// The daemon's sealing workers; `None` keeps the last run's or the default.
    pub workers: Option<usize>,
}

/// Makes sure the daemon of `settings.state_dir` runs, starting it if needed and waiting until
/// it is ready. Concurrent callers (40 containers starting at once) start exactly one; a daemon
/// that is dying (killed a moment ago, stopping) is waited out and replaced.
pub fn ensure_running(settings: &DaemonSettings) -> Result<()> {
    if let Some(answer) = ask_running(settings) {
        return answer;
    }
    create_private_dir(&settings.state_dir)?;
    let _guard = FileLock::acquire(&settings.state_dir.join("flatnetd.start.lock"))?;
    if let Some(answer) = ask_running(settings) {
        return answer;
    }
    wait_until_gone(&settings.state_dir)?;
    start_daemon(settings)
}

/// Whether the running daemon serves these settings; `None` when no daemon answers (none runs,
/// or one accepted and went away: it is dying).
fn ask_running(settings: &DaemonSettings) -> Option<Result<()>> {
    if !is_running(&settings.state_dir) {
        return None;
    }
    match call(&settings.state_dir, &Request::Status) {
        Ok(response) => Some(check_settings(
            settings,
            &response.status.unwrap_or_default(),
        )),
        Err(Error::Io { .. }) => None,
        Err(e) => Some(Err(e)),
    }
}

/// A dying daemon holds its lock until its last thread is gone (the kernel drops the lock with
/// the process): wait for that, so the new daemon can take it.
fn wait_until_gone(state_dir: &Path) -> Result<()> {
    let lock = state_dir.join("flatnetd.lock");
    let deadline = Instant::now() + START_TIMEOUT;
    while FileLock::try_acquire(&lock)?.is_none() {
        if Instant::now() > deadline {
            return Err(Error::DataPlane(format!(
                "a flatnetd holds {} but does not answer; try again",
                lock.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// A daemon serving this state directory with another endpoint or lighthouse would publish
/// addresses nobody can reach: refuse rather than attach into a black hole.
fn check_settings(wanted: &DaemonSettings, status: &serde_json::Value) -> Result<()> {
    let listen = status["listen"].as_str().unwrap_or_default();
    let lighthouse = status["lighthouse"].as_str().unwrap_or_default();
    if let Some(metrics) = &wanted.metrics {
        let serving = status["metrics"].as_str().unwrap_or("off");
        if serving != metrics.to_string() {
            return Err(Error::InvalidConfig(format!(
                "flatnetd for {} already runs with metrics {serving}: stop it to serve them at {metrics}",
                wanted.state_dir.display()
            )));
        }
    }
    if let Some(same_host) = wanted.same_host {
        let running = status["same_host"].as_str().unwrap_or("fast");
        if running != same_host.to_string() {
            return Err(Error::InvalidConfig(format!(
                "flatnetd for {} already runs with --same-host {running}: stop it to change that",
                wanted.state_dir.display()
            )));
        }
    }
    if listen != wanted.listen.to_string() || lighthouse != wanted.lighthouse.to_string() {
        return Err(Error::InvalidConfig(format!(
            "flatnetd for {} runs with endpoint {listen} and lighthouse {lighthouse}, but this \
             network wants {} and {}: give networks with other settings their own stateDir",
            wanted.state_dir.display(),
            wanted.listen,
            wanted.lighthouse
        )));
    }
    Ok(())
}

fn start_daemon(settings: &DaemonSettings) -> Result<()> {
    let binary = daemon_binary()?;
    let log_path = settings.state_dir.join("flatnetd.log");
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
        .arg("--state-dir")
        .arg(&settings.state_dir)
        .args(settings.lighthouse.daemon_args())
        .arg("--listen")
        .arg(settings.listen.to_string())
        .args(settings.poll_us.map(|us| format!("--poll-us={us}")))
        .args(settings.metrics.as_ref().map(|m| format!("--metrics={m}")))
        .args(
            settings
                .persistent_keepalive_s
                .map(|s| format!("--persistent-keepalive={s}")),
        )
        .args(settings.same_host.map(|s| format!("--same-host={s}")))
        .args(settings.workers.map(|n| format!("--workers={n}")))
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
        .map_err(|e| Error::DataPlane(format!("cannot start {}: {e}", binary.display())))?;
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
    Err(Error::DataPlane(format!(
        "flatnetd (pid {pid}) did not become ready: {tail}"
    )))
}

/// The daemon binary: `FLATNETD`, else next to the running plugin, else on the usual paths.
/// The plugins run as root and start what this names as root, so a `FLATNETD` anyone but
/// root could have written (the file or a directory above it) is refused.
pub fn daemon_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("FLATNETD") {
        let path = PathBuf::from(path);
        check_root_owned(&path)?;
        return Ok(path);
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

/// The file and every directory above it belong to root and are writable by nobody else.
fn check_root_owned(path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let absolute = match fs::canonicalize(path) {
        Ok(absolute) => absolute,
        // Nothing there to trust or distrust: starting it fails, as with no daemon at all.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// What a plugin acts on (an address taken: try the next; etcd away: "try again") survives
    /// the trip through the socket as the same error.
    #[test]
    fn failures_cross_the_socket_as_the_errors_they_were() {
        let cases = [
            Error::AddressInUse {
                ip: "10.0.0.2".parse().unwrap(),
                owner: "c1".into(),
            },
            Error::LighthouseUnavailable("etcd did not answer".into()),
            Error::InvalidRequest("10.0.9.2 is not in this host's blocks".into()),
        ];
        for error in cases {
            let line = encode_response(&Response::from_error(&error));
            let envelope: Envelope<Response> = serde_json::from_str(&line).unwrap();
            let back = envelope.body.into_error();
            assert_eq!(back.to_string(), error.to_string());
            assert_eq!(
                std::mem::discriminant(&back),
                std::mem::discriminant(&error)
            );
        }
        let entry = Entry {
            network: "n".into(),
            network_id: 9,
            ip: "10.0.0.3".parse().unwrap(),
            container_id: "c".into(),
            names: vec![],
            host: crate::lighthouse::HostInfo {
                endpoint: "192.0.2.1:4800".parse().unwrap(),
                public_key: String::new(),
            },
        };
        let line = encode_request(&Request::Register {
            entry: entry.clone(),
        });
        let request = decode_request(&line).unwrap();
        assert!(request.is_lighthouse_op());
        assert_eq!(request, Request::Register { entry });
    }

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
            check_root_owned(&binary).is_ok(),
            "root's own file in root's directory"
        );

        mode(dir.path(), 0o777).unwrap();
        let err = check_root_owned(&binary).unwrap_err().to_string();
        assert!(err.contains("not be writable by group or others"), "{err}");
        mode(dir.path(), 0o700).unwrap();

        mode(&binary, 0o775).unwrap();
        assert!(
            check_root_owned(&binary).is_err(),
            "a group-writable binary"
        );
        mode(&binary, 0o755).unwrap();

        std::os::unix::fs::chown(&binary, Some(65534), None).unwrap();
        assert!(check_root_owned(&binary).is_err(), "a binary nobody owns");
    }

    #[test]
    fn requests_round_trip_and_versions_are_checked() {
        let req = Request::Attach {
            network: "n".into(),
            container_id: "c".into(),
        };
        let line = encode_request(&req);
        assert!(
            line.contains("\"v\":1") && line.contains("\"op\":\"attach\""),
            "{line}"
        );
        assert_eq!(decode_request(&line), Ok(req));
        let future = line.replace("\"v\":1", "\"v\":99");
        assert!(decode_request(&future).unwrap_err().contains("version 99"));
        assert!(decode_request("{\"v\":1,\"op\":\"explode\"}").is_err());
        assert!(decode_request("not json").is_err());
    }
}
