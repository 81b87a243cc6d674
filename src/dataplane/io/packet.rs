//! What the data plane reads of an inner packet, and the size of the network id (the
//! network's identifier, [`crate::network_id`]) that travels with it.

use std::net::{Ipv4Addr, SocketAddrV4};

/// Bytes of network id in front of each tunnelled packet (inside the encryption).
pub const NETWORK_ID_LEN: usize = 4;

/// Source and destination of an IPv4 packet; `None` for anything else.
pub fn ipv4_addresses(packet: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr)> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    let at = |i: usize| Ipv4Addr::new(packet[i], packet[i + 1], packet[i + 2], packet[i + 3]);
    Some((at(12), at(16)))
}

const IPV4_HEADER: usize = 20;
const UDP_HEADER: usize = 8;
const PROTO_UDP: u8 = 17;

/// A whole (unfragmented) UDP datagram in an IPv4 packet: source, destination and payload.
pub fn udp_datagram(packet: &[u8]) -> Option<(SocketAddrV4, SocketAddrV4, &[u8])> {
    let (src, dst) = ipv4_addresses(packet)?;
    let header = usize::from(packet[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    let fragmented = u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff != 0;
    if packet[9] != PROTO_UDP || fragmented || header < IPV4_HEADER || total > packet.len() {
        return None;
    }
    let udp = packet.get(header..total)?;
    let length = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    if length < UDP_HEADER || length > udp.len() {
        return None;
    }
    let port = |at: usize| u16::from_be_bytes([udp[at], udp[at + 1]]);
    Some((
        SocketAddrV4::new(src, port(0)),
        SocketAddrV4::new(dst, port(2)),
        &udp[UDP_HEADER..length],
    ))
}

/// Writes an IPv4 packet carrying a UDP datagram into `out`, checksums included; returns its
/// length, or `None` if `out` is too small.
pub fn write_udp_packet(
    out: &mut [u8],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: &[u8],
) -> Option<usize> {
    let udp_len = UDP_HEADER + payload.len();
    let total = IPV4_HEADER + udp_len;
    if total > usize::from(u16::MAX) || total > out.len() {
        return None;
    }
    let out = &mut out[..total];
    out[..IPV4_HEADER].copy_from_slice(&[
        0x45, 0, 0, 0, // version 4, 20-byte header; length below
        0, 0, 0x40, 0, // id 0, don't fragment
        64, PROTO_UDP, 0, 0, // TTL, protocol; checksum below
        0, 0, 0, 0, 0, 0, 0, 0, // addresses below
    ]);
    out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    out[12..16].copy_from_slice(&src.ip().octets());
    out[16..20].copy_from_slice(&dst.ip().octets());
    let header_sum = !checksum_fold(checksum_sum(&out[..IPV4_HEADER], 0));
    out[10..12].copy_from_slice(&header_sum.to_be_bytes());

    let udp = &mut out[IPV4_HEADER..];
    udp[0..2].copy_from_slice(&src.port().to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    udp[6..8].fill(0);
    udp[UDP_HEADER..].copy_from_slice(payload);
    // Pseudo-header: addresses, protocol and UDP length, then the datagram itself.
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&src.ip().octets());
    pseudo[4..8].copy_from_slice(&dst.ip().octets());
    pseudo[9] = PROTO_UDP;
    pseudo[10..12].copy_from_slice(&(udp_len as u16).to_be_bytes());
    let sum = !checksum_fold(checksum_sum(udp, checksum_sum(&pseudo, 0)));
    // A computed zero is sent as all ones (zero means "no checksum" in UDP over IPv4).
    let sum = if sum == 0 { 0xffff } else { sum };
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
    Some(total)
}

/// Internet checksum accumulation (RFC 1071) over big-endian 16-bit words.
pub fn checksum_sum(data: &[u8], initial: u64) -> u64 {
    let mut acc = initial;
    let mut chunks = data.chunks_exact(8);
    for c in chunks.by_ref() {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]))
            + u64::from(u16::from_be_bytes([c[2], c[3]]))
            + u64::from(u16::from_be_bytes([c[4], c[5]]))
            + u64::from(u16::from_be_bytes([c[6], c[7]]));
    }
    let mut words = chunks.remainder().chunks_exact(2);
    for w in words.by_ref() {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [b] = words.remainder() {
        acc += u64::from(u16::from_be_bytes([*b, 0]));
    }
    acc
}

/// Folds a checksum accumulation to 16 bits (not complemented).
pub fn checksum_fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        let mut p = [0u8; 20];
        p[0] = 0x45;
        p[12..16].copy_from_slice(&[10, 77, 0, 2]);
        p[16..20].copy_from_slice(&[10, 77, 0, 3]);
        assert_eq!(
            ipv4_addresses(&p),
            Some((Ipv4Addr::new(10, 77, 0, 2), Ipv4Addr::new(10, 77, 0, 3)))
        );
        p[0] = 0x60;
        assert_eq!(ipv4_addresses(&p), None);
        assert_eq!(ipv4_addresses(&p[..10]), None);
    }

    #[test]
    fn udp_packets_round_trip_with_valid_checksums() {
        let src: SocketAddrV4 = "10.77.0.1:53".parse().unwrap();
        let dst: SocketAddrV4 = "10.77.0.5:40000".parse().unwrap();
        let mut buf = [0u8; 128];
        let len = write_udp_packet(&mut buf, src, dst, b"answer!").unwrap();
        assert_eq!(len, 20 + 8 + 7);
        let packet = &buf[..len];
        // A correct checksum sums (with itself) to all ones.
        assert_eq!(checksum_fold(checksum_sum(&packet[..20], 0)), 0xffff);
        let mut pseudo = [0u8; 12];
        pseudo[..4].copy_from_slice(&src.ip().octets());
        pseudo[4..8].copy_from_slice(&dst.ip().octets());
        pseudo[9] = 17;
        pseudo[10..12].copy_from_slice(&15u16.to_be_bytes());
        let udp_sum = checksum_fold(checksum_sum(&packet[20..], checksum_sum(&pseudo, 0)));
        assert_eq!(udp_sum, 0xffff);
        assert_eq!(udp_datagram(packet), Some((src, dst, &b"answer!"[..])));
        assert_eq!(write_udp_packet(&mut buf[..30], src, dst, b"answer!"), None);
    }

    #[test]
    fn fragments_and_other_protocols_are_not_datagrams() {
        let src: SocketAddrV4 = "10.77.0.5:1000".parse().unwrap();
        let dst: SocketAddrV4 = "10.77.0.1:53".parse().unwrap();
        let mut buf = [0u8; 64];
        let len = write_udp_packet(&mut buf, src, dst, b"q").unwrap();
        let mut fragment = buf;
        fragment[6] |= 0x20; // more fragments
        assert_eq!(udp_datagram(&fragment[..len]), None);
        let mut tcp = buf;
        tcp[9] = 6;
        assert_eq!(udp_datagram(&tcp[..len]), None);
        assert_eq!(udp_datagram(&buf[..len - 1]), None);
    }
}
