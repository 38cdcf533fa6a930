//! The health shell: samples the host and the data plane every interval, buffers samples in a
//! bounded buffer (oldest dropped and counted while the database is away) and writes them in
//! batches. Its pace never depends on the database: writes have a timeout and are skipped, not
//! queued, while one is pending.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::buffer::Bounded;
use super::health::{CpuTimes, HealthMeter, HealthSample, parse_meminfo, parse_proc_stat};
use super::overrides::OverridesFile;
use super::roster::SharedRoster;
use crate::domain::{ApplianceHealth, ApplianceId, Fraction};
use crate::store::telemetry;
use crate::tunnel::stats::DeviceStats;

const BATCH: usize = 1000;
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Counters of the health writer.
#[derive(Debug, Default)]
pub struct HealthStats {
    /// Rows written.
    pub written: AtomicU64,
    /// Rows dropped from the full buffer.
    pub dropped: AtomicU64,
    /// Rows waiting.
    pub buffered: AtomicU64,
}

/// The health writer's counters, for the agent's `/metrics`.
impl crate::metrics::Collector for HealthStats {
    fn encode(&self, encoder: crate::metrics::DescriptorEncoder) -> std::fmt::Result {
        let mut out = crate::metrics::Scrape::new(encoder);
        out.counter(
            "shadowsteer_health_rows_written",
            "Health rows written to the database.",
            self.written.load(Ordering::Relaxed),
        )?;
        out.counter(
            "shadowsteer_health_rows_dropped",
            "Health rows dropped, oldest first, from the full buffer while the database was away.",
            self.dropped.load(Ordering::Relaxed),
        )?;
        out.gauge(
            "shadowsteer_health_rows_buffered",
            "Health rows waiting to be written.",
            self.buffered.load(Ordering::Relaxed),
        )
    }
}

fn read_host() -> (CpuTimes, Fraction) {
    let cpu = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| parse_proc_stat(&t))
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| parse_meminfo(&t))
        .unwrap_or_default();
    (cpu, mem)
}

/// Settings of the health task.
#[derive(Debug, Clone)]
pub struct HealthSettings {
    /// Sampling interval.
    pub interval: Duration,
    /// Buffer bound.
    pub buffer_rows: usize,
    /// Bandwidth counted as full.
    pub capacity_bps: u64,
    /// Signals replaced from a file (drills, demo).
    pub overrides_file: Option<std::path::PathBuf>,
}

/// Runs until `shutdown`, then tries once more to write what is buffered.
pub async fn run(
    pool: PgPool,
    appliance: ApplianceId,
    roster: SharedRoster,
    device: Arc<DeviceStats>,
    settings: HealthSettings,
    stats: Arc<HealthStats>,
    shutdown: CancellationToken,
) {
    let mut meter = HealthMeter::new(settings.capacity_bps);
    let mut buffer: Bounded<HealthSample> = Bounded::new(settings.buffer_rows);
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_error: Option<String> = None;
    let mut reported_drops = 0;
    let mut overrides = settings.overrides_file.clone().map(OverridesFile::new);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let (cpu, mem) = read_host();
        if let Some(s) = meter.sample(Instant::now(), Utc::now(), cpu, mem, device.snapshot()) {
            buffer.push(match overrides.as_mut() {
                Some(file) => file.current().apply(s),
                None => s,
            });
        }
        flush(
            &pool,
            &appliance,
            &roster,
            &mut buffer,
            &stats,
            &mut last_error,
        )
        .await;
        if buffer.dropped() > reported_drops {
            tracing::warn!(
                dropped = buffer.dropped(),
                "health buffer full while the database is unreachable; dropping the oldest rows"
            );
            reported_drops = buffer.dropped();
        }
    }
    flush(
        &pool,
        &appliance,
        &roster,
        &mut buffer,
        &stats,
        &mut last_error,
    )
    .await;
}

async fn flush(
    pool: &PgPool,
    appliance: &ApplianceId,
    roster: &SharedRoster,
    buffer: &mut Bounded<HealthSample>,
    stats: &HealthStats,
    last_error: &mut Option<String>,
) {
    let region = roster.read().ok().and_then(|v| v.region.clone());
    if let Some(region) = region {
        while !buffer.is_empty() {
            let rows: Vec<ApplianceHealth> = buffer
                .front(BATCH)
                .map(|s| ApplianceHealth {
                    region: region.clone(),
                    appliance: appliance.clone(),
                    ts: s.ts,
                    cpu: s.cpu,
                    mem: s.mem,
                    bw_in_bps: s.bw_in_bps,
                    bw_out_bps: s.bw_out_bps,
                    bw_util: s.bw_util,
                    sessions: s.sessions,
                    handshake_failures: s.handshake_failures,
                    packets_dropped: s.packets_dropped,
                })
                .collect();
            match tokio::time::timeout(WRITE_TIMEOUT, telemetry::insert_health(pool, &rows)).await {
                Ok(Ok(_)) => {
                    if last_error.take().is_some() {
                        tracing::info!("health rows flowing again");
                    }
                    buffer.consume(rows.len());
                    stats
                        .written
                        .fetch_add(rows.len() as u64, Ordering::Relaxed);
                }
                Ok(Err(e)) => {
                    let msg = e.to_string();
                    if last_error.as_ref() != Some(&msg) {
                        tracing::warn!("writing health rows: {msg} (buffering)");
                        *last_error = Some(msg);
                    }
                    break;
                }
                Err(_) => {
                    *last_error = Some("timed out".into());
                    break;
                }
            }
        }
    }
    stats.buffered.store(buffer.len() as u64, Ordering::Relaxed);
    stats.dropped.store(buffer.dropped(), Ordering::Relaxed);
}
