//! The evaluation metrics, defined exactly (issue 5) and computed from per-second scores.
//!
//! Definitions, for one operating threshold `thr`; only seconds in which the appliance is up
//! count, and a second *alarms* when its score is strictly above `thr`:
//! - **lead time** of a failure starting at second `f`: the length of the run of consecutive
//!   alarming up seconds that ends at `f - 1` (0 if `f - 1` does not alarm). A failure has a
//!   *sustained alarm of at least L s lead* when its lead time is `>= L`: the score was above the
//!   threshold from `f - L` on without dropping below it until the failure.
//! - **recall@L**: the share of failures whose lead time is at least L seconds.
//! - **median lead**: the median lead time over all failures (missed failures count as 0).
//! - **alarm episode**: a maximal run of consecutive alarming up seconds. It is a *false alarm*
//!   when no failure starts within [`FALSE_ALARM_WINDOW_S`] seconds after its last second
//!   (an episode running into a failure is followed by it at once). **False alarms per
//!   appliance-day** = false alarms / (up seconds / 86400).
//! - **ROC AUC** and **PR AUC** (average precision) of the per-second scores against the label
//!   "a failure starts within the horizon", over up seconds. Ties count half in ROC AUC and as
//!   one step in average precision.
//! - Per group (failures with precursors, without): recall and lead over that group's failures;
//!   AUCs with that group's positive seconds against all negative seconds; false alarms are a
//!   property of the alarms, so every group reports the overall rate.
//!
//! The **baseline** is what a health-check product does: alarm when loss exceeds
//! [`BASELINE_LOSS`] or rtt exceeds [`BASELINE_RTT_MS`] for 3 consecutive seconds.

pub mod generalisation;

use serde::{Deserialize, Serialize};

use crate::risk::data::series::{FailureSpan, Series};
use crate::risk::data::telemetry::Metric;
use crate::risk::features::window::Sample;

/// An alarm episode not followed by a failure within this many seconds is a false alarm.
pub const FALSE_ALARM_WINDOW_S: usize = 300;
/// Baseline health check: loss above this...
pub const BASELINE_LOSS: f64 = 0.05;
/// ... or rtt above this (ms) ...
pub const BASELINE_RTT_MS: f64 = 200.0;
/// ... for this many consecutive seconds.
pub const BASELINE_SECONDS: usize = 3;
const SECONDS_PER_DAY: f64 = 86_400.0;

/// One series with its per-second scores.
#[derive(Debug, Clone, Copy)]
pub struct Scored<'a> {
    /// Score per slot (ignored where down).
    pub scores: &'a [f64],
    /// Whether each slot is down.
    pub down: &'a [bool],
    /// Failures in time order.
    pub failures: &'a [FailureSpan],
}

impl<'a> Scored<'a> {
    /// Pairs a series with its scores.
    pub fn new(series: &'a Series, scores: &'a [f64]) -> Self {
        Self {
            scores,
            down: &series.down,
            failures: &series.failures,
        }
    }
}

/// Which failures a metric is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// Every failure.
    All,
    /// Failures labelled as having precursors.
    Precursor,
    /// Failures labelled as having none.
    Sudden,
}

impl Group {
    fn contains(self, precursor: Option<bool>) -> bool {
        match self {
            Group::All => true,
            Group::Precursor => precursor == Some(true),
            Group::Sudden => precursor == Some(false),
        }
    }
}

/// The metrics of one group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Share of failures with a sustained alarm of at least 10 s lead.
    pub recall_at_10s: Option<f64>,
    /// Share of failures with a sustained alarm of at least 30 s lead.
    pub recall_at_30s: Option<f64>,
    /// Median lead time in seconds (missed failures count as 0).
    pub median_lead_s: Option<f64>,
    /// False alarm episodes per appliance-day of up time.
    pub false_alarms_per_appliance_day: Option<f64>,
    /// ROC AUC of per-second scores against the horizon label.
    pub roc_auc: Option<f64>,
    /// Average precision of per-second scores against the horizon label.
    pub pr_auc: Option<f64>,
    /// Failures in the group.
    pub failures: usize,
}

/// Metrics overall and per group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupedMetrics {
    /// Every failure.
    #[serde(flatten)]
    pub all: Metrics,
    /// Failures with precursors.
    pub precursor: Metrics,
    /// Failures without precursors.
    pub sudden: Metrics,
}

/// A full evaluation: the model at its threshold and the baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The model's metrics.
    #[serde(flatten)]
    pub model: GroupedMetrics,
    /// The health-check baseline's metrics.
    pub baseline: GroupedMetrics,
    /// Operating threshold used.
    pub threshold: f64,
    /// Label horizon in seconds.
    pub horizon_s: usize,
    /// Appliance-days of up time evaluated.
    pub appliance_days: f64,
    /// Failures whose kind is unknown (no labels file): counted only overall.
    pub unlabelled_failures: usize,
    /// The model's recall and lead per failure kind (when kinds are labelled).
    #[serde(default)]
    pub by_kind: Vec<KindMetrics>,
    /// The model's recall and lead per length of precursor (when labelled): a precursor
    /// shorter than the lead asked for cannot be caught in time, whatever the model.
    #[serde(default)]
    pub by_precursor_length: Vec<KindMetrics>,
}

/// Recall and lead of one failure kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KindMetrics {
    /// The kind.
    pub kind: String,
    /// Failures of this kind.
    pub failures: usize,
    /// Share with a sustained alarm of at least 10 s lead.
    pub recall_at_10s: f64,
    /// Share with at least 30 s lead.
    pub recall_at_30s: f64,
    /// Median lead time in seconds.
    pub median_lead_s: f64,
}

/// Recall and lead per kind, sorted by kind.
pub fn by_kind(stats: &AlarmStats) -> Vec<KindMetrics> {
    let mut kinds: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
    for f in &stats.leads {
        if let Some(k) = &f.kind {
            kinds.entry(k.as_str()).or_default().push(f.lead);
        }
    }
    lead_metrics(kinds.into_iter())
}

/// Precursor lengths the report groups failures by: (shortest, label).
const PRECURSOR_LENGTHS: [(u32, &str); 5] = [
    (0, "under 30 s"),
    (30, "30 s to 2 min"),
    (120, "2 to 5 min"),
    (300, "5 to 30 min"),
    (1800, "30 min or more"),
];

/// Recall and lead per length of precursor, shortest first (failures with a precursor of
/// known length only).
pub fn by_precursor_length(stats: &AlarmStats) -> Vec<KindMetrics> {
    let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for f in &stats.leads {
        if let (Some(true), Some(len)) = (f.precursor, f.precursor_s) {
            let i = PRECURSOR_LENGTHS
                .iter()
                .rposition(|(from, _)| len >= *from)
                .unwrap_or(0);
            groups.entry(i).or_default().push(f.lead);
        }
    }
    lead_metrics(
        groups
            .into_iter()
            .map(|(i, leads)| (PRECURSOR_LENGTHS[i].1, leads)),
    )
}

/// Recall and median lead of each named group of lead times.
fn lead_metrics<'a>(groups: impl Iterator<Item = (&'a str, Vec<usize>)>) -> Vec<KindMetrics> {
    groups
        .map(|(kind, mut leads)| {
            leads.sort_unstable();
            let n = leads.len();
            let share = |l: usize| leads.iter().filter(|&&x| x >= l).count() as f64 / n as f64;
            let median = if n % 2 == 1 {
                leads[n / 2] as f64
            } else {
                (leads[n / 2 - 1] + leads[n / 2]) as f64 / 2.0
            };
            KindMetrics {
                kind: kind.to_owned(),
                failures: n,
                recall_at_10s: share(10),
                recall_at_30s: share(30),
                median_lead_s: median,
            }
        })
        .collect()
}

/// One failure's lead time and what its labels say of it.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureLead {
    /// Seconds of sustained alarm before it.
    pub lead: usize,
    /// Whether it had precursors, when known.
    pub precursor: Option<bool>,
    /// Its kind, when known.
    pub kind: Option<String>,
    /// Length of its precursor, when known.
    pub precursor_s: Option<u32>,
}

/// Threshold-dependent results: lead times and false alarms.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmStats {
    /// Lead time of each failure, with its labels.
    pub leads: Vec<FailureLead>,
    /// Alarm episodes.
    pub episodes: usize,
    /// Episodes not followed by a failure in time.
    pub false_alarms: usize,
    /// Up seconds.
    pub up_seconds: usize,
}

impl AlarmStats {
    /// Recall at `lead` seconds for a group; `None` without failures in it.
    pub fn recall(&self, group: Group, lead: usize) -> Option<f64> {
        let leads: Vec<usize> = self.group_leads(group);
        (!leads.is_empty())
            .then(|| leads.iter().filter(|&&l| l >= lead).count() as f64 / leads.len() as f64)
    }

    /// Median lead time of a group.
    pub fn median_lead(&self, group: Group) -> Option<f64> {
        let mut leads = self.group_leads(group);
        if leads.is_empty() {
            return None;
        }
        leads.sort_unstable();
        let n = leads.len();
        Some(if n % 2 == 1 {
            leads[n / 2] as f64
        } else {
            (leads[n / 2 - 1] + leads[n / 2]) as f64 / 2.0
        })
    }

    /// False alarms per appliance-day of up time.
    pub fn false_alarm_rate(&self) -> Option<f64> {
        (self.up_seconds > 0)
            .then(|| self.false_alarms as f64 / (self.up_seconds as f64 / SECONDS_PER_DAY))
    }

    fn group_leads(&self, group: Group) -> Vec<usize> {
        self.leads
            .iter()
            .filter(|f| group.contains(f.precursor))
            .map(|f| f.lead)
            .collect()
    }
}

/// Lead time of a failure starting at slot `start`.
pub fn lead_time(scores: &[f64], down: &[bool], start: usize, thr: f64) -> usize {
    let mut lead = 0;
    let mut i = start;
    while i > 0 && !down[i - 1] && scores[i - 1] > thr {
        lead += 1;
        i -= 1;
    }
    lead
}

/// Alarm episodes as inclusive (first, last) slot pairs.
pub fn episodes(scores: &[f64], down: &[bool], thr: f64) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut open: Option<usize> = None;
    for i in 0..scores.len() {
        let alarm = !down[i] && scores[i] > thr;
        match (alarm, open) {
            (true, None) => open = Some(i),
            (false, Some(a)) => {
                out.push((a, i - 1));
                open = None;
            }
            _ => {}
        }
    }
    if let Some(a) = open {
        out.push((a, scores.len() - 1));
    }
    out
}

/// Lead times and false alarms at `thr`.
pub fn alarm_stats(series: &[Scored<'_>], thr: f64) -> AlarmStats {
    let mut stats = AlarmStats {
        leads: Vec::new(),
        episodes: 0,
        false_alarms: 0,
        up_seconds: 0,
    };
    for s in series {
        stats.up_seconds += s.down.iter().filter(|d| !**d).count();
        for f in s.failures {
            stats.leads.push(FailureLead {
                lead: lead_time(s.scores, s.down, f.start, thr),
                precursor: f.precursor,
                kind: f.kind.clone(),
                precursor_s: f.precursor_s,
            });
        }
        for (_, last) in episodes(s.scores, s.down, thr) {
            stats.episodes += 1;
            let followed = s
                .failures
                .iter()
                .any(|f| f.start > last && f.start <= last + FALSE_ALARM_WINDOW_S);
            if !followed {
                stats.false_alarms += 1;
            }
        }
    }
    stats
}

/// Label class of a second: 0 negative, else which failure group it precedes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Negative,
    Positive(Option<bool>),
}

/// ROC AUC and average precision of a group, from (score, class) pairs sorted by score
/// descending.
fn aucs(sorted: &[(f64, Class)], group: Group) -> (Option<f64>, Option<f64>) {
    let is_pos = |c: Class| matches!(c, Class::Positive(p) if group.contains(p));
    let counts = |c: Class| is_pos(c) || c == Class::Negative;
    let total_pos = sorted.iter().filter(|(_, c)| is_pos(*c)).count() as f64;
    let total_neg = sorted.iter().filter(|(_, c)| *c == Class::Negative).count() as f64;
    if total_pos == 0.0 || total_neg == 0.0 {
        return (None, None);
    }
    let (mut cum_pos, mut cum_neg) = (0.0, 0.0);
    let (mut roc, mut ap) = (0.0, 0.0);
    let mut i = 0;
    while i < sorted.len() {
        let score = sorted[i].0;
        let (mut p, mut n) = (0.0, 0.0);
        while i < sorted.len() && sorted[i].0 == score {
            let c = sorted[i].1;
            if counts(c) {
                if is_pos(c) {
                    p += 1.0;
                } else {
                    n += 1.0;
                }
            }
            i += 1;
        }
        roc += n * (cum_pos + 0.5 * p);
        cum_pos += p;
        cum_neg += n;
        if p > 0.0 {
            ap += (cum_pos / (cum_pos + cum_neg)) * (p / total_pos);
        }
    }
    (Some(roc / (total_pos * total_neg)), Some(ap))
}

/// Per-second (score, class) pairs over up seconds, sorted by score descending.
fn classified(series: &[Scored<'_>], horizon: usize) -> Vec<(f64, Class)> {
    let mut out = Vec::new();
    for s in series {
        let mut class = vec![Class::Negative; s.scores.len()];
        // Latest first, so that the nearest upcoming failure wins where horizons overlap.
        for f in s.failures.iter().rev() {
            for c in &mut class[f.start.saturating_sub(horizon)..f.start] {
                *c = Class::Positive(f.precursor);
            }
        }
        for ((&score, &down), &c) in s.scores.iter().zip(s.down).zip(&class) {
            if !down {
                out.push((score, c));
            }
        }
    }
    out.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
    out
}

/// Metrics of every group at `thr`.
pub fn grouped(series: &[Scored<'_>], thr: f64, horizon: usize) -> GroupedMetrics {
    let stats = alarm_stats(series, thr);
    let sorted = classified(series, horizon);
    let metrics = |group: Group| {
        let (roc_auc, pr_auc) = aucs(&sorted, group);
        Metrics {
            recall_at_10s: stats.recall(group, 10),
            recall_at_30s: stats.recall(group, 30),
            median_lead_s: stats.median_lead(group),
            false_alarms_per_appliance_day: stats.false_alarm_rate(),
            roc_auc,
            pr_auc,
            failures: stats.group_leads(group).len(),
        }
    };
    GroupedMetrics {
        all: metrics(Group::All),
        precursor: metrics(Group::Precursor),
        sudden: metrics(Group::Sudden),
    }
}

/// Baseline scores of a series: 1 when the health check alarms, else 0.
pub fn baseline_scores(samples: &[Sample], down: &[bool]) -> Vec<f64> {
    let bad = |s: &Sample| {
        f64::from(s[Metric::Loss as usize]) > BASELINE_LOSS
            || f64::from(s[Metric::RttMs as usize]) > BASELINE_RTT_MS
    };
    let mut run = 0;
    samples
        .iter()
        .zip(down)
        .map(|(s, d)| {
            run = if !d && bad(s) { run + 1 } else { 0 };
            if run >= BASELINE_SECONDS { 1.0 } else { 0.0 }
        })
        .collect()
}

/// The full report for scored series (`scores[i]` belongs to `series[i]`).
pub fn report(series: &[Series], scores: &[Vec<f64>], thr: f64, horizon: usize) -> Report {
    let scored: Vec<Scored<'_>> = series
        .iter()
        .zip(scores)
        .map(|(s, sc)| Scored::new(s, sc))
        .collect();
    let base: Vec<Vec<f64>> = series
        .iter()
        .map(|s| baseline_scores(&s.samples, &s.down))
        .collect();
    let base_scored: Vec<Scored<'_>> = series
        .iter()
        .zip(&base)
        .map(|(s, sc)| Scored::new(s, sc))
        .collect();
    let up: usize = series
        .iter()
        .map(|s| s.down.iter().filter(|d| !**d).count())
        .sum();
    let stats = alarm_stats(&scored, thr);
    Report {
        model: grouped(&scored, thr, horizon),
        baseline: grouped(&base_scored, 0.5, horizon),
        threshold: thr,
        horizon_s: horizon,
        appliance_days: up as f64 / SECONDS_PER_DAY,
        unlabelled_failures: series
            .iter()
            .flat_map(|s| &s.failures)
            .filter(|f| f.precursor.is_none())
            .count(),
        by_kind: by_kind(&stats),
        by_precursor_length: by_precursor_length(&stats),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(start: usize, precursor: Option<bool>) -> FailureSpan {
        FailureSpan {
            start,
            end: start + 5,
            kind: None,
            precursor,
            precursor_s: None,
        }
    }

    #[test]
    fn lead_time_and_sustained_alarm() {
        // Failure at 20. Alarm (> 0.5) on 5..=8, dips at 9, then 10..=19: lead 10.
        let mut scores = vec![0.0; 30];
        for s in &mut scores[5..=8] {
            *s = 0.9;
        }
        for s in &mut scores[10..20] {
            *s = 0.9;
        }
        let mut down = vec![false; 30];
        for d in &mut down[20..25] {
            *d = true;
        }
        assert_eq!(lead_time(&scores, &down, 20, 0.5), 10);
        // "Above": a score equal to the threshold does not alarm.
        scores[15] = 0.5;
        assert_eq!(lead_time(&scores, &down, 20, 0.5), 4);
        let failures = [fail(20, Some(true))];
        let stats = alarm_stats(
            &[Scored {
                scores: &scores,
                down: &down,
                failures: &failures,
            }],
            0.5,
        );
        assert_eq!(stats.recall(Group::All, 10), Some(0.0));
        assert_eq!(stats.recall(Group::All, 4), Some(1.0));
        assert_eq!(stats.recall(Group::Sudden, 4), None);
        assert_eq!(stats.median_lead(Group::Precursor), Some(4.0));
        // Episodes: 5..=8, 10..=14, 16..=19; all within 300 s of the failure.
        assert_eq!(stats.episodes, 3);
        assert_eq!(stats.false_alarms, 0);
    }

    #[test]
    fn false_alarm_counting() {
        // 1000 s up, no failure: two episodes -> two false alarms; scores while down ignored.
        let mut scores = vec![0.0; 1400];
        scores[100] = 1.0;
        scores[200..210].fill(1.0);
        let mut down = vec![false; 1400];
        // Down 1000..1400 with high scores: not alarms. A failure at 1000 follows 700..=705
        // (295 s later) but not 600 (400 s later).
        down[1000..].fill(true);
        scores[1000..].fill(1.0);
        scores[600] = 1.0;
        scores[700..=705].fill(1.0);
        let failures = [fail(1000, None)];
        let s = Scored {
            scores: &scores,
            down: &down,
            failures: &failures,
        };
        assert_eq!(episodes(&scores, &down, 0.5).len(), 4);
        let stats = alarm_stats(&[s], 0.5);
        assert_eq!(stats.false_alarms, 3);
        assert_eq!(stats.up_seconds, 1000);
        assert!((stats.false_alarm_rate().unwrap() - 3.0 * 86.4).abs() < 1e-9);
        // Unknown kinds: no group metrics.
        assert_eq!(stats.recall(Group::Precursor, 10), None);
    }

    #[test]
    fn auc_by_hand() {
        // Scores and labels: (0.9, +), (0.8, -), (0.7, +), (0.7, -), (0.1, -).
        // ROC AUC: pairs pos>neg: 0.9 beats 3 negs; 0.7 beats 0.1 and ties 0.7 -> 1.5.
        // (3 + 1.5) / (2 * 3) = 0.75. AP: at 0.9 P=1 (R .5); at 0.7 group: tp 2, fp 2 -> P=.5.
        // AP = 1 * 0.5 + 0.5 * 0.5 = 0.75.
        let sorted = [
            (0.9, Class::Positive(Some(true))),
            (0.8, Class::Negative),
            (0.7, Class::Positive(Some(true))),
            (0.7, Class::Negative),
            (0.1, Class::Negative),
        ];
        let (roc, ap) = aucs(&sorted, Group::All);
        assert!((roc.unwrap() - 0.75).abs() < 1e-12);
        assert!((ap.unwrap() - 0.75).abs() < 1e-12);
        // Sudden group has no positives.
        assert_eq!(aucs(&sorted, Group::Sudden), (None, None));
    }

    #[test]
    fn classes_follow_horizon() {
        let scores = vec![0.0; 20];
        let down: Vec<bool> = (0..20).map(|i| (10..12).contains(&i)).collect();
        let failures = [fail(10, Some(false))];
        let c = classified(
            &[Scored {
                scores: &scores,
                down: &down,
                failures: &failures,
            }],
            3,
        );
        let pos = c.iter().filter(|(_, c)| *c != Class::Negative).count();
        assert_eq!(c.len(), 18);
        assert_eq!(pos, 3);
    }

    #[test]
    fn baseline_needs_three_seconds() {
        let mut samples = vec![crate::risk::features::window::MISSING; 8];
        for (i, s) in samples.iter_mut().enumerate() {
            s[Metric::Loss as usize] = if (2..6).contains(&i) { 0.2 } else { 0.0 };
        }
        samples[7][Metric::RttMs as usize] = 500.0;
        let down = vec![false; 8];
        assert_eq!(
            baseline_scores(&samples, &down),
            vec![0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
        );
    }

    #[test]
    fn precursor_lengths_group_known_precursors_shortest_first() {
        let lead = |lead, precursor, precursor_s| FailureLead {
            lead,
            precursor,
            kind: None,
            precursor_s,
        };
        let stats = AlarmStats {
            leads: vec![
                lead(0, Some(true), Some(12)),
                lead(40, Some(true), Some(600)),
                lead(5, Some(true), Some(900)),
                lead(20, Some(true), Some(29)),
                lead(90, Some(true), Some(1800)),
                // Sudden, or of unknown length: in no group.
                lead(0, Some(false), Some(0)),
                lead(50, Some(true), None),
            ],
            episodes: 0,
            false_alarms: 0,
            up_seconds: 1,
        };
        let got: Vec<(String, usize, f64)> = by_precursor_length(&stats)
            .into_iter()
            .map(|k| (k.kind, k.failures, k.recall_at_10s))
            .collect();
        assert_eq!(
            got,
            [
                ("under 30 s".into(), 2, 0.5),
                ("5 to 30 min".into(), 2, 0.5),
                ("30 min or more".into(), 1, 1.0),
            ]
        );
    }
}
