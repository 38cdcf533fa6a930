//! The long-term rtt baseline: what "normal" latency is for a subject, so that a slow drift
//! shows even after it has outgrown the feature window.
//!
//! Baseline at second `t` = mean rtt over the minutes `[M - 60, M - 6)`, `M` = `t`'s minute,
//! using only seconds that have already left the [`WINDOW_S`] window (a second is folded in
//! when it leaves; every second of those minutes is older than 360 s, so all have). Folding in
//! time order makes the sums, and so the feature, identical in batch and live scoring. `None`
//! until a full minute of rtt has been seen in range.

use super::features::WINDOW_S;
use super::series::Sample;
use super::telemetry::Metric;

/// Minutes kept (a power of two above the 60 used).
const BUCKETS: usize = 64;
/// Oldest minute used, counted back from now's minute.
const FROM_MINUTES: i64 = 60;
/// Newest minute used is the one before this.
const TO_MINUTES: i64 = 6;
/// Fewest rtt samples that make a baseline.
const MIN_SAMPLES: u32 = 60;

/// Per-minute rtt sums of the last hour.
#[derive(Debug, Clone)]
pub struct MinuteSums {
    /// (minute, sum, count) per bucket; a bucket whose minute is stale counts as empty.
    buckets: [(i64, f64, u32); BUCKETS],
}

impl Default for MinuteSums {
    fn default() -> Self {
        Self {
            buckets: [(i64::MIN, 0.0, 0); BUCKETS],
        }
    }
}

impl MinuteSums {
    /// Adds the rtt of second `sec` (NaN is skipped). Call in time order.
    pub fn fold(&mut self, sec: i64, rtt: f32) {
        if rtt.is_nan() {
            return;
        }
        let minute = sec.div_euclid(60);
        let b = &mut self.buckets[minute.rem_euclid(BUCKETS as i64) as usize];
        if b.0 != minute {
            *b = (minute, 0.0, 0);
        }
        b.1 += f64::from(rtt);
        b.2 += 1;
    }

    /// Adds a whole minute's rtt sum and count at once: the warm start of a live scorer from
    /// minute aggregates of stored probes (see [`super::fleet::Fleet::handle_rtt_minutes`]).
    pub fn seed(&mut self, minute: i64, sum: f64, count: u32) {
        let b = &mut self.buckets[minute.rem_euclid(BUCKETS as i64) as usize];
        if b.0 != minute {
            *b = (minute, 0.0, 0);
        }
        b.1 += sum;
        b.2 += count;
    }

    /// The baseline at second `now`, in ms.
    pub fn baseline(&self, now: i64) -> Option<f64> {
        let m = now.div_euclid(60);
        let (mut sum, mut n) = (0.0, 0u32);
        for minute in m - FROM_MINUTES..m - TO_MINUTES {
            let b = &self.buckets[minute.rem_euclid(BUCKETS as i64) as usize];
            if b.0 == minute {
                sum += b.1;
                n += b.2;
            }
        }
        (n >= MIN_SAMPLES).then(|| sum / f64::from(n))
    }
}

/// The baseline of every slot of a series starting at unix second `start` (NaN where none),
/// computed exactly as live scoring does: slot `i - WINDOW_S` is folded in before slot `i`.
pub fn series_baselines(start: i64, samples: &[Sample]) -> Vec<f64> {
    let mut sums = MinuteSums::default();
    let mut out = Vec::with_capacity(samples.len());
    for i in 0..samples.len() {
        if i >= WINDOW_S {
            let j = i - WINDOW_S;
            sums.fold(start + j as i64, samples[j][Metric::RttMs as usize]);
        }
        out.push(sums.baseline(start + i as i64).unwrap_or(f64::NAN));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::risk::series::MISSING;

    #[test]
    fn baseline_uses_minutes_an_hour_to_six_minutes_back() {
        let mut s = MinuteSums::default();
        // 10 ms during minute 0..10, 50 ms during minute 10..20.
        for sec in 0..1200 {
            s.fold(sec, if sec < 600 { 10.0 } else { 50.0 });
        }
        // At minute 16: minutes [-44, 10) -> only the 10 ms minutes.
        assert_eq!(s.baseline(16 * 60), Some(10.0));
        // At minute 26: minutes [-34, 20) -> 600 s of 10 and 600 s of 50.
        assert_eq!(s.baseline(26 * 60 + 59), Some(30.0));
        // At minute 75: only minutes 15..20 are still in range (300 s of 50 ms).
        assert_eq!(s.baseline(75 * 60), Some(50.0));
        // At minute 81: nothing left.
        assert_eq!(s.baseline(81 * 60), None);
    }

    #[test]
    fn seeded_minutes_count_like_folded_ones() {
        let mut a = MinuteSums::default();
        let mut b = MinuteSums::default();
        for sec in 0..600 {
            a.fold(sec, 20.0);
        }
        for minute in 0..10 {
            b.seed(minute, 60.0 * 20.0, 60);
        }
        assert_eq!(a.baseline(16 * 60), b.baseline(16 * 60));
        assert_eq!(b.baseline(16 * 60), Some(20.0));
    }

    #[test]
    fn series_baseline_waits_for_data_to_leave_the_window() {
        let mut samples = vec![MISSING; 2000];
        for x in &mut samples {
            x[Metric::RttMs as usize] = 20.0;
        }
        let b = series_baselines(0, &samples);
        // Slot i has folded seconds < i - 299; the baseline needs a full minute in
        // [M - 60, M - 6) minutes: first at minute 7 (seconds 0..59 folded by slot 420).
        let first = b.iter().position(|v| !v.is_nan()).unwrap();
        assert_eq!(first, 420);
        assert_eq!(b[1999], 20.0);
    }
}
