//! The feature window: the last [`WINDOW_S`] one-second samples of a subject, as the ring
//! buffer of live scoring or a slice of a stored series holds them. Everything after it
//! (baselines, features, series) reads samples through this module, which depends on none of
//! them.

use crate::risk::data::telemetry::N_METRICS;

/// One second of metrics as the feature code reads them; NaN means missing.
pub type Sample = [f32; N_METRICS];

/// A sample with every value missing.
pub const MISSING: Sample = [f32::NAN; N_METRICS];

/// Length of the window the features look at (seconds).
pub const WINDOW_S: usize = 300;

/// A window: `older` followed by `newer`; the last sample is "now".
#[derive(Debug, Clone, Copy)]
pub struct Window<'a> {
    older: &'a [Sample],
    newer: &'a [Sample],
}

impl<'a> Window<'a> {
    /// A window from two consecutive parts (either may be empty). Only the last
    /// [`WINDOW_S`] samples are used.
    pub fn new(older: &'a [Sample], newer: &'a [Sample]) -> Self {
        let keep = WINDOW_S.min(older.len() + newer.len());
        let from_newer = keep.min(newer.len());
        let from_older = keep - from_newer;
        Self {
            older: &older[older.len() - from_older..],
            newer: &newer[newer.len() - from_newer..],
        }
    }

    /// A window ending at slot `i` of `samples`.
    pub fn ending_at(samples: &'a [Sample], i: usize) -> Self {
        let from = (i + 1).saturating_sub(WINDOW_S);
        Self::new(&[], &samples[from..=i])
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.older.len() + self.newer.len()
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The last `k` samples as two slices, oldest first.
    pub(super) fn tail(&self, k: usize) -> (&'a [Sample], &'a [Sample]) {
        let k = k.min(self.len());
        if k <= self.newer.len() {
            (&[], &self.newer[self.newer.len() - k..])
        } else {
            let from_older = k - self.newer.len();
            (&self.older[self.older.len() - from_older..], self.newer)
        }
    }
}
