//! `flatnet`: Flatnet as a netavark plugin (Podman >= 4.5 with netavark >= 1.6). The binary's
//! name is the driver name: `podman network create -d flatnet`. Translates netavark's create /
//! setup / teardown into the core's config validation, attach and detach.

mod cli;

use std::collections::HashMap;
use std::error::Error;
use std::path::Path;

use flatnet::users::is_rootless;
use flatnet::{AttachRequest, Network};
use flatnet_netavark::{rootless, translate};
use netavark::network::types::{Network as NetavarkNetwork, NetworkPluginExec, StatusBlock};
use netavark::plugin::{Info, Plugin, PluginExec, API_VERSION};

struct FlatnetPlugin;

impl Plugin for FlatnetPlugin {
    fn create(&self, network: NetavarkNetwork) -> Result<NetavarkNetwork, Box<dyn Error>> {
        if is_rootless() {
            return Ok(rootless::create(network)?);
        }
        Ok(translate::normalise(network)?)
    }

    fn setup(&self, netns: String, opts: NetworkPluginExec) -> Result<StatusBlock, Box<dyn Error>> {
        flatnet::killpoint::here("netavark.setup");
        if is_rootless() {
            return Ok(translate::status_block(&rootless::setup(&netns, &opts)?));
        }
        let network = Network::open(translate::config_of(&opts.network)?);
        let options = &opts.network_options;
        translate::refuse_container_options(options)?;
        let attachment = network.attach(&AttachRequest {
            container_id: &opts.container_id,
            netns: Path::new(&netns),
            ifname: &options.interface_name,
            static_ips: &translate::static_ips(options)?,
            names: &translate::names(&opts),
            ports: &translate::ports(&opts)?,
            owner: None,
        })?;
        Ok(translate::status_block(&attachment))
    }

    /// Called on stop, rm and disconnect, also when the namespace is already gone.
    fn teardown(&self, netns: String, opts: NetworkPluginExec) -> Result<(), Box<dyn Error>> {
        flatnet::killpoint::here("netavark.teardown");
        if is_rootless() {
            return Ok(rootless::teardown(&opts)?);
        }
        let network = Network::open(translate::config_of(&opts.network)?);
        let ifname = &opts.network_options.interface_name;
        network.detach(&opts.container_id, Some(Path::new(&netns)), ifname)?;
        Ok(())
    }
}

fn main() {
    if cli::answer_person() {
        return;
    }
    flatnet::logging::init_plugin();
    let extra = HashMap::from([(
        "description".to_string(),
        "Flatnet: encrypted flat overlay network".to_string(),
    )]);
    let info = Info::new(
        env!("CARGO_PKG_VERSION").to_string(),
        API_VERSION.to_string(),
        Some(extra),
    );
    PluginExec::new(FlatnetPlugin, info).exec();
}
