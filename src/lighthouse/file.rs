//! The Phase 1 lighthouse: one JSON file, locked for every change and replaced atomically, so
//! plugin processes and daemons on one machine (or on several, over a shared file system) can
//! use it at once.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use std::os::fd::AsFd;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use super::{Candidates, Change, Entry, Feed, FeedHealth, Lighthouse, NetworkId, Published};
use crate::error::{Error, Result};
use crate::network_id;
use crate::state::{read_if_exists, remove_stale_temps, write_atomic, FileLock};

const FORMAT_VERSION: u32 = 1;

pub struct FileLighthouse {
    path: PathBuf,
    lock: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Document {
    version: u32,
    /// network -> Flatnet IP -> entry
    networks: BTreeMap<String, BTreeMap<IpAddr, Entry>>,
    /// network -> its identifier, allotted once and kept (see [`crate::network_id`]).
    #[serde(default)]
    network_ids: BTreeMap<String, NetworkId>,
    /// Host public key -> its candidate endpoints. A host that left keeps its list until it
    /// comes back with the same key (there are no leases here to take it away); the list
    /// is only tried, so a stale one costs unanswered handshakes, nothing more.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    candidates: BTreeMap<String, Vec<SocketAddr>>,
    /// The keys among them of hosts that relay for others.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    relays: BTreeSet<String>,
}

impl Default for Document {
    fn default() -> Self {
        Document {
            version: FORMAT_VERSION,
            networks: BTreeMap::new(),
            network_ids: BTreeMap::new(),
            candidates: BTreeMap::new(),
            relays: BTreeSet::new(),
        }
    }
}

impl FileLighthouse {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let mut lock = path.clone().into_os_string();
        lock.push(".lock");
        FileLighthouse {
            path,
            lock: lock.into(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A token that changes whenever the file may have changed.
    fn revision(&self) -> Result<u64> {
        use std::hash::{Hash, Hasher};
        use std::os::unix::fs::MetadataExt;
        match fs::metadata(&self.path) {
            // Every write replaces the file by rename: a new inode, a new mtime.
            Ok(meta) => {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                (meta.ino(), meta.mtime(), meta.mtime_nsec(), meta.len()).hash(&mut hasher);
                Ok(hasher.finish())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(Error::io(format!("reading {}", self.path.display()), e)),
        }
    }

    fn read(&self) -> Result<Document> {
        let Some(bytes) = read_if_exists(&self.path)? else {
            return Ok(Document::default());
        };
        let doc: Document = serde_json::from_slice(&bytes)
            .map_err(|e| Error::json(format!("parsing lighthouse {}", self.path.display()), e))?;
        if doc.version != FORMAT_VERSION {
            return Err(Error::InvalidConfig(format!(
                "lighthouse {} has format version {}, this Flatnet reads {FORMAT_VERSION}",
                self.path.display(),
                doc.version
            )));
        }
        Ok(doc)
    }

    /// Read-modify-write under the lock; the file is only rewritten when `f` changed something.
    fn update(&self, f: impl FnOnce(&mut Document) -> Result<bool>) -> Result<()> {
        let _guard = FileLock::acquire(&self.lock)?;
        if let Some(dir) = self.path.parent() {
            remove_stale_temps(dir)?;
        }
        let mut doc = self.read()?;
        if f(&mut doc)? {
            doc.networks.retain(|_, entries| !entries.is_empty());
            let bytes = serde_json::to_vec_pretty(&doc).expect("lighthouse document serialises");
            write_atomic(&self.path, &bytes)?;
        }
        Ok(())
    }
}

impl Lighthouse for FileLighthouse {
    fn network_id(&self, network: &str) -> Result<NetworkId> {
        let mut allotted = 0;
        self.update(|doc| {
            if let Some(&id) = doc.network_ids.get(network) {
                allotted = id;
                return Ok(false);
            }
            let taken: std::collections::HashSet<NetworkId> =
                doc.network_ids.values().copied().collect();
            allotted = network_id::candidates(network)
                .find(|id| !taken.contains(id))
                .expect("fewer networks than identifiers");
            doc.network_ids.insert(network.to_string(), allotted);
            Ok(true)
        })?;
        Ok(allotted)
    }

    fn register(&self, entry: &Entry) -> Result<()> {
        self.update(|doc| {
            let entries = doc.networks.entry(entry.network.clone()).or_default();
            match entries.get(&entry.ip) {
                Some(held) if held.container_id != entry.container_id => Err(Error::AddressInUse {
                    ip: entry.ip,
                    owner: held.container_id.clone(),
                }),
                Some(held) if held == entry => Ok(false),
                _ => {
                    entries.insert(entry.ip, entry.clone());
                    Ok(true)
                }
            }
        })
    }

    fn unregister(&self, network: &str, ip: IpAddr, container_id: &str) -> Result<()> {
        self.update(|doc| {
            let Some(entries) = doc.networks.get_mut(network) else {
                return Ok(false);
            };
            let ours = entries
                .get(&ip)
                .is_some_and(|e| e.container_id == container_id);
            if ours {
                entries.remove(&ip);
            }
            Ok(ours)
        })
    }

    fn lookup(&self, network: &str, ip: IpAddr) -> Result<Option<Entry>> {
        let _guard = FileLock::acquire(&self.lock)?;
        Ok(self
            .read()?
            .networks
            .get(network)
            .and_then(|entries| entries.get(&ip).cloned()))
    }

    fn entries(&self, network: &str) -> Result<Vec<Entry>> {
        let _guard = FileLock::acquire(&self.lock)?;
        Ok(self
            .read()?
            .networks
            .remove(network)
            .map(|entries| entries.into_values().collect())
            .unwrap_or_default())
    }

    fn all_entries(&self) -> Result<Vec<Entry>> {
        let _guard = FileLock::acquire(&self.lock)?;
        Ok(all_entries_of(self.read()?))
    }

    fn publish_candidates(&self, candidates: &Candidates) -> Result<()> {
        self.update(|doc| {
            let key = candidates.public_key.clone();
            let relay_changed = if candidates.relay && !candidates.endpoints.is_empty() {
                doc.relays.insert(key.clone())
            } else {
                doc.relays.remove(&key)
            };
            let changed = if candidates.endpoints.is_empty() {
                doc.candidates.remove(&key).is_some()
            } else {
                doc.candidates.insert(key, candidates.endpoints.clone())
                    != Some(candidates.endpoints.clone())
            };
            Ok(changed || relay_changed)
        })
    }

    fn follow(&self) -> Result<Box<dyn Feed>> {
        Ok(Box::new(FileFeed {
            lighthouse: FileLighthouse::new(self.path.clone()),
            inotify: None,
            revision: None,
            changes_seen: 0,
            last_error: None,
        }))
    }
}

/// Follows the file: every write replaces it by rename in its directory, which inotify
/// reports at once; each change is read whole and reported as a [`Change::Reset`].
struct FileFeed {
    lighthouse: FileLighthouse,
    /// Watches the file's directory; `None` until the directory exists.
    inotify: Option<Inotify>,
    revision: Option<u64>,
    changes_seen: u64,
    last_error: Option<String>,
}

/// How often the file is looked at when inotify cannot watch its directory (not made yet).
const POLL_WITHOUT_INOTIFY: Duration = Duration::from_millis(100);

impl FileFeed {
    fn watch_directory(&mut self) {
        if self.inotify.is_some() {
            return;
        }
        let Some(dir) = self.lighthouse.path.parent().filter(|d| d.is_dir()) else {
            return;
        };
        let watched = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).and_then(|i| {
            let events = AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_CLOSE_WRITE
                | AddWatchFlags::IN_DELETE
                | AddWatchFlags::IN_CREATE;
            i.add_watch(dir, events).map(|_| i)
        });
        match watched {
            Ok(inotify) => self.inotify = Some(inotify),
            Err(e) => tracing::debug!("inotify on {}: {e}", dir.display()),
        }
    }

    /// Waits until the directory reports something, or `wait` passes.
    fn wait_for_event(&mut self, wait: Duration) {
        let Some(inotify) = &self.inotify else {
            std::thread::sleep(wait.min(POLL_WITHOUT_INOTIFY));
            return;
        };
        let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
        if matches!(poll(&mut fds, timeout), Ok(n) if n > 0) {
            // Only that something happened matters: the revision tells whether it was us.
            while inotify.read_events().is_ok_and(|events| !events.is_empty()) {}
        }
    }
}

impl Feed for FileFeed {
    fn changes(&mut self, wait: Duration) -> Result<Vec<Change>> {
        self.watch_directory();
        if self.revision.is_some() && self.revision == self.lighthouse.revision().ok() {
            self.wait_for_event(wait);
        }
        let result = self.lighthouse.revision().and_then(|revision| {
            if self.revision == Some(revision) {
                return Ok(Vec::new());
            }
            let doc = {
                let _guard = FileLock::acquire(&self.lighthouse.lock)?;
                self.lighthouse.read()?
            };
            self.revision = Some(revision);
            self.changes_seen += 1;
            Ok(vec![reset_of(doc)])
        });
        self.last_error = result.as_ref().err().map(ToString::to_string);
        result
    }

    fn health(&self) -> FeedHealth {
        FeedHealth {
            backend: "file".into(),
            healthy: self.last_error.is_none() && self.revision.is_some(),
            error: self.last_error.clone(),
            revision: self.changes_seen as i64,
            ..FeedHealth::default()
        }
    }
}

fn all_entries_of(doc: Document) -> Vec<Entry> {
    doc.networks
        .into_values()
        .flat_map(|entries| entries.into_values())
        .collect()
}

/// The whole file as a feed reports it: entries and candidates are not per host here.
fn reset_of(mut doc: Document) -> Change {
    let relays = std::mem::take(&mut doc.relays);
    let candidates = std::mem::take(&mut doc.candidates)
        .into_iter()
        .map(|(public_key, endpoints)| {
            let candidates = Candidates {
                relay: relays.contains(&public_key),
                public_key,
                endpoints,
            };
            (String::new(), candidates)
        })
        .collect();
    let entries = all_entries_of(doc)
        .into_iter()
        .map(|entry| Published {
            host: String::new(),
            entry,
        })
        .collect();
    Change::Reset {
        certs: Vec::new(),
        entries,
        candidates,
    }
}

#[cfg(test)]
mod tests {
    use super::super::HostInfo;
    use super::*;

    fn entry(ip: &str, id: &str) -> Entry {
        Entry {
            network: "n".into(),
            network_id: 1,
            ip: ip.parse().unwrap(),
            container_id: id.into(),
            names: Vec::new(),
            host: HostInfo {
                endpoint: "192.0.2.1:4800".parse().unwrap(),
                public_key: String::new(),
            },
        }
    }

    #[test]
    fn register_lookup_unregister() {
        let dir = tempfile::tempdir().unwrap();
        let lh = FileLighthouse::new(dir.path().join("lh.json"));
        let e = entry("10.0.0.2", "a");
        lh.register(&e).unwrap();
        lh.register(&e).unwrap();
        assert_eq!(lh.lookup("n", e.ip).unwrap(), Some(e.clone()));
        assert_eq!(lh.lookup("other", e.ip).unwrap(), None);
        assert_eq!(lh.entries("n").unwrap(), vec![e.clone()]);
        lh.unregister("n", e.ip, "someone-else").unwrap();
        assert!(lh.lookup("n", e.ip).unwrap().is_some());
        lh.unregister("n", e.ip, "a").unwrap();
        lh.unregister("n", e.ip, "a").unwrap();
        assert_eq!(lh.lookup("n", e.ip).unwrap(), None);
        assert!(lh.entries("n").unwrap().is_empty());
    }

    #[test]
    fn an_address_is_claimed_by_one_container_only() {
        let dir = tempfile::tempdir().unwrap();
        let lh = FileLighthouse::new(dir.path().join("lh.json"));
        lh.register(&entry("10.0.0.2", "a")).unwrap();
        let err = lh.register(&entry("10.0.0.2", "b")).unwrap_err();
        assert!(matches!(err, Error::AddressInUse { ref owner, .. } if owner == "a"));
    }

    #[test]
    fn a_feed_reports_the_entries_then_each_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lh.json");
        let lh = FileLighthouse::new(&path);
        let mut feed = lh.follow().unwrap();
        let empty = Change::Reset {
            certs: vec![],
            entries: vec![],
            candidates: vec![],
        };
        assert_eq!(feed.changes(Duration::ZERO).unwrap(), [empty]);
        assert!(feed.changes(Duration::ZERO).unwrap().is_empty());
        let e = entry("10.0.0.2", "a");
        let writer = std::thread::spawn(move || lh.register(&e).unwrap());
        // Woken by the write, not by the timeout.
        let started = std::time::Instant::now();
        let mut changes = feed.changes(Duration::from_secs(10)).unwrap();
        while changes.is_empty() {
            changes = feed.changes(Duration::from_secs(10)).unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        writer.join().unwrap();
        let published = Published {
            host: String::new(),
            entry: entry("10.0.0.2", "a"),
        };
        assert_eq!(
            changes,
            [Change::Reset {
                certs: vec![],
                entries: vec![published],
                candidates: vec![],
            }]
        );
        assert!(feed.health().healthy);
    }

    #[test]
    fn candidates_are_kept_by_key_replaced_and_withdrawn() {
        let dir = tempfile::tempdir().unwrap();
        let lh = FileLighthouse::new(dir.path().join("lh.json"));
        let mut feed = lh.follow().unwrap();
        let of = |key: &str, endpoints: &[&str]| Candidates {
            public_key: key.into(),
            endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
            relay: false,
        };
        lh.publish_candidates(&of("k1", &["198.51.100.7:4800"]))
            .unwrap();
        lh.publish_candidates(&of("k2", &["198.51.100.8:4800"]))
            .unwrap();
        lh.publish_candidates(&of("k1", &["198.51.100.9:4800", "192.0.2.1:4800"]))
            .unwrap();
        let Change::Reset { candidates, .. } = &feed.changes(Duration::ZERO).unwrap()[0] else {
            panic!("a feed starts with everything");
        };
        let expected = [
            (
                String::new(),
                of("k1", &["198.51.100.9:4800", "192.0.2.1:4800"]),
            ),
            (String::new(), of("k2", &["198.51.100.8:4800"])),
        ];
        assert_eq!(candidates, &expected);
        lh.publish_candidates(&of("k2", &[])).unwrap();
        let mut changes = feed.changes(Duration::from_secs(10)).unwrap();
        while changes.is_empty() {
            changes = feed.changes(Duration::from_secs(10)).unwrap();
        }
        let Change::Reset { candidates, .. } = &changes[0] else {
            panic!("the file feed reports each write whole");
        };
        assert_eq!(candidates, &expected[..1]);

        // A relay says so beside its list; withdrawn, it is no relay any more.
        let relay = Candidates {
            relay: true,
            ..of("k3", &["192.0.2.3:4800"])
        };
        lh.publish_candidates(&relay).unwrap();
        let Change::Reset { candidates, .. } = reset_of(lh.read().unwrap()) else {
            unreachable!("reset_of makes a reset");
        };
        assert_eq!(candidates[1], (String::new(), relay));
        lh.publish_candidates(&of("k3", &[])).unwrap();
        lh.publish_candidates(&of("k3", &["192.0.2.3:4800"]))
            .unwrap();
        let Change::Reset { candidates, .. } = reset_of(lh.read().unwrap()) else {
            unreachable!("reset_of makes a reset");
        };
        assert!(!candidates[1].1.relay, "still a relay after withdrawing");
    }

    #[test]
    fn colliding_names_get_identifiers_of_their_own_and_keep_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lh.json");
        let (a, b) = network_id::colliding_names("net-");
        let lh = FileLighthouse::new(&path);
        let id_a = lh.network_id(&a).unwrap();
        let id_b = lh.network_id(&b).unwrap();
        assert_eq!(id_a, network_id::fnv1a(&a));
        assert_ne!(id_a, id_b);
        // Another process (another host on the shared file) is told the same.
        let again = FileLighthouse::new(&path);
        assert_eq!(again.network_id(&b).unwrap(), id_b);
        assert_eq!(again.network_id(&a).unwrap(), id_a);
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lh.json");
        std::thread::scope(|s| {
            for t in 0..8 {
                let path = path.clone();
                s.spawn(move || {
                    let lh = FileLighthouse::new(path);
                    for i in 0..20 {
                        lh.register(&entry(&format!("10.0.{t}.{}", i + 2), &format!("c{t}-{i}")))
                            .unwrap();
                    }
                });
            }
        });
        assert_eq!(FileLighthouse::new(path).entries("n").unwrap().len(), 160);
    }
}
