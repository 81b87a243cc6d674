//! The lighthouse on an etcd cluster, for hosts that share no file system. Only `flatnetd`
//! talks to etcd (over TLS, with the host's client certificate); the plugins reach it through
//! their daemon's control socket ([`super::ViaDaemon`]).
//!
//! Layout: everything of a host lives under `/flatnet/v1/hosts/<host>/`, which etcd's RBAC
//! lets only that host write: `cert` (its certificate from the network CA) and
//! `entries/<network>/<ip>` (an [`Entry`] as JSON) and `candidates` (its [`Candidates`], which
//! peers believe only if its certificate names the same key). Every key of a host hangs on that host's
//! etcd lease, which its daemon keeps alive: a host that dies vanishes from every route table
//! once the lease runs out. Hosts never collide on an address because the CA grants them
//! disjoint blocks; peers believe an entry only inside its host's blocks. Writes are
//! transactions (create only if absent; update or delete only if the key is still the one read).
//! Network identifiers are not in etcd, where any host could rewrite them: the network CA
//! allots them and writes them into each host's certificate with the network's name, so an
//! entry's identifier is checked against its host's certificate like its address.
//!
//! etcd-client is async; the lighthouse runs its own small runtime (one worker thread) and
//! every blocking call is bounded by [`OP_TIMEOUT`], so an etcd without quorum turns into a
//! "try again" error, never into a hung plugin.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchOptions,
};

use super::{
    Candidates, Change, Entry, EtcdSettings, Feed, FeedHealth, Lighthouse, NetworkId, Published,
};
use crate::cert::{HostCert, RevocationList};
use crate::error::{Error, Result};

/// Everything Flatnet keeps in etcd; what a daemon follows.
const ROOT: &str = "/flatnet/v1/";
const PREFIX: &str = "/flatnet/v1/hosts/";
/// Each network CA's revocation list, under the CA's name, put there by the operator (hosts
/// may only read it).
const REVOCATIONS: &str = "/flatnet/v1/revocations/";
/// Longest one etcd call may take. A call that lands on a member in the middle of a leader
/// election can hang until then; it is tried again (on whichever member answers) within
/// [`CALL_BUDGET`].
const OP_TIMEOUT: Duration = Duration::from_millis(1500);
/// Longest a plugin's request may take before it hears "try again": an election (1-2 s with
/// etcd's defaults) is ridden out, a cluster without quorum fails the ADD within the 5 s the
/// runtime is promised.
const CALL_BUDGET: Duration = Duration::from_secs(4);
/// Pause before following again after the watch broke (etcd restarting, quorum lost).
const RETRY_PAUSE: Duration = Duration::from_millis(500);

pub struct EtcdLighthouse {
    runtime: tokio::runtime::Runtime,
    client: Client,
    settings: EtcdSettings,
    /// This host's certificate: its name (the prefix it writes under) and blocks.
    host: HostCert,
    /// The host's lease; 0 while it has none (this process does not hold a lease, or lost it).
    lease: Arc<AtomicI64>,
    /// What this process registered, to put again under a new lease after losing the old one.
    owned: Arc<Mutex<BTreeMap<String, Entry>>>,
    /// The candidates this process published, to put again under a new lease.
    candidates: Arc<Mutex<Option<Candidates>>>,
    /// Claims whose outcome is unknown (etcd did not answer): a proposal may still commit once
    /// etcd is back, so each is removed then unless it was claimed again. Key -> container.
    in_doubt: Arc<Mutex<BTreeMap<String, String>>>,
    health: Arc<Mutex<Health>>,
}

#[derive(Debug, Default, Clone)]
struct Health {
    following: bool,
    /// Why following stopped, until it works again.
    error: Option<String>,
    /// Why the lease could not be kept, until it can.
    lease_error: Option<String>,
    revision: i64,
    lease_id: i64,
    /// The lease's time to live as etcd last confirmed it, and when.
    lease_ttl: Option<(i64, Instant)>,
}

impl EtcdLighthouse {
    /// Prepares a client; connections are made on first use, so an etcd that is down now does
    /// not keep the data plane from starting.
    pub fn connect(settings: &EtcdSettings, host: HostCert) -> Result<Self> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))
        };
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read(&settings.ca_file)?))
            .identity(Identity::from_pem(
                read(&settings.cert_file)?,
                read(&settings.key_file)?,
            ));
        let options = ConnectOptions::new()
            .with_tls(tls)
            .with_connect_timeout(OP_TIMEOUT)
            .with_timeout(OP_TIMEOUT)
            // Without a leader a member would keep a watch open and silent; with this it ends
            // the watch, and the feed knows it is behind.
            .with_require_leader(true)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the etcd client runtime", e))?;
        let client = runtime
            .block_on(Client::connect(&settings.endpoints, Some(options)))
            .map_err(|e| Error::InvalidConfig(format!("etcd client: {e}")))?;
        Ok(EtcdLighthouse {
            runtime,
            client,
            settings: settings.clone(),
            host,
            lease: Arc::new(AtomicI64::new(0)),
            owned: Arc::default(),
            candidates: Arc::default(),
            in_doubt: Arc::default(),
            health: Arc::default(),
        })
    }

    /// Takes a lease for this host and keeps it alive for as long as the lighthouse lives; a
    /// lease that lapsed (etcd out of reach longer than the TTL) is replaced and everything
    /// this host registered is put again under the new one. The lease id is kept in
    /// `lease_file`, so a restarted daemon takes its lease back and no entry blinks.
    pub fn hold_lease(&self, lease_file: PathBuf) {
        let keeper = LeaseKeeper {
            client: self.client.clone(),
            host: self.host.clone(),
            swept: false,
            ttl: i64::from(self.settings.lease_ttl_s),
            lease: self.lease.clone(),
            owned: self.owned.clone(),
            candidates: self.candidates.clone(),
            in_doubt: self.in_doubt.clone(),
            health: self.health.clone(),
            lease_file,
        };
        self.runtime.spawn(keeper.run());
    }

    /// Entries this host serves already (its records, after a restart): put under the lease
    /// once there is one, and again under every new one.
    pub fn adopt(&self, entries: Vec<Entry>) {
        let mut owned = self.owned.lock().unwrap();
        for entry in entries {
            owned.insert(entry_key(&self.host.name, &entry.network, entry.ip), entry);
        }
    }

    /// Waits (bounded) for the first lease, so the first attach after a start does not fail.
    pub fn wait_for_lease(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.lease.load(Ordering::SeqCst) == 0 {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Runs `op` until it succeeds, fails for a reason other than etcd being out of reach, or
    /// [`CALL_BUDGET`] is spent. `op` must be safe to repeat (each is a read, or a transaction
    /// whose comparison makes a repeat harmless).
    fn call<T, F>(&self, op: impl Fn(Client) -> F) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>>,
    {
        let deadline = Instant::now() + CALL_BUDGET;
        self.runtime.block_on(async {
            loop {
                match op(self.client.clone()).await {
                    Err(Error::LighthouseUnavailable(_))
                        if Instant::now() + RETRY_PAUSE / 5 < deadline =>
                    {
                        tokio::time::sleep(RETRY_PAUSE / 5).await;
                    }
                    result => return result,
                }
            }
        })
    }

    fn current_lease(&self) -> Result<i64> {
        match self.lease.load(Ordering::SeqCst) {
            0 => Err(Error::LighthouseUnavailable(
                "this host holds no etcd lease (etcd out of reach)".into(),
            )),
            id => Ok(id),
        }
    }

    /// The key's current value and revision, if any.
    fn read(&self, key: &str) -> Result<Option<(Entry, i64)>> {
        let response = self.call(|mut client| async move {
            bounded("reading an entry", client.get(key, None)).await
        })?;
        Ok(response.kvs().first().and_then(|kv| {
            let published = parse_entry(kv)?;
            Some((published.entry, kv.mod_revision()))
        }))
    }
}

impl Lighthouse for EtcdLighthouse {
    fn network_id(&self, network: &str) -> Result<NetworkId> {
        self.host.network_id(network).ok_or_else(|| {
            Error::InvalidConfig(format!(
                "this host's certificate ({}) does not name network {network}: the network CA \
                 must sign it with --network {network}",
                self.host.name
            ))
        })
    }

    fn register(&self, entry: &Entry) -> Result<()> {
        if self.host.network_id(&entry.network) != Some(entry.wire_network_id()) {
            return Err(Error::InvalidRequest(format!(
                "this host's certificate does not name network {} with identifier {:08x}",
                entry.network,
                entry.wire_network_id()
            )));
        }
        if !self.host.grants(entry.ip) {
            let blocks: Vec<String> = self.host.blocks.iter().map(ToString::to_string).collect();
            return Err(Error::InvalidRequest(format!(
                "{} is not in this host's blocks ({}): the network CA granted it to no one here",
                entry.ip,
                blocks.join(", ")
            )));
        }
        let lease = self.current_lease()?;
        let key = entry_key(&self.host.name, &entry.network, entry.ip);
        let claimed = self.call(|client| claim(client, &key, entry, lease));
        let mut in_doubt = self.in_doubt.lock().unwrap();
        match &claimed {
            Err(Error::LighthouseUnavailable(_)) => {
                in_doubt.insert(key.clone(), entry.container_id.clone());
            }
            _ => {
                in_doubt.remove(&key);
            }
        }
        drop(in_doubt);
        claimed?;
        self.owned.lock().unwrap().insert(key, entry.clone());
        Ok(())
    }

    fn unregister(&self, network: &str, ip: Ipv4Addr, container_id: &str) -> Result<()> {
        let key = entry_key(&self.host.name, network, ip);
        self.owned.lock().unwrap().remove(&key);
        let Some((entry, revision)) = self.read(&key)? else {
            return Ok(());
        };
        if entry.container_id != container_id {
            return Ok(());
        }
        let delete = delete_at(&key, revision);
        self.call(|mut client| {
            let delete = delete.clone();
            async move { bounded("releasing an address", client.txn(delete)).await }
        })
        .map(drop)
    }

    /// This host's entry for the address.
    fn lookup(&self, network: &str, ip: Ipv4Addr) -> Result<Option<Entry>> {
        let key = entry_key(&self.host.name, network, ip);
        Ok(self.read(&key)?.map(|(entry, _)| entry))
    }

    fn all_entries(&self) -> Result<Vec<Entry>> {
        let response = self.call(|mut client| async move {
            let all = client.get(PREFIX, Some(GetOptions::new().with_prefix()));
            bounded("reading the entries", all).await
        })?;
        Ok(response
            .kvs()
            .iter()
            .filter_map(|kv| match parse_kv(kv)? {
                Stored::Entry(published) => Some(published.entry),
                _ => None,
            })
            .collect())
    }

    /// Kept for the next lease too; put now if the host holds one (else when it takes one).
    fn publish_candidates(&self, candidates: &Candidates) -> Result<()> {
        *self.candidates.lock().unwrap() = Some(candidates.clone());
        let lease = self.current_lease()?;
        let name = &self.host.name;
        self.call(|client| put_candidates(client, name, candidates, lease))
    }

    fn follow(&self) -> Result<Box<dyn Feed>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let watcher = Watcher {
            client: self.client.clone(),
            health: self.health.clone(),
            changes: tx,
        };
        self.runtime.spawn(watcher.run());
        Ok(Box::new(EtcdFeed {
            changes: rx,
            health: self.health.clone(),
            ttl_s: self.settings.lease_ttl_s,
        }))
    }
}

impl Drop for EtcdLighthouse {
    fn drop(&mut self) {
        // The lease is kept (not revoked) so that entries outlive a daemon restart; the
        // runtime's tasks stop with it.
        self.health.lock().unwrap().following = false;
    }
}

/// Keeps the host's lease alive; replaces it when it lapsed.
struct LeaseKeeper {
    client: Client,
    host: HostCert,
    in_doubt: Arc<Mutex<BTreeMap<String, String>>>,
    /// Whether stale entries of a previous run were looked for (once, at start).
    swept: bool,
    ttl: i64,
    lease: Arc<AtomicI64>,
    owned: Arc<Mutex<BTreeMap<String, Entry>>>,
    candidates: Arc<Mutex<Option<Candidates>>>,
    health: Arc<Mutex<Health>>,
    lease_file: PathBuf,
}

impl LeaseKeeper {
    async fn run(mut self) {
        loop {
            if let Err(e) = self.keep().await {
                self.health.lock().unwrap().lease_error = Some(e.to_string());
                tracing::warn!("etcd lease: {e}");
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Holds a lease until it is lost (`Ok`) or etcd fails (`Err`).
    async fn keep(&mut self) -> Result<()> {
        let id = match self.lease.load(Ordering::SeqCst) {
            0 => self.take_lease().await?,
            id => id,
        };
        let (mut keeper, mut stream) =
            bounded("keeping the lease", self.client.lease_keep_alive(id)).await?;
        loop {
            bounded("keeping the lease", keeper.keep_alive()).await?;
            let answer = bounded("keeping the lease", stream.message()).await?;
            let ttl = answer.map_or(0, |a| a.ttl());
            if ttl <= 0 {
                tracing::warn!("etcd lease {id:x} lapsed; taking a new one");
                self.lease.store(0, Ordering::SeqCst);
                return Ok(());
            }
            {
                let mut health = self.health.lock().unwrap();
                health.lease_id = id;
                health.lease_ttl = Some((ttl, Instant::now()));
                health.lease_error = None;
            }
            self.settle_doubts().await;
            tokio::time::sleep(Duration::from_secs((self.ttl / 3).max(1) as u64)).await;
        }
    }

    /// The lease a previous daemon of this host left, if it is still alive, else a new one;
    /// then everything registered is put under it.
    async fn take_lease(&mut self) -> Result<i64> {
        let id = match self.previous_lease().await {
            Some(id) => id,
            None => {
                let granted =
                    bounded("taking a lease", self.client.lease_grant(self.ttl, None)).await?;
                granted.id()
            }
        };
        let _ = crate::state::write_atomic(&self.lease_file, format!("{id:x}\n").as_bytes());
        // The certificate first: peers believe the entries once they have it.
        let cert = serde_json::to_vec(&self.host).expect("certificates serialise");
        let put = self
            .client
            .put(cert_key(&self.host.name), cert, Some(lease_option(id)));
        bounded("publishing the certificate", put).await?;
        let owned = snapshot(&self.owned);
        if !self.swept {
            self.sweep(&owned).await?;
            self.swept = true;
        }
        for (key, entry) in owned {
            match claim(self.client.clone(), &key, &entry, id).await {
                Err(Error::AddressInUse { owner, .. }) => {
                    // Taken while this host was away: the container must be re-attached.
                    tracing::warn!(
                        "{key} is held by {owner} now, not by {}",
                        entry.container_id
                    );
                    self.owned.lock().unwrap().remove(&key);
                }
                result => result?,
            }
        }
        let candidates = self.candidates.lock().unwrap().clone();
        if let Some(candidates) = candidates {
            put_candidates(self.client.clone(), &self.host.name, &candidates, id).await?;
        }
        self.lease.store(id, Ordering::SeqCst);
        tracing::info!("etcd lease {id:x}, TTL {} s", self.ttl);
        Ok(id)
    }

    /// At start, before any attach: entries under this host's name that no record stands for
    /// (a container removed while no daemon ran) go, or a lease taken back would keep them.
    async fn sweep(&mut self, owned: &[(String, Entry)]) -> Result<()> {
        let prefix = format!("{PREFIX}{}/entries/", self.host.name);
        let listed = self.client.get(
            prefix,
            Some(GetOptions::new().with_prefix().with_keys_only()),
        );
        let listed = bounded("listing this host's entries", listed).await?;
        for kv in listed.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            if owned.iter().any(|(k, _)| *k == key) {
                continue;
            }
            tracing::info!("{key}: no record here any more, removed");
            let delete = delete_at(&key, kv.mod_revision());
            bounded("removing a stale entry", self.client.txn(delete)).await?;
        }
        Ok(())
    }

    /// Claims that failed for want of an answer may have committed later: remove each one
    /// that still names the container it was made for (a later successful claim took it out
    /// of doubt).
    async fn settle_doubts(&mut self) {
        for (key, container) in snapshot(&self.in_doubt) {
            let Ok(read) = bounded(
                "reading a doubtful claim",
                self.client.get(key.clone(), None),
            )
            .await
            else {
                return; // etcd still away: next round
            };
            let held = read.kvs().first().cloned();
            if let Some(kv) =
                held.filter(|kv| parse_entry(kv).is_some_and(|p| p.entry.container_id == container))
            {
                let delete = delete_at(&key, kv.mod_revision());
                if bounded("removing a doubtful claim", self.client.txn(delete))
                    .await
                    .is_err()
                {
                    return;
                }
                tracing::info!("{key}: a claim that had failed was committed later; removed");
            }
            let mut in_doubt = self.in_doubt.lock().unwrap();
            if in_doubt.get(&key) == Some(&container) {
                in_doubt.remove(&key);
            }
        }
    }

    async fn previous_lease(&mut self) -> Option<i64> {
        let text = std::fs::read_to_string(&self.lease_file).ok()?;
        let id = i64::from_str_radix(text.trim(), 16).ok()?;
        let alive = self.client.lease_time_to_live(id, None);
        let ttl = bounded("reading the lease", alive).await.ok()?.ttl();
        (ttl > 0).then_some(id)
    }
}

/// Watches the entries (the task behind an [`EtcdFeed`]): a read of all of them, then a watch
/// from just after that read. When the watch breaks, everything is read again (a
/// [`Change::Reset`]): events missed meanwhile may have been compacted away.
struct Watcher {
    client: Client,
    health: Arc<Mutex<Health>>,
    changes: Sender<Vec<Change>>,
}

impl Watcher {
    async fn run(mut self) {
        loop {
            let result = self.follow().await;
            {
                let mut health = self.health.lock().unwrap();
                health.following = false;
                match result {
                    Ok(()) => return, // nobody listens any more
                    Err(e) => {
                        tracing::warn!("following etcd: {e}");
                        health.error = Some(e.to_string());
                    }
                }
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    async fn follow(&mut self) -> Result<()> {
        let all = self.client.get(ROOT, Some(GetOptions::new().with_prefix()));
        let snapshot = bounded("reading the entries", all).await?;
        let revision = snapshot.header().map_or(0, |h| h.revision());
        let (mut certs, mut entries, mut revocations) = (Vec::new(), Vec::new(), Vec::new());
        let mut candidates = Vec::new();
        for stored in snapshot.kvs().iter().filter_map(parse_kv) {
            match stored {
                Stored::Cert(cert) => certs.push(cert),
                Stored::Entry(published) => entries.push(published),
                Stored::Revocations(list) => revocations.push(list),
                Stored::Candidates(host, published) => candidates.push((host, published)),
            }
        }
        let mut first = vec![Change::Reset {
            certs,
            entries,
            candidates,
        }];
        first.extend(revocations.into_iter().map(Change::Revocations));
        if self.changes.send(first).is_err() {
            return Ok(());
        }
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut stream = bounded(
            "watching the entries",
            self.client.watch(ROOT, Some(options)),
        )
        .await?;
        self.set_following(revision);
        loop {
            let message = stream
                .message()
                .await
                .map_err(|e| unavailable("watching the entries", e))?;
            let Some(response) = message else {
                return Err(Error::LighthouseUnavailable("the watch ended".into()));
            };
            if response.canceled() {
                return Err(Error::LighthouseUnavailable(format!(
                    "the watch was cancelled: {}",
                    response.cancel_reason()
                )));
            }
            let changes: Vec<Change> = response.events().iter().filter_map(change_of).collect();
            if !changes.is_empty() && self.changes.send(changes).is_err() {
                return Ok(());
            }
            if let Some(header) = response.header() {
                self.set_following(header.revision());
            }
        }
    }

    fn set_following(&self, revision: i64) {
        let mut health = self.health.lock().unwrap();
        health.following = true;
        health.revision = revision;
        health.error = None;
    }
}

/// Claims an address for a container under `lease`: created if nobody holds it, updated if
/// this container does (unless it changed meanwhile), refused if another does.
async fn claim(mut client: Client, key: &str, entry: &Entry, lease: i64) -> Result<()> {
    let key = key.to_string();
    let value = serde_json::to_vec(entry).expect("entries serialise");
    let put = || TxnOp::put(key.clone(), value.clone(), Some(lease_option(lease)));
    let create = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([put()])
        .or_else([TxnOp::get(key.clone(), None)]);
    let response = bounded("claiming an address", client.txn(create)).await?;
    if response.succeeded() {
        return Ok(());
    }
    let held = read_on_failure(response);
    let Some(held) = held else {
        return Err(Error::LighthouseUnavailable(format!(
            "{key} changed while being claimed"
        )));
    };
    let owner = parse_entry(&held).map(|p| p.entry.container_id);
    if owner.as_deref() != Some(entry.container_id.as_str()) {
        return Err(Error::AddressInUse {
            ip: entry.ip,
            owner: owner.unwrap_or_else(|| "an unreadable entry".into()),
        });
    }
    let update = Txn::new()
        .when([Compare::mod_revision(
            key.clone(),
            CompareOp::Equal,
            held.mod_revision(),
        )])
        .and_then([put()]);
    let response = bounded("updating an entry", client.txn(update)).await?;
    if !response.succeeded() {
        return Err(Error::LighthouseUnavailable(format!(
            "{key} changed while being updated"
        )));
    }
    Ok(())
}

/// Puts (or, when there are none, deletes) the host's candidates under `lease`.
async fn put_candidates(
    mut client: Client,
    host: &str,
    candidates: &Candidates,
    lease: i64,
) -> Result<()> {
    let key = candidates_key(host);
    if candidates.endpoints.is_empty() {
        bounded("withdrawing the candidates", client.delete(key, None)).await?;
        return Ok(());
    }
    let value = serde_json::to_vec(candidates).expect("candidates serialise");
    let put = client.put(key, value, Some(lease_option(lease)));
    bounded("publishing the candidates", put).await?;
    Ok(())
}

/// The key a failed transaction read in its `or_else` branch, if it exists.
fn read_on_failure(response: TxnResponse) -> Option<KeyValue> {
    response.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(get) => get.kvs().first().cloned(),
        _ => None,
    })
}

/// A copy of a shared map, so that no lock is held across an etcd call.
fn snapshot<K: Clone, V: Clone>(map: &Mutex<BTreeMap<K, V>>) -> Vec<(K, V)> {
    map.lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Deletes `key` only if it is still at `revision`: what was read is what goes.
fn delete_at(key: &str, revision: i64) -> Txn {
    Txn::new()
        .when([Compare::mod_revision(key, CompareOp::Equal, revision)])
        .and_then([TxnOp::delete(key, None)])
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
        (EventType::Delete, Key::Entry { host, network, ip }) => {
            Some(Change::Delete { host, network, ip })
        }
    }
}

struct EtcdFeed {
    changes: Receiver<Vec<Change>>,
    health: Arc<Mutex<Health>>,
    ttl_s: u32,
}

impl Feed for EtcdFeed {
    fn changes(&mut self, wait: Duration) -> Result<Vec<Change>> {
        let mut changes = match self.changes.recv_timeout(wait) {
            Ok(changes) => changes,
            Err(RecvTimeoutError::Timeout) => return Ok(Vec::new()),
            Err(RecvTimeoutError::Disconnected) => {
                return Err(Error::LighthouseUnavailable(
                    "the etcd client stopped".into(),
                ))
            }
        };
        while let Ok(more) = self.changes.try_recv() {
            changes.extend(more);
        }
        Ok(changes)
    }

    fn health(&self) -> FeedHealth {
        let health = self.health.lock().unwrap().clone();
        let ttl_left_ms = health.lease_ttl.map(|(ttl, at)| {
            (ttl * 1000)
                .saturating_sub(at.elapsed().as_millis() as i64)
                .max(0)
        });
        FeedHealth {
            backend: "etcd".into(),
            healthy: health.following
                && health.lease_ttl.is_some()
                && health.error.is_none()
                && health.lease_error.is_none(),
            error: health.error.or(health.lease_error),
            revision: health.revision,
            lease_id: Some(format!("{:x}", health.lease_id)),
            lease_ttl_s: Some(self.ttl_s),
            lease_ttl_left_ms: ttl_left_ms,
        }
    }
}

fn entry_key(host: &str, network: &str, ip: Ipv4Addr) -> String {
    format!("{PREFIX}{host}/entries/{network}/{ip}")
}

fn cert_key(host: &str) -> String {
    format!("{PREFIX}{host}/cert")
}

fn candidates_key(host: &str) -> String {
    format!("{PREFIX}{host}/candidates")
}

/// What a key under the prefix names.
#[derive(Debug, PartialEq)]
enum Key {
    Revocations {
        issuer: String,
    },
    Cert {
        host: String,
    },
    Candidates {
        host: String,
    },
    Entry {
        host: String,
        network: String,
        ip: Ipv4Addr,
    },
}

fn parse_key(key: &[u8]) -> Option<Key> {
    let key = std::str::from_utf8(key).ok()?;
    if let Some(issuer) = key.strip_prefix(REVOCATIONS) {
        return Some(Key::Revocations {
            issuer: issuer.to_string(),
        });
    }
    let rest = key.strip_prefix(PREFIX)?;
    let (host, rest) = rest.split_once('/')?;
    let host = host.to_string();
    match rest {
        "cert" => return Some(Key::Cert { host }),
        "candidates" => return Some(Key::Candidates { host }),
        _ => {}
    }
    let (network, ip) = rest.strip_prefix("entries/")?.split_once('/')?;
    Some(Key::Entry {
        host,
        network: network.to_string(),
        ip: ip.parse().ok()?,
    })
}

enum Stored {
    Cert(HostCert),
    Entry(Published),
    Revocations(RevocationList),
    /// A host's candidates, with the host's name.
    Candidates(String, Candidates),
}

/// A certificate or an entry whose key names it: a value stored under another name or
/// address is ignored (and so is anything unreadable: etcd is written by every host).
fn parse_kv(kv: &KeyValue) -> Option<Stored> {
    match parse_key(kv.key())? {
        Key::Cert { host } => {
            let cert: HostCert = serde_json::from_slice(kv.value()).ok()?;
            (cert.name == host).then_some(Stored::Cert(cert))
        }
        Key::Entry { .. } => parse_entry(kv).map(Stored::Entry),
        Key::Candidates { host } => {
            let candidates = serde_json::from_slice(kv.value()).ok()?;
            Some(Stored::Candidates(host, candidates))
        }
        Key::Revocations { issuer } => {
            let list: RevocationList = serde_json::from_slice(kv.value()).ok()?;
            (list.issuer == issuer).then_some(Stored::Revocations(list))
        }
    }
}

fn parse_entry(kv: &KeyValue) -> Option<Published> {
    let Key::Entry { host, network, ip } = parse_key(kv.key())? else {
        return None;
    };
    let entry: Entry = serde_json::from_slice(kv.value()).ok()?;
    if (network.as_str(), ip) != (entry.network.as_str(), entry.ip) {
        tracing::warn!(
            "etcd key {} holds an entry for {} {}: ignored",
            String::from_utf8_lossy(kv.key()),
            entry.network,
            entry.ip
        );
        return None;
    }
    Some(Published { host, entry })
}

fn lease_option(lease: i64) -> PutOptions {
    PutOptions::new().with_lease(lease)
}

async fn bounded<T>(
    what: &str,
    op: impl std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(OP_TIMEOUT, op).await {
        Ok(result) => result.map_err(|e| unavailable(what, e)),
        Err(_) => Err(Error::LighthouseUnavailable(format!(
            "etcd did not answer within {:.1} s while {what}",
            OP_TIMEOUT.as_secs_f64()
        ))),
    }
}

fn unavailable(what: &str, e: etcd_client::Error) -> Error {
    Error::LighthouseUnavailable(format!("etcd failed while {what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_host_network_and_address() {
        let key = entry_key("host-a", "net-a", "10.1.2.3".parse().unwrap());
        assert_eq!(key, "/flatnet/v1/hosts/host-a/entries/net-a/10.1.2.3");
        assert_eq!(
            parse_key(key.as_bytes()),
            Some(Key::Entry {
                host: "host-a".into(),
                network: "net-a".into(),
                ip: "10.1.2.3".parse().unwrap()
            })
        );
        assert_eq!(
            parse_key(cert_key("host-a").as_bytes()),
            Some(Key::Cert {
                host: "host-a".into()
            })
        );
        assert_eq!(
            parse_key(candidates_key("host-a").as_bytes()),
            Some(Key::Candidates {
                host: "host-a".into()
            })
        );
        assert_eq!(
            parse_key(b"/flatnet/v1/hosts/a/entries/net-a/not-an-ip"),
            None
        );
        assert_eq!(parse_key(b"/flatnet/v1/hosts/a/other"), None);
        assert_eq!(parse_key(b"/other/a/cert"), None);
        assert_eq!(
            parse_key(b"/flatnet/v1/revocations/net-ca"),
            Some(Key::Revocations {
                issuer: "net-ca".into()
            })
        );
        assert_eq!(parse_key(b"/flatnet/v1/networks/net-a"), None);
    }
}
