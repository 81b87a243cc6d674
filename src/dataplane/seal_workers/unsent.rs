//! Which handed-over packets the workers have not sent yet, so that the counters on the wire
//! stay within the receiver's replay window.
//!
//! Counting the packets with the workers is not enough: while one worker is kept off its
//! CPU holding an old train, the others can send (and be handed) any number of newer ones,
//! and the old train, sent at last, falls behind the window. What is bounded here is the
//! distance from the oldest packet not yet sent to the newest one reserved.

use std::collections::VecDeque;

/// Packets numbered in the order their counters were reserved, across every session (a
/// session's counters advance no faster than this number), and the trains each worker holds.
pub struct Unsent {
    /// The number the next reserved packet gets.
    next: u64,
    /// The number of the newest train's first packet.
    newest_train: u64,
    /// Per worker, the number of the first packet of each train it holds, oldest first.
    held: Vec<VecDeque<u64>>,
}

impl Unsent {
    pub fn new(workers: usize) -> Self {
        Unsent {
            next: 0,
            newest_train: 0,
            held: vec![VecDeque::new(); workers],
        }
    }

    /// Numbers a train of `packets` handed to worker `lane`.
    pub fn hand_over(&mut self, lane: usize, packets: usize) {
        self.newest_train = self.next;
        self.held[lane].push_back(self.next);
        self.next += packets as u64;
    }

    /// Worker `lane` has sent its `trains` oldest trains (each worker sends in order).
    pub fn sent(&mut self, lane: usize, trains: usize) {
        let held = &mut self.held[lane];
        held.drain(..trains);
    }

    /// Must the packet thread wait before reserving more? Yes while the newest packet is more
    /// than `span` ahead of the oldest unsent one, unless that one is in the newest train: a
    /// train longer than `span` goes alone.
    pub fn too_far_apart(&self, span: u64) -> bool {
        let oldest = self.held.iter().filter_map(|trains| trains.front()).min();
        oldest.is_some_and(|&oldest| oldest < self.newest_train && self.next - oldest > span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_holding_an_old_train_stops_the_others_running_ahead() {
        let mut unsent = Unsent::new(2);
        unsent.hand_over(0, 10); // packets 0..10, and worker 0 is descheduled
        for round in 0..10 {
            unsent.hand_over(1, 10);
            unsent.sent(1, 1);
            // Never more than 10 packets with the workers, yet the distance grows.
            let ahead = 10 * (round + 2);
            assert_eq!(unsent.too_far_apart(100), ahead > 100, "after {ahead}");
        }
        unsent.sent(0, 1);
        assert!(!unsent.too_far_apart(100), "the old train is out");
    }

    #[test]
    fn a_long_train_goes_alone_and_sent_trains_are_forgotten_in_order() {
        let mut unsent = Unsent::new(2);
        unsent.hand_over(0, 500);
        assert!(!unsent.too_far_apart(100), "alone, however long");
        unsent.hand_over(1, 1);
        assert!(unsent.too_far_apart(100), "behind a long one");
        unsent.sent(0, 1);
        assert!(!unsent.too_far_apart(100));
        unsent.sent(1, 1);
        assert!(!unsent.too_far_apart(0), "nothing held");
    }
}
