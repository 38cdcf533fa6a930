//! `shadowsteer evaluate`: the metrics of a model (and the baseline) on labelled telemetry, or,
//! with `--leave-one-kind-out`, how the training recipe does on failure kinds it never saw.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use shadowsteer::risk::data::series::Series;
use shadowsteer::risk::evaluate;
use shadowsteer::risk::evaluate::generalisation::{leave_one_kind_out, markdown_table};
use shadowsteer::risk::model::card::report_table;
use shadowsteer::risk::model::score::score_all;
use shadowsteer::risk::model::train::TrainError;

use super::risk_input::{self, RecipeArgs};
use super::{CommandError, CommandResult, progress};

/// Arguments of `evaluate`.
#[derive(Debug, clap::Args)]
pub struct EvaluateArgs {
    /// The model file.
    #[arg(long, required_unless_present = "leave_one_kind_out")]
    model: Option<PathBuf>,
    /// Telemetry CSV files, comma-separated; each one's NAME.failures.csv is used if present.
    /// With --leave-one-kind-out, the test data (use seeds or a period not trained on).
    #[arg(long, value_delimiter = ',', required = true)]
    data: Vec<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Evaluate at this threshold instead of the model's operating threshold.
    #[arg(long, conflicts_with = "leave_one_kind_out")]
    threshold: Option<f64>,
    /// Threads for scoring (and training).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// For each failure kind in --data: train on --train-data without that kind, test on
    /// --data; a row per kind (recall@10s, median lead, false alarms per appliance-day).
    #[arg(
        long,
        conflicts_with = "model",
        requires = "train_data",
        help_heading = "Leave one kind out"
    )]
    leave_one_kind_out: bool,
    /// Labelled training data (comma-separated CSV files) for --leave-one-kind-out.
    #[arg(
        long,
        value_delimiter = ',',
        requires = "leave_one_kind_out",
        help_heading = "Leave one kind out"
    )]
    train_data: Vec<PathBuf>,
    /// The training recipe (as `train`'s options of the same names).
    #[command(flatten, next_help_heading = "Leave one kind out")]
    recipe: RecipeArgs,
}

pub fn run(a: EvaluateArgs) -> CommandResult {
    if a.leave_one_kind_out {
        return run_leave_one_kind_out(&a);
    }
    let Some(model_path) = &a.model else {
        return Err(CommandError::Input(
            "--model is required (or --leave-one-kind-out)".into(),
        ));
    };
    let model = risk_input::load_model(model_path)?;
    let thr = a.threshold.unwrap_or(model.threshold);
    if !(0.0..=1.0).contains(&thr) {
        return Err(CommandError::Input(format!(
            "--threshold {thr} is not in [0, 1]"
        )));
    }
    let series = load_all(&a.data)?;
    let scores: Vec<Vec<f64>> = score_all(&model, &series, a.threads)
        .into_iter()
        .map(|v| v.into_iter().map(|s| s.value().get()).collect())
        .collect();
    let report = evaluate::report(&series, &scores, thr, model.horizon_s as usize);
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("encoding JSON")?
        );
    } else {
        println!("model {}\n", model.version);
        print!("{}", report_table(&report));
    }
    Ok(())
}

fn load_all(paths: &[PathBuf]) -> Result<Vec<Series>, CommandError> {
    let mut series = Vec::new();
    for path in paths {
        series.extend(risk_input::load_data(path)?.series);
    }
    Ok(series)
}

fn run_leave_one_kind_out(a: &EvaluateArgs) -> CommandResult {
    let started = Instant::now();
    // The same file on both sides would measure recall on data trained on.
    for t in &a.data {
        let same = a.train_data.iter().any(|d| {
            d == t || matches!((d.canonicalize(), t.canonicalize()), (Ok(x), Ok(y)) if x == y)
        });
        if same {
            return Err(CommandError::Input(format!(
                "{} is both training and test data; test on held-out data",
                t.display()
            )));
        }
    }
    let opts = a.recipe.options("leave-one-kind-out".into(), a.threads)?;
    let train_series = load_all(&a.train_data)?;
    let test = load_all(&a.data)?;
    let spinner = progress::spinner("leave one kind out");
    let log = |msg: &str| {
        spinner.suspend(|| eprintln!("[{:6.1}s] {msg}", started.elapsed().as_secs_f64()));
        spinner.set_message(msg.trim().to_owned());
    };
    let result = leave_one_kind_out(&train_series, &test, &opts, &log);
    spinner.finish_and_clear();
    let table = result.map_err(|e| match e {
        TrainError::NotEnoughData(_) | TrainError::Options(_) => CommandError::Input(e.to_string()),
        TrainError::Fit { .. } => CommandError::Failed(e.into()),
    })?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&table).context("encoding JSON")?
        );
    } else {
        print!("{}", markdown_table(&table));
    }
    Ok(())
}
