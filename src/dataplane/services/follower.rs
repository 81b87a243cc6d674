//! Follows the lighthouse on a thread of its own: the feed blocks on inotify or on etcd's
//! watch there, and its changes reach the packet thread through a channel and the wake
//! eventfd. The packet thread never reads a file or talks to etcd; it applies in-memory
//! changes between batches.

use std::collections::BTreeSet;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::eventfd::EventFd;

use crate::error::Result;
use crate::lighthouse::{Change, Feed, FeedHealth, Lighthouse};

/// How long the feed waits for a change before the health snapshot is renewed.
const HEALTH_EVERY: Duration = Duration::from_millis(250);
/// Pause after a failed read, so a broken lighthouse costs no CPU.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

pub struct Follower {
    lighthouse: Arc<dyn Lighthouse>,
    changes: Receiver<Vec<Change>>,
    health: Arc<Mutex<FeedHealth>>,
    /// The networks whose entries are followed.
    networks: BTreeSet<String>,
}

impl Follower {
    /// Starts following, the entries of `networks` among the rest; returns once the first
    /// read of the lighthouse arrived or `within` passed (then the table fills as soon as the
    /// lighthouse answers).
    pub fn spawn(
        lighthouse: Arc<dyn Lighthouse>,
        networks: BTreeSet<String>,
        wake: Arc<EventFd>,
        within: Duration,
    ) -> Result<Self> {
        lighthouse.follow_networks(&networks);
        let mut feed = lighthouse.follow()?;
        let health = Arc::new(Mutex::new(feed.health()));
        let (tx, rx) = std::sync::mpsc::channel();
        let first = Self::first_changes(feed.as_mut(), within);
        if !first.is_empty() {
            let _ = tx.send(first);
        }
        let shared = health.clone();
        std::thread::Builder::new()
            .name("lighthouse".into())
            .spawn(move || follow(feed, tx, wake, shared))
            .map_err(|e| crate::error::Error::io("spawning the lighthouse thread", e))?;
        Ok(Follower {
            lighthouse,
            changes: rx,
            health,
            networks,
        })
    }

    fn first_changes(feed: &mut dyn Feed, within: Duration) -> Vec<Change> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match feed.changes(left) {
                Ok(changes) if !changes.is_empty() => return changes,
                Ok(_) if left.is_zero() => return Vec::new(),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("reading the lighthouse: {e}");
                    return Vec::new();
                }
            }
        }
    }

    /// Follows the entries of these networks (the ones this host serves) and of no other.
    pub fn follow_networks(&mut self, networks: BTreeSet<String>) {
        if networks != self.networks {
            self.lighthouse.follow_networks(&networks);
            self.networks = networks;
        }
    }

    /// The changes that arrived since the last call, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = Change> + '_ {
        self.changes.try_iter().flatten()
    }

    pub fn health(&self) -> FeedHealth {
        self.health.lock().unwrap().clone()
    }
}

fn follow(
    mut feed: Box<dyn Feed>,
    changes: Sender<Vec<Change>>,
    wake: Arc<EventFd>,
    health: Arc<Mutex<FeedHealth>>,
) {
    let mut last_error = String::new();
    loop {
        match feed.changes(HEALTH_EVERY) {
            Ok(batch) if !batch.is_empty() => {
                if changes.send(batch).is_err() {
                    return; // the data plane is gone
                }
                let _ = wake.write(1);
            }
            Ok(_) => {}
            Err(e) => {
                let text = e.to_string();
                if text != last_error {
                    tracing::warn!("following the lighthouse: {text}");
                    last_error = text;
                }
                std::thread::sleep(RETRY_PAUSE);
            }
        }
        *health.lock().unwrap() = feed.health();
    }
}
