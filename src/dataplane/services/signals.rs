//! SIGTERM and SIGINT stop flatnetd the way `flatnetd stop` does: the containers keep their
//! interfaces and records, and the next daemon serves them again. The signals are blocked in
//! every thread and taken by one that waits for them, then asks for a shutdown on the control
//! socket, so there is one way to stop.

use nix::sys::signal::{SigSet, Signal};

use crate::control::{self, DataPlaneRequest};
use crate::error::{Error, Result};
use crate::state::StateDir;

fn stop_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set
}

/// Blocks the stop signals in this thread and the threads it starts afterwards: call it before
/// any other thread exists.
pub fn block() -> Result<()> {
    stop_signals()
        .thread_block()
        .map_err(|e| Error::io("blocking SIGTERM and SIGINT", e.into()))
}

/// Waits for a stop signal, then asks the daemon of `state_dir` to shut down.
pub fn spawn(state_dir: StateDir) {
    let waiter = move || {
        if let Ok(signal) = stop_signals().wait() {
            tracing::info!("{signal}: stopping");
            if let Err(e) = control::request(&state_dir, &DataPlaneRequest::Shutdown.into()) {
                tracing::warn!("stopping on {signal}: {e}");
            }
        }
    };
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(waiter);
}
