//! ICMP errors the data plane sends to a member, as the router it stands in for would.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::packet::{checksum_fold, checksum_sum};

/// An ICMP error and the original packet it quotes fit in 576 bytes, what every IPv4 host
/// accepts (RFC 1812, 4.3.2.3).
pub const MAX_ERROR_LEN: usize = 576;
const IPV4_HEADER: usize = 20;
const ICMP_HEADER: usize = 8;
const PROTO_ICMP: u8 = 1;
const DESTINATION_UNREACHABLE: u8 = 3;
const FRAGMENTATION_NEEDED: u8 = 4;
const IPV6_HEADER: usize = 40;
const PROTO_ICMPV6: u8 = 58;
const PACKET_TOO_BIG: u8 = 2;

/// Writes into `out` (at least [`MAX_ERROR_LEN`] long) an IPv4 ICMP "fragmentation needed and
/// DF set" from `from` to the source of `original`, naming `mtu` as the next hop's MTU and
/// quoting as much of `original` as fits; returns its length.
pub fn fragmentation_needed(out: &mut [u8], from: Ipv4Addr, mtu: u16, original: &[u8]) -> usize {
    let quoted = original
        .len()
        .min(MAX_ERROR_LEN - IPV4_HEADER - ICMP_HEADER);
    let total = IPV4_HEADER + ICMP_HEADER + quoted;
    let out = &mut out[..total];
    out[..IPV4_HEADER].copy_from_slice(&[
        0x45, 0xc0, 0, 0, // version 4, 20-byte header, internetwork control; length below
        0, 0, 0, 0, // id 0, may fragment
        64, PROTO_ICMP, 0, 0, // TTL, protocol; checksum below
        0, 0, 0, 0, 0, 0, 0, 0, // addresses below
    ]);
    out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    out[12..16].copy_from_slice(&from.octets());
    out[16..20].copy_from_slice(&original[12..16]);
    let header_sum = !checksum_fold(checksum_sum(&out[..IPV4_HEADER], 0));
    out[10..12].copy_from_slice(&header_sum.to_be_bytes());

    let icmp = &mut out[IPV4_HEADER..];
    icmp[..ICMP_HEADER].copy_from_slice(&[
        DESTINATION_UNREACHABLE,
        FRAGMENTATION_NEEDED,
        0,
        0,
        0,
        0,
        0,
        0,
    ]);
    icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    icmp[ICMP_HEADER..].copy_from_slice(&original[..quoted]);
    let sum = !checksum_fold(checksum_sum(icmp, 0));
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    total
}

/// Writes into `out` (at least [`MAX_ERROR_LEN`] long) an ICMPv6 "packet too big" from `from`
/// to the source of the IPv6 packet `original`, naming `mtu` and quoting as much of `original`
/// as fits in [`MAX_ERROR_LEN`] (RFC 4443 allows up to 1280; the headers are what a sender
/// reads); returns its length.
pub fn packet_too_big(out: &mut [u8], from: Ipv6Addr, mtu: u32, original: &[u8]) -> usize {
    let quoted = original
        .len()
        .min(MAX_ERROR_LEN - IPV6_HEADER - ICMP_HEADER);
    let payload = ICMP_HEADER + quoted;
    let total = IPV6_HEADER + payload;
    let out = &mut out[..total];
    out[..8].copy_from_slice(&[0x60, 0, 0, 0, 0, 0, PROTO_ICMPV6, 64]);
    out[4..6].copy_from_slice(&(payload as u16).to_be_bytes());
    out[8..24].copy_from_slice(&from.octets());
    out[24..40].copy_from_slice(&original[8..24]);
    let (addresses, icmp) = out.split_at_mut(IPV6_HEADER);
    icmp[..ICMP_HEADER].copy_from_slice(&[PACKET_TOO_BIG, 0, 0, 0, 0, 0, 0, 0]);
    icmp[4..8].copy_from_slice(&mtu.to_be_bytes());
    icmp[ICMP_HEADER..].copy_from_slice(&original[..quoted]);
    // Pseudo-header: both addresses, the length and the next header.
    let pseudo = checksum_sum(&addresses[8..40], payload as u64 + u64::from(PROTO_ICMPV6));
    let sum = !checksum_fold(checksum_sum(icmp, pseudo));
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_quotes_the_packet_names_the_mtu_and_checks_out() {
        let mut original = vec![0u8; 1400];
        original[..20].copy_from_slice(&[
            0x45, 0, 0x05, 0x78, 0, 7, 0x40, 0, 64, 6, 0, 0, 10, 77, 0, 2, 10, 77, 0, 9,
        ]);
        let mut out = [0u8; MAX_ERROR_LEN];
        let gateway = Ipv4Addr::new(10, 77, 0, 1);
        let len = fragmentation_needed(&mut out, gateway, 1216, &original);
        assert_eq!(len, MAX_ERROR_LEN, "quoted up to 576 bytes in all");
        let p = &out[..len];
        assert_eq!(u16::from_be_bytes([p[2], p[3]]) as usize, len);
        assert_eq!(checksum_fold(checksum_sum(&p[..20], 0)), 0xffff);
        assert_eq!(&p[12..16], &gateway.octets());
        assert_eq!(&p[16..20], &[10, 77, 0, 2], "back to the sender");
        assert_eq!((p[20], p[21]), (3, 4));
        assert_eq!(u16::from_be_bytes([p[26], p[27]]), 1216);
        assert_eq!(checksum_fold(checksum_sum(&p[20..], 0)), 0xffff);
        assert_eq!(&p[28..48], &original[..20], "the original header is quoted");

        let short = &original[..28];
        assert_eq!(
            fragmentation_needed(&mut out, gateway, 1216, short),
            20 + 8 + 28
        );
    }

    #[test]
    fn the_ipv6_error_goes_back_names_the_mtu_and_checks_out() {
        let sender: Ipv6Addr = "fd77::2".parse().unwrap();
        let gateway: Ipv6Addr = "fd77::1".parse().unwrap();
        let mut original = vec![0u8; 1400];
        original[..8].copy_from_slice(&[0x60, 0, 0, 0, 0x05, 0x50, 6, 64]);
        original[8..24].copy_from_slice(&sender.octets());
        original[24..40].copy_from_slice(&"fd77::9".parse::<Ipv6Addr>().unwrap().octets());
        let mut out = [0u8; MAX_ERROR_LEN];
        let len = packet_too_big(&mut out, gateway, 1280, &original);
        assert_eq!(len, MAX_ERROR_LEN);
        let p = &out[..len];
        assert_eq!(usize::from(u16::from_be_bytes([p[4], p[5]])), len - 40);
        assert_eq!(
            (p[6], &p[8..24], &p[24..40]),
            (58, &gateway.octets()[..], &sender.octets()[..])
        );
        assert_eq!((p[40], p[41]), (2, 0));
        assert_eq!(u32::from_be_bytes(p[44..48].try_into().unwrap()), 1280);
        assert_eq!(&p[48..88], &original[..40], "the original header is quoted");
        let pseudo = checksum_sum(&p[8..40], (len - 40) as u64 + 58);
        assert_eq!(checksum_fold(checksum_sum(&p[40..], pseudo)), 0xffff);
    }
}
