//! Where leases live. The allocator's policy (`super`) talks only to [`LeaseStore`], so a
//! networked store can replace the directory one without touching the policy.

use std::net::IpAddr;

use ipnet::IpNet;
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::state::{
    create_exclusive, create_private_dir, list_dir, read_if_exists, remove_if_exists,
    remove_stale_temps, write_atomic, FileLock,
};

/// Who holds an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub container_id: String,
    pub ifname: String,
}

/// A place leases are kept. `transaction` runs `f` with the store locked against every other
/// allocator, in this process or another.
pub trait LeaseStore {
    fn transaction<R>(&self, f: impl FnOnce(&Self) -> Result<R>) -> Result<R>;
    /// Records `lease` for `ip` unless the address is held; returns whether it was recorded.
    fn reserve(&self, ip: IpAddr, lease: &Lease) -> Result<bool>;
    fn release(&self, ip: IpAddr) -> Result<()>;
    fn holder(&self, ip: IpAddr) -> Result<Option<Lease>>;
    fn leases(&self) -> Result<Vec<(IpAddr, Lease)>>;
    /// Where the last allocation in `subnet` ended (one cursor per address family).
    fn last_reserved(&self, subnet: IpNet) -> Result<Option<IpAddr>>;
    fn set_last_reserved(&self, ip: IpAddr) -> Result<()>;
}

/// One file per address in a directory, named by the address, as CNI's host-local does:
/// creating the file is the reservation, so two allocators can never both win an address.
pub struct DirLeaseStore {
    dir: PathBuf,
    lock: PathBuf,
}

/// The cursor files, IPv4's under the name it always had.
fn cursor_name(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "last_reserved_ip",
        IpAddr::V6(_) => "last_reserved_ip6",
    }
}

impl DirLeaseStore {
    pub fn new(dir: PathBuf, lock: PathBuf) -> Self {
        DirLeaseStore { dir, lock }
    }

    fn path_of(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(ip.to_string())
    }
}

fn read_lease(path: &Path) -> Result<Option<Lease>> {
    let Some(bytes) = read_if_exists(path)? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = text.lines();
    Ok(Some(Lease {
        container_id: lines.next().unwrap_or_default().to_string(),
        ifname: lines.next().unwrap_or_default().to_string(),
    }))
}

impl LeaseStore for DirLeaseStore {
    fn transaction<R>(&self, f: impl FnOnce(&Self) -> Result<R>) -> Result<R> {
        let _guard = FileLock::acquire(&self.lock)?;
        create_private_dir(&self.dir)?;
        // Leases half-written by a killed plugin: only their temporary files can be left.
        remove_stale_temps(&self.dir)?;
        f(self)
    }

    fn reserve(&self, ip: IpAddr, lease: &Lease) -> Result<bool> {
        let content = format!("{}\n{}\n", lease.container_id, lease.ifname);
        create_exclusive(&self.path_of(ip), content.as_bytes())
    }

    fn release(&self, ip: IpAddr) -> Result<()> {
        remove_if_exists(&self.path_of(ip))
    }

    fn holder(&self, ip: IpAddr) -> Result<Option<Lease>> {
        read_lease(&self.path_of(ip))
    }

    fn leases(&self) -> Result<Vec<(IpAddr, Lease)>> {
        let mut leases = Vec::new();
        for path in list_dir(&self.dir)? {
            let name = path.file_name().and_then(|n| n.to_str());
            let Some(ip) = name.and_then(|n| n.parse().ok()) else {
                continue; // last_reserved_ip, temporary files
            };
            if let Some(lease) = read_lease(&path)? {
                leases.push((ip, lease));
            }
        }
        leases.sort_by_key(|(ip, _)| *ip);
        Ok(leases)
    }

    fn last_reserved(&self, subnet: IpNet) -> Result<Option<IpAddr>> {
        let bytes = read_if_exists(&self.dir.join(cursor_name(subnet.addr())))?;
        let ip = bytes.and_then(|b| String::from_utf8_lossy(&b).trim().parse().ok());
        Ok(ip.filter(|ip| subnet.contains(ip)))
    }

    fn set_last_reserved(&self, ip: IpAddr) -> Result<()> {
        write_atomic(&self.dir.join(cursor_name(ip)), ip.to_string().as_bytes())
    }
}
