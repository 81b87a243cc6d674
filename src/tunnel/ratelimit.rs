//! A budget for handshakes that passed the MAC check, so that even a sender who knows our
//! public key cannot make us spend more than a bounded share of a core on Diffie-Hellman.
//! Token buckets: one per source address (a flood from one place leaves the others their
//! share) and one for all (spoofed sources cannot multiply the budget). Before either, a meter
//! of arriving initiations says when we are under load: then only initiations whose source
//! proved it can receive (a valid cookie, [`super::cookie`]) reach the buckets, so spoofed
//! sources cannot spend the budget that peers rekeying need.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Handshakes per second (and burst) one source address may have answered.
const PER_SOURCE_RATE: f64 = 20.0;
/// Handshakes per second for all sources together: about an eighth of a core.
const GLOBAL_RATE: f64 = 1000.0;
/// Sources remembered at most; past that, only the global budget applies to new ones.
const MAX_SOURCES: usize = 4096;
/// Initiations per second (and burst) that passed the MAC, above which we are under load:
/// half the global budget, so load is declared before the budget runs out.
const LOAD_RATE: f64 = GLOBAL_RATE / 2.0;
/// How long load, once seen, is assumed to last: a flood is answered with cookies throughout,
/// not in bursts each time the meter refills.
const LOAD_HOLD: Duration = Duration::from_secs(1);

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: rate,
            at: now,
        }
    }

    /// Refills for the time since the last call (up to one second's worth), then takes one.
    fn take(&mut self, rate: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn is_full_at(&self, rate: f64, now: Instant) -> bool {
        self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * rate >= rate
    }
}

pub struct HandshakeLimiter {
    per_source: HashMap<IpAddr, Bucket>,
    global: Bucket,
    arrivals: Bucket,
    loaded_until: Option<Instant>,
    pruned_at: Instant,
}

impl HandshakeLimiter {
    pub fn new(now: Instant) -> Self {
        HandshakeLimiter {
            per_source: HashMap::new(),
            global: Bucket::full(GLOBAL_RATE, now),
            arrivals: Bucket::full(LOAD_RATE, now),
            loaded_until: None,
            pruned_at: now,
        }
    }

    /// Counts one initiation that passed the MAC; whether we are under load.
    pub fn under_load(&mut self, now: Instant) -> bool {
        if !self.arrivals.take(LOAD_RATE, now) {
            self.loaded_until = Some(now + LOAD_HOLD);
        }
        self.loaded_until.is_some_and(|until| now < until)
    }

    /// Whether a handshake from `source` may be answered now.
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        let full = self.per_source.len() >= MAX_SOURCES;
        // Pruning is a scan: at most once a second, however many new sources arrive.
        if full && now.saturating_duration_since(self.pruned_at) >= Duration::from_secs(1) {
            self.forget_idle(now);
        }
        let room = self.per_source.len() < MAX_SOURCES;
        let source_ok = match self.per_source.get_mut(&source) {
            Some(bucket) => bucket.take(PER_SOURCE_RATE, now),
            None if room => self
                .per_source
                .entry(source)
                .or_insert_with(|| Bucket::full(PER_SOURCE_RATE, now))
                .take(PER_SOURCE_RATE, now),
            None => true,
        };
        source_ok && self.global.take(GLOBAL_RATE, now)
    }

    /// Forgets sources whose bucket has refilled: they are as if never seen.
    pub fn forget_idle(&mut self, now: Instant) {
        self.pruned_at = now;
        self.per_source
            .retain(|_, b| !b.is_full_at(PER_SOURCE_RATE, now));
    }

    pub fn sources(&self) -> usize {
        self.per_source.len()
    }
}

/// How often a datagram from outside may make us start a handshake with one peer.
pub const OUTSIDE_TRIGGER_INTERVAL: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_gets_its_rate_and_others_are_unaffected() {
        let start = Instant::now();
        let mut limiter = HandshakeLimiter::new(start);
        let flooder: IpAddr = "192.0.2.66".parse().unwrap();
        let peer: IpAddr = "192.0.2.7".parse().unwrap();
        // 10,000 attempts a second for 2 s, one every 100 µs.
        let mut allowed = 0;
        for i in 0..20_000u64 {
            let now = start + Duration::from_micros(100 * i);
            allowed += limiter.allow(flooder, now) as u32;
            if i % 1000 == 0 {
                assert!(limiter.allow(peer, now), "the peer was refused at {i}");
            }
        }
        // The burst, then the rate for 2 s.
        assert!((55..=61).contains(&allowed), "allowed {allowed}");
    }

    #[test]
    fn load_is_declared_above_half_the_budget_and_lasts_a_second_after() {
        let start = Instant::now();
        let mut limiter = HandshakeLimiter::new(start);
        // At 400 a second, never.
        let calm = (0..800u64).any(|i| limiter.under_load(start + Duration::from_micros(2500 * i)));
        assert!(!calm, "under load at 400/s");
        // At 10,000 a second, once the burst is spent.
        let t = start + Duration::from_secs(2);
        let loaded: Vec<bool> = (0..2000u64)
            .map(|i| limiter.under_load(t + Duration::from_micros(100 * i)))
            .collect();
        let loaded_at = loaded
            .iter()
            .position(|&l| l)
            .expect("never under load at 10,000/s");
        assert!(loaded[loaded_at..].iter().all(|&l| l), "load came and went");
        assert!((400..=600).contains(&loaded_at), "loaded after {loaded_at}");
        // Still under load just inside the second after the meter last ran dry, not after.
        let last_dry = t + Duration::from_micros(100 * 1999);
        assert!(limiter.under_load(last_dry + LOAD_HOLD - Duration::from_millis(10)));
        assert!(!limiter.under_load(last_dry + LOAD_HOLD * 3));
    }

    #[test]
    fn many_sources_share_the_global_budget_and_are_forgotten() {
        let start = Instant::now();
        let mut limiter = HandshakeLimiter::new(start);
        let mut allowed = 0;
        for i in 0..5000u32 {
            let source = IpAddr::from(std::net::Ipv4Addr::from(0xc000_0200 + i));
            allowed += limiter.allow(source, start) as u32;
        }
        assert_eq!(allowed, GLOBAL_RATE as u32);
        assert_eq!(limiter.sources(), MAX_SOURCES);
        limiter.forget_idle(start + Duration::from_secs(2));
        assert_eq!(limiter.sources(), 0);
    }
}
