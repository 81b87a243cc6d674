//! Fault injection for the kill tests: with `FLATNET_KILL_AT=<point>` in its environment, a
//! process SIGKILLs itself when it reaches that point, as an OOM kill or a power cut would.
//! Compiled in only with the `kill-points` feature, which the workspace's test builds turn on
//! (a dev-dependency of the daemon crate) and release builds and the package leave off: there
//! `here` is an empty inline function and the variable means nothing.

/// Every point, for tests that pick them at random.
pub const POINTS: &[&str] = &[
    "cni.add",
    "cni.del",
    "netavark.setup",
    "netavark.teardown",
    "attach.daemon_started",
    "attach.address_claimed",
    "attach.interface_made",
    "attach.record_written",
    "attach.served",
    "detach.unserved",
    "detach.interface_removed",
    "detach.address_released",
    "state.temp_written",
    "daemon.attach",
];

#[cfg(feature = "kill-points")]
pub fn here(point: &str) {
    debug_assert!(POINTS.contains(&point), "unlisted kill point {point}");
    if std::env::var("FLATNET_KILL_AT").is_ok_and(|wanted| wanted == point) {
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::SIGKILL);
    }
}

#[cfg(not(feature = "kill-points"))]
#[inline(always)]
pub fn here(_point: &str) {}
