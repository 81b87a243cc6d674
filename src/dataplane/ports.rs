//! The members this host serves: one TUN queue each, found by slot (epoll token), by Flatnet
//! address (delivery) and by container (attach/detach). A member is a container, or the host
//! itself on one network (its host member, which also answers to the gateway address).

use std::collections::HashMap;
use std::fs::File;
use std::net::Ipv4Addr;

use crate::control::status::MemberStats;
use crate::portmap::PortMapping;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Member {
    Container,
    /// The host's own interface on the network: trusted with any source address (it carries
    /// the host's replies, forwarded and published traffic), reached also at `aliases`.
    Host,
}

pub struct Port {
    pub network: String,
    pub tag: u32,
    pub container_id: String,
    pub ifname: String,
    pub address: Ipv4Addr,
    /// Further addresses delivered to this port (the host member's gateway address).
    pub aliases: Vec<Ipv4Addr>,
    pub member: Member,
    /// Host ports published to this container, for `flatnetd status`.
    pub published: Vec<PortMapping>,
    pub queue: File,
    pub stats: MemberStats,
}

impl Port {
    pub fn is_host(&self) -> bool {
        self.member == Member::Host
    }
}

#[derive(Default)]
pub struct Ports {
    slots: Vec<Option<Port>>,
    by_address: HashMap<(u32, Ipv4Addr), usize>,
    by_container: HashMap<(String, String), usize>,
}

impl Ports {
    pub fn insert(&mut self, port: Port) -> usize {
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .unwrap_or_else(|| {
                self.slots.push(None);
                self.slots.len() - 1
            });
        for address in std::iter::once(port.address).chain(port.aliases.iter().copied()) {
            self.by_address.insert((port.tag, address), slot);
        }
        self.by_container
            .insert((port.network.clone(), port.container_id.clone()), slot);
        self.slots[slot] = Some(port);
        slot
    }

    pub fn remove(&mut self, network: &str, container_id: &str) -> Option<Port> {
        let slot = self
            .by_container
            .remove(&(network.to_string(), container_id.to_string()))?;
        let port = self.slots[slot].take()?;
        for address in std::iter::once(port.address).chain(port.aliases.iter().copied()) {
            self.by_address.remove(&(port.tag, address));
        }
        // Keep the table from growing without bound after churn.
        while self.slots.last().is_some_and(Option::is_none) {
            self.slots.pop();
        }
        Some(port)
    }

    pub fn contains(&self, network: &str, container_id: &str) -> bool {
        self.by_container
            .contains_key(&(network.to_string(), container_id.to_string()))
    }

    /// The address of a container served here.
    pub fn address_of(&self, network: &str, container_id: &str) -> Option<Ipv4Addr> {
        let slot = self
            .by_container
            .get(&(network.to_string(), container_id.to_string()))?;
        self.get(*slot).map(|port| port.address)
    }

    pub fn get(&self, slot: usize) -> Option<&Port> {
        self.slots.get(slot).and_then(Option::as_ref)
    }

    pub fn get_mut(&mut self, slot: usize) -> Option<&mut Port> {
        self.slots.get_mut(slot).and_then(Option::as_mut)
    }

    pub fn slot_of(&self, tag: u32, address: Ipv4Addr) -> Option<usize> {
        self.by_address.get(&(tag, address)).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Port> {
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
