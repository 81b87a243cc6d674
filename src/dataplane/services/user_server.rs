//! The daemon's end of the user socket (`--user-socket`): rootless plugins' requests, each
//! from a caller known by `SO_PEERCRED` and held to the limits before it is read. One thread
//! accepts; each connection gets a short thread of its own, as on the control socket.

use std::fs::{self, File};
use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    getsockopt, recvmsg, sockopt::PeerCredentials, ControlMessageOwned, MsgFlags,
};

use crate::control::Refusal;
use crate::error::{Error, IoContext, Result};
use crate::users::limits::Limits;
use crate::users::protocol::{decode_user_request, encode_user_response, UserReply};
use crate::users::{pins, Caller, UserService};

const CLIENT_DEADLINE: Duration = Duration::from_secs(2);
/// Connections served at once, all users together.
const MAX_CLIENTS: usize = 64;
/// Enough for any request line's first read (the namespace rides on it).
const FIRST_READ: usize = 64 * 1024;

/// Binds the socket where any user can connect: who they are is checked per request.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).context(|| format!("creating {}", dir.display()))?;
    }
    let _ = fs::remove_file(path);
    let listener = UnixListener::bind(path).context(|| format!("binding {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o666))
        .context(|| format!("opening {} to users", path.display()))?;
    Ok(listener)
}

/// Releases pins no record needs, then serves for good (the daemon's exit ends it), and
/// takes away abandoned containers from then on.
pub fn spawn(listener: UnixListener, service: UserService, socket: PathBuf) -> Result<()> {
    // A pin that cannot be released costs a namespace, not the daemon: it still starts.
    if let Err(e) = pins::sweep(service.state_dir()) {
        tracing::warn!("releasing namespaces no container records: {e}");
    }
    let server = Arc::new(Server {
        service,
        limits: Arc::new(Limits::default()),
        clients: Default::default(),
    });
    let reclaimer = server.clone();
    std::thread::Builder::new()
        .name("user-reclaim".into())
        .spawn(move || reclaimer.reclaim_loop())
        .context(|| "spawning the abandoned containers' thread")?;
    std::thread::Builder::new()
        .name("user-socket".into())
        .spawn(move || server.accept_loop(listener, socket))
        .map(drop)
        .context(|| "spawning the user socket's thread")
}

struct Server {
    service: UserService,
    limits: Arc<Limits>,
    clients: std::sync::atomic::AtomicUsize,
}

impl Server {
    fn accept_loop(self: Arc<Self>, listener: UnixListener, socket: PathBuf) {
        use std::sync::atomic::Ordering::SeqCst;
        for stream in listener.incoming() {
            let Ok(stream) = stream else {
                tracing::warn!("user socket {}: accept failed", socket.display());
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            if self.clients.fetch_add(1, SeqCst) >= MAX_CLIENTS {
                self.clients.fetch_sub(1, SeqCst);
                continue;
            }
            let server = self.clone();
            let spawned = std::thread::Builder::new()
                .name("user-client".into())
                .spawn(move || {
                    server.serve(stream);
                    server.clients.fetch_sub(1, SeqCst);
                });
            if spawned.is_err() {
                self.clients.fetch_sub(1, SeqCst);
            }
        }
    }

    /// Looks for abandoned containers a few times per grace, so that one is taken away at
    /// most a quarter of the grace late.
    fn reclaim_loop(&self) {
        let grace = self.service.grace();
        let every = (grace / 4).clamp(Duration::from_millis(250), Duration::from_secs(30));
        loop {
            if let Err(e) = self.service.reclaim_abandoned() {
                tracing::warn!("taking away abandoned rootless containers: {e}");
            }
            std::thread::sleep(every);
        }
    }

    fn serve(&self, stream: UnixStream) {
        let response = self.answer(&stream).map_err(|e| Refusal::from_error(&e));
        if let Err(refusal) = &response {
            tracing::info!("user socket: refused: {}", refusal.message);
        }
        let mut writer = &stream;
        let _ = stream.set_write_timeout(Some(CLIENT_DEADLINE));
        let _ = writer.write_all(encode_user_response(&response).as_bytes());
    }

    fn answer(&self, stream: &UnixStream) -> Result<UserReply> {
        let creds = getsockopt(stream, PeerCredentials)
            .map_err(|e| Error::io("reading the caller's credentials", e.into()))?;
        let per_second = self
            .service
            .grants()
            .map_or(1, |grants| grants.requests_per_second);
        let _admitted = self.limits.admit(creds.uid(), per_second)?;
        let (line, netns) = receive(stream)?;
        let request =
            decode_user_request(&line).map_err(|e| Error::InvalidRequest(e.to_string()))?;
        let caller = Caller::lookup(creds.uid());
        tracing::debug!(
            "user socket: {} (uid {}): {request:?}",
            caller.name,
            caller.uid
        );
        self.service.answer(&caller, request, netns)
    }
}

/// The request line and the descriptor that came with it, if one did (more are closed).
fn receive(stream: &UnixStream) -> Result<(String, Option<File>)> {
    stream
        .set_read_timeout(Some(CLIENT_DEADLINE))
        .context(|| "setting the user socket's timeout")?;
    let mut first = vec![0u8; FIRST_READ];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let (read, fds) = {
        let mut iov = [IoSliceMut::new(&mut first)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| Error::io("reading a request", e.into()))?;
        let mut fds = Vec::new();
        for cmsg in msg
            .cmsgs()
            .map_err(|e| Error::io("reading a request", e.into()))?
        {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                // SAFETY: descriptors the kernel just installed for us; owned from here on.
                fds.extend(
                    received
                        .into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        (msg.bytes, fds)
    };
    first.truncate(read);
    let line = read_rest_of_line(first, stream)?;
    let netns = fds.into_iter().next().map(File::from);
    Ok((line, netns))
}

/// Reads on until the line ends, within [`CLIENT_DEADLINE`] however slowly it comes.
fn read_rest_of_line(mut line: Vec<u8>, mut stream: &UnixStream) -> Result<String> {
    let deadline = Instant::now() + CLIENT_DEADLINE;
    let mut chunk = [0u8; 4096];
    while !line.contains(&b'\n') && line.len() < FIRST_READ {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::InvalidRequest(
                "the request did not arrive in time".into(),
            ));
        }
        stream
            .set_read_timeout(Some(left))
            .context(|| "setting the user socket's timeout")?;
        match stream.read(&mut chunk).context(|| "reading a request")? {
            0 => break,
            n => line.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8(line).map_err(|_| Error::InvalidRequest("the request is not UTF-8".into()))
}
