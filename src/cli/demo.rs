//! `shadowsteer demo`: the whole product in one command (see README, "Demo").

use std::io::IsTerminal as _;
use std::path::PathBuf;

use shadowsteer::demo::{self, Options, scenario};

use super::{CommandError, CommandResult};

/// Arguments of `demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Simulated clients (client helpers with numbered probe streams).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=1000))]
    clients: u16,
    /// Length of each run (ours, then the baseline), e.g. `70s`.
    #[arg(long, default_value = "70s")]
    duration: shadowsteer::config::Duration,
    /// Regions (2 to 6), each with its own Postgres, steering server and appliances.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=6))]
    regions: u8,
    /// Appliances per region.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=6))]
    appliances_per_region: u8,
    /// The story as a TOML file (default: built in; see README, "Demo").
    #[arg(long, value_name = "FILE")]
    scenario: Option<PathBuf>,
    /// Skip the reactive baseline run.
    #[arg(long)]
    no_baseline: bool,
    /// Print the report as JSON on stdout (the live view goes to stderr).
    #[arg(long)]
    json: bool,
    /// Keep the data directory (clusters, logs, configurations) and print where it is.
    #[arg(long)]
    keep: bool,
    /// Stock `wireguard-go` clients, each in a network namespace, instead of the client
    /// helper (needs root, `ip`, `wireguard-go` and `wg`).
    #[arg(long)]
    stock_clients: bool,
}

const REGION_IDS: [&str; 6] = ["eu", "us", "ap", "sa", "af", "me"];

fn options(args: &DemoArgs) -> Result<Options, CommandError> {
    if args.stock_clients
        && let Some(why) = demo::stock::unavailable()
    {
        return Err(CommandError::Input(why));
    }
    let regions: Vec<String> = REGION_IDS[..usize::from(args.regions)]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let per_region = usize::from(args.appliances_per_region);
    let duration = args.duration.0;
    let probe = Options {
        regions,
        per_region,
        clients: usize::from(args.clients),
        duration,
        scenario: scenario::Scenario { events: Vec::new() },
        baseline: !args.no_baseline,
        keep: args.keep,
        stock: args.stock_clients,
        view_is_terminal: false,
        view_to_stderr: args.json,
    };
    let ids: Vec<String> = demo::plan(&probe, PathBuf::new(), false)
        .appliances()
        .into_iter()
        .map(|a| a.id)
        .collect();
    let story = match &args.scenario {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CommandError::Input(format!("{}: {e}", path.display())))?;
            scenario::parse(&text, &path.display().to_string(), &ids, duration)
                .map_err(CommandError::Input)?
        }
        None => {
            if duration < scenario::MIN_DURATION {
                return Err(CommandError::Input(format!(
                    "--duration {:?} is too short for the built-in story (at least {}s)",
                    duration,
                    scenario::MIN_DURATION.as_secs()
                )));
            }
            if per_region < 2 {
                return Err(CommandError::Input(
                    "the built-in story needs --appliances-per-region 2 or more (or give --scenario)".into(),
                ));
            }
            // eu-1 degrades (its shadow is us-1); us-2 crashes (its shadow is in the third
            // region, or eu-2): no appliance loses its shadow to the other event.
            scenario::built_in(duration, &ids[0], &ids[per_region + 1])
        }
    };
    let terminal = if args.json {
        std::io::stderr().is_terminal()
    } else {
        std::io::stdout().is_terminal()
    };
    Ok(Options {
        scenario: story,
        view_is_terminal: terminal,
        ..probe
    })
}

/// Runs the demo; exit 0 only when every session survived.
pub async fn run(args: DemoArgs) -> CommandResult {
    let opts = options(&args)?;
    let stop = tokio_util::sync::CancellationToken::new();
    let signal = stop.clone();
    tokio::spawn(async move {
        super::shutdown_signal().await;
        signal.cancel();
    });
    let report = demo::run(opts, stop).await.map_err(CommandError::Failed)?;
    let Some(report) = report else {
        eprintln!("interrupted: every process and cluster of the demo is stopped");
        return Err(CommandError::Interrupted);
    };
    if args.json {
        let text =
            serde_json::to_string_pretty(&report).map_err(|e| CommandError::Failed(e.into()))?;
        println!("{text}");
    } else {
        print!("{}", demo::summary(&report));
    }
    if report.survived {
        Ok(())
    } else {
        Err(CommandError::Failed(anyhow::anyhow!(
            "{} sessions did not survive: {}",
            report.silent_clients.len(),
            report.silent_clients.join(", ")
        )))
    }
}
