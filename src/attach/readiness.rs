//! Could an attach go ahead? What a runtime's readiness probe (CNI STATUS) asks; it changes
//! nothing.

use std::fs;
use std::path::Path;

use super::Network;
use crate::control;
use crate::error::{Error, IoContext, Result};
use crate::lighthouse::LighthouseSettings;
use crate::tunnel::StaticKeys;

impl Network {
    /// Could an attach go ahead? The state directory (or where it would be made) must be
    /// writable. Changes nothing, so a readiness probe never leaves state behind.
    pub fn readiness(&self) -> Result<()> {
        let dir = &self.config.state_dir;
        let existing = dir
            .ancestors()
            .find(|d| d.exists())
            .unwrap_or(Path::new("/"));
        if !existing.is_dir() {
            return Err(Error::InvalidConfig(format!(
                "state directory {}: {} is not a directory",
                dir.display(),
                existing.display()
            )));
        }
        nix::unistd::access(existing, nix::unistd::AccessFlags::W_OK).map_err(|e| {
            Error::io(
                format!(
                    "state directory {}: {} is not writable",
                    dir.display(),
                    existing.display()
                ),
                e.into(),
            )
        })?;
        if self.config.dirs().leases().exists() {
            for ipam in &self.ipams {
                ipam.leases()?;
            }
        }
        self.data_plane_readiness()
    }

    /// What an attach needs of this host besides its state: a daemon binary to start, TUN
    /// devices, a readable lighthouse and, once there is one, a usable host key.
    pub(super) fn data_plane_readiness(&self) -> Result<()> {
        let binary = control::daemon_binary()?;
        if binary.is_absolute() && !binary.is_file() {
            return Err(Error::DaemonUnavailable(format!(
                "{} is missing",
                binary.display()
            )));
        }
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .context(|| "opening /dev/net/tun")?;
        self.lighthouse_readiness()?;
        StaticKeys::load(&self.config.state_dir.host_key())?;
        Ok(())
    }

    /// A file lighthouse must be readable once it exists. An etcd one is the daemon's: its
    /// TLS files must be readable, and a running daemon must be following it.
    pub(super) fn lighthouse_readiness(&self) -> Result<()> {
        match &self.config.lighthouse {
            LighthouseSettings::File(path) => {
                if path.exists() {
                    self.lighthouse.all_entries()?;
                }
            }
            LighthouseSettings::Etcd(etcd) => {
                for file in [&etcd.ca_file, &etcd.cert_file, &etcd.key_file] {
                    fs::File::open(file).context(|| format!("opening {}", file.display()))?;
                }
                if control::is_running(&self.config.state_dir) {
                    let state = control::status(&self.config.state_dir)?.lighthouse_state;
                    if !state.healthy {
                        return Err(Error::LighthouseUnavailable(format!(
                            "flatnetd cannot follow etcd: {}",
                            state.error.as_deref().unwrap_or("not following yet")
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether containers attached here are without a data plane right now (none runs): what
    /// makes a failed readiness worse for those already running.
    pub fn containers_cut_off(&self) -> bool {
        self.has_attachments().unwrap_or(false) && !control::is_running(&self.config.state_dir)
    }
}
