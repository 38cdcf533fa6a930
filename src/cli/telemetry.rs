//! `shadowsteer telemetry import|export`: labelled telemetry between CSV and Postgres.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::Subcommand;
use shadowsteer::risk::data::failures::{companion_path, write_failures};
use shadowsteer::risk::data::telemetry::write_csv;

use super::{CommandError, CommandResult, DbArgs, db, progress, risk_input};

#[derive(Debug, Subcommand)]
pub enum TelemetryCommand {
    /// Store a telemetry CSV (and its NAME.failures.csv) in appliance_health, path_probes and
    /// failure_events. Rows already stored are skipped, so importing twice is harmless.
    Import {
        /// Telemetry CSV.
        #[arg(long)]
        data: PathBuf,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Write the stored telemetry of a time range as CSV, with NAME.failures.csv beside it.
    Export {
        /// Output CSV.
        #[arg(long)]
        out: PathBuf,
        /// Start (RFC 3339 or unix seconds); default: 24 hours before --to.
        #[arg(long)]
        from: Option<String>,
        /// End, exclusive (RFC 3339 or unix seconds); default: now.
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
}

fn parse_time(flag: &str, s: &str) -> Result<DateTime<Utc>, CommandError> {
    if let Ok(secs) = s.parse::<i64>() {
        return DateTime::from_timestamp(secs, 0)
            .ok_or_else(|| CommandError::Input(format!("{flag} {s} is out of range")));
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            CommandError::Input(format!("{flag} {s:?}: {e} (use RFC 3339 or unix seconds)"))
        })
}

pub async fn run(cmd: TelemetryCommand) -> CommandResult {
    match cmd {
        TelemetryCommand::Import { data, db } => {
            let loaded = risk_input::load_data(&data)?;
            let database = db::open(&db).await?;
            let t = &loaded.telemetry;
            let bar = progress::count(t.rows.len() as u64, "storing rows");
            let counts =
                shadowsteer::store::risk::import(&database.pool, t, &loaded.series, &|done| {
                    bar.set_position(done)
                })
                .await;
            bar.finish_and_clear();
            database.close().await;
            let c = counts.context("importing")?;
            println!(
                "imported {} health rows, {} probe rows and {} failure events from {}",
                c.health,
                c.probes,
                c.failures,
                data.display()
            );
            Ok(())
        }
        TelemetryCommand::Export { out, from, to, db } => {
            let to = match to {
                Some(s) => parse_time("--to", &s)?,
                None => Utc::now(),
            };
            let from = match from {
                Some(s) => parse_time("--from", &s)?,
                None => to - chrono::Duration::hours(24),
            };
            if from >= to {
                return Err(CommandError::Input("--from must be before --to".into()));
            }
            let database = db::open(&db).await?;
            let exported = shadowsteer::store::risk::export(&database.pool, from, to).await;
            database.close().await;
            let (t, labels) = exported.context("reading telemetry")?;
            let file = File::create(&out).with_context(|| format!("creating {}", out.display()))?;
            let mut w = BufWriter::new(file);
            write_csv(&mut w, &t.appliances, &t.rows).context("writing")?;
            w.flush().context("writing")?;
            let fpath = companion_path(&out);
            let mut f = BufWriter::new(
                File::create(&fpath).with_context(|| format!("creating {}", fpath.display()))?,
            );
            let labels: Vec<_> = labels.into_values().collect();
            write_failures(&mut f, &labels).context("writing failures")?;
            f.flush().context("writing failures")?;
            println!(
                "exported {} rows of {} appliances and {} failures to {} and {}",
                t.rows.len(),
                t.appliances.len(),
                labels.len(),
                out.display(),
                fpath.display()
            );
            Ok(())
        }
    }
}
