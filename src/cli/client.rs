//! `shadowsteer client config|run`: a stock WireGuard client's configuration, and the client
//! helper. (`client add|list|remove` live with the inventory commands.)

use std::path::PathBuf;

use shadowsteer::inventory::{ConfigOptions, InventoryError, client};

use super::{CommandError, CommandResult, DbArgs, db};

/// `client config` arguments.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// Client id.
    id: String,
    /// The steering zone; the endpoint is <id>.c.<zone>.
    #[arg(long, default_value = "vpn.example.net", env = "SHADOWSTEER_ZONE")]
    zone: String,
    /// Label between client id and zone.
    #[arg(long, default_value = "c")]
    client_label: String,
    /// WireGuard port of the appliances.
    #[arg(long, default_value_t = 51820)]
    port: u16,
    /// File with the client's private key to embed (else a placeholder is printed).
    #[arg(long)]
    private_key_file: Option<PathBuf>,
    /// AllowedIPs [default: the /24 (IPv4) or /64 (IPv6) around the client's tunnel address].
    #[arg(long)]
    allowed_ips: Option<String>,
    /// PersistentKeepalive in seconds (0 disables).
    #[arg(long, default_value_t = 25)]
    keepalive: u16,
    #[command(flatten)]
    db: DbArgs,
}

/// `client run` arguments.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Client helper configuration file.
    #[arg(long)]
    config: PathBuf,
    /// Write the final report as JSON to this file at exit.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Stop after this long (e.g. 30s) instead of at Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<std::time::Duration>,
}

pub async fn config(args: ConfigArgs) -> CommandResult {
    let input = |e: InventoryError| CommandError::Input(e.cli_message());
    let id = client::parse_client_id("id", &args.id).map_err(input)?;
    let options = ConfigOptions {
        zone: args.zone,
        client_label: args.client_label,
        port: args.port,
        allowed_ips: args.allowed_ips,
        keepalive: args.keepalive,
    };
    options.validate().map_err(input)?;
    let private = match &args.private_key_file {
        Some(path) => Some(
            shadowsteer::keyfile::read_secret_key(path)
                .map_err(|e| CommandError::Input(e.to_string()))?,
        ),
        None => None,
    };
    let database = db::open(&args.db).await?;
    let file = client::config_file(&database.pool, &id, &options, private.as_ref()).await;
    database.close().await;
    match file {
        Ok(text) => {
            print!("{text}");
            Ok(())
        }
        Err(e) if e.is_input_error() => Err(input(e)),
        Err(e) => Err(CommandError::Failed(anyhow::Error::new(e))),
    }
}

pub async fn run(args: RunArgs) -> CommandResult {
    let cfg: shadowsteer::config::ClientConfig = super::load_config(&args.config)?;
    let key = shadowsteer::keyfile::read_secret_key(&cfg.client.key_file)
        .map_err(|e| CommandError::Input(e.to_string()))?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let token = shutdown.clone();
    let duration = args.duration;
    tokio::spawn(async move {
        match duration {
            Some(d) => {
                tokio::select! {
                    () = super::shutdown_signal() => {}
                    () = tokio::time::sleep(d) => {}
                }
            }
            None => super::shutdown_signal().await,
        }
        token.cancel();
    });
    let report = shadowsteer::client::run::run(cfg, key, shutdown)
        .await
        .map_err(|e| CommandError::Failed(anyhow::Error::new(e)))?;
    let json = serde_json::to_string_pretty(&report)
        .map_err(|e| CommandError::Failed(anyhow::Error::new(e)))?;
    match args.report {
        Some(path) => std::fs::write(&path, json + "\n").map_err(|e| {
            CommandError::Failed(anyhow::anyhow!("writing {}: {e}", path.display()))
        })?,
        None => println!("{json}"),
    }
    Ok(())
}
