//! The TUN queues this host serves, one per member: found by slot (its epoll token), by Flatnet
//! address (delivery) and by container (attach/detach). A member is a container, or the host
//! itself on one network (its host member, which also answers to the gateway address).

use std::collections::HashMap;
use std::fs::File;
use std::net::IpAddr;

use crate::control::status::MemberStats;
use crate::lighthouse::NetworkId;
use crate::portmap::PortMapping;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueOwner {
    Container,
    /// The host's own interface on the network: trusted with any source address (it carries
    /// the host's replies, forwarded and published traffic), reached also at `aliases`.
    Host,
}

pub struct Queue {
    pub network: String,
    pub network_id: NetworkId,
    pub container_id: String,
    pub ifname: String,
    /// The member's own addresses, one per subnet: the sources a container may send from.
    pub addresses: Vec<IpAddr>,
    /// Further addresses delivered to this queue (the host member's gateway addresses).
    pub aliases: Vec<IpAddr>,
    pub owner: QueueOwner,
    /// Host ports published to this container, for `flatnetd status`.
    pub published: Vec<PortMapping>,
    pub device: File,
    pub stats: MemberStats,
}

impl Queue {
    pub fn is_host(&self) -> bool {
        self.owner == QueueOwner::Host
    }
}

#[derive(Default)]
pub struct Queues {
    slots: Vec<Option<Queue>>,
    /// Looked up for every packet delivered, with addresses this host serves: a fast hasher.
    by_address: foldhash::HashMap<(u32, IpAddr), usize>,
    by_container: HashMap<(String, String), usize>,
}

impl Queues {
    pub fn insert(&mut self, queue: Queue) -> usize {
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .unwrap_or_else(|| {
                self.slots.push(None);
                self.slots.len() - 1
            });
        for &address in queue.addresses.iter().chain(&queue.aliases) {
            self.by_address.insert((queue.network_id, address), slot);
        }
        self.by_container
            .insert((queue.network.clone(), queue.container_id.clone()), slot);
        self.slots[slot] = Some(queue);
        slot
    }

    pub fn remove(&mut self, network: &str, container_id: &str) -> Option<Queue> {
        let slot = self
            .by_container
            .remove(&(network.to_string(), container_id.to_string()))?;
        let queue = self.slots[slot].take()?;
        for address in queue.addresses.iter().chain(&queue.aliases) {
            self.by_address.remove(&(queue.network_id, *address));
        }
        // Keep the table from growing without bound after churn.
        while self.slots.last().is_some_and(Option::is_none) {
            self.slots.pop();
        }
        Some(queue)
    }

    pub fn contains(&self, network: &str, container_id: &str) -> bool {
        self.by_container
            .contains_key(&(network.to_string(), container_id.to_string()))
    }

    /// The addresses of a container served here.
    pub fn addresses_of(&self, network: &str, container_id: &str) -> Option<Vec<IpAddr>> {
        let slot = self
            .by_container
            .get(&(network.to_string(), container_id.to_string()))?;
        self.get(*slot).map(|queue| queue.addresses.clone())
    }

    pub fn get(&self, slot: usize) -> Option<&Queue> {
        self.slots.get(slot).and_then(Option::as_ref)
    }

    pub fn get_mut(&mut self, slot: usize) -> Option<&mut Queue> {
        self.slots.get_mut(slot).and_then(Option::as_mut)
    }

    pub fn slot_of(&self, network_id: NetworkId, address: IpAddr) -> Option<usize> {
        self.by_address.get(&(network_id, address)).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Queue> {
        self.slots.iter().flatten()
    }

    /// How many containers (not host members) are served.
    pub fn containers(&self) -> usize {
        self.iter().filter(|p| !p.is_host()).count()
    }

    /// Does any container of this network remain?
    pub fn network_has_containers(&self, network: &str) -> bool {
        self.iter().any(|p| !p.is_host() && p.network == network)
    }
}
