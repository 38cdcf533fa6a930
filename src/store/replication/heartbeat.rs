//! Heartbeats: each region's row in `replication_heartbeats`, written by every `serve` and every
//! agent of the region (one row per region; whoever writes it, it says "this region's database
//! was writable and replicating at `beat_at`"), and the lag of every other region's row as
//! this database sees it.
//!
//! Owner rule: both `serve` and agents beat, every [`INTERVAL`]; a beat less than half an
//! interval after the last one is skipped by the database, so any number of writers make at
//! most about two row versions a second per region. Nothing is written while `local_region` is
//! empty (replication not set up).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::lag;

/// How often a writer beats.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Writes this region's heartbeat (if the database knows its region). Returns whether a row
/// version was written.
pub async fn beat(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        r"INSERT INTO public.replication_heartbeats (region, beat_at)
          SELECT l.region, clock_timestamp() FROM public.local_region l
          ON CONFLICT (region) DO UPDATE SET beat_at = EXCLUDED.beat_at, applied_at = NULL
          WHERE public.replication_heartbeats.beat_at < EXCLUDED.beat_at - interval '500 milliseconds'",
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Lag of one publishing region's heartbeat here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionLag {
    /// The publishing region.
    pub region: String,
    /// Lag in milliseconds ([`lag::lag_ms`]).
    pub lag_ms: i64,
}

/// The lag of every other region's heartbeat held here, by the database's clock.
pub async fn lags(pool: &PgPool) -> Result<Vec<RegionLag>, sqlx::Error> {
    let rows: Vec<(String, i64, Option<i64>, i64)> = sqlx::query_as(
        r"SELECT h.region,
                 (extract(epoch FROM h.beat_at) * 1000)::int8,
                 (extract(epoch FROM h.applied_at) * 1000)::int8,
                 (extract(epoch FROM clock_timestamp()) * 1000)::int8
          FROM public.replication_heartbeats h
          WHERE h.region IS DISTINCT FROM (SELECT l.region FROM public.local_region l)
          ORDER BY h.region",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(region, beat, applied, now)| RegionLag {
            region,
            lag_ms: lag::lag_ms(beat, applied, now),
        })
        .collect())
}

/// Lag per source region, shared between the heartbeat task and `/metrics`.
#[derive(Debug, Default)]
pub struct LagBoard {
    lags: Mutex<BTreeMap<String, i64>>,
}

impl LagBoard {
    /// Lag in milliseconds per source region, as last read.
    pub fn read(&self) -> BTreeMap<String, i64> {
        self.lags.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn store(&self, lags: &[RegionLag]) {
        let mut m = self.lags.lock().unwrap_or_else(|p| p.into_inner());
        m.clear();
        m.extend(lags.iter().map(|l| (l.region.clone(), l.lag_ms)));
    }
}

/// Lag per source region, for `/metrics` (no series when replication is not set up).
impl crate::metrics::Collector for LagBoard {
    fn encode(&self, encoder: crate::metrics::DescriptorEncoder) -> std::fmt::Result {
        let lags = self.read();
        if lags.is_empty() {
            return Ok(());
        }
        crate::metrics::Scrape::new(encoder).gauges(
            "shadowsteer_replication_lag_seconds",
            "Replication lag from each source region, from its heartbeats.",
            lags.iter()
                .map(|(region, ms)| ([("from", region.as_str())], *ms as f64 / 1000.0)),
        )
    }
}

/// What the heartbeat task does besides beating.
#[derive(Debug, Clone)]
pub struct Watch {
    /// Where lags go (for `/metrics`).
    pub board: Arc<LagBoard>,
    /// Lag past which a warning is logged (at most every 10 s per region).
    pub warn_after: Duration,
}

/// Beats every [`INTERVAL`] until shutdown; with `watch`, also reads every other region's lag,
/// publishes it and warns past the threshold. Database errors are logged (at most every 10 s)
/// and retried at the next beat.
pub async fn run(pool: PgPool, watch: Option<Watch>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error_log: Option<Instant> = None;
    let mut last_warn: BTreeMap<String, Instant> = BTreeMap::new();
    let quiet = Duration::from_secs(10);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let result = async {
            beat(&pool).await?;
            match &watch {
                Some(_) => lags(&pool).await.map(Some),
                None => Ok(None),
            }
        }
        .await;
        match result {
            Ok(Some(lags)) => {
                let Some(w) = &watch else { continue };
                w.board.store(&lags);
                let threshold = i64::try_from(w.warn_after.as_millis()).unwrap_or(i64::MAX);
                for l in &lags {
                    if l.lag_ms > threshold
                        && last_warn
                            .get(&l.region)
                            .is_none_or(|t| t.elapsed() >= quiet)
                    {
                        tracing::warn!(
                            from = %l.region,
                            lag_ms = l.lag_ms,
                            threshold_ms = threshold,
                            "replication from region {} is behind",
                            l.region
                        );
                        last_warn.insert(l.region.clone(), Instant::now());
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                if last_error_log.is_none_or(|t| t.elapsed() >= quiet) {
                    tracing::warn!(error = %e, "replication heartbeat failed; retrying");
                    last_error_log = Some(Instant::now());
                }
            }
        }
    }
}
