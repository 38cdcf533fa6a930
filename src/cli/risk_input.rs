//! Loading models and telemetry for the risk commands. A file that is missing, unreadable or
//! invalid is the user's input (exit code 2), with the file, line and column in the message.

use std::path::Path;

use shadowsteer::risk::dataset::{self, Loaded};
use shadowsteer::risk::model::Model;

use super::CommandError;

/// Loads and validates a model file.
pub fn load_model(path: &Path) -> Result<Model, CommandError> {
    Model::load(path).map_err(|e| CommandError::Input(format!("{}: {e}", path.display())))
}

/// Loads a telemetry file and its failures file.
pub fn load_data(path: &Path) -> Result<Loaded, CommandError> {
    dataset::load(path, None).map_err(|e| CommandError::Input(e.to_string()))
}
