//! Threads beside the packet thread. Each reaches it only through the command channel and the
//! wake eventfd ([`control_server::ask`]), or hands it changes the same way ([`follower`]):
//! the control socket ([`control_server`]), the metrics endpoint ([`metrics_server`]), the
//! lighthouse follower, the publisher of this host's candidate endpoints ([`publisher`]), the
//! relay of ports published on IPv6 loopback ([`loopback_ports`]), the stop signals
//! ([`signals`]), the supervisor's readiness protocol ([`notify`]) and rootless users'
//! socket ([`user_server`]), which asks the packet thread through the control socket as a
//! plugin does.

pub mod control_server;
pub mod follower;
pub mod loopback_ports;
pub mod metrics_server;
pub mod notify;
pub mod publisher;
pub mod signals;
pub mod user_server;
