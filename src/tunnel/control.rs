//! Host-to-host messages inside a session. A transport payload normally starts with a network
//! id; id 0 is never a network's (`network_id.rs`), so a payload that starts with it is a
//! control message: a type byte and its body. Being inside a session, a control message is as
//! authentic as the session's packets: nothing here is ever believed from anything else.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::PublicKey;

/// The network id that marks a control message.
const CONTROL: [u8; 4] = [0; 4];
const OBSERVED: u8 = 1;
const INTRODUCE: u8 = 2;
const KNOCK: u8 = 3;
const V4: u8 = 4;
const V6: u8 = 6;
/// Id, type, a key, family, an IPv6 address and a port.
pub const MAX_CONTROL_LEN: usize = 4 + 1 + 32 + 1 + 16 + 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// "Your datagrams reach me from this address and port": the sender's view of the
    /// receiver's underlay endpoint, which differs from the receiver's own behind a NAT.
    Observed(SocketAddr),
    /// "I cannot reach this host: if you have a tunnel with it, tell it where I am." Sent to
    /// peers the sender has sessions with, so that two hosts behind NAT write to each other
    /// at about the same time (hole punching).
    Introduce(PublicKey),
    /// "This host is trying to reach you; I see it here": an introducer's answer, sent to the
    /// host asked for. The receiver sends its initiation there at once.
    Knock { from: PublicKey, at: SocketAddr },
}

/// Whether a decrypted payload is a control message rather than a network's packet.
pub fn is_control(payload: &[u8]) -> bool {
    payload.len() > CONTROL.len() && payload[..CONTROL.len()] == CONTROL
}

impl Control {
    /// Writes the message into `out` (at least [`MAX_CONTROL_LEN`]); returns its length.
    pub fn encode(&self, out: &mut [u8]) -> usize {
        out[..4].copy_from_slice(&CONTROL);
        match self {
            Control::Observed(address) => {
                out[4] = OBSERVED;
                5 + put_endpoint(*address, &mut out[5..])
            }
            Control::Introduce(key) => {
                out[4] = INTRODUCE;
                out[5..37].copy_from_slice(key);
                37
            }
            Control::Knock { from, at } => {
                out[4] = KNOCK;
                out[5..37].copy_from_slice(from);
                37 + put_endpoint(*at, &mut out[37..])
            }
        }
    }

    /// Reads a control message; `None` for an unknown type or a malformed body (a newer peer
    /// may send types this host does not know: they are ignored, not errors).
    pub fn decode(payload: &[u8]) -> Option<Control> {
        let body = payload.strip_prefix(&CONTROL)?;
        let (&kind, rest) = body.split_first()?;
        match kind {
            OBSERVED => Some(Control::Observed(endpoint(rest)?)),
            INTRODUCE => Some(Control::Introduce(rest.try_into().ok()?)),
            KNOCK if rest.len() > 32 => Some(Control::Knock {
                from: rest[..32].try_into().ok()?,
                at: endpoint(&rest[32..])?,
            }),
            _ => None,
        }
    }
}

/// Family, address, port; returns the length written.
fn put_endpoint(address: SocketAddr, out: &mut [u8]) -> usize {
    let after_address = match address.ip() {
        IpAddr::V4(ip) => {
            out[0] = V4;
            out[1..5].copy_from_slice(&ip.octets());
            5
        }
        IpAddr::V6(ip) => {
            out[0] = V6;
            out[1..17].copy_from_slice(&ip.octets());
            17
        }
    };
    out[after_address..after_address + 2].copy_from_slice(&address.port().to_be_bytes());
    after_address + 2
}

/// An endpoint as [`put_endpoint`] writes it, filling `bytes` exactly.
fn endpoint(bytes: &[u8]) -> Option<SocketAddr> {
    let ip: IpAddr = match bytes {
        [V4, rest @ ..] if rest.len() == 4 + 2 => {
            Ipv4Addr::from(<[u8; 4]>::try_from(&rest[..4]).ok()?).into()
        }
        [V6, rest @ ..] if rest.len() == 16 + 2 => {
            Ipv6Addr::from(<[u8; 16]>::try_from(&rest[..16]).ok()?).into()
        }
        _ => return None,
    };
    let port = &bytes[bytes.len() - 2..];
    Some(SocketAddr::new(ip, u16::from_be_bytes([port[0], port[1]])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips_in_both_families() {
        for text in ["198.51.100.7:40123", "[2001:db8::7]:4800"] {
            let at: SocketAddr = text.parse().unwrap();
            for message in [
                Control::Observed(at),
                Control::Introduce([7; 32]),
                Control::Knock { from: [9; 32], at },
            ] {
                let mut out = [0u8; MAX_CONTROL_LEN];
                let len = message.encode(&mut out);
                assert!(is_control(&out[..len]));
                assert_eq!(Control::decode(&out[..len]), Some(message), "{text}");
            }
        }
    }

    #[test]
    fn network_packets_unknown_types_and_short_bodies_are_not_control_messages() {
        let mut out = [0u8; MAX_CONTROL_LEN];
        let len = Control::Observed("192.0.2.1:1".parse().unwrap()).encode(&mut out);
        // A network's packet: its id is never 0.
        let mut packet = out;
        packet[3] = 7;
        assert!(!is_control(&packet[..len]));
        assert_eq!(Control::decode(&packet[..len]), None);
        // Cut short, or of a type from a newer version.
        assert_eq!(Control::decode(&out[..len - 1]), None);
        let mut unknown = out;
        unknown[4] = 99;
        assert_eq!(Control::decode(&unknown[..len]), None);
        assert!(is_control(&unknown[..len]), "still not a network's packet");
        let knock = Control::Knock {
            from: [1; 32],
            at: "192.0.2.1:1".parse().unwrap(),
        };
        let len = knock.encode(&mut out);
        for cut in [5, 36, 37, len - 1] {
            assert_eq!(Control::decode(&out[..cut]), None, "cut at {cut}");
        }
    }
}
