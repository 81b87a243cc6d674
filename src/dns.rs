//! Name resolution on a Flatnet network: what flatnetd answers to a DNS query a container sends
//! to its gateway. Names of the network (container names and aliases, from the lighthouse) are
//! answered from the daemon's table; other single-label names do not exist; names with a dot
//! are the outside world's, forwarded to the host's resolvers (refused on an internal network).
//!
//! Messages are parsed and built with `hickory-proto`; this module decides, the data plane
//! moves packets (`dataplane::resolver`).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use hickory_proto::op::{Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};

use crate::error::Result;
use crate::state::read_if_exists;

/// Where the host's resolvers are listed.
pub const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";
/// Seconds a client may keep a Flatnet answer: short, since names leave with their container.
const TTL: u32 = 5;

/// What to do with a query.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send this reply back to the container.
    Reply(Vec<u8>),
    /// Not a Flatnet name: forward the query unchanged to an upstream resolver.
    Forward,
    /// Not a DNS query worth an answer.
    Ignore,
}

/// Answers `query` from the network's names (`lookup` gives the addresses of a lower-case name
/// without the trailing dot). `internal` networks never forward.
pub fn answer<'a>(
    query: &[u8],
    lookup: impl Fn(&str) -> Option<&'a [IpAddr]>,
    internal: bool,
) -> Verdict {
    let Ok(request) = Message::from_vec(query) else {
        return Verdict::Ignore;
    };
    if request.metadata.message_type != MessageType::Query {
        return Verdict::Ignore;
    }
    let [question] = request.queries.as_slice() else {
        return reply(&request, ResponseCode::FormErr, Vec::new());
    };
    if request.metadata.op_code != OpCode::Query {
        return reply(&request, ResponseCode::NotImp, Vec::new());
    }
    let name = question.name.to_lowercase().to_ascii();
    let name = name.trim_end_matches('.');
    if let Some(addresses) = lookup(name) {
        // A name without addresses of the asked type (or a type other than A and AAAA)
        // exists all the same: NOERROR and no records.
        let answers = addresses
            .iter()
            .filter_map(|ip| match (question.query_type, ip) {
                (RecordType::A, IpAddr::V4(v4)) => Some(RData::A(A(*v4))),
                (RecordType::AAAA, IpAddr::V6(v6)) => Some(RData::AAAA(AAAA(*v6))),
                _ => None,
            })
            .map(|rdata| Record::from_rdata(question.name.clone(), TTL, rdata))
            .collect();
        return reply(&request, ResponseCode::NoError, answers);
    }
    if !name.contains('.') {
        return reply(&request, ResponseCode::NXDomain, Vec::new());
    }
    if internal {
        return reply(&request, ResponseCode::Refused, Vec::new());
    }
    Verdict::Forward
}

/// The question section of a message with exactly one question, as bytes (name labels, type,
/// class); `None` for anything else, including a compressed name (queries never need one).
pub fn question(message: &[u8]) -> Option<&[u8]> {
    const HEADER: usize = 12;
    let count = u16::from_be_bytes([*message.get(4)?, *message.get(5)?]);
    if count != 1 {
        return None;
    }
    let mut at = HEADER;
    loop {
        let label = usize::from(*message.get(at)?);
        at += 1;
        match label {
            0 => break,
            1..=63 => at += label,
            _ => return None,
        }
    }
    let end = at + 4;
    (end <= message.len()).then(|| &message[HEADER..end])
}

/// A reply that could not be had from upstream (none configured, none answered).
pub fn server_failure(query: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    match reply(&request, ResponseCode::ServFail, Vec::new()) {
        Verdict::Reply(bytes) => Some(bytes),
        _ => None,
    }
}

fn reply(request: &Message, code: ResponseCode, answers: Vec<Record>) -> Verdict {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.authoritative = code != ResponseCode::Refused;
    metadata.recursion_available = true;
    metadata.response_code = code;
    let mut response = Message::new(metadata.id, MessageType::Response, metadata.op_code);
    response.metadata = metadata;
    response.add_queries(request.queries.iter().cloned());
    response.add_answers(answers);
    match response.to_vec() {
        Ok(bytes) => Verdict::Reply(bytes),
        Err(_) => Verdict::Ignore,
    }
}

/// The `nameserver`s of a resolv.conf, both families (flatnetd asks them from the host's
/// namespace). A missing file means none.
pub fn host_resolvers(path: &Path) -> Result<Vec<SocketAddr>> {
    let Some(bytes) = read_if_exists(path)? else {
        return Ok(Vec::new());
    };
    Ok(String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            // A link-local one needs its zone (`fe80::1%eth0`), which Rust does not parse.
            let ip = words.next()?.parse::<IpAddr>().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect())
}

/// Names as the table keeps them: lower case, no trailing dot. `None` for a name DNS cannot
/// carry (a label over 63 bytes, characters other than letters, digits, `-`, `_` and `.`).
pub fn normalise_name(name: &str) -> Option<String> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (name.len() <= 253 && name.split('.').all(label_ok)).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    use std::str::FromStr;

    use std::net::{Ipv4Addr, Ipv6Addr};

    const WEB: [IpAddr; 2] = [
        IpAddr::V4(Ipv4Addr::new(10, 77, 0, 5)),
        IpAddr::V6(Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 5)),
    ];
    const OLD: [IpAddr; 1] = [IpAddr::V4(Ipv4Addr::new(10, 77, 0, 6))];

    fn query(name: &str, kind: RecordType) -> Vec<u8> {
        let mut message = Message::query();
        message.metadata.id = 4242;
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(Name::from_str(name).unwrap(), kind));
        message.to_vec().unwrap()
    }

    fn zone(name: &str) -> Option<&'static [IpAddr]> {
        match name {
            "web" => Some(&WEB[..]),
            "old" => Some(&OLD[..]),
            _ => None,
        }
    }

    fn answered(response: &Message) -> Vec<IpAddr> {
        let data = response.answers.iter().map(|r| match &r.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
            other => panic!("{other:?}"),
        });
        data.collect()
    }

    fn parsed(verdict: Verdict) -> Message {
        match verdict {
            Verdict::Reply(bytes) => Message::from_vec(&bytes).unwrap(),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn a_flatnet_name_is_answered_with_its_address() {
        let response = parsed(answer(&query("WEB.", RecordType::A), zone, false));
        assert_eq!(response.metadata.id, 4242);
        assert_eq!(response.metadata.response_code, ResponseCode::NoError);
        assert!(response.metadata.recursion_desired);
        assert_eq!(response.queries.len(), 1);
        assert_eq!(answered(&response), WEB[..1]);
    }

    #[test]
    fn aaaa_answers_the_ipv6_address() {
        let response = parsed(answer(&query("web.", RecordType::AAAA), zone, false));
        assert_eq!(response.metadata.response_code, ResponseCode::NoError);
        assert_eq!(answered(&response), WEB[1..]);
    }

    #[test]
    fn aaaa_for_an_ipv4_only_name_is_noerror_and_empty() {
        let response = parsed(answer(&query("old.", RecordType::AAAA), zone, false));
        assert_eq!(response.metadata.response_code, ResponseCode::NoError);
        assert!(response.answers.is_empty());
    }

    #[test]
    fn an_unknown_single_label_does_not_exist() {
        let response = parsed(answer(&query("gone.", RecordType::A), zone, false));
        assert_eq!(response.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn outside_names_are_forwarded_unless_the_network_is_internal() {
        let q = query("example.test.", RecordType::A);
        assert_eq!(answer(&q, zone, false), Verdict::Forward);
        let response = parsed(answer(&q, zone, true));
        assert_eq!(response.metadata.response_code, ResponseCode::Refused);
    }

    #[test]
    fn garbage_and_responses_are_ignored() {
        assert_eq!(answer(b"\x01\x02", zone, false), Verdict::Ignore);
        let mut response = parsed(answer(&query("web.", RecordType::A), zone, false));
        response.metadata.message_type = MessageType::Response;
        let bytes = response.to_vec().unwrap();
        assert_eq!(answer(&bytes, zone, false), Verdict::Ignore);
    }

    #[test]
    fn server_failure_keeps_the_id() {
        let bytes = server_failure(&query("example.test.", RecordType::A)).unwrap();
        let response = Message::from_vec(&bytes).unwrap();
        assert_eq!(response.metadata.id, 4242);
        assert_eq!(response.metadata.response_code, ResponseCode::ServFail);
    }

    #[test]
    fn resolv_conf_gives_the_nameservers_of_both_families() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(
            &path,
            "# comment\nsearch example\nnameserver 192.0.2.53\nnameserver 2001:db8::1\nnameserver 127.0.0.53\n",
        )
        .unwrap();
        let found = host_resolvers(&path).unwrap();
        assert_eq!(
            found,
            vec![
                "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
                "[2001:db8::1]:53".parse().unwrap(),
                "127.0.0.53:53".parse().unwrap()
            ]
        );
        assert!(host_resolvers(&dir.path().join("none")).unwrap().is_empty());
    }

    #[test]
    fn names_are_normalised_or_refused() {
        assert_eq!(normalise_name("Web-1.").as_deref(), Some("web-1"));
        assert_eq!(
            normalise_name("db.internal").as_deref(),
            Some("db.internal")
        );
        assert_eq!(normalise_name("bad name"), None);
        assert_eq!(normalise_name(""), None);
        assert_eq!(normalise_name(&"x".repeat(64)), None);
    }
}
