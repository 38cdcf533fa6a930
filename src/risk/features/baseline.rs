//! Long-term baselines: what "normal" is for a subject, so that a slow drift shows even after
//! it has outgrown the feature window, and so that "abnormal" means abnormal *for this
//! appliance* (its hardware, load and region), not above a fleet-wide constant.
//!
//! Baselines at second `t` come from the minutes `[M - 60, M - 6)`, `M` = `t`'s minute, using
//! only seconds that have already left the [`WINDOW_S`] window (a second is folded in when it
//! leaves; every second of those minutes is older than 360 s, so all have). Folding in time
//! order makes the sums, and so the features, identical in batch and live scoring.
//!
//! - The **rtt baseline** is the mean rtt over those seconds (`None` until a full minute of rtt).
//! - The **levels** are, per metric, the median of the minute means and their spread (1.4826 ×
//!   the median absolute deviation, a robust standard deviation): medians, so that one bad
//!   minute (a failure's precursor, a spike) does not become the new normal. `NaN` until
//!   [`MIN_MINUTES`] minutes have enough of that metric.

use crate::risk::data::telemetry::{Metric, N_METRICS};
use crate::risk::features::window::{Sample, WINDOW_S};

/// Minutes kept (a power of two above the 60 used).
const BUCKETS: usize = 64;
/// Oldest minute used, counted back from now's minute.
const FROM_MINUTES: i64 = 60;
/// Newest minute used is the one before this.
const TO_MINUTES: i64 = 6;
/// Fewest rtt samples that make an rtt baseline.
const MIN_SAMPLES: u32 = 60;
/// Fewest values in a minute for its mean to count towards a level.
const MIN_PER_MINUTE: u16 = 30;
/// Fewest such minutes that make a level.
pub const MIN_MINUTES: usize = 10;

/// Each metric's normal level and spread; `NaN` where unknown.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Levels {
    /// Median of the minute means.
    pub median: [f32; N_METRICS],
    /// Robust spread of the minute means (1.4826 × MAD).
    pub spread: [f32; N_METRICS],
}

impl Levels {
    /// Nothing known.
    pub const UNKNOWN: Levels = Levels {
        median: [f32::NAN; N_METRICS],
        spread: [f32::NAN; N_METRICS],
    };
}

/// What the features need to know about a subject's past beyond the window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Baseline {
    /// Mean rtt (ms); `NaN` when unknown.
    pub rtt: f64,
    /// Per-metric levels.
    pub levels: Levels,
}

impl Baseline {
    /// Nothing known.
    pub const UNKNOWN: Baseline = Baseline {
        rtt: f64::NAN,
        levels: Levels::UNKNOWN,
    };
}

/// Per-minute sums of every metric over the last hour, with the baseline of the current
/// minute cached (it only changes when the minute does, or a minute is seeded).
#[derive(Debug, Clone)]
pub struct MinuteSums {
    /// The minute each bucket holds; a bucket whose minute is stale counts as empty.
    minute: [i64; BUCKETS],
    sum: [[f64; N_METRICS]; BUCKETS],
    count: [[u16; N_METRICS]; BUCKETS],
    /// (minute, its baseline).
    cached: Option<(i64, Baseline)>,
}

impl Default for MinuteSums {
    fn default() -> Self {
        Self {
            minute: [i64::MIN; BUCKETS],
            sum: [[0.0; N_METRICS]; BUCKETS],
            count: [[0; N_METRICS]; BUCKETS],
            cached: None,
        }
    }
}

const RTT: usize = Metric::RttMs as usize;

impl MinuteSums {
    /// The bucket of `minute`, emptied if it held an older minute.
    fn bucket(&mut self, minute: i64) -> usize {
        let b = minute.rem_euclid(BUCKETS as i64) as usize;
        if self.minute[b] != minute {
            self.minute[b] = minute;
            self.sum[b] = [0.0; N_METRICS];
            self.count[b] = [0; N_METRICS];
        }
        b
    }

    /// Adds second `sec` (NaN values are skipped). Call in time order.
    pub fn fold(&mut self, sec: i64, sample: &Sample) {
        if sample.iter().all(|x| x.is_nan()) {
            return;
        }
        let minute = sec.div_euclid(60);
        let b = self.bucket(minute);
        for (m, &x) in sample.iter().enumerate() {
            if !x.is_nan() {
                self.sum[b][m] += f64::from(x);
                self.count[b][m] = self.count[b][m].saturating_add(1);
            }
        }
        self.forget_if_used(minute);
    }

    /// Adds a whole minute's rtt sum and count at once: the warm start of a live scorer from
    /// minute aggregates of stored probes (see
    /// [`crate::risk::live::fleet::Fleet::handle_rtt_minutes`]).
    pub fn seed_rtt(&mut self, minute: i64, sum: f64, count: u32) {
        let b = self.bucket(minute);
        self.sum[b][RTT] += sum;
        self.count[b][RTT] =
            self.count[b][RTT].saturating_add(count.min(u32::from(u16::MAX)) as u16);
        self.forget_if_used(minute);
    }

    /// Drops the cached baseline if `minute` is one it was computed from.
    fn forget_if_used(&mut self, minute: i64) {
        if let Some((m, _)) = self.cached
            && (m - FROM_MINUTES..m - TO_MINUTES).contains(&minute)
        {
            self.cached = None;
        }
    }

    /// The buckets in range for second `now`.
    fn in_range(&self, now: i64) -> impl Iterator<Item = usize> + '_ {
        let m = now.div_euclid(60);
        (m - FROM_MINUTES..m - TO_MINUTES).filter_map(move |minute| {
            let b = minute.rem_euclid(BUCKETS as i64) as usize;
            (self.minute[b] == minute).then_some(b)
        })
    }

    /// The rtt baseline at second `now`, in ms.
    pub fn rtt_baseline(&self, now: i64) -> Option<f64> {
        let (mut sum, mut n) = (0.0, 0u32);
        for b in self.in_range(now) {
            sum += self.sum[b][RTT];
            n += u32::from(self.count[b][RTT]);
        }
        (n >= MIN_SAMPLES).then(|| sum / f64::from(n))
    }

    /// The levels at second `now`.
    pub fn levels(&self, now: i64) -> Levels {
        let mut out = Levels::UNKNOWN;
        let mut means = [0f64; BUCKETS];
        for m in 0..N_METRICS {
            let mut n = 0;
            for b in self.in_range(now) {
                if self.count[b][m] >= MIN_PER_MINUTE {
                    means[n] = self.sum[b][m] / f64::from(self.count[b][m]);
                    n += 1;
                }
            }
            if n < MIN_MINUTES {
                continue;
            }
            let Some(median) = percentile(&mut means[..n], 0.5) else {
                continue;
            };
            let mut dev = [0f64; BUCKETS];
            for (d, x) in dev.iter_mut().zip(&means[..n]) {
                *d = (x - median).abs();
            }
            let mad = percentile(&mut dev[..n], 0.5).unwrap_or(0.0);
            out.median[m] = median as f32;
            out.spread[m] = (1.4826 * mad) as f32;
        }
        out
    }

    /// The whole baseline at second `now`.
    pub fn baseline(&self, now: i64) -> Baseline {
        match self.cached {
            Some((m, b)) if m == now.div_euclid(60) => b,
            _ => self.compute(now),
        }
    }

    fn compute(&self, now: i64) -> Baseline {
        Baseline {
            rtt: self.rtt_baseline(now).unwrap_or(f64::NAN),
            levels: self.levels(now),
        }
    }

    /// Computes and caches the baseline of `now`'s minute unless it is cached already: call
    /// once per second from the owner (the scorer) so that readers on other threads find it.
    pub fn refresh(&mut self, now: i64) {
        let m = now.div_euclid(60);
        if self.cached.is_none_or(|(c, _)| c != m) {
            self.cached = Some((m, self.compute(now)));
        }
    }
}

/// The baseline of every slot of a series starting at unix second `start`, computed exactly as
/// live scoring does: slot `i - WINDOW_S` is folded in before slot `i`.
pub fn series_baselines(start: i64, samples: &[Sample]) -> Vec<Baseline> {
    let mut sums = MinuteSums::default();
    let mut out = Vec::with_capacity(samples.len());
    for i in 0..samples.len() {
        if i >= WINDOW_S {
            let j = i - WINDOW_S;
            sums.fold(start + j as i64, &samples[j]);
        }
        let now = start + i as i64;
        sums.refresh(now);
        out.push(sums.baseline(now));
    }
    out
}

/// Nearest-rank percentile (`q` in (0, 1]) of `values`, which it reorders.
pub fn percentile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    let (_, v, _) = values.select_nth_unstable_by(rank - 1, f64::total_cmp);
    Some(*v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::risk::features::window::MISSING;

    fn rtt(x: f32) -> Sample {
        let mut s = MISSING;
        s[RTT] = x;
        s
    }

    #[test]
    fn rtt_baseline_uses_minutes_an_hour_to_six_minutes_back() {
        let mut s = MinuteSums::default();
        // 10 ms during minute 0..10, 50 ms during minute 10..20.
        for sec in 0..1200 {
            s.fold(sec, &rtt(if sec < 600 { 10.0 } else { 50.0 }));
        }
        // At minute 16: minutes [-44, 10) -> only the 10 ms minutes.
        assert_eq!(s.rtt_baseline(16 * 60), Some(10.0));
        // At minute 26: minutes [-34, 20) -> 600 s of 10 and 600 s of 50.
        assert_eq!(s.rtt_baseline(26 * 60 + 59), Some(30.0));
        // At minute 75: only minutes 15..20 are still in range (300 s of 50 ms).
        assert_eq!(s.rtt_baseline(75 * 60), Some(50.0));
        // At minute 81: nothing left.
        assert_eq!(s.rtt_baseline(81 * 60), None);
    }

    #[test]
    fn seeded_minutes_count_like_folded_ones() {
        let mut a = MinuteSums::default();
        let mut b = MinuteSums::default();
        for sec in 0..600 {
            a.fold(sec, &rtt(20.0));
        }
        for minute in 0..10 {
            b.seed_rtt(minute, 60.0 * 20.0, 60);
        }
        assert_eq!(a.rtt_baseline(16 * 60), b.rtt_baseline(16 * 60));
        assert_eq!(b.rtt_baseline(16 * 60), Some(20.0));
        let (x, y) = (a.baseline(16 * 60), b.baseline(16 * 60));
        assert_eq!((x.rtt, x.levels.median[RTT]), (y.rtt, y.levels.median[RTT]));
    }

    #[test]
    fn levels_are_robust_to_a_few_bad_minutes() {
        let mut s = MinuteSums::default();
        // cpu 0.3 with a +-0.01 wobble per minute for 20 minutes, then 3 minutes at 0.9.
        for sec in 0..23 * 60 {
            let minute = sec / 60;
            let mut x = MISSING;
            x[0] = if minute >= 20 {
                0.9
            } else if minute % 2 == 0 {
                0.31
            } else {
                0.29
            };
            s.fold(sec, &x);
        }
        let l = s.levels(29 * 60);
        assert!((l.median[0] - 0.31).abs() < 1e-6 || (l.median[0] - 0.29).abs() < 1e-6);
        assert!((l.spread[0] - 1.4826 * 0.02).abs() < 1e-3 || l.spread[0] < 0.03);
        assert!(l.median[1].is_nan(), "no memory: unknown");
        // Too few minutes: unknown.
        assert!(s.levels(12 * 60).median[0].is_nan());
    }

    #[test]
    fn the_cache_follows_seeding() {
        let mut s = MinuteSums::default();
        s.refresh(16 * 60);
        assert!(s.baseline(16 * 60).rtt.is_nan());
        for minute in 0..10 {
            s.seed_rtt(minute, 60.0 * 20.0, 60);
        }
        assert_eq!(
            s.baseline(16 * 60).rtt,
            20.0,
            "seeding a used minute drops the cache"
        );
    }

    #[test]
    fn series_baseline_waits_for_data_to_leave_the_window() {
        let samples = vec![rtt(20.0); 2000];
        let b = series_baselines(0, &samples);
        // Slot i has folded seconds < i - 299; the baseline needs a full minute in
        // [M - 60, M - 6) minutes: first at minute 7 (seconds 0..59 folded by slot 420).
        let first = b.iter().position(|v| !v.rtt.is_nan()).unwrap();
        assert_eq!(first, 420);
        assert_eq!(b[1999].rtt, 20.0);
    }
}
