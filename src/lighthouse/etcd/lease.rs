//! The host's etcd lease: taken (or taken back after a restart), kept alive, and replaced when
//! it lapsed, with everything the host registered put again under the new one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, DeleteOptions, GetOptions};

use super::layout::{cert_key, host_entries_prefix, legacy_entries_prefix, parse_entry};
use super::writes::{bounded, claim, delete_at, lease_option, put_candidates, snapshot};
use super::{LeaseState, RETRY_PAUSE};
use crate::cert::HostCert;
use crate::error::{Error, Result};
use crate::lighthouse::{Candidates, Entry};

/// Keeps the host's lease alive; replaces it when it lapsed.
pub(super) struct LeaseKeeper {
    pub(super) client: Client,
    pub(super) host: HostCert,
    pub(super) in_doubt: Arc<Mutex<BTreeMap<String, String>>>,
    /// Whether stale entries of a previous run were looked for (once, at start).
    pub(super) swept: bool,
    pub(super) ttl: i64,
    pub(super) lease: Arc<AtomicI64>,
    pub(super) owned: Arc<Mutex<BTreeMap<String, Entry>>>,
    pub(super) candidates: Arc<Mutex<Option<Candidates>>>,
    pub(super) lease_state: Arc<Mutex<LeaseState>>,
    pub(super) lease_file: PathBuf,
}

impl LeaseKeeper {
    pub(super) async fn run(mut self) {
        loop {
            if let Err(e) = self.keep().await {
                self.lease_state.lock().unwrap().lease_error = Some(e.to_string());
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
        let client = &mut self.client;
        let opened = bounded("keeping the lease", async {
            match client.lease_keep_alive(id).await {
                // etcd answers for a lease it no longer has with a TTL of 0, which the client
                // reports as this error: the lease lapsed while etcd could not be reached.
                Err(etcd_client::Error::LeaseKeepAliveError(e)) if e == "lease not found" => {
                    Ok(None)
                }
                other => other.map(Some),
            }
        })
        .await?;
        let Some((mut keeper, mut stream)) = opened else {
            tracing::warn!("etcd lease {id:x} lapsed while etcd was away; taking a new one");
            self.lease.store(0, Ordering::SeqCst);
            return Ok(());
        };
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
                let mut state = self.lease_state.lock().unwrap();
                state.lease_id = id;
                state.lease_ttl = Some((ttl, Instant::now()));
                state.lease_error = None;
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
    /// (a container removed while no daemon ran) go, or a lease taken back would keep them;
    /// so do the entries an older daemon kept under the host's own prefix.
    async fn sweep(&mut self, owned: &[(String, Entry)]) -> Result<()> {
        let legacy = self.client.delete(
            legacy_entries_prefix(&self.host.name),
            Some(DeleteOptions::new().with_prefix()),
        );
        let moved = bounded("clearing the entries of the old layout", legacy).await?;
        if moved.deleted() > 0 {
            tracing::info!(
                "{} entries of the pre-release layout removed (claimed again under their networks)",
                moved.deleted()
            );
        }
        let mut networks: BTreeSet<&str> =
            self.host.networks.iter().map(|n| n.name.as_str()).collect();
        networks.extend(owned.iter().map(|(_, entry)| entry.network.as_str()));
        for network in networks {
            let listed = self.client.get(
                host_entries_prefix(network, &self.host.name),
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
