//! What the data plane keeps on disk of its tunnels across restarts: the newest initiation
//! timestamp accepted from each peer key. Without it a restarted daemon would accept, once, an
//! initiation captured before the restart (and move the peer's endpoint to wherever the replay
//! came from). Written at most once a second from the packet thread's tick, when something
//! changed; a daemon killed within that second forgets that second's handshakes only.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::tunnel::{decode_key, encode_key, PublicKey};

/// How often changed timestamps are written at most.
pub const SAVE_EVERY: Duration = Duration::from_secs(1);

/// The timestamps kept in `path`; nothing if there is no file or it is damaged (a replay
/// window is then open for captures older than the restart, as before this file existed).
pub fn load(path: &Path) -> Vec<(PublicKey, u64)> {
    let parsed = crate::state::read_if_exists(path)
        .map(|bytes| bytes.map(|b| serde_json::from_slice::<BTreeMap<String, u64>>(&b)));
    match parsed {
        Ok(Some(Ok(kept))) => kept
            .into_iter()
            .filter_map(|(key, timestamp)| Some((decode_key(&key)?, timestamp)))
            .collect(),
        Ok(None) => Vec::new(),
        Ok(Some(Err(e))) => {
            tracing::warn!("{}: {e}: initiation timestamps forgotten", path.display());
            Vec::new()
        }
        Err(e) => {
            tracing::warn!("{e}: initiation timestamps forgotten");
            Vec::new()
        }
    }
}

pub fn save(path: &Path, timestamps: &[(PublicKey, u64)]) -> Result<()> {
    let kept: BTreeMap<String, u64> = timestamps
        .iter()
        .map(|(key, timestamp)| (encode_key(key), *timestamp))
        .collect();
    let bytes = serde_json::to_vec(&kept).expect("a map of strings to numbers serialises");
    crate::state::write_atomic(path, &bytes)
}

/// When the next write may happen.
pub struct SaveClock(Instant);

impl SaveClock {
    pub fn new(now: Instant) -> Self {
        SaveClock(now)
    }

    /// Whether a write is due now (and, if so, the next one a second later).
    pub fn due(&mut self, now: Instant) -> bool {
        if now < self.0 {
            return false;
        }
        self.0 = now + SAVE_EVERY;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_come_back_as_they_were_saved_and_damage_forgets_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("init-timestamps.json");
        assert!(load(&path).is_empty());
        let kept = vec![([1u8; 32], 7), ([2u8; 32], u64::MAX)];
        save(&path, &kept).unwrap();
        let mut back = load(&path);
        back.sort();
        assert_eq!(back, kept);
        std::fs::write(&path, b"{not json").unwrap();
        assert!(load(&path).is_empty());
    }

    #[test]
    fn writes_are_at_most_a_second_apart() {
        let start = Instant::now();
        let mut clock = SaveClock::new(start);
        assert!(clock.due(start));
        assert!(!clock.due(start + SAVE_EVERY / 2));
        assert!(clock.due(start + SAVE_EVERY));
    }
}
