//! The state directory's layout as types: each file `docs/state.md` describes has one method
//! here, so no other module joins a state file's name by hand.
//!
//! ```text
//! <state_dir>/
//!   lighthouse.json, lighthouse.json.lock    the file lighthouse (its default place)
//!   host.key, host.pub                       this host's key pair and its public half
//!   flatnetd.sock, flatnetd.json             control socket; the daemon's saved settings
//!   flatnetd.lock, flatnetd.start.lock       the running daemon; plugins starting one
//!   flatnetd.log, etcd-lease                 a started daemon's log; its etcd lease id
//!   members.lock                             serialises attach and detach
//!   networks/<network>/
//!     host.json, lock                        the host member; IPAM and record changes
//!     leases/<ip>, leases/last_reserved_ip
//!     attachments/<container_id>.json
//! ```

use std::ffi::OsStr;
use std::fmt;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A Flatnet state directory (`stateDir`, `--state-dir`): one daemon, its key, its networks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StateDir(PathBuf);

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir(root.into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Where the file lighthouse lives unless a network names another path.
    pub fn default_lighthouse(&self) -> PathBuf {
        self.file("lighthouse.json")
    }

    /// This host's X25519 key pair (0600).
    pub fn host_key(&self) -> PathBuf {
        self.file("host.key")
    }

    /// The public half of [`Self::host_key`], which attaches publish.
    pub fn host_pub(&self) -> PathBuf {
        self.file("host.pub")
    }

    /// The daemon's root-only control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.file("flatnetd.sock")
    }

    /// The settings the daemon last ran with.
    pub fn daemon_settings(&self) -> PathBuf {
        self.file("flatnetd.json")
    }

    /// Held by the running daemon: one per state directory.
    pub fn daemon_lock(&self) -> PathBuf {
        self.file("flatnetd.lock")
    }

    /// Serialises plugins that would start the daemon at once.
    pub fn start_lock(&self) -> PathBuf {
        self.file("flatnetd.start.lock")
    }

    /// The log of a daemon a plugin started.
    pub fn daemon_log(&self) -> PathBuf {
        self.file("flatnetd.log")
    }

    /// With etcd: the id of this host's lease, taken back by a restarted daemon.
    pub fn etcd_lease(&self) -> PathBuf {
        self.file("etcd-lease")
    }

    /// The newest initiation timestamp accepted from each peer: replays stay stale across a
    /// restart of the daemon.
    pub fn init_timestamps(&self) -> PathBuf {
        self.file("init-timestamps.json")
    }

    /// Serialises attach and detach (host members, host ports).
    pub fn members_lock(&self) -> PathBuf {
        self.file("members.lock")
    }

    /// Rootless containers' network namespaces, bind-mounted by flatnetd (which got them as
    /// descriptors): `user-netns/<uid>/<container id>`.
    pub fn user_netns(&self) -> PathBuf {
        self.file("user-netns")
    }

    /// The parent of every network's state.
    pub fn networks(&self) -> PathBuf {
        self.file("networks")
    }

    pub fn network(&self, name: &str) -> NetworkDirs {
        NetworkDirs {
            root: self.networks().join(name),
        }
    }
}

/// Read-only access to the path for the standard library's file functions.
impl Deref for StateDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for StateDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<OsStr> for StateDir {
    fn as_ref(&self) -> &OsStr {
        self.0.as_os_str()
    }
}

impl From<&Path> for StateDir {
    fn from(path: &Path) -> Self {
        StateDir(path.to_path_buf())
    }
}

impl From<PathBuf> for StateDir {
    fn from(path: PathBuf) -> Self {
        StateDir(path)
    }
}

impl fmt::Display for StateDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.display().fmt(f)
    }
}

/// One network's state below the state directory.
#[derive(Debug, Clone)]
pub struct NetworkDirs {
    pub root: PathBuf,
}

impl NetworkDirs {
    /// Serialises IPAM and attachment-record changes of the network.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("lock")
    }

    /// One file per reserved address, and `last_reserved_ip`.
    pub fn leases(&self) -> PathBuf {
        self.root.join("leases")
    }

    pub fn attachments(&self) -> PathBuf {
        self.root.join("attachments")
    }

    /// The attachment record of one container.
    pub fn attachment(&self, container_id: &str) -> PathBuf {
        self.attachments().join(format!("{container_id}.json"))
    }

    /// The network's host member on this host, while it has one.
    pub fn host_member(&self) -> PathBuf {
        self.root.join("host.json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout `docs/state.md` documents, as the types name it.
    #[test]
    fn every_state_file_sits_where_the_layout_says() {
        let dir = StateDir::new("/run/flatnet");
        let names = [
            dir.default_lighthouse(),
            dir.host_key(),
            dir.host_pub(),
            dir.control_socket(),
            dir.daemon_settings(),
            dir.daemon_lock(),
            dir.start_lock(),
            dir.daemon_log(),
            dir.etcd_lease(),
            dir.members_lock(),
        ];
        let names: Vec<_> = names.iter().map(|p| p.to_str().unwrap()).collect();
        let doc = include_str!("../../docs/state.md");
        for name in &names {
            let file = name.strip_prefix("/run/flatnet/").unwrap();
            assert!(doc.contains(file), "docs/state.md does not describe {file}");
        }
        let net = dir.network("n1");
        assert_eq!(
            net.attachment("c1"),
            Path::new("/run/flatnet/networks/n1/attachments/c1.json")
        );
        assert_eq!(
            net.host_member(),
            Path::new("/run/flatnet/networks/n1/host.json")
        );
        assert_eq!(net.leases(), Path::new("/run/flatnet/networks/n1/leases"));
    }
}
