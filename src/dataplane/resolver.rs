//! DNS for containers, inside the data plane: a UDP query a container sends to its gateway's
//! port 53 never reaches a socket. flatnetd takes it off the container's queue, answers Flatnet
//! names from its route table (`crate::dns` decides), and forwards other names from the host's
//! namespace to the network's upstream resolvers through one unconnected UDP socket, matching
//! answers by (upstream, query ID). Nothing listens inside the container or on the host.

use std::collections::HashMap;
use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use super::offload::{DELIVERY_HEADER, VNET_HDR_LEN};
use super::packet::{udp_datagram, write_udp_packet};
use super::Daemon;
use crate::control::status::DnsStats;
use crate::dns;
use crate::error::{IoContext, Result};
use crate::lighthouse::NetworkId;
use crate::tunnel::DropReason;

/// How long an upstream may take before the container is told SERVFAIL.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// Forwarded queries in flight at most; more are answered SERVFAIL at once.
const MAX_PENDING: usize = 1024;
const MAX_MESSAGE: usize = 4096;

/// A forwarded query: where its answer goes back to.
struct Pending {
    /// The container's queue slot and address, checked again when the answer comes.
    slot: usize,
    network_id: NetworkId,
    client: SocketAddrV4,
    /// The gateway address the query was sent to; the answer comes from it.
    server: SocketAddrV4,
    original_id: u16,
    upstream: SocketAddr,
    deadline: Instant,
    /// The query as forwarded (under our ID), to build a SERVFAIL if the upstream stays silent.
    query: Vec<u8>,
}

/// A reply ready for a container: the queue slot and network id it is for, addresses, DNS message.
pub struct Reply {
    pub slot: usize,
    pub network_id: NetworkId,
    pub from: SocketAddrV4,
    pub to: SocketAddrV4,
    pub message: Vec<u8>,
}

pub struct Resolver {
    socket: UdpSocket,
    pending: HashMap<(SocketAddr, u16), Pending>,
    pub stats: DnsStats,
    buf: Vec<u8>,
}

impl Resolver {
    /// An ephemeral socket in the daemon's (the host's) namespace, for upstream answers only.
    pub fn new() -> Result<Self> {
        let socket = UdpSocket::bind("0.0.0.0:0").context(|| "binding the DNS forwarder")?;
        socket
            .set_nonblocking(true)
            .context(|| "making the DNS forwarder non-blocking")?;
        Ok(Resolver {
            socket,
            pending: HashMap::new(),
            stats: DnsStats::default(),
            buf: vec![0; MAX_MESSAGE],
        })
    }

    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Forwards a container's query to the first upstream under a fresh ID. `None`: it was
    /// sent (the answer comes through [`Resolver::receive`]); `Some`: answer this now.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &mut self,
        query: &[u8],
        upstreams: &[SocketAddr],
        slot: usize,
        network_id: NetworkId,
        client: SocketAddrV4,
        server: SocketAddrV4,
        now: Instant,
    ) -> Option<Vec<u8>> {
        let (Some(&upstream), true) = (upstreams.first(), query.len() >= 2) else {
            self.stats.failures += 1;
            return dns::server_failure(query);
        };
        if self.pending.len() >= MAX_PENDING {
            self.stats.failures += 1;
            return dns::server_failure(query);
        }
        let id = self.fresh_id(upstream);
        let mut forwarded = query.to_vec();
        forwarded[..2].copy_from_slice(&id.to_be_bytes());
        if let Err(e) = self.socket.send_to(&forwarded, upstream) {
            tracing::debug!("forwarding a DNS query to {upstream}: {e}");
            self.stats.failures += 1;
            return dns::server_failure(query);
        }
        self.stats.forwarded += 1;
        let original_id = u16::from_be_bytes([query[0], query[1]]);
        self.pending.insert(
            (upstream, id),
            Pending {
                slot,
                network_id,
                client,
                server,
                original_id,
                upstream,
                deadline: now + UPSTREAM_TIMEOUT,
                query: forwarded,
            },
        );
        None
    }

    /// Reads every answer waiting on the socket; returns those that match a pending query,
    /// with the container's own ID put back.
    pub fn receive(&mut self) -> Vec<Reply> {
        let mut replies = Vec::new();
        loop {
            let (n, from) = match self.socket.recv_from(&mut self.buf) {
                Ok(got) => got,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            if n < 2 {
                continue;
            }
            let id = u16::from_be_bytes([self.buf[0], self.buf[1]]);
            // Only the upstream asked, with the ID it was given, can answer.
            let Some(pending) = self.pending.remove(&(from, id)) else {
                continue;
            };
            self.stats.upstream_answers += 1;
            replies.push(reply_for(&pending, self.buf[..n].to_vec()));
        }
        replies
    }

    /// SERVFAIL for every query whose upstream stayed silent.
    pub fn expire(&mut self, now: Instant) -> Vec<Reply> {
        let late: Vec<Pending> = self
            .pending
            .extract_if(|_, p| p.deadline <= now)
            .map(|(_, p)| p)
            .collect();
        self.stats.failures += late.len() as u64;
        late.iter()
            .filter_map(|pending| {
                tracing::debug!("DNS upstream {} did not answer", pending.upstream);
                Some(reply_for(pending, dns::server_failure(&pending.query)?))
            })
            .collect()
    }

    /// A random ID not in flight to this upstream: an off-path attacker must guess it (and
    /// the socket's port) to slip an answer in.
    fn fresh_id(&self, upstream: SocketAddr) -> u16 {
        loop {
            let id = getrandom::u32().map_or(0, |r| r as u16);
            if !self.pending.contains_key(&(upstream, id)) {
                return id;
            }
        }
    }
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

impl Daemon {
    /// `frame[..n]` from the container in `slot` is a UDP query to its gateway: answer it from
    /// the network's names, or forward it.
    pub(super) fn answer_query(&mut self, slot: usize, network_id: NetworkId, n: usize) {
        let Some((client, server, query)) = udp_datagram(&self.bufs.frame[VNET_HDR_LEN..n]) else {
            return;
        };
        let Some(network) = self.networks.get(network_id) else {
            return;
        };
        self.resolver.stats.queries += 1;
        let routes = &self.routes;
        let verdict = dns::answer(
            query,
            |name| routes.addresses_of(network_id, name),
            network.member.internal,
        );
        let message = match verdict {
            dns::Verdict::Reply(message) => {
                self.resolver.stats.local_answers += 1;
                Some(message)
            }
            dns::Verdict::Forward => {
                let upstreams = &network.member.dns_upstreams;
                self.resolver.forward(
                    query,
                    upstreams,
                    slot,
                    network_id,
                    client,
                    server,
                    Instant::now(),
                )
            }
            dns::Verdict::Ignore => None,
        };
        if let Some(message) = message {
            self.deliver_reply(Reply {
                slot,
                network_id,
                from: server,
                to: client,
                message,
            });
        }
    }

    pub(super) fn on_upstream_answers(&mut self) {
        for reply in self.resolver.receive() {
            self.deliver_reply(reply);
        }
    }

    pub(super) fn expire_dns_queries(&mut self, now: Instant) {
        for reply in self.resolver.expire(now) {
            self.deliver_reply(reply);
        }
    }

    /// Writes a DNS answer into the container's queue, if the slot still holds the container
    /// that asked (it may have left while an upstream was thinking).
    fn deliver_reply(&mut self, reply: Reply) {
        let Some(queue) = self.queues.get_mut(reply.slot) else {
            return;
        };
        if queue.network_id != reply.network_id || queue.address != *reply.to.ip() {
            return;
        }
        let out = &mut self.bufs.plain;
        out[..VNET_HDR_LEN].copy_from_slice(&DELIVERY_HEADER);
        let Some(len) = write_udp_packet(
            &mut out[VNET_HDR_LEN..],
            reply.from,
            reply.to,
            &reply.message,
        ) else {
            return;
        };
        let frame = &out[..VNET_HDR_LEN + len];
        if queue.device.write(frame).is_ok() {
            queue.stats.to_container_packets += 1;
            queue.stats.to_container_bytes += len as u64;
        } else {
            self.drops.count(DropReason::DeliveryFailed);
        }
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

    fn query(id: u16) -> Vec<u8> {
        let mut message = Message::query();
        message.metadata.id = id;
        message.add_query(Query::query(
            Name::from_str("example.test.").unwrap(),
            RecordType::A,
        ));
        message.to_vec().unwrap()
    }

    fn forward(resolver: &mut Resolver, upstream: SocketAddr, id: u16) -> Option<Vec<u8>> {
        let (client, server) = (CLIENT.parse().unwrap(), SERVER.parse().unwrap());
        resolver.forward(
            &query(id),
            &[upstream],
            3,
            7,
            client,
            server,
            Instant::now(),
        )
    }

    /// Polls the resolver until it has answers (bounded).
    fn receive(resolver: &mut Resolver) -> Vec<Reply> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let replies = resolver.receive();
            if !replies.is_empty() || Instant::now() > deadline {
                return replies;
            }
            std::thread::yield_now();
        }
    }

    #[test]
    fn an_upstream_answer_goes_back_with_the_containers_id() {
        let upstream = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut resolver = Resolver::new().unwrap();
        assert_eq!(
            forward(&mut resolver, upstream.local_addr().unwrap(), 4242),
            None
        );
        let mut buf = [0u8; 512];
        let (n, from) = upstream.recv_from(&mut buf).unwrap();
        let forwarded = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(
            forwarded.queries,
            Message::from_vec(&query(4242)).unwrap().queries
        );
        upstream.send_to(&buf[..n], from).unwrap();

        let replies = receive(&mut resolver);
        assert_eq!(replies.len(), 1);
        let reply = &replies[0];
        assert_eq!((reply.slot, reply.network_id), (3, 7));
        assert_eq!(reply.to, CLIENT.parse().unwrap());
        assert_eq!(reply.from, SERVER.parse().unwrap());
        assert_eq!(Message::from_vec(&reply.message).unwrap().metadata.id, 4242);
        assert_eq!(resolver.stats.upstream_answers, 1);
    }

    #[test]
    fn answers_from_anyone_but_the_upstream_asked_are_ignored() {
        let upstream = UdpSocket::bind("127.0.0.1:0").unwrap();
        let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut resolver = Resolver::new().unwrap();
        forward(&mut resolver, upstream.local_addr().unwrap(), 1);
        let mut buf = [0u8; 512];
        let (n, from) = upstream.recv_from(&mut buf).unwrap();
        // Right ID, wrong source: a spoofer on the host cannot answer for the upstream.
        let mut forged = buf[..n].to_vec();
        forged[3] |= 0x05; // REFUSED
        stranger.send_to(&forged, from).unwrap();
        // Then the genuine answer, sent after the forged one.
        upstream.send_to(&buf[..n], from).unwrap();
        let replies = receive(&mut resolver);
        assert_eq!(replies.len(), 1);
        assert_eq!(
            &replies[0].message[2..],
            &buf[2..n],
            "the forged answer got through"
        );
        assert_eq!(resolver.stats.upstream_answers, 1);
    }

    #[test]
    fn a_silent_upstream_means_servfail_after_the_timeout() {
        let upstream = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut resolver = Resolver::new().unwrap();
        forward(&mut resolver, upstream.local_addr().unwrap(), 9);
        assert!(resolver.expire(Instant::now()).is_empty(), "expired early");
        let replies = resolver.expire(Instant::now() + UPSTREAM_TIMEOUT);
        assert_eq!(replies.len(), 1);
        let message = Message::from_vec(&replies[0].message).unwrap();
        assert_eq!(message.metadata.id, 9);
        assert_eq!(message.metadata.response_code, ResponseCode::ServFail);
        assert!(resolver
            .expire(Instant::now() + UPSTREAM_TIMEOUT)
            .is_empty());
    }

    #[test]
    fn no_upstream_at_all_is_servfail_at_once() {
        let mut resolver = Resolver::new().unwrap();
        let (client, server) = (CLIENT.parse().unwrap(), SERVER.parse().unwrap());
        let reply = resolver
            .forward(&query(5), &[], 0, 0, client, server, Instant::now())
            .expect("an immediate answer");
        let message = Message::from_vec(&reply).unwrap();
        assert_eq!(message.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(resolver.stats.failures, 1);
    }
}
