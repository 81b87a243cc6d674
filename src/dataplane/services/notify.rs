//! Tells a supervisor that flatnetd serves: systemd's notify protocol (`Type=notify`: a
//! datagram to `$NOTIFY_SOCKET`) for the unit, and a byte on `--ready-fd` for the plugins.

use std::fs::File;
use std::io::Write;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` ("READY=1", "STOPPING=1") to systemd if it asked to be told.
pub fn systemd(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let socket = socket.to_string_lossy();
    // "@name" is a socket in the abstract namespace.
    let address = match socket.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(socket.as_ref()),
    };
    let sent = address
        .and_then(|address| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &address));
    if let Err(e) = sent {
        tracing::warn!("telling systemd {state} at {socket}: {e}");
    }
}

/// Tells both kinds of waiter that the daemon serves.
pub fn ready(ready_fd: Option<File>) {
    if let Some(mut pipe) = ready_fd {
        let _ = pipe.write_all(b"1");
    }
    systemd("READY=1");
}
