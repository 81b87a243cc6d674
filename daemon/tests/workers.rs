//! Sealing and opening on more than one core: trains for other hosts are sealed by worker
//! threads, each flow always by the same one; large received batches are opened on them.
//! Needs root.

mod cluster;

use cluster::*;
use flatnet_test_support::needs_root;

const FLOWS: u16 = 16;
const FLOW_BYTES: u32 = 2_000_000;

fn workers(status: &serde_json::Value) -> Vec<(u64, u64)> {
    let counter = |w: &serde_json::Value, field: &str| w[field].as_u64().unwrap();
    status["seal_workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (counter(w, "trains"), counter(w, "packets")))
        .collect()
}

/// Sends [`FLOWS`] TCP transfers at once from `a` to `b`, on ports from `first_port`; each
/// must arrive whole and in order.
fn send_flows_intact(cluster: &Cluster, a: usize, b: usize, first_port: u16) {
    let contents: Vec<(std::path::PathBuf, Vec<u8>)> = (0..FLOWS)
        .map(|flow| {
            let file = cluster
                .shared
                .path()
                .join(format!("flow-{first_port}-{flow}"));
            // A period (251) prime to the flow's offset: flows differ, and a misplaced
            // segment changes what arrives.
            let content: Vec<u8> = (0..FLOW_BYTES)
                .map(|i| ((i + u32::from(flow) * 31) * 7 % 251) as u8)
                .collect();
            std::fs::write(&file, &content).unwrap();
            (file, content)
        })
        .collect();
    std::thread::scope(|s| {
        let transfers: Vec<_> = contents
            .iter()
            .enumerate()
            .map(|(flow, (file, _))| {
                s.spawn(move || cluster.send_file(a, b, first_port + flow as u16, file))
            })
            .collect();
        for (flow, transfer) in transfers.into_iter().enumerate() {
            let received = transfer.join().unwrap();
            assert!(received == contents[flow].1, "flow {flow} arrived damaged");
        }
    });
}

/// Sixteen TCP transfers at once from a host sealing on four workers to one whose packet
/// thread seals (its acknowledgements) itself: every byte of every flow arrives, in order,
/// and the flows were spread over the workers. The worker count outlives a restart.
#[test]
fn parallel_flows_arrive_intact_when_sealed_on_several_workers() {
    needs_root!();
    let mut cluster = Cluster::new(2);
    cluster.start_daemon_with(0, &["--workers", "4"]);
    cluster.start_daemon_with(1, &["--workers", "0"]);
    let (a, b) = (cluster.attach(0), cluster.attach(1));
    assert!(cluster.ping(a, b, 1));

    send_flows_intact(&cluster, a, b, 7500);

    let sender = cluster.status(0);
    let per_worker = workers(&sender);
    println!("workers (trains, packets): {per_worker:?}");
    assert_eq!(per_worker.len(), 4);
    let busy = per_worker.iter().filter(|(trains, _)| *trains > 0).count();
    assert!(busy >= 2, "{FLOWS} flows all went to one worker");
    let sealed: u64 = per_worker.iter().map(|(_, packets)| packets).sum();
    let payload = u64::from(FLOW_BYTES) * u64::from(FLOWS);
    assert!(
        sealed >= payload / 1500,
        "{sealed} packets cannot carry {payload} bytes"
    );
    let counted = sender["peers"][0]["tx_packets"].as_u64().unwrap();
    assert!(
        counted >= sealed,
        "the peer's count misses handed-off trains"
    );
    assert_eq!(cluster.drops(1, "replay"), 0, "workers reused a counter");
    assert_eq!(workers(&cluster.status(1)), vec![], "--workers 0");

    cluster.stop_daemon(0);
    cluster.start_daemon(0);
    assert_eq!(
        workers(&cluster.status(0)).len(),
        4,
        "kept across a restart"
    );
    assert!(cluster.ping(a, b, 1));
}

/// The same transfers to a host opening on two workers: every byte arrives in order, the
/// workers opened part of it, and no datagram was taken for a replay.
#[test]
fn flows_arrive_intact_when_opened_on_several_workers() {
    needs_root!();
    let mut cluster = Cluster::new(2);
    cluster.start_daemon_with(0, &["--workers", "0"]);
    cluster.start_daemon_with(1, &["--workers", "2"]);
    let (a, b) = (cluster.attach(0), cluster.attach(1));
    assert!(cluster.ping(a, b, 1));

    send_flows_intact(&cluster, a, b, 7600);

    let receiver = cluster.status(1);
    let opened: Vec<u64> = receiver["open_workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["datagrams"].as_u64().unwrap())
        .collect();
    println!("datagrams opened per worker: {opened:?}");
    assert_eq!(opened.len(), 2);
    assert!(
        opened.iter().sum::<u64>() > 0,
        "no batch was opened on the workers"
    );
    assert_eq!(
        cluster.drops(1, "replay"),
        0,
        "a worker's datagram was taken twice"
    );
    assert_eq!(
        cluster.drops(1, "bad_tag"),
        0,
        "a worker opened with the wrong key"
    );
    assert_eq!(
        cluster.status(0)["open_workers"],
        serde_json::json!([]),
        "--workers 0"
    );
}
