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

pub mod attach;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod error;
pub mod ipam;
pub mod lighthouse;
pub mod netns;
pub mod state;
pub mod tun;
pub mod tunnel;

pub use attach::{AttachRequest, Attachment, Network};
pub use config::{ConfigInput, FlatnetConfig};
pub use error::{Error, Result};
