//! Packets from the underlay: UDP -> tunnel (authenticate, decrypt) -> checks -> TUN queue.

use std::io::{ErrorKind, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use super::batch::{RecvBatch, BATCH};
use super::offload::{delivery_header, DECRYPT_OFFSET, VNET_HDR_LEN};
use super::packet::{ip_addresses, NETWORK_ID_LEN};
use super::queues::Queue;
use super::{batched, Daemon};
use crate::tunnel::{DropReason, PublicKey, Received};

impl Daemon {
    /// Receives transport batches until the lane is empty (or a bound of batches, for
    /// fairness with the containers' queues).
    pub(super) fn on_udp_readable(&mut self) {
        let batch = self.bufs.received.take().expect("receive batch in place");
        let (batch, kernel_drops) = self.receive_lane(self.udp.as_raw_fd(), batch, 8);
        self.bufs.received = Some(batch);
        self.drops.receive_buffer_overflow = kernel_drops;
    }

    /// Receives a bounded number of batches from the handshake lane: when a flood comes
    /// faster than that, the handshake lane's buffer overflows, not the transport lane's.
    pub(super) fn on_handshakes_readable(&mut self) {
        let batch = self
            .bufs
            .handshakes_received
            .take()
            .expect("receive batch in place");
        let (batch, kernel_drops) = self.receive_lane(self.handshake_udp.as_raw_fd(), batch, 4);
        self.bufs.handshakes_received = Some(batch);
        self.drops.handshake_buffer_overflow = kernel_drops;
    }

    /// Handles up to `max_batches` batches from `fd`; gives the batch back (its datagrams
    /// borrow it while they are handled) with the lane's kernel drop count.
    fn receive_lane(
        &mut self,
        fd: RawFd,
        mut batch: Box<RecvBatch>,
        max_batches: usize,
    ) -> (Box<RecvBatch>, u64) {
        for _ in 0..max_batches {
            let received = match batch.receive(fd) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    if e.kind() != ErrorKind::WouldBlock {
                        tracing::warn!("udp receive: {e}");
                    }
                    break;
                }
            };
            let now = Instant::now();
            for (datagram, from) in batch.datagrams() {
                if let Err(reason) = self.receive_datagram(datagram, from, now) {
                    self.drops.count(reason);
                }
            }
            self.write_train();
            if received < BATCH {
                break;
            }
        }
        let kernel_drops = batch.kernel_drops();
        (batch, kernel_drops)
    }

    fn receive_datagram(
        &mut self,
        datagram: &[u8],
        from: std::net::SocketAddr,
        now: Instant,
    ) -> Result<(), DropReason> {
        let fd = self.udp.as_raw_fd();
        let routes = &self.routes;
        // Asked only for a handshake whose MAC and Noise message verified.
        let mut authorize = |key: &PublicKey| routes.is_listed(key);
        let received = self.tunnels.decrypt_packet(
            datagram,
            from,
            &mut self.bufs.plain[DECRYPT_OFFSET..],
            now,
            &mut authorize,
            &mut batched(&mut self.bufs.to_send, fd),
        );
        match received {
            Received::Data { peer, len } => self.deliver(&peer, len),
            Received::Handled => Ok(()),
            Received::Dropped(DropReason::UnknownSession) => {
                self.rehandshake(from, now);
                Err(DropReason::UnknownSession)
            }
            Received::Dropped(reason) => Err(reason),
        }
    }

    /// A peer sends on a session we do not know: we restarted and lost it. Start a new one
    /// instead of waiting for the peer's rekey (rate-limited: the sender may be spoofed).
    fn rehandshake(&mut self, from: std::net::SocketAddr, now: Instant) {
        let Some(key) = self.routes.key_at(from) else {
            return;
        };
        let fd = self.udp.as_raw_fd();
        self.tunnels.restart_from_outside(
            &key,
            from,
            now,
            &mut batched(&mut self.bufs.to_send, fd),
        );
    }

    /// `plain[DECRYPT_OFFSET..][..len]` is a network id and a packet from `peer`: deliver it if
    /// the peer may send it, behind a virtio-net header written over the network id's room.
    fn deliver(&mut self, peer: &PublicKey, len: usize) -> Result<(), DropReason> {
        if len < NETWORK_ID_LEN {
            return Err(DropReason::Malformed);
        }
        let end = DECRYPT_OFFSET + len;
        let id_at = DECRYPT_OFFSET;
        let network_id = u32::from_be_bytes(
            self.bufs.plain[id_at..id_at + NETWORK_ID_LEN]
                .try_into()
                .unwrap(),
        );
        let (src, dst) =
            ip_addresses(&self.bufs.plain[VNET_HDR_LEN..end]).ok_or(DropReason::NotIp)?;
        // The inner source must be an address the lighthouse gives to the sending host (the
        // route table believes no address outside a served network's subnet).
        if self.routes.route(network_id, src).map(|r| r.key) != Some(*peer) {
            return Err(DropReason::Spoofed);
        }
        let slot = self
            .queues
            .slot_of(network_id, dst)
            .ok_or(DropReason::NoRoute)?;
        let packet = &self.bufs.plain[VNET_HDR_LEN..end];
        if self.bufs.train.append(slot, packet) {
            return Ok(());
        }
        self.write_train();
        if self
            .bufs
            .train
            .start(slot, &self.bufs.plain[VNET_HDR_LEN..end])
        {
            return Ok(());
        }
        let header = delivery_header(&mut self.bufs.plain[VNET_HDR_LEN..end]);
        self.bufs.plain[..VNET_HDR_LEN].copy_from_slice(&header);
        write_to(self.queues.get_mut(slot), &self.bufs.plain[..end], 1)
    }

    /// Writes the segment train being built, if any, to its container.
    pub(super) fn write_train(&mut self) {
        if let Some(train) = self.bufs.train.finish() {
            let queue = self.queues.get_mut(train.slot);
            if let Err(reason) = write_to(queue, train.frame, train.segments) {
                self.drops.count(reason);
            }
        }
    }
}

/// One TUN write: a packet or a train of `packets`, behind its virtio-net header.
fn write_to(queue: Option<&mut Queue>, frame: &[u8], packets: u16) -> Result<(), DropReason> {
    let queue = queue.ok_or(DropReason::NoRoute)?;
    // A TUN write takes the whole frame or nothing.
    match queue.device.write(frame) {
        Ok(written) if written == frame.len() => {
            queue.stats.to_container_packets += u64::from(packets);
            queue.stats.to_container_bytes += (frame.len() - VNET_HDR_LEN) as u64;
            Ok(())
        }
        _ => Err(DropReason::DeliveryFailed),
    }
}
