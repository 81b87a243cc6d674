//! The metrics endpoint of a running flatnetd (see `cluster`): served when asked, moving
//! with traffic, and only on a local address. Needs root.

mod cluster;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cluster::*;
use flatnet_test_support::needs_root;

/// One scrape of a metrics endpoint on a Unix socket: (status line, body).
fn scrape(socket: &Path, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: flatnetd\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// The value of one series (name with labels) in a scrape, 0 when absent.
fn series(body: &str, prefix: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn metrics_are_served_when_asked_and_move_with_traffic() {
    needs_root!();
    let (cluster, a, b) = Cluster::connected_pair();
    let socket = cluster.hosts[0].state.path().join("metrics.sock");
    cluster.stop_daemon(0);
    cluster.start_daemon_with(0, &[&format!("--metrics=unix:{}", socket.display())]);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the metrics socket is root's");

    let (status, before) = scrape(&socket, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        series(&before, "flatnet_containers{network=\"multihost\"}"),
        1.0,
        "{before}"
    );
    assert!(cluster.ping(a, b, 5));
    cluster.tcp(a, b, 7100);
    let (_, after) = scrape(&socket, "/metrics");
    for counter in [
        "flatnet_peer_transmit_bytes_total",
        "flatnet_peer_receive_bytes_total",
        "flatnet_peer_transmit_packets_total",
        "flatnet_peer_receive_packets_total",
        "flatnet_packet_thread_busy_seconds_total",
    ] {
        assert!(
            series(&after, counter) > series(&before, counter),
            "{counter} did not move:\n{after}"
        );
    }
    assert!(
        series(&after, "flatnet_handshakes_completed_total")
            + series(&after, "flatnet_peer_sessions")
            >= 1.0
    );
    assert_eq!(series(&after, "flatnet_lighthouse_healthy"), 1.0);
    assert!(scrape(&socket, "/").0.contains("404"));
    // A client that connects and says nothing holds the endpoint only until its timeout.
    let silent = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    assert_eq!(scrape(&socket, "/metrics").0, "HTTP/1.1 200 OK");
    drop(silent);
    // Asking a running daemon for metrics elsewhere is refused, not silently ignored.
    let said = cluster.refused_start(0, &["--metrics", "127.0.0.1:9808"]);
    assert!(said.contains("already runs with metrics unix:"), "{said}");

    // What it costs: resident memory with metrics on, and the time of a scrape.
    let started = Instant::now();
    let rounds = 50;
    for _ in 0..rounds {
        scrape(&socket, "/metrics");
    }
    let per_scrape = started.elapsed() / rounds;
    let rss = series(&after, "process_resident_memory_bytes") / 1024.0;
    println!(
        "metrics: {} bytes per scrape, {per_scrape:?} per scrape, flatnetd RSS {rss} KiB",
        after.len()
    );

    // The endpoint survives a restart on the last run's settings, and goes with the daemon.
    cluster.stop_daemon(0);
    assert!(
        !socket.exists(),
        "a stopped daemon leaves no metrics socket"
    );
    cluster.start_daemon(0);
    assert_eq!(scrape(&socket, "/metrics").0, "HTTP/1.1 200 OK");
}

#[test]
fn metrics_refuse_a_non_loopback_address() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(DAEMON)
        .args([
            "--state-dir",
            dir.path().to_str().unwrap(),
            "start",
            "--metrics",
            "192.0.2.1:9808",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"));
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing was started"
    );
}
