//! Command-line interface: argument definitions and the shells that run each subcommand.
//!
//! Exit codes: 0 success, 1 the system failed (database unreachable, I/O), 2 the input was
//! wrong (bad value, unknown id, duplicate); with 2 nothing was written.

mod agent;
mod client;
mod config_cmd;
mod db;
mod demo;
mod evaluate;
mod failure;
mod inventory;
mod keys;
mod progress;
mod replication;
mod risk_input;
mod score;
mod serve;
mod session;
mod simulate;
mod table;
mod telemetry;
mod token;
mod train;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Predictive DNS steering and cross-region session shadowing for WireGuard VPN appliances.
#[derive(Debug, Parser)]
#[command(name = "shadowsteer", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check configuration files.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Database schema (migrate, status, prune) and cross-region replication.
    #[command(subcommand)]
    Db(db::DbCommand),
    /// Manage appliances.
    #[command(subcommand)]
    Appliance(inventory::ApplianceCommand),
    /// Manage VPN clients.
    #[command(subcommand)]
    Client(inventory::ClientCommand),
    /// Manage risk advisories (operator-entered external risk).
    #[command(subcommand)]
    Advisory(inventory::AdvisoryCommand),
    /// Record and list appliance failures (training labels for `train --from-db`).
    #[command(subcommand)]
    Failure(failure::FailureCommand),
    /// Run an appliance agent (WireGuard data plane, telemetry, session recorder).
    Agent(agent::AgentArgs),
    /// WireGuard keys (interchangeable with `wg genkey` / `wg pubkey`).
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Run the steering server: authoritative DNS and the admin listener.
    Serve(serve::ServeArgs),
    /// Manage admin API tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Shadowed sessions: move clients back to their primary.
    #[command(subcommand)]
    Session(session::SessionCommand),
    /// Write simulated labelled telemetry (CSV) with failures of several kinds.
    Simulate(simulate::SimulateArgs),
    /// Train and compare risk models on labelled telemetry; write the best with its card.
    Train(train::TrainArgs),
    /// Measure a risk model (and the health-check baseline) on labelled telemetry.
    Evaluate(evaluate::EvaluateArgs),
    /// Score every row of a telemetry file: ts,appliance,risk,risk_low,risk_high.
    Score(score::ScoreArgs),
    /// The whole product on this machine: regions, appliances and clients through a predicted
    /// failure and a sudden crash, with a report (no root, no configuration).
    Demo(demo::DemoArgs),
    /// Move labelled telemetry between CSV files and Postgres.
    #[command(subcommand)]
    Telemetry(telemetry::TelemetryCommand),
}

impl Cli {
    /// The log filter when `RUST_LOG` is not set: the demo runs its clients in-process and
    /// shows its own view, so only their warnings belong on the terminal. Not boringtun's
    /// retries towards an appliance the demo stopped on purpose: each client would print one
    /// per handshake timeout until the appliance is back, and the report counts what mattered.
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Demo(_) => "warn,sqlx=warn,boringtun::noise::timers=error",
            _ => "info,sqlx=warn",
        }
    }
}

/// Which database a command talks to.
#[derive(Debug, Clone, clap::Args)]
pub struct DbArgs {
    /// Postgres URL; without it, the embedded cluster of the data directory is used.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Data directory of the embedded cluster [default: $SHADOWSTEER_DATA_DIR,
    /// /var/lib/shadowsteer as root, else ~/.local/share/shadowsteer].
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl DbArgs {
    fn target(&self) -> shadowsteer::store::DatabaseTarget {
        shadowsteer::store::DatabaseTarget::resolve(
            self.database_url.clone(),
            self.data_dir.clone(),
        )
    }
}

/// A failed command: what to print and how to exit.
#[derive(Debug)]
pub enum CommandError {
    /// The input was wrong; nothing was changed.
    Input(String),
    /// The system failed.
    Failed(anyhow::Error),
    /// Stopped by Ctrl-C (or SIGTERM) before finishing; everything was cleaned up.
    Interrupted,
}

impl CommandError {
    /// The message for stderr (one line for input errors; with causes for failures).
    pub fn message(&self) -> String {
        match self {
            Self::Input(m) => m.clone(),
            Self::Failed(e) => format!("{e:#}"),
            Self::Interrupted => "interrupted".to_owned(),
        }
    }

    /// Process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Input(_) => 2,
            Self::Failed(_) => 1,
            Self::Interrupted => 130,
        }
    }
}

impl From<anyhow::Error> for CommandError {
    fn from(e: anyhow::Error) -> Self {
        Self::Failed(e)
    }
}

/// Result of a subcommand.
pub type CommandResult = Result<(), CommandError>;

/// Loads and validates a configuration file; its problems, one per line, are an input error.
pub fn load_config<T>(path: &std::path::Path) -> Result<T, CommandError>
where
    T: serde::de::DeserializeOwned + shadowsteer::config::Validate,
{
    shadowsteer::config::load(path).map_err(|errs| {
        CommandError::Input(
            errs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM: the one shutdown signal of every long-running
/// command.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops this");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> CommandResult {
    match cli.command {
        Command::Config(c) => config_cmd::run(c),
        Command::Db(c) => db::run(c).await,
        Command::Appliance(c) => inventory::run_appliance(c).await,
        Command::Client(c) => inventory::run_client(c).await,
        Command::Advisory(c) => inventory::run_advisory(c).await,
        Command::Failure(c) => failure::run(c).await,
        Command::Agent(a) => agent::run(a).await,
        Command::Keys(c) => keys::run(c),
        Command::Serve(a) => serve::run(a).await,
        Command::Token(c) => token::run(c).await,
        Command::Session(c) => session::run(c).await,
        Command::Simulate(a) => simulate::run(a),
        Command::Train(a) => train::run(a).await,
        Command::Evaluate(a) => evaluate::run(a),
        Command::Score(a) => score::run(a),
        Command::Telemetry(c) => telemetry::run(c).await,
        Command::Demo(a) => demo::run(a).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use tracing::Level;
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt;

    use super::Cli;

    /// What a command's default log filter lets through (`enabled!` needs literal targets).
    #[derive(Debug, PartialEq)]
    struct Shown {
        timer_warnings: bool,
        timer_errors: bool,
        helper_warnings: bool,
        helper_info: bool,
    }

    fn shown(command: &[&str]) -> Shown {
        let cli = Cli::try_parse_from(command).expect("parses");
        let filter = EnvFilter::try_new(cli.default_log_filter()).expect("a valid filter");
        let subscriber = tracing_subscriber::registry().with(filter);
        tracing::subscriber::with_default(subscriber, || Shown {
            timer_warnings: tracing::enabled!(target: "boringtun::noise::timers", Level::WARN),
            timer_errors: tracing::enabled!(target: "boringtun::noise::timers", Level::ERROR),
            helper_warnings: tracing::enabled!(target: "shadowsteer::client::run", Level::WARN),
            helper_info: tracing::enabled!(target: "shadowsteer::client::run", Level::INFO),
        })
    }

    #[test]
    fn the_demo_shows_warnings_but_not_boringtun_retries() {
        let demo = Shown {
            timer_warnings: false,
            timer_errors: true,
            helper_warnings: true,
            helper_info: false,
        };
        assert_eq!(shown(&["shadowsteer", "demo"]), demo);
        // Elsewhere a handshake retry is news.
        let serve = Shown {
            timer_warnings: true,
            timer_errors: true,
            helper_warnings: true,
            helper_info: true,
        };
        assert_eq!(shown(&["shadowsteer", "serve"]), serve);
    }
}
