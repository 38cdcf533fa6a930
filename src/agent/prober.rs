//! The path-probe shell: answers probes from other appliances and probes the configured peers,
//! writing one `path_probes` row per peer and window.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::buffer::Bounded;
use super::probe::{MAX_PROBE, PathMeter, ProbeKey, ProbeKind};
use super::roster::SharedRoster;
use crate::domain::{ApplianceId, PathProbe, ProbeTarget};
use crate::store::telemetry;

/// Counters of the prober.
#[derive(Debug, Default)]
pub struct ProbeStats {
    /// Requests answered.
    pub answered: AtomicU64,
    /// Datagrams that were not valid probes (bad MAC, garbage).
    pub rejected: AtomicU64,
    /// Path rows written.
    pub rows: AtomicU64,
}

/// The prober's counters, for the agent's `/metrics`.
impl crate::metrics::Collector for ProbeStats {
    fn encode(&self, encoder: crate::metrics::DescriptorEncoder) -> std::fmt::Result {
        let mut out = crate::metrics::Scrape::new(encoder);
        out.counter(
            "shadowsteer_probe_requests_answered",
            "Path probe requests from other appliances answered.",
            self.answered.load(Ordering::Relaxed),
        )?;
        out.counter(
            "shadowsteer_probe_rejected",
            "Datagrams on the probe port that were not valid probes (bad MAC, garbage).",
            self.rejected.load(Ordering::Relaxed),
        )?;
        out.counter(
            "shadowsteer_probe_rows_written",
            "Path probe rows written to the database.",
            self.rows.load(Ordering::Relaxed),
        )
    }
}

/// Settings of the prober.
#[derive(Debug)]
pub struct ProberSettings {
    /// Probe key.
    pub key: ProbeKey,
    /// Time between probes to each peer.
    pub interval: Duration,
    /// Window per row.
    pub window: Duration,
    /// Peers probed.
    pub peers: Vec<(ApplianceId, SocketAddr)>,
    /// Row buffer bound.
    pub buffer_rows: usize,
}

/// Runs until `shutdown`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    socket: UdpSocket,
    pool: PgPool,
    appliance: ApplianceId,
    roster: SharedRoster,
    settings: ProberSettings,
    stats: Arc<ProbeStats>,
    shutdown: CancellationToken,
) {
    let start = (Instant::now(), Utc::now());
    let mut meter = PathMeter::new(start.0, settings.window);
    let mut rows: Bounded<PathProbe> = Bounded::new(settings.buffer_rows);
    let mut send_tick = tokio::time::interval(settings.interval);
    send_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut window_tick = tokio::time::interval(settings.window);
    window_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut buf = [0u8; MAX_PROBE + 1];
    let mut out = [0u8; MAX_PROBE];
    let wall = |since: Duration| -> DateTime<Utc> {
        start.1 + chrono::Duration::from_std(since).unwrap_or_default()
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = send_tick.tick() => {
                let now = Instant::now();
                for (peer, addr) in &settings.peers {
                    let p = meter.request(now, &appliance, peer);
                    let n = settings.key.encode(&p, &mut out);
                    let _ = socket.try_send_to(&out[..n], *addr);
                }
            }
            r = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                let Some(probe) = settings.key.decode(&buf[..n]) else {
                    stats.rejected.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                match probe.kind {
                    ProbeKind::Request => {
                        let mut reply = probe;
                        reply.kind = ProbeKind::Response;
                        reply.from = appliance.clone();
                        let n = settings.key.encode(&reply, &mut out);
                        if socket.try_send_to(&out[..n], from).is_ok() {
                            stats.answered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    ProbeKind::Response => {
                        let _ = meter.handle_response(Instant::now(), &probe);
                    }
                }
            }
            _ = window_tick.tick() => {
                let region = roster.read().ok().and_then(|v| v.region.clone());
                for (w, s) in meter.poll_summaries(Instant::now()) {
                    let Some(region) = region.clone() else { continue };
                    rows.push(PathProbe {
                        region,
                        src: appliance.clone(),
                        dst: ProbeTarget::Appliance(s.peer),
                        ts: wall(meter.window_end(w)),
                        rtt_ms: s.rtt_ms,
                        jitter_ms: s.jitter_ms,
                        loss: s.loss,
                        samples: s.samples,
                    });
                }
                if !rows.is_empty() {
                    let batch: Vec<PathProbe> = rows.front(1000).cloned().collect();
                    let r = tokio::time::timeout(
                        Duration::from_secs(5),
                        telemetry::insert_probes(&pool, &batch),
                    )
                    .await;
                    match r {
                        Ok(Ok(_)) => {
                            rows.consume(batch.len());
                            stats.rows.fetch_add(batch.len() as u64, Ordering::Relaxed);
                        }
                        Ok(Err(e)) => tracing::debug!("writing path probes: {e}"),
                        Err(_) => tracing::debug!("writing path probes timed out"),
                    }
                }
            }
        }
    }
}
