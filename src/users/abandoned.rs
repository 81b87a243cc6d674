//! Rootless containers that nobody will take away. A rootful container's record names
//! Podman's namespace file, which goes with the container, and the next attach collects it
//! once it is gone; a rootless one's names flatnetd's own pin, which keeps the namespace alive
//! after every process in it has ended (a runtime killed between setup and teardown, or a
//! teardown that failed and was never tried again). Those are found here: a user's records
//! whose namespace no process is in, written longer ago than a grace that covers the moment
//! between the attach and the container's first process.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime};

use crate::attachment::{self, Attachment};
use crate::error::Result;
use crate::netns::NetnsId;
use crate::state::StateDir;

/// The rootless containers whose namespace no process has been in since `grace` after their
/// attach.
pub fn find(state: &StateDir, grace: Duration) -> Result<Vec<Attachment>> {
    let in_use = namespaces_in_use();
    let now = SystemTime::now();
    let written_before_grace = |record: &Attachment| {
        let file = state
            .network(&record.network)
            .attachment(&record.container_id);
        std::fs::metadata(file)
            .and_then(|m| m.modified())
            .is_ok_and(|written| now.duration_since(written).unwrap_or_default() >= grace)
    };
    Ok(attachment::all(state)?
        .into_iter()
        .filter(|r| r.owner.is_some())
        .filter(|r| r.netns_id.is_some_and(|id| !in_use.contains(&id)))
        .filter(written_before_grace)
        .collect())
}

/// The network namespaces some process is in now. A process that ends while this runs is
/// skipped, as it would be a moment later.
fn namespaces_in_use() -> HashSet<NetnsId> {
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return HashSet::new();
    };
    processes
        .flatten()
        .filter(|p| {
            p.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|p| std::fs::metadata(p.path().join("ns/net")).ok())
        .map(|meta| NetnsId {
            dev: meta.dev(),
            ino: meta.ino(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process's own namespace is in use; an id no namespace has is not.
    #[test]
    fn the_namespaces_of_running_processes_are_in_use() {
        let own = std::fs::metadata("/proc/self/ns/net").unwrap();
        let in_use = namespaces_in_use();
        assert!(in_use.contains(&NetnsId {
            dev: own.dev(),
            ino: own.ino()
        }));
        assert!(!in_use.contains(&NetnsId { dev: 0, ino: 1 }));
    }
}
