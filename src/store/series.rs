//! Time series for the admin API's charts, downsampled in the database: an appliance's risk
//! history (from `risk_history`), its health (from `appliance_health`), and the current risk
//! scores. A range is cut into equal buckets so that a chart of any length costs at most the
//! requested number of points.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;

use super::{StoreError, age_ms};

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
    /// Last time its scorer confirmed it (it is written only when it moves).
    pub confirmed_at: DateTime<Utc>,
    /// Confirmed within `risk.max_score_age`. Steering ignores a row that is not: an
    /// appliance with no fresh row counts as unknown-high, a path without one is left out.
    pub fresh: bool,
}

/// Which scores to list.
#[derive(Debug, Clone, Copy)]
pub struct ScoreFilter<'a> {
    /// `appliance`, `path`, or both (`None`).
    pub kind: Option<&'a str>,
    /// Rows confirmed within this age count as fresh.
    pub max_age: std::time::Duration,
}

/// Stored scores (appliances first, then paths), ordered by subject and region.
pub async fn current_scores(
    pool: &PgPool,
    filter: ScoreFilter<'_>,
) -> Result<Vec<CurrentScore>, StoreError> {
    Ok(sqlx::query_as!(
        CurrentScore,
        r#"SELECT region, subject_kind, subject, score, score_low, score_high, model_version,
                  computed_at, confirmed_at,
                  confirmed_at >= now() - make_interval(secs => $2::bigint / 1000.0) AS "fresh!"
           FROM risk_scores
           WHERE $1::text IS NULL OR subject_kind = $1
           ORDER BY subject_kind, subject, region"#,
        filter.kind,
        age_ms(filter.max_age)
    )
    .fetch_all(pool)
    .await?)
}

/// Each subject's score as steering counts it, from every region's rows: the highest fresh
/// one; a subject with no fresh row shows its most recently confirmed row, not fresh.
pub fn in_force(rows: Vec<CurrentScore>) -> Vec<CurrentScore> {
    let mut out: std::collections::BTreeMap<(String, String), CurrentScore> = Default::default();
    for r in rows {
        let key = (r.subject_kind.clone(), r.subject.clone());
        match out.get(&key) {
            Some(cur) if !supersedes(&r, cur) => {}
            _ => {
                out.insert(key, r);
            }
        }
    }
    out.into_values().collect()
}

/// Whether `new` replaces `cur` as a subject's score in force.
fn supersedes(new: &CurrentScore, cur: &CurrentScore) -> bool {
    match (new.fresh, cur.fresh) {
        (true, false) => true,
        (false, true) => false,
        (true, true) => new.score > cur.score,
        (false, false) => new.confirmed_at > cur.confirmed_at,
    }
}

/// A path's score as steering counts it, with its two ends.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PathRisk {
    /// The appliance that measures the path (the probes' source).
    pub from: String,
    /// The other end: a client id, or an appliance id.
    pub to: String,
    /// `client` or `appliance`.
    pub to_kind: String,
    /// The score in force (highest fresh one over the regions that score it).
    #[serde(flatten)]
    pub score: CurrentScore,
}

/// Which path scores to list.
#[derive(Debug, Clone)]
pub struct PathFilter {
    /// Only paths with this end (an appliance or a client id).
    pub end: Option<String>,
    /// Include paths with no fresh score (steering ignores them).
    pub include_stale: bool,
    /// At most this many, highest score first.
    pub limit: usize,
}

/// Path scores in force, highest first. The database filters by end and tells an appliance
/// end from a client one, so a listing reads only the paths it may show, not the inventory.
pub async fn path_risks(
    pool: &PgPool,
    max_age: std::time::Duration,
    filter: &PathFilter,
) -> Result<Vec<PathRisk>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT region, subject_kind, subject, score, score_low, score_high, model_version,
                  computed_at, confirmed_at,
                  confirmed_at >= now() - make_interval(secs => $2::bigint / 1000.0) AS "fresh!",
                  EXISTS (SELECT 1 FROM appliances a
                          WHERE a.id = split_part(s.subject, '>', 2)) AS "to_appliance!"
           FROM risk_scores s
           WHERE subject_kind = 'path'
             AND ($1::text IS NULL
                  OR split_part(subject, '>', 1) = $1 OR split_part(subject, '>', 2) = $1)"#,
        filter.end.as_deref(),
        age_ms(max_age)
    )
    .fetch_all(pool)
    .await?;
    let mut appliance_ends = std::collections::HashSet::new();
    let scores = rows
        .into_iter()
        .map(|r| {
            if r.to_appliance
                && let Some((_, to)) = r.subject.split_once('>')
            {
                appliance_ends.insert(to.to_owned());
            }
            CurrentScore {
                region: r.region,
                subject_kind: r.subject_kind,
                subject: r.subject,
                score: r.score,
                score_low: r.score_low,
                score_high: r.score_high,
                model_version: r.model_version,
                computed_at: r.computed_at,
                confirmed_at: r.confirmed_at,
                fresh: r.fresh,
            }
        })
        .collect();
    Ok(rank_paths(in_force(scores), &appliance_ends, filter))
}

/// The listing order of [`path_risks`]: fresh before stale, then highest score, then subject.
/// `appliances` holds the ends that are appliances.
fn rank_paths(
    rows: Vec<CurrentScore>,
    appliances: &std::collections::HashSet<String>,
    filter: &PathFilter,
) -> Vec<PathRisk> {
    let mut out: Vec<PathRisk> = rows
        .into_iter()
        .filter(|r| filter.include_stale || r.fresh)
        .filter_map(|r| {
            let (from, to) = r.subject.split_once('>')?;
            let (from, to) = (from.to_owned(), to.to_owned());
            let exact = filter.end.as_deref().is_none_or(|e| e == from || e == to);
            let to_kind = if appliances.contains(&to) {
                "appliance"
            } else {
                "client"
            };
            exact.then(|| PathRisk {
                from,
                to,
                to_kind: to_kind.to_owned(),
                score: r,
            })
        })
        .collect();
    out.sort_by(|a, b| {
        b.score
            .fresh
            .cmp(&a.score.fresh)
            .then(b.score.score.total_cmp(&a.score.score))
            .then_with(|| a.score.subject.cmp(&b.score.subject))
    });
    out.truncate(filter.limit);
    out
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

    fn row(region: &str, subject: &str, score: f64, fresh: bool, confirmed_s: i64) -> CurrentScore {
        let t = DateTime::from_timestamp(confirmed_s, 0).unwrap();
        CurrentScore {
            region: region.into(),
            subject_kind: if subject.contains('>') {
                "path"
            } else {
                "appliance"
            }
            .into(),
            subject: subject.into(),
            score,
            score_low: score,
            score_high: score,
            model_version: "m".into(),
            computed_at: t,
            confirmed_at: t,
            fresh,
        }
    }

    fn pick(rows: Vec<CurrentScore>) -> Vec<(String, String, f64, bool)> {
        in_force(rows)
            .into_iter()
            .map(|r| (r.subject, r.region, r.score, r.fresh))
            .collect()
    }

    #[test]
    fn the_highest_fresh_score_is_in_force_and_leftovers_do_not_count() {
        let got = pick(vec![
            // A region's leftover high row does not beat a fresh low one ...
            row("us", "eu-1", 0.9, false, 100),
            row("eu", "eu-1", 0.05, true, 50),
            // ... two fresh rows: the highest ...
            row("eu", "us-1", 0.2, true, 10),
            row("us", "us-1", 0.4, true, 5),
            // ... none fresh: the most recently confirmed, still not fresh.
            row("eu", "ap-1", 0.1, false, 30),
            row("ap", "ap-1", 0.7, false, 20),
        ]);
        assert_eq!(
            got,
            [
                ("ap-1".into(), "eu".into(), 0.1, false),
                ("eu-1".into(), "eu".into(), 0.05, true),
                ("us-1".into(), "us".into(), 0.4, true),
            ]
        );
    }

    #[test]
    fn paths_rank_fresh_then_riskiest_and_filter_by_either_end() {
        let appliances: std::collections::HashSet<String> =
            ["eu-1", "us-1"].map(String::from).into();
        let rows = || {
            vec![
                row("eu", "eu-1>alice", 0.3, true, 1),
                row("eu", "eu-1>us-1", 0.6, true, 1),
                row("eu", "us-1>bob", 0.99, false, 1),
                row("us", "us-1>alice", 0.3, true, 1),
            ]
        };
        let list = |end: Option<&str>, include_stale: bool, limit: usize| {
            let f = PathFilter {
                end: end.map(String::from),
                include_stale,
                limit,
            };
            rank_paths(rows(), &appliances, &f)
                .into_iter()
                .map(|p| format!("{}>{} {}", p.from, p.to, p.to_kind))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            list(None, false, 10),
            [
                "eu-1>us-1 appliance",
                "eu-1>alice client",
                "us-1>alice client"
            ]
        );
        assert_eq!(list(None, true, 10).last().unwrap(), "us-1>bob client");
        assert_eq!(list(None, true, 1), ["eu-1>us-1 appliance"]);
        // Either end, matched exactly (`eu` is neither end of any path).
        assert_eq!(list(Some("alice"), false, 10).len(), 2);
        assert_eq!(list(Some("us-1"), true, 10).len(), 3);
        assert!(list(Some("eu"), true, 10).is_empty());
    }
}
