//! The plugins' end of the user socket, for rootless Podman: they cannot make devices or
//! touch Flatnet's state, so they ask the host's flatnetd, passing the container's network
//! namespace as a descriptor (a path would name nothing in the daemon's mount namespace:
//! rootless Podman keeps its namespaces in a mount namespace of its own).

use std::fs::File;
use std::io::{BufRead, BufReader, IoSlice, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

use super::protocol::{
    decode_user_response, encode_user_request, GrantedNetwork, UserReply, UserRequest,
};
use crate::attachment::Attachment;
use crate::control::status::MemberStatus;
use crate::error::{Error, IoContext, Result};

/// Outside /run: rootless Podman runs plugins with a /run of its own, where the host's is
/// not seen.
pub const DEFAULT_USER_SOCKET: &str = "/var/lib/flatnet/user.sock";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether this process acts for a rootless user: not root, or root of a user namespace
/// other than the host's (rootless Podman runs its plugins so).
pub fn is_rootless() -> bool {
    if !nix::unistd::geteuid().is_root() {
        return true;
    }
    std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|map| !is_host_uid_map(&map))
}

/// The host's user namespace maps every uid to itself.
fn is_host_uid_map(map: &str) -> bool {
    map.split_whitespace().eq(["0", "0", "4294967295"])
}

pub struct UserSocket {
    path: PathBuf,
}

impl UserSocket {
    pub fn new(path: Option<&Path>) -> Self {
        UserSocket {
            path: path.map_or_else(|| PathBuf::from(DEFAULT_USER_SOCKET), Path::to_path_buf),
        }
    }

    pub fn network(&self, network: &str) -> Result<GrantedNetwork> {
        let request = UserRequest::Network {
            network: network.to_string(),
        };
        match self.ask(&request, None)? {
            UserReply::Network(granted) => Ok(granted),
            other => Err(unexpected(other)),
        }
    }

    /// `request` is an attach; `netns` the container's namespace.
    pub fn attach(&self, request: &UserRequest, netns: &File) -> Result<Attachment> {
        match self.ask(request, Some(netns))? {
            UserReply::Attached(attachment) => Ok(*attachment),
            other => Err(unexpected(other)),
        }
    }

    pub fn detach(&self, network: &str, container_id: &str, ifname: &str) -> Result<()> {
        let request = UserRequest::Detach {
            network: network.to_string(),
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
        };
        self.ask(&request, None).map(drop)
    }

    /// The caller's own containers as the daemon serves them.
    pub fn containers(&self) -> Result<Vec<MemberStatus>> {
        match self.ask(&UserRequest::Status, None)? {
            UserReply::Containers(containers) => Ok(containers),
            other => Err(unexpected(other)),
        }
    }

    fn ask(&self, request: &UserRequest, netns: Option<&File>) -> Result<UserReply> {
        let path = &self.path;
        let stream = UnixStream::connect(path).context(|| {
            let hidden = path.parent().is_some_and(|dir| !dir.exists());
            let why = if hidden {
                "its folder is not seen here: under Podman 4's rootless CNI, /var/lib/cni must \
                 exist on the host, or Podman hides /var/lib from plugins"
            } else {
                "is flatnetd running with --user-socket?"
            };
            format!(
                "connecting to flatnetd's user socket {} ({why})",
                path.display()
            )
        })?;
        stream
            .set_read_timeout(Some(REQUEST_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(REQUEST_TIMEOUT)))
            .context(|| "setting the user socket's timeouts")?;
        send_line(&stream, &encode_user_request(request), netns)?;
        let mut line = String::new();
        BufReader::new(&stream)
            .read_line(&mut line)
            .context(|| "reading flatnetd's answer")?;
        let response = decode_user_response(&line).map_err(|e| Error::Protocol(e.to_string()))?;
        response.map_err(|refusal| refusal.into_error())
    }
}

/// The request line, with the namespace's descriptor riding on its first bytes.
fn send_line(mut stream: &UnixStream, line: &str, fd: Option<&File>) -> Result<()> {
    let Some(file) = fd else {
        return stream
            .write_all(line.as_bytes())
            .context(|| "sending to flatnetd");
    };
    let fds = [file.as_raw_fd()];
    let rights = [ControlMessage::ScmRights(&fds)];
    let bytes = line.as_bytes();
    let sent = sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(bytes)],
        &rights,
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| Error::io("sending to flatnetd", e.into()))?;
    stream
        .write_all(&bytes[sent..])
        .context(|| "sending to flatnetd")
}

fn unexpected(reply: UserReply) -> Error {
    Error::Protocol(format!("flatnetd answered with {reply:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_identity_map_is_the_host_s() {
        assert!(is_host_uid_map("         0          0 4294967295\n"));
        assert!(!is_host_uid_map(
            "         0       2001          1\n         1     100000      65536\n"
        ));
        assert!(!is_host_uid_map("0 0 1000\n"));
    }
}
