//! One row per appliance for live views (the demo's terminal table): state, the latest risk
//! score with its interval as the appliance's own region scores it, and how old its last
//! health report is.

use sqlx::PgPool;

use super::StoreError;

/// An appliance as a live view shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplianceRow {
    /// Id.
    pub id: String,
    /// Region.
    pub region: String,
    /// `active`, `draining` or `down`.
    pub state: String,
    /// Risk score, low and high end of its interval, as its region scores it.
    pub risk: Option<(f64, f64, f64)>,
    /// Seconds since its last health report, if it ever reported.
    pub health_age_s: Option<f64>,
}

/// Every appliance, ordered by id, with its own region's scores.
pub async fn appliances(pool: &PgPool) -> Result<Vec<ApplianceRow>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT a.id, a.region, a.state,
                  r.score AS "score?", r.score_low AS "score_low?", r.score_high AS "score_high?",
                  (SELECT extract(epoch FROM now() - max(h.ts))::float8
                     FROM appliance_health h WHERE h.appliance_id = a.id) AS health_age_s
           FROM appliances a
           LEFT JOIN risk_scores r
             ON r.region = a.region AND r.subject_kind = 'appliance' AND r.subject = a.id
           ORDER BY a.id"#
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ApplianceRow {
            id: r.id,
            region: r.region,
            state: r.state,
            risk: match (r.score, r.score_low, r.score_high) {
                (Some(s), Some(l), Some(h)) => Some((s, l, h)),
                _ => None,
            },
            health_age_s: r.health_age_s,
        })
        .collect())
}
