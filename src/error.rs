//! One error type for the whole core, one variant per kind of failure a caller treats
//! differently. Front ends match on the variant to pick their protocol's answer (the CNI codes
//! in `cni-adapter/src/protocol.rs`; netavark's `{"error": ...}` carries the text). Failures of
//! a library keep it as their `source`, with a context saying what was being done.

use std::io;
use std::net::IpAddr;
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
    /// A recorded namespace path now names another namespace: the container is gone.
    #[error("{0} is not the namespace recorded at attach (its path was reused): not serving it")]
    NetnsReplaced(PathBuf),
    #[error("no free address left in {subnet} on network {network}")]
    AddressExhausted { network: String, subnet: String },
    #[error("address {ip} is already in use by container {owner}")]
    AddressInUse { ip: IpAddr, owner: String },
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
    /// A rootless user asked for what the operator did not grant them (`users`): the text
    /// names the rule.
    #[error("not permitted: {0}")]
    NotPermitted(String),
    #[error("interface check failed: {0}")]
    CheckFailed(String),
    /// No data plane can serve now (it cannot be started, did not become ready, or a dying
    /// one still holds the state directory): nothing was changed, the caller may try again.
    #[error("data plane: {0}")]
    DaemonUnavailable(String),
    /// `flatnetd run` on a state directory another daemon serves.
    #[error("data plane: another flatnetd already serves {0}")]
    DaemonAlreadyRunning(PathBuf),
    /// The daemon read the request and refused it, for a reason with no variant of its own.
    #[error("data plane: {0}")]
    Refused(String),
    /// The other end of the control socket answered something this side cannot read.
    #[error("control protocol: {0}")]
    Protocol(String),
    /// etcd unreachable or without quorum: nothing was changed, the caller may try again.
    #[error("lighthouse unavailable, try again: {0}")]
    LighthouseUnavailable(String),
    #[error("firewall: replacing nftables table inet {table}: {source}")]
    Firewall {
        table: String,
        #[source]
        source: nftables::helper::NftablesError,
    },
    #[error("netlink: {context}: {source}")]
    Netlink {
        context: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// A state file that is not what this Flatnet wrote (damaged, or from another version).
    #[error("{context}: {source}")]
    Json {
        context: String,
        #[source]
        source: serde_json::Error,
    },
    /// Key generation or randomness failed: the host cannot make keys.
    #[error("{context}: {source}")]
    Crypto {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A worker thread of the core panicked: a bug, reported instead of crashing the caller.
    #[error("internal error: {0}")]
    Internal(String),
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

    pub(crate) fn json(context: impl Into<String>, source: serde_json::Error) -> Self {
        Error::Json {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn crypto(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Crypto {
            context: context.into(),
            source: Box::new(source),
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
