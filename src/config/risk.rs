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
        }
    }
}

impl RiskSection {
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
        let errs = parse::<SteeringConfig>(file, &format!("{BASE}[risk]\nintervall = \"1s\"\n"))
            .unwrap_err();
        assert!(
            errs[0].to_string().contains("unknown field `intervall`"),
            "{errs:?}"
        );
    }
}
