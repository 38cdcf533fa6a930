//! Data in: the telemetry CSV format, failure labels, the records exchanged with the database
//! shell, and the per-second series that everything after reads.

pub mod dataset;
pub mod failures;
pub mod records;
pub mod series;
pub mod telemetry;
