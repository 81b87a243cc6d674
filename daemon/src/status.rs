//! `flatnetd status`: the daemon's own report, as JSON or as a table for people.

use std::path::Path;

use flatnet::control::{self, Request};
use flatnet::Result;
use serde_json::Value;

pub fn show(state_dir: &Path, json: bool) -> Result<()> {
    let status = control::call(state_dir, &Request::Status)?
        .status
        .unwrap_or(Value::Null);
    if json {
        println!("{status:#}");
    } else {
        print!("{}", render(&status));
    }
    Ok(())
}

/// Health, the revision followed and, with etcd, the lease time left.
fn lighthouse_state(state: &Value) -> String {
    let health = match (state["healthy"].as_bool(), state["error"].as_str()) {
        (_, Some(error)) => format!("unhealthy: {error}"),
        (Some(false), None) => "not following yet".to_string(),
        _ => "healthy".to_string(),
    };
    let mut text = format!("{health}, revision {}", num(&state["revision"]));
    if let Some(left) = state["lease_ttl_left_ms"].as_u64() {
        text += &format!(
            ", lease {} left {:.1} of {} s",
            text_or(&state["lease_id"], "?"),
            left as f64 / 1000.0,
            num(&state["lease_ttl_s"])
        );
    }
    text
}

fn text_or<'a>(value: &'a Value, default: &'a str) -> &'a str {
    value.as_str().unwrap_or(default)
}

fn render(s: &Value) -> String {
    let mut out = format!(
        "flatnetd {} (protocol {}), listening on {}, up {} s, RSS {} KiB\nhost key {}\n\
         lighthouse {} ({}), metrics {}\n",
        text(&s["version"]),
        num(&s["protocol"]),
        text(&s["listen"]),
        num(&s["uptime_ms"]) / 1000,
        num(&s["rss_kib"]),
        text(&s["public_key"]),
        text(&s["lighthouse"]),
        lighthouse_state(&s["lighthouse_state"]),
        s["metrics"].as_str().unwrap_or("off"),
    );
    out += &format!(
        "\n{:<14} {:<8} {:<12} {:<16} {:<16} {:<18} {:<8} {}\n",
        "NETWORK",
        "ID",
        "HOST MEMBER",
        "MEMBER ADDRESS",
        "GATEWAY",
        "SUBNET",
        "EGRESS",
        "DNS UPSTREAMS"
    );
    for n in s["networks"].as_array().into_iter().flatten() {
        out += &format!(
            "{:<14} {:<8} {:<12} {:<16} {:<16} {:<18} {:<8} {}\n",
            text(&n["network"]),
            text(&n["id"]),
            text(&n["host_member"]),
            text(&n["address"]),
            text(&n["gateway"]),
            text(&n["subnet"]),
            if n["internal"] == true { "no" } else { "yes" },
            texts(&n["dns_upstreams"], ","),
        );
    }
    out += &format!(
        "\n{:<13} {:<14} {:<16} {:>22} {:>22}  {}\n",
        "MEMBER", "NETWORK", "ADDRESS", "FROM MEMBER PKT/B", "TO MEMBER PKT/B", "PUBLISHED"
    );
    for c in s["containers"].as_array().into_iter().flatten() {
        let st = &c["stats"];
        let member = if c["host_member"] == true {
            "(host)"
        } else {
            short(text(&c["container_id"]))
        };
        out += &format!(
            "{:<13} {:<14} {:<16} {:>22} {:>22}  {}\n",
            member,
            text(&c["network"]),
            text(&c["address"]),
            pair(&st["from_container_packets"], &st["from_container_bytes"]),
            pair(&st["to_container_packets"], &st["to_container_bytes"]),
            texts(&c["published_ports"], " "),
        );
    }
    out += &format!(
        "\n{:<13} {:<21} {:>8} {:>13} {:>9} {:>22} {:>22}\n",
        "PEER", "ENDPOINT", "SESSIONS", "HANDSHAKE AGE", "LAST RX", "TX PKT/B", "RX PKT/B"
    );
    let seconds = |ms: &Value| {
        ms.as_u64()
            .map_or("-".to_string(), |ms| format!("{:.1} s", ms as f64 / 1000.0))
    };
    for p in s["peers"].as_array().into_iter().flatten() {
        out += &format!(
            "{:<13} {:<21} {:>8} {:>13} {:>9} {:>22} {:>22}\n",
            short(text(&p["public_key"])),
            text(&p["endpoint"]),
            num(&p["sessions"]),
            seconds(&p["handshake_age_ms"]),
            seconds(&p["last_received_ms"]),
            pair(&p["tx_packets"], &p["tx_bytes"]),
            pair(&p["rx_packets"], &p["rx_bytes"]),
        );
    }
    let dns = &s["dns"];
    out += &format!(
        "\nDNS queries {}: answered here {}, forwarded {}, upstream answers {}, failures {}\n",
        num(&dns["queries"]),
        num(&dns["local_answers"]),
        num(&dns["forwarded"]),
        num(&dns["upstream_answers"]),
        num(&dns["failures"]),
    );
    out += &format!(
        "\nFAST PATH (container to container on this host, no tunnel) PKT/B {}\n",
        pair(&s["fast_path"]["packets"], &s["fast_path"]["bytes"]),
    );
    let sealed: Vec<String> = s["seal_workers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| format!("{}/{}", num(&w["trains"]), num(&w["packets"])))
        .collect();
    out += &match sealed.len() {
        0 => "SEALING on the packet thread\n".to_string(),
        n => format!("SEALING WORKERS {n} TRAINS/PKT {}\n", sealed.join(" ")),
    };
    out += "\nDROPS\n";
    for (reason, count) in s["drops"].as_object().into_iter().flatten() {
        out += &format!("  {reason:<24} {}\n", num(count));
    }
    let poll = &s["poll"]["stats"];
    out += &format!(
        "\nPOLL window {} µs: caught {}, missed {}, over budget {}, {} ms in empty polls\n",
        num(&s["poll"]["window_us"]),
        num(&poll["caught"]),
        num(&poll["missed"]),
        num(&poll["over_budget"]),
        num(&poll["empty_us"]) / 1000,
    );
    out
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("?")
}

/// A JSON list of strings, joined.
fn texts(v: &Value, separator: &str) -> String {
    let items: Vec<&str> = v.as_array().into_iter().flatten().map(text).collect();
    items.join(separator)
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn pair(packets: &Value, bytes: &Value) -> String {
    format!("{}/{}", num(packets), num(bytes))
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}
