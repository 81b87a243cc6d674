//! Cleaning up after crashes: records whose namespace is gone, leases no record holds, the
//! temporary files of killed writers, and a runtime's garbage collection.

use super::{AttachRequest, Network};
use crate::attachment;
use crate::error::{Error, Result};
use crate::host_member;
use crate::netns::NetworkNamespace;

impl Network {
    /// Cleans what attaches and detaches that were killed half-way left, when the runtime will
    /// not ask again (netavark has no GC): records whose namespace is gone, and leases with no
    /// record. Called with the members lock held, under which every attach and detach runs
    /// from start to end, so a lease without a record cannot be one being made right now.
    pub(super) fn collect_orphans(&self) {
        if let Err(e) = self.try_collect_orphans() {
            tracing::warn!("cleaning after killed plugins: {e}");
        }
    }

    pub(super) fn try_collect_orphans(&self) -> Result<()> {
        let mut recorded = Vec::new();
        for record in self.attachments()? {
            if NetworkNamespace::open_recorded(&record.netns, record.netns_id).is_ok() {
                recorded.push(record.container_id);
            } else {
                tracing::info!("{} is gone: detaching it", record.container_id);
                self.detach_locked(&record.container_id, None, &record.ifname)?;
            }
        }
        let member = host_member::member_id(&self.config);
        for ipam in &self.ipams {
            for (ip, lease) in ipam.leases()? {
                let id = lease.container_id;
                if id != member && !recorded.contains(&id) {
                    tracing::info!(
                        "releasing {ip}, leased to {id} by an attach that did not finish"
                    );
                    ipam.release_exact(&id, ip)?;
                    self.lighthouse.unregister(&self.config.network, ip, &id)?;
                }
            }
        }
        Ok(())
    }

    /// Removes what writers killed half-way left (their temporary files); called with the
    /// members lock held, under which records and host members are written.
    pub(super) fn remove_stale_temps(&self) {
        let dirs = self.config.dirs();
        let state_dir = self.config.state_dir.path().to_path_buf();
        for dir in [dirs.attachments(), dirs.root.clone(), state_dir] {
            if let Err(e) = crate::state::remove_stale_temps(&dir) {
                tracing::warn!("cleaning {}: {e}", dir.display());
            }
        }
    }

    /// Detaches every container not in `keep` and frees leases nobody records: what a runtime's
    /// garbage collection (CNI GC) asks for after crashes. Returns how many were cleaned.
    /// One stale container that cannot be cleaned does not stop the others: every one is
    /// tried, and the first failure is reported.
    pub fn collect_garbage(&self, keep: &[&str]) -> Result<usize> {
        {
            let _members = self.lock_members()?;
            self.remove_stale_temps();
        }
        let mut cleaned = 0;
        let mut first_error = None;
        let mut clean = |id: &str, ifname: &str| match self.detach(id, None, ifname) {
            Ok(()) => cleaned += 1,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        };
        for record in self.attachments()? {
            if !keep.contains(&record.container_id.as_str()) {
                clean(&record.container_id, &record.ifname);
            }
        }
        let member = host_member::member_id(&self.config);
        for ipam in &self.ipams {
            for (_, lease) in ipam.leases()? {
                let id = lease.container_id.as_str();
                if !keep.contains(&id) && id != member {
                    clean(id, &lease.ifname);
                }
            }
        }
        first_error.map_or(Ok(cleaned), Err)
    }

    /// A record left by a container whose namespace is gone (a crash, a reboot of the runtime)
    /// must not block the new attach; one in the same live namespace means a double ADD. A
    /// path that names another namespace now is a stale record too.
    pub(super) fn clear_stale_record(&self, req: &AttachRequest) -> Result<()> {
        let Some(record) = attachment::load(&self.config.dirs(), req.container_id)? else {
            return Ok(());
        };
        let recorded_alive =
            NetworkNamespace::open_recorded(&record.netns, record.netns_id).is_ok();
        if record.netns == req.netns && recorded_alive {
            return Err(Error::AlreadyAttached {
                container_id: req.container_id.to_string(),
                network: self.config.network.clone(),
            });
        }
        self.detach_locked(req.container_id, None, &record.ifname)
    }
}
