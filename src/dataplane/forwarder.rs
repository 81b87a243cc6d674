//! Forwarding containers' DNS queries to upstream resolvers, so that an off-path host cannot
//! poison the answers and one container cannot starve the others:
//! - each query leaves from a socket of its own, bound to a port the kernel picks at random and
//!   connected to the upstream asked: a forged answer must guess the port (about 15 bits) and
//!   the query ID (16 bits), not the ID alone;
//! - an answer counts only if it carries the ID and the question that were sent (compared
//!   without regard to case); anything else on the socket is ignored and the query waits on;
//! - queries in flight are capped per container, per network and in all: a container asking
//!   names whose servers never answer fills its own share and gets SERVFAIL, the others go on.
//!
//! The sockets sit in an epoll set of their own, whose descriptor the packet thread watches.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

use crate::control::status::DnsStats;
use crate::dns;
use crate::error::{Error, IoContext, Result};
use crate::lighthouse::NetworkId;

/// How long an upstream may take before the container is told SERVFAIL.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// Queries in flight at most, per container, per network and in all (each holds a socket).
const MAX_PER_CONTAINER: usize = 32;
const MAX_PER_NETWORK: usize = 128;
const MAX_PENDING: usize = 512;
const MAX_MESSAGE: usize = 4096;

/// Who asked: a container's address on a network.
type Asker = (NetworkId, IpAddr);

/// A forwarded query: where its answer goes back to.
struct Pending {
    socket: UdpSocket,
    /// The container's queue slot and address, checked again when the answer comes.
    slot: usize,
    network_id: NetworkId,
    client: SocketAddr,
    /// The gateway address the query was sent to; the answer comes from it.
    server: SocketAddr,
    original_id: u16,
    /// The ID the upstream was asked under.
    id: u16,
    upstream: SocketAddr,
    deadline: Instant,
    /// The query as forwarded (under our ID): its question is what an answer must repeat, and
    /// it makes the SERVFAIL if the upstream stays silent.
    query: Vec<u8>,
}

/// A reply ready for a container: the queue slot and network id it is for, addresses, DNS message.
pub struct Reply {
    pub slot: usize,
    pub network_id: NetworkId,
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub message: Vec<u8>,
}

/// Where a container's query came from and went to, on its network.
#[derive(Clone, Copy)]
pub struct Asked {
    pub slot: usize,
    pub network_id: NetworkId,
    pub client: SocketAddr,
    pub server: SocketAddr,
}

pub struct Forwarder {
    sockets: Epoll,
    /// Queries in flight, by the epoll token of their socket.
    pending: HashMap<u64, Pending>,
    next_token: u64,
    per_container: HashMap<Asker, usize>,
    per_network: HashMap<NetworkId, usize>,
    pub stats: DnsStats,
    buf: Vec<u8>,
}

impl Forwarder {
    pub fn new() -> Result<Self> {
        let sockets = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
            .map_err(|e| Error::io("creating the DNS forwarder's epoll", e.into()))?;
        Ok(Forwarder {
            sockets,
            pending: HashMap::new(),
            next_token: 0,
            per_container: HashMap::new(),
            per_network: HashMap::new(),
            stats: DnsStats::default(),
            buf: vec![0; MAX_MESSAGE],
        })
    }

    /// Readable when an answer waits on any query's socket.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.sockets.0.as_fd()
    }

    /// Forwards a container's query to the first upstream under a fresh ID, from a fresh port.
    /// `None`: it was sent (the answer comes through [`Forwarder::receive`]); `Some`: answer
    /// this now.
    pub fn forward(
        &mut self,
        query: &[u8],
        upstreams: &[SocketAddr],
        asked: Asked,
        now: Instant,
    ) -> Option<Vec<u8>> {
        let Some(&upstream) = upstreams.first() else {
            return self.fail(query);
        };
        if dns::question(query).is_none() || !self.has_room(asked) {
            return self.fail(query);
        }
        let id = getrandom::u32().map_or(0, |r| r as u16);
        let mut forwarded = query.to_vec();
        forwarded[..2].copy_from_slice(&id.to_be_bytes());
        let socket = match self.send_from_fresh_port(&forwarded, upstream) {
            Ok(socket) => socket,
            Err(e) => {
                tracing::debug!("forwarding a DNS query to {upstream}: {e}");
                return self.fail(query);
            }
        };
        self.stats.forwarded += 1;
        *self
            .per_container
            .entry((asked.network_id, asked.client.ip()))
            .or_default() += 1;
        *self.per_network.entry(asked.network_id).or_default() += 1;
        self.pending.insert(
            self.next_token,
            Pending {
                socket,
                slot: asked.slot,
                network_id: asked.network_id,
                client: asked.client,
                server: asked.server,
                original_id: u16::from_be_bytes([query[0], query[1]]),
                id,
                upstream,
                deadline: now + UPSTREAM_TIMEOUT,
                query: forwarded,
            },
        );
        self.next_token += 1;
        None
    }

    fn fail(&mut self, query: &[u8]) -> Option<Vec<u8>> {
        self.stats.failures += 1;
        dns::server_failure(query)
    }

    fn has_room(&self, asked: Asked) -> bool {
        let container = (asked.network_id, asked.client.ip());
        self.pending.len() < MAX_PENDING
            && self.per_container.get(&container).copied().unwrap_or(0) < MAX_PER_CONTAINER
            && self
                .per_network
                .get(&asked.network_id)
                .copied()
                .unwrap_or(0)
                < MAX_PER_NETWORK
    }

    /// A socket on a port of the kernel's random choosing, connected to `upstream` (so the
    /// kernel drops datagrams from anyone else), that has sent `message`, in the epoll set.
    fn send_from_fresh_port(&self, message: &[u8], upstream: SocketAddr) -> Result<UdpSocket> {
        let any: SocketAddr = match upstream {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(any).context(|| "binding a DNS query's socket")?;
        socket
            .set_nonblocking(true)
            .context(|| "making a DNS query's socket non-blocking")?;
        socket
            .connect(upstream)
            .context(|| format!("connecting to {upstream}"))?;
        socket
            .send(message)
            .context(|| format!("sending to {upstream}"))?;
        let event = EpollEvent::new(EpollFlags::EPOLLIN, self.next_token);
        self.sockets
            .add(&socket, event)
            .map_err(|e| Error::io("watching a DNS query's socket", e.into()))?;
        Ok(socket)
    }

    /// Reads the answers waiting; returns those that match their query, with the container's
    /// own ID put back.
    pub fn receive(&mut self) -> Vec<Reply> {
        let mut events = [EpollEvent::empty(); 64];
        let mut replies = Vec::new();
        // Bounded: a socket that stays ready (whatever the reason) cannot hold the packet
        // thread; what is left is read on the next wake-up.
        for _ in 0..MAX_PENDING / events.len() {
            let ready = match self.sockets.wait(&mut events, EpollTimeout::ZERO) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for event in &events[..ready] {
                if let Some(reply) = self.read_answer(event.data()) {
                    replies.push(reply);
                }
            }
        }
        replies
    }

    /// The answer on a query's socket, if one there is its answer; anything else is read
    /// and dropped, and the query waits on.
    fn read_answer(&mut self, token: u64) -> Option<Reply> {
        let pending = self.pending.get(&token)?;
        let len = loop {
            let n = match pending.socket.recv(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // Nothing more, or an ICMP error from the upstream: the timeout answers.
                Err(_) => return None,
            };
            if answers(&self.buf[..n], pending) {
                break n;
            }
            self.stats.ignored_answers += 1;
        };
        let answer = self.buf[..len].to_vec();
        let pending = self.remove(token)?;
        self.stats.upstream_answers += 1;
        Some(reply_for(&pending, answer))
    }

    /// SERVFAIL for every query whose upstream stayed silent.
    pub fn expire(&mut self, now: Instant) -> Vec<Reply> {
        let late: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(&token, _)| token)
            .collect();
        self.stats.failures += late.len() as u64;
        late.into_iter()
            .filter_map(|token| {
                let pending = self.remove(token)?;
                tracing::debug!("DNS upstream {} did not answer", pending.upstream);
                Some(reply_for(&pending, dns::server_failure(&pending.query)?))
            })
            .collect()
    }

    fn remove(&mut self, token: u64) -> Option<Pending> {
        let pending = self.pending.remove(&token)?;
        let _ = self.sockets.delete(&pending.socket);
        let container = (pending.network_id, pending.client.ip());
        release(&mut self.per_container, container);
        release(&mut self.per_network, pending.network_id);
        Some(pending)
    }
}

fn release<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: K) {
    if let Some(n) = counts.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(&key);
        }
    }
}

/// Whether `message` is the answer to `pending`: a response, under the ID sent, to the
/// question sent.
fn answers(message: &[u8], pending: &Pending) -> bool {
    let is_response = message.get(2).is_some_and(|flags| flags & 0x80 != 0);
    let id_matches = message.len() >= 2 && message[..2] == pending.id.to_be_bytes();
    let question = dns::question(message);
    let asked = dns::question(&pending.query);
    is_response
        && id_matches
        && question
            .zip(asked)
            .is_some_and(|(q, a)| q.eq_ignore_ascii_case(a))
}

/// The reply for a pending query, under the ID the container asked with.
fn reply_for(pending: &Pending, mut message: Vec<u8>) -> Reply {
    message[..2].copy_from_slice(&pending.original_id.to_be_bytes());
    Reply {
        slot: pending.slot,
        network_id: pending.network_id,
        from: pending.server,
        to: pending.client,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, Query, ResponseCode};
    use hickory_proto::rr::{Name, RecordType};
    use std::str::FromStr;

    const CLIENT: &str = "10.77.0.5:40000";
    const SERVER: &str = "10.77.0.1:53";

    fn query(id: u16, name: &str) -> Vec<u8> {
        let mut message = Message::query();
        message.metadata.id = id;
        message.add_query(Query::query(Name::from_str(name).unwrap(), RecordType::A));
        message.to_vec().unwrap()
    }

    fn asked(network_id: NetworkId, client: &str) -> Asked {
        Asked {
            slot: 3,
            network_id,
            client: client.parse().unwrap(),
            server: SERVER.parse().unwrap(),
        }
    }

    fn forward(forwarder: &mut Forwarder, upstream: &UdpSocket, id: u16) -> Option<Vec<u8>> {
        let upstreams = [upstream.local_addr().unwrap()];
        let message = query(id, "example.test.");
        forwarder.forward(&message, &upstreams, asked(7, CLIENT), Instant::now())
    }

    /// Polls the forwarder until it has answers (bounded).
    fn receive(forwarder: &mut Forwarder) -> Vec<Reply> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let replies = forwarder.receive();
            if !replies.is_empty() || Instant::now() > deadline {
                return replies;
            }
            std::thread::yield_now();
        }
    }

    fn upstream() -> UdpSocket {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        socket
    }

    /// What the upstream received: the message and where from.
    fn received(upstream: &UdpSocket) -> (Vec<u8>, SocketAddr) {
        let mut buf = [0u8; 512];
        let (n, from) = upstream.recv_from(&mut buf).unwrap();
        (buf[..n].to_vec(), from)
    }

    /// The upstream's answer to a forwarded query: the query, flagged as a response.
    fn answer_to(forwarded: &[u8]) -> Vec<u8> {
        let mut answer = forwarded.to_vec();
        answer[2] |= 0x80;
        answer
    }

    #[test]
    fn an_upstream_answer_goes_back_with_the_containers_id() {
        let upstream = upstream();
        let mut forwarder = Forwarder::new().unwrap();
        assert_eq!(forward(&mut forwarder, &upstream, 4242), None);
        let (forwarded, from) = received(&upstream);
        assert_eq!(
            Message::from_vec(&forwarded).unwrap().queries,
            Message::from_vec(&query(4242, "example.test."))
                .unwrap()
                .queries
        );
        upstream.send_to(&answer_to(&forwarded), from).unwrap();

        let replies = receive(&mut forwarder);
        assert_eq!(replies.len(), 1);
        let reply = &replies[0];
        assert_eq!((reply.slot, reply.network_id), (3, 7));
        assert_eq!(reply.to, CLIENT.parse().unwrap());
        assert_eq!(reply.from, SERVER.parse().unwrap());
        assert_eq!(Message::from_vec(&reply.message).unwrap().metadata.id, 4242);
        assert_eq!(forwarder.stats.upstream_answers, 1);
        assert!(forwarder.pending.is_empty());
    }

    #[test]
    fn every_query_leaves_from_a_port_of_its_own() {
        let upstream = upstream();
        let mut forwarder = Forwarder::new().unwrap();
        let ports: std::collections::HashSet<u16> = (0..8)
            .map(|id| {
                forward(&mut forwarder, &upstream, id);
                received(&upstream).1.port()
            })
            .collect();
        assert_eq!(ports.len(), 8, "ports reused: {ports:?}");
    }

    #[test]
    fn an_answer_from_the_wrong_port_or_to_another_question_is_ignored() {
        let upstream = upstream();
        let mut forwarder = Forwarder::new().unwrap();
        forward(&mut forwarder, &upstream, 1);
        let (forwarded, from) = received(&upstream);
        let genuine = answer_to(&forwarded);
        // The right ID and question from the upstream's address but another port: the socket
        // is connected to the upstream's port, so the kernel does not even deliver it.
        let wrong_port = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut forged = genuine.clone();
        forged[3] |= 0x05; // REFUSED
        wrong_port.send_to(&forged, from).unwrap();
        // From the upstream itself: the right ID for another question, and the query itself
        // (not a response).
        let mut other = answer_to(&query(0, "elsewhere.test."));
        other[..2].copy_from_slice(&forwarded[..2]);
        upstream.send_to(&other, from).unwrap();
        upstream.send_to(&forwarded, from).unwrap();
        // The right question under another ID.
        let mut wrong_id = genuine.clone();
        wrong_id[1] ^= 1;
        upstream.send_to(&wrong_id, from).unwrap();
        // Then the genuine answer, sent last.
        upstream.send_to(&genuine, from).unwrap();
        let replies = receive(&mut forwarder);
        assert_eq!(replies.len(), 1);
        assert_eq!(
            &replies[0].message[2..],
            &genuine[2..],
            "a forged answer got through"
        );
        assert_eq!(forwarder.stats.ignored_answers, 3);
        assert_eq!(forwarder.stats.upstream_answers, 1);
    }

    #[test]
    fn the_question_is_compared_without_regard_to_case() {
        let upstream = upstream();
        let mut forwarder = Forwarder::new().unwrap();
        forward(&mut forwarder, &upstream, 1);
        let (forwarded, from) = received(&upstream);
        let mut answer = answer_to(&forwarded);
        let question_len = dns::question(&answer).unwrap().len();
        let name = &mut answer[12..12 + question_len];
        let at = name.windows(4).position(|w| w == b"test").unwrap();
        name[at..at + 4].copy_from_slice(b"TEST");
        upstream.send_to(&answer, from).unwrap();
        assert_eq!(receive(&mut forwarder).len(), 1);
    }

    #[test]
    fn one_containers_silent_queries_do_not_stop_the_others() {
        let silent = upstream();
        let mut forwarder = Forwarder::new().unwrap();
        let upstreams = [silent.local_addr().unwrap()];
        let now = Instant::now();
        let message = query(1, "never.test.");
        // One container asks until its share is full: then SERVFAIL at once.
        let mut failed_at_once = 0;
        for _ in 0..MAX_PER_CONTAINER + 5 {
            if let Some(reply) = forwarder.forward(&message, &upstreams, asked(7, CLIENT), now) {
                let code = Message::from_vec(&reply).unwrap().metadata.response_code;
                assert_eq!(code, ResponseCode::ServFail);
                failed_at_once += 1;
            }
        }
        assert_eq!(failed_at_once, 5);
        // Its network's others fill the network's share.
        let mut forwarded_on_7 = MAX_PER_CONTAINER;
        for host in 6..=254u8 {
            let client = format!("10.77.0.{host}:40000");
            for _ in 0..MAX_PER_CONTAINER {
                if forwarder
                    .forward(&message, &upstreams, asked(7, &client), now)
                    .is_none()
                {
                    forwarded_on_7 += 1;
                }
            }
        }
        assert_eq!(forwarded_on_7, MAX_PER_NETWORK);
        // A container of another network is still forwarded.
        let other = asked(8, "10.78.0.5:40000");
        assert_eq!(forwarder.forward(&message, &upstreams, other, now), None);
        // Once the silent queries expire, the container may ask again.
        let expired = forwarder.expire(now + UPSTREAM_TIMEOUT);
        assert_eq!(expired.len(), MAX_PER_NETWORK + 1);
        let again = forwarder.forward(&message, &upstreams, asked(7, CLIENT), now);
        assert_eq!(again, None);
    }

    #[test]
    fn a_silent_upstream_means_servfail_after_the_timeout() {
        let upstream = upstream();
        let mut forwarder = Forwarder::new().unwrap();
        forward(&mut forwarder, &upstream, 9);
        assert!(forwarder.expire(Instant::now()).is_empty(), "expired early");
        let replies = forwarder.expire(Instant::now() + UPSTREAM_TIMEOUT);
        assert_eq!(replies.len(), 1);
        let message = Message::from_vec(&replies[0].message).unwrap();
        assert_eq!(message.metadata.id, 9);
        assert_eq!(message.metadata.response_code, ResponseCode::ServFail);
        assert!(forwarder
            .expire(Instant::now() + UPSTREAM_TIMEOUT)
            .is_empty());
    }

    #[test]
    fn no_upstream_at_all_is_servfail_at_once() {
        let mut forwarder = Forwarder::new().unwrap();
        let reply = forwarder
            .forward(
                &query(5, "example.test."),
                &[],
                asked(0, CLIENT),
                Instant::now(),
            )
            .expect("an immediate answer");
        let message = Message::from_vec(&reply).unwrap();
        assert_eq!(message.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(forwarder.stats.failures, 1);
    }
}
