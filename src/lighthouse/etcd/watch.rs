//! Following etcd: one watch per scope (every host's certificate and candidates; the
//! revocation lists; each network this host serves), each read once and then watched.
//!
//! A watch that breaks (a member restarting, a leader election: `require_leader` ends every
//! watch without a leader) starts again from the last revision it delivered, so nothing is
//! read twice and no route flaps. Only when etcd compacted past that revision is the scope
//! read again, after a random pause: a leader loss breaks every host's watches at once, and a
//! thousand hosts must not read at the same instant.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, KeyValue, WatchOptions};
use tokio::task::AbortHandle;

use super::layout::{self, parse_key, parse_kv, Key, Stored};
use super::writes::{bounded, unavailable};
use super::{LeaseState, RETRY_PAUSE};
use crate::error::{Error, Result};
use crate::lighthouse::{Candidates, Change, Feed, FeedHealth};

/// The longest random pause before a scope is read again after a compaction.
const FULL_READ_SPREAD: Duration = Duration::from_secs(5);
/// The longest pause between attempts while etcd does not answer.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);

/// What one watch follows: one prefix of the layout.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Scope {
    /// Every host's certificate and candidates.
    Hosts,
    /// The network CAs' revocation lists.
    Revocations,
    /// The entries of one network.
    Network(String),
}

impl Scope {
    fn prefix(&self) -> String {
        match self {
            Scope::Hosts => layout::HOSTS.to_string(),
            Scope::Revocations => layout::REVOCATIONS.to_string(),
            Scope::Network(network) => layout::network_prefix(network),
        }
    }

    /// Everything the scope holds, as changes that replace what was known of it.
    fn snapshot(&self, kvs: &[KeyValue]) -> Vec<Change> {
        let (mut certs, mut entries, mut candidates, mut lists) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for stored in kvs.iter().filter_map(parse_kv) {
            match stored {
                Stored::Cert(cert) => certs.push(cert),
                Stored::Candidates(host, published) => candidates.push((host, published)),
                Stored::Entry(published) => entries.push(published),
                Stored::Revocations(list) => lists.push(Change::Revocations(list)),
            }
        }
        match self {
            Scope::Hosts => vec![Change::Hosts { certs, candidates }],
            // A list is never taken back by its absence: only a newer list replaces it.
            Scope::Revocations => lists,
            Scope::Network(network) => vec![Change::Network {
                network: network.clone(),
                entries,
            }],
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Hosts => f.write_str("hosts"),
            Scope::Revocations => f.write_str("revocations"),
            Scope::Network(network) => write!(f, "network {network}"),
        }
    }
}

/// A batch of changes from one watch; watch 0 is the lighthouse itself.
struct Batch {
    watch: u64,
    changes: Vec<Change>,
}

/// How following goes, for status and metrics.
#[derive(Debug, Default)]
pub(super) struct WatchState {
    /// Scope -> why its watch is down, or `None` while it follows.
    scopes: BTreeMap<Scope, Option<String>>,
    /// The newest revision delivered by any watch.
    revision: i64,
    full_reads: u64,
    resumed: u64,
    /// Key and value bytes received, by reads and by watches.
    bytes: u64,
}

/// The watches of one lighthouse: which scopes are followed, by which task.
pub(super) struct Watches {
    runtime: tokio::runtime::Handle,
    client: Client,
    state: Arc<Mutex<WatchState>>,
    registry: Arc<Mutex<Registry>>,
}

#[derive(Default)]
struct Registry {
    /// Where the changes go; none before [`Watches::start`].
    sink: Option<Sender<Batch>>,
    /// The networks to follow.
    wanted: BTreeSet<String>,
    active: BTreeMap<Scope, (u64, AbortHandle)>,
    next_id: u64,
}

impl Registry {
    fn is_current(&self, watch: u64) -> bool {
        watch == 0 || self.active.values().any(|(id, _)| *id == watch)
    }
}

impl Watches {
    pub(super) fn new(runtime: tokio::runtime::Handle, client: Client) -> Self {
        Watches {
            runtime,
            client,
            state: Arc::default(),
            registry: Arc::default(),
        }
    }

    /// Starts following (again, from scratch, if it did already): the feed receives the
    /// scopes' reads, then their changes.
    pub(super) fn start(&self, lease: Arc<Mutex<LeaseState>>, ttl_s: u32) -> EtcdFeed {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut registry = self.registry.lock().unwrap();
        for (_, (_, task)) in std::mem::take(&mut registry.active) {
            task.abort();
        }
        registry.sink = Some(tx);
        let mut scopes = vec![Scope::Hosts, Scope::Revocations];
        scopes.extend(registry.wanted.iter().cloned().map(Scope::Network));
        for scope in scopes {
            self.spawn(&mut registry, scope);
        }
        EtcdFeed {
            changes: rx,
            registry: self.registry.clone(),
            state: self.state.clone(),
            lease,
            ttl_s,
        }
    }

    /// Follows the entries of these networks, and of no other: a network added is read, one
    /// dropped is forgotten (the feed reports it empty).
    pub(super) fn follow_networks(&self, networks: &BTreeSet<String>) {
        let mut registry = self.registry.lock().unwrap();
        registry.wanted = networks.clone();
        if registry.sink.is_none() {
            return; // started by `start`
        }
        let dropped: Vec<String> = registry
            .active
            .keys()
            .filter_map(|scope| match scope {
                Scope::Network(network) if !networks.contains(network) => Some(network.clone()),
                _ => None,
            })
            .collect();
        for network in dropped {
            let scope = Scope::Network(network.clone());
            if let Some((_, task)) = registry.active.remove(&scope) {
                task.abort();
            }
            self.state.lock().unwrap().scopes.remove(&scope);
            let forget = Batch {
                watch: 0,
                changes: vec![Change::Network {
                    network,
                    entries: Vec::new(),
                }],
            };
            if let Some(sink) = &registry.sink {
                let _ = sink.send(forget);
            }
        }
        for network in networks {
            let scope = Scope::Network(network.clone());
            if !registry.active.contains_key(&scope) {
                self.spawn(&mut registry, scope);
            }
        }
    }

    fn spawn(&self, registry: &mut Registry, scope: Scope) {
        let Some(sink) = registry.sink.clone() else {
            return;
        };
        registry.next_id += 1;
        let id = registry.next_id;
        // Following starts with the certificates; a network joined later is read in a moment,
        // and is no reason to refuse the attaches that come meanwhile.
        let first = match scope {
            Scope::Network(_) => None,
            _ => Some("not read yet".to_string()),
        };
        self.state
            .lock()
            .unwrap()
            .scopes
            .insert(scope.clone(), first);
        let watch = ScopeWatch {
            scope: scope.clone(),
            id,
            client: self.client.clone(),
            sink,
            state: self.state.clone(),
            failures: 0,
        };
        let task = self.runtime.spawn(watch.run());
        registry.active.insert(scope, (id, task.abort_handle()));
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        for (_, (_, task)) in std::mem::take(&mut self.registry.lock().unwrap().active) {
            task.abort();
        }
    }
}

/// How a watch ended.
enum Ended {
    /// Nobody takes the changes any more.
    Unheard,
    /// etcd no longer has the revisions after the one delivered.
    Compacted(i64),
    Broken(Error),
}

/// The task that follows one scope.
struct ScopeWatch {
    scope: Scope,
    id: u64,
    client: Client,
    sink: Sender<Batch>,
    state: Arc<Mutex<WatchState>>,
    /// Attempts that failed in a row.
    failures: u32,
}

impl ScopeWatch {
    async fn run(mut self) {
        // Every change up to this revision was delivered; none: the scope must be read.
        let mut delivered: Option<i64> = None;
        loop {
            let resuming = delivered.is_some();
            if delivered.is_none() {
                match self.read().await {
                    Ok(Some(revision)) => delivered = Some(revision),
                    Ok(None) => return,
                    Err(e) => {
                        self.down(&e).await;
                        continue;
                    }
                }
            }
            match self.watch(&mut delivered, resuming).await {
                Ended::Unheard => return,
                Ended::Compacted(oldest) => {
                    let why = format!("etcd compacted past revision {delivered:?} (to {oldest})");
                    tracing::info!("{}: {why}; reading it again", self.scope);
                    self.state
                        .lock()
                        .unwrap()
                        .scopes
                        .insert(self.scope.clone(), Some(why));
                    delivered = None;
                    tokio::time::sleep(FULL_READ_SPREAD.mul_f64(unit_random())).await;
                }
                Ended::Broken(e) => self.down(&e).await,
            }
        }
    }

    /// Reads the whole scope and delivers it; the revision read at, or `None` if nobody
    /// listens any more.
    async fn read(&mut self) -> Result<Option<i64>> {
        let options = GetOptions::new().with_prefix();
        let read = self.client.get(self.scope.prefix(), Some(options));
        let snapshot = bounded("reading the lighthouse", read).await?;
        let revision = snapshot.header().map_or(0, |h| h.revision());
        {
            let mut state = self.state.lock().unwrap();
            state.full_reads += 1;
            state.bytes += snapshot.kvs().iter().map(kv_bytes).sum::<u64>();
        }
        let changes = self.scope.snapshot(snapshot.kvs());
        if self.deliver(changes, revision).is_err() {
            return Ok(None);
        }
        Ok(Some(revision))
    }

    /// Watches from just after `delivered`, advancing it as changes are delivered.
    async fn watch(&mut self, delivered: &mut Option<i64>, resuming: bool) -> Ended {
        let from = delivered.unwrap_or(0) + 1;
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from)
            // Moves `delivered` on while the scope is quiet, so a compaction does not pass it.
            .with_progress_notify();
        let watch = self.client.watch(self.scope.prefix(), Some(options));
        let mut stream = match bounded("watching the lighthouse", watch).await {
            Ok(stream) => stream,
            Err(e) => return Ended::Broken(e),
        };
        loop {
            let response = match stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => {
                    return Ended::Broken(Error::LighthouseUnavailable("the watch ended".into()))
                }
                Err(e) => return Ended::Broken(unavailable("watching the lighthouse", e)),
            };
            if response.compact_revision() > 0 {
                return Ended::Compacted(response.compact_revision());
            }
            if response.canceled() {
                let why = format!("the watch was cancelled: {}", response.cancel_reason());
                return Ended::Broken(Error::LighthouseUnavailable(why));
            }
            if response.created() {
                self.up(resuming);
                continue;
            }
            let events = response.events();
            let revision = match events.iter().filter_map(|e| e.kv()).next_back() {
                Some(kv) => kv.mod_revision(),
                // A progress notification: every change up to the header's revision was sent.
                None => response.header().map_or(0, |h| h.revision()),
            };
            let changes: Vec<Change> = events.iter().filter_map(change_of).collect();
            self.state.lock().unwrap().bytes += events
                .iter()
                .filter_map(|e| e.kv())
                .map(kv_bytes)
                .sum::<u64>();
            if self.deliver(changes, revision).is_err() {
                return Ended::Unheard;
            }
            *delivered = Some(revision.max(delivered.unwrap_or(0)));
        }
    }

    fn deliver(&self, changes: Vec<Change>, revision: i64) -> std::result::Result<(), ()> {
        if !changes.is_empty() {
            let batch = Batch {
                watch: self.id,
                changes,
            };
            self.sink.send(batch).map_err(drop)?;
        }
        let mut state = self.state.lock().unwrap();
        state.revision = state.revision.max(revision);
        Ok(())
    }

    fn up(&mut self, resumed: bool) {
        self.failures = 0;
        let mut state = self.state.lock().unwrap();
        state.resumed += u64::from(resumed);
        if let Some(error) = state.scopes.get_mut(&self.scope) {
            *error = None;
        }
    }

    /// Notes why following stopped, and pauses before the next attempt.
    async fn down(&mut self, e: &Error) {
        tracing::warn!("following etcd ({}): {e}", self.scope);
        if let Some(error) = self.state.lock().unwrap().scopes.get_mut(&self.scope) {
            *error = Some(e.to_string());
        }
        self.failures += 1;
        tokio::time::sleep(retry_pause(self.failures)).await;
    }
}

fn change_of(event: &etcd_client::Event) -> Option<Change> {
    let kv = event.kv()?;
    match (event.event_type(), parse_key(kv.key())?) {
        (EventType::Put, _) => match parse_kv(kv)? {
            Stored::Cert(cert) => Some(Change::Cert(cert)),
            Stored::Entry(published) => Some(Change::Put(published)),
            Stored::Revocations(list) => Some(Change::Revocations(list)),
            Stored::Candidates(host, candidates) => Some(Change::Candidates { host, candidates }),
        },
        // A list taken away revokes nothing less: only a newer list lifts a revocation.
        (EventType::Delete, Key::Revocations { .. }) => None,
        (EventType::Delete, Key::Cert { host }) => Some(Change::CertGone { host }),
        (EventType::Delete, Key::Candidates { host }) => Some(Change::Candidates {
            host,
            candidates: Candidates::default(),
        }),
        (EventType::Delete, Key::Entry { network, host, ip }) => {
            Some(Change::Delete { host, network, ip })
        }
    }
}

fn kv_bytes(kv: &KeyValue) -> u64 {
    (kv.key().len() + kv.value().len()) as u64
}

/// The pause before attempt `failures + 1`: doubling from [`RETRY_PAUSE`], at most
/// [`MAX_RETRY_PAUSE`], and spread over its upper half so that hosts drift apart.
fn retry_pause(failures: u32) -> Duration {
    let pause = RETRY_PAUSE
        .saturating_mul(1 << failures.saturating_sub(1).min(8))
        .min(MAX_RETRY_PAUSE);
    pause.mul_f64(0.5 + unit_random() / 2.0)
}

/// A random number in [0, 1).
fn unit_random() -> f64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("system random source");
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// The receiving end of the watches, for the data plane's follower.
pub(super) struct EtcdFeed {
    changes: Receiver<Batch>,
    registry: Arc<Mutex<Registry>>,
    state: Arc<Mutex<WatchState>>,
    lease: Arc<Mutex<LeaseState>>,
    ttl_s: u32,
}

impl EtcdFeed {
    /// The batch's changes, unless its watch was stopped since (a network no longer
    /// followed, whose emptying the lighthouse reported already).
    fn current(&self, batch: Batch) -> Vec<Change> {
        if self.registry.lock().unwrap().is_current(batch.watch) {
            batch.changes
        } else {
            Vec::new()
        }
    }
}

impl Feed for EtcdFeed {
    fn changes(&mut self, wait: Duration) -> Result<Vec<Change>> {
        let mut changes = match self.changes.recv_timeout(wait) {
            Ok(batch) => self.current(batch),
            Err(RecvTimeoutError::Timeout) => return Ok(Vec::new()),
            Err(RecvTimeoutError::Disconnected) => {
                return Err(Error::LighthouseUnavailable(
                    "the etcd client stopped".into(),
                ))
            }
        };
        while let Ok(batch) = self.changes.try_recv() {
            changes.extend(self.current(batch));
        }
        Ok(changes)
    }

    fn health(&self) -> FeedHealth {
        let lease = self.lease.lock().unwrap().clone();
        let state = self.state.lock().unwrap();
        let ttl_left_ms = lease.lease_ttl.map(|(ttl, at)| {
            (ttl * 1000)
                .saturating_sub(at.elapsed().as_millis() as i64)
                .max(0)
        });
        let down: Vec<String> = state
            .scopes
            .iter()
            .filter_map(|(scope, error)| Some(format!("{scope}: {}", error.as_ref()?)))
            .collect();
        let watch_error = (!down.is_empty()).then(|| down.join("; "));
        FeedHealth {
            backend: "etcd".into(),
            healthy: watch_error.is_none()
                && lease.lease_ttl.is_some()
                && lease.lease_error.is_none(),
            error: watch_error.or(lease.lease_error),
            revision: state.revision,
            lease_id: Some(format!("{:x}", lease.lease_id)),
            lease_ttl_s: Some(self.ttl_s),
            lease_ttl_left_ms: ttl_left_ms,
            full_reads: state.full_reads,
            resumed_watches: state.resumed,
            read_bytes: state.bytes,
            networks: Some(
                state
                    .scopes
                    .keys()
                    .filter_map(|scope| match scope {
                        Scope::Network(network) => Some(network.clone()),
                        _ => None,
                    })
                    .collect(),
            ),
        }
    }
}
