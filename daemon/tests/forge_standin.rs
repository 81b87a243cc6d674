//! The Forgejo stand-in (`examples/forgejo/standin/`) across two hosts on one file lighthouse
//! (see `cluster`): the runner finds the forge by name and pushes through a published port.
//! Needs root.

mod cluster;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use cluster::*;
use flatnet_test_support::needs_root;
use serde_json::{json, Value};

const FORGE_ROOTFS: &str = "/var/lib/flatnet/forge-rootfs";

/// A part of the Forgejo stand-in (`examples/forgejo/standin/`) as a plain process in a
/// container's namespace: its root file system as an overlay in a mount namespace of its own,
/// with /dev, /proc and a resolv.conf naming the gateway (flatnetd). The process group is
/// killed when dropped; the mounts go with their namespace.
struct Standin {
    child: Child,
    _scratch: tempfile::TempDir,
}

impl Standin {
    fn start(ns: &str, script: &str) -> Standin {
        use std::os::unix::process::CommandExt;
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().display();
        let setup = format!(
            "mkdir {dir}/upper {dir}/work {dir}/root && \
             mount -t overlay overlay -o lowerdir={FORGE_ROOTFS},upperdir={dir}/upper,workdir={dir}/work {dir}/root && \
             mount --rbind /dev {dir}/root/dev && mount -t proc proc {dir}/root/proc && \
             echo 'nameserver {GATEWAY}' > {dir}/root/etc/resolv.conf && \
             exec chroot {dir}/root {script}"
        );
        let child = in_ns(ns, &["unshare", "--mount", "--propagation", "private"])
            .args(["sh", "-c", &setup])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        Standin {
            child,
            _scratch: scratch,
        }
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// `curl` in a host's namespace; the body if the answer was a success.
fn curl_in(ns: &str, url: &str) -> Option<String> {
    let out = in_ns(ns, &["curl", "-sf", "-m", "5", url])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

#[test]
fn the_forge_stand_in_runs_across_two_hosts() {
    needs_root!();
    let buildbot = Path::new(FORGE_ROOTFS).join("opt/forge/bin/buildbot");
    assert!(buildbot.is_file(), "run scripts/build-forge-rootfs.sh");
    let mut cluster = Cluster::new(2);
    // The forge on host 0, its git and web ports published on host 0; the runner on host 1.
    let published = json!({"portMappings": [
        {"hostPort": 3000, "containerPort": 3000, "protocol": "tcp", "hostIP": "127.0.0.1"},
        {"hostPort": 8010, "containerPort": 8010, "protocol": "tcp", "hostIP": "127.0.0.1"},
    ]});
    let forge = cluster.attach_with(0, "forge", &published);
    let runner = cluster.attach_named(1, "runner");
    let started = Instant::now();
    let _forge = Standin::start(&cluster.containers[forge].ns.name, "/opt/standin/forge.sh");
    let _runner = Standin::start(
        &cluster.containers[runner].ns.name,
        "/opt/standin/runner.sh",
    );
    let host0 = cluster.hosts[0].ns.name.clone();
    let api = |path: &str| -> Option<Value> {
        let body = curl_in(&host0, &format!("http://127.0.0.1:8010/api/v2/{path}"))?;
        serde_json::from_str(&body).ok()
    };
    let wait_for = |stage: &str, check: &dyn Fn() -> Option<Value>| -> Value {
        loop {
            if let Some(found) = check() {
                println!("  {stage}: {:.1} s", started.elapsed().as_secs_f64());
                return found;
            }
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "'{stage}' did not happen"
            );
            std::thread::sleep(Duration::from_millis(200)); // polling an HTTP API
        }
    };
    // The runner on host 1 found the forge on host 0 by name and holds a connection to it.
    wait_for("runner online", &|| {
        let workers = api("workers?name=runner")?;
        let connected = workers["workers"][0]["connected_to"].as_array()?.len();
        (connected > 0).then_some(workers)
    });

    // A push from host 0 through the published port, as a developer on that host would.
    let repo = tempfile::tempdir().unwrap();
    let workflows = repo.path().join(".forgejo/workflows");
    std::fs::create_dir_all(&workflows).unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/forgejo/repo/.forgejo/workflows/hello.yml");
    std::fs::copy(example, workflows.join("hello.yml")).unwrap();
    let git = |args: &[&str]| {
        let mut argv = vec![
            "git",
            "-c",
            "user.name=flatnet",
            "-c",
            "user.email=flatnet@localhost",
        ];
        argv.extend_from_slice(args);
        let status = in_ns(&host0, &argv)
            .current_dir(repo.path())
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "Hello from Flatnet"]);
    git(&[
        "push",
        "-q",
        "http://127.0.0.1:3000/flatnet/hello.git",
        "main",
    ]);

    let build = wait_for("job done", &|| {
        let builds = api("builds?order=-buildid&limit=1")?;
        let build = builds["builds"][0].clone();
        (build["complete"] == true).then_some(build)
    });
    let log_url = format!(
        "http://127.0.0.1:8010/api/v2/builds/{}/steps/workflow/logs/stdio/raw",
        build["buildid"]
    );
    let log = curl_in(&host0, &log_url).unwrap_or_default();
    assert_eq!(build["results"], 0, "the job failed: {log}");
    assert!(log.contains("Hello from Flatnet"), "{log}");
    println!(
        "two hosts: stand-in start to green job in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
