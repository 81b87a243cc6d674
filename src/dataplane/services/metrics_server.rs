//! The metrics endpoint (`--metrics`): off unless configured, on a loopback TCP address or a
//! Unix socket only. A thread answers `GET /metrics` with a status snapshot from the packet
//! thread, rendered by [`crate::metrics`]; anything else gets 404.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::eventfd::EventFd;

use crate::control::settings::MetricsAddress;
use crate::control::status::DaemonStatus;
use crate::control::{DataPlaneRequest, Reply};
use crate::dataplane::Command;
use crate::error::{Error, IoContext, Result};

/// How long one scrape may take, in all, to send its request and read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Binds the endpoint (a Unix socket is root-only) and serves it from its own thread.
pub fn spawn(
    address: &MetricsAddress,
    commands: SyncSender<Command>,
    wake: Arc<EventFd>,
) -> Result<()> {
    let listener = match address {
        MetricsAddress::Tcp(at) => {
            Listener::Tcp(TcpListener::bind(at).context(|| format!("binding metrics on {at}"))?)
        }
        MetricsAddress::Unix(path) => {
            let _ = std::fs::remove_file(path);
            let listener = UnixListener::bind(path)
                .context(|| format!("binding metrics on {}", path.display()))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .context(|| format!("restricting {}", path.display()))?;
            Listener::Unix(listener)
        }
    };
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || loop {
            // A client that says nothing, or a byte at a time, must not hold the endpoint long.
            let served = match &listener {
                Listener::Tcp(l) => l.accept().map(|(s, _)| {
                    answer(Deadline::after(s, CLIENT_TIMEOUT), &commands, &wake);
                }),
                Listener::Unix(l) => l.accept().map(|(s, _)| {
                    answer(Deadline::after(s, CLIENT_TIMEOUT), &commands, &wake);
                }),
            };
            if let Err(e) = served {
                tracing::warn!("metrics endpoint: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .map_err(|e| Error::io("spawning the metrics thread", e))?;
    Ok(())
}

/// One HTTP/1.0-style exchange: read the request head, answer, close.
fn answer<S: Read + Write>(mut stream: S, commands: &SyncSender<Command>, wake: &EventFd) {
    let mut request_line = String::new();
    let mut head = BufReader::new((&mut stream).take(8 * 1024));
    if head.read_line(&mut request_line).is_err() {
        return;
    }
    // The rest of the head (headers) is read and ignored.
    let mut line = String::new();
    while head
        .read_line(&mut line)
        .is_ok_and(|n| n > 0 && line.trim() != "")
    {
        line.clear();
    }
    let mut words = request_line.split_whitespace();
    let (method, path) = (words.next(), words.next());
    let (status, content_type, body) = match (method, path) {
        (Some("GET"), Some("/metrics")) => match snapshot(commands, wake) {
            Some(status) => (
                "200 OK",
                crate::metrics::CONTENT_TYPE,
                crate::metrics::render(&status),
            ),
            None => (
                "503 Service Unavailable",
                "text/plain",
                "the data plane is stopping\n".into(),
            ),
        },
        _ => (
            "404 Not Found",
            "text/plain",
            "metrics are at GET /metrics\n".into(),
        ),
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// A stream whose reads and writes all end by one deadline: every call gets the time left as
/// its timeout, so a client trickling a byte at a time is cut off like a silent one.
struct Deadline<S> {
    stream: S,
    until: Instant,
}

/// The streams the endpoint serves: both can bound their next read and write.
trait Timeouts {
    fn set_timeouts(&self, left: Duration) -> std::io::Result<()>;
}

impl Timeouts for TcpStream {
    fn set_timeouts(&self, left: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(left))?;
        self.set_write_timeout(Some(left))
    }
}

impl Timeouts for UnixStream {
    fn set_timeouts(&self, left: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(left))?;
        self.set_write_timeout(Some(left))
    }
}

impl<S: Timeouts> Deadline<S> {
    fn after(stream: S, allowed: Duration) -> Self {
        Deadline {
            stream,
            until: Instant::now() + allowed,
        }
    }

    /// Bounds the next call by the time left; an error once there is none.
    fn arm(&self) -> std::io::Result<()> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        self.stream.set_timeouts(left)
    }
}

impl<S: Timeouts + Read> Read for Deadline<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.arm()?;
        self.stream.read(buf)
    }
}

impl<S: Timeouts + Write> Write for Deadline<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.arm()?;
        self.stream.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

fn snapshot(commands: &SyncSender<Command>, wake: &EventFd) -> Option<Box<DaemonStatus>> {
    match super::control_server::ask(commands, wake, DataPlaneRequest::Status)? {
        Ok(Reply::Status(status)) => Some(status),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that sends a byte every 50 ms never lets a per-read timeout fire; the deadline
    /// cuts it off all the same.
    #[test]
    fn a_trickling_client_is_cut_off_at_the_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let trickle = std::thread::spawn(move || {
            while client.write_all(b"G").is_ok() {
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let started = Instant::now();
        let mut head = BufReader::new(Deadline::after(server, Duration::from_millis(500)));
        let mut line = String::new();
        let error = head.read_line(&mut line).unwrap_err();
        let took = started.elapsed();
        assert!(
            matches!(error.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock),
            "{error}"
        );
        assert!(
            took >= Duration::from_millis(450) && took < Duration::from_secs(2),
            "cut off after {took:?}, not at the deadline"
        );
        drop(head);
        trickle.join().unwrap();
    }
}
