//! The Noise IK handshake (`Noise_IK_25519_ChaChaPoly_BLAKE2s`): the initiator already knows
//! the responder's static key from the lighthouse, so one round trip authenticates both hosts
//! and yields transport keys. Message 1 carries a timestamp so a replayed initiation is
//! recognised. `docs/tunnel.md` says why IK.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use snow::params::NoiseParams;
use snow::{HandshakeState, StatelessTransportState};

use super::cookie::{seal_mac2, Cookie};
use super::keys::{PublicKey, StaticKeys, KEY_LEN};
use super::mac::MacKey;
use super::wire::{
    init_mac1, write_init_header, write_response_header, INIT_HEADER_LEN, INIT_LEN, INIT_MAC1_END,
    MAC_LEN, RESPONSE_HEADER_LEN, RESPONSE_LEN, TIMESTAMP_LEN,
};

pub const NOISE_PATTERN: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// Mixed into the handshake hash: both sides must speak this protocol version.
const PROLOGUE: &[u8] = b"flatnet tunnel v3";

pub fn noise_params() -> NoiseParams {
    static PARAMS: OnceLock<NoiseParams> = OnceLock::new();
    PARAMS
        .get_or_init(|| NOISE_PATTERN.parse().expect("valid Noise pattern"))
        .clone()
}

/// An initiation sent and waiting for its response.
pub struct Initiation {
    state: HandshakeState,
    pub local_index: u32,
    pub peer: PublicKey,
    pub sent_at: Instant,
    /// What a cookie reply to it is bound to.
    pub mac1: [u8; MAC_LEN],
    /// The cookie its mac2 is keyed by, if any.
    pub cookie: Option<Cookie>,
}

/// Writes handshake message 1 into `out`, with a mac2 if the responder gave us a `cookie`;
/// returns the pending initiation and the length.
pub fn initiate(
    keys: &StaticKeys,
    peer: &PublicKey,
    local_index: u32,
    cookie: Option<Cookie>,
    now: Instant,
    out: &mut [u8],
) -> Result<(Initiation, usize), snow::Error> {
    let mut state = snow::Builder::new(noise_params())
        .local_private_key(&keys.private)?
        .remote_public_key(peer)?
        .prologue(PROLOGUE)?
        .build_initiator()?;
    write_init_header(out, local_index);
    let timestamp = wall_clock_nanos().to_be_bytes();
    state.write_message(
        &timestamp,
        &mut out[INIT_HEADER_LEN..INIT_MAC1_END - MAC_LEN],
    )?;
    MacKey::for_receiver(peer).seal(&mut out[..INIT_MAC1_END]);
    match &cookie {
        Some(cookie) => seal_mac2(cookie, &mut out[..INIT_LEN]),
        None => out[INIT_MAC1_END..INIT_LEN].fill(0),
    }
    let initiation = Initiation {
        state,
        local_index,
        peer: *peer,
        sent_at: now,
        mac1: init_mac1(&out[..INIT_LEN]),
        cookie,
    };
    Ok((initiation, INIT_LEN))
}

/// A verified message 1: who sent it and when, before anything is answered.
pub struct ReceivedInit {
    state: HandshakeState,
    pub peer: PublicKey,
    pub timestamp: u64,
}

/// Reads message 1. The caller decides whether `peer` may connect before calling
/// [`ReceivedInit::respond`].
pub fn read_init(keys: &StaticKeys, noise: &[u8]) -> Result<ReceivedInit, snow::Error> {
    let mut state = snow::Builder::new(noise_params())
        .local_private_key(&keys.private)?
        .prologue(PROLOGUE)?
        .build_responder()?;
    let mut payload = [0u8; 64];
    let len = state.read_message(noise, &mut payload)?;
    if len != TIMESTAMP_LEN {
        return Err(snow::Error::Input);
    }
    let peer: PublicKey = state
        .get_remote_static()
        .and_then(|k| <[u8; KEY_LEN]>::try_from(k).ok())
        .ok_or(snow::Error::Input)?;
    let timestamp = u64::from_be_bytes(payload[..TIMESTAMP_LEN].try_into().unwrap());
    Ok(ReceivedInit {
        state,
        peer,
        timestamp,
    })
}

impl ReceivedInit {
    /// Writes message 2 into `out`; returns the responder's transport keys and the length.
    pub fn respond(
        mut self,
        local_index: u32,
        remote_index: u32,
        out: &mut [u8],
    ) -> Result<(StatelessTransportState, usize), snow::Error> {
        write_response_header(out, local_index, remote_index);
        self.state
            .write_message(&[], &mut out[RESPONSE_HEADER_LEN..RESPONSE_LEN - MAC_LEN])?;
        MacKey::for_receiver(&self.peer).seal(&mut out[..RESPONSE_LEN]);
        Ok((self.state.into_stateless_transport_mode()?, RESPONSE_LEN))
    }
}

impl Initiation {
    /// Reads message 2. One that does not verify leaves the initiation as it was (snow restores
    /// its state on a failed read), so a forged response cannot kill a handshake in flight.
    pub fn read_response(&mut self, noise: &[u8]) -> Result<(), snow::Error> {
        let mut payload = [0u8; 16];
        let len = self.state.read_message(noise, &mut payload)?;
        if len != 0 {
            return Err(snow::Error::Input);
        }
        Ok(())
    }

    /// The session keys, once [`Initiation::read_response`] accepted the answer.
    pub fn into_transport(self) -> Result<StatelessTransportState, snow::Error> {
        self.state.into_stateless_transport_mode()
    }
}

/// Initiation timestamps only need to grow across restarts of the sender: wall-clock
/// nanoseconds do, and a replayed (older) initiation is refused by the responder.
fn wall_clock_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
