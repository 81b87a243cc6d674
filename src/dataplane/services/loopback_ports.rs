//! Published TCP ports on the host's IPv6 loopback (`curl http://[::1]:8080`). The kernel
//! cannot forward those: a packet from `::1` may not leave the loopback device and IPv6 has no
//! `route_localnet`, so a DNAT rule would accept the SYN and then lose it. flatnetd accepts
//! such connections itself and relays each to the container's IPv6 address, as a user-space
//! proxy; every other published address keeps the kernel's DNAT (see `crate::firewall`).
//!
//! The relay does not listen on the published port itself (Podman may hold it open to reserve
//! it): each port gets a listener on an ephemeral `[::1]` port, and a table of this daemon's
//! redirects `[::1]:published` onto it. One thread polls every listener; each accepted
//! connection gets two relay threads (one per direction), at most [`MAX_CONNECTIONS`] at once.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::attachment::Attachment;
use crate::error::{Error, Result};
use crate::firewall;

/// Relayed connections at once, all containers together; more are closed on accept.
const MAX_CONNECTIONS: usize = 256;
/// How long a relay waits to reach the container.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A container, as its network and id.
type Owner = (String, String);

/// One published `[::1]:port`: the relay's listener and where its connections go.
struct Port {
    listener: TcpListener,
    relay_port: u16,
    target: SocketAddr,
    owner: Owner,
}

#[derive(Default)]
struct Table {
    ports: HashMap<u16, Port>,
    /// Live relays: both ends, to be shut down when the container goes.
    connections: HashMap<u64, Connection>,
    stopping: bool,
}

struct Connection {
    owner: Owner,
    client: TcpStream,
    server: Option<TcpStream>,
}

impl Connection {
    fn cut(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        if let Some(server) = &self.server {
            let _ = server.shutdown(Shutdown::Both);
        }
    }
}

pub struct LoopbackPorts {
    shared: Arc<Mutex<Table>>,
    /// The nftables table of this daemon's redirects.
    redirects: String,
    wake: Arc<EventFd>,
    acceptor: Option<JoinHandle<()>>,
}

impl LoopbackPorts {
    pub fn spawn(redirects: String) -> Result<Self> {
        let wake = Arc::new(
            EventFd::from_flags(EfdFlags::EFD_NONBLOCK)
                .map_err(|e| Error::io("creating eventfd", e.into()))?,
        );
        let shared = Arc::new(Mutex::new(Table::default()));
        let acceptor = {
            let (shared, wake) = (shared.clone(), wake.clone());
            std::thread::Builder::new()
                .name("loopback-ports".into())
                .spawn(move || accept_loop(&shared, &wake))
                .map_err(|e| Error::io("spawning the loopback port thread", e))?
        };
        // A killed daemon's redirects lead nowhere now: gone until a container asks again.
        if let Err(e) = firewall::apply_loopback_redirects(&redirects, &[]) {
            tracing::warn!("loopback ports: clearing old redirects: {e}");
        }
        Ok(LoopbackPorts {
            shared,
            redirects,
            wake,
            acceptor: Some(acceptor),
        })
    }

    /// Listens on `[::1]` for the container's published TCP ports; all or none.
    pub fn open(&self, record: &Attachment) -> Result<()> {
        let owner: Owner = (record.network.clone(), record.container_id.clone());
        self.close(&owner.0, &owner.1);
        let mut bound = Vec::new();
        for (port, target) in record.loopback_relays() {
            let listener = relay_listener().map_err(|e| {
                Error::InvalidRequest(format!(
                    "cannot relay [::1]:{port}/tcp for {}: {e}",
                    record.container_id
                ))
            })?;
            bound.push((port, listener, target));
        }
        if bound.is_empty() {
            return Ok(());
        }
        let mut table = self.shared.lock().unwrap();
        for (port, (listener, relay_port), target) in bound {
            let owner = owner.clone();
            let port_entry = Port {
                listener,
                relay_port,
                target,
                owner,
            };
            table.ports.insert(port, port_entry);
        }
        let redirected = self.redirect(&table);
        if redirected.is_err() {
            table.ports.retain(|_, port| port.owner != owner);
            let _ = self.redirect(&table);
        }
        drop(table);
        self.nudge();
        redirected
    }

    /// Points each published port at its relay listener, in one nftables transaction.
    fn redirect(&self, table: &Table) -> Result<()> {
        let mut redirects: Vec<(u16, u16)> = table
            .ports
            .iter()
            .map(|(&p, port)| (p, port.relay_port))
            .collect();
        redirects.sort_unstable();
        firewall::apply_loopback_redirects(&self.redirects, &redirects)
    }

    /// Stops listening for the container and cuts its relayed connections.
    pub fn close(&self, network: &str, container_id: &str) {
        let mine = |owner: &Owner| owner.0 == network && owner.1 == container_id;
        let mut table = self.shared.lock().unwrap();
        for connection in table.connections.values().filter(|c| mine(&c.owner)) {
            connection.cut();
        }
        table.connections.retain(|_, c| !mine(&c.owner));
        let before = table.ports.len();
        table.ports.retain(|_, port| !mine(&port.owner));
        if table.ports.len() == before {
            return;
        }
        if let Err(e) = self.redirect(&table) {
            tracing::warn!("loopback ports: {e}");
        }
        drop(table);
        self.nudge();
    }

    fn nudge(&self) {
        let _ = self.wake.write(1);
    }
}

/// A listener on an ephemeral `[::1]` port, and that port.
fn relay_listener() -> std::io::Result<(TcpListener, u16)> {
    let listener = TcpListener::bind((Ipv6Addr::LOCALHOST, 0))?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    Ok((listener, port))
}

impl Drop for LoopbackPorts {
    fn drop(&mut self) {
        {
            let mut table = self.shared.lock().unwrap();
            table.stopping = true;
            table.ports.clear();
            let _ = self.redirect(&table);
            for connection in table.connections.values() {
                connection.cut();
            }
        }
        self.nudge();
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Polls the wake eventfd and every listener (duplicates, so that a listener closed meanwhile
/// cannot leave a stale descriptor in the poll set); the set is read again after each wake-up.
fn accept_loop(shared: &Arc<Mutex<Table>>, wake: &EventFd) {
    let next_id = AtomicU64::new(0);
    loop {
        let table = shared.lock().unwrap();
        if table.stopping {
            return;
        }
        let ports: Vec<(u16, TcpListener)> = table
            .ports
            .iter()
            .filter_map(|(&port, p)| p.listener.try_clone().ok().map(|l| (port, l)))
            .collect();
        drop(table);
        let mut fds = vec![PollFd::new(wake.as_fd(), PollFlags::POLLIN)];
        fds.extend(
            ports
                .iter()
                .map(|(_, l)| PollFd::new(l.as_fd(), PollFlags::POLLIN)),
        );
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                tracing::error!("loopback ports: poll failed: {e}");
                return;
            }
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.any().unwrap_or(false)).collect();
        drop(fds);
        if ready[0] {
            let _ = wake.read();
        }
        for ((port, listener), _) in ports.iter().zip(&ready[1..]).filter(|(_, &r)| r) {
            accept_all(shared, *port, listener, &next_id);
        }
    }
}

fn accept_all(shared: &Arc<Mutex<Table>>, port: u16, listener: &TcpListener, next_id: &AtomicU64) {
    loop {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) => {
                tracing::warn!("loopback port {port}: accept: {e}");
                return;
            }
        };
        let mut table = shared.lock().unwrap();
        // The port may have been closed since the poll: the table decides.
        let Some((target, owner)) = table.ports.get(&port).map(|p| (p.target, p.owner.clone()))
        else {
            continue;
        };
        if table.connections.len() >= MAX_CONNECTIONS {
            tracing::warn!("loopback port {port}: {MAX_CONNECTIONS} connections open; refusing");
            continue;
        }
        let Ok(registered) = client.try_clone() else {
            continue;
        };
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let connection = Connection {
            owner,
            client: registered,
            server: None,
        };
        table.connections.insert(id, connection);
        drop(table);
        let shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("loopback-relay".into())
            .spawn(move || {
                relay(&shared, id, client, target);
                shared.lock().unwrap().connections.remove(&id);
            });
        if spawned.is_err() {
            tracing::warn!("loopback port {port}: cannot start a relay");
        }
    }
}

/// Connects to the container and copies both ways until both directions are done (a side
/// that stops writing is passed on as a half-close).
fn relay(shared: &Mutex<Table>, id: u64, client: TcpStream, target: SocketAddr) {
    let connected = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT);
    let registered = {
        let mut table = shared.lock().unwrap();
        match (&connected, table.connections.get_mut(&id)) {
            (Ok(server), Some(connection)) => {
                connection.server = server.try_clone().ok();
                connection.server.is_some()
            }
            _ => false,
        }
    };
    let (Ok(server), true) = (connected, registered) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = client.set_nonblocking(false);
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (Ok(client_in), Ok(server_out)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let upstream = std::thread::Builder::new()
        .name("loopback-relay".into())
        .spawn(move || pipe(client_in, server_out));
    pipe(server, client);
    if let Ok(upstream) = upstream {
        let _ = upstream.join();
    }
}

/// Bytes a relay moves per read: `io::copy`'s 8 KiB costs a system call pair per 8 KiB; 64 KiB
/// moves about twice as much per CPU second.
const RELAY_CHUNK: usize = 64 * 1024;

/// One direction: what `from` sends goes to `to`, then `to` hears end of stream.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut chunk = vec![0; RELAY_CHUNK];
    loop {
        match from.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) if to.write_all(&chunk[..n]).is_ok() => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            _ => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
