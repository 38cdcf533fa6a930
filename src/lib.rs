//! shadowsteer: predictive DNS steering and cross-region session shadowing for WireGuard VPN
//! appliances.
//!
//! Layout (see `DESIGN.md` of the project for the architecture):
//! - [`domain`]: validated value types shared by every part (ids, keys, scores, health, sessions).
//! - [`keyfile`]: private key files (owner-only permissions enforced).
//! - [`config`]: TOML configuration files, parsed and validated with errors that name file and key.
//! - [`inventory`]: the one domain layer of inventory changes, shared by the CLI and the admin API.
//! - [`store`]: Postgres access: migrations, inventory, telemetry ingestion, notifications, retention.
//! - [`localpg`]: local Postgres clusters started from the installed server binaries.
//! - [`agent`]: the appliance agent (data plane, roster, health, probes, session recorder).
//! - [`client`]: the client helper (resolves its appliance by DNS, roams, measures).
//! - [`tunnel`]: the WireGuard data plane (boringtun), used by the agent and the client helper.
//! - [`risk`]: the predictive risk engine (telemetry format, simulator, training, scoring).
//! - [`metrics`]: Prometheus exposition: one registry per process, a collector per capability.
//!
//! Pure decision logic lives apart from I/O: a module that decides never opens a socket, reads the
//! clock or touches the database; its shell does.
#![warn(missing_docs)]

pub mod admin;
pub mod agent;
pub mod client;
pub mod config;
pub mod demo;
pub mod dns;
pub mod domain;
pub mod inventory;
pub mod keyfile;
pub mod localpg;
pub mod metrics;
pub mod publish;
pub mod reuseport;
pub mod risk;
pub mod steering;
pub mod store;
pub mod takeover;
pub mod tls;
pub mod tunnel;
