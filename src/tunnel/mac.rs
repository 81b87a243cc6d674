//! The cheap gates in front of the handshake. Every handshake message carries a MAC keyed by
//! the receiver's public key (WireGuard's "mac1"). Checking it costs two BLAKE2s blocks, a
//! hundred times less than the Diffie-Hellman operations behind it, and only a sender that
//! knows our public key (a host listed in the lighthouse) can compute it, so a flood of random
//! initiations is dropped before any expensive work or allocation. An initiation also has room
//! for a second MAC ("mac2") keyed by a cookie the responder gave the sender's address
//! ([`super::cookie`]): proof that the sender can receive there.

use blake2::digest::consts::U16;
use blake2::digest::{KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac, Digest};

use super::keys::PublicKey;

pub const MAC_LEN: usize = 16;
const LABEL: &[u8] = b"flatnet mac1 v1";

/// A key for 16-byte BLAKE2s MACs with its key block already hashed: every message sent to us
/// is checked with the same key, so that block is hashed once, not per message.
#[derive(Clone)]
pub struct MacKey(Blake2sMac<U16>);

impl MacKey {
    /// The key of the MACs on handshake messages sent to the holder of `public` (mac1).
    pub fn for_receiver(public: &PublicKey) -> MacKey {
        let mut hash = Blake2s256::new();
        hash.update(LABEL);
        hash.update(public);
        MacKey::new(&hash.finalize())
    }

    /// A key of at most 32 bytes.
    pub fn new(key: &[u8]) -> MacKey {
        MacKey(<Blake2sMac<U16> as KeyInit>::new_from_slice(key).expect("key of 32 bytes or less"))
    }

    /// Writes the MAC over `message[..len - MAC_LEN]` into its last `MAC_LEN` bytes.
    pub fn seal(&self, message: &mut [u8]) {
        let body = message.len() - MAC_LEN;
        let tag = self.mac_of(&message[..body]);
        message[body..].copy_from_slice(&tag);
    }

    /// Whether the message's last `MAC_LEN` bytes are the MAC of the rest (in constant time).
    pub fn verify(&self, message: &[u8]) -> bool {
        let Some(body) = message.len().checked_sub(MAC_LEN) else {
            return false;
        };
        self.keyed(&message[..body])
            .verify_slice(&message[body..])
            .is_ok()
    }

    pub fn mac_of(&self, body: &[u8]) -> [u8; MAC_LEN] {
        self.keyed(body).finalize().into_bytes().into()
    }

    fn keyed(&self, body: &[u8]) -> Blake2sMac<U16> {
        let mut mac = self.0.clone();
        Mac::update(&mut mac, body);
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_key_of_the_receiver_verifies() {
        let (ours, theirs) = ([1u8; 32], [2u8; 32]);
        let mut message = [7u8; 64];
        MacKey::for_receiver(&ours).seal(&mut message);
        assert!(MacKey::for_receiver(&ours).verify(&message));
        assert!(!MacKey::for_receiver(&theirs).verify(&message));
        message[3] ^= 1;
        assert!(!MacKey::for_receiver(&ours).verify(&message));
        assert!(!MacKey::for_receiver(&ours).verify(&message[..8]));
    }

    #[test]
    fn a_short_key_macs_too_and_only_itself_verifies() {
        let mut message = [9u8; 40];
        MacKey::new(&[3u8; 16]).seal(&mut message);
        assert!(MacKey::new(&[3u8; 16]).verify(&message));
        assert!(!MacKey::new(&[4u8; 16]).verify(&message));
        assert_eq!(
            message[24..],
            MacKey::new(&[3u8; 16]).mac_of(&message[..24])
        );
    }
}
