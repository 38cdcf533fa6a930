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
    /// The subject was heard from recently, so this row also confirms the score; otherwise the
    /// stored confirmation keeps its age (a silent subject's score expires however it moves).
    pub confirmed: bool,
}

/// An appliance's network metrics in one second: the mean over every probe to it.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkSecond<'a> {
    /// The appliance (probe destination).
    pub appliance: &'a str,
    /// Region of the first probe seen (the measuring side's).
    pub region: &'a str,
    /// Unix second.
    pub sec: i64,
    /// Mean rtt, NaN when no probe had one.
    pub rtt_ms: f64,
    /// Mean jitter, NaN when no probe had one.
    pub jitter_ms: f64,
    /// Mean loss.
    pub loss: f64,
}

/// Averages probes to appliances per (appliance, second), in that order: the CSV's network
/// columns, as export and the live scorer both read them.
pub fn network_seconds(probes: &[ProbeSecond]) -> Vec<NetworkSecond<'_>> {
    #[derive(Default)]
    struct Sums {
        rtt: f64,
        n_rtt: f64,
        jitter: f64,
        n_jitter: f64,
        loss: f64,
        n: f64,
    }
    let mut acc: std::collections::BTreeMap<(&str, i64), (&str, Sums)> = Default::default();
    for p in probes.iter().filter(|p| p.dst_kind == "appliance") {
        let (_, e) = acc
            .entry((p.dst.as_str(), p.sec))
            .or_insert_with(|| (p.region.as_str(), Sums::default()));
        if !p.rtt_ms.is_nan() {
            e.rtt += p.rtt_ms;
            e.n_rtt += 1.0;
        }
        if !p.jitter_ms.is_nan() {
            e.jitter += p.jitter_ms;
            e.n_jitter += 1.0;
        }
        e.loss += p.loss;
        e.n += 1.0;
    }
    let mean = |s: f64, n: f64| if n > 0.0 { s / n } else { f64::NAN };
    acc.into_iter()
        .map(|((appliance, sec), (region, e))| NetworkSecond {
            appliance,
            region,
            sec,
            rtt_ms: mean(e.rtt, e.n_rtt),
            jitter_ms: mean(e.jitter, e.n_jitter),
            loss: mean(e.loss, e.n),
        })
        .collect()
}

/// Stored rtt of one subject in one minute: the warm start of the live scorer's baseline.
#[derive(Debug, Clone, PartialEq)]
pub struct RttMinute {
    /// Region of the measuring side.
    pub region: String,
    /// Appliance or path.
    pub path: bool,
    /// Appliance id, or `src>dst` for a path.
    pub subject: String,
    /// Unix minute (seconds / 60).
    pub minute: i64,
    /// Sum of rtt over the minute's probes.
    pub sum: f64,
    /// Number of probes with an rtt.
    pub count: u32,
}
