//! The cheap gate in front of the handshake: every handshake message ends with a MAC keyed by
//! the receiver's public key (WireGuard's "mac1"). Checking it costs one BLAKE2s, a hundred
//! times less than the Diffie-Hellman operations behind it, and only a sender that knows our
//! public key (a host listed in the lighthouse) can compute it, so a flood of random
//! initiations is dropped before any expensive work or allocation.

use blake2::digest::consts::U16;
use blake2::digest::{KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac, Digest};

use super::keys::PublicKey;

pub const MAC_LEN: usize = 16;
const LABEL: &[u8] = b"flatnet mac1 v1";

/// The key for the MACs on handshake messages sent to the holder of `public`.
#[derive(Clone)]
pub struct MacKey([u8; 32]);

impl MacKey {
    pub fn for_receiver(public: &PublicKey) -> MacKey {
        let mut hash = Blake2s256::new();
        hash.update(LABEL);
        hash.update(public);
        MacKey(hash.finalize().into())
    }

    /// Writes the MAC over `message[..len - MAC_LEN]` into its last `MAC_LEN` bytes.
    pub fn seal(&self, message: &mut [u8]) {
        let body = message.len() - MAC_LEN;
        let tag = self.tag(&message[..body]).finalize().into_bytes();
        message[body..].copy_from_slice(&tag);
    }

    /// Whether the message's last `MAC_LEN` bytes are the MAC of the rest (in constant time).
    pub fn verify(&self, message: &[u8]) -> bool {
        let Some(body) = message.len().checked_sub(MAC_LEN) else {
            return false;
        };
        self.tag(&message[..body])
            .verify_slice(&message[body..])
            .is_ok()
    }

    fn tag(&self, body: &[u8]) -> Blake2sMac<U16> {
        let mut mac = <Blake2sMac<U16> as KeyInit>::new_from_slice(&self.0).expect("32-byte key");
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
}
