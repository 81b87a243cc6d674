//! The control protocol between the plugins (and the admin CLI) and `flatnetd`: one JSON
//! request and one JSON response per line. Every message carries the protocol version, so a
//! plugin and a daemon of different releases refuse each other clearly instead of misreading
//! each other.
//!
//! A request is for the packet thread ([`DataPlaneRequest`]) or for the lighthouse the daemon
//! holds ([`LighthouseRequest`]); the wire spells both as one object tagged by `op`. An answer
//! is a [`Reply`] or a [`Refusal`]; the wire spells both as one object with `ok`.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::status::DaemonStatus;
use crate::error::Error;
use crate::lighthouse::{Entry, NetworkId};

pub const PROTOCOL_VERSION: u32 = 1;

/// What the control socket is asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Request {
    DataPlane(DataPlaneRequest),
    Lighthouse(LighthouseRequest),
}

/// Requests the packet thread answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum DataPlaneRequest {
    /// Serve the container whose attachment record exists (the record is the source of truth).
    Attach {
        network: String,
        container_id: String,
    },
    Detach {
        network: String,
        container_id: String,
    },
    Status,
    Shutdown,
}

/// Lighthouse operations for a daemon that holds the lighthouse (etcd): the plugins do not
/// talk to etcd themselves. Answered off the packet thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum LighthouseRequest {
    NetworkId {
        network: String,
    },
    Register {
        entry: Entry,
    },
    Unregister {
        network: String,
        ip: IpAddr,
        container_id: String,
    },
    Lookup {
        network: String,
        ip: IpAddr,
    },
    /// Every entry; with a network, that network's.
    Entries {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        network: Option<String>,
    },
}

impl From<DataPlaneRequest> for Request {
    fn from(request: DataPlaneRequest) -> Self {
        Request::DataPlane(request)
    }
}

impl From<LighthouseRequest> for Request {
    fn from(request: LighthouseRequest) -> Self {
        Request::Lighthouse(request)
    }
}

/// A request that succeeded, with what it asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Done,
    Status(Box<DaemonStatus>),
    /// Lighthouse entries (a lookup: none or one).
    Entries(Vec<Entry>),
    NetworkId(NetworkId),
}

/// A request that failed: the message for people, and the reason where the caller acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
    pub failure: Option<Failure>,
}

pub type Response = std::result::Result<Reply, Refusal>;

/// Why a request failed, where the caller acts on the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Failure {
    AddressInUse {
        ip: IpAddr,
        owner: String,
    },
    /// The lighthouse cannot be reached or has no quorum: try again later.
    LighthouseUnavailable,
    /// The request cannot succeed as it is (an address outside the host's blocks).
    InvalidRequest,
    /// The operator did not grant it (a rootless user's request).
    NotPermitted,
}

impl Refusal {
    pub fn new(message: impl Into<String>) -> Self {
        Refusal {
            message: message.into(),
            failure: None,
        }
    }

    /// A core error as an answer, keeping the reasons a caller acts on.
    pub fn from_error(error: &Error) -> Self {
        let failure = match error {
            Error::AddressInUse { ip, owner } => Some(Failure::AddressInUse {
                ip: *ip,
                owner: owner.clone(),
            }),
            Error::LighthouseUnavailable(_) => Some(Failure::LighthouseUnavailable),
            Error::InvalidRequest(_) => Some(Failure::InvalidRequest),
            Error::NotPermitted(_) => Some(Failure::NotPermitted),
            _ => None,
        };
        let message = match error {
            // The variant's own text, not wrapped again on the other side.
            Error::LighthouseUnavailable(msg)
            | Error::InvalidRequest(msg)
            | Error::NotPermitted(msg) => msg.clone(),
            e => e.to_string(),
        };
        Refusal { message, failure }
    }

    /// The refusal as the core error it stands for.
    pub fn into_error(self) -> Error {
        let msg = self.message;
        match self.failure {
            Some(Failure::AddressInUse { ip, owner }) => Error::AddressInUse { ip, owner },
            Some(Failure::LighthouseUnavailable) => Error::LighthouseUnavailable(msg),
            Some(Failure::InvalidRequest) => Error::InvalidRequest(msg),
            Some(Failure::NotPermitted) => Error::NotPermitted(msg),
            None => Error::Refused(msg),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope<T> {
    v: u32,
    #[serde(flatten)]
    body: T,
}

/// An answer as either socket's wire spells it: `ok`, then a refusal's text and reason or the
/// reply's own fields (`T`: one optional field per kind of reply).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct WireAnswer<T> {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failure: Option<Failure>,
    #[serde(flatten)]
    reply: T,
}

impl<T: Default> WireAnswer<T> {
    pub(crate) fn new(answer: std::result::Result<T, &Refusal>) -> Self {
        match answer {
            Ok(reply) => WireAnswer {
                ok: true,
                error: None,
                failure: None,
                reply,
            },
            Err(refusal) => WireAnswer {
                ok: false,
                error: Some(refusal.message.clone()),
                failure: refusal.failure.clone(),
                reply: T::default(),
            },
        }
    }

    pub(crate) fn into_answer(self) -> std::result::Result<T, Refusal> {
        if self.ok {
            Ok(self.reply)
        } else {
            Err(Refusal {
                message: self.error.unwrap_or_default(),
                failure: self.failure,
            })
        }
    }
}

/// A [`Reply`] as the wire spells it: the one field it fills, none for `Done`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ReplyFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<Box<DaemonStatus>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    entries: Option<Vec<Entry>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    network_id: Option<NetworkId>,
}

impl From<&Reply> for ReplyFields {
    fn from(reply: &Reply) -> Self {
        let none = ReplyFields::default();
        match reply {
            Reply::Done => none,
            Reply::Status(status) => ReplyFields {
                status: Some(status.clone()),
                ..none
            },
            Reply::Entries(entries) => ReplyFields {
                entries: Some(entries.clone()),
                ..none
            },
            Reply::NetworkId(id) => ReplyFields {
                network_id: Some(*id),
                ..none
            },
        }
    }
}

impl From<ReplyFields> for Reply {
    fn from(wire: ReplyFields) -> Self {
        if let Some(status) = wire.status {
            Reply::Status(status)
        } else if let Some(entries) = wire.entries {
            Reply::Entries(entries)
        } else if let Some(id) = wire.network_id {
            Reply::NetworkId(id)
        } else {
            Reply::Done
        }
    }
}

/// Why a line could not be taken: another protocol version, or not a message at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    Version(u32),
    Malformed(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Version(v) => write!(
                f,
                "control protocol version {v} is not supported (this side speaks {PROTOCOL_VERSION})"
            ),
            DecodeError::Malformed(why) => write!(f, "bad message: {why}"),
        }
    }
}

pub(crate) fn encode<T: Serialize>(body: &T) -> String {
    let mut line = serde_json::to_string(&Envelope {
        v: PROTOCOL_VERSION,
        body,
    })
    .expect("control messages serialise");
    line.push('\n');
    line
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(line: &str) -> Result<T, DecodeError> {
    let envelope: Envelope<serde_json::Value> =
        serde_json::from_str(line).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if envelope.v != PROTOCOL_VERSION {
        return Err(DecodeError::Version(envelope.v));
    }
    serde_json::from_value(envelope.body).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// Encodes a request line (the daemon's side decodes it with [`decode_request`]).
pub fn encode_request(request: &Request) -> String {
    encode(request)
}

/// Decodes a request line, refusing other protocol versions.
pub fn decode_request(line: &str) -> Result<Request, DecodeError> {
    decode(line)
}

pub fn encode_response(response: &Response) -> String {
    encode(&WireAnswer::new(response.as_ref().map(ReplyFields::from)))
}

pub fn decode_response(line: &str) -> Result<Response, DecodeError> {
    let wire: WireAnswer<ReplyFields> = decode(line)?;
    Ok(wire.into_answer().map(Reply::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a plugin acts on (an address taken: try the next; etcd away: "try again") survives
    /// the trip through the socket as the same error.
    #[test]
    fn failures_cross_the_socket_as_the_errors_they_were() {
        let cases = [
            Error::AddressInUse {
                ip: "10.0.0.2".parse().unwrap(),
                owner: "c1".into(),
            },
            Error::LighthouseUnavailable("etcd did not answer".into()),
            Error::InvalidRequest("10.0.9.2 is not in this host's blocks".into()),
        ];
        for error in cases {
            let line = encode_response(&Err(Refusal::from_error(&error)));
            let back = decode_response(&line).unwrap().unwrap_err().into_error();
            assert_eq!(back.to_string(), error.to_string());
            assert_eq!(
                std::mem::discriminant(&back),
                std::mem::discriminant(&error)
            );
        }
        let entry = Entry {
            network: "n".into(),
            network_id: 9,
            ip: "10.0.0.3".parse().unwrap(),
            container_id: "c".into(),
            names: vec![],
            host: crate::lighthouse::HostInfo {
                endpoint: "192.0.2.1:4800".parse().unwrap(),
                public_key: String::new(),
            },
        };
        let register = Request::from(LighthouseRequest::Register {
            entry: entry.clone(),
        });
        let request = decode_request(&encode_request(&register)).unwrap();
        assert_eq!(request, register);
        let answer = decode_response(&encode_response(&Ok(Reply::Entries(vec![entry]))));
        assert!(matches!(answer, Ok(Ok(Reply::Entries(e))) if e.len() == 1));
    }

    #[test]
    fn requests_round_trip_and_versions_are_checked() {
        let req = Request::from(DataPlaneRequest::Attach {
            network: "n".into(),
            container_id: "c".into(),
        });
        let line = encode_request(&req);
        assert!(
            line.contains("\"v\":1") && line.contains("\"op\":\"attach\""),
            "{line}"
        );
        assert_eq!(decode_request(&line), Ok(req));
        let future = line.replace("\"v\":1", "\"v\":99");
        assert_eq!(decode_request(&future), Err(DecodeError::Version(99)));
        assert!(decode_request("{\"v\":1,\"op\":\"explode\"}").is_err());
        assert!(decode_request("not json").is_err());
        // An op of either kind lands in its own enum.
        let entries = decode_request("{\"v\":1,\"op\":\"entries\"}").unwrap();
        assert_eq!(
            entries,
            Request::Lighthouse(LighthouseRequest::Entries { network: None })
        );
        let status = decode_request("{\"v\":1,\"op\":\"status\"}").unwrap();
        assert_eq!(status, Request::DataPlane(DataPlaneRequest::Status));
        // Answers keep the wire's shape: `ok`, then the refusal's or the reply's fields.
        assert_eq!(encode_response(&Ok(Reply::Done)), "{\"v\":1,\"ok\":true}\n");
        let refused = encode_response(&Err(Refusal::new("no")));
        assert_eq!(refused, "{\"v\":1,\"ok\":false,\"error\":\"no\"}\n");
    }
}
