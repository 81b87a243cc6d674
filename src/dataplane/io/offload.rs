//! TUN offloads: the container's TCP stack hands the data plane whole segment trains (up to
//! 64 KiB, one read) with checksums left to fill in, and the data plane cuts them into MTU-sized
//! packets here, just before encryption. One read and one pass through the container's stack
//! per train instead of per packet is most of what a userspace tunnel spends.
//!
//! Every packet on an offload queue starts with a virtio-net header (legacy layout, native
//! byte order, as TUN uses by default).
//!
//! TCP and UDP checksums cross the tunnel partial: the sender leaves them as the container's
//! stack did (the pseudo-header sum, for the device to finish; one of an encapsulated packet's
//! inner header it finishes), and the receiver hands them on that way ([`delivery_header`]).
//! Computing them in software was an eighth of a sending host's CPU, and they prove nothing
//! the AEAD has not: a packet the receiver's kernel forwards has its checksum finished there,
//! one it delivers locally is taken as verified.

use super::packet::{checksum_fold as fold, checksum_sum as sum, IpHeader, NETWORK_ID_LEN};

pub const VNET_HDR_LEN: usize = 10;
const F_NEEDS_CSUM: u8 = 1;
/// On packets we write without a partial checksum: the AEAD already proved integrity; skip
/// the stack's checksum pass.
const F_DATA_VALID: u8 = 2;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_ECN: u8 = 0x80;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// The header written in front of a packet delivered without a partial checksum.
pub const DELIVERY_HEADER: [u8; VNET_HDR_LEN] = [F_DATA_VALID, GSO_NONE, 0, 0, 0, 0, 0, 0, 0, 0];

#[derive(Debug, Clone, Copy)]
struct Header {
    flags: u8,
    gso_type: u8,
    gso_size: usize,
    csum_start: usize,
    csum_offset: usize,
}

/// Cuts one frame read from an offload queue into the packets to tunnel.
pub struct Segments {
    header: Header,
    /// For segmentation: the IP header, IP + TCP header length, payload length, bytes already
    /// emitted.
    ip: Option<IpHeader>,
    headers_len: usize,
    payload_len: usize,
    offset: usize,
    index: u16,
    done: bool,
}

impl Segments {
    /// Parses the frame's header. `None` for a frame Flatnet cannot cut (it is dropped).
    pub fn new(frame: &[u8]) -> Option<Segments> {
        if frame.len() <= VNET_HDR_LEN {
            return None;
        }
        let u16_at = |i: usize| u16::from_ne_bytes([frame[i], frame[i + 1]]) as usize;
        let header = Header {
            flags: frame[0],
            gso_type: frame[1] & !GSO_ECN,
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        };
        let packet = &frame[VNET_HDR_LEN..];
        let mut segments = Segments {
            header,
            ip: None,
            headers_len: 0,
            payload_len: 0,
            offset: 0,
            index: 0,
            done: false,
        };
        match header.gso_type {
            GSO_NONE => {
                let field = header.csum_start + header.csum_offset + 2;
                if header.flags & F_NEEDS_CSUM != 0 && field > packet.len() {
                    return None;
                }
            }
            GSO_TCPV4 | GSO_TCPV6 => {
                let ip = IpHeader::whole(packet)?;
                let tcp_len = usize::from(*packet.get(ip.len + 12)? >> 4) * 4;
                let headers_len = ip.len + tcp_len;
                let family_ok = ip.ipv6 == (header.gso_type == GSO_TCPV6);
                if !family_ok || ip.protocol != PROTO_TCP || tcp_len < 20 {
                    return None;
                }
                if headers_len > packet.len() || header.gso_size == 0 {
                    return None;
                }
                segments.ip = Some(ip);
                segments.headers_len = headers_len;
                segments.payload_len = packet.len() - headers_len;
            }
            _ => return None,
        }
        Some(segments)
    }

    /// How many packets [`Segments::next_into`] will write.
    pub fn packets(&self) -> usize {
        match self.header.gso_type {
            GSO_NONE => 1,
            _ => self.payload_len.div_ceil(self.header.gso_size).max(1),
        }
    }

    /// Whether the frame is a segment train (TSO), not a single packet.
    pub fn is_train(&self) -> bool {
        self.header.gso_type != GSO_NONE
    }

    /// The length of the largest packet [`Segments::next_into`] will write (`packet_len`:
    /// the frame's, less its header).
    pub fn largest(&self, packet_len: usize) -> usize {
        match self.header.gso_type {
            GSO_NONE => packet_len,
            _ => self.headers_len + self.header.gso_size.min(self.payload_len),
        }
    }

    /// How many bytes those packets hold together (`packet_len`: the frame's, less its header).
    pub fn bytes(&self, packet_len: usize) -> usize {
        match self.header.gso_type {
            GSO_NONE => packet_len,
            _ => self.packets() * self.headers_len + self.payload_len,
        }
    }

    /// Writes the next packet of `frame` into `out`; returns its length, `None` when done.
    pub fn next_into(&mut self, frame: &[u8], out: &mut [u8]) -> Option<usize> {
        if self.done {
            return None;
        }
        let packet = &frame[VNET_HDR_LEN..];
        if self.header.gso_type == GSO_NONE {
            self.done = true;
            out[..packet.len()].copy_from_slice(packet);
            // A partial checksum stays partial where the receiver will look for it (the TCP
            // or UDP header right after IP); one elsewhere (an encapsulated packet's inner
            // header) is finished here.
            let (start, offset) = (self.header.csum_start, self.header.csum_offset);
            let needs_csum = self.header.flags & F_NEEDS_CSUM != 0;
            if needs_csum && checksum_field(packet) != Some((start, offset)) {
                complete_checksum(&mut out[..packet.len()], start, offset);
            }
            return Some(packet.len());
        }
        let chunk = self.header.gso_size.min(self.payload_len - self.offset);
        let last = self.offset + chunk >= self.payload_len;
        let len = self.headers_len + chunk;
        out[..self.headers_len].copy_from_slice(&packet[..self.headers_len]);
        let payload =
            &packet[self.headers_len + self.offset..self.headers_len + self.offset + chunk];
        out[self.headers_len..len].copy_from_slice(payload);
        let ip = self.ip.expect("a train has its IP header");
        fix_segment(
            &mut out[..len],
            (ip, self.headers_len),
            self.offset as u32,
            self.index,
            last,
        );
        self.offset += chunk;
        self.index += 1;
        self.done = last;
        Some(len)
    }
}

/// Whether the frame's packet carries a checksum left partial for the device to finish.
pub fn needs_checksum(frame: &[u8]) -> bool {
    frame.first().is_some_and(|flags| flags & F_NEEDS_CSUM != 0)
}

/// Finishes, in place, the checksum of the frame's single packet if the sender left it
/// partial: a packet about to be fragmented must carry a whole one.
pub fn finish_checksum(frame: &mut [u8]) {
    let Some(header) = Segments::new(frame).map(|s| s.header) else {
        return;
    };
    let packet = &mut frame[VNET_HDR_LEN..];
    let field = header.csum_start + header.csum_offset + 2;
    if header.flags & F_NEEDS_CSUM != 0 && header.gso_type == GSO_NONE && field <= packet.len() {
        complete_checksum(packet, header.csum_start, header.csum_offset);
    }
}

/// IP length (IPv4: id and checksum too); TCP sequence number, flags and checksum of one
/// segment.
fn fix_segment(
    seg: &mut [u8],
    (ip, headers_len): (IpHeader, usize),
    offset: u32,
    index: u16,
    last: bool,
) {
    if !ip.ipv6 {
        let id = u16::from_be_bytes([seg[4], seg[5]]).wrapping_add(index);
        seg[4..6].copy_from_slice(&id.to_be_bytes());
    }
    ip.set_length(seg);

    let tcp = ip.len;
    let seq = u32::from_be_bytes(seg[tcp + 4..tcp + 8].try_into().unwrap()).wrapping_add(offset);
    seg[tcp + 4..tcp + 8].copy_from_slice(&seq.to_be_bytes());
    if !last {
        seg[tcp + 13] &= !(TCP_FIN | TCP_PSH);
    }
    if index > 0 {
        seg[tcp + 13] &= !TCP_CWR;
    }
    debug_assert!(headers_len >= tcp + 20);
    // Partial, like the train's: the segment's own pseudo-header sum.
    let pseudo = ip.pseudo_sum(seg);
    seg[tcp + 16..tcp + 18].copy_from_slice(&pseudo.to_be_bytes());
}

/// Finishes a checksum the sending stack left partial: the field already holds the folded
/// pseudo-header sum; add the data from `start` on and store the complement.
fn complete_checksum(packet: &mut [u8], start: usize, offset: usize) {
    let at = start + offset;
    let value = !fold(sum(&packet[start..], 0));
    packet[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

/// The virtio-net header for a packet from the tunnel. A TCP or UDP packet (unfragmented) gets
/// its checksum field set to the pseudo-header sum, whatever the sender left there, and a
/// header asking for the rest: the kernel finishes it where the packet leaves the host and
/// takes it as verified where it is delivered. Anything else is marked verified as it is.
pub fn delivery_header(packet: &mut [u8]) -> [u8; VNET_HDR_LEN] {
    let Some((start, offset)) = checksum_field(packet) else {
        return DELIVERY_HEADER;
    };
    let ip = IpHeader::whole(packet).expect("checked by checksum_field");
    let pseudo = ip.pseudo_sum(packet);
    packet[start + offset..start + offset + 2].copy_from_slice(&pseudo.to_be_bytes());
    let mut header = [F_NEEDS_CSUM, GSO_NONE, 0, 0, 0, 0, 0, 0, 0, 0];
    header[6..8].copy_from_slice(&(start as u16).to_ne_bytes());
    header[8..10].copy_from_slice(&(offset as u16).to_ne_bytes());
    header
}

/// Where a TCP or UDP packet's transport header starts and its checksum's offset in it; none
/// for other packets, fragments and packets whose length field disagrees with their size.
fn checksum_field(packet: &[u8]) -> Option<(usize, usize)> {
    let ip = IpHeader::whole(packet)?;
    let (offset, min_len) = match ip.protocol {
        PROTO_TCP => (16, 20),
        PROTO_UDP => (6, 8),
        _ => return None,
    };
    (packet.len() >= ip.len + min_len).then_some((ip.len, offset))
}

/// Where a decrypted packet should land so that the network id sits just before it and the
/// delivery header can be written over the network id's space without moving the packet.
pub const DECRYPT_OFFSET: usize = VNET_HDR_LEN - NETWORK_ID_LEN;

#[cfg(test)]
mod tests {
    use super::*;

    fn tso_frame(payload: &[u8], gso_size: u16) -> Vec<u8> {
        let mut f = vec![F_NEEDS_CSUM, GSO_TCPV4, 0, 0];
        f.extend_from_slice(&gso_size.to_ne_bytes());
        f.extend_from_slice(&20u16.to_ne_bytes());
        f.extend_from_slice(&16u16.to_ne_bytes());
        let total = (40 + payload.len()) as u16;
        let mut ip = vec![
            0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 198, 51, 100, 2, 198, 51, 100, 3,
        ];
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        let mut tcp = vec![
            0x1f,
            0x90,
            0x1b,
            0x59,
            0,
            0,
            0x10,
            0,
            0,
            0,
            0,
            1,
            0x50,
            0x18 | TCP_FIN,
            0xff,
            0xff,
            0,
            0,
            0,
            0,
        ];
        tcp[4..8].copy_from_slice(&1000u32.to_be_bytes());
        f.extend(ip);
        f.extend(tcp);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn a_partial_checksum_is_finished_before_fragmenting() {
        let (src, dst) = (
            "10.77.0.2:5000".parse().unwrap(),
            "10.77.0.3:53".parse().unwrap(),
        );
        let mut packet = [0u8; 1200];
        let len =
            super::super::packet::write_udp_packet(&mut packet, src, dst, &[7u8; 1000]).unwrap();
        let whole = packet[..len].to_vec();
        // As a container's stack hands it over: the field holds the pseudo-header sum only.
        let pseudo = fold(sum(
            &whole[12..20],
            u64::from(PROTO_UDP) + (len - 20) as u64,
        ));
        let mut frame = vec![F_NEEDS_CSUM, GSO_NONE, 0, 0, 0, 0];
        frame.extend_from_slice(&20u16.to_ne_bytes());
        frame.extend_from_slice(&6u16.to_ne_bytes());
        frame.extend_from_slice(&whole);
        frame[VNET_HDR_LEN + 26..VNET_HDR_LEN + 28].copy_from_slice(&pseudo.to_be_bytes());
        finish_checksum(&mut frame);
        assert_eq!(
            &frame[VNET_HDR_LEN..],
            &whole[..],
            "the full checksum is back"
        );
    }

    #[test]
    fn a_segment_train_is_cut_into_valid_packets() {
        let payload: Vec<u8> = (0..4500u32).map(|i| (i * 7) as u8).collect();
        let frame = tso_frame(&payload, 1400);
        let mut segs = Segments::new(&frame).unwrap();
        let (packets, bytes) = (segs.packets(), segs.bytes(frame.len() - VNET_HDR_LEN));
        let mut out = vec![0u8; 2000];
        let mut rebuilt = Vec::new();
        let mut count = 0u32;
        let mut written = 0;
        while let Some(len) = segs.next_into(&frame, &mut out) {
            written += len;
            let p = &out[..len];
            assert_eq!(u16::from_be_bytes([p[2], p[3]]) as usize, len);
            assert_eq!(
                fold(sum(&p[..20], 0)),
                0xffff,
                "IP checksum of segment {count}"
            );
            let mut delivered = p.to_vec();
            assert!(finish_as_the_kernel_would(&mut delivered));
            let pseudo = sum(&p[12..20], 6 + (len as u64 - 20));
            assert_eq!(
                fold(sum(&delivered[20..], pseudo)),
                0xffff,
                "TCP checksum of segment {count}, finished by the receiving kernel"
            );
            let seq = u32::from_be_bytes(p[24..28].try_into().unwrap());
            assert_eq!(seq, 1000 + 1400 * count);
            assert_eq!(u16::from_be_bytes([p[4], p[5]]), 0x1234 + count as u16);
            let last = rebuilt.len() + (len - 40) == payload.len();
            assert_eq!(
                p[33] & (TCP_FIN | TCP_PSH) != 0,
                last,
                "FIN/PSH only on the last"
            );
            rebuilt.extend_from_slice(&p[40..]);
            count += 1;
        }
        assert_eq!(count, 4);
        assert_eq!((packets, bytes), (4, written), "counted before cutting");
        assert_eq!(rebuilt, payload);
    }

    /// A TCP/IPv6 segment train from fd77::2 to fd77::3 as a container's stack hands it over.
    fn tso6_frame(payload: &[u8], gso_size: u16) -> Vec<u8> {
        let mut f = vec![F_NEEDS_CSUM, GSO_TCPV6, 0, 0];
        f.extend_from_slice(&gso_size.to_ne_bytes());
        f.extend_from_slice(&40u16.to_ne_bytes());
        f.extend_from_slice(&16u16.to_ne_bytes());
        let mut ip = vec![0x60, 0, 0, 0, 0, 0, 6, 64];
        ip[4..6].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&"fd77::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
        ip.extend_from_slice(&"fd77::3".parse::<std::net::Ipv6Addr>().unwrap().octets());
        let mut tcp = vec![
            0x1f, 0x90, 0x1b, 0x59, 0, 0, 0, 0, 0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff,
        ];
        tcp.extend_from_slice(&[0, 0, 0, 0]);
        tcp[4..8].copy_from_slice(&7000u32.to_be_bytes());
        f.extend(ip);
        f.extend(tcp);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn an_ipv6_segment_train_is_cut_into_valid_packets() {
        let payload: Vec<u8> = (0..3000u32).map(|i| (i * 11) as u8).collect();
        let frame = tso6_frame(&payload, 1380);
        let mut segs = Segments::new(&frame).unwrap();
        assert_eq!(segs.packets(), 3);
        let mut out = vec![0u8; 2000];
        let (mut rebuilt, mut count) = (Vec::new(), 0u32);
        while let Some(len) = segs.next_into(&frame, &mut out) {
            let p = &out[..len];
            assert_eq!(usize::from(u16::from_be_bytes([p[4], p[5]])), len - 40);
            let seq = u32::from_be_bytes(p[44..48].try_into().unwrap());
            assert_eq!(seq, 7000 + 1380 * count);
            let mut delivered = p.to_vec();
            assert!(finish_as_the_kernel_would(&mut delivered));
            let pseudo = sum(&p[8..40], 6 + (len as u64 - 40));
            assert_eq!(
                fold(sum(&delivered[40..], pseudo)),
                0xffff,
                "segment {count}"
            );
            rebuilt.extend_from_slice(&p[60..]);
            count += 1;
        }
        assert_eq!(rebuilt, payload);
        // A TCPv6 train must be IPv6 carrying TCP.
        let mut lying = tso6_frame(&payload, 1380);
        lying[1] = GSO_TCPV4;
        assert!(Segments::new(&lying).is_none(), "IPv6 under GSO_TCPV4");
        let mut extension = tso6_frame(&payload, 1380);
        extension[VNET_HDR_LEN + 6] = 0; // hop-by-hop options first
        assert!(Segments::new(&extension).is_none());
    }

    /// What the receiving kernel does with a delivered packet that leaves the host: finish
    /// the checksum [`delivery_header`] asked it to (csum_start, csum_offset).
    fn finish_as_the_kernel_would(packet: &mut [u8]) -> bool {
        let header = delivery_header(packet);
        if header[0] != F_NEEDS_CSUM {
            return false;
        }
        let start = usize::from(u16::from_ne_bytes([header[6], header[7]]));
        let at = start + usize::from(u16::from_ne_bytes([header[8], header[9]]));
        let value = !fold(sum(&packet[start..], 0));
        packet[at..at + 2].copy_from_slice(&value.to_be_bytes());
        true
    }

    /// Packets as other senders may leave them arrive with valid checksums: TCP with a full
    /// checksum (an older sender) or a wrong one (a partial sum from another stack). Fragments
    /// and ICMP are delivered as they are, marked verified.
    #[test]
    fn the_receiver_has_every_tcp_and_udp_checksum_finished_whatever_the_sender_left() {
        let payload: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let frame = tso_frame(&payload, 1400);
        let mut segment = frame[VNET_HDR_LEN..].to_vec();
        for left in [[0x12, 0x34], [0, 0]] {
            segment[36..38].copy_from_slice(&left);
            let mut delivered = segment.clone();
            assert!(finish_as_the_kernel_would(&mut delivered));
            let pseudo = sum(&delivered[12..20], 6 + (delivered.len() as u64 - 20));
            assert_eq!(fold(sum(&delivered[20..], pseudo)), 0xffff, "{left:?}");
            assert_eq!(delivered[..36], segment[..36]);
            assert_eq!(delivered[38..], segment[38..], "only the checksum changes");
        }
        let mut fragment = segment.clone();
        fragment[6] |= 0x20; // more fragments
        let before = fragment.clone();
        assert_eq!(delivery_header(&mut fragment), DELIVERY_HEADER);
        assert_eq!(fragment, before, "a fragment is left alone");
        let mut icmp = segment.clone();
        icmp[9] = 1;
        assert_eq!(delivery_header(&mut icmp), DELIVERY_HEADER);
        let mut short = segment[..30].to_vec();
        assert_eq!(
            delivery_header(&mut short),
            DELIVERY_HEADER,
            "length disagrees"
        );
    }

    #[test]
    fn a_partial_checksum_crosses_partial_and_is_finished_on_arrival() {
        // A UDP packet whose checksum field holds only the pseudo-header sum.
        let mut packet = vec![
            0x45, 0, 0, 32, 0, 0, 0, 0, 64, 17, 0, 0, 198, 51, 100, 2, 198, 51, 100, 3,
        ];
        let ip_sum = !fold(sum(&packet[..20], 0));
        packet[10..12].copy_from_slice(&ip_sum.to_be_bytes());
        let udp_len = 12u16;
        let mut udp = vec![0x10, 0x00, 0x20, 0x00, 0, 12, 0, 0, b'p', b'i', b'n', b'g'];
        let pseudo = fold(sum(&packet[12..20], 17 + u64::from(udp_len)));
        udp[6..8].copy_from_slice(&pseudo.to_be_bytes());
        packet.extend(udp);
        let mut frame = vec![F_NEEDS_CSUM, GSO_NONE, 0, 0, 0, 0];
        frame.extend_from_slice(&20u16.to_ne_bytes());
        frame.extend_from_slice(&6u16.to_ne_bytes());
        frame.extend_from_slice(&packet);
        let mut segs = Segments::new(&frame).unwrap();
        assert_eq!(
            (segs.packets(), segs.bytes(packet.len())),
            (1, packet.len())
        );
        let mut out = vec![0u8; 100];
        let len = segs.next_into(&frame, &mut out).unwrap();
        assert_eq!(&out[..len], &packet[..], "sent as the container left it");
        assert!(finish_as_the_kernel_would(&mut out[..len]));
        let full = sum(&out[12..20], 17 + u64::from(udp_len));
        assert_eq!(fold(sum(&out[20..len], full)), 0xffff);
        assert_eq!(segs.next_into(&frame, &mut out), None);
    }

    /// A partial checksum the receiver would not look for (here: of a UDP datagram carried
    /// inside a GRE packet, as an encapsulation in the container leaves it) is finished by the
    /// sender, and the receiver then leaves the packet alone.
    #[test]
    fn a_partial_checksum_elsewhere_is_finished_before_sending() {
        let inner_udp = [0x10, 0x00, 0x20, 0x00, 0, 12, 0, 0, b'p', b'i', b'n', b'g'];
        let mut packet = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 47, 0, 0, 198, 51, 100, 2, 198, 51, 100, 3,
        ];
        packet.extend_from_slice(&[0, 0, 0x08, 0x00]); // GRE carrying IPv4
        packet.extend_from_slice(&[
            0x45, 0, 0, 32, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ]);
        packet.extend_from_slice(&inner_udp);
        let total = packet.len() as u16;
        packet[2..4].copy_from_slice(&total.to_be_bytes());
        let inner_udp_at = 20 + 4 + 20;
        let pseudo = fold(sum(&packet[36..44], 17 + inner_udp.len() as u64));
        packet[inner_udp_at + 6..inner_udp_at + 8].copy_from_slice(&pseudo.to_be_bytes());
        let mut frame = vec![F_NEEDS_CSUM, GSO_NONE, 0, 0, 0, 0];
        frame.extend_from_slice(&(inner_udp_at as u16).to_ne_bytes());
        frame.extend_from_slice(&6u16.to_ne_bytes());
        frame.extend_from_slice(&packet);

        let mut out = vec![0u8; 100];
        let len = Segments::new(&frame)
            .unwrap()
            .next_into(&frame, &mut out)
            .unwrap();
        let full = sum(&out[36..44], 17 + inner_udp.len() as u64);
        assert_eq!(fold(sum(&out[inner_udp_at..len], full)), 0xffff, "finished");
        assert_eq!(delivery_header(&mut out[..len]), DELIVERY_HEADER);
    }

    #[test]
    fn frames_it_cannot_cut_are_refused() {
        assert!(Segments::new(&[0; 5]).is_none());
        let mut bad = tso_frame(&[1, 2, 3], 0);
        assert!(Segments::new(&bad).is_none(), "gso_size 0");
        bad = tso_frame(&[1, 2, 3], 100);
        bad[VNET_HDR_LEN + 9] = 17; // not TCP
        assert!(Segments::new(&bad).is_none());
        bad = tso_frame(&[1, 2, 3], 100);
        bad[1] = 3; // UDP fragmentation offload: never enabled
        assert!(Segments::new(&bad).is_none());
    }
}
