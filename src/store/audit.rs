//! The audit trail: every change of a client's answer goes to `steering_decisions`, including
//! changes to "no appliance" (`to_appliance` NULL), written in batches by a task of its own, so
//! that neither the DNS path nor the publisher ever waits on the database. While the database
//! is away (or cannot write: disk full), rows wait in memory, bounded by `max_backlog`
//! ([`MAX_BACKLOG`] in `serve`); past it the oldest are dropped. Every row that is not written
//! (refused by a full inbox, dropped past the backlog, or still waiting when the writer stops)
//! is counted in [`AuditStatus::dropped`]; the writer's own drops are logged too.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::StoreError;
use crate::domain::RegionId;
use crate::steering::AnswerChange;

/// Rows kept while the database is unreachable.
pub const MAX_BACKLOG: usize = 100_000;
/// Rows per INSERT.
const BATCH: usize = 1000;
/// Least time between two warnings about dropped rows.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Counters of the audit writer.
#[derive(Debug, Default)]
pub struct AuditStatus {
    /// Rows written.
    written: AtomicU64,
    /// Rows never written: refused by the full inbox, dropped because the backlog was full, or
    /// still waiting at shutdown.
    dropped: AtomicU64,
    /// Rows waiting.
    backlog: AtomicU64,
}

impl AuditStatus {
    /// Rows written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Rows that will never be written.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The audit trail's progress, for `/metrics`.
impl crate::metrics::Collector for AuditStatus {
    fn encode(&self, encoder: crate::metrics::DescriptorEncoder) -> std::fmt::Result {
        let mut out = crate::metrics::Scrape::new(encoder);
        out.counters(
            "shadowsteer_audit_rows",
            "Steering decisions for the audit table, by outcome.",
            "outcome",
            [("written", self.written()), ("dropped", self.dropped())],
        )?;
        out.gauge(
            "shadowsteer_audit_backlog",
            "Steering decisions waiting to be written.",
            self.backlog.load(Ordering::Relaxed),
        )
    }
}

/// The writer's inbox as the publisher sees it: handing a change over never waits, and a
/// change the full inbox refuses is counted as dropped, with the writer's own drops.
#[derive(Debug, Clone)]
pub struct AuditQueue {
    tx: mpsc::Sender<AnswerChange>,
    status: Arc<AuditStatus>,
}

impl AuditQueue {
    /// The inbox `tx` of the writer that reports to `status`.
    pub fn new(tx: mpsc::Sender<AnswerChange>, status: Arc<AuditStatus>) -> Self {
        Self { tx, status }
    }

    /// Hands `change` to the writer, or counts it dropped when the inbox is full or closed.
    pub fn offer(&self, change: AnswerChange) {
        if self.tx.try_send(change).is_err() {
            self.status.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Writes one batch.
pub async fn write(
    pool: &PgPool,
    region: &RegionId,
    server: &str,
    rows: &[AnswerChange],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let at: Vec<_> = rows.iter().map(|c| c.at).collect();
    let client: Vec<String> = rows.iter().map(|c| c.client.to_string()).collect();
    let from: Vec<Option<String>> = rows
        .iter()
        .map(|c| c.from.as_ref().map(|a| a.to_string()))
        .collect();
    let to: Vec<Option<String>> = rows
        .iter()
        .map(|c| c.to.as_ref().map(|a| a.to_string()))
        .collect();
    let reason: Vec<String> = rows
        .iter()
        .map(|c| {
            let mut r = c.reason.to_string();
            r.truncate(500);
            r
        })
        .collect();
    let primary: Vec<f64> = rows.iter().map(|c| c.primary_risk.get()).collect();
    let shadow: Vec<f64> = rows.iter().map(|c| c.shadow_risk.get()).collect();
    sqlx::query!(
        "INSERT INTO steering_decisions
             (region, decided_at, client_id, from_appliance, to_appliance, reason, primary_risk, shadow_risk, server)
         SELECT $1, u.at, u.client, u.from_a, u.to_a, u.reason, u.p, u.s, $9
         FROM UNNEST($2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[], $7::float8[], $8::float8[])
              AS u(at, client, from_a, to_a, reason, p, s)",
        region.as_str(),
        &at,
        &client,
        &from as &[Option<String>],
        &to as &[Option<String>],
        &reason,
        &primary,
        &shadow,
        server,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Where the audit writer writes, and how much it may hold back.
#[derive(Debug, Clone)]
pub struct AuditTarget {
    /// The database.
    pub pool: PgPool,
    /// The region owning the rows.
    pub region: RegionId,
    /// This server's name, stored in each row.
    pub server: String,
    /// Most rows kept while writing fails ([`MAX_BACKLOG`] in `serve`).
    pub max_backlog: usize,
}

/// Counts `n` rows that will never be written, and warns (at most every
/// [`DROP_LOG_INTERVAL`]).
fn count_dropped(
    status: &AuditStatus,
    n: u64,
    why: &str,
    last_log: &mut Option<std::time::Instant>,
) {
    if n == 0 {
        return;
    }
    let total = status.dropped.fetch_add(n, Ordering::Relaxed) + n;
    if last_log.is_none_or(|t| t.elapsed() >= DROP_LOG_INTERVAL) {
        tracing::warn!(
            rows = n,
            dropped_total = total,
            "steering decisions lost from the audit trail: {why}"
        );
        *last_log = Some(std::time::Instant::now());
    }
}

/// Writes changes from `rx` until shutdown, then flushes what is left (for at most 5 s).
pub async fn run(
    target: AuditTarget,
    mut rx: mpsc::Receiver<AnswerChange>,
    status: Arc<AuditStatus>,
    shutdown: CancellationToken,
) {
    let AuditTarget {
        pool,
        region,
        server,
        max_backlog,
    } = target;
    let mut backlog: VecDeque<AnswerChange> = VecDeque::new();
    let mut retry = Duration::from_millis(200);
    let mut failing = false;
    let mut last_drop_log = None;
    loop {
        let stopping = tokio::select! {
            _ = shutdown.cancelled() => true,
            c = rx.recv() => match c {
                Some(c) => { backlog.push_back(c); false }
                None => true,
            },
            _ = tokio::time::sleep(retry), if failing && !backlog.is_empty() => false,
        };
        while let Ok(c) = rx.try_recv() {
            backlog.push_back(c);
        }
        let excess = backlog.len().saturating_sub(max_backlog);
        backlog.drain(..excess);
        count_dropped(
            &status,
            excess as u64,
            "the backlog is full (the oldest are dropped)",
            &mut last_drop_log,
        );
        let flush = async {
            while !backlog.is_empty() {
                let n = backlog.len().min(BATCH);
                let batch: Vec<AnswerChange> = backlog.iter().take(n).cloned().collect();
                write(&pool, &region, &server, &batch).await?;
                backlog.drain(..n);
                status.written.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok::<_, StoreError>(())
        };
        let result = if stopping {
            tokio::time::timeout(Duration::from_secs(5), flush)
                .await
                .unwrap_or_else(|_| Err(StoreError::Task("timed out".into())))
        } else {
            flush.await
        };
        status
            .backlog
            .store(backlog.len() as u64, Ordering::Relaxed);
        match result {
            Ok(()) => {
                failing = false;
                retry = Duration::from_millis(200);
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, backlog = backlog.len(), "writing steering decisions failed; will retry");
                }
                failing = true;
                retry = (retry * 2).min(Duration::from_secs(2));
            }
        }
        if stopping {
            // Also what the channel still holds.
            while let Ok(c) = rx.try_recv() {
                backlog.push_back(c);
            }
            count_dropped(
                &status,
                backlog.len() as u64,
                "not written at shutdown",
                &mut None,
            );
            status.backlog.store(0, Ordering::Relaxed);
            return;
        }
    }
}
