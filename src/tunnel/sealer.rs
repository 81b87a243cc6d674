//! Sealing a train of packets for one peer: the peer and its sending session are looked up
//! once per train, not once per packet, and each packet is sealed straight into the caller's
//! buffer (the data plane's send batch), so a packet is copied once on its way out: from the
//! plaintext into the ciphertext the kernel sends.

use std::net::SocketAddr;
use std::time::Instant;

use super::keys::PublicKey;
use super::session::{SealKey, Session};
use super::timers::Limits;
use super::wire::{AEAD_TAG_LEN, TRANSPORT_HEADER_LEN};
use super::{touch_peer, Peer, Sender, TunnelManager};

/// A peer's session that may send now, borrowed for one train.
pub struct Sealer<'a> {
    peer: &'a mut Peer,
    session: &'a mut Session,
    limits: &'a Limits,
    now: Instant,
}

/// The length of the datagram that carries `plaintext_len` bytes.
pub fn sealed_len(plaintext_len: usize) -> usize {
    TRANSPORT_HEADER_LEN + plaintext_len + AEAD_TAG_LEN
}

impl TunnelManager {
    /// A sealer for `peer` if it has a session that may send now, straight to the peer.
    /// Without one (or for a relayed peer, whose datagrams are wrapped once more) the caller
    /// goes packet by packet through [`TunnelManager::encrypt_packet`], which queues,
    /// handshakes and relays.
    pub fn sealer(
        &mut self,
        peer: &PublicKey,
        endpoint: SocketAddr,
        now: Instant,
    ) -> Option<Sealer<'_>> {
        self.sealer_on(peer, endpoint, now, false)
    }

    /// A sealer for `peer`, also when it is relayed if `relayed_too`.
    pub(super) fn sealer_on(
        &mut self,
        peer: &PublicKey,
        endpoint: SocketAddr,
        now: Instant,
        relayed_too: bool,
    ) -> Option<Sealer<'_>> {
        let limits = &self.limits;
        let entry = touch_peer(&mut self.peers, limits, peer, endpoint, now);
        if entry.via.is_some() && !relayed_too {
            return None;
        }
        let session = entry
            .current
            .and_then(|i| self.sessions.get_mut(&i))
            .filter(|s| s.can_send(now, limits))?;
        Some(Sealer {
            peer: entry,
            session,
            limits,
            now,
        })
    }

    /// Starts the handshake that renews `peer`'s session, when [`Sealer::finish`] says so.
    pub fn renew(&mut self, peer: &PublicKey, now: Instant, send: &mut Sender) {
        self.start_handshake(peer, now, send);
    }
}

impl Sealer<'_> {
    /// Where the peer is (it may have roamed from where the lighthouse says).
    pub fn endpoint(&self) -> SocketAddr {
        self.peer.endpoint
    }

    /// Seals `plaintext` into `out` (at least [`sealed_len`] long); returns the datagram's
    /// length, or `None` once the session may send no more (its message budget is spent).
    pub fn seal(&mut self, plaintext: &[u8], out: &mut [u8]) -> Option<usize> {
        if !self.session.can_send(self.now, self.limits) {
            return None;
        }
        let len = self.session.encrypt(plaintext, out)?;
        self.peer.sent(true, self.now, self.limits);
        self.peer.stats.tx_packets += 1;
        self.peer.stats.tx_bytes += plaintext.len() as u64;
        Some(len)
    }

    /// Hands a train of `packets` packets, `bytes` of plaintext in all, to be sealed on
    /// another thread: the counters are reserved here and counted as sent. `None` once the
    /// session may not send that many more.
    pub fn hand_off(&mut self, packets: usize, bytes: usize) -> Option<SealKey> {
        if !self.session.can_send(self.now, self.limits) {
            return None;
        }
        let key = self.session.reserve(packets as u64, self.limits)?;
        self.peer.sent(true, self.now, self.limits);
        self.peer.stats.tx_packets += packets as u64;
        self.peer.stats.tx_bytes += bytes as u64;
        Some(key)
    }

    /// The relay the peer's datagrams go through, if any.
    pub(super) fn via(&self) -> Option<PublicKey> {
        self.peer.via
    }

    /// Ends the train. True when the session is due for renewal and no handshake is under way
    /// or waiting out its backoff: the caller then calls [`TunnelManager::renew`].
    pub fn finish(self) -> bool {
        self.session.wants_rekey(self.now, self.limits)
            && self.peer.pending.is_none()
            && self.now >= self.peer.retry_at
    }
}
