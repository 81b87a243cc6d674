//! DNS for containers, inside the data plane: a UDP query a container sends to its gateway's
//! port 53 never reaches a socket. flatnetd takes it off the container's queue, answers Flatnet
//! names from its route table (`crate::dns` decides), and forwards other names from the host's
//! namespace to the network's upstream resolvers ([`super::forwarder`]). Nothing listens inside
//! the container or on the host.

use std::io::Write;
use std::time::Instant;

use super::forwarder::{Asked, Reply};
use super::offload::{DELIVERY_HEADER, VNET_HDR_LEN};
use super::packet::{udp_datagram, write_udp_packet};
use super::Daemon;
use crate::dns;
use crate::lighthouse::NetworkId;
use crate::tunnel::DropReason;

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
        self.forwarder.stats.queries += 1;
        let routes = &self.routes;
        let verdict = dns::answer(
            query,
            |name| routes.addresses_of(network_id, name),
            network.member.internal,
        );
        let message = match verdict {
            dns::Verdict::Reply(message) => {
                self.forwarder.stats.local_answers += 1;
                Some(message)
            }
            dns::Verdict::Forward => {
                let asked = Asked {
                    slot,
                    network_id,
                    client,
                    server,
                };
                let upstreams = &network.member.dns_upstreams;
                self.forwarder
                    .forward(query, upstreams, asked, Instant::now())
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
        for reply in self.forwarder.receive() {
            self.deliver_reply(reply);
        }
    }

    pub(super) fn expire_dns_queries(&mut self, now: Instant) {
        for reply in self.forwarder.expire(now) {
            self.deliver_reply(reply);
        }
    }

    /// Writes a DNS answer into the container's queue, if the slot still holds the container
    /// that asked (it may have left while an upstream was thinking).
    fn deliver_reply(&mut self, reply: Reply) {
        let Some(queue) = self.queues.get_mut(reply.slot) else {
            return;
        };
        if queue.network_id != reply.network_id || !queue.addresses.contains(&reply.to.ip()) {
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
