//! Loading models and telemetry for the risk commands, with input errors mapped to exit code 2.

use std::path::Path;

use shadowsteer::risk::dataset::{self, DatasetError, Loaded};
use shadowsteer::risk::model::{Model, ModelError};

use super::CommandError;

/// Loads a model; a missing or invalid file is an input error.
pub fn load_model(path: &Path) -> Result<Model, CommandError> {
    Model::load(path).map_err(|e| match e {
        ModelError::Io(e) => CommandError::Input(format!("{}: {e}", path.display())),
        e => CommandError::Input(format!("{}: {e}", path.display())),
    })
}

/// Loads a telemetry file (and its failures file); bad content is an input error.
pub fn load_data(path: &Path) -> Result<Loaded, CommandError> {
    dataset::load(path, None).map_err(|e| match e {
        DatasetError::Io { .. } | DatasetError::Invalid { .. } => {
            CommandError::Input(e.to_string())
        }
    })
}
