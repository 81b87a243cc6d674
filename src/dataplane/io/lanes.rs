//! The underlay's UDP port as two sockets ("lanes"): transport datagrams on one, everything
//! else (handshakes, cookie replies, garbage) on the other. The kernel steers each datagram by
//! its first byte, the message type (a classic BPF program on the `SO_REUSEPORT` group), so a handshake flood
//! fills only the handshake lane's buffer: the packet thread reads the transport lane first
//! and the handshake lane within a bound per round, and established tunnels keep their
//! packets however fast the flood comes (WireGuard keeps a separate handshake queue for the
//! same reason).

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{SockaddrIn, SockaddrIn6};

use super::batch::{set_int_option, set_option};

/// The two sockets of one UDP port.
pub struct Lanes {
    /// Transport datagrams; also the socket everything is sent from.
    pub transport: UdpSocket,
    pub handshakes: UdpSocket,
}

/// Binds both lanes to `listen`; datagrams whose first byte is `transport_type` take the
/// transport lane. Refused if anything else holds the port: the lanes' own `SO_REUSEPORT`
/// would otherwise let a second daemon bind it too, and receive nothing.
pub fn bind(listen: SocketAddr, transport_type: u8) -> io::Result<Lanes> {
    if listen.port() != 0 {
        drop(UdpSocket::bind(listen)?);
    }
    let transport = reuseport_socket(listen)?;
    // With port 0 the kernel chose one: the second lane joins it there.
    let handshakes = reuseport_socket(transport.local_addr()?)?;
    steer_by_first_byte(transport.as_raw_fd(), transport_type)?;
    Ok(Lanes {
        transport,
        handshakes,
    })
}

fn reuseport_socket(address: SocketAddr) -> io::Result<UdpSocket> {
    let family = match address {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: a plain socket call; the descriptor is owned at once.
    let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let socket = UdpSocket::from(unsafe { OwnedFd::from_raw_fd(fd) });
    set_int_option(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT)?;
    if address.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        // `[::]` is every address of both families, whatever `net.ipv6.bindv6only` says:
        // IPv4 peers arrive as mapped addresses (made plain again in `batch`).
        set_option(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            &(0 as libc::c_int),
        )?;
    }
    let bound = match address {
        SocketAddr::V4(v4) => nix::sys::socket::bind(fd, &SockaddrIn::from(v4)),
        SocketAddr::V6(v6) => nix::sys::socket::bind(fd, &SockaddrIn6::from(v6)),
    };
    bound.map_err(io::Error::from)?;
    Ok(socket)
}

/// Sends datagrams that start with `transport_type` to the group's first socket (the
/// transport lane) and all else to its second. The program sees the UDP payload from offset
/// 0; an empty datagram cannot be read and goes to the first (counted as malformed there).
fn steer_by_first_byte(fd: RawFd, transport_type: u8) -> io::Result<()> {
    let code = |code: u32| code as u16;
    let mut program = [
        libc::sock_filter {
            code: code(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS),
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: code(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K),
            jt: 0,
            jf: 1,
            k: transport_type.into(),
        },
        libc::sock_filter {
            code: code(libc::BPF_RET | libc::BPF_K),
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: code(libc::BPF_RET | libc::BPF_K),
            jt: 0,
            jf: 0,
            k: 1,
        },
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    set_option(fd, libc::SOL_SOCKET, libc::SO_ATTACH_REUSEPORT_CBPF, &fprog)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const TRANSPORT: u8 = 4;

    #[test]
    fn transport_datagrams_take_one_lane_and_the_rest_the_other() {
        let lanes = bind("127.0.0.1:0".parse().unwrap(), TRANSPORT).unwrap();
        let port = lanes.transport.local_addr().unwrap();
        assert_eq!(lanes.handshakes.local_addr().unwrap(), port);
        for lane in [&lanes.transport, &lanes.handshakes] {
            lane.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        for first in [TRANSPORT, 1, 2, 3, 0xff] {
            sender.send_to(&[first, 0, 0, 0], port).unwrap();
        }
        let mut buf = [0u8; 16];
        let (len, _) = lanes.transport.recv_from(&mut buf).unwrap();
        assert_eq!(buf[..len], [TRANSPORT, 0, 0, 0]);
        let mut others = Vec::new();
        for _ in 0..4 {
            let (len, _) = lanes.handshakes.recv_from(&mut buf).unwrap();
            others.push(buf[0]);
            assert_eq!(len, 4);
        }
        assert_eq!(others, [1, 2, 3, 0xff]);
    }

    #[test]
    fn a_port_in_use_is_refused() {
        let holder = UdpSocket::bind("127.0.0.1:0").unwrap();
        let taken = holder.local_addr().unwrap();
        let refused = bind(taken, TRANSPORT).err().expect("bound a port in use");
        assert_eq!(refused.kind(), io::ErrorKind::AddrInUse);
        let lanes = bind("127.0.0.1:0".parse().unwrap(), TRANSPORT).unwrap();
        let ours = lanes.transport.local_addr().unwrap();
        assert!(
            bind(ours, TRANSPORT).is_err(),
            "a second daemon could bind the lanes' port"
        );
    }
}
