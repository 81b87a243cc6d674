//! flatnetd's life beside the containers it serves (see `cluster`): kill -9 and restart,
//! stop, signals, systemd's notifications and capabilities, a daemon started by a plugin, and
//! a namespace path reused while it was down. Needs root.

mod cluster;

use std::process::Stdio;
use std::time::{Duration, Instant};

use cluster::*;
use flatnet::state::StateDir;
use flatnet_test_support::{self as support, needs_root};

#[test]
fn kill_9_and_restart_keeps_the_outage_short() {
    needs_root!();
    let (cluster, a, b) = Cluster::connected_pair();
    let mut pinger = Pinger::start(&cluster, a, b, 0.1, 80);
    let mut seen = vec![pinger.next_reply().expect("ping runs")];

    // Host 1 answered host 0's handshake: the timestamp it accepted is on disk, for the
    // restarted daemon to refuse a replay of that initiation.
    let initiator = cluster.status(0)["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    let kept = cluster.hosts[1].state.path().join("init-timestamps.json");
    support::wait_until(Duration::from_secs(5), || {
        std::fs::read(&kept)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v[&initiator].as_u64().is_some_and(|t| t > 0))
    });
    let victim = cluster.daemon_pid(1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    let killed = Instant::now();
    // kill(2) returns before the process is gone: `start` must wait the dying daemon out (it
    // still accepts on its socket and holds its lock for a moment), as an operator's would.
    cluster.start_daemon(1);
    println!("restarted in {:?}", killed.elapsed());
    assert_ne!(cluster.daemon_pid(1), victim);

    seen.push(pinger.next_reply().expect("replies resume"));
    let (replies, outage) = pinger.finish(seen);
    println!("kill -9: {replies}/80 replies, longest outage {outage:.1} s");
    assert!(outage < 3.0, "outage {outage:.1} s");
    assert!(cluster.ping(b, a, 1), "the other direction works too");
    // The container kept its interface and address throughout.
    assert!(cluster.containers[b]
        .ns
        .ip(&["addr", "show", "eth0"])
        .contains("198.51.100."));
}

#[test]
fn stop_returns_once_the_lock_and_port_are_free() {
    needs_root!();
    let (cluster, a, b) = Cluster::connected_pair();
    let lock = cluster.hosts[0].state.path().join("flatnetd.lock");
    for round in 0..5 {
        cluster.stop_daemon(0);
        // Right after `stop` returns, a new daemon must be able to take over.
        let free = flatnet::state::FileLock::try_acquire(&lock).unwrap();
        assert!(free.is_some(), "round {round}: the lock is still held");
        drop(free);
        cluster.start_daemon(0);
    }
    assert!(cluster.ping(a, b, 1), "the restarted daemon serves");
}

#[test]
fn sigterm_and_sigint_stop_cleanly_and_a_restart_serves_again() {
    needs_root!();
    let (cluster, a, b) = Cluster::connected_pair();
    let state = cluster.hosts[1].state.path();
    for signal in [nix::sys::signal::SIGTERM, nix::sys::signal::SIGINT] {
        let pid = cluster.daemon_pid(1);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
        // A clean stop removes the control socket, then releases the lock.
        let deadline = Instant::now() + Duration::from_secs(10);
        while StateDir::new(state).control_socket().exists()
            || flatnet::state::FileLock::try_acquire(&state.join("flatnetd.lock"))
                .unwrap()
                .is_none()
        {
            assert!(Instant::now() < deadline, "{signal} did not stop flatnetd");
            std::thread::yield_now();
        }
        let log = std::fs::read_to_string(state.join("flatnetd.log")).unwrap();
        assert!(log.contains(&format!("{signal}: stopping")), "{log}");
        // The container kept its interface and address; a new daemon serves it again.
        assert!(cluster.containers[b]
            .ns
            .ip(&["addr", "show", "eth0"])
            .contains("198.51.100."));
        cluster.start_daemon(1);
        // The peer still holds the old daemon's session: the first packets re-handshake.
        let back = Instant::now();
        while !cluster.ping(a, b, 1) {
            assert!(
                back.elapsed() < Duration::from_secs(10),
                "not served after {signal}"
            );
        }
    }
}

#[test]
fn a_reused_namespace_path_is_not_served_after_a_restart() {
    needs_root!();
    let mut cluster = Cluster::new(1);
    let (kept, gone) = (cluster.attach(0), cluster.attach(0));
    cluster.stop_daemon(0);
    // While no daemon runs, one container dies and its namespace path is taken by another's.
    let old = &cluster.containers[gone].ns;
    old.delete();
    support::run_ok("ip", &["netns", "add", &old.name]);
    cluster.start_daemon(0);

    let served: Vec<String> = cluster.status(0)["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["container_id"].as_str().unwrap().to_string())
        .collect();
    assert!(served.contains(&cluster.containers[kept].id));
    assert!(
        !served.contains(&cluster.containers[gone].id),
        "the reused path is served: {served:?}"
    );
    assert!(
        !old.has_link("eth0"),
        "a TUN device was made in the stranger's namespace"
    );
    let log = std::fs::read_to_string(cluster.hosts[0].state.path().join("flatnetd.log")).unwrap();
    assert!(log.contains("path was reused"), "{log}");
}

/// The capabilities the systemd unit leaves flatnetd, as `setpriv --bounding-set` takes them.
fn unit_capabilities() -> String {
    let unit = include_str!("../../packaging/flatnetd.service.in");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit bounds capabilities");
    let caps: Vec<String> = line
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    format!("-all,{}", caps.join(","))
}

#[test]
fn the_capabilities_the_unit_grants_are_enough() {
    needs_root!();
    let mut cluster = Cluster::new(2);
    // Host 0's daemon runs with only what the unit leaves it; host 1's as the plugins start it.
    let bounding = format!("--bounding-set={}", unit_capabilities());
    let h = &cluster.hosts[0];
    let started = in_ns(&h.ns.name, &["setpriv", &bounding, DAEMON, "--state-dir"])
        .arg(h.state.path())
        .arg("start")
        .arg("--lighthouse")
        .arg(cluster.shared.path().join("lighthouse.json"))
        .arg("--listen")
        .arg(format!("{}:{TUNNEL_PORT}", h.address))
        .status()
        .unwrap();
    assert!(started.success());
    let pid = cluster.daemon_pid(0);
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let bounded = proc_status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
        .unwrap();
    // CAP_NET_BIND_SERVICE (10), CAP_NET_ADMIN (12), CAP_SYS_ADMIN (21).
    assert_eq!(bounded, 1 << 10 | 1 << 12 | 1 << 21, "CapBnd {bounded:x}");

    let web = cluster.attach_named(0, "web");
    let local = cluster.attach(0);
    let remote = cluster.attach(1);
    assert!(cluster.ping(local, web, 1) && cluster.ping(remote, web, 1));
    assert!(cluster.ping(web, remote, 1));
    let answer = lookup(&cluster, local, "web");
    assert!(
        answer.contains(&cluster.containers[web].ip.to_string()),
        "{answer}"
    );
    assert_eq!(
        cluster.daemon_pid(0),
        pid,
        "the bounded daemon served it all"
    );
}

#[test]
fn a_daemon_started_by_a_plugin_is_detached_from_it() {
    needs_root!();
    // Without systemd (here), the fallback: a process in a session of its own. Under
    // systemd-run --scope the same process (it execs flatnetd) would be just as detached.
    let mut cluster = Cluster::new(1);
    // The plugin, and so the daemon, starts with a soft limit on open files below the hard
    // one (as under a shell's defaults).
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_cur.min(1024).min(limit.rlim_max / 2);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    cluster.attach(0);
    let pid = cluster.daemon_pid(0);
    let fields = proc_stat(pid);
    // After the name: state, ppid, pgrp, session.
    let (pgrp, session): (u32, u32) = (fields[2].parse().unwrap(), fields[3].parse().unwrap());
    assert_eq!(
        (pgrp, session),
        (pid, pid),
        "not a session leader of its own"
    );
    // Its soft limit on open files is its hard one: a descriptor per queue and DNS query.
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect();
    assert_eq!(open_files[0], open_files[1], "{limits}");
    assert_ne!(open_files[0], limit.rlim_cur.to_string(), "{limits}");
}

#[test]
fn the_unit_is_told_when_flatnetd_serves_and_stops() {
    needs_root!();
    let cluster = Cluster::new(1);
    let h = &cluster.hosts[0];
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify");
    let systemd = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut daemon = in_ns(&h.ns.name, &[DAEMON, "--state-dir"])
        .arg(h.state.path())
        .args(["run", "--listen", &format!("{}:{TUNNEL_PORT}", h.address)])
        .env("NOTIFY_SOCKET", &socket_path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut message = [0u8; 64];
    let n = systemd.recv(&mut message).unwrap();
    assert_eq!(&message[..n], b"READY=1");
    // Ready means serving: the control socket answers at once.
    assert!(cluster.status(0)["pid"].as_u64().is_some());
    cluster.stop_daemon(0);
    let n = systemd.recv(&mut message).unwrap();
    assert_eq!(&message[..n], b"STOPPING=1");
    assert!(daemon.wait().unwrap().success());
}
