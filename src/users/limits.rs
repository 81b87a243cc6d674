//! How much of flatnetd one rootless user may take: requests per second (a token bucket per
//! uid, bursts of twice the rate) and connections at once, so that one user's loop cannot
//! starve the others or the daemon.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::error::{Error, Result};

/// Connections one user may hold open at once.
pub const MAX_CONNECTIONS_PER_USER: usize = 4;

#[derive(Default)]
pub struct Limits {
    users: Mutex<HashMap<u32, Usage>>,
}

struct Usage {
    tokens: f64,
    refilled: Instant,
    connections: usize,
}

/// A connection let in; it counts against its user until dropped.
pub struct Admission {
    limits: Arc<Limits>,
    uid: u32,
}

impl Limits {
    /// Lets a request of `uid` in, or says which limit it hit.
    pub fn admit(self: &Arc<Self>, uid: u32, per_second: u32) -> Result<Admission> {
        let mut users = self.users.lock().expect("limits lock");
        let burst = f64::from(per_second.max(1)) * 2.0;
        let now = Instant::now();
        let usage = users.entry(uid).or_insert(Usage {
            tokens: burst,
            refilled: now,
            connections: 0,
        });
        let elapsed = now.duration_since(usage.refilled).as_secs_f64();
        usage.tokens = (usage.tokens + elapsed * f64::from(per_second)).min(burst);
        usage.refilled = now;
        if usage.connections >= MAX_CONNECTIONS_PER_USER {
            return Err(Error::NotPermitted(format!(
                "uid {uid} already has {MAX_CONNECTIONS_PER_USER} requests in progress"
            )));
        }
        if usage.tokens < 1.0 {
            return Err(Error::NotPermitted(format!(
                "uid {uid} is over its {per_second} requests per second; try again shortly"
            )));
        }
        usage.tokens -= 1.0;
        usage.connections += 1;
        Ok(Admission {
            limits: self.clone(),
            uid,
        })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut users = self.limits.users.lock().expect("limits lock");
        if let Some(usage) = users.get_mut(&self.uid) {
            usage.connections -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_over_the_rate_or_the_connections_is_refused_and_others_are_not() {
        let limits = Arc::new(Limits::default());
        // A burst of twice the rate, then refusals; another user is untouched.
        let admitted: Vec<_> = (0..4).map(|_| limits.admit(7, 2).map(drop)).collect();
        assert!(admitted.iter().all(Result::is_ok));
        let over = limits.admit(7, 2).map(drop).unwrap_err().to_string();
        assert!(over.contains("2 requests per second"), "{over}");
        assert!(limits.admit(8, 2).is_ok());

        let held: Vec<_> = (0..MAX_CONNECTIONS_PER_USER)
            .map(|_| limits.admit(9, 100).unwrap())
            .collect();
        let busy = limits.admit(9, 100).map(drop).unwrap_err().to_string();
        assert!(busy.contains("in progress"), "{busy}");
        drop(held);
        assert!(limits.admit(9, 100).is_ok());
    }
}
