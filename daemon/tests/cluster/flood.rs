//! A handshake flood from spoofed sources, sent in Rust from a test namespace (Python cannot
//! send 100,000 datagrams a second): real Noise initiations of a key nobody lists, each with a
//! valid mac1 (the target's public key is published), behind IPv4 headers written by hand so
//! that every one comes from another address. A thread enters the namespace and paces itself
//! to the rate asked for, in batches of `sendmmsg`.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flatnet::tunnel::handshake;
use flatnet::tunnel::wire::INIT_LEN;
use flatnet::tunnel::{PublicKey, StaticKeys};

/// The spoofed sources: 198.18.0.0/15, the benchmarking range.
pub const SPOOFED: &str = "198.18.0.0/15";
const FIRST_SOURCE: u32 = 0xc612_0001;
const BATCH: usize = 64;
const IP_UDP_HEADERS: usize = 28;

pub struct Flood {
    sent: Arc<AtomicU64>,
    thread: JoinHandle<FloodReport>,
}

pub struct FloodReport {
    /// Datagrams the kernel took.
    pub sent: u64,
    pub seconds: f64,
}

impl FloodReport {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.seconds
    }
}

impl Flood {
    /// Floods `target` from namespace `ns` at `rate` datagrams a second for `duration`, from
    /// `sources` addresses of [`SPOOFED`] (a port each).
    pub fn start(
        ns: &str,
        target: SocketAddrV4,
        target_key: &PublicKey,
        sources: u32,
        rate: u64,
        duration: Duration,
    ) -> Flood {
        let datagrams = spoofed_initiations(target, target_key, sources);
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let netns = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
        let thread = std::thread::spawn(move || {
            // SAFETY: setns on this thread only, with a namespace descriptor we own.
            let entered = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
            send_paced(&datagrams, target, rate, duration, &counter)
        });
        Flood { sent, thread }
    }

    /// Datagrams sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Whether it is still sending (it stops after its duration, whatever it managed to send).
    pub fn running(&self) -> bool {
        !self.thread.is_finished()
    }

    pub fn finish(self) -> FloodReport {
        self.thread.join().unwrap()
    }
}

/// One datagram per source: IPv4 and UDP headers, then an initiation of its own.
fn spoofed_initiations(target: SocketAddrV4, target_key: &PublicKey, sources: u32) -> Vec<Vec<u8>> {
    let stranger = StaticKeys::generate().unwrap();
    (0..sources)
        .map(|i| {
            let mut init = [0u8; INIT_LEN];
            handshake::initiate(
                &stranger,
                target_key,
                i + 1,
                None,
                Instant::now(),
                &mut init,
            )
            .unwrap();
            let source = SocketAddrV4::new(Ipv4Addr::from(FIRST_SOURCE + i), 10_000 + i as u16);
            ipv4_udp(source, target, &init)
        })
        .collect()
}

fn ipv4_udp(from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let total = (IP_UDP_HEADERS + payload.len()) as u16;
    let mut packet = Vec::with_capacity(total.into());
    // Version and header length, DSCP, total length, id, flags and offset, TTL 64, UDP;
    // the kernel writes the header checksum.
    packet.extend_from_slice(&[0x45, 0]);
    packet.extend_from_slice(&total.to_be_bytes());
    packet.extend_from_slice(&[0, 0, 0x40, 0, 64, libc::IPPROTO_UDP as u8, 0, 0]);
    packet.extend_from_slice(&from.ip().octets());
    packet.extend_from_slice(&to.ip().octets());
    packet.extend_from_slice(&from.port().to_be_bytes());
    packet.extend_from_slice(&to.port().to_be_bytes());
    packet.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    // No UDP checksum: IPv4 allows it.
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(payload);
    packet
}

fn send_paced(
    datagrams: &[Vec<u8>],
    target: SocketAddrV4,
    rate: u64,
    duration: Duration,
    counter: &AtomicU64,
) -> FloodReport {
    // SAFETY: a plain socket call; the descriptor is owned at once.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    assert!(
        socket >= 0,
        "raw socket: {}",
        std::io::Error::last_os_error()
    );
    let socket = unsafe { OwnedFd::from_raw_fd(socket) };
    let destination = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(*target.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let start = Instant::now();
    let (mut sent, mut next) = (0u64, 0usize);
    while start.elapsed() < duration {
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        if sent >= due {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        let batch = (due - sent).min(BATCH as u64) as usize;
        let taken = send_batch(&socket, &destination, datagrams, next, batch);
        sent += taken as u64;
        next = (next + taken) % datagrams.len();
        counter.store(sent, Ordering::Relaxed);
        if taken == 0 {
            // The device queue is full: let it drain.
            std::thread::yield_now();
        }
    }
    FloodReport {
        sent,
        seconds: start.elapsed().as_secs_f64(),
    }
}

/// Sends `count` datagrams from `first` on (round the list); returns how many the kernel took.
fn send_batch(
    socket: &OwnedFd,
    destination: &libc::sockaddr_in,
    datagrams: &[Vec<u8>],
    first: usize,
    count: usize,
) -> usize {
    let mut iovecs: Vec<libc::iovec> = (0..count)
        .map(|i| {
            let datagram = &datagrams[(first + i) % datagrams.len()];
            libc::iovec {
                iov_base: datagram.as_ptr() as *mut libc::c_void,
                iov_len: datagram.len(),
            }
        })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iov| {
            // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
            let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
            header.msg_hdr.msg_name = destination as *const _ as *mut libc::c_void;
            header.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            header.msg_hdr.msg_iov = iov;
            header.msg_hdr.msg_iovlen = 1;
            header
        })
        .collect();
    // SAFETY: `headers` points at `iovecs` and `datagrams`, alive for the call.
    let taken = unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            headers.as_mut_ptr(),
            headers.len() as u32,
            0,
        )
    };
    taken.max(0) as usize
}
