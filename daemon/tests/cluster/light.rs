//! Light hosts for simulations at scale: each is the library's etcd lighthouse and route table
//! as flatnetd runs them ([`flatnet::dataplane::LightHost`]), without TUN devices, sockets or
//! tunnels, many in the test's own process. Each has what a real host has on etcd: its own
//! client certificate and etcd user with a real host's role, a host certificate from the
//! network CA, a lease, its entries and candidates, and a watch of its networks.
//!
//! Every light host runs a thread that applies what its feed reports and tells the test when
//! an address it was asked to look for is routed; the test reads each one's counters from a
//! snapshot that thread keeps.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, Identity, Permission, TlsOptions};
use flatnet::cert::{self, CaKey, CertNetwork, Grant, NetworkRegistry, TrustBundle};
use flatnet::dataplane::LightHost;
use flatnet::lighthouse::{
    Candidates, EtcdLighthouse, EtcdSettings, FeedHealth, HostInfo, Lighthouse, DEFAULT_LEASE_TTL_S,
};
use flatnet::netns::NetworkNamespace;
use flatnet::tunnel::encode_key;

use super::etcd::Etcd;
use super::{block_in, Cluster};

/// How long a light host's thread waits for its feed before it looks at its flags again.
const IDLE: Duration = Duration::from_secs(1);

/// A network the simulation runs: its name, subnet and the identifier the network CA gave it.
#[derive(Clone)]
pub struct SimNetwork {
    pub name: String,
    pub subnet: ipnet::Ipv4Net,
    pub id: u32,
}

/// What a light host's thread last saw.
#[derive(Clone, Default)]
pub struct Snapshot {
    pub routes: usize,
    pub withdrawn: u64,
    pub health: FeedHealth,
}

/// An address the test waits for: every light host serving `network` reports when it routes
/// `ip`, once per `round`.
#[derive(Clone, Copy)]
struct Sought {
    round: u64,
    network_id: u32,
    ip: Ipv4Addr,
}

pub struct Light {
    pub name: String,
    /// The cluster-wide host number (real hosts first): its blocks are the ones of that number.
    pub number: usize,
    pub networks: Vec<SimNetwork>,
    lighthouse: Arc<EtcdLighthouse>,
    public_key: String,
    endpoint: SocketAddr,
    snapshot: Arc<Mutex<Snapshot>>,
    thread: Option<JoinHandle<()>>,
    /// Containers registered, per network (by position in `networks`).
    registered: Vec<usize>,
}

pub struct LightHosts {
    pub hosts: Vec<Light>,
    shared: Shared,
    found: Receiver<(usize, u64, Instant)>,
    round: u64,
    leases: tempfile::TempDir,
}

/// What the test shares with every light host's thread.
#[derive(Clone)]
struct Shared {
    stop: Arc<AtomicBool>,
    sought: Arc<Mutex<Option<Sought>>>,
    found: Sender<(usize, u64, Instant)>,
}

impl LightHosts {
    pub fn new() -> LightHosts {
        let (found_tx, found) = mpsc::channel();
        LightHosts {
            hosts: Vec::new(),
            shared: Shared {
                stop: Arc::default(),
                sought: Arc::default(),
                found: found_tx,
            },
            found,
            round: 0,
            leases: tempfile::Builder::new()
                .prefix("flatnet-light-")
                .tempdir()
                .unwrap(),
        }
    }

    /// Starts light hosts numbered `numbers` (cluster-wide), each serving `networks_of(n)`:
    /// identities made first (openssl, in parallel), etcd users in one admin session, then
    /// each host connected from the wire namespace, where etcd is.
    pub fn start(
        &mut self,
        cluster: &Cluster,
        numbers: std::ops::Range<usize>,
        networks_of: impl Fn(usize) -> Vec<SimNetwork>,
    ) {
        let etcd = cluster.etcd();
        let names: Vec<String> = numbers.clone().map(|n| format!("light-{n}")).collect();
        make_certificates(etcd, &names);
        let plans: Vec<(usize, String, Vec<SimNetwork>)> = numbers
            .zip(names)
            .map(|(n, name)| (n, name, networks_of(n)))
            .collect();
        let wire = NetworkNamespace::open(&cluster.wire.path).unwrap();
        wire.run_inside(|| {
            add_users(etcd, &plans);
            Ok(())
        })
        .unwrap();
        let ca_dir = cluster.network_ca.as_ref().unwrap().path();
        let ca_key: CaKey = cert::load(&ca_dir.join("ca.key")).unwrap();
        let trust = TrustBundle::load(&ca_dir.join("ca.crt")).unwrap();
        for (number, name, networks) in plans {
            let at = Place {
                index: self.hosts.len(),
                number,
                leases: self.leases.path(),
                shared: &self.shared,
            };
            let light = wire
                .run_inside(|| Ok(connect(etcd, &ca_key, &trust, at, name, networks)))
                .unwrap();
            self.hosts.push(light);
        }
    }

    /// Registers the next container of light host `h` on its `k`-th network, as flatnetd does
    /// for an ADD; returns the network and the address.
    pub fn register(&mut self, h: usize, k: usize) -> (SimNetwork, Ipv4Addr) {
        let light = &mut self.hosts[h];
        let network = light.networks[k].clone();
        let block = block_in(&network.subnet.to_string(), light.number);
        light.registered[k] += 1;
        let ip = Ipv4Addr::from(u32::from(block.network()) + light.registered[k] as u32);
        let entry = flatnet::lighthouse::Entry {
            network: network.name.clone(),
            network_id: network.id,
            ip: ip.into(),
            container_id: format!("{}-{ip}", light.name),
            names: Vec::new(),
            host: HostInfo {
                endpoint: light.endpoint,
                public_key: light.public_key.clone(),
            },
        };
        light.lighthouse.register(&entry).unwrap();
        (network, ip)
    }

    /// From now on, every light host serving `network` reports when it routes `ip`; returns
    /// the round to pass to [`LightHosts::routed_by`].
    pub fn seek(&mut self, network: &SimNetwork, ip: Ipv4Addr) -> u64 {
        self.round += 1;
        *self.shared.sought.lock().unwrap() = Some(Sought {
            round: self.round,
            network_id: network.id,
            ip,
        });
        self.round
    }

    /// When each of `hosts` (light host indexes) routed what `round` sought, waiting at most
    /// `limit` for the last; panics naming those that did not.
    pub fn routed_by(&self, round: u64, hosts: &[usize], limit: Duration) -> Vec<Instant> {
        let deadline = Instant::now() + limit;
        let mut when: Vec<Option<Instant>> = vec![None; self.hosts.len()];
        while hosts.iter().any(|&h| when[h].is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.found.recv_timeout(left) {
                Ok((h, r, at)) if r == round => when[h] = Some(at),
                Ok(_) => {}
                Err(_) => {
                    let missing: Vec<&str> = hosts
                        .iter()
                        .filter(|&&h| when[h].is_none())
                        .map(|&h| self.hosts[h].name.as_str())
                        .collect();
                    panic!("not routed within {limit:?} by {missing:?}");
                }
            }
        }
        hosts.iter().map(|&h| when[h].unwrap()).collect()
    }

    /// The light hosts that serve the network with this identifier.
    pub fn serving(&self, network_id: u32) -> Vec<usize> {
        (0..self.hosts.len())
            .filter(|&h| self.hosts[h].networks.iter().any(|n| n.id == network_id))
            .collect()
    }

    pub fn snapshot(&self, h: usize) -> Snapshot {
        self.hosts[h].snapshot.lock().unwrap().clone()
    }
}

impl Drop for LightHosts {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for light in &mut self.hosts {
            if let Some(thread) = light.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// Where a new light host goes: its index among the light hosts, its cluster-wide number.
struct Place<'a> {
    index: usize,
    number: usize,
    leases: &'a Path,
    shared: &'a Shared,
}

/// A light host connected to etcd (from the calling thread's namespace), holding its lease,
/// with its candidates published and its networks followed by a thread of its own.
fn connect(
    etcd: &Etcd,
    ca_key: &CaKey,
    trust: &TrustBundle,
    at: Place,
    name: String,
    networks: Vec<SimNetwork>,
) -> Light {
    let public_key = encode_key(&random_key());
    let grant = Grant {
        blocks: networks
            .iter()
            .map(|n| block_in(&n.subnet.to_string(), at.number).into())
            .collect(),
        networks: networks
            .iter()
            .map(|n| CertNetwork {
                name: n.name.clone(),
                id: n.id,
            })
            .collect(),
        any_network: false,
        not_after: cert::now_unix() + 86_400,
    };
    let host_cert = ca_key.sign(&name, &public_key, grant).unwrap();
    let client = etcd.certificate(&name);
    let settings = EtcdSettings {
        endpoints: etcd.endpoints(),
        ca_file: etcd.ca_file(),
        cert_file: client.cert,
        key_file: client.key,
        // flatnetd's default: etcd sees the keepalives production brings.
        lease_ttl_s: DEFAULT_LEASE_TTL_S,
        network_ca_file: PathBuf::new(),
        host_cert_file: PathBuf::new(),
    };
    let lighthouse = Arc::new(EtcdLighthouse::connect(&settings, host_cert).unwrap());
    lighthouse.hold_lease(at.leases.join(&name));
    assert!(
        lighthouse.wait_for_lease(Duration::from_secs(10)),
        "{name} takes no lease"
    );
    // Documentation addresses nobody sends to: light hosts carry no traffic.
    let endpoint = SocketAddr::from((
        Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 51, 100, 0)) + (at.number % 250) as u32),
        4800 + (at.number / 250) as u16,
    ));
    lighthouse
        .publish_candidates(&Candidates {
            public_key: public_key.clone(),
            endpoints: vec![endpoint],
            relay: false,
        })
        .unwrap();
    let mut host = LightHost::start(lighthouse.clone(), trust.clone()).unwrap();
    for network in &networks {
        host.serve(network.id, &network.name, network.subnet.into());
    }
    let snapshot = Arc::new(Mutex::new(Snapshot::default()));
    let thread = {
        let (shared, index) = (at.shared.clone(), at.index);
        let (snapshot, served) = (snapshot.clone(), networks.iter().map(|n| n.id).collect());
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || follow(host, index, served, shared, snapshot))
            .unwrap()
    };
    Light {
        registered: vec![0; networks.len()],
        name,
        number: at.number,
        networks,
        lighthouse,
        public_key,
        endpoint,
        snapshot,
        thread: Some(thread),
    }
}

/// A light host's thread: applies its feed, reports what is sought once routed, keeps its
/// snapshot.
fn follow(
    mut host: LightHost,
    index: usize,
    served: Vec<u32>,
    shared: Shared,
    snapshot: Arc<Mutex<Snapshot>>,
) {
    let mut reported = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        host.settle(IDLE);
        let now = Instant::now();
        let wanted = *shared.sought.lock().unwrap();
        if let Some(s) = wanted.filter(|s| s.round != reported && served.contains(&s.network_id)) {
            if host.route(s.network_id, s.ip.into()).is_some() {
                reported = s.round;
                let _ = shared.found.send((index, s.round, now));
            }
        }
        let (routes, withdrawn) = host.routes();
        *snapshot.lock().unwrap() = Snapshot {
            routes,
            withdrawn,
            health: host.health(),
        };
    }
}

/// Client certificates for `names`, two openssl runs each, on a few threads at once.
fn make_certificates(etcd: &Etcd, names: &[String]) {
    let threads = 4;
    std::thread::scope(|s| {
        for part in names.chunks(names.len().div_ceil(threads).max(1)) {
            s.spawn(move || {
                for name in part {
                    etcd.certificate(name);
                }
            });
        }
    });
}

/// Each light host's etcd user and role, as `docs/security.md` gives a host (the same grants
/// as [`Etcd::host_client`]), made through one administrator session.
fn add_users(etcd: &Etcd, plans: &[(usize, String, Vec<SimNetwork>)]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut admin = admin_client(etcd).await;
        for (_, name, networks) in plans {
            admin.role_add(name.as_str()).await.unwrap();
            let mut grants = vec![
                Permission::read_write(format!("/flatnet/v1/hosts/{name}/")).with_prefix(),
                Permission::read("/flatnet/v1/").with_prefix(),
            ];
            for network in networks {
                let prefix = format!("/flatnet/v1/entries/{}/{name}/", network.name);
                grants.push(Permission::read_write(prefix).with_prefix());
            }
            for grant in grants {
                admin
                    .role_grant_permission(name.as_str(), grant)
                    .await
                    .unwrap();
            }
            let password = encode_key(&random_key());
            admin.user_add(name.as_str(), password, None).await.unwrap();
            admin
                .user_grant_role(name.as_str(), name.as_str())
                .await
                .unwrap();
        }
    });
}

async fn admin_client(etcd: &Etcd) -> Client {
    let root = etcd.root();
    let read = |path: &Path| std::fs::read(path).unwrap();
    let tls = TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(read(&etcd.ca_file())))
        .identity(Identity::from_pem(read(&root.cert), read(&root.key)));
    let options = ConnectOptions::new()
        .with_tls(tls)
        .with_timeout(Duration::from_secs(10));
    Client::connect(etcd.endpoints(), Some(options))
        .await
        .unwrap()
}

/// The networks' identifiers as the network CA allotted them (`networks.json` beside its key).
pub fn allotted(cluster: &Cluster, networks: &[(String, String)]) -> Vec<SimNetwork> {
    let ca_dir = cluster.network_ca.as_ref().unwrap().path();
    let mut registry: NetworkRegistry = cert::load(&ca_dir.join("networks.json")).unwrap();
    networks
        .iter()
        .map(|(name, subnet)| SimNetwork {
            name: name.clone(),
            subnet: subnet.parse().unwrap(),
            id: registry.allot(name).unwrap().id,
        })
        .collect()
}

/// 32 random bytes: a light host's Noise key (nobody handshakes with it) or a password.
fn random_key() -> [u8; 32] {
    use std::io::Read;
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut key)
        .unwrap();
    key
}
