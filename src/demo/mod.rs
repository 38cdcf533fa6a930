//! `shadowsteer demo`: the whole product on one machine, without root. Regions with their
//! own Postgres and replication, steering servers, appliance agents and clients with live
//! probe streams go through a story — a degradation the risk model sees coming, the failure
//! that follows, a sudden crash, recovery and failback — and the report says what each event
//! cost the clients; then the same story runs against a reactive baseline (health checks
//! only, DNS steering only) for comparison.
//!
//! - [`scenario`] (pure): the story, from a TOML file or built in.
//! - [`signals`] (pure): the health each appliance reports over time.
//! - [`report`] (pure): per-event losses and gaps from the clients' timelines.
//! - [`view`] (pure): the live table.
//! - [`configs`] (pure): the processes' and clients' configuration files.
//! - [`fleet`] (shell): clusters, processes and clients.
//! - [`ports`] (shell): the ports children bind, picked where the kernel never hands one out.
//! - [`stock`] (shell): stock `wireguard-go` clients in network namespaces (root).
//! - this module (shell): runs the story on a fleet.

pub mod configs;
pub mod fleet;
pub mod ports;
pub mod report;
pub mod scenario;
pub mod signals;
pub mod stock;
pub mod view;

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use configs::LOSS_TIMEOUT;
use fleet::{Fleet, Plan};
use report::{Mark, RunReport};
use scenario::{EventKind, Scenario};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Regions.
    pub regions: Vec<String>,
    /// Appliances per region.
    pub per_region: usize,
    /// Clients.
    pub clients: usize,
    /// Length of each run (ours, then the baseline).
    pub duration: Duration,
    /// The story.
    pub scenario: Scenario,
    /// Run the reactive baseline too.
    pub baseline: bool,
    /// Keep the data directory.
    pub keep: bool,
    /// Stock `wireguard-go` clients in namespaces instead of the client helper.
    pub stock: bool,
    /// Where the live view goes: a terminal (redrawn) or not (plain lines).
    pub view_is_terminal: bool,
    /// Write the view to stderr (stdout carries the JSON report).
    pub view_to_stderr: bool,
}

/// The whole demo's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// Every session survived every event (our run).
    pub survived: bool,
    /// Clients per run.
    pub clients: usize,
    /// Appliances per run.
    pub appliances: usize,
    /// Regions.
    pub regions: Vec<String>,
    /// Seconds each run lasted.
    pub duration_s: f64,
    /// Probes sent and lost in our run.
    pub probes_sent: u64,
    /// Probes lost in our run.
    pub probes_lost: u64,
    /// Clients silent at the end of our run.
    pub silent_clients: Vec<String>,
    /// Our run's events.
    pub events: Vec<report::EventReport>,
    /// The reactive baseline's run, when it ran.
    pub baseline: Option<RunReport>,
    /// Wall-clock seconds of the whole demo.
    pub wall_s: f64,
    /// Where the data is, with `--keep`.
    pub kept_dir: Option<PathBuf>,
}

/// The demo's plan for `opts` (appliance ids are known before anything starts).
pub fn plan(opts: &Options, dir: PathBuf, reactive: bool) -> Plan {
    Plan {
        regions: opts.regions.clone(),
        per_region: opts.per_region,
        clients: opts.clients,
        reactive,
        dir,
        keep: opts.keep,
        stock: opts.stock,
    }
}

struct Out {
    terminal: bool,
    to_stderr: bool,
    drawn: usize,
}

impl Out {
    fn line(&mut self, text: &str) {
        self.drawn = 0;
        self.write(&format!("{text}\n"));
    }

    fn write(&self, text: &str) {
        if self.to_stderr {
            let _ = std::io::stderr().write_all(text.as_bytes());
        } else {
            let mut o = std::io::stdout();
            let _ = o.write_all(text.as_bytes());
            let _ = o.flush();
        }
    }

    fn redraw(&mut self, text: &str) {
        let rewind = view::rewind(self.drawn);
        self.drawn = text.lines().count();
        self.write(&format!("{rewind}{text}"));
    }
}

/// Runs the demo until done or `shutdown`; `Ok(None)` when interrupted.
pub async fn run(opts: Options, shutdown: CancellationToken) -> anyhow::Result<Option<DemoReport>> {
    let began = Instant::now();
    let root = crate::localpg::temp_cluster_dir("shadowsteer-demo")
        .map_err(|e| anyhow::anyhow!("creating the demo directory: {e}"))?;
    let mut out = Out {
        terminal: opts.view_is_terminal,
        to_stderr: opts.view_to_stderr,
        drawn: 0,
    };
    let result = run_in(&opts, &root, &shutdown, &mut out, began).await;
    match &result {
        _ if opts.keep => out.line(&format!("data kept in {}", root.display())),
        // The processes' logs are what tells why: keep them (and the data beside them).
        Err(_) => out.line(&format!(
            "the demo failed; its logs and data are kept in {}",
            root.display()
        )),
        Ok(_) => {
            let _ = std::fs::remove_dir_all(&root);
        }
    }
    result
}

async fn run_in(
    opts: &Options,
    root: &std::path::Path,
    shutdown: &CancellationToken,
    out: &mut Out,
    began: Instant,
) -> anyhow::Result<Option<DemoReport>> {
    out.line(&format!(
        "shadowsteer demo: {} regions, {} appliances, {} clients, {:.0} s per run",
        opts.regions.len(),
        opts.regions.len() * opts.per_region,
        opts.clients,
        opts.duration.as_secs_f64()
    ));
    let Some(ours) = one_run(opts, root.join("shadowsteer"), false, shutdown, out).await? else {
        return Ok(None);
    };
    let baseline = if opts.baseline {
        out.line("");
        out.line("the same story against a reactive baseline: health checks (3 × 1 s), DNS steering only, no risk model, no takeover");
        match one_run(opts, root.join("baseline"), true, shutdown, out).await? {
            Some(r) => Some(r),
            None => return Ok(None),
        }
    } else {
        None
    };
    Ok(Some(DemoReport {
        survived: ours.survived,
        clients: opts.clients,
        appliances: opts.regions.len() * opts.per_region,
        regions: opts.regions.clone(),
        duration_s: opts.duration.as_secs_f64(),
        probes_sent: ours.probes_sent,
        probes_lost: ours.probes_lost,
        silent_clients: ours.silent_clients,
        events: ours.events,
        baseline,
        wall_s: (began.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        kept_dir: opts.keep.then(|| root.to_path_buf()),
    }))
}

fn write_overrides(fleet_dir: &std::path::Path, scenario: &Scenario, ids: &[String], t: Duration) {
    for id in ids {
        let o = signals::at(scenario, id, t);
        let json = serde_json::json!({
            "cpu": o.cpu.map(|v| v.get()),
            "mem": o.mem.map(|v| v.get()),
            "handshake_failures": o.handshake_failures,
            "packets_dropped": o.packets_dropped,
        });
        let path = configs::overrides_file(fleet_dir, id);
        let tmp = fleet_dir.join(format!(".health-{id}.json.tmp"));
        if std::fs::write(&tmp, json.to_string()).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
}

async fn one_run(
    opts: &Options,
    dir: PathBuf,
    reactive: bool,
    shutdown: &CancellationToken,
    out: &mut Out,
) -> anyhow::Result<Option<RunReport>> {
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let plan = plan(opts, dir.clone(), reactive);
    let ids: Vec<String> = plan.appliances().into_iter().map(|a| a.id).collect();
    write_overrides(&dir, &opts.scenario, &ids, Duration::ZERO);
    let starting = Instant::now();
    let mut progress = |line: String| out.line(&format!("  {line}"));
    let started = tokio::select! {
        () = shutdown.cancelled() => None,
        f = Fleet::start(plan, &mut progress) => Some(f?),
    };
    // An interrupted start drops what it had started (the fleet's parts stop on drop).
    let Some(mut fleet) = started else {
        return Ok(None);
    };
    out.line(&format!(
        "  ready in {:.1} s",
        starting.elapsed().as_secs_f64()
    ));
    if !reactive {
        out.line(&format!(
            "  dashboard: http://{}/#token={}   (read-only token; the page keeps it in session storage)",
            fleet.admin(),
            fleet.token.as_str()
        ));
    }
    let t0 = Instant::now();
    let mut marks: Vec<Mark> = Vec::new();
    let mut next = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_view = Instant::now() - Duration::from_secs(10);
    let title = if reactive { "baseline" } else { "shadowsteer" };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                fleet.shutdown();
                return Ok(None);
            }
            _ = tick.tick() => {}
        }
        let t = t0.elapsed();
        if t >= opts.duration {
            break;
        }
        write_overrides(&dir, &opts.scenario, &ids, t);
        while let Some(e) = opts.scenario.events.get(next).filter(|e| e.at <= t) {
            let at = Instant::now();
            match e.kind {
                EventKind::Fail | EventKind::Crash => fleet.kill_agent(&e.appliance),
                EventKind::Recover => fleet.start_agent(&e.appliance)?,
                EventKind::Degrade => {}
            }
            marks.push(Mark {
                name: e.name(),
                kind: e.kind.report_kind().to_owned(),
                appliance: e.appliance.clone(),
                at,
            });
            if !out.terminal {
                out.line(&format!("  {:>5.1}s {}", t.as_secs_f64(), e.name()));
            }
            next += 1;
        }
        let every = if out.terminal {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(5)
        };
        if last_view.elapsed() >= every {
            last_view = Instant::now();
            let lines = live_lines(&fleet).await;
            if out.terminal {
                let happened = happened(&fleet, &marks, t0);
                let head = format!(
                    "{title}  t = {:.0}/{:.0} s",
                    t.as_secs_f64(),
                    opts.duration.as_secs_f64()
                );
                out.redraw(&view::table(&head, &lines, &happened));
            } else {
                out.line(&format!("  {}", view::plain(t.as_secs_f64(), &lines)));
            }
        }
    }
    let end = Instant::now();
    fleet.stop_clients().await;
    let recorded = fleet.recorded();
    let report = report::compute(&recorded, &marks, t0, end, LOSS_TIMEOUT);
    fleet.shutdown();
    out.line(&format!(
        "  {title}: {} of {} probes lost; every session survived: {}",
        report.probes_lost,
        report.probes_sent,
        if report.survived { "yes" } else { "NO" }
    ));
    Ok(Some(report))
}

async fn live_lines(fleet: &Fleet) -> Vec<view::Line> {
    let rows = crate::store::fleet_view::appliances(fleet.pool())
        .await
        .unwrap_or_default();
    let mut held: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for c in &fleet.clients {
        if let (Some(ep), _) = c.timeline.now()
            && let Some(a) = fleet.appliance_at(ep.ip())
        {
            *held.entry(a.to_owned()).or_default() += 1;
        }
    }
    rows.into_iter()
        .map(|r| view::Line {
            running: fleet.agent_running(&r.id),
            clients: held.get(&r.id).copied().unwrap_or(0),
            id: r.id,
            region: r.region,
            state: r.state,
            risk: r.risk,
        })
        .collect()
}

fn happened(fleet: &Fleet, marks: &[Mark], t0: Instant) -> Vec<view::Happened> {
    let recorded = fleet.recorded();
    let now = Instant::now();
    // Probes younger than the loss timeout are still in flight: not judged yet.
    let judged = now.checked_sub(LOSS_TIMEOUT).unwrap_or(now);
    let r = report::compute(&recorded, marks, t0, judged.max(t0), LOSS_TIMEOUT);
    r.events
        .into_iter()
        .map(|e| view::Happened {
            at_s: e.at_s,
            name: e.name,
            moved: e.clients_moved,
            lost: e.probes_lost,
            gap_ms: e.longest_gap_ms,
        })
        .collect()
}

/// The closing report as text: ours and the baseline side by side, per event.
pub fn summary(r: &DemoReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nREPORT ({} clients, {} appliances in {} regions, {:.0} s per run, {:.0} s in all)",
        r.clients,
        r.appliances,
        r.regions.len(),
        r.duration_s,
        r.wall_s
    );
    let _ = writeln!(
        out,
        "{:<18} {:<10} {:>22}   {:>22}",
        "", "", "shadowsteer", "reactive baseline"
    );
    let _ = writeln!(
        out,
        "{:<18} {:<10} {:>6} {:>6} {:>8}   {:>6} {:>6} {:>8}",
        "EVENT", "KIND", "MOVED", "LOST", "GAP ms", "MOVED", "LOST", "GAP ms"
    );
    for (i, e) in r.events.iter().enumerate() {
        let b = r.baseline.as_ref().and_then(|b| b.events.get(i));
        let bl = b.map_or_else(
            || format!("{:>6} {:>6} {:>8}", "-", "-", "-"),
            |b| {
                format!(
                    "{:>6} {:>6} {:>8.0}",
                    b.clients_moved, b.probes_lost, b.longest_gap_ms
                )
            },
        );
        let _ = writeln!(
            out,
            "{:<18} {:<10} {:>6} {:>6} {:>8.0}   {bl}",
            e.name, e.kind, e.clients_moved, e.probes_lost, e.longest_gap_ms
        );
    }
    let _ = writeln!(
        out,
        "probes lost: {} of {}{}",
        r.probes_lost,
        r.probes_sent,
        r.baseline.as_ref().map_or_else(String::new, |b| format!(
            " (baseline: {} of {})",
            b.probes_lost, b.probes_sent
        ))
    );
    let _ = writeln!(
        out,
        "every session survived: {}",
        if r.survived { "yes" } else { "NO" }
    );
    out
}
