//! Receive-side coalescing: consecutive segments of one TCP flow that arrive in one batch from
//! the underlay are joined into a single segment train and written to the container's TUN queue
//! at once, with a virtio-net header telling the kernel how to treat it (the reverse of
//! `offload`). One write and one pass through the container's stack per train instead of per
//! packet.

use super::offload::{delivery_header, VNET_HDR_LEN};
use super::packet::IpHeader;

const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;
const MAX_TRAIN: usize = 65535;

/// A train being built for one container.
pub struct Coalescer {
    frame: Vec<u8>,
    /// Bytes of `frame` in use; 0 when empty.
    len: usize,
    slot: usize,
    /// The train's IP header: IPv4 or IPv6, and where TCP starts.
    ip: Option<IpHeader>,
    headers_len: usize,
    segment_size: usize,
    next_seq: u32,
    segments: u16,
    /// A short or PSH segment ends a train.
    closed: bool,
}

/// A finished train (or single packet) and the queue it goes to.
pub struct Train<'a> {
    pub slot: usize,
    pub frame: &'a [u8],
    pub segments: u16,
}

impl Coalescer {
    pub fn new() -> Self {
        Coalescer {
            frame: vec![0; VNET_HDR_LEN + MAX_TRAIN],
            len: 0,
            slot: 0,
            ip: None,
            headers_len: 0,
            segment_size: 0,
            next_seq: 0,
            segments: 0,
            closed: false,
        }
    }

    /// Adds an IPv4 or IPv6 packet for the queue in `slot`. False means it does not continue the
    /// current train: finish that one, then [`Coalescer::start`] with the packet.
    pub fn append(&mut self, slot: usize, packet: &[u8]) -> bool {
        if self.len == 0 || self.closed || slot != self.slot {
            return false;
        }
        let Some(seg) = TcpSegment::parse(packet) else {
            return false;
        };
        let train = &self.frame[VNET_HDR_LEN..self.len];
        let payload = packet.len() - seg.headers_len;
        let same_flow = Some(seg.ip) == self.ip
            && seg.headers_len == self.headers_len
            && same_ip_fields(seg.ip, packet, train)
            && same_tcp_fields(seg.ip.len, seg.headers_len, packet, train);
        if !same_flow
            || seg.seq != self.next_seq
            || payload > self.segment_size
            || self.len + payload > self.frame.len()
        {
            return false;
        }
        self.frame[self.len..self.len + payload].copy_from_slice(&packet[seg.headers_len..]);
        self.len += payload;
        self.next_seq = self.next_seq.wrapping_add(payload as u32);
        self.segments += 1;
        if seg.flags & TCP_PSH != 0 {
            self.frame[VNET_HDR_LEN + seg.ip.len + 13] |= TCP_PSH;
        }
        self.closed = payload < self.segment_size || seg.flags & TCP_PSH != 0;
        true
    }

    /// Starts a train with `packet` if it can begin one (a plain TCP data segment); false
    /// means it is to be written on its own.
    pub fn start(&mut self, slot: usize, packet: &[u8]) -> bool {
        debug_assert_eq!(self.len, 0, "finish the previous train first");
        let Some(seg) = TcpSegment::parse(packet) else {
            return false;
        };
        let payload = packet.len() - seg.headers_len;
        self.frame[VNET_HDR_LEN..VNET_HDR_LEN + packet.len()].copy_from_slice(packet);
        self.len = VNET_HDR_LEN + packet.len();
        self.slot = slot;
        self.ip = Some(seg.ip);
        self.headers_len = seg.headers_len;
        self.segment_size = payload;
        self.next_seq = seg.seq.wrapping_add(payload as u32);
        self.segments = 1;
        self.closed = seg.flags & TCP_PSH != 0;
        true
    }

    /// Finishes the current train: headers fixed up, virtio-net header written. `None` if
    /// there is none. The coalescer is empty afterwards.
    pub fn finish(&mut self) -> Option<Train<'_>> {
        if self.len == 0 {
            return None;
        }
        let len = std::mem::take(&mut self.len);
        let segments = self.segments;
        if segments > 1 {
            self.seal(len);
        } else {
            let header = delivery_header(&mut self.frame[VNET_HDR_LEN..len]);
            self.frame[..VNET_HDR_LEN].copy_from_slice(&header);
        }
        Some(Train {
            slot: self.slot,
            frame: &self.frame[..len],
            segments,
        })
    }

    /// IP length (and IPv4 checksum) of the joined packet, the partial TCP checksum the kernel
    /// will finish, and the header that says "TCP segments of `segment_size`".
    fn seal(&mut self, len: usize) {
        let ip = self.ip.expect("a train has its IP header");
        let packet = &mut self.frame[VNET_HDR_LEN..len];
        ip.set_length(packet);
        let pseudo = ip.pseudo_sum(packet);
        packet[ip.len + 16..ip.len + 18].copy_from_slice(&pseudo.to_be_bytes());

        let header = &mut self.frame[..VNET_HDR_LEN];
        header[0] = 1; // NEEDS_CSUM
        header[1] = if ip.ipv6 { 4 } else { 1 }; // GSO_TCPV6, GSO_TCPV4
        header[2..4].copy_from_slice(&(self.headers_len as u16).to_ne_bytes());
        header[4..6].copy_from_slice(&(self.segment_size as u16).to_ne_bytes());
        header[6..8].copy_from_slice(&(ip.len as u16).to_ne_bytes());
        header[8..10].copy_from_slice(&16u16.to_ne_bytes());
    }
}

/// Addresses and ports, and the IP fields every segment of a train shares: IPv4's TOS and TTL,
/// IPv6's traffic class, flow label and hop limit.
fn same_ip_fields(ip: IpHeader, packet: &[u8], train: &[u8]) -> bool {
    let ports = ip.len..ip.len + 4;
    let shared = if ip.ipv6 {
        packet[..4] == train[..4] && packet[7] == train[7]
    } else {
        packet[1] == train[1] && packet[8] == train[8]
    };
    shared && ip.addresses(packet) == ip.addresses(train) && packet[ports.clone()] == train[ports]
}

/// The TCP fields every segment of a train shares: ack, data offset, window, options.
fn same_tcp_fields(tcp: usize, headers_len: usize, packet: &[u8], train: &[u8]) -> bool {
    packet[tcp + 8..tcp + 13] == train[tcp + 8..tcp + 13]
        && packet[tcp + 14..tcp + 16] == train[tcp + 14..tcp + 16]
        && packet[tcp + 20..headers_len] == train[tcp + 20..headers_len]
}

/// The parts of a TCP data segment that decide whether it can join a train.
struct TcpSegment {
    ip: IpHeader,
    headers_len: usize,
    seq: u32,
    flags: u8,
}

impl TcpSegment {
    /// Only plain data segments: IPv4 without options or fragmentation, or IPv6 without
    /// extension headers; TCP with ACK (and perhaps PSH) and a payload.
    fn parse(packet: &[u8]) -> Option<Self> {
        let ip = IpHeader::whole(packet)?;
        if ip.protocol != 6 || (!ip.ipv6 && ip.len != 20) || packet.len() < ip.len + 20 {
            return None;
        }
        let tcp = ip.len;
        let headers_len = tcp + usize::from(packet[tcp + 12] >> 4) * 4;
        let flags = packet[tcp + 13];
        if headers_len < tcp + 20 || headers_len >= packet.len() || flags & !TCP_PSH != TCP_ACK {
            return None;
        }
        let seq = u32::from_be_bytes(packet[tcp + 4..tcp + 8].try_into().unwrap());
        Some(TcpSegment {
            ip,
            headers_len,
            seq,
            flags,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::packet::{checksum_fold as fold, checksum_sum as sum};
    use super::*;

    fn segment(seq: u32, payload: &[u8], flags: u8) -> Vec<u8> {
        let total = (40 + payload.len()) as u16;
        let mut p = vec![
            0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0, 198, 51, 100, 2, 198, 51, 100, 3,
        ];
        p[2..4].copy_from_slice(&total.to_be_bytes());
        let mut tcp = vec![
            0x1f, 0x90, 0x1b, 0x59, 0, 0, 0, 0, 0, 0, 0, 9, 0x50, flags, 0x10, 0, 0, 0, 0, 0,
        ];
        tcp[4..8].copy_from_slice(&seq.to_be_bytes());
        p.extend(tcp);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn consecutive_segments_become_one_train() {
        let mut c = Coalescer::new();
        assert!(c.start(3, &segment(100, &[1; 1000], TCP_ACK)));
        assert!(c.append(3, &segment(1100, &[2; 1000], TCP_ACK)));
        assert!(c.append(3, &segment(2100, &[3; 500], TCP_ACK | TCP_PSH)));
        // Closed by the short, pushed segment.
        assert!(!c.append(3, &segment(2600, &[4; 1000], TCP_ACK)));
        let train = c.finish().unwrap();
        assert_eq!((train.slot, train.segments), (3, 3));
        let f = train.frame;
        assert_eq!(f.len(), VNET_HDR_LEN + 40 + 2500);
        assert_eq!((f[0], f[1]), (1, 1));
        assert_eq!(u16::from_ne_bytes([f[4], f[5]]), 1000, "segment size");
        let p = &f[VNET_HDR_LEN..];
        assert_eq!(u16::from_be_bytes([p[2], p[3]]) as usize, p.len());
        assert_eq!(fold(sum(&p[..20], 0)), 0xffff, "IP checksum");
        assert_ne!(p[33] & TCP_PSH, 0);
        assert_eq!(&p[40..1040], &[1; 1000][..]);
        assert_eq!(&p[2040..], &[3; 500][..]);
        assert!(c.finish().is_none());
    }

    fn segment6(seq: u32, payload: &[u8], flags: u8) -> Vec<u8> {
        let v4 = segment(seq, payload, flags);
        let mut p = vec![0x60, 0, 0, 0, 0, 0, 6, 64];
        p[4..6].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&"fd77::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&"fd77::3".parse::<std::net::Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&v4[20..]);
        p
    }

    #[test]
    fn ipv6_segments_become_one_train_and_never_join_ipv4_ones() {
        let mut c = Coalescer::new();
        assert!(c.start(2, &segment6(100, &[1; 1000], TCP_ACK)));
        assert!(c.append(2, &segment6(1100, &[2; 1000], TCP_ACK)));
        assert!(
            !c.append(2, &segment(2100, &[3; 1000], TCP_ACK)),
            "IPv4 of the same ports"
        );
        let train = c.finish().unwrap();
        assert_eq!(train.segments, 2);
        let f = train.frame;
        assert_eq!((f[0], f[1]), (1, 4), "NEEDS_CSUM, GSO_TCPV6");
        assert_eq!(
            u16::from_ne_bytes([f[6], f[7]]),
            40,
            "checksum starts after IPv6"
        );
        let p = &f[VNET_HDR_LEN..];
        assert_eq!(usize::from(u16::from_be_bytes([p[4], p[5]])), p.len() - 40);
        let pseudo = fold(sum(&p[8..40], 6 + (p.len() as u64 - 40)));
        assert_eq!(
            u16::from_be_bytes([p[56], p[57]]),
            pseudo,
            "partial TCP checksum"
        );
        assert_eq!(&p[60..1060], &[1; 1000][..]);
        let mut flow_label = segment6(2100, &[0; 1000], TCP_ACK);
        assert!(c.start(2, &segment6(1100, &[0; 1000], TCP_ACK)));
        flow_label[3] = 7;
        assert!(!c.append(2, &flow_label), "another flow label");
    }

    #[test]
    fn what_does_not_continue_the_flow_is_refused() {
        let mut c = Coalescer::new();
        assert!(c.start(1, &segment(100, &[0; 1000], TCP_ACK)));
        assert!(
            !c.append(1, &segment(5000, &[0; 1000], TCP_ACK)),
            "gap in sequence"
        );
        assert!(
            !c.append(2, &segment(1100, &[0; 1000], TCP_ACK)),
            "other container"
        );
        assert!(
            !c.append(1, &segment(1100, &[0; 1200], TCP_ACK)),
            "larger segment"
        );
        let mut other_port = segment(1100, &[0; 1000], TCP_ACK);
        other_port[21] = 0x91;
        assert!(!c.append(1, &other_port), "other flow");
        assert!(
            !c.append(1, &segment(1100, &[0; 1000], TCP_ACK | 0x01)),
            "FIN"
        );
        let single = c.finish().unwrap();
        assert_eq!(single.segments, 1);
        assert_eq!(
            single.frame[0], 1,
            "a lone segment is written as it came, its checksum left to the kernel"
        );
        assert!(
            !c.start(1, &segment(1, &[], TCP_ACK)),
            "no payload: a pure ACK"
        );
    }
}
