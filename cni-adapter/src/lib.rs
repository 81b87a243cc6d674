//! Flatnet's CNI front end as a library: the protocol's types and how a plugin configuration
//! maps to the core's. The `flatnet-cni` binary and `flatnetd check` both read networks
//! through it, so a check says what an attach would.

pub mod protocol;
