//! DNS for containers, inside the data plane: a UDP query a container sends to its gateway's
//! port 53 never reaches a socket. flatnetd takes it off the container's queue, answers Flatnet
//! names from its route table (`crate::dns` decides), and forwards other names from the host's
//! namespace to the network's upstream resolvers through one unconnected UDP socket, matching
//! answers by (upstream, query ID). Nothing listens inside the container or on the host.

use std::collections::HashMap;
use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::offload::{DELIVERY_HEADER, VNET_HDR_LEN};
use super::packet::{udp_datagram, write_udp_packet};
use super::Daemon;
use crate::dns;
use crate::error::{IoContext, Result};
use crate::tunnel::DropReason;

/// How long an upstream may take before the container is told SERVFAIL.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// Forwarded queries in flight at most; more are answered SERVFAIL at once.
const MAX_PENDING: usize = 1024;
const MAX_MESSAGE: usize = 4096;

#[derive(Debug, Default, Clone, Serialize)]
pub struct DnsStats {
    pub queries: u64,
    /// Answered from Flatnet's names (found, NXDOMAIN, REFUSED on internal networks).
    pub local_answers: u64,
    pub forwarded: u64,
    pub upstream_answers: u64,
    /// SERVFAIL sent: no upstream, an upstream that did not answer in time, too many pending.
    pub failures: u64,
}

/// A forwarded query: where its answer goes back to.
struct Pending {
    /// The container's port slot and address, checked again when the answer comes.
    slot: usize,
    tag: u32,
    client: SocketAddrV4,
    /// The gateway address the query was sent to; the answer comes from it.
    server: SocketAddrV4,
    original_id: u16,
    upstream: SocketAddr,
    deadline: Instant,
    /// Kept to build a SERVFAIL if the upstream stays silent.
    query: Vec<u8>,
}

/// A reply ready for a container: the port slot and tag it is for, addresses, DNS message.
pub struct Reply {
    pub slot: usize,
    pub tag: u32,
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
        tag: u32,
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
                tag,
                client,
                server,
                original_id,
                upstream,
                deadline: now + UPSTREAM_TIMEOUT,
                query: query.to_vec(),
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
            let mut message = self.buf[..n].to_vec();
            message[..2].copy_from_slice(&pending.original_id.to_be_bytes());
            self.stats.upstream_answers += 1;
            replies.push(reply_for(&pending, message));
        }
        replies
    }

    /// SERVFAIL for every query whose upstream stayed silent.
    pub fn expire(&mut self, now: Instant) -> Vec<Reply> {
        let late: Vec<_> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(key, _)| *key)
            .collect();
        let mut replies = Vec::new();
        for key in late {
            let pending = self.pending.remove(&key).expect("listed just now");
            tracing::debug!("DNS upstream {} did not answer", pending.upstream);
            self.stats.failures += 1;
            if let Some(message) = dns::server_failure(&pending.query) {
                replies.push(reply_for(&pending, message));
            }
        }
        replies
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

fn reply_for(pending: &Pending, message: Vec<u8>) -> Reply {
    Reply {
        slot: pending.slot,
        tag: pending.tag,
        from: pending.server,
        to: pending.client,
        message,
    }
}

impl Daemon {
    /// `frame[..n]` from the container in `slot` is a UDP query to its gateway: answer it from
    /// the network's names, or forward it.
    pub(super) fn answer_query(&mut self, slot: usize, tag: u32, n: usize) {
        let Some((client, server, query)) = udp_datagram(&self.bufs.frame[VNET_HDR_LEN..n]) else {
            return;
        };
        let Some(network) = self.networks.get(tag) else {
            return;
        };
        self.resolver.stats.queries += 1;
        // A container attached on another host a moment ago: one revision check, like a route
        // miss (a reload only if the lighthouse changed).
        self.routes.refresh();
        let routes = &self.routes;
        let verdict = dns::answer(
            query,
            |name| routes.addresses_of(tag, name),
            network.member.internal,
        );
        let message = match verdict {
            dns::Verdict::Reply(message) => {
                self.resolver.stats.local_answers += 1;
                Some(message)
            }
            dns::Verdict::Forward => {
                let upstreams = &network.member.dns_upstreams;
                self.resolver
                    .forward(query, upstreams, slot, tag, client, server, Instant::now())
            }
            dns::Verdict::Ignore => None,
        };
        if let Some(message) = message {
            self.deliver_reply(Reply {
                slot,
                tag,
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
        let Some(port) = self.ports.get_mut(reply.slot) else {
            return;
        };
        if port.tag != reply.tag || port.address != *reply.to.ip() {
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
        if port.queue.write(frame).is_ok() {
            port.stats.to_container_packets += 1;
            port.stats.to_container_bytes += len as u64;
        } else {
            self.drops.count(DropReason::QueueFull);
        }
    }
}
