//! What the data plane reads of an inner packet, and the network tag that travels with it.

use std::net::Ipv4Addr;

/// Bytes of network tag in front of each tunnelled packet (inside the encryption).
pub const TAG_LEN: usize = 4;

/// A network's tag: FNV-1a of its name. Tells networks apart on the wire, so two networks
/// with overlapping subnets on one host stay separate.
pub fn network_tag(name: &str) -> u32 {
    name.bytes().fold(0x811c_9dc5u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

/// Source and destination of an IPv4 packet; `None` for anything else.
pub fn ipv4_addresses(packet: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr)> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    let at = |i: usize| Ipv4Addr::new(packet[i], packet[i + 1], packet[i + 2], packet[i + 3]);
    Some((at(12), at(16)))
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
    fn tags_differ_and_addresses_parse() {
        assert_ne!(network_tag("a"), network_tag("b"));
        assert_eq!(network_tag("flatnet"), network_tag("flatnet"));
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
}
