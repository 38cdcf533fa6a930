//! Per-appliance series: telemetry rows laid out one slot per second, with failures found.
//!
//! A series is a contiguous stretch of one appliance's data. Gaps of up to [`MAX_GAP_S`] seconds
//! are filled with missing values (an absent second keeps the previous row's `down` state); a
//! longer gap starts a new series, so a file with a stray timestamp cannot make us allocate
//! years of seconds. While an appliance is down its metric values are blanked: features only
//! ever see telemetry of a working appliance, in files and in Postgres alike.

use crate::risk::data::failures::FailureLabels;
use crate::risk::data::telemetry::Telemetry;
use crate::risk::features::baseline::{Baseline, series_baselines};
use crate::risk::features::window::{MISSING, Sample, Window};
use crate::risk::features::{self, Features};

/// Longest gap filled inside one series (seconds); also the feature window.
pub const MAX_GAP_S: i64 = 300;

/// A failure inside a series, by slot index.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureSpan {
    /// First down slot.
    pub start: usize,
    /// First up slot after it (`len` when the series ends down).
    pub end: usize,
    /// Kind from the labels file, when known.
    pub kind: Option<String>,
    /// Whether it had precursors, when known.
    pub precursor: Option<bool>,
    /// How long its precursor lasted (seconds), when known.
    pub precursor_s: Option<u32>,
}

/// A contiguous stretch of one appliance's telemetry.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Index into [`Telemetry::appliances`].
    pub appliance: u32,
    /// Unix second of slot 0.
    pub start: i64,
    /// Metric values per slot; blanked while down.
    pub samples: Vec<Sample>,
    /// Whether the appliance is down in each slot.
    pub down: Vec<bool>,
    /// Failures (0 -> 1 transitions of `down`) in time order.
    pub failures: Vec<FailureSpan>,
}

impl Series {
    /// Number of slots.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether the series has no slots.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Unix second of slot `i`.
    pub fn ts(&self, i: usize) -> i64 {
        self.start + i as i64
    }

    /// Slot `i`'s label: a failure starts within `(i, i + horizon]`.
    pub fn labels(&self, horizon: usize) -> Vec<bool> {
        let mut out = vec![false; self.len()];
        for f in &self.failures {
            let from = f.start.saturating_sub(horizon);
            for l in &mut out[from..f.start] {
                *l = true;
            }
        }
        out
    }
}

/// What the features of a series need besides its window, computed once per series.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesContext {
    /// Failures as (first down slot, first up slot after) pairs.
    pub failures: Vec<(usize, usize)>,
    /// Baseline per slot.
    pub baselines: Vec<Baseline>,
}

impl Series {
    /// The context for [`Series::features_at`].
    pub fn context(&self) -> SeriesContext {
        SeriesContext {
            failures: self.failures.iter().map(|f| (f.start, f.end)).collect(),
            baselines: series_baselines(self.start, &self.samples),
        }
    }

    /// The feature vector of slot `i`, exactly as live scoring computes it at that second.
    pub fn features_at(&self, ctx: &SeriesContext, i: usize) -> Features {
        features::compute(
            &Window::ending_at(&self.samples, i),
            features::history_at(i, &ctx.failures),
            &ctx.baselines[i],
        )
    }
}

/// Splits telemetry (sorted by appliance, then time) into series and finds failures; `labels`
/// adds kinds where it has them.
pub fn build(t: &Telemetry, labels: Option<&FailureLabels>) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::new();
    let mut current: Option<Series> = None;
    let mut last_ts = 0i64;
    for row in &t.rows {
        let continues = current
            .as_ref()
            .is_some_and(|s| s.appliance == row.appliance && row.ts - last_ts <= MAX_GAP_S);
        if !continues {
            if let Some(s) = current.take() {
                out.push(finish(s, t, labels));
            }
            current = Some(Series {
                appliance: row.appliance,
                start: row.ts,
                samples: Vec::new(),
                down: Vec::new(),
                failures: Vec::new(),
            });
        }
        let Some(s) = current.as_mut() else { continue };
        // Fill the gap since the previous row: missing values, previous down state.
        let prev_down = s.down.last().copied().unwrap_or(row.down);
        while s.ts(s.len()) < row.ts {
            s.samples.push(MISSING);
            s.down.push(prev_down);
        }
        let sample: Sample = if row.down {
            MISSING
        } else {
            row.values.map(|v| v as f32)
        };
        s.samples.push(sample);
        s.down.push(row.down);
        last_ts = row.ts;
    }
    if let Some(s) = current.take() {
        out.push(finish(s, t, labels));
    }
    out
}

fn finish(mut s: Series, t: &Telemetry, labels: Option<&FailureLabels>) -> Series {
    let id = &t.appliances[s.appliance as usize].id;
    let mut i = 1;
    while i < s.len() {
        if s.down[i] && !s.down[i - 1] {
            let start = i;
            while i < s.len() && s.down[i] {
                i += 1;
            }
            let label = labels.and_then(|l| l.get(&(id.clone(), s.ts(start))));
            s.failures.push(FailureSpan {
                start,
                end: i,
                kind: label.map(|l| l.kind.clone()),
                precursor: label.and_then(|l| l.precursor),
                precursor_s: label.and_then(|l| l.precursor_s),
            });
        } else {
            i += 1;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::risk::data::telemetry::read_csv;

    #[test]
    fn gaps_failures_and_labels() {
        let text = "ts,appliance,region,cpu,mem,bw_util,sessions,handshake_failures,rtt_ms,jitter_ms,loss,down\n\
            100,a,eu,0.5,,,,,,,,0\n\
            103,a,eu,0.5,,,,,,,,0\n\
            104,a,eu,,,,,,,,1,1\n\
            106,a,eu,0.5,,,,,,,,0\n\
            1000,a,eu,0.5,,,,,,,,1\n";
        let t = read_csv(text.as_bytes()).unwrap();
        let s = build(&t, None);
        assert_eq!(s.len(), 2, "a gap over 300 s starts a new series");
        assert_eq!(s[0].len(), 7);
        assert!(s[0].samples[1][0].is_nan());
        assert_eq!(
            s[0].down,
            vec![false, false, false, false, true, true, false]
        );
        assert_eq!(
            s[0].failures,
            vec![FailureSpan {
                start: 4,
                end: 6,
                kind: None,
                precursor: None,
                precursor_s: None
            }]
        );
        assert!(
            s[1].failures.is_empty(),
            "a series starting down has no observed failure"
        );
        assert_eq!(
            s[0].labels(2),
            vec![false, false, true, true, false, false, false]
        );
    }
}
