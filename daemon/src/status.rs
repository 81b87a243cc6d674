//! `flatnetd status`: the daemon's own report, as JSON or as a table for people.

use std::path::Path;

use flatnet::control::status::MemberStatus;
use flatnet::control::{self, DaemonStatus};
use flatnet::lighthouse::FeedHealth;
use flatnet::state::StateDir;
use flatnet::users::UserSocket;
use flatnet::Result;

pub fn show(state_dir: &StateDir, json: bool) -> Result<()> {
    let status = control::status(state_dir)?;
    if json {
        let text = serde_json::to_string_pretty(&status).expect("status serialises");
        println!("{text}");
    } else {
        print!("{}", render(&status));
    }
    Ok(())
}

/// Health, the revision followed and, with etcd, the lease time left.
fn lighthouse_state(state: &FeedHealth) -> String {
    let health = match (&state.error, state.healthy) {
        (Some(error), _) => format!("unhealthy: {error}"),
        (None, false) => "not following yet".to_string(),
        (None, true) => "healthy".to_string(),
    };
    let mut text = format!("{health}, revision {}", state.revision.max(0));
    if let Some(left) = state
        .lease_ttl_left_ms
        .and_then(|ms| u64::try_from(ms).ok())
    {
        text += &format!(
            ", lease {} left {:.1} of {} s",
            state.lease_id.as_deref().unwrap_or("?"),
            left as f64 / 1000.0,
            state.lease_ttl_s.unwrap_or(0)
        );
    }
    if let Some(networks) = &state.networks {
        let networks = match networks.is_empty() {
            true => "none".to_string(),
            false => networks.join(", "),
        };
        text += &format!(
            "\n  networks followed: {networks}; {} full reads, {} watches resumed, {} KiB read",
            state.full_reads,
            state.resumed_watches,
            state.read_bytes / 1024
        );
    }
    text
}

fn render(s: &DaemonStatus) -> String {
    let metrics = s.metrics.as_ref().map_or("off".into(), ToString::to_string);
    let mut out = format!(
        "flatnetd {} (protocol {}), listening on {}, up {} s, RSS {} KiB\nhost key {}\n\
         lighthouse {} ({}), metrics {metrics}\n",
        s.version,
        s.protocol,
        s.listen,
        s.uptime_ms / 1000,
        s.rss_kib,
        s.public_key,
        s.lighthouse,
        lighthouse_state(&s.lighthouse_state),
    );
    if !s.candidates.is_empty() {
        let candidates: Vec<String> = s.candidates.iter().map(ToString::to_string).collect();
        out += &format!("also reachable at {}\n", candidates.join(", "));
    }
    if let Some(not_after) = s.certificate_not_after {
        match flatnet::cert::expiry_warning(not_after, flatnet::cert::now_unix()) {
            Some(warning) => out += &format!("WARNING: {warning}\n"),
            None => out += &format!("host certificate valid until {not_after} (Unix time)\n"),
        }
    }
    out += &format!(
        "\n{:<14} {:<8} {:<12} {:<16} {:<16} {:<18} {:<8} {:<8} {}\n",
        "NETWORK",
        "ID",
        "HOST MEMBER",
        "MEMBER ADDRESS",
        "GATEWAY",
        "SUBNET",
        "EGRESS",
        "INGRESS",
        "DNS UPSTREAMS"
    );
    for n in &s.networks {
        out += &format!(
            "{:<14} {:<8} {:<12} {:<16} {:<16} {:<18} {:<8} {:<8} {}\n",
            n.network,
            n.id,
            n.host_member,
            joined(&n.addresses, ","),
            joined(&n.gateways, ","),
            joined(&n.subnets, ","),
            if n.internal { "no" } else { "yes" },
            if n.ingress_filter {
                "filtered"
            } else {
                "routed"
            },
            joined(&n.dns_upstreams, ","),
        );
    }
    out += "\n";
    out += &members_table(&s.containers);
    out += &format!(
        "\n{:<13} {:<21} {:<17} {:<21} {:>8} {:>8} {:>13} {:>9} {:>22} {:>22}\n",
        "PEER",
        "ENDPOINT",
        "PATH",
        "SEEN AS",
        "PATH MTU",
        "SESSIONS",
        "HANDSHAKE AGE",
        "LAST RX",
        "TX PKT/B",
        "RX PKT/B"
    );
    let or_dash = |value: Option<String>| value.unwrap_or_else(|| "-".into());
    let seconds =
        |ms: Option<u64>| ms.map_or("-".to_string(), |ms| format!("{:.1} s", ms as f64 / 1000.0));
    for p in &s.peers {
        out += &format!(
            "{:<13} {:<21} {:<17} {:<21} {:>8} {:>8} {:>13} {:>9} {:>22} {:>22}\n",
            short(&p.public_key),
            p.endpoint.to_string(),
            p.via
                .as_ref()
                .map_or("direct".into(), |relay| format!("via {}", short(relay))),
            or_dash(p.seen_as.map(|a| a.to_string())),
            or_dash(p.path_mtu.map(|m| m.to_string())),
            p.sessions,
            seconds(p.handshake_age_ms),
            seconds(p.last_received_ms),
            pair(p.stats.tx_packets, p.stats.tx_bytes),
            pair(p.stats.rx_packets, p.stats.rx_bytes),
        );
    }
    if s.relay {
        out += &format!(
            "\nRELAY for other hosts: {:<13} -> {:<13} {:>22}\n",
            "FROM", "TO", "DATAGRAMS/B"
        );
        for pair_of in &s.relayed {
            out += &format!(
                "{:<22}{:<13} -> {:<13} {:>22}\n",
                "",
                short(&pair_of.from),
                short(&pair_of.to),
                pair(pair_of.datagrams, pair_of.bytes),
            );
        }
    }
    let dns = &s.dns;
    out += &format!(
        "\nDNS queries {}: answered here {}, forwarded {}, upstream answers {}, failures {}, \
         ignored answers {}\n",
        dns.queries,
        dns.local_answers,
        dns.forwarded,
        dns.upstream_answers,
        dns.failures,
        dns.ignored_answers,
    );
    out += &format!(
        "\nFAST PATH (container to container on this host, no tunnel) PKT/B {}\n",
        pair(s.fast_path.packets, s.fast_path.bytes),
    );
    let sealed: Vec<String> = s
        .seal_workers
        .iter()
        .map(|w| format!("{}/{}", w.trains, w.packets))
        .collect();
    out += &match sealed.len() {
        0 => "SEALING on the packet thread\n".to_string(),
        n => format!("SEALING WORKERS {n} TRAINS/PKT {}\n", sealed.join(" ")),
    };
    let opened: Vec<String> = s
        .open_workers
        .iter()
        .map(|w| w.datagrams.to_string())
        .collect();
    out += &match opened.len() {
        0 => "OPENING on the packet thread\n".to_string(),
        n => format!("OPENING WORKERS {n} PKT {}\n", opened.join(" ")),
    };
    out += "\nDROPS\n";
    for (reason, count) in &s.drops {
        out += &format!("  {reason:<24} {count}\n");
    }
    let poll = &s.poll.stats;
    out += &format!(
        "\nPOLL window {} µs: caught {}, missed {}, over budget {}, {} ms in empty polls\n",
        s.poll.window_us,
        poll.caught,
        poll.missed,
        poll.over_budget,
        poll.empty_us / 1000,
    );
    out
}

fn joined<T: ToString>(items: &[T], separator: &str) -> String {
    let texts: Vec<String> = items.iter().map(ToString::to_string).collect();
    texts.join(separator)
}

fn pair(packets: u64, bytes: u64) -> String {
    format!("{packets}/{bytes}")
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// One line per served member: its traffic and published ports.
fn members_table(members: &[MemberStatus]) -> String {
    let mut out = format!(
        "{:<13} {:<14} {:<16} {:>22} {:>22}  {}\n",
        "MEMBER", "NETWORK", "ADDRESS", "FROM MEMBER PKT/B", "TO MEMBER PKT/B", "PUBLISHED"
    );
    for c in members {
        let st = &c.stats;
        let member = if c.host_member {
            "(host)"
        } else {
            short(&c.container_id)
        };
        out += &format!(
            "{:<13} {:<14} {:<16} {:>22} {:>22}  {}\n",
            member,
            c.network,
            joined(&c.addresses, ","),
            pair(st.from_container_packets, st.from_container_bytes),
            pair(st.to_container_packets, st.to_container_bytes),
            c.published_ports.join(" "),
        );
    }
    out
}

/// `flatnetd status` for a rootless user: their own containers, as the user socket reports.
pub fn show_user(socket: Option<&Path>, json: bool) -> Result<()> {
    let containers = UserSocket::new(socket).containers()?;
    if json {
        let text = serde_json::to_string_pretty(&containers).expect("status serialises");
        println!("{text}");
    } else {
        print!("{}", members_table(&containers));
    }
    Ok(())
}
