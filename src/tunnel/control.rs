//! Host-to-host messages inside a session. A transport payload normally starts with a network
//! id; id 0 is never a network's (`network_id.rs`), so a payload that starts with it is a
//! control message: a type byte and its body. Being inside a session, a control message is as
//! authentic as the session's packets: nothing here is ever believed from anything else.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The network id that marks a control message.
const CONTROL: [u8; 4] = [0; 4];
const OBSERVED: u8 = 1;
const V4: u8 = 4;
const V6: u8 = 6;
/// Id, type, family, an IPv6 address and a port.
pub const MAX_CONTROL_LEN: usize = 4 + 1 + 1 + 16 + 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// "Your datagrams reach me from this address and port": the sender's view of the
    /// receiver's underlay endpoint, which differs from the receiver's own behind a NAT.
    Observed(SocketAddr),
}

/// Whether a decrypted payload is a control message rather than a network's packet.
pub fn is_control(payload: &[u8]) -> bool {
    payload.len() > CONTROL.len() && payload[..CONTROL.len()] == CONTROL
}

impl Control {
    /// Writes the message into `out` (at least [`MAX_CONTROL_LEN`]); returns its length.
    pub fn encode(&self, out: &mut [u8]) -> usize {
        let Control::Observed(address) = self;
        out[..4].copy_from_slice(&CONTROL);
        out[4] = OBSERVED;
        let after_address = match address.ip() {
            IpAddr::V4(ip) => {
                out[5] = V4;
                out[6..10].copy_from_slice(&ip.octets());
                10
            }
            IpAddr::V6(ip) => {
                out[5] = V6;
                out[6..22].copy_from_slice(&ip.octets());
                22
            }
        };
        out[after_address..after_address + 2].copy_from_slice(&address.port().to_be_bytes());
        after_address + 2
    }

    /// Reads a control message; `None` for an unknown type or a malformed body (a newer peer
    /// may send types this host does not know: they are ignored, not errors).
    pub fn decode(payload: &[u8]) -> Option<Control> {
        let body = payload.strip_prefix(&CONTROL)?;
        match body {
            [OBSERVED, V4, rest @ ..] if rest.len() == 4 + 2 => {
                let ip: [u8; 4] = rest[..4].try_into().ok()?;
                Some(Control::Observed(SocketAddr::new(
                    Ipv4Addr::from(ip).into(),
                    port(&rest[4..]),
                )))
            }
            [OBSERVED, V6, rest @ ..] if rest.len() == 16 + 2 => {
                let ip: [u8; 16] = rest[..16].try_into().ok()?;
                Some(Control::Observed(SocketAddr::new(
                    Ipv6Addr::from(ip).into(),
                    port(&rest[16..]),
                )))
            }
            _ => None,
        }
    }
}

fn port(bytes: &[u8]) -> u16 {
    u16::from_be_bytes([bytes[0], bytes[1]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observed_addresses_round_trip_in_both_families() {
        for text in ["198.51.100.7:40123", "[2001:db8::7]:4800"] {
            let message = Control::Observed(text.parse().unwrap());
            let mut out = [0u8; MAX_CONTROL_LEN];
            let len = message.encode(&mut out);
            assert!(is_control(&out[..len]));
            assert_eq!(Control::decode(&out[..len]), Some(message), "{text}");
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
    }
}
