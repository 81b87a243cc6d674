//! Addresses: claimed locally and in the lighthouse, from the blocks this host may hand out.

use std::net::IpAddr;

use ipnet::IpNet;

use super::undo::Undo;
use super::{AttachRequest, Network};
use crate::config::FlatnetConfig;
use crate::error::{Error, Result};
use crate::ipam::{DirLeaseStore, IpAddressManager, Lease};
use crate::lighthouse::LighthouseSettings;

/// How many addresses an attach tries when other hosts have claimed the ones it picked.
pub(super) const CLAIM_ATTEMPTS: usize = 64;

impl Network {
    /// Claims one address in each subnet of the network, in the configuration's order: a
    /// requested one where the request names one of the subnet's family, else IPAM's pick.
    pub(super) fn claim_addresses<'a>(
        &'a self,
        req: &AttachRequest,
        names: &[String],
        undo: &mut Undo<'a>,
    ) -> Result<Vec<IpAddr>> {
        let requested = self.requested_per_subnet(req.static_ips)?;
        let mut ips = Vec::with_capacity(self.ipams.len());
        for (ipam, requested) in self.ipams.iter().zip(requested) {
            ips.push(self.claim_address(ipam, req, requested, names, undo)?);
        }
        Ok(ips)
    }

    /// Matches requested addresses to subnets: each must lie in one, and at most one per
    /// subnet.
    fn requested_per_subnet(&self, static_ips: &[IpAddr]) -> Result<Vec<Option<IpAddr>>> {
        let mut per_subnet = vec![None; self.ipams.len()];
        for &ip in static_ips {
            let Some(at) = self.ipams.iter().position(|i| i.subnet().contains(&ip)) else {
                return Err(Error::InvalidRequest(format!(
                    "requested address {ip} is in no subnet of network {} ({})",
                    self.config.network,
                    self.config.subnets_text()
                )));
            };
            if let Some(other) = per_subnet[at].replace(ip) {
                return Err(Error::InvalidRequest(format!(
                    "requested addresses {other} and {ip} are both in {}: one per subnet",
                    self.ipams[at].subnet()
                )));
            }
        }
        Ok(per_subnet)
    }

    /// Reserves an address locally and claims it in the lighthouse. Another host may hold an
    /// address our local leases think is free; then the next one is tried.
    fn claim_address<'a>(
        &'a self,
        ipam: &'a IpAddressManager<DirLeaseStore>,
        req: &AttachRequest,
        requested: Option<IpAddr>,
        names: &[String],
        undo: &mut Undo<'a>,
    ) -> Result<IpAddr> {
        let lease = Lease {
            container_id: req.container_id.to_string(),
            ifname: req.ifname.to_string(),
        };
        for _ in 0..CLAIM_ATTEMPTS {
            let ip = ipam.allocate_ip(&lease, requested)?;
            let entry = self.entry(ip, req.container_id, names.to_vec())?;
            match self.lighthouse.register(&entry) {
                Ok(()) => {
                    let id = req.container_id.to_string();
                    undo.push(move || ipam.release_exact(&id, ip));
                    let id = req.container_id.to_string();
                    undo.push(move || self.lighthouse.unregister(&self.config.network, ip, &id));
                    return Ok(ip);
                }
                Err(e @ Error::AddressInUse { .. }) if requested.is_some() => {
                    ipam.release_exact(req.container_id, ip)?;
                    return Err(e);
                }
                Err(Error::AddressInUse { .. }) => {
                    // Another host holds it. The allocator's round-robin cursor is already past
                    // this address, so the next attempt picks a different one.
                    ipam.release_exact(req.container_id, ip)?;
                }
                Err(e) => {
                    ipam.release_exact(req.container_id, ip)?;
                    return Err(e);
                }
            }
        }
        Err(Error::AddressExhausted {
            network: self.config.network.clone(),
            subnet: ipam.subnet().to_string(),
        })
    }
}

/// The parts of each subnet this host hands out, in the configuration's order: all of it with
/// a file lighthouse; with etcd, the blocks the network CA granted this host (so hosts never
/// hand out the same address).
pub fn address_pools(config: &FlatnetConfig) -> std::result::Result<Vec<Vec<IpNet>>, String> {
    let LighthouseSettings::Etcd(etcd) = &config.lighthouse else {
        return Ok(config.subnets.iter().map(|s| vec![s.net]).collect());
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
    config
        .subnets
        .iter()
        .map(|subnet| {
            let blocks = host.blocks_in(subnet.net);
            if blocks.is_empty() {
                return Err(format!(
                    "host certificate {} ({}) grants no block of subnet {}",
                    etcd.host_cert_file.display(),
                    host.name,
                    subnet.net
                ));
            }
            Ok(blocks)
        })
        .collect()
}
