//! `IPAddressManager`: hands out unique Flatnet addresses from a network's subnet.
//!
//! Policy only (which address, which are never given out, what a static request may take);
//! the leases themselves live in a [`LeaseStore`].

pub mod store;

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::error::{Error, Result};
pub use store::{DirLeaseStore, Lease, LeaseStore};

pub struct IpAddressManager<S: LeaseStore> {
    network: String,
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    /// The parts of the subnet this host may hand out: all of it, or the blocks its
    /// certificate grants (hosts that share a network then never collide).
    pool: Vec<Ipv4Net>,
    store: S,
}

impl<S: LeaseStore> IpAddressManager<S> {
    pub fn new(network: &str, subnet: Ipv4Net, gateway: Ipv4Addr, store: S) -> Self {
        IpAddressManager {
            network: network.to_string(),
            subnet,
            gateway,
            pool: vec![subnet],
            store,
        }
    }

    /// Hands out addresses from these blocks of the subnet only.
    pub fn with_pool(mut self, pool: Vec<Ipv4Net>) -> Self {
        self.pool = pool;
        self
    }

    /// Reserves an address for the container: `requested` if given (Podman's `--ip`, CNI_ARGS
    /// IP=, netavark static_ips), else the next free one after the last reservation, so a
    /// just-released address is not reused at once. A container that already holds an address
    /// in this network gets the same one back.
    pub fn allocate_ip(&self, lease: &Lease, requested: Option<Ipv4Addr>) -> Result<Ipv4Addr> {
        self.store.transaction(|store| {
            if let Some(requested) = requested {
                return self.reserve_requested(store, lease, requested);
            }
            if let Some(ip) = held_by(store, &lease.container_id)? {
                return Ok(ip);
            }
            let start = store.last_reserved()?;
            for ip in self.candidates_after(start) {
                if store.reserve(ip, lease)? {
                    store.set_last_reserved(ip)?;
                    return Ok(ip);
                }
            }
            Err(Error::AddressExhausted {
                network: self.network.clone(),
                subnet: self.subnet.to_string(),
            })
        })
    }

    /// Reserves the highest free address not in `skip`, for the host's member: Podman allocates
    /// its containers' addresses from the bottom of the subnet (and passes them as static
    /// requests), so the member stays out of its way. A holder gets its address back.
    pub fn allocate_highest(&self, lease: &Lease, skip: &[Ipv4Addr]) -> Result<Ipv4Addr> {
        self.store.transaction(|store| {
            if let Some(ip) = held_by(store, &lease.container_id)? {
                return Ok(ip);
            }
            let first = u32::from(self.subnet.network()) + 1;
            let last = u32::from(self.subnet.broadcast()) - 1;
            for ip in (first..=last).rev().map(Ipv4Addr::from) {
                if self.is_assignable(ip) && !skip.contains(&ip) && store.reserve(ip, lease)? {
                    return Ok(ip);
                }
            }
            Err(Error::AddressExhausted {
                network: self.network.clone(),
                subnet: self.subnet.to_string(),
            })
        })
    }

    /// The addresses a runtime that allocates by itself (Podman does, for plugin networks with
    /// a subnet) may hand out on this host, as the one range it takes: the assignable addresses
    /// of the pool's first block, less the one the host member takes (the highest assignable
    /// address of the pool, [`Self::allocate_highest`]). `None` if that leaves nothing.
    pub fn runtime_range(&self) -> Option<(Ipv4Addr, Ipv4Addr)> {
        let member = self.assignable_in(&self.pool).next_back();
        let mut ips = self
            .assignable_in(&self.pool[..1.min(self.pool.len())])
            .filter(|&ip| Some(ip) != member);
        let first = ips.next()?;
        Some((first, ips.next_back().unwrap_or(first)))
    }

    /// The assignable addresses of these blocks, in order.
    fn assignable_in<'a>(
        &'a self,
        blocks: &'a [Ipv4Net],
    ) -> impl DoubleEndedIterator<Item = Ipv4Addr> + 'a {
        let first = u32::from(self.subnet.network()) + 1;
        let last = u32::from(self.subnet.broadcast()) - 1;
        (first..=last)
            .map(Ipv4Addr::from)
            .filter(move |&ip| self.is_special(ip) && blocks.iter().any(|b| b.contains(&ip)))
    }

    /// Frees whatever the container holds; releasing twice, or something never held, is fine.
    pub fn release_ip(&self, container_id: &str) -> Result<Option<Ipv4Addr>> {
        self.store.transaction(|store| {
            let held = held_by(store, container_id)?;
            if let Some(ip) = held {
                store.release(ip)?;
            }
            Ok(held)
        })
    }

    /// Frees one address if (and only if) this container holds it.
    pub fn release_exact(&self, container_id: &str, ip: Ipv4Addr) -> Result<()> {
        self.store.transaction(|store| match store.holder(ip)? {
            Some(lease) if lease.container_id == container_id => store.release(ip),
            _ => Ok(()),
        })
    }

    pub fn resolve_ip(&self, container_id: &str) -> Result<Option<Ipv4Addr>> {
        self.store.transaction(|store| held_by(store, container_id))
    }

    pub fn leases(&self) -> Result<Vec<(Ipv4Addr, Lease)>> {
        self.store.transaction(|store| store.leases())
    }

    fn reserve_requested(&self, store: &S, lease: &Lease, ip: Ipv4Addr) -> Result<Ipv4Addr> {
        if self.is_special(ip) && !self.in_pool(ip) {
            let blocks: Vec<String> = self.pool.iter().map(ToString::to_string).collect();
            return Err(Error::InvalidRequest(format!(
                "requested address {ip} is not in this host's blocks of {} ({}): another host serves it",
                self.subnet,
                blocks.join(", ")
            )));
        }
        if !self.is_assignable(ip) {
            return Err(Error::InvalidRequest(format!(
                "requested address {ip} is not assignable in {} (network, broadcast and gateway {} are reserved)",
                self.subnet, self.gateway
            )));
        }
        if store.reserve(ip, lease)? {
            return Ok(ip);
        }
        match store.holder(ip)? {
            Some(holder) if holder.container_id == lease.container_id => Ok(ip),
            Some(holder) => Err(Error::AddressInUse {
                ip,
                owner: holder.container_id,
            }),
            // Released between our attempt and the look-up: impossible under the lock.
            None => Err(Error::AddressInUse {
                ip,
                owner: "unknown".into(),
            }),
        }
    }

    fn is_assignable(&self, ip: Ipv4Addr) -> bool {
        self.is_special(ip) && self.in_pool(ip)
    }

    /// A host address of the subnet that is not reserved (network, broadcast, gateway).
    fn is_special(&self, ip: Ipv4Addr) -> bool {
        self.subnet.contains(&ip)
            && ip != self.subnet.network()
            && ip != self.subnet.broadcast()
            && ip != self.gateway
    }

    fn in_pool(&self, ip: Ipv4Addr) -> bool {
        self.pool.iter().any(|block| block.contains(&ip))
    }

    /// Every assignable address once, starting after `start` and wrapping around.
    fn candidates_after(&self, start: Option<Ipv4Addr>) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let first = u32::from(self.subnet.network()) + 1;
        let last = u32::from(self.subnet.broadcast()) - 1;
        let begin = match start.map(u32::from) {
            Some(s) if (first..last).contains(&s) => s + 1,
            _ => first,
        };
        (begin..=last)
            .chain(first..begin)
            .map(Ipv4Addr::from)
            .filter(|ip| self.is_assignable(*ip))
    }
}

fn held_by<S: LeaseStore>(store: &S, container_id: &str) -> Result<Option<Ipv4Addr>> {
    Ok(store
        .leases()?
        .into_iter()
        .find(|(_, lease)| lease.container_id == container_id)
        .map(|(ip, _)| ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager(dir: &std::path::Path, subnet: &str) -> IpAddressManager<DirLeaseStore> {
        let subnet: Ipv4Net = subnet.parse().unwrap();
        let store = DirLeaseStore::new(dir.join("leases"), dir.join("lock"));
        IpAddressManager::new("t", subnet, crate::config::first_host(subnet), store)
    }

    fn lease(id: &str) -> Lease {
        Lease {
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    }

    #[test]
    fn allocates_unique_addresses_skipping_reserved_ones() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = manager(dir.path(), "192.0.2.0/29"); // .1 gateway, .2-.6 usable, .7 broadcast
        let ips: Vec<_> = (0..5)
            .map(|i| ipam.allocate_ip(&lease(&format!("c{i}")), None).unwrap())
            .collect();
        let expected: Vec<Ipv4Addr> = (2..=6).map(|h| Ipv4Addr::new(192, 0, 2, h)).collect();
        assert_eq!(ips, expected);
        let err = ipam.allocate_ip(&lease("c5"), None).unwrap_err();
        assert!(matches!(err, Error::AddressExhausted { .. }), "{err}");
    }

    #[test]
    fn the_runtime_range_is_the_first_block_less_the_host_members_address() {
        let dir = tempfile::tempdir().unwrap();
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let blocks = |list: &[&str]| list.iter().map(|b| b.parse().unwrap()).collect();
        let ipam = manager(dir.path(), "192.0.2.0/24").with_pool(blocks(&["192.0.2.32/27"]));
        assert_eq!(
            ipam.runtime_range(),
            Some((ip("192.0.2.32"), ip("192.0.2.62")))
        );
        // The member takes the highest of the whole pool: here in the second block.
        let two = manager(dir.path(), "192.0.2.0/24")
            .with_pool(blocks(&["192.0.2.0/27", "192.0.2.224/27"]));
        assert_eq!(
            two.runtime_range(),
            Some((ip("192.0.2.2"), ip("192.0.2.31")))
        );
        let member = two.allocate_highest(&lease("member"), &[]).unwrap();
        assert_eq!(member, ip("192.0.2.254"));
        let tiny = manager(dir.path(), "192.0.2.0/24").with_pool(blocks(&["192.0.2.8/32"]));
        assert_eq!(tiny.runtime_range(), None);
    }

    #[test]
    fn a_pool_keeps_allocation_inside_the_hosts_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let block: Ipv4Net = "192.0.2.64/30".parse().unwrap();
        let ipam = manager(dir.path(), "192.0.2.0/24").with_pool(vec![block]);
        let ips: Vec<_> = (0..4)
            .map(|i| ipam.allocate_ip(&lease(&format!("c{i}")), None).unwrap())
            .collect();
        assert!(ips.iter().all(|ip| block.contains(ip)), "{ips:?}");
        assert!(ipam.allocate_ip(&lease("c4"), None).is_err());
        let member = manager(dir.path(), "192.0.2.0/24")
            .with_pool(vec!["192.0.2.128/29".parse().unwrap()])
            .allocate_highest(&lease("member"), &[])
            .unwrap();
        assert_eq!(member, "192.0.2.135".parse::<Ipv4Addr>().unwrap());
        let err = ipam
            .allocate_ip(&lease("x"), Some("192.0.2.10".parse().unwrap()))
            .unwrap_err();
        assert!(
            err.to_string().contains("not in this host's blocks"),
            "{err}"
        );
    }

    #[test]
    fn release_is_idempotent_and_address_is_reused_later() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = manager(dir.path(), "192.0.2.0/29");
        let a = ipam.allocate_ip(&lease("a"), None).unwrap();
        assert_eq!(ipam.resolve_ip("a").unwrap(), Some(a));
        assert_eq!(ipam.release_ip("a").unwrap(), Some(a));
        assert_eq!(ipam.release_ip("a").unwrap(), None);
        assert_eq!(ipam.resolve_ip("a").unwrap(), None);
        // Round robin: the next allocation does not reuse the released address at once.
        let b = ipam.allocate_ip(&lease("b"), None).unwrap();
        assert_ne!(a, b);
        for i in 0..3 {
            ipam.allocate_ip(&lease(&format!("f{i}")), None).unwrap();
        }
        assert_eq!(ipam.allocate_ip(&lease("z"), None).unwrap(), a);
    }

    #[test]
    fn same_container_gets_same_address() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = manager(dir.path(), "192.0.2.0/24");
        let a = ipam.allocate_ip(&lease("a"), None).unwrap();
        assert_eq!(ipam.allocate_ip(&lease("a"), None).unwrap(), a);
        assert_eq!(ipam.leases().unwrap().len(), 1);
    }

    #[test]
    fn static_requests_are_honoured_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = manager(dir.path(), "192.0.2.0/24");
        let want = Ipv4Addr::new(192, 0, 2, 77);
        assert_eq!(ipam.allocate_ip(&lease("a"), Some(want)).unwrap(), want);
        assert_eq!(ipam.allocate_ip(&lease("a"), Some(want)).unwrap(), want);
        let err = ipam.allocate_ip(&lease("b"), Some(want)).unwrap_err();
        assert!(
            matches!(err, Error::AddressInUse { ref owner, .. } if owner == "a"),
            "{err}"
        );
        for bad in ["192.0.2.0", "192.0.2.1", "192.0.2.255", "198.51.100.7"] {
            let err = ipam
                .allocate_ip(&lease("c"), Some(bad.parse().unwrap()))
                .unwrap_err();
            assert!(matches!(err, Error::InvalidRequest(_)), "{bad}: {err}");
        }
        // The static address is skipped by dynamic allocation.
        let ips: Vec<_> = (0..80)
            .map(|i| ipam.allocate_ip(&lease(&format!("d{i}")), None).unwrap())
            .collect();
        assert!(!ips.contains(&want));
    }

    #[test]
    fn the_host_member_takes_from_the_top_and_keeps_its_address() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = manager(dir.path(), "192.0.2.0/29");
        let top = ipam.allocate_highest(&lease("host"), &[]).unwrap();
        assert_eq!(top, Ipv4Addr::new(192, 0, 2, 6));
        assert_eq!(ipam.allocate_highest(&lease("host"), &[]).unwrap(), top);
        let skipping = [Ipv4Addr::new(192, 0, 2, 5)];
        let other = ipam.allocate_highest(&lease("other"), &skipping).unwrap();
        assert_eq!(other, Ipv4Addr::new(192, 0, 2, 4));
        assert_eq!(
            ipam.allocate_ip(&lease("c"), None).unwrap(),
            Ipv4Addr::new(192, 0, 2, 2)
        );
    }

    #[test]
    fn release_exact_only_frees_own_address() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = manager(dir.path(), "192.0.2.0/24");
        let a = ipam.allocate_ip(&lease("a"), None).unwrap();
        ipam.release_exact("b", a).unwrap();
        assert_eq!(ipam.resolve_ip("a").unwrap(), Some(a));
        ipam.release_exact("a", a).unwrap();
        assert_eq!(ipam.resolve_ip("a").unwrap(), None);
    }
}
