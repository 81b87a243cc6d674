//! Phase 1 stage 5 with real Podman, both backends: the Forgejo + runner stand-in
//! (`examples/forgejo/standin/`) on a Flatnet network. The runner connects to the forge by name
//! over Flatnet and shows online in the forge's API; a push over HTTP from the host, through
//! the forge's published port, runs `.forgejo/workflows/hello.yml`: the runner starts the job
//! in a container of its own on the Flatnet network through Podman's API socket, and the job
//! clones the repository from the forge by name and says `Hello from Flatnet`; nothing is left
//! afterwards, the job's container included.
//!
//! The network is `--internal`: the stand-in needs nothing beyond Flatnet and the host, so
//! nothing it runs (act, buildbot) can reach past this machine.

use flatnet_test_support as support;
use flatnet_test_support::needs_podman;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use flatnet_test_support::podman::{Backend, Net, NetOptions};
use serde_json::Value;

const FORGE_ROOTFS: &str = "/var/lib/flatnet/forge-rootfs";
/// How long the master, the worker and one job may take at most, together.
const PATIENCE: Duration = Duration::from_secs(180);

/// `GET path` on 127.0.0.1:port; the body, if the server answered 200.
fn get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200")
        .then(|| body.to_string())
        .or_else(|| head.starts_with("HTTP/1.1 200").then(|| body.to_string()))
}

fn get_json(port: u16, path: &str) -> Option<Value> {
    serde_json::from_str(&get(port, path)?).ok()
}

/// Polls `check` until it gives something, or fails the test naming `stage` after PATIENCE.
fn wait_for<T>(started: Instant, stage: &str, mut check: impl FnMut() -> Option<T>) -> T {
    loop {
        if let Some(found) = check() {
            println!("  {stage}: {:.1} s", started.elapsed().as_secs_f64());
            return found;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "stage '{stage}' did not complete"
        );
        std::thread::sleep(Duration::from_millis(200)); // polling an HTTP API, not synchronising
    }
}

/// A repository holding the example workflow, pushed from the host like a developer would.
fn push(git_port: u16) {
    let work = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/forgejo/repo");
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=flatnet",
                "-c",
                "user.email=flatnet@localhost",
            ])
            .args(["-c", "init.defaultBranch=main"])
            .args(args)
            .current_dir(work.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let workflows = work.path().join(".forgejo/workflows");
    std::fs::create_dir_all(&workflows).unwrap();
    std::fs::copy(
        repo.join(".forgejo/workflows/hello.yml"),
        workflows.join("hello.yml"),
    )
    .unwrap();
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "Hello from Flatnet"]);
    git(&[
        "push",
        "-q",
        &format!("http://127.0.0.1:{git_port}/flatnet/hello.git"),
        "HEAD:main",
    ]);
}

/// The address the job's container reported for itself (`job container ID at ADDRESS`).
fn job_container_address(log: &str) -> std::net::Ipv4Addr {
    let line = log
        .lines()
        .find_map(|l| l.split_once("| job container ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no job container line: {log}"));
    let address = line.split(" at ").nth(1).unwrap_or_default().trim();
    address
        .parse()
        .unwrap_or_else(|_| panic!("job container address {address:?}: {log}"))
}

fn forge_and_runner(backend: Backend, name: &str, subnet: &str, git_port: u16, www_port: u16) {
    assert!(
        Path::new(FORGE_ROOTFS)
            .join("opt/forge/bin/buildbot")
            .is_file(),
        "run scripts/build-forge-rootfs.sh"
    );
    let options = NetOptions {
        internal: true,
        dns_upstream: None,
        ..NetOptions::default()
    };
    let net = Net::create_with(backend, name, subnet, &options);
    let rootfs = format!("{FORGE_ROOTFS}:O");
    let started = Instant::now();
    let publish_git = format!("127.0.0.1:{git_port}:3000");
    let publish_www = format!("127.0.0.1:{www_port}:8010");
    let forge = net.container(1);
    net.podman_ok(&[
        "run",
        "-d",
        "--name",
        &forge,
        "--network",
        &net.name,
        "--network-alias",
        "forge",
        "-p",
        &publish_git,
        "-p",
        &publish_www,
        "--rootfs",
        &rootfs,
        "/opt/standin/forge.sh",
    ]);
    // The runner drives this Podman through its API socket: act starts each job there.
    let socket = format!("/run/{name}-podman.sock");
    let _api = net.api_service(&socket);
    let runner = net.container(2);
    net.podman_ok(&[
        "run",
        "-d",
        "--name",
        &runner,
        "--network",
        &net.name,
        "--network-alias",
        "runner",
        "-v",
        &format!("{socket}:/run/podman.sock"),
        "-e",
        "DOCKER_HOST=unix:///run/podman.sock",
        "-e",
        &format!("JOB_NETWORK={}", net.name),
        "--rootfs",
        &rootfs,
        "/opt/standin/runner.sh",
    ]);
    println!("{backend:?}: forge and runner started");

    wait_for(started, "forge up", || get(www_port, "/api/v2/builders"));
    // Online: the worker reached forge:9989 by name over Flatnet and holds the connection.
    wait_for(started, "runner online", || {
        let workers = get_json(www_port, "/api/v2/workers?name=runner")?;
        let connected = &workers["workers"][0]["connected_to"];
        connected
            .as_array()
            .is_some_and(|c| !c.is_empty())
            .then_some(())
    });
    push(git_port);
    let build = wait_for(started, "job done", || {
        let builds = get_json(www_port, "/api/v2/builds?order=-buildid&limit=1")?;
        let build = builds["builds"][0].clone();
        (build["complete"] == true).then_some(build)
    });
    let logs = format!(
        "/api/v2/builds/{}/steps/workflow/logs/stdio/raw",
        build["buildid"]
    );
    let log = get(www_port, &logs).unwrap_or_default();
    assert_eq!(build["results"], 0, "the job failed: {log}");
    assert!(log.contains("| Hello from Flatnet"), "{log}");
    assert!(log.contains("| cloned "), "the job did not clone: {log}");
    let job_ip = job_container_address(&log);
    assert!(
        subnet.parse::<ipnet::Ipv4Net>().unwrap().contains(&job_ip),
        "{log}"
    );
    // The job ran in a container act made on the network, not in the forge or the runner.
    let created = "docker create image=localhost/flatnet-job:latest";
    let on_flatnet = format!("network=\"{}\"", net.name);
    assert!(
        log.lines()
            .any(|l| l.contains(created) && l.contains(&on_flatnet)),
        "act made no job container on {}: {log}",
        net.name
    );
    for part in [&forge, &runner] {
        assert_ne!(job_ip, net.inspect_ip(part), "the job ran in {part}: {log}");
    }
    println!("{backend:?}: the job ran in its own container at {job_ip}");
    println!(
        "{backend:?}: podman run to green job in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let left = net.podman_ok(&["ps", "-aq", "--filter", "name=^act-"]);
    assert!(left.trim().is_empty(), "act left job containers: {left}");
    net.remove_containers();
    assert!(net.leftovers().is_empty(), "{:?}", net.leftovers());
    let rules = support::run_ok("nft", &["list", "ruleset"]);
    assert!(!rules.contains(&format!("dport {git_port} ")), "{rules}");
}

#[test]
fn cni_forge_and_runner() {
    let _serial = needs_podman!();
    forge_and_runner(
        Backend::Cni,
        "fne2e-cniforge",
        "10.217.0.0/24",
        18301,
        18302,
    );
}

#[test]
fn netavark_forge_and_runner() {
    let _serial = needs_podman!();
    forge_and_runner(
        Backend::Netavark,
        "fne2e-nvforge",
        "10.218.0.0/24",
        18311,
        18312,
    );
}
