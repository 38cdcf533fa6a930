//! `shadowsteer db replication setup|status|remove-region`: cross-region replication between
//! one Postgres per region (see README, "Regions").

use clap::Subcommand;
use shadowsteer::store::replication::{
    RegionSpec, ReplicationError, setup as repl_setup, status as repl_status,
};

use super::{CommandError, CommandResult, table};

/// The regions of a replication command.
#[derive(Debug, Clone, clap::Args)]
pub struct RegionArgs {
    /// A region and its database, `ID=URL` (repeat for every region). The URL's role must be
    /// able to create publications and subscriptions (a superuser on Postgres 15). Passwords
    /// are never printed.
    #[arg(long = "region", value_name = "ID=URL", required = true)]
    regions: Vec<String>,
    /// The connection string other regions' subscriptions use to reach a region's
    /// publication, `ID=URL` (a role with REPLICATION and SELECT on the published tables is
    /// enough); default: the region's --region URL.
    #[arg(long = "replication-url", value_name = "ID=URL")]
    replication_urls: Vec<String>,
}

impl RegionArgs {
    fn specs(&self) -> Result<Vec<RegionSpec>, CommandError> {
        let mut specs = self
            .regions
            .iter()
            .map(|r| RegionSpec::parse(r))
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err)?;
        for r in &self.replication_urls {
            let over = RegionSpec::parse(r).map_err(|e| {
                CommandError::Input(e.to_string().replace("--region", "--replication-url"))
            })?;
            let Some(spec) = specs.iter_mut().find(|s| s.id == over.id) else {
                return Err(CommandError::Input(format!(
                    "--replication-url {}: no --region {} given",
                    over.id, over.id
                )));
            };
            spec.replication_url = over.url;
        }
        Ok(specs)
    }
}

#[derive(Debug, Subcommand)]
pub enum ReplicationCommand {
    /// Make every region replicate its own rows to every other (migrates each first; a second
    /// run changes nothing and says so; a region added later is copied without re-copying
    /// the others).
    Setup {
        #[command(flatten)]
        regions: RegionArgs,
    },
    /// State, lag and bytes behind of every subscription between the regions given.
    Status {
        #[command(flatten)]
        regions: RegionArgs,
        /// Print JSON: an object with `regions` and `subscriptions` arrays.
        #[arg(long)]
        json: bool,
    },
    /// Take a region out of replication: drop the subscriptions to and from it, its
    /// publication and the slots it used. Give every remaining region (and the removed one, if
    /// it can still be reached).
    RemoveRegion {
        /// The region to remove.
        region: String,
        #[command(flatten)]
        regions: RegionArgs,
    },
}

fn map_err(e: ReplicationError) -> CommandError {
    if e.is_input_error() {
        CommandError::Input(e.to_string())
    } else {
        CommandError::Failed(anyhow::Error::new(e))
    }
}

pub async fn run(cmd: ReplicationCommand) -> CommandResult {
    let mut progress = |line: String| println!("{line}");
    match cmd {
        ReplicationCommand::Setup { regions } => {
            let specs = regions.specs()?;
            let outcome = repl_setup::setup(&specs, &mut progress)
                .await
                .map_err(map_err)?;
            if outcome.changes.is_empty() {
                println!(
                    "replication between {} is already set up; nothing to change",
                    ids(&specs)
                );
            } else {
                println!(
                    "replication between {} set up ({} changes)",
                    ids(&specs),
                    outcome.changes.len()
                );
            }
            Ok(())
        }
        ReplicationCommand::RemoveRegion { region, regions } => {
            let specs = regions.specs()?;
            let removed = shadowsteer::domain::RegionId::new(region.as_str())
                .map_err(|e| CommandError::Input(e.to_string()))?;
            let outcome = repl_setup::remove_region(removed.as_str(), &specs, &mut progress)
                .await
                .map_err(map_err)?;
            if outcome.changes.is_empty() {
                println!(
                    "region {removed} is not replicated with any region given; nothing to change"
                );
            } else {
                println!(
                    "region {removed} removed from replication; its rows stay elsewhere as read-only copies"
                );
            }
            Ok(())
        }
        ReplicationCommand::Status { regions, json } => {
            let specs = regions.specs()?;
            let status = repl_status::status(&specs).await.map_err(map_err)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&status)
                        .map_err(|e| CommandError::Failed(e.into()))?
                );
            } else {
                print_status(&status);
            }
            if status.regions.iter().all(|r| r.reachable) {
                Ok(())
            } else {
                Err(CommandError::Failed(anyhow::anyhow!(
                    "some regions could not be reached"
                )))
            }
        }
    }
}

fn ids(specs: &[RegionSpec]) -> String {
    specs
        .iter()
        .map(|s| s.id.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_status(status: &repl_status::Status) {
    for r in status.regions.iter().filter(|r| !r.reachable) {
        println!(
            "region {}: unreachable: {}",
            r.id,
            r.error.as_deref().unwrap_or("")
        );
    }
    let rows: Vec<Vec<String>> = status
        .subscriptions
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.from.clone(),
                s.to.clone(),
                s.state.as_str().to_owned(),
                s.lag_ms.map_or("-".into(), |l| l.to_string()),
                s.bytes_behind.map_or("-".into(), |b| b.to_string()),
                s.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &[
                "SUBSCRIPTION",
                "FROM",
                "TO",
                "STATE",
                "LAG_MS",
                "BYTES_BEHIND",
                "LAST_ERROR"
            ],
            &rows
        )
    );
    for s in &status.subscriptions {
        if let Some(repair) = &s.repair {
            println!("{}: repair: {repair}", s.name);
        }
        if let Some(note) = &s.note {
            println!("{}: {note}", s.name);
        }
    }
}
