//! Loading models and telemetry for the risk commands. A file that is missing, unreadable or
//! invalid is the user's input (exit code 2), with the file, line and column in the message.

use std::path::Path;

use shadowsteer::risk::data::dataset::{self, Loaded};
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
