//! Flatnet on etcd at scale, as a benchmark that prints numbers and asserts what must hold
//! at any size. Real daemons (each host a namespace with its own flatnetd) and light hosts
//! (the daemon's lighthouse code and route table in this process, [`cluster::light`]) share
//! a 3-member etcd with TLS and RBAC; every host serves two of the networks and follows only
//! those.
//!
//! The run measures twice, first with the real daemons alone, then with the light hosts too,
//! so each figure has its ratio in the same run: for an ADD on a real daemon, the time from
//! its return to the first answer of a ping from every other real host of the network (each
//! ping running before the ADD; iputils' own timestamps), and from its start to the route in
//! every light host of the network; etcd requests an attach; bytes each host read from etcd;
//! flatnetd's memory per 1,000 routes. At full size it then kills etcd's leader and asserts
//! that no host read anything again and no route was withdrawn.
//!
//! CI runs a small simulation; `make bench-convergence` runs 30 real daemons and 270 light
//! hosts with 10 containers each on 10 networks (FLATNET_SCALE_REAL, FLATNET_SCALE_LIGHT,
//! FLATNET_SCALE_PER_HOST, FLATNET_SCALE_NETWORKS). Needs root, etcd, iputils ping and curl.

mod cluster;

use flatnet_test_support::{needs_root, setting};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cluster::light::{allotted, LightHosts, SimNetwork};
use cluster::*;

/// How long a probe waits for its first answer before the run counts as not converged.
const PROBE_LIMIT_S: &str = "10";

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A ping every 5 ms from one container to an address; reports the timestamp of its first
/// answer (iputils' -D) and is killed then.
struct Probe {
    child: Child,
    first_answer: mpsc::Receiver<Option<f64>>,
}

impl Probe {
    fn start(cluster: &Cluster, from: usize, to: Ipv4Addr) -> Probe {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &cluster.containers[from].ns.name])
            // Line-buffered: ping's stdio would hold its lines until it exits.
            .args([
                "stdbuf",
                "-oL",
                "ping",
                "-D",
                "-n",
                "-i",
                "0.005",
                "-w",
                PROBE_LIMIT_S,
            ])
            .arg(to.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("iputils ping");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // The header comes once ping has its socket: from then on it is sending.
        let header = lines.next();
        assert!(matches!(header, Some(Ok(ref l)) if l.starts_with("PING")));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let first = lines.map_while(Result::ok).find_map(|line| {
                let stamp = line.strip_prefix('[')?.split(']').next()?;
                line.contains("bytes from")
                    .then(|| stamp.parse::<f64>().ok())?
            });
            let _ = tx.send(first);
        });
        Probe {
            child,
            first_answer: rx,
        }
    }

    fn finish(mut self) -> Option<f64> {
        let first = self.first_answer.recv().ok().flatten();
        let _ = self.child.kill();
        let _ = self.child.wait();
        first
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank]
}

fn summary(values: &mut [f64]) -> String {
    values.sort_by(f64::total_cmp);
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (n={})",
        percentile(values, 50.0) * 1000.0,
        percentile(values, 99.0) * 1000.0,
        values.last().copied().unwrap_or(f64::NAN) * 1000.0,
        values.len()
    )
}

/// Unary requests etcd's members served, by their Prometheus counters.
fn etcd_requests(cluster: &Cluster) -> f64 {
    let etcd = cluster.etcd();
    let admin = etcd.client(99);
    let unary = [
        "Range",
        "Txn",
        "Put",
        "DeleteRange",
        "LeaseGrant",
        "LeaseTimeToLive",
    ];
    let mut total = 0.0;
    for endpoint in etcd.live_endpoints() {
        let out = Command::new("ip")
            .args(["netns", "exec", &cluster.wire.name, "curl", "-sf"])
            .arg("--cacert")
            .arg(etcd.ca_file())
            .arg("--cert")
            .arg(&admin.cert)
            .arg("--key")
            .arg(&admin.key)
            .arg(format!("{endpoint}/metrics"))
            .output()
            .unwrap();
        assert!(out.status.success(), "metrics of {endpoint}");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let counted = line.starts_with("grpc_server_handled_total{")
                && unary
                    .iter()
                    .any(|m| line.contains(&format!("grpc_method=\"{m}\"")));
            if counted {
                total += line.rsplit(' ').next().unwrap().parse::<f64>().unwrap();
            }
        }
    }
    total
}

/// The run's size.
struct Size {
    real: usize,
    light: usize,
    per_host: usize,
    networks: usize,
}

impl Size {
    fn from_env() -> Size {
        Size {
            real: setting("FLATNET_SCALE_REAL", 4),
            light: setting("FLATNET_SCALE_LIGHT", 36),
            per_host: setting("FLATNET_SCALE_PER_HOST", 4),
            networks: setting("FLATNET_SCALE_NETWORKS", 3),
        }
    }

    /// The networks host `n` (real hosts first) serves: two neighbours in the ring.
    fn networks_of(&self, n: usize) -> Vec<usize> {
        let mut served = vec![n % self.networks, (n + 1) % self.networks];
        served.dedup();
        served
    }
}

/// The simulation: the cluster of real daemons, the light hosts, and what was published.
struct Sim {
    size: Size,
    cluster: Cluster,
    networks: Vec<SimNetwork>,
    light: LightHosts,
    /// Entries published on each network (containers and the real daemons' host members).
    entries: Vec<usize>,
    /// Containers of each real host on each of its networks, and the first (a ping source).
    real_containers: HashMap<(usize, usize), (usize, usize)>,
}

impl Sim {
    fn start(size: Size) -> Sim {
        let named: Vec<(String, String)> = (0..size.networks)
            .map(|k| (format!("scale{k}"), format!("10.{k}.0.0/16")))
            .collect();
        let mut cluster = Cluster::with_etcd_networks(size.real, 3, &named);
        // Long enough that a host cut off from etcd keeps its lease and entries.
        cluster.lease_ttl_s = 60;
        // Each real host's etcd user, with its grants on every network, made now: attaches
        // switch `cluster.network` from one network to another.
        let names: Vec<&str> = named.iter().map(|(name, _)| name.as_str()).collect();
        for h in 0..size.real {
            cluster.etcd().host_client(h, &names);
        }
        let networks = allotted(&cluster, &named);
        let entries = vec![0; size.networks];
        Sim {
            size,
            cluster,
            networks,
            light: LightHosts::new(),
            entries,
            real_containers: HashMap::new(),
        }
    }

    /// ADD on real host `h`'s network `k`, at the next address of its block there; returns
    /// the address and how long ADD took.
    fn attach_real(&mut self, h: usize, k: usize) -> (Ipv4Addr, Duration) {
        let network = &self.networks[k];
        let count = self.real_containers.get(&(h, k)).map_or(0, |c| c.0);
        let block = block_in(&network.subnet.to_string(), h);
        let ip = Ipv4Addr::from(u32::from(block.network()) + 1 + count as u32);
        self.cluster.network = network.name.clone();
        self.cluster.subnet = network.subnet.to_string();
        let (c, took) = self.cluster.attach_at(h, ip);
        let slot = self.real_containers.entry((h, k)).or_insert((0, c));
        slot.0 += 1;
        // The first container of a host on a network brings its host member.
        self.entries[k] += if count == 0 { 2 } else { 1 };
        (ip, took)
    }

    /// Every host's containers up to `per_host`, spread over its networks.
    fn fill_real(&mut self) {
        for h in 0..self.size.real {
            let served = self.size.networks_of(h);
            for i in 0..self.size.per_host {
                self.attach_real(h, served[i % served.len()]);
            }
        }
    }

    fn start_light(&mut self) {
        let first = self.size.real;
        let numbers = first..first + self.size.light;
        let (networks, size) = (&self.networks, &self.size);
        self.light.start(&self.cluster, numbers, |n| {
            size.networks_of(n)
                .into_iter()
                .map(|k| networks[k].clone())
                .collect()
        });
        for h in 0..self.size.light {
            let served = self.size.networks_of(first + h);
            for i in 0..self.size.per_host {
                let slot = i % served.len();
                self.light.register(h, slot);
                self.entries[served[slot]] += 1;
            }
        }
    }

    /// The routes host `n` must hold: every entry of its networks and none other.
    fn expected_routes(&self, n: usize) -> usize {
        self.size
            .networks_of(n)
            .iter()
            .map(|&k| self.entries[k])
            .sum()
    }

    /// Waits until every host holds exactly the routes of its networks.
    fn wait_converged(&self, within: Duration) -> Duration {
        wait_until(
            within,
            "every host holds the routes of its networks",
            || {
                let real = (0..self.size.real)
                    .all(|h| routes(&self.cluster, h) as usize == self.expected_routes(h));
                let light = (0..self.light.hosts.len()).all(|h| {
                    let n = self.light.hosts[h].number;
                    self.light.snapshot(h).routes == self.expected_routes(n)
                });
                real && light
            },
        )
    }

    /// The other real hosts serving network `k` (each with a container there to ping from).
    fn real_peers(&self, h: usize, k: usize) -> Vec<usize> {
        (0..self.size.real)
            .filter(|&o| o != h && self.real_containers.contains_key(&(o, k)))
            .collect()
    }
}

/// Figures of one measurement.
#[derive(Default)]
struct Figures {
    every_real: Vec<f64>,
    every_light: Vec<f64>,
    add: Vec<f64>,
    requests_per_attach: f64,
}

/// `samples` ADDs on real daemons, each on the first network of its host, timed from their
/// return to the answers of every other real host, and from their start to the routes of
/// every light host of the network.
fn measure(sim: &mut Sim, samples: usize) -> Figures {
    let mut figures = Figures::default();
    let requests_before = etcd_requests(&sim.cluster);
    for i in 0..samples {
        let h = i % sim.size.real;
        let k = sim.size.networks_of(h)[0];
        let network = sim.networks[k].clone();
        let count = sim.real_containers[&(h, k)].0;
        let ip = Ipv4Addr::from(
            u32::from(block_in(&network.subnet.to_string(), h).network()) + 1 + count as u32,
        );
        let probes: Vec<Probe> = sim
            .real_peers(h, k)
            .into_iter()
            .map(|o| Probe::start(&sim.cluster, sim.real_containers[&(o, k)].1, ip))
            .collect();
        let round = sim.light.seek(&network, ip);
        let began = Instant::now();
        let (attached, took) = sim.attach_real(h, k);
        assert_eq!(attached, ip);
        let added_s = now_s();
        figures.add.push(took.as_secs_f64());
        let serving = sim.light.serving(network.id);
        let light = sim
            .light
            .routed_by(round, &serving, Duration::from_secs(10));
        // Light hosts usually route the address before ADD returns: timed from its start.
        let slowest_light = light.iter().map(|at| at.saturating_duration_since(began));
        if let Some(max) = slowest_light.max() {
            figures.every_light.push(max.as_secs_f64());
        }
        let answers = probes.into_iter().map(|p| {
            let first = p
                .finish()
                .unwrap_or_else(|| panic!("{ip} (host {h}) unanswered"));
            (first - added_s).max(0.0)
        });
        if let Some(max) = answers.reduce(f64::max) {
            figures.every_real.push(max);
        }
    }
    figures.requests_per_attach = (etcd_requests(&sim.cluster) - requests_before) / samples as f64;
    figures
}

fn print_figures(label: &str, figures: &mut Figures) {
    println!("  {label}:");
    println!(
        "    ADD returned -> answered from every other real host: {}",
        summary(&mut figures.every_real)
    );
    println!(
        "    ADD began -> routed by every light host:             {}",
        summary(&mut figures.every_light)
    );
    println!(
        "    ADD latency:                                         {}",
        summary(&mut figures.add)
    );
    println!(
        "    etcd unary requests per attach (all members, every host's lease renewals included): {:.1}",
        figures.requests_per_attach
    );
}

/// Bytes each host read from etcd: (min, median, max) KiB over real daemons and light hosts.
fn bytes_read(sim: &Sim) -> (f64, f64, f64) {
    let mut kib: Vec<f64> = (0..sim.size.real)
        .map(|h| {
            sim.cluster.status(h)["lighthouse_state"]["read_bytes"]
                .as_f64()
                .unwrap()
        })
        .chain((0..sim.light.hosts.len()).map(|h| sim.light.snapshot(h).health.read_bytes as f64))
        .map(|b| b / 1024.0)
        .collect();
    kib.sort_by(f64::total_cmp);
    (kib[0], kib[kib.len() / 2], kib[kib.len() - 1])
}

/// This process's resident memory (KiB) and threads.
fn process_status() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("Threads:"))
}

/// Full reads and routes withdrawn, of every host (real daemons first).
fn counters(sim: &Sim) -> Vec<(u64, u64)> {
    let real = (0..sim.size.real).map(|h| {
        let status = sim.cluster.status(h);
        (
            status["lighthouse_state"]["full_reads"].as_u64().unwrap(),
            status["routes_withdrawn"].as_u64().unwrap(),
        )
    });
    let light = (0..sim.light.hosts.len()).map(|h| {
        let snapshot = sim.light.snapshot(h);
        (snapshot.health.full_reads, snapshot.withdrawn)
    });
    real.chain(light).collect()
}

fn resumed(sim: &Sim) -> u64 {
    let real: u64 = (0..sim.size.real)
        .map(|h| {
            sim.cluster.status(h)["lighthouse_state"]["resumed_watches"]
                .as_u64()
                .unwrap()
        })
        .sum();
    let light: u64 = (0..sim.light.hosts.len())
        .map(|h| sim.light.snapshot(h).health.resumed_watches)
        .sum();
    real + light
}

fn all_healthy(sim: &Sim) -> bool {
    (0..sim.size.real).all(|h| sim.cluster.status(h)["lighthouse_state"]["healthy"] == true)
        && (0..sim.light.hosts.len()).all(|h| sim.light.snapshot(h).health.healthy)
}

#[test]
fn convergence_at_scale() {
    needs_root!();
    let size = Size::from_env();
    let samples = setting("FLATNET_SCALE_SAMPLES", size.real * 2);
    let total = size.real + size.light;
    let mut sim = Sim::start(size);
    sim.fill_real();
    sim.wait_converged(Duration::from_secs(60));
    let small = measure(&mut sim, samples);
    let rss_small = sim.cluster.status(0);

    let process_before = process_status();
    let started = Instant::now();
    sim.start_light();
    let took = sim.wait_converged(Duration::from_secs(300));
    let (started_in, converged_in) = (started.elapsed() - took, took);
    let large = measure(&mut sim, samples);
    let rss_large = sim.cluster.status(0);

    // Each host follows its networks and holds nothing of the others.
    for h in 0..sim.light.hosts.len() {
        let light = &sim.light.hosts[h];
        let mut served: Vec<String> = light.networks.iter().map(|n| n.name.clone()).collect();
        served.sort();
        assert_eq!(
            sim.light.snapshot(h).health.networks,
            Some(served),
            "{}",
            light.name
        );
    }

    let s = &sim.size;
    println!(
        "etcd at scale: {} real daemons, then {total} hosts ({} light); {} containers a host; \
         {} networks, two a host; 3 etcd members",
        s.real, s.light, s.per_host, s.networks
    );
    let mut small = small;
    let mut large = large;
    print_figures(&format!("{} hosts", s.real), &mut small);
    print_figures(&format!("{total} hosts"), &mut large);
    println!(
        "  {} light hosts started in {:.1} s; every host converged {:.1} s later",
        s.light,
        started_in.as_secs_f64(),
        converged_in.as_secs_f64()
    );
    let (rss_kib, threads) = process_status();
    let light = sim.size.light.max(1) as f64;
    println!(
        "  a light host costs this process {:.0} KiB and {:.1} threads",
        (rss_kib - process_before.0) / light,
        (threads - process_before.1) / light
    );
    let (min, median, max) = bytes_read(&sim);
    println!("  read from etcd a host, in the run: min {min:.0} KiB, median {median:.0} KiB, max {max:.0} KiB");
    let rss = |status: &serde_json::Value| {
        (
            status["rss_kib"].as_f64().unwrap(),
            status["routes"].as_f64().unwrap(),
        )
    };
    let ((rss0, routes0), (rss1, routes1)) = (rss(&rss_small), rss(&rss_large));
    println!(
        "  flatnetd of host 0: {rss0:.0} KiB with {routes0} routes, {rss1:.0} KiB with {routes1} \
         routes: {:.0} KiB per 1,000 routes",
        (rss1 - rss0) / (routes1 - routes0).max(1.0) * 1000.0
    );

    // etcd's leader killed: watches break and resume; nobody reads again, no route goes.
    let before = counters(&sim);
    let resumed_before = resumed(&sim);
    let leader = sim.cluster.etcd().leader();
    sim.cluster.etcd.as_mut().unwrap().kill_member(leader);
    wait_until(Duration::from_secs(30), "a new leader", || {
        sim.cluster.etcd().leader_now().is_some_and(|l| l != leader)
    });
    let recovered = wait_until(Duration::from_secs(60), "every host healthy again", || {
        all_healthy(&sim)
    });
    let mut after_kill = measure(&mut sim, 1.max(samples / 4));
    assert_eq!(
        counters(&sim),
        before,
        "full reads or withdrawn routes after the leader's death"
    );
    println!(
        "  leader killed: every host healthy {:.1} s later, {} watches resumed, no full read, no route withdrawn",
        recovered.as_secs_f64(),
        resumed(&sim) - resumed_before
    );
    print_figures("right after the leader's death", &mut after_kill);
    sim.cluster
        .etcd
        .as_mut()
        .unwrap()
        .restart_members(&[leader]);
    compaction_past_a_cut_off_host(&mut sim);
}

/// Real host 0 is cut off from etcd while another host attaches and etcd compacts past host
/// 0's revision. Back in reach, host 0 reads each of its scopes once (the hosts, the
/// revocations, its networks), after its random pause; no other host reads anything again.
fn compaction_past_a_cut_off_host(sim: &mut Sim) {
    let cut = |sim: &Sim, action: &str| {
        for ip in sim.cluster.etcd().addresses() {
            sim.cluster.hosts[0]
                .ns
                .ip(&["route", action, "blackhole", &format!("{ip}/32")]);
        }
    };
    let before = counters(sim);
    cut(sim, "add");
    // Every watch of host 0 broken (one connection per member, each noticed on its own), so
    // none of them can carry on past the compaction.
    let mut scopes = vec!["hosts: ".to_string(), "revocations: ".to_string()];
    for k in sim.size.networks_of(0) {
        scopes.push(format!("network {}: ", sim.networks[k].name));
    }
    wait_until(Duration::from_secs(30), "host 0's watches break", || {
        let state = &sim.cluster.status(0)["lighthouse_state"];
        let error = state["error"].as_str().unwrap_or_default().to_string();
        scopes.iter().all(|scope| error.contains(scope))
    });
    let k = sim.size.networks_of(0)[0];
    let other = sim.real_peers(0, k)[0];
    sim.attach_real(other, k);
    let etcd = sim.cluster.etcd();
    // Something after the new container's entry, so the compaction passes it too.
    etcd.etcdctl(&etcd.live_endpoints(), &["put", "/elsewhere", "x"]);
    etcd.compact(etcd.revision());
    cut(sim, "del");
    let took = sim.wait_converged(Duration::from_secs(30));
    let scopes = scopes.len() as u64;
    let full_reads = |sim: &Sim| counters(sim)[0].0;
    // Each scope waits its own random pause (up to 5 s) before it reads.
    wait_until(Duration::from_secs(20), "host 0 read every scope", || {
        full_reads(sim) >= before[0].0 + scopes
    });
    let after = counters(sim);
    assert_eq!(
        after[0].0,
        before[0].0 + scopes,
        "host 0 reads each scope once"
    );
    assert_eq!(
        after[1..],
        before[1..],
        "no other host reads again or withdraws a route"
    );
    println!(
        "  compaction past host 0's revision: host 0 read its {scopes} scopes once each and \
         held the new route {:.1} s after it was back in reach; no other host read anything",
        took.as_secs_f64()
    );
}
