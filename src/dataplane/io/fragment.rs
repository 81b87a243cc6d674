//! IPv4 fragmentation of a member's packet too large for the path to its peer, when the
//! packet allows it (no DF): what a router before a narrower link does (RFC 791), so that the
//! tunnel's own datagrams never need fragmenting.

const IPV4_HEADER_MIN: usize = 20;
const MORE_FRAGMENTS: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

use super::packet::{checksum_fold, checksum_sum};

/// Cuts one IPv4 packet into fragments of at most `mtu` bytes.
pub struct Fragments {
    header_len: usize,
    /// Payload bytes per fragment but the last: a multiple of 8.
    chunk: usize,
    /// Payload bytes already written.
    done: usize,
    payload_len: usize,
    /// The packet's own fragment offset (in 8-byte units) and MF flag: it may be a fragment.
    first_offset: u16,
    more_after: bool,
}

impl Fragments {
    /// `None` for a packet that is not IPv4 or leaves no room for eight payload bytes.
    pub fn new(packet: &[u8], mtu: usize) -> Option<Fragments> {
        let header_len = usize::from(*packet.first()? & 0x0f) * 4;
        if packet[0] >> 4 != 4 || header_len < IPV4_HEADER_MIN || header_len > packet.len() {
            return None;
        }
        let chunk = mtu.checked_sub(header_len)? & !7;
        if chunk == 0 {
            return None;
        }
        let flags = u16::from_be_bytes([packet[6], packet[7]]);
        Some(Fragments {
            header_len,
            chunk,
            done: 0,
            payload_len: packet.len() - header_len,
            first_offset: flags & OFFSET_MASK,
            more_after: flags & MORE_FRAGMENTS != 0,
        })
    }

    /// Writes the next fragment of `packet` into `out`; returns its length, `None` when done.
    pub fn next_into(&mut self, packet: &[u8], out: &mut [u8]) -> Option<usize> {
        if self.done >= self.payload_len {
            return None;
        }
        let len = self.chunk.min(self.payload_len - self.done);
        let last = self.done + len == self.payload_len;
        let total = self.header_len + len;
        // Options are copied into every fragment: simpler than RFC 791's per-option rule, and
        // containers do not send them.
        out[..self.header_len].copy_from_slice(&packet[..self.header_len]);
        let from = self.header_len + self.done;
        out[self.header_len..total].copy_from_slice(&packet[from..from + len]);
        let offset = self.first_offset + (self.done / 8) as u16;
        let more = if last && !self.more_after {
            0
        } else {
            MORE_FRAGMENTS
        };
        out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        out[6..8].copy_from_slice(&(more | offset).to_be_bytes());
        out[10..12].fill(0);
        let sum = !checksum_fold(checksum_sum(&out[..self.header_len], 0));
        out[10..12].copy_from_slice(&sum.to_be_bytes());
        self.done += len;
        Some(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(payload_len: usize) -> Vec<u8> {
        let total = 20 + payload_len;
        let mut p = vec![
            0x45, 0, 0, 0, 0x12, 0x34, 0, 0, 64, 17, 0, 0, 10, 77, 0, 2, 10, 77, 0, 3,
        ];
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p.extend((0..payload_len).map(|i| (i % 251) as u8));
        p
    }

    #[test]
    fn fragments_fit_and_reassemble_to_the_packet() {
        let original = packet(3000);
        let mut fragments = Fragments::new(&original, 1216).unwrap();
        let mut out = [0u8; 1500];
        let mut payload = Vec::new();
        let mut expected_offset = 0;
        let mut last_flags = 0;
        while let Some(len) = fragments.next_into(&original, &mut out) {
            let f = &out[..len];
            assert!(len <= 1216);
            assert_eq!(u16::from_be_bytes([f[2], f[3]]) as usize, len);
            assert_eq!(checksum_fold(checksum_sum(&f[..20], 0)), 0xffff);
            assert_eq!(&f[4..6], &[0x12, 0x34], "one id for all");
            let flags = u16::from_be_bytes([f[6], f[7]]);
            assert_eq!(usize::from(flags & OFFSET_MASK) * 8, expected_offset);
            expected_offset += len - 20;
            payload.extend_from_slice(&f[20..]);
            last_flags = flags;
        }
        assert_eq!(last_flags & MORE_FRAGMENTS, 0, "the last says so");
        assert_eq!(payload, original[20..]);
    }

    #[test]
    fn a_fragment_is_cut_further_and_keeps_its_place() {
        let mut original = packet(2000);
        // Itself a middle fragment at offset 185 * 8, more to come.
        original[6..8].copy_from_slice(&(MORE_FRAGMENTS | 185).to_be_bytes());
        let mut fragments = Fragments::new(&original, 1000).unwrap();
        let mut out = [0u8; 1500];
        let mut flags = Vec::new();
        while let Some(len) = fragments.next_into(&original, &mut out) {
            flags.push(u16::from_be_bytes([out[6], out[7]]));
            assert!(len <= 1000);
        }
        assert_eq!(flags.len(), 3);
        assert_eq!(flags[0], MORE_FRAGMENTS | 185);
        assert_eq!(flags[1], MORE_FRAGMENTS | (185 + 976 / 8));
        assert!(flags.iter().all(|f| f & MORE_FRAGMENTS != 0));
    }

    #[test]
    fn no_room_for_payload_is_refused() {
        assert!(Fragments::new(&packet(100), 24).is_none());
        assert!(Fragments::new(&[0x60; 40], 1280).is_none());
    }
}
