//! The plugins' and the CLI's end of the control socket: one request, one answer.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::protocol::{
    decode_response, encode_request, DataPlaneRequest, DecodeError, Reply, Request, Response,
};
use super::status::DaemonStatus;
use crate::error::{Error, IoContext, Result};
use crate::state::StateDir;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one request to the daemon of `state_dir` and waits for its answer, refusal or reply.
pub fn request(state_dir: &StateDir, request: &Request) -> Result<Response> {
    let path = state_dir.control_socket();
    let mut stream = UnixStream::connect(&path)
        .context(|| format!("connecting to flatnetd at {}", path.display()))?;
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(REQUEST_TIMEOUT)))
        .and_then(|()| stream.write_all(encode_request(request).as_bytes()))
        .context(|| "sending to flatnetd")?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .context(|| "reading flatnetd's answer")?;
    decode_response(&line).map_err(|e| match e {
        DecodeError::Version(v) => Error::InvalidConfig(format!(
            "flatnetd speaks control protocol {v}, this plugin {}: upgrade both together",
            super::PROTOCOL_VERSION
        )),
        // A daemon killed mid-answer leaves an empty or cut line: an I/O failure, which
        // `launch` takes for a dying daemon to wait out and replace.
        DecodeError::Malformed(why) => Error::io(
            "flatnetd's answer",
            std::io::Error::other(format!("{why}: {line:?}")),
        ),
    })
}

/// Sends a request and turns a refusal into the error it stands for.
pub fn call(state_dir: &StateDir, req: impl Into<Request>) -> Result<Reply> {
    request(state_dir, &req.into())?.map_err(|refusal| refusal.into_error())
}

/// The running daemon's status.
pub fn status(state_dir: &StateDir) -> Result<DaemonStatus> {
    match call(state_dir, DataPlaneRequest::Status)? {
        Reply::Status(status) => Ok(*status),
        other => Err(Error::Protocol(format!(
            "flatnetd answered a status request with {other:?}"
        ))),
    }
}

/// Is a daemon answering on this state directory's socket?
pub fn is_running(state_dir: &StateDir) -> bool {
    UnixStream::connect(state_dir.control_socket()).is_ok()
}
