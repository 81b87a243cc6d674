//! `TunnelManager`: Noise-encrypted tunnels between hosts.
//!
//! A tunnel is a sequence of sessions with one peer host (known by its static public key):
//! the handshake ([`handshake`]) makes a session ([`session`]), timers ([`timers`]) decide when
//! to renew or give up, and [`wire`] frames it all on the UDP underlay. The manager does no
//! I/O itself: datagrams to send are handed to a `send` callback, so the data plane decides how
//! to batch them and the tests can wire two managers together in memory.

pub mod control;
pub mod cookie;
pub mod handshake;
pub mod keys;
pub mod mac;
pub mod ratelimit;
pub mod relay;
pub mod replay;
pub mod sealer;
pub mod session;
pub mod timers;
pub mod wire;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use control::{Control, MAX_CONTROL_LEN};
use cookie::{Cookie, CookieMinter, COOKIE_LIFETIME};
use handshake::Initiation;
pub use keys::{decode_key, encode_key, PublicKey, StaticKeys};
use mac::MacKey;
use ratelimit::{HandshakeLimiter, OUTSIDE_TRIGGER_INTERVAL};
pub use relay::{Path, RelayedPair, RELAY_OVERHEAD};
use relay::{RelayBuffers, Relaying, RELAY_AFTER};
pub use sealer::{sealed_len, Sealer};
use session::Session;
pub use session::{OpenKey, SealKey};
pub use timers::Limits;
use wire::{
    init_mac1, Message, COOKIE_REPLY_LEN, INIT_LEN, INIT_MAC1_END, MAX_DATAGRAM, RESPONSE_LEN,
};

/// Why a datagram or packet was not delivered. Counted per reason by the data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// Not a Flatnet datagram: wrong type, size or reserved bits.
    Malformed,
    /// A transport or response message for a session we do not have.
    UnknownSession,
    /// Authentication failed: tampered, or encrypted with other keys.
    BadTag,
    /// A counter seen before, or older than the replay window.
    Replay,
    /// A session past its lifetime or message limit.
    Expired,
    /// A handshake from a key no lighthouse entry lists.
    UnknownKey,
    /// An initiation not newer than the last one from that key (a replay).
    StaleHandshake,
    /// A handshake message that does not verify.
    BadHandshake,
    /// A handshake message without a valid MAC: from a sender that does not know our key.
    BadMac,
    /// A handshake over the budget of its source address or of all sources.
    RateLimited,
    /// An initiation without a valid cookie while we are under load: answered with a cookie
    /// reply instead of a handshake.
    UnderLoad,
    /// The inner source address does not belong to the key (or container) that sent it.
    Spoofed,
    /// No lighthouse entry, or no local container, for the destination.
    NoRoute,
    /// Neither an IPv4 nor an IPv6 packet.
    NotIp,
    /// The per-peer queue overflowed while a handshake was under way.
    QueueFull,
    /// The container's TUN device did not take the packet (its queue is full, or the device
    /// is gone).
    DeliveryFailed,
    /// Larger than the path to the peer carries, with fragmenting forbidden: answered with
    /// ICMP "fragmentation needed".
    TooBig,
}

impl DropReason {
    /// The reason's name in status and metrics (its serde name).
    pub fn name(self) -> String {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::String(name)) => name,
            _ => unreachable!("a unit variant serialises as its name"),
        }
    }

    pub const ALL: [DropReason; 17] = [
        DropReason::Malformed,
        DropReason::UnknownSession,
        DropReason::BadTag,
        DropReason::Replay,
        DropReason::Expired,
        DropReason::UnknownKey,
        DropReason::StaleHandshake,
        DropReason::BadHandshake,
        DropReason::BadMac,
        DropReason::RateLimited,
        DropReason::UnderLoad,
        DropReason::Spoofed,
        DropReason::NoRoute,
        DropReason::NotIp,
        DropReason::QueueFull,
        DropReason::DeliveryFailed,
        DropReason::TooBig,
    ];
}

/// What became of a received datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// A packet from `peer`, decrypted into the caller's buffer.
    Data {
        peer: PublicKey,
        len: usize,
    },
    /// A handshake message or keepalive, fully handled.
    Handled,
    Dropped(DropReason),
}

/// Where the manager hands datagrams to send.
pub type Sender<'a> = dyn FnMut(&[u8], SocketAddr) + 'a;

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStats {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub handshakes_sent: u64,
    pub handshakes_completed: u64,
    /// Our initiations that drew no valid response before the next attempt.
    pub handshakes_failed: u64,
    /// Keepalives sent (passive and persistent).
    pub keepalives_sent: u64,
    /// Times the peer fell silent after we sent it data, and was looked for again.
    pub presumed_dead: u64,
    /// Times its handshakes went unanswered long enough to give it up.
    pub given_up: u64,
    /// Cookie replies it sent us: it was under load and asked us to prove our address.
    pub cookies_received: u64,
    /// Keepalives sent straight to its endpoints while it was reached through a relay.
    #[serde(default)]
    pub direct_probes: u64,
}

struct Peer {
    /// Where the peer was last heard from (it may roam), and where the lighthouse says it is:
    /// handshakes fall back to the latter when the former stops answering.
    endpoint: SocketAddr,
    lighthouse_endpoint: SocketAddr,
    /// The session used for sending.
    current: Option<u32>,
    /// The session before the last rekey, kept to decrypt packets still in flight.
    previous: Option<u32>,
    /// A responder session waiting for the initiator's first packet.
    unconfirmed: Option<u32>,
    /// Our initiation in flight.
    pending: Option<u32>,
    retry_at: Instant,
    backoff: Duration,
    last_handshake: Option<Instant>,
    last_activity: Instant,
    last_sent: Option<Instant>,
    last_received: Option<Instant>,
    /// When to send a keepalive unless something else is sent first.
    keepalive_due: Option<Instant>,
    /// When to presume the peer dead unless something is heard from it first.
    reply_due: Option<Instant>,
    /// When the current series of unanswered handshakes began.
    trying_since: Option<Instant>,
    /// The last handshake a datagram from outside made us start.
    outside_trigger: Option<Instant>,
    /// The newest cookie the peer gave us, and when.
    cookie: Option<(Cookie, Instant)>,
    /// Where the peer says our datagrams come from (our address behind its view of the
    /// underlay: a NAT's, if one is in between).
    seen_as: Option<SocketAddr>,
    /// The endpoint we last told the peer we see it at, and in which session: told again
    /// when either changes (a restarted peer has forgotten; a roaming one has moved).
    told: Option<(SocketAddr, u32)>,
    /// Where an introducer last said the peer is trying to reach us from: our initiations go
    /// there too until a handshake completes.
    knocked_from: Option<SocketAddr>,
    /// When we last passed on the peer's request for an introduction (at most one a second).
    introduced_at: Option<Instant>,
    /// The relay the peer's datagrams go through; `None`: straight to `endpoint`.
    via: Option<PublicKey>,
    /// Whether the current series of handshakes went through the relays too.
    relay_tried: bool,
    /// When to try a relayed peer's direct endpoints again.
    probe_at: Instant,
    queue: VecDeque<Vec<u8>>,
    stats: PeerStats,
}

impl Peer {
    fn new(endpoint: SocketAddr, now: Instant, limits: &Limits) -> Self {
        Peer {
            endpoint,
            lighthouse_endpoint: endpoint,
            current: None,
            previous: None,
            unconfirmed: None,
            pending: None,
            retry_at: now,
            backoff: limits.handshake_retry_base,
            last_handshake: None,
            last_activity: now,
            last_sent: None,
            last_received: None,
            keepalive_due: None,
            reply_due: None,
            trying_since: None,
            outside_trigger: None,
            cookie: None,
            seen_as: None,
            told: None,
            knocked_from: None,
            introduced_at: None,
            via: None,
            relay_tried: false,
            probe_at: now,
            queue: VecDeque::new(),
            stats: PeerStats::default(),
        }
    }

    /// Something was sent to the peer; `data` unless it was a keepalive.
    fn sent(&mut self, data: bool, now: Instant, limits: &Limits) {
        self.last_sent = Some(now);
        self.keepalive_due = None;
        if data && self.reply_due.is_none() {
            self.reply_due = Some(now + limits.dead_after);
        }
    }

    /// Something authenticated came from the peer; `data` unless it was a keepalive or
    /// a handshake message.
    fn heard(&mut self, data: bool, now: Instant, limits: &Limits) {
        self.last_received = Some(now);
        self.last_activity = now;
        self.reply_due = None;
        if data && self.keepalive_due.is_none() {
            self.keepalive_due = Some(now + limits.keepalive_after);
        }
    }

    /// An authenticated datagram came along `path`: answers go back that way.
    fn arrived(&mut self, path: Path) {
        match path {
            Path::Direct(endpoint) => {
                self.endpoint = endpoint;
                self.via = None;
            }
            Path::Via(relay) => self.via = Some(relay),
        }
    }

    fn session_indices(&self) -> impl Iterator<Item = u32> {
        [self.current, self.previous, self.unconfirmed]
            .into_iter()
            .flatten()
    }

    /// Makes `index` the sending session; the old one is kept for packets in flight.
    fn promote(&mut self, index: u32, sessions: &mut PacketMap<u32, Session>, now: Instant) {
        if let Some(stale) = self.previous.take() {
            sessions.remove(&stale);
        }
        self.previous = self.current.replace(index);
        self.last_handshake = Some(now);
    }
}

/// A peer as the admin view shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub public_key: String,
    pub endpoint: SocketAddr,
    pub sessions: usize,
    pub handshake_in_flight: bool,
    /// Milliseconds since the last completed handshake.
    pub handshake_age_ms: Option<u64>,
    /// Milliseconds since anything authenticated came from the peer.
    pub last_received_ms: Option<u64>,
    pub queued: usize,
    /// Our endpoint as the peer sees it, if it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_as: Option<SocketAddr>,
    /// The relay its datagrams go through (its key); absent: direct.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// The underlay's path MTU to the peer, as the data plane last read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_mtu: Option<u32>,
    #[serde(flatten)]
    pub stats: PeerStats,
}

/// The maps a datagram is looked up in: a fast hasher without SipHash's cost, as their keys
/// are never a sender's choice (session indices are our own random numbers, peers only keys
/// the lighthouse lists).
type PacketMap<K, V> = foldhash::HashMap<K, V>;

pub struct TunnelManager {
    keys: StaticKeys,
    limits: Limits,
    peers: PacketMap<PublicKey, Peer>,
    sessions: PacketMap<u32, Session>,
    initiations: PacketMap<u32, Initiation>,
    /// The newest initiation timestamp accepted from each key. Kept when the peer entry goes
    /// (idle, last container detached), so a captured initiation stays stale for as long as
    /// this daemon runs; only keys the lighthouse lists get here, which bounds it.
    init_timestamps: HashMap<PublicKey, u64>,
    /// Whether `init_timestamps` changed since [`TunnelManager::changed_init_timestamps`].
    init_timestamps_changed: bool,
    /// Verifies the MAC on handshake messages sent to us.
    mac_key: MacKey,
    limiter: HandshakeLimiter,
    cookies: CookieMinter,
    /// The endpoint this host publishes: a peer that sees it elsewhere sees it through NAT.
    published: Option<SocketAddr>,
    /// Where else each peer host may be reached, as it published: every initiation to it
    /// goes there too.
    candidates: HashMap<PublicKey, Vec<SocketAddr>>,
    /// The hosts that relay for others: this one keeps a session with each.
    relays: BTreeSet<PublicKey>,
    relaying: Relaying,
    relay_buffers: RelayBuffers,
}

impl TunnelManager {
    pub fn new(keys: StaticKeys, limits: Limits) -> Self {
        let mac_key = MacKey::for_receiver(&keys.public);
        let now = Instant::now();
        TunnelManager {
            mac_key,
            limiter: HandshakeLimiter::new(now),
            cookies: CookieMinter::new(&keys.public, now),
            published: None,
            candidates: HashMap::new(),
            relays: BTreeSet::new(),
            relaying: Relaying::default(),
            relay_buffers: RelayBuffers::default(),
            keys,
            limits,
            peers: PacketMap::default(),
            sessions: PacketMap::default(),
            initiations: PacketMap::default(),
            init_timestamps: HashMap::new(),
            init_timestamps_changed: false,
        }
    }

    /// Takes back the initiation timestamps a previous run accepted (kept by the daemon across
    /// restarts), so that an initiation captured before the restart is still stale after it.
    pub fn remember_init_timestamps(
        &mut self,
        accepted: impl IntoIterator<Item = (PublicKey, u64)>,
    ) {
        for (key, timestamp) in accepted {
            let newest = self.init_timestamps.entry(key).or_default();
            *newest = (*newest).max(timestamp);
        }
    }

    /// Every accepted initiation timestamp, if any changed since the last call.
    pub fn changed_init_timestamps(&mut self) -> Option<Vec<(PublicKey, u64)>> {
        if !std::mem::take(&mut self.init_timestamps_changed) {
            return None;
        }
        Some(self.init_timestamps.iter().map(|(k, t)| (*k, *t)).collect())
    }

    /// The endpoint this host publishes, to tell which peers see it through NAT.
    pub fn set_published_endpoint(&mut self, endpoint: SocketAddr) {
        self.published = Some(endpoint);
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.keys.public
    }

    /// Where else `peer` may be reached (none: only at its lighthouse endpoint), and whether
    /// it relays for others.
    pub fn set_candidates(&mut self, peer: PublicKey, endpoints: Vec<SocketAddr>, relay: bool) {
        if relay && !endpoints.is_empty() {
            self.relays.insert(peer);
        } else {
            self.relays.remove(&peer);
        }
        if endpoints.is_empty() {
            self.candidates.remove(&peer);
        } else {
            self.candidates.insert(peer, endpoints);
        }
    }

    /// The distinct endpoints peers with a session see this host at, most recently heard
    /// first: what this host learnt of its place in the underlay (behind NAT, a NAT's).
    pub fn observed_endpoints(&self) -> Vec<SocketAddr> {
        let mut seen: Vec<(Instant, SocketAddr)> = self
            .peers
            .values()
            .filter(|p| p.current.is_some())
            .filter_map(|p| Some((p.last_received?, p.seen_as?)))
            .collect();
        seen.sort_by_key(|&(heard, _)| std::cmp::Reverse(heard));
        let mut endpoints: Vec<SocketAddr> = Vec::new();
        for (_, endpoint) in seen {
            if !endpoints.contains(&endpoint) {
                endpoints.push(endpoint);
            }
        }
        endpoints
    }

    /// Starts a tunnel to a peer host, unless one is up or being set up.
    pub fn create_tunnel(
        &mut self,
        peer: &PublicKey,
        endpoint: SocketAddr,
        now: Instant,
        send: &mut Sender,
    ) {
        let entry = touch_peer(&mut self.peers, &self.limits, peer, endpoint, now);
        if entry.current.is_none() && entry.pending.is_none() && now >= entry.retry_at {
            self.start_handshake(peer, now, send);
        }
    }

    /// Encrypts one packet for `peer` and sends it; without a session, queues it and starts a
    /// handshake. `out` must hold the packet plus 32 bytes of framing.
    pub fn encrypt_packet(
        &mut self,
        peer: &PublicKey,
        endpoint: SocketAddr,
        plaintext: &[u8],
        out: &mut [u8],
        now: Instant,
        send: &mut Sender,
    ) -> Result<(), DropReason> {
        if let Some(mut sealer) = self.sealer_on(peer, endpoint, now, true) {
            let len = sealer.seal(plaintext, out).ok_or(DropReason::Expired)?;
            let path = (sealer.via(), sealer.endpoint());
            let renew = sealer.finish();
            self.send_on(peer, path, &out[..len], now, send);
            if renew {
                self.renew(peer, now, send);
            }
            return Ok(());
        }
        // No session that may send: hold the packet until the handshake completes.
        let limits = &self.limits;
        let entry = touch_peer(&mut self.peers, limits, peer, endpoint, now);
        let overflow = entry.queue.len() >= limits.queue_len;
        if overflow {
            entry.queue.pop_front();
        }
        entry.queue.push_back(plaintext.to_vec());
        if entry.pending.is_none() && now >= entry.retry_at {
            self.start_handshake(peer, now, send);
        }
        if overflow {
            Err(DropReason::QueueFull)
        } else {
            Ok(())
        }
    }

    /// Handles one datagram from the underlay. Packets are decrypted into `out`; handshakes are
    /// answered through `send`. `authorize` says whether a key may open a tunnel at all.
    pub fn decrypt_packet(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
        out: &mut [u8],
        now: Instant,
        authorize: &mut dyn FnMut(&PublicKey) -> bool,
        send: &mut Sender,
    ) -> Received {
        self.receive(datagram, Path::Direct(from), out, now, authorize, send)
    }

    /// The key to open `datagram` on another thread, and its ciphertext: for a transport
    /// datagram of a session that would not refuse it unopened. The opened datagram comes back
    /// through [`TunnelManager::receive_opened`].
    pub fn open_key<'d>(&self, datagram: &'d [u8], now: Instant) -> Option<(OpenKey, &'d [u8])> {
        let Some(Message::Transport {
            receiver,
            counter,
            ciphertext,
        }) = wire::parse(datagram)
        else {
            return None;
        };
        let key = self
            .sessions
            .get(&receiver)?
            .open_key(counter, now, &self.limits)?;
        Some((key, ciphertext))
    }

    /// [`TunnelManager::decrypt_packet`] for a transport datagram already opened into `out`
    /// with `key` (`opened`: the plaintext's length, or why it did not open). A datagram whose
    /// session has gone or changed since the key was issued is received anew.
    #[allow(clippy::too_many_arguments)]
    pub fn receive_opened(
        &mut self,
        datagram: &[u8],
        key: &OpenKey,
        opened: Result<usize, DropReason>,
        from: SocketAddr,
        out: &mut [u8],
        now: Instant,
        authorize: &mut dyn FnMut(&PublicKey) -> bool,
        send: &mut Sender,
    ) -> Received {
        let from_path = Path::Direct(from);
        let Some(Message::Transport { receiver, .. }) = wire::parse(datagram) else {
            return self.receive(datagram, from_path, out, now, authorize, send);
        };
        let Some(session) = self.sessions.get_mut(&receiver).filter(|s| s.issued(key)) else {
            return self.receive(datagram, from_path, out, now, authorize, send);
        };
        let peer = session.peer;
        match session.accept_opened(key, opened, now, &self.limits) {
            Ok(len) => self.on_opened(receiver, peer, len, from_path, out, now, authorize, send),
            Err(reason) => Received::Dropped(reason),
        }
    }

    /// [`TunnelManager::decrypt_packet`] for a datagram that came along `path`.
    fn receive(
        &mut self,
        datagram: &[u8],
        from: Path,
        out: &mut [u8],
        now: Instant,
        authorize: &mut dyn FnMut(&PublicKey) -> bool,
        send: &mut Sender,
    ) -> Received {
        match wire::parse(datagram) {
            None => Received::Dropped(DropReason::Malformed),
            Some(Message::Init { sender, noise }) => {
                if !self.mac_key.verify(&datagram[..INIT_MAC1_END]) {
                    return Received::Dropped(DropReason::BadMac);
                }
                // Through a relay, the relay's address is the one whose budget counts; it
                // has proved its key, so no cookie is asked of it.
                let source = match from {
                    Path::Direct(address) => address,
                    Path::Via(relay) => match self.peers.get(&relay) {
                        Some(peer) => peer.endpoint,
                        None => return Received::Dropped(DropReason::UnknownSession),
                    },
                };
                if self.limiter.under_load(now) && matches!(from, Path::Direct(_)) {
                    if let Err(cookie) = self.cookies.check(datagram, source, now) {
                        let mut reply = [0u8; COOKIE_REPLY_LEN];
                        let mac1 = init_mac1(datagram);
                        self.cookies.reply(sender, &mac1, &cookie, &mut reply);
                        send(&reply, source);
                        return Received::Dropped(DropReason::UnderLoad);
                    }
                }
                if !self.limiter.allow(source.ip(), now) {
                    return Received::Dropped(DropReason::RateLimited);
                }
                self.on_init(sender, noise, from, now, authorize, send)
            }
            Some(Message::CookieReply {
                receiver,
                nonce,
                sealed,
            }) => self.on_cookie_reply(receiver, nonce, sealed, now, send),
            Some(Message::Response {
                sender,
                receiver,
                noise,
            }) => {
                if !self.initiations.contains_key(&receiver) {
                    return Received::Dropped(DropReason::UnknownSession);
                }
                if !self.mac_key.verify(datagram) {
                    return Received::Dropped(DropReason::BadMac);
                }
                self.on_response(sender, receiver, noise, from, now, send)
            }
            Some(Message::Transport {
                receiver,
                counter,
                ciphertext,
            }) => self.on_transport(
                receiver, counter, ciphertext, from, out, now, authorize, send,
            ),
        }
    }

    /// Runs the timers: retries unanswered handshakes and gives up on peers that never
    /// answer, renews old sessions that are in use, sends keepalives, looks again for peers
    /// that fell silent, and forgets expired sessions and idle peers. Call a few times a second.
    pub fn tick(&mut self, now: Instant, send: &mut Sender) {
        self.limiter.forget_idle(now);
        self.tend_relayed_paths(now, send);
        let keys: Vec<PublicKey> = self.peers.keys().copied().collect();
        for key in keys {
            let peer = self.peers.get_mut(&key).expect("listed peer");
            let idle = now.duration_since(peer.last_activity) >= self.limits.idle_timeout;
            if idle && !self.relays.contains(&key) {
                self.close_tunnel(&key);
                continue;
            }
            self.drop_expired_sessions(&key, now);
            if self.give_up_if_unanswered(&key, now) {
                continue;
            }
            self.send_due_keepalive(&key, now, send);
            let peer = self.peers.get_mut(&key).expect("listed peer");
            let silent = peer.reply_due.is_some_and(|due| now >= due);
            if silent {
                // Data went out and nothing came back: wherever the peer roamed to, it is not
                // there now. Look for it where the lighthouse says it is.
                peer.reply_due = None;
                peer.endpoint = peer.lighthouse_endpoint;
                peer.via = None;
                peer.stats.presumed_dead += 1;
                tracing::debug!("{} fell silent", encode_key(&key));
            }
            let current = peer.current.and_then(|i| self.sessions.get(&i));
            let wanted = silent
                || !peer.queue.is_empty()
                || current.is_some_and(|s| s.initiator && s.wants_rekey(now, &self.limits));
            // Unanswered directly for a while: try through the relays at once.
            let relay_due = peer.pending.is_some()
                && !peer.relay_tried
                && peer
                    .trying_since
                    .is_some_and(|since| now >= since + RELAY_AFTER);
            if (wanted && now >= peer.retry_at) || (relay_due && self.may_relay_to(&key)) {
                self.start_handshake(&key, now, send);
            }
        }
    }

    fn drop_expired_sessions(&mut self, key: &PublicKey, now: Instant) {
        let peer = self.peers.get_mut(key).expect("listed peer");
        for index in peer.session_indices().collect::<Vec<_>>() {
            if self.sessions[&index].is_expired(now, &self.limits) {
                self.sessions.remove(&index);
                for slot in [&mut peer.current, &mut peer.previous, &mut peer.unconfirmed] {
                    if *slot == Some(index) {
                        *slot = None;
                    }
                }
            }
        }
    }

    /// A peer whose handshakes went unanswered for `give_up_after` loses its queue and
    /// sessions; it is tried again only when traffic for it comes.
    fn give_up_if_unanswered(&mut self, key: &PublicKey, now: Instant) -> bool {
        let peer = self.peers.get_mut(key).expect("listed peer");
        let Some(since) = peer.trying_since else {
            return false;
        };
        if now.duration_since(since) < self.limits.give_up_after {
            return false;
        }
        tracing::info!(
            "giving up on {} at {}: no answer for {:?}",
            encode_key(key),
            peer.endpoint,
            self.limits.give_up_after
        );
        for index in peer
            .session_indices()
            .chain(peer.pending)
            .collect::<Vec<_>>()
        {
            self.sessions.remove(&index);
            self.initiations.remove(&index);
        }
        peer.current = None;
        peer.previous = None;
        peer.unconfirmed = None;
        peer.pending = None;
        peer.trying_since = None;
        peer.reply_due = None;
        peer.queue.clear();
        peer.knocked_from = None;
        peer.endpoint = peer.lighthouse_endpoint;
        peer.via = None;
        peer.relay_tried = false;
        peer.backoff = self.limits.handshake_retry_base;
        peer.stats.given_up += 1;
        true
    }

    /// Sends a keepalive if one is due: passive (we received data and sent nothing back) or
    /// persistent (configured, or to a peer that sees us through NAT).
    fn send_due_keepalive(&mut self, key: &PublicKey, now: Instant, send: &mut Sender) {
        let published = self.published;
        let peer = self.peers.get_mut(key).expect("listed peer");
        let passive = peer.keepalive_due.is_some_and(|due| now >= due);
        let through_nat = peer
            .seen_as
            .zip(published)
            .is_some_and(|(seen, published)| !same_endpoint(seen, published));
        // A relay's session is kept open too: hosts that cannot reach this one reach it there.
        let kept_open = through_nat || self.relays.contains(key);
        let every = self
            .limits
            .persistent_keepalive
            .or(self.limits.nat_keepalive.filter(|_| kept_open));
        let persistent = every.is_some_and(|every| {
            peer.current.is_some() && peer.last_sent.is_none_or(|at| now >= at + every)
        });
        if persistent {
            peer.last_activity = now;
        }
        if passive || persistent {
            self.send_keepalive(key, now, send);
        }
    }

    /// A datagram from `endpoint` says its sender lost our session (it restarted): start a new
    /// handshake with the host the lighthouse lists there, at most once a second, since the
    /// datagram may be spoofed.
    pub fn restart_from_outside(
        &mut self,
        peer: &PublicKey,
        endpoint: SocketAddr,
        now: Instant,
        send: &mut Sender,
    ) {
        if let Some(entry) = self.peers.get(peer) {
            let recent = entry
                .outside_trigger
                .is_some_and(|at| now.duration_since(at) < OUTSIDE_TRIGGER_INTERVAL);
            if recent || entry.current.is_some() || entry.pending.is_some() {
                return;
            }
        }
        let entry = touch_peer(&mut self.peers, &self.limits, peer, endpoint, now);
        entry.outside_trigger = Some(now);
        if now >= entry.retry_at {
            self.start_handshake(peer, now, send);
        }
    }

    /// Drops every session with `peer`.
    pub fn close_tunnel(&mut self, peer: &PublicKey) {
        if let Some(p) = self.peers.remove(peer) {
            for index in p.session_indices() {
                self.sessions.remove(&index);
            }
            if let Some(index) = p.pending {
                self.initiations.remove(&index);
            }
        }
    }

    /// Drops every tunnel (the host serves no container any more).
    pub fn close_all(&mut self) {
        self.peers.clear();
        self.sessions.clear();
        self.initiations.clear();
    }

    /// Where `peer` is now (it may have roamed from where the lighthouse says).
    pub fn endpoint_of(&self, peer: &PublicKey) -> Option<SocketAddr> {
        self.peers.get(peer).map(|p| p.endpoint)
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    pub fn status(&self, now: Instant) -> Vec<PeerStatus> {
        let mut peers: Vec<PeerStatus> = self
            .peers
            .iter()
            .map(|(key, p)| PeerStatus {
                public_key: encode_key(key),
                endpoint: p.endpoint,
                sessions: p.session_indices().count(),
                handshake_in_flight: p.pending.is_some(),
                handshake_age_ms: p
                    .last_handshake
                    .map(|t| now.duration_since(t).as_millis() as u64),
                last_received_ms: p
                    .last_received
                    .map(|t| now.duration_since(t).as_millis() as u64),
                queued: p.queue.len(),
                seen_as: p.seen_as,
                via: p.via.as_ref().map(encode_key),
                path_mtu: None,
                stats: p.stats.clone(),
            })
            .collect();
        peers.sort_by(|a, b| a.public_key.cmp(&b.public_key));
        peers
    }

    fn start_handshake(&mut self, peer: &PublicKey, now: Instant, send: &mut Sender) {
        let index = self.fresh_index();
        let Some(entry) = self.peers.get_mut(peer) else {
            return;
        };
        let cookie = entry
            .cookie
            .filter(|(_, at)| now.saturating_duration_since(*at) < COOKIE_LIFETIME)
            .map(|(cookie, _)| cookie);
        let mut buf = [0u8; INIT_LEN];
        let Ok((initiation, len)) =
            handshake::initiate(&self.keys, peer, index, cookie, now, &mut buf)
        else {
            return;
        };
        if let Some(old) = entry.pending.replace(index) {
            // The last one went unanswered: the peer may have roamed away, or a spoofed
            // datagram moved our idea of its endpoint. Ask where the lighthouse says it is.
            self.initiations.remove(&old);
            entry.stats.handshakes_failed += 1;
            entry.endpoint = entry.lighthouse_endpoint;
        }
        self.initiations.insert(index, initiation);
        entry.retry_at = now + entry.backoff;
        entry.backoff = (entry.backoff * 2).min(self.limits.handshake_retry_max);
        entry.stats.handshakes_sent += 1;
        tracing::debug!("handshake to {} at {}", encode_key(peer), entry.endpoint);
        let unanswered_for = now.duration_since(*entry.trying_since.get_or_insert(now));
        let relayed = entry.via.is_some() || unanswered_for >= RELAY_AFTER;
        let connected = entry.current.is_some();
        // The same initiation to every place the peer may be: the first answer makes the
        // session (a second arrival is stale to the peer), and two hosts behind NAT that
        // write to each other's mappings at about the same time open both (hole punching).
        for endpoint in self.direct_endpoints(peer) {
            send(&buf[..len], endpoint);
        }
        // Unanswered directly (or relayed already): through the relays too.
        if relayed && self.initiate_via_relays(peer, &buf[..len], now, send) {
            if let Some(entry) = self.peers.get_mut(peer) {
                entry.relay_tried = true;
            }
        }
        // A host that publishes candidates may be behind NAT, where only a host writing to us
        // at about the same time gets through: ask the hosts we have sessions with to tell it.
        if !connected && self.candidates.contains_key(peer) {
            self.ask_for_introductions(peer, now, send);
        }
    }

    /// Sends [`Control::Introduce`] for `target` to the peers most recently heard from (up to
    /// [`MAX_INTRODUCERS`]): whichever has a session with it passes our endpoint on.
    fn ask_for_introductions(&mut self, target: &PublicKey, now: Instant, send: &mut Sender) {
        let mut introducers: Vec<(Instant, PublicKey)> = self
            .peers
            .iter()
            .filter(|(key, p)| *key != target && p.current.is_some())
            .filter_map(|(key, p)| Some((p.last_received?, *key)))
            .collect();
        introducers.sort_by_key(|&(heard, _)| std::cmp::Reverse(heard));
        for (_, introducer) in introducers.into_iter().take(MAX_INTRODUCERS) {
            self.send_control(&introducer, Control::Introduce(*target), now, send);
        }
    }

    /// An introducer's side: `asker` cannot reach `target`; if we have a session with the
    /// target, tell it where we see the asker (at most once a second per asker).
    fn introduce(&mut self, asker: PublicKey, target: PublicKey, now: Instant, send: &mut Sender) {
        let Some(entry) = self.peers.get_mut(&asker) else {
            return;
        };
        let recent = entry
            .introduced_at
            .is_some_and(|at| now.duration_since(at) < OUTSIDE_TRIGGER_INTERVAL);
        if target == asker || recent {
            return;
        }
        entry.introduced_at = Some(now);
        let knock = Control::Knock {
            from: asker,
            at: entry.endpoint,
        };
        if self.send_control(&target, knock, now, send) {
            tracing::debug!(
                "introduced {} to {}",
                encode_key(&asker),
                encode_key(&target)
            );
        }
    }

    /// The target's side: `from` is trying to reach us at `at`. Unless we have a session with
    /// it, send an initiation there (and to its other endpoints) now, so that both NATs open
    /// a mapping for the other; at most once a second per host, and only for hosts we may
    /// open tunnels with.
    fn on_knock(
        &mut self,
        from: PublicKey,
        at: SocketAddr,
        now: Instant,
        authorize: &mut dyn FnMut(&PublicKey) -> bool,
        send: &mut Sender,
    ) {
        if from == self.keys.public || !authorize(&from) {
            return;
        }
        let limits = &self.limits;
        let entry = self
            .peers
            .entry(from)
            .or_insert_with(|| Peer::new(at, now, limits));
        let recent = entry
            .outside_trigger
            .is_some_and(|t| now.duration_since(t) < OUTSIDE_TRIGGER_INTERVAL);
        if entry.current.is_some() || recent {
            return;
        }
        entry.outside_trigger = Some(now);
        entry.knocked_from = Some(at);
        entry.last_activity = now;
        tracing::debug!("{} knocks from {at}", encode_key(&from));
        self.start_handshake(&from, now, send);
    }

    fn on_init(
        &mut self,
        sender: u32,
        noise: &[u8],
        from: Path,
        now: Instant,
        authorize: &mut dyn FnMut(&PublicKey) -> bool,
        send: &mut Sender,
    ) -> Received {
        let Ok(init) = handshake::read_init(&self.keys, noise) else {
            return Received::Dropped(DropReason::BadHandshake);
        };
        if !authorize(&init.peer) {
            return Received::Dropped(DropReason::UnknownKey);
        }
        let key = init.peer;
        if self
            .init_timestamps
            .get(&key)
            .is_some_and(|&newest| init.timestamp <= newest)
        {
            return Received::Dropped(DropReason::StaleHandshake);
        }
        let limits = &self.limits;
        let first_seen = match from {
            Path::Direct(address) => address,
            Path::Via(_) => self
                .candidates
                .get(&key)
                .and_then(|c| c.first().copied())
                .unwrap_or(UNKNOWN_ENDPOINT),
        };
        let peer = self
            .peers
            .entry(key)
            .or_insert_with(|| Peer::new(first_seen, now, limits));
        let index = fresh_index(&self.sessions, &self.initiations);
        let mut buf = [0u8; RESPONSE_LEN];
        let timestamp = init.timestamp;
        let Ok((transport, len)) = init.respond(index, sender, &mut buf) else {
            return Received::Dropped(DropReason::BadHandshake);
        };
        self.init_timestamps.insert(key, timestamp);
        self.init_timestamps_changed = true;
        peer.arrived(from);
        peer.heard(false, now, &self.limits);
        let session = Session::new(index, sender, key, transport, false, now);
        if let Some(old) = peer.unconfirmed.replace(index) {
            self.sessions.remove(&old);
        }
        self.sessions.insert(index, session);
        tracing::debug!("answered a handshake from {} ({from:?})", encode_key(&key));
        self.transmit(&key, &buf[..len], now, send);
        Received::Handled
    }

    fn on_response(
        &mut self,
        sender: u32,
        receiver: u32,
        noise: &[u8],
        from: Path,
        now: Instant,
        send: &mut Sender,
    ) -> Received {
        let Some(initiation) = self.initiations.get_mut(&receiver) else {
            return Received::Dropped(DropReason::UnknownSession);
        };
        // Verified before anything changes: anyone can send a response with our index.
        if initiation.read_response(noise).is_err() {
            return Received::Dropped(DropReason::BadHandshake);
        }
        let Some(initiation) = self.initiations.remove(&receiver) else {
            return Received::Dropped(DropReason::UnknownSession);
        };
        let key = initiation.peer;
        let Ok(transport) = initiation.into_transport() else {
            return Received::Dropped(DropReason::BadHandshake);
        };
        let Some(peer) = self.peers.get_mut(&key) else {
            return Received::Dropped(DropReason::UnknownSession);
        };
        if peer.pending == Some(receiver) {
            peer.pending = None;
        }
        peer.arrived(from);
        peer.knocked_from = None;
        peer.heard(false, now, &self.limits);
        peer.trying_since = None;
        peer.relay_tried = false;
        peer.backoff = self.limits.handshake_retry_base;
        peer.retry_at = now;
        peer.stats.handshakes_completed += 1;
        tracing::debug!("handshake with {} ({from:?}) complete", encode_key(&key));
        let session = Session::new(receiver, sender, key, transport, true, now);
        self.sessions.insert(receiver, session);
        peer.promote(receiver, &mut self.sessions, now);
        // Send what waited for the handshake; with nothing waiting, a keepalive confirms the
        // session to the responder so it can send too.
        if !self.flush_queue(&key, now, send) {
            self.send_keepalive(&key, now, send);
        }
        self.tell_observed(&key, now, send);
        Received::Handled
    }

    /// The peer is under load and sent a cookie for our initiation `receiver`: keep it, and if
    /// that initiation carried no cookie, send a new one with it at once (waiting for the
    /// retry timer would add a quarter second or more to every handshake while the peer is
    /// flooded). One that carried a cookie (gone stale) waits for the timer: whoever can see
    /// our initiations could otherwise make us start one per forged reply.
    fn on_cookie_reply(
        &mut self,
        receiver: u32,
        nonce: &[u8],
        sealed: &[u8],
        now: Instant,
        send: &mut Sender,
    ) -> Received {
        let Some(initiation) = self.initiations.get(&receiver) else {
            return Received::Dropped(DropReason::UnknownSession);
        };
        let Some(cookie) = cookie::open_reply(&initiation.peer, &initiation.mac1, nonce, sealed)
        else {
            return Received::Dropped(DropReason::BadHandshake);
        };
        let (key, had_one) = (initiation.peer, initiation.cookie.is_some());
        let Some(peer) = self.peers.get_mut(&key) else {
            return Received::Dropped(DropReason::UnknownSession);
        };
        peer.cookie = Some((cookie, now));
        peer.stats.cookies_received += 1;
        if !had_one && peer.pending == Some(receiver) {
            // Not a failed attempt: the answer was "again, with this cookie".
            peer.pending = None;
            self.initiations.remove(&receiver);
            self.start_handshake(&key, now, send);
        }
        Received::Handled
    }

    #[allow(clippy::too_many_arguments)]
    fn on_transport(
        &mut self,
        receiver: u32,
        counter: u64,
        ciphertext: &[u8],
        from: Path,
        out: &mut [u8],
        now: Instant,
        authorize: &mut dyn FnMut(&PublicKey) -> bool,
        send: &mut Sender,
    ) -> Received {
        let Some(session) = self.sessions.get_mut(&receiver) else {
            return Received::Dropped(DropReason::UnknownSession);
        };
        let peer = session.peer;
        match session.decrypt(counter, ciphertext, out, now, &self.limits) {
            Ok(len) => self.on_opened(receiver, peer, len, from, out, now, authorize, send),
            Err(reason) => Received::Dropped(reason),
        }
    }

    /// A transport datagram of session `receiver` (with peer `key`) was authenticated and
    /// taken: `out[..len]` is its plaintext. Follows the peer (roaming, liveness, the session's
    /// confirmation) and handles control messages.
    #[allow(clippy::too_many_arguments)]
    fn on_opened(
        &mut self,
        receiver: u32,
        key: PublicKey,
        len: usize,
        from: Path,
        out: &mut [u8],
        now: Instant,
        authorize: &mut dyn FnMut(&PublicKey) -> bool,
        send: &mut Sender,
    ) -> Received {
        let Some(peer) = self.peers.get_mut(&key) else {
            return Received::Dropped(DropReason::UnknownSession);
        };
        peer.arrived(from);
        let control = control::is_control(&out[..len]);
        let message = control.then(|| Control::decode(&out[..len])).flatten();
        if !matches!(message, Some(Control::Relay(_) | Control::Relayed)) {
            peer.stats.rx_packets += 1;
            peer.stats.rx_bytes += len as u64;
        }
        if let Some(Control::Observed(address)) = message {
            peer.seen_as = Some(address);
        }
        peer.heard(len > 0 && !control, now, &self.limits);
        let confirmed = peer.unconfirmed == Some(receiver);
        if confirmed {
            peer.unconfirmed = None;
            peer.promote(receiver, &mut self.sessions, now);
            // The peer's handshake made the session: ours, if one is unanswered, is not
            // needed (nor to be retried through a relay).
            if let Some(ours) = peer.pending.take() {
                self.initiations.remove(&ours);
            }
            peer.trying_since = None;
            peer.relay_tried = false;
            peer.backoff = self.limits.handshake_retry_base;
        }
        let untold = match from {
            Path::Direct(address) => peer.told != peer.current.map(|index| (address, index)),
            Path::Via(_) => false,
        };
        if confirmed {
            self.flush_queue(&key, now, send);
        }
        if untold {
            self.tell_observed(&key, now, send);
        }
        // Relaying goes one hop: what comes through a relay is never passed on again.
        let direct = matches!(from, Path::Direct(_));
        match message {
            Some(Control::Introduce(target)) => self.introduce(key, target, now, send),
            Some(Control::Knock { from, at }) => self.on_knock(from, at, now, authorize, send),
            Some(Control::Relay(to)) if direct => {
                let datagram = &out[control::RELAY_HEADER_LEN..len];
                self.pass_on(key, to, datagram, now, send);
            }
            Some(Control::Relayed) if direct => {
                return self.receive_relayed(key, out, len, now, authorize, send);
            }
            _ => {}
        }
        if len == 0 || control {
            Received::Handled
        } else {
            Received::Data { peer: key, len }
        }
    }

    /// Tells the peer where its datagrams come from, once per session and endpoint.
    fn tell_observed(&mut self, key: &PublicKey, now: Instant, send: &mut Sender) {
        let Some(peer) = self.peers.get_mut(key) else {
            return;
        };
        let Some(index) = peer.current.filter(|_| peer.via.is_none()) else {
            return;
        };
        let told = (peer.endpoint, index);
        if peer.told == Some(told) {
            return;
        }
        if self.send_control(key, Control::Observed(told.0), now, send) {
            if let Some(peer) = self.peers.get_mut(key) {
                peer.told = Some(told);
            }
        }
    }

    /// Seals `message` in the peer's current session and sends it; whether it could.
    fn send_control(
        &mut self,
        key: &PublicKey,
        message: Control,
        now: Instant,
        send: &mut Sender,
    ) -> bool {
        let Some(peer) = self.peers.get_mut(key) else {
            return false;
        };
        let mut plain = [0u8; MAX_CONTROL_LEN];
        let len = message.encode(&mut plain);
        let mut out = [0u8; wire::TRANSPORT_HEADER_LEN + MAX_CONTROL_LEN + wire::AEAD_TAG_LEN];
        let session = peer.current.and_then(|index| self.sessions.get_mut(&index));
        let Some(sealed) = session
            .filter(|s| s.can_send(now, &self.limits))
            .and_then(|s| s.encrypt(&plain[..len], &mut out))
        else {
            return false;
        };
        peer.sent(false, now, &self.limits);
        self.transmit(key, &out[..sealed], now, send);
        true
    }

    /// Sends the packets queued for `peer`; returns whether there were any.
    fn flush_queue(&mut self, key: &PublicKey, now: Instant, send: &mut Sender) -> bool {
        let Some(peer) = self.peers.get_mut(key) else {
            return false;
        };
        if peer.queue.is_empty() {
            return false;
        }
        let queued: Vec<Vec<u8>> = peer.queue.drain(..).collect();
        let endpoint = peer.endpoint;
        let mut out = vec![0u8; MAX_DATAGRAM];
        for packet in queued {
            let _ = self.encrypt_packet(key, endpoint, &packet, &mut out, now, send);
        }
        true
    }

    fn send_keepalive(&mut self, key: &PublicKey, now: Instant, send: &mut Sender) {
        let Some(peer) = self.peers.get_mut(key) else {
            return;
        };
        let session = peer.current.and_then(|i| self.sessions.get_mut(&i));
        let mut out = [0u8; wire::TRANSPORT_HEADER_LEN + wire::AEAD_TAG_LEN];
        if let Some(len) = session
            .filter(|s| s.can_send(now, &self.limits))
            .and_then(|s| s.encrypt(&[], &mut out))
        {
            peer.sent(false, now, &self.limits);
            peer.stats.keepalives_sent += 1;
            self.transmit(key, &out[..len], now, send);
        }
    }

    fn fresh_index(&self) -> u32 {
        fresh_index(&self.sessions, &self.initiations)
    }
}

/// The peer's entry, made on first contact, marked active now.
fn touch_peer<'a>(
    peers: &'a mut PacketMap<PublicKey, Peer>,
    limits: &Limits,
    peer: &PublicKey,
    endpoint: SocketAddr,
    now: Instant,
) -> &'a mut Peer {
    let entry = peers
        .entry(*peer)
        .or_insert_with(|| Peer::new(endpoint, now, limits));
    entry.last_activity = now;
    entry.lighthouse_endpoint = endpoint;
    entry
}

/// A peer first heard of through a relay, before the lighthouse says where it is.
const UNKNOWN_ENDPOINT: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::UNSPECIFIED,
    0,
));

/// Peers asked at once to introduce us to a host we cannot reach.
const MAX_INTRODUCERS: usize = 4;

/// A random session index not in use: indices are visible on the wire, so they should not
/// reveal how many sessions a host has had.
fn fresh_index(
    sessions: &PacketMap<u32, Session>,
    initiations: &PacketMap<u32, Initiation>,
) -> u32 {
    loop {
        let mut bytes = [0u8; 4];
        getrandom::fill(&mut bytes).expect("system random source");
        let index = u32::from_le_bytes(bytes);
        if index != 0 && !sessions.contains_key(&index) && !initiations.contains_key(&index) {
            return index;
        }
    }
}

/// Whether a peer seeing us at `seen` sees the endpoint we publish: any address with its
/// port when we publish none in particular (bound to all addresses).
fn same_endpoint(seen: SocketAddr, published: SocketAddr) -> bool {
    if published.ip().is_unspecified() {
        seen.port() == published.port()
    } else {
        seen == published
    }
}

#[cfg(test)]
mod tests;
