//! A host without a data plane: the lighthouse follower and route table `flatnetd` runs,
//! without TUN devices, sockets or tunnels. Simulations at scale run hundreds of these in
//! one process beside real daemons (`daemon/tests/etcd_scale.rs`), so that etcd sees every
//! host's reads, watches and writes exactly as flatnetd makes them.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::follower::Follower;
use super::routes::{Route, RouteTable};
use crate::cert::TrustBundle;
use crate::error::{Error, Result};
use crate::lighthouse::{FeedHealth, Lighthouse, NetworkId};

pub struct LightHost {
    follower: Follower,
    table: RouteTable,
    wake: Arc<EventFd>,
    served: BTreeSet<String>,
}

impl LightHost {
    /// Follows `lighthouse` as a daemon trusting `trust` does, serving no network yet.
    pub fn start(lighthouse: Arc<dyn Lighthouse>, trust: TrustBundle) -> Result<Self> {
        let wake = Arc::new(
            EventFd::from_flags(EfdFlags::EFD_NONBLOCK)
                .map_err(|e| Error::io("creating eventfd", e.into()))?,
        );
        let follower = Follower::spawn(lighthouse, BTreeSet::new(), wake.clone(), Duration::ZERO)?;
        Ok(LightHost {
            follower,
            table: RouteTable::trusting(trust),
            wake,
            served: BTreeSet::new(),
        })
    }

    /// Serves `network` from now on, as a daemon does when its first member there attaches.
    pub fn serve(&mut self, network_id: NetworkId, network: &str, subnet: IpNet) {
        self.table.serve_network(network_id, network, vec![subnet]);
        self.served.insert(network.to_string());
        self.follower.follow_networks(self.served.clone());
    }

    /// Waits up to `within` for the lighthouse to report changes and applies every change
    /// that arrived; returns how many.
    pub fn settle(&mut self, within: Duration) -> usize {
        let timeout = PollTimeout::try_from(within).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(self.wake.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, timeout);
        let _ = self.wake.read();
        let changes: Vec<_> = self.follower.pending().collect();
        let applied = changes.len();
        for change in changes {
            self.table.apply(change);
        }
        applied
    }

    pub fn route(&self, network_id: NetworkId, ip: IpAddr) -> Option<Route> {
        self.table.route(network_id, ip)
    }

    /// Routes held, and routes withdrawn since the start.
    pub fn routes(&self) -> (usize, u64) {
        (self.table.len(), self.table.withdrawn())
    }

    pub fn health(&self) -> FeedHealth {
        self.follower.health()
    }
}
