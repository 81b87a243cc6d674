//! flatnet-cni under a rootless runtime: every command is a request to the host's flatnetd on
//! its user socket, which holds it to what the operator granted the user (docs/podman.md,
//! "Rootless"). The conflist names the network; its definition is the grant's.

use std::env;
use std::fs::File;
use std::path::Path;

use flatnet::users::protocol::UserRequest;
use flatnet::users::UserSocket;
use flatnet::Error;
use flatnet_cni::protocol::{self, code, CniArgs, CniError, NetConf};
use serde_json::Value;

use crate::required_env;

pub fn run(command: &str, conf: &NetConf) -> Result<Option<Value>, CniError> {
    let socket = UserSocket::new(conf.user_socket.as_deref().map(Path::new));
    match command {
        "ADD" => add(&socket, conf).map(Some),
        "DEL" => del(&socket, conf).map(|()| None),
        "CHECK" => check(&socket, conf).map(|()| None),
        // Ready when the daemon answers and grants the network.
        "STATUS" => socket
            .network(&conf.name)
            .map(|_| None)
            .map_err(|e| CniError::new(code::NOT_AVAILABLE, e.to_string())),
        "GC" => gc(&socket, conf).map(|()| None),
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"),
        )),
    }
}

fn add(socket: &UserSocket, conf: &NetConf) -> Result<Value, CniError> {
    let netns = required_env("CNI_NETNS")?;
    let args = CniArgs::parse(&env::var("CNI_ARGS").unwrap_or_default())?;
    let namespace = File::open(&netns).map_err(|source| Error::Io {
        context: format!("opening the container's network namespace {netns}"),
        source,
    })?;
    let request = UserRequest::Attach {
        network: conf.name.clone(),
        container_id: required_env("CNI_CONTAINERID")?,
        ifname: required_env("CNI_IFNAME")?,
        static_ips: args.ips,
        names: args.name.into_iter().chain(conf.aliases()).collect(),
        ports: conf.port_mappings()?,
    };
    let attachment = socket.attach(&request, &namespace)?;
    let ours = protocol::add_result(&conf.cni_version, &attachment, &netns);
    Ok(protocol::chain_result(ours, conf.prev_result.as_ref()))
}

fn del(socket: &UserSocket, conf: &NetConf) -> Result<(), CniError> {
    let container_id = required_env("CNI_CONTAINERID")?;
    let ifname = required_env("CNI_IFNAME")?;
    Ok(socket.detach(&conf.name, &container_id, &ifname)?)
}

/// The daemon serves the container for this user on this network.
fn check(socket: &UserSocket, conf: &NetConf) -> Result<(), CniError> {
    let container_id = required_env("CNI_CONTAINERID")?;
    let served = socket
        .containers()?
        .iter()
        .any(|m| m.network == conf.name && m.container_id == container_id);
    if served {
        Ok(())
    } else {
        Err(Error::CheckFailed(format!(
            "flatnetd does not serve {container_id} on {}",
            conf.name
        ))
        .into())
    }
}

/// The user's containers on the network that the runtime no longer knows go.
fn gc(socket: &UserSocket, conf: &NetConf) -> Result<(), CniError> {
    let Some(valid) = conf.valid_attachments.as_deref() else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "GC needs cni.dev/valid-attachments (the attachments still in use); refusing to guess",
        ));
    };
    let stale = socket.containers()?.into_iter().filter(|m| {
        m.network == conf.name && !valid.iter().any(|a| a.container_id == m.container_id)
    });
    for member in stale {
        socket.detach(&conf.name, &member.container_id, &member.ifname)?;
    }
    Ok(())
}
