//! `shadowsteer train`: fits and compares models on labelled telemetry; writes the chosen one
//! with its model card.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use shadowsteer::risk::data::series::{self, Series};
use shadowsteer::risk::model::card;
use shadowsteer::risk::model::train::{TrainError, TrainOptions, train};

use super::risk_input::{self, RecipeArgs};
use super::{CommandError, CommandResult, DbArgs, db, progress};

/// Arguments of `train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Telemetry CSV files, comma-separated; each one's NAME.failures.csv is used if present.
    #[arg(long, value_delimiter = ',', required_unless_present = "from_db")]
    data: Vec<PathBuf>,
    /// Train on the telemetry and failure events stored in Postgres instead.
    #[arg(long, conflicts_with = "data")]
    from_db: bool,
    /// With --from-db: how far back to read, e.g. `7d`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "7d")]
    since: Duration,
    #[command(flatten)]
    db: DbArgs,
    /// Output model file, e.g. models/NAME.json; the card goes to models/NAME.md.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    recipe: RecipeArgs,
    /// Share of the time range held back for validation (the latest part).
    #[arg(long, default_value_t = 0.3)]
    validation_share: f64,
    /// Threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// A note for the model card (repeatable), e.g. how the data was made.
    #[arg(long)]
    note: Vec<String>,
}

pub async fn run(a: TrainArgs) -> CommandResult {
    let started = Instant::now();
    let name = a
        .out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty() && s.len() <= 100)
        .ok_or_else(|| {
            CommandError::Input(format!("--out {} needs a file name", a.out.display()))
        })?;
    let recipe = a.recipe.options(name, a.threads)?;
    let mut all: Vec<Series> = Vec::new();
    let mut sources = Vec::new();
    let mut rows = 0u64;
    if a.from_db {
        let database = db::open(&a.db).await?;
        let to = chrono::Utc::now();
        let from = to
            - chrono::Duration::from_std(a.since)
                .map_err(|_| CommandError::Input("--since is too long".into()))?;
        let exported = shadowsteer::store::risk::export(&database.pool, from, to).await;
        database.close().await;
        let (telemetry, labels) = exported.context("reading telemetry from the database")?;
        rows = telemetry.rows.len() as u64;
        all = series::build(&telemetry, Some(&labels));
        sources.push(format!(
            "database: {} to {}",
            from.to_rfc3339(),
            to.to_rfc3339()
        ));
    } else {
        for path in &a.data {
            eprintln!(
                "[{:6.1}s] reading {}",
                started.elapsed().as_secs_f64(),
                path.display()
            );
            let loaded = risk_input::load_data(path)?;
            rows += loaded.telemetry.rows.len() as u64;
            sources.push(format!(
                "{}{}",
                path.display(),
                if loaded.labels.is_some() {
                    " (with failure labels)"
                } else {
                    ""
                }
            ));
            all.extend(loaded.series);
        }
    }
    let opts = TrainOptions {
        validation_share: a.validation_share,
        sources,
        rows,
        ..recipe
    };
    // The log lines go to stderr as before; on a terminal a spinner below them shows the step
    // in progress.
    let spinner = progress::spinner("training");
    let log = |msg: &str| {
        spinner.suspend(|| eprintln!("[{:6.1}s] {msg}", started.elapsed().as_secs_f64()));
        spinner.set_message(msg.trim().to_owned());
    };
    let trained = tokio::task::block_in_place(|| train(&all, &opts, &log));
    spinner.finish_and_clear();
    let mut model = trained.map_err(|e| match e {
        TrainError::NotEnoughData(_) | TrainError::Options(_) => CommandError::Input(e.to_string()),
        TrainError::Fit { .. } => CommandError::Failed(e.into()),
    })?;
    model.card.notes.extend(a.note.iter().cloned());
    model.card.created_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    model
        .save(&a.out)
        .with_context(|| format!("writing {}", a.out.display()))?;
    let card_path = a.out.with_extension("md");
    std::fs::write(&card_path, card::markdown(&model))
        .with_context(|| format!("writing {}", card_path.display()))?;
    println!(
        "wrote {} ({}: threshold {:.4}) and its card {}",
        a.out.display(),
        model.version,
        model.threshold,
        card_path.display()
    );
    print!("{}", card::report_table(&model.card.validation));
    Ok(())
}
