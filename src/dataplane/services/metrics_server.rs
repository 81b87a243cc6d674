//! The metrics endpoint (`--metrics`): off unless configured, on a loopback TCP address or a
//! Unix socket only. A thread answers `GET /metrics` with a status snapshot from the packet
//! thread, rendered by [`crate::metrics`]; anything else gets 404.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::eventfd::EventFd;

use crate::control::settings::MetricsAddress;
use crate::control::status::DaemonStatus;
use crate::control::{DataPlaneRequest, Reply};
use crate::dataplane::Command;
use crate::error::{Error, IoContext, Result};

/// How long one scrape may take to send its request and read the answer.
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
            // A client that connects and says nothing must not hold the endpoint for long.
            let served = match &listener {
                Listener::Tcp(l) => l.accept().and_then(|(s, _)| {
                    s.set_read_timeout(Some(CLIENT_TIMEOUT))?;
                    s.set_write_timeout(Some(CLIENT_TIMEOUT))?;
                    answer(s, &commands, &wake);
                    Ok(())
                }),
                Listener::Unix(l) => l.accept().and_then(|(s, _)| {
                    s.set_read_timeout(Some(CLIENT_TIMEOUT))?;
                    s.set_write_timeout(Some(CLIENT_TIMEOUT))?;
                    answer(s, &commands, &wake);
                    Ok(())
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

fn snapshot(commands: &SyncSender<Command>, wake: &EventFd) -> Option<Box<DaemonStatus>> {
    match super::control_server::ask(commands, wake, DataPlaneRequest::Status)? {
        Ok(Reply::Status(status)) => Some(status),
        _ => None,
    }
}
