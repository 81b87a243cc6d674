//! The transactions a host writes with: a claim on an address, its candidates, a delete of
//! what was read; and every etcd call bounded in time.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse,
};

use super::layout::{candidates_key, parse_entry};
use crate::error::{Error, Result};
use crate::lighthouse::{Candidates, Entry};

/// Longest one etcd call may take. A call that lands on a member in the middle of a leader
/// election can hang until then; it is tried again (on whichever member answers) within
/// the caller's budget.
pub const OP_TIMEOUT: Duration = Duration::from_millis(1500);

/// Claims an address for a container under `lease`: created if nobody holds it, updated if
/// this container does (unless it changed meanwhile), refused if another does.
pub async fn claim(mut client: Client, key: &str, entry: &Entry, lease: i64) -> Result<()> {
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
pub async fn put_candidates(
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
pub fn snapshot<K: Clone, V: Clone>(map: &Mutex<BTreeMap<K, V>>) -> Vec<(K, V)> {
    map.lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Deletes `key` only if it is still at `revision`: what was read is what goes.
pub fn delete_at(key: &str, revision: i64) -> Txn {
    Txn::new()
        .when([Compare::mod_revision(key, CompareOp::Equal, revision)])
        .and_then([TxnOp::delete(key, None)])
}

pub fn lease_option(lease: i64) -> PutOptions {
    PutOptions::new().with_lease(lease)
}

pub async fn bounded<T>(
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

pub fn unavailable(what: &str, e: etcd_client::Error) -> Error {
    Error::LighthouseUnavailable(format!("etcd failed while {what}: {e}"))
}
