//! When sessions are renewed, given up and retried. The defaults follow WireGuard's reasoning
//! (renew well before the keys must be dropped; retry lost handshakes with backoff) with
//! shorter retry intervals, since Flatnet's peers are usually one hop away.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Limits {
    /// Start a new handshake once a session is this old...
    pub rekey_after_time: Duration,
    /// ...or has sent this many messages.
    pub rekey_after_messages: u64,
    /// Never use a session older than this, or past this many messages.
    pub reject_after_time: Duration,
    pub reject_after_messages: u64,
    /// First retry of an unanswered handshake; doubles up to `handshake_retry_max`.
    pub handshake_retry_base: Duration,
    pub handshake_retry_max: Duration,
    /// A peer with no traffic either way for this long loses its sessions.
    pub idle_timeout: Duration,
    /// Packets kept per peer while its handshake is under way.
    pub queue_len: usize,
    /// Received data and sent nothing back for this long: send an empty packet, so the peer
    /// knows the session is alive (WireGuard's passive keepalive).
    pub keepalive_after: Duration,
    /// Sent data and heard nothing back for this long: the peer is presumed gone from where
    /// it was, and a new handshake goes to its lighthouse endpoint.
    pub dead_after: Duration,
    /// Handshakes unanswered for this long: give the peer up (drop its queue and sessions)
    /// until traffic for it comes again.
    pub give_up_after: Duration,
    /// Send a keepalive at least this often on an established tunnel, and keep it from going
    /// idle: for peers behind NAT, whose mapping must be kept open. Off by default.
    pub persistent_keepalive: Option<Duration>,
    /// Without `persistent_keepalive`: the same, but only to peers that see this host
    /// elsewhere than it publishes (a NAT is in between, and its mapping for them must stay
    /// open). 25 s: below the 30 s after which common NATs forget an idle UDP mapping
    /// (WireGuard's advice for its persistent keepalive).
    pub nat_keepalive: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            rekey_after_time: Duration::from_secs(120),
            rekey_after_messages: 1 << 48,
            reject_after_time: Duration::from_secs(180),
            reject_after_messages: (1 << 48) + (1 << 32),
            handshake_retry_base: Duration::from_millis(250),
            handshake_retry_max: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(180),
            queue_len: 32,
            keepalive_after: Duration::from_secs(10),
            dead_after: Duration::from_secs(15),
            give_up_after: Duration::from_secs(90),
            persistent_keepalive: None,
            nat_keepalive: Some(Duration::from_secs(25)),
        }
    }
}

impl Limits {
    /// These limits with sessions renewed after `age`, and refused a minute past it.
    pub fn rekeying_after(self, age: Duration) -> Limits {
        Limits {
            rekey_after_time: age,
            reject_after_time: age + Duration::from_secs(60),
            ..self
        }
    }
}
