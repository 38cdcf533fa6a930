//! `shadowsteer failure add|list`: incidents an operator records, stored in `failure_events`
//! as labels for `train --from-db`.

use chrono::Utc;
use clap::Subcommand;
use shadowsteer::inventory::failure::{self, parse_time};
use shadowsteer::inventory::{FailureFilter, FailureInput};

use super::inventory::{print_json, with_db};
use super::{CommandError, CommandResult, DbArgs, table};

#[derive(Debug, Subcommand)]
pub enum FailureCommand {
    /// Record an incident: an appliance was down from --starts to --ends.
    Add {
        /// The appliance that failed.
        #[arg(long)]
        appliance: String,
        /// First second it was down (RFC 3339, e.g. 2026-12-01T18:00:00Z).
        #[arg(long)]
        starts: String,
        /// First second it was up again (RFC 3339) [default: still down].
        #[arg(long)]
        ends: Option<String>,
        /// What failed, e.g. power_loss or memory_leak (lowercase letters, digits, _ and -).
        #[arg(long)]
        kind: String,
        /// Whether it showed warning signs beforehand (true or false) [default: unknown].
        #[arg(long)]
        precursor: Option<bool>,
        /// Free text.
        #[arg(long, default_value = "")]
        note: String,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List recorded failures (operator-recorded and observed), oldest first.
    List {
        /// Only this appliance.
        #[arg(long)]
        appliance: Option<String>,
        /// Only failures still running at or after this time (RFC 3339).
        #[arg(long)]
        from: Option<String>,
        /// Only failures that started before this time (RFC 3339).
        #[arg(long)]
        to: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
}

fn input_err(e: shadowsteer::inventory::InventoryError) -> CommandError {
    CommandError::Input(e.cli_message())
}

pub async fn run(cmd: FailureCommand) -> CommandResult {
    match cmd {
        FailureCommand::Add {
            appliance,
            starts,
            ends,
            kind,
            precursor,
            note,
            db,
        } => {
            let new = FailureInput {
                appliance,
                starts,
                ends,
                kind,
                precursor,
                note,
            }
            .parse(Utc::now())
            .map_err(input_err)?;
            let region = with_db(&db, async |pool| failure::add(pool, &new).await).await?;
            println!(
                "recorded {} failure of {} (region {region}) from {} to {}",
                new.kind,
                new.appliance,
                stamp(&new.started_at),
                new.ended_at
                    .as_ref()
                    .map_or("now (still down)".into(), stamp)
            );
            Ok(())
        }
        FailureCommand::List {
            appliance,
            from,
            to,
            json,
            db,
        } => {
            let filter = FailureFilter {
                appliance: appliance
                    .map(|a| shadowsteer::inventory::appliance::parse_id("appliance", &a))
                    .transpose()
                    .map_err(input_err)?,
                from: from
                    .map(|t| parse_time("from", &t))
                    .transpose()
                    .map_err(input_err)?,
                to: to
                    .map(|t| parse_time("to", &t))
                    .transpose()
                    .map_err(input_err)?,
            };
            if let (Some(f), Some(t)) = (filter.from, filter.to)
                && t <= f
            {
                return Err(CommandError::Input("--to: is not after --from".into()));
            }
            let list = with_db(&db, async |pool| failure::list(pool, &filter).await).await?;
            if json {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|f| {
                    vec![
                        f.appliance.clone(),
                        f.region.clone(),
                        f.kind.clone(),
                        stamp(&f.started_at),
                        f.ended_at.as_ref().map_or("-".into(), stamp),
                        match f.precursor {
                            Some(true) => "yes",
                            Some(false) => "no",
                            None => "?",
                        }
                        .to_owned(),
                        f.note.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table::render(
                    &[
                        "APPLIANCE",
                        "REGION",
                        "KIND",
                        "STARTED",
                        "ENDED",
                        "PRECURSOR",
                        "NOTE"
                    ],
                    &rows
                )
            );
            Ok(())
        }
    }
}

fn stamp(t: &chrono::DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}
