//! Plain records exchanged between the risk core and the database shell: per-second health
//! and probes, failure events, and scores to store. No I/O here.

use crate::domain::RiskScore;

/// Health of one appliance in one second.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSecond {
    /// Owning region.
    pub region: String,
    /// The appliance.
    pub appliance: String,
    /// Unix second.
    pub sec: i64,
    /// cpu, mem, bw_util, sessions, handshake_failures.
    pub values: [f64; 5],
}

/// Probes of one path in one second.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeSecond {
    /// Region of the measuring appliance.
    pub region: String,
    /// Measuring appliance.
    pub src: String,
    /// `appliance` or `client`.
    pub dst_kind: String,
    /// Destination id.
    pub dst: String,
    /// Unix second.
    pub sec: i64,
    /// Mean rtt (NaN when every probe was lost).
    pub rtt_ms: f64,
    /// Mean jitter (NaN when unknown).
    pub jitter_ms: f64,
    /// Mean loss.
    pub loss: f64,
}

/// A failure event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureEvent {
    /// Owning region.
    pub region: String,
    /// The appliance.
    pub appliance: String,
    /// First down second.
    pub started: i64,
    /// First up second after it, if it has ended.
    pub ended: Option<i64>,
    /// Kind.
    pub kind: String,
    /// Whether it had precursors, if known.
    pub has_precursor: Option<bool>,
}

/// A score to store.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreRow {
    /// Region of the subject.
    pub region: String,
    /// `appliance` or `path`.
    pub subject_kind: &'static str,
    /// Appliance id or `src>dst`.
    pub subject: String,
    /// The score.
    pub score: RiskScore,
}

