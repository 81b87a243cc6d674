//! What crosses flatnetd's user socket: one JSON request line (with the container's network
//! namespace as an `SCM_RIGHTS` descriptor for an attach) and one answer line, in the control
//! protocol's versioned envelope.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::attachment::Attachment;
use crate::control::protocol::{decode, encode, DecodeError, WireAnswer};
use crate::control::status::MemberStatus;
use crate::control::Refusal;
use crate::portmap::PortMapping;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum UserRequest {
    /// The network as the caller may use it (`podman network create`).
    Network { network: String },
    /// Make the container's interface in the namespace sent with the request.
    Attach {
        network: String,
        container_id: String,
        ifname: String,
        #[serde(default)]
        static_ips: Vec<IpAddr>,
        #[serde(default)]
        names: Vec<String>,
        #[serde(default)]
        ports: Vec<PortMapping>,
    },
    Detach {
        network: String,
        container_id: String,
        ifname: String,
    },
    /// The caller's own containers.
    Status,
}

/// A network as one user sees it: its definition and the addresses they may take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantedNetwork {
    pub network: String,
    pub subnets: Vec<GrantedSubnet>,
    pub mtu: u32,
    pub internal: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantedSubnet {
    pub subnet: IpNet,
    pub gateway: IpAddr,
    /// The range the caller's Podman allocates from: their block on this host.
    pub first: IpAddr,
    pub last: IpAddr,
}

#[derive(Debug, Clone, PartialEq)]
pub enum UserReply {
    Done,
    Network(GrantedNetwork),
    Attached(Box<Attachment>),
    Containers(Vec<MemberStatus>),
}

pub type UserResponse = std::result::Result<UserReply, Refusal>;

/// A [`UserReply`] as the wire spells it: the one field it fills, none for `Done`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct UserReplyFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    network: Option<GrantedNetwork>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    attachment: Option<Box<Attachment>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    containers: Option<Vec<MemberStatus>>,
}

impl From<&UserReply> for UserReplyFields {
    fn from(reply: &UserReply) -> Self {
        let none = UserReplyFields::default();
        match reply {
            UserReply::Done => none,
            UserReply::Network(network) => UserReplyFields {
                network: Some(network.clone()),
                ..none
            },
            UserReply::Attached(attachment) => UserReplyFields {
                attachment: Some(attachment.clone()),
                ..none
            },
            UserReply::Containers(containers) => UserReplyFields {
                containers: Some(containers.clone()),
                ..none
            },
        }
    }
}

impl From<UserReplyFields> for UserReply {
    fn from(wire: UserReplyFields) -> Self {
        if let Some(network) = wire.network {
            UserReply::Network(network)
        } else if let Some(attachment) = wire.attachment {
            UserReply::Attached(attachment)
        } else if let Some(containers) = wire.containers {
            UserReply::Containers(containers)
        } else {
            UserReply::Done
        }
    }
}

pub fn encode_user_request(request: &UserRequest) -> String {
    encode(request)
}

pub fn decode_user_request(line: &str) -> Result<UserRequest, DecodeError> {
    decode(line)
}

pub fn encode_user_response(response: &UserResponse) -> String {
    encode(&WireAnswer::new(
        response.as_ref().map(UserReplyFields::from),
    ))
}

pub fn decode_user_response(line: &str) -> Result<UserResponse, DecodeError> {
    let wire: WireAnswer<UserReplyFields> = decode(line)?;
    Ok(wire.into_answer().map(UserReply::from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn requests_and_refusals_round_trip() {
        let attach = UserRequest::Attach {
            network: "team".into(),
            container_id: "c1".into(),
            ifname: "eth0".into(),
            static_ips: vec!["10.91.0.70".parse().unwrap()],
            names: vec!["web".into()],
            ports: vec![],
        };
        let line = encode_user_request(&attach);
        assert!(line.contains("\"op\":\"attach\""), "{line}");
        assert_eq!(decode_user_request(&line), Ok(attach));
        let refusal = Refusal::from_error(&Error::NotPermitted("not yours".into()));
        let back = decode_user_response(&encode_user_response(&Err(refusal))).unwrap();
        let error = back.unwrap_err().into_error();
        assert!(matches!(error, Error::NotPermitted(m) if m == "not yours"));
        let granted = GrantedNetwork {
            network: "team".into(),
            subnets: vec![GrantedSubnet {
                subnet: "10.91.0.0/24".parse().unwrap(),
                gateway: "10.91.0.1".parse().unwrap(),
                first: "10.91.0.64".parse().unwrap(),
                last: "10.91.0.127".parse().unwrap(),
            }],
            mtu: 1416,
            internal: false,
        };
        let reply = Ok(UserReply::Network(granted.clone()));
        let back = decode_user_response(&encode_user_response(&reply)).unwrap();
        assert_eq!(back, Ok(UserReply::Network(granted)));
        assert!(decode_user_request("{\"v\":1,\"op\":\"shutdown\"}").is_err());
    }
}
