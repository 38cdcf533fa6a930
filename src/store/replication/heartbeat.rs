//! Heartbeats: each region's row in `replication_heartbeats`, written by every `serve` and every
//! agent of the region (one row per region; whoever writes it, it says "this region's database
//! was writable and replicating at `beat_at`"), and the lag of every other region's row as
//! this database sees it.
//!
//! Owner rule: both `serve` and agents beat, every [`INTERVAL`]; a beat less than half an
//! interval after the last one is skipped by the database, so any number of writers make at
//! most about two row versions a second per region. Nothing is written while `local_region` is
//! empty (replication not set up).

use std::collections::{BTreeMap, VecDeque};
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

/// Samples of lag kept in memory: ten minutes at one sample per [`INTERVAL`]. Lag history
/// is not stored in the database (it would replicate, and cost a write a second per region);
/// the dashboard's chart needs only the recent past, and a restarted server starts afresh.
pub const HISTORY: usize = 600;

/// Lag per source region at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LagSample {
    /// When it was read, Unix milliseconds (this server's clock).
    pub at_ms: i64,
    /// Lag in milliseconds per source region.
    pub lags: BTreeMap<String, i64>,
}

/// Lag per source region, shared between the heartbeat task, `/metrics` and the API: the
/// latest reading and the last [`HISTORY`] non-empty ones.
#[derive(Debug, Default)]
pub struct LagBoard {
    lags: Mutex<BTreeMap<String, i64>>,
    history: Mutex<VecDeque<LagSample>>,
}

impl LagBoard {
    /// Lag in milliseconds per source region, as last read.
    pub fn read(&self) -> BTreeMap<String, i64> {
        self.lags.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The kept samples, oldest first.
    pub fn history(&self) -> Vec<LagSample> {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        h.iter().cloned().collect()
    }

    /// Records a reading taken at `at_ms` (Unix milliseconds). A reading without regions
    /// (replication not set up) replaces the latest but adds no sample.
    pub fn store(&self, lags: &[RegionLag], at_ms: i64) {
        let now: BTreeMap<String, i64> =
            lags.iter().map(|l| (l.region.clone(), l.lag_ms)).collect();
        if !now.is_empty() {
            let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
            if h.len() == HISTORY {
                h.pop_front();
            }
            h.push_back(LagSample {
                at_ms,
                lags: now.clone(),
            });
        }
        *self.lags.lock().unwrap_or_else(|p| p.into_inner()) = now;
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
                w.board.store(&lags, chrono::Utc::now().timestamp_millis());
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

/// This database's region (`local_region`), `None` before `db replication setup`.
pub async fn local_region(pool: &PgPool) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT region FROM public.local_region")
        .fetch_optional(pool)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lag(region: &str, lag_ms: i64) -> RegionLag {
        RegionLag {
            region: region.into(),
            lag_ms,
        }
    }

    #[test]
    fn the_board_keeps_the_latest_reading_and_a_bounded_history() {
        let board = LagBoard::default();
        board.store(&[], 0);
        assert!(board.read().is_empty());
        assert!(board.history().is_empty(), "no sample without regions");
        for i in 0..(HISTORY as i64 + 5) {
            board.store(&[lag("us", i), lag("ap", 2 * i)], 1000 * i);
        }
        assert_eq!(board.read()["ap"], 2 * (HISTORY as i64 + 4));
        let h = board.history();
        assert_eq!(h.len(), HISTORY);
        assert_eq!(h[0].at_ms, 5000, "the oldest samples went first");
        assert_eq!(h[HISTORY - 1].lags["us"], HISTORY as i64 + 4);
        board.store(&[], 1);
        assert!(board.read().is_empty(), "the latest reading is replaced");
        assert_eq!(board.history().len(), HISTORY);
    }
}
