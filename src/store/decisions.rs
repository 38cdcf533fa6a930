//! Read-only view of the steering audit trail (`steering_decisions`) for the admin API. (The
//! steering server's writes live in `audit`.)

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;

use super::StoreError;

/// One change of a client's answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Decision {
    /// Row id (increasing within a region); page with `before`.
    pub id: i64,
    /// Region of the steering server that decided.
    pub region: String,
    /// When.
    pub decided_at: DateTime<Utc>,
    /// The client.
    pub client: String,
    /// Appliance answered before (absent for a client's first answer).
    pub from_appliance: Option<String>,
    /// Appliance answered since (absent when the change was to "no appliance").
    pub to_appliance: Option<String>,
    /// Why.
    pub reason: String,
    /// Primary's combined risk at the time.
    pub primary_risk: Option<f64>,
    /// Shadow's combined risk at the time.
    pub shadow_risk: Option<f64>,
    /// Steering server that decided.
    pub server: String,
}

/// What to read from the audit trail.
#[derive(Debug, Clone, Default)]
pub struct DecisionFilter {
    /// Only this client.
    pub client: Option<String>,
    /// Only moves from or to this appliance.
    pub appliance: Option<String>,
    /// Only at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Only before this time.
    pub to: Option<DateTime<Utc>>,
    /// Only rows with a smaller id (the previous page's `next`).
    pub before: Option<i64>,
    /// At most this many.
    pub limit: i64,
}

/// Decisions matching `filter`, newest first.
pub async fn list(pool: &PgPool, f: &DecisionFilter) -> Result<Vec<Decision>, StoreError> {
    Ok(sqlx::query_as!(
        Decision,
        r#"SELECT id, region, decided_at, client_id AS client, from_appliance, to_appliance,
                  reason, primary_risk, shadow_risk, server
           FROM steering_decisions
           WHERE ($1::text IS NULL OR client_id = $1)
             AND ($2::text IS NULL OR from_appliance = $2 OR to_appliance = $2)
             AND ($3::timestamptz IS NULL OR decided_at >= $3)
             AND ($4::timestamptz IS NULL OR decided_at < $4)
             AND ($5::bigint IS NULL OR id < $5)
           ORDER BY id DESC LIMIT $6"#,
        f.client,
        f.appliance,
        f.from,
        f.to,
        f.before,
        f.limit
    )
    .fetch_all(pool)
    .await?)
}
