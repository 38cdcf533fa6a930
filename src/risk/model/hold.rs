//! Alarm hold: a subject's score at second `t` is its highest per-second score over the last
//! `hold_s` seconds it was up.
//!
//! Per-second scores flicker around a threshold (a noisy second, a missing sample, a pause
//! between a precursor's episodes), and each flicker would start a new alarm episode and break
//! a sustained alarm. Holding the peak is the usual debounce of alarm systems; ours holds it
//! for a minute by default ([`DEFAULT_HOLD_S`]). The hold length is part of the model (chosen
//! at training, stored in the file) and is applied identically in `score`, `evaluate`,
//! training's validation and live scoring. A down second clears the hold.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::domain::RiskScore;

/// Hold a model is trained with unless told otherwise. A minute, not a few seconds: an
/// intermittent or oscillating precursor drops back to normal between its episodes, and a
/// short hold turns each episode into an alarm of its own, both missing the failure and
/// counting as false alarms (measured in `models/generalisation.md`, "The alarm hold"). The
/// cost is up to a minute longer on the shadow after a score falls.
pub const DEFAULT_HOLD_S: u32 = 60;
/// Longest hold a model may carry: a score must fall back within a minute once a subject is
/// healthy, so that steering returns clients to their primary soon after it recovers.
pub const MAX_HOLD_S: u32 = 60;

/// An alarm hold of 1 to [`MAX_HOLD_S`] seconds. Not 0: `train` never writes it, and whether a
/// file carrying 0 meant "no hold" or "one second" would be a guess; a hold of one second is
/// the score itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct HoldSeconds(u32);

impl HoldSeconds {
    /// [`DEFAULT_HOLD_S`].
    pub const DEFAULT: HoldSeconds = HoldSeconds(DEFAULT_HOLD_S);
    /// No hold: each second's score is its own.
    pub const NONE: HoldSeconds = HoldSeconds(1);

    /// The hold of `s` seconds, if it is in 1..=[`MAX_HOLD_S`].
    pub fn new(s: u32) -> Result<Self, HoldOutOfRange> {
        if (1..=MAX_HOLD_S).contains(&s) {
            Ok(HoldSeconds(s))
        } else {
            Err(HoldOutOfRange(s))
        }
    }

    /// In seconds.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for HoldSeconds {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl TryFrom<u32> for HoldSeconds {
    type Error = HoldOutOfRange;
    fn try_from(s: u32) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<HoldSeconds> for u32 {
    fn from(h: HoldSeconds) -> u32 {
        h.0
    }
}

/// The number of seconds, as [`std::str::FromStr`] reads it back.
impl std::fmt::Display for HoldSeconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for HoldSeconds {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let s: u32 = text
            .parse()
            .map_err(|_| format!("{text:?} is not a whole number of seconds"))?;
        Self::new(s).map_err(|e| e.to_string())
    }
}

/// A hold outside 1..=[`MAX_HOLD_S`] seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("hold {0} s is not in 1..={max} s", max = MAX_HOLD_S)]
pub struct HoldOutOfRange(pub u32);

/// Streaming hold over (second, score) pairs pushed in time order.
///
/// Live scoring keeps one per subject and pushes every second, so it keeps only the seconds
/// that can still be the peak (no later second scores as high): with a minute's hold a steady
/// or rising score keeps one entry, not sixty, and each push is amortised constant time.
#[derive(Debug, Clone, Default)]
pub struct Hold {
    /// Candidate peaks, oldest first, values strictly falling: the front is the window's
    /// highest score.
    peaks: VecDeque<(i64, RiskScore)>,
}

impl Hold {
    /// Adds the score of second `sec` and returns the held score (the one with the highest
    /// value among seconds `(sec - hold, sec]`; with a hold of 1 s, the score itself).
    /// Of several seconds with that value it returns the newest, whose interval is the most
    /// recent evidence for it; keeping only the newest also keeps one entry while a score
    /// repeats exactly (a saturated 1, say).
    pub fn push(&mut self, sec: i64, score: RiskScore, hold: HoldSeconds) -> RiskScore {
        let from = sec - i64::from(hold.get());
        while self.peaks.front().is_some_and(|(t, _)| *t <= from) {
            self.peaks.pop_front();
        }
        // An earlier second that scores no higher can never be the peak again.
        while self
            .peaks
            .back()
            .is_some_and(|(_, s)| s.value() <= score.value())
        {
            self.peaks.pop_back();
        }
        self.peaks.push_back((sec, score));
        self.peaks.front().map_or(score, |(_, peak)| *peak)
    }

    /// Forgets everything (the subject went down).
    pub fn clear(&mut self) {
        self.peaks.clear();
    }
}

/// Applies the hold to a series of values (down slots are left as they are and clear it).
pub fn hold_values(values: &[f64], down: &[bool], hold: HoldSeconds) -> Vec<f64> {
    let h = hold.get() as usize;
    let mut out = Vec::with_capacity(values.len());
    // Indices of the current run's last `h` up slots whose values no later slot beats, oldest
    // (and so highest) first: each slot enters and leaves once, so a minute's hold costs no
    // more than a second's over the millions of seconds training holds.
    let mut peaks: VecDeque<usize> = VecDeque::with_capacity(h);
    for (i, (&v, &d)) in values.iter().zip(down).enumerate() {
        if d {
            peaks.clear();
            out.push(v);
            continue;
        }
        while peaks.front().is_some_and(|&j| j + h <= i) {
            peaks.pop_front();
        }
        while peaks.back().is_some_and(|&j| values[j] <= v) {
            peaks.pop_back();
        }
        peaks.push_back(i);
        out.push(peaks.front().map_or(v, |&j| values[j]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Probability;

    fn s(v: f64) -> RiskScore {
        RiskScore::exact(Probability::saturating(v))
    }

    fn hold(s: u32) -> HoldSeconds {
        HoldSeconds::new(s).expect("a hold in range")
    }

    #[test]
    fn a_hold_is_one_second_to_a_minute() {
        for (s, ok) in [(0, false), (1, true), (60, true), (61, false)] {
            assert_eq!(HoldSeconds::new(s).is_ok(), ok, "hold {s}");
            assert_eq!(s.to_string().parse::<HoldSeconds>().is_ok(), ok, "hold {s}");
        }
        assert_eq!(
            HoldSeconds::new(0).unwrap_err().to_string(),
            "hold 0 s is not in 1..=60 s"
        );
        assert!("1.5".parse::<HoldSeconds>().is_err());
        assert_eq!(HoldSeconds::default(), hold(DEFAULT_HOLD_S));
        assert_eq!(serde_json::to_string(&hold(20)).unwrap(), "20");
        assert!(serde_json::from_str::<HoldSeconds>("0").is_err());
    }

    #[test]
    fn holds_the_peak_for_a_few_seconds() {
        let mut h = Hold::default();
        let got: Vec<f64> = [0.1, 0.9, 0.2, 0.2, 0.2, 0.2]
            .iter()
            .enumerate()
            .map(|(i, v)| h.push(i as i64, s(*v), hold(3)).value().get())
            .collect();
        assert_eq!(got, vec![0.1, 0.9, 0.9, 0.9, 0.2, 0.2]);
        let down = [false, false, false, true, false, false];
        let v = hold_values(&[0.1, 0.9, 0.2, 0.5, 0.2, 0.2], &down, hold(3));
        assert_eq!(v, vec![0.1, 0.9, 0.9, 0.5, 0.2, 0.2]);
        assert_eq!(
            hold_values(&[0.3, 0.1], &[false, false], HoldSeconds::NONE),
            vec![0.3, 0.1]
        );
    }

    /// The definition, slot by slot: the highest value among the run's last `h` up slots.
    fn hold_naive(values: &[f64], down: &[bool], h: usize) -> Vec<f64> {
        let mut since_down = 0;
        (0..values.len())
            .map(|i| {
                if down[i] {
                    since_down = 0;
                    return values[i];
                }
                since_down += 1;
                let from = i + 1 - h.min(since_down);
                values[from..=i]
                    .iter()
                    .copied()
                    .fold(f64::NEG_INFINITY, f64::max)
            })
            .collect()
    }

    #[test]
    fn batch_hold_matches_its_definition() {
        // Falling runs (the deque grows), rising runs (it empties), ties and down slots.
        let vals: Vec<f64> = (0..400)
            .map(|i| match (i / 40) % 3 {
                0 => 1.0 - (i % 40) as f64 / 40.0,
                1 => (i % 40) as f64 / 40.0,
                _ => ((i * 37) % 11) as f64 / 10.0,
            })
            .collect();
        let down: Vec<bool> = (0..400).map(|i| i % 97 == 13 || i == 14).collect();
        for h in [1, 2, 5, 60] {
            assert_eq!(
                hold_values(&vals, &down, hold(h)),
                hold_naive(&vals, &down, h as usize),
                "hold {h}"
            );
        }
    }

    /// The definition, scanning the whole window: the highest value, the newest of a tie.
    fn push_naive(
        window: &mut VecDeque<(i64, RiskScore)>,
        sec: i64,
        score: RiskScore,
        hold_s: u32,
    ) -> RiskScore {
        let from = sec - i64::from(hold_s);
        while window.front().is_some_and(|(t, _)| *t <= from) {
            window.pop_front();
        }
        window.push_back((sec, score));
        window.iter().map(|(_, s)| *s).fold(
            score,
            |best, s| {
                if s.value() >= best.value() { s } else { best }
            },
        )
    }

    #[test]
    fn streaming_hold_matches_its_definition() {
        // Few distinct values, so ties are common; each second's interval is its own, so the
        // returned score shows which of the tied seconds was chosen. Gaps in the seconds (no
        // telemetry) let entries expire by time rather than by count.
        for hold_s in [1, 3, 60] {
            let (mut fast, mut naive) = (Hold::default(), VecDeque::new());
            let mut sec = 0i64;
            for i in 0..2000i64 {
                sec += if i % 53 == 7 { 9 } else { 1 };
                let v = ((i * 7919) % 5) as f64 / 5.0 + 0.1;
                let low = (v - 0.05 - (i % 7) as f64 / 100.0).max(0.0);
                let score = RiskScore::new(v, low, (v + 0.05).min(1.0)).expect("valid score");
                assert_eq!(
                    fast.push(sec, score, hold(hold_s)),
                    push_naive(&mut naive, sec, score, hold_s),
                    "hold {hold_s}, second {sec}"
                );
            }
        }
        // What a minute's hold keeps per subject: one entry while the score is steady or
        // rising, at most the window while it falls.
        let (mut steady, mut rising, mut falling) =
            (Hold::default(), Hold::default(), Hold::default());
        for sec in 0..600 {
            steady.push(sec, s(0.5), hold(60));
            rising.push(sec, s(sec as f64 / 600.0), hold(60));
            falling.push(sec, s(1.0 - sec as f64 / 600.0), hold(60));
        }
        assert_eq!(
            (steady.peaks.len(), rising.peaks.len(), falling.peaks.len()),
            (1, 1, 60)
        );
    }

    #[test]
    fn streaming_equals_batch() {
        let vals: Vec<f64> = (0..50).map(|i| ((i * 37) % 11) as f64 / 10.0).collect();
        let down: Vec<bool> = (0..50).map(|i| i % 17 == 5).collect();
        let batch = hold_values(&vals, &down, hold(4));
        let mut h = Hold::default();
        for i in 0..50 {
            if down[i] {
                h.clear();
                continue;
            }
            assert_eq!(
                h.push(i as i64, s(vals[i]), hold(4)).value().get(),
                batch[i],
                "slot {i}"
            );
        }
    }
}
