//! TUN devices through the kernel's ioctl interface (netlink cannot create them).
//!
//! A container's device is created persistent, so it outlives the short-lived plugin process;
//! the data plane attaches queues to it later by name. It is multi-queue from birth because
//! that flag cannot be changed once the device exists.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;

use crate::error::{Error, IoContext, Result};

const TUN_DEVICE: &str = "/dev/net/tun";
const IFNAMSIZ: usize = 16;

#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

nix::ioctl_write_ptr_bad!(
    tun_set_iff,
    nix::request_code_write!(b'T', 202, std::mem::size_of::<libc::c_int>()),
    IfReq
);
nix::ioctl_write_int_bad!(
    tun_set_persist,
    nix::request_code_write!(b'T', 203, std::mem::size_of::<libc::c_int>())
);
nix::ioctl_write_int_bad!(
    tun_set_offload,
    nix::request_code_write!(b'T', 208, std::mem::size_of::<libc::c_uint>())
);

/// Offloads the data plane accepts: the container's stack may hand over TCP segment trains up
/// to 64 KiB and leave checksums to us (we segment and checksum in `dataplane::offload`).
const TUN_F_CSUM: libc::c_int = 0x01;
const TUN_F_TSO4: libc::c_int = 0x02;
const TUN_F_TSO6: libc::c_int = 0x04;

/// Flags every Flatnet TUN queue uses: layer 3, no packet-info prefix, multi-queue.
const QUEUE_FLAGS: libc::c_int = libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE;

/// Checks an interface name against the kernel's rules.
pub fn check_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() < IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!(
            "interface name {name:?} must be 1-15 characters without '/', ':' or spaces"
        )))
    }
}

/// Opens the data plane's queue of the existing TUN device `name` (in the calling thread's
/// network namespace): every packet carries a virtio-net header, and TCP segmentation is
/// offloaded. A device that is gone is an error: TUNSETIFF would quietly make a new, bare one.
pub fn open_offload_queue(name: &str) -> Result<File> {
    check_ifname(name)?;
    let cname = std::ffi::CString::new(name).expect("checked: no NUL in the name");
    // SAFETY: a valid NUL-terminated string that lives across the call.
    if unsafe { libc::if_nametoindex(cname.as_ptr()) } == 0 {
        return Err(Error::InvalidRequest(format!(
            "TUN device {name} does not exist"
        )));
    }
    let queue = open(name, QUEUE_FLAGS | libc::IFF_VNET_HDR)?;
    // SAFETY: plain integer ioctl on a TUN queue we own.
    unsafe { tun_set_offload(queue.as_raw_fd(), TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) }
        .map_err(|e| Error::io(format!("enabling offloads on {name}"), e.into()))?;
    Ok(queue)
}

/// Opens a queue of the TUN device `name` in the calling thread's network namespace, creating
/// the device if it does not exist.
fn open(name: &str, flags: libc::c_int) -> Result<File> {
    check_ifname(name)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN_DEVICE)
        .context(|| format!("opening {TUN_DEVICE}"))?;
    let mut req = IfReq {
        name: [0; IFNAMSIZ],
        flags: flags as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: `req` is a properly initialised ifreq that lives across the call.
    unsafe { tun_set_iff(file.as_raw_fd(), &req) }
        .map_err(|e| Error::io(format!("creating TUN device {name}"), e.into()))?;
    Ok(file)
}

/// Creates a persistent TUN device in the calling thread's network namespace.
pub fn create_persistent(name: &str) -> Result<()> {
    let queue = open(name, QUEUE_FLAGS)?;
    // SAFETY: plain integer ioctl on a TUN queue we own.
    unsafe { tun_set_persist(queue.as_raw_fd(), 1) }
        .map_err(|e| Error::io(format!("making TUN device {name} persistent"), e.into()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_a_device_that_is_gone_is_an_error_not_a_new_device() {
        let err = open_offload_queue("fn-nosuchdev").unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
