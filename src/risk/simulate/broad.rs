//! The broad scenario: failure families defined by which signals degrade, how, for how long and
//! how far, on appliances that differ widely, among benign anomalies as large as the precursors.
//!
//! Why: the classic scenario has five hand-shaped failure kinds, too few and too regular to tell
//! whether a model learned "trouble is coming" or just those five shapes. Leave-one-kind-out over
//! these families asks whether it generalises to a degradation it never saw, and the benign
//! anomalies, which never end in a failure, test the false-alarm rate on hard cases.
//!
//! A failure with a precursor draws a primary signal among the eight columns (sessions drop, the
//! others rise) and 0–2 more that degrade with it; a curve (linear, accelerating, step then ramp,
//! growing oscillation, intermittent episodes growing in frequency and size); a precursor length
//! log-uniform from 10 s to 30 min; and a strength in [0.3, 1] scaling how far each signal goes
//! from the appliance's own level towards a bad one (cpu, mem, bw towards 0.9–1; rtt ×2–×10;
//! jitter ×3–×10; loss to 0.05–0.6; 5–50 more failed handshakes a second; 30–90 % of sessions
//! lost). Its label's kind names the primary signal: `deg_cpu`, `deg_mem`, `deg_bw`,
//! `deg_sessions`, `deg_hsf`, `deg_rtt`, `deg_jitter` or `deg_loss`. About a quarter of failures
//! have none: `power_loss` of one appliance, and `regional_outage` taking a region down at once.
//!
//! Benign anomalies never end in a failure: bursts of one signal (seconds to two minutes), load
//! peaks, a daily batch job (cpu, mem and bw high for 10–60 min at an appliance's own hour),
//! permanent level shifts (a route change, an upgrade), ramps that plateau and stay for hours,
//! noisy-sensor periods (one signal's noise ×5–×10), missing fields (one column for minutes, every
//! health column for seconds), and the regional congestion of the classic scenario. Bursts and
//! ramps draw their levels from the same ranges as the precursors.
//!
//! Appliances differ in capacity, base load, peak hour, cpu cost of load, memory, session scale,
//! base rtt (5–150 ms), noise of each signal; some are noisy and some lossy throughout.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{
    ApplianceRun, Event, REGIONS, RegionEvents, SimConfig, active, down_row, normal, poisson,
    poisson_events, round,
};
use crate::risk::data::failures::FailureLabel;
use crate::risk::data::telemetry::{ApplianceInfo, Metric, N_METRICS, Row};

/// Shape of a precursor over its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Curve {
    /// In proportion to the time elapsed.
    Linear,
    /// Slow, then fast (cube of the time elapsed).
    Accelerating,
    /// Nothing, a step to 40 %, then a ramp to the end.
    StepThenRamp,
    /// An oscillation whose amplitude grows.
    Oscillating,
    /// Episodes, more frequent and larger towards the end.
    Intermittent,
}

impl Curve {
    pub(crate) const ALL: [Curve; 5] = [
        Curve::Linear,
        Curve::Accelerating,
        Curve::StepThenRamp,
        Curve::Oscillating,
        Curve::Intermittent,
    ];
}

/// The failure kind of a family: its primary signal.
pub(crate) fn kind_name(m: Metric) -> &'static str {
    match m {
        Metric::Cpu => "deg_cpu",
        Metric::Mem => "deg_mem",
        Metric::BwUtil => "deg_bw",
        Metric::Sessions => "deg_sessions",
        Metric::HandshakeFailures => "deg_hsf",
        Metric::RttMs => "deg_rtt",
        Metric::JitterMs => "deg_jitter",
        Metric::Loss => "deg_loss",
    }
}

/// Kind of a sudden failure of one appliance.
const POWER_LOSS: &str = "power_loss";
/// Kind of a failure of a whole region at once.
const REGIONAL_OUTAGE: &str = "regional_outage";
/// Share of the per-appliance failures without precursors.
const SUDDEN_SHARE: f64 = 0.24;
/// Regional outages per region per day, per failure per appliance-day asked for.
const OUTAGES_PER_FAILURE: f64 = 0.025;

/// One signal degrading.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Degrade {
    pub(crate) metric: Metric,
    /// How bad at full strength (see [`bad_level`]).
    pub(crate) bad: f64,
    /// Share of the strength this signal gets (1 for the primary).
    pub(crate) weight: f64,
}

/// A failure with a precursor, as drawn.
#[derive(Debug, Clone)]
pub(crate) struct FailurePlan {
    /// The degrading signals, the primary first.
    pub(crate) signals: Vec<Degrade>,
    pub(crate) curve: Curve,
    pub(crate) precursor_s: u64,
    /// In [0.3, 1].
    pub(crate) strength: f64,
    /// Period of an oscillating curve in seconds.
    period: f64,
    /// Where a step-then-ramp curve steps, as a share of the precursor.
    step_at: f64,
}

impl FailurePlan {
    pub(crate) fn kind(&self) -> &'static str {
        kind_name(self.signals[0].metric)
    }

    /// Degradation in [0, 1] at share `u` of the precursor, `elapsed` seconds into it, given the
    /// size of the intermittent episode in progress (0 when none).
    fn amount(&self, u: f64, elapsed: f64, episode: f64) -> f64 {
        let c = match self.curve {
            Curve::Linear => u,
            Curve::Accelerating => u.powi(3),
            Curve::StepThenRamp if u < self.step_at => 0.0,
            Curve::StepThenRamp => 0.4 + 0.6 * (u - self.step_at) / (1.0 - self.step_at),
            Curve::Oscillating => {
                u * 0.5 * (1.0 - (std::f64::consts::TAU * elapsed / self.period).cos())
            }
            Curve::Intermittent => episode,
        };
        self.strength * c
    }
}

/// How bad a signal gets: a level for cpu, mem, bw and loss; the share of sessions lost; extra
/// failed handshakes per second; a multiplier for rtt and jitter.
fn bad_level(rng: &mut ChaCha8Rng, m: Metric) -> f64 {
    match m {
        Metric::Cpu | Metric::Mem | Metric::BwUtil => rng.gen_range(0.9..=1.0),
        Metric::Loss => rng.gen_range(0.05..=0.6),
        Metric::Sessions => rng.gen_range(0.3..=0.9),
        Metric::HandshakeFailures => rng.gen_range(5.0..=50.0),
        Metric::RttMs => rng.gen_range(2.0..=10.0),
        Metric::JitterMs => rng.gen_range(3.0..=10.0),
    }
}

fn any_metric(rng: &mut ChaCha8Rng) -> Metric {
    Metric::ALL[rng.gen_range(0..N_METRICS)]
}

fn log_uniform(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    rng.gen_range(lo.ln()..=hi.ln()).exp()
}

/// Draws a failure with a precursor.
pub(crate) fn draw_plan(rng: &mut ChaCha8Rng) -> FailurePlan {
    let primary = any_metric(rng);
    let mut signals = vec![Degrade {
        metric: primary,
        bad: bad_level(rng, primary),
        weight: 1.0,
    }];
    let more = rng.gen_range(0..=2);
    while signals.len() < 1 + more {
        let m = any_metric(rng);
        if signals.iter().all(|s| s.metric != m) {
            signals.push(Degrade {
                metric: m,
                bad: bad_level(rng, m),
                weight: rng.gen_range(0.4..=1.0),
            });
        }
    }
    let curve = Curve::ALL[rng.gen_range(0..Curve::ALL.len())];
    let precursor_s = log_uniform(rng, 10.0, 1800.0).round() as u64;
    FailurePlan {
        signals,
        curve,
        precursor_s,
        strength: rng.gen_range(0.3..=1.0),
        period: (precursor_s as f64 / rng.gen_range(3.0..=10.0)).max(4.0),
        step_at: rng.gen_range(0.05..=0.4),
    }
}

/// Moves one value of `v` (a second's values before rounding, handshake failures as a rate)
/// towards `bad` by `x` in [0, 1].
fn degrade(v: &mut [f64; N_METRICS], m: Metric, bad: f64, x: f64) {
    let i = m as usize;
    match m {
        Metric::Cpu | Metric::Mem | Metric::BwUtil | Metric::Loss => {
            v[i] += (bad - v[i]).max(0.0) * x;
        }
        Metric::Sessions => v[i] *= 1.0 - bad * x,
        Metric::HandshakeFailures => v[i] += bad * x,
        Metric::RttMs | Metric::JitterMs => v[i] *= 1.0 + (bad - 1.0) * x,
    }
}

/// A benign anomaly.
#[derive(Debug, Clone, Copy)]
enum Benign {
    /// One signal towards a bad level, reached after `ramp` seconds (0: at once), then flat.
    Degrade { d: Degrade, amount: f64, ramp: f64 },
    /// Extra load (cpu, bw, sessions, rtt follow).
    Load(f64),
    /// One signal's noise multiplied.
    Noise(Metric, f64),
    /// One column missing, or every health column (`None`).
    Missing(Option<Metric>),
}

impl Benign {
    /// `metric` at `amount` of the way to its bad level `bad`, reached after `ramp` seconds.
    fn degrade(metric: Metric, bad: f64, amount: f64, ramp: f64) -> Self {
        let d = Degrade {
            metric,
            bad,
            weight: 1.0,
        };
        Benign::Degrade { d, amount, ramp }
    }
}

/// A family of benign anomalies, as `simulate --without` names it: leaving families out
/// measures what each costs a model in false alarms and recall (an ablation). Every family is
/// drawn whichever are kept, so the appliances and the kept families' anomalies stay the same
/// for a seed (the failures drawn second by second may differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenignFamily {
    /// Short bursts of one signal (3 s to 2 min) to a precursor's levels.
    Bursts,
    /// Extra load for 5 to 40 min.
    LoadPeaks,
    /// One signal ramping over 5 to 30 min to a precursor's levels, then staying for hours.
    Ramps,
    /// One signal's noise multiplied by 5 to 10.
    NoisySensors,
    /// One column missing for minutes, or every health column for seconds.
    MissingFields,
    /// A daily batch job: cpu, mem and bw high for 10 to 60 min.
    BatchJobs,
    /// Permanent changes of one signal's baseline.
    LevelShifts,
    /// Regional congestion (rtt, jitter and loss of every appliance of a region).
    Congestion,
}

impl BenignFamily {
    /// Every family.
    pub const ALL: [BenignFamily; 8] = [
        BenignFamily::Bursts,
        BenignFamily::LoadPeaks,
        BenignFamily::Ramps,
        BenignFamily::NoisySensors,
        BenignFamily::MissingFields,
        BenignFamily::BatchJobs,
        BenignFamily::LevelShifts,
        BenignFamily::Congestion,
    ];
}

/// Which benign families a broad run has (all by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenignFamilies([bool; BenignFamily::ALL.len()]);

impl Default for BenignFamilies {
    fn default() -> Self {
        Self([true; BenignFamily::ALL.len()])
    }
}

impl BenignFamilies {
    /// Every family but `without`.
    pub fn without(without: &[BenignFamily]) -> Self {
        let mut s = Self::default();
        for f in without {
            s.0[*f as usize] = false;
        }
        s
    }

    /// Whether the run has family `f`.
    pub fn has(self, f: BenignFamily) -> bool {
        self.0[f as usize]
    }
}

#[derive(Debug, Clone, Copy)]
struct Anomaly {
    start: u64,
    end: u64,
    what: Benign,
}

/// Events of a Poisson process, none when the rate is not positive.
fn events(
    rng: &mut ChaCha8Rng,
    seconds: u64,
    per_day: f64,
    len: (f64, f64),
    size: (f64, f64),
) -> Vec<Event> {
    if per_day > 0.0 {
        poisson_events(rng, seconds, per_day, len, size)
    } else {
        Vec::new()
    }
}

/// The regional events: congestion as in the classic scenario, outages in proportion to the
/// failure rate (none when it is 0).
pub(super) fn regions(cfg: SimConfig) -> Vec<RegionEvents> {
    (0..REGIONS.len())
        .map(|r| {
            let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ (0xb40a_d000 + r as u64));
            RegionEvents {
                congestion: events(&mut rng, cfg.seconds, 3.0, (120.0, 1200.0), (0.3, 1.0)),
                outages: events(
                    &mut rng,
                    cfg.seconds,
                    OUTAGES_PER_FAILURE * cfg.failures_per_day,
                    (60.0, 600.0),
                    (1.0, 1.0),
                ),
            }
        })
        .collect()
}

/// What makes an appliance itself. Load peaks below 0.9 and cpu and bw below about 0.85 at
/// their busiest, so that a degradation towards 0.9–1 stays visible.
#[derive(Debug, Clone)]
struct Character {
    base_load: f64,
    capacity: f64,
    peak_hour: f64,
    cpu_base: f64,
    cpu_per_load: f64,
    mem_base: f64,
    mem_per_load: f64,
    bw_per_load: f64,
    sessions_max: f64,
    hsf_base: f64,
    hsf_per_load: f64,
    base_rtt: f64,
    jitter_ratio: f64,
    /// Noise amplitude of each signal.
    noise: [f64; N_METRICS],
    /// Chance of some loss in a second, and its typical level.
    loss_chance: f64,
    loss_level: f64,
}

impl Character {
    fn draw(rng: &mut ChaCha8Rng) -> Self {
        let noisy = if rng.gen_bool(0.2) { 3.0 } else { 1.0 };
        let lossy = rng.gen_bool(0.2);
        let mut noise = [0.0; N_METRICS];
        for v in &mut noise {
            *v = noisy * log_uniform(rng, 0.5, 2.0);
        }
        Self {
            base_load: rng.gen_range(0.05..=0.25),
            capacity: rng.gen_range(0.25..=0.65),
            peak_hour: rng.gen_range(17.0..=23.0),
            cpu_base: rng.gen_range(0.02..=0.15),
            cpu_per_load: rng.gen_range(0.3..=0.8),
            mem_base: rng.gen_range(0.15..=0.6),
            mem_per_load: rng.gen_range(0.02..=0.2),
            bw_per_load: rng.gen_range(0.4..=0.9),
            sessions_max: log_uniform(rng, 50.0, 5000.0),
            hsf_base: rng.gen_range(0.01..=0.3),
            hsf_per_load: rng.gen_range(0.05..=1.0),
            base_rtt: log_uniform(rng, 5.0, 150.0),
            jitter_ratio: rng.gen_range(0.01..=0.08),
            noise,
            loss_chance: if lossy {
                rng.gen_range(0.05..=0.3)
            } else {
                rng.gen_range(0.0..=0.01)
            },
            loss_level: if lossy {
                rng.gen_range(0.005..=0.05)
            } else {
                0.01
            },
        }
    }
}

/// A permanent change of one signal's baseline: added to cpu, mem, bw and loss, multiplying the
/// others.
#[derive(Debug, Clone, Copy)]
struct Shift {
    at: u64,
    metric: Metric,
    change: f64,
}

fn draw_shift(rng: &mut ChaCha8Rng, at: u64) -> Shift {
    let metric = any_metric(rng);
    let sign = if rng.gen_bool(0.5) { 1.0 } else { -1.0 };
    let change = match metric {
        Metric::Cpu | Metric::BwUtil => sign * rng.gen_range(0.05..=0.15),
        Metric::Mem => sign * rng.gen_range(0.05..=0.2),
        Metric::Loss => rng.gen_range(0.002..=0.02),
        Metric::Sessions => rng.gen_range(0.5..=1.5),
        Metric::HandshakeFailures => rng.gen_range(0.5..=3.0),
        Metric::RttMs | Metric::JitterMs => rng.gen_range(0.5..=2.5),
    };
    Shift { at, metric, change }
}

/// The benign anomalies and level shifts of one appliance, sorted by start.
fn draw_benign(
    rng: &mut ChaCha8Rng,
    cfg: SimConfig,
    tz: f64,
    with_anomalies: bool,
) -> (Vec<Anomaly>, Vec<Shift>) {
    let n = cfg.seconds;
    let mut out = Vec::new();
    let mut shifts = Vec::new();
    if !with_anomalies {
        return (out, shifts);
    }
    let families = cfg.benign;
    let mut push = |family: BenignFamily, e: &Event, what| {
        if families.has(family) {
            out.push(Anomaly {
                start: e.start,
                end: e.end,
                what,
            });
        }
    };
    // Short bursts of one signal.
    for e in events(rng, n, 6.0, (3.0, 120.0), (0.3, 1.0)) {
        let metric = any_metric(rng);
        let bad = bad_level(rng, metric);
        push(
            BenignFamily::Bursts,
            &e,
            Benign::degrade(metric, bad, e.size, 0.0),
        );
    }
    // Load peaks.
    for e in events(rng, n, 2.0, (300.0, 2400.0), (0.15, 0.5)) {
        push(BenignFamily::LoadPeaks, &e, Benign::Load(e.size));
    }
    // Ramps that plateau and stay for hours.
    for e in events(rng, n, 1.5, (2400.0, 21_600.0), (0.3, 1.0)) {
        let metric = if rng.gen_bool(0.3) {
            Metric::Mem
        } else {
            any_metric(rng)
        };
        let bad = bad_level(rng, metric);
        let ramp = rng.gen_range(300.0..=1800.0);
        push(
            BenignFamily::Ramps,
            &e,
            Benign::degrade(metric, bad, e.size, ramp),
        );
    }
    // Noisy sensors.
    for e in events(rng, n, 1.5, (120.0, 3600.0), (5.0, 10.0)) {
        let metric = any_metric(rng);
        push(
            BenignFamily::NoisySensors,
            &e,
            Benign::Noise(metric, e.size),
        );
    }
    // One column missing for minutes; every health column for seconds.
    for e in events(rng, n, 1.0, (60.0, 900.0), (0.0, 0.0)) {
        let metric = any_metric(rng);
        push(
            BenignFamily::MissingFields,
            &e,
            Benign::Missing(Some(metric)),
        );
    }
    for e in events(rng, n, 3.0, (1.0, 30.0), (0.0, 0.0)) {
        push(BenignFamily::MissingFields, &e, Benign::Missing(None));
    }
    // A daily batch job at this appliance's hour, on six appliances in ten.
    if rng.gen_bool(0.6) {
        let hour = rng.gen_range(0.0..24.0);
        let len = rng.gen_range(600.0..=3600.0);
        let tz_s = (tz * 3600.0) as i64;
        let first_day = (cfg.start + tz_s).div_euclid(86_400) - 1;
        let last_day = (cfg.start + tz_s + n as i64).div_euclid(86_400) + 1;
        for day in first_day..=last_day {
            let at = day * 86_400 + (hour * 3600.0) as i64 - tz_s + rng.gen_range(-300..=300);
            let t = at - cfg.start;
            if t < 0 || t >= n as i64 {
                continue;
            }
            let e = Event {
                start: t as u64,
                end: t as u64 + (len * rng.gen_range(0.8..=1.2)) as u64,
                size: 0.0,
            };
            for (metric, bad, amount) in [
                (
                    Metric::Cpu,
                    rng.gen_range(0.85..=0.98),
                    rng.gen_range(0.6..=0.9),
                ),
                (Metric::Mem, 0.95, rng.gen_range(0.2..=0.5)),
                (Metric::BwUtil, 0.95, rng.gen_range(0.4..=0.8)),
            ] {
                push(
                    BenignFamily::BatchJobs,
                    &e,
                    Benign::degrade(metric, bad, amount, 60.0),
                );
            }
        }
    }
    // Level shifts.
    for e in events(rng, n, 0.5, (0.0, 0.0), (0.0, 0.0)) {
        let shift = draw_shift(rng, e.start);
        if families.has(BenignFamily::LevelShifts) {
            shifts.push(shift);
        }
    }
    out.sort_by_key(|a| a.start);
    (out, shifts)
}

/// A failure whose precursor is in progress.
#[derive(Debug, Clone)]
struct Pending {
    plan: FailurePlan,
    begin: u64,
    fail_at: u64,
    /// The intermittent episode in progress: until when, and its size.
    episode: (u64, f64),
}

/// Simulates appliance `i` (identity `info`, region events `regions`), returning the plans of
/// its failures with precursors in the order of their labels.
pub(super) fn appliance(
    cfg: SimConfig,
    regions: &[RegionEvents],
    info: ApplianceInfo,
    i: usize,
) -> (ApplianceRun, Vec<FailurePlan>) {
    simulate(cfg, regions, info, i, true)
}

fn simulate(
    cfg: SimConfig,
    regions: &[RegionEvents],
    info: ApplianceInfo,
    i: usize,
    with_anomalies: bool,
) -> (ApplianceRun, Vec<FailurePlan>) {
    let mut a = Appliance::new(cfg, regions, info, i, with_anomalies);
    for t in 0..cfg.seconds {
        a.step(t);
    }
    let run = ApplianceRun {
        info: a.info,
        rows: a.rows,
        failures: a.failures,
    };
    (run, a.plans)
}

/// One appliance as the simulation runs, a second at a time: its character, its random
/// stream, the events drawn for it, and what has happened so far.
struct Appliance<'a> {
    cfg: SimConfig,
    region: &'a RegionEvents,
    /// Hours from UTC.
    tz: f64,
    info: ApplianceInfo,
    appliance: u32,
    c: Character,
    rng: ChaCha8Rng,
    anomalies: Vec<Anomaly>,
    shifts: Vec<Shift>,
    /// Failures per second while up.
    hazard: f64,
    rows: Vec<Row>,
    failures: Vec<FailureLabel>,
    plans: Vec<FailurePlan>,
    pending: Option<Pending>,
    down_until: Option<u64>,
    ar_load: f64,
    ar_rtt: f64,
    mem_walk: f64,
    /// Level shifts so far: added to fractions, multiplying the others.
    add: [f64; N_METRICS],
    mul: [f64; N_METRICS],
    next_shift: usize,
    /// Anomalies started and not yet ended, by index.
    next_anomaly: usize,
    live: Vec<usize>,
}

impl<'a> Appliance<'a> {
    fn new(
        cfg: SimConfig,
        regions: &'a [RegionEvents],
        info: ApplianceInfo,
        i: usize,
        with_anomalies: bool,
    ) -> Self {
        let tz = REGIONS[i % REGIONS.len()].1;
        let mut rng = ChaCha8Rng::seed_from_u64(
            cfg.seed
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add(i as u64 + 1)
                ^ 0xb40a_d5ce_0000_0000,
        );
        let c = Character::draw(&mut rng);
        let (anomalies, shifts) = draw_benign(&mut rng, cfg, tz, with_anomalies);
        Self {
            cfg,
            region: &regions[i % REGIONS.len()],
            tz,
            info,
            appliance: u32::try_from(i).unwrap_or(u32::MAX),
            mem_walk: c.mem_base,
            c,
            rng,
            anomalies,
            shifts,
            hazard: cfg.failures_per_day / 86_400.0,
            rows: Vec::with_capacity(cfg.seconds as usize),
            failures: Vec::new(),
            plans: Vec::new(),
            pending: None,
            down_until: None,
            ar_load: 0.0,
            ar_rtt: 0.0,
            add: [0.0; N_METRICS],
            mul: [1.0; N_METRICS],
            next_shift: 0,
            next_anomaly: 0,
            live: Vec::new(),
        }
    }

    /// Second `t`: events that start, whether the appliance is down, and if not its row.
    fn step(&mut self, t: u64) {
        let ts = self.cfg.start + t as i64;
        self.apply_shifts(t);
        while self.next_anomaly < self.anomalies.len()
            && self.anomalies[self.next_anomaly].start <= t
        {
            self.live.push(self.next_anomaly);
            self.next_anomaly += 1;
        }
        let anomalies = &self.anomalies;
        self.live.retain(|&k| anomalies[k].end > t);
        if self.is_down(t, ts) {
            self.rows.push(down_row(ts, self.appliance));
            return;
        }
        // Effects of the anomalies in progress on load, noise and missing columns.
        let mut load_extra = 0.0;
        let mut nf = [1.0; N_METRICS];
        let mut missing = [false; N_METRICS];
        for &k in &self.live {
            match self.anomalies[k].what {
                Benign::Load(s) => load_extra += s,
                Benign::Noise(m, f) => nf[m as usize] *= f,
                Benign::Missing(Some(m)) => missing[m as usize] = true,
                Benign::Missing(None) => missing[..5].fill(true),
                Benign::Degrade { .. } => {}
            }
        }
        let mut v = self.normal(t, ts, load_extra, &nf);
        self.degrade(t, &mut v);
        self.push_row(ts, &v, missing);
    }

    fn apply_shifts(&mut self, t: u64) {
        let (add, mul) = (&mut self.add, &mut self.mul);
        while self.next_shift < self.shifts.len() && self.shifts[self.next_shift].at <= t {
            let s = self.shifts[self.next_shift];
            let m = s.metric as usize;
            match s.metric {
                Metric::Cpu | Metric::Mem | Metric::BwUtil => {
                    add[m] = (add[m] + s.change).clamp(-0.3, 0.3);
                }
                // Loss shifts come and go: a new one replaces the last.
                Metric::Loss => add[m] = if add[m] > 0.0 { 0.0 } else { s.change },
                _ => mul[m] = (mul[m] * s.change).clamp(0.2, 5.0),
            }
            self.next_shift += 1;
        }
    }

    fn label(&mut self, ts: i64, kind: &str, precursor_s: Option<u32>) {
        let label = super::label(&self.info.id, ts, kind, precursor_s);
        self.failures.push(label);
    }

    /// Outages, failures that come due and new failures: whether second `t` is down.
    fn is_down(&mut self, t: u64, ts: i64) -> bool {
        // Regional outage overrides everything.
        let outage = active(&self.region.outages, t).is_some();
        if self.down_until.is_some_and(|until| t >= until) && !outage {
            self.down_until = None;
            self.mem_walk = self.c.mem_base + self.rng.gen_range(-0.05..=0.05);
            self.ar_load = 0.0;
            self.ar_rtt = 0.0;
        }
        let was_down = self.rows.last().is_some_and(|r: &Row| r.down);
        if outage && self.down_until.is_none() {
            // The precursor in progress (if any) is cut short by the outage.
            self.pending = None;
            if !was_down && t > 0 {
                self.label(ts, REGIONAL_OUTAGE, None);
            }
        }
        if outage {
            self.down_until = Some(self.down_until.unwrap_or(t).max(t + 1));
        }
        if let Some(p) = self.pending.take_if(|p| t >= p.fail_at) {
            self.down_until = Some(t + self.rng.gen_range(60..=600));
            let precursor_s = u32::try_from(p.fail_at - p.begin).unwrap_or(u32::MAX);
            self.label(ts, p.plan.kind(), Some(precursor_s));
            self.plans.push(p.plan);
        }
        if self.down_until.is_some() {
            return true;
        }
        if self.pending.is_none() && t > 0 && self.rng.r#gen::<f64>() < self.hazard {
            if self.rng.gen_bool(SUDDEN_SHARE) {
                self.down_until = Some(t + self.rng.gen_range(60..=600));
                self.label(ts, POWER_LOSS, None);
                return true;
            }
            let plan = draw_plan(&mut self.rng);
            self.pending = Some(Pending {
                begin: t,
                fail_at: t + plan.precursor_s,
                plan,
                episode: (0, 0.0),
            });
        }
        false
    }

    /// This appliance's normal behaviour at second `t`, with `load_extra` from load peaks and
    /// each signal's noise multiplied by `nf`.
    fn normal(&mut self, t: u64, ts: i64, load_extra: f64, nf: &[f64; N_METRICS]) -> [f64; 8] {
        let (c, rng, add, mul) = (&self.c, &mut self.rng, &self.add, &self.mul);
        let noise = |m: Metric| c.noise[m as usize] * nf[m as usize];
        let hour = ((ts as f64 / 3600.0) + self.tz).rem_euclid(24.0);
        let daily = 0.5 + 0.5 * (std::f64::consts::TAU * (hour - c.peak_hour) / 24.0).cos();
        self.ar_load = 0.995 * self.ar_load + 0.006 * normal(rng);
        let load = (c.base_load + c.capacity * daily + self.ar_load + load_extra).clamp(0.0, 1.0);
        let cpu =
            c.cpu_base + c.cpu_per_load * load + add[0] + 0.02 * noise(Metric::Cpu) * normal(rng);
        self.mem_walk =
            (self.mem_walk + 0.0002 * normal(rng)).clamp(c.mem_base - 0.1, c.mem_base + 0.1);
        let mem = self.mem_walk
            + c.mem_per_load * load
            + add[1]
            + 0.003 * noise(Metric::Mem) * normal(rng);
        let bw = c.bw_per_load * load + add[2] + 0.02 * noise(Metric::BwUtil) * normal(rng);
        let sessions = c.sessions_max
            * (0.1 + 0.9 * load)
            * mul[3]
            * (1.0 + 0.02 * noise(Metric::Sessions) * normal(rng)).max(0.0);
        let hsf_rate = (c.hsf_base + c.hsf_per_load * load)
            * mul[4]
            * (1.0 + 0.3 * noise(Metric::HandshakeFailures) * normal(rng)).max(0.0);
        self.ar_rtt = 0.98 * self.ar_rtt + 0.01 * c.noise[5] * normal(rng);
        let mut rtt_factor = 1.0 + 0.25 * ((bw - 0.7) / 0.3).max(0.0) + self.ar_rtt;
        let mut jitter_factor = 1.0;
        let mut loss = add[7];
        if rng.r#gen::<f64>() < (c.loss_chance * nf[7]).min(1.0) {
            loss += c.loss_level * rng.gen_range(0.5..=1.5);
        }
        if let Some((_, s)) = active(&self.region.congestion, t)
            .filter(|_| self.cfg.benign.has(BenignFamily::Congestion))
        {
            rtt_factor += 0.3 + 0.7 * s;
            jitter_factor += 1.0 + s;
            loss = loss.max(0.005 + 0.025 * s * rng.r#gen::<f64>());
        }
        let rtt = c.base_rtt
            * mul[5]
            * rtt_factor.max(0.3)
            * (1.0 + 0.05 * noise(Metric::RttMs) * normal(rng)).max(0.5);
        let jitter = c.jitter_ratio * rtt * jitter_factor * mul[6]
            + 0.5 * noise(Metric::JitterMs) * normal(rng).abs();
        [cpu, mem, bw, sessions, hsf_rate, rtt, jitter, loss]
    }

    /// Benign anomalies that move a signal, then the precursor of the pending failure.
    fn degrade(&mut self, t: u64, v: &mut [f64; N_METRICS]) {
        for &k in &self.live {
            if let Benign::Degrade { d, amount, ramp } = self.anomalies[k].what {
                let since = (t - self.anomalies[k].start) as f64;
                let x = if ramp > 0.0 {
                    (since / ramp).min(1.0)
                } else {
                    1.0
                };
                degrade(v, d.metric, d.bad, amount * x);
            }
        }
        let Some(p) = self.pending.as_mut() else {
            return;
        };
        let len = (p.fail_at - p.begin).max(1) as f64;
        let elapsed = (t - p.begin) as f64;
        let u = elapsed / len;
        if p.plan.curve == Curve::Intermittent {
            if t >= p.episode.0 {
                p.episode.1 = 0.0;
            }
            if p.episode.1 == 0.0 && self.rng.r#gen::<f64>() < ((2.0 + 12.0 * u * u) / len).min(0.5)
            {
                let most = (len * (0.01 + 0.04 * u)).clamp(1.0, 120.0);
                p.episode = (
                    t + self.rng.gen_range(1.0..=most.max(1.0)).round() as u64,
                    (0.3 + 0.7 * u) * self.rng.gen_range(0.7..=1.0),
                );
            }
        }
        let x = p.plan.amount(u, elapsed, p.episode.1);
        for s in &p.plan.signals {
            degrade(v, s.metric, s.bad, x * s.weight);
        }
    }

    /// The row of second `ts`: values rounded and clamped as an agent reports them.
    fn push_row(&mut self, ts: i64, v: &[f64; N_METRICS], missing: [bool; N_METRICS]) {
        let loss = v[7].clamp(0.0, 1.0);
        let mut values = [
            round(v[0].clamp(0.0, 1.0), 4),
            round(v[1].clamp(0.0, 1.0), 4),
            round(v[2].clamp(0.0, 1.0), 4),
            v[3].max(0.0).round(),
            poisson(&mut self.rng, v[4].max(0.0)),
            round(v[5].clamp(0.01, 60_000.0), 2),
            round(v[6].clamp(0.01, 60_000.0), 2),
            round(loss, 4),
        ];
        if loss >= 0.99 {
            // Every probe lost: no round trip to report.
            values[Metric::RttMs as usize] = f64::NAN;
            values[Metric::JitterMs as usize] = f64::NAN;
        }
        for (value, gone) in values.iter_mut().zip(missing) {
            if gone {
                *value = f64::NAN;
            }
        }
        self.rows.push(Row {
            ts,
            appliance: self.appliance,
            values,
            down: false,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::super::{Scenario, Simulator};
    use super::*;

    fn broad(appliances: usize, hours: u64, seed: u64, failures_per_day: f64) -> SimConfig {
        SimConfig {
            failures_per_day,
            scenario: Scenario::Broad,
            ..SimConfig::new(appliances, hours * 3600, seed)
        }
    }

    /// Runs every appliance, with its plans.
    fn runs(cfg: SimConfig) -> Vec<(ApplianceRun, Vec<FailurePlan>)> {
        let sim = Simulator::new(cfg);
        (0..cfg.appliances)
            .map(|i| appliance(cfg, &sim.regions, sim.info(i), i))
            .collect()
    }

    fn bits(r: &ApplianceRun) -> Vec<(i64, [u64; N_METRICS], bool)> {
        r.rows
            .iter()
            .map(|x| (x.ts, x.values.map(f64::to_bits), x.down))
            .collect()
    }

    #[test]
    fn deterministic_for_a_seed_and_different_across_seeds() {
        let a = Simulator::new(broad(3, 2, 7, 24.0));
        let b = Simulator::new(broad(3, 2, 7, 24.0));
        let c = Simulator::new(broad(3, 2, 8, 24.0));
        let classic = Simulator::new(SimConfig {
            failures_per_day: 24.0,
            ..SimConfig::new(3, 2 * 3600, 7)
        });
        for i in 0..3 {
            let (ra, rb, rc) = (a.appliance(i), b.appliance(i), c.appliance(i));
            assert_eq!(ra.rows.len(), 2 * 3600);
            assert_eq!(bits(&ra), bits(&rb));
            assert_eq!(ra.failures, rb.failures);
            assert_ne!(bits(&ra), bits(&rc));
            assert_ne!(bits(&ra), bits(&classic.appliance(i)));
        }
    }

    #[test]
    fn failures_match_down_transitions_and_values_are_valid() {
        let kinds: BTreeSet<&str> = Metric::ALL
            .into_iter()
            .map(kind_name)
            .chain([POWER_LOSS, REGIONAL_OUTAGE])
            .collect();
        let mut total = 0;
        for (run, plans) in runs(broad(4, 6, 1, 48.0)) {
            let starts = crate::risk::simulate::tests::down_starts(&run);
            let labelled: Vec<i64> = run.failures.iter().map(|f| f.ts).collect();
            assert_eq!(starts, labelled);
            total += starts.len();
            let with: Vec<&FailureLabel> = run
                .failures
                .iter()
                .filter(|f| f.precursor == Some(true))
                .collect();
            assert_eq!(with.len(), plans.len());
            for (f, p) in with.iter().zip(&plans) {
                assert_eq!(f.kind, p.kind());
                assert_eq!(f.precursor_s, Some(p.precursor_s as u32));
                assert!((10..=1800).contains(&p.precursor_s), "{}", p.precursor_s);
            }
            for f in &run.failures {
                assert!(kinds.contains(f.kind.as_str()), "{}", f.kind);
                assert_eq!(f.precursor == Some(true), f.precursor_s.is_some());
            }
            for r in &run.rows {
                if r.down {
                    assert_eq!(r.get(Metric::Loss), Some(1.0));
                    assert!(r.values[..7].iter().all(|v| v.is_nan()));
                    continue;
                }
                for m in [Metric::Cpu, Metric::Mem, Metric::BwUtil, Metric::Loss] {
                    if let Some(v) = r.get(m) {
                        assert!((0.0..=1.0).contains(&v), "{m:?} {v}");
                    }
                }
                for m in [Metric::Sessions, Metric::HandshakeFailures] {
                    if let Some(v) = r.get(m) {
                        assert!(v >= 0.0 && v.fract() == 0.0, "{m:?} {v}");
                    }
                }
                for m in [Metric::RttMs, Metric::JitterMs] {
                    if let Some(v) = r.get(m) {
                        assert!(v > 0.0 && v <= 600_000.0, "{m:?} {v}");
                    }
                }
                if r.get(Metric::Loss).is_some_and(|l| l >= 0.99) {
                    assert!(r.get(Metric::RttMs).is_none() && r.get(Metric::JitterMs).is_none());
                }
            }
        }
        assert!(total > 10, "expected failures at 48/day, got {total}");
    }

    #[test]
    fn every_family_curve_and_precursor_length_appears() {
        let mut kinds = BTreeSet::new();
        let mut curves = Vec::new();
        let (mut shortest, mut longest) = (u64::MAX, 0);
        let (mut with, mut without) = (0, 0);
        for (run, plans) in runs(broad(6, 12, 3, 96.0)) {
            for p in &plans {
                kinds.insert(p.kind());
                if !curves.contains(&p.curve) {
                    curves.push(p.curve);
                }
                shortest = shortest.min(p.precursor_s);
                longest = longest.max(p.precursor_s);
                assert!(p.signals.len() <= 3);
            }
            with += plans.len();
            without += run.failures.len() - plans.len();
        }
        assert_eq!(kinds.len(), 8, "{kinds:?}");
        assert_eq!(curves.len(), Curve::ALL.len(), "{curves:?}");
        assert!(shortest < 60 && longest > 600, "{shortest} {longest}");
        // About a quarter without precursors.
        let share = without as f64 / (with + without) as f64;
        assert!(
            (0.1..0.45).contains(&share),
            "{without} of {}",
            with + without
        );
    }

    /// Minutes where some signal is far from where it was over the 10 minutes before, or a
    /// column is missing.
    fn abnormal_minutes(run: &ApplianceRun) -> usize {
        let minutes: Vec<[f64; N_METRICS]> = run
            .rows
            .chunks(60)
            .map(|c| {
                let mut out = [0.0; N_METRICS];
                for (m, o) in out.iter_mut().enumerate() {
                    *o = c.iter().map(|r| r.values[m]).sum::<f64>() / c.len() as f64;
                }
                out
            })
            .collect();
        let median = |xs: &mut Vec<f64>| {
            xs.sort_by(f64::total_cmp);
            xs[xs.len() / 2]
        };
        (10..minutes.len())
            .filter(|&k| {
                let now = minutes[k];
                if now.iter().any(|v| v.is_nan()) {
                    return true;
                }
                (0..N_METRICS).any(|m| {
                    let mut before: Vec<f64> = minutes[k - 10..k]
                        .iter()
                        .map(|x| x[m])
                        .filter(|v| !v.is_nan())
                        .collect();
                    if before.is_empty() {
                        return false;
                    }
                    let b = median(&mut before);
                    match Metric::ALL[m] {
                        Metric::Sessions => now[m] < 0.6 * b || now[m] > 1.6 * b + 10.0,
                        Metric::HandshakeFailures => now[m] > b + 3.0,
                        Metric::RttMs | Metric::JitterMs => now[m] > 2.0 * b + 1.0,
                        _ => (now[m] - b).abs() > 0.15,
                    }
                })
            })
            .count()
    }

    #[test]
    fn benign_anomalies_look_abnormal_and_never_fail() {
        let cfg = broad(4, 12, 2, 0.0);
        let sim = Simulator::new(cfg);
        let (mut with, mut without) = (0, 0);
        for i in 0..cfg.appliances {
            let (run, plans) = simulate(cfg, &sim.regions, sim.info(i), i, true);
            assert!(run.failures.is_empty() && plans.is_empty());
            assert!(run.rows.iter().all(|r| !r.down));
            with += abnormal_minutes(&run);
            let (quiet, _) = simulate(cfg, &sim.regions, sim.info(i), i, false);
            without += abnormal_minutes(&quiet);
        }
        // Several anomalies per appliance-day, each abnormal for a minute or more (regional
        // congestion and noisy appliances make some abnormal minutes without them).
        assert!(
            with >= 2 * without && with - without >= 40,
            "{with} abnormal minutes, {without} without anomalies"
        );
    }

    #[test]
    fn families_left_out_drop_only_their_own_anomalies() {
        let cfg = broad(4, 24, 7, 0.0);
        let sim = Simulator::new(cfg);
        let left_out = [
            BenignFamily::Bursts,
            BenignFamily::Ramps,
            BenignFamily::LevelShifts,
        ];
        let with = |benign| SimConfig { benign, ..cfg };
        let spans = |a: &Appliance<'_>, keep: &dyn Fn(&Anomaly) -> bool| -> Vec<(u64, u64)> {
            a.anomalies
                .iter()
                .filter(|x| keep(x))
                .map(|x| (x.start, x.end))
                .collect()
        };
        // Bursts step at once, plateauing ramps take 5 min or more; batch jobs take a minute.
        let burst_or_ramp = |x: &Anomaly| matches!(x.what, Benign::Degrade { ramp, .. } if ramp == 0.0 || ramp >= 300.0);
        let mut dropped = 0;
        for i in 0..cfg.appliances {
            let all = Appliance::new(cfg, &sim.regions, sim.info(i), i, true);
            let some = Appliance::new(
                with(BenignFamilies::without(&left_out)),
                &sim.regions,
                sim.info(i),
                i,
                true,
            );
            let none = Appliance::new(
                with(BenignFamilies::without(&BenignFamily::ALL)),
                &sim.regions,
                sim.info(i),
                i,
                true,
            );
            assert_eq!(spans(&some, &|_| true), spans(&all, &|x| !burst_or_ramp(x)));
            assert!(some.shifts.is_empty() && none.shifts.is_empty());
            assert!(none.anomalies.is_empty());
            assert_eq!(some.c.base_rtt, all.c.base_rtt);
            dropped += all.anomalies.len() - some.anomalies.len();
        }
        assert!(
            dropped >= 10,
            "only {dropped} bursts and ramps in 4 appliance-days"
        );
    }
}
