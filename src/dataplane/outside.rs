//! Packets from the underlay: UDP -> tunnel (authenticate, decrypt; large batches on the
//! opening workers) -> checks -> TUN queue.

use std::io::{ErrorKind, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use super::batch::{RecvBatch, BATCH};
use super::offload::{delivery_header, DECRYPT_OFFSET, VNET_HDR_LEN};
use super::open_workers::{OpenWorkers, Opened};
use super::packet::{ip_addresses, NETWORK_ID_LEN};
use super::queues::Queue;
use super::{batched, Daemon};
use crate::tunnel::{DropReason, PublicKey, Received};

impl Daemon {
    /// Receives transport batches until the lane is empty (or a bound of batches, for
    /// fairness with the containers' queues).
    pub(super) fn on_udp_readable(&mut self) {
        let batch = self.bufs.received.take().expect("receive batch in place");
        let (batch, kernel_drops) = self.receive_lane(self.udp.as_raw_fd(), batch, 8, true);
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
        let fd = self.handshake_udp.as_raw_fd();
        let (batch, kernel_drops) = self.receive_lane(fd, batch, 4, false);
        self.bufs.handshakes_received = Some(batch);
        self.drops.handshake_buffer_overflow = kernel_drops;
    }

    /// Handles up to `max_batches` batches from `fd`, opening large ones on the opening
    /// workers if `transport` (the transport lane) and there are any; gives the batch back
    /// (its datagrams borrow it while they are handled) with the lane's kernel drop count.
    fn receive_lane(
        &mut self,
        fd: RawFd,
        mut batch: Box<RecvBatch>,
        max_batches: usize,
        transport: bool,
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
            let mut ahead = transport.then(|| self.open_ahead(&batch, now)).flatten();
            for (seq, (datagram, from)) in batch.datagrams().enumerate() {
                let result = match ahead.as_mut().and_then(|w| w.next_opened(seq)) {
                    Some(opened) => self.receive_opened(datagram, from, opened, now),
                    None => self.receive_datagram(datagram, from, now),
                };
                if let Err(reason) = result {
                    self.drops.count(reason);
                }
            }
            if ahead.is_some() {
                self.open_workers = ahead;
            }
            self.write_train();
            if received < BATCH {
                break;
            }
        }
        let kernel_drops = batch.kernel_drops();
        (batch, kernel_drops)
    }

    /// Opens the batch's transport datagrams on the opening workers, if there are any and the
    /// batch is large enough; they stay out of `self` until the batch is handled.
    fn open_ahead(&mut self, batch: &RecvBatch, now: Instant) -> Option<OpenWorkers> {
        let mut workers = self.open_workers.take()?;
        if !workers.plan(batch.datagrams().count()) {
            self.open_workers = Some(workers);
            return None;
        }
        for (seq, (datagram, _)) in batch.datagrams().enumerate() {
            if let Some((key, ciphertext)) = self.tunnels.open_key(datagram, now) {
                workers.add(seq, key, ciphertext);
            }
        }
        workers.open();
        Some(workers)
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
        let mut plain = std::mem::take(&mut self.bufs.plain);
        let received = self.tunnels.decrypt_packet(
            datagram,
            from,
            &mut plain[DECRYPT_OFFSET..],
            now,
            &mut authorize,
            &mut batched(&mut self.bufs.to_send, fd),
        );
        let result = self.on_received(received, &mut plain, from, now);
        self.bufs.plain = plain;
        result
    }

    /// [`Daemon::receive_datagram`] for a datagram an opening worker opened.
    fn receive_opened(
        &mut self,
        datagram: &[u8],
        from: std::net::SocketAddr,
        opened: Opened,
        now: Instant,
    ) -> Result<(), DropReason> {
        let fd = self.udp.as_raw_fd();
        let routes = &self.routes;
        let mut authorize = |key: &PublicKey| routes.is_listed(key);
        let received = self.tunnels.receive_opened(
            datagram,
            opened.key,
            opened.result,
            from,
            &mut opened.buffer[DECRYPT_OFFSET..],
            now,
            &mut authorize,
            &mut batched(&mut self.bufs.to_send, fd),
        );
        self.on_received(received, opened.buffer, from, now)
    }

    /// What the tunnels made of a datagram; `plain[DECRYPT_OFFSET..]` holds what it carried.
    fn on_received(
        &mut self,
        received: Received,
        plain: &mut [u8],
        from: std::net::SocketAddr,
        now: Instant,
    ) -> Result<(), DropReason> {
        match received {
            Received::Data { peer, len } => self.deliver(plain, &peer, len),
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
    fn deliver(
        &mut self,
        plain: &mut [u8],
        peer: &PublicKey,
        len: usize,
    ) -> Result<(), DropReason> {
        if len < NETWORK_ID_LEN {
            return Err(DropReason::Malformed);
        }
        let end = DECRYPT_OFFSET + len;
        let id_at = DECRYPT_OFFSET;
        let network_id =
            u32::from_be_bytes(plain[id_at..id_at + NETWORK_ID_LEN].try_into().unwrap());
        let (src, dst) = ip_addresses(&plain[VNET_HDR_LEN..end]).ok_or(DropReason::NotIp)?;
        // The inner source must be an address the lighthouse gives to the sending host (the
        // route table believes no address outside a served network's subnet).
        if self.routes.route(network_id, src).map(|r| r.key) != Some(*peer) {
            return Err(DropReason::Spoofed);
        }
        let slot = self
            .queues
            .slot_of(network_id, dst)
            .ok_or(DropReason::NoRoute)?;
        let packet = &plain[VNET_HDR_LEN..end];
        if self.bufs.train.append(slot, packet) {
            return Ok(());
        }
        self.write_train();
        if self.bufs.train.start(slot, packet) {
            return Ok(());
        }
        let header = delivery_header(&mut plain[VNET_HDR_LEN..end]);
        plain[..VNET_HDR_LEN].copy_from_slice(&header);
        write_to(self.queues.get_mut(slot), &plain[..end], 1)
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
