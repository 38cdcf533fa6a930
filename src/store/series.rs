//! Time series for the admin API's charts, downsampled in the database: an appliance's risk
//! history (from `risk_history`), its health (from `appliance_health`), and the current risk
//! scores. A range is cut into equal buckets so that a chart of any length costs at most the
//! requested number of points.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;

use super::StoreError;

/// A current score (`risk_scores`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CurrentScore {
    /// Region that scored it.
    pub region: String,
    /// `appliance` or `path`.
    pub subject_kind: String,
    /// Appliance id, or `src>dst` for a path.
    pub subject: String,
    /// Probability of failure within the model's horizon.
    pub score: f64,
    /// Lower end of its confidence interval.
    pub score_low: f64,
    /// Upper end of its confidence interval.
    pub score_high: f64,
    /// Model that scored it.
    pub model_version: String,
    /// Second it was computed for.
    pub computed_at: DateTime<Utc>,
}

/// Every stored score (appliances first, then paths), ordered by subject.
pub async fn current_scores(pool: &PgPool) -> Result<Vec<CurrentScore>, StoreError> {
    Ok(sqlx::query_as!(
        CurrentScore,
        "SELECT region, subject_kind, subject, score, score_low, score_high, model_version, computed_at
         FROM risk_scores ORDER BY subject_kind, subject, region"
    )
    .fetch_all(pool)
    .await?)
}

/// One point of risk history: the highest score in its bucket with the widest interval.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RiskPoint {
    /// Start of the bucket (or the range's start, for the score in force then).
    pub ts: DateTime<Utc>,
    /// Highest score in the bucket.
    pub score: f64,
    /// Lowest lower bound in the bucket.
    pub low: f64,
    /// Highest upper bound in the bucket.
    pub high: f64,
}

/// A time range cut into buckets.
#[derive(Debug, Clone, Copy)]
pub struct Buckets {
    /// Start (inclusive).
    pub from: DateTime<Utc>,
    /// End (exclusive).
    pub to: DateTime<Utc>,
    /// Points wanted, at most (>= 2).
    pub points: u32,
}

impl Buckets {
    /// Bucket width in seconds: the range over `points - 1` buckets, leaving one point for
    /// the value in force at the start.
    pub fn width_s(&self) -> f64 {
        let span = (self.to - self.from).num_milliseconds().max(1) as f64 / 1000.0;
        span / f64::from(self.points.max(2) - 1)
    }
}

/// An appliance's risk over `range`: the score in force at its start (if any), then at most
/// `points - 1` buckets. Scores are a step function (stored on change), so an empty bucket
/// means "unchanged".
pub async fn risk_history(
    pool: &PgPool,
    appliance: &str,
    range: Buckets,
) -> Result<Vec<RiskPoint>, StoreError> {
    let before = sqlx::query_as!(
        RiskPoint,
        r#"SELECT $2::timestamptz AS "ts!", score, score_low AS low, score_high AS high
           FROM risk_history
           WHERE subject_kind = 'appliance' AND subject = $1 AND computed_at < $2
           ORDER BY computed_at DESC LIMIT 1"#,
        appliance,
        range.from
    )
    .fetch_optional(pool)
    .await?;
    let buckets = sqlx::query_as!(
        RiskPoint,
        r#"SELECT $2::timestamptz + make_interval(secs => floor(extract(epoch FROM computed_at - $2)::float8 / $4::float8) * $4::float8) AS "ts!",
                  max(score) AS "score!", min(score_low) AS "low!", max(score_high) AS "high!"
           FROM risk_history
           WHERE subject_kind = 'appliance' AND subject = $1 AND computed_at >= $2 AND computed_at < $3
           GROUP BY 1 ORDER BY 1"#,
        appliance,
        range.from,
        range.to,
        range.width_s()
    )
    .fetch_all(pool)
    .await?;
    Ok(before.into_iter().chain(buckets).collect())
}

/// One point of health: averages over its bucket (sessions: the largest count).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HealthPoint {
    /// Start of the bucket.
    pub ts: DateTime<Utc>,
    /// CPU use, 0..1.
    pub cpu: f64,
    /// Memory use, 0..1.
    pub mem: f64,
    /// Share of bandwidth capacity in use, 0..1.
    pub bw_util: f64,
    /// Live sessions (clients held), the most in the bucket.
    pub sessions: i64,
    /// Failed handshakes in the bucket.
    pub handshake_failures: i64,
}

/// An appliance's health over `range`, at most `points - 1` buckets.
pub async fn health(
    pool: &PgPool,
    appliance: &str,
    range: Buckets,
) -> Result<Vec<HealthPoint>, StoreError> {
    Ok(sqlx::query_as!(
        HealthPoint,
        r#"SELECT $2::timestamptz + make_interval(secs => floor(extract(epoch FROM ts - $2)::float8 / $4::float8) * $4::float8) AS "ts!",
                  avg(cpu) AS "cpu!", avg(mem) AS "mem!", avg(bw_util) AS "bw_util!",
                  max(sessions)::bigint AS "sessions!", sum(handshake_failures)::bigint AS "handshake_failures!"
           FROM appliance_health
           WHERE appliance_id = $1 AND ts >= $2 AND ts < $3
           GROUP BY 1 ORDER BY 1"#,
        appliance,
        range.from,
        range.to,
        range.width_s()
    )
    .fetch_all(pool)
    .await?)
}

/// The latest health row of every appliance (within the last `max_age`), for the fleet view.
pub async fn latest_health(
    pool: &PgPool,
    now: DateTime<Utc>,
    max_age: chrono::Duration,
) -> Result<Vec<(String, HealthPoint)>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT a.id AS "appliance!", h.ts AS "ts!", h.cpu AS "cpu!", h.mem AS "mem!",
                  h.bw_util AS "bw_util!", h.sessions::bigint AS "sessions!",
                  h.handshake_failures::bigint AS "handshake_failures!"
           FROM appliances a
           CROSS JOIN LATERAL (
               SELECT ts, cpu, mem, bw_util, sessions, handshake_failures FROM appliance_health
               WHERE region = a.region AND appliance_id = a.id AND ts > $1 AND ts <= $2
               ORDER BY ts DESC LIMIT 1) h"#,
        now - max_age,
        now
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r.appliance,
                HealthPoint {
                    ts: r.ts,
                    cpu: r.cpu,
                    mem: r.mem,
                    bw_util: r.bw_util,
                    sessions: r.sessions,
                    handshake_failures: r.handshake_failures,
                },
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_width_leaves_a_point_for_the_start() {
        let from = DateTime::from_timestamp(0, 0).unwrap();
        let to = DateTime::from_timestamp(3600, 0).unwrap();
        let b = Buckets {
            from,
            to,
            points: 61,
        };
        assert_eq!(b.width_s(), 60.0);
        let tiny = Buckets {
            from,
            to: from,
            points: 2,
        };
        assert!(tiny.width_s() > 0.0);
    }
}
