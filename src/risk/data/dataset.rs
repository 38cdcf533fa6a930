//! Loading labelled telemetry files: the CSV, its companion failures file if present, and the
//! per-appliance series built from them.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use crate::risk::data::failures::{FailureLabels, companion_path, read_failures};
use crate::risk::data::series::{self, Series};
use crate::risk::data::telemetry::{Telemetry, TelemetryError, read_csv_with_progress};

/// Why a data file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The file could not be opened or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file's content is invalid.
    #[error("{}: {source}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Line and column of each problem.
        source: TelemetryError,
    },
}

/// One loaded file.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Where it came from.
    pub path: PathBuf,
    /// Its rows.
    pub telemetry: Telemetry,
    /// Its failure labels, when a companion file exists (or was given).
    pub labels: Option<FailureLabels>,
    /// Its series.
    pub series: Vec<Series>,
}

fn open(path: &Path) -> Result<BufReader<File>, DatasetError> {
    File::open(path)
        .map(|f| BufReader::with_capacity(1 << 20, f))
        .map_err(|source| DatasetError::Io {
            path: path.to_owned(),
            source,
        })
}

fn invalid(path: &Path) -> impl FnOnce(TelemetryError) -> DatasetError + '_ {
    move |source| match source {
        TelemetryError::Io(source) => DatasetError::Io {
            path: path.to_owned(),
            source,
        },
        source => DatasetError::Invalid {
            path: path.to_owned(),
            source,
        },
    }
}

/// Reads a failures file.
pub fn load_labels(path: &Path) -> Result<FailureLabels, DatasetError> {
    read_failures(open(path)?).map_err(invalid(path))
}

/// Loads a telemetry file with `labels` (or its companion failures file when `labels` is
/// `None` and the companion exists).
pub fn load(path: &Path, labels: Option<&Path>) -> Result<Loaded, DatasetError> {
    load_with_progress(path, labels, &mut |_| {})
}

/// [`load`], calling `progress` with the bytes of the telemetry file read so far (see
/// [`read_csv_with_progress`]).
pub fn load_with_progress(
    path: &Path,
    labels: Option<&Path>,
    progress: &mut dyn FnMut(u64),
) -> Result<Loaded, DatasetError> {
    let telemetry = read_csv_with_progress(open(path)?, progress).map_err(invalid(path))?;
    let companion = companion_path(path);
    let labels = match labels {
        Some(l) => Some(load_labels(l)?),
        None if companion.exists() => Some(load_labels(&companion)?),
        None => None,
    };
    let series = series::build(&telemetry, labels.as_ref());
    Ok(Loaded {
        path: path.to_owned(),
        telemetry,
        labels,
        series,
    })
}
