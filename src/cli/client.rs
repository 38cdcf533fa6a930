//! `shadowsteer client config|run`: a stock WireGuard client's configuration, and the client
//! helper. (`client add|list|remove` live with the inventory commands.)

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;

use shadowsteer::domain::ClientId;
use shadowsteer::store::sessions;

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

fn default_allowed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

pub async fn config(args: ConfigArgs) -> CommandResult {
    let id = ClientId::new(args.id).map_err(|e| CommandError::Input(e.to_string()))?;
    let zone = args.zone.trim_end_matches('.').to_owned();
    if zone.is_empty() || zone.contains(char::is_whitespace) {
        return Err(CommandError::Input(format!(
            "--zone {zone:?} is not a DNS name"
        )));
    }
    let private = match &args.private_key_file {
        Some(path) => Some(
            shadowsteer::keyfile::read_secret_key(path)
                .map_err(|e| CommandError::Input(e.to_string()))?,
        ),
        None => None,
    };
    let database = db::open(&args.db).await?;
    let found = sessions::client_service(&database.pool, &id).await;
    database.close().await;
    let (tunnel_ip, service) = found
        .map_err(|e| CommandError::Failed(anyhow::Error::new(e)))?
        .ok_or_else(|| CommandError::Input(format!("no client {id}")))?;
    let host_bits = if tunnel_ip.is_ipv4() { 32 } else { 128 };
    let mut out = String::new();
    let _ = writeln!(out, "# shadowsteer client {id}: wg-quick configuration");
    let _ = writeln!(out, "[Interface]");
    match &private {
        Some(k) => {
            let _ = writeln!(out, "PrivateKey = {}", k.expose_base64().as_str());
        }
        None => {
            let _ = writeln!(
                out,
                "PrivateKey = REPLACE_WITH_CLIENT_PRIVATE_KEY  # the key whose public half was registered"
            );
        }
    }
    let _ = writeln!(out, "Address = {tunnel_ip}/{host_bits}");
    let _ = writeln!(out);
    let _ = writeln!(out, "[Peer]");
    let _ = writeln!(out, "PublicKey = {service}");
    let _ = writeln!(
        out,
        "Endpoint = {id}.{}.{zone}:{}",
        args.client_label, args.port
    );
    let _ = writeln!(
        out,
        "AllowedIPs = {}",
        args.allowed_ips
            .unwrap_or_else(|| default_allowed(tunnel_ip))
    );
    if args.keepalive > 0 {
        let _ = writeln!(out, "PersistentKeepalive = {}", args.keepalive);
    }
    print!("{out}");
    Ok(())
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
