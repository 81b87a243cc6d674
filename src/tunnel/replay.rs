//! Sliding replay window over the 64-bit transport counters (RFC 6479 style): accepts each
//! counter once, in any order, as long as it is not older than the window.

const WORD_BITS: u64 = 64;
/// 8,128 counters, as wide as WireGuard's: packets sealed on several threads leave out of
/// counter order (`dataplane/seal_workers`), and the kernel may reorder them further on the way.
const WORDS: usize = 128;
/// Counters this far behind the newest one are still accepted (reordering tolerance).
pub const WINDOW: u64 = (WORDS as u64 - 1) * WORD_BITS;

#[derive(Debug, Clone)]
pub struct ReplayWindow {
    /// Highest counter accepted so far, plus one (0: none yet).
    next: u64,
    bits: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            next: 0,
            bits: [0; WORDS],
        }
    }
}

impl ReplayWindow {
    /// Would `counter` be accepted? Checked before decryption, so a flood of replays costs no
    /// AEAD work; [`ReplayWindow::accept`] records it only after authentication succeeded.
    pub fn is_fresh(&self, counter: u64) -> bool {
        if counter >= self.next {
            return true;
        }
        if self.next - counter > WINDOW {
            return false;
        }
        let (word, bit) = Self::slot(counter);
        self.bits[word] & (1 << bit) == 0
    }

    /// Records `counter` as seen; returns false if it was not fresh.
    pub fn accept(&mut self, counter: u64) -> bool {
        if !self.is_fresh(counter) {
            return false;
        }
        if counter >= self.next {
            self.advance_to(counter);
        }
        let (word, bit) = Self::slot(counter);
        self.bits[word] |= 1 << bit;
        true
    }

    /// Clears the words that slide into the window when the newest counter moves up.
    fn advance_to(&mut self, counter: u64) {
        let old_word = self.next.saturating_sub(1) / WORD_BITS;
        let new_word = counter / WORD_BITS;
        let to_clear = (new_word.saturating_sub(old_word)).min(WORDS as u64);
        for i in 1..=to_clear {
            self.bits[((old_word + i) % WORDS as u64) as usize] = 0;
        }
        self.next = counter.saturating_add(1);
    }

    fn slot(counter: u64) -> (usize, u64) {
        (
            ((counter / WORD_BITS) % WORDS as u64) as usize,
            counter % WORD_BITS,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_counter_once() {
        let mut w = ReplayWindow::default();
        for c in 0..500 {
            assert!(w.accept(c));
            assert!(!w.accept(c));
        }
    }

    #[test]
    fn out_of_order_inside_window_is_accepted() {
        let mut w = ReplayWindow::default();
        let top = 20_000;
        assert!(w.accept(top));
        assert!(w.accept(top - WINDOW + 1));
        assert!(w.accept(top - 1));
        assert!(w.accept(top - 10));
        assert!(!w.accept(top - 1));
        // Too old: beyond the window.
        assert!(!w.accept(top - WINDOW - 1));
        assert!(!w.is_fresh(3));
    }

    #[test]
    fn large_jumps_clear_stale_bits() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(5));
        assert!(w.accept(5 + 64 * WORDS as u64)); // same slot, one full turn later
        assert!(!w.accept(5)); // far too old now
        assert!(w.accept(5 + 64 * WORDS as u64 - 1)); // its neighbour was cleared, so fresh
        assert!(w.accept(u64::MAX - 1));
        assert!(!w.accept(u64::MAX - 1));
    }
}
