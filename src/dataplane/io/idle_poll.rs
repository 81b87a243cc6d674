//! Polling for a moment before sleeping.
//!
//! A datagram sent to a peer usually draws an answer within one round trip: a ping's reply, a
//! TCP acknowledgement, the next write of a client that was waiting for it. Sleeping in between
//! costs more than the round trip itself on a virtual machine: a halted vCPU takes tens of
//! microseconds to wake, and the woken thread tends to land on a cold CPU. So after a round of
//! work that sent to the underlay, the loop polls for a short window, yielding the CPU to
//! anything runnable, before it blocks. After a round that only delivered into containers it
//! blocks at once: whatever a container answers is queued by the time the write returns, and
//! a poll would only keep the container's own thread off this CPU.
//!
//! The time spent in empty polls is capped per tick, so a trickle of traffic can never turn
//! into a busy core.

use std::time::{Duration, Instant};

use crate::control::status::PollStats;

/// Share of each tick that empty polls may use, in percent of one CPU.
const BUDGET_PERCENT: u32 = 10;

pub struct IdlePoll {
    window: Duration,
    budget: Duration,
    /// What is left of the budget in this tick.
    left: Duration,
    /// Set while a window is open.
    until: Option<Instant>,
    stats: PollStats,
}

impl IdlePoll {
    /// `window_us` 0 turns polling off; `tick` is the period the budget renews in.
    pub fn new(window_us: u32, tick: Duration) -> Self {
        let budget = tick * BUDGET_PERCENT / 100;
        IdlePoll {
            window: Duration::from_micros(window_us.into()),
            budget,
            left: budget,
            until: None,
            stats: PollStats::default(),
        }
    }

    /// Whether the next wait only polls. The caller yields before such a wait.
    pub fn polling(&mut self, now: Instant) -> bool {
        match self.until {
            Some(until) if now < until => true,
            Some(_) => {
                self.until = None;
                self.stats.missed += 1;
                false
            }
            None => false,
        }
    }

    /// A poll that found nothing took `spent`.
    pub fn charge(&mut self, spent: Duration) {
        self.left = self.left.saturating_sub(spent);
        self.stats.empty_us += spent.as_micros() as u64;
        if self.left.is_zero() && self.until.take().is_some() {
            self.stats.missed += 1;
        }
    }

    /// A round of work ended at `now`; `sent` tells whether it sent to the underlay.
    pub fn after_round(&mut self, now: Instant, sent: bool) {
        if self.until.take().is_some() {
            self.stats.caught += 1;
        }
        if !sent || self.window.is_zero() {
            return;
        }
        if self.left.is_zero() {
            self.stats.over_budget += 1;
            return;
        }
        self.until = Some(now + self.window);
    }

    /// A new tick: the budget is whole again.
    pub fn renew(&mut self) {
        self.left = self.budget;
    }

    pub fn window_us(&self) -> u64 {
        self.window.as_micros() as u64
    }

    pub fn stats(&self) -> &PollStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(100);

    #[test]
    fn polls_only_after_a_round_that_sent() {
        let mut poll = IdlePoll::new(50, TICK);
        let t = Instant::now();
        poll.after_round(t, false);
        assert!(!poll.polling(t));
        poll.after_round(t, true);
        assert!(poll.polling(t + Duration::from_micros(10)));
        assert!(!poll.polling(t + Duration::from_micros(60)));
        assert_eq!(poll.stats().missed, 1);
    }

    #[test]
    fn a_round_that_only_delivers_closes_the_window() {
        let mut poll = IdlePoll::new(50, TICK);
        let t = Instant::now();
        poll.after_round(t, true);
        poll.after_round(t + Duration::from_micros(5), false);
        assert!(!poll.polling(t + Duration::from_micros(10)));
        assert_eq!(poll.stats().caught, 1);
    }

    #[test]
    fn the_budget_caps_empty_polls_until_the_next_tick() {
        let mut poll = IdlePoll::new(50, TICK);
        let t = Instant::now();
        poll.after_round(t, true);
        poll.charge(TICK * BUDGET_PERCENT / 100);
        assert!(!poll.polling(t), "a spent budget closes the open window");
        poll.after_round(t, true);
        assert!(!poll.polling(t));
        assert_eq!(poll.stats().over_budget, 1);
        poll.renew();
        poll.after_round(t, true);
        assert!(poll.polling(t));
    }

    #[test]
    fn a_zero_window_never_polls() {
        let mut poll = IdlePoll::new(0, TICK);
        let t = Instant::now();
        poll.after_round(t, true);
        assert!(!poll.polling(t));
    }
}
