//! flatnetd's Prometheus metrics: the same snapshot `flatnetd status` shows, in the OpenMetrics
//! text format (`prometheus-client`). A scrape costs the packet thread one status snapshot.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::control::status::DaemonStatus;
use crate::tunnel::PeerStats;

/// The content type of what [`render`] returns.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(String, String)>;
type Counters = Family<Labels, Counter>;
type Gauges = Family<Labels, Gauge>;
/// One of a peer's counters.
type PeerField = fn(&PeerStats) -> u64;

/// Renders a daemon status snapshot (the `status` control answer) as metrics.
pub fn render(status: &DaemonStatus) -> String {
    let mut registry = Registry::default();
    register_peers(&mut registry, status);
    register_drops(&mut registry, status);
    register_containers(&mut registry, status);
    register_fast_path(&mut registry, status);
    register_seal_workers(&mut registry, status);
    register_open_workers(&mut registry, status);
    register_daemon(&mut registry, status);
    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn counter_family(registry: &mut Registry, name: &str, help: &str, unit: Option<Unit>) -> Counters {
    let family = Counters::default();
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, family.clone()),
        None => registry.register(name, help, family.clone()),
    }
    family
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let gauge: Gauge = Gauge::default();
    gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
    registry.register(name, help, gauge);
}

/// What this host passed on as a relay, per pair of hosts.
fn register_relayed(registry: &mut Registry, status: &DaemonStatus) {
    let datagrams = counter_family(
        registry,
        "flatnet_relayed_datagrams",
        "Datagrams this host relayed from one host to another, still sealed for the receiver",
        None,
    );
    let bytes = counter_family(
        registry,
        "flatnet_relayed",
        "Bytes this host relayed from one host to another",
        Some(Unit::Bytes),
    );
    for pair in &status.relayed {
        let pair_labels = labels(&[("from", &pair.from), ("to", &pair.to)]);
        datagrams.get_or_create(&pair_labels).inc_by(pair.datagrams);
        bytes.get_or_create(&pair_labels).inc_by(pair.bytes);
    }
}

/// Per peer host: traffic and handshakes, labelled by its public key and endpoint.
fn register_peers(registry: &mut Registry, status: &DaemonStatus) {
    let series: [(&str, &str, Option<Unit>, PeerField); 7] = [
        (
            "flatnet_peer_transmit",
            "Bytes sent to the peer, before encryption",
            Some(Unit::Bytes),
            |s: &PeerStats| s.tx_bytes,
        ),
        (
            "flatnet_peer_receive",
            "Bytes received from the peer, after decryption",
            Some(Unit::Bytes),
            |s: &PeerStats| s.rx_bytes,
        ),
        (
            "flatnet_peer_transmit_packets",
            "Packets sent to the peer",
            None,
            |s: &PeerStats| s.tx_packets,
        ),
        (
            "flatnet_peer_receive_packets",
            "Packets received from the peer",
            None,
            |s: &PeerStats| s.rx_packets,
        ),
        (
            "flatnet_handshakes_initiated",
            "Handshakes this host started with the peer",
            None,
            |s: &PeerStats| s.handshakes_sent,
        ),
        (
            "flatnet_handshakes_completed",
            "Handshakes this host started that completed",
            None,
            |s: &PeerStats| s.handshakes_completed,
        ),
        (
            "flatnet_handshakes_failed",
            "Handshakes this host started that timed out or did not verify",
            None,
            |s: &PeerStats| s.handshakes_failed,
        ),
    ];
    let families: Vec<(Counters, PeerField)> = series
        .into_iter()
        .map(|(name, help, unit, field)| (counter_family(registry, name, help, unit), field))
        .collect();
    let peers = &status.peers;
    let sessions = Gauges::default();
    registry.register(
        "flatnet_peer_sessions",
        "Live Noise sessions with the peer",
        sessions.clone(),
    );
    let relayed = Gauges::default();
    registry.register(
        "flatnet_peer_relayed",
        "1 while the peer is reached through the relay `via` (a host key), 0 while directly",
        relayed.clone(),
    );
    for peer in peers {
        let endpoint = peer.endpoint.to_string();
        let peer_labels = labels(&[("peer", &peer.public_key), ("endpoint", &endpoint)]);
        for (family, field) in &families {
            family
                .get_or_create(&peer_labels)
                .inc_by(field(&peer.stats));
        }
        sessions
            .get_or_create(&peer_labels)
            .set(peer.sessions as i64);
        let via = peer.via.as_deref().unwrap_or_default();
        let path_labels = labels(&[("peer", &peer.public_key), ("via", via)]);
        relayed
            .get_or_create(&path_labels)
            .set(i64::from(peer.via.is_some()));
    }
    register_relayed(registry, status);
    gauge(
        registry,
        "flatnet_peers",
        "Peer hosts this host knows",
        peers.len() as u64,
    );
    gauge(
        registry,
        "flatnet_sessions",
        "Live Noise sessions",
        status.sessions as u64,
    );
}

fn register_drops(registry: &mut Registry, status: &DaemonStatus) {
    let drops = counter_family(
        registry,
        "flatnet_drops",
        "Packets dropped, by reason",
        None,
    );
    for (reason, count) in &status.drops {
        drops
            .get_or_create(&labels(&[("reason", reason)]))
            .inc_by(*count);
    }
}

/// Attached containers per network (the host member is not a container).
fn register_containers(registry: &mut Registry, status: &DaemonStatus) {
    let attached = Gauges::default();
    registry.register(
        "flatnet_containers",
        "Containers attached, by network",
        attached.clone(),
    );
    for container in status.containers.iter().filter(|c| !c.host_member) {
        attached
            .get_or_create(&labels(&[("network", &container.network)]))
            .inc();
    }
}

/// Per sealing worker: what it sealed for other hosts.
fn register_seal_workers(registry: &mut Registry, status: &DaemonStatus) {
    let trains = counter_family(
        registry,
        "flatnet_seal_worker_trains",
        "Segment trains a sealing worker cut and sealed for other hosts",
        None,
    );
    let packets = counter_family(
        registry,
        "flatnet_seal_worker_packets",
        "Packets a sealing worker sealed for other hosts",
        None,
    );
    for (i, worker) in status.seal_workers.iter().enumerate() {
        let label = labels(&[("worker", &i.to_string())]);
        trains.get_or_create(&label).inc_by(worker.trains);
        packets.get_or_create(&label).inc_by(worker.packets);
    }
}

/// Per opening worker: what it opened for the packet thread.
fn register_open_workers(registry: &mut Registry, status: &DaemonStatus) {
    let datagrams = counter_family(
        registry,
        "flatnet_open_worker_datagrams",
        "Datagrams from other hosts an opening worker authenticated and decrypted",
        None,
    );
    for (i, worker) in status.open_workers.iter().enumerate() {
        let label = labels(&[("worker", &i.to_string())]);
        datagrams.get_or_create(&label).inc_by(worker.datagrams);
    }
}

/// Container to container on this host, without a tunnel.
fn register_fast_path(registry: &mut Registry, status: &DaemonStatus) {
    let fast_path = &status.fast_path;
    let series = [
        ("flatnet_fast_path_packets", "Frames moved between containers of this host without a tunnel (a segment train counts once)", None, fast_path.packets),
        ("flatnet_fast_path", "Bytes moved between containers of this host without a tunnel", Some(Unit::Bytes), fast_path.bytes),
    ];
    single_counters(registry, &series);
}

/// Counters without labels: (name, help, unit, value).
fn single_counters(registry: &mut Registry, series: &[(&str, &str, Option<Unit>, u64)]) {
    for (name, help, unit, value) in series {
        let counter: Counter = Counter::default();
        counter.inc_by(*value);
        match unit {
            Some(unit) => registry.register_with_unit(*name, *help, unit.clone(), counter),
            None => registry.register(*name, *help, counter),
        }
    }
}

fn register_daemon(registry: &mut Registry, status: &DaemonStatus) {
    gauge(
        registry,
        "flatnet_lighthouse_healthy",
        "1 when the last lighthouse read succeeded",
        status.lighthouse_state.healthy as u64,
    );
    let lighthouse = &status.lighthouse_state;
    let follows = [
        ("flatnet_lighthouse_full_reads", "Times a part of the lighthouse was read whole (etcd: at start, and after a compaction)", None, lighthouse.full_reads),
        ("flatnet_lighthouse_resumed_watches", "etcd watches started again from the revision they had reached", None, lighthouse.resumed_watches),
        ("flatnet_lighthouse_read", "Key and value bytes read from the lighthouse (etcd)", Some(Unit::Bytes), lighthouse.read_bytes),
        ("flatnet_lighthouse_routes_withdrawn", "Routes taken away or pointed to another host", None, status.routes_withdrawn),
    ];
    single_counters(registry, &follows);
    gauge(
        registry,
        "flatnet_lighthouse_routes",
        "Flatnet addresses the lighthouse maps to hosts",
        status.routes as u64,
    );
    let busy: Counter<f64, AtomicU64> = Counter::default();
    busy.inc_by(status.busy_us as f64 / 1e6);
    registry.register_with_unit(
        "flatnet_packet_thread_busy",
        "Time the packet thread spent handling events rather than waiting",
        Unit::Seconds,
        busy,
    );
    let dns = counter_family(
        registry,
        "flatnet_dns_queries",
        "DNS queries from containers, by outcome",
        None,
    );
    let outcomes = [
        ("local_answers", status.dns.local_answers),
        ("forwarded", status.dns.forwarded),
        ("failures", status.dns.failures),
    ];
    for (outcome, count) in outcomes {
        dns.get_or_create(&labels(&[("outcome", outcome)]))
            .inc_by(count);
    }
    let ignored = Counter::<u64>::default();
    ignored.inc_by(status.dns.ignored_answers);
    registry.register(
        "flatnet_dns_ignored_answers",
        "Datagrams on a forwarded query's socket that were not its answer (another ID or question)",
        ignored,
    );
    gauge(
        registry,
        "flatnet_uptime_seconds",
        "Seconds since flatnetd started",
        status.uptime_ms / 1000,
    );
    gauge(
        registry,
        "process_resident_memory_bytes",
        "Resident memory of flatnetd",
        status.rss_kib * 1024,
    );
    if let Some(not_after) = status.certificate_not_after {
        gauge(
            registry,
            "flatnet_host_certificate_expiry_timestamp_seconds",
            "Unix time after which this host's certificate is void (alert well before it)",
            not_after,
        );
    }
    let info = Gauges::default();
    registry.register("flatnet_build_info", "flatnetd's version", info.clone());
    info.get_or_create(&labels(&[("version", &status.version)]))
        .set(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::status::{
        DnsStats, FastPathStats, MemberStats, MemberStatus, OpenWorkerStats, PollStatus,
        SealWorkerStats,
    };
    use crate::control::SameHost;
    use crate::lighthouse::FeedHealth;
    use crate::tunnel::PeerStatus;

    fn member(network: &str, host_member: bool) -> MemberStatus {
        MemberStatus {
            network: network.into(),
            container_id: "c".into(),
            ifname: "eth0".into(),
            addresses: vec!["10.0.0.2".parse().unwrap()],
            host_member,
            published_ports: Vec::new(),
            stats: MemberStats::default(),
        }
    }

    /// The daemon's own status type, filled as the packet thread fills it.
    fn sample() -> DaemonStatus {
        DaemonStatus {
            version: "9.9.9".into(),
            pid: 1,
            protocol: 1,
            public_key: "OWN".into(),
            listen: "127.0.0.1:4800".parse().unwrap(),
            candidates: Vec::new(),
            lighthouse: "/run/flatnet/lighthouse.json".into(),
            lighthouse_state: FeedHealth {
                healthy: true,
                ..FeedHealth::default()
            },
            metrics: None,
            persistent_keepalive_s: None,
            same_host: SameHost::Fast,
            seal_workers: vec![
                SealWorkerStats {
                    trains: 3,
                    packets: 40,
                },
                SealWorkerStats {
                    trains: 5,
                    packets: 90,
                },
            ],
            open_workers: vec![OpenWorkerStats { datagrams: 70 }],
            busy_us: 1_500_000,
            uptime_ms: 61_000,
            rss_kib: 4096,
            routes: 5,
            routes_withdrawn: 2,
            refused_entries: 0,
            certificate_not_after: Some(1_900_000_000),
            containers: vec![
                member("a", false),
                member("a", false),
                member("a", true),
                member("b", false),
            ],
            relay: true,
            relayed: vec![crate::tunnel::RelayedPair {
                from: "A".into(),
                to: "B".into(),
                datagrams: 3,
                bytes: 300,
            }],
            peers: vec![PeerStatus {
                public_key: "KEY".into(),
                endpoint: "192.0.2.11:4800".parse().unwrap(),
                sessions: 2,
                handshake_in_flight: false,
                handshake_age_ms: None,
                last_received_ms: None,
                queued: 0,
                seen_as: None,
                via: Some("RELAY".into()),
                path_mtu: None,
                stats: PeerStats {
                    tx_bytes: 1000,
                    rx_bytes: 2000,
                    tx_packets: 10,
                    rx_packets: 20,
                    handshakes_sent: 3,
                    handshakes_completed: 2,
                    handshakes_failed: 1,
                    ..PeerStats::default()
                },
            }],
            sessions: 2,
            networks: Vec::new(),
            dns: DnsStats {
                local_answers: 4,
                forwarded: 1,
                ..DnsStats::default()
            },
            fast_path: FastPathStats {
                packets: 12,
                bytes: 345_678,
            },
            drops: [("replay".to_string(), 7), ("bad_tag".to_string(), 0)].into(),
            poll: PollStatus::default(),
        }
    }

    /// What a scrape renders is what crossed the control socket: the status as the daemon
    /// encodes it, decoded by the reader.
    fn as_read(status: DaemonStatus) -> DaemonStatus {
        use crate::control::protocol::{decode_response, encode_response};
        use crate::control::Reply;
        let line = encode_response(&Ok(Reply::Status(Box::new(status))));
        match decode_response(&line) {
            Ok(Ok(Reply::Status(status))) => *status,
            other => panic!("{other:?}"),
        }
    }

    fn line_value(text: &str, series: &str) -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"));
        line[series.len()..].trim().parse().unwrap()
    }

    #[test]
    fn status_fields_become_named_series() {
        let text = render(&as_read(sample()));
        let peer = r#"{peer="KEY",endpoint="192.0.2.11:4800"}"#;
        assert_eq!(
            line_value(&text, &format!("flatnet_peer_transmit_bytes_total{peer}")),
            1000.0
        );
        assert_eq!(
            line_value(&text, &format!("flatnet_peer_receive_bytes_total{peer}")),
            2000.0
        );
        assert_eq!(
            line_value(&text, &format!("flatnet_handshakes_failed_total{peer}")),
            1.0
        );
        assert_eq!(
            line_value(&text, r#"flatnet_drops_total{reason="replay"}"#),
            7.0
        );
        assert_eq!(
            line_value(&text, r#"flatnet_peer_relayed{peer="KEY",via="RELAY"}"#),
            1.0
        );
        let pair = r#"{from="A",to="B"}"#;
        assert_eq!(
            line_value(&text, &format!("flatnet_relayed_datagrams_total{pair}")),
            3.0
        );
        assert_eq!(
            line_value(&text, &format!("flatnet_relayed_bytes_total{pair}")),
            300.0
        );
        assert_eq!(line_value(&text, r#"flatnet_containers{network="a"}"#), 2.0);
        assert_eq!(line_value(&text, r#"flatnet_containers{network="b"}"#), 1.0);
        assert_eq!(
            line_value(&text, "flatnet_packet_thread_busy_seconds_total"),
            1.5
        );
        assert_eq!(line_value(&text, "flatnet_lighthouse_healthy"), 1.0);
        assert_eq!(line_value(&text, "flatnet_fast_path_packets_total"), 12.0);
        assert_eq!(
            line_value(&text, "flatnet_fast_path_bytes_total"),
            345_678.0
        );
        assert_eq!(
            line_value(&text, r#"flatnet_seal_worker_packets_total{worker="1"}"#),
            90.0
        );
        assert_eq!(
            line_value(&text, r#"flatnet_seal_worker_trains_total{worker="0"}"#),
            3.0
        );
        assert_eq!(
            line_value(&text, r#"flatnet_open_worker_datagrams_total{worker="0"}"#),
            70.0
        );
        assert_eq!(
            line_value(&text, "process_resident_memory_bytes"),
            4096.0 * 1024.0
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn every_counter_ends_in_total_and_every_name_is_flatnet_or_process() {
        let text = render(&as_read(sample()));
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut words = line.split_whitespace().skip(2);
            let (name, kind) = (words.next().unwrap(), words.next().unwrap());
            assert!(
                name.starts_with("flatnet_") || name.starts_with("process_"),
                "{name}"
            );
            if kind == "counter" {
                let series = text
                    .lines()
                    .find(|l| l.starts_with(name) && !l.starts_with('#'));
                if let Some(series) = series {
                    assert!(series.starts_with(&format!("{name}_total")), "{series}");
                }
            }
        }
    }
}
