//! Rootless Podman through flatnetd: a rootless user's plugin cannot make devices or touch
//! Flatnet's state, so it asks the host's flatnetd on a socket of its own, and flatnetd does
//! what the operator granted that user (`grants`), no more (`limits`), in namespaces that are
//! the user's own (`pins`), and takes away what no runtime will (`abandoned`). [`client`] is
//! the plugins' side, [`service`] the daemon's, [`protocol`] what crosses between them.

pub mod abandoned;
pub mod client;
pub mod grants;
pub mod limits;
pub mod pins;
pub mod protocol;
pub mod service;

pub use client::{is_rootless, UserSocket, DEFAULT_USER_SOCKET};
pub use grants::{Caller, Grants};
pub use service::UserService;
