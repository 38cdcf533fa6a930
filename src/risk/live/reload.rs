//! The model in force in `serve`, and replacing it without a restart (SIGHUP or
//! `POST /api/v1/model/reload`).
//!
//! [`ModelSource`] holds the model every reader sees (the live scorer takes it at the start of
//! each round; the admin API for `/model`). A reload reads the configured file again and
//! validates it completely before anything changes: a file that is missing, not a model, or
//! breaks a model rule is refused with that reason, and the model in force stays. The live
//! scorer notices a new version at its next round and rewrites every score once, so each
//! stored score names the model that computed it.
//!
//! Steering thresholds that follow the model's threshold follow a reloaded model too (see
//! [`crate::publish::FollowModel`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

use crate::risk::model::{Model, ModelError};

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The configured file cannot be read, is not a model, or breaks a model rule.
    #[error("{path}: {source}; the model in force ({version}) stays")]
    Model {
        /// The file.
        path: String,
        /// What is wrong with it.
        source: ModelError,
        /// The version still in force.
        version: String,
    },
}

/// What a successful reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Version in force before.
    pub previous: String,
    /// Version in force now.
    pub version: String,
}

impl Reloaded {
    /// Whether the version changed (the same file again changes nothing).
    pub fn changed(&self) -> bool {
        self.previous != self.version
    }
}

/// The model in force and where a reload reads it from.
#[derive(Debug)]
pub struct ModelSource {
    /// The configured file; `None`: the built-in model (a reload keeps it).
    path: Option<PathBuf>,
    /// The model in force.
    current: watch::Sender<Arc<Model>>,
    /// Reloads that replaced or confirmed the model.
    reloads: AtomicU64,
    /// Reloads refused.
    failures: AtomicU64,
}

impl ModelSource {
    /// `model` (as loaded at start from `path`, or the built-in one) in force.
    pub fn new(path: Option<PathBuf>, model: Arc<Model>) -> Self {
        Self {
            path,
            current: watch::Sender::new(model),
            reloads: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// The model in force now.
    pub fn current(&self) -> Arc<Model> {
        Arc::clone(&self.current.borrow())
    }

    /// Told of every model put in force after this call.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Model>> {
        self.current.subscribe()
    }

    /// Reloads completed and refused since start.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.reloads.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
        )
    }

    /// Reads the configured file again and puts it in force if it is a valid model. Blocking
    /// (file I/O and validation): call it from `spawn_blocking`.
    pub fn reload(&self) -> Result<Reloaded, ReloadError> {
        let previous = self.current();
        let loaded = match &self.path {
            Some(path) => Model::load(path).map_err(|source| ReloadError::Model {
                path: path.display().to_string(),
                source,
                version: previous.version.clone(),
            }),
            None => Model::builtin().map_err(|source| ReloadError::Model {
                path: "built-in model".into(),
                source,
                version: previous.version.clone(),
            }),
        };
        let model = match loaded {
            Ok(m) => m,
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "risk model reload refused");
                return Err(e);
            }
        };
        let done = Reloaded {
            previous: previous.version.clone(),
            version: model.version.clone(),
        };
        if done.changed() {
            if model.threshold != previous.threshold {
                tracing::info!(
                    old = previous.threshold,
                    new = model.threshold,
                    "the reloaded model has another operating threshold; steering thresholds left out of [steering] follow it"
                );
            }
            tracing::info!(previous = %done.previous, version = %done.version, name = %model.name, "risk model reloaded");
            self.current.send_replace(Arc::new(model));
        } else {
            tracing::info!(version = %done.version, "risk model reloaded: unchanged");
        }
        self.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_switches_to_a_valid_file_and_keeps_the_old_model_on_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        let a = Model::constant("a", 0.1);
        a.save(&path).unwrap();
        let source = ModelSource::new(Some(path.clone()), Arc::new(a.clone()));
        // Same file: nothing changes.
        let same = source.reload().unwrap();
        assert!(!same.changed());
        let b = Model::constant("b", 0.3);
        b.save(&path).unwrap();
        let done = source.reload().unwrap();
        assert_eq!(
            (done.previous.as_str(), done.version.as_str()),
            (a.version.as_str(), b.version.as_str())
        );
        assert_eq!(source.current().version, b.version);
        // Corrupt, truncated and missing files are refused with the reason; b stays.
        for text in ["{ not json", &serde_json::to_string(&b).unwrap()[..40]] {
            std::fs::write(&path, text).unwrap();
            let e = source.reload().unwrap_err().to_string();
            assert!(e.contains("not a shadowsteer model"), "{e}");
            assert!(e.contains(&b.version), "{e}");
            assert_eq!(source.current().version, b.version);
        }
        let mut tampered = serde_json::to_value(&b).unwrap();
        tampered["threshold"] = serde_json::json!(0.9);
        std::fs::write(&path, tampered.to_string()).unwrap();
        let e = source.reload().unwrap_err().to_string();
        assert!(e.contains("invalid model"), "{e}");
        std::fs::remove_file(&path).unwrap();
        assert!(source.reload().is_err());
        assert_eq!(source.current().version, b.version);
        assert_eq!(source.counts(), (2, 4));
    }
}
