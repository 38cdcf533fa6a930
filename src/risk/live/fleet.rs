//! The live scorer's core: in-memory windows of every appliance and path, scored each second,
//! and the decision which scores are worth writing.
//!
//! Pure: telemetry and failure events come in through `handle_*`, time is an argument, and
//! [`Fleet::poll_writes`] returns the rows to store; the shell ([`crate::risk::live`]) does the
//! reading and writing. Windows are ring buffers of [`WINDOW_S`] seconds, so a tick costs one
//! pass over each window and nothing is copied.
//!
//! Scores: an appliance that is down (an open failure event) scores 1; otherwise it gets the
//! model's held score ([`crate::risk::model::hold`]). Paths are scored by the model on their own
//! probes (no health metrics). Advisories are deliberately not folded in here: the steering
//! server combines them with the stored score (`steering::risk`), the moment they change and at
//! their window's edges, and folding them in twice would count them twice.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::domain::{Probability, RiskScore};
use crate::risk::data::records::{
    FailureEvent, HealthSecond, ProbeSecond, RttMinute, ScoreRow, network_seconds,
};
use crate::risk::features::baseline::{Baseline, MinuteSums};
use crate::risk::features::window::{MISSING, Sample, WINDOW_S, Window};
use crate::risk::features::{self, History};
use crate::risk::model::Model;
use crate::risk::model::hold::Hold;

/// A subject not heard from for this long keeps its last score: with no new evidence its
/// window only empties, and a score decaying towards "calm" is not news. (A silent subject's
/// stored score is not confirmed either, so steering lets it expire.)
const SILENT_S: i64 = 5;

/// A subject not heard from for this long is forgotten.
const FORGET_S: i64 = 3600;

/// One second-resolution window per subject.
#[derive(Debug, Clone)]
pub struct Ring {
    slots: Vec<Sample>,
    /// The newest second covered; slot of second `s` is `s mod WINDOW_S`.
    newest: i64,
    /// The seconds that have left the window, per minute: the long-term baseline.
    minutes: MinuteSums,
}

impl Ring {
    /// An empty window ending at `now`.
    pub fn new(now: i64) -> Self {
        Self {
            slots: vec![MISSING; WINDOW_S],
            newest: now,
            minutes: MinuteSums::default(),
        }
    }

    fn slot(sec: i64) -> usize {
        sec.rem_euclid(WINDOW_S as i64) as usize
    }

    /// Moves the window's end to `now`. Seconds leaving the window are folded into the
    /// baseline in time order; the new seconds start missing.
    pub fn advance(&mut self, now: i64) {
        if now <= self.newest {
            return;
        }
        let w = WINDOW_S as i64;
        // Seconds up to now - w leave the window, oldest first.
        for s in self.newest - w + 1..=self.newest.min(now - w) {
            let slot = &mut self.slots[Self::slot(s)];
            self.minutes.fold(s, slot);
            *slot = MISSING;
        }
        for s in (self.newest + 1).max(now - w + 1)..=now {
            self.slots[Self::slot(s)] = MISSING;
        }
        self.newest = now;
        self.minutes.refresh(now);
    }

    /// The baseline as of the window's end.
    pub fn baseline(&self) -> Baseline {
        self.minutes.baseline(self.newest)
    }

    /// Sets metrics `range` of second `sec` from `values` (others untouched). Seconds older
    /// than the window are ignored; newer ones advance it.
    pub fn put(&mut self, sec: i64, range: std::ops::Range<usize>, values: &[f32]) {
        if sec <= self.newest - WINDOW_S as i64 {
            return;
        }
        self.advance(sec);
        let slot = &mut self.slots[Self::slot(sec)];
        slot[range].copy_from_slice(values);
    }

    /// The window, oldest first.
    pub fn window(&self) -> Window<'_> {
        let split = Self::slot(self.newest + 1);
        Window::new(&self.slots[split..], &self.slots[..split])
    }
}

/// Appliance or path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SubjectKind {
    /// An appliance, by id.
    Appliance,
    /// A path, `src>dst`.
    Path,
}

impl SubjectKind {
    /// The `risk_scores.subject_kind` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Appliance => "appliance",
            Self::Path => "path",
        }
    }
}

#[derive(Debug, Clone)]
struct Subject {
    kind: SubjectKind,
    id: String,
    region: String,
    ring: Ring,
    last_seen: i64,
    /// Newest second of telemetry about it (`None`: only known from stored scores or baselines).
    heard: Option<i64>,
    score: Option<RiskScore>,
    written: Option<f64>,
    /// Its stored score came from another model: rewrite it whatever it moved.
    rewrite: bool,
    hold: Hold,
}

/// A current score, for metrics and the admin API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SubjectScore {
    /// Appliance or path.
    pub kind: SubjectKind,
    /// Appliance id or `src>dst`.
    pub id: String,
    /// Owning region.
    pub region: String,
    /// The score with its interval.
    pub score: RiskScore,
}

/// Every subject's window and score.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    subjects: Vec<Subject>,
    index: HashMap<(SubjectKind, String), usize>,
    down: HashSet<String>,
    history: HashMap<String, History>,
}

impl Fleet {
    /// An empty fleet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of subjects.
    pub fn len(&self) -> usize {
        self.subjects.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.subjects.is_empty()
    }

    fn subject(&mut self, kind: SubjectKind, id: &str, region: &str, sec: i64) -> &mut Subject {
        let i = match self.index.get(&(kind, id.to_owned())) {
            Some(&i) => i,
            None => {
                self.subjects.push(Subject {
                    kind,
                    id: id.to_owned(),
                    region: region.to_owned(),
                    ring: Ring::new(sec),
                    last_seen: sec,
                    heard: None,
                    score: None,
                    written: None,
                    rewrite: false,
                    hold: Hold::default(),
                });
                self.index
                    .insert((kind, id.to_owned()), self.subjects.len() - 1);
                self.subjects.len() - 1
            }
        };
        let s = &mut self.subjects[i];
        s.last_seen = s.last_seen.max(sec);
        s
    }

    /// Records a score as already stored (e.g. read at start), so it is not rewritten.
    pub fn handle_stored(
        &mut self,
        kind: SubjectKind,
        id: &str,
        region: &str,
        score: f64,
        now: i64,
    ) {
        self.subject(kind, id, region, now).written = Some(score);
    }

    /// Adds per-second health. Health names the appliance's own region, and that files it:
    /// an appliance first met in another region's probes (a probe row carries its source's
    /// region, and the first round seeds baselines from them before any health is read) moves
    /// to its own region, or its scorer would neither write nor confirm its score.
    pub fn handle_health(&mut self, rows: &[HealthSecond]) {
        for h in rows {
            let v = h.values.map(|x| x as f32);
            let s = self.subject(SubjectKind::Appliance, &h.appliance, &h.region, h.sec);
            if s.region != h.region {
                s.region.clone_from(&h.region);
            }
            s.heard = s.heard.max(Some(h.sec));
            s.ring.put(h.sec, 0..5, &v);
        }
    }

    /// Adds per-second probes: each appliance's network metrics are the mean over probes to
    /// it; each path between different ends is a subject of its own.
    pub fn handle_probes(&mut self, rows: &[ProbeSecond]) {
        for p in rows.iter().filter(|p| p.src != p.dst) {
            let id = format!("{}>{}", p.src, p.dst);
            let v = [p.rtt_ms as f32, p.jitter_ms as f32, p.loss as f32];
            let s = self.subject(SubjectKind::Path, &id, &p.region, p.sec);
            s.heard = s.heard.max(Some(p.sec));
            s.ring.put(p.sec, 5..8, &v);
        }
        for n in network_seconds(rows) {
            let v = [n.rtt_ms as f32, n.jitter_ms as f32, n.loss as f32];
            let s = self.subject(SubjectKind::Appliance, n.appliance, n.region, n.sec);
            s.heard = s.heard.max(Some(n.sec));
            s.ring.put(n.sec, 5..8, &v);
        }
    }

    /// Seeds the rtt baselines from stored minute aggregates (a live scorer's first round, so
    /// that a restart does not lose an hour of baseline). Only minutes before the windows'
    /// first second may be given, or they would be counted twice.
    pub fn handle_rtt_minutes(&mut self, rows: &[RttMinute], now: i64) {
        for r in rows {
            let kind = if r.path {
                SubjectKind::Path
            } else {
                SubjectKind::Appliance
            };
            self.subject(kind, &r.subject, &r.region, now)
                .ring
                .minutes
                .seed_rtt(r.minute, r.sum, r.count);
        }
    }

    /// Replaces what is known about failures: who is down at `now`, and each appliance's
    /// history (events should cover at least the last hour).
    pub fn handle_failures(&mut self, events: &[FailureEvent], now: i64) {
        self.down.clear();
        self.history.clear();
        for e in events {
            if e.started <= now && e.ended.is_none_or(|end| end > now) {
                self.down.insert(e.appliance.clone());
            }
            let h = self.history.entry(e.appliance.clone()).or_default();
            if let Some(end) = e.ended.filter(|end| *end <= now) {
                let since = (now - end) as u64;
                h.since_recovery_s = Some(h.since_recovery_s.map_or(since, |s| s.min(since)));
            }
            if e.started <= now && now - e.started < 3600 {
                h.failures_last_hour += 1;
            }
        }
    }

    /// Scores every subject as of second `now` on up to `threads` threads.
    pub fn score(&mut self, model: &Model, now: i64, threads: usize) {
        let before = self.subjects.len();
        self.subjects.retain(|s| now - s.last_seen <= FORGET_S);
        if self.subjects.len() != before {
            self.index = self
                .subjects
                .iter()
                .enumerate()
                .map(|(i, s)| ((s.kind, s.id.clone()), i))
                .collect();
        }
        let threads = threads.clamp(1, 64);
        let per = self.subjects.len().div_ceil(threads).max(1);
        let (down, history) = (&self.down, &self.history);
        std::thread::scope(|scope| {
            for chunk in self.subjects.chunks_mut(per) {
                scope.spawn(move || {
                    for s in chunk {
                        s.ring.advance(now);
                        let score = if s.kind == SubjectKind::Appliance && down.contains(&s.id) {
                            s.hold.clear();
                            RiskScore::exact(Probability::ONE)
                        } else if s.score.is_some()
                            && !s.rewrite
                            && s.heard.is_some_and(|h| now - h > SILENT_S)
                        {
                            // (A new model scores it once more: a stored score names the
                            // model that computed it.)
                            continue;
                        } else {
                            let raw = score_subject(model, s, history);
                            s.hold.push(now, raw, model.hold_s)
                        };
                        s.score = Some(score);
                    }
                });
            }
        });
    }

    /// Marks every stored score as another model's (a reload, or a start with stored scores of
    /// an older model): each is rewritten once, over as many rounds as `max` requires.
    pub fn handle_new_model(&mut self) {
        for s in &mut self.subjects {
            s.rewrite = true;
        }
    }

    /// Rows worth writing for `region`: scores never written, of another model
    /// ([`handle_new_model`](Self::handle_new_model)), or moved by more than `epsilon` since
    /// written; at most `max`, largest moves first. A row is `confirmed` when its subject was
    /// heard from at or after second `heard_since`.
    pub fn poll_writes(
        &self,
        region: &str,
        epsilon: f64,
        max: usize,
        heard_since: i64,
    ) -> Vec<ScoreRow> {
        let mut moved: Vec<(f64, &Subject, RiskScore)> = self
            .subjects
            .iter()
            .filter(|s| s.region == region)
            .filter_map(|s| {
                let score = s.score?;
                let delta = match s.written {
                    _ if s.rewrite => f64::INFINITY,
                    None => f64::INFINITY,
                    Some(w) => (score.value().get() - w).abs(),
                };
                (delta > epsilon).then_some((delta, s, score))
            })
            .collect();
        moved.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.id.cmp(&b.1.id)));
        moved
            .into_iter()
            .take(max)
            .map(|(_, s, score)| ScoreRow {
                region: s.region.clone(),
                subject_kind: s.kind.as_str(),
                subject: s.id.clone(),
                score,
                confirmed: s.heard.is_some_and(|h| h >= heard_since),
            })
            .collect()
    }

    /// Subjects of `region` whose stored score still stands and may be confirmed: written, and
    /// heard from at or after second `heard_since`. A subject that fell silent is not
    /// confirmed, so its stored score expires and steering treats it as unknown-high.
    pub fn poll_confirmations(
        &self,
        region: &str,
        heard_since: i64,
    ) -> Vec<(&'static str, String)> {
        self.subjects
            .iter()
            .filter(|s| s.region == region && s.written.is_some())
            .filter(|s| s.heard.is_some_and(|h| h >= heard_since))
            .map(|s| (s.kind.as_str(), s.id.clone()))
            .collect()
    }

    /// Records rows as stored.
    pub fn handle_written(&mut self, rows: &[ScoreRow]) {
        for r in rows {
            let kind = if r.subject_kind == "path" {
                SubjectKind::Path
            } else {
                SubjectKind::Appliance
            };
            if let Some(&i) = self.index.get(&(kind, r.subject.clone())) {
                self.subjects[i].written = Some(r.score.value().get());
                self.subjects[i].rewrite = false;
            }
        }
    }

    /// Current scores.
    pub fn scores(&self) -> Vec<SubjectScore> {
        self.subjects
            .iter()
            .filter_map(|s| {
                Some(SubjectScore {
                    kind: s.kind,
                    id: s.id.clone(),
                    region: s.region.clone(),
                    score: s.score?,
                })
            })
            .collect()
    }
}

/// The score of an up subject at this second, before the hold.
fn score_subject(model: &Model, s: &Subject, history: &HashMap<String, History>) -> RiskScore {
    let h = match s.kind {
        SubjectKind::Appliance => history.get(&s.id).copied().unwrap_or_default(),
        SubjectKind::Path => History::default(),
    };
    model.score(&features::compute(&s.ring.window(), h, &s.ring.baseline()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One second of ordinary health from `appliance` in region eu.
    fn health(appliance: &str, sec: i64) -> HealthSecond {
        HealthSecond {
            region: "eu".into(),
            appliance: appliance.into(),
            sec,
            values: [0.5, 0.5, 0.5, 10.0, 0.0],
        }
    }

    #[test]
    fn ring_window_matches_series_order() {
        let mut r = Ring::new(1000);
        for sec in 990..=1010 {
            r.put(sec, 0..1, &[sec as f32]);
        }
        let w = r.window();
        assert_eq!(w.len(), WINDOW_S);
        // The last sample is the newest second, the one before it the second before.
        let mut series = vec![MISSING; WINDOW_S];
        for sec in 990..=1010i64 {
            series[(WINDOW_S as i64 - 1 - (1010 - sec)) as usize][0] = sec as f32;
        }
        let a = features::compute(&w, History::default(), &Baseline::UNKNOWN);
        let b = features::compute(
            &Window::new(&[], &series),
            History::default(),
            &Baseline::UNKNOWN,
        );
        assert_eq!(a, b);
        // Too old: ignored. Advancing past the window blanks it.
        r.put(500, 0..1, &[1.0]);
        r.advance(2000);
        let empty = features::compute(&r.window(), History::default(), &Baseline::UNKNOWN);
        let none = features::compute(
            &Window::new(&[], &[MISSING; WINDOW_S]),
            History::default(),
            &Baseline::UNKNOWN,
        );
        assert_eq!(empty, none);
    }

    #[test]
    fn live_features_equal_batch_features() {
        use crate::risk::data::telemetry::Telemetry;
        use crate::risk::simulate::{SimConfig, Simulator};
        let sim = Simulator::new(SimConfig::new(1, 5000, 9));
        let run = sim.appliance(0);
        let mut t = Telemetry::default();
        t.appliances.push(run.info);
        t.rows = run.rows;
        let series = crate::risk::data::series::build(&t, None);
        let s = &series[0];
        let ctx = s.context();
        // Feed the ring second by second, sometimes skipping ahead, and compare at checkpoints.
        let mut ring = Ring::new(s.start);
        for i in 0..s.len() {
            let sec = s.ts(i);
            ring.put(sec, 0..8, &s.samples[i]);
            if i % 997 == 0 || i == s.len() - 1 {
                let live = features::compute(&ring.window(), History::default(), &ring.baseline());
                let batch = features::compute(
                    &Window::ending_at(&s.samples, i),
                    History::default(),
                    &ctx.baselines[i],
                );
                // Bit-identical except where the batch window is shorter than the ring's.
                if i >= WINDOW_S {
                    assert_eq!(live, batch, "slot {i}");
                }
            }
        }
        assert!(!ring.baseline().rtt.is_nan());
    }

    #[test]
    fn failures_mark_down_and_feed_history() {
        let mut f = Fleet::new();
        let ev = |a: &str, started, ended| FailureEvent {
            region: "eu".into(),
            appliance: a.into(),
            started,
            ended,
            kind: "x".into(),
            has_precursor: None,
        };
        f.handle_failures(&[ev("a", 100, Some(160)), ev("b", 900, None)], 1000);
        assert!(f.down.contains("b") && !f.down.contains("a"));
        assert_eq!(f.history["a"].since_recovery_s, Some(840));
        assert_eq!(f.history["a"].failures_last_hour, 1);
    }

    #[test]
    fn writes_only_what_moved() {
        let model = Model::constant("t", 0.2);
        let mut f = Fleet::new();
        f.handle_health(&[health("a", 100), health("b", 100), health("c", 100)]);
        f.handle_health(&[HealthSecond {
            region: "us".into(),
            ..health("x", 100)
        }]);
        f.score(&model, 101, 2);
        let rows = f.poll_writes("eu", 0.02, 10, i64::MIN);
        assert_eq!(
            rows.len(),
            3,
            "first round writes every subject of the region"
        );
        assert!((rows[0].score.value().get() - 0.2).abs() < 1e-9);
        f.handle_written(&rows);
        f.score(&model, 102, 2);
        assert!(
            f.poll_writes("eu", 0.02, 10, i64::MIN).is_empty(),
            "nothing moved"
        );
        // A new model: everything is rewritten once, across rounds when capped.
        f.handle_new_model();
        let first = f.poll_writes("eu", 0.02, 2, i64::MIN);
        assert_eq!(first.len(), 2);
        f.handle_written(&first);
        let rest = f.poll_writes("eu", 0.02, 2, i64::MIN);
        assert_eq!(rest.len(), 1);
        assert!(first.iter().all(|r| r.subject != rest[0].subject));
        f.handle_written(&rest);
        assert!(f.poll_writes("eu", 0.02, 10, i64::MIN).is_empty());
        // An open failure on "b" moves it to 1; failures on all three move them all, capped.
        let open = |a: &str| FailureEvent {
            region: "eu".into(),
            appliance: a.into(),
            started: 102,
            ended: None,
            kind: "x".into(),
            has_precursor: None,
        };
        f.handle_failures(&[open("b")], 103);
        f.score(&model, 103, 1);
        let rows = f.poll_writes("eu", 0.02, 10, i64::MIN);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].subject, "b");
        assert_eq!(rows[0].score.value().get(), 1.0);
        f.handle_written(&rows);
        f.handle_failures(&[open("a"), open("b"), open("c")], 104);
        f.score(&model, 104, 1);
        assert_eq!(f.poll_writes("eu", 0.02, 1, i64::MIN).len(), 1, "capped");
    }

    #[test]
    fn a_silent_subject_keeps_its_last_score() {
        // A model of loss over 10 s: a lossy path scores high while it is heard from.
        let mut model = Model::constant("loss", 0.02);
        let i = model
            .features
            .names()
            .iter()
            .position(|n| n == "loss_mean10")
            .unwrap();
        if let crate::risk::model::Members::Logistic(ms) = &mut model.members {
            ms[0].weights[i] = 60.0;
        }
        let mut f = Fleet::new();
        let probe = |sec| ProbeSecond {
            region: "eu".into(),
            src: "eu-1".into(),
            dst_kind: "client".into(),
            dst: "alice".into(),
            sec,
            rtt_ms: 30.0,
            jitter_ms: 2.0,
            loss: 0.2,
        };
        let path = |f: &Fleet| {
            f.scores()
                .into_iter()
                .find(|s| s.id == "eu-1>alice")
                .map(|s| s.score.value().get())
                .unwrap()
        };
        for sec in 100..110 {
            f.handle_probes(&[probe(sec)]);
            f.score(&model, sec + 1, 1);
        }
        let heard = path(&f);
        assert!(heard > 0.9, "{heard}");
        // Silent from 110: the window empties, yet the score stays what it was when the
        // subject was last scored within SILENT_S.
        f.score(&model, 109 + SILENT_S, 1);
        let last = path(&f);
        for now in 110 + SILENT_S..200 {
            f.score(&model, now, 1);
            assert_eq!(path(&f), last, "second {now}");
        }
        assert!(last > 0.5, "{last}");
        // Heard again: scored again.
        f.handle_probes(&[ProbeSecond {
            loss: 0.0,
            ..probe(200)
        }]);
        for now in 201..215 {
            f.handle_probes(&[ProbeSecond {
                loss: 0.0,
                ..probe(now - 1)
            }]);
            f.score(&model, now, 1);
        }
        assert!(path(&f) < 0.1, "{}", path(&f));
    }

    #[test]
    fn health_files_an_appliance_under_its_own_region() {
        let model = Model::constant("t", 0.2);
        let mut f = Fleet::new();
        // A live scorer's first round: baselines from stored probes come first, and us-1's
        // probes towards eu-1 carry us-1's region.
        f.handle_rtt_minutes(
            &[RttMinute {
                region: "us".into(),
                path: false,
                subject: "eu-1".into(),
                minute: 10,
                sum: 1200.0,
                count: 60,
            }],
            1000,
        );
        f.handle_health(&[HealthSecond {
            region: "eu".into(),
            appliance: "eu-1".into(),
            sec: 999,
            values: [0.5, 0.5, 0.5, 10.0, 0.0],
        }]);
        f.handle_probes(&[ProbeSecond {
            region: "us".into(),
            src: "us-1".into(),
            dst_kind: "appliance".into(),
            dst: "eu-1".into(),
            sec: 999,
            rtt_ms: 20.0,
            jitter_ms: 1.0,
            loss: 0.0,
        }]);
        f.score(&model, 1000, 1);
        let rows = f.poll_writes("eu", 0.02, 10, 990);
        assert!(
            rows.iter().any(|r| r.subject == "eu-1"),
            "eu's scorer does not write eu-1: {rows:?}"
        );
        f.handle_written(&rows);
        assert!(
            f.poll_confirmations("eu", 990)
                .contains(&("appliance", "eu-1".to_string()))
        );
        let us = f.poll_writes("us", 0.02, 10, 990);
        assert!(us.iter().all(|r| r.subject != "eu-1"), "{us:?}");
        // The path is the prober's.
        assert!(us.iter().any(|r| r.subject == "us-1>eu-1"), "{us:?}");
    }

    #[test]
    fn confirms_only_written_subjects_still_heard_from() {
        let model = Model::constant("t", 0.2);
        let mut f = Fleet::new();
        // "s" is only known from a stored score (e.g. read at start): never heard, never
        // confirmed, however recent the start.
        f.handle_stored(SubjectKind::Appliance, "s", "eu", 0.1, 100);
        f.handle_health(&[health("a", 100), health("b", 100)]);
        f.score(&model, 101, 1);
        assert!(
            f.poll_confirmations("eu", 98).is_empty(),
            "nothing written yet"
        );
        let rows = f.poll_writes("eu", 0.02, 10, 98);
        f.handle_written(&rows);
        let mut c = f.poll_confirmations("eu", 98);
        c.sort();
        assert_eq!(c, [("appliance", "a".into()), ("appliance", "b".into())]);
        assert!(f.poll_confirmations("us", 98).is_empty());
        // Rows of subjects heard since the bound confirm; "s", never heard, does not.
        for r in &rows {
            assert_eq!(r.confirmed, r.subject != "s", "{r:?}");
        }
        f.handle_new_model();
        assert!(
            f.poll_writes("eu", 0.02, 10, 101)
                .iter()
                .all(|r| !r.confirmed)
        );
        f.handle_written(&rows);
        // "a" keeps reporting, "b" falls silent: after 3 s only "a" is confirmed.
        for sec in 101..=105 {
            f.handle_health(&[health("a", sec)]);
            f.score(&model, sec, 1);
        }
        assert_eq!(
            f.poll_confirmations("eu", 100).len(),
            2,
            "3 s of silence is still within the age"
        );
        assert_eq!(
            f.poll_confirmations("eu", 102),
            [("appliance", "a".to_string())]
        );
    }
}
