//! Retention: pruning old time-series rows in bounded batches.

use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use sqlx::PgPool;

use super::StoreError;

/// Tables with a retention policy, and the database function's name for each.
pub const PRUNABLE: [&str; 5] = [
    "appliance_health",
    "path_probes",
    "steering_decisions",
    "failure_events",
    "risk_history",
];

/// How long rows are kept, per table.
#[derive(Debug, Clone, Copy)]
pub struct RetentionPolicy {
    /// `appliance_health`.
    pub health: Duration,
    /// `path_probes`.
    pub probes: Duration,
    /// `steering_decisions`.
    pub decisions: Duration,
    /// `failure_events`: training labels, kept longest.
    pub failures: Duration,
    /// Rows deleted per statement.
    pub batch: u32,
}

const DAY: u64 = 86_400;

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self {
            health: Duration::from_secs(14 * DAY),
            probes: Duration::from_secs(14 * DAY),
            decisions: Duration::from_secs(90 * DAY),
            failures: Duration::from_secs(730 * DAY),
            batch: 10_000,
        }
    }
}

impl RetentionPolicy {
    /// The same age for every table.
    pub fn uniform(age: Duration, batch: u32) -> Self {
        Self {
            health: age,
            probes: age,
            decisions: age,
            failures: age,
            batch,
        }
    }

    fn age_of(&self, table: &str) -> Duration {
        match table {
            // Risk history charts the same stretch as the telemetry it came from.
            "appliance_health" | "risk_history" => self.health,
            "path_probes" => self.probes,
            "steering_decisions" => self.decisions,
            _ => self.failures,
        }
    }
}

/// Rows removed from one table.
#[derive(Debug, Clone, Serialize)]
pub struct Pruned {
    /// The table.
    pub table: &'static str,
    /// Rows deleted.
    pub deleted: u64,
    /// Statements (batches) it took.
    pub batches: u32,
}

/// Deletes rows older than the policy allows, one bounded batch per statement, so no
/// transaction holds locks over a large delete.
pub async fn prune(pool: &PgPool, policy: &RetentionPolicy) -> Result<Vec<Pruned>, StoreError> {
    let now = Utc::now();
    let mut report = Vec::new();
    for table in PRUNABLE {
        let age = chrono::Duration::from_std(policy.age_of(table)).unwrap_or(chrono::Duration::MAX);
        let cutoff = now
            .checked_sub_signed(age)
            .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
        let mut total = 0u64;
        let mut batches = 0u32;
        loop {
            let deleted = sqlx::query_scalar!(
                r#"SELECT shadowsteer_prune_own($1, $2, $3) AS "deleted!""#,
                table,
                cutoff,
                policy.batch as i32
            )
            .fetch_one(pool)
            .await?;
            batches += 1;
            total += deleted.max(0) as u64;
            if deleted < i64::from(policy.batch) {
                break;
            }
        }
        report.push(Pruned {
            table,
            deleted: total,
            batches,
        });
    }
    Ok(report)
}
