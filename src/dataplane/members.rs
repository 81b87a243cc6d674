//! Whom the daemon serves: containers (a queue on their TUN device, opened inside their
//! namespace) and, for each network with containers here, the host member (a queue on the
//! host-side device the plugin created; see `crate::host_member`). A network's host member is
//! served from its first container's attach until its last container leaves.

use std::collections::HashMap;
use std::os::fd::AsFd;

use ipnet::IpNet;

use nix::sys::epoll::{EpollEvent, EpollFlags};

use super::queues::{Queue, QueueOwner};
use super::{set_nonblocking, Daemon, TOKEN_FIRST_PORT};
use crate::attachment::Attachment;
use crate::control::status::NetworkStatus;
use crate::error::{Error, Result};
use crate::host_member::HostMember;
use crate::lighthouse::NetworkId;
use crate::netns::NetworkNamespace;
use crate::tun;

/// A network with members on this host.
pub struct LocalNetwork {
    pub member: HostMember,
    /// The host member's queue; `None` if its device could not be opened (containers still
    /// reach each other; the host, egress and DNS forwarding do not).
    pub host_slot: Option<usize>,
}

#[derive(Default)]
pub struct LocalNetworks(HashMap<NetworkId, LocalNetwork>);

impl LocalNetworks {
    pub fn get(&self, network_id: NetworkId) -> Option<&LocalNetwork> {
        self.0.get(&network_id)
    }

    fn remove_named(&mut self, network: &str) -> Option<LocalNetwork> {
        let network_id = *self
            .0
            .iter()
            .find(|(_, local)| local.member.network == network)?
            .0;
        self.0.remove(&network_id)
    }

    pub fn status(&self) -> Vec<NetworkStatus> {
        self.0
            .iter()
            .map(|(id, n)| {
                let m = &n.member;
                NetworkStatus {
                    network: m.network.clone(),
                    id: format!("{id:08x}"),
                    host_member: m.ifname.clone(),
                    addresses: m.addresses.clone(),
                    gateways: m.gateways.clone(),
                    subnets: m.subnets.clone(),
                    internal: m.internal,
                    ingress_filter: m.ingress_filter,
                    dns_upstreams: m.dns_upstreams.clone(),
                    served: n.host_slot.is_some(),
                }
            })
            .collect()
    }
}

impl Daemon {
    /// Opens a queue on the container's TUN device (inside its namespace) and serves it, and
    /// the network's host member with it.
    pub(super) fn attach(&mut self, record: &Attachment) -> Result<()> {
        if self.queues.contains(&record.network, &record.container_id) {
            self.detach(&record.network, &record.container_id);
        }
        let netns = NetworkNamespace::open_recorded(&record.netns, record.netns_id)?;
        let device = netns.run_inside(|| tun::open_offload_queue(&record.ifname))?;
        crate::killpoint::here("daemon.attach");
        self.serve(Queue {
            network: record.network.clone(),
            network_id: record.wire_network_id(),
            container_id: record.container_id.clone(),
            ifname: record.ifname.clone(),
            addresses: record.ips().collect(),
            aliases: Vec::new(),
            owner: QueueOwner::Container,
            published: record.ports.clone(),
            device,
            stats: Default::default(),
        })?;
        if let Err(e) = self.loopback_ports.open(record) {
            self.unserve(&record.network, &record.container_id);
            return Err(e);
        }
        let subnets = record.addresses.iter().map(IpNet::trunc).collect();
        self.routes
            .serve_network(record.wire_network_id(), &record.network, subnets);
        self.serve_host_member(&record.network, record.wire_network_id());
        // Registered a moment ago by the plugin: known here before the feed brings it back.
        for ip in record.ips() {
            let own = self.own_entry(
                &record.network,
                record.wire_network_id(),
                ip,
                &record.container_id,
                record.names.clone(),
            );
            self.routes.put(own);
        }
        self.follow_served_networks();
        tracing::info!(
            "attached {} on {} at {:?}",
            record.container_id,
            record.network,
            record.addresses
        );
        Ok(())
    }

    pub(super) fn detach(&mut self, network: &str, container_id: &str) {
        if let Some(addresses) = self.queues.addresses_of(network, container_id) {
            tracing::info!("detached {container_id} from {network}");
            let own = self.own_name.clone();
            for address in addresses {
                self.routes.delete(&own, network, address);
            }
        }
        self.unserve(network, container_id);
        self.loopback_ports.close(network, container_id);
        if !self.queues.network_has_containers(network) {
            if let Some(local) = self.networks.remove_named(network) {
                self.unserve(network, &local.member.id);
            }
        }
        self.follow_served_networks();
        if self.queues.containers() == 0 {
            // Nothing here to send or receive for: keep no keys around.
            self.tunnels.close_all();
        }
    }

    /// The lighthouse's entries are followed for the networks with members here only.
    fn follow_served_networks(&mut self) {
        let served = self.queues.iter().map(|q| q.network.clone()).collect();
        self.follower.follow_networks(served);
    }

    /// A queue whose device vanished (namespace destroyed without a detach, or a host member
    /// removed while we served it).
    pub(super) fn drop_dead_port(&mut self, slot: usize) {
        let Some(queue) = self.queues.get(slot) else {
            return;
        };
        let (network, network_id, id, host) = (
            queue.network.clone(),
            queue.network_id,
            queue.container_id.clone(),
            queue.is_host(),
        );
        tracing::info!("{id} on {network} is gone; dropping its queue");
        if host {
            self.unserve(&network, &id);
            self.networks.0.remove(&network_id);
            self.follow_served_networks();
        } else {
            self.detach(&network, &id);
        }
    }

    /// Serves the network's host member if it has one and it is not served yet.
    fn serve_host_member(&mut self, network: &str, network_id: NetworkId) {
        if self.networks.0.contains_key(&network_id) {
            return;
        }
        let dirs = self.config.state_dir.network(network);
        let member = match HostMember::load(&dirs) {
            Ok(Some(member)) => member,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!("reading the host member of {network}: {e}");
                return;
            }
        };
        let host_slot = tun::open_offload_queue(&member.ifname)
            .and_then(|device| {
                self.serve(Queue {
                    network: member.network.clone(),
                    network_id,
                    container_id: member.id.clone(),
                    ifname: member.ifname.clone(),
                    addresses: member.addresses.clone(),
                    aliases: member.gateways.clone(),
                    owner: QueueOwner::Host,
                    published: Vec::new(),
                    device,
                    stats: Default::default(),
                })
            })
            .map_err(|e| tracing::warn!("serving the host member of {network}: {e}"))
            .ok();
        self.networks
            .0
            .insert(network_id, LocalNetwork { member, host_slot });
    }

    /// Registers a member's queue with epoll and the queue table.
    fn serve(&mut self, queue: Queue) -> Result<usize> {
        set_nonblocking(&queue.device)?;
        let (network, id) = (queue.network.clone(), queue.container_id.clone());
        let slot = self.queues.insert(queue);
        let queue = &self.queues.get(slot).expect("just inserted").device;
        let event = EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_FIRST_PORT + slot as u64);
        if let Err(e) = self.epoll.add(queue.as_fd(), event) {
            self.queues.remove(&network, &id);
            return Err(Error::io("registering TUN queue", e.into()));
        }
        Ok(slot)
    }

    fn unserve(&mut self, network: &str, id: &str) {
        if let Some(queue) = self.queues.remove(network, id) {
            let _ = self.epoll.delete(queue.device.as_fd());
        }
    }
}
