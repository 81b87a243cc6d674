//! Batched UDP I/O: many datagrams per system call (`recvmmsg`, `sendmmsg`), and many
//! datagrams per trip through the kernel's UDP stack (UDP GSO on the way out, GRO on the way
//! in). Per-packet syscalls are what makes userspace tunnels slow; per-packet stack traversal
//! is what is left after batching.

use std::collections::HashSet;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Messages per system call.
pub const BATCH: usize = 32;
/// Room per message: the largest UDP payload, so nothing is ever truncated.
const SLOT: usize = 65536;
/// Bytes one GSO message may carry: the largest UDP payload over IPv4.
const GSO_BYTES: usize = 65507;
/// Datagrams one GSO message may carry (the kernel's UDP_MAX_SEGMENTS on older kernels).
const GSO_SEGMENTS: u16 = 64;
/// Room for one cmsg carrying a u16 or an int, in u64s for alignment.
const CONTROL_WORDS: usize = 4;
/// Room for the two cmsgs a received message may carry (GRO segment size, drop counter).
const RECV_CONTROL_WORDS: usize = 2 * CONTROL_WORDS;

/// Receive side: slots the kernel fills in one `recvmmsg`. With UDP GRO on the socket, a slot
/// may hold several datagrams of one sender, back to back, all of `segment` bytes but the last.
pub struct RecvBatch {
    buffers: Vec<u8>,
    lens: [usize; BATCH],
    segments: [usize; BATCH],
    addrs: [libc::sockaddr_storage; BATCH],
    control: [[u64; RECV_CONTROL_WORDS]; BATCH],
    count: usize,
    /// Datagrams the kernel dropped on this socket for a full receive buffer, as last told
    /// (SO_RXQ_OVFL).
    kernel_drops: u32,
}

impl RecvBatch {
    pub fn new() -> Box<Self> {
        Box::new(RecvBatch {
            buffers: vec![0; BATCH * SLOT],
            lens: [0; BATCH],
            segments: [0; BATCH],
            // SAFETY: sockaddr_storage is plain data; all-zero is a valid (unspecified) value.
            addrs: unsafe { zeroed() },
            control: [[0; RECV_CONTROL_WORDS]; BATCH],
            count: 0,
            kernel_drops: 0,
        })
    }

    /// Receives up to [`BATCH`] messages without blocking; returns how many arrived.
    pub fn receive(&mut self, fd: RawFd) -> io::Result<usize> {
        // SAFETY: iovec and mmsghdr are plain C structs of integers and pointers, for which
        // all-zero is valid (null pointers, zero lengths); each is filled in before use.
        let mut iovecs: [libc::iovec; BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for i in 0..BATCH {
            iovecs[i] = libc::iovec {
                iov_base: self.buffers[i * SLOT..].as_mut_ptr().cast(),
                iov_len: SLOT,
            };
            let hdr = &mut headers[i].msg_hdr;
            hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
            hdr.msg_iov = &mut iovecs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = self.control[i].as_mut_ptr().cast();
            hdr.msg_controllen = size_of::<[u64; RECV_CONTROL_WORDS]>();
        }
        // SAFETY: every header points into buffers owned by `self` or this frame, sized as
        // declared; the kernel writes at most that much.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                headers.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.count = 0;
            return Err(io::Error::last_os_error());
        }
        self.count = n as usize;
        for (i, header) in headers.iter().enumerate().take(self.count) {
            let len = header.msg_len as usize;
            let control = read_control(&header.msg_hdr);
            self.lens[i] = len;
            self.segments[i] = control.gro_segment.unwrap_or(len);
            if let Some(drops) = control.kernel_drops {
                self.kernel_drops = self.kernel_drops.max(drops);
            }
        }
        Ok(self.count)
    }

    /// Datagrams the kernel dropped before we could read them (needs [`count_kernel_drops`]).
    pub fn kernel_drops(&self) -> u64 {
        self.kernel_drops.into()
    }

    /// Every datagram of the last receive, with its sender, in arrival order.
    pub fn datagrams(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> + '_ {
        (0..self.count).flat_map(move |i| {
            let from = from_storage(&self.addrs[i]);
            let message = &self.buffers[i * SLOT..i * SLOT + self.lens[i]];
            // An empty datagram is still one datagram (to be counted as garbage).
            let empty = std::iter::once(message).filter(|m| m.is_empty());
            empty
                .chain(message.chunks(self.segments[i].max(1)))
                .filter_map(move |d| from.map(|from| (d, from)))
        })
    }
}

/// Lets the kernel hand over trains of datagrams from one sender as one message (UDP GRO);
/// [`RecvBatch`] takes them apart again.
pub fn enable_gro(fd: RawFd) -> io::Result<()> {
    set_int_option(fd, libc::SOL_UDP, libc::UDP_GRO)
}

/// Has the kernel tell, with every message, how many datagrams it dropped on this socket
/// because the receive buffer was full: a flood's cost that would otherwise go unseen.
pub fn count_kernel_drops(fd: RawFd) -> io::Result<()> {
    set_int_option(fd, libc::SOL_SOCKET, libc::SO_RXQ_OVFL)
}

/// Turns a boolean socket option on.
pub fn set_int_option(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<()> {
    set_option(fd, level, name, &(1 as libc::c_int))
}

/// Sets a socket option to `value`, whatever its type.
pub fn set_option<T>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` is a live `T` of `size_of::<T>()` bytes for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as u32,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What a received message's control data says.
#[derive(Default)]
struct ReceivedControl {
    /// The segment size of a GRO'd message.
    gro_segment: Option<usize>,
    /// The socket's drop counter (SO_RXQ_OVFL).
    kernel_drops: Option<u32>,
}

fn read_control(hdr: &libc::msghdr) -> ReceivedControl {
    let mut control = ReceivedControl::default();
    // SAFETY: the kernel filled msg_control with well-formed cmsgs up to msg_controllen, and
    // each data item read is the size the kernel writes for that cmsg type.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (libc::SOL_UDP, libc::UDP_GRO) => {
                    let size = std::ptr::read_unaligned(data as *const libc::c_int);
                    control.gro_segment = usize::try_from(size).ok().filter(|&s| s > 0);
                }
                (libc::SOL_SOCKET, libc::SO_RXQ_OVFL) => {
                    control.kernel_drops = Some(std::ptr::read_unaligned(data as *const u32));
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
    control
}

/// One message of a send batch: `segments` datagrams for `to`, back to back, all of
/// `segment` bytes but possibly the last.
#[derive(Clone, Copy)]
struct Message {
    to: Option<SocketAddr>,
    len: usize,
    segment: usize,
    segments: u16,
}

const EMPTY: Message = Message {
    to: None,
    len: 0,
    segment: 0,
    segments: 0,
};

/// Send side: datagrams queued during one round of work. Consecutive datagrams to one peer
/// of one size (the segments of a TCP train) share a message that the kernel sends as UDP GSO,
/// cutting it apart as late as possible; all messages leave with one `sendmmsg`.
pub struct SendBatch {
    buffers: Vec<u8>,
    messages: [Message; BATCH],
    count: usize,
    /// Off once the kernel refused a GSO message (a device without checksum offload).
    gso: bool,
    /// Peers whose path was found narrower than our datagrams (warned about once): the
    /// kernel refuses datagrams above the path MTU, alone or in a GSO message, until the
    /// data plane has lowered what members send (`dataplane/pmtu.rs`).
    narrow: HashSet<SocketAddr>,
    /// Datagrams handed to the kernel since the start.
    flushed: u64,
}

impl SendBatch {
    pub fn new() -> Box<Self> {
        Box::new(SendBatch {
            buffers: vec![0; BATCH * SLOT],
            messages: [EMPTY; BATCH],
            count: 0,
            gso: true,
            narrow: HashSet::new(),
            flushed: 0,
        })
    }

    pub fn is_full(&self) -> bool {
        self.count == BATCH
    }

    /// Queues a datagram; the caller flushes when [`SendBatch::is_full`].
    pub fn push(&mut self, datagram: &[u8], to: SocketAddr) {
        self.push_with(datagram.len(), to, |slot| {
            slot.copy_from_slice(datagram);
            true
        });
    }

    /// Queues a datagram of `len` bytes that `fill` writes in place (so a sealed packet needs
    /// no copy); `fill` returns false to take the room back. The caller flushes when
    /// [`SendBatch::is_full`].
    pub fn push_with(
        &mut self,
        len: usize,
        to: SocketAddr,
        fill: impl FnOnce(&mut [u8]) -> bool,
    ) -> bool {
        debug_assert!(len <= SLOT);
        let joined = self.joins_last(len, to);
        if !joined {
            debug_assert!(!self.is_full());
            self.messages[self.count] = Message {
                to: Some(to),
                len: 0,
                segment: len,
                segments: 0,
            };
            self.count += 1;
        }
        let i = self.count - 1;
        let at = i * SLOT + self.messages[i].len;
        if !fill(&mut self.buffers[at..at + len]) {
            if !joined {
                self.count -= 1;
            }
            return false;
        }
        self.messages[i].len += len;
        self.messages[i].segments += 1;
        true
    }

    /// Can `len` bytes for `to` ride in the last message? Only after full-size segments:
    /// a shorter one ends a GSO message.
    fn joins_last(&self, len: usize, to: SocketAddr) -> bool {
        let Some(last) = self.count.checked_sub(1).map(|i| &self.messages[i]) else {
            return false;
        };
        self.gso
            && last.to == Some(to)
            && len > 0
            && len <= last.segment
            && last.len == last.segment * last.segments as usize
            && last.len + len <= GSO_BYTES
            && last.segments < GSO_SEGMENTS
    }

    /// Sends everything queued. Datagrams the kernel refuses (a full socket buffer, an
    /// unreachable peer) are dropped, as a network would.
    pub fn flush(&mut self, fd: RawFd) {
        let mut done = 0;
        while done < self.count {
            match self.send_from(fd, done) {
                Ok(n) => done += n,
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                    self.note_narrow_path(done);
                    done += 1;
                }
                Err(e) if self.messages[done].segments > 1 && refuses_gso(&e) => {
                    tracing::warn!("UDP GSO refused ({e}); sending datagrams one by one");
                    self.gso = false;
                    self.send_one_by_one(fd, done);
                    done += 1;
                }
                // The first message is the culprit: drop it and go on.
                Err(_) => done += 1,
            }
        }
        self.flushed += self.messages[..self.count]
            .iter()
            .map(|m| u64::from(m.segments))
            .sum::<u64>();
        self.count = 0;
    }

    /// One `sendmmsg` of messages `first..`; returns how many the kernel took.
    fn send_from(&mut self, fd: RawFd, first: usize) -> io::Result<usize> {
        // SAFETY: iovec and mmsghdr are plain C structs of integers and pointers, for which
        // all-zero is valid (null pointers, zero lengths); each is filled in before use.
        let mut iovecs: [libc::iovec; BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        // SAFETY: as above; an all-zero sockaddr_storage is the unspecified address.
        let mut addrs: [libc::sockaddr_storage; BATCH] = unsafe { zeroed() };
        let mut control = [[0u64; CONTROL_WORDS]; BATCH];
        let pending = self.count - first;
        for k in 0..pending {
            let i = first + k;
            let message = self.messages[i];
            iovecs[k] = libc::iovec {
                iov_base: self.buffers[i * SLOT..].as_mut_ptr().cast(),
                iov_len: message.len,
            };
            let hdr = &mut headers[k].msg_hdr;
            hdr.msg_namelen = to_storage(message.to.expect("queued"), &mut addrs[k]);
            hdr.msg_name = (&mut addrs[k] as *mut libc::sockaddr_storage).cast();
            hdr.msg_iov = &mut iovecs[k];
            hdr.msg_iovlen = 1;
            if message.segments > 1 {
                set_gso_segment(hdr, &mut control[k], message.segment as u16);
            }
        }
        // SAFETY: headers point at our buffers with their true lengths.
        let n = unsafe { libc::sendmmsg(fd, headers.as_mut_ptr(), pending as u32, 0) };
        if n > 0 {
            Ok(n as usize)
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// After the kernel refused message `i` as larger than the path to its peer: it is
    /// dropped (sent alone, its datagrams would be refused too).
    fn note_narrow_path(&mut self, i: usize) {
        let to = self.messages[i].to.expect("queued");
        if self.narrow.insert(to) {
            tracing::warn!(
                "the path to {to} is narrower than Flatnet's datagrams ({} bytes): they are \
                 dropped until members are told the path's MTU (within a second)",
                self.messages[i].segment
            );
        }
    }

    /// The datagrams of message `i`, each on its own.
    fn send_one_by_one(&self, fd: RawFd, i: usize) {
        let message = self.messages[i];
        let to = message.to.expect("queued");
        let bytes = &self.buffers[i * SLOT..i * SLOT + message.len];
        // SAFETY: plain data; all-zero is the unspecified address, overwritten just below.
        let mut addr: libc::sockaddr_storage = unsafe { zeroed() };
        let addr_len = to_storage(to, &mut addr);
        for datagram in bytes.chunks(message.segment) {
            // SAFETY: a plain sendto of a buffer we own.
            unsafe {
                libc::sendto(
                    fd,
                    datagram.as_ptr().cast(),
                    datagram.len(),
                    0,
                    (&addr as *const libc::sockaddr_storage).cast(),
                    addr_len,
                );
            }
        }
    }

    /// Datagrams handed to the kernel (sent, or dropped by it) so far.
    pub fn flushed(&self) -> u64 {
        self.flushed
    }
}

/// Errors that mean "not as one GSO message" rather than "not now" (a full buffer) or "not
/// there" (an unreachable peer), which drop the datagrams as a network would.
fn refuses_gso(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
    )
}

/// Attaches a UDP_SEGMENT cmsg to `hdr`, in `control`.
fn set_gso_segment(hdr: &mut libc::msghdr, control: &mut [u64; CONTROL_WORDS], segment: u16) {
    hdr.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE(2) fits in `control`; the header is written where CMSG_FIRSTHDR says.
    unsafe {
        hdr.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(hdr);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut u16, segment);
    }
}

fn to_storage(addr: SocketAddr, storage: &mut libc::sockaddr_storage) -> u32 {
    match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            let sin = unsafe { &mut *(storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as u16;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            };
            size_of::<libc::sockaddr_in>() as u32
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above.
            let sin6 = unsafe { &mut *(storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as u16;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: v6.ip().octets(),
            };
            sin6.sin6_flowinfo = v6.flowinfo();
            sin6.sin6_scope_id = v6.scope_id();
            size_of::<libc::sockaddr_in6>() as u32
        }
    }
}

fn from_storage(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says this is a sockaddr_in.
            let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this is a sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            // An IPv4 peer of a socket on `[::]`: known (and sent to) by its IPv4 address.
            if let Some(v4) = ip.to_ipv4_mapped() {
                return Some(SocketAddr::V4(SocketAddrV4::new(
                    v4,
                    u16::from_be(sin6.sin6_port),
                )));
            }
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    /// Sends `datagrams` to `to` through a batch, flushing as the daemon does.
    fn send(tx: &UdpSocket, datagrams: &[(Vec<u8>, SocketAddr)]) {
        let mut out = SendBatch::new();
        for (d, to) in datagrams {
            out.push(d, *to);
            if out.is_full() {
                out.flush(tx.as_raw_fd());
            }
        }
        out.flush(tx.as_raw_fd());
        assert_eq!(out.flushed(), datagrams.len() as u64);
    }

    /// The first `count` datagrams from `from`, and how many messages carried them.
    fn receive(rx: &UdpSocket, count: usize, from: SocketAddr) -> (Vec<Vec<u8>>, usize) {
        let (mut got, mut messages) = (Vec::new(), 0);
        let mut batch = RecvBatch::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < count {
            assert!(
                std::time::Instant::now() < deadline,
                "only {} arrived",
                got.len()
            );
            match batch.receive(rx.as_raw_fd()) {
                Ok(n) => {
                    messages += n;
                    for (data, sender) in batch.datagrams() {
                        assert_eq!(sender, from);
                        got.push(data.to_vec());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        (got, messages)
    }

    fn pair(gro: bool) -> (UdpSocket, UdpSocket) {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        if gro {
            enable_gro(rx.as_raw_fd()).unwrap();
        }
        (rx, UdpSocket::bind("127.0.0.1:0").unwrap())
    }

    #[test]
    fn a_socket_on_every_address_of_both_families_talks_ipv4_by_ipv4_addresses() {
        // `[::]` with IPV6_V6ONLY off (the lanes set it; the sysctl's default here).
        let both = UdpSocket::bind("[::]:0").unwrap();
        both.set_nonblocking(true).unwrap();
        let v4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        v4.set_nonblocking(true).unwrap();
        let to_both = SocketAddr::from(([127, 0, 0, 1], both.local_addr().unwrap().port()));
        send(&v4, &[(b"ping".to_vec(), to_both)]);
        let from_v4 = v4.local_addr().unwrap();
        let (got, _) = receive(&both, 1, from_v4);
        assert_eq!(got, [b"ping".to_vec()], "heard from the plain IPv4 address");
        send(&both, &[(b"pong".to_vec(), from_v4)]);
        let (got, _) = receive(&v4, 1, to_both);
        assert_eq!(got, [b"pong".to_vec()], "sent to an IPv4 address from [::]");
    }

    #[test]
    fn datagrams_the_kernel_dropped_are_counted() {
        let (rx, tx) = pair(true);
        count_kernel_drops(rx.as_raw_fd()).unwrap();
        let to = rx.local_addr().unwrap();
        // Far more than the default receive buffer holds, before anything is read.
        let sent = 5000;
        for _ in 0..sent {
            tx.send_to(&[7u8; 1000], to).unwrap();
        }
        let mut batch = RecvBatch::new();
        let mut received = 0;
        while let Ok(n) = batch.receive(rx.as_raw_fd()) {
            received += batch.datagrams().count();
            assert!(n > 0);
        }
        assert!(received > 0 && received < sent, "{received} received");
        // The kernel tells the count with the next datagram queued after the drops.
        tx.send_to(b"after", to).unwrap();
        while batch.receive(rx.as_raw_fd()).is_err() {
            std::thread::yield_now();
        }
        assert_eq!(batch.kernel_drops(), (sent - received) as u64);
    }

    #[test]
    fn datagrams_of_different_sizes_come_back_whole() {
        let (rx, tx) = pair(false);
        let to = rx.local_addr().unwrap();
        let sent: Vec<_> = (0..BATCH * 2)
            .map(|i| (vec![i as u8; 100 + i], to))
            .collect();
        send(&tx, &sent);
        let (got, _) = receive(&rx, sent.len(), tx.local_addr().unwrap());
        assert_eq!(got, sent.into_iter().map(|(d, _)| d).collect::<Vec<_>>());
    }

    /// A TCP train's segments: equal sizes to one peer, then a short one. They travel as GSO
    /// messages and come back apart, in order, whether or not the receiver takes GRO.
    #[test]
    fn a_train_of_equal_datagrams_keeps_its_boundaries() {
        for gro in [true, false] {
            let (rx, tx) = pair(gro);
            let to = rx.local_addr().unwrap();
            // More than one GSO message's worth, small enough for the default socket buffer.
            let mut sent: Vec<_> = (0..100u32)
                .map(|i| (i.to_be_bytes().repeat(50), to))
                .collect();
            sent.push((vec![7; 30], to));
            send(&tx, &sent);
            let (got, messages) = receive(&rx, sent.len(), tx.local_addr().unwrap());
            assert_eq!(got.len(), sent.len());
            if gro {
                assert!(
                    messages < got.len() / 10,
                    "{messages} messages: GSO/GRO unused"
                );
            }
            assert_eq!(got, sent.into_iter().map(|(d, _)| d).collect::<Vec<_>>());
        }
    }

    /// A kernel that refuses GSO (here: a socket without UDP checksums, which GSO needs)
    /// still gets every datagram, one by one, and is not asked again.
    #[test]
    fn a_refused_gso_message_goes_one_by_one() {
        let (rx, tx) = pair(true);
        let on: libc::c_int = 1;
        // SAFETY: a plain setsockopt with an int value.
        let rc = unsafe {
            libc::setsockopt(
                tx.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NO_CHECK,
                (&on as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as u32,
            )
        };
        assert_eq!(rc, 0);
        let to = rx.local_addr().unwrap();
        let sent: Vec<_> = (0..20u32)
            .map(|i| (i.to_be_bytes().repeat(25), to))
            .collect();
        let mut out = SendBatch::new();
        for (d, to) in &sent {
            out.push(d, *to);
        }
        assert_eq!(out.count, 1, "the train should have been one GSO message");
        out.flush(tx.as_raw_fd());
        assert!(!out.gso, "the refusal should turn GSO off");
        let (got, _) = receive(&rx, sent.len(), tx.local_addr().unwrap());
        assert_eq!(got, sent.into_iter().map(|(d, _)| d).collect::<Vec<_>>());
    }

    #[test]
    fn datagrams_for_other_peers_do_not_share_a_message() {
        let (rx1, tx) = pair(true);
        let (rx2, _) = pair(true);
        let (to1, to2) = (rx1.local_addr().unwrap(), rx2.local_addr().unwrap());
        let sent: Vec<_> = (0..40u8)
            .map(|i| (vec![i; 500], if i % 3 == 0 { to2 } else { to1 }))
            .collect();
        send(&tx, &sent);
        let from = tx.local_addr().unwrap();
        let for_peer = |to| -> Vec<Vec<u8>> {
            sent.iter()
                .filter(|(_, t)| *t == to)
                .map(|(d, _)| d.clone())
                .collect()
        };
        assert_eq!(receive(&rx1, for_peer(to1).len(), from).0, for_peer(to1));
        assert_eq!(receive(&rx2, for_peer(to2).len(), from).0, for_peer(to2));
    }

    /// A datagram written in place that is taken back (its sealing failed) leaves nothing:
    /// neither a message of its own nor a segment in the message it would have joined.
    #[test]
    fn a_datagram_taken_back_leaves_no_trace() {
        let (rx, tx) = pair(true);
        let to = rx.local_addr().unwrap();
        let mut out = SendBatch::new();
        assert!(!out.push_with(500, to, |_| false));
        assert_eq!(out.count, 0);
        assert!(out.push_with(500, to, |slot| {
            slot.fill(1);
            true
        }));
        assert!(!out.push_with(500, to, |slot| {
            slot.fill(9);
            false
        }));
        out.push(&[2; 500], to);
        assert_eq!((out.count, out.messages[0].segments), (1, 2));
        out.flush(tx.as_raw_fd());
        let (got, _) = receive(&rx, 2, tx.local_addr().unwrap());
        assert_eq!(got, vec![vec![1; 500], vec![2; 500]]);
    }
}
