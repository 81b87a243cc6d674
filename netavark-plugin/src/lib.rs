//! Flatnet's netavark front end as a library: how a netavark network and its options map to
//! the core's configuration and back. The `flatnet` plugin binary and `flatnetd check` both
//! read networks through it, so a check says what `podman network create` would. Under
//! rootless Podman the plugin asks flatnetd instead ([`rootless`]).

pub mod rootless;
pub mod translate;
