//! flatnetd's answers to rootless users: every request is checked against the operator's
//! grants and against what the caller already owns, then done with the same attach and detach
//! a rootful plugin runs, on a network defined by the grant and served by this daemon.

use std::collections::HashSet;
use std::fs::File;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;

use super::grants::{Caller, Grants, NetworkGrant};
use super::protocol::{GrantedNetwork, GrantedSubnet, UserReply, UserRequest};
use super::{abandoned, pins};
use crate::attach::{AttachRequest, Network};
use crate::attachment::{self, Attachment};
use crate::config::{ConfigInput, FlatnetConfig, SubnetInput};
use crate::control::{self, DaemonConfig};
use crate::error::{Error, Result};
use crate::netns::NetworkNamespace;
use crate::portmap::PortMapping;

pub struct UserService {
    daemon: DaemonConfig,
    grants: PathBuf,
    /// One change at a time: what is counted and checked (quota, owners, names) stays true
    /// until the change it allowed is done.
    changes: Mutex<()>,
}

impl UserService {
    pub fn new(daemon: DaemonConfig, grants: PathBuf) -> Self {
        UserService {
            daemon,
            grants,
            changes: Mutex::new(()),
        }
    }

    pub fn state_dir(&self) -> &crate::state::StateDir {
        &self.daemon.state_dir
    }

    /// How long a container's namespace may stay empty before it is taken away.
    pub fn grace(&self) -> std::time::Duration {
        self.daemon.tuning.abandoned_after()
    }

    pub fn grants(&self) -> Result<Grants> {
        Grants::load(&self.grants)
    }

    pub fn answer(
        &self,
        caller: &Caller,
        request: UserRequest,
        netns: Option<File>,
    ) -> Result<UserReply> {
        match request {
            UserRequest::Network { network } => self.granted(caller, &network),
            UserRequest::Attach {
                network,
                container_id,
                ifname,
                static_ips,
                names,
                ports,
            } => {
                let netns = netns.ok_or_else(|| {
                    Error::InvalidRequest(
                        "an attach carries the container's network namespace".into(),
                    )
                })?;
                let request = AttachRequest {
                    container_id: &container_id,
                    netns: std::path::Path::new(""),
                    ifname: &ifname,
                    static_ips: &static_ips,
                    names: &names,
                    ports: &ports,
                    owner: Some(caller.uid),
                };
                self.attach(caller, &network, request, &netns)
                    .map(|a| UserReply::Attached(Box::new(a)))
            }
            UserRequest::Detach {
                network,
                container_id,
                ifname,
            } => self
                .detach(caller, &network, &container_id, &ifname)
                .map(|()| UserReply::Done),
            UserRequest::Status => self.status(caller).map(UserReply::Containers),
        }
    }

    /// The network served by this daemon as the grant defines it.
    fn open(&self, name: &str, grant: &NetworkGrant) -> Result<Network> {
        let mut config = FlatnetConfig::from_input(ConfigInput {
            network: name.to_string(),
            subnets: grant
                .subnets
                .iter()
                .map(|s| SubnetInput::new(s.to_string(), None))
                .collect(),
            mtu: grant.mtu.map(|m| m.to_string()),
            internal: grant.internal,
            ingress_filter: Some("true".into()),
            ..ConfigInput::default()
        })?;
        config.state_dir = self.daemon.state_dir.clone();
        config.lighthouse = self.daemon.lighthouse.clone();
        config.endpoint = self.daemon.listen;
        config.tunnel_port = self.daemon.listen.port();
        Ok(Network::open(config))
    }

    fn granted(&self, caller: &Caller, name: &str) -> Result<UserReply> {
        let grants = self.grants()?;
        let grant = grants.network(caller, name)?;
        let network = self.open(name, grant)?;
        let ranges = network.runtime_ranges()?;
        let own = grant.blocks_of(caller);
        let subnets = network.config().subnets.iter().zip(ranges);
        let subnets = subnets.map(|(subnet, (first, last))| {
            let block = own.iter().find(|b| b.addr().is_ipv4() == subnet.is_ipv4());
            let (first, last) = match block {
                Some(b) => (first.max(b.network()), last.min(b.broadcast())),
                None => (first, last),
            };
            if first > last {
                return Err(Error::NotPermitted(format!(
                    "{}'s block of {name} lies outside this host's addresses of {}",
                    caller.name, subnet.net
                )));
            }
            Ok(GrantedSubnet {
                subnet: subnet.net,
                gateway: subnet.gateway,
                first,
                last,
            })
        });
        Ok(UserReply::Network(GrantedNetwork {
            network: name.to_string(),
            subnets: subnets.collect::<Result<_>>()?,
            mtu: network.config().mtu,
            internal: network.config().internal,
        }))
    }

    fn attach(
        &self,
        caller: &Caller,
        name: &str,
        request: AttachRequest,
        netns: &File,
    ) -> Result<Attachment> {
        // Before anything: the id names the namespace's pin on disk.
        attachment::check_container_id(request.container_id)?;
        check_namespace_owner(caller, netns)?;
        let grants = self.grants()?;
        let grant = grants.network(caller, name)?;
        let _one = self.changes.lock().expect("user changes lock");
        let network = self.open(name, grant)?;
        let records = network.attachments()?;
        let cid = request.container_id;
        check_room(caller, name, grant, &records, cid)?;
        let static_ips = from_own_blocks(&network, grant, caller, request.static_ips)?;
        for &ip in &static_ips {
            grant.check_address(caller, name, ip)?;
        }
        check_names(caller, name, &records, request.names)?;
        check_ports(request.ports)?;
        let state = &self.daemon.state_dir;
        let pin = pins::pin(state, caller.uid, cid, netns)?;
        let attached = network.attach(&AttachRequest {
            netns: &pin,
            static_ips: &static_ips,
            ..request
        });
        if attached.is_err() {
            let _ = pins::unpin(state, caller.uid, cid);
        }
        attached
    }

    fn detach(&self, caller: &Caller, name: &str, cid: &str, ifname: &str) -> Result<()> {
        attachment::check_container_id(cid)?;
        // Taking a container away needs the network's definition, not the right to join:
        // a user whose grant was withdrawn still removes their containers.
        let grants = self.grants()?;
        let grant = grants.networks.get(name).ok_or_else(|| {
            Error::NotPermitted(format!("network {name} is not open to rootless users"))
        })?;
        let _one = self.changes.lock().expect("user changes lock");
        let network = self.open(name, grant)?;
        let state = &self.daemon.state_dir;
        match attachment::load(&network.config().dirs(), cid)? {
            Some(record) if record.owner != Some(caller.uid) => {
                return Err(Error::NotPermitted(format!(
                    "container {cid} on {name} is not {}'s",
                    caller.name
                )))
            }
            // Neither a record nor an attach of theirs under way: nothing of theirs to undo.
            None if !pins::exists(state, caller.uid, cid) => return Ok(()),
            _ => {}
        }
        self.take_off(&network, caller.uid, cid, ifname)
    }

    /// The detach a rootful plugin runs, then the namespace's pin released.
    fn take_off(&self, network: &Network, uid: u32, cid: &str, ifname: &str) -> Result<()> {
        network.detach(cid, None, ifname)?;
        pins::unpin(&self.daemon.state_dir, uid, cid)
    }

    /// Takes away the rootless containers whose namespace no process has used for the grace
    /// (`--abandoned-after`) since their attach ([`abandoned`]): their addresses, names and
    /// quota go back to their users. Returns how many went; one that cannot go does not keep
    /// the others.
    pub fn reclaim_abandoned(&self) -> Result<usize> {
        let grace = self.grace();
        let _one = self.changes.lock().expect("user changes lock");
        let state = &self.daemon.state_dir;
        let found = abandoned::find(state, grace)?;
        if found.is_empty() {
            return Ok(0);
        }
        let grants = self.grants()?;
        let mut reclaimed = 0;
        let mut first_error = None;
        for record in found {
            let (name, cid) = (&record.network, &record.container_id);
            let Some(grant) = grants.networks.get(name) else {
                tracing::warn!("{cid} on {name} is abandoned, but no grant defines {name}");
                continue;
            };
            let owner = record.owner.expect("a user's record");
            let taken = self
                .open(name, grant)
                .and_then(|network| self.take_off(&network, owner, cid, &record.ifname));
            match taken {
                Ok(()) => {
                    tracing::info!(
                        "took {cid} off {name}: no process has used its namespace for {grace:?}"
                    );
                    reclaimed += 1;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(reclaimed), Err)
    }

    /// The daemon's view of the caller's containers, and of nobody else's.
    fn status(&self, caller: &Caller) -> Result<Vec<control::status::MemberStatus>> {
        let owned: HashSet<(String, String)> = attachment::all(&self.daemon.state_dir)?
            .into_iter()
            .filter(|r| r.owner == Some(caller.uid))
            .map(|r| (r.network, r.container_id))
            .collect();
        let status = control::status(&self.daemon.state_dir)?;
        Ok(status
            .containers
            .into_iter()
            .filter(|m| owned.contains(&(m.network.clone(), m.container_id.clone())))
            .collect())
    }
}

/// The container id is new on the network (or the caller's, attached already: refused as
/// such), and the caller is under the grant's number of containers.
fn check_room(
    caller: &Caller,
    name: &str,
    grant: &NetworkGrant,
    records: &[Attachment],
    cid: &str,
) -> Result<()> {
    if let Some(record) = records.iter().find(|r| r.container_id == cid) {
        return Err(if record.owner == Some(caller.uid) {
            Error::AlreadyAttached {
                container_id: cid.to_string(),
                network: name.to_string(),
            }
        } else {
            Error::NotPermitted(format!(
                "container {cid} on {name} is not {}'s",
                caller.name
            ))
        });
    }
    let owned = records.iter().filter(|r| r.owner == Some(caller.uid));
    if owned.count() >= grant.max_containers {
        return Err(Error::NotPermitted(format!(
            "{} has the {} containers on {name} the grant allows",
            caller.name, grant.max_containers
        )));
    }
    Ok(())
}

/// The namespace must be the caller's own: owned by a user namespace they own. A rootful
/// container's namespace, the host's, or another user's are refused.
fn check_namespace_owner(caller: &Caller, netns: &File) -> Result<()> {
    let owner = NetworkNamespace::owner_uid(netns)?;
    if owner == caller.uid {
        Ok(())
    } else {
        Err(Error::NotPermitted(format!(
            "the network namespace given belongs to uid {owner}, not to {} (uid {})",
            caller.name, caller.uid
        )))
    }
}

/// The addresses to attach with: those given (Podman 5 allocates a plugin network's itself),
/// and for each subnet without one where the caller has a block, the block's first free
/// address (a CNI runtime leaves allocation to the plugin).
fn from_own_blocks(
    network: &Network,
    grant: &NetworkGrant,
    caller: &Caller,
    given: &[IpAddr],
) -> Result<Vec<IpAddr>> {
    let mut ips = given.to_vec();
    for (subnet, ipam) in network.config().subnets.iter().zip(network.ipams()) {
        let family = |b: &&ipnet::IpNet| b.addr().is_ipv4() == subnet.is_ipv4();
        let Some(block) = grant.blocks_of(caller).iter().find(family) else {
            continue;
        };
        if ips.iter().any(|ip| subnet.net.contains(ip)) {
            continue;
        }
        let taken: HashSet<IpAddr> = ipam.leases()?.into_iter().map(|(ip, _)| ip).collect();
        let reserved = [subnet.gateway, subnet.net.network(), subnet.net.broadcast()];
        let free = block
            .hosts()
            .find(|ip| !taken.contains(ip) && !reserved.contains(ip))
            .ok_or_else(|| Error::AddressExhausted {
                network: network.config().network.clone(),
                subnet: block.to_string(),
            })?;
        ips.push(free);
    }
    Ok(ips)
}

/// A name on the network is its first holder's: another user's container (or root's) keeps it.
fn check_names(
    caller: &Caller,
    name: &str,
    records: &[Attachment],
    names: &[String],
) -> Result<()> {
    let others = records.iter().filter(|r| r.owner != Some(caller.uid));
    for record in others {
        let wanted = |n: &String| names.iter().any(|w| w.eq_ignore_ascii_case(n));
        if let Some(taken) = record.names.iter().find(|n| wanted(n)) {
            return Err(Error::NotPermitted(format!(
                "the name {taken} on {name} belongs to another user's container"
            )));
        }
    }
    Ok(())
}

/// Host ports below the kernel's unprivileged start are root's, as for any rootless program.
fn check_ports(ports: &[PortMapping]) -> Result<()> {
    let start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse::<u16>().ok())
        .unwrap_or(1024);
    let privileged = ports
        .iter()
        .flat_map(PortMapping::ports)
        .find(|&(host, _)| host < start);
    match privileged {
        Some((port, _)) => Err(Error::NotPermitted(format!(
            "host port {port} is privileged (below {start}): rootless containers publish \
             unprivileged ports only"
        ))),
        None => Ok(()),
    }
}
