//! Member to member on this host: the frame goes to the other member's TUN queue as it was
//! read, virtio-net header and all, so a segment train stays one write, is never cut into
//! packets and is never encrypted.
//!
//! Between two containers this is the same-host fast path. It is as safe as the tunnel it
//! replaces. The encrypted path would seal and open the packet in this same process, with keys
//! this process holds: the traffic is in the host's memory either way, and encryption guards
//! only the underlay, which a local frame never touches. The checks that decide who may talk
//! to whom are the same ones: the source must be the sending container's own address (checked
//! for every train before a hop is chosen), and the receiver is found by (network identifier,
//! address) among this host's own members, so a frame never crosses networks. The receive-side
//! check of the tunnel (the inner source belongs to the sending host) holds by construction:
//! the sending host is this one.

use std::io::Write;

use super::offload::VNET_HDR_LEN;
use super::Daemon;
use crate::tunnel::DropReason;

impl Daemon {
    /// Hands the first `n` bytes of the frame to the member in slot `to`.
    pub(super) fn write_local(&mut self, to: usize, n: usize) -> Result<(), DropReason> {
        let queue = self.queues.get_mut(to).ok_or(DropReason::NoRoute)?;
        match queue.device.write(&self.bufs.frame[..n]) {
            Ok(written) if written == n => {
                queue.stats.to_container_packets += 1;
                queue.stats.to_container_bytes += (n - VNET_HDR_LEN) as u64;
                Ok(())
            }
            _ => Err(DropReason::DeliveryFailed),
        }
    }

    /// The fast path: a container's frame to another container of this host.
    pub(super) fn write_to_neighbour(&mut self, to: usize, n: usize) -> Result<(), DropReason> {
        self.write_local(to, n)?;
        self.fast_path.packets += 1;
        self.fast_path.bytes += (n - VNET_HDR_LEN) as u64;
        Ok(())
    }
}
