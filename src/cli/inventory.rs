//! `shadowsteer appliance|client|advisory ...`: the inventory from the command line.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::Subcommand;
use serde::Serialize;
use shadowsteer::domain::{
    ApplianceId, ApplianceState, ClientId, Probability, PublicKey, RegionId,
};
use shadowsteer::store::inventory::{
    self, Advisory, AdvisoryScope, InventoryError, NewAdvisory, NewAppliance, NewClient,
};

use super::{CommandError, CommandResult, DbArgs, db, table};

#[derive(Debug, Subcommand)]
pub enum ApplianceCommand {
    /// Register an appliance.
    Add {
        /// Appliance id (a DNS label, e.g. eu-1).
        #[arg(long)]
        id: String,
        /// Region it belongs to (created if new).
        #[arg(long)]
        region: String,
        /// Public WireGuard endpoint, ip:port.
        #[arg(long)]
        endpoint: String,
        /// WireGuard public key (base64) of the shadow group's service identity.
        #[arg(long)]
        public_key: String,
        /// Relative capacity used to weight answers.
        #[arg(long, default_value_t = 100)]
        capacity: u32,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List appliances.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Stop steering clients to an appliance (existing sessions stay).
    Drain {
        /// Appliance id.
        id: String,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Make a drained (or down) appliance active again.
    Undrain {
        /// Appliance id.
        id: String,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Remove an appliance no client uses.
    Remove {
        /// Appliance id.
        id: String,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Register a client with its primary and shadow appliances.
    Add {
        /// Client id (a DNS label; its name is <id>.c.<zone>).
        #[arg(long)]
        id: String,
        /// The client's WireGuard public key (base64).
        #[arg(long)]
        public_key: String,
        /// The client's address inside the tunnel.
        #[arg(long)]
        tunnel_ip: String,
        /// Primary appliance.
        #[arg(long)]
        primary: String,
        /// Shadow appliance, in another region.
        #[arg(long)]
        shadow: String,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List clients.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Remove a client and its session state.
    Remove {
        /// Client id.
        id: String,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Print a wg-quick configuration for a stock WireGuard client.
    Config(super::client::ConfigArgs),
    /// Run the client helper (WireGuard on boringtun, DNS-steered, with a probe stream).
    Run(super::client::RunArgs),
}

#[derive(Debug, Subcommand)]
pub enum AdvisoryCommand {
    /// Record external risk for an appliance or a whole region.
    Add {
        /// The appliance at risk.
        #[arg(long, conflicts_with = "region", required_unless_present = "region")]
        appliance: Option<String>,
        /// A region at risk (every appliance in it).
        #[arg(long)]
        region: Option<String>,
        /// Risk in [0, 1] while the advisory is active.
        #[arg(long)]
        risk: f64,
        /// Start (RFC 3339, e.g. 2026-12-01T18:00:00Z) [default: now].
        #[arg(long)]
        starts: Option<String>,
        /// Duration, e.g. 10m or 2h [default: until removed].
        #[arg(long = "for")]
        duration: Option<String>,
        /// geopolitical, environmental, maintenance or operational.
        #[arg(long, default_value = "operational")]
        kind: String,
        /// Free text.
        #[arg(long, default_value = "")]
        note: String,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List advisories.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Remove an advisory by id (or a unique prefix of at least 4 characters).
    Remove {
        /// Advisory id.
        id: String,
        #[command(flatten)]
        db: DbArgs,
    },
}

fn input(e: impl std::fmt::Display) -> CommandError {
    CommandError::Input(e.to_string())
}

fn map_err(e: InventoryError) -> CommandError {
    if e.is_input_error() {
        CommandError::Input(e.to_string())
    } else {
        CommandError::Failed(anyhow::Error::new(e))
    }
}

fn print_json<T: Serialize>(value: &T) -> CommandResult {
    println!(
        "{}",
        serde_json::to_string_pretty(value).context("encoding JSON")?
    );
    Ok(())
}

/// Runs `f` on the command's database, closing it (and stopping an embedded cluster this
/// command started) whatever the outcome.
async fn with_db<T, F>(args: &DbArgs, f: F) -> Result<T, CommandError>
where
    F: AsyncFnOnce(&sqlx::PgPool) -> Result<T, InventoryError>,
{
    let database = db::open(args).await?;
    let result = f(&database.pool).await;
    database.close().await;
    result.map_err(map_err)
}

pub async fn run_appliance(cmd: ApplianceCommand) -> CommandResult {
    match cmd {
        ApplianceCommand::Add {
            id,
            region,
            endpoint,
            public_key,
            capacity,
            db,
        } => {
            let new = NewAppliance {
                id: ApplianceId::new(id).map_err(input)?,
                region: RegionId::new(region).map_err(input)?,
                endpoint: endpoint
                    .parse::<SocketAddr>()
                    .map_err(|_| input(format!("invalid endpoint {endpoint:?}; write ip:port")))?,
                public_key: public_key.parse::<PublicKey>().map_err(input)?,
                capacity,
            };
            with_db(&db, async |pool| inventory::add_appliance(pool, &new).await).await?;
            println!("added appliance {} in region {}", new.id, new.region);
            Ok(())
        }
        ApplianceCommand::List { json, db } => {
            let list = with_db(&db, async |pool| inventory::list_appliances(pool).await).await?;
            if json {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|a| {
                    vec![
                        a.id.to_string(),
                        a.region.to_string(),
                        a.endpoint.to_string(),
                        a.state.to_string(),
                        a.capacity.to_string(),
                        format!("{}/{}", a.primary_clients, a.shadow_clients),
                        a.public_key.to_base64(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table::render(
                    &[
                        "ID",
                        "REGION",
                        "ENDPOINT",
                        "STATE",
                        "CAPACITY",
                        "CLIENTS P/S",
                        "PUBLIC KEY"
                    ],
                    &rows
                )
            );
            Ok(())
        }
        ApplianceCommand::Drain { id, db } => set_state(id, db, ApplianceState::Draining).await,
        ApplianceCommand::Undrain { id, db } => set_state(id, db, ApplianceState::Active).await,
        ApplianceCommand::Remove { id, db } => {
            let id = ApplianceId::new(id).map_err(input)?;
            with_db(&db, async |pool| {
                inventory::remove_appliance(pool, &id).await
            })
            .await?;
            println!("removed appliance {id}");
            Ok(())
        }
    }
}

async fn set_state(id: String, db: DbArgs, state: ApplianceState) -> CommandResult {
    let id = ApplianceId::new(id).map_err(input)?;
    with_db(&db, async |pool| {
        inventory::set_appliance_state(pool, &id, state).await
    })
    .await?;
    println!("appliance {id} is now {state}");
    Ok(())
}

pub async fn run_client(cmd: ClientCommand) -> CommandResult {
    match cmd {
        ClientCommand::Add {
            id,
            public_key,
            tunnel_ip,
            primary,
            shadow,
            db,
        } => {
            let new = NewClient {
                id: ClientId::new(id).map_err(input)?,
                public_key: public_key.parse::<PublicKey>().map_err(input)?,
                tunnel_ip: tunnel_ip
                    .parse::<IpAddr>()
                    .map_err(|_| input(format!("invalid tunnel ip {tunnel_ip:?}")))?,
                primary: ApplianceId::new(primary).map_err(input)?,
                shadow: ApplianceId::new(shadow).map_err(input)?,
            };
            let index = with_db(&db, async |pool| inventory::add_client(pool, &new).await).await?;
            println!(
                "added client {} (primary {}, shadow {}, peer index {index})",
                new.id, new.primary, new.shadow
            );
            Ok(())
        }
        ClientCommand::List { json, db } => {
            let list = with_db(&db, async |pool| inventory::list_clients(pool).await).await?;
            if json {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|c| {
                    vec![
                        c.id.to_string(),
                        c.region.to_string(),
                        c.primary.to_string(),
                        c.shadow.to_string(),
                        c.tunnel_ip.to_string(),
                        c.peer_index.to_string(),
                        c.public_key.to_base64(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table::render(
                    &[
                        "ID",
                        "REGION",
                        "PRIMARY",
                        "SHADOW",
                        "TUNNEL IP",
                        "PEER INDEX",
                        "PUBLIC KEY"
                    ],
                    &rows
                )
            );
            Ok(())
        }
        ClientCommand::Remove { id, db } => {
            let id = ClientId::new(id).map_err(input)?;
            with_db(&db, async |pool| inventory::remove_client(pool, &id).await).await?;
            println!("removed client {id}");
            Ok(())
        }
        ClientCommand::Config(args) => super::client::config(args).await,
        ClientCommand::Run(args) => super::client::run(args).await,
    }
}

fn parse_advisory(
    appliance: Option<String>,
    region: Option<String>,
    risk: f64,
    starts: Option<String>,
    duration: Option<String>,
    kind: String,
    note: String,
) -> Result<NewAdvisory, CommandError> {
    let scope = match (appliance, region) {
        (Some(a), None) => AdvisoryScope::Appliance(ApplianceId::new(a).map_err(input)?),
        (None, Some(r)) => AdvisoryScope::Region(RegionId::new(r).map_err(input)?),
        _ => return Err(input("give exactly one of --appliance and --region")),
    };
    let risk = Probability::new(risk).map_err(|e| input(format!("--risk: {e}")))?;
    let starts_at = match starts {
        Some(s) => DateTime::parse_from_rfc3339(&s)
            .map_err(|e| input(format!("--starts {s:?}: not an RFC 3339 time ({e})")))?
            .with_timezone(&Utc),
        None => Utc::now(),
    };
    let ends_at = match duration {
        Some(d) => {
            let d: Duration =
                humantime::parse_duration(&d).map_err(|e| input(format!("--for {d:?}: {e}")))?;
            if d.is_zero() {
                return Err(input("--for must be longer than zero"));
            }
            let d = chrono::Duration::from_std(d).map_err(|_| input("--for is too long"))?;
            Some(
                starts_at
                    .checked_add_signed(d)
                    .ok_or_else(|| input("--for is too long"))?,
            )
        }
        None => None,
    };
    Ok(NewAdvisory {
        scope,
        kind,
        risk,
        starts_at,
        ends_at,
        note,
    })
}

pub async fn run_advisory(cmd: AdvisoryCommand) -> CommandResult {
    match cmd {
        AdvisoryCommand::Add {
            appliance,
            region,
            risk,
            starts,
            duration,
            kind,
            note,
            db,
        } => {
            let new = parse_advisory(appliance, region, risk, starts, duration, kind, note)?;
            let id = with_db(&db, async |pool| inventory::add_advisory(pool, &new).await).await?;
            println!("added advisory {id}");
            Ok(())
        }
        AdvisoryCommand::List { json, db } => {
            let list = with_db(&db, async |pool| inventory::list_advisories(pool).await).await?;
            if json {
                return print_json(&list);
            }
            let now = Utc::now();
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|Advisory { id, spec: a }| {
                    let id = id.to_string();
                    vec![
                        id[..8].to_owned(),
                        match &a.scope {
                            AdvisoryScope::Appliance(x) => x.to_string(),
                            AdvisoryScope::Region(r) => format!("region {r}"),
                        },
                        a.kind.clone(),
                        a.risk.to_string(),
                        a.starts_at.format("%Y-%m-%d %H:%M:%SZ").to_string(),
                        a.ends_at
                            .map(|e| e.format("%Y-%m-%d %H:%M:%SZ").to_string())
                            .unwrap_or_else(|| "-".into()),
                        if a.active_at(now) { "yes" } else { "no" }.to_owned(),
                        a.note.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table::render(
                    &[
                        "ID", "SCOPE", "KIND", "RISK", "STARTS", "ENDS", "ACTIVE", "NOTE"
                    ],
                    &rows
                )
            );
            Ok(())
        }
        AdvisoryCommand::Remove { id, db } => {
            let removed = with_db(&db, async |pool| {
                inventory::remove_advisory(pool, &id).await
            })
            .await?;
            println!("removed advisory {removed}");
            Ok(())
        }
    }
}
