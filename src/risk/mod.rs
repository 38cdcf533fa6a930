//! The predictive risk engine: labelled telemetry, a simulator, features over sliding windows,
//! linfa models, the evaluation metrics, and live scoring.
//!
//! Grouped by stage, each a pure core but the shells named:
//! - [`data`]: the telemetry CSV format, failure labels, the records exchanged with the
//!   database, the per-second series;
//! - [`features`]: the window, each subject's long-term baseline and the feature vector;
//! - [`model`]: the model file and its scoring, the novelty term, the alarm hold, training,
//!   batch scoring and the model card;
//! - [`evaluate`]: the metrics, and leave-one-kind-out in [`evaluate::generalisation`];
//! - [`simulate`]: labelled telemetry with failures of many kinds;
//! - [`live`]: live scoring. [`live::fleet`] holds the in-memory windows and write decisions
//!   (pure); the shells are [`live`] itself (scores from Postgres every second) and
//!   [`live::reload`] (the model in force, replaced without a restart), with
//!   [`store`](crate::store) and the CLI.
//!
//! Nothing outside the shells touches a clock, a socket or the database.
//!
//! Left out on purpose: advisories are not a model input (no labelled history of them exists in
//! the telemetry format), and live scoring stores the model's score alone. The steering server
//! combines it with the advisories in force (`steering::risk`), so an advisory takes effect the
//! moment it is added, and is counted once.

pub mod data;
pub mod evaluate;
pub mod features;
pub mod live;
pub mod model;
pub mod simulate;
