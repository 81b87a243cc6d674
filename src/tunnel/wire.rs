//! Datagram formats on the underlay. Every message starts with a type byte and three zero
//! bytes; indices are the receiver's own session numbers, so a datagram is matched to its
//! session without trying keys.
//!
//! ```text
//! init      1 0 0 0 | sender u32 | Noise IK message 1 (e, s, timestamp) | mac1 | mac2 = 144 bytes
//! response  2 0 0 0 | sender u32 | receiver u32 | Noise IK message 2 (e) | mac1    =  92 bytes
//! cookie    3 0 0 0 | receiver u32 | nonce 24 | AEAD(cookie 16)              =  64 bytes
//! transport 4 0 0 0 | receiver u32 | counter u64 | AEAD(network id u32 + IP packet)
//! ```
//!
//! `mac1` is a MAC over the bytes before it, keyed by the receiver's public key; `mac2` one over
//! the bytes before it keyed by a cookie, or zeros without one ([`super::mac`],
//! [`super::cookie`]). A response needs no cookie: it is matched to an initiation in flight by
//! a random index before any work is done for it.

pub const MSG_INIT: u8 = 1;
pub const MSG_RESPONSE: u8 = 2;
pub const MSG_COOKIE: u8 = 3;
pub const MSG_TRANSPORT: u8 = 4;

pub const DH_LEN: usize = 32;
pub const AEAD_TAG_LEN: usize = 16;
pub const TIMESTAMP_LEN: usize = 8;
pub use super::mac::MAC_LEN;
pub const INIT_NOISE_LEN: usize = DH_LEN + (DH_LEN + AEAD_TAG_LEN) + (TIMESTAMP_LEN + AEAD_TAG_LEN);
pub const RESPONSE_NOISE_LEN: usize = DH_LEN + AEAD_TAG_LEN;
pub const INIT_HEADER_LEN: usize = 8;
pub const RESPONSE_HEADER_LEN: usize = 12;
pub const TRANSPORT_HEADER_LEN: usize = 16;
pub const INIT_LEN: usize = INIT_HEADER_LEN + INIT_NOISE_LEN + 2 * MAC_LEN;
/// An initiation up to and including mac1: what mac1 covers, followed by it.
pub const INIT_MAC1_END: usize = INIT_LEN - MAC_LEN;
pub const RESPONSE_LEN: usize = RESPONSE_HEADER_LEN + RESPONSE_NOISE_LEN + MAC_LEN;
pub const COOKIE_NONCE_LEN: usize = 24;
pub const COOKIE_LEN: usize = 16;
pub const COOKIE_REPLY_LEN: usize = 8 + COOKIE_NONCE_LEN + COOKIE_LEN + AEAD_TAG_LEN;
/// The largest datagram Flatnet sends or accepts.
pub const MAX_DATAGRAM: usize = 65535;

#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    Init {
        sender: u32,
        noise: &'a [u8],
    },
    CookieReply {
        receiver: u32,
        nonce: &'a [u8],
        sealed: &'a [u8],
    },
    Response {
        sender: u32,
        receiver: u32,
        noise: &'a [u8],
    },
    Transport {
        receiver: u32,
        counter: u64,
        ciphertext: &'a [u8],
    },
}

/// Parses a datagram's framing; `None` for anything malformed (wrong type, size, reserved bits).
pub fn parse(buf: &[u8]) -> Option<Message<'_>> {
    if buf.len() < 4 || buf[1..4] != [0, 0, 0] {
        return None;
    }
    let u32_at = |at: usize| u32::from_le_bytes(buf[at..at + 4].try_into().unwrap());
    match buf[0] {
        MSG_INIT if buf.len() == INIT_LEN => Some(Message::Init {
            sender: u32_at(4),
            noise: &buf[INIT_HEADER_LEN..INIT_MAC1_END - MAC_LEN],
        }),
        MSG_COOKIE if buf.len() == COOKIE_REPLY_LEN => Some(Message::CookieReply {
            receiver: u32_at(4),
            nonce: &buf[8..8 + COOKIE_NONCE_LEN],
            sealed: &buf[8 + COOKIE_NONCE_LEN..],
        }),
        MSG_RESPONSE if buf.len() == RESPONSE_LEN => Some(Message::Response {
            sender: u32_at(4),
            receiver: u32_at(8),
            noise: &buf[RESPONSE_HEADER_LEN..RESPONSE_LEN - MAC_LEN],
        }),
        MSG_TRANSPORT if buf.len() >= TRANSPORT_HEADER_LEN + AEAD_TAG_LEN => {
            Some(Message::Transport {
                receiver: u32_at(4),
                counter: u64::from_le_bytes(buf[8..16].try_into().unwrap()),
                ciphertext: &buf[TRANSPORT_HEADER_LEN..],
            })
        }
        _ => None,
    }
}

pub fn write_init_header(buf: &mut [u8], sender: u32) {
    buf[..4].copy_from_slice(&[MSG_INIT, 0, 0, 0]);
    buf[4..8].copy_from_slice(&sender.to_le_bytes());
}

pub fn write_cookie_header(buf: &mut [u8], receiver: u32) {
    buf[..4].copy_from_slice(&[MSG_COOKIE, 0, 0, 0]);
    buf[4..8].copy_from_slice(&receiver.to_le_bytes());
}

/// The mac1 of an initiation (the cookie reply to it is bound to it).
pub fn init_mac1(init: &[u8]) -> [u8; MAC_LEN] {
    init[INIT_MAC1_END - MAC_LEN..INIT_MAC1_END]
        .try_into()
        .expect("an initiation's length")
}

pub fn write_response_header(buf: &mut [u8], sender: u32, receiver: u32) {
    buf[..4].copy_from_slice(&[MSG_RESPONSE, 0, 0, 0]);
    buf[4..8].copy_from_slice(&sender.to_le_bytes());
    buf[8..12].copy_from_slice(&receiver.to_le_bytes());
}

pub fn write_transport_header(buf: &mut [u8], receiver: u32, counter: u64) {
    buf[..4].copy_from_slice(&[MSG_TRANSPORT, 0, 0, 0]);
    buf[4..8].copy_from_slice(&receiver.to_le_bytes());
    buf[8..16].copy_from_slice(&counter.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_round_trips_and_rejects_garbage() {
        let mut buf = [0u8; INIT_LEN];
        write_init_header(&mut buf, 7);
        assert!(matches!(parse(&buf), Some(Message::Init { sender: 7, .. })));
        assert_eq!(parse(&buf[..INIT_LEN - 1]), None);
        buf[2] = 1;
        assert_eq!(parse(&buf), None);

        let mut t = [0u8; TRANSPORT_HEADER_LEN + AEAD_TAG_LEN];
        write_transport_header(&mut t, 9, 42);
        assert!(matches!(
            parse(&t),
            Some(Message::Transport {
                receiver: 9,
                counter: 42,
                ..
            })
        ));
        assert_eq!(parse(&t[..TRANSPORT_HEADER_LEN]), None);
        let mut c = [0u8; COOKIE_REPLY_LEN];
        write_cookie_header(&mut c, 5);
        assert!(matches!(
            parse(&c),
            Some(Message::CookieReply { receiver: 5, .. })
        ));
        assert_eq!(parse(&c[..COOKIE_REPLY_LEN - 1]), None);
        assert_eq!(parse(&[3, 0, 0, 0, 1, 2, 3, 4]), None);
        assert_eq!(parse(&[]), None);
    }
}
