//! Path MTU per peer: how large a member's packet may be on its way to a peer's host without
//! the underlay fragmenting the datagram that carries it.
//!
//! The kernel discovers the path MTU of the tunnel's datagrams: they all carry DF
//! ([`forbid_fragmenting`]: `IP_PMTUDISC_DO`; by default a GSO message larger than the
//! interface would leave without DF, and routers would fragment it silently), a router before
//! a narrower link answers ICMP "fragmentation needed" (IPv6: "packet too big"), and the
//! kernel keeps the lower figure for that destination (ten minutes by default). The data plane
//! reads it back per peer endpoint through a probe socket connected to it (`IP_MTU`), at most
//! once a second while the peer is sent to; before any ICMP it is the route's MTU, that of
//! the underlay interface. A member's packet may take the path MTU less the tunnel's overhead
//! ([`overhead`]), and [`Daemon::fit_to_path`] sees that it does:
//! - a TCP SYN's MSS is clamped to it, so that TCP never depends on fragmentation;
//! - a larger packet with DF set (or a segment train of larger segments) is answered with ICMP
//!   "fragmentation needed" to the member, as a router would answer, and dropped;
//! - a larger packet without DF is fragmented before it is sealed ([`fragment`]).

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, sockopt};

use super::fragment::Fragments;
use super::icmp;
use super::offload::{self, Segments, DELIVERY_HEADER, VNET_HDR_LEN};
use super::packet::NETWORK_ID_LEN;
use super::routes::Route;
use super::Daemon;
use crate::lighthouse::NetworkId;
use crate::tunnel::wire::{AEAD_TAG_LEN, TRANSPORT_HEADER_LEN};
use crate::tunnel::DropReason;

/// How long a path MTU read from the kernel is used before it is read again.
const RECHECK: Duration = Duration::from_secs(1);
/// A path not sent to for this long is forgotten.
const FORGET: Duration = Duration::from_secs(60);
/// The smallest packet every IPv4 link carries (RFC 791).
const MIN_INNER_MTU: u32 = 68;
const UDP_HEADER: u32 = 8;
const IPV4_HEADER: u32 = 20;
const IPV6_HEADER: u32 = 40;
const TCP_HEADER: u32 = 20;

/// Bytes the tunnel adds to a member's packet on the way to `endpoint`: underlay IP and UDP
/// headers, transport header, network id and AEAD tag (64 over IPv4, 84 over IPv6).
pub fn overhead(endpoint: SocketAddr) -> u32 {
    let ip = if endpoint.is_ipv4() {
        IPV4_HEADER
    } else {
        IPV6_HEADER
    };
    ip + UDP_HEADER + (TRANSPORT_HEADER_LEN + NETWORK_ID_LEN + AEAD_TAG_LEN) as u32
}

/// The path MTU to each peer endpoint sent to lately, as the kernel knows it.
pub struct PathMtus {
    by_endpoint: HashMap<SocketAddr, Known>,
    /// The tunnel socket's address: probes are bound to it, to take the route its datagrams do.
    local: IpAddr,
}

struct Known {
    /// `None` when the kernel could not say (no route): nothing is clamped.
    path: Option<u32>,
    checked: Instant,
}

impl PathMtus {
    pub fn new(local: IpAddr) -> PathMtus {
        PathMtus {
            by_endpoint: HashMap::new(),
            local,
        }
    }

    /// The largest member packet that reaches `endpoint` unfragmented, if known.
    pub fn inner_mtu(&mut self, endpoint: SocketAddr, now: Instant) -> Option<u32> {
        let fresh = |k: &&mut Known| now.duration_since(k.checked) < RECHECK;
        let path = match self.by_endpoint.get_mut(&endpoint).filter(fresh) {
            Some(known) => known.path,
            None => {
                let path = probe(self.local, endpoint).ok();
                self.by_endpoint
                    .insert(endpoint, Known { path, checked: now });
                path
            }
        };
        path.map(|path| path.saturating_sub(overhead(endpoint)).max(MIN_INNER_MTU))
    }

    /// The path MTU last read for `endpoint`.
    pub fn path_mtu(&self, endpoint: SocketAddr) -> Option<u32> {
        self.by_endpoint.get(&endpoint).and_then(|k| k.path)
    }

    /// Forgets the paths no longer sent to.
    pub fn forget_idle(&mut self, now: Instant) {
        self.by_endpoint
            .retain(|_, k| now.duration_since(k.checked) < FORGET);
    }
}

/// The kernel's path MTU to `endpoint`, through a UDP socket connected to it (it sends nothing
/// and is closed at once).
fn probe(local: IpAddr, endpoint: SocketAddr) -> io::Result<u32> {
    let local = match (local, endpoint) {
        (IpAddr::V4(_), SocketAddr::V4(_)) | (IpAddr::V6(_), SocketAddr::V6(_)) => local,
        (_, SocketAddr::V4(_)) => Ipv4Addr::UNSPECIFIED.into(),
        (_, SocketAddr::V6(_)) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind(SocketAddr::new(local, 0))?;
    socket.connect(endpoint)?;
    let mtu = match endpoint {
        SocketAddr::V4(_) => getsockopt(&socket, sockopt::IpMtu)?,
        SocketAddr::V6(_) => ipv6_mtu(&socket)?,
    };
    u32::try_from(mtu).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
}

fn ipv6_mtu(socket: &UdpSocket) -> io::Result<libc::c_int> {
    let mut mtu: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `mtu`, an int that outlives the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU,
            (&mut mtu as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(mtu)
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Daemon {
    /// Fits the member's frame in `bufs.frame[..n]`, bound for a peer whose datagrams go first
    /// to `endpoint` (a relay's, when `relaying` bytes are added to them), to the path: clamps
    /// a SYN's MSS; answers a packet too large to go whole and forbidden to be fragmented with
    /// ICMP to the member in `slot` (`Err(TooBig)`: it is not sent).
    pub(super) fn fit_to_path(
        &mut self,
        slot: usize,
        network_id: NetworkId,
        (endpoint, relaying): (SocketAddr, usize),
        n: usize,
        now: Instant,
    ) -> Result<Fit, DropReason> {
        let Some(inner_mtu) = self.path_mtus.inner_mtu(endpoint, now) else {
            return Ok(Fit::Whole);
        };
        // Through a relay, the datagram travels inside another session.
        let inner_mtu = inner_mtu.saturating_sub(relaying as u32).max(MIN_INNER_MTU);
        let frame = &mut self.bufs.frame[..n];
        let partial_checksum = offload::needs_checksum(frame);
        let packet = &mut frame[VNET_HDR_LEN..];
        let ip_header = match packet.first().map(|b| b >> 4) {
            Some(6) => IPV6_HEADER,
            _ => IPV4_HEADER,
        };
        let max_mss = inner_mtu.saturating_sub(ip_header + TCP_HEADER) as u16;
        clamp_mss(packet, max_mss, partial_checksum);
        let segments = Segments::new(frame).ok_or(DropReason::Malformed)?;
        if segments.largest(n - VNET_HDR_LEN) <= inner_mtu as usize {
            return Ok(Fit::Whole);
        }
        if !segments.is_train() && !dont_fragment(&frame[VNET_HDR_LEN..]) {
            return Ok(Fit::Fragments(inner_mtu));
        }
        self.answer_too_big(slot, network_id, n, inner_mtu);
        Err(DropReason::TooBig)
    }

    /// Sends the packet in `bufs.frame[..n]` to `route` in fragments of at most `mtu` bytes,
    /// each sealed on its own.
    pub(super) fn send_fragments(
        &mut self,
        network_id: NetworkId,
        route: Route,
        n: usize,
        mtu: u32,
        now: Instant,
    ) -> Result<(), DropReason> {
        offload::finish_checksum(&mut self.bufs.frame[..n]);
        let packet = &self.bufs.frame[VNET_HDR_LEN..n];
        let mut fragments = Fragments::new(packet, mtu as usize).ok_or(DropReason::Malformed)?;
        self.bufs.plain[..NETWORK_ID_LEN].copy_from_slice(&network_id.to_be_bytes());
        loop {
            let packet = &self.bufs.frame[VNET_HDR_LEN..n];
            let Some(len) = fragments.next_into(packet, &mut self.bufs.plain[NETWORK_ID_LEN..])
            else {
                return Ok(());
            };
            if let Err(reason) = self.send_from_container(route, len, now) {
                self.drops.count(reason);
            }
        }
    }

    /// Writes ICMP "fragmentation needed" for the packet in `bufs.frame[..n]` to the member in
    /// `slot`, from the network's gateway (the hop that could not forward it) if it has one.
    fn answer_too_big(&mut self, slot: usize, network_id: NetworkId, n: usize, inner_mtu: u32) {
        let original = &self.bufs.frame[VNET_HDR_LEN..n];
        let Some((_, dst)) = super::packet::ip_addresses(original) else {
            return;
        };
        // The gateway of the packet's family, else its destination.
        let gateway = self.networks.get(network_id).and_then(|network| {
            let gateways = &network.member.gateways;
            gateways
                .iter()
                .copied()
                .find(|g| g.is_ipv4() == dst.is_ipv4())
        });
        let mut reply = [0u8; VNET_HDR_LEN + icmp::MAX_ERROR_LEN];
        reply[..VNET_HDR_LEN].copy_from_slice(&DELIVERY_HEADER);
        let out = &mut reply[VNET_HDR_LEN..];
        let len = match (gateway.unwrap_or(dst), dst) {
            (IpAddr::V4(from), IpAddr::V4(_)) => {
                let mtu = u16::try_from(inner_mtu).unwrap_or(u16::MAX);
                icmp::fragmentation_needed(out, from, mtu, original)
            }
            (IpAddr::V6(from), IpAddr::V6(_)) => {
                icmp::packet_too_big(out, from, inner_mtu.max(IPV6_MIN_MTU), original)
            }
            _ => return,
        };
        if let Some(queue) = self.queues.get_mut(slot) {
            let _ = queue.device.write(&reply[..VNET_HDR_LEN + len]);
        }
    }
}

/// How a member's packet goes to its peer.
pub enum Fit {
    Whole,
    /// In IPv4 fragments of at most this many bytes.
    Fragments(u32),
}

/// What every IPv6 link carries: an IPv6 host never goes below it, so a "packet too big"
/// names at least this much (a path narrower for Flatnet than 1280 bytes carries no IPv6).
const IPV6_MIN_MTU: u32 = 1280;

/// Makes every datagram of `socket` carry DF, whatever its size, and never be fragmented
/// here: the kernel refuses one larger than the known path MTU instead (the data plane keeps
/// members' packets below it).
pub fn forbid_fragmenting(socket: &UdpSocket) -> io::Result<()> {
    let fd = socket.as_raw_fd();
    let ipv4 = || {
        super::batch::set_option(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            &libc::IP_PMTUDISC_DO,
        )
    };
    match socket.local_addr()? {
        SocketAddr::V4(_) => ipv4(),
        SocketAddr::V6(v6) => {
            super::batch::set_option(
                fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_MTU_DISCOVER,
                &libc::IPV6_PMTUDISC_DO,
            )?;
            // A socket on `[::]` sends to IPv4 peers too.
            if v6.ip().is_unspecified() {
                ipv4()?;
            }
            Ok(())
        }
    }
}

/// Whether a packet forbids fragmenting on the way: an IPv4 packet with DF, and every IPv6
/// packet (only its source may fragment it).
fn dont_fragment(packet: &[u8]) -> bool {
    match packet.first().map(|b| b >> 4) {
        Some(4) => packet.len() >= 20 && packet[6] & 0x40 != 0,
        Some(6) => true,
        _ => false,
    }
}

/// Lowers the MSS option of a TCP SYN (IPv4, or IPv6 without extension headers) above `max_mss` to it. A full checksum is mended
/// (RFC 1624); a partial one covers the pseudo-header only and stays as it is.
pub fn clamp_mss(packet: &mut [u8], max_mss: u16, partial_checksum: bool) {
    const PROTO_TCP: u8 = 6;
    const SYN: u8 = 0x02;
    const OPTION_END: u8 = 0;
    const OPTION_NOP: u8 = 1;
    const OPTION_MSS: u8 = 2;
    let (ip_len, fragment) = match packet.first().map(|b| b >> 4) {
        Some(4) if packet.len() >= 20 && packet[9] == PROTO_TCP => (
            usize::from(packet[0] & 0x0f) * 4,
            u16::from_be_bytes([packet[6], packet[7]]) & 0x1fff != 0,
        ),
        // TCP right after the fixed header: extension headers are not looked through.
        Some(6) if packet.len() >= 40 && packet[6] == PROTO_TCP => (40, false),
        _ => return,
    };
    let Some(tcp) = packet.get_mut(ip_len..).filter(|tcp| tcp.len() >= 20) else {
        return;
    };
    let tcp_len = usize::from(tcp[12] >> 4) * 4;
    if fragment || tcp[13] & SYN == 0 || tcp_len < 20 || tcp_len > tcp.len() {
        return;
    }
    let mut at = 20;
    while at < tcp_len {
        match tcp[at] {
            OPTION_END => return,
            OPTION_NOP => at += 1,
            kind => {
                let Some(&len) = tcp.get(at + 1).filter(|&&l| l >= 2) else {
                    return;
                };
                let len = usize::from(len);
                if kind == OPTION_MSS && len == 4 && at + 4 <= tcp_len {
                    let mss = u16::from_be_bytes([tcp[at + 2], tcp[at + 3]]);
                    if mss > max_mss {
                        tcp[at + 2..at + 4].copy_from_slice(&max_mss.to_be_bytes());
                        if !partial_checksum {
                            mend_checksum(&mut tcp[16..18], mss, max_mss);
                        }
                    }
                    return;
                }
                at += len;
            }
        }
    }
}

/// Updates a checksum for one 16-bit word changed from `old` to `new` (RFC 1624, eqn. 3).
fn mend_checksum(field: &mut [u8], old: u16, new: u16) {
    let checksum = u16::from_be_bytes([field[0], field[1]]);
    let sum = u32::from(!checksum) + u32::from(!old) + u32::from(new);
    let folded = (sum & 0xffff) + (sum >> 16);
    let folded = (folded & 0xffff) + (folded >> 16);
    field.copy_from_slice(&(!(folded as u16)).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::packet::{checksum_fold, checksum_sum};

    /// An IPv4 TCP SYN from 10.77.0.2:40000 to 10.77.0.3:80 with the options given, its TCP
    /// checksum complete.
    fn syn(options: &[u8]) -> Vec<u8> {
        let tcp_len = 20 + options.len();
        let mut p = vec![
            0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 77, 0, 2, 10, 77, 0, 3,
        ];
        p[2..4].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
        let mut tcp = vec![
            0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0x02, 0xff, 0xff,
        ];
        tcp[12] = ((tcp_len / 4) as u8) << 4;
        tcp.extend_from_slice(&[0, 0, 0, 0]);
        tcp.extend_from_slice(options);
        p.extend(tcp);
        set_tcp_checksum(&mut p);
        p
    }

    fn tcp_checksum_ok(p: &[u8]) -> bool {
        let mut pseudo = [0u8; 12];
        pseudo[..8].copy_from_slice(&p[12..20]);
        pseudo[9] = 6;
        pseudo[10..12].copy_from_slice(&((p.len() - 20) as u16).to_be_bytes());
        checksum_fold(checksum_sum(&p[20..], checksum_sum(&pseudo, 0))) == 0xffff
    }

    fn set_tcp_checksum(p: &mut [u8]) {
        p[36..38].fill(0);
        let mut pseudo = [0u8; 12];
        pseudo[..8].copy_from_slice(&p[12..20]);
        pseudo[9] = 6;
        pseudo[10..12].copy_from_slice(&((p.len() - 20) as u16).to_be_bytes());
        let sum = !checksum_fold(checksum_sum(&p[20..], checksum_sum(&pseudo, 0)));
        p[36..38].copy_from_slice(&sum.to_be_bytes());
    }

    fn mss(p: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([p[40 + at + 2], p[40 + at + 3]])
    }

    #[test]
    fn a_syns_mss_is_lowered_to_the_path_with_a_valid_checksum() {
        // NOP, NOP, SACK permitted, then MSS 1376: the option is found past the others.
        let mut p = syn(&[1, 1, 4, 2, 2, 4, 0x05, 0x60]);
        clamp_mss(&mut p, 1176, false);
        assert_eq!(mss(&p, 4), 1176);
        assert!(tcp_checksum_ok(&p), "checksum mended");
    }

    #[test]
    fn an_mss_already_small_enough_and_other_segments_stay_as_they_are() {
        let mut small = syn(&[2, 4, 0x04, 0x00, 0, 0, 0, 0]);
        let before = small.clone();
        clamp_mss(&mut small, 1176, false);
        assert_eq!(small, before);

        let mut ack = syn(&[2, 4, 0x05, 0x60, 0, 0, 0, 0]);
        ack[33] = 0x10; // ACK, not SYN
        let before = ack.clone();
        clamp_mss(&mut ack, 1176, false);
        assert_eq!(ack, before);
    }

    #[test]
    fn a_partial_checksum_is_left_for_the_kernel_to_finish() {
        let mut p = syn(&[2, 4, 0x05, 0x60, 0, 0, 0, 0]);
        p[36..38].copy_from_slice(&[0x12, 0x34]);
        clamp_mss(&mut p, 1176, true);
        assert_eq!(mss(&p, 0), 1176);
        assert_eq!(&p[36..38], &[0x12, 0x34]);
    }

    #[test]
    fn truncated_options_are_left_alone() {
        // An option whose length runs past the header, and one of length 0.
        for options in [&[8u8, 10, 0, 0][..], &[3, 0, 0, 0]] {
            let mut p = syn(options);
            let before = p.clone();
            clamp_mss(&mut p, 536, false);
            assert_eq!(p, before);
        }
    }

    #[test]
    fn the_overhead_is_that_of_the_underlays_family() {
        assert_eq!(overhead("192.0.2.1:4800".parse().unwrap()), 64);
        assert_eq!(overhead("[2001:db8::1]:4800".parse().unwrap()), 84);
    }

    #[test]
    fn a_path_over_loopback_has_loopbacks_mtu_less_the_overhead() {
        let mut paths = PathMtus::new(Ipv4Addr::LOCALHOST.into());
        let endpoint: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let lo: u32 = std::fs::read_to_string("/sys/class/net/lo/mtu")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // An IPv4 route's MTU is at most 65,535, whatever the device's.
        let path = lo.min(65_535);
        let now = Instant::now();
        assert_eq!(paths.inner_mtu(endpoint, now), Some(path - 64));
        assert_eq!(paths.path_mtu(endpoint), Some(path));
        paths.forget_idle(now + FORGET);
        assert_eq!(paths.path_mtu(endpoint), None);
    }
}
