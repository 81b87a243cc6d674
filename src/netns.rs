//! `NetworkNamespace`: the container side of an attachment, done over netlink inside the
//! container's network namespace.
//!
//! `setns` changes the namespace of one thread, so every visit runs on a short-lived thread of
//! its own; the caller's threads never leave the host namespace.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use ipnet::IpNet;
use nix::sched::{setns, CloneFlags};
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::error::{Error, IoContext, Result};
use crate::tun;

// ioctl_ns(2): `_IO(0xb7, n)`.
const NS_GET_USERNS: libc::c_ulong = 0xb701;
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
const NS_GET_OWNER_UID: libc::c_ulong = 0xb704;

pub struct NetworkNamespace {
    path: PathBuf,
    file: File,
}

/// A network namespace's identity, which outlives no reuse of its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct NetnsId {
    pub dev: u64,
    pub ino: u64,
}

/// A TUN device created in a namespace, by name and kernel index.
#[derive(Debug, Clone)]
pub struct TunDevice {
    pub name: String,
    pub index: u32,
}

/// What is found of an interface in a namespace.
#[derive(Debug, Clone)]
pub struct InterfaceState {
    pub index: u32,
    pub up: bool,
    pub mtu: Option<u32>,
    pub addresses: Vec<IpNet>,
}

impl NetworkNamespace {
    /// Opens a namespace by path (`/run/netns/NAME`, `/proc/PID/ns/net`).
    pub fn open(path: &Path) -> Result<Self> {
        match File::open(path) {
            Ok(file) => Ok(NetworkNamespace {
                path: path.to_path_buf(),
                file,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::NetnsNotFound(path.to_path_buf()))
            }
            Err(e) => Err(Error::io(format!("opening netns {}", path.display()), e)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace itself, whatever path names it: device and inode of its nsfs file.
    pub fn identity(&self) -> Result<NetnsId> {
        use std::os::unix::fs::MetadataExt;
        let meta = self
            .file
            .metadata()
            .context(|| format!("inspecting netns {}", self.path.display()))?;
        Ok(NetnsId {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// The user a namespace belongs to: the owner of the user namespace that owns it (uid 0
    /// for the host's). Refuses a descriptor that is not a network namespace.
    pub fn owner_uid(file: &File) -> Result<u32> {
        let fd = file.as_raw_fd();
        // SAFETY: ioctls on a descriptor we own; NS_GET_USERNS returns a new descriptor.
        let kind = unsafe { libc::ioctl(fd, NS_GET_NSTYPE) };
        if kind != libc::CLONE_NEWNET {
            return Err(Error::InvalidRequest(
                "the descriptor given is not a network namespace".into(),
            ));
        }
        let userns = unsafe { libc::ioctl(fd, NS_GET_USERNS) };
        if userns < 0 {
            return Err(Error::io(
                "finding the namespace's user namespace",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: a descriptor the kernel just gave us, owned from here on.
        let userns = unsafe { OwnedFd::from_raw_fd(userns) };
        let mut uid: libc::uid_t = 0;
        if unsafe { libc::ioctl(userns.as_raw_fd(), NS_GET_OWNER_UID, &mut uid) } < 0 {
            return Err(Error::io(
                "reading the user namespace's owner",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(uid)
    }

    /// Opens the namespace at `path` only if it is the one `expected` names: a recorded path
    /// may have been reused for another container's namespace since.
    pub fn open_recorded(path: &Path, expected: Option<NetnsId>) -> Result<Self> {
        let netns = Self::open(path)?;
        let found = netns.identity()?;
        match expected {
            Some(expected) if expected != found => Err(Error::NetnsReplaced(path.to_path_buf())),
            _ => Ok(netns),
        }
    }

    /// Runs `f` on a thread inside this namespace with a netlink connection opened there.
    pub fn enter<R: Send>(&self, f: impl FnOnce(&mut Inside) -> Result<R> + Send) -> Result<R> {
        self.run_inside(|| f(&mut Inside::connect()?))
    }

    /// Runs `f` on a thread inside this namespace. Sockets and devices opened there stay in
    /// the namespace after the thread ends (the data plane opens TUN queues this way).
    pub fn run_inside<R: Send>(&self, f: impl FnOnce() -> Result<R> + Send) -> Result<R> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(|e| {
                        let what = if e == nix::errno::Errno::EINVAL {
                            "is not a network namespace"
                        } else {
                            "cannot be entered"
                        };
                        Error::InvalidRequest(format!("{} {what}: {e}", self.path.display()))
                    })?;
                    f()
                })
                .join()
                .unwrap_or_else(|_| Err(Error::Internal("namespace worker panicked".into())))
        })
    }

    /// Removes the interface if the namespace and the interface still exist and the namespace
    /// is the one `made_in` names (the one the interface was made in, when recorded): a path
    /// reused by another namespace is left alone, whatever it holds. Returns whether something
    /// was removed.
    pub fn teardown(path: &Path, ifname: &str, made_in: Option<NetnsId>) -> Result<bool> {
        match NetworkNamespace::open_recorded(path, made_in) {
            Ok(ns) => ns.enter(|inside| inside.remove_interface(ifname)),
            Err(Error::NetnsNotFound(_)) => Ok(false),
            Err(Error::NetnsReplaced(_)) => {
                tracing::info!(
                    "{} names another namespace now: its {ifname} is not ours, left alone",
                    path.display()
                );
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

fn is_tun(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|attr| match attr {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|info| matches!(info, LinkInfo::Kind(InfoKind::Tun))),
        _ => false,
    })
}

/// Runs `f` with a netlink connection in the calling thread's own namespace (the host side:
/// where the plugin and the daemon run).
pub fn here<R>(f: impl FnOnce(&mut Inside) -> Result<R>) -> Result<R> {
    f(&mut Inside::connect()?)
}

/// Netlink operations inside one namespace. Obtained from [`NetworkNamespace::enter`] or
/// [`here`].
pub struct Inside {
    runtime: tokio::runtime::Runtime,
    handle: Handle,
}

fn netlink_err(what: &str) -> impl FnOnce(rtnetlink::Error) -> Error + '_ {
    move |source| Error::Netlink {
        context: what.to_string(),
        source,
    }
}

impl Inside {
    fn connect() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| Error::io("starting netlink runtime", e))?;
        let handle = runtime.block_on(async {
            let (connection, handle, _) =
                rtnetlink::new_connection().map_err(|e| Error::io("opening netlink socket", e))?;
            tokio::spawn(connection);
            Ok::<_, Error>(handle)
        })?;
        Ok(Inside { runtime, handle })
    }

    /// Creates the container's persistent TUN device and sets its MTU.
    pub fn create_interface(&mut self, name: &str, mtu: u32) -> Result<TunDevice> {
        if self.find_link(name)?.is_some() {
            return Err(Error::InvalidRequest(format!(
                "interface {name} already exists in the container"
            )));
        }
        tun::create_persistent(name)?;
        let link = self.find_link(name)?.ok_or_else(|| {
            let gone = std::io::Error::from_raw_os_error(libc::ENODEV);
            Error::io(format!("TUN device {name} vanished after creation"), gone)
        })?;
        let device = TunDevice {
            name: name.to_string(),
            index: link.header.index,
        };
        let msg = LinkUnspec::new_with_index(device.index).mtu(mtu).build();
        self.runtime
            .block_on(self.handle.link().set(msg).execute())
            .map_err(netlink_err("setting MTU"))?;
        Ok(device)
    }

    pub fn assign_ip(&mut self, device: &TunDevice, address: IpNet) -> Result<()> {
        let request = self
            .handle
            .address()
            .add(device.index, address.addr(), address.prefix_len());
        self.runtime
            .block_on(request.execute())
            .map_err(netlink_err("assigning address"))
    }

    /// Routes `destination` through the device, with `source` as the source address of what
    /// the namespace sends that way.
    pub fn add_route(
        &mut self,
        device: &TunDevice,
        destination: IpNet,
        source: IpAddr,
    ) -> Result<()> {
        let msg = match (destination, source) {
            (IpNet::V4(to), IpAddr::V4(from)) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(to.network(), to.prefix_len())
                .output_interface(device.index)
                .pref_source(from)
                .build(),
            (IpNet::V6(to), IpAddr::V6(from)) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(to.network(), to.prefix_len())
                .output_interface(device.index)
                .pref_source(from)
                .build(),
            _ => return Err(mixed_families(destination, source)),
        };
        self.runtime
            .block_on(self.handle.route().add(msg).execute())
            .map_err(netlink_err(&format!("adding route to {destination}")))
    }

    /// A default route via `gateway` through the device. Each interface's default route gets
    /// its own metric (100 + the interface index), so a container on several networks has one
    /// per network: the first attached is preferred, and the others remain when it leaves.
    pub fn add_default_route(&mut self, device: &TunDevice, gateway: IpAddr) -> Result<()> {
        let msg = match gateway {
            IpAddr::V4(gateway) => RouteMessageBuilder::<Ipv4Addr>::new()
                .output_interface(device.index)
                .gateway(gateway)
                .priority(100 + device.index)
                .build(),
            IpAddr::V6(gateway) => RouteMessageBuilder::<Ipv6Addr>::new()
                .output_interface(device.index)
                .gateway(gateway)
                .priority(100 + device.index)
                .build(),
        };
        self.runtime
            .block_on(self.handle.route().add(msg).execute())
            .map_err(netlink_err("adding the default route"))
    }

    /// IPv6 on the device: with `carry`, only the addresses Flatnet gives it; without, none
    /// at all. Either way the kernel makes none of its own: a TUN device has no link layer to
    /// autoconfigure (no link-local address, router solicitations or MLD reports: see
    /// docs/design.md). Written before the device is up, so it never sends anything of its own.
    /// A kernel without IPv6 is fine for a device that carries none.
    pub fn configure_ipv6(&mut self, device: &TunDevice, carry: bool) -> Result<()> {
        let conf = Path::new("/proc/sys/net/ipv6/conf").join(&device.name);
        if !carry && !conf.exists() {
            return Ok(());
        }
        let disable = if carry { "0" } else { "1" };
        for (key, value) in [
            ("addr_gen_mode", "1"),
            ("accept_ra", "0"),
            ("autoconf", "0"),
            ("disable_ipv6", disable),
        ] {
            let path = conf.join(key);
            std::fs::write(&path, value).context(|| {
                format!(
                    "setting {} (is IPv6 enabled in the kernel?)",
                    path.display()
                )
            })?;
        }
        Ok(())
    }

    /// Waits until no IPv6 address of the device is tentative: the kernel finishes (skips, on a
    /// TUN device) duplicate address detection on a work queue after the link comes up, and
    /// until then the address can be neither a route's source nor a packet's.
    pub fn wait_addresses_usable(&mut self, device: &TunDevice) -> Result<()> {
        const WITHIN: std::time::Duration = std::time::Duration::from_secs(2);
        let deadline = std::time::Instant::now() + WITHIN;
        while self.has_tentative_address(device.index)? {
            if std::time::Instant::now() > deadline {
                return Err(Error::io(
                    format!("IPv6 addresses of {} stay tentative", device.name),
                    std::io::Error::from_raw_os_error(libc::ETIMEDOUT),
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Ok(())
    }

    fn has_tentative_address(&mut self, index: u32) -> Result<bool> {
        let tentative = |msg: &AddressMessage| {
            msg.header.flags.contains(AddressHeaderFlags::Tentative)
                || msg.attributes.iter().any(|attr| {
                    matches!(attr, AddressAttribute::Flags(f) if f.contains(AddressFlags::Tentative))
                })
        };
        Ok(self.address_messages(index)?.iter().any(tentative))
    }

    /// The kernel's address messages of one interface.
    fn address_messages(&mut self, index: u32) -> Result<Vec<AddressMessage>> {
        self.runtime.block_on(async {
            let stream = self
                .handle
                .address()
                .get()
                .set_link_index_filter(index)
                .execute();
            stream
                .try_collect()
                .await
                .map_err(netlink_err("listing addresses"))
        })
    }

    pub fn set_up(&mut self, device: &TunDevice) -> Result<()> {
        let msg = LinkUnspec::new_with_index(device.index).up().build();
        self.runtime
            .block_on(self.handle.link().set(msg).execute())
            .map_err(netlink_err("bringing link up"))
    }

    /// Deletes the interface if it is a TUN device (the only kind Flatnet makes); returns
    /// false if there was none. An interface of another kind under the name is someone
    /// else's (a runtime that reused the namespace, another plugin) and stays.
    pub fn remove_interface(&mut self, name: &str) -> Result<bool> {
        let Some(link) = self.find_link(name)? else {
            return Ok(false);
        };
        if !is_tun(&link) {
            tracing::info!("{name} is not a TUN device: not ours, left alone");
            return Ok(false);
        }
        self.runtime
            .block_on(self.handle.link().del(link.header.index).execute())
            .map_err(netlink_err("deleting link"))?;
        Ok(true)
    }

    /// Reads an interface's state, or `None` if there is no such interface.
    pub fn interface_state(&mut self, name: &str) -> Result<Option<InterfaceState>> {
        let Some(link) = self.find_link(name)? else {
            return Ok(None);
        };
        let index = link.header.index;
        let mtu = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Mtu(mtu) => Some(*mtu),
            _ => None,
        });
        let up = link.header.flags.contains(LinkFlags::Up);
        let addresses = self
            .address_messages(index)?
            .iter()
            .filter_map(|msg| {
                // IPv4 names the interface's own address `Local`; IPv6 only `Address`.
                let local = msg.attributes.iter().find_map(|attr| match attr {
                    AddressAttribute::Local(ip @ IpAddr::V4(_)) => Some(*ip),
                    _ => None,
                });
                let address = msg.attributes.iter().find_map(|attr| match attr {
                    AddressAttribute::Address(ip @ IpAddr::V6(_)) => Some(*ip),
                    _ => None,
                });
                IpNet::new(local.or(address)?, msg.header.prefix_len).ok()
            })
            .collect();
        Ok(Some(InterfaceState {
            index,
            up,
            mtu,
            addresses,
        }))
    }

    fn find_link(&mut self, name: &str) -> Result<Option<LinkMessage>> {
        let request = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        self.runtime.block_on(async {
            futures::pin_mut!(request);
            match request.try_next().await {
                Ok(link) => Ok(link),
                // The kernel answers ENODEV for a name it does not know.
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
                Err(source) => Err(Error::Netlink {
                    context: format!("looking up {name}"),
                    source,
                }),
            }
        })
    }
}

fn mixed_families(destination: IpNet, source: IpAddr) -> Error {
    Error::InvalidRequest(format!(
        "a route to {destination} cannot have source {source}: the families differ"
    ))
}
