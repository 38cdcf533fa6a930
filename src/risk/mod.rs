//! The predictive risk engine: labelled telemetry, a simulator, features over sliding windows,
//! linfa models, the evaluation metrics, and live scoring.
//!
//! Pure core: [`telemetry`] (CSV format), [`failures`] (failure labels), [`series`] (per-second
//! layout), [`features`], [`simulate`], [`train`], [`model`], [`novelty`] (the unsupervised
//! term), [`evaluate`], [`generalisation`]
//! (leave-one-kind-out), [`score`] and
//! [`fleet`] (the live scorer's in-memory windows and write decisions). None of them touches a clock, a socket or
//! the database. The shells are [`live`] (scores from Postgres every second), [`reload`] (the model in force,
//! replaced without a restart) and
//! [`store`](crate::store) / the CLI.
//!
//! Left out on purpose: advisories are not a model input (no labelled history of them exists in
//! the telemetry format), and live scoring stores the model's score alone. The steering server
//! combines it with the advisories in force (`steering::risk`), so an advisory takes effect the
//! moment it is added, and is counted once.

pub mod baseline;
pub mod card;
pub mod dataset;
pub mod evaluate;
pub mod failures;
pub mod features;
pub mod fleet;
pub mod generalisation;
pub mod hold;
pub mod live;
pub mod model;
pub mod novelty;
pub mod records;
pub mod reload;
pub mod score;
pub mod series;
pub mod simulate;
pub mod telemetry;
pub mod train;
pub mod window;
