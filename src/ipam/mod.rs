//! `IPAddressManager`: hands out unique Flatnet addresses from a network's subnet.
//!
//! Policy only (which address, which are never given out, what a static request may take);
//! the leases themselves live in a [`LeaseStore`]. One manager serves one subnet, IPv4 or
//! IPv6 (a dual-stack network has one of each over the same store): addresses are numbers to
//! it, so the same arithmetic serves both families.

pub mod store;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::error::{Error, Result};
pub use store::{DirLeaseStore, Lease, LeaseStore};

pub struct IpAddressManager<S: LeaseStore> {
    network: String,
    subnet: IpNet,
    gateway: IpAddr,
    /// The parts of the subnet this host may hand out: all of it, or the blocks its
    /// certificate grants (hosts that share a network then never collide).
    pool: Vec<IpNet>,
    store: S,
}

/// An inclusive run of assignable address numbers.
type Run = (u128, u128);

impl<S: LeaseStore> IpAddressManager<S> {
    pub fn new(network: &str, subnet: IpNet, gateway: IpAddr, store: S) -> Self {
        IpAddressManager {
            network: network.to_string(),
            subnet,
            gateway,
            pool: vec![subnet],
            store,
        }
    }

    /// Hands out addresses from these blocks of the subnet only.
    pub fn with_pool(mut self, pool: Vec<IpNet>) -> Self {
        self.pool = pool;
        self
    }

    pub fn subnet(&self) -> IpNet {
        self.subnet
    }

    /// Reserves an address for the container: `requested` if given (Podman's `--ip`, CNI_ARGS
    /// IP=, netavark static_ips), else the next free one after the last reservation, so a
    /// just-released address is not reused at once. A container that already holds an address
    /// in this subnet gets the same one back.
    pub fn allocate_ip(&self, lease: &Lease, requested: Option<IpAddr>) -> Result<IpAddr> {
        self.store.transaction(|store| {
            if let Some(requested) = requested {
                return self.reserve_requested(store, lease, requested);
            }
            if let Some(ip) = self.held_by(store, &lease.container_id)? {
                return Ok(ip);
            }
            let start = store.last_reserved(self.subnet)?;
            for ip in self.candidates_after(start) {
                if store.reserve(ip, lease)? {
                    store.set_last_reserved(ip)?;
                    return Ok(ip);
                }
            }
            Err(self.exhausted())
        })
    }

    /// Reserves the highest free address not in `skip`, for the host's member: Podman allocates
    /// its containers' addresses from the bottom of the subnet (and passes them as static
    /// requests), so the member stays out of its way. A holder gets its address back.
    pub fn allocate_highest(&self, lease: &Lease, skip: &[IpAddr]) -> Result<IpAddr> {
        self.store.transaction(|store| {
            if let Some(ip) = self.held_by(store, &lease.container_id)? {
                return Ok(ip);
            }
            for ip in self.assignable_in(&self.pool).rev() {
                if !skip.contains(&ip) && store.reserve(ip, lease)? {
                    return Ok(ip);
                }
            }
            Err(self.exhausted())
        })
    }

    /// The addresses a runtime that allocates by itself (Podman does, for plugin networks with
    /// a subnet) may hand out on this host, as the one range it takes: the assignable addresses
    /// of the pool's first block, less the one the host member takes (the highest assignable
    /// address of the pool, [`Self::allocate_highest`]). `None` if that leaves nothing.
    pub fn runtime_range(&self) -> Option<(IpAddr, IpAddr)> {
        let member = self.assignable_in(&self.pool).next_back();
        let mut ips = self
            .assignable_in(&self.pool[..1.min(self.pool.len())])
            .filter(|&ip| Some(ip) != member);
        let first = ips.next()?;
        Some((first, ips.next_back().unwrap_or(first)))
    }

    /// Frees whatever the container holds in this subnet; releasing twice, or something never
    /// held, is fine.
    pub fn release_ip(&self, container_id: &str) -> Result<Option<IpAddr>> {
        self.store.transaction(|store| {
            let held = self.held_by(store, container_id)?;
            if let Some(ip) = held {
                store.release(ip)?;
            }
            Ok(held)
        })
    }

    /// Frees one address if (and only if) this container holds it.
    pub fn release_exact(&self, container_id: &str, ip: IpAddr) -> Result<()> {
        self.store.transaction(|store| match store.holder(ip)? {
            Some(lease) if lease.container_id == container_id => store.release(ip),
            _ => Ok(()),
        })
    }

    pub fn resolve_ip(&self, container_id: &str) -> Result<Option<IpAddr>> {
        self.store
            .transaction(|store| self.held_by(store, container_id))
    }

    /// The leases of this subnet.
    pub fn leases(&self) -> Result<Vec<(IpAddr, Lease)>> {
        self.store.transaction(|store| self.leases_in(store))
    }

    fn leases_in(&self, store: &S) -> Result<Vec<(IpAddr, Lease)>> {
        let mut leases = store.leases()?;
        leases.retain(|(ip, _)| self.subnet.contains(ip));
        Ok(leases)
    }

    fn held_by(&self, store: &S, container_id: &str) -> Result<Option<IpAddr>> {
        Ok(self
            .leases_in(store)?
            .into_iter()
            .find(|(_, lease)| lease.container_id == container_id)
            .map(|(ip, _)| ip))
    }

    fn exhausted(&self) -> Error {
        Error::AddressExhausted {
            network: self.network.clone(),
            subnet: self.subnet.to_string(),
        }
    }

    fn reserve_requested(&self, store: &S, lease: &Lease, ip: IpAddr) -> Result<IpAddr> {
        if self.is_host_address(ip) && !self.in_pool(ip) {
            let blocks: Vec<String> = self.pool.iter().map(ToString::to_string).collect();
            return Err(Error::InvalidRequest(format!(
                "requested address {ip} is not in this host's blocks of {} ({}): another host serves it",
                self.subnet,
                blocks.join(", ")
            )));
        }
        if !self.is_assignable(ip) {
            return Err(Error::InvalidRequest(format!(
                "requested address {ip} is not assignable in {} (network, last and gateway {} are reserved)",
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

    fn is_assignable(&self, ip: IpAddr) -> bool {
        self.is_host_address(ip) && self.in_pool(ip)
    }

    /// An address of the subnet that is not reserved: the network's and the last address
    /// (IPv4's broadcast; IPv6 keeps it out too, so both families hand out alike), the gateway.
    fn is_host_address(&self, ip: IpAddr) -> bool {
        let (first, last) = self.host_run();
        self.subnet.contains(&ip) && (first..=last).contains(&number(ip)) && ip != self.gateway
    }

    fn in_pool(&self, ip: IpAddr) -> bool {
        self.pool.iter().any(|block| block.contains(&ip))
    }

    /// The subnet's addresses between its network and its last address.
    fn host_run(&self) -> Run {
        (
            number(self.subnet.network()) + 1,
            number(self.subnet.broadcast()) - 1,
        )
    }

    /// The blocks' addresses inside the subnet's host run, in order and without overlaps.
    fn runs(&self, blocks: &[IpNet]) -> Vec<Run> {
        let (first, last) = self.host_run();
        let mut runs: Vec<Run> = blocks
            .iter()
            .filter(|b| b.addr().is_ipv4() == self.subnet.addr().is_ipv4())
            .map(|b| {
                (
                    number(b.network()).max(first),
                    number(b.broadcast()).min(last),
                )
            })
            .filter(|(a, b)| a <= b)
            .collect();
        runs.sort_unstable();
        let mut merged: Vec<Run> = Vec::with_capacity(runs.len());
        for (a, b) in runs {
            match merged.last_mut() {
                Some(prev) if a <= prev.1.saturating_add(1) => prev.1 = prev.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        merged
    }

    /// The assignable addresses of these blocks, in order.
    fn assignable_in(&self, blocks: &[IpNet]) -> impl DoubleEndedIterator<Item = IpAddr> + '_ {
        let subnet = self.subnet;
        self.runs(blocks)
            .into_iter()
            .flat_map(|(a, b)| a..=b)
            .map(move |n| address(subnet, n))
            .filter(|&ip| ip != self.gateway)
    }

    /// Every assignable address once, starting after `start` and wrapping around.
    fn candidates_after(&self, start: Option<IpAddr>) -> impl Iterator<Item = IpAddr> + '_ {
        let runs = self.runs(&self.pool);
        let start = start.map(number);
        let after: Vec<Run> = runs
            .iter()
            .map(|&(a, b)| (start.map_or(a, |s| a.max(s.saturating_add(1))), b))
            .collect();
        let up_to: Vec<Run> = match start {
            Some(s) => runs.iter().map(|&(a, b)| (a, b.min(s))).collect(),
            None => Vec::new(),
        };
        let subnet = self.subnet;
        after
            .into_iter()
            .chain(up_to)
            .flat_map(|(a, b)| a..=b)
            .map(move |n| address(subnet, n))
            .filter(|&ip| ip != self.gateway)
    }
}

/// An address as a number (IPv4 in the low 32 bits).
fn number(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The address numbered `n` in the family of `subnet`.
fn address(subnet: IpNet, n: u128) -> IpAddr {
    match subnet {
        IpNet::V4(_) => Ipv4Addr::from(n as u32).into(),
        IpNet::V6(_) => Ipv6Addr::from(n).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager(dir: &std::path::Path, subnet: &str) -> IpAddressManager<DirLeaseStore> {
        let subnet: IpNet = subnet.parse().unwrap();
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
        let expected: Vec<IpAddr> = (2..=6).map(|h| IpAddr::from([192, 0, 2, h])).collect();
        assert_eq!(ips, expected);
        let err = ipam.allocate_ip(&lease("c5"), None).unwrap_err();
        assert!(matches!(err, Error::AddressExhausted { .. }), "{err}");
    }

    #[test]
    fn the_runtime_range_is_the_first_block_less_the_host_members_address() {
        let dir = tempfile::tempdir().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
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
        let block: IpNet = "192.0.2.64/30".parse().unwrap();
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
        assert_eq!(member, "192.0.2.135".parse::<IpAddr>().unwrap());
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
        let want = IpAddr::from([192, 0, 2, 77]);
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
        assert_eq!(top, IpAddr::from([192, 0, 2, 6]));
        assert_eq!(ipam.allocate_highest(&lease("host"), &[]).unwrap(), top);
        let skipping = [IpAddr::from([192, 0, 2, 5])];
        let other = ipam.allocate_highest(&lease("other"), &skipping).unwrap();
        assert_eq!(other, IpAddr::from([192, 0, 2, 4]));
        assert_eq!(
            ipam.allocate_ip(&lease("c"), None).unwrap(),
            IpAddr::from([192, 0, 2, 2])
        );
    }

    #[test]
    fn ipv6_subnets_allocate_from_the_bottom_and_the_member_from_the_top() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = manager(dir.path(), "fd77::/64");
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(ipam.allocate_ip(&lease("a"), None).unwrap(), ip("fd77::2"));
        assert_eq!(ipam.allocate_ip(&lease("b"), None).unwrap(), ip("fd77::3"));
        let member = ipam.allocate_highest(&lease("m"), &[]).unwrap();
        assert_eq!(member, ip("fd77::ffff:ffff:ffff:fffe"));
        assert_eq!(
            ipam.runtime_range(),
            Some((ip("fd77::2"), ip("fd77::ffff:ffff:ffff:fffd")))
        );
        // An IPv4 manager on the same store sees none of these leases, and its own cursor.
        let v4 = manager(dir.path(), "192.0.2.0/24");
        assert_eq!(v4.resolve_ip("a").unwrap(), None);
        assert_eq!(v4.allocate_ip(&lease("a"), None).unwrap(), ip("192.0.2.2"));
        assert_eq!(ipam.resolve_ip("a").unwrap(), Some(ip("fd77::2")));
        assert_eq!(ipam.leases().unwrap().len(), 3);
        assert_eq!(v4.release_ip("a").unwrap(), Some(ip("192.0.2.2")));
        assert_eq!(ipam.resolve_ip("a").unwrap(), Some(ip("fd77::2")));
        let err = ipam
            .allocate_ip(&lease("c"), Some(ip("fd78::5")))
            .unwrap_err();
        assert!(matches!(err, Error::InvalidRequest(_)), "{err}");
    }

    #[test]
    fn a_block_far_into_an_ipv6_subnet_is_found_at_once_and_wraps() {
        let dir = tempfile::tempdir().unwrap();
        let block: IpNet = "fd77::8000:0:0:0/126".parse().unwrap();
        let ipam = manager(dir.path(), "fd77::/64").with_pool(vec![block]);
        let ips: Vec<IpAddr> = (0..4)
            .map(|i| ipam.allocate_ip(&lease(&format!("c{i}")), None).unwrap())
            .collect();
        assert!(ips.iter().all(|ip| block.contains(ip)), "{ips:?}");
        let err = ipam.allocate_ip(&lease("c4"), None).unwrap_err();
        assert!(matches!(err, Error::AddressExhausted { .. }), "{err}");
        ipam.release_ip("c1").unwrap();
        assert_eq!(ipam.allocate_ip(&lease("c5"), None).unwrap(), ips[1]);
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
