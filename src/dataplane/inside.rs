//! Packets from containers: TUN queue -> checks -> tunnel -> UDP.

use std::io::{ErrorKind, Read};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::time::Instant;

use super::offload::{Segments, VNET_HDR_LEN};
use super::packet::{ipv4_addresses, TAG_LEN};
use super::routes::Route;
use super::{batched, Daemon};
use crate::tunnel::DropReason;

/// Packets read from one queue per wake-up before others get their turn.
const BATCH: usize = 64;

impl Daemon {
    /// Drains up to a batch of packets from a container's TUN queue. Returns false if the
    /// device is gone (the container's namespace was destroyed) and the port should go.
    pub(super) fn on_tun_readable(&mut self, slot: usize) -> bool {
        for _ in 0..BATCH {
            let Some(port) = self.ports.get_mut(slot) else {
                return true;
            };
            let n = match port.queue.read(&mut self.bufs.frame) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return false,
            };
            port.stats.from_container_packets += 1;
            port.stats.from_container_bytes += n.saturating_sub(VNET_HDR_LEN) as u64;
            let (tag, address) = (port.tag, port.address);
            let Some(mut segments) = Segments::new(&self.bufs.frame[..n]) else {
                self.drops.count(DropReason::Malformed);
                continue;
            };
            // Every segment of a train has the train's addresses: check and route once.
            let addresses = ipv4_addresses(&self.bufs.frame[VNET_HDR_LEN..n]);
            let route = match self.route_from_container(tag, address, addresses) {
                Ok(route) => route,
                Err(reason) => {
                    self.drops.count(reason);
                    continue;
                }
            };
            let now = Instant::now();
            while let Some(len) =
                segments.next_into(&self.bufs.frame[..n], &mut self.bufs.plain[TAG_LEN..])
            {
                if let Err(reason) = self.send_from_container(tag, route, len, now) {
                    self.drops.count(reason);
                }
            }
        }
        true
    }

    /// Where a packet with `addresses` from the container at `address` goes, if it may go.
    fn route_from_container(
        &mut self,
        tag: u32,
        address: Ipv4Addr,
        addresses: Option<(Ipv4Addr, Ipv4Addr)>,
    ) -> Result<Route, DropReason> {
        let (src, dst) = addresses.ok_or(DropReason::NotIpv4)?;
        if src != address {
            // A container may only speak with its own address.
            return Err(DropReason::Spoofed);
        }
        self.routes.resolve(tag, dst).ok_or(DropReason::NoRoute)
    }

    /// `plain[TAG_LEN..TAG_LEN + len]` holds a packet for `route`: tag, seal and queue it.
    fn send_from_container(
        &mut self,
        tag: u32,
        route: Route,
        len: usize,
        now: Instant,
    ) -> Result<(), DropReason> {
        self.bufs.plain[..TAG_LEN].copy_from_slice(&tag.to_be_bytes());
        let fd = self.udp.as_raw_fd();
        self.tunnels.encrypt_packet(
            &route.key,
            route.endpoint,
            &self.bufs.plain[..TAG_LEN + len],
            &mut self.bufs.out,
            now,
            &mut batched(&mut self.bufs.to_send, fd),
        )
    }
}
