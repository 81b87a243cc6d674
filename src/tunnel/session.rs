//! One established session: transport keys, the explicit send counter used as the nonce, and
//! the receive replay window.

use std::sync::Arc;
use std::time::Instant;

use snow::StatelessTransportState;

use super::keys::PublicKey;
use super::replay::ReplayWindow;
use super::timers::Limits;
use super::wire::{write_transport_header, AEAD_TAG_LEN, TRANSPORT_HEADER_LEN};
use super::DropReason;

pub struct Session {
    pub local_index: u32,
    pub remote_index: u32,
    pub peer: PublicKey,
    pub initiator: bool,
    pub created: Instant,
    /// Shared with the [`SealKey`]s handed to other threads.
    transport: Arc<StatelessTransportState>,
    next_counter: u64,
    replay: ReplayWindow,
    /// A responder may not send until the initiator has proven it holds the keys by sending
    /// on them (otherwise a replayed initiation could make us talk into the void).
    confirmed: bool,
}

impl Session {
    pub fn new(
        local_index: u32,
        remote_index: u32,
        peer: PublicKey,
        transport: StatelessTransportState,
        initiator: bool,
        now: Instant,
    ) -> Self {
        Session {
            local_index,
            remote_index,
            peer,
            initiator,
            created: now,
            transport: Arc::new(transport),
            next_counter: 0,
            replay: ReplayWindow::default(),
            confirmed: initiator,
        }
    }

    pub fn is_confirmed(&self) -> bool {
        self.confirmed
    }

    pub fn can_send(&self, now: Instant, limits: &Limits) -> bool {
        self.confirmed
            && now.duration_since(self.created) < limits.reject_after_time
            && self.next_counter < limits.reject_after_messages
    }

    pub fn wants_rekey(&self, now: Instant, limits: &Limits) -> bool {
        now.duration_since(self.created) >= limits.rekey_after_time
            || self.next_counter >= limits.rekey_after_messages
    }

    pub fn is_expired(&self, now: Instant, limits: &Limits) -> bool {
        now.duration_since(self.created) >= limits.reject_after_time
    }

    /// Writes header and ciphertext of `plaintext` into `out`; returns the datagram length.
    pub fn encrypt(&mut self, plaintext: &[u8], out: &mut [u8]) -> Option<usize> {
        let len = seal(
            &self.transport,
            self.remote_index,
            self.next_counter,
            plaintext,
            out,
        )?;
        self.next_counter += 1;
        Some(len)
    }

    /// Hands the next `count` counters to a sealer on another thread; `None` if the session
    /// may not send that many more.
    pub fn reserve(&mut self, count: u64, limits: &Limits) -> Option<SealKey> {
        let end = self.next_counter.checked_add(count)?;
        if end > limits.reject_after_messages {
            return None;
        }
        let key = SealKey {
            transport: self.transport.clone(),
            remote_index: self.remote_index,
            next: self.next_counter,
            end,
        };
        self.next_counter = end;
        Some(key)
    }

    /// Authenticates and decrypts into `out`. The replay window is consulted before the AEAD
    /// (cheap rejection) and updated only after it (a forged counter cannot poison it).
    pub fn decrypt(
        &mut self,
        counter: u64,
        ciphertext: &[u8],
        out: &mut [u8],
        now: Instant,
        limits: &Limits,
    ) -> Result<usize, DropReason> {
        self.check_fresh(counter, now, limits)?;
        let opened = open(&self.transport, counter, ciphertext, out);
        self.accept(counter, opened)
    }

    /// What another thread needs to open the datagram with `counter` ahead of
    /// [`Session::accept_opened`]; `None` if the session would refuse it unopened.
    pub fn open_key(&self, counter: u64, now: Instant, limits: &Limits) -> Option<OpenKey> {
        self.check_fresh(counter, now, limits).ok()?;
        Some(OpenKey {
            transport: self.transport.clone(),
            counter,
        })
    }

    /// [`Session::decrypt`] for a datagram opened elsewhere with `key`, which must be this
    /// session's (see [`Session::issued`]). Checked again: an earlier datagram may have taken
    /// the counter, or the session expired, since the key was issued.
    pub fn accept_opened(
        &mut self,
        key: &OpenKey,
        opened: Result<usize, DropReason>,
        now: Instant,
        limits: &Limits,
    ) -> Result<usize, DropReason> {
        self.check_fresh(key.counter, now, limits)?;
        self.accept(key.counter, opened)
    }

    /// Whether `key` was issued by this session (and not by one that had its index before).
    pub fn issued(&self, key: &OpenKey) -> bool {
        Arc::ptr_eq(&self.transport, &key.transport)
    }

    fn check_fresh(&self, counter: u64, now: Instant, limits: &Limits) -> Result<(), DropReason> {
        if self.is_expired(now, limits) || counter >= limits.reject_after_messages {
            return Err(DropReason::Expired);
        }
        if !self.replay.is_fresh(counter) {
            return Err(DropReason::Replay);
        }
        Ok(())
    }

    /// Takes an authenticated counter into the replay window.
    fn accept(
        &mut self,
        counter: u64,
        opened: Result<usize, DropReason>,
    ) -> Result<usize, DropReason> {
        let len = opened?;
        if !self.replay.accept(counter) {
            return Err(DropReason::Replay);
        }
        self.confirmed = true;
        Ok(len)
    }
}

/// The right to open one datagram of a session on another thread ([`Session::open_key`]).
/// Opening proves only that the datagram is authentic: the session takes it (replay window,
/// expiry) in [`Session::accept_opened`], on its own thread.
pub struct OpenKey {
    transport: Arc<StatelessTransportState>,
    counter: u64,
}

impl OpenKey {
    /// Authenticates and decrypts `ciphertext` into `out`; the plaintext's length.
    pub fn open(&self, ciphertext: &[u8], out: &mut [u8]) -> Result<usize, DropReason> {
        open(&self.transport, self.counter, ciphertext, out)
    }
}

fn open(
    transport: &StatelessTransportState,
    counter: u64,
    ciphertext: &[u8],
    out: &mut [u8],
) -> Result<usize, DropReason> {
    transport
        .read_message(counter, ciphertext, out)
        .map_err(|_| DropReason::BadTag)
}

/// The right to seal a run of counters reserved from a session ([`Session::reserve`]), for a
/// thread other than the one that owns the session. Each counter is used at most once: the
/// session never hands it out again.
pub struct SealKey {
    transport: Arc<StatelessTransportState>,
    remote_index: u32,
    next: u64,
    end: u64,
}

impl SealKey {
    /// Like [`Session::encrypt`]; `None` once the reserved counters are used up.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut [u8]) -> Option<usize> {
        if self.next >= self.end {
            return None;
        }
        let len = seal(
            &self.transport,
            self.remote_index,
            self.next,
            plaintext,
            out,
        )?;
        self.next += 1;
        Some(len)
    }
}

/// Seals `plaintext` under `counter` into `out` behind the transport header.
fn seal(
    transport: &StatelessTransportState,
    remote_index: u32,
    counter: u64,
    plaintext: &[u8],
    out: &mut [u8],
) -> Option<usize> {
    let needed = TRANSPORT_HEADER_LEN + plaintext.len() + AEAD_TAG_LEN;
    if out.len() < needed {
        return None;
    }
    let len = transport
        .write_message(counter, plaintext, &mut out[TRANSPORT_HEADER_LEN..needed])
        .ok()?;
    write_transport_header(out, remote_index, counter);
    Some(TRANSPORT_HEADER_LEN + len)
}
