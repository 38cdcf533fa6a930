//! What an appliance's load-balancer check needs: its state, whether a failure is open, its
//! model score and the advisories in force for it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::{StoreError, age_ms};

/// An appliance's status as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct LbStatusRow {
    /// `active`, `draining` or `down`.
    pub state: String,
    /// An open failure event exists.
    pub failed: bool,
    /// The model's score: the highest of those confirmed within the age asked for (several
    /// regions may score the appliance). None when no scorer confirmed one lately.
    pub score: Option<f64>,
    /// Risks of the advisories in force (its own and its region's).
    pub advisories: Vec<f64>,
}

/// The status of `appliance` at `now`; `None` when it is not in the inventory. A score not
/// confirmed within `max_score_age` is history: the latest row of a region that stopped
/// scoring the appliance neither keeps its weight down nor hides another region's fresh score.
pub async fn read(
    pool: &PgPool,
    appliance: &str,
    now: DateTime<Utc>,
    max_score_age: Duration,
) -> Result<Option<LbStatusRow>, StoreError> {
    let row = sqlx::query!(
        r#"SELECT a.state,
                  EXISTS (SELECT 1 FROM failure_events f
                          WHERE f.appliance_id = a.id AND f.ended_at IS NULL AND f.started_at <= $2) AS "failed!",
                  (SELECT max(r.score) FROM risk_scores r
                   WHERE r.subject_kind = 'appliance' AND r.subject = a.id
                     AND r.confirmed_at >= $2 - make_interval(secs => $3::bigint / 1000.0)) AS score,
                  ARRAY(SELECT v.risk FROM advisories v
                        WHERE (v.appliance_id = a.id OR v.scope_region = a.region)
                          AND v.starts_at <= $2 AND (v.ends_at IS NULL OR v.ends_at > $2)) AS "advisories!"
           FROM appliances a WHERE a.id = $1"#,
        appliance,
        now,
        age_ms(max_score_age)
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| LbStatusRow {
        state: r.state,
        failed: r.failed,
        score: r.score,
        advisories: r.advisories,
    }))
}
