//! One error type for the whole core. Front ends map each variant to their protocol's codes (CNI
//! error codes, netavark's `{"error": ...}`).

use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid network config: {0}")]
    InvalidConfig(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("network namespace {0} does not exist")]
    NetnsNotFound(PathBuf),
    #[error("no free address left in {subnet} on network {network}")]
    AddressExhausted { network: String, subnet: String },
    #[error("address {ip} is already in use by container {owner}")]
    AddressInUse { ip: Ipv4Addr, owner: String },
    #[error("host port {port} is already published by container {owner} ({held})")]
    PortInUse {
        port: String,
        owner: String,
        held: String,
    },
    #[error("container {container_id} is already attached to network {network}")]
    AlreadyAttached {
        container_id: String,
        network: String,
    },
    #[error("interface check failed: {0}")]
    CheckFailed(String),
    #[error("data plane: {0}")]
    DataPlane(String),
    /// The other end of the control socket answered something this side cannot read.
    #[error("control protocol: {0}")]
    Protocol(String),
    /// etcd unreachable or without quorum: nothing was changed, the caller may try again.
    #[error("lighthouse unavailable, try again: {0}")]
    LighthouseUnavailable(String),
    #[error("firewall: {0}")]
    Firewall(String),
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Adds a human context to I/O errors: `fs::read(p).context(|| format!("reading {p:?}"))?`.
pub(crate) trait IoContext<T> {
    fn context<C: Into<String>>(self, f: impl FnOnce() -> C) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context<C: Into<String>>(self, f: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| Error::io(f(), e))
    }
}
