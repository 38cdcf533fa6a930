//! `[risk]` of the steering-server file: live risk scoring.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Problems;
use super::fields::Duration;

/// `[risk]`: which model scores, how often, and how much a score must move to be written.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RiskSection {
    /// Run the live scorer in `serve`.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// A model file (relative paths from the working directory); absent: the default model
    /// shipped in `models/default.json`, built into the binary.
    #[serde(default)]
    pub model: Option<PathBuf>,
    /// Time between two scoring rounds.
    #[serde(default = "default_interval")]
    pub interval: Duration,
    /// A score is written to `risk_scores` only when it moved by more than this since it was
    /// last written: bounds writes (and the notifications they trigger).
    #[serde(default = "default_epsilon")]
    pub epsilon: f64,
    /// Most rows written per round (largest moves first; the rest wait for the next round).
    #[serde(default = "default_max_writes")]
    pub max_writes_per_round: usize,
    /// Threads scoring in parallel (outside the async runtime's workers).
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// A stored appliance score not confirmed by a scorer for this long counts as unknown-high
    /// in steering (a silent appliance, or a dead scorer, never keeps clients on last-known-low);
    /// a path score that old is left out (`steering::PathScores`).
    /// Absent: 3 × `interval`, at least 3 s. See [`RiskSection::max_score_age`].
    #[serde(default)]
    pub max_score_age: Option<Duration>,
}

fn default_enabled() -> bool {
    true
}
fn default_interval() -> Duration {
    Duration(std::time::Duration::from_secs(1))
}
fn default_epsilon() -> f64 {
    0.02
}
fn default_max_writes() -> usize {
    1000
}
fn default_threads() -> usize {
    2
}

impl Default for RiskSection {
    fn default() -> Self {
        Self {
            enabled: default_enabled(),
            model: None,
            interval: default_interval(),
            epsilon: default_epsilon(),
            max_writes_per_round: default_max_writes(),
            threads: default_threads(),
            max_score_age: None,
        }
    }
}

/// The default score age is this many scoring intervals: a scorer confirms every score at
/// least every quarter of it, so one late or failed round never expires anything.
const AGE_INTERVALS: u32 = 3;
/// ... and at least this, so the 1 s freshness check and replication lag fit in it. (10 s was
/// tried, to ride out stalled database commits under load: a silent path's score then decays
/// for 10 s on its emptying window and a client moved for a bad path came back.)
const MIN_DEFAULT_AGE: std::time::Duration = std::time::Duration::from_secs(3);

impl RiskSection {
    /// Age after which a stored score counts as unknown-high: `max_score_age` or its default.
    pub fn max_score_age(&self) -> std::time::Duration {
        self.max_score_age
            .map(|d| d.0)
            .unwrap_or_else(|| (self.interval.0 * AGE_INTERVALS).max(MIN_DEFAULT_AGE))
    }

    /// How old a confirmation may get before the scorer renews it: a quarter of the maximum
    /// age (with the default age, every round). The rest is slack for late or failed rounds,
    /// replication lag and the freshness check's own period.
    pub fn confirm_after(&self) -> std::time::Duration {
        self.max_score_age() / 4
    }

    /// Records every problem of the section under `risk.`.
    pub fn validate(&self, problems: &mut Problems) {
        let iv = self.interval.0;
        if iv < std::time::Duration::from_millis(100) || iv > std::time::Duration::from_secs(60) {
            problems.push("risk.interval", "must be between 100ms and 60s");
        }
        if !(self.epsilon > 0.0 && self.epsilon < 1.0) {
            problems.push("risk.epsilon", format!("{} is not in (0, 1)", self.epsilon));
        }
        if !(1..=100_000).contains(&self.max_writes_per_round) {
            problems.push("risk.max_writes_per_round", "must be between 1 and 100000");
        }
        if !(1..=64).contains(&self.threads) {
            problems.push("risk.threads", "must be between 1 and 64");
        }
        if let Some(age) = self.max_score_age {
            if age.0 < iv * 2 || age.0 < std::time::Duration::from_secs(2) {
                problems.push(
                    "risk.max_score_age",
                    "must be at least 2 × risk.interval and at least 2s (scores are confirmed once per round)",
                );
            } else if age.0 > std::time::Duration::from_secs(3600) {
                problems.push("risk.max_score_age", "must be at most 1h");
            }
        }
        if self
            .model
            .as_ref()
            .is_some_and(|m| m.as_os_str().is_empty())
        {
            problems.push("risk.model", "must name a model file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SteeringConfig, parse};

    const BASE: &str =
        "[dns]\nlisten = [\"127.0.0.1:5300\"]\n[[dns.zones]]\nname = \"vpn.example.net\"\n";

    #[test]
    fn defaults_and_errors_name_the_key() {
        let file = std::path::Path::new("s.toml");
        let cfg: SteeringConfig = parse(file, BASE).unwrap();
        assert_eq!(cfg.risk, RiskSection::default());
        let errs =
            parse::<SteeringConfig>(file, &format!("{BASE}[risk]\nepsilon = 0\nthreads = 0\n"))
                .unwrap_err();
        let errs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            errs,
            [
                "s.toml: risk.epsilon: 0 is not in (0, 1)",
                "s.toml: risk.threads: must be between 1 and 64"
            ]
        );
        assert_eq!(cfg.risk.max_score_age(), std::time::Duration::from_secs(3));
        let slow: SteeringConfig =
            parse(file, &format!("{BASE}[risk]\ninterval = \"10s\"\n")).unwrap();
        assert_eq!(
            slow.risk.max_score_age(),
            std::time::Duration::from_secs(30)
        );
        let set: SteeringConfig =
            parse(file, &format!("{BASE}[risk]\nmax_score_age = \"9s\"\n")).unwrap();
        assert_eq!(set.risk.max_score_age(), std::time::Duration::from_secs(9));
        assert_eq!(
            set.risk.confirm_after(),
            std::time::Duration::from_millis(2250)
        );
        for (bad, why) in [
            (
                "interval = \"5s\"\nmax_score_age = \"9s\"",
                "at least 2 × risk.interval",
            ),
            ("max_score_age = \"1s\"", "at least 2 × risk.interval"),
            ("max_score_age = \"2h\"", "at most 1h"),
        ] {
            let errs =
                parse::<SteeringConfig>(file, &format!("{BASE}[risk]\n{bad}\n")).unwrap_err();
            assert!(
                errs[0]
                    .to_string()
                    .starts_with("s.toml: risk.max_score_age: ")
                    && errs[0].to_string().contains(why),
                "{bad}: {errs:?}"
            );
        }
        let errs = parse::<SteeringConfig>(file, &format!("{BASE}[risk]\nintervall = \"1s\"\n"))
            .unwrap_err();
        assert!(
            errs[0].to_string().contains("unknown field `intervall`"),
            "{errs:?}"
        );
    }
}
