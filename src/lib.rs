//! Flatnet's core: everything both front ends (the CNI plugin `flatnet-cni` and the netavark
//! plugin `flatnet`) share. One module per Phase 1 component:
//!
//! | module        | component          |
//! |---------------|--------------------|
//! | [`config`]    | `FlatnetConfig`    |
//! | [`netns`]     | `NetworkNamespace` (with [`tun`] for the device itself) |
//! | [`ipam`]      | `IPAddressManager` |
//! | [`lighthouse`]| `LighthouseClient` |
//! | [`attach`]    | attach / detach / check, tying them together with rollback |
//!
//! Around them, one module per concept of a complete network: [`host_member`] (the host's own
//! interface on each network), [`portmap`] and [`firewall`] (published ports, egress), [`dns`]
//! (names), and [`dataplane`] with [`tunnel`] (flatnetd's packet paths and Noise tunnels).

pub mod attach;
pub mod attachment;
pub mod cert;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod dns;
pub mod error;
pub mod firewall;
pub mod host_member;
pub mod ipam;
pub mod killpoint;
pub mod lighthouse;
pub mod logging;
pub mod manual;
pub mod metrics;
pub mod netns;
pub mod network_id;
pub mod portmap;
pub mod state;
pub mod tun;
pub mod tunnel;
pub mod users;

pub use attach::{AttachRequest, Network};
pub use attachment::Attachment;
pub use config::{ConfigInput, FlatnetConfig};
pub use error::{Error, Result};
pub use portmap::PortMapping;
