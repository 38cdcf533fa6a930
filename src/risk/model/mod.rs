//! The model file: a bootstrap ensemble (logistic regressions or decision trees trained with
//! linfa), its feature scaling, calibration, operating threshold and model card, as JSON.
//!
//! Scoring never calls linfa: the fitted parameters are copied into plain structs here (linfa's
//! trees carry no probabilities and linfa-ensemble has no serde), so a loaded model scores with
//! exactly the arithmetic it was evaluated with. Everything read from a file is validated:
//! sizes, finiteness, tree shape (children always point forward, so no cycles).

pub mod card;
pub mod hold;
pub mod novelty;
pub mod score;
pub mod train;

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::domain::{Probability, RiskScore};
use crate::risk::evaluate::{GroupedMetrics, Report};
use crate::risk::features::window::WINDOW_S;
use crate::risk::features::{FEATURE_NAMES, Features, N_CLASSIC, N_FEATURES, agnostic};
use crate::risk::model::novelty::Novelty;

/// Format version written and accepted.
pub const FORMAT: u32 = 1;
/// Most members an ensemble may have.
pub const MAX_MEMBERS: usize = 64;
/// Most nodes one tree may have.
const MAX_NODES: usize = 1 << 16;
/// Largest model file read.
const MAX_FILE_BYTES: u64 = 64 << 20;
/// Smallest feature spread a scaler may divide by: `train` standardises a feature that barely
/// varies by 1 instead, and a file with less would blow ordinary values up to infinity.
pub const MIN_SCALE: f64 = 1e-9;
/// Keeps logits finite.
const EPS: f64 = 1e-6;
/// Quantiles of the members' outputs that bound the confidence interval.
const INTERVAL: (f64, f64) = (0.1, 0.9);

/// Why a model cannot be loaded, saved or used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Reading or writing the file failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The file is not valid JSON for a model.
    #[error("not a shadowsteer model: {0}")]
    Json(#[from] serde_json::Error),
    /// The JSON parses but breaks a rule (sizes, ranges, features).
    #[error("invalid model: {0}")]
    Invalid(String),
}

/// Model families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Bagged logistic regressions (linfa-logistic).
    Logistic,
    /// Bagged decision trees with leaf probabilities (linfa-trees).
    Forest,
}

impl ModelKind {
    /// Name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Self::Logistic => "logistic",
            Self::Forest => "forest",
        }
    }
}

/// The features a model reads, by name, and where each sits in this build's feature vector.
/// Stored as the list of names: a model keeps working when later builds add features, and a
/// model naming a feature this build does not compute is refused when it is read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct FeatureSet {
    names: Vec<String>,
    /// Index of each name in [`FEATURE_NAMES`].
    cols: Vec<usize>,
}

impl FeatureSet {
    /// Every feature this build computes.
    pub fn all() -> Self {
        Self::of(&FEATURE_NAMES)
    }

    /// The per-signal features of the first models.
    pub fn classic() -> Self {
        Self::of(&FEATURE_NAMES[..N_CLASSIC])
    }

    /// The signal-agnostic features ([`agnostic`]).
    pub fn agnostic() -> Self {
        Self::of(&agnostic().collect::<Vec<_>>())
    }

    fn of(names: &[&str]) -> Self {
        let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        Self::try_from(names).expect("built-in feature lists name known features")
    }

    /// A set by name (`all`, `classic`, `agnostic`) or as comma-separated feature names.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "all" => Ok(Self::all()),
            "classic" => Ok(Self::classic()),
            "agnostic" => Ok(Self::agnostic()),
            list => Self::try_from(
                list.split(',')
                    .map(|s| s.trim().to_owned())
                    .collect::<Vec<_>>(),
            ),
        }
    }

    /// Number of features.
    pub fn len(&self) -> usize {
        self.cols.len()
    }

    /// Whether the set is empty (never, for a set that was read or built).
    pub fn is_empty(&self) -> bool {
        self.cols.is_empty()
    }

    /// The names, in model order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Writes this set's values of `x`, in model order, to the front of `out`.
    #[inline]
    pub fn gather(&self, x: &Features, out: &mut [f64]) {
        for (o, &c) in out.iter_mut().zip(&self.cols) {
            *o = x[c];
        }
    }
}

impl TryFrom<Vec<String>> for FeatureSet {
    type Error = String;

    fn try_from(names: Vec<String>) -> Result<Self, String> {
        if names.is_empty() {
            return Err("no features".into());
        }
        let mut cols = Vec::with_capacity(names.len());
        for n in &names {
            let c = FEATURE_NAMES.iter().position(|f| f == n).ok_or_else(|| {
                format!(
                    "unknown feature {n:?}; this build computes {}",
                    FEATURE_NAMES.join(", ")
                )
            })?;
            if cols.contains(&c) {
                return Err(format!("feature {n:?} is listed twice"));
            }
            cols.push(c);
        }
        Ok(Self { names, cols })
    }
}

impl From<FeatureSet> for Vec<String> {
    fn from(f: FeatureSet) -> Self {
        f.names
    }
}

/// Standardisation: `z = (x - mean) / scale`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scaler {
    /// Per-feature mean.
    pub mean: Vec<f64>,
    /// Per-feature scale (standard deviation, 1 when constant).
    pub scale: Vec<f64>,
}

/// One logistic regression.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Linear {
    /// Intercept.
    pub intercept: f64,
    /// One weight per feature.
    pub weights: Vec<f64>,
}

/// A tree node. Children are later in the node list than their parent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Node {
    /// Go left when `feature < threshold` (linfa's rule), else right.
    Split {
        /// Feature index.
        feature: u16,
        /// Threshold on the standardised feature.
        threshold: f64,
        /// Index of the left child.
        left: u32,
        /// Index of the right child.
        right: u32,
    },
    /// Probability of the positive class in this leaf.
    Leaf(f64),
}

/// One decision tree; node 0 is the root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tree {
    /// Nodes.
    pub nodes: Vec<Node>,
}

impl Tree {
    /// The index of the leaf `z` falls into.
    pub fn leaf_index(&self, z: &[f64]) -> usize {
        let mut i = 0usize;
        // Validated on load: children point forward, so this terminates.
        loop {
            match &self.nodes[i] {
                Node::Leaf(_) => return i,
                Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                } => {
                    i = if z[*feature as usize] < *threshold {
                        *left as usize
                    } else {
                        *right as usize
                    };
                }
            }
        }
    }

    /// The leaf probability for `z`.
    pub fn predict(&self, z: &[f64]) -> f64 {
        match &self.nodes[self.leaf_index(z)] {
            Node::Leaf(p) => *p,
            Node::Split { .. } => unreachable!("leaf_index returns leaves only"),
        }
    }
}

/// The ensemble's members.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Members {
    /// Logistic regressions.
    Logistic(Vec<Linear>),
    /// Trees.
    Forest(Vec<Tree>),
}

impl Members {
    /// Number of members.
    pub fn len(&self) -> usize {
        match self {
            Self::Logistic(m) => m.len(),
            Self::Forest(m) => m.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The family.
    pub fn kind(&self) -> ModelKind {
        match self {
            Self::Logistic(_) => ModelKind::Logistic,
            Self::Forest(_) => ModelKind::Forest,
        }
    }

    /// Writes each member's raw probability for standardised features `z` into `out`.
    pub fn raw(&self, z: &[f64], out: &mut [f64]) {
        match self {
            Self::Logistic(ms) => {
                for (m, o) in ms.iter().zip(out) {
                    let s: f64 =
                        m.intercept + m.weights.iter().zip(z).map(|(w, x)| w * x).sum::<f64>();
                    *o = sigmoid(s);
                }
            }
            Self::Forest(ts) => {
                for (t, o) in ts.iter().zip(out) {
                    *o = t.predict(z);
                }
            }
        }
    }
}

/// Platt scaling of the ensemble's mean: `p = sigmoid(a * logit(raw) + b)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Platt {
    /// Slope.
    pub a: f64,
    /// Offset.
    pub b: f64,
}

impl Platt {
    /// No change.
    pub const IDENTITY: Platt = Platt { a: 1.0, b: 0.0 };

    /// The calibrated probability of a raw probability.
    pub fn apply(&self, raw: f64) -> f64 {
        sigmoid(self.a * logit(raw) + self.b)
    }
}

/// The logistic function.
pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The log-odds of `p`, clamped away from 0 and 1.
pub fn logit(p: f64) -> f64 {
    let p = p.clamp(EPS, 1.0 - EPS);
    (p / (1.0 - p)).ln()
}

/// How one candidate family did on the validation split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// The family.
    pub kind: ModelKind,
    /// Members fitted.
    pub members: usize,
    /// Threshold chosen for it.
    pub threshold: f64,
    /// Its validation metrics at that threshold.
    pub validation: GroupedMetrics,
    /// Seconds spent fitting it.
    pub fit_seconds: f64,
}

/// What the model is, what it was trained on and how well it did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// When training finished (RFC 3339).
    pub created_at: String,
    /// Where the training data came from (files, or the database).
    pub training_data: Vec<String>,
    /// Telemetry rows read.
    pub rows: u64,
    /// Series (contiguous per-appliance stretches).
    pub series: usize,
    /// Failures in the data: all, with precursors, without.
    pub failures: [usize; 3],
    /// How the data was split by time.
    pub split: String,
    /// Rows the models were fitted on (all positives, sampled negatives).
    pub fitted_rows: usize,
    /// Positive rows among them.
    pub fitted_positives: usize,
    /// How the operating threshold was chosen.
    pub threshold_rule: String,
    /// Every family tried.
    pub candidates: Vec<Candidate>,
    /// The chosen model on the validation split, with the baseline beside it.
    pub validation: Report,
    /// Wall-clock training time in seconds.
    pub training_seconds: f64,
    /// Anything a reader should know.
    pub notes: Vec<String>,
}

impl ModelCard {
    /// A card with nothing in it yet (filled in by training).
    pub fn empty() -> Self {
        Self {
            created_at: String::new(),
            training_data: Vec::new(),
            rows: 0,
            series: 0,
            failures: [0; 3],
            split: String::new(),
            fitted_rows: 0,
            fitted_positives: 0,
            threshold_rule: String::new(),
            candidates: Vec::new(),
            validation: crate::risk::evaluate::report(&[], &[], 0.5, 60),
            training_seconds: 0.0,
            notes: Vec::new(),
        }
    }
}

/// A trained risk model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    /// File format version.
    pub format: u32,
    /// Name given at training.
    pub name: String,
    /// `name-<hash of the parameters>`: changes whenever the scores could.
    pub version: String,
    /// Label horizon: the score is the probability that a failure starts within this many
    /// seconds.
    pub horizon_s: u32,
    /// Feature window in seconds.
    pub window_s: u32,
    /// The features read, in the order of the scaler, weights and tree splits.
    pub features: FeatureSet,
    /// Feature standardisation.
    pub scaler: Scaler,
    /// The ensemble.
    pub members: Members,
    /// Calibration of the ensemble mean.
    pub calibration: Platt,
    /// Operating threshold: alarm when the score is above it.
    pub threshold: f64,
    /// Alarm hold (see [`crate::risk::model::hold`]).
    pub hold_s: hold::HoldSeconds,
    /// The unsupervised term, when trained with one: the score is the larger of the
    /// ensemble's and its probability (see [`crate::risk::model::novelty`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub novelty: Option<Novelty>,
    /// The model card.
    pub card: ModelCard,
}

impl Model {
    /// A model that scores `p` for everything: for tests of the plumbing around models.
    pub fn constant(name: &str, p: f64) -> Self {
        let mut m = Model {
            format: FORMAT,
            name: name.to_owned(),
            version: String::new(),
            horizon_s: 60,
            window_s: WINDOW_S as u32,
            features: FeatureSet::classic(),
            scaler: Scaler {
                mean: vec![0.0; N_CLASSIC],
                scale: vec![1.0; N_CLASSIC],
            },
            members: Members::Logistic(vec![Linear {
                intercept: logit(p),
                weights: vec![0.0; N_CLASSIC],
            }]),
            calibration: Platt::IDENTITY,
            threshold: 0.5,
            hold_s: hold::HoldSeconds::NONE,
            novelty: None,
            card: ModelCard::empty(),
        };
        m.version = m.compute_version();
        m
    }

    /// The version string for these parameters.
    pub fn compute_version(&self) -> String {
        let mut h = Sha256::new();
        let mut params = serde_json::json!({
            "horizon_s": self.horizon_s,
            "window_s": self.window_s,
            "scaler": self.scaler,
            "members": self.members,
            "calibration": self.calibration,
            "threshold": self.threshold,
            "hold_s": self.hold_s,
        });
        // The first models read the classic features only and hashed no feature list; keeping
        // it out for them keeps their versions (and the stored scores naming them) valid.
        if self.features != FeatureSet::classic() {
            params["features"] = serde_json::json!(self.features.names());
        }
        if let Some(n) = &self.novelty {
            params["novelty"] = serde_json::json!(n);
        }
        h.update(params.to_string().as_bytes());
        let digest = h.finalize();
        let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        format!("{}-{hex}", self.name)
    }

    /// Checks every rule a loaded model must meet.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Invalid(m));
        if self.format != FORMAT {
            return bad(format!(
                "format {} (this build reads {FORMAT})",
                self.format
            ));
        }
        let k = self.features.len();
        if self.window_s as usize != WINDOW_S {
            return bad(format!(
                "window {} s, this build uses {WINDOW_S} s",
                self.window_s
            ));
        }
        if self.horizon_s == 0 || self.horizon_s > 86_400 {
            return bad(format!("horizon {} s is not in 1..=86400", self.horizon_s));
        }
        if self.name.is_empty() || self.name.len() > 100 || self.version.len() > 200 {
            return bad("name must be 1 to 100 characters".into());
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return bad(format!("threshold {} is not in [0, 1]", self.threshold));
        }
        if !(self.calibration.a.is_finite() && self.calibration.b.is_finite()) {
            return bad("calibration is not finite".into());
        }
        let finite = |v: &[f64]| v.iter().all(|x| x.is_finite());
        if self.scaler.mean.len() != k
            || self.scaler.scale.len() != k
            || !finite(&self.scaler.mean)
            || !self
                .scaler
                .scale
                .iter()
                .all(|s| s.is_finite() && *s > MIN_SCALE)
        {
            return bad(format!(
                "scaler must have a finite mean and a scale above {MIN_SCALE:e} per feature"
            ));
        }
        if self.members.is_empty() || self.members.len() > MAX_MEMBERS {
            return bad(format!("needs 1 to {MAX_MEMBERS} members"));
        }
        match &self.members {
            Members::Logistic(ms) => {
                for (i, m) in ms.iter().enumerate() {
                    if m.weights.len() != k || !finite(&m.weights) || !m.intercept.is_finite() {
                        return bad(format!("member {i}: needs {k} finite weights"));
                    }
                }
            }
            Members::Forest(ts) => {
                for (i, t) in ts.iter().enumerate() {
                    check_tree(t, k).map_err(|m| ModelError::Invalid(format!("tree {i}: {m}")))?;
                }
            }
        }
        if let Some(n) = &self.novelty {
            n.validate().map_err(ModelError::Invalid)?;
        }
        if self.version != self.compute_version() {
            return bad(format!(
                "version {} does not match its parameters ({}); the file was edited",
                self.version,
                self.compute_version()
            ));
        }
        Ok(())
    }

    /// The default model shipped in `models/default.json`, built into the binary so that
    /// `serve` scores out of the box wherever it runs.
    pub fn builtin() -> Result<Self, ModelError> {
        Self::from_json(include_str!("../../../models/default.json"))
    }

    /// Reads and validates a model file.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let file = std::fs::File::open(path)?;
        let mut text = String::new();
        file.take(MAX_FILE_BYTES + 1).read_to_string(&mut text)?;
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(ModelError::Invalid(format!(
                "file is larger than {MAX_FILE_BYTES} bytes"
            )));
        }
        Self::from_json(&text)
    }

    /// Parses and validates a model from JSON text.
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let model: Model = serde_json::from_str(text)?;
        model.validate()?;
        Ok(model)
    }

    /// Writes the model as JSON (atomically: a temporary file renamed into place).
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let text = serde_json::to_string(self)?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    /// The ensemble mean of raw member probabilities, and the interval quantiles.
    fn raw(&self, x: &Features) -> (f64, f64, f64) {
        let mut z = [0f64; N_FEATURES];
        let z = &mut z[..self.features.len()];
        self.features.gather(x, z);
        for ((zi, m), s) in z.iter_mut().zip(&self.scaler.mean).zip(&self.scaler.scale) {
            *zi = (*zi - m) / s;
        }
        let mut out = [0f64; MAX_MEMBERS];
        let n = self.members.len();
        let out = &mut out[..n];
        self.members.raw(z, out);
        let mean = out.iter().sum::<f64>() / n as f64;
        // Nearest-rank quantiles; selecting the higher rank first leaves the lower one in the
        // front part, so the second selection only searches there.
        let rank = |p: f64| ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
        let (lo, hi) = (rank(INTERVAL.0), rank(INTERVAL.1));
        let high = *out.select_nth_unstable_by(hi, f64::total_cmp).1;
        let low = *out[..=hi].select_nth_unstable_by(lo, f64::total_cmp).1;
        (mean, low, high)
    }

    /// The uncalibrated ensemble mean (what the calibration is fitted on).
    pub fn raw_score(&self, x: &Features) -> f64 {
        self.raw(x).0
    }

    /// The calibrated score with its interval. A novelty term can only raise all three.
    ///
    /// Where the arithmetic fails (a NaN feature, or one so large that, standardised, it
    /// overflows and meets a zero weight), the score is 1: a model that cannot tell
    /// must not call the subject healthy, as a silent subject is unknown-high. (NaN would
    /// otherwise fall out of the comparisons below as the lowest score there is.)
    pub fn score(&self, x: &Features) -> RiskScore {
        let (mean, lo, hi) = self.raw(x);
        let floor = self.novelty.as_ref().map_or(0.0, |n| n.probability(x));
        if [mean, lo, hi, floor].iter().any(|v| v.is_nan()) {
            return RiskScore::exact(Probability::ONE);
        }
        let p = self.calibration.apply(mean).max(floor);
        let low = self.calibration.apply(lo).max(floor).min(p);
        let high = self.calibration.apply(hi).max(p);
        RiskScore::new(p, low, high)
            .unwrap_or_else(|_| RiskScore::exact(Probability::saturating(p)))
    }
}

fn check_tree(t: &Tree, features: usize) -> Result<(), String> {
    if t.nodes.is_empty() || t.nodes.len() > MAX_NODES {
        return Err(format!("needs 1 to {MAX_NODES} nodes"));
    }
    let n = t.nodes.len();
    for (i, node) in t.nodes.iter().enumerate() {
        match node {
            Node::Leaf(p) if !(0.0..=1.0).contains(p) => {
                return Err(format!("node {i}: leaf probability {p} not in [0, 1]"));
            }
            Node::Leaf(_) => {}
            Node::Split {
                feature,
                threshold,
                left,
                right,
            } => {
                let (l, r) = (*left as usize, *right as usize);
                if *feature as usize >= features || !threshold.is_finite() {
                    return Err(format!("node {i}: bad feature or threshold"));
                }
                if l <= i || r <= i || l >= n || r >= n {
                    return Err(format!("node {i}: children must come later in the list"));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_shape_is_checked() {
        let ok = Tree {
            nodes: vec![
                Node::Split {
                    feature: 0,
                    threshold: 0.5,
                    left: 1,
                    right: 2,
                },
                Node::Leaf(0.1),
                Node::Leaf(0.9),
            ],
        };
        assert!(check_tree(&ok, 1).is_ok());
        assert_eq!(ok.predict(&[0.2; N_FEATURES]), 0.1);
        assert_eq!(ok.predict(&[0.5; N_FEATURES]), 0.9);
        let cyclic = Tree {
            nodes: vec![Node::Split {
                feature: 0,
                threshold: 0.5,
                left: 0,
                right: 0,
            }],
        };
        assert!(check_tree(&cyclic, 1).is_err());
        assert!(
            check_tree(
                &Tree {
                    nodes: vec![Node::Leaf(1.5)]
                },
                1
            )
            .is_err()
        );
    }

    #[test]
    fn feature_sets_are_checked_and_gathered() {
        assert_eq!(FeatureSet::all().len(), N_FEATURES);
        assert_eq!(FeatureSet::classic().len(), N_CLASSIC);
        let e = FeatureSet::parse("cpu_mean10,nope").unwrap_err();
        assert!(e.contains("unknown feature \"nope\""), "{e}");
        assert!(FeatureSet::parse("cpu_mean10,cpu_mean10").is_err());
        let f = FeatureSet::parse("anom_max10, cpu_mean10").unwrap();
        let mut x = [0.0; N_FEATURES];
        x[0] = 1.0;
        x[N_CLASSIC] = 2.0;
        let mut out = [0.0; 2];
        f.gather(&x, &mut out);
        assert_eq!(out, [2.0, 1.0]);
        // Stored as names; read back the same.
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(json, r#"["anom_max10","cpu_mean10"]"#);
        assert_eq!(serde_json::from_str::<FeatureSet>(&json).unwrap(), f);
        assert!(serde_json::from_str::<FeatureSet>(r#"["x"]"#).is_err());
    }

    #[test]
    fn a_constant_model_keeps_its_version_rule() {
        let m = Model::constant("c", 0.2);
        assert!(m.validate().is_ok());
        let mut other = m.clone();
        other.features = FeatureSet::parse(&FEATURE_NAMES[1..=N_CLASSIC].join(",")).unwrap();
        assert_ne!(
            other.compute_version(),
            m.compute_version(),
            "features are hashed"
        );
    }

    #[test]
    fn a_hold_outside_a_second_to_a_minute_does_not_load() {
        let mut m = Model::constant("c", 0.2);
        m.hold_s = hold::HoldSeconds::new(60).unwrap();
        m.version = m.compute_version();
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(Model::from_json(&text).unwrap().hold_s.get(), 60);
        for bad in [0, 61] {
            let edited = text.replace("\"hold_s\":60", &format!("\"hold_s\":{bad}"));
            assert_ne!(edited, text);
            let e = Model::from_json(&edited).unwrap_err().to_string();
            assert!(
                e.contains(&format!("hold {bad} s is not in 1..=60 s")),
                "hold {bad}: {e}"
            );
        }
    }

    #[test]
    fn a_score_the_arithmetic_cannot_give_is_high_not_healthy() {
        let mut m = Model::constant("c", 0.2);
        m.scaler.scale[0] = 1e-8;
        m.version = m.compute_version();
        assert!(m.validate().is_ok());
        let mut x = [0.0; N_FEATURES];
        assert!((m.score(&x).value().get() - 0.2).abs() < 1e-9);
        // (1e301 - 0) / 1e-8 overflows; times the zero weight it is NaN.
        x[0] = 1e301;
        assert!(m.raw_score(&x).is_nan());
        assert_eq!(m.score(&x).value().get(), 1.0);
        x[0] = f64::NAN;
        assert_eq!(m.score(&x).value().get(), 1.0);
    }

    #[test]
    fn a_scale_train_would_never_write_is_refused() {
        for (scale, ok) in [
            (1e-300, false),
            (0.0, false),
            (MIN_SCALE, false),
            (2e-9, true),
        ] {
            let mut m = Model::constant("c", 0.2);
            m.scaler.scale[3] = scale;
            m.version = m.compute_version();
            let r = m.validate();
            assert_eq!(r.is_ok(), ok, "scale {scale}: {r:?}");
        }
    }

    #[test]
    fn platt_is_monotone() {
        let p = Platt { a: 2.0, b: -1.0 };
        assert!(p.apply(0.2) < p.apply(0.3));
        assert!((Platt::IDENTITY.apply(0.3) - 0.3).abs() < 1e-12);
    }
}
