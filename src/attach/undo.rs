//! The guard that makes a failed attach leave nothing behind.

use crate::error::Result;

/// Compensating actions, run newest first unless the operation commits.
#[derive(Default)]
pub(super) struct Undo<'a> {
    steps: Vec<Box<dyn FnOnce() -> Result<()> + 'a>>,
}

impl<'a> Undo<'a> {
    pub(super) fn push(&mut self, step: impl FnOnce() -> Result<()> + 'a) {
        self.steps.push(Box::new(step));
    }

    pub(super) fn commit(mut self) {
        self.steps.clear();
    }
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        while let Some(step) = self.steps.pop() {
            // Best effort: the original error is what the caller needs to see.
            let _ = step();
        }
    }
}
