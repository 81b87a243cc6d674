//! Batched UDP I/O: many datagrams per system call (`recvmmsg`, `sendmmsg`). Per-packet
//! syscalls are what makes userspace tunnels slow; a batch turns two syscalls per packet into
//! two per batch on the underlay side.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Datagrams per system call.
pub const BATCH: usize = 32;
/// Room per datagram: the largest UDP payload, so nothing is ever truncated.
const SLOT: usize = 65536;

/// Receive side: slots the kernel fills in one `recvmmsg`.
pub struct RecvBatch {
    buffers: Vec<u8>,
    lens: [usize; BATCH],
    addrs: [libc::sockaddr_storage; BATCH],
    count: usize,
}

impl RecvBatch {
    pub fn new() -> Box<Self> {
        Box::new(RecvBatch {
            buffers: vec![0; BATCH * SLOT],
            lens: [0; BATCH],
            // SAFETY: sockaddr_storage is plain data; all-zero is a valid (unspecified) value.
            addrs: unsafe { zeroed() },
            count: 0,
        })
    }

    /// Receives up to [`BATCH`] datagrams without blocking; returns how many arrived.
    pub fn receive(&mut self, fd: RawFd) -> io::Result<usize> {
        let mut iovecs: [libc::iovec; BATCH] = unsafe { zeroed() };
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
            self.lens[i] = header.msg_len as usize;
        }
        Ok(self.count)
    }

    /// Datagram `i` of the last receive, with its sender.
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        if i >= self.count {
            return None;
        }
        let from = from_storage(&self.addrs[i])?;
        Some((&self.buffers[i * SLOT..i * SLOT + self.lens[i]], from))
    }
}

/// Send side: datagrams queued during one round of work, sent with one `sendmmsg`.
pub struct SendBatch {
    buffers: Vec<u8>,
    lens: [usize; BATCH],
    addrs: [libc::sockaddr_storage; BATCH],
    addr_lens: [u32; BATCH],
    count: usize,
    /// Datagrams handed to the kernel since the start.
    flushed: u64,
}

impl SendBatch {
    pub fn new() -> Box<Self> {
        Box::new(SendBatch {
            buffers: vec![0; BATCH * SLOT],
            lens: [0; BATCH],
            // SAFETY: as above.
            addrs: unsafe { zeroed() },
            addr_lens: [0; BATCH],
            count: 0,
            flushed: 0,
        })
    }

    pub fn is_full(&self) -> bool {
        self.count == BATCH
    }

    /// Queues a datagram; the caller flushes when [`SendBatch::is_full`].
    pub fn push(&mut self, datagram: &[u8], to: SocketAddr) {
        debug_assert!(!self.is_full() && datagram.len() <= SLOT);
        let i = self.count;
        self.buffers[i * SLOT..i * SLOT + datagram.len()].copy_from_slice(datagram);
        self.lens[i] = datagram.len();
        self.addr_lens[i] = to_storage(to, &mut self.addrs[i]);
        self.count += 1;
    }

    /// Sends everything queued. Datagrams the kernel refuses (a full socket buffer, an
    /// unreachable peer) are dropped, as a network would.
    pub fn flush(&mut self, fd: RawFd) {
        let mut sent = 0;
        while sent < self.count {
            let mut iovecs: [libc::iovec; BATCH] = unsafe { zeroed() };
            let mut headers: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
            let pending = self.count - sent;
            for k in 0..pending {
                let i = sent + k;
                iovecs[k] = libc::iovec {
                    iov_base: self.buffers[i * SLOT..].as_mut_ptr().cast(),
                    iov_len: self.lens[i],
                };
                let hdr = &mut headers[k].msg_hdr;
                hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
                hdr.msg_namelen = self.addr_lens[i];
                hdr.msg_iov = &mut iovecs[k];
                hdr.msg_iovlen = 1;
            }
            // SAFETY: headers point at our buffers with their true lengths.
            let n = unsafe { libc::sendmmsg(fd, headers.as_mut_ptr(), pending as u32, 0) };
            // On an error the first datagram is the culprit: skip it and go on.
            sent += if n > 0 { n as usize } else { 1 };
        }
        self.flushed += self.count as u64;
        self.count = 0;
    }

    /// Datagrams handed to the kernel (sent, or dropped by it) so far.
    pub fn flushed(&self) -> u64 {
        self.flushed
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

    #[test]
    fn a_batch_goes_out_and_comes_back_whole() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let mut out = SendBatch::new();
        for i in 0..BATCH {
            out.push(&vec![i as u8; 100 + i], to);
        }
        assert!(out.is_full());
        out.flush(tx.as_raw_fd());
        let mut got = Vec::new();
        let mut batch = RecvBatch::new();
        while got.len() < BATCH {
            match batch.receive(rx.as_raw_fd()) {
                Ok(n) => {
                    for i in 0..n {
                        let (data, from) = batch.get(i).unwrap();
                        assert_eq!(from, tx.local_addr().unwrap());
                        got.push(data.to_vec());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        for (i, data) in got.iter().enumerate() {
            assert_eq!(data, &vec![i as u8; 100 + i]);
        }
    }
}
