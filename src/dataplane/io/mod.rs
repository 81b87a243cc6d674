//! The data plane's kernel I/O, self-contained: batched UDP sends and receives with GSO/GRO
//! ([`batch`]), TUN offload (virtio-net headers, segmentation, checksums: [`offload`]),
//! joining received segments into trains for a container ([`coalesce`]), packet parsing and
//! building ([`packet`], ICMP errors in [`icmp`], IPv4 fragments in [`fragment`]), polling before sleeping ([`idle_poll`]), and the UDP port split into
//! a transport and a handshake lane ([`lanes`]). Nothing here knows about members, routes or
//! tunnels.

pub mod batch;
pub mod coalesce;
pub mod fragment;
pub mod icmp;
pub mod idle_poll;
pub mod lanes;
pub mod offload;
pub mod packet;
