//! `flatnetd`'s data plane: one UDP socket on the underlay, one TUN queue per attached
//! container, the tunnels between them, and the control socket the plugins talk to.
//!
//! Packet paths are named by where a packet comes from: [`inside`] (from a member's TUN queue:
//! out through a tunnel, or to a local member) and [`outside`] (from the underlay, into a
//! member). Members are containers and each network's host member ([`members`]); DNS queries to
//! the gateway are answered in the data plane ([`resolver`]). One thread, the packet thread,
//! runs it all off an epoll loop with fixed buffers: no allocation, no lock and no async
//! scheduler on the per-packet path. On hosts with CPUs to spare, trains for other hosts are
//! sealed by worker threads ([`seal_workers`]).

mod batch;
mod coalesce;
mod control_server;
mod follower;
#[cfg(fuzzing)]
pub mod fuzzing;
mod idle_poll;
mod inside;
mod local;
mod members;
mod metrics_server;
mod notify;
mod offload;
mod outside;
pub mod packet;
mod ports;
mod resolver;
mod routes;
mod seal_workers;
mod signals;

use std::collections::HashMap;
use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{setsockopt, sockopt};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::attach::{all_attachments, load_attachment};
use crate::cert::{self, CaCert};
use crate::control::{Request, Response, PROTOCOL_VERSION};
use crate::error::{Error, IoContext, Result};
use crate::host_member::HostMember;
use crate::lighthouse::{
    EtcdLighthouse, FileLighthouse, HostInfo, Lighthouse, LighthouseSettings, Published,
};
use crate::state::NetworkDirs;
use crate::state::{create_private_dir, write_atomic, FileLock};
use crate::tunnel::{encode_key, DropReason, Limits, StaticKeys, TunnelManager};
use batch::{RecvBatch, SendBatch};
use coalesce::Coalescer;
use follower::Follower;
use idle_poll::IdlePoll;
pub use idle_poll::DEFAULT_WINDOW_US as DEFAULT_POLL_US;
use local::FastPathStats;
pub use local::SameHost;
use members::LocalNetworks;
pub use metrics_server::MetricsAddress;
use ports::Ports;
use resolver::Resolver;
use routes::RouteTable;
use seal_workers::SealWorkers;
pub use seal_workers::MAX_WORKERS;

const TOKEN_UDP: u64 = 0;
const TOKEN_WAKE: u64 = 1;
const TOKEN_DNS: u64 = 2;
const TOKEN_FIRST_PORT: u64 = 3;
/// How often timers run (handshake retries, expiry, lighthouse changes).
const TICK: Duration = Duration::from_millis(100);
const BUFFER: usize = 65536;
const SOCKET_BUFFER: usize = 4 << 20;

/// What a daemon needs to know; persisted as `flatnetd.json` so a restart needs only the
/// state directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonConfig {
    pub state_dir: PathBuf,
    pub lighthouse: LighthouseSettings,
    pub listen: SocketAddr,
    /// How long to poll for an answer after sending before sleeping, in µs (0: never).
    #[serde(default = "default_poll_us")]
    pub poll_us: u32,
    /// Where Prometheus metrics are served; none when off (the default).
    #[serde(default)]
    pub metrics: Option<MetricsAddress>,
    /// Keepalive interval in seconds for every tunnel, for peers behind NAT; none when off
    /// (the default).
    #[serde(default)]
    pub persistent_keepalive_s: Option<u32>,
    /// How containers of this host reach each other (the fast path unless told otherwise).
    #[serde(default)]
    pub same_host: SameHost,
    /// Threads that seal packets for other hosts besides the packet thread (0: it seals
    /// them itself); none: one per CPU beyond two, at most [`MAX_WORKERS`].
    #[serde(default)]
    pub workers: Option<usize>,
}

fn default_poll_us() -> u32 {
    DEFAULT_POLL_US
}

impl DaemonConfig {
    pub fn settings_path(state_dir: &Path) -> PathBuf {
        state_dir.join("flatnetd.json")
    }

    /// The settings the last daemon of `state_dir` ran with.
    pub fn load(state_dir: &Path) -> Result<Self> {
        let path = Self::settings_path(state_dir);
        let bytes = std::fs::read(&path).context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::InvalidConfig(format!("{}: {e}", path.display())))
    }
}

type Command = (Request, SyncSender<Response>);

struct Buffers {
    /// What a container's queue gave: a virtio-net header and a packet or segment train.
    frame: Vec<u8>,
    /// A decrypted datagram, or a container's packet behind room for the network tag.
    plain: Vec<u8>,
    /// An encrypted datagram before it joins the send batch.
    out: Vec<u8>,
    /// Always `Some` except while a batch is being handled.
    received: Option<Box<RecvBatch>>,
    /// Segments for one container joined while a received batch is handled.
    train: Coalescer,
    to_send: Box<SendBatch>,
}

#[derive(Default)]
struct DropCounters {
    by_reason: HashMap<DropReason, u64>,
    /// Datagrams the kernel dropped for a full socket buffer before flatnetd saw them.
    receive_buffer_overflow: u64,
}

impl DropCounters {
    fn count(&mut self, reason: DropReason) {
        *self.by_reason.entry(reason).or_default() += 1;
    }

    fn to_json(&self) -> serde_json::Value {
        let mut map: serde_json::Map<String, serde_json::Value> = DropReason::ALL
            .iter()
            .map(|r| {
                let name = serde_json::to_value(r)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string();
                (name, json!(self.by_reason.get(r).copied().unwrap_or(0)))
            })
            .collect();
        map.insert(
            "receive_buffer_overflow".into(),
            json!(self.receive_buffer_overflow),
        );
        serde_json::Value::Object(map)
    }
}

pub struct Daemon {
    config: DaemonConfig,
    udp: UdpSocket,
    /// Where trains for other hosts are sealed when not on the packet thread.
    seal_workers: Option<SealWorkers>,
    epoll: Epoll,
    wake: Arc<EventFd>,
    commands: Receiver<Command>,
    tunnels: TunnelManager,
    routes: RouteTable,
    /// The name this host publishes its entries under ("" in a file lighthouse).
    own_name: String,
    follower: Follower,
    ports: Ports,
    /// Networks with members here: their host member and DNS settings.
    networks: LocalNetworks,
    resolver: Resolver,
    drops: DropCounters,
    fast_path: FastPathStats,
    bufs: Buffers,
    poll: IdlePoll,
    started: Instant,
    /// Time the packet thread spent handling events (not waiting for them).
    busy: Duration,
    running: bool,
    /// The answer to a shutdown request, sent once everything is closed.
    shutdown_reply: Option<SyncSender<Response>>,
}

/// Runs a daemon until it is told to stop. `ready` is written to once the daemon serves.
pub fn run(config: DaemonConfig, ready: Option<File>) -> Result<()> {
    signals::block()?;
    create_private_dir(&config.state_dir)?;
    let lock =
        FileLock::try_acquire(&config.state_dir.join("flatnetd.lock"))?.ok_or_else(|| {
            Error::DataPlane(format!(
                "another flatnetd already serves {}",
                config.state_dir.display()
            ))
        })?;
    let keys = StaticKeys::load_or_generate(&config.state_dir.join("host.key"))?;
    write_atomic(
        &config.state_dir.join("host.pub"),
        encode_key(&keys.public).as_bytes(),
    )?;
    let settings = serde_json::to_vec_pretty(&config).expect("config serialises");
    write_atomic(&DaemonConfig::settings_path(&config.state_dir), &settings)?;

    let (tx, rx) = std::sync::mpsc::sync_channel(16);
    let wake = Arc::new(
        EventFd::from_flags(EfdFlags::EFD_NONBLOCK)
            .map_err(|e| Error::io("creating eventfd", e.into()))?,
    );
    let listener = control_server::bind(&config.state_dir)?;
    let host = HostInfo {
        endpoint: config.listen,
        public_key: encode_key(&keys.public),
    };
    let (lighthouse, identity) = open_lighthouse(&config, &host)?;
    let follower = Follower::spawn(lighthouse.as_ref(), wake.clone(), FIRST_READ)?;
    let mut daemon = Daemon::new(config, keys, rx, wake.clone(), follower, identity)?;
    daemon.recover();
    if let Some(address) = &daemon.config.metrics {
        metrics_server::spawn(address, tx.clone(), wake.clone())?;
    }
    let control = control_server::spawn(listener, tx, wake, lighthouse, host);
    signals::spawn(daemon.config.state_dir.clone());
    notify::ready(ready);
    tracing::info!(
        "flatnetd serving {} on {} ({} containers)",
        daemon.config.state_dir.display(),
        daemon.config.listen,
        daemon.ports.containers()
    );
    daemon.event_loop()?;
    notify::systemd("STOPPING=1");
    // Stopped by request: stop listening, release the port, the devices and the lock, and only
    // then answer, so a `flatnetd start` right after `stop` finds everything free.
    let _ = std::fs::remove_file(crate::control::socket_path(&daemon.config.state_dir));
    if let Some(MetricsAddress::Unix(path)) = &daemon.config.metrics {
        let _ = std::fs::remove_file(path);
    }
    let reply = daemon.shutdown_reply.take();
    drop(daemon);
    drop(lock);
    if let Some(reply) = reply {
        let _ = reply.send(Response::ok());
        let _ = control.join();
    }
    Ok(())
}

/// How long a starting daemon waits for its first read of the lighthouse (and an etcd lease).
const FIRST_READ: Duration = Duration::from_secs(3);

/// Who this host is on its lighthouse: the name its entries are published under ("" in a
/// file lighthouse) and the network CA whose certificates decide which entries are believed
/// (etcd; none for a file lighthouse, which every host shares and trusts as it is).
struct Identity {
    name: String,
    trust: Option<CaCert>,
}

/// The daemon's lighthouse. With etcd, the host's certificate must be the network CA's and
/// name this host's key; the daemon holds the host's lease, and the entries of every container
/// recorded here are (re)claimed under it: after a restart they are served again without their
/// containers noticing.
fn open_lighthouse(
    config: &DaemonConfig,
    host: &HostInfo,
) -> Result<(Arc<dyn Lighthouse>, Identity)> {
    match &config.lighthouse {
        LighthouseSettings::File(path) => {
            let identity = Identity {
                name: String::new(),
                trust: None,
            };
            Ok((Arc::new(FileLighthouse::new(path.clone())), identity))
        }
        LighthouseSettings::Etcd(settings) => {
            let ca: CaCert = cert::load(&settings.network_ca_file)?;
            let own = cert::load_host_cert(&settings.host_cert_file, &ca, Some(&host.public_key))?;
            let identity = Identity {
                name: own.name.clone(),
                trust: Some(ca),
            };
            let etcd = EtcdLighthouse::connect(settings, own)?;
            etcd.adopt(recorded_entries(&config.state_dir, host));
            etcd.hold_lease(config.state_dir.join("etcd-lease"));
            if !etcd.wait_for_lease(FIRST_READ) {
                tracing::warn!("no etcd lease yet: attaches wait for etcd");
            }
            Ok((Arc::new(etcd), identity))
        }
    }
}

/// The lighthouse entries this host's records stand for: containers and host members.
fn recorded_entries(state_dir: &Path, host: &HostInfo) -> Vec<crate::lighthouse::Entry> {
    let records = all_attachments(state_dir).unwrap_or_default();
    let networks: std::collections::BTreeMap<&str, u32> = records
        .iter()
        .map(|r| (r.network.as_str(), r.network_tag()))
        .collect();
    let members = networks.into_iter().filter_map(|(network, network_id)| {
        let member = HostMember::load(&NetworkDirs::new(state_dir, network)).ok()??;
        Some(crate::lighthouse::Entry {
            network: member.network,
            network_id,
            ip: member.address,
            container_id: member.id,
            names: Vec::new(),
            host: host.clone(),
        })
    });
    let containers = records.iter().map(|r| crate::lighthouse::Entry {
        network: r.network.clone(),
        network_id: r.network_tag(),
        ip: r.address.addr(),
        container_id: r.container_id.clone(),
        names: r.names.clone(),
        host: host.clone(),
    });
    containers.chain(members).collect()
}

impl Daemon {
    fn new(
        config: DaemonConfig,
        keys: StaticKeys,
        commands: Receiver<Command>,
        wake: Arc<EventFd>,
        follower: Follower,
        identity: Identity,
    ) -> Result<Self> {
        let udp =
            UdpSocket::bind(config.listen).context(|| format!("binding UDP {}", config.listen))?;
        udp.set_nonblocking(true)
            .context(|| "making the UDP socket non-blocking")?;
        // Bursts from a TCP window arrive faster than one thread drains them; the default
        // buffers (208 KiB) overflow and TCP mistakes that for congestion.
        let sized = setsockopt(&udp, sockopt::RcvBufForce, &SOCKET_BUFFER)
            .and_then(|()| setsockopt(&udp, sockopt::SndBufForce, &SOCKET_BUFFER));
        if let Err(e) = sized {
            tracing::warn!("enlarging UDP buffers: {e}");
        }
        // Trains of datagrams from one peer arrive as one message (split in `RecvBatch`).
        if let Err(e) = batch::enable_gro(udp.as_raw_fd()) {
            tracing::warn!("enabling UDP GRO: {e}");
        }
        if let Err(e) = batch::count_kernel_drops(udp.as_raw_fd()) {
            tracing::warn!("enabling SO_RXQ_OVFL: {e}");
        }
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
            .map_err(|e| Error::io("creating epoll", e.into()))?;
        let readable = |token| EpollEvent::new(EpollFlags::EPOLLIN, token);
        let resolver = Resolver::new()?;
        epoll
            .add(udp.as_fd(), readable(TOKEN_UDP))
            .and_then(|()| epoll.add(wake.as_fd(), readable(TOKEN_WAKE)))
            .and_then(|()| epoll.add(resolver.socket().as_fd(), readable(TOKEN_DNS)))
            .map_err(|e| Error::io("registering with epoll", e.into()))?;
        let poll = IdlePoll::new(config.poll_us, TICK);
        let workers = config
            .workers
            .unwrap_or_else(seal_workers::default_count)
            .min(MAX_WORKERS);
        let frame_len = BUFFER + offload::VNET_HDR_LEN;
        let seal_workers = match workers {
            0 => None,
            n => Some(SealWorkers::spawn(n, &udp, frame_len)?),
        };
        let limits = Limits {
            persistent_keepalive: config
                .persistent_keepalive_s
                .map(|s| Duration::from_secs(s.into())),
            ..Limits::default()
        };
        Ok(Daemon {
            config,
            udp,
            seal_workers,
            epoll,
            wake,
            commands,
            tunnels: TunnelManager::new(keys, limits),
            routes: identity
                .trust
                .map_or_else(RouteTable::default, RouteTable::trusting),
            own_name: identity.name,
            follower,
            ports: Ports::default(),
            networks: LocalNetworks::default(),
            resolver,
            drops: DropCounters::default(),
            fast_path: FastPathStats::default(),
            bufs: Buffers {
                frame: vec![0; frame_len],
                plain: vec![0; BUFFER + offload::VNET_HDR_LEN],
                out: vec![0; BUFFER],
                received: Some(RecvBatch::new()),
                train: Coalescer::new(),
                to_send: SendBatch::new(),
            },
            poll,
            started: Instant::now(),
            busy: Duration::ZERO,
            running: true,
            shutdown_reply: None,
        })
    }

    /// After a restart: serve again every container recorded whose namespace still exists.
    /// Their TUN devices are persistent, so the containers notice only a short outage.
    fn recover(&mut self) {
        self.apply_lighthouse_changes();
        match all_attachments(&self.config.state_dir) {
            Ok(records) => {
                for record in records {
                    if let Err(e) = self.attach(&record) {
                        tracing::warn!(
                            "not re-attaching {} on {}: {e}",
                            record.container_id,
                            record.network
                        );
                    }
                }
            }
            Err(e) => tracing::warn!("reading attachments: {e}"),
        }
    }

    fn event_loop(&mut self) -> Result<()> {
        let mut events = vec![EpollEvent::empty(); 64];
        let mut next_tick = Instant::now() + TICK;
        while self.running {
            let Some(n) = self.wait(&mut events, next_tick)? else {
                continue;
            };
            let woke = Instant::now();
            let sent_before = self.sent();
            for event in &events[..n] {
                match event.data() {
                    TOKEN_UDP => self.on_udp_readable(),
                    TOKEN_WAKE => self.on_commands(),
                    TOKEN_DNS => self.on_upstream_answers(),
                    token => {
                        let slot = (token - TOKEN_FIRST_PORT) as usize;
                        if !self.on_tun_readable(slot) {
                            self.drop_dead_port(slot);
                        }
                    }
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                self.on_tick(now);
                next_tick = now + TICK;
            }
            self.bufs.to_send.flush(self.udp.as_raw_fd());
            if let Some(workers) = &mut self.seal_workers {
                workers.dispatch();
            }
            let sent = self.sent() != sent_before;
            let done = Instant::now();
            self.busy += done - woke;
            self.poll.after_round(done, sent);
        }
        Ok(())
    }

    /// Datagrams sent and trains handed to workers so far: whether a round sent anything.
    fn sent(&self) -> (u64, u64) {
        let handed = self.seal_workers.as_ref().map(SealWorkers::handed_over);
        (self.bufs.to_send.flushed(), handed.unwrap_or(0))
    }

    /// Waits for events until the next tick, or only polls while a poll window is open.
    /// `None`: a poll that found nothing.
    fn wait(&mut self, events: &mut [EpollEvent], next_tick: Instant) -> Result<Option<usize>> {
        let started = Instant::now();
        let polling = self.poll.polling(started);
        let timeout = if polling {
            // Whatever else is runnable on this CPU goes first.
            std::thread::yield_now();
            0
        } else {
            millis_until(next_tick, started)
        };
        let n = match self.epoll.wait(events, timeout) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => return Err(Error::io("epoll", e.into())),
        };
        if polling && n == 0 {
            self.poll.charge(started.elapsed());
            return Ok(None);
        }
        Ok(Some(n))
    }

    fn on_tick(&mut self, now: Instant) {
        self.poll.renew();
        self.expire_dns_queries(now);
        let fd = self.udp.as_raw_fd();
        self.tunnels
            .tick(now, &mut batched(&mut self.bufs.to_send, fd));
    }

    fn on_commands(&mut self) {
        let _ = self.wake.read();
        self.apply_lighthouse_changes();
        while let Ok((request, reply)) = self.commands.try_recv() {
            let response = match request {
                Request::Attach {
                    network,
                    container_id,
                } => self.attach_recorded(&network, &container_id),
                Request::Detach {
                    network,
                    container_id,
                } => {
                    self.detach(&network, &container_id);
                    Response::ok()
                }
                Request::Status => Response {
                    status: Some(self.status()),
                    ..Response::ok()
                },
                Request::Shutdown => {
                    // Answered by `run` once everything is closed.
                    self.running = false;
                    self.shutdown_reply = Some(reply);
                    continue;
                }
                // The control server answers these from the lighthouse, off this thread.
                lighthouse_op => {
                    Response::error(format!("not a data plane request: {lighthouse_op:?}"))
                }
            };
            let _ = reply.send(response);
        }
    }

    fn apply_lighthouse_changes(&mut self) {
        for change in self.follower.pending() {
            self.routes.apply(change);
        }
    }

    /// This host's own entry, as the lighthouse has it (or will in a moment).
    fn own_entry(
        &self,
        network: &str,
        network_id: u32,
        ip: std::net::Ipv4Addr,
        id: &str,
        names: Vec<String>,
    ) -> Published {
        let entry = crate::lighthouse::Entry {
            network: network.to_string(),
            network_id,
            ip,
            container_id: id.to_string(),
            names,
            host: HostInfo {
                endpoint: self.config.listen,
                public_key: encode_key(self.tunnels.public_key()),
            },
        };
        Published {
            host: self.own_name.clone(),
            entry,
        }
    }

    /// Serves the container its attachment record describes.
    fn attach_recorded(&mut self, network: &str, container_id: &str) -> Response {
        match load_attachment(&self.config.state_dir, network, container_id) {
            Ok(Some(record)) => self
                .attach(&record)
                .map_or_else(|e| Response::error(e.to_string()), |()| Response::ok()),
            Ok(None) => Response::error(format!(
                "no attachment record for {container_id} on {network}"
            )),
            Err(e) => Response::error(e.to_string()),
        }
    }

    fn status(&self) -> serde_json::Value {
        let now = Instant::now();
        let containers: Vec<_> = self
            .ports
            .iter()
            .map(|p| {
                json!({
                    "network": p.network,
                    "container_id": p.container_id,
                    "ifname": p.ifname,
                    "address": p.address,
                    "host_member": p.is_host(),
                    "published_ports": p.published.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "stats": p.stats,
                })
            })
            .collect();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "protocol": PROTOCOL_VERSION,
            "public_key": encode_key(self.tunnels.public_key()),
            "listen": self.config.listen,
            "lighthouse": self.config.lighthouse.to_string(),
            "lighthouse_state": self.follower.health(),
            "metrics": self.config.metrics,
            "persistent_keepalive_s": self.config.persistent_keepalive_s,
            "same_host": self.config.same_host,
            "seal_workers": self.seal_workers.as_ref().map_or_else(|| json!([]), SealWorkers::status),
            "busy_us": self.busy.as_micros() as u64,
            "uptime_ms": now.duration_since(self.started).as_millis() as u64,
            "rss_kib": rss_kib(),
            "routes": self.routes.len(),
            "refused_entries": self.routes.refused(),
            "containers": containers,
            "peers": self.tunnels.status(now),
            "sessions": self.tunnels.session_count(),
            "networks": self.networks.status(),
            "dns": self.resolver.stats,
            "fast_path": self.fast_path,
            "drops": self.drops.to_json(),
            "poll": {"window_us": self.poll.window_us(), "stats": self.poll.stats()},
        })
    }
}

/// The `send` callback of the tunnel manager: queue in the batch, send when it is full.
fn batched(batch: &mut SendBatch, fd: RawFd) -> impl FnMut(&[u8], SocketAddr) + '_ {
    move |datagram, to| {
        batch.push(datagram, to);
        if batch.is_full() {
            batch.flush(fd);
        }
    }
}

/// An epoll timeout that does not wake before `deadline` (rounded up: rounding down would
/// spin through the last millisecond).
fn millis_until(deadline: Instant, now: Instant) -> u16 {
    let micros = deadline.saturating_duration_since(now).as_micros();
    u16::try_from(micros.div_ceil(1000)).unwrap_or(u16::MAX)
}

pub(crate) fn set_nonblocking(file: &File) -> Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(|e| Error::io("F_GETFL", e.into()))?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(|e| Error::io("F_SETFL", e.into()))?;
    Ok(())
}

/// Resident memory of this process, from /proc.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A daemon upgraded in place reads the settings its predecessor wrote, which name no
    /// same-host mode nor workers: it takes the fast path and a worker per spare CPU; written
    /// settings survive the round trip.
    #[test]
    fn settings_without_a_same_host_mode_or_workers_take_the_defaults() {
        let config = DaemonConfig {
            state_dir: "/run/flatnet".into(),
            lighthouse: LighthouseSettings::File("/run/flatnet/lighthouse.json".into()),
            listen: "127.0.0.1:4800".parse().unwrap(),
            poll_us: 50,
            metrics: None,
            persistent_keepalive_s: None,
            same_host: SameHost::Encrypted,
            workers: Some(2),
        };
        let mut written = serde_json::to_value(&config).unwrap();
        let back: DaemonConfig = serde_json::from_value(written.clone()).unwrap();
        assert_eq!(back.same_host, SameHost::Encrypted);
        assert_eq!(back.workers, Some(2));
        written.as_object_mut().unwrap().remove("same_host");
        written.as_object_mut().unwrap().remove("workers");
        let older: DaemonConfig = serde_json::from_value(written).unwrap();
        assert_eq!(older.same_host, SameHost::Fast);
        assert_eq!(older.workers, None, "as many workers as the CPUs allow");
        assert_eq!("encrypted".parse::<SameHost>(), Ok(SameHost::Encrypted));
        assert!("plain".parse::<SameHost>().is_err());
    }

    #[test]
    fn epoll_timeouts_round_up_so_the_loop_never_spins_before_a_tick() {
        let now = Instant::now();
        assert_eq!(millis_until(now + Duration::from_micros(300), now), 1);
        assert_eq!(millis_until(now + Duration::from_micros(1001), now), 2);
        assert_eq!(millis_until(now + Duration::from_millis(100), now), 100);
        assert_eq!(millis_until(now, now + Duration::from_millis(5)), 0);
    }
}
