//! Convergence on an etcd lighthouse, as a benchmark that prints numbers and asserts only
//! that everything converged: N hosts (each its own flatnetd), a 3-member etcd, M containers
//! a host. For every container after the first of each host: a ping to its address runs from
//! every other host before its ADD, and the time from ADD's return to each first answer is
//! taken from the answers' own timestamps.
//!
//! CI runs a small cluster; `make bench-convergence` runs 30 hosts with 10 containers each
//! (FLATNET_BENCH_HOSTS, FLATNET_BENCH_PER_HOST). Needs root, etcd, iputils ping and curl.

mod cluster;

use flatnet_test_support::needs_root;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use cluster::*;

/// How long a probe waits for its first answer before the run counts as not converged.
const PROBE_LIMIT_S: &str = "10";

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The k-th container's address in host `host`'s block of the benchmark subnet
/// (198.18.0.0/15 is the range set aside for benchmarks).
fn address(cluster: &Cluster, host: usize, k: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(cluster.block(host).network()) + 1 + k as u32)
}

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
    for endpoint in etcd.endpoints() {
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

#[test]
fn convergence_on_etcd() {
    needs_root!();
    let hosts = setting("FLATNET_BENCH_HOSTS", 4);
    let per_host = setting("FLATNET_BENCH_PER_HOST", 3);
    let mut cluster = Cluster::with_etcd_in(hosts, 3, "198.18.0.0/22");

    // One container a host first: the probes' sources.
    let probes_from: Vec<usize> = (0..hosts)
        .map(|h| {
            let ip = address(&cluster, h, 0);
            cluster.attach_at(h, ip).0
        })
        .collect();

    let requests_before = etcd_requests(&cluster);
    let (mut add_latency, mut every_host, mut each_pair) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..per_host {
        for h in 0..hosts {
            let ip = address(&cluster, h, round);
            let probes: Vec<Probe> = (0..hosts)
                .filter(|&other| other != h)
                .map(|other| Probe::start(&cluster, probes_from[other], ip))
                .collect();
            let (_, took) = cluster.attach_at(h, ip);
            let added = now_s();
            add_latency.push(took.as_secs_f64());
            let answers: Vec<f64> = probes
                .into_iter()
                .map(|p| {
                    let first = p.finish().unwrap_or_else(|| {
                        panic!(
                            "{ip} (host {h}) unanswered within {PROBE_LIMIT_S} s; host {h}: {}; host {}: {}",
                            cluster.status(h)["drops"],
                            (h + 1) % hosts,
                            cluster.status((h + 1) % hosts)
                        )
                    });
                    (first - added).max(0.0)
                })
                .collect();
            every_host.push(answers.iter().copied().fold(0.0, f64::max));
            each_pair.extend(answers);
        }
    }
    let attaches = add_latency.len() as f64;
    let requests = (etcd_requests(&cluster) - requests_before) / attaches;
    let status = cluster.status(0);
    let peers = status["peers"].as_array().unwrap().len();

    println!("convergence on etcd: {hosts} hosts, {per_host} containers each, 3 etcd members");
    println!(
        "  ADD returned -> answered from every other host: {}",
        summary(&mut every_host)
    );
    println!(
        "  ADD returned -> answered from one other host:   {}",
        summary(&mut each_pair)
    );
    println!(
        "  ADD latency:                                   {}",
        summary(&mut add_latency)
    );
    println!(
        "  etcd unary requests per attach (all members, lease renewals included): {requests:.1}"
    );
    println!(
        "  flatnetd of host 0: {} KiB RSS with {peers} peers and {} routes",
        status["rss_kib"], status["routes"]
    );
    assert_eq!(
        status["routes"].as_u64().unwrap() as usize,
        hosts * per_host + hosts
    );
}
