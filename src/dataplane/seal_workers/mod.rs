//! Sealing on more than one core. The packet thread reads, checks and routes every packet;
//! segment trains for other hosts are cut, sealed and sent by worker threads, so encryption
//! (half of what a sending host spends) runs beside the reading, routing and receiving.
//!
//! A flow (inner addresses, protocol and ports) always goes to the same worker, which takes
//! its trains in the order it got them: TCP never sees its segments reordered. The packet
//! thread reserves each train's counters before handing it over ([`SealKey`]), so no nonce is
//! used twice. Trains of different flows may reach the wire out of counter order; the
//! receiver's replay window absorbs that, because the newest reserved packet is never more
//! than [`MAX_SPAN`] ahead of the oldest one not yet sent ([`unsent`]). A round's trains go
//! to each worker together, so a worker sends them with as few system calls (and as much UDP
//! GSO) as the packet thread would.

mod unsent;

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::batch::SendBatch;
use super::offload::{Segments, VNET_HDR_LEN};
use super::packet::NETWORK_ID_LEN;
use crate::control::settings::MAX_WORKERS;
use crate::control::status::SealWorkerStats;
use crate::error::{IoContext, Result};
use crate::lighthouse::NetworkId;
use crate::tunnel::replay::WINDOW;
use crate::tunnel::{sealed_len, SealKey};
use unsent::Unsent;

/// How far the newest reserved packet may be ahead of the oldest one not yet sent: half the
/// replay window, so whatever order the workers finish in, the receiver takes every packet.
/// The other half is for what the packet thread seals itself (keepalives, packets held
/// through a handshake) and for reordering on the way.
const MAX_SPAN: u64 = WINDOW / 2;
/// Frames (64 KiB each) per worker: what a round hands over while the others are sealed.
const FRAMES_PER_WORKER: usize = 16;

/// A worker for each CPU beyond two: one for the packet thread, one left to the applications.
/// On two CPUs a worker competes with them for the same cores (docs/benchmark.md), and
/// moving trains between cores costs CPU of its own.
pub fn default_count() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .saturating_sub(2)
        .min(MAX_WORKERS)
}

/// What a worker needs to seal a segment train, besides the frame it was read into.
pub struct Train {
    /// The frame's length: virtio-net header and packet.
    pub len: usize,
    pub segments: Segments,
    /// The packets it is cut into: the counters `key` holds.
    pub packets: usize,
    pub network_id: NetworkId,
    pub key: SealKey,
    pub to: SocketAddr,
}

/// What a worker has sent. The packet thread reads `trains` to learn which of the trains it
/// handed over are out.
#[derive(Default)]
struct WorkerStats {
    trains: AtomicU64,
    packets: AtomicU64,
}

/// Trains and the frames that hold them, for one worker.
type Round = Vec<(Vec<u8>, Train)>;

/// The workers as the packet thread sees them: a lane to each, the frames trains are read
/// into, and which trains each still holds.
pub struct SealWorkers {
    lanes: Vec<SyncSender<Round>>,
    /// Trains handed over in this round, per worker.
    pending: Vec<Round>,
    /// Frames the workers are done with, to read the next train into.
    returned: Receiver<Vec<u8>>,
    spare: Vec<Vec<u8>>,
    frame_len: usize,
    /// Frames made so far, at most [`FRAMES_PER_WORKER`] per worker.
    frames: usize,
    unsent: Unsent,
    /// Per worker, the trains `unsent` knows to be sent.
    seen_sent: Vec<u64>,
    handed_over: u64,
    stats: Vec<Arc<WorkerStats>>,
    threads: Vec<JoinHandle<()>>,
}

impl SealWorkers {
    /// Starts `count` (at least one) workers sending on `udp`; frames are `frame_len` long.
    pub fn spawn(count: usize, udp: &UdpSocket, frame_len: usize) -> Result<Self> {
        let frames = count * FRAMES_PER_WORKER;
        // Room for every frame in both directions: no send ever waits.
        let (give_back, returned) = mpsc::sync_channel(frames);
        let mut workers = SealWorkers {
            lanes: Vec::new(),
            pending: Vec::new(),
            returned,
            spare: Vec::new(),
            frame_len,
            frames: 0,
            unsent: Unsent::new(count),
            seen_sent: vec![0; count],
            handed_over: 0,
            stats: Vec::new(),
            threads: Vec::new(),
        };
        for i in 0..count {
            let (lane, rounds) = mpsc::sync_channel(frames);
            let stats = Arc::new(WorkerStats::default());
            let worker = Worker {
                rounds,
                give_back: give_back.clone(),
                udp: udp.try_clone().context(|| "duplicating the UDP socket")?,
                stats: stats.clone(),
            };
            let thread = super::spawn_worker(format!("flatnet-seal-{i}"), move || worker.run())?;
            workers.lanes.push(lane);
            workers.pending.push(Vec::new());
            workers.stats.push(stats);
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// The worker for the flow `packet` belongs to.
    pub fn lane(&self, packet: &[u8]) -> usize {
        flow_hash(packet) as usize % self.lanes.len()
    }

    /// Hands a train to worker `lane`, to be sent with the rest of the round
    /// ([`SealWorkers::dispatch`]). `frame` holds it and gets an empty one in exchange, to
    /// read the next train into. Waits while the train would be more than [`MAX_SPAN`]
    /// packets ahead of the oldest one the workers have not sent.
    pub fn hand_over(&mut self, lane: usize, frame: &mut Vec<u8>, train: Train) {
        self.unsent.hand_over(lane, train.packets);
        let empty = self.empty_frame();
        self.handed_over += 1;
        self.pending[lane].push((std::mem::replace(frame, empty), train));
    }

    /// Sends each worker the trains handed over since the last call; at the end of each of
    /// the packet thread's rounds.
    pub fn dispatch(&mut self) {
        for (lane, pending) in self.lanes.iter().zip(&mut self.pending) {
            if !pending.is_empty() {
                // A worker lives as long as its lane (see `run_or_abort`).
                let _ = lane.send(std::mem::take(pending));
            }
        }
    }

    /// Trains handed over since the start.
    pub fn handed_over(&self) -> u64 {
        self.handed_over
    }

    /// A frame to read the next train into, once the newest train is near enough the oldest
    /// unsent one: one a worker gave back, or a new one while the workers could hold more.
    fn empty_frame(&mut self) -> Vec<u8> {
        loop {
            self.spare.extend(self.returned.try_iter());
            self.forget_sent();
            if !self.unsent.too_far_apart(MAX_SPAN) {
                if let Some(frame) = self.spare.pop() {
                    return frame;
                }
                if self.frames < self.lanes.len() * FRAMES_PER_WORKER {
                    self.frames += 1;
                    return vec![0; self.frame_len];
                }
            }
            // Wait for a worker to finish a train, after sending it this round's.
            self.dispatch();
            match self.returned.recv() {
                Ok(frame) => self.spare.push(frame),
                Err(_) => return vec![0; self.frame_len],
            }
        }
    }

    /// Tells `unsent` which trains the workers have sent since the last call.
    fn forget_sent(&mut self) {
        for (lane, (stats, seen)) in self.stats.iter().zip(&mut self.seen_sent).enumerate() {
            let sent = stats.trains.load(Ordering::Acquire);
            if sent > *seen {
                self.unsent.sent(lane, (sent - *seen) as usize);
                *seen = sent;
            }
        }
    }

    pub fn status(&self) -> Vec<SealWorkerStats> {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        self.stats
            .iter()
            .map(|s| SealWorkerStats {
                trains: load(&s.trains),
                packets: load(&s.packets),
            })
            .collect()
    }
}

impl Drop for SealWorkers {
    /// Closing the lanes ends the workers once they have sent what they hold.
    fn drop(&mut self) {
        self.dispatch();
        self.lanes.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

struct Worker {
    rounds: Receiver<Round>,
    give_back: SyncSender<Vec<u8>>,
    udp: UdpSocket,
    stats: Arc<WorkerStats>,
}

impl Worker {
    /// Seals and sends each round it is given, then gives its frames back. Trains count as
    /// sent only once flushed (sealed and still queued, they could yet reach the wire after
    /// newer ones), and before their frames return: the packet thread, waiting for a frame,
    /// always finds them counted when one comes.
    fn run(self) {
        let mut plain = vec![0u8; super::BUFFER + VNET_HDR_LEN];
        let mut batch = SendBatch::new();
        let fd = self.udp.as_raw_fd();
        while let Ok(mut round) = self.rounds.recv() {
            let mut sealed = 0;
            for (frame, train) in &mut round {
                sealed += seal(frame, train, &mut plain, &mut batch, fd);
            }
            batch.flush(fd);
            self.stats.packets.fetch_add(sealed, Ordering::Relaxed);
            self.stats
                .trains
                .fetch_add(round.len() as u64, Ordering::Release);
            for (frame, _) in round {
                // Room for every frame there is: never full.
                let _ = self.give_back.try_send(frame);
            }
        }
    }
}

/// Cuts the train into packets, prefixes each with the network id and seals it straight into
/// `batch`; returns how many were sealed.
fn seal(
    frame: &[u8],
    train: &mut Train,
    plain: &mut [u8],
    batch: &mut SendBatch,
    fd: RawFd,
) -> u64 {
    plain[..NETWORK_ID_LEN].copy_from_slice(&train.network_id.to_be_bytes());
    let frame = &frame[..train.len];
    let mut sealed = 0;
    while let Some(len) = train
        .segments
        .next_into(frame, &mut plain[NETWORK_ID_LEN..])
    {
        let plaintext = &plain[..NETWORK_ID_LEN + len];
        let key = &mut train.key;
        let fill = |slot: &mut [u8]| key.seal(plaintext, slot).is_some();
        if batch.push_with(sealed_len(plaintext.len()), train.to, fill) {
            sealed += 1;
        }
        if batch.is_full() {
            batch.flush(fd);
        }
    }
    sealed
}

/// A hash of the packet's flow: addresses and protocol, and the ports of an unfragmented TCP
/// or UDP packet (IPv6: one whose next header is TCP or UDP, without extension headers). Every
/// packet of a flow hashes alike (a train's segments share its headers).
fn flow_hash(packet: &[u8]) -> u32 {
    const TCP: u8 = 6;
    const UDP: u8 = 17;
    let word = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let (addresses, protocol, ports_at) = match packet.first().map(|b| b >> 4) {
        Some(4) if packet.len() >= 20 => {
            let fragmented = u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff != 0;
            let ports_at = (!fragmented).then_some(usize::from(packet[0] & 0x0f) * 4);
            (&packet[12..20], packet[9], ports_at)
        }
        Some(6) if packet.len() >= 40 => (&packet[8..40], packet[6], Some(40)),
        _ => return 0,
    };
    let mut hash = mix(u32::from(protocol));
    for chunk in addresses.chunks_exact(4) {
        hash = mix(hash ^ word(chunk));
    }
    let ports = ports_at.and_then(|at| packet.get(at..at + 4));
    if let Some(ports) = ports.filter(|_| matches!(protocol, TCP | UDP)) {
        hash = mix(hash ^ word(ports));
    }
    hash
}

/// A 32-bit integer mixer (the finaliser of MurmurHash3): nearby inputs land far apart.
fn mix(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 13;
    x = x.wrapping_mul(0xc2b2_ae35);
    x ^ (x >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(protocol: u8, src_port: u16, flags_fragment: u16) -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 40, 0, 0, 0, 0, 64, protocol, 0, 0, 198, 51, 100, 2, 198, 51, 100, 3,
        ];
        p[6..8].copy_from_slice(&flags_fragment.to_be_bytes());
        p.extend_from_slice(&src_port.to_be_bytes());
        p.extend_from_slice(&[0x1f, 0x90]);
        p.extend_from_slice(&[0xaa; 16]);
        p
    }

    #[test]
    fn a_flow_always_hashes_alike_and_flows_spread() {
        let first = packet(6, 40000, 0x4000);
        let mut later = first.clone();
        later[24..].fill(0x55); // other sequence numbers, flags, payload
        later[2..4].copy_from_slice(&1500u16.to_be_bytes());
        assert_eq!(flow_hash(&first), flow_hash(&later));

        let lanes: std::collections::HashSet<u32> = (0..64)
            .map(|port| flow_hash(&packet(6, 40000 + port, 0)) % 4)
            .collect();
        assert_eq!(lanes.len(), 4, "64 flows reach every one of 4 workers");
        assert_ne!(flow_hash(&packet(6, 1, 0)), flow_hash(&packet(17, 1, 0)));
    }

    #[test]
    fn fragments_of_a_datagram_hash_by_addresses_only() {
        // Later fragments carry no ports: the whole datagram must stay on one worker.
        let first = packet(17, 5353, 0x2000);
        let mut later = packet(17, 0, 0x00b9);
        later[20..24].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(flow_hash(&first), flow_hash(&later));
        assert_eq!(flow_hash(&[0x45; 10]), 0, "too short to route");
    }

    #[test]
    fn an_ipv6_flow_hashes_alike_whatever_its_lengths_and_flows_spread() {
        let flow = |port: u16, payload_len: u16| {
            let mut p = vec![0x60, 0, 0, 0, 0, 0, 6, 64];
            p[4..6].copy_from_slice(&payload_len.to_be_bytes());
            p.extend_from_slice(&[0xfd, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
            p.extend_from_slice(&[0xfd, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]);
            p.extend_from_slice(&port.to_be_bytes());
            p.extend_from_slice(&[0x1f, 0x90]);
            p.extend_from_slice(&[0xaa; 16]);
            p
        };
        assert_eq!(flow_hash(&flow(40000, 1420)), flow_hash(&flow(40000, 77)));
        let lanes: std::collections::HashSet<u32> = (0..64)
            .map(|port| flow_hash(&flow(40000 + port, 1420)) % 4)
            .collect();
        assert_eq!(lanes.len(), 4, "64 flows reach every one of 4 workers");
    }
}
