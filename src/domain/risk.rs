//! Risk: the probability that an appliance or path fails within the model's horizon.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Why a value is not a valid probability or risk score.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RiskError {
    /// Outside [0, 1], or NaN.
    #[error("{0} is not a probability in [0, 1]")]
    OutOfRange(f64),
    /// The interval does not contain the score.
    #[error("confidence interval [{low}, {high}] does not contain the score {value}")]
    BadInterval {
        /// Lower bound.
        low: f64,
        /// The score.
        value: f64,
        /// Upper bound.
        high: f64,
    },
}

/// Defines a newtype over `f64` that only holds values in [0, 1] (never NaN).
macro_rules! unit_interval {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, PartialOrd, serde::Serialize, Default)]
        #[serde(transparent)]
        pub struct $name(f64);

        impl $name {
            /// Validates `value`.
            pub fn new(value: f64) -> Result<Self, $crate::domain::RiskError> {
                if (0.0..=1.0).contains(&value) {
                    Ok(Self(value))
                } else {
                    Err($crate::domain::RiskError::OutOfRange(value))
                }
            }

            /// Clamps any value into [0, 1] (NaN becomes 0): for computed values that may stray
            /// by rounding or measurement jitter.
            pub fn saturating(value: f64) -> Self {
                if value.is_nan() {
                    Self(0.0)
                } else {
                    Self(value.clamp(0.0, 1.0))
                }
            }

            /// The value.
            pub fn get(self) -> f64 {
                self.0
            }
        }

        impl TryFrom<f64> for $name {
            type Error = $crate::domain::RiskError;
            fn try_from(v: f64) -> Result<Self, Self::Error> {
                Self::new(v)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Self::new(f64::deserialize(d)?).map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use unit_interval;

unit_interval!(
    /// A probability, e.g. of failure within the model's horizon.
    Probability
);

impl Probability {
    /// Zero risk.
    pub const ZERO: Self = Self(0.0);
    /// Certain failure.
    pub const ONE: Self = Self(1.0);
}

impl fmt::Display for Probability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}", self.0)
    }
}

/// A risk score with its confidence interval: `low <= value <= high`, all in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RiskScore {
    value: Probability,
    low: Probability,
    high: Probability,
}

impl RiskScore {
    /// A score with an interval; fails unless `low <= value <= high` and all are in [0, 1].
    pub fn new(value: f64, low: f64, high: f64) -> Result<Self, RiskError> {
        let (v, l, h) = (
            Probability::new(value)?,
            Probability::new(low)?,
            Probability::new(high)?,
        );
        if l > v || v > h {
            return Err(RiskError::BadInterval { low, value, high });
        }
        Ok(Self {
            value: v,
            low: l,
            high: h,
        })
    }

    /// A score known exactly (an operator advisory, or no model yet).
    pub fn exact(value: Probability) -> Self {
        Self {
            value,
            low: value,
            high: value,
        }
    }

    /// The point estimate.
    pub fn value(&self) -> Probability {
        self.value
    }

    /// Lower bound of the confidence interval.
    pub fn low(&self) -> Probability {
        self.low
    }

    /// Upper bound of the confidence interval.
    pub fn high(&self) -> Probability {
        self.high
    }
}

#[derive(Deserialize)]
struct RawRiskScore {
    value: f64,
    low: f64,
    high: f64,
}

impl<'de> Deserialize<'de> for RiskScore {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawRiskScore::deserialize(d)?;
        Self::new(raw.value, raw.low, raw.high).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probability_bounds() {
        assert!(Probability::new(0.0).is_ok());
        assert!(Probability::new(1.0).is_ok());
        for bad in [-0.01, 1.01, f64::NAN, f64::INFINITY] {
            assert!(Probability::new(bad).is_err(), "{bad}");
        }
        assert_eq!(Probability::saturating(1.5).get(), 1.0);
        assert_eq!(Probability::saturating(f64::NAN).get(), 0.0);
    }

    #[test]
    fn score_interval_must_contain_value() {
        assert!(RiskScore::new(0.5, 0.4, 0.6).is_ok());
        assert!(RiskScore::new(0.5, 0.6, 0.7).is_err());
        assert!(RiskScore::new(1.2, 0.4, 0.6).is_err());
        let json = r#"{"value":0.5,"low":0.6,"high":0.7}"#;
        assert!(serde_json::from_str::<RiskScore>(json).is_err());
        let ok: RiskScore = serde_json::from_str(r#"{"value":0.5,"low":0.4,"high":0.7}"#).unwrap();
        assert_eq!(ok.value().get(), 0.5);
    }
}
