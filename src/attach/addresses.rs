//! Addresses: claimed locally and in the lighthouse, from the blocks this host may hand out.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::undo::Undo;
use super::{AttachRequest, Network};
use crate::config::FlatnetConfig;
use crate::error::{Error, Result};
use crate::ipam::Lease;
use crate::lighthouse::LighthouseSettings;

/// How many addresses an attach tries when other hosts have claimed the ones it picked.
pub(super) const CLAIM_ATTEMPTS: usize = 64;

impl Network {
    /// Reserves an address locally and claims it in the lighthouse. Another host may hold an
    /// address our local leases think is free; then the next one is tried.
    pub(super) fn claim_address<'a>(
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
}

/// The parts of the subnet this host hands out: all of it with a file lighthouse; with etcd,
/// the blocks the network CA granted this host (so hosts never hand out the same address).
pub fn address_pool(config: &FlatnetConfig) -> std::result::Result<Vec<Ipv4Net>, String> {
    let LighthouseSettings::Etcd(etcd) = &config.lighthouse else {
        return Ok(vec![config.subnet]);
    };
    let trust = crate::cert::TrustBundle::load(&etcd.network_ca_file).map_err(|e| e.to_string())?;
    let host = crate::cert::load_host_cert(&etcd.host_cert_file, &trust, None)
        .map_err(|e| e.to_string())?;
    if host.network_id(&config.network).is_none() {
        return Err(format!(
            "host certificate {} ({}) does not name network {}: the network CA must sign it \
             with --network {}",
            etcd.host_cert_file.display(),
            host.name,
            config.network,
            config.network
        ));
    }
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
