//! Everything between `flatnetd` and the processes that talk to it: the plugins, the admin
//! CLI and metrics. [`protocol`] is what crosses the root-only control socket, [`status`] the
//! daemon's report, [`settings`] what a daemon runs with; [`client`] asks, [`launch`] starts
//! a daemon on demand (the way netavark starts aardvark-dns), and [`ViaDaemon`] is the
//! lighthouse as a plugin sees it through its daemon.

pub mod client;
pub mod launch;
pub mod protocol;
pub mod settings;
pub mod status;
mod via_daemon;

pub use client::{call, is_running, request, status};
pub use launch::{daemon_binary, ensure_running, stop};
pub use protocol::{
    DataPlaneRequest, Failure, LighthouseRequest, Refusal, Reply, Request, Response,
    PROTOCOL_VERSION,
};
pub use settings::{DaemonConfig, DaemonOptions, MetricsAddress, SameHost, Tuning};
pub use status::DaemonStatus;
pub use via_daemon::ViaDaemon;
