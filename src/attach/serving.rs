//! Talking to the host's data plane (flatnetd) about the containers it serves.

use super::Network;
use crate::control::{self, DaemonConfig, DataPlaneRequest};
use crate::error::Result;

impl Network {
    /// What this network needs of its host's daemon; its knobs stay the operator's.
    pub(super) fn daemon_settings(&self) -> DaemonConfig {
        DaemonConfig {
            state_dir: self.config.state_dir.clone(),
            lighthouse: self.config.lighthouse.clone(),
            listen: self.config.endpoint,
            tuning: Default::default(),
        }
    }

    /// Tells the data plane to serve the container (it reads the record just written).
    pub(super) fn start_serving(&self, container_id: &str) -> Result<()> {
        let request = DataPlaneRequest::Attach {
            network: self.config.network.clone(),
            container_id: container_id.to_string(),
        };
        control::call(&self.config.state_dir, request).map(drop)
    }

    /// Tells a running data plane to let go of the container's queue. No daemon, nothing to
    /// let go of; an unreachable one will find the device gone on its own.
    pub(super) fn stop_serving(&self, container_id: &str) {
        if !control::is_running(&self.config.state_dir) {
            return;
        }
        let request = DataPlaneRequest::Detach {
            network: self.config.network.clone(),
            container_id: container_id.to_string(),
        };
        if let Err(e) = control::call(&self.config.state_dir, request) {
            tracing::warn!("flatnetd did not detach {container_id}: {e}");
        }
    }

    /// Does the data plane hold the container's queue?
    pub(super) fn is_served(&self, container_id: &str) -> Result<bool> {
        if !control::is_running(&self.config.state_dir) {
            return Ok(false);
        }
        let status = control::status(&self.config.state_dir)?;
        Ok(status.serves(&self.config.network, container_id))
    }
}
