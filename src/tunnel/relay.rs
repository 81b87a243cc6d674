//! Relays: two hosts that cannot reach each other (a symmetric NAT, a firewall that drops
//! unsolicited UDP) send their tunnel's datagrams through a host both reach, a relay (Nebula's
//! `am_relay`). The datagram travels inside the sender's session with the relay
//! ([`Control::Relay`]) and the relay's session with the receiver ([`Control::Relayed`]); what
//! it carries is already sealed for the receiver, so the relay opens only its own layer and can
//! neither read nor forge the two hosts' traffic. The receiver handles the datagram as if it had
//! come from the underlay, except that the answer goes back the way it came.
//!
//! A peer's path is direct or via one relay. Handshakes go via the relays too once direct ones
//! went unanswered for [`RELAY_AFTER`]; while a peer is relayed, a keepalive of its session goes
//! to each of its direct endpoints every [`DIRECT_PROBE_EVERY`], and the first to arrive makes
//! the path direct again, in the same session (the connections above notice nothing).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::control::{Control, RELAYED_HEADER_LEN, RELAY_HEADER_LEN};
use super::keys::{encode_key, PublicKey};
use super::wire::{AEAD_TAG_LEN, MAX_DATAGRAM, TRANSPORT_HEADER_LEN};
use super::{touch_peer, Peer, Received, Sender, TunnelManager};

/// Handshakes unanswered this long also go via the relays.
pub const RELAY_AFTER: Duration = Duration::from_secs(1);
/// How often a relayed peer is tried directly again.
pub const DIRECT_PROBE_EVERY: Duration = Duration::from_secs(2);
/// What relaying adds to a datagram on the sender's leg (the longer one): the control header
/// and the outer session's framing.
pub const RELAY_OVERHEAD: usize = RELAY_HEADER_LEN + TRANSPORT_HEADER_LEN + AEAD_TAG_LEN;
/// Relays an initiation is sent through at once; the first to deliver it carries the tunnel.
const MAX_RELAYS_TRIED: usize = 2;

/// Where a datagram of a peer's tunnel came from, and so where its answers go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Direct(SocketAddr),
    Via(PublicKey),
}

/// Datagrams a relay passed on from one host to another.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayedPair {
    pub from: String,
    pub to: String,
    pub datagrams: u64,
    pub bytes: u64,
}

/// The buffers relaying works in, kept for the manager's lifetime.
pub(super) struct RelayBuffers {
    /// A relaying message being sealed, and sealed.
    plain: Vec<u8>,
    sealed: Vec<u8>,
    /// A relayed datagram being handled (which may be answered through the relay).
    carried: Vec<u8>,
}

impl Default for RelayBuffers {
    fn default() -> Self {
        RelayBuffers {
            plain: vec![0; MAX_DATAGRAM],
            sealed: vec![0; MAX_DATAGRAM + RELAY_OVERHEAD],
            carried: vec![0; MAX_DATAGRAM],
        }
    }
}

/// The relay's side: what it passed on, per pair of hosts.
#[derive(Default)]
pub(super) struct Relaying {
    pub(super) enabled: bool,
    pub(super) passed: HashMap<(PublicKey, PublicKey), (u64, u64)>,
}

impl TunnelManager {
    /// Passes datagrams on between hosts that ask this one to.
    pub fn serve_as_relay(&mut self) {
        self.relaying.enabled = true;
    }

    /// The relays this host may use: it keeps a session with each, so that a host that cannot
    /// reach it directly can reach it through them.
    fn relays(&self) -> impl Iterator<Item = PublicKey> + '_ {
        let own = self.keys.public;
        self.relays.iter().copied().filter(move |key| *key != own)
    }

    /// Whether a relay other than `target` has a session with this host to carry its
    /// handshake.
    pub(super) fn may_relay_to(&self, target: &PublicKey) -> bool {
        self.usable_relays(target).next().is_some()
    }

    fn usable_relays<'a>(&'a self, target: &'a PublicKey) -> impl Iterator<Item = PublicKey> + 'a {
        self.relays()
            .filter(move |relay| relay != target)
            .filter(|relay| self.peers.get(relay).is_some_and(|p| p.current.is_some()))
    }

    /// Where the datagrams of `peer`'s tunnel go first (the relay's endpoint if it is
    /// relayed), and the bytes relaying adds to them.
    pub fn first_hop(&self, peer: &PublicKey) -> Option<(SocketAddr, usize)> {
        let entry = self.peers.get(peer)?;
        match entry.via {
            None => Some((entry.endpoint, 0)),
            Some(relay) => Some((self.peers.get(&relay)?.endpoint, RELAY_OVERHEAD)),
        }
    }

    /// Sends a datagram of `key`'s tunnel along its path.
    pub(super) fn transmit(
        &mut self,
        key: &PublicKey,
        datagram: &[u8],
        now: Instant,
        send: &mut Sender,
    ) {
        if let Some(&Peer { via, endpoint, .. }) = self.peers.get(key) {
            self.send_on(key, (via, endpoint), datagram, now, send);
        }
    }

    /// Sends a datagram of `key`'s tunnel through the relay `via`, or (without one, or when
    /// the relay's session cannot send) straight to `endpoint`.
    pub(super) fn send_on(
        &mut self,
        key: &PublicKey,
        (via, endpoint): (Option<PublicKey>, SocketAddr),
        datagram: &[u8],
        now: Instant,
        send: &mut Sender,
    ) {
        match via {
            Some(relay) if self.send_via(&relay, key, datagram, now, send) => {}
            _ => send(datagram, endpoint),
        }
    }

    /// Sends a datagram for `to` through `relay`'s session: whether it could.
    pub(super) fn send_via(
        &mut self,
        relay: &PublicKey,
        to: &PublicKey,
        datagram: &[u8],
        now: Instant,
        send: &mut Sender,
    ) -> bool {
        self.seal_for(relay, Control::Relay(*to), datagram, now, send)
    }

    /// Seals a relaying `message` with `datagram` behind it in `key`'s current session and
    /// sends it there directly (never through another relay).
    fn seal_for(
        &mut self,
        key: &PublicKey,
        message: Control,
        datagram: &[u8],
        now: Instant,
        send: &mut Sender,
    ) -> bool {
        let Some(peer) = self.peers.get_mut(key) else {
            return false;
        };
        let session = peer.current.and_then(|index| self.sessions.get_mut(&index));
        let Some(session) = session.filter(|s| s.can_send(now, &self.limits)) else {
            return false;
        };
        let buffers = &mut self.relay_buffers;
        let header = message.encode(&mut buffers.plain);
        let len = header + datagram.len();
        if len > buffers.plain.len() {
            return false;
        }
        buffers.plain[header..len].copy_from_slice(datagram);
        let Some(sealed) = session.encrypt(&buffers.plain[..len], &mut buffers.sealed) else {
            return false;
        };
        send(&buffers.sealed[..sealed], peer.endpoint);
        peer.sent(false, now, &self.limits);
        true
    }

    /// The relay's side: `from` asks to pass `datagram` on to `to`. Only a relay does, and only
    /// to a host it has a session with; it counts what it passed, per pair.
    pub(super) fn pass_on(
        &mut self,
        from: PublicKey,
        to: PublicKey,
        datagram: &[u8],
        now: Instant,
        send: &mut Sender,
    ) {
        if !self.relaying.enabled || to == from || to == self.keys.public {
            return;
        }
        if self.seal_for(&to, Control::Relayed, datagram, now, send) {
            let passed = self.relaying.passed.entry((from, to)).or_default();
            passed.0 += 1;
            passed.1 += datagram.len() as u64;
        }
    }

    /// The receiver's side: `relay` passed on `datagram` (in `out`, behind the control
    /// header, `len` bytes in all). It is handled as if it came from the underlay, on the
    /// path through the relay.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn receive_relayed(
        &mut self,
        relay: PublicKey,
        out: &mut [u8],
        len: usize,
        now: Instant,
        authorize: &mut dyn FnMut(&PublicKey) -> bool,
        send: &mut Sender,
    ) -> Received {
        // The datagram is decrypted into `out`, where it now is: copy it out first.
        let mut carried = std::mem::take(&mut self.relay_buffers.carried);
        let datagram_len = len - RELAYED_HEADER_LEN;
        carried[..datagram_len].copy_from_slice(&out[RELAYED_HEADER_LEN..len]);
        let received = self.receive(
            &carried[..datagram_len],
            Path::Via(relay),
            out,
            now,
            authorize,
            send,
        );
        self.relay_buffers.carried = carried;
        received
    }

    /// Sends an initiation for `target` through the relays this host has sessions with; whether
    /// any took it.
    pub(super) fn initiate_via_relays(
        &mut self,
        target: &PublicKey,
        initiation: &[u8],
        now: Instant,
        send: &mut Sender,
    ) -> bool {
        let relays: Vec<PublicKey> = self.usable_relays(target).take(MAX_RELAYS_TRIED).collect();
        let mut sent = false;
        for relay in relays {
            sent |= self.send_via(&relay, target, initiation, now, send);
        }
        sent
    }

    /// Keeps a session with every relay (so that hosts that cannot reach this one directly
    /// can through them), and tries relayed peers directly again.
    pub(super) fn tend_relayed_paths(&mut self, now: Instant, send: &mut Sender) {
        for relay in self.relays().collect::<Vec<_>>() {
            let Some(&endpoint) = self.candidates.get(&relay).and_then(|c| c.first()) else {
                continue;
            };
            let entry = touch_peer(&mut self.peers, &self.limits, &relay, endpoint, now);
            if entry.current.is_none() && entry.pending.is_none() && now >= entry.retry_at {
                self.start_handshake(&relay, now, send);
            }
        }
        let relayed: Vec<PublicKey> = self
            .peers
            .iter()
            .filter(|(_, peer)| peer.via.is_some() && now >= peer.probe_at)
            .map(|(key, _)| *key)
            .collect();
        for key in relayed {
            self.probe_direct(&key, now, send);
        }
    }

    /// Sends a keepalive of `key`'s session to each of its direct endpoints: the first to
    /// arrive makes the path direct (and opens this side's NAT for the peer's own probes).
    fn probe_direct(&mut self, key: &PublicKey, now: Instant, send: &mut Sender) {
        let endpoints = self.direct_endpoints(key);
        let Some(peer) = self.peers.get_mut(key) else {
            return;
        };
        peer.probe_at = now + DIRECT_PROBE_EVERY;
        let session = peer.current.and_then(|i| self.sessions.get_mut(&i));
        let Some(session) = session.filter(|s| s.can_send(now, &self.limits)) else {
            return;
        };
        let mut out = [0u8; TRANSPORT_HEADER_LEN + AEAD_TAG_LEN];
        for endpoint in endpoints {
            if let Some(len) = session.encrypt(&[], &mut out) {
                send(&out[..len], endpoint);
                peer.stats.direct_probes += 1;
            }
        }
    }

    /// Everywhere `key` may be reached directly: where it was last heard from directly (or
    /// the lighthouse says), its candidates, where it knocked from.
    pub(super) fn direct_endpoints(&self, key: &PublicKey) -> Vec<SocketAddr> {
        let Some(peer) = self.peers.get(key) else {
            return Vec::new();
        };
        let candidates = self.candidates.get(key).map_or(&[][..], Vec::as_slice);
        let mut endpoints: Vec<SocketAddr> = Vec::with_capacity(candidates.len() + 2);
        for endpoint in [peer.endpoint]
            .into_iter()
            .chain(candidates.iter().copied())
            .chain(peer.knocked_from)
        {
            if !endpoint.ip().is_unspecified() && !endpoints.contains(&endpoint) {
                endpoints.push(endpoint);
            }
        }
        endpoints
    }

    /// What this host passed on as a relay, per pair of hosts.
    pub fn relayed_pairs(&self) -> Vec<RelayedPair> {
        let mut pairs: Vec<RelayedPair> = self
            .relaying
            .passed
            .iter()
            .map(|((from, to), &(datagrams, bytes))| RelayedPair {
                from: encode_key(from),
                to: encode_key(to),
                datagrams,
                bytes,
            })
            .collect();
        pairs.sort_by(|a, b| (&a.from, &a.to).cmp(&(&b.from, &b.to)));
        pairs
    }
}
