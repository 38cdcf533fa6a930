//! shadowsteer: predictive DNS steering and cross-region session shadowing for WireGuard VPN
//! appliances.
//!
//! Layout (see `DESIGN.md` of the project for the architecture):
//! - [`domain`]: validated value types shared by every part (ids, keys, scores, health, sessions).
//! - [`config`]: TOML configuration files, parsed and validated with errors that name file and key.
//! - [`store`]: Postgres access: migrations, inventory, telemetry ingestion, notifications, retention.
//! - [`localpg`]: local Postgres clusters started from the installed server binaries.
//! - [`risk`]: the predictive risk engine (telemetry format, simulator, training, scoring).
//!
//! Pure decision logic lives apart from I/O: a module that decides never opens a socket, reads the
//! clock or touches the database; its shell does.
#![warn(missing_docs)]

pub mod config;
pub mod domain;
pub mod localpg;
pub mod risk;
pub mod store;
