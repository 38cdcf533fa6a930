//! `shadowsteer score`: per-row risk scores with their confidence interval, as CSV.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context as _;
use shadowsteer::risk::model::score::score_all;

use super::{CommandResult, risk_input};

/// Arguments of `score`.
#[derive(Debug, clap::Args)]
pub struct ScoreArgs {
    /// The model file.
    #[arg(long)]
    model: PathBuf,
    /// Telemetry CSV.
    #[arg(long)]
    data: PathBuf,
    /// Output CSV: `ts,appliance,risk,risk_low,risk_high` for every input row.
    #[arg(long)]
    out: PathBuf,
    /// Threads for scoring.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

pub fn run(a: ScoreArgs) -> CommandResult {
    let model = risk_input::load_model(&a.model)?;
    let data = risk_input::load_data(&a.data)?;
    let scores = score_all(&model, &data.series, a.threads);
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file = File::create(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    writeln!(out, "ts,appliance,risk,risk_low,risk_high").context("writing")?;
    // Rows are sorted by (appliance, ts) and series cover them in that order; gap-filled
    // seconds in a series have no input row and are skipped.
    let rows = &data.telemetry.rows;
    let mut r = 0usize;
    let mut written = 0u64;
    for (s, sc) in data.series.iter().zip(&scores) {
        for (i, score) in sc.iter().enumerate() {
            if r < rows.len() && rows[r].appliance == s.appliance && rows[r].ts == s.ts(i) {
                let id = &data.telemetry.appliances[s.appliance as usize].id;
                writeln!(
                    out,
                    "{},{id},{:.6},{:.6},{:.6}",
                    rows[r].ts,
                    score.value().get(),
                    score.low().get(),
                    score.high().get()
                )
                .context("writing")?;
                r += 1;
                written += 1;
            }
        }
    }
    out.flush().context("writing")?;
    eprintln!(
        "scored {written} rows with {} into {}",
        model.version,
        a.out.display()
    );
    Ok(())
}
