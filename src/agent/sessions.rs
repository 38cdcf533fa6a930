//! The session recorder's shell: takes the data plane's events, feeds the [`Recorder`], and
//! writes due sessions (and client path measurements) to the database in batches. The data
//! plane never waits for it; while the database is away, sessions stay due (memory bounded by
//! the number of clients) and path rows wait in a bounded buffer.

use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::buffer::Bounded;
use super::recorder::{Recorded, Recorder};
use super::roster::SharedRoster;
use crate::client::probe::WindowReport;
use crate::domain::{ApplianceId, Fraction, PathProbe, ProbeTarget};
use crate::store::sessions::{self, SessionWrite};
use crate::store::telemetry;
use crate::tunnel::device::{DeviceEvent, SessionSnapshot};

/// How often due writes are flushed.
const FLUSH: Duration = Duration::from_millis(250);
/// Sessions per statement.
const BATCH: usize = 1000;
/// Shortest time between two path rows of one client (handshake rtts and helper reports).
const MIN_PATH_ROW_GAP: Duration = Duration::from_millis(500);
/// Flushes between two sweeps of sessions of clients no longer served.
const PRUNE_EVERY: u64 = 60;
/// Longest a write may take before it counts as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Counters of the recorder, for tests and logs.
#[derive(Debug, Default)]
pub struct RecorderStats {
    /// Session rows written (one per recorded change).
    pub session_writes: std::sync::atomic::AtomicU64,
    /// Client path rows written.
    pub path_rows: std::sync::atomic::AtomicU64,
    /// Path rows dropped from the full buffer.
    pub path_rows_dropped: std::sync::atomic::AtomicU64,
}

/// The session recorder's counters, for the agent's `/metrics`.
impl crate::metrics::Collector for RecorderStats {
    fn encode(&self, encoder: crate::metrics::DescriptorEncoder) -> std::fmt::Result {
        use std::sync::atomic::Ordering::Relaxed;
        let mut out = crate::metrics::Scrape::new(encoder);
        out.counter(
            "shadowsteer_session_writes",
            "Session rows written (one per recorded change of a session).",
            self.session_writes.load(Relaxed),
        )?;
        out.counters(
            "shadowsteer_path_rows",
            "Client path measurement rows, by outcome (dropped: from the full buffer while the database was away).",
            "outcome",
            [
                ("written", self.path_rows.load(Relaxed)),
                ("dropped", self.path_rows_dropped.load(Relaxed)),
            ],
        )
    }
}

struct Shell {
    pool: PgPool,
    appliance: ApplianceId,
    roster: SharedRoster,
    recorder: Recorder,
    paths: Bounded<PathProbe>,
    stats: std::sync::Arc<RecorderStats>,
    last_error: Option<String>,
    flushes: u64,
    /// When each client last produced a path row: a client cannot flood the table.
    last_path_row: std::collections::HashMap<crate::domain::PeerIndex, std::time::Instant>,
}

impl Shell {
    fn on_event(&mut self, event: DeviceEvent) {
        let (region, entry) = {
            let Ok(view) = self.roster.read() else { return };
            let peer = match &event {
                DeviceEvent::Session(s) => s.peer,
                DeviceEvent::Rtt { peer, .. } | DeviceEvent::Report { peer, .. } => *peer,
            };
            (view.region.clone(), view.by_index.get(&peer).cloned())
        };
        // A peer unknown to the roster was removed meanwhile: nothing to record.
        let Some((client, role)) = entry else {
            if let DeviceEvent::Session(s) = &event {
                self.recorder.forget(s.peer);
            }
            return;
        };
        if let DeviceEvent::Rtt { peer, .. } | DeviceEvent::Report { peer, .. } = &event {
            let now = std::time::Instant::now();
            if self
                .last_path_row
                .get(peer)
                .is_some_and(|t| now.saturating_duration_since(*t) < MIN_PATH_ROW_GAP)
            {
                return;
            }
            self.last_path_row.insert(*peer, now);
        }
        match event {
            DeviceEvent::Session(s) => self.recorder.observe(s.peer, recorded(&s, role)),
            DeviceEvent::Rtt { rtt, .. } => {
                if let Some(region) = region {
                    self.paths.push(PathProbe {
                        region,
                        src: self.appliance.clone(),
                        dst: ProbeTarget::Client(client),
                        ts: Utc::now(),
                        rtt_ms: Some(rtt.as_secs_f64() * 1000.0),
                        jitter_ms: None,
                        loss: Fraction::default(),
                        samples: 1,
                    });
                }
            }
            DeviceEvent::Report { payload, .. } => {
                let Ok(r) = serde_json::from_slice::<WindowReport>(&payload) else {
                    return;
                };
                let valid = |v: Option<f64>| v.filter(|x| x.is_finite() && *x >= 0.0 && *x < 1e7);
                if let (Some(region), true) = (region, r.sent > 0) {
                    self.paths.push(PathProbe {
                        region,
                        src: self.appliance.clone(),
                        dst: ProbeTarget::Client(client),
                        ts: Utc::now(),
                        rtt_ms: valid(r.rtt_ms),
                        jitter_ms: valid(r.jitter_ms),
                        loss: Fraction::saturating(
                            1.0 - (r.received as f64 / r.sent as f64).min(1.0),
                        ),
                        samples: u32::try_from(r.sent).unwrap_or(u32::MAX),
                    });
                }
            }
        }
    }

    fn fail(&mut self, what: &str, e: String) {
        let msg = format!("{what}: {e}");
        if self.last_error.as_ref() != Some(&msg) {
            tracing::warn!("recorder: {msg} (will retry)");
            self.last_error = Some(msg);
        }
    }

    async fn flush(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        let (region, names) = {
            let Ok(view) = self.roster.read() else { return };
            let Some(region) = view.region.clone() else {
                return;
            };
            // Clients no longer served leave the recorder (bounded by the roster); an O(clients)
            // sweep, so only every PRUNE_EVERY flushes.
            self.flushes = self.flushes.wrapping_add(1);
            if self.flushes.is_multiple_of(PRUNE_EVERY) {
                self.recorder.retain(|p| view.by_index.contains_key(&p));
                self.last_path_row
                    .retain(|p, _| view.by_index.contains_key(p));
            }
            let due = self.recorder.poll_writes(BATCH);
            let names: Vec<_> = due
                .into_iter()
                .filter_map(|w| {
                    let (client, _) = view.by_index.get(&w.peer)?.clone();
                    Some((w, client))
                })
                .collect();
            (region, names)
        };
        if !names.is_empty() {
            let writes: Vec<SessionWrite> = names
                .iter()
                .map(|(w, client)| SessionWrite {
                    client: client.clone(),
                    peer_index: w.peer,
                    role: w.state.role,
                    endpoint: w.state.endpoint,
                    receiver_index: w.state.receiver_index,
                    last_handshake_at: w.state.last_handshake_at,
                    counters: w.state.counters,
                    changed: w.changed,
                })
                .collect();
            let r = tokio::time::timeout(
                WRITE_TIMEOUT,
                sessions::write_sessions(&self.pool, &region, &self.appliance, &writes),
            )
            .await;
            match r {
                Ok(Ok(done)) => {
                    self.last_error = None;
                    self.stats
                        .session_writes
                        .fetch_add(done.len() as u64, Relaxed);
                    for (w, client) in &names {
                        if done.contains(client) {
                            self.recorder.handle_written(w);
                        } else {
                            tracing::warn!(client = %client, "session row is held by another appliance; not written");
                            self.recorder.handle_refused(w);
                        }
                    }
                }
                Ok(Err(e)) => self.fail("writing sessions", e.to_string()),
                Err(_) => self.fail("writing sessions", "timed out".into()),
            }
        }
        if !self.paths.is_empty() {
            let rows: Vec<PathProbe> = self.paths.front(BATCH).cloned().collect();
            let r =
                tokio::time::timeout(WRITE_TIMEOUT, telemetry::insert_probes(&self.pool, &rows))
                    .await;
            match r {
                Ok(Ok(_)) => {
                    self.paths.consume(rows.len());
                    self.stats.path_rows.fetch_add(rows.len() as u64, Relaxed);
                }
                Ok(Err(e)) => self.fail("writing client paths", e.to_string()),
                Err(_) => self.fail("writing client paths", "timed out".into()),
            }
        }
        self.stats
            .path_rows_dropped
            .store(self.paths.dropped(), Relaxed);
    }
}

fn recorded(s: &SessionSnapshot, role: crate::domain::SessionRole) -> Recorded {
    Recorded {
        role,
        endpoint: s.endpoint,
        receiver_index: s.receiver_index,
        last_handshake_at: s.last_handshake_at,
        counters: s.counters,
    }
}

/// Runs until `shutdown`, then makes a last attempt to write what is due.
pub async fn run(
    pool: PgPool,
    appliance: ApplianceId,
    roster: SharedRoster,
    mut events: mpsc::Receiver<DeviceEvent>,
    buffer_rows: usize,
    stats: std::sync::Arc<RecorderStats>,
    shutdown: CancellationToken,
) {
    let mut shell = Shell {
        pool,
        appliance,
        roster,
        recorder: Recorder::new(),
        paths: Bounded::new(buffer_rows),
        stats,
        last_error: None,
        flushes: 0,
        last_path_row: std::collections::HashMap::new(),
    };
    let mut tick = tokio::time::interval(FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            e = events.recv() => match e {
                Some(e) => shell.on_event(e),
                None => break,
            },
            _ = tick.tick() => shell.flush().await,
        }
    }
    while let Ok(e) = events.try_recv() {
        shell.on_event(e);
    }
    shell.flush().await;
}
