//! The lighthouse as a plugin sees it when its host's `flatnetd` holds the lighthouse (etcd):
//! every operation is a request on the control socket. The daemon keeps one authenticated
//! connection and the host's lease, so a short-lived plugin needs neither etcd credentials nor a
//! TLS handshake of its own.

use std::net::IpAddr;

use super::client::{call, is_running};
use super::protocol::{LighthouseRequest, Reply};
use crate::error::{Error, Result};
use crate::lighthouse::{Candidates, Entry, Feed, Lighthouse, NetworkId};
use crate::state::StateDir;

pub struct ViaDaemon {
    state_dir: StateDir,
}

impl ViaDaemon {
    pub fn new(state_dir: StateDir) -> Self {
        ViaDaemon { state_dir }
    }

    fn ask(&self, request: LighthouseRequest) -> Result<Reply> {
        call(&self.state_dir, request)
    }

    fn entries_of(&self, request: LighthouseRequest) -> Result<Vec<Entry>> {
        match self.ask(request)? {
            Reply::Entries(entries) => Ok(entries),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(reply: Reply) -> Error {
    Error::Protocol(format!(
        "flatnetd answered a lighthouse request with {reply:?}"
    ))
}

impl Lighthouse for ViaDaemon {
    fn network_id(&self, network: &str) -> Result<NetworkId> {
        let request = LighthouseRequest::NetworkId {
            network: network.to_string(),
        };
        match self.ask(request)? {
            Reply::NetworkId(id) => Ok(id),
            other => Err(unexpected(other)),
        }
    }

    fn register(&self, entry: &Entry) -> Result<()> {
        let request = LighthouseRequest::Register {
            entry: entry.clone(),
        };
        self.ask(request).map(drop)
    }

    /// Without a daemon there is nothing to do: the host's lease lapses and takes its
    /// entries along, and a daemon that starts again drops the entries nothing records.
    fn unregister(&self, network: &str, ip: IpAddr, container_id: &str) -> Result<()> {
        if !is_running(&self.state_dir) {
            return Ok(());
        }
        let request = LighthouseRequest::Unregister {
            network: network.to_string(),
            ip,
            container_id: container_id.to_string(),
        };
        self.ask(request).map(drop)
    }

    fn lookup(&self, network: &str, ip: IpAddr) -> Result<Option<Entry>> {
        let request = LighthouseRequest::Lookup {
            network: network.to_string(),
            ip,
        };
        Ok(self.entries_of(request)?.into_iter().next())
    }

    fn entries(&self, network: &str) -> Result<Vec<Entry>> {
        self.entries_of(LighthouseRequest::Entries {
            network: Some(network.to_string()),
        })
    }

    fn all_entries(&self) -> Result<Vec<Entry>> {
        self.entries_of(LighthouseRequest::Entries { network: None })
    }

    fn publish_candidates(&self, _: &Candidates) -> Result<()> {
        Err(Error::InvalidRequest(
            "only the daemon holding the lighthouse publishes its host's candidates".into(),
        ))
    }

    fn follow(&self) -> Result<Box<dyn Feed>> {
        Err(Error::InvalidRequest(
            "only the daemon holding the lighthouse follows it".into(),
        ))
    }
}
