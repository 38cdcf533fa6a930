//! Training: labels, a split by time, class-balanced sampling, linfa fits, calibration and the
//! choice of an operating threshold.
//!
//! - Label of an up second `t`: a failure starts in `(t, t + horizon]`.
//! - Split by time at a cut `T`: training rows have `t + horizon < T` (their labels end before
//!   the cut), validation rows have `t >= T + window` (their features start after it); the
//!   seconds between are dropped. Nothing of the validation period reaches training.
//! - Imbalance: every positive row is kept; negatives are sampled to a fixed ratio. The skewed
//!   base rate this creates is undone by calibration on the (unsampled) validation period.
//! - Each family (logistic, forest) is a bootstrap ensemble: members fitted on resamples, whose
//!   spread gives the score's confidence interval.
//! - Calibration: Platt scaling of the ensemble mean, fitted on validation seconds.
//! - Threshold: the one with the highest recall@10s (failures with precursors when the data
//!   says which those are) at no more than the allowed false alarms per appliance-day on
//!   validation; the family that does best at its threshold wins.

use std::time::Instant;

use linfa::prelude::*;
use linfa_logistic::LogisticRegression;
use linfa_trees::{DecisionTree, TreeNode};
use ndarray::{Array1, Array2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::risk::data::series::{FailureSpan, Series};
use crate::risk::evaluate::{self, Group, Scored};
use crate::risk::features::window::WINDOW_S;
use crate::risk::features::{Features, N_FEATURES};
use crate::risk::model::hold::{HoldSeconds, hold_values};
use crate::risk::model::novelty::Novelty;
use crate::risk::model::{
    Candidate, FeatureSet, Linear, MIN_SCALE, Members, Model, ModelCard, ModelKind, Node, Platt,
    Scaler, Tree, logit,
};

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Not enough failures or data on one side of the split.
    #[error("not enough data: {0}")]
    NotEnoughData(String),
    /// A linfa fit failed.
    #[error("fitting {what} failed: {message}")]
    Fit {
        /// What was being fitted.
        what: String,
        /// linfa's message.
        message: String,
    },
    /// The options are inconsistent.
    #[error("invalid option: {0}")]
    Options(String),
}

/// Training settings.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Model name (the version is derived from it).
    pub name: String,
    /// Label horizon in seconds.
    pub horizon_s: usize,
    /// Share of the time range used for validation (the later part).
    pub validation_share: f64,
    /// Negatives sampled per positive.
    pub negatives_per_positive: f64,
    /// Most rows fitted on.
    pub max_fit_rows: usize,
    /// Families to try.
    pub kinds: Vec<ModelKind>,
    /// The features the model reads.
    pub features: FeatureSet,
    /// Logistic ensemble size.
    pub logistic_members: usize,
    /// Forest ensemble size.
    pub forest_members: usize,
    /// Rows each tree is fitted on (bootstrap size).
    pub tree_rows: usize,
    /// Deepest tree.
    pub tree_depth: usize,
    /// False alarms per appliance-day allowed when choosing the threshold.
    pub max_false_alarms_per_day: f64,
    /// Alarm hold.
    pub hold_s: HoldSeconds,
    /// Random seed (sampling and bootstraps).
    pub seed: u64,
    /// Threads for fitting and scoring.
    pub threads: usize,
    /// Where the data came from, for the card.
    pub sources: Vec<String>,
    /// Telemetry rows read, for the card.
    pub rows: u64,
    /// Adds the unsupervised novelty term ([`crate::risk::model::novelty`]).
    pub novelty: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            name: "model".into(),
            horizon_s: 60,
            validation_share: 0.3,
            negatives_per_positive: 6.0,
            max_fit_rows: 400_000,
            kinds: vec![ModelKind::Logistic, ModelKind::Forest],
            features: FeatureSet::classic(),
            logistic_members: 10,
            forest_members: 24,
            tree_rows: 40_000,
            tree_depth: 10,
            max_false_alarms_per_day: 0.5,
            hold_s: HoldSeconds::DEFAULT,
            seed: 1,
            threads: 2,
            sources: Vec::new(),
            rows: 0,
            novelty: false,
        }
    }
}

/// Which side of the split a second falls on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Fitted on.
    Train,
    /// Dropped: labels or features would straddle the cut.
    Gap,
    /// Calibration, threshold and model choice.
    Validation,
}

/// A split by time with a purge gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeSplit {
    /// The cut (unix seconds).
    pub cut: i64,
    /// Label horizon (seconds).
    pub horizon: i64,
    /// Feature window (seconds).
    pub window: i64,
}

impl TimeSplit {
    /// The side of second `ts`.
    pub fn side(&self, ts: i64) -> Side {
        if ts + self.horizon < self.cut {
            Side::Train
        } else if ts >= self.cut + self.window {
            Side::Validation
        } else {
            Side::Gap
        }
    }

    /// A cut at `1 - validation_share` of the covered time range.
    pub fn for_series(series: &[Series], validation_share: f64, horizon: usize) -> Self {
        let first = series.iter().map(|s| s.start).min().unwrap_or(0);
        let last = series
            .iter()
            .map(|s| s.ts(s.len().saturating_sub(1)))
            .max()
            .unwrap_or(0);
        let cut = first + ((last - first) as f64 * (1.0 - validation_share)) as i64;
        Self {
            cut,
            horizon: horizon as i64,
            window: WINDOW_S as i64,
        }
    }
}

struct Sampled {
    x: Vec<Features>,
    y: Vec<bool>,
}

fn sample_rows(series: &[Series], split: &TimeSplit, opts: &TrainOptions) -> Sampled {
    let mut pos = 0usize;
    let mut neg = 0usize;
    let labels: Vec<Vec<bool>> = series.iter().map(|s| s.labels(opts.horizon_s)).collect();
    for (s, l) in series.iter().zip(&labels) {
        for (i, (&down, &label)) in s.down.iter().zip(l).enumerate() {
            if !down && split.side(s.ts(i)) == Side::Train {
                if label {
                    pos += 1;
                } else {
                    neg += 1;
                }
            }
        }
    }
    let want_neg = (pos as f64 * opts.negatives_per_positive).max(1.0);
    let total = pos as f64 + want_neg;
    let scale = (opts.max_fit_rows as f64 / total).min(1.0);
    let p_pos = scale;
    let p_neg = (want_neg * scale / neg.max(1) as f64).min(1.0);
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut x = Vec::new();
    let mut y = Vec::new();
    for (s, l) in series.iter().zip(&labels) {
        let ctx = s.context();
        for (i, (&down, &label)) in s.down.iter().zip(l).enumerate() {
            if down || split.side(s.ts(i)) != Side::Train {
                continue;
            }
            let keep = if label { p_pos } else { p_neg };
            if rng.r#gen::<f64>() < keep {
                x.push(s.features_at(&ctx, i));
                y.push(label);
            }
        }
    }
    Sampled { x, y }
}

/// The set's columns of each row.
fn project(x: &[Features], set: &FeatureSet) -> Vec<Vec<f64>> {
    x.iter()
        .map(|r| {
            let mut v = vec![0.0; set.len()];
            set.gather(r, &mut v);
            v
        })
        .collect()
}

fn fit_scaler(x: &[Vec<f64>], k: usize) -> Scaler {
    let n = x.len().max(1) as f64;
    let mut mean = vec![0.0; k];
    for r in x {
        for (m, v) in mean.iter_mut().zip(r) {
            *m += v / n;
        }
    }
    let mut var = vec![0.0; k];
    for r in x {
        for ((s, v), m) in var.iter_mut().zip(r).zip(&mean) {
            *s += (v - m) * (v - m) / n;
        }
    }
    let scale = var
        .into_iter()
        .map(|v| if v.sqrt() > MIN_SCALE { v.sqrt() } else { 1.0 })
        .collect();
    Scaler { mean, scale }
}

fn standardise(x: &[Vec<f64>], sc: &Scaler) -> Array2<f64> {
    Array2::from_shape_fn((x.len(), sc.mean.len()), |(i, j)| {
        (x[i][j] - sc.mean[j]) / sc.scale[j]
    })
}

/// Runs `f(k)` for `k in 0..n` on `threads` threads; results in index order.
fn parallel<T: Send>(n: usize, threads: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = threads.clamp(1, n.max(1));
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    std::thread::scope(|scope| {
        let f = &f;
        let chunks: Vec<_> = out
            .chunks_mut(n.div_ceil(threads).max(1))
            .enumerate()
            .map(|(c, chunk)| {
                let base = c * n.div_ceil(threads).max(1);
                scope.spawn(move || {
                    for (j, slot) in chunk.iter_mut().enumerate() {
                        *slot = Some(f(base + j));
                    }
                })
            })
            .collect();
        for h in chunks {
            if let Err(panic) = h.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
    out.into_iter().flatten().collect()
}

fn bootstrap(rng: &mut ChaCha8Rng, n: usize, size: usize) -> Vec<usize> {
    (0..size).map(|_| rng.gen_range(0..n)).collect()
}

/// Rows each logistic member is fitted on: more adds time, not accuracy, for 34 weights.
const LOGISTIC_ROWS: usize = 30_000;

fn fit_logistic(z: &Array2<f64>, y: &[bool], k: usize, seed: u64) -> Result<Linear, TrainError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (0x10_0000 + k as u64));
    let idx = bootstrap(&mut rng, y.len(), y.len().min(LOGISTIC_ROWS));
    let xs = z.select(ndarray::Axis(0), &idx);
    let ys: Array1<bool> = idx.iter().map(|&i| y[i]).collect();
    let ds = Dataset::new(xs, ys);
    let fitted = LogisticRegression::default()
        .alpha(1e-3)
        .max_iterations(100)
        .fit(&ds)
        .map_err(|e| TrainError::Fit {
            what: format!("logistic member {k}"),
            message: e.to_string(),
        })?;
    Ok(positive_linear(&fitted))
}

/// The fitted regression as the log-odds of `true`. linfa models the probability of the
/// class it met *first* in the targets (not the larger one, as its docs say), so flip the
/// signs when that class was `false`.
fn positive_linear(fitted: &linfa_logistic::FittedLogisticRegression<f64, bool>) -> Linear {
    let sign = if fitted.labels().pos.class { 1.0 } else { -1.0 };
    Linear {
        intercept: sign * fitted.intercept(),
        weights: fitted.params().iter().map(|w| sign * w).collect(),
    }
}

/// Copies a linfa tree into a [`Tree`] (features renumbered through `cols`), with leaf
/// probabilities counted from the rows it was fitted on (Laplace-smoothed).
fn convert_tree(
    root: &TreeNode<f64, bool>,
    cols: &[usize],
    z: &Array2<f64>,
    y: &[bool],
    rows: &[usize],
) -> Tree {
    // Build the node list in pre-order so children always follow their parent.
    let mut nodes: Vec<Node> = Vec::new();
    fn walk(n: &TreeNode<f64, bool>, cols: &[usize], nodes: &mut Vec<Node>) -> u32 {
        let me = nodes.len() as u32;
        let children = n.children();
        match (n.is_leaf(), children[0], children[1]) {
            (false, Some(l), Some(r)) => {
                let (f, t, _) = n.split();
                nodes.push(Node::Leaf(0.0));
                let li = walk(l, cols, nodes);
                let ri = walk(r, cols, nodes);
                nodes[me as usize] = Node::Split {
                    feature: cols[f] as u16,
                    threshold: t,
                    left: li,
                    right: ri,
                };
            }
            // A split with one empty side (linfa allows it) behaves as its non-empty child.
            (false, Some(only), None) | (false, None, Some(only)) => {
                return walk(only, cols, nodes);
            }
            _ => nodes.push(Node::Leaf(0.0)),
        }
        me
    }
    walk(root, cols, &mut nodes);
    let mut tree = Tree { nodes };
    let mut counts = vec![(0.0f64, 0.0f64); tree.nodes.len()];
    let mut zi = [0f64; N_FEATURES];
    let zi = &mut zi[..z.ncols()];
    for &r in rows {
        for (j, v) in zi.iter_mut().enumerate() {
            *v = z[(r, j)];
        }
        let leaf = tree.leaf_index(zi);
        counts[leaf].0 += f64::from(u8::from(y[r]));
        counts[leaf].1 += 1.0;
    }
    for (node, (pos, n)) in tree.nodes.iter_mut().zip(counts) {
        if let Node::Leaf(p) = node {
            *p = (pos + 1.0) / (n + 2.0);
        }
    }
    tree
}

fn fit_tree(
    z: &Array2<f64>,
    y: &[bool],
    k: usize,
    opts: &TrainOptions,
) -> Result<Tree, TrainError> {
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed ^ (0x20_0000 + k as u64));
    let rows = bootstrap(&mut rng, y.len(), opts.tree_rows.min(y.len()));
    // Each tree sees 70% of the features: decorrelates members and halves fitting time.
    let k = z.ncols();
    let mut cols: Vec<usize> = (0..k).collect();
    for i in 0..k {
        let j = rng.gen_range(i..k);
        cols.swap(i, j);
    }
    cols.truncate((k * 7).div_ceil(10));
    cols.sort_unstable();
    let xs = Array2::from_shape_fn((rows.len(), cols.len()), |(i, j)| z[(rows[i], cols[j])]);
    let ys: Array1<bool> = rows.iter().map(|&i| y[i]).collect();
    // Balance the classes by weight. The factor is deliberately not a ratio of small integers:
    // linfa breaks ties between equally weighted classes by HashMap order, and then prunes
    // differently from run to run; with such weights exact ties cannot happen.
    let pos = ys.iter().filter(|l| **l).count().max(1) as f32;
    let neg = (ys.len() as f32 - pos).max(1.0);
    let w_pos = neg / pos * std::f32::consts::FRAC_PI_3;
    let weights: Array1<f32> = ys.iter().map(|&l| if l { w_pos } else { 1.0 }).collect();
    let ds = Dataset::new(xs, ys).with_weights(weights);
    let fitted = DecisionTree::params()
        .max_depth(Some(opts.tree_depth))
        .min_weight_split(40.0)
        .min_weight_leaf(20.0)
        .fit(&ds)
        .map_err(|e| TrainError::Fit {
            what: format!("tree {k}"),
            message: e.to_string(),
        })?;
    Ok(convert_tree(fitted.root_node(), &cols, z, y, &rows))
}

/// Validation scores: for each series, the slot offset where validation begins and the raw
/// ensemble mean of every slot from there.
struct ValidationScores {
    offsets: Vec<usize>,
    raw: Vec<Vec<f64>>,
    /// The novelty term's surprise of each validation second (empty without one).
    surprise: Vec<Vec<f64>>,
}

/// Seconds before a failure that the novelty term's normal data leaves out.
const NOVELTY_LOOKBACK: usize = 1800;
/// The novelty term's normal data takes every this many training seconds.
const NOVELTY_STEP: usize = 2;

/// Fits the novelty term's tails on the training side's normal seconds: up, and not within
/// [`NOVELTY_LOOKBACK`] of a failure (labels only keep precursors out of "normal").
fn fit_novelty_tails(
    series: &[Series],
    split: &TimeSplit,
    threads: usize,
) -> Result<Novelty, TrainError> {
    let features = Novelty::signal_features();
    let k = features.len();
    let per: Vec<Vec<f64>> = parallel(series.len(), threads, |j| {
        let s = &series[j];
        let ctx = s.context();
        let near = s.labels(NOVELTY_LOOKBACK);
        let mut out = Vec::new();
        let mut v = vec![0f64; k];
        for i in (0..s.len()).step_by(NOVELTY_STEP) {
            if s.down[i] || near[i] || split.side(s.ts(i)) != Side::Train {
                continue;
            }
            features.gather(&s.features_at(&ctx, i), &mut v);
            out.extend_from_slice(&v);
        }
        out
    });
    let mut columns = vec![Vec::new(); k];
    for rows in &per {
        for row in rows.chunks_exact(k) {
            for (c, x) in columns.iter_mut().zip(row) {
                c.push(*x);
            }
        }
    }
    let n = columns[0].len();
    Novelty::fit_tails(columns).ok_or_else(|| {
        TrainError::NotEnoughData(format!(
            "the novelty term needs {} normal training seconds (every {NOVELTY_STEP}nd second, \
             {NOVELTY_LOOKBACK} s or more before a failure); the data has {n}",
            crate::risk::model::novelty::MIN_ROWS
        ))
    })
}

fn validation_offset(s: &Series, split: &TimeSplit) -> Option<usize> {
    let from = split.cut + split.window;
    let off = (from - s.start).max(0) as usize;
    (off < s.len()).then_some(off)
}

fn score_validation(
    series: &[Series],
    split: &TimeSplit,
    model: &Model,
    novelty: Option<&Novelty>,
    threads: usize,
) -> ValidationScores {
    type Scores = (usize, Vec<f64>, Vec<f64>);
    let per: Vec<Scores> = parallel(series.len(), threads, |k| {
        let s = &series[k];
        let Some(off) = validation_offset(s, split) else {
            return (s.len(), Vec::new(), Vec::new());
        };
        let ctx = s.context();
        let mut raw = Vec::with_capacity(s.len() - off);
        let mut surprise = Vec::new();
        for i in off..s.len() {
            if s.down[i] {
                raw.push(0.0);
                if novelty.is_some() {
                    surprise.push(0.0);
                }
                continue;
            }
            let x = s.features_at(&ctx, i);
            raw.push(model.raw_score(&x));
            if let Some(n) = novelty {
                surprise.push(n.surprise(&x));
            }
        }
        (off, raw, surprise)
    });
    let mut v = ValidationScores {
        offsets: Vec::new(),
        raw: Vec::new(),
        surprise: Vec::new(),
    };
    for (off, raw, surprise) in per {
        v.offsets.push(off);
        v.raw.push(raw);
        v.surprise.push(surprise);
    }
    v
}

/// The validation tail of each series, re-indexed, as evaluation input. Failures in the first
/// minute of the tail are left out: their lead could not be seen.
struct Tails {
    down: Vec<Vec<bool>>,
    failures: Vec<Vec<FailureSpan>>,
}

fn tails_of(series: &[Series], v: &ValidationScores) -> Tails {
    let mut down = Vec::new();
    let mut failures = Vec::new();
    for (s, &off) in series.iter().zip(&v.offsets) {
        down.push(s.down[off.min(s.len())..].to_vec());
        failures.push(
            s.failures
                .iter()
                .filter(|f| f.start >= off + 60)
                .map(|f| FailureSpan {
                    start: f.start - off,
                    end: f.end - off,
                    kind: f.kind.clone(),
                    precursor: f.precursor,
                    precursor_s: f.precursor_s,
                })
                .collect(),
        );
    }
    Tails { down, failures }
}

fn fit_platt(raw: &[Vec<f64>], t: &Tails, horizon: usize) -> Result<Platt, TrainError> {
    let mut x = Vec::new();
    let mut y = Vec::new();
    for ((r, d), failures) in raw.iter().zip(&t.down).zip(&t.failures) {
        let mut label = vec![false; r.len()];
        for fs in failures {
            for l in &mut label[fs.start.saturating_sub(horizon)..fs.start] {
                *l = true;
            }
        }
        for i in 0..r.len() {
            if !d[i] {
                x.push(logit(r[i]));
                y.push(label[i]);
            }
        }
    }
    if !y.iter().any(|l| *l) || y.iter().all(|l| *l) {
        return Err(TrainError::NotEnoughData(
            "the validation period has no failure (or nothing else); use more data".into(),
        ));
    }
    let xs = Array2::from_shape_vec((x.len(), 1), x).map_err(|e| TrainError::Fit {
        what: "calibration".into(),
        message: e.to_string(),
    })?;
    let ds = Dataset::new(xs, Array1::from(y));
    let fitted = LogisticRegression::default()
        .alpha(0.0)
        .max_iterations(100)
        .fit(&ds)
        .map_err(|e| TrainError::Fit {
            what: "calibration".into(),
            message: e.to_string(),
        })?;
    let lin = positive_linear(&fitted);
    Ok(Platt {
        a: lin.weights[0],
        b: lin.intercept,
    })
}

/// `f(raw, surprise)` of every validation second (surprise 0 without a novelty term), held as
/// scores are.
fn held_validation(
    v: &ValidationScores,
    t: &Tails,
    hold_s: HoldSeconds,
    f: impl Fn(f64, f64) -> f64,
) -> Vec<Vec<f64>> {
    v.raw
        .iter()
        .zip(&v.surprise)
        .zip(&t.down)
        .map(|((raw, surprise), down)| {
            let p: Vec<f64> = raw
                .iter()
                .enumerate()
                .map(|(i, &x)| f(x, surprise.get(i).copied().unwrap_or(0.0)))
                .collect();
            hold_values(&p, down, hold_s)
        })
        .collect()
}

/// The share of the false-alarm budget the novelty term may spend on its own.
const NOVELTY_BUDGET_SHARE: f64 = 0.5;

fn scored_of<'a>(scores: &'a [Vec<f64>], t: &'a Tails) -> Vec<Scored<'a>> {
    scores
        .iter()
        .zip(&t.down)
        .zip(&t.failures)
        .map(|((s, d), f)| Scored {
            scores: s,
            down: d,
            failures: f,
        })
        .collect()
}

/// The lowest surprise whose alarms alone (held as scores are) raise no more than the novelty
/// term's share of the false alarms allowed on validation.
fn novelty_level(
    surprise: &[Vec<f64>],
    t: &Tails,
    hold_s: HoldSeconds,
    opts: &TrainOptions,
) -> f64 {
    let held: Vec<Vec<f64>> = surprise
        .iter()
        .zip(&t.down)
        .map(|(s, d)| hold_values(s, d, hold_s))
        .collect();
    let scored = scored_of(&held, t);
    let budget = opts.max_false_alarms_per_day * NOVELTY_BUDGET_SHARE;
    let mut candidates = candidate_thresholds(&held, t);
    candidates.retain(|c| *c > 0.0);
    candidates
        .into_iter()
        .find(|&c| {
            evaluate::alarm_stats(&scored, c)
                .false_alarm_rate()
                .is_some_and(|fa| fa <= budget)
        })
        .unwrap_or(f64::INFINITY)
}

/// Candidate thresholds: high quantiles of all scores and quantiles of positive seconds.
fn candidate_thresholds(scores: &[Vec<f64>], t: &Tails) -> Vec<f64> {
    let mut all: Vec<f64> = Vec::new();
    for (s, d) in scores.iter().zip(&t.down) {
        all.extend(s.iter().zip(d).filter(|(_, d)| !**d).map(|(v, _)| *v));
    }
    all.sort_unstable_by(f64::total_cmp);
    let mut out = Vec::new();
    let n = all.len();
    if n == 0 {
        return out;
    }
    for k in 0..120 {
        // Alarm shares from 30% down to 0.001%, log-spaced.
        let share = 0.3 * (1e-5f64 / 0.3).powf(k as f64 / 119.0);
        let i = ((1.0 - share) * n as f64) as usize;
        out.push(all[i.min(n - 1)]);
    }
    out.sort_unstable_by(f64::total_cmp);
    out.dedup();
    out
}

/// Chooses the threshold with the best recall@10s at the allowed false-alarm rate.
fn choose_threshold(scored: &[Scored<'_>], candidates: &[f64], max_fa: f64, group: Group) -> f64 {
    let mut best: Option<(f64, f64, f64)> = None; // (recall, -fa, thr)
    let mut least_fa: Option<(f64, f64)> = None;
    for &thr in candidates {
        let st = evaluate::alarm_stats(scored, thr);
        let fa = st.false_alarm_rate().unwrap_or(0.0);
        let recall = st.recall(group, 10).unwrap_or(0.0);
        if least_fa.is_none_or(|(f, _)| fa < f) {
            least_fa = Some((fa, thr));
        }
        if fa <= max_fa {
            let key = (recall, -fa, thr);
            if best.is_none_or(|b| key > b) {
                best = Some(key);
            }
        }
    }
    best.map(|b| b.2).or(least_fa.map(|l| l.1)).unwrap_or(0.5)
}

/// Trains every requested family, keeps the best, and returns it with its card.
pub fn train(
    series: &[Series],
    opts: &TrainOptions,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Model, TrainError> {
    let started = Instant::now();
    check_options(opts)?;
    let fitting = Fitting::prepare(series, opts, progress)?;
    let mut best: Option<(Model, Candidate, RankKey)> = None;
    let mut candidates = Vec::new();
    // The novelty alarm level depends on the validation surprise only, the same for every
    // family: chosen with the first and kept.
    let mut novelty_level: Option<f64> = None;
    for &kind in &opts.kinds {
        let beat = best.as_ref().map(|(_, _, k)| *k);
        let (model, candidate, key) = fitting.candidate(kind, beat, &mut novelty_level)?;
        candidates.push(candidate.clone());
        if beat.is_none_or(|b| key > b) {
            best = Some((model, candidate, key));
        }
    }
    let Some((mut model, chosen, _)) = best else {
        return Err(TrainError::Options("no model family trained".into()));
    };
    let validation = std::mem::replace(&mut model.card.validation, ModelCard::empty().validation);
    model.card = fitting.card(candidates, validation, &chosen, started);
    if let Some(n) = &model.novelty {
        model.card.notes.push(format!(
            "novelty term: per-signal tails of {} fitted on {} normal training seconds (every \
             {NOVELTY_STEP}nd, {NOVELTY_LOOKBACK} s or more before a failure); probability = \
             sigmoid({:.4} * surprise + {:.4}); score = the larger of the ensemble's and the \
             novelty term's",
            n.features.names().join(", "),
            n.rows,
            n.a,
            n.b
        ));
    }
    model.version = model.compute_version();
    Ok(model)
}

fn check_options(opts: &TrainOptions) -> Result<(), TrainError> {
    if opts.kinds.is_empty() {
        return Err(TrainError::Options("no model family to train".into()));
    }
    if !(0.05..=0.9).contains(&opts.validation_share) {
        return Err(TrainError::Options(
            "validation share must be in 0.05..=0.9".into(),
        ));
    }
    Ok(())
}

/// How candidates are ranked on validation: recall@10s, then fewer false alarms, then PR AUC.
type RankKey = (f64, f64, f64);

/// What every family is fitted on and validated against.
struct Fitting<'a> {
    series: &'a [Series],
    opts: &'a TrainOptions,
    progress: &'a (dyn Fn(&str) + Sync),
    split: TimeSplit,
    /// The sampled training rows, standardised, and their labels.
    z: Array2<f64>,
    y: Vec<bool>,
    positives: usize,
    scaler: Scaler,
    /// Failures with precursors when the data labels them (the threshold is chosen on those).
    group: Group,
    /// The novelty term's tails, when asked for.
    tails: Option<Novelty>,
}

impl<'a> Fitting<'a> {
    /// Splits by time, samples and standardises the training rows, fits the novelty tails.
    fn prepare(
        series: &'a [Series],
        opts: &'a TrainOptions,
        progress: &'a (dyn Fn(&str) + Sync),
    ) -> Result<Self, TrainError> {
        let split = TimeSplit::for_series(series, opts.validation_share, opts.horizon_s);
        let sampled = sample_rows(series, &split, opts);
        let positives = sampled.y.iter().filter(|l| **l).count();
        progress(&format!(
            "sampled {} training rows ({} positive) before the cut at {}",
            sampled.y.len(),
            positives,
            split.cut
        ));
        if positives < 10 || positives == sampled.y.len() {
            return Err(TrainError::NotEnoughData(format!(
                "{positives} positive training rows; need failures in the earlier {:.0}% of the data",
                (1.0 - opts.validation_share) * 100.0
            )));
        }
        let x = project(&sampled.x, &opts.features);
        let scaler = fit_scaler(&x, opts.features.len());
        let z = standardise(&x, &scaler);
        drop(x);
        let group = if series
            .iter()
            .flat_map(|s| &s.failures)
            .any(|f| f.precursor == Some(true))
        {
            Group::Precursor
        } else {
            Group::All
        };
        let tails = if opts.novelty {
            progress("fitting the novelty term's tails on normal training seconds");
            Some(fit_novelty_tails(series, &split, opts.threads)?)
        } else {
            None
        };
        Ok(Self {
            series,
            opts,
            progress,
            split,
            z,
            y: sampled.y,
            positives,
            scaler,
            group,
            tails,
        })
    }

    /// The ensemble of one family, fitted in parallel.
    fn fit_members(&self, kind: ModelKind, n: usize) -> Result<Members, TrainError> {
        let (opts, z, y) = (self.opts, &self.z, &self.y);
        (self.progress)(&format!("fitting {n} {} members", kind.name()));
        let done = std::sync::atomic::AtomicUsize::new(0);
        let report = |k: usize| {
            let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            (self.progress)(&format!("  {} member {d}/{n} fitted (#{k})", kind.name()));
        };
        Ok(match kind {
            ModelKind::Logistic => Members::Logistic(
                parallel(n, opts.threads, |k| {
                    let r = fit_logistic(z, y, k, opts.seed);
                    report(k);
                    r
                })
                .into_iter()
                .collect::<Result<_, _>>()?,
            ),
            ModelKind::Forest => Members::Forest(
                parallel(n, opts.threads, |k| {
                    let r = fit_tree(z, y, k, opts);
                    report(k);
                    r
                })
                .into_iter()
                .collect::<Result<_, _>>()?,
            ),
        })
    }

    /// Fits one family, calibrates it and chooses its threshold on the validation period. The
    /// validation report (with the baseline) goes on its card only when it ranks above `beat`:
    /// only the winner's is kept.
    fn candidate(
        &self,
        kind: ModelKind,
        beat: Option<RankKey>,
        chosen_novelty_level: &mut Option<f64>,
    ) -> Result<(Model, Candidate, RankKey), TrainError> {
        let (opts, progress, horizon) = (self.opts, self.progress, self.opts.horizon_s);
        let t0 = Instant::now();
        let n = match kind {
            ModelKind::Logistic => opts.logistic_members,
            ModelKind::Forest => opts.forest_members,
        }
        .clamp(1, crate::risk::model::MAX_MEMBERS);
        let members = self.fit_members(kind, n)?;
        let fit_seconds = t0.elapsed().as_secs_f64();
        let mut model = Model {
            format: crate::risk::model::FORMAT,
            name: opts.name.clone(),
            version: String::new(),
            horizon_s: horizon as u32,
            window_s: WINDOW_S as u32,
            features: opts.features.clone(),
            scaler: self.scaler.clone(),
            members,
            calibration: Platt::IDENTITY,
            threshold: 0.5,
            hold_s: opts.hold_s,
            novelty: None,
            card: ModelCard::empty(),
        };
        progress(&format!(
            "scoring the validation period with {}",
            kind.name()
        ));
        let tails = self.tails.as_ref();
        let v = score_validation(self.series, &self.split, &model, tails, opts.threads);
        let t = tails_of(self.series, &v);
        model.calibration = fit_platt(&v.raw, &t, horizon)?;
        // The novelty alarm level: chosen on false alarms alone (it exists for failures the
        // labels do not show, so recall on the known kinds cannot choose it).
        let novelty_level = tails.map(|_| {
            *chosen_novelty_level.get_or_insert_with(|| {
                let level = novelty_level(&v.surprise, &t, model.hold_s, opts);
                progress(&format!(
                    "novelty: alarm above {level:.2} decades of rarity (its own false alarms \
                     within {:.0}% of the budget on validation)",
                    NOVELTY_BUDGET_SHARE * 100.0
                ));
                level
            })
        });
        // While the threshold is chosen, a novelty alarm counts as certain: the mapping set
        // below makes the score cross the chosen threshold exactly at the novelty level.
        let choosing = held_validation(&v, &t, model.hold_s, |x, s| {
            if novelty_level.is_some_and(|level| s > level) {
                1.0
            } else {
                model.calibration.apply(x)
            }
        });
        let thr = choose_threshold(
            &scored_of(&choosing, &t),
            &candidate_thresholds(&choosing, &t),
            opts.max_false_alarms_per_day,
            self.group,
        );
        model.threshold = thr;
        match (tails, novelty_level) {
            (Some(n), Some(level)) if level.is_finite() => {
                // p = thr at the level, ten times the odds for each decade rarer.
                let a = std::f64::consts::LN_10;
                model.novelty = Some(n.clone().calibrated(a, logit(thr) - a * level));
            }
            (Some(_), _) => progress(
                "novelty term dropped: no level keeps its false alarms within its share of the budget",
            ),
            _ => {}
        }
        let calibrated = held_validation(&v, &t, model.hold_s, |x, s| {
            let floor = model.novelty.as_ref().map_or(0.0, |n| n.probability_of(s));
            model.calibration.apply(x).max(floor)
        });
        let metrics = evaluate::grouped(&scored_of(&calibrated, &t), thr, horizon);
        let m = if self.group == Group::Precursor {
            &metrics.precursor
        } else {
            &metrics.all
        };
        let key = (
            m.recall_at_10s.unwrap_or(0.0),
            -m.false_alarms_per_appliance_day.unwrap_or(f64::INFINITY),
            m.pr_auc.unwrap_or(0.0),
        );
        progress(&format!(
            "{}: threshold {thr:.4}, validation recall@10s {:.3}, false alarms/appliance-day {:.2}, PR AUC {:.3} ({fit_seconds:.1} s)",
            kind.name(),
            key.0,
            -key.1,
            key.2
        ));
        if beat.is_none_or(|b| key > b) {
            model.card.validation =
                validation_report(self.series, &v, &t, &calibrated, thr, horizon);
        }
        let candidate = Candidate {
            kind,
            members: n,
            threshold: thr,
            validation: metrics,
            fit_seconds,
        };
        Ok((model, candidate, key))
    }

    /// The chosen model's card: its data, split, threshold rule and the candidates compared.
    fn card(
        &self,
        candidates: Vec<Candidate>,
        validation: evaluate::Report,
        chosen: &Candidate,
        started: Instant,
    ) -> ModelCard {
        let (opts, split, horizon) = (self.opts, &self.split, self.opts.horizon_s);
        let failures: Vec<&FailureSpan> = self.series.iter().flat_map(|s| &s.failures).collect();
        let with_precursor = |p: bool| failures.iter().filter(|f| f.precursor == Some(p)).count();
        ModelCard {
            // The caller stamps the date: the core reads no wall clock (durations are measured).
            created_at: String::new(),
            training_data: opts.sources.clone(),
            rows: opts.rows,
            series: self.series.len(),
            failures: [failures.len(), with_precursor(true), with_precursor(false)],
            split: format!(
                "by time: fitted on seconds t with t + {horizon} < {cut} (labels end before the cut), \
                 validated on t >= {} (features start after it); {:.0}% of the time range validates",
                split.cut + split.window,
                opts.validation_share * 100.0,
                cut = split.cut,
            ),
            fitted_rows: self.y.len(),
            fitted_positives: self.positives,
            threshold_rule: format!(
                "highest validation recall@10s ({}) with at most {} false alarms per \
                 appliance-day, on scores held at their highest over {} s",
                if self.group == Group::Precursor {
                    "failures with precursors"
                } else {
                    "all failures"
                },
                opts.max_false_alarms_per_day,
                opts.hold_s.get()
            ),
            candidates,
            validation,
            training_seconds: started.elapsed().as_secs_f64(),
            notes: vec![format!(
                "chosen: {} ensemble of {} members; score = calibrated mean, interval = calibrated \
                 10th and 90th percentiles of the members",
                chosen.kind.name(),
                chosen.members
            )],
        }
    }
}

fn validation_report(
    series: &[Series],
    v: &ValidationScores,
    t: &Tails,
    calibrated: &[Vec<f64>],
    thr: f64,
    horizon: usize,
) -> evaluate::Report {
    // Rebuild tail series so the evaluation (and its baseline) sees exactly the validation period.
    let tail_series: Vec<Series> = series
        .iter()
        .zip(&v.offsets)
        .zip(&t.failures)
        .map(|((s, &off), f)| Series {
            appliance: s.appliance,
            start: s.start + off as i64,
            samples: s.samples[off.min(s.len())..].to_vec(),
            down: s.down[off.min(s.len())..].to_vec(),
            failures: f.clone(),
        })
        .collect();
    evaluate::report(&tail_series, calibrated, thr, horizon)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_never_leaks() {
        let split = TimeSplit {
            cut: 10_000,
            horizon: 60,
            window: 300,
        };
        let train: Vec<i64> = (9000..11_000)
            .filter(|&t| split.side(t) == Side::Train)
            .collect();
        let valid: Vec<i64> = (9000..11_000)
            .filter(|&t| split.side(t) == Side::Validation)
            .collect();
        let (last_train, first_valid) = (*train.last().unwrap(), valid[0]);
        // The last training label looks at most to last_train + horizon, before the cut; the
        // first validation window starts after the cut.
        assert!(last_train + split.horizon < split.cut);
        assert!(first_valid - split.window + 1 > split.cut);
        assert_eq!(last_train, 9939);
        assert_eq!(first_valid, 10_300);
    }

    #[test]
    fn sampling_only_uses_the_training_side() {
        use crate::risk::data::telemetry::Telemetry;
        use crate::risk::simulate::{SimConfig, Simulator};
        let sim = Simulator::new(SimConfig {
            failures_per_day: 40.0,
            ..SimConfig::new(3, 4 * 3600, 3)
        });
        let mut t = Telemetry::default();
        for i in 0..3 {
            let run = sim.appliance(i);
            t.appliances.push(run.info);
            t.rows.extend(run.rows);
        }
        let series = crate::risk::data::series::build(&t, None);
        let opts = TrainOptions::default();
        let split = TimeSplit::for_series(&series, 0.3, 60);
        // Poison everything from the cut on: if any of it were sampled, features would be NaN.
        let mut poisoned = series.clone();
        for s in &mut poisoned {
            for i in 0..s.len() {
                if s.ts(i) >= split.cut {
                    s.samples[i] = [f32::INFINITY; 8];
                }
            }
        }
        let sampled = sample_rows(&poisoned, &split, &opts);
        assert!(!sampled.x.is_empty());
        assert!(sampled.y.iter().any(|l| *l));
        for row in &sampled.x {
            assert!(
                row.iter().all(|v| v.is_finite()),
                "future data leaked: {row:?}"
            );
        }
    }

    #[test]
    fn converted_logistic_matches_linfa() {
        let x = Array2::from_shape_fn((200, N_FEATURES), |(i, j)| {
            ((i * 7 + j * 3) % 11) as f64 / 5.0 - 1.0
        });
        let y: Vec<bool> = (0..200).map(|i| (i * 7) % 11 > 5).collect();
        let ds = Dataset::new(x.clone(), Array1::from(y.clone()));
        let fitted = LogisticRegression::default().alpha(1e-3).fit(&ds).unwrap();
        let lin = positive_linear(&fitted);
        // The first target is `false`, so linfa models P(false): ours must be its complement.
        assert!(!y[0]);
        let theirs = fitted.predict_probabilities(&x).mapv(|p| 1.0 - p);
        let members = Members::Logistic(vec![lin]);
        for i in 0..200 {
            let mut out = [0.0];
            members.raw(x.row(i).as_slice().unwrap(), &mut out);
            assert!((out[0] - theirs[i]).abs() < 1e-9);
        }
    }
}
