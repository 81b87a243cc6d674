//! Attach, detach and check: the three operations both front ends translate their protocol
//! into. Each ties IPAM, the container's namespace and the lighthouse together; an attach that
//! fails half-way undoes what it did, so nothing is left reserved or created.

mod addresses;
mod cleanup;
mod host;
mod readiness;
mod serving;
mod undo;

use std::fs;
use std::net::IpAddr;
use std::path::Path;
use std::sync::OnceLock;

use ipnet::IpNet;

pub use addresses::address_pools;
use undo::Undo;

use crate::attachment::{self, Attachment};
use crate::config::FlatnetConfig;
use crate::control::{self, ViaDaemon};
use crate::dns::normalise_name;
use crate::error::{Error, Result};
use crate::ipam::{DirLeaseStore, IpAddressManager};
use crate::killpoint;
use crate::lighthouse::{
    Entry, FileLighthouse, HostInfo, Lighthouse, LighthouseSettings, NetworkId,
};
use crate::netns::{NetnsId, NetworkNamespace};
use crate::portmap::PortMapping;
use crate::state::{list_dir, remove_if_exists};
use crate::tun::check_ifname;

/// What a runtime asks for when a container joins the network.
#[derive(Debug, Clone)]
pub struct AttachRequest<'a> {
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
    /// Specific addresses (`--ip`, `--ip6`), at most one per subnet; IPAM chooses the rest.
    pub static_ips: &'a [IpAddr],
    /// DNS names on the network: the container's name and aliases.
    pub names: &'a [String],
    /// Host ports to forward to the container (`-p`).
    pub ports: &'a [PortMapping],
    /// The user a rootless container belongs to; `None` for root's.
    pub owner: Option<u32>,
}

/// One Flatnet network on this host.
pub struct Network {
    config: FlatnetConfig,
    /// One per subnet, in the configuration's order.
    ipams: Vec<IpAddressManager<DirLeaseStore>>,
    lighthouse: Box<dyn Lighthouse>,
    /// The network's identifier, asked of the lighthouse once.
    id: OnceLock<NetworkId>,
    /// Why this host has no addresses to give on the network (its certificate), if so.
    pool_error: Option<String>,
}

impl Network {
    /// The network with its lighthouse: the file itself, or (etcd) this host's daemon.
    pub fn open(config: FlatnetConfig) -> Self {
        let lighthouse: Box<dyn Lighthouse> = match &config.lighthouse {
            LighthouseSettings::File(path) => Box::new(FileLighthouse::new(path.clone())),
            LighthouseSettings::Etcd(_) => Box::new(ViaDaemon::new(config.state_dir.clone())),
        };
        Self::with_lighthouse(config, lighthouse)
    }

    pub fn with_lighthouse(config: FlatnetConfig, lighthouse: Box<dyn Lighthouse>) -> Self {
        let dirs = config.dirs();
        let pools = address_pools(&config);
        let ipams = config
            .subnets
            .iter()
            .zip(
                pools
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .chain(std::iter::repeat(vec![])),
            )
            .map(|(subnet, pool)| {
                let store = DirLeaseStore::new(dirs.leases(), dirs.lock_file());
                IpAddressManager::new(&config.network, subnet.net, subnet.gateway, store)
                    .with_pool(pool)
            })
            .collect();
        Network {
            config,
            ipams,
            lighthouse,
            id: OnceLock::new(),
            pool_error: pools.err(),
        }
    }

    pub fn config(&self) -> &FlatnetConfig {
        &self.config
    }

    /// The address managers, one per subnet.
    pub fn ipams(&self) -> &[IpAddressManager<DirLeaseStore>] {
        &self.ipams
    }

    pub fn lighthouse(&self) -> &dyn Lighthouse {
        self.lighthouse.as_ref()
    }

    /// The addresses Podman may hand out for this network on this host, one range per subnet
    /// (it allocates for plugin networks itself): see [`IpAddressManager::runtime_range`].
    pub fn runtime_ranges(&self) -> Result<Vec<(IpAddr, IpAddr)>> {
        if let Some(why) = &self.pool_error {
            return Err(Error::InvalidConfig(why.clone()));
        }
        self.ipams
            .iter()
            .map(|ipam| {
                ipam.runtime_range().ok_or_else(|| {
                    Error::InvalidConfig(format!(
                        "this host's blocks of {} leave no address for containers",
                        ipam.subnet()
                    ))
                })
            })
            .collect()
    }

    /// The network's identifier as the lighthouse allotted it.
    pub fn id(&self) -> Result<NetworkId> {
        if let Some(&id) = self.id.get() {
            return Ok(id);
        }
        let id = self.lighthouse.network_id(&self.config.network)?;
        Ok(*self.id.get_or_init(|| id))
    }

    pub fn attach(&self, req: &AttachRequest) -> Result<Attachment> {
        if let Some(why) = &self.pool_error {
            return Err(Error::InvalidConfig(why.clone()));
        }
        attachment::check_container_id(req.container_id)?;
        check_ifname(req.ifname)?;
        let names = dns_names(req.names);
        let netns = NetworkNamespace::open(req.netns)?;
        // The data plane first: its key is what the lighthouse entry publishes.
        control::ensure_running(&self.daemon_settings())?;
        killpoint::here("attach.daemon_started");
        let network_id = self.id()?;
        let _members = self.lock_members()?;
        self.remove_stale_temps();
        self.collect_orphans();
        self.clear_stale_record(req)?;
        self.refuse_taken_ports(req)?;

        let mut undo = Undo::default();
        // Runs last on failure: the table then says what the state left on disk says.
        undo.push(|| self.sync_firewall());
        let member_created = self.ensure_host_member(&mut undo)?;
        let ips = self.claim_addresses(req, &names, &mut undo)?;
        killpoint::here("attach.address_claimed");
        let attachment = self.attachment_for(req, network_id, &ips, names, netns.identity()?);

        make_interface(&netns, &attachment)?;
        let iface = attachment.clone();
        undo.push(move || {
            NetworkNamespace::teardown(&iface.netns, &iface.ifname, iface.netns_id).map(drop)
        });
        killpoint::here("attach.interface_made");

        attachment::save(&self.config.dirs(), &attachment)?;
        undo.push(|| remove_if_exists(&self.config.dirs().attachment(req.container_id)));
        killpoint::here("attach.record_written");
        if member_created || !attachment.ports.is_empty() {
            self.sync_firewall()?;
        }
        self.start_serving(req.container_id)?;
        killpoint::here("attach.served");
        undo.commit();
        Ok(attachment)
    }

    /// Undoes an attach. Idempotent: whatever is already gone (namespace, interface, record,
    /// lease) is skipped, so a runtime may call it after a failed or partial attach. The last
    /// container of the network on this host takes the host member with it.
    pub fn detach(&self, container_id: &str, netns: Option<&Path>, ifname: &str) -> Result<()> {
        attachment::check_container_id(container_id)?;
        let _members = self.lock_members()?;
        self.remove_stale_temps();
        self.collect_orphans();
        self.detach_locked(container_id, netns, ifname)
    }

    fn detach_locked(&self, container_id: &str, netns: Option<&Path>, ifname: &str) -> Result<()> {
        self.stop_serving(container_id);
        killpoint::here("detach.unserved");
        let record = attachment::load(&self.config.dirs(), container_id)?;
        // Only what we made goes: an interface in the recorded namespace, or (an attach killed
        // before its record) one the container's lease says was being made. With neither, the
        // name in the runtime's namespace is not ours, even if the container was once.
        let attaching = record.is_some() || self.leases_of(container_id)?.next().is_some();
        let netns = netns.or(record.as_ref().map(|r| r.netns.as_path()));
        let ifname = record.as_ref().map_or(ifname, |r| r.ifname.as_str());
        let made_in = record.as_ref().and_then(|r| r.netns_id);
        if let Some(netns) = netns.filter(|_| attaching) {
            NetworkNamespace::teardown(netns, ifname, made_in)?;
        }
        killpoint::here("detach.interface_removed");
        for ipam in &self.ipams {
            if let Some(ip) = ipam.release_ip(container_id)? {
                self.lighthouse
                    .unregister(&self.config.network, ip, container_id)?;
            }
        }
        for ip in record.iter().flat_map(Attachment::ips) {
            self.lighthouse
                .unregister(&self.config.network, ip, container_id)?;
        }
        killpoint::here("detach.address_released");
        remove_if_exists(&self.config.dirs().attachment(container_id))?;
        let had_relays = record
            .as_ref()
            .is_some_and(|r| !r.loopback_relays().is_empty());
        let had_ports = record.is_some_and(|r| !r.ports.is_empty());
        let member_removed = !self.has_attachments()? && self.remove_host_member()?;
        if had_ports || member_removed {
            self.sync_firewall()?;
        }
        if had_relays {
            self.clear_unused_relays()?;
        }
        Ok(())
    }

    /// Verifies that an attachment is whole: record, lease, lighthouse entry, and an interface
    /// in the namespace that is up and carries the address and MTU.
    pub fn check(&self, container_id: &str, netns: &Path, ifname: &str) -> Result<Attachment> {
        attachment::check_container_id(container_id)?;
        let failed = |msg: String| Err(Error::CheckFailed(msg));
        let Some(record) = attachment::load(&self.config.dirs(), container_id)? else {
            return failed(format!("container {container_id} is not attached"));
        };
        if record.ifname != ifname {
            return failed(format!("attached as {}, not {ifname}", record.ifname));
        }
        let leased: Vec<IpAddr> = self.leases_of(container_id)?.collect();
        for ip in record.ips() {
            if !leased.contains(&ip) {
                return failed(format!("address {ip} is not leased to {container_id}"));
            }
            let entry = self.lighthouse.lookup(&self.config.network, ip)?;
            if entry.is_none_or(|e| e.container_id != container_id) {
                return failed(format!("lighthouse does not map {ip} to {container_id}"));
            }
        }
        let ns = NetworkNamespace::open(netns)?;
        let Some(state) = ns.enter(|inside| inside.interface_state(ifname))? else {
            return failed(format!("interface {ifname} is missing"));
        };
        if let Some(missing) = record
            .addresses
            .iter()
            .find(|a| !state.addresses.contains(a))
        {
            return failed(format!("{ifname} lacks address {missing}"));
        }
        if !state.up {
            return failed(format!("{ifname} is down"));
        }
        if state.mtu != Some(record.mtu) {
            return failed(format!(
                "{ifname} has MTU {:?}, want {}",
                state.mtu, record.mtu
            ));
        }
        if !self.is_served(container_id)? {
            return failed(format!(
                "flatnetd for {} does not serve {container_id}",
                self.config.state_dir.display()
            ));
        }
        Ok(record)
    }

    /// Every attachment recorded for this network.
    pub fn attachments(&self) -> Result<Vec<Attachment>> {
        attachment::in_network(&self.config.dirs())
    }

    /// Is any container recorded on this network? (Without reading the records.)
    fn has_attachments(&self) -> Result<bool> {
        let records = list_dir(&self.config.dirs().attachments())?;
        Ok(records
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "json")))
    }

    /// The addresses the container holds a lease on, one per subnet at most.
    fn leases_of(&self, container_id: &str) -> Result<impl Iterator<Item = IpAddr>> {
        let mut held = Vec::new();
        for ipam in &self.ipams {
            held.extend(ipam.resolve_ip(container_id)?);
        }
        Ok(held.into_iter())
    }

    fn entry(&self, ip: IpAddr, id: &str, names: Vec<String>) -> Result<Entry> {
        Ok(Entry {
            network: self.config.network.clone(),
            network_id: self.id()?,
            ip,
            container_id: id.to_string(),
            names,
            host: self.host_info(),
        })
    }

    fn attachment_for(
        &self,
        req: &AttachRequest,
        network_id: NetworkId,
        ips: &[IpAddr],
        names: Vec<String>,
        netns_id: NetnsId,
    ) -> Attachment {
        let subnets = &self.config.subnets;
        let addresses = ips
            .iter()
            .zip(subnets)
            .map(|(&ip, subnet)| IpNet::new(ip, subnet.net.prefix_len()).expect("valid prefix"))
            .collect();
        Attachment {
            version: attachment::RECORD_VERSION,
            network: self.config.network.clone(),
            network_id,
            container_id: req.container_id.to_string(),
            ifname: req.ifname.to_string(),
            netns: req.netns.to_path_buf(),
            addresses,
            gateways: subnets.iter().map(|s| s.gateway).collect(),
            mac: attachment::mac_for(ips[0]),
            mtu: self.config.mtu,
            names,
            ports: req.ports.to_vec(),
            egress: !self.config.internal,
            netns_id: Some(netns_id),
            owner: req.owner,
        }
    }

    fn host_info(&self) -> HostInfo {
        let public_key = fs::read_to_string(self.config.state_dir.host_pub())
            .map(|k| k.trim().to_string())
            .unwrap_or_default();
        HostInfo {
            endpoint: self.config.endpoint,
            public_key,
        }
    }
}

/// Creates, addresses and raises the container's TUN device. If a step after the creation
/// fails, the device is removed again; an interface that existed before is never touched.
fn make_interface(netns: &NetworkNamespace, attachment: &Attachment) -> Result<()> {
    netns.enter(|inside| {
        let device = inside.create_interface(&attachment.ifname, attachment.mtu)?;
        let configured = (|| {
            let ipv6 = attachment.addresses.iter().any(|a| a.addr().is_ipv6());
            inside.configure_ipv6(&device, ipv6)?;
            for address in &attachment.addresses {
                inside.assign_ip(&device, *address)?;
            }
            inside.set_up(&device)?;
            if ipv6 {
                // Usable before the runtime starts the container's process.
                inside.wait_addresses_usable(&device)?;
            }
            if attachment.egress {
                for gateway in &attachment.gateways {
                    inside.add_default_route(&device, *gateway)?;
                }
            }
            Ok(())
        })();
        if configured.is_err() {
            let _ = inside.remove_interface(&device.name);
        }
        configured
    })
}

/// The container's DNS names, normalised and deduplicated. A name DNS cannot carry (a label
/// over 63 characters, as in the long names CI runners give their job containers) is left out
/// rather than refused: Podman accepts such names, and the container still answers to its
/// others (Podman always passes the short container id too).
fn dns_names(names: &[String]) -> Vec<String> {
    let mut normalised: Vec<String> = Vec::new();
    for name in names.iter().filter_map(|name| normalise_name(name)) {
        if !normalised.contains(&name) {
            normalised.push(name);
        }
    }
    normalised
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_dns_cannot_carry_are_left_out_not_refused() {
        let act_job = format!("act-hello-yml-hello-{}", "c7".repeat(32));
        let given = [act_job, "Web".into(), "web".into(), "fe2c9a".into()];
        assert_eq!(dns_names(&given), ["web", "fe2c9a"]);
    }
}
