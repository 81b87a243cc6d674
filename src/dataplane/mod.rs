//! `flatnetd`'s data plane: one UDP socket on the underlay, one TUN queue per attached
//! container, the tunnels between them, and the control socket the plugins talk to.
//!
//! Packet paths are named by where a packet comes from: [`inside`] (from a member's TUN queue:
//! out through a tunnel, or to a local member) and [`outside`] (from the underlay, into a
//! member). Members are containers and each network's host member ([`members`]); DNS queries to
//! the gateway are answered in the data plane ([`resolver`]), other names forwarded upstream
//! ([`forwarder`]). One thread, the packet thread, runs it all off an epoll loop with fixed
//! buffers: no allocation, no lock and no async scheduler on the per-packet path. On hosts with
//! CPUs to spare, trains for other hosts are sealed by worker threads ([`seal_workers`]) and
//! large received batches opened on them too ([`open_workers`]).
//!
//! The packet thread's own parts are at the top: [`inside`], [`outside`], [`local`] (member to
//! member), [`members`] and [`queues`] (what is served: one TUN queue per member, by slot),
//! [`routes`] (the lighthouse's table), [`resolver`], [`forwarder`], [`seal_workers`],
//! [`open_workers`]. Kernel I/O that knows nothing of them is in [`io`]; threads beside the
//! packet thread, which reach it only through the command channel, in [`services`].
//! [`LightHost`] runs the lighthouse follower and the route table alone, for simulations of
//! hundreds of hosts.

mod candidates;
mod forwarder;
#[cfg(fuzzing)]
pub mod fuzzing;
mod handshake_memory;
mod inside;
mod io;
mod light_host;
mod local;
mod members;
mod open_workers;
mod outside;
mod pmtu;
mod queues;
mod resolver;
mod routes;
mod seal_workers;
mod services;

use io::{batch, coalesce, fragment, icmp, idle_poll, lanes, offload, packet};
use services::{control_server, follower, metrics_server, notify, publisher, signals, user_server};

pub use light_host::LightHost;
pub use routes::Route;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::attachment;
use crate::cert::{self, TrustBundle};
use crate::control::settings::{DaemonConfig, MetricsAddress, SameHost, MAX_WORKERS};
use crate::control::status::{DaemonStatus, FastPathStats, MemberStatus, PollStatus};
use crate::control::{DataPlaneRequest, Refusal, Reply, Response, PROTOCOL_VERSION};
use crate::error::{Error, IoContext, Result};
use crate::host_member::HostMember;
use crate::lighthouse::{
    EtcdLighthouse, FileLighthouse, HostInfo, Lighthouse, LighthouseSettings, NetworkId, Published,
};
use crate::state::{create_private_dir, write_atomic, FileLock, StateDir};
use crate::tunnel::wire::MSG_TRANSPORT;
use crate::tunnel::{encode_key, DropReason, Limits, StaticKeys, TunnelManager};
use crate::users::{self, UserService};
use batch::{RecvBatch, SendBatch};
use coalesce::Coalescer;
use follower::Follower;
use forwarder::Forwarder;
use idle_poll::IdlePoll;
use lanes::Lanes;
use members::LocalNetworks;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{setsockopt, sockopt};
use open_workers::OpenWorkers;
use publisher::Publisher;
use queues::Queues;
use routes::RouteTable;
use seal_workers::SealWorkers;
use services::loopback_ports::LoopbackPorts;

const TOKEN_UDP: u64 = 0;
const TOKEN_WAKE: u64 = 1;
const TOKEN_DNS: u64 = 2;
const TOKEN_HANDSHAKES: u64 = 3;
const TOKEN_FIRST_PORT: u64 = 4;
/// How often timers run (handshake retries, expiry, lighthouse changes).
const TICK: Duration = Duration::from_millis(100);
/// How often what peers see this host at is looked at (for the candidates it publishes).
const OBSERVED_EVERY: Duration = Duration::from_secs(1);
const BUFFER: usize = 65536;
const SOCKET_BUFFER: usize = 4 << 20;

type Command = (DataPlaneRequest, SyncSender<Response>);

struct Buffers {
    /// What a container's queue gave: a virtio-net header and a packet or segment train.
    frame: Vec<u8>,
    /// A decrypted datagram, or a container's packet behind room for the network id.
    plain: Vec<u8>,
    /// An encrypted datagram before it joins the send batch.
    out: Vec<u8>,
    /// Always `Some` except while a batch is being handled.
    received: Option<Box<RecvBatch>>,
    /// The same, for the handshake lane.
    handshakes_received: Option<Box<RecvBatch>>,
    /// Segments for one container joined while a received batch is handled.
    train: Coalescer,
    to_send: Box<SendBatch>,
}

#[derive(Default)]
struct DropCounters {
    by_reason: HashMap<DropReason, u64>,
    /// Datagrams the kernel dropped for a full socket buffer before flatnetd saw them: on the
    /// transport lane, and on the handshake lane (where a flood ends up).
    receive_buffer_overflow: u64,
    handshake_buffer_overflow: u64,
}

impl DropCounters {
    fn count(&mut self, reason: DropReason) {
        *self.by_reason.entry(reason).or_default() += 1;
    }

    /// Every reason, counted or not, by its name in the status.
    fn to_status(&self) -> BTreeMap<String, u64> {
        let mut drops: BTreeMap<String, u64> = DropReason::ALL
            .iter()
            .map(|r| (r.name(), self.by_reason.get(r).copied().unwrap_or(0)))
            .collect();
        drops.insert(
            "receive_buffer_overflow".into(),
            self.receive_buffer_overflow,
        );
        drops.insert(
            "handshake_buffer_overflow".into(),
            self.handshake_buffer_overflow,
        );
        drops
    }
}

/// The threads the packet thread takes changes from and hands its findings to.
struct Services {
    follower: Follower,
    publisher: Publisher,
    loopback_ports: LoopbackPorts,
}

pub struct Daemon {
    config: DaemonConfig,
    /// The transport lane of the underlay port; everything is sent from it.
    udp: UdpSocket,
    /// The handshake lane: every other message type ([`lanes`]).
    handshake_udp: UdpSocket,
    /// Where trains for other hosts are sealed when not on the packet thread.
    seal_workers: Option<SealWorkers>,
    /// Taken out while a batch they opened is handled.
    open_workers: Option<OpenWorkers>,
    epoll: Epoll,
    wake: Arc<EventFd>,
    commands: Receiver<Command>,
    tunnels: TunnelManager,
    /// When the tunnels' initiation timestamps may next be written down.
    handshake_save: handshake_memory::SaveClock,
    routes: RouteTable,
    /// The name this host publishes its entries under ("" in a file lighthouse).
    own_name: String,
    /// When this host's certificate is void (etcd): warned about ahead of time.
    own_not_after: Option<u64>,
    follower: Follower,
    publisher: Publisher,
    /// TCP ports published on `[::1]`, which the kernel cannot forward.
    loopback_ports: LoopbackPorts,
    /// When to hand the publisher what peers see this host at, next.
    next_observed: Instant,
    queues: Queues,
    /// Networks with members here: their host member and DNS settings.
    networks: LocalNetworks,
    forwarder: Forwarder,
    path_mtus: pmtu::PathMtus,
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
    let state = &config.state_dir;
    let lock = FileLock::try_acquire(&state.daemon_lock())?
        .ok_or_else(|| Error::DaemonAlreadyRunning(state.to_path_buf()))?;
    let keys = StaticKeys::load_or_generate(&state.host_key())?;
    write_atomic(&state.host_pub(), encode_key(&keys.public).as_bytes())?;
    let settings = serde_json::to_vec_pretty(&config).expect("config serialises");
    write_atomic(&state.daemon_settings(), &settings)?;

    raise_open_file_limit();
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
    let served = attachment::all(state)
        .map(|records| records.into_iter().map(|r| r.network).collect())
        .unwrap_or_default();
    let follower = Follower::spawn(lighthouse.clone(), served, wake.clone(), FIRST_READ)?;
    let publisher = Publisher::spawn(
        lighthouse.clone(),
        host.public_key.clone(),
        config.listen,
        config.tuning.relay(),
    )?;
    let services = Services {
        follower,
        publisher,
        loopback_ports: LoopbackPorts::spawn(crate::host_member::relay_table(config.listen))?,
    };
    let mut daemon = Daemon::new(config, keys, rx, wake.clone(), services, identity)?;
    daemon.recover();
    if let Some(address) = &daemon.config.tuning.metrics {
        metrics_server::spawn(address, tx.clone(), wake.clone())?;
    }
    let control = control_server::spawn(listener, tx, wake, lighthouse, host);
    if let Some(socket) = &daemon.config.tuning.user_socket {
        let grants = users::grants::grants_path(daemon.config.tuning.users.as_deref());
        let service = UserService::new(daemon.config.clone(), grants);
        user_server::spawn(user_server::bind(socket)?, service, socket.clone())?;
    }
    signals::spawn(daemon.config.state_dir.clone());
    notify::ready(ready);
    tracing::info!(
        "flatnetd serving {} on {} ({} containers)",
        daemon.config.state_dir.display(),
        daemon.config.listen,
        daemon.queues.containers()
    );
    daemon.event_loop()?;
    notify::systemd("STOPPING=1");
    // Stopped by request: stop listening, release the port, the devices and the lock, and only
    // then answer, so a `flatnetd start` right after `stop` finds everything free.
    let _ = std::fs::remove_file(daemon.config.state_dir.control_socket());
    if let Some(socket) = &daemon.config.tuning.user_socket {
        let _ = std::fs::remove_file(socket);
    }
    if let Some(MetricsAddress::Unix(path)) = &daemon.config.tuning.metrics {
        let _ = std::fs::remove_file(path);
    }
    let reply = daemon.shutdown_reply.take();
    drop(daemon);
    drop(lock);
    if let Some(reply) = reply {
        let _ = reply.send(Ok(Reply::Done));
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
    trust: Option<TrustBundle>,
    /// When the host's own certificate is void (etcd).
    not_after: Option<u64>,
}

/// A descriptor per container queue and per DNS query in flight: the soft limit on open files
/// (1024 unless raised) is raised to the hard one, so that a busy host does not run out.
fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("raising the open file limit to {hard}: {e}");
            }
        }
    }
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
                not_after: None,
            };
            Ok((Arc::new(FileLighthouse::new(path.clone())), identity))
        }
        LighthouseSettings::Etcd(settings) => {
            let trust = TrustBundle::load(&settings.network_ca_file)?;
            let own =
                cert::load_host_cert(&settings.host_cert_file, &trust, Some(&host.public_key))?;
            if let Some(warning) = cert::expiry_warning(own.not_after, cert::now_unix()) {
                tracing::warn!("{warning}");
            }
            let identity = Identity {
                name: own.name.clone(),
                trust: Some(trust),
                not_after: Some(own.not_after),
            };
            let etcd = EtcdLighthouse::connect(settings, own)?;
            etcd.adopt(recorded_entries(&config.state_dir, host));
            etcd.hold_lease(config.state_dir.etcd_lease());
            if !etcd.wait_for_lease(FIRST_READ) {
                tracing::warn!("no etcd lease yet: attaches wait for etcd");
            }
            Ok((Arc::new(etcd), identity))
        }
    }
}

/// The lighthouse entries this host's records stand for: containers and host members.
fn recorded_entries(state_dir: &StateDir, host: &HostInfo) -> Vec<crate::lighthouse::Entry> {
    let records = attachment::all(state_dir).unwrap_or_default();
    let networks: std::collections::BTreeMap<&str, NetworkId> = records
        .iter()
        .map(|r| (r.network.as_str(), r.wire_network_id()))
        .collect();
    let members = networks.into_iter().flat_map(|(network, network_id)| {
        let member = HostMember::load(&state_dir.network(network)).ok().flatten();
        let host = host.clone();
        member.into_iter().flat_map(move |member| {
            let host = host.clone();
            member
                .addresses
                .iter()
                .map(|&ip| crate::lighthouse::Entry {
                    network: member.network.clone(),
                    network_id,
                    ip,
                    container_id: member.id.clone(),
                    names: Vec::new(),
                    host: host.clone(),
                })
                .collect::<Vec<_>>()
        })
    });
    let containers = records.iter().flat_map(|r| {
        r.ips().map(|ip| crate::lighthouse::Entry {
            network: r.network.clone(),
            network_id: r.wire_network_id(),
            ip,
            container_id: r.container_id.clone(),
            names: r.names.clone(),
            host: host.clone(),
        })
    });
    containers.chain(members).collect()
}

impl Daemon {
    fn new(
        config: DaemonConfig,
        keys: StaticKeys,
        commands: Receiver<Command>,
        wake: Arc<EventFd>,
        services: Services,
        identity: Identity,
    ) -> Result<Self> {
        let Lanes {
            transport: udp,
            handshakes: handshake_udp,
        } = open_underlay(config.listen)?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
            .map_err(|e| Error::io("creating epoll", e.into()))?;
        let readable = |token| EpollEvent::new(EpollFlags::EPOLLIN, token);
        let forwarder = Forwarder::new()?;
        epoll
            .add(udp.as_fd(), readable(TOKEN_UDP))
            .and_then(|()| epoll.add(handshake_udp.as_fd(), readable(TOKEN_HANDSHAKES)))
            .and_then(|()| epoll.add(wake.as_fd(), readable(TOKEN_WAKE)))
            .and_then(|()| epoll.add(forwarder.fd(), readable(TOKEN_DNS)))
            .map_err(|e| Error::io("registering with epoll", e.into()))?;
        let poll = IdlePoll::new(config.tuning.poll_us(), TICK);
        let workers = config
            .tuning
            .workers
            .map_or_else(seal_workers::default_count, usize::from)
            .min(MAX_WORKERS);
        let frame_len = BUFFER + offload::VNET_HDR_LEN;
        let (seal_workers, open_workers) = match workers {
            0 => (None, None),
            n => (
                Some(SealWorkers::spawn(n, &udp, frame_len)?),
                Some(OpenWorkers::spawn(n, offload::DECRYPT_OFFSET)?),
            ),
        };
        let defaults = Limits::default();
        let limits = Limits {
            persistent_keepalive: config.tuning.persistent_keepalive(),
            // The operator's own setting, on or off, replaces the one for NAT.
            nat_keepalive: defaults
                .nat_keepalive
                .filter(|_| config.tuning.persistent_keepalive_s.is_none()),
            ..defaults
        }
        .rekeying_after(config.tuning.rekey_after());
        let mut tunnels = TunnelManager::new(keys, limits);
        tunnels.set_published_endpoint(config.listen);
        if config.tuning.relay() {
            tunnels.serve_as_relay();
        }
        let path_mtus = pmtu::PathMtus::new(config.listen.ip());
        tunnels
            .remember_init_timestamps(handshake_memory::load(&config.state_dir.init_timestamps()));
        let mut routes = identity
            .trust
            .map_or_else(RouteTable::default, RouteTable::trusting);
        routes.admit_certified(config.tuning.relay());
        Ok(Daemon {
            config,
            udp,
            handshake_udp,
            seal_workers,
            open_workers,
            epoll,
            wake,
            commands,
            tunnels,
            handshake_save: handshake_memory::SaveClock::new(Instant::now()),
            routes,
            own_name: identity.name,
            own_not_after: identity.not_after,
            follower: services.follower,
            publisher: services.publisher,
            loopback_ports: services.loopback_ports,
            next_observed: Instant::now(),
            queues: Queues::default(),
            networks: LocalNetworks::default(),
            forwarder,
            path_mtus,
            drops: DropCounters::default(),
            fast_path: FastPathStats::default(),
            bufs: Buffers {
                frame: vec![0; frame_len],
                plain: vec![0; BUFFER + offload::VNET_HDR_LEN],
                out: vec![0; BUFFER],
                received: Some(RecvBatch::new()),
                handshakes_received: Some(RecvBatch::new()),
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
        match attachment::all(&self.config.state_dir) {
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
            // The handshake lane comes last, so established tunnels' packets come first.
            let mut handshakes = false;
            for event in &events[..n] {
                match event.data() {
                    TOKEN_UDP => self.on_udp_readable(),
                    TOKEN_HANDSHAKES => handshakes = true,
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
            if handshakes {
                self.on_handshakes_readable();
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
        self.save_init_timestamps(now);
        if now >= self.next_observed {
            self.publisher.observed(self.tunnels.observed_endpoints());
            self.next_observed = now + OBSERVED_EVERY;
        }
        self.path_mtus.forget_idle(now);
        if !self.routes.expire_certs(crate::cert::now_unix()).is_empty() {
            self.close_delisted_tunnels();
        }
    }

    fn save_init_timestamps(&mut self, now: Instant) {
        if !self.handshake_save.due(now) {
            return;
        }
        if let Some(timestamps) = self.tunnels.changed_init_timestamps() {
            let path = self.config.state_dir.init_timestamps();
            if let Err(e) = handshake_memory::save(&path, &timestamps) {
                tracing::warn!("keeping initiation timestamps: {e}");
            }
        }
    }

    fn on_commands(&mut self) {
        let _ = self.wake.read();
        self.apply_lighthouse_changes();
        while let Ok((request, reply)) = self.commands.try_recv() {
            let response = match request {
                DataPlaneRequest::Attach {
                    network,
                    container_id,
                } => self.attach_recorded(&network, &container_id),
                DataPlaneRequest::Detach {
                    network,
                    container_id,
                } => {
                    self.detach(&network, &container_id);
                    Ok(Reply::Done)
                }
                DataPlaneRequest::Status => Ok(Reply::Status(Box::new(self.status()))),
                DataPlaneRequest::Shutdown => {
                    // Answered by `run` once everything is closed.
                    self.running = false;
                    self.shutdown_reply = Some(reply);
                    continue;
                }
            };
            let _ = reply.send(response);
        }
    }

    fn apply_lighthouse_changes(&mut self) {
        for change in self.follower.pending() {
            self.routes.apply(change);
        }
        for (key, believed) in self.routes.take_changed_candidates() {
            self.tunnels
                .set_candidates(key, believed.endpoints, believed.relay);
        }
        self.close_delisted_tunnels();
    }

    /// Hosts that serve nothing any more (their entries went, their certificate expired or
    /// was revoked) keep no tunnel.
    fn close_delisted_tunnels(&mut self) {
        for key in self.routes.take_delisted() {
            self.tunnels.close_tunnel(&key);
        }
    }

    /// This host's own entry, as the lighthouse has it (or will in a moment).
    fn own_entry(
        &self,
        network: &str,
        network_id: NetworkId,
        ip: std::net::IpAddr,
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
        let refuse = |e: Error| Refusal::new(e.to_string());
        match attachment::find(&self.config.state_dir, network, container_id) {
            Ok(Some(record)) => self.attach(&record).map(|()| Reply::Done).map_err(refuse),
            Ok(None) => Err(Refusal::new(format!(
                "no attachment record for {container_id} on {network}"
            ))),
            Err(e) => Err(refuse(e)),
        }
    }

    fn status(&self) -> DaemonStatus {
        let now = Instant::now();
        let tuning = &self.config.tuning;
        DaemonStatus {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            protocol: PROTOCOL_VERSION,
            public_key: encode_key(self.tunnels.public_key()),
            listen: self.config.listen,
            candidates: self.publisher.published(),
            lighthouse: self.config.lighthouse.to_string(),
            lighthouse_state: self.follower.health(),
            metrics: tuning.metrics.clone(),
            persistent_keepalive_s: tuning.persistent_keepalive().map(|d| d.as_secs() as u32),
            same_host: tuning.same_host(),
            seal_workers: self
                .seal_workers
                .as_ref()
                .map_or_else(Vec::new, SealWorkers::status),
            open_workers: self
                .open_workers
                .as_ref()
                .map_or_else(Vec::new, OpenWorkers::status),
            busy_us: self.busy.as_micros() as u64,
            uptime_ms: now.duration_since(self.started).as_millis() as u64,
            rss_kib: rss_kib(),
            routes: self.routes.len(),
            routes_withdrawn: self.routes.withdrawn(),
            refused_entries: self.routes.refused(),
            certificate_not_after: self.own_not_after,
            containers: self.queues.iter().map(member_status).collect(),
            peers: self.peer_status(now),
            relay: self.config.tuning.relay(),
            relayed: self.tunnels.relayed_pairs(),
            sessions: self.tunnels.session_count(),
            networks: self.networks.status(),
            dns: self.forwarder.stats.clone(),
            fast_path: self.fast_path.clone(),
            drops: self.drops.to_status(),
            poll: PollStatus {
                window_us: self.poll.window_us(),
                stats: self.poll.stats().clone(),
            },
        }
    }

    /// The tunnels' view of each peer, with the path MTU the data plane knows.
    fn peer_status(&self, now: Instant) -> Vec<crate::tunnel::PeerStatus> {
        let mut peers = self.tunnels.status(now);
        for peer in &mut peers {
            peer.path_mtu = self.path_mtus.path_mtu(peer.endpoint);
        }
        peers
    }
}

fn member_status(queue: &queues::Queue) -> MemberStatus {
    MemberStatus {
        network: queue.network.clone(),
        container_id: queue.container_id.clone(),
        ifname: queue.ifname.clone(),
        addresses: queue.addresses.clone(),
        host_member: queue.is_host(),
        published_ports: queue.published.iter().map(ToString::to_string).collect(),
        stats: queue.stats.clone(),
    }
}

/// The `send` callback of the tunnel manager: queue in the batch, send when it is full.
/// Starts a thread beside the packet thread, named `name`. The packet thread waits for what
/// its workers hold (frames, chunks), so a worker that panics aborts the daemon rather than
/// leave it waiting or its flows unsent: the next start (systemd's, or the next plugin call's)
/// serves every container again from its record.
fn spawn_worker(
    name: String,
    work: impl FnOnce() + Send + 'static,
) -> Result<std::thread::JoinHandle<()>> {
    let what = name.clone();
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).is_err() {
                tracing::error!("worker {what} failed: aborting flatnetd");
                std::process::abort();
            }
        })
        .map_err(|e| Error::io("starting a worker thread", e))
}

/// The underlay port's two lanes, non-blocking, with large buffers and kernel drops counted.
fn open_underlay(listen: SocketAddr) -> Result<Lanes> {
    let lanes = lanes::bind(listen, MSG_TRANSPORT).context(|| format!("binding UDP {listen}"))?;
    for lane in [&lanes.transport, &lanes.handshakes] {
        lane.set_nonblocking(true)
            .context(|| "making the UDP socket non-blocking")?;
        // Bursts from a TCP window arrive faster than one thread drains them; the default
        // buffers (208 KiB) overflow and TCP mistakes that for congestion.
        if let Err(e) = setsockopt(lane, sockopt::RcvBufForce, &SOCKET_BUFFER) {
            tracing::warn!("enlarging UDP buffers: {e}");
        }
        if let Err(e) = batch::count_kernel_drops(lane.as_raw_fd()) {
            tracing::warn!("enabling SO_RXQ_OVFL: {e}");
        }
    }
    let udp = &lanes.transport;
    if let Err(e) = setsockopt(udp, sockopt::SndBufForce, &SOCKET_BUFFER) {
        tracing::warn!("enlarging UDP buffers: {e}");
    }
    if let Err(e) = pmtu::forbid_fragmenting(udp) {
        tracing::warn!("setting DF on the tunnel's datagrams: {e}");
    }
    // Trains of datagrams from one peer arrive as one message (split in `RecvBatch`).
    if let Err(e) = batch::enable_gro(udp.as_raw_fd()) {
        tracing::warn!("enabling UDP GRO: {e}");
    }
    Ok(lanes)
}

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

    #[test]
    fn epoll_timeouts_round_up_so_the_loop_never_spins_before_a_tick() {
        let now = Instant::now();
        assert_eq!(millis_until(now + Duration::from_micros(300), now), 1);
        assert_eq!(millis_until(now + Duration::from_micros(1001), now), 2);
        assert_eq!(millis_until(now + Duration::from_millis(100), now), 100);
        assert_eq!(millis_until(now, now + Duration::from_millis(5)), 0);
    }
}
