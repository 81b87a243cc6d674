//! The daemon's end of the control socket: a thread that accepts connections, decodes one
//! request each, hands it to the data-plane thread and writes back the answer.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::eventfd::EventFd;

use super::Command;
use crate::control::{decode_request, encode_response, socket_path, Request, Response};
use crate::error::{IoContext, Result};

const MAX_REQUEST: u64 = 64 * 1024;

/// Binds the socket, root-only. A leftover socket file is stale: the daemon lock is ours.
pub fn bind(state_dir: &Path) -> Result<UnixListener> {
    let path = socket_path(state_dir);
    let _ = fs::remove_file(&path);
    let listener = UnixListener::bind(&path).context(|| format!("binding {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
        .context(|| format!("restricting {}", path.display()))?;
    Ok(listener)
}

/// Serves requests until one asks for shutdown; join the handle to know its answer was sent.
pub fn spawn(
    listener: UnixListener,
    commands: SyncSender<Command>,
    wake: Arc<EventFd>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if serve(stream, &commands, &wake) == Served::Shutdown {
                    return;
                }
            }
        })
        .expect("spawning the control thread")
}

#[derive(PartialEq)]
enum Served {
    Request,
    Shutdown,
}

fn serve(stream: UnixStream, commands: &SyncSender<Command>, wake: &EventFd) -> Served {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    let Ok(mut writer) = stream.try_clone() else {
        return Served::Request;
    };
    let mut reader = BufReader::new(stream).take(MAX_REQUEST);
    if reader.read_line(&mut line).is_err() {
        return Served::Request;
    }
    let mut served = Served::Request;
    let response = match decode_request(&line) {
        Ok(request) => {
            if request == Request::Shutdown {
                served = Served::Shutdown;
            }
            ask(commands, wake, request)
                .unwrap_or_else(|| Response::error("the data plane stopped"))
        }
        Err(msg) => Response::error(msg),
    };
    let _ = writer.write_all(encode_response(&response).as_bytes());
    served
}

/// Hands a request to the packet thread and waits for its answer; `None` once it has stopped.
/// Both the control socket and the metrics endpoint ask this way.
pub(super) fn ask(
    commands: &SyncSender<Command>,
    wake: &EventFd,
    request: Request,
) -> Option<Response> {
    let (reply_tx, reply_rx) = std::sync::mpsc::sync_channel(1);
    commands.send((request, reply_tx)).ok()?;
    let _ = wake.write(1);
    reply_rx.recv().ok()
}
