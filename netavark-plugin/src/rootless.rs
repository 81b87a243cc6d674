//! The plugin under rootless Podman: it may not make devices or touch Flatnet's state, so
//! every step is a request to the host's flatnetd on its user socket, which holds it to what
//! the operator granted the user (docs/podman.md, "Rootless").

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use flatnet::users::protocol::{GrantedNetwork, UserRequest};
use flatnet::users::UserSocket;
use flatnet::{Attachment, Error};
use netavark::network::types::{LeaseRange, Network, NetworkPluginExec, Subnet};

use crate::translate;

/// The one option a rootless network takes: everything else the operator's grant defines.
pub const USER_SOCKET: &str = "user_socket";

fn socket_of(network: &Network) -> Result<UserSocket, Error> {
    let options = network.options.clone().unwrap_or_default();
    if let Some(other) = options.keys().find(|k| *k != USER_SOCKET) {
        return Err(Error::InvalidConfig(format!(
            "option {other:?} is the operator's on a rootless network (its grant in \
             /etc/flatnet/users.json defines the network); rootless networks take only {USER_SOCKET}"
        )));
    }
    Ok(UserSocket::new(options.get(USER_SOCKET).map(Path::new)))
}

/// `podman network create` as a user: the network as the operator granted it, with the
/// address range this user's Podman may allocate from.
pub fn create(mut network: Network) -> Result<Network, Error> {
    let granted = socket_of(&network)?.network(&network.name)?;
    let given = network.subnets.take().unwrap_or_default();
    if let Some(other) = given
        .iter()
        .find(|s| !granted.subnets.iter().any(|g| g.subnet == s.subnet))
    {
        return Err(Error::InvalidConfig(format!(
            "network {} is granted with subnets {}, not {}: leave --subnet out",
            granted.network,
            subnets_text(&granted),
            other.subnet
        )));
    }
    network.subnets = Some(
        granted
            .subnets
            .iter()
            .map(|s| Subnet {
                subnet: s.subnet,
                gateway: Some(s.gateway),
                lease_range: Some(LeaseRange {
                    start_ip: Some(s.first.to_string()),
                    end_ip: Some(s.last.to_string()),
                }),
            })
            .collect(),
    );
    network.ipv6_enabled = granted.subnets.iter().any(|s| s.subnet.addr().is_ipv6());
    network.internal = granted.internal;
    network.dns_enabled = true;
    network.options.get_or_insert_with(HashMap::new);
    Ok(network)
}

fn subnets_text(granted: &GrantedNetwork) -> String {
    let texts: Vec<String> = granted
        .subnets
        .iter()
        .map(|s| s.subnet.to_string())
        .collect();
    texts.join(", ")
}

pub fn setup(netns: &str, opts: &NetworkPluginExec) -> Result<Attachment, Error> {
    let socket = socket_of(&opts.network)?;
    let options = &opts.network_options;
    translate::refuse_container_options(options)?;
    let namespace = File::open(netns).map_err(|source| Error::Io {
        context: format!("opening the container's network namespace {netns}"),
        source,
    })?;
    let request = UserRequest::Attach {
        network: opts.network.name.clone(),
        container_id: opts.container_id.clone(),
        ifname: options.interface_name.clone(),
        static_ips: translate::static_ips(options)?,
        names: translate::names(opts),
        ports: translate::ports(opts)?,
    };
    socket.attach(&request, &namespace)
}

pub fn teardown(opts: &NetworkPluginExec) -> Result<(), Error> {
    let socket = socket_of(&opts.network)?;
    let ifname = &opts.network_options.interface_name;
    socket.detach(&opts.network.name, &opts.container_id, ifname)
}
