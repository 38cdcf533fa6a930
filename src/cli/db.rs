//! `shadowsteer db migrate|status|prune|replication`, and opening the database for other commands.

use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use shadowsteer::store::retention::{self, RetentionPolicy};
use shadowsteer::store::{self, Database, DatabaseTarget};

use super::{CommandError, CommandResult, DbArgs, table};

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Apply pending schema migrations (a second run does nothing and says so).
    Migrate {
        #[command(flatten)]
        db: DbArgs,
    },
    /// List applied and pending migrations.
    Status {
        #[command(flatten)]
        db: DbArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete time-series rows older than an age, in bounded batches.
    Prune {
        #[command(flatten)]
        db: DbArgs,
        /// Age beyond which rows go, e.g. `14d`; without it, the default policy per table
        /// (health, probes and risk history 14 days, decisions 90 days, failure labels 2 years).
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
        /// Rows deleted per statement.
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        batch: u32,
    },
    /// Cross-region replication: setup, status, remove-region.
    #[command(subcommand)]
    Replication(super::replication::ReplicationCommand),
}

/// Opens the database a command should use. The embedded cluster is migrated on the spot (a new
/// user never runs migrations by hand); a database given by URL must already be migrated.
pub async fn open(db: &DbArgs) -> Result<Database, CommandError> {
    let target = db.target();
    let database = Database::open(&target, 4)
        .await
        .with_context(|| format!("opening {}", target.describe()))?;
    match target {
        DatabaseTarget::Embedded(_) => {
            store::migrate(&database.pool)
                .await
                .context("migrating the embedded database")?;
        }
        DatabaseTarget::Url(_) => {
            let pending: Vec<String> = store::migration_status(&database.pool)
                .await
                .context("reading migration status")?
                .into_iter()
                .filter(|m| !m.applied)
                .map(|m| format!("{} {}", m.version, m.description))
                .collect();
            if !pending.is_empty() {
                database.close().await;
                return Err(CommandError::Failed(anyhow::anyhow!(
                    "the database has pending migrations ({}); run `shadowsteer db migrate` first",
                    pending.join(", ")
                )));
            }
        }
    }
    Ok(database)
}

pub async fn run(cmd: DbCommand) -> CommandResult {
    match cmd {
        DbCommand::Replication(c) => super::replication::run(c).await,
        DbCommand::Migrate { db } => {
            let target = db.target();
            let database = Database::open(&target, 2)
                .await
                .with_context(|| format!("opening {}", target.describe()))?;
            let applied = store::migrate(&database.pool).await;
            database.close().await;
            let applied = applied.context("applying migrations")?;
            if applied.is_empty() {
                println!("schema is up to date; nothing to apply");
            } else {
                for m in applied {
                    println!("applied {} {}", m.version, m.description);
                }
            }
            Ok(())
        }
        DbCommand::Status { db, json } => {
            let target = db.target();
            let database = Database::open(&target, 2)
                .await
                .with_context(|| format!("opening {}", target.describe()))?;
            let status = store::migration_status(&database.pool).await;
            database.close().await;
            let status = status.context("reading migration status")?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&status).context("encoding JSON")?
                );
            } else {
                let rows: Vec<Vec<String>> = status
                    .iter()
                    .map(|m| {
                        vec![
                            m.version.to_string(),
                            m.description.clone(),
                            if m.applied { "applied" } else { "pending" }.to_owned(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table::render(&["VERSION", "DESCRIPTION", "STATE"], &rows)
                );
            }
            Ok(())
        }
        DbCommand::Prune {
            db,
            older_than,
            batch,
        } => {
            let policy = match older_than {
                Some(age) => RetentionPolicy::uniform(age, batch),
                None => RetentionPolicy {
                    batch,
                    ..RetentionPolicy::default()
                },
            };
            let database = open(&db).await?;
            let report = retention::prune(&database.pool, &policy).await;
            database.close().await;
            for p in report.context("pruning")? {
                println!(
                    "{}: deleted {} rows in {} batches",
                    p.table, p.deleted, p.batches
                );
            }
            Ok(())
        }
    }
}
