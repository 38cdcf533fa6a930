//! The audit trail: every change of a client's answer goes to `steering_decisions`, written in
//! batches by a task of its own, so that neither the DNS path nor the publisher ever waits on
//! the database. While the database is away, rows wait in memory (bounded by
//! [`MAX_BACKLOG`]; past it the oldest are dropped and counted).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::StoreError;
use crate::domain::RegionId;
use crate::steering::Change;

/// Rows kept while the database is unreachable.
pub const MAX_BACKLOG: usize = 100_000;
/// Rows per INSERT.
const BATCH: usize = 1000;

/// Counters of the audit writer.
#[derive(Debug, Default)]
pub struct AuditStatus {
    /// Rows written.
    pub written: AtomicU64,
    /// Rows dropped because the backlog was full.
    pub dropped: AtomicU64,
    /// Rows waiting.
    pub backlog: AtomicU64,
}

/// Writes one batch.
pub async fn write(
    pool: &PgPool,
    region: &RegionId,
    server: &str,
    rows: &[Change],
) -> Result<(), StoreError> {
    let rows: Vec<&Change> = rows.iter().filter(|c| c.to.is_some()).collect();
    if rows.is_empty() {
        return Ok(());
    }
    let at: Vec<_> = rows.iter().map(|c| c.at).collect();
    let client: Vec<String> = rows.iter().map(|c| c.client.to_string()).collect();
    let from: Vec<Option<String>> = rows
        .iter()
        .map(|c| c.from.as_ref().map(|a| a.to_string()))
        .collect();
    let to: Vec<String> = rows
        .iter()
        .map(|c| c.to.as_ref().map(|a| a.to_string()).unwrap_or_default())
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
        &to,
        &reason,
        &primary,
        &shadow,
        server,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Writes changes from `rx` until shutdown, then flushes what is left (for at most 5 s).
pub async fn run(
    pool: PgPool,
    region: RegionId,
    server: String,
    mut rx: mpsc::Receiver<Change>,
    status: Arc<AuditStatus>,
    shutdown: CancellationToken,
) {
    let mut backlog: VecDeque<Change> = VecDeque::new();
    let mut retry = Duration::from_millis(200);
    let mut failing = false;
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
        while backlog.len() > MAX_BACKLOG {
            backlog.pop_front();
            status.dropped.fetch_add(1, Ordering::Relaxed);
        }
        let flush = async {
            while !backlog.is_empty() {
                let n = backlog.len().min(BATCH);
                let batch: Vec<Change> = backlog.iter().take(n).cloned().collect();
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
                retry = (retry * 2).min(Duration::from_secs(10));
            }
        }
        if stopping {
            if !backlog.is_empty() {
                tracing::warn!(
                    rows = backlog.len(),
                    "steering decisions not written at shutdown"
                );
            }
            return;
        }
    }
}
