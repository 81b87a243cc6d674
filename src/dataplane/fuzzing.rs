//! Entry points for the fuzz targets in `fuzz/`, compiled only with `--cfg fuzzing` (cargo
//! fuzz sets it): each drives one parser that sees bytes from outside the way the data plane
//! drives it, so a crash found here is a crash flatnetd would have.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::Instant;

use super::coalesce::Coalescer;
use super::offload::{Segments, VNET_HDR_LEN};
use super::packet::{ipv4_addresses, udp_datagram};
use crate::tunnel::mac::MacKey;
use crate::tunnel::wire::{INIT_LEN, INIT_MAC1_END, MAX_DATAGRAM};
use crate::tunnel::{Limits, StaticKeys, TunnelManager};

struct Pair {
    receiver: TunnelManager,
    sender: TunnelManager,
    sender_at: SocketAddr,
    receiver_at: SocketAddr,
}

thread_local! {
    /// Two hosts with an established session, made once: the receiver keeps its state
    /// (peers, replay windows) across inputs, as a long-running daemon does.
    static PAIR: RefCell<Pair> = RefCell::new(established_pair());
}

fn established_pair() -> Pair {
    let mut pair = Pair {
        receiver: TunnelManager::new(StaticKeys::generate().unwrap(), Limits::default()),
        sender: TunnelManager::new(StaticKeys::generate().unwrap(), Limits::default()),
        sender_at: SocketAddr::from(([192, 0, 2, 1], 4800)),
        receiver_at: SocketAddr::from(([192, 0, 2, 2], 4800)),
    };
    let now = Instant::now();
    let mut out = vec![0u8; MAX_DATAGRAM];
    let mut plain = vec![0u8; MAX_DATAGRAM];
    let mut wire = Vec::new();
    let key = *pair.receiver.public_key();
    let _ = pair.sender.encrypt_packet(
        &key,
        pair.receiver_at,
        b"hello",
        &mut out,
        now,
        &mut |d, _| wire.push((d.to_vec(), true)),
    );
    while let Some((datagram, to_receiver)) = wire.pop() {
        let (host, from) = match to_receiver {
            true => (&mut pair.receiver, pair.sender_at),
            false => (&mut pair.sender, pair.receiver_at),
        };
        host.decrypt_packet(
            &datagram,
            from,
            &mut plain,
            now,
            &mut |_| true,
            &mut |d, _| wire.push((d.to_vec(), !to_receiver)),
        );
    }
    pair
}

/// A datagram from the underlay. The first byte chooses how far it can get: as it is (the
/// framing and the MAC check), with a valid MAC (the Noise handshake code), or as the payload
/// of a valid transport message (decryption, replay window, and the inner packet parsers).
pub fn tunnel_receive(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    PAIR.with(|pair| {
        let pair = &mut *pair.borrow_mut();
        let now = Instant::now();
        let mut plain = vec![0u8; MAX_DATAGRAM];
        let mut datagram = body.to_vec();
        match mode % 3 {
            0 => {}
            1 if datagram.len() >= 16 => {
                // An initiation's mac1 sits before its mac2; other messages end with it.
                let mac1_end = match datagram.len() {
                    INIT_LEN => INIT_MAC1_END,
                    len => len,
                };
                MacKey::for_receiver(pair.receiver.public_key()).seal(&mut datagram[..mac1_end])
            }
            _ => {
                let key = *pair.receiver.public_key();
                let mut sealed = vec![0u8; body.len() + 64];
                let mut sent = Vec::new();
                let _ = pair.sender.encrypt_packet(
                    &key,
                    pair.receiver_at,
                    body,
                    &mut sealed,
                    now,
                    &mut |d, _| sent.push(d.to_vec()),
                );
                datagram = sent.pop().unwrap_or_default();
            }
        }
        let received = pair.receiver.decrypt_packet(
            &datagram,
            pair.sender_at,
            &mut plain,
            now,
            &mut |_| true,
            &mut |_, _| {},
        );
        if let crate::tunnel::Received::Data { len, .. } = received {
            let packet = &plain[..len];
            let _ = ipv4_addresses(packet);
            let _ = udp_datagram(packet);
        }
    });
}

/// A frame read from a container's offload queue, cut into packets to tunnel.
pub fn segment_frame(frame: &[u8]) {
    let Some(mut segments) = Segments::new(frame) else {
        return;
    };
    let mut out = vec![0u8; frame.len() + 2 * VNET_HDR_LEN + 128];
    let mut count = 0usize;
    while let Some(len) = segments.next_into(frame, &mut out) {
        assert!(len <= out.len());
        count += 1;
        assert!(
            count <= 65536,
            "a frame never yields more segments than bytes"
        );
    }
}

/// Decrypted packets for containers, joined into trains. Each input is a list of packets,
/// each behind a two-byte length and a one-byte queue slot.
pub fn coalesce(data: &[u8]) {
    let mut coalescer = Coalescer::new();
    let mut rest = data;
    while rest.len() >= 3 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let slot = usize::from(rest[2] % 4);
        let packet = &rest[3..(3 + len).min(rest.len())];
        rest = &rest[3 + packet.len()..];
        if coalescer.append(slot, packet) {
            continue;
        }
        if let Some(train) = coalescer.finish() {
            assert!(train.frame.len() >= VNET_HDR_LEN && train.segments >= 1);
        }
        coalescer.start(slot, packet);
    }
    let _ = coalescer.finish();
}
