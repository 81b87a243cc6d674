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

fn render(s: &Value) -> String {
    let mut out = format!(
        "flatnetd {} (protocol {}), listening on {}, up {} s, RSS {} KiB\nhost key {}\n",
        s["version"].as_str().unwrap_or("?"),
        s["protocol"],
        s["listen"].as_str().unwrap_or("?"),
        s["uptime_ms"].as_u64().unwrap_or(0) / 1000,
        s["rss_kib"],
        s["public_key"].as_str().unwrap_or("?"),
    );
    out +=
        "\nCONTAINER     NETWORK       ADDRESS          FROM-CTR PKTS/BYTES   TO-CTR PKTS/BYTES\n";
    for c in s["containers"].as_array().into_iter().flatten() {
        let st = &c["stats"];
        out += &format!(
            "{:<13} {:<13} {:<16} {:>8}/{:<12} {:>8}/{}\n",
            short(c["container_id"].as_str().unwrap_or("")),
            c["network"].as_str().unwrap_or(""),
            c["address"].as_str().unwrap_or(""),
            st["from_container_packets"],
            st["from_container_bytes"],
            st["to_container_packets"],
            st["to_container_bytes"],
        );
    }
    out += "\nPEER          ENDPOINT              SESSIONS HANDSHAKE-AGE  TX PKTS/BYTES        RX PKTS/BYTES\n";
    for p in s["peers"].as_array().into_iter().flatten() {
        let age = p["handshake_age_ms"]
            .as_u64()
            .map_or("-".to_string(), |ms| format!("{:.1} s", ms as f64 / 1000.0));
        out += &format!(
            "{:<13} {:<21} {:>8} {:>13}  {:>8}/{:<11} {:>8}/{}\n",
            short(p["public_key"].as_str().unwrap_or("")),
            p["endpoint"].as_str().unwrap_or(""),
            p["sessions"],
            age,
            p["tx_packets"],
            p["tx_bytes"],
            p["rx_packets"],
            p["rx_bytes"],
        );
    }
    out += "\nDROPS\n";
    for (reason, count) in s["drops"].as_object().into_iter().flatten() {
        out += &format!("  {reason:<16} {count}\n");
    }
    out
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}
