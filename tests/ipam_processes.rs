//! Many allocators in separate processes on one lease directory, as concurrent plugin
//! invocations are: every address is handed out once, none is lost. Each process allocates
//! from both subnets of a dual-stack network, which share the directory.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use flatnet::ipam::{DirLeaseStore, IpAddressManager, Lease};

const CHILD_ENV: &str = "FLATNET_IPAM_CHILD_DIR";
const PROCESSES: usize = 8;
const PER_PROCESS: usize = 30;

/// The IPv4 and the IPv6 subnet's managers.
fn managers(dir: &Path) -> [IpAddressManager<DirLeaseStore>; 2] {
    let manager = |subnet: &str, gateway: &str| {
        let store = DirLeaseStore::new(dir.join("leases"), dir.join("lock"));
        IpAddressManager::new(
            "procs",
            subnet.parse().unwrap(),
            gateway.parse().unwrap(),
            store,
        )
    };
    [
        manager("192.0.2.0/24", "192.0.2.1"),
        manager("2001:db8::/120", "2001:db8::1"),
    ]
}

/// The child half: runs only when re-executed by the parent test below.
#[test]
fn child_allocator() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let me = std::process::id();
    for i in 0..PER_PROCESS {
        let lease = Lease {
            container_id: format!("p{me}-{i}"),
            ifname: "eth0".into(),
        };
        for ipam in &managers(Path::new(&dir)) {
            let ip = ipam.allocate_ip(&lease, None).unwrap();
            println!("ALLOCATED {ip}");
            if i % 3 == 0 {
                // Release and take again, so releases race with allocations too.
                ipam.release_ip(&lease.container_id).unwrap();
                let again = ipam.allocate_ip(&lease, None).unwrap();
                println!("REPLACED {ip} {again}");
            }
        }
    }
}

#[test]
fn concurrent_processes_never_share_or_lose_an_address() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "child_allocator",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, dir.path())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut held: Vec<IpAddr> = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            // The test harness may print its own words before ours on the same line.
            let words: Vec<&str> = line
                .split_whitespace()
                .skip_while(|w| !matches!(*w, "ALLOCATED" | "REPLACED"))
                .collect();
            match words.as_slice() {
                ["ALLOCATED", ip] => held.push(ip.parse().unwrap()),
                ["REPLACED", old, new] => {
                    let old: IpAddr = old.parse().unwrap();
                    let pos = held.iter().position(|ip| *ip == old).unwrap();
                    held[pos] = new.parse().unwrap();
                }
                _ => {}
            }
        }
    }
    assert_eq!(held.len(), 2 * PROCESSES * PER_PROCESS);
    let ipv6 = held.iter().filter(|ip| ip.is_ipv6()).count();
    assert_eq!(
        ipv6,
        PROCESSES * PER_PROCESS,
        "one address of each family each"
    );
    let unique: HashSet<_> = held.iter().collect();
    assert_eq!(unique.len(), held.len(), "an address was handed out twice");

    let [v4, v6] = managers(dir.path());
    let leases = [v4.leases().unwrap(), v6.leases().unwrap()].concat();
    let on_disk: HashSet<_> = leases.iter().map(|(ip, _)| ip).collect();
    assert_eq!(
        on_disk, unique,
        "leases on disk differ from what was handed out"
    );
}
