//! Features over sliding windows: what the model sees of an appliance or path at one second.
//!
//! Pure and allocation-free: the window is up to [`WINDOW_S`] one-second samples ending at
//! "now", passed as two slices (a ring buffer's two halves, or one slice and an empty one), plus
//! the recent failure history. Training, `score`, `evaluate` and live scoring all call
//! [`compute`], so a model sees the same numbers everywhere.
//!
//! Missing values are skipped; a statistic with no values falls back to a neutral default
//! (e.g. a ratio of 1, a slope of 0). Paths have no health metrics, so their health features
//! take those defaults and their risk rests on network evidence alone.

pub mod baseline;
pub mod window;

use self::baseline::{Baseline, Levels, percentile};
use self::window::{Sample, WINDOW_S, Window};
use crate::risk::data::telemetry::Metric;

/// The short span: "now".
const SHORT: usize = 10;
/// The medium span: the last minute.
const MEDIUM: usize = 60;
/// Loss at or above this counts as a loss event.
const LOSS_EVENT: f64 = 0.05;

/// Number of features.
pub const N_FEATURES: usize = 50;

/// The features of the first models, each about one signal: they learn the shapes of the
/// failures they were shown (a model card's leave-one-kind-out table shows how few others
/// they catch).
pub const N_CLASSIC: usize = 34;

/// Feature names, in vector order (stored in model files and checked on load).
pub const FEATURE_NAMES: [&str; N_FEATURES] = [
    "cpu_mean10",
    "cpu_mean60",
    "cpu_slope60",
    "cpu_std60",
    "mem_mean10",
    "mem_slope60",
    "mem_slope300",
    "mem_rise300",
    "bw_mean10",
    "bw_mean60",
    "bw_slope60",
    "sessions_change300",
    "hsf_mean10",
    "hsf_mean60",
    "rtt_mean10",
    "rtt_ratio10",
    "rtt_p95_ratio60",
    "rtt_slope60_rel",
    "rtt_slope300_rel",
    "rtt_cv60",
    "jitter_mean10",
    "jitter_rel10",
    "jitter_mean60",
    "loss_mean10",
    "loss_mean60",
    "loss_max60",
    "loss_events60",
    "rtt_missing60",
    "since_recovery",
    "failures_1h",
    "rtt_vs_hour",
    "rtt_p95_vs_hour",
    "loss_events300",
    "since_loss_event",
    "anom_max10",
    "anom_second10",
    "anom_count10",
    "anom_max60",
    "anom_trend60",
    "anom_trend300",
    "anom_persist",
    "anom_worsening",
    "anom_known",
    "z60_cpu",
    "z60_mem",
    "z60_bw",
    "z60_hsf",
    "z60_rtt",
    "z60_jitter",
    "z60_loss",
];

/// End of the signal-agnostic anomaly features (they start at [`N_CLASSIC`]).
const N_AGNOSTIC_END: usize = 43;

/// Each signal's 60 s z-score against its own level, barely capped: what a novelty term
/// ([`crate::risk::model::novelty`]) compares with how far each signal strays in normal
/// operation. They name their signal, so no built-in supervised feature set includes them.
pub const SIGNAL_Z60: std::ops::Range<usize> = N_AGNOSTIC_END..N_FEATURES;

/// The failure history features, which name no signal either.
pub const HISTORY: [&str; 2] = ["since_recovery", "failures_1h"];

/// The signal-agnostic features are [`HISTORY`] and every feature after the classic ones: how
/// abnormal the subject is against its own baseline ([`Levels`]), on how many signals, for how
/// long and whether it gets worse, with no feature naming a signal. A model on these alone
/// cannot learn "memory near full", only "abnormal and getting worse", which is what carries
/// over to failure kinds it was never shown.
pub fn agnostic() -> impl Iterator<Item = &'static str> {
    HISTORY
        .iter()
        .chain(&FEATURE_NAMES[N_CLASSIC..N_AGNOSTIC_END])
        .copied()
}

/// A feature vector.
pub type Features = [f64; N_FEATURES];

/// Recent failure history of the subject, as of "now".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct History {
    /// Seconds since the last failure ended (the subject came back up); `None` if none known.
    pub since_recovery_s: Option<u64>,
    /// Failures that started in the last hour.
    pub failures_last_hour: u32,
}

/// History saturates after an hour: older failures say little about the next minute.
const HISTORY_S: u64 = 3600;

/// Running sums over (t, x) pairs, skipping missing values; `t` is seconds relative to now.
#[derive(Debug, Clone, Copy)]
struct Acc {
    n: f64,
    sx: f64,
    sxx: f64,
    st: f64,
    stt: f64,
    stx: f64,
    min: f64,
    max: f64,
}

impl Acc {
    const EMPTY: Acc = Acc {
        n: 0.0,
        sx: 0.0,
        sxx: 0.0,
        st: 0.0,
        stt: 0.0,
        stx: 0.0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
    };

    /// Count and sum only: for means.
    #[inline]
    fn add_mean(&mut self, x: f32) {
        if !x.is_nan() {
            self.n += 1.0;
            self.sx += f64::from(x);
        }
    }

    /// Adds what a slope needs (and the mean).
    #[inline]
    fn add_lin(&mut self, t: f64, x: f32) {
        if !x.is_nan() {
            let x = f64::from(x);
            self.n += 1.0;
            self.sx += x;
            self.st += t;
            self.stt += t * t;
            self.stx += t * x;
        }
    }

    /// Adds everything: mean, slope, standard deviation.
    #[inline]
    fn add_full(&mut self, t: f64, x: f32) {
        if !x.is_nan() {
            self.add_lin(t, x);
            self.sxx += f64::from(x) * f64::from(x);
        }
    }

    /// Tracks the extremes too (after one of the `add_*`).
    #[inline]
    fn add_range(&mut self, x: f32) {
        if !x.is_nan() {
            self.min = self.min.min(f64::from(x));
            self.max = self.max.max(f64::from(x));
        }
    }

    fn mean(&self) -> Option<f64> {
        (self.n > 0.0).then(|| self.sx / self.n)
    }

    /// Population standard deviation.
    fn std(&self) -> Option<f64> {
        let m = self.mean()?;
        Some((self.sxx / self.n - m * m).max(0.0).sqrt())
    }

    /// Least-squares slope per second; 0 with fewer than two values.
    fn slope(&self) -> f64 {
        let den = self.n * self.stt - self.st * self.st;
        if self.n < 2.0 || den <= 0.0 {
            0.0
        } else {
            (self.n * self.stx - self.st * self.sx) / den
        }
    }

    fn min(&self) -> Option<f64> {
        (self.n > 0.0).then_some(self.min)
    }

    fn max(&self) -> Option<f64> {
        (self.n > 0.0).then_some(self.max)
    }
}

/// Feeds the last `k` samples of `w` to `f(t, sample)`, `t` = seconds before now (<= 0).
/// Two plain loops rather than a chained iterator: this is the scorer's innermost loop.
#[inline]
fn each_tail(w: &Window<'_>, k: usize, mut f: impl FnMut(f64, &Sample)) {
    let (a, b) = w.tail(k);
    let mut t = 1.0 - (a.len() + b.len()) as f64;
    for s in a {
        f(t, s);
        t += 1.0;
    }
    for s in b {
        f(t, s);
        t += 1.0;
    }
}

const CPU: usize = Metric::Cpu as usize;
const MEM: usize = Metric::Mem as usize;
const BW: usize = Metric::BwUtil as usize;
const SESS: usize = Metric::Sessions as usize;
const HSF: usize = Metric::HandshakeFailures as usize;
const RTT: usize = Metric::RttMs as usize;
const JIT: usize = Metric::JitterMs as usize;
const LOSS: usize = Metric::Loss as usize;

/// Signals whose rise is bad, with the smallest spread a level is given, absolute and
/// relative to the level: a signal flat for an hour (no loss at all) would otherwise make
/// its first blip infinitely abnormal. Sessions are left out: they rise and fall with load.
const ANOMALY: [(usize, f64, f64); 7] = [
    (CPU, 0.03, 0.0),
    (MEM, 0.01, 0.0),
    (BW, 0.03, 0.0),
    (HSF, 1.0, 0.0),
    (RTT, 0.5, 0.05),
    (JIT, 0.3, 0.1),
    (LOSS, 0.01, 0.0),
];
/// A signal this many spreads above its level counts as abnormal.
const ABNORMAL: f64 = 3.0;
/// Anomaly scores are clamped to +-this: beyond, "very abnormal" is all a model needs.
const Z_CAP: f64 = 50.0;
/// The per-signal z-scores ([`SIGNAL_Z60`]) are clamped to +-this only to stay finite and
/// bounded: a novelty term needs to tell 60 spreads from 600.
const Z_SIGNAL_CAP: f64 = 10_000.0;

/// Computes the feature vector of a window, the failure history and the long-term baseline
/// (see [`baseline`]).
pub fn compute(w: &Window<'_>, h: History, b: &Baseline) -> Features {
    // One pass per span, each computing only the statistics the features use: this function
    // runs for every subject every second, so its passes are the scorer's cost.
    let short = short_means(w);
    let medium = MediumSpan::over(w);
    let long = LongSpan::over(w);
    // "Now" is the last 10 s, or the last minute when those 10 s have no value.
    let m10 = |i: usize| short[i].mean().or_else(|| medium.acc[i].mean());
    let anomaly = anomaly(&scales(&b.levels), &m10, &medium.acc, &long.acc);
    let mut f = [0.0; N_FEATURES];
    f[..N_CLASSIC].copy_from_slice(&classic(&m10, &medium, &long, h, b.rtt));
    f[N_CLASSIC..].copy_from_slice(&anomaly.features());
    f
}

/// The short span only gives "now": each signal's mean.
fn short_means(w: &Window<'_>) -> [Acc; 8] {
    let mut short = [Acc::EMPTY; 8];
    each_tail(w, SHORT, |_, s| {
        for (acc, &x) in short.iter_mut().zip(s) {
            acc.add_mean(x);
        }
    });
    short
}

/// What the features take from the last minute.
struct MediumSpan {
    /// Per signal, the sums of [`add_medium`].
    acc: [Acc; 8],
    /// 95th percentile of the rtt values present.
    rtt_p95: Option<f64>,
    /// Share of the loss values present that are loss events (0 with none).
    loss_events: f64,
    /// Share of the seconds without an rtt (0 for an empty window).
    rtt_missing: f64,
}

impl MediumSpan {
    /// One pass over the last minute; the rtt values wait on the stack for their percentile.
    fn over(w: &Window<'_>) -> Self {
        let mut acc = [Acc::EMPTY; 8];
        let mut rtts = [0f64; MEDIUM];
        let mut n_rtt = 0usize;
        let mut loss_events = 0.0;
        let mut len = 0.0;
        each_tail(w, MEDIUM, |t, s| {
            len += 1.0;
            add_medium(&mut acc, t, s);
            if !s[RTT].is_nan() {
                rtts[n_rtt] = f64::from(s[RTT]);
                n_rtt += 1;
            }
            if f64::from(s[LOSS]) >= LOSS_EVENT {
                loss_events += 1.0;
            }
        });
        Self {
            acc,
            rtt_p95: percentile(&mut rtts[..n_rtt], 0.95),
            loss_events: share(loss_events, acc[LOSS].n),
            rtt_missing: if len > 0.0 {
                1.0 - n_rtt as f64 / len
            } else {
                0.0
            },
        }
    }
}

/// Per signal, only the sums its minute features use: a standard deviation for cpu and rtt,
/// a slope for the others but sessions, loss's maximum.
#[inline]
fn add_medium(acc: &mut [Acc; 8], t: f64, s: &Sample) {
    acc[CPU].add_full(t, s[CPU]);
    acc[MEM].add_lin(t, s[MEM]);
    acc[BW].add_lin(t, s[BW]);
    acc[SESS].add_mean(s[SESS]);
    acc[HSF].add_lin(t, s[HSF]);
    acc[RTT].add_full(t, s[RTT]);
    acc[JIT].add_lin(t, s[JIT]);
    acc[LOSS].add_lin(t, s[LOSS]);
    acc[LOSS].add_range(s[LOSS]);
}

/// `count` of `of` values present (0 with none): `Acc::n` counts only the values present.
fn share(count: f64, of: f64) -> f64 {
    if of > 0.0 { count / of } else { 0.0 }
}

/// What the features take from the whole window.
struct LongSpan {
    /// Every signal's slope sums (the features read the [`ANOMALY`] signals' slopes and the
    /// sessions' mean), and memory's range.
    acc: [Acc; 8],
    /// Share of the loss values present that are loss events (0 with none).
    loss_events: f64,
    /// Age of the last loss event as a share of the window (1 with none).
    since_loss_event: f64,
}

impl LongSpan {
    /// One pass over the window.
    fn over(w: &Window<'_>) -> Self {
        let mut lin = Lanes::default();
        let mut mem = Acc::EMPTY;
        let (mut loss_events, mut last_event) = (0.0, None);
        each_tail(w, WINDOW_S, |t, s| {
            lin.add(t, s);
            mem.add_range(s[MEM]);
            // A missing loss is NaN, never an event.
            if f64::from(s[LOSS]) >= LOSS_EVENT {
                loss_events += 1.0;
                last_event = Some(-t);
            }
        });
        let mut acc: [Acc; 8] = std::array::from_fn(|m| lin.acc(m));
        (acc[MEM].min, acc[MEM].max) = (mem.min, mem.max);
        Self {
            acc,
            loss_events: share(loss_events, acc[LOSS].n),
            since_loss_event: last_event.map_or(1.0, |age: f64| age / WINDOW_S as f64),
        }
    }
}

/// [`Acc::add_lin`]'s sums for all eight signals at once, one array per sum, without a branch
/// per value: the long pass is the scorer's largest cost, and this layout lets the compiler
/// add several signals in one instruction. A missing value adds zeros, which leaves every
/// sum exactly as skipping it would (no sum is ever -0.0), so the features are bit for bit
/// those of `add_lin`.
#[derive(Default)]
struct Lanes {
    n: [f64; 8],
    sx: [f64; 8],
    st: [f64; 8],
    stt: [f64; 8],
    stx: [f64; 8],
}

impl Lanes {
    #[inline]
    fn add(&mut self, t: f64, s: &Sample) {
        let tt = t * t;
        for (m, &v) in s.iter().enumerate() {
            let present = !v.is_nan();
            let w = if present { 1.0 } else { 0.0 };
            let x = if present { f64::from(v) } else { 0.0 };
            self.n[m] += w;
            self.sx[m] += x;
            self.st[m] += t * w;
            self.stt[m] += tt * w;
            self.stx[m] += t * x;
        }
    }

    fn acc(&self, m: usize) -> Acc {
        Acc {
            n: self.n[m],
            sx: self.sx[m],
            st: self.st[m],
            stt: self.stt[m],
            stx: self.stx[m],
            ..Acc::EMPTY
        }
    }
}

/// The classic features (the first [`N_CLASSIC`], in [`FEATURE_NAMES`] order); `rtt_hour`
/// is the baseline's rtt.
fn classic(
    m10: &impl Fn(usize) -> Option<f64>,
    medium: &MediumSpan,
    long: &LongSpan,
    h: History,
    rtt_hour: f64,
) -> [f64; N_CLASSIC] {
    let minute = &medium.acc;
    let (mem_l, rtt_l, sess_l) = (long.acc[MEM], long.acc[RTT], long.acc[SESS]);
    let per_min = 60.0;
    let rtt_base = rtt_l.mean().filter(|m| *m > 0.0);
    let rel = |x: Option<f64>, default: f64| match (x, rtt_base) {
        (Some(x), Some(b)) => x / b,
        _ => default,
    };
    let hour = (rtt_hour > 0.0).then_some(rtt_hour);
    let vs_hour = |x: Option<f64>| match (x, hour) {
        (Some(x), Some(b)) => x / b,
        _ => 1.0,
    };
    let (mem10, rtt10, p95) = (m10(MEM), m10(RTT), medium.rtt_p95);
    let since = h
        .since_recovery_s
        .map_or(1.0, |s| s.min(HISTORY_S) as f64 / HISTORY_S as f64);
    [
        m10(CPU).unwrap_or(0.0),
        minute[CPU].mean().unwrap_or(0.0),
        minute[CPU].slope() * per_min,
        minute[CPU].std().unwrap_or(0.0),
        mem10.unwrap_or(0.0),
        minute[MEM].slope() * per_min,
        mem_l.slope() * per_min,
        match (mem10, mem_l.min()) {
            (Some(now), Some(low)) => (now - low).max(0.0),
            _ => 0.0,
        },
        m10(BW).unwrap_or(0.0),
        minute[BW].mean().unwrap_or(0.0),
        minute[BW].slope() * per_min,
        match (m10(SESS), sess_l.mean()) {
            (Some(now), Some(base)) => (now - base) / (base + 1.0),
            _ => 0.0,
        },
        m10(HSF).unwrap_or(0.0),
        minute[HSF].mean().unwrap_or(0.0),
        rtt10.unwrap_or(0.0),
        rel(rtt10, 1.0),
        rel(p95, 1.0),
        rel(Some(minute[RTT].slope() * per_min), 0.0),
        rel(Some(rtt_l.slope() * per_min), 0.0),
        match (minute[RTT].std(), minute[RTT].mean()) {
            (Some(sd), Some(m)) if m > 0.0 => sd / m,
            _ => 0.0,
        },
        m10(JIT).unwrap_or(0.0),
        match (m10(JIT), rtt10) {
            (Some(j), Some(r)) => j / r.max(1.0),
            _ => 0.0,
        },
        minute[JIT].mean().unwrap_or(0.0),
        m10(LOSS).unwrap_or(0.0),
        minute[LOSS].mean().unwrap_or(0.0),
        minute[LOSS].max().unwrap_or(0.0),
        medium.loss_events,
        medium.rtt_missing,
        since,
        f64::from(h.failures_last_hour),
        vs_hour(rtt10),
        vs_hour(p95),
        long.loss_events,
        long.since_loss_event,
    ]
}

/// Each anomaly signal's (level, scale) where its level is known: the scale is the spread,
/// floored.
fn scales(levels: &Levels) -> [Option<(f64, f64)>; 8] {
    let mut out = [None; 8];
    for &(m, floor, rel) in &ANOMALY {
        let (level, spread) = (f64::from(levels.median[m]), f64::from(levels.spread[m]));
        if !(level.is_nan() || spread.is_nan()) {
            out[m] = Some((level, spread.max(floor).max(rel * level.abs())));
        }
    }
    out
}

/// The signal-agnostic anomaly features (see [`agnostic`]).
#[derive(Debug, Clone, Copy, Default)]
struct Anomaly {
    /// Largest z-score of a 10 s mean against its level.
    max10: f64,
    /// Second largest (two signals at once is a stronger sign).
    second10: f64,
    /// Signals at least [`ABNORMAL`] spreads above their level.
    count10: f64,
    /// Largest z-score of a 60 s mean.
    max60: f64,
    /// Steepest rise over the last minute, in spreads per minute.
    trend60: f64,
    /// Largest rise over the window, in spreads per window.
    trend300: f64,
    /// The 60 s z-score of the most abnormal signal now: an anomaly that has lasted.
    persist: f64,
    /// The window's rise of the most abnormal signal now: abnormal *and* getting worse.
    worsening: f64,
    /// Signals with a known level (0: every other anomaly feature is a neutral 0).
    known: f64,
    /// Each [`ANOMALY`] signal's 60 s z-score, capped at [`Z_SIGNAL_CAP`]; 0 where unknown.
    z60: [f64; ANOMALY.len()],
}

impl Anomaly {
    /// The features after the classic ones, in [`FEATURE_NAMES`] order.
    fn features(&self) -> [f64; N_FEATURES - N_CLASSIC] {
        let z = self.z60;
        [
            self.max10,
            self.second10,
            self.count10,
            self.max60,
            self.trend60,
            self.trend300,
            self.persist,
            self.worsening,
            self.known,
            z[0],
            z[1],
            z[2],
            z[3],
            z[4],
            z[5],
            z[6],
        ]
    }
}

fn anomaly(
    scales: &[Option<(f64, f64)>; 8],
    m10: &impl Fn(usize) -> Option<f64>,
    medium: &[Acc; 8],
    long: &[Acc; 8],
) -> Anomaly {
    let cap = |z: f64| z.clamp(-Z_CAP, Z_CAP);
    let mut a = Anomaly::default();
    let (mut best, mut best_z) = (None, f64::NEG_INFINITY);
    let mut second = f64::NEG_INFINITY;
    for (j, &(m, _, _)) in ANOMALY.iter().enumerate() {
        let Some((level, scale)) = scales[m] else {
            continue;
        };
        a.known += 1.0;
        let z10 = m10(m).map_or(0.0, |x| cap((x - level) / scale));
        let raw60 = medium[m].mean().map(|x| (x - level) / scale);
        a.z60[j] = raw60.map_or(0.0, |z| z.clamp(-Z_SIGNAL_CAP, Z_SIGNAL_CAP));
        let z60 = raw60.map_or(0.0, cap);
        a.count10 += f64::from(u8::from(z10 >= ABNORMAL));
        a.max60 = a.max60.max(z60);
        a.trend60 = a.trend60.max(cap(medium[m].slope() * 60.0 / scale));
        let rise = cap(long[m].slope() * WINDOW_S as f64 / scale);
        a.trend300 = a.trend300.max(rise);
        if z10 > best_z {
            second = best_z;
            best_z = z10;
            best = Some((z60, rise));
        } else if z10 > second {
            second = z10;
        }
    }
    if let Some((z60, rise)) = best {
        a.max10 = best_z;
        a.second10 = if second.is_finite() { second } else { 0.0 };
        a.persist = z60;
        a.worsening = rise;
    }
    a
}

/// The features of slot `i` of a series with `failures` as (start, end) slot pairs.
pub fn history_at(i: usize, failures: &[(usize, usize)]) -> History {
    let mut h = History::default();
    for &(start, end) in failures {
        if start > i {
            break;
        }
        if end <= i {
            h.since_recovery_s = Some((i - end) as u64);
        }
        if i - start < HISTORY_S as usize {
            h.failures_last_hour += 1;
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::risk::features::window::MISSING;

    fn idx(name: &str) -> usize {
        FEATURE_NAMES.iter().position(|n| *n == name).unwrap()
    }

    fn sample(f: impl Fn(&mut Sample)) -> Sample {
        let mut s = MISSING;
        f(&mut s);
        s
    }

    #[test]
    fn percentile_nearest_rank() {
        let mut v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 0.95), Some(19.0));
        assert_eq!(percentile(&mut [5.0], 0.95), Some(5.0));
        assert_eq!(percentile(&mut [], 0.95), None);
        let mut v = vec![3.0, 1.0, 2.0, 4.0];
        // ceil(0.95 * 4) = 4 -> the largest.
        assert_eq!(percentile(&mut v, 0.95), Some(4.0));
    }

    #[test]
    fn slopes_and_means_by_hand() {
        // cpu rises 0.01 per second over 60 s: slope 0.6 per minute, mean of last 10 = 0.545.
        let samples: Vec<Sample> = (0..60)
            .map(|i| sample(|s| s[CPU] = i as f32 * 0.01))
            .collect();
        let f = compute(
            &Window::ending_at(&samples, 59),
            History::default(),
            &Baseline::UNKNOWN,
        );
        assert!(
            (f[idx("cpu_slope60")] - 0.6).abs() < 1e-4,
            "{}",
            f[idx("cpu_slope60")]
        );
        assert!((f[idx("cpu_mean10")] - 0.545).abs() < 1e-5);
        assert!((f[idx("cpu_mean60")] - 0.295).abs() < 1e-5);
        // Population std of 0, 0.01, ..., 0.59 = 0.01 * sqrt((60^2 - 1) / 12).
        let sd = 0.01 * ((3600.0f64 - 1.0) / 12.0).sqrt();
        assert!((f[idx("cpu_std60")] - sd).abs() < 1e-5);
        // No memory at all: defaults.
        assert_eq!(f[idx("mem_mean10")], 0.0);
        assert_eq!(f[idx("mem_slope60")], 0.0);
        assert_eq!(f[idx("rtt_ratio10")], 1.0);
        assert_eq!(f[idx("rtt_missing60")], 1.0);
        assert_eq!(f[idx("since_recovery")], 1.0);
    }

    #[test]
    fn missing_values_are_skipped() {
        // rtt 10 ms for 290 s, then 20 ms for the last 10 s, every third second missing.
        let samples: Vec<Sample> = (0..300)
            .map(|i| {
                sample(|s| {
                    if i % 3 != 0 {
                        s[RTT] = if i >= 290 { 20.0 } else { 10.0 };
                        s[LOSS] = if i >= 295 { 0.1 } else { 0.0 };
                    }
                })
            })
            .collect();
        let f = compute(
            &Window::ending_at(&samples, 299),
            History::default(),
            &Baseline::UNKNOWN,
        );
        assert_eq!(f[idx("rtt_mean10")], 20.0);
        // 200 values present: 193 at 10 ms and 7 at 20 ms (i % 3 != 0 among 290..300 -> 7).
        let base = (193.0 * 10.0 + 7.0 * 20.0) / 200.0;
        assert!((f[idx("rtt_ratio10")] - 20.0 / base).abs() < 1e-9);
        // Last 60 s: 40 values, 7 of them 20 ms: p95 rank ceil(38) = 38 -> 20 ms.
        assert!((f[idx("rtt_p95_ratio60")] - 20.0 / base).abs() < 1e-9);
        assert!((f[idx("rtt_missing60")] - 20.0 / 60.0).abs() < 1e-9);
        // Loss >= 5% in 4 of the 40 present seconds of the last minute (295, 296, 298, 299).
        assert!((f[idx("loss_events60")] - 4.0 / 40.0).abs() < 1e-9);
        assert!((f[idx("loss_max60")] - 0.1).abs() < 1e-6);
        // 4 of 200 present loss values are events; the last one is now (age 0).
        assert!((f[idx("loss_events300")] - 4.0 / 200.0).abs() < 1e-9);
        assert_eq!(f[idx("since_loss_event")], 0.0);
        assert_eq!(f[idx("rtt_vs_hour")], 1.0, "no baseline: neutral");
        let g = compute(
            &Window::ending_at(&samples, 299),
            History::default(),
            &Baseline {
                rtt: 10.0,
                ..Baseline::UNKNOWN
            },
        );
        assert_eq!(g[idx("rtt_vs_hour")], 2.0);
    }

    #[test]
    fn split_window_equals_contiguous() {
        let samples: Vec<Sample> = (0..400)
            .map(|i| {
                sample(|s| {
                    s[MEM] = (i as f32 * 0.001).sin().abs();
                    s[RTT] = 10.0 + (i % 7) as f32;
                    s[LOSS] = 0.0;
                })
            })
            .collect();
        let whole = compute(
            &Window::ending_at(&samples, 399),
            History::default(),
            &Baseline::UNKNOWN,
        );
        let split = compute(
            &Window::new(&samples[..250], &samples[250..]),
            History::default(),
            &Baseline::UNKNOWN,
        );
        assert_eq!(whole, split);
    }

    /// Levels of 1.0 with spread 0.1 for every signal (rtt and jitter: level 10, spread 1).
    fn calm_levels() -> Baseline {
        let mut b = Baseline::UNKNOWN;
        for m in 0..8 {
            let (level, spread) = if m == RTT || m == JIT {
                (10.0, 1.0)
            } else {
                (1.0, 0.1)
            };
            b.levels.median[m] = level;
            b.levels.spread[m] = spread;
        }
        b
    }

    fn anomaly_features(f: &Features) -> Vec<f64> {
        f[N_CLASSIC..N_AGNOSTIC_END].to_vec()
    }

    #[test]
    fn anomalies_are_measured_in_the_signals_own_spreads() {
        // Every signal at its level; one of them rises linearly to 5 spreads above it over
        // the last 60 s. Whichever signal it is, the agnostic features are the same.
        let b = calm_levels();
        let with_rise = |m: usize| -> Vec<Sample> {
            (0..300)
                .map(|i| {
                    let mut s = b.levels.median;
                    if i >= 240 {
                        s[m] += 5.0 * b.levels.spread[m] * (i - 239) as f32 / 60.0;
                    }
                    s
                })
                .collect()
        };
        let cpu = compute(
            &Window::ending_at(&with_rise(CPU), 299),
            History::default(),
            &b,
        );
        let rtt = compute(
            &Window::ending_at(&with_rise(RTT), 299),
            History::default(),
            &b,
        );
        let a = anomaly_features(&cpu);
        for (x, y) in a.iter().zip(anomaly_features(&rtt)) {
            assert!(
                (x - y).abs() < 1e-3,
                "{a:?} vs {:?}",
                anomaly_features(&rtt)
            );
        }
        // The 10 s mean is 5 * (55.5 / 60) spreads up; one signal abnormal; 7 known.
        assert!((cpu[idx("anom_max10")] - 5.0 * 55.5 / 60.0).abs() < 1e-3);
        assert_eq!(cpu[idx("anom_count10")], 1.0);
        assert_eq!(cpu[idx("anom_second10")], 0.0);
        assert_eq!(cpu[idx("anom_known")], 7.0);
        assert!(
            cpu[idx("anom_trend60")] > 4.0,
            "rising about 5 spreads a minute"
        );
        assert!(cpu[idx("anom_worsening")] > 0.0);
        // The classic features do tell the signals apart, and so do the per-signal z-scores:
        // the 60 s mean is 5 * (30.5 / 60) spreads up.
        assert_ne!(cpu[idx("cpu_mean10")], rtt[idx("cpu_mean10")]);
        assert!((cpu[idx("z60_cpu")] - 5.0 * 30.5 / 60.0).abs() < 1e-3);
        assert!((rtt[idx("z60_rtt")] - 5.0 * 30.5 / 60.0).abs() < 1e-3);
        assert_eq!(cpu[idx("z60_rtt")], 0.0);
        assert_eq!(rtt[idx("z60_cpu")], 0.0);
    }

    #[test]
    fn small_spreads_are_floored_and_unknown_levels_are_neutral() {
        // Loss has been exactly 0 for an hour (spread 0): 2% loss is 2 floors (1%) up, not
        // infinitely abnormal.
        let mut b = Baseline::UNKNOWN;
        b.levels.median[LOSS] = 0.0;
        b.levels.spread[LOSS] = 0.0;
        let samples: Vec<Sample> = (0..60).map(|_| sample(|s| s[LOSS] = 0.02)).collect();
        let f = compute(&Window::ending_at(&samples, 59), History::default(), &b);
        assert!((f[idx("anom_max10")] - 2.0).abs() < 1e-6);
        assert_eq!(f[idx("anom_known")], 1.0);
        let none = compute(
            &Window::ending_at(&samples, 59),
            History::default(),
            &Baseline::UNKNOWN,
        );
        assert!(anomaly_features(&none).iter().all(|x| *x == 0.0));
        // Far out: capped.
        let samples: Vec<Sample> = (0..60).map(|_| sample(|s| s[LOSS] = 1.0)).collect();
        let f = compute(&Window::ending_at(&samples, 59), History::default(), &b);
        assert_eq!(f[idx("anom_max10")], Z_CAP);
        // The per-signal z-score is not capped there: 100 floors up.
        assert!((f[idx("z60_loss")] - 100.0).abs() < 1e-6);
        assert_eq!(f[idx("z60_cpu")], 0.0, "unknown level: neutral");
    }

    #[test]
    fn history() {
        let failures = [(100, 160), (3000, 3010)];
        assert_eq!(history_at(50, &failures), History::default());
        assert_eq!(
            history_at(200, &failures),
            History {
                since_recovery_s: Some(40),
                failures_last_hour: 1
            }
        );
        assert_eq!(
            history_at(3005, &failures),
            History {
                since_recovery_s: Some(2845),
                failures_last_hour: 2
            }
        );
        assert_eq!(history_at(3800, &failures).failures_last_hour, 1);
    }
}
