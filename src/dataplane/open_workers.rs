//! Opening on more than one core. Opening a datagram costs as much as sealing it, and one
//! tunnel's datagrams all come on one socket with the same addresses, so neither the kernel
//! (`SO_REUSEPORT`) nor a flow hash could spread a single stream: the batch is split instead.
//!
//! For a batch of enough transport datagrams, the packet thread cuts the list into chunks of
//! [`CHUNK`] datagrams (their ciphertexts copied into each chunk) and puts them in a pool; it
//! and the workers take chunks until none is left, and it waits only for the chunks a worker
//! is still opening: a worker that is not scheduled in time (every CPU busy) costs a wake-up,
//! never a stall. Then the packet thread takes the datagrams in the batch's order again: a
//! worker only proves a datagram authentic and decrypts it; the session's replay window, the
//! peer's roaming and the delivery are the packet thread's, so every flow keeps the batch's
//! order, as without workers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::control::status::OpenWorkerStats;
use crate::error::Result;
use crate::tunnel::{DropReason, OpenKey};

/// Fewer datagrams than this are opened on the packet thread alone: waking a worker costs
/// more than it would open.
const MIN_BATCH: usize = 16;
/// Datagrams per chunk: what the packet thread may wait for at the end is one chunk's
/// opening per worker (some microseconds).
const CHUNK: usize = 8;
/// The place of a chunk not in the batch being opened.
const SPARE: usize = usize::MAX;

/// A run of a batch's datagrams, opened by one thread.
#[derive(Default)]
struct Chunk {
    /// Its place in the batch's run of chunks.
    index: usize,
    items: Vec<Item>,
    ciphertext: Vec<u8>,
    /// Kept at its largest size: `plaintext_used` of it is this batch's.
    plaintext: Vec<u8>,
    plaintext_used: usize,
}

struct Item {
    /// The datagram's place in the batch.
    seq: usize,
    key: OpenKey,
    /// Its ciphertext, `ciphertext[at..at + len]`; its plaintext goes to
    /// `plaintext[plain_at + headroom..]`, with room for `len` bytes.
    at: usize,
    plain_at: usize,
    len: usize,
    opened: Result<usize, DropReason>,
}

impl Chunk {
    fn clear(&mut self, index: usize) {
        self.index = index;
        self.items.clear();
        self.ciphertext.clear();
        self.plaintext_used = 0;
    }

    fn add(&mut self, seq: usize, key: OpenKey, ciphertext: &[u8], headroom: usize) {
        let at = self.ciphertext.len();
        let plain_at = self.plaintext_used;
        self.ciphertext.extend_from_slice(ciphertext);
        self.plaintext_used += headroom + ciphertext.len();
        if self.plaintext.len() < self.plaintext_used {
            self.plaintext.resize(self.plaintext_used, 0);
        }
        self.items.push(Item {
            seq,
            key,
            at,
            plain_at,
            len: ciphertext.len(),
            opened: Err(DropReason::BadTag),
        });
    }

    fn open_all(&mut self, headroom: usize) {
        for item in &mut self.items {
            let ciphertext = &self.ciphertext[item.at..item.at + item.len];
            let out = &mut self.plaintext[item.plain_at + headroom..][..item.len];
            item.opened = item.key.open(ciphertext, out);
        }
    }
}

/// A datagram opened ahead, as the packet thread takes it back.
pub struct Opened<'a> {
    pub key: &'a OpenKey,
    /// The plaintext's length, or why the datagram did not open.
    pub result: Result<usize, DropReason>,
    /// The plaintext at `headroom` (see [`OpenWorkers::spawn`]), with room after it for a
    /// relayed datagram to be opened in place.
    pub buffer: &'a mut [u8],
}

/// The workers as the packet thread sees them.
pub struct OpenWorkers {
    pool: Arc<Pool>,
    /// The batch's chunks in order (the first `filled`), then spare ones; all but the first
    /// are in the pool while [`OpenWorkers::open`] runs.
    chunks: Vec<Chunk>,
    filled: usize,
    /// Where [`OpenWorkers::next_opened`] is: chunk and item.
    cursor: (usize, usize),
    headroom: usize,
    stats: Vec<Arc<AtomicU64>>,
    threads: Vec<JoinHandle<()>>,
}

impl OpenWorkers {
    /// Starts `count` (at least one) workers; each plaintext is put `headroom` bytes into its
    /// buffer, for the headers the delivery writes before it.
    pub fn spawn(count: usize, headroom: usize) -> Result<Self> {
        let pool = Arc::new(Pool::default());
        let mut workers = OpenWorkers {
            pool: pool.clone(),
            chunks: Vec::new(),
            filled: 0,
            cursor: (0, 0),
            headroom,
            stats: Vec::new(),
            threads: Vec::new(),
        };
        for i in 0..count {
            let opened = Arc::new(AtomicU64::new(0));
            let worker = Worker {
                pool: pool.clone(),
                headroom,
                opened: opened.clone(),
            };
            let thread = super::spawn_worker(format!("flatnet-open-{i}"), move || worker.run())?;
            workers.stats.push(opened);
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// Starts a batch of `datagrams`; whether it is worth opening ahead.
    pub fn plan(&mut self, datagrams: usize) -> bool {
        for chunk in &mut self.chunks[..self.filled] {
            chunk.index = SPARE;
        }
        self.filled = 0;
        self.cursor = (0, 0);
        datagrams >= MIN_BATCH
    }

    /// Takes the batch's datagram `seq` (in increasing order) to be opened with `key`.
    pub fn add(&mut self, seq: usize, key: OpenKey, ciphertext: &[u8]) {
        let full = self.filled == 0 || self.chunks[self.filled - 1].items.len() == CHUNK;
        if full {
            if self.chunks.len() == self.filled {
                self.chunks.push(Chunk::default());
            }
            self.chunks[self.filled].clear(self.filled);
            self.filled += 1;
        }
        self.chunks[self.filled - 1].add(seq, key, ciphertext, self.headroom);
    }

    /// Opens what was added, here and on the workers. Chunks travel by value and come back to
    /// their place in the batch; no buffer is made anew once the largest batch has been seen.
    pub fn open(&mut self) {
        if self.filled == 0 {
            return;
        }
        // The first chunk here at once: the workers take the others meanwhile.
        self.pool.offer(self.chunks.drain(1..self.filled));
        self.chunks[0].open_all(self.headroom);
        while let Some(mut chunk) = self.pool.take() {
            chunk.open_all(self.headroom);
            self.chunks.push(chunk);
        }
        self.pool.wait_opened(&mut self.chunks);
        // The batch's chunks by their place, the spare ones behind them.
        self.chunks.sort_unstable_by_key(|chunk| chunk.index);
    }

    /// Datagram `seq`'s opening, if it was opened ahead; asked in increasing order.
    pub fn next_opened(&mut self, seq: usize) -> Option<Opened<'_>> {
        let (mut chunk, mut item) = self.cursor;
        if chunk < self.filled && item == self.chunks[chunk].items.len() {
            (chunk, item) = (chunk + 1, 0);
        }
        let found = self.chunks[..self.filled]
            .get(chunk)
            .and_then(|c| c.items.get(item))
            .is_some_and(|i| i.seq == seq);
        if !found {
            return None;
        }
        self.cursor = (chunk, item + 1);
        let headroom = self.headroom;
        let chunk = &mut self.chunks[chunk];
        let item = &chunk.items[item];
        Some(Opened {
            key: &item.key,
            result: item.opened,
            buffer: &mut chunk.plaintext[item.plain_at..][..headroom + item.len],
        })
    }

    pub fn status(&self) -> Vec<OpenWorkerStats> {
        self.stats
            .iter()
            .map(|opened| OpenWorkerStats {
                datagrams: opened.load(Ordering::Relaxed),
            })
            .collect()
    }
}

impl Drop for OpenWorkers {
    /// Closing the pool ends the workers.
    fn drop(&mut self) {
        self.pool.close();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// The chunks of the batch being opened, shared by the packet thread and the workers.
#[derive(Default)]
struct Pool {
    state: Mutex<PoolState>,
    /// Signalled when chunks are offered or the pool closes.
    for_workers: Condvar,
    /// Signalled when the last chunk being opened by a worker is put back.
    for_packet_thread: Condvar,
}

#[derive(Default)]
struct PoolState {
    offered: Vec<Chunk>,
    /// Taken by workers and not yet put back.
    opening: usize,
    opened: Vec<Chunk>,
    closed: bool,
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // A worker that panicked aborted the process: the lock is never poisoned in use.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn offer(&self, chunks: impl Iterator<Item = Chunk>) {
        let mut state = self.lock();
        state.offered.extend(chunks);
        let any = !state.offered.is_empty();
        drop(state);
        if any {
            self.for_workers.notify_all();
        }
    }

    /// A chunk nobody has taken yet (for the packet thread).
    fn take(&self) -> Option<Chunk> {
        self.lock().offered.pop()
    }

    /// Moves the chunks the workers opened into `into`, once none is being opened any more.
    fn wait_opened(&self, into: &mut Vec<Chunk>) {
        let mut state = self.lock();
        while state.opening > 0 {
            state = self
                .for_packet_thread
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        into.append(&mut state.opened);
    }

    /// The next chunk to open (for a worker); `None` once the pool is closed.
    fn next(&self) -> Option<Chunk> {
        let mut state = self.lock();
        loop {
            if state.closed {
                return None;
            }
            if let Some(chunk) = state.offered.pop() {
                state.opening += 1;
                return Some(chunk);
            }
            state = self
                .for_workers
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    fn put_back(&self, chunk: Chunk) {
        let mut state = self.lock();
        state.opened.push(chunk);
        state.opening -= 1;
        let last = state.opening == 0;
        drop(state);
        if last {
            self.for_packet_thread.notify_one();
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.for_workers.notify_all();
    }
}

struct Worker {
    pool: Arc<Pool>,
    headroom: usize,
    opened: Arc<AtomicU64>,
}

impl Worker {
    fn run(self) {
        while let Some(mut chunk) = self.pool.next() {
            chunk.open_all(self.headroom);
            self.opened
                .fetch_add(chunk.items.len() as u64, Ordering::Relaxed);
            self.pool.put_back(chunk);
        }
    }
}
