//! `shadowsteer evaluate`: the metrics of a model (and the baseline) on labelled telemetry.

use std::path::PathBuf;

use anyhow::Context as _;
use shadowsteer::risk::card::report_table;
use shadowsteer::risk::evaluate;
use shadowsteer::risk::score::score_all;
use shadowsteer::risk::series::Series;

use super::{CommandError, CommandResult, risk_input};

/// Arguments of `evaluate`.
#[derive(Debug, clap::Args)]
pub struct EvaluateArgs {
    /// The model file.
    #[arg(long)]
    model: PathBuf,
    /// Telemetry CSV files, comma-separated; each one's NAME.failures.csv is used if present.
    #[arg(long, value_delimiter = ',', required = true)]
    data: Vec<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Evaluate at this threshold instead of the model's operating threshold.
    #[arg(long)]
    threshold: Option<f64>,
    /// Threads for scoring.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

pub fn run(a: EvaluateArgs) -> CommandResult {
    let model = risk_input::load_model(&a.model)?;
    let thr = a.threshold.unwrap_or(model.threshold);
    if !(0.0..=1.0).contains(&thr) {
        return Err(CommandError::Input(format!(
            "--threshold {thr} is not in [0, 1]"
        )));
    }
    let mut series: Vec<Series> = Vec::new();
    for path in &a.data {
        series.extend(risk_input::load_data(path)?.series);
    }
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
