//! The novelty term: how rare the subject's current state is compared with normal operation,
//! whatever the signal, learnt without failure labels.
//!
//! A supervised model learns the shapes of the failures it was shown; a failure that degrades
//! another signal, or the same one in another way, looks like nothing it knows. The novelty
//! term asks a different question: how often does this signal stray this far from its own
//! level (its 60 s z-score, [`crate::risk::features::SIGNAL_Z60`]) in normal operation? Each signal
//! gets its own tail table, fitted on seconds far from any failure, so a signal whose harmless
//! events are large (memory bumps) needs a larger excursion to count than one that is normally
//! flat (loss). The surprise is `-log10` of that exceedance rate, taken from the table and
//! extrapolated beyond its last knot with an exponential tail; the subject's surprise is the
//! largest over its signals, turned into a probability by a logistic calibration fitted on the
//! validation period. The model's score is the larger of the supervised and novelty
//! probabilities, so the novelty term can raise a score but never lower one.

use serde::{Deserialize, Serialize};

use crate::risk::features::{FEATURE_NAMES, Features, SIGNAL_Z60};
use crate::risk::model::{FeatureSet, sigmoid};

/// Exceedance rates of the knots: 10^-1 to 10^-4 in quarter decades.
const KNOT_DECADES: std::ops::RangeInclusive<u32> = 4..=16;
/// Fewest normal seconds a table is fitted on: the last knot (10^-4) needs a few above it.
pub const MIN_ROWS: usize = 50_000;
/// Largest surprise reported (in decades): beyond, "never seen" is all there is to say.
const MAX_SURPRISE: f64 = 1_000.0;

/// One signal's tail: the value exceeded at each knot's rate in normal operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tail {
    /// Values at exceedance rates 10^-(k/4), k in 4..=16: nondecreasing.
    pub knots: Vec<f64>,
    /// Mean excess over the last knot: the exponential tail's scale beyond it.
    pub scale: f64,
}

impl Tail {
    /// Fits a tail to normal values (reordered).
    pub fn fit(values: &mut [f64]) -> Option<Tail> {
        if values.len() < MIN_ROWS || values.iter().any(|v| !v.is_finite()) {
            return None;
        }
        values.sort_unstable_by(f64::total_cmp);
        let n = values.len();
        let at = |rate: f64| values[(((1.0 - rate) * n as f64) as usize).min(n - 1)];
        let knots: Vec<f64> = KNOT_DECADES
            .map(|k| at(10f64.powf(-f64::from(k) / 4.0)))
            .collect();
        let last = *knots.last()?;
        let above: Vec<f64> = values.iter().filter(|v| **v > last).copied().collect();
        let scale = if above.is_empty() {
            0.0
        } else {
            above.iter().map(|v| v - last).sum::<f64>() / above.len() as f64
        };
        // A tail that never strays (a signal always at its level) still needs a positive
        // scale: one floor of its own knots' spread, or 1 spread.
        let spread = last - knots[0];
        Some(Tail {
            knots,
            scale: scale.max(spread / 10.0).max(1.0),
        })
    }

    /// `-log10` of the rate at which normal operation reaches `x`: 0 up to the first knot.
    pub fn surprise(&self, x: f64) -> f64 {
        let decade = |i: usize| f64::from(KNOT_DECADES.start() + i as u32) / 4.0;
        let k = &self.knots;
        if k.is_empty() || x.is_nan() || x <= k[0] {
            return 0.0;
        }
        // The last knot below x: k[i] < x <= k[i + 1], or beyond the table.
        let i = k.partition_point(|v| *v < x) - 1;
        let last = k.len() - 1;
        if i == last {
            let beyond = (x - k[last]) / self.scale / std::f64::consts::LN_10;
            return (decade(last) + beyond).min(MAX_SURPRISE);
        }
        let (a, b) = (k[i], k[i + 1]);
        decade(i) + (x - a) / (b - a) * (decade(i + 1) - decade(i))
    }

    fn is_valid(&self) -> bool {
        self.knots.len() == KNOT_DECADES.count()
            && self.knots.iter().all(|v| v.is_finite())
            && self.knots.windows(2).all(|w| w[0] <= w[1])
            && self.scale.is_finite()
            && self.scale > 0.0
    }
}

/// The novelty term of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Novelty {
    /// The per-signal z-scores it reads.
    pub features: FeatureSet,
    /// One tail per feature.
    pub tails: Vec<Tail>,
    /// Rows the tails were fitted on.
    pub rows: u64,
    /// `p = sigmoid(a * surprise + b)`.
    pub a: f64,
    /// See `a`.
    pub b: f64,
}

impl Novelty {
    /// The features a novelty term reads: every signal's 60 s z-score.
    pub fn signal_features() -> FeatureSet {
        FeatureSet::parse(&FEATURE_NAMES[SIGNAL_Z60].join(","))
            .expect("the per-signal z-scores are features")
    }

    /// Fits the tails on normal rows: `columns[j]` holds feature j of
    /// [`Novelty::signal_features`] for every row. The calibration is left neutral (`a` = 1,
    /// `b` = 0) for the caller to fit with [`Novelty::calibrated`]. `None` with too few rows.
    pub fn fit_tails(mut columns: Vec<Vec<f64>>) -> Option<Novelty> {
        let features = Self::signal_features();
        if columns.len() != features.len() {
            return None;
        }
        let rows = columns.first().map_or(0, Vec::len) as u64;
        let tails = columns
            .iter_mut()
            .map(|c| Tail::fit(c))
            .collect::<Option<Vec<_>>>()?;
        Some(Novelty {
            features,
            tails,
            rows,
            a: 1.0,
            b: 0.0,
        })
    }

    /// The same tails with a calibration.
    pub fn calibrated(self, a: f64, b: f64) -> Novelty {
        Novelty { a, b, ..self }
    }

    /// The largest surprise over the signals.
    pub fn surprise(&self, x: &Features) -> f64 {
        let mut v = [0f64; 16];
        let v = &mut v[..self.features.len().min(16)];
        self.features.gather(x, v);
        v.iter()
            .zip(&self.tails)
            .map(|(x, t)| t.surprise(*x))
            .fold(0.0, f64::max)
    }

    /// The calibrated probability of a surprise.
    pub fn probability_of(&self, surprise: f64) -> f64 {
        sigmoid(self.a * surprise + self.b)
    }

    /// The calibrated probability of a feature vector.
    pub fn probability(&self, x: &Features) -> f64 {
        self.probability_of(self.surprise(x))
    }

    /// Checks a loaded term: one valid tail per feature (at most 16), a calibration that
    /// rises with surprise.
    pub fn validate(&self) -> Result<(), String> {
        if self.features.len() != self.tails.len() || self.tails.len() > 16 {
            return Err(format!(
                "novelty: {} features but {} tails (at most 16)",
                self.features.len(),
                self.tails.len()
            ));
        }
        if let Some(i) = self.tails.iter().position(|t| !t.is_valid()) {
            return Err(format!(
                "novelty: tail {i} needs {} finite nondecreasing knots and a positive scale",
                KNOT_DECADES.count()
            ));
        }
        if !(self.a.is_finite() && self.b.is_finite() && self.a > 0.0) {
            return Err("novelty: calibration must be finite and rise with surprise".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exponential(n: usize) -> Vec<f64> {
        // Deterministic quantiles of Exp(1): value i/n of the distribution.
        (0..n)
            .map(|i| -(1.0 - (i as f64 + 0.5) / n as f64).ln())
            .collect()
    }

    #[test]
    fn surprise_is_the_decades_of_rarity() {
        let mut v = exponential(200_000);
        let t = Tail::fit(&mut v).unwrap();
        // Exp(1) is exceeded at rate e^-x: x = ln(10) * d is d decades.
        for d in [1.2, 2.0, 3.0, 3.9] {
            let x = std::f64::consts::LN_10 * d;
            assert!((t.surprise(x) - d).abs() < 0.1, "{d}: {}", t.surprise(x));
        }
        // Beyond the last knot, the exponential tail carries on (scale about 1).
        let x = std::f64::consts::LN_10 * 7.0;
        assert!((t.surprise(x) - 7.0).abs() < 0.3, "{}", t.surprise(x));
        assert_eq!(t.surprise(0.01), 0.0, "below the first knot");
        assert!(t.is_valid());
    }

    #[test]
    fn a_flat_signal_gets_a_positive_scale_and_a_monotone_surprise() {
        let mut v = vec![0.0; MIN_ROWS];
        let t = Tail::fit(&mut v).unwrap();
        assert!(t.scale > 0.0);
        assert_eq!(t.surprise(0.0), 0.0, "at its usual value: no surprise");
        assert!(t.surprise(0.5) > 4.0, "above every knot");
        assert!(t.surprise(10.0) > t.surprise(5.0));
        assert!(
            Tail::fit(&mut vec![0.0; MIN_ROWS - 1]).is_none(),
            "too few rows"
        );
        assert!(Tail::fit(&mut vec![f64::NAN; MIN_ROWS]).is_none());
    }

    #[test]
    fn the_largest_surprise_counts_and_a_bad_term_is_refused() {
        let features = Novelty::signal_features();
        let mut v = exponential(MIN_ROWS);
        let tail = Tail::fit(&mut v).unwrap();
        let mut n = Novelty {
            tails: vec![tail; features.len()],
            features,
            rows: MIN_ROWS as u64,
            a: 1.0,
            b: -5.0,
        };
        assert!(n.validate().is_ok());
        let mut x = [0.0; crate::risk::features::N_FEATURES];
        let quiet = n.probability(&x);
        x[SIGNAL_Z60.start + 3] = 20.0;
        assert!(n.surprise(&x) > 8.0);
        assert!(n.probability(&x) > quiet);
        n.a = -1.0;
        assert!(n.validate().is_err());
        n.a = 1.0;
        n.tails.pop();
        assert!(n.validate().is_err());
    }
}
