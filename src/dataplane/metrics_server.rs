//! The metrics endpoint (`--metrics`): off unless configured, on a loopback TCP address or a
//! Unix socket only. A thread answers `GET /metrics` with a status snapshot from the packet
//! thread, rendered by [`crate::metrics`]; anything else gets 404.

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::eventfd::EventFd;
use serde::{Deserialize, Serialize};

use super::Command;
use crate::control::Request;
use crate::error::{Error, IoContext, Result};

/// How long one scrape may take to send its request and read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where metrics are served: `127.0.0.1:9808` (loopback only) or `unix:/run/flatnet/metrics.sock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum MetricsAddress {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for MetricsAddress {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            return match path.starts_with('/') {
                true => Ok(MetricsAddress::Unix(PathBuf::from(path))),
                false => Err(format!("metrics socket {path:?} is not an absolute path")),
            };
        }
        let address: SocketAddr = text
            .parse()
            .map_err(|_| format!("metrics address {text:?} is neither ip:port nor unix:/path"))?;
        if !address.ip().is_loopback() {
            return Err(format!(
                "metrics address {address} is not a loopback address: flatnetd serves metrics \
                 on loopback or a Unix socket only (scrape through a local agent or proxy)"
            ));
        }
        Ok(MetricsAddress::Tcp(address))
    }
}

impl TryFrom<String> for MetricsAddress {
    type Error = String;
    fn try_from(text: String) -> std::result::Result<Self, String> {
        text.parse()
    }
}

impl From<MetricsAddress> for String {
    fn from(address: MetricsAddress) -> String {
        address.to_string()
    }
}

impl fmt::Display for MetricsAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricsAddress::Tcp(address) => write!(f, "{address}"),
            MetricsAddress::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

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

fn snapshot(commands: &SyncSender<Command>, wake: &EventFd) -> Option<serde_json::Value> {
    super::control_server::ask(commands, wake, Request::Status)?.status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_unix_sockets_are_accepted_and_other_addresses_refused() {
        assert_eq!(
            "127.0.0.1:9808".parse::<MetricsAddress>(),
            Ok(MetricsAddress::Tcp("127.0.0.1:9808".parse().unwrap()))
        );
        assert_eq!(
            "unix:/run/flatnet/metrics.sock".parse::<MetricsAddress>(),
            Ok(MetricsAddress::Unix("/run/flatnet/metrics.sock".into()))
        );
        let refused = "0.0.0.0:9808".parse::<MetricsAddress>().unwrap_err();
        assert!(refused.contains("loopback"), "{refused}");
        assert!("unix:relative".parse::<MetricsAddress>().is_err());
        assert!("9808".parse::<MetricsAddress>().is_err());
        let round_trip: MetricsAddress = serde_json::from_str(
            &serde_json::to_string(&MetricsAddress::Unix("/m".into())).unwrap(),
        )
        .unwrap();
        assert_eq!(round_trip, MetricsAddress::Unix("/m".into()));
    }
}
