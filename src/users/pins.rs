//! Rootless containers' network namespaces, held by flatnetd: the plugin passes the namespace
//! as a descriptor, and flatnetd bind-mounts it under its state directory
//! (`user-netns/<uid>/<container id>`), so the attachment record names a path that the data
//! plane, a restarted daemon and the detach can open, as they open a rootful container's.
//! The pin goes with the container's detach; pins no record needs go when flatnetd starts.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::attachment;
use crate::error::{Error, IoContext, Result};
use crate::state::{create_private_dir, list_dir, StateDir};

pub fn path(state: &StateDir, uid: u32, container_id: &str) -> PathBuf {
    state.user_netns().join(uid.to_string()).join(container_id)
}

/// Bind-mounts `netns` at the container's pin, replacing a stale one.
pub fn pin(state: &StateDir, uid: u32, container_id: &str, netns: &File) -> Result<PathBuf> {
    let pin = path(state, uid, container_id);
    let dir = pin.parent().expect("a pin has a directory");
    create_private_dir(dir)?;
    unpin_path(&pin)?;
    File::create(&pin).context(|| format!("creating {}", pin.display()))?;
    let source = format!("/proc/self/fd/{}", netns.as_raw_fd());
    let mounted = mount(
        Some(source.as_str()),
        &pin,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    );
    if let Err(e) = mounted {
        let _ = std::fs::remove_file(&pin);
        return Err(Error::io(
            format!("holding the namespace at {}", pin.display()),
            e.into(),
        ));
    }
    Ok(pin)
}

pub fn exists(state: &StateDir, uid: u32, container_id: &str) -> bool {
    path(state, uid, container_id).exists()
}

pub fn unpin(state: &StateDir, uid: u32, container_id: &str) -> Result<()> {
    unpin_path(&path(state, uid, container_id))
}

fn unpin_path(pin: &Path) -> Result<()> {
    match umount2(pin, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => {
            return Err(Error::io(
                format!("releasing the namespace at {}", pin.display()),
                e.into(),
            ))
        }
    }
    crate::state::remove_if_exists(pin)
}

/// Releases the pins no attachment record names (an attach killed before its record, or a
/// detach killed after removing it). Run before the user socket serves.
pub fn sweep(state: &StateDir) -> Result<()> {
    let recorded: Vec<PathBuf> = attachment::all(state)?
        .into_iter()
        .map(|record| record.netns)
        .collect();
    for user_dir in list_dir(&state.user_netns())? {
        for pin in list_dir(&user_dir)? {
            if !recorded.contains(&pin) {
                tracing::info!("releasing {}: no container records it", pin.display());
                unpin_path(&pin)?;
            }
        }
    }
    Ok(())
}
