//! The lighthouse as a plugin sees it when its host's `flatnetd` holds the lighthouse (etcd):
//! every operation is a request on the control socket. The daemon keeps one authenticated
//! connection and the host's lease, so a short-lived plugin needs neither etcd credentials nor a
//! TLS handshake of its own.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::{Entry, Feed, Lighthouse, NetworkId};
use crate::control::{self, Request};
use crate::error::{Error, Result};

pub struct ViaDaemon {
    state_dir: PathBuf,
}

impl ViaDaemon {
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        ViaDaemon {
            state_dir: state_dir.into(),
        }
    }

    fn entries_of(&self, request: &Request) -> Result<Vec<Entry>> {
        let response = control::call(&self.state_dir, request)?;
        Ok(response.entries.unwrap_or_default())
    }
}

impl Lighthouse for ViaDaemon {
    fn network_id(&self, network: &str) -> Result<NetworkId> {
        let request = Request::NetworkId {
            network: network.to_string(),
        };
        control::call(&self.state_dir, &request)?
            .network_id
            .ok_or_else(|| Error::DataPlane("the daemon answered without an identifier".into()))
    }

    fn register(&self, entry: &Entry) -> Result<()> {
        let request = Request::Register {
            entry: entry.clone(),
        };
        control::call(&self.state_dir, &request).map(drop)
    }

    /// Without a daemon there is nothing to do: the host's lease lapses and takes its
    /// entries along, and a daemon that starts again drops the entries nothing records.
    fn unregister(&self, network: &str, ip: Ipv4Addr, container_id: &str) -> Result<()> {
        if !control::is_running(&self.state_dir) {
            return Ok(());
        }
        let request = Request::Unregister {
            network: network.to_string(),
            ip,
            container_id: container_id.to_string(),
        };
        control::call(&self.state_dir, &request).map(drop)
    }

    fn lookup(&self, network: &str, ip: Ipv4Addr) -> Result<Option<Entry>> {
        let request = Request::Lookup {
            network: network.to_string(),
            ip,
        };
        Ok(self.entries_of(&request)?.into_iter().next())
    }

    fn entries(&self, network: &str) -> Result<Vec<Entry>> {
        self.entries_of(&Request::Entries {
            network: Some(network.to_string()),
        })
    }

    fn all_entries(&self) -> Result<Vec<Entry>> {
        self.entries_of(&Request::Entries { network: None })
    }

    fn follow(&self) -> Result<Box<dyn Feed>> {
        Err(Error::InvalidRequest(
            "only the daemon holding the lighthouse follows it".into(),
        ))
    }
}
