//! What the data plane reads of an inner packet, and the size of the network id (the
//! network's identifier, [`crate::network_id`]) that travels with it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Bytes of network id in front of each tunnelled packet (inside the encryption).
pub const NETWORK_ID_LEN: usize = 4;

/// Source and destination of an IPv4 or IPv6 packet; `None` for anything else.
pub fn ip_addresses(packet: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match packet.first()? >> 4 {
        4 => ipv4_addresses(packet).map(|(src, dst)| (src.into(), dst.into())),
        6 => ipv6_addresses(packet).map(|(src, dst)| (src.into(), dst.into())),
        _ => None,
    }
}

/// The fixed IPv6 header's length; the addresses are its last 32 bytes.
pub const IPV6_HEADER: usize = 40;

/// Source and destination of an IPv6 packet; `None` for anything else.
pub fn ipv6_addresses(packet: &[u8]) -> Option<(Ipv6Addr, Ipv6Addr)> {
    if packet.len() < IPV6_HEADER || packet[0] >> 4 != 6 {
        return None;
    }
    let at = |i: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&packet[i..i + 16]).expect("16"));
    Some((at(8), at(24)))
}

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

/// What segmentation, coalescing and checksums need of a packet's IP header, either family:
/// its length, the transport protocol, and where the pseudo-header's addresses lie. IPv6
/// extension headers are not looked through (TCP and UDP right after the fixed header only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpHeader {
    pub ipv6: bool,
    pub len: usize,
    pub protocol: u8,
}

impl IpHeader {
    /// The header of an unfragmented packet whose length fields agree with its size.
    pub fn whole(packet: &[u8]) -> Option<IpHeader> {
        match packet.first()? >> 4 {
            4 if packet.len() >= IPV4_HEADER => {
                let len = usize::from(packet[0] & 0x0f) * 4;
                let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
                let fragmented = u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff != 0;
                (len >= IPV4_HEADER && total == packet.len() && !fragmented).then_some(IpHeader {
                    ipv6: false,
                    len,
                    protocol: packet[9],
                })
            }
            6 if packet.len() >= IPV6_HEADER => {
                let payload = usize::from(u16::from_be_bytes([packet[4], packet[5]]));
                (IPV6_HEADER + payload == packet.len()).then_some(IpHeader {
                    ipv6: true,
                    len: IPV6_HEADER,
                    protocol: packet[6],
                })
            }
            _ => None,
        }
    }

    /// The source and destination addresses, as the pseudo-header sums them.
    pub fn addresses(self, packet: &[u8]) -> &[u8] {
        if self.ipv6 {
            &packet[8..40]
        } else {
            &packet[12..20]
        }
    }

    /// Sets the packet's length fields to its size (and the IPv4 header's checksum).
    pub fn set_length(self, packet: &mut [u8]) {
        if self.ipv6 {
            let payload = (packet.len() - IPV6_HEADER) as u16;
            packet[4..6].copy_from_slice(&payload.to_be_bytes());
            return;
        }
        let total = packet.len() as u16;
        packet[2..4].copy_from_slice(&total.to_be_bytes());
        packet[10..12].copy_from_slice(&[0, 0]);
        let sum = !checksum_fold(checksum_sum(&packet[..self.len], 0));
        packet[10..12].copy_from_slice(&sum.to_be_bytes());
    }

    /// The folded pseudo-header sum of the transport segment that follows the header.
    pub fn pseudo_sum(self, packet: &[u8]) -> u16 {
        let transport_len = (packet.len() - self.len) as u64;
        checksum_fold(checksum_sum(
            self.addresses(packet),
            u64::from(self.protocol) + transport_len,
        ))
    }
}

/// A whole (unfragmented) UDP datagram in an IPv4 packet, or in an IPv6 packet without
/// extension headers: source, destination and payload.
pub fn udp_datagram(packet: &[u8]) -> Option<(SocketAddr, SocketAddr, &[u8])> {
    let (src, dst) = ip_addresses(packet)?;
    let udp = match src {
        IpAddr::V4(_) => {
            let header = usize::from(packet[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
            let fragmented = u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff != 0;
            if packet[9] != PROTO_UDP || fragmented || header < IPV4_HEADER || total > packet.len()
            {
                return None;
            }
            packet.get(header..total)?
        }
        IpAddr::V6(_) => {
            let total = IPV6_HEADER + usize::from(u16::from_be_bytes([packet[4], packet[5]]));
            if packet[6] != PROTO_UDP || total > packet.len() {
                return None;
            }
            &packet[IPV6_HEADER..total]
        }
    };
    let length = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    if length < UDP_HEADER || length > udp.len() {
        return None;
    }
    let port = |at: usize| u16::from_be_bytes([udp[at], udp[at + 1]]);
    Some((
        SocketAddr::new(src, port(0)),
        SocketAddr::new(dst, port(2)),
        &udp[UDP_HEADER..length],
    ))
}

/// Writes an IPv4 or IPv6 packet (the addresses' family, which must be one) carrying a UDP
/// datagram into `out`, checksums included; returns its length, or `None` if `out` is too
/// small.
pub fn write_udp_packet(
    out: &mut [u8],
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
) -> Option<usize> {
    let udp_len = UDP_HEADER + payload.len();
    // On the stack: a header of either family, and how much of it is used.
    let (ip_header, header_len) = match (src.ip(), dst.ip()) {
        (IpAddr::V4(from), IpAddr::V4(to)) => (ipv4_header(from, to, udp_len), IPV4_HEADER),
        (IpAddr::V6(from), IpAddr::V6(to)) => (ipv6_header(from, to, udp_len), IPV6_HEADER),
        _ => return None,
    };
    let ip_header = &ip_header[..header_len];
    let total = ip_header.len() + udp_len;
    if udp_len > usize::from(u16::MAX) - IPV4_HEADER || total > out.len() {
        return None;
    }
    let out = &mut out[..total];
    let (header, udp) = out.split_at_mut(ip_header.len());
    header.copy_from_slice(ip_header);
    udp[0..2].copy_from_slice(&src.port().to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    udp[6..8].fill(0);
    udp[UDP_HEADER..].copy_from_slice(payload);
    // Pseudo-header: both addresses (where each family keeps them), protocol and length.
    let addresses = match src {
        SocketAddr::V4(_) => &header[12..20],
        SocketAddr::V6(_) => &header[8..40],
    };
    let pseudo = checksum_sum(addresses, u64::from(PROTO_UDP) + udp_len as u64);
    let sum = !checksum_fold(checksum_sum(udp, pseudo));
    // A computed zero is sent as all ones (zero means "no checksum", not allowed over IPv6).
    let sum = if sum == 0 { 0xffff } else { sum };
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
    Some(total)
}

/// An IPv4 header, checksummed, for a UDP datagram of `udp_len` bytes (in the first 20 bytes).
fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, udp_len: usize) -> [u8; IPV6_HEADER] {
    let mut header = [0u8; IPV6_HEADER];
    header[..12].copy_from_slice(&[
        0x45, 0, 0, 0, // version 4, 20-byte header; length below
        0, 0, 0x40, 0, // id 0, don't fragment
        64, PROTO_UDP, 0, 0, // TTL, protocol; checksum below
    ]);
    header[2..4].copy_from_slice(&((IPV4_HEADER + udp_len) as u16).to_be_bytes());
    header[12..16].copy_from_slice(&src.octets());
    header[16..20].copy_from_slice(&dst.octets());
    let sum = !checksum_fold(checksum_sum(&header[..IPV4_HEADER], 0));
    header[10..12].copy_from_slice(&sum.to_be_bytes());
    header
}

/// An IPv6 header for a UDP datagram of `udp_len` bytes.
fn ipv6_header(src: Ipv6Addr, dst: Ipv6Addr, udp_len: usize) -> [u8; IPV6_HEADER] {
    let mut header = [0u8; IPV6_HEADER];
    header[..8].copy_from_slice(&[0x60, 0, 0, 0, 0, 0, PROTO_UDP, 64]);
    header[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    header[8..24].copy_from_slice(&src.octets());
    header[24..40].copy_from_slice(&dst.octets());
    header
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
    fn both_families_parse() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[12..16].copy_from_slice(&[10, 77, 0, 2]);
        v4[16..20].copy_from_slice(&[10, 77, 0, 3]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(ip_addresses(&v4), Some((ip("10.77.0.2"), ip("10.77.0.3"))));
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[8..24].copy_from_slice(&ip6("fd77::2").octets());
        v6[24..40].copy_from_slice(&ip6("fd77::3").octets());
        assert_eq!(ip_addresses(&v6), Some((ip("fd77::2"), ip("fd77::3"))));
        assert_eq!(ip_addresses(&v6[..39]), None);
        v6[0] = 0x50;
        assert_eq!(ip_addresses(&v6), None);
        assert_eq!(ip_addresses(&[]), None);
    }

    #[test]
    fn ipv6_udp_packets_round_trip_with_valid_checksums() {
        let src: SocketAddr = "[fd77::1]:53".parse().unwrap();
        let dst: SocketAddr = "[fd77::5]:40000".parse().unwrap();
        let mut buf = [0u8; 128];
        let len = write_udp_packet(&mut buf, src, dst, b"answer!").unwrap();
        assert_eq!(len, 40 + 8 + 7);
        let packet = &buf[..len];
        assert_eq!(ip_addresses(packet), Some((src.ip(), dst.ip())));
        let pseudo = checksum_sum(&packet[8..40], 17 + 15);
        assert_eq!(checksum_fold(checksum_sum(&packet[40..], pseudo)), 0xffff);
        assert_eq!(udp_datagram(packet), Some((src, dst, &b"answer!"[..])));
        let mut tcp = buf;
        tcp[6] = 6;
        assert_eq!(udp_datagram(&tcp[..len]), None);
        assert_eq!(udp_datagram(&buf[..len - 1]), None);
        let v4: SocketAddr = "10.77.0.1:53".parse().unwrap();
        assert_eq!(
            write_udp_packet(&mut buf, v4, dst, b"x"),
            None,
            "one family"
        );
    }

    fn ip6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn udp_packets_round_trip_with_valid_checksums() {
        let src: SocketAddr = "10.77.0.1:53".parse().unwrap();
        let dst: SocketAddr = "10.77.0.5:40000".parse().unwrap();
        let mut buf = [0u8; 128];
        let len = write_udp_packet(&mut buf, src, dst, b"answer!").unwrap();
        assert_eq!(len, 20 + 8 + 7);
        let packet = &buf[..len];
        // A correct checksum sums (with itself) to all ones.
        assert_eq!(checksum_fold(checksum_sum(&packet[..20], 0)), 0xffff);
        let mut pseudo = [0u8; 12];
        pseudo[..4].copy_from_slice(&packet[12..16]);
        pseudo[4..8].copy_from_slice(&packet[16..20]);
        pseudo[9] = 17;
        pseudo[10..12].copy_from_slice(&15u16.to_be_bytes());
        let udp_sum = checksum_fold(checksum_sum(&packet[20..], checksum_sum(&pseudo, 0)));
        assert_eq!(udp_sum, 0xffff);
        assert_eq!(udp_datagram(packet), Some((src, dst, &b"answer!"[..])));
        assert_eq!(write_udp_packet(&mut buf[..30], src, dst, b"answer!"), None);
    }

    #[test]
    fn fragments_and_other_protocols_are_not_datagrams() {
        let src: SocketAddr = "10.77.0.5:1000".parse().unwrap();
        let dst: SocketAddr = "10.77.0.1:53".parse().unwrap();
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
