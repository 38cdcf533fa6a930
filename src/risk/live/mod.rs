//! Live scoring in `serve`: every interval, read the new telemetry and failure events from
//! Postgres, score every appliance and path, and write the scores that moved.
//!
//! The shell around [`Fleet`]: it owns the clock, the pool and the task. Scoring runs in
//! `spawn_blocking` (the fleet moves into the blocking task and back), so DNS answering on the
//! async workers never waits for it. Writes go to `risk_scores` only when a score moved by more
//! than `epsilon` (at most `max_writes_per_round`, largest moves first); the table's trigger
//! then notifies the steering server. A database error skips the round and is reported in the
//! published scores; the next round retries. After an error the telemetry is re-read from the window's
//! start, so nothing inserted meanwhile is missed.
//!
//! Scores expire (`risk.max_score_age`): every round also confirms the unchanged stored score of
//! each subject still heard from, at most once per quarter of that age; a subject that falls
//! silent is no longer confirmed, and steering counts its score as unknown-high once it is
//! older than the age (`store::snapshot::stale_scores`).
//!
//! One scorer per region: each round first takes or renews the region's lease in the database
//! (`store::scorer_lease`); a server that does not hold it stands by and says who scores. The
//! one that takes the lease over starts from the stored scores, as after a restart.

pub mod fleet;
pub mod reload;

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::RiskSection;
use crate::domain::RegionId;
use crate::risk::features::window::WINDOW_S;
use crate::risk::live::fleet::{Fleet, SubjectKind, SubjectScore};
use crate::risk::live::reload::ModelSource;
use crate::risk::model::Model;
use crate::store::{StoreError, risk as db, scorer_lease};

/// Rows can arrive this late (agents batch their inserts): each round reads the last this many
/// seconds again by timestamp, and, since a row's `received_at` is its transaction's start
/// while it shows only from the commit, what was received this long before the newest row read.
const LATE_S: i64 = 10;
/// Failure history the features use.
const HISTORY_S: i64 = 3600;
/// Probe history that warms the rtt baselines at start.
const BASELINE_S: i64 = 3600;

/// What the live scorer publishes after every round, for metrics and the admin API.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LiveScores {
    /// Version of the model scoring.
    pub model_version: String,
    /// Its operating threshold.
    pub threshold: f64,
    /// Second the scores are for (unix), 0 before the first round.
    pub scored_at: i64,
    /// Every subject's current score.
    pub scores: Vec<SubjectScore>,
    /// Rounds completed.
    pub rounds: u64,
    /// Rounds that failed (database errors).
    pub failed_rounds: u64,
    /// Score rows written since start.
    pub writes: u64,
    /// Milliseconds the last round's scoring took (CPU only).
    pub last_scoring_ms: f64,
    /// The last round's error, if it failed.
    pub last_error: Option<String>,
    /// Whether this server holds the region's scorer lease (scores and writes).
    pub leading: bool,
    /// Who holds the lease when another server does.
    pub lease_holder: Option<String>,
    /// Model reloads done (SIGHUP or admin API), the unchanged ones included.
    pub model_reloads: u64,
    /// Model reloads refused (the old model stayed).
    pub model_reload_failures: u64,
}

impl LiveScores {
    /// Writes the metrics: the model, the scorer's rounds, every score.
    pub fn encode_metrics(&self, out: &mut crate::metrics::Scrape) -> std::fmt::Result {
        out.info(
            "shadowsteer_risk_model",
            "The risk model scoring.",
            &[
                ("version", self.model_version.as_str()),
                ("threshold", self.threshold.to_string().as_str()),
            ],
        )?;
        out.counter(
            "shadowsteer_risk_model_reloads",
            "Risk model reloads done (SIGHUP or POST /api/v1/model/reload).",
            self.model_reloads,
        )?;
        out.counter(
            "shadowsteer_risk_model_reload_failures",
            "Risk model reloads refused: the file was not a valid model; the old one stayed.",
            self.model_reload_failures,
        )?;
        out.counter(
            "shadowsteer_risk_rounds",
            "Live scoring rounds completed.",
            self.rounds,
        )?;
        out.counter(
            "shadowsteer_risk_failed_rounds",
            "Live scoring rounds that failed (database errors); the next round retries.",
            self.failed_rounds,
        )?;
        out.counter(
            "shadowsteer_risk_writes",
            "Score rows written (only scores that moved by more than epsilon).",
            self.writes,
        )?;
        out.gauge(
            "shadowsteer_risk_scorer_leading",
            "1 when this server holds its region's scorer lease (it scores), 0 when it stands by.",
            if self.leading { 1.0 } else { 0.0 },
        )?;
        out.gauge(
            "shadowsteer_risk_scoring_seconds",
            "CPU time the last round's scoring took.",
            self.last_scoring_ms / 1000.0,
        )?;
        let bounds = |s: &'_ SubjectScore| {
            [
                ("value", s.score.value()),
                ("low", s.score.low()),
                ("high", s.score.high()),
            ]
        };
        let series: Vec<([(&str, &str); 4], f64)> = self
            .scores
            .iter()
            .flat_map(|s| {
                bounds(s).map(|(bound, v)| {
                    (
                        [
                            ("kind", s.kind.as_str()),
                            ("subject", s.id.as_str()),
                            ("region", s.region.as_str()),
                            ("bound", bound),
                        ],
                        v.get(),
                    )
                })
            })
            .collect();
        out.gauges(
            "shadowsteer_risk_score",
            "Risk of failure within the model's horizon, with its interval bounds.",
            series,
        )
    }
}

/// The live scorer's latest round, for `/metrics`.
#[derive(Debug)]
pub struct LiveMetrics(watch::Receiver<Arc<LiveScores>>);

impl LiveMetrics {
    /// Reads what the scorer publishes on `scores`.
    pub fn new(scores: watch::Receiver<Arc<LiveScores>>) -> Self {
        Self(scores)
    }
}

impl crate::metrics::Collector for LiveMetrics {
    fn encode(&self, encoder: crate::metrics::DescriptorEncoder) -> std::fmt::Result {
        // Clone the Arc and let the lock go before encoding.
        let scores = Arc::clone(&self.0.borrow());
        scores.encode_metrics(&mut crate::metrics::Scrape::new(encoder))
    }
}

#[derive(Default)]
struct Round {
    fleet: Fleet,
    /// Telemetry was read up to (exclusive) this time (`None`: the next round reads every
    /// second of the window).
    read_to: Option<DateTime<Utc>>,
    /// The newest `received_at` read. Older seconds that get rows later (an agent replaying
    /// its buffer) are read again by arrival, so that they still reach the windows.
    received_to: Option<DateTime<Utc>>,
    /// Whether the rtt baselines were warmed from stored probes.
    baseline_seeded: bool,
}

/// Runs until `shutdown`: scores every `settings.interval` with the model `source` has in force
/// (taken at the start of each round) while it holds the region's scorer lease, and publishes
/// to `published`. `region` is this server's region: only its subjects'
/// rows are written. Never fails: with the database away it keeps retrying every round and
/// says so in what it publishes.
pub async fn run(
    pool: PgPool,
    source: Arc<ModelSource>,
    settings: RiskSection,
    region: RegionId,
    published: watch::Sender<Arc<LiveScores>>,
    shutdown: CancellationToken,
) {
    let holder = lease_holder_name();
    let ttl = lease_ttl(settings.interval.0);
    let mut round = Round::default();
    let mut model = source.current();
    let mut state = LiveScores {
        model_version: model.version.clone(),
        threshold: model.threshold,
        ..LiveScores::default()
    };
    published.send_replace(Arc::new(state.clone()));
    let mut ticker = tokio::time::interval(settings.interval.0);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        (state.model_reloads, state.model_reload_failures) = source.counts();
        match scorer_lease::acquire(&pool, region.as_str(), &holder, ttl).await {
            Ok(true) if !state.leading => {
                tracing::info!(%holder, region = %region, "scoring the region (scorer lease taken)");
                round = first_round(&pool, &model, &region).await;
                state.leading = true;
                state.lease_holder = None;
            }
            Ok(true) => {}
            Ok(false) => {
                if state.leading {
                    tracing::warn!(%holder, "scorer lease lost; standing by");
                }
                state.leading = false;
                state.lease_holder = scorer_lease::holder(&pool, region.as_str())
                    .await
                    .ok()
                    .flatten()
                    .map(|(h, _)| h);
                published.send_replace(Arc::new(state.clone()));
                continue;
            }
            Err(e) => {
                state.failed_rounds += 1;
                state.last_error = Some(e.to_string());
                tracing::warn!(error = %e, "cannot take the scorer lease; retrying next round");
                published.send_replace(Arc::new(state.clone()));
                continue;
            }
        }
        let latest = source.current();
        if latest.version != model.version {
            // A reloaded model: every score is rewritten once, naming it.
            tracing::info!(previous = %model.version, version = %latest.version, "scoring with the reloaded risk model");
            model = latest;
            round.fleet.handle_new_model();
            state.model_version = model.version.clone();
            state.threshold = model.threshold;
        }
        let now = Utc::now();
        match run_round(&pool, &model, &settings, &region, round, now).await {
            (r, Ok(outcome)) => {
                round = r;
                state.rounds += 1;
                state.writes += outcome.written;
                state.last_scoring_ms = outcome.scoring_ms;
                state.scored_at = outcome.scored_at;
                state.scores = round.fleet.scores();
                state.last_error = None;
            }
            (r, Err(e)) => {
                round = r;
                round.read_to = None;
                round.received_to = None;
                state.failed_rounds += 1;
                state.last_error = Some(e.to_string());
                tracing::warn!(error = %e, "risk scoring round failed; retrying next round");
            }
        }
        published.send_replace(Arc::new(state.clone()));
    }
    if state.leading {
        // Hand over at once rather than when the lease expires.
        if let Err(e) = scorer_lease::release(&pool, region.as_str(), &holder).await {
            tracing::warn!(error = %e, "cannot release the scorer lease; it expires by itself");
        }
    }
}

/// This server's name in the lease: host, process and a random part (a restarted process,
/// or two scorers in one process, never share a name).
fn lease_holder_name() -> String {
    let host: String = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().chars().take(64).collect())
        .unwrap_or_default();
    format!(
        "{}:{}:{:08x}",
        if host.is_empty() { "serve" } else { &host },
        std::process::id(),
        rand::random::<u32>()
    )
}

/// How long a lease lasts without renewal: three rounds, at least 2 s (a round that waits on
/// a slow database must not lose it).
fn lease_ttl(interval: std::time::Duration) -> std::time::Duration {
    (interval * 3).max(std::time::Duration::from_secs(2))
}

/// The state a scorer starts from: what is already stored, so that taking over (or a restart)
/// does not rewrite every score. Without it (database away) the first successful round writes
/// everything once, which is also correct.
async fn first_round(pool: &PgPool, model: &Model, region: &RegionId) -> Round {
    let now = Utc::now().timestamp();
    let stored = match db::stored_scores(pool, region.as_str()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read stored risk scores; will write all once");
            Default::default()
        }
    };
    let mut round = Round::default();
    let mut other_model = false;
    for ((kind, subject), (score, version)) in stored {
        other_model |= version != model.version;
        let kind = if kind == "path" {
            SubjectKind::Path
        } else {
            SubjectKind::Appliance
        };
        round
            .fleet
            .handle_stored(kind, &subject, region.as_str(), score, now);
    }
    if other_model {
        round.fleet.handle_new_model();
    }
    round
}

struct Outcome {
    written: u64,
    scoring_ms: f64,
    scored_at: i64,
}

async fn run_round(
    pool: &PgPool,
    model: &Arc<Model>,
    settings: &RiskSection,
    region: &RegionId,
    mut round: Round,
    now: DateTime<Utc>,
) -> (Round, Result<Outcome, StoreError>) {
    // Score the last complete second.
    let scored_at = now.timestamp() - 1;
    let late = chrono::Duration::seconds(LATE_S);
    let from = now - chrono::Duration::seconds(WINDOW_S as i64) - late;
    let read = db::LiveRead {
        since: round.received_to.map_or(DateTime::UNIX_EPOCH, |t| t - late),
        from,
        recent: round.read_to.map_or(from, |t| t - late),
        to: now,
    };
    let reads = async {
        let (health, probes) = db::live_seconds(pool, read).await?;
        let events =
            db::failure_events(pool, now - chrono::Duration::seconds(HISTORY_S), now).await?;
        Ok::<_, StoreError>((health, probes, events))
    };
    let (health, probes, events) = match reads.await {
        Ok(r) => r,
        Err(e) => return (round, Err(e)),
    };
    if !round.baseline_seeded {
        // Warm the rtt baselines with the hour before the windows (whole minutes only, so no
        // second is counted twice when it later leaves a window).
        let first = from.timestamp().div_euclid(60) * 60;
        let to = DateTime::from_timestamp(first, 0).unwrap_or(from);
        match db::rtt_minutes(pool, to - chrono::Duration::seconds(BASELINE_S), to).await {
            Ok(minutes) => round.fleet.handle_rtt_minutes(&minutes, scored_at),
            Err(e) => return (round, Err(e)),
        }
        round.baseline_seeded = true;
    }
    round.read_to = Some(now);
    round.received_to = [round.received_to, health.newest, probes.newest]
        .into_iter()
        .flatten()
        .max();
    let fleet = &mut round.fleet;
    fleet.handle_health(&health.rows);
    fleet.handle_probes(&probes.rows);
    fleet.handle_failures(&events, scored_at);
    // CPU work off the async workers: the fleet moves into the blocking task and back.
    let mut fleet = std::mem::take(&mut round.fleet);
    let m = Arc::clone(model);
    let threads = settings.threads;
    let started = Instant::now();
    let scored = tokio::task::spawn_blocking(move || {
        fleet.score(&m, scored_at, threads);
        fleet
    })
    .await;
    let scoring_ms = started.elapsed().as_secs_f64() * 1000.0;
    round.fleet = match scored {
        Ok(f) => f,
        Err(e) => return (round, Err(StoreError::Task(e.to_string()))),
    };
    // Subjects heard from within the score age are confirmed; silent ones let theirs expire.
    let max_age = settings.max_score_age();
    let heard_since = scored_at - i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX).max(1);
    let rows = round.fleet.poll_writes(
        region.as_str(),
        settings.epsilon,
        settings.max_writes_per_round,
        heard_since,
    );
    let computed_at = DateTime::from_timestamp(scored_at, 0).unwrap_or(now);
    let written = match db::write_scores(pool, &rows, &model.version, computed_at).await {
        Ok(n) => n,
        Err(e) => return (round, Err(e)),
    };
    round.fleet.handle_written(&rows);
    // Unchanged scores of subjects still heard from are confirmed, so they do not expire.
    let confirm = round.fleet.poll_confirmations(region.as_str(), heard_since);
    // Confirmed as of now (not the scored second): the scorer is alive and heard them now.
    let before = now
        - chrono::Duration::from_std(settings.confirm_after()).unwrap_or(chrono::Duration::zero());
    if let Err(e) = db::confirm_scores(pool, region.as_str(), &confirm, now, before).await {
        return (round, Err(e));
    }
    (
        round,
        Ok(Outcome {
            written,
            scoring_ms,
            scored_at,
        }),
    )
}
