//! Cookie replies (WireGuard's mac2 and cookie). A valid mac1 only proves that a sender knows
//! our public key, which is published; it does not prove the sender can receive at its source
//! address. Under load, an initiation without a valid mac2 is answered with a cookie instead of
//! Diffie-Hellman: a MAC of its source address under a secret that changes every two minutes,
//! sent encrypted so only the initiator that sent that initiation (whose mac1 is the AAD) can
//! read it. The initiator repeats its initiation with mac2 keyed by the cookie; that one is
//! answered. A flood from spoofed sources never sees its cookies, so under load it costs us a
//! MAC and a small reply per datagram, and an attacker gets Diffie-Hellman only from addresses
//! it can receive at, each within its per-source budget.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use blake2::{Blake2s256, Digest};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};

use super::keys::PublicKey;
use super::mac::MacKey;
use super::wire::{write_cookie_header, COOKIE_LEN, COOKIE_NONCE_LEN, COOKIE_REPLY_LEN, MAC_LEN};

pub type Cookie = [u8; COOKIE_LEN];

/// How long a cookie secret is used before a new one is drawn.
const SECRET_LIFETIME: Duration = Duration::from_secs(120);
/// How long an initiator uses a cookie: less than a secret lives, less a round trip, so a
/// cookie in use is seldom already refused.
pub const COOKIE_LIFETIME: Duration = Duration::from_secs(110);
const REPLY_KEY_LABEL: &[u8] = b"flatnet cookie v1";

/// The responder's side: mints cookies for source addresses and checks mac2.
pub struct CookieMinter {
    secret: MacKey,
    drawn_at: Instant,
    /// Encrypts replies; derived from our public key, which the initiator knows.
    reply_cipher: XChaCha20Poly1305,
    /// Reply nonces: random per run, then counted, so none repeats under the one reply key
    /// without a system call per reply.
    nonce_prefix: [u8; COOKIE_NONCE_LEN - 8],
    replies: u64,
}

impl CookieMinter {
    pub fn new(public: &PublicKey, now: Instant) -> Self {
        CookieMinter {
            secret: MacKey::new(&random::<32>()),
            drawn_at: now,
            reply_cipher: reply_cipher(public),
            nonce_prefix: random(),
            replies: 0,
        }
    }

    /// Checks an initiation's mac2: `Err` with the cookie to send unless it is keyed by the
    /// cookie of the address it came from.
    pub fn check(&mut self, init: &[u8], from: SocketAddr, now: Instant) -> Result<(), Cookie> {
        let cookie = self.cookie_for(from, now);
        let mac2 = &init[init.len() - MAC_LEN..];
        // Zeros: sent without a cookie (a real mac2 of zeros is a 2^-128 chance).
        if mac2 != [0; MAC_LEN] && MacKey::new(&cookie).verify(init) {
            Ok(())
        } else {
            Err(cookie)
        }
    }

    /// Writes into `out` the reply carrying `cookie` to an initiation (its sender index and
    /// mac1).
    pub fn reply(
        &mut self,
        receiver: u32,
        init_mac1: &[u8; MAC_LEN],
        cookie: &Cookie,
        out: &mut [u8; COOKIE_REPLY_LEN],
    ) {
        self.replies += 1;
        write_cookie_header(out, receiver);
        let (nonce, rest) = out[8..].split_at_mut(COOKIE_NONCE_LEN);
        nonce[..COOKIE_NONCE_LEN - 8].copy_from_slice(&self.nonce_prefix);
        nonce[COOKIE_NONCE_LEN - 8..].copy_from_slice(&self.replies.to_le_bytes());
        let (sealed, tag_out) = rest.split_at_mut(COOKIE_LEN);
        sealed.copy_from_slice(cookie);
        let tag = self
            .reply_cipher
            .encrypt_in_place_detached(XNonce::from_slice(nonce), init_mac1, sealed)
            .expect("a 16-byte message fits");
        tag_out.copy_from_slice(&tag);
    }

    fn cookie_for(&mut self, from: SocketAddr, now: Instant) -> Cookie {
        if now.saturating_duration_since(self.drawn_at) >= SECRET_LIFETIME {
            self.secret = MacKey::new(&random::<32>());
            self.drawn_at = now;
        }
        let mut address = [0u8; 18];
        let ip = match from.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        address[..16].copy_from_slice(&ip.octets());
        address[16..].copy_from_slice(&from.port().to_be_bytes());
        self.secret.mac_of(&address)
    }
}

/// The initiator's side: the cookie in a reply from `responder` to the initiation whose mac1
/// is `init_mac1`; `None` if the reply does not decrypt (forged, or for another initiation).
pub fn open_reply(
    responder: &PublicKey,
    init_mac1: &[u8; MAC_LEN],
    nonce: &[u8],
    sealed: &[u8],
) -> Option<Cookie> {
    let (ciphertext, tag) = sealed.split_at(COOKIE_LEN);
    let mut cookie: Cookie = ciphertext.try_into().ok()?;
    reply_cipher(responder)
        .decrypt_in_place_detached(
            XNonce::from_slice(nonce),
            init_mac1,
            &mut cookie,
            Tag::from_slice(tag),
        )
        .ok()?;
    Some(cookie)
}

/// Writes the mac2 keyed by `cookie` into an initiation's last `MAC_LEN` bytes.
pub fn seal_mac2(cookie: &Cookie, init: &mut [u8]) {
    MacKey::new(cookie).seal(init)
}

fn reply_cipher(public: &PublicKey) -> XChaCha20Poly1305 {
    let mut hash = Blake2s256::new();
    hash.update(REPLY_KEY_LABEL);
    hash.update(public);
    XChaCha20Poly1305::new(Key::from_slice(&hash.finalize()))
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("system random source");
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::wire::{parse, Message, INIT_LEN};

    fn reply_to(
        minter: &mut CookieMinter,
        mac1: &[u8; MAC_LEN],
        from: SocketAddr,
        now: Instant,
    ) -> [u8; COOKIE_REPLY_LEN] {
        let cookie = minter.check(&[0u8; INIT_LEN], from, now).unwrap_err();
        let mut out = [0u8; COOKIE_REPLY_LEN];
        minter.reply(7, mac1, &cookie, &mut out);
        out
    }

    fn opened(reply: &[u8], responder: &PublicKey, mac1: &[u8; MAC_LEN]) -> Option<Cookie> {
        let Some(Message::CookieReply {
            receiver: 7,
            nonce,
            sealed,
        }) = parse(reply)
        else {
            panic!("not a cookie reply");
        };
        open_reply(responder, mac1, nonce, sealed)
    }

    #[test]
    fn the_cookie_proves_the_address_it_was_sent_to() {
        let (public, now) = ([5u8; 32], Instant::now());
        let mut minter = CookieMinter::new(&public, now);
        let (mac1, from) = ([1u8; MAC_LEN], SocketAddr::from(([192, 0, 2, 1], 4800)));
        let cookie = opened(&reply_to(&mut minter, &mac1, from, now), &public, &mac1).unwrap();

        let mut init = [0u8; INIT_LEN];
        assert_eq!(
            minter.check(&init, from, now),
            Err(cookie),
            "zeros are no mac2"
        );
        seal_mac2(&cookie, &mut init);
        assert_eq!(minter.check(&init, from, now), Ok(()));
        let other_port = SocketAddr::from(([192, 0, 2, 1], 4801));
        let other_host = SocketAddr::from(([192, 0, 2, 2], 4800));
        assert!(minter.check(&init, other_port, now).is_err());
        assert!(minter.check(&init, other_host, now).is_err());
        // A new secret refuses the old cookies.
        assert!(minter.check(&init, from, now + SECRET_LIFETIME).is_err());
    }

    #[test]
    fn only_the_initiator_of_that_initiation_can_read_the_reply() {
        let (public, now) = ([5u8; 32], Instant::now());
        let mut minter = CookieMinter::new(&public, now);
        let (mac1, from) = ([1u8; MAC_LEN], SocketAddr::from(([192, 0, 2, 1], 4800)));
        let reply = reply_to(&mut minter, &mac1, from, now);
        assert!(opened(&reply, &public, &mac1).is_some());
        let again = reply_to(&mut minter, &mac1, from, now);
        assert_ne!(reply[8..32], again[8..32], "a nonce was used twice");
        assert!(
            opened(&reply, &public, &[2u8; MAC_LEN]).is_none(),
            "another initiation"
        );
        assert!(
            opened(&reply, &[6u8; 32], &mac1).is_none(),
            "another responder"
        );
        let mut tampered = reply;
        tampered[COOKIE_REPLY_LEN - 1] ^= 1;
        assert!(opened(&tampered, &public, &mac1).is_none());
    }
}
