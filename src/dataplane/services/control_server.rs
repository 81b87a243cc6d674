//! The daemon's end of the control socket: a thread that accepts connections and one short
//! thread per connection that checks who is calling, decodes one request, hands it to the
//! data-plane thread and writes back the answer.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::eventfd::EventFd;
use nix::sys::socket::{getsockopt, shutdown, sockopt::PeerCredentials, Shutdown};
use nix::sys::stat::{umask, Mode};

use crate::control::protocol::{decode_request, encode_response};
use crate::control::{DataPlaneRequest, LighthouseRequest, Refusal, Reply, Request, Response};
use crate::dataplane::Command;
use crate::error::{IoContext, Result};
use crate::lighthouse::{Entry, HostInfo, Lighthouse};
use crate::state::StateDir;

const MAX_REQUEST: u64 = 64 * 1024;
/// A client has this long to send its request and take the answer, however it trickles:
/// one that connects and sends nothing costs a thread for this long, and blocks nobody.
const CLIENT_DEADLINE: Duration = Duration::from_secs(2);
/// Connections served at once; more are closed at once (requests are short).
const MAX_CLIENTS: usize = 64;

/// Binds the socket, root-only from its first moment: created under umask 0177 rather than
/// restricted after the bind. A leftover socket file is stale: the daemon lock is ours.
pub fn bind(state_dir: &StateDir) -> Result<UnixListener> {
    let path = state_dir.control_socket();
    let _ = fs::remove_file(&path);
    // The umask is per process; the daemon creates no other file while it starts.
    let previous = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(&path);
    umask(previous);
    bound.context(|| format!("binding {}", path.display()))
}

/// Serves requests until one asks for shutdown; join the handle to know its answer was sent.
pub fn spawn(
    listener: UnixListener,
    commands: SyncSender<Command>,
    wake: Arc<EventFd>,
    lighthouse: Arc<dyn Lighthouse>,
    host: HostInfo,
) -> JoinHandle<()> {
    let handlers = Handlers {
        commands,
        wake,
        lighthouse,
        host,
    };
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || accept_loop(Arc::new(listener), Arc::new(handlers)))
        .expect("spawning the control thread")
}

/// Where requests go: the packet thread, or the lighthouse for lighthouse operations (which
/// may wait on etcd, and must not stall packets meanwhile).
struct Handlers {
    commands: SyncSender<Command>,
    wake: Arc<EventFd>,
    lighthouse: Arc<dyn Lighthouse>,
    /// This host's endpoint and key: what every entry registered through it publishes.
    host: HostInfo,
}

impl Handlers {
    fn answer(&self, request: Request) -> Response {
        match request {
            Request::DataPlane(request) => ask(&self.commands, &self.wake, request)
                .unwrap_or_else(|| Err(Refusal::new("the data plane stopped"))),
            Request::Lighthouse(request) => self
                .answer_from_lighthouse(request)
                .map_err(|e| Refusal::from_error(&e)),
        }
    }

    fn answer_from_lighthouse(&self, request: LighthouseRequest) -> crate::Result<Reply> {
        let lighthouse = self.lighthouse.as_ref();
        match request {
            LighthouseRequest::NetworkId { network } => {
                lighthouse.network_id(&network).map(Reply::NetworkId)
            }
            LighthouseRequest::Register { entry } => {
                let entry = Entry {
                    host: self.host.clone(),
                    ..entry
                };
                lighthouse.register(&entry).map(|()| Reply::Done)
            }
            LighthouseRequest::Unregister {
                network,
                ip,
                container_id,
            } => lighthouse
                .unregister(&network, ip, &container_id)
                .map(|()| Reply::Done),
            LighthouseRequest::Lookup { network, ip } => lighthouse
                .lookup(&network, ip)
                .map(|entry| Reply::Entries(entry.into_iter().collect())),
            LighthouseRequest::Entries { network: Some(n) } => {
                lighthouse.entries(&n).map(Reply::Entries)
            }
            LighthouseRequest::Entries { network: None } => {
                lighthouse.all_entries().map(Reply::Entries)
            }
        }
    }
}

fn accept_loop(listener: Arc<UnixListener>, handlers: Arc<Handlers>) {
    let clients = Arc::new(AtomicUsize::new(0));
    let stopping = Arc::new(AtomicBool::new(false));
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(_) if stopping.load(Ordering::SeqCst) => break,
            Err(e) => {
                tracing::warn!("control socket: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
            clients.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let client = Client {
            handlers: handlers.clone(),
            clients: clients.clone(),
            stopping: stopping.clone(),
            listener: listener.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name("control-client".into())
            .spawn(move || client.serve(stream));
        if spawned.is_err() {
            clients.fetch_sub(1, Ordering::SeqCst);
        }
    }
    // The answer to the shutdown request is being written: wait for it.
    while clients.load(Ordering::SeqCst) > 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What a connection's thread shares with the accepting one.
struct Client {
    handlers: Arc<Handlers>,
    clients: Arc<AtomicUsize>,
    stopping: Arc<AtomicBool>,
    listener: Arc<UnixListener>,
}

impl Client {
    fn serve(self, stream: UnixStream) {
        if serve(stream, &self.handlers) == Served::Shutdown {
            // Wake the accepting thread out of accept() for good.
            self.stopping.store(true, Ordering::SeqCst);
            let _ = shutdown(self.listener.as_raw_fd(), Shutdown::Both);
        }
        self.clients.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(PartialEq)]
enum Served {
    Request,
    Shutdown,
}

fn serve(stream: UnixStream, handlers: &Handlers) -> Served {
    let Ok(mut writer) = stream.try_clone() else {
        return Served::Request;
    };
    let caller = check_caller(&stream).inspect_err(|refusal| {
        tracing::warn!("control socket: {refusal}");
    });
    // The request is read even from a caller about to be refused: closing on unread bytes
    // would make its write fail (EPIPE) before it could read why.
    let Some(line) = read_request(stream) else {
        return Served::Request;
    };
    let mut served = Served::Request;
    let decoded = decode_request(&line).map_err(|e| e.to_string());
    let response = match caller.and(decoded) {
        Ok(request) => {
            if request == Request::DataPlane(DataPlaneRequest::Shutdown) {
                served = Served::Shutdown;
            }
            handlers.answer(request)
        }
        Err(msg) => Err(Refusal::new(msg)),
    };
    let _ = writer.set_write_timeout(Some(CLIENT_DEADLINE));
    let _ = writer.write_all(encode_response(&response).as_bytes());
    served
}

/// Only root, or the user the daemon runs as, may give it orders. The socket's directory
/// already keeps others out; this holds even if a descriptor is passed on.
fn check_caller(stream: &UnixStream) -> std::result::Result<(), String> {
    let creds = getsockopt(stream, PeerCredentials)
        .map_err(|e| format!("reading the caller's credentials: {e}"))?;
    let own = nix::unistd::geteuid().as_raw();
    if creds.uid() == 0 || creds.uid() == own {
        Ok(())
    } else {
        Err(format!(
            "uid {} (pid {}) is not allowed to use the control socket",
            creds.uid(),
            creds.pid()
        ))
    }
}

/// One request line, read within [`CLIENT_DEADLINE`] however slowly it comes.
fn read_request(stream: UnixStream) -> Option<String> {
    let deadline = Instant::now() + CLIENT_DEADLINE;
    let mut reader = BufReader::new(DeadlineReader { stream, deadline }).take(MAX_REQUEST);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    Some(line)
}

/// Reads that fail once the deadline has passed: a per-read timeout alone would let a client
/// that sends a byte a second hold its thread for a day.
struct DeadlineReader {
    stream: UnixStream,
    deadline: Instant,
}

impl Read for DeadlineReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

/// Hands a request to the packet thread and waits for its answer; `None` once it has stopped.
/// Both the control socket and the metrics endpoint ask this way.
pub(super) fn ask(
    commands: &SyncSender<Command>,
    wake: &EventFd,
    request: DataPlaneRequest,
) -> Option<Response> {
    let (reply_tx, reply_rx) = std::sync::mpsc::sync_channel(1);
    commands.send((request, reply_tx)).ok()?;
    let _ = wake.write(1);
    reply_rx.recv().ok()
}
