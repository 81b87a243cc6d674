//! Packets from members (containers and host members): TUN queue -> checks -> a tunnel to
//! another host, or straight to a local member's queue ([`super::local`]: another container
//! of this host, the host reaching a container, a container reaching its gateway or egressing
//! through it), or the DNS resolver for a query to the gateway.

use std::io::{ErrorKind, Read};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use super::offload::{Segments, VNET_HDR_LEN};
use super::packet::{ip_addresses, udp_datagram, NETWORK_ID_LEN};
use super::pmtu::Fit;
use super::routes::Route;
use super::seal_workers::{SealWorkers, Train};
use super::{batched, Buffers, Daemon, DropCounters, SameHost};
use crate::lighthouse::NetworkId;
use crate::tunnel::{sealed_len, DropReason, Sealer};

/// Where a member's packet goes next.
enum Hop {
    /// Sealed for another host.
    Tunnel(Route),
    /// Written as it is (virtio-net header and all) to the member in this queue slot, when the
    /// host member is one end.
    Local(usize),
    /// The same, between two containers of this host: the fast path.
    Neighbour(usize),
    /// A DNS query to the gateway: answered by the data plane.
    Resolver,
}

/// Packets read from one queue per wake-up before others get their turn.
const BATCH: usize = 64;

impl Daemon {
    /// Drains up to a batch of packets from a container's TUN queue. Returns false if the
    /// device is gone (the container's namespace was destroyed) and the queue should go.
    pub(super) fn on_tun_readable(&mut self, slot: usize) -> bool {
        for _ in 0..BATCH {
            let Some(queue) = self.queues.get_mut(slot) else {
                return true;
            };
            let n = match queue.device.read(&mut self.bufs.frame) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return false,
            };
            queue.stats.from_container_packets += 1;
            queue.stats.from_container_bytes += n.saturating_sub(VNET_HDR_LEN) as u64;
            let (network_id, from_host) = (queue.network_id, queue.is_host());
            // Every segment of a train has the train's addresses: check and route once.
            let addresses = ip_addresses(&self.bufs.frame[VNET_HDR_LEN..n]);
            // A container may only speak with its own addresses.
            let spoofed =
                addresses.is_some_and(|(src, _)| !from_host && !queue.addresses.contains(&src));
            let hop = match addresses {
                None => Err(DropReason::NotIp),
                Some(_) if spoofed => Err(DropReason::Spoofed),
                Some((src, dst)) => self.next_hop(network_id, from_host, src, dst, n),
            };
            let result = match hop {
                Ok(Hop::Tunnel(route)) => self.send_train(slot, network_id, route, n),
                Ok(Hop::Local(to)) => self.write_local(to, n),
                Ok(Hop::Neighbour(to)) => self.write_to_neighbour(to, n),
                Ok(Hop::Resolver) => {
                    self.answer_query(slot, network_id, n);
                    Ok(())
                }
                Err(reason) => Err(reason),
            };
            if let Err(reason) = result {
                self.drops.count(reason);
            }
        }
        true
    }

    /// Where a packet from `src` to `dst`, read from a member whose source address was checked
    /// (`from_host`: the host member, which may send from any), goes, if it may go. The first
    /// `n` bytes of `frame` hold it.
    fn next_hop(
        &mut self,
        network_id: NetworkId,
        from_host: bool,
        src: IpAddr,
        dst: IpAddr,
        n: usize,
    ) -> Result<Hop, DropReason> {
        let network = self.networks.get(network_id);
        if let Some(network) = network {
            let to_gateway = network.member.gateways.contains(&dst) && !from_host;
            if to_gateway && is_dns_query(&self.bufs.frame[VNET_HDR_LEN..n]) {
                return Ok(Hop::Resolver);
            }
        }
        // A member of this host on the same network: no tunnel (see `local` for why), unless
        // the operator wants containers' traffic encrypted even here.
        if let Some(local) = self.queues.slot_of(network_id, dst) {
            if from_host || self.queues.get(local).is_some_and(|p| p.is_host()) {
                return Ok(Hop::Local(local));
            }
            if self.config.tuning.same_host() == SameHost::Fast {
                return Ok(Hop::Neighbour(local));
            }
        }
        let Some(network) = network else {
            // No host member here: containers reach each other only.
            return self
                .routes
                .route(network_id, dst)
                .map(Hop::Tunnel)
                .ok_or(DropReason::NoRoute);
        };
        let member = &network.member;
        if member.subnets.iter().any(|s| s.contains(&dst)) {
            // Other hosts know this host's member by its own addresses only.
            if from_host && !member.addresses.contains(&src) {
                return Err(DropReason::Spoofed);
            }
            return self
                .routes
                .route(network_id, dst)
                .map(Hop::Tunnel)
                .ok_or(DropReason::NoRoute);
        }
        // Beyond the network: out through the host member, unless the network is internal.
        match (from_host, member.internal, network.host_slot) {
            (false, false, Some(host)) if may_leave_for(dst) => Ok(Hop::Local(host)),
            _ => Err(DropReason::NoRoute),
        }
    }

    /// Fits the frame to the path, cuts its train into packets, then prefixes each with the
    /// network id, seals it and queues it for `route`: the peer's session is looked up once for
    /// the train, and each packet sealed straight into the send batch, here or by the flow's
    /// sealing worker. `slot` is the sending member's.
    fn send_train(
        &mut self,
        slot: usize,
        network_id: NetworkId,
        route: Route,
        n: usize,
    ) -> Result<(), DropReason> {
        let now = Instant::now();
        let first_hop = self
            .tunnels
            .first_hop(&route.key)
            .unwrap_or((route.endpoint, 0));
        if let Fit::Fragments(mtu) = self.fit_to_path(slot, network_id, first_hop, n, now)? {
            return self.send_fragments(network_id, route, n, mtu, now);
        }
        let segments = Segments::new(&self.bufs.frame[..n]).ok_or(DropReason::Malformed)?;
        let fd = self.udp.as_raw_fd();
        let Some(mut sealer) = self.tunnels.sealer(&route.key, route.endpoint, now) else {
            // No session yet: packet by packet, held until the handshake completes.
            return self.send_unsealed(segments, network_id, route, n, now);
        };
        let result = match &mut self.seal_workers {
            Some(workers) => hand_to_worker(
                workers,
                &mut self.bufs,
                &mut sealer,
                segments,
                network_id,
                n,
                fd,
            ),
            None => {
                seal_here(
                    &mut self.bufs,
                    &mut self.drops,
                    &mut sealer,
                    segments,
                    network_id,
                    n,
                    fd,
                );
                Ok(())
            }
        };
        if sealer.finish() {
            let send = &mut batched(&mut self.bufs.to_send, fd);
            self.tunnels.renew(&route.key, now, send);
        }
        result
    }

    /// The train's packets one by one through the tunnel manager, which holds them while it
    /// sets up a session.
    fn send_unsealed(
        &mut self,
        mut segments: Segments,
        network_id: NetworkId,
        route: Route,
        n: usize,
        now: Instant,
    ) -> Result<(), DropReason> {
        self.bufs.plain[..NETWORK_ID_LEN].copy_from_slice(&network_id.to_be_bytes());
        while let Some(len) = segments.next_into(
            &self.bufs.frame[..n],
            &mut self.bufs.plain[NETWORK_ID_LEN..],
        ) {
            if let Err(reason) = self.send_from_container(route, len, now) {
                self.drops.count(reason);
            }
        }
        Ok(())
    }

    /// `plain[..NETWORK_ID_LEN + len]` holds a packet behind its network id for `route`: seal
    /// and queue it.
    pub(super) fn send_from_container(
        &mut self,
        route: Route,
        len: usize,
        now: Instant,
    ) -> Result<(), DropReason> {
        let fd = self.udp.as_raw_fd();
        self.tunnels.encrypt_packet(
            &route.key,
            route.endpoint,
            &self.bufs.plain[..NETWORK_ID_LEN + len],
            &mut self.bufs.out,
            now,
            &mut batched(&mut self.bufs.to_send, fd),
        )
    }
}

/// Hands the train in `bufs.frame[..n]` to its flow's sealing worker, with its counters.
fn hand_to_worker(
    workers: &mut SealWorkers,
    bufs: &mut Buffers,
    sealer: &mut Sealer,
    segments: Segments,
    network_id: NetworkId,
    n: usize,
    fd: RawFd,
) -> Result<(), DropReason> {
    let packets = segments.packets();
    let bytes = segments.bytes(n - VNET_HDR_LEN) + packets * NETWORK_ID_LEN;
    let key = sealer.hand_off(packets, bytes).ok_or(DropReason::Expired)?;
    // What this thread queued (a handshake's held packets) goes first.
    bufs.to_send.flush(fd);
    let train = Train {
        len: n,
        segments,
        packets,
        network_id,
        key,
        to: sealer.endpoint(),
    };
    let lane = workers.lane(&bufs.frame[VNET_HDR_LEN..n]);
    workers.hand_over(lane, &mut bufs.frame, train);
    Ok(())
}

/// Seals the train in `bufs.frame[..n]` on this thread, straight into the send batch.
fn seal_here(
    bufs: &mut Buffers,
    drops: &mut DropCounters,
    sealer: &mut Sealer,
    mut segments: Segments,
    network_id: NetworkId,
    n: usize,
    fd: RawFd,
) {
    // Every packet of the train carries the same network id, in front of where it is cut to.
    bufs.plain[..NETWORK_ID_LEN].copy_from_slice(&network_id.to_be_bytes());
    let to = sealer.endpoint();
    while let Some(len) = segments.next_into(&bufs.frame[..n], &mut bufs.plain[NETWORK_ID_LEN..]) {
        let plaintext = &bufs.plain[..NETWORK_ID_LEN + len];
        let sealed = bufs
            .to_send
            .push_with(sealed_len(plaintext.len()), to, |slot| {
                sealer.seal(plaintext, slot).is_some()
            });
        if !sealed {
            drops.count(DropReason::Expired);
        }
        if bufs.to_send.is_full() {
            bufs.to_send.flush(fd);
        }
    }
}

/// May a container's packet to `dst` leave through the host member? Never to the host's
/// loopback: the member has `route_localnet` on (for published ports reached from 127.0.0.1),
/// so the host would deliver it to services that listen on 127.0.0.1 only. Nor to addresses
/// that are no one host's (unspecified, broadcast, multicast, link-local).
fn may_leave_for(dst: IpAddr) -> bool {
    match dst {
        IpAddr::V4(v4) => {
            !(v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_link_local())
        }
        IpAddr::V6(v6) => {
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6.is_unicast_link_local()
                || v6.to_ipv4_mapped().is_some())
        }
    }
}

/// A UDP datagram to port 53.
fn is_dns_query(packet: &[u8]) -> bool {
    udp_datagram(packet).is_some_and(|(_, to, _)| to.port() == 53)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_never_reaches_the_hosts_loopback() {
        for dst in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "169.254.1.1",
            "::1",
            "::",
            "ff02::2",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!may_leave_for(dst.parse().unwrap()), "{dst}");
        }
        for dst in ["198.51.100.2", "192.0.2.2", "10.255.255.53", "2001:db8::5"] {
            assert!(may_leave_for(dst.parse().unwrap()), "{dst}");
        }
    }
}
