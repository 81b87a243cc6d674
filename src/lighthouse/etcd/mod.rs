//! The lighthouse on an etcd cluster, for hosts that share no file system. Only `flatnetd`
//! talks to etcd (over TLS, with the host's client certificate); the plugins reach it through
//! their daemon's control socket ([`super::ViaDaemon`]).
//!
//! Layout (`layout.rs`): a host's certificate and candidates under `/flatnet/v1/hosts/<host>/`,
//! its entries under each network, `/flatnet/v1/entries/<network>/<host>/<ip>`; etcd's RBAC
//! lets a host write only under its own name (its prefix, and its part of each network its
//! certificate names). Every key of a host hangs on that host's etcd lease, which its daemon
//! keeps alive (`lease.rs`): a host that dies vanishes from every route table once the lease
//! runs out. Hosts never collide on an address because the CA grants them disjoint blocks;
//! peers believe an entry only inside its host's blocks. Writes are transactions (`writes.rs`:
//! create only if absent; update or delete only if the key is still the one read). Network
//! identifiers are not in etcd, where any host could rewrite them: the network CA allots them
//! and writes them into each host's certificate with the network's name, so an entry's
//! identifier is checked against its host's certificate like its address. A host follows the
//! certificates, candidates and revocations of all, and the entries of the networks it serves
//! only (`watch.rs`).
//!
//! etcd-client is async; the lighthouse runs its own small runtime (one worker thread) and
//! every blocking call is bounded by [`OP_TIMEOUT`], so an etcd without quorum turns into a
//! "try again" error, never into a hung plugin.

mod layout;
mod lease;
mod watch;
mod writes;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};

use super::{Candidates, Entry, EtcdSettings, Feed, Lighthouse, NetworkId};
use crate::cert::HostCert;
use crate::error::{Error, Result};
use layout::{entry_key, parse_entry, parse_kv, Stored, ENTRIES};
use lease::LeaseKeeper;
use watch::Watches;
use writes::{bounded, claim, delete_at, put_candidates, OP_TIMEOUT};

/// Longest a plugin's request may take before it hears "try again": an election (1-2 s with
/// etcd's defaults) is ridden out, a cluster without quorum fails the ADD within the 5 s the
/// runtime is promised.
const CALL_BUDGET: Duration = Duration::from_secs(4);
/// Pause before trying again after etcd failed (restarting, quorum lost).
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
    lease_state: Arc<Mutex<LeaseState>>,
    watches: Watches,
}

/// How keeping the lease goes.
#[derive(Debug, Default, Clone)]
struct LeaseState {
    /// Why the lease could not be kept, until it can.
    lease_error: Option<String>,
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
        let watches = Watches::new(runtime.handle().clone(), client.clone());
        Ok(EtcdLighthouse {
            watches,
            runtime,
            client,
            settings: settings.clone(),
            host,
            lease: Arc::new(AtomicI64::new(0)),
            owned: Arc::default(),
            candidates: Arc::default(),
            in_doubt: Arc::default(),
            lease_state: Arc::default(),
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
            lease_state: self.lease_state.clone(),
            lease_file,
        };
        self.runtime.spawn(keeper.run());
    }

    /// Entries this host serves already (its records, after a restart): put under the lease
    /// once there is one, and again under every new one.
    pub fn adopt(&self, entries: Vec<Entry>) {
        let mut owned = self.owned.lock().unwrap();
        for entry in entries {
            owned.insert(entry_key(&entry.network, &self.host.name, entry.ip), entry);
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
        self.current_lease()?;
        let key = entry_key(&entry.network, &self.host.name, entry.ip);
        // The lease is read at each try: one that lapsed while etcd was away is replaced
        // meanwhile (`lease::LeaseKeeper`), and the claim must go under the new one.
        let claimed = self.call(|client| {
            let lease = self.current_lease();
            let key = &key;
            async move { claim(client, key, entry, lease?).await }
        });
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

    fn unregister(&self, network: &str, ip: IpAddr, container_id: &str) -> Result<()> {
        let key = entry_key(network, &self.host.name, ip);
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
    fn lookup(&self, network: &str, ip: IpAddr) -> Result<Option<Entry>> {
        let key = entry_key(network, &self.host.name, ip);
        Ok(self.read(&key)?.map(|(entry, _)| entry))
    }

    fn all_entries(&self) -> Result<Vec<Entry>> {
        let response = self.call(|mut client| async move {
            let all = client.get(ENTRIES, Some(GetOptions::new().with_prefix()));
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
        let feed = self
            .watches
            .start(self.lease_state.clone(), self.settings.lease_ttl_s);
        Ok(Box::new(feed))
    }

    fn follow_networks(&self, networks: &BTreeSet<String>) {
        self.watches.follow_networks(networks);
    }
}
