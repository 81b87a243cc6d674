//! Attach, detach and check: the three operations both front ends translate their protocol
//! into. Each ties IPAM, the container's namespace and the lighthouse together; an attach that
//! fails half-way undoes what it did, so nothing is left reserved or created.

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::OnceLock;

use ipnet::Ipv4Net;

use crate::attachment::{self, Attachment};
use crate::config::FlatnetConfig;
use crate::control::{self, DaemonConfig, DataPlaneRequest, ViaDaemon};
use crate::dns::normalise_name;
use crate::error::{Error, IoContext, Result};
use crate::firewall;
use crate::host_member::{self, HostMember};
use crate::ipam::{DirLeaseStore, IpAddressManager, Lease};
use crate::killpoint;
use crate::lighthouse::{
    Entry, FileLighthouse, HostInfo, Lighthouse, LighthouseSettings, NetworkId,
};
use crate::netns::{NetnsId, NetworkNamespace};
use crate::portmap::{find_conflict, PortMapping};
use crate::state::{list_dir, remove_if_exists, FileLock, NetworkDirs};
use crate::tun::check_ifname;
use crate::tunnel::StaticKeys;

/// How many addresses an attach tries when other hosts have claimed the ones it picked.
const CLAIM_ATTEMPTS: usize = 64;

/// What a runtime asks for when a container joins the network.
#[derive(Debug, Clone)]
pub struct AttachRequest<'a> {
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
    /// A specific address (`--ip`); `None` lets IPAM choose.
    pub static_ip: Option<Ipv4Addr>,
    /// DNS names on the network: the container's name and aliases.
    pub names: &'a [String],
    /// Host ports to forward to the container (`-p`).
    pub ports: &'a [PortMapping],
}

/// One Flatnet network on this host.
pub struct Network {
    config: FlatnetConfig,
    ipam: IpAddressManager<DirLeaseStore>,
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
        let store = DirLeaseStore::new(dirs.leases(), dirs.lock_file());
        let pool = address_pool(&config);
        let ipam = IpAddressManager::new(&config.network, config.subnet, config.gateway, store)
            .with_pool(pool.clone().unwrap_or_default());
        Network {
            config,
            ipam,
            lighthouse,
            id: OnceLock::new(),
            pool_error: pool.err(),
        }
    }

    pub fn config(&self) -> &FlatnetConfig {
        &self.config
    }

    pub fn ipam(&self) -> &IpAddressManager<DirLeaseStore> {
        &self.ipam
    }

    pub fn lighthouse(&self) -> &dyn Lighthouse {
        self.lighthouse.as_ref()
    }

    /// The addresses Podman may hand out for this network on this host (it allocates for
    /// plugin networks itself, from one range): see [`IpAddressManager::runtime_range`].
    pub fn runtime_range(&self) -> Result<(Ipv4Addr, Ipv4Addr)> {
        if let Some(why) = &self.pool_error {
            return Err(Error::InvalidConfig(why.clone()));
        }
        self.ipam.runtime_range().ok_or_else(|| {
            Error::InvalidConfig(format!(
                "this host's blocks of {} leave no address for containers",
                self.config.subnet
            ))
        })
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
        let names = normalise_names(req.names)?;
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
        let ip = self.claim_address(req, &names, &mut undo)?;
        killpoint::here("attach.address_claimed");
        let attachment = self.attachment_for(req, network_id, ip, names, netns.identity()?);

        make_interface(&netns, &attachment)?;
        let iface = attachment.clone();
        undo.push(move || NetworkNamespace::teardown(&iface.netns, &iface.ifname).map(drop));
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

    /// Cleans what attaches and detaches that were killed half-way left, when the runtime will
    /// not ask again (netavark has no GC): records whose namespace is gone, and leases with no
    /// record. Called with the members lock held, under which every attach and detach runs
    /// from start to end, so a lease without a record cannot be one being made right now.
    fn collect_orphans(&self) {
        if let Err(e) = self.try_collect_orphans() {
            tracing::warn!("cleaning after killed plugins: {e}");
        }
    }

    fn try_collect_orphans(&self) -> Result<()> {
        let mut recorded = Vec::new();
        for record in self.attachments()? {
            if NetworkNamespace::open_recorded(&record.netns, record.netns_id).is_ok() {
                recorded.push(record.container_id);
            } else {
                tracing::info!("{} is gone: detaching it", record.container_id);
                self.detach_locked(&record.container_id, None, &record.ifname)?;
            }
        }
        let member = host_member::member_id(&self.config);
        for (ip, lease) in self.ipam.leases()? {
            let id = lease.container_id;
            if id != member && !recorded.contains(&id) {
                tracing::info!("releasing {ip}, leased to {id} by an attach that did not finish");
                self.ipam.release_exact(&id, ip)?;
                self.lighthouse.unregister(&self.config.network, ip, &id)?;
            }
        }
        Ok(())
    }

    /// Removes what writers killed half-way left (their temporary files); called with the
    /// members lock held, under which records and host members are written.
    fn remove_stale_temps(&self) {
        let dirs = self.config.dirs();
        let state_dir = self.config.state_dir.path().to_path_buf();
        for dir in [dirs.attachments(), dirs.root.clone(), state_dir] {
            if let Err(e) = crate::state::remove_stale_temps(&dir) {
                tracing::warn!("cleaning {}: {e}", dir.display());
            }
        }
    }

    fn detach_locked(&self, container_id: &str, netns: Option<&Path>, ifname: &str) -> Result<()> {
        self.stop_serving(container_id);
        killpoint::here("detach.unserved");
        let record = attachment::load(&self.config.dirs(), container_id)?;
        let netns = netns.or(record.as_ref().map(|r| r.netns.as_path()));
        let ifname = record.as_ref().map_or(ifname, |r| r.ifname.as_str());
        if let Some(netns) = netns {
            NetworkNamespace::teardown(netns, ifname)?;
        }
        killpoint::here("detach.interface_removed");
        if let Some(ip) = self.ipam.release_ip(container_id)? {
            self.lighthouse
                .unregister(&self.config.network, ip, container_id)?;
        }
        if let Some(record) = &record {
            self.lighthouse.unregister(
                &self.config.network,
                record.address.addr(),
                container_id,
            )?;
        }
        killpoint::here("detach.address_released");
        remove_if_exists(&self.config.dirs().attachment(container_id))?;
        let had_ports = record.is_some_and(|r| !r.ports.is_empty());
        let member_removed = !self.has_attachments()? && self.remove_host_member()?;
        if had_ports || member_removed {
            self.sync_firewall()?;
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
        let ip = record.address.addr();
        if self.ipam.resolve_ip(container_id)? != Some(ip) {
            return failed(format!("address {ip} is not leased to {container_id}"));
        }
        let entry = self.lighthouse.lookup(&self.config.network, ip)?;
        if entry.is_none_or(|e| e.container_id != container_id) {
            return failed(format!("lighthouse does not map {ip} to {container_id}"));
        }
        let ns = NetworkNamespace::open(netns)?;
        let Some(state) = ns.enter(|inside| inside.interface_state(ifname))? else {
            return failed(format!("interface {ifname} is missing"));
        };
        if !state.addresses.contains(&record.address) {
            return failed(format!("{ifname} lacks address {}", record.address));
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

    /// Could an attach go ahead? The state directory (or where it would be made) must be
    /// writable. Changes nothing, so a readiness probe never leaves state behind.
    pub fn readiness(&self) -> Result<()> {
        let dir = &self.config.state_dir;
        let existing = dir
            .ancestors()
            .find(|d| d.exists())
            .unwrap_or(Path::new("/"));
        if !existing.is_dir() {
            return Err(Error::InvalidConfig(format!(
                "state directory {}: {} is not a directory",
                dir.display(),
                existing.display()
            )));
        }
        nix::unistd::access(existing, nix::unistd::AccessFlags::W_OK).map_err(|e| {
            Error::io(
                format!(
                    "state directory {}: {} is not writable",
                    dir.display(),
                    existing.display()
                ),
                e.into(),
            )
        })?;
        if self.config.dirs().leases().exists() {
            self.ipam.leases()?;
        }
        self.data_plane_readiness()
    }

    /// What an attach needs of this host besides its state: a daemon binary to start, TUN
    /// devices, a readable lighthouse and, once there is one, a usable host key.
    fn data_plane_readiness(&self) -> Result<()> {
        let binary = control::daemon_binary()?;
        if binary.is_absolute() && !binary.is_file() {
            return Err(Error::DataPlane(format!("{} is missing", binary.display())));
        }
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .context(|| "opening /dev/net/tun")?;
        self.lighthouse_readiness()?;
        StaticKeys::load(&self.config.state_dir.host_key())?;
        Ok(())
    }

    /// A file lighthouse must be readable once it exists. An etcd one is the daemon's: its
    /// TLS files must be readable, and a running daemon must be following it.
    fn lighthouse_readiness(&self) -> Result<()> {
        match &self.config.lighthouse {
            LighthouseSettings::File(path) => {
                if path.exists() {
                    self.lighthouse.all_entries()?;
                }
            }
            LighthouseSettings::Etcd(etcd) => {
                for file in [&etcd.ca_file, &etcd.cert_file, &etcd.key_file] {
                    fs::File::open(file).context(|| format!("opening {}", file.display()))?;
                }
                if control::is_running(&self.config.state_dir) {
                    let state = control::status(&self.config.state_dir)?.lighthouse_state;
                    if !state.healthy {
                        return Err(Error::LighthouseUnavailable(format!(
                            "flatnetd cannot follow etcd: {}",
                            state.error.as_deref().unwrap_or("not following yet")
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether containers attached here are without a data plane right now (none runs): what
    /// makes a failed readiness worse for those already running.
    pub fn containers_cut_off(&self) -> bool {
        self.has_attachments().unwrap_or(false) && !control::is_running(&self.config.state_dir)
    }

    /// Detaches every container not in `keep` and frees leases nobody records: what a runtime's
    /// garbage collection (CNI GC) asks for after crashes. Returns how many were cleaned.
    /// One stale container that cannot be cleaned does not stop the others: every one is
    /// tried, and the first failure is reported.
    pub fn collect_garbage(&self, keep: &[&str]) -> Result<usize> {
        {
            let _members = self.lock_members()?;
            self.remove_stale_temps();
        }
        let mut cleaned = 0;
        let mut first_error = None;
        let mut clean = |id: &str, ifname: &str| match self.detach(id, None, ifname) {
            Ok(()) => cleaned += 1,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        };
        for record in self.attachments()? {
            if !keep.contains(&record.container_id.as_str()) {
                clean(&record.container_id, &record.ifname);
            }
        }
        let member = host_member::member_id(&self.config);
        for (_, lease) in self.ipam.leases()? {
            let id = lease.container_id.as_str();
            if !keep.contains(&id) && id != member {
                clean(id, &lease.ifname);
            }
        }
        first_error.map_or(Ok(cleaned), Err)
    }

    /// Attach and detach of every network of this state directory take turns: they decide
    /// whether a host member comes or goes, and which host ports are taken.
    fn lock_members(&self) -> Result<FileLock> {
        FileLock::acquire(&self.config.state_dir.members_lock())
    }

    /// Makes sure the network has its host member here; true if this call created it.
    fn ensure_host_member<'a>(&'a self, undo: &mut Undo<'a>) -> Result<bool> {
        let dirs = self.config.dirs();
        if let Some(member) = HostMember::load(&dirs)? {
            if member.has_interface()? {
                return Ok(false);
            }
            // Recorded but gone (deleted by hand): make it again, and the rules that name it.
            member.create_interface()?;
            return Ok(true);
        }
        // A member whose creation was killed half-way left at most its lease and lighthouse
        // entry: `allocate_highest` hands the same lease back and the entry is re-registered.
        undo.push(|| self.remove_host_member().map(drop));
        let id = host_member::member_id(&self.config);
        let lease = Lease {
            container_id: id.clone(),
            ifname: host_member::member_ifname(&self.config),
        };
        let mut taken = Vec::new();
        let address = loop {
            let ip = self.ipam.allocate_highest(&lease, &taken)?;
            match self.lighthouse.register(&self.entry(ip, &id, Vec::new())?) {
                Ok(()) => break ip,
                // Another host's member (or container) holds it in the lighthouse.
                Err(Error::AddressInUse { .. }) if taken.len() < CLAIM_ATTEMPTS => {
                    self.ipam.release_exact(&id, ip)?;
                    taken.push(ip);
                }
                Err(e) => return Err(e),
            }
        };
        // The record first: whatever exists of a member, its record says how to remove it.
        let member = HostMember::describe(&self.config, address)?;
        member.save(&dirs)?;
        member.create_interface()?;
        Ok(true)
    }

    /// Removes the host member: interface, lease, lighthouse entry, record. Every part is
    /// derived from the configuration, so a member whose creation was cut short goes too.
    /// Returns whether there was anything of it.
    fn remove_host_member(&self) -> Result<bool> {
        let dirs = self.config.dirs();
        let recorded = HostMember::load(&dirs)?;
        let id = host_member::member_id(&self.config);
        if let Some(member) = &recorded {
            member.remove_interface()?;
        }
        let released = self.ipam.release_ip(&id)?;
        for ip in released
            .into_iter()
            .chain(recorded.as_ref().map(|m| m.address))
        {
            self.lighthouse.unregister(&self.config.network, ip, &id)?;
        }
        HostMember::forget(&dirs)?;
        Ok(recorded.is_some() || released.is_some())
    }

    /// A host port another Flatnet container of this state directory publishes is refused.
    fn refuse_taken_ports(&self, req: &AttachRequest) -> Result<()> {
        if req.ports.is_empty() {
            return Ok(());
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

    /// Rewrites this state directory's nftables table from the records on disk.
    fn sync_firewall(&self) -> Result<()> {
        let state_dir = &self.config.state_dir;
        let mut rules = firewall::Ruleset::default();
        for network in list_dir(&state_dir.networks())? {
            let dirs = NetworkDirs { root: network };
            if let Some(member) = HostMember::load(&dirs)? {
                rules.networks.push(firewall::NetworkRules {
                    ifname: member.ifname,
                    subnet: member.subnet,
                    internal: member.internal,
                });
            }
            for record in attachment::in_network(&dirs)? {
                rules
                    .forwards
                    .extend(record.ports.iter().map(|mapping| firewall::Forward {
                        container: record.address.addr(),
                        mapping: *mapping,
                    }));
            }
        }
        firewall::apply(&host_member::firewall_table(&self.config), &rules)
    }

    /// Reserves an address locally and claims it in the lighthouse. Another host may hold an
    /// address our local leases think is free; then the next one is tried.
    fn claim_address<'a>(
        &'a self,
        req: &AttachRequest,
        names: &[String],
        undo: &mut Undo<'a>,
    ) -> Result<Ipv4Addr> {
        let lease = Lease {
            container_id: req.container_id.to_string(),
            ifname: req.ifname.to_string(),
        };
        for _ in 0..CLAIM_ATTEMPTS {
            let ip = self.ipam.allocate_ip(&lease, req.static_ip)?;
            let entry = self.entry(ip, req.container_id, names.to_vec())?;
            match self.lighthouse.register(&entry) {
                Ok(()) => {
                    let id = req.container_id.to_string();
                    undo.push(move || self.ipam.release_exact(&id, ip));
                    let id = req.container_id.to_string();
                    undo.push(move || self.lighthouse.unregister(&self.config.network, ip, &id));
                    return Ok(ip);
                }
                Err(e @ Error::AddressInUse { .. }) if req.static_ip.is_some() => {
                    self.ipam.release_exact(req.container_id, ip)?;
                    return Err(e);
                }
                Err(Error::AddressInUse { .. }) => {
                    // Another host holds it. The allocator's round-robin cursor is already past
                    // this address, so the next attempt picks a different one.
                    self.ipam.release_exact(req.container_id, ip)?;
                }
                Err(e) => {
                    self.ipam.release_exact(req.container_id, ip)?;
                    return Err(e);
                }
            }
        }
        Err(Error::AddressExhausted {
            network: self.config.network.clone(),
            subnet: self.config.subnet.to_string(),
        })
    }

    /// A record left by a container whose namespace is gone (a crash, a reboot of the runtime)
    /// must not block the new attach; one in the same live namespace means a double ADD.
    fn clear_stale_record(&self, req: &AttachRequest) -> Result<()> {
        let Some(record) = attachment::load(&self.config.dirs(), req.container_id)? else {
            return Ok(());
        };
        if record.netns == req.netns && record.netns.exists() {
            return Err(Error::AlreadyAttached {
                container_id: req.container_id.to_string(),
                network: self.config.network.clone(),
            });
        }
        self.detach_locked(req.container_id, None, &record.ifname)
    }

    fn entry(&self, ip: Ipv4Addr, id: &str, names: Vec<String>) -> Result<Entry> {
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
        ip: Ipv4Addr,
        names: Vec<String>,
        netns_id: NetnsId,
    ) -> Attachment {
        Attachment {
            version: attachment::RECORD_VERSION,
            network: self.config.network.clone(),
            network_id,
            container_id: req.container_id.to_string(),
            ifname: req.ifname.to_string(),
            netns: req.netns.to_path_buf(),
            address: Ipv4Net::new(ip, self.config.subnet.prefix_len()).expect("valid prefix"),
            gateway: self.config.gateway,
            mac: attachment::mac_for(ip),
            mtu: self.config.mtu,
            names,
            ports: req.ports.to_vec(),
            egress: !self.config.internal,
            netns_id: Some(netns_id),
        }
    }

    /// What this network needs of its host's daemon; its knobs stay the operator's.
    fn daemon_settings(&self) -> DaemonConfig {
        DaemonConfig {
            state_dir: self.config.state_dir.clone(),
            lighthouse: self.config.lighthouse.clone(),
            listen: self.config.endpoint,
            tuning: Default::default(),
        }
    }

    /// Tells the data plane to serve the container (it reads the record just written).
    fn start_serving(&self, container_id: &str) -> Result<()> {
        let request = DataPlaneRequest::Attach {
            network: self.config.network.clone(),
            container_id: container_id.to_string(),
        };
        control::call(&self.config.state_dir, request).map(drop)
    }

    /// Tells a running data plane to let go of the container's queue. No daemon, nothing to
    /// let go of; an unreachable one will find the device gone on its own.
    fn stop_serving(&self, container_id: &str) {
        if !control::is_running(&self.config.state_dir) {
            return;
        }
        let request = DataPlaneRequest::Detach {
            network: self.config.network.clone(),
            container_id: container_id.to_string(),
        };
        if let Err(e) = control::call(&self.config.state_dir, request) {
            tracing::warn!("flatnetd did not detach {container_id}: {e}");
        }
    }

    /// Does the data plane hold the container's queue?
    fn is_served(&self, container_id: &str) -> Result<bool> {
        if !control::is_running(&self.config.state_dir) {
            return Ok(false);
        }
        let status = control::status(&self.config.state_dir)?;
        Ok(status.serves(&self.config.network, container_id))
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

/// The parts of the subnet this host hands out: all of it with a file lighthouse; with etcd,
/// the blocks the network CA granted this host (so hosts never hand out the same address).
pub fn address_pool(config: &FlatnetConfig) -> std::result::Result<Vec<Ipv4Net>, String> {
    let LighthouseSettings::Etcd(etcd) = &config.lighthouse else {
        return Ok(vec![config.subnet]);
    };
    let ca: crate::cert::CaCert =
        crate::cert::load(&etcd.network_ca_file).map_err(|e| e.to_string())?;
    let host =
        crate::cert::load_host_cert(&etcd.host_cert_file, &ca, None).map_err(|e| e.to_string())?;
    let blocks = host.blocks_in(config.subnet);
    if blocks.is_empty() {
        return Err(format!(
            "host certificate {} ({}) grants no block of subnet {}",
            etcd.host_cert_file.display(),
            host.name,
            config.subnet
        ));
    }
    Ok(blocks)
}

/// Creates, addresses and raises the container's TUN device. If a step after the creation
/// fails, the device is removed again; an interface that existed before is never touched.
fn make_interface(netns: &NetworkNamespace, attachment: &Attachment) -> Result<()> {
    netns.enter(|inside| {
        let device = inside.create_interface(&attachment.ifname, attachment.mtu)?;
        let configured = inside
            .assign_ip(&device, attachment.address)
            .and_then(|()| inside.set_up(&device))
            .and_then(|()| match attachment.egress {
                true => inside.add_default_route(&device, attachment.gateway),
                false => Ok(()),
            });
        if configured.is_err() {
            let _ = inside.remove_interface(&device.name);
        }
        configured
    })
}

/// The container's DNS names, normalised and deduplicated; a name DNS cannot carry is refused.
fn normalise_names(names: &[String]) -> Result<Vec<String>> {
    let mut normalised: Vec<String> = Vec::new();
    for name in names {
        let name = normalise_name(name).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "name {name:?} is not a DNS name (letters, digits, '-', '_' and '.', labels up to 63)"
            ))
        })?;
        if !normalised.contains(&name) {
            normalised.push(name);
        }
    }
    Ok(normalised)
}

/// Compensating actions, run newest first unless the operation commits.
#[derive(Default)]
struct Undo<'a> {
    steps: Vec<Box<dyn FnOnce() -> Result<()> + 'a>>,
}

impl<'a> Undo<'a> {
    fn push(&mut self, step: impl FnOnce() -> Result<()> + 'a) {
        self.steps.push(Box::new(step));
    }

    fn commit(mut self) {
        self.steps.clear();
    }
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        while let Some(step) = self.steps.pop() {
            // Best effort: the original error is what the caller needs to see.
            let _ = step();
        }
    }
}
