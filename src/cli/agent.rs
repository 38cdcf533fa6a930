//! `shadowsteer agent --config FILE`: runs one appliance.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use shadowsteer::agent::{self, Overrides};
use shadowsteer::config::{AgentConfig, InsideMode};
use shadowsteer::domain::ApplianceId;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{CommandError, CommandResult};

/// `agent` arguments; flags override the file.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Agent configuration file.
    #[arg(long)]
    config: PathBuf,
    /// Appliance id.
    #[arg(long)]
    appliance: Option<String>,
    /// WireGuard UDP address.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Postgres URL.
    #[arg(long, hide_env_values = true)]
    database_url: Option<String>,
    /// Service private key file (mode 0600).
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Inside mode: echo or tun.
    #[arg(long, value_parser = ["echo", "tun"])]
    inside: Option<String>,
}

pub async fn run(args: AgentArgs) -> CommandResult {
    let mut cfg: AgentConfig = super::load_config(&args.config)?;
    let overrides = Overrides {
        appliance: args
            .appliance
            .map(ApplianceId::new)
            .transpose()
            .map_err(|e| CommandError::Input(format!("--appliance: {e}")))?,
        listen: args.listen,
        database_url: args.database_url,
        key_file: args.key_file,
        inside: args.inside.map(|i| {
            if i == "tun" {
                InsideMode::Tun
            } else {
                InsideMode::Echo
            }
        }),
    };
    overrides.apply(&mut cfg);
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let handle = match agent::start(cfg, &mut tasks, shutdown.clone()).await {
        Ok(h) => h,
        Err(e @ (agent::AgentError::Key(_) | agent::AgentError::Probe { .. })) => {
            return Err(CommandError::Input(e.to_string()));
        }
        Err(e) => return Err(anyhow::Error::new(e).context("starting the agent").into()),
    };
    tokio::select! {
        () = super::shutdown_signal() => tracing::info!("shutting down"),
        () = shutdown.cancelled() => {}
    }
    shutdown.cancel();
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("some tasks did not stop within 10s");
    }
    let stats = handle.device.stats.snapshot();
    tracing::info!(
        rx = stats.rx_datagrams,
        tx = stats.tx_datagrams,
        dropped = stats.packets_dropped,
        "stopped"
    );
    if let Some(db) = handle.database {
        db.close().await;
    }
    Ok(())
}
