//! Loading models and telemetry for the risk commands. A file that is missing, unreadable or
//! invalid is the user's input (exit code 2), with the file, line and column in the message.

use std::path::Path;

use shadowsteer::risk::data::dataset::{self, Loaded};
use shadowsteer::risk::model::hold::HoldSeconds;
use shadowsteer::risk::model::train::TrainOptions;
use shadowsteer::risk::model::{FeatureSet, Model, ModelKind};

use super::{CommandError, progress};

/// Loads and validates a model file.
pub fn load_model(path: &Path) -> Result<Model, CommandError> {
    Model::load(path).map_err(|e| CommandError::Input(format!("{}: {e}", path.display())))
}

/// Loads a telemetry file and its failures file, with a progress bar when stderr is a
/// terminal.
pub fn load_data(path: &Path) -> Result<Loaded, CommandError> {
    let len = std::fs::metadata(path).map_or(0, |m| m.len());
    let bar = progress::bytes(len, format!("reading {}", path.display()));
    let loaded = dataset::load_with_progress(path, None, &mut |read| bar.set_position(read));
    bar.finish_and_clear();
    loaded.map_err(|e| CommandError::Input(e.to_string()))
}

/// The model families named by `--models` (`logistic`, `forest`).
pub fn model_kinds(names: &[String]) -> Result<Vec<ModelKind>, CommandError> {
    names
        .iter()
        .map(|m| match m.as_str() {
            "logistic" => Ok(ModelKind::Logistic),
            "forest" => Ok(ModelKind::Forest),
            other => Err(CommandError::Input(format!(
                "unknown model family {other:?}; use logistic and/or forest"
            ))),
        })
        .collect()
}

/// The `--features` option.
pub fn feature_set(text: &str) -> Result<FeatureSet, CommandError> {
    FeatureSet::parse(text).map_err(|e| CommandError::Input(format!("--features: {e}")))
}

/// The training recipe's options, one declaration for `train` and `evaluate
/// --leave-one-kind-out`, so that a leave-one-kind-out table measures what `train` builds.
#[derive(Debug, clap::Args)]
pub struct RecipeArgs {
    /// Label horizon in seconds: the score is the probability of a failure within it.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=3600))]
    horizon: u32,
    /// Families to train and compare.
    #[arg(long, value_delimiter = ',', default_value = "logistic,forest")]
    models: Vec<String>,
    /// Features the model reads: `classic` (one set per signal), `agnostic` (how abnormal
    /// against the appliance's own baseline, on any signal), `all`, or a comma-separated list
    /// of feature names.
    #[arg(long, default_value = "classic")]
    features: String,
    /// Adds the unsupervised novelty term: how rare each signal's excursion from its own level
    /// is in normal operation, whatever the signal; the score is the larger of the two.
    #[arg(long)]
    novelty: bool,
    /// False alarms per appliance-day allowed when choosing the operating threshold.
    #[arg(long, default_value_t = 0.5)]
    max_false_alarms: f64,
    /// Alarm hold in seconds: a score counts as its highest over this many seconds, so an
    /// alarm survives a precursor's brief returns to normal (stored in the model, used by
    /// live scoring too).
    #[arg(long, default_value_t = HoldSeconds::DEFAULT)]
    hold: HoldSeconds,
    /// Members per ensemble (logistic; forests get twice as many).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=32))]
    members: u32,
    /// Random seed for sampling and bootstraps.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

impl RecipeArgs {
    /// Training options for this recipe, named `name`, on up to `threads` threads; the rest
    /// (validation share, sources) at their defaults.
    pub fn options(&self, name: String, threads: usize) -> Result<TrainOptions, CommandError> {
        Ok(TrainOptions {
            name,
            horizon_s: self.horizon as usize,
            kinds: model_kinds(&self.models)?,
            features: feature_set(&self.features)?,
            logistic_members: self.members as usize,
            forest_members: 2 * self.members as usize,
            max_false_alarms_per_day: self.max_false_alarms,
            hold_s: self.hold,
            seed: self.seed,
            threads: threads.clamp(1, 64),
            novelty: self.novelty,
            ..TrainOptions::default()
        })
    }
}
