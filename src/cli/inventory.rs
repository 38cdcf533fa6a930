//! `shadowsteer appliance|client|advisory ...`: the inventory from the command line.

use anyhow::Context as _;
use chrono::Utc;
use clap::Subcommand;
use serde::Serialize;
use shadowsteer::domain::ApplianceState;
use shadowsteer::inventory::{
    Advisory, AdvisoryInput, AdvisoryScope, ApplianceInput, ClientInput, InventoryError, advisory,
    appliance, client,
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

fn map_err(e: InventoryError) -> CommandError {
    if e.is_input_error() {
        CommandError::Input(e.cli_message())
    } else {
        CommandError::Failed(anyhow::Error::new(e))
    }
}

pub(super) fn print_json<T: Serialize>(value: &T) -> CommandResult {
    println!(
        "{}",
        serde_json::to_string_pretty(value).context("encoding JSON")?
    );
    Ok(())
}

/// Runs `f` on the command's database, closing it (and stopping an embedded cluster this
/// command started) whatever the outcome.
pub(super) async fn with_db<T, F>(args: &DbArgs, f: F) -> Result<T, CommandError>
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
            let new = ApplianceInput {
                id,
                region,
                endpoint,
                public_key,
                capacity: Some(i64::from(capacity)),
            }
            .parse()
            .map_err(map_err)?;
            with_db(&db, async |pool| appliance::add(pool, &new).await).await?;
            println!("added appliance {} in region {}", new.id, new.region);
            Ok(())
        }
        ApplianceCommand::List { json, db } => {
            let list = with_db(&db, async |pool| appliance::list(pool).await).await?;
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
            let id = appliance::parse_id("id", &id).map_err(map_err)?;
            with_db(&db, async |pool| appliance::remove(pool, &id).await).await?;
            println!("removed appliance {id}");
            Ok(())
        }
    }
}

async fn set_state(id: String, db: DbArgs, state: ApplianceState) -> CommandResult {
    let id = appliance::parse_id("id", &id).map_err(map_err)?;
    with_db(&db, async |pool| {
        appliance::set_state(pool, &id, state).await
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
            let new = ClientInput {
                id,
                public_key,
                tunnel_ip,
                primary,
                shadow,
            }
            .parse()
            .map_err(map_err)?;
            let index = with_db(&db, async |pool| client::add(pool, &new).await).await?;
            println!(
                "added client {} (primary {}, shadow {}, peer index {index})",
                new.id, new.primary, new.shadow
            );
            Ok(())
        }
        ClientCommand::List { json, db } => {
            let list = with_db(&db, async |pool| client::list(pool).await).await?;
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
            let id = client::parse_client_id("id", &id).map_err(map_err)?;
            with_db(&db, async |pool| client::remove(pool, &id).await).await?;
            println!("removed client {id}");
            Ok(())
        }
        ClientCommand::Config(args) => super::client::config(args).await,
        ClientCommand::Run(args) => super::client::run(args).await,
    }
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
            let new = AdvisoryInput {
                appliance,
                region,
                risk,
                starts,
                duration,
                kind: Some(kind),
                note: Some(note),
            }
            .parse(Utc::now())
            .map_err(map_err)?;
            let id = with_db(&db, async |pool| advisory::add(pool, &new).await).await?;
            println!("added advisory {id}");
            Ok(())
        }
        AdvisoryCommand::List { json, db } => {
            let list = with_db(&db, async |pool| advisory::list(pool, None).await).await?;
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
            let removed = with_db(&db, async |pool| advisory::remove(pool, &id).await).await?;
            println!("removed advisory {removed}");
            Ok(())
        }
    }
}
