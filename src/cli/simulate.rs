//! `shadowsteer simulate`: writes simulated labelled telemetry and its failures file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context as _;
use shadowsteer::risk::data::failures::{companion_path, write_failures};
use shadowsteer::risk::data::telemetry::TelemetryWriter;
use shadowsteer::risk::simulate::broad::{BenignFamilies, BenignFamily};
use shadowsteer::risk::simulate::{DEFAULT_START, Scenario, SimConfig, Simulator};

use super::{CommandError, CommandResult, progress};

/// Arguments of `simulate`.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// Number of appliances (spread over the regions eu, us, ap).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    appliances: u32,
    /// Hours of telemetry per appliance (fractions allowed).
    #[arg(long)]
    hours: f64,
    /// Random seed: the same seed gives byte-identical output.
    #[arg(long)]
    seed: u64,
    /// Output CSV; the failure labels go to NAME.failures.csv beside it.
    #[arg(long)]
    out: PathBuf,
    /// Mean failures per appliance per day (all kinds).
    #[arg(long, default_value_t = 4.0)]
    failures_per_day: f64,
    /// Unix second of the first row.
    #[arg(long, default_value_t = DEFAULT_START)]
    start: i64,
    /// Which simulator: `classic` (five hand-written failure kinds; the output the shipped model
    /// was trained on, unchanged for a seed) or `broad` (failure families `deg_cpu` … `deg_loss`
    /// over every signal, five curves, precursors from 10 s to 30 min, hard benign anomalies,
    /// widely varied appliances).
    #[arg(long, value_enum, default_value_t = ScenarioArg::Classic)]
    scenario: ScenarioArg,
    /// With `--scenario broad`: benign anomaly families to leave out, comma-separated, to
    /// measure what each costs a model (the appliances and the other families' anomalies stay
    /// the same for the seed).
    #[arg(long, value_enum, value_delimiter = ',')]
    without: Vec<FamilyArg>,
}

/// `--without` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum FamilyArg {
    Bursts,
    LoadPeaks,
    Ramps,
    NoisySensors,
    MissingFields,
    BatchJobs,
    LevelShifts,
    Congestion,
}

impl From<FamilyArg> for BenignFamily {
    fn from(f: FamilyArg) -> Self {
        match f {
            FamilyArg::Bursts => BenignFamily::Bursts,
            FamilyArg::LoadPeaks => BenignFamily::LoadPeaks,
            FamilyArg::Ramps => BenignFamily::Ramps,
            FamilyArg::NoisySensors => BenignFamily::NoisySensors,
            FamilyArg::MissingFields => BenignFamily::MissingFields,
            FamilyArg::BatchJobs => BenignFamily::BatchJobs,
            FamilyArg::LevelShifts => BenignFamily::LevelShifts,
            FamilyArg::Congestion => BenignFamily::Congestion,
        }
    }
}

/// `--scenario` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ScenarioArg {
    Classic,
    Broad,
}

impl From<ScenarioArg> for Scenario {
    fn from(s: ScenarioArg) -> Self {
        match s {
            ScenarioArg::Classic => Scenario::Classic,
            ScenarioArg::Broad => Scenario::Broad,
        }
    }
}

pub fn run(a: SimulateArgs) -> CommandResult {
    if !(a.hours > 0.0 && a.hours <= 24.0 * 366.0) {
        return Err(CommandError::Input(format!(
            "--hours {} must be more than 0 and at most a year",
            a.hours
        )));
    }
    if !(0.0..=1000.0).contains(&a.failures_per_day) {
        return Err(CommandError::Input(
            "--failures-per-day must be between 0 and 1000".into(),
        ));
    }
    if !a.without.is_empty() && a.scenario != ScenarioArg::Broad {
        return Err(CommandError::Input(
            "--without needs --scenario broad (the classic scenario's output never changes)".into(),
        ));
    }
    let without: Vec<BenignFamily> = a.without.iter().map(|f| (*f).into()).collect();
    let seconds = (a.hours * 3600.0).round() as u64;
    let cfg = SimConfig {
        start: a.start,
        failures_per_day: a.failures_per_day,
        scenario: a.scenario.into(),
        benign: BenignFamilies::without(&without),
        ..SimConfig::new(a.appliances as usize, seconds, a.seed)
    };
    let sim = Simulator::new(cfg);
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file = File::create(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut out =
        TelemetryWriter::new(BufWriter::with_capacity(1 << 20, file)).context("writing")?;
    let mut labels = Vec::new();
    let mut rows = 0u64;
    let bar = progress::count(cfg.appliances as u64, "simulating appliances");
    for i in 0..cfg.appliances {
        let run = sim.appliance(i);
        let infos = [run.info.clone()];
        for r in &run.rows {
            let mut r = *r;
            r.appliance = 0;
            out.write_row(&infos, &r).context("writing")?;
        }
        rows += run.rows.len() as u64;
        labels.extend(run.failures);
        bar.inc(1);
    }
    bar.finish_and_clear();
    out.finish().context("writing")?;
    let failures_path = companion_path(&a.out);
    let mut f = BufWriter::new(
        File::create(&failures_path)
            .with_context(|| format!("creating {}", failures_path.display()))?,
    );
    write_failures(&mut f, &labels).context("writing failures")?;
    f.flush().context("writing failures")?;
    let with = labels.iter().filter(|l| l.precursor == Some(true)).count();
    println!(
        "wrote {rows} rows to {} and {} failures ({with} with precursors, {} without) to {}",
        a.out.display(),
        labels.len(),
        labels.len() - with,
        failures_path.display()
    );
    Ok(())
}
