//! What the networks of one state directory share on this host: the members lock, each
//! network's host member, the host ports taken, and the nftables table built from them.

use super::addresses::CLAIM_ATTEMPTS;
use super::undo::Undo;
use super::{AttachRequest, Network};
use crate::attachment::{self, Attachment};
use crate::error::{Error, Result};
use crate::firewall;
use crate::host_member::{self, HostMember};
use crate::ipam::Lease;
use crate::portmap::find_conflict;
use crate::state::{list_dir, FileLock, NetworkDirs};

impl Network {
    /// Attach and detach of every network of this state directory take turns: they decide
    /// whether a host member comes or goes, and which host ports are taken.
    pub(super) fn lock_members(&self) -> Result<FileLock> {
        FileLock::acquire(&self.config.state_dir.members_lock())
    }

    /// Makes sure the network has its host member here; true if this call created it.
    pub(super) fn ensure_host_member<'a>(&'a self, undo: &mut Undo<'a>) -> Result<bool> {
        let dirs = self.config.dirs();
        if let Some(member) = HostMember::load(&dirs)? {
            if member.has_interface()? {
                return Ok(false);
            }
            // Recorded but gone (deleted by hand): make it again, and the rules that name it.
            member.create_interface()?;
            return Ok(true);
        }
        self.refuse_overlapping_subnets()?;
        // A member whose creation was killed half-way left at most its lease and lighthouse
        // entry: `allocate_highest` hands the same lease back and the entry is re-registered.
        undo.push(|| self.remove_host_member().map(drop));
        let id = host_member::member_id(&self.config);
        let lease = Lease {
            container_id: id.clone(),
            ifname: host_member::member_ifname(&self.config),
        };
        let mut addresses = Vec::with_capacity(self.ipams.len());
        for ipam in &self.ipams {
            let mut taken = Vec::new();
            addresses.push(loop {
                let ip = ipam.allocate_highest(&lease, &taken)?;
                match self.lighthouse.register(&self.entry(ip, &id, Vec::new())?) {
                    Ok(()) => break ip,
                    // Another host's member (or container) holds it in the lighthouse.
                    Err(Error::AddressInUse { .. }) if taken.len() < CLAIM_ATTEMPTS => {
                        ipam.release_exact(&id, ip)?;
                        taken.push(ip);
                    }
                    Err(e) => return Err(e),
                }
            });
        }
        // The record first: whatever exists of a member, its record says how to remove it.
        let member = HostMember::describe(&self.config, addresses)?;
        member.save(&dirs)?;
        member.create_interface()?;
        Ok(true)
    }

    /// A network arriving on this host may not share addresses with one already here: the
    /// host would route both subnets to two members, and the containers of one would answer
    /// for the other's.
    fn refuse_overlapping_subnets(&self) -> Result<()> {
        for network in list_dir(&self.config.state_dir.networks())? {
            let Some(member) = HostMember::load(&NetworkDirs { root: network })? else {
                continue;
            };
            if member.network == self.config.network {
                continue;
            }
            for ours in self.config.subnets.iter().map(|s| s.net) {
                if let Some(theirs) = member.subnets.iter().find(|t| overlap(&ours, t)) {
                    return Err(Error::InvalidConfig(format!(
                        "subnet {ours} of network {} overlaps subnet {theirs} of network {}, \
                         which has containers on this host",
                        self.config.network, member.network
                    )));
                }
            }
        }
        Ok(())
    }

    /// Removes the host member: interface, lease, lighthouse entry, record. Every part is
    /// derived from the configuration, so a member whose creation was cut short goes too.
    /// Returns whether there was anything of it.
    pub(super) fn remove_host_member(&self) -> Result<bool> {
        let dirs = self.config.dirs();
        let recorded = HostMember::load(&dirs)?;
        let id = host_member::member_id(&self.config);
        if let Some(member) = &recorded {
            member.remove_interface()?;
        }
        let mut released = Vec::new();
        for ipam in &self.ipams {
            released.extend(ipam.release_ip(&id)?);
        }
        let recorded_ips = recorded.iter().flat_map(|m| m.addresses.iter().copied());
        for ip in released.iter().copied().chain(recorded_ips) {
            self.lighthouse.unregister(&self.config.network, ip, &id)?;
        }
        HostMember::forget(&dirs)?;
        Ok(recorded.is_some() || !released.is_empty())
    }

    /// A host port another Flatnet container of this state directory publishes is refused,
    /// and so is one on a host address of a family the network has no subnet of.
    pub(super) fn refuse_taken_ports(&self, req: &AttachRequest) -> Result<()> {
        if req.ports.is_empty() {
            return Ok(());
        }
        let families: Vec<std::net::IpAddr> =
            self.config.subnets.iter().map(|s| s.net.addr()).collect();
        if let Some(stray) = req
            .ports
            .iter()
            .find(|m| !families.iter().any(|&f| m.carries(f)))
        {
            return Err(Error::InvalidRequest(format!(
                "published port {stray} is on an address of a family network {} has no \
                 subnet of ({})",
                self.config.network,
                self.config.subnets_text()
            )));
        }
        let others: Vec<Attachment> = attachment::all(&self.config.state_dir)?
            .into_iter()
            .filter(|a| a.container_id != req.container_id)
            .collect();
        let held = others
            .iter()
            .flat_map(|a| a.ports.iter().map(|p| (a.container_id.as_str(), p)));
        match find_conflict(req.ports, held) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Removes the daemon's `[::1]` redirects once no container here needs them. The daemon
    /// keeps them itself, but one killed with relayed ports left them pointing at its closed
    /// listeners (a port anyone may take next), and no daemon may start again to clear them.
    pub(super) fn clear_unused_relays(&self) -> Result<()> {
        let records = attachment::all(&self.config.state_dir)?;
        if records.iter().any(|r| !r.loopback_relays().is_empty()) {
            return Ok(());
        }
        firewall::apply_loopback_redirects(&host_member::relay_table(self.config.endpoint), &[])
    }

    /// Rewrites this state directory's nftables table from the records on disk.
    pub(super) fn sync_firewall(&self) -> Result<()> {
        let state_dir = &self.config.state_dir;
        let mut rules = firewall::Ruleset::default();
        for network in list_dir(&state_dir.networks())? {
            let dirs = NetworkDirs { root: network };
            if let Some(member) = HostMember::load(&dirs)? {
                rules.networks.push(firewall::NetworkRules {
                    ifname: member.ifname,
                    subnets: member.subnets,
                    internal: member.internal,
                    ingress_filter: member.ingress_filter,
                });
            }
            for record in attachment::in_network(&dirs)? {
                for mapping in &record.ports {
                    let to = record.ips().filter(|&ip| mapping.carries(ip));
                    rules.forwards.extend(to.map(|container| firewall::Forward {
                        container,
                        mapping: *mapping,
                    }));
                }
            }
        }
        firewall::apply(&host_member::firewall_table(&self.config), &rules)
    }
}

fn overlap(a: &ipnet::IpNet, b: &ipnet::IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}
