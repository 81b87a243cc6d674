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
const RELAY: u8 = 4;
const RELAYED: u8 = 5;
const V4: u8 = 4;
const V6: u8 = 6;
/// Id, type, a key, family, an IPv6 address and a port.
pub const MAX_CONTROL_LEN: usize = 4 + 1 + 32 + 1 + 16 + 2;
/// What comes before the datagram a [`Control::Relay`] carries: id, type, key.
pub const RELAY_HEADER_LEN: usize = 4 + 1 + 32;
/// What comes before the datagram a [`Control::Relayed`] carries: id, type.
pub const RELAYED_HEADER_LEN: usize = 4 + 1;

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
    /// "Pass the datagram that follows on to this host": to a relay, from a host that cannot
    /// reach the other directly. The datagram is sealed for the other host, not the relay.
    Relay(PublicKey),
    /// "A host passed me the datagram that follows for you": from a relay. The datagram is
    /// handled as if it had come straight from the underlay, only answered through the relay.
    Relayed,
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
            Control::Relay(to) => {
                out[4] = RELAY;
                out[5..37].copy_from_slice(to);
                RELAY_HEADER_LEN
            }
            Control::Relayed => {
                out[4] = RELAYED;
                RELAYED_HEADER_LEN
            }
        }
    }

    /// Reads a control message; `None` for an unknown type or a malformed body (a newer peer
    /// may send types this host does not know: they are ignored, not errors). The datagram
    /// that [`Control::Relay`] and [`Control::Relayed`] carry is [`carried`]'s.
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
            RELAY if rest.len() > 32 => Some(Control::Relay(rest[..32].try_into().ok()?)),
            RELAYED if !rest.is_empty() => Some(Control::Relayed),
            _ => None,
        }
    }
}

/// The datagram a relaying message carries (empty for the others).
pub fn carried(payload: &[u8], message: Control) -> &[u8] {
    match message {
        Control::Relay(_) => &payload[RELAY_HEADER_LEN..],
        Control::Relayed => &payload[RELAYED_HEADER_LEN..],
        _ => &[],
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

    #[test]
    fn relaying_messages_carry_the_datagram_behind_them_and_none_is_empty() {
        let datagram = [4u8, 0, 0, 0, 9, 9, 9];
        for message in [Control::Relay([3; 32]), Control::Relayed] {
            let mut out = vec![0u8; MAX_CONTROL_LEN];
            let header = message.encode(&mut out);
            out.truncate(header);
            assert_eq!(
                Control::decode(&out),
                None,
                "{message:?} without a datagram"
            );
            out.extend_from_slice(&datagram);
            let decoded = Control::decode(&out).unwrap();
            assert_eq!(decoded, message);
            assert_eq!(carried(&out, decoded), datagram);
        }
        assert!(carried(&[0; 8], Control::Introduce([1; 32])).is_empty());
    }
}
